//! The MQTT bridge: medical devices publish signed readings to a broker; the node, an
//! MQTT 5 client of that broker, hands each message to the telemetry service
//! (`medmesh_service::Telemetry`) and acknowledges it only once the service says it is
//! durable. A transport only: it parses topics, calls one service method per message
//! and maps the outcome onto MQTT (PUBACK, the error and ack topics, alerts).
//!
//! - [`topics`]: the topic scheme, `medmesh/{institution}/devices/{device}/obs` and the
//!   node's `alerts`, `errors` and `ack` beside it.
//! - [`bridge`]: the client. QoS 1 with manual acknowledgements sent in arrival order,
//!   a persistent session (`clean_start = false`, a session expiry) checked at every
//!   reconnect, reconnection with backoff, and backpressure: when storage is slower than
//!   the stream the bridge stops reading from the broker rather than drop anything.
//! - [`broker`]: the embedded broker (`rumqttd`) the default `medmesh node` runs on
//!   127.0.0.1 when no broker is configured.

pub mod bridge;
pub mod broker;
pub mod topics;

pub use bridge::{spawn_bridge, BridgeHandle, BridgeSettings, BridgeStats, BrokerAddress};
pub use broker::EmbeddedBroker;
pub use topics::Topics;
