//! Key release: the owner node's answer to a grantee asking for a record's data key.
//!
//! The checks, in order, each refusing with a reason and an audit entry:
//! 1. the challenge was issued by this node, is unexpired and unused;
//! 2. the request is signed (EIP-191) by the grantee address it names;
//! 3. the certificate sent can receive keys and is the one the grantee published on
//!    chain (`NodeRegistry.keyOf`);
//! 4. the record is stored here and linked to the patient wallet that consents for it;
//! 5. the grant cache, synced to the latest block first, allows (patient, grantee,
//!    record scope, purpose) now: a live grant or an open break-glass access.
//!
//! The first three say nothing about the record, so their refusals name their cause.
//! The last two would tell a caller without a grant whether a CID is stored here, or
//! linked to a patient: callers answer them all as one [`ReleaseError::NotAllowed`]
//! (see [`ReleaseError::reveals_the_record`]), the cause in the audit log only. The
//! consent cache is synced before the record is looked up, so an unknown record takes
//! as long to refuse as a known one.
//!
//! Only then is the data key unwrapped and re-wrapped for the grantee's post-quantum
//! certificate, and the release audited under the caller the transport authenticated.
//! The certificate parse, the manifest's ML-DSA check, the ML-KEM unwrap (under the
//! decryptor lock shared with downloads) and the re-wrap run on tokio's blocking pool,
//! never on the async executor. The same code serves every transport (HTTP now, the
//! libp2p request/response protocol later).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::{keccak256, Address, B256};
use alloy::providers::DynProvider;
use medmesh_core::bounded::BoundedMap;
use medmesh_core::{KeyWrap, RecordId};
use medmesh_crypto::eth::recover_personal_sign;
use medmesh_crypto::{Certificate, CryptoError, UnlockedDecryptor};
use medmesh_store::{AuditAction, AuditEvent, Store, StoreError};
use ring::rand::{SecureRandom, SystemRandom};

use crate::bindings::NodeRegistry;
use crate::cache::{Access, AccessQuery, Denial, GrantCache};
use crate::ChainError;

/// `ScopeKind.Record` of the contract.
pub const SCOPE_RECORD: u8 = 0;
/// `ScopeKind.PatientAtInstitution` of the contract.
pub const SCOPE_PATIENT: u8 = 1;
/// Challenges per generation of the bounded challenge table.
const CHALLENGES: usize = 65_536;
/// How long a challenge can be answered.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(300);

/// The on-chain consent scope of a record: keccak256 of a domain tag, the link's salt
/// and the record id. Without the salt nobody can tell which record a grant covers.
pub fn record_scope(record: &RecordId, salt_hex: &str) -> Result<B256, ReleaseError> {
    let salt = hex::decode(salt_hex).map_err(|source| ReleaseError::BadSalt {
        record: record.to_string(),
        source,
    })?;
    let mut input = b"medmesh/record-scope/v1".to_vec();
    input.extend_from_slice(&salt);
    input.extend_from_slice(&record.cid().to_bytes());
    Ok(keccak256(input))
}

/// The on-chain scope "all records of `patient` at `institution`" (`ScopeKind` 1):
/// keccak256 of a domain tag, the institution's certificate fingerprint and the
/// patient's address. A grant for it covers every record of that institution linked to
/// that patient.
pub fn patient_scope(institution: &medmesh_core::InstitutionId, patient: Address) -> B256 {
    let mut input = b"medmesh/patient-scope/v1".to_vec();
    input.extend_from_slice(institution.as_str().as_bytes());
    input.extend_from_slice(patient.as_slice());
    keccak256(input)
}

/// Whether a challenge issued at `issued` can still be answered.
fn is_fresh(issued: SystemTime) -> bool {
    SystemTime::now()
        .duration_since(issued)
        .is_ok_and(|age| age < CHALLENGE_TTL)
}

/// The audit entry of a refused key request by `caller` (see [`KeyReleaser::release`]).
pub fn denial_event(request: &KeyRequest, caller: &str, error: &ReleaseError) -> AuditEvent {
    let mut detail = request_detail(request);
    detail.insert("reason".into(), error.to_string());
    AuditEvent {
        action: AuditAction::KeyReleaseDenied,
        actor: caller.to_string(),
        subject: request.record.to_string(),
        detail,
    }
}

/// What every key-release entry records of the request.
fn request_detail(request: &KeyRequest) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("purpose".to_string(), format!("DUO:{:07}", request.purpose)),
        ("grantee".to_string(), request.grantee.to_string()),
    ])
}

/// A grantee's request for a record's key.
#[derive(Debug, Clone)]
pub struct KeyRequest {
    /// The record.
    pub record: RecordId,
    /// The address asking (must have signed the request).
    pub grantee: Address,
    /// DUO purpose term number.
    pub purpose: u32,
    /// The grantee's certificate (armored or binary), to wrap the key for.
    pub certificate: Vec<u8>,
    /// A challenge from [`KeyReleaser::challenge`].
    pub challenge: String,
    /// EIP-191 signature of [`KeyRequest::message`] by the grantee, hex.
    pub signature: String,
}

impl KeyRequest {
    /// The exact text the grantee signs.
    pub fn message(record: &RecordId, grantee: Address, purpose: u32, challenge: &str) -> String {
        // One text for wallets, the SDK and the node.
        medmesh_consent::key_request_message(record, grantee, purpose, challenge)
    }
}

/// Why a key was not released. The first kinds are the requester's to fix; `Chain`,
/// `Store`, `Crypto`, `BadSalt`, `BadPatient` and `Internal` are the node's.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The challenge is unknown, expired or used.
    #[error("bad challenge: unknown, expired or already used; ask for a fresh one")]
    BadChallenge,
    /// The signature is not the grantee's.
    #[error("the request is not signed by the grantee {0}")]
    NotGrantee(Address),
    /// The record is not stored here.
    #[error("unknown record {0}")]
    UnknownRecord(String),
    /// The record is not linked to a consenting patient wallet.
    #[error("record {0} is not linked to a patient wallet, so no grant can cover it")]
    NotLinked(String),
    /// The certificate is not the one the grantee published on chain.
    #[error("the certificate {given} is not the one {grantee} published on chain ({published})")]
    CertificateMismatch {
        /// The grantee.
        grantee: Address,
        /// Fingerprint of the certificate sent.
        given: String,
        /// Fingerprint published (zero if none).
        published: String,
    },
    /// The certificate sent cannot receive keys (unparsable, no post-quantum subkey, …).
    #[error("unusable certificate: {0}")]
    BadCertificate(#[source] CryptoError),
    /// The chain does not allow it.
    #[error("denied by consent: {0}")]
    Denied(#[from] Denial),
    /// What a caller is told of `UnknownRecord`, `NotLinked` and `Denied`: the same
    /// answer whether the record is stored here, linked to a patient, or not.
    #[error("no grant on chain gives this grantee this record's key for this purpose; the patient grants access from their wallet (the owner's audit log records the reason)")]
    NotAllowed,
    /// Talking to the chain failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The node's store failed (other than not having the record).
    #[error("key release failed on the node: {0}")]
    Store(#[source] StoreError),
    /// The node's own keys failed: its manifest signature does not verify, or its
    /// secret key does not unwrap the record's data key.
    #[error("key release failed on the node: {0}")]
    Crypto(#[source] CryptoError),
    /// The record's consent link holds a salt that is not hex (a damaged store).
    #[error("key release failed on the node: the consent link of record {record} has a salt that is not hex: {source}")]
    BadSalt {
        /// The record.
        record: String,
        /// The hex decoder's complaint.
        #[source]
        source: hex::FromHexError,
    },
    /// The record's consent link holds a patient that is not an address (a damaged store).
    #[error("key release failed on the node: the consent link of record {record} names `{patient}`, which is not an Ethereum address: {source}")]
    BadPatient {
        /// The record.
        record: String,
        /// What the link holds.
        patient: String,
        /// The address parser's complaint.
        #[source]
        source: <Address as std::str::FromStr>::Err,
    },
    /// A blocking task of the release panicked or was cancelled.
    #[error("key release failed on the node: a background task ended abnormally: {0}")]
    Internal(#[source] tokio::task::JoinError),
}

impl ReleaseError {
    /// Whether this refusal would tell a caller without a grant something about the
    /// record (stored here? linked to a patient?); such refusals are answered as
    /// [`ReleaseError::NotAllowed`].
    pub fn reveals_the_record(&self) -> bool {
        // A damaged consent link (`BadSalt`, `BadPatient`) is the node's fault, but only
        // a stored, linked record has one: answered alike too, the cause audited.
        matches!(
            self,
            ReleaseError::UnknownRecord(_)
                | ReleaseError::NotLinked(_)
                | ReleaseError::Denied(_)
                | ReleaseError::BadSalt { .. }
                | ReleaseError::BadPatient { .. }
        )
    }

    /// What the caller is told: [`ReleaseError::NotAllowed`] for every refusal that
    /// [reveals the record](Self::reveals_the_record), the error itself otherwise.
    pub fn for_caller(self) -> Self {
        if self.reveals_the_record() {
            ReleaseError::NotAllowed
        } else {
            self
        }
    }
}

// Not `#[from]`: a missing record is the requester's `UnknownRecord`, not a store failure,
// so every `?` on a store call maps it the same way.
impl From<StoreError> for ReleaseError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownRecord(id) => ReleaseError::UnknownRecord(id),
            other => ReleaseError::Store(other),
        }
    }
}

/// A released key.
#[derive(Debug, Clone)]
pub struct Released {
    /// The data key wrapped for the grantee's certificate.
    pub key_wrap: KeyWrap,
    /// Why it was allowed.
    pub access: Access,
}

/// The owner node's key-release service.
pub struct KeyReleaser {
    store: Arc<Store>,
    // `Arc`s: the manifest check, unwrap and re-wrap run in `spawn_blocking`.
    owner_certificate: Arc<Certificate>,
    decryptor: Arc<Mutex<UnlockedDecryptor>>,
    cache: Arc<GrantCache>,
    provider: DynProvider,
    node_registry: Address,
    challenges: Mutex<BoundedMap<String, SystemTime>>,
}

impl KeyReleaser {
    /// A releaser for the records of `store`, owned by `owner_certificate`.
    pub fn new(
        store: Arc<Store>,
        owner_certificate: Certificate,
        decryptor: Arc<Mutex<UnlockedDecryptor>>,
        cache: Arc<GrantCache>,
        provider: DynProvider,
        node_registry: Address,
    ) -> Self {
        Self {
            store,
            owner_certificate: Arc::new(owner_certificate),
            decryptor,
            cache,
            provider,
            node_registry,
            challenges: Mutex::new(BoundedMap::new(CHALLENGES)),
        }
    }

    /// The grant cache the releaser checks (synced before every check).
    pub fn cache(&self) -> &Arc<GrantCache> {
        &self.cache
    }

    /// The read-only provider of the chain.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// A fresh single-use challenge.
    pub fn challenge(&self) -> Result<String, ReleaseError> {
        let mut bytes = [0u8; 16];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| ReleaseError::Crypto(CryptoError::Random))?;
        let challenge = hex::encode(bytes);
        // Stale challenges are refused when used and forgotten with their generation:
        // asking for challenges never costs a scan.
        self.challenges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(challenge.clone(), SystemTime::now());
        Ok(challenge)
    }

    /// Checks a request and, if everything allows it, releases the key, audited (before
    /// the key leaves) under `caller`, the principal the transport authenticated
    /// (`token:…`, `wallet:0x…`, a peer id), never under the grantee the request names:
    /// the grantee is recorded in the entry's detail.
    ///
    /// A refusal is not written here: the caller audits it with [`denial_event`]
    /// through its coalescing log, so a flood of refused requests cannot cost one fsync
    /// each.
    pub async fn release(
        &self,
        request: &KeyRequest,
        caller: &str,
    ) -> Result<Released, ReleaseError> {
        let released = match self.check_and_wrap(request).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(
                    record = %request.record,
                    grantee = %request.grantee,
                    caller,
                    reason = %e,
                    "key release refused"
                );
                return Err(e);
            }
        };
        tracing::info!(
            record = %request.record,
            grantee = %request.grantee,
            caller,
            access = ?released.access,
            "key released"
        );
        let mut detail = request_detail(request);
        detail.insert(
            "access".into(),
            match released.access {
                Access::Granted { grant_id, .. } => format!("grant {grant_id}"),
                Access::Emergency { emergency_id, .. } => format!("emergency {emergency_id}"),
            },
        );
        let event = AuditEvent {
            // Break-glass releases are their own kind of entry, so they stand out.
            action: match released.access {
                Access::Granted { .. } => AuditAction::KeyRelease,
                Access::Emergency { .. } => AuditAction::EmergencyAccess,
            },
            actor: caller.to_string(),
            subject: request.record.to_string(),
            detail,
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.audit(event))
            .await
            .map_err(ReleaseError::Internal)?
            .map_err(ReleaseError::Store)?;
        Ok(released)
    }

    async fn check_and_wrap(&self, request: &KeyRequest) -> Result<Released, ReleaseError> {
        // 1. Challenge: ours, fresh, single use.
        let issued = self
            .challenges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request.challenge);
        let fresh = issued.is_some_and(is_fresh);
        if !fresh {
            return Err(ReleaseError::BadChallenge);
        }
        // 2. Signed by the grantee (one secp256k1 recovery: cheap enough inline).
        let message = KeyRequest::message(
            &request.record,
            request.grantee,
            request.purpose,
            &request.challenge,
        );
        let signer = recover_personal_sign(message.as_bytes(), &request.signature)
            .map_err(|_| ReleaseError::NotGrantee(request.grantee))?;
        if signer != request.grantee {
            return Err(ReleaseError::NotGrantee(request.grantee));
        }
        // 3. The certificate sent (its self-signatures are ML-DSA: CPU work, off the
        // executor), and the one the grantee published, before the record is looked at.
        let certificate_bytes = request.certificate.clone();
        let certificate = tokio::task::spawn_blocking(move || {
            Certificate::from_bytes(&certificate_bytes).map_err(ReleaseError::BadCertificate)
        })
        .await
        .map_err(ReleaseError::Internal)??;
        let registry = NodeRegistry::new(self.node_registry, self.provider.clone());
        let published = registry
            .keyOf(request.grantee)
            .call()
            .await
            .map_err(ChainError::rpc)?;
        let given = certificate.id();
        if published
            .to_string()
            .trim_start_matches("0x")
            .to_ascii_uppercase()
            != given.as_str()
        {
            return Err(ReleaseError::CertificateMismatch {
                grantee: request.grantee,
                given: given.to_string(),
                published: published.to_string(),
            });
        }
        // Synced before the record is looked up, so a record that is not here takes
        // as long to refuse as one that is.
        self.cache.sync(&self.provider).await?;
        // 4. The record and its consenting patient.
        let store = self.store.clone();
        let record = request.record;
        let (link, patient, manifest) = tokio::task::spawn_blocking(move || {
            let link = store.consent_link(&record)?;
            let manifest = store.manifest(&record)?;
            let link = link.ok_or_else(|| ReleaseError::NotLinked(record.to_string()))?;
            let patient =
                link.patient
                    .parse::<Address>()
                    .map_err(|source| ReleaseError::BadPatient {
                        record: record.to_string(),
                        patient: link.patient.clone(),
                        source,
                    })?;
            Ok::<_, ReleaseError>((link, patient, manifest))
        })
        .await
        .map_err(ReleaseError::Internal)??;
        // 5. Consent, as of the latest block (synced above).
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record_query = AccessQuery {
            patient,
            grantee: request.grantee,
            kind: SCOPE_RECORD,
            scope: record_scope(&record, &link.salt)?,
            purpose: request.purpose,
        };
        let patient_query = AccessQuery {
            kind: SCOPE_PATIENT,
            scope: patient_scope(&self.owner_certificate.id(), patient),
            ..record_query
        };
        // A grant for this record, or for all of the patient's records here.
        let access = match self.cache.check(&record_query, now) {
            Ok(access) => access,
            Err(record_denial) => match self.cache.check(&patient_query, now) {
                Ok(access) => access,
                // Say the most specific reason: the record's, unless it had no grant.
                Err(patient_denial) if record_denial == Denial::NoGrant => {
                    return Err(patient_denial.into())
                }
                Err(_) => return Err(record_denial.into()),
            },
        };
        // Allowed: verify our manifest, unwrap with our key, wrap for theirs. ML-DSA,
        // ML-KEM and the wait for the decryptor (shared with downloads) all block, so
        // they run on the blocking pool.
        let owner = self.owner_certificate.clone();
        let decryptor = self.decryptor.clone();
        let key_wrap = tokio::task::spawn_blocking(move || {
            owner
                .verify_manifest(&manifest)
                .map_err(ReleaseError::Crypto)?;
            // The guard is a temporary: the decryptor is free again before the re-wrap.
            let key = decryptor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_key(&manifest.body)
                .map_err(ReleaseError::Crypto)?;
            certificate.wrap(&key).map_err(ReleaseError::BadCertificate)
        })
        .await
        .map_err(ReleaseError::Internal)??;
        Ok(Released { key_wrap, access })
    }
}
