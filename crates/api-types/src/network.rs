//! Peers, fetching records from them, replicas.

use medmesh_core::{PeerInfo, ReplicaOutcome, Transfer};
use serde::{Deserialize, Serialize};

/// This node on the network.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkStatus {
    /// The node's PeerId.
    pub peer_id: String,
    /// Addresses peers can dial (each ends with `/p2p/<peer id>`).
    pub listen: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
}

/// A peer to dial.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DialRequest {
    /// Its multiaddr, e.g. `/ip4/10.0.0.2/tcp/4001/p2p/12D3KooW…`.
    pub address: String,
}

/// The peer that answered a dial.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dialed {
    /// Its PeerId.
    pub peer_id: String,
}

/// How to fetch a record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplicationRequest {
    /// How many peers should hold a copy (1–16).
    pub copies: u32,
    /// PeerIds allowed to hold copies, in order of preference (at least `copies`).
    pub candidates: Vec<String>,
}

/// A record's replication settings and the answers of the peers asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
