//! `/v1/auth`: wallet sign-in (Sign-In with Ethereum) and who-am-I.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use super::ApiJson;
use crate::auth::{issue_nonce, sign_in, Principal};
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use medmesh_store::AuditAction;

/// A sign-in nonce and what the SIWE message must name.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NonceResponse {
    /// Put this in the message's `Nonce:` line.
    pub nonce: String,
    /// The message's domain.
    pub domain: String,
    /// The message's `Chain ID:`.
    pub chain_id: u64,
    /// The nonce is refused after this time (RFC 3339).
    pub expires_at: String,
}

/// A signed EIP-4361 message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignInRequest {
    /// The exact message text the wallet signed.
    pub message: String,
    /// The EIP-191 `personal_sign` signature, 65 bytes hex (`0x…`).
    pub signature: String,
}

/// A wallet session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    /// Bearer token for later requests (`mms_…`).
    pub token: String,
    /// The signed-in address.
    pub address: String,
    /// When the session ends (RFC 3339).
    pub expires_at: String,
}

/// Who the caller is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// `operator` or `wallet`.
    pub kind: String,
    /// Token id or wallet address.
    pub id: String,
    /// Token scope (operators only).
    pub scope: Option<String>,
}

/// Get a nonce for Sign-In with Ethereum.
#[utoipa::path(
    post,
    path = "/v1/auth/nonce",
    tag = "auth",
    responses((status = 200, body = NonceResponse), (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"))
)]
pub async fn nonce(State(state): State<AppState>) -> Result<axum::Json<NonceResponse>, ApiError> {
    let (nonce, expires) = issue_nonce(&state)?;
    Ok(axum::Json(NonceResponse {
        nonce,
        domain: state.config().siwe_domain.clone(),
        chain_id: state.config().chain_id,
        expires_at: expires
            .format(&Rfc3339)
            .map_err(|e| ApiError::internal("time", e))?,
    }))
}

/// Sign in with a wallet: send a SIWE message signed with `personal_sign`.
#[utoipa::path(
    post,
    path = "/v1/auth/siwe",
    tag = "auth",
    request_body = SignInRequest,
    responses(
        (status = 200, body = SessionResponse),
        (status = 400, description = "Malformed message or signature", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Wrong domain or chain, expired, bad signature, or unknown/used nonce", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn siwe(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SignInRequest>,
) -> Result<axum::Json<SessionResponse>, ApiError> {
    match sign_in(&state, &request.message, &request.signature) {
        Ok((token, session)) => {
            let address = session.address.to_string();
            state
                .audit(
                    AuditAction::SignIn,
                    format!("wallet:{address}"),
                    "session".into(),
                    vec![],
                )
                .await;
            Ok(axum::Json(SessionResponse {
                token,
                address,
                expires_at: session
                    .expires
                    .format(&Rfc3339)
                    .map_err(|e| ApiError::internal("time", e))?,
            }))
        }
        Err(e) => {
            state
                .audit(
                    AuditAction::AccessDenied,
                    "anonymous".into(),
                    "/v1/auth/siwe".into(),
                    vec![("reason", format!("{e:?}"))],
                )
                .await;
            Err(e)
        }
    }
}

/// Who the bearer token belongs to.
#[utoipa::path(
    get,
    path = "/v1/auth/whoami",
    tag = "auth",
    responses((status = 200, body = WhoAmI), (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn whoami(principal: Principal) -> axum::Json<WhoAmI> {
    axum::Json(match principal {
        Principal::Operator { token_id, scope } => WhoAmI {
            kind: "operator".into(),
            id: token_id,
            scope: Some(scope.to_string()),
        },
        Principal::Wallet { address } => WhoAmI {
            kind: "wallet".into(),
            id: address.to_string(),
            scope: None,
        },
    })
}
