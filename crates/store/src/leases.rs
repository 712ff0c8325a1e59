//! Read leases: a record being read keeps its blocks until the last reader is done.
//!
//! A download streams a record chunk by chunk, for as long as the client reads. If the
//! record is removed meanwhile, deleting its block files at once would cut the
//! download half-way. Instead the removal (already committed in the index) marks the
//! record removed and leaves the blocks to its last reader, which deletes them when it
//! finishes; a reader arriving after the removal is refused as if the record were gone.
//! A crash before that deletion leaves unreferenced blocks, which the orphan sweep
//! removes.

use std::collections::HashMap;
use std::sync::Mutex;

use medmesh_core::{Cid, RecordId};
use redb::ReadableTable;

use crate::{Store, StoreError};

/// What the store knows of a record that is being read or removed.
#[derive(Default)]
struct Lease {
    readers: usize,
    removed: bool,
    /// Blocks a removal left for the last reader to delete.
    deferred: Vec<Cid>,
}

/// The read leases of a store.
#[derive(Default)]
pub(crate) struct Leases(Mutex<HashMap<RecordId, Lease>>);

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RecordId, Lease>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Held while a record is read; its drop may delete what a removal deferred.
pub(crate) struct ReadLease<'a> {
    store: &'a Store,
    id: RecordId,
}

impl Store {
    /// Takes a read lease on `id`, or refuses if the record was just removed.
    pub(crate) fn lease(&self, id: &RecordId) -> Result<ReadLease<'_>, StoreError> {
        let mut leases = self.leases.lock();
        let lease = leases.entry(*id).or_default();
        if lease.removed {
            return Err(StoreError::UnknownRecord(id.to_string()));
        }
        lease.readers += 1;
        Ok(ReadLease {
            store: self,
            id: *id,
        })
    }

    /// After a removal committed: deletes `blocks` (those no record references any
    /// more) now, or leaves them to the record's last reader. Returns the blocks and
    /// bytes freed now (deferred blocks count as freed: they go when the read ends).
    pub(crate) fn release_blocks(
        &self,
        id: &RecordId,
        blocks: Vec<Cid>,
    ) -> Result<(u64, u64), StoreError> {
        {
            let mut leases = self.leases.lock();
            let lease = leases.entry(*id).or_default();
            lease.removed = true;
            if lease.readers > 0 {
                let n = blocks.len() as u64;
                lease.deferred.extend(blocks);
                return Ok((n, 0));
            }
        }
        let freed = self.delete_unreferenced(&blocks);
        // New readers were refused while the files went; from now on the record is
        // simply absent (and may be imported again).
        self.leases.lock().remove(id);
        freed
    }

    /// Deletes those of `blocks` no record references, deciding inside a write
    /// transaction so an import committing concurrently either keeps them (it
    /// committed first) or finds them missing (it commits after, and fails cleanly).
    fn delete_unreferenced(&self, blocks: &[Cid]) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_write()?;
        let (mut removed, mut bytes) = (0u64, 0u64);
        {
            let refs = txn.open_table(crate::tables::REFS)?;
            for cid in blocks {
                if refs.get(cid.to_string().as_str())?.is_some() {
                    continue;
                }
                let freed = self.blocks.remove(cid)?;
                removed += u64::from(freed > 0);
                bytes += freed;
            }
        }
        txn.abort()?;
        Ok((removed, bytes))
    }
}

impl Drop for ReadLease<'_> {
    fn drop(&mut self) {
        let deferred = {
            let mut leases = self.store.leases.lock();
            let Some(lease) = leases.get_mut(&self.id) else {
                return;
            };
            lease.readers -= 1;
            if lease.readers > 0 {
                return;
            }
            if !lease.removed {
                leases.remove(&self.id);
                return;
            }
            std::mem::take(&mut lease.deferred)
        };
        if let Err(e) = self.store.delete_unreferenced(&deferred) {
            // The sweep deletes them later; nothing references them.
            tracing::warn!(record = %self.id, error = %e, "deleting a removed record's blocks failed");
        }
        self.store.leases.lock().remove(&self.id);
    }
}
