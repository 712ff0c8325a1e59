//! Private modes for a data directory: directories 0700, files 0600.
//!
//! The store creates everything private, but a directory made by an older version, a
//! restored backup or a hand-copied file can be readable by others. Record blocks are
//! ciphertext, but the index still tells who stored what and when, so
//! [`secure_permissions`] repairs such modes at every open and names what it changed.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{Store, StoreError};

/// Mode bits that give the group or others any access.
const GROUP_OTHER: u32 = 0o077;

/// Removes group and other access from `dir`, every directory below it and every
/// regular file in them, and returns the paths it changed (empty when all were private).
///
/// Modes are only narrowed, never widened: 0755 becomes 0700, 0644 becomes 0600, 0400
/// stays. The files inside block shard directories (the subdirectories of a
/// `blocks` directory) are not visited: the store creates them 0600 and there can be
/// millions; their shard directories, which are repaired, are 0700 anyway. Symbolic
/// links are neither followed nor changed, except that `dir` itself may be one.
pub fn secure_permissions(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let root = fs::metadata(dir).map_err(StoreError::io(format!("reading {}", dir.display())))?;
    if !root.is_dir() {
        return Err(StoreError::InvalidInput(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut repaired = Vec::new();
    narrow(dir, root.permissions().mode(), &mut repaired)?;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let in_blocks_dir = current.file_name() == Some(OsStr::new(Store::BLOCKS_DIR));
        let entries = match fs::read_dir(&current) {
            Ok(entries) => entries,
            // Removed while we walked (a concurrent removal): nothing left to secure.
            Err(e) if e.kind() == ErrorKind::NotFound && current.as_path() != dir => continue,
            Err(e) => return Err(StoreError::io(format!("listing {}", current.display()))(e)),
        };
        for entry in entries {
            let entry =
                entry.map_err(|e| StoreError::io(format!("listing {}", current.display()))(e))?;
            let path = entry.path();
            // `symlink_metadata`: a link is judged as a link, never by its target.
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("reading {}", path.display()))(e)),
            };
            if meta.is_dir() {
                narrow(&path, meta.permissions().mode(), &mut repaired)?;
                // A shard directory holds only block and temp files, created 0600.
                if !in_blocks_dir {
                    pending.push(path);
                }
            } else if meta.is_file() {
                narrow(&path, meta.permissions().mode(), &mut repaired)?;
            }
        }
    }
    if !repaired.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            paths = ?repaired,
            "files or directories were readable by other users; made them private"
        );
    }
    Ok(repaired)
}

/// Drops the group and other bits of `path` if it has any, noting it in `repaired`.
fn narrow(path: &Path, mode: u32, repaired: &mut Vec<PathBuf>) -> Result<(), StoreError> {
    if mode & GROUP_OTHER == 0 {
        return Ok(());
    }
    let private = mode & 0o7777 & !GROUP_OTHER;
    match fs::set_permissions(path, fs::Permissions::from_mode(private)) {
        Ok(()) => {
            repaired.push(path.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!(
            "making {} private (mode {private:o}; is it owned by another user?)",
            path.display()
        ))(e)),
    }
}
