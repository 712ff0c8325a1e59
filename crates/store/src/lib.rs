//! medmesh storage: encrypted, content-addressed records on local disk.
//!
//! - [`Blockstore`]: one file per block in sharded directories (as Kubo's flatfs),
//!   fsynced before a write is acknowledged; reads re-hash every block.
//! - The index (record metadata, secondary indexes, block references, audit log) lives
//!   in `redb`: pure Rust, ACID, durable commits. `sled` was rejected: its flush is not
//!   durable and its space amplification is 2–3× (see `docs/architecture.md`).
//! - [`Store`] ties them together: ingest streams a record through encryption into
//!   blocks, then commits its index entries and audit entry in one transaction.
//! - Every table of the index is declared in one module, `tables`.
//! - Registered medical devices ([`DeviceRecord`]) and the telemetry write-ahead log
//!   (`Store::wal_append`: readings durable before they are acknowledged).
//! - Differential-privacy budgets of datasets ([`Store::update_dp_budget`]): each
//!   query's charge and its audit entry in one transaction.
//! - The webhook outbox ([`OutboxEntry`]) keeps messages for delivery across crashes.
//! - The store directory is private to the node's user (directories 0700, files 0600;
//!   [`secure_permissions`] repairs looser modes at every open).

mod audit;
mod blocks;
mod devices;
mod dp_budgets;
mod durable;
mod error;
mod index;
mod leases;
mod links;
mod outbox;
mod permissions;
mod records;
mod replicas;
mod tables;
mod tokens;
mod wal;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, RwLock};

use medmesh_crypto::IndexKey;
use redb::{Database, ReadableDatabase};

pub use audit::{AuditAction, AuditBreak, AuditEntry, AuditEvent, AuditSummary, GENESIS};
pub use blocks::{BlockScan, Blockstore};
pub use devices::{check_device_name, DeviceProgress, DeviceRecord, MAX_DEVICE_ID, REPLAY_WINDOW};
pub use dp_budgets::BudgetUpdate;
pub use durable::atomic_write;
pub use error::StoreError;
pub use links::ConsentLink;
pub use outbox::OutboxEntry;
pub use permissions::secure_permissions;
pub use records::{
    CheckReport, GcReport, OpenRecord, PutRequest, ReadProgress, RecordQuery, RemoveReport,
    DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
pub use replicas::{HeldRecord, Replication};
pub use tokens::{ApiToken, TokenScope};
pub use wal::{WalReplay, MAX_WAL_ENTRY, WAL_DIR};

/// A node's local store: blocks on disk plus the index.
pub struct Store {
    dir: PathBuf,
    blocks: Blockstore,
    db: Database,
    /// Ingest holds it shared while its blocks are not yet referenced by the index;
    /// garbage collection takes it exclusively so it never deletes them.
    gc_guard: RwLock<()>,
    /// Paths whose modes [`secure_permissions`] narrowed when the store was opened.
    repaired_permissions: Vec<PathBuf>,
    /// Records being read, and the blocks of removed ones their readers still need.
    leases: leases::Leases,
    /// Seals the index's metadata and keys its lookups; set by [`Store::unlock_index`].
    index_key: OnceLock<IndexKey>,
    /// The telemetry write-ahead log, once opened ([`Store::wal_open`]).
    wal: Mutex<Option<wal::WalState>>,
}

impl Store {
    /// File name of the index database inside the store directory.
    pub const INDEX_FILE: &'static str = "index.redb";
    /// Directory of block files inside the store directory.
    pub const BLOCKS_DIR: &'static str = "blocks";

    /// Opens the store in `dir`, creating it if needed. Fails with
    /// [`StoreError::Locked`] if another process has it open.
    ///
    /// Everything it creates is private (directories 0700, files 0600), and it narrows
    /// looser modes it finds in `dir` (see [`secure_permissions`] and
    /// [`Store::repaired_permissions`]).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        blocks::create_private_dir(dir)?;
        let blocks = Blockstore::open(&dir.join(Self::BLOCKS_DIR))?;
        let db_path = dir.join(Self::INDEX_FILE);
        // redb creates its file with the default mode (0644 under the usual umask);
        // an empty file made 0600 first is one it initializes, so the index is never
        // readable by others, not even until the repair below.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&db_path)
            .map_err(StoreError::io(format!("creating {}", db_path.display())))?;
        let db = Database::create(&db_path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(dir.to_path_buf()),
            other => StoreError::Index(other.into()),
        })?;
        // Only once the index is ours (locked), so two processes never race on it;
        // this also repairs an index file an older version created 0644.
        let repaired_permissions = secure_permissions(dir)?;
        let txn = db.begin_write()?;
        tables::create_tables(&txn)?;
        txn.commit()?;
        tracing::debug!(dir = %dir.display(), "store opened");
        Ok(Self {
            dir: dir.to_path_buf(),
            blocks,
            db,
            gc_guard: RwLock::new(()),
            repaired_permissions,
            leases: leases::Leases::default(),
            index_key: OnceLock::new(),
            wal: Mutex::new(None),
        })
    }

    /// Gives the store the index key (from [`medmesh_crypto::Keystore::index_key`]):
    /// until then, writing records and reading their metadata fail with
    /// [`StoreError::IndexLocked`]; removal, gc, the audit log, tokens and blocks work
    /// without it. Set once; a later call keeps the first key and returns `false`.
    pub fn unlock_index(&self, key: IndexKey) -> bool {
        self.index_key.set(key).is_ok()
    }

    /// The index key, or [`StoreError::IndexLocked`].
    pub(crate) fn index_key(&self) -> Result<&IndexKey, StoreError> {
        self.index_key.get().ok_or(StoreError::IndexLocked)
    }

    /// Paths that were readable by other users when the store was opened and were
    /// made private then (empty normally); for the node to warn about.
    pub fn repaired_permissions(&self) -> &[PathBuf] {
        &self.repaired_permissions
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes an unprivileged writer may still use on the store's file system.
    pub fn free_bytes(&self) -> Result<u64, StoreError> {
        let stat = rustix::fs::statvfs(&self.dir).map_err(|e| StoreError::Io {
            context: format!("reading the free space of {}", self.dir.display()),
            source: e.into(),
        })?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// The block files.
    pub fn blocks(&self) -> &Blockstore {
        &self.blocks
    }

    /// How many of this node's own records the index holds.
    pub fn record_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(tables::RECORDS)?.len()?)
    }

    /// How many records the node holds for other institutions (replicas, fetched
    /// copies).
    pub fn held_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(tables::HELD)?.len()?)
    }

    /// Appends an entry to the audit log (durably) and returns it.
    pub fn audit(&self, event: AuditEvent) -> Result<AuditEntry, StoreError> {
        let txn = self.db.begin_write()?;
        let entry = audit::append(&mut txn.open_table(tables::AUDIT)?, event)?;
        txn.commit()?;
        Ok(entry)
    }

    /// Appends several entries in one transaction: one fsync for all of them (group
    /// commit for callers that log many small events, such as refused requests).
    pub fn audit_batch(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(tables::AUDIT)?;
            for event in events {
                audit::append(&mut table, event)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Walks the audit chain; `Ok(Err(..))` names the first bad entry.
    pub fn audit_verify(&self) -> Result<Result<AuditSummary, AuditBreak>, StoreError> {
        let txn = self.db.begin_read()?;
        audit::verify(&txn.open_table(tables::AUDIT)?)
    }

    /// Up to `limit` audit entries from position `from`.
    pub fn audit_page(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        audit::page(&txn.open_table(tables::AUDIT)?, from, limit)
    }
}

// A poisoned lock only means another thread panicked while holding it; the state
// behind it (a file handle and counters) stays usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
