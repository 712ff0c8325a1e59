//! Health and administration.

use serde::{Deserialize, Serialize};

/// Liveness and a few facts about the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// Always `ok` when the node answers.
    pub status: String,
    /// medmesh version.
    pub version: String,
    /// Seconds since the API started.
    pub uptime_seconds: u64,
}

/// What garbage collection did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GcResult {
    /// Unreferenced blocks deleted.
    pub blocks_removed: u64,
    /// Leftover temp files deleted.
    pub temp_files_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// What a consistency check found.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckResult {
    /// Records checked.
    pub records: u64,
    /// Blocks re-hashed.
    pub blocks_checked: u64,
    /// Blocks no record references (`POST /v1/admin/gc` removes them).
    pub unreferenced_blocks: u64,
    /// Problems found, one line each; empty when the store is consistent.
    pub problems: Vec<String>,
}

/// A token to create.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenRequest {
    /// What it is for.
    pub name: String,
    /// `read`, `write` or `admin`.
    pub scope: String,
}

/// An API token (without its secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenView {
    /// Public id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Scope.
    pub scope: String,
    /// Creation time (RFC 3339).
    pub created: String,
}

/// A new token: the secret is shown only here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    /// The token.
    #[serde(flatten)]
    pub token: TokenView,
    /// The bearer secret (`mm_…`); store it now, it cannot be shown again.
    pub secret: String,
}
