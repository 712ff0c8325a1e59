//! Who is calling: operators with API tokens (`mm_…`, scoped read/write/admin), and
//! patients or researchers signed in with their wallet (Sign-In with Ethereum,
//! EIP-4361) holding a session token (`mms_…`). Every denial is audited.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use medmesh_core::siwe::SiweMessage;
use medmesh_crypto::eth::{recover_personal_sign, Address, WalletSignatureError};
use medmesh_store::{AuditAction, TokenScope};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::state::{lock, AppState};

const SESSION_PREFIX: &str = "mms_";
/// Tolerated clock difference between a wallet and the node.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A signed-in wallet.
#[derive(Debug, Clone)]
pub struct Session {
    /// The wallet's address.
    pub address: Address,
    /// When the session ends.
    pub expires: OffsetDateTime,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An institution operator with an API token.
    Operator {
        /// The token's public id.
        token_id: String,
        /// What the token may do.
        scope: TokenScope,
    },
    /// A patient or researcher signed in with a wallet.
    Wallet {
        /// The wallet address.
        address: Address,
    },
}

impl Principal {
    /// How the caller appears in the audit log.
    pub fn actor(&self) -> String {
        match self {
            Principal::Operator { token_id, .. } => format!("token:{token_id}"),
            Principal::Wallet { address } => format!("wallet:{address}"),
        }
    }

    /// Requires an operator token of at least `scope`; audits and refuses otherwise.
    pub async fn require(
        &self,
        state: &AppState,
        scope: TokenScope,
        subject: &str,
    ) -> Result<(), ApiError> {
        let refusal = match self {
            Principal::Operator { scope: have, .. } if *have >= scope => return Ok(()),
            Principal::Operator { scope: have, .. } => {
                format!("this needs a token with scope `{scope}`; yours has `{have}`")
            }
            Principal::Wallet { .. } => format!(
                "this needs an operator token with scope `{scope}`; a wallet gets records through \
                 key release under on-chain grants (POST /v1/records/{{id}}/key)"
            ),
        };
        state
            .audit(
                AuditAction::AccessDenied,
                self.actor(),
                subject.to_string(),
                vec![("reason", refusal.clone())],
            )
            .await;
        Err(ApiError::forbidden(refusal))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let subject = parts.uri.path().to_string();
        let result = authenticate(parts, state).await;
        if let Err(e) = &result {
            state
                .audit(
                    AuditAction::AccessDenied,
                    "anonymous".into(),
                    subject,
                    vec![("reason", format!("{e:?}"))],
                )
                .await;
        }
        result
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthenticated(
            "missing `Authorization: Bearer <token>`; create an operator token with \
             `medmesh token create`, or sign in with a wallet at POST /v1/auth/siwe",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be `Bearer <token>`")
        })?
        .to_string();
    if token.starts_with(SESSION_PREFIX) {
        let mut sessions = lock(&state.inner.sessions);
        return match sessions.get(&token) {
            Some(s) if s.expires > OffsetDateTime::now_utc() => {
                Ok(Principal::Wallet { address: s.address })
            }
            Some(_) => {
                sessions.remove(&token);
                Err(ApiError::unauthenticated(
                    "the session has expired; sign in again",
                ))
            }
            None => Err(ApiError::unauthenticated(
                "unknown session token; sign in again",
            )),
        };
    }
    let store = state.inner.store.clone();
    let found = tokio::task::spawn_blocking(move || store.verify_token(&token))
        .await
        .map_err(|e| ApiError::internal("token check", e))??;
    match found {
        Some(t) => Ok(Principal::Operator {
            token_id: t.id,
            scope: t.scope,
        }),
        None => Err(ApiError::unauthenticated("invalid or revoked token")),
    }
}

/// A fresh random hex string of `bytes` random bytes.
pub(crate) fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| ApiError::internal("random generation", "the system RNG failed"))?;
    Ok(hex::encode(buf))
}

/// Issues a sign-in nonce valid for the configured time.
pub(crate) fn issue_nonce(state: &AppState) -> Result<(String, OffsetDateTime), ApiError> {
    let nonce = random_hex(12)?;
    let expires = OffsetDateTime::now_utc() + state.inner.config.nonce_ttl;
    let mut nonces = lock(&state.inner.nonces);
    let now = OffsetDateTime::now_utc();
    nonces.retain(|_, exp| *exp > now);
    nonces.insert(nonce.clone(), expires);
    Ok((nonce, expires))
}

/// Checks a SIWE message and its signature; on success consumes the nonce and opens a
/// session. Every check names what failed.
pub(crate) fn sign_in(
    state: &AppState,
    message: &str,
    signature: &str,
) -> Result<(String, Session), ApiError> {
    let config = &state.inner.config;
    let parsed: SiweMessage = message
        .parse()
        .map_err(|e| ApiError::bad_request(format!("{e}")))?;
    let address = Address::parse_checksummed(&parsed.address, None).map_err(|_| {
        ApiError::bad_request("the message's address must be EIP-55 checksummed (mixed case)")
    })?;
    if parsed.domain != config.siwe_domain {
        return Err(ApiError::unauthenticated(format!(
            "the message is for domain `{}`, this node is `{}`",
            parsed.domain, config.siwe_domain
        )));
    }
    if parsed.chain_id != config.chain_id {
        return Err(ApiError::unauthenticated(format!(
            "the message is for chain {}, this node uses chain {}",
            parsed.chain_id, config.chain_id
        )));
    }
    let now = OffsetDateTime::now_utc();
    if parsed.issued_at > now + CLOCK_SKEW {
        return Err(ApiError::unauthenticated(
            "the message is issued in the future",
        ));
    }
    if parsed.not_before.is_some_and(|t| t > now + CLOCK_SKEW) {
        return Err(ApiError::unauthenticated(
            "the message is not valid yet (Not Before)",
        ));
    }
    let Some(expires) = parsed.expiration_time else {
        return Err(ApiError::bad_request(
            "the message must have an Expiration Time",
        ));
    };
    if expires <= now {
        return Err(ApiError::unauthenticated("the message has expired"));
    }
    let signer = recover_personal_sign(message.as_bytes(), signature).map_err(|e| match e {
        WalletSignatureError::Malformed => ApiError::bad_request(e.to_string()),
        WalletSignatureError::Unrecoverable => ApiError::unauthenticated(e.to_string()),
    })?;
    if signer != address {
        return Err(ApiError::unauthenticated(format!(
            "the message was signed by {signer}, not by {address}"
        )));
    }
    // Last, so a failed attempt does not burn the nonce of a legitimate one.
    let nonce_valid = lock(&state.inner.nonces)
        .remove(&parsed.nonce)
        .is_some_and(|exp| exp > now);
    if !nonce_valid {
        return Err(ApiError::unauthenticated(
            "unknown, expired or already used nonce; get a fresh one from POST /v1/auth/nonce",
        ));
    }
    let expires = expires.min(now + config.max_session);
    let token = format!("{SESSION_PREFIX}{}", random_hex(32)?);
    let session = Session { address, expires };
    lock(&state.inner.sessions).insert(token.clone(), session.clone());
    Ok((token, session))
}
