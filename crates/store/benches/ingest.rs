#![allow(missing_docs, clippy::print_stdout)]
//! Ingest benchmark: raw AES-256-GCM and SHA-256 throughput, full ingest (encrypt +
//! hash + store, durable) of a 1 GiB input, read-back, and post-quantum key wrap/unwrap
//! rates, all in one run so the ratios compare like with like.
//!
//! `cargo bench -p medmesh-store --bench ingest` (set `MEDMESH_BENCH_MIB` to change the
//! input size, `MEDMESH_BENCH_DIR` for the on-disk store location). Prints a Markdown
//! table for `docs/benchmarks.md`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use medmesh_core::{cid_of, Codec, ContentType, ManifestBody, RecordMeta, MANIFEST_VERSION};
use medmesh_crypto::{DataKey, Passphrase, RecordCipher, SecretKeys};
use medmesh_store::{PutRequest, Store, DEFAULT_CHUNK_SIZE};

const REPEATS: usize = 3;

fn main() {
    let mib: usize = std::env::var("MEDMESH_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let len = mib << 20;
    let input = medmesh_testkit::noise(len, 0x9E37_79B9_7F4A_7C15);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("input {mib} MiB, {cores} cores, chunk {DEFAULT_CHUNK_SIZE} B, best of {REPEATS}\n");

    let aead = gbps(len, best(|| raw_aead(&input)));
    let sha = gbps(len, best(|| raw_sha256(&input)));
    let limit = aead.min(sha);

    let pass = Passphrase::new("benchmark passphrase".into()).unwrap();
    let keys = SecretKeys::generate("Bench Hospital", &pass).unwrap();
    let cert = keys.certificate().unwrap();
    let signer = std::sync::Mutex::new(keys.unlock_signing(&pass).unwrap());
    let mut decryptor = keys.unlock_decryption(&pass).unwrap();

    let mut rows = vec![
        ("raw AES-256-GCM seal, 1 core".to_string(), aead),
        ("raw SHA-256, 1 core".to_string(), sha),
    ];
    let disk_dir = std::env::var_os("MEDMESH_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    for (label, base) in [("tmpfs", PathBuf::from("/dev/shm")), ("disk", disk_dir)] {
        if !base.is_dir() {
            println!("skipping {label}: {} does not exist", base.display());
            continue;
        }
        let raw_write = gbps(len, best(|| raw_durable_write(&base, &input)));
        rows.push((
            format!("raw 1 MiB block files + fsync ({label})"),
            raw_write,
        ));
        let mut read_secs = Duration::MAX;
        let ingest_secs = best(|| {
            let dir = tempfile::tempdir_in(&base).unwrap();
            let store = Store::open(dir.path()).unwrap();
            store.unlock_index(medmesh_testkit::index_key());
            let request = PutRequest {
                content_type: Some(ContentType::OCTET_STREAM.parse().unwrap()),
                patient: None,
                chunk_size: DEFAULT_CHUNK_SIZE,
                actor: "bench".into(),
                idempotency_key: None,
            };
            let start = Instant::now();
            let id = store
                .put_record(&mut &input[..], &request, &signer, &cert, &[], &|_| {})
                .unwrap();
            let took = start.elapsed();
            let start = Instant::now();
            let mut sink = CountingSink(0);
            store
                .read_record(&id, &cert, &mut decryptor, &mut sink, "bench", &|_| {})
                .unwrap();
            read_secs = read_secs.min(start.elapsed());
            assert_eq!(sink.0, len as u64);
            took
        });
        let ingest = gbps(len, ingest_secs);
        rows.push((format!("ingest: encrypt + hash + store ({label})"), ingest));
        rows.push((
            format!("read: load + verify + decrypt ({label})"),
            gbps(len, read_secs),
        ));
        println!(
            "{label}: ingest / min(raw AEAD, raw SHA-256) = {ingest:.2} / {limit:.2} = {:.0} %; \
             ingest / raw durable write = {:.0} %",
            100.0 * ingest / limit,
            100.0 * ingest / raw_write
        );
    }

    println!("\n| measurement | GB/s |\n|---|---|");
    for (name, value) in &rows {
        println!("| {name} | {value:.2} |");
    }

    // Post-quantum key wrap (ML-KEM-768+X25519 PKESK v6) and unwrap.
    let key = DataKey::generate().unwrap();
    let n = 200;
    let start = Instant::now();
    let mut wraps = Vec::with_capacity(n);
    for _ in 0..n {
        wraps.push(cert.wrap(&key).unwrap());
    }
    let wrap_rate = n as f64 / start.elapsed().as_secs_f64();
    let envelope = RecordCipher::new_header(DEFAULT_CHUNK_SIZE).unwrap();
    let meta = RecordCipher::new(&key, &envelope)
        .unwrap()
        .seal_meta(&RecordMeta {
            content_type: ContentType::OCTET_STREAM.parse().unwrap(),
            size: 0,
            created: time::OffsetDateTime::now_utc(),
            owner: cert.id(),
            patient: None,
        })
        .unwrap();
    let mut body = ManifestBody {
        version: MANIFEST_VERSION,
        owner: cert.id(),
        meta,
        envelope,
        chunks: vec![cid_of(Codec::Raw, b"")],
        key_wraps: vec![],
    };
    let start = Instant::now();
    for wrap in wraps {
        body.key_wraps = vec![wrap];
        assert_eq!(
            decryptor.unwrap_key(&body).unwrap().as_bytes(),
            key.as_bytes()
        );
    }
    let unwrap_rate = n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..n {
        signer.lock().unwrap().sign_manifest(body.clone()).unwrap();
    }
    let sign_rate = n as f64 / start.elapsed().as_secs_f64();
    println!("\n| operation (1 core) | per second |\n|---|---|");
    println!("| key wrap (ML-KEM-768+X25519) | {wrap_rate:.0} |");
    println!("| key unwrap | {unwrap_rate:.0} |");
    println!("| manifest signature (ML-DSA-65+Ed25519) | {sign_rate:.0} |");
}

fn best(mut f: impl FnMut() -> Duration) -> Duration {
    (0..REPEATS).map(|_| f()).min().unwrap()
}

fn gbps(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64() / 1e9
}

fn raw_aead(input: &[u8]) -> Duration {
    let cipher = RecordCipher::new(
        &DataKey::generate().unwrap(),
        &RecordCipher::new_header(DEFAULT_CHUNK_SIZE).unwrap(),
    )
    .unwrap();
    let mut buf = Vec::with_capacity(DEFAULT_CHUNK_SIZE as usize + 16);
    let start = Instant::now();
    for (i, chunk) in input.chunks(DEFAULT_CHUNK_SIZE as usize).enumerate() {
        buf.clear();
        buf.extend_from_slice(chunk);
        cipher.seal_chunk(i as u64, false, &mut buf).unwrap();
    }
    start.elapsed()
}

fn raw_sha256(input: &[u8]) -> Duration {
    let start = Instant::now();
    let mut acc = 0u8;
    for chunk in input.chunks(DEFAULT_CHUNK_SIZE as usize) {
        acc ^= cid_of(Codec::Raw, chunk).hash().digest()[0];
    }
    std::hint::black_box(acc);
    start.elapsed()
}

/// What the disk can do with the store's durability pattern and no crypto: 1 MiB
/// files, each fsynced, on the same number of threads as ingest.
fn raw_durable_write(base: &Path, input: &[u8]) -> Duration {
    use std::io::Write;
    let dir = tempfile::tempdir_in(base).unwrap();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunks: Vec<&[u8]> = input.chunks(1 << 20).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (chunks, dir) = (&chunks, dir.path());
            s.spawn(move || {
                for (i, c) in chunks.iter().enumerate().skip(t).step_by(threads) {
                    let mut f = std::fs::File::create(dir.join(i.to_string())).unwrap();
                    f.write_all(c).unwrap();
                    f.sync_all().unwrap();
                }
            });
        }
    });
    std::fs::File::open(dir.path()).unwrap().sync_all().unwrap();
    start.elapsed()
}

struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
