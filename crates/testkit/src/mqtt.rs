//! MQTT test fixtures: a real Mosquitto (Debian's `mosquitto`, persistence on) on a free
//! port, and simulated devices that sign their messages as real ones must.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use medmesh_core::device_message::{encode_envelope, signed_bytes};
use medmesh_core::vitals::VitalKind;
use medmesh_crypto::{DeviceAlgorithm, DeviceSigner};
use time::OffsetDateTime;

/// Where Debian's package installs the broker.
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A Mosquitto broker of the test's own, stopped when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts one with persistence on (sessions and queued messages survive a
    /// restart), anonymous access, on a free port. Panics with a hint when Mosquitto
    /// is not installed (`.ci/run` installs it).
    pub fn start() -> Self {
        assert!(
            std::path::Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is missing: install Debian's `mosquitto` package (.ci/run does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::free_port();
        let conf = dir.path().join("mosquitto.conf");
        // Started as root, Mosquitto switches to user `mosquitto`, which cannot write its
        // persistence file into this private directory: it must stay who it is.
        use std::os::unix::fs::MetadataExt;
        let as_root = std::fs::metadata(dir.path())
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 1\nmax_queued_messages 0\n\
                 max_inflight_messages 100\nlog_dest stderr\nlog_type error\n{}",
                dir.path().display(),
                if as_root { "user root\n" } else { "" }
            ),
        )
        .expect("mosquitto.conf");
        let mut broker = Self {
            child: None,
            port,
            conf,
            _dir: dir,
        };
        broker.run();
        broker
    }

    fn run(&mut self) {
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it the way an operator restarts it (SIGTERM: it saves its persistence
    /// file) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A simulated device: its key, its id, its counter.
pub struct TestDevice {
    /// Its id.
    pub id: String,
    signer: DeviceSigner,
    /// The counter of the last message made.
    pub counter: u64,
}

impl TestDevice {
    /// A device with a fresh key of `algorithm`.
    pub fn new(id: &str, algorithm: DeviceAlgorithm) -> Self {
        Self {
            id: id.to_string(),
            signer: DeviceSigner::generate(algorithm).expect("device key"),
            counter: 0,
        }
    }

    /// Its public key in hex, as registration takes it.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signer.public_key().as_bytes())
    }

    /// Its public key.
    pub fn public_key(&self) -> &medmesh_crypto::DevicePublicKey {
        self.signer.public_key()
    }

    /// The next message carrying `body`, signed.
    pub fn message(&mut self, body: &str) -> String {
        self.counter += 1;
        self.message_at(self.counter, body, false)
    }

    /// A message with counter `counter` (not advancing the device's own).
    pub fn message_at(&self, counter: u64, body: &str, wants_ack: bool) -> String {
        let firmware = Some("sim-1.0");
        let signature = self.signer.sign(&signed_bytes(
            &self.id,
            counter,
            firmware,
            wants_ack,
            body.as_bytes(),
        ));
        encode_envelope(counter, body, &signature, firmware, wants_ack)
    }
}

/// A SenML pack of `readings` (kind, value in the kind's canonical unit, time).
pub fn senml(readings: &[(VitalKind, f64, OffsetDateTime)]) -> String {
    let records: Vec<String> = readings
        .iter()
        .map(|(kind, value, time)| {
            format!(
                r#"{{"n":"{}","u":"{}","v":{value},"t":{}}}"#,
                kind.name(),
                kind.unit(),
                time.unix_timestamp_nanos() as f64 / 1e9
            )
        })
        .collect();
    format!("[{}]", records.join(","))
}
