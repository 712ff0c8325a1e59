//! `AuditAnchor`: the heads of an institution's audit log anchored on chain, and the
//! check that the local log still reaches every one of them.
//!
//! The local log ([`medmesh_store::Store::audit_verify`]) proves that no entry was
//! edited, removed or reordered *unless* someone recomputed every hash after the edit.
//! An anchor fixes the hash of one entry (the head after `entries` entries, i.e. the
//! hash of entry `entries - 1`) on chain, where the institution cannot change it, so a
//! log rewritten consistently before an anchor no longer reaches that anchor's head.
//! Anchors are sent with [`crate::Relayer::anchor_audit`].

use std::sync::Arc;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::DynProvider;
use medmesh_store::{AuditBreak, AuditSummary, Store, StoreError};

use crate::bindings::AuditAnchor;
use crate::ChainError;

/// One anchored head, as `AuditAnchor.anchorAt` returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// Its position in the institution's list, from 0.
    pub index: u64,
    /// The log's head after `entries` entries: the hash of entry `entries - 1`.
    pub head: B256,
    /// How many entries the log had.
    pub entries: u64,
    /// Block timestamp of the anchor, Unix seconds.
    pub anchored_at: u64,
}

impl Anchor {
    /// The head as the audit log writes hashes (lower-case hex, no `0x`).
    pub fn head_hex(&self) -> String {
        hex::encode(self.head.0)
    }
}

/// An audit-log hash (hex sha2-256, as [`medmesh_store::AuditEntry::hash`] holds it) as
/// the `bytes32` `AuditAnchor` stores; `None` when it is not 32 bytes of hex.
pub fn audit_head(hash: &str) -> Option<B256> {
    let bytes = hex::decode(hash.trim().trim_start_matches("0x")).ok()?;
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    Some(B256::from(bytes))
}

/// How many anchors `institution` has in `AuditAnchor` at `contract`.
pub async fn anchor_count(
    provider: &DynProvider,
    contract: Address,
    institution: Address,
) -> Result<u64, ChainError> {
    let count = AuditAnchor::new(contract, provider.clone())
        .anchorCount(institution)
        .call()
        .await
        .map_err(ChainError::rpc)?;
    Ok(count.saturating_to::<u64>())
}

/// Anchor number `index` of `institution`.
pub async fn anchor_at(
    provider: &DynProvider,
    contract: Address,
    institution: Address,
    index: u64,
) -> Result<Anchor, ChainError> {
    let anchor = AuditAnchor::new(contract, provider.clone())
        .anchorAt(institution, U256::from(index))
        .call()
        .await
        .map_err(ChainError::rpc)?;
    Ok(Anchor {
        index,
        head: anchor.head,
        entries: anchor.entries,
        anchored_at: anchor.anchoredAt,
    })
}

/// Every anchor of `institution`, oldest first.
pub async fn anchors(
    provider: &DynProvider,
    contract: Address,
    institution: Address,
) -> Result<Vec<Anchor>, ChainError> {
    let count = anchor_count(provider, contract, institution).await?;
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(65_536));
    for index in 0..count {
        out.push(anchor_at(provider, contract, institution, index).await?);
    }
    Ok(out)
}

/// The newest anchor of `institution`, if it has any.
pub async fn last_anchor(
    provider: &DynProvider,
    contract: Address,
    institution: Address,
) -> Result<Option<Anchor>, ChainError> {
    match anchor_count(provider, contract, institution).await? {
        0 => Ok(None),
        count => Ok(Some(
            anchor_at(provider, contract, institution, count - 1).await?,
        )),
    }
}

/// An anchor the local log does not reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorMismatch {
    /// The anchor.
    pub anchor: Anchor,
    /// The hash of the local entry `entries - 1`, when there is one.
    pub local: Option<String>,
}

impl std::fmt::Display for AnchorMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.anchor;
        write!(
            f,
            "anchor #{} ({} entries, head {}, anchored at {}): ",
            a.index,
            a.entries,
            a.head_hex(),
            a.anchored_at
        )?;
        match (&self.local, a.entries) {
            (_, 0) => write!(f, "it anchors an empty log, which has no head"),
            (Some(local), n) => write!(
                f,
                "the local entry {} has hash {local}: the log was rewritten before this anchor",
                n - 1
            ),
            (None, n) => write!(
                f,
                "the local log has no entry {}: it was cut short or replaced",
                n - 1
            ),
        }
    }
}

/// What comparing the local audit log with the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorReport {
    /// The local log's own walk ([`Store::audit_verify`]).
    pub log: Result<AuditSummary, AuditBreak>,
    /// Anchors checked (all the institution has).
    pub checked: u64,
    /// How many of them the local log does not reach.
    pub mismatches: u64,
    /// The first (oldest) of those.
    pub first_mismatch: Option<AnchorMismatch>,
    /// The newest anchor.
    pub last: Option<Anchor>,
}

impl AnchorReport {
    /// Whether the log verifies and reaches every anchor.
    pub fn is_ok(&self) -> bool {
        self.log.is_ok() && self.first_mismatch.is_none()
    }
}

/// Checks `anchors` against the local log in `store`: for each, the local entry at
/// position `entries - 1` must exist and have the anchored head as its hash. Returns
/// the number of mismatches and the first. Blocking (redb reads): call it off the async
/// executor.
pub fn check_anchors(
    store: &Store,
    anchors: &[Anchor],
) -> Result<(u64, Option<AnchorMismatch>), StoreError> {
    let mut mismatches = 0;
    let mut first = None;
    for anchor in anchors {
        let local = match anchor.entries.checked_sub(1) {
            None => None,
            Some(seq) => store
                .audit_page(seq, 1)?
                .into_iter()
                .next()
                .filter(|entry| entry.seq == seq)
                .map(|entry| entry.hash),
        };
        let reached = anchor.entries > 0
            && local
                .as_deref()
                .is_some_and(|hash| hash.eq_ignore_ascii_case(&anchor.head_hex()));
        if !reached {
            mismatches += 1;
            if first.is_none() {
                first = Some(AnchorMismatch {
                    anchor: *anchor,
                    local,
                });
            }
        }
    }
    Ok((mismatches, first))
}

/// Walks the local audit log and checks it against every anchor `institution` has in
/// `AuditAnchor` at `contract`: what `medmesh audit verify --chain` reports. A log
/// rewritten consistently (every hash recomputed) passes the walk alone but fails here
/// at the first anchor after the rewritten entry.
pub async fn verify_against_chain(
    store: Arc<Store>,
    provider: &DynProvider,
    contract: Address,
    institution: Address,
) -> Result<AnchorReport, ChainError> {
    let anchors = anchors(provider, contract, institution).await?;
    let last = anchors.last().copied();
    let checked = anchors.len() as u64;
    let (log, (mismatches, first_mismatch)) = tokio::task::spawn_blocking(move || {
        let log = store.audit_verify()?;
        let found = check_anchors(&store, &anchors)?;
        Ok::<_, StoreError>((log, found))
    })
    .await
    .map_err(ChainError::Task)?
    .map_err(|e| ChainError::Store(Box::new(e)))?;
    Ok(AnchorReport {
        log,
        checked,
        mismatches,
        first_mismatch,
        last,
    })
}
