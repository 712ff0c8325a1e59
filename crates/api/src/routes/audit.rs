//! `/v1/audit`: page through and verify the hash-chained audit log.

use axum::extract::State;
use medmesh_api_types::{AuditEntryView, AuditPage, AuditVerification};
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiQuery;
use crate::auth::{Authorized, Read};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// Paging of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// First entry (sequence number, default 0).
    pub from: Option<u64>,
    /// How many, 1–1000 (default 100).
    pub limit: Option<usize>,
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
    _caller: Authorized<Read>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    let from = params.from.unwrap_or(0);
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    let entries = state.services().audit_page(from, limit + 1).await?;
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
    _caller: Authorized<Read>,
) -> Result<axum::Json<AuditVerification>, ApiError> {
    let result = state.services().audit_verify().await?;
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
