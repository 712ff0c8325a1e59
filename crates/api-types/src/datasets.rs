//! Research datasets: anonymization previews and differentially private counts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Anonymize a table under a policy, storing nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DatasetPreviewRequest {
    /// The policy file's text (TOML, see `docs/anonymization.md`). It cannot name
    /// hierarchy files on the node: give them in `hierarchies`.
    pub policy: String,
    /// Hierarchies by column, in ARX's CSV format (`value;level1;…`).
    #[serde(default)]
    pub hierarchies: BTreeMap<String, String>,
    /// The table as CSV text (read as the policy's `[input]` says); or:
    #[serde(default)]
    pub csv: Option<String>,
    /// This institution's records to build the table from, by the policy's
    /// `[mapping]` (decrypted in memory only).
    #[serde(default)]
    pub records: Option<RecordSelection>,
    /// Rows of the released table to return (0 to 100; default 20).
    #[serde(default)]
    pub sample_rows: Option<usize>,
}

/// Which records a dataset is built from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RecordSelection {
    /// Only this patient's records.
    #[serde(default)]
    pub patient: Option<String>,
    /// Only records of this media type (e.g. `application/fhir+json`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Only records created at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Only records created before this time (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
}

/// What anonymizing would release.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetPreview {
    /// The report: Safe Harbor's action per column, the chosen levels, the suppressed
    /// rows, the metric's value, the class sizes and the transformations checked.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub report: serde_json::Value,
    /// The released table's columns.
    pub columns: Vec<String>,
    /// Its first rows.
    pub sample: Vec<Vec<String>>,
}

/// A dataset's privacy budget to set (once).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    /// Total ε the dataset's queries may spend.
    pub epsilon: f64,
    /// Total δ (0 allows only pure-DP, Laplace, queries).
    #[serde(default)]
    pub delta: f64,
}

/// A dataset's privacy budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetView {
    /// Total ε.
    pub epsilon_total: f64,
    /// Total δ.
    pub delta_total: f64,
    /// ε spent so far.
    pub epsilon_spent: f64,
    /// δ spent so far.
    pub delta_spent: f64,
    /// ε left.
    pub epsilon_remaining: f64,
    /// δ left.
    pub delta_remaining: f64,
}

/// A differentially private count.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CountRequest {
    /// Rows must meet every filter to be counted.
    #[serde(default)]
    pub filters: Vec<CountFilter>,
    /// Columns to group by (empty: one count).
    #[serde(default)]
    pub group_by: Vec<String>,
    /// For each `group_by` column, its public domain: every value it may take, known
    /// without looking at the data. Every combination gets a count.
    #[serde(default)]
    pub group_domains: Vec<Vec<String>>,
    /// `laplace` (ε-DP, discrete Laplace) or `gaussian` ((ε, δ)-DP, discrete Gaussian).
    pub mechanism: String,
    /// The query's ε.
    pub epsilon: f64,
    /// The query's δ (Gaussian only).
    #[serde(default)]
    pub delta: Option<f64>,
    /// Report negative noisy counts as 0.
    #[serde(default)]
    pub clamp_at_zero: bool,
}

/// A condition on one column: exactly one of `equals`, `in`, or `min`/`max`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CountFilter {
    /// The column tested.
    pub column: String,
    /// The value is exactly this.
    #[serde(default)]
    pub equals: Option<String>,
    /// The value is one of these.
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<String>>,
    /// The value is a number at least this.
    #[serde(default)]
    pub min: Option<f64>,
    /// The value is a number at most this.
    #[serde(default)]
    pub max: Option<f64>,
}

/// One cell of a count.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CountCell {
    /// The group's values (empty without a group-by).
    pub key: Vec<String>,
    /// The noisy count (may be negative unless clamped).
    pub count: i64,
}

/// A differentially private answer and what is left of the budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CountResponse {
    /// The mechanism used.
    pub mechanism: String,
    /// ε spent by this answer.
    pub epsilon_spent: f64,
    /// δ spent by this answer.
    pub delta_spent: f64,
    /// The noise's scale (Laplace: 1/ε; Gaussian: σ).
    pub noise_scale: f64,
    /// The group-by columns.
    pub group_by: Vec<String>,
    /// The counts.
    pub counts: Vec<CountCell>,
    /// The dataset's budget after this answer.
    pub budget: BudgetView,
}
