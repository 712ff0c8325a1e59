//! The webhook outbox: messages waiting to be delivered to an endpoint, kept in the
//! index so that a message accepted by [`Store::outbox_enqueue`] survives a crash and
//! is delivered at least once.
//!
//! Each message gets its id (`msg_` + 32 hex digits) when it is enqueued, and keeps it
//! through every retry and restart: receivers use it to recognise a message they have
//! already processed. The body is kept as the exact text that is signed and sent, so a
//! retry sends the same bytes.
//!
//! Entries are keyed by a sequence number (oldest first). The sequence number orders
//! entries; the id identifies one: every operation on an entry checks both, so an entry
//! that was delivered or given up meanwhile is never touched by a stale caller.
//! A message given up on leaves the outbox and becomes a `webhook_undelivered` audit
//! entry holding its id, endpoint, body, attempts and last error (the dead letter).

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::{self, AuditAction, AuditEvent};
use crate::tables::{AUDIT, OUTBOX};
use crate::{Store, StoreError};

/// Longest error text kept with an entry (longer ones are cut).
const MAX_ERROR_LEN: usize = 512;

/// A message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Its position in the outbox (the key; older entries have smaller numbers).
    #[serde(skip)]
    pub seq: u64,
    /// Its delivery id, `msg_` + 32 hex digits, the same for every attempt.
    pub id: String,
    /// The name of the endpoint it goes to.
    pub endpoint: String,
    /// The exact body to send (JSON text).
    pub body: String,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// When it may be attempted next (unix milliseconds).
    pub next_attempt_unix_ms: u64,
    /// When it was enqueued.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn unix_ms(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn new_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Corrupt("the system random number generator failed".into()))?;
    Ok(format!("msg_{}", hex::encode(bytes)))
}

fn encode(entry: &OutboxEntry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("outbox entries serialize")
}

fn decode(seq: u64, bytes: &[u8]) -> Result<OutboxEntry, StoreError> {
    let mut entry: OutboxEntry = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("outbox entry {seq} is unreadable: {e}")))?;
    entry.seq = seq;
    Ok(entry)
}

/// The stored version of `entry`, if it is still in the outbox (same position, same id).
fn current(
    table: &impl ReadableTable<u64, &'static [u8]>,
    entry: &OutboxEntry,
) -> Result<Option<OutboxEntry>, StoreError> {
    let Some(value) = table.get(entry.seq)? else {
        return Ok(None);
    };
    let stored = decode(entry.seq, value.value())?;
    Ok((stored.id == entry.id).then_some(stored))
}

fn truncate(error: &str) -> String {
    if error.len() <= MAX_ERROR_LEN {
        return error.to_string();
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

impl Store {
    /// Enqueues `body` for the endpoint named `endpoint`, durably (committed before it
    /// returns), due at once. Returns the message's id.
    pub fn outbox_enqueue(&self, endpoint: &str, body: &str) -> Result<String, StoreError> {
        let mut ids = self.outbox_enqueue_all(&[(endpoint, body)])?;
        Ok(ids.pop().expect("one message enqueued"))
    }

    /// Enqueues several `(endpoint, body)` messages in one transaction (one fsync for
    /// all), in order. Returns their ids, in the same order.
    pub fn outbox_enqueue_all(&self, messages: &[(&str, &str)]) -> Result<Vec<String>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        if messages.iter().any(|(endpoint, _)| endpoint.is_empty()) {
            return Err(StoreError::InvalidInput(
                "an outbox message needs the name of its endpoint".into(),
            ));
        }
        let created = OffsetDateTime::now_utc();
        let now = unix_ms(created);
        let mut ids = Vec::with_capacity(messages.len());
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(OUTBOX)?;
            let first = match table.last()? {
                Some((key, _)) => key.value() + 1,
                None => 0,
            };
            for (seq, (endpoint, body)) in (first..).zip(messages) {
                let entry = OutboxEntry {
                    seq,
                    id: new_id()?,
                    endpoint: endpoint.to_string(),
                    body: body.to_string(),
                    attempts: 0,
                    next_attempt_unix_ms: now,
                    created,
                    last_error: None,
                };
                table.insert(seq, encode(&entry).as_slice())?;
                ids.push(entry.id);
            }
        }
        txn.commit()?;
        Ok(ids)
    }

    /// Up to `limit` entries due at `now_unix_ms` (next attempt at or before it), oldest
    /// first.
    pub fn outbox_due(
        &self,
        now_unix_ms: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut due = Vec::new();
        if limit == 0 {
            return Ok(due);
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        for item in table.iter()? {
            let (key, value) = item?;
            let entry = decode(key.value(), value.value())?;
            if entry.next_attempt_unix_ms <= now_unix_ms {
                due.push(entry);
                if due.len() >= limit {
                    break;
                }
            }
        }
        Ok(due)
    }

    /// The earliest next attempt of the entries not yet due at `after_unix_ms` (strictly
    /// later than it), if any: when the delivery worker has work next.
    pub fn outbox_next_attempt(&self, after_unix_ms: u64) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut next: Option<u64> = None;
        for item in table.iter()? {
            let (key, value) = item?;
            let at = decode(key.value(), value.value())?.next_attempt_unix_ms;
            if at > after_unix_ms {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        Ok(next)
    }

    /// Removes a delivered entry. `false` if it was no longer in the outbox.
    pub fn outbox_delivered(&self, entry: &OutboxEntry) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let removed = {
            let mut table = txn.open_table(OUTBOX)?;
            let found = current(&table, entry)?.is_some();
            if found {
                table.remove(entry.seq)?;
            }
            found
        };
        if removed {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(removed)
    }

    /// Records a failed attempt of `entry` (its attempts + 1, `error`) and when to try
    /// again. `false` if it was no longer in the outbox.
    pub fn outbox_retry(
        &self,
        entry: &OutboxEntry,
        next_attempt_unix_ms: u64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let updated = {
            let mut table = txn.open_table(OUTBOX)?;
            match current(&table, entry)? {
                Some(mut stored) => {
                    stored.attempts = stored.attempts.saturating_add(1);
                    stored.next_attempt_unix_ms = next_attempt_unix_ms;
                    stored.last_error = Some(truncate(error));
                    table.insert(entry.seq, encode(&stored).as_slice())?;
                    true
                }
                None => false,
            }
        };
        if updated {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(updated)
    }

    /// Gives up on `entry` after its last attempt failed with `error` (counted in its
    /// attempts): removes it from the outbox and, in the same transaction, logs it as a
    /// `webhook_undelivered` audit entry by `actor`, with its id (the subject),
    /// endpoint, attempts, error, creation time and body, so it can be replayed by hand.
    /// `false` if it was no longer in the outbox.
    pub fn outbox_give_up(
        &self,
        entry: &OutboxEntry,
        error: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let stored = {
            let mut table = txn.open_table(OUTBOX)?;
            let stored = current(&table, entry)?;
            if stored.is_some() {
                table.remove(entry.seq)?;
            }
            stored
        };
        let Some(stored) = stored else {
            txn.abort()?;
            return Ok(false);
        };
        let created = stored
            .created
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        audit::append(
            &mut txn.open_table(AUDIT)?,
            AuditEvent {
                action: AuditAction::WebhookUndelivered,
                actor: actor.to_string(),
                subject: stored.id.clone(),
                detail: BTreeMap::from([
                    ("endpoint".into(), stored.endpoint.clone()),
                    (
                        "attempts".into(),
                        stored.attempts.saturating_add(1).to_string(),
                    ),
                    ("error".into(), truncate(error)),
                    ("created".into(), created),
                    ("body".into(), stored.body.clone()),
                ]),
            },
        )?;
        txn.commit()?;
        tracing::debug!(id = %stored.id, endpoint = %stored.endpoint, "outbox entry given up");
        Ok(true)
    }

    /// How many messages wait in the outbox.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OUTBOX)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        (dir, store)
    }

    #[test]
    fn entries_keep_their_id_through_retries_and_leave_when_delivered() {
        let (_dir, store) = store();
        let ids = store
            .outbox_enqueue_all(&[("a", r#"{"n":1}"#), ("b", r#"{"n":2}"#)])
            .unwrap();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        for id in &ids {
            assert!(id.starts_with("msg_") && id.len() == 4 + 32, "{id}");
        }
        assert_eq!(store.outbox_len().unwrap(), 2);

        let due = store.outbox_due(u64::MAX, 10).unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(
            (due[0].id.as_str(), due[0].endpoint.as_str()),
            (ids[0].as_str(), "a")
        );
        assert_eq!(due[0].body, r#"{"n":1}"#);
        assert!(due[0].seq < due[1].seq);
        assert_eq!(store.outbox_due(u64::MAX, 1).unwrap().len(), 1);

        // A failure postpones the first one; the second stays due.
        let later = due[0].next_attempt_unix_ms + 60_000;
        assert!(store.outbox_retry(&due[0], later, "HTTP 500").unwrap());
        let now = due[0].next_attempt_unix_ms;
        let still_due = store.outbox_due(now, 10).unwrap();
        assert_eq!(still_due.len(), 1);
        assert_eq!(still_due[0].id, ids[1]);
        assert_eq!(store.outbox_next_attempt(now).unwrap(), Some(later));
        let retried = &store.outbox_due(later, 10).unwrap()[0];
        assert_eq!(retried.id, ids[0]);
        assert_eq!(retried.attempts, 1);
        assert_eq!(retried.last_error.as_deref(), Some("HTTP 500"));

        assert!(store.outbox_delivered(retried).unwrap());
        assert!(!store.outbox_delivered(retried).unwrap(), "already gone");
        assert!(!store.outbox_retry(retried, later, "x").unwrap());
        assert_eq!(store.outbox_len().unwrap(), 1);
    }

    #[test]
    fn a_stale_entry_never_touches_a_newer_one_at_its_position() {
        let (_dir, store) = store();
        store.outbox_enqueue("a", "{}").unwrap();
        let old = store.outbox_due(u64::MAX, 1).unwrap().remove(0);
        assert!(store.outbox_delivered(&old).unwrap());
        // The outbox was empty: the next entry may take the same position.
        let new_id = store.outbox_enqueue("a", "{}").unwrap();
        assert!(!store.outbox_delivered(&old).unwrap());
        assert!(!store.outbox_give_up(&old, "x", "test").unwrap());
        assert_eq!(store.outbox_due(u64::MAX, 1).unwrap()[0].id, new_id);
    }

    #[test]
    fn entries_survive_a_reopen_and_giving_up_leaves_a_dead_letter_in_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let id = {
            let store = Store::open(&path).unwrap();
            let id = store.outbox_enqueue("ops", r#"{"type":"x"}"#).unwrap();
            let entry = store.outbox_due(u64::MAX, 1).unwrap().remove(0);
            store.outbox_retry(&entry, 0, "connection refused").unwrap();
            id
        };
        let store = Store::open(&path).unwrap();
        let entry = store.outbox_due(u64::MAX, 1).unwrap().remove(0);
        assert_eq!(entry.id, id);
        assert_eq!(entry.attempts, 1);

        assert!(store
            .outbox_give_up(&entry, &"e".repeat(2 * MAX_ERROR_LEN), "webhooks")
            .unwrap());
        assert_eq!(store.outbox_len().unwrap(), 0);
        let log = store.audit_page(0, 100).unwrap();
        let dead = log
            .iter()
            .find(|e| e.action == AuditAction::WebhookUndelivered)
            .expect("a dead letter");
        assert_eq!(dead.subject, id);
        assert_eq!(dead.actor, "webhooks");
        assert_eq!(dead.detail["endpoint"], "ops");
        assert_eq!(dead.detail["attempts"], "2");
        assert_eq!(dead.detail["body"], r#"{"type":"x"}"#);
        assert!(dead.detail["error"].len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert!(store.audit_verify().unwrap().is_ok());
    }
}
