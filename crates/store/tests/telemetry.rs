//! The store's side of telemetry: registered devices (sealed), the write-ahead log
//! (durable appends, replay, torn tails, checkpoints) and idempotent puts.

mod common;

use common::*;
use medmesh_core::{ContentType, PatientRef};
use medmesh_crypto::{DeviceAlgorithm, DeviceSigner};
use medmesh_store::{DeviceProgress, DeviceRecord, Store, StoreError, DEFAULT_CHUNK_SIZE, WAL_DIR};
use time::OffsetDateTime;

const MARKER_PATIENT: &str = "MRN-DEVICE-MARKER-5521";

fn device(id: &str) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        patient: PatientRef::new(MARKER_PATIENT).unwrap(),
        device_type: "bedside-monitor".into(),
        key: DeviceSigner::generate(DeviceAlgorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone(),
        registered: OffsetDateTime::now_utc(),
        revoked: None,
        counter: 0,
        last_seen: None,
        firmware: None,
        recent: Default::default(),
    }
}

fn reopen(f: Fixture) -> (tempfile::TempDir, Store) {
    let Fixture { dir, store, .. } = f;
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    store.unlock_index(medmesh_testkit::index_key());
    (dir, store)
}

#[test]
fn devices_register_once_revoke_and_keep_their_patient_sealed() {
    let f = fixture();
    f.store
        .register_device(&device("monitor-1"), "test")
        .unwrap();
    let again = f
        .store
        .register_device(&device("monitor-1"), "test")
        .unwrap_err();
    assert!(again.to_string().contains("registered already"), "{again}");
    for bad in ["", "a/b", "x+", "#", &"d".repeat(65)] {
        let err = f.store.register_device(&device(bad), "test").unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{bad:?}: {err}");
    }
    f.store
        .register_device(&device("monitor-2"), "test")
        .unwrap();
    let listed: Vec<_> = f
        .store
        .devices()
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, ["monitor-1", "monitor-2"]);

    let revoked = f.store.revoke_device("monitor-1", "test").unwrap();
    let first = revoked.revoked.expect("revoked");
    let twice = f.store.revoke_device("monitor-1", "test").unwrap();
    assert_eq!(
        twice.revoked,
        Some(first),
        "a second revocation keeps the first time"
    );
    assert!(matches!(
        f.store.revoke_device("nope", "test"),
        Err(StoreError::UnknownDevice(_))
    ));
    // Revoked ids never come back.
    assert!(f
        .store
        .register_device(&device("monitor-1"), "test")
        .is_err());

    let (dir, store) = reopen(f);
    let back = store.device("monitor-2").unwrap().unwrap();
    assert_eq!(back.patient.as_str(), MARKER_PATIENT);
    assert!(store
        .device("monitor-1")
        .unwrap()
        .unwrap()
        .revoked
        .is_some());
    drop(store);
    for file in files_under(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes
                .windows(MARKER_PATIENT.len())
                .any(|w| w == MARKER_PATIENT.as_bytes()),
            "{} holds the patient reference in clear",
            file.display()
        );
    }
}

#[test]
fn wal_appends_survive_a_reopen_and_a_torn_tail_is_cut_off() {
    let f = fixture();
    let replay = f.store.wal_open().unwrap();
    assert_eq!((replay.checkpoint, replay.entries.len()), (0, 0));
    assert!(f.store.wal_open().is_err(), "opened once per store");
    let first = f
        .store
        .wal_append(&[b"one".to_vec(), b"two".to_vec()])
        .unwrap();
    assert_eq!(first, 1);
    assert_eq!(f.store.wal_append(&[b"three".to_vec()]).unwrap(), 3);
    assert!(f.store.wal_append(&[vec![0; 2 * 1024 * 1024]]).is_err());

    let (dir, store) = reopen(f);
    // A crash in the middle of an append: half a frame at the end of the file.
    let wal_dir = dir.path().join(WAL_DIR);
    let file = std::fs::read_dir(&wal_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 4, 9, 9]);
    std::fs::write(&file, &bytes).unwrap();

    let replay = store.wal_open().unwrap();
    let entries: Vec<_> = replay
        .entries
        .iter()
        .map(|(s, e)| (*s, e.as_slice()))
        .collect();
    assert_eq!(
        entries,
        [(1, &b"one"[..]), (2, &b"two"[..]), (3, &b"three"[..])]
    );
    assert_eq!(replay.torn_bytes, 14);
    assert_eq!(store.wal_append(&[b"four".to_vec()]).unwrap(), 4);

    // Nothing of an entry is in clear on disk.
    let raw = std::fs::read(&file).unwrap();
    assert!(!raw.windows(5).any(|w| w == b"three"));
}

#[test]
fn a_checkpoint_drops_flushed_entries_and_notes_device_counters() {
    let f = fixture();
    f.store.register_device(&device("m-1"), "test").unwrap();
    f.store.wal_open().unwrap();
    f.store.wal_append(&[b"a".to_vec(), b"b".to_vec()]).unwrap();
    assert!(
        !f.store.wal_begin_flush(0, 3).unwrap(),
        "3 was not appended"
    );
    assert!(f.store.wal_begin_flush(0, 2).unwrap());
    // Arrives while the flush runs: not covered by it.
    f.store.wal_append(&[b"c".to_vec()]).unwrap();

    // The node dies mid-flush: the restart is told to repeat it.
    let (dir, store) = reopen(f);
    let replay = store.wal_open().unwrap();
    assert_eq!(replay.flushing, Some(2));
    assert_eq!(replay.entries.len(), 3);
    let seen = OffsetDateTime::now_utc();
    store
        .wal_checkpoint(
            2,
            &[DeviceProgress {
                device: "m-1".into(),
                counter: 41,
                seen,
                recent: vec![(40, "d40".into()), (41, "d41".into())],
                firmware: Some("1.2.3".into()),
            }],
            &[],
        )
        .unwrap();
    let files = std::fs::read_dir(dir.path().join(WAL_DIR)).unwrap().count();
    assert_eq!(
        files, 1,
        "the flushed file is deleted, the current one kept"
    );
    let d = store.device("m-1").unwrap().unwrap();
    assert_eq!((d.counter, d.firmware.as_deref()), (41, Some("1.2.3")));
    assert_eq!(d.recent.get(&41).map(String::as_str), Some("d41"));
    assert_eq!(d.recent.len(), 2);
    // A lower counter never moves it back.
    store
        .wal_checkpoint(
            2,
            &[DeviceProgress {
                device: "m-1".into(),
                counter: 7,
                seen,
                recent: vec![(7, "d7".into())],
                firmware: None,
            }],
            &[],
        )
        .unwrap();
    let d = store.device("m-1").unwrap().unwrap();
    assert_eq!(d.counter, 41);
    assert_eq!(
        d.recent.len(),
        3,
        "a late counter within the window is kept"
    );
    // Counters fall out of the window as the highest one rises.
    store
        .wal_checkpoint(
            2,
            &[DeviceProgress {
                device: "m-1".into(),
                counter: 41 + medmesh_store::REPLAY_WINDOW,
                seen,
                recent: vec![(41 + medmesh_store::REPLAY_WINDOW, "dn".into())],
                firmware: None,
            }],
            &[],
        )
        .unwrap();
    let d = store.device("m-1").unwrap().unwrap();
    assert_eq!(
        d.recent.keys().copied().collect::<Vec<_>>(),
        [41 + medmesh_store::REPLAY_WINDOW]
    );

    drop(store);
    let store = Store::open(dir.path()).unwrap();
    store.unlock_index(medmesh_testkit::index_key());
    let replay = store.wal_open().unwrap();
    assert_eq!((replay.checkpoint, replay.flushing), (2, None));
    let left: Vec<_> = replay.entries.iter().map(|(s, _)| *s).collect();
    assert_eq!(left, [3]);
    assert_eq!(store.wal_append(&[b"d".to_vec()]).unwrap(), 4);
    assert!(!store.wal_begin_flush(4, 4).unwrap(), "nothing after 4");
}

#[test]
fn a_put_repeated_under_its_idempotency_key_stores_one_record() {
    let mut f = fixture();
    let mut request = request(ContentType::FHIR_JSON, DEFAULT_CHUNK_SIZE);
    request.idempotency_key = Some("telemetry:7:abc".into());
    let first = f.put_with(b"{\"resourceType\":\"Bundle\"}", request.clone());
    let second = f.put_with(
        b"{\"resourceType\":\"Bundle\",\"other\":1}",
        request.clone(),
    );
    assert_eq!(first, second);
    assert_eq!(f.store.record_count().unwrap(), 1);
    assert_eq!(f.read(&first).unwrap(), b"{\"resourceType\":\"Bundle\"}");

    // A key whose record was removed answers nothing: the put stores the record again.
    f.store.remove_record(&first, "test").unwrap();
    let again = f.put_with(b"{\"resourceType\":\"Bundle\"}", request.clone());
    assert_ne!(again, first);
    assert_eq!(f.store.record_count().unwrap(), 1);
    // A checkpoint forgets the keys of its flush.
    f.store.wal_open().unwrap();
    f.store.wal_append(&[b"x".to_vec()]).unwrap();
    f.store
        .wal_checkpoint(1, &[], &["telemetry:7:abc".to_string()])
        .unwrap();
    let fresh = f.put_with(b"{\"resourceType\":\"Bundle\"}", request);
    assert_ne!(fresh, again);
    assert_eq!(f.store.record_count().unwrap(), 2);
}

#[test]
fn a_damaged_frame_followed_by_good_ones_is_damage_not_a_torn_tail() {
    let f = fixture();
    f.store.wal_open().unwrap();
    f.store
        .wal_append(&[b"one".to_vec(), b"two".to_vec(), b"three".to_vec()])
        .unwrap();
    let (dir, store) = reopen(f);
    let file = std::fs::read_dir(dir.path().join(WAL_DIR))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[20] ^= 0xff; // inside the first frame's sealed entry
    std::fs::write(&file, &bytes).unwrap();
    let err = store.wal_open().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "acknowledged frames are never cut off"
    );
}
