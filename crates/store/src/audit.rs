//! The append-only, hash-chained audit log.
//!
//! Every entry carries the hash of the previous one, and its own hash covers all its
//! fields, so changing, removing or reordering history breaks the chain at the first
//! altered entry, which [`verify`] names. Entries are written in the same index
//! transaction as the change they describe, so the log and the store never disagree.
//! Someone who rewrites the whole tail consistently is caught only by comparing with an
//! anchored head: the node anchors its head in the `AuditAnchor` contract, and
//! `medmesh audit verify --chain` (`medmesh_chain::anchor`) checks the log against every
//! anchor.

use std::collections::BTreeMap;

use redb::{ReadableTable, Table};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::StoreError;

/// Hash of the (virtual) entry before the first.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const DOMAIN: &[u8] = b"medmesh/audit/v1\n";

/// What an audit entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A record was ingested.
    RecordWrite,
    /// A record was decrypted and read locally.
    RecordRead,
    /// A record's local copy was removed.
    RecordRemove,
    /// Unreferenced blocks were deleted.
    GarbageCollect,
    /// A record's key was released to a grantee.
    KeyRelease,
    /// A grant was checked.
    GrantCheck,
    /// Emergency (break-glass) access was used.
    EmergencyAccess,
    /// An API token was created.
    TokenCreate,
    /// An API token was revoked.
    TokenRevoke,
    /// A wallet signed in (Sign-In with Ethereum).
    SignIn,
    /// A request was refused for lack of authorisation.
    AccessDenied,
    /// A record was linked to the patient wallet that consents for it.
    ConsentLink,
    /// A key request was refused (the reason is in the detail).
    KeyReleaseDenied,
    /// A record fetched from peers entered the index.
    RecordImport,
    /// A grant a patient signed was relayed to the chain by this node.
    GrantRelay,
    /// A revocation a patient signed was relayed to the chain by this node.
    RevocationRelay,
    /// The log's head was anchored on chain (`AuditAnchor`). The anchored head is the
    /// hash of the entry before this one was written (detail `entries`, `head`): an
    /// entry cannot contain its own hash.
    AuditAnchored,
    /// A webhook message was given up on after its last delivery attempt failed (the
    /// detail holds its endpoint, attempts, last error, creation time and body: the dead
    /// letter).
    WebhookUndelivered,
    /// A key request was forwarded to the record owner's node over libp2p (detail: the
    /// owner, grantee, purpose and what the owner answered).
    KeyRequestForwarded,
    /// A medical device was registered (detail: type, key algorithm and fingerprint).
    DeviceRegister,
    /// A device was revoked: its messages are refused from now on.
    DeviceRevoke,
    /// A clinical alert was raised, escalated, acknowledged or cleared (detail: the
    /// rule, severity, value and what happened).
    Alert,
    /// A dataset's differential-privacy budget was set (detail: ε and δ totals).
    DpBudgetSet,
    /// A table was anonymized (a preview or a release; detail: where it came from,
    /// the models, the rows, the levels chosen and the rows suppressed).
    DatasetAnonymize,
    /// A differentially private query was answered or refused (detail: its ε and δ,
    /// the columns it used, the outcome and the remaining budget).
    DpQuery,
}

/// What a caller asks to log.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// What happened.
    pub action: AuditAction,
    /// Who did it (institution id, wallet address, `cli`).
    pub actor: String,
    /// What it was done to (record id, …).
    pub subject: String,
    /// Further facts, never secrets.
    pub detail: BTreeMap<String, String>,
}

/// One entry of the log, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// What happened.
    pub action: AuditAction,
    /// Who did it.
    pub actor: String,
    /// What it was done to.
    pub subject: String,
    /// Further facts.
    #[serde(default)]
    pub detail: BTreeMap<String, String>,
    /// Hash of the previous entry (hex sha2-256), [`GENESIS`] for the first.
    pub prev: String,
    /// Hash of this entry (hex sha2-256 over all fields above).
    pub hash: String,
}

impl AuditEntry {
    fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash.clear();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(DOMAIN);
        ctx.update(&serde_json::to_vec(&unhashed).expect("audit entries serialize"));
        hex::encode(ctx.finish())
    }
}

/// Result of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditSummary {
    /// Entries checked.
    pub entries: u64,
    /// Hash of the last entry ([`GENESIS`] if the log is empty): what gets anchored.
    pub head: String,
}

/// The first entry where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("audit log broken at entry {seq}: {reason}")]
pub struct AuditBreak {
    /// The first bad entry's position.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// Appends an entry inside the caller's write transaction.
pub(crate) fn append(
    table: &mut Table<u64, &[u8]>,
    event: AuditEvent,
) -> Result<AuditEntry, StoreError> {
    let (seq, prev) = match table.last()? {
        Some((k, v)) => {
            let last: AuditEntry = serde_json::from_slice(v.value()).map_err(|e| {
                StoreError::Corrupt(format!("audit entry {} is unreadable: {e}", k.value()))
            })?;
            (k.value() + 1, last.hash)
        }
        None => (0, GENESIS.to_string()),
    };
    let mut entry = AuditEntry {
        seq,
        time: OffsetDateTime::now_utc(),
        action: event.action,
        actor: event.actor,
        subject: event.subject,
        detail: event.detail,
        prev,
        hash: String::new(),
    };
    entry.hash = entry.compute_hash();
    let bytes = serde_json::to_vec(&entry).expect("audit entries serialize");
    table.insert(seq, bytes.as_slice())?;
    Ok(entry)
}

/// Walks the whole chain and names the first bad entry.
pub(crate) fn verify(
    table: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Result<AuditSummary, AuditBreak>, StoreError> {
    let mut expected_seq = 0u64;
    let mut prev = GENESIS.to_string();
    for item in table.iter()? {
        let (k, v) = item?;
        let key = k.value();
        let fail = |seq: u64, reason: String| Ok(Err(AuditBreak { seq, reason }));
        if key != expected_seq {
            return fail(
                expected_seq,
                format!("entry is missing (the next stored entry is {key})"),
            );
        }
        let entry: AuditEntry = match serde_json::from_slice(v.value()) {
            Ok(e) => e,
            Err(e) => return fail(key, format!("entry is unreadable: {e}")),
        };
        if entry.seq != key {
            return fail(key, format!("entry claims to be number {}", entry.seq));
        }
        if entry.prev != prev {
            return fail(key, "its link to the previous entry does not match".into());
        }
        if entry.compute_hash() != entry.hash {
            return fail(
                key,
                "its contents do not match its hash (edited after writing)".into(),
            );
        }
        prev = entry.hash;
        expected_seq += 1;
    }
    Ok(Ok(AuditSummary {
        entries: expected_seq,
        head: prev,
    }))
}

/// Up to `limit` entries starting at `from`.
pub(crate) fn page(
    table: &impl ReadableTable<u64, &'static [u8]>,
    from: u64,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut out = Vec::new();
    for item in table.range(from..)?.take(limit) {
        let (k, v) = item?;
        out.push(serde_json::from_slice(v.value()).map_err(|e| {
            StoreError::Corrupt(format!("audit entry {} is unreadable: {e}", k.value()))
        })?);
    }
    Ok(out)
}
