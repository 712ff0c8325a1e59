//! The node as an MQTT 5 client of its broker.
//!
//! Two tasks share one connection:
//! - the **reader** drives rumqttc's event loop: it subscribes (QoS 1) to every device's
//!   observations, hands each message to `Telemetry::submit`, and queues the message
//!   with its pending outcome for the acker. The queue is bounded: when it is full the
//!   reader stops polling, so the broker stops sending (its inflight window fills) —
//!   backpressure instead of loss.
//! - the **acker** takes the queue in arrival order, waits for each outcome and only
//!   then acknowledges (PUBACK), so acknowledgements leave in the order messages came
//!   (brokers such as rumqttd require it) and never before the reading is durable. A
//!   message whose outcome is `Failed` is not acknowledged: the broker delivers it
//!   again, and the counter check stores it once.
//!
//! Connections are numbered. After a reconnect, outcomes of messages received on an
//! earlier connection are not acknowledged (their packet ids mean nothing to the new
//! connection); the broker redelivers those messages on the resumed session, and the
//! service answers the redelivery as a duplicate, acknowledged again and stored once.
//!
//! Sessions persist (`clean_start = false`, a session expiry). When the broker answers
//! `session_present = false` it lost the session (a restart without persistence): the
//! bridge subscribes again, counts it, and puts back the alerts rumqttc would drop
//! (it clears its pending publishes on a new session).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use medmesh_service::{NodeEvent, NodeServices, Outcome, Telemetry};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
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
            return Err(format!(
                "broker `{url}` must start with mqtt:// or mqtts://"
            ));
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
                    .map_err(|_| format!("broker `{url}`: `{port}` is not a port"))?;
                (host, port)
            }
            _ => (hostport, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("broker `{url}` names no host"));
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
    connection: u64,
    device: Option<String>,
    outcome: Option<oneshot::Receiver<Outcome>>,
}

/// Connects to the broker and runs the bridge until the process ends.
pub fn spawn_bridge(
    services: Arc<NodeServices>,
    settings: BridgeSettings,
) -> anyhow::Result<BridgeHandle> {
    let telemetry = services.telemetry()?.clone();
    let options = options(&settings)?;
    let (client, eventloop) = AsyncClient::new(options, 1024);
    let counters = Arc::new(Counters::default());
    let connection = Arc::new(AtomicU64::new(0));
    let (unacked_tx, unacked_rx) = mpsc::channel(settings.max_unacked.max(1));
    tokio::spawn(read(
        eventloop,
        client.clone(),
        telemetry.clone(),
        settings.clone(),
        counters.clone(),
        connection.clone(),
        unacked_tx,
    ));
    tokio::spawn(acknowledge(
        client.clone(),
        telemetry,
        settings.topics.clone(),
        counters.clone(),
        connection,
        unacked_rx,
    ));
    tokio::spawn(publish_alerts(services, client, settings.topics.clone()));
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
        // A device message is at most 256 KiB; rumqttc's default limit is 10 KiB.
        .set_max_packet_size(Some(
            (medmesh_core::device_message::MAX_MESSAGE_BYTES + 16 * 1024) as u32,
        ))
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

/// The reader: polls the connection, submits messages, reconnects with backoff.
async fn read(
    mut eventloop: EventLoop,
    client: AsyncClient,
    telemetry: Arc<Telemetry>,
    settings: BridgeSettings,
    counters: Arc<Counters>,
    connection: Arc<AtomicU64>,
    unacked: mpsc::Sender<Unacked>,
) {
    let min_backoff = Duration::from_millis(100);
    let mut backoff = min_backoff;
    // Our own publishes (alerts) rumqttc held when the connection dropped.
    let mut held: VecDeque<Request> = VecDeque::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = min_backoff;
                let n = connection.fetch_add(1, Ordering::AcqRel) + 1;
                counters.connections.fetch_add(1, Ordering::AcqRel);
                counters.connected.store(true, Ordering::Release);
                telemetry.note_link(&settings.broker.to_string(), true);
                if ack.session_present {
                    tracing::info!(connection = n, broker = %settings.broker, "MQTT session resumed");
                } else {
                    if n > 1 {
                        counters.sessions_lost.fetch_add(1, Ordering::AcqRel);
                        telemetry.count_session_loss();
                        tracing::warn!(
                            broker = %settings.broker,
                            "the MQTT broker lost the node's session: messages it held for the node are gone unless devices resend them"
                        );
                    }
                    // rumqttc cleared its pending publishes for the new session: put
                    // back the alerts, drop acks (they belong to the old connection).
                    eventloop.pending = held
                        .drain(..)
                        .filter(|r| matches!(r, Request::Publish(_)))
                        .collect();
                    let filter = settings.topics.observations_filter();
                    if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, %filter, "could not subscribe");
                    } else {
                        tracing::info!(%filter, broker = %settings.broker, "MQTT subscribed");
                    }
                }
                held.clear();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                counters.received.fetch_add(1, Ordering::AcqRel);
                let current = connection.load(Ordering::Acquire);
                let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                let device = settings.topics.device_of(&topic).map(str::to_string);
                let outcome = match &device {
                    Some(device) => match telemetry.submit(device, publish.payload.clone()).await {
                        Ok(outcome) => Some(outcome),
                        Err(e) => {
                            tracing::error!(error = %e, "telemetry stopped; the bridge stops");
                            return;
                        }
                    },
                    None => None,
                };
                let item = Unacked {
                    publish,
                    connection: current,
                    device,
                    outcome,
                };
                // Waits when the acker is behind: no more polling, no more messages.
                if unacked.send(item).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                counters.connected.store(false, Ordering::Release);
                telemetry.note_link(&settings.broker.to_string(), false);
                held = eventloop.pending.clone();
                tracing::warn!(error = %e, broker = %settings.broker, retry_in = ?backoff, "MQTT connection lost");
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
    connection: Arc<AtomicU64>,
    mut unacked: mpsc::Receiver<Unacked>,
) {
    while let Some(item) = unacked.recv().await {
        let current = item.connection == connection.load(Ordering::Acquire);
        let ack = |publish: Publish| {
            let (client, counters) = (&client, &counters);
            async move {
                if !current {
                    counters.stale.fetch_add(1, Ordering::AcqRel);
                } else if client.ack(&publish).await.is_ok() {
                    counters.acknowledged.fetch_add(1, Ordering::AcqRel);
                }
            }
        };
        let (Some(pending), Some(device)) = (item.outcome, item.device.as_deref()) else {
            // Not a device topic (the subscription names only those): dropped.
            counters.ignored.fetch_add(1, Ordering::AcqRel);
            ack(item.publish).await;
            continue;
        };
        // A dropped answer means the pipeline lost it: not durable, not acknowledged.
        let Ok(outcome) = pending.await else { continue };
        if !matches!(outcome, Outcome::Failed(_)) {
            ack(item.publish).await;
        }
        match outcome {
            Outcome::Stored {
                counter,
                wants_ack: true,
                ..
            }
            | Outcome::Duplicate {
                counter,
                wants_ack: true,
            } => {
                let body = serde_json::json!({"counter": counter, "status": "stored"});
                let _ = client
                    .publish(topics.ack(device), QoS::AtMostOnce, false, body.to_string())
                    .await;
            }
            Outcome::Rejected(rejection) => {
                tracing::debug!(device, code = rejection.code, "device message refused");
                let body = serde_json::to_string(&rejection).expect("a rejection serializes");
                let _ = client
                    .publish(topics.errors(device), QoS::AtMostOnce, false, body)
                    .await;
            }
            Outcome::Failed(reason) => {
                tracing::warn!(device, %reason, "device message not acknowledged; the broker will resend it");
            }
            _ => {}
        }
    }
    drop(telemetry);
}

/// Publishes every alert of the event bus on its device's alert topic (QoS 1).
async fn publish_alerts(services: Arc<NodeServices>, client: AsyncClient, topics: Topics) {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = services.events().subscribe();
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
