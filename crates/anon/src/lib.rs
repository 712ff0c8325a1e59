//! medmesh de-identification and anonymization.
//!
//! - [`Table`]: columns of dictionary-coded strings, read from CSV (or built from
//!   records by the extractors).
//! - [`Hierarchy`]: generalization hierarchies in ARX's CSV format, and builders for
//!   bands, dates and ZIP codes.
//! - [`PrivacyModel`]s (k-anonymity, l-diversity, t-closeness) and [`Metric`]s, as ARX
//!   defines them; [`Anonymizer`] finds the optimal full-domain generalization over the
//!   lattice of levels — the same optimum ARX finds — and writes the released table.

mod anonymize;
mod error;
mod hierarchy;
mod metric;
mod model;
mod search;
mod table;

pub use anonymize::{Anonymizer, Config, Outcome, Solution};
pub use error::AnonError;
pub use hierarchy::{EncodedHierarchy, Hierarchy, Level, TOP};
pub use metric::Metric;
pub use model::PrivacyModel;
pub use table::{Column, Table};
