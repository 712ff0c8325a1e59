//! The National Early Warning Score 2 (Royal College of Physicians, 2017): seven vital
//! signs, each scored 0–3 by the bands of the NEWS2 chart, summed; the sum (and any single
//! parameter scoring 3) says how urgently a patient needs a clinical response.
//!
//! Values are read as the chart reads them: rates, saturation and pressure as whole
//! numbers (rounded), temperature to one decimal. SpO2 has two scales: scale 1 for most
//! patients, scale 2 for those with hypercapnic respiratory failure whose target
//! saturation is 88–92 % (there a saturation of 93 % or more scores only on oxygen). Which
//! scale applies is a clinical decision recorded per patient, never guessed here.

use serde::{Deserialize, Serialize};

/// Level of consciousness (ACVPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consciousness {
    /// Alert.
    Alert,
    /// New confusion.
    NewConfusion,
    /// Responds to voice.
    Voice,
    /// Responds to pain.
    Pain,
    /// Unresponsive.
    Unresponsive,
}

/// Which SpO2 scale of the chart applies to the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spo2Scale {
    /// Most patients.
    #[default]
    Scale1,
    /// Hypercapnic respiratory failure, target 88–92 % (a clinician's decision).
    Scale2,
}

/// The vital signs NEWS2 scores, in the chart's units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observations {
    /// Respiration rate, breaths per minute.
    pub respiration_rate: f64,
    /// Oxygen saturation, %.
    pub spo2: f64,
    /// The SpO2 scale that applies.
    pub spo2_scale: Spo2Scale,
    /// Whether the patient breathes supplemental oxygen (else air).
    pub on_oxygen: bool,
    /// Systolic blood pressure, mmHg.
    pub systolic_bp: f64,
    /// Pulse, beats per minute.
    pub pulse: f64,
    /// Level of consciousness.
    pub consciousness: Consciousness,
    /// Temperature, °C.
    pub temperature: f64,
}

/// How urgently the score says a clinician must respond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Total 0–4, no parameter scoring 3: routine monitoring.
    Low,
    /// Total 5–6, or any single parameter scoring 3: an urgent response.
    Urgent,
    /// Total 7 or more: an emergency response.
    Emergency,
}

/// A NEWS2 score and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Score {
    /// The aggregate score, 0–20.
    pub total: u8,
    /// Each parameter's score: respiration rate, SpO2, air or oxygen, systolic BP,
    /// pulse, consciousness, temperature.
    pub parameters: [u8; 7],
    /// What the score calls for.
    pub response: Response,
}

/// Names of [`Score::parameters`], in order.
pub const PARAMETERS: [&str; 7] = [
    "respiration_rate",
    "spo2",
    "air_or_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
];

/// The score of `observations`.
pub fn score(observations: &Observations) -> Score {
    let o = observations;
    let parameters = [
        respiration_rate(o.respiration_rate.round()),
        spo2(o.spo2.round(), o.spo2_scale, o.on_oxygen),
        if o.on_oxygen { 2 } else { 0 },
        systolic_bp(o.systolic_bp.round()),
        pulse(o.pulse.round()),
        if o.consciousness == Consciousness::Alert {
            0
        } else {
            3
        },
        temperature((o.temperature * 10.0).round() / 10.0),
    ];
    let total = parameters.iter().sum::<u8>();
    let response = if total >= 7 {
        Response::Emergency
    } else if total >= 5 || parameters.contains(&3) {
        Response::Urgent
    } else {
        Response::Low
    };
    Score {
        total,
        parameters,
        response,
    }
}

/// The score of the band `value` falls in: `bands` lists `(upper bound, score)` in
/// increasing order, and values above the last bound score `above`.
fn banded(value: f64, bands: &[(f64, u8)], above: u8) -> u8 {
    bands
        .iter()
        .find(|(upper, _)| value <= *upper)
        .map_or(above, |(_, score)| *score)
}

fn respiration_rate(v: f64) -> u8 {
    banded(v, &[(8.0, 3), (11.0, 1), (20.0, 0), (24.0, 2)], 3)
}

fn spo2(v: f64, scale: Spo2Scale, on_oxygen: bool) -> u8 {
    match scale {
        Spo2Scale::Scale1 => banded(v, &[(91.0, 3), (93.0, 2), (95.0, 1)], 0),
        // At 93 % or more, scale 2 scores only a patient on oxygen (over-oxygenation).
        Spo2Scale::Scale2 if v >= 93.0 && on_oxygen => banded(v, &[(94.0, 1), (96.0, 2)], 3),
        Spo2Scale::Scale2 => banded(v, &[(83.0, 3), (85.0, 2), (87.0, 1)], 0),
    }
}

fn systolic_bp(v: f64) -> u8 {
    banded(v, &[(90.0, 3), (100.0, 2), (110.0, 1), (219.0, 0)], 3)
}

fn pulse(v: f64) -> u8 {
    banded(
        v,
        &[(40.0, 3), (50.0, 1), (90.0, 0), (110.0, 1), (130.0, 2)],
        3,
    )
}

fn temperature(v: f64) -> u8 {
    banded(v, &[(35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1)], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal() -> Observations {
        Observations {
            respiration_rate: 16.0,
            spo2: 98.0,
            spo2_scale: Spo2Scale::Scale1,
            on_oxygen: false,
            systolic_bp: 120.0,
            pulse: 70.0,
            consciousness: Consciousness::Alert,
            temperature: 37.0,
        }
    }

    #[test]
    fn known_cases_score_as_the_chart_does() {
        // (observations, parameter scores, total, response)
        let cases = [
            (normal(), [0, 0, 0, 0, 0, 0, 0], 0, Response::Low),
            (
                Observations {
                    respiration_rate: 22.0,
                    spo2: 95.0,
                    systolic_bp: 105.0,
                    pulse: 95.0,
                    temperature: 38.5,
                    ..normal()
                },
                [2, 1, 0, 1, 1, 0, 1],
                6,
                Response::Urgent,
            ),
            (
                Observations {
                    respiration_rate: 26.0,
                    spo2: 90.0,
                    on_oxygen: true,
                    systolic_bp: 88.0,
                    pulse: 135.0,
                    consciousness: Consciousness::Voice,
                    temperature: 34.8,
                    ..normal()
                },
                [3, 3, 2, 3, 3, 3, 3],
                20,
                Response::Emergency,
            ),
            // A single parameter scoring 3 calls for an urgent response at a total of 3.
            (
                Observations {
                    respiration_rate: 7.0,
                    ..normal()
                },
                [3, 0, 0, 0, 0, 0, 0],
                3,
                Response::Urgent,
            ),
            (
                Observations {
                    consciousness: Consciousness::NewConfusion,
                    ..normal()
                },
                [0, 0, 0, 0, 0, 3, 0],
                3,
                Response::Urgent,
            ),
            // Total 4 without a 3: low.
            (
                Observations {
                    respiration_rate: 22.0,
                    pulse: 115.0,
                    ..normal()
                },
                [2, 0, 0, 0, 2, 0, 0],
                4,
                Response::Low,
            ),
            // 5 exactly: urgent; 7 exactly: emergency.
            (
                Observations {
                    respiration_rate: 22.0,
                    pulse: 115.0,
                    temperature: 38.2,
                    ..normal()
                },
                [2, 0, 0, 0, 2, 0, 1],
                5,
                Response::Urgent,
            ),
            (
                Observations {
                    respiration_rate: 22.0,
                    pulse: 115.0,
                    on_oxygen: true,
                    temperature: 38.2,
                    ..normal()
                },
                [2, 0, 2, 0, 2, 0, 1],
                7,
                Response::Emergency,
            ),
        ];
        for (i, (observations, parameters, total, response)) in cases.into_iter().enumerate() {
            let s = score(&observations);
            assert_eq!(
                (s.parameters, s.total, s.response),
                (parameters, total, response),
                "case {i}"
            );
        }
    }

    #[test]
    fn every_band_edge_scores_on_the_right_side() {
        let one = |f: fn(f64) -> u8, edges: &[(f64, u8)]| {
            for &(value, expected) in edges {
                assert_eq!(f(value), expected, "value {value}");
            }
        };
        one(
            respiration_rate,
            &[
                (8.0, 3),
                (9.0, 1),
                (11.0, 1),
                (12.0, 0),
                (20.0, 0),
                (21.0, 2),
                (24.0, 2),
                (25.0, 3),
            ],
        );
        one(
            systolic_bp,
            &[
                (90.0, 3),
                (91.0, 2),
                (100.0, 2),
                (101.0, 1),
                (110.0, 1),
                (111.0, 0),
                (219.0, 0),
                (220.0, 3),
            ],
        );
        one(
            pulse,
            &[
                (40.0, 3),
                (41.0, 1),
                (50.0, 1),
                (51.0, 0),
                (90.0, 0),
                (91.0, 1),
                (110.0, 1),
                (111.0, 2),
                (130.0, 2),
                (131.0, 3),
            ],
        );
        one(
            temperature,
            &[
                (35.0, 3),
                (35.1, 1),
                (36.0, 1),
                (36.1, 0),
                (38.0, 0),
                (38.1, 1),
                (39.0, 1),
                (39.1, 2),
            ],
        );
        for (value, expected) in [
            (91.0, 3),
            (92.0, 2),
            (93.0, 2),
            (94.0, 1),
            (95.0, 1),
            (96.0, 0),
        ] {
            assert_eq!(
                spo2(value, Spo2Scale::Scale1, false),
                expected,
                "scale 1, {value}"
            );
            assert_eq!(
                spo2(value, Spo2Scale::Scale1, true),
                expected,
                "scale 1 on O2, {value}"
            );
        }
        for (value, on_oxygen, expected) in [
            (83.0, false, 3),
            (84.0, false, 2),
            (85.0, true, 2),
            (86.0, false, 1),
            (87.0, true, 1),
            (88.0, true, 0),
            (92.0, true, 0),
            (93.0, false, 0),
            (99.0, false, 0),
            (93.0, true, 1),
            (94.0, true, 1),
            (95.0, true, 2),
            (96.0, true, 2),
            (97.0, true, 3),
        ] {
            assert_eq!(
                spo2(value, Spo2Scale::Scale2, on_oxygen),
                expected,
                "scale 2, {value} %, oxygen {on_oxygen}"
            );
        }
    }

    #[test]
    fn readings_are_rounded_as_the_chart_reads_them() {
        // 90.4 bpm reads as 90 (0), 90.6 as 91 (1); 38.04 °C as 38.0 (0), 38.06 as 38.1 (1).
        let at = |pulse: f64, temperature: f64| {
            score(&Observations {
                pulse,
                temperature,
                ..normal()
            })
            .parameters
        };
        assert_eq!(at(90.4, 38.04)[4..], [0, 0, 0]);
        assert_eq!(at(90.6, 38.06)[4..], [1, 0, 1]);
    }
}
