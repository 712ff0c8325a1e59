//! The anonymizer: a table, quasi-identifiers with their hierarchies, privacy models,
//! a suppression limit and a metric in; the optimal transformation and the released
//! table out.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

pub use crate::policy::SuppressedRows;
use crate::{
    error::AnonError,
    hierarchy::{Hierarchy, TOP},
    metric::Metric,
    model::{Check, PrivacyModel, SensitiveDomain},
    search::{Engine, Partition},
    table::{Column, Table},
};

/// What to anonymize and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// The quasi-identifiers, each with its hierarchy, in the order levels are reported.
    pub quasi_identifiers: Vec<Hierarchy>,
    /// Models that must all hold in every kept class.
    pub models: Vec<PrivacyModel>,
    /// Hierarchies of sensitive columns (needed by hierarchical t-closeness).
    pub sensitive_hierarchies: Vec<Hierarchy>,
    /// Share of rows (0..=1) that may be suppressed; the absolute limit is
    /// `floor(limit × rows)`.
    pub suppression_limit: f64,
    /// The utility metric minimized.
    pub metric: Metric,
}

/// The optimal transformation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Solution {
    /// Per quasi-identifier (in the config's order), the level chosen.
    pub levels: Vec<usize>,
    /// The metric's value.
    pub loss: f64,
    /// Rows suppressed (their quasi-identifiers become `*`).
    pub suppressed_rows: u64,
    /// Equivalence classes kept.
    pub classes: u64,
    /// Class size → number of kept classes of that size.
    pub class_sizes: BTreeMap<u64, u64>,
}

/// The result of a search.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The optimum, or `None` when no transformation meets the models within the limit.
    pub optimum: Option<Solution>,
    /// Transformations in the lattice.
    pub nodes_total: u64,
    /// Transformations evaluated (the rest were pruned).
    pub nodes_checked: u64,
}

/// A table prepared for anonymization.
pub struct Anonymizer<'t> {
    table: &'t Table,
    config: Config,
    qi_positions: Vec<usize>,
    engine: Engine,
    row_class: Vec<u32>,
}

impl<'t> Anonymizer<'t> {
    /// Checks the config against the table and encodes it.
    pub fn new(table: &'t Table, config: Config) -> Result<Self, AnonError> {
        let policy = |msg: String| AnonError::Policy(msg);
        if !(0.0..=1.0).contains(&config.suppression_limit) {
            return Err(policy(format!(
                "the suppression limit {} must be between 0 and 1 (a share of the rows)",
                config.suppression_limit
            )));
        }
        if config.models.is_empty() {
            return Err(policy("name at least one privacy model".into()));
        }
        let rows = table.len() as u64;
        let mut qi_positions = Vec::new();
        for hierarchy in &config.quasi_identifiers {
            let position = table.position(hierarchy.column())?;
            if qi_positions.contains(&position) {
                return Err(policy(format!(
                    "`{}` is listed twice as a quasi-identifier",
                    hierarchy.column()
                )));
            }
            qi_positions.push(position);
        }
        let mut sensitive: Vec<String> = Vec::new();
        let mut checks = Vec::new();
        for model in &config.models {
            model.validate()?;
            let slot = match model.sensitive_column() {
                None => None,
                Some(column) => {
                    let position = table.position(column)?;
                    if qi_positions.contains(&position) {
                        return Err(AnonError::Model {
                            model: model.to_string(),
                            problem: format!(
                                "`{column}` is a quasi-identifier; a sensitive column cannot be one"
                            ),
                        });
                    }
                    Some(match sensitive.iter().position(|c| c == column) {
                        Some(slot) => slot,
                        None => {
                            sensitive.push(column.to_owned());
                            sensitive.len() - 1
                        }
                    })
                }
            };
            let impossible = |problem: String| AnonError::Model {
                model: model.to_string(),
                problem,
            };
            checks.push(match *model {
                PrivacyModel::KAnonymity { k } => {
                    if k > rows {
                        return Err(impossible(format!(
                            "k = {k} is larger than the table ({rows} rows)"
                        )));
                    }
                    Check::K(k)
                }
                PrivacyModel::DistinctLDiversity { l, ref column } => {
                    let distinct = table.column(column)?.dictionary().len() as u64;
                    if l > distinct {
                        return Err(impossible(format!(
                            "`{column}` has only {distinct} distinct values"
                        )));
                    }
                    Check::DistinctL {
                        slot: slot.unwrap_or(0),
                        l,
                    }
                }
                PrivacyModel::EntropyLDiversity { l, .. } => Check::EntropyL {
                    slot: slot.unwrap_or(0),
                    l,
                },
                PrivacyModel::RecursiveClDiversity { c, l, .. } => Check::RecursiveCl {
                    slot: slot.unwrap_or(0),
                    c,
                    l,
                },
                PrivacyModel::EqualDistanceTCloseness { t, .. } => Check::EqualT {
                    slot: slot.unwrap_or(0),
                    t,
                },
                PrivacyModel::HierarchicalTCloseness { t, .. } => Check::HierarchicalT {
                    slot: slot.unwrap_or(0),
                    t,
                },
            });
        }
        let mut domains = Vec::new();
        for column_name in &sensitive {
            let column = table.column(column_name)?;
            let global = column
                .frequencies()
                .into_iter()
                .map(|f| f as f64 / rows.max(1) as f64)
                .collect();
            let needs_tree = config.models.iter().any(|m| {
                matches!(m, PrivacyModel::HierarchicalTCloseness { column, .. } if column == column_name)
            });
            let (tree, tree_widths) = if needs_tree {
                let hierarchy = config
                    .sensitive_hierarchies
                    .iter()
                    .find(|h| h.column() == column_name)
                    .ok_or_else(|| {
                        policy(format!(
                            "hierarchical t-closeness of `{column_name}` needs a hierarchy of it"
                        ))
                    })?;
                let encoded = hierarchy.encode(column)?;
                if encoded.height() < 2 {
                    return Err(policy(format!(
                        "the hierarchy of `{column_name}` has no level above the values"
                    )));
                }
                // The earth mover's distance moves mass between any two values at most
                // at the root's cost: a hierarchy must have one.
                let top = &encoded.levels[encoded.height() - 1];
                if top.labels.len() != 1 {
                    return Err(policy(format!(
                        "the hierarchy of `{column_name}` ends in {} labels ({}); hierarchical \
                         t-closeness needs one root (add a level `*`)",
                        top.labels.len(),
                        top.labels.join(", ")
                    )));
                }
                let tree: Vec<Vec<u32>> =
                    encoded.levels[1..].iter().map(|l| l.map.clone()).collect();
                let widths = encoded.levels[1..].iter().map(|l| l.labels.len()).collect();
                (Some(tree), widths)
            } else {
                (None, Vec::new())
            };
            domains.push(SensitiveDomain {
                global,
                tree,
                tree_widths,
            });
        }
        let hierarchies = config
            .quasi_identifiers
            .iter()
            .zip(&qi_positions)
            .map(|(h, &p)| h.encode(table.column_at(p)))
            .collect::<Result<Vec<_>, _>>()?;
        let qi_codes: Vec<&[u32]> = qi_positions
            .iter()
            .map(|&p| table.column_at(p).codes())
            .collect();
        let frequencies: Vec<Vec<u64>> = qi_positions
            .iter()
            .map(|&p| table.column_at(p).frequencies())
            .collect();
        let sensitive_codes: Vec<&[u32]> = sensitive
            .iter()
            .map(|c| table.column(c).map(Column::codes))
            .collect::<Result<_, _>>()?;
        let limit_rows = (config.suppression_limit * rows as f64).floor() as u64;
        let (engine, row_class) = Engine::new(
            &qi_codes,
            hierarchies,
            &frequencies,
            &sensitive_codes,
            domains,
            checks,
            limit_rows,
            config.metric,
        )?;
        Ok(Self {
            table,
            config,
            qi_positions,
            engine,
            row_class,
        })
    }

    /// Finds the optimal transformation.
    pub fn search(&self) -> Outcome {
        self.search_until(&AtomicBool::new(false))
            .expect("a search nobody stops ends")
    }

    /// Finds the optimal transformation, unless `stop` is raised first (then `None`):
    /// a caller that goes away (an HTTP client) stops the work it asked for.
    pub fn search_until(&self, stop: &AtomicBool) -> Option<Outcome> {
        let (found, stats) = self.engine.search(stop)?;
        Some(Outcome {
            optimum: found.map(|f| self.solution(f.levels, f.loss, &f.partition, &f.evaluation)),
            nodes_total: stats.nodes_total,
            nodes_checked: stats.nodes_checked,
        })
    }

    /// Evaluates one transformation: `None` when it is not valid.
    pub fn evaluate(&self, levels: &[usize]) -> Result<Option<Solution>, AnonError> {
        self.check_levels(levels)?;
        let partition = self.engine.roll_up(&self.engine.bottom, levels);
        let evaluation = self.engine.evaluate(&partition, true);
        if !evaluation.valid {
            return Ok(None);
        }
        let loss = self.engine.loss(levels, &partition, &evaluation);
        Ok(Some(self.solution(
            levels.to_vec(),
            loss,
            &partition,
            &evaluation,
        )))
    }

    fn check_levels(&self, levels: &[usize]) -> Result<(), AnonError> {
        if levels.len() != self.engine.heights.len() {
            return Err(AnonError::Policy(format!(
                "{} levels given for {} quasi-identifiers",
                levels.len(),
                self.engine.heights.len()
            )));
        }
        for ((level, height), h) in levels
            .iter()
            .zip(&self.engine.heights)
            .zip(&self.config.quasi_identifiers)
        {
            if level >= height {
                return Err(AnonError::Policy(format!(
                    "level {level} of `{}`: its hierarchy has levels 0 to {}",
                    h.column(),
                    height - 1
                )));
            }
        }
        Ok(())
    }

    fn solution(
        &self,
        levels: Vec<usize>,
        loss: f64,
        partition: &Partition,
        evaluation: &crate::search::Evaluation,
    ) -> Solution {
        let suppressed = suppressed_flags(partition, evaluation);
        let mut class_sizes = BTreeMap::new();
        for (class, &size) in partition.counts().iter().enumerate() {
            if !suppressed[class] {
                *class_sizes.entry(size).or_insert(0) += 1;
            }
        }
        Solution {
            levels,
            loss,
            suppressed_rows: evaluation.suppressed_rows,
            classes: evaluation.kept_classes,
            class_sizes,
        }
    }

    /// The released table: every column of the input, the quasi-identifiers generalized
    /// to the solution's levels; suppressed rows left out, or (`Mark`) a row of `*` in
    /// every column. Drop identifying columns before anonymizing.
    pub fn release(
        &self,
        solution: &Solution,
        suppressed_rows: SuppressedRows,
    ) -> Result<Table, AnonError> {
        self.check_levels(&solution.levels)?;
        let partition = self.engine.roll_up(&self.engine.bottom, &solution.levels);
        let evaluation = self.engine.evaluate(&partition, true);
        let suppressed = suppressed_flags(&partition, &evaluation);
        let bottom_to_class = partition.parents();
        let row_suppressed =
            |row: usize| suppressed[bottom_to_class[self.row_class[row] as usize] as usize];
        let mut out = Table::default();
        for (position, column) in self.table.columns().iter().enumerate() {
            let qi = self.qi_positions.iter().position(|&p| p == position);
            let mut released = Column::default();
            for (row, &code) in column.codes().iter().enumerate() {
                match (row_suppressed(row), suppressed_rows, qi) {
                    (true, SuppressedRows::Drop, _) => continue,
                    (true, SuppressedRows::Mark, _) => released.push(TOP),
                    (false, _, Some(j)) => {
                        let level = &self.engine.hierarchies[j].levels[solution.levels[j]];
                        released.push(&level.labels[level.map[code as usize] as usize]);
                    }
                    (false, _, None) => released.push(column.value(row)),
                }
            }
            out.add_column(&self.table.names()[position], released)?;
        }
        Ok(out)
    }

    /// The most rows a valid transformation may suppress: `floor(limit × rows)`.
    pub fn suppression_limit_rows(&self) -> u64 {
        self.engine.limit_rows
    }
}

/// Whether each class of `partition` is suppressed, as `evaluation` found.
fn suppressed_flags(partition: &Partition, evaluation: &crate::search::Evaluation) -> Vec<bool> {
    let mut suppressed = vec![false; partition.len()];
    for &class in &evaluation.suppressed {
        suppressed[class as usize] = true;
    }
    suppressed
}
