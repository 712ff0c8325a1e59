//! HIPAA Safe Harbor de-identification (45 CFR 164.514(b)(2)) of a [`Table`].
//!
//! The caller declares what every column holds ([`ColumnKind`]); [`apply`] removes or
//! transforms each column as Safe Harbor requires and returns a [`SafeHarborReport`]
//! naming every column and what was done to it. The eighteen identifiers map to kinds:
//!
//! | 164.514(b)(2)(i) | kinds | treatment |
//! |---|---|---|
//! | (A) names | `name` | removed |
//! | (B) geography below a state | `street-address`, `geographic`; `zip` | removed; ZIP to its first 3 digits (`000` for the prefixes of ≤ 20 000 people) |
//! | (C) dates, ages over 89 | `date`, `birth-date`; `age` | year only (birth years of people over 89 grouped); `90+` |
//! | (D)–(G) phone, fax, email, SSN | `phone`, `fax`, `email`, `ssn` | removed |
//! | (H)–(K) record, plan, account, licence numbers | `medical-record-number`, `health-plan-number`, `account-number`, `license-number` | removed, or keyed pseudonyms |
//! | (L), (M) vehicle and device ids | `vehicle-id`, `device-id` | removed, or keyed pseudonyms |
//! | (N), (O) URLs, IP addresses | `url`, `ip-address` | removed |
//! | (P), (Q) biometrics, photos | `biometric-id`, `photo` | removed |
//! | (R) any other unique code | `other-unique-id` | removed, or keyed pseudonyms |
//!
//! `state` is kept (Safe Harbor allows the state); `plain` columns (diagnosis codes, sex,
//! lab values…) are kept, but scanned: a value that looks like an email, URL, IPv4
//! address, SSN or phone number is an error, so that a mis-declared column is caught
//! rather than released. `free-text` is removed unless the caller keeps it; kept text is
//! scanned the same way and every value with such a pattern becomes [`REDACTED`].
//! The scan only recognizes those machine-shaped patterns: keeping free text is the
//! caller's statement that it holds no names, places or dates.
//!
//! Pseudonyms are HMAC-SHA256 of the value under a per-dataset secret, truncated to 16
//! bytes (32 hex digits): the rows of one patient stay linked inside the dataset, the
//! datasets of two secrets cannot be linked, and without the secret a pseudonym cannot
//! be turned back into its value. The secret must stay with the data holder (the
//! re-identification code of 164.514(c) must not be disclosed).
//!
//! Safe Harbor also requires that the holder has no actual knowledge that the rest could
//! identify someone (164.514(b)(2)(ii)); no program can check that.
//!
//! All work is per distinct value (columns are dictionary-coded), so a million rows of a
//! thousand ZIP codes parse a thousand ZIP codes.

use std::{fmt, str::FromStr};

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::{
    error::AnonError,
    table::{Column, Table},
};

/// The value a kept free-text value becomes when it holds something like an identifier.
pub const REDACTED: &str = "[redacted]";

/// The label of every age over 89.
pub const AGE_OVER_89: &str = "90+";

/// The 3-digit ZIP prefixes whose areas had 20 000 people or fewer in the 2000 census
/// (HHS's list); Safe Harbor replaces them with `000`.
pub const RESTRICTED_ZIP_PREFIXES: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// Every kind's name, in [`ColumnKind::ALL`]'s order (for error messages).
const KIND_NAMES: &str = "name, street-address, geographic, state, zip, date, birth-date, age, \
    phone, fax, email, ssn, medical-record-number, health-plan-number, account-number, \
    license-number, vehicle-id, device-id, url, ip-address, biometric-id, photo, \
    other-unique-id, free-text, plain";

const ZIP_EXPECTED: &str = "a ZIP code (5 digits, or ZIP+4 such as 02139-4307)";
const DATE_EXPECTED: &str =
    "a date (YYYY, YYYY-MM, YYYY-MM-DD, or YYYY-MM-DDThh:mm:ss with a time zone)";
const AGE_EXPECTED: &str = "an age in years (a number such as 42 or 0.5, or 90+)";

/// What a column holds, as Safe Harbor sees it. Names are kebab-case (`"zip"`,
/// `"medical-record-number"`, `"free-text"`, …); see [`ColumnKind::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnKind {
    /// Names of the person, relatives, employers or household members (A): removed.
    Name,
    /// Street addresses (B): removed.
    StreetAddress,
    /// Any other geography below a state: city, county, precinct, geocodes (B): removed.
    Geographic,
    /// The state: kept.
    State,
    /// ZIP codes (B): the first 3 digits, `000` for the [`RESTRICTED_ZIP_PREFIXES`].
    Zip,
    /// Any date of the person (admission, discharge, death, observation…) (C): its year.
    Date,
    /// The date of birth (C): its year, years of people over 89 grouped as `<=YYYY`.
    BirthDate,
    /// Age in years (C): kept, except that every age over 89 becomes `90+`.
    Age,
    /// Telephone numbers (D): removed.
    Phone,
    /// Fax numbers (E): removed.
    Fax,
    /// Email addresses (F): removed.
    Email,
    /// Social security numbers (G): removed.
    Ssn,
    /// Medical record numbers (H): removed, or keyed pseudonyms.
    MedicalRecordNumber,
    /// Health plan beneficiary numbers (I): removed, or keyed pseudonyms.
    HealthPlanNumber,
    /// Account numbers (J): removed, or keyed pseudonyms.
    AccountNumber,
    /// Certificate and licence numbers (K): removed, or keyed pseudonyms.
    LicenseNumber,
    /// Vehicle identifiers, serial numbers and plates (L): removed, or keyed pseudonyms.
    VehicleId,
    /// Device identifiers and serial numbers (M): removed, or keyed pseudonyms.
    DeviceId,
    /// Web URLs (N): removed.
    Url,
    /// IP addresses (O): removed.
    IpAddress,
    /// Biometric identifiers, finger and voice prints (P): removed.
    BiometricId,
    /// Full-face photographs and comparable images (Q): removed.
    Photo,
    /// Any other unique identifying number, characteristic or code (R): removed, or
    /// keyed pseudonyms.
    OtherUniqueId,
    /// Prose (notes, comments): removed, or kept with identifier-like values redacted.
    FreeText,
    /// Not an identifier (a diagnosis code, sex, a lab value): kept, and checked.
    Plain,
}

impl ColumnKind {
    /// Every kind.
    pub const ALL: [ColumnKind; 25] = [
        Self::Name,
        Self::StreetAddress,
        Self::Geographic,
        Self::State,
        Self::Zip,
        Self::Date,
        Self::BirthDate,
        Self::Age,
        Self::Phone,
        Self::Fax,
        Self::Email,
        Self::Ssn,
        Self::MedicalRecordNumber,
        Self::HealthPlanNumber,
        Self::AccountNumber,
        Self::LicenseNumber,
        Self::VehicleId,
        Self::DeviceId,
        Self::Url,
        Self::IpAddress,
        Self::BiometricId,
        Self::Photo,
        Self::OtherUniqueId,
        Self::FreeText,
        Self::Plain,
    ];

    /// The kind's name (kebab-case), as [`ColumnKind::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::StreetAddress => "street-address",
            Self::Geographic => "geographic",
            Self::State => "state",
            Self::Zip => "zip",
            Self::Date => "date",
            Self::BirthDate => "birth-date",
            Self::Age => "age",
            Self::Phone => "phone",
            Self::Fax => "fax",
            Self::Email => "email",
            Self::Ssn => "ssn",
            Self::MedicalRecordNumber => "medical-record-number",
            Self::HealthPlanNumber => "health-plan-number",
            Self::AccountNumber => "account-number",
            Self::LicenseNumber => "license-number",
            Self::VehicleId => "vehicle-id",
            Self::DeviceId => "device-id",
            Self::Url => "url",
            Self::IpAddress => "ip-address",
            Self::BiometricId => "biometric-id",
            Self::Photo => "photo",
            Self::OtherUniqueId => "other-unique-id",
            Self::FreeText => "free-text",
            Self::Plain => "plain",
        }
    }

    /// Reads a kind's name. Case, `_` and spaces are forgiven
    /// (`Medical_Record_Number` is `medical-record-number`); an unknown name is an error
    /// listing the kinds.
    pub fn parse(name: &str) -> Result<Self, AnonError> {
        let normalized = name.trim().to_ascii_lowercase().replace(['_', ' '], "-");
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == normalized)
            .ok_or_else(|| AnonError::UnknownColumnKind {
                kind: name.to_owned(),
                kinds: KIND_NAMES,
            })
    }

    /// Whether Safe Harbor removes the column (or, when asked, pseudonymizes it).
    pub fn is_removed_identifier(self) -> bool {
        matches!(
            self,
            Self::Name
                | Self::StreetAddress
                | Self::Geographic
                | Self::Phone
                | Self::Fax
                | Self::Email
                | Self::Ssn
                | Self::MedicalRecordNumber
                | Self::HealthPlanNumber
                | Self::AccountNumber
                | Self::LicenseNumber
                | Self::VehicleId
                | Self::DeviceId
                | Self::Url
                | Self::IpAddress
                | Self::BiometricId
                | Self::Photo
                | Self::OtherUniqueId
        )
    }
}

impl FromStr for ColumnKind {
    type Err = AnonError;

    fn from_str(name: &str) -> Result<Self, AnonError> {
        Self::parse(name)
    }
}

impl fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ColumnKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ColumnKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// What to do with one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRule {
    /// The column's name in the table.
    pub column: String,
    /// What it holds.
    pub kind: ColumnKind,
    /// Replace the values by keyed pseudonyms instead of removing the column (only for
    /// kinds that are otherwise removed; see [`ColumnKind::is_removed_identifier`]).
    #[serde(default)]
    pub pseudonymize: bool,
    /// Keep a [`ColumnKind::FreeText`] column, its identifier-like values redacted.
    #[serde(default)]
    pub keep_free_text: bool,
}

impl ColumnRule {
    /// A rule for `column` of `kind`: identifiers removed, free text removed.
    pub fn new(column: impl Into<String>, kind: ColumnKind) -> Self {
        Self {
            column: column.into(),
            kind,
            pseudonymize: false,
            keep_free_text: false,
        }
    }

    /// The same rule, replacing values by keyed pseudonyms.
    pub fn with_pseudonyms(mut self) -> Self {
        self.pseudonymize = true;
        self
    }

    /// The same rule, keeping free text (redacted).
    pub fn keeping_free_text(mut self) -> Self {
        self.keep_free_text = true;
        self
    }
}

/// Safe Harbor's instructions for a table: one rule per column, and the dataset's secret.
#[derive(Clone)]
pub struct SafeHarborPolicy {
    /// One rule per column of the table (every column must have one).
    pub columns: Vec<ColumnRule>,
    /// The key of the pseudonyms: one per dataset, kept by the data holder.
    pub secret: [u8; 32],
    /// The year ages are reckoned at for [`ColumnKind::BirthDate`] columns (usually the
    /// year of the release): birth years up to `reference_year - 90`, which may belong to
    /// someone over 89, become one category `<=YYYY` (e.g. 2026 → `<=1936`). Required
    /// when a column is a birth date.
    pub reference_year: Option<i32>,
}

impl fmt::Debug for SafeHarborPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeHarborPolicy")
            .field("columns", &self.columns)
            .field("secret", &"<redacted>")
            .field("reference_year", &self.reference_year)
            .finish()
    }
}

/// What was done to a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The column is not in the released table.
    Removed,
    /// Values replaced by keyed pseudonyms.
    Pseudonymized,
    /// ZIP codes cut to 3 digits (`000` for restricted prefixes).
    ZipTruncated,
    /// Dates cut to their year.
    DateToYear,
    /// Ages kept, those over 89 as `90+`.
    AgeCapped,
    /// Birth dates cut to their year, years of people over 89 grouped as `<=YYYY`.
    BirthYearCapped,
    /// Kept unchanged.
    Kept,
    /// Free text kept, values holding identifier-like patterns replaced by [`REDACTED`].
    FreeTextRedacted,
}

impl Action {
    /// The action's name (kebab-case, as serialized).
    pub fn name(self) -> &'static str {
        match self {
            Self::Removed => "removed",
            Self::Pseudonymized => "pseudonymized",
            Self::ZipTruncated => "zip-truncated",
            Self::DateToYear => "date-to-year",
            Self::AgeCapped => "age-capped",
            Self::BirthYearCapped => "birth-year-capped",
            Self::Kept => "kept",
            Self::FreeTextRedacted => "free-text-redacted",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What was done to one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnReport {
    /// The column.
    pub column: String,
    /// Its declared kind.
    pub kind: ColumnKind,
    /// What was done.
    pub action: Action,
    /// Rows whose value changed (every row of a removed column).
    pub values_changed: u64,
    /// Rows of kept free text replaced by [`REDACTED`].
    pub redactions: u64,
}

/// What Safe Harbor did to every column of a table, in the table's column order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafeHarborReport {
    /// Rows of the table.
    pub rows: u64,
    /// One report per column of the input table.
    pub columns: Vec<ColumnReport>,
}

impl SafeHarborReport {
    /// The report of column `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnReport> {
        self.columns.iter().find(|c| c.column == name)
    }
}

impl fmt::Display for SafeHarborReport {
    /// A summary line, then one line per column (every line ends with a newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let removed = self
            .columns
            .iter()
            .filter(|c| c.action == Action::Removed)
            .count();
        writeln!(
            f,
            "{} rows, {} columns: {} removed, {} released",
            self.rows,
            self.columns.len(),
            removed,
            self.columns.len() - removed
        )?;
        let cw = self
            .columns
            .iter()
            .map(|c| c.column.chars().count())
            .fold("column".len(), usize::max);
        let kw = self
            .columns
            .iter()
            .map(|c| c.kind.name().len())
            .fold("kind".len(), usize::max);
        let aw = self
            .columns
            .iter()
            .map(|c| c.action.name().len())
            .fold("action".len(), usize::max);
        writeln!(
            f,
            "  {:<cw$}  {:<kw$}  {:<aw$}  {:>14}  {:>10}",
            "column", "kind", "action", "values changed", "redactions"
        )?;
        for c in &self.columns {
            writeln!(
                f,
                "  {:<cw$}  {:<kw$}  {:<aw$}  {:>14}  {:>10}",
                c.column,
                c.kind.name(),
                c.action.name(),
                c.values_changed,
                c.redactions
            )?;
        }
        Ok(())
    }
}

/// De-identifies `table` under `policy`: the released table (identifier columns
/// removed, the others transformed or kept, in the input's order) and the report of
/// every column. Every column must have exactly one rule; any error leaves nothing
/// half-done (the input is only read).
///
/// When every column is removed, the released table has no columns (and so no rows);
/// the report still gives the input's row count.
pub fn apply(
    table: &Table,
    policy: &SafeHarborPolicy,
) -> Result<(Table, SafeHarborReport), AnonError> {
    let rules = resolve(table, policy)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &policy.secret);
    let rows = table.len() as u64;
    let mut released = Table::default();
    let mut reports = Vec::with_capacity(rules.len());
    for (index, rule) in rules.into_iter().enumerate() {
        let column = table.column_at(index);
        let (action, treated) = treat(rule, column, &key, policy.reference_year)?;
        let mut report = ColumnReport {
            column: rule.column.clone(),
            kind: rule.kind,
            action,
            values_changed: 0,
            redactions: 0,
        };
        match treated {
            Treated::Removed => report.values_changed = rows,
            Treated::Kept => released.add_column(&rule.column, column.clone())?,
            Treated::Mapped(mapped) => {
                let (new, changed) = remap(column, &mapped);
                report.values_changed = changed;
                if action == Action::FreeTextRedacted {
                    report.redactions = changed;
                }
                released.add_column(&rule.column, new)?;
            }
        }
        reports.push(report);
    }
    Ok((
        released,
        SafeHarborReport {
            rows,
            columns: reports,
        },
    ))
}

/// The pseudonym of `value` under `secret`, as [`apply`] writes it: HMAC-SHA256 of the
/// value (surrounding spaces ignored), its first 16 bytes in lowercase hex. An empty
/// value stays empty (missing stays missing).
pub fn pseudonym(secret: &[u8; 32], value: &str) -> String {
    keyed_pseudonym(&hmac::Key::new(hmac::HMAC_SHA256, secret), value)
}

fn keyed_pseudonym(key: &hmac::Key, value: &str) -> String {
    let value = value.trim();
    if value.is_empty() {
        return String::new();
    }
    let tag = hmac::sign(key, value.as_bytes());
    hex::encode(&tag.as_ref()[..16])
}

/// Checks the rules against the table: the rule of each column, in the table's order.
fn resolve<'p>(
    table: &Table,
    policy: &'p SafeHarborPolicy,
) -> Result<Vec<&'p ColumnRule>, AnonError> {
    if let Some(year) = policy.reference_year {
        if !(1000..=9999).contains(&year) {
            return Err(AnonError::Policy(format!(
                "the reference year {year} is not a four-digit year"
            )));
        }
    }
    let mut by_position: Vec<Option<&ColumnRule>> = vec![None; table.names().len()];
    for rule in &policy.columns {
        let position = table.position(&rule.column)?;
        if by_position[position].is_some() {
            return Err(AnonError::Policy(format!(
                "column `{}` is declared twice; declare each column once",
                rule.column
            )));
        }
        check_rule(rule, policy.reference_year)?;
        by_position[position] = Some(rule);
    }
    by_position
        .into_iter()
        .zip(table.names())
        .map(|(rule, name)| {
            rule.ok_or_else(|| AnonError::UndeclaredColumn {
                column: name.clone(),
                kinds: KIND_NAMES,
            })
        })
        .collect()
}

fn check_rule(rule: &ColumnRule, reference_year: Option<i32>) -> Result<(), AnonError> {
    let kind = rule.kind;
    if rule.pseudonymize && !kind.is_removed_identifier() {
        return Err(AnonError::Policy(format!(
            "column `{}` is `{kind}`: only identifier columns that are otherwise removed \
             (such as `medical-record-number` or `other-unique-id`) can be pseudonymized",
            rule.column
        )));
    }
    if rule.keep_free_text && kind != ColumnKind::FreeText {
        return Err(AnonError::Policy(format!(
            "column `{}` is `{kind}`: keep_free_text applies to `free-text` columns only",
            rule.column
        )));
    }
    if kind == ColumnKind::BirthDate && reference_year.is_none() {
        return Err(AnonError::Policy(format!(
            "column `{}` is a birth date: set the reference year (`reference_year`, the \
             year the data describes, usually this year) so that the birth years of people \
             over 89 are grouped, as Safe Harbor requires",
            rule.column
        )));
    }
    Ok(())
}

/// A column's fate.
enum Treated {
    Removed,
    Kept,
    /// The new value of each dictionary entry.
    Mapped(Vec<String>),
}

fn treat(
    rule: &ColumnRule,
    column: &Column,
    key: &hmac::Key,
    reference_year: Option<i32>,
) -> Result<(Action, Treated), AnonError> {
    use ColumnKind as K;
    let bad = |code: usize, expected: &'static str| AnonError::SafeHarborValue {
        column: rule.column.clone(),
        kind: rule.kind.name(),
        row: first_row(column, code),
        value: column.dictionary()[code].clone(),
        expected,
    };
    Ok(match rule.kind {
        K::Name
        | K::StreetAddress
        | K::Geographic
        | K::Phone
        | K::Fax
        | K::Email
        | K::Ssn
        | K::MedicalRecordNumber
        | K::HealthPlanNumber
        | K::AccountNumber
        | K::LicenseNumber
        | K::VehicleId
        | K::DeviceId
        | K::Url
        | K::IpAddress
        | K::BiometricId
        | K::Photo
        | K::OtherUniqueId => {
            if rule.pseudonymize {
                let mapped = column
                    .dictionary()
                    .iter()
                    .map(|value| keyed_pseudonym(key, value))
                    .collect();
                (Action::Pseudonymized, Treated::Mapped(mapped))
            } else {
                (Action::Removed, Treated::Removed)
            }
        }
        K::State => (Action::Kept, Treated::Kept),
        K::Zip => {
            let mapped = try_map(column, zip3).map_err(|code| bad(code, ZIP_EXPECTED))?;
            (Action::ZipTruncated, Treated::Mapped(mapped))
        }
        K::Date => {
            let mapped = try_map(column, |value| {
                date_year(value).map(|year| format!("{year:04}"))
            })
            .map_err(|code| bad(code, DATE_EXPECTED))?;
            (Action::DateToYear, Treated::Mapped(mapped))
        }
        K::BirthDate => {
            // Born in `reference - 90` or before: possibly over 89 at the reference year.
            let cap = reference_year.map(|year| year.saturating_sub(90));
            let mapped = try_map(column, |value| {
                date_year(value).map(|year| match cap {
                    Some(cap) if year <= cap => format!("<={cap:04}"),
                    _ => format!("{year:04}"),
                })
            })
            .map_err(|code| bad(code, DATE_EXPECTED))?;
            let action = if cap.is_some() {
                Action::BirthYearCapped
            } else {
                Action::DateToYear
            };
            (action, Treated::Mapped(mapped))
        }
        K::Age => {
            let mapped = try_map(column, age_label).map_err(|code| bad(code, AGE_EXPECTED))?;
            (Action::AgeCapped, Treated::Mapped(mapped))
        }
        K::FreeText => {
            if rule.keep_free_text {
                let mapped = column
                    .dictionary()
                    .iter()
                    .map(|value| match detect_identifier(value) {
                        Some(_) => REDACTED.to_owned(),
                        None => value.clone(),
                    })
                    .collect();
                (Action::FreeTextRedacted, Treated::Mapped(mapped))
            } else {
                (Action::Removed, Treated::Removed)
            }
        }
        K::Plain => {
            // The dictionary is in order of first appearance: the first value found is
            // also the one that appears first.
            let found = column
                .dictionary()
                .iter()
                .enumerate()
                .find_map(|(code, value)| detect_identifier(value).map(|p| (code, p)));
            if let Some((code, pattern)) = found {
                return Err(AnonError::IdentifierInPlainColumn {
                    column: rule.column.clone(),
                    row: first_row(column, code),
                    found: pattern.description(),
                    kind: pattern.kind().name(),
                });
            }
            (Action::Kept, Treated::Kept)
        }
    })
}

/// The new value of every dictionary entry; an empty (or blank) value stays empty.
/// On failure, the code of the first value `f` rejects.
fn try_map(
    column: &Column,
    mut f: impl FnMut(&str) -> Option<String>,
) -> Result<Vec<String>, usize> {
    column
        .dictionary()
        .iter()
        .enumerate()
        .map(|(code, value)| {
            if value.trim().is_empty() {
                Ok(String::new())
            } else {
                f(value).ok_or(code)
            }
        })
        .collect()
}

/// The column with each value replaced by `mapped[code]`, and the rows that changed.
fn remap(column: &Column, mapped: &[String]) -> (Column, u64) {
    let changed: u64 = column
        .dictionary()
        .iter()
        .zip(mapped)
        .zip(column.frequencies())
        .filter(|((old, new), _)| old != new)
        .map(|(_, rows)| rows)
        .sum();
    let new = Column::from_values(
        column
            .codes()
            .iter()
            .map(|&code| mapped[code as usize].as_str()),
    );
    (new, changed)
}

/// The first row (1-based) holding dictionary entry `code`.
fn first_row(column: &Column, code: usize) -> usize {
    column
        .codes()
        .iter()
        .position(|&c| c as usize == code)
        .map_or(0, |row| row + 1)
}

/// A ZIP code's Safe Harbor form: its first 3 digits, or `000` for a restricted prefix.
/// Takes `12345`, `123456789`, `12345-6789`, `12345 6789` and `12345 - 6789` (spaces
/// around allowed).
fn zip3(value: &str) -> Option<String> {
    let zip = value.trim().as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if zip.len() < 5 || !digits(&zip[..5]) {
        return None;
    }
    let plus4 = zip[5..].trim_ascii_start();
    let plus4 = plus4.strip_prefix(b"-").unwrap_or(plus4).trim_ascii_start();
    if !(plus4.is_empty() || (plus4.len() == 4 && digits(plus4))) {
        return None;
    }
    let prefix = std::str::from_utf8(&zip[..3]).ok()?;
    Some(if RESTRICTED_ZIP_PREFIXES.contains(&prefix) {
        "000".to_owned()
    } else {
        prefix.to_owned()
    })
}

/// The year of a date: `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or a date and time
/// (`T` or a space, `hh:mm`, optional `:ss` and fraction, optional `Z` or `±hh:mm`).
/// Months, days (leap years included) and times are checked. HL7 v2's compact form
/// (`YYYYMM`, `YYYYMMDD`, `YYYYMMDDHHMM[SS[.S]][±ZZZZ]`) is read too.
fn date_year(value: &str) -> Option<i32> {
    let b = value.trim().as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if b.len() < 4 || !digits(&b[..4]) {
        return None;
    }
    let year = number(&b[..4]);
    if b.len() >= 6 && b[4].is_ascii_digit() {
        return hl7_date_year(year, &b[4..]);
    }
    let Some((month, rest)) = two_digit_part(&b[4..], b'-') else {
        return b[4..].is_empty().then_some(year);
    };
    if !(1..=12).contains(&month) {
        return None;
    }
    let Some((day, rest)) = two_digit_part(rest, b'-') else {
        return rest.is_empty().then_some(year);
    };
    if !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    match rest {
        [] => Some(year),
        [b'T' | b' ', time @ ..] if valid_time(time) => Some(year),
        _ => None,
    }
}

/// The rest of an HL7 v2 date after its year: `MM`, `MMDD`, then an optional time
/// (`HHMM`, `HHMMSS`, a fraction) and zone (`±ZZZZ`).
fn hl7_date_year(year: i32, b: &[u8]) -> Option<i32> {
    let month = pair(b[0], b[1])?;
    if !(1..=12).contains(&month) {
        return None;
    }
    let rest = &b[2..];
    if rest.is_empty() {
        return Some(year);
    }
    let [d1, d2, time @ ..] = rest else {
        return None;
    };
    let day = pair(*d1, *d2)?;
    if !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    let (clock, zone) = match time.iter().position(|c| matches!(c, b'+' | b'-')) {
        Some(at) => (&time[..at], &time[at + 1..]),
        None => (time, &[][..]),
    };
    let (whole, fraction) = match clock.iter().position(|c| *c == b'.') {
        Some(at) => (&clock[..at], &clock[at + 1..]),
        None => (clock, &[][..]),
    };
    let all_digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let time_ok = matches!(whole.len(), 0 | 2 | 4 | 6) && all_digits(whole) && all_digits(fraction);
    let zone_ok = zone.is_empty() || (zone.len() == 4 && all_digits(zone));
    (time_ok && zone_ok).then_some(year)
}

/// The number of two ASCII digits.
fn pair(tens: u8, ones: u8) -> Option<i32> {
    if tens.is_ascii_digit() && ones.is_ascii_digit() {
        Some(i32::from(tens - b'0') * 10 + i32::from(ones - b'0'))
    } else {
        None
    }
}

/// `<separator>dd` at the start of `b`: the number and what follows.
fn two_digit_part(b: &[u8], separator: u8) -> Option<(i32, &[u8])> {
    match b {
        [s, d1, d2, rest @ ..] if *s == separator => pair(*d1, *d2).map(|n| (n, rest)),
        _ => None,
    }
}

/// `hh:mm`, optional `:ss` and `.fraction`, optional `Z`, `±hh:mm` or `±hhmm`.
fn valid_time(b: &[u8]) -> bool {
    let [h1, h2, b':', m1, m2, rest @ ..] = b else {
        return false;
    };
    if !matches!((pair(*h1, *h2), pair(*m1, *m2)), (Some(h), Some(m)) if h <= 23 && m <= 59) {
        return false;
    }
    let mut rest = rest;
    if let Some((seconds, after)) = two_digit_part(rest, b':') {
        if seconds > 60 {
            return false;
        }
        rest = after;
        if let [b'.', fraction @ ..] = rest {
            let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if len == 0 {
                return false;
            }
            rest = &fraction[len..];
        }
    }
    match rest {
        [] | [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] | [b'+' | b'-', h1, h2, m1, m2] => matches!(
            (pair(*h1, *h2), pair(*m1, *m2)),
            (Some(h), Some(m)) if h <= 14 && m <= 59
        ),
        _ => false,
    }
}

fn days_in_month(year: i32, month: i32) -> i32 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The value of a few ASCII digits.
fn number(digits: &[u8]) -> i32 {
    digits
        .iter()
        .fold(0, |n, d| n * 10 + i32::from(d.wrapping_sub(b'0')))
}

/// An age's Safe Harbor form: unchanged (trimmed), or [`AGE_OVER_89`] from 90 on.
/// Takes whole or decimal years (`42`, `0.5`) and `90+` itself.
fn age_label(value: &str) -> Option<String> {
    let age = value.trim();
    if age == AGE_OVER_89 {
        return Some(AGE_OVER_89.to_owned());
    }
    let (whole, fraction) = age.split_once('.').unwrap_or((age, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    let years: u64 = whole.parse().ok()?;
    Some(if years >= 90 {
        AGE_OVER_89.to_owned()
    } else {
        age.to_owned()
    })
}

/// A kind of identifier the scan recognizes in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentifierPattern {
    /// `local@domain.tld`.
    Email,
    /// `scheme://…` or `www.…`.
    Url,
    /// Four dot-separated numbers of 0 to 255.
    IpAddress,
    /// A US social security number, `ddd-dd-dddd`.
    Ssn,
    /// A full date, `YYYY-MM-DD` (with or without a time): an element of a date other
    /// than the year.
    Date,
    /// A phone number with separators: North American (`(555) 123-4567`,
    /// `555.123.4567`, `1-800-555-0199`) or international (`+44 20 7946 0958`: `+`, then
    /// 10 to 15 digits in groups).
    Phone,
}

impl IdentifierPattern {
    /// What was found, for messages ("an email address").
    pub fn description(self) -> &'static str {
        match self {
            Self::Email => "an email address",
            Self::Url => "a URL",
            Self::IpAddress => "an IP address",
            Self::Ssn => "a social security number",
            Self::Date => "a full date",
            Self::Phone => "a phone number",
        }
    }

    /// The column kind of such values.
    pub fn kind(self) -> ColumnKind {
        match self {
            Self::Email => ColumnKind::Email,
            Self::Url => ColumnKind::Url,
            Self::IpAddress => ColumnKind::IpAddress,
            Self::Ssn => ColumnKind::Ssn,
            Self::Date => ColumnKind::Date,
            Self::Phone => ColumnKind::Phone,
        }
    }
}

/// A scan of text for one kind of identifier.
type Detector = fn(&[u8]) -> bool;

/// The first kind of identifier found in `text` (checked in the order email, URL, IP
/// address, SSN, phone), if any. Runs of bare digits are not flagged: they cannot be told
/// from codes and record numbers, which are declared by kind.
pub fn detect_identifier(text: &str) -> Option<IdentifierPattern> {
    let b = text.as_bytes();
    let detectors: [(IdentifierPattern, Detector); 6] = [
        (IdentifierPattern::Email, has_email),
        (IdentifierPattern::Url, has_url),
        (IdentifierPattern::IpAddress, has_ipv4),
        (IdentifierPattern::Ssn, has_ssn),
        (IdentifierPattern::Date, has_full_date),
        (IdentifierPattern::Phone, has_phone),
    ];
    detectors
        .into_iter()
        .find(|(_, detect)| detect(b))
        .map(|(pattern, _)| pattern)
}

/// `YYYY-MM-DD`, a real day, not inside a longer run of digits.
fn has_full_date(b: &[u8]) -> bool {
    has_iso_date(b) || is_compact_date(b) || has_slashed_date(b)
}

/// A whole value that is an HL7 v2 date: `YYYYMMDD`, `YYYYMMDDHHMM`, `YYYYMMDDHHMMSS`,
/// of a year from 1900 to 2100 (shorter or longer digit runs are codes, not dates).
fn is_compact_date(b: &[u8]) -> bool {
    let b = b.trim_ascii();
    matches!(b.len(), 8 | 12 | 14)
        && b.iter().all(u8::is_ascii_digit)
        && (1900..=2100).contains(&number(&b[..4]))
        && std::str::from_utf8(b).ok().and_then(date_year).is_some()
}

/// `D/M/YYYY` or `M/D/YYYY` (or with dots), a real day under one of the readings.
fn has_slashed_date(b: &[u8]) -> bool {
    let digits_at = |at: usize| b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    (0..b.len()).any(|start| {
        if start > 0 && b[start - 1].is_ascii_digit() {
            return false;
        }
        let first = digits_at(start);
        if !(1..=2).contains(&first) {
            return false;
        }
        let sep = start + first;
        let Some(&separator) = b.get(sep) else {
            return false;
        };
        if !matches!(separator, b'/' | b'.') {
            return false;
        }
        let second = digits_at(sep + 1);
        let sep2 = sep + 1 + second;
        if !(1..=2).contains(&second) || b.get(sep2) != Some(&separator) {
            return false;
        }
        if digits_at(sep2 + 1) != 4 {
            return false;
        }
        let (x, y) = (number(&b[start..sep]), number(&b[sep + 1..sep2]));
        let year = number(&b[sep2 + 1..sep2 + 5]);
        let valid = |day: i32, month: i32| {
            (1..=12).contains(&month) && (1..=days_in_month(year, month)).contains(&day)
        };
        valid(x, y) || valid(y, x)
    })
}

/// `YYYY-MM-DD` inside text, not part of a longer digit run.
fn has_iso_date(b: &[u8]) -> bool {
    b.windows(10).enumerate().any(|(at, w)| {
        let shaped = w.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        });
        let bounded = (at == 0 || !b[at - 1].is_ascii_digit())
            && b.get(at + 10).is_none_or(|c| !c.is_ascii_digit());
        shaped && bounded && std::str::from_utf8(w).ok().and_then(date_year).is_some()
    })
}

/// A local part of at least one letter or digit, `@`, and a domain of two or more
/// labels whose last is two or more letters (a sentence's final `.` is not the domain's).
fn has_email(b: &[u8]) -> bool {
    let is_local =
        |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-');
    b.iter()
        .enumerate()
        .filter(|&(_, &c)| c == b'@')
        .any(|(at, _)| {
            let local_len = b[..at].iter().rev().take_while(|&&c| is_local(c)).count();
            let local = &b[at - local_len..at];
            if !local.iter().any(u8::is_ascii_alphanumeric) {
                return false;
            }
            let domain = domain_at(b, at + 1);
            valid_domain(domain)
        })
}

/// The run of domain characters at `start`, without trailing dots.
fn domain_at(b: &[u8], start: usize) -> &[u8] {
    let rest = b.get(start..).unwrap_or_default();
    let len = rest
        .iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.'))
        .count();
    let mut domain = &rest[..len];
    while let [head @ .., b'.'] = domain {
        domain = head;
    }
    domain
}

/// Two or more non-empty labels not starting or ending with `-`, the last of two or more
/// letters.
fn valid_domain(domain: &[u8]) -> bool {
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in domain.split(|&c| c == b'.') {
        if label.is_empty() || label.starts_with(b"-") || label.ends_with(b"-") {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}

/// Where `needle` occurs in `hay`, ignoring ASCII case.
fn occurrences<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, window)| window.eq_ignore_ascii_case(needle))
        .map(|(at, _)| at)
}

/// `scheme://` (a scheme of two or more letters, then something not a space), or
/// `www.` starting a word, followed by a domain.
fn has_url(b: &[u8]) -> bool {
    let scheme = occurrences(b, b"://").any(|at| {
        let scheme_len = b[..at]
            .iter()
            .rev()
            .take_while(|c| c.is_ascii_alphabetic())
            .count();
        scheme_len >= 2 && b.get(at + 3).is_some_and(|c| !c.is_ascii_whitespace())
    });
    scheme
        || occurrences(b, b"www.").any(|at| {
            let starts_word = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'.');
            starts_word && valid_domain(domain_at(b, at))
        })
}

/// Whether the number starting at `start` continues one before it: a digit just
/// before, or a digit and then one of `-./+_`.
fn continues_number(b: &[u8], start: usize) -> bool {
    match start.checked_sub(1).map(|i| b[i]) {
        None => false,
        Some(c) if c.is_ascii_digit() => true,
        Some(b'-' | b'.' | b'/' | b'+' | b'_') => start >= 2 && b[start - 2].is_ascii_digit(),
        Some(_) => false,
    }
}

/// The length of the run of digits at `at`.
fn digit_run(b: &[u8], at: usize) -> usize {
    b.get(at..)
        .unwrap_or_default()
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count()
}

/// Whether what follows position `end` would make the number longer: a digit, or
/// `separator` and a digit.
fn number_goes_on(b: &[u8], end: usize, separator: u8) -> bool {
    match b.get(end).copied() {
        Some(c) if c.is_ascii_digit() => true,
        Some(c) if c == separator => b.get(end + 1).is_some_and(u8::is_ascii_digit),
        _ => false,
    }
}

/// Four numbers of 0 to 255 joined by dots, not part of a longer dotted number.
fn has_ipv4(b: &[u8]) -> bool {
    (0..b.len())
        .any(|start| b[start].is_ascii_digit() && !continues_number(b, start) && ipv4_at(b, start))
}

fn ipv4_at(b: &[u8], start: usize) -> bool {
    let mut pos = start;
    for octet in 0..4 {
        if octet > 0 {
            if b.get(pos).copied() != Some(b'.') {
                return false;
            }
            pos += 1;
        }
        let len = digit_run(b, pos);
        if len == 0 || len > 3 || number(&b[pos..pos + len]) > 255 {
            return false;
        }
        pos += len;
    }
    !number_goes_on(b, pos, b'.')
}

/// `ddd-dd-dddd`, not part of a longer number.
fn has_ssn(b: &[u8]) -> bool {
    b.windows(11).enumerate().any(|(start, w)| {
        let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
        digits(&w[..3])
            && w[3] == b'-'
            && digits(&w[4..6])
            && w[6] == b'-'
            && digits(&w[7..])
            && !continues_number(b, start)
            && !number_goes_on(b, start + 11, b'-')
    })
}

/// A phone number with separators (see [`IdentifierPattern::Phone`]).
fn has_phone(b: &[u8]) -> bool {
    (0..b.len()).any(|start| {
        matches!(b[start], b'0'..=b'9' | b'+' | b'(')
            && !continues_number(b, start)
            && phone_at(b, start)
    })
}

/// Reads groups of digits joined by single separators (space, `-`, `.`; a group may be
/// in parentheses, then needs none after it) from `start`, and judges their shape.
fn phone_at(b: &[u8], start: usize) -> bool {
    let international = b[start] == b'+';
    let mut pos = if international { start + 1 } else { start };
    let mut groups: Vec<usize> = Vec::new();
    // The separator after each group but the last (`)` when there was none).
    let mut separators: Vec<u8> = Vec::new();
    loop {
        let paren = b.get(pos).copied() == Some(b'(');
        let digits_at = if paren { pos + 1 } else { pos };
        let len = digit_run(b, digits_at);
        if len == 0 {
            break;
        }
        let mut end = digits_at + len;
        if paren {
            if b.get(end).copied() != Some(b')') {
                break;
            }
            end += 1;
        }
        groups.push(len);
        pos = end;
        let (separator, next) = match b.get(pos).copied() {
            Some(c @ (b' ' | b'-' | b'.')) => (c, pos + 1),
            _ if paren => (b')', pos),
            _ => break,
        };
        match b.get(next).copied() {
            Some(c) if c.is_ascii_digit() || c == b'(' => {
                separators.push(separator);
                pos = next;
            }
            _ => break,
        }
    }
    if groups.len() < 2 {
        return false;
    }
    if international {
        let digits: usize = groups.iter().sum();
        return (10..=15).contains(&digits);
    }
    // North American: [1] 3 3 4, possibly followed by more text after a space.
    [&[3usize, 3, 4][..], &[1, 3, 3, 4][..]]
        .iter()
        .any(|shape| {
            let k = shape.len();
            groups.len() >= k
                && groups[..k] == **shape
                && (groups.len() == k || separators[k - 1] == b' ')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    fn table(names: &[&str], rows: &[&[&str]]) -> Table {
        let mut table = Table::with_columns(names).unwrap();
        for &row in rows {
            table.push_row(row).unwrap();
        }
        table
    }

    /// A one-column table.
    fn single(name: &str, values: &[&str]) -> Table {
        let mut table = Table::with_columns(&[name]).unwrap();
        for value in values {
            table.push_row(&[*value]).unwrap();
        }
        table
    }

    fn policy(columns: Vec<ColumnRule>) -> SafeHarborPolicy {
        SafeHarborPolicy {
            columns,
            secret: SECRET,
            reference_year: Some(2026),
        }
    }

    fn values(table: &Table, name: &str) -> Vec<String> {
        let column = table.column(name).unwrap();
        (0..column.len())
            .map(|row| column.value(row).to_owned())
            .collect()
    }

    /// Applies one rule to a one-column table: the released values and the report.
    fn one(kind: ColumnKind, values_in: &[&str]) -> Result<(Vec<String>, ColumnReport), AnonError> {
        let table = single("c", values_in);
        let (released, report) = apply(&table, &policy(vec![ColumnRule::new("c", kind)]))?;
        Ok((values(&released, "c"), report.columns[0].clone()))
    }

    fn value_error(kind: ColumnKind, values_in: &[&str]) -> (usize, String) {
        match one(kind, values_in) {
            Err(AnonError::SafeHarborValue {
                column,
                kind: named,
                row,
                value,
                ..
            }) => {
                assert_eq!(column, "c");
                assert_eq!(named, kind.name());
                (row, value)
            }
            other => panic!("{values_in:?} as {kind}: expected a value error, got {other:?}"),
        }
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in ColumnKind::ALL {
            assert_eq!(ColumnKind::parse(kind.name()).unwrap(), kind);
            assert_eq!(kind.name().parse::<ColumnKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.name());
        }
        let names: std::collections::HashSet<&str> =
            ColumnKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), ColumnKind::ALL.len());
        assert_eq!(ColumnKind::ALL.map(ColumnKind::name).join(", "), KIND_NAMES);
        assert_eq!(
            ColumnKind::parse(" Medical_Record_Number ").unwrap(),
            ColumnKind::MedicalRecordNumber
        );
        assert_eq!(
            ColumnKind::parse("FREE TEXT").unwrap(),
            ColumnKind::FreeText
        );
        let error = ColumnKind::parse("zipcode").unwrap_err().to_string();
        assert!(error.contains("`zipcode`"), "{error}");
        assert!(error.contains("medical-record-number"), "{error}");
        assert!(
            error.contains("free-text") && error.contains("plain"),
            "{error}"
        );
    }

    #[test]
    fn identifier_columns_are_removed() {
        let removed: Vec<ColumnKind> = ColumnKind::ALL
            .into_iter()
            .filter(|k| k.is_removed_identifier())
            .collect();
        assert_eq!(removed.len(), 18);
        let mut names: Vec<&str> = removed.iter().map(|k| k.name()).collect();
        names.extend(["free-text", "dx"]);
        let first: Vec<&str> = names
            .iter()
            .map(|n| if *n == "dx" { "E11.9" } else { "secret one" })
            .collect();
        let second: Vec<&str> = names
            .iter()
            .map(|n| if *n == "dx" { "I10" } else { "secret two" })
            .collect();
        let input = table(&names, &[first.as_slice(), second.as_slice()]);
        let mut rules: Vec<ColumnRule> = removed
            .iter()
            .map(|&k| ColumnRule::new(k.name(), k))
            .collect();
        rules.push(ColumnRule::new("free-text", ColumnKind::FreeText));
        rules.push(ColumnRule::new("dx", ColumnKind::Plain));
        let (released, report) = apply(&input, &policy(rules)).unwrap();
        assert_eq!(released.names(), ["dx"]);
        assert_eq!(values(&released, "dx"), ["E11.9", "I10"]);
        assert_eq!(report.rows, 2);
        assert_eq!(report.columns.len(), names.len());
        for (column, name) in report.columns.iter().zip(&names) {
            assert_eq!(column.column, *name, "the report follows the table's order");
            if *name == "dx" {
                assert_eq!(column.action, Action::Kept);
                assert_eq!(column.values_changed, 0);
            } else {
                assert_eq!(column.action, Action::Removed, "{name}");
                assert_eq!(column.values_changed, 2, "{name}");
            }
        }
    }

    #[test]
    fn state_is_kept() {
        let (out, report) = one(ColumnKind::State, &["MA", "Massachusetts"]).unwrap();
        assert_eq!(out, ["MA", "Massachusetts"]);
        assert_eq!(report.action, Action::Kept);
    }

    #[test]
    fn zip_codes_keep_three_digits() {
        let (out, report) = one(
            ColumnKind::Zip,
            &[
                "02139",
                "02139-4307",
                " 02139 4307 ",
                "021394307",
                "10001",
                "",
                "03601",
                "99999",
                "02139 - 4307",
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            ["021", "021", "021", "021", "100", "", "000", "999", "021"]
        );
        assert_eq!(report.action, Action::ZipTruncated);
        assert_eq!(report.values_changed, 8);
    }

    #[test]
    fn restricted_zip_prefixes_become_000() {
        assert_eq!(RESTRICTED_ZIP_PREFIXES.len(), 17);
        for prefix in RESTRICTED_ZIP_PREFIXES {
            assert_eq!(
                zip3(&format!("{prefix}12")).as_deref(),
                Some("000"),
                "{prefix}"
            );
            assert_eq!(
                zip3(&format!("{prefix}12-3456")).as_deref(),
                Some("000"),
                "{prefix}"
            );
        }
        // Their neighbours are not restricted.
        for (zip, prefix) in [
            ("03712", "037"),
            ("82212", "822"),
            ("89112", "891"),
            ("05812", "058"),
        ] {
            assert_eq!(zip3(zip).as_deref(), Some(prefix), "{zip}");
        }
    }

    #[test]
    fn a_value_that_is_not_a_zip_is_an_error() {
        assert_eq!(
            value_error(ColumnKind::Zip, &["02139", "2139"]),
            (2, "2139".to_owned())
        );
        for bad in [
            "0213A",
            "02139-43",
            "021390",
            "02139-43070",
            "Boston",
            "02139+4307",
        ] {
            assert_eq!(value_error(ColumnKind::Zip, &["02139", bad, bad]).1, bad);
        }
        let error = one(ColumnKind::Zip, &["2139"]).unwrap_err().to_string();
        assert!(
            error.contains("`c`") && error.contains("`2139`") && error.contains("row 1"),
            "{error}"
        );
    }

    #[test]
    fn hl7_dates_become_years() {
        for (value, year) in [
            ("19800101", Some(1980)),
            ("198001", Some(1980)),
            ("20240229", Some(2024)),
            ("20230229", None),
            ("202401011230", Some(2024)),
            ("20240101123045.5-0500", Some(2024)),
            ("2024011", None),
            ("20241301", None),
        ] {
            assert_eq!(date_year(value), year, "{value}");
        }
    }

    #[test]
    fn dates_of_every_format_become_years() {
        let (out, report) = one(
            ColumnKind::Date,
            &[
                "1980",
                "1980-07",
                "1980-07-15",
                "1980-07-15T10:30:00+02:00",
                "2026-01-05T23:59:59.123Z",
                "2024-02-29",
                "2026-01-05 10:30",
                "",
                "2000-12-31T00:00:00-0500",
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            ["1980", "1980", "1980", "1980", "2026", "2024", "2026", "", "2000"]
        );
        assert_eq!(report.action, Action::DateToYear);
        assert_eq!(report.values_changed, 7);
    }

    #[test]
    fn bad_dates_are_errors() {
        for bad in [
            "1980-13-01",
            "1980-00",
            "2023-02-29",
            "1900-02-29",
            "1980-04-31",
            "15/07/1980",
            "July 1980",
            "80",
            "1980-7-15",
            "19801315",
            "1980-07-15T25:00:00Z",
            "1980-07-15T10:61",
            "1980-07-15T10:30:00+2",
            "1980-07-15T10:30:00.Z",
            "1980-07-15X",
        ] {
            assert_eq!(
                value_error(ColumnKind::Date, &["2000", bad]),
                (2, bad.to_owned())
            );
        }
        assert_eq!(date_year("2000-02-29"), Some(2000));
    }

    #[test]
    fn ages_over_89_become_one_category() {
        let (out, report) = one(
            ColumnKind::Age,
            &["89", "90", "105", "4.5", " 42 ", "", "90+", "89.9"],
        )
        .unwrap();
        assert_eq!(out, ["89", "90+", "90+", "4.5", "42", "", "90+", "89.9"]);
        assert_eq!(report.action, Action::AgeCapped);
        assert_eq!(report.values_changed, 3);
        for bad in ["abc", "-3", "4.", ".5", "1e2", "42 years", "90-"] {
            assert_eq!(value_error(ColumnKind::Age, &[bad]), (1, bad.to_owned()));
        }
    }

    #[test]
    fn birth_years_of_people_over_89_are_grouped() {
        let (out, report) = one(
            ColumnKind::BirthDate,
            &[
                "1936-05-01",
                "1937-01-01",
                "1920",
                "1990-02-03T04:05:06Z",
                "1936-12-31",
                "",
            ],
        )
        .unwrap();
        assert_eq!(out, ["<=1936", "1937", "<=1936", "1990", "<=1936", ""]);
        assert_eq!(report.action, Action::BirthYearCapped);
        assert_eq!(report.values_changed, 5);
        // Another reference year moves the cap.
        let table = single("dob", &["1936-05-01", "1934"]);
        let mut rules = policy(vec![ColumnRule::new("dob", ColumnKind::BirthDate)]);
        rules.reference_year = Some(2024);
        let (released, _) = apply(&table, &rules).unwrap();
        assert_eq!(values(&released, "dob"), ["1936", "<=1934"]);
        // Without a reference year, a birth date cannot be made safe.
        rules.reference_year = None;
        match apply(&table, &rules) {
            Err(AnonError::Policy(message)) => {
                assert!(
                    message.contains("`dob`") && message.contains("reference"),
                    "{message}"
                );
            }
            other => panic!("expected a policy error, got {other:?}"),
        }
        rules.reference_year = Some(26);
        assert!(matches!(apply(&table, &rules), Err(AnonError::Policy(_))));
        // A plain date column needs no reference year.
        let plain_dates = SafeHarborPolicy {
            columns: vec![ColumnRule::new("dob", ColumnKind::Date)],
            secret: SECRET,
            reference_year: None,
        };
        let (released, _) = apply(&table, &plain_dates).unwrap();
        assert_eq!(values(&released, "dob"), ["1936", "1934"]);
    }

    #[test]
    fn pseudonyms_link_rows_inside_one_dataset_only() {
        let input = table(
            &["mrn", "dx"],
            &[
                &["MRN-1", "E11.9"],
                &["MRN-2", "I10"],
                &["MRN-1", "I10"],
                &["", "I10"],
            ],
        );
        let rules = vec![
            ColumnRule::new("mrn", ColumnKind::MedicalRecordNumber).with_pseudonyms(),
            ColumnRule::new("dx", ColumnKind::Plain),
        ];
        let (released, report) = apply(&input, &policy(rules.clone())).unwrap();
        let mrn = values(&released, "mrn");
        assert_eq!(mrn[0], mrn[2], "one patient, one pseudonym");
        assert_ne!(mrn[0], mrn[1]);
        assert_eq!(mrn[3], "", "missing stays missing");
        for p in &mrn[..3] {
            assert_eq!(p.len(), 32);
            assert!(
                p.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{p}"
            );
            assert!(!p.contains("MRN"));
        }
        assert_eq!(mrn[0], pseudonym(&SECRET, "MRN-1"));
        assert_eq!(mrn[0], pseudonym(&SECRET, " MRN-1 "));
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &SECRET), b"MRN-1");
        assert_eq!(mrn[0], hex::encode(&expected.as_ref()[..16]));
        let column = report.column("mrn").unwrap();
        assert_eq!(column.action, Action::Pseudonymized);
        assert_eq!(column.values_changed, 3);
        // Stable under the same secret, different under another.
        let (again, _) = apply(&input, &policy(rules.clone())).unwrap();
        assert_eq!(values(&again, "mrn"), mrn);
        let mut other = policy(rules);
        other.secret = [8; 32];
        let (elsewhere, _) = apply(&input, &other).unwrap();
        let mrn_elsewhere = values(&elsewhere, "mrn");
        assert_ne!(mrn_elsewhere[0], mrn[0]);
        assert_eq!(mrn_elsewhere[0], mrn_elsewhere[2]);
        // Without `pseudonymize`, the column is removed.
        let (released, report) = apply(
            &input,
            &policy(vec![
                ColumnRule::new("mrn", ColumnKind::MedicalRecordNumber),
                ColumnRule::new("dx", ColumnKind::Plain),
            ]),
        )
        .unwrap();
        assert_eq!(released.names(), ["dx"]);
        assert_eq!(report.column("mrn").unwrap().action, Action::Removed);
    }

    #[test]
    fn other_unique_ids_can_be_pseudonymized() {
        let table = single("encounter", &["enc-1", "enc-1", "enc-2"]);
        let (released, report) = apply(
            &table,
            &policy(vec![ColumnRule::new(
                "encounter",
                ColumnKind::OtherUniqueId,
            )
            .with_pseudonyms()]),
        )
        .unwrap();
        let out = values(&released, "encounter");
        assert_eq!(out[0], pseudonym(&SECRET, "enc-1"));
        assert_eq!(out[0], out[1]);
        assert_ne!(out[1], out[2]);
        assert_eq!(report.columns[0].action, Action::Pseudonymized);
    }

    #[test]
    fn options_that_do_not_fit_the_kind_are_refused() {
        let table = single("zip", &["02139"]);
        let zip = policy(vec![
            ColumnRule::new("zip", ColumnKind::Zip).with_pseudonyms()
        ]);
        match apply(&table, &zip) {
            Err(AnonError::Policy(message)) => {
                assert!(
                    message.contains("`zip`") && message.contains("pseudonymized"),
                    "{message}"
                );
            }
            other => panic!("expected a policy error, got {other:?}"),
        }
        let plain = policy(vec![
            ColumnRule::new("zip", ColumnKind::Plain).keeping_free_text()
        ]);
        match apply(&table, &plain) {
            Err(AnonError::Policy(message)) => {
                assert!(message.contains("keep_free_text"), "{message}");
            }
            other => panic!("expected a policy error, got {other:?}"),
        }
        let twice = policy(vec![
            ColumnRule::new("zip", ColumnKind::Zip),
            ColumnRule::new("zip", ColumnKind::Plain),
        ]);
        match apply(&table, &twice) {
            Err(AnonError::Policy(message)) => assert!(message.contains("twice"), "{message}"),
            other => panic!("expected a policy error, got {other:?}"),
        }
    }

    #[test]
    fn free_text_is_removed_unless_kept() {
        let (released, report) = apply(
            &single("note", &["Patient stable"]),
            &policy(vec![ColumnRule::new("note", ColumnKind::FreeText)]),
        )
        .unwrap();
        assert!(released.names().is_empty());
        assert_eq!(report.columns[0].action, Action::Removed);
        assert_eq!(report.columns[0].values_changed, 1);
    }

    #[test]
    fn kept_free_text_is_redacted() {
        let notes = [
            "Patient stable, BP 120/80 mmHg",
            "Seen in 2026; LOINC 8867-4 normal",
            "E11.9 follow-up in 3 months",
            "seen 2026-01-05",
            "see https://example.org/results",
            "logged in from 10.1.2.3",
            "SSN 123-45-6789 on file",
            "call (555) 123-4567 after 5",
            "mail jane.doe@example.org",
        ];
        let table = single("note", &notes);
        let (released, report) = apply(
            &table,
            &policy(vec![
                ColumnRule::new("note", ColumnKind::FreeText).keeping_free_text()
            ]),
        )
        .unwrap();
        let out = values(&released, "note");
        assert_eq!(out[..3], notes[..3]);
        assert!(out[3..].iter().all(|v| v == REDACTED), "{out:?}");
        let column = report.column("note").unwrap();
        assert_eq!(column.action, Action::FreeTextRedacted);
        assert_eq!(column.redactions, 6);
        assert_eq!(column.values_changed, 6);
    }

    #[test]
    fn patterns_are_detected() {
        use IdentifierPattern as P;
        for (text, pattern) in [
            ("write to jane.doe@example.org today", P::Email),
            ("JANE_DOE+x@mail.example.co.uk.", P::Email),
            ("a@b.cd", P::Email),
            ("see https://example.org/a?b=c", P::Url),
            ("HTTP://EXAMPLE.ORG", P::Url),
            ("ftp://files", P::Url),
            ("at www.example.com/contact", P::Url),
            ("WWW.Example.org", P::Url),
            ("from 192.168.1.20 at noon", P::IpAddress),
            ("10.0.0.1", P::IpAddress),
            ("255.255.255.255.", P::IpAddress),
            ("SSN 123-45-6789.", P::Ssn),
            ("123-45-6789", P::Ssn),
            ("ssn:123-45-6789x", P::Ssn),
            ("seen 2026-01-05 in clinic", P::Date),
            ("19800101", P::Date),
            ("202601051030", P::Date),
            ("on 05/01/2026", P::Date),
            ("31.12.1999", P::Date),
            ("2019-03-14T10:00:00Z", P::Date),
            ("call (555) 123-4567", P::Phone),
            ("call 555-123-4567 2 times", P::Phone),
            ("555.123.4567", P::Phone),
            ("555 123 4567", P::Phone),
            ("1-800-555-0199", P::Phone),
            ("+44 20 7946 0958", P::Phone),
            ("+1 (555) 123-4567", P::Phone),
            ("(555)123-4567", P::Phone),
            ("Tel.555-123-4567", P::Phone),
            ("Room 12 555-123-4567", P::Phone),
        ] {
            assert_eq!(detect_identifier(text), Some(pattern), "{text}");
        }
    }

    #[test]
    fn clinical_values_are_not_identifiers() {
        for text in [
            "",
            "BP 120/80 mmHg",
            "120/80",
            "year 2026, month 01",
            "12345678",
            "19801345",
            "120/80",
            "1/2",
            "45/45/2026",
            "2026-13-05",
            "12026-01-05",
            "LOINC 8867-4",
            "8867-4",
            "E11.9",
            "ICD-10 E11.9, HbA1c 7.2 %",
            "glucose 5.6 mmol/L",
            "version 1.2.3",
            "1.2.840.10008.5.1.4.1.1.2",
            "999.1.1.1",
            "1.2.3.4.5",
            "ratio 3:1",
            "@home",
            "a@b",
            "x@y.c1",
            "5@10.5mg",
            "12345678901",
            "1234-56-7890",
            "123-45-67890",
            "NDC 00002-7510-01",
            "555-1234",
            "+1 555",
            "age 18+ 20 1234 5678",
            "awww.example",
            "SNOMED 44054006",
            "weight 72.5 kg",
        ] {
            assert_eq!(detect_identifier(text), None, "{text}");
        }
    }

    #[test]
    fn identifiers_in_a_plain_column_are_an_error() {
        for (values_in, row, found, kind) in [
            (
                &["E11.9", "I10", "jane@example.org", "I10"][..],
                3,
                "an email address",
                "email",
            ),
            (&["I10", "555-123-4567"][..], 2, "a phone number", "phone"),
            (&["see www.example.com", "I10"][..], 1, "a URL", "url"),
            (
                &["I10", "I10", "192.168.0.1"][..],
                3,
                "an IP address",
                "ip-address",
            ),
            (&["123-45-6789"][..], 1, "a social security number", "ssn"),
        ] {
            match one(ColumnKind::Plain, values_in) {
                Err(error @ AnonError::IdentifierInPlainColumn { .. }) => {
                    let message = error.to_string();
                    let AnonError::IdentifierInPlainColumn {
                        column,
                        row: at,
                        found: what,
                        kind: declare,
                    } = error
                    else {
                        unreachable!()
                    };
                    assert_eq!(
                        (column.as_str(), at, what, declare),
                        ("c", row, found, kind)
                    );
                    assert!(message.contains(&format!("row {row}")), "{message}");
                    assert!(message.contains("declare"), "{message}");
                }
                other => panic!("{values_in:?}: expected an error, got {other:?}"),
            }
        }
        let (out, report) = one(ColumnKind::Plain, &["E11.9", "8867-4", "120/80"]).unwrap();
        assert_eq!(out, ["E11.9", "8867-4", "120/80"]);
        assert_eq!(report.action, Action::Kept);
    }

    #[test]
    fn every_column_must_be_declared() {
        let input = table(&["a", "b"], &[&["1", "2"]]);
        match apply(
            &input,
            &policy(vec![ColumnRule::new("a", ColumnKind::Plain)]),
        ) {
            Err(error @ AnonError::UndeclaredColumn { .. }) => {
                let message = error.to_string();
                assert!(
                    matches!(&error, AnonError::UndeclaredColumn { column, .. } if column == "b")
                );
                assert!(
                    message.contains("`b`") && message.contains("plain"),
                    "{message}"
                );
            }
            other => panic!("expected an undeclared column, got {other:?}"),
        }
    }

    #[test]
    fn a_declared_column_must_exist() {
        let input = table(&["a", "b"], &[&["1", "2"]]);
        let rules = vec![
            ColumnRule::new("a", ColumnKind::Plain),
            ColumnRule::new("b", ColumnKind::Plain),
            ColumnRule::new("c", ColumnKind::Zip),
        ];
        match apply(&input, &policy(rules)) {
            Err(AnonError::UnknownColumn { column, known }) => {
                assert_eq!(column, "c");
                assert_eq!(known, "a, b");
            }
            other => panic!("expected an unknown column, got {other:?}"),
        }
    }

    #[test]
    fn the_report_names_every_column() {
        let input = table(
            &["name", "zip", "dx"],
            &[
                &["Jane Doe", "02139", "E11.9"],
                &["John Roe", "03601", "I10"],
            ],
        );
        let (released, report) = apply(
            &input,
            &policy(vec![
                ColumnRule::new("name", ColumnKind::Name),
                ColumnRule::new("zip", ColumnKind::Zip),
                ColumnRule::new("dx", ColumnKind::Plain),
            ]),
        )
        .unwrap();
        assert_eq!(released.names(), ["zip", "dx"]);
        assert_eq!(released.len(), 2);
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].contains("2 rows") && lines[0].contains("1 removed"),
            "{text}"
        );
        assert!(
            lines[2].contains("name") && lines[2].contains("removed"),
            "{text}"
        );
        assert!(
            lines[3].contains("zip") && lines[3].contains("zip-truncated"),
            "{text}"
        );
        assert!(
            lines[4].contains("dx") && lines[4].contains("kept"),
            "{text}"
        );
        assert!(text.ends_with('\n'));
        // Serialized for the API, and read back.
        let serialized = toml::to_string(&report).unwrap();
        assert!(serialized.contains("zip-truncated"), "{serialized}");
        assert!(serialized.contains("values_changed"), "{serialized}");
        let back: SafeHarborReport = toml::from_str(&serialized).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn rules_read_from_toml() {
        #[derive(Deserialize)]
        struct Rules {
            columns: Vec<ColumnRule>,
        }
        let rules: Rules = toml::from_str(
            r#"
            [[columns]]
            column = "mrn"
            kind = "medical-record-number"
            pseudonymize = true

            [[columns]]
            column = "note"
            kind = "free-text"
            "#,
        )
        .unwrap();
        assert_eq!(
            rules.columns,
            [
                ColumnRule::new("mrn", ColumnKind::MedicalRecordNumber).with_pseudonyms(),
                ColumnRule::new("note", ColumnKind::FreeText),
            ]
        );
        let error = toml::from_str::<Rules>("[[columns]]\ncolumn = \"x\"\nkind = \"zipcode\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("unknown column kind"), "{error}");
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let policy = SafeHarborPolicy {
            columns: Vec::new(),
            secret: [0xAB; 32],
            reference_year: None,
        };
        let debug = format!("{policy:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("171"), "{debug}");
    }
}
