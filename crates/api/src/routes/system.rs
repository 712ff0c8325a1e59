//! Health, metrics, the institution certificate, administration, and the API's own
//! documentation.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use medmesh_api_types::{CheckResult, CreatedToken, GcResult, Health, TokenRequest, TokenView};
use medmesh_store::TokenScope;
use time::format_description::well_known::Rfc3339;

use super::ApiJson;
use crate::auth::{Admin, Authorized, Principal};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// Node is up.
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = Health)))]
pub async fn health(State(state): State<AppState>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: state.inner.started.elapsed().as_secs(),
    })
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let services = state.services();
    let records = services.record_count().await?;
    let announced = services.announcements();
    let mut gauges = vec![
        (
            "medmesh_records",
            "Records in the local store.",
            records as f64,
        ),
        (
            "medmesh_uptime_seconds",
            "Seconds since the API started.",
            state.inner.started.elapsed().as_secs_f64(),
        ),
        (
            "medmesh_announcements_failed",
            "Provider announcements that failed since start (each is retried).",
            announced.failed as f64,
        ),
        (
            "medmesh_announcements_pending",
            "Records whose provider announcement waits for a retry.",
            announced.pending as f64,
        ),
    ];
    if let Some(network) = services.network() {
        let net = network.stats();
        gauges.extend([
            (
                "medmesh_p2p_peers",
                "Peers connected.",
                net.connected_peers as f64,
            ),
            (
                "medmesh_p2p_bitswap_streams",
                "Inbound bitswap streams being read.",
                net.bitswap_streams as f64,
            ),
            (
                "medmesh_p2p_fast_path_requests",
                "Fast-path requests being served.",
                net.fast_path_requests as f64,
            ),
            (
                "medmesh_p2p_replication_requests",
                "Replication requests being served.",
                net.replication_requests as f64,
            ),
            (
                "medmesh_p2p_frame_budget_free_bytes",
                "Bytes of the inbound frame budget not taken.",
                net.frame_budget_free as f64,
            ),
        ]);
    }
    if let Ok(telemetry) = services.telemetry() {
        let t = telemetry.stats();
        let rejected: u64 = t.rejected.values().sum();
        gauges.extend([
            (
                "medmesh_telemetry_queue_depth",
                "Device messages waiting to be checked (backpressure holds the broker back when it fills).",
                t.queue_depth as f64,
            ),
            (
                "medmesh_telemetry_queue_lag_seconds",
                "Seconds the oldest waiting device message has waited.",
                t.queue_lag_seconds,
            ),
            (
                "medmesh_telemetry_messages_stored",
                "Device messages made durable since start.",
                t.messages_stored as f64,
            ),
            (
                "medmesh_telemetry_readings_stored",
                "Readings made durable since start.",
                t.readings_stored as f64,
            ),
            (
                "medmesh_telemetry_messages_rejected",
                "Device messages refused since start (reasons: GET /v1/telemetry).",
                rejected as f64,
            ),
            (
                "medmesh_telemetry_duplicates",
                "Redelivered device messages recognised since start (stored once).",
                t.duplicates as f64,
            ),
            (
                "medmesh_telemetry_pending_readings",
                "Readings durable in the log, not yet batched into records.",
                t.pending_readings as f64,
            ),
            (
                "medmesh_telemetry_alerts_open",
                "Clinical alerts open.",
                t.alerts_open as f64,
            ),
            (
                "medmesh_mqtt_connected",
                "1 while the MQTT bridge is connected to its broker.",
                f64::from(u8::from(t.connected)),
            ),
            (
                "medmesh_mqtt_sessions_lost",
                "Times the broker had lost the node's MQTT session.",
                t.session_losses as f64,
            ),
        ]);
    }
    let text = state.inner.metrics.render(&gauges);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// The institution's public certificate (ASCII-armored OpenPGP, post-quantum).
#[utoipa::path(
    get,
    path = "/v1/keys/institution",
    tag = "keys",
    responses(
        (status = 200, description = "Armored certificate", content_type = "application/pgp-keys", body = String),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn institution_key(
    State(state): State<AppState>,
    _principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    let armored = state
        .services()
        .keys()?
        .certificate
        .to_armored()
        .map_err(|e| ApiError::internal("certificate export", e))?;
    Ok(([(header::CONTENT_TYPE, "application/pgp-keys")], armored))
}

/// Delete unreferenced blocks.
#[utoipa::path(
    post,
    path = "/v1/admin/gc",
    tag = "admin",
    responses(
        (status = 200, body = GcResult),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `admin`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn gc(
    State(state): State<AppState>,
    caller: Authorized<Admin>,
) -> Result<axum::Json<GcResult>, ApiError> {
    let r = state.services().gc(&caller.actor()).await?;
    Ok(axum::Json(GcResult {
        blocks_removed: r.blocks_removed,
        temp_files_removed: r.temp_files_removed,
        bytes_freed: r.bytes_freed,
    }))
}

/// Check that every record's blocks are present and intact and the audit log verifies
/// (what `medmesh check` does). Reads every block: slow on large stores.
#[utoipa::path(
    post,
    path = "/v1/admin/check",
    tag = "admin",
    responses(
        (status = 200, body = CheckResult),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `admin`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn check(
    State(state): State<AppState>,
    _caller: Authorized<Admin>,
) -> Result<axum::Json<CheckResult>, ApiError> {
    let r = state.services().check().await?;
    Ok(axum::Json(CheckResult {
        records: r.records,
        blocks_checked: r.blocks_checked,
        unreferenced_blocks: r.unreferenced_blocks,
        problems: r.problems,
    }))
}

fn view(t: &medmesh_store::ApiToken) -> Result<TokenView, ApiError> {
    Ok(TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        scope: t.scope.to_string(),
        created: t
            .created
            .format(&Rfc3339)
            .map_err(|e| ApiError::internal("time", e))?,
    })
}

/// Create an API token.
#[utoipa::path(
    post,
    path = "/v1/admin/tokens",
    tag = "admin",
    request_body = TokenRequest,
    responses(
        (status = 201, body = CreatedToken),
        (status = 400, description = "Malformed body, bad name or scope", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `admin`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Authorized<Admin>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<(StatusCode, axum::Json<CreatedToken>), ApiError> {
    let scope: TokenScope = request.scope.parse()?;
    let (token, secret) = state
        .services()
        .create_token(request.name, scope, &caller.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            token: view(&token)?,
            secret,
        }),
    ))
}

/// List API tokens.
#[utoipa::path(
    get,
    path = "/v1/admin/tokens",
    tag = "admin",
    responses(
        (status = 200, body = Vec<TokenView>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `admin`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_tokens(
    State(state): State<AppState>,
    _caller: Authorized<Admin>,
) -> Result<axum::Json<Vec<TokenView>>, ApiError> {
    let tokens = state.services().tokens().await?;
    Ok(axum::Json(
        tokens.iter().map(view).collect::<Result<_, _>>()?,
    ))
}

/// Revoke an API token.
#[utoipa::path(
    delete,
    path = "/v1/admin/tokens/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Authorized<Admin>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.services().revoke_token(id, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI 3.1 document of this API.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
}

/// Interactive documentation: a self-contained page (no CDN) that renders
/// `/openapi.json` and can send requests with a bearer token.
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("../docs.html"))
}
