//! Shared state of the API: the node's services, plus what only HTTP has (sessions,
//! nonces, rate limits, request metrics, settings).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medmesh_core::bounded::BoundedMap;
use medmesh_service::NodeServices;
use time::OffsetDateTime;
use tokio::sync::{watch, Semaphore};

use crate::auth::Session;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

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
    /// Sustained requests per second per authenticated caller (token or wallet); a
    /// client address may send ten times as many before authentication.
    pub rate_per_second: f64,
    /// Burst allowance on top of the sustained rate.
    pub rate_burst: f64,
    /// Time limit for requests that do not stream a record.
    pub request_timeout: Duration,
    /// Longest session a SIWE sign-in can get.
    pub max_session: Duration,
    /// How long a sign-in nonce stays usable.
    pub nonce_ttl: Duration,
    /// Most connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection that sends no complete request header within this time is closed
    /// (slow or idle clients).
    pub header_timeout: Duration,
    /// An upload whose body sends nothing for this long is aborted.
    pub body_idle_timeout: Duration,
    /// Most event streams (`GET /v1/events`) open at once; more are refused with 503.
    /// Each holds a connection and a subscription to the event bus for as long as the
    /// client stays. 0 refuses every stream.
    pub max_event_streams: usize,
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
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            max_event_streams: 64,
        }
    }
}

/// Wallet sessions per generation: a flood of sign-ins (any key can sign in) forgets
/// the oldest unused sessions, never scans them.
const SESSIONS: usize = 65_536;
/// Sign-in nonces per generation (anyone may ask for one).
const NONCES: usize = 65_536;

/// How many callers' worth of requests one client address may send.
const ADDRESS_RATE_FACTOR: f64 = 10.0;
/// Event streams one wallet session may hold open at once.
pub const WALLET_STREAMS: usize = 2;

/// Cheap-to-clone handle on everything a request needs.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub services: Arc<NodeServices>,
    pub config: ApiConfig,
    pub sessions: Mutex<BoundedMap<String, Session>>,
    pub nonces: Mutex<BoundedMap<String, OffsetDateTime>>,
    /// Per authenticated caller (token id or wallet).
    pub limiter: RateLimiter,
    /// Per client address, before authentication.
    pub address_limiter: RateLimiter,
    pub metrics: Metrics,
    pub started: Instant,
    /// One permit per open event stream (`max_event_streams`).
    pub event_streams: Arc<Semaphore>,
    /// Wallet sessions' share of those: half, so signed-in wallets (anyone with a
    /// wallet can sign in) cannot take the streams operators need.
    pub wallet_streams: Arc<Semaphore>,
    /// Event streams open per wallet (at most [`WALLET_STREAMS`] each).
    pub streams_per_wallet:
        Arc<Mutex<std::collections::HashMap<alloy::primitives::Address, usize>>>,
    /// Becomes `true` when the server begins to shut down: event streams end then,
    /// instead of holding the graceful shutdown for its whole grace period.
    pub closing: watch::Sender<bool>,
}

impl AppState {
    /// The API over a node's services.
    pub fn new(services: Arc<NodeServices>, config: ApiConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(config.rate_per_second, config.rate_burst),
                // Several callers may share an address (every local client shares
                // 127.0.0.1): its bucket is ten times a caller's.
                address_limiter: RateLimiter::new(
                    ADDRESS_RATE_FACTOR * config.rate_per_second,
                    ADDRESS_RATE_FACTOR * config.rate_burst,
                ),
                sessions: Mutex::new(BoundedMap::new(SESSIONS)),
                nonces: Mutex::new(BoundedMap::new(NONCES)),
                metrics: Metrics::default(),
                started: Instant::now(),
                event_streams: Arc::new(Semaphore::new(config.max_event_streams)),
                wallet_streams: Arc::new(Semaphore::new(config.max_event_streams / 2)),
                streams_per_wallet: Arc::default(),
                closing: watch::Sender::new(false),
                services,
                config,
            }),
        }
    }

    /// The node's services.
    pub fn services(&self) -> &Arc<NodeServices> {
        &self.inner.services
    }

    /// The store (through the services), for tests and benchmarks that look at disk;
    /// handlers go through [`AppState::services`].
    pub fn store(&self) -> &Arc<medmesh_store::Store> {
        self.inner.services.store()
    }

    /// The settings.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }
}

/// Locks a mutex, recovering from poisoning (the data behind these locks stays valid).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
