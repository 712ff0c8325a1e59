use thiserror::Error;

/// Errors from parsing or validating domain values. Each says what was wrong.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CoreError {
    /// A string is not a CIDv1 record id.
    #[error("`{input}` is not a record id (expected a CIDv1 such as bafy…): {reason}")]
    InvalidRecordId {
        /// What the user gave.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A content type is not `type/subtype`.
    #[error("`{0}` is not a content type (expected type/subtype, e.g. application/fhir+json)")]
    InvalidContentType(String),
    /// A patient reference is empty, too long or contains control characters.
    #[error("invalid patient reference: {0}")]
    InvalidPatientRef(String),
    /// An institution id is not a hex fingerprint.
    #[error("`{0}` is not an institution id (expected a hex certificate fingerprint)")]
    InvalidInstitutionId(String),
    /// A block's bytes do not hash to its CID.
    #[error("block {cid} is corrupt: its bytes hash to {actual}")]
    HashMismatch {
        /// The CID the block is stored under.
        cid: String,
        /// The CID its bytes actually have.
        actual: String,
    },
    /// A CID uses a hash function medmesh does not verify.
    #[error("CID {0} uses an unsupported multihash (medmesh verifies sha2-256)")]
    UnsupportedHash(String),
    /// A manifest could not be decoded or encoded.
    #[error("manifest is malformed: {0}")]
    MalformedManifest(String),
}
