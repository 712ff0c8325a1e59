//! Reading `NodeRegistry`: which node an institution has registered.

use alloy::primitives::Address;
use alloy::providers::DynProvider;

use crate::bindings::NodeRegistry;
use crate::ChainError;

/// The node an institution registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredNode {
    /// Its PeerId bytes (multihash).
    pub peer_id: Vec<u8>,
    /// The fingerprint of the institution's v6 OpenPGP certificate (its signing and
    /// key-receiving identity).
    pub certificate: [u8; 32],
}

/// The PeerId bytes (multihash) of the node `institution` registered, if it is an
/// approved institution with an active node; `None` otherwise.
pub async fn registered_peer_id(
    provider: &DynProvider,
    registry: Address,
    institution: Address,
) -> Result<Option<Vec<u8>>, ChainError> {
    Ok(registered_node(provider, registry, institution)
        .await?
        .map(|node| node.peer_id))
}

/// The node `institution` registered (PeerId and certificate fingerprint), if it is
/// an approved institution with an active node; `None` otherwise.
pub async fn registered_node(
    provider: &DynProvider,
    registry: Address,
    institution: Address,
) -> Result<Option<RegisteredNode>, ChainError> {
    let registry = NodeRegistry::new(registry, provider.clone());
    if !registry
        .isRegistered(institution)
        .call()
        .await
        .map_err(ChainError::rpc)?
    {
        return Ok(None);
    }
    let node = registry
        .nodeOf(institution)
        .call()
        .await
        .map_err(ChainError::rpc)?;
    Ok(Some(RegisteredNode {
        peer_id: node.peerId.to_vec(),
        certificate: node.certFingerprint.0,
    }))
}
