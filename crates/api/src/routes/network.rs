//! `/v1/network` and the record routes that move blocks between nodes: fetch a record
//! from peers, and place replicas of a record on peers.

use std::sync::Arc;

use axum::extract::{Path, State};
use medmesh_core::RecordId;
use medmesh_net::{
    FetchOptions, FetchReport, NetError, Network, PeerId, PeerInfo, ReplicaOutcome, Transfer,
};
use medmesh_store::{Replication, TokenScope};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiJson;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// This node on the network.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NetworkStatus {
    /// The node's PeerId.
    pub peer_id: String,
    /// Addresses peers can dial (each ends with `/p2p/<peer id>`).
    pub listen: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
}

/// A peer to dial.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DialRequest {
    /// Its multiaddr, e.g. `/ip4/10.0.0.2/tcp/4001/p2p/12D3KooW…`.
    pub address: String,
}

/// The peer that answered a dial.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Dialed {
    /// Its PeerId.
    pub peer_id: String,
}

/// How to fetch a record.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// Peers known to hold it (PeerIds); the DHT is asked as well.
    #[serde(default)]
    pub providers: Vec<String>,
    /// `fast_path` (default) or `bitswap`.
    #[serde(default)]
    pub transfer: Transfer,
    /// Chunks per fast-path request, 1–4096 (default 64): smaller batches spread a
    /// record over more providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
}

/// Where a record should be replicated.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicationRequest {
    /// How many peers should hold a copy (1–16).
    pub copies: u32,
    /// PeerIds allowed to hold copies, in order of preference (at least `copies`).
    pub candidates: Vec<String>,
}

/// A record's replication settings and the answers of the peers asked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplicationStatus {
    /// How many peers should hold a copy.
    pub copies: u32,
    /// Peers allowed to hold copies.
    pub candidates: Vec<String>,
    /// Peers that confirmed a copy at the last check.
    pub holders: Vec<String>,
    /// Answers of the peers asked now (empty when only reading the settings).
    #[serde(default)]
    pub outcomes: Vec<ReplicaOutcome>,
}

const MAX_COPIES: u32 = 16;

fn network(state: &AppState) -> Result<&Network, ApiError> {
    state.network().ok_or_else(|| {
        ApiError::unavailable(
            "network-disabled",
            "this node runs without the peer-to-peer network (started with --no-network)",
        )
    })
}

fn parse_peer(text: &str) -> Result<PeerId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a PeerId (12D3KooW…)")))
}

impl From<NetError> for ApiError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::NotFound(_) => ApiError::not_found(e.to_string()),
            NetError::Config(_) | NetError::Dial { .. } => ApiError::bad_request(e.to_string()),
            NetError::Corrupt { .. } | NetError::Refused { .. } | NetError::Peer { .. } => {
                ApiError::bad_gateway(e.to_string())
            }
            NetError::Store(_) => ApiError::internal("the store", e),
            NetError::Stopped => ApiError::unavailable("network-stopped", e.to_string()),
        }
    }
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
    principal: Principal,
) -> Result<axum::Json<NetworkStatus>, ApiError> {
    principal
        .require(&state, TokenScope::Read, "/v1/network")
        .await?;
    let net = network(&state)?;
    Ok(axum::Json(NetworkStatus {
        peer_id: net.peer_id().to_string(),
        listen: net.listen_addrs().iter().map(|a| a.to_string()).collect(),
        peers: net.peers(),
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
    principal: Principal,
    ApiJson(request): ApiJson<DialRequest>,
) -> Result<axum::Json<Dialed>, ApiError> {
    principal
        .require(&state, TokenScope::Admin, "/v1/network/dial")
        .await?;
    let net = network(&state)?;
    let address = request.address.parse().map_err(|e| {
        ApiError::bad_request(format!("`{}` is not a multiaddr: {e}", request.address))
    })?;
    let peer = tokio::time::timeout(std::time::Duration::from_secs(20), net.dial(address))
        .await
        .map_err(|_| ApiError::bad_request("the peer did not answer within 20 s"))??;
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
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<FetchRequest>,
) -> Result<axum::Json<FetchReport>, ApiError> {
    let id: RecordId = id.parse()?;
    principal
        .require(&state, TokenScope::Write, &id.to_string())
        .await?;
    let providers = request
        .providers
        .iter()
        .map(|p| parse_peer(p))
        .collect::<Result<Vec<_>, _>>()?;
    let net = network(&state)?;
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
    Ok(axum::Json(
        net.fetch_record(id, options, Arc::new(|_| {})).await?,
    ))
}

/// Fetches record `id` from the network if this node does not hold it (used by
/// downloads); a no-op without a network.
pub(crate) async fn ensure_local(state: &AppState, id: &RecordId) -> Result<(), ApiError> {
    let Some(net) = state.network() else {
        return Ok(());
    };
    let store = state.store().clone();
    let id_copy = *id;
    if super::blocking("record lookup", move || Ok(store.has_record(&id_copy)?)).await? {
        return Ok(());
    }
    net.fetch_record(*id, FetchOptions::default(), Arc::new(|_| {}))
        .await
        .map(|_| ())
        .map_err(|e| match e {
            NetError::NotFound(_) => ApiError::not_found(format!(
                "no record {id} here, and no peer provides it ({e})"
            )),
            other => other.into(),
        })
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
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<ReplicationStatus>, ApiError> {
    let id: RecordId = id.parse()?;
    principal
        .require(&state, TokenScope::Read, &id.to_string())
        .await?;
    let store = state.store().clone();
    let settings = super::blocking("replication lookup", move || {
        store.meta(&id)?;
        Ok(store.replication(&id)?.unwrap_or_default())
    })
    .await?;
    Ok(axum::Json(status_of(settings, Vec::new())))
}

fn status_of(r: Replication, outcomes: Vec<ReplicaOutcome>) -> ReplicationStatus {
    ReplicationStatus {
        copies: r.copies,
        candidates: r.candidates,
        holders: r.holders,
        outcomes,
    }
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
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ReplicationRequest>,
) -> Result<axum::Json<ReplicationStatus>, ApiError> {
    let id: RecordId = id.parse()?;
    principal
        .require(&state, TokenScope::Write, &id.to_string())
        .await?;
    if request.copies == 0 || request.copies > MAX_COPIES {
        return Err(ApiError::bad_request(format!(
            "`copies` must be 1–{MAX_COPIES}"
        )));
    }
    if request.candidates.len() < request.copies as usize {
        return Err(ApiError::bad_request(format!(
            "{} copies asked but only {} candidates named",
            request.copies,
            request.candidates.len()
        )));
    }
    let net = network(&state)?;
    for c in &request.candidates {
        if parse_peer(c)? == net.peer_id() {
            return Err(ApiError::bad_request(
                "a node cannot be a replica of itself",
            ));
        }
    }
    let store = state.store().clone();
    let previous = {
        let store = store.clone();
        super::blocking("replication lookup", move || {
            store.meta(&id)?;
            Ok(store.replication(&id)?.unwrap_or_default())
        })
        .await?
    };
    let settings = Replication {
        copies: request.copies,
        holders: previous
            .holders
            .into_iter()
            .filter(|h| request.candidates.contains(h))
            .collect(),
        candidates: request.candidates,
    };
    {
        let (store, settings) = (store.clone(), settings.clone());
        super::blocking("replication settings", move || {
            Ok(store.set_replication(&id, &settings)?)
        })
        .await?;
    }
    let outcomes = net.replicate(&store, &id, &settings).await?;
    let saved = super::blocking("replication lookup", move || {
        Ok(store.replication(&id)?.unwrap_or_default())
    })
    .await?;
    Ok(axum::Json(status_of(saved, outcomes)))
}
