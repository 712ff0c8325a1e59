//! `medmesh node` with its MQTT bridge, as separate processes: no reading the broker
//! acknowledged is lost or stored twice although the node is SIGKILLed twenty times and
//! Mosquitto restarted while a device streams; and the default run takes readings
//! through its embedded broker.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Proc;
use medmesh_core::vitals::VitalKind;
use medmesh_crypto::DeviceAlgorithm;
use medmesh_testkit::mqtt::{senml, Mosquitto, TestDevice};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const PATIENT: &str = "MRN-STREAM-1";
const TOPIC_PREFIX: &str = "medmesh/test-hospital/devices";

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn register(node: &Proc, device: &TestDevice, algorithm: &str) {
    let answer = http()
        .post(format!("http://127.0.0.1:{}/v1/devices", node.api))
        .bearer_auth(&node.token)
        .json(&json!({
            "id": device.id,
            "patient": PATIENT,
            "type": "bedside-monitor",
            "algorithm": algorithm,
            "public_key": device.public_key_hex(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "{}", answer.text().await.unwrap());
}

/// Every reading of the patient over the last hours, as `(device, kind, time)` with
/// how many times each was returned.
async fn readings(node: &Proc) -> Option<BTreeMap<(String, String, String), usize>> {
    let now = OffsetDateTime::now_utc();
    let (from, to) = (
        (now - time::Duration::hours(3)).format(&Rfc3339).unwrap(),
        (now + time::Duration::hours(1)).format(&Rfc3339).unwrap(),
    );
    let answer = http()
        .get(format!("http://127.0.0.1:{}/v1/readings", node.api))
        .bearer_auth(&node.token)
        .query(&[("patient", PATIENT), ("from", &from), ("to", &to)])
        .send()
        .await
        .ok()?;
    assert_eq!(answer.status(), 200);
    let list: Vec<Value> = answer.json().await.ok()?;
    let mut seen = BTreeMap::new();
    for r in list {
        let key = (
            r["device"].as_str()?.to_string(),
            r["kind"].as_str()?.to_string(),
            r["time"].as_str()?.to_string(),
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    Some(seen)
}

/// The SenML pack of message `counter`: `PER_MESSAGE` heart-rate readings a second
/// apart, at times no other message uses.
const PER_MESSAGE: u64 = 5;

fn times_of(counter: u64, start: OffsetDateTime) -> Vec<OffsetDateTime> {
    (0..PER_MESSAGE)
        .map(|i| start + time::Duration::seconds(((counter - 1) * PER_MESSAGE + i) as i64))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_reading_is_lost_or_doubled_across_twenty_node_kills_and_a_broker_restart()
{
    let base = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start();
    let mut node = Proc::start_with_mqtt(base.path(), "node", &broker.url());
    let mut device = TestDevice::new("monitor-9", DeviceAlgorithm::Ed25519);
    register(&node, &device, "ed25519").await;

    // The device: a persistent MQTT 5 session of its own, QoS 1; a message counts as
    // acknowledged when the broker's PUBACK for it arrives.
    let mut options = MqttOptions::new("monitor-9-client", "127.0.0.1", broker.port);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_outgoing_inflight_upper_limit(1);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = acks_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let start = OffsetDateTime::now_utc() - time::Duration::minutes(90);
    let start = start.replace_nanosecond(0).unwrap();
    const MESSAGES: u64 = 400;
    let topic = format!("{TOPIC_PREFIX}/monitor-9/obs");
    let publisher = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for counter in 1..=MESSAGES {
            device.counter = counter;
            let pack: Vec<_> = times_of(counter, start)
                .into_iter()
                .map(|t| (VitalKind::HeartRate, 60.0 + (counter % 40) as f64, t))
                .collect();
            let message = device.message_at(counter, &senml(&pack), false);
            client
                .publish(&topic, QoS::AtLeastOnce, false, message)
                .await
                .unwrap();
            // One in flight at a time: its PUBACK says the broker has it (resent by
            // the client after a broker restart until it is acknowledged).
            match tokio::time::timeout(Duration::from_secs(30), acks.recv()).await {
                Ok(Some(())) => acknowledged.push(counter),
                _ => panic!("no PUBACK for message {counter}"),
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        acknowledged
    });

    // Kill the node (SIGKILL) twenty times while the device streams; restart Mosquitto
    // (SIGTERM, it saves its persistence) once in the middle.
    // Lifetimes of 0.15 to 1.6 s: some kills land before the first batch (readings only
    // in the log), some during or after one (batches written, repeated or checkpointed).
    for round in 0..20u64 {
        tokio::time::sleep(Duration::from_millis(150 + (round * 397) % 1450)).await;
        node.kill();
        if round == 10 {
            broker.restart();
        }
        node.run(&[]);
    }
    let acknowledged = publisher.await.unwrap();
    assert_eq!(acknowledged.len() as u64, MESSAGES);

    // Everything the broker acknowledged reaches the node, once.
    let expected: BTreeSet<String> = acknowledged
        .iter()
        .flat_map(|&c| times_of(c, start))
        .map(|t| t.format(&Rfc3339).unwrap())
        .collect();
    // …and into records: wait until the last batch is written.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (seen, status) = loop {
        let seen = readings(&node).await.unwrap_or_default();
        let status: Value = http()
            .get(format!("http://127.0.0.1:{}/v1/telemetry", node.api))
            .bearer_auth(&node.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let batched = status["pending_readings"] == 0;
        if (seen.len() >= expected.len() && batched) || Instant::now() > deadline {
            break (seen, status);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("after 20 kills and a broker restart: {status}");
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "readings stored twice: {doubled:?}");
    let times: BTreeSet<String> = seen.keys().map(|(_, _, t)| t.clone()).collect();
    let missing: Vec<_> = expected.difference(&times).collect();
    let lost_messages: BTreeSet<u64> = acknowledged
        .iter()
        .copied()
        .filter(|&c| {
            times_of(c, start)
                .iter()
                .any(|t| missing.contains(&&t.format(&Rfc3339).unwrap()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged readings lost (of {}), of messages {lost_messages:?}; node log: {}",
        missing.len(),
        expected.len(),
        node.log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("mqtt"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(times.len(), expected.len());
    assert_eq!(status["connected"], true, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_node_takes_readings_through_its_embedded_broker() {
    let base = tempfile::tempdir().unwrap();
    // Two consecutive free ports: the embedded broker's MQTT 3.1.1 and MQTT 5.
    let port = loop {
        let p = medmesh_testkit::free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let dir = base.path().join("node");
    let config = dir.join("medmesh.toml");
    let mut node = Proc::start_configured(base.path(), "node", |_| {});
    node.kill();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "embedded_listen = \"127.0.0.1:1883\"",
        &format!("embedded_listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&config, text).unwrap();
    node.mqtt = true;
    node.run(&[]);
    let mut device = TestDevice::new("monitor-1", DeviceAlgorithm::Falcon512);
    register(&node, &device, "falcon-512").await;
    let t = (OffsetDateTime::now_utc() - time::Duration::seconds(10))
        .replace_nanosecond(0)
        .unwrap();
    let message = device.message(&senml(&[(VitalKind::Spo2, 95.0, t)]));
    // The bridge subscribes right after the node starts: retry until it is there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args([
                "-t",
                &format!("{TOPIC_PREFIX}/monitor-1/obs"),
                "-m",
                &message,
            ])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = readings(&node).await.unwrap_or_default();
        if !seen.is_empty() {
            assert_eq!(seen.len(), 1, "{seen:?}");
            let ((dev, kind, time), n) = seen.into_iter().next().unwrap();
            assert_eq!((dev.as_str(), kind.as_str(), n), ("monitor-1", "spo2", 1));
            assert_eq!(time, t.format(&Rfc3339).unwrap());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reading came through the embedded broker"
        );
    }
}
