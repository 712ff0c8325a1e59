//! Key release between `medmesh node` processes with only libp2p between them: a
//! researcher's node C, which has no chain of its own, asks hospital A's node for a
//! record's key over `/medmesh/key/1.0.0`. Granted: the key comes back wrapped for the
//! researcher, who decrypts the blocks C fetched. Forged and replayed requests, a
//! revocation (refused within one block) and an owner that went offline (a clear error
//! naming it) are refused.

mod common;

use std::os::unix::fs::PermissionsExt;

use alloy::primitives::B256;
use alloy::signers::Signer;
use common::Proc;
use medmesh_core::{Cid, RecordId};
use medmesh_sdk::{Transfer, UploadOptions};
use medmesh_testkit::chain::{grant_scope, open_released_with, Backend, Chain, Mined};
use medmesh_testkit::{files_under, institution};
use serde_json::{json, Value};

/// Reads block `cid` from the store of the node in `dir` (another process holds the
/// store open; its block files are plain files).
fn block_in(dir: &std::path::Path, cid: &Cid) -> Vec<u8> {
    let name = format!("{cid}.data");
    let path = files_under(&dir.join("store/blocks"))
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == name))
        .unwrap_or_else(|| panic!("block {cid} is not in {}", dir.display()));
    std::fs::read(path).unwrap()
}

/// The audit entries of `node` with `action`, oldest first.
async fn audited(node: &Proc, action: &str) -> Vec<medmesh_sdk::AuditEntryView> {
    let page = node.client().audit(0, 1000).await.unwrap();
    page.entries
        .into_iter()
        .filter(|e| e.action == action)
        .collect()
}

/// A's chain flags: the test's embedded chain, A's account is the approved hospital.
fn chain_args(chain: &Chain, base: &std::path::Path) -> Vec<String> {
    let deployment = base.join("deployment.json");
    std::fs::write(&deployment, serde_json::to_vec(&chain.deployment).unwrap()).unwrap();
    let key = base.join("hospital.key");
    std::fs::write(
        &key,
        format!("0x{}\n", hex::encode(chain.hospital.to_bytes())),
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    vec![
        "--chain-rpc".into(),
        chain.endpoint.to_string(),
        "--chain-deployment".into(),
        deployment.display().to_string(),
        "--chain-key-file".into(),
        key.display().to_string(),
    ]
}

/// A key request sent by hand to `node`, for `owner`, as `grantee` but signed by
/// `signer`, with `challenge` (a fresh one from the owner through `node` when `None`).
async fn raw_key_request(
    node: &Proc,
    owner: &str,
    id: &str,
    grantee: &(impl Signer + Sync),
    signer: &(impl Signer + Sync),
    certificate: &str,
    challenge: Option<String>,
) -> (u16, Value, String) {
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", node.api);
    let challenge = match challenge {
        Some(c) => c,
        None => {
            let answer: Value = http
                .post(format!("{base}/v1/access/challenge"))
                .query(&[("owner", owner)])
                .bearer_auth(&node.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer["challenge"]
                .as_str()
                .expect("a challenge")
                .to_string()
        }
    };
    let record: RecordId = id.parse().unwrap();
    let message = medmesh_consent::key_request_message(&record, grantee.address(), 42, &challenge);
    let signature = signer.sign_message(message.as_bytes()).await.unwrap();
    let resp = http
        .post(format!("{base}/v1/records/{id}/key"))
        .bearer_auth(&node.token)
        .json(&json!({
            "grantee": grantee.address().to_string(),
            "purpose": 42,
            "certificate": certificate,
            "challenge": challenge,
            "signature": format!("0x{}", hex::encode(signature.as_bytes())),
            "owner": owner,
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap(), challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_researcher_on_another_node_gets_the_key_from_the_owner_over_libp2p() {
    let chain = Chain::start_on(Backend::Embedded).await;
    let base = tempfile::tempdir().unwrap();
    let args = chain_args(&chain, base.path());
    // C, the researcher's own node, reads the chain (no account) and reaches A over
    // libp2p only.
    let read_only: Vec<String> = args[..4].to_vec();
    let mut a = Proc::start_on_chain(base.path(), "a", &[], args);
    let c = Proc::start_on_chain(base.path(), "c", &[&a], read_only);

    let plaintext = b"HbA1c 6.4 % (synthetic), for a released key".to_vec();
    let id = a
        .client()
        .upload(
            plaintext.clone(),
            UploadOptions {
                patient: Some("MRN-KEY-0007".into()),
                content_type: None,
            },
        )
        .await
        .unwrap()
        .id
        .to_string();
    let link = a
        .client()
        .link_patient(&id, &chain.patient.address().to_string())
        .await
        .unwrap();
    let researcher_cert = institution(1).certificate().unwrap();
    chain.publish_key(&chain.researcher, &researcher_cert).await;
    let armored = String::from_utf8(researcher_cert.to_armored().unwrap()).unwrap();
    // C holds the record's blocks (public ciphertext) before any key exists for it.
    c.client()
        .fetch_record(&id, std::slice::from_ref(&a.peer_id), Transfer::FastPath)
        .await
        .unwrap();
    let researcher = c.client();
    let owner_peer = a.peer_id.clone();
    let owner = Some(owner_peer.as_str());

    // No grant yet: A's one refusal, unchanged through C.
    let err = researcher
        .request_key_from(&id, 42, &armored, &chain.researcher, owner)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("no grant on chain"), "{err}");

    // Granted: the key comes from A, wrapped for the researcher, and opens C's blocks.
    let scope: B256 = link.scope.parse().unwrap();
    grant_scope(&chain, scope, 42, chain.now().await + 3600).await;
    let released = researcher
        .request_key_from(&id, 42, &armored, &chain.researcher, owner)
        .await
        .unwrap();
    assert_eq!(released.released_by.as_deref(), Some(a.peer_id.as_str()));
    assert_eq!(released.access, "grant");
    assert_eq!(released.recipient, researcher_cert.id().to_string());
    let record: RecordId = id.parse().unwrap();
    let opened = open_released_with(
        |cid| block_in(&c.dir, cid),
        &record,
        hex::decode(&released.key_wrap).unwrap(),
        1,
    );
    assert_eq!(opened, plaintext);
    // Without naming A: C finds A on chain (A registered itself for the institution the
    // manifest names as owner) and asks it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !a
        .client()
        .chain_info()
        .await
        .unwrap()
        .registration
        .is_some_and(|r| r.registered)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "A never registered itself"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let found = researcher
        .request_key(&id, 42, &armored, &chain.researcher)
        .await
        .unwrap();
    assert_eq!(found.released_by.as_deref(), Some(a.peer_id.as_str()));
    // A CID nobody provides: C answers itself, with the one refusal (not "not found").
    let nowhere = RecordId::from_manifest_cid(medmesh_core::cid_of(
        medmesh_core::Codec::DagCbor,
        b"a record no node has",
    ))
    .unwrap()
    .to_string();
    let err = researcher
        .request_key(&nowhere, 42, &armored, &chain.researcher)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("no grant on chain"), "{err}");
    // A audited the release under the peer that asked.
    let audit = a.client().audit(0, 1000).await.unwrap();
    let release = audit
        .entries
        .iter()
        .find(|e| e.action == "key_release")
        .expect("the release is audited");
    assert_eq!(release.actor, format!("peer:{}", c.peer_id));
    assert_eq!(release.subject, id);
    // C audited who asked it, and what the owner answered.
    let forwarded = audited(&c, "key_request_forwarded").await;
    assert_eq!(forwarded.len(), 3, "{forwarded:?}");
    assert!(forwarded[0].detail["outcome"].starts_with("refused (not-allowed)"));
    assert_eq!(forwarded[1].detail["outcome"], "released (grant)");
    assert_eq!(forwarded[1].detail["owner"], a.peer_id);
    assert!(
        forwarded[1].actor.starts_with("token:"),
        "{:?}",
        forwarded[1]
    );

    // Forged: names the researcher, signed by a stranger. Replayed: a used challenge.
    let (status, body, _) = raw_key_request(
        &c,
        &a.peer_id,
        &id,
        &chain.researcher,
        &chain.stranger,
        &armored,
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not signed by the grantee"),
        "{body}"
    );
    let (status, body, used) = raw_key_request(
        &c,
        &a.peer_id,
        &id,
        &chain.researcher,
        &chain.researcher,
        &armored,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = raw_key_request(
        &c,
        &a.peer_id,
        &id,
        &chain.researcher,
        &chain.researcher,
        &armored,
        Some(used),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("bad challenge"),
        "{body}"
    );

    // The same from the command line of a third data dir: a grantee identity created
    // and published from the CLI, the key fetched over libp2p, the record decrypted.
    let cli_dir = base.path().join("grantee");
    let run = |args: &[&str]| {
        let out = common::medmesh(&cli_dir).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "medmesh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["init", "--institution", "Grantee's own node"]);
    let identity = cli_dir.join("grantee.pgp");
    run(&[
        "access",
        "create-identity",
        "--out",
        identity.to_str().unwrap(),
    ]);
    let wallet_key = base.path().join("guardian.key");
    std::fs::write(
        &wallet_key,
        format!("0x{}\n", hex::encode(chain.guardian.to_bytes())),
    )
    .unwrap();
    std::fs::set_permissions(&wallet_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let deployment = base.path().join("deployment.json");
    let published = run(&[
        "access",
        "publish-identity",
        "--certificate",
        &format!("{}.cert.asc", identity.display()),
        "--wallet-key",
        wallet_key.to_str().unwrap(),
        "--chain-rpc",
        chain.endpoint.as_str(),
        "--chain-deployment",
        deployment.to_str().unwrap(),
    ]);
    assert!(
        published.contains(&chain.guardian.address().to_string()),
        "{published}"
    );
    chain
        .consent(&chain.patient)
        .grant(
            chain.patient.address(),
            chain.guardian.address(),
            medmesh_testkit::chain::RECORD,
            scope,
            42,
            chain.now().await + 3600,
        )
        .mined()
        .await;
    let output = base.path().join("decrypted.bin");
    run(&[
        "access",
        "get",
        &id,
        "--owner",
        &a.peer_id,
        "--peer",
        &a.addr(),
        "--wallet-key",
        wallet_key.to_str().unwrap(),
        "--identity",
        identity.to_str().unwrap(),
        "--purpose",
        "42",
        "-o",
        output.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&output).unwrap(), plaintext);
    let mode = std::fs::metadata(&output).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The patient revokes: the next request is refused (A syncs consent first).
    let grant_id: B256 = released.access_id.parse().unwrap();
    chain.consent(&chain.patient).revoke(grant_id).mined().await;
    let err = researcher
        .request_key_from(&id, 42, &armored, &chain.researcher, owner)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("no grant on chain"), "{err}");
    // The causes are in A's audit log (a repeat of a kind within a minute is only
    // counted there, so the first refusal's cause is what shows now).
    let denials = audited(&a, "key_release_denied").await;
    for cause in ["no grant", "not signed by the grantee", "bad challenge"] {
        assert!(
            denials.iter().any(|e| e.detail["reason"].contains(cause)),
            "{cause}: {denials:?}"
        );
    }

    // The owner goes offline: a clear error naming it.
    a.kill();
    let err = researcher
        .request_key_from(&id, 42, &armored, &chain.researcher, owner)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(502), "{err}");
    assert!(err.to_string().contains(&owner_peer), "{err}");
}
