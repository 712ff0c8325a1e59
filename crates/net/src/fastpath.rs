//! The fast path between medmesh nodes: one request names a record and the chunks
//! wanted, and the provider streams those blocks back-to-back on the same stream
//! (like a CAR stream), instead of one bitswap round trip per block.
//!
//! Request: a JSON frame `{"root": CID, "manifest": bool, "chunks": [index…]}`.
//! Reply: a JSON frame `{"ok": true}` or `{"error": "…"}`, then one frame per block
//! (`varint(cid length) ‖ cid ‖ bytes`), in the order asked, then an empty frame.
//! The receiver checks every block against the CID the manifest lists for that
//! position before storing it; a cut transfer is resumed by asking for what is still
//! missing.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::Control;
use medmesh_core::{verify_cid, Cid, Manifest, RecordId, MAX_BLOCK_SIZE};
use medmesh_store::StoreError;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::blockstore::Blockstore;
use crate::limits::ServeLimits;
use crate::wire::{
    open_stream, read_frame, read_json, varint, within_idle, write_frame, write_json, Reply,
};
use crate::{NetError, NetEvent};

/// The fast-path protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/medmesh/blocks/1.0.0");

/// Most chunks one request may ask for (with 1 MiB chunks, 256 MiB per request).
pub(crate) const MAX_CHUNKS_PER_REQUEST: usize = 256;
/// Blocks read ahead of the socket by the provider, and verified/stored concurrently by
/// the receiver.
const PIPELINE: usize = 4;

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    root: String,
    #[serde(default)]
    manifest: bool,
    #[serde(default)]
    chunks: Vec<u32>,
}

/// Serves fast-path requests from `store` until the network stops.
/// Each request served to its end is reported on `events`. Requests are bounded per
/// peer and in total (`limits.fast_path`), and bytes per peer per second
/// (`limits.rate`).
pub(crate) fn serve(
    control: &mut Control,
    store: Arc<dyn Blockstore>,
    limits: Arc<ServeLimits>,
    events: broadcast::Sender<NetEvent>,
) -> Result<(), NetError> {
    let mut incoming = control
        .accept(PROTOCOL)
        .map_err(NetError::setup(format!("accepting {PROTOCOL}")))?;
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let (store, limits, events) = (store.clone(), limits.clone(), events.clone());
            tokio::spawn(async move {
                match answer(&store, &limits, peer, stream).await {
                    Ok(Some(served)) => {
                        let _ = events.send(NetEvent::Served {
                            peer,
                            record: served.record,
                            blocks: served.blocks,
                            bytes: served.bytes,
                        });
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(%peer, error = %e, "fast-path request failed"),
                }
            });
        }
    });
    Ok(())
}

/// What one request was sent.
struct Served {
    record: RecordId,
    blocks: u64,
    bytes: u64,
}

/// The AEAD tag a sealed chunk carries beyond its plaintext.
const CHUNK_TAG: usize = 16;

/// How long a request waits for a place when its peer already has
/// `max_fast_path_requests_per_peer` being served.
const SLOT_WAIT: Duration = Duration::from_secs(30);

/// How long one block may take to leave: a peer that stops reading loses its request
/// (and its place) instead of holding them.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers one request; `None` when it was refused. Nothing here holds a thread while
/// the peer reads: each block is read from disk on its own short blocking task, at
/// most [`PIPELINE`] ahead of the socket.
async fn answer(
    store: &Arc<dyn Blockstore>,
    limits: &ServeLimits,
    peer: PeerId,
    mut stream: libp2p::Stream,
) -> std::io::Result<Option<Served>> {
    let request: Request = within_idle(read_json(&mut stream)).await?;
    let taken = async {
        let peer_slot = limits.fast_path.take_within(peer, SLOT_WAIT).await?;
        let address = limits.slots.with(|s| s.address_of(&peer));
        let address_slot = match address {
            Some(address) => Some(
                limits
                    .fast_path_by_address
                    .take_within(address, SLOT_WAIT)
                    .await?,
            ),
            None => None,
        };
        Ok::<_, String>((peer_slot, address_slot))
    };
    let slot = match taken.await {
        Ok(slot) => slot,
        Err(refusal) => {
            tracing::debug!(%peer, refusal, "fast-path request refused");
            write_json(&mut stream, &Reply::<()>::refused(refusal)).await?;
            stream.close().await?;
            return Ok(None);
        }
    };
    let plan = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || plan(&*store, &request))
            .await
            .map_err(std::io::Error::other)?
    };
    let (record, blocks) = match plan {
        Ok(planned) => planned,
        Err(reason) => {
            write_json(&mut stream, &Reply::<()>::refused(reason)).await?;
            stream.close().await?;
            return Ok(None);
        }
    };
    write_json(&mut stream, &Reply::<()>::ok(None)).await?;
    let mut served = Served {
        record,
        blocks: 0,
        bytes: 0,
    };
    let mut reads = futures::stream::iter(blocks)
        .map(|cid| {
            let store = store.clone();
            async move {
                match tokio::task::spawn_blocking(move || store.get_for_peer(&cid)).await {
                    Ok(Ok(Some(bytes))) => Ok((cid, bytes)),
                    Ok(Ok(None)) => Err(format!("block {cid} is no longer stored here")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .buffered(PIPELINE);
    while let Some(block) = reads.next().await {
        let (cid, bytes) = block.map_err(std::io::Error::other)?;
        limits.rate.take(peer, bytes.len()).await;
        limits.slots.touch(&peer);
        let cid_bytes = cid.to_bytes();
        let mut header = varint(cid_bytes.len());
        header.extend_from_slice(&cid_bytes);
        let write = async {
            stream
                .write_all(&varint(header.len() + bytes.len()))
                .await?;
            stream.write_all(&header).await?;
            stream.write_all(&bytes).await
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the peer read nothing for {WRITE_TIMEOUT:?}"),
                )
            })??;
        served.blocks += 1;
        served.bytes += bytes.len() as u64;
    }
    write_frame(&mut stream, &[]).await?;
    stream.close().await?;
    drop(slot);
    Ok(Some(served))
}

/// The record and blocks a request asks for, or why it is refused. Each chunk may be
/// asked once per request: repeats would make one small request cost the node any
/// number of bytes.
fn plan(store: &dyn Blockstore, request: &Request) -> Result<(RecordId, Vec<Cid>), String> {
    let root: RecordId = request
        .root
        .parse()
        .map_err(|e| format!("`{}` is not a record id: {e}", request.root))?;
    if request.chunks.len() > MAX_CHUNKS_PER_REQUEST {
        return Err(format!(
            "{} chunks asked; at most {MAX_CHUNKS_PER_REQUEST} per request",
            request.chunks.len()
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(request.chunks.len());
    if let Some(repeated) = request.chunks.iter().find(|&&i| !seen.insert(i)) {
        return Err(format!(
            "chunk {repeated} is asked more than once; ask each chunk once per request"
        ));
    }
    let bytes = store
        .get(root.cid())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("record {root} is not stored here"))?;
    let manifest = Manifest::decode(&bytes).map_err(|e| e.to_string())?;
    let mut blocks = Vec::with_capacity(request.chunks.len() + 1);
    if request.manifest {
        blocks.push(*root.cid());
    }
    for &index in &request.chunks {
        let cid = manifest.body.chunks.get(index as usize).ok_or_else(|| {
            format!(
                "record {root} has {} chunks; there is no chunk {index}",
                manifest.body.chunks.len()
            )
        })?;
        blocks.push(*cid);
    }
    Ok((root, blocks))
}

/// Fetches the manifest block of `root` from `peer`, checked against `root`.
pub(crate) async fn fetch_manifest(
    control: &mut Control,
    store: &Arc<dyn Blockstore>,
    peer: PeerId,
    root: &RecordId,
) -> Result<Manifest, NetError> {
    let mut done = Vec::new();
    fetch(control, store, peer, root, None, &[], &mut done, &|_| {}).await?;
    // Reading the block back is file I/O: off the async executor.
    let stored = {
        let (store, cid) = (store.clone(), *root.cid());
        tokio::task::spawn_blocking(move || store.get(&cid)).await??
    };
    let bytes = stored.ok_or_else(|| {
        NetError::Store(StoreError::MissingBlock {
            cid: root.cid().to_string(),
            record: Some(root.to_string()),
        })
    })?;
    Manifest::decode(&bytes).map_err(|e| {
        NetError::peer(
            peer,
            format!("record {root} is not a readable manifest: {e}"),
        )
    })
}

/// Fetches `chunks` (indices into `manifest`) of `root` from `peer`, verifying and
/// storing each block. Indices stored are pushed to `done` as they land, so a failed
/// transfer leaves the caller knowing what is still missing.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch(
    control: &mut Control,
    store: &Arc<dyn Blockstore>,
    peer: PeerId,
    root: &RecordId,
    manifest: Option<&Manifest>,
    chunks: &[u32],
    done: &mut Vec<u32>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), NetError> {
    let peer_error = |reason: String| NetError::peer(peer, reason);
    let io_error =
        move |what: &'static str| move |e: std::io::Error| NetError::peer_io(peer, what, e);
    let mut stream = open_stream(control, peer, PROTOCOL)
        .await
        .map_err(|e| io_error("cannot open a stream")(open_error(e)))?;
    let request = Request {
        root: root.to_string(),
        manifest: manifest.is_none(),
        chunks: chunks.to_vec(),
    };
    write_json(&mut stream, &request)
        .await
        .map_err(io_error("request not sent"))?;
    let reply: Reply = within_idle(read_json(&mut stream))
        .await
        .map_err(io_error("no reply"))?;
    if !reply.ok {
        return Err(NetError::Refused {
            peer,
            reason: reply.error.unwrap_or_else(|| "no reason given".into()),
        });
    }
    // What each arriving block must be, in order.
    let mut expected: Vec<(Option<u32>, Cid)> = Vec::with_capacity(chunks.len() + 1);
    match manifest {
        None => expected.push((None, *root.cid())),
        Some(m) => {
            for &i in chunks {
                // The caller passes indices of this manifest; a bad one is our bug.
                let cid = m.body.chunks.get(i as usize).ok_or_else(|| {
                    NetError::Store(StoreError::InvalidInput(format!(
                        "chunk {i} is beyond the manifest of {root}"
                    )))
                })?;
                expected.push((Some(i), *cid));
            }
        }
    }
    let mut pending: JoinSet<Result<(Option<u32>, u64), NetError>> = JoinSet::new();
    let mut next = 0usize;
    loop {
        let frame = within_idle(read_frame(&mut stream, MAX_BLOCK_SIZE + 128))
            .await
            .map_err(io_error("transfer cut"))?
            .ok_or_else(|| peer_error("stream ended without the end marker".into()))?;
        if frame.is_empty() {
            break;
        }
        let Some(&(index, cid)) = expected.get(next) else {
            return Err(peer_error("sent more blocks than asked".into()));
        };
        next += 1;
        let (claimed, data) =
            split_block_frame(&frame).ok_or_else(|| peer_error("malformed block frame".into()))?;
        if claimed != cid {
            return Err(peer_error(format!(
                "sent block {claimed} where {cid} was due"
            )));
        }
        // A chunk block is its declared chunk size sealed, never more: a signer that
        // declared small chunks cannot make us store large ones (replicas are
        // budgeted by the declared size).
        if let (Some(m), Some(_)) = (manifest, index) {
            let most = m.body.envelope.chunk_size as usize + CHUNK_TAG;
            if data.len() > most {
                return Err(peer_error(format!(
                    "sent a {}-byte chunk block; its manifest allows {most}",
                    data.len()
                )));
            }
        }
        if pending.len() >= PIPELINE {
            collect(&mut pending, done, progress).await?;
        }
        let store = store.clone();
        let data = data.to_vec();
        pending.spawn_blocking(move || {
            verify_cid(&cid, &data).map_err(|_| NetError::Corrupt {
                peer,
                cid: cid.to_string(),
            })?;
            store.put(&cid, &data)?;
            Ok((index, data.len() as u64))
        });
    }
    while !pending.is_empty() {
        collect(&mut pending, done, progress).await?;
    }
    if next != expected.len() {
        return Err(peer_error(format!(
            "ended after {next} of {} blocks",
            expected.len()
        )));
    }
    Ok(())
}

async fn collect(
    pending: &mut JoinSet<Result<(Option<u32>, u64), NetError>>,
    done: &mut Vec<u32>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), NetError> {
    if let Some(joined) = pending.join_next().await {
        let (index, len) = joined??;
        if let Some(i) = index {
            done.push(i);
        }
        progress(len);
    }
    Ok(())
}

/// The I/O error behind a failed stream opening (a peer that does not speak the
/// protocol becomes an `Unsupported` I/O error naming it).
pub(crate) fn open_error(e: libp2p_stream::OpenStreamError) -> std::io::Error {
    match e {
        libp2p_stream::OpenStreamError::Io(e) => e,
        other => std::io::Error::new(std::io::ErrorKind::Unsupported, other),
    }
}

fn split_block_frame(frame: &[u8]) -> Option<(Cid, &[u8])> {
    let mut len = 0usize;
    let mut i = 0;
    loop {
        let byte = *frame.get(i)?;
        len |= usize::from(byte & 0x7f) << (7 * i);
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if i > 3 {
            return None;
        }
    }
    let cid_bytes = frame.get(i..i.checked_add(len)?)?;
    let cid = Cid::try_from(cid_bytes).ok()?;
    Some((cid, &frame[i + len..]))
}
