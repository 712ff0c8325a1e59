//! Records: upload answers, search pages, metadata, removal.

use medmesh_core::{RecordId, RecordMeta};
use serde::{Deserialize, Serialize};

/// A record and its metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordEntry {
    /// The record id (CID of its manifest).
    pub id: RecordId,
    /// Its metadata.
    pub meta: RecordMeta,
}

/// One page of a record search.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordPage {
    /// Records, oldest first.
    pub records: Vec<RecordEntry>,
    /// Pass as `since` to get the next page; absent on the last page.
    pub next_since: Option<String>,
}

/// A record's metadata and manifest summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordInfo {
    /// The record id.
    pub id: RecordId,
    /// Its metadata.
    pub meta: RecordMeta,
    /// Number of encrypted chunks.
    pub chunks: usize,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Fingerprints of the certificates the data key is wrapped for.
    pub recipients: Vec<String>,
    /// Fingerprint of the certificate that signed the manifest.
    pub signer: String,
}

/// What deleting a record freed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Removed {
    /// Blocks deleted.
    pub blocks_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}
