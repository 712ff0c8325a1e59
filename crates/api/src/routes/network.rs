//! `/v1/network` and the record routes that move blocks between nodes: fetch a record
//! from peers, and place replicas of a record on peers.

use axum::extract::{Path, State};
use medmesh_api_types::{
    DialRequest, Dialed, FetchReport, FetchRequest, NetworkStatus, ReplicationRequest,
    ReplicationStatus,
};
use medmesh_core::RecordId;
use medmesh_net::{FetchOptions, PeerId};
use medmesh_service::ReplicationView;
use medmesh_store::Replication;

use super::ApiJson;
use crate::auth::{Admin, Authorized, Read, Write};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

fn parse_peer(text: &str) -> Result<PeerId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a PeerId (12D3KooW…)")))
}

/// The node's PeerId, addresses and connected peers.
#[utoipa::path(
    get,
    path = "/v1/network",
    tag = "network",
    responses(
        (status = 200, description = "Network status", body = NetworkStatus),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Network disabled", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn status(
    State(state): State<AppState>,
    _caller: Authorized<Read>,
) -> Result<axum::Json<NetworkStatus>, ApiError> {
    let view = state.services().network_view()?;
    Ok(axum::Json(NetworkStatus {
        peer_id: view.peer_id.to_string(),
        listen: view.listen.iter().map(|a| a.to_string()).collect(),
        peers: view.peers,
    }))
}

/// Dial a peer by multiaddr.
#[utoipa::path(
    post,
    path = "/v1/network/dial",
    tag = "network",
    request_body = DialRequest,
    responses(
        (status = 200, description = "Connected", body = Dialed),
        (status = 400, description = "Bad address or unreachable peer", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Network disabled", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn dial(
    State(state): State<AppState>,
    _caller: Authorized<Admin>,
    ApiJson(request): ApiJson<DialRequest>,
) -> Result<axum::Json<Dialed>, ApiError> {
    let address = request.address.parse().map_err(|e| {
        ApiError::bad_request(format!("`{}` is not a multiaddr: {e}", request.address))
    })?;
    let peer = state.services().dial(address).await?;
    Ok(axum::Json(Dialed {
        peer_id: peer.to_string(),
    }))
}

/// Fetch a record's blocks from peers into this node (verified block by block) and index
/// it. Resumes from blocks already here.
#[utoipa::path(
    post,
    path = "/v1/records/{id}/fetch",
    tag = "network",
    params(("id" = String, Path, description = "Record id")),
    request_body = FetchRequest,
    responses(
        (status = 200, description = "Fetched (or already here)", body = FetchReport),
        (status = 400, description = "Malformed id or request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No peer provides it", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Providers failed or sent corrupt blocks", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Network disabled", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn fetch(
    State(state): State<AppState>,
    _caller: Authorized<Write>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<FetchRequest>,
) -> Result<axum::Json<FetchReport>, ApiError> {
    let id: RecordId = id.parse()?;
    let providers = request
        .providers
        .iter()
        .map(|p| parse_peer(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = FetchOptions {
        providers,
        transfer: request.transfer,
        ..FetchOptions::default()
    };
    if let Some(batch) = request.batch {
        if !(1..=4096).contains(&batch) {
            return Err(ApiError::bad_request("`batch` must be 1–4096"));
        }
        options.batch = batch as usize;
    }
    Ok(axum::Json(state.services().fetch(id, options).await?))
}

fn status_of(r: Replication, outcomes: Vec<medmesh_core::ReplicaOutcome>) -> ReplicationStatus {
    ReplicationStatus {
        copies: r.copies,
        candidates: r.candidates,
        holders: r.holders,
        outcomes,
    }
}

/// Read a record's replication settings.
#[utoipa::path(
    get,
    path = "/v1/records/{id}/replication",
    tag = "network",
    params(("id" = String, Path, description = "Record id")),
    responses(
        (status = 200, description = "Settings (zero copies if none)", body = ReplicationStatus),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown record", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn replication(
    State(state): State<AppState>,
    _caller: Authorized<Read>,
    Path(id): Path<String>,
) -> Result<axum::Json<ReplicationStatus>, ApiError> {
    let id: RecordId = id.parse()?;
    let settings = state.services().replication(id).await?;
    Ok(axum::Json(status_of(settings, Vec::new())))
}

/// Replicate a record on peers of the owner's choosing: the candidates are asked in
/// order until `copies` hold it; a repair pass keeps it so.
#[utoipa::path(
    put,
    path = "/v1/records/{id}/replication",
    tag = "network",
    params(("id" = String, Path, description = "Record id")),
    request_body = ReplicationRequest,
    responses(
        (status = 200, description = "Settings saved; the outcomes say which peers hold a copy", body = ReplicationStatus),
        (status = 400, description = "Malformed id or request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown record", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Network disabled", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn replicate(
    State(state): State<AppState>,
    _caller: Authorized<Write>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ReplicationRequest>,
) -> Result<axum::Json<ReplicationStatus>, ApiError> {
    let id: RecordId = id.parse()?;
    let ReplicationView {
        replication,
        outcomes,
    } = state
        .services()
        .replicate(id, request.copies, request.candidates)
        .await?;
    Ok(axum::Json(status_of(replication, outcomes)))
}
