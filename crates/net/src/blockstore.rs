//! The storage the network serves from and fetches into, behind a trait so the network
//! does not depend on how blocks are kept (and tests can put a lying peer on the wire).

use std::collections::BTreeSet;

use libp2p::PeerId;
use medmesh_core::{Cid, RecordId};
use medmesh_store::{Store, StoreError};

use crate::NetError;

/// Blocks and records as the network sees them. Every method may block (file I/O, a
/// database transaction): the network calls them on blocking threads
/// (`spawn_blocking`), never on the async executor.
pub trait Blockstore: Send + Sync + 'static {
    /// Whether the block is stored here.
    fn has(&self, cid: &Cid) -> bool;
    /// A stored block's bytes, `None` if it is not stored here.
    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>, NetError>;
    /// A stored block's bytes for a peer that checks them against `cid` itself (the
    /// fast path's receiver does), so the store may skip its own hash.
    fn get_for_peer(&self, cid: &Cid) -> Result<Option<Vec<u8>>, NetError> {
        self.get(cid)
    }
    /// Stores a block whose bytes the caller has checked against `cid`; durable when it
    /// returns.
    fn put(&self, cid: &Cid, bytes: &[u8]) -> Result<(), NetError>;
    /// Indexes a record whose manifest and chunks are all stored; `false` if it already
    /// was. `from` is the peer it came from (for the audit log).
    fn import_record(&self, id: &RecordId, from: &PeerId) -> Result<bool, NetError>;
    /// Bytes still free for blocks, when known (replicas are refused that would leave
    /// less than `min_free_disk_bytes`).
    fn free_bytes(&self) -> Option<u64> {
        None
    }
}

impl Blockstore for Store {
    fn has(&self, cid: &Cid) -> bool {
        self.blocks().has(cid)
    }

    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>, NetError> {
        match self.blocks().get(cid) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StoreError::MissingBlock { .. }) => Ok(None),
            Err(e) => Err(NetError::Store(e)),
        }
    }

    fn get_for_peer(&self, cid: &Cid) -> Result<Option<Vec<u8>>, NetError> {
        match self.blocks().get_unverified(cid) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StoreError::MissingBlock { .. }) => Ok(None),
            Err(e) => Err(NetError::Store(e)),
        }
    }

    fn put(&self, cid: &Cid, bytes: &[u8]) -> Result<(), NetError> {
        let shard = self.blocks().put(cid, bytes)?;
        Ok(self.blocks().sync_dirs(&BTreeSet::from([shard]))?)
    }

    fn import_record(&self, id: &RecordId, from: &PeerId) -> Result<bool, NetError> {
        Ok(Store::import_record(self, id, &format!("peer:{from}"))?)
    }

    fn free_bytes(&self) -> Option<u64> {
        Store::free_bytes(self).ok()
    }
}
