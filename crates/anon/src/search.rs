//! The search for the optimal full-domain generalization.
//!
//! A transformation gives each quasi-identifier a level of its hierarchy; together they
//! form a lattice, ordered by "generalizes every column at least as far". The table is
//! first reduced to its distinct quasi-identifier tuples at level 0 (the bottom
//! partition); every other transformation's equivalence classes are unions of those, and
//! of the classes of any transformation below it. So a transformation is evaluated by
//! merging the classes of an already evaluated one directly below it (ARX's "roll-up"),
//! never by reading the rows again.
//!
//! The lattice is walked bottom-up, one level-sum at a time. A transformation is skipped
//! without evaluation when a lower bound of its loss is no better than the best valid one
//! found. The bounds are exact consequences of the metric's definition:
//! - monotonic entropy is a sum of per-column terms, known before any evaluation;
//! - non-monotonic entropy is never below the monotonic one;
//! - DM* only grows when classes merge, so a transformation's DM* bounds every
//!   generalization of it; DM is never below DM*;
//! - a generalization never has more classes, which bounds AECS from below.
//!
//! Validity (suppressed rows within the limit) is inferred only where it is monotonic:
//! for k-anonymity and distinct l-diversity (merging classes only grows them), and for
//! every model when nothing may be suppressed. There a valid transformation makes its
//! generalizations valid and an invalid one its specializations invalid, and checks
//! settle whole regions (`run_monotonic`). With suppression, an l-diverse or t-close class
//! merged with a failing one can fail, so nothing is inferred (`run_exhaustive`). Either
//! way the optimum is ARX's: the least loss over every valid transformation.

use std::sync::atomic::{AtomicBool, Ordering};

use rustc_hash::FxHashMap;

use crate::{
    error::AnonError,
    hierarchy::EncodedHierarchy,
    metric::{self, Metric},
    model::{Check, SensitiveDomain},
};

/// Largest key space grouped through a direct table instead of a hash map (entries).
const DENSE_KEYS: u64 = 1 << 22;

/// Largest lattice searched (transformations).
pub const MAX_LATTICE: u128 = 1 << 24;

/// A histogram of sensitive codes per class: class `c` owns
/// `entries[offsets[c]..offsets[c + 1]]`, sorted by code.
#[derive(Debug, Clone, Default)]
struct Histograms {
    offsets: Vec<u32>,
    entries: Vec<(u32, u64)>,
}

impl Histograms {
    fn of(&self, class: usize) -> &[(u32, u64)] {
        &self.entries[self.offsets[class] as usize..self.offsets[class + 1] as usize]
    }
}

/// Equivalence classes of one transformation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Partition {
    /// A bottom class of each class (its level-0 codes generalize to the class's tuple).
    rep: Vec<u32>,
    /// Rows per class.
    count: Vec<u64>,
    /// Per sensitive column.
    histograms: Vec<Histograms>,
    /// For each class of the partition this one was built from, its class here.
    parent_to_class: Vec<u32>,
}

impl Partition {
    pub fn len(&self) -> usize {
        self.count.len()
    }

    /// Rows per class.
    pub fn counts(&self) -> &[u64] {
        &self.count
    }

    /// For each class of the partition this one was rolled up from, its class here.
    pub fn parents(&self) -> &[u32] {
        &self.parent_to_class
    }
}

/// What evaluating a transformation found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Evaluation {
    pub suppressed_rows: u64,
    pub suppressed_classes: u64,
    pub kept_classes: u64,
    pub valid: bool,
    /// Σ n² over all classes.
    pub dm_star: f64,
    /// Σ n² over kept classes + N · suppressed rows.
    pub dm: f64,
    /// The suppressed classes (complete unless the checks stopped early).
    pub suppressed: Vec<u32>,
}

/// The problem, encoded once.
pub(crate) struct Engine {
    pub rows: u64,
    pub hierarchies: Vec<EncodedHierarchy>,
    pub heights: Vec<usize>,
    /// Level-0 codes of each bottom class, `columns` per class.
    bottom_codes: Vec<u32>,
    pub bottom: Partition,
    pub checks: Vec<Check>,
    pub domains: Vec<SensitiveDomain>,
    pub limit_rows: u64,
    pub metric: Metric,
    /// Untruncated monotonic entropy per column per level.
    entropy: Vec<Vec<f64>>,
    /// Per column per level, Σ over rows of the share of the domain the row's value
    /// covers (the loss metric as if nothing were suppressed: its lower bound).
    loss_kept: Vec<Vec<f64>>,
    /// Per column, the number of values its hierarchy has.
    domain_sizes: Vec<f64>,
    /// True when only k-anonymity is checked: histograms are not needed.
    needs_histograms: bool,
}

/// The result of a search.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub levels: Vec<usize>,
    pub loss: f64,
    pub partition: Partition,
    pub evaluation: Evaluation,
}

/// Statistics of a search.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SearchStats {
    pub nodes_total: u64,
    pub nodes_checked: u64,
}

impl Engine {
    /// `qi_codes[j]` are the level-0 codes of quasi-identifier `j` per row;
    /// `sensitive_codes[s]` those of sensitive column `s`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        qi_codes: &[&[u32]],
        hierarchies: Vec<EncodedHierarchy>,
        qi_frequencies: &[Vec<u64>],
        sensitive_codes: &[&[u32]],
        domains: Vec<SensitiveDomain>,
        checks: Vec<Check>,
        limit_rows: u64,
        metric: Metric,
    ) -> Result<(Self, Vec<u32>), AnonError> {
        let heights: Vec<usize> = hierarchies.iter().map(|h| h.height()).collect();
        let nodes: u128 = heights.iter().map(|&h| h as u128).product();
        if nodes > MAX_LATTICE {
            return Err(AnonError::LatticeTooLarge {
                nodes,
                limit: MAX_LATTICE,
            });
        }
        let rows = qi_codes.first().map_or(0, |c| c.len());
        let columns = qi_codes.len();
        // Bottom classes: intern the tuples column by column.
        let mut row_class = vec![0u32; rows];
        let mut classes = 1usize;
        for codes in qi_codes {
            let mut ids: FxHashMap<u64, u32> = FxHashMap::default();
            for (row, &code) in codes.iter().enumerate() {
                let key = (row_class[row] as u64) << 32 | code as u64;
                let next = ids.len() as u32;
                row_class[row] = *ids.entry(key).or_insert(next);
            }
            classes = ids.len();
        }
        if columns == 0 {
            classes = usize::from(rows > 0);
        }
        let mut count = vec![0u64; classes];
        let mut rep_row = vec![u32::MAX; classes];
        for (row, &class) in row_class.iter().enumerate() {
            count[class as usize] += 1;
            if rep_row[class as usize] == u32::MAX {
                rep_row[class as usize] = row as u32;
            }
        }
        let mut bottom_codes = Vec::with_capacity(classes * columns);
        for &row in &rep_row {
            for codes in qi_codes {
                bottom_codes.push(codes[row as usize]);
            }
        }
        let needs_histograms = checks.iter().any(|c| !matches!(c, Check::K(_)));
        let histograms = if needs_histograms {
            sensitive_codes
                .iter()
                .map(|codes| {
                    let mut pairs: Vec<(u32, u32)> = row_class
                        .iter()
                        .zip(codes.iter())
                        .map(|(&class, &code)| (class, code))
                        .collect();
                    pairs.sort_unstable();
                    let mut h = Histograms {
                        offsets: Vec::with_capacity(classes + 1),
                        entries: Vec::new(),
                    };
                    let mut at = 0;
                    for class in 0..classes as u32 {
                        h.offsets.push(h.entries.len() as u32);
                        while at < pairs.len() && pairs[at].0 == class {
                            let code = pairs[at].1;
                            let mut f = 0;
                            while at < pairs.len() && pairs[at] == (class, code) {
                                f += 1;
                                at += 1;
                            }
                            h.entries.push((code, f));
                        }
                    }
                    h.offsets.push(h.entries.len() as u32);
                    h
                })
                .collect()
        } else {
            Vec::new()
        };
        let entropy = hierarchies
            .iter()
            .zip(qi_frequencies)
            .map(|(h, f)| metric::entropy_per_level(f, &h.levels))
            .collect();
        let loss_kept = hierarchies
            .iter()
            .zip(qi_frequencies)
            .map(|(h, f)| {
                h.levels
                    .iter()
                    .map(|level| {
                        f.iter()
                            .enumerate()
                            .map(|(code, &n)| n as f64 * level.share[level.map[code] as usize])
                            .sum()
                    })
                    .collect()
            })
            .collect();
        let domain_sizes = hierarchies
            .iter()
            .map(|h| 1.0 / h.levels[0].share.first().copied().unwrap_or(1.0))
            .collect();
        let bottom = Partition {
            rep: (0..classes as u32).collect(),
            count,
            histograms,
            parent_to_class: Vec::new(),
        };
        Ok((
            Self {
                rows: rows as u64,
                hierarchies,
                heights,
                bottom_codes,
                bottom,
                checks,
                domains,
                limit_rows,
                metric,
                entropy,
                loss_kept,
                domain_sizes,
                needs_histograms,
            },
            row_class,
        ))
    }

    fn columns(&self) -> usize {
        self.heights.len()
    }

    /// The generalized code of bottom class `rep` in column `j` at `level`.
    fn code(&self, rep: u32, j: usize, level: usize) -> u32 {
        let code0 = self.bottom_codes[rep as usize * self.columns() + j];
        self.hierarchies[j].levels[level].map[code0 as usize]
    }

    /// Merges the classes of `from` (a transformation at or below `levels`) into the
    /// classes of `levels`.
    pub fn roll_up(&self, from: &Partition, levels: &[usize]) -> Partition {
        self.roll_up_bounded(from, levels, usize::MAX)
            .expect("an unbounded roll-up completes")
    }

    /// The most classes a valid transformation can have: at most N / k classes reach k
    /// rows (k the largest of the k-anonymity models), and every other class costs at
    /// least one suppressed row.
    fn class_limit(&self) -> usize {
        match self
            .checks
            .iter()
            .filter_map(|c| match c {
                Check::K(k) => Some(*k),
                _ => None,
            })
            .max()
        {
            Some(k) => (self.rows / k + self.limit_rows)
                .try_into()
                .unwrap_or(usize::MAX),
            None => usize::MAX,
        }
    }

    /// [`roll_up`](Self::roll_up), giving up (`None`) once the classes exceed
    /// `max_classes`: the transformation is then invalid whatever the rest holds.
    pub fn roll_up_bounded(
        &self,
        from: &Partition,
        levels: &[usize],
        max_classes: usize,
    ) -> Option<Partition> {
        let columns = self.columns();
        let radix: Vec<u64> = (0..columns)
            .map(|j| self.hierarchies[j].levels[levels[j]].labels.len() as u64)
            .collect();
        let space = radix
            .iter()
            .try_fold(1u64, |acc, &r| acc.checked_mul(r.max(1)));
        let fits = space.is_some();
        // A key space not much larger than the classes merged: a direct table beats
        // hashing (measured: most roll-ups of the Adult search).
        let dense = space.filter(|&k| k <= DENSE_KEYS && k <= 4 * from.len() as u64 + 1024);
        let mut ids: FxHashMap<u64, u32> = FxHashMap::default();
        if dense.is_none() {
            ids.reserve(from.len().min(max_classes.saturating_add(1)));
        }
        let mut parent_to_class = Vec::with_capacity(from.len());
        let mut rep = Vec::new();
        let mut count: Vec<u64> = Vec::new();
        let maps: Vec<&[u32]> = (0..columns)
            .map(|j| self.hierarchies[j].levels[levels[j]].map.as_slice())
            .collect();
        if fits {
            let mut table = dense.map(|k| vec![u32::MAX; k as usize]);
            for (class, &r) in from.rep.iter().enumerate() {
                let codes = &self.bottom_codes[r as usize * columns..][..columns];
                let mut key = 0u64;
                for ((&code, map), &radix) in codes.iter().zip(&maps).zip(&radix) {
                    key = key * radix + map[code as usize] as u64;
                }
                let next = rep.len() as u32;
                let id = match &mut table {
                    Some(table) => {
                        let slot = &mut table[key as usize];
                        if *slot == u32::MAX {
                            *slot = next;
                        }
                        *slot
                    }
                    None => *ids.entry(key).or_insert(next),
                };
                if id == next {
                    if rep.len() == max_classes {
                        return None;
                    }
                    rep.push(r);
                    count.push(0);
                }
                count[id as usize] += from.count[class];
                parent_to_class.push(id);
            }
        } else {
            // Too many combinations for one u64: intern column by column.
            let mut partial: Vec<u32> = vec![0; from.len()];
            for (j, map) in maps.iter().enumerate() {
                ids.clear();
                for (class, &r) in from.rep.iter().enumerate() {
                    let code = map[self.bottom_codes[r as usize * columns + j] as usize];
                    let key = (partial[class] as u64) << 32 | code as u64;
                    let next = ids.len() as u32;
                    partial[class] = *ids.entry(key).or_insert(next);
                }
            }
            let classes = if columns == 0 { 1 } else { ids.len() };
            if classes > max_classes {
                return None;
            }
            rep = vec![u32::MAX; classes];
            count = vec![0; classes];
            for (class, &id) in partial.iter().enumerate() {
                if rep[id as usize] == u32::MAX {
                    rep[id as usize] = from.rep[class];
                }
                count[id as usize] += from.count[class];
            }
            parent_to_class = partial;
        }
        let histograms = if self.needs_histograms {
            from.histograms
                .iter()
                .map(|h| merge_histograms(h, &parent_to_class, count.len()))
                .collect()
        } else {
            Vec::new()
        };
        Some(Partition {
            rep,
            count,
            histograms,
            parent_to_class,
        })
    }

    /// Checks every class; stops early once the limit is exceeded unless `complete`.
    pub fn evaluate(&self, partition: &Partition, complete: bool) -> Evaluation {
        let n = self.rows as f64;
        let mut e = Evaluation {
            valid: true,
            ..Evaluation::default()
        };
        let mut scratch = Vec::new();
        let mut histograms: Vec<&[(u32, u64)]> = Vec::with_capacity(partition.histograms.len());
        for class in 0..partition.len() {
            let size = partition.count[class];
            histograms.clear();
            histograms.extend(partition.histograms.iter().map(|h| h.of(class)));
            let passes = self
                .checks
                .iter()
                .all(|check| check.passes(size, &histograms, &self.domains, &mut scratch));
            let f = size as f64;
            e.dm_star += f * f;
            if passes {
                e.kept_classes += 1;
                e.dm += f * f;
            } else {
                e.suppressed_classes += 1;
                e.suppressed_rows += size;
                e.dm += n * f;
                e.suppressed.push(class as u32);
                if e.suppressed_rows > self.limit_rows {
                    e.valid = false;
                    if !complete {
                        return e;
                    }
                }
            }
        }
        e
    }

    /// The metric's value of a valid transformation.
    pub fn loss(&self, levels: &[usize], partition: &Partition, e: &Evaluation) -> f64 {
        match self.metric {
            Metric::EntropyMonotonic => self.monotonic_entropy(levels),
            Metric::Entropy => {
                if e.suppressed_rows == 0 {
                    return self.monotonic_entropy(levels);
                }
                // Per column, the generalized values of the suppressed rows.
                let mut total = 0.0;
                for (j, &level) in levels.iter().enumerate() {
                    let width = self.hierarchies[j].levels[level].labels.len();
                    let mut counts = vec![0u64; width];
                    let mut order: Vec<u32> = Vec::new();
                    for &class in &e.suppressed {
                        let code = self.code(partition.rep[class as usize], j, level) as usize;
                        if counts[code] == 0 {
                            order.push(code as u32);
                        }
                        counts[code] += partition.count[class as usize];
                    }
                    let extra = metric::suppressed_entropy(
                        order.iter().map(|&c| counts[c as usize]),
                        e.suppressed_rows,
                    );
                    total += metric::truncate10(self.entropy[j][level] + extra);
                }
                total
            }
            Metric::Discernibility => e.dm,
            Metric::DiscernibilityStar => e.dm_star,
            Metric::AverageClassSize => {
                let classes = e.kept_classes + u64::from(e.suppressed_rows > 0);
                self.rows as f64 / classes.max(1) as f64
            }
            // With nothing suppressed, exactly its lower bound (same sums, same order).
            Metric::Loss if e.suppressed_rows == 0 => self.loss_floor(levels),
            Metric::Loss => {
                let mut suppressed = vec![false; partition.len()];
                for &class in &e.suppressed {
                    suppressed[class as usize] = true;
                }
                let rows = self.rows as f64;
                let columns = levels.iter().enumerate().map(|(j, &level)| {
                    let shares = &self.hierarchies[j].levels[level].share;
                    let mut value = 0.0;
                    for class in 0..partition.len() {
                        let count = partition.count[class] as f64;
                        value += if suppressed[class] {
                            count // the whole domain
                        } else {
                            count * shares[self.code(partition.rep[class], j, level) as usize]
                        };
                    }
                    metric::normalized_loss(value, rows, self.domain_sizes[j])
                });
                metric::geometric_mean(columns.collect::<Vec<_>>().into_iter())
            }
        }
    }

    /// The loss metric with nothing suppressed: a lower bound of its value.
    fn loss_floor(&self, levels: &[usize]) -> f64 {
        let rows = self.rows as f64;
        let columns: Vec<f64> = levels
            .iter()
            .enumerate()
            .map(|(j, &level)| {
                metric::normalized_loss(self.loss_kept[j][level], rows, self.domain_sizes[j])
            })
            .collect();
        metric::geometric_mean(columns.into_iter())
    }

    /// Σ over columns of the truncated monotonic entropy.
    pub fn monotonic_entropy(&self, levels: &[usize]) -> f64 {
        levels
            .iter()
            .enumerate()
            .map(|(j, &level)| metric::truncate10(self.entropy[j][level]))
            .fold(0.0, |acc, x| acc + x)
    }

    /// Whether validity is monotonic: a generalization of a valid transformation is
    /// valid. It is when nothing may be suppressed (every model here holds for the
    /// union of two classes that both meet it), and for k-anonymity and distinct
    /// l-diversity (merging classes never puts a row into a class with fewer rows or
    /// fewer distinct values than before).
    fn validity_is_monotonic(&self) -> bool {
        self.limit_rows == 0
            || self
                .checks
                .iter()
                .all(|c| matches!(c, Check::K(_) | Check::DistinctL { .. }))
    }

    /// The best valid transformation, if any; `None` overall when `stop` was raised
    /// before the search ended.
    pub fn search(&self, stop: &AtomicBool) -> Option<(Option<Found>, SearchStats)> {
        let lattice = Lattice::new(&self.heights);
        let mut search = Search {
            engine: self,
            stop,
            lattice: &lattice,
            stats: SearchStats {
                nodes_total: lattice.len() as u64,
                nodes_checked: 0,
            },
            cache: Vec::new(),
            best: None,
            levels: vec![0; self.columns()],
        };
        if self.validity_is_monotonic() {
            search.run_monotonic();
        } else {
            search.run_exhaustive();
        }
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let stats = search.stats;
        let found = search.best.map(|(loss, node)| {
            let mut levels = vec![0; self.columns()];
            lattice.levels(node, &mut levels);
            let partition = self.roll_up(&self.bottom, &levels);
            let evaluation = self.evaluate(&partition, true);
            Found {
                levels,
                loss,
                partition,
                evaluation,
            }
        });
        Some((found, stats))
    }

    /// A lower bound of the loss of `node` known before evaluating it, when the metric
    /// has one: the (monotonic) entropy.
    fn static_bound(&self, levels: &[usize]) -> Option<f64> {
        match self.metric {
            Metric::EntropyMonotonic | Metric::Entropy => Some(self.monotonic_entropy(levels)),
            Metric::Loss => Some(self.loss_floor(levels)),
            _ => None,
        }
    }

    /// Whether the metric never decreases under generalization, suppression included.
    fn metric_is_monotonic(&self) -> bool {
        matches!(
            self.metric,
            Metric::EntropyMonotonic | Metric::DiscernibilityStar
        )
    }
}

/// Partitions kept for roll-ups, at most this many classes in all.
const CACHE_CLASSES: usize = 8 << 20;
/// And at most this many partitions.
const CACHE_ENTRIES: usize = 256;

/// The state of one search.
struct Search<'e> {
    engine: &'e Engine,
    /// Raised by the caller to abandon the search (checked before each
    /// transformation).
    stop: &'e AtomicBool,
    lattice: &'e Lattice,
    stats: SearchStats,
    /// Evaluated partitions (node, levels, partition), most recent last.
    cache: Vec<(usize, Vec<usize>, Partition)>,
    best: Option<(f64, usize)>,
    levels: Vec<usize>,
}

impl Search<'_> {
    /// Evaluates `node`, rolling up from the smallest cached partition below it.
    /// Evaluates `node`; `None` when it has too many classes to be valid (then it was
    /// not rolled up in full).
    fn evaluate(&mut self, levels: &[usize]) -> Option<(Partition, Evaluation)> {
        let from = self
            .cache
            .iter()
            .filter(|(_, l, _)| dominated(l, levels))
            .map(|(_, _, p)| p)
            .min_by_key(|p| p.len())
            .unwrap_or(&self.engine.bottom);
        self.stats.nodes_checked += 1;
        let partition = self
            .engine
            .roll_up_bounded(from, levels, self.engine.class_limit())?;
        let evaluation = self.engine.evaluate(&partition, false);
        Some((partition, evaluation))
    }

    fn remember(&mut self, node: usize, levels: &[usize], mut partition: Partition) {
        // Only the release needs it, and it rolls up from the bottom afresh.
        partition.parent_to_class = Vec::new();
        let mut total: usize = self.cache.iter().map(|(_, _, p)| p.len()).sum();
        while !self.cache.is_empty()
            && (self.cache.len() >= CACHE_ENTRIES || total + partition.len() > CACHE_CLASSES)
        {
            total -= self.cache.remove(0).2.len();
        }
        if partition.len() <= CACHE_CLASSES {
            self.cache.push((node, levels.to_vec(), partition));
        }
    }

    /// The sum of `node`'s levels.
    fn height(&self, node: usize) -> usize {
        let mut levels = vec![0; self.engine.columns()];
        self.lattice.levels(node, &mut levels);
        levels.iter().sum()
    }

    /// Keeps the better of the best so far and `node`; on a tie, the less generalized
    /// (as ARX does).
    fn offer(&mut self, node: usize, loss: f64) {
        let better = match self.best {
            None => true,
            Some((best, _)) if loss < best => true,
            Some((best, current)) => loss == best && self.height(node) < self.height(current),
        };
        if better {
            self.best = Some((loss, node));
        }
    }

    /// Without monotonic validity: every transformation whose lower bound beats the
    /// best so far is evaluated, bottom-up so each rolls up from one directly below.
    fn run_exhaustive(&mut self) {
        let engine = self.engine;
        let lattice = self.lattice;
        let total = lattice.len();
        // Facts each node inherits from the transformations below it.
        let mut dm_star_floor = vec![0f64; total];
        let mut classes_ceiling = vec![u64::MAX; total];
        let mut levels = std::mem::take(&mut self.levels);
        // Partitions of the previous and the current level-sum, for roll-ups.
        let mut previous: FxHashMap<usize, Partition> = FxHashMap::default();
        let mut current: FxHashMap<usize, Partition> = FxHashMap::default();
        for layer in lattice.layers() {
            std::mem::swap(&mut previous, &mut current);
            current.clear();
            let mut cached: usize = previous.values().map(Partition::len).sum();
            for &node in layer {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                lattice.levels(node, &mut levels);
                let bound = match engine.metric {
                    Metric::EntropyMonotonic | Metric::Entropy => engine.monotonic_entropy(&levels),
                    Metric::Loss => engine.loss_floor(&levels),
                    Metric::Discernibility | Metric::DiscernibilityStar => dm_star_floor[node],
                    Metric::AverageClassSize => {
                        engine.rows as f64 / classes_ceiling[node].saturating_add(1) as f64
                    }
                };
                let skip = matches!(self.best, Some((loss, _)) if bound >= loss);
                if !skip {
                    let from = lattice
                        .specializations(node)
                        .filter_map(|s| previous.get(&s))
                        .min_by_key(|p| p.len())
                        .unwrap_or(&engine.bottom);
                    self.stats.nodes_checked += 1;
                    let partition = engine.roll_up(from, &levels);
                    let evaluation = engine.evaluate(&partition, false);
                    dm_star_floor[node] =
                        dm_star_floor[node].max(evaluation.dm_star_if_complete(&partition));
                    classes_ceiling[node] = classes_ceiling[node].min(partition.len() as u64);
                    if evaluation.valid {
                        let loss = engine.loss(&levels, &partition, &evaluation);
                        self.offer(node, loss);
                    }
                    if cached + partition.len() <= CACHE_CLASSES {
                        cached += partition.len();
                        current.insert(node, partition);
                    }
                }
                for g in lattice.generalizations(node) {
                    dm_star_floor[g] = dm_star_floor[g].max(dm_star_floor[node]);
                    classes_ceiling[g] = classes_ceiling[g].min(classes_ceiling[node]);
                }
            }
        }
        self.levels = levels;
    }

    /// With monotonic validity: a valid transformation makes every generalization valid
    /// and an invalid one every specialization invalid. Transformations are taken in
    /// order of their lower bound (entropy) or bottom-up; each one's validity is settled
    /// by a binary search along a chain of generalizations above it (as Flash does),
    /// whose checks settle whole regions of the lattice at once.
    fn run_monotonic(&mut self) {
        let engine = self.engine;
        let lattice = self.lattice;
        let columns = engine.columns();
        let mut order: Vec<usize> = lattice.layers().flatten().copied().collect();
        let mut levels = vec![0; columns];
        let bounds: Option<Vec<f64>> = engine.static_bound(&levels).map(|_| {
            (0..lattice.len())
                .map(|node| {
                    lattice.levels(node, &mut levels);
                    engine.static_bound(&levels).unwrap_or(0.0)
                })
                .collect()
        });
        if let Some(bounds) = &bounds {
            // Stable: ties stay bottom-up.
            order.sort_by(|a, b| bounds[*a].total_cmp(&bounds[*b]));
        }
        let mut tags = Tags::default();
        for node in order {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            lattice.levels(node, &mut levels);
            if let (Some(bounds), Some((best, best_node))) = (&bounds, self.best) {
                if bounds[node] > best {
                    break; // sorted: nothing later can do better
                }
                // A tie competes only if it is less generalized (`offer`).
                if bounds[node] == best && self.height(node) >= self.height(best_node) {
                    continue;
                }
            }
            if tags.is_invalid(&levels) {
                continue;
            }
            let known_valid = tags.is_valid(&levels);
            if known_valid && engine.metric_is_monotonic() {
                continue; // no better than the valid transformation below it
            }
            if !known_valid && !self.settle(node, &levels, &mut tags, bounds.as_deref()) {
                continue;
            }
            // Valid: its loss.
            let cached = self.cache.iter().position(|(n, _, _)| *n == node);
            let (partition, evaluation) = match cached {
                Some(i) => {
                    let partition = self.cache[i].2.clone();
                    let evaluation = engine.evaluate(&partition, false);
                    (partition, evaluation)
                }
                None => match self.evaluate(&levels) {
                    Some(checked) => checked,
                    None => continue,
                },
            };
            // Inferred valid; checked all the same (the models' floating point).
            if evaluation.valid {
                let loss = engine.loss(&levels, &partition, &evaluation);
                self.offer(node, loss);
            }
        }
    }

    /// Settles the validity of `node` (not yet known) by a binary search along a chain
    /// of generalizations from it to the first known-valid transformation or the top.
    fn settle(
        &mut self,
        node: usize,
        levels: &[usize],
        tags: &mut Tags,
        bounds: Option<&[f64]>,
    ) -> bool {
        let lattice = self.lattice;
        let mut chain = vec![node];
        let mut current = levels.to_vec();
        let mut next_levels = current.clone();
        loop {
            let here = *chain.last().expect("chain starts with node");
            // The cheapest generalization (by bound, else the first) still unknown.
            let next = lattice
                .generalizations(here)
                .filter(|&g| {
                    lattice.levels(g, &mut next_levels);
                    !tags.is_valid(&next_levels)
                })
                .min_by(|a, b| match bounds {
                    // Measured on ARX's Adult cases: the gentlest step checks fewest
                    // transformations (935 against 2 061 for the steepest, k = 5).
                    Some(bounds) => bounds[*a].total_cmp(&bounds[*b]),
                    None => std::cmp::Ordering::Equal,
                });
            match next {
                Some(g) => {
                    chain.push(g);
                    lattice.levels(g, &mut current);
                }
                None => break,
            }
        }
        // Every chain member is unknown (the ones above an invalid one are, at least,
        // not known valid); validity is monotonic along the chain.
        let (mut low, mut high) = (0usize, chain.len());
        let mut chain_levels = vec![0; levels.len()];
        while low < high {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let mid = (low + high) / 2;
            let member = chain[mid];
            lattice.levels(member, &mut chain_levels);
            let valid = if tags.is_invalid(&chain_levels) {
                false
            } else if tags.is_valid(&chain_levels) {
                true
            } else {
                match self.evaluate(&chain_levels) {
                    Some((partition, evaluation)) => {
                        if evaluation.valid {
                            tags.add_valid(&chain_levels);
                            // Its generalizations will be skipped as no better: it
                            // competes itself.
                            let loss = self.engine.loss(&chain_levels, &partition, &evaluation);
                            self.offer(member, loss);
                        } else {
                            tags.add_invalid(&chain_levels);
                        }
                        self.remember(member, &chain_levels, partition);
                        evaluation.valid
                    }
                    None => {
                        tags.add_invalid(&chain_levels);
                        false
                    }
                }
            };
            if valid {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        if low > 0 {
            // The chain's highest invalid member: raise it while it stays invalid. A
            // maximal invalid transformation settles everything below it, and checks
            // high in the lattice are cheap (few classes).
            lattice.levels(chain[low - 1], &mut chain_levels);
            self.climb(chain_levels, tags);
        }
        low == 0
    }

    /// Raises `levels` (invalid) one column at a time while it stays invalid, tagging
    /// what each check finds.
    fn climb(&mut self, mut levels: Vec<usize>, tags: &mut Tags) {
        let heights = self.engine.heights.clone();
        let mut candidate = levels.clone();
        loop {
            let mut raised = false;
            for j in 0..levels.len() {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                if levels[j] + 1 >= heights[j] {
                    continue;
                }
                candidate.copy_from_slice(&levels);
                candidate[j] += 1;
                if tags.is_valid(&candidate) {
                    continue;
                }
                let invalid = tags.is_invalid(&candidate)
                    || match self.evaluate(&candidate) {
                        None => {
                            tags.add_invalid(&candidate);
                            true
                        }
                        Some((partition, evaluation)) => {
                            let node = self.lattice.node(&candidate);
                            if evaluation.valid {
                                tags.add_valid(&candidate);
                                let loss = self.engine.loss(&candidate, &partition, &evaluation);
                                self.offer(node, loss);
                            } else {
                                tags.add_invalid(&candidate);
                            }
                            self.remember(node, &candidate, partition);
                            !evaluation.valid
                        }
                    };
                if invalid {
                    levels.copy_from_slice(&candidate);
                    raised = true;
                }
            }
            if !raised {
                return;
            }
        }
    }
}

/// What monotonic validity has settled: the minimal valid and the maximal invalid
/// transformations found so far (two antichains).
#[derive(Default)]
struct Tags {
    valid: Vec<Vec<usize>>,
    invalid: Vec<Vec<usize>>,
}

impl Tags {
    fn is_valid(&self, levels: &[usize]) -> bool {
        self.valid.iter().any(|v| dominated(v, levels))
    }

    fn is_invalid(&self, levels: &[usize]) -> bool {
        self.invalid.iter().any(|i| dominated(levels, i))
    }

    fn add_valid(&mut self, levels: &[usize]) {
        self.valid.retain(|v| !dominated(levels, v));
        self.valid.push(levels.to_vec());
    }

    fn add_invalid(&mut self, levels: &[usize]) {
        self.invalid.retain(|i| !dominated(i, levels));
        self.invalid.push(levels.to_vec());
    }
}

/// Whether `low` ≤ `high` in every column.
fn dominated(low: &[usize], high: &[usize]) -> bool {
    low.iter().zip(high).all(|(l, h)| l <= h)
}

impl Evaluation {
    /// DM* of the partition, computed in full even when the checks stopped early.
    fn dm_star_if_complete(&self, partition: &Partition) -> f64 {
        if self.valid {
            self.dm_star
        } else {
            partition
                .count
                .iter()
                .map(|&c| (c as f64) * (c as f64))
                .sum()
        }
    }
}

/// Builds the histograms of merged classes.
fn merge_histograms(from: &Histograms, parent_to_class: &[u32], classes: usize) -> Histograms {
    let mut triples: Vec<(u32, u32, u64)> = Vec::with_capacity(from.entries.len());
    for (parent, &class) in parent_to_class.iter().enumerate() {
        for &(code, f) in from.of(parent) {
            triples.push((class, code, f));
        }
    }
    triples.sort_unstable_by_key(|&(class, code, _)| (class, code));
    let mut h = Histograms {
        offsets: Vec::with_capacity(classes + 1),
        entries: Vec::with_capacity(triples.len()),
    };
    let mut at = 0;
    for class in 0..classes as u32 {
        h.offsets.push(h.entries.len() as u32);
        while at < triples.len() && triples[at].0 == class {
            let code = triples[at].1;
            let mut f = 0;
            while at < triples.len() && triples[at].0 == class && triples[at].1 == code {
                f += triples[at].2;
                at += 1;
            }
            h.entries.push((code, f));
        }
    }
    h.offsets.push(h.entries.len() as u32);
    h
}

/// The lattice of transformations, nodes numbered in mixed radix (first column most
/// significant).
pub(crate) struct Lattice {
    heights: Vec<usize>,
    strides: Vec<usize>,
    by_layer: Vec<Vec<usize>>,
}

impl Lattice {
    pub fn new(heights: &[usize]) -> Self {
        let mut strides = vec![1; heights.len()];
        for j in (0..heights.len().saturating_sub(1)).rev() {
            strides[j] = strides[j + 1] * heights[j + 1];
        }
        let total: usize = heights.iter().product();
        let top: usize = heights.iter().map(|h| h - 1).sum();
        let mut by_layer = vec![Vec::new(); top + 1];
        let mut levels = vec![0; heights.len()];
        let mut lattice = Self {
            heights: heights.to_vec(),
            strides,
            by_layer: Vec::new(),
        };
        for node in 0..total {
            lattice.levels(node, &mut levels);
            by_layer[levels.iter().sum::<usize>()].push(node);
        }
        lattice.by_layer = by_layer;
        lattice
    }

    pub fn len(&self) -> usize {
        self.heights.iter().product()
    }

    pub fn layers(&self) -> impl Iterator<Item = &Vec<usize>> {
        self.by_layer.iter()
    }

    pub fn levels(&self, node: usize, levels: &mut [usize]) {
        for (j, level) in levels.iter_mut().enumerate() {
            *level = node / self.strides[j] % self.heights[j];
        }
    }

    /// The node of `levels`.
    pub fn node(&self, levels: &[usize]) -> usize {
        levels.iter().zip(&self.strides).map(|(l, s)| l * s).sum()
    }

    /// The transformations one level lower in one column.
    pub fn specializations(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.heights.len()).filter_map(move |j| {
            let level = node / self.strides[j] % self.heights[j];
            (level > 0).then(|| node - self.strides[j])
        })
    }

    /// The transformations one level higher in one column.
    pub fn generalizations(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.heights.len()).filter_map(move |j| {
            let level = node / self.strides[j] % self.heights[j];
            (level + 1 < self.heights[j]).then(|| node + self.strides[j])
        })
    }
}
