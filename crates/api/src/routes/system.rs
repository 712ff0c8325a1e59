//! Health, metrics, the institution certificate, administration, and the API's own
//! documentation.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use medmesh_store::TokenScope;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use super::{blocking, ApiJson};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// Liveness and a few facts about the node.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the node answers.
    pub status: String,
    /// medmesh version.
    pub version: String,
    /// Seconds since the API started.
    pub uptime_seconds: u64,
}

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
    let store = state.store().clone();
    let records = blocking("metrics", move || Ok(store.record_count()?)).await?;
    let text = state.inner.metrics.render(&[
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
    ]);
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
        .inner
        .keys
        .certificate
        .to_armored()
        .map_err(|e| ApiError::internal("certificate export", e))?;
    Ok(([(header::CONTENT_TYPE, "application/pgp-keys")], armored))
}

/// What garbage collection did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GcResult {
    /// Unreferenced blocks deleted.
    pub blocks_removed: u64,
    /// Leftover temp files deleted.
    pub temp_files_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
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
    principal: Principal,
) -> Result<axum::Json<GcResult>, ApiError> {
    principal
        .require(&state, TokenScope::Admin, "/v1/admin/gc")
        .await?;
    let store = state.store().clone();
    let actor = principal.actor();
    let r = blocking("garbage collection", move || Ok(store.gc(&actor)?)).await?;
    Ok(axum::Json(GcResult {
        blocks_removed: r.blocks_removed,
        temp_files_removed: r.temp_files_removed,
        bytes_freed: r.bytes_freed,
    }))
}

/// What a consistency check found.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    /// Records checked.
    pub records: u64,
    /// Blocks re-hashed.
    pub blocks_checked: u64,
    /// Blocks no record references (`POST /v1/admin/gc` removes them).
    pub unreferenced_blocks: u64,
    /// Problems found, one line each; empty when the store is consistent.
    pub problems: Vec<String>,
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
    principal: Principal,
) -> Result<axum::Json<CheckResult>, ApiError> {
    principal
        .require(&state, TokenScope::Admin, "/v1/admin/check")
        .await?;
    let store = state.store().clone();
    let r = blocking("consistency check", move || Ok(store.check()?)).await?;
    Ok(axum::Json(CheckResult {
        records: r.records,
        blocks_checked: r.blocks_checked,
        unreferenced_blocks: r.unreferenced_blocks,
        problems: r.problems,
    }))
}

/// A token to create.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// What it is for.
    pub name: String,
    /// `read`, `write` or `admin`.
    pub scope: String,
}

/// An API token (without its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// Public id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Scope.
    pub scope: String,
    /// Creation time (RFC 3339).
    pub created: String,
}

/// A new token: the secret is shown only here.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The token.
    #[serde(flatten)]
    pub token: TokenView,
    /// The bearer secret (`mm_…`); store it now, it cannot be shown again.
    pub secret: String,
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
    principal: Principal,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<(StatusCode, axum::Json<CreatedToken>), ApiError> {
    principal
        .require(&state, TokenScope::Admin, "/v1/admin/tokens")
        .await?;
    let scope: TokenScope = request.scope.parse()?;
    let store = state.store().clone();
    let actor = principal.actor();
    let (token, secret) = blocking("token creation", move || {
        Ok(store.create_token(&request.name, scope, &actor)?)
    })
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
    principal: Principal,
) -> Result<axum::Json<Vec<TokenView>>, ApiError> {
    principal
        .require(&state, TokenScope::Admin, "/v1/admin/tokens")
        .await?;
    let store = state.store().clone();
    let tokens = blocking("token list", move || Ok(store.list_tokens()?)).await?;
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
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal
        .require(&state, TokenScope::Admin, "/v1/admin/tokens")
        .await?;
    let store = state.store().clone();
    let actor = principal.actor();
    blocking("token revocation", move || {
        store
            .revoke_token(&id, &actor)
            .map_err(|e| ApiError::not_found(e.to_string()))
    })
    .await?;
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
