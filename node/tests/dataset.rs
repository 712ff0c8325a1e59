//! `medmesh dataset anonymize` end to end: the UCI Adult file reaches k = 5 and k = 10
//! (checked on the released table itself), records of a stopped node become a
//! de-identified table, and every bad policy gets a message naming what is wrong and a
//! non-zero exit, with no table written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use medmesh_testkit::shared_data;

mod common;
use common::{init, medmesh};

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/anonymization")
}

/// The shipped Adult policy with its models replaced and hierarchy paths absolute,
/// written into `dir`.
fn adult_policy(dir: &Path, models: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(docs().join("adult.toml")).unwrap();
    let hierarchies = docs().join("adult");
    let text = text
        .replace("models = [\"k=5\"]", &format!("models = [{models}]"))
        .replace(
            "hierarchy = \"adult/",
            &format!("hierarchy = \"{}/", hierarchies.display()),
        );
    let path = dir.join("policy.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn anonymize(dir: &Path, policy: &Path, out: &Path) -> Output {
    medmesh(&dir.join("unused"))
        .args(["dataset", "anonymize", "--csv"])
        .arg(shared_data("adult/adult.data"))
        .arg("--policy")
        .arg(policy)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

const QUASI_IDENTIFIERS: [&str; 8] = [
    "age",
    "workclass",
    "education",
    "marital-status",
    "occupation",
    "race",
    "sex",
    "native-country",
];

#[test]
fn adult_reaches_k5_and_k10_with_levels_suppression_and_utility() {
    let dir = tempfile::tempdir().unwrap();
    for k in [5u64, 10] {
        let policy = adult_policy(dir.path(), &format!("\"k={k}\""), |t| t);
        let out = dir.path().join(format!("released-{k}.csv"));
        let run = anonymize(dir.path(), &policy, &out);
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "k={k}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        for needle in [
            "levels:",
            "suppressed rows:",
            "entropy:",
            "transformations checked:",
        ] {
            assert!(stdout.contains(needle), "k={k}: no `{needle}` in\n{stdout}");
        }
        assert!(
            stdout.contains("rows dropped for a missing value: 2399"),
            "{stdout}"
        );

        // The released table itself: every class has k rows or more, the suppressed
        // rows (counted in the report) are left out and within 4 %, education-num is gone.
        let suppressed: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("suppressed rows: "))
            .expect("the report counts suppressed rows")
            .parse()
            .unwrap();
        assert!(
            suppressed <= 30_162 * 4 / 100,
            "k={k}: {suppressed} suppressed"
        );
        let mut csv = csv::Reader::from_path(&out).unwrap();
        let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_owned).collect();
        assert!(!header.iter().any(|h| h == "education-num"), "{header:?}");
        let positions: Vec<usize> = QUASI_IDENTIFIERS
            .iter()
            .map(|q| header.iter().position(|h| h == q).unwrap())
            .collect();
        let mut classes: HashMap<Vec<String>, u64> = HashMap::new();
        let mut rows = 0u64;
        for record in csv.records() {
            let record = record.unwrap();
            rows += 1;
            let key: Vec<String> = positions.iter().map(|&p| record[p].to_owned()).collect();
            *classes.entry(key).or_default() += 1;
        }
        assert_eq!(rows + suppressed, 30_162);
        let smallest = classes.values().min().copied().unwrap();
        assert!(smallest >= k, "k={k}: a class of {smallest} rows");
    }
}

#[test]
fn bad_policies_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    type Edit = Box<dyn Fn(String) -> String>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "\"k=5\"",
            Box::new(|t: String| t.replace("name = \"race\"", "name = \"ethnicity\"")),
            "unknown column `ethnicity`",
        ),
        (
            "\"k=5\"",
            Box::new(|t: String| {
                t.replace(
                    "[[columns]]\nname = \"fnlwgt\"\nrole = \"insensitive\"\n",
                    "",
                )
            }),
            "column `fnlwgt` of the input is not declared",
        ),
        (
            "\"k=40000\"",
            Box::new(|t| t),
            "k = 40000 is larger than the table (30162 rows)",
        ),
        (
            "\"k=0\"",
            Box::new(|t| t),
            "privacy model `k=0`: the value must be a whole number of at least 1",
        ),
        (
            "\"entropy-l=3(salary-class)\"",
            Box::new(|t| t),
            "salary-class",
        ),
        (
            "\"k=5\"",
            Box::new(|t: String| t.replace("[privacy]", "[privacy\n")),
            "policy file",
        ),
        (
            "\"k=5\"",
            Box::new(|t: String| t.replace("metric = \"entropy\"", "metric = \"precision\"")),
            "unknown metric `precision`",
        ),
    ];
    for (models, edit, expected) in cases {
        let policy = adult_policy(dir.path(), models, edit);
        let out = dir.path().join("released.csv");
        let run = anonymize(dir.path(), &policy, &out);
        let stderr = String::from_utf8_lossy(&run.stderr);
        if expected == "salary-class" {
            // Entropy 3-diversity of a two-valued column cannot hold: refused.
            assert!(!run.status.success());
            assert!(stderr.contains("no transformation meets"), "{stderr}");
        } else {
            assert!(!run.status.success(), "{models}: accepted");
            assert!(
                stderr.contains(expected),
                "{models}: `{expected}` not in: {stderr}"
            );
        }
        assert!(!out.exists(), "{models}: a table was written");
    }
    // A value the hierarchy does not have: named with its column.
    let policy = adult_policy(dir.path(), "\"k=5\"", |t| t);
    let trimmed = dir.path().join("age.csv");
    let ages = std::fs::read_to_string(docs().join("adult/age.csv")).unwrap();
    std::fs::write(
        &trimmed,
        ages.lines()
            .filter(|l| !l.starts_with("39;"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        &format!("{}/age.csv", docs().join("adult").display()),
        &trimmed.display().to_string(),
    );
    std::fs::write(&policy, text).unwrap();
    let out = dir.path().join("released.csv");
    let run = anonymize(dir.path(), &policy, &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("value `39` of column `age` is not in its hierarchy"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn records_of_a_stopped_node_become_a_de_identified_table() {
    let dir = tempfile::tempdir().unwrap();
    let data = init(dir.path(), "node");
    let put = medmesh(&data)
        .arg("put")
        .arg(shared_data("fhir/synthea-bundle-a.json"))
        .args(["--patient", "MRN-SYN-1", "--type", "application/fhir+json"])
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let out = dir.path().join("observations.csv");
    let run = medmesh(&data)
        .args([
            "dataset",
            "anonymize",
            "--from-records",
            "--patient",
            "MRN-SYN-1",
            "--policy",
        ])
        .arg(docs().join("synthea-observations.toml"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("187 rows"), "{stdout}");
    let released = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        released.lines().count(),
        188,
        "a header and one row per Observation"
    );
    for identifier in [
        "Aaron697",
        "Brekke496",
        "999-93-7537",
        "02718",
        "1945-12-10",
        "555-677-3119",
    ] {
        assert!(!released.contains(identifier), "{identifier} released");
    }
    // The read is audited as any read of the record.
    let audit = medmesh(&data)
        .args(["audit", "log", "--limit", "1000"])
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("\"record_read\""), "{audit}");
}
