//! Fetching a whole record from the network: find providers (given ones and the DHT),
//! get the manifest, then the chunks still missing here, split among several
//! providers over the fast path (or by bitswap), verifying every block. A provider that
//! sends a corrupt block is banned and its share goes to the others; a fetch that is
//! cut (or a node restarted mid-transfer) resumes from the blocks already stored.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use medmesh_core::{Manifest, RecordId};
use medmesh_store::StoreError;

use crate::fastpath::{self, MAX_CHUNKS_PER_REQUEST};
use crate::{FetchReport, NetError, Network, Transfer};

/// Options of [`Network::fetch_record`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Peers known to hold the record (tried first; the DHT is asked as well).
    pub providers: Vec<PeerId>,
    /// How blocks move.
    pub transfer: Transfer,
    /// Most providers fetched from at once.
    pub parallel: usize,
    /// Concurrent fast-path streams per provider (spread over its connections).
    pub streams_per_provider: usize,
    /// Chunks per fast-path request.
    pub batch: usize,
    /// How long to wait for the DHT to name providers (default: the network's
    /// `find_timeout_ms`).
    pub find_timeout: Option<Duration>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            transfer: Transfer::FastPath,
            parallel: 4,
            streams_per_provider: 2,
            batch: 64,
            find_timeout: None,
        }
    }
}

/// Pause between DHT lookups while no provider is known.
const LOOKUP_RETRY: Duration = Duration::from_millis(500);

/// Called with the bytes of each block as it is stored.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

impl Network {
    /// Fetches record `root` from peers into the local store and indexes it.
    pub async fn fetch_record(
        &self,
        root: RecordId,
        options: FetchOptions,
        progress: Progress,
    ) -> Result<FetchReport, NetError> {
        let mut report = FetchReport {
            record: root.to_string(),
            ..FetchReport::default()
        };
        // A record already whole here (a repair pass re-asking a holder) needs no DHT
        // lookup and no peer.
        let local = match self.local_manifest(&root).await? {
            Some(manifest) => {
                let missing = self.missing_chunks(&manifest).await?;
                Some((manifest, missing))
            }
            None => None,
        };
        let complete = local
            .as_ref()
            .is_some_and(|(_, missing)| missing.is_empty());
        let mut candidates = if complete {
            Vec::new()
        } else {
            self.candidates(&root, &options).await
        };
        let asked = candidates.clone();
        let (manifest, missing) = match local {
            Some(local) => local,
            None => {
                let manifest = self
                    .remote_manifest(&root, &mut candidates, &options, &mut report)
                    .await?;
                let missing = self.missing_chunks(&manifest).await?;
                (manifest, missing)
            }
        };
        report.blocks_total = manifest.body.chunks.len() as u64 + 1;
        report.blocks_present = report.blocks_total - missing.len() as u64 - report.blocks_fetched;
        if !missing.is_empty() {
            if candidates.is_empty() {
                return Err(NetError::NotFound(format!(
                    "no provider of record {root} is reachable ({} chunks missing here)",
                    missing.len()
                )));
            }
            let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counting: Progress = {
                let counted = counted.clone();
                let progress = progress.clone();
                Arc::new(move |n| {
                    counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    progress(n)
                })
            };
            let used = match options.transfer {
                Transfer::FastPath => {
                    self.fast_chunks(
                        &root,
                        &manifest,
                        missing.clone(),
                        &candidates,
                        &options,
                        counting,
                    )
                    .await?
                }
                Transfer::Bitswap => {
                    self.bitswap_chunks(&manifest, &missing, &candidates, counting)
                        .await?
                }
            };
            report.blocks_fetched += missing.len() as u64;
            report.bytes_fetched += counted.load(std::sync::atomic::Ordering::Relaxed);
            for peer in used {
                if !report.providers.contains(&peer.to_string()) {
                    report.providers.push(peer.to_string());
                }
            }
        }
        let from = candidates.first().copied().unwrap_or(self.inner.peer_id);
        let store = self.inner.store.clone();
        report.imported =
            tokio::task::spawn_blocking(move || store.import_record(&root, &from)).await??;
        for peer in asked.iter().filter(|p| self.inner.scores.is_banned(p)) {
            report.banned.push(peer.to_string());
        }
        // Announce the new copy in the background: others may fetch from us now.
        let network = self.clone();
        tokio::spawn(async move {
            if let Err(e) = network.provide(*root.cid()).await {
                tracing::debug!(record = %root, error = %e, "provider announcement failed");
            }
        });
        tracing::info!(record = %root, fetched = report.blocks_fetched, present = report.blocks_present, "record fetched");
        Ok(report)
    }

    /// Given providers first, then those the DHT names; never ourselves or banned
    /// peers.
    async fn candidates(&self, root: &RecordId, options: &FetchOptions) -> Vec<PeerId> {
        // A record announced a moment ago may not have reached the DHT nodes we ask:
        // look again until the timeout while nobody is known.
        let wait = options
            .find_timeout
            .unwrap_or_else(|| self.inner.config.find_timeout());
        let deadline = tokio::time::Instant::now() + wait;
        let mut found = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.find_providers(*root.cid())).await {
                Ok(Ok(peers)) => found = peers,
                Ok(Err(e)) => tracing::debug!(error = %e, "provider lookup failed"),
                Err(_) => tracing::debug!(record = %root, "provider lookup timed out"),
            }
            let usable = found
                .iter()
                .chain(&options.providers)
                .any(|p| !self.inner.scores.is_banned(p));
            if usable || tokio::time::Instant::now() + LOOKUP_RETRY >= deadline {
                break;
            }
            tokio::time::sleep(LOOKUP_RETRY).await;
        }
        let mut out: Vec<PeerId> = Vec::new();
        for p in options.providers.iter().chain(found.iter()) {
            if *p != self.inner.peer_id && !self.inner.scores.is_banned(p) && !out.contains(p) {
                out.push(*p);
            }
        }
        out
    }

    /// The record's manifest if it is stored here.
    pub(crate) async fn local_manifest(
        &self,
        root: &RecordId,
    ) -> Result<Option<Manifest>, NetError> {
        let store = self.inner.store.clone();
        let cid = *root.cid();
        let local = tokio::task::spawn_blocking(move || store.get(&cid)).await??;
        local
            .map(|bytes| {
                Manifest::decode(&bytes).map_err(|e| {
                    // The error names no record: say which one here.
                    tracing::warn!(record = %root, error = %e, "the stored manifest does not decode");
                    NetError::Store(StoreError::Core(e))
                })
            })
            .transpose()
    }

    /// Indices of the chunks of `manifest` not stored here.
    pub(crate) async fn missing_chunks(&self, manifest: &Manifest) -> Result<Vec<u32>, NetError> {
        let store = self.inner.store.clone();
        let chunks = manifest.body.chunks.clone();
        let missing = tokio::task::spawn_blocking(move || {
            (0..chunks.len() as u32)
                .filter(|&i| !store.has(&chunks[i as usize]))
                .collect::<Vec<u32>>()
        })
        .await?;
        Ok(missing)
    }

    /// The manifest from the first candidate that serves one hashing to `root`.
    async fn remote_manifest(
        &self,
        root: &RecordId,
        candidates: &mut Vec<PeerId>,
        options: &FetchOptions,
        report: &mut FetchReport,
    ) -> Result<Manifest, NetError> {
        let cid = *root.cid();
        let mut errors = Vec::new();
        for &peer in candidates.iter() {
            let fetched = match options.transfer {
                Transfer::FastPath => {
                    let mut control = self.inner.control.clone();
                    fastpath::fetch_manifest(&mut control, &self.inner.store, peer, root).await
                }
                Transfer::Bitswap => match self.bitswap_get(cid, &[peer]).await {
                    Ok(bytes) => Manifest::decode(&bytes).map_err(|e| {
                        NetError::peer(
                            peer,
                            format!("record {root} is not a readable manifest: {e}"),
                        )
                    }),
                    Err(e) => Err(e),
                },
            };
            match fetched {
                Ok(manifest) => {
                    report.blocks_fetched += 1;
                    return Ok(manifest);
                }
                Err(e) => {
                    self.penalise_if_corrupt(&e).await;
                    errors.push(e.to_string());
                }
            }
        }
        candidates.retain(|p| !self.inner.scores.is_banned(p));
        Err(NetError::NotFound(if errors.is_empty() {
            format!("no provider of record {root} was found")
        } else {
            format!("no provider served record {root}: {}", errors.join("; "))
        }))
    }

    async fn penalise_if_corrupt(&self, error: &NetError) {
        if let NetError::Corrupt { peer, .. } = error {
            self.inner.scores.corrupt_block(*peer);
            self.disconnect(*peer).await;
        }
    }

    /// Splits `missing` into batches that workers (one per provider) take from a shared
    /// queue; a failed batch goes back for another provider.
    async fn fast_chunks(
        &self,
        root: &RecordId,
        manifest: &Manifest,
        missing: Vec<u32>,
        candidates: &[PeerId],
        options: &FetchOptions,
        progress: Progress,
    ) -> Result<Vec<PeerId>, NetError> {
        let batch = options.batch.clamp(1, MAX_CHUNKS_PER_REQUEST);
        let queue: Arc<Mutex<VecDeque<Vec<u32>>>> = Arc::new(Mutex::new(
            missing.chunks(batch).map(<[u32]>::to_vec).collect(),
        ));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        // Batches taken but not finished: a worker that finds the queue empty waits
        // while others still hold batches, which may come back if their provider fails.
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let manifest = Arc::new(manifest.clone());
        let mut workers = tokio::task::JoinSet::new();
        let streams = options.streams_per_provider.max(1);
        let workers_for = candidates
            .iter()
            .take(options.parallel.max(1))
            .flat_map(|p| std::iter::repeat_n(*p, streams));
        for peer in workers_for {
            let (queue, errors, progress) = (queue.clone(), errors.clone(), progress.clone());
            let in_flight = in_flight.clone();
            let (network, manifest, root) = (self.clone(), manifest.clone(), *root);
            workers.spawn(async move {
                let mut control = network.inner.control.clone();
                let mut served = false;
                loop {
                    // Another stream to this peer may have found it corrupt.
                    if network.inner.scores.is_banned(&peer) {
                        return served.then_some(peer);
                    }
                    let taken = {
                        let mut queue = crate::lock(&queue);
                        let taken = queue.pop_front();
                        if taken.is_some() {
                            in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        taken
                    };
                    let Some(chunks) = taken else {
                        if in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                            return served.then_some(peer);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let mut done = Vec::new();
                    network.touch(&peer);
                    // A ban found by another stream to this peer ends this one too,
                    // instead of waiting for the banned peer's connection to wind down.
                    let result = tokio::select! {
                        result = fastpath::fetch(
                            &mut control,
                            &network.inner.store,
                            peer,
                            &root,
                            Some(&manifest),
                            &chunks,
                            &mut done,
                            &*progress,
                        ) => result,
                        () = network.inner.scores.until_banned(peer) => Err(NetError::peer(
                            peer,
                            "banned for a corrupt block on another stream",
                        )),
                    };
                    let finished = || in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    match result {
                        Ok(()) => {
                            served = true;
                            finished();
                        }
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "provider failed; its share goes to others");
                            network.penalise_if_corrupt(&e).await;
                            crate::lock(&errors).push(e.to_string());
                            let left: Vec<u32> = chunks.into_iter().filter(|i| !done.contains(i)).collect();
                            if !left.is_empty() {
                                crate::lock(&queue).push_back(left);
                            }
                            finished();
                            return served.then_some(peer);
                        }
                    }
                }
            });
        }
        let mut used = Vec::new();
        while let Some(joined) = workers.join_next().await {
            if let Some(peer) = joined? {
                used.push(peer);
            }
        }
        let left: usize = crate::lock(&queue).iter().map(Vec::len).sum();
        if left > 0 {
            let errors = crate::lock(&errors).join("; ");
            return Err(NetError::NotFound(format!(
                "{left} chunks of record {root} could not be fetched from any provider ({errors}); \
                 what arrived is kept and a new fetch resumes from there"
            )));
        }
        Ok(used)
    }

    async fn bitswap_chunks(
        &self,
        manifest: &Manifest,
        missing: &[u32],
        candidates: &[PeerId],
        progress: Progress,
    ) -> Result<Vec<PeerId>, NetError> {
        // At most 32 wants in flight, as Kubo's default session does.
        let window = Arc::new(tokio::sync::Semaphore::new(32));
        let mut wants = tokio::task::JoinSet::new();
        for &i in missing {
            let cid = manifest.body.chunks[i as usize];
            let (network, candidates, progress) =
                (self.clone(), candidates.to_vec(), progress.clone());
            let window = window.clone();
            wants.spawn(async move {
                let _slot = window
                    .acquire_owned()
                    .await
                    .map_err(|_| NetError::Stopped)?;
                let bytes = network.bitswap_get(cid, &candidates).await?;
                progress(bytes.len() as u64);
                Ok::<_, NetError>(())
            });
        }
        while let Some(joined) = wants.join_next().await {
            joined??;
        }
        Ok(candidates.to_vec())
    }
}
