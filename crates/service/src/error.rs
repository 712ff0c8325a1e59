//! What a node operation can fail with. Each variant keeps its cause as `source`; the
//! transports map variants to their own answers (HTTP status, MQTT error topic, exit
//! code) in one place each.

use medmesh_chain::{ChainError, RelayError, ReleaseError};
use medmesh_core::CoreError;
use medmesh_net::NetError;
use medmesh_store::StoreError;

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller's input is unusable; nothing was changed.
    #[error("{0}")]
    InvalidInput(String),
    /// A domain value is malformed (record id, patient reference, media type…).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The peer-to-peer network refused or failed (boxed: network errors are large
    /// and every operation's `Result` would carry their size).
    #[error(transparent)]
    Net(Box<NetError>),
    /// No record here, and no peer provides it.
    #[error("no record {record} here, and no peer provides it ({source})")]
    NotFoundAnywhere {
        /// The record asked for.
        record: String,
        /// What the network said.
        #[source]
        source: Box<NetError>,
    },
    /// Key release refused or failed.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// Relaying a signed grant or revocation failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The chain could not be read.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The node runs without a chain.
    #[error(
        "this node runs without a chain (start it with --chain-rpc and --chain-deployment), \
         so it cannot check consent or release keys"
    )]
    NoChain,
    /// The node has no account to pay for relays.
    #[error(
        "this node has no account on its chain to pay for relays (start it with --chain-key-file)"
    )]
    NoRelayer,
    /// A key request for a record of another institution whose node is not known.
    #[error("record {record} belongs to institution {institution}, whose node this node cannot find on chain (no chain here, or the institution registered no node); name the owner's node (`owner`, its PeerId)")]
    OwnerNotFound {
        /// The record.
        record: String,
        /// Its owner's certificate fingerprint.
        institution: String,
    },
    /// The owner's node could not be asked (offline, unreachable, not answering).
    #[error("the record owner's node {owner} cannot be reached: {source}")]
    OwnerUnreachable {
        /// Its PeerId.
        owner: String,
        /// What the network said.
        #[source]
        source: Box<NetError>,
    },
    /// The owner's node refused (its answer, unchanged).
    #[error("the record owner's node {owner} refused: {message}")]
    OwnerRefused {
        /// Its PeerId.
        owner: String,
        /// Its stable code (`not-allowed`, `bad-challenge`, …).
        code: String,
        /// What it said.
        message: String,
    },
    /// The operation signs or decrypts, and the institution's keys were not unlocked.
    #[error("this operation needs the institution's keys, which were not unlocked")]
    KeysLocked,
    /// The node runs without the peer-to-peer network.
    #[error("this node runs without the peer-to-peer network (started with --no-network)")]
    NoNetwork,
    /// The node runs without device telemetry (no MQTT bridge).
    #[error("this node does not take device telemetry (it runs without the MQTT bridge)")]
    NoTelemetry,
    /// What the caller named does not exist here (a device, an alert).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the object's state (an alert acknowledged already).
    #[error("{0}")]
    Conflict(String),
    /// The node is at a limit (concurrent reads, ingests); retrying later works.
    #[error("{0}")]
    Busy(String),
    /// Anonymization or a differentially private query refused the input (a policy,
    /// a hierarchy, a model, a query) or the privacy budget.
    #[error(transparent)]
    Anon(#[from] medmesh_anon::AnonError),
    /// Something broke on this node that is not the caller's doing.
    #[error("{0} on the node")]
    Internal(&'static str),
    /// A background task of the node died.
    #[error("{what} stopped unexpectedly")]
    Task {
        /// What was being done.
        what: &'static str,
        /// Why it stopped.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl From<NetError> for ServiceError {
    fn from(e: NetError) -> Self {
        ServiceError::Net(Box::new(e))
    }
}

/// Runs blocking work (redb, block files, key operations) on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| ServiceError::Task { what, source })?
}
