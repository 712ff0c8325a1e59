//! Utility metrics, each as ARX defines it (see `../shared/data/adult/arx/README.md`).
//! Lower is better for all of them.

use std::fmt;

use crate::error::AnonError;

/// How much information a transformation loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Non-uniform entropy, monotonic: the generalization's entropy loss; suppressed
    /// rows count as if they were kept.
    EntropyMonotonic,
    /// Non-uniform entropy, non-monotonic: as above plus the entropy lost by the
    /// suppressed rows.
    Entropy,
    /// Discernibility (DM): a kept class of n rows costs n², a suppressed row costs the
    /// table's size.
    Discernibility,
    /// DM*: every class, suppressed ones included, costs n².
    DiscernibilityStar,
    /// Average equivalence class size: rows / (kept classes + 1 when anything is
    /// suppressed).
    AverageClassSize,
    /// ARX's "Loss" (Iyengar's generalization loss): per column, the share of the
    /// domain each row's generalized value covers (a suppressed row covers all of it),
    /// normalized to [0, 1]; the columns combined by their geometric mean.
    Loss,
}

impl Metric {
    /// Parses `entropy-monotonic`, `entropy`, `dm`, `dm-star`, `aecs`.
    pub fn parse(text: &str) -> Result<Self, AnonError> {
        Ok(match text.trim() {
            "entropy-monotonic" => Self::EntropyMonotonic,
            "entropy" => Self::Entropy,
            "dm" => Self::Discernibility,
            "dm-star" => Self::DiscernibilityStar,
            "aecs" => Self::AverageClassSize,
            "loss" => Self::Loss,
            other => {
                return Err(AnonError::Policy(format!(
                    "unknown metric `{other}` (entropy-monotonic, entropy, dm, dm-star, aecs, \
                     loss)"
                )))
            }
        })
    }

    /// The name [`Metric::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::EntropyMonotonic => "entropy-monotonic",
            Self::Entropy => "entropy",
            Self::Discernibility => "dm",
            Self::DiscernibilityStar => "dm-star",
            Self::AverageClassSize => "aecs",
            Self::Loss => "loss",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ARX truncates each column's entropy to ten decimals before summing the columns.
pub(crate) fn truncate10(x: f64) -> f64 {
    (x * 1e10).floor() / 1e10
}

/// Per column and level, the monotonic non-uniform entropy loss:
/// −Σᵥ c₀(v)·log₂(c₀(v)/c_L(g(v))), summed over the values in order of first appearance.
pub(crate) fn entropy_per_level(
    frequencies: &[u64],
    levels: &[crate::hierarchy::Level],
) -> Vec<f64> {
    levels
        .iter()
        .map(|level| {
            let mut generalized = vec![0u64; level.labels.len()];
            for (code, &f) in frequencies.iter().enumerate() {
                generalized[level.map[code] as usize] += f;
            }
            let mut loss = 0.0;
            for (code, &f) in frequencies.iter().enumerate() {
                if f == 0 {
                    continue;
                }
                let f = f as f64;
                let g = generalized[level.map[code] as usize] as f64;
                loss += f * (f / g).log2();
            }
            -loss
        })
        .collect()
}

/// ARX's normalization of one column's loss: from its least possible value (every row
/// its own leaf, `rows / size`) to its greatest (`rows`), truncated as ARX does.
pub(crate) fn normalized_loss(value: f64, rows: f64, domain_size: f64) -> f64 {
    let min = rows / domain_size;
    let max = rows;
    if max <= min {
        return 0.0;
    }
    truncate10(((value - min) / (max - min)).max(0.0))
}

/// ARX's geometric mean of the columns' losses: Π (vᵢ + 1)^(1/n) − 1.
pub(crate) fn geometric_mean(values: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = values.len() as f64;
    values.fold(1.0, |acc, v| acc * (v + 1.0).powf(1.0 / n)) - 1.0
}

/// The entropy lost by suppressing rows: Σ_w s(w)·log₂(|S|/s(w)) over the generalized
/// values w of the suppressed rows, s(w) their counts.
pub(crate) fn suppressed_entropy(counts: impl Iterator<Item = u64>, suppressed: u64) -> f64 {
    let total = suppressed as f64;
    let mut loss = 0.0;
    for s in counts.filter(|&s| s > 0) {
        let s = s as f64;
        loss += s * (total / s).log2();
    }
    loss
}
