//! Key release through the HTTP API, end to end on a real EVM (anvil): consent link,
//! on-chain grant by the patient, signed key request by the researcher, and the
//! researcher decrypting the record with the released key.

use std::sync::Arc;

use alloy::primitives::B256;
use alloy::signers::Signer;
use medmesh_chain::{KeyReleaser, KeyRequest};
use medmesh_core::{KeyWrap, KeyWrapAlgorithm, RecordId};
use medmesh_crypto::RecordCipher;
use medmesh_testkit::chain::{grant_scope, Chain, BACKENDS};
use medmesh_testkit::node::TestNode;
use medmesh_testkit::{institution, passphrase};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn node_with_chain(chain: &Chain) -> TestNode {
    let node = TestNode::start().await;
    let owner = institution(0);
    let releaser = KeyReleaser::new(
        node.state.store().clone(),
        owner.certificate().unwrap(),
        Arc::new(std::sync::Mutex::new(
            owner.unlock_decryption(&passphrase()).unwrap(),
        )),
        Arc::new(chain.cache()),
        chain.provider(&chain.admin),
        chain.deployment.node_registry,
    );
    assert!(node.state.enable_key_release(Arc::new(releaser)));
    node
}

async fn post(node: &TestNode, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(node.url(path))
        .bearer_auth(&node.read_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn key_request(node: &TestNode, chain: &Chain, id: &str, purpose: u32) -> reqwest::Response {
    let challenge: Value = post(node, "/v1/access/challenge", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let challenge = challenge["challenge"].as_str().unwrap().to_string();
    let record: RecordId = id.parse().unwrap();
    let grantee = chain.researcher.address();
    let message = KeyRequest::message(&record, grantee, purpose, &challenge);
    let signature = chain
        .researcher
        .sign_message(message.as_bytes())
        .await
        .unwrap();
    let certificate =
        String::from_utf8(institution(1).certificate().unwrap().to_armored().unwrap()).unwrap();
    post(
        node,
        &format!("/v1/records/{id}/key"),
        json!({
            "grantee": grantee.to_string(),
            "purpose": purpose,
            "certificate": certificate,
            "challenge": challenge,
            "signature": format!("0x{}", hex::encode(signature.as_bytes())),
        }),
    )
    .await
}

#[tokio::test]
async fn researcher_gets_the_key_only_under_a_grant() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let node = node_with_chain(&chain).await;
        let plaintext =
            std::fs::read(medmesh_testkit::shared_data("fhir/synthea-bundle-a.json")).unwrap();
        let created: Value = reqwest::Client::new()
            .post(node.url("/v1/records"))
            .bearer_auth(&node.write_token)
            .body(plaintext.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["id"].as_str().unwrap().to_string();

        // Before a consent link: refused with a reason.
        let resp = key_request(&node, &chain, &id, 42).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.text().await.unwrap().contains("not linked"));

        let link: Value = reqwest::Client::new()
            .put(node.url(&format!("/v1/records/{id}/consent-link")))
            .bearer_auth(&node.write_token)
            .json(&json!({"patient": chain.patient.address().to_string()}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let scope: B256 = link["scope"].as_str().unwrap().parse().unwrap();

        // The researcher publishes its certificate; without a grant: no key.
        chain
            .publish_key(&chain.researcher, &institution(1).certificate().unwrap())
            .await;
        let resp = key_request(&node, &chain, &id, 42).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.text().await.unwrap().contains("no grant"));

        // The patient grants; the key comes, and opens the record.
        grant_scope(&chain, scope, 42, chain.now().await + 3600).await;
        let resp = key_request(&node, &chain, &id, 42).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let released: Value = resp.json().await.unwrap();
        assert_eq!(released["access"], "grant");
        let record: RecordId = id.parse().unwrap();
        let mut body = node.state.store().manifest(&record).unwrap().body;
        body.key_wraps = vec![KeyWrap {
            recipient: institution(1).certificate().unwrap().id(),
            algorithm: KeyWrapAlgorithm::OpenPgpMlKem768X25519,
            message: hex::decode(released["key_wrap"].as_str().unwrap()).unwrap(),
        }];
        let key = institution(1)
            .unlock_decryption(&passphrase())
            .unwrap()
            .unwrap_key(&body)
            .unwrap();
        let cipher = RecordCipher::new(&key, &body.envelope).unwrap();
        let mut chunk = node.state.store().blocks().get(&body.chunks[0]).unwrap();
        assert_eq!(
            cipher.open_chunk(0, true, &mut chunk).unwrap(),
            plaintext.as_slice()
        );

        // Wrong purpose, and a request with a made-up challenge.
        let resp = key_request(&node, &chain, &id, 6).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.text().await.unwrap().contains("wrong purpose"));
        let resp = post(
            &node,
            &format!("/v1/records/{id}/key"),
            json!({"grantee": chain.researcher.address().to_string(), "purpose": 42, "certificate": "x", "challenge": "nope", "signature": "0x00"}),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn without_a_chain_key_release_is_unavailable() {
    let node = TestNode::start().await;
    let resp = post(&node, "/v1/access/challenge", json!({})).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.text().await.unwrap().contains("--chain-rpc"));
}
