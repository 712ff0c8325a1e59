//! The grant cache: the consent state of one `ConsentRegistry`, rebuilt from its events
//! and kept current by syncing new blocks. A check is a memory lookup; a revocation
//! counts from the sync that sees its block. A snapshot file lets a restarted node catch
//! up from the last block it processed instead of from the deployment.
//!
//! Syncs are serialized: concurrent callers (every key request and grant listing syncs
//! first) wait for each other instead of fetching the same logs twice. The snapshot is
//! rewritten only when a sync applied events, or when it moved `last_block` at least
//! [`SNAPSHOT_EVERY_BLOCKS`] past the last snapshot, so a busy chain does not cost a
//! durable write per block. It is always a copy of state already applied, never ahead of
//! it: a restarted node at worst re-reads a few blocks of logs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::bindings::ConsentRegistry;
use crate::ChainError;

/// What a node asks before releasing a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccessQuery {
    /// The patient whose consent counts.
    pub patient: Address,
    /// Who asks for access.
    pub grantee: Address,
    /// `ScopeKind` of the contract: 0 record, 1 patient at institution, 2 dataset.
    pub kind: u8,
    /// The scope value.
    pub scope: B256,
    /// DUO purpose term number.
    pub purpose: u32,
}

/// Why access is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A live grant covers it.
    Granted {
        /// The grant.
        grant_id: B256,
        /// Until when (Unix seconds).
        expiry: u64,
    },
    /// An open break-glass access of the grantee institution covers it.
    Emergency {
        /// The emergency.
        emergency_id: B256,
        /// Until when (Unix seconds).
        until: u64,
    },
}

/// Why access is refused. Each says what a caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No grant from this patient to this grantee for this scope.
    #[error("no grant: the patient has not granted this grantee access to this scope")]
    NoGrant,
    /// Grants exist for the scope, but for other purposes.
    #[error("wrong purpose: the grant covers DUO purposes {granted:?}, not {asked}")]
    WrongPurpose {
        /// The purpose asked for.
        asked: u32,
        /// Purposes that are granted.
        granted: Vec<u32>,
    },
    /// The grant was revoked.
    #[error("revoked: the patient revoked this grant")]
    Revoked,
    /// The grant expired.
    #[error("expired: the grant ended at {expiry} (Unix time)")]
    Expired {
        /// When it ended.
        expiry: u64,
    },
}

/// A grant as the cache knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    /// The grant id.
    pub id: B256,
    /// The consenting patient.
    pub patient: Address,
    /// Who may access.
    pub grantee: Address,
    /// `ScopeKind`.
    pub kind: u8,
    /// The scope.
    pub scope: B256,
    /// DUO purpose term number.
    pub purpose: u32,
    /// Unix seconds.
    pub expiry: u64,
    /// Whether revoked.
    pub revoked: bool,
}

type GrantState = GrantView;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EmergencyState {
    institution: Address,
    patient: Address,
    scope: B256,
    until: u64,
    closed: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// (patient, grantee, kind, scope) → purpose → grant.
    grants: HashMap<String, HashMap<u32, GrantState>>,
    emergencies: HashMap<B256, EmergencyState>,
    /// Last block whose events are applied.
    last_block: Option<u64>,
}

fn grant_key(patient: Address, grantee: Address, kind: u8, scope: B256) -> String {
    format!("{patient}:{grantee}:{kind}:{scope}")
}

/// What one [`GrantCache::sync`] applied, in chain order, and the block it reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The chain's latest block when the sync started; every event up to it is applied.
    pub latest: u64,
    /// Break-glass accesses opened: (emergency id, institution, patient, until).
    pub emergencies_opened: Vec<(B256, Address, Address, u64)>,
    /// Break-glass accesses closed early.
    pub emergencies_closed: Vec<B256>,
    /// Grants created (or renewed).
    pub grants_created: Vec<B256>,
    /// Grants revoked.
    pub grants_revoked: Vec<B256>,
}

impl SyncReport {
    /// Whether the sync applied no consent event.
    pub fn is_empty(&self) -> bool {
        self.emergencies_opened.is_empty()
            && self.emergencies_closed.is_empty()
            && self.grants_created.is_empty()
            && self.grants_revoked.is_empty()
    }
}

/// Consent state of one `ConsentRegistry`, fed by its events.
pub struct GrantCache {
    contract: Address,
    from_block: u64,
    snapshot: Option<PathBuf>,
    // An `Arc` so the snapshot can be serialized inside `spawn_blocking`.
    state: Arc<RwLock<State>>,
    /// Held across a sync; guards the last block written to the snapshot.
    syncing: tokio::sync::Mutex<Saved>,
    /// Every non-empty [`SyncReport`], whoever synced.
    changes: broadcast::Sender<SyncReport>,
}

/// What the snapshot file holds, as far as this process knows.
#[derive(Debug, Clone, Copy)]
struct Saved {
    /// `last_block` of the state last written (or loaded); `None` when there is none.
    last_block: Option<u64>,
}

/// Longest a chain call of a sync may take.
const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `call`, or [`ChainError::Timeout`] after `after`.
async fn within<T>(
    after: std::time::Duration,
    what: &'static str,
    call: impl std::future::Future<Output = T>,
) -> Result<T, ChainError> {
    tokio::time::timeout(after, call)
        .await
        .map_err(|_| ChainError::Timeout { what, after })
}

/// Blocks fetched per `eth_getLogs` call, below common RPC limits.
const LOG_RANGE: u64 = 2_000;

/// A sync that applied no event still rewrites the snapshot once `last_block` moved this
/// many blocks past it, so a restart never re-reads more than about this many blocks.
pub const SNAPSHOT_EVERY_BLOCKS: u64 = 1_000;

/// Reports kept for a slow [`GrantCache::subscribe`]r before it lags.
const CHANGES_BUFFER: usize = 256;

impl GrantCache {
    /// An empty cache for `contract`, scanning events from `from_block`.
    pub fn new(contract: Address, from_block: u64) -> Self {
        Self::with_state(contract, from_block, None, State::default())
    }

    /// A cache persisted at `path`: loads it if present (so the next sync resumes after
    /// its last block) and rewrites it after syncs that changed it (see the module doc).
    pub fn with_snapshot(
        contract: Address,
        from_block: u64,
        path: &Path,
    ) -> Result<Self, ChainError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ChainError::SnapshotFormat {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => {
                return Err(ChainError::SnapshotIo {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Self::with_state(
            contract,
            from_block,
            Some(path.to_path_buf()),
            state,
        ))
    }

    fn with_state(
        contract: Address,
        from_block: u64,
        snapshot: Option<PathBuf>,
        state: State,
    ) -> Self {
        let saved = Saved {
            last_block: state.last_block,
        };
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        Self {
            contract,
            from_block,
            snapshot,
            state: Arc::new(RwLock::new(state)),
            syncing: tokio::sync::Mutex::new(saved),
            changes,
        }
    }

    /// The last block whose events are applied.
    pub fn last_block(&self) -> Option<u64> {
        self.read().last_block
    }

    /// Every later sync's non-empty [`SyncReport`], whoever called [`GrantCache::sync`]
    /// (a key request, a grant listing…), so break-glass notifications miss none. A
    /// receiver that falls more than a few hundred reports behind gets
    /// `RecvError::Lagged` and should look at [`GrantCache::open_emergencies`] instead.
    pub fn subscribe(&self) -> broadcast::Receiver<SyncReport> {
        self.changes.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies every event up to the chain's latest block; says what it applied and
    /// which block it reached. Concurrent calls run one after the other.
    pub async fn sync<P: Provider>(&self, provider: &P) -> Result<SyncReport, ChainError> {
        let mut saved = self.syncing.lock().await;
        // Bounded: syncs run one at a time, so one hung call would stall every key
        // release and grant listing behind it.
        let latest = within(RPC_TIMEOUT, "eth_blockNumber", provider.get_block_number())
            .await?
            .map_err(ChainError::rpc)?;
        let mut report = SyncReport {
            latest,
            ..SyncReport::default()
        };
        let fetched = self.apply_logs(provider, latest, &mut report).await;
        if fetched.is_ok() {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if state.last_block.is_none() || latest < self.from_block {
                state.last_block = Some(latest);
            }
        }
        // What was applied before a failed page counts too: announce and persist it.
        if !report.is_empty() {
            tracing::debug!(
                latest,
                grants_created = report.grants_created.len(),
                grants_revoked = report.grants_revoked.len(),
                emergencies_opened = report.emergencies_opened.len(),
                emergencies_closed = report.emergencies_closed.len(),
                "grant cache applied consent events"
            );
            // No receiver is fine: nobody listens.
            let _ = self.changes.send(report.clone());
        }
        self.persist(&mut saved, !report.is_empty()).await;
        fetched.map(|()| report)
    }

    /// Fetches and applies the logs after `last_block` up to `latest`, page by page;
    /// `last_block` advances with each page applied.
    async fn apply_logs<P: Provider>(
        &self,
        provider: &P,
        latest: u64,
        report: &mut SyncReport,
    ) -> Result<(), ChainError> {
        let mut next = self.read().last_block.map_or(self.from_block, |b| b + 1);
        while next <= latest {
            let to = latest.min(next.saturating_add(LOG_RANGE - 1));
            let filter = Filter::new()
                .address(self.contract)
                .from_block(next)
                .to_block(to);
            let logs = within(RPC_TIMEOUT, "eth_getLogs", provider.get_logs(&filter))
                .await?
                .map_err(ChainError::rpc)?;
            {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                for log in &logs {
                    apply(&mut state, log, report);
                }
                state.last_block = Some(to);
            }
            next = to.saturating_add(1);
        }
        Ok(())
    }

    /// Writes the snapshot if events were applied or `last_block` moved far enough past
    /// the last one written. A failed write is logged, not returned: the state in memory
    /// is applied either way, and the next sync tries again.
    async fn persist(&self, saved: &mut Saved, applied_events: bool) {
        let Some(path) = self.snapshot.clone() else {
            return;
        };
        let Some(current) = self.last_block() else {
            return;
        };
        let behind = match saved.last_block {
            Some(written) => current.saturating_sub(written),
            None => current.saturating_sub(self.from_block),
        };
        let moved = saved.last_block != Some(current);
        if !(moved && (applied_events || behind >= SNAPSHOT_EVERY_BLOCKS)) {
            return;
        }
        let state = self.state.clone();
        let target = path.clone();
        // Serializing a large cache and the fsyncs are blocking work.
        let written = tokio::task::spawn_blocking(move || -> Result<Option<u64>, ChainError> {
            // The sync lock is held, so nothing changes the state under this read lock.
            let (bytes, last_block) = {
                let state = state.read().unwrap_or_else(|e| e.into_inner());
                let bytes =
                    serde_json::to_vec(&*state).map_err(|source| ChainError::SnapshotFormat {
                        path: target.clone(),
                        source,
                    })?;
                (bytes, state.last_block)
            };
            medmesh_store::atomic_write(&target, &bytes).map_err(|source| {
                ChainError::SnapshotIo {
                    path: target.clone(),
                    source,
                }
            })?;
            Ok(last_block)
        })
        .await
        .map_err(ChainError::Task)
        .and_then(|r| r);
        match written {
            Ok(last_block) => {
                tracing::debug!(path = %path.display(), ?last_block, "grant cache snapshot written");
                saved.last_block = last_block;
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "could not write the grant cache snapshot; the next sync tries again"
            ),
        }
    }

    /// Whether `query` is allowed at Unix time `now`, and why.
    pub fn check(&self, query: &AccessQuery, now: u64) -> Result<Access, Denial> {
        let state = self.read();
        let granted = state.grants.get(&grant_key(
            query.patient,
            query.grantee,
            query.kind,
            query.scope,
        ));
        let grant_result = match granted {
            None => Err(Denial::NoGrant),
            Some(by_purpose) => match by_purpose.get(&query.purpose) {
                None => {
                    let mut granted: Vec<u32> = by_purpose.keys().copied().collect();
                    granted.sort_unstable();
                    Err(Denial::WrongPurpose {
                        asked: query.purpose,
                        granted,
                    })
                }
                Some(g) if g.revoked => Err(Denial::Revoked),
                Some(g) if g.expiry <= now => Err(Denial::Expired { expiry: g.expiry }),
                Some(g) => Ok(Access::Granted {
                    grant_id: g.id,
                    expiry: g.expiry,
                }),
            },
        };
        if grant_result.is_ok() {
            return grant_result;
        }
        // Break-glass access of the grantee institution overrides a missing grant.
        let emergency = state.emergencies.iter().find(|(_, e)| {
            e.institution == query.grantee
                && e.patient == query.patient
                && e.scope == query.scope
                && !e.closed
                && e.until > now
        });
        match emergency {
            Some((id, e)) => Ok(Access::Emergency {
                emergency_id: *id,
                until: e.until,
            }),
            None => grant_result,
        }
    }

    /// Grants involving `patient` and/or `grantee` (every grant when both are `None`),
    /// by expiry.
    pub fn grants(&self, patient: Option<Address>, grantee: Option<Address>) -> Vec<GrantView> {
        let state = self.read();
        let mut out: Vec<GrantView> = state
            .grants
            .values()
            .flat_map(|by_purpose| by_purpose.values())
            .filter(|g| {
                patient.is_none_or(|p| g.patient == p) && grantee.is_none_or(|a| g.grantee == a)
            })
            .cloned()
            .collect();
        out.sort_by_key(|g| (g.expiry, g.id));
        out
    }

    /// Open break-glass accesses at `now`: (id, institution, patient, until).
    pub fn open_emergencies(&self, now: u64) -> Vec<(B256, Address, Address, u64)> {
        self.read()
            .emergencies
            .iter()
            .filter(|(_, e)| !e.closed && e.until > now)
            .map(|(id, e)| (*id, e.institution, e.patient, e.until))
            .collect()
    }
}

fn apply(state: &mut State, log: &alloy::rpc::types::Log, report: &mut SyncReport) {
    let Some(topic) = log.topic0() else { return };
    match *topic {
        ConsentRegistry::GrantCreated::SIGNATURE_HASH => {
            if let Ok(e) = log.log_decode::<ConsentRegistry::GrantCreated>() {
                let e = e.inner.data;
                state
                    .grants
                    .entry(grant_key(e.patient, e.grantee, e.kind, e.scope))
                    .or_default()
                    .insert(
                        e.purpose,
                        GrantState {
                            id: e.grantId,
                            patient: e.patient,
                            grantee: e.grantee,
                            kind: e.kind,
                            scope: e.scope,
                            purpose: e.purpose,
                            expiry: e.expiry,
                            revoked: false,
                        },
                    );
                report.grants_created.push(e.grantId);
            }
        }
        ConsentRegistry::GrantRevoked::SIGNATURE_HASH => {
            if let Ok(e) = log.log_decode::<ConsentRegistry::GrantRevoked>() {
                let id = e.inner.data.grantId;
                for by_purpose in state.grants.values_mut() {
                    for g in by_purpose.values_mut().filter(|g| g.id == id) {
                        g.revoked = true;
                    }
                }
                report.grants_revoked.push(id);
            }
        }
        ConsentRegistry::EmergencyOpened::SIGNATURE_HASH => {
            if let Ok(e) = log.log_decode::<ConsentRegistry::EmergencyOpened>() {
                let e = e.inner.data;
                state.emergencies.insert(
                    e.emergencyId,
                    EmergencyState {
                        institution: e.institution,
                        patient: e.patient,
                        scope: e.scope,
                        until: e.until,
                        closed: false,
                    },
                );
                report
                    .emergencies_opened
                    .push((e.emergencyId, e.institution, e.patient, e.until));
            }
        }
        ConsentRegistry::EmergencyClosed::SIGNATURE_HASH => {
            if let Ok(e) = log.log_decode::<ConsentRegistry::EmergencyClosed>() {
                let id = e.inner.data.emergencyId;
                if let Some(em) = state.emergencies.get_mut(&id) {
                    em.closed = true;
                }
                report.emergencies_closed.push(id);
            }
        }
        _ => {}
    }
}
