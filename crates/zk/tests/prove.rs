//! Groth16 proofs of k-anonymity, made and checked with the real keys of the smallest
//! circuit (generated from the published seed, checked against the published verifying
//! key).

use medmesh_anon::policy::Role;
use medmesh_anon::Table;
use medmesh_zk::keys::{published_verifying_key, setup};
use medmesh_zk::{
    check_table, prove, verify, Commitment, EncodedTable, KeyStore, Proof, ProofRequest, Salt,
    Schema, SchemaColumn, Shape, Statement, ZkError,
};

fn schema(columns: &[(&str, Role)]) -> Schema {
    Schema {
        columns: columns
            .iter()
            .map(|(name, role)| SchemaColumn {
                name: name.to_string(),
                role: *role,
            })
            .collect(),
    }
}

/// Rows of (zip3, age band, diagnosis): classes of `size` rows, plus `suppressed` rows of
/// `*`.
fn table(classes: &[(&str, &str, usize)], suppressed: usize) -> Table {
    let mut t = Table::with_columns(&["zip3", "age", "diagnosis"]).unwrap();
    for (i, (zip, age, size)) in classes.iter().enumerate() {
        for j in 0..*size {
            let diagnosis = ["J45", "E11", "I10", "C50"][(i + j) % 4];
            t.push_row(&[*zip, *age, diagnosis]).unwrap();
        }
    }
    for _ in 0..suppressed {
        t.push_row(&["*", "*", "*"]).unwrap();
    }
    t
}

/// The account listing the test tables.
const INSTITUTION: [u8; 20] = [0x42; 20];

fn standard_schema() -> Schema {
    schema(&[
        ("zip3", Role::QuasiIdentifier),
        ("age", Role::QuasiIdentifier),
        ("diagnosis", Role::Sensitive),
    ])
}

struct Proven {
    statement: Statement,
    proof: Proof,
}

fn prove_table(
    store: &KeyStore,
    t: &Table,
    k: u16,
    limit: u32,
    salt: &Salt,
) -> Result<Proven, ZkError> {
    let schema = standard_schema();
    let encoded = EncodedTable::new(t, &schema)?;
    let key = store.proving_key(Shape::ROWS_64)?;
    let request = ProofRequest {
        table: &encoded,
        schema: &schema,
        k,
        limit,
        salt,
        institution: INSTITUTION,
    };
    let (statement, proof) = prove(&key, Shape::ROWS_64, &request)?;
    Ok(Proven { statement, proof })
}

#[test]
fn a_k_anonymous_table_proves_and_verifies_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(dir.path());
    let salt = Salt::random();
    let t = table(
        &[
            ("021", "30-39", 5),
            ("021", "40-49", 6),
            ("100", "30-39", 9),
        ],
        2,
    );
    let proven = prove_table(&store, &t, 5, 3, &salt).unwrap();
    assert_eq!(
        (
            proven.statement.k,
            proven.statement.rows,
            proven.statement.suppressed
        ),
        (5, 22, 2)
    );
    assert!(verify(&proven.statement, &proven.proof).unwrap());
    // The key was written and is read back on the next use.
    assert!(store.path(Shape::ROWS_64).exists());

    // The same proof does not prove another table's commitment, another k, more rows,
    // fewer suppressed rows, or another schema.
    let other = table(
        &[
            ("021", "30-39", 5),
            ("021", "40-49", 6),
            ("100", "30-39", 10),
        ],
        1,
    );
    let other_commitment = EncodedTable::new(&other, &standard_schema())
        .unwrap()
        .commitment(Shape::ROWS_64, &salt)
        .unwrap();
    let lies = [
        Statement {
            commitment: other_commitment,
            ..proven.statement
        },
        Statement {
            k: 6,
            ..proven.statement
        },
        Statement {
            k: 4,
            ..proven.statement
        },
        Statement {
            rows: 23,
            ..proven.statement
        },
        Statement {
            suppressed: 1,
            ..proven.statement
        },
        Statement {
            limit: 2,
            ..proven.statement
        },
        Statement {
            schema_hash: [1; 32],
            ..proven.statement
        },
    ];
    for lie in lies {
        assert!(!verify(&lie, &proven.proof).unwrap(), "{lie:?} verified");
    }

    // A tampered proof is refused: as bytes that are no longer a point, or as a proof
    // that does not verify.
    let bytes = proven.proof.to_bytes();
    assert_eq!(bytes.len(), 128);
    for i in [0, 40, 70, 100, 127] {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x04;
        match Proof::from_bytes(&tampered) {
            Err(ZkError::Decode { .. }) => {}
            Ok(p) => assert!(!verify(&proven.statement, &p).unwrap(), "byte {i}"),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let swapped = Proof(ark_groth16::Proof {
        a: proven.proof.0.c,
        c: proven.proof.0.a,
        ..proven.proof.0.clone()
    });
    assert!(!verify(&proven.statement, &swapped).unwrap());
}

#[test]
fn the_prover_refuses_what_is_not_k_anonymous_or_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(dir.path());
    let salt = Salt::random();
    let t = table(&[("021", "30-39", 5), ("100", "30-39", 4)], 0);
    assert!(matches!(
        prove_table(&store, &t, 5, 0, &salt),
        Err(ZkError::NotKAnonymous { size: 4, k: 5 })
    ));
    let t = table(&[("021", "30-39", 5)], 3);
    assert!(matches!(
        prove_table(&store, &t, 5, 2, &salt),
        Err(ZkError::OverSuppressionLimit {
            suppressed: 3,
            limit: 2
        })
    ));
    let t = table(&[("021", "30-39", 40), ("100", "30-39", 30)], 0);
    assert!(matches!(
        prove_table(&store, &t, 5, 0, &salt),
        Err(ZkError::DoesNotFit { rows: 70, .. })
    ));
    assert!(matches!(
        prove_table(&store, &table(&[("021", "30-39", 5)], 0), 1, 0, &salt),
        Err(ZkError::BadK(1))
    ));
    assert!(matches!(
        prove_table(&store, &table(&[], 0), 5, 0, &salt),
        Err(ZkError::BadStatement(_))
    ));
}

#[test]
fn a_researcher_recomputes_the_commitment_from_the_released_csv() {
    let t = table(&[("021", "30-39", 5), ("100", "40-49", 7)], 1);
    let salt = Salt::random();
    let schema = standard_schema();
    let committed = EncodedTable::new(&t, &schema)
        .unwrap()
        .commitment(Shape::ROWS_4K, &salt)
        .unwrap();
    let mut csv = Vec::new();
    t.write_csv(&mut csv, b',').unwrap();
    let read = Table::from_csv(csv.as_slice(), b',').unwrap();
    let recomputed = EncodedTable::new(&read, &schema)
        .unwrap()
        .commitment(Shape::ROWS_4K, &salt)
        .unwrap();
    assert_eq!(committed, recomputed);
    // Without the salt, or with one changed cell, it does not match.
    assert_ne!(
        committed,
        EncodedTable::new(&read, &schema)
            .unwrap()
            .commitment(Shape::ROWS_4K, &Salt::random())
            .unwrap()
    );
    let mut changed = Table::with_columns(&["zip3", "age", "diagnosis"]).unwrap();
    for i in 0..read.len() {
        let mut row: Vec<String> = read.row(i).iter().map(|s| s.to_string()).collect();
        if i == 3 {
            assert_eq!(row[2], "C50");
            row[2] = "J45".into();
        }
        changed.push_row(&row).unwrap();
    }
    assert_ne!(
        committed,
        EncodedTable::new(&changed, &schema)
            .unwrap()
            .commitment(Shape::ROWS_4K, &salt)
            .unwrap()
    );
    // check_table says what differs.
    let statement = Statement {
        shape: Shape::ROWS_4K,
        commitment: committed,
        k: 5,
        rows: 13,
        suppressed: 1,
        limit: 1,
        schema_hash: schema.hash(),
        institution: INSTITUTION,
    };
    check_table(&statement, &read, &schema, &salt).unwrap();
    for (wrong, expected) in [
        (
            Statement {
                rows: 12,
                ..statement
            },
            "rows",
        ),
        (
            Statement {
                suppressed: 0,
                ..statement
            },
            "suppressed",
        ),
        (Statement { k: 6, ..statement }, "below the listing's k"),
        (
            Statement {
                schema_hash: [0; 32],
                ..statement
            },
            "schema",
        ),
    ] {
        match check_table(&wrong, &read, &schema, &salt) {
            Err(ZkError::TableMismatch(why)) => assert!(why.contains(expected), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    match check_table(&statement, &changed, &schema, &salt) {
        Err(ZkError::TableMismatch(why)) => assert!(why.contains("commitment"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Commitments print and parse as 32 bytes of hex.
    let text = committed.to_string();
    assert_eq!(text.parse::<Commitment>().unwrap(), committed);
    assert!("0x1234".parse::<Commitment>().is_err());
}

#[test]
fn schemas_with_identifiers_or_too_many_codes_are_refused() {
    let t = table(&[("021", "30-39", 5)], 0);
    let with_identifier = schema(&[
        ("zip3", Role::Identifier),
        ("age", Role::QuasiIdentifier),
        ("diagnosis", Role::Sensitive),
    ]);
    assert!(matches!(
        EncodedTable::new(&t, &with_identifier),
        Err(ZkError::Schema(_))
    ));
    let misnamed = schema(&[
        ("zip", Role::QuasiIdentifier),
        ("age", Role::QuasiIdentifier),
        ("diagnosis", Role::Sensitive),
    ]);
    assert!(matches!(
        EncodedTable::new(&t, &misnamed),
        Err(ZkError::Schema(_))
    ));
    // Six columns of 2 000 values need 66 bits; a key holds 64.
    let names = ["a", "b", "c", "d", "e", "f"];
    let mut wide = Table::with_columns(&names).unwrap();
    for i in 0..4000u32 {
        let row: Vec<String> = (0..6)
            .map(|c| ((i * 7 + c * 13) % 2000).to_string())
            .collect();
        wide.push_row(&row).unwrap();
    }
    let wide_schema = schema(&names.map(|n| (n, Role::QuasiIdentifier)));
    match EncodedTable::new(&wide, &wide_schema) {
        Err(ZkError::KeyTooWide {
            bits: 66, max: 64, ..
        }) => {}
        other => panic!("{:?}", other.err()),
    }
    // A column that is all `*` after full generalization needs no bits (and is no
    // overflow after a full key).
    let mut starred = Table::with_columns(&["a", "b"]).unwrap();
    for i in 0..10 {
        starred
            .push_row(&[format!("{}", i % 2), "*".to_string()])
            .unwrap();
    }
    let encoded = EncodedTable::new(
        &starred,
        &schema(&[("a", Role::QuasiIdentifier), ("b", Role::QuasiIdentifier)]),
    )
    .unwrap();
    assert_eq!(encoded.classes().0.len(), 2);
}

#[test]
fn published_verifying_keys_are_the_seeded_setups() {
    for shape in [Shape::ROWS_64, Shape::ROWS_4K] {
        let pk = setup(shape).unwrap();
        assert_eq!(pk.vk, published_verifying_key(shape).unwrap(), "{shape}");
    }
}

#[test]
fn solidity_words_are_the_eip197_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(dir.path());
    let t = table(&[("021", "30-39", 5)], 0);
    let proven = prove_table(&store, &t, 5, 0, &Salt::random()).unwrap();
    let expected = taceo_groth16_sol::prepare_uncompressed_proof(&proven.proof.0);
    let words = proven.proof.solidity_words();
    for (word, expected) in words.iter().zip(expected) {
        assert_eq!(*word, expected.to_be_bytes::<32>());
    }
}

#[test]
fn a_damaged_key_file_is_replaced_and_concurrent_first_uses_generate_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = KeyStore::new(dir.path()).path(Shape::ROWS_64);
    std::fs::write(&path, b"not a proving key").unwrap();
    // A partial file a crashed writer left two hours ago is cleaned up; a fresh one
    // (another process writing now) would not be.
    let stale = dir.path().join(".kanon-partial-crashed");
    std::fs::File::create(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    let store = std::sync::Arc::new(KeyStore::new(dir.path()));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || store.proving_key(Shape::ROWS_64).unwrap())
        })
        .collect();
    let keys: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(keys
        .windows(2)
        .all(|w| std::sync::Arc::ptr_eq(&w[0], &w[1])));
    assert_eq!(keys[0].vk, published_verifying_key(Shape::ROWS_64).unwrap());
    // The file now holds the key (read back by a fresh store), and no partial file is
    // left beside it, the stale one included.
    let reread = KeyStore::new(dir.path())
        .proving_key(Shape::ROWS_64)
        .unwrap();
    assert_eq!(reread.vk, keys[0].vk);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["kanon-64.pk"]);
}
