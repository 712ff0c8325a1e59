//! `medmesh.toml`: the node's configuration file, written with comments by `init`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use medmesh_store::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use serde::Deserialize;

/// File name of the configuration inside the data dir.
pub const FILE_NAME: &str = "medmesh.toml";

/// The parsed configuration. Unknown keys are errors, so typos do not pass silently.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The institution this node acts for.
    pub institution: String,
    /// Storage settings.
    #[serde(default)]
    pub store: StoreConfig,
    /// HTTP API settings.
    #[serde(default)]
    pub api: ApiSection,
    /// Peer-to-peer settings.
    #[serde(default)]
    pub net: medmesh_net::NetConfig,
}

/// `[api]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

/// The API's default address: loopback only.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8420))
}

/// `[store]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Plaintext bytes per encrypted chunk.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

fn default_chunk_size() -> u32 {
    DEFAULT_CHUNK_SIZE
}

impl Config {
    /// Reads and validates `DATA_DIR/medmesh.toml`.
    pub fn load(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; is {} a medmesh data dir? (create one with `medmesh init`)",
                path.display(),
                data_dir.display()
            )
        })?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&config.store.chunk_size) {
            bail!(
                "{}: store.chunk_size = {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                path.display(),
                config.store.chunk_size
            );
        }
        Ok(config)
    }

    /// The commented file `init` writes.
    pub fn template(institution: &str) -> String {
        format!(
            r#"# medmesh node configuration, created by `medmesh init`. Edit freely;
# unknown keys are rejected so that typos are noticed.

# The institution this node acts for. It is the user id of the institution's
# post-quantum OpenPGP certificate (keys/institution.cert.asc).
institution = {institution:?}

[store]
# Plaintext bytes per encrypted chunk. With the 16-byte AES-GCM tag every block is
# then at most 1 MiB, the largest block IPFS peers accept by default.
# Allowed: {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}.
chunk_size = {DEFAULT_CHUNK_SIZE}

[api]
# Where `medmesh node` serves the HTTP API (OpenAPI document at /openapi.json, docs
# at /docs). Loopback only by default; a public address needs --allow-public and a TLS
# reverse proxy in front, since the node does not terminate TLS itself.
listen = "127.0.0.1:8420"

[net]
# Peer-to-peer addresses (TCP and QUIC). Loopback by default; other institutions reach
# this node on e.g. "/ip4/0.0.0.0/tcp/4001" and "/ip4/0.0.0.0/udp/4001/quic-v1".
listen = ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"]
# Peers dialed at start: "/ip4/ADDRESS/tcp/PORT/p2p/PEER_ID".
bootstrap = []
# Find peers on the local network by mDNS.
mdns = false
# Connection limits (docs/network.md "Limits and abuse" lists every limit).
max_connections = 256
max_connections_per_peer = 4
# Inbound connections from one IP address; raise it on a host running many nodes.
max_connections_per_ip = 8
# Connections kept for known peers (bootstrap, dialled, admitted by the policy).
reserved_connections = 32
# Fast-path requests served at once for one address (fresh peer ids share it).
max_fast_path_requests_per_ip = 16
# Bytes per second served to one peer (bitswap and fast path together).
serve_bytes_per_peer_per_sec = 536870912
# Replicas this node agrees to hold for others.
max_replica_bytes = 17179869184
min_free_disk_bytes = 1073741824
# Seconds between checks that replicated records still have their copies.
repair_interval_secs = 300
# How long (ms) a fetch waits for the DHT to name a provider of a record.
find_timeout_ms = 10000
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_back_and_typos_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), Config::template("St. \"Mary\"")).unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.institution, "St. \"Mary\"");
        assert_eq!(c.store.chunk_size, DEFAULT_CHUNK_SIZE);

        std::fs::write(
            dir.path().join(FILE_NAME),
            "institution = \"x\"\n[store]\nchunk_sise = 5\n",
        )
        .unwrap();
        let err = format!("{:#}", Config::load(dir.path()).unwrap_err());
        assert!(err.contains("chunk_sise"), "{err}");

        std::fs::write(
            dir.path().join(FILE_NAME),
            "institution = \"x\"\n[store]\nchunk_size = 5\n",
        )
        .unwrap();
        let err = format!("{:#}", Config::load(dir.path()).unwrap_err());
        assert!(err.contains("outside"), "{err}");
    }
}
