//! Concurrent imports and removals of one record: each takes or releases the record's
//! block references exactly once, so removal and garbage collection leave no block.

mod common;

use std::collections::BTreeSet;
use std::sync::Barrier;

use common::*;
use medmesh_core::{Cid, ContentType, RecordId};
use medmesh_store::{AuditAction, RemoveReport, Store, StoreError, MIN_CHUNK_SIZE};

/// A record of `chunks` small chunks (more blocks widen the window between a check
/// and a commit that the old code raced in).
fn put_chunks(f: &mut Fixture, chunks: usize, seed: u64) -> RecordId {
    f.put_with(
        &noise(chunks * MIN_CHUNK_SIZE as usize, seed),
        request(ContentType::OCTET_STREAM, MIN_CHUNK_SIZE),
    )
}

/// The manifest block and every chunk of a record.
fn blocks_of(store: &Store, id: &RecordId) -> BTreeSet<Cid> {
    let mut blocks: BTreeSet<Cid> = store
        .manifest(id)
        .unwrap()
        .body
        .chunks
        .into_iter()
        .collect();
    blocks.insert(*id.cid());
    blocks
}

fn stored_blocks(store: &Store) -> BTreeSet<Cid> {
    store.blocks().scan().unwrap().blocks.into_iter().collect()
}

/// Runs `op` on `n` threads released together; returns their results in order.
fn together<T: Send>(n: usize, op: impl Fn() -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(n);
    let (barrier, op) = (&barrier, &op);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(move |_| {
                s.spawn(move || {
                    barrier.wait();
                    op()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_imports_of_one_record_index_it_once() {
    let mut f = fixture();
    let id = put_chunks(&mut f, 32, 21);
    let blocks = blocks_of(&f.store, &id);

    // A second node that fetched every block of the record but has not indexed it.
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Store::open(peer_dir.path()).unwrap();
    peer.unlock_index(medmesh_testkit::index_key());
    for cid in &blocks {
        peer.blocks()
            .put(cid, &f.store.blocks().get(cid).unwrap())
            .unwrap();
    }

    let imported = together(8, || peer.import_record(&id, "peer").unwrap());
    assert_eq!(
        imported.iter().filter(|&&new| new).count(),
        1,
        "exactly one import indexes the record: {imported:?}"
    );
    let imports = peer
        .audit_page(0, 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == AuditAction::RecordImport)
        .count();
    assert_eq!(imports, 1);

    // One reference per block: removal frees every block and gc finds nothing left.
    let report = peer.remove_record(&id, "test").unwrap();
    assert_eq!(report.blocks_removed, blocks.len() as u64);
    let gc = peer.gc("test").unwrap();
    assert_eq!(gc.blocks_removed, 0, "{gc:?}");
    assert!(
        stored_blocks(&peer).is_empty(),
        "blocks left: {:?}",
        stored_blocks(&peer)
    );
    let check = peer.check().unwrap();
    assert!(
        check.problems.is_empty() && check.unreferenced_blocks == 0 && check.records == 0,
        "{check:?}"
    );
}

#[test]
fn concurrent_removals_of_one_record_succeed_once() {
    let mut f = fixture();
    let keep = put_chunks(&mut f, 2, 22);
    let gone = put_chunks(&mut f, 32, 23);
    let gone_blocks = blocks_of(&f.store, &gone);
    let bytes: u64 = gone_blocks
        .iter()
        .map(|c| f.store.blocks().get(c).unwrap().len() as u64)
        .sum();

    let results: Vec<Result<RemoveReport, StoreError>> =
        together(5, || f.store.remove_record(&gone, "test"));
    let shown: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(report) => format!("{report:?}"),
            Err(e) => e.to_string(),
        })
        .collect();
    let reports: Vec<&RemoveReport> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(reports.len(), 1, "exactly one removal succeeds: {shown:?}");
    assert_eq!(
        (reports[0].blocks_removed, reports[0].bytes_freed),
        (gone_blocks.len() as u64, bytes),
        "the successful removal frees every block: {shown:?}"
    );
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, StoreError::UnknownRecord(_)), "{shown:?}");
        }
    }

    assert_eq!(stored_blocks(&f.store), blocks_of(&f.store, &keep));
    assert_eq!(f.read(&keep).unwrap().len(), 2 * MIN_CHUNK_SIZE as usize);
    let removals = f
        .store
        .audit_page(0, 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == AuditAction::RecordRemove)
        .count();
    assert_eq!(removals, 1);
    let check = f.store.check().unwrap();
    assert!(
        check.problems.is_empty() && check.unreferenced_blocks == 0,
        "{check:?}"
    );
}

/// A record removed while it is being read: the read finishes whole, a read that starts
/// after the removal is refused, and the blocks go when the first read ends.
#[test]
fn a_removal_during_a_read_lets_the_read_finish_then_frees_the_blocks() {
    let mut f = fixture();
    let data = noise(16 * MIN_CHUNK_SIZE as usize, 41);
    let id = f.put_with(&data, request(ContentType::OCTET_STREAM, MIN_CHUNK_SIZE));
    let blocks = blocks_of(&f.store, &id);
    let reading = f.store.open_record(&id, &f.cert, &mut f.decryptor).unwrap();

    let report = f.store.remove_record(&id, "test").unwrap();
    assert_eq!(report.blocks_removed, blocks.len() as u64);
    assert!(
        blocks.is_subset(&stored_blocks(&f.store)),
        "blocks stay while the record is read"
    );
    let keys = institution(0);
    let mut other = keys.unlock_decryption(&pass()).unwrap();
    assert!(matches!(
        f.store.open_record(&id, &f.cert, &mut other),
        Err(StoreError::UnknownRecord(_))
    ));

    let mut out = Vec::new();
    reading.copy_to(&mut out, "test", &|_| {}).unwrap();
    assert_eq!(out, data, "the read that began before the removal is whole");
    assert!(
        stored_blocks(&f.store).is_disjoint(&blocks),
        "the last reader deleted the blocks"
    );
    assert!(f.store.check().unwrap().problems.is_empty());
    assert_eq!(f.store.check().unwrap().unreferenced_blocks, 0);
}
