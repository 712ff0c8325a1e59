//! Networks in one process talking over real loopback sockets: fast path, bitswap,
//! DHT discovery, corrupt providers, replication. (Separate-process tests of whole
//! nodes are in `node/tests/network.rs`.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use medmesh_core::{Cid, RecordId};
use medmesh_net::{
    Blockstore, FetchOptions, NetConfig, NetError, Network, NetworkOptions, OpenPolicy, PeerId,
    Transfer,
};
use medmesh_store::{PutRequest, Replication, Store};
use medmesh_testkit::{institution, noise, passphrase};

struct Node {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    net: Network,
}

fn config(bootstrap: &[&Node]) -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: bootstrap
            .iter()
            .map(|n| n.net.listen_addrs()[0].clone())
            .collect(),
        block_timeout_secs: 5,
        ..NetConfig::default()
    }
}

async fn start_with(
    bootstrap: &[&Node],
    serve: impl FnOnce(Arc<Store>) -> Arc<dyn Blockstore>,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
    let net = Network::start(NetworkOptions {
        config: config(bootstrap),
        identity_seed: rand_seed(),
        store: serve(store.clone()),
        policy: Arc::new(OpenPolicy),
        institution: None,
        agent: "medmesh-test".into(),
    })
    .await
    .unwrap();
    Node {
        _dir: dir,
        store,
        net,
    }
}

async fn start(bootstrap: &[&Node]) -> Node {
    start_with(bootstrap, |s| s).await
}

fn rand_seed() -> [u8; 32] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed) ^ u64::from(std::process::id()) << 20;
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    seed[8..16].copy_from_slice(
        &(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64)
            .to_le_bytes(),
    );
    seed
}

fn put(store: &Store, bytes: &[u8]) -> RecordId {
    let secret = institution(0);
    let signer = Mutex::new(secret.unlock_signing(&passphrase()).unwrap());
    let request = PutRequest {
        content_type: None,
        patient: None,
        chunk_size: 64 * 1024,
        actor: "test".into(),
    };
    store
        .put_record(
            &mut &bytes[..],
            &request,
            &signer,
            &secret.certificate().unwrap(),
            &[],
            &|_| {},
        )
        .unwrap()
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

async fn wait_connected(node: &Node, peer: PeerId) {
    for _ in 0..100 {
        if node.net.is_connected(&peer) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never connected to {peer}", node.net.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_and_bitswap_move_a_record_and_resume() {
    let a = start(&[]).await;
    let b = start(&[&a]).await;
    wait_connected(&b, a.net.peer_id()).await;
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

    // Resume: lose some chunks, fetch again, only those move.
    let chunks = b.store.manifest(&id).unwrap().body.chunks;
    b.store.remove_record(&id, "test").unwrap();
    let kept = blocks_of(&a.store, &id);
    for cid in &kept[..10] {
        assert!(!b.store.blocks().has(cid) || b.store.blocks().remove(cid).is_ok());
    }
    for cid in &kept[10..] {
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
    assert!(chunks.len() > 40);
    same_blocks(&a.store, &b.store, &id);

    // Bitswap moves the same record into a third node.
    let c = start(&[&a]).await;
    wait_connected(&c, a.net.peer_id()).await;
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
                find_timeout: Duration::from_secs(2),
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
    let liar = start_with(&[&honest], |s| Arc::new(Lying(s))).await;
    let id = put(&honest.store, &noise(2 * 1024 * 1024, 2));
    // The liar holds the same blocks (and lies about them).
    for cid in blocks_of(&honest.store, &id) {
        liar.store
            .blocks()
            .put(&cid, &honest.store.blocks().get(&cid).unwrap())
            .unwrap();
    }
    let fetcher = start(&[&honest, &liar]).await;
    wait_connected(&fetcher, honest.net.peer_id()).await;
    wait_connected(&fetcher, liar.net.peer_id()).await;
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
    wait_connected(&b, a.net.peer_id()).await;
    wait_connected(&c, b.net.peer_id()).await;
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
}
