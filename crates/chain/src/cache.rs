//! The grant cache: the consent state of one `ConsentRegistry`, rebuilt from its events
//! and kept current by syncing new blocks. A check is a memory lookup; a revocation
//! counts from the sync that sees its block. A snapshot file lets a restarted node catch
//! up from the last block it processed instead of from the deployment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use serde::{Deserialize, Serialize};

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

/// Consent state of one `ConsentRegistry`, fed by its events.
pub struct GrantCache {
    contract: Address,
    from_block: u64,
    snapshot: Option<PathBuf>,
    state: RwLock<State>,
}

/// Blocks fetched per `eth_getLogs` call, below common RPC limits.
const LOG_RANGE: u64 = 2_000;

impl GrantCache {
    /// An empty cache for `contract`, scanning events from `from_block`.
    pub fn new(contract: Address, from_block: u64) -> Self {
        Self {
            contract,
            from_block,
            snapshot: None,
            state: RwLock::new(State::default()),
        }
    }

    /// A cache persisted at `path`: loads it if present (so the next sync resumes after
    /// its last block) and rewrites it after each sync.
    pub fn with_snapshot(
        contract: Address,
        from_block: u64,
        path: &Path,
    ) -> Result<Self, ChainError> {
        let snap_err = |reason: String| ChainError::Snapshot {
            path: path.display().to_string(),
            reason,
        };
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| snap_err(format!("unreadable: {e}")))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(snap_err(e.to_string())),
        };
        Ok(Self {
            contract,
            from_block,
            snapshot: Some(path.to_path_buf()),
            state: RwLock::new(state),
        })
    }

    /// The last block whose events are applied.
    pub fn last_block(&self) -> Option<u64> {
        self.read().last_block
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies every event up to the chain's latest block; returns that block.
    pub async fn sync<P: Provider>(&self, provider: &P) -> Result<u64, ChainError> {
        let latest = provider.get_block_number().await.map_err(ChainError::rpc)?;
        let mut next = self.read().last_block.map_or(self.from_block, |b| b + 1);
        while next <= latest {
            let to = latest.min(next + LOG_RANGE - 1);
            let filter = Filter::new()
                .address(self.contract)
                .from_block(next)
                .to_block(to);
            let logs = provider.get_logs(&filter).await.map_err(ChainError::rpc)?;
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            for log in &logs {
                apply(&mut state, log);
            }
            state.last_block = Some(to);
            drop(state);
            next = to + 1;
        }
        if self.read().last_block.is_none() || latest < self.from_block {
            self.state
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .last_block = Some(latest);
        }
        self.save()?;
        Ok(latest)
    }

    fn save(&self) -> Result<(), ChainError> {
        let Some(path) = &self.snapshot else {
            return Ok(());
        };
        let snap_err = |reason: String| ChainError::Snapshot {
            path: path.display().to_string(),
            reason,
        };
        let bytes = serde_json::to_vec(&*self.read()).map_err(|e| snap_err(e.to_string()))?;
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, bytes)
            .and_then(|()| std::fs::rename(&temp, path))
            .map_err(|e| snap_err(e.to_string()))
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

fn apply(state: &mut State, log: &alloy::rpc::types::Log) {
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
            }
        }
        ConsentRegistry::EmergencyClosed::SIGNATURE_HASH => {
            if let Ok(e) = log.log_decode::<ConsentRegistry::EmergencyClosed>() {
                if let Some(em) = state.emergencies.get_mut(&e.inner.data.emergencyId) {
                    em.closed = true;
                }
            }
        }
        _ => {}
    }
}
