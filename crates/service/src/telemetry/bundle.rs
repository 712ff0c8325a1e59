//! How readings are kept in records and given back: a FHIR R4 `Bundle` (type
//! `collection`) of vital-sign `Observation`s, coded in LOINC with UCUM units, one
//! bundle per patient per batch; and SenML packs (RFC 8428) for callers that want the
//! devices' own format.

use medmesh_core::vitals::{Reading, VitalKind};
use medmesh_core::PatientRef;
use serde::Serialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::DeviceReading;

/// The `meta.tag` that marks a bundle as medmesh telemetry.
const TAG_SYSTEM: &str = "urn:medmesh:telemetry";

/// A time as RFC 3339 text (as FHIR and the API write times).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn display(kind: VitalKind) -> &'static str {
    match kind {
        VitalKind::HeartRate => "Heart rate",
        VitalKind::Spo2 => "Oxygen saturation in Arterial blood by Pulse oximetry",
        VitalKind::RespirationRate => "Respiratory rate",
        VitalKind::SystolicBp => "Systolic blood pressure",
        VitalKind::Temperature => "Body temperature",
    }
}

// The bundle as typed borrowed structs: a batch holds up to a million readings, and
// building a `serde_json::Value` tree per Observation costs several times more.

#[derive(Serialize)]
struct Coding<'a> {
    system: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

#[derive(Serialize)]
struct Concept<'a> {
    coding: [Coding<'a>; 1],
}

#[derive(Serialize)]
struct Identified<'a> {
    identifier: Value1<'a>,
}

#[derive(Serialize)]
struct Value1<'a> {
    value: &'a str,
}

#[derive(Serialize)]
struct Quantity<'a> {
    value: f64,
    unit: &'a str,
    system: &'a str,
    code: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Observation<'a> {
    resource_type: &'a str,
    status: &'a str,
    category: [Concept<'a>; 1],
    code: Concept<'a>,
    subject: Identified<'a>,
    device: Identified<'a>,
    effective_date_time: String,
    value_quantity: Quantity<'a>,
}

#[derive(Serialize)]
struct Entry<'a> {
    resource: Observation<'a>,
}

#[derive(Serialize)]
struct Meta<'a> {
    tag: [Coding<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bundle<'a> {
    resource_type: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    meta: Meta<'a>,
    timestamp: String,
    entry: Vec<Entry<'a>>,
}

/// One Observation of `patient` for `r`.
fn observation<'a>(patient: &'a PatientRef, r: &'a DeviceReading) -> Observation<'a> {
    let kind = r.reading.kind;
    Observation {
        resource_type: "Observation",
        status: "final",
        category: [Concept {
            coding: [Coding {
                system: "http://terminology.hl7.org/CodeSystem/observation-category",
                code: "vital-signs",
                display: None,
            }],
        }],
        code: Concept {
            coding: [Coding {
                system: "http://loinc.org",
                code: kind.loinc(),
                display: Some(display(kind)),
            }],
        },
        subject: Identified {
            identifier: Value1 {
                value: patient.as_str(),
            },
        },
        device: Identified {
            identifier: Value1 { value: &r.device },
        },
        effective_date_time: rfc3339(r.reading.time),
        value_quantity: Quantity {
            value: r.reading.value,
            unit: kind.unit(),
            system: "http://unitsofmeasure.org",
            code: kind.unit(),
        },
    }
}

/// The bundle of `readings` of `patient`, as JSON bytes.
pub fn to_bundle_bytes(patient: &PatientRef, readings: &[DeviceReading]) -> Vec<u8> {
    let bundle = Bundle {
        resource_type: "Bundle",
        kind: "collection",
        meta: Meta {
            tag: [Coding {
                system: TAG_SYSTEM,
                code: "vital-signs",
                display: None,
            }],
        },
        timestamp: rfc3339(OffsetDateTime::now_utc()),
        entry: readings
            .iter()
            .map(|r| Entry {
                resource: observation(patient, r),
            })
            .collect(),
    };
    serde_json::to_vec(&bundle).expect("a bundle serializes")
}

/// The bundle of `readings` of `patient`.
pub fn to_bundle(patient: &PatientRef, readings: &[DeviceReading]) -> Value {
    serde_json::from_slice(&to_bundle_bytes(patient, readings)).expect("a bundle parses back")
}

/// The readings of a bundle [`to_bundle`] made; `None` if `bytes` is not one (another
/// FHIR record of the patient).
pub fn from_bundle(bytes: &[u8]) -> Option<Vec<DeviceReading>> {
    let bundle: Value = serde_json::from_slice(bytes).ok()?;
    let tagged = bundle["meta"]["tag"]
        .as_array()?
        .iter()
        .any(|t| t["system"] == TAG_SYSTEM);
    if bundle["resourceType"] != "Bundle" || !tagged {
        return None;
    }
    let mut out = Vec::new();
    for entry in bundle["entry"].as_array()? {
        let o = &entry["resource"];
        let kind = o["code"]["coding"][0]["code"]
            .as_str()
            .and_then(VitalKind::from_code)?;
        let time = OffsetDateTime::parse(o["effectiveDateTime"].as_str()?, &Rfc3339).ok()?;
        out.push(DeviceReading {
            device: o["device"]["identifier"]["value"].as_str()?.to_string(),
            reading: Reading {
                kind,
                value: o["valueQuantity"]["value"].as_f64()?,
                time,
            },
        });
    }
    Some(out)
}

/// `readings` as one SenML pack: one record per reading, named `device/kind`, time in
/// Unix seconds, canonical unit.
pub fn to_senml(readings: &[DeviceReading]) -> Value {
    Value::Array(
        readings
            .iter()
            .map(|r| {
                json!({
                    "n": format!("{}/{}", r.device, r.reading.kind.name()),
                    "u": r.reading.kind.unit(),
                    "v": r.reading.value,
                    "t": r.reading.time.unix_timestamp_nanos() as f64 / 1e9,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_gives_back_its_readings_and_other_fhir_is_not_taken_for_one() {
        let patient = PatientRef::new("MRN-1").unwrap();
        let readings = vec![
            DeviceReading {
                device: "m-1".into(),
                reading: Reading {
                    kind: VitalKind::Spo2,
                    value: 97.0,
                    time: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
                },
            },
            DeviceReading {
                device: "m-2".into(),
                reading: Reading {
                    kind: VitalKind::Temperature,
                    value: 37.2,
                    time: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_001_500_000_000)
                        .unwrap(),
                },
            },
        ];
        let bytes = to_bundle_bytes(&patient, &readings);
        assert_eq!(
            to_bundle(&patient, &readings)["entry"][1]["resource"]["code"]["coding"][0]["code"],
            "8310-5"
        );
        assert_eq!(from_bundle(&bytes).unwrap(), readings);
        assert!(from_bundle(br#"{"resourceType":"Bundle","entry":[]}"#).is_none());
        assert!(from_bundle(b"not json").is_none());
        let senml = to_senml(&readings);
        assert_eq!(senml[1]["n"], "m-2/temperature");
        assert_eq!(senml[1]["t"], 1_700_000_001.5);
    }
}
