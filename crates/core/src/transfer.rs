//! What moving records between nodes reports: the transfer kind, a fetch's report, a
//! connected peer and a replica request's outcome. They live here, not in the network
//! crate, because the HTTP API and the SDK show them without compiling libp2p.

use serde::{Deserialize, Serialize};

/// How blocks move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Transfer {
    /// medmesh's streaming protocol (default).
    #[default]
    FastPath,
    /// IPFS bitswap, one want per block (for interop and comparison).
    Bitswap,
}

/// What a fetch did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FetchReport {
    /// The record.
    pub record: String,
    /// Blocks of the record (manifest included).
    pub blocks_total: u64,
    /// Blocks that came over the network now.
    pub blocks_fetched: u64,
    /// Blocks that were already stored here (a resumed fetch has some).
    pub blocks_present: u64,
    /// Bytes that came over the network now.
    pub bytes_fetched: u64,
    /// Providers blocks came from.
    pub providers: Vec<String>,
    /// Providers that sent a corrupt block and were banned.
    pub banned: Vec<String>,
    /// Whether the record entered the index now (false if it was there already).
    pub imported: bool,
}

/// A connected peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PeerInfo {
    /// Its PeerId.
    pub peer_id: String,
    /// Addresses it listens on (from identify) or that we reached it at.
    pub addresses: Vec<String>,
    /// Its agent string (`medmesh/0.1.0`, `kubo/…`, `helia/…`).
    pub agent: Option<String>,
    /// Seconds since the connection was established.
    pub connected_secs: u64,
}

/// The outcome of asking one peer to hold a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaOutcome {
    /// The peer asked.
    pub peer: String,
    /// Whether it now holds the record.
    pub ok: bool,
    /// Why not, if not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Blocks it had to fetch (0 when it already held them all).
    pub blocks_fetched: u64,
}
