//! Moving records between nodes: fetching from peers, replicas on peers, and the
//! network's status.

use std::sync::Arc;
use std::time::Duration;

use medmesh_core::{FetchReport, PeerInfo, RecordId, ReplicaOutcome};
use medmesh_net::{FetchOptions, Multiaddr, NetError, PeerId};
use medmesh_store::{Replication, StoreError};

use crate::error::{blocking, ServiceError};
use crate::events::NodeEvent;
use crate::records::Progress;
use crate::services::NodeServices;

/// Most peers a record may be replicated on.
pub const MAX_COPIES: u32 = 16;
/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(20);

/// This node on the network.
#[derive(Debug, Clone)]
pub struct NetworkView {
    /// The node's PeerId.
    pub peer_id: PeerId,
    /// Addresses peers can dial.
    pub listen: Vec<Multiaddr>,
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
}

/// A record's replication settings, and the answers of the peers asked now.
#[derive(Debug, Clone)]
pub struct ReplicationView {
    /// Settings and current holders.
    pub replication: Replication,
    /// Answers of the peers asked (empty when only reading).
    pub outcomes: Vec<ReplicaOutcome>,
}

impl NodeServices {
    /// The node's PeerId, addresses and connected peers.
    pub fn network_view(&self) -> Result<NetworkView, ServiceError> {
        let net = self.require_network()?;
        Ok(NetworkView {
            peer_id: net.peer_id(),
            listen: net.listen_addrs(),
            peers: net.peers(),
        })
    }

    /// Dials a peer; returns its PeerId once connected.
    pub async fn dial(&self, address: Multiaddr) -> Result<PeerId, ServiceError> {
        let net = self.require_network()?;
        match tokio::time::timeout(DIAL_TIMEOUT, net.dial(address.clone())).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(NetError::Dial {
                addr: address.to_string(),
                reason: format!("no answer within {} s", DIAL_TIMEOUT.as_secs()),
                source: None,
            }
            .into()),
        }
    }

    /// Fetches record `id` from peers into this node (verified block by block, resumed
    /// from blocks already here) and indexes it.
    pub async fn fetch(
        &self,
        id: RecordId,
        options: FetchOptions,
    ) -> Result<FetchReport, ServiceError> {
        self.fetch_with_progress(id, options, Arc::new(|_| {}))
            .await
    }

    /// [`fetch`](Self::fetch), calling `progress` with the bytes of each block fetched.
    pub async fn fetch_with_progress(
        &self,
        id: RecordId,
        options: FetchOptions,
        progress: Progress,
    ) -> Result<FetchReport, ServiceError> {
        let net = self.require_network()?;
        let report = net.fetch_record(id, options, progress).await?;
        if report.imported {
            self.adopt_if_own(id).await;
        }
        if report.blocks_fetched > 0 || report.imported {
            self.events.publish(NodeEvent::RecordFetched {
                record: id.to_string(),
                providers: report.providers.clone(),
                blocks_fetched: report.blocks_fetched,
            });
        }
        Ok(report)
    }

    /// A record just imported that this institution owns (fetched back from a replica,
    /// or from another site) becomes one of its own records again: listed, searchable,
    /// linkable. Needs the institution's keys to open its metadata; without them, or on
    /// failure (logged), it stays held.
    async fn adopt_if_own(&self, id: RecordId) {
        let Ok(keys) = self.keys().cloned() else {
            return;
        };
        let store = self.store.clone();
        let adopted = blocking("record adoption", move || {
            let manifest = store.manifest(&id)?;
            if manifest.body.owner != keys.certificate.id() {
                return Ok(false);
            }
            let meta = {
                let mut decryptor = keys.decryptor.lock().unwrap_or_else(|e| e.into_inner());
                store
                    .open_record(&id, &keys.certificate, &mut decryptor)?
                    .meta()
                    .clone()
            };
            Ok(store.adopt_record(&id, &meta)?)
        })
        .await;
        if let Err(e) = adopted {
            tracing::warn!(record = %id, error = %e, "a record of this institution fetched from peers stays held");
        }
    }

    /// Fetches record `id` when this node lacks it and the network is on (downloads
    /// call it); otherwise does nothing.
    pub(crate) async fn ensure_local(&self, id: &RecordId) -> Result<(), ServiceError> {
        if self.network().is_none() {
            return Ok(());
        }
        if self.has_record(*id).await? {
            return Ok(());
        }
        match self.fetch(*id, FetchOptions::default()).await {
            Ok(_) => Ok(()),
            Err(ServiceError::Net(source)) if matches!(*source, NetError::NotFound(_)) => {
                Err(ServiceError::NotFoundAnywhere {
                    record: id.to_string(),
                    source,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// A stored record's replication settings (zero copies when it has none).
    pub async fn replication(&self, id: RecordId) -> Result<Replication, ServiceError> {
        let store = self.store.clone();
        blocking("replication lookup", move || {
            if !store.has_record(&id)? {
                return Err(StoreError::UnknownRecord(id.to_string()).into());
            }
            Ok(store.replication(&id)?.unwrap_or_default())
        })
        .await
    }

    /// Replicates record `id` on `copies` of `candidates` (PeerIds, in order of
    /// preference): saves the settings, asks the peers, and returns what they answered.
    /// A repair pass keeps the count afterwards.
    pub async fn replicate(
        &self,
        id: RecordId,
        copies: u32,
        candidates: Vec<String>,
    ) -> Result<ReplicationView, ServiceError> {
        if copies == 0 || copies > MAX_COPIES {
            return Err(ServiceError::InvalidInput(format!(
                "`copies` must be 1–{MAX_COPIES}"
            )));
        }
        if candidates.len() < copies as usize {
            return Err(ServiceError::InvalidInput(format!(
                "{copies} copies asked but only {} candidates named",
                candidates.len()
            )));
        }
        let net = self.require_network()?;
        for c in &candidates {
            let peer: PeerId = c.parse().map_err(|_| {
                ServiceError::InvalidInput(format!("`{c}` is not a PeerId (12D3KooW…)"))
            })?;
            if peer == net.peer_id() {
                return Err(ServiceError::InvalidInput(
                    "a node cannot be a replica of itself".into(),
                ));
            }
        }
        let previous = self.replication(id).await?;
        let settings = Replication {
            copies,
            holders: previous
                .holders
                .into_iter()
                .filter(|h| candidates.contains(h))
                .collect(),
            candidates,
        };
        {
            let (store, settings) = (self.store.clone(), settings.clone());
            blocking("replication settings", move || {
                Ok(store.set_replication(&id, &settings)?)
            })
            .await?;
        }
        let outcomes = net.replicate(&self.store, &id, &settings).await?;
        let replication = self.replication(id).await?;
        self.events.publish(NodeEvent::ReplicationChanged {
            record: id.to_string(),
            copies: replication.copies,
            holders: replication.holders.clone(),
        });
        Ok(ReplicationView {
            replication,
            outcomes,
        })
    }
}
