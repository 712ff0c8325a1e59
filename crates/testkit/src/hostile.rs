//! A misbehaving peer for tests: a bare libp2p node (TCP, Noise, Yamux and raw streams
//! only) that connects to a medmesh node and speaks its protocols wrongly — what an
//! attacker with a libp2p library of its own can do.

use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams};

/// A connected misbehaving peer; its swarm runs until it is dropped.
pub struct Hostile {
    /// Its (fresh) PeerId.
    pub peer_id: PeerId,
    /// The node it is connected to.
    pub victim: PeerId,
    control: Control,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    driver: tokio::task::JoinHandle<()>,
}

/// The bare peer's behaviours: raw streams, and identify (to advertise addresses).
#[derive(libp2p::swarm::NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Bare {
    stream: libp2p_stream::Behaviour,
    identify: libp2p::identify::Behaviour,
    gossipsub: libp2p::gossipsub::Behaviour,
}

/// What the test asks the bare peer's swarm to do.
enum Command {
    Publish(String, Vec<u8>, tokio::sync::oneshot::Sender<bool>),
}

impl Hostile {
    /// A fresh identity connected to `addr` (`…/p2p/<peer id>`); panics when refused
    /// or after 10 s.
    pub async fn connect(addr: &Multiaddr) -> Self {
        Self::connect_advertising(addr, &[]).await
    }

    /// [`Hostile::connect`], advertising `addresses` as its own by identify (a peer
    /// chooses what it advertises: e.g. addresses it wants the node to dial).
    pub async fn connect_advertising(addr: &Multiaddr, addresses: &[Multiaddr]) -> Self {
        match Self::try_connect(addr, addresses).await {
            Ok(hostile) => hostile,
            Err(e) => panic!("hostile peer cannot connect: {e}"),
        }
    }

    /// [`Hostile::connect_advertising`], answering why when the node refuses (or does
    /// not answer within 10 s) instead of panicking.
    pub async fn try_connect(addr: &Multiaddr, addresses: &[Multiaddr]) -> Result<Self, String> {
        let victim = peer_of(addr);
        let mut swarm = bare_swarm(|key| Bare {
            stream: libp2p_stream::Behaviour::new(),
            identify: libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                "/medmesh/1.0.0".into(),
                key.public(),
            )),
            // Signs what it publishes, as the node requires; publishes whatever the
            // test asks, however often.
            gossipsub: libp2p::gossipsub::Behaviour::new(
                libp2p::gossipsub::MessageAuthenticity::Signed(key.clone()),
                libp2p::gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(200))
                    .build()
                    .expect("gossipsub config"),
            )
            .expect("gossipsub"),
        });
        for address in addresses {
            swarm.add_external_address(address.clone());
        }
        let peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        swarm.dial(addr.clone()).expect("dial starts");
        for topic in ["medmesh/presence/1", "medmesh/datasets/1"] {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&libp2p::gossipsub::IdentTopic::new(topic))
                .expect("subscribe");
        }
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let (commands, mut command_rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut connected: Option<tokio::sync::oneshot::Sender<Result<(), String>>> =
                Some(connected_tx);
            loop {
                let event = tokio::select! {
                    command = command_rx.recv() => {
                        match command {
                            Some(Command::Publish(topic, data, reply)) => {
                                let sent = swarm
                                    .behaviour_mut()
                                    .gossipsub
                                    .publish(libp2p::gossipsub::IdentTopic::new(topic), data)
                                    .is_ok();
                                let _ = reply.send(sent);
                            }
                            None => return,
                        }
                        continue;
                    }
                    event = swarm.select_next_some() => event,
                };
                match event {
                    SwarmEvent::ConnectionEstablished { .. } => {
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(Err(error.to_string()));
                        }
                    }
                    SwarmEvent::ConnectionClosed { cause, .. } => {
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(Err(format!("closed at once ({cause:?})")));
                        }
                    }
                    _ => {}
                }
            }
        });
        let outcome = match tokio::time::timeout(Duration::from_secs(10), connected_rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err("the swarm stopped".to_string()),
            Err(_) => Err("no connection within 10 s".to_string()),
        };
        let hostile = Self {
            peer_id,
            victim,
            control,
            commands,
            driver,
        };
        outcome.map(|()| hostile)
    }

    /// Publishes `data` on a gossipsub topic, signed by this peer; `false` when
    /// gossipsub would not send it (no peer in the topic yet, or a duplicate).
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .commands
            .send(Command::Publish(topic.to_string(), data, tx))
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Opens a stream to the victim on `protocol`.
    pub async fn open(&self, protocol: &'static str) -> libp2p::Stream {
        let mut control = self.control.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            control.open_stream(self.victim, StreamProtocol::new(protocol)),
        )
        .await
        .expect("stream opened within 10 s")
        .expect("the victim speaks the protocol")
    }

    /// Streams the victim opens to us on `protocol` (bitswap answers come this way).
    pub fn accept(&self, protocol: &'static str) -> IncomingStreams {
        self.control
            .clone()
            .accept(StreamProtocol::new(protocol))
            .expect("not accepted twice")
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

pub use medmesh_net::wire::{read_frame, varint};

/// Writes one length-prefixed frame and flushes it.
pub async fn write_frame(stream: &mut libp2p::Stream, bytes: &[u8]) -> std::io::Result<()> {
    medmesh_net::wire::write_frame(stream, bytes).await?;
    stream.flush().await
}

/// A swarm of a fresh identity over TCP, Noise and Yamux, with `behaviour`.
fn bare_swarm<B: libp2p::swarm::NetworkBehaviour>(
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp transport")
        .with_behaviour(|key| behaviour(key))
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}

/// The PeerId an address ends with (`…/p2p/<peer id>`).
fn peer_of(addr: &Multiaddr) -> PeerId {
    addr.iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .expect("the address names the peer")
}

/// A bitswap message (protobuf, hand-encoded) whose want-list asks for `cid` (its
/// binary form) `times` times, as want-block entries with send-dont-have.
pub fn bitswap_wants(cid: &[u8], times: usize) -> Vec<u8> {
    // Entry { block = 1: bytes, priority = 2: 1, wantType = 4: 0, sendDontHave = 5: true }
    let mut entry = vec![0x0a];
    entry.extend(varint(cid.len()));
    entry.extend_from_slice(cid);
    entry.extend([0x10, 0x01, 0x28, 0x01]);
    let mut wantlist = Vec::with_capacity(times * (entry.len() + 3));
    for _ in 0..times {
        wantlist.push(0x0a);
        wantlist.extend(varint(entry.len()));
        wantlist.extend_from_slice(&entry);
    }
    let mut message = vec![0x0a];
    message.extend(varint(wantlist.len()));
    message.extend(wantlist);
    message
}

/// Floods the node at `addr` with `count` ADD_PROVIDER records for made-up CIDs, from
/// a fresh Kademlia peer speaking `kad_protocol`; returns once every announcement query
/// has ended (or after 120 s), with the flooding peer and the CIDs in the order sent.
pub async fn flood_provider_records(
    addr: &Multiaddr,
    kad_protocol: &str,
    count: usize,
) -> (PeerId, Vec<medmesh_core::Cid>) {
    use libp2p::kad;
    let victim = peer_of(addr);
    let protocol = StreamProtocol::try_from_owned(kad_protocol.to_string()).expect("protocol id");
    let mut swarm = bare_swarm(|key| {
        let local = key.public().to_peer_id();
        let mut kad = kad::Behaviour::with_config(
            local,
            kad::store::MemoryStore::with_config(
                local,
                kad::store::MemoryStoreConfig {
                    max_provided_keys: count + 16,
                    ..Default::default()
                },
            ),
            kad::Config::new(protocol),
        );
        kad.set_mode(Some(kad::Mode::Server));
        kad
    });
    swarm.behaviour_mut().add_address(&victim, addr.clone());
    // Provider records carry the provider's external addresses; without any, the
    // node would keep them but never hand them out.
    swarm.add_external_address("/ip4/127.0.0.1/tcp/9".parse().expect("multiaddr"));
    let flooder = *swarm.local_peer_id();
    let mut pending = std::collections::HashSet::new();
    let mut cids = Vec::with_capacity(count);
    for i in 0..count {
        let cid = medmesh_core::cid_of(
            medmesh_core::Codec::Raw,
            format!("flood {i} {flooder}").as_bytes(),
        );
        // Keyed as IPFS and medmesh key provider records: by the multihash.
        let key = kad::RecordKey::new(&cid.hash().to_bytes());
        pending.insert(
            swarm
                .behaviour_mut()
                .start_providing(key)
                .expect("local store has room"),
        );
        cids.push(cid);
        // Sent in order: the node keeps the first ones up to its bound.
        if pending.len() >= 64 {
            wait_one(&mut swarm, &mut pending).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        while !pending.is_empty() {
            wait_one(&mut swarm, &mut pending).await;
        }
    })
    .await;
    (flooder, cids)
}

/// Drives `swarm` until one of the `pending` queries ends.
async fn wait_one(
    swarm: &mut libp2p::Swarm<libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>>,
    pending: &mut std::collections::HashSet<libp2p::kad::QueryId>,
) {
    loop {
        if let SwarmEvent::Behaviour(libp2p::kad::Event::OutboundQueryProgressed {
            id, step, ..
        }) = swarm.select_next_some().await
        {
            if step.last && pending.remove(&id) {
                return;
            }
        }
    }
}

/// Stores in `store` a home-made manifest: `genuine`'s, listing its chunks `factor`
/// times, so its signature no longer holds.
/// Returns the forged record's id.
pub fn forge_manifest(
    store: &medmesh_store::Store,
    genuine: &medmesh_core::RecordId,
    factor: usize,
) -> medmesh_core::RecordId {
    let mut manifest = store.manifest(genuine).expect("the genuine manifest");
    let chunks = manifest.body.chunks.clone();
    for _ in 1..factor {
        manifest.body.chunks.extend_from_slice(&chunks);
    }
    let bytes = manifest.encode().expect("encodes");
    let cid = medmesh_core::cid_of(medmesh_core::Codec::DagCbor, &bytes);
    store.blocks().put(&cid, &bytes).expect("block stored");
    medmesh_core::RecordId::from_manifest_cid(cid).expect("a manifest CID")
}
