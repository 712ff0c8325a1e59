//! Medical devices, their readings and the alerts raised from them.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use medmesh_api_types::{AlertView, DeviceInfo, DeviceRequest, ReadingView, TelemetryStatus};
use medmesh_core::PatientRef;
use medmesh_crypto::{DeviceAlgorithm, DevicePublicKey};
use medmesh_service::alerts::Alert;
use medmesh_service::telemetry::bundle::{self, rfc3339};
use medmesh_service::{DeviceReading, DeviceRegistration, DeviceView};
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::IntoParams;

use super::records::parse_time;
use super::{ApiJson, ApiQuery};
use crate::auth::{Admin, Authorized, Read, Write};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

fn device_info(d: DeviceView) -> DeviceInfo {
    DeviceInfo {
        id: d.id,
        patient: d.patient,
        device_type: d.device_type,
        algorithm: d.algorithm,
        key_fingerprint: d.key_fingerprint,
        registered: rfc3339(d.registered),
        revoked: d.revoked.map(rfc3339),
        last_seen: d.last_seen.map(rfc3339),
        counter: d.counter,
        firmware: d.firmware,
    }
}

fn alert_view(a: Alert) -> AlertView {
    let severity = a.severity.name().to_string();
    let (acknowledged_by, acknowledged_at) = match a.acknowledged {
        Some((by, at)) => (Some(by), Some(rfc3339(at))),
        None => (None, None),
    };
    AlertView {
        id: a.id,
        rule: a.rule,
        severity,
        kind: a.kind.map(|k| k.name().to_string()),
        device: a.device,
        patient: a.patient,
        raised_at: rfc3339(a.raised_at),
        value: a.value,
        threshold: a.threshold,
        acknowledged_by,
        acknowledged_at,
        escalated: a.escalated,
        message: a.message,
    }
}

/// Register a medical device.
#[utoipa::path(
    post,
    path = "/v1/devices",
    tag = "devices",
    request_body = DeviceRequest,
    responses(
        (status = 201, body = DeviceInfo),
        (status = 400, description = "Bad id, type, patient or key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id is taken (ids are never reused)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn register(
    State(state): State<AppState>,
    caller: Authorized<Admin>,
    ApiJson(request): ApiJson<DeviceRequest>,
) -> Result<(StatusCode, axum::Json<DeviceInfo>), ApiError> {
    let algorithm = match request.algorithm.as_deref() {
        None => DeviceAlgorithm::Falcon512,
        Some(name) => DeviceAlgorithm::from_name(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`algorithm` `{name}` is not one the node takes (falcon-512 or ed25519)"
            ))
        })?,
    };
    let bytes = hex::decode(request.public_key.trim())
        .map_err(|_| ApiError::bad_request("`public_key` must be hex"))?;
    let key = DevicePublicKey::new(algorithm, bytes)
        .map_err(|e| ApiError::bad_request(format!("`public_key`: {e}")))?;
    let patient = PatientRef::new(&request.patient)?;
    let device = state
        .services()
        .register_device(
            DeviceRegistration {
                id: request.id,
                patient,
                device_type: request.device_type,
                key,
            },
            &caller.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(device_info(device))))
}

/// List registered devices (revoked ones included).
#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "devices",
    responses(
        (status = 200, body = Vec<DeviceInfo>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    _caller: Authorized<Read>,
) -> Result<axum::Json<Vec<DeviceInfo>>, ApiError> {
    let devices = state.services().devices().await?;
    Ok(axum::Json(devices.into_iter().map(device_info).collect()))
}

/// Revoke a device: its messages are refused from now on (the id is never reused).
#[utoipa::path(
    delete,
    path = "/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, body = DeviceInfo),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown device", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Authorized<Admin>,
    Path(id): Path<String>,
) -> Result<axum::Json<DeviceInfo>, ApiError> {
    let device = state.services().revoke_device(&id, &caller.actor()).await?;
    Ok(axum::Json(device_info(device)))
}

/// Which readings, in which format.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadingsParams {
    /// The patient reference.
    pub patient: String,
    /// Readings measured at or after this RFC 3339 time.
    pub from: String,
    /// Readings measured before this RFC 3339 time.
    pub to: String,
    /// `json` (default: a list of readings), `fhir` (a FHIR Bundle of Observations) or
    /// `senml` (a SenML pack).
    pub format: Option<String>,
}

/// A patient's readings in a time range, decrypted (each telemetry record read is
/// audited).
#[utoipa::path(
    get,
    path = "/v1/readings",
    tag = "devices",
    params(ReadingsParams),
    responses(
        (status = 200, body = Vec<ReadingView>, description = "`json`; `fhir` answers application/fhir+json, `senml` application/senml+json"),
        (status = 400, description = "Bad patient, time or format", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No telemetry on this node", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn readings(
    State(state): State<AppState>,
    caller: Authorized<Read>,
    ApiQuery(params): ApiQuery<ReadingsParams>,
) -> Result<Response, ApiError> {
    let patient = PatientRef::new(&params.patient)?;
    let from = parse_time("from", Some(&params.from))?.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let to = parse_time("to", Some(&params.to))?.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let format = params.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "fhir" | "senml") {
        return Err(ApiError::bad_request(format!(
            "`format` `{format}` is not json, fhir or senml"
        )));
    }
    let readings = state
        .services()
        .telemetry()?
        .readings(&patient, from, to, &caller.actor())
        .await?;
    Ok(match format {
        "fhir" => (
            [(header::CONTENT_TYPE, "application/fhir+json")],
            bundle::to_bundle(&patient, &readings).to_string(),
        )
            .into_response(),
        "senml" => (
            [(header::CONTENT_TYPE, "application/senml+json")],
            bundle::to_senml(&readings).to_string(),
        )
            .into_response(),
        _ => axum::Json(readings.into_iter().map(reading_view).collect::<Vec<_>>()).into_response(),
    })
}

fn reading_view(r: DeviceReading) -> ReadingView {
    ReadingView {
        device: r.device,
        kind: r.reading.kind.name().to_string(),
        value: r.reading.value,
        unit: r.reading.kind.unit().to_string(),
        time: rfc3339(r.reading.time),
    }
}

/// Alerts open now, oldest first.
#[utoipa::path(
    get,
    path = "/v1/alerts",
    tag = "devices",
    responses(
        (status = 200, body = Vec<AlertView>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No telemetry on this node", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn alerts(
    State(state): State<AppState>,
    _caller: Authorized<Read>,
) -> Result<axum::Json<Vec<AlertView>>, ApiError> {
    let alerts = state.services().telemetry()?.open_alerts();
    Ok(axum::Json(alerts.into_iter().map(alert_view).collect()))
}

/// Acknowledge an alert (it stops escalating; it still clears when the readings recover).
#[utoipa::path(
    post,
    path = "/v1/alerts/{id}/ack",
    tag = "devices",
    params(("id" = String, Path, description = "Alert id")),
    responses(
        (status = 200, body = AlertView),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such open alert", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Acknowledged already, or cleared", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No telemetry on this node", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn acknowledge(
    State(state): State<AppState>,
    caller: Authorized<Write>,
    Path(id): Path<String>,
) -> Result<axum::Json<AlertView>, ApiError> {
    let alert = state
        .services()
        .telemetry()?
        .acknowledge_alert(&id, &caller.actor())
        .await?;
    Ok(axum::Json(alert_view(alert)))
}

/// The telemetry path: broker link, queue, what was stored and refused.
#[utoipa::path(
    get,
    path = "/v1/telemetry",
    tag = "devices",
    responses(
        (status = 200, body = TelemetryStatus),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No telemetry on this node", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn status(
    State(state): State<AppState>,
    _caller: Authorized<Read>,
) -> Result<axum::Json<TelemetryStatus>, ApiError> {
    let s = state.services().telemetry()?.stats();
    Ok(axum::Json(TelemetryStatus {
        broker: s.broker,
        connected: s.connected,
        queue_depth: s.queue_depth,
        queue_lag_seconds: s.queue_lag_seconds,
        messages_stored: s.messages_stored,
        readings_stored: s.readings_stored,
        duplicates: s.duplicates,
        rejected: s.rejected,
        pending_readings: s.pending_readings,
        records_written: s.records_written,
        alerts_open: s.alerts_open,
        sessions_lost: s.session_losses,
    }))
}
