//! Device messages: what a bedside monitor or wearable publishes over MQTT, and how the
//! node reads it.
//!
//! # Envelope
//!
//! A message is one JSON object of at most [`MAX_MESSAGE_BYTES`]:
//!
//! ```json
//! {"counter": 42, "body": [{"n": "heart-rate", "u": "/min", "v": 72}],
//!  "sig": "3q2+7w==", "firmware": "2.3.1", "ack": true}
//! ```
//!
//! - `counter`: 1 or more, new for every message the device sends (rising; the node
//!   takes each counter once, and late ones only within a window below the highest it
//!   accepted: see `docs/devices.md`).
//! - `body`: the readings, a SenML pack or a FHIR resource (below).
//! - `sig`: the device's signature over the signed bytes (below), standard base64 with
//!   padding, 1 to [`MAX_SIGNATURE_BYTES`] bytes once decoded.
//! - `firmware` (optional): the firmware version, 1 to [`MAX_FIRMWARE_CHARS`] printable
//!   ASCII characters.
//! - `ack` (optional, default `false`): whether the device wants an acknowledgement.
//!
//! No other field is accepted, so a misspelt field is an error rather than silently
//! dropped.
//!
//! # What is signed
//!
//! ```text
//! "medmesh/device-message/v1" 0x00 ‖ device id (UTF-8) ‖ 0x00 ‖ counter (u64, big-endian)
//!   ‖ ack (1 byte: 0 or 1) ‖ firmware length (1 byte) ‖ firmware ‖ body
//! ```
//!
//! `body` is the body exactly as it appears in the message, from its first byte to its
//! last (`[` to `]` or `{` to `}`, not the whitespace around it). Nothing is
//! re-serialised: the device signs the text it sends and need not canonicalise its JSON.
//! The device id and the counter are signed with the body so that one device's message
//! cannot be passed off as another's, nor an old message replayed under a new counter.
//! `firmware` and `ack` are signed too, so nobody on the broker can change what the device
//! reported or asked for. See [`signed_bytes`].
//!
//! # Body: SenML
//!
//! A JSON array is a SenML pack (RFC 8428) of numeric records. Base fields (`bn`, `bt`,
//! `bu`, `bv`) apply to the record they are in and to every later one until changed. A
//! record's name is `bn` + `n`, its time `bt` + `t`, its value `bv` + `v`, its unit `u`,
//! or else `bu`. The kind is read from the whole name, or else from the part after its
//! last `/`, or else after its last `:`, as a kind name (`heart-rate`, `spo2`,
//! `respiration-rate`, `systolic-bp`, `temperature`), LOINC code or MDC reference id:
//! `urn:dev:mac:0024befffe804ff1/heart-rate` is a heart rate. Times are seconds since
//! the Unix epoch, fractions allowed; below 2^28 they are seconds relative to when the
//! node decodes the message (`"t": -5` is five seconds ago; no time at all is now).
//!
//! A record with only base fields is skipped. Records with a string, boolean or data
//! value (`vs`, `vb`, `vd`) or only a sum (`s`) are refused, as are fields ending in `_`
//! (RFC 8428's "must understand"). Other fields (`bver`, `ut`, …) are ignored. Errors
//! count records from 0.
//!
//! # Body: FHIR
//!
//! A JSON object is a FHIR R4 Observation, or a Bundle whose every entry's `resource` is
//! one. An Observation needs:
//!
//! - `status` `final`, `amended`, `corrected` or `preliminary`;
//! - a `code.coding` with system `http://loinc.org` and a vital's LOINC code, or system
//!   `urn:iso:std:iso:11073:10101` and its MDC reference id (`MDC_PULS_OXIM_SAT_O2`, not
//!   the numeric 150456);
//! - a `valueQuantity`, whose unit is its `code` when its `system` is
//!   `http://unitsofmeasure.org` (UCUM), else its `unit`;
//! - `effectiveDateTime`, `effectiveInstant` or `effectivePeriod.start`, an RFC 3339
//!   date-time with time zone.
//!
//! A blood-pressure panel (LOINC 85354-9) gives one reading per `component` of a known
//! kind (systolic, 8480-6); its other components, such as diastolic, are skipped. Other
//! Observation fields are ignored.
//!
//! Decoding checks form only. Whether a reading's unit fits its kind, its value is
//! plausible and its time sensible is [`crate::vitals::check`]'s to say.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::vitals::{RawReading, VitalKind};

/// The largest message accepted, in bytes; larger ones are refused before parsing.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The most readings one message may carry.
pub const MAX_READINGS: usize = 4096;

/// The longest signature accepted, in bytes once decoded.
pub const MAX_SIGNATURE_BYTES: usize = 2048;

/// The longest `firmware` accepted, in characters.
pub const MAX_FIRMWARE_CHARS: usize = 64;

/// What every signed message starts with, so that a device key's signature over a
/// message cannot be taken for a signature over anything else.
const SIGNING_CONTEXT: &[u8] = b"medmesh/device-message/v1\0";

/// A device message's envelope, parsed: the body not yet decoded, the signature not yet
/// verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The message counter: 1 or more, growing with every message of the device.
    pub counter: u64,
    /// The body exactly as sent: what [`signed_bytes`] puts under the signature and
    /// [`decode_body`] reads.
    pub body: &'a [u8],
    /// The signature, decoded from base64.
    pub signature: Vec<u8>,
    /// The firmware version the device reports, if it does (signed).
    pub firmware: Option<String>,
    /// Whether the device asks for an acknowledgement (signed).
    pub wants_ack: bool,
}

/// Parses a message's envelope. The body is returned as the bytes sent, not decoded.
pub fn parse_envelope(bytes: &[u8]) -> Result<Envelope<'_>, MessageError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge {
            size: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    // serde would also read a JSON array as the fields in order; the envelope is an object.
    if first_byte(bytes) != Some(b'{') {
        return Err(MessageError::Envelope(
            "the message is not a JSON object".to_owned(),
        ));
    }
    let wire: WireEnvelope<'_> =
        serde_json::from_slice(bytes).map_err(|e| MessageError::Envelope(e.to_string()))?;
    if wire.counter == 0 {
        return Err(MessageError::BadCounter);
    }
    let signature =
        BASE64
            .decode(wire.sig.as_bytes())
            .map_err(|e| MessageError::BadSignatureEncoding {
                reason: format!("is not standard base64 with padding (RFC 4648 §4): {e}"),
            })?;
    if !(1..=MAX_SIGNATURE_BYTES).contains(&signature.len()) {
        return Err(MessageError::BadSignatureEncoding {
            reason: format!(
                "decodes to {} bytes; a signature is 1 to {MAX_SIGNATURE_BYTES} bytes",
                signature.len()
            ),
        });
    }
    if let Some(firmware) = &wire.firmware {
        let printable = firmware.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
        let valid = printable && (1..=MAX_FIRMWARE_CHARS).contains(&firmware.len());
        if !valid {
            return Err(MessageError::BadFirmware);
        }
    }
    Ok(Envelope {
        counter: wire.counter,
        body: wire.body.get().as_bytes(),
        signature,
        firmware: wire.firmware,
        wants_ack: wire.ack,
    })
}

/// The bytes a device signs and the node verifies: `medmesh/device-message/v1` and a zero
/// byte, the device id and a zero byte, the counter (8 bytes, big-endian), the `ack`
/// flag (one byte, 0 or 1), the firmware version's length (one byte, 0 without one) and
/// its bytes, then the body.
///
/// The zero byte ends the device id unambiguously because device ids never contain one
/// (MQTT strings may not).
pub fn signed_bytes(
    device: &str,
    counter: u64,
    firmware: Option<&str>,
    wants_ack: bool,
    body: &[u8],
) -> Vec<u8> {
    let firmware = firmware.unwrap_or_default().as_bytes();
    let mut bytes = Vec::with_capacity(
        SIGNING_CONTEXT.len() + device.len() + 1 + 8 + 2 + firmware.len() + body.len(),
    );
    bytes.extend_from_slice(SIGNING_CONTEXT);
    bytes.extend_from_slice(device.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&counter.to_be_bytes());
    bytes.push(u8::from(wants_ack));
    // Firmware versions are at most MAX_FIRMWARE_CHARS (64) bytes.
    bytes.push(firmware.len().min(255) as u8);
    bytes.extend_from_slice(&firmware[..firmware.len().min(255)]);
    bytes.extend_from_slice(body);
    bytes
}

impl Envelope<'_> {
    /// The bytes this message's signature must cover, as `device` sent it.
    pub fn signed_bytes(&self, device: &str) -> Vec<u8> {
        signed_bytes(
            device,
            self.counter,
            self.firmware.as_deref(),
            self.wants_ack,
            self.body,
        )
    }
}

/// A message's JSON text, for device simulators and tests. `body` is inserted verbatim,
/// so it is what [`parse_envelope`] gives back as the body, and what must be signed. It
/// must be one JSON value without whitespace around it (that whitespace would not be
/// part of the body the node reads); it is not checked here.
pub fn encode_envelope(
    counter: u64,
    body: &str,
    signature: &[u8],
    firmware: Option<&str>,
    wants_ack: bool,
) -> String {
    let sig = BASE64.encode(signature);
    // A JSON string value writes the firmware with its quotes and escapes.
    let firmware = firmware
        .map(|firmware| format!(",\"firmware\":{}", serde_json::Value::from(firmware)))
        .unwrap_or_default();
    let ack = if wants_ack { ",\"ack\":true" } else { "" };
    format!("{{\"counter\":{counter},\"body\":{body},\"sig\":\"{sig}\"{firmware}{ack}}}")
}

/// Decodes a message body, a SenML pack or a FHIR Observation or Bundle, into readings.
/// SenML times below 2^28 are relative to `now`, and a record without a time is at
/// `now`.
pub fn decode_body(body: &[u8], now: OffsetDateTime) -> Result<Vec<RawReading>, MessageError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge {
            size: body.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    match first_byte(body) {
        Some(b'[') => decode_senml(body, now),
        Some(b'{') => decode_fhir(body),
        _ => Err(MessageError::Body(
            "not a SenML pack (a JSON array) nor a FHIR Observation or Bundle (a JSON object)"
                .to_owned(),
        )),
    }
}

/// Why a device message was refused: said to the device on its error topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    /// The message or body is larger than [`MAX_MESSAGE_BYTES`].
    #[error(
        "the message is {size} bytes, over the {max}-byte limit; send fewer readings per message"
    )]
    TooLarge {
        /// Its size, bytes.
        size: usize,
        /// The largest accepted, bytes.
        max: usize,
    },
    /// The envelope is not the JSON object expected (serde_json's words, with where).
    #[error("bad envelope: {0}; send {{\"counter\": …, \"body\": …, \"sig\": \"…\"}}, optionally with \"firmware\" and \"ack\"")]
    Envelope(String),
    /// `sig` is not base64 or not of a signature's length.
    #[error("`sig` {reason}")]
    BadSignatureEncoding {
        /// What is wrong with it.
        reason: String,
    },
    /// `counter` is 0.
    #[error("`counter` is 0; counters start at 1 and grow with every message")]
    BadCounter,
    /// `firmware` is empty, too long or not printable ASCII.
    #[error("`firmware` must be 1 to {max} printable ASCII characters", max = MAX_FIRMWARE_CHARS)]
    BadFirmware,
    /// The body is not JSON, or neither an array nor an object.
    #[error("bad body: {0}")]
    Body(String),
    /// A SenML record is malformed or not a numeric reading.
    #[error("SenML record {index}: {reason}")]
    SenmlRecord {
        /// The record's index in the pack, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A SenML record's name names no vital sign the node knows.
    #[error("SenML record {index}: `{name}` names no vital sign this node knows; end the name (after its last `/` or `:`) with one of {known}, or a kind's LOINC code or MDC id", known = known_kinds())]
    UnknownKind {
        /// The record's index in the pack, from 0.
        index: usize,
        /// Its resolved name (`bn` + `n`), shortened if long.
        name: String,
    },
    /// A SenML record has no unit, nor a base unit before it.
    #[error("SenML record {index} has no unit; set `u` in it, or `bu` in it or an earlier record")]
    MissingUnit {
        /// The record's index in the pack, from 0.
        index: usize,
    },
    /// A FHIR resource is not an Observation (or a Bundle of them) the node can read.
    #[error("FHIR: {reason}")]
    Fhir {
        /// What is wrong, and where.
        reason: String,
    },
    /// The body carries more than [`MAX_READINGS`] readings.
    #[error("the body carries more than {max} readings; split them over several messages")]
    TooManyReadings {
        /// The most accepted.
        max: usize,
    },
    /// The body carries no reading.
    #[error("the body carries no readings; send at least one SenML record with a value, or one Observation")]
    Empty,
}

impl MessageError {
    /// A stable short code for the error, for devices to act on without parsing the text.
    pub fn code(&self) -> &'static str {
        match self {
            MessageError::TooLarge { .. } => "too-large",
            MessageError::Envelope(_) => "bad-envelope",
            MessageError::BadSignatureEncoding { .. } => "bad-signature-encoding",
            MessageError::BadCounter => "bad-counter",
            MessageError::BadFirmware => "bad-firmware",
            MessageError::Body(_) => "bad-body",
            MessageError::SenmlRecord { .. } => "bad-senml",
            MessageError::UnknownKind { .. } => "unknown-kind",
            MessageError::MissingUnit { .. } => "missing-unit",
            MessageError::Fhir { .. } => "bad-fhir",
            MessageError::TooManyReadings { .. } => "too-many-readings",
            MessageError::Empty => "empty",
        }
    }
}

/// The envelope as sent. The body stays borrowed, so its bytes are the ones signed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope<'a> {
    counter: u64,
    #[serde(borrow)]
    body: &'a RawValue,
    sig: String,
    firmware: Option<String>,
    #[serde(default)]
    ack: bool,
}

// ---- SenML (RFC 8428) ----

/// SenML times at or above this (2^28 s, in 1978) are seconds since the Unix epoch;
/// below it, seconds relative to now (RFC 8428).
const SENML_ABSOLUTE_FROM: f64 = 268_435_456.0;

/// The subset of a SenML record the node reads.
#[derive(Deserialize)]
#[serde(expecting = "a SenML record (a JSON object)")]
struct SenmlRecord {
    bn: Option<String>,
    bt: Option<f64>,
    bu: Option<String>,
    bv: Option<f64>,
    n: Option<String>,
    u: Option<String>,
    v: Option<f64>,
    t: Option<f64>,
    s: Option<IgnoredAny>,
    vs: Option<IgnoredAny>,
    vb: Option<IgnoredAny>,
    vd: Option<IgnoredAny>,
    /// Every other field: ignored, unless it is a must-understand one.
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// The base fields in force, carried from record to record.
#[derive(Default)]
struct SenmlBase {
    name: String,
    time: f64,
    unit: Option<String>,
    value: f64,
}

fn decode_senml(body: &[u8], now: OffsetDateTime) -> Result<Vec<RawReading>, MessageError> {
    // Each record is kept as its text first, so a record's error can name its index.
    let records: Vec<&RawValue> = serde_json::from_slice(body)
        .map_err(|e| MessageError::Body(format!("invalid JSON: {e}")))?;
    let mut base = SenmlBase::default();
    let mut readings = Vec::new();
    for (index, record) in records.into_iter().enumerate() {
        let record: SenmlRecord =
            serde_json::from_str(record.get()).map_err(|e| MessageError::SenmlRecord {
                index,
                reason: without_position(&e),
            })?;
        if let Some(reading) = resolve_senml(index, record, &mut base, now)? {
            push_reading(&mut readings, reading)?;
        }
    }
    if readings.is_empty() {
        return Err(MessageError::Empty);
    }
    Ok(readings)
}

/// The reading a record resolves to (RFC 8428 §4.6), or `None` for a record of base
/// fields only. Updates `base` with the record's base fields.
fn resolve_senml(
    index: usize,
    record: SenmlRecord,
    base: &mut SenmlBase,
    now: OffsetDateTime,
) -> Result<Option<RawReading>, MessageError> {
    let refuse = move |reason: String| MessageError::SenmlRecord { index, reason };
    if let Some(label) = record.other.keys().find(|label| label.ends_with('_')) {
        return Err(refuse(format!(
            "`{}` ends in `_`, so RFC 8428 requires understanding it, and this node does not; leave it out",
            shown(label)
        )));
    }
    let non_numeric = [
        (record.vs.is_some(), "vs", "string"),
        (record.vb.is_some(), "vb", "boolean"),
        (record.vd.is_some(), "vd", "data"),
    ];
    if let Some((_, field, what)) = non_numeric.into_iter().find(|(present, ..)| *present) {
        return Err(refuse(format!(
            "`{field}` ({what} value) is not a vital sign; send numeric `v`"
        )));
    }

    if let Some(name) = record.bn {
        base.name = name;
    }
    if let Some(time) = record.bt {
        base.time = time;
    }
    if let Some(unit) = record.bu {
        base.unit = Some(unit);
    }
    if let Some(value) = record.bv {
        base.value = value;
    }

    let Some(value) = record.v else {
        if record.s.is_some() {
            return Err(refuse(
                "`s` (sum) is not a vital sign; send numeric `v`".to_owned(),
            ));
        }
        if let Some(name) = &record.n {
            return Err(refuse(format!(
                "`{}` has no value; send numeric `v`",
                shown(name)
            )));
        }
        return Ok(None);
    };
    let name = format!("{}{}", base.name, record.n.as_deref().unwrap_or(""));
    if name.is_empty() {
        return Err(refuse(
            "has no name; set `n`, or `bn` in it or an earlier record".to_owned(),
        ));
    }
    let kind = senml_kind(&name).ok_or_else(|| MessageError::UnknownKind {
        index,
        name: shown(&name),
    })?;
    let unit = record
        .u
        .or_else(|| base.unit.clone())
        .ok_or(MessageError::MissingUnit { index })?;
    let time = senml_time(base.time + record.t.unwrap_or(0.0), now).map_err(refuse)?;
    Ok(Some(RawReading {
        kind,
        value: base.value + value,
        unit,
        time,
    }))
}

/// The kind a resolved SenML name denotes: the whole name, or else its last `/` part, or
/// else its last `:` part, as a kind name, LOINC code or MDC id.
fn senml_kind(name: &str) -> Option<VitalKind> {
    let after = |separator: char| {
        name.rsplit_once(separator)
            .and_then(|(_, last)| VitalKind::from_code(last))
    };
    VitalKind::from_code(name)
        .or_else(|| after('/'))
        .or_else(|| after(':'))
}

/// A resolved SenML time (`bt` + `t`, seconds) as a time, to the microsecond: absolute
/// from 2^28 on, relative to `now` below.
fn senml_time(seconds: f64, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if !seconds.is_finite() {
        return Err("the time (`bt` + `t`) is not a finite number of seconds".to_owned());
    }
    // A double holds about 16 significant digits: a Unix time in seconds keeps its
    // microseconds, not its nanoseconds. Whole seconds and microseconds are converted
    // apart, so a time sent to the microsecond comes back exactly. The casts saturate: a
    // time far out of range stays out of range and is refused below.
    let whole = seconds.trunc();
    let micros = ((seconds - whole) * 1e6).round() as i128;
    let nanos = (whole as i128)
        .saturating_mul(1_000_000_000)
        .saturating_add(micros * 1000);
    let nanos = if seconds < SENML_ABSOLUTE_FROM {
        now.unix_timestamp_nanos().saturating_add(nanos)
    } else {
        nanos
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| {
        "the time (`bt` + `t`) is out of range; send seconds since 1970-01-01T00:00:00Z, \
         or seconds relative to now (below 2^28)"
            .to_owned()
    })
}

// ---- FHIR R4 ----

const LOINC: &str = "http://loinc.org";
const MDC: &str = "urn:iso:std:iso:11073:10101";
const UCUM: &str = "http://unitsofmeasure.org";
/// LOINC's blood pressure panel: its readings are in its components.
const BP_PANEL: &str = "85354-9";
/// How many codings an error lists at most.
const SHOWN_CODINGS: usize = 8;

/// Just enough of any resource to tell what it is.
#[derive(Deserialize)]
struct FhirHead {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
}

#[derive(Deserialize)]
struct Bundle<'a> {
    #[serde(borrow, default)]
    entry: Vec<BundleEntry<'a>>,
}

/// An entry's resource stays text until it is known to be an Observation: another
/// resource's fields need not fit the Observation's.
#[derive(Deserialize)]
struct BundleEntry<'a> {
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
}

/// The subset of an Observation the node reads; FHIR resources carry many more fields,
/// all ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Observation {
    status: Option<String>,
    code: Option<CodeableConcept>,
    value_quantity: Option<Quantity>,
    effective_date_time: Option<String>,
    effective_instant: Option<String>,
    effective_period: Option<Period>,
    #[serde(default)]
    component: Vec<Component>,
}

#[derive(Deserialize)]
struct CodeableConcept {
    #[serde(default)]
    coding: Vec<Coding>,
}

#[derive(Deserialize)]
struct Coding {
    system: Option<String>,
    code: Option<String>,
}

impl Coding {
    /// The kind this coding denotes: a LOINC code under LOINC's system, an MDC reference
    /// id under MDC's.
    fn kind(&self) -> Option<VitalKind> {
        let code = self.code.as_deref()?;
        let kind = VitalKind::from_code(code)?;
        let in_its_system = match self.system.as_deref()? {
            LOINC => kind.loinc() == code,
            MDC => kind.mdc() == code,
            _ => false,
        };
        in_its_system.then_some(kind)
    }

    fn is(&self, system: &str, code: &str) -> bool {
        self.system.as_deref() == Some(system) && self.code.as_deref() == Some(code)
    }
}

#[derive(Deserialize)]
struct Quantity {
    value: Option<f64>,
    unit: Option<String>,
    system: Option<String>,
    code: Option<String>,
}

#[derive(Deserialize)]
struct Period {
    start: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Component {
    code: Option<CodeableConcept>,
    value_quantity: Option<Quantity>,
}

fn decode_fhir(body: &[u8]) -> Result<Vec<RawReading>, MessageError> {
    let fhir = |reason: String| MessageError::Fhir { reason };
    let head: FhirHead = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            fhir(e.to_string())
        } else {
            MessageError::Body(format!("invalid JSON: {e}"))
        }
    })?;
    let mut readings = Vec::new();
    match head.resource_type.as_deref() {
        Some("Observation") => {
            let observation: Observation =
                serde_json::from_slice(body).map_err(|e| fhir(e.to_string()))?;
            for reading in observation_readings(observation).map_err(fhir)? {
                push_reading(&mut readings, reading)?;
            }
        }
        Some("Bundle") => {
            let bundle: Bundle<'_> =
                serde_json::from_slice(body).map_err(|e| fhir(e.to_string()))?;
            for (index, entry) in bundle.entry.into_iter().enumerate() {
                let in_entry = move |reason: String| MessageError::Fhir {
                    reason: format!("Bundle entry {index}: {reason}"),
                };
                let resource = entry
                    .resource
                    .ok_or_else(|| in_entry("has no `resource`".to_owned()))?;
                let head: FhirHead = serde_json::from_str(resource.get())
                    .map_err(|e| in_entry(without_position(&e)))?;
                match head.resource_type.as_deref() {
                    Some("Observation") => {}
                    Some(other) => {
                        return Err(in_entry(format!(
                            "`resource` is a {}, not an Observation",
                            shown(other)
                        )))
                    }
                    None => return Err(in_entry("`resource` has no `resourceType`".to_owned())),
                }
                let observation: Observation = serde_json::from_str(resource.get())
                    .map_err(|e| in_entry(without_position(&e)))?;
                for reading in observation_readings(observation).map_err(in_entry)? {
                    push_reading(&mut readings, reading)?;
                }
            }
        }
        Some(other) => {
            return Err(fhir(format!(
                "`resourceType` is `{}`; send an Observation or a Bundle of Observations",
                shown(other)
            )))
        }
        None => {
            return Err(fhir(
                "the object has no `resourceType`; send an Observation or a Bundle of Observations"
                    .to_owned(),
            ))
        }
    }
    if readings.is_empty() {
        return Err(MessageError::Empty);
    }
    Ok(readings)
}

/// The readings of one Observation: one, or one per known component of a blood pressure
/// panel. Errors are reasons, placed by the caller.
fn observation_readings(observation: Observation) -> Result<Vec<RawReading>, String> {
    match observation.status.as_deref() {
        Some("final" | "amended" | "corrected" | "preliminary") => {}
        Some(status) => {
            return Err(format!(
                "Observation `status` is `{}`; only final, amended, corrected or preliminary Observations carry a measurement",
                shown(status)
            ))
        }
        None => {
            return Err(
                "Observation has no `status`; send final, amended, corrected or preliminary"
                    .to_owned(),
            )
        }
    }
    let time = effective_time(&observation)?;
    let codings = observation.code.map(|c| c.coding).unwrap_or_default();

    if codings.iter().any(|c| c.is(LOINC, BP_PANEL)) {
        let mut readings = Vec::new();
        let mut unknown = Vec::new();
        for (index, component) in observation.component.into_iter().enumerate() {
            let component_codings = component.code.map(|c| c.coding).unwrap_or_default();
            let kind = component_codings.iter().find_map(Coding::kind);
            let Some(kind) = kind else {
                // A panel's other parts (diastolic, mean pressure) are no kind the node keeps.
                unknown.extend(component_codings);
                continue;
            };
            let (value, unit) = value_and_unit(component.value_quantity)
                .map_err(|reason| format!("blood pressure panel component {index}: {reason}"))?;
            readings.push(RawReading {
                kind,
                value,
                unit,
                time,
            });
        }
        if readings.is_empty() {
            return Err(format!(
                "blood pressure panel (LOINC {BP_PANEL}) has no component this node knows \
                 (seen: {}); code the systolic component LOINC {}",
                codes_seen(&unknown),
                VitalKind::SystolicBp.loinc()
            ));
        }
        return Ok(readings);
    }

    let kind = codings.iter().find_map(Coding::kind).ok_or_else(|| {
        format!(
            "no coding in `code` names a vital sign this node knows (seen: {}); code it \
             with a LOINC code (system {LOINC}) or an MDC reference id (system {MDC})",
            codes_seen(&codings)
        )
    })?;
    let (value, unit) = value_and_unit(observation.value_quantity)?;
    Ok(vec![RawReading {
        kind,
        value,
        unit,
        time,
    }])
}

/// When an Observation was measured: `effectiveDateTime`, `effectiveInstant` or
/// `effectivePeriod.start`, the first present.
fn effective_time(observation: &Observation) -> Result<OffsetDateTime, String> {
    let start = observation
        .effective_period
        .as_ref()
        .and_then(|period| period.start.as_ref());
    let (field, text) = if let Some(text) = &observation.effective_date_time {
        ("effectiveDateTime", text)
    } else if let Some(text) = &observation.effective_instant {
        ("effectiveInstant", text)
    } else if let Some(text) = start {
        ("effectivePeriod.start", text)
    } else {
        return Err(
            "Observation has no `effectiveDateTime`, `effectiveInstant` or \
             `effectivePeriod.start`; say when it was measured"
                .to_owned(),
        );
    };
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        format!(
            "`{field}` `{}` is not a date-time with time zone as RFC 3339 writes it \
             (e.g. 2024-05-01T12:00:00Z): {e}",
            shown(text)
        )
    })
}

/// A `valueQuantity`'s value and unit: the UCUM code if it gives one, else `unit`.
fn value_and_unit(quantity: Option<Quantity>) -> Result<(f64, String), String> {
    let quantity = quantity.ok_or(
        "no `valueQuantity`; send the measurement as valueQuantity (value, unit, system, code)",
    )?;
    let value = quantity.value.ok_or("`valueQuantity` has no `value`")?;
    let unit = match (quantity.system.as_deref(), quantity.code) {
        (Some(UCUM), Some(code)) => code,
        _ => quantity.unit.ok_or(
            "`valueQuantity` has no unit; send the UCUM `code` with `system` http://unitsofmeasure.org",
        )?,
    };
    Ok((value, unit))
}

/// Codings as `system|code` (FHIR's token notation), the first few.
fn codes_seen(codings: &[Coding]) -> String {
    if codings.is_empty() {
        return "none".to_owned();
    }
    let mut seen: Vec<String> = codings
        .iter()
        .take(SHOWN_CODINGS)
        .map(|coding| {
            format!(
                "{}|{}",
                shown(coding.system.as_deref().unwrap_or("")),
                shown(coding.code.as_deref().unwrap_or(""))
            )
        })
        .collect();
    if codings.len() > SHOWN_CODINGS {
        seen.push(format!("and {} more", codings.len() - SHOWN_CODINGS));
    }
    seen.join(", ")
}

// ---- Shared ----

/// How much of a text sent an error message repeats.
const SHOWN_CHARS: usize = 80;

fn push_reading(readings: &mut Vec<RawReading>, reading: RawReading) -> Result<(), MessageError> {
    if readings.len() >= MAX_READINGS {
        return Err(MessageError::TooManyReadings { max: MAX_READINGS });
    }
    readings.push(reading);
    Ok(())
}

/// The first byte that is not JSON whitespace.
fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes
        .iter()
        .copied()
        .find(|&b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// A serde_json error's message without its line and column: those count from the start
/// of a part (a SenML record, a Bundle entry's resource), not of the body, and would
/// mislead.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(position.as_str()) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

/// `text` cut to [`SHOWN_CHARS`] characters, for repeating it in an error message.
fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The kind names, for an error message.
fn known_kinds() -> String {
    VitalKind::ALL.map(VitalKind::name).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    /// When the tests decode: SenML relative times count from here.
    fn now() -> OffsetDateTime {
        at(1000)
    }

    fn reading(kind: VitalKind, value: f64, unit: &str, time: OffsetDateTime) -> RawReading {
        RawReading {
            kind,
            value,
            unit: unit.into(),
            time,
        }
    }

    fn decode(body: &str) -> Result<Vec<RawReading>, MessageError> {
        decode_body(body.as_bytes(), now())
    }

    fn with_sig(sig: &str) -> String {
        format!(r#"{{"counter":1,"body":[],"sig":"{sig}"}}"#)
    }

    // ---- Envelope ----

    #[test]
    fn envelope_round_trips_with_the_body_bytes_exact() {
        let body = "[ {\"n\": \"heart-rate\",\n  \"u\": \"/min\", \"v\": 72} ]";
        let firmware = "2.3.1 \"beta\"";
        let text = encode_envelope(42, body, &[7; 64], Some(firmware), true);
        let envelope = parse_envelope(text.as_bytes()).unwrap();
        assert_eq!(
            envelope,
            Envelope {
                counter: 42,
                body: body.as_bytes(),
                signature: vec![7; 64],
                firmware: Some(firmware.into()),
                wants_ack: true,
            }
        );
        assert_eq!(
            decode_body(envelope.body, now()).unwrap(),
            vec![reading(VitalKind::HeartRate, 72.0, "/min", now())]
        );

        let plain = encode_envelope(1, "{}", &[1], None, false);
        assert_eq!(plain, r#"{"counter":1,"body":{},"sig":"AQ=="}"#);
        let envelope = parse_envelope(plain.as_bytes()).unwrap();
        assert_eq!(envelope.body, b"{}");
        assert_eq!(envelope.firmware, None);
        assert!(!envelope.wants_ack);
    }

    #[test]
    fn the_body_is_its_bytes_as_sent_without_the_whitespace_around_it() {
        let text = "{ \"sig\" : \"AQ==\",\n \"body\" :  [ {\"v\" :1},\t{} ]  , \"counter\": 7 }\n";
        let envelope = parse_envelope(text.as_bytes()).unwrap();
        assert_eq!(envelope.body, b"[ {\"v\" :1},\t{} ]");
        assert_eq!(envelope.counter, 7);
    }

    #[test]
    fn unknown_or_repeated_envelope_fields_are_refused() {
        let err =
            parse_envelope(br#"{"counter":1,"body":[],"sig":"AQ==","extra":true}"#).unwrap_err();
        assert!(
            matches!(&err, MessageError::Envelope(m) if m.contains("unknown field `extra`")),
            "{err}"
        );
        assert_eq!(err.code(), "bad-envelope");
        let err =
            parse_envelope(br#"{"counter":1,"counter":2,"body":[],"sig":"AQ=="}"#).unwrap_err();
        assert!(
            matches!(&err, MessageError::Envelope(m) if m.contains("duplicate field `counter`")),
            "{err}"
        );
    }

    #[test]
    fn an_envelope_must_be_an_object_with_its_required_fields() {
        assert!(matches!(
            parse_envelope(br#"[1, [], "AQ=="]"#),
            Err(MessageError::Envelope(_))
        ));
        let err = parse_envelope(br#"{"counter":1,"body":[]}"#).unwrap_err();
        assert!(
            matches!(&err, MessageError::Envelope(m) if m.contains("missing field `sig`")),
            "{err}"
        );
        assert!(matches!(
            parse_envelope(br#"{"counter":1,"body":[,"sig":"AQ=="}"#),
            Err(MessageError::Envelope(_))
        ));
    }

    #[test]
    fn counter_zero_or_negative_is_refused() {
        let text = encode_envelope(0, "[]", &[1], None, false);
        assert_eq!(
            parse_envelope(text.as_bytes()),
            Err(MessageError::BadCounter)
        );
        assert!(matches!(
            parse_envelope(br#"{"counter":-1,"body":[],"sig":"AQ=="}"#),
            Err(MessageError::Envelope(_))
        ));
    }

    #[test]
    fn bad_base64_or_signature_length_is_refused() {
        let too_long = BASE64.encode([0u8; MAX_SIGNATURE_BYTES + 1]);
        for sig in ["not base64!", "AQ", "AQ=", "", too_long.as_str()] {
            let err = parse_envelope(with_sig(sig).as_bytes()).unwrap_err();
            assert!(
                matches!(err, MessageError::BadSignatureEncoding { .. }),
                "{sig}: {err}"
            );
            assert_eq!(err.code(), "bad-signature-encoding");
        }
        let longest = BASE64.encode([0u8; MAX_SIGNATURE_BYTES]);
        let text = with_sig(&longest);
        let envelope = parse_envelope(text.as_bytes()).unwrap();
        assert_eq!(envelope.signature.len(), MAX_SIGNATURE_BYTES);
    }

    #[test]
    fn bad_firmware_is_refused() {
        let too_long = "x".repeat(MAX_FIRMWARE_CHARS + 1);
        for firmware in ["", too_long.as_str(), "2.3\n1", "2.3.1-β"] {
            let text = encode_envelope(1, "[]", &[1], Some(firmware), false);
            assert_eq!(
                parse_envelope(text.as_bytes()),
                Err(MessageError::BadFirmware),
                "{firmware:?}"
            );
        }
        let longest = "x".repeat(MAX_FIRMWARE_CHARS);
        let text = encode_envelope(1, "[]", &[1], Some(longest.as_str()), false);
        assert_eq!(
            parse_envelope(text.as_bytes()).unwrap().firmware,
            Some(longest)
        );
    }

    #[test]
    fn oversize_messages_are_refused_before_parsing() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            parse_envelope(&big),
            Err(MessageError::TooLarge {
                size: MAX_MESSAGE_BYTES + 1,
                max: MAX_MESSAGE_BYTES
            })
        );
        assert!(matches!(
            decode_body(&big, now()),
            Err(MessageError::TooLarge { .. })
        ));
        // At the limit it is parsed (and found to be no object).
        assert!(matches!(
            parse_envelope(&big[1..]),
            Err(MessageError::Envelope(_))
        ));
    }

    #[test]
    fn signed_bytes_bind_the_device_and_the_counter() {
        let bytes = signed_bytes("dev-1", 42, None, false, b"[]");
        let mut expected = b"medmesh/device-message/v1\0dev-1\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 42]);
        expected.extend_from_slice(&[0, 0]);
        expected.extend_from_slice(b"[]");
        assert_eq!(bytes, expected);
        assert_ne!(signed_bytes("dev-2", 42, None, false, b"[]"), bytes);
        assert_ne!(signed_bytes("dev-1", 43, None, false, b"[]"), bytes);
        assert_ne!(signed_bytes("dev-1", 42, None, false, b"[ ]"), bytes);
        assert_ne!(signed_bytes("dev-1", 42, None, true, b"[]"), bytes);
        assert_ne!(signed_bytes("dev-1", 42, Some("1.0"), false, b"[]"), bytes);
        let with_firmware = signed_bytes("d", 0x0102_0304_0506_0708, Some("v2"), true, b"");
        assert_eq!(
            with_firmware[SIGNING_CONTEXT.len() + 2..],
            [1u8, 2, 3, 4, 5, 6, 7, 8, 1, 2, b'v', b'2']
        );
    }

    // ---- SenML ----

    #[test]
    fn senml_base_fields_resolve_across_records() {
        let pack = r#"[
            {"bn": "urn:dev:mac:0024befffe804ff1/", "bt": 1700000000, "bu": "/min",
             "bver": 10, "n": "heart-rate", "v": 72},
            {"n": "respiration-rate", "t": 10, "v": 16},
            {"n": "spo2", "u": "%", "t": 20, "v": 97},
            {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1700000100, "bu": "Cel",
             "n": "temperature", "v": 36.6},
            {"n": "temperature", "t": -30, "v": 36.8}
        ]"#;
        assert_eq!(
            decode(pack).unwrap(),
            vec![
                reading(VitalKind::HeartRate, 72.0, "/min", at(0)),
                reading(VitalKind::RespirationRate, 16.0, "/min", at(10)),
                reading(VitalKind::Spo2, 97.0, "%", at(20)),
                reading(VitalKind::Temperature, 36.6, "Cel", at(100)),
                reading(VitalKind::Temperature, 36.8, "Cel", at(70)),
            ]
        );
    }

    #[test]
    fn senml_times_below_2_pow_28_count_from_now() {
        let pack = r#"[
            {"n": "heart-rate", "u": "/min", "v": 70, "t": -5},
            {"n": "heart-rate", "u": "/min", "v": 71},
            {"bt": -10, "n": "heart-rate", "u": "/min", "v": 72, "t": 2},
            {"bt": 1700000000.5, "n": "heart-rate", "u": "/min", "v": 73}
        ]"#;
        let times: Vec<OffsetDateTime> = decode(pack).unwrap().iter().map(|r| r.time).collect();
        assert_eq!(
            times,
            vec![
                now() - Duration::seconds(5),
                now(),
                now() - Duration::seconds(8),
                at(0) + Duration::milliseconds(500),
            ]
        );
    }

    #[test]
    fn senml_base_value_adds_to_value() {
        let pack = r#"[{"bn": "spo2", "bu": "%", "bv": 90, "v": 7}, {"v": 8}, {"bv": 0, "v": 99}]"#;
        let values: Vec<f64> = decode(pack).unwrap().iter().map(|r| r.value).collect();
        assert_eq!(values, vec![97.0, 98.0, 99.0]);
    }

    #[test]
    fn senml_records_of_base_fields_only_are_skipped() {
        let pack = r#"[{"bn": "urn:dev:mac:1/", "bt": 1700000000, "bu": "/min"},
                       {"n": "heart-rate", "v": 60}]"#;
        assert_eq!(
            decode(pack).unwrap(),
            vec![reading(VitalKind::HeartRate, 60.0, "/min", at(0))]
        );
    }

    #[test]
    fn senml_kind_is_read_from_the_name_or_its_last_part() {
        let pack = r#"[
            {"n": "urn:dev:mac:1/8867-4", "u": "/min", "v": 60},
            {"n": "urn:dev:ow:1:MDC_PULS_OXIM_SAT_O2", "u": "%", "v": 97},
            {"n": "9279-1", "u": "/min", "v": 14}
        ]"#;
        let kinds: Vec<VitalKind> = decode(pack).unwrap().iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            vec![
                VitalKind::HeartRate,
                VitalKind::Spo2,
                VitalKind::RespirationRate
            ]
        );
    }

    #[test]
    fn senml_records_with_a_name_but_no_value_are_refused() {
        let err = decode(r#"[{"n": "heart-rate", "u": "/min"}]"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SenML record 0: `heart-rate` has no value; send numeric `v`"
        );
        let err = decode(r#"[{"n": "heart-rate", "u": "/min", "s": 100}]"#).unwrap_err();
        assert!(
            matches!(&err, MessageError::SenmlRecord { index: 0, reason } if reason.contains("`s` (sum)")),
            "{err}"
        );
    }

    #[test]
    fn senml_string_boolean_and_data_values_are_refused() {
        for (field, value, what) in [
            ("vs", r#""high""#, "string"),
            ("vb", "true", "boolean"),
            ("vd", r#""aGk""#, "data"),
        ] {
            let pack = format!(
                r#"[{{"n": "heart-rate", "u": "/min", "v": 60}}, {{"n": "alarm", "{field}": {value}}}]"#
            );
            let err = decode(&pack).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("SenML record 1: `{field}` ({what} value) is not a vital sign; send numeric `v`")
            );
            assert_eq!(err.code(), "bad-senml");
        }
    }

    #[test]
    fn senml_must_understand_fields_are_refused() {
        let err = decode(r#"[{"n": "heart-rate", "u": "/min", "v": 60, "foo_": 1}]"#).unwrap_err();
        assert!(
            matches!(&err, MessageError::SenmlRecord { index: 0, reason } if reason.contains("`foo_`")),
            "{err}"
        );
    }

    #[test]
    fn senml_other_unknown_fields_are_ignored() {
        let pack = r#"[{"n": "heart-rate", "u": "/min", "v": 60, "ut": 60, "bver": 10,
                        "bs": 0, "vendor": {"x": [1, 2]}}]"#;
        assert_eq!(
            decode(pack).unwrap(),
            vec![reading(VitalKind::HeartRate, 60.0, "/min", now())]
        );
    }

    #[test]
    fn senml_unknown_kinds_are_refused() {
        let pack = r#"[{"n": "heart-rate", "u": "/min", "v": 60},
                       {"n": "urn:dev:mac:1/blood-glucose", "u": "mg/dL", "v": 90}]"#;
        let err = decode(pack).unwrap_err();
        assert_eq!(
            err,
            MessageError::UnknownKind {
                index: 1,
                name: "urn:dev:mac:1/blood-glucose".into()
            }
        );
        let text = err.to_string();
        assert!(text.contains("heart-rate, spo2"), "{text}");
        assert_eq!(err.code(), "unknown-kind");
    }

    #[test]
    fn senml_records_without_unit_are_refused() {
        // `u` is the record's own; only `bu` carries on.
        let pack = r#"[{"n": "heart-rate", "u": "/min", "v": 60}, {"n": "heart-rate", "v": 61}]"#;
        assert_eq!(decode(pack), Err(MessageError::MissingUnit { index: 1 }));
    }

    #[test]
    fn senml_times_not_finite_or_out_of_range_are_refused() {
        for time in [
            r#""bt": 1e308, "t": 1e308"#,
            r#""t": 1e300"#,
            r#""t": -1e300"#,
            r#""t": 1e17"#,
        ] {
            let pack = format!(r#"[{{"n": "heart-rate", "u": "/min", "v": 60, {time}}}]"#);
            let err = decode(&pack).unwrap_err();
            assert!(
                matches!(&err, MessageError::SenmlRecord { index: 0, reason } if reason.contains("time")),
                "{time}: {err}"
            );
        }
    }

    #[test]
    fn senml_fields_of_the_wrong_type_are_refused_naming_the_record() {
        let err = decode(r#"[{"n": "heart-rate", "u": "/min", "v": "72"}]"#).unwrap_err();
        let MessageError::SenmlRecord { index: 0, reason } = &err else {
            panic!("{err:?}");
        };
        assert!(reason.contains("invalid type"), "{reason}");
        assert!(!reason.contains(" at line "), "{reason}");
        let err = decode(r#"[{"n": "heart-rate", "u": "/min", "v": 60}, 5]"#).unwrap_err();
        assert!(
            matches!(&err, MessageError::SenmlRecord { index: 1, reason } if reason.contains("a SenML record (a JSON object)")),
            "{err}"
        );
    }

    #[test]
    fn empty_packs_are_refused() {
        for pack in ["[]", "  [ ]\n", r#"[{"bn": "heart-rate", "bu": "/min"}]"#] {
            assert_eq!(decode(pack), Err(MessageError::Empty), "{pack}");
        }
    }

    #[test]
    fn too_many_readings_are_refused() {
        let pack = |records: usize| {
            let mut pack = String::from(r#"[{"bn": "heart-rate", "bu": "/min", "v": 60}"#);
            for _ in 1..records {
                pack.push_str(r#",{"v":60}"#);
            }
            pack.push(']');
            pack
        };
        assert_eq!(decode(&pack(MAX_READINGS)).unwrap().len(), MAX_READINGS);
        let err = decode(&pack(MAX_READINGS + 1)).unwrap_err();
        assert_eq!(err, MessageError::TooManyReadings { max: MAX_READINGS });
        assert_eq!(err.code(), "too-many-readings");
    }

    #[test]
    fn bodies_that_are_not_json_arrays_or_objects_are_refused() {
        for body in [
            r#"[{"n": ]"#,
            r#"{"resourceType": "Observation","#,
            r#""72""#,
            "",
            "  ",
        ] {
            let err = decode(body).unwrap_err();
            assert!(matches!(err, MessageError::Body(_)), "{body}: {err}");
            assert_eq!(err.code(), "bad-body");
        }
    }

    // ---- FHIR ----

    const HEART_RATE: &str = r#"{
        "resourceType": "Observation",
        "id": "hr-1",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
                 "text": "Heart rate"},
        "effectiveDateTime": "2023-11-14T22:13:20Z",
        "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org",
                          "code": "/min"},
        "subject": {"reference": "Patient/example"}
    }"#;

    const SPO2_BY_MDC: &str = r#"{
        "resourceType": "Observation",
        "status": "preliminary",
        "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.24", "code": "150456"},
                            {"system": "urn:iso:std:iso:11073:10101", "code": "MDC_PULS_OXIM_SAT_O2"}]},
        "effectiveInstant": "2023-11-14T23:13:25+01:00",
        "valueQuantity": {"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    }"#;

    const TEMPERATURE: &str = r#"{
        "resourceType": "Observation",
        "status": "amended",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
        "effectivePeriod": {"start": "2023-11-14T22:14:20Z", "end": "2023-11-14T22:15:20Z"},
        "valueQuantity": {"value": 37.2, "unit": "Cel"}
    }"#;

    const BP_PANEL_OBSERVATION: &str = r#"{
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
                             "display": "Blood pressure panel"}]},
        "effectiveDateTime": "2023-11-14T22:13:20Z",
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                               "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                               "code": "mm[Hg]"}}
        ]
    }"#;

    fn fhir_reason(body: &str) -> String {
        match decode(body) {
            Err(MessageError::Fhir { reason }) => reason,
            other => panic!("expected a FHIR error, got {other:?}"),
        }
    }

    #[test]
    fn fhir_heart_rate_by_loinc_takes_the_ucum_code_as_unit() {
        assert_eq!(
            decode(HEART_RATE).unwrap(),
            vec![reading(VitalKind::HeartRate, 72.0, "/min", at(0))]
        );
    }

    #[test]
    fn fhir_spo2_by_mdc_coding() {
        assert_eq!(
            decode(SPO2_BY_MDC).unwrap(),
            vec![reading(VitalKind::Spo2, 97.0, "%", at(5))]
        );
    }

    #[test]
    fn fhir_unit_without_ucum_system_is_the_unit_text() {
        assert_eq!(
            decode(TEMPERATURE).unwrap(),
            vec![reading(VitalKind::Temperature, 37.2, "Cel", at(60))]
        );
    }

    #[test]
    fn fhir_statuses_without_a_measurement_are_refused() {
        for status in ["entered-in-error", "cancelled", "registered"] {
            let body = HEART_RATE.replace("\"final\"", &format!("\"{status}\""));
            let reason = fhir_reason(&body);
            assert!(reason.contains(&format!("`{status}`")), "{reason}");
        }
        let reason = fhir_reason(&HEART_RATE.replace("\"status\": \"final\",", ""));
        assert!(reason.contains("no `status`"), "{reason}");
    }

    #[test]
    fn fhir_observations_without_effective_time_are_refused() {
        let body = HEART_RATE.replace("\"effectiveDateTime\": \"2023-11-14T22:13:20Z\",", "");
        assert!(fhir_reason(&body).contains("effectiveDateTime"));
        let body = HEART_RATE.replace("2023-11-14T22:13:20Z", "2023-11-14");
        let reason = fhir_reason(&body);
        assert!(
            reason.contains("`2023-11-14` is not a date-time"),
            "{reason}"
        );
    }

    #[test]
    fn fhir_observations_without_a_known_coding_are_refused_listing_the_codes() {
        let reason = fhir_reason(&HEART_RATE.replace("8867-4", "8462-4"));
        assert!(reason.contains("http://loinc.org|8462-4"), "{reason}");
        // A kind name is no LOINC code.
        let reason = fhir_reason(&HEART_RATE.replace("8867-4", "heart-rate"));
        assert!(reason.contains("http://loinc.org|heart-rate"), "{reason}");
    }

    #[test]
    fn fhir_value_quantity_missing_or_malformed_is_refused() {
        let body = SPO2_BY_MDC.replace("\"valueQuantity\"", "\"valueString\"");
        assert!(fhir_reason(&body).contains("no `valueQuantity`"));
        let reason = fhir_reason(&HEART_RATE.replace("\"value\": 72", "\"value\": \"72\""));
        assert!(reason.contains("invalid type"), "{reason}");
        let reason = fhir_reason(&TEMPERATURE.replace(", \"unit\": \"Cel\"", ""));
        assert!(reason.contains("no unit"), "{reason}");
    }

    #[test]
    fn fhir_bundle_of_two_observations() {
        let bundle = format!(
            r#"{{"resourceType": "Bundle", "type": "collection", "entry": [
                {{"fullUrl": "urn:uuid:1", "resource": {HEART_RATE}}},
                {{"resource": {TEMPERATURE}}}
            ]}}"#
        );
        assert_eq!(
            decode(&bundle).unwrap(),
            vec![
                reading(VitalKind::HeartRate, 72.0, "/min", at(0)),
                reading(VitalKind::Temperature, 37.2, "Cel", at(60)),
            ]
        );
    }

    #[test]
    fn fhir_bundle_with_a_patient_entry_is_refused_naming_the_entry() {
        let bundle = format!(
            r#"{{"resourceType": "Bundle", "entry": [
                {{"resource": {HEART_RATE}}},
                {{"resource": {{"resourceType": "Patient", "id": "p1", "active": true}}}}
            ]}}"#
        );
        let err = decode(&bundle).unwrap_err();
        assert_eq!(
            err.to_string(),
            "FHIR: Bundle entry 1: `resource` is a Patient, not an Observation"
        );
        assert_eq!(err.code(), "bad-fhir");
        let bundle = format!(
            r#"{{"resourceType": "Bundle", "entry": [{{"resource": {}}}]}}"#,
            HEART_RATE.replace("\"final\"", "\"cancelled\"")
        );
        assert!(fhir_reason(&bundle).starts_with("Bundle entry 0: "));
    }

    #[test]
    fn fhir_bundles_without_entries_are_empty() {
        for bundle in [
            r#"{"resourceType": "Bundle", "type": "collection"}"#,
            r#"{"resourceType": "Bundle", "entry": []}"#,
        ] {
            assert_eq!(decode(bundle), Err(MessageError::Empty), "{bundle}");
        }
    }

    #[test]
    fn fhir_resources_other_than_observation_or_bundle_are_refused() {
        assert!(fhir_reason(r#"{"resourceType": "Patient"}"#).contains("`Patient`"));
        assert!(fhir_reason(r#"{"status": "final"}"#).contains("no `resourceType`"));
    }

    #[test]
    fn fhir_blood_pressure_panel_gives_the_systolic_reading() {
        assert_eq!(
            decode(BP_PANEL_OBSERVATION).unwrap(),
            vec![reading(VitalKind::SystolicBp, 120.0, "mm[Hg]", at(0))]
        );
        let reason = fhir_reason(&BP_PANEL_OBSERVATION.replace("8480-6", "8462-4"));
        assert!(reason.contains("85354-9"), "{reason}");
        assert!(reason.contains("http://loinc.org|8462-4"), "{reason}");
    }

    #[test]
    fn error_codes_are_distinct() {
        let errors = [
            MessageError::TooLarge { size: 2, max: 1 },
            MessageError::Envelope(String::new()),
            MessageError::BadSignatureEncoding {
                reason: String::new(),
            },
            MessageError::BadCounter,
            MessageError::BadFirmware,
            MessageError::Body(String::new()),
            MessageError::SenmlRecord {
                index: 0,
                reason: String::new(),
            },
            MessageError::UnknownKind {
                index: 0,
                name: String::new(),
            },
            MessageError::MissingUnit { index: 0 },
            MessageError::Fhir {
                reason: String::new(),
            },
            MessageError::TooManyReadings { max: 1 },
            MessageError::Empty,
        ];
        let codes: std::collections::BTreeSet<&str> =
            errors.iter().map(MessageError::code).collect();
        assert_eq!(codes.len(), errors.len());
        assert_eq!(
            MessageError::BadFirmware.to_string(),
            "`firmware` must be 1 to 64 printable ASCII characters"
        );
    }
}
