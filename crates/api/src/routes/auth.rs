//! `/v1/auth`: wallet sign-in (Sign-In with Ethereum) and who-am-I.

use axum::extract::State;
use time::format_description::well_known::Rfc3339;

use medmesh_api_types::{NonceResponse, SessionResponse, SignInRequest, WhoAmI};
use medmesh_store::AuditAction;

use super::ApiJson;
use crate::auth::{issue_nonce, refused, sign_in, ClientAddr, Principal};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

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
    ClientAddr(client): ClientAddr,
    ApiJson(request): ApiJson<SignInRequest>,
) -> Result<axum::Json<SessionResponse>, ApiError> {
    match sign_in(&state, &request.message, &request.signature) {
        Ok((token, session)) => {
            let address = session.address.to_string();
            state
                .services()
                .audit(
                    AuditAction::SignIn,
                    &format!("wallet:{address}"),
                    "session",
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
            refused(&state, client, "/v1/auth/siwe", &e).await;
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
