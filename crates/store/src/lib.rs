//! medmesh storage: encrypted, content-addressed records on local disk.
//!
//! - [`Blockstore`]: one file per block in sharded directories (as Kubo's flatfs),
//!   fsynced before a write is acknowledged; reads re-hash every block.
//! - The index (record metadata, secondary indexes, block references, audit log) lives
//!   in `redb`: pure Rust, ACID, durable commits. `sled` was rejected: its flush is not
//!   durable and its space amplification is 2–3× (see `docs/architecture.md`).
//! - [`Store`] ties them together: ingest streams a record through encryption into
//!   blocks, then commits its index entries and audit entry in one transaction.

mod audit;
mod blocks;
mod error;
mod index;
mod links;
mod records;
mod replicas;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase};

pub use audit::{AuditAction, AuditBreak, AuditEntry, AuditEvent, AuditSummary, GENESIS};
pub use blocks::{BlockScan, Blockstore};
pub use error::StoreError;
pub use links::ConsentLink;
pub use records::{
    CheckReport, GcReport, OpenRecord, PutRequest, ReadProgress, RecordQuery, RemoveReport,
    DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
pub use replicas::Replication;
pub use tokens::{ApiToken, TokenScope};

/// A node's local store: blocks on disk plus the index.
pub struct Store {
    dir: PathBuf,
    blocks: Blockstore,
    db: Database,
    /// Ingest holds it shared while its blocks are not yet referenced by the index;
    /// garbage collection takes it exclusively so it never deletes them.
    gc_guard: RwLock<()>,
}

impl Store {
    /// File name of the index database inside the store directory.
    pub const INDEX_FILE: &'static str = "index.redb";
    /// Directory of block files inside the store directory.
    pub const BLOCKS_DIR: &'static str = "blocks";

    /// Opens the store in `dir`, creating it if needed. Fails with
    /// [`StoreError::Locked`] if another process has it open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(StoreError::io(format!("creating {}", dir.display())))?;
        let blocks = Blockstore::open(&dir.join(Self::BLOCKS_DIR))?;
        let db_path = dir.join(Self::INDEX_FILE);
        let db = Database::create(&db_path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(dir.to_path_buf()),
            other => StoreError::Index(other.into()),
        })?;
        let txn = db.begin_write()?;
        index::create_tables(&txn)?;
        txn.commit()?;
        tracing::debug!(dir = %dir.display(), "store opened");
        Ok(Self {
            dir: dir.to_path_buf(),
            blocks,
            db,
            gc_guard: RwLock::new(()),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The block files.
    pub fn blocks(&self) -> &Blockstore {
        &self.blocks
    }

    /// How many records the index holds.
    pub fn record_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(index::RECORDS)?.len()?)
    }

    /// Appends an entry to the audit log (durably) and returns it.
    pub fn audit(&self, event: AuditEvent) -> Result<AuditEntry, StoreError> {
        let txn = self.db.begin_write()?;
        let entry = audit::append(&mut txn.open_table(audit::AUDIT)?, event)?;
        txn.commit()?;
        Ok(entry)
    }

    /// Walks the audit chain; `Ok(Err(..))` names the first bad entry.
    pub fn audit_verify(&self) -> Result<Result<AuditSummary, AuditBreak>, StoreError> {
        let txn = self.db.begin_read()?;
        audit::verify(&txn.open_table(audit::AUDIT)?)
    }

    /// Up to `limit` audit entries from position `from`.
    pub fn audit_page(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        audit::page(&txn.open_table(audit::AUDIT)?, from, limit)
    }
}
