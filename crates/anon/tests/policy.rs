//! Policies end to end on small tables: k over individuals (the individual column
//! counted, not released), Safe Harbor only, suppressed rows marked, and the refusals
//! that keep a policy from releasing what it should not.

use medmesh_anon::{policy, Policy, Table};

fn visits() -> Table {
    let mut t = Table::with_columns(&["patient", "age", "zip", "dx"]).unwrap();
    for (patient, age, zip, dx) in [
        ("A", "30", "02139", "I10"),
        ("A", "30", "02139", "J45"),
        ("B", "31", "02139", "I10"),
        ("B", "31", "02139", "E11"),
        ("C", "60", "10001", "J45"),
        ("C", "60", "10001", "I10"),
        ("D", "61", "10001", "E11"),
        ("D", "61", "10001", "J45"),
    ] {
        t.push_row(&[patient, age, zip, dx]).unwrap();
    }
    t
}

fn policy_with(privacy: &str) -> Policy {
    let text = format!(
        r#"
[[columns]]
name = "patient"
role = "identifier"
pseudonymize = true
[[columns]]
name = "age"
role = "quasi-identifier"
kind = "age"
bands = [5]
[[columns]]
name = "zip"
role = "quasi-identifier"
kind = "zip"
builder = "zip"
[[columns]]
name = "dx"
role = "sensitive"
[privacy]
{privacy}
"#
    );
    Policy::from_toml(&text, std::path::Path::new(".")).unwrap()
}

#[test]
fn k_counts_individuals_when_the_policy_names_them() {
    // By rows, each patient's two visits are a class of two: ages stay exact.
    let rows = policy::release(visits(), &policy_with("models = [\"k=2\"]"), [1; 32]).unwrap();
    assert_eq!(rows.solution.as_ref().unwrap().levels[0], 0, "{rows}");
    // By individuals, a class needs two patients: ages go to bands.
    let people = policy::release(
        visits(),
        &policy_with("models = [\"k=2\"]\nindividual = \"patient\""),
        [1; 32],
    )
    .unwrap();
    let solution = people.solution.as_ref().unwrap();
    assert_eq!(solution.levels[0], 1, "{people}");
    assert_eq!(solution.suppressed_rows, 0);
    let table = people.table.unwrap();
    assert_eq!(
        table.names(),
        ["age", "zip", "dx"],
        "the individual is counted, not released"
    );
    assert_eq!(table.len(), 8);
    let ages = table.column("age").unwrap().dictionary();
    assert!(
        ages.iter().all(|a| a == "30-34" || a == "60-64"),
        "{ages:?}"
    );
}

#[test]
fn policies_that_would_release_too_much_are_refused() {
    let refused = |privacy: &str, extra: &str| {
        let text = format!(
            r#"
[[columns]]
name = "patient"
role = "identifier"
pseudonymize = true
[[columns]]
name = "age"
role = "quasi-identifier"
{extra}
bands = [5]
[[columns]]
name = "zip"
role = "identifier"
kind = "other-unique-id"
pseudonymize = true
[[columns]]
name = "dx"
role = "sensitive"
[privacy]
{privacy}
"#
        );
        Policy::from_toml(&text, std::path::Path::new("."))
            .unwrap_err()
            .to_string()
    };
    let err = refused(
        "models = [\"k=2\"]\nindividual = \"patient\"",
        "kind = \"age\"",
    );
    assert!(err.contains("`zip` is pseudonymized"), "{err}");
    let err = refused(
        "models = [\"distinct-l=2(dx)\"]\nindividual = \"patient\"",
        "kind = \"age\"",
    );
    assert!(err.contains("name a k model"), "{err}");
    let err = refused(
        "models = [\"k=2\"]\nsuppression_limit = 1.5",
        "kind = \"age\"",
    );
    assert!(err.contains("between 0 and 1"), "{err}");
}

#[test]
fn safe_harbor_only_and_marked_suppression() {
    // No model: Safe Harbor's transformations, nothing generalized.
    let only = policy::release(visits(), &policy_with("models = []"), [2; 32]).unwrap();
    assert!(only.solution.is_none());
    let table = only.table.unwrap();
    assert_eq!(table.len(), 8);
    let zips = table.column("zip").unwrap().dictionary();
    assert!(zips.iter().all(|z| z == "021" || z == "100"), "{zips:?}");

    // One more patient, alone in their age band and ZIP: with k = 3 by rows and half
    // the rows allowed, the cheapest release suppresses them; marked, their row is `*`
    // in every column.
    let with_outlier = || {
        let mut t = visits();
        t.push_row(&["E", "45", "55555", "I10"]).unwrap();
        t
    };
    let marked = policy::release(
        with_outlier(),
        &policy_with("models = [\"k=3\"]\nsuppression_limit = 0.5\nsuppressed_rows = \"mark\"\nmetric = \"dm-star\""),
        [3; 32],
    )
    .unwrap();
    let suppressed = marked.solution.as_ref().unwrap().suppressed_rows as usize;
    assert_eq!(suppressed, 1, "{marked}");
    let table = marked.table.unwrap();
    assert_eq!(table.len(), 9, "marked rows stay");
    let all_stars = (0..table.len())
        .filter(|&r| table.row(r).iter().all(|v| *v == "*"))
        .count();
    assert_eq!(all_stars, suppressed);
    let dropped = policy::release(
        with_outlier(),
        &policy_with("models = [\"k=3\"]\nsuppression_limit = 0.5\nmetric = \"dm-star\""),
        [3; 32],
    )
    .unwrap();
    let dropped = dropped.table.unwrap();
    assert_eq!(dropped.len(), 8, "dropped by default");
    assert!(!dropped
        .column("zip")
        .unwrap()
        .dictionary()
        .iter()
        .any(|z| z == "555"));
}
