//! Webhooks against real local receivers (axum on 127.0.0.1): each event arrives once
//! with a valid Standard Webhooks signature, a failed delivery is retried with the same
//! id, a `410 Gone` is given up on and audited, and the outbox outlives the process's
//! store (reopened) with its ids.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use medmesh_service::{
    spawn_webhooks, NodeEvent, NodeServices, ServiceError, ServiceSettings, WebhookEndpoint,
};
use medmesh_store::{AuditAction, Store, StoreError};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
    at: Instant,
}

impl Received {
    /// Checks the signature as a receiver would, with nothing of medmesh: HMAC-SHA256
    /// over `{id}.{timestamp}.{body}` with the base64-decoded secret.
    fn signed_with(&self, secret: &str) -> bool {
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let mut content = format!("{}.{}.", self.id, self.timestamp).into_bytes();
        content.extend_from_slice(&self.body);
        self.signature.split(' ').any(|pair| {
            pair.strip_prefix("v1,")
                .and_then(|s| b64.decode(s).ok())
                .is_some_and(|sig| ring::hmac::verify(&key, &content, &sig).is_ok())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Received>>,
    /// Statuses to answer first, in order; then 200.
    answers: Mutex<VecDeque<u16>>,
}

async fn hook(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    rx.got.lock().unwrap().push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        body: body.to_vec(),
        at: Instant::now(),
    });
    let status = rx.answers.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// A receiver on a free local port answering `answers` first, then 200; its URL.
async fn receiver(answers: &[u16]) -> (String, Arc<Receiver>) {
    let rx = Arc::new(Receiver {
        got: Mutex::default(),
        answers: Mutex::new(answers.iter().copied().collect()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(rx.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

/// Waits until `rx` got at least `n` requests (panics after `within`), then returns
/// them.
async fn wait_for(rx: &Receiver, n: usize, within: Duration) -> Vec<Received> {
    let deadline = Instant::now() + within;
    loop {
        let got = rx.got.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} webhook requests within {within:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn endpoint(name: &str, url: &str, secret: &str, kinds: Option<&[&str]>) -> WebhookEndpoint {
    WebhookEndpoint {
        name: name.into(),
        url: url.into(),
        secret: secret.into(),
        kinds: kinds.map(|k| k.iter().map(|s| s.to_string()).collect()),
    }
}

fn open_store(path: &Path) -> Arc<Store> {
    Arc::new(Store::open(path).expect("store"))
}

/// Opens the store at `path` again once every handle of the previous one is gone (the
/// stopped worker's last store calls finish on the blocking pool).
async fn reopen(path: &Path) -> Arc<Store> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(path) {
            Ok(store) => return Arc::new(store),
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reopening the store: {e}"),
        }
    }
}

fn services(store: Arc<Store>) -> Arc<NodeServices> {
    Arc::new(NodeServices::without_keys(
        store,
        ServiceSettings::default(),
    ))
}

fn samples() -> Vec<NodeEvent> {
    vec![
        NodeEvent::RecordStored {
            record: "bafyrecord".into(),
            size: 1234,
        },
        NodeEvent::KeyDenied {
            record: "bafyrecord".into(),
            caller: "token:t1".into(),
            grantee: "0x0000000000000000000000000000000000000003".into(),
            reason: "no grant".into(),
        },
        NodeEvent::BreakGlassOpened {
            emergency_id: "7".into(),
            institution: "0x0000000000000000000000000000000000000009".into(),
            patient: "0x0000000000000000000000000000000000000011".into(),
            until: 1_900_000_000,
        },
        NodeEvent::PeerConnected {
            peer: "12D3KooWpeer".into(),
        },
    ]
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_arrives_once_signed_and_break_glass_goes_to_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("store"));
    let services = services(store.clone());
    let (all_url, all) = receiver(&[]).await;
    let (denials_url, denials) = receiver(&[]).await;
    let hooks = spawn_webhooks(
        services.clone(),
        vec![
            endpoint("all", &all_url, SECRET, None),
            endpoint(
                "denials",
                &denials_url,
                OTHER_SECRET,
                Some(&["key_denied"][..]),
            ),
        ],
    )
    .unwrap();
    assert_eq!(hooks.endpoints(), 2);

    let events = samples();
    for event in &events {
        services.events().publish(event.clone());
    }
    let got_all = wait_for(&all, events.len(), Duration::from_secs(15)).await;
    let got_denials = wait_for(&denials, 2, Duration::from_secs(15)).await;
    // Nothing more comes: once each.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(all.got.lock().unwrap().len(), events.len());
    assert_eq!(denials.got.lock().unwrap().len(), 2);

    let data = |got: &[Received]| -> BTreeSet<String> {
        got.iter().map(|r| r.json()["data"].to_string()).collect()
    };
    let expected = |events: &[&NodeEvent]| -> BTreeSet<String> {
        events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap().to_string())
            .collect()
    };
    assert_eq!(data(&got_all), expected(&events.iter().collect::<Vec<_>>()));
    // The kinds it asked for, and the break-glass opening it did not ask for.
    assert_eq!(data(&got_denials), expected(&[&events[1], &events[2]]));

    for (got, secret, other) in [
        (&got_all, SECRET, OTHER_SECRET),
        (&got_denials, OTHER_SECRET, SECRET),
    ] {
        let ids: BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), got.len(), "distinct ids: {ids:?}");
        for r in got {
            assert!(r.id.starts_with("msg_") && !r.id.contains('.'), "{}", r.id);
            assert!(r.signed_with(secret), "bad signature on {r:?}");
            assert!(
                !r.signed_with(other),
                "signed with another endpoint's secret"
            );
            let ts: i64 = r.timestamp.parse().expect("unix seconds");
            assert!((now_secs() - ts).abs() < 60, "timestamp {ts}");
            assert_eq!(r.content_type, "application/json");
            let json = r.json();
            assert_eq!(json["type"], json["data"]["type"]);
            time::OffsetDateTime::parse(
                json["timestamp"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .expect("an RFC 3339 timestamp");
        }
    }
    // No patient reference or content travels; the event is all there is.
    for r in &got_all {
        let keys: BTreeSet<String> = r.json().as_object().unwrap().keys().cloned().collect();
        let expected: BTreeSet<String> = ["data", "timestamp", "type"].map(String::from).into();
        assert_eq!(keys, expected);
    }
    let s = store.clone();
    wait_until("an empty outbox", Duration::from_secs(10), move || {
        s.outbox_len().unwrap() == 0
    })
    .await;
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_retried_with_the_same_id_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("store"));
    let services = services(store.clone());
    let (url, rx) = receiver(&[500]).await;
    let hooks =
        spawn_webhooks(services.clone(), vec![endpoint("ops", &url, SECRET, None)]).unwrap();
    services.events().publish(samples().remove(0));

    let got = wait_for(&rx, 2, Duration::from_secs(20)).await;
    assert_eq!(got[0].id, got[1].id, "a retry keeps the webhook-id");
    assert_eq!(got[0].body, got[1].body, "and sends the same bytes");
    assert!(got[0].signed_with(SECRET) && got[1].signed_with(SECRET));
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "the first retry waits about 1 s, not {gap:?}"
    );
    let s = store.clone();
    wait_until("an empty outbox", Duration::from_secs(10), move || {
        s.outbox_len().unwrap() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.got.lock().unwrap().len(), 2, "delivered: not sent again");
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_is_given_up_at_once_and_audited_as_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("store"));
    let services = services(store.clone());
    let (url, rx) = receiver(&[410]).await;
    let hooks =
        spawn_webhooks(services.clone(), vec![endpoint("ops", &url, SECRET, None)]).unwrap();
    services.events().publish(samples().remove(0));
    let got = wait_for(&rx, 1, Duration::from_secs(15)).await;
    let s = store.clone();
    wait_until("a dead letter", Duration::from_secs(10), move || {
        s.audit_page(0, 100)
            .unwrap()
            .iter()
            .any(|e| e.action == AuditAction::WebhookUndelivered)
    })
    .await;
    assert_eq!(store.outbox_len().unwrap(), 0);
    let log = store.audit_page(0, 100).unwrap();
    let dead = log
        .iter()
        .find(|e| e.action == AuditAction::WebhookUndelivered)
        .unwrap();
    assert_eq!(dead.subject, got[0].id);
    assert_eq!(dead.detail["endpoint"], "ops");
    assert_eq!(dead.detail["attempts"], "1");
    assert!(dead.detail["error"].contains("410"), "{:?}", dead.detail);
    assert_eq!(dead.detail["body"].as_bytes(), got[0].body.as_slice());
    assert!(!dead.detail.values().any(|v| v.contains("whsec_")));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.got.lock().unwrap().len(), 1, "not retried after 410");
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_a_restart_and_delivers_with_the_original_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");

    // The receiver is down: nothing listens on this port.
    let down = format!("http://127.0.0.1:{}/hook", medmesh_testkit::free_port());
    let (id, body) = {
        let store = open_store(&path);
        let services = services(store.clone());
        let hooks =
            spawn_webhooks(services.clone(), vec![endpoint("ops", &down, SECRET, None)]).unwrap();
        services.events().publish(samples().remove(0));
        let s = store.clone();
        wait_until("a failed attempt", Duration::from_secs(10), move || {
            s.outbox_due(u64::MAX, 10)
                .unwrap()
                .first()
                .is_some_and(|e| e.attempts >= 1)
        })
        .await;
        let entry = store.outbox_due(u64::MAX, 10).unwrap().remove(0);
        assert!(entry.last_error.is_some());
        hooks.shutdown().await;
        (entry.id, entry.body)
    };

    let store = reopen(&path).await;
    assert_eq!(store.outbox_len().unwrap(), 1);
    let entry = store.outbox_due(u64::MAX, 10).unwrap().remove(0);
    assert_eq!(
        (entry.id.as_str(), entry.body.as_str()),
        (id.as_str(), body.as_str())
    );

    // The endpoint of the same name now points at a receiver that is up.
    let (url, rx) = receiver(&[]).await;
    let services = services(store.clone());
    let hooks =
        spawn_webhooks(services.clone(), vec![endpoint("ops", &url, SECRET, None)]).unwrap();
    let got = wait_for(&rx, 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].id, id, "the id made at enqueue, before the restart");
    assert_eq!(got[0].body, body.as_bytes());
    assert!(got[0].signed_with(SECRET));
    let s = store.clone();
    wait_until("an empty outbox", Duration::from_secs(10), move || {
        s.outbox_len().unwrap() == 0
    })
    .await;
    hooks.shutdown().await;
}

#[tokio::test]
async fn invalid_endpoints_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let services = services(open_store(&dir.path().join("store")));
    let good = "https://hooks.example/medmesh";
    for (endpoints, why) in [
        (
            vec![
                endpoint("a", good, SECRET, None),
                endpoint("a", good, SECRET, None),
            ],
            "two webhook endpoints",
        ),
        (
            vec![endpoint("ops", "ftp://hooks.example/", SECRET, None)],
            "http or https",
        ),
        (
            vec![endpoint(
                "ops",
                good,
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                None,
            )],
            "whsec_",
        ),
        (
            vec![endpoint("ops", good, SECRET, Some(&["nope"][..]))],
            "`nope`",
        ),
    ] {
        let err = spawn_webhooks(services.clone(), endpoints).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ServiceError::InvalidInput(_)), "{err:?}");
        assert!(text.contains(why), "{text}");
        assert!(text.contains("webhook `"), "names the endpoint: {text}");
        assert!(!text.contains("MfKQ9r8G"), "never shows the secret: {text}");
    }
    // No endpoint: nothing runs.
    assert_eq!(spawn_webhooks(services, Vec::new()).unwrap().endpoints(), 0);
}
