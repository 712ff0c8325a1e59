//! Research datasets on chain: the `DatasetRegistry` submission of a proven statement
//! ([`submission`]), and listing or withdrawing it from the node's account
//! ([`Relayer::list_dataset`], [`Relayer::withdraw_dataset`]).

use alloy::primitives::{Address, Bytes, B256, U256};
use medmesh_zk::{Proof, Statement};

use crate::bindings::DatasetRegistry::{self, Submission};
use crate::relay::{sent, Sent};
use crate::{ChainError, Relayer};

/// The submission listing the table `statement` is about: its encrypted record's CID,
/// a metadata CID and the permitted uses (DUO term numbers).
pub fn submission(
    statement: &Statement,
    record_cid: &[u8],
    metadata_cid: &[u8],
    duo: &[u32],
) -> Submission {
    Submission {
        recordCid: Bytes::copy_from_slice(record_cid),
        metadataCid: Bytes::copy_from_slice(metadata_cid),
        commitment: B256::from(statement.commitment.to_bytes()),
        schemaHash: B256::from(statement.schema_hash),
        k: statement.k,
        rows: statement.rows,
        suppressed: statement.suppressed,
        limit: statement.limit,
        size: statement.shape.rows,
        duo: duo.to_vec(),
    }
}

/// `proof` as the verifier's eight words.
pub fn proof_words(proof: &Proof) -> [U256; 8] {
    proof.solidity_words().map(U256::from_be_bytes)
}

/// A listing made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetListed {
    /// The listing's id (`keccak256(institution, commitment)`).
    pub id: B256,
    /// The transaction.
    pub sent: Sent,
}

impl Relayer {
    /// Lists `submission` with `proof` in the registry at `registry`. A refusal (an
    /// invalid proof, a malformed statement, a listing made already) is
    /// [`ChainError::Reverted`] with the contract's error.
    pub async fn list_dataset(
        &self,
        registry: Address,
        submission: Submission,
        proof: [U256; 8],
    ) -> Result<DatasetListed, ChainError> {
        let contract = DatasetRegistry::new(registry, self.provider.clone());
        let request = contract.list(submission, proof).into_transaction_request();
        let receipt = self.transact(request, "the dataset listing").await?;
        let id = match receipt.decoded_log::<DatasetRegistry::DatasetListed>() {
            Some(log) => log.data.id,
            None => {
                return Err(ChainError::Reverted(
                    "the listing's receipt has no DatasetListed event".into(),
                ))
            }
        };
        Ok(DatasetListed {
            id,
            sent: sent(&receipt),
        })
    }

    /// Withdraws this account's listing `id`.
    pub async fn withdraw_dataset(&self, registry: Address, id: B256) -> Result<Sent, ChainError> {
        let request = DatasetRegistry::new(registry, self.provider.clone())
            .withdraw(id)
            .into_transaction_request();
        let receipt = self.transact(request, "the dataset withdrawal").await?;
        Ok(sent(&receipt))
    }
}
