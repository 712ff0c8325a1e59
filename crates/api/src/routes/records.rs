//! `/v1/records`: streaming upload and download, metadata, search, delete.

use std::io::{self, Read, Write};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use medmesh_core::{ContentType, PatientRef, RecordId, RecordMeta};
use medmesh_store::{PutRequest, RecordQuery, TokenScope};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use utoipa::{IntoParams, ToSchema};

use super::{blocking, ApiQuery};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::state::{lock, AppState};

/// A record and its metadata.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordEntry {
    /// The record id (CID of its manifest).
    pub id: RecordId,
    /// Its metadata.
    pub meta: RecordMeta,
}

/// One page of a record search.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordPage {
    /// Records, oldest first.
    pub records: Vec<RecordEntry>,
    /// Pass as `since` to get the next page; absent on the last page.
    pub next_since: Option<String>,
}

/// A record's metadata and manifest summary.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordInfo {
    /// The record id.
    pub id: RecordId,
    /// Its metadata.
    pub meta: RecordMeta,
    /// Number of encrypted chunks.
    pub chunks: usize,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Fingerprints of the certificates the data key is wrapped for.
    pub recipients: Vec<String>,
    /// Fingerprint of the certificate that signed the manifest.
    pub signer: String,
}

/// What deleting a record freed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    /// Blocks deleted.
    pub blocks_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// Upload options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// The patient reference (MRN or pseudonym) the record is about.
    pub patient: Option<String>,
}

/// Search filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Only records about this patient reference.
    pub patient: Option<String>,
    /// Only records of this media type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub content_type: Option<String>,
    /// Only records created at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only records created before this RFC 3339 time.
    pub until: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<usize>,
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

fn parse_time(name: &str, v: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    v.map(|v| {
        OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
            ApiError::bad_request(format!(
                "`{name}` must be an RFC 3339 time such as 2026-01-31T00:00:00Z"
            ))
        })
    })
    .transpose()
}

fn parse_id(id: &str) -> Result<RecordId, ApiError> {
    Ok(id.parse::<RecordId>()?)
}

/// Upload a record (streamed; the body is the plaintext).
///
/// The `Content-Type` header is the record's media type; `application/octet-stream` or
/// none lets the node guess it (FHIR JSON/NDJSON, HL7 v2, DICOM).
#[utoipa::path(
    post,
    path = "/v1/records",
    tag = "records",
    params(UploadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The record's bytes"),
    responses(
        (status = 201, description = "Stored", body = RecordEntry),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `write`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, axum::Json<RecordEntry>), ApiError> {
    principal
        .require(&state, TokenScope::Write, "/v1/records")
        .await?;
    let patient = params.patient.as_deref().map(PatientRef::new).transpose()?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::bad_request("the Content-Type header is not text"))?;
            let ct: ContentType = text.parse()?;
            (ct.as_str() != ContentType::OCTET_STREAM).then_some(ct)
        }
    };
    let limit = state.config().max_record_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }

    // The body flows to the ingest thread through a small channel: bounded memory,
    // and the store sees an ordinary `Read`. Frames are batched (without copying) to
    // about a chunk per message, so the ingest thread wakes once per chunk, not once
    // per socket read.
    let (tx, rx) = mpsc::channel::<io::Result<Vec<Bytes>>>(4);
    let forward = async move {
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        let mut batch = Vec::new();
        let mut batched = 0usize;
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(bytes) => {
                    total += bytes.len() as u64;
                    if total > limit {
                        let _ = tx.send(Err(io::Error::other("upload too large"))).await;
                        return Err(ApiError::too_large(limit));
                    }
                    batched += bytes.len();
                    batch.push(bytes);
                    if batched >= FORWARD_BATCH {
                        batched = 0;
                        if tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                            return Ok(()); // ingest stopped; its error is the answer
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other("upload interrupted"))).await;
                    return Err(ApiError::bad_request(format!(
                        "the upload was interrupted: {e}"
                    )));
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.send(Ok(batch)).await;
        }
        Ok(())
    };
    let store = state.store().clone();
    let keys = state.inner.keys.clone();
    let request = PutRequest {
        content_type,
        patient,
        chunk_size: state.config().chunk_size,
        actor: principal.actor(),
    };
    let ingest = blocking("record upload", move || {
        let mut reader = ChannelReader {
            rx,
            pending: std::collections::VecDeque::new(),
        };
        let id = store.put_record(
            &mut reader,
            &request,
            &keys.signer,
            &keys.certificate,
            &[],
            &|_| {},
        )?;
        Ok((id, store.meta(&id)?))
    });
    let (forwarded, ingested) = tokio::join!(forward, ingest);
    forwarded?;
    let (id, meta) = ingested?;
    if let Some(net) = state.network().cloned() {
        // Announce the new record in the background; the upload does not wait on peers.
        tokio::spawn(async move {
            if let Err(e) = net.provide(*id.cid()).await {
                tracing::debug!(record = %id, error = %e, "provider announcement failed");
            }
        });
    }
    Ok((StatusCode::CREATED, axum::Json(RecordEntry { id, meta })))
}

/// Body bytes batched per channel message: about one chunk.
const FORWARD_BATCH: usize = 1 << 20;

/// A blocking `Read` over the body frames the async side forwards.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<Bytes>>>,
    pending: std::collections::VecDeque<Bytes>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.pending.front_mut() {
                Some(front) if !front.is_empty() => {
                    let n = buf.len().min(front.len());
                    buf[..n].copy_from_slice(&front.split_to(n));
                    return Ok(n);
                }
                Some(_) => {
                    self.pending.pop_front();
                }
                None => match self.rx.blocking_recv() {
                    None => return Ok(0),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(batch)) => self.pending.extend(batch),
                },
            }
        }
    }
}

/// A blocking `Write` that hands plaintext to the response body stream.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Download a record's plaintext (streamed).
///
/// The signature and key are checked before the first byte is sent; every chunk is
/// verified as it streams. If a chunk fails verification mid-stream the connection is
/// cut: the body is then shorter than `Content-Length`, which clients must treat as a
/// failure.
#[utoipa::path(
    get,
    path = "/v1/records/{id}/content",
    tag = "records",
    params(("id" = String, Path, description = "Record id")),
    responses(
        (status = 200, description = "The plaintext, with the record's media type", content_type = "*/*", body = Vec<u8>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown record", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Record failed verification", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn download(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    principal
        .require(&state, TokenScope::Read, &id.to_string())
        .await?;
    super::network::ensure_local(&state, &id).await?;
    let (ready_tx, ready_rx) = oneshot::channel::<Result<RecordMeta, ApiError>>();
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let store = state.store().clone();
    let keys = state.inner.keys.clone();
    let actor = principal.actor();
    tokio::task::spawn_blocking(move || {
        let opened = {
            let mut decryptor = lock(&keys.decryptor);
            store.open_record(&id, &keys.certificate, &mut decryptor)
        };
        let record = match opened {
            Ok(r) => r,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        if ready_tx.send(Ok(record.meta().clone())).is_err() {
            return;
        }
        let mut out = ChannelWriter { tx: tx.clone() };
        if let Err(e) = record.copy_to(&mut out, &actor, &|_| {}) {
            tracing::error!(record = %id, error = %e, "download aborted");
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
    });
    let meta = ready_rx
        .await
        .map_err(|_| ApiError::internal("record download", "reader thread stopped"))??;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(meta.content_type.as_str()) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    Ok(response)
}

/// A record's metadata and manifest summary.
#[utoipa::path(
    get,
    path = "/v1/records/{id}",
    tag = "records",
    params(("id" = String, Path, description = "Record id")),
    responses(
        (status = 200, body = RecordInfo),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown record", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn info(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<RecordInfo>, ApiError> {
    let id = parse_id(&id)?;
    principal
        .require(&state, TokenScope::Read, &id.to_string())
        .await?;
    let store = state.store().clone();
    let info = blocking("record metadata", move || {
        let meta = store.meta(&id)?;
        let manifest = store.manifest(&id)?;
        Ok(RecordInfo {
            id,
            meta,
            chunks: manifest.body.chunks.len(),
            chunk_size: manifest.body.envelope.chunk_size,
            recipients: manifest
                .body
                .key_wraps
                .iter()
                .map(|w| w.recipient.to_string())
                .collect(),
            signer: manifest.signature.signer.to_string(),
        })
    })
    .await?;
    Ok(axum::Json(info))
}

/// Search records by patient reference, media type and creation time (oldest first).
#[utoipa::path(
    get,
    path = "/v1/records",
    tag = "records",
    params(SearchParams),
    responses(
        (status = 200, body = RecordPage),
        (status = 400, description = "Malformed filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn search(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<axum::Json<RecordPage>, ApiError> {
    principal
        .require(&state, TokenScope::Read, "/v1/records")
        .await?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_PAGE}"
        )));
    }
    let query = RecordQuery {
        owner: None,
        patient: params.patient.as_deref().map(PatientRef::new).transpose()?,
        content_type: params.content_type.as_deref().map(str::parse).transpose()?,
        since: parse_time("since", params.since.as_deref())?,
        until: parse_time("until", params.until.as_deref())?,
        // One more than asked tells whether another page follows.
        limit: limit + 1,
    };
    let store = state.store().clone();
    let mut found = blocking("record search", move || Ok(store.list(&query)?)).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next_since = if more {
        found
            .last()
            .map(|(_, m)| (m.created + time::Duration::nanoseconds(1)).format(&Rfc3339))
            .transpose()
            .map_err(|e| ApiError::internal("paging", e))?
    } else {
        None
    };
    Ok(axum::Json(RecordPage {
        records: found
            .into_iter()
            .map(|(id, meta)| RecordEntry { id, meta })
            .collect(),
        next_since,
    }))
}

/// Delete the local copy of a record (its blocks are removed).
#[utoipa::path(
    delete,
    path = "/v1/records/{id}",
    tag = "records",
    params(("id" = String, Path, description = "Record id")),
    responses(
        (status = 200, body = Removed),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown record", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Removed>, ApiError> {
    let id = parse_id(&id)?;
    principal
        .require(&state, TokenScope::Write, &id.to_string())
        .await?;
    let store = state.store().clone();
    let actor = principal.actor();
    let report = blocking("record removal", move || {
        Ok(store.remove_record(&id, &actor)?)
    })
    .await?;
    Ok(axum::Json(Removed {
        blocks_removed: report.blocks_removed,
        bytes_freed: report.bytes_freed,
    }))
}
