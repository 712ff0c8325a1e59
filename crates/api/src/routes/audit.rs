//! `/v1/audit`: page through and verify the hash-chained audit log.

use axum::extract::State;
use medmesh_store::TokenScope;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{blocking, ApiQuery};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// Paging through the log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// First entry (sequence number, default 0).
    pub from: Option<u64>,
    /// How many, 1–1000 (default 100).
    pub limit: Option<usize>,
}

/// One audit entry (see `docs/architecture.md`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryView {
    /// Position in the log.
    pub seq: u64,
    /// When (RFC 3339).
    pub time: String,
    /// What happened (`record_write`, `record_read`, `access_denied`, …).
    pub action: String,
    /// Who did it.
    pub actor: String,
    /// What it was done to.
    pub subject: String,
    /// Further facts.
    pub detail: std::collections::BTreeMap<String, String>,
    /// Hash of the previous entry.
    pub prev: String,
    /// Hash of this entry.
    pub hash: String,
}

/// A page of the audit log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// Entries in order.
    pub entries: Vec<AuditEntryView>,
    /// `from` of the next page; absent on the last.
    pub next_from: Option<u64>,
}

/// Result of walking the chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditVerification {
    /// Whether the whole chain verifies.
    pub ok: bool,
    /// Entries checked (when ok).
    pub entries: Option<u64>,
    /// Hash of the last entry (when ok): what gets anchored.
    pub head: Option<String>,
    /// First bad entry (when not ok).
    pub broken_at: Option<u64>,
    /// What is wrong with it (when not ok).
    pub reason: Option<String>,
}

/// Page through the audit log.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, description = "Malformed paging", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `read`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn page(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    principal
        .require(&state, TokenScope::Read, "/v1/audit")
        .await?;
    let from = params.from.unwrap_or(0);
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    let store = state.store().clone();
    let entries = blocking("audit log", move || Ok(store.audit_page(from, limit + 1)?)).await?;
    let next_from = (entries.len() > limit).then(|| from + limit as u64);
    let entries = entries
        .into_iter()
        .take(limit)
        .map(|e| {
            let value =
                serde_json::to_value(&e).map_err(|e| ApiError::internal("audit entry", e))?;
            serde_json::from_value::<AuditEntryView>(value)
                .map_err(|e| ApiError::internal("audit entry", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(AuditPage { entries, next_from }))
}

/// Verify the audit chain; names the first altered entry.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    responses(
        (status = 200, body = AuditVerification),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `read`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn verify(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<AuditVerification>, ApiError> {
    principal
        .require(&state, TokenScope::Read, "/v1/audit/verify")
        .await?;
    let store = state.store().clone();
    let result = blocking("audit verification", move || Ok(store.audit_verify()?)).await?;
    Ok(axum::Json(match result {
        Ok(s) => AuditVerification {
            ok: true,
            entries: Some(s.entries),
            head: Some(s.head),
            broken_at: None,
            reason: None,
        },
        Err(b) => AuditVerification {
            ok: false,
            entries: None,
            head: None,
            broken_at: Some(b.seq),
            reason: Some(b.reason),
        },
    }))
}
