//! The alert rules: which vital-sign readings raise a clinical alert, at what severity,
//! when an open alert clears and when an unacknowledged one escalates. Operators keep
//! them in a TOML file ([`default_toml`] is the built-in set, to start from), read by
//! [`AlertRules::from_toml`], which refuses anything doubtful (an unknown field, a rule
//! with two conditions, hysteresis on the wrong side of its threshold) with an error
//! naming the rule and the field: a typo in a clinical alarm must not pass silently.
//!
//! ```toml
//! # seconds an alert may stay unacknowledged before it escalates; 0 = never
//! escalate_after = 300
//!
//! [[rule]]
//! id = "spo2-low"          # unique, 1–64 characters of a–z, 0–9 and `-`
//! kind = "spo2"            # heart-rate | spo2 | respiration-rate | systolic-bp | temperature
//! below = 90.0             # exactly one of below / above / rate_above / rate_below
//! for_secs = 30            # the condition must hold this long (0 = at once)
//! clear_at = 92.0          # hysteresis (threshold rules only); default: the threshold
//! severity = "urgent"      # info | urgent | emergency
//! device_types = ["bedside-monitor"]   # optional: only devices of these types
//! patients = ["mrn:123"]               # optional: only these patients
//!
//! [[rule]]
//! id = "hr-rising"
//! kind = "heart-rate"
//! rate_above = 20.0        # canonical unit per minute, over window_secs
//! window_secs = 60         # required for rate rules
//! severity = "urgent"
//!
//! [news2]
//! enabled = true
//! scale2_patients = ["mrn:456"]
//! on_oxygen_patients = ["mrn:456"]
//! max_age_secs = 900
//! ```
//!
//! Values are in each kind's canonical unit ([`VitalKind::unit`]): `%`, `/min`, `mm[Hg]`,
//! `Cel`. A `below` rule holds while the value is strictly below its threshold and clears
//! once the value is at or above `clear_at`; an `above` rule the mirror image. A rate rule
//! measures the change between the oldest and the newest reading of its window, per
//! minute; `rate_above = r` holds while the value rises faster than `r` a minute,
//! `rate_below = r` (a positive number too) while it falls faster than `r` a minute, and an
//! open rate alert clears once the rate is back to half its limit
//! ([`RATE_CLEAR_FRACTION`]).

use std::collections::HashMap;
use std::fmt;

use medmesh_core::news2::Spo2Scale;
use medmesh_core::vitals::VitalKind;
use serde::{Deserialize, Serialize};
use time::Duration;

/// The most rules a rules file may hold.
pub const MAX_RULES: usize = 1000;

/// The longest `for_secs`, `window_secs`, `escalate_after` and `news2.max_age_secs`
/// accepted: a day.
pub const MAX_SECS: u64 = 86_400;

/// The rule id of NEWS2 alerts; no rule of the file may take it.
pub const NEWS2_RULE: &str = "news2";

/// Hysteresis of rate rules: an open rate alert clears once the rate of change is back
/// to this fraction of its limit (`rate_above = 20` clears at a rise of 10 a minute or
/// less), so a rate hovering around the limit does not raise and clear in turn.
pub const RATE_CLEAR_FRACTION: f64 = 0.5;

/// `escalate_after` when the file does not say.
const DEFAULT_ESCALATE_AFTER_SECS: u64 = 300;

/// `news2.max_age_secs` when the file does not say.
const DEFAULT_NEWS2_MAX_AGE_SECS: u64 = 900;

/// How urgently an alert calls for a clinician. Ordered: escalation raises it one step
/// ([`Severity::escalated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; no immediate action.
    Info,
    /// A clinician should respond soon.
    Urgent,
    /// A clinician must respond now.
    Emergency,
}

impl Severity {
    /// One step up, capped at [`Severity::Emergency`].
    pub fn escalated(self) -> Self {
        match self {
            Severity::Info => Severity::Urgent,
            Severity::Urgent | Severity::Emergency => Severity::Emergency,
        }
    }

    /// Its name in rules files and JSON: `info`, `urgent`, `emergency`.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Urgent => "urgent",
            Severity::Emergency => "emergency",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a rule watches for, in the kind's canonical unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// The value is strictly below this.
    Below(f64),
    /// The value is strictly above this.
    Above(f64),
    /// The value rises faster than `per_minute` a minute, measured over `window`.
    RateAbove {
        /// The limit, canonical unit per minute (positive).
        per_minute: f64,
        /// The span the rate is measured over.
        window: Duration,
    },
    /// The value falls faster than `per_minute` a minute (the rate is below
    /// `-per_minute`), measured over `window`.
    RateBelow {
        /// The limit, canonical unit per minute (positive: the speed of the fall).
        per_minute: f64,
        /// The span the rate is measured over.
        window: Duration,
    },
}

impl Condition {
    /// The field of the rules file that states it: `below`, `above`, `rate_above`,
    /// `rate_below`.
    pub fn field(&self) -> &'static str {
        match self {
            Condition::Below(_) => "below",
            Condition::Above(_) => "above",
            Condition::RateAbove { .. } => "rate_above",
            Condition::RateBelow { .. } => "rate_below",
        }
    }

    /// The window of a rate condition; `None` for a threshold.
    pub fn window(&self) -> Option<Duration> {
        match self {
            Condition::Below(_) | Condition::Above(_) => None,
            Condition::RateAbove { window, .. } | Condition::RateBelow { window, .. } => {
                Some(*window)
            }
        }
    }
}

/// One alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique in its file: 1–64 characters of `a–z`, `0–9` and `-`.
    pub id: String,
    /// The vital sign it watches.
    pub kind: VitalKind,
    /// What raises it.
    pub condition: Condition,
    /// How long the condition must hold, every reading meeting it, before the alert is
    /// raised (zero: at the first reading meeting it).
    pub for_duration: Duration,
    /// Threshold rules: the value an open alert clears at (at or above it for `below`,
    /// at or below it for `above`); `None` clears at the threshold itself. Always `None`
    /// for rate rules (they clear at [`RATE_CLEAR_FRACTION`] of their limit).
    pub clear_at: Option<f64>,
    /// The severity it raises alerts at.
    pub severity: Severity,
    /// Only readings from devices of these types; empty: every device.
    pub device_types: Vec<String>,
    /// Only readings of these patients (references as the devices are registered
    /// with); empty: every patient.
    pub patients: Vec<String>,
}

impl Rule {
    /// Whether the rule applies to readings of `patient` from a device of `device_type`.
    pub fn applies_to(&self, device_type: &str, patient: &str) -> bool {
        (self.device_types.is_empty() || self.device_types.iter().any(|t| t == device_type))
            && (self.patients.is_empty() || self.patients.iter().any(|p| p == patient))
    }

    /// The value an open threshold alert clears at (`clear_at`, else the threshold);
    /// `None` for rate rules.
    pub fn clear_level(&self) -> Option<f64> {
        match self.condition {
            Condition::Below(threshold) | Condition::Above(threshold) => {
                Some(self.clear_at.unwrap_or(threshold))
            }
            Condition::RateAbove { .. } | Condition::RateBelow { .. } => None,
        }
    }
}

/// How NEWS2 is scored from device readings.
///
/// NEWS2 needs all five vitals devices report (respiration rate, SpO2, systolic blood
/// pressure, pulse — the heart rate — and temperature), each no older than `max_age`
/// relative to the newest of them. Devices do not report the level of consciousness:
/// it is taken as Alert (scoring 0), so a device-computed NEWS2 can only under-score a
/// patient who is not alert, never over-score one. Whether the patient breathes
/// supplemental oxygen and which SpO2 scale applies are clinicians' decisions recorded
/// here per patient; a patient in neither list scores on air, scale 1.
#[derive(Debug, Clone, PartialEq)]
pub struct News2Settings {
    /// Whether NEWS2 alerts are raised at all.
    pub enabled: bool,
    /// Patients whose SpO2 is scored on scale 2 (hypercapnic respiratory failure).
    pub scale2_patients: Vec<String>,
    /// Patients on supplemental oxygen.
    pub on_oxygen_patients: Vec<String>,
    /// The oldest a vital may be, relative to the newest of the five, to be scored.
    pub max_age: Duration,
}

impl Default for News2Settings {
    /// Enabled, nobody on scale 2 or oxygen, vitals up to 15 minutes apart.
    fn default() -> Self {
        Self {
            enabled: true,
            scale2_patients: Vec::new(),
            on_oxygen_patients: Vec::new(),
            max_age: Duration::seconds(DEFAULT_NEWS2_MAX_AGE_SECS as i64),
        }
    }
}

impl News2Settings {
    /// The SpO2 scale `patient` is scored on.
    pub fn scale_for(&self, patient: &str) -> Spo2Scale {
        if self.scale2_patients.iter().any(|p| p == patient) {
            Spo2Scale::Scale2
        } else {
            Spo2Scale::Scale1
        }
    }

    /// Whether `patient` is on supplemental oxygen.
    pub fn on_oxygen(&self, patient: &str) -> bool {
        self.on_oxygen_patients.iter().any(|p| p == patient)
    }
}

/// A rules file, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRules {
    /// How long an open alert may stay unacknowledged before it escalates (and again
    /// after each escalation); `None` (0 in the file): never.
    pub escalate_after: Option<Duration>,
    /// The threshold and rate rules, in file order.
    pub rules: Vec<Rule>,
    /// NEWS2.
    pub news2: News2Settings,
}

impl Default for AlertRules {
    /// The built-in set (the same as [`default_toml`]), adult thresholds:
    ///
    /// | rule | condition | for | clears at | severity |
    /// |---|---|---|---|---|
    /// | `spo2-low` | SpO2 below 90 % | 30 s | 92 % | urgent |
    /// | `heart-rate-high` | heart rate above 130 /min | 30 s | 120 /min | urgent |
    /// | `heart-rate-low` | heart rate below 40 /min | 30 s | 45 /min | urgent |
    /// | `respiration-rate-high` | respiration rate above 24 /min | 60 s | 21 /min | urgent |
    /// | `systolic-bp-low` | systolic BP below 90 mmHg | 60 s | 100 mmHg | urgent |
    /// | `temperature-high` | temperature above 39.1 °C | 300 s | 38.5 °C | info |
    ///
    /// NEWS2 enabled (every patient on air, scale 1; vitals up to 900 s apart);
    /// unacknowledged alerts escalate after 300 s.
    fn default() -> Self {
        let rule = |id: &str, kind, condition, for_secs: i64, clear_at: f64, severity| Rule {
            id: id.to_owned(),
            kind,
            condition,
            for_duration: Duration::seconds(for_secs),
            clear_at: Some(clear_at),
            severity,
            device_types: Vec::new(),
            patients: Vec::new(),
        };
        Self {
            escalate_after: Some(Duration::seconds(DEFAULT_ESCALATE_AFTER_SECS as i64)),
            rules: vec![
                rule(
                    "spo2-low",
                    VitalKind::Spo2,
                    Condition::Below(90.0),
                    30,
                    92.0,
                    Severity::Urgent,
                ),
                rule(
                    "heart-rate-high",
                    VitalKind::HeartRate,
                    Condition::Above(130.0),
                    30,
                    120.0,
                    Severity::Urgent,
                ),
                rule(
                    "heart-rate-low",
                    VitalKind::HeartRate,
                    Condition::Below(40.0),
                    30,
                    45.0,
                    Severity::Urgent,
                ),
                rule(
                    "respiration-rate-high",
                    VitalKind::RespirationRate,
                    Condition::Above(24.0),
                    60,
                    21.0,
                    Severity::Urgent,
                ),
                rule(
                    "systolic-bp-low",
                    VitalKind::SystolicBp,
                    Condition::Below(90.0),
                    60,
                    100.0,
                    Severity::Urgent,
                ),
                rule(
                    "temperature-high",
                    VitalKind::Temperature,
                    Condition::Above(39.1),
                    300,
                    38.5,
                    Severity::Info,
                ),
            ],
            news2: News2Settings::default(),
        }
    }
}

impl AlertRules {
    /// Parses and checks a rules file. Every error names the rule (its position in the
    /// file, counted from 1, and its id) and the field at fault.
    pub fn from_toml(text: &str) -> Result<Self, RulesError> {
        let file: FileRules = toml::from_str(text).map_err(|e| RulesError::Parse(e.to_string()))?;
        file.validate()
    }

    /// The rule with this id.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

/// The built-in rules as a rules file: what [`AlertRules::default`] is, for operators to
/// copy and edit.
pub fn default_toml() -> &'static str {
    DEFAULT_TOML
}

const DEFAULT_TOML: &str = r#"# medmesh alert rules: the built-in set. Copy this file, edit it and point the node at it.
# Values are in each vital's canonical unit: spo2 %, heart-rate and respiration-rate /min,
# systolic-bp mm[Hg], temperature Cel.

# Seconds an open alert may stay unacknowledged before it escalates one severity step
# (and again after as long each time); 0 = never.
escalate_after = 300

# Each rule: id (unique; a-z, 0-9, -), kind, exactly one condition (below, above,
# rate_above, rate_below; rates per minute over window_secs), for_secs (how long the
# condition must hold; 0 = at once), clear_at (threshold rules: where an open alert
# clears; default the threshold), severity (info, urgent, emergency), and optionally
# device_types = [...] and patients = [...] to narrow it.

[[rule]]
id = "spo2-low"
kind = "spo2"
below = 90.0
for_secs = 30
clear_at = 92.0
severity = "urgent"

[[rule]]
id = "heart-rate-high"
kind = "heart-rate"
above = 130.0
for_secs = 30
clear_at = 120.0
severity = "urgent"

[[rule]]
id = "heart-rate-low"
kind = "heart-rate"
below = 40.0
for_secs = 30
clear_at = 45.0
severity = "urgent"

[[rule]]
id = "respiration-rate-high"
kind = "respiration-rate"
above = 24.0
for_secs = 60
clear_at = 21.0
severity = "urgent"

[[rule]]
id = "systolic-bp-low"
kind = "systolic-bp"
below = 90.0
for_secs = 60
clear_at = 100.0
severity = "urgent"

[[rule]]
id = "temperature-high"
kind = "temperature"
above = 39.1
for_secs = 300
clear_at = 38.5
severity = "info"

# NEWS2 from device vitals (consciousness is taken as Alert: devices do not report it).
# Patients on SpO2 scale 2 and on supplemental oxygen are clinicians' decisions.
[news2]
enabled = true
scale2_patients = []
on_oxygen_patients = []
# A vital older than this (seconds, relative to the newest) is too stale to score.
max_age_secs = 900
"#;

/// Why a rules file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RulesError {
    /// Not TOML, an unknown field, a field of the wrong type or a missing one.
    #[error("the alert rules do not parse: {0}")]
    Parse(String),
    /// More rules than [`MAX_RULES`].
    #[error("{count} rules given; at most {max} are allowed")]
    TooManyRules {
        /// Rules in the file.
        count: usize,
        /// [`MAX_RULES`].
        max: usize,
    },
    /// An id that is not 1–64 characters of `a–z`, `0–9` and `-`.
    #[error("rule {rule}, field `id`: `{id}` is not 1–64 characters of a–z, 0–9 and `-`")]
    BadId {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// The id given.
        id: String,
    },
    /// The id [`NEWS2_RULE`], which NEWS2 alerts carry.
    #[error("rule {rule}, field `id`: `{id}` is reserved for NEWS2 alerts")]
    ReservedId {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// The id given.
        id: String,
    },
    /// Two rules with one id.
    #[error("rule {rule} (`{id}`), field `id`: rule {first} has this id already")]
    DuplicateId {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// The id.
        id: String,
        /// The position of the first rule with it.
        first: usize,
    },
    /// None of `below`, `above`, `rate_above`, `rate_below`.
    #[error(
        "rule {rule} (`{id}`): no condition; give one of `below`, `above`, `rate_above`, \
         `rate_below`"
    )]
    NoCondition {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// Its id.
        id: String,
    },
    /// More than one condition.
    #[error("rule {rule} (`{id}`), fields `{first}` and `{second}`: give only one condition")]
    TwoConditions {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// Its id.
        id: String,
        /// One condition given.
        first: &'static str,
        /// Another.
        second: &'static str,
    },
    /// `nan` or an infinity.
    #[error("rule {rule} (`{id}`), field `{field}`: not a finite number")]
    NotFinite {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// Its id.
        id: String,
        /// The field.
        field: &'static str,
    },
    /// A rate limit of zero or less.
    #[error(
        "rule {rule} (`{id}`), field `{field}`: must be more than 0 (the speed of change \
         per minute)"
    )]
    NotPositive {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// Its id.
        id: String,
        /// The field.
        field: &'static str,
    },
    /// Hysteresis on the wrong side of the threshold: the alert would clear while its
    /// condition still holds.
    #[error(
        "rule {rule} (`{id}`), field `clear_at`: {clear_at} must be {must_be} the \
         `{condition}` threshold {threshold}, so the alert clears only once the value is back"
    )]
    ClearAtWrongSide {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// Its id.
        id: String,
        /// `below` or `above`.
        condition: &'static str,
        /// The threshold.
        threshold: f64,
        /// The `clear_at` given.
        clear_at: f64,
        /// `at or above` or `at or below`.
        must_be: &'static str,
    },
    /// A rate rule without `window_secs`.
    #[error(
        "rule {rule} (`{id}`), field `window_secs`: a `{condition}` rule needs the window \
         its rate is measured over"
    )]
    MissingWindow {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// Its id.
        id: String,
        /// `rate_above` or `rate_below`.
        condition: &'static str,
    },
    /// A field that does not go with the rule's condition (`window_secs` on a threshold
    /// rule, `clear_at` on a rate rule).
    #[error("rule {rule} (`{id}`), field `{field}`: does not apply to a `{condition}` rule")]
    NotApplicable {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// Its id.
        id: String,
        /// The field.
        field: &'static str,
        /// The rule's condition.
        condition: &'static str,
    },
    /// A number of seconds outside what the field accepts.
    #[error("rule {rule} (`{id}`), field `{field}`: {value} is outside {min}–{max}")]
    OutOfRange {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// Its id.
        id: String,
        /// The field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The least accepted.
        min: u64,
        /// The most accepted.
        max: u64,
    },
    /// An empty entry in `device_types` or `patients`.
    #[error("rule {rule} (`{id}`), field `{field}`: an entry is empty")]
    EmptyEntry {
        /// The rule's position in the file, from 1.
        rule: usize,
        /// Its id.
        id: String,
        /// The field.
        field: &'static str,
    },
    /// A bad top-level or `[news2]` setting.
    #[error("field `{field}`: {problem}")]
    Setting {
        /// The field (`escalate_after`, `news2.max_age_secs`, ...).
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

// ---- The file as written --------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRules {
    #[serde(default = "default_escalate_after")]
    escalate_after: u64,
    #[serde(default)]
    rule: Vec<FileRule>,
    news2: Option<FileNews2>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    id: String,
    kind: VitalKind,
    below: Option<f64>,
    above: Option<f64>,
    rate_above: Option<f64>,
    rate_below: Option<f64>,
    window_secs: Option<u64>,
    #[serde(default)]
    for_secs: u64,
    clear_at: Option<f64>,
    severity: Severity,
    #[serde(default)]
    device_types: Vec<String>,
    #[serde(default)]
    patients: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNews2 {
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    #[serde(default)]
    scale2_patients: Vec<String>,
    #[serde(default)]
    on_oxygen_patients: Vec<String>,
    #[serde(default = "default_max_age")]
    max_age_secs: u64,
}

fn default_escalate_after() -> u64 {
    DEFAULT_ESCALATE_AFTER_SECS
}

fn default_max_age() -> u64 {
    DEFAULT_NEWS2_MAX_AGE_SECS
}

fn enabled_by_default() -> bool {
    true
}

/// Seconds already checked to be at most [`MAX_SECS`] as a duration.
fn secs(value: u64) -> Duration {
    Duration::seconds(i64::try_from(value.min(MAX_SECS)).unwrap_or(0))
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The condition fields of a rule.
#[derive(Debug, Clone, Copy)]
enum Which {
    Below,
    Above,
    RateAbove,
    RateBelow,
}

impl Which {
    fn field(self) -> &'static str {
        match self {
            Which::Below => "below",
            Which::Above => "above",
            Which::RateAbove => "rate_above",
            Which::RateBelow => "rate_below",
        }
    }
}

impl FileRules {
    fn validate(self) -> Result<AlertRules, RulesError> {
        if self.rule.len() > MAX_RULES {
            return Err(RulesError::TooManyRules {
                count: self.rule.len(),
                max: MAX_RULES,
            });
        }
        let escalate_after = match self.escalate_after {
            0 => None,
            s if s <= MAX_SECS => Some(secs(s)),
            s => {
                return Err(RulesError::Setting {
                    field: "escalate_after",
                    problem: format!("{s} s is more than the {MAX_SECS} s allowed"),
                })
            }
        };
        let mut seen = HashMap::new();
        let rules = self
            .rule
            .into_iter()
            .enumerate()
            .map(|(i, rule)| rule.validate(i + 1, &mut seen))
            .collect::<Result<Vec<_>, _>>()?;
        let news2 = match self.news2 {
            None => News2Settings::default(),
            Some(news2) => news2.validate()?,
        };
        Ok(AlertRules {
            escalate_after,
            rules,
            news2,
        })
    }
}

impl FileNews2 {
    fn validate(self) -> Result<News2Settings, RulesError> {
        if !(1..=MAX_SECS).contains(&self.max_age_secs) {
            return Err(RulesError::Setting {
                field: "news2.max_age_secs",
                problem: format!("{} is outside 1–{MAX_SECS}", self.max_age_secs),
            });
        }
        for (field, list) in [
            ("news2.scale2_patients", &self.scale2_patients),
            ("news2.on_oxygen_patients", &self.on_oxygen_patients),
        ] {
            if list.iter().any(|p| p.trim().is_empty()) {
                return Err(RulesError::Setting {
                    field,
                    problem: "an entry is empty".to_owned(),
                });
            }
        }
        Ok(News2Settings {
            enabled: self.enabled,
            scale2_patients: self.scale2_patients,
            on_oxygen_patients: self.on_oxygen_patients,
            max_age: secs(self.max_age_secs),
        })
    }
}

impl FileRule {
    /// Checks the rule at position `n` (from 1); `seen` maps the ids met so far to their
    /// positions.
    fn validate(self, n: usize, seen: &mut HashMap<String, usize>) -> Result<Rule, RulesError> {
        let id = self.id;
        if !valid_id(&id) {
            return Err(RulesError::BadId { rule: n, id });
        }
        if id == NEWS2_RULE {
            return Err(RulesError::ReservedId { rule: n, id });
        }
        if let Some(&first) = seen.get(&id) {
            return Err(RulesError::DuplicateId { rule: n, id, first });
        }
        seen.insert(id.clone(), n);

        let given: Vec<(Which, f64)> = [
            (Which::Below, self.below),
            (Which::Above, self.above),
            (Which::RateAbove, self.rate_above),
            (Which::RateBelow, self.rate_below),
        ]
        .into_iter()
        .filter_map(|(which, value)| value.map(|v| (which, v)))
        .collect();
        let (which, value) = match given.as_slice() {
            [] => return Err(RulesError::NoCondition { rule: n, id }),
            [one] => *one,
            [first, second, ..] => {
                return Err(RulesError::TwoConditions {
                    rule: n,
                    id,
                    first: first.0.field(),
                    second: second.0.field(),
                })
            }
        };
        if !value.is_finite() {
            return Err(RulesError::NotFinite {
                rule: n,
                id,
                field: which.field(),
            });
        }
        let window = match self.window_secs {
            None => None,
            Some(w) if (1..=MAX_SECS).contains(&w) => Some(secs(w)),
            Some(w) => {
                return Err(RulesError::OutOfRange {
                    rule: n,
                    id,
                    field: "window_secs",
                    value: w,
                    min: 1,
                    max: MAX_SECS,
                })
            }
        };
        let condition = match which {
            Which::Below | Which::Above => {
                if window.is_some() {
                    return Err(RulesError::NotApplicable {
                        rule: n,
                        id,
                        field: "window_secs",
                        condition: which.field(),
                    });
                }
                if matches!(which, Which::Below) {
                    Condition::Below(value)
                } else {
                    Condition::Above(value)
                }
            }
            Which::RateAbove | Which::RateBelow => {
                if self.clear_at.is_some() {
                    return Err(RulesError::NotApplicable {
                        rule: n,
                        id,
                        field: "clear_at",
                        condition: which.field(),
                    });
                }
                if value <= 0.0 {
                    return Err(RulesError::NotPositive {
                        rule: n,
                        id,
                        field: which.field(),
                    });
                }
                let Some(window) = window else {
                    return Err(RulesError::MissingWindow {
                        rule: n,
                        id,
                        condition: which.field(),
                    });
                };
                if matches!(which, Which::RateAbove) {
                    Condition::RateAbove {
                        per_minute: value,
                        window,
                    }
                } else {
                    Condition::RateBelow {
                        per_minute: value,
                        window,
                    }
                }
            }
        };
        if let Some(clear_at) = self.clear_at {
            if !clear_at.is_finite() {
                return Err(RulesError::NotFinite {
                    rule: n,
                    id,
                    field: "clear_at",
                });
            }
            let wrong = match condition {
                Condition::Below(threshold) => {
                    (clear_at < threshold).then_some((threshold, "at or above"))
                }
                Condition::Above(threshold) => {
                    (clear_at > threshold).then_some((threshold, "at or below"))
                }
                Condition::RateAbove { .. } | Condition::RateBelow { .. } => None,
            };
            if let Some((threshold, must_be)) = wrong {
                return Err(RulesError::ClearAtWrongSide {
                    rule: n,
                    id,
                    condition: which.field(),
                    threshold,
                    clear_at,
                    must_be,
                });
            }
        }
        if self.for_secs > MAX_SECS {
            return Err(RulesError::OutOfRange {
                rule: n,
                id,
                field: "for_secs",
                value: self.for_secs,
                min: 0,
                max: MAX_SECS,
            });
        }
        for (field, list) in [
            ("device_types", &self.device_types),
            ("patients", &self.patients),
        ] {
            if list.iter().any(|entry| entry.trim().is_empty()) {
                return Err(RulesError::EmptyEntry { rule: n, id, field });
            }
        }
        Ok(Rule {
            id,
            kind: self.kind,
            condition,
            for_duration: secs(self.for_secs),
            clear_at: self.clear_at,
            severity: self.severity,
            device_types: self.device_types,
            patients: self.patients,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file holding one rule with these fields (besides id and kind, which it gives
    /// unless `fields` does).
    fn one_rule(fields: &str) -> Result<AlertRules, RulesError> {
        let mut text = String::from("[[rule]]\n");
        if !fields.contains("id =") {
            text.push_str("id = \"r\"\n");
        }
        if !fields.contains("kind =") {
            text.push_str("kind = \"spo2\"\n");
        }
        text.push_str(fields);
        text.push('\n');
        AlertRules::from_toml(&text)
    }

    #[test]
    fn default_toml_parses_to_the_default() {
        assert_eq!(
            AlertRules::from_toml(default_toml()).unwrap(),
            AlertRules::default()
        );
    }

    #[test]
    fn a_full_rule_and_the_news2_settings_parse() {
        let rules = AlertRules::from_toml(
            r#"
            escalate_after = 0

            [[rule]]
            id = "spo2-low"
            kind = "spo2"
            below = 90
            for_secs = 30
            clear_at = 92.0
            severity = "urgent"
            device_types = ["bedside-monitor"]
            patients = ["mrn:123"]

            [[rule]]
            id = "hr-rising"
            kind = "heart-rate"
            rate_above = 20.0
            window_secs = 60
            severity = "emergency"

            [news2]
            scale2_patients = ["mrn:456"]
            on_oxygen_patients = ["mrn:456"]
            "#,
        )
        .unwrap();
        assert_eq!(rules.escalate_after, None, "0 means never");
        let spo2 = rules.rule("spo2-low").unwrap();
        assert_eq!(spo2.condition, Condition::Below(90.0));
        assert_eq!(spo2.for_duration, Duration::seconds(30));
        assert_eq!(spo2.clear_level(), Some(92.0));
        assert_eq!(spo2.severity, Severity::Urgent);
        let hr = rules.rule("hr-rising").unwrap();
        assert_eq!(
            hr.condition,
            Condition::RateAbove {
                per_minute: 20.0,
                window: Duration::seconds(60)
            }
        );
        assert_eq!(hr.for_duration, Duration::ZERO);
        assert_eq!(hr.clear_level(), None);
        assert!(rules.news2.enabled, "enabled by default");
        assert_eq!(rules.news2.max_age, Duration::seconds(900));
        assert_eq!(rules.news2.scale_for("mrn:456"), Spo2Scale::Scale2);
        assert_eq!(rules.news2.scale_for("mrn:123"), Spo2Scale::Scale1);
        assert!(rules.news2.on_oxygen("mrn:456"));
        assert!(!rules.news2.on_oxygen("mrn:123"));

        let bare = AlertRules::from_toml("").unwrap();
        assert_eq!(bare.escalate_after, Some(Duration::seconds(300)));
        assert!(bare.rules.is_empty());
        assert_eq!(bare.news2, News2Settings::default());
    }

    #[test]
    fn a_threshold_without_clear_at_clears_at_the_threshold() {
        let rules = one_rule("above = 130.0\nseverity = \"info\"").unwrap();
        assert_eq!(rules.rules[0].clear_at, None);
        assert_eq!(rules.rules[0].clear_level(), Some(130.0));
    }

    #[test]
    fn duplicate_ids_are_refused_naming_both_rules() {
        let err = AlertRules::from_toml(
            r#"
            [[rule]]
            id = "spo2-low"
            kind = "spo2"
            below = 90.0
            severity = "urgent"

            [[rule]]
            id = "spo2-low"
            kind = "spo2"
            below = 85.0
            severity = "emergency"
            "#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            RulesError::DuplicateId {
                rule: 2,
                id: "spo2-low".into(),
                first: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "rule 2 (`spo2-low`), field `id`: rule 1 has this id already"
        );
    }

    #[test]
    fn a_rule_needs_exactly_one_condition() {
        let err = one_rule("below = 90.0\nabove = 100.0\nseverity = \"urgent\"").unwrap_err();
        assert_eq!(
            err,
            RulesError::TwoConditions {
                rule: 1,
                id: "r".into(),
                first: "below",
                second: "above"
            }
        );
        assert!(err.to_string().contains("`below` and `above`"), "{err}");
        let err =
            one_rule("below = 90.0\nrate_below = 2.0\nwindow_secs = 60\nseverity = \"urgent\"")
                .unwrap_err();
        assert!(matches!(err, RulesError::TwoConditions { .. }), "{err}");
        let err = one_rule("severity = \"urgent\"").unwrap_err();
        assert_eq!(
            err,
            RulesError::NoCondition {
                rule: 1,
                id: "r".into()
            }
        );
        assert!(err.to_string().starts_with("rule 1 (`r`)"), "{err}");
    }

    #[test]
    fn clear_at_on_the_wrong_side_of_the_threshold_is_refused() {
        let err = one_rule("below = 90.0\nclear_at = 88.0\nseverity = \"urgent\"").unwrap_err();
        assert_eq!(
            err,
            RulesError::ClearAtWrongSide {
                rule: 1,
                id: "r".into(),
                condition: "below",
                threshold: 90.0,
                clear_at: 88.0,
                must_be: "at or above"
            }
        );
        assert!(
            err.to_string()
                .contains("field `clear_at`: 88 must be at or above the `below` threshold 90"),
            "{err}"
        );
        let err = one_rule(
            "kind = \"heart-rate\"\nabove = 130.0\nclear_at = 140.0\nseverity = \"urgent\"",
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::ClearAtWrongSide {
                    must_be: "at or below",
                    ..
                }
            ),
            "{err}"
        );
        // At the threshold itself is fine on both sides.
        assert!(one_rule("below = 90.0\nclear_at = 90.0\nseverity = \"urgent\"").is_ok());
        assert!(one_rule("above = 90.0\nclear_at = 90.0\nseverity = \"urgent\"").is_ok());
    }

    #[test]
    fn rate_rules_need_a_window_and_a_positive_limit() {
        let err = one_rule("rate_above = 20.0\nseverity = \"urgent\"").unwrap_err();
        assert_eq!(
            err,
            RulesError::MissingWindow {
                rule: 1,
                id: "r".into(),
                condition: "rate_above"
            }
        );
        assert!(err.to_string().contains("field `window_secs`"), "{err}");
        let err =
            one_rule("rate_above = 20.0\nwindow_secs = 0\nseverity = \"urgent\"").unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::OutOfRange {
                    field: "window_secs",
                    value: 0,
                    ..
                }
            ),
            "{err}"
        );
        let err =
            one_rule("rate_below = -2.0\nwindow_secs = 60\nseverity = \"urgent\"").unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::NotPositive {
                    field: "rate_below",
                    ..
                }
            ),
            "{err}"
        );
        let err =
            one_rule("rate_above = 20.0\nwindow_secs = 60\nclear_at = 5.0\nseverity = \"urgent\"")
                .unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::NotApplicable {
                    field: "clear_at",
                    ..
                }
            ),
            "{err}"
        );
        let err = one_rule("below = 90.0\nwindow_secs = 60\nseverity = \"urgent\"").unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::NotApplicable {
                    field: "window_secs",
                    condition: "below",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = one_rule("below = 90.0\ntreshold = 1\nseverity = \"urgent\"").unwrap_err();
        assert!(
            matches!(&err, RulesError::Parse(m) if m.contains("treshold")),
            "{err}"
        );
        let err = AlertRules::from_toml("escalate_afterr = 300\n").unwrap_err();
        assert!(
            matches!(&err, RulesError::Parse(m) if m.contains("escalate_afterr")),
            "{err}"
        );
        let err = AlertRules::from_toml("[news2]\nenable = false\n").unwrap_err();
        assert!(
            matches!(&err, RulesError::Parse(m) if m.contains("enable")),
            "{err}"
        );
        let err = one_rule("kind = \"spo3\"\nbelow = 90.0\nseverity = \"urgent\"").unwrap_err();
        assert!(matches!(err, RulesError::Parse(_)), "{err}");
        let err = one_rule("below = 90.0\nseverity = \"critical\"").unwrap_err();
        assert!(matches!(err, RulesError::Parse(_)), "{err}");
    }

    #[test]
    fn bad_and_reserved_ids_are_refused() {
        let too_long = "a".repeat(65);
        for id in ["", "SpO2-low", "spo2_low", "spo2 low", too_long.as_str()] {
            let err = one_rule(&format!(
                "id = \"{id}\"\nbelow = 90.0\nseverity = \"urgent\""
            ))
            .unwrap_err();
            assert_eq!(
                err,
                RulesError::BadId {
                    rule: 1,
                    id: id.to_owned()
                },
                "{id:?}"
            );
        }
        assert!(one_rule(&format!(
            "id = \"{}\"\nbelow = 90.0\nseverity = \"urgent\"",
            "a".repeat(64)
        ))
        .is_ok());
        let err = one_rule("id = \"news2\"\nbelow = 90.0\nseverity = \"urgent\"").unwrap_err();
        assert!(
            matches!(err, RulesError::ReservedId { rule: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn numbers_must_be_finite_and_durations_bounded() {
        let err = one_rule("below = nan\nseverity = \"urgent\"").unwrap_err();
        assert!(
            matches!(err, RulesError::NotFinite { field: "below", .. }),
            "{err}"
        );
        let err = one_rule("below = 90.0\nclear_at = inf\nseverity = \"urgent\"").unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::NotFinite {
                    field: "clear_at",
                    ..
                }
            ),
            "{err}"
        );
        let err = one_rule("below = 90.0\nfor_secs = 86401\nseverity = \"urgent\"").unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::OutOfRange {
                    field: "for_secs",
                    value: 86_401,
                    ..
                }
            ),
            "{err}"
        );
        assert!(one_rule("below = 90.0\nfor_secs = 86400\nseverity = \"urgent\"").is_ok());
        let err = AlertRules::from_toml("escalate_after = 86401").unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::Setting {
                    field: "escalate_after",
                    ..
                }
            ),
            "{err}"
        );
        let err = AlertRules::from_toml("[news2]\nmax_age_secs = 0").unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::Setting {
                    field: "news2.max_age_secs",
                    ..
                }
            ),
            "{err}"
        );
        let err = one_rule("below = 90.0\nseverity = \"urgent\"\npatients = [\"\"]").unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::EmptyEntry {
                    field: "patients",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn at_most_max_rules_are_accepted() {
        let rules = |count: usize| {
            (0..count)
                .map(|i| format!("[[rule]]\nid = \"r{i}\"\nkind = \"spo2\"\nbelow = 90.0\nseverity = \"info\"\n"))
                .collect::<String>()
        };
        assert_eq!(
            AlertRules::from_toml(&rules(MAX_RULES))
                .unwrap()
                .rules
                .len(),
            MAX_RULES
        );
        assert_eq!(
            AlertRules::from_toml(&rules(MAX_RULES + 1)).unwrap_err(),
            RulesError::TooManyRules {
                count: MAX_RULES + 1,
                max: MAX_RULES
            }
        );
    }

    #[test]
    fn device_type_and_patient_filters_narrow_a_rule() {
        let rules = one_rule(
            "below = 90.0\nseverity = \"urgent\"\ndevice_types = [\"bedside-monitor\", \"wearable\"]\npatients = [\"mrn:123\"]",
        )
        .unwrap();
        let rule = &rules.rules[0];
        assert!(rule.applies_to("bedside-monitor", "mrn:123"));
        assert!(rule.applies_to("wearable", "mrn:123"));
        assert!(!rule.applies_to("spot-check", "mrn:123"));
        assert!(!rule.applies_to("bedside-monitor", "mrn:999"));
        let open = one_rule("below = 90.0\nseverity = \"urgent\"").unwrap();
        assert!(open.rules[0].applies_to("anything", "anyone"));
    }

    #[test]
    fn severity_escalates_one_step_up_to_emergency() {
        assert_eq!(Severity::Info.escalated(), Severity::Urgent);
        assert_eq!(Severity::Urgent.escalated(), Severity::Emergency);
        assert_eq!(Severity::Emergency.escalated(), Severity::Emergency);
        assert!(Severity::Info < Severity::Urgent && Severity::Urgent < Severity::Emergency);
        assert_eq!(Severity::Urgent.to_string(), "urgent");
    }
}
