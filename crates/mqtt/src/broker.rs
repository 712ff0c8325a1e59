//! The embedded broker: `rumqttd` on a loopback port, so `medmesh node` on its defaults
//! takes device readings with nothing else installed. It keeps sessions in memory only
//! (a node restart loses what it had not delivered); production sites point the node at
//! their own broker (Mosquitto, EMQX, HiveMQ) with `--mqtt-broker`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Largest packet the embedded broker takes: a device message (256 KiB) and its topic.
/// Below what the node reads (`bridge::MAX_PACKET`), so whatever the broker passes on,
/// the node can read and, if too large, refuse itself.
const MAX_PAYLOAD: usize = medmesh_core::device_message::MAX_MESSAGE_BYTES + 4096;

/// A running embedded broker. It stops with the process (rumqttd has no shutdown).
#[derive(Debug)]
pub struct EmbeddedBroker {
    v4: SocketAddr,
    v5: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts a broker speaking MQTT 5 and 3.1.1 on `addr` (one listener each: 3.1.1 on
    /// `addr`, MQTT 5 on the port after it) and waits until it accepts connections.
    pub fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "the embedded MQTT broker listens on loopback only (it has no TLS and no \
             authentication); point the node at a real broker with --mqtt-broker instead"
        );
        let v5_port = addr
            .port()
            .checked_add(1)
            .filter(|_| addr.port() != 0)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the embedded MQTT broker needs two ports, {addr} and the next one: name a port from 1 to 65534"
                )
            })?;
        let v5 = SocketAddr::new(addr.ip(), v5_port);
        // rumqttd only logs a failed bind, and a check that connects would be fooled by
        // whoever holds the port: make sure both are free first.
        for listen in [addr, v5] {
            std::net::TcpListener::bind(listen).map_err(|e| {
                anyhow::anyhow!("the embedded MQTT broker cannot listen on {listen}: {e}")
            })?;
        }
        let connections = ConnectionSettings {
            connection_timeout_ms: 5_000,
            max_payload_size: MAX_PAYLOAD,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = |name: &str, listen| ServerSettings {
            name: name.into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: connections.clone(),
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 10_000,
                max_outgoing_packet_count: 200,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(HashMap::from([("v4".to_string(), server("v4", addr))])),
            v5: Some(HashMap::from([("v5".to_string(), server("v5", v5))])),
            ..Default::default()
        };
        let mut broker = Broker::new(config);
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "the embedded MQTT broker stopped");
                }
            })?;
        // rumqttd reports a failed bind only in its log: wait for the listeners.
        let deadline = Instant::now() + Duration::from_secs(10);
        for listen in [addr, v5] {
            while TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the embedded MQTT broker did not start listening on {listen} (is the port in use?)"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(Self { v4: addr, v5 })
    }

    /// Where it speaks MQTT 5 (what the node connects to).
    pub fn v5_addr(&self) -> SocketAddr {
        self.v5
    }

    /// Where it speaks MQTT 3.1.1 (for older devices).
    pub fn v4_addr(&self) -> SocketAddr {
        self.v4
    }
}
