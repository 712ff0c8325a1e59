//! Telemetry from medical devices: every transport that carries device messages (the
//! MQTT bridge today) hands them to [`Telemetry::submit`] and acknowledges each one only
//! when its [`Outcome`] says the node keeps it.
//!
//! The path of a message, in order:
//! 1. **Checked** ([`pipeline`]): the envelope parses, the device is registered and not
//!    revoked, the signature verifies over `signed_bytes`, every reading passes
//!    `vitals::check`, and the counter is new: above the highest accepted, or an unused
//!    one less than `REPLAY_WINDOW` below it (brokers may deliver out of order). A
//!    redelivery of a stored message is an [`Outcome::Duplicate`], acknowledged again and
//!    stored once; another message with a used or older counter is a replay, refused.
//! 2. **Durable**: accepted messages are appended to the store's write-ahead log in
//!    groups (one fsync for all that arrived meanwhile). Only then is the outcome
//!    [`Outcome::Stored`]: a transport acknowledges nothing earlier.
//! 3. **Alerted**: the readings go through the alert engine; its changes go to the
//!    event bus (SSE, webhooks, the MQTT alert topics) and the audit log.
//! 4. **Batched** ([`flush`]): every window the readings of each patient become one
//!    encrypted record (a FHIR `Bundle` of `Observation`s, see [`bundle`]) through the
//!    same ingest as any record, and the log is checkpointed.
//!
//! Submissions queue in a bounded channel: when storage is slower than the stream,
//! `submit` waits (backpressure) instead of dropping anything.

pub mod bundle;
mod flush;
mod pipeline;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use medmesh_core::vitals::{Reading, TimeWindow};
use medmesh_core::PatientRef;
use medmesh_crypto::DevicePublicKey;
use medmesh_store::{check_device_name, DeviceRecord, StoreError};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::alerts::{AckError, Alert, AlertEngine, AlertRules};
use crate::error::{blocking, ServiceError};
use crate::lock;
use crate::services::NodeServices;

pub use flush::FlushReport;
pub use pipeline::{Outcome, Rejection};

/// How the node treats device telemetry.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// Readings are batched into one record per patient per window.
    pub window: Duration,
    /// A flush starts early once this many readings wait.
    pub max_pending_readings: usize,
    /// How far ahead and how far back a reading's time may be.
    pub time_window: TimeWindow,
    /// Messages queued between the transports and the checks; a full queue makes
    /// `submit` wait.
    pub queue: usize,
    /// The alert rules file (TOML, see `alerts::default_toml`); re-read when it
    /// changes or appears. `None`, or no such file yet: the built-in rules.
    pub rules_file: Option<PathBuf>,
    /// How often the rules file is looked at, and alerts escalated.
    pub tick: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            // About 40 MB of readings; a batch costs a key wrap and a signature per
            // patient, so batches of a few seconds would cost more than the readings.
            max_pending_readings: 1_000_000,
            time_window: TimeWindow::default(),
            queue: 8192,
            rules_file: None,
            tick: Duration::from_secs(1),
        }
    }
}

/// Alert events buffered for each transport that publishes them.
const ALERT_FEED: usize = 65_536;

/// A device as registration gives it.
#[derive(Debug, Clone)]
pub struct DeviceRegistration {
    /// Its id (one MQTT topic level).
    pub id: String,
    /// The patient it measures.
    pub patient: PatientRef,
    /// Its type, which alert rules may select.
    pub device_type: String,
    /// The key its messages are signed with.
    pub key: DevicePublicKey,
}

/// What the node knows of a device, as shown to operators.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    /// Its id.
    pub id: String,
    /// The patient it measures.
    pub patient: String,
    /// Its type.
    pub device_type: String,
    /// `falcon-512` or `ed25519`.
    pub algorithm: String,
    /// Fingerprint of its key.
    pub key_fingerprint: String,
    /// When it was registered (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub registered: OffsetDateTime,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked: Option<OffsetDateTime>,
    /// When its last accepted message arrived.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    /// The last message counter accepted.
    pub counter: u64,
    /// The firmware its last message reported.
    pub firmware: Option<String>,
}

/// Counters of the telemetry path (Prometheus gauges and `GET /v1/telemetry`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TelemetryStats {
    /// Messages waiting in the queue.
    pub queue_depth: u64,
    /// Seconds the oldest queued message has waited.
    pub queue_lag_seconds: f64,
    /// Messages stored.
    pub messages_stored: u64,
    /// Readings stored.
    pub readings_stored: u64,
    /// Redeliveries of stored messages, acknowledged again and not stored twice.
    pub duplicates: u64,
    /// Messages refused, by reason code.
    pub rejected: BTreeMap<String, u64>,
    /// Messages that could not be made durable (not acknowledged: they come again).
    pub failed: u64,
    /// Group commits to the write-ahead log.
    pub log_appends: u64,
    /// Readings durable in the log and not yet in records.
    pub pending_readings: u64,
    /// Records written from batches.
    pub records_written: u64,
    /// Alerts open now.
    pub alerts_open: u64,
    /// Times a transport found its broker had lost the node's session.
    pub session_losses: u64,
    /// The broker a transport reads from (no password), once one runs.
    pub broker: Option<String>,
    /// Whether that transport is connected now.
    pub connected: bool,
}

/// A stored reading, as read back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceReading {
    /// The device that measured it.
    pub device: String,
    /// The reading, canonical unit.
    #[serde(flatten)]
    pub reading: Reading,
}

/// The running telemetry path. Cheap to share behind an `Arc`.
pub struct Telemetry {
    queue: mpsc::Sender<pipeline::Submission>,
    pub(crate) shared: Arc<Shared>,
}

/// What the pipeline, the flusher and the callers share.
pub(crate) struct Shared {
    pub(crate) services: Arc<NodeServices>,
    pub(crate) settings: TelemetrySettings,
    /// Registered devices and their accepted counters.
    pub(crate) devices: Mutex<HashMap<String, pipeline::DeviceState>>,
    /// Durable entries not yet in records, by sequence number.
    pub(crate) pending: Mutex<flush::Pending>,
    pub(crate) alerts: Mutex<AlertEngine>,
    pub(crate) stats: Mutex<TelemetryStats>,
    pub(crate) queued: AtomicU64,
    /// Unix nanoseconds at which the oldest queued message was submitted (0: none).
    pub(crate) oldest_queued: AtomicU64,
    pub(crate) flush_wanted: Notify,
    /// Alert events, for transports that publish them (deeper than the event bus).
    pub(crate) alert_feed: tokio::sync::broadcast::Sender<crate::events::NodeEvent>,
    /// Serialises flushes (the timer, an early flush, `flush_now`).
    pub(crate) flushing: tokio::sync::Mutex<flush::FlushState>,
}

impl NodeServices {
    /// Starts the telemetry path: opens the write-ahead log, replays what it holds
    /// (finishing a flush a crash interrupted), loads the devices and the alert rules,
    /// and spawns the pipeline, the flusher and the ticker. Once per node.
    pub async fn start_telemetry(
        self: &Arc<Self>,
        settings: TelemetrySettings,
    ) -> Result<Arc<Telemetry>, ServiceError> {
        self.keys()?;
        let rules = match &settings.rules_file {
            Some(path) if path.exists() => load_rules(path)?,
            _ => AlertRules::default(),
        };
        let store = self.store.clone();
        let (replay, devices) = blocking("telemetry log replay", move || {
            let replay = store.wal_open()?;
            Ok((replay, store.devices()?))
        })
        .await?;
        let devices: HashMap<_, _> = devices
            .into_iter()
            .map(|d| (d.id.clone(), pipeline::DeviceState::new(d)))
            .collect();
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let shared = Arc::new(Shared {
            services: self.clone(),
            settings,
            devices: Mutex::new(devices),
            pending: Mutex::new(flush::Pending::default()),
            alerts: Mutex::new(AlertEngine::new(rules)),
            stats: Mutex::new(TelemetryStats::default()),
            queued: AtomicU64::new(0),
            oldest_queued: AtomicU64::new(0),
            flush_wanted: Notify::new(),
            alert_feed: tokio::sync::broadcast::channel(ALERT_FEED).0,
            flushing: tokio::sync::Mutex::new(flush::FlushState::default()),
        });
        let replayed = flush::restore(&shared, replay)?;
        if replayed > 0 {
            tracing::info!(
                entries = replayed,
                "telemetry log replayed: readings not yet in records"
            );
        }
        // A flush a crash interrupted is finished before anything new is batched.
        flush::finish_interrupted(&shared).await?;
        let telemetry = Arc::new(Telemetry { queue: tx, shared });
        tokio::spawn(pipeline::run(telemetry.shared.clone(), rx));
        tokio::spawn(flush::run(telemetry.shared.clone()));
        tokio::spawn(tick(telemetry.shared.clone()));
        if self.telemetry.set(telemetry.clone()).is_err() {
            return Err(ServiceError::InvalidInput(
                "telemetry is started already".into(),
            ));
        }
        Ok(telemetry)
    }

    /// The telemetry path, once started.
    pub fn telemetry(&self) -> Result<&Arc<Telemetry>, ServiceError> {
        self.telemetry.get().ok_or(ServiceError::NoTelemetry)
    }

    /// Registers a device as `actor`.
    pub async fn register_device(
        &self,
        registration: DeviceRegistration,
        actor: &str,
    ) -> Result<DeviceView, ServiceError> {
        check_device_name("id", &registration.id)?;
        check_device_name("type", &registration.device_type)?;
        let record = DeviceRecord {
            id: registration.id,
            patient: registration.patient,
            device_type: registration.device_type,
            key: registration.key,
            registered: OffsetDateTime::now_utc(),
            revoked: None,
            counter: 0,
            last_seen: None,
            firmware: None,
            recent: Default::default(),
        };
        let (store, actor, saved) = (self.store.clone(), actor.to_string(), record.clone());
        blocking("device registration", move || {
            Ok(store.register_device(&saved, &actor)?)
        })
        .await?;
        if let Some(telemetry) = self.telemetry.get() {
            lock(&telemetry.shared.devices).insert(
                record.id.clone(),
                pipeline::DeviceState::new(record.clone()),
            );
        }
        Ok(view(&record))
    }

    /// Every registered device, with what telemetry saw of it since the last
    /// checkpoint.
    pub async fn devices(&self) -> Result<Vec<DeviceView>, ServiceError> {
        if let Some(telemetry) = self.telemetry.get() {
            let devices = lock(&telemetry.shared.devices);
            let mut out: Vec<_> = devices.values().map(pipeline::DeviceState::view).collect();
            out.sort_by(|a, b| a.id.cmp(&b.id));
            return Ok(out);
        }
        let store = self.store.clone();
        let devices = blocking("device list", move || Ok(store.devices()?)).await?;
        Ok(devices.iter().map(view).collect())
    }

    /// Revokes device `id` as `actor`: its messages are refused from now on.
    pub async fn revoke_device(&self, id: &str, actor: &str) -> Result<DeviceView, ServiceError> {
        let (store, id, actor) = (self.store.clone(), id.to_string(), actor.to_string());
        let record = blocking("device revocation", move || {
            Ok(store.revoke_device(&id, &actor)?)
        })
        .await?;
        if let Some(telemetry) = self.telemetry.get() {
            if let Some(state) = lock(&telemetry.shared.devices).get_mut(&record.id) {
                state.record.revoked = record.revoked;
            }
        }
        Ok(view(&record))
    }
}

fn view(d: &DeviceRecord) -> DeviceView {
    DeviceView {
        id: d.id.clone(),
        patient: d.patient.as_str().to_string(),
        device_type: d.device_type.clone(),
        algorithm: d.key.algorithm().to_string(),
        key_fingerprint: d.key.fingerprint(),
        registered: d.registered,
        revoked: d.revoked,
        last_seen: d.last_seen,
        counter: d.counter,
        firmware: d.firmware.clone(),
    }
}

impl Telemetry {
    /// Queues a message `payload` that arrived for `device` (its topic names it) and
    /// returns where its outcome will come. Waits while the queue is full
    /// (backpressure); fails only when the pipeline has stopped.
    pub async fn submit(
        &self,
        device: &str,
        payload: Bytes,
    ) -> Result<oneshot::Receiver<Outcome>, ServiceError> {
        let (submission, outcome) = self.queued_submission(device, payload);
        if self.queue.send(submission).await.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(ServiceError::Internal("the telemetry pipeline stopped"));
        }
        Ok(outcome)
    }

    /// [`submit`](Self::submit) without waiting: [`ServiceError::Busy`] when the queue is
    /// full (for messages nobody acknowledges, such as MQTT QoS 0).
    pub fn try_submit(
        &self,
        device: &str,
        payload: Bytes,
    ) -> Result<oneshot::Receiver<Outcome>, ServiceError> {
        let (submission, outcome) = self.queued_submission(device, payload);
        match self.queue.try_send(submission) {
            Ok(()) => Ok(outcome),
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => {
                        ServiceError::Busy("the telemetry queue is full".into())
                    }
                    mpsc::error::TrySendError::Closed(_) => {
                        ServiceError::Internal("the telemetry pipeline stopped")
                    }
                })
            }
        }
    }

    /// A submission received now, counted as queued (the caller uncounts it if it
    /// cannot be queued).
    fn queued_submission(
        &self,
        device: &str,
        payload: Bytes,
    ) -> (pipeline::Submission, oneshot::Receiver<Outcome>) {
        let (reply, outcome) = oneshot::channel();
        let now = OffsetDateTime::now_utc();
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) == 0 {
            let nanos = u64::try_from(now.unix_timestamp_nanos()).unwrap_or(0);
            self.shared.oldest_queued.store(nanos, Ordering::Release);
        }
        let submission = pipeline::Submission {
            device: device.to_string(),
            payload,
            received: now,
            reply,
        };
        (submission, outcome)
    }

    /// Every alert event from now on (what the event bus carries as `alert`, with a
    /// buffer deep enough for a burst).
    pub fn alert_feed(&self) -> tokio::sync::broadcast::Receiver<crate::events::NodeEvent> {
        self.shared.alert_feed.subscribe()
    }

    /// The counters.
    pub fn stats(&self) -> TelemetryStats {
        let mut stats = lock(&self.shared.stats).clone();
        stats.queue_depth = self.shared.queued.load(Ordering::Acquire);
        let oldest = self.shared.oldest_queued.load(Ordering::Acquire);
        if stats.queue_depth > 0 && oldest > 0 {
            let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0);
            stats.queue_lag_seconds = now.saturating_sub(oldest) as f64 / 1e9;
        }
        stats.pending_readings = lock(&self.shared.pending).readings() as u64;
        stats.alerts_open = lock(&self.shared.alerts).open_alerts().len() as u64;
        stats
    }

    /// Counts a broker session lost (the broker forgot what it held for the node;
    /// devices must resend what they published meanwhile).
    pub fn count_session_loss(&self) {
        lock(&self.shared.stats).session_losses += 1;
    }

    /// What a transport says of its link: the broker (shown without a password) and
    /// whether it is connected.
    pub fn note_link(&self, broker: &str, connected: bool) {
        let mut stats = lock(&self.shared.stats);
        stats.broker = Some(broker.to_string());
        stats.connected = connected;
    }

    /// Batches every pending reading into records now (the timer does it every
    /// window); what it wrote.
    pub async fn flush_now(&self) -> Result<FlushReport, ServiceError> {
        flush::flush(&self.shared).await
    }

    /// Readings of `patient` measured in `[from, to)`, decrypted from the telemetry
    /// records (and the pending ones not yet batched), oldest first. Each record read is
    /// audited as `actor`.
    pub async fn readings(
        &self,
        patient: &PatientRef,
        from: OffsetDateTime,
        to: OffsetDateTime,
        actor: &str,
    ) -> Result<Vec<DeviceReading>, ServiceError> {
        flush::readings(&self.shared, patient, from, to, actor).await
    }

    /// Alerts open now, oldest first.
    pub fn open_alerts(&self) -> Vec<Alert> {
        lock(&self.shared.alerts).open_alerts()
    }

    /// Acknowledges alert `id` as `actor` (audited, and on the event bus).
    pub async fn acknowledge_alert(&self, id: &str, actor: &str) -> Result<Alert, ServiceError> {
        let now = OffsetDateTime::now_utc();
        let alert = lock(&self.shared.alerts)
            .acknowledge(id, actor, now)
            .map_err(|e| match e {
                AckError::Unknown { .. } => ServiceError::NotFound(e.to_string()),
                other => ServiceError::Conflict(other.to_string()),
            })?;
        pipeline::announce(&self.shared, &[("acknowledged", alert.clone())], actor);
        Ok(alert)
    }
}

/// Reads and checks the rules file.
fn load_rules(path: &std::path::Path) -> Result<AlertRules, ServiceError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ServiceError::Store(StoreError::Io {
            context: format!("reading the alert rules {}", path.display()),
            source: e,
        })
    })?;
    AlertRules::from_toml(&text)
        .map_err(|e| ServiceError::InvalidInput(format!("alert rules {}: {e}", path.display())))
}

/// Every `tick`: escalates unacknowledged alerts, reloads the rules file when it
/// changed (a file that does not parse keeps the rules in force, with an error logged).
async fn tick(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(shared.settings.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = shared.settings.rules_file.as_deref().and_then(modified);
    loop {
        interval.tick().await;
        if Arc::strong_count(&shared) == 1 {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let escalated = lock(&shared.alerts).tick(now);
        pipeline::announce_changes(&shared, escalated);
        let Some(path) = shared.settings.rules_file.clone() else {
            continue;
        };
        let current = modified(&path);
        if current == seen {
            continue;
        }
        seen = current;
        match load_rules(&path) {
            Ok(rules) => {
                let cleared = lock(&shared.alerts).replace_rules(rules);
                tracing::info!(file = %path.display(), "alert rules reloaded");
                pipeline::announce_changes(&shared, cleared);
            }
            Err(e) => {
                tracing::error!(error = %e, "alert rules not reloaded; the previous ones stay in force")
            }
        }
    }
}
