//! Every case of ARX's own test suite on the Adult table (`../shared/data/adult/arx/`):
//! the engine must find the optimum ARX finds, to a relative difference of 1e-9 in the
//! loss. Where several transformations tie on the loss, any of them is right; the
//! levels ARX reports must then give the same loss.

use std::time::Instant;

use medmesh_anon::{Anonymizer, Config, Hierarchy, Metric, PrivacyModel, Table};
use medmesh_testkit::shared_data;

struct Case {
    name: String,
    quasi_identifiers: Vec<String>,
    models: Vec<PrivacyModel>,
    suppression_limit: f64,
    metric: Metric,
    expected: Option<(f64, Vec<usize>)>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(shared_data("adult/arx/cases.tsv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 8, "cases.tsv line {line:?}");
            let expected = (f[6] != "none").then(|| {
                (
                    f[6].parse().unwrap(),
                    f[7].split(',').map(|l| l.parse().unwrap()).collect(),
                )
            });
            Case {
                name: f[0].to_owned(),
                quasi_identifiers: f[1].split(',').map(str::to_owned).collect(),
                models: PrivacyModel::parse_all(f[3]).unwrap(),
                suppression_limit: f[4].parse().unwrap(),
                metric: Metric::parse(f[5]).unwrap(),
                expected,
            }
        })
        .collect()
}

fn hierarchy(column: &str) -> Hierarchy {
    let path = shared_data(&format!("adult/arx/adult_hierarchy_{column}.csv"));
    Hierarchy::from_arx_csv(column, &std::fs::read_to_string(path).unwrap(), ';').unwrap()
}

fn adult() -> Table {
    let file = std::fs::File::open(shared_data("adult/arx/adult.csv")).unwrap();
    Table::from_csv(file, b';').unwrap()
}

#[test]
fn every_arx_case_finds_arx_optimum() {
    let table = adult();
    assert_eq!(table.len(), 30_162);
    let mut failures = Vec::new();
    for case in cases() {
        let config = Config {
            quasi_identifiers: case
                .quasi_identifiers
                .iter()
                .map(|c| hierarchy(c))
                .collect(),
            models: case.models.clone(),
            sensitive_hierarchies: vec![hierarchy("occupation")],
            suppression_limit: case.suppression_limit,
            metric: case.metric,
        };
        let anonymizer = Anonymizer::new(&table, config).unwrap();
        let started = Instant::now();
        let outcome = anonymizer.search();
        let elapsed = started.elapsed();
        let found = outcome.optimum.as_ref().map(|s| (s.loss, s.levels.clone()));
        eprintln!(
            "{}: found {:?}, expected {:?}; {} of {} nodes checked in {:.1?}",
            case.name, found, case.expected, outcome.nodes_checked, outcome.nodes_total, elapsed
        );
        match (&outcome.optimum, &case.expected) {
            (None, None) => {}
            (Some(found), Some((loss, levels))) => {
                let relative = (found.loss - loss).abs() / loss.abs().max(f64::MIN_POSITIVE);
                if relative > 1e-9 {
                    failures.push(format!(
                        "{}: loss {} at {:?}, ARX {} at {:?}",
                        case.name, found.loss, found.levels, loss, levels
                    ));
                } else if &found.levels != levels {
                    // A tie: ARX's levels must be valid and give the same loss.
                    let theirs = anonymizer.evaluate(levels).unwrap();
                    match theirs {
                        Some(t) if ((t.loss - loss).abs() / loss.abs()) <= 1e-9 => {}
                        other => failures.push(format!(
                            "{}: tie at {:?}, but ARX's {:?} evaluates to {:?}",
                            case.name,
                            found.levels,
                            levels,
                            other.map(|t| t.loss)
                        )),
                    }
                }
            }
            (found, expected) => failures.push(format!(
                "{}: found {:?}, ARX expects {:?}",
                case.name,
                found.as_ref().map(|s| (s.loss, &s.levels)),
                expected
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "cases not matched:\n{}",
        failures.join("\n")
    );
}
