//! Relaying EIP-712 signed grants and revocations: the node's account pays the gas, the
//! patient's wallet only signs. The contract checks the signature, nonce and deadline;
//! a refusal comes back as the contract's error.
//!
//! Every relay pays from the node's single account, so sending is serialized: one relay
//! at a time holds the [`Relayer`]'s send lock from choosing the account nonce until the
//! chain's node accepted the transaction (not until it is mined; receipts are awaited
//! concurrently). A send refused for its account nonce (someone else used the account:
//! "nonce too low", "replacement transaction underpriced") is retried with a fresh
//! nonce a few times; "already known" means this very transaction is pending, so it is
//! settled on chain instead of sent twice.
//!
//! The answer matches the chain. When sending or waiting for the receipt fails in a way
//! that leaves the outcome open (a transport error, no receipt within
//! [`RECEIPT_DEADLINE`]), the relayer looks at the contract before answering: if the
//! patient's EIP-712 nonce (`ConsentRegistry.nonces`) moved past the signed one and the
//! grant's `GrantCreated` / `GrantRevoked` event is on chain since the relay began, the
//! relay succeeded, and the transaction hash and block are taken from that event (the
//! receipt itself may have been lost); if the nonce was used without such an event,
//! another message of the patient used it and this one is refused; otherwise the
//! answer is [`RelayError::Unconfirmed`], which says the message is not applied yet and
//! may still be.

use std::sync::OnceLock;
use std::time::Duration;

use alloy::network::Ethereum;
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, PendingTransactionBuilder, Provider};
use alloy::rpc::types::{Filter, TransactionReceipt, TransactionRequest};
use alloy::sol_types::{SolEvent, SolInterface};
use alloy::transports::TransportError;

use crate::bindings::{AuditAnchor, ConsentRegistry, GrantConsent, NodeRegistry, RevokeConsent};
use crate::ChainError;

/// How long a relay waits for its transaction's receipt before looking on chain.
pub const RECEIPT_DEADLINE: Duration = Duration::from_secs(60);
/// How long one send (gas estimation, nonce, submission) may take.
pub const SEND_DEADLINE: Duration = Duration::from_secs(30);
/// Sends retried after the node refused the account nonce.
pub const NONCE_RETRIES: usize = 3;
/// How long a relay whose answer was lost keeps looking at the chain for its outcome.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(15);
/// Pause between those looks.
const SETTLE_POLL: Duration = Duration::from_millis(250);

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
    /// The chain could not be reached or refused the transaction before it was sent;
    /// nothing was applied.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The transaction may have been sent, but whether it took effect could not be
    /// established: as far as the chain shows, the signed message is not applied yet,
    /// and it may still be (while it is pending).
    #[error(
        "the relay of grant {grant_id} was sent{} but its outcome is not known yet: {source}; \
         the signed message is not applied on chain so far and may still be, so look at the \
         grant before signing it again",
        .transaction.map(|t| format!(" in transaction {t}")).unwrap_or_default()
    )]
    Unconfirmed {
        /// The grant the message creates or revokes.
        grant_id: B256,
        /// The transaction, when the chain's node returned its hash.
        transaction: Option<B256>,
        /// What failed.
        #[source]
        source: ChainError,
    },
}

/// A provider that sends from `account`, asking the chain for the nonce before every
/// transaction: a relay that fails before sending (e.g. a replayed signature refused at
/// gas estimation) must not leave a gap in the account's nonces, which a locally
/// counting nonce manager would.
pub fn relaying_provider(
    url: alloy::transports::http::reqwest::Url,
    account: alloy::signers::local::PrivateKeySigner,
) -> DynProvider {
    use alloy::providers::ProviderBuilder;
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
    pub(crate) provider: DynProvider,
    consent: ConsentRegistry::ConsentRegistryInstance<DynProvider>,
    /// The node's account, once known (given, or read from the first receipt). Known,
    /// the relayer sets each nonce itself, so a provider whose nonce manager counts
    /// locally cannot go stale when someone else uses the account.
    account: OnceLock<Address>,
    /// Held from choosing a nonce until the node accepted the transaction.
    sending: tokio::sync::Mutex<()>,
}

/// The signed message a relay carries, as far as settling its outcome needs.
#[derive(Debug, Clone, Copy)]
struct Signed {
    patient: Address,
    nonce: U256,
    grant_id: B256,
    effect: Effect,
}

/// What the message does on chain, and so which event proves it.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// `GrantCreated` with this expiry.
    Grant { expiry: u64 },
    /// `GrantRevoked`.
    Revoke,
}

/// A send that did not end with an accepted transaction.
enum SendFailure {
    /// The outcome is known: nothing was sent, or the node refused it.
    Definite(RelayError),
    /// The transaction may have reached the node.
    Unknown(ChainError),
}

impl Relayer {
    /// `provider` must sign with the node's (funded) account. Until the first relay's
    /// receipt names the account, nonces come from `provider`'s nonce filler (which should
    /// ask the chain, as [`relaying_provider`]'s does); from then on the relayer sets them.
    pub fn new(provider: DynProvider, consent_registry: Address) -> Self {
        Self {
            consent: ConsentRegistry::new(consent_registry, provider.clone()),
            provider,
            account: OnceLock::new(),
            sending: tokio::sync::Mutex::new(()),
        }
    }

    /// A relayer paying from `account` over the JSON-RPC endpoint `url`
    /// ([`relaying_provider`]), setting every nonce itself.
    pub fn connect(
        url: alloy::transports::http::reqwest::Url,
        account: alloy::signers::local::PrivateKeySigner,
        consent_registry: Address,
    ) -> Self {
        let address = account.address();
        let relayer = Self::new(relaying_provider(url, account), consent_registry);
        // A fresh `OnceLock`: this cannot fail.
        let _ = relayer.account.set(address);
        relayer
    }

    /// The account that pays for relays, once known.
    pub fn account(&self) -> Option<Address> {
        self.account.get().copied()
    }

    /// Relays a signed grant. The node account's address is whatever `provider` signs
    /// with; the contract does not care who relays.
    pub async fn relay_grant(
        &self,
        g: &GrantConsent,
        signature: Bytes,
    ) -> Result<Relayed, RelayError> {
        let grant_id = self
            .consent
            .grantIdOf(g.patient, g.grantee, g.kind, g.scope, g.purpose)
            .call()
            .await
            .map_err(ChainError::rpc)?;
        let request = self
            .consent
            .grantBySig(
                g.patient, g.grantee, g.kind, g.scope, g.purpose, g.expiry, g.nonce, g.deadline,
                signature,
            )
            .into_transaction_request();
        let signed = Signed {
            patient: g.patient,
            nonce: g.nonce,
            grant_id,
            effect: Effect::Grant { expiry: g.expiry },
        };
        self.relay(request, signed).await
    }

    /// Relays a signed revocation.
    pub async fn relay_revoke(
        &self,
        r: &RevokeConsent,
        signature: Bytes,
    ) -> Result<Relayed, RelayError> {
        let grant_id = self
            .consent
            .grantIdOf(r.patient, r.grantee, r.kind, r.scope, r.purpose)
            .call()
            .await
            .map_err(ChainError::rpc)?;
        let request = self
            .consent
            .revokeBySig(
                r.patient, r.grantee, r.kind, r.scope, r.purpose, r.nonce, r.deadline, signature,
            )
            .into_transaction_request();
        let signed = Signed {
            patient: r.patient,
            nonce: r.nonce,
            grant_id,
            effect: Effect::Revoke,
        };
        self.relay(request, signed).await
    }

    async fn relay(
        &self,
        request: TransactionRequest,
        signed: Signed,
    ) -> Result<Relayed, RelayError> {
        // Where to look for the message's event if the answer gets lost.
        let start_block = self
            .provider
            .get_block_number()
            .await
            .map_err(ChainError::rpc)?;
        let pending = match self.send(request).await {
            Ok(pending) => pending,
            Err(SendFailure::Definite(e)) => return Err(e),
            Err(SendFailure::Unknown(cause)) => {
                return self.settle(signed, None, start_block, cause).await
            }
        };
        let hash = *pending.tx_hash();
        let receipt = tokio::time::timeout(
            RECEIPT_DEADLINE,
            pending.with_timeout(Some(RECEIPT_DEADLINE)).get_receipt(),
        )
        .await;
        match receipt {
            Ok(Ok(receipt)) if receipt.status() => {
                // Now the account is known, the relayer picks its nonces itself.
                let _ = self.account.set(receipt.from);
                tracing::info!(
                    transaction = %hash,
                    grant = %signed.grant_id,
                    block = ?receipt.block_number,
                    "relayed a signed consent message"
                );
                Ok(relayed(&receipt, signed.grant_id))
            }
            // Reverted; but another relay of the same message may have won the race.
            Ok(Ok(_)) => match self.on_chain(signed, Some(hash), start_block).await {
                Ok(Some(answer)) => answer,
                _ => Err(RelayError::Rejected("the transaction reverted".into())),
            },
            Ok(Err(e)) => {
                self.settle(signed, Some(hash), start_block, ChainError::rpc(e))
                    .await
            }
            Err(_elapsed) => {
                let cause = ChainError::Timeout {
                    what: "waiting for the relayed transaction's receipt",
                    after: RECEIPT_DEADLINE,
                };
                self.settle(signed, Some(hash), start_block, cause).await
            }
        }
    }

    /// Sends `request` from the node's account, one relay at a time, retrying when the
    /// node refuses the account nonce.
    async fn send(
        &self,
        request: TransactionRequest,
    ) -> Result<PendingTransactionBuilder<Ethereum>, SendFailure> {
        let _sending = self.sending.lock().await;
        let mut retries = 0;
        loop {
            let mut tx = request.clone();
            if let Some(&account) = self.account.get() {
                let nonce = self
                    .provider
                    .get_transaction_count(account)
                    .pending()
                    .await
                    .map_err(|e| SendFailure::Definite(ChainError::rpc(e).into()))?;
                tx.from = Some(account);
                tx.nonce = Some(nonce);
            }
            let error =
                match tokio::time::timeout(SEND_DEADLINE, self.provider.send_transaction(tx)).await
                {
                    Ok(Ok(pending)) => return Ok(pending),
                    Ok(Err(e)) => e,
                    Err(_elapsed) => {
                        return Err(SendFailure::Unknown(ChainError::Timeout {
                            what: "sending the relay transaction",
                            after: SEND_DEADLINE,
                        }))
                    }
                };
            if let Some(refusal) = contract_refusal(&error) {
                return Err(SendFailure::Definite(RelayError::Rejected(refusal)));
            }
            if is_already_pending(&error) {
                // This very transaction is in the node's pool (an earlier attempt did
                // go through): sending another would pay twice. Settle it on chain.
                return Err(SendFailure::Unknown(ChainError::rpc(error)));
            }
            if is_nonce_refusal(&error) && retries < NONCE_RETRIES {
                retries += 1;
                tracing::warn!(
                    error = %error,
                    retry = retries,
                    "the node refused the relay account's nonce (the account is used \
                     elsewhere too); retrying with a fresh one"
                );
                continue;
            }
            // The node answered with an error: it did not take the transaction.
            return Err(if error.as_error_resp().is_some() {
                SendFailure::Definite(ChainError::rpc(error).into())
            } else {
                SendFailure::Unknown(ChainError::rpc(error))
            });
        }
    }

    /// Answers from the chain's state after the usual answer was lost.
    async fn settle(
        &self,
        signed: Signed,
        transaction: Option<B256>,
        start_block: u64,
        cause: ChainError,
    ) -> Result<Relayed, RelayError> {
        // A transaction whose answer was lost may still be pending (a chain mines a
        // moment after accepting it): look again for a while before saying unknown.
        let deadline = tokio::time::Instant::now() + SETTLE_DEADLINE;
        let mut seen = self.on_chain(signed, transaction, start_block).await;
        while matches!(seen, Ok(None)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(SETTLE_POLL).await;
            seen = self.on_chain(signed, transaction, start_block).await;
        }
        match seen {
            Ok(Some(answer)) => {
                if let Ok(r) = &answer {
                    tracing::info!(
                        transaction = %r.transaction,
                        grant = %r.grant_id,
                        cause = %cause,
                        "relay outcome found on chain after its answer was lost"
                    );
                }
                answer
            }
            Ok(None) => {
                tracing::warn!(
                    grant = %signed.grant_id,
                    ?transaction,
                    cause = %cause,
                    "relay outcome unknown: not applied on chain so far"
                );
                Err(RelayError::Unconfirmed {
                    grant_id: signed.grant_id,
                    transaction,
                    source: cause,
                })
            }
            Err(e) => {
                tracing::warn!(
                    grant = %signed.grant_id,
                    ?transaction,
                    cause = %cause,
                    error = %e,
                    "relay outcome unknown: the chain cannot be read"
                );
                Err(RelayError::Unconfirmed {
                    grant_id: signed.grant_id,
                    transaction,
                    source: cause,
                })
            }
        }
    }

    /// What the chain says became of `signed`: `None` while it is not applied and could
    /// still be.
    async fn on_chain(
        &self,
        signed: Signed,
        transaction: Option<B256>,
        start_block: u64,
    ) -> Result<Option<Result<Relayed, RelayError>>, ChainError> {
        let mut reverted = false;
        if let Some(hash) = transaction {
            let receipt = self
                .provider
                .get_transaction_receipt(hash)
                .await
                .map_err(ChainError::rpc)?;
            match receipt {
                Some(receipt) if receipt.status() => {
                    return Ok(Some(Ok(relayed(&receipt, signed.grant_id))))
                }
                Some(_) => reverted = true,
                None => {}
            }
        }
        let next_nonce = self
            .consent
            .nonces(signed.patient)
            .call()
            .await
            .map_err(ChainError::rpc)?;
        if next_nonce <= signed.nonce {
            // The message is not used (yet): our transaction, if any, failed or pends.
            let answer: Option<Result<Relayed, RelayError>> =
                reverted.then(|| Err(RelayError::Rejected("the transaction reverted".into())));
            return Ok(answer);
        }
        // The nonce is used: by this message if its event is on chain since we began.
        let latest = self
            .provider
            .get_block_number()
            .await
            .map_err(ChainError::rpc)?;
        let signature = match signed.effect {
            Effect::Grant { .. } => ConsentRegistry::GrantCreated::SIGNATURE_HASH,
            Effect::Revoke => ConsentRegistry::GrantRevoked::SIGNATURE_HASH,
        };
        let filter = Filter::new()
            .address(*self.consent.address())
            .event_signature(signature)
            .topic1(signed.grant_id)
            .from_block(start_block)
            .to_block(latest);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(ChainError::rpc)?;
        let matching: Vec<_> = logs
            .iter()
            .filter(|log| match signed.effect {
                Effect::Grant { expiry } => log
                    .log_decode::<ConsentRegistry::GrantCreated>()
                    .is_ok_and(|e| e.inner.data.expiry == expiry),
                Effect::Revoke => true,
            })
            .collect();
        // Our own transaction if it is among them, else the latest.
        let found = matching
            .iter()
            .find(|log| transaction.is_some() && log.transaction_hash == transaction)
            .or_else(|| matching.last());
        Ok(Some(match found {
            Some(log) => match (log.transaction_hash, log.block_number) {
                (Some(transaction), Some(block)) => Ok(Relayed {
                    transaction,
                    block,
                    grant_id: signed.grant_id,
                }),
                // A node that omits them: the effect is on chain, its place unknown.
                _ => return Ok(None),
            },
            None => Err(RelayError::Rejected(format!(
                "the patient's signed nonce {} was used by another of their signed messages",
                signed.nonce
            ))),
        }))
    }
}

/// A transaction of the node's own account (not a relay), mined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The transaction hash.
    pub transaction: B256,
    /// The block it was mined in.
    pub block: u64,
}

/// An audit-log head anchored by [`Relayer::anchor_audit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorSent {
    /// The anchor's position in the account's list (`AuditAnchor.anchorAt`).
    pub index: u64,
    /// The transaction.
    pub sent: Sent,
}

/// The node's own transactions. They pay from the same account as relays and so take
/// their turn in the same send lock, with the nonce read from the chain.
impl Relayer {
    /// Registers (or updates) the node of the account in `NodeRegistry` at `registry`:
    /// its libp2p PeerId (multihash bytes), the institution's certificate fingerprint
    /// (which also becomes the account's `keyOf`) and a display name. The account must
    /// be an approved institution, or the contract refuses with
    /// `NotApprovedInstitution` ([`ChainError::Reverted`]).
    pub async fn register_node(
        &self,
        registry: Address,
        peer_id: Vec<u8>,
        certificate: B256,
        name: String,
    ) -> Result<Sent, ChainError> {
        let request = NodeRegistry::new(registry, self.provider.clone())
            .registerNode(peer_id.into(), certificate, name)
            .into_transaction_request();
        let receipt = self.transact(request, "the node registration").await?;
        Ok(sent(&receipt))
    }

    /// Anchors the account's audit-log `head` after `entries` entries in `AuditAnchor`
    /// at `contract`. The account must be a registered institution, the head not zero,
    /// and `entries` at least the last anchor's ([`ChainError::Reverted`] otherwise).
    pub async fn anchor_audit(
        &self,
        contract: Address,
        head: B256,
        entries: u64,
    ) -> Result<AnchorSent, ChainError> {
        let request = AuditAnchor::new(contract, self.provider.clone())
            .anchor(head, entries)
            .into_transaction_request();
        let receipt = self.transact(request, "the audit anchor").await?;
        let index = match receipt.decoded_log::<AuditAnchor::Anchored>() {
            Some(log) => log.data.index.saturating_to::<u64>(),
            // A node that drops logs from receipts: the anchor just made is the last.
            None => {
                let account = receipt.from;
                let count = AuditAnchor::new(contract, self.provider.clone())
                    .anchorCount(account)
                    .call()
                    .await
                    .map_err(ChainError::rpc)?;
                count.saturating_to::<u64>().saturating_sub(1)
            }
        };
        Ok(AnchorSent {
            index,
            sent: sent(&receipt),
        })
    }

    /// Sends `request` from the node's account (in turn with relays) and waits for its
    /// receipt. A refusal by the contract is [`ChainError::Reverted`]; after any other
    /// error the transaction may still be pending, so a caller reads the contract's
    /// state again before sending anew.
    pub(crate) async fn transact(
        &self,
        request: TransactionRequest,
        what: &'static str,
    ) -> Result<TransactionReceipt, ChainError> {
        let pending = match self.send(request).await {
            Ok(pending) => pending,
            Err(SendFailure::Definite(RelayError::Rejected(reason))) => {
                return Err(ChainError::Reverted(reason))
            }
            Err(SendFailure::Definite(RelayError::Chain(e)) | SendFailure::Unknown(e)) => {
                return Err(e)
            }
            Err(SendFailure::Definite(other @ RelayError::Unconfirmed { .. })) => {
                return Err(ChainError::Rpc(other.to_string()))
            }
        };
        let hash = *pending.tx_hash();
        let receipt = tokio::time::timeout(
            RECEIPT_DEADLINE,
            pending.with_timeout(Some(RECEIPT_DEADLINE)).get_receipt(),
        )
        .await
        .map_err(|_elapsed| ChainError::Timeout {
            what,
            after: RECEIPT_DEADLINE,
        })?
        .map_err(ChainError::rpc)?;
        if !receipt.status() {
            return Err(ChainError::Reverted(format!(
                "{what} (transaction {hash}) reverted"
            )));
        }
        let _ = self.account.set(receipt.from);
        tracing::info!(transaction = %hash, block = ?receipt.block_number, "{what} was mined");
        Ok(receipt)
    }
}

pub(crate) fn sent(receipt: &TransactionReceipt) -> Sent {
    Sent {
        transaction: receipt.transaction_hash,
        block: receipt.block_number.unwrap_or_default(),
    }
}

fn relayed(receipt: &TransactionReceipt, grant_id: B256) -> Relayed {
    Relayed {
        transaction: receipt.transaction_hash,
        block: receipt.block_number.unwrap_or_default(),
        grant_id,
    }
}

/// The contract's custom error, when the send was refused by a revert (at gas
/// estimation), decoded with the errors of the medmesh contracts (`ConsentRegistry`'s
/// first, the relays' own).
fn contract_refusal(e: &TransportError) -> Option<String> {
    let data = e.as_error_resp()?.as_revert_data()?;
    if let Ok(error) = ConsentRegistry::ConsentRegistryErrors::abi_decode(&data) {
        return Some(format!("{error:?}"));
    }
    if let Ok(error) = NodeRegistry::NodeRegistryErrors::abi_decode(&data) {
        return Some(format!("{error:?}"));
    }
    if let Ok(error) = crate::bindings::DatasetRegistry::DatasetRegistryErrors::abi_decode(&data) {
        return Some(format!("{error:?}"));
    }
    AuditAnchor::AuditAnchorErrors::abi_decode(&data)
        .ok()
        .map(|error| format!("{error:?}"))
}

/// Whether the node says it holds this exact transaction already (geth's "already
/// known", reth's "already imported"): it was sent, and its outcome is the chain's.
fn is_already_pending(e: &TransportError) -> bool {
    e.as_error_resp().is_some_and(|payload| {
        let message = payload.message.to_ascii_lowercase();
        message.contains("already known") || message.contains("already imported")
    })
}

/// Whether the node refused the transaction for its account nonce, which a fresh nonce
/// fixes (geth, anvil, reth and the embedded dev chain word it these ways).
fn is_nonce_refusal(e: &TransportError) -> bool {
    let Some(payload) = e.as_error_resp() else {
        return false;
    };
    let message = payload.message.to_ascii_lowercase();
    [
        "nonce too low",
        "nonce_too_low",
        "replacement transaction underpriced",
        "nonce has already been used",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}
