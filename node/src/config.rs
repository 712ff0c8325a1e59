//! `medmesh.toml`: the node's configuration file, written with comments by `init`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use medmesh_service::WebhookEndpoint;
use medmesh_store::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use serde::Deserialize;

/// File name of the configuration inside the data dir.
pub const FILE_NAME: &str = "medmesh.toml";

/// The parsed configuration. Unknown keys are errors, so typos do not pass silently.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The institution this node acts for.
    pub institution: String,
    /// Storage settings.
    #[serde(default)]
    pub store: StoreConfig,
    /// HTTP API settings.
    #[serde(default)]
    pub api: ApiSection,
    /// Peer-to-peer settings.
    #[serde(default)]
    pub net: medmesh_net::NetConfig,
    /// Audit log settings.
    #[serde(default)]
    pub audit: AuditSection,
    /// `[[webhooks]]`: endpoints that receive the node's events as signed POSTs.
    #[serde(default)]
    pub webhooks: Vec<WebhookSection>,
    /// `[mqtt]`: the bridge to medical devices.
    #[serde(default)]
    pub mqtt: MqttSection,
}

/// `[mqtt]` settings: where device readings come from (docs/devices.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Take device readings at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The broker (`mqtt://host:port` or `mqtts://host:port`); absent: the embedded one.
    #[serde(default)]
    pub broker: Option<String>,
    /// User name at the broker.
    #[serde(default)]
    pub username: Option<String>,
    /// A private file (0600) holding the password at the broker; relative to the data dir.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA of an `mqtts://` broker (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Where the embedded broker listens for MQTT 3.1.1; MQTT 5 on the next port.
    #[serde(default = "default_mqtt_listen")]
    pub embedded_listen: SocketAddr,
    /// The institution's topic level, `medmesh/{institution}/devices/…` (default: a slug
    /// of the institution's name).
    #[serde(default)]
    pub institution: Option<String>,
    /// The client id the node's session is kept under (default: `medmesh-` and the end
    /// of its PeerId).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Seconds of readings batched into one record per patient.
    #[serde(default = "default_batch_window")]
    pub batch_window_secs: u64,
    /// The alert rules file (relative to the data dir); re-read when it changes.
    #[serde(default = "default_rules_file")]
    pub rules_file: PathBuf,
}

impl Default for MqttSection {
    fn default() -> Self {
        Self {
            enabled: true,
            broker: None,
            username: None,
            password_file: None,
            ca_file: None,
            embedded_listen: default_mqtt_listen(),
            institution: None,
            client_id: None,
            batch_window_secs: default_batch_window(),
            rules_file: default_rules_file(),
        }
    }
}

fn yes() -> bool {
    true
}

/// The embedded broker's default address (MQTT 3.1.1; MQTT 5 on the next port).
pub fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}

fn default_batch_window() -> u64 {
    60
}

/// The file `medmesh init` writes the default alert rules to.
pub const RULES_FILE: &str = "alert-rules.toml";

fn default_rules_file() -> PathBuf {
    PathBuf::from(RULES_FILE)
}

/// A `[[webhooks]]` entry: an endpoint that receives the node's events as Standard
/// Webhooks (docs/notifications.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// What the outbox and the logs call it (letters, digits, `-`, `_`), unique.
    pub name: String,
    /// Where events are POSTed (`http` or `https`).
    pub url: String,
    /// A file (0600, like every key file) holding the `whsec_…` signing secret; a
    /// relative path is inside the data dir.
    pub secret_file: PathBuf,
    /// The kinds of event it receives; absent: every kind. `break_glass_opened` is sent
    /// whatever this says.
    #[serde(default)]
    pub kinds: Option<BTreeSet<String>>,
}

/// `[audit]` settings: anchoring the audit log's head on chain (`AuditAnchor`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Longest time between two anchors while the log grows, in seconds; 0 turns
    /// anchoring off.
    #[serde(default = "default_anchor_interval")]
    pub anchor_interval_secs: u64,
    /// Anchor sooner once this many entries were added since the last anchor; 0 anchors
    /// by time only.
    #[serde(default = "default_anchor_every_entries")]
    pub anchor_every_entries: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            anchor_interval_secs: default_anchor_interval(),
            anchor_every_entries: default_anchor_every_entries(),
        }
    }
}

/// The shortest `anchor_interval_secs` other than 0: every anchor is a transaction.
pub const MIN_ANCHOR_INTERVAL_SECS: u64 = 60;

fn default_anchor_interval() -> u64 {
    medmesh_service::AnchorSettings::DEFAULT_INTERVAL.as_secs()
}

fn default_anchor_every_entries() -> u64 {
    medmesh_service::AnchorSettings::DEFAULT_EVERY_ENTRIES
}

impl AuditSection {
    /// These settings as the service takes them.
    pub fn anchor_settings(&self) -> medmesh_service::AnchorSettings {
        medmesh_service::AnchorSettings {
            interval: std::time::Duration::from_secs(self.anchor_interval_secs),
            every_entries: self.anchor_every_entries,
        }
    }
}

/// `[api]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

/// The API's default address: loopback only.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8420))
}

/// `[store]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Plaintext bytes per encrypted chunk.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

fn default_chunk_size() -> u32 {
    DEFAULT_CHUNK_SIZE
}

impl Config {
    /// Reads and validates `DATA_DIR/medmesh.toml`.
    pub fn load(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; is {} a medmesh data dir? (create one with `medmesh init`)",
                path.display(),
                data_dir.display()
            )
        })?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&config.store.chunk_size) {
            bail!(
                "{}: store.chunk_size = {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                path.display(),
                config.store.chunk_size
            );
        }
        let interval = config.audit.anchor_interval_secs;
        if interval != 0 && interval < MIN_ANCHOR_INTERVAL_SECS {
            bail!(
                "{}: audit.anchor_interval_secs = {interval} is too short: every anchor is a \
                 transaction; use at least {MIN_ANCHOR_INTERVAL_SECS}, or 0 to turn anchoring off",
                path.display()
            );
        }
        let window = config.mqtt.batch_window_secs;
        if !(1..=3600).contains(&window) {
            bail!(
                "{}: mqtt.batch_window_secs = {window} must be 1 to 3600",
                path.display()
            );
        }
        let mut names = BTreeSet::new();
        for hook in &config.webhooks {
            medmesh_service::webhooks::check_webhook_settings(
                &hook.name,
                &hook.url,
                hook.kinds.as_ref(),
            )
            .map_err(|e| anyhow!("{}: [[webhooks]] {e}", path.display()))?;
            if !names.insert(hook.name.as_str()) {
                bail!(
                    "{}: two [[webhooks]] entries are named `{}`",
                    path.display(),
                    hook.name
                );
            }
        }
        Ok(config)
    }

    /// The `[[webhooks]]` endpoints with their secrets, read from their files (relative
    /// paths inside `data_dir`). A secret file others may read is refused, as key files
    /// are; so is one that does not hold a `whsec_` secret.
    pub fn webhook_endpoints(&self, data_dir: &Path) -> Result<Vec<WebhookEndpoint>> {
        self.webhooks
            .iter()
            .map(|hook| {
                let path = data_dir.join(&hook.secret_file);
                medmesh_crypto::keystore::check_private(&path)
                    .with_context(|| format!("webhook `{}`: its secret_file", hook.name))?;
                let secret = std::fs::read_to_string(&path).with_context(|| {
                    format!("webhook `{}`: reading {}", hook.name, path.display())
                })?;
                let endpoint = WebhookEndpoint {
                    name: hook.name.clone(),
                    url: hook.url.clone(),
                    secret: secret.trim().to_string(),
                    kinds: hook.kinds.clone(),
                };
                endpoint
                    .validate()
                    .map_err(|e| anyhow!("{e} (in {})", path.display()))?;
                Ok(endpoint)
            })
            .collect()
    }

    /// The commented file `init` writes.
    pub fn template(institution: &str) -> String {
        let default_interval = default_anchor_interval();
        let default_every = default_anchor_every_entries();
        format!(
            r#"# medmesh node configuration, created by `medmesh init`. Edit freely;
# unknown keys are rejected so that typos are noticed.

# The institution this node acts for. It is the user id of the institution's
# post-quantum OpenPGP certificate (keys/institution.cert.asc).
institution = {institution:?}

[store]
# Plaintext bytes per encrypted chunk. With the 16-byte AES-GCM tag every block is
# then at most 1 MiB, the largest block IPFS peers accept by default.
# Allowed: {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}.
chunk_size = {DEFAULT_CHUNK_SIZE}

[api]
# Where `medmesh node` serves the HTTP API (OpenAPI document at /openapi.json, docs
# at /docs). Loopback only by default; a public address needs --allow-public and a TLS
# reverse proxy in front, since the node does not terminate TLS itself.
listen = "127.0.0.1:8420"

[net]
# Peer-to-peer addresses (TCP and QUIC). Loopback by default; other institutions reach
# this node on e.g. "/ip4/0.0.0.0/tcp/4001" and "/ip4/0.0.0.0/udp/4001/quic-v1".
listen = ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"]
# Peers dialed at start: "/ip4/ADDRESS/tcp/PORT/p2p/PEER_ID".
bootstrap = []
# Find peers on the local network by mDNS.
mdns = false
# Connection limits (docs/network.md "Limits and abuse" lists every limit).
max_connections = 256
max_connections_per_peer = 4
# Inbound connections from one IP address; raise it on a host running many nodes.
max_connections_per_ip = 8
# Connections kept for known peers (bootstrap, dialled, admitted by the policy).
reserved_connections = 32
# Fast-path requests served at once for one address (fresh peer ids share it).
max_fast_path_requests_per_ip = 16
# Bytes per second served to one peer (bitswap and fast path together).
serve_bytes_per_peer_per_sec = 536870912
# Replicas this node agrees to hold for others.
max_replica_bytes = 17179869184
min_free_disk_bytes = 1073741824
# Seconds between checks that replicated records still have their copies.
repair_interval_secs = 300
# How long (ms) a fetch waits for the DHT to name a provider of a record.
find_timeout_ms = 10000

[audit]
# The node anchors its audit log's head on chain (AuditAnchor) so that a log rewritten
# later is detected by `medmesh audit verify --chain`. It anchors at least every
# anchor_interval_secs while the log grows (0: never; otherwise at least
# {MIN_ANCHOR_INTERVAL_SECS}), and sooner once anchor_every_entries entries were added
# since the last anchor (0: by time only). Each anchor is a transaction of the node's
# account, and needs the node registered in NodeRegistry.
anchor_interval_secs = {default_interval}
anchor_every_entries = {default_every}

# Webhooks: the node POSTs its events (records stored, keys released or refused,
# break-glass accesses, peers…) to each endpoint below, signed as Standard Webhooks
# (headers webhook-id, webhook-timestamp, webhook-signature), from a durable outbox with
# retries: at least once, with the same webhook-id on every retry. See
# docs/notifications.md. One [[webhooks]] table per endpoint:
#   name        what logs and the outbox call it (letters, digits, - and _), unique
#   url         http or https (https unless the receiver is on this host)
#   secret_file a file only this user may read (chmod 600) holding the signing secret,
#               "whsec_" + base64 of 24 to 64 random bytes; relative to the data dir.
#               Make one with: printf 'whsec_%s\n' "$(head -c 32 /dev/urandom | base64)"
#   kinds       optional: the event kinds to send (default every kind);
#               break_glass_opened is always sent.
# [[webhooks]]
# name = "ops"
# url = "https://hooks.example.org/medmesh"
# secret_file = "webhooks/ops.secret"
# kinds = ["key_released", "key_denied", "break_glass_opened", "break_glass_closed"]

[mqtt]
# Medical devices publish signed readings to an MQTT broker; the node stores them
# encrypted and raises alerts (docs/devices.md). Without `broker` the node runs an
# embedded broker on embedded_listen (MQTT 3.1.1; MQTT 5 on the next port).
enabled = true
# broker = "mqtts://broker.example.org:8883"
# username = "medmesh-node"
# password_file = "mqtt.password"
# ca_file = "mqtt-ca.pem"
embedded_listen = "127.0.0.1:1883"
# institution = "st-mary"   # topics medmesh/{{institution}}/devices/{{device}}/obs
batch_window_secs = 60
# The alert rules (thresholds, durations, hysteresis, NEWS2); re-read when changed.
rules_file = "{RULES_FILE}"
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_back_and_typos_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), Config::template("St. \"Mary\"")).unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.institution, "St. \"Mary\"");
        assert_eq!(c.store.chunk_size, DEFAULT_CHUNK_SIZE);
        assert_eq!(c.audit.anchor_interval_secs, 3600);
        assert_eq!(c.audit.anchor_every_entries, 1000);

        std::fs::write(
            dir.path().join(FILE_NAME),
            "institution = \"x\"\n[store]\nchunk_sise = 5\n",
        )
        .unwrap();
        let err = format!("{:#}", Config::load(dir.path()).unwrap_err());
        assert!(err.contains("chunk_sise"), "{err}");

        std::fs::write(
            dir.path().join(FILE_NAME),
            "institution = \"x\"\n[store]\nchunk_size = 5\n",
        )
        .unwrap();
        let err = format!("{:#}", Config::load(dir.path()).unwrap_err());
        assert!(err.contains("outside"), "{err}");
    }

    #[test]
    fn audit_anchoring_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
            Config::load(dir.path())
        };
        // Absent: the defaults.
        let c = load("institution = \"x\"\n").unwrap();
        assert_eq!(
            c.audit.anchor_settings(),
            medmesh_service::AnchorSettings::default()
        );
        // 0 turns it off.
        let c = load("institution = \"x\"\n[audit]\nanchor_interval_secs = 0\n").unwrap();
        assert!(!c.audit.anchor_settings().enabled());
        let c = load("institution = \"x\"\n[audit]\nanchor_every_entries = 0\n").unwrap();
        assert_eq!(c.audit.anchor_every_entries, 0);
        assert!(c.audit.anchor_settings().enabled());

        let err = format!(
            "{:#}",
            load("institution = \"x\"\n[audit]\nanchor_interval_secs = 5\n").unwrap_err()
        );
        assert!(err.contains("anchor_interval_secs = 5"), "{err}");
        let err = format!(
            "{:#}",
            load("institution = \"x\"\n[audit]\nanchor_every = 5\n").unwrap_err()
        );
        assert!(err.contains("anchor_every"), "{err}");
    }

    #[test]
    fn webhooks_are_checked_and_their_secret_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
            Config::load(dir.path())
        };
        let hook = |name: &str, url: &str, kinds: &str| {
            format!(
                "[[webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret_file = \"ops.secret\"\n{kinds}"
            )
        };
        let base = Config::template("x");
        let c = load(&format!(
            "{base}\n{}\n{}",
            hook("ops", "https://hooks.example/m", ""),
            hook(
                "audit",
                "http://127.0.0.1:9000/",
                "kinds = [\"key_denied\"]\n"
            )
        ))
        .unwrap();
        assert_eq!(c.webhooks.len(), 2);
        assert_eq!(c.webhooks[0].kinds, None);
        assert_eq!(
            c.webhooks[1].kinds,
            Some(BTreeSet::from(["key_denied".to_string()]))
        );

        for (text, why) in [
            (hook("ops", "ftp://hooks.example/", ""), "http or https"),
            (hook("ops", "https://h/", "kinds = [\"nope\"]\n"), "`nope`"),
            (hook("ops", "https://h/", "kinds = []\n"), "empty"),
            (
                format!(
                    "{}\n{}",
                    hook("ops", "https://h/", ""),
                    hook("ops", "https://i/", "")
                ),
                "two [[webhooks]]",
            ),
            (
                format!("{}secret = \"whsec_x\"\n", hook("ops", "https://h/", "")),
                "secret",
            ),
        ] {
            let err = format!(
                "{:#}",
                load(&format!("institution = \"x\"\n{text}")).unwrap_err()
            );
            assert!(err.contains(why), "{text}: {err}");
        }

        // The secret file: private, and a whsec_ secret.
        let c = load(&format!(
            "institution = \"x\"\n{}",
            hook("ops", "https://h/", "")
        ))
        .unwrap();
        let secret = dir.path().join("ops.secret");
        let err = format!("{:#}", c.webhook_endpoints(dir.path()).unwrap_err());
        assert!(err.contains("webhook `ops`"), "{err}");
        std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", c.webhook_endpoints(dir.path()).unwrap_err());
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let endpoints = c.webhook_endpoints(dir.path()).unwrap();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(
            endpoints[0].secret,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        );
        assert_eq!(endpoints[0].url, "https://h/");
        std::fs::write(&secret, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let err = format!("{:#}", c.webhook_endpoints(dir.path()).unwrap_err());
        assert!(
            err.contains("whsec_") && err.contains("ops.secret"),
            "{err}"
        );
        assert!(!err.contains("MfKQ9r8G"), "the secret is not shown: {err}");
    }
}
