//! A `medmesh node` process under attack on loopback: while an honest peer fetches a
//! 256 MiB record from it, a misbehaving peer runs the attacks of
//! `crates/net/tests/hostile.rs` one after another (each bounded in count and time).
//! The honest fetch completes, the node's resident memory stays under 512 MiB, its API
//! answers within 1 s throughout, and nothing forged enters its index.
//!
//! `MEDMESH_HOSTILE_MIB` sets the record's size (default 256).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Proc;
use futures::AsyncWriteExt;
use medmesh_net::{FetchOptions, Multiaddr, NetConfig, PeerId, DATASETS_TOPIC, PRESENCE_TOPIC};
use medmesh_testkit::hostile::{
    bitswap_wants, flood_provider_records, forge_manifest, varint, write_frame, Hostile,
};
use medmesh_testkit::net::{put_record, Peer};
use medmesh_testkit::noise;

const MIB: usize = 1 << 20;
const RSS_LIMIT: u64 = 512 * MIB as u64;
const API_LIMIT: Duration = Duration::from_secs(1);
const BITSWAP: &str = "/ipfs/bitswap/1.2.0";
const FAST_PATH: &str = "/medmesh/blocks/1.0.0";

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Samples the node's RSS and API latency every 200 ms until `stop`.
fn monitor(victim: &Proc, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Duration)> {
    let pid = victim.child.as_ref().expect("running").id();
    let client = victim.client();
    tokio::spawn(async move {
        let (mut rss, mut slowest) = (0u64, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            rss = rss.max(rss_bytes(pid));
            let asked = Instant::now();
            let answered = tokio::time::timeout(Duration::from_secs(10), client.health()).await;
            let took = asked.elapsed();
            assert!(
                matches!(answered, Ok(Ok(_))),
                "the API did not answer: {answered:?}"
            );
            slowest = slowest.max(took);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (rss, slowest)
    })
}

/// The attacks, one after another.
async fn attack(victim: Multiaddr, peer: PeerId, chunk: Vec<u8>, record: String) {
    let step = |name: &str| eprintln!("hostile: {name}");
    // 1. Fast-path streams that ask for everything and never read.
    step("fast-path streams that never read");
    {
        let attacker = Hostile::connect(&victim).await;
        let request = serde_json::json!({
            "root": record, "manifest": true, "chunks": (0..256).collect::<Vec<u32>>(),
        });
        let request = serde_json::to_vec(&request).unwrap();
        let mut idle = Vec::new();
        for _ in 0..40 {
            let mut stream = attacker.open(FAST_PATH).await;
            if write_frame(&mut stream, &request).await.is_ok() {
                idle.push(stream);
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // 2. One want-list naming one chunk 20 000 times.
    step("duplicate bitswap wants");
    {
        let attacker = Hostile::connect(&victim).await;
        let _answers = attacker.accept(BITSWAP);
        let mut wants = attacker.open(BITSWAP).await;
        let _ = write_frame(&mut wants, &bitswap_wants(&chunk, 20_000)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // 3. Bitswap frames announced at 4 MiB and never finished.
    step("unfinished bitswap frames");
    {
        let attacker = Hostile::connect(&victim).await;
        let mut streams = Vec::new();
        for _ in 0..8 {
            let mut stream = attacker.open(BITSWAP).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                stream.write_all(&varint(4 * MIB)).await?;
                stream.write_all(&vec![0u8; 4 * MIB - 1]).await
            })
            .await;
            streams.push(stream);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // 4. A forged record offered for replication.
    step("forged replica");
    {
        let forger = Peer::start(&[]).await;
        forger.net.dial(victim.clone()).await.unwrap();
        let genuine = put_record(
            &forger.store,
            &mut &noise(2 * MIB, 4)[..],
            (MIB - 16) as u32,
        );
        let forged = forge_manifest(&forger.store, &genuine, 400);
        let outcome = forger.net.request_replica(peer, &forged).await;
        assert!(!outcome.ok, "a forged record was accepted: {outcome:?}");
        let refusal = outcome.error.unwrap_or_default();
        assert!(refusal.contains("is not signed by its owner"), "{refusal}");
    }
    // 5. An ADD_PROVIDER flood.
    step("provider record flood");
    flood_provider_records(&victim, &NetConfig::default().kad_protocol, 3000).await;
    // 6. Gossip: a forged presence, random bytes, and a flood.
    step("gossip flood");
    {
        let attacker = Hostile::connect(&victim).await;
        let forged = serde_json::json!({
            "peer_id": peer.to_string(), "addresses": ["/ip4/10.9.9.9/tcp/1"],
        });
        for _ in 0..50 {
            if attacker
                .publish(PRESENCE_TOPIC, serde_json::to_vec(&forged).unwrap())
                .await
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        attacker.publish(DATASETS_TOPIC, noise(700, 8)).await;
        for n in 0..3000 {
            let message = serde_json::json!({ "dataset": n });
            attacker
                .publish(DATASETS_TOPIC, serde_json::to_vec(&message).unwrap())
                .await;
        }
    }
    // 7. Identify advertising 150 addresses.
    step("identify addresses");
    {
        let addresses: Vec<Multiaddr> = (0..150)
            .map(|i| {
                format!("/ip4/127.0.0.1/tcp/{}", 30_000 + i)
                    .parse()
                    .unwrap()
            })
            .collect();
        let _attacker = Hostile::connect_advertising(&victim, &addresses).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // 8. Connections from fresh peer ids.
    step("fresh peer ids");
    {
        let mut held = Vec::new();
        for _ in 0..30 {
            if let Ok(attacker) = Hostile::try_connect(&victim, &[]).await {
                held.push(attacker);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_under_attack_serves_an_honest_fetch_within_bounds() {
    let mib: usize = std::env::var("MEDMESH_HOSTILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let base = tempfile::tempdir().unwrap();
    let victim = Proc::start(base.path(), "victim", &[]);
    let file = base.path().join("scan.bin");
    std::fs::write(&file, noise(mib * MIB, 21)).unwrap();
    let uploaded = victim
        .client()
        .upload_file(&file, Default::default())
        .await
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    let record = uploaded.id;
    let addr: Multiaddr = victim.addr().parse().unwrap();
    let peer: PeerId = victim.peer_id.parse().unwrap();
    let info = victim.client().record(&record.to_string()).await.unwrap();
    assert_eq!(info.meta.size, (mib * MIB) as u64);

    let stop = Arc::new(AtomicBool::new(false));
    let watch = monitor(&victim, stop.clone());

    // The honest fetch, alongside the attacks.
    let honest = Peer::start(&[]).await;
    honest.net.dial(addr.clone()).await.unwrap();
    let fetched_bytes = Arc::new(AtomicU64::new(0));
    let fetch = {
        let (net, counted) = (honest.net.clone(), fetched_bytes.clone());
        let options = FetchOptions {
            providers: vec![peer],
            ..FetchOptions::default()
        };
        tokio::spawn(async move {
            net.fetch_record(
                record,
                options,
                Arc::new(move |n| {
                    counted.fetch_add(n, Ordering::Relaxed);
                }),
            )
            .await
        })
    };
    let chunk = {
        // The first chunk's CID, as any peer reads it from the public manifest.
        let manifest = loop {
            if let Ok(m) = honest.store.manifest(&record) {
                break m;
            }
            if let Ok(bytes) = honest.store.blocks().get(record.cid()) {
                break medmesh_core::Manifest::decode(&bytes).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        manifest.body.chunks[0].to_bytes()
    };
    tokio::time::timeout(
        Duration::from_secs(240),
        attack(addr.clone(), peer, chunk, record.to_string()),
    )
    .await
    .expect("the attacks end within 4 minutes");

    let report = tokio::time::timeout(Duration::from_secs(240), fetch)
        .await
        .expect("the honest fetch completes")
        .unwrap()
        .expect("the honest fetch succeeds");
    assert!(report.imported, "{report:?}");
    assert!(honest.store.check().unwrap().problems.is_empty());
    stop.store(true, Ordering::Relaxed);
    let (rss, slowest) = watch.await.unwrap();
    eprintln!(
        "hostile: honest fetch of {mib} MiB done ({} bytes moved); node RSS peak {} MiB, \
         slowest API answer {slowest:?}",
        fetched_bytes.load(Ordering::Relaxed),
        rss / MIB as u64
    );
    assert!(rss < RSS_LIMIT, "RSS peaked at {} MiB", rss / MIB as u64);
    assert!(slowest < API_LIMIT, "an API answer took {slowest:?}");

    // Nothing forged entered the index: the node lists its one record.
    let listed = victim
        .client()
        .search_all(&Default::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, record);
    let check = victim.client().check().await.unwrap();
    assert!(check.problems.is_empty(), "{check:?}");
}
