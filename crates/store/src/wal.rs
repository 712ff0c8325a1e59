//! The telemetry write-ahead log: where a device reading becomes durable before the
//! node acknowledges it, long before it is batched into a record.
//!
//! Entries are opaque bytes to the store (the service encodes readings in them), each
//! sealed under the index key bound to its sequence number, so the log on disk shows
//! how many messages arrived and when, nothing of what they say. They are appended in
//! groups: one `write` and one `fdatasync` for every message that arrived meanwhile (a
//! group commit), which is what lets a node acknowledge tens of thousands of readings a
//! second on one disk.
//!
//! Files: `telemetry-wal/<first seq, 20 digits>.wal`, each a run of frames `len (u32
//! BE) ‖ seq (u64 BE) ‖ sealed entry`. A crash mid-append leaves a torn last frame, which
//! the next open cuts off (those entries were never acknowledged).
//!
//! Progress lives in the index (`TELEMETRY`): a flush first records `flushing = S` (and
//! starts a new file), writes the records of every entry up to `S` with idempotency keys
//! derived from `S`, then commits `checkpoint = S` together with the devices' counters,
//! and deletes the files it covered. A restart that finds `flushing` set repeats that
//! flush: the records already written come back by their keys, none twice.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use redb::ReadableDatabase;

use crate::devices::DeviceProgress;
use crate::tables::TELEMETRY;
use crate::{Store, StoreError};

/// Directory of the log inside the store directory.
pub const WAL_DIR: &str = "telemetry-wal";
/// Largest entry accepted (a device message is at most 256 KiB; this leaves room).
pub const MAX_WAL_ENTRY: usize = 1024 * 1024;

const FRAME_HEADER: usize = 4 + 8;

/// What [`Store::wal_open`] found: the entries not yet in records.
#[derive(Debug, Default)]
pub struct WalReplay {
    /// Every entry up to this sequence number is in records.
    pub checkpoint: u64,
    /// A flush that was under way when the node stopped: repeat it (same `S`) before
    /// anything else.
    pub flushing: Option<u64>,
    /// Entries after the checkpoint, in order: `(seq, bytes)`.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Bytes of a torn last frame that were cut off.
    pub torn_bytes: u64,
}

/// The open log's state (inside [`Store`], behind a mutex).
pub(crate) struct WalState {
    dir: PathBuf,
    file: File,
    /// First sequence number of the current file.
    file_first: u64,
    /// Entries in the current file.
    file_entries: u64,
    next_seq: u64,
    /// A failed append could not be cut back: nothing more is appended.
    poisoned: bool,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

fn context(seq: u64) -> Vec<u8> {
    let mut out = b"medmesh/telemetry-wal/v1\0".to_vec();
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

/// The log's files, oldest first: `(first seq, path)`.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(StoreError::io(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn open_segment(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(StoreError::io(format!("opening {}", path.display())))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(format!("syncing {}", dir.display())))
}

impl Store {
    fn telemetry_value(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TELEMETRY)?;
        Ok(table.get(name)?.map(|v| v.value()))
    }

    /// Opens the telemetry log (once per store; a second call fails) and returns the
    /// entries after the checkpoint. Needs the index key.
    pub fn wal_open(&self) -> Result<WalReplay, StoreError> {
        let key = self.index_key()?;
        let mut slot = crate::lock(&self.wal);
        if slot.is_some() {
            return Err(StoreError::InvalidInput(
                "the telemetry log is open already".into(),
            ));
        }
        let dir = self.dir.join(WAL_DIR);
        crate::blocks::create_private_dir(&dir)?;
        let checkpoint = self.telemetry_value("checkpoint")?.unwrap_or(0);
        let flushing = self.telemetry_value("flushing")?;
        let mut replay = WalReplay {
            checkpoint,
            flushing,
            ..WalReplay::default()
        };
        let files = segments(&dir)?;
        let mut last_seq = checkpoint.max(flushing.unwrap_or(0));
        let mut current = None;
        for (i, (first, path)) in files.iter().enumerate() {
            let is_last = i + 1 == files.len();
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(StoreError::io(format!("reading {}", path.display())))?;
            let mut at = 0usize;
            let mut count = 0u64;
            while at < bytes.len() {
                match read_frame(key, &bytes[at..]) {
                    Ok((seq, entry, used)) => {
                        if seq > checkpoint {
                            replay.entries.push((seq, entry));
                        }
                        last_seq = last_seq.max(seq);
                        at += used;
                        count += 1;
                    }
                    // Torn: at the end of the last file, nothing readable after it.
                    Err(_) if is_last && !any_frame_after(key, &bytes[at..]) => {
                        // A torn append: never acknowledged, cut it off.
                        replay.torn_bytes = (bytes.len() - at) as u64;
                        let file = OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(StoreError::io(format!("opening {}", path.display())))?;
                        file.set_len(at as u64)
                            .and_then(|()| file.sync_all())
                            .map_err(StoreError::io(format!("truncating {}", path.display())))?;
                        tracing::warn!(file = %path.display(), bytes = replay.torn_bytes, "cut off a torn telemetry log entry");
                        break;
                    }
                    Err(_) => {
                        return Err(StoreError::Corrupt(format!(
                            "telemetry log file {} is damaged at byte {at} (a frame that does not \
                             authenticate, followed by frames that do)",
                            path.display()
                        )))
                    }
                }
            }
            if is_last {
                current = Some((*first, path.clone(), count));
            }
        }
        let next_seq = last_seq + 1;
        let (file_first, path, file_entries) = match current {
            // Appending to a file that already holds entries keeps sequence order.
            Some((first, path, count)) => (first, path, count),
            None => (next_seq, segment_path(&dir, next_seq), 0),
        };
        let file = open_segment(&path)?;
        sync_dir(&dir)?;
        *slot = Some(WalState {
            dir,
            file,
            file_first,
            file_entries,
            next_seq,
            poisoned: false,
        });
        Ok(replay)
    }

    /// Appends `entries` durably (one write, one `fdatasync`) and returns the sequence
    /// number of the first; they are numbered consecutively. Once this returns, the
    /// entries survive a crash.
    pub fn wal_append(&self, entries: &[Vec<u8>]) -> Result<u64, StoreError> {
        let key = self.index_key()?;
        let mut slot = crate::lock(&self.wal);
        let wal = slot.as_mut().ok_or_else(|| {
            StoreError::InvalidInput("the telemetry log is not open (Store::wal_open)".into())
        })?;
        let first = wal.next_seq;
        let mut buf = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            if entry.len() > MAX_WAL_ENTRY {
                return Err(StoreError::InvalidInput(format!(
                    "a telemetry log entry of {} bytes is larger than {MAX_WAL_ENTRY}",
                    entry.len()
                )));
            }
            let seq = first + i as u64;
            let sealed = key.seal(&context(seq), entry)?;
            buf.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
            buf.extend_from_slice(&seq.to_be_bytes());
            buf.extend_from_slice(&sealed);
        }
        if wal.poisoned {
            return Err(StoreError::Corrupt(
                "the telemetry log could not be repaired after a failed write; restart the node"
                    .into(),
            ));
        }
        let before = wal
            .file
            .metadata()
            .map_err(StoreError::io("reading the telemetry log's size"))?
            .len();
        let write = wal.file.write_all(&buf).and_then(|()| wal.file.sync_data());
        if let Err(e) = write {
            // What was written may be torn: cut the file back to where this append began,
            // so a later append does not follow garbage. If even that fails, no append is
            // taken until the log is reopened (the next start cuts the torn tail).
            let repaired = wal.file.set_len(before).and_then(|()| wal.file.sync_data());
            if repaired.is_err() {
                wal.poisoned = true;
            }
            return Err(StoreError::Io {
                context: "appending to the telemetry log".into(),
                source: e,
            });
        }
        wal.next_seq += entries.len() as u64;
        wal.file_entries += entries.len() as u64;
        Ok(first)
    }

    /// The sequence number the next append gets.
    pub fn wal_next_seq(&self) -> Option<u64> {
        crate::lock(&self.wal).as_ref().map(|w| w.next_seq)
    }

    /// Starts a flush of the entries up to `through` (the caller holds them all, and
    /// nothing was appended after them that it does not hold): records `flushing =
    /// through` and starts a new file, so the flushed ones can be deleted whole once no
    /// later entry shares their file. `false` when there is nothing to flush (`through`
    /// at or before `checkpoint`, or beyond what was appended).
    pub fn wal_begin_flush(&self, checkpoint: u64, through: u64) -> Result<bool, StoreError> {
        let mut slot = crate::lock(&self.wal);
        let wal = slot.as_mut().ok_or_else(|| {
            StoreError::InvalidInput("the telemetry log is not open (Store::wal_open)".into())
        })?;
        if through <= checkpoint || through >= wal.next_seq {
            return Ok(false);
        }
        let txn = self.db.begin_write()?;
        txn.open_table(TELEMETRY)?.insert("flushing", through)?;
        txn.commit()?;
        if wal.file_entries > 0 {
            let path = segment_path(&wal.dir, wal.next_seq);
            wal.file = open_segment(&path)?;
            wal.file_first = wal.next_seq;
            wal.file_entries = 0;
            sync_dir(&wal.dir)?;
        }
        Ok(true)
    }

    /// Ends the flush up to `through`: in one transaction the checkpoint moves there,
    /// `flushing` is cleared, the devices' progress noted and the flush's idempotency
    /// keys (`ingest_keys`, needed only to repeat it) forgotten; then the files holding
    /// only flushed entries are deleted.
    pub fn wal_checkpoint(
        &self,
        through: u64,
        devices: &[DeviceProgress],
        ingest_keys: &[String],
    ) -> Result<(), StoreError> {
        let key = self.index_key()?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TELEMETRY)?;
            table.insert("checkpoint", through)?;
            table.remove("flushing")?;
            let mut keys = txn.open_table(crate::tables::INGEST_KEYS)?;
            for k in ingest_keys {
                keys.remove(k.as_str())?;
            }
        }
        Store::note_devices(&txn, key, devices)?;
        txn.commit()?;
        let slot = crate::lock(&self.wal);
        let Some(wal) = slot.as_ref() else {
            return Ok(());
        };
        let files = segments(&wal.dir)?;
        for (i, (first, path)) in files.iter().enumerate() {
            // A file's entries end where the next file begins.
            let ends_before = files.get(i + 1).map(|(next, _)| *next);
            let covered = match ends_before {
                Some(next) => next - 1 <= through,
                None => false,
            };
            if covered && *first != wal.file_first {
                fs::remove_file(path)
                    .map_err(StoreError::io(format!("deleting {}", path.display())))?;
            }
        }
        Ok(())
    }

    /// The keyed hash of `value` under the index key (domain `domain`): for identifiers
    /// derived from private values, such as a telemetry batch's idempotency key.
    pub fn keyed_tag(&self, domain: &str, value: &str) -> Result<String, StoreError> {
        Ok(self.index_key()?.tag(domain, value))
    }
}

/// Why no frame could be read.
#[derive(Debug)]
enum Frame {
    /// The bytes end before the frame does (a torn append).
    Incomplete,
    /// A complete frame that does not authenticate.
    Bad,
}

/// One frame at the start of `bytes`: `(seq, entry, bytes used)`.
fn read_frame(
    key: &medmesh_crypto::IndexKey,
    bytes: &[u8],
) -> Result<(u64, Vec<u8>, usize), Frame> {
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or(Frame::Incomplete)?;
    let len = u32::from_be_bytes(*len) as usize;
    let (seq, rest) = rest.split_first_chunk::<8>().ok_or(Frame::Incomplete)?;
    let seq = u64::from_be_bytes(*seq);
    let sealed = rest.get(..len).ok_or(Frame::Incomplete)?;
    let entry = key.open(&context(seq), sealed).map_err(|_| Frame::Bad)?;
    Ok((seq, entry, FRAME_HEADER + len))
}

/// Whether a frame that authenticates starts anywhere after the first byte of `bytes`:
/// a bad frame at the very end is a torn append (its sectors never reached the disk),
/// one followed by good frames is damage.
fn any_frame_after(key: &medmesh_crypto::IndexKey, bytes: &[u8]) -> bool {
    (1..bytes.len()).any(|at| read_frame(key, &bytes[at..]).is_ok())
}
