//! The device endpoints over HTTP: registration validated, ids never reused, revocation,
//! roles, readings and alerts answered, and a node without telemetry saying so.

use medmesh_crypto::{DeviceAlgorithm, DeviceSigner};
use medmesh_service::TelemetrySettings;
use medmesh_testkit::node::TestNode;
use serde_json::{json, Value};

fn key(algorithm: DeviceAlgorithm) -> String {
    hex::encode(
        DeviceSigner::generate(algorithm)
            .unwrap()
            .public_key()
            .as_bytes(),
    )
}

async fn post(node: &TestNode, token: &str, body: Value) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .post(node.url("/v1/devices"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

async fn get(node: &TestNode, token: &str, path: &str) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .get(node.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn devices_are_registered_once_checked_revoked_and_listed() {
    let node = TestNode::start().await;
    let device = |id: &str, algorithm: &str, public_key: String| {
        json!({"id": id, "patient": "MRN-DEV-1", "type": "bedside-monitor",
               "algorithm": algorithm, "public_key": public_key})
    };
    let falcon = key(DeviceAlgorithm::Falcon512);
    let (status, made) = post(
        &node,
        &node.admin_token,
        device("m-1", "falcon-512", falcon.clone()),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["algorithm"], "falcon-512");
    assert_eq!(made["counter"], 0);

    // The same id again, even with another key: a conflict, never a replacement.
    let (status, problem) = post(
        &node,
        &node.admin_token,
        device("m-1", "ed25519", key(DeviceAlgorithm::Ed25519)),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    // Bad input, each named.
    for (body, names) in [
        (device("m/2", "falcon-512", falcon.clone()), "device id"),
        (device("m-2", "rsa", falcon.clone()), "algorithm"),
        (device("m-2", "ed25519", falcon.clone()), "public_key"),
        (device("m-2", "falcon-512", "zz".into()), "hex"),
        (json!({"id": "m-2"}), "missing field"),
    ] {
        let (status, problem) = post(&node, &node.admin_token, body).await;
        assert_eq!(status, 400, "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(names),
            "{names}: {problem}"
        );
    }
    // Registration is an administrator's.
    let (status, _) = post(
        &node,
        &node.write_token,
        device("m-3", "falcon-512", falcon.clone()),
    )
    .await;
    assert_eq!(status, 403);

    let (status, list) = get(&node, &node.read_token, "/v1/devices").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let client = reqwest::Client::new();
    let revoked = client
        .delete(node.url("/v1/devices/m-1"))
        .bearer_auth(&node.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let revoked: Value = revoked.json().await.unwrap();
    assert!(revoked["revoked"].is_string(), "{revoked}");
    let unknown = client
        .delete(node.url("/v1/devices/nope"))
        .bearer_auth(&node.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // Without the telemetry path, its endpoints say so.
    let (status, problem) = get(&node, &node.read_token, "/v1/alerts").await;
    assert_eq!(status, 503, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap_or_default()
            .contains("no-telemetry"),
        "{problem}"
    );
}

#[tokio::test]
async fn readings_and_alerts_answer_and_bad_ranges_are_refused() {
    let node = TestNode::start().await;
    node.state
        .services()
        .start_telemetry(TelemetrySettings::default())
        .await
        .unwrap();
    let (status, alerts) = get(&node, &node.read_token, "/v1/alerts").await;
    assert_eq!((status, alerts), (200, json!([])));
    let (status, telemetry) = get(&node, &node.read_token, "/v1/telemetry").await;
    assert_eq!(status, 200);
    assert_eq!(telemetry["messages_stored"], 0);
    let readings = "/v1/readings?patient=MRN-1&from=2026-01-01T00:00:00Z";
    let (status, list) = get(
        &node,
        &node.read_token,
        &format!("{readings}&to=2026-01-02T00:00:00Z"),
    )
    .await;
    assert_eq!((status, list), (200, json!([])));
    // The end of time is a valid bound, not a crash.
    let (status, list) = get(
        &node,
        &node.read_token,
        &format!("{readings}&to=9999-12-31T23:59:59Z"),
    )
    .await;
    assert_eq!((status, list), (200, json!([])));
    for bad in [
        format!("{readings}&to=2025-01-01T00:00:00Z"),
        format!("{readings}&to=tomorrow"),
        format!("{readings}&to=2026-01-02T00:00:00Z&format=xml"),
    ] {
        let (status, problem) = get(&node, &node.read_token, &bad).await;
        assert_eq!(status, 400, "{bad}: {problem}");
    }
    let unknown = reqwest::Client::new()
        .post(node.url("/v1/alerts/alert-0000/ack"))
        .bearer_auth(&node.write_token)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}
