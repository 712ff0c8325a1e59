//! Consent links and key release.

use serde::{Deserialize, Serialize};

/// Which wallet consents for a record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsentLinkRequest {
    /// The patient's Ethereum address.
    pub patient: String,
}

/// A record's consent link: what the patient needs to sign grants for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsentLinkResponse {
    /// The patient's address.
    pub patient: String,
    /// The record's on-chain consent scope (bytes32 hex; `ScopeKind.Record`).
    pub scope: String,
    /// The scope of all the patient's records at this institution (bytes32 hex;
    /// `ScopeKind.PatientAtInstitution`).
    pub patient_scope: String,
}

/// Where a challenge comes from: this node, or the owner's node (asked over libp2p)
/// for a record of another institution.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams, utoipa::ToSchema))]
pub struct ChallengeQuery {
    /// The record the key request will be about: for a record of another institution,
    /// the challenge comes from its owner's node (found on chain).
    #[serde(default)]
    pub record: Option<String>,
    /// The record owner's node (PeerId), to name it rather than look it up.
    #[serde(default)]
    pub owner: Option<String>,
}

/// A single-use challenge to sign in a key request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChallengeResponse {
    /// Put it in the signed key request; valid for five minutes, once.
    pub challenge: String,
}

/// A grantee's signed key request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyRequestBody {
    /// The grantee's address (EIP-55 or lower case).
    pub grantee: String,
    /// DUO purpose term number (42 for DUO:0000042).
    pub purpose: u32,
    /// The grantee's armored OpenPGP certificate, as published on chain.
    pub certificate: String,
    /// From POST /v1/access/challenge.
    pub challenge: String,
    /// EIP-191 signature by the grantee of the key-request text (see docs/http-api.md).
    pub signature: String,
    /// For a record of another institution: its owner's node (PeerId), which this
    /// node asks over libp2p (the challenge must be that node's). Without it, the node
    /// registered on chain for the record's owner is asked (this node answers for its
    /// own institution's records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A released key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyResponse {
    /// Fingerprint of the certificate the key is wrapped for.
    pub recipient: String,
    /// `openpgp-pkesk6-mlkem768-x25519`.
    pub algorithm: String,
    /// The OpenPGP message holding the data key, hex.
    pub key_wrap: String,
    /// `grant` or `emergency`.
    pub access: String,
    /// Grant or emergency id (bytes32 hex).
    pub access_id: String,
    /// The owner's node that released it, when this node forwarded the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
}
