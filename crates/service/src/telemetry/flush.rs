//! Batching: durable readings become one encrypted record per patient per window, and
//! the log is checkpointed; reading them back.
//!
//! A flush takes every entry up to `S` (the log's last sequence number when it starts),
//! writes each patient's bundle with the idempotency key `telemetry:S:<patient tag>`, and
//! checkpoints `S`. A flush that fails, or that a crash interrupts, is repeated with the
//! same `S` and the same entries, so each bundle is stored exactly once.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use medmesh_core::{ContentType, PatientRef};
use medmesh_store::{DeviceProgress, RecordQuery, WalReplay};
use time::OffsetDateTime;

use super::bundle;
use super::pipeline::{decode_entry, Entry};
use super::{DeviceReading, Shared};
use crate::error::{blocking, ServiceError};
use crate::lock;
use crate::records::Ingest;

/// Most readings one call of [`readings`] returns.
pub const MAX_READINGS_ANSWERED: usize = 100_000;

/// Durable entries not yet in records.
#[derive(Default)]
pub(crate) struct Pending {
    entries: BTreeMap<u64, Entry>,
    readings: usize,
}

impl Pending {
    /// Adds durable entries; the readings now pending.
    pub fn extend(&mut self, entries: Vec<(u64, Entry)>) -> usize {
        for (seq, entry) in entries {
            self.readings += entry.readings.len();
            self.entries.insert(seq, entry);
        }
        self.readings
    }

    pub fn readings(&self) -> usize {
        self.readings
    }

    fn through(&self, last: u64) -> Vec<Entry> {
        self.entries
            .range(..=last)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The last sequence number held. The pipeline adds entries in sequence order, each
    /// group before the next is appended, so every durable entry up to it is here.
    fn last_seq(&self) -> Option<u64> {
        self.entries.last_key_value().map(|(seq, _)| *seq)
    }

    fn remove_through(&mut self, last: u64) {
        let kept = self.entries.split_off(&(last + 1));
        let removed = std::mem::replace(&mut self.entries, kept);
        self.readings -= removed.values().map(|e| e.readings.len()).sum::<usize>();
    }
}

/// Where the log's flushes stand.
#[derive(Default)]
pub(crate) struct FlushState {
    checkpoint: u64,
    /// A flush that did not finish (crash or error), to repeat first.
    unfinished: Option<u64>,
}

/// What a flush wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlushReport {
    /// The log's sequence number it reached (0: nothing to flush).
    pub through: u64,
    /// Messages batched.
    pub messages: usize,
    /// Readings batched.
    pub readings: usize,
    /// Records written (one per patient).
    pub records: usize,
}

/// Takes in what the log replayed at start: counters and pending readings.
pub(crate) fn restore(shared: &Shared, replay: WalReplay) -> Result<usize, ServiceError> {
    let mut entries = Vec::with_capacity(replay.entries.len());
    for (seq, bytes) in replay.entries {
        let entry = decode_entry(&bytes).map_err(|e| {
            ServiceError::Store(medmesh_store::StoreError::Corrupt(format!(
                "telemetry log entry {seq} does not decode: {e}"
            )))
        })?;
        entries.push((seq, entry));
    }
    let n = entries.len();
    {
        let mut devices = lock(&shared.devices);
        for (_, entry) in &entries {
            if let Some(device) = devices.get_mut(&entry.device) {
                device.accept(entry);
            }
        }
    }
    lock(&shared.pending).extend(entries);
    let mut state = shared
        .flushing
        .try_lock()
        .map_err(|_| ServiceError::Internal("telemetry flush state busy at start"))?;
    state.checkpoint = replay.checkpoint;
    state.unfinished = replay.flushing;
    Ok(n)
}

/// Repeats the flush a crash interrupted, if there was one.
pub(crate) async fn finish_interrupted(shared: &Arc<Shared>) -> Result<(), ServiceError> {
    let mut state = shared.flushing.lock().await;
    if let Some(through) = state.unfinished {
        let report = flush_through(shared, &mut state, through).await?;
        tracing::info!(?report, "finished the telemetry flush a stop interrupted");
    }
    Ok(())
}

/// The flusher task: every window, or early when many readings wait.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(shared.settings.window) => {}
            () = shared.flush_wanted.notified() => {}
        }
        if Arc::strong_count(&shared) == 1 {
            return;
        }
        if let Err(e) = flush(&shared).await {
            tracing::error!(error = %e, "telemetry flush failed; it is repeated at the next window");
        }
    }
}

/// Flushes everything durable so far (an unfinished flush first).
pub(crate) async fn flush(shared: &Arc<Shared>) -> Result<FlushReport, ServiceError> {
    let mut state = shared.flushing.lock().await;
    let mut report = FlushReport::default();
    if let Some(through) = state.unfinished {
        report = flush_through(shared, &mut state, through).await?;
    }
    // What the pending set holds, not what the log holds: an entry appended a moment
    // ago may not be in the set yet, and must not be checkpointed without its record.
    let Some(through) = lock(&shared.pending).last_seq() else {
        return Ok(report);
    };
    let store = shared.services.store().clone();
    let checkpoint = state.checkpoint;
    let begun = blocking("telemetry flush", move || {
        Ok(store.wal_begin_flush(checkpoint, through)?)
    })
    .await?;
    if !begun {
        return Ok(report);
    }
    state.unfinished = Some(through);
    let next = flush_through(shared, &mut state, through).await?;
    Ok(FlushReport {
        through: next.through,
        messages: report.messages + next.messages,
        readings: report.readings + next.readings,
        records: report.records + next.records,
    })
}

async fn flush_through(
    shared: &Arc<Shared>,
    state: &mut FlushState,
    through: u64,
) -> Result<FlushReport, ServiceError> {
    state.unfinished = Some(through);
    let entries = lock(&shared.pending).through(through);
    // Each patient's readings, by the patient's tag: the same grouping on a repeat.
    let mut by_patient: BTreeMap<String, (PatientRef, Vec<DeviceReading>)> = BTreeMap::new();
    let mut progress: BTreeMap<String, DeviceProgress> = BTreeMap::new();
    {
        let devices = lock(&shared.devices);
        for entry in &entries {
            let Some(device) = devices.get(&entry.device) else {
                tracing::warn!(device = %entry.device, "readings of an unknown device skipped");
                continue;
            };
            let patient = device.record.patient.clone();
            let tag = shared
                .services
                .store()
                .keyed_tag("telemetry-patient", patient.as_str())?;
            let group = by_patient
                .entry(tag)
                .or_insert_with(|| (patient, Vec::new()));
            group.1.extend(entry.readings.iter().map(|r| DeviceReading {
                device: entry.device.clone(),
                reading: *r,
            }));
            let p = progress
                .entry(entry.device.clone())
                .or_insert_with(|| DeviceProgress {
                    device: entry.device.clone(),
                    counter: 0,
                    seen: entry.received,
                    recent: Vec::new(),
                    firmware: None,
                });
            p.recent.push((entry.counter, entry.digest.clone()));
            if entry.counter > p.counter {
                p.counter = entry.counter;
                p.seen = entry.received;
                if entry.firmware.is_some() {
                    p.firmware.clone_from(&entry.firmware);
                }
            }
        }
    }
    let mut report = FlushReport {
        through,
        messages: entries.len(),
        ..FlushReport::default()
    };
    let mut keys = Vec::new();
    for (tag, (patient, readings)) in by_patient {
        if readings.is_empty() {
            continue;
        }
        report.readings += readings.len();
        let key = format!("telemetry:{through}:{tag}");
        keys.push(key.clone());
        // Off the executor: a patient's batch can hold hundreds of thousands of readings.
        let (patient, body) = blocking("telemetry batch", move || {
            let body = bundle::to_bundle_bytes(&patient, &readings);
            Ok((patient, body))
        })
        .await?;
        shared
            .services
            .ingest_keyed(
                Box::new(Cursor::new(body)),
                Ingest {
                    content_type: Some(ContentType::FHIR_JSON.parse()?),
                    patient: Some(patient),
                    actor: "telemetry".into(),
                },
                Some(key),
                Arc::new(|_| {}),
            )
            .await?;
        report.records += 1;
    }
    let store = shared.services.store().clone();
    let progress: Vec<_> = progress.into_values().collect();
    blocking("telemetry checkpoint", move || {
        Ok(store.wal_checkpoint(through, &progress, &keys)?)
    })
    .await?;
    lock(&shared.pending).remove_through(through);
    state.checkpoint = through;
    state.unfinished = None;
    lock(&shared.stats).records_written += report.records as u64;
    Ok(report)
}

/// Readings of `patient` measured in `[from, to)`: from the telemetry records that can
/// hold them, and the pending entries.
pub(crate) async fn readings(
    shared: &Arc<Shared>,
    patient: &PatientRef,
    from: OffsetDateTime,
    to: OffsetDateTime,
    actor: &str,
) -> Result<Vec<DeviceReading>, ServiceError> {
    if from >= to {
        return Err(ServiceError::InvalidInput(
            "`from` must be before `to`".into(),
        ));
    }
    let in_range = |r: &DeviceReading| r.reading.time >= from && r.reading.time < to;
    // A reading is batched after it was measured: at most `max_age` late, then up to
    // two windows in the log.
    let settings = &shared.settings;
    let slack = settings.time_window.max_age
        + time::Duration::try_from(settings.window * 2).unwrap_or(time::Duration::hours(1))
        + time::Duration::minutes(1);
    // The pending readings first: a flush that moves them into a record while the
    // records are read then shows them twice (removed below), never not at all.
    let mut out = Vec::new();
    {
        let devices = lock(&shared.devices);
        let pending = lock(&shared.pending);
        for entry in pending.entries.values() {
            let of_patient = devices
                .get(&entry.device)
                .is_some_and(|d| &d.record.patient == patient);
            if !of_patient {
                continue;
            }
            out.extend(
                entry
                    .readings
                    .iter()
                    .map(|r| DeviceReading {
                        device: entry.device.clone(),
                        reading: *r,
                    })
                    .filter(in_range),
            );
        }
    }
    // A reading may be timed up to the clock skew ahead of when it arrived.
    let since = from.checked_sub(settings.time_window.skew).unwrap_or(from);
    let query = RecordQuery {
        patient: Some(patient.clone()),
        content_type: Some(ContentType::FHIR_JSON.parse()?),
        since: Some(since),
        until: to.checked_add(slack),
        ..RecordQuery::default()
    };
    let found = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = found.clone();
    shared
        .services
        .scan(query, move |summary| {
            lock(&sink).push(summary.id);
            std::ops::ControlFlow::Continue(())
        })
        .await?;
    let ids = std::mem::take(&mut *lock(&found));
    for id in ids {
        let mut opened = shared.services.open_record(id, actor).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = opened.body.recv().await {
            let chunk = chunk.map_err(|e| {
                ServiceError::Store(medmesh_store::StoreError::Io {
                    context: format!("reading telemetry record {id}"),
                    source: e,
                })
            })?;
            bytes.extend_from_slice(&chunk);
        }
        if let Some(readings) = bundle::from_bundle(&bytes) {
            out.extend(readings.into_iter().filter(in_range));
        }
        if out.len() > 2 * MAX_READINGS_ANSWERED {
            return Err(ServiceError::InvalidInput(format!(
                "more than {MAX_READINGS_ANSWERED} readings in that range; ask for a shorter one"
            )));
        }
    }
    out.sort_by(|a, b| {
        (a.reading.time, &a.device, a.reading.kind).cmp(&(
            b.reading.time,
            &b.device,
            b.reading.kind,
        ))
    });
    // A pending entry flushed while the records were read shows twice: keep one.
    out.dedup();
    if out.len() > MAX_READINGS_ANSWERED {
        return Err(ServiceError::InvalidInput(format!(
            "more than {MAX_READINGS_ANSWERED} readings in that range; ask for a shorter one"
        )));
    }
    Ok(out)
}
