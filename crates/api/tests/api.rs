//! The HTTP API against a real node on a free local port: every endpoint's success,
//! unauthenticated, unauthorised, malformed, oversized and unknown-id answers, streaming
//! upload and download, rate limiting, and Sign-In with Ethereum with a real wallet key.

use alloy_signer::Signer;
use alloy_signer_local::PrivateKeySigner;
use medmesh_core::siwe::SiweMessage;
use medmesh_testkit::node::TestNode;
use medmesh_testkit::{noise, shared_data};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{json, Value};

const UNKNOWN_ID: &str = "bafyreidsvr2dooaaqhs7pkoape6s7sj5di6lxfpvgbu7kb2zj5cphq53ba";

fn client() -> Client {
    Client::new()
}

async fn get_json(node: &TestNode, path: &str, token: &str) -> Value {
    call(node, Method::GET, path, Some(token))
        .await
        .json()
        .await
        .unwrap()
}

/// Audit entries with `action`, read through the API.
async fn audited(node: &TestNode, action: &str) -> Vec<Value> {
    let audit = get_json(node, "/v1/audit?limit=1000", &node.read_token).await;
    audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

async fn call(node: &TestNode, method: Method, path: &str, token: Option<&str>) -> Response {
    let mut req = client().request(method, node.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Asserts a problem+json answer with `status` whose detail mentions `needle`.
async fn assert_problem(resp: Response, status: StatusCode, needle: &str) -> Value {
    assert_eq!(resp.status(), status, "{:?}", resp.url().path());
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "problem answers are problem+json"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(needle),
        "detail {detail:?} lacks {needle:?}"
    );
    assert!(body["type"]
        .as_str()
        .unwrap()
        .starts_with("urn:medmesh:problem:"));
    body
}

async fn upload(
    node: &TestNode,
    bytes: Vec<u8>,
    query: &str,
    content_type: Option<&str>,
) -> Response {
    let mut req = client()
        .post(node.url(&format!("/v1/records{query}")))
        .bearer_auth(&node.write_token)
        .body(bytes);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

async fn upload_ok(
    node: &TestNode,
    bytes: Vec<u8>,
    query: &str,
    content_type: Option<&str>,
) -> Value {
    let resp = upload(node, bytes, query, content_type).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn health_metrics_openapi_and_docs_are_public() {
    let node = TestNode::start().await;
    let health: Value = call(&node, Method::GET, "/health", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let doc: Value = call(&node, Method::GET, "/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/records",
        "/v1/records/{id}",
        "/v1/records/{id}/content",
        "/v1/auth/siwe",
        "/v1/audit/verify",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let docs = call(&node, Method::GET, "/docs", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        docs.contains("/openapi.json") && !docs.contains("cdn"),
        "docs page must be self-contained"
    );
    let metrics = call(&node, Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "medmesh_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("medmesh_records 0"));
}

#[tokio::test]
async fn upload_search_info_download_delete_round_trip() {
    let node = TestNode::start().await;
    let fhir = std::fs::read(shared_data("fhir/synthea-bundle-a.json")).unwrap();
    let created = upload_ok(&node, fhir.clone(), "?patient=MRN-42", None).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["meta"]["content_type"], "application/fhir+json",
        "sniffed"
    );
    assert_eq!(created["meta"]["size"], fhir.len());
    let hl7 = std::fs::read(shared_data("hl7v2/adt.hl7")).unwrap();
    let hl7_id = upload_ok(&node, hl7, "", Some("application/hl7-v2")).await["id"].clone();

    let info: Value = get_json(&node, &format!("/v1/records/{id}"), &node.read_token).await;
    assert_eq!(info["meta"]["patient"], "MRN-42");
    assert_eq!(info["chunks"], 1);
    assert_eq!(info["recipients"].as_array().unwrap().len(), 1);

    let resp = call(
        &node,
        Method::GET,
        &format!("/v1/records/{id}/content"),
        Some(&node.read_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    assert_eq!(
        resp.headers()["content-length"],
        fhir.len().to_string().as_str()
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), fhir);

    let page: Value = get_json(&node, "/v1/records?patient=MRN-42", &node.read_token).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    let page: Value = get_json(
        &node,
        "/v1/records?type=application/hl7-v2",
        &node.read_token,
    )
    .await;
    assert_eq!(page["records"][0]["id"], hl7_id);
    // Paging: one per page, the cursor leads to the second and last page.
    let first: Value = get_json(&node, "/v1/records?limit=1", &node.read_token).await;
    let next = first["next_since"].as_str().unwrap();
    let second: Value = get_json(
        &node,
        &format!("/v1/records?limit=1&since={next}"),
        &node.read_token,
    )
    .await;
    assert_eq!(second["records"][0]["id"], hl7_id);
    assert!(second["next_since"].is_null());

    let removed: Value = call(
        &node,
        Method::DELETE,
        &format!("/v1/records/{id}"),
        Some(&node.write_token),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(removed["blocks_removed"], 2);
    assert_problem(
        call(
            &node,
            Method::GET,
            &format!("/v1/records/{id}"),
            Some(&node.read_token),
        )
        .await,
        StatusCode::NOT_FOUND,
        "no record",
    )
    .await;
}

#[tokio::test]
async fn large_upload_streams_and_verifies() {
    let node = TestNode::start().await;
    let data = noise(24 << 20, 77);
    let created = upload_ok(&node, data.clone(), "", Some("application/dicom")).await;
    let id = created["id"].as_str().unwrap();
    let body = call(
        &node,
        Method::GET,
        &format!("/v1/records/{id}/content"),
        Some(&node.read_token),
    )
    .await
    .bytes()
    .await
    .unwrap();
    assert!(
        body.as_ref() == data.as_slice(),
        "24 MiB record differs after the round trip"
    );
}

#[tokio::test]
async fn every_protected_endpoint_refuses_missing_and_bad_tokens() {
    let node = TestNode::start().await;
    let id = UNKNOWN_ID;
    let endpoints = [
        (Method::GET, "/v1/records".to_string()),
        (Method::POST, "/v1/records".to_string()),
        (Method::GET, format!("/v1/records/{id}")),
        (Method::DELETE, format!("/v1/records/{id}")),
        (Method::GET, format!("/v1/records/{id}/content")),
        (Method::GET, "/v1/keys/institution".to_string()),
        (Method::GET, "/v1/audit".to_string()),
        (Method::GET, "/v1/audit/verify".to_string()),
        (Method::GET, "/v1/auth/whoami".to_string()),
        (Method::POST, "/v1/admin/gc".to_string()),
        (Method::POST, "/v1/admin/check".to_string()),
        (Method::GET, "/v1/admin/tokens".to_string()),
        (Method::DELETE, "/v1/admin/tokens/abc".to_string()),
    ];
    for (method, path) in &endpoints {
        let resp = call(&node, method.clone(), path, None).await;
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer",
            "{method} {path}"
        );
        assert_problem(resp, StatusCode::UNAUTHORIZED, "Authorization").await;
        let resp = call(&node, method.clone(), path, Some("mm_0000_bogus")).await;
        assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid or revoked").await;
        let resp = call(&node, method.clone(), path, Some("mms_unknown")).await;
        assert_problem(resp, StatusCode::UNAUTHORIZED, "unknown session").await;
    }
    // Denials are audited, by client address (the bogus tokens prove nothing) and in
    // words; repeats of one kind (caller, refusal) within a minute only count, so the
    // 39 refusals are one entry at once and one summary when the window ends.
    let denied = audited(&node, "access_denied").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["actor"], "ip:127.0.0.1");
    let reason = denied[0]["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("missing `Authorization"), "{reason}");
    node.state.services().denials().flush().await;
    let denied = audited(&node, "access_denied").await;
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert_eq!(
        denied[1]["detail"]["repeated"],
        (endpoints.len() * 3 - 1).to_string()
    );
}

#[tokio::test]
async fn scopes_are_enforced_and_audited() {
    let node = TestNode::start().await;
    let resp = upload(&node, b"x".to_vec(), "", None).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let read = Some(node.read_token.as_str());
    let write = Some(node.write_token.as_str());
    let post_read = client()
        .post(node.url("/v1/records"))
        .bearer_auth(&node.read_token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_problem(post_read, StatusCode::FORBIDDEN, "scope `write`").await;
    assert_problem(
        call(
            &node,
            Method::DELETE,
            &format!("/v1/records/{UNKNOWN_ID}"),
            read,
        )
        .await,
        StatusCode::FORBIDDEN,
        "scope `write`",
    )
    .await;
    assert_problem(
        call(&node, Method::POST, "/v1/admin/gc", write).await,
        StatusCode::FORBIDDEN,
        "scope `admin`",
    )
    .await;
    assert_problem(
        call(&node, Method::GET, "/v1/admin/tokens", write).await,
        StatusCode::FORBIDDEN,
        "scope `admin`",
    )
    .await;
    let gc: Value = call(&node, Method::POST, "/v1/admin/gc", Some(&node.admin_token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(gc["blocks_removed"], 0);
    // One entry per caller and kind of refusal (repeats are summarised later).
    let denials = audited(&node, "access_denied").await;
    assert_eq!(denials.len(), 2, "{denials:?}");
    assert!(denials
        .iter()
        .all(|e| e["actor"].as_str().unwrap().starts_with("token:")));
}

#[tokio::test]
async fn malformed_unknown_and_oversized_inputs() {
    let node = TestNode::start_with(|c| c.max_record_bytes = 1 << 20).await;
    let read = Some(node.read_token.as_str());
    for path in ["/v1/records/not-a-cid", "/v1/records/not-a-cid/content"] {
        assert_problem(
            call(&node, Method::GET, path, read).await,
            StatusCode::BAD_REQUEST,
            "not a record id",
        )
        .await;
    }
    let chunk_cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    assert_problem(
        call(
            &node,
            Method::GET,
            &format!("/v1/records/{chunk_cid}"),
            read,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "chunk",
    )
    .await;
    for path in [
        format!("/v1/records/{UNKNOWN_ID}"),
        format!("/v1/records/{UNKNOWN_ID}/content"),
    ] {
        assert_problem(
            call(&node, Method::GET, &path, read).await,
            StatusCode::NOT_FOUND,
            "no record",
        )
        .await;
    }
    assert_problem(
        call(
            &node,
            Method::DELETE,
            &format!("/v1/records/{UNKNOWN_ID}"),
            Some(&node.write_token),
        )
        .await,
        StatusCode::NOT_FOUND,
        "no record",
    )
    .await;
    assert_problem(
        call(
            &node,
            Method::DELETE,
            "/v1/admin/tokens/ffffffff",
            Some(&node.admin_token),
        )
        .await,
        StatusCode::NOT_FOUND,
        "no token",
    )
    .await;
    for (query, needle) in [
        ("?since=yesterday", "RFC 3339"),
        ("?limit=0", "between 1 and"),
        ("?limit=abc", "limit"),
        ("?type=nonsense", "not a content type"),
        ("?patient=", "patient reference"),
    ] {
        assert_problem(
            call(&node, Method::GET, &format!("/v1/records{query}"), read).await,
            StatusCode::BAD_REQUEST,
            needle,
        )
        .await;
    }
    assert_problem(
        call(&node, Method::GET, "/v1/audit?limit=5000", read).await,
        StatusCode::BAD_REQUEST,
        "between 1 and",
    )
    .await;
    assert_problem(
        upload(&node, b"x".to_vec(), "", Some("not a type")).await,
        StatusCode::BAD_REQUEST,
        "not a content type",
    )
    .await;
    assert_problem(
        upload(&node, b"x".to_vec(), "?patient=%0A", None).await,
        StatusCode::BAD_REQUEST,
        "patient reference",
    )
    .await;

    // Oversized: declared by Content-Length, and streamed without a length.
    assert_problem(
        upload(&node, vec![0u8; (1 << 20) + 1], "", None).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "limit",
    )
    .await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..3).map(|_| Ok(vec![1u8; 600 << 10])).collect();
    let streamed = client()
        .post(node.url("/v1/records"))
        .bearer_auth(&node.write_token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_problem(streamed, StatusCode::PAYLOAD_TOO_LARGE, "limit").await;
    // JSON bodies: malformed, wrong shape, oversized.
    let post_json = |path: &'static str, body: String| {
        client()
            .post(node.url(path))
            .bearer_auth(&node.admin_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_problem(
        post_json("/v1/admin/tokens", "{".into()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "",
    )
    .await;
    assert_problem(
        post_json("/v1/admin/tokens", json!({"name": "x"}).to_string())
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "scope",
    )
    .await;
    assert_problem(
        post_json(
            "/v1/admin/tokens",
            json!({"name": "x", "scope": "root"}).to_string(),
        )
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "not a token scope",
    )
    .await;
    assert_problem(
        post_json("/v1/auth/siwe", "x".repeat(100 << 10))
            .await
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "",
    )
    .await;
    // Unknown routes and methods.
    assert_problem(
        call(&node, Method::GET, "/v2/nothing", read).await,
        StatusCode::NOT_FOUND,
        "openapi.json",
    )
    .await;
    assert_problem(
        call(&node, Method::PUT, "/v1/records", read).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
    )
    .await;

    // Nothing was stored by any of it, and the audit log still verifies.
    let page: Value = get_json(&node, "/v1/records", &node.read_token).await;
    assert!(page["records"].as_array().unwrap().is_empty());
    let verify: Value = get_json(&node, "/v1/audit/verify", &node.read_token).await;
    assert_eq!(verify["ok"], true);
}

#[tokio::test]
async fn tokens_can_be_created_used_and_revoked_over_the_api() {
    let node = TestNode::start().await;
    let resp = client()
        .post(node.url("/v1/admin/tokens"))
        .bearer_auth(&node.admin_token)
        .json(&json!({"name": "lab robot", "scope": "write"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    let who: Value = get_json(&node, "/v1/auth/whoami", &secret).await;
    assert_eq!(
        (who["kind"].as_str(), who["scope"].as_str()),
        (Some("operator"), Some("write"))
    );
    let list: Value = get_json(&node, "/v1/admin/tokens", &node.admin_token).await;
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("secret").is_none()));
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        call(
            &node,
            Method::DELETE,
            &format!("/v1/admin/tokens/{id}"),
            Some(&node.admin_token)
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(
        call(&node, Method::GET, "/v1/auth/whoami", Some(&secret)).await,
        StatusCode::UNAUTHORIZED,
        "revoked",
    )
    .await;
}

#[tokio::test]
async fn institution_certificate_is_served() {
    let node = TestNode::start().await;
    let resp = call(
        &node,
        Method::GET,
        "/v1/keys/institution",
        Some(&node.read_token),
    )
    .await;
    assert_eq!(resp.headers()["content-type"], "application/pgp-keys");
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----") && !text.contains("PRIVATE"));
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let node = TestNode::start_with(|c| {
        c.rate_per_second = 0.5;
        c.rate_burst = 3.0;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            call(
                &node,
                Method::GET,
                "/v1/auth/whoami",
                Some(&node.read_token)
            )
            .await
            .status(),
            StatusCode::OK
        );
    }
    let resp = call(
        &node,
        Method::GET,
        "/v1/auth/whoami",
        Some(&node.read_token),
    )
    .await;
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "Retry-After").await;
    // Another token has its own bucket.
    assert_eq!(
        call(
            &node,
            Method::GET,
            "/v1/auth/whoami",
            Some(&node.write_token)
        )
        .await
        .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn tampered_record_is_refused_before_streaming() {
    let node = TestNode::start().await;
    let created = upload_ok(&node, b"tamper target".to_vec(), "", None).await;
    let id: medmesh_core::RecordId = created["id"].as_str().unwrap().parse().unwrap();
    let store = node.state.store();
    let mut manifest = store.manifest(&id).unwrap();
    manifest.body.meta.ciphertext[0] ^= 1;
    let (forged, bytes) = manifest.to_block().unwrap();
    store.blocks().put(forged.cid(), &bytes).unwrap();
    // Not indexed: unknown. The original still downloads.
    let resp = call(
        &node,
        Method::GET,
        &format!("/v1/records/{forged}/content"),
        Some(&node.read_token),
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "a forged manifest must fail its signature check"
    );
    let ok = call(
        &node,
        Method::GET,
        &format!("/v1/records/{id}/content"),
        Some(&node.read_token),
    )
    .await;
    assert_eq!(ok.bytes().await.unwrap().as_ref(), b"tamper target");
}

// --- Sign-In with Ethereum -------------------------------------------------------

async fn nonce(node: &TestNode) -> Value {
    call(node, Method::POST, "/v1/auth/nonce", None)
        .await
        .json()
        .await
        .unwrap()
}

fn message(node: &TestNode, wallet: &PrivateKeySigner, nonce: &str) -> SiweMessage {
    let now = time::OffsetDateTime::now_utc();
    SiweMessage {
        domain: node.addr.to_string(),
        address: wallet.address().to_checksum(None),
        statement: Some("Sign in to medmesh".into()),
        uri: node.url("/"),
        version: "1".into(),
        chain_id: 31337,
        nonce: nonce.into(),
        issued_at: now,
        expiration_time: Some(now + time::Duration::minutes(10)),
        not_before: None,
        request_id: None,
    }
}

async fn sign_in(node: &TestNode, wallet: &PrivateKeySigner, msg: &SiweMessage) -> Response {
    let text = msg.to_string();
    let sig = wallet.sign_message(text.as_bytes()).await.unwrap();
    client()
        .post(node.url("/v1/auth/siwe"))
        .json(&json!({"message": text, "signature": format!("0x{}", hex(&sig.as_bytes()))}))
        .send()
        .await
        .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn siwe_sign_in_and_its_failures() {
    let node = TestNode::start().await;
    let wallet = PrivateKeySigner::random();
    let n = nonce(&node).await;
    assert_eq!(n["domain"], node.addr.to_string());
    let msg = message(&node, &wallet, n["nonce"].as_str().unwrap());
    let resp = sign_in(&node, &wallet, &msg).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let session: Value = resp.json().await.unwrap();
    let token = session["token"].as_str().unwrap().to_string();
    assert_eq!(session["address"], wallet.address().to_checksum(None));
    let who: Value = get_json(&node, "/v1/auth/whoami", &token).await;
    assert_eq!(who["kind"], "wallet");
    // A wallet session has no operator rights: records need on-chain grants.
    assert_problem(
        call(&node, Method::GET, "/v1/records", Some(&token)).await,
        StatusCode::FORBIDDEN,
        "grants",
    )
    .await;

    // Reused nonce.
    assert_problem(
        sign_in(&node, &wallet, &msg).await,
        StatusCode::UNAUTHORIZED,
        "already used",
    )
    .await;
    // Nonce never issued.
    let bogus = message(&node, &wallet, "neverissued123");
    assert_problem(
        sign_in(&node, &wallet, &bogus).await,
        StatusCode::UNAUTHORIZED,
        "nonce",
    )
    .await;
    // Wrong domain.
    let mut wrong_domain = message(
        &node,
        &wallet,
        nonce(&node).await["nonce"].as_str().unwrap(),
    );
    wrong_domain.domain = "evil.example:443".into();
    assert_problem(
        sign_in(&node, &wallet, &wrong_domain).await,
        StatusCode::UNAUTHORIZED,
        "domain",
    )
    .await;
    // Expired.
    let mut expired = message(
        &node,
        &wallet,
        nonce(&node).await["nonce"].as_str().unwrap(),
    );
    expired.expiration_time = Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
    assert_problem(
        sign_in(&node, &wallet, &expired).await,
        StatusCode::UNAUTHORIZED,
        "expired",
    )
    .await;
    // No expiry at all.
    let mut open_ended = message(
        &node,
        &wallet,
        nonce(&node).await["nonce"].as_str().unwrap(),
    );
    open_ended.expiration_time = None;
    assert_problem(
        sign_in(&node, &wallet, &open_ended).await,
        StatusCode::BAD_REQUEST,
        "Expiration Time",
    )
    .await;
    // Wrong chain.
    let mut chain = message(
        &node,
        &wallet,
        nonce(&node).await["nonce"].as_str().unwrap(),
    );
    chain.chain_id = 1;
    assert_problem(
        sign_in(&node, &wallet, &chain).await,
        StatusCode::UNAUTHORIZED,
        "chain",
    )
    .await;
    // Signed by someone else: the nonce stays usable for the real owner.
    let fresh = nonce(&node).await;
    let victim = message(&node, &wallet, fresh["nonce"].as_str().unwrap());
    let mallory = PrivateKeySigner::random();
    assert_problem(
        sign_in(&node, &mallory, &victim).await,
        StatusCode::UNAUTHORIZED,
        "signed by",
    )
    .await;
    assert_eq!(
        sign_in(&node, &wallet, &victim).await.status(),
        StatusCode::OK
    );
    // Garbage.
    let resp = client()
        .post(node.url("/v1/auth/siwe"))
        .json(&json!({"message": "hello", "signature": "0x00"}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "Sign-In with Ethereum").await;
    let text = message(
        &node,
        &wallet,
        nonce(&node).await["nonce"].as_str().unwrap(),
    )
    .to_string();
    let resp = client()
        .post(node.url("/v1/auth/siwe"))
        .json(&json!({"message": text, "signature": "0xzz"}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "65 bytes").await;

    let sign_ins = audited(&node, "sign_in").await.len();
    assert_eq!(sign_ins, 2);
}
