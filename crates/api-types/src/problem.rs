//! RFC 9457 problem details: the body of every error answer.

use serde::{Deserialize, Serialize};

/// A problem details object (RFC 9457).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:medmesh:problem:<slug>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong in this case, and what to do.
    pub detail: String,
}
