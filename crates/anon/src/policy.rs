//! The anonymization policy: one TOML file that says what every column is, how each
//! quasi-identifier generalizes, which privacy models must hold, and what may be lost.
//!
//! ```toml
//! [input]
//! delimiter = ","            # CSV only; default ","
//! header = false             # the UCI Adult file has none: then name the columns
//! names = ["age", "workclass", "fnlwgt", "education", …]
//! missing = "?"              # the marker of a missing value
//! missing_rows = "drop"      # drop (default) or keep rows with a missing
//!                            # quasi-identifier or sensitive value
//!
//! [[columns]]
//! name = "ssn"
//! role = "identifier"        # identifier | quasi-identifier | sensitive | insensitive
//! kind = "ssn"               # what Safe Harbor sees (see `safe_harbor::ColumnKind`)
//!
//! [[columns]]
//! name = "age"
//! role = "quasi-identifier"
//! kind = "age"
//! bands = [5, 10, 20]        # or hierarchy = "age.csv" (ARX's format, relative to
//!                            # this file), or builder = "zip" | "date" | "flat"
//!
//! [[columns]]
//! name = "diagnosis"
//! role = "sensitive"
//!
//! [privacy]
//! models = ["k=5", "entropy-l=3(diagnosis)"]
//! suppression_limit = 0.04   # share of rows that may be suppressed
//! metric = "entropy"         # entropy | entropy-monotonic | dm | dm-star | aecs
//! ```
//!
//! Identifiers never reach the released table: Safe Harbor removes them, or replaces
//! them with keyed pseudonyms when `pseudonymize = true`. Every column of the input
//! must be declared, so that nothing is released by omission.

use std::{
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    anonymize::{Anonymizer, Config, Solution},
    error::AnonError,
    hierarchy::Hierarchy,
    metric::Metric,
    model::PrivacyModel,
    safe_harbor::{self, ColumnKind, ColumnRule, SafeHarborPolicy, SafeHarborReport},
    table::Table,
};

/// A policy as written in its TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How to read the input.
    #[serde(default)]
    pub input: InputOptions,
    /// Every column of the input.
    pub columns: Vec<ColumnPolicy>,
    /// The privacy models, suppression limit and metric.
    pub privacy: PrivacyPolicy,
    /// Safe Harbor's options.
    #[serde(default)]
    pub safe_harbor: SafeHarborOptions,
    /// How records become the table (for `--from-records`; see [`crate::extract`]).
    #[serde(default)]
    pub mapping: Option<crate::extract::Mapping>,
    /// Where relative hierarchy paths start (the policy file's folder); `None` for a
    /// policy from elsewhere (an API request), whose hierarchy files are refused: it
    /// gives hierarchies inline ([`Policy::add_hierarchy`]).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
    /// Hierarchies given with the policy, by column (ARX's CSV text).
    #[serde(skip)]
    pub inline_hierarchies: std::collections::BTreeMap<String, String>,
}

/// How to read the input table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputOptions {
    /// CSV separator (one character).
    #[serde(default = "comma")]
    pub delimiter: char,
    /// Whether the CSV file starts with a header line.
    #[serde(default = "yes")]
    pub header: bool,
    /// Column names when there is no header.
    #[serde(default)]
    pub names: Vec<String>,
    /// The marker of a missing value (e.g. `?`); the empty string is always missing.
    #[serde(default)]
    pub missing: Option<String>,
    /// What to do with rows missing a quasi-identifier or sensitive value.
    #[serde(default)]
    pub missing_rows: MissingRows,
}

impl Default for InputOptions {
    fn default() -> Self {
        Self {
            delimiter: ',',
            header: true,
            names: Vec::new(),
            missing: None,
            missing_rows: MissingRows::Drop,
        }
    }
}

fn comma() -> char {
    ','
}

fn yes() -> bool {
    true
}

/// Rows with a missing quasi-identifier or sensitive value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingRows {
    /// Left out of the release (counted in the report).
    #[default]
    Drop,
    /// Kept; the missing marker must then be in the column's hierarchy.
    Keep,
}

/// What a column is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Identifies a person on its own: removed or pseudonymized.
    Identifier,
    /// Identifies in combination: generalized.
    QuasiIdentifier,
    /// The attribute privacy models protect: kept as it is.
    Sensitive,
    /// Neither: kept as it is.
    Insensitive,
}

/// One column of the policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnPolicy {
    /// The column's name in the input.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// What Safe Harbor sees in it (`plain` when not given; `other-unique-id` for an
    /// identifier).
    #[serde(default)]
    pub kind: Option<String>,
    /// An ARX hierarchy file (relative to the policy file).
    #[serde(default)]
    pub hierarchy: Option<PathBuf>,
    /// Numeric bands, each width a multiple of the one before.
    #[serde(default)]
    pub bands: Option<Vec<u64>>,
    /// A built hierarchy: `zip`, `date` or `flat`.
    #[serde(default)]
    pub builder: Option<String>,
    /// Replace an identifier by a keyed pseudonym instead of removing it.
    #[serde(default)]
    pub pseudonymize: bool,
    /// Keep a free-text column (redacted of what looks like an identifier).
    #[serde(default)]
    pub keep_free_text: bool,
}

/// The privacy requirements.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyPolicy {
    /// Models that must all hold (`k=5`, `entropy-l=3(diagnosis)`, …).
    pub models: Vec<String>,
    /// Share of rows that may be suppressed.
    #[serde(default)]
    pub suppression_limit: f64,
    /// The metric minimized.
    #[serde(default = "default_metric")]
    pub metric: String,
    /// The column naming the individual a row is about (e.g. a pseudonymized patient
    /// id), when one individual may have several rows: `k` then counts distinct
    /// individuals in a class, not rows.
    #[serde(default)]
    pub individual: Option<String>,
    /// What the release holds of suppressed rows: nothing (`drop`, the default), or a
    /// row of `*` in every column (`mark`), so the row count stays visible.
    #[serde(default)]
    pub suppressed_rows: SuppressedRows,
}

/// What the release holds of suppressed rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuppressedRows {
    /// Left out (the report counts them). Kept with their sensitive values, they would
    /// form one group no model protects.
    #[default]
    Drop,
    /// A row of `*` in every column.
    Mark,
}

fn default_metric() -> String {
    Metric::Entropy.name().to_owned()
}

/// Safe Harbor's options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeHarborOptions {
    /// The year ages are computed against for birth dates (ages over 89 are grouped).
    #[serde(default)]
    pub reference_year: Option<i32>,
}

impl Policy {
    /// Parses a policy; relative hierarchy paths start at `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, AnonError> {
        let mut policy: Policy = toml::from_str(text).map_err(AnonError::PolicyToml)?;
        policy.base_dir = Some(base_dir.to_path_buf());
        policy.validate()?;
        Ok(policy)
    }

    /// Parses a policy that may not read files (one sent to the node's API): its
    /// hierarchies come with it, by [`Policy::add_hierarchy`].
    pub fn from_untrusted_toml(text: &str) -> Result<Self, AnonError> {
        let policy: Policy = toml::from_str(text).map_err(AnonError::PolicyToml)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Gives the hierarchy of `column` (ARX's CSV text) with the policy; the column
    /// still says `hierarchy = "…"` (any label) so that the policy reads whole.
    pub fn add_hierarchy(&mut self, column: &str, csv: String) -> Result<(), AnonError> {
        if !self.columns.iter().any(|c| c.name == column) {
            return Err(AnonError::Policy(format!(
                "a hierarchy is given for `{column}`, which the policy does not declare"
            )));
        }
        self.inline_hierarchies.insert(column.to_owned(), csv);
        Ok(())
    }

    /// Reads a policy file.
    pub fn from_file(path: &Path) -> Result<Self, AnonError> {
        let text = std::fs::read_to_string(path).map_err(|source| AnonError::Io {
            what: format!("reading the policy {}", path.display()),
            source,
        })?;
        Self::from_toml(&text, path.parent().unwrap_or(Path::new(".")))
    }

    fn validate(&self) -> Result<(), AnonError> {
        let policy = |msg: String| Err(AnonError::Policy(msg));
        if !self.input.header && self.input.names.is_empty() {
            return policy("input.header = false needs input.names".into());
        }
        let mut seen = std::collections::HashSet::new();
        for column in &self.columns {
            if !seen.insert(column.name.as_str()) {
                return policy(format!("column `{}` is declared twice", column.name));
            }
            let sources = [
                column.hierarchy.is_some(),
                column.bands.is_some(),
                column.builder.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if column.role == Role::QuasiIdentifier
                && sources == 0
                && !self.inline_hierarchies.contains_key(&column.name)
            {
                return policy(format!(
                    "quasi-identifier `{}` needs a hierarchy: hierarchy = \"FILE\", bands = [..] \
                     or builder = \"zip\" | \"date\" | \"flat\"",
                    column.name
                ));
            }
            if sources > 1 {
                return policy(format!(
                    "column `{}`: give one of hierarchy, bands or builder",
                    column.name
                ));
            }
            if let Some(kind) = &column.kind {
                ColumnKind::parse(kind)
                    .map_err(|e| AnonError::Policy(format!("column `{}`: {e}", column.name)))?;
            }
        }
        if seen.is_empty() {
            return policy("declare the columns".into());
        }
        if !self.privacy.models.is_empty()
            && !self.columns.iter().any(|c| c.role == Role::QuasiIdentifier)
        {
            return policy("declare at least one quasi-identifier".into());
        }
        let limit = self.privacy.suppression_limit;
        if !(0.0..=1.0).contains(&limit) {
            return policy(format!(
                "privacy.suppression_limit {limit} must be between 0 and 1 (a share of the rows)"
            ));
        }
        if let Some(individual) = &self.privacy.individual {
            if !seen.contains(individual.as_str()) {
                return policy(format!(
                    "privacy.individual `{individual}` is not a declared column"
                ));
            }
            if !self
                .privacy
                .models
                .iter()
                .any(|m| m.trim_start().starts_with("k="))
            {
                return policy(format!(
                    "privacy.individual `{individual}` counts individuals for k-anonymity: \
                     name a k model (l-diversity and t-closeness count rows)"
                ));
            }
            // Pseudonyms link a patient's rows across classes: an attacker who knows two
            // of a patient's rows intersects their classes down to one pseudonym.
            if let Some(linked) = self
                .columns
                .iter()
                .find(|c| c.pseudonymize && &c.name != individual)
            {
                return policy(format!(
                    "column `{}` is pseudonymized, which would link an individual's rows \
                     across classes and undo k over individuals: remove it",
                    linked.name
                ));
            }
        }
        for model in &self.privacy.models {
            PrivacyModel::parse(model)?;
        }
        Metric::parse(&self.privacy.metric)?;
        Ok(())
    }

    /// Reads a CSV input as the policy's `[input]` says.
    pub fn read_csv(&self, reader: impl std::io::Read) -> Result<Table, AnonError> {
        let delimiter = u8::try_from(self.input.delimiter)
            .map_err(|_| AnonError::Policy("input.delimiter must be one ASCII character".into()))?;
        let names = (!self.input.header).then_some(self.input.names.as_slice());
        Table::from_csv_with_names(reader, delimiter, names)
    }
}

/// What anonymizing under a policy produced.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// The released table (absent when no transformation meets the models).
    #[serde(skip)]
    pub table: Option<Table>,
    /// What Safe Harbor did to every column.
    pub safe_harbor: SafeHarborReport,
    /// Rows left out for a missing value.
    pub dropped_rows: u64,
    /// Rows anonymized.
    pub rows: u64,
    /// The quasi-identifiers, in the order of `levels`.
    pub quasi_identifiers: Vec<String>,
    /// The hierarchies' heights (levels including 0).
    pub heights: Vec<usize>,
    /// The models, as parsed.
    pub models: Vec<String>,
    /// The metric.
    pub metric: String,
    /// The absolute suppression limit (rows).
    pub suppression_limit_rows: u64,
    /// The optimum, if any transformation meets the models.
    pub solution: Option<Solution>,
    /// Transformations in the lattice.
    pub nodes_total: u64,
    /// Transformations evaluated.
    pub nodes_checked: u64,
    /// Time the search took.
    #[serde(serialize_with = "millis")]
    pub search_time: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Applies Safe Harbor and finds the optimal anonymization of `table` under `policy`.
/// `secret` keys the pseudonyms (one per dataset).
pub fn release(table: Table, policy: &Policy, secret: [u8; 32]) -> Result<Release, AnonError> {
    release_until(table, policy, secret, &AtomicBool::new(false))
}

/// [`release`], abandoned ([`AnonError::Cancelled`]) once `stop` is raised.
pub fn release_until(
    mut table: Table,
    policy: &Policy,
    secret: [u8; 32],
    stop: &AtomicBool,
) -> Result<Release, AnonError> {
    // Every declared column present, every input column declared.
    for column in &policy.columns {
        table.position(&column.name)?;
    }
    for name in table.names() {
        if !policy.columns.iter().any(|c| &c.name == name) {
            return Err(AnonError::Policy(format!(
                "column `{name}` of the input is not declared in the policy (declare it, e.g. \
                 role = \"insensitive\", so that nothing is released by omission)"
            )));
        }
    }
    // Rows missing a quasi-identifier or sensitive value.
    let guarded: Vec<usize> = policy
        .columns
        .iter()
        .filter(|c| matches!(c.role, Role::QuasiIdentifier | Role::Sensitive))
        .map(|c| table.position(&c.name))
        .collect::<Result<_, _>>()?;
    let is_missing =
        |value: &str| value.is_empty() || policy.input.missing.as_deref() == Some(value);
    let mut dropped_rows = 0;
    if policy.input.missing_rows == MissingRows::Drop {
        let keep: Vec<bool> = (0..table.len())
            .map(|row| {
                !guarded
                    .iter()
                    .any(|&p| is_missing(table.column_at(p).value(row)))
            })
            .collect();
        dropped_rows = keep.iter().filter(|k| !**k).count() as u64;
        if dropped_rows > 0 {
            table.retain_rows(&keep);
        }
    }
    // Safe Harbor.
    let rules = policy
        .columns
        .iter()
        .map(|c| {
            let kind = match (&c.kind, c.role) {
                (Some(kind), _) => ColumnKind::parse(kind)?,
                (None, Role::Identifier) => ColumnKind::OtherUniqueId,
                (None, _) => ColumnKind::Plain,
            };
            // An identifier never reaches the release but as a pseudonym.
            if c.role == Role::Identifier && !kind.is_removed_identifier() {
                return Err(AnonError::Policy(format!(
                    "identifier `{}` has kind {}, which Safe Harbor transforms and keeps; an \
                     identifier is removed or pseudonymized (name, ssn, \
                     medical-record-number, other-unique-id, …): declare it a \
                     quasi-identifier to generalize it",
                    c.name,
                    kind.name()
                )));
            }
            Ok(ColumnRule {
                column: c.name.clone(),
                kind,
                pseudonymize: c.pseudonymize,
                keep_free_text: c.keep_free_text,
            })
        })
        .collect::<Result<Vec<_>, AnonError>>()?;
    let (table, safe_harbor) = safe_harbor::apply(
        &table,
        &SafeHarborPolicy {
            columns: rules,
            secret,
            reference_year: policy.safe_harbor.reference_year,
        },
    )?;
    // Hierarchies, built on the de-identified values.
    let build = |column: &ColumnPolicy| -> Result<Option<Hierarchy>, AnonError> {
        let values = || {
            table
                .column(&column.name)
                .map(|c| c.dictionary().iter().map(String::as_str))
        };
        Ok(Some(
            if let Some(text) = policy.inline_hierarchies.get(&column.name) {
                Hierarchy::from_arx_csv(&column.name, text, ';')?
            } else if let Some(path) = &column.hierarchy {
                let Some(base) = &policy.base_dir else {
                    return Err(AnonError::Policy(format!(
                        "column `{}`: this policy cannot read hierarchy files; send the \
                     hierarchy with it",
                        column.name
                    )));
                };
                let path = base.join(path);
                let text = std::fs::read_to_string(&path).map_err(|source| AnonError::Io {
                    what: format!("reading the hierarchy {}", path.display()),
                    source,
                })?;
                Hierarchy::from_arx_csv(&column.name, &text, ';')?
            } else if let Some(bands) = &column.bands {
                Hierarchy::intervals(&column.name, values()?, bands)?
            } else {
                match column.builder.as_deref() {
                    Some("zip") => Hierarchy::zip_codes(&column.name, values()?)?,
                    Some("date") => Hierarchy::dates(&column.name, values()?)?,
                    Some("flat") => Hierarchy::flat(&column.name, values()?),
                    Some(other) => {
                        return Err(AnonError::Policy(format!(
                            "column `{}`: unknown builder `{other}` (zip, date, flat)",
                            column.name
                        )))
                    }
                    None => return Ok(None),
                }
            },
        ))
    };
    let mut quasi_identifiers = Vec::new();
    let mut sensitive_hierarchies = Vec::new();
    for column in &policy.columns {
        match column.role {
            Role::QuasiIdentifier => {
                if table.position(&column.name).is_err() {
                    return Err(AnonError::Policy(format!(
                        "quasi-identifier `{}` is removed by Safe Harbor (kind {}); declare it \
                         an identifier or change its kind",
                        column.name,
                        column.kind.as_deref().unwrap_or("plain")
                    )));
                }
                quasi_identifiers.push(build(column)?.ok_or_else(|| {
                    AnonError::Policy(format!(
                        "quasi-identifier `{}` needs a hierarchy",
                        column.name
                    ))
                })?);
            }
            Role::Sensitive => {
                if let Some(h) = build(column)? {
                    sensitive_hierarchies.push(h);
                }
            }
            _ => {}
        }
    }
    let mut models = policy
        .privacy
        .models
        .iter()
        .map(|m| PrivacyModel::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(individual) = &policy.privacy.individual {
        if table.position(individual).is_err() {
            return Err(AnonError::Policy(format!(
                "privacy.individual `{individual}` is removed by Safe Harbor: pseudonymize it \
                 (pseudonymize = true) so rows of one individual can be counted"
            )));
        }
        // k individuals in a class: k distinct values of the individual column, which
        // is counted but not released (it would link the individual's rows).
        for model in &mut models {
            if let PrivacyModel::KAnonymity { k } = *model {
                *model = PrivacyModel::DistinctLDiversity {
                    column: individual.clone(),
                    l: k,
                };
            }
        }
    }
    let mut rng = ring::rand::SystemRandom::new();
    if models.is_empty() {
        // Safe Harbor only: de-identified, not anonymized.
        let rows = table.len() as u64;
        let mut table = table;
        shuffle_rows(&mut table, &mut rng)?;
        return Ok(Release {
            table: Some(table),
            safe_harbor,
            dropped_rows,
            rows,
            quasi_identifiers: Vec::new(),
            heights: Vec::new(),
            models: Vec::new(),
            metric: String::new(),
            suppression_limit_rows: 0,
            solution: None,
            nodes_total: 0,
            nodes_checked: 0,
            search_time: Duration::ZERO,
        });
    }
    let metric = Metric::parse(&policy.privacy.metric)?;
    let config = Config {
        quasi_identifiers,
        models: models.clone(),
        sensitive_hierarchies,
        suppression_limit: policy.privacy.suppression_limit,
        metric,
    };
    let names: Vec<String> = config
        .quasi_identifiers
        .iter()
        .map(|h| h.column().to_owned())
        .collect();
    let heights = config
        .quasi_identifiers
        .iter()
        .map(Hierarchy::height)
        .collect();
    let rows = table.len() as u64;
    let anonymizer = Anonymizer::new(&table, config)?;
    let limit_rows = anonymizer.suppression_limit_rows();
    let started = Instant::now();
    let outcome = anonymizer.search_until(stop).ok_or(AnonError::Cancelled)?;
    let search_time = started.elapsed();
    let released = match &outcome.optimum {
        Some(solution) => {
            let mut released = anonymizer.release(solution, policy.privacy.suppressed_rows)?;
            if let Some(individual) = &policy.privacy.individual {
                let position = released.position(individual)?;
                released.drop_column(position);
            }
            // Rows in store order would put a patient's rows side by side.
            shuffle_rows(&mut released, &mut rng)?;
            Some(released)
        }
        None => None,
    };
    Ok(Release {
        table: released,
        safe_harbor,
        dropped_rows,
        rows,
        quasi_identifiers: names,
        heights,
        models: models.iter().map(ToString::to_string).collect(),
        metric: metric.name().to_owned(),
        suppression_limit_rows: limit_rows,
        solution: outcome.optimum,
        nodes_total: outcome.nodes_total,
        nodes_checked: outcome.nodes_checked,
        search_time,
    })
}

/// Puts the rows in a random order (Fisher–Yates, the system's generator).
fn shuffle_rows(table: &mut Table, rng: &mut ring::rand::SystemRandom) -> Result<(), AnonError> {
    use ring::rand::SecureRandom;
    let rows = table.len();
    let mut order: Vec<usize> = (0..rows).collect();
    // Random bytes drawn 4 KiB at a time: one system call per 512 draws.
    let mut pool = [0u8; 4096];
    let mut used = pool.len();
    for i in (1..rows).rev() {
        // Unbiased: reject the top of the range that would not divide evenly.
        let bound = (i + 1) as u64;
        let zone = u64::MAX - u64::MAX % bound;
        let j = loop {
            if used == pool.len() {
                rng.fill(&mut pool).map_err(|_| AnonError::Randomness)?;
                used = 0;
            }
            let bytes: [u8; 8] = pool[used..used + 8].try_into().expect("eight bytes");
            used += 8;
            let draw = u64::from_le_bytes(bytes);
            if draw < zone {
                break (draw % bound) as usize;
            }
        };
        order.swap(i, j);
    }
    table.permute_rows(&order);
    Ok(())
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Safe Harbor:")?;
        write!(f, "{}", self.safe_harbor)?;
        if self.dropped_rows > 0 {
            writeln!(f, "rows dropped for a missing value: {}", self.dropped_rows)?;
        }
        writeln!(
            f,
            "models: {}; metric: {}; up to {} of {} rows may be suppressed",
            self.models.join(" and "),
            self.metric,
            self.suppression_limit_rows,
            self.rows
        )?;
        if self.models.is_empty() {
            return writeln!(
                f,
                "no privacy model: de-identified by Safe Harbor only, {} rows",
                self.rows
            );
        }
        match &self.solution {
            None => writeln!(
                f,
                "no transformation meets the models within the suppression limit \
                 ({} of {} checked): relax the models or allow more suppression",
                self.nodes_checked, self.nodes_total
            )?,
            Some(s) => {
                writeln!(f, "levels:")?;
                for ((name, level), height) in self
                    .quasi_identifiers
                    .iter()
                    .zip(&s.levels)
                    .zip(&self.heights)
                {
                    writeln!(f, "  {name:<24} {level} of {}", height - 1)?;
                }
                writeln!(f, "suppressed rows: {}", s.suppressed_rows)?;
                writeln!(f, "{}: {}", self.metric, s.loss)?;
                let smallest = s.class_sizes.keys().next().copied().unwrap_or(0);
                writeln!(f, "classes: {} (smallest {smallest} rows)", s.classes)?;
                writeln!(
                    f,
                    "transformations checked: {} of {} in {:.1?}",
                    self.nodes_checked, self.nodes_total, self.search_time
                )?;
            }
        }
        Ok(())
    }
}
