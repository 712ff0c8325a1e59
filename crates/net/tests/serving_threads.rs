//! Fast-path serving holds no thread while a peer does not read. Alone in its test
//! binary: it counts the process's threads, which tests running beside it would add to.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{record, threads, victim_with, FAST_PATH};
use medmesh_net::{FetchOptions, NetConfig};
use medmesh_testkit::hostile::{write_frame, Hostile};
use medmesh_testkit::net::Peer as Node;

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
