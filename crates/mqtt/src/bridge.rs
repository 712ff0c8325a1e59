//! The node as an MQTT 5 client of its broker.
//!
//! Two tasks share one connection:
//! - the **reader** drives rumqttc's event loop: it subscribes (QoS 1) to every device's
//!   observations, hands each message to `Telemetry::submit`, and queues the message
//!   with its pending outcome for the acker. It never waits on the acker, so the
//!   acknowledgements the acker queues always drain. Backpressure comes from the broker:
//!   the node's `receive_maximum` (`max_unacked`) is how many QoS 1 messages the broker
//!   sends it without an acknowledgement; and `submit` waits while the telemetry queue is
//!   full, so the reader stops reading.
//! - the **acker** takes the queue in arrival order, waits for each outcome and only
//!   then acknowledges (PUBACK), so acknowledgements leave in the order messages came
//!   (brokers such as rumqttd require it) and never before the reading is durable. A
//!   message the node could not make durable is submitted again, with backoff, until it
//!   is kept or refused; later messages wait behind it.
//!
//! Connections are numbered: when one is lost the number moves on, and what rumqttc
//! had queued is cleared under the same lock the acker holds to queue an
//! acknowledgement. A message of an earlier connection is therefore never acknowledged
//! on a later one (its packet id would name another message there); the broker
//! redelivers it on the resumed session, and the service answers the redelivery as a
//! duplicate, acknowledged again and stored once.
//!
//! Sessions persist (`clean_start = false`, a session expiry). When the broker answers
//! `session_present = false` it lost the session (a restart without persistence): the
//! bridge subscribes again (until the broker grants it), counts it, and puts back the
//! alerts rumqttc would drop (it clears its pending publishes on a new session).
//! QoS 0 messages are taken only when the queue has room (nothing bounds them).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use medmesh_service::{NodeEvent, NodeServices, Outcome, Telemetry};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions, Request};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::topics::Topics;

/// Where the broker is: `mqtt://[user:password@]host[:port]` or `mqtts://…` (TLS,
/// the system's roots or `ca_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or address.
    pub host: String,
    /// Port (1883, or 8883 with TLS, unless given).
    pub port: u16,
    /// TLS.
    pub tls: bool,
    /// User name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
}

impl BrokerAddress {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err("the MQTT broker must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]".into());
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((user.to_string(), password.to_string())), hostport)
            }
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || port.parse::<u16>().is_ok() => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("the MQTT broker's port `{port}` is not a port"))?;
                (host, port)
            }
            _ => (hostport, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err("the MQTT broker URL names no host".into());
        }
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
            credentials,
        })
    }
}

impl std::fmt::Display for BrokerAddress {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        match &self.credentials {
            Some((user, _)) => write!(f, "{scheme}://{user}@{}:{}", self.host, self.port),
            None => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

/// How the bridge connects and behaves.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// The broker.
    pub broker: BrokerAddress,
    /// PEM file of the CA that signed the broker's certificate (TLS only; default: the
    /// system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// The MQTT client id; a persistent session is kept under it.
    pub client_id: String,
    /// The topics.
    pub topics: Topics,
    /// How long the broker keeps the session while the node is away.
    pub session_expiry: Duration,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Messages received and not yet acknowledged, at most (the backpressure window).
    pub max_unacked: usize,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl BridgeSettings {
    /// Defaults for `broker`, `client_id` and `topics`.
    pub fn new(broker: BrokerAddress, client_id: String, topics: Topics) -> Self {
        Self {
            broker,
            ca_file: None,
            client_id,
            topics,
            session_expiry: Duration::from_secs(24 * 3600),
            keep_alive: Duration::from_secs(30),
            max_unacked: 4096,
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What the bridge counted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BridgeStats {
    /// Connected now.
    pub connected: bool,
    /// Connections made (the first one included).
    pub connections: u64,
    /// Connections that found the broker had lost the session.
    pub sessions_lost: u64,
    /// Messages received.
    pub received: u64,
    /// Acknowledgements sent.
    pub acknowledged: u64,
    /// Outcomes not acknowledged because the connection they came on was gone.
    pub stale: u64,
    /// Messages on topics the bridge does not take (acknowledged and dropped).
    pub ignored: u64,
    /// The subscription is in place.
    pub subscribed: bool,
    /// QoS 0 messages dropped because the queue was full (devices must use QoS 1).
    pub dropped_qos0: u64,
    /// Error and ack notices not sent because the request queue was full.
    pub dropped_notices: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    connections: AtomicU64,
    sessions_lost: AtomicU64,
    received: AtomicU64,
    acknowledged: AtomicU64,
    stale: AtomicU64,
    ignored: AtomicU64,
    subscribed: AtomicBool,
    dropped_qos0: AtomicU64,
    dropped_notices: AtomicU64,
}

/// The running bridge.
#[derive(Clone)]
pub struct BridgeHandle {
    counters: Arc<Counters>,
    broker: String,
}

impl BridgeHandle {
    /// The counters.
    pub fn stats(&self) -> BridgeStats {
        let c = &self.counters;
        BridgeStats {
            connected: c.connected.load(Ordering::Acquire),
            connections: c.connections.load(Ordering::Acquire),
            sessions_lost: c.sessions_lost.load(Ordering::Acquire),
            received: c.received.load(Ordering::Acquire),
            acknowledged: c.acknowledged.load(Ordering::Acquire),
            stale: c.stale.load(Ordering::Acquire),
            ignored: c.ignored.load(Ordering::Acquire),
            subscribed: c.subscribed.load(Ordering::Acquire),
            dropped_qos0: c.dropped_qos0.load(Ordering::Acquire),
            dropped_notices: c.dropped_notices.load(Ordering::Acquire),
        }
    }

    /// The broker, as shown (no password).
    pub fn broker(&self) -> &str {
        &self.broker
    }
}

/// A message waiting for its outcome.
struct Unacked {
    publish: Publish,
    /// The connection it came on (see [`Link`]).
    connection: u64,
    /// The device its topic names and its outcome; `None` for another topic.
    submitted: Option<(String, oneshot::Receiver<Outcome>)>,
}

/// What the reader and the acker share about the connection.
#[derive(Default)]
struct Link {
    /// Bumped when a connection is lost: messages of an earlier connection are never
    /// acknowledged on a later one (their packet ids mean nothing there).
    connection: AtomicU64,
    /// Held while an acknowledgement is queued, and while the reader bumps the
    /// connection and clears what rumqttc queued: an acknowledgement is either queued
    /// before and cleared, or refused as stale after.
    gate: std::sync::Mutex<()>,
}

impl Link {
    fn gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Requests (acknowledgements, alerts, notices) rumqttc may hold before its event loop
/// sends them: more than can be outstanding, so queuing one never has to wait for long.
fn request_capacity(settings: &BridgeSettings) -> usize {
    2 * settings.max_unacked + 1024
}

/// Connects to the broker and runs the bridge until the process ends.
pub fn spawn_bridge(
    services: Arc<NodeServices>,
    settings: BridgeSettings,
) -> anyhow::Result<BridgeHandle> {
    let telemetry = services.telemetry()?.clone();
    let options = options(&settings)?;
    let (client, eventloop) = AsyncClient::new(options, request_capacity(&settings));
    let counters = Arc::new(Counters::default());
    let link = Arc::new(Link::default());
    // Unbounded, yet bounded by the broker: it sends at most `receive_maximum` QoS 1
    // messages the node has not acknowledged.
    let (unacked_tx, unacked_rx) = mpsc::unbounded_channel();
    tokio::spawn(read(
        eventloop,
        client.clone(),
        telemetry.clone(),
        settings.clone(),
        counters.clone(),
        link.clone(),
        unacked_tx,
    ));
    tokio::spawn(acknowledge(
        client.clone(),
        telemetry,
        settings.topics.clone(),
        counters.clone(),
        link,
        unacked_rx,
    ));
    tokio::spawn(publish_alerts(
        services.telemetry()?.clone(),
        client,
        settings.topics.clone(),
    ));
    Ok(BridgeHandle {
        counters,
        broker: settings.broker.to_string(),
    })
}

fn options(settings: &BridgeSettings) -> anyhow::Result<MqttOptions> {
    let broker = &settings.broker;
    let mut options = MqttOptions::new(&settings.client_id, &broker.host, broker.port);
    options
        .set_manual_acks(true)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(
            u32::try_from(settings.session_expiry.as_secs()).unwrap_or(u32::MAX),
        ))
        .set_keep_alive(settings.keep_alive.max(Duration::from_secs(5)))
        // The broker sends at most this many QoS 1 messages not yet acknowledged: the
        // backpressure window.
        .set_receive_maximum(Some(
            u16::try_from(settings.max_unacked.clamp(1, 65_535)).unwrap_or(u16::MAX),
        ))
        // Larger than any device message, so an oversized one reaches the service and
        // is refused there (`too-large`) instead of breaking the connection.
        .set_max_packet_size(Some(MAX_PACKET))
        .set_outgoing_inflight_upper_limit(100)
        .set_connection_timeout(10);
    if let Some((user, password)) = &broker.credentials {
        options.set_credentials(user, password);
    }
    if broker.tls {
        let transport = match &settings.ca_file {
            Some(path) => {
                let ca = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("reading the broker's CA file {}: {e}", path.display())
                })?;
                rumqttc::Transport::tls(ca, None, None)
            }
            None => rumqttc::Transport::tls_with_default_config(),
        };
        options.set_transport(transport);
    }
    Ok(options)
}

/// Largest packet the node reads (a device message is at most 256 KiB).
pub const MAX_PACKET: u32 = 1024 * 1024;

/// The reader: polls the connection (never blocking on the acker, so acknowledgements
/// always drain), submits messages, reconnects with backoff.
async fn read(
    mut eventloop: EventLoop,
    client: AsyncClient,
    telemetry: Arc<Telemetry>,
    settings: BridgeSettings,
    counters: Arc<Counters>,
    link: Arc<Link>,
    unacked: mpsc::UnboundedSender<Unacked>,
) {
    let min_backoff = Duration::from_millis(100);
    let mut backoff = min_backoff;
    let broker = settings.broker.to_string();
    let filter = settings.topics.observations_filter();
    // Our own publishes (alerts) rumqttc held when the connection dropped.
    let mut held: VecDeque<Request> = VecDeque::new();
    let mut subscribe = false;
    loop {
        if subscribe {
            match client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                Ok(()) => subscribe = false,
                // The request queue is full: again after the next event.
                Err(e) => tracing::debug!(error = %e, "subscription queued later"),
            }
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = min_backoff;
                let n = counters.connections.fetch_add(1, Ordering::AcqRel) + 1;
                counters.connected.store(true, Ordering::Release);
                telemetry.note_link(&broker, true);
                if ack.session_present {
                    tracing::info!(connection = n, %broker, "MQTT session resumed");
                } else {
                    if n > 1 {
                        counters.sessions_lost.fetch_add(1, Ordering::AcqRel);
                        telemetry.count_session_loss();
                        tracing::warn!(
                            %broker,
                            "the MQTT broker lost the node's session: messages it held for the node are gone unless devices resend them"
                        );
                    }
                    // rumqttc cleared its pending publishes for the new session: put
                    // back the alerts, drop acknowledgements (of the old connection).
                    eventloop.pending = held
                        .drain(..)
                        .filter(|r| matches!(r, Request::Publish(_)))
                        .collect();
                    subscribe = true;
                }
                held.clear();
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused: Vec<_> = ack
                    .return_codes
                    .iter()
                    .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    .collect();
                if refused.is_empty() {
                    counters.subscribed.store(true, Ordering::Release);
                    tracing::info!(%filter, %broker, "MQTT subscribed");
                } else {
                    counters.subscribed.store(false, Ordering::Release);
                    tracing::error!(%filter, %broker, reason = ?refused, "the broker refused the subscription (check its ACLs); retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    subscribe = true;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                counters.received.fetch_add(1, Ordering::AcqRel);
                let connection = link.connection.load(Ordering::Acquire);
                let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                let device = settings.topics.device_of(&topic).map(str::to_string);
                if publish.qos == QoS::AtMostOnce {
                    // Nothing to acknowledge, and no window bounds QoS 0: taken when
                    // the queue has room, else dropped (devices must use QoS 1).
                    if let Some(device) = device {
                        if telemetry
                            .try_submit(&device, publish.payload.clone())
                            .is_err()
                        {
                            counters.dropped_qos0.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    continue;
                }
                let submitted = match device {
                    Some(device) => {
                        match telemetry.submit(&device, publish.payload.clone()).await {
                            Ok(outcome) => Some((device, outcome)),
                            Err(e) => {
                                tracing::error!(error = %e, "telemetry stopped; the bridge stops");
                                return;
                            }
                        }
                    }
                    None => None,
                };
                let item = Unacked {
                    publish,
                    connection,
                    submitted,
                };
                if unacked.send(item).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                counters.connected.store(false, Ordering::Release);
                counters.subscribed.store(false, Ordering::Release);
                telemetry.note_link(&broker, false);
                {
                    let _gate = link.gate();
                    link.connection.fetch_add(1, Ordering::AcqRel);
                    // Acknowledgements queued since rumqttc cleared: dropped, as its own
                    // clearing drops them.
                    eventloop.clean();
                }
                held = eventloop.pending.clone();
                tracing::warn!(error = %e, %broker, retry_in = ?backoff, "MQTT connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(settings.max_backoff);
            }
        }
    }
}

/// The acker: outcomes in arrival order, PUBACK for what the node keeps or refuses.
async fn acknowledge(
    client: AsyncClient,
    telemetry: Arc<Telemetry>,
    topics: Topics,
    counters: Arc<Counters>,
    link: Arc<Link>,
    mut unacked: mpsc::UnboundedReceiver<Unacked>,
) {
    while let Some(item) = unacked.recv().await {
        let Some((device, pending)) = item.submitted else {
            // Not a device topic (the subscription names only those): dropped.
            counters.ignored.fetch_add(1, Ordering::AcqRel);
            ack(&client, &counters, &link, &item.publish, item.connection).await;
            continue;
        };
        // Until the node keeps it or refuses it: a message it could not make durable
        // is submitted again (with backoff), never skipped, so acknowledgements stay in
        // arrival order and none is sent before its message is durable.
        let mut outcome = pending.await.ok();
        let mut delay = Duration::from_millis(100);
        let outcome = loop {
            match outcome {
                Some(Outcome::Failed(reason)) => {
                    tracing::warn!(%device, %reason, retry_in = ?delay, "device message not durable yet");
                }
                None => {
                    tracing::warn!(%device, retry_in = ?delay, "device message dropped by the pipeline")
                }
                Some(done) => break done,
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            outcome = match telemetry
                .submit(&device, item.publish.payload.clone())
                .await
            {
                Ok(pending) => pending.await.ok(),
                Err(_) => return,
            };
        };
        ack(&client, &counters, &link, &item.publish, item.connection).await;
        // Best effort, never waiting on the queue (QoS 0 notices).
        let notice = match outcome {
            Outcome::Stored {
                counter,
                wants_ack: true,
                ..
            }
            | Outcome::Duplicate {
                counter,
                wants_ack: true,
            } => Some((
                topics.ack(&device),
                serde_json::json!({"counter": counter, "status": "stored"}).to_string(),
            )),
            Outcome::Rejected(rejection) => {
                tracing::debug!(%device, code = rejection.code, "device message refused");
                Some((
                    topics.errors(&device),
                    serde_json::to_string(&rejection).expect("a rejection serializes"),
                ))
            }
            _ => None,
        };
        if let Some((topic, body)) = notice {
            if client
                .try_publish(topic, QoS::AtMostOnce, false, body)
                .is_err()
            {
                counters.dropped_notices.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// Acknowledges `publish` if its connection is still the current one.
async fn ack(
    client: &AsyncClient,
    counters: &Counters,
    link: &Link,
    publish: &Publish,
    connection: u64,
) {
    loop {
        {
            let _gate = link.gate();
            if link.connection.load(Ordering::Acquire) != connection {
                counters.stale.fetch_add(1, Ordering::AcqRel);
                return;
            }
            if client.try_ack(publish).is_ok() {
                counters.acknowledged.fetch_add(1, Ordering::AcqRel);
                return;
            }
        }
        // The request queue is full: the reader drains it.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Publishes every alert on its device's alert topic (QoS 1).
async fn publish_alerts(telemetry: Arc<Telemetry>, client: AsyncClient, topics: Topics) {
    use tokio::sync::broadcast::error::RecvError;
    // The telemetry's own alert feed, far deeper than the event bus: a burst of alerts
    // (a ward deteriorating at once) is not skipped while the broker takes them.
    let mut events = telemetry.alert_feed();
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "alerts missed by the MQTT bridge");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if let NodeEvent::Alert { device, .. } = &event {
            let topic = topics.alerts(device);
            let body = serde_json::to_string(&event).expect("an event serializes");
            if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, body).await {
                tracing::warn!(error = %e, "an alert could not be queued for MQTT");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_parse_and_never_show_the_password() {
        let a = BrokerAddress::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("127.0.0.1", 1884, false));
        let b = BrokerAddress::parse("mqtts://node:s3cret@broker.example:8884/").unwrap();
        assert_eq!(b.credentials, Some(("node".into(), "s3cret".into())));
        assert!(b.tls);
        assert_eq!(b.to_string(), "mqtts://node@broker.example:8884");
        assert_eq!(BrokerAddress::parse("mqtt://host").unwrap().port, 1883);
        assert_eq!(BrokerAddress::parse("mqtts://host").unwrap().port, 8883);
        assert!(BrokerAddress::parse("http://host").is_err());
        assert!(BrokerAddress::parse("mqtt://host:notaport").is_err());
        assert!(BrokerAddress::parse("mqtt://").is_err());
    }
}
