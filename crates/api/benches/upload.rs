//! API upload benchmark: a record streamed through the HTTP API versus the store's own
//! ingest of the same bytes, in one run, same store, same machine.
//!
//! `cargo bench -p medmesh-api --bench upload` (`MEDMESH_BENCH_MIB`, default 1024;
//! `MEDMESH_BENCH_DIR`, default /dev/shm so the disk's noise stays out of the ratio).

#![allow(missing_docs, clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use medmesh_store::{PutRequest, DEFAULT_CHUNK_SIZE};
use medmesh_testkit::node::TestNode;

const REPEATS: usize = 3;

#[tokio::main]
async fn main() {
    let mib: usize = std::env::var("MEDMESH_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let base = std::env::var_os("MEDMESH_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/dev/shm".into());
    let len = mib << 20;
    let data = bytes::Bytes::from(medmesh_testkit::noise(len, 3));
    let node = TestNode::start_in(&base, |c| c.max_record_bytes = 1 << 40).await;
    let client = reqwest::Client::new();
    println!(
        "input {mib} MiB, store under {}, best of {REPEATS}\n",
        base.display()
    );

    let mut direct = Duration::MAX;
    let mut direct_file = Duration::MAX;
    let mut api = Duration::MAX;
    let input_file = tempfile::NamedTempFile::new_in(&base)
        .unwrap()
        .into_temp_path();
    std::fs::write(&input_file, &data).unwrap();
    let input_file = std::sync::Arc::new(input_file);
    for _ in 0..REPEATS {
        // Direct: the store's ingest, on the blocking pool as the API does; from memory,
        // and from a file on the same filesystem (one more copy, as a CLI put pays).
        let state = node.state.clone();
        let (input, file) = (data.clone(), input_file.clone());
        let (took, took_file) = tokio::task::spawn_blocking(move || {
            let from_memory = direct_ingest(&state, &mut &input[..]);
            let mut f = std::fs::File::open(&**file).unwrap();
            (from_memory, direct_ingest(&state, &mut f))
        })
        .await
        .unwrap();
        direct_file = direct_file.min(took_file);
        direct = direct.min(took);

        let start = Instant::now();
        let resp = client
            .post(node.url("/v1/records"))
            .bearer_auth(&node.write_token)
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        api = api.min(start.elapsed());
        let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        client
            .delete(node.url(&format!("/v1/records/{id}")))
            .bearer_auth(&node.write_token)
            .send()
            .await
            .unwrap();
    }
    let mut tcp = Duration::MAX;
    for _ in 0..REPEATS {
        tcp = tcp.min(medmesh_testkit::net::loopback_tcp(&data).await);
    }
    let gbps = |d: Duration| len as f64 / d.as_secs_f64() / 1e9;
    println!("| measurement | GB/s |\n|---|---|");
    println!(
        "| raw loopback TCP, send + receive-and-discard | {:.2} |",
        gbps(tcp)
    );
    println!(
        "| direct ingest (Store::put_record), from memory | {:.2} |",
        gbps(direct)
    );
    println!(
        "| direct ingest (Store::put_record), from a file | {:.2} |",
        gbps(direct_file)
    );
    println!("| upload through the HTTP API | {:.2} |", gbps(api));
    let bound = 1.0 / (1.0 / gbps(direct) + 1.0 / gbps(tcp));
    println!(
        "\nAPI upload / direct ingest = {:.0} %; if ingest and the loopback transfer share \
         the cores additively the bound is {bound:.2} GB/s, and the API reaches {:.0} % of it",
        100.0 * direct.as_secs_f64() / api.as_secs_f64(),
        100.0 * gbps(api) / bound
    );
    println!(
        "API upload / direct ingest from a file = {:.0} %",
        100.0 * direct_file.as_secs_f64() / api.as_secs_f64()
    );
}

/// Times one `put_record` of `input` into the node's store, then removes the record.
fn direct_ingest(
    state: &medmesh_api::AppState,
    input: &mut (dyn std::io::Read + Send),
) -> Duration {
    let keys = medmesh_testkit::institution(0);
    let signer =
        std::sync::Mutex::new(keys.unlock_signing(&medmesh_testkit::passphrase()).unwrap());
    let request = PutRequest {
        content_type: Some("application/octet-stream".parse().unwrap()),
        patient: None,
        chunk_size: DEFAULT_CHUNK_SIZE,
        actor: "bench".into(),
        idempotency_key: None,
    };
    let cert = keys.certificate().unwrap();
    let start = Instant::now();
    let id = state
        .store()
        .put_record(input, &request, &signer, &cert, &[], &|_| {})
        .unwrap();
    let took = start.elapsed();
    state.store().remove_record(&id, "bench").unwrap();
    took
}
