//! Registered medical devices: who may publish readings, for which patient, with which
//! key. Each entry is sealed under the index key (it names the patient the device
//! measures); the device id, the table's key, is in clear, so ids must not embed a
//! patient identifier (registration refuses none, but the docs say so).
//!
//! The last accepted message counter, last-seen time and firmware are written here when
//! the telemetry batcher checkpoints (see `crate::wal`); between checkpoints they live in
//! the write-ahead log, which a restart replays.

use std::collections::BTreeMap;

use medmesh_core::PatientRef;
use medmesh_crypto::DevicePublicKey;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::{self, AuditAction, AuditEvent};
use crate::tables::{AUDIT, DEVICES};
use crate::{Store, StoreError};

/// Longest device id or type.
pub const MAX_DEVICE_ID: usize = 64;

/// A registered device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its id, as it appears in its MQTT topic: `[A-Za-z0-9._-]{1,64}`.
    pub id: String,
    /// The patient it measures.
    pub patient: PatientRef,
    /// Its type (e.g. `bedside-monitor`), which alert rules may select.
    pub device_type: String,
    /// The key its messages are signed with.
    pub key: DevicePublicKey,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    pub registered: OffsetDateTime,
    /// When it was revoked, if it was: its messages are refused from then on.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked: Option<OffsetDateTime>,
    /// The highest message counter accepted and checkpointed (0: none yet).
    #[serde(default)]
    pub counter: u64,
    /// When its last checkpointed message arrived.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    /// The firmware version its last message reported.
    #[serde(default)]
    pub firmware: Option<String>,
    /// The checkpointed messages of the replay window (counters within
    /// [`REPLAY_WINDOW`] of `counter`, with their digests, hex): a counter in the window
    /// not used yet is still accepted (brokers may deliver out of order, e.g. after a
    /// restart), a redelivery of one of these messages is recognised, and another
    /// message with a used counter is refused.
    #[serde(default)]
    pub recent: BTreeMap<u64, String>,
}

/// How far below the highest accepted counter a device's message may still be
/// accepted, once, when it arrives late.
pub const REPLAY_WINDOW: u64 = 256;

/// Checks a device id or type: ASCII letters, digits, `.`, `_`, `-`, 1 to 64 long (it is
/// a single MQTT topic level, so no `/`, `+` or `#`).
pub fn check_device_name(what: &str, value: &str) -> Result<(), StoreError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_DEVICE_ID
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "device {what} `{value}` must be 1 to {MAX_DEVICE_ID} letters, digits, `.`, `_` or `-`"
        )))
    }
}

fn context(id: &str) -> Vec<u8> {
    format!("medmesh/device/v1\0{id}").into_bytes()
}

impl Store {
    /// Registers `device` (a new id; re-registering an id, even a revoked one, is
    /// refused so an old key can never come back) and audits it as `actor`.
    pub fn register_device(&self, device: &DeviceRecord, actor: &str) -> Result<(), StoreError> {
        check_device_name("id", &device.id)?;
        check_device_name("type", &device.device_type)?;
        let key = self.index_key()?;
        let sealed = key.seal(
            &context(&device.id),
            &serde_json::to_vec(device).expect("a device serializes"),
        )?;
        let txn = self.db.begin_write()?;
        {
            let mut devices = txn.open_table(DEVICES)?;
            if devices.get(device.id.as_str())?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "device {} is registered already (ids are never reused, not even after a revocation)",
                    device.id
                )));
            }
            devices.insert(device.id.as_str(), sealed.as_slice())?;
            audit::append(
                &mut txn.open_table(AUDIT)?,
                AuditEvent {
                    action: AuditAction::DeviceRegister,
                    actor: actor.to_string(),
                    subject: format!("device:{}", device.id),
                    detail: BTreeMap::from([
                        ("type".into(), device.device_type.clone()),
                        ("algorithm".into(), device.key.algorithm().to_string()),
                        ("key".into(), device.key.fingerprint()),
                    ]),
                },
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The device `id`, if registered.
    pub fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let key = self.index_key()?;
        let txn = self.db.begin_read()?;
        let devices = txn.open_table(DEVICES)?;
        let Some(sealed) = devices.get(id)? else {
            return Ok(None);
        };
        open_device(key, id, sealed.value()).map(Some)
    }

    /// Every registered device (revoked ones included), by id.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let key = self.index_key()?;
        let txn = self.db.begin_read()?;
        let devices = txn.open_table(DEVICES)?;
        devices
            .iter()?
            .map(|entry| {
                let (id, sealed) = entry?;
                open_device(key, id.value(), sealed.value())
            })
            .collect()
    }

    /// Revokes device `id` as `actor`; returns it. Revoking twice keeps the first time.
    pub fn revoke_device(&self, id: &str, actor: &str) -> Result<DeviceRecord, StoreError> {
        let key = self.index_key()?;
        let txn = self.db.begin_write()?;
        let device = {
            let mut devices = txn.open_table(DEVICES)?;
            let mut device = match devices.get(id)? {
                Some(sealed) => open_device(key, id, sealed.value())?,
                None => return Err(StoreError::UnknownDevice(id.to_string())),
            };
            if device.revoked.is_none() {
                device.revoked = Some(OffsetDateTime::now_utc());
                let sealed = key.seal(
                    &context(id),
                    &serde_json::to_vec(&device).expect("a device serializes"),
                )?;
                devices.insert(id, sealed.as_slice())?;
                audit::append(
                    &mut txn.open_table(AUDIT)?,
                    AuditEvent {
                        action: AuditAction::DeviceRevoke,
                        actor: actor.to_string(),
                        subject: format!("device:{id}"),
                        detail: BTreeMap::new(),
                    },
                )?;
            }
            device
        };
        txn.commit()?;
        Ok(device)
    }

    /// Writes what the telemetry checkpoint learned of devices (counter, last seen,
    /// firmware), keeping everything else (a revocation made meanwhile stays).
    pub(crate) fn note_devices(
        txn: &redb::WriteTransaction,
        key: &medmesh_crypto::IndexKey,
        seen: &[DeviceProgress],
    ) -> Result<(), StoreError> {
        let mut devices = txn.open_table(DEVICES)?;
        for progress in seen {
            let current = match devices.get(progress.device.as_str())? {
                Some(sealed) => open_device(key, &progress.device, sealed.value())?,
                // Removed meanwhile? Ids are never removed; nothing to note.
                None => continue,
            };
            let mut device = current;
            device.recent.extend(progress.recent.iter().cloned());
            if progress.counter > device.counter {
                device.counter = progress.counter;
                device.last_seen = Some(progress.seen);
                if progress.firmware.is_some() {
                    device.firmware.clone_from(&progress.firmware);
                }
            }
            let floor = device.counter.saturating_sub(REPLAY_WINDOW);
            device.recent.retain(|&c, _| c > floor);
            let sealed = key.seal(
                &context(&device.id),
                &serde_json::to_vec(&device).expect("a device serializes"),
            )?;
            devices.insert(device.id.as_str(), sealed.as_slice())?;
        }
        Ok(())
    }
}

/// What a checkpoint records of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProgress {
    /// The device id.
    pub device: String,
    /// Its highest counter in the checkpointed entries.
    pub counter: u64,
    /// When that message arrived.
    pub seen: OffsetDateTime,
    /// Counter and digest (hex) of each checkpointed message (see
    /// [`DeviceRecord::recent`]).
    pub recent: Vec<(u64, String)>,
    /// The firmware it reported, if it did.
    pub firmware: Option<String>,
}

fn open_device(
    key: &medmesh_crypto::IndexKey,
    id: &str,
    sealed: &[u8],
) -> Result<DeviceRecord, StoreError> {
    let unreadable =
        |reason: String| StoreError::Corrupt(format!("device {id} is unreadable: {reason}"));
    let json = key
        .open(&context(id), sealed)
        .map_err(|e| unreadable(e.to_string()))?;
    serde_json::from_slice(&json).map_err(|e| unreadable(e.to_string()))
}
