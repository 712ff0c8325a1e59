//! Blocks that arrive from the network, and the replication settings of records.
//!
//! A record fetched from a peer arrives block by block (the network checks each block
//! against its CID before it is written), and the record enters the index only once its
//! manifest and every chunk are on disk ([`Store::import_record`]), so a fetch that is
//! cut leaves blocks a later fetch reuses (resume) and never a half-indexed record.
//!
//! An imported record is *held*, not owned: its metadata is sealed for its owner, so it
//! goes into a table of its own ([`HeldRecord`]), never into this node's listing or
//! search.

use std::collections::BTreeMap;

use medmesh_core::{RecordId, RecordMeta};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::{self, AuditAction, AuditEvent};
use crate::tables::{AUDIT, HELD, RECORDS, REPLICATION};
use crate::{index, Store, StoreError};

/// How a record's owner wants it replicated: `copies` peers out of `candidates` should
/// hold it; `holders` are the peers that last confirmed they do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// How many peers should hold a copy.
    pub copies: u32,
    /// Peers the owner allows to hold copies (PeerIds), in order of preference.
    pub candidates: Vec<String>,
    /// Peers that confirmed a copy at the last check.
    pub holders: Vec<String>,
}

/// A record this node holds for another institution: what its public manifest says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRecord {
    /// The owner's certificate fingerprint.
    pub owner: String,
    /// Number of chunk blocks.
    pub chunks: u64,
    /// When this node indexed it.
    #[serde(with = "time::serde::rfc3339")]
    pub held_since: OffsetDateTime,
}

/// Reads a held record's entry from any transaction's `HELD` table.
pub(crate) fn get_held(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &RecordId,
) -> Result<Option<HeldRecord>, StoreError> {
    let Some(v) = table.get(id.to_string().as_str())? else {
        return Ok(None);
    };
    parse_held(id, v.value()).map(Some)
}

/// Parses a `HELD` value.
pub(crate) fn parse_held(id: &RecordId, bytes: &[u8]) -> Result<HeldRecord, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("held record {id} is unreadable: {e}")))
}

impl Store {
    /// Whether record `id` is stored here (own or held for another institution).
    pub fn has_record(&self, id: &RecordId) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(index::get_entry(&txn.open_table(RECORDS)?, id)?.is_some()
            || txn
                .open_table(HELD)?
                .get(id.to_string().as_str())?
                .is_some())
    }

    /// The record `id` if it is held here for another institution.
    pub fn held(&self, id: &RecordId) -> Result<Option<HeldRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        get_held(&txn.open_table(HELD)?, id)
    }

    /// Indexes a record whose manifest and chunks were all fetched from peers, as held
    /// for its owner (and logs it as `record_import` by `actor`). Returns `false` if it
    /// was already stored. Fails, naming the block, if one is missing.
    ///
    /// Of concurrent imports of one record exactly one returns `true`: the "already
    /// indexed?" check that decides is made inside the write transaction, and redb
    /// serializes write transactions, so only one of them takes references on the
    /// record's blocks.
    pub fn import_record(&self, id: &RecordId, actor: &str) -> Result<bool, StoreError> {
        let _guard = self.gc_guard.read().unwrap_or_else(|e| e.into_inner());
        // Cheap early answer for the common repeat; not the decision (see below).
        if self.has_record(id)? {
            return Ok(false);
        }
        let manifest = medmesh_core::Manifest::decode(&self.blocks.get(id.cid())?)?;
        let mut blocks = manifest.body.chunks.clone();
        blocks.push(*id.cid());
        let txn = self.db.begin_write()?;
        // Another import may have committed since the check above: decide here, where
        // no other writer can interleave.
        let indexed = index::get_entry(&txn.open_table(RECORDS)?, id)?.is_some()
            || get_held(&txn.open_table(HELD)?, id)?.is_some();
        if indexed {
            txn.abort()?;
            tracing::debug!(record = %id, "record was imported concurrently");
            return Ok(false);
        }
        // Inside the transaction too: a removal of an earlier copy deletes its files
        // under a write transaction after checking no record references them, so the
        // blocks seen here stay until this import's references are committed.
        if let Some(missing) = blocks.iter().find(|c| !self.blocks.has(c)) {
            txn.abort()?;
            return Err(StoreError::MissingBlock {
                cid: missing.to_string(),
                record: Some(id.to_string()),
            });
        }
        let held = HeldRecord {
            owner: manifest.body.owner.to_string(),
            chunks: manifest.body.chunks.len() as u64,
            held_since: OffsetDateTime::now_utc(),
        };
        let json = serde_json::to_vec(&held).expect("held records serialize");
        txn.open_table(HELD)?
            .insert(id.to_string().as_str(), json.as_slice())?;
        index::take_refs(&txn, &blocks)?;
        audit::append(
            &mut txn.open_table(AUDIT)?,
            AuditEvent {
                action: AuditAction::RecordImport,
                actor: actor.to_string(),
                subject: id.to_string(),
                detail: BTreeMap::from([
                    ("owner".into(), held.owner.clone()),
                    ("chunks".into(), held.chunks.to_string()),
                ]),
            },
        )?;
        txn.commit()?;
        tracing::info!(record = %id, owner = %held.owner, "record imported from the network");
        Ok(true)
    }

    /// Makes a held record one of this node's own: for a record of this institution
    /// fetched back from peers (a data dir restored from replicas, another site of the
    /// institution), once its metadata was opened with the institution's key. Its blocks
    /// keep their references. Returns `false` if it was not held here.
    pub fn adopt_record(&self, id: &RecordId, meta: &RecordMeta) -> Result<bool, StoreError> {
        let key = self.index_key()?;
        let txn = self.db.begin_write()?;
        let Some(held) = get_held(&txn.open_table(HELD)?, id)? else {
            txn.abort()?;
            return Ok(false);
        };
        if held.owner != meta.owner.as_str() {
            txn.abort()?;
            return Err(StoreError::InvalidInput(format!(
                "record {id} is owned by {}, not by {}",
                held.owner, meta.owner
            )));
        }
        txn.open_table(HELD)?.remove(id.to_string().as_str())?;
        index::insert_entries(&txn, key, id, meta)?;
        txn.commit()?;
        tracing::info!(record = %id, "a record of this institution fetched from peers is its own again");
        Ok(true)
    }

    /// Sets how record `id` (which must be stored here) is replicated.
    pub fn set_replication(
        &self,
        id: &RecordId,
        replication: &Replication,
    ) -> Result<(), StoreError> {
        if !self.has_record(id)? {
            return Err(StoreError::UnknownRecord(id.to_string()));
        }
        let json = serde_json::to_vec(replication).expect("replication serializes");
        let txn = self.db.begin_write()?;
        txn.open_table(REPLICATION)?
            .insert(id.to_string().as_str(), json.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The replication settings of record `id`, if it has any.
    pub fn replication(&self, id: &RecordId) -> Result<Option<Replication>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REPLICATION)?;
        let Some(value) = table.get(id.to_string().as_str())? else {
            return Ok(None);
        };
        decode_replication(id, value.value()).map(Some)
    }

    /// Every record with replication settings.
    pub fn replications(&self) -> Result<Vec<(RecordId, Replication)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REPLICATION)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let id: RecordId = key.value().parse()?;
            out.push((id, decode_replication(&id, value.value())?));
        }
        Ok(out)
    }
}

fn decode_replication(id: &RecordId, bytes: &[u8]) -> Result<Replication, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "replication settings of record {id} are unreadable: {e}"
        ))
    })
}
