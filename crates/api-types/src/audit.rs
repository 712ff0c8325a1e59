//! The hash-chained audit log.

use serde::{Deserialize, Serialize};

/// One audit entry (see `docs/architecture.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntryView {
    /// Position in the log.
    pub seq: u64,
    /// When (RFC 3339).
    pub time: String,
    /// What happened (`record_write`, `record_read`, `access_denied`, …).
    pub action: String,
    /// Who did it.
    pub actor: String,
    /// What it was done to.
    pub subject: String,
    /// Further facts.
    pub detail: std::collections::BTreeMap<String, String>,
    /// Hash of the previous entry.
    pub prev: String,
    /// Hash of this entry.
    pub hash: String,
}

/// A page of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    /// Entries in order.
    pub entries: Vec<AuditEntryView>,
    /// `from` of the next page; absent on the last.
    pub next_from: Option<u64>,
}

/// Result of walking the chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditVerification {
    /// Whether the whole chain verifies.
    pub ok: bool,
    /// Entries checked (when ok).
    pub entries: Option<u64>,
    /// Hash of the last entry (when ok): what gets anchored.
    pub head: Option<String>,
    /// First bad entry (when not ok).
    pub broken_at: Option<u64>,
    /// What is wrong with it (when not ok).
    pub reason: Option<String>,
}
