//! Webhooks: the node's events POSTed to configured HTTP endpoints, signed as Standard
//! Webhooks (<https://www.standardwebhooks.com>), from a durable outbox in the store.
//!
//! [`spawn_webhooks`] starts two loops:
//!
//! - **enqueue**: subscribes to the event bus as the operator audience and writes each
//!   event, for every endpoint whose kinds include it, to the store's outbox
//!   ([`Store::outbox_enqueue_all`], committed before anything is sent). A
//!   `break_glass_opened` goes to every endpoint whatever its kinds: a break-glass
//!   opening always notifies.
//! - **deliver**: takes due messages from the outbox and POSTs each with the headers
//!   `webhook-id` (the message id, made once at enqueue), `webhook-timestamp` (unix
//!   seconds of this attempt) and `webhook-signature` (`v1,` + base64 of
//!   HMAC-SHA256(secret, `{id}.{timestamp}.{body}`)). A 2xx answer removes it; anything
//!   else (another status, a timeout, a refused connection) schedules a retry with
//!   exponential backoff ([`retry_delay`]), and after [`MAX_ATTEMPTS`] failures, or a
//!   `410 Gone`, the message is given up on and becomes a `webhook_undelivered` audit
//!   entry. The loop wakes at once when something is enqueued.
//!
//! Delivery is at least once: a node killed after sending but before removing a message
//! sends it again after restart, with the same id, which receivers use to process each
//! message once. Events carry record ids, peer ids and addresses, never patient
//! references, plaintext or secrets (see `events.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use medmesh_store::{OutboxEntry, Store};
use ring::hmac;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{blocking, ServiceError};
use crate::events::{Audience, NodeEvent};
use crate::notify::Delivery;
use crate::services::NodeServices;

/// Failed attempts after which a message is given up on.
pub const MAX_ATTEMPTS: u32 = 20;
/// The wait after the first failure; it doubles after each further one.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(600);
/// How long one attempt may take (connecting, sending, the answer's headers).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Deliveries in flight at once, over all endpoints.
const MAX_IN_FLIGHT: usize = 16;
/// Due messages read from the outbox at once.
const BATCH: usize = 256;
/// Events written to the outbox in one transaction, at most.
const ENQUEUE_BATCH: usize = 256;
/// Events waiting between the bus and the outbox writer.
const ENQUEUE_QUEUE: usize = 1024;
/// Tries to write a batch of events to the outbox before they are dropped (logged).
const ENQUEUE_TRIES: u32 = 5;
/// The delivery loop looks at the outbox at least this often.
const IDLE_CHECK: Duration = Duration::from_secs(60);
/// Who the audit log names for messages given up on.
const ACTOR: &str = "webhooks";
/// The prefix of a secret's text.
const SECRET_PREFIX: &str = "whsec_";
/// Shortest and longest secret, in bytes (the specification asks for 24 to 64).
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// The kind every endpoint receives, whatever its kinds.
const BREAK_GLASS_OPENED: &str = "break_glass_opened";
/// Longest endpoint name.
const MAX_NAME: usize = 64;
/// Secrets are base64 with or without padding.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An endpoint that receives the node's events.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Its name: what the outbox and the logs know it by (letters, digits, `-`, `_`).
    /// Messages in the outbox follow the name, so a changed URL takes effect for them
    /// too.
    pub name: String,
    /// Where events are POSTed (`http` or `https`).
    pub url: String,
    /// The signing secret, `whsec_` + base64 of 24 to 64 random bytes.
    pub secret: String,
    /// The kinds of event it receives (names from [`NodeEvent::KINDS`]); `None`: every
    /// kind. `break_glass_opened` is sent whatever this says.
    pub kinds: Option<BTreeSet<String>>,
}

impl fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("name", &self.name)
            .field("url", &"(not shown)")
            .field("secret", &"(not shown)")
            .field("kinds", &self.kinds)
            .finish()
    }
}

impl WebhookEndpoint {
    /// Checks every setting, naming the endpoint in the error
    /// ([`ServiceError::InvalidInput`]).
    pub fn validate(&self) -> Result<(), ServiceError> {
        check_webhook_settings(&self.name, &self.url, self.kinds.as_ref())?;
        WebhookSecret::parse(&self.secret)
            .map_err(|e| invalid(&self.name, e.to_string()))
            .map(drop)
    }

    /// Whether `event` goes to this endpoint: of one of its kinds, or a break-glass
    /// opening.
    pub fn wants(&self, event: &NodeEvent) -> bool {
        matches!(event, NodeEvent::BreakGlassOpened { .. })
            || self
                .kinds
                .as_ref()
                .is_none_or(|kinds| kinds.contains(event.kind()))
    }
}

fn invalid(name: &str, why: impl fmt::Display) -> ServiceError {
    ServiceError::InvalidInput(format!("webhook `{name}`: {why}"))
}

/// Checks an endpoint's settings other than its secret (for a configuration file that
/// names the secret's file): a name of letters, digits, `-` and `_`; an `http` or
/// `https` URL with a host; kinds, when given, at least one and all from
/// [`NodeEvent::KINDS`]. The error names the endpoint.
pub fn check_webhook_settings(
    name: &str,
    url: &str,
    kinds: Option<&BTreeSet<String>>,
) -> Result<(), ServiceError> {
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(ServiceError::InvalidInput(format!(
            "webhook name `{name}`: use 1 to {MAX_NAME} letters, digits, `-` or `_`"
        )));
    }
    parse_url(name, url)?;
    if let Some(kinds) = kinds {
        let valid = NodeEvent::KINDS.join(", ");
        if kinds.is_empty() {
            return Err(invalid(
                name,
                format!("`kinds` is empty; leave it out for every kind, or name some of: {valid}"),
            ));
        }
        let unknown: Vec<String> = kinds
            .iter()
            .filter(|k| !NodeEvent::KINDS.contains(&k.as_str()))
            .map(|k| format!("`{k}`"))
            .collect();
        if !unknown.is_empty() {
            return Err(invalid(
                name,
                format!(
                    "unknown event kind {}; the kinds are: {valid}",
                    unknown.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn parse_url(name: &str, url: &str) -> Result<reqwest::Url, ServiceError> {
    // The URL itself is not repeated: it may hold a credential.
    let parsed =
        reqwest::Url::parse(url).map_err(|e| invalid(name, format!("`url` is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(
            name,
            format!("`url` must be http or https, not `{}`", parsed.scheme()),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(name, "`url` has no host"));
    }
    Ok(parsed)
}

/// A parsed `whsec_…` signing secret. Its `Debug` does not show it.
#[derive(Clone)]
pub struct WebhookSecret(hmac::Key);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(not shown)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_` + base64 (padded or not) of 24 to 64 bytes. The error never
    /// repeats the text.
    pub fn parse(text: &str) -> Result<Self, ServiceError> {
        let Some(encoded) = text.trim().strip_prefix(SECRET_PREFIX) else {
            return Err(ServiceError::InvalidInput(format!(
                "the secret must start with `{SECRET_PREFIX}` (then base64 of {} to {} random bytes)",
                SECRET_BYTES.start(),
                SECRET_BYTES.end()
            )));
        };
        let bytes = SECRET_BASE64.decode(encoded).map_err(|_| {
            ServiceError::InvalidInput(format!(
                "the secret is not `{SECRET_PREFIX}` followed by base64"
            ))
        })?;
        if !SECRET_BYTES.contains(&bytes.len()) {
            return Err(ServiceError::InvalidInput(format!(
                "the secret holds {} bytes; use {} to {} random bytes",
                bytes.len(),
                SECRET_BYTES.start(),
                SECRET_BYTES.end()
            )));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }
}

/// What is signed: `{id}.{timestamp}.{body}`.
fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let timestamp = timestamp.to_string();
    let mut content = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// The `webhook-signature` value of a message: `v1,` + base64 of
/// HMAC-SHA256(secret, `{id}.{timestamp}.{body}`).
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = hmac::sign(&secret.0, &signed_content(id, timestamp, body));
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

/// Whether a `webhook-signature` header (space-separated `version,signature` pairs)
/// holds a valid `v1` signature of the message (compared in constant time). The
/// timestamp's freshness is the receiver's to check.
pub fn verify(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let message = signed_content(id, timestamp, body);
    header
        .split(' ')
        .filter_map(|pair| pair.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, signature)| STANDARD.decode(signature).ok())
        .any(|signature| hmac::verify(&secret.0, &message, &signature).is_ok())
}

/// The wait before the next attempt after `failures` failed ones (1, 2, …): 1 s, 2 s,
/// 4 s … doubling up to [`MAX_RETRY`] (without the jitter the worker adds).
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// The body sent for `event`, as Standard Webhooks suggests: its kind, when it happened,
/// and the event itself.
fn payload(event: &NodeEvent, at: OffsetDateTime) -> String {
    #[derive(Serialize)]
    struct Payload<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        timestamp: String,
        data: &'a NodeEvent,
    }
    serde_json::to_string(&Payload {
        kind: event.kind(),
        timestamp: at.format(&Rfc3339).unwrap_or_default(),
        data: event,
    })
    .expect("events serialize")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Up to a tenth of `delay` more, at random, so that retries of many messages spread.
fn with_jitter(delay: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut r = [0u8; 2];
    if ring::rand::SystemRandom::new().fill(&mut r).is_err() {
        return delay;
    }
    // Saturating: `delay` may come from a receiver's `Retry-After`, whatever it says.
    let extra =
        (millis(delay) / 10).saturating_mul(u64::from(u16::from_le_bytes(r))) / u64::from(u16::MAX);
    delay.saturating_add(Duration::from_millis(extra))
}

/// The running webhook loops. Dropping this leaves them running (for the life of the
/// runtime); [`Webhooks::shutdown`] stops them.
#[derive(Debug)]
pub struct Webhooks {
    tasks: Vec<JoinHandle<()>>,
    endpoints: usize,
}

impl Webhooks {
    /// How many endpoints receive events.
    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// Stops the loops and waits until they are gone. Deliveries in flight are cut:
    /// their messages stay in the outbox and are sent again (same id) by the next
    /// worker.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// An endpoint, ready to deliver to.
struct Endpoint {
    config: WebhookEndpoint,
    url: reqwest::Url,
    secret: WebhookSecret,
}

struct Shared {
    store: Arc<Store>,
    client: reqwest::Client,
    endpoints: BTreeMap<String, Arc<Endpoint>>,
    /// Wakes the delivery loop: something was enqueued.
    enqueued: Notify,
}

/// Starts delivering the node's events to `endpoints` (see the module documentation),
/// and what the outbox still holds from before. Checks every endpoint first: an invalid
/// setting or two endpoints of one name is [`ServiceError::InvalidInput`] naming it.
/// With no endpoint nothing starts (messages left in the outbox wait for one).
///
/// Subscribes before returning, so every event published after this call is delivered.
/// Needs a tokio runtime.
pub fn spawn_webhooks(
    services: Arc<NodeServices>,
    endpoints: Vec<WebhookEndpoint>,
) -> Result<Webhooks, ServiceError> {
    let store = services.store().clone();
    let mut ready = BTreeMap::new();
    for config in endpoints {
        config.validate()?;
        let url = parse_url(&config.name, &config.url)?;
        let secret = WebhookSecret::parse(&config.secret).map_err(|e| invalid(&config.name, e))?;
        if plain_http_off_host(&url) {
            tracing::warn!(
                endpoint = %config.name,
                "webhook endpoint is plain http on another host: events travel unencrypted; use https"
            );
        }
        let name = config.name.clone();
        let endpoint = Arc::new(Endpoint {
            config,
            url,
            secret,
        });
        if ready.insert(name.clone(), endpoint).is_some() {
            return Err(invalid(&name, "two webhook endpoints have this name"));
        }
    }
    if ready.is_empty() {
        tokio::spawn(async move {
            let waiting = blocking("webhook outbox length", move || Ok(store.outbox_len()?)).await;
            if let Ok(n @ 1..) = waiting {
                tracing::warn!(
                    messages = n,
                    "webhook messages wait in the outbox, and no endpoint is configured"
                );
            }
        });
        return Ok(Webhooks {
            tasks: Vec::new(),
            endpoints: 0,
        });
    }
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        // A redirect is a failure (Standard Webhooks): the endpoint's URL should change.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("medmesh/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            tracing::error!(error = %e, "cannot build the webhook HTTP client");
            ServiceError::Internal("the webhook HTTP client could not be built")
        })?;

    // One subscription for every endpoint: the union of their kinds, and break-glass
    // openings, which every endpoint gets.
    let kinds = if ready.values().any(|e| e.config.kinds.is_none()) {
        None
    } else {
        let mut union: BTreeSet<String> = ready
            .values()
            .flat_map(|e| e.config.kinds.iter().flatten().cloned())
            .collect();
        union.insert(BREAK_GLASS_OPENED.to_string());
        Some(union)
    };
    let mut stream = services.subscribe_events(Audience::Operator, kinds)?;
    let count = ready.len();
    let shared = Arc::new(Shared {
        store,
        client,
        endpoints: ready,
        enqueued: Notify::new(),
    });

    let (events_tx, events_rx) = mpsc::channel(ENQUEUE_QUEUE);
    let read = tokio::spawn(async move {
        while let Some(delivery) = stream.next().await {
            match delivery {
                Delivery::Event { event, .. } => {
                    if events_tx.send(event).await.is_err() {
                        return;
                    }
                }
                Delivery::Lagged { missed, .. } => tracing::warn!(
                    missed,
                    "webhooks fell behind the event bus and missed events (the outbox could not be written fast enough)"
                ),
            }
        }
    });
    let enqueue = tokio::spawn(enqueue_loop(shared.clone(), events_rx));
    let deliver = tokio::spawn(deliver_loop(shared));
    tracing::info!(endpoints = count, "webhooks started");
    Ok(Webhooks {
        tasks: vec![read, enqueue, deliver],
        endpoints: count,
    })
}

fn plain_http_off_host(url: &reqwest::Url) -> bool {
    if url.scheme() != "http" {
        return false;
    }
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// Writes events from the bus to the outbox, a batch per transaction, and wakes the
/// delivery loop.
async fn enqueue_loop(shared: Arc<Shared>, mut events: mpsc::Receiver<NodeEvent>) {
    let mut batch = Vec::with_capacity(ENQUEUE_BATCH);
    while events.recv_many(&mut batch, ENQUEUE_BATCH).await > 0 {
        let at = OffsetDateTime::now_utc();
        let mut messages: Vec<(String, String)> = Vec::new();
        for event in batch.drain(..) {
            let body = payload(&event, at);
            for (name, endpoint) in &shared.endpoints {
                if endpoint.config.wants(&event) {
                    messages.push((name.clone(), body.clone()));
                }
            }
        }
        if messages.is_empty() {
            continue;
        }
        let messages = Arc::new(messages);
        let mut tries = 0;
        loop {
            tries += 1;
            let (store, to_write) = (shared.store.clone(), messages.clone());
            let written = blocking("webhook outbox write", move || {
                let pairs: Vec<(&str, &str)> = to_write
                    .iter()
                    .map(|(name, body)| (name.as_str(), body.as_str()))
                    .collect();
                Ok(store.outbox_enqueue_all(&pairs)?)
            })
            .await;
            match written {
                Ok(_) => {
                    shared.enqueued.notify_one();
                    break;
                }
                Err(e) if tries < ENQUEUE_TRIES => {
                    tracing::warn!(error = %e, "cannot write webhook messages to the outbox; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        messages = messages.len(),
                        "cannot write webhook messages to the outbox; they are lost"
                    );
                    break;
                }
            }
        }
    }
}

/// What became of one delivery attempt.
enum Outcome {
    /// Sent and removed, or given up on.
    Done,
    /// To be tried again at this time (unix ms).
    Retry(u64),
}

/// Delivers due messages, up to [`MAX_IN_FLIGHT`] at once, until aborted.
async fn deliver_loop(shared: Arc<Shared>) {
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    // Task id → message id, for the messages being delivered.
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut queue: VecDeque<OutboxEntry> = VecDeque::new();
    let mut refill = true;
    // The last read of the outbox stopped at its limit: more are due.
    let mut more = false;
    // When the earliest message not yet due becomes due (unix ms).
    let mut wake_at: Option<u64> = None;
    loop {
        if queue.is_empty() && more {
            refill = true;
        }
        if refill && queue.is_empty() {
            refill = false;
            let now = now_ms();
            let limit = BATCH + in_flight.len();
            let store = shared.store.clone();
            let read = blocking("webhook outbox read", move || {
                let due = store.outbox_due(now, limit)?;
                let next = if due.len() < limit {
                    store.outbox_next_attempt(now)?
                } else {
                    None
                };
                Ok((due, next))
            })
            .await;
            match read {
                Ok((due, next)) => {
                    more = due.len() >= limit;
                    wake_at = next;
                    let busy: std::collections::HashSet<&String> = in_flight.values().collect();
                    let fresh: Vec<OutboxEntry> =
                        due.into_iter().filter(|e| !busy.contains(&e.id)).collect();
                    queue.extend(fresh);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the webhook outbox; trying again in a second");
                    more = false;
                    wake_at = Some(now + 1000);
                }
            }
        }
        while in_flight.len() < MAX_IN_FLIGHT {
            let Some(entry) = queue.pop_front() else {
                break;
            };
            let id = entry.id.clone();
            let handle = tasks.spawn(deliver(shared.clone(), entry));
            in_flight.insert(handle.id(), id);
        }
        let sleep = wake_at
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
            .unwrap_or(IDLE_CHECK)
            .min(IDLE_CHECK);
        tokio::select! {
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => match joined {
                Ok((task, outcome)) => {
                    in_flight.remove(&task);
                    if let Outcome::Retry(at) = outcome {
                        wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                    }
                }
                Err(e) => {
                    in_flight.remove(&e.id());
                    tracing::error!(error = %e, "a webhook delivery task failed");
                    // Its message is still due: try again after the first retry delay,
                    // not at once (a task that keeps failing must not spin).
                    let at = now_ms() + millis(FIRST_RETRY);
                    wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                }
            },
            () = shared.enqueued.notified() => refill = true,
            () = tokio::time::sleep(sleep) => {
                refill = true;
                wake_at = None;
            }
        }
    }
}

/// One attempt to deliver `entry`, and its bookkeeping in the outbox.
async fn deliver(shared: Arc<Shared>, entry: OutboxEntry) -> Outcome {
    let Some(endpoint) = shared.endpoints.get(&entry.endpoint).cloned() else {
        let error = format!(
            "no webhook endpoint named `{}` is configured any more",
            entry.endpoint
        );
        tracing::warn!(id = %entry.id, endpoint = %entry.endpoint, "{error}; giving the message up");
        return give_up(&shared, entry, error).await;
    };
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
    let signature = sign(
        &endpoint.secret,
        &entry.id,
        timestamp,
        entry.body.as_bytes(),
    );
    let sent = shared
        .client
        .post(endpoint.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", entry.id.as_str())
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(entry.body.clone())
        .send()
        .await;
    let (error, retry_after, gone) = match sent {
        Ok(response) if response.status().is_success() => {
            tracing::debug!(id = %entry.id, endpoint = %entry.endpoint, "webhook delivered");
            let store = shared.store.clone();
            let id = entry.id.clone();
            return match blocking("webhook outbox update", move || {
                Ok(store.outbox_delivered(&entry)?)
            })
            .await
            {
                Ok(_) => Outcome::Done,
                Err(e) => {
                    // It stays in the outbox and goes again: at least once.
                    tracing::warn!(error = %e, id = %id, "a delivered webhook could not be removed from the outbox");
                    Outcome::Retry(now_ms() + millis(FIRST_RETRY))
                }
            };
        }
        Ok(response) => {
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            (
                format!("HTTP {status}"),
                retry_after,
                status == reqwest::StatusCode::GONE,
            )
        }
        Err(e) => (describe(&e.without_url()), None, false),
    };
    let failures = entry.attempts.saturating_add(1);
    if gone || failures >= MAX_ATTEMPTS {
        tracing::warn!(
            id = %entry.id,
            endpoint = %entry.endpoint,
            attempts = failures,
            error = %error,
            "webhook delivery failed; giving the message up (see the audit log, `webhook_undelivered`)"
        );
        return give_up(&shared, entry, error).await;
    }
    // A receiver's `Retry-After` is capped before anything is computed from it.
    let asked = retry_after.unwrap_or_default().min(MAX_RETRY);
    let delay = with_jitter(retry_delay(failures).max(asked)).min(MAX_RETRY + MAX_RETRY / 10);
    let at = now_ms() + millis(delay);
    tracing::warn!(
        id = %entry.id,
        endpoint = %entry.endpoint,
        attempt = failures,
        error = %error,
        retry_in_ms = millis(delay),
        "webhook delivery failed; will retry"
    );
    let store = shared.store.clone();
    let id = entry.id.clone();
    if let Err(e) = blocking("webhook outbox update", move || {
        Ok(store.outbox_retry(&entry, at, &error)?)
    })
    .await
    {
        tracing::warn!(error = %e, id = %id, "cannot record a failed webhook attempt");
    }
    Outcome::Retry(at)
}

async fn give_up(shared: &Shared, entry: OutboxEntry, error: String) -> Outcome {
    let store = shared.store.clone();
    let id = entry.id.clone();
    match blocking("webhook outbox update", move || {
        Ok(store.outbox_give_up(&entry, &error, ACTOR)?)
    })
    .await
    {
        Ok(_) => Outcome::Done,
        Err(e) => {
            tracing::warn!(error = %e, id = %id, "cannot give up a webhook message; it stays in the outbox");
            Outcome::Retry(now_ms() + millis(MAX_RETRY))
        }
    }
}

/// An error and its causes, on one line ("error sending request: … connection refused").
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> WebhookSecret {
        WebhookSecret::parse(text).expect("a valid secret")
    }

    /// The test vector published with Standard Webhooks (and Svix), and the one of the
    /// specification's reference Rust library.
    #[test]
    fn signatures_match_the_reference_vectors() {
        let key = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let (id, timestamp, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(sign(&key, id, timestamp, body), expected);
        assert!(verify(&key, id, timestamp, body, expected));
        // Several signatures (secret rotation): one valid one is enough.
        let rotated = format!("v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4= {expected}");
        assert!(verify(&key, id, timestamp, body, &rotated));
        assert!(!verify(&key, id, timestamp + 1, body, expected));
        assert!(!verify(&key, "msg_other", timestamp, body, expected));
        assert!(!verify(
            &key,
            id,
            timestamp,
            br#"{"test": 2432232315}"#,
            expected
        ));
        assert!(!verify(
            &key,
            id,
            timestamp,
            body,
            &expected.replacen("v1,", "v2,", 1)
        ));

        let key = secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        assert_eq!(
            sign(
                &key,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_enough_bytes_and_are_never_shown() {
        // Padded or not.
        secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        secret(&format!("whsec_{}", STANDARD.encode([7u8; 32])));
        secret(&format!(
            "whsec_{}",
            STANDARD.encode([7u8; 32]).trim_end_matches('=')
        ));
        for (text, why) in [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "start with `whsec_`"),
            ("whsec_not base64!", "base64"),
            ("whsec_c2hvcnQ=", "holds 5 bytes"),
        ] {
            let err = WebhookSecret::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(!err.contains(text), "the error repeats the secret: {err}");
        }
        let long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
        assert!(WebhookSecret::parse(&long).is_err());
        let endpoint = WebhookEndpoint {
            name: "ops".into(),
            url: "https://user:pw@hooks.example/x".into(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            kinds: None,
        };
        let shown = format!("{endpoint:?} {:?}", secret(&endpoint.secret));
        assert!(
            !shown.contains("MfKQ9r8G") && !shown.contains("pw@"),
            "{shown}"
        );
    }

    #[test]
    fn settings_are_checked_and_errors_name_the_endpoint() {
        let kinds = |k: &[&str]| Some(k.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        check_webhook_settings("ops-1", "https://hooks.example/medmesh", None).unwrap();
        check_webhook_settings(
            "ops_2",
            "http://127.0.0.1:9000/",
            kinds(&["key_denied"]).as_ref(),
        )
        .unwrap();
        for (name, url, kinds, why) in [
            ("ops", "ftp://hooks.example/", None, "http or https"),
            ("ops", "not a url", None, "not a URL"),
            ("ops", "file:///etc/passwd", None, "http or https"),
            ("ops", "https://hooks.example/", kinds(&[]), "empty"),
            (
                "ops",
                "https://hooks.example/",
                kinds(&["record_stored", "recordstored"]),
                "`recordstored`",
            ),
            (
                "bad name",
                "https://hooks.example/",
                None,
                "letters, digits",
            ),
            ("", "https://hooks.example/", None, "letters, digits"),
        ] {
            let err = check_webhook_settings(name, url, kinds.as_ref()).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, ServiceError::InvalidInput(_)), "{err:?}");
            assert!(text.contains(why), "{name} {url}: {text}");
            assert!(text.contains(&format!("`{name}`")), "{text}");
        }
    }

    #[test]
    fn endpoints_get_their_kinds_and_always_break_glass_openings() {
        assert!(NodeEvent::KINDS.contains(&BREAK_GLASS_OPENED));
        let endpoint = WebhookEndpoint {
            name: "ops".into(),
            url: "https://hooks.example/".into(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            kinds: Some(["key_denied".to_string()].into()),
        };
        let opened = NodeEvent::BreakGlassOpened {
            emergency_id: "1".into(),
            institution: "0x01".into(),
            patient: "0x02".into(),
            until: 9,
        };
        assert!(endpoint.wants(&opened));
        assert!(!endpoint.wants(&NodeEvent::RecordRemoved { record: "r".into() }));
        assert!(endpoint.wants(&NodeEvent::KeyDenied {
            record: "r".into(),
            caller: "c".into(),
            grantee: "g".into(),
            reason: "no".into(),
        }));
        let every = WebhookEndpoint {
            kinds: None,
            ..endpoint
        };
        assert!(every.wants(&NodeEvent::RecordRemoved { record: "r".into() }));
    }

    #[test]
    fn retries_back_off_exponentially_up_to_ten_minutes() {
        let secs: Vec<u64> = (1..=12).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
        let d = with_jitter(Duration::from_secs(10));
        assert!(
            d >= Duration::from_secs(10) && d <= Duration::from_secs(11),
            "{d:?}"
        );
    }

    #[test]
    fn the_body_is_type_timestamp_and_the_event() {
        let event = NodeEvent::RecordStored {
            record: "bafy".into(),
            size: 3,
        };
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let body: serde_json::Value = serde_json::from_str(&payload(&event, at)).unwrap();
        assert_eq!(body["type"], "record_stored");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(body["data"], serde_json::to_value(&event).unwrap());
    }
}
