//! Network settings (`[net]` in `medmesh.toml`).

use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::NetError;

/// How a node joins the network.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Addresses to listen on: TCP and QUIC (`/ip4/0.0.0.0/udp/4001/quic-v1`).
    pub listen: Vec<Multiaddr>,
    /// Peers dialed at start (`/ip4/…/tcp/…/p2p/12D3KooW…`).
    pub bootstrap: Vec<Multiaddr>,
    /// Find peers on the local network by mDNS (off by default: a hospital LAN is not
    /// where peers should be announced unasked).
    pub mdns: bool,
    /// Most established connections in all.
    pub max_connections: u32,
    /// Most established connections to one peer.
    pub max_connections_per_peer: u32,
    /// Most inbound connections, being set up or established, from one IP address (IPv6:
    /// one /64); more are refused before their handshake. Loopback counts too: raise it
    /// on a host that runs many nodes dialling one another.
    pub max_connections_per_ip: u32,
    /// Of `max_connections`, how many are kept for known peers (bootstrap peers, peers
    /// dialled on request, registered institutions' nodes the policy admitted). Once
    /// others hold `max_connections − reserved_connections`, each new connection closes
    /// the connection of the unknown peer idle the longest.
    pub reserved_connections: u32,
    /// Kademlia protocol id: medmesh nodes form their own DHT, apart from the public
    /// IPFS one, so record CIDs are not announced to the world.
    pub kad_protocol: String,
    /// Seconds between checks that replicated records still have their copies.
    pub repair_interval_secs: u64,
    /// Seconds a peer has to send a block asked by bitswap.
    pub block_timeout_secs: u64,
    /// Milliseconds a fetch waits for the DHT to name a provider of a record nobody is
    /// known to hold (a record announced a moment ago takes a little while to arrive).
    pub find_timeout_ms: u64,
    /// Most replication requests from one peer that this node serves at once (each is
    /// a fetch of a whole record); more are refused until one finishes.
    pub max_replications_per_peer: usize,
    /// Most replication requests this node serves at once, from all peers together.
    pub max_replications: usize,
    /// Seconds a replica may take to fetch: the holder gives up after this long, and
    /// the asking side waits this long (plus a short margin for the holder's answer).
    pub replica_timeout_secs: u64,
    /// Bytes per second this node serves to one peer, bitswap and fast path together
    /// (bursts of a quarter of it); a peer asking faster is slowed down, not refused.
    pub serve_bytes_per_peer_per_sec: u64,
    /// Fast-path requests from one peer served at once; more are refused until one
    /// ends (a fetch uses 2 per provider by default).
    pub max_fast_path_requests_per_peer: usize,
    /// Fast-path requests served at once, from all peers together.
    pub max_fast_path_requests: usize,
    /// Fast-path requests served at once for all peers connected from one address
    /// (IPv6: one /64): fresh peer ids from one address cannot take the whole total.
    pub max_fast_path_requests_per_ip: usize,
    /// Inbound bitswap streams one peer may hold open (Kubo and Helia use one).
    pub max_bitswap_streams_per_peer: usize,
    /// Inbound bitswap streams from all peers together.
    pub max_bitswap_streams: usize,
    /// Memory that inbound frames still being read may hold, from all peers together
    /// (a large frame reserves its size before its body is read).
    pub frame_budget_bytes: usize,
    /// Seconds a peer has to finish sending a frame once its length has arrived.
    pub frame_timeout_secs: u64,
    /// Keys this node may announce in the DHT as their provider (one per record held).
    /// Other peers' provider records are counted apart and cannot use up this limit.
    pub max_provided_keys: usize,
    /// Other peers' provider records this node keeps for the DHT, in all; past it an
    /// ADD_PROVIDER is refused (until records expire, 48 h after their last renewal).
    pub max_peer_provider_records: usize,
    /// Other peers' provider records kept for one key (the first ones stay).
    pub max_providers_per_key: usize,
    /// Provider records of one other peer kept (its share of
    /// `max_peer_provider_records`).
    pub max_provider_records_per_peer: usize,
    /// Gossip messages taken per second from one peer that forwards them, sustained;
    /// more are dropped (not passed on, the peer not penalised).
    pub gossip_messages_per_sec: u32,
    /// Gossip messages one peer may forward at once above that rate.
    pub gossip_burst: u32,
    /// Largest record (ciphertext bytes, from its manifest) a replication request may
    /// make this node hold.
    pub max_replica_bytes: u64,
    /// Bytes of replicas one peer may make this node take on in 24 hours.
    pub max_replica_bytes_per_peer_per_day: u64,
    /// Free disk space a replica must leave; requests that would leave less are
    /// refused.
    pub min_free_disk_bytes: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/127.0.0.1/tcp/4001".parse().expect("valid multiaddr"),
                "/ip4/127.0.0.1/udp/4001/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
            ],
            bootstrap: Vec::new(),
            mdns: false,
            max_connections: 256,
            max_connections_per_peer: 4,
            max_connections_per_ip: 8,
            reserved_connections: 32,
            kad_protocol: "/medmesh/kad/1.0.0".into(),
            repair_interval_secs: 300,
            block_timeout_secs: 60,
            find_timeout_ms: 10_000,
            max_replications_per_peer: 2,
            max_replications: 8,
            replica_timeout_secs: 3600,
            serve_bytes_per_peer_per_sec: 512 << 20,
            max_fast_path_requests_per_peer: 8,
            max_fast_path_requests: 64,
            max_fast_path_requests_per_ip: 16,
            max_bitswap_streams_per_peer: 4,
            max_bitswap_streams: 256,
            frame_budget_bytes: 64 << 20,
            frame_timeout_secs: 30,
            max_provided_keys: 10_000_000,
            max_peer_provider_records: 65_536,
            max_providers_per_key: 20,
            max_provider_records_per_peer: 8_192,
            gossip_messages_per_sec: 20,
            gossip_burst: 100,
            max_replica_bytes: 16 << 30,
            max_replica_bytes_per_peer_per_day: 64 << 30,
            min_free_disk_bytes: 1 << 30,
        }
    }
}

impl NetConfig {
    /// Checks the settings; the error names the bad one.
    pub fn validate(&self) -> Result<(), NetError> {
        if self.max_connections == 0 || self.max_connections_per_peer == 0 {
            return Err(NetError::Config(
                "max_connections and max_connections_per_peer must be at least 1".into(),
            ));
        }
        if !self.kad_protocol.starts_with('/') {
            return Err(NetError::Config(format!(
                "kad_protocol `{}` must start with `/`",
                self.kad_protocol
            )));
        }
        if self.repair_interval_secs == 0 || self.block_timeout_secs == 0 {
            return Err(NetError::Config(
                "repair_interval_secs and block_timeout_secs must be at least 1".into(),
            ));
        }
        if self.max_replications_per_peer == 0 || self.max_replications == 0 {
            return Err(NetError::Config(
                "max_replications_per_peer and max_replications must be at least 1".into(),
            ));
        }
        if self.max_replications_per_peer > self.max_replications {
            return Err(NetError::Config(format!(
                "max_replications_per_peer ({}) must not exceed max_replications ({})",
                self.max_replications_per_peer, self.max_replications
            )));
        }
        if self.replica_timeout_secs == 0 {
            return Err(NetError::Config(
                "replica_timeout_secs must be at least 1".into(),
            ));
        }
        for (name, value) in [
            (
                "serve_bytes_per_peer_per_sec",
                self.serve_bytes_per_peer_per_sec as usize,
            ),
            (
                "max_fast_path_requests_per_peer",
                self.max_fast_path_requests_per_peer,
            ),
            ("max_fast_path_requests", self.max_fast_path_requests),
            (
                "max_fast_path_requests_per_ip",
                self.max_fast_path_requests_per_ip,
            ),
            (
                "max_bitswap_streams_per_peer",
                self.max_bitswap_streams_per_peer,
            ),
            ("max_bitswap_streams", self.max_bitswap_streams),
            ("frame_timeout_secs", self.frame_timeout_secs as usize),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip as usize,
            ),
            ("max_provided_keys", self.max_provided_keys),
            ("max_peer_provider_records", self.max_peer_provider_records),
            ("max_providers_per_key", self.max_providers_per_key),
            (
                "max_provider_records_per_peer",
                self.max_provider_records_per_peer,
            ),
            (
                "gossip_messages_per_sec",
                self.gossip_messages_per_sec as usize,
            ),
            ("gossip_burst", self.gossip_burst as usize),
            ("max_replica_bytes", self.max_replica_bytes as usize),
            (
                "max_replica_bytes_per_peer_per_day",
                self.max_replica_bytes_per_peer_per_day as usize,
            ),
        ] {
            if value == 0 {
                return Err(NetError::Config(format!("{name} must be at least 1")));
            }
        }
        if self.reserved_connections >= self.max_connections {
            return Err(NetError::Config(format!(
                "reserved_connections ({}) must be below max_connections ({})",
                self.reserved_connections, self.max_connections
            )));
        }
        if self.frame_budget_bytes < 4 << 20 {
            return Err(NetError::Config(format!(
                "frame_budget_bytes ({}) must hold at least one 4 MiB bitswap message",
                self.frame_budget_bytes
            )));
        }
        for addr in &self.bootstrap {
            let has_peer = addr
                .iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)));
            if !has_peer {
                return Err(NetError::Config(format!(
                    "bootstrap address {addr} must end with /p2p/<peer id>"
                )));
            }
        }
        Ok(())
    }

    /// [`NetConfig::repair_interval_secs`] as a duration.
    pub fn repair_interval(&self) -> Duration {
        Duration::from_secs(self.repair_interval_secs)
    }

    /// [`NetConfig::find_timeout_ms`] as a duration.
    pub fn find_timeout(&self) -> Duration {
        Duration::from_millis(self.find_timeout_ms)
    }

    /// [`NetConfig::replica_timeout_secs`] as a duration.
    pub fn replica_timeout(&self) -> Duration {
        Duration::from_secs(self.replica_timeout_secs)
    }

    /// [`NetConfig::frame_timeout_secs`] as a duration.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_secs(self.frame_timeout_secs)
    }

    /// [`NetConfig::block_timeout_secs`] as a duration.
    pub fn block_timeout(&self) -> Duration {
        Duration::from_secs(self.block_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_limits_default_and_are_validated() {
        let config: NetConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(
            (
                config.max_replications_per_peer,
                config.max_replications,
                config.replica_timeout_secs
            ),
            (2, 8, 3600)
        );
        config.validate().expect("defaults are valid");
        for bad in [
            NetConfig {
                max_replications_per_peer: 0,
                ..NetConfig::default()
            },
            NetConfig {
                max_replications: 0,
                ..NetConfig::default()
            },
            NetConfig {
                max_replications_per_peer: 9,
                max_replications: 8,
                ..NetConfig::default()
            },
            NetConfig {
                replica_timeout_secs: 0,
                ..NetConfig::default()
            },
        ] {
            let err = bad.validate().expect_err("invalid limits are refused");
            assert!(err.to_string().contains("replica"), "{err}");
        }
    }

    #[test]
    fn serving_limits_default_and_are_validated() {
        let config = NetConfig::default();
        assert_eq!(config.serve_bytes_per_peer_per_sec, 512 << 20);
        assert_eq!(config.frame_budget_bytes, 64 << 20);
        for (bad, named) in [
            (
                NetConfig {
                    max_fast_path_requests: 0,
                    ..NetConfig::default()
                },
                "max_fast_path_requests must",
            ),
            (
                NetConfig {
                    serve_bytes_per_peer_per_sec: 0,
                    ..NetConfig::default()
                },
                "serve_bytes_per_peer_per_sec",
            ),
            (
                NetConfig {
                    frame_budget_bytes: 1 << 20,
                    ..NetConfig::default()
                },
                "frame_budget_bytes",
            ),
        ] {
            let err = bad.validate().expect_err("invalid limits are refused");
            assert!(err.to_string().contains(named), "{err}");
        }
    }
}
