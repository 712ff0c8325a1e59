//! `cargo bench -p medmesh-anon --bench anonymize [-- adult|1m|10m]`: time to the
//! optimum and transformations checked on ARX's Adult case (k = 5, 4 % suppression,
//! monotonic entropy), and time and peak memory on synthetic tables of 1 000 000 and
//! 10 000 000 rows (10 quasi-identifiers). Figures go to `docs/benchmarks.md`.

#![allow(missing_docs, clippy::print_stdout)]

use std::time::Instant;

use medmesh_anon::{Anonymizer, Column, Config, Hierarchy, Metric, PrivacyModel, Table};

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if wants("adult") {
        adult();
    }
    if wants("1m") {
        synthetic(1_000_000);
    }
    if wants("10m") {
        synthetic(10_000_000);
    }
}

fn shared(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel)
}

fn adult() {
    let file = std::fs::File::open(shared("adult/arx/adult.csv")).expect("ARX's adult.csv");
    let table = Table::from_csv(file, b';').unwrap();
    let columns = [
        "sex",
        "age",
        "race",
        "marital-status",
        "education",
        "native-country",
        "workclass",
        "occupation",
        "salary-class",
    ];
    let hierarchies: Vec<Hierarchy> = columns
        .iter()
        .map(|c| {
            let text =
                std::fs::read_to_string(shared(&format!("adult/arx/adult_hierarchy_{c}.csv")))
                    .unwrap();
            Hierarchy::from_arx_csv(c, &text, ';').unwrap()
        })
        .collect();
    let config = Config {
        quasi_identifiers: hierarchies,
        models: vec![PrivacyModel::KAnonymity { k: 5 }],
        sensitive_hierarchies: Vec::new(),
        suppression_limit: 0.04,
        metric: Metric::EntropyMonotonic,
    };
    let mut times = Vec::new();
    let mut checked = 0;
    let started = Instant::now();
    let anonymizer = Anonymizer::new(&table, config).unwrap();
    let prepare = started.elapsed();
    for _ in 0..20 {
        let started = Instant::now();
        let outcome = anonymizer.search();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        checked = outcome.nodes_checked;
        let optimum = outcome.optimum.expect("Adult k=5 has an optimum");
        assert_eq!(optimum.levels, [1, 0, 1, 1, 3, 2, 2, 0, 1]);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "adult (30 162 rows, 9 QIs, k=5, 4 %, entropy-monotonic): prepare {:.1} ms, search \
         median {:.1} ms (min {:.1}, max {:.1}) over 20 runs, {} of 12 960 transformations \
         checked",
        prepare.as_secs_f64() * 1000.0,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        checked
    );
}

/// A deterministic generator (SplitMix64): synthetic rows, no real data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Skewed towards small values, as real categories are (a few common ones).
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.next() % n;
        let b = self.next() % n;
        a.min(b)
    }
}

fn synthetic(rows: usize) {
    let started = Instant::now();
    let mut rng = Rng(rows as u64);
    let names = [
        "age",
        "sex",
        "zip",
        "year",
        "race",
        "marital",
        "education",
        "country",
        "occupation",
        "workclass",
    ];
    let cardinality = [0u64, 2, 300, 26, 5, 6, 16, 40, 14, 8];
    let mut columns: Vec<Column> = (0..names.len()).map(|_| Column::default()).collect();
    for _ in 0..rows {
        for (j, column) in columns.iter_mut().enumerate() {
            let value = match j {
                0 => (18 + rng.skewed(72)).to_string(),
                2 => format!("{:05}", 10_000 + rng.skewed(cardinality[2]) * 37),
                3 => (2000 + rng.next() % cardinality[3]).to_string(),
                _ => format!("{}-{}", names[j], rng.skewed(cardinality[j])),
            };
            column.push(&value);
        }
    }
    let mut table = Table::default();
    for (name, column) in names.iter().zip(columns) {
        table.add_column(name, column).unwrap();
    }
    let generated = started.elapsed();
    let values = |name: &str| {
        table
            .column(name)
            .unwrap()
            .dictionary()
            .iter()
            .map(String::as_str)
    };
    let hierarchies = vec![
        Hierarchy::intervals("age", values("age"), &[5, 10, 20]).unwrap(),
        Hierarchy::flat("sex", values("sex")),
        Hierarchy::zip_codes("zip", values("zip")).unwrap(),
        Hierarchy::intervals("year", values("year"), &[5, 10]).unwrap(),
        Hierarchy::flat("race", values("race")),
        Hierarchy::flat("marital", values("marital")),
        Hierarchy::flat("education", values("education")),
        Hierarchy::flat("country", values("country")),
        Hierarchy::flat("occupation", values("occupation")),
        Hierarchy::flat("workclass", values("workclass")),
    ];
    let nodes: usize = hierarchies.iter().map(Hierarchy::height).product();
    let config = Config {
        quasi_identifiers: hierarchies,
        models: vec![PrivacyModel::KAnonymity { k: 5 }],
        sensitive_hierarchies: Vec::new(),
        suppression_limit: 0.04,
        metric: Metric::EntropyMonotonic,
    };
    let started = Instant::now();
    let anonymizer = Anonymizer::new(&table, config).unwrap();
    let prepare = started.elapsed();
    let started = Instant::now();
    let outcome = anonymizer.search();
    let search = started.elapsed();
    let optimum = outcome
        .optimum
        .expect("k=5 with 4 % suppression has an optimum");
    println!(
        "synthetic {rows} rows x 10 QIs (k=5, 4 %, entropy-monotonic): generated in {:.1} s, \
         prepared in {:.2} s, searched in {:.2} s ({} of {nodes} transformations checked); \
         levels {:?}, {} rows suppressed; peak memory {} MiB",
        generated.as_secs_f64(),
        prepare.as_secs_f64(),
        search.as_secs_f64(),
        outcome.nodes_checked,
        optimum.levels,
        optimum.suppressed_rows,
        peak_mib()
    );
}

/// Peak resident memory of this process (`VmHWM`).
fn peak_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
