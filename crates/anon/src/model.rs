//! Privacy models, checked one equivalence class at a time.
//!
//! Written as ARX's test cases write them: `k=5`, `distinct-l=3(diagnosis)`,
//! `entropy-l=5(occupation)`, `recursive-cl=4,3(diagnosis)` (c = 4, l = 3),
//! `equal-t=0.2(occupation)`, `hierarchical-t=0.2(occupation)`. A class that fails any
//! model is suppressed as a whole.

use std::fmt;

use crate::error::AnonError;

/// A privacy model.
#[derive(Debug, Clone, PartialEq)]
pub enum PrivacyModel {
    /// Every class has at least `k` rows.
    KAnonymity {
        /// The minimum class size.
        k: u64,
    },
    /// Every class has at least `l` distinct values of `column`.
    DistinctLDiversity {
        /// The sensitive column.
        column: String,
        /// Distinct values required.
        l: u64,
    },
    /// The Shannon entropy of `column` in every class is at least `ln l`.
    EntropyLDiversity {
        /// The sensitive column.
        column: String,
        /// The diversity (may be fractional).
        l: f64,
    },
    /// Recursive (c, l)-diversity: with the sensitive values' counts sorted
    /// r₁ ≥ r₂ ≥ … ≥ rₘ, r₁ < c · (r_l + … + rₘ).
    RecursiveClDiversity {
        /// The sensitive column.
        column: String,
        /// The factor c.
        c: f64,
        /// The diversity l.
        l: u64,
    },
    /// Equal-distance t-closeness: half the L1 distance between the class's and the
    /// table's distribution of `column` is at most `t`.
    EqualDistanceTCloseness {
        /// The sensitive column.
        column: String,
        /// The threshold.
        t: f64,
    },
    /// Hierarchical-distance t-closeness: the earth mover's distance over `column`'s
    /// generalization hierarchy is at most `t`.
    HierarchicalTCloseness {
        /// The sensitive column.
        column: String,
        /// The threshold.
        t: f64,
    },
}

impl PrivacyModel {
    /// Parses one model (`k=5`, `entropy-l=5(occupation)`, …).
    pub fn parse(text: &str) -> Result<Self, AnonError> {
        let text = text.trim();
        let bad = |problem: &str| AnonError::Model {
            model: text.to_owned(),
            problem: problem.to_owned(),
        };
        let (name, rest) = text
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=VALUE, e.g. k=5 or entropy-l=3(diagnosis)"))?;
        let (value, column) = match rest.split_once('(') {
            Some((value, column)) => {
                let column = column
                    .strip_suffix(')')
                    .ok_or_else(|| bad("the sensitive column must end with `)`"))?
                    .trim();
                if column.is_empty() {
                    return Err(bad("the sensitive column is empty"));
                }
                (value.trim(), Some(column.to_owned()))
            }
            None => (rest.trim(), None),
        };
        let sensitive = || {
            column
                .clone()
                .ok_or_else(|| bad("name the sensitive column: NAME=VALUE(column)"))
        };
        let integer = |value: &str| -> Result<u64, AnonError> {
            match value.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(bad("the value must be a whole number of at least 1")),
            }
        };
        let real = |value: &str| -> Result<f64, AnonError> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad("the value must be a number"))
        };
        let model = match name.trim() {
            "k" => {
                if column.is_some() {
                    return Err(bad("k-anonymity has no sensitive column"));
                }
                Self::KAnonymity { k: integer(value)? }
            }
            "distinct-l" => Self::DistinctLDiversity {
                column: sensitive()?,
                l: integer(value)?,
            },
            "entropy-l" => Self::EntropyLDiversity {
                column: sensitive()?,
                l: real(value)?,
            },
            "recursive-cl" => {
                let (c, l) = value
                    .split_once(',')
                    .ok_or_else(|| bad("write recursive-cl=C,L(column)"))?;
                Self::RecursiveClDiversity {
                    column: sensitive()?,
                    c: real(c.trim())?,
                    l: integer(l.trim())?,
                }
            }
            "equal-t" => Self::EqualDistanceTCloseness {
                column: sensitive()?,
                t: real(value)?,
            },
            "hierarchical-t" => Self::HierarchicalTCloseness {
                column: sensitive()?,
                t: real(value)?,
            },
            other => {
                return Err(bad(&format!(
                    "unknown model `{other}` (k, distinct-l, entropy-l, recursive-cl, equal-t, \
                     hierarchical-t)"
                )))
            }
        };
        model.validate()?;
        Ok(model)
    }

    /// Parses models joined by `;`.
    pub fn parse_all(text: &str) -> Result<Vec<Self>, AnonError> {
        text.split(';')
            .filter(|s| !s.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    /// Checks the parameters make sense on their own.
    pub fn validate(&self) -> Result<(), AnonError> {
        let bad = |problem: &str| {
            Err(AnonError::Model {
                model: self.to_string(),
                problem: problem.to_owned(),
            })
        };
        match self {
            Self::KAnonymity { k } if *k == 0 => bad("k must be at least 1"),
            Self::DistinctLDiversity { l, .. } if *l == 0 => bad("l must be at least 1"),
            Self::EntropyLDiversity { l, .. } if l.is_nan() || *l < 1.0 => {
                bad("l must be at least 1")
            }
            Self::RecursiveClDiversity { c, l, .. } if c.is_nan() || *c <= 0.0 || *l < 2 => {
                bad("c must be positive and l at least 2")
            }
            Self::EqualDistanceTCloseness { t, .. } | Self::HierarchicalTCloseness { t, .. }
                if !(0.0..=1.0).contains(t) =>
            {
                bad("t must be between 0 and 1")
            }
            _ => Ok(()),
        }
    }

    /// The sensitive column, for the models that have one.
    pub fn sensitive_column(&self) -> Option<&str> {
        match self {
            Self::KAnonymity { .. } => None,
            Self::DistinctLDiversity { column, .. }
            | Self::EntropyLDiversity { column, .. }
            | Self::RecursiveClDiversity { column, .. }
            | Self::EqualDistanceTCloseness { column, .. }
            | Self::HierarchicalTCloseness { column, .. } => Some(column),
        }
    }
}

impl fmt::Display for PrivacyModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KAnonymity { k } => write!(f, "k={k}"),
            Self::DistinctLDiversity { column, l } => write!(f, "distinct-l={l}({column})"),
            Self::EntropyLDiversity { column, l } => write!(f, "entropy-l={l}({column})"),
            Self::RecursiveClDiversity { column, c, l } => {
                write!(f, "recursive-cl={c},{l}({column})")
            }
            Self::EqualDistanceTCloseness { column, t } => write!(f, "equal-t={t}({column})"),
            Self::HierarchicalTCloseness { column, t } => {
                write!(f, "hierarchical-t={t}({column})")
            }
        }
    }
}

/// A sensitive column as the checks see it: the table's distribution of its codes and,
/// for hierarchical t-closeness, the parent of every node of its hierarchy.
#[derive(Debug, Clone)]
pub(crate) struct SensitiveDomain {
    /// The whole table's share of each code.
    pub global: Vec<f64>,
    /// For hierarchical t-closeness: for each level 1.., the code at that level of each
    /// level-0 code.
    pub tree: Option<Vec<Vec<u32>>>,
    /// Number of distinct labels at each level of `tree` (levels 1..).
    pub tree_widths: Vec<usize>,
}

/// A model compiled against the table: sensitive columns by their slot.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    K(u64),
    DistinctL { slot: usize, l: u64 },
    EntropyL { slot: usize, l: f64 },
    RecursiveCl { slot: usize, c: f64, l: u64 },
    EqualT { slot: usize, t: f64 },
    HierarchicalT { slot: usize, t: f64 },
}

impl Check {
    /// Whether a class of `n` rows, whose sensitive columns have the `(code, count)`
    /// histograms `histograms[slot]`, meets the model.
    pub fn passes(
        &self,
        n: u64,
        histograms: &[&[(u32, u64)]],
        domains: &[SensitiveDomain],
        scratch: &mut Vec<f64>,
    ) -> bool {
        match *self {
            Check::K(k) => n >= k,
            Check::DistinctL { slot, l } => histograms[slot].len() as u64 >= l,
            Check::EntropyL { slot, l } => {
                let histogram = histograms[slot];
                if (histogram.len() as f64) < l {
                    return false;
                }
                // H = ln n − Σ f ln f / n ≥ ln l
                let n = n as f64;
                let sum: f64 = histogram
                    .iter()
                    .map(|&(_, f)| {
                        let f = f as f64;
                        f * f.ln()
                    })
                    .sum();
                sum <= n * (n.ln() - l.ln())
            }
            Check::RecursiveCl { slot, c, l } => {
                let histogram = histograms[slot];
                if (histogram.len() as u64) < l {
                    return false;
                }
                let mut counts: Vec<u64> = histogram.iter().map(|&(_, f)| f).collect();
                counts.sort_unstable_by(|a, b| b.cmp(a));
                let tail: u64 = counts[(l as usize - 1)..].iter().sum();
                (counts[0] as f64) < c * tail as f64
            }
            Check::EqualT { slot, t } => {
                let domain = &domains[slot];
                let n = n as f64;
                // ½ Σ|p − q| over the whole domain; values absent from the class add q.
                let mut distance = 1.0;
                for &(code, f) in histograms[slot] {
                    let q = domain.global[code as usize];
                    distance += (f as f64 / n - q).abs() - q;
                }
                distance / 2.0 <= t
            }
            Check::HierarchicalT { slot, t } => {
                hierarchical_emd(n, histograms[slot], &domains[slot], scratch) <= t
            }
        }
    }
}

/// The earth mover's distance between a class's distribution and the table's over the
/// sensitive column's hierarchy (Li, Li & Venkatasubramanian, ICDE 2007): moving mass
/// between two leaves costs the height of their lowest common ancestor over the
/// hierarchy's height. Bottom up, each inner node matches what its children have in
/// excess against what they lack, and passes the net excess to its parent.
fn hierarchical_emd(
    n: u64,
    histogram: &[(u32, u64)],
    domain: &SensitiveDomain,
    extra: &mut Vec<f64>,
) -> f64 {
    let tree = domain
        .tree
        .as_ref()
        .expect("hierarchical t-closeness has a tree");
    let height = tree.len() as f64; // levels above the leaves
    let n = n as f64;
    // Excess of every leaf: p − q.
    extra.clear();
    extra.extend(domain.global.iter().map(|q| -q));
    for &(code, f) in histogram {
        extra[code as usize] += f as f64 / n;
    }
    let mut distance = 0.0;
    let mut below: Vec<f64> = std::mem::take(extra);
    for (level, parents) in tree.iter().enumerate() {
        let width = domain.tree_widths[level];
        let mut positive = vec![0.0; width];
        let mut negative = vec![0.0; width];
        let mut net = vec![0.0; width];
        // `parents` maps leaves to this level; fold the level below into it.
        let map_below: Option<&Vec<u32>> = if level == 0 {
            None
        } else {
            Some(&tree[level - 1])
        };
        fold_level(
            &below,
            parents,
            map_below,
            &mut positive,
            &mut negative,
            &mut net,
        );
        let cost = (level + 1) as f64 / height;
        for node in 0..width {
            distance += cost * positive[node].min(negative[node]);
        }
        below = net;
    }
    *extra = below;
    distance
}

/// Adds each child's net excess into its parent's positive or negative side.
/// `below` is indexed by leaf (first level) or by the previous level's code.
fn fold_level(
    below: &[f64],
    parents_of_leaves: &[u32],
    previous_of_leaves: Option<&Vec<u32>>,
    positive: &mut [f64],
    negative: &mut [f64],
    net: &mut [f64],
) {
    match previous_of_leaves {
        None => {
            for (leaf, &value) in below.iter().enumerate() {
                let parent = parents_of_leaves[leaf] as usize;
                add(value, parent, positive, negative, net);
            }
        }
        Some(previous) => {
            // The children are the previous level's nodes; find each one's parent
            // through any leaf under it.
            let mut parent_of_child = vec![u32::MAX; below.len()];
            for (leaf, &child) in previous.iter().enumerate() {
                parent_of_child[child as usize] = parents_of_leaves[leaf];
            }
            for (child, &value) in below.iter().enumerate() {
                add(
                    value,
                    parent_of_child[child] as usize,
                    positive,
                    negative,
                    net,
                );
            }
        }
    }
}

fn add(value: f64, parent: usize, positive: &mut [f64], negative: &mut [f64], net: &mut [f64]) {
    if value > 0.0 {
        positive[parent] += value;
    } else {
        negative[parent] -= value;
    }
    net[parent] += value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_parse_as_arx_cases_write_them() {
        assert_eq!(
            PrivacyModel::parse("k=5").unwrap(),
            PrivacyModel::KAnonymity { k: 5 }
        );
        let models = PrivacyModel::parse_all("equal-t=0.2(occupation);k=100").unwrap();
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].to_string(), "equal-t=0.2(occupation)");
        assert_eq!(
            PrivacyModel::parse("recursive-cl=4,3(dx)").unwrap(),
            PrivacyModel::RecursiveClDiversity {
                column: "dx".into(),
                c: 4.0,
                l: 3
            }
        );
        for (bad, needle) in [
            ("k", "NAME=VALUE"),
            ("k=0", "at least 1"),
            ("k=5(dx)", "no sensitive column"),
            ("entropy-l=3", "sensitive column"),
            ("entropy-l=0.5(dx)", "at least 1"),
            ("equal-t=1.5(dx)", "between 0 and 1"),
            ("equal-t=0.2(dx", "end with `)`"),
            ("delta-presence=1", "unknown model"),
            ("recursive-cl=3(dx)", "C,L"),
            ("recursive-cl=3,1(dx)", "at least 2"),
        ] {
            let err = PrivacyModel::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    fn domain(global: &[f64]) -> SensitiveDomain {
        SensitiveDomain {
            global: global.to_vec(),
            tree: None,
            tree_widths: Vec::new(),
        }
    }

    #[test]
    fn class_checks_follow_their_definitions() {
        let mut scratch = Vec::new();
        let d = [domain(&[0.5, 0.25, 0.25])];
        let passes = |check: Check, n: u64, h: &[(u32, u64)], scratch: &mut Vec<f64>| {
            check.passes(n, &[h], &d, scratch)
        };
        assert!(passes(
            Check::DistinctL { slot: 0, l: 2 },
            3,
            &[(0, 2), (1, 1)],
            &mut scratch
        ));
        assert!(!passes(
            Check::DistinctL { slot: 0, l: 3 },
            3,
            &[(0, 2), (1, 1)],
            &mut scratch
        ));
        // Entropy of (2, 2) is ln 2: 2-diverse exactly, not 2.1-diverse.
        assert!(passes(
            Check::EntropyL { slot: 0, l: 2.0 },
            4,
            &[(0, 2), (1, 2)],
            &mut scratch
        ));
        assert!(!passes(
            Check::EntropyL { slot: 0, l: 2.1 },
            4,
            &[(0, 2), (1, 2)],
            &mut scratch
        ));
        // Recursive (c, l): r1 < c (r_l + … + r_m); (3, 2, 1), l = 2: 3 < c · 3.
        let h = [(0, 3), (1, 2), (2, 1)];
        assert!(passes(
            Check::RecursiveCl {
                slot: 0,
                c: 1.1,
                l: 2
            },
            6,
            &h,
            &mut scratch
        ));
        assert!(!passes(
            Check::RecursiveCl {
                slot: 0,
                c: 1.0,
                l: 2
            },
            6,
            &h,
            &mut scratch
        ));
        // Equal distance: class (1, 0, 0) against (0.5, 0.25, 0.25) is 0.5 away.
        assert!(passes(
            Check::EqualT { slot: 0, t: 0.5 },
            2,
            &[(0, 2)],
            &mut scratch
        ));
        assert!(!passes(
            Check::EqualT { slot: 0, t: 0.49 },
            2,
            &[(0, 2)],
            &mut scratch
        ));
    }

    #[test]
    fn hierarchical_emd_charges_by_the_common_ancestor() {
        // Leaves 0, 1 under node A; leaf 2 under node B; root above (height 2).
        let d = SensitiveDomain {
            global: vec![0.5, 0.0, 0.5],
            tree: Some(vec![vec![0, 0, 1], vec![0, 0, 0]]),
            tree_widths: vec![2, 1],
        };
        let mut scratch = Vec::new();
        // All mass on leaf 1: 0.5 moves within A (cost 1/2), 0.5 across the root (2/2).
        let distance = hierarchical_emd(1, &[(1, 1)], &d, &mut scratch);
        assert!((distance - 0.75).abs() < 1e-12, "{distance}");
        // The table's own distribution is at distance 0.
        let distance = hierarchical_emd(2, &[(0, 1), (2, 1)], &d, &mut scratch);
        assert!(distance.abs() < 1e-12, "{distance}");
    }
}
