//! Key release under concurrent clients: 8 researchers' clients each ask a node for a
//! record's key in a loop (challenge, signed request, release: EIP-191 recovery, the
//! on-chain key check, the grant cache, ML-DSA manifest verification, ML-KEM unwrap and
//! re-wrap, an audit entry) against the embedded dev chain. Prints requests per second
//! and latency percentiles.
//!
//! `cargo bench -p medmesh-api --bench keyrelease` (`MEDMESH_BENCH_SECS`, default 20;
//! `MEDMESH_BENCH_CLIENTS`, default 8; `MEDMESH_BENCH_DIR`, default /dev/shm).

#![allow(missing_docs, clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use medmesh_testkit::chain::{grant_scope, Backend, Chain};
use medmesh_testkit::institution;
use medmesh_testkit::node::TestNode;
use serde_json::Value;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let secs: u64 = env_or("MEDMESH_BENCH_SECS", 20);
    let clients: usize = env_or("MEDMESH_BENCH_CLIENTS", 8);
    let base: PathBuf = std::env::var_os("MEDMESH_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/dev/shm".into());
    let chain = Chain::start_on(Backend::Embedded).await;
    let node = TestNode::start_in(&base, |c| {
        c.rate_per_second = 1e9;
        c.rate_burst = 1e9;
    })
    .await;
    node.connect_chain(&chain);
    let id = node.upload(medmesh_testkit::noise(64 << 10, 5)).await;
    let link: Value = node
        .link(&id, &chain.patient.address().to_string())
        .await
        .json()
        .await
        .unwrap();
    let scope = link["scope"].as_str().unwrap().parse().unwrap();
    let researcher_cert = institution(1).certificate().unwrap();
    chain.publish_key(&chain.researcher, &researcher_cert).await;
    grant_scope(&chain, scope, 42, chain.now().await + 24 * 3600).await;
    let certificate = String::from_utf8(researcher_cert.to_armored().unwrap()).unwrap();

    let until = Instant::now() + Duration::from_secs(secs);
    let node = std::sync::Arc::new(node);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (node, id, certificate) = (node.clone(), id.clone(), certificate.clone());
        let researcher = chain.researcher.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let resp = node.request_key(&researcher, &id, 42, &certificate).await;
                assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
                latencies.push(started.elapsed());
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "key release, {clients} concurrent clients, {secs} s: {} releases, {:.1} req/s; \
         latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        all.len(),
        all.len() as f64 / secs as f64,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        all.last().unwrap().as_secs_f64() * 1e3
    );
}
