use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong talking to the chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The RPC call failed (node unreachable, or the call reverted with this reason).
    #[error("chain call failed: {0}")]
    Rpc(String),
    /// A contract deployment produced no address.
    #[error("deploying {0} failed: {1}")]
    Deploy(&'static str, String),
    /// A snapshot (the dev chain's state) could not be read or written.
    #[error("snapshot {path}: {reason}")]
    Snapshot {
        /// The snapshot file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The grant cache snapshot could not be read or written.
    #[error("grant cache snapshot {}: {source}", .path.display())]
    SnapshotIo {
        /// The snapshot file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The grant cache snapshot is not JSON of the shape this version writes.
    #[error(
        "grant cache snapshot {} is unreadable: {source}; delete it and the node rebuilds \
         the cache from the chain's events",
        .path.display()
    )]
    SnapshotFormat {
        /// The snapshot file.
        path: PathBuf,
        /// What the JSON decoder (or encoder) said.
        #[source]
        source: serde_json::Error,
    },
    /// A chain request did not finish in time.
    #[error("{what} did not finish within {} s", .after.as_secs())]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// A background (blocking) task of the chain client panicked or was cancelled.
    #[error("a background task of the chain client failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// Anvil could not be found or started.
    #[error("anvil: {0}")]
    Anvil(String),
    /// A contract refused a transaction of the node's own account (registering its
    /// node, anchoring its audit log): the contract's custom error, decoded.
    #[error("the contract refused it: {0}")]
    Reverted(String),
    /// The local store failed while the audit log was compared with the chain (boxed:
    /// a store error is large, and every chain result carries this type).
    #[error("the local store: {0}")]
    Store(#[source] Box<medmesh_store::StoreError>),
}

impl ChainError {
    pub(crate) fn rpc(e: impl std::fmt::Display) -> Self {
        ChainError::Rpc(e.to_string())
    }
}
