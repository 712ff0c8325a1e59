//! Relaying EIP-712 signed grants and revocations: the node's account pays the gas, the
//! patient's wallet only signs. The contract checks the signature, nonce and deadline;
//! a refusal comes back as the contract's error.

use alloy::primitives::{Address, Bytes, B256};
use alloy::providers::DynProvider;

use crate::bindings::{ConsentRegistry, GrantConsent, RevokeConsent};
use crate::ChainError;

/// A relayed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// The transaction hash.
    pub transaction: B256,
    /// The block it was mined in.
    pub block: u64,
    /// The grant it created or revoked.
    pub grant_id: B256,
}

/// Why a relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The contract refused it (bad signature, used nonce, past deadline, …).
    #[error("the consent contract refused it: {0}")]
    Rejected(String),
    /// The chain could not be reached or the transaction failed otherwise.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// A provider that sends from `account`, asking the chain for the nonce before every
/// transaction: a relay that fails before sending (e.g. a replayed signature refused at
/// gas estimation) must not leave a gap in the account's nonces, which a locally
/// counting nonce manager would.
pub fn relaying_provider(
    url: alloy::transports::http::reqwest::Url,
    account: alloy::signers::local::PrivateKeySigner,
) -> DynProvider {
    use alloy::providers::{Provider, ProviderBuilder};
    ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(alloy::network::EthereumWallet::from(account))
        .connect_http(url)
        .erased()
}

/// Sends signed consent messages from the node's account.
pub struct Relayer {
    consent: ConsentRegistry::ConsentRegistryInstance<DynProvider>,
}

impl Relayer {
    /// `provider` must sign with the node's (funded) account.
    pub fn new(provider: DynProvider, consent_registry: Address) -> Self {
        Self {
            consent: ConsentRegistry::new(consent_registry, provider),
        }
    }

    /// The node account's address is whatever `provider` signs with; the contract does
    /// not care who relays.
    pub async fn relay_grant(
        &self,
        g: &GrantConsent,
        signature: Bytes,
    ) -> Result<Relayed, RelayError> {
        let call = self.consent.grantBySig(
            g.patient, g.grantee, g.kind, g.scope, g.purpose, g.expiry, g.nonce, g.deadline,
            signature,
        );
        let grant_id = self
            .consent
            .grantIdOf(g.patient, g.grantee, g.kind, g.scope, g.purpose)
            .call()
            .await
            .map_err(ChainError::rpc)?;
        let pending = call.send().await.map_err(rejected)?;
        finish(pending, grant_id).await
    }

    /// Relays a signed revocation.
    pub async fn relay_revoke(
        &self,
        r: &RevokeConsent,
        signature: Bytes,
    ) -> Result<Relayed, RelayError> {
        let call = self.consent.revokeBySig(
            r.patient, r.grantee, r.kind, r.scope, r.purpose, r.nonce, r.deadline, signature,
        );
        let grant_id = self
            .consent
            .grantIdOf(r.patient, r.grantee, r.kind, r.scope, r.purpose)
            .call()
            .await
            .map_err(ChainError::rpc)?;
        let pending = call.send().await.map_err(rejected)?;
        finish(pending, grant_id).await
    }
}

fn rejected(e: alloy::contract::Error) -> RelayError {
    match e.as_decoded_interface_error::<ConsentRegistry::ConsentRegistryErrors>() {
        Some(decoded) => RelayError::Rejected(format!("{decoded:?}")),
        None => RelayError::Chain(ChainError::rpc(e)),
    }
}

async fn finish(
    pending: alloy::providers::PendingTransactionBuilder<alloy::network::Ethereum>,
    grant_id: B256,
) -> Result<Relayed, RelayError> {
    let receipt = pending.get_receipt().await.map_err(ChainError::rpc)?;
    if !receipt.status() {
        return Err(RelayError::Rejected("the transaction reverted".into()));
    }
    Ok(Relayed {
        transaction: receipt.transaction_hash,
        block: receipt.block_number.unwrap_or_default(),
        grant_id,
    })
}
