//! Bitswap 1.2.0, the IPFS block exchange, served from and fetched into our
//! [`Blockstore`], so Kubo and Helia peers read our blocks and we read theirs.
//!
//! Each side sends its messages on an outbound stream of its own and reads the peer's
//! on inbound streams (as Kubo and Helia do). A want is sent to every candidate peer
//! with `sendDontHave`, the first block that hashes to the wanted CID wins, and the
//! others get a cancel. Blocks nobody asked for are dropped, never stored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::Control;
use medmesh_core::Cid;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::blockstore::Blockstore;
use crate::limits::ServeLimits;
use crate::scores::PeerScores;
use crate::wire::{read_frame_within, varint, write_frame};
use crate::NetError;

/// The bitswap protocol ids, newest first.
pub const PROTOCOLS: [StreamProtocol; 4] = [
    StreamProtocol::new("/ipfs/bitswap/1.2.0"),
    StreamProtocol::new("/ipfs/bitswap/1.1.0"),
    StreamProtocol::new("/ipfs/bitswap/1.0.0"),
    StreamProtocol::new("/ipfs/bitswap"),
];

/// Kubo's limit on a bitswap message; a 1 MiB block and its framing fit.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Want-list entries read from one message (as boxo's `MaxWantlistSize`); the rest are
/// ignored.
pub(crate) const MAX_WANTS: usize = 1024;
/// Outbound queues kept before closed ones are swept.
const OUTBOXES: usize = 1024;
const SHA2_256: u64 = 0x12;
const DAG_PB: u64 = 0x70;

/// The bitswap protobuf messages (`message.proto` of the IPFS spec).
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Message {
        #[prost(message, optional, tag = "1")]
        pub wantlist: Option<Wantlist>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub blocks: Vec<Vec<u8>>,
        #[prost(message, repeated, tag = "3")]
        pub payload: Vec<Block>,
        #[prost(message, repeated, tag = "4")]
        pub block_presences: Vec<BlockPresence>,
        #[prost(int32, tag = "5")]
        pub pending_bytes: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Wantlist {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
        #[prost(bool, tag = "2")]
        pub full: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(bytes = "vec", tag = "1")]
        pub block: Vec<u8>,
        #[prost(int32, tag = "2")]
        pub priority: i32,
        #[prost(bool, tag = "3")]
        pub cancel: bool,
        /// 0 = Block, 1 = Have.
        #[prost(int32, tag = "4")]
        pub want_type: i32,
        #[prost(bool, tag = "5")]
        pub send_dont_have: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Block {
        #[prost(bytes = "vec", tag = "1")]
        pub prefix: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BlockPresence {
        #[prost(bytes = "vec", tag = "1")]
        pub cid: Vec<u8>,
        /// 0 = Have, 1 = DontHave.
        #[prost(int32, tag = "2")]
        pub r#type: i32,
    }
}

const WANT_BLOCK: i32 = 0;
const WANT_HAVE: i32 = 1;
const HAVE: i32 = 0;
const DONT_HAVE: i32 = 1;

/// What a pending want hears.
enum WantEvent {
    Block(Arc<Vec<u8>>),
    DontHave(PeerId),
}

/// The bitswap engine of one node.
pub(crate) struct Bitswap {
    store: Arc<dyn Blockstore>,
    control: Control,
    scores: Arc<PeerScores>,
    limits: Arc<ServeLimits>,
    wants: Mutex<HashMap<Cid, Vec<mpsc::UnboundedSender<WantEvent>>>>,
    outboxes: Arc<Outboxes>,
}

impl Bitswap {
    pub(crate) fn new(
        store: Arc<dyn Blockstore>,
        control: Control,
        scores: Arc<PeerScores>,
        limits: Arc<ServeLimits>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            control,
            scores,
            limits,
            wants: Mutex::new(HashMap::new()),
            outboxes: Arc::default(),
        })
    }

    /// Accepts inbound bitswap streams until the network stops.
    pub(crate) fn serve(self: &Arc<Self>) -> Result<(), NetError> {
        let mut control = self.control.clone();
        let mut incoming = Vec::new();
        for protocol in PROTOCOLS {
            incoming.push(
                control
                    .accept(protocol.clone())
                    .map_err(NetError::setup(format!("accepting {protocol}")))?,
            );
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut incoming = futures::stream::select_all(incoming);
            while let Some((peer, stream)) = incoming.next().await {
                // Kubo and Helia open one stream per direction; a peer opening many
                // would hold a task and a frame each.
                let slot = match this.limits.bitswap_streams.try_take(peer) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        tracing::debug!(%peer, refusal, "bitswap stream refused");
                        continue;
                    }
                };
                let this = this.clone();
                tokio::spawn(async move {
                    this.read_messages(peer, stream).await;
                    drop(slot);
                });
            }
        });
        Ok(())
    }

    async fn read_messages(self: Arc<Self>, peer: PeerId, mut stream: libp2p::Stream) {
        loop {
            // Idle between messages is fine (the stream lives as long as the
            // connection); a message once begun must arrive in time, and a large one
            // takes its size from the node's frame budget while it is handled.
            let read = read_frame_within(
                &mut stream,
                MAX_MESSAGE,
                Some(&self.limits.frames),
                self.limits.frame_timeout,
            )
            .await;
            let (frame, held) = match read {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bitswap stream ended");
                    return;
                }
            };
            if self.scores.is_banned(&peer) {
                return;
            }
            let mut message = match pb::Message::decode(frame.as_slice()) {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "undecodable bitswap message");
                    return;
                }
            };
            drop(frame);
            let wantlist = message.wantlist.take();
            // The blocks it carries hold the frame's memory until stored; answering
            // its wants (paced by the peer's rate and reading) holds none of it.
            self.take_blocks(peer, message).await;
            drop(held);
            if let Some(wantlist) = wantlist {
                self.answer(peer, wantlist).await;
            }
        }
    }

    /// Blocks and presences a message carries (its want-list is answered apart).
    async fn take_blocks(&self, peer: PeerId, message: pb::Message) {
        for block in message.payload {
            match cid_from_prefix(&block.prefix) {
                Some(prefix) => self.received(peer, prefix, block.data).await,
                None => tracing::debug!(%peer, "bitswap block with an unsupported CID prefix"),
            }
        }
        for data in message.blocks {
            self.received(
                peer,
                CidPrefix {
                    version: 0,
                    codec: DAG_PB,
                },
                data,
            )
            .await;
        }
        for presence in message.block_presences {
            if presence.r#type != DONT_HAVE {
                continue;
            }
            if let Ok(cid) = Cid::try_from(presence.cid.as_slice()) {
                self.notify(&cid, || WantEvent::DontHave(peer), false);
            }
        }
    }

    /// Serves a peer's wants: blocks, haves and (when asked) don't-haves. Each CID is
    /// answered once per message however often it is listed, at most [`MAX_WANTS`]
    /// entries are read, blocks leave at the peer's serving rate, and answering stops
    /// when the peer is gone.
    async fn answer(&self, peer: PeerId, wantlist: pb::Wantlist) {
        let mut presences = Vec::new();
        let mut seen = HashSet::new();
        if wantlist.entries.len() > MAX_WANTS {
            tracing::debug!(%peer, entries = wantlist.entries.len(), "bitswap want-list truncated to {MAX_WANTS} entries");
        }
        for entry in wantlist.entries.into_iter().take(MAX_WANTS) {
            if entry.cancel {
                continue;
            }
            let Ok(cid) = Cid::try_from(entry.block.as_slice()) else {
                continue;
            };
            if !seen.insert(cid) {
                continue;
            }
            // `has` and `get` touch the disk: both run off the async executor.
            let want_block = entry.want_type == WANT_BLOCK;
            let store = self.store.clone();
            let looked = tokio::task::spawn_blocking(move || {
                let have = store.has(&cid);
                let read = (want_block && have).then(|| store.get(&cid));
                (have, read)
            })
            .await;
            let (have, read) = match looked {
                Ok(looked) => looked,
                Err(e) => {
                    tracing::warn!(%peer, %cid, error = %e, "block lookup failed");
                    continue;
                }
            };
            match read {
                Some(Ok(Some(data))) => {
                    self.limits.rate.take(peer, data.len()).await;
                    self.limits.slots.touch(&peer);
                    let block = pb::Block {
                        prefix: cid_prefix(&cid),
                        data,
                    };
                    let sent = self
                        .send(
                            peer,
                            pb::Message {
                                payload: vec![block],
                                ..Default::default()
                            },
                        )
                        .await;
                    if !sent {
                        tracing::debug!(%peer, "peer gone: the rest of its want-list is dropped");
                        return;
                    }
                    continue;
                }
                Some(Ok(None)) => {
                    tracing::warn!(%peer, %cid, "a block we held vanished before it was served")
                }
                Some(Err(e)) => {
                    tracing::warn!(%peer, %cid, error = %e, "a block we hold could not be read to serve it")
                }
                None => {}
            }
            let kind = if have && entry.want_type == WANT_HAVE {
                HAVE
            } else if entry.send_dont_have {
                DONT_HAVE
            } else {
                continue;
            };
            presences.push(pb::BlockPresence {
                cid: cid.to_bytes(),
                r#type: kind,
            });
        }
        if !presences.is_empty() {
            self.send(
                peer,
                pb::Message {
                    block_presences: presences,
                    ..Default::default()
                },
            )
            .await;
        }
    }

    /// A block arrived: if we want it, store it and hand it to the waiters.
    async fn received(&self, peer: PeerId, prefix: CidPrefix, data: Vec<u8>) {
        if data.len() > medmesh_core::MAX_BLOCK_SIZE {
            return;
        }
        let data = Arc::new(data);
        let hashed = data.clone();
        let Ok(cid) = tokio::task::spawn_blocking(move || prefix.cid_of(&hashed)).await else {
            return;
        };
        if !crate::lock(&self.wants).contains_key(&cid) {
            tracing::debug!(%peer, %cid, "dropped a block nobody asked for");
            return;
        }
        let store = self.store.clone();
        let bytes = data.clone();
        let stored = tokio::task::spawn_blocking(move || store.put(&cid, &bytes))
            .await
            .map_err(NetError::from)
            .and_then(|stored| stored);
        if let Err(e) = stored {
            tracing::warn!(%cid, error = %e, "could not store a fetched block");
            return;
        }
        self.notify(&cid, || WantEvent::Block(data.clone()), true);
    }

    fn notify(&self, cid: &Cid, event: impl Fn() -> WantEvent, done: bool) {
        let mut wants = crate::lock(&self.wants);
        let waiters = if done {
            wants.remove(cid).unwrap_or_default()
        } else {
            wants.get(cid).cloned().unwrap_or_default()
        };
        for waiter in waiters {
            let _ = waiter.send(event());
        }
    }

    /// Fetches one block from `peers` by bitswap, stores it and returns it.
    pub(crate) async fn get(
        &self,
        cid: Cid,
        peers: &[PeerId],
        timeout: Duration,
    ) -> Result<Vec<u8>, NetError> {
        let store = self.store.clone();
        let local = tokio::task::spawn_blocking(move || store.get(&cid)).await??;
        if let Some(bytes) = local {
            return Ok(bytes);
        }
        let peers: Vec<PeerId> = peers
            .iter()
            .filter(|p| !self.scores.is_banned(p))
            .copied()
            .collect();
        if peers.is_empty() {
            return Err(NetError::NotFound(format!(
                "no peer to ask for block {cid}"
            )));
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        crate::lock(&self.wants).entry(cid).or_default().push(tx);
        for peer in &peers {
            self.send(*peer, want(cid, false)).await;
        }
        let mut refused = HashSet::new();
        let outcome = tokio::time::timeout(timeout, async {
            while let Some(event) = rx.recv().await {
                match event {
                    WantEvent::Block(bytes) => return Ok(Arc::unwrap_or_clone(bytes)),
                    WantEvent::DontHave(peer) => {
                        refused.insert(peer);
                        if peers.iter().all(|p| refused.contains(p)) {
                            break;
                        }
                    }
                }
            }
            Err(NetError::NotFound(format!(
                "none of the {} peers asked has block {cid}",
                peers.len()
            )))
        })
        .await
        .unwrap_or_else(|_| {
            Err(NetError::NotFound(format!(
                "block {cid} did not arrive within {timeout:?} from {} peers",
                peers.len()
            )))
        });
        if outcome.is_err() {
            let mut wants = crate::lock(&self.wants);
            if let Some(waiters) = wants.get_mut(&cid) {
                waiters.retain(|w| !w.is_closed());
                if waiters.is_empty() {
                    wants.remove(&cid);
                }
            }
        }
        for peer in peers.iter().filter(|p| !refused.contains(p)) {
            self.send(*peer, want(cid, true)).await;
        }
        outcome
    }

    /// Outbound queues held.
    pub(crate) fn queues(&self) -> usize {
        crate::lock(&self.outboxes.queues).len()
    }

    /// Forgets `peer`'s outbound queue (it disconnected): its writer ends, and a later
    /// message opens a new one.
    pub(crate) fn forget(&self, peer: &PeerId) {
        crate::lock(&self.outboxes.queues).remove(peer);
    }

    /// Queues a message for `peer` on our outbound stream to it; `false` when the peer
    /// cannot be reached (its writer gave up).
    async fn send(&self, peer: PeerId, message: pb::Message) -> bool {
        let outbox = {
            let mut queues = crate::lock(&self.outboxes.queues);
            if queues.len() >= OUTBOXES {
                // Queues whose writer ended go first (writers remove their own; this
                // only catches a race).
                queues.retain(|_, (_, tx)| !tx.is_closed());
            }
            match queues.get(&peer) {
                Some((_, tx)) if !tx.is_closed() => tx.clone(),
                _ => {
                    // Bounded: a peer that reads slowly slows our reading of its wants.
                    let (tx, rx) = mpsc::channel(4);
                    let id = self
                        .outboxes
                        .next
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let outboxes = self.outboxes.clone();
                    let control = self.control.clone();
                    tokio::spawn(async move {
                        write_messages(control, peer, rx).await;
                        // Gone with its writer, so a peer that left keeps no queue.
                        let mut queues = crate::lock(&outboxes.queues);
                        if queues.get(&peer).is_some_and(|(own, _)| *own == id) {
                            queues.remove(&peer);
                        }
                    });
                    queues.insert(peer, (id, tx.clone()));
                    tx
                }
            }
        };
        outbox.send(message).await.is_ok()
    }
}

fn want(cid: Cid, cancel: bool) -> pb::Message {
    pb::Message {
        wantlist: Some(pb::Wantlist {
            entries: vec![pb::Entry {
                block: cid.to_bytes(),
                priority: 1,
                cancel,
                want_type: WANT_BLOCK,
                send_dont_have: !cancel,
            }],
            full: false,
        }),
        ..Default::default()
    }
}

/// Outbound queues, one per peer, each with the id of the writer that drains it.
#[derive(Default)]
struct Outboxes {
    queues: Mutex<HashMap<PeerId, (u64, mpsc::Sender<pb::Message>)>>,
    next: std::sync::atomic::AtomicU64,
}

/// How long one message may take to leave before the stream is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes queued messages to `peer`, opening a stream with the newest protocol it
/// speaks; reopens once if the stream breaks or stalls.
async fn write_messages(mut control: Control, peer: PeerId, mut rx: mpsc::Receiver<pb::Message>) {
    let mut stream: Option<libp2p::Stream> = None;
    while let Some(message) = rx.recv().await {
        let bytes = message.encode_to_vec();
        for _attempt in 0..2 {
            if stream.is_none() {
                stream = open(&mut control, peer).await;
            }
            let Some(s) = stream.as_mut() else {
                // The peer cannot be reached: end, so senders see the queue closed
                // instead of filling it for nobody.
                return;
            };
            let written = tokio::time::timeout(WRITE_TIMEOUT, async {
                write_frame(s, &bytes).await?;
                s.flush().await
            })
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            match written {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bitswap stream broke; reopening");
                    stream = None;
                }
            }
        }
    }
}

async fn open(control: &mut Control, peer: PeerId) -> Option<libp2p::Stream> {
    for protocol in PROTOCOLS {
        match crate::wire::open_stream(control, peer, protocol.clone()).await {
            Ok(stream) => return Some(stream),
            Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => continue,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot open a bitswap stream");
                return None;
            }
        }
    }
    None
}

/// Version and codec of a CID; the hash is always recomputed as sha2-256.
#[derive(Clone, Copy)]
struct CidPrefix {
    version: u64,
    codec: u64,
}

impl CidPrefix {
    fn cid_of(self, data: &[u8]) -> Cid {
        let digest = ring::digest::digest(&ring::digest::SHA256, data);
        let hash = cid::multihash::Multihash::<64>::wrap(SHA2_256, digest.as_ref())
            .expect("a 32-byte digest fits");
        if self.version == 0 {
            Cid::new_v0(hash).expect("sha2-256 multihash")
        } else {
            Cid::new_v1(self.codec, hash)
        }
    }
}

/// `version, codec, multihash code, digest length` as varints.
fn cid_prefix(cid: &Cid) -> Vec<u8> {
    let mut out = varint(cid.version() as usize);
    out.extend(varint(cid.codec() as usize));
    out.extend(varint(cid.hash().code() as usize));
    out.extend(varint(cid.hash().size() as usize));
    out
}

/// Parses a block prefix; only sha2-256 is accepted (what every IPFS peer uses and
/// what our store checks).
fn cid_prefix_parse(bytes: &[u8]) -> Option<(u64, u64, u64, u64)> {
    let mut fields = [0u64; 4];
    let mut rest = bytes;
    for field in &mut fields {
        let (value, tail) = read_uvarint(rest)?;
        *field = value;
        rest = tail;
    }
    rest.is_empty()
        .then_some((fields[0], fields[1], fields[2], fields[3]))
}

fn cid_from_prefix(bytes: &[u8]) -> Option<CidPrefix> {
    let (version, codec, hash, len) = cid_prefix_parse(bytes)?;
    let ok = version <= 1 && hash == SHA2_256 && len == 32 && (version == 1 || codec == DAG_PB);
    ok.then_some(CidPrefix { version, codec })
}

fn read_uvarint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(9) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use medmesh_core::{cid_of, Codec};

    #[test]
    fn prefixes_round_trip_and_other_hashes_are_refused() {
        let cid = cid_of(Codec::Raw, b"block");
        let prefix = cid_from_prefix(&cid_prefix(&cid)).expect("our own prefix parses");
        assert_eq!(prefix.cid_of(b"block"), cid);
        assert_ne!(prefix.cid_of(b"other"), cid);
        // sha2-512 (0x13) and truncated prefixes are refused.
        let mut other = varint(1);
        other.extend(varint(0x55));
        other.extend(varint(0x13));
        other.extend(varint(64));
        assert!(cid_from_prefix(&other).is_none());
        assert!(cid_from_prefix(&[0x01, 0x55]).is_none());
        assert!(cid_from_prefix(&[0xff; 12]).is_none());
    }

    #[test]
    fn messages_decode_what_they_encode() {
        let cid = cid_of(Codec::Raw, b"x");
        let message = want(cid, false);
        let decoded = pb::Message::decode(message.encode_to_vec().as_slice()).unwrap();
        let entry = &decoded.wantlist.unwrap().entries[0];
        assert_eq!(Cid::try_from(entry.block.as_slice()).unwrap(), cid);
        assert!(entry.send_dont_have && !entry.cancel);
        assert!(pb::Message::decode(&b"\xff\xff\xff"[..]).is_err());
    }
}
