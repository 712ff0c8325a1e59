//! Reading `NodeRegistry`: which node an institution has registered.

use alloy::primitives::Address;
use alloy::providers::DynProvider;

use crate::bindings::NodeRegistry;
use crate::ChainError;

/// The PeerId bytes (multihash) of the node `institution` registered, if it is an
/// approved institution with an active node; `None` otherwise.
pub async fn registered_peer_id(
    provider: &DynProvider,
    registry: Address,
    institution: Address,
) -> Result<Option<Vec<u8>>, ChainError> {
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
    Ok(Some(node.peerId.to_vec()))
}
