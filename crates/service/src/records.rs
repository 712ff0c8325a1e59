//! Records: ingest (then announce), open for reading, metadata, search, removal, and
//! the store's housekeeping (gc, check), tokens and the audit log.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use medmesh_core::{ContentType, KeyWrap, Manifest, PatientRef, RecordId, RecordMeta};
use medmesh_crypto::UnlockedDecryptor;
use medmesh_store::{
    ApiToken, AuditAction, AuditBreak, AuditEntry, AuditEvent, AuditSummary, CheckReport, GcReport,
    OpenRecord, PutRequest, RecordQuery, RemoveReport, Store, StoreError, TokenScope,
};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

pub use medmesh_net::Progress;

use crate::error::{blocking, ServiceError};
use crate::events::NodeEvent;
use crate::services::NodeServices;

/// What to store with a new record.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Media type; sniffed from the first bytes when `None`.
    pub content_type: Option<ContentType>,
    /// The patient reference the record is about.
    pub patient: Option<PatientRef>,
    /// Who is writing, as audited (`token:…`, `device:…`, `cli`).
    pub actor: String,
}

/// A record id with its metadata.
#[derive(Debug, Clone)]
pub struct RecordSummary {
    /// The record id.
    pub id: RecordId,
    /// Its metadata.
    pub meta: RecordMeta,
}

/// A record opened for reading: its verified metadata and its plaintext as a stream of
/// chunks. A chunk that fails verification ends the stream with an error, so a reader
/// that got fewer than `meta.size` bytes must treat the record as unreadable.
pub struct OpenedRecord {
    /// The record's metadata, from its verified manifest.
    pub meta: RecordMeta,
    /// The plaintext, chunk by chunk.
    pub body: mpsc::Receiver<io::Result<Bytes>>,
}

/// Plaintext chunks buffered between the reading thread and a slow consumer.
const READ_AHEAD: usize = 4;

impl NodeServices {
    /// Encrypts and stores a record read from `input` (streamed: memory stays a few
    /// chunks whatever its size), then announces it to the network in the background.
    pub async fn ingest(
        &self,
        input: Box<dyn Read + Send>,
        request: Ingest,
    ) -> Result<RecordSummary, ServiceError> {
        self.ingest_with_progress(input, request, Arc::new(|_| {}))
            .await
    }

    /// [`ingest`](Self::ingest), calling `progress` with the plaintext bytes read so far.
    pub async fn ingest_with_progress(
        &self,
        input: Box<dyn Read + Send>,
        request: Ingest,
        progress: Progress,
    ) -> Result<RecordSummary, ServiceError> {
        self.ingest_keyed(input, request, None, progress).await
    }

    /// [`ingest_with_progress`](Self::ingest_with_progress), idempotent under
    /// `idempotency_key` when one is given (see `PutRequest::idempotency_key`): a
    /// repeated put answers the first record.
    pub(crate) async fn ingest_keyed(
        &self,
        mut input: Box<dyn Read + Send>,
        request: Ingest,
        idempotency_key: Option<String>,
        progress: Progress,
    ) -> Result<RecordSummary, ServiceError> {
        let keys = self.keys()?.clone();
        // An ingest holds a blocking thread for as long as its input trickles in.
        let permit = self.ingests.clone().try_acquire_owned().map_err(|_| {
            ServiceError::Busy(format!(
                "{} records are being stored already; retry shortly",
                self.settings.max_ingests
            ))
        })?;
        let store = self.store.clone();
        let put = PutRequest {
            content_type: request.content_type,
            patient: request.patient,
            chunk_size: self.settings.chunk_size,
            actor: request.actor,
            idempotency_key,
        };
        let (id, meta) = blocking("record ingest", move || {
            let id = store.put_record(
                &mut input,
                &put,
                &keys.signer,
                &keys.certificate,
                &[],
                &|n| progress(n),
            )?;
            drop(permit);
            Ok((id, store.meta(&id)?))
        })
        .await?;
        self.announce(id);
        self.events.publish(NodeEvent::RecordStored {
            record: id.to_string(),
            size: meta.size,
        });
        Ok(RecordSummary { id, meta })
    }

    /// Announces that this node provides `id`, in the background (the caller does not
    /// wait on peers); a failure is a warning, counted and retried.
    pub(crate) fn announce(&self, id: RecordId) {
        let Some(network) = self.network().cloned() else {
            return;
        };
        let announcer = self.announcer.clone();
        tokio::spawn(async move {
            let _ = announcer.announce(&network, id).await;
        });
    }

    /// Opens record `id` for reading as `actor` (fetching it from peers first when this
    /// node lacks it and the network is on). The signature and key are checked before
    /// this returns; chunks are verified as they stream, and the read is audited once
    /// the last one is out.
    pub async fn open_record(
        &self,
        id: RecordId,
        actor: &str,
    ) -> Result<OpenedRecord, ServiceError> {
        let keys = self.keys()?.clone();
        self.ensure_local(&id).await?;
        self.stream_record(id, actor, move |store| {
            let mut decryptor = keys.decryptor.lock().unwrap_or_else(|e| e.into_inner());
            store.open_record(&id, &keys.certificate, &mut decryptor)
        })
        .await
    }

    /// Opens record `id` of another institution as a grantee: `key_wrap` is its data
    /// key as the owner released it, which `decryptor` (the grantee's key) unwraps.
    /// Fetched from peers first when missing, streamed and audited like
    /// [`open_record`](Self::open_record).
    pub async fn open_released(
        &self,
        id: RecordId,
        key_wrap: KeyWrap,
        mut decryptor: UnlockedDecryptor,
        actor: &str,
    ) -> Result<OpenedRecord, ServiceError> {
        self.ensure_local(&id).await?;
        self.stream_record(id, actor, move |store| {
            let key = decryptor.unwrap(&key_wrap)?;
            store.open_with_key(&id, &key)
        })
        .await
    }

    /// Opens a record with `open` on a blocking thread and streams its plaintext.
    async fn stream_record(
        &self,
        id: RecordId,
        actor: &str,
        open: impl for<'a> FnOnce(&'a Store) -> Result<OpenRecord<'a>, StoreError> + Send + 'static,
    ) -> Result<OpenedRecord, ServiceError> {
        // Each read holds a blocking thread while its consumer reads: bound them, so
        // slow readers cannot take the pool every other operation needs.
        let permit = self.reads.clone().try_acquire_owned().map_err(|_| {
            ServiceError::Busy(format!(
                "{} records are being read already; retry shortly",
                self.settings.max_reads
            ))
        })?;
        let (ready_tx, ready_rx) = oneshot::channel::<Result<RecordMeta, ServiceError>>();
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(READ_AHEAD);
        let (store, actor) = (self.store.clone(), actor.to_string());
        tokio::task::spawn_blocking(move || {
            let record = match open(&store) {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            if ready_tx.send(Ok(record.meta().clone())).is_err() {
                return;
            }
            let mut out = ChannelWriter {
                tx: tx.clone(),
                stall: READ_STALL,
                sent: 0,
            };
            let result = record.copy_to(&mut out, &actor, &|_| {});
            if result.is_err() && out.sent > 0 {
                // Plaintext left the node: a read that stopped early is a read too.
                let entry = AuditEvent {
                    action: AuditAction::RecordRead,
                    actor: actor.clone(),
                    subject: id.to_string(),
                    detail: BTreeMap::from([
                        ("size".to_string(), out.sent.to_string()),
                        ("complete".to_string(), "false".to_string()),
                    ]),
                };
                if let Err(e) = store.audit(entry) {
                    tracing::error!(record = %id, error = %e, "could not audit a partial read");
                }
            }
            match result {
                Ok(_) => {}
                // The consumer went away or stopped reading: its choice, not a fault.
                Err(StoreError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::TimedOut
                    ) =>
                {
                    tracing::debug!(record = %id, error = %source, "read ended by the reader");
                }
                Err(e) => {
                    tracing::error!(record = %id, error = %e, "read aborted");
                    let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                }
            }
            drop(permit);
        });
        let meta = match ready_rx.await {
            Ok(opened) => opened?,
            // The reading thread died before answering (a panic): the node's fault.
            Err(_) => {
                return Err(ServiceError::Internal(
                    "the record reader stopped before opening the record",
                ))
            }
        };
        Ok(OpenedRecord { meta, body: rx })
    }

    /// Whether record `id` is stored here.
    pub async fn has_record(&self, id: RecordId) -> Result<bool, ServiceError> {
        let store = self.store.clone();
        blocking("record lookup", move || Ok(store.has_record(&id)?)).await
    }

    /// A stored record's metadata and manifest. A record held for another institution
    /// shows its metadata only if this node's key can open it (another site of the
    /// same institution); otherwise [`StoreError::HeldForOther`].
    pub async fn record(&self, id: RecordId) -> Result<(RecordMeta, Manifest), ServiceError> {
        let (store, keys) = (self.store.clone(), self.keys.clone());
        blocking("record lookup", move || {
            let manifest = store.manifest(&id)?;
            let meta = match (store.meta(&id), keys) {
                (Err(StoreError::HeldForOther { .. }), Some(keys))
                    if manifest.body.key_wrap_for(&keys.certificate.id()).is_some() =>
                {
                    let mut decryptor = keys.decryptor.lock().unwrap_or_else(|e| e.into_inner());
                    store
                        .open_record(&id, &keys.certificate, &mut decryptor)?
                        .meta()
                        .clone()
                }
                (meta, _) => meta?,
            };
            Ok((meta, manifest))
        })
        .await
    }

    /// Up to `limit` records matching `query`, oldest first, and the `since` of the
    /// next page when more match.
    pub async fn search(
        &self,
        mut query: RecordQuery,
        limit: usize,
    ) -> Result<(Vec<RecordSummary>, Option<OffsetDateTime>), ServiceError> {
        if limit == 0 {
            return Err(ServiceError::InvalidInput(
                "a page holds at least one record".into(),
            ));
        }
        // One more than asked tells whether another page follows.
        query.limit = limit + 1;
        let store = self.store.clone();
        let mut found = blocking("record search", move || Ok(store.list(&query)?)).await?;
        let more = found.len() > limit;
        found.truncate(limit);
        let next_since = more
            .then(|| {
                found
                    .last()
                    .map(|(_, m)| m.created + time::Duration::nanoseconds(1))
            })
            .flatten();
        Ok((
            found
                .into_iter()
                .map(|(id, meta)| RecordSummary { id, meta })
                .collect(),
            next_since,
        ))
    }

    /// Calls `visit` with every record matching `query` (up to `query.limit`, 0 for
    /// all), oldest first, as the index is read: memory stays flat however many match.
    /// `visit` runs on a blocking thread and may stop the scan.
    pub async fn scan(
        &self,
        query: RecordQuery,
        mut visit: impl FnMut(RecordSummary) -> ControlFlow<()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        let store = self.store.clone();
        blocking("record scan", move || {
            Ok(store.scan_records(&query, |id, meta| visit(RecordSummary { id, meta }))?)
        })
        .await
    }

    /// Removes the local copy of record `id` (its blocks no other record uses).
    pub async fn remove(&self, id: RecordId, actor: &str) -> Result<RemoveReport, ServiceError> {
        let (store, actor) = (self.store.clone(), actor.to_string());
        let report = blocking("record removal", move || {
            Ok(store.remove_record(&id, &actor)?)
        })
        .await?;
        self.events.publish(NodeEvent::RecordRemoved {
            record: id.to_string(),
        });
        Ok(report)
    }

    /// Deletes blocks no record references.
    pub async fn gc(&self, actor: &str) -> Result<GcReport, ServiceError> {
        let (store, actor) = (self.store.clone(), actor.to_string());
        blocking("garbage collection", move || Ok(store.gc(&actor)?)).await
    }

    /// Re-hashes every block and verifies the audit log (reads everything).
    pub async fn check(&self) -> Result<CheckReport, ServiceError> {
        let store = self.store.clone();
        blocking("consistency check", move || Ok(store.check()?)).await
    }

    /// Up to `limit` audit entries from position `from`.
    pub async fn audit_page(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, ServiceError> {
        let store = self.store.clone();
        blocking("audit log", move || Ok(store.audit_page(from, limit)?)).await
    }

    /// Walks the audit chain; `Ok(Err(..))` names the first bad entry.
    pub async fn audit_verify(&self) -> Result<Result<AuditSummary, AuditBreak>, ServiceError> {
        let store = self.store.clone();
        blocking("audit verification", move || Ok(store.audit_verify()?)).await
    }

    /// Creates an API token; returns it and its secret (shown once).
    pub async fn create_token(
        &self,
        name: String,
        scope: TokenScope,
        actor: &str,
    ) -> Result<(ApiToken, String), ServiceError> {
        let (store, actor) = (self.store.clone(), actor.to_string());
        blocking("token creation", move || {
            Ok(store.create_token(&name, scope, &actor)?)
        })
        .await
    }

    /// Every API token (without secrets).
    pub async fn tokens(&self) -> Result<Vec<ApiToken>, ServiceError> {
        let store = self.store.clone();
        blocking("token list", move || Ok(store.list_tokens()?)).await
    }

    /// Revokes token `id`.
    pub async fn revoke_token(&self, id: String, actor: &str) -> Result<(), ServiceError> {
        let (store, actor) = (self.store.clone(), actor.to_string());
        blocking("token revocation", move || {
            Ok(store.revoke_token(&id, &actor)?)
        })
        .await
    }

    /// The live token a bearer secret belongs to, if any.
    pub async fn verify_token(&self, secret: String) -> Result<Option<ApiToken>, ServiceError> {
        let store = self.store.clone();
        blocking("token check", move || Ok(store.verify_token(&secret)?)).await
    }
}

/// How long a reader may leave a chunk unread before the read is given up.
const READ_STALL: Duration = Duration::from_secs(60);

/// A blocking `Write` that hands plaintext to the async consumer, giving up when the
/// consumer leaves a chunk unread for `stall` (a client that stopped reading).
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    stall: Duration,
    /// Plaintext bytes handed over so far.
    sent: u64,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let chunk = Ok(Bytes::copy_from_slice(buf));
        let sent = tokio::runtime::Handle::current()
            .block_on(tokio::time::timeout(self.stall, self.tx.send(chunk)));
        match sent {
            Ok(Ok(())) => {
                self.sent += buf.len() as u64;
                Ok(buf.len())
            }
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the reader went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the reader read nothing for {} s", self.stall.as_secs()),
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
