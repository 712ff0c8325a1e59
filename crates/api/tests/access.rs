//! Key release through the HTTP API, end to end on a real EVM (anvil): consent link,
//! on-chain grant by the patient, signed key request by the researcher, and the
//! researcher decrypting the record with the released key.

use alloy::primitives::B256;
use alloy::signers::Signer;
use medmesh_core::RecordId;
use medmesh_store::AuditAction;
use medmesh_testkit::chain::{grant_scope, open_released, Chain, BACKENDS};
use medmesh_testkit::institution;
use medmesh_testkit::node::TestNode;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn node_with_chain(chain: &Chain) -> TestNode {
    let node = TestNode::start().await;
    node.connect_chain(chain);
    node
}

/// Uploads a record with the write token; returns its id.
async fn upload(node: &TestNode, bytes: Vec<u8>) -> String {
    node.upload(bytes).await
}

/// Links record `id` to the chain's patient; returns the record's consent scope.
async fn link_to_patient(node: &TestNode, chain: &Chain, id: &str) -> B256 {
    let link: Value = node
        .link(id, &chain.patient.address().to_string())
        .await
        .json()
        .await
        .unwrap();
    link["scope"].as_str().unwrap().parse().unwrap()
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
    let certificate =
        String::from_utf8(institution(1).certificate().unwrap().to_armored().unwrap()).unwrap();
    node.request_key(&chain.researcher, id, purpose, &certificate)
        .await
}

#[tokio::test]
async fn researcher_gets_the_key_only_under_a_grant() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let node = node_with_chain(&chain).await;
        let plaintext =
            std::fs::read(medmesh_testkit::shared_data("fhir/synthea-bundle-a.json")).unwrap();
        let id = upload(&node, plaintext.clone()).await;

        // Before the researcher published a certificate: refused for that, whatever
        // the record (the check looks at the grantee only).
        let resp = key_request(&node, &chain, &id, 42).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.text().await.unwrap().contains("published on chain"));
        chain
            .publish_key(&chain.researcher, &institution(1).certificate().unwrap())
            .await;

        // Not linked to a patient, not stored here at all, linked but not granted: one
        // answer, so a caller without a grant learns nothing about the CID.
        let unknown = medmesh_core::RecordId::from_manifest_cid(medmesh_core::cid_of(
            medmesh_core::Codec::DagCbor,
            b"a record this node never had",
        ))
        .unwrap()
        .to_string();
        let refusal = |resp: reqwest::Response| async move {
            let status = resp.status();
            let body: Value = resp.json().await.unwrap();
            (status, body["type"].clone(), body["detail"].clone())
        };
        let unlinked = refusal(key_request(&node, &chain, &id, 42).await).await;
        let not_here = refusal(key_request(&node, &chain, &unknown, 42).await).await;
        let scope = link_to_patient(&node, &chain, &id).await;
        let not_granted = refusal(key_request(&node, &chain, &id, 42).await).await;
        assert_eq!(unlinked.0, StatusCode::FORBIDDEN);
        assert!(
            unlinked
                .2
                .as_str()
                .unwrap()
                .starts_with("no grant on chain"),
            "{unlinked:?}"
        );
        assert_eq!(unlinked, not_here);
        assert_eq!(unlinked, not_granted);
        // The causes are in the owner's audit log only.
        let reasons: Vec<String> = node
            .state
            .store()
            .audit_page(0, 10_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == AuditAction::KeyReleaseDenied)
            .map(|e| e.detail["reason"].clone())
            .collect();
        for cause in ["not linked", "unknown record", "no grant"] {
            assert!(
                reasons.iter().any(|r| r.contains(cause)),
                "{cause}: {reasons:?}"
            );
        }

        // The patient grants; the key comes, and opens the record.
        grant_scope(&chain, scope, 42, chain.now().await + 3600).await;
        let resp = key_request(&node, &chain, &id, 42).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let released: Value = resp.json().await.unwrap();
        assert_eq!(released["access"], "grant");
        let record: RecordId = id.parse().unwrap();
        let wrap = hex::decode(released["key_wrap"].as_str().unwrap()).unwrap();
        assert_eq!(
            open_released(node.state.store(), &record, wrap, 1),
            plaintext
        );

        // Wrong purpose, and a request with a made-up challenge.
        let resp = key_request(&node, &chain, &id, 6).await;
        assert_eq!(
            refusal(resp).await,
            unlinked,
            "a wrong purpose answers alike"
        );
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

fn signed_grant_body(
    chain: &Chain,
    scope: B256,
    nonce: u64,
    signature: &[u8],
    expiry: u64,
    deadline: u64,
) -> Value {
    json!({
        "patient": chain.patient.address().to_string(),
        "grantee": chain.researcher.address().to_string(),
        "kind": 0,
        "scope": scope.to_string(),
        "purpose": 42,
        "expiry": expiry,
        "nonce": nonce,
        "deadline": deadline,
        "signature": format!("0x{}", hex::encode(signature)),
    })
}

async fn post_as(node: &TestNode, token: &str, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(node.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A patient signs a grant and a revocation offline (EIP-712); the node relays them and
/// pays the gas; the grant list and key release follow.
#[tokio::test]
async fn signed_grants_are_relayed_listed_and_enforced() {
    use alloy::sol_types::SolStruct;
    use medmesh_chain::bindings::{GrantConsent, RevokeConsent};
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let node = node_with_chain(&chain).await;
        let info: Value = reqwest::Client::new()
            .get(node.url("/v1/chain"))
            .bearer_auth(&node.read_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["chain_id"], chain.chain_id);
        let domain =
            medmesh_chain::consent_domain(chain.chain_id, chain.deployment.consent_registry);

        let id = upload(&node, b"relayed consent".to_vec()).await;
        let scope = link_to_patient(&node, &chain, &id).await;
        chain
            .publish_key(&chain.researcher, &institution(1).certificate().unwrap())
            .await;

        let (expiry, deadline) = (chain.now().await + 3600, chain.now().await + 600);
        let grant = GrantConsent {
            patient: chain.patient.address(),
            grantee: chain.researcher.address(),
            kind: 0,
            scope,
            purpose: 42,
            expiry,
            nonce: alloy::primitives::U256::ZERO,
            deadline: alloy::primitives::U256::from(deadline),
        };
        let sig = chain
            .patient
            .sign_hash(&grant.eip712_signing_hash(&domain))
            .await
            .unwrap();
        let body = signed_grant_body(&chain, scope, 0, &sig.as_bytes(), expiry, deadline);
        // A read token cannot make the node pay gas.
        assert_eq!(
            post_as(&node, &node.read_token, "/v1/grants", body.clone())
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
        let resp = post_as(&node, &node.write_token, "/v1/grants", body.clone()).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
        let relayed: Value = serde_json::from_str(&text).unwrap();
        // Replaying the same signature: the contract refuses it, and says why.
        let resp = post_as(&node, &node.write_token, "/v1/grants", body).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(resp.text().await.unwrap().contains("InvalidNonce"));

        let listed: Value = reqwest::Client::new()
            .get(node.url(&format!("/v1/grants?patient={}", chain.patient.address())))
            .bearer_auth(&node.read_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed[0]["id"], relayed["grant_id"]);
        assert_eq!(listed[0]["revoked"], false);
        assert_eq!(
            key_request(&node, &chain, &id, 42).await.status(),
            StatusCode::OK
        );

        let revoke = RevokeConsent {
            patient: chain.patient.address(),
            grantee: chain.researcher.address(),
            kind: 0,
            scope,
            purpose: 42,
            nonce: alloy::primitives::U256::from(1),
            deadline: alloy::primitives::U256::from(deadline),
        };
        let sig = chain
            .patient
            .sign_hash(&revoke.eip712_signing_hash(&domain))
            .await
            .unwrap();
        let mut body = signed_grant_body(&chain, scope, 1, &sig.as_bytes(), 0, deadline);
        body.as_object_mut().unwrap().remove("expiry");
        let resp = post_as(&node, &node.write_token, "/v1/grants/revoke", body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
        let resp = key_request(&node, &chain, &id, 42).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.text().await.unwrap().contains("no grant on chain"));

        // Both relays are in the audit log, under the operator who asked, with their
        // transactions; the refused key request under its caller, naming the grantee.
        let entries = node.state.store().audit_page(0, 10_000).unwrap();
        let of = |action: AuditAction| -> Vec<_> {
            entries.iter().filter(|e| e.action == action).collect()
        };
        let write_actor = format!(
            "token:{}",
            node.write_token
                .split('_')
                .nth(1)
                .expect("mm_<id>_<secret>")
        );
        for (action, transaction) in [
            (AuditAction::GrantRelay, &relayed["transaction"]),
            (AuditAction::RevocationRelay, &Value::Null),
        ] {
            let found = of(action);
            assert_eq!(found.len(), 1, "{backend:?} {action:?}: {entries:?}");
            assert_eq!(found[0].actor, write_actor);
            assert_eq!(found[0].subject, relayed["grant_id"].as_str().unwrap());
            if let Some(tx) = transaction.as_str() {
                assert_eq!(found[0].detail["transaction"], tx);
            }
        }
        let denied = of(AuditAction::KeyReleaseDenied);
        assert!(
            denied.iter().any(|e| e.actor.starts_with("token:")
                && e.detail["grantee"] == chain.researcher.address().to_string()
                && e.detail["reason"].contains("revoked")),
            "{denied:?}"
        );

        // Malformed relay bodies are 400s.
        let resp = post_as(
            &node,
            &node.write_token,
            "/v1/grants",
            json!({"patient": "nope"}),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
}
