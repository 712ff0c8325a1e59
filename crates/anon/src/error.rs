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
    /// A mapping file is not valid TOML for a mapping.
    #[error("mapping file: {0}")]
    MappingToml(#[source] toml::de::Error),
    /// A mapping makes no sense: the wrong format for the records, an unknown row type,
    /// no columns.
    #[error("mapping: {0}")]
    Mapping(String),
    /// A mapping column's path cannot be parsed.
    #[error("mapping column `{column}`: path `{path}`: {problem}")]
    MappingPath {
        /// The mapping column.
        column: String,
        /// The path as written.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A FHIR document is not JSON.
    #[error("FHIR document {document}: {source}")]
    Json {
        /// Which document (1 = the first given).
        document: usize,
        /// What the JSON parser said (it names the line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A FHIR document is JSON, but not FHIR resources.
    #[error("FHIR document {document}: {problem}")]
    FhirDocument {
        /// Which document (1 = the first given).
        document: usize,
        /// What is wrong.
        problem: String,
    },
    /// HL7 v2 text that cannot be split into messages.
    #[error("HL7 input {input}, segment {segment}: {problem}")]
    Hl7 {
        /// Which input text (1 = the first given).
        input: usize,
        /// Which segment of that input (1 = its first non-empty line).
        segment: usize,
        /// What is wrong.
        problem: String,
    },
    /// A column declared `required` has no value in a record.
    #[error("column `{column}` is required, but `{path}` has no value in {record}")]
    MissingRequired {
        /// The mapping column.
        column: String,
        /// Its path.
        path: String,
        /// The record at fault (resource type and id, or message and segment).
        record: String,
    },
    /// A path cannot be followed in a record, or does not end at a single value.
    #[error("column `{column}`: path `{path}` in {record}: {problem}")]
    Extract {
        /// The mapping column.
        column: String,
        /// Its path.
        path: String,
        /// The record at fault (resource type and id, or message and segment).
        record: String,
        /// What is wrong.
        problem: String,
    },
    /// A Safe Harbor column kind is not one of the kinds there are.
    #[error("unknown column kind `{kind}` (the kinds are: {kinds})")]
    UnknownColumnKind {
        /// The name given.
        kind: String,
        /// The kinds there are, comma-separated.
        kinds: &'static str,
    },
    /// A column of the table has no Safe Harbor rule.
    #[error(
        "column `{column}` is not declared: give it one of the kinds {kinds} \
         (`plain` if it holds no identifier)"
    )]
    UndeclaredColumn {
        /// The column.
        column: String,
        /// The kinds there are, comma-separated.
        kinds: &'static str,
    },
    /// A value of a Safe Harbor column cannot be read as its kind requires.
    #[error(
        "column `{column}` ({kind}), row {row}: `{value}` is not {expected}; correct the \
         value (or leave it empty if it is missing), or the column's kind"
    )]
    SafeHarborValue {
        /// The column.
        column: String,
        /// The kind it is declared as.
        kind: &'static str,
        /// The first row holding the value (1 = first data row).
        row: usize,
        /// The value.
        value: String,
        /// What a value of the kind looks like.
        expected: &'static str,
    },
    /// A column declared `plain` holds a value that looks like an identifier.
    #[error(
        "column `{column}` is declared plain, but row {row} holds what looks like {found}: \
         declare the column's kind (`{kind}`, or `free-text` if it holds prose)"
    )]
    IdentifierInPlainColumn {
        /// The column.
        column: String,
        /// The first row where an identifier was found (1 = first data row).
        row: usize,
        /// What was found ("an email address", …).
        found: &'static str,
        /// The kind to declare for such values.
        kind: &'static str,
    },
    /// A differentially private query, its parameters or a budget record is invalid.
    #[error("differential privacy: {0}")]
    Dp(String),
    /// A charge does not fit in what remains of a privacy budget.
    #[error(
        "privacy budget exceeded: the query needs ε = {epsilon}, δ = {delta}; \
         remaining ε = {}, δ = {}",
        shown(*remaining_epsilon),
        shown(*remaining_delta)
    )]
    BudgetExceeded {
        /// The ε asked for.
        epsilon: f64,
        /// The δ asked for.
        delta: f64,
        /// The ε left.
        remaining_epsilon: f64,
        /// The δ left.
        remaining_delta: f64,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Randomness,
    /// The caller stopped the search (it went away).
    #[error("the anonymization was stopped before it ended")]
    Cancelled,
}

/// A budget figure as people read it: twelve significant decimals at most (the
/// budget's own slack, 1e-12, makes finer digits meaningless).
fn shown(x: f64) -> f64 {
    (x * 1e12).round() / 1e12
}
