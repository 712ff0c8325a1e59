//! Deploying the contracts.

use alloy::primitives::Address;
use alloy::providers::Provider;

use crate::bindings::{
    AuditAnchor, ConsentRegistry, DatasetRegistry, KAnonVerifier16384, KAnonVerifier32768,
    KAnonVerifier4096, KAnonVerifier64, NodeRegistry,
};
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
    /// `DatasetRegistry` (absent from deployments made before it existed).
    #[serde(default)]
    pub dataset_registry: Option<Address>,
    /// Block of the first deployment transaction (where event scans start).
    pub from_block: u64,
}

/// The circuit sizes (rows) whose verifiers a deployment has.
pub const VERIFIER_SIZES: [u32; 4] = [64, 4096, 16384, 32768];

/// Deploys `NodeRegistry` (governed by `admins`, the deployer if empty), then
/// `ConsentRegistry` and `AuditAnchor` pointing at it, the k-anonymity verifiers of
/// [`VERIFIER_SIZES`] and the `DatasetRegistry` using them.
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
    let failed = |name: &'static str| {
        move |e: alloy::contract::Error| ChainError::Deploy(name, e.to_string())
    };
    let verifiers = vec![
        KAnonVerifier64::deploy_builder(provider.clone())
            .deploy()
            .await
            .map_err(failed("KAnonVerifier64"))?,
        KAnonVerifier4096::deploy_builder(provider.clone())
            .deploy()
            .await
            .map_err(failed("KAnonVerifier4096"))?,
        KAnonVerifier16384::deploy_builder(provider.clone())
            .deploy()
            .await
            .map_err(failed("KAnonVerifier16384"))?,
        KAnonVerifier32768::deploy_builder(provider.clone())
            .deploy()
            .await
            .map_err(failed("KAnonVerifier32768"))?,
    ];
    let datasets = DatasetRegistry::deploy(
        provider.clone(),
        *registry.address(),
        VERIFIER_SIZES.to_vec(),
        verifiers,
    )
    .await
    .map_err(failed("DatasetRegistry"))?;
    Ok(Deployment {
        node_registry: *registry.address(),
        consent_registry: *consent.address(),
        audit_anchor: *anchor.address(),
        dataset_registry: Some(*datasets.address()),
        from_block,
    })
}
