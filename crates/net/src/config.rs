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
            kad_protocol: "/medmesh/kad/1.0.0".into(),
            repair_interval_secs: 300,
            block_timeout_secs: 60,
            find_timeout_ms: 10_000,
            max_replications_per_peer: 2,
            max_replications: 8,
            replica_timeout_secs: 3600,
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
}
