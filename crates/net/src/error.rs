//! Errors of the network crate.

use libp2p::PeerId;

/// What went wrong on the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is unusable (bad address, bad limits).
    #[error("network configuration: {0}")]
    Config(String),
    /// The local block store failed.
    #[error("block store: {0}")]
    Store(String),
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
    #[error("peer {peer}: {reason}")]
    Peer {
        /// The peer.
        peer: PeerId,
        /// What happened.
        reason: String,
    },
    /// Dialing failed.
    #[error("cannot connect to {addr}: {reason}")]
    Dial {
        /// The address dialed.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// The network task has stopped.
    #[error("the network has stopped")]
    Stopped,
}
