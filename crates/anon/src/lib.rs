//! medmesh de-identification and anonymization.
//!
//! - [`Table`]: columns of dictionary-coded strings, read from CSV (or built from
//!   records by the extractors).
//! - [`Hierarchy`]: generalization hierarchies in ARX's CSV format, and builders for
//!   bands, dates and ZIP codes.
//! - [`PrivacyModel`]s (k-anonymity, l-diversity, t-closeness) and [`Metric`]s, as ARX
//!   defines them; [`Anonymizer`] finds the optimal full-domain generalization over the
//!   lattice of levels — the same optimum ARX finds — and writes the released table.
//! - [`safe_harbor`]: HIPAA Safe Harbor de-identification, with a report per column.
//! - [`extract`]: a table from FHIR R4, HL7 v2 or CSV records by a declared mapping.
//! - [`policy`]: the policy file that ties it together ([`policy::release`]).
//! - [`dp`]: differentially private counts with exact discrete samplers and a budget.

mod anonymize;
pub mod dp;
mod error;
pub mod extract;
mod hierarchy;
mod metric;
mod model;
pub mod policy;
pub mod safe_harbor;
mod search;
mod table;

pub use anonymize::{Anonymizer, Config, Outcome, Solution};
pub use error::AnonError;
pub use extract::{csv_table, fhir_table, hl7_table, Format, Mapping, MappingColumn};
pub use hierarchy::{EncodedHierarchy, Hierarchy, Level, TOP};
pub use metric::Metric;
pub use model::PrivacyModel;
pub use policy::{Policy, Release};
pub use safe_harbor::{ColumnKind, ColumnRule, SafeHarborPolicy, SafeHarborReport};
pub use table::{Column, Table};
