//! Starting the MQTT side of `medmesh node`: the telemetry service, the embedded broker
//! when no broker is configured, and the bridge. The logic is in `medmesh-service`
//! (telemetry) and `medmesh-mqtt` (the transport); this only maps settings.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use medmesh_mqtt::{BridgeHandle, BridgeSettings, BrokerAddress, EmbeddedBroker, Topics};
use medmesh_service::{NodeServices, TelemetrySettings};

use crate::config::Config;

/// The MQTT options of `medmesh node`.
#[derive(Debug, Args)]
pub struct MqttArgs {
    /// The MQTT broker devices publish to (`mqtt://host:port`, `mqtts://host:port`),
    /// instead of `mqtt.broker` of medmesh.toml or the embedded broker.
    #[arg(long, env = "MEDMESH_MQTT_BROKER")]
    mqtt_broker: Option<String>,
    /// Where the embedded broker listens for MQTT 3.1.1 (MQTT 5 on the next port),
    /// instead of `mqtt.embedded_listen`.
    #[arg(long, env = "MEDMESH_MQTT_LISTEN")]
    mqtt_listen: Option<SocketAddr>,
    /// Run without the MQTT bridge (no device telemetry).
    #[arg(long, env = "MEDMESH_NO_MQTT")]
    no_mqtt: bool,
}

/// What the start printed about.
pub struct Started {
    /// The bridge.
    pub bridge: BridgeHandle,
    /// The embedded broker, if the node runs one.
    pub embedded: Option<EmbeddedBroker>,
    /// The topic devices publish to.
    pub topic: String,
}

impl MqttArgs {
    /// Whether the bridge runs.
    pub fn enabled(&self, config: &Config) -> bool {
        !self.no_mqtt && config.mqtt.enabled
    }

    /// Checks what can be checked before the node starts anything.
    pub fn check(&self, config: &Config) -> Result<()> {
        if !self.enabled(config) {
            return Ok(());
        }
        match self.broker(config) {
            Some(url) => {
                BrokerAddress::parse(&url).map_err(anyhow::Error::msg)?;
            }
            None => {
                let listen = self.mqtt_listen.unwrap_or(config.mqtt.embedded_listen);
                anyhow::ensure!(
                    listen.ip().is_loopback(),
                    "the embedded MQTT broker has no TLS and no authentication: it listens \
                     on loopback only ({listen} is not); configure a real broker with --mqtt-broker"
                );
            }
        }
        topics(config)?;
        Ok(())
    }

    fn broker(&self, config: &Config) -> Option<String> {
        self.mqtt_broker
            .clone()
            .or_else(|| config.mqtt.broker.clone())
    }

    /// Starts telemetry, the embedded broker if needed, and the bridge.
    pub async fn start(
        &self,
        services: &Arc<NodeServices>,
        config: &Config,
        data_dir: &Path,
        peer_id: &str,
    ) -> Result<Started> {
        let mqtt = &config.mqtt;
        let rules = data_dir.join(&mqtt.rules_file);
        let settings = TelemetrySettings {
            window: Duration::from_secs(mqtt.batch_window_secs),
            rules_file: Some(rules),
            ..TelemetrySettings::default()
        };
        services
            .start_telemetry(settings)
            .await
            .context("starting device telemetry")?;
        let (embedded, mut broker) = match self.broker(config) {
            Some(url) => (
                None,
                BrokerAddress::parse(&url).map_err(anyhow::Error::msg)?,
            ),
            None => {
                let listen = self.mqtt_listen.unwrap_or(mqtt.embedded_listen);
                let embedded = EmbeddedBroker::start(listen).with_context(|| {
                    format!(
                        "starting the embedded MQTT broker on {listen} (another node on this \
                         host? pass --mqtt-listen ADDR, --mqtt-broker URL or --no-mqtt)"
                    )
                })?;
                let addr = embedded.v5_addr();
                let broker = BrokerAddress {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                    tls: false,
                    credentials: None,
                };
                (Some(embedded), broker)
            }
        };
        if let Some(user) = &mqtt.username {
            let password = match &mqtt.password_file {
                Some(file) => {
                    let path = data_dir.join(file);
                    medmesh_crypto::keystore::check_private(&path).context("mqtt.password_file")?;
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim()
                        .to_string()
                }
                None => String::new(),
            };
            broker.credentials = Some((user.clone(), password));
        }
        let topics = topics(config)?;
        let topic = topics.observations_filter();
        let client_id = mqtt.client_id.clone().unwrap_or_else(|| {
            let tail: String = peer_id.chars().rev().take(12).collect();
            format!("medmesh-{}", tail.chars().rev().collect::<String>())
        });
        let mut bridge = BridgeSettings::new(broker, client_id, topics);
        bridge.ca_file = mqtt.ca_file.as_ref().map(|f| data_dir.join(f));
        let bridge = medmesh_mqtt::spawn_bridge(services.clone(), bridge)?;
        Ok(Started {
            bridge,
            embedded,
            topic,
        })
    }
}

fn topics(config: &Config) -> Result<Topics> {
    let slug = config
        .mqtt
        .institution
        .clone()
        .unwrap_or_else(|| Topics::slug(&config.institution));
    Topics::new(&slug).map_err(|e| anyhow::anyhow!("medmesh.toml: mqtt.institution: {e}"))
}
