//! Who is calling: operators with API tokens (`mm_…`, scoped read/write/admin), and
//! patients or researchers signed in with their wallet (Sign-In with Ethereum,
//! EIP-4361) holding a session token (`mms_…`). Every denial is audited (see
//! `denials.rs`), and every authenticated caller has a rate-limit bucket of its own.
//!
//! Handlers that need a scope take [`Authorized<Read>`], [`Authorized<Write>`] or
//! [`Authorized<Admin>`] before any body extractor, so a caller without the scope is
//! refused (403) before its body is even parsed.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use medmesh_core::siwe::SiweMessage;
use medmesh_crypto::eth::{recover_personal_sign, Address, WalletSignatureError};
use medmesh_store::{AuditAction, AuditEvent, TokenScope};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::ratelimit::address_key;
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
    /// How the caller appears in the audit log (and its rate-limit bucket).
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
        let error = ApiError::forbidden(refusal);
        refused(state, self.actor(), subject, &error).await;
        Err(error)
    }
}

/// Audits a refused request of `actor` on `subject` (coalesced by caller and kind of
/// refusal, see `medmesh_service::DenialLog`).
pub(crate) async fn refused(state: &AppState, actor: String, subject: &str, error: &ApiError) {
    let event = AuditEvent {
        action: AuditAction::AccessDenied,
        actor,
        subject: subject.to_string(),
        detail: BTreeMap::from([("reason".to_string(), error.detail().to_string())]),
    };
    state.services().denials().record(event, error.slug()).await;
}

/// The address a request came from, as its rate-limit and audit key.
pub(crate) fn client_key(parts: &Parts) -> String {
    client_key_of(&parts.extensions)
}

/// [`client_key`] from a request's extensions (where the server put the peer address).
pub(crate) fn client_key_of(extensions: &axum::http::Extensions) -> String {
    extensions.get::<ConnectInfo<SocketAddr>>().map_or_else(
        || "anonymous".to_string(),
        |ConnectInfo(a)| address_key(a.ip()),
    )
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = match authenticate(parts, state).await {
            Ok(p) => p,
            Err(e) => {
                // Refused callers are audited by address: the token they sent proves
                // nothing, and naming it would let anyone write entries in its name.
                refused(state, client_key(parts), parts.uri.path(), &e).await;
                return Err(e);
            }
        };
        // The caller's own bucket: a shared address does not drain it, and rotating
        // tokens does not refill one (bogus ones never get here).
        state
            .inner
            .limiter
            .check(&principal.actor())
            .map_err(ApiError::rate_limited)?;
        Ok(principal)
    }
}

/// A scope an operator token must have.
pub trait RequiredScope: Send + Sync + 'static {
    /// The scope.
    const SCOPE: TokenScope;
}

/// `read` scope.
pub struct Read;
/// `write` scope.
pub struct Write;
/// `admin` scope.
pub struct Admin;

impl RequiredScope for Read {
    const SCOPE: TokenScope = TokenScope::Read;
}
impl RequiredScope for Write {
    const SCOPE: TokenScope = TokenScope::Write;
}
impl RequiredScope for Admin {
    const SCOPE: TokenScope = TokenScope::Admin;
}

/// An operator whose token has scope `S` (checked, and a refusal audited, before any
/// later extractor reads the body).
pub struct Authorized<S: RequiredScope>(pub Principal, PhantomData<S>);

impl<S: RequiredScope> Authorized<S> {
    /// How the caller appears in the audit log.
    pub fn actor(&self) -> String {
        self.0.actor()
    }
}

impl<S: RequiredScope> FromRequestParts<AppState> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(state, S::SCOPE, parts.uri.path()).await?;
        Ok(Self(principal, PhantomData))
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
        return match sessions.get_mut(&token).map(|s| s.clone()) {
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
    match state.services().verify_token(token).await? {
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
    // Expired nonces are refused when used, and forgotten with their generation.
    lock(&state.inner.nonces).insert(nonce.clone(), expires);
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
    // EIP-4361: the URI is the resource the session is for; it must be this node.
    if parsed.uri_authority() != Some(config.siwe_domain.as_str()) {
        return Err(ApiError::unauthenticated(format!(
            "the message's URI `{}` is not this node (http(s)://{})",
            parsed.uri, config.siwe_domain
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
        WalletSignatureError::Malformed | WalletSignatureError::HighS => {
            ApiError::bad_request(e.to_string())
        }
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

/// The client's address key (`ip:…`), for auditing unauthenticated calls.
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(client_key(parts)))
    }
}

/// A caller who may make the node pay gas for a relay: an operator whose token has
/// `write` (checked here, before the body is read), or a wallet, whose own signatures
/// only are relayed (checked against the body's patient by the handler).
pub struct RelayCaller(pub Principal);

impl FromRequestParts<AppState> for RelayCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if let Principal::Operator { .. } = principal {
            principal
                .require(state, TokenScope::Write, parts.uri.path())
                .await?;
        }
        Ok(Self(principal))
    }
}
