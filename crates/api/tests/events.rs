//! `GET /v1/events` against a real node: an operator's stream with a kind filter, the
//! refusals (unknown kind, no credentials, too many streams), the OpenAPI entry, and a
//! patient's stream on a real chain showing key releases for their own records only.

use std::pin::Pin;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use alloy::signers::Signer;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use medmesh_core::siwe::SiweMessage;
use medmesh_service::NodeEvent;
use medmesh_testkit::chain::{grant_scope, Backend, Chain, Mined, RECORD};
use medmesh_testkit::institution;
use medmesh_testkit::node::TestNode;
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

/// How long a test waits for the next event before failing.
const WAIT: Duration = Duration::from_secs(20);

/// One SSE event as received.
#[derive(Debug)]
struct Frame {
    event: String,
    id: String,
    data: Value,
}

/// An open event stream, read frame by frame.
struct EventReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl EventReader {
    /// The next event, skipping keep-alive comments; fails the test after [`WAIT`].
    async fn next(&mut self) -> Frame {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                    if let Some(frame) = parse(&String::from_utf8(block).expect("UTF-8")) {
                        return frame;
                    }
                    continue;
                }
                let chunk = self
                    .body
                    .next()
                    .await
                    .expect("the stream stays open")
                    .expect("stream bytes");
                self.buffer.extend_from_slice(&chunk);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no event within {} s", WAIT.as_secs()))
    }
}

/// A frame's event name, id and the record its data names (empty if none).
fn summary(f: &Frame) -> (String, String, String) {
    let record = f.data["record"].as_str().unwrap_or_default();
    triple(&f.event, &f.id, record)
}

fn triple(event: &str, id: &str, record: &str) -> (String, String, String) {
    (event.to_string(), id.to_string(), record.to_string())
}

/// One SSE block (`field: value` lines) as a frame; `None` for a comment-only block.
fn parse(block: &str) -> Option<Frame> {
    let (mut event, mut id, mut data) = (None, None, Vec::new());
    for line in block
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(':'))
    {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_string()),
            "id" => id = Some(value.to_string()),
            "data" => data.push(value.to_string()),
            other => panic!("unexpected SSE field `{other}` in {block:?}"),
        }
    }
    if event.is_none() && id.is_none() && data.is_empty() {
        return None;
    }
    Some(Frame {
        event: event.expect("every event is named"),
        id: id.expect("every event has an id"),
        data: serde_json::from_str(&data.join("\n")).expect("JSON data"),
    })
}

async fn open(node: &TestNode, token: Option<&str>, query: &str) -> Response {
    let mut request = Client::new().get(node.url(&format!("/v1/events{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("GET /v1/events")
}

/// Opens a stream that must be accepted.
async fn subscribe(node: &TestNode, token: &str, query: &str) -> EventReader {
    let resp = open(node, Some(token), query).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET /v1/events{query}");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    EventReader {
        body: Box::pin(resp.bytes_stream()),
        buffer: Vec::new(),
    }
}

/// Asserts a problem+json answer with `status`; returns its detail.
async fn problem(resp: Response, status: StatusCode) -> String {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    body["detail"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_operator_sees_only_the_kinds_it_asked_for() {
    let node = TestNode::start().await;
    let mut stored_only = subscribe(&node, &node.read_token, "?kind=record_stored").await;
    let mut everything = subscribe(&node, &node.read_token, "").await;

    let first = node.upload(b"first record".to_vec()).await;
    let resp = Client::new()
        .delete(node.url(&format!("/v1/records/{first}")))
        .bearer_auth(&node.write_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let second = node.upload(b"the second record".to_vec()).await;

    // The unfiltered stream shows the removal happened between the two uploads…
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(summary(&everything.next().await));
    }
    assert_eq!(
        seen,
        [
            triple("record_stored", "1", &first),
            triple("record_removed", "2", &first),
            triple("record_stored", "3", &second),
        ]
    );
    // …and the filtered one goes from the first upload straight to the second.
    let f = stored_only.next().await;
    assert_eq!((f.event.as_str(), f.id.as_str()), ("record_stored", "1"));
    assert_eq!(
        f.data,
        json!({"type": "record_stored", "record": first, "size": 12})
    );
    let f = stored_only.next().await;
    assert_eq!((f.event.as_str(), f.id.as_str()), ("record_stored", "2"));
    assert_eq!(f.data["record"], json!(second));
    assert_eq!(f.data["size"], 17);
}

#[tokio::test]
async fn unknown_kinds_are_refused_by_name_with_the_kinds_listed() {
    let node = TestNode::start().await;
    let detail = problem(
        open(
            &node,
            Some(&node.read_token),
            "?kind=record_stored,record_exploded",
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(detail.contains("`record_exploded`"), "{detail}");
    for kind in NodeEvent::KINDS {
        assert!(detail.contains(kind), "{detail:?} does not list {kind}");
    }
    let detail = problem(
        open(&node, Some(&node.read_token), "?kind=,").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(detail.contains("no event kind named"), "{detail}");
}

#[tokio::test]
async fn a_stream_needs_credentials() {
    let node = TestNode::start().await;
    let resp = open(&node, None, "").await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let detail = problem(resp, StatusCode::UNAUTHORIZED).await;
    assert!(detail.contains("Authorization"), "{detail}");
    let detail = problem(
        open(&node, Some("mm_0000_bogus"), "").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(detail.contains("invalid or revoked"), "{detail}");
}

#[tokio::test]
async fn streams_are_bounded_in_number() {
    let node = TestNode::start_with(|c| c.max_event_streams = 1).await;
    let mut only = subscribe(&node, &node.read_token, "").await;
    let detail = problem(
        open(&node, Some(&node.admin_token), "").await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert!(detail.contains("event streams"), "{detail}");
    // The open stream is unaffected by the refusal.
    let id = node.upload(b"still streaming".to_vec()).await;
    let f = only.next().await;
    assert_eq!(f.event, "record_stored");
    assert_eq!(f.data["record"], json!(id));
}

#[tokio::test]
async fn the_stream_is_in_the_openapi_document() {
    let node = TestNode::start().await;
    let doc: Value = Client::new()
        .get(node.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let get = &doc["paths"]["/v1/events"]["get"];
    assert!(
        get["responses"]["200"]["content"]["text/event-stream"].is_object(),
        "{get}"
    );
    assert_eq!(get["parameters"][0]["name"], "kind");
}

// --- a patient's stream -------------------------------------------------------------

/// Signs `wallet` in with SIWE; returns the session token.
async fn sign_in(node: &TestNode, wallet: &PrivateKeySigner) -> String {
    let http = Client::new();
    let nonce: Value = http
        .post(node.url("/v1/auth/nonce"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let message = SiweMessage {
        domain: node.addr.to_string(),
        address: wallet.address().to_checksum(None),
        statement: Some("Sign in to medmesh".into()),
        uri: node.url("/"),
        version: "1".into(),
        chain_id: node.state.config().chain_id,
        nonce: nonce["nonce"].as_str().unwrap().into(),
        issued_at: now,
        expiration_time: Some(now + time::Duration::minutes(10)),
        not_before: None,
        request_id: None,
    }
    .to_string();
    let signature = wallet.sign_message(message.as_bytes()).await.unwrap();
    let resp = http
        .post(node.url("/v1/auth/siwe"))
        .json(&json!({
            "message": message,
            "signature": format!("0x{}", hex::encode(signature.as_bytes())),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let session: Value = resp.json().await.unwrap();
    session["token"].as_str().unwrap().to_string()
}

/// Links record `id` to `patient`; returns its consent scope.
async fn link(node: &TestNode, id: &str, patient: &PrivateKeySigner) -> alloy::primitives::B256 {
    let resp = node.link(id, &patient.address().to_string()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let link: Value = resp.json().await.unwrap();
    link["scope"].as_str().unwrap().parse().unwrap()
}

async fn key_request(node: &TestNode, chain: &Chain, id: &str, purpose: u32) -> StatusCode {
    let certificate =
        String::from_utf8(institution(1).certificate().unwrap().to_armored().unwrap()).unwrap();
    node.request_key(&chain.researcher, id, purpose, &certificate)
        .await
        .status()
}

/// A patient signed in with their wallet sees the key releases and refusals of their
/// own records, and not those of another patient's record, which an operator sees.
/// On the embedded chain only: what is checked here is the filter, not the chain.
#[tokio::test]
async fn a_patient_sees_key_events_for_their_own_records_only() {
    let chain = Chain::start_on(Backend::Embedded).await;
    let node = TestNode::start().await;
    node.connect_chain(&chain);
    let mine = node.upload(b"the patient's own record".to_vec()).await;
    let theirs = node.upload(b"another patient's record".to_vec()).await;
    let my_scope = link(&node, &mine, &chain.patient).await;
    let their_scope = link(&node, &theirs, &chain.stranger).await;
    chain
        .publish_key(&chain.researcher, &institution(1).certificate().unwrap())
        .await;
    let expiry = chain.now().await + 3600;
    grant_scope(&chain, my_scope, 42, expiry).await;
    // The other patient grants the researcher their record too, so both are released.
    chain
        .consent(&chain.stranger)
        .grant(
            chain.stranger.address(),
            chain.researcher.address(),
            RECORD,
            their_scope,
            42,
            expiry,
        )
        .mined()
        .await;

    let session = sign_in(&node, &chain.patient).await;
    let mut patient = subscribe(&node, &session, "").await;
    let mut operator = subscribe(&node, &node.read_token, "?kind=key_released,key_denied").await;

    // Released for the other patient's record, refused (wrong purpose) then released
    // for the patient's own.
    assert_eq!(
        key_request(&node, &chain, &theirs, 42).await,
        StatusCode::OK
    );
    assert_eq!(
        key_request(&node, &chain, &mine, 6).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(key_request(&node, &chain, &mine, 42).await, StatusCode::OK);

    let mut at_operator = Vec::new();
    for _ in 0..3 {
        at_operator.push(summary(&operator.next().await));
    }
    assert_eq!(
        at_operator,
        [
            triple("key_released", "1", &theirs),
            triple("key_denied", "2", &mine),
            triple("key_released", "3", &mine),
        ]
    );
    // The patient's stream starts with their own record's refusal: the release of the
    // other record, published before it, was not theirs to see.
    let denied = patient.next().await;
    assert_eq!(summary(&denied), triple("key_denied", "1", &mine));
    assert_eq!(
        denied.data["grantee"],
        json!(chain.researcher.address().to_string())
    );
    let released = patient.next().await;
    assert_eq!(summary(&released), triple("key_released", "2", &mine));
    assert_eq!(released.data["access"], "grant");
}

#[tokio::test]
async fn wallets_hold_few_streams_and_leave_room_for_operators() {
    // Four streams: wallets may hold two of them, two each at most.
    let node = TestNode::start_with(|c| c.max_event_streams = 4).await;
    let (a, b) = (PrivateKeySigner::random(), PrivateKeySigner::random());
    let (token_a, token_b) = (sign_in(&node, &a).await, sign_in(&node, &b).await);
    let _first = subscribe(&node, &token_a, "").await;
    let _second = subscribe(&node, &token_a, "").await;
    let detail = problem(
        open(&node, Some(&token_a), "").await,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert!(detail.contains("a wallet may hold 2"), "{detail}");
    // The wallets' half is full: another wallet waits, an operator does not.
    let detail = problem(
        open(&node, Some(&token_b), "").await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert!(detail.contains("wallet sessions"), "{detail}");
    let mut operator = subscribe(&node, &node.read_token, "").await;
    let id = node.upload(b"operators still see the node".to_vec()).await;
    let f = operator.next().await;
    assert_eq!(
        (f.event.as_str(), &f.data["record"]),
        ("record_stored", &json!(id))
    );
    // A wallet's stream closed frees its place (once the server notices: at the latest
    // at the next keep-alive, 15 s).
    drop(_first);
    let mut again = None;
    for _ in 0..400 {
        let resp = open(&node, Some(&token_a), "").await;
        if resp.status() == StatusCode::OK {
            again = Some(resp);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the closed stream's place came back");
}
