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
    /// This node's registration in `NodeRegistry`; absent when the node has no account
    /// on the chain (no `--chain-key-file`), so it registers nothing.
    #[serde(default)]
    pub registration: Option<NodeRegistration>,
    /// Anchoring of the node's audit-log head in `AuditAnchor`; absent without an
    /// account.
    #[serde(default)]
    pub anchoring: Option<AuditAnchoring>,
}

/// The node's registration in `NodeRegistry`, as its background task last saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeRegistration {
    /// The node's account (the institution's address), which registers and pays.
    pub account: String,
    /// The libp2p PeerId the node registers.
    pub peer_id: String,
    /// The institution's certificate fingerprint it registers (upper-case hex).
    pub cert_fingerprint: String,
    /// The name it registers.
    pub name: String,
    /// Whether the registry's admins approved the account as an institution.
    pub approved: bool,
    /// Whether the registry lists this very node (PeerId, fingerprint, name).
    pub registered: bool,
    /// Whether the registry was read yet (until then both flags are false).
    pub checked: bool,
    /// The registration transaction this node sent since it started, if any.
    pub transaction: Option<String>,
    /// What stands in the way (not approved, chain unreachable, refused).
    pub error: Option<String>,
}

/// Anchoring of the node's audit log on chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditAnchoring {
    /// Whether the node anchors (`[audit] anchor_interval_secs` is not 0).
    pub enabled: bool,
    /// Longest time between two anchors of a growing log, seconds.
    pub interval_secs: u64,
    /// New entries after which the node anchors sooner (0: by time only).
    pub every_entries: u64,
    /// The newest anchor of the node's account.
    pub last: Option<AuditAnchorInfo>,
    /// Why the last attempt failed or anchoring stopped.
    pub error: Option<String>,
}

/// One anchored audit-log head.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditAnchorInfo {
    /// Position in the account's anchors (`AuditAnchor.anchorAt`).
    pub index: u64,
    /// The anchored head: the hash of audit entry `entries - 1` (hex).
    pub head: String,
    /// Entries it covers.
    pub entries: u64,
    /// When, Unix seconds.
    pub anchored_at: u64,
    /// The transaction, when this node sent it since it started.
    pub transaction: Option<String>,
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
