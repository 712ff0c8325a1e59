//! Private file modes of the store directory, and the sweep of orphans that killed
//! uploads and fetches leave.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use medmesh_core::{cid_of, Cid, Codec, ContentType};
use medmesh_store::{secure_permissions, AuditAction, Store, MIN_CHUNK_SIZE};

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Every directory and file under `dir`, `dir` included.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(tree(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn secure_permissions_narrows_loose_modes_and_names_them() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("store");
    let sub = root.join("keys").join("old");
    let blocks = root.join(Store::BLOCKS_DIR);
    let shard = blocks.join("ab");
    fs::create_dir_all(&sub).unwrap();
    fs::create_dir_all(&shard).unwrap();
    let write = |path: &Path, mode: u32| {
        fs::write(path, b"x").unwrap();
        chmod(path, mode);
    };
    let index = root.join("index.redb");
    let nested = sub.join("state.json");
    let group_readable = root.join("medmesh.toml");
    let stray = blocks.join("stray");
    let private = root.join("private");
    let read_only = root.join("read-only");
    let block_file = shard.join("block.data");
    write(&index, 0o644);
    write(&nested, 0o666);
    write(&group_readable, 0o640);
    write(&stray, 0o604);
    write(&private, 0o600);
    write(&read_only, 0o400);
    write(&block_file, 0o644);
    // A link to a file outside: neither followed nor changed.
    let outside = outer.path().join("outside");
    write(&outside, 0o644);
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    let dirs = [
        root.clone(),
        root.join("keys"),
        sub.clone(),
        blocks.clone(),
        shard.clone(),
    ];
    for dir in &dirs {
        chmod(dir, 0o755);
    }

    let mut repaired = secure_permissions(&root).unwrap();
    repaired.sort();
    let mut expected: Vec<PathBuf> = dirs.to_vec();
    expected.extend([
        index.clone(),
        nested.clone(),
        group_readable.clone(),
        stray.clone(),
    ]);
    expected.sort();
    assert_eq!(repaired, expected);

    for dir in &dirs {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    for file in [&index, &nested, &group_readable, &stray, &private] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    assert_eq!(mode(&read_only), 0o400, "modes are narrowed, never widened");
    assert_eq!(mode(&outside), 0o644, "links are not followed");
    // Block files are not walked (the store creates them 0600, in 0700 shard dirs).
    assert_eq!(mode(&block_file), 0o644);

    assert!(secure_permissions(&root).unwrap().is_empty(), "idempotent");
}

#[test]
fn a_store_is_private_and_repaired_when_opened() {
    let mut f = fixture();
    f.put_with(
        &noise(3 * MIN_CHUNK_SIZE as usize, 31),
        request(ContentType::OCTET_STREAM, MIN_CHUNK_SIZE),
    );
    // Only the directory the test made (with the umask's mode) needed narrowing:
    // everything the store created was private from the start.
    assert!(
        f.store
            .repaired_permissions()
            .iter()
            .all(|p| p == f.dir.path()),
        "{:?}",
        f.store.repaired_permissions()
    );
    let dir = f.dir.path().to_path_buf();
    let all = tree(&dir);
    assert!(all.len() >= 7, "{all:?}");
    for path in &all {
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(path), expected, "{}", path.display());
    }

    // A store an older version left readable is repaired at the next open.
    drop(f.store);
    let index = dir.join(Store::INDEX_FILE);
    let blocks = dir.join(Store::BLOCKS_DIR);
    chmod(&index, 0o644);
    chmod(&blocks, 0o755);
    let store = Store::open(&dir).unwrap();
    let mut repaired = store.repaired_permissions().to_vec();
    repaired.sort();
    let mut expected = vec![index.clone(), blocks.clone()];
    expected.sort();
    assert_eq!(repaired, expected);
    assert_eq!((mode(&index), mode(&blocks)), (0o600, 0o700));
}

/// Sets a file's modification time `age` in the past.
fn age(path: &Path, age: Duration) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

fn gc_entries(store: &Store) -> usize {
    store
        .audit_page(0, 1000)
        .unwrap()
        .iter()
        .filter(|e| e.action == AuditAction::GarbageCollect)
        .count()
}

#[test]
fn sweep_orphans_removes_only_old_unreferenced_blocks_and_temp_files() {
    let mut f = fixture();
    let data = noise(2 * MIN_CHUNK_SIZE as usize, 32);
    let id = f.put_with(&data, request(ContentType::OCTET_STREAM, MIN_CHUNK_SIZE));
    let mut referenced: Vec<Cid> = f.store.manifest(&id).unwrap().body.chunks;
    referenced.push(*id.cid());
    let two_hours = Duration::from_secs(2 * 3600);
    // Old but referenced: a stored record is never swept, whatever its age.
    for cid in &referenced {
        age(&block_path(f.dir.path(), cid), two_hours);
    }

    // What a killed upload left two hours ago, and what a fetch in progress just wrote.
    let old_orphan = cid_of(Codec::Raw, b"old orphan");
    let fresh_orphan = cid_of(Codec::Raw, b"fresh orphan");
    f.store.blocks().put(&old_orphan, b"old orphan").unwrap();
    f.store
        .blocks()
        .put(&fresh_orphan, b"fresh orphan")
        .unwrap();
    age(&block_path(f.dir.path(), &old_orphan), two_hours);
    let shard = block_path(f.dir.path(), &old_orphan)
        .parent()
        .unwrap()
        .to_path_buf();
    let old_temp = shard.join(".tmp-1-1");
    let fresh_temp = shard.join(".tmp-1-2");
    fs::write(&old_temp, b"partial").unwrap();
    fs::write(&fresh_temp, b"in progress").unwrap();
    age(&old_temp, two_hours);

    let audited = gc_entries(&f.store);
    let report = f
        .store
        .sweep_orphans(Duration::from_secs(3600), "test")
        .unwrap()
        .expect("no upload in progress");
    assert_eq!(
        (
            report.blocks_removed,
            report.temp_files_removed,
            report.bytes_freed
        ),
        (1, 1, (b"old orphan".len() + b"partial".len()) as u64),
        "{report:?}"
    );
    assert!(!f.store.blocks().has(&old_orphan) && !old_temp.exists());
    assert!(f.store.blocks().has(&fresh_orphan) && fresh_temp.exists());
    assert!(referenced.iter().all(|c| f.store.blocks().has(c)));
    assert_eq!(f.read(&id).unwrap(), data);
    assert_eq!(
        gc_entries(&f.store),
        audited + 1,
        "a sweep that removed something is audited"
    );

    // Nothing old is left: a second sweep removes nothing and logs nothing.
    let again = f
        .store
        .sweep_orphans(Duration::from_secs(3600), "test")
        .unwrap()
        .expect("no upload in progress");
    assert_eq!((again.blocks_removed, again.temp_files_removed), (0, 0));
    assert_eq!(gc_entries(&f.store), audited + 1);

    // While an upload is in progress the sweep steps aside instead of holding every new
    // upload behind it.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let store = &f.store;
        let (signer, cert) = (&f.signer, &f.cert);
        s.spawn(move || {
            let mut input = Gated {
                rx,
                started: Some(started_tx),
                pending: Vec::new(),
            };
            store
                .put_record(
                    &mut input,
                    &request(ContentType::OCTET_STREAM, MIN_CHUNK_SIZE),
                    signer,
                    cert,
                    &[],
                    &|_| {},
                )
                .unwrap();
        });
        started_rx.recv().unwrap();
        assert!(
            store
                .sweep_orphans(Duration::ZERO, "test")
                .unwrap()
                .is_none(),
            "a sweep during an upload does nothing"
        );
        drop(tx);
    });

    // gc is the same sweep without an age limit: the fresh orphans go too.
    let gc = f.store.gc("test").unwrap();
    assert_eq!((gc.blocks_removed, gc.temp_files_removed), (1, 1));
    assert!(!f.store.blocks().has(&fresh_orphan) && !fresh_temp.exists());
    assert_eq!(gc_entries(&f.store), audited + 2);
    assert_eq!(f.read(&id).unwrap(), data);
    let check = f.store.check().unwrap();
    assert!(
        check.problems.is_empty() && check.unreferenced_blocks == 0,
        "{check:?}"
    );
}

/// An upload input that says when it was first read, then waits for its bytes.
struct Gated {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    started: Option<std::sync::mpsc::Sender<()>>,
    pending: Vec<u8>,
}

impl std::io::Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(started) = self.started.take() {
            let _ = started.send(());
        }
        if self.pending.is_empty() {
            match self.rx.recv() {
                Ok(bytes) => self.pending = bytes,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

#[test]
fn a_privacy_budget_and_its_audit_entry_commit_together_and_survive_reopening() {
    use medmesh_store::{AuditAction, BudgetUpdate};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let store = medmesh_store::Store::open(&path).unwrap();
        let answered: u32 = store
            .update_dp_budget("dataset-1", "tester", |current| {
                assert!(current.is_none());
                let update = BudgetUpdate {
                    budget: Some(b"{\"spent\":0.4}".to_vec()),
                    action: AuditAction::DpQuery,
                    detail: [("outcome".to_string(), "answered".to_string())].into(),
                };
                (update, 42)
            })
            .unwrap();
        assert_eq!(answered, 42);
        // A refusal writes its audit entry and leaves the budget alone.
        store
            .update_dp_budget("dataset-1", "tester", |current| {
                assert_eq!(current, Some(&b"{\"spent\":0.4}"[..]));
                let update = BudgetUpdate {
                    budget: None,
                    action: AuditAction::DpQuery,
                    detail: [("outcome".to_string(), "refused".to_string())].into(),
                };
                (update, ())
            })
            .unwrap();
    }
    let store = medmesh_store::Store::open(&path).unwrap();
    assert_eq!(
        store.dp_budget("dataset-1").unwrap().as_deref(),
        Some(&b"{\"spent\":0.4}"[..])
    );
    assert_eq!(store.dp_budget("dataset-2").unwrap(), None);
    let entries = store.audit_page(0, 100).unwrap();
    let outcomes: Vec<&str> = entries
        .iter()
        .filter(|e| e.action == AuditAction::DpQuery)
        .map(|e| e.detail["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["answered", "refused"]);
    assert!(store.audit_verify().unwrap().is_ok());
}
