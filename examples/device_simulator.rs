//! A bedside-monitor simulator: registers a few devices with a running node (their
//! Falcon-512 keys through `POST /v1/devices`), then streams signed SenML packs of vital
//! signs to the node's MQTT broker, one pack per device per second. One patient
//! deteriorates (falling SpO2, rising heart and respiration rates), so the node's alerts
//! fire; the simulator prints what arrives on the alert and error topics, and at the end
//! reads the readings back through the API.
//!
//! ```sh
//! medmesh node                      # in another terminal (embedded broker on 1883/1884)
//! cargo run -p medmesh-examples --example device_simulator -- --seconds 90
//! ```
//!
//! Options: `--api URL` (http://127.0.0.1:8420), `--token-file FILE`
//! (~/.medmesh/admin.token), `--broker HOST:PORT` (127.0.0.1:1884, MQTT 5), `--institution
//! SLUG` (the node's topic level: `mqtt.institution`, default the slug of its name,
//! `medmesh-institution`), `--patients N` (3), `--seconds S` (60; 0 runs until Ctrl-C).
//! Patients are synthetic (`SIM-…`).

// A command-line program speaks on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::{bail, Context, Result};
use medmesh_core::device_message::{encode_envelope, signed_bytes};
use medmesh_crypto::{DeviceAlgorithm, DeviceSigner};
use medmesh_sdk::{Client, DeviceRequest};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

struct Options {
    api: String,
    token_file: std::path::PathBuf,
    broker: (String, u16),
    institution: String,
    patients: usize,
    seconds: u64,
}

fn options() -> Result<Options> {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let mut o = Options {
        api: "http://127.0.0.1:8420".into(),
        token_file: home.join(".medmesh/admin.token"),
        broker: ("127.0.0.1".into(), 1884),
        institution: "medmesh-institution".into(),
        patients: 3,
        seconds: 60,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--api" => o.api = value()?,
            "--token-file" => o.token_file = value()?.into(),
            "--broker" => {
                let v = value()?;
                let (host, port) = v.rsplit_once(':').context("--broker is HOST:PORT")?;
                o.broker = (host.into(), port.parse().context("--broker port")?);
            }
            "--institution" => o.institution = value()?,
            "--patients" => o.patients = value()?.parse().context("--patients")?,
            "--seconds" => o.seconds = value()?.parse().context("--seconds")?,
            other => bail!("unknown option {other} (see the top of examples/device_simulator.rs)"),
        }
    }
    if !(1..=100).contains(&o.patients) {
        bail!("--patients must be 1 to 100");
    }
    Ok(o)
}

struct Monitor {
    id: String,
    patient: String,
    signer: DeviceSigner,
    counter: u64,
    deteriorates: bool,
}

impl Monitor {
    /// This second's vital signs: normal, or worsening after 10 s for the deteriorating
    /// patient.
    fn vitals(&self, second: u64) -> [(&'static str, &'static str, f64); 5] {
        let wobble = ((second as f64) * 0.7).sin();
        let worse = if self.deteriorates {
            (second.saturating_sub(10) as f64 / 20.0).min(1.0)
        } else {
            0.0
        };
        [
            ("heart-rate", "/min", 72.0 + 3.0 * wobble + 60.0 * worse),
            ("spo2", "%", 97.0 + 0.5 * wobble - 12.0 * worse),
            ("respiration-rate", "/min", 15.0 + wobble + 12.0 * worse),
            ("systolic-bp", "mm[Hg]", 120.0 + 4.0 * wobble - 30.0 * worse),
            ("temperature", "Cel", 37.0 + 0.1 * wobble + 1.5 * worse),
        ]
    }

    fn message(&mut self, second: u64) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
        let records: Vec<String> = self
            .vitals(second)
            .iter()
            .map(|(name, unit, value)| format!(r#"{{"n":"{name}","u":"{unit}","v":{value:.1}}}"#))
            .collect();
        let body = format!(
            r#"[{{"bn":"{}/","bt":{now:.3}}},{}]"#,
            self.id,
            records.join(",")
        );
        self.counter += 1;
        let firmware = Some("simulator-1.0");
        let signature = self.signer.sign(&signed_bytes(
            &self.id,
            self.counter,
            firmware,
            false,
            body.as_bytes(),
        ));
        encode_envelope(self.counter, &body, &signature, firmware, false)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = options()?;
    let token = std::fs::read_to_string(&o.token_file)
        .with_context(|| format!("reading the API token {}", o.token_file.display()))?;
    let node = Client::new(&o.api)?.with_token(token.trim().to_string());
    let run = format!(
        "{:06x}",
        OffsetDateTime::now_utc().unix_timestamp() % 0xff_ffff
    );
    let mut monitors = Vec::new();
    for i in 0..o.patients {
        let signer = DeviceSigner::generate(DeviceAlgorithm::Falcon512)?;
        let monitor = Monitor {
            id: format!("sim-{run}-{i}"),
            patient: format!("SIM-{run}-{i}"),
            signer,
            counter: 0,
            deteriorates: i == 0,
        };
        let info = node
            .register_device(&DeviceRequest {
                id: monitor.id.clone(),
                patient: monitor.patient.clone(),
                device_type: "bedside-monitor".into(),
                algorithm: Some("falcon-512".into()),
                public_key: hex::encode(monitor.signer.public_key().as_bytes()),
            })
            .await
            .context("registering the device (is the token an admin token?)")?;
        println!(
            "registered {} for patient {} ({} key {})",
            info.id, monitor.patient, info.algorithm, info.key_fingerprint
        );
        monitors.push(monitor);
    }

    let mut options = MqttOptions::new(format!("sim-{run}"), &o.broker.0, o.broker.1);
    options.set_max_packet_size(Some(512 * 1024));
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let prefix = format!("medmesh/{}/devices", o.institution);
    client
        .subscribe(format!("{prefix}/+/alerts"), QoS::AtLeastOnce)
        .await?;
    client
        .subscribe(format!("{prefix}/+/errors"), QoS::AtLeastOnce)
        .await?;
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let body: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    if topic.ends_with("/alerts") {
                        println!(
                            "ALERT {} {} {}: {}",
                            body["change"].as_str().unwrap_or("?"),
                            body["severity"].as_str().unwrap_or("?"),
                            body["device"].as_str().unwrap_or("?"),
                            body["message"].as_str().unwrap_or("")
                        );
                    } else {
                        println!("refused on {topic}: {body}");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("MQTT: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });

    let started = OffsetDateTime::now_utc();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut second = 0u64;
    loop {
        tick.tick().await;
        if o.seconds > 0 && second >= o.seconds {
            break;
        }
        for monitor in &mut monitors {
            let message = monitor.message(second);
            client
                .publish(
                    format!("{prefix}/{}/obs", monitor.id),
                    QoS::AtLeastOnce,
                    false,
                    message,
                )
                .await?;
        }
        if second % 10 == 0 {
            println!("t = {second} s: {} packs sent per device", second + 1);
        }
        second += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (from, to) = (
        started.format(&Rfc3339)?,
        (OffsetDateTime::now_utc() + time::Duration::minutes(1)).format(&Rfc3339)?,
    );
    for monitor in &monitors {
        let readings = node.readings(&monitor.patient, &from, &to).await?;
        println!(
            "patient {}: {} readings stored (encrypted) and read back",
            monitor.patient,
            readings.len()
        );
    }
    for alert in node.alerts().await? {
        println!(
            "open alert {} ({}): {}",
            alert.id, alert.severity, alert.message
        );
    }
    Ok(())
}
