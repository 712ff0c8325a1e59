//! Record round trips, tampering detection, no plaintext at rest, listing, removal,
//! garbage collection and the audit log, on real files with real crypto.

mod common;

use common::*;
use medmesh_core::{ContentType, PatientRef, RecordId};
use medmesh_crypto::CryptoError;
use medmesh_store::{
    AuditAction, RecordQuery, Store, StoreError, DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE,
};

#[test]
fn round_trips_at_chunk_boundaries() {
    let mut f = fixture();
    let c = MIN_CHUNK_SIZE as usize;
    for (len, chunks) in [(0, 1), (1, 1), (c - 1, 1), (c, 1), (c + 1, 2), (3 * c, 3)] {
        let data = noise(len, len as u64 + 7);
        let id = f.put_with(&data, request(ContentType::OCTET_STREAM, MIN_CHUNK_SIZE));
        let manifest = f.store.manifest(&id).unwrap();
        assert_eq!(manifest.body.chunks.len(), chunks, "len {len}");
        assert_eq!(f.store.meta(&id).unwrap().size, len as u64);
        assert_eq!(f.read(&id).unwrap(), data, "len {len}");
    }
}

#[test]
fn round_trips_100_mib_with_default_chunks() {
    let mut f = fixture();
    let data = noise(100 << 20, 42);
    let id = f.put(&data);
    let manifest = f.store.manifest(&id).unwrap();
    assert_eq!(
        manifest.body.chunks.len(),
        (100usize << 20).div_ceil(DEFAULT_CHUNK_SIZE as usize)
    );
    for cid in &manifest.body.chunks {
        assert!(f.store.blocks().get(cid).unwrap().len() <= medmesh_core::MAX_BLOCK_SIZE);
    }
    assert!(
        f.read(&id).unwrap() == data,
        "100 MiB record differs after round trip"
    );
}

#[test]
fn round_trips_medical_samples_and_sniffs_their_types() {
    let mut f = fixture();
    let samples = [
        ("fhir/synthea-bundle-a.json", ContentType::FHIR_JSON),
        ("fhir/Patient.ndjson", ContentType::FHIR_NDJSON),
        ("hl7v2/oru.hl7", ContentType::HL7_V2),
        ("hl7v2/adt.hl7", ContentType::HL7_V2),
        ("dicom/CT_small.dcm", ContentType::DICOM),
        ("dicom/MR_small.dcm", ContentType::DICOM),
    ];
    for (rel, expected_type) in samples {
        let path = shared_data(rel);
        let data = std::fs::read(&path).unwrap();
        let sniffed = ContentType::sniff(&data[..data.len().min(4096)]);
        assert_eq!(sniffed.as_str(), expected_type, "{rel}");
        let mut req = request(sniffed.as_str(), MIN_CHUNK_SIZE);
        req.content_type = None; // the store sniffs it from the first chunk
        req.patient = Some(PatientRef::new("MRN-1001").unwrap());
        let id = f.put_with(&data, req);
        assert_eq!(f.read(&id).unwrap(), data, "{rel}");
        assert_eq!(f.store.meta(&id).unwrap().content_type, sniffed);
    }
}

#[test]
fn flipped_bit_in_a_block_is_detected() {
    let mut f = fixture();
    let id = f.put_with(
        &noise(3 * MIN_CHUNK_SIZE as usize, 1),
        request("application/octet-stream", MIN_CHUNK_SIZE),
    );
    let chunk = f.store.manifest(&id).unwrap().body.chunks[1];
    let path = block_path(f.dir.path(), &chunk);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let err = f.read(&id).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(
        err.to_string().contains(&chunk.to_string()),
        "error should name the block: {err}"
    );
    let report = f.store.check().unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}

#[test]
fn swapped_chunk_files_are_detected() {
    let mut f = fixture();
    let id = f.put_with(
        &noise(2 * MIN_CHUNK_SIZE as usize, 2),
        request("application/octet-stream", MIN_CHUNK_SIZE),
    );
    let chunks = f.store.manifest(&id).unwrap().body.chunks;
    let (a, b) = (
        block_path(f.dir.path(), &chunks[0]),
        block_path(f.dir.path(), &chunks[1]),
    );
    let (bytes_a, bytes_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::write(&a, bytes_b).unwrap();
    std::fs::write(&b, bytes_a).unwrap();
    assert!(matches!(f.read(&id).unwrap_err(), StoreError::Corrupt(_)));
}

/// Even a validly signed manifest cannot reorder or drop chunks: the AEAD binds each
/// chunk to its position and marks the last one.
#[test]
fn reordered_or_truncated_chunk_lists_fail_authentication() {
    let mut f = fixture();
    let data = noise(3 * MIN_CHUNK_SIZE as usize, 3);
    let id = f.put_with(&data, request("application/octet-stream", MIN_CHUNK_SIZE));
    let original = f.store.manifest(&id).unwrap();

    let mut swapped = original.body.clone();
    swapped.chunks.swap(0, 1);
    let mut truncated = original.body.clone();
    truncated.chunks.pop();

    for (body, expected_index) in [(swapped, 0), (truncated, 1)] {
        let forged = f.signer.lock().unwrap().sign_manifest(body).unwrap();
        let (forged_id, bytes) = forged.to_block().unwrap();
        f.store.blocks().put(forged_id.cid(), &bytes).unwrap();
        match f.read(&forged_id).unwrap_err() {
            StoreError::Crypto(CryptoError::ChunkAuthentication { index }) => {
                assert_eq!(index, expected_index)
            }
            other => panic!("expected an authentication failure, got {other}"),
        }
    }
    assert_eq!(f.read(&id).unwrap(), data, "original still reads");
}

#[test]
fn truncated_block_file_and_missing_block_are_detected() {
    let mut f = fixture();
    let id = f.put_with(
        &noise(2 * MIN_CHUNK_SIZE as usize, 4),
        request("application/octet-stream", MIN_CHUNK_SIZE),
    );
    let chunks = f.store.manifest(&id).unwrap().body.chunks;
    let path = block_path(f.dir.path(), &chunks[1]);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    assert!(matches!(f.read(&id).unwrap_err(), StoreError::Corrupt(_)));
    std::fs::remove_file(&path).unwrap();
    let err = f.read(&id).unwrap_err();
    assert!(
        err.to_string().contains("missing") && err.to_string().contains(&id.to_string()),
        "{err}"
    );
}

#[test]
fn tampered_manifest_signature_is_rejected() {
    let mut f = fixture();
    let id = f.put(b"signed");
    let mut m = f.store.manifest(&id).unwrap();
    m.body.envelope.chunk_size += 1;
    let (forged_id, bytes) = m.to_block().unwrap();
    f.store.blocks().put(forged_id.cid(), &bytes).unwrap();
    let err = f.read(&forged_id).unwrap_err();
    assert!(
        matches!(err, StoreError::Crypto(CryptoError::BadSignature { .. })),
        "{err}"
    );
}

#[test]
fn wrong_recipient_cannot_decrypt() {
    let mut f = fixture();
    let id = f.put(b"for the owner only");
    let other = institution(1);
    let mut their_decryptor = other.unlock_decryption(&pass()).unwrap();
    let mut out = Vec::new();
    let err = f
        .store
        .read_record(
            &id,
            &f.cert,
            &mut their_decryptor,
            &mut out,
            "test",
            &|_| {},
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Crypto(CryptoError::NotARecipient { .. })),
        "{err}"
    );
    assert!(out.is_empty());
}

#[test]
fn additional_recipient_can_decrypt() {
    let f = fixture();
    let other = institution(1);
    let other_cert = other.certificate().unwrap();
    let data = b"shared with the lab".to_vec();
    let id = f
        .store
        .put_record(
            &mut &data[..],
            &request("text/plain", DEFAULT_CHUNK_SIZE),
            &f.signer,
            &f.cert,
            &[other_cert],
            &|_| {},
        )
        .unwrap();
    let mut out = Vec::new();
    f.store
        .read_record(
            &id,
            &f.cert,
            &mut other.unlock_decryption(&pass()).unwrap(),
            &mut out,
            "lab",
            &|_| {},
        )
        .unwrap();
    assert_eq!(out, data);
}

#[test]
fn no_plaintext_at_rest() {
    let mut f = fixture();
    let marker = b"MEDMESH-PLAINTEXT-MARKER-7f3c9a0e";
    let mut data = noise(3 * MIN_CHUNK_SIZE as usize, 5);
    // The marker in the middle, across a chunk boundary, and at the end.
    for at in [10, MIN_CHUNK_SIZE as usize - 5, data.len() - marker.len()] {
        data[at..at + marker.len()].copy_from_slice(marker);
    }
    let mut req = request("text/plain", MIN_CHUNK_SIZE);
    req.patient = Some(PatientRef::new("MRN-PLAIN").unwrap());
    let id = f.put_with(&data, req);
    assert_eq!(f.read(&id).unwrap(), data);
    drop(f.store);
    let mut files = 0;
    for entry in files_under(f.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "plaintext marker found in {}",
            entry.display()
        );
        files += 1;
    }
    assert!(files >= 5, "scanned only {files} files");
}

#[test]
fn list_filters_by_patient_type_owner_and_time() {
    let mut f = fixture();
    let mk = |ty: &str, patient: Option<&str>| {
        let mut r = request(ty, DEFAULT_CHUNK_SIZE);
        r.patient = patient.map(|p| PatientRef::new(p).unwrap());
        r
    };
    let a = f.put_with(b"a", mk(ContentType::FHIR_JSON, Some("MRN-1")));
    let b = f.put_with(b"b", mk(ContentType::HL7_V2, Some("MRN-1")));
    let c = f.put_with(b"c", mk(ContentType::HL7_V2, Some("MRN-2")));
    let ids = |q: RecordQuery| {
        f.store
            .list(&q)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<RecordId>>()
    };

    assert_eq!(ids(RecordQuery::default()), vec![a, b, c]);
    assert_eq!(
        ids(RecordQuery {
            patient: Some(PatientRef::new("MRN-1").unwrap()),
            ..Default::default()
        }),
        vec![a, b]
    );
    assert_eq!(
        ids(RecordQuery {
            content_type: Some(ContentType::HL7_V2.parse().unwrap()),
            ..Default::default()
        }),
        vec![b, c]
    );
    assert_eq!(
        ids(RecordQuery {
            patient: Some(PatientRef::new("MRN-1").unwrap()),
            content_type: Some(ContentType::HL7_V2.parse().unwrap()),
            ..Default::default()
        }),
        vec![b]
    );
    assert_eq!(
        ids(RecordQuery {
            owner: Some(f.cert.id()),
            limit: 2,
            ..Default::default()
        }),
        vec![a, b]
    );
    let created_c = f.store.meta(&c).unwrap().created;
    assert_eq!(
        ids(RecordQuery {
            since: Some(created_c),
            ..Default::default()
        }),
        vec![c]
    );
    assert_eq!(
        ids(RecordQuery {
            until: Some(f.store.meta(&a).unwrap().created),
            ..Default::default()
        }),
        Vec::<RecordId>::new()
    );
    assert!(ids(RecordQuery {
        patient: Some(PatientRef::new("MRN-9").unwrap()),
        ..Default::default()
    })
    .is_empty());
}

#[test]
fn remove_deletes_blocks_and_gc_sweeps_orphans() {
    let mut f = fixture();
    let keep = f.put(b"keep");
    let gone = f.put_with(
        &noise(2 * MIN_CHUNK_SIZE as usize, 6),
        request("application/octet-stream", MIN_CHUNK_SIZE),
    );
    let gone_chunks = f.store.manifest(&gone).unwrap().body.chunks;
    let report = f.store.remove_record(&gone, "test").unwrap();
    assert_eq!(report.blocks_removed, 3);
    assert!(matches!(
        f.store.meta(&gone),
        Err(StoreError::UnknownRecord(_))
    ));
    assert!(matches!(f.read(&gone), Err(StoreError::UnknownRecord(_))));
    assert!(gone_chunks.iter().all(|c| !f.store.blocks().has(c)));
    assert!(matches!(
        f.store.remove_record(&gone, "test"),
        Err(StoreError::UnknownRecord(_))
    ));

    // An orphan block (as an interrupted put leaves) and a leftover temp file.
    let orphan = medmesh_core::cid_of(medmesh_core::Codec::Raw, b"orphan");
    f.store.blocks().put(&orphan, b"orphan").unwrap();
    let temp = block_path(f.dir.path(), &orphan).with_file_name(".tmp-1-1");
    std::fs::write(&temp, b"partial").unwrap();
    assert_eq!(f.store.check().unwrap().unreferenced_blocks, 1);
    let gc = f.store.gc("test").unwrap();
    assert_eq!((gc.blocks_removed, gc.temp_files_removed), (1, 1));
    assert!(!temp.exists() && !f.store.blocks().has(&orphan));
    assert_eq!(f.read(&keep).unwrap(), b"keep");
    let check = f.store.check().unwrap();
    assert!(
        check.problems.is_empty() && check.unreferenced_blocks == 0,
        "{check:?}"
    );
}

#[test]
fn audit_log_chains_and_names_an_edited_entry() {
    let mut f = fixture();
    let id = f.put(b"audited");
    f.read(&id).unwrap();
    f.store.remove_record(&id, "test").unwrap();
    let entries = f.store.audit_page(0, 100).unwrap();
    let actions: Vec<_> = entries.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            AuditAction::RecordWrite,
            AuditAction::RecordRead,
            AuditAction::RecordRemove
        ]
    );
    assert_eq!(entries[1].prev, entries[0].hash);
    let summary = f.store.audit_verify().unwrap().unwrap();
    assert_eq!(
        (summary.entries, summary.head.as_str()),
        (3, entries[2].hash.as_str())
    );

    // Edit entry 1 directly in the database file, bypassing the store.
    use redb::ReadableTable;
    drop(f.store);
    let db = redb::Database::open(f.dir.path().join(Store::INDEX_FILE)).unwrap();
    let table_def: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(table_def).unwrap();
        let mut entry: serde_json::Value =
            serde_json::from_slice(table.get(1).unwrap().unwrap().value()).unwrap();
        entry["actor"] = "someone-else".into();
        table
            .insert(1, serde_json::to_vec(&entry).unwrap().as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
    drop(db);

    let store = Store::open(f.dir.path()).unwrap();
    let broken = store.audit_verify().unwrap().unwrap_err();
    assert_eq!(broken.seq, 1, "{broken}");
    assert!(broken.to_string().contains("entry 1"));
}

#[test]
fn second_open_of_a_store_is_refused_clearly() {
    let f = fixture();
    let err = Store::open(f.dir.path())
        .err()
        .expect("second open must fail");
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
}

#[test]
fn bad_chunk_size_changes_nothing() {
    let f = fixture();
    let err = f
        .store
        .put_record(
            &mut &b"x"[..],
            &request("text/plain", 10),
            &f.signer,
            &f.cert,
            &[],
            &|_| {},
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    assert!(f.store.list(&RecordQuery::default()).unwrap().is_empty());
    assert!(f.store.blocks().scan().unwrap().blocks.is_empty());
}

/// `medmesh get ID -o - | head` relies on this: an output that went away surfaces as
/// an `Io` error of kind `BrokenPipe`, on which the CLI ends quietly.
#[test]
fn a_closed_output_is_reported_as_broken_pipe() {
    struct ClosedPipe;
    impl std::io::Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }
    let mut f = fixture();
    let id = f.put(b"to a pipe");
    let err = f
        .store
        .read_record(
            &id,
            &f.cert,
            &mut f.decryptor,
            &mut ClosedPipe,
            "test",
            &|_| {},
        )
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe),
        "{err}"
    );
}

/// A patient reference and a media type that must never be readable from the disk.
const MARKER_PATIENT: &str = "MRN-MARKER-5550123";
const MARKER_TYPE: &str = "application/x-marker-type";

fn with_marker(chunk_size: u32) -> medmesh_store::PutRequest {
    let mut request = request(MARKER_TYPE, chunk_size);
    request.patient = Some(PatientRef::new(MARKER_PATIENT).unwrap());
    request
}

#[test]
fn no_patient_reference_or_type_is_readable_from_any_file_of_the_store() {
    let mut f = fixture();
    let data = b"plaintext that names nobody".to_vec();
    let id = f.put_with(&data, with_marker(MIN_CHUNK_SIZE));
    let wallet = format!("0x{}", "ab".repeat(20));
    let link = f.store.link_patient(&id, &wallet, "test").unwrap();
    assert_eq!(f.store.consent_link(&id).unwrap(), Some(link));
    // Search still finds it by patient and by type, through the keyed tags.
    let by_patient = f
        .store
        .list(&RecordQuery {
            patient: Some(PatientRef::new(MARKER_PATIENT).unwrap()),
            ..Default::default()
        })
        .unwrap();
    let by_type = f
        .store
        .list(&RecordQuery {
            content_type: Some(MARKER_TYPE.parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((by_patient.len(), by_type.len()), (1, 1));
    assert_eq!(
        by_patient[0].1.patient.as_ref().unwrap().as_str(),
        MARKER_PATIENT
    );
    let other = f
        .store
        .list(&RecordQuery {
            patient: Some(PatientRef::new("MRN-OTHER").unwrap()),
            ..Default::default()
        })
        .unwrap();
    assert!(other.is_empty());

    let files = files_under(f.dir.path());
    assert!(
        files.iter().any(|p| p.ends_with(Store::INDEX_FILE)),
        "{files:?}"
    );
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        // The consent link's wallet is sealed too.
        for marker in [MARKER_PATIENT, MARKER_TYPE, "x-marker", &"ab".repeat(20)] {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{marker} is readable in {}",
                path.display()
            );
        }
    }
    assert_eq!(f.read(&id).unwrap(), data);
}

#[test]
fn a_locked_index_refuses_metadata_but_removal_and_housekeeping_work() {
    let mut f = fixture();
    let id = f.put_with(b"locked later", with_marker(MIN_CHUNK_SIZE));
    drop(f.store);
    let store = Store::open(f.dir.path()).unwrap();
    assert!(matches!(store.meta(&id), Err(StoreError::IndexLocked)));
    let err = store.list(&RecordQuery::default()).unwrap_err();
    assert!(err.to_string().contains("passphrase"), "{err}");
    let err = store
        .put_record(
            &mut &b"x"[..],
            &request("text/plain", MIN_CHUNK_SIZE),
            &f.signer,
            &f.cert,
            &[],
            &|_| {},
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::IndexLocked), "{err}");
    assert!(store.check().unwrap().problems.is_empty());
    assert_eq!(store.record_ids().unwrap(), vec![id]);
    store.remove_record(&id, "test").unwrap();
    assert!(!store.has_record(&id).unwrap());

    // Another data dir's key opens nothing of this index.
    let mut g = fixture();
    let id = g.put(b"sealed under the test key");
    drop(g.store);
    let store = Store::open(g.dir.path()).unwrap();
    let wrong = medmesh_crypto::IndexKey::new(&medmesh_crypto::DataKey::generate().unwrap());
    store.unlock_index(wrong);
    let err = store.meta(&id).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt(_)) && err.to_string().contains("index key"),
        "{err}"
    );
}

#[test]
fn records_imported_for_another_institution_are_held_not_listed() {
    let mut f = fixture();
    let id = f.put_with(b"a replica's plaintext", with_marker(MIN_CHUNK_SIZE));
    let manifest = f.store.manifest(&id).unwrap();
    let mut blocks = manifest.body.chunks.clone();
    blocks.push(*id.cid());

    // A second node (its own index key) fetched every block and imported the record.
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Store::open(peer_dir.path()).unwrap();
    peer.unlock_index(medmesh_crypto::IndexKey::new(
        &medmesh_crypto::DataKey::generate().unwrap(),
    ));
    for cid in &blocks {
        peer.blocks()
            .put(cid, &f.store.blocks().get(cid).unwrap())
            .unwrap();
    }
    assert!(peer.import_record(&id, "peer:test").unwrap());
    assert!(peer.has_record(&id).unwrap());
    assert_eq!(
        (peer.record_count().unwrap(), peer.held_count().unwrap()),
        (0, 1)
    );
    let held = peer.held(&id).unwrap().unwrap();
    assert_eq!((held.owner, held.chunks), (f.cert.id().to_string(), 1));
    for query in [
        RecordQuery::default(),
        RecordQuery {
            patient: Some(PatientRef::new(MARKER_PATIENT).unwrap()),
            ..Default::default()
        },
        RecordQuery {
            owner: Some(f.cert.id()),
            ..Default::default()
        },
    ] {
        assert!(peer.list(&query).unwrap().is_empty(), "{query:?}");
    }
    let err = peer.meta(&id).unwrap_err();
    assert!(matches!(err, StoreError::HeldForOther { .. }), "{err}");
    assert_eq!(peer.record_ids().unwrap(), vec![id]);
    let check = peer.check().unwrap();
    assert!(check.problems.is_empty() && check.records == 1, "{check:?}");
    // Imported again: nothing changes.
    assert!(!peer.import_record(&id, "peer:test").unwrap());
    let report = peer.remove_record(&id, "test").unwrap();
    assert_eq!(report.blocks_removed, blocks.len() as u64);
    assert!(!peer.has_record(&id).unwrap());
}
