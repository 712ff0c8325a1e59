//! What a review and a probe from outside found in the HTTP API, each reproduced
//! against a real node on a free local port: bad input that was accepted or merged,
//! scope checks after body parsing, SIWE relying-party checks, concurrent deletes,
//! refusals that cost a disk write each, and connections that stayed open forever.

use std::time::{Duration, Instant};

use alloy::primitives::{Signature, U256};
use alloy_signer::Signer;
use alloy_signer_local::PrivateKeySigner;
use medmesh_core::siwe::SiweMessage;
use medmesh_testkit::node::TestNode;
use medmesh_testkit::shared_data;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn problem(resp: reqwest::Response, status: StatusCode, needle: &str) {
    assert_eq!(resp.status(), status, "{}", resp.url());
    let body: Value = resp.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(needle), "{detail:?} lacks {needle:?}");
}

#[tokio::test]
async fn a_patient_reference_that_is_not_utf8_is_refused() {
    let node = TestNode::start().await;
    let http = Client::new();
    for (first, second) in [("%FF%FE", "%FE%FF")] {
        // Both would have become "\u{FFFD}\u{FFFD}" and merged into one patient.
        let resp = http
            .post(node.url(&format!("/v1/records?patient={first}")))
            .bearer_auth(&node.write_token)
            .body("x")
            .send()
            .await
            .unwrap();
        problem(resp, StatusCode::BAD_REQUEST, "`patient`").await;
        let resp = http
            .get(node.url(&format!("/v1/records?patient={second}")))
            .bearer_auth(&node.read_token)
            .send()
            .await
            .unwrap();
        problem(resp, StatusCode::BAD_REQUEST, "UTF-8").await;
    }
    // Percent-encoded UTF-8 is fine.
    let resp = http
        .post(node.url("/v1/records?patient=Ren%C3%A9e-7"))
        .bearer_auth(&node.write_token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["meta"]["patient"], "Renée-7");
    let stored = node.state.store().record_count().unwrap();
    assert_eq!(stored, 1, "nothing was stored by the refused uploads");
}

#[tokio::test]
async fn a_form_content_type_is_ignored_and_the_type_sniffed() {
    let node = TestNode::start().await;
    let body = std::fs::read(shared_data("fhir/synthea-bundle-a.json")).unwrap();
    // What `curl --data-binary @bundle.json URL` sends.
    let resp = Client::new()
        .post(node.url("/v1/records"))
        .bearer_auth(&node.write_token)
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["meta"]["content_type"], "application/fhir+json");
}

#[tokio::test]
async fn scopes_are_checked_before_the_body_is_read() {
    let node = TestNode::start().await;
    let http = Client::new();
    for (path, body) in [
        ("/v1/admin/tokens", "{not json"),
        ("/v1/network/dial", "[]"),
    ] {
        let resp = http
            .post(node.url(path))
            .bearer_auth(&node.write_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        problem(resp, StatusCode::FORBIDDEN, "scope `admin`").await;
    }
    // Consent links, and relays too: a read token cannot make the node pay gas,
    // whatever it sends.
    for (method, path) in [
        (
            reqwest::Method::PUT,
            "/v1/records/bafyreidsvr2dooaaqhs7pkoape6s7sj5di6lxfpvgbu7kb2zj5cphq53ba/consent-link",
        ),
        (reqwest::Method::POST, "/v1/grants"),
        (reqwest::Method::POST, "/v1/grants/revoke"),
    ] {
        let resp = http
            .request(method, node.url(path))
            .bearer_auth(&node.read_token)
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap();
        problem(resp, StatusCode::FORBIDDEN, "scope `write`").await;
    }
}

fn siwe(node: &TestNode, wallet: &PrivateKeySigner, nonce: &str, uri: &str) -> SiweMessage {
    let now = time::OffsetDateTime::now_utc();
    SiweMessage {
        domain: node.addr.to_string(),
        address: wallet.address().to_checksum(None),
        statement: None,
        uri: uri.into(),
        version: "1".into(),
        chain_id: 31337,
        nonce: nonce.into(),
        issued_at: now,
        expiration_time: Some(now + time::Duration::minutes(5)),
        not_before: None,
        request_id: None,
    }
}

async fn fresh_nonce(node: &TestNode) -> String {
    let n: Value = Client::new()
        .post(node.url("/v1/auth/nonce"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    n["nonce"].as_str().unwrap().to_string()
}

async fn send_siwe(node: &TestNode, text: &str, signature: &Signature) -> reqwest::Response {
    let hex: String = signature
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Client::new()
        .post(node.url("/v1/auth/siwe"))
        .json(&json!({"message": text, "signature": format!("0x{hex}")}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn siwe_refuses_another_sites_uri_and_high_s_signatures() {
    let node = TestNode::start().await;
    let wallet = PrivateKeySigner::random();
    // A message for another site's resource, with this node's domain.
    let nonce = fresh_nonce(&node).await;
    let other = siwe(&node, &wallet, &nonce, "https://evil.example/login").to_string();
    let sig = wallet.sign_message(other.as_bytes()).await.unwrap();
    problem(
        send_siwe(&node, &other, &sig).await,
        StatusCode::UNAUTHORIZED,
        "URI",
    )
    .await;

    // The malleated twin (r, n - s, !v) of a valid signature recovers to the same
    // address; EIP-2 forbids it.
    let text = siwe(&node, &wallet, &nonce, &node.url("/")).to_string();
    let sig = wallet.sign_message(text.as_bytes()).await.unwrap();
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .unwrap();
    let twin = Signature::new(sig.r(), n - sig.s(), !sig.v());
    assert_eq!(
        twin.recover_address_from_msg(text.as_bytes()).unwrap(),
        wallet.address()
    );
    problem(
        send_siwe(&node, &text, &twin).await,
        StatusCode::BAD_REQUEST,
        "low-s",
    )
    .await;
    // The canonical signature still signs in (the refusals burnt no nonce).
    assert_eq!(send_siwe(&node, &text, &sig).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn of_concurrent_deletes_of_one_record_exactly_one_succeeds() {
    let node = TestNode::start().await;
    let http = Client::new();
    let created: Value = http
        .post(node.url("/v1/records"))
        .bearer_auth(&node.write_token)
        .body(vec![7u8; 3 << 20])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = format!("/v1/records/{}", created["id"].as_str().unwrap());
    let deletes = (0..5).map(|_| {
        http.delete(node.url(&path))
            .bearer_auth(&node.write_token)
            .send()
    });
    let answers = futures_util::future::join_all(deletes).await;
    let mut statuses: Vec<u16> = answers
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 404, 404, 404, 404]);
    let store = node.state.store();
    assert!(
        store.blocks().scan().unwrap().blocks.is_empty(),
        "every block removed"
    );
    assert!(store.check().unwrap().problems.is_empty());
}

#[tokio::test]
async fn a_flood_of_bogus_tokens_is_rate_limited_and_costs_few_audit_entries() {
    // A caller may send 0.01 requests/s: an address 0.1/s, with a burst of 20, before
    // authentication.
    let node = TestNode::start_with(|c| {
        c.rate_per_second = 0.01;
        c.rate_burst = 2.0;
    })
    .await;
    let store = node.state.store().clone();
    let entries = |store: &medmesh_store::Store| store.audit_page(0, 100_000).unwrap();
    let before = entries(&store).len();
    let http = Client::new();
    let (mut refused, mut limited) = (0, 0);
    for i in 0..60 {
        let resp = http
            .get(node.url("/v1/records"))
            .bearer_auth(format!("mm_{i:04}_bogus{i}"))
            .send()
            .await
            .unwrap();
        match resp.status() {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        limited >= 35,
        "rotating tokens must not refill the bucket: {limited} limited"
    );
    // The refusals are one kind (this address, unauthenticated): one entry now, one
    // summary when the window ends.
    let written = entries(&store).len() - before;
    assert_eq!(written, 1, "{written} audit entries for one flood");
    node.state.services().denials().flush().await;
    let after = entries(&store);
    assert_eq!(after.len() - before, 2);
    let summary = &after[after.len() - 1];
    assert_eq!(summary.detail["repeated"], (refused - 1).to_string());
}

/// Reads until the server closes the connection; `Err` on timeout.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Result<Duration, ()> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return Err(()),
        }
    }
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_and_connections_are_bounded() {
    let node = TestNode::start_with(|c| {
        c.header_timeout = Duration::from_secs(1);
        c.body_idle_timeout = Duration::from_secs(1);
        c.max_connections = 8;
    })
    .await;
    // Sends nothing.
    let mut idle = TcpStream::connect(node.addr).await.unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5))
            .await
            .is_ok(),
        "idle kept open"
    );

    // Headers at one byte every 300 ms.
    let mut slow = TcpStream::connect(node.addr).await.unwrap();
    let trickle = async {
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" {
            if slow.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    assert!(
        closed_within(&mut slow, Duration::from_secs(2))
            .await
            .is_ok(),
        "slow headers kept open"
    );

    // An upload body that stops after its first bytes.
    let mut stalled = TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\nabc",
        node.write_token
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut answer))
        .await
        .expect("a stalled upload is answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // More idle connections than slots: /health still answers once the idle ones are
    // closed, and the node never serves more than its slots at once.
    let mut hogs = Vec::new();
    for _ in 0..32 {
        hogs.push(TcpStream::connect(node.addr).await.unwrap());
    }
    let started = Instant::now();
    let health = Client::new()
        .get(node.url("/health"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("/health answers despite idle connections");
    assert_eq!(health.status(), StatusCode::OK);
    // It waited its turn behind the idle connections (8 at a time, each closed after
    // 1 s): without the bound it would have been answered at once.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "served after {waited:?}: the connection bound did not hold"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert_eq!(
        node.state.store().record_count().unwrap(),
        0,
        "the stalled upload stored nothing"
    );
}
