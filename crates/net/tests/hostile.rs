//! A node under attack by a peer that speaks its protocols wrongly (a bare libp2p node
//! of the test's own: `medmesh_testkit::hostile`). Each test reproduces one abuse and
//! checks the node bounds what it costs, while honest peers are still served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use medmesh_core::RecordId;
use medmesh_net::{FetchOptions, NetConfig, OpenPolicy};
use medmesh_store::Store;
use medmesh_testkit::hostile::{bitswap_wants, read_frame, varint, write_frame, Hostile};
use medmesh_testkit::net::{put_record, Peer as Node};
use medmesh_testkit::noise;

const BITSWAP: &str = "/ipfs/bitswap/1.2.0";
const FAST_PATH: &str = "/medmesh/blocks/1.0.0";
const MIB: usize = 1 << 20;

async fn victim_with(configure: impl FnOnce(&mut NetConfig)) -> Node {
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
const CHUNK: usize = MIB - 16;

/// A record of `n` full-size chunks.
fn record(store: &Store, n: usize) -> RecordId {
    put_record(store, &mut &noise(n * CHUNK, 3)[..], CHUNK as u32)
}

/// Polls `check` every 50 ms until it holds (panics with `what` after `within`).
async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads line")
}

/// One want-list naming one 1 MiB chunk 10 000 times used to make the node send it
/// 10 000 times (10 GiB for a 460 KB message); each CID is now answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_want_list_repeating_one_block_gets_it_once() {
    let victim = victim_with(|_| {}).await;
    let id = record(&victim.store, 2);
    let chunk = victim.store.manifest(&id).unwrap().body.chunks[0];
    let attacker = Hostile::connect(&victim.addr()).await;
    let mut answers = attacker.accept(BITSWAP);
    let mut wants = attacker.open(BITSWAP).await;
    write_frame(&mut wants, &bitswap_wants(&chunk.to_bytes(), 10_000))
        .await
        .unwrap();
    let (mut stream, received) = tokio::time::timeout(Duration::from_secs(10), async {
        let (_, mut stream) = answers.next().await.expect("the victim answers");
        let first = read_frame(&mut stream, 8 * MIB)
            .await
            .unwrap()
            .expect("a block");
        (stream, first.len())
    })
    .await
    .expect("the block arrives");
    assert!(received > CHUNK, "the first answer carries the block");
    // Anything more within 3 s would be a repeat.
    let mut more = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(frame)) = read_frame(&mut stream, 8 * MIB).await {
            more += frame.len();
        }
    })
    .await;
    assert!(
        more < 1024,
        "{more} more bytes were sent for a repeated want"
    );
}

/// A fast-path request listing one chunk many times, or more chunks than a request may
/// hold, is refused with a reason before anything is read from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_requests_repeating_chunks_or_too_large_are_refused() {
    let victim = victim_with(|_| {}).await;
    let id = record(&victim.store, 1);
    let attacker = Hostile::connect(&victim.addr()).await;
    for (chunks, refusal) in [
        (vec![0u32; 200], "chunk 0 is asked more than once"),
        (
            (0..300).collect(),
            "300 chunks asked; at most 256 per request",
        ),
    ] {
        let mut stream = attacker.open(FAST_PATH).await;
        let request = serde_json::json!({ "root": id.to_string(), "chunks": chunks });
        write_frame(&mut stream, &serde_json::to_vec(&request).unwrap())
            .await
            .unwrap();
        let reply = read_frame(&mut stream, 64 * 1024).await.unwrap().unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(refusal),
            "{reply}"
        );
    }
}

/// Fast-path streams that ask for a whole record and never read used to hold a
/// blocking thread each, starving every other peer. Now a peer has at most
/// `max_fast_path_requests_per_peer` served at once, none holds a thread while
/// waiting, and an honest peer fetches meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fast_path_streams_that_never_read_hold_no_thread_and_honest_fetches_go_on() {
    let victim = victim_with(|_| {}).await;
    let id = record(&victim.store, 32);
    let attacker = Hostile::connect(&victim.addr()).await;
    let before = threads();
    let request = serde_json::json!({
        "root": id.to_string(),
        "manifest": true,
        "chunks": (0..32).collect::<Vec<u32>>(),
    });
    let request = serde_json::to_vec(&request).unwrap();
    let mut idle = Vec::new();
    for _ in 0..40 {
        let mut stream = attacker.open(FAST_PATH).await;
        // Under a burst the node may drop a stream unread (libp2p-stream's accept
        // queue is short): that is shedding load, fine for an attacker's streams.
        if write_frame(&mut stream, &request).await.is_ok() {
            idle.push(stream); // kept open, never read
        }
    }
    assert!(!idle.is_empty());
    // Blocking threads that only ran a block read exit after tokio's 10 s keep-alive;
    // threads held by streams that do not read would still be there.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let stats = victim.net.stats();
    assert!(
        stats.fast_path_requests <= NetConfig::default().max_fast_path_requests_per_peer,
        "{stats:?}"
    );
    let grown = threads().saturating_sub(before);
    assert!(
        grown < 8,
        "{grown} more threads while {} streams do not read",
        idle.len()
    );

    let honest = Node::start(&[&victim]).await;
    honest.wait_connected(victim.net.peer_id()).await;
    let options = FetchOptions {
        providers: vec![victim.net.peer_id()],
        ..FetchOptions::default()
    };
    let fetched = tokio::time::timeout(
        Duration::from_secs(60),
        honest.net.fetch_record(id, options, Arc::new(|_| {})),
    )
    .await
    .expect("the honest fetch is not starved")
    .expect("fetch");
    assert!(fetched.imported);
    drop(idle);
}

/// Bitswap frames announced large and never finished used to hold their whole size
/// until disconnect (400 streams: 1.67 GB). Now a peer holds a few streams, a large
/// frame takes from a bounded budget, and an unfinished one is dropped after
/// `frame_timeout_secs`, giving its memory back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unfinished_bitswap_frames_are_dropped_and_their_memory_returned() {
    let victim = victim_with(|c| {
        c.frame_timeout_secs = 2;
        c.frame_budget_bytes = 8 * MIB;
    })
    .await;
    let budget = victim.net.stats().frame_budget_free;
    assert_eq!(budget, 8 * MIB);
    let attacker = Hostile::connect(&victim.addr()).await;
    let mut writers = Vec::new();
    for _ in 0..6 {
        let mut stream = attacker.open(BITSWAP).await;
        writers.push(tokio::spawn(async move {
            let started = Instant::now();
            // Announce 4 MiB, send all but one byte, then wait for the victim to hang up.
            let sent = async {
                stream.write_all(&varint(4 * MIB as u64)).await?;
                stream.write_all(&vec![0u8; 4 * MIB - 1]).await?;
                stream.flush().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(20), sent).await;
            let mut byte = [0u8; 1];
            let closed = tokio::time::timeout(
                Duration::from_secs(20),
                futures::AsyncReadExt::read(&mut stream, &mut byte),
            )
            .await;
            (closed.is_ok(), started.elapsed())
        }));
    }
    for writer in writers {
        let (closed, after) = writer.await.unwrap();
        assert!(closed, "the victim kept an unfinished frame's stream open");
        assert!(
            after < Duration::from_secs(15),
            "closed only after {after:?}"
        );
    }
    eventually(
        Duration::from_secs(5),
        "budget and streams released",
        || {
            let stats = victim.net.stats();
            stats.frame_budget_free == budget && stats.bitswap_streams == 0
        },
    )
    .await;
}

/// Every peer that ever connected used to leave its bitswap queue behind (2 000
/// connect/disconnect cycles: +33 MB). Queues now go with the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_that_come_and_go_leave_no_bitswap_queue_behind() {
    let victim = victim_with(|_| {}).await;
    let id = record(&victim.store, 1);
    let chunk = victim.store.manifest(&id).unwrap().body.chunks[0];
    for _ in 0..20 {
        let attacker = Hostile::connect(&victim.addr()).await;
        let _answers = attacker.accept(BITSWAP);
        let mut wants = attacker.open(BITSWAP).await;
        write_frame(&mut wants, &bitswap_wants(&chunk.to_bytes(), 1))
            .await
            .unwrap();
        eventually(Duration::from_secs(5), "the victim answers", || {
            victim.net.stats().bitswap_queues > 0
        })
        .await;
        drop(attacker);
    }
    eventually(Duration::from_secs(10), "every queue freed", || {
        let stats = victim.net.stats();
        stats.bitswap_queues == 0 && stats.connected_peers == 0
    })
    .await;
}

/// Provider records used to share one table of 1 024 keys with other peers' records:
/// a node holding more records than that never announced the rest, and nobody found
/// them. Its own announcements are now kept apart, bounded by what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_announces_every_record_beyond_the_old_1024_key_cap() {
    let holder = victim_with(|_| {}).await;
    let ids = medmesh_testkit::net::put_records(
        &holder.store,
        1100,
        |i| Box::new(std::io::Cursor::new(format!("record {i}").into_bytes())),
        4096,
    );
    let seeker = Node::start(&[&holder]).await;
    seeker.wait_connected(holder.net.peer_id()).await;
    for id in &ids {
        holder
            .net
            .provide(*id.cid())
            .await
            .unwrap_or_else(|e| panic!("record {id} not announced: {e}"));
    }
    for id in [ids[0], ids[1050], ids[1099]] {
        let providers = seeker.net.find_providers(*id.cid()).await.unwrap();
        assert_eq!(providers, vec![holder.net.peer_id()], "record {id}");
    }
}

/// An ADD_PROVIDER flood from one peer used to fill the table this node's own
/// announcements share, so new records were never announced. Now a peer's records
/// are bounded apart from ours (and per peer), and ours still go out and are found.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_record_flood_does_not_stop_our_announcements() {
    let victim = victim_with(|c| c.max_provider_records_per_peer = 500).await;
    let kad = NetConfig::default().kad_protocol;
    let (flooder, flood) =
        medmesh_testkit::hostile::flood_provider_records(&victim.addr(), &kad, 2000).await;
    let id = record(&victim.store, 1);
    victim
        .net
        .provide(*id.cid())
        .await
        .expect("our announcement is not refused after the flood");
    let seeker = Node::start(&[&victim]).await;
    seeker.wait_connected(victim.net.peer_id()).await;
    let providers = seeker.net.find_providers(*id.cid()).await.unwrap();
    assert_eq!(providers, vec![victim.net.peer_id()]);
    // The flood landed, up to the flooder's share and no further.
    let kept = seeker.net.find_providers(flood[0]).await.unwrap();
    assert_eq!(kept, vec![flooder], "the first flooded records are kept");
    let refused = seeker.net.find_providers(flood[1999]).await.unwrap();
    assert!(refused.is_empty(), "beyond its share: {refused:?}");
}
