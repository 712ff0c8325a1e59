//! The libp2p node: transports, behaviours, and the task that drives the swarm.
//!
//! The swarm lives in one task; [`Network`] is a cheap handle that sends it commands
//! (dial, provide, find providers, publish) and opens streams for bitswap, the fast
//! path and replication directly through `libp2p-stream`, so bulk transfers never wait
//! on the swarm task.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, gossipsub, identify, identity, kad, mdns, noise, tcp, yamux, Multiaddr,
    PeerId, StreamProtocol, Swarm,
};
use medmesh_core::{Cid, RecordId};
use medmesh_crypto::Certificate;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::admission::{self, IpLimits, SharedSlotBook, SlotBook};
use crate::bitswap::Bitswap;
use crate::blockstore::Blockstore;
use crate::gossip::{self, GossipGuard};
use crate::limits::{ReplicaBudget, ServeLimits, Slots};
use crate::policy::PeerPolicy;
use crate::provider_store::{ProviderStore, ProviderStoreConfig};
use crate::scores::PeerScores;
use crate::{fastpath, pong, replicate, NetConfig, NetError, PeerInfo};

/// Gossipsub topic of node presence announcements.
pub const PRESENCE_TOPIC: &str = "medmesh/presence/1";
/// Gossipsub topic of dataset announcements.
pub const DATASETS_TOPIC: &str = "medmesh/datasets/1";

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// First: a flood from one address is refused before other behaviours count it.
    ip_limits: IpLimits,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    kad: kad::Behaviour<ProviderStore>,
    gossipsub: gossipsub::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

/// Something that happened on the network.
#[derive(Debug, Clone)]
pub enum NetEvent {
    /// A gossipsub message.
    Gossip {
        /// Its topic.
        topic: String,
        /// Who published it.
        from: Option<PeerId>,
        /// Its payload.
        data: Vec<u8>,
    },
    /// A connection to a peer opened.
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// A peer fetched blocks of a record from this node over the fast path (one event
    /// per request served to its end).
    Served {
        /// Who fetched.
        peer: PeerId,
        /// The record.
        record: RecordId,
        /// Blocks sent.
        blocks: u64,
        /// Bytes sent.
        bytes: u64,
    },
    /// A peer's replication request was served: this node now holds a copy of its
    /// record.
    ReplicaHeld {
        /// Who asked.
        peer: PeerId,
        /// The record.
        record: RecordId,
        /// Blocks that came over the network for it.
        blocks_fetched: u64,
    },
    /// A repair pass changed which peers hold a record's replicas.
    ReplicasRepaired {
        /// The record.
        record: RecordId,
        /// Copies wanted.
        copies: u32,
        /// Peers that hold one now.
        holders: Vec<String>,
    },
}

enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<PeerId, NetError>>),
    Provide(Cid, oneshot::Sender<Result<(), NetError>>),
    FindProviders(Cid, oneshot::Sender<Vec<PeerId>>),
    Publish(String, Vec<u8>, oneshot::Sender<Result<(), NetError>>),
    Disconnect(PeerId),
    Shutdown,
}

#[derive(Default)]
struct Shared {
    listen: RwLock<Vec<Multiaddr>>,
    peers: RwLock<BTreeMap<PeerId, Connected>>,
}

struct Connected {
    addresses: Vec<Multiaddr>,
    agent: Option<String>,
    since: Instant,
    connections: usize,
}

/// Streams per yamux connection. js-libp2p's yamux (@chainsafe/libp2p-yamux 8) sends
/// each data frame as large as the window we grant, and rust-yamux 0.14 drops the whole
/// connection on a frame above 1 MiB (a constant, `FrameTooLarge`). A stream's window
/// grows only into `1 GiB − max_num_streams × 256 KiB`: 4 093 streams cap every
/// window at 256 KiB + 768 KiB = 1 MiB, so an honest JavaScript peer's frames always
/// fit. (4 096 would stop the growth at 256 KiB.)
const YAMUX_MAX_STREAMS: usize = 4093;

fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(YAMUX_MAX_STREAMS);
    config
}

/// What the node holds for peers at one moment ([`Network::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingStats {
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Outbound bitswap queues (one per peer we answer or ask).
    pub bitswap_queues: usize,
    /// Inbound bitswap streams being read.
    pub bitswap_streams: usize,
    /// Fast-path requests being served.
    pub fast_path_requests: usize,
    /// Replication requests being served.
    pub replication_requests: usize,
    /// Bytes of the inbound frame budget not taken.
    pub frame_budget_free: usize,
}

/// What a node needs to join the network.
pub struct NetworkOptions {
    /// Settings.
    pub config: NetConfig,
    /// The node's Ed25519 identity seed (its PeerId derives from it).
    pub identity_seed: [u8; 32],
    /// Where blocks are served from and fetched into.
    pub store: Arc<dyn Blockstore>,
    /// Who may ask this node to hold replicas.
    pub policy: Arc<dyn PeerPolicy>,
    /// The institution this node acts for, sent with replication requests so peers can
    /// check it (an Ethereum address once the node is registered on chain).
    pub institution: Option<String>,
    /// The institution's certificate, sent with replication requests so holders can
    /// check the manifests of records they are asked to hold.
    pub certificate: Option<Certificate>,
    /// Agent string shown to peers.
    pub agent: String,
}

/// A handle to the running network; clones share it.
#[derive(Clone)]
pub struct Network {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) peer_id: PeerId,
    pub(crate) config: NetConfig,
    pub(crate) store: Arc<dyn Blockstore>,
    pub(crate) control: libp2p_stream::Control,
    pub(crate) bitswap: Arc<Bitswap>,
    pub(crate) scores: Arc<PeerScores>,
    pub(crate) policy: Arc<dyn PeerPolicy>,
    pub(crate) institution: Option<String>,
    /// [`NetworkOptions::certificate`], armored.
    pub(crate) certificate: Option<String>,
    /// Bounds on the replicas peers may make this node hold.
    pub(crate) replica_budget: ReplicaBudget,
    /// Connections, which peers are known, and which to close first.
    pub(crate) slots: Arc<SharedSlotBook>,
    /// Replication requests being served, bounded per peer and in total.
    pub(crate) replicas: Arc<Slots>,
    /// What peers may make this node serve.
    pub(crate) limits: Arc<ServeLimits>,
    /// Answers peers' key-release calls, once the service sets it.
    pub(crate) key_handler: std::sync::OnceLock<Arc<dyn crate::keyrelease::KeyHandler>>,
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    pub(crate) events: broadcast::Sender<NetEvent>,
}

impl Network {
    /// Starts the node: listens, dials the bootstrap peers, serves bitswap, the fast
    /// path and replication requests. Returns once it listens on every address.
    pub async fn start(options: NetworkOptions) -> Result<Self, NetError> {
        options.config.validate()?;
        let mut seed = options.identity_seed;
        let keypair = identity::Keypair::ed25519_from_bytes(&mut seed)
            .map_err(NetError::setup("node identity"))?;
        let peer_id = keypair.public().to_peer_id();
        let config = options.config.clone();
        let kad_protocol = StreamProtocol::try_from_owned(config.kad_protocol.clone())
            .map_err(NetError::setup("kad_protocol"))?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                // Noise is what every libp2p implementation speaks (Helia, Kubo); TLS 1.3
                // is offered as well, as Kubo does.
                (noise::Config::new, libp2p::tls::Config::new),
                yamux_config,
            )
            .map_err(NetError::setup("TCP transport"))?
            .with_quic()
            .with_behaviour(|key| {
                let local = key.public().to_peer_id();
                let mut kad_config = kad::Config::new(kad_protocol);
                kad_config.set_query_timeout(Duration::from_secs(30));
                let mut kad = kad::Behaviour::with_config(
                    local,
                    ProviderStore::new(
                        local,
                        ProviderStoreConfig {
                            max_provided_keys: config.max_provided_keys,
                            max_peer_records: config.max_peer_provider_records,
                            max_providers_per_key: config.max_providers_per_key,
                            max_records_per_provider: config.max_provider_records_per_peer,
                        },
                    ),
                    kad_config,
                );
                // Answer DHT queries even without a confirmed public address (a node on
                // a private network or loopback is still a full DHT member).
                kad.set_mode(Some(kad::Mode::Server));
                // Messages wait for the driver's verdict (gossip::GossipGuard); peers
                // whose messages are rejected are graylisted.
                let gossipsub = gossip::behaviour(key)?;
                let mdns = if config.mdns {
                    Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?)
                } else {
                    None
                };
                Ok(Behaviour {
                    ip_limits: IpLimits::new(config.max_connections_per_ip as usize, false),
                    limits: connection_limits::Behaviour::new(
                        connection_limits::ConnectionLimits::default()
                            .with_max_established(Some(config.max_connections))
                            .with_max_established_per_peer(Some(config.max_connections_per_peer))
                            .with_max_pending_incoming(Some(config.max_connections)),
                    ),
                    identify: identify::Behaviour::new(
                        identify::Config::new("/medmesh/1.0.0".into(), key.public())
                            .with_agent_version(options.agent.clone())
                            // No cache of peers' unchecked addresses (it fed every dial
                            // by peer id); kad gets the filtered ones below.
                            .with_cache_size(0),
                    ),
                    kad,
                    gossipsub,
                    mdns: Toggle::from(mdns),
                    stream: libp2p_stream::Behaviour::new(),
                })
            })
            .map_err(NetError::setup("network behaviours"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        for topic in [PRESENCE_TOPIC, DATASETS_TOPIC] {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&gossipsub::IdentTopic::new(topic))
                .map_err(NetError::setup(format!("gossipsub topic {topic}")))?;
        }
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(NetError::setup(format!("listening on {addr}")))?;
            listeners.push(id);
        }
        let shared = Arc::new(Shared::default());
        // Wait until every listener has its address (port 0 becomes a real port).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut pending = listeners.len();
        while pending > 0 {
            let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .map_err(|_| NetError::Config("listeners did not start within 10 s".into()))?;
            match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    crate::write(&shared.listen).push(address);
                    pending -= 1;
                }
                SwarmEvent::ListenerError { error, .. }
                | SwarmEvent::ListenerClosed {
                    reason: Err(error), ..
                } => {
                    return Err(NetError::setup("listener")(error));
                }
                _ => {}
            }
        }

        let control = swarm.behaviour().stream.new_control();
        let scores = Arc::new(PeerScores::default());
        let slots = SharedSlotBook::new(SlotBook::new(
            config.max_connections as usize,
            config.reserved_connections as usize,
        ));
        let limits = ServeLimits::new(&config, slots.clone());
        let certificate_armor = match &options.certificate {
            Some(cert) => Some(
                cert.to_armored()
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .map_err(NetError::setup("the institution's certificate"))?,
            ),
            None => None,
        };
        let bitswap = Bitswap::new(
            options.store.clone(),
            control.clone(),
            scores.clone(),
            limits.clone(),
        );
        let (commands, command_rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(256);
        let network = Network {
            inner: Arc::new(Inner {
                peer_id,
                config: config.clone(),
                store: options.store,
                control,
                bitswap,
                scores,
                policy: options.policy,
                institution: options.institution,
                certificate: certificate_armor,
                replica_budget: ReplicaBudget::new(&config),
                slots: slots.clone(),
                limits: limits.clone(),
                replicas: Slots::new(
                    "replication requests",
                    config.max_replications_per_peer,
                    config.max_replications,
                ),
                key_handler: std::sync::OnceLock::new(),
                commands,
                shared: shared.clone(),
                events: events.clone(),
            }),
        };
        network.inner.bitswap.serve()?;
        fastpath::serve(
            &mut network.inner.control.clone(),
            network.inner.store.clone(),
            network.inner.limits.clone(),
            events.clone(),
        )?;
        replicate::serve(&network)?;
        crate::keyrelease::serve(&network)?;
        pong::serve(&mut network.inner.control.clone())?;

        let mut driver = Driver {
            swarm,
            shared,
            events,
            dials: HashMap::new(),
            provides: HashMap::new(),
            finds: HashMap::new(),
            bootstrapped: false,
            slots,
            bitswap: network.inner.bitswap.clone(),
            limits: network.inner.limits.clone(),
            gossip: GossipGuard::new(config.gossip_messages_per_sec, config.gossip_burst),
        };
        for addr in &config.bootstrap {
            driver.dial_bootstrap(addr.clone());
        }
        tokio::spawn(driver.run(command_rx));
        tracing::info!(%peer_id, listen = ?network.listen_addrs(), "network started");
        Ok(network)
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// Addresses this node listens on, each ending with `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let listen = crate::read(&self.inner.shared.listen);
        listen
            .iter()
            .map(|a| a.clone().with_p2p(self.inner.peer_id).unwrap_or_else(|a| a))
            .collect()
    }

    /// The peers connected now.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let peers = crate::read(&self.inner.shared.peers);
        peers
            .iter()
            .map(|(id, c)| PeerInfo {
                peer_id: id.to_string(),
                addresses: c.addresses.iter().map(|a| a.to_string()).collect(),
                agent: c.agent.clone(),
                connected_secs: c.since.elapsed().as_secs(),
            })
            .collect()
    }

    /// Whether a connection to `peer` is open.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        let peers = crate::read(&self.inner.shared.peers);
        peers.contains_key(peer)
    }

    /// `peer` did useful work: its connection is the last an unknown peer would lose.
    pub(crate) fn touch(&self, peer: &PeerId) {
        self.inner.slots.touch(peer)
    }

    /// Network events (gossip, connections) from now on.
    pub fn events(&self) -> broadcast::Receiver<NetEvent> {
        self.inner.events.subscribe()
    }

    /// What the node holds for peers now (for metrics, and for tests that check an
    /// attack leaves nothing behind).
    pub fn stats(&self) -> ServingStats {
        ServingStats {
            connected_peers: crate::read(&self.inner.shared.peers).len(),
            bitswap_queues: self.inner.bitswap.queues(),
            bitswap_streams: self.inner.limits.bitswap_streams.total_in_progress(),
            fast_path_requests: self.inner.limits.fast_path.total_in_progress(),
            replication_requests: self.inner.replicas.total_in_progress(),
            frame_budget_free: self.inner.limits.frames.available_bytes(),
        }
    }

    /// Penalties of misbehaving peers.
    pub fn scores(&self) -> &PeerScores {
        &self.inner.scores
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Dials `addr` and returns the peer that answered.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        self.command(|tx| Command::Dial(addr, tx)).await?
    }

    /// Announces in the DHT that this node provides `cid`.
    pub async fn provide(&self, cid: Cid) -> Result<(), NetError> {
        self.command(|tx| Command::Provide(cid, tx)).await?
    }

    /// Asks the DHT who provides `cid`; answers with the first providers found (and
    /// starts dialing them), or none once the lookup ends.
    pub async fn find_providers(&self, cid: Cid) -> Result<Vec<PeerId>, NetError> {
        let mut providers = self.command(|tx| Command::FindProviders(cid, tx)).await?;
        providers.retain(|p| *p != self.inner.peer_id);
        Ok(providers)
    }

    /// Publishes `data` on a gossipsub topic.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), NetError> {
        self.command(|tx| Command::Publish(topic.to_string(), data, tx))
            .await?
    }

    /// Closes connections to `peer`.
    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.inner.commands.send(Command::Disconnect(peer)).await;
    }

    /// Fetches one block by bitswap from `peers`, stores and returns it.
    pub async fn bitswap_get(&self, cid: Cid, peers: &[PeerId]) -> Result<Vec<u8>, NetError> {
        self.inner
            .bitswap
            .get(cid, peers, self.inner.config.block_timeout())
            .await
    }

    /// The streams peers open for `protocol`, for a handler serving it.
    pub(crate) fn accept(
        &self,
        protocol: StreamProtocol,
    ) -> Result<libp2p_stream::IncomingStreams, NetError> {
        self.inner
            .control
            .clone()
            .accept(protocol.clone())
            .map_err(NetError::setup(format!("accepting {protocol}")))
    }

    /// Stops the swarm; streams in flight fail.
    pub async fn shutdown(&self) {
        let _ = self.inner.commands.send(Command::Shutdown).await;
    }
}

struct Driver {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    events: broadcast::Sender<NetEvent>,
    dials: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, NetError>>>,
    provides: HashMap<kad::QueryId, oneshot::Sender<Result<(), NetError>>>,
    finds: HashMap<kad::QueryId, oneshot::Sender<Vec<PeerId>>>,
    bootstrapped: bool,
    /// Connections, known peers, and which to close when unknown ones fill the slots.
    slots: Arc<SharedSlotBook>,
    /// Forgets a peer's queue when its last connection closes.
    bitswap: Arc<Bitswap>,
    /// Forgets a peer's serving rate when its last connection closes.
    limits: Arc<ServeLimits>,
    /// Verdicts on gossip received: content per topic, rate per forwarding peer.
    gossip: GossipGuard,
}

fn record_key(cid: &Cid) -> kad::RecordKey {
    // As IPFS: provider records are keyed by the multihash.
    kad::RecordKey::new(&cid.hash().to_bytes())
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut presence = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(command) => self.command(command),
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = presence.tick() => self.announce_presence(),
            }
        }
        tracing::info!("network stopped");
    }

    fn dial_bootstrap(&mut self, addr: Multiaddr) {
        if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
            self.slots.with(|s| s.pin(peer));
            let mut transport_addr = addr.clone();
            transport_addr.pop();
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, transport_addr);
        }
        if let Err(e) = self.swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }

    fn announce_presence(&mut self) {
        let listen = crate::read(&self.shared.listen);
        // Within the limits peers check (gossip::validate), however many addresses.
        let message = gossip::presence_message(self.swarm.local_peer_id(), &listen);
        drop(listen);
        let topic = gossipsub::IdentTopic::new(PRESENCE_TOPIC);
        // Alone on the network there is nobody to tell; that is not an error.
        let _ = self.swarm.behaviour_mut().gossipsub.publish(topic, message);
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Dial(addr, reply) => {
                let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial {
                            addr: addr.to_string(),
                            reason: "the dial could not start".into(),
                            source: Some(Box::new(e)),
                        }));
                    }
                }
            }
            Command::Provide(cid, reply) => {
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(record_key(&cid))
                {
                    Ok(query) => {
                        self.provides.insert(query, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Provide(e)));
                    }
                }
            }
            Command::FindProviders(cid, reply) => {
                let query = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(record_key(&cid));
                self.finds.insert(query, reply);
            }
            Command::Publish(topic, data, reply) => {
                // What peers would reject is not sent: it would only lower our score.
                if let Err(refusal) = gossip::publishable(&topic, self.swarm.local_peer_id(), &data)
                {
                    let _ = reply.send(Err(NetError::Config(format!(
                        "not published on {topic}: {refusal}"
                    ))));
                    return;
                }
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(gossipsub::IdentTopic::new(topic), data)
                    .map(|_| ())
                    .map_err(NetError::Gossip);
                let _ = reply.send(result);
            }
            Command::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Shutdown => {}
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let reply = self.dials.remove(&connection_id);
                let victims = self.slots.with(|slots| {
                    if reply.is_some() {
                        slots.pin(peer_id); // dialled on request
                    }
                    slots.established(
                        connection_id,
                        peer_id,
                        endpoint.get_remote_address().clone(),
                        endpoint.is_dialer(),
                        Instant::now(),
                    )
                });
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(peer_id));
                }
                for victim in victims {
                    tracing::debug!(connection = ?victim, "closing an idle unknown peer's connection: the reserved slots are for known peers");
                    if !self.swarm.close_connection(victim) {
                        self.slots.with(|s| s.closed(victim));
                    }
                }
                let mut peers = crate::write(&self.shared.peers);
                let entry = peers.entry(peer_id).or_insert_with(|| Connected {
                    addresses: vec![endpoint.get_remote_address().clone()],
                    agent: None,
                    since: Instant::now(),
                    connections: 0,
                });
                entry.connections += 1;
                let first = entry.connections == 1;
                drop(peers);
                if first {
                    let _ = self.events.send(NetEvent::Connected(peer_id));
                }
                if !self.bootstrapped {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                self.slots.with(|s| s.closed(connection_id));
                let mut peers = crate::write(&self.shared.peers);
                let gone = match peers.get_mut(&peer_id) {
                    Some(c) => {
                        c.connections = c.connections.saturating_sub(1);
                        c.connections == 0
                    }
                    None => false,
                };
                if gone {
                    peers.remove(&peer_id);
                    drop(peers);
                    // Peers that come and go leave nothing behind: their bitswap queue
                    // and serving rate go with their last connection.
                    self.bitswap.forget(&peer_id);
                    self.limits.forget(&peer_id);
                    let _ = self.events.send(NetEvent::Disconnected(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                peer_id,
            } => {
                tracing::debug!(?peer_id, error = %error, "outgoing connection failed");
                if let Some(reply) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial {
                        addr: peer_id.map(|p| p.to_string()).unwrap_or_default(),
                        reason: "the connection failed".into(),
                        source: Some(Box::new(error)),
                    }));
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let mut listen = crate::write(&self.shared.listen);
                if !listen.contains(&address) {
                    listen.push(address);
                }
            }
            SwarmEvent::Behaviour(event) => self.behaviour_event(event),
            _ => {}
        }
    }

    fn behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received {
                connection_id,
                peer_id,
                info,
                ..
            }) => {
                // A peer chooses the addresses it advertises: only a few, of usable
                // kinds and scopes, go to the DHT (which dials them), never 150 of the
                // attacker's choosing.
                let remote = self
                    .slots
                    .with(|s| s.remote(connection_id).cloned())
                    .unwrap_or_else(Multiaddr::empty);
                let addrs = admission::identify_addresses(&peer_id, &info.listen_addrs, &remote);
                let speaks_kad = info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == self.swarm.behaviour().kad.protocol_names()[0].as_ref());
                if speaks_kad && !addrs.is_empty() {
                    let keep = self.slots.with(|s| s.dialled_addresses(&peer_id));
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    for addr in &addrs {
                        kad.add_address(&peer_id, addr.clone());
                    }
                    let current = admission::kad_addresses(kad, peer_id);
                    for stale in admission::stale_addresses(
                        &current,
                        &addrs,
                        &keep,
                        admission::MAX_KAD_ADDRESSES,
                    ) {
                        kad.remove_address(&peer_id, &stale);
                    }
                }
                let mut peers = crate::write(&self.shared.peers);
                if let Some(c) = peers.get_mut(&peer_id) {
                    c.agent = Some(info.agent_version);
                    if !addrs.is_empty() {
                        c.addresses = addrs;
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => {
                self.query_progressed(id, result, step.last);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                // Held by gossipsub (validate_messages) until this verdict: Accept
                // forwards it, Reject drops it and penalises the sender, Ignore drops it.
                let verdict = self
                    .gossip
                    .judge(propagation_source, &message, Instant::now());
                if let Err(refusal) = &verdict {
                    tracing::debug!(
                        peer = %propagation_source,
                        author = ?message.source,
                        topic = %message.topic,
                        verdict = ?refusal.acceptance,
                        reason = refusal.reason,
                        "gossip message refused"
                    );
                }
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        gossip::acceptance(&verdict),
                    );
                if verdict.is_ok() {
                    let _ = self.events.send(NetEvent::Gossip {
                        topic: message.topic.to_string(),
                        from: message.source,
                        data: message.data,
                    });
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(
                        DialOpts::peer_id(peer)
                            .condition(PeerCondition::Disconnected)
                            .addresses(vec![addr])
                            .build(),
                    );
                }
            }
            _ => {}
        }
    }

    fn query_progressed(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        match result {
            kad::QueryResult::StartProviding(outcome) => {
                if let Some(reply) = self.provides.remove(&id) {
                    if let Err(e) = &outcome {
                        // The record is stored locally either way; peers that ask the
                        // nodes we do reach still find us.
                        tracing::debug!(error = ?e, "provider record reached fewer peers than wanted");
                    }
                    let _ = reply.send(Ok(()));
                }
            }
            kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                providers,
                ..
            })) => {
                // Dial now, while the query still knows the providers' addresses.
                for peer in &providers {
                    if peer != self.swarm.local_peer_id() {
                        let _ = self.swarm.dial(
                            DialOpts::peer_id(*peer)
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .build(),
                        );
                    }
                }
                if let Some(reply) = self.finds.remove(&id) {
                    let _ = reply.send(providers.into_iter().collect());
                }
            }
            kad::QueryResult::GetProviders(_) if last => {
                if let Some(reply) = self.finds.remove(&id) {
                    let _ = reply.send(Vec::new());
                }
            }
            kad::QueryResult::Bootstrap(_) => {}
            _ => {}
        }
    }
}
