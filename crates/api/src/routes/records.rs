//! `/v1/records`: streaming upload and download, metadata, search, delete.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use medmesh_api_types::{RecordEntry, RecordInfo, RecordPage, Removed};
use medmesh_core::{ContentType, PatientRef, RecordId};
use medmesh_service::Ingest;
use medmesh_store::RecordQuery;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use super::ApiQuery;
use crate::auth::{Authorized, Read as ReadScope, Write as WriteScope};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

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
/// Body bytes batched per channel message: about one chunk.
const FORWARD_BATCH: usize = 1 << 20;
/// An upload must deliver at least this many bytes per `body_idle_timeout`, so a client
/// trickling a byte every few seconds cannot hold a connection and an ingest forever.
const MIN_BYTES_PER_WINDOW: u64 = 1024;

/// Media types that say nothing about the content: the node sniffs instead. curl sends
/// `application/x-www-form-urlencoded` for `--data-binary` without `-H Content-Type`.
const UNINFORMATIVE_TYPES: [&str; 2] = [
    ContentType::OCTET_STREAM,
    "application/x-www-form-urlencoded",
];

pub(crate) fn parse_time(name: &str, v: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    v.map(|v| {
        OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
            ApiError::bad_request(format!(
                "`{name}` must be an RFC 3339 time such as 2026-01-31T00:00:00Z"
            ))
        })
    })
    .transpose()
}

pub(crate) fn parse_id(id: &str) -> Result<RecordId, ApiError> {
    Ok(id.parse::<RecordId>()?)
}

/// The record's media type from `Content-Type`, or `None` to sniff it.
fn declared_type(headers: &HeaderMap) -> Result<Option<ContentType>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("the Content-Type header is not text"))?;
    let ct: ContentType = text.parse()?;
    // Compare the type itself, not its parameters (`; charset=UTF-8`).
    let essence = ct.as_str().split(';').next().unwrap_or_default().trim();
    let uninformative = UNINFORMATIVE_TYPES
        .iter()
        .any(|t| t.eq_ignore_ascii_case(essence));
    Ok((!uninformative).then_some(ct))
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
        (status = 408, description = "The body stalled or trickled (under 1 KiB per 30 s); nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many records being stored at once; retry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn upload(
    State(state): State<AppState>,
    caller: Authorized<WriteScope>,
    ApiQuery(params): ApiQuery<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, axum::Json<RecordEntry>), ApiError> {
    let patient = params.patient.as_deref().map(PatientRef::new).transpose()?;
    let content_type = declared_type(&headers)?;
    let config = state.config();
    let limit = config.max_record_bytes;
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
    let idle = config.body_idle_timeout;
    let forward = async move {
        let mut stream = body.into_data_stream();
        let (mut total, mut batched) = (0u64, 0usize);
        let mut batch = Vec::new();
        let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
        loop {
            let frame = match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    let _ = tx.send(Err(io::Error::other("upload stalled"))).await;
                    return Err(stalled(idle, 0));
                }
            };
            let bytes = match frame {
                Ok(bytes) => bytes,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other("upload interrupted"))).await;
                    return Err(ApiError::bad_request(format!(
                        "the upload was interrupted: {e}"
                    )));
                }
            };
            total += bytes.len() as u64;
            window_bytes += bytes.len() as u64;
            if total > limit {
                let _ = tx.send(Err(io::Error::other("upload too large"))).await;
                return Err(ApiError::too_large(limit));
            }
            if window_start.elapsed() >= idle {
                if window_bytes < MIN_BYTES_PER_WINDOW {
                    let _ = tx.send(Err(io::Error::other("upload too slow"))).await;
                    return Err(stalled(idle, window_bytes));
                }
                (window_start, window_bytes) = (Instant::now(), 0);
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
        if !batch.is_empty() {
            let _ = tx.send(Ok(batch)).await;
        }
        Ok(())
    };
    let reader = ChannelReader {
        rx,
        pending: VecDeque::new(),
    };
    let ingest = state.services().ingest(
        Box::new(reader),
        Ingest {
            content_type,
            patient,
            actor: caller.actor(),
        },
    );
    let (forwarded, ingested) = tokio::join!(forward, ingest);
    forwarded?;
    let stored = ingested?;
    Ok((
        StatusCode::CREATED,
        axum::Json(RecordEntry {
            id: stored.id,
            meta: stored.meta,
        }),
    ))
}

fn stalled(window: std::time::Duration, got: u64) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "upload-stalled",
        format!(
            "the upload sent {got} bytes in {} s (at least {MIN_BYTES_PER_WINDOW} are needed); \
             nothing was stored",
            window.as_secs()
        ),
    )
}

/// A blocking `Read` over the body frames the async side forwards.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<Bytes>>>,
    pending: VecDeque<Bytes>,
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
        (status = 503, description = "Too many records being read at once; retry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn download(
    State(state): State<AppState>,
    caller: Authorized<ReadScope>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let opened = state.services().open_record(id, &caller.actor()).await?;
    let mut rx = opened.body;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(opened.meta.content_type.as_str()) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(opened.meta.size));
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
    _caller: Authorized<ReadScope>,
    Path(id): Path<String>,
) -> Result<axum::Json<RecordInfo>, ApiError> {
    let id = parse_id(&id)?;
    let (meta, manifest) = state.services().record(id).await?;
    Ok(axum::Json(RecordInfo {
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
    }))
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
    _caller: Authorized<ReadScope>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<axum::Json<RecordPage>, ApiError> {
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
        limit: 0,
    };
    let (found, next) = state.services().search(query, limit).await?;
    let next_since = next
        .map(|t| t.format(&Rfc3339))
        .transpose()
        .map_err(|e| ApiError::internal("paging", e))?;
    Ok(axum::Json(RecordPage {
        records: found
            .into_iter()
            .map(|r| RecordEntry {
                id: r.id,
                meta: r.meta,
            })
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
    caller: Authorized<WriteScope>,
    Path(id): Path<String>,
) -> Result<axum::Json<Removed>, ApiError> {
    let id = parse_id(&id)?;
    let report = state.services().remove(id, &caller.actor()).await?;
    Ok(axum::Json(Removed {
        blocks_removed: report.blocks_removed,
        bytes_freed: report.bytes_freed,
    }))
}
