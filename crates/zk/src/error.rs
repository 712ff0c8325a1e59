//! Why a table cannot be proven, or a proof or key not used.

use ark_relations::gr1cs::SynthesisError;

use crate::Shape;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    /// The table is not k-anonymous: the prover refuses rather than make a proof that
    /// cannot verify.
    #[error(
        "the table is not {k}-anonymous: a quasi-identifier class has {size} row(s) \
         (every class needs at least {k})"
    )]
    NotKAnonymous {
        /// The smallest class found.
        size: u64,
        /// The k asked for.
        k: u16,
    },
    /// More rows are suppressed than the declared limit.
    #[error("{suppressed} row(s) are suppressed, over the declared limit of {limit}")]
    OverSuppressionLimit {
        /// Rows with every quasi-identifier `*`.
        suppressed: u64,
        /// The limit.
        limit: u64,
    },
    /// No published circuit holds the table.
    #[error(
        "no circuit holds {rows} rows in {classes} classes (the largest holds {} rows in {} \
         classes)", Shape::ROWS_32K.rows, Shape::ROWS_32K.classes
    )]
    TooLarge {
        /// The table's rows.
        rows: usize,
        /// Its distinct quasi-identifier tuples.
        classes: usize,
    },
    /// The table does not fit the shape it was given.
    #[error("the table has {rows} rows in {classes} classes; the {shape} circuit cannot hold it")]
    DoesNotFit {
        /// The table's rows.
        rows: usize,
        /// Its classes.
        classes: usize,
        /// The shape asked for.
        shape: Shape,
    },
    /// The quasi-identifiers' codes need more bits than a key holds.
    #[error(
        "the quasi-identifiers need {bits} bits per row ({detail}); a row key holds {max}: \
         generalize further or publish fewer quasi-identifiers"
    )]
    KeyTooWide {
        /// Bits needed.
        bits: u32,
        /// Bits available.
        max: u32,
        /// Bits per column.
        detail: String,
    },
    /// The sensitive columns' codes need more bits than a row holds.
    #[error("the sensitive columns need {bits} bits per row ({detail}); a row holds {max}")]
    SensitiveTooWide {
        /// Bits needed.
        bits: u32,
        /// Bits available.
        max: u32,
        /// Bits per column.
        detail: String,
    },
    /// The schema does not describe the table.
    #[error("the schema does not match the table: {0}")]
    Schema(String),
    /// `k` out of range.
    #[error("k = {0} is not a k-anonymity level to prove (2 to 65 535)")]
    BadK(u64),
    /// A decrypted table is not the one a listing is about.
    #[error("the table is not the listed one: {0}")]
    TableMismatch(String),
    /// A statement no listing can have.
    #[error("not a statement to prove or verify: {0}")]
    BadStatement(String),
    /// The proof just made does not verify under its own key.
    #[error(
        "the proof made with the {0} circuit's proving key does not verify: the key file is          damaged; delete it (it is generated again from the seed)"
    )]
    ProofRejected(Shape),
    /// Constraint synthesis or proving failed.
    #[error("proving failed: {0}")]
    Synthesis(#[source] SynthesisError),
    /// A key or proof could not be read.
    #[error("cannot read the {what}: {source}")]
    Decode {
        /// What was read.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: ark_serialize::SerializationError,
    },
    /// A key file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A regenerated verifying key is not the published one.
    #[error(
        "the verifying key generated for the {0} circuit is not the published one (the \
         circuit changed without new keys: run `cargo run --release -p medmesh-zk --example publish-keys`)"
    )]
    KeyMismatch(Shape),
    /// The shape has no published key.
    #[error("no published key for a circuit of {0}")]
    UnknownShape(Shape),
}

impl From<SynthesisError> for ZkError {
    fn from(e: SynthesisError) -> Self {
        ZkError::Synthesis(e)
    }
}
