//! Network benchmark, one run on this machine:
//! - a 1 GiB record moved between two nodes on loopback by the fast path (TCP and
//!   QUIC) and by bitswap, against raw loopback TCP measured in the same run;
//! - DHT find-providers latency in a 20-node local swarm.
//!
//! `cargo bench -p medmesh-net --bench transfer` (`MEDMESH_BENCH_MIB`, default 1024;
//! `MEDMESH_BENCH_DIR`, default /dev/shm so the disk's noise stays out of the ratios;
//! `MEDMESH_BENCH_SWARM`, default 20).

#![allow(missing_docs, clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medmesh_core::RecordId;
use medmesh_net::{FetchOptions, Transfer};
use medmesh_store::DEFAULT_CHUNK_SIZE;
use medmesh_testkit::net::{loopback_tcp, put_record, Peer};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let mib = env_or("MEDMESH_BENCH_MIB", 1024);
    let swarm = env_or("MEDMESH_BENCH_SWARM", 20);
    let base = std::env::var_os("MEDMESH_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/dev/shm".into());
    let len = mib << 20;
    let data = medmesh_testkit::noise(len, 5);
    println!("record {mib} MiB, stores under {}\n", base.display());

    let tcp = loopback_tcp(&data).await;
    let stream = raw_libp2p_stream(len, false).await;
    let stream_tls = raw_libp2p_stream(len, true).await;
    // What the receiver's check of every block costs (SHA-256, one core).
    let sha = {
        let start = Instant::now();
        for block in data.chunks(1 << 20) {
            std::hint::black_box(ring::digest::digest(&ring::digest::SHA256, block));
        }
        start.elapsed()
    };
    let tcp_quic = ("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1");
    let source = Peer::start_with(&base, &[], tcp_quic.0, |s| s).await;
    let id = {
        let store = source.store.clone();
        tokio::task::spawn_blocking(move || put_record(&store, &mut &data[..], DEFAULT_CHUNK_SIZE))
            .await
            .unwrap()
    };
    let fast = transfer(&base, &source, tcp_quic.0, id, Transfer::FastPath).await;
    let bitswap = transfer(&base, &source, tcp_quic.0, id, Transfer::Bitswap).await;
    let quic_source = Peer::start_with(&base, &[], tcp_quic.1, |s| s).await;
    copy_record(&source, &quic_source, id).await;
    let fast_quic = transfer(&base, &quic_source, tcp_quic.1, id, Transfer::FastPath).await;

    let mbps = |d: Duration| len as f64 / d.as_secs_f64() / 1e6;
    println!("| transfer of {mib} MiB between two nodes | MB/s | of raw TCP |\n|---|---|---|");
    println!(
        "| raw loopback TCP (no protocol, no storage) | {:.0} | 100 % |",
        mbps(tcp)
    );
    for (name, took) in [("Noise", stream), ("TLS 1.3", stream_tls)] {
        println!(
            "| one libp2p stream, TCP + {name} + Yamux (no storage, no hashing) | {:.0} | {:.0} % |",
            mbps(took),
            100.0 * tcp.as_secs_f64() / took.as_secs_f64()
        );
    }
    for (name, took) in [
        ("fast path, TCP + Noise + Yamux", fast),
        ("fast path, QUIC", fast_quic),
        ("bitswap 1.2.0, TCP + Noise + Yamux", bitswap),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} % |",
            mbps(took),
            100.0 * tcp.as_secs_f64() / took.as_secs_f64()
        );
    }
    println!(
        "\nfast path / bare libp2p stream (Noise) = {:.0} %: the transport is the ceiling of \
         any protocol on it. The receiver also hashes every block: SHA-256 on one core here \
         is {:.0} MB/s.",
        100.0 * stream.as_secs_f64() / fast.as_secs_f64(),
        mbps(sha)
    );
    drop((source, quic_source));

    println!();
    dht_latency(swarm).await;
}

/// A fresh node fetches `id` from `source` (only provider); returns the time.
async fn transfer(
    base: &std::path::Path,
    source: &Peer,
    listen: &str,
    id: RecordId,
    how: Transfer,
) -> Duration {
    let sink = Peer::start_with(base, &[source], listen, |s| s).await;
    sink.wait_connected(source.net.peer_id()).await;
    let options = FetchOptions {
        providers: vec![source.net.peer_id()],
        transfer: how,
        find_timeout: Some(Duration::from_millis(1)),
        ..FetchOptions::default()
    };
    let start = Instant::now();
    let report = sink
        .net
        .fetch_record(id, options, Arc::new(|_| {}))
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(report.blocks_fetched, report.blocks_total);
    took
}

async fn copy_record(from: &Peer, to: &Peer, id: RecordId) {
    let (from, to) = (from.store.clone(), to.store.clone());
    tokio::task::spawn_blocking(move || {
        let mut blocks = from.manifest(&id).unwrap().body.chunks;
        blocks.push(*id.cid());
        for cid in blocks {
            to.blocks()
                .put(&cid, &from.blocks().get(&cid).unwrap())
                .unwrap();
        }
        to.import_record(&id, "bench").unwrap();
    })
    .await
    .unwrap();
}

/// The ceiling the transport sets: `len` bytes pushed over one libp2p stream (TCP, Noise,
/// Yamux) between two bare swarms, no storage and no hashing.
async fn raw_libp2p_stream(len: usize, tls: bool) -> Duration {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    use libp2p::{noise, tcp, yamux, StreamProtocol};
    const PROTOCOL: StreamProtocol = StreamProtocol::new("/medmesh-bench/push/1");
    let swarm = || {
        let config =
            |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
        let builder = libp2p::SwarmBuilder::with_new_identity().with_tokio();
        if tls {
            builder
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    libp2p::tls::Config::new,
                    yamux::Config::default,
                )
                .unwrap()
                .with_behaviour(|_| libp2p_stream::Behaviour::new())
                .unwrap()
                .with_swarm_config(config)
                .build()
        } else {
            builder
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .unwrap()
                .with_behaviour(|_| libp2p_stream::Behaviour::new())
                .unwrap()
                .with_swarm_config(config)
                .build()
        }
    };
    let (mut receiver, mut sender) = (swarm(), swarm());
    receiver
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
            receiver.select_next_some().await
        {
            break address;
        }
    };
    let receiver_id = *receiver.local_peer_id();
    let mut incoming = receiver.behaviour().new_control().accept(PROTOCOL).unwrap();
    let mut control = sender.behaviour().new_control();
    sender.dial(addr.with_p2p(receiver_id).unwrap()).unwrap();
    tokio::spawn(async move {
        loop {
            receiver.select_next_some().await;
        }
    });
    tokio::spawn(async move {
        loop {
            sender.select_next_some().await;
        }
    });
    let reader = tokio::spawn(async move {
        let (_, mut stream) = incoming.next().await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    let block = vec![7u8; 1 << 20];
    let start = Instant::now();
    let mut stream = control.open_stream(receiver_id, PROTOCOL).await.unwrap();
    for _ in 0..len / block.len() {
        stream.write_all(&block).await.unwrap();
    }
    stream.close().await.unwrap();
    assert_eq!(reader.await.unwrap(), len / block.len() * block.len());
    start.elapsed()
}

/// `n` nodes, each bootstrapped from the previous two; the first provides a CID; then
/// nodes that join later (bootstrapped from one random member, so their own DHT store is
/// empty) look it up: a real lookup over the network each time.
async fn dht_latency(n: usize) {
    let mut peers: Vec<Peer> = Vec::new();
    for i in 0..n {
        let bootstrap: Vec<&Peer> = peers.iter().skip(i.saturating_sub(2)).collect();
        peers.push(Peer::start(&bootstrap).await);
    }
    // Let identify and the DHT bootstrap settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let id = put_record(&peers[0].store, &mut &b"a dataset announcement"[..], 4096);
    let start = Instant::now();
    peers[0].net.provide(*id.cid()).await.unwrap();
    let provide = start.elapsed();
    let mut latencies = Vec::new();
    let mut found = 0;
    for i in 0..10 {
        let member = &peers[(i * 7 + 3) % n];
        let joiner = Peer::start(&[member]).await;
        joiner.wait_connected(member.net.peer_id()).await;
        let start = Instant::now();
        let providers = joiner.net.find_providers(*id.cid()).await.unwrap();
        latencies.push(start.elapsed());
        found += usize::from(providers.contains(&peers[0].net.peer_id()));
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "DHT, {n} nodes on loopback: provide {:.1} ms; find-providers by {} nodes joining \
         afterwards: median {:.1} ms, max {:.1} ms, provider found by {found}/{}",
        ms(provide),
        latencies.len(),
        ms(latencies[latencies.len() / 2]),
        ms(*latencies.last().unwrap()),
        latencies.len()
    );
}
