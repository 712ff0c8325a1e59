//! A node under attack by a peer that speaks its protocols wrongly (a bare libp2p node
//! of the test's own: `medmesh_testkit::hostile`). Each test reproduces one abuse and
//! checks the node bounds what it costs, while honest peers are still served.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, record, victim_with, BITSWAP, CHUNK, FAST_PATH, MIB};
use futures::{AsyncWriteExt, StreamExt};
use medmesh_net::{FetchOptions, NetConfig};
use medmesh_testkit::hostile::{bitswap_wants, read_frame, varint, write_frame, Hostile};
use medmesh_testkit::net::{put_record, Peer as Node};
use medmesh_testkit::noise;

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
                stream.write_all(&varint(4 * MIB)).await?;
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

/// A peer served a home-made manifest (here: a real record's, with its size and
/// chunk list altered, so its signature no longer holds) and asked the node to hold
/// it; the node imported it. Now the manifest is checked against the asking
/// institution's certificate before a single chunk is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_manifest_is_refused_before_any_chunk_is_fetched() {
    let victim = victim_with(|_| {}).await;
    let attacker = Node::start(&[&victim]).await;
    attacker.wait_connected(victim.net.peer_id()).await;
    let genuine = record(&attacker.store, 2);
    let chunks = attacker.store.manifest(&genuine).unwrap().body.chunks;
    let forged = medmesh_testkit::hostile::forge_manifest(&attacker.store, &genuine, 200);

    assert_replica_refused(&attacker, &victim, &forged, "is not signed by its owner").await;
    assert!(!victim.store.has_record(&forged).unwrap());
    for chunk in &chunks {
        assert!(
            !victim.store.blocks().has(chunk),
            "chunk {chunk} was fetched"
        );
    }
    // The genuine record is held as before.
    assert_replica_held(&attacker, &victim, &genuine).await;
}

/// Replication requests had no size limit: one request could fill the disk. A record
/// larger than `max_replica_bytes`, or beyond a peer's daily share, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_beyond_the_size_bounds_are_refused() {
    let victim = victim_with(|c| {
        c.max_replica_bytes = 3 * MIB as u64;
        c.max_replica_bytes_per_peer_per_day = 7 * MIB as u64 / 2;
    })
    .await;
    let asking = Node::start(&[&victim]).await;
    asking.wait_connected(victim.net.peer_id()).await;
    let large = record(&asking.store, 4);
    assert_replica_refused(&asking, &victim, &large, "(max_replica_bytes)").await;
    let chunk = asking.store.manifest(&large).unwrap().body.chunks[0];
    assert!(!victim.store.blocks().has(&chunk), "no chunk was fetched");

    let first = record(&asking.store, 2);
    assert_replica_held(&asking, &victim, &first).await;
    let second = put_record(&asking.store, &mut &noise(2 * CHUNK, 9)[..], CHUNK as u32);
    assert_replica_refused(
        &asking,
        &victim,
        &second,
        "max_replica_bytes_per_peer_per_day",
    )
    .await;
}

/// Fresh peer ids from one address used to take every connection slot (256 in 4 s).
/// Inbound connections are now bounded per IP address, and the node's own dials (to
/// known peers) still get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fresh_peer_ids_from_one_address_get_a_few_connections_only() {
    let victim = victim_with(|c| c.max_connections_per_ip = 4).await;
    let mut attackers = Vec::new();
    for _ in 0..12 {
        if let Ok(attacker) = Hostile::try_connect(&victim.addr(), &[]).await {
            attackers.push(attacker);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected = victim.net.stats().connected_peers;
    assert!(connected <= 4, "{connected} connections from one address");
    assert!(
        !attackers.is_empty(),
        "some get in: the limit is per address, not zero"
    );

    // A peer the node dials itself (outbound) is not counted against anyone's address.
    let honest = Node::start(&[]).await;
    let id = record(&honest.store, 1);
    victim
        .net
        .dial(honest.addr())
        .await
        .expect("the node's own dial");
    let options = FetchOptions {
        providers: vec![honest.net.peer_id()],
        ..FetchOptions::default()
    };
    let report = victim
        .net
        .fetch_record(id, options, Arc::new(|_| {}))
        .await
        .expect("fetch from a known peer");
    assert!(report.imported);
}

/// Unknown peers may hold `max_connections − reserved_connections` connections; past
/// that, the one idle longest is closed, so a known peer always finds a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_peers_leave_the_reserved_slots_to_known_ones() {
    let victim = victim_with(|c| {
        c.max_connections_per_ip = 64;
        c.max_connections = 16;
        c.reserved_connections = 6;
    })
    .await;
    let mut attackers = Vec::new();
    for _ in 0..14 {
        if let Ok(attacker) = Hostile::try_connect(&victim.addr(), &[]).await {
            attackers.push(attacker);
        }
    }
    eventually(Duration::from_secs(5), "unknown peers held to 10", || {
        victim.net.stats().connected_peers <= 10
    })
    .await;
    let known = Node::start(&[]).await;
    let id = record(&known.store, 1);
    victim
        .net
        .dial(known.addr())
        .await
        .expect("a slot for a known peer");
    let options = FetchOptions {
        providers: vec![known.net.peer_id()],
        ..FetchOptions::default()
    };
    victim
        .net
        .fetch_record(id, options, Arc::new(|_| {}))
        .await
        .expect("fetch from the known peer");
    assert!(victim.net.is_connected(&known.net.peer_id()));
}

/// A peer advertising 150 listen addresses made the node open 150 connections to
/// addresses the attacker chose. Only a few checked addresses are taken now.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn addresses_a_peer_advertises_are_capped_and_filtered() {
    let victim = victim_with(|_| {}).await;
    let mut advertised: Vec<libp2p::Multiaddr> = (0..150)
        .map(|i| {
            format!("/ip4/127.0.0.1/tcp/{}", 20_000 + i)
                .parse()
                .unwrap()
        })
        .collect();
    advertised.push("/ip4/0.0.0.0/tcp/1".parse().unwrap());
    advertised.push("/ip4/224.0.0.1/tcp/2".parse().unwrap());
    let attacker = Hostile::connect_advertising(&victim.addr(), &advertised).await;
    let seen = |victim: &Node| {
        victim
            .net
            .peers()
            .into_iter()
            .find(|p| p.peer_id == attacker.peer_id.to_string())
            .map(|p| p.addresses)
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(10), "identify received", || {
        seen(&victim).len() > 1
    })
    .await;
    let addresses = seen(&victim);
    assert!(addresses.len() <= 8, "{} addresses taken", addresses.len());
    assert!(
        addresses
            .iter()
            .all(|a| !a.contains("0.0.0.0") && !a.contains("224.0.0.1")),
        "{addresses:?}"
    );
}

/// Gossip used to be delivered and forwarded unchecked: 99 851 signed messages in 20 s
/// from one peer, random bytes, and a presence message naming the victim. Now payloads
/// are checked per topic before they are forwarded, and a peer's rate is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gossip_is_checked_per_topic_and_rate_limited_per_peer() {
    use medmesh_net::{NetEvent, DATASETS_TOPIC, PRESENCE_TOPIC};
    let victim = victim_with(|_| {}).await;
    let observer = Node::start(&[&victim]).await;
    observer.wait_connected(victim.net.peer_id()).await;
    let attacker = Hostile::connect(&victim.addr()).await;
    let mut at_victim = victim.net.events();
    let mut at_observer = observer.net.events();
    // Wait for the attacker to join the victim's mesh (a valid message goes through).
    let probe = |n: usize| serde_json::to_vec(&serde_json::json!({ "dataset": n })).unwrap();
    let mut joined = false;
    for n in 0..100 {
        if attacker.publish(DATASETS_TOPIC, probe(n)).await {
            joined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(joined, "the attacker never joined the topic");
    // Forged and malformed messages, then a flood of well-formed ones.
    let forged = serde_json::json!({
        "peer_id": victim.net.peer_id().to_string(),
        "addresses": ["/ip4/10.9.9.9/tcp/4001"],
    });
    assert!(
        attacker
            .publish(PRESENCE_TOPIC, serde_json::to_vec(&forged).unwrap())
            .await
    );
    assert!(attacker.publish(DATASETS_TOPIC, noise(600, 5)).await);
    let started = Instant::now();
    for n in 1000..3000 {
        attacker.publish(DATASETS_TOPIC, probe(n)).await;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Messages missed because the subscriber lagged count as delivered: they were.
    let drain = |events: &mut tokio::sync::broadcast::Receiver<NetEvent>| {
        use tokio::sync::broadcast::error::TryRecvError;
        let (mut from_attacker, mut missed) = (Vec::new(), 0);
        loop {
            match events.try_recv() {
                Ok(NetEvent::Gossip { from, data, topic }) if from == Some(attacker.peer_id) => {
                    from_attacker.push((topic, data))
                }
                Ok(_) => {}
                Err(TryRecvError::Lagged(n)) => missed += n as usize,
                Err(_) => return (from_attacker, missed),
            }
        }
    };
    let (delivered, missed) = drain(&mut at_victim);
    let (forwarded, _) = drain(&mut at_observer);
    assert_eq!(
        missed, 0,
        "{missed} events beyond the bus's capacity: far too many delivered"
    );
    assert!(
        !delivered.is_empty(),
        "well-formed gossip is still delivered"
    );
    for (name, seen) in [("delivered", &delivered), ("forwarded", &forwarded)] {
        assert!(
            seen.iter().all(|(topic, data)| topic == DATASETS_TOPIC
                && serde_json::from_slice::<serde_json::Value>(data).is_ok()),
            "{name}: a forged presence or random bytes got through"
        );
    }
    // Burst 100 plus 20 a second while the flood lasted (and a margin for the probe).
    let allowed = 100 + (20.0 * (flood_secs + 3.0)) as usize + 5;
    assert!(
        delivered.len() <= allowed,
        "{} of 2 000 flooded messages delivered (allowed {allowed})",
        delivered.len()
    );
    assert!(
        forwarded.len() <= delivered.len(),
        "only what the victim accepted is forwarded"
    );
}

/// A replica is held only of a record the asking institution owns: a genuine record
/// of another institution, offered with the asker's certificate, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_of_another_institution_is_not_held_for_the_asker() {
    let victim = victim_with(|_| {}).await;
    let asking = Node::start(&[&victim]).await; // sends institution 0's certificate
    asking.wait_connected(victim.net.peer_id()).await;
    let theirs = medmesh_testkit::net::put_records_as(
        1,
        &asking.store,
        1,
        |_| Box::new(std::io::Cursor::new(noise(50_000, 6))),
        4096,
    )[0];
    assert_replica_refused(&asking, &victim, &theirs, "not by the asking institution").await;
}

/// A repair pass re-asks holders every few minutes: a holder that already has the
/// record answers yes without charging the asking peer's daily share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn re_asking_a_holder_costs_nothing_of_the_daily_share() {
    let victim = victim_with(|c| c.max_replica_bytes_per_peer_per_day = 3 * MIB as u64).await;
    let asking = Node::start(&[&victim]).await;
    asking.wait_connected(victim.net.peer_id()).await;
    let held = record(&asking.store, 2);
    for _round in 0..5 {
        assert_replica_held(&asking, &victim, &held).await;
    }
    // The share is still there for one more (2 MiB of 3 used).
    let next = put_record(&asking.store, &mut &noise(CHUNK / 2, 12)[..], CHUNK as u32);
    assert_replica_held(&asking, &victim, &next).await;
}

/// Fresh peer ids from one address share one part of the fast-path total: two peers
/// from one address get `max_fast_path_requests_per_ip` served between them, the rest
/// wait (and are refused after a while), whatever each peer's own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_from_one_address_share_one_part_of_the_fast_path() {
    let victim = victim_with(|c| c.max_fast_path_requests_per_ip = 3).await;
    let id = record(&victim.store, 8);
    let request = serde_json::to_vec(&serde_json::json!({
        "root": id.to_string(), "chunks": (0..8).collect::<Vec<u32>>(),
    }))
    .unwrap();
    let (first, second) = (
        Hostile::connect(&victim.addr()).await,
        Hostile::connect(&victim.addr()).await,
    );
    let mut streams = Vec::new();
    for attacker in [&first, &second] {
        for _ in 0..4 {
            let mut stream = attacker.open(FAST_PATH).await;
            if write_frame(&mut stream, &request).await.is_ok() {
                streams.push(stream);
            }
        }
    }
    // A served request is answered `{"ok": true}` at once; a waiting one is not.
    let replies =
        futures::future::join_all(streams.iter_mut().map(|stream| {
            tokio::time::timeout(Duration::from_secs(2), read_frame(stream, 64 * 1024))
        }))
        .await;
    let answered = replies
        .into_iter()
        .filter_map(|reply| match reply {
            Ok(Ok(Some(reply))) => serde_json::from_slice::<serde_json::Value>(&reply).ok(),
            _ => None,
        })
        .filter(|reply| reply["ok"] == true)
        .count();
    assert!(
        (1..=3).contains(&answered),
        "{answered} of {} requests from one address served at once",
        streams.len()
    );
}

/// `asking` asks `victim` to hold `id`; the victim holds it.
async fn assert_replica_held(asking: &Node, victim: &Node, id: &medmesh_core::RecordId) {
    let outcome = asking.net.request_replica(victim.net.peer_id(), id).await;
    assert!(outcome.ok, "{outcome:?}");
    assert!(victim.store.has_record(id).unwrap());
}

/// `asking` asks `victim` to hold `id`; the victim refuses with a reason containing
/// `reason` and indexes nothing.
async fn assert_replica_refused(
    asking: &Node,
    victim: &Node,
    id: &medmesh_core::RecordId,
    reason: &str,
) {
    let outcome = asking.net.request_replica(victim.net.peer_id(), id).await;
    assert!(!outcome.ok, "{outcome:?}");
    let refusal = outcome.error.unwrap_or_default();
    assert!(refusal.contains(reason), "{refusal}");
    assert!(!victim.store.has_record(id).unwrap());
}
