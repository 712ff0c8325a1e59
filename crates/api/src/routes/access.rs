//! Key release over HTTP: consent links, challenges and key requests. The checks are
//! `medmesh_chain::KeyReleaser`'s, the same for every transport.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use medmesh_chain::{patient_scope, record_scope, Access, KeyRequest, ReleaseError};
use medmesh_core::RecordId;
use medmesh_crypto::eth::Address;
use medmesh_store::TokenScope;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{blocking, ApiJson};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::state::{AppState, ChainServices};

pub(crate) fn chain(state: &AppState) -> Result<&ChainServices, ApiError> {
    state.inner.chain.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-chain",
            "this node runs without a chain (start it with --chain-rpc and --chain-deployment), \
             so it cannot check consent or release keys",
        )
    })
}

/// Which wallet consents for a record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsentLinkRequest {
    /// The patient's Ethereum address.
    pub patient: String,
}

/// A record's consent link: what the patient needs to sign grants for it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsentLinkResponse {
    /// The patient's address.
    pub patient: String,
    /// The record's on-chain consent scope (bytes32 hex; `ScopeKind.Record`).
    pub scope: String,
    /// The scope of all the patient's records at this institution (bytes32 hex;
    /// `ScopeKind.PatientAtInstitution`).
    pub patient_scope: String,
}

/// Link a record to the patient wallet that consents for it.
#[utoipa::path(
    put,
    path = "/v1/records/{id}/consent-link",
    tag = "access",
    params(("id" = String, Path, description = "Record id")),
    request_body = ConsentLinkRequest,
    responses(
        (status = 200, body = ConsentLinkResponse),
        (status = 400, description = "Malformed id, body or address; or linked to another wallet", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown record", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn link(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ConsentLinkRequest>,
) -> Result<axum::Json<ConsentLinkResponse>, ApiError> {
    let id: RecordId = id.parse()?;
    principal
        .require(&state, TokenScope::Write, &id.to_string())
        .await?;
    let store = state.store().clone();
    let actor = principal.actor();
    let link = blocking("consent link", move || {
        Ok(store.link_patient(&id, &body.patient, &actor)?)
    })
    .await?;
    let scope =
        record_scope(&id, &link.salt).map_err(|e| ApiError::internal("consent scope", e))?;
    let patient: medmesh_crypto::eth::Address = link
        .patient
        .parse()
        .map_err(|e| ApiError::internal("consent link", e))?;
    let patient_scope = patient_scope(&state.inner.keys.certificate.id(), patient);
    Ok(axum::Json(ConsentLinkResponse {
        patient: link.patient,
        scope: scope.to_string(),
        patient_scope: patient_scope.to_string(),
    }))
}

/// A single-use challenge to sign in a key request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChallengeResponse {
    /// Put it in the signed key request; valid for five minutes, once.
    pub challenge: String,
}

/// Get a key-request challenge.
#[utoipa::path(
    post,
    path = "/v1/access/challenge",
    tag = "access",
    responses(
        (status = 200, body = ChallengeResponse),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No chain configured", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn challenge(
    State(state): State<AppState>,
    _principal: Principal,
) -> Result<axum::Json<ChallengeResponse>, ApiError> {
    let challenge = chain(&state)?
        .releaser
        .challenge()
        .map_err(|e| ApiError::internal("challenge", e))?;
    Ok(axum::Json(ChallengeResponse { challenge }))
}

/// A grantee's signed key request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyRequestBody {
    /// The grantee's address (EIP-55 or lower case).
    pub grantee: String,
    /// DUO purpose term number (42 for DUO:0000042).
    pub purpose: u32,
    /// The grantee's armored OpenPGP certificate, as published on chain.
    pub certificate: String,
    /// From POST /v1/access/challenge.
    pub challenge: String,
    /// EIP-191 signature by the grantee of the key-request text (see docs/http-api.md).
    pub signature: String,
}

/// A released key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyResponse {
    /// Fingerprint of the certificate the key is wrapped for.
    pub recipient: String,
    /// `openpgp-pkesk6-mlkem768-x25519`.
    pub algorithm: String,
    /// The OpenPGP message holding the data key, hex.
    pub key_wrap: String,
    /// `grant` or `emergency`.
    pub access: String,
    /// Grant or emergency id (bytes32 hex).
    pub access_id: String,
}

/// Ask for a record's data key (released only under a valid on-chain grant).
#[utoipa::path(
    post,
    path = "/v1/records/{id}/key",
    tag = "access",
    params(("id" = String, Path, description = "Record id")),
    request_body = KeyRequestBody,
    responses(
        (status = 200, body = KeyResponse),
        (status = 400, description = "Malformed request or certificate", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated, bad challenge, or not signed by the grantee", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Consent does not allow it (no grant, expired, revoked, wrong purpose), certificate not the published one, or record not linked", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown record", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No chain configured, or the chain is unreachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn request_key(
    State(state): State<AppState>,
    _principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<KeyRequestBody>,
) -> Result<axum::Json<KeyResponse>, ApiError> {
    let record: RecordId = id.parse()?;
    let grantee: Address = body
        .grantee
        .parse()
        .map_err(|_| ApiError::bad_request("`grantee` is not an Ethereum address"))?;
    let releaser = chain(&state)?.releaser.clone();
    let request = KeyRequest {
        record,
        grantee,
        purpose: body.purpose,
        certificate: body.certificate.into_bytes(),
        challenge: body.challenge,
        signature: body.signature,
    };
    let released = releaser.release(&request).await.map_err(|e| match e {
        ReleaseError::BadChallenge | ReleaseError::NotGrantee(_) => {
            ApiError::unauthenticated(e.to_string())
        }
        ReleaseError::UnknownRecord(_) => ApiError::not_found(e.to_string()),
        ReleaseError::BadCertificate(_) => ApiError::bad_request(e.to_string()),
        ReleaseError::NotLinked(_)
        | ReleaseError::CertificateMismatch { .. }
        | ReleaseError::Denied(_) => ApiError::forbidden(e.to_string()),
        ReleaseError::Chain(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "chain", e.to_string())
        }
        ReleaseError::Internal(_) => ApiError::internal("key release", e),
    })?;
    let (access, access_id) = match released.access {
        Access::Granted { grant_id, .. } => ("grant", grant_id.to_string()),
        Access::Emergency { emergency_id, .. } => ("emergency", emergency_id.to_string()),
    };
    Ok(axum::Json(KeyResponse {
        recipient: released.key_wrap.recipient.to_string(),
        algorithm: "openpgp-pkesk6-mlkem768-x25519".into(),
        key_wrap: hex::encode(&released.key_wrap.message),
        access: access.into(),
        access_id,
    }))
}
