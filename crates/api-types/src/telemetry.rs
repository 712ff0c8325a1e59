//! Medical devices, their readings and the alerts raised from them.

use serde::{Deserialize, Serialize};

/// A device to register.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    /// Its id, one MQTT topic level: 1 to 64 letters, digits, `.`, `_`, `-`. It is
    /// visible in topics and on disk: never put a patient identifier in it.
    pub id: String,
    /// The patient it measures.
    pub patient: String,
    /// Its type (e.g. `bedside-monitor`), which alert rules may select.
    #[serde(rename = "type")]
    pub device_type: String,
    /// `falcon-512` (the default) or `ed25519`.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Its public key, hex (897 bytes for Falcon-512, 32 for Ed25519).
    pub public_key: String,
}

/// A registered device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceInfo {
    /// Its id.
    pub id: String,
    /// The patient it measures.
    pub patient: String,
    /// Its type.
    #[serde(rename = "type")]
    pub device_type: String,
    /// `falcon-512` or `ed25519`.
    pub algorithm: String,
    /// Fingerprint of its key (SHA-256, first 16 bytes, hex).
    pub key_fingerprint: String,
    /// When it was registered (RFC 3339).
    pub registered: String,
    /// When it was revoked (RFC 3339), if it was.
    pub revoked: Option<String>,
    /// When its last accepted message arrived (RFC 3339).
    pub last_seen: Option<String>,
    /// The last message counter accepted.
    pub counter: u64,
    /// The firmware version its last message reported.
    pub firmware: Option<String>,
}

/// One reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadingView {
    /// The device that measured it.
    pub device: String,
    /// `heart-rate`, `spo2`, `respiration-rate`, `systolic-bp` or `temperature`.
    pub kind: String,
    /// The value in `unit`.
    pub value: f64,
    /// The UCUM unit (`/min`, `%`, `mm[Hg]`, `Cel`).
    pub unit: String,
    /// When it was measured (RFC 3339).
    pub time: String,
}

/// A clinical alert.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertView {
    /// Its id.
    pub id: String,
    /// The rule that raised it (`news2` for the early-warning score).
    pub rule: String,
    /// `info`, `urgent` or `emergency`.
    pub severity: String,
    /// The vital sign, when a rule on one raised it.
    pub kind: Option<String>,
    /// The device whose reading raised it.
    pub device: String,
    /// The patient.
    pub patient: String,
    /// When the condition was met (RFC 3339).
    pub raised_at: String,
    /// The value that raised or last updated it (the NEWS2 total for `news2`).
    pub value: f64,
    /// The rule's threshold.
    pub threshold: Option<f64>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// When (RFC 3339).
    pub acknowledged_at: Option<String>,
    /// How many times it escalated while unacknowledged.
    pub escalated: u32,
    /// A sentence for people.
    pub message: String,
}

/// The telemetry path's counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TelemetryStatus {
    /// The broker the bridge talks to (no password), if the bridge runs.
    pub broker: Option<String>,
    /// Connected to it now.
    pub connected: bool,
    /// Messages waiting to be checked.
    pub queue_depth: u64,
    /// Seconds the oldest of them has waited.
    pub queue_lag_seconds: f64,
    /// Messages stored.
    pub messages_stored: u64,
    /// Readings stored.
    pub readings_stored: u64,
    /// Redeliveries recognised (acknowledged again, stored once).
    pub duplicates: u64,
    /// Messages refused, by reason code.
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// Readings durable in the log, not yet batched into records.
    pub pending_readings: u64,
    /// Records written from batches.
    pub records_written: u64,
    /// Alerts open.
    pub alerts_open: u64,
    /// Times the broker had lost the node's session.
    pub sessions_lost: u64,
}
