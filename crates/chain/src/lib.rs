//! medmesh's chain client: bindings to the consent contracts (compiled from
//! `contracts/` by solc-js, artifacts committed), their deployment, and a
//! [`GrantCache`] fed by the contracts' events so that a grant check needs no RPC round
//! trip and a revocation takes effect as soon as its block is synced.
//!
//! Works with any EVM chain over JSON-RPC; tests and the local testnet use anvil from
//! the pinned npm package `@foundry-rs/anvil` ([`anvil`]).

pub mod anvil;

/// The primitives and typed-data traits the bindings use, for callers.
pub use alloy::primitives as alloy_primitives;
pub use alloy::sol_types;
mod cache;
mod deploy;
pub mod devchain;
mod error;
pub mod registry;
pub mod relay;
pub mod release;

pub use cache::{Access, AccessQuery, Denial, GrantCache, GrantView};
pub use deploy::{deploy, Deployment};
pub use error::ChainError;
pub use registry::registered_peer_id;
pub use relay::{relaying_provider, RelayError, Relayed, Relayer};
pub use release::{patient_scope, record_scope, KeyReleaser, KeyRequest, ReleaseError, Released};

/// Rust bindings generated from the committed artifacts in `contracts/artifacts/`.
pub mod bindings {
    #![allow(missing_docs, clippy::too_many_arguments)]
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        NodeRegistry,
        "../../contracts/artifacts/NodeRegistry.json"
    );
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        ConsentRegistry,
        "../../contracts/artifacts/ConsentRegistry.json"
    );
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        AuditAnchor,
        "../../contracts/artifacts/AuditAnchor.json"
    );

    alloy::sol! {
        /// EIP-712 message of a grant a patient signs for a relayer.
        #[derive(Debug)]
        struct GrantConsent {
            address patient;
            address grantee;
            uint8 kind;
            bytes32 scope;
            uint32 purpose;
            uint64 expiry;
            uint256 nonce;
            uint256 deadline;
        }

        /// EIP-712 message of a revocation a patient signs for a relayer.
        #[derive(Debug)]
        struct RevokeConsent {
            address patient;
            address grantee;
            uint8 kind;
            bytes32 scope;
            uint32 purpose;
            uint256 nonce;
            uint256 deadline;
        }
    }
}

/// The EIP-712 domain of a `ConsentRegistry` deployment.
pub fn consent_domain(
    chain_id: u64,
    consent_registry: alloy::primitives::Address,
) -> alloy::sol_types::Eip712Domain {
    alloy::sol_types::eip712_domain! {
        name: "medmesh ConsentRegistry",
        version: "1",
        chain_id: chain_id,
        verifying_contract: consent_registry,
    }
}

/// GA4GH DUO purposes used in examples and tests (the term number of `DUO:00000NN`).
pub mod duo {
    /// DUO:0000042, general research use.
    pub const GENERAL_RESEARCH_USE: u32 = 42;
    /// DUO:0000006, health/medical/biomedical research.
    pub const HEALTH_MEDICAL_BIOMEDICAL: u32 = 6;
}
