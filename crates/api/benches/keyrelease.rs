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

use alloy::signers::Signer;
use medmesh_chain::KeyRequest;
use medmesh_core::RecordId;
use medmesh_testkit::chain::{grant_scope, Backend, Chain};
use medmesh_testkit::institution;
use medmesh_testkit::node::TestNode;
use serde_json::{json, Value};

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
    let http = reqwest::Client::new();
    let created: Value = http
        .post(node.url("/v1/records"))
        .bearer_auth(&node.write_token)
        .body(medmesh_testkit::noise(64 << 10, 5))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let link: Value = http
        .put(node.url(&format!("/v1/records/{id}/consent-link")))
        .bearer_auth(&node.write_token)
        .json(&json!({"patient": chain.patient.address().to_string()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scope = link["scope"].as_str().unwrap().parse().unwrap();
    let researcher_cert = institution(1).certificate().unwrap();
    chain.publish_key(&chain.researcher, &researcher_cert).await;
    grant_scope(&chain, scope, 42, chain.now().await + 24 * 3600).await;
    let certificate = String::from_utf8(researcher_cert.to_armored().unwrap()).unwrap();

    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, id, certificate) = (http.clone(), id.clone(), certificate.clone());
        let (url, token) = (node.url(""), node.read_token.clone());
        let researcher = chain.researcher.clone();
        tasks.spawn(async move {
            let record: RecordId = id.parse().unwrap();
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let challenge: Value = http
                    .post(format!("{url}/v1/access/challenge"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let challenge = challenge["challenge"].as_str().unwrap().to_string();
                let message = KeyRequest::message(&record, researcher.address(), 42, &challenge);
                let signature = researcher.sign_message(message.as_bytes()).await.unwrap();
                let resp = http
                    .post(format!("{url}/v1/records/{id}/key"))
                    .bearer_auth(&token)
                    .json(&json!({
                        "grantee": researcher.address().to_string(),
                        "purpose": 42,
                        "certificate": certificate,
                        "challenge": challenge,
                        "signature": format!("0x{}", hex::encode(signature.as_bytes())),
                    }))
                    .send()
                    .await
                    .unwrap();
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
