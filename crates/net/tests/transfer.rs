//! Networks in one process talking over real loopback sockets: fast path, bitswap,
//! DHT discovery, corrupt providers, replication. (Separate-process tests of whole
//! nodes are in `node/tests/network.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use medmesh_core::{Cid, RecordId};
use medmesh_net::{
    AllowList, Blockstore, FetchOptions, NetConfig, NetError, OpenPolicy, PeerId, ReplicaOutcome,
    Transfer,
};
use medmesh_store::{Replication, Store};
use medmesh_testkit::net::{executor_check, put_record, slow, Delay, ExecutorCalls, Peer as Node};
use medmesh_testkit::noise;

async fn start(bootstrap: &[&Node]) -> Node {
    Node::start(bootstrap).await
}

fn put(store: &Store, bytes: &[u8]) -> RecordId {
    put_record(store, &mut &bytes[..], 64 * 1024)
}

fn blocks_of(store: &Store, id: &RecordId) -> Vec<Cid> {
    let mut blocks = store.manifest(id).unwrap().body.chunks;
    blocks.push(*id.cid());
    blocks
}

fn same_blocks(a: &Store, b: &Store, id: &RecordId) {
    for cid in blocks_of(a, id) {
        assert_eq!(
            a.blocks().get(&cid).unwrap(),
            b.blocks().get(&cid).unwrap(),
            "block {cid}"
        );
    }
    assert!(b.has_record(id).unwrap(), "record {id} was not indexed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_and_bitswap_move_a_record_and_resume() {
    let a = start(&[]).await;
    let b = start(&[&a]).await;
    b.wait_connected(a.net.peer_id()).await;
    let data = noise(3 * 1024 * 1024 + 17, 1);
    let id = put(&a.store, &data);

    let options = FetchOptions {
        providers: vec![a.net.peer_id()],
        ..FetchOptions::default()
    };
    let report = b
        .net
        .fetch_record(id, options.clone(), Arc::new(|_| {}))
        .await
        .unwrap();
    assert!(report.imported);
    assert_eq!(report.blocks_fetched, report.blocks_total);
    same_blocks(&a.store, &b.store, &id);
    // Fetching a record that is whole here asks nobody.
    let again = b
        .net
        .fetch_record(id, options.clone(), Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(
        (again.blocks_fetched, again.providers.len()),
        (0, 0),
        "{again:?}"
    );
    assert!(!again.imported);

    // Resume: B loses the record (removing it deletes its blocks), then gets back all
    // blocks but the first 10 chunks, as a cut fetch leaves them; only those 10 move.
    let chunks = b.store.manifest(&id).unwrap().body.chunks;
    assert!(chunks.len() > 40);
    b.store.remove_record(&id, "test").unwrap();
    let all = blocks_of(&a.store, &id);
    assert!(all.iter().all(|cid| !b.store.blocks().has(cid)));
    for cid in &all[10..] {
        b.store
            .blocks()
            .put(cid, &a.store.blocks().get(cid).unwrap())
            .unwrap();
    }
    let report = b
        .net
        .fetch_record(id, options.clone(), Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(report.blocks_fetched, 10, "{report:?}");
    assert_eq!(report.blocks_present, report.blocks_total - 10);
    same_blocks(&a.store, &b.store, &id);

    // Bitswap moves the same record into a third node.
    let c = start(&[&a]).await;
    c.wait_connected(a.net.peer_id()).await;
    let report = c
        .net
        .fetch_record(
            id,
            FetchOptions {
                transfer: Transfer::Bitswap,
                ..options
            },
            Arc::new(|_| {}),
        )
        .await
        .unwrap();
    assert_eq!(report.blocks_fetched, report.blocks_total);
    same_blocks(&a.store, &c.store, &id);

    // An unknown record is a clear error, not a hang.
    let missing: RecordId = {
        let other = start(&[]).await;
        put(&other.store, b"elsewhere")
    };
    let err = b
        .net
        .fetch_record(
            missing,
            FetchOptions {
                providers: vec![a.net.peer_id()],
                find_timeout: Some(Duration::from_secs(2)),
                ..FetchOptions::default()
            },
            Arc::new(|_| {}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not stored here"), "{err}");
}

/// Serves every block with one byte flipped.
struct Lying(Arc<Store>);

impl Blockstore for Lying {
    fn has(&self, cid: &Cid) -> bool {
        self.0.blocks().has(cid)
    }
    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>, NetError> {
        let mut bytes = Blockstore::get(&*self.0, cid)?;
        // The manifest stays honest so the fetch reaches the chunks.
        if cid.codec() == 0x55 {
            if let Some(b) = bytes.as_mut() {
                b[0] ^= 1;
            }
        }
        Ok(bytes)
    }
    fn get_for_peer(&self, cid: &Cid) -> Result<Option<Vec<u8>>, NetError> {
        self.get(cid)
    }
    fn put(&self, cid: &Cid, bytes: &[u8]) -> Result<(), NetError> {
        Blockstore::put(&*self.0, cid, bytes)
    }
    fn import_record(&self, id: &RecordId, from: &PeerId) -> Result<bool, NetError> {
        Blockstore::import_record(&*self.0, id, from)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_provider_is_banned_and_the_record_comes_from_another() {
    let honest = start(&[]).await;
    let liar = Node::start_with(
        &std::env::temp_dir(),
        &[&honest],
        "/ip4/127.0.0.1/tcp/0",
        |s| Arc::new(Lying(s)),
    )
    .await;
    let id = put(&honest.store, &noise(2 * 1024 * 1024, 2));
    // The liar holds the same blocks (and lies about them).
    for cid in blocks_of(&honest.store, &id) {
        liar.store
            .blocks()
            .put(&cid, &honest.store.blocks().get(&cid).unwrap())
            .unwrap();
    }
    let fetcher = start(&[&honest, &liar]).await;
    fetcher.wait_connected(honest.net.peer_id()).await;
    fetcher.wait_connected(liar.net.peer_id()).await;
    let report = fetcher
        .net
        .fetch_record(
            id,
            FetchOptions {
                providers: vec![liar.net.peer_id(), honest.net.peer_id()],
                batch: 4,
                ..FetchOptions::default()
            },
            Arc::new(|_| {}),
        )
        .await
        .unwrap();
    assert!(fetcher.net.scores().is_banned(&liar.net.peer_id()));
    assert!(!fetcher.net.scores().is_banned(&honest.net.peer_id()));
    assert_eq!(report.banned, vec![liar.net.peer_id().to_string()]);
    same_blocks(&honest.store, &fetcher.store, &id);
    fetcher.store.check().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_through_the_dht_and_replicas_are_repaired() {
    let a = start(&[]).await;
    let b = start(&[&a]).await;
    let c = start(&[&b]).await;
    b.wait_connected(a.net.peer_id()).await;
    c.wait_connected(b.net.peer_id()).await;
    let id = put(&a.store, &noise(300_000, 3));
    a.net.provide(*id.cid()).await.unwrap();
    // C knows only B; the DHT names A.
    let report = c
        .net
        .fetch_record(id, FetchOptions::default(), Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(report.providers, vec![a.net.peer_id().to_string()]);
    same_blocks(&a.store, &c.store, &id);

    // A asks B to hold a replica; B loses it; a repair pass restores it.
    let replication = Replication {
        copies: 1,
        candidates: vec![b.net.peer_id().to_string()],
        holders: vec![],
    };
    a.store.set_replication(&id, &replication).unwrap();
    let outcomes = a.net.replicate(&a.store, &id, &replication).await.unwrap();
    assert!(outcomes[0].ok, "{outcomes:?}");
    same_blocks(&a.store, &b.store, &id);
    assert_eq!(
        a.store.replication(&id).unwrap().unwrap().holders,
        vec![b.net.peer_id().to_string()]
    );
    b.store.remove_record(&id, "test").unwrap();
    assert!(!b.store.has_record(&id).unwrap());
    assert_eq!(a.net.repair(&a.store).await.unwrap(), 0);
    same_blocks(&a.store, &b.store, &id);

    // A node whose policy does not admit A refuses to hold a replica, and says why; a
    // repair pass then falls back to the next candidate.
    let picky = Node::start_with_policy(
        &std::env::temp_dir(),
        &[&a],
        "/ip4/127.0.0.1/tcp/0",
        |s| s,
        Arc::new(AllowList(vec![c.net.peer_id()])),
    )
    .await;
    picky.wait_connected(a.net.peer_id()).await;
    let refused = a.net.request_replica(picky.net.peer_id(), &id).await;
    assert!(!refused.ok);
    assert!(
        refused.error.as_deref().unwrap().contains("not authorized"),
        "{refused:?}"
    );
    assert!(!picky.store.has_record(&id).unwrap());
    let replication = Replication {
        copies: 1,
        candidates: vec![picky.net.peer_id().to_string(), c.net.peer_id().to_string()],
        holders: vec![],
    };
    a.store.set_replication(&id, &replication).unwrap();
    assert_eq!(a.net.repair(&a.store).await.unwrap(), 0);
    assert_eq!(
        a.store.replication(&id).unwrap().unwrap().holders,
        vec![c.net.peer_id().to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_two_providers_at_once_and_gossip() {
    let quic = "/ip4/127.0.0.1/udp/0/quic-v1";
    let tmp = std::env::temp_dir();
    let a = Node::start_with(&tmp, &[], quic, |s| s).await;
    let b = Node::start_with(&tmp, &[&a], quic, |s| s).await;
    let c = Node::start_with(&tmp, &[&a, &b], quic, |s| s).await;
    c.wait_connected(a.net.peer_id()).await;
    c.wait_connected(b.net.peer_id()).await;
    assert!(c.net.listen_addrs()[0].to_string().contains("quic-v1"));
    let id = put(&a.store, &noise(2 * 1024 * 1024, 4));
    for cid in blocks_of(&a.store, &id) {
        b.store
            .blocks()
            .put(&cid, &a.store.blocks().get(&cid).unwrap())
            .unwrap();
    }
    // Small batches over QUIC from both providers at once.
    let report = c
        .net
        .fetch_record(
            id,
            FetchOptions {
                providers: vec![a.net.peer_id(), b.net.peer_id()],
                batch: 2,
                find_timeout: Some(Duration::from_millis(1)),
                ..FetchOptions::default()
            },
            Arc::new(|_| {}),
        )
        .await
        .unwrap();
    assert_eq!(
        report.providers.len(),
        2,
        "both providers served: {report:?}"
    );
    same_blocks(&a.store, &c.store, &id);

    // A dataset announcement published on B reaches A over gossipsub (once the mesh
    // has formed: publishing is retried until a peer is subscribed).
    let mut events = a.net.events();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b
        .net
        .publish(
            medmesh_net::DATASETS_TOPIC,
            br#"{"dataset":"bafy-example"}"#.to_vec(),
        )
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gossip mesh never formed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let heard = tokio::time::timeout_at(deadline, async {
        loop {
            if let Ok(medmesh_net::NetEvent::Gossip { topic, data, from }) = events.recv().await {
                if topic == medmesh_net::DATASETS_TOPIC {
                    return (data, from);
                }
            }
        }
    })
    .await
    .expect("the announcement arrived");
    assert_eq!(
        heard,
        (
            br#"{"dataset":"bafy-example"}"#.to_vec(),
            Some(b.net.peer_id())
        )
    );
}

const TCP: &str = "/ip4/127.0.0.1/tcp/0";

/// A node serving its store as is, with `configure` applied to its settings.
async fn start_configured(bootstrap: &[&Node], configure: impl FnOnce(&mut NetConfig)) -> Node {
    Node::start_with_config(
        &std::env::temp_dir(),
        bootstrap,
        TCP,
        |s| s,
        Arc::new(OpenPolicy),
        configure,
    )
    .await
}

/// A node whose store serves every block `delay` late.
async fn start_slow(bootstrap: &[&Node], delay: &Delay) -> Node {
    Node::start_with(&std::env::temp_dir(), bootstrap, TCP, slow(delay)).await
}

/// `owner` asks `holder` to hold `id`; the outcome and how long the answer took.
async fn timed_replica(owner: &Node, holder: PeerId, id: RecordId) -> (ReplicaOutcome, Duration) {
    let start = Instant::now();
    let mut outcome = owner.net.request_replica(holder, &id).await;
    // A connection that closes under the request (two nodes that dialed each other hold
    // two until one goes) is a transport hiccup, not what these tests are about; the
    // owner's repair pass would ask again too.
    for _ in 0..3 {
        let transient = outcome
            .error
            .as_deref()
            .is_some_and(|e| e.contains("connection is closed"));
        if !transient {
            break;
        }
        outcome = owner.net.request_replica(holder, &id).await;
    }
    (outcome, start.elapsed())
}

/// Of two outcomes, the one that succeeded and the one that was refused (with their
/// records and times); panics unless exactly one succeeded.
#[allow(clippy::type_complexity)]
fn served_and_refused(
    a: ((ReplicaOutcome, Duration), RecordId),
    b: ((ReplicaOutcome, Duration), RecordId),
) -> (
    (ReplicaOutcome, Duration, RecordId),
    (ReplicaOutcome, Duration, RecordId),
) {
    assert_ne!(
        a.0 .0.ok, b.0 .0.ok,
        "exactly one is served: {:?} / {:?}",
        a.0 .0, b.0 .0
    );
    let (((sa, ta), ia), ((sb, tb), ib)) = (a, b);
    if sa.ok {
        ((sa, ta, ia), (sb, tb, ib))
    } else {
        ((sb, tb, ib), (sa, ta, ia))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_calls_stay_off_the_async_executor() {
    let (served, fetched) = (ExecutorCalls::default(), ExecutorCalls::default());
    let tmp = std::env::temp_dir();
    let a = Node::start_with(&tmp, &[], TCP, executor_check(&served)).await;
    let b = Node::start_with(&tmp, &[&a], TCP, executor_check(&fetched)).await;
    b.wait_connected(a.net.peer_id()).await;
    let id = put(&a.store, &noise(300_000, 21));
    let options = FetchOptions {
        providers: vec![a.net.peer_id()],
        find_timeout: Some(Duration::from_millis(1)),
        ..FetchOptions::default()
    };
    // The fast path, then bitswap (served by the same store), then a replica held.
    b.net
        .fetch_record(id, options.clone(), Arc::new(|_| {}))
        .await
        .unwrap();
    b.store.remove_record(&id, "test").unwrap();
    b.net
        .fetch_record(
            id,
            FetchOptions {
                transfer: Transfer::Bitswap,
                ..options
            },
            Arc::new(|_| {}),
        )
        .await
        .unwrap();
    same_blocks(&a.store, &b.store, &id);
    let other = put(&a.store, &noise(200_000, 22));
    let held = a.net.request_replica(b.net.peer_id(), &other).await;
    assert!(held.ok, "{held:?}");
    assert_eq!(served.seen(), Vec::<&str>::new(), "serving node");
    assert_eq!(fetched.seen(), Vec::<&str>::new(), "fetching node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_requests_beyond_the_per_peer_limit_are_refused_at_once() {
    // Every block the owner serves takes 250 ms: a replica takes seconds to fetch.
    let delay = Delay::new(Duration::from_millis(250));
    let owner = start_slow(&[], &delay).await;
    let holder = start_configured(&[&owner], |c| c.max_replications_per_peer = 1).await;
    holder.wait_connected(owner.net.peer_id()).await;
    let first = put(&owner.store, &noise(200_000, 31));
    let second = put(&owner.store, &noise(200_000, 32));
    let to = holder.net.peer_id();
    let (a, b) = tokio::join!(
        timed_replica(&owner, to, first),
        timed_replica(&owner, to, second)
    );
    let ((served, served_in, served_id), (refused, refused_in, refused_id)) =
        served_and_refused((a, first), (b, second));
    let error = refused.error.as_deref().unwrap_or_default();
    assert_eq!(
        error,
        "too many replication requests in progress: 1 from your node (limit 1), \
         1 in total (limit 8); retry later",
        "{refused:?}"
    );
    assert!(
        refused_in < served_in,
        "the refusal came at once ({refused_in:?}), not after the fetch ({served_in:?})"
    );
    assert!(served.blocks_fetched > 0, "{served:?}");
    assert!(holder.store.has_record(&served_id).unwrap());
    assert!(!holder.store.has_record(&refused_id).unwrap());

    // The first request is over: its place is free for the next one.
    delay.set(Duration::ZERO);
    let again = owner.net.request_replica(to, &refused_id).await;
    assert!(again.ok, "{again:?}");
    same_blocks(&owner.store, &holder.store, &refused_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_requests_beyond_the_total_limit_are_refused() {
    let delay = Delay::new(Duration::from_millis(250));
    let one = start_slow(&[], &delay).await;
    let two = start_slow(&[&one], &delay).await;
    let holder = start_configured(&[&one, &two], |c| {
        c.max_replications_per_peer = 1;
        c.max_replications = 1;
    })
    .await;
    holder.wait_connected(one.net.peer_id()).await;
    holder.wait_connected(two.net.peer_id()).await;
    let of_one = put(&one.store, &noise(200_000, 41));
    let of_two = put(&two.store, &noise(200_000, 42));
    let to = holder.net.peer_id();
    let (a, b) = tokio::join!(
        timed_replica(&one, to, of_one),
        timed_replica(&two, to, of_two)
    );
    let (_, (refused, _, refused_id)) = served_and_refused((a, of_one), (b, of_two));
    // The refused owner had nothing in progress: the total is what stopped it.
    assert_eq!(
        refused.error.as_deref().unwrap_or_default(),
        "too many replication requests in progress: 0 from your node (limit 1), \
         1 in total (limit 1); retry later",
        "{refused:?}"
    );
    delay.set(Duration::ZERO);
    let asker = if refused_id == of_one { &one } else { &two };
    let again = asker.net.request_replica(to, &refused_id).await;
    assert!(again.ok, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_gives_up_after_replica_timeout_and_frees_its_place() {
    // At 1 s a block the manifest alone takes 2 s (looked up, then sent): more than the
    // holder's 1 s.
    let delay = Delay::new(Duration::from_secs(1));
    let owner = start_slow(&[], &delay).await;
    let holder = start_configured(&[&owner], |c| {
        c.replica_timeout_secs = 1;
        c.max_replications_per_peer = 1;
    })
    .await;
    holder.wait_connected(owner.net.peer_id()).await;
    let id = put(&owner.store, &noise(100_000, 51));
    let to = holder.net.peer_id();
    // The owner would wait an hour: the holder's own deadline must answer first.
    let (outcome, took) =
        tokio::time::timeout(Duration::from_secs(20), timed_replica(&owner, to, id))
            .await
            .expect("the holder answers within its replica_timeout, not the asker's");
    assert!(!outcome.ok, "{outcome:?}");
    assert!(
        outcome
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("could not be fetched within 1 s"),
        "{outcome:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!holder.store.has_record(&id).unwrap());
    // The failed request gave its place back.
    delay.set(Duration::ZERO);
    let again = owner.net.request_replica(to, &id).await;
    assert!(again.ok, "{again:?}");
    same_blocks(&owner.store, &holder.store, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stops_fetching_when_the_asker_hangs_up() {
    let delay = Delay::new(Duration::ZERO);
    // The owner waits 1 s (and the margin) for answers, then drops the stream.
    let owner = Node::start_with_config(
        &std::env::temp_dir(),
        &[],
        TCP,
        slow(&delay),
        Arc::new(OpenPolicy),
        |c| c.replica_timeout_secs = 1,
    )
    .await;
    let holder = start_configured(&[&owner], |c| c.max_replications_per_peer = 1).await;
    holder.wait_connected(owner.net.peer_id()).await;
    let to = holder.net.peer_id();
    // A record the holder already has whole: asking again costs it nothing.
    let whole = put(&owner.store, &noise(100_000, 61));
    let held = owner.net.request_replica(to, &whole).await;
    assert!(held.ok, "{held:?}");

    // A record of 8 chunks at 1 s a block: the owner gives up long before the end.
    delay.set(Duration::from_secs(1));
    let slow_record = put(&owner.store, &noise(500_000, 62));
    let gave_up = owner.net.request_replica(to, &slow_record).await;
    assert!(
        gave_up
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("no answer within"),
        "{gave_up:?}"
    );
    // The holder notices the closed stream and frees the owner's place at once,
    // although the fetch would still have seconds to go.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let again = owner.net.request_replica(to, &whole).await;
        if again.ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned request still holds its place: {again:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!holder.store.has_record(&slow_record).unwrap());
    delay.set(Duration::ZERO);
}
