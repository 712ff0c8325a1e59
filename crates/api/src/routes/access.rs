//! Key release over HTTP: consent links, challenges and key requests. The checks are
//! the service layer's (`medmesh_chain::KeyReleaser`), the same for every transport.

use axum::extract::{Path, Query, State};
use medmesh_api_types::{
    ChallengeQuery, ChallengeResponse, ConsentLinkRequest, ConsentLinkResponse, KeyRequestBody,
    KeyResponse,
};
use medmesh_chain::KeyRequest;
use medmesh_core::RecordId;
use medmesh_crypto::eth::Address;

use super::ApiJson;
use crate::auth::{Authorized, Principal, Write};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

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
    caller: Authorized<Write>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ConsentLinkRequest>,
) -> Result<axum::Json<ConsentLinkResponse>, ApiError> {
    let id: RecordId = id.parse()?;
    let link = state
        .services()
        .link_patient(id, body.patient, &caller.actor())
        .await?;
    Ok(axum::Json(ConsentLinkResponse {
        patient: link.patient.to_string(),
        scope: link.scope.to_string(),
        patient_scope: link.patient_scope.to_string(),
    }))
}

/// Get a key-request challenge.
#[utoipa::path(
    post,
    path = "/v1/access/challenge",
    tag = "access",
    params(ChallengeQuery),
    responses(
        (status = 200, body = ChallengeResponse),
        (status = 400, description = "Malformed record id or PeerId", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The record's owner has no node this node can find", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The owner's node cannot be reached or refused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No chain configured", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn challenge(
    State(state): State<AppState>,
    _principal: Principal,
    Query(query): Query<ChallengeQuery>,
) -> Result<axum::Json<ChallengeResponse>, ApiError> {
    let record = query.record.as_deref().map(str::parse).transpose()?;
    let owner = parse_owner(query.owner.as_deref())?;
    Ok(axum::Json(ChallengeResponse {
        challenge: state.services().challenge_for(record, owner).await?,
    }))
}

fn parse_owner(owner: Option<&str>) -> Result<Option<medmesh_net::PeerId>, ApiError> {
    owner
        .map(|o| {
            o.trim()
                .parse()
                .map_err(|_| ApiError::bad_request(format!("`owner` `{o}` is not a PeerId")))
        })
        .transpose()
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
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The record's owner has no node this node can find", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The owner's node cannot be reached", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No chain configured, or the chain is unreachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn request_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<KeyRequestBody>,
) -> Result<axum::Json<KeyResponse>, ApiError> {
    let record: RecordId = id.parse()?;
    let grantee: Address = body
        .grantee
        .parse()
        .map_err(|_| ApiError::bad_request("`grantee` is not an Ethereum address"))?;
    let owner = parse_owner(body.owner.as_deref())?;
    let request = KeyRequest {
        record,
        grantee,
        purpose: body.purpose,
        certificate: body.certificate.into_bytes(),
        challenge: body.challenge,
        signature: body.signature,
    };
    let released = state
        .services()
        .request_key(request, &principal.actor(), owner)
        .await?;
    Ok(axum::Json(KeyResponse {
        recipient: released.key_wrap.recipient.to_string(),
        algorithm: "openpgp-pkesk6-mlkem768-x25519".into(),
        key_wrap: hex::encode(&released.key_wrap.message),
        access: released.access,
        access_id: released.access_id,
        released_by: released.released_by.map(|p| p.to_string()),
    }))
}
