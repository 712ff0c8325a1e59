//! Vital-sign readings from bedside monitors and wearables: what kinds the node knows
//! (coded in LOINC, the way FHIR vital-signs profiles code them), which UCUM units each
//! accepts and how they convert to the canonical one, the range a real measurement can
//! fall in, and the checks every reading passes before the node keeps it (unit, range,
//! time not in the future and not too old).
//!
//! Decoding a device's payload (SenML, FHIR Observation) into [`RawReading`]s is the
//! MQTT bridge's; everything that decides whether a reading is acceptable is here, once.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// A kind of vital sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VitalKind {
    /// Heart rate, per minute (LOINC 8867-4).
    HeartRate,
    /// Oxygen saturation, % (LOINC 59408-5, by pulse oximetry).
    Spo2,
    /// Respiration rate, per minute (LOINC 9279-1).
    RespirationRate,
    /// Systolic blood pressure, mmHg (LOINC 8480-6).
    SystolicBp,
    /// Body temperature, °C (LOINC 8310-5).
    Temperature,
}

impl VitalKind {
    /// Every kind.
    pub const ALL: [VitalKind; 5] = [
        VitalKind::HeartRate,
        VitalKind::Spo2,
        VitalKind::RespirationRate,
        VitalKind::SystolicBp,
        VitalKind::Temperature,
    ];

    /// The name devices use for it (SenML record names end with it).
    pub fn name(self) -> &'static str {
        match self {
            VitalKind::HeartRate => "heart-rate",
            VitalKind::Spo2 => "spo2",
            VitalKind::RespirationRate => "respiration-rate",
            VitalKind::SystolicBp => "systolic-bp",
            VitalKind::Temperature => "temperature",
        }
    }

    /// Its LOINC code.
    pub fn loinc(self) -> &'static str {
        match self {
            VitalKind::HeartRate => "8867-4",
            VitalKind::Spo2 => "59408-5",
            VitalKind::RespirationRate => "9279-1",
            VitalKind::SystolicBp => "8480-6",
            VitalKind::Temperature => "8310-5",
        }
    }

    /// Its IEEE 11073-10101 (MDC) reference id.
    pub fn mdc(self) -> &'static str {
        match self {
            VitalKind::HeartRate => "MDC_ECG_HEART_RATE",
            VitalKind::Spo2 => "MDC_PULS_OXIM_SAT_O2",
            VitalKind::RespirationRate => "MDC_RESP_RATE",
            VitalKind::SystolicBp => "MDC_PRESS_BLD_NONINV_SYS",
            VitalKind::Temperature => "MDC_TEMP_BODY",
        }
    }

    /// The kind a name, LOINC code or MDC id denotes.
    pub fn from_code(code: &str) -> Option<Self> {
        VitalKind::ALL
            .into_iter()
            .find(|k| code == k.name() || code == k.loinc() || code == k.mdc())
    }

    /// The canonical UCUM unit readings are kept in.
    pub fn unit(self) -> &'static str {
        match self {
            VitalKind::HeartRate | VitalKind::RespirationRate => "/min",
            VitalKind::Spo2 => "%",
            VitalKind::SystolicBp => "mm[Hg]",
            VitalKind::Temperature => "Cel",
        }
    }

    /// The range a real measurement falls in, canonical unit (beyond it the device is
    /// faulty or the unit wrong: the reading is refused, not alerted on).
    pub fn plausible(self) -> (f64, f64) {
        match self {
            VitalKind::HeartRate => (20.0, 300.0),
            VitalKind::Spo2 => (50.0, 100.0),
            VitalKind::RespirationRate => (2.0, 80.0),
            VitalKind::SystolicBp => (40.0, 300.0),
            VitalKind::Temperature => (25.0, 45.0),
        }
    }

    /// `value` in `unit` converted to the canonical unit, or `None` if this kind does
    /// not take that unit. Accepted: UCUM codes and the SenML registry's spellings.
    pub fn to_canonical(self, value: f64, unit: &str) -> Option<f64> {
        let unit = unit.trim();
        match self {
            VitalKind::HeartRate => matches!(
                unit,
                "/min" | "1/min" | "beat/min" | "beats/min" | "{beats}/min"
            )
            .then_some(value),
            VitalKind::RespirationRate => {
                matches!(unit, "/min" | "1/min" | "breaths/min" | "{breaths}/min").then_some(value)
            }
            VitalKind::Spo2 => (unit == "%").then_some(value),
            VitalKind::SystolicBp => match unit {
                "mm[Hg]" | "mmHg" => Some(value),
                "kPa" => Some(value * 7.500_615_75),
                _ => None,
            },
            VitalKind::Temperature => match unit {
                "Cel" => Some(value),
                "[degF]" => Some((value - 32.0) * 5.0 / 9.0),
                "K" => Some(value - 273.15),
                _ => None,
            },
        }
    }
}

impl fmt::Display for VitalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A reading as a device sent it, decoded but not checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RawReading {
    /// What it measures.
    pub kind: VitalKind,
    /// The value, in `unit`.
    pub value: f64,
    /// Its unit as sent (UCUM or SenML).
    pub unit: String,
    /// When it was measured.
    pub time: OffsetDateTime,
}

/// A checked reading, in the kind's canonical unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// What it measures.
    pub kind: VitalKind,
    /// The value, in [`VitalKind::unit`].
    pub value: f64,
    /// When it was measured.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// Why a reading was refused: said to the device on its error topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadingError {
    /// The unit does not fit the kind.
    #[error("{kind} is not measured in `{unit}` (use {expected})")]
    WrongUnit {
        /// The kind.
        kind: VitalKind,
        /// The unit sent.
        unit: String,
        /// The canonical unit.
        expected: &'static str,
    },
    /// The value is no real measurement.
    #[error("{kind} {value} {unit} is outside the plausible {low}–{high} {unit}")]
    Implausible {
        /// The kind.
        kind: VitalKind,
        /// The value, canonical unit.
        value: f64,
        /// The canonical unit.
        unit: &'static str,
        /// Lowest plausible.
        low: f64,
        /// Highest plausible.
        high: f64,
    },
    /// Not a number.
    #[error("{kind} value is not a finite number")]
    NotANumber {
        /// The kind.
        kind: VitalKind,
    },
    /// Measured in the future (beyond the clock skew allowed).
    #[error("{kind} is timed {ahead} s in the future; check the device's clock")]
    Future {
        /// The kind.
        kind: VitalKind,
        /// Seconds ahead of the node's clock.
        ahead: i64,
    },
    /// Measured too long ago to be kept as live telemetry.
    #[error("{kind} is {age} s old, older than the {max} s accepted")]
    TooOld {
        /// The kind.
        kind: VitalKind,
        /// Its age in seconds.
        age: i64,
        /// The oldest accepted, seconds.
        max: i64,
    },
}

/// The time checks of [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// How far ahead of the node's clock a reading may be (device clocks drift).
    pub skew: Duration,
    /// How old a reading may be (a device that buffered while offline).
    pub max_age: Duration,
}

impl Default for TimeWindow {
    fn default() -> Self {
        Self {
            skew: Duration::seconds(30),
            max_age: Duration::hours(24),
        }
    }
}

/// Checks `raw` as of `now`: unit, finite, plausible, timed within `window`. Returns it
/// in the kind's canonical unit.
pub fn check(
    raw: &RawReading,
    now: OffsetDateTime,
    window: TimeWindow,
) -> Result<Reading, ReadingError> {
    let kind = raw.kind;
    if !raw.value.is_finite() {
        return Err(ReadingError::NotANumber { kind });
    }
    let value = kind
        .to_canonical(raw.value, &raw.unit)
        .ok_or_else(|| ReadingError::WrongUnit {
            kind,
            unit: raw.unit.clone(),
            expected: kind.unit(),
        })?;
    let (low, high) = kind.plausible();
    if !(low..=high).contains(&value) {
        return Err(ReadingError::Implausible {
            kind,
            value,
            unit: kind.unit(),
            low,
            high,
        });
    }
    if raw.time > now + window.skew {
        return Err(ReadingError::Future {
            kind,
            ahead: (raw.time - now).whole_seconds(),
        });
    }
    if raw.time < now - window.max_age {
        return Err(ReadingError::TooOld {
            kind,
            age: (now - raw.time).whole_seconds(),
            max: window.max_age.whole_seconds(),
        });
    }
    Ok(Reading {
        kind,
        value,
        time: raw.time,
    })
}

/// Drops repeats: a reading of a kind at a time already seen (a device that resent a
/// pack keeps the first), keeping the order of the rest.
pub fn dedupe(readings: Vec<Reading>) -> Vec<Reading> {
    let mut seen = std::collections::HashSet::new();
    readings
        .into_iter()
        .filter(|r| seen.insert((r.kind, r.time.unix_timestamp_nanos())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    fn raw(kind: VitalKind, value: f64, unit: &str, time: OffsetDateTime) -> RawReading {
        RawReading {
            kind,
            value,
            unit: unit.into(),
            time,
        }
    }

    #[test]
    fn codes_name_one_kind_each() {
        for kind in VitalKind::ALL {
            for code in [kind.name(), kind.loinc(), kind.mdc()] {
                assert_eq!(VitalKind::from_code(code), Some(kind), "{code}");
            }
        }
        assert_eq!(VitalKind::from_code("8867-5"), None);
    }

    #[test]
    fn units_convert_to_the_canonical_one_or_are_refused() {
        let now = at(0);
        let ok = |kind, value, unit: &str| {
            check(&raw(kind, value, unit, now), now, TimeWindow::default())
        };
        let t = ok(VitalKind::Temperature, 98.6, "[degF]").unwrap();
        assert!((t.value - 37.0).abs() < 1e-9, "{t:?}");
        let p = ok(VitalKind::SystolicBp, 16.0, "kPa").unwrap();
        assert!((p.value - 120.0).abs() < 0.1, "{p:?}");
        assert_eq!(
            ok(VitalKind::HeartRate, 72.0, "beat/min").unwrap().value,
            72.0
        );
        let err = ok(VitalKind::HeartRate, 72.0, "Cel").unwrap_err();
        assert_eq!(
            err.to_string(),
            "heart-rate is not measured in `Cel` (use /min)"
        );
        assert!(matches!(
            ok(VitalKind::Spo2, 0.97, "/"),
            Err(ReadingError::WrongUnit { .. })
        ));
    }

    #[test]
    fn implausible_values_and_not_numbers_are_refused() {
        let now = at(0);
        let c = |kind, value, unit: &str| {
            check(&raw(kind, value, unit, now), now, TimeWindow::default())
        };
        assert!(c(VitalKind::Spo2, 100.0, "%").is_ok());
        let err = c(VitalKind::Spo2, 101.0, "%").unwrap_err();
        assert!(
            err.to_string().contains("outside the plausible 50–100 %"),
            "{err}"
        );
        assert!(matches!(
            c(VitalKind::Temperature, 370.0, "Cel"),
            Err(ReadingError::Implausible { .. })
        ));
        assert!(matches!(
            c(VitalKind::HeartRate, f64::NAN, "/min"),
            Err(ReadingError::NotANumber { .. })
        ));
    }

    #[test]
    fn readings_from_the_future_or_too_long_ago_are_refused() {
        let now = at(0);
        let w = TimeWindow::default();
        let c = |time| check(&raw(VitalKind::HeartRate, 70.0, "/min", time), now, w);
        assert!(c(at(30)).is_ok(), "within the skew");
        assert_eq!(
            c(at(31)).unwrap_err(),
            ReadingError::Future {
                kind: VitalKind::HeartRate,
                ahead: 31
            }
        );
        assert!(c(at(-24 * 3600)).is_ok());
        assert!(matches!(
            c(at(-24 * 3600 - 1)),
            Err(ReadingError::TooOld { age: 86_401, .. })
        ));
    }

    #[test]
    fn repeats_are_dropped_and_the_order_kept() {
        let r = |kind, value, secs| Reading {
            kind,
            value,
            time: at(secs),
        };
        let readings = vec![
            r(VitalKind::HeartRate, 70.0, 0),
            r(VitalKind::Spo2, 97.0, 0),
            r(VitalKind::HeartRate, 71.0, 0),
            r(VitalKind::HeartRate, 72.0, 1),
        ];
        assert_eq!(
            dedupe(readings),
            vec![
                r(VitalKind::HeartRate, 70.0, 0),
                r(VitalKind::Spo2, 97.0, 0),
                r(VitalKind::HeartRate, 72.0, 1),
            ]
        );
    }
}
