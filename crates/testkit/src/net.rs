//! Network nodes for tests and benchmarks: a fresh store in a temp dir and a
//! [`Network`] on a free 127.0.0.1 port, plus the loopback TCP baseline, and
//! [`Blockstore`] wrappers for tests: a slow provider ([`Slow`]) and one that counts
//! calls made on the async executor ([`ExecutorCheck`]).

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medmesh_core::{Cid, RecordId};
use medmesh_net::{
    Blockstore, Multiaddr, NetConfig, NetError, Network, NetworkOptions, OpenPolicy, PeerId,
    PeerPolicy,
};
use medmesh_store::{PutRequest, Store};

use crate::{institution, passphrase};

/// A store and the network serving it; stops when dropped.
pub struct Peer {
    /// Holds the store.
    pub dir: tempfile::TempDir,
    /// The store.
    pub store: Arc<Store>,
    /// The network.
    pub net: Network,
}

impl Peer {
    /// A peer on TCP 127.0.0.1 (free port) in a temp dir, dialing `bootstrap`.
    pub async fn start(bootstrap: &[&Peer]) -> Self {
        Self::start_with(
            &std::env::temp_dir(),
            bootstrap,
            "/ip4/127.0.0.1/tcp/0",
            |s| s,
        )
        .await
    }

    /// A peer whose store lives under `base` (e.g. a tmpfs), listening on `listen`, and
    /// serving through `serve` (a test can wrap the store in a lying one).
    pub async fn start_with(
        base: &Path,
        bootstrap: &[&Peer],
        listen: &str,
        serve: impl FnOnce(Arc<Store>) -> Arc<dyn Blockstore>,
    ) -> Self {
        Self::start_with_policy(base, bootstrap, listen, serve, Arc::new(OpenPolicy)).await
    }

    /// [`Peer::start_with`], admitting replication requests by `policy`.
    pub async fn start_with_policy(
        base: &Path,
        bootstrap: &[&Peer],
        listen: &str,
        serve: impl FnOnce(Arc<Store>) -> Arc<dyn Blockstore>,
        policy: Arc<dyn PeerPolicy>,
    ) -> Self {
        Self::start_with_config(base, bootstrap, listen, serve, policy, |_| {}).await
    }

    /// [`Peer::start_with_policy`], with `configure` adjusting the network settings
    /// (replication limits, timeouts) before the network starts.
    pub async fn start_with_config(
        base: &Path,
        bootstrap: &[&Peer],
        listen: &str,
        serve: impl FnOnce(Arc<Store>) -> Arc<dyn Blockstore>,
        policy: Arc<dyn PeerPolicy>,
        configure: impl FnOnce(&mut NetConfig),
    ) -> Self {
        let dir = tempfile::tempdir_in(base).expect("temp dir");
        let store = Arc::new(Store::open(&dir.path().join("store")).expect("store"));
        store.unlock_index(crate::index_key());
        let mut config = NetConfig {
            listen: vec![listen.parse().expect("multiaddr")],
            bootstrap: bootstrap.iter().map(|p| p.addr()).collect(),
            block_timeout_secs: 20,
            // Every test node is on 127.0.0.1: a DHT of twenty of them dials one
            // another from one address (tests of the limit itself set it lower).
            max_connections_per_ip: 64,
            ..NetConfig::default()
        };
        configure(&mut config);
        let net = Network::start(NetworkOptions {
            config,
            identity_seed: fresh_seed(),
            store: serve(store.clone()),
            policy,
            institution: None,
            // The institution `put_record` signs for: replicas of its records verify.
            certificate: Some(institution(0).certificate().expect("cert")),
            agent: "medmesh-test".into(),
        })
        .await
        .expect("network starts");
        Self { dir, store, net }
    }

    /// The first address peers can dial.
    pub fn addr(&self) -> Multiaddr {
        self.net.listen_addrs()[0].clone()
    }

    /// Waits until this peer is connected to `peer` (panics after 5 s).
    pub async fn wait_connected(&self, peer: PeerId) {
        for _ in 0..100 {
            if self.net.is_connected(&peer) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} never connected to {peer}", self.net.peer_id());
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let net = self.net.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { net.shutdown().await });
        }
    }
}

/// A per-block delay shared between a test and the [`Slow`] stores it wraps, so the
/// test can slow a provider down or let it run at full speed while it serves.
#[derive(Debug, Clone, Default)]
pub struct Delay(Arc<AtomicU64>);

impl Delay {
    /// A delay of `per_block` per served block.
    pub fn new(per_block: Duration) -> Self {
        let delay = Self::default();
        delay.set(per_block);
        delay
    }

    /// Changes the delay (zero: full speed).
    pub fn set(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.0.store(ms, Ordering::Relaxed);
    }

    /// The delay now.
    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// A store that serves every block (to peers, and to its own network) after a
/// [`Delay`]: a slow disk or link, to keep transfers in flight in tests.
pub struct Slow {
    /// The store served.
    pub store: Arc<Store>,
    /// The delay per block.
    pub delay: Delay,
}

impl Slow {
    fn pause(&self) {
        let delay = self.delay.get();
        if !delay.is_zero() {
            // Blockstore calls are blocking by contract (the network makes them on
            // blocking threads), so sleeping here is what a slow disk does.
            std::thread::sleep(delay);
        }
    }
}

/// A `serve` argument of [`Peer::start_with`] wrapping the store in a [`Slow`] one.
pub fn slow(delay: &Delay) -> impl FnOnce(Arc<Store>) -> Arc<dyn Blockstore> {
    let delay = delay.clone();
    move |store: Arc<Store>| -> Arc<dyn Blockstore> { Arc::new(Slow { store, delay }) }
}

impl Blockstore for Slow {
    fn has(&self, cid: &Cid) -> bool {
        self.store.blocks().has(cid)
    }
    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>, NetError> {
        self.pause();
        Blockstore::get(&*self.store, cid)
    }
    fn get_for_peer(&self, cid: &Cid) -> Result<Option<Vec<u8>>, NetError> {
        self.pause();
        Blockstore::get_for_peer(&*self.store, cid)
    }
    fn put(&self, cid: &Cid, bytes: &[u8]) -> Result<(), NetError> {
        Blockstore::put(&*self.store, cid, bytes)
    }
    fn import_record(&self, id: &RecordId, from: &PeerId) -> Result<bool, NetError> {
        Blockstore::import_record(&*self.store, id, from)
    }
}

/// A store that counts the calls made to it on an async executor thread, where
/// blocking file I/O stalls every task scheduled on that thread, instead of on a
/// blocking thread (`spawn_blocking`).
pub struct ExecutorCheck {
    store: Arc<Store>,
    on_executor: Arc<Mutex<Vec<&'static str>>>,
}

/// Calls an [`ExecutorCheck`] store saw on the async executor, by method name.
#[derive(Debug, Clone, Default)]
pub struct ExecutorCalls(Arc<Mutex<Vec<&'static str>>>);

impl ExecutorCalls {
    /// The methods called on the executor so far (empty when all is well).
    pub fn seen(&self) -> Vec<&'static str> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A `serve` argument of [`Peer::start_with`] wrapping the store in an
/// [`ExecutorCheck`] that reports to `calls`.
pub fn executor_check(calls: &ExecutorCalls) -> impl FnOnce(Arc<Store>) -> Arc<dyn Blockstore> {
    let on_executor = calls.0.clone();
    move |store: Arc<Store>| -> Arc<dyn Blockstore> {
        Arc::new(ExecutorCheck { store, on_executor })
    }
}

impl ExecutorCheck {
    fn check(&self, method: &'static str) {
        // Tokio refuses to block (`blocking_recv`) on a thread that is running async
        // tasks and allows it on its blocking threads: that tells the two apart.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        drop(tx);
        let on_executor = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _ = rx.blocking_recv();
        }))
        .is_err();
        if on_executor {
            self.on_executor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(method);
        }
    }
}

impl Blockstore for ExecutorCheck {
    fn has(&self, cid: &Cid) -> bool {
        self.check("has");
        self.store.blocks().has(cid)
    }
    fn get(&self, cid: &Cid) -> Result<Option<Vec<u8>>, NetError> {
        self.check("get");
        Blockstore::get(&*self.store, cid)
    }
    fn get_for_peer(&self, cid: &Cid) -> Result<Option<Vec<u8>>, NetError> {
        self.check("get_for_peer");
        Blockstore::get_for_peer(&*self.store, cid)
    }
    fn put(&self, cid: &Cid, bytes: &[u8]) -> Result<(), NetError> {
        self.check("put");
        Blockstore::put(&*self.store, cid, bytes)
    }
    fn import_record(&self, id: &RecordId, from: &PeerId) -> Result<bool, NetError> {
        self.check("import_record");
        Blockstore::import_record(&*self.store, id, from)
    }
}

/// A different Ed25519 seed on every call (so every peer has its own PeerId).
pub(crate) fn fresh_seed() -> [u8; 32] {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    seed[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    seed[12..20].copy_from_slice(&nanos.to_le_bytes());
    seed
}

/// Stores `input` as a record of test institution 0 with `chunk_size`-byte chunks.
pub fn put_record(store: &Store, input: &mut (dyn Read + Send), chunk_size: u32) -> RecordId {
    put_records(
        store,
        1,
        |_| Box::new(std::io::Cursor::new(read_all(input))),
        chunk_size,
    )[0]
}

/// Stores `count` records of test institution 0, the `i`-th read from `input(i)`
/// (the keys are unlocked once, for stores that need many records).
pub fn put_records(
    store: &Store,
    count: usize,
    input: impl FnMut(usize) -> Box<dyn Read + Send>,
    chunk_size: u32,
) -> Vec<RecordId> {
    put_records_as(0, store, count, input, chunk_size)
}

/// [`put_records`] signed by test institution `n` (0 or 1).
pub fn put_records_as(
    n: usize,
    store: &Store,
    count: usize,
    mut input: impl FnMut(usize) -> Box<dyn Read + Send>,
    chunk_size: u32,
) -> Vec<RecordId> {
    let secret = institution(n);
    let signer = Mutex::new(secret.unlock_signing(&passphrase()).expect("unlock"));
    let certificate = secret.certificate().expect("cert");
    let request = PutRequest {
        content_type: None,
        patient: None,
        chunk_size,
        actor: "test".into(),
        idempotency_key: None,
    };
    (0..count)
        .map(|i| {
            store
                .put_record(&mut input(i), &request, &signer, &certificate, &[], &|_| {})
                .expect("put_record")
        })
        .collect()
}

fn read_all(input: &mut (dyn Read + Send)) -> Vec<u8> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).expect("test input reads");
    bytes
}

/// What moving `data` over loopback TCP costs on this machine, with no protocol: one
/// task writes, another reads and discards (the baseline of transfer benchmarks).
pub async fn loopback_tcp(data: &[u8]) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0usize;
        loop {
            let n = socket.read(&mut buf).await.expect("read");
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    let start = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(data).await.expect("write");
    socket.shutdown().await.expect("shutdown");
    assert_eq!(reader.await.expect("reader"), data.len());
    start.elapsed()
}
