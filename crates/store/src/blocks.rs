//! Blocks as files: one file per block in a sharded directory, as Kubo's flatfs.
//!
//! A block is written to a temp file, fsynced and renamed into place; the caller then
//! fsyncs the shard directories ([`Blockstore::sync_dirs`]) before acknowledging, so an
//! acknowledged block survives a crash. Reads re-hash the bytes and reject a block that
//! does not match its CID.
//!
//! Everything is private to the node's user: directories 0700, files (blocks and their
//! temp files) 0600, set at creation so no file is ever readable by others.

use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use medmesh_core::{verify_cid, Cid, CoreError, MAX_BLOCK_SIZE};

use crate::StoreError;

const TEMP_PREFIX: &str = ".tmp-";
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);
/// Mode of block and temp files: the owner reads and writes, nobody else.
const FILE_MODE: u32 = 0o600;
/// Mode of the root and shard directories.
const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(StoreError::io(format!("creating {}", dir.display())))
}

/// How long ago a file was last modified; zero if unknown or in the future (clock
/// change), so an unknown age never makes a file look old.
pub(crate) fn file_age(meta: &fs::Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO)
}

/// Content-addressed block files under one root directory.
pub struct Blockstore {
    root: PathBuf,
}

impl Blockstore {
    /// Opens (creating if needed) a blockstore rooted at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        create_private_dir(root)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Directory holding `cid`: the next-to-last two characters of its text form.
    fn shard_dir(&self, key: &str) -> PathBuf {
        let n = key.len();
        self.root.join(&key[n - 3..n - 1])
    }

    fn path_of(&self, cid: &Cid) -> PathBuf {
        let key = cid.to_string();
        self.shard_dir(&key).join(format!("{key}.data"))
    }

    /// Writes a block whose CID the caller computed from `bytes`; returns the shard
    /// directory to sync. An existing block is left as is (content-addressed).
    pub fn put(&self, cid: &Cid, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        if bytes.len() > MAX_BLOCK_SIZE {
            return Err(StoreError::InvalidInput(format!(
                "block of {} bytes exceeds the {MAX_BLOCK_SIZE}-byte limit",
                bytes.len()
            )));
        }
        let path = self.path_of(cid);
        let dir = path
            .parent()
            .expect("block paths have a shard dir")
            .to_path_buf();
        if path.exists() {
            return Ok(dir);
        }
        create_private_dir(&dir)?;
        let temp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // Created 0600 (not chmod-ed later), so the bytes are never readable by others.
        let create_temp = || {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&temp)
        };
        let write = || -> std::io::Result<()> {
            let mut file = match create_temp() {
                // Left by a killed process that had our pid (the counter restarts at 0):
                // nobody writes it any more.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    fs::remove_file(&temp)?;
                    create_temp()?
                }
                other => other?,
            };
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&temp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&temp);
            StoreError::Io {
                context: format!("writing block {}", path.display()),
                source: e,
            }
        })?;
        Ok(dir)
    }

    /// Fsyncs directories that gained entries, making the renames durable.
    pub fn sync_dirs(&self, dirs: &BTreeSet<PathBuf>) -> Result<(), StoreError> {
        for dir in dirs.iter().chain(std::iter::once(&self.root)) {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(StoreError::io(format!("syncing {}", dir.display())))?;
        }
        Ok(())
    }

    /// Reads a block and checks its bytes hash to `cid`.
    pub fn get(&self, cid: &Cid) -> Result<Vec<u8>, StoreError> {
        let bytes = self.get_unverified(cid)?;
        verify_cid(cid, &bytes).map_err(|e| match e {
            CoreError::HashMismatch { .. } => {
                StoreError::Corrupt(format!("{e} (file {})", self.path_of(cid).display()))
            }
            other => other.into(),
        })?;
        Ok(bytes)
    }

    /// Reads a block without hashing it: for handing it to a peer that verifies every
    /// block itself (the fast path), where a second hash would only cost time.
    pub fn get_unverified(&self, cid: &Cid) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(cid);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::MissingBlock {
                    cid: cid.to_string(),
                    record: None,
                })
            }
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()))(e)),
        };
        Ok(bytes)
    }

    /// Whether a block file exists (its bytes are not checked).
    pub fn has(&self, cid: &Cid) -> bool {
        self.path_of(cid).is_file()
    }

    /// Deletes a block; returns the bytes freed (0 if it was not there).
    pub fn remove(&self, cid: &Cid) -> Result<u64, StoreError> {
        let path = self.path_of(cid);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()))(e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(size),
            // Removed by someone else since the metadata call: already gone is what the
            // caller wants, and those bytes are not ours to report.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::io(format!("removing {}", path.display()))(e)),
        }
    }

    /// How long ago block `cid` was written (`None` if it is not there).
    pub(crate) fn age(&self, cid: &Cid) -> Result<Option<Duration>, StoreError> {
        let path = self.path_of(cid);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(file_age(&m))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()))(e)),
        }
    }

    /// Every stored block's CID, plus files that are not blocks (leftover temp files
    /// from an interrupted write, or foreign files) for the caller to report or remove.
    pub fn scan(&self) -> Result<BlockScan, StoreError> {
        let mut scan = BlockScan::default();
        let ctx = |p: &Path| format!("listing {}", p.display());
        for shard in fs::read_dir(&self.root).map_err(StoreError::io(ctx(&self.root)))? {
            let shard = shard.map_err(StoreError::io(ctx(&self.root)))?.path();
            if !shard.is_dir() {
                scan.stray.push(shard);
                continue;
            }
            for entry in fs::read_dir(&shard).map_err(StoreError::io(ctx(&shard)))? {
                let path = entry.map_err(StoreError::io(ctx(&shard)))?.path();
                let cid = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".data"))
                    .and_then(|n| n.parse::<Cid>().ok());
                match cid {
                    Some(cid) => scan.blocks.push(cid),
                    None => scan.stray.push(path),
                }
            }
        }
        Ok(scan)
    }
}

/// What [`Blockstore::scan`] found.
#[derive(Debug, Default)]
pub struct BlockScan {
    /// Stored blocks.
    pub blocks: Vec<Cid>,
    /// Files that are not blocks (e.g. temp files of an interrupted write).
    pub stray: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use medmesh_core::{cid_of, Codec};

    #[test]
    fn put_get_has_remove_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let bs = Blockstore::open(dir.path()).unwrap();
        let cid = cid_of(Codec::Raw, b"block");
        assert!(!bs.has(&cid));
        assert!(matches!(bs.get(&cid), Err(StoreError::MissingBlock { .. })));
        let shard = bs.put(&cid, b"block").unwrap();
        bs.sync_dirs(&BTreeSet::from([shard])).unwrap();
        assert!(bs.has(&cid));
        assert_eq!(bs.get(&cid).unwrap(), b"block");

        fs::write(bs.path_of(&cid), b"blocc").unwrap();
        let err = bs.get(&cid).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");

        assert_eq!(bs.scan().unwrap().blocks, vec![cid]);
        assert_eq!(bs.remove(&cid).unwrap(), 5);
        assert_eq!(bs.remove(&cid).unwrap(), 0);
        assert!(bs.scan().unwrap().blocks.is_empty());
    }

    #[test]
    fn oversized_blocks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bs = Blockstore::open(dir.path()).unwrap();
        let big = vec![0u8; MAX_BLOCK_SIZE + 1];
        assert!(matches!(
            bs.put(&cid_of(Codec::Raw, &big), &big),
            Err(StoreError::InvalidInput(_))
        ));
    }
}
