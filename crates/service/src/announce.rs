//! Announcing in the DHT that this node provides its records: each new record at once,
//! every stored record when the network starts (the DHT keeps provider records in
//! memory only; Kademlia republishes them every 12 hours), and a retry for each
//! announcement that failed, so no record stays unfindable after a transient refusal.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medmesh_core::RecordId;
use medmesh_net::{NetError, Network};

use crate::lock;
use medmesh_store::Store;

/// How often failed announcements are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(60);
/// Failed announcements remembered for a retry; beyond it they count as failed and
/// wait for the next start (or Kademlia's own republishing).
const MAX_PENDING: usize = 100_000;

/// Announcement counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnnounceStats {
    /// Announcements that succeeded.
    pub announced: u64,
    /// Announcements that failed (each retry that fails counts again).
    pub failed: u64,
    /// Records waiting for a retry.
    pub pending: u64,
}

/// Announces records and retries failures.
#[derive(Default)]
pub(crate) struct Announcer {
    announced: AtomicU64,
    failed: AtomicU64,
    pending: Mutex<BTreeSet<RecordId>>,
}

impl Announcer {
    /// Announces `id`; a failure is a warning, counted, and retried later. `Err` when
    /// the network has stopped.
    pub(crate) async fn announce(&self, network: &Network, id: RecordId) -> Result<(), Stopped> {
        match network.provide(*id.cid()).await {
            Ok(()) => {
                self.announced.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(NetError::Stopped) => Err(Stopped),
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut pending = lock(&self.pending);
                if pending.len() < MAX_PENDING {
                    pending.insert(id);
                }
                tracing::warn!(record = %id, error = %e, "provider announcement failed; retrying in {} s", RETRY_EVERY.as_secs());
                Ok(())
            }
        }
    }

    /// Announces every stored record, then retries failures every [`RETRY_EVERY`]
    /// until the network stops.
    pub(crate) fn spawn(self: &Arc<Self>, network: Network, store: Arc<Store>) {
        let this = self.clone();
        tokio::spawn(async move {
            // Ids only, own and held (replicas must stay findable too): no metadata, no
            // index key needed.
            let listed = tokio::task::spawn_blocking(move || store.record_ids()).await;
            match listed {
                Ok(Ok(ids)) => {
                    for id in ids {
                        if this.announce(&network, id).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot list records to announce"),
                Err(_) => return,
            }
            let mut tick = tokio::time::interval(RETRY_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let retry = std::mem::take(&mut *lock(&this.pending));
                for id in retry {
                    if this.announce(&network, id).await.is_err() {
                        return;
                    }
                }
            }
        });
    }

    pub(crate) fn stats(&self) -> AnnounceStats {
        AnnounceStats {
            announced: self.announced.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            pending: lock(&self.pending).len() as u64,
        }
    }
}

/// The network stopped.
pub(crate) struct Stopped;
