//! `cargo bench -p medmesh-zk --bench prove [-- profile|1k|10k|adult]`: constraints per
//! part and per row of every circuit; then, on the first 1 000 and 10 000 rows of ARX's
//! Adult table and on the whole table (30 162 rows, 9 quasi-identifiers), anonymized
//! to k = 5 (4 % suppression, monotonic entropy) by medmesh-anon: proving time and peak
//! memory, each case in a process of its own so that its peak is its own. Keys are
//! generated from the published seeds on first use and kept under the target directory.
//! Figures go to `docs/benchmarks.md`.

#![allow(missing_docs, clippy::print_stdout)]

use std::time::Instant;

use medmesh_anon::policy::Role;
use medmesh_anon::policy::SuppressedRows;
use medmesh_anon::{Anonymizer, Config, Hierarchy, Metric, PrivacyModel, Table};
use medmesh_zk::{
    constraint_profile, prove, verify, EncodedTable, KeyStore, ProofRequest, Salt, Schema,
    SchemaColumn, Shape,
};

const QUASI_IDENTIFIERS: [&str; 9] = [
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let rows: usize = args[i + 1].parse().expect("rows");
        case(rows);
        return;
    }
    let which: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| *w == name);
    if wants("profile") {
        profile();
    }
    for (name, rows) in [("1k", 1000), ("10k", 10_000), ("adult", 30_162)] {
        if wants(name) {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--case", &rows.to_string()])
                .status()
                .expect("the bench runs itself");
            assert!(status.success(), "case {name} failed");
        }
    }
}

fn profile() {
    for shape in Shape::ALL {
        let parts = constraint_profile(shape).unwrap();
        let total: usize = parts.iter().map(|(_, n)| n).sum();
        println!(
            "{shape}: {total} constraints, {:.1} per row",
            total as f64 / shape.rows as f64
        );
        for (part, n) in parts {
            println!(
                "  {part:<40} {n:>9} ({:.1} per row, {:.0} %)",
                n as f64 / shape.rows as f64,
                100.0 * n as f64 / total as f64
            );
        }
    }
}

fn shared(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel)
}

/// The first `rows` rows of ARX's Adult table anonymized to k = 5.
fn released(rows: usize) -> Table {
    let file = std::fs::File::open(shared("adult/arx/adult.csv")).expect("ARX's adult.csv");
    let mut table = Table::from_csv(file, b';').unwrap();
    let keep: Vec<bool> = (0..table.len()).map(|i| i < rows).collect();
    table.retain_rows(&keep);
    let hierarchies: Vec<Hierarchy> = QUASI_IDENTIFIERS
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
    let anonymizer = Anonymizer::new(&table, config).unwrap();
    let optimum = anonymizer.search().optimum.expect("an optimum");
    anonymizer.release(&optimum, SuppressedRows::Mark).unwrap()
}

fn case(rows: usize) {
    let table = released(rows);
    let schema = Schema {
        columns: table
            .names()
            .iter()
            .map(|name| SchemaColumn {
                name: name.clone(),
                role: if QUASI_IDENTIFIERS.contains(&name.as_str()) {
                    Role::QuasiIdentifier
                } else {
                    Role::Insensitive
                },
            })
            .collect(),
    };
    let encoded = EncodedTable::new(&table, &schema).unwrap();
    let (classes, suppressed) = encoded.classes();
    let salt = Salt::random();
    let request = ProofRequest {
        table: &encoded,
        schema: &schema,
        k: 5,
        limit: (rows as f64 * 0.04) as u32,
        salt: &salt,
        institution: [0x42; 20],
    };
    let shape = medmesh_zk::shape_for(&request).unwrap();
    let store =
        KeyStore::new(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("medmesh-zk-keys"));
    let started = Instant::now();
    let key = store.proving_key(shape).unwrap();
    let key_time = started.elapsed();
    let started = Instant::now();
    let (statement, proof) = prove(&key, shape, &request).unwrap();
    let prove_time = started.elapsed();
    let started = Instant::now();
    assert!(verify(&statement, &proof).unwrap());
    let verify_time = started.elapsed();
    println!(
        "{rows} rows ({} classes, {suppressed} suppressed) in the {shape} circuit: key {:.1} s, \
         prove {:.1} s, verify {:.1} ms, peak memory {} MiB",
        classes.len(),
        key_time.as_secs_f64(),
        prove_time.as_secs_f64(),
        verify_time.as_secs_f64() * 1000.0,
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
