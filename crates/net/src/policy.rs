//! Who may ask this node for what. Blocks are public ciphertext: any peer may fetch
//! them. Holding replicas for others (disk and bandwidth) is for peers a policy admits;
//! with a chain, that is nodes of registered institutions (`NodeRegistry`).

use futures::future::BoxFuture;
use libp2p::PeerId;
use medmesh_core::InstitutionId;

/// The peer authorization hook.
pub trait PeerPolicy: Send + Sync + 'static {
    /// Whether `peer`, saying it acts for `institution`, may ask this node to hold a
    /// replica. `Err` carries the reason sent back to the peer.
    fn may_replicate<'a>(
        &'a self,
        peer: PeerId,
        institution: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// Whether `certificate` is the certificate of `institution` (the one it signs its
    /// records with), so that a replica request's manifest may be checked against it.
    /// The default trusts the certificate the peer sent, which still stops forged or
    /// altered manifests; with a chain, the registry must name it.
    fn vouches_for<'a>(
        &'a self,
        _institution: Option<&'a str>,
        _certificate: &'a InstitutionId,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Admits every peer: for a node without a chain (development, closed networks).
pub struct OpenPolicy;

impl PeerPolicy for OpenPolicy {
    fn may_replicate<'a>(
        &'a self,
        _peer: PeerId,
        _institution: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Admits only the listed peers.
pub struct AllowList(pub Vec<PeerId>);

impl PeerPolicy for AllowList {
    fn may_replicate<'a>(
        &'a self,
        peer: PeerId,
        _institution: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), String>> {
        let allowed = self.0.contains(&peer);
        Box::pin(async move {
            if allowed {
                Ok(())
            } else {
                Err(format!(
                    "peer {peer} is not on this node's replication allow list"
                ))
            }
        })
    }
}
