//! medmesh's peer-to-peer network.
//!
//! - [`Network`]: a libp2p node with a persistent Ed25519 identity: TCP and QUIC,
//!   Noise, Yamux, identify, ping (answered on every connection), a Kademlia DHT (providers of record CIDs),
//!   gossipsub (node presence, dataset announcements), optional mDNS, bootstrap peers
//!   and connection limits.
//! - Bitswap 1.2.0 ([`bitswap::PROTOCOLS`]): any IPFS peer (Kubo, Helia) can fetch our
//!   blocks by CID, and we theirs.
//! - The fast path ([`fastpath::PROTOCOL`]): a record's block graph streamed in one
//!   request per batch, verified block by block, resumable, from several providers
//!   at once ([`Network::fetch_record`]).
//! - Replication ([`replicate::PROTOCOL`]): peers of the owner's choosing hold copies;
//!   a repair pass re-replicates when one disappears ([`Network::repair`]). A holder
//!   serves a bounded number of requests at once, per peer and in total, each within
//!   `replica_timeout_secs` ([`NetConfig`]).
//!
//! Storage is behind [`Blockstore`] and authorization behind [`PeerPolicy`], so the
//! network knows neither how blocks are kept nor how institutions are registered.

mod admission;
pub mod bitswap;
mod blockstore;
mod config;
mod error;
pub mod fastpath;
mod fetch;
mod gossip;
pub mod keyrelease;
mod limits;
mod network;
mod policy;
mod pong;
mod provider_store;
pub mod replicate;
mod scores;
pub mod wire;

pub use blockstore::Blockstore;
pub use config::NetConfig;
pub use error::NetError;
pub use fetch::{FetchOptions, Progress};
pub use keyrelease::{KeyAnswer, KeyCall, KeyHandler};
// What transfers report lives in core, so the API and the SDK show it without libp2p.
pub use libp2p::{Multiaddr, PeerId};
pub use medmesh_core::{FetchReport, PeerInfo, ReplicaOutcome, Transfer};
pub use network::{
    NetEvent, Network, NetworkOptions, ServingStats, DATASETS_TOPIC, PRESENCE_TOPIC,
};
pub use policy::{AllowList, OpenPolicy, PeerPolicy};
pub use scores::PeerScores;

// A poisoned lock only means another thread panicked while holding it; the data are
// plain maps that stay usable, so the network carries on instead of panicking too.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
