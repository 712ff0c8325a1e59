//! RFC 9457 problem details: every error answer is `application/problem+json` with a
//! `detail` saying what was wrong and what to do.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use medmesh_anon::AnonError;
pub use medmesh_api_types::Problem;
use medmesh_chain::{RelayError, ReleaseError};
use medmesh_core::CoreError;
use medmesh_crypto::CryptoError;
use medmesh_net::NetError;
use medmesh_service::ServiceError;
use medmesh_store::StoreError;

/// An error answer; converts from every library error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    detail: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, a problem slug and a detail message.
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            slug,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// 401: no or invalid credentials.
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    /// 403: authenticated but not allowed.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404: no such thing.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// 502: a peer this request depended on failed.
    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "peer-failed", detail)
    }

    /// 503: a service this node runs without.
    pub fn unavailable(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, slug, detail)
    }

    /// 413: the body is larger than allowed.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the request body exceeds the {limit}-byte limit of this endpoint"),
        )
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "too many requests from this client; retry after the number of seconds in Retry-After",
            )
        }
    }

    /// 500: something broke on our side (details go to the log, not the client).
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context} failed on the node; its log has the details"),
        )
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem's slug: a stable code of its kind (`forbidden`, `unauthenticated`…).
    pub fn slug(&self) -> &'static str {
        self.slug
    }

    /// What went wrong, as the client reads it (also the audit log's reason).
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: format!("urn:medmesh:problem:{}", self.slug),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
        };
        let mut response = (self.status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The one mapping from the node's errors to HTTP answers.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidInput(_) | ServiceError::Core(_) => {
                Self::bad_request(e.to_string())
            }
            ServiceError::Store(e) => e.into(),
            ServiceError::Net(e) => (*e).into(),
            ServiceError::NotFoundAnywhere { .. } => Self::not_found(e.to_string()),
            ServiceError::Release(e) => e.into(),
            ServiceError::Relay(e) => e.into(),
            ServiceError::Chain(_) => Self::unavailable("chain", e.to_string()),
            ServiceError::NoChain => Self::unavailable("no-chain", e.to_string()),
            ServiceError::NoRelayer => Self::unavailable("no-relayer", e.to_string()),
            ServiceError::NoNetwork => Self::unavailable("network-disabled", e.to_string()),
            ServiceError::KeysLocked => Self::unavailable("keys-locked", e.to_string()),
            ServiceError::OwnerUnreachable { .. } => Self::bad_gateway(e.to_string()),
            ServiceError::OwnerNotFound { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "owner-not-found",
                e.to_string(),
            ),
            // The owner's refusal keeps its meaning: a grant is missing (403), the
            // request is the caller's to fix (401/400), or the owner cannot answer (502).
            ServiceError::OwnerRefused { ref code, .. } => match code.as_str() {
                "not-allowed" | "certificate-mismatch" => Self::forbidden(e.to_string()),
                "bad-challenge" | "not-grantee" => Self::unauthenticated(e.to_string()),
                "bad-certificate" | "bad-request" => Self::bad_request(e.to_string()),
                _ => Self::bad_gateway(e.to_string()),
            },
            ServiceError::Busy(_) => Self::unavailable("busy", e.to_string()),
            ServiceError::NoTelemetry => Self::unavailable("no-telemetry", e.to_string()),
            ServiceError::NotFound(_) => Self::not_found(e.to_string()),
            ServiceError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            ServiceError::Anon(ref anon) => match anon {
                AnonError::BudgetExceeded { .. } => Self::new(
                    StatusCode::FORBIDDEN,
                    "privacy-budget-exceeded",
                    e.to_string(),
                ),
                AnonError::Randomness => Self::internal("sampling noise", e),
                _ => Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "anonymization",
                    e.to_string(),
                ),
            },
            ServiceError::Internal(what) => Self::internal(what, "see the node's log"),
            ServiceError::Task { what, .. } => Self::internal(what, e),
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownRecord(_)
            | StoreError::UnknownToken(_)
            | StoreError::UnknownDevice(_) => Self::not_found(e.to_string()),
            StoreError::InvalidInput(_) | StoreError::Core(_) => Self::bad_request(e.to_string()),
            StoreError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            StoreError::Locked(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store-busy", e.to_string())
            }
            StoreError::IndexLocked => Self::unavailable("keys-locked", e.to_string()),
            StoreError::HeldForOther { .. } => Self::new(
                StatusCode::CONFLICT,
                "held-for-another-institution",
                e.to_string(),
            ),
            StoreError::Corrupt(_) | StoreError::MissingBlock { .. } => {
                tracing::error!(error = %e, "store integrity problem");
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "integrity", e.to_string())
            }
            StoreError::Crypto(c) => c.into(),
            StoreError::Io { .. } | StoreError::Index(_) => Self::internal("the store", e),
        }
    }
}

impl From<CryptoError> for ApiError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::ChunkAuthentication { .. } | CryptoError::BadSignature { .. } => {
                tracing::error!(error = %e, "record failed verification");
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "integrity", e.to_string())
            }
            CryptoError::NotARecipient { .. } => Self::forbidden(e.to_string()),
            other => Self::internal("cryptography", other),
        }
    }
}

impl From<NetError> for ApiError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::NotFound(_) => Self::not_found(e.to_string()),
            NetError::Config(_) | NetError::Dial { .. } => Self::bad_request(e.to_string()),
            NetError::Corrupt { .. } | NetError::Refused { .. } | NetError::Peer { .. } => {
                Self::bad_gateway(e.to_string())
            }
            NetError::Store(e) => e.into(),
            NetError::Stopped => Self::unavailable("network-stopped", e.to_string()),
            NetError::Gossip(_) => Self::unavailable("gossip-not-sent", e.to_string()),
            NetError::Setup { .. } | NetError::Task(_) | NetError::Provide(_) => {
                Self::internal("the network", e)
            }
        }
    }
}

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::BadChallenge | ReleaseError::NotGrantee(_) => {
                Self::unauthenticated(e.to_string())
            }
            ReleaseError::BadCertificate(_) => Self::bad_request(e.to_string()),
            // The service answers these as `NotAllowed`; mapped alike all the same.
            ReleaseError::UnknownRecord(_)
            | ReleaseError::NotLinked(_)
            | ReleaseError::CertificateMismatch { .. }
            | ReleaseError::Denied(_)
            | ReleaseError::NotAllowed => Self::forbidden(e.to_string()),
            ReleaseError::Chain(_) => Self::unavailable("chain", e.to_string()),
            other => Self::internal("key release", other),
        }
    }
}

impl From<RelayError> for ApiError {
    fn from(e: RelayError) -> Self {
        match e {
            RelayError::Rejected(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "consent-rejected",
                e.to_string(),
            ),
            RelayError::Unconfirmed { .. } => Self::unavailable("relay-unconfirmed", e.to_string()),
            RelayError::Chain(_) => Self::unavailable("chain", e.to_string()),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                e.body_text(),
            );
        }
        // One status for every other malformed body (syntax, shape, missing JSON
        // content type), so clients handle 400 and 413 only.
        Self::bad_request(e.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request(e.body_text())
    }
}
