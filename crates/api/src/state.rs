//! Shared state of the API: the store, the unlocked institution keys, sessions, limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medmesh_chain::{Deployment, KeyReleaser, Relayer};
use medmesh_crypto::{Certificate, UnlockedDecryptor, UnlockedSigner};
use medmesh_store::{AuditAction, AuditEvent, Store, DEFAULT_CHUNK_SIZE};
use time::OffsetDateTime;

use crate::auth::Session;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

/// The institution's keys, unlocked once at node start.
pub struct NodeKeys {
    /// Public certificate (owner of the records this node writes).
    pub certificate: Certificate,
    /// Signs manifests; locked only for the signature itself.
    pub signer: Mutex<UnlockedSigner>,
    /// Unwraps data keys; locked only while a record is opened (shared with key release).
    pub decryptor: Arc<Mutex<UnlockedDecryptor>>,
}

/// What the API uses of a chain.
pub struct ChainServices {
    /// EIP-155 chain id (for EIP-712 domains).
    pub chain_id: u64,
    /// Contract addresses.
    pub deployment: Deployment,
    /// Key release (with the grant cache).
    pub releaser: Arc<KeyReleaser>,
    /// Relays signed grants from the node's account; `None` when the node has no
    /// account on this chain.
    pub relayer: Option<Arc<Relayer>>,
}

/// API settings; [`ApiConfig::default`] is what `medmesh node` uses unless told otherwise.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The `domain` a Sign-In with Ethereum message must name (the node's host:port).
    pub siwe_domain: String,
    /// The chain id a SIWE message must name.
    pub chain_id: u64,
    /// Largest record upload, in bytes.
    pub max_record_bytes: u64,
    /// Largest JSON request body, in bytes.
    pub max_json_bytes: usize,
    /// Sustained requests per second per token (or per client address if anonymous).
    pub rate_per_second: f64,
    /// Burst allowance on top of the sustained rate.
    pub rate_burst: f64,
    /// Time limit for requests that do not stream a record.
    pub request_timeout: Duration,
    /// Longest session a SIWE sign-in can get.
    pub max_session: Duration,
    /// How long a sign-in nonce stays usable.
    pub nonce_ttl: Duration,
    /// Plaintext bytes per chunk for uploads.
    pub chunk_size: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            siwe_domain: "127.0.0.1:8420".into(),
            chain_id: 31337,
            max_record_bytes: 8 << 30,
            max_json_bytes: 64 << 10,
            rate_per_second: 100.0,
            rate_burst: 200.0,
            request_timeout: Duration::from_secs(30),
            max_session: Duration::from_secs(24 * 3600),
            nonce_ttl: Duration::from_secs(600),
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Cheap-to-clone handle on everything a request needs.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub store: Arc<Store>,
    pub keys: Arc<NodeKeys>,
    pub config: ApiConfig,
    pub sessions: Mutex<HashMap<String, Session>>,
    pub nonces: Mutex<HashMap<String, OffsetDateTime>>,
    pub limiter: RateLimiter,
    pub metrics: Metrics,
    pub started: Instant,
    pub chain: std::sync::OnceLock<ChainServices>,
    pub network: std::sync::OnceLock<medmesh_net::Network>,
}

impl AppState {
    /// Builds the state for a store whose records are owned by `keys`.
    pub fn new(store: Arc<Store>, keys: Arc<NodeKeys>, config: ApiConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(config.rate_per_second, config.rate_burst),
                store,
                keys,
                config,
                sessions: Mutex::new(HashMap::new()),
                nonces: Mutex::new(HashMap::new()),
                metrics: Metrics::default(),
                started: Instant::now(),
                chain: std::sync::OnceLock::new(),
                network: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Connects the API to a chain: key release, grants and relaying. Set once; later
    /// calls keep the first and return `false`.
    pub fn enable_chain(&self, services: ChainServices) -> bool {
        self.inner.chain.set(services).is_ok()
    }

    /// Connects the API to the peer-to-peer network: fetching records from peers,
    /// replication, and announcing new records. Set once, like [`AppState::enable_chain`].
    pub fn enable_network(&self, network: medmesh_net::Network) -> bool {
        self.inner.network.set(network).is_ok()
    }

    /// The network, if enabled.
    pub fn network(&self) -> Option<&medmesh_net::Network> {
        self.inner.network.get()
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The settings.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// Appends an audit entry off the async executor; failures are logged, not raised
    /// (a denial must still be answered even if the log is unwritable).
    pub(crate) async fn audit(
        &self,
        action: AuditAction,
        actor: String,
        subject: String,
        detail: Vec<(&str, String)>,
    ) {
        let store = self.inner.store.clone();
        let event = AuditEvent {
            action,
            actor,
            subject,
            detail: detail
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        };
        let result = tokio::task::spawn_blocking(move || store.audit(event)).await;
        if !matches!(result, Ok(Ok(_))) {
            tracing::error!("could not append to the audit log");
        }
    }
}

/// Locks a mutex, recovering from poisoning (the data behind these locks stays valid).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
