//! Errors of the network crate.
//!
//! Errors of local libraries (the store, libp2p, tokio) are kept as `#[source]`, so a
//! caller can look at the cause and a report shows the whole chain; what a peer says
//! (a refusal, a protocol violation) is a string by nature.

use libp2p::PeerId;

/// What went wrong on the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is unusable (bad address, bad limits).
    #[error("network configuration: {0}")]
    Config(String),
    /// Setting up a part of the swarm failed (transport, listener, protocol handler).
    #[error("network setup, {what}: {source}")]
    Setup {
        /// The part being set up (`TCP transport`, `listening on …`).
        what: String,
        /// The libp2p error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The local block store failed.
    #[error("block store: {0}")]
    Store(#[from] medmesh_store::StoreError),
    /// A background task (a blocking store call, a transfer worker) panicked or was
    /// cancelled.
    #[error("a network task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The DHT refused to record that we provide a block.
    #[error("provider record: {0}")]
    Provide(#[source] libp2p::kad::store::Error),
    /// A gossipsub message could not be published (often: no subscribed peer yet).
    #[error("gossip not sent: {0}")]
    Gossip(#[source] libp2p::gossipsub::PublishError),
    /// No peer could provide what was asked.
    #[error("{0}")]
    NotFound(String),
    /// A peer sent bytes that do not hash to the CID they claim.
    #[error("peer {peer} sent a corrupt block {cid}")]
    Corrupt {
        /// The peer that sent it.
        peer: PeerId,
        /// The block it claimed to send.
        cid: String,
    },
    /// A peer refused a request, with its reason.
    #[error("peer {peer} refused: {reason}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// What it said.
        reason: String,
    },
    /// A peer broke the protocol or the connection failed.
    #[error("peer {peer}: {reason}{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Peer {
        /// The peer.
        peer: PeerId,
        /// What happened.
        reason: String,
        /// The I/O error of the stream, when that is what happened.
        #[source]
        source: Option<std::io::Error>,
    },
    /// Dialing failed.
    #[error("cannot connect to {addr}: {reason}{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Dial {
        /// The address dialed.
        addr: String,
        /// Why it failed, in a few words.
        reason: String,
        /// The libp2p error, when the swarm reported one (not for a timeout).
        #[source]
        source: Option<Box<libp2p::swarm::DialError>>,
    },
    /// The network task has stopped.
    #[error("the network has stopped")]
    Stopped,
}

impl NetError {
    /// A protocol violation by `peer` (no underlying error).
    pub(crate) fn peer(peer: PeerId, reason: impl Into<String>) -> Self {
        NetError::Peer {
            peer,
            reason: reason.into(),
            source: None,
        }
    }

    /// A stream to `peer` failed while doing `what`.
    pub(crate) fn peer_io(peer: PeerId, what: impl Into<String>, source: std::io::Error) -> Self {
        NetError::Peer {
            peer,
            reason: what.into(),
            source: Some(source),
        }
    }

    /// `what` failed while setting up the swarm: `.map_err(NetError::setup("…"))`.
    pub(crate) fn setup<E>(what: impl Into<String>) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let what = what.into();
        move |source| NetError::Setup {
            what,
            source: Box::new(source),
        }
    }
}
