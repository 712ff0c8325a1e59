//! Blocks that arrive from the network, and the replication settings of records.
//!
//! A record fetched from a peer arrives block by block (the network checks each block
//! against its CID before it is written), and the record enters the index only once its
//! manifest and every chunk are on disk ([`Store::import_record`]), so a fetch that is
//! cut leaves blocks a later fetch reuses (resume) and never a half-indexed record.

use std::collections::BTreeMap;

use medmesh_core::RecordId;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditAction, AuditEvent};
use crate::tables::{AUDIT, RECORDS, REPLICATION};
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

impl Store {
    /// Whether the index holds record `id`.
    pub fn has_record(&self, id: &RecordId) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(index::get_meta(&txn.open_table(RECORDS)?, id)?.is_some())
    }

    /// Indexes a record whose manifest and chunks were all fetched from peers (and
    /// logs it as `record_import` by `actor`). Returns `false` if it was already
    /// indexed. Fails, naming the block, if one is missing.
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
        let meta = &manifest.body.meta;
        let txn = self.db.begin_write()?;
        // Another import may have committed since the check above: decide here, where
        // no other writer can interleave.
        let indexed = index::get_meta(&txn.open_table(RECORDS)?, id)?.is_some();
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
        index::insert_record(&txn, id, meta, &blocks)?;
        audit::append(
            &mut txn.open_table(AUDIT)?,
            AuditEvent {
                action: AuditAction::RecordImport,
                actor: actor.to_string(),
                subject: id.to_string(),
                detail: BTreeMap::from([
                    ("size".into(), meta.size.to_string()),
                    ("owner".into(), meta.owner.to_string()),
                    ("chunks".into(), manifest.body.chunks.len().to_string()),
                ]),
            },
        )?;
        txn.commit()?;
        tracing::info!(record = %id, size = meta.size, "record imported from the network");
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
