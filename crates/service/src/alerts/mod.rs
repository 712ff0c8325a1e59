//! Clinical alerts on vital signs: the rules that say when a reading calls for a
//! clinician ([`AlertRules`], read from an operator's TOML file, [`default_toml`] the
//! built-in set) and the engine that applies them ([`AlertEngine`]).
//!
//! The engine is pure logic: it is fed checked readings ([`medmesh_core::vitals::check`]
//! has already refused wrong units, implausible values and bad times) with the device
//! and patient they come from ([`Subject`]), and ticks with the caller's time; it
//! returns [`AlertChange`]s (raised, changed, escalated, cleared) for the caller to
//! publish and record. It reads no clock and does no I/O, so it is deterministic and
//! tested without either.
//!
//! Three kinds of rules raise alerts: thresholds held for a while (`below`, `above`, with
//! hysteresis so an alert does not flap), rates of change over a window (`rate_above`,
//! `rate_below`), and the NEWS2 early-warning score of a patient's latest vitals
//! ([`medmesh_core::news2`]). Unacknowledged alerts escalate one severity step after
//! [`AlertRules::escalate_after`], and again after as long each time.

mod engine;
mod rules;

pub use engine::{
    AckError, Alert, AlertChange, AlertEngine, ClearReason, Subject, MAX_CLEARED, MAX_RATE_POINTS,
    MAX_SERIES,
};
pub use rules::{
    default_toml, AlertRules, Condition, News2Settings, Rule, RulesError, Severity, MAX_RULES,
    MAX_SECS, NEWS2_RULE, RATE_CLEAR_FRACTION,
};
