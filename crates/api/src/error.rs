//! RFC 9457 problem details: every error answer is `application/problem+json` with a
//! `detail` saying what was wrong and what to do.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use medmesh_core::CoreError;
use medmesh_crypto::CryptoError;
use medmesh_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A problem details object (RFC 9457).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:medmesh:problem:<slug>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong in this case, and what to do.
    pub detail: String,
}

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
                "too many requests for this token; retry after the number of seconds in Retry-After",
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

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownRecord(_) => Self::not_found(e.to_string()),
            StoreError::InvalidInput(_) | StoreError::Core(_) => Self::bad_request(e.to_string()),
            StoreError::Locked(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store-busy", e.to_string())
            }
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
