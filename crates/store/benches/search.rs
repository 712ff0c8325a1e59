#![allow(missing_docs, clippy::print_stdout)]
//! Search benchmark: queries per second of the record index by patient, by media type,
//! by time window and unfiltered, over a store of many small records, one thread.
//!
//! `cargo bench -p medmesh-store --bench search` (`MEDMESH_BENCH_RECORDS` records,
//! default 10 000, over 100 patients and 4 types, in a tmpfs when `/dev/shm` exists).
//! Each query asks for one page of 50, as the HTTP API's search does. Prints a Markdown
//! table for `docs/benchmarks.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use medmesh_core::{ContentType, PatientRef};
use medmesh_crypto::{Passphrase, SecretKeys};
use medmesh_store::{PutRequest, RecordQuery, Store, MIN_CHUNK_SIZE};

const PATIENTS: usize = 100;
const TYPES: [&str; 4] = [
    ContentType::FHIR_JSON,
    ContentType::HL7_V2,
    ContentType::DICOM,
    ContentType::OCTET_STREAM,
];
const PAGE: usize = 50;
const RUN: Duration = Duration::from_secs(3);

/// The `i`-th query of one kind.
type QueryOf = Box<dyn Fn(usize) -> RecordQuery>;

fn main() {
    let n: usize = std::env::var("MEDMESH_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let base = [PathBuf::from("/dev/shm"), std::env::temp_dir()]
        .into_iter()
        .find(|p| p.is_dir())
        .expect("a temp dir");
    let dir = tempfile::tempdir_in(&base).unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.unlock_index(medmesh_testkit::index_key());
    let pass = Passphrase::new("benchmark passphrase".into()).unwrap();
    let keys = SecretKeys::generate("Bench Hospital", &pass).unwrap();
    let cert = keys.certificate().unwrap();
    let signer = std::sync::Mutex::new(keys.unlock_signing(&pass).unwrap());

    let start = Instant::now();
    for i in 0..n {
        let request = PutRequest {
            content_type: Some(TYPES[i % TYPES.len()].parse().unwrap()),
            patient: Some(PatientRef::new(&format!("MRN-{:04}", i % PATIENTS)).unwrap()),
            chunk_size: MIN_CHUNK_SIZE,
            actor: "bench".into(),
            idempotency_key: None,
        };
        store
            .put_record(
                &mut &medmesh_testkit::noise(200, i as u64)[..],
                &request,
                &signer,
                &cert,
                &[],
                &|_| {},
            )
            .unwrap();
    }
    println!(
        "{n} records ({PATIENTS} patients, {} types) stored in {:.1} s on {}; pages of {PAGE}, one thread, {} s per query\n",
        TYPES.len(),
        start.elapsed().as_secs_f64(),
        base.display(),
        RUN.as_secs()
    );
    let middle = store
        .list(&RecordQuery {
            limit: n / 2,
            ..Default::default()
        })
        .unwrap()
        .last()
        .map(|(_, m)| m.created)
        .unwrap();

    println!("| query | queries/s | records per page |\n|---|---|---|");
    let queries: [(&str, QueryOf); 4] = [
        (
            "by patient",
            Box::new(|i| RecordQuery {
                patient: Some(PatientRef::new(&format!("MRN-{:04}", i % PATIENTS)).unwrap()),
                ..Default::default()
            }),
        ),
        (
            "by type",
            Box::new(|i| RecordQuery {
                content_type: Some(TYPES[i % TYPES.len()].parse().unwrap()),
                ..Default::default()
            }),
        ),
        (
            "by patient and type",
            Box::new(|i| RecordQuery {
                patient: Some(PatientRef::new(&format!("MRN-{:04}", i % PATIENTS)).unwrap()),
                content_type: Some(TYPES[i % TYPES.len()].parse().unwrap()),
                ..Default::default()
            }),
        ),
        (
            "time window (from the middle)",
            Box::new(move |_| RecordQuery {
                since: Some(middle),
                ..Default::default()
            }),
        ),
    ];
    for (name, query) in queries {
        let (mut done, mut found) = (0usize, 0usize);
        let start = Instant::now();
        while start.elapsed() < RUN {
            let mut q = query(done);
            q.limit = PAGE;
            found += store.list(&q).unwrap().len();
            done += 1;
        }
        let rate = done as f64 / start.elapsed().as_secs_f64();
        println!("| {name} | {rate:.0} | {:.0} |", found as f64 / done as f64);
    }
}
