//! Grants seen on chain, and relaying signed grants and revocations.

use serde::{Deserialize, Serialize};

/// The chain this node uses, and where the contracts are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChainInfo {
    /// EIP-155 chain id (the EIP-712 domain's `chainId`).
    pub chain_id: u64,
    /// `NodeRegistry` address.
    pub node_registry: String,
    /// `ConsentRegistry` address (the EIP-712 domain's `verifyingContract`).
    pub consent_registry: String,
    /// `AuditAnchor` address.
    pub audit_anchor: String,
}

/// A grant as the node's cache sees it (synced to the latest block).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantEntry {
    /// Grant id (bytes32 hex).
    pub id: String,
    /// Patient address.
    pub patient: String,
    /// Grantee address.
    pub grantee: String,
    /// `ScopeKind`: 0 record, 1 patient at institution, 2 dataset.
    pub kind: u8,
    /// Scope (bytes32 hex).
    pub scope: String,
    /// DUO purpose term number.
    pub purpose: u32,
    /// Expiry, Unix seconds.
    pub expiry: u64,
    /// Whether revoked.
    pub revoked: bool,
}

/// A grant signed by the patient (EIP-712 `GrantConsent`, domain from GET /v1/chain).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedGrant {
    /// Patient address.
    pub patient: String,
    /// Grantee address.
    pub grantee: String,
    /// `ScopeKind`.
    pub kind: u8,
    /// Scope (bytes32 hex).
    pub scope: String,
    /// DUO purpose term number.
    pub purpose: u32,
    /// Expiry, Unix seconds.
    pub expiry: u64,
    /// The patient's next nonce.
    pub nonce: u64,
    /// Unix seconds after which the signature is refused.
    pub deadline: u64,
    /// 65-byte signature, hex.
    pub signature: String,
}

/// A revocation signed by the patient (EIP-712 `RevokeConsent`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedRevocation {
    /// Patient address.
    pub patient: String,
    /// Grantee address.
    pub grantee: String,
    /// `ScopeKind`.
    pub kind: u8,
    /// Scope (bytes32 hex).
    pub scope: String,
    /// DUO purpose term number.
    pub purpose: u32,
    /// The patient's next nonce.
    pub nonce: u64,
    /// Unix seconds after which the signature is refused.
    pub deadline: u64,
    /// 65-byte signature, hex.
    pub signature: String,
}

/// A relayed transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayResponse {
    /// Transaction hash.
    pub transaction: String,
    /// Block number.
    pub block: u64,
    /// The grant created or revoked.
    pub grant_id: String,
}
