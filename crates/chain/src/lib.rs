//! medmesh's chain client: bindings to the consent contracts (compiled from
//! `contracts/` by solc-js, artifacts committed), their deployment, and a
//! [`GrantCache`] fed by the contracts' events so that a grant check needs no RPC round
//! trip and a revocation takes effect as soon as its block is synced. The node's own
//! account also registers the node ([`registry`], [`Relayer::register_node`]) and
//! anchors its audit log's head ([`anchor`], [`Relayer::anchor_audit`]).
//!
//! Works with any EVM chain over JSON-RPC; tests and the local testnet use anvil from
//! the pinned npm package `@foundry-rs/anvil` ([`anvil`]).

pub mod anvil;

/// The primitives and typed-data traits the bindings use, for callers.
pub use alloy::primitives as alloy_primitives;
pub use alloy::sol_types;
pub mod anchor;
mod cache;
pub mod datasets;
mod deploy;
pub mod devchain;
mod error;
pub mod registry;
pub mod relay;
pub mod release;

pub use anchor::{Anchor, AnchorMismatch, AnchorReport};
pub use cache::{
    Access, AccessQuery, Denial, GrantCache, GrantView, SyncReport, SNAPSHOT_EVERY_BLOCKS,
};
pub use datasets::DatasetListed;
pub use deploy::{deploy, Deployment, VERIFIER_SIZES};
pub use error::ChainError;
pub use registry::{
    registered_node, registered_peer_id, registration, AccountRegistration, NodeEntry,
    RegisteredNode,
};
pub use relay::{relaying_provider, AnchorSent, RelayError, Relayed, Relayer, Sent};
pub use release::{
    denial_event, patient_scope, record_scope, KeyReleaser, KeyRequest, ReleaseError, Released,
};

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
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        DatasetRegistry,
        "../../contracts/artifacts/DatasetRegistry.json"
    );
    // The Groth16 verifiers of medmesh-zk's circuit sizes (same interface, one
    // verifying key each).
    alloy::sol!(
        #[sol(rpc)]
        KAnonVerifier64,
        "../../contracts/artifacts/KAnonVerifier64.json"
    );
    alloy::sol!(
        #[sol(rpc)]
        KAnonVerifier4096,
        "../../contracts/artifacts/KAnonVerifier4096.json"
    );
    alloy::sol!(
        #[sol(rpc)]
        KAnonVerifier16384,
        "../../contracts/artifacts/KAnonVerifier16384.json"
    );
    alloy::sol!(
        #[sol(rpc)]
        KAnonVerifier32768,
        "../../contracts/artifacts/KAnonVerifier32768.json"
    );

    pub use medmesh_consent::{GrantConsent, RevokeConsent};
}

pub use medmesh_consent::{consent_domain, duo};
