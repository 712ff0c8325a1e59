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

/// Whether an MQTT broker at `addr` accepts a CONNECT of protocol `level` (4: 3.1.1, 5:
/// MQTT 5): it sends one, waits for the CONNACK, and disconnects cleanly.
fn answers_connect(addr: SocketAddr, level: u8) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let id = b"medmesh-probe";
    let mut variable = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 10];
    if level == 5 {
        variable.push(0); // no properties
    }
    let remaining = variable.len() + 2 + id.len();
    let mut packet = vec![0x10, remaining as u8];
    packet.extend_from_slice(&variable);
    packet.extend_from_slice(&[0, id.len() as u8]);
    packet.extend_from_slice(id);
    let mut connack = [0u8; 2];
    let answered = stream.write_all(&packet).is_ok()
        && stream.read_exact(&mut connack).is_ok()
        && connack[0] == 0x20;
    // DISCONNECT (MQTT 5's carries a reason: 0, normal).
    let disconnect: &[u8] = if level == 5 {
        &[0xe0, 1, 0]
    } else {
        &[0xe0, 0]
    };
    let _ = stream.write_all(disconnect);
    // Wait for the broker to close first, so it sees a clean end, not a reset.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut rest = [0u8; 64];
    while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
    answered
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
        // rumqttd binds in the background: wait until each listener answers a real
        // CONNECT (a bare TCP probe would make it log an error per attempt).
        let deadline = Instant::now() + Duration::from_secs(10);
        for (listen, level) in [(addr, 4), (v5, 5)] {
            while !answers_connect(listen, level) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the embedded MQTT broker did not start listening on {listen}"
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
