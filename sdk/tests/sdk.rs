//! The SDK against a real node on a free local port.

use alloy_signer_local::PrivateKeySigner;
use medmesh_sdk::{wallet, Client, Error, SearchQuery, UploadOptions};
use medmesh_testkit::node::TestNode;
use medmesh_testkit::{files_under, noise, shared_data};

fn operator(node: &TestNode, token: &str) -> Client {
    Client::new(&node.url("")).unwrap().with_token(token)
}

#[tokio::test]
async fn upload_download_search_delete() {
    let node = TestNode::start().await;
    let writer = operator(&node, &node.write_token);
    let reader = operator(&node, &node.read_token);
    assert_eq!(writer.health().await.unwrap().status, "ok");

    let path = shared_data("dicom/CT_small.dcm");
    let options = UploadOptions {
        patient: Some("MRN-7".into()),
        ..Default::default()
    };
    let created = writer.upload_file(&path, options).await.unwrap();
    assert_eq!(created.meta.content_type.as_str(), "application/dicom");
    let id = created.id.to_string();
    assert_eq!(
        reader.download(&id).await.unwrap(),
        std::fs::read(&path).unwrap()
    );
    let info = reader.record(&id).await.unwrap();
    assert_eq!(info.meta.patient.unwrap().as_str(), "MRN-7");

    for i in 0..4u8 {
        let options = UploadOptions {
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        writer.upload(vec![i; 10], options).await.unwrap();
    }
    let query = SearchQuery {
        content_type: Some("text/plain".into()),
        limit: Some(3),
        ..Default::default()
    };
    let first_page = reader.search(&query).await.unwrap();
    assert_eq!(first_page.records.len(), 3);
    assert!(first_page.next_since.is_some());
    let all = reader.search_all(&query).await.unwrap();
    assert_eq!(all.len(), 4, "pagination follows next_since to the end");
    let everything = reader.search_all(&SearchQuery::default()).await.unwrap();
    assert_eq!(everything.len(), 5);

    let removed = writer.delete(&id).await.unwrap();
    assert_eq!(removed.blocks_removed, 2);
    let err = reader.download(&id).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("no record"), "{err}");
}

#[tokio::test]
async fn large_file_streams_both_ways() {
    let node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = noise(40 << 20, 5);
    let input = dir.path().join("scan.bin");
    std::fs::write(&input, &data).unwrap();
    let writer = operator(&node, &node.write_token);
    let created = writer
        .upload_file(&input, UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(created.meta.size, 40 << 20);
    let output = dir.path().join("back.bin");
    let mut file = tokio::fs::File::create(&output).await.unwrap();
    let n = writer
        .download_to(&created.id.to_string(), &mut file)
        .await
        .unwrap();
    assert_eq!(n, 40 << 20);
    assert!(std::fs::read(&output).unwrap() == data);
}

#[tokio::test]
async fn corrupted_chunk_mid_stream_is_reported_as_truncated() {
    let node = TestNode::start().await;
    let writer = operator(&node, &node.write_token);
    let created = writer
        .upload(noise(3 << 20, 9), UploadOptions::default())
        .await
        .unwrap();
    let id = created.id.to_string();
    // Flip a bit in the last chunk's block file: the first chunks stream, then the cut.
    let manifest = node.state.store().manifest(&created.id).unwrap();
    let last = manifest.body.chunks.last().unwrap().to_string();
    let path = files_under(node.dir.path())
        .into_iter()
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&last))
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[7] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    match writer.download(&id).await {
        Err(Error::Truncated { expected, got }) => {
            assert_eq!(expected, 3 << 20);
            assert!(got < expected);
        }
        other => panic!("expected a truncated download, got {other:?}"),
    }
}

#[tokio::test]
async fn problems_carry_server_details() {
    let node = TestNode::start().await;
    let anonymous = Client::new(&node.url("/")).unwrap();
    let err = anonymous.search(&SearchQuery::default()).await.unwrap_err();
    match &err {
        Error::Api { problem } => {
            assert_eq!(problem.status, 401);
            assert!(problem.detail.contains("Authorization"));
        }
        other => panic!("{other:?}"),
    }
    let reader = operator(&node, &node.read_token);
    let err = reader
        .upload(b"x".to_vec(), UploadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
    let err = reader.record("not-a-cid").await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(matches!(
        Client::new("127.0.0.1:8420"),
        Err(Error::InvalidUrl(_))
    ));
    let unreachable = Client::new("http://127.0.0.1:1").unwrap();
    assert!(matches!(unreachable.health().await, Err(Error::Http(_))));
}

#[tokio::test]
async fn wallet_sign_in_and_helpers() {
    let node = TestNode::start().await;
    let wallet_key = PrivateKeySigner::random();
    let client = Client::new(&node.url("")).unwrap();
    let (session_client, session) = client.sign_in(&wallet_key).await.unwrap();
    assert_eq!(session.address, wallet_key.address().to_checksum(None));
    let me = session_client.whoami().await.unwrap();
    assert_eq!(me.kind, "wallet");
    assert_eq!(
        session_client
            .search(&SearchQuery::default())
            .await
            .unwrap_err()
            .status(),
        Some(403)
    );

    let message = wallet::siwe_message(
        "example.org",
        "https://example.org",
        wallet_key.address(),
        1,
        "abcdefgh1234",
        time::Duration::minutes(5),
    );
    let signature = wallet::sign_siwe(&wallet_key, &message).await.unwrap();
    assert_eq!(
        wallet::verify_siwe(&message, &signature).unwrap(),
        wallet_key.address()
    );
    let other = PrivateKeySigner::random();
    let forged = wallet::sign_siwe(&other, &message).await.unwrap();
    assert!(wallet::verify_siwe(&message, &forged).is_err());
}

#[tokio::test]
async fn admin_operations() {
    let node = TestNode::start().await;
    let admin = operator(&node, &node.admin_token);
    let created = admin.create_token("robot", "read").await.unwrap();
    assert!(created.secret.starts_with("mm_"));
    let robot = operator(&node, &created.secret);
    assert_eq!(robot.whoami().await.unwrap().scope.as_deref(), Some("read"));
    assert!(admin
        .list_tokens()
        .await
        .unwrap()
        .iter()
        .any(|t| t.id == created.token.id));
    admin.revoke_token(&created.token.id).await.unwrap();
    assert_eq!(robot.whoami().await.unwrap_err().status(), Some(401));
    assert_eq!(admin.gc().await.unwrap().blocks_removed, 0);
    let check = admin.check().await.unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!(robot.check().await.unwrap_err().status(), Some(401));
    assert!(admin.audit_verify().await.unwrap().ok);
    let audit = admin.audit(0, 1000).await.unwrap();
    assert!(audit.entries.iter().any(|e| e.action == "token_create"));
    assert!(admin
        .institution_certificate()
        .await
        .unwrap()
        .contains("PGP PUBLIC KEY"));
    assert!(admin
        .openapi()
        .await
        .unwrap()
        .contains("\"openapi\": \"3.1.0\""));
}

#[tokio::test]
async fn datasets_preview_budget_and_counts() {
    use medmesh_sdk::{BudgetRequest, CountFilter, CountRequest, DatasetPreviewRequest};
    let node = TestNode::start().await;
    let writer = operator(&node, &node.write_token);
    let reader = operator(&node, &node.read_token);
    let admin = operator(&node, &node.admin_token);
    let mut csv = String::from("age,sex\n");
    for i in 0..100 {
        csv.push_str(&format!("{},{}\n", 30 + i % 40, ["F", "M"][i % 2]));
    }
    let policy = r#"
[[columns]]
name = "age"
role = "quasi-identifier"
kind = "age"
bands = [10, 20]
[[columns]]
name = "sex"
role = "insensitive"
[privacy]
models = ["k=10"]
"#;
    let preview = reader
        .preview_dataset(&DatasetPreviewRequest {
            policy: policy.into(),
            hierarchies: Default::default(),
            csv: Some(csv.clone()),
            records: None,
            sample_rows: Some(5),
        })
        .await
        .unwrap();
    assert_eq!(preview.sample.len(), 5);
    assert_eq!(preview.report["solution"]["levels"], serde_json::json!([1]));

    let options = UploadOptions {
        content_type: Some("text/csv".into()),
        ..Default::default()
    };
    let id = writer
        .upload(csv.into_bytes(), options)
        .await
        .unwrap()
        .id
        .to_string();
    let budget = admin
        .set_dataset_budget(
            &id,
            &BudgetRequest {
                epsilon: 0.5,
                delta: 0.0,
            },
        )
        .await
        .unwrap();
    assert_eq!(budget.epsilon_remaining, 0.5);
    let query = CountRequest {
        filters: vec![CountFilter {
            column: "sex".into(),
            equals: Some("F".into()),
            one_of: None,
            min: None,
            max: None,
        }],
        group_by: vec![],
        group_domains: vec![],
        mechanism: "laplace".into(),
        epsilon: 0.5,
        delta: None,
        clamp_at_zero: false,
    };
    let answer = reader.dataset_count(&id, &query).await.unwrap();
    assert_eq!(answer.counts.len(), 1);
    assert_eq!(answer.budget.epsilon_remaining, 0.0);
    let refused = reader.dataset_count(&id, &query).await.unwrap_err();
    assert_eq!(refused.status(), Some(403));
    assert_eq!(reader.dataset_budget(&id).await.unwrap().epsilon_spent, 0.5);
}
