//! The search against brute force: on random small tables, for every model, metric and
//! suppression limit, the optimum the pruned search finds has the least loss of all
//! valid transformations (each evaluated on its own). And the metrics on a table small
//! enough to compute them by hand.

use medmesh_anon::{Anonymizer, Config, Hierarchy, Metric, PrivacyModel, Table};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn table(seed: u64, rows: usize) -> Table {
    let mut rng = Rng(seed);
    let mut t = Table::with_columns(&["age", "zip", "sex", "dx"]).unwrap();
    for _ in 0..rows {
        let age = (20 + rng.below(50)).to_string();
        let zip = format!("0213{}", rng.below(6));
        let sex = ["F", "M"][rng.below(2) as usize].to_string();
        let dx = ["a", "b", "c", "d", "e"][rng.below(5).min(rng.below(5)) as usize].to_string();
        t.push_row(&[age, zip, sex, dx]).unwrap();
    }
    t
}

fn config(t: &Table, models: &str, limit: f64, metric: Metric) -> Config {
    let values = |c: &str| t.column(c).unwrap().dictionary().iter().map(String::as_str);
    Config {
        quasi_identifiers: vec![
            Hierarchy::intervals("age", values("age"), &[5, 10, 20]).unwrap(),
            Hierarchy::zip_codes("zip", values("zip")).unwrap(),
            Hierarchy::flat("sex", values("sex")),
        ],
        models: PrivacyModel::parse_all(models).unwrap(),
        sensitive_hierarchies: vec![Hierarchy::from_arx_csv(
            "dx",
            "a;ab;*\nb;ab;*\nc;cde;*\nd;cde;*\ne;cde;*\n",
            ';',
        )
        .unwrap()],
        suppression_limit: limit,
        metric,
    }
}

#[test]
fn the_search_finds_the_brute_force_optimum() {
    let metrics = [
        Metric::EntropyMonotonic,
        Metric::Entropy,
        Metric::Discernibility,
        Metric::DiscernibilityStar,
        Metric::AverageClassSize,
        Metric::Loss,
    ];
    let models = [
        "k=3",
        "k=10",
        "distinct-l=2(dx)",
        "entropy-l=2(dx);k=2",
        "recursive-cl=3,2(dx)",
        "equal-t=0.3(dx)",
        "hierarchical-t=0.2(dx);k=4",
    ];
    let mut compared = 0;
    for seed in 1..=4u64 {
        let t = table(seed, 300);
        for models in models {
            for limit in [0.0, 0.05] {
                for metric in metrics {
                    let anonymizer =
                        Anonymizer::new(&t, config(&t, models, limit, metric)).unwrap();
                    let found = anonymizer.search();
                    let mut best: Option<f64> = None;
                    for age in 0..5 {
                        for zip in 0..6 {
                            for sex in 0..2 {
                                if let Some(s) = anonymizer.evaluate(&[age, zip, sex]).unwrap() {
                                    best = Some(best.map_or(s.loss, |b: f64| b.min(s.loss)));
                                }
                            }
                        }
                    }
                    let case = format!("seed {seed}, {models}, limit {limit}, {metric}");
                    match (found.optimum, best) {
                        (None, None) => {}
                        (Some(s), Some(b)) => {
                            let relative = (s.loss - b).abs() / b.abs().max(1e-300);
                            assert!(
                                relative <= 1e-12,
                                "{case}: search {} at {:?}, brute force {b}",
                                s.loss,
                                s.levels
                            );
                            // The levels found are valid, and give the loss reported.
                            let again = anonymizer.evaluate(&s.levels).unwrap().expect("valid");
                            assert_eq!(again.loss, s.loss, "{case}");
                        }
                        (s, b) => {
                            panic!("{case}: search {:?}, brute force {b:?}", s.map(|s| s.loss))
                        }
                    }
                    assert!(found.nodes_checked <= found.nodes_total);
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 4 * 7 * 2 * 6);
}

#[test]
fn metrics_by_hand() {
    // One quasi-identifier, hierarchy x,y → g1; z,w → g2 (w never occurs); then *.
    let mut t = Table::with_columns(&["a"]).unwrap();
    for v in ["x", "x", "y", "z"] {
        t.push_row(&[v]).unwrap();
    }
    let hierarchy = Hierarchy::from_arx_csv("a", "x;g1;*\ny;g1;*\nz;g2;*\nw;g2;*\n", ';').unwrap();
    let evaluate = |k: u64, limit: f64, metric: Metric, levels: [usize; 1]| {
        let config = Config {
            quasi_identifiers: vec![hierarchy.clone()],
            models: vec![PrivacyModel::KAnonymity { k }],
            sensitive_hierarchies: vec![],
            suppression_limit: limit,
            metric,
        };
        Anonymizer::new(&t, config)
            .unwrap()
            .evaluate(&levels)
            .unwrap()
            .map(|s| s.loss)
    };
    // Loss: a row's share of the domain (4 values), normalized from N/4 to N.
    assert_eq!(evaluate(1, 0.0, Metric::Loss, [0]), Some(0.0));
    let third = evaluate(1, 0.0, Metric::Loss, [1]).unwrap();
    assert!((third - 1.0 / 3.0).abs() < 1e-9, "{third}");
    assert_eq!(evaluate(1, 0.0, Metric::Loss, [2]), Some(1.0));
    // k = 2 at level 0 suppresses y and z (2 rows of 4, within 50 %): each costs 1.
    let half = evaluate(2, 0.5, Metric::Loss, [0]).unwrap();
    assert!((half - 0.5).abs() < 1e-9, "{half}");
    assert_eq!(
        evaluate(2, 0.25, Metric::Loss, [0]),
        None,
        "2 rows exceed 25 %"
    );
    // DM* counts every class; DM charges a suppressed row N.
    assert_eq!(
        evaluate(2, 0.5, Metric::DiscernibilityStar, [0]),
        Some(4.0 + 1.0 + 1.0)
    );
    assert_eq!(
        evaluate(2, 0.5, Metric::Discernibility, [0]),
        Some(4.0 + 4.0 + 4.0)
    );
    // AECS: 4 rows / (1 kept class + 1 for the suppressed).
    assert_eq!(evaluate(2, 0.5, Metric::AverageClassSize, [0]), Some(2.0));
    assert_eq!(evaluate(1, 0.0, Metric::AverageClassSize, [1]), Some(2.0));
    // Entropy at level 1: x (2 rows) and y (1) in g1 of 3: −(2·log2(2/3) + log2(1/3)).
    let expected = -(2.0 * (2.0f64 / 3.0).log2() + (1.0f64 / 3.0).log2());
    let entropy = evaluate(1, 0.0, Metric::EntropyMonotonic, [1]).unwrap();
    assert!((entropy - expected).abs() < 1e-9, "{entropy} vs {expected}");
    // Non-monotonic entropy adds the suppressed rows' own: y, z suppressed at level 0,
    // two values of one each: 1·log2(2/1) twice = 2.
    let with_suppressed = evaluate(2, 0.5, Metric::Entropy, [0]).unwrap();
    assert!((with_suppressed - 2.0).abs() < 1e-9, "{with_suppressed}");
}
