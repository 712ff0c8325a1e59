//! Deploying the three contracts.

use alloy::primitives::Address;
use alloy::providers::Provider;

use crate::bindings::{AuditAnchor, ConsentRegistry, NodeRegistry};
use crate::ChainError;

/// Addresses of a medmesh deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deployment {
    /// `NodeRegistry`.
    pub node_registry: Address,
    /// `ConsentRegistry`.
    pub consent_registry: Address,
    /// `AuditAnchor`.
    pub audit_anchor: Address,
    /// Block of the first deployment transaction (where event scans start).
    pub from_block: u64,
}

/// Deploys `NodeRegistry` (governed by `admins`, the deployer if empty), then
/// `ConsentRegistry` and `AuditAnchor` pointing at it.
pub async fn deploy<P: Provider + Clone>(
    provider: &P,
    admins: Vec<Address>,
) -> Result<Deployment, ChainError> {
    let from_block = provider.get_block_number().await.map_err(ChainError::rpc)?;
    let registry = NodeRegistry::deploy(provider.clone(), admins)
        .await
        .map_err(|e| ChainError::Deploy("NodeRegistry", e.to_string()))?;
    let consent = ConsentRegistry::deploy(provider.clone(), *registry.address())
        .await
        .map_err(|e| ChainError::Deploy("ConsentRegistry", e.to_string()))?;
    let anchor = AuditAnchor::deploy(provider.clone(), *registry.address())
        .await
        .map_err(|e| ChainError::Deploy("AuditAnchor", e.to_string()))?;
    Ok(Deployment {
        node_registry: *registry.address(),
        consent_registry: *consent.address(),
        audit_anchor: *anchor.address(),
        from_block,
    })
}
