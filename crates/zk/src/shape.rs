//! The fixed circuit sizes: a few verifying keys serve every dataset, each table padded
//! to the smallest shape it fits.

use serde::{Deserialize, Serialize};

/// Bits of a row's quasi-identifier key (the generalized codes of all
/// quasi-identifiers, packed; the circuit takes the key as a field element, so this is
/// the encoding's limit, not the circuit's).
pub const KEY_BITS: u32 = 64;
/// Bytes per row for the sensitive columns' codes (32 bits, packed).
pub const SENSITIVE_BYTES: usize = 4;
/// Bytes packed into one field element (248 bits, below BN254's 254-bit modulus).
pub const BYTES_PER_ELEMENT: usize = 31;
/// Bits of a class's count above `k` (up to 2²⁴ − 1).
pub(crate) const COUNT_BITS: usize = 24;

/// One circuit size: how many rows it holds and how many equivalence classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    /// Rows (the table is padded with empty rows up to this).
    pub rows: u32,
    /// Equivalence-class slots (a table with more distinct quasi-identifier tuples
    /// needs a bigger shape).
    pub classes: u32,
}

impl Shape {
    /// 64 rows, 16 classes: tests and demonstrations.
    pub const ROWS_64: Shape = Shape::new(64, 16);
    /// 4 096 rows, 256 classes.
    pub const ROWS_4K: Shape = Shape::new(4096, 256);
    /// 16 384 rows, 1 024 classes.
    pub const ROWS_16K: Shape = Shape::new(16384, 1024);
    /// 32 768 rows, 2 048 classes (ARX's Adult table, 30 162 rows, fits: at k = 5 its
    /// release has 1 046 classes).
    pub const ROWS_32K: Shape = Shape::new(32768, 2048);
    /// Every shape with published keys, smallest first.
    pub const ALL: [Shape; 4] = [
        Shape::ROWS_64,
        Shape::ROWS_4K,
        Shape::ROWS_16K,
        Shape::ROWS_32K,
    ];

    const fn new(rows: u32, classes: u32) -> Shape {
        Shape { rows, classes }
    }

    /// The smallest published shape holding `rows` rows in `classes` classes.
    pub fn fitting(rows: usize, classes: usize) -> Option<Shape> {
        Shape::ALL
            .into_iter()
            .find(|s| rows <= s.rows as usize && classes <= s.classes as usize)
    }

    /// The published shape of `rows` rows.
    pub fn with_rows(rows: u32) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.rows == rows)
    }

    /// Field elements holding the rows' sensitive codes.
    pub(crate) fn sensitive_elements(&self) -> usize {
        (self.rows as usize * SENSITIVE_BYTES).div_ceil(BYTES_PER_ELEMENT)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rows / {} classes", self.rows, self.classes)
    }
}
