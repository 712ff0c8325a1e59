//! Network nodes for tests and benchmarks: a fresh store in a temp dir and a
//! [`Network`] on a free 127.0.0.1 port, plus the loopback TCP baseline.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medmesh_core::RecordId;
use medmesh_net::{
    Blockstore, Multiaddr, NetConfig, Network, NetworkOptions, OpenPolicy, PeerId, PeerPolicy,
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
        let dir = tempfile::tempdir_in(base).expect("temp dir");
        let store = Arc::new(Store::open(&dir.path().join("store")).expect("store"));
        let config = NetConfig {
            listen: vec![listen.parse().expect("multiaddr")],
            bootstrap: bootstrap.iter().map(|p| p.addr()).collect(),
            block_timeout_secs: 20,
            ..NetConfig::default()
        };
        let net = Network::start(NetworkOptions {
            config,
            identity_seed: fresh_seed(),
            store: serve(store.clone()),
            policy,
            institution: None,
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

/// A different Ed25519 seed on every call (so every peer has its own PeerId).
fn fresh_seed() -> [u8; 32] {
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
    let secret = institution(0);
    let signer = Mutex::new(secret.unlock_signing(&passphrase()).expect("unlock"));
    let request = PutRequest {
        content_type: None,
        patient: None,
        chunk_size,
        actor: "test".into(),
    };
    store
        .put_record(
            input,
            &request,
            &signer,
            &secret.certificate().expect("cert"),
            &[],
            &|_| {},
        )
        .expect("put_record")
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
