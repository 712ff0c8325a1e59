//! The alert engine: a deterministic state machine fed checked readings, one at a time,
//! that says which alerts open, change, escalate and clear. It does no I/O and reads no
//! clock: every time is a reading's time or the `now` its caller passes
//! ([`AlertEngine::tick`]), so the same calls always give the same alerts, ids included.
//!
//! State is kept per series — one patient, one device, one vital kind — for the threshold
//! and rate rules, and per patient (from any of their devices) for NEWS2:
//!
//! - **Order.** A reading no newer than the newest already seen of its series is ignored
//!   (devices resend and reorder; an alert must not flap on a stale value).
//! - **Thresholds.** A rule's condition holds from the first reading meeting it; the alert
//!   is raised at the first reading at which it has held for `for_duration`, every reading
//!   in between meeting it (one that does not resets the wait). An open alert clears only
//!   at a reading past `clear_at` (hysteresis); readings between the threshold and
//!   `clear_at` keep it open. After it clears, a new wait starts from scratch.
//! - **Rates.** The readings of the last window (at most [`MAX_RATE_POINTS`]) give the
//!   rate from the oldest to the newest, per minute, once they span at least half the
//!   window. The alert clears once the rate is back to [`RATE_CLEAR_FRACTION`] of its
//!   limit.
//! - **NEWS2.** The newest value of each of the five vitals a device reports is scored
//!   with consciousness taken as Alert (see [`News2Settings`]) once all five are there,
//!   none older than `max_age` before the newest; an Urgent response raises an urgent
//!   alert, an Emergency one an emergency alert, a rise from urgent to emergency changes
//!   the open alert ([`AlertChange::Changed`]), a Low response clears it. A fall from
//!   emergency to urgent leaves it as it is: it keeps the highest response it reached
//!   until it clears. While the vitals are incomplete or stale, nothing changes.
//! - **Escalation.** An open, unacknowledged alert escalates one severity step (capped at
//!   emergency, and still reported) once `escalate_after` has passed since it was raised,
//!   last worsened or last escalated. Acknowledged alerts do not escalate, and still clear
//!   when their vital recovers.
//! - **Memory.** At most [`MAX_SERIES`] series and as many NEWS2 patients are kept; past
//!   that, the least recently updated is dropped, and its open alerts are cleared with
//!   [`ClearReason::Evicted`]. Cleared alerts stay known to [`AlertEngine::get`] and
//!   [`AlertEngine::acknowledge`] until [`MAX_CLEARED`] newer ones have cleared.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

use medmesh_core::news2::{self, Consciousness, Observations, Response, Score};
use medmesh_core::vitals::{Reading, VitalKind};
use ring::digest;
use serde::{Serialize, Serializer};
use time::{Duration, OffsetDateTime};

use super::rules::{
    AlertRules, Condition, News2Settings, Rule, Severity, NEWS2_RULE, RATE_CLEAR_FRACTION,
};

/// The most series (patient, device, vital kind) kept, and the most NEWS2 patients; past
/// it the least recently updated is dropped.
pub const MAX_SERIES: usize = 100_000;

/// The most readings a series keeps for its rate rules; past it the oldest are dropped.
pub const MAX_RATE_POINTS: usize = 512;

/// How many cleared alerts stay known by id.
pub const MAX_CLEARED: usize = 10_000;

/// Who a reading is about and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The device's id.
    pub device: &'a str,
    /// The device's type (what rules' `device_types` name).
    pub device_type: &'a str,
    /// The patient reference the device is registered to.
    pub patient: &'a str,
}

/// A clinical alert, open or cleared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Its id: `alert-` and 16 hex digits, unique in its engine.
    pub id: String,
    /// The id of the rule that raised it ([`NEWS2_RULE`] for NEWS2).
    pub rule: String,
    /// How urgent it is now (escalation and worsening raise it).
    pub severity: Severity,
    /// The vital it is about; `None` for NEWS2.
    pub kind: Option<VitalKind>,
    /// The device whose reading raised it.
    pub device: String,
    /// The patient.
    pub patient: String,
    /// When it was raised: the time of the reading that raised it.
    #[serde(with = "time::serde::rfc3339")]
    pub raised_at: OffsetDateTime,
    /// What raised it, or last changed it: the reading's value (canonical unit) for a
    /// threshold rule, the rate per minute for a rate rule, the total for NEWS2.
    pub value: f64,
    /// The limit `value` crossed: the threshold, the rate limit (negative for a
    /// `rate_below` rule); `None` for NEWS2.
    pub threshold: Option<f64>,
    /// The NEWS2 score, for NEWS2 alerts.
    pub news2: Option<Score>,
    /// Who acknowledged it, and when.
    #[serde(serialize_with = "serialize_acknowledged")]
    pub acknowledged: Option<(String, OffsetDateTime)>,
    /// How many times it escalated.
    pub escalated: u32,
    /// A sentence for people: "SpO2 88 % below 90 % for 30 s".
    pub message: String,
}

/// `acknowledged` as `{"by": ..., "at": RFC 3339}` or `null`.
fn serialize_acknowledged<S: Serializer>(
    acknowledged: &Option<(String, OffsetDateTime)>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Acknowledged<'a> {
        by: &'a str,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    }
    match acknowledged {
        Some((by, at)) => serializer.serialize_some(&Acknowledged {
            by: by.as_str(),
            at: *at,
        }),
        None => serializer.serialize_none(),
    }
}

/// What happened to an alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum AlertChange {
    /// It opened.
    Raised(Alert),
    /// It worsened while open (a NEWS2 response from urgent to emergency): new severity,
    /// value and score. A worsening needs a fresh acknowledgement, and restarts the wait
    /// before escalation.
    Changed(Alert),
    /// It stayed unacknowledged too long and went one severity step up.
    Escalated(Alert),
    /// It closed.
    Cleared {
        /// The alert as it was when it cleared.
        alert: Alert,
        /// When: the recovering reading's time; for a rule removed, the latest time the
        /// engine had seen (it has no clock).
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// Why.
        reason: ClearReason,
    },
}

impl AlertChange {
    /// The alert it is about.
    pub fn alert(&self) -> &Alert {
        match self {
            AlertChange::Raised(alert)
            | AlertChange::Changed(alert)
            | AlertChange::Escalated(alert)
            | AlertChange::Cleared { alert, .. } => alert,
        }
    }
}

/// Why an alert cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClearReason {
    /// The vital came back past `clear_at` (or the rate, or the NEWS2 response, back to
    /// normal).
    Recovered,
    /// The rules were replaced, and its rule is gone or no longer applies to its device
    /// or patient (or NEWS2 was disabled).
    RuleRemoved,
    /// Its series was the least recently updated of more than [`MAX_SERIES`], and was
    /// dropped to keep memory bounded.
    Evicted,
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No such alert (or it cleared long ago and is forgotten).
    #[error("there is no alert `{0}`")]
    Unknown(String),
    /// Someone acknowledged it already.
    #[error("alert `{id}` was acknowledged already, by {by}")]
    AlreadyAcknowledged {
        /// The alert.
        id: String,
        /// Who acknowledged it.
        by: String,
        /// When.
        at: OffsetDateTime,
    },
    /// It has cleared.
    #[error("alert `{0}` has cleared")]
    Cleared(String),
}

/// The alert state machine. See the module documentation for what it does.
#[derive(Debug)]
pub struct AlertEngine {
    rules: AlertRules,
    series: Lru<SeriesKey, Series>,
    news2: Lru<String, News2State>,
    book: Book,
    /// The latest time seen (readings and ticks): the engine's only notion of now.
    latest: Option<OffsetDateTime>,
}

impl AlertEngine {
    /// An engine with these rules and no state; its alert ids are keyed by a random key.
    pub fn new(rules: AlertRules) -> Self {
        let mut key = [0u8; 32];
        // Without the OS generator the ids are still unique, only guessable.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key);
        Self::with_id_key(rules, key)
    }

    /// An engine whose alert ids are keyed by `key` (the same readings then give the same
    /// ids: for tests).
    pub fn with_id_key(rules: AlertRules, key: [u8; 32]) -> Self {
        let mut engine = Self::with_capacity(rules, MAX_SERIES);
        engine.book.id_key = key;
        engine
    }

    /// An engine keeping at most `max_series` series and NEWS2 patients.
    fn with_capacity(rules: AlertRules, max_series: usize) -> Self {
        Self {
            rules,
            series: Lru::new(max_series),
            news2: Lru::new(max_series),
            book: Book::default(),
            latest: None,
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &AlertRules {
        &self.rules
    }

    /// Puts new rules in force (a reload). Open alerts of rules whose id is still there,
    /// for the same vital, and still applying to their device and patient stay open (and
    /// clear by the new rule); the others clear with [`ClearReason::RuleRemoved`], as do
    /// NEWS2 alerts if NEWS2 is now disabled. A rule that changed starts its waits
    /// (`for_duration`) afresh. Returns the alerts cleared.
    pub fn replace_rules(&mut self, rules: AlertRules) -> Vec<AlertChange> {
        let at = self.latest.unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let mut changes = Vec::new();
        {
            let new: HashMap<&str, &Rule> =
                rules.rules.iter().map(|r| (r.id.as_str(), r)).collect();
            let old: HashMap<&str, &Rule> = self
                .rules
                .rules
                .iter()
                .map(|r| (r.id.as_str(), r))
                .collect();
            let book = &mut self.book;
            for ((patient, _, kind), series) in self.series.iter_mut() {
                let device_type = series.device_type.as_str();
                series.states.retain(|id, state| {
                    let rule = new.get(id.as_str()).copied();
                    let kept = rule.is_some_and(|rule| {
                        rule.kind == *kind && rule.applies_to(device_type, patient)
                    });
                    if !kept {
                        if let Some(alert) = state.open.take() {
                            changes.extend(book.clear(&alert, at, ClearReason::RuleRemoved));
                        }
                        return false;
                    }
                    if old.get(id.as_str()) != new.get(id.as_str()) {
                        state.pending_since = None;
                    }
                    true
                });
            }
        }
        if !rules.news2.enabled {
            for state in self.news2.take_all() {
                if let Some((alert, _)) = state.open {
                    changes.extend(self.book.clear(&alert, at, ClearReason::RuleRemoved));
                }
            }
        }
        self.rules = rules;
        changes.sort_by(|a, b| by_raised(a.alert(), b.alert()));
        changes
    }

    /// Takes in a checked reading (canonical unit) of `subject`; returns what it changed,
    /// in rule order, NEWS2 last.
    pub fn observe(&mut self, subject: &Subject<'_>, reading: &Reading) -> Vec<AlertChange> {
        let mut changes = Vec::new();
        if !reading.value.is_finite() {
            return changes;
        }
        self.note(reading.time);
        self.observe_rules(subject, reading, &mut changes);
        if self.rules.news2.enabled {
            self.observe_news2(subject, reading, &mut changes);
        }
        changes
    }

    /// Escalates the open, unacknowledged alerts that have waited `escalate_after` since
    /// they were raised, worsened or last escalated, as of `now`; returns them, oldest
    /// first.
    pub fn tick(&mut self, now: OffsetDateTime) -> Vec<AlertChange> {
        self.note(now);
        let Some(after) = self.rules.escalate_after else {
            return Vec::new();
        };
        let mut escalated = Vec::new();
        for open in self.book.open.values_mut() {
            if open.alert.acknowledged.is_some() || now - open.since < after {
                continue;
            }
            open.alert.escalated = open.alert.escalated.saturating_add(1);
            open.alert.severity = open.alert.severity.escalated();
            open.since = now;
            escalated.push(open.alert.clone());
        }
        escalated.sort_by(by_raised);
        escalated.into_iter().map(AlertChange::Escalated).collect()
    }

    /// Records that `by` acknowledged the open alert `alert_id` at `at`; returns it.
    pub fn acknowledge(
        &mut self,
        alert_id: &str,
        by: &str,
        at: OffsetDateTime,
    ) -> Result<Alert, AckError> {
        if let Some(open) = self.book.open.get_mut(alert_id) {
            if let Some((who, when)) = &open.alert.acknowledged {
                return Err(AckError::AlreadyAcknowledged {
                    id: alert_id.to_owned(),
                    by: who.clone(),
                    at: *when,
                });
            }
            open.alert.acknowledged = Some((by.to_owned(), at));
            return Ok(open.alert.clone());
        }
        if self.book.cleared.contains_key(alert_id) {
            Err(AckError::Cleared(alert_id.to_owned()))
        } else {
            Err(AckError::Unknown(alert_id.to_owned()))
        }
    }

    /// The open alerts, oldest first.
    pub fn open_alerts(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self
            .book
            .open
            .values()
            .map(|open| open.alert.clone())
            .collect();
        alerts.sort_by(by_raised);
        alerts
    }

    /// The alert with this id: open, or cleared recently (see [`MAX_CLEARED`]).
    pub fn get(&self, alert_id: &str) -> Option<Alert> {
        self.book
            .open
            .get(alert_id)
            .map(|open| open.alert.clone())
            .or_else(|| self.book.cleared.get(alert_id).cloned())
    }

    fn note(&mut self, time: OffsetDateTime) {
        self.latest = Some(self.latest.map_or(time, |latest| latest.max(time)));
    }

    /// The threshold and rate rules.
    fn observe_rules(
        &mut self,
        subject: &Subject<'_>,
        reading: &Reading,
        changes: &mut Vec<AlertChange>,
    ) {
        let key: SeriesKey = (
            subject.patient.to_owned(),
            subject.device.to_owned(),
            reading.kind,
        );
        if let Some(evicted) = self.series.touch(&key, || Series::new(subject.device_type)) {
            for state in evicted.states.into_values() {
                if let Some(alert) = state.open {
                    changes.extend(self.book.clear(&alert, reading.time, ClearReason::Evicted));
                }
            }
        }
        let Some(series) = self.series.get_mut(&key) else {
            return;
        };
        if series.newest.is_some_and(|newest| reading.time <= newest) {
            return;
        }
        series.newest = Some(reading.time);
        if series.device_type != subject.device_type {
            series.device_type = subject.device_type.to_owned();
        }

        // The readings the rate rules of this kind need: those of their widest window.
        let window = self
            .rules
            .rules
            .iter()
            .filter(|rule| applies(rule, subject, reading.kind))
            .filter_map(|rule| rule.condition.window())
            .max();
        match window {
            Some(window) => {
                series.points.push_back((reading.time, reading.value));
                if let Some(start) = reading.time.checked_sub(window) {
                    while series.points.front().is_some_and(|(time, _)| *time < start) {
                        series.points.pop_front();
                    }
                }
                while series.points.len() > MAX_RATE_POINTS {
                    series.points.pop_front();
                }
            }
            None => series.points.clear(),
        }

        for rule in &self.rules.rules {
            if !applies(rule, subject, reading.kind) {
                continue;
            }
            let Some(m) = measure(rule, reading, &series.points) else {
                continue;
            };
            let state = series.states.entry(rule.id.clone()).or_default();
            step(rule, state, &m, subject, reading, &mut self.book, changes);
        }
    }

    /// NEWS2, per patient.
    fn observe_news2(
        &mut self,
        subject: &Subject<'_>,
        reading: &Reading,
        changes: &mut Vec<AlertChange>,
    ) {
        let patient = subject.patient.to_owned();
        if let Some(evicted) = self.news2.touch(&patient, News2State::default) {
            if let Some((alert, _)) = evicted.open {
                changes.extend(self.book.clear(&alert, reading.time, ClearReason::Evicted));
            }
        }
        let Some(state) = self.news2.get_mut(&patient) else {
            return;
        };
        let slot = &mut state.latest[vital_slot(reading.kind)];
        if slot.is_some_and(|(_, time)| reading.time <= time) {
            return;
        }
        *slot = Some((reading.value, reading.time));
        let Some(observations) = observations(&state.latest, &self.rules.news2, subject.patient)
        else {
            return;
        };
        let score = news2::score(&observations);
        let severity = match score.response {
            Response::Low => None,
            Response::Urgent => Some(Severity::Urgent),
            Response::Emergency => Some(Severity::Emergency),
        };
        match (state.open.take(), severity) {
            (None, None) => {}
            (None, Some(severity)) => {
                let alert = self.book.raise(Alert {
                    id: String::new(),
                    rule: NEWS2_RULE.to_owned(),
                    severity,
                    kind: None,
                    device: subject.device.to_owned(),
                    patient,
                    raised_at: reading.time,
                    value: f64::from(score.total),
                    threshold: None,
                    news2: Some(score),
                    acknowledged: None,
                    escalated: 0,
                    message: news2_message(&score),
                });
                state.open = Some((alert.id.clone(), score.response));
                changes.push(AlertChange::Raised(alert));
            }
            (Some((alert, _)), None) => {
                changes.extend(
                    self.book
                        .clear(&alert, reading.time, ClearReason::Recovered),
                );
            }
            (Some((alert, response)), Some(severity)) => {
                if score.response > response {
                    if let Some(changed) = self.book.worsen(&alert, severity, &score, reading.time)
                    {
                        changes.push(AlertChange::Changed(changed));
                    }
                    state.open = Some((alert, score.response));
                } else {
                    state.open = Some((alert, response));
                }
            }
        }
    }
}

// ---- Per-series state -----------------------------------------------------------------

/// (patient, device, kind).
type SeriesKey = (String, String, VitalKind);

#[derive(Debug)]
struct Series {
    /// The type of the device, as its latest reading said.
    device_type: String,
    /// The time of the newest reading taken in.
    newest: Option<OffsetDateTime>,
    /// The readings of the widest rate window, oldest first.
    points: VecDeque<(OffsetDateTime, f64)>,
    /// Per rule id.
    states: HashMap<String, RuleState>,
}

impl Series {
    fn new(device_type: &str) -> Self {
        Self {
            device_type: device_type.to_owned(),
            newest: None,
            points: VecDeque::new(),
            states: HashMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct RuleState {
    /// Since when the condition has held, while waiting for `for_duration`.
    pending_since: Option<OffsetDateTime>,
    /// The open alert's id.
    open: Option<String>,
}

#[derive(Debug, Default)]
struct News2State {
    /// The newest value and time of each kind, by [`vital_slot`].
    latest: [Option<(f64, OffsetDateTime)>; 5],
    /// The open alert's id and the highest response it reached.
    open: Option<(String, Response)>,
}

fn vital_slot(kind: VitalKind) -> usize {
    match kind {
        VitalKind::HeartRate => 0,
        VitalKind::Spo2 => 1,
        VitalKind::RespirationRate => 2,
        VitalKind::SystolicBp => 3,
        VitalKind::Temperature => 4,
    }
}

fn applies(rule: &Rule, subject: &Subject<'_>, kind: VitalKind) -> bool {
    rule.kind == kind && rule.applies_to(subject.device_type, subject.patient)
}

/// A rule's reading of its series.
struct Measure {
    /// The value (threshold rules) or the rate per minute (rate rules).
    value: f64,
    /// The condition holds.
    meets: bool,
    /// An open alert may clear.
    recovered: bool,
    /// Rate rules: the span the rate was measured over.
    span: Duration,
}

/// What `reading` says for `rule`; `None` when a rate cannot be measured yet (the
/// readings span less than half the window).
fn measure(
    rule: &Rule,
    reading: &Reading,
    points: &VecDeque<(OffsetDateTime, f64)>,
) -> Option<Measure> {
    let value = reading.value;
    match rule.condition {
        Condition::Below(threshold) => Some(Measure {
            value,
            meets: value < threshold,
            recovered: value >= rule.clear_at.unwrap_or(threshold),
            span: Duration::ZERO,
        }),
        Condition::Above(threshold) => Some(Measure {
            value,
            meets: value > threshold,
            recovered: value <= rule.clear_at.unwrap_or(threshold),
            span: Duration::ZERO,
        }),
        Condition::RateAbove { per_minute, window } => {
            let (rate, span) = rate(points, reading.time, window)?;
            Some(Measure {
                value: rate,
                meets: rate > per_minute,
                recovered: rate <= per_minute * RATE_CLEAR_FRACTION,
                span,
            })
        }
        Condition::RateBelow { per_minute, window } => {
            let (rate, span) = rate(points, reading.time, window)?;
            Some(Measure {
                value: rate,
                meets: rate < -per_minute,
                recovered: rate >= -per_minute * RATE_CLEAR_FRACTION,
                span,
            })
        }
    }
}

/// The rate of change per minute from the oldest reading of the `window` before `now` to
/// the newest, and the span between them; `None` if they span less than half the window.
fn rate(
    points: &VecDeque<(OffsetDateTime, f64)>,
    now: OffsetDateTime,
    window: Duration,
) -> Option<(f64, Duration)> {
    let start = now.checked_sub(window);
    let first = points
        .iter()
        .find(|(time, _)| start.is_none_or(|start| *time >= start))?;
    let last = points.back()?;
    let span = last.0 - first.0;
    let secs = span.as_seconds_f64();
    if secs <= 0.0 || secs * 2.0 < window.as_seconds_f64() {
        return None;
    }
    Some(((last.1 - first.1) / (secs / 60.0), span))
}

/// One threshold or rate rule, one reading.
fn step(
    rule: &Rule,
    state: &mut RuleState,
    m: &Measure,
    subject: &Subject<'_>,
    reading: &Reading,
    book: &mut Book,
    changes: &mut Vec<AlertChange>,
) {
    if let Some(alert) = state.open.take() {
        if m.recovered {
            changes.extend(book.clear(&alert, reading.time, ClearReason::Recovered));
            state.pending_since = None;
        } else {
            state.open = Some(alert);
        }
        return;
    }
    if !m.meets {
        state.pending_since = None;
        return;
    }
    let since = *state.pending_since.get_or_insert(reading.time);
    let held = reading.time - since;
    if held < rule.for_duration {
        return;
    }
    let (message, threshold) = describe(rule, m, held);
    let alert = book.raise(Alert {
        id: String::new(),
        rule: rule.id.clone(),
        severity: rule.severity,
        kind: Some(rule.kind),
        device: subject.device.to_owned(),
        patient: subject.patient.to_owned(),
        raised_at: reading.time,
        value: m.value,
        threshold,
        news2: None,
        acknowledged: None,
        escalated: 0,
        message,
    });
    state.pending_since = None;
    state.open = Some(alert.id.clone());
    changes.push(AlertChange::Raised(alert));
}

/// NEWS2's observations from the newest vitals, if all five are there and none is older
/// than `max_age` before the newest.
fn observations(
    latest: &[Option<(f64, OffsetDateTime)>; 5],
    settings: &News2Settings,
    patient: &str,
) -> Option<Observations> {
    let mut vitals = [(0.0, OffsetDateTime::UNIX_EPOCH); 5];
    for (vital, entry) in vitals.iter_mut().zip(latest) {
        *vital = (*entry)?;
    }
    let newest = vitals.iter().map(|(_, time)| *time).max()?;
    if vitals
        .iter()
        .any(|(_, time)| newest - *time > settings.max_age)
    {
        return None;
    }
    let value = |kind: VitalKind| vitals[vital_slot(kind)].0;
    Some(Observations {
        respiration_rate: value(VitalKind::RespirationRate),
        spo2: value(VitalKind::Spo2),
        spo2_scale: settings.scale_for(patient),
        on_oxygen: settings.on_oxygen(patient),
        systolic_bp: value(VitalKind::SystolicBp),
        pulse: value(VitalKind::HeartRate),
        // Devices do not report it; see `News2Settings`.
        consciousness: Consciousness::Alert,
        temperature: value(VitalKind::Temperature),
    })
}

// ---- Messages -------------------------------------------------------------------------

fn kind_label(kind: VitalKind) -> &'static str {
    match kind {
        VitalKind::HeartRate => "Heart rate",
        VitalKind::Spo2 => "SpO2",
        VitalKind::RespirationRate => "Respiration rate",
        VitalKind::SystolicBp => "Systolic BP",
        VitalKind::Temperature => "Temperature",
    }
}

fn kind_unit(kind: VitalKind) -> &'static str {
    match kind {
        VitalKind::HeartRate | VitalKind::RespirationRate => "/min",
        VitalKind::Spo2 => "%",
        VitalKind::SystolicBp => "mmHg",
        VitalKind::Temperature => "°C",
    }
}

/// A value to one decimal, without a trailing `.0`.
fn number(value: f64) -> String {
    let mut text = format!("{value:.1}");
    if text.ends_with(".0") {
        text.truncate(text.len() - 2);
    }
    if text == "-0" {
        text = "0".to_owned();
    }
    text
}

/// The message and threshold of an alert `rule` raises on `m`, after the condition held
/// for `held`.
fn describe(rule: &Rule, m: &Measure, held: Duration) -> (String, Option<f64>) {
    let label = kind_label(rule.kind);
    let unit = kind_unit(rule.kind);
    let held_secs = held.whole_seconds();
    let lasting = if held_secs > 0 {
        format!(" for {held_secs} s")
    } else {
        String::new()
    };
    match rule.condition {
        Condition::Below(threshold) | Condition::Above(threshold) => {
            let side = if matches!(rule.condition, Condition::Below(_)) {
                "below"
            } else {
                "above"
            };
            let value = number(m.value);
            let limit = number(threshold);
            (
                format!("{label} {value} {unit} {side} {limit} {unit}{lasting}"),
                Some(threshold),
            )
        }
        Condition::RateAbove { per_minute, .. } | Condition::RateBelow { per_minute, .. } => {
            let (direction, threshold) = if matches!(rule.condition, Condition::RateAbove { .. }) {
                ("rising", per_minute)
            } else {
                ("falling", -per_minute)
            };
            let speed = number(m.value.abs());
            let limit = number(per_minute);
            let span = m.span.whole_seconds();
            (
                format!(
                    "{label} {direction} {speed} {unit} a minute over {span} s, faster than \
                     {limit} {unit} a minute{lasting}"
                ),
                Some(threshold),
            )
        }
    }
}

/// "NEWS2 7 (emergency response): respiration rate 3, spo2 3, systolic bp 1".
fn news2_message(score: &Score) -> String {
    let response = match score.response {
        Response::Low => "low",
        Response::Urgent => "urgent",
        Response::Emergency => "emergency",
    };
    let parts: Vec<String> = news2::PARAMETERS
        .iter()
        .zip(score.parameters)
        .filter(|(_, points)| *points > 0)
        .map(|(name, points)| format!("{} {points}", name.replace('_', " ")))
        .collect();
    format!(
        "NEWS2 {} ({response} response): {}",
        score.total,
        parts.join(", ")
    )
}

fn by_raised(a: &Alert, b: &Alert) -> Ordering {
    a.raised_at.cmp(&b.raised_at).then_with(|| a.id.cmp(&b.id))
}

// ---- The alerts -----------------------------------------------------------------------

#[derive(Debug)]
struct OpenAlert {
    alert: Alert,
    /// When it was raised, last worsened or last escalated: escalation counts from here.
    since: OffsetDateTime,
}

/// The open alerts, the recently cleared ones, and the id counter.
#[derive(Debug, Default)]
struct Book {
    open: HashMap<String, OpenAlert>,
    cleared: HashMap<String, Alert>,
    /// Ids of `cleared`, oldest first.
    cleared_order: VecDeque<String>,
    counter: u64,
    /// Keys the id hash: ids are published (MQTT, SSE, webhooks, the audit log) and must
    /// not let anyone confirm a guessed patient reference.
    id_key: [u8; 32],
}

impl Book {
    /// Opens `alert` under a new id; returns it.
    fn raise(&mut self, mut alert: Alert) -> Alert {
        alert.id = self.new_id(&alert);
        self.open.insert(
            alert.id.clone(),
            OpenAlert {
                alert: alert.clone(),
                since: alert.raised_at,
            },
        );
        alert
    }

    /// `alert-` and the first 8 bytes of SHA-256 over the engine's id key, patient,
    /// device, rule, time and a counter: unique in the engine (checked), and telling
    /// nothing of the patient without the key.
    fn new_id(&mut self, alert: &Alert) -> String {
        loop {
            self.counter = self.counter.wrapping_add(1);
            let mut context = digest::Context::new(&digest::SHA256);
            context.update(&self.id_key);
            for part in [&alert.patient, &alert.device, &alert.rule] {
                context.update(&(part.len() as u64).to_be_bytes());
                context.update(part.as_bytes());
            }
            context.update(&alert.raised_at.unix_timestamp_nanos().to_be_bytes());
            context.update(&self.counter.to_be_bytes());
            let id = format!("alert-{}", hex::encode(&context.finish().as_ref()[..8]));
            if !self.open.contains_key(&id) && !self.cleared.contains_key(&id) {
                return id;
            }
        }
    }

    /// Worsens the open NEWS2 alert `id` to `score`, at `at`.
    fn worsen(
        &mut self,
        id: &str,
        severity: Severity,
        score: &Score,
        at: OffsetDateTime,
    ) -> Option<Alert> {
        let open = self.open.get_mut(id)?;
        let alert = &mut open.alert;
        alert.severity = alert.severity.max(severity);
        alert.value = f64::from(score.total);
        alert.news2 = Some(*score);
        alert.message = news2_message(score);
        alert.acknowledged = None;
        open.since = at;
        Some(open.alert.clone())
    }

    /// Closes the open alert `id`.
    fn clear(&mut self, id: &str, at: OffsetDateTime, reason: ClearReason) -> Option<AlertChange> {
        let open = self.open.remove(id)?;
        let alert = open.alert;
        self.cleared_order.push_back(alert.id.clone());
        self.cleared.insert(alert.id.clone(), alert.clone());
        while self.cleared_order.len() > MAX_CLEARED {
            let Some(oldest) = self.cleared_order.pop_front() else {
                break;
            };
            self.cleared.remove(&oldest);
        }
        Some(AlertChange::Cleared { alert, at, reason })
    }
}

// ---- A bounded map ----------------------------------------------------------------------

/// A map of at most `capacity` entries that drops the least recently touched.
#[derive(Debug)]
struct Lru<K, V> {
    entries: HashMap<K, (u64, V)>,
    /// Touch time → key.
    order: BTreeMap<u64, K>,
    clock: u64,
    capacity: usize,
}

impl<K: Clone + Eq + Hash, V> Lru<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            capacity: capacity.max(1),
        }
    }

    /// Marks `key` as the most recently used, inserting `make()` if it is not there;
    /// returns the value dropped to make room, if any.
    fn touch(&mut self, key: &K, make: impl FnOnce() -> V) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        if let Some(entry) = self.entries.get_mut(key) {
            self.order.remove(&entry.0);
            entry.0 = clock;
            self.order.insert(clock, key.clone());
            return None;
        }
        let evicted = if self.entries.len() >= self.capacity {
            self.pop_oldest()
        } else {
            None
        };
        self.entries.insert(key.clone(), (clock, make()));
        self.order.insert(clock, key.clone());
        evicted
    }

    fn pop_oldest(&mut self) -> Option<V> {
        let (_, key) = self.order.pop_first()?;
        self.entries.remove(&key).map(|(_, value)| value)
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(_, value)| value)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries
            .iter_mut()
            .map(|(key, (_, value))| (key, value))
    }

    /// Empties it; returns the values.
    fn take_all(&mut self) -> Vec<V> {
        self.order.clear();
        std::mem::take(&mut self.entries)
            .into_values()
            .map(|(_, value)| value)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    fn reading(kind: VitalKind, value: f64, secs: i64) -> Reading {
        Reading {
            kind,
            value,
            time: at(secs),
        }
    }

    const BED: Subject<'static> = Subject {
        device: "monitor-1",
        device_type: "bedside-monitor",
        patient: "mrn:123",
    };

    const NEWS2_ONLY: &str = "[news2]\nenabled = true\n";

    fn engine(rules: &str) -> AlertEngine {
        AlertEngine::new(AlertRules::from_toml(rules).unwrap())
    }

    /// Feeds `value` every 5 s from `from` to `to` s inclusive; returns the changes with
    /// the second of the reading that made each.
    fn feed(
        e: &mut AlertEngine,
        subject: &Subject<'_>,
        kind: VitalKind,
        value: f64,
        from: i64,
        to: i64,
    ) -> Vec<(i64, AlertChange)> {
        let mut changes = Vec::new();
        for secs in (from..=to).step_by(5) {
            changes.extend(
                e.observe(subject, &reading(kind, value, secs))
                    .into_iter()
                    .map(|c| (secs, c)),
            );
        }
        changes
    }

    /// The one raise of `changes`.
    fn the_raise(changes: &[(i64, AlertChange)]) -> (i64, Alert) {
        match changes {
            [(secs, AlertChange::Raised(alert))] => (*secs, alert.clone()),
            other => panic!("expected one raise: {other:?}"),
        }
    }

    /// Feeds the five NEWS2 vitals at `secs`, in this order.
    fn vitals(
        e: &mut AlertEngine,
        subject: &Subject<'_>,
        secs: i64,
        [rr, spo2, sbp, hr, temp]: [f64; 5],
    ) -> Vec<AlertChange> {
        let mut changes = Vec::new();
        for (kind, value) in [
            (VitalKind::RespirationRate, rr),
            (VitalKind::Spo2, spo2),
            (VitalKind::SystolicBp, sbp),
            (VitalKind::HeartRate, hr),
            (VitalKind::Temperature, temp),
        ] {
            changes.extend(e.observe(subject, &reading(kind, value, secs)));
        }
        changes
    }

    /// An engine with the default rules and an open `spo2-low` alert raised at 30 s.
    fn with_spo2_alert() -> (AlertEngine, Alert) {
        let mut e = AlertEngine::new(AlertRules::default());
        let (_, alert) = the_raise(&feed(&mut e, &BED, VitalKind::Spo2, 88.0, 0, 30));
        (e, alert)
    }

    #[test]
    fn spo2_low_is_raised_at_the_reading_where_it_has_held_30_s() {
        let mut e = AlertEngine::new(AlertRules::default());
        let changes = feed(&mut e, &BED, VitalKind::Spo2, 88.0, 0, 40);
        let (secs, alert) = the_raise(&changes);
        assert_eq!(secs, 30, "not at 25 s");
        assert_eq!(alert.rule, "spo2-low");
        assert_eq!(alert.severity, Severity::Urgent);
        assert_eq!(alert.kind, Some(VitalKind::Spo2));
        assert_eq!(alert.device, "monitor-1");
        assert_eq!(alert.patient, "mrn:123");
        assert_eq!(alert.raised_at, at(30));
        assert_eq!(alert.value, 88.0);
        assert_eq!(alert.threshold, Some(90.0));
        assert_eq!(alert.news2, None);
        assert_eq!(alert.acknowledged, None);
        assert_eq!(alert.escalated, 0);
        assert_eq!(alert.message, "SpO2 88 % below 90 % for 30 s");
        assert!(
            alert.id.starts_with("alert-") && alert.id.len() == 22,
            "{}",
            alert.id
        );
        assert_eq!(e.open_alerts(), vec![alert.clone()]);
        assert_eq!(e.get(&alert.id), Some(alert));
    }

    #[test]
    fn a_reading_not_meeting_the_condition_resets_the_wait() {
        let mut e = AlertEngine::new(AlertRules::default());
        assert!(feed(&mut e, &BED, VitalKind::Spo2, 88.0, 0, 15).is_empty());
        assert!(e
            .observe(&BED, &reading(VitalKind::Spo2, 91.0, 20))
            .is_empty());
        let changes = feed(&mut e, &BED, VitalKind::Spo2, 88.0, 25, 70);
        assert_eq!(
            the_raise(&changes).0,
            55,
            "30 s after the wait restarted at 25 s"
        );
    }

    #[test]
    fn an_open_alert_clears_only_past_clear_at() {
        let (mut e, alert) = with_spo2_alert();
        assert!(
            e.observe(&BED, &reading(VitalKind::Spo2, 91.0, 35))
                .is_empty(),
            "91 % is between the threshold and clear_at"
        );
        let changes = e.observe(&BED, &reading(VitalKind::Spo2, 92.0, 40));
        match changes.as_slice() {
            [AlertChange::Cleared {
                alert: cleared,
                at: when,
                reason: ClearReason::Recovered,
            }] => {
                assert_eq!(cleared.id, alert.id);
                assert_eq!(*when, at(40));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.open_alerts().is_empty());
        // A new wait from scratch.
        let changes = feed(&mut e, &BED, VitalKind::Spo2, 88.0, 45, 90);
        let (secs, again) = the_raise(&changes);
        assert_eq!(secs, 75);
        assert_ne!(again.id, alert.id);
    }

    #[test]
    fn values_alternating_around_the_threshold_do_not_flap() {
        let (mut e, alert) = with_spo2_alert();
        for (i, secs) in (35..=200).step_by(5).enumerate() {
            let value = if i % 2 == 0 { 89.0 } else { 91.0 };
            assert!(
                e.observe(&BED, &reading(VitalKind::Spo2, value, secs))
                    .is_empty(),
                "t={secs}"
            );
        }
        assert_eq!(e.open_alerts(), vec![alert]);
    }

    #[test]
    fn rate_rules_raise_on_a_fast_change_and_clear_when_it_slows() {
        let mut e = engine(
            r#"
            [[rule]]
            id = "hr-rising"
            kind = "heart-rate"
            rate_above = 20.0
            window_secs = 60
            severity = "urgent"

            [[rule]]
            id = "spo2-falling"
            kind = "spo2"
            rate_below = 2.0
            window_secs = 60
            severity = "emergency"

            [news2]
            enabled = false
            "#,
        );
        let mut seen = Vec::new();
        for (secs, value) in [
            (0, 70.0),
            (10, 70.0),
            (20, 70.0),
            (30, 70.0),
            (40, 90.0),
            (50, 90.0),
            (60, 90.0),
            (70, 90.0),
            (80, 90.0),
            (90, 90.0),
            (100, 90.0),
        ] {
            for change in e.observe(&BED, &reading(VitalKind::HeartRate, value, secs)) {
                seen.push((secs, change));
            }
        }
        match seen.as_slice() {
            [(40, AlertChange::Raised(raised)), (
                100,
                AlertChange::Cleared {
                    alert,
                    reason: ClearReason::Recovered,
                    ..
                },
            )] => {
                assert_eq!(raised.rule, "hr-rising");
                // +20 /min over 40 s: 30 a minute.
                assert!((raised.value - 30.0).abs() < 1e-9, "{}", raised.value);
                assert_eq!(raised.threshold, Some(20.0));
                assert_eq!(
                    raised.message,
                    "Heart rate rising 30 /min a minute over 40 s, faster than 20 /min a minute"
                );
                // A rise of 20 a minute (t = 60..90) is not back to half the limit: still
                // open until the window holds only the plateau.
                assert_eq!(alert.id, raised.id);
            }
            other => panic!("{other:?}"),
        }

        let mut seen = Vec::new();
        for (secs, value) in [(0, 98.0), (30, 98.0), (60, 94.0), (90, 94.0), (120, 94.0)] {
            for change in e.observe(&BED, &reading(VitalKind::Spo2, value, secs)) {
                seen.push((secs, change));
            }
        }
        match seen.as_slice() {
            [(60, AlertChange::Raised(raised)), (120, AlertChange::Cleared { .. })] => {
                assert_eq!(raised.rule, "spo2-falling");
                assert_eq!(raised.severity, Severity::Emergency);
                assert!((raised.value + 4.0).abs() < 1e-9, "{}", raised.value);
                assert_eq!(raised.threshold, Some(-2.0));
                assert!(
                    raised.message.starts_with("SpO2 falling 4 % a minute"),
                    "{}",
                    raised.message
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn news2_of_seven_raises_an_emergency_alert_with_the_score() {
        let mut e = engine(NEWS2_ONLY);
        let changes = vitals(&mut e, &BED, 0, [26.0, 90.0, 105.0, 70.0, 37.0]);
        match changes.as_slice() {
            [AlertChange::Raised(alert)] => {
                assert_eq!(alert.rule, "news2");
                assert_eq!(alert.kind, None);
                assert_eq!(alert.severity, Severity::Emergency);
                assert_eq!(alert.value, 7.0);
                assert_eq!(alert.threshold, None);
                assert_eq!(
                    alert.news2,
                    Some(Score {
                        total: 7,
                        parameters: [3, 3, 0, 1, 0, 0, 0],
                        response: Response::Emergency
                    })
                );
                assert_eq!(
                    alert.message,
                    "NEWS2 7 (emergency response): respiration rate 3, spo2 3, systolic bp 1"
                );
                assert_eq!(alert.raised_at, at(0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn news2_urgent_on_one_parameter_worsens_then_clears() {
        let mut e = engine(NEWS2_ONLY);
        // Respiration rate 7 scores 3 on its own: urgent at a total of 3.
        let changes = vitals(&mut e, &BED, 0, [7.0, 98.0, 120.0, 70.0, 37.0]);
        let alert = match changes.as_slice() {
            [AlertChange::Raised(alert)] => alert.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(alert.severity, Severity::Urgent);
        assert_eq!(alert.news2.map(|s| s.total), Some(3));

        // 6: still urgent, nothing changes; 7: emergency, the alert changes.
        assert!(e
            .observe(&BED, &reading(VitalKind::Spo2, 90.0, 60))
            .is_empty());
        let changes = e.observe(&BED, &reading(VitalKind::SystolicBp, 105.0, 60));
        match changes.as_slice() {
            [AlertChange::Changed(changed)] => {
                assert_eq!(changed.id, alert.id);
                assert_eq!(changed.severity, Severity::Emergency);
                assert_eq!(changed.value, 7.0);
                assert_eq!(changed.news2.map(|s| s.response), Some(Response::Emergency));
                assert_eq!(changed.raised_at, at(0));
            }
            other => panic!("{other:?}"),
        }

        // Back to normal: cleared once the response is low.
        let changes = vitals(&mut e, &BED, 120, [16.0, 98.0, 120.0, 70.0, 37.0]);
        match changes.as_slice() {
            [AlertChange::Cleared {
                alert: cleared,
                at: when,
                reason: ClearReason::Recovered,
            }] => {
                assert_eq!(cleared.id, alert.id);
                assert_eq!(*when, at(120));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.open_alerts().is_empty());
    }

    #[test]
    fn scale_2_and_oxygen_settings_change_the_score_per_patient() {
        let mut e = engine(
            "[news2]\nscale2_patients = [\"mrn:456\"]\non_oxygen_patients = [\"mrn:789\"]\n",
        );
        let scale2 = Subject {
            patient: "mrn:456",
            ..BED
        };
        let on_oxygen = Subject {
            patient: "mrn:789",
            ..BED
        };
        let on_air = Subject {
            patient: "mrn:321",
            ..BED
        };

        // SpO2 88 %: 3 on scale 1, 0 on scale 2.
        let low_spo2 = [16.0, 88.0, 120.0, 70.0, 37.0];
        match vitals(&mut e, &BED, 0, low_spo2).as_slice() {
            [AlertChange::Raised(alert)] => {
                assert_eq!(alert.severity, Severity::Urgent);
                assert_eq!(alert.news2.map(|s| s.parameters[1]), Some(3));
            }
            other => panic!("{other:?}"),
        }
        assert!(vitals(&mut e, &scale2, 0, low_spo2).is_empty());

        // Respiration 22 (2) and pulse 95 (1): 3, low, on air; 5, urgent, on oxygen.
        let borderline = [22.0, 96.0, 120.0, 95.0, 37.0];
        assert!(vitals(&mut e, &on_air, 0, borderline).is_empty());
        match vitals(&mut e, &on_oxygen, 0, borderline).as_slice() {
            [AlertChange::Raised(alert)] => {
                assert_eq!(alert.patient, "mrn:789");
                assert_eq!(
                    alert.news2.map(|s| (s.total, s.parameters)),
                    Some((5, [2, 0, 2, 0, 1, 0, 0]))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stale_vital_is_not_scored() {
        let mut e = engine(NEWS2_ONLY);
        assert!(e
            .observe(&BED, &reading(VitalKind::RespirationRate, 26.0, 0))
            .is_empty());
        for (kind, value) in [
            (VitalKind::Spo2, 90.0),
            (VitalKind::SystolicBp, 105.0),
            (VitalKind::HeartRate, 70.0),
            (VitalKind::Temperature, 37.0),
        ] {
            assert!(
                e.observe(&BED, &reading(kind, value, 1000)).is_empty(),
                "respiration rate 1000 s old"
            );
        }
        let changes = e.observe(&BED, &reading(VitalKind::RespirationRate, 26.0, 1001));
        assert!(
            matches!(changes.as_slice(), [AlertChange::Raised(a)] if a.news2.is_some_and(|s| s.total == 7)),
            "{changes:?}"
        );
    }

    #[test]
    fn unacknowledged_alerts_escalate_after_escalate_after_and_again() {
        let (mut e, alert) = with_spo2_alert();
        assert!(e.tick(at(329)).is_empty(), "299 s after the raise");
        match e.tick(at(330)).as_slice() {
            [AlertChange::Escalated(escalated)] => {
                assert_eq!(escalated.id, alert.id);
                assert_eq!(escalated.escalated, 1);
                assert_eq!(escalated.severity, Severity::Emergency);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.tick(at(629)).is_empty());
        match e.tick(at(630)).as_slice() {
            [AlertChange::Escalated(escalated)] => {
                assert_eq!(escalated.escalated, 2);
                assert_eq!(escalated.severity, Severity::Emergency, "capped");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.get(&alert.id).map(|a| a.escalated), Some(2));

        let never = AlertRules {
            escalate_after: None,
            ..AlertRules::default()
        };
        let mut e = AlertEngine::new(never);
        the_raise(&feed(&mut e, &BED, VitalKind::Spo2, 88.0, 0, 30));
        assert!(e.tick(at(100_000)).is_empty());
    }

    #[test]
    fn acknowledged_alerts_do_not_escalate_and_still_clear() {
        let (mut e, alert) = with_spo2_alert();
        let acked = e.acknowledge(&alert.id, "nurse-1", at(60)).unwrap();
        assert_eq!(acked.acknowledged, Some(("nurse-1".to_owned(), at(60))));
        assert!(e.tick(at(1000)).is_empty());
        let changes = e.observe(&BED, &reading(VitalKind::Spo2, 95.0, 1000));
        assert!(
            matches!(changes.as_slice(), [AlertChange::Cleared { alert: a, .. }] if a.acknowledged.is_some()),
            "{changes:?}"
        );
        assert!(e.open_alerts().is_empty());
    }

    #[test]
    fn acknowledging_an_unknown_acknowledged_or_cleared_alert_fails() {
        let (mut e, alert) = with_spo2_alert();
        assert_eq!(
            e.acknowledge("alert-0000000000000000", "nurse-1", at(40)),
            Err(AckError::Unknown("alert-0000000000000000".to_owned()))
        );
        assert!(e.acknowledge(&alert.id, "nurse-1", at(40)).is_ok());
        assert_eq!(
            e.acknowledge(&alert.id, "nurse-2", at(50)),
            Err(AckError::AlreadyAcknowledged {
                id: alert.id.clone(),
                by: "nurse-1".to_owned(),
                at: at(40)
            })
        );
        assert_eq!(
            e.observe(&BED, &reading(VitalKind::Spo2, 97.0, 60)).len(),
            1
        );
        assert_eq!(
            e.acknowledge(&alert.id, "nurse-2", at(70)),
            Err(AckError::Cleared(alert.id.clone()))
        );
        assert!(e.get(&alert.id).is_some(), "cleared alerts stay known");
    }

    #[test]
    fn replacing_the_rules_clears_the_alerts_of_removed_rules_only() {
        let (mut e, spo2) = with_spo2_alert();
        let (_, hr) = the_raise(&feed(&mut e, &BED, VitalKind::HeartRate, 140.0, 0, 30));
        assert_eq!(hr.rule, "heart-rate-high");

        let mut rules = AlertRules::default();
        rules.rules.retain(|r| r.id != "heart-rate-high");
        match e.replace_rules(rules).as_slice() {
            [AlertChange::Cleared {
                alert,
                at: when,
                reason: ClearReason::RuleRemoved,
            }] => {
                assert_eq!(alert.id, hr.id);
                assert_eq!(*when, at(30), "the latest time seen");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.open_alerts(), vec![spo2.clone()]);
        assert!(feed(&mut e, &BED, VitalKind::HeartRate, 140.0, 35, 100).is_empty());
        let changes = e.observe(&BED, &reading(VitalKind::Spo2, 92.0, 35));
        assert!(
            matches!(changes.as_slice(), [AlertChange::Cleared { alert, reason: ClearReason::Recovered, .. }] if alert.id == spo2.id),
            "{changes:?}"
        );

        // NEWS2 disabled: its open alerts clear too.
        let mut e = engine(NEWS2_ONLY);
        assert_eq!(
            vitals(&mut e, &BED, 0, [26.0, 90.0, 105.0, 70.0, 37.0]).len(),
            1
        );
        let off = AlertRules::from_toml("[news2]\nenabled = false\n").unwrap();
        assert!(matches!(
            e.replace_rules(off).as_slice(),
            [AlertChange::Cleared {
                reason: ClearReason::RuleRemoved,
                ..
            }]
        ));
        assert!(e.open_alerts().is_empty());
    }

    #[test]
    fn a_reading_older_than_the_newest_is_ignored() {
        let mut e = AlertEngine::new(AlertRules::default());
        assert!(feed(&mut e, &BED, VitalKind::Spo2, 88.0, 0, 25).is_empty());
        assert!(
            e.observe(&BED, &reading(VitalKind::Spo2, 99.0, 10))
                .is_empty(),
            "late, and would have reset the wait"
        );
        assert!(e
            .observe(&BED, &reading(VitalKind::Spo2, 99.0, 25))
            .is_empty());
        let changes = e.observe(&BED, &reading(VitalKind::Spo2, 88.0, 30));
        assert!(
            matches!(changes.as_slice(), [AlertChange::Raised(_)]),
            "{changes:?}"
        );
    }

    #[test]
    fn a_per_patient_rule_applies_only_to_its_patient() {
        let mut e = engine(
            r#"
            [[rule]]
            id = "spo2-low-mrn-123"
            kind = "spo2"
            below = 94.0
            severity = "urgent"
            patients = ["mrn:123"]
            "#,
        );
        let other = Subject {
            patient: "mrn:999",
            ..BED
        };
        assert!(e
            .observe(&other, &reading(VitalKind::Spo2, 92.0, 0))
            .is_empty());
        match e
            .observe(&BED, &reading(VitalKind::Spo2, 92.0, 0))
            .as_slice()
        {
            [AlertChange::Raised(alert)] => {
                assert_eq!(alert.patient, "mrn:123");
                assert_eq!(alert.message, "SpO2 92 % below 94 %");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_device_type_filter_applies_only_to_those_devices() {
        let mut e = engine(
            r#"
            [[rule]]
            id = "spo2-low-bedside"
            kind = "spo2"
            below = 90.0
            severity = "urgent"
            device_types = ["bedside-monitor"]
            "#,
        );
        let wearable = Subject {
            device: "band-7",
            device_type: "wearable",
            ..BED
        };
        assert!(e
            .observe(&wearable, &reading(VitalKind::Spo2, 85.0, 0))
            .is_empty());
        assert!(matches!(
            e.observe(&BED, &reading(VitalKind::Spo2, 85.0, 0))
                .as_slice(),
            [AlertChange::Raised(_)]
        ));
    }

    #[test]
    fn the_least_recently_updated_series_is_dropped_past_the_limit() {
        let rules = AlertRules::from_toml(
            "[[rule]]\nid = \"spo2-low\"\nkind = \"spo2\"\nbelow = 90.0\nseverity = \"urgent\"\n",
        )
        .unwrap();
        let mut e = AlertEngine::with_capacity(rules, 2);
        let alert = match e
            .observe(&BED, &reading(VitalKind::Spo2, 85.0, 0))
            .as_slice()
        {
            [AlertChange::Raised(alert)] => alert.clone(),
            other => panic!("{other:?}"),
        };
        let second = Subject {
            device: "monitor-2",
            ..BED
        };
        let third = Subject {
            device: "monitor-3",
            ..BED
        };
        assert!(e
            .observe(&second, &reading(VitalKind::Spo2, 97.0, 1))
            .is_empty());
        match e
            .observe(&third, &reading(VitalKind::Spo2, 97.0, 2))
            .as_slice()
        {
            [AlertChange::Cleared {
                alert: evicted,
                reason: ClearReason::Evicted,
                ..
            }] => assert_eq!(evicted.id, alert.id),
            other => panic!("{other:?}"),
        }
        assert!(e.open_alerts().is_empty());
    }

    #[test]
    fn alert_ids_are_deterministic_and_unique() {
        let run = || {
            let mut e = AlertEngine::with_id_key(AlertRules::default(), [7; 32]);
            feed(&mut e, &BED, VitalKind::Spo2, 88.0, 0, 30);
            feed(&mut e, &BED, VitalKind::HeartRate, 140.0, 0, 30);
            e.open_alerts()
        };
        let first = run();
        assert_eq!(first.len(), 2);
        assert_ne!(first[0].id, first[1].id);
        assert_eq!(first, run());
        // Another key, other ids: they say nothing of the patient without it.
        let mut e = AlertEngine::new(AlertRules::default());
        feed(&mut e, &BED, VitalKind::Spo2, 88.0, 0, 30);
        assert_ne!(e.open_alerts()[0].id, first[0].id);
    }

    #[test]
    fn changes_serialize_with_rfc3339_times() {
        let (mut e, alert) = with_spo2_alert();
        let json = serde_json::to_value(AlertChange::Raised(alert.clone())).unwrap();
        assert_eq!(json["change"], "raised");
        assert_eq!(json["id"], alert.id.as_str());
        assert_eq!(json["rule"], "spo2-low");
        assert_eq!(json["severity"], "urgent");
        assert_eq!(json["kind"], "spo2");
        assert_eq!(json["raised_at"], "2023-11-14T22:13:50Z");
        assert_eq!(json["acknowledged"], serde_json::Value::Null);
        e.acknowledge(&alert.id, "nurse-1", at(40)).unwrap();
        let changes = e.observe(&BED, &reading(VitalKind::Spo2, 95.0, 45));
        let json = serde_json::to_value(&changes[0]).unwrap();
        assert_eq!(json["change"], "cleared");
        assert_eq!(json["reason"], "recovered");
        assert_eq!(json["at"], "2023-11-14T22:14:05Z");
        assert_eq!(json["alert"]["acknowledged"]["by"], "nurse-1");
        assert_eq!(json["alert"]["acknowledged"]["at"], "2023-11-14T22:14:00Z");
    }
}
