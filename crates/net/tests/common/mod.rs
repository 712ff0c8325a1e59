//! What the tests of a node under attack share: a victim node on loopback, records of
//! full-size chunks, polling.
#![allow(dead_code)] // each test binary uses part of it

use std::sync::Arc;
use std::time::{Duration, Instant};

use medmesh_core::RecordId;
use medmesh_net::{NetConfig, OpenPolicy};
use medmesh_store::Store;
use medmesh_testkit::net::{put_record, Peer as Node};
use medmesh_testkit::noise;

pub const BITSWAP: &str = "/ipfs/bitswap/1.2.0";
pub const FAST_PATH: &str = "/medmesh/blocks/1.0.0";
pub const MIB: usize = 1 << 20;

pub async fn victim_with(configure: impl FnOnce(&mut NetConfig)) -> Node {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Node::start_with_config(
        &std::env::temp_dir(),
        &[],
        "/ip4/127.0.0.1/tcp/0",
        |s| s,
        Arc::new(OpenPolicy),
        configure,
    )
    .await
}

/// The largest chunk (a sealed chunk, plaintext and tag, fills a 1 MiB block).
pub const CHUNK: usize = MIB - 16;

/// A record of `n` full-size chunks.
pub fn record(store: &Store, n: usize) -> RecordId {
    put_record(store, &mut &noise(n * CHUNK, 3)[..], CHUNK as u32)
}

/// Polls `check` every 50 ms until it holds (panics with `what` after `within`).
pub async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads line")
}
