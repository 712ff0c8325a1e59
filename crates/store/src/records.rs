//! Records: streaming ingest (chunk → encrypt → hash → block files → manifest → index)
//! and streaming read (blocks → verify → decrypt), listing, removal, garbage
//! collection and consistency checks.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use medmesh_core::{
    cid_of, Cid, Codec, ContentType, InstitutionId, Manifest, ManifestBody, PatientRef, RecordId,
    RecordMeta, MANIFEST_VERSION, MAX_BLOCK_SIZE,
};
use medmesh_crypto::envelope::TAG_LEN;
use medmesh_crypto::{Certificate, DataKey, RecordCipher, UnlockedDecryptor, UnlockedSigner};
use redb::{ReadOnlyTable, ReadableDatabase, ReadableTable};
use serde::Serialize;
use time::OffsetDateTime;

use crate::audit::{self, AuditAction, AuditEvent};
use crate::blocks::file_age;
use crate::index;
use crate::tables::{
    AUDIT, BY_OWNER, BY_PATIENT, BY_TIME, BY_TYPE, HELD, INGEST_KEYS, RECORDS, REFS,
};
use crate::{Store, StoreError};

#[cfg(test)]
thread_local! {
    /// Index entries [`Store::scan_records`] read on this thread, so tests can check
    /// that a limited scan stops early.
    static INDEX_ENTRIES_READ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Plaintext bytes per chunk by default: each encrypted block is then exactly 1 MiB,
/// the largest block IPFS peers accept by default.
pub const DEFAULT_CHUNK_SIZE: u32 = (MAX_BLOCK_SIZE - TAG_LEN) as u32;
/// Bytes looked at to guess a record's content type.
const SNIFF_LEN: usize = 4096;
/// Largest chunk size accepted.
pub const MAX_CHUNK_SIZE: u32 = DEFAULT_CHUNK_SIZE;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 4096;

/// What to store with a record.
#[derive(Debug, Clone)]
pub struct PutRequest {
    /// Media type of the plaintext; sniffed from the first bytes when `None`.
    pub content_type: Option<ContentType>,
    /// The patient the record is about, if known.
    pub patient: Option<PatientRef>,
    /// Plaintext bytes per chunk ([`DEFAULT_CHUNK_SIZE`] unless testing).
    pub chunk_size: u32,
    /// Who is writing, for the audit log.
    pub actor: String,
    /// Makes the write idempotent: a second put with the same key stores nothing and
    /// returns the first record's id (a writer that crashed between storing a record and
    /// remembering it, such as the telemetry batcher, repeats the put safely). The key
    /// is kept in clear: it must not reveal anything about a patient.
    pub idempotency_key: Option<String>,
}

/// Filters for [`Store::list`] and [`Store::scan_records`]; empty fields match
/// everything.
#[derive(Debug, Clone, Default)]
pub struct RecordQuery {
    /// Only records owned by this institution.
    pub owner: Option<InstitutionId>,
    /// Only records about this patient.
    pub patient: Option<PatientRef>,
    /// Only records of this media type.
    pub content_type: Option<ContentType>,
    /// Only records created at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only records created before this time.
    pub until: Option<OffsetDateTime>,
    /// At most this many (oldest first); 0 means no limit.
    pub limit: usize,
}

impl RecordQuery {
    /// Whether a record's metadata passes the owner, patient and type filters (the
    /// time window is applied by the index range).
    fn matches(&self, meta: &RecordMeta) -> bool {
        self.owner.as_ref().is_none_or(|o| &meta.owner == o)
            && self
                .patient
                .as_ref()
                .is_none_or(|p| meta.patient.as_ref() == Some(p))
            && self
                .content_type
                .as_ref()
                .is_none_or(|t| &meta.content_type == t)
    }
}

/// Progress of a read: bytes written so far.
pub type ReadProgress<'a> = &'a (dyn Fn(u64) + Sync);

/// What [`Store::remove_record`] did.
#[derive(Debug, Clone, Serialize)]
pub struct RemoveReport {
    /// Blocks deleted.
    pub blocks_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// What [`Store::gc`] or [`Store::sweep_orphans`] did.
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    /// Unreferenced blocks deleted.
    pub blocks_removed: u64,
    /// Leftover temp files (from interrupted writes) deleted.
    pub temp_files_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// What [`Store::check`] found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Records checked.
    pub records: u64,
    /// Blocks re-hashed.
    pub blocks_checked: u64,
    /// Blocks no record references (left by an interrupted write; `gc` removes them).
    pub unreferenced_blocks: u64,
    /// Problems found, one line each; empty when the store is consistent.
    pub problems: Vec<String>,
}

/// A record whose signature verified and whose key is unwrapped, ready to stream.
pub struct OpenRecord<'a> {
    store: &'a Store,
    id: RecordId,
    manifest: Manifest,
    meta: RecordMeta,
    cipher: RecordCipher,
    // Keeps the blocks until the read ends, even if the record is removed meanwhile.
    _lease: crate::leases::ReadLease<'a>,
}

impl OpenRecord<'_> {
    /// The record's metadata (opened from its verified manifest).
    pub fn meta(&self) -> &RecordMeta {
        &self.meta
    }

    /// Streams the plaintext into `out`, verifying every block's hash and every
    /// chunk's tag on the way, then audits the read. Returns the plaintext size.
    ///
    /// On error some plaintext may already be in `out`; callers writing a file write it
    /// to a temporary name and rename it only on success.
    pub fn copy_to(
        self,
        out: &mut dyn Write,
        actor: &str,
        progress: ReadProgress<'_>,
    ) -> Result<u64, StoreError> {
        let id = self.id;
        let chunk_size = u64::from(self.manifest.body.envelope.chunk_size);
        let n = self.manifest.body.chunks.len();
        let mut written = 0u64;
        for (i, cid) in self.manifest.body.chunks.iter().enumerate() {
            let mut block = self.store.blocks.get(cid).map_err(|e| match e {
                StoreError::MissingBlock { cid, .. } => StoreError::MissingBlock {
                    cid,
                    record: Some(id.to_string()),
                },
                other => other,
            })?;
            let last = i + 1 == n;
            let plain = self.cipher.open_chunk(i as u64, last, &mut block)?;
            if !last && plain.len() as u64 != chunk_size {
                return Err(StoreError::Corrupt(format!(
                    "chunk {i} of record {id} holds {} bytes, expected {chunk_size}",
                    plain.len()
                )));
            }
            out.write_all(plain)
                .map_err(StoreError::io("writing the record's plaintext"))?;
            written += plain.len() as u64;
            progress(written);
        }
        if written != self.meta.size {
            return Err(StoreError::Corrupt(format!(
                "record {id} decrypted to {written} bytes but its manifest says {}",
                self.meta.size
            )));
        }
        out.flush()
            .map_err(StoreError::io("writing the record's plaintext"))?;
        self.store.audit(AuditEvent {
            action: AuditAction::RecordRead,
            actor: actor.to_string(),
            subject: id.to_string(),
            detail: BTreeMap::from([("size".into(), written.to_string())]),
        })?;
        Ok(written)
    }
}

struct SealedChunk {
    index: u64,
    cid: Cid,
    shard: PathBuf,
}

impl Store {
    /// Ingests a record from `input`: encrypts it chunk by chunk under a fresh data key,
    /// stores the blocks, wraps the key for the signer's institution and `also_for`,
    /// signs the manifest, and commits the index and an audit entry. Returns once all of
    /// it is durable. Memory use is a few chunks, whatever the input size.
    pub fn put_record(
        &self,
        input: &mut (dyn Read + Send),
        request: &PutRequest,
        signer: &Mutex<UnlockedSigner>,
        owner_cert: &Certificate,
        also_for: &[Certificate],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<RecordId, StoreError> {
        let lock_signer = || signer.lock().unwrap_or_else(|e| e.into_inner());
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&request.chunk_size) {
            return Err(StoreError::InvalidInput(format!(
                "chunk size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                request.chunk_size
            )));
        }
        let signer_id = lock_signer().id().clone();
        if owner_cert.id() != signer_id {
            return Err(StoreError::InvalidInput(format!(
                "the signing key belongs to {signer_id} but the owner certificate is {}",
                owner_cert.id()
            )));
        }
        let index_key = self.index_key()?;
        if let Some(existing) = self.idempotent_record(request.idempotency_key.as_deref())? {
            return Ok(existing);
        }
        let _guard = self.gc_guard.read().unwrap_or_else(|e| e.into_inner());
        let key = DataKey::generate()?;
        let envelope = RecordCipher::new_header(request.chunk_size)?;
        let cipher = RecordCipher::new(&key, &envelope)?;

        let (chunks, size, sniffed, mut shards) =
            self.seal_and_store(input, &cipher, request.chunk_size as usize, progress)?;

        let mut key_wraps = vec![owner_cert.wrap(&key)?];
        for cert in also_for {
            if cert.id() != owner_cert.id() {
                key_wraps.push(cert.wrap(&key)?);
            }
        }
        let meta = RecordMeta {
            content_type: request.content_type.clone().unwrap_or(sniffed),
            size,
            created: OffsetDateTime::now_utc(),
            owner: owner_cert.id(),
            patient: request.patient.clone(),
        };
        // The signer is locked only for the signature, so concurrent ingests overlap.
        let manifest = lock_signer().sign_manifest(ManifestBody {
            version: MANIFEST_VERSION,
            owner: meta.owner.clone(),
            meta: cipher.seal_meta(&meta)?,
            envelope,
            chunks,
            key_wraps,
        })?;
        let (id, manifest_bytes) = manifest.to_block()?;
        shards.insert(self.blocks.put(id.cid(), &manifest_bytes)?);
        self.blocks.sync_dirs(&shards)?;

        let mut blocks = manifest.body.chunks.clone();
        blocks.push(*id.cid());
        let txn = self.db.begin_write()?;
        if let Some(key) = &request.idempotency_key {
            let mut keys = txn.open_table(INGEST_KEYS)?;
            let earlier = keys.get(key.as_str())?.map(|v| v.value().to_string());
            let earlier = match earlier {
                Some(e) if txn.open_table(RECORDS)?.get(e.as_str())?.is_some() => Some(e),
                _ => None,
            };
            if let Some(earlier) = earlier {
                // A concurrent put with the same key committed first: this one's blocks
                // are orphans the sweep deletes.
                drop(keys);
                txn.abort()?;
                return earlier.parse().map_err(|_| {
                    StoreError::Corrupt(format!("ingest key {key} names no record id"))
                });
            }
            keys.insert(key.as_str(), id.to_string().as_str())?;
        }
        index::insert_record(&txn, index_key, &id, &meta, &blocks)?;
        audit::append(
            &mut txn.open_table(AUDIT)?,
            AuditEvent {
                action: AuditAction::RecordWrite,
                actor: request.actor.clone(),
                subject: id.to_string(),
                // No metadata: the audit log is not sealed, and the type says a lot.
                detail: BTreeMap::from([
                    ("size".into(), size.to_string()),
                    ("chunks".into(), manifest.body.chunks.len().to_string()),
                ]),
            },
        )?;
        txn.commit()?;
        tracing::info!(record = %id, size, chunks = manifest.body.chunks.len(), "record stored");
        Ok(id)
    }

    /// The record an earlier put with idempotency key `key` stored, if any.
    fn idempotent_record(&self, key: Option<&str>) -> Result<Option<RecordId>, StoreError> {
        let Some(key) = key else {
            return Ok(None);
        };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INGEST_KEYS)?;
        let Some(id) = table.get(key)? else {
            return Ok(None);
        };
        // A record removed since is not there to answer: the put stores it again.
        if txn.open_table(RECORDS)?.get(id.value())?.is_none() {
            return Ok(None);
        }
        let id = id
            .value()
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("ingest key {key} names no record id")))?;
        Ok(Some(id))
    }

    /// Reads `input` in chunks and seals, hashes and writes them on worker threads.
    /// Returns the chunk CIDs in order, the plaintext size and the shard dirs touched.
    fn seal_and_store(
        &self,
        input: &mut (dyn Read + Send),
        cipher: &RecordCipher,
        chunk_size: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(Vec<Cid>, u64, ContentType, BTreeSet<PathBuf>), StoreError> {
        // Twice the cores: a worker waiting in fsync leaves its core to another.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = (2 * cores).clamp(2, 16);
        // A fixed pool of buffers bounds memory to (workers * 2 + 2) chunks.
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..workers * 2 + 2 {
            free_tx
                .send(Vec::with_capacity(chunk_size + TAG_LEN))
                .expect("receiver alive");
        }
        let (job_tx, job_rx) = mpsc::channel::<(u64, Vec<u8>, bool)>();
        let job_rx = Mutex::new(job_rx);
        let (done_tx, done_rx) = mpsc::channel::<Result<SealedChunk, StoreError>>();
        let failed = AtomicBool::new(false);

        let read_result = std::thread::scope(|scope| {
            for _ in 0..workers {
                let (free_tx, done_tx) = (free_tx.clone(), done_tx.clone());
                let (job_rx, failed) = (&job_rx, &failed);
                scope.spawn(move || loop {
                    let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((index, mut buf, last)) = job else {
                        break;
                    };
                    let result = cipher
                        .seal_chunk(index, last, &mut buf)
                        .map_err(StoreError::from)
                        .and_then(|()| {
                            let cid = cid_of(Codec::Raw, &buf);
                            let shard = self.blocks.put(&cid, &buf)?;
                            Ok(SealedChunk { index, cid, shard })
                        });
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    buf.clear();
                    let _ = free_tx.send(buf);
                    if done_tx.send(result).is_err() {
                        break;
                    }
                });
            }
            drop(done_tx);
            let result = read_chunks(input, chunk_size, &free_rx, &failed, progress, |job| {
                job_tx.send(job).map_err(|_| {
                    StoreError::Corrupt("encryption workers stopped unexpectedly".into())
                })
            });
            drop(job_tx);
            result
        });

        let mut cids: Vec<Option<Cid>> = Vec::new();
        let mut shards = BTreeSet::new();
        let mut first_error = None;
        for done in done_rx {
            match done {
                Ok(c) => {
                    let i = c.index as usize;
                    if cids.len() <= i {
                        cids.resize(i + 1, None);
                    }
                    cids[i] = Some(c.cid);
                    shards.insert(c.shard);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // A worker's error (e.g. disk full) explains a stopped read better than the read.
        if let Some(e) = first_error {
            return Err(e);
        }
        let (size, sniffed) = read_result?;
        let chunks = cids
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| StoreError::Corrupt("a chunk was lost during ingest".into()))?;
        Ok((chunks, size, sniffed, shards))
    }

    /// The decoded manifest of a stored record.
    pub fn manifest(&self, id: &RecordId) -> Result<Manifest, StoreError> {
        let bytes = self.blocks.get(id.cid()).map_err(|e| match e {
            StoreError::MissingBlock { .. } if !self.has_record(id).unwrap_or(true) => {
                StoreError::UnknownRecord(id.to_string())
            }
            other => other,
        })?;
        Ok(Manifest::decode(&bytes)?)
    }

    /// The metadata of one of this node's records (opened with the index key). A record
    /// held for another institution is [`StoreError::HeldForOther`].
    pub fn meta(&self, id: &RecordId) -> Result<RecordMeta, StoreError> {
        let txn = self.db.begin_read()?;
        if let Some(entry) = index::get_entry(&txn.open_table(RECORDS)?, id)? {
            return entry.open(self.index_key()?, id);
        }
        match crate::replicas::get_held(&txn.open_table(HELD)?, id)? {
            Some(held) => Err(StoreError::HeldForOther {
                record: id.to_string(),
                owner: held.owner,
            }),
            None => Err(StoreError::UnknownRecord(id.to_string())),
        }
    }

    /// Opens a record for reading: verifies the manifest signature against
    /// `owner_cert` and unwraps the data key. The decryptor is needed only for this
    /// step, so callers sharing one can release it before the (long) copy.
    pub fn open_record(
        &self,
        id: &RecordId,
        owner_cert: &Certificate,
        decryptor: &mut UnlockedDecryptor,
    ) -> Result<OpenRecord<'_>, StoreError> {
        let lease = self.lease(id)?;
        let manifest = self.manifest(id)?;
        owner_cert.verify_manifest(&manifest)?;
        let key = decryptor.unwrap_key(&manifest.body)?;
        self.opened(lease, *id, manifest, &key)
    }

    /// Opens a record with a data key obtained elsewhere: a grantee's, released by the
    /// record's owner and unwrapped with the grantee's key. The manifest is the block
    /// the record id names (content addressing vouches for it) and every chunk is
    /// authenticated under the key, so no owner certificate is needed here.
    pub fn open_with_key(
        &self,
        id: &RecordId,
        key: &DataKey,
    ) -> Result<OpenRecord<'_>, StoreError> {
        let lease = self.lease(id)?;
        let manifest = self.manifest(id)?;
        self.opened(lease, *id, manifest, key)
    }

    /// The record of `manifest` ready to stream under `key`, its metadata opened.
    fn opened<'a>(
        &'a self,
        lease: crate::leases::ReadLease<'a>,
        id: RecordId,
        manifest: Manifest,
        key: &DataKey,
    ) -> Result<OpenRecord<'a>, StoreError> {
        let cipher = RecordCipher::new(key, &manifest.body.envelope)?;
        let meta = cipher.open_meta(&manifest.body.meta, &manifest.body.owner)?;
        Ok(OpenRecord {
            store: self,
            id,
            manifest,
            meta,
            cipher,
            _lease: lease,
        })
    }

    /// Decrypts a record into `out` ([`Store::open_record`] then [`OpenRecord::copy_to`]).
    pub fn read_record(
        &self,
        id: &RecordId,
        owner_cert: &Certificate,
        decryptor: &mut UnlockedDecryptor,
        out: &mut dyn Write,
        actor: &str,
        progress: ReadProgress<'_>,
    ) -> Result<u64, StoreError> {
        self.open_record(id, owner_cert, decryptor)?
            .copy_to(out, actor, progress)
    }

    /// This node's records matching `query`, oldest first (at most `query.limit` of
    /// them). Records held for other institutions are not among them.
    pub fn list(&self, query: &RecordQuery) -> Result<Vec<(RecordId, RecordMeta)>, StoreError> {
        let mut out = Vec::new();
        self.scan_records(query, |id, meta| {
            out.push((id, meta));
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Hands each record matching `query` to `visit`, oldest first, as the index is
    /// read: nothing is collected, and the scan stops once `query.limit` records
    /// matched (0: no limit) or `visit` returns [`ControlFlow::Break`].
    ///
    /// The scan reads one snapshot of the index (a read transaction, which does not
    /// block writers), so `visit` may be slow, e.g. print to a pipe.
    pub fn scan_records(
        &self,
        query: &RecordQuery,
        mut visit: impl FnMut(RecordId, RecordMeta) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let key = self.index_key()?;
        let txn = self.db.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let lo = query.since.map_or(0, |t| index::time_key(&t));
        let hi = query.until.map_or(u64::MAX, |t| index::time_key(&t));
        let mut matched = 0usize;
        // One index entry: its metadata is looked up and filtered right away, so a
        // limited scan reads only as far as its last match.
        let mut on_entry = |entry_key: &str| -> Result<ControlFlow<()>, StoreError> {
            #[cfg(test)]
            INDEX_ENTRIES_READ.with(|n| n.set(n.get() + 1));
            let id: RecordId = entry_key.parse()?;
            let meta = index::get_entry(&records, &id)?
                .ok_or_else(|| StoreError::Corrupt(format!("index names unknown record {id}")))?
                .open(key, &id)?;
            if !query.matches(&meta) {
                return Ok(ControlFlow::Continue(()));
            }
            matched += 1;
            if visit(id, meta).is_break() || (query.limit != 0 && matched >= query.limit) {
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        };
        // Scan the most selective index the query allows.
        if let Some(p) = &query.patient {
            let tag = index::patient_tag(key, p);
            scan_index(&txn.open_table(BY_PATIENT)?, &tag, lo, hi, &mut on_entry)?;
        } else if let Some(t) = &query.content_type {
            let tag = index::type_tag(key, t);
            scan_index(&txn.open_table(BY_TYPE)?, &tag, lo, hi, &mut on_entry)?;
        } else if let Some(o) = &query.owner {
            scan_index(
                &txn.open_table(BY_OWNER)?,
                o.as_str(),
                lo,
                hi,
                &mut on_entry,
            )?;
        } else {
            for item in txn.open_table(BY_TIME)?.range((lo, "")..(hi, ""))? {
                let (key, _) = item?;
                if on_entry(key.value().1)?.is_break() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Removes the local copy of a record: its index entries, and every block of it no
    /// other record references.
    ///
    /// Of concurrent removals of one record exactly one succeeds (and deletes the
    /// blocks); the others fail with [`StoreError::UnknownRecord`], as a removal of a
    /// record that is already gone does.
    pub fn remove_record(&self, id: &RecordId, actor: &str) -> Result<RemoveReport, StoreError> {
        // Metadata, block list and reference counts are read and changed in one write
        // transaction: redb serializes those, so a second removal sees the record gone
        // instead of releasing the same references again.
        let txn = self.db.begin_write()?;
        let entry = index::get_entry(&txn.open_table(RECORDS)?, id)?;
        let held = crate::replicas::get_held(&txn.open_table(HELD)?, id)?.is_some();
        if entry.is_none() && !held {
            txn.abort()?;
            return Err(StoreError::UnknownRecord(id.to_string()));
        }
        // A missing or corrupt manifest must not make a record unremovable.
        let mut blocks = self
            .blocks
            .get(id.cid())
            .ok()
            .and_then(|bytes| Manifest::decode(&bytes).ok())
            .map(|m| m.body.chunks)
            .unwrap_or_default();
        blocks.push(*id.cid());
        let unreferenced = index::remove_record(&txn, id, entry.as_ref(), &blocks)?;
        audit::append(
            &mut txn.open_table(AUDIT)?,
            AuditEvent {
                action: AuditAction::RecordRemove,
                actor: actor.to_string(),
                subject: id.to_string(),
                detail: BTreeMap::new(),
            },
        )?;
        txn.commit()?;
        let (blocks_removed, bytes_freed) = self.release_blocks(id, unreferenced)?;
        let report = RemoveReport {
            blocks_removed,
            bytes_freed,
        };
        tracing::info!(record = %id, blocks = report.blocks_removed, "record removed");
        Ok(report)
    }

    /// Deletes blocks no record references and temp files left by interrupted writes,
    /// whatever their age (a [`Store::sweep_orphans`] with no age limit), and audits
    /// that it ran.
    ///
    /// Blocks of a fetch still in progress are unreferenced too: run it when none is.
    pub fn gc(&self, actor: &str) -> Result<GcReport, StoreError> {
        let guard = self.gc_guard.write().unwrap_or_else(|e| e.into_inner());
        self.collect_garbage(Duration::ZERO, actor, true, guard)
    }

    /// Deletes unreferenced blocks and temp files last modified more than `older_than`
    /// ago: what uploads or fetches killed mid-way left. Blocks of an upload in
    /// progress are safe (it holds off garbage collection until it commits), and so are
    /// blocks of a fetch in progress, or of a recent interrupted fetch a restart
    /// resumes, as long as `older_than` exceeds the time since their last block was
    /// written. Audited like [`Store::gc`], but only when it removed something.
    ///
    /// Returns `None`, having done nothing, while an upload or import is in progress:
    /// waiting for it would hold every new upload behind the sweep (and a slow client
    /// can keep an upload open for long). The next sweep tries again.
    pub fn sweep_orphans(
        &self,
        older_than: Duration,
        actor: &str,
    ) -> Result<Option<GcReport>, StoreError> {
        let Ok(guard) = self.gc_guard.try_write() else {
            return Ok(None);
        };
        self.collect_garbage(older_than, actor, false, guard)
            .map(Some)
    }

    /// The one garbage collection: deletes unreferenced blocks and temp files at least
    /// `min_age` old (all of them for zero).
    fn collect_garbage(
        &self,
        min_age: Duration,
        actor: &str,
        always_audit: bool,
        // Held exclusively: no ingest or import has unreferenced blocks in flight.
        _exclusive: std::sync::RwLockWriteGuard<'_, ()>,
    ) -> Result<GcReport, StoreError> {
        let referenced = self.referenced_blocks()?;
        let scan = self.blocks.scan()?;
        let mut report = GcReport {
            blocks_removed: 0,
            temp_files_removed: 0,
            bytes_freed: 0,
        };
        for cid in scan.blocks.iter().filter(|c| !referenced.contains(*c)) {
            // With no age limit there is nothing to stat: every orphan goes.
            if !min_age.is_zero() {
                match self.blocks.age(cid)? {
                    Some(age) if age >= min_age => {}
                    _ => continue,
                }
            }
            report.bytes_freed += self.blocks.remove(cid)?;
            report.blocks_removed += 1;
        }
        for path in scan.stray.iter().filter(|p| is_temp_file(p)) {
            let meta = match std::fs::metadata(path) {
                Ok(m) => m,
                // Renamed into place or removed since the scan.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("reading {}", path.display()))(e)),
            };
            if !min_age.is_zero() && file_age(&meta) < min_age {
                continue;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("removing {}", path.display()))(e)),
            }
            report.temp_files_removed += 1;
            report.bytes_freed += meta.len();
        }
        let removed = report.blocks_removed + report.temp_files_removed;
        if always_audit || removed > 0 {
            let mut detail: BTreeMap<String, String> = BTreeMap::from([
                ("blocks_removed".into(), report.blocks_removed.to_string()),
                (
                    "temp_files_removed".into(),
                    report.temp_files_removed.to_string(),
                ),
                ("bytes_freed".into(), report.bytes_freed.to_string()),
            ]);
            if !min_age.is_zero() {
                detail.insert("older_than_secs".into(), min_age.as_secs().to_string());
            }
            self.audit(AuditEvent {
                action: AuditAction::GarbageCollect,
                actor: actor.to_string(),
                subject: "blocks".into(),
                detail,
            })?;
        }
        if removed > 0 {
            tracing::info!(
                blocks = report.blocks_removed,
                temp_files = report.temp_files_removed,
                bytes = report.bytes_freed,
                older_than_secs = min_age.as_secs(),
                "unreferenced blocks and temp files removed"
            );
        }
        Ok(report)
    }

    /// Checks that every indexed record's blocks are present and intact and that the
    /// audit log verifies. Changes nothing.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let mut report = CheckReport {
            records: 0,
            blocks_checked: 0,
            unreferenced_blocks: 0,
            problems: Vec::new(),
        };
        for (id, owner) in self.owners()? {
            report.records += 1;
            let manifest = match self.manifest(&id) {
                Ok(m) => m,
                Err(e) => {
                    report.problems.push(format!("record {id}: {e}"));
                    continue;
                }
            };
            report.blocks_checked += 1;
            if manifest.body.owner.as_str() != owner {
                report.problems.push(format!(
                    "record {id}: the index names owner {owner}, its manifest {}",
                    manifest.body.owner
                ));
            }
            for cid in &manifest.body.chunks {
                report.blocks_checked += 1;
                if let Err(e) = self.blocks.get(cid) {
                    report.problems.push(format!("record {id}: {e}"));
                }
            }
        }
        let referenced = self.referenced_blocks()?;
        report.unreferenced_blocks = self
            .blocks
            .scan()?
            .blocks
            .iter()
            .filter(|c| !referenced.contains(*c))
            .count() as u64;
        if let Err(broken) = self.audit_verify()? {
            report.problems.push(broken.to_string());
        }
        Ok(report)
    }

    /// Every record stored here, own and held, with the owner the index names (no key
    /// needed: owners are public in manifests).
    fn owners(&self) -> Result<Vec<(RecordId, String)>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in txn.open_table(RECORDS)?.iter()? {
            let (k, v) = item?;
            let id: RecordId = k.value().parse()?;
            out.push((id, index::parse_entry(&id, v.value())?.owner));
        }
        for item in txn.open_table(HELD)?.iter()? {
            let (k, v) = item?;
            let id: RecordId = k.value().parse()?;
            let held = crate::replicas::parse_held(&id, v.value())?;
            out.push((id, held.owner));
        }
        Ok(out)
    }

    /// The id of every record stored here, own and held (for announcing them).
    pub fn record_ids(&self) -> Result<Vec<RecordId>, StoreError> {
        Ok(self.owners()?.into_iter().map(|(id, _)| id).collect())
    }

    fn referenced_blocks(&self) -> Result<HashSet<Cid>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut set = HashSet::new();
        for item in txn.open_table(REFS)?.iter()? {
            let (k, _) = item?;
            let cid: Cid = k
                .value()
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("bad CID in block references: {e}")))?;
            set.insert(cid);
        }
        Ok(set)
    }
}

/// Reads the entries of a secondary index `(key, created, record id)` for `key` with
/// `created` in `lo..hi`, handing each record id to `on_entry` until it breaks.
fn scan_index(
    table: &ReadOnlyTable<(&'static str, u64, &'static str), ()>,
    key: &str,
    lo: u64,
    hi: u64,
    on_entry: &mut impl FnMut(&str) -> Result<ControlFlow<()>, StoreError>,
) -> Result<(), StoreError> {
    for item in table.range((key, lo, "")..(key, hi, ""))? {
        let (entry, _) = item?;
        if on_entry(entry.value().2)?.is_break() {
            break;
        }
    }
    Ok(())
}

fn is_temp_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".tmp-"))
}

/// Reads `input` into chunks of `chunk_size`, handing each to `send` with its index and
/// whether it is the last; looks one chunk ahead so the last flag is known without the
/// input's length. An empty input is one empty last chunk. Returns the bytes read and
/// the content type sniffed from the first bytes.
fn read_chunks(
    input: &mut (dyn Read + Send),
    chunk_size: usize,
    pool: &mpsc::Receiver<Vec<u8>>,
    failed: &AtomicBool,
    progress: &(dyn Fn(u64) + Sync),
    mut send: impl FnMut((u64, Vec<u8>, bool)) -> Result<(), StoreError>,
) -> Result<(u64, ContentType), StoreError> {
    let take = || {
        pool.recv()
            .map_err(|_| StoreError::Corrupt("encryption workers stopped unexpectedly".into()))
    };
    let mut total = 0u64;
    let mut index = 0u64;
    let mut current = take()?;
    fill(input, &mut current, chunk_size)?;
    let sniffed = ContentType::sniff(&current[..current.len().min(SNIFF_LEN)]);
    loop {
        total += current.len() as u64;
        progress(total);
        if failed.load(Ordering::Relaxed) {
            return Err(StoreError::Corrupt(
                "ingest stopped after a write error".into(),
            ));
        }
        if current.len() < chunk_size {
            return send((index, current, true)).map(|()| (total, sniffed));
        }
        let mut next = take()?;
        fill(input, &mut next, chunk_size)?;
        if next.is_empty() {
            return send((index, current, true)).map(|()| (total, sniffed));
        }
        send((index, current, false))?;
        current = next;
        index += 1;
    }
}

/// Fills `buf` up to `len` bytes or the end of input.
fn fill(input: &mut (dyn Read + Send), buf: &mut Vec<u8>, len: usize) -> Result<(), StoreError> {
    input
        .take((len - buf.len()) as u64)
        .read_to_end(buf)
        .map(drop)
        .map_err(StoreError::io("reading the input"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose index holds `n` records one second apart, alternately HL7 and
    /// DICOM (index entries only: no blocks, which listing never reads).
    fn store_with_index_entries(n: u64) -> (tempfile::TempDir, Store, Vec<RecordId>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.unlock_index(medmesh_crypto::IndexKey::new(&DataKey::generate().unwrap()));
        let owner = InstitutionId::new(&"AB".repeat(20)).unwrap();
        let mut ids = Vec::new();
        let txn = store.db.begin_write().unwrap();
        for i in 0..n {
            let id = RecordId::from_manifest_cid(cid_of(Codec::DagCbor, &i.to_le_bytes())).unwrap();
            let content_type = if i % 2 == 0 {
                ContentType::HL7_V2
            } else {
                ContentType::DICOM
            };
            let meta = RecordMeta {
                content_type: content_type.parse().unwrap(),
                size: i,
                created: OffsetDateTime::UNIX_EPOCH
                    + time::Duration::seconds(1_700_000_000 + i as i64),
                owner: owner.clone(),
                patient: None,
            };
            index::insert_record(&txn, store.index_key().unwrap(), &id, &meta, &[]).unwrap();
            ids.push(id);
        }
        txn.commit().unwrap();
        (dir, store, ids)
    }

    /// Runs `f` and counts the index entries it read on this thread.
    fn entries_read<T>(f: impl FnOnce() -> T) -> (T, u64) {
        INDEX_ENTRIES_READ.with(|n| n.set(0));
        let out = f();
        (out, INDEX_ENTRIES_READ.with(|n| n.get()))
    }

    fn ids_of(records: &[(RecordId, RecordMeta)]) -> Vec<RecordId> {
        records.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn a_limited_list_returns_the_oldest_and_reads_no_further() {
        let (_dir, store, ids) = store_with_index_entries(3000);
        let list = |query: RecordQuery| entries_read(|| store.list(&query).unwrap());

        let (first, read) = list(RecordQuery {
            limit: 1,
            ..Default::default()
        });
        assert_eq!((ids_of(&first), read), (ids[..1].to_vec(), 1));

        let (five, read) = list(RecordQuery {
            limit: 5,
            ..Default::default()
        });
        assert_eq!((ids_of(&five), read), (ids[..5].to_vec(), 5));

        // Through a secondary index (type), and through the owner index.
        let (dicom, read) = list(RecordQuery {
            content_type: Some(ContentType::DICOM.parse().unwrap()),
            limit: 3,
            ..Default::default()
        });
        assert_eq!((ids_of(&dicom), read), (vec![ids[1], ids[3], ids[5]], 3));
        let (owned, read) = list(RecordQuery {
            owner: Some(InstitutionId::new(&"AB".repeat(20)).unwrap()),
            limit: 2,
            ..Default::default()
        });
        assert_eq!((ids_of(&owned), read), (ids[..2].to_vec(), 2));

        // A time window starts the scan at its first record.
        let since = store.meta(&ids[10]).unwrap().created;
        let (window, read) = list(RecordQuery {
            since: Some(since),
            limit: 2,
            ..Default::default()
        });
        assert_eq!((ids_of(&window), read), (ids[10..12].to_vec(), 2));

        // Without a limit, everything, oldest first.
        let (all, read) = list(RecordQuery::default());
        assert_eq!((ids_of(&all), read), (ids.clone(), 3000));
    }

    #[test]
    fn scan_records_stops_when_the_visitor_breaks() {
        let (_dir, store, ids) = store_with_index_entries(100);
        let mut seen = Vec::new();
        let ((), read) = entries_read(|| {
            store
                .scan_records(&RecordQuery::default(), |id, meta| {
                    assert_eq!(meta.size, seen.len() as u64);
                    seen.push(id);
                    if seen.len() == 4 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .unwrap()
        });
        assert_eq!((seen, read), (ids[..4].to_vec(), 4));
    }
}
