//! The checks every device message passes, and the group commit that makes the
//! accepted ones durable before anyone acknowledges them.
//!
//! One task takes messages from the queue in arrival order, as many as are waiting
//! (up to [`GROUP`]); a blocking thread checks them one after another against the
//! devices' counters (a message's counter is compared with the ones accepted before it,
//! including earlier ones of the same group) and appends the accepted ones to the log
//! with one fsync. Only then are the counters updated and the outcomes sent, in
//! arrival order. If the append fails nothing of the group counts: every accepted
//! message is answered [`Outcome::Failed`], not acknowledged, and comes again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use medmesh_core::device_message::{self, MessageError};
use medmesh_core::vitals::{self, Reading};
use medmesh_store::{AuditAction, AuditEvent, DeviceRecord, REPLAY_WINDOW};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{DeviceView, Shared};
use crate::alerts::{Alert, AlertChange, ClearReason, Subject};
use crate::error::blocking;
use crate::events::NodeEvent;
use crate::lock;

/// Most messages checked and committed together.
const GROUP: usize = 1024;

/// A message waiting to be checked.
pub(crate) struct Submission {
    pub device: String,
    pub payload: Bytes,
    pub received: OffsetDateTime,
    pub reply: oneshot::Sender<Outcome>,
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Durable in the node: acknowledge it.
    Stored {
        /// Readings kept (repeats within the message dropped).
        readings: usize,
        /// The message's counter.
        counter: u64,
        /// The device asked for an acknowledgement on its `ack` topic.
        wants_ack: bool,
    },
    /// A redelivery of a message stored before: acknowledge it again; nothing was
    /// stored twice.
    Duplicate {
        /// Its counter.
        counter: u64,
        /// The device asked for an acknowledgement.
        wants_ack: bool,
    },
    /// Refused: acknowledge it (so the broker stops redelivering) and tell the device
    /// why on its error topic. Nothing was stored.
    Rejected(Rejection),
    /// The node could not make it durable (storage failed): do not acknowledge it, so
    /// the broker delivers it again.
    Failed(String),
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// A stable code: `unknown-device`, `revoked-device`, `bad-signature`,
    /// `replayed-counter`, `invalid-reading` or one of `MessageError::code`.
    pub code: &'static str,
    /// What was wrong, for the device's developer.
    pub reason: String,
    /// The message's counter, when it could be read.
    pub counter: Option<u64>,
}

/// A message as the log keeps it: enough to batch its readings and restore the
/// device's counter after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub device: String,
    pub counter: u64,
    /// SHA-256 of the signed bytes, hex (recognises redeliveries).
    pub digest: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received: OffsetDateTime,
    #[serde(default)]
    pub firmware: Option<String>,
    pub readings: Vec<Reading>,
}

/// A registered device and what was accepted from it.
pub(crate) struct DeviceState {
    pub record: DeviceRecord,
    /// The highest counter durable.
    pub counter: u64,
    /// Digests of the durable messages whose counters are within [`REPLAY_WINDOW`] of
    /// `counter`: a late message with an unused counter there is still accepted (a
    /// broker may deliver out of order, e.g. queued messages after live ones when it
    /// restarts), a redelivery recognised, a reused counter refused.
    pub recent: BTreeMap<u64, [u8; 32]>,
    pub last_seen: Option<OffsetDateTime>,
    pub firmware: Option<String>,
}

fn digest_of(hex_digest: &str) -> Option<[u8; 32]> {
    hex::decode(hex_digest).ok()?.try_into().ok()
}

impl DeviceState {
    pub fn new(record: DeviceRecord) -> Self {
        let recent = record
            .recent
            .iter()
            .filter_map(|(c, d)| Some((*c, digest_of(d)?)))
            .collect();
        Self {
            counter: record.counter,
            recent,
            last_seen: record.last_seen,
            firmware: record.firmware.clone(),
            record,
        }
    }

    /// Takes in an entry that is durable (live, or replayed from the log).
    pub fn accept(&mut self, entry: &Entry) {
        if let Some(digest) = digest_of(&entry.digest) {
            self.recent.insert(entry.counter, digest);
        }
        if entry.counter > self.counter {
            self.counter = entry.counter;
            self.last_seen = Some(entry.received);
            if entry.firmware.is_some() {
                self.firmware.clone_from(&entry.firmware);
            }
            let floor = self.counter.saturating_sub(REPLAY_WINDOW);
            self.recent = self.recent.split_off(&(floor + 1));
        }
    }

    pub fn view(&self) -> DeviceView {
        let mut view = super::view(&self.record);
        view.counter = self.counter;
        view.last_seen = self.last_seen;
        view.firmware.clone_from(&self.firmware);
        view
    }
}

/// A message whose envelope, signature and readings passed; its counter is checked
/// next, in arrival order.
struct Checked {
    counter: u64,
    digest: [u8; 32],
    wants_ack: bool,
    firmware: Option<String>,
    readings: Vec<Reading>,
}

fn reject(code: &'static str, reason: impl Into<String>, counter: Option<u64>) -> Rejection {
    Rejection {
        code,
        reason: reason.into(),
        counter,
    }
}

fn message_error(e: MessageError, counter: Option<u64>) -> Rejection {
    reject(e.code(), e.to_string(), counter)
}

/// What the first checks need of a device, copied out so no lock is held while
/// verifying signatures.
struct Key {
    key: medmesh_crypto::DevicePublicKey,
    revoked: bool,
}

/// Everything but the counter: envelope, device, signature, readings. CPU-heavy (the
/// signature), run off the executor.
fn check(
    submission: &Submission,
    key: Option<&Key>,
    window: vitals::TimeWindow,
) -> Result<Checked, Rejection> {
    let device = submission.device.as_str();
    let envelope =
        device_message::parse_envelope(&submission.payload).map_err(|e| message_error(e, None))?;
    let counter = Some(envelope.counter);
    let Some(key) = key else {
        return Err(reject(
            "unknown-device",
            format!("device {device} is not registered on this node"),
            counter,
        ));
    };
    if key.revoked {
        return Err(reject(
            "revoked-device",
            format!("device {device} is revoked"),
            counter,
        ));
    }
    let signed = envelope.signed_bytes(device);
    if !key.key.verify(&signed, &envelope.signature) {
        return Err(reject(
            "bad-signature",
            format!(
                "the signature does not verify with device {device}'s registered {} key",
                key.key.algorithm()
            ),
            counter,
        ));
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &signed).as_ref());
    let raw = device_message::decode_body(envelope.body, submission.received)
        .map_err(|e| message_error(e, counter))?;
    let mut readings = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let reading = vitals::check(r, submission.received, window)
            .map_err(|e| reject("invalid-reading", format!("reading {i}: {e}"), counter))?;
        readings.push(reading);
    }
    Ok(Checked {
        counter: envelope.counter,
        digest,
        wants_ack: envelope.wants_ack,
        firmware: envelope.firmware,
        readings: vitals::dedupe(readings),
    })
}

/// The verdict on one message once its counter is checked.
enum Verdict {
    /// New: to append to the log.
    Accept(Entry, bool),
    /// A redelivery of a durable message.
    Duplicate(u64, bool),
    /// A redelivery of a message accepted earlier in the same group: durable only if
    /// the group's append is.
    DuplicateInGroup(u64, bool),
    Reject(Rejection),
}

/// The counter checks, in arrival order, against the devices' durable state and the
/// messages of the group accepted before.
fn order(
    devices: &HashMap<String, DeviceState>,
    group: &[Submission],
    checked: Vec<Result<Checked, Rejection>>,
) -> Vec<Verdict> {
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut in_group: HashMap<(&str, u64), [u8; 32]> = HashMap::new();
    group
        .iter()
        .zip(checked)
        .map(|(submission, checked)| {
            let device = submission.device.as_str();
            let c = match checked {
                Ok(c) => c,
                Err(rejection) => return Verdict::Reject(rejection),
            };
            let Some(state) = devices.get(device) else {
                return Verdict::Reject(reject(
                    "unknown-device",
                    format!("device {device} is not registered on this node"),
                    Some(c.counter),
                ));
            };
            // Again here, under the lock: a revocation made while the group was checked
            // takes effect for every message not yet accepted.
            if state.record.revoked.is_some() {
                return Verdict::Reject(reject(
                    "revoked-device",
                    format!("device {device} is revoked"),
                    Some(c.counter),
                ));
            }
            let highest = last.get(device).copied().unwrap_or(state.counter);
            let used = state
                .recent
                .get(&c.counter)
                .map(|d| (*d, false))
                .or_else(|| in_group.get(&(device, c.counter)).map(|d| (*d, true)));
            match used {
                Some((digest, in_this_group)) if digest == c.digest => {
                    return if in_this_group {
                        Verdict::DuplicateInGroup(c.counter, c.wants_ack)
                    } else {
                        Verdict::Duplicate(c.counter, c.wants_ack)
                    };
                }
                Some(_) => {
                    return Verdict::Reject(reject(
                        "replayed-counter",
                        format!(
                            "counter {} of device {device} was used by another message",
                            c.counter
                        ),
                        Some(c.counter),
                    ));
                }
                None if c.counter.saturating_add(REPLAY_WINDOW) <= highest => {
                    return Verdict::Reject(reject(
                        "replayed-counter",
                        format!(
                            "counter {} is too old: {REPLAY_WINDOW} or more below {highest}, the highest accepted from device {device}",
                            c.counter
                        ),
                        Some(c.counter),
                    ));
                }
                None => {}
            }
            last.insert(device, highest.max(c.counter));
            in_group.insert((device, c.counter), c.digest);
            Verdict::Accept(
                Entry {
                    device: device.to_string(),
                    counter: c.counter,
                    digest: hex::encode(c.digest),
                    received: submission.received,
                    firmware: c.firmware,
                    readings: c.readings,
                },
                c.wants_ack,
            )
        })
        .collect()
}

/// The pipeline task: until every sender is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<Submission>) {
    let mut group = Vec::with_capacity(GROUP);
    loop {
        group.clear();
        if queue.recv_many(&mut group, GROUP).await == 0 {
            return;
        }
        let taken = group.len() as u64;
        let left = shared.queued.fetch_sub(taken, Ordering::AcqRel) - taken;
        if left == 0 {
            shared.oldest_queued.store(0, Ordering::Release);
        } else if let Some(last) = group.last() {
            // The oldest still queued came after this group's last.
            let nanos = u64::try_from(last.received.unix_timestamp_nanos()).unwrap_or(0);
            shared.oldest_queued.store(nanos, Ordering::Release);
        }
        process(&shared, std::mem::take(&mut group)).await;
    }
}

async fn process(shared: &Arc<Shared>, group: Vec<Submission>) {
    // The keys the group needs, copied under the lock once.
    let keys: HashMap<String, Key> = {
        let devices = lock(&shared.devices);
        group
            .iter()
            .filter_map(|s| {
                let d = devices.get(&s.device)?;
                Some((
                    s.device.clone(),
                    Key {
                        key: d.record.key.clone(),
                        revoked: d.record.revoked.is_some(),
                    },
                ))
            })
            .collect()
    };
    let window = shared.settings.time_window;
    let checked = blocking("telemetry checks", move || {
        let checked: Vec<_> = group
            .iter()
            .map(|s| check(s, keys.get(&s.device), window))
            .collect();
        Ok((group, checked))
    })
    .await;
    let Ok((group, checked)) = checked else {
        // The blocking task died: its submissions were dropped with it, so their
        // callers see a closed channel and acknowledge nothing.
        tracing::error!("telemetry checks failed");
        return;
    };
    let verdicts = order(&lock(&shared.devices), &group, checked);
    // Alerts before the log append: a clinician needs them now. Were the append to fail,
    // the readings would come again and be seen as not newer, raising nothing twice.
    let changes = {
        let devices = lock(&shared.devices);
        let mut alerts = lock(&shared.alerts);
        let mut changes = Vec::new();
        for verdict in &verdicts {
            let Verdict::Accept(entry, _) = verdict else {
                continue;
            };
            let Some(device) = devices.get(&entry.device) else {
                continue;
            };
            let subject = Subject {
                device: &entry.device,
                device_type: &device.record.device_type,
                patient: device.record.patient.as_str(),
            };
            for reading in &entry.readings {
                changes.extend(alerts.observe(&subject, reading));
            }
        }
        changes
    };
    announce_changes(shared, changes);
    let encoded: Vec<Vec<u8>> = verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Accept(entry, _) => {
                Some(serde_json::to_vec(entry).expect("an entry serializes"))
            }
            _ => None,
        })
        .collect();
    let store = shared.services.store().clone();
    let appended = if encoded.is_empty() {
        Ok(0)
    } else {
        blocking("telemetry log append", move || {
            Ok(store.wal_append(&encoded)?)
        })
        .await
    };
    let mut first_seq = match appended {
        Ok(seq) => Some(seq),
        Err(e) => {
            tracing::error!(error = %e, "telemetry log append failed; the group is not acknowledged");
            None
        }
    };
    let mut durable = Vec::new();
    {
        let mut stats = lock(&shared.stats);
        if first_seq.is_some() && verdicts.iter().any(|v| matches!(v, Verdict::Accept(..))) {
            stats.log_appends += 1;
        }
        let failed = |stats: &mut super::TelemetryStats| {
            stats.failed += 1;
            Outcome::Failed("the node could not write the reading durably".into())
        };
        for (submission, verdict) in group.into_iter().zip(verdicts) {
            let outcome = match verdict {
                Verdict::Accept(entry, wants_ack) => match first_seq.as_mut() {
                    Some(seq) => {
                        stats.messages_stored += 1;
                        stats.readings_stored += entry.readings.len() as u64;
                        let outcome = Outcome::Stored {
                            readings: entry.readings.len(),
                            counter: entry.counter,
                            wants_ack,
                        };
                        durable.push((*seq, entry));
                        *seq += 1;
                        outcome
                    }
                    None => failed(&mut stats),
                },
                Verdict::DuplicateInGroup(counter, wants_ack) if first_seq.is_some() => {
                    stats.duplicates += 1;
                    Outcome::Duplicate { counter, wants_ack }
                }
                Verdict::DuplicateInGroup(..) => failed(&mut stats),
                Verdict::Duplicate(counter, wants_ack) => {
                    stats.duplicates += 1;
                    Outcome::Duplicate { counter, wants_ack }
                }
                Verdict::Reject(rejection) => {
                    *stats
                        .rejected
                        .entry(rejection.code.to_string())
                        .or_default() += 1;
                    Outcome::Rejected(rejection)
                }
            };
            let _ = submission.reply.send(outcome);
        }
    }
    if durable.is_empty() {
        return;
    }
    {
        let mut devices = lock(&shared.devices);
        for (_, entry) in &durable {
            if let Some(device) = devices.get_mut(&entry.device) {
                device.accept(entry);
            }
        }
    }
    let early = lock(&shared.pending).extend(durable) >= shared.settings.max_pending_readings;
    if early {
        shared.flush_wanted.notify_one();
    }
}

/// Publishes alert changes on the bus at once and writes them to the audit log in one
/// transaction, in the background (a clinician must not wait on an fsync).
pub(crate) fn announce_changes(shared: &Arc<Shared>, changes: Vec<AlertChange>) {
    let named: Vec<(&'static str, Alert)> = changes
        .into_iter()
        .map(|change| match change {
            AlertChange::Raised(alert) => ("raised", alert),
            AlertChange::Changed(alert) => ("changed", alert),
            AlertChange::Escalated(alert) => ("escalated", alert),
            AlertChange::Cleared { alert, reason, .. } => (
                match reason {
                    ClearReason::Recovered => "cleared",
                    ClearReason::RuleRemoved => "cleared-rule-removed",
                    ClearReason::Evicted => "cleared-untracked",
                },
                alert,
            ),
        })
        .collect();
    announce(shared, &named, "telemetry");
}

/// Alert changes `(change, alert)` by `actor`: on the event bus now (the device, never
/// the patient), and in the audit log in the background, in one transaction.
pub(crate) fn announce(shared: &Arc<Shared>, changes: &[(&str, Alert)], actor: &str) {
    if changes.is_empty() {
        return;
    }
    let mut audit = Vec::with_capacity(changes.len());
    for (change, alert) in changes {
        let severity = alert.severity.name().to_string();
        let measured = alert
            .raised_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let event = NodeEvent::Alert {
            change: change.to_string(),
            alert: alert.id.clone(),
            rule: alert.rule.clone(),
            severity: severity.clone(),
            device: alert.device.clone(),
            vital: alert.kind.map(|k| k.name().to_string()),
            value: alert.value,
            measured,
            message: alert.message.clone(),
        };
        let _ = shared.alert_feed.send(event.clone());
        shared.services.events().publish(event);
        audit.push(AuditEvent {
            action: AuditAction::Alert,
            actor: actor.to_string(),
            subject: alert.id.clone(),
            // No value: the audit log is not sealed, and a reading is health data.
            detail: BTreeMap::from([
                ("change".to_string(), change.to_string()),
                ("rule".to_string(), alert.rule.clone()),
                ("severity".to_string(), severity),
                ("device".to_string(), alert.device.clone()),
            ]),
        });
    }
    let store = shared.services.store().clone();
    tokio::spawn(async move { crate::services::append_audit(&store, audit).await });
}

/// Decodes a log entry (the pipeline wrote it).
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry, serde_json::Error> {
    serde_json::from_slice(bytes)
}
