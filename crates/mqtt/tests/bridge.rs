//! The bridge against real brokers (Mosquitto from Debian's packages, and the embedded
//! rumqttd) with real clients (`mosquitto_pub`, a rumqttc device): readings stored
//! encrypted and read back, every refusal on the error topic with nothing stored,
//! redeliveries stored once, alerts raised and cleared with the right timing.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medmesh_core::vitals::VitalKind;
use medmesh_core::PatientRef;
use medmesh_crypto::DeviceAlgorithm;
use medmesh_mqtt::{
    spawn_bridge, BridgeHandle, BridgeSettings, BrokerAddress, EmbeddedBroker, Topics,
};
use medmesh_service::{
    DeviceRegistration, NodeEvent, NodeKeys, NodeServices, ServiceSettings, Telemetry,
    TelemetrySettings,
};
use medmesh_store::Store;
use medmesh_testkit::mqtt::{senml, Mosquitto, TestDevice};
use medmesh_testkit::{free_port, index_key, institution, passphrase};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::mpsc;

const PATIENT: &str = "MRN-TELEMETRY-1";

fn keys() -> Arc<NodeKeys> {
    let secret = institution(0);
    Arc::new(NodeKeys {
        certificate: secret.certificate().unwrap(),
        signer: Mutex::new(secret.unlock_signing(&passphrase()).unwrap()),
        decryptor: Arc::new(Mutex::new(secret.unlock_decryption(&passphrase()).unwrap())),
    })
}

struct Node {
    _dir: tempfile::TempDir,
    services: Arc<NodeServices>,
    telemetry: Arc<Telemetry>,
    bridge: BridgeHandle,
    topics: Topics,
}

/// A node (store, keys, telemetry, bridge) reading from the broker at `port`.
async fn node(port: u16) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    store.unlock_index(index_key());
    let services = Arc::new(NodeServices::new(store, keys(), ServiceSettings::default()));
    let telemetry = services
        .start_telemetry(TelemetrySettings {
            // Tests flush when they want (`flush_now`).
            window: Duration::from_secs(3600),
            ..TelemetrySettings::default()
        })
        .await
        .unwrap();
    let topics = Topics::new("test-hospital").unwrap();
    let broker = BrokerAddress::parse(&format!("mqtt://127.0.0.1:{port}")).unwrap();
    let client_id = format!("medmesh-test-{}", free_port());
    let bridge = spawn_bridge(
        services.clone(),
        BridgeSettings::new(broker, client_id, topics.clone()),
    )
    .unwrap();
    Node {
        _dir: dir,
        services,
        telemetry,
        bridge,
        topics,
    }
}

impl Node {
    async fn register(&self, device: &TestDevice, patient: &str) {
        self.services
            .register_device(
                DeviceRegistration {
                    id: device.id.clone(),
                    patient: PatientRef::new(patient).unwrap(),
                    device_type: "bedside-monitor".into(),
                    key: device.public_key().clone(),
                },
                "test",
            )
            .await
            .unwrap();
    }

    async fn readings(&self, patient: &str) -> Vec<medmesh_service::DeviceReading> {
        let now = OffsetDateTime::now_utc();
        self.telemetry
            .readings(
                &PatientRef::new(patient).unwrap(),
                now - time::Duration::hours(2),
                now + time::Duration::hours(1),
                "test",
            )
            .await
            .unwrap()
    }
}

/// A device-side MQTT 5 client: publishes, and hands over what arrives on the topics
/// it subscribed to.
struct Client {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<(String, Value)>,
}

impl Client {
    async fn connect(port: u16, id: &str, subscribe: &[String]) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_max_packet_size(Some(512 * 1024));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, incoming) = mpsc::unbounded_channel();
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let _ = tx.send((topic, body));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for topic in subscribe {
            client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), ready.recv())
                .await
                .expect("SUBACK");
        }
        Self { client, incoming }
    }

    async fn publish(&self, topic: &str, payload: String) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// The next message on a topic ending with `suffix` (panics after 20 s).
    async fn next(&mut self, suffix: &str) -> Value {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let (topic, body) = self.incoming.recv().await.expect("client runs");
                if topic.ends_with(suffix) {
                    return body;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("nothing on …{suffix} within 20 s"))
    }
}

/// Waits until the bridge's subscription is in place: a probe from an unknown device
/// is answered on its error topic.
async fn wait_ready(node: &Node, port: u16) {
    let probe = TestDevice::new("probe", DeviceAlgorithm::Ed25519);
    let mut client = Client::connect(port, "probe-client", &[node.topics.errors("probe")]).await;
    for _ in 0..100 {
        client
            .publish(
                &node.topics.observations("probe"),
                probe.message_at(1, "[]", false),
            )
            .await;
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                if let Some((topic, _)) = client.incoming.recv().await {
                    if topic.ends_with("/errors") {
                        return;
                    }
                }
            }
        })
        .await;
        if got.is_ok() {
            return;
        }
    }
    panic!("the bridge never answered: {:?}", node.bridge.stats());
}

/// `secs` ago, to the millisecond (SenML times are seconds as floating point: they
/// carry microseconds, not nanoseconds).
fn ago(secs: i64) -> OffsetDateTime {
    let t = OffsetDateTime::now_utc() - time::Duration::seconds(secs);
    t.replace_millisecond(t.millisecond()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readings_from_mosquitto_pub_and_a_device_client_are_stored_encrypted_and_read_back() {
    let broker = Mosquitto::start();
    let node = node(broker.port).await;
    wait_ready(&node, broker.port).await;

    // A Falcon-512 monitor on a rumqttc client, asking for acknowledgements.
    let mut monitor = TestDevice::new("monitor-1", DeviceAlgorithm::Falcon512);
    node.register(&monitor, PATIENT).await;
    let mut client = Client::connect(
        broker.port,
        "monitor-1-client",
        &[
            node.topics.ack("monitor-1"),
            node.topics.errors("monitor-1"),
        ],
    )
    .await;
    let t = ago(30);
    let pack = senml(&[
        (VitalKind::HeartRate, 72.0, t),
        (VitalKind::Spo2, 97.0, t),
        (VitalKind::Temperature, 37.1, t),
    ]);
    monitor.counter += 1;
    let message = monitor.message_at(monitor.counter, &pack, true);
    client
        .publish(&node.topics.observations("monitor-1"), message)
        .await;
    let ack = client.next("/ack").await;
    assert_eq!(ack["counter"], 1, "{ack}");
    assert_eq!(ack["status"], "stored");

    // An Ed25519 wearable whose messages go out with mosquitto_pub (MQTT 3.1.1).
    let mut wearable = TestDevice::new("wearable-7", DeviceAlgorithm::Ed25519);
    node.register(&wearable, PATIENT).await;
    let fhir = format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"9279-1"}}]}},"effectiveDateTime":"{}","valueQuantity":{{"value":16,"unit":"breaths/min","system":"http://unitsofmeasure.org","code":"/min"}}}}"#,
        ago(20)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    let message = wearable.message(&fhir);
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args([
            "-t",
            &node.topics.observations("wearable-7"),
            "-m",
            &message,
        ])
        .status()
        .expect("mosquitto_pub runs (Debian's mosquitto-clients)");
    assert!(status.success());

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while node.telemetry.stats().readings_stored < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            node.telemetry.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Before batching, the readings come from the log; after, from the record.
    let pending = node.readings(PATIENT).await;
    let report = node.telemetry.flush_now().await.unwrap();
    assert_eq!((report.records, report.readings), (1, 4), "{report:?}");
    let stored = node.readings(PATIENT).await;
    assert_eq!(stored, pending);
    let kinds: Vec<_> = stored
        .iter()
        .map(|r| (r.device.as_str(), r.reading.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("monitor-1", VitalKind::HeartRate),
            ("monitor-1", VitalKind::Spo2),
            ("monitor-1", VitalKind::Temperature),
            ("wearable-7", VitalKind::RespirationRate),
        ]
    );
    assert_eq!(stored[3].reading.value, 16.0);

    // The batch is an encrypted FHIR record of the patient, like any other.
    let (found, _) = node
        .services
        .search(
            medmesh_store::RecordQuery {
                patient: Some(PatientRef::new(PATIENT).unwrap()),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].meta.content_type.as_str(), "application/fhir+json");
    let rejected = node.telemetry.stats().rejected;
    assert!(
        rejected.keys().all(|code| code == "unknown-device"),
        "only the readiness probe is refused: {rejected:?}"
    );
    // The device's counter and firmware are kept.
    let devices = node.services.devices().await.unwrap();
    let m = devices.iter().find(|d| d.id == "monitor-1").unwrap();
    assert_eq!((m.counter, m.firmware.as_deref()), (1, Some("sim-1.0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_message_is_refused_on_the_error_topic_and_nothing_is_stored() {
    let broker = Mosquitto::start();
    let node = node(broker.port).await;
    wait_ready(&node, broker.port).await;
    let mut device = TestDevice::new("monitor-2", DeviceAlgorithm::Falcon512);
    node.register(&device, PATIENT).await;
    let stranger = TestDevice::new("stranger", DeviceAlgorithm::Falcon512);
    let impostor = TestDevice::new("monitor-2", DeviceAlgorithm::Falcon512);
    let mut client = Client::connect(
        broker.port,
        "bad-client",
        &[
            node.topics.errors("monitor-2"),
            node.topics.errors("stranger"),
        ],
    )
    .await;
    let now = ago(5);
    let good = senml(&[(VitalKind::HeartRate, 70.0, now)]);
    // One accepted message first, so a replay has a counter to fall behind.
    let first = device.message(&good);
    client
        .publish(&node.topics.observations("monitor-2"), first)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while node.telemetry.stats().messages_stored < 1 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let future = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let cases: Vec<(&str, String, &str)> = vec![
        ("monitor-2", "{not json".into(), "bad-envelope"),
        (
            "monitor-2",
            device.message(r#"[{"n":"heart-rate","u":"Cel","v":70}]"#),
            "invalid-reading",
        ),
        (
            "monitor-2",
            device.message(&senml(&[(VitalKind::Spo2, 140.0, now)])),
            "invalid-reading",
        ),
        (
            "monitor-2",
            device.message(&senml(&[(VitalKind::HeartRate, 70.0, future)])),
            "invalid-reading",
        ),
        (
            "monitor-2",
            device.message(r#"[{"n":"heart-rate","u":"/min","v":70"#),
            "bad-envelope",
        ),
        (
            "stranger",
            stranger.message_at(1, &good, false),
            "unknown-device",
        ),
        (
            "monitor-2",
            impostor.message_at(99, &good, false),
            "bad-signature",
        ),
        // Counter 1 again, with other readings (the very same message would be a
        // redelivery, acknowledged again: see the next test).
        (
            "monitor-2",
            device.message_at(1, &senml(&[(VitalKind::HeartRate, 99.0, now)]), false),
            "replayed-counter",
        ),
    ];
    for (who, message, code) in &cases {
        client
            .publish(&node.topics.observations(who), message.clone())
            .await;
        let error = client.next(&format!("{who}/errors")).await;
        assert_eq!(error["code"], *code, "{error}");
        assert!(
            error["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{error}"
        );
    }
    let stats = node.telemetry.stats();
    assert_eq!(stats.messages_stored, 1, "{stats:?}");
    let refused: u64 = stats.rejected.values().sum();
    // The readiness probe was refused too.
    assert!(refused >= cases.len() as u64, "{stats:?}");
    assert_eq!(stats.rejected["replayed-counter"], 1);
    assert_eq!(node.readings(PATIENT).await.len(), 1);

    // A revoked device is refused from then on.
    node.services
        .revoke_device("monitor-2", "test")
        .await
        .unwrap();
    let next = device.message(&good);
    client
        .publish(&node.topics.observations("monitor-2"), next)
        .await;
    assert_eq!(
        client.next("monitor-2/errors").await["code"],
        "revoked-device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_message_is_acknowledged_again_and_stored_once() {
    let broker = Mosquitto::start();
    let node = node(broker.port).await;
    wait_ready(&node, broker.port).await;
    let mut device = TestDevice::new("monitor-3", DeviceAlgorithm::Ed25519);
    node.register(&device, PATIENT).await;
    let mut client =
        Client::connect(broker.port, "dup-client", &[node.topics.ack("monitor-3")]).await;
    let body = senml(&[(VitalKind::Spo2, 96.0, ago(3))]);
    device.counter += 1;
    let message = device.message_at(device.counter, &body, true);
    for _ in 0..3 {
        client
            .publish(&node.topics.observations("monitor-3"), message.clone())
            .await;
        assert_eq!(client.next("/ack").await["counter"], 1);
    }
    let stats = node.telemetry.stats();
    assert_eq!(
        (stats.messages_stored, stats.duplicates),
        (1, 2),
        "{stats:?}"
    );
    assert_eq!(node.readings(PATIENT).await.len(), 1);

    // Brokers may deliver out of order: counter 5, then an unused 3, are both kept; the
    // same 3 again is a redelivery; another message with counter 3 is a replay.
    let mut errors = Client::connect(
        broker.port,
        "dup-errors",
        &[node.topics.errors("monitor-3")],
    )
    .await;
    let obs = node.topics.observations("monitor-3");
    let five = device.message_at(5, &senml(&[(VitalKind::Spo2, 95.0, ago(2))]), true);
    client.publish(&obs, five).await;
    assert_eq!(client.next("/ack").await["counter"], 5);
    let three = device.message_at(3, &senml(&[(VitalKind::Spo2, 94.0, ago(4))]), true);
    client.publish(&obs, three.clone()).await;
    assert_eq!(client.next("/ack").await["counter"], 3);
    client.publish(&obs, three).await;
    assert_eq!(client.next("/ack").await["counter"], 3);
    let other_three = device.message_at(3, &senml(&[(VitalKind::Spo2, 93.0, ago(4))]), true);
    client.publish(&obs, other_three).await;
    let error = errors.next("/errors").await;
    assert_eq!(error["code"], "replayed-counter", "{error}");
    let stats = node.telemetry.stats();
    assert_eq!(
        (stats.messages_stored, stats.duplicates),
        (3, 3),
        "{stats:?}"
    );
    assert_eq!(node.readings(PATIENT).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_is_raised_after_its_duration_and_cleared_past_its_hysteresis() {
    let broker = Mosquitto::start();
    let node = node(broker.port).await;
    wait_ready(&node, broker.port).await;
    let mut device = TestDevice::new("monitor-4", DeviceAlgorithm::Falcon512);
    node.register(&device, PATIENT).await;
    let mut client = Client::connect(
        broker.port,
        "alert-client",
        &[node.topics.alerts("monitor-4")],
    )
    .await;
    let mut bus = node.services.events().subscribe();
    let obs = node.topics.observations("monitor-4");

    // The default rule: SpO2 below 90 % for 30 s, cleared at 92 %. 88 % from t0 on,
    // every 5 s: raised by the reading at t0 + 30 s, not before.
    let t0 = ago(120);
    let at = |s: i64| t0 + time::Duration::seconds(s);
    let low: Vec<_> = (0..=5)
        .map(|i| (VitalKind::Spo2, 88.0, at(5 * i)))
        .collect();
    client.publish(&obs, device.message(&senml(&low))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(node.telemetry.open_alerts().is_empty(), "25 s is not 30 s");
    client
        .publish(
            &obs,
            device.message(&senml(&[(VitalKind::Spo2, 88.0, at(30))])),
        )
        .await;
    let raised = client.next("/alerts").await;
    assert_eq!(raised["change"], "raised", "{raised}");
    assert_eq!(raised["rule"], "spo2-low");
    assert_eq!(raised["device"], "monitor-4");
    assert!(
        raised.get("patient").is_none(),
        "alerts on MQTT name no patient"
    );
    let open = node.telemetry.open_alerts();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].raised_at, at(30));

    // Between the threshold and the clearing level it stays open (no flapping)…
    client
        .publish(
            &obs,
            device.message(&senml(&[
                (VitalKind::Spo2, 91.0, at(35)),
                (VitalKind::Spo2, 89.0, at(40)),
                (VitalKind::Spo2, 91.0, at(45)),
            ])),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.telemetry.open_alerts().len(), 1);
    // …and clears at 92 %.
    client
        .publish(
            &obs,
            device.message(&senml(&[(VitalKind::Spo2, 93.0, at(50))])),
        )
        .await;
    let cleared = client.next("/alerts").await;
    assert_eq!(cleared["change"], "cleared", "{cleared}");
    assert!(node.telemetry.open_alerts().is_empty());

    // The event bus (SSE, webhooks) saw both, with the reading and the rule.
    let mut changes = Vec::new();
    while let Ok(event) = bus.try_recv() {
        if let NodeEvent::Alert {
            change,
            rule,
            value,
            ..
        } = event
        {
            changes.push((change, rule, value));
        }
    }
    assert_eq!(
        changes,
        [
            ("raised".to_string(), "spo2-low".to_string(), 88.0),
            // An alert's value is the reading that raised it.
            ("cleared".to_string(), "spo2-low".to_string(), 88.0),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_broker_takes_mqtt_3_and_5_devices() {
    // Two listeners on consecutive ports: try a few bases.
    let mut started = None;
    for _ in 0..10 {
        let base = free_port();
        if base == u16::MAX {
            continue;
        }
        if let Ok(b) = EmbeddedBroker::start(([127, 0, 0, 1], base).into()) {
            started = Some(b);
            break;
        }
    }
    let broker = started.expect("an embedded broker on two free ports");
    let node = node(broker.v5_addr().port()).await;
    wait_ready(&node, broker.v5_addr().port()).await;
    let mut device = TestDevice::new("monitor-5", DeviceAlgorithm::Falcon512);
    node.register(&device, PATIENT).await;
    let message = device.message(&senml(&[(VitalKind::HeartRate, 64.0, ago(2))]));
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.v4_addr().port().to_string(),
            "-q",
            "1",
        ])
        .args(["-t", &node.topics.observations("monitor-5"), "-m", &message])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while node.telemetry.stats().messages_stored < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            node.telemetry.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let readings = node.readings(PATIENT).await;
    assert_eq!(readings.len(), 1);
    assert_eq!(readings[0].reading.value, 64.0);
}
