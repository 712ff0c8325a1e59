//! Replication: the owner of a record asks chosen peers to hold a copy; each admitted
//! peer fetches the record (from the owner and any other provider) and answers once it
//! is stored. A repair pass re-asks the peers that should hold copies and, when one is
//! gone or has lost its copy, asks the next candidate instead.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use medmesh_core::{Manifest, RecordId};
use medmesh_crypto::Certificate;
use medmesh_store::{Replication, Store, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use serde::{Deserialize, Serialize};

use crate::fastpath;
use crate::fetch::FetchOptions;
use crate::limits::Slot;
use crate::wire::{read_json, within_idle, write_json};
use crate::{FetchReport, ReplicaOutcome};
use crate::{NetError, NetEvent, Network};

/// The replication protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/medmesh/replicate/1.0.0");

/// How much longer than `replica_timeout` the asking side waits, so that a holder with
/// the same setting gets its own answer (a copy, or giving up) through before we stop
/// listening.
const ANSWER_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    root: String,
    #[serde(default)]
    institution: Option<String>,
    /// The asking institution's certificate (ASCII armor): the holder checks the
    /// record's manifest against it before fetching a single chunk.
    #[serde(default)]
    certificate: Option<String>,
}

type Reply = crate::wire::Reply<FetchReport>;

/// The most one chunk block of `manifest` takes: its declared chunk size sealed (plus
/// the 16-byte tag). Fetching refuses larger chunk blocks, so this bounds what a
/// replica costs.
fn replica_bytes_per_chunk(manifest: &Manifest) -> u64 {
    u64::from(manifest.body.envelope.chunk_size) + TAG_BYTES
}

/// The AEAD tag each sealed chunk carries.
const TAG_BYTES: u64 = 16;

pub(crate) fn serve(network: &Network) -> Result<(), NetError> {
    let mut incoming = network.accept(PROTOCOL)?;
    let network = network.clone();
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let network = network.clone();
            tokio::spawn(async move { network.answer_replica(peer, stream).await });
        }
    });
    Ok(())
}

/// Resolves when the asking peer closes or resets `stream`: it sends nothing after its
/// request and keeps the stream open until it has the answer, so a read that returns
/// at all means it is gone (or misbehaving) and nobody waits for the answer any more.
async fn peer_hung_up(stream: &mut libp2p::Stream) {
    let mut byte = [0u8; 1];
    let _ = stream.read(&mut byte).await;
}

impl Network {
    /// Answers one replication request: admits it (policy, then the limits), fetches
    /// the record within `replica_timeout`, and replies.
    async fn answer_replica(&self, peer: PeerId, mut stream: libp2p::Stream) {
        let request = match within_idle(read_json::<_, Request>(&mut stream)).await {
            Ok(request) => request,
            Err(e) => {
                let reply = Reply::refused(format!("unreadable request: {e}"));
                let _ = write_json(&mut stream, &reply).await;
                return;
            }
        };
        // The asking side's clock starts when it sends the request: so does ours.
        let timeout = self.inner.config.replica_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let (root, slot) = match self.admit_replica(peer, &request).await {
            Ok(admitted) => admitted,
            Err(refusal) => {
                let _ = write_json(&mut stream, &Reply::refused(refusal)).await;
                return;
            }
        };
        let reply = tokio::select! {
            held = tokio::time::timeout_at(deadline, self.hold_replica(peer, root, &request)) => {
                held.unwrap_or_else(|_| {
                    tracing::warn!(%peer, record = %root, ?timeout, "replica not fetched in time: gave up");
                    Reply::refused(format!(
                        "record {root} could not be fetched within {} s (replica_timeout_secs); \
                         the blocks that arrived are kept and a new request resumes from there",
                        timeout.as_secs()
                    ))
                })
            }
            () = peer_hung_up(&mut stream) => {
                tracing::info!(%peer, record = %root, "the asking peer left: replica fetch abandoned");
                return;
            }
        };
        // Free the place before answering, so a peer that asks again as soon as it
        // hears back finds it free.
        drop(slot);
        if let Err(e) = write_json(&mut stream, &reply).await {
            tracing::debug!(%peer, record = %root, error = %e, "replication answer not delivered");
        }
    }

    /// Checks that `peer` may ask (policy), that the request names a record, and takes
    /// a place among the requests in progress; `Err` is the refusal to send back.
    async fn admit_replica(
        &self,
        peer: PeerId,
        request: &Request,
    ) -> Result<(RecordId, Slot), String> {
        if let Err(reason) = self
            .inner
            .policy
            .may_replicate(peer, request.institution.as_deref())
            .await
        {
            tracing::warn!(%peer, reason, "replication request refused");
            return Err(format!("not authorized: {reason}"));
        }
        let root = request
            .root
            .parse::<RecordId>()
            .map_err(|e| format!("`{}` is not a record id: {e}", request.root))?;
        let slot = self.inner.replicas.try_take(peer).map_err(|refusal| {
            tracing::warn!(%peer, record = %root, refusal, "replication request refused");
            refusal
        })?;
        Ok((root, slot))
    }

    /// Checks the record `peer` asks us to hold, then fetches it from `peer` (and any
    /// other provider).
    async fn hold_replica(&self, peer: PeerId, root: RecordId, request: &Request) -> Reply {
        if let Err(refusal) = self.vet_replica(peer, root, request).await {
            tracing::warn!(%peer, record = %root, refusal, "replica refused");
            return Reply::refused(refusal);
        }
        // A peer whose institution's signed record we hold is known: its connection
        // keeps a reserved slot. (Not on admission alone: with an open policy any peer
        // is admitted.)
        self.inner
            .slots
            .with(|s| s.admit(peer, std::time::Instant::now()));
        let options = FetchOptions {
            providers: vec![peer],
            ..FetchOptions::default()
        };
        match self.fetch_record(root, options, Arc::new(|_| {})).await {
            Ok(report) => {
                tracing::info!(%peer, record = %root, fetched = report.blocks_fetched, "holding a replica");
                let _ = self.inner.events.send(NetEvent::ReplicaHeld {
                    peer,
                    record: root,
                    blocks_fetched: report.blocks_fetched,
                });
                Reply::ok(Some(report))
            }
            Err(e) => {
                tracing::warn!(%peer, record = %root, error = %e, "replica not fetched");
                Reply::refused(e.to_string())
            }
        }
    }

    /// Before a single chunk is fetched: the manifest must be signed by the asking
    /// institution's certificate (which the policy must vouch for) and name it as the
    /// owner, and the record must fit this node's replica bounds. `Err` is the refusal.
    async fn vet_replica(
        &self,
        peer: PeerId,
        root: RecordId,
        request: &Request,
    ) -> Result<(), String> {
        let armored = request.certificate.as_deref().ok_or(
            "the request carries no certificate: this node holds only records whose \
             owner's signature it can check",
        )?;
        let certificate = Certificate::from_bytes(armored.as_bytes())
            .map_err(|e| format!("the request's certificate is unreadable: {e}"))?;
        let owner = certificate.id();
        self.inner
            .policy
            .vouches_for(request.institution.as_deref(), &owner)
            .await
            .map_err(|reason| format!("not authorized: {reason}"))?;
        let manifest = match self.local_manifest(&root).await {
            Ok(Some(manifest)) => manifest,
            _ => {
                let mut control = self.inner.control.clone();
                fastpath::fetch_manifest(&mut control, &self.inner.store, peer, &root)
                    .await
                    .map_err(|e| format!("cannot fetch the manifest of {root}: {e}"))?
            }
        };
        let chunk_size = manifest.body.envelope.chunk_size;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(format!(
                "record {root} declares {chunk_size}-byte chunks, outside \
                 {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
            ));
        }
        if manifest.body.owner != owner {
            return Err(format!(
                "record {root} is owned by {}, not by the asking institution {owner}",
                manifest.body.owner
            ));
        }
        // Only what is still missing costs anything: a repair pass re-asking a holder
        // that has the record must not use up the asking peer's share.
        let missing = self
            .missing_chunks(&manifest)
            .await
            .map_err(|e| format!("cannot read the local store: {e}"))?;
        let bytes = missing.len() as u64 * replica_bytes_per_chunk(&manifest);
        // ML-DSA verification is CPU work: off the executor.
        let manifest = Arc::new(manifest);
        let signed = manifest.clone();
        tokio::task::spawn_blocking(move || certificate.verify_manifest(&signed))
            .await
            .map_err(|e| format!("signature check stopped: {e}"))?
            .map_err(|e| format!("record {root} is not signed by its owner: {e}"))?;
        if bytes == 0 {
            return Ok(());
        }
        let free = {
            let store = self.inner.store.clone();
            tokio::task::spawn_blocking(move || store.free_bytes())
                .await
                .unwrap_or(None)
        };
        self.inner
            .replica_budget
            .take(peer, bytes, free, std::time::Instant::now())
    }

    /// Asks `peer` to hold a copy of `root` (which it fetches from us or any provider),
    /// waiting up to `replica_timeout` (and a short margin) for its answer.
    pub async fn request_replica(&self, peer: PeerId, root: &RecordId) -> ReplicaOutcome {
        let wait = self.inner.config.replica_timeout() + ANSWER_MARGIN;
        let outcome = async {
            let mut control = self.inner.control.clone();
            let request = Request {
                root: root.to_string(),
                institution: self.inner.institution.clone(),
                certificate: self.inner.certificate.clone(),
            };
            // Two nodes that dialed each other at once hold two connections until one
            // is closed; a stream opened on the closing one fails before the request is
            // out. Nothing was asked then, so one more stream is safe.
            let mut attempt = 0;
            let mut stream = loop {
                attempt += 1;
                let mut stream = crate::wire::open_stream(&mut control, peer, PROTOCOL)
                    .await
                    .map_err(|e| format!("cannot open a stream: {e}"))?;
                match write_json(&mut stream, &request).await {
                    Ok(()) => break stream,
                    Err(e) if attempt < 2 => {
                        tracing::debug!(%peer, error = %e, "replication request not sent; retrying on a new stream");
                    }
                    Err(e) => return Err(e.to_string()),
                }
            };
            // Dropping the stream on timeout tells the peer to stop fetching.
            let reply: Reply = tokio::time::timeout(wait, read_json(&mut stream))
                .await
                .map_err(|_| format!("no answer within {} s", wait.as_secs()))?
                .map_err(|e| format!("no answer: {e}"))?;
            Ok::<_, String>(reply)
        }
        .await;
        match outcome {
            Ok(Reply {
                ok: true,
                result: report,
                ..
            }) => ReplicaOutcome {
                peer: peer.to_string(),
                ok: true,
                error: None,
                blocks_fetched: report.map_or(0, |r| r.blocks_fetched),
            },
            Ok(Reply { error, .. }) => ReplicaOutcome {
                peer: peer.to_string(),
                ok: false,
                error: Some(error.unwrap_or_else(|| "refused without a reason".into())),
                blocks_fetched: 0,
            },
            Err(error) => ReplicaOutcome {
                peer: peer.to_string(),
                ok: false,
                error: Some(error),
                blocks_fetched: 0,
            },
        }
    }

    /// Brings record `id` to `replication.copies` holders: the current holders are
    /// asked first, then the other candidates in order. Saves the new holders (on a
    /// blocking thread: a database transaction) and returns every answer.
    pub async fn replicate(
        &self,
        store: &Arc<Store>,
        id: &RecordId,
        replication: &Replication,
    ) -> Result<Vec<ReplicaOutcome>, NetError> {
        let mut order: Vec<&String> = replication.holders.iter().collect();
        for c in &replication.candidates {
            if !order.contains(&c) {
                order.push(c);
            }
        }
        let mut outcomes = Vec::new();
        let mut holders = Vec::new();
        for candidate in order {
            if holders.len() >= replication.copies as usize {
                break;
            }
            let outcome = match candidate.parse::<PeerId>() {
                Ok(peer) => self.request_replica(peer, id).await,
                Err(e) => ReplicaOutcome {
                    peer: candidate.clone(),
                    ok: false,
                    error: Some(format!("not a peer id: {e}")),
                    blocks_fetched: 0,
                },
            };
            if outcome.ok {
                holders.push(candidate.clone());
            } else {
                tracing::warn!(record = %id, peer = %candidate, error = ?outcome.error, "replica not placed");
            }
            outcomes.push(outcome);
        }
        if holders.len() < replication.copies as usize {
            tracing::warn!(record = %id, have = holders.len(), want = replication.copies, "fewer replicas than asked");
        }
        if holders != replication.holders {
            let updated = Replication {
                holders,
                ..replication.clone()
            };
            let (store, id) = (store.clone(), *id);
            tokio::task::spawn_blocking(move || store.set_replication(&id, &updated)).await??;
        }
        Ok(outcomes)
    }

    /// One repair pass over every record with replication settings; returns how many
    /// are still short of their copies.
    pub async fn repair(&self, store: &Arc<Store>) -> Result<usize, NetError> {
        let records = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.replications()).await??
        };
        let mut short = 0;
        for (id, replication) in records {
            let outcomes = self.replicate(store, &id, &replication).await?;
            // `replicate` keeps, in order, the peers that answered yes.
            let holders: Vec<String> = outcomes
                .iter()
                .filter(|o| o.ok)
                .map(|o| o.peer.clone())
                .collect();
            if holders.len() < replication.copies as usize {
                short += 1;
            }
            if holders != replication.holders {
                let _ = self.inner.events.send(NetEvent::ReplicasRepaired {
                    record: id,
                    copies: replication.copies,
                    holders,
                });
            }
        }
        Ok(short)
    }

    /// Runs [`Network::repair`] every `repair_interval` until the network stops.
    pub fn spawn_repair(&self, store: Arc<Store>) {
        let network = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(network.inner.config.repair_interval());
            tick.tick().await;
            loop {
                tick.tick().await;
                match network.repair(&store).await {
                    Ok(0) => {}
                    Ok(short) => {
                        tracing::warn!(records = short, "records below their replica count")
                    }
                    Err(NetError::Stopped) => return,
                    Err(e) => tracing::warn!(error = %e, "repair pass failed"),
                }
            }
        });
    }
}
