//! The telemetry service without a transport: messages submitted as a bridge would,
//! alert rules reloaded from their file while the node runs, escalation of unacknowledged
//! alerts, and acknowledgement.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use medmesh_core::vitals::VitalKind;
use medmesh_core::PatientRef;
use medmesh_crypto::DeviceAlgorithm;
use medmesh_service::{
    DeviceRegistration, NodeEvent, NodeKeys, NodeServices, Outcome, ServiceSettings, Telemetry,
    TelemetrySettings,
};
use medmesh_store::Store;
use medmesh_testkit::mqtt::{senml, TestDevice};
use medmesh_testkit::{index_key, institution, passphrase};
use time::OffsetDateTime;
use tokio::sync::broadcast;

const RULES: &str = "escalate_after = 1\n[[rule]]\nid = \"hr-high\"\nkind = \"heart-rate\"\nabove = 100.0\nfor_secs = 0\nseverity = \"info\"\n[news2]\nenabled = false\n";

async fn start(rules: &std::path::Path) -> (tempfile::TempDir, Arc<NodeServices>, Arc<Telemetry>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    store.unlock_index(index_key());
    let secret = institution(0);
    let keys = Arc::new(NodeKeys {
        certificate: secret.certificate().unwrap(),
        signer: Mutex::new(secret.unlock_signing(&passphrase()).unwrap()),
        decryptor: Arc::new(Mutex::new(secret.unlock_decryption(&passphrase()).unwrap())),
    });
    let services = Arc::new(NodeServices::new(store, keys, ServiceSettings::default()));
    let telemetry = services
        .start_telemetry(TelemetrySettings {
            rules_file: Some(rules.to_path_buf()),
            tick: Duration::from_millis(100),
            ..TelemetrySettings::default()
        })
        .await
        .unwrap();
    (dir, services, telemetry)
}

async fn next_alert(events: &mut broadcast::Receiver<NodeEvent>) -> (String, String, String) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let NodeEvent::Alert {
                change,
                rule,
                severity,
                ..
            } = events.recv().await.unwrap()
            {
                return (change, rule, severity);
            }
        }
    })
    .await
    .expect("an alert event within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_from_their_file_alerts_escalate_and_acknowledging_stops_that() {
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("alert-rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let (_dir, services, telemetry) = start(&rules).await;
    let mut events = services.events().subscribe();
    let mut device = TestDevice::new("m-1", DeviceAlgorithm::Ed25519);
    services
        .register_device(
            DeviceRegistration {
                id: "m-1".into(),
                patient: PatientRef::new("MRN-RULES-1").unwrap(),
                device_type: "bedside-monitor".into(),
                key: device.public_key().clone(),
            },
            "test",
        )
        .await
        .unwrap();
    let t = OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let message = device.message(&senml(&[(VitalKind::HeartRate, 110.0, t)]));
    let outcome = telemetry
        .submit("m-1", Bytes::from(message))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Stored { readings: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(
        next_alert(&mut events).await,
        ("raised".into(), "hr-high".into(), "info".into())
    );
    // Unacknowledged for escalate_after (1 s): one severity up.
    assert_eq!(
        next_alert(&mut events).await,
        ("escalated".into(), "hr-high".into(), "urgent".into())
    );
    let open = telemetry.open_alerts();
    assert_eq!(open.len(), 1);
    let acked = telemetry
        .acknowledge_alert(&open[0].id, "nurse")
        .await
        .unwrap();
    assert_eq!(
        acked.acknowledged.as_ref().map(|(by, _)| by.as_str()),
        Some("nurse")
    );
    assert_eq!(next_alert(&mut events).await.0, "acknowledged");
    assert!(telemetry
        .acknowledge_alert(&open[0].id, "nurse")
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        telemetry.open_alerts()[0].escalated,
        1,
        "acknowledged alerts do not escalate"
    );

    // A file that does not parse keeps the rules in force…
    std::fs::write(&rules, "[[rule]]\nid = \"broken\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(telemetry.open_alerts().len(), 1);
    // …and one without the rule clears its alert.
    std::fs::write(&rules, "[news2]\nenabled = false\n").unwrap();
    assert_eq!(
        next_alert(&mut events).await,
        (
            "cleared-rule-removed".into(),
            "hr-high".into(),
            "urgent".into()
        )
    );
    assert!(telemetry.open_alerts().is_empty());
    // The audit log is written in the background, after the bus.
    let mut alert_entries = 0;
    for _ in 0..50 {
        let audited = services.audit_page(0, 1000).await.unwrap();
        alert_entries = audited
            .iter()
            .filter(|e| e.action == medmesh_store::AuditAction::Alert)
            .count();
        if alert_entries >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alert_entries, 4, "raised, escalated, acknowledged, cleared");
}
