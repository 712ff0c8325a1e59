//! The consent vocabulary a patient's wallet, a researcher's SDK and a node must agree
//! on byte for byte: the EIP-712 messages a patient signs for a relayer, their domain,
//! the text a grantee signs to ask for a key, and GA4GH DUO purpose codes.
//!
//! It is a crate of its own so wallets and the SDK get it without the chain client
//! (RPC providers, the embedded EVM) that nodes use.

pub use alloy_primitives;
pub use alloy_sol_types;

use alloy_primitives::Address;
use medmesh_core::RecordId;

alloy_sol_types::sol! {
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

/// The EIP-712 domain of a `ConsentRegistry` deployment.
pub fn consent_domain(chain_id: u64, consent_registry: Address) -> alloy_sol_types::Eip712Domain {
    alloy_sol_types::eip712_domain! {
        name: "medmesh ConsentRegistry",
        version: "1",
        chain_id: chain_id,
        verifying_contract: consent_registry,
    }
}

/// The exact text a grantee signs (EIP-191) to ask an owner node for a record's key.
pub fn key_request_message(
    record: &RecordId,
    grantee: Address,
    purpose: u32,
    challenge: &str,
) -> String {
    format!(
        "medmesh key request\nrecord: {record}\ngrantee: {}\npurpose: DUO:{purpose:07}\nchallenge: {challenge}",
        grantee.to_checksum(None)
    )
}

/// GA4GH DUO purposes used in examples and tests (the term number of `DUO:00000NN`).
pub mod duo {
    /// DUO:0000042, general research use.
    pub const GENERAL_RESEARCH_USE: u32 = 42;
    /// DUO:0000006, health/medical/biomedical research.
    pub const HEALTH_MEDICAL_BIOMEDICAL: u32 = 6;
}
