//! What can go wrong, named so that the message tells the user what to fix.

/// An anonymization error. Messages name the column, value or model at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnonError {
    /// A CSV file could not be read.
    #[error("CSV line {line}: {source}")]
    Csv {
        /// The line (1 is the header).
        line: u64,
        /// What the CSV reader said.
        #[source]
        source: csv::Error,
    },
    /// A row has the wrong number of values.
    #[error("row {row} has {found} values, the header names {expected} columns")]
    RowWidth {
        /// Row number (1 = first data row).
        row: usize,
        /// Columns in the header.
        expected: usize,
        /// Values found.
        found: usize,
    },
    /// A column name is empty.
    #[error("a column has an empty name")]
    EmptyColumnName,
    /// Two columns have the same name.
    #[error("column `{0}` appears twice")]
    DuplicateColumn(String),
    /// A column named by a policy or a query is not in the table.
    #[error("unknown column `{column}` (the table has: {known})")]
    UnknownColumn {
        /// The name asked for.
        column: String,
        /// The columns there are.
        known: String,
    },
    /// A hierarchy file is malformed.
    #[error("hierarchy of `{column}`, line {line}: {problem}")]
    Hierarchy {
        /// The column the hierarchy is for.
        column: String,
        /// Line of the hierarchy (1-based; 0 when not line-specific).
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// A value of the data is not in its column's hierarchy.
    #[error("value `{value}` of column `{column}` is not in its hierarchy")]
    MissingFromHierarchy {
        /// The column.
        column: String,
        /// The value.
        value: String,
    },
    /// A privacy model's parameters cannot be met or make no sense.
    #[error("privacy model `{model}`: {problem}")]
    Model {
        /// The model as written.
        model: String,
        /// What is wrong.
        problem: String,
    },
    /// The policy file is wrong.
    #[error("policy: {0}")]
    Policy(String),
    /// The policy file is not valid TOML for a policy.
    #[error("policy file: {0}")]
    PolicyToml(#[source] toml::de::Error),
    /// The lattice of generalizations is too large to search.
    #[error("the search space has {nodes} transformations; at most {limit} can be searched")]
    LatticeTooLarge {
        /// Product of the hierarchies' heights.
        nodes: u128,
        /// The limit.
        limit: u128,
    },
    /// Writing a file failed.
    #[error("writing {what}: {source}")]
    Io {
        /// What was being written.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
