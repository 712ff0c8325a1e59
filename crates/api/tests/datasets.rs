//! The dataset endpoints over HTTP: previews from CSV and from records, no hierarchy
//! file read on the node's disk, privacy budgets set once, differentially private
//! counts charged and refused with what remains, every query audited, bad queries
//! named.

use medmesh_testkit::node::TestNode;
use medmesh_testkit::shared_data;
use serde_json::{json, Value};

async fn send(
    node: &TestNode,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, node.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// A synthetic table: 400 rows of age, ZIP, sex and diagnosis (no real data).
fn synthetic_csv() -> String {
    let mut csv = String::from("name,age,zip,sex,diagnosis\n");
    let mut state = 7u64;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    for row in 0..400 {
        let age = 20 + next(60);
        let zip = ["02139", "02141", "02142", "10001", "10002"][next(5) as usize];
        let sex = ["F", "M"][next(2) as usize];
        let diagnosis = ["E11.9", "I10", "J45", "K21.9", "M54.5"][next(5) as usize];
        csv.push_str(&format!("Person {row},{age},{zip},{sex},{diagnosis}\n"));
    }
    csv
}

const POLICY: &str = r#"
[[columns]]
name = "name"
role = "identifier"
kind = "name"
[[columns]]
name = "age"
role = "quasi-identifier"
kind = "age"
bands = [5, 10, 20]
[[columns]]
name = "zip"
role = "quasi-identifier"
kind = "zip"
builder = "zip"
[[columns]]
name = "sex"
role = "quasi-identifier"
hierarchy = "sex"
[[columns]]
name = "diagnosis"
role = "sensitive"
[privacy]
models = ["k=5", "distinct-l=2(diagnosis)"]
suppression_limit = 0.02
metric = "entropy"
"#;

fn preview_body(csv: &str) -> Value {
    json!({
        "policy": POLICY,
        "hierarchies": {"sex": "F;*\nM;*\n"},
        "csv": csv,
        "sample_rows": 50,
    })
}

#[tokio::test]
async fn previews_anonymize_csv_and_records_without_reading_node_files() {
    let node = TestNode::start().await;
    let csv = synthetic_csv();
    let (status, preview) = send(
        &node,
        reqwest::Method::POST,
        "/v1/datasets/preview",
        &node.read_token,
        Some(preview_body(&csv)),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    let solution = &preview["report"]["solution"];
    assert_eq!(solution["levels"].as_array().unwrap().len(), 3, "{preview}");
    assert!(
        solution["suppressed_rows"].as_u64().unwrap() <= 8,
        "{preview}"
    );
    assert_eq!(
        preview["columns"],
        json!(["age", "zip", "sex", "diagnosis"]),
        "names removed"
    );
    assert_eq!(preview["sample"].as_array().unwrap().len(), 50);
    let smallest: u64 = solution["class_sizes"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse::<u64>().unwrap())
        .min()
        .unwrap();
    assert!(smallest >= 5, "{preview}");
    assert!(
        !preview.to_string().contains("Person 1"),
        "a name was released"
    );

    // A hierarchy file on the node's disk is never read for a request.
    let mut body = preview_body(&csv);
    body["policy"] = json!(POLICY.replace("hierarchy = \"sex\"", "hierarchy = \"/etc/passwd\""));
    body["hierarchies"] = json!({});
    let (status, problem) = send(
        &node,
        reqwest::Method::POST,
        "/v1/datasets/preview",
        &node.read_token,
        Some(body),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("cannot read hierarchy files"));

    // Neither csv nor records, or both.
    let mut body = preview_body(&csv);
    body.as_object_mut().unwrap().remove("csv");
    let (status, _) = send(
        &node,
        reqwest::Method::POST,
        "/v1/datasets/preview",
        &node.read_token,
        Some(body),
    )
    .await;
    assert_eq!(status, 400);
    // A value missing from its hierarchy is named.
    let mut body = preview_body(&csv.replace(",F,", ",X,"));
    body["sample_rows"] = json!(1);
    let (status, problem) = send(
        &node,
        reqwest::Method::POST,
        "/v1/datasets/preview",
        &node.read_token,
        Some(body),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("value `X` of column `sex`"),
        "{problem}"
    );

    // From records: a FHIR bundle stored for a patient, decrypted in memory only.
    let bundle = std::fs::read(shared_data("fhir/synthea-bundle-a.json")).unwrap();
    let stored = reqwest::Client::new()
        .post(node.url("/v1/records?patient=MRN-PREVIEW-1"))
        .bearer_auth(&node.write_token)
        .header("content-type", "application/fhir+json")
        .body(bundle)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status().as_u16(), 201);
    let policy = include_str!("../../../docs/anonymization/synthea-observations.toml");
    let (status, preview) = send(
        &node,
        reqwest::Method::POST,
        "/v1/datasets/preview",
        &node.read_token,
        Some(json!({"policy": policy, "records": {"patient": "MRN-PREVIEW-1"}})),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["report"]["rows"], 187);
    for identifier in [
        "Aaron697",
        "Brekke496",
        "999-93-7537",
        "02718",
        "555-677-3119",
    ] {
        assert!(
            !preview.to_string().contains(identifier),
            "{identifier} released"
        );
    }
    let (status, problem) = send(
        &node,
        reqwest::Method::POST,
        "/v1/datasets/preview",
        &node.read_token,
        Some(json!({"policy": policy, "records": {"patient": "MRN-NOBODY"}})),
    )
    .await;
    assert_eq!(status, 404, "{problem}");
}

#[tokio::test]
async fn counts_are_noisy_charged_refused_past_the_budget_and_audited() {
    let node = TestNode::start().await;
    let csv = synthetic_csv();
    let women = csv.lines().filter(|l| l.contains(",F,")).count() as i64;
    let stored = reqwest::Client::new()
        .post(node.url("/v1/records"))
        .bearer_auth(&node.write_token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status().as_u16(), 201);
    let id = stored.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let budget_path = format!("/v1/datasets/{id}/budget");
    let counts_path = format!("/v1/datasets/{id}/counts");
    let count = json!({"filters": [{"column": "sex", "equals": "F"}],
                       "mechanism": "laplace", "epsilon": 0.4});

    // No budget yet: refused before anything is read.
    let (status, _) = send(
        &node,
        reqwest::Method::POST,
        &counts_path,
        &node.read_token,
        Some(count.clone()),
    )
    .await;
    assert_eq!(status, 404);
    // Setting one takes `admin`, and happens once.
    let (status, _) = send(
        &node,
        reqwest::Method::PUT,
        &budget_path,
        &node.read_token,
        Some(json!({"epsilon": 1.0})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, budget) = send(
        &node,
        reqwest::Method::PUT,
        &budget_path,
        &node.admin_token,
        Some(json!({"epsilon": 1.0})),
    )
    .await;
    assert_eq!(status, 201, "{budget}");
    let (status, _) = send(
        &node,
        reqwest::Method::PUT,
        &budget_path,
        &node.admin_token,
        Some(json!({"epsilon": 100.0})),
    )
    .await;
    assert_eq!(status, 409);

    for spent in [0.4, 0.8] {
        let (status, answer) = send(
            &node,
            reqwest::Method::POST,
            &counts_path,
            &node.read_token,
            Some(count.clone()),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let noisy = answer["counts"][0]["count"].as_i64().unwrap();
        // Discrete Laplace of scale 2.5: |noise| > 60 has probability below 1e-10.
        assert!((noisy - women).abs() <= 60, "{noisy} vs {women}");
        assert_eq!(answer["epsilon_spent"], 0.4);
        let left = answer["budget"]["epsilon_remaining"].as_f64().unwrap();
        assert!((left - (1.0 - spent)).abs() < 1e-9, "{answer}");
    }
    let (status, problem) = send(
        &node,
        reqwest::Method::POST,
        &counts_path,
        &node.read_token,
        Some(count.clone()),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(
        problem["type"],
        "urn:medmesh:problem:privacy-budget-exceeded"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("remaining ε = 0.2"),
        "{problem}"
    );
    let (_, budget) = send(
        &node,
        reqwest::Method::GET,
        &budget_path,
        &node.read_token,
        None,
    )
    .await;
    assert!(
        (budget["epsilon_spent"].as_f64().unwrap() - 0.8).abs() < 1e-9,
        "{budget}"
    );

    // A group-by over a public domain: every cell answered, one charge.
    let (status, answer) = send(&node, reqwest::Method::POST, &counts_path, &node.read_token,
        Some(json!({"group_by": ["diagnosis"], "group_domains": [["E11.9", "I10", "J45", "K21.9", "M54.5", "Z99"]],
                    "mechanism": "laplace", "epsilon": 0.1, "clamp_at_zero": true}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["counts"].as_array().unwrap().len(), 6);
    assert!(answer["counts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["count"].as_i64().unwrap() >= 0));

    // Bad queries, named; none of them spends anything.
    for (body, status, needle) in [
        (
            json!({"filters": [{"column": "gender", "equals": "F"}], "mechanism": "laplace", "epsilon": 0.01}),
            422,
            "gender",
        ),
        (
            json!({"filters": [{"column": "sex", "equals": "F", "min": 1}], "mechanism": "laplace", "epsilon": 0.01}),
            400,
            "exactly one test",
        ),
        (
            json!({"mechanism": "laplace", "epsilon": 0.01, "delta": 1e-6}),
            400,
            "takes no `delta`",
        ),
        (
            json!({"mechanism": "exponential", "epsilon": 0.01}),
            400,
            "exponential",
        ),
        (
            json!({"group_by": ["sex"], "mechanism": "laplace", "epsilon": 0.01}),
            422,
            "domain",
        ),
        (json!({"mechanism": "laplace", "epsilon": -1.0}), 422, "ε"),
    ] {
        let (got, problem) = send(
            &node,
            reqwest::Method::POST,
            &counts_path,
            &node.read_token,
            Some(body.clone()),
        )
        .await;
        assert_eq!(got, status, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{body}: {problem}"
        );
    }
    let (_, after) = send(
        &node,
        reqwest::Method::GET,
        &budget_path,
        &node.read_token,
        None,
    )
    .await;
    assert!(
        (after["epsilon_spent"].as_f64().unwrap() - 0.9).abs() < 1e-9,
        "{after}"
    );

    // Every query that reached the budget is in the audit log, refused ones too.
    let (_, audit) = send(
        &node,
        reqwest::Method::GET,
        "/v1/audit?limit=1000",
        &node.read_token,
        None,
    )
    .await;
    let queries: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "dp_query")
        .collect();
    assert!(queries.len() >= 4, "{queries:?}");
    assert!(queries.iter().any(|e| e["detail"]["outcome"]
        .as_str()
        .unwrap_or("")
        .starts_with("refused")));

    // Counts are over CSV tables only.
    let other = node.upload(b"not a table".to_vec()).await;
    let (status, _) = send(
        &node,
        reqwest::Method::PUT,
        &format!("/v1/datasets/{other}/budget"),
        &node.admin_token,
        Some(json!({"epsilon": 1.0})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, problem) = send(
        &node,
        reqwest::Method::POST,
        &format!("/v1/datasets/{other}/counts"),
        &node.read_token,
        Some(count),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
}
