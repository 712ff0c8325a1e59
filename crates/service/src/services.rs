//! [`NodeServices`]: what a running node has, wired once by the binary and shared by
//! every transport.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use medmesh_chain::{Deployment, KeyReleaser, Relayer};
use medmesh_net::{NetEvent, Network};
use medmesh_store::{AuditAction, AuditEvent, Store, DEFAULT_CHUNK_SIZE};
use tokio::sync::Semaphore;

use crate::announce::{AnnounceStats, Announcer};
use crate::denials::DenialLog;
use crate::error::{blocking, ServiceError};
use crate::events::{EventBus, NodeEvent};
use crate::keys::NodeKeys;

/// How often the node reads new consent events when nothing else made it.
const CONSENT_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// What the node uses of a chain.
pub struct ChainServices {
    /// EIP-155 chain id (for EIP-712 domains).
    pub chain_id: u64,
    /// Contract addresses.
    pub deployment: Deployment,
    /// Key release (with the grant cache).
    pub releaser: Arc<KeyReleaser>,
    /// Relays signed grants from the node's account; `None` when the node has no
    /// account on this chain.
    pub relayer: Option<Arc<Relayer>>,
}

/// Settings of the node's operations.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Plaintext bytes per chunk of new records.
    pub chunk_size: u32,
    /// Records read (streamed to a consumer) at once; more are refused as busy.
    pub max_reads: usize,
    /// Records ingested at once; more are refused as busy.
    pub max_ingests: usize,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            // Each holds a blocking thread (tokio's pool has 512): leave most of the
            // pool to every other operation.
            max_reads: 128,
            max_ingests: 64,
        }
    }
}

/// Everything a running node has, and its operations (in the other modules of this
/// crate). Cheap to share behind an `Arc`.
pub struct NodeServices {
    pub(crate) store: Arc<Store>,
    pub(crate) keys: Option<Arc<NodeKeys>>,
    pub(crate) settings: ServiceSettings,
    pub(crate) events: EventBus,
    pub(crate) denials: DenialLog,
    pub(crate) reads: Arc<Semaphore>,
    pub(crate) ingests: Arc<Semaphore>,
    pub(crate) announcer: Arc<Announcer>,
    chain: OnceLock<ChainServices>,
    network: OnceLock<Network>,
    /// What the registration and anchoring task saw, once started
    /// (`NodeServices::start_chain_life`).
    pub(crate) chain_life: OnceLock<crate::chain_life::SharedView>,
    /// Device telemetry, once started (`NodeServices::start_telemetry`).
    pub(crate) telemetry: OnceLock<Arc<crate::telemetry::Telemetry>>,
}

impl NodeServices {
    /// Services over `store`, writing records owned by `keys`' institution. The chain
    /// and the network are connected afterwards, once each.
    pub fn new(store: Arc<Store>, keys: Arc<NodeKeys>, settings: ServiceSettings) -> Self {
        Self::build(store, Some(keys), settings)
    }

    /// Services over `store` without the institution's keys: for the maintenance
    /// commands (list, inspect, remove, gc, check, audit, tokens, fetch). Operations
    /// that sign or decrypt answer [`ServiceError::KeysLocked`].
    pub fn without_keys(store: Arc<Store>, settings: ServiceSettings) -> Self {
        Self::build(store, None, settings)
    }

    fn build(store: Arc<Store>, keys: Option<Arc<NodeKeys>>, settings: ServiceSettings) -> Self {
        Self {
            denials: DenialLog::new(store.clone()),
            reads: Arc::new(Semaphore::new(settings.max_reads.max(1))),
            ingests: Arc::new(Semaphore::new(settings.max_ingests.max(1))),
            store,
            keys,
            settings,
            events: EventBus::default(),
            announcer: Arc::default(),
            chain: OnceLock::new(),
            network: OnceLock::new(),
            chain_life: OnceLock::new(),
            telemetry: OnceLock::new(),
        }
    }

    /// Connects key release, grants and relaying. Set once; a later call keeps the
    /// first and returns `false`. Registering the node and anchoring its audit log
    /// start separately, with [`NodeServices::start_chain_life`].
    /// Consent changes the grant cache applies (whoever made it sync) are republished
    /// on the event bus as break-glass events.
    pub fn enable_chain(&self, services: ChainServices) -> bool {
        let mut changes = services.releaser.cache().subscribe();
        let (cache, provider) = (
            services.releaser.cache().clone(),
            services.releaser.provider().clone(),
        );
        if self.chain.set(services).is_err() {
            return false;
        }
        // Key requests sync the cache anyway; this keeps break-glass notices prompt when
        // nobody asks for a key.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CONSENT_POLL);
            loop {
                tick.tick().await;
                if let Err(e) = cache.sync(&provider).await {
                    tracing::debug!(error = %e, "background consent sync failed");
                }
            }
        });
        let bus = self.events.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let report = match changes.recv().await {
                    Ok(report) => report,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "consent changes missed by the event bus");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                for (id, institution, patient, until) in report.emergencies_opened {
                    bus.publish(NodeEvent::BreakGlassOpened {
                        emergency_id: id.to_string(),
                        institution: institution.to_string(),
                        patient: patient.to_string(),
                        until,
                    });
                }
                for id in report.emergencies_closed {
                    bus.publish(NodeEvent::BreakGlassClosed {
                        emergency_id: id.to_string(),
                    });
                }
            }
        });
        true
    }

    /// Connects the peer-to-peer network (fetching, replication, announcing each new
    /// record, failures retried); what peers do with this node (connections, blocks served, replicas
    /// held, repairs) is republished on the event bus. Set once.
    pub fn enable_network(&self, network: Network) -> bool {
        let mut net_events = network.events();
        if self.network.set(network).is_err() {
            return false;
        }
        let bus = self.events.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match net_events.recv().await {
                    Ok(NetEvent::Connected(peer)) => bus.publish(NodeEvent::PeerConnected {
                        peer: peer.to_string(),
                    }),
                    Ok(NetEvent::Disconnected(peer)) => bus.publish(NodeEvent::PeerDisconnected {
                        peer: peer.to_string(),
                    }),
                    Ok(NetEvent::Served {
                        peer,
                        record,
                        blocks,
                        bytes,
                    }) => bus.publish(NodeEvent::RecordServed {
                        record: record.to_string(),
                        peer: peer.to_string(),
                        blocks,
                        bytes,
                    }),
                    Ok(NetEvent::ReplicaHeld {
                        peer,
                        record,
                        blocks_fetched,
                    }) => bus.publish(NodeEvent::ReplicaStored {
                        record: record.to_string(),
                        peer: peer.to_string(),
                        blocks_fetched,
                    }),
                    Ok(NetEvent::ReplicasRepaired {
                        record,
                        copies,
                        holders,
                    }) => bus.publish(NodeEvent::ReplicationChanged {
                        record: record.to_string(),
                        copies,
                        holders,
                    }),
                    Ok(NetEvent::Gossip { .. }) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "network events missed by the event bus");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        true
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The institution's keys, or [`ServiceError::KeysLocked`] when the services were
    /// built without them.
    pub fn keys(&self) -> Result<&Arc<NodeKeys>, ServiceError> {
        self.keys.as_ref().ok_or(ServiceError::KeysLocked)
    }

    /// The settings.
    pub fn settings(&self) -> &ServiceSettings {
        &self.settings
    }

    /// The event bus.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// The audit trail of refused requests (coalesced; every transport records its
    /// refusals here).
    pub fn denials(&self) -> &DenialLog {
        &self.denials
    }

    /// Announces every stored record in the background (once per node start: the DHT
    /// keeps provider records in memory only), then retries failed announcements every
    /// minute. Does nothing without a network.
    pub fn announce_stored(&self) {
        if let Some(network) = self.network().cloned() {
            self.announcer.spawn(network, self.store.clone());
        }
    }

    /// Provider announcements made, failed and waiting for a retry.
    pub fn announcements(&self) -> AnnounceStats {
        self.announcer.stats()
    }

    /// The network, if connected.
    pub fn network(&self) -> Option<&Network> {
        self.network.get()
    }

    /// The network, or [`ServiceError::NoNetwork`].
    pub(crate) fn require_network(&self) -> Result<&Network, ServiceError> {
        self.network.get().ok_or(ServiceError::NoNetwork)
    }

    /// The chain services, or [`ServiceError::NoChain`].
    pub fn chain(&self) -> Result<&ChainServices, ServiceError> {
        self.chain.get().ok_or(ServiceError::NoChain)
    }

    /// Appends an audit entry off the executor. Failures are logged, not raised: a
    /// refusal must still be answered even when the log cannot be written.
    pub async fn audit(
        &self,
        action: AuditAction,
        actor: &str,
        subject: &str,
        detail: Vec<(&str, String)>,
    ) {
        let event = AuditEvent {
            action,
            actor: actor.to_string(),
            subject: subject.to_string(),
            detail: detail
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
        };
        append_audit(&self.store, vec![event]).await;
    }

    /// Number of records in the local index.
    pub async fn record_count(&self) -> Result<u64, ServiceError> {
        let store = self.store.clone();
        blocking("record count", move || Ok(store.record_count()?)).await
    }
}

/// Appends `events` in one transaction (one fsync for all) off the executor. Failures
/// are logged, not raised: a refusal must still be answered, and a change already
/// made still reported, when the log cannot be written.
pub(crate) async fn append_audit(store: &Arc<Store>, events: Vec<AuditEvent>) {
    if events.is_empty() {
        return;
    }
    let store = store.clone();
    if let Err(e) = blocking("audit append", move || Ok(store.audit_batch(events)?)).await {
        tracing::error!(error = %e, "could not append to the audit log");
    }
}
