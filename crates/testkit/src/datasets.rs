//! A released table proven 5-anonymous in the smallest circuit, made once per process:
//! 24 rows (classes of 5, 9 and 8 rows, 2 suppressed), limit 2.

use std::sync::OnceLock;

use medmesh_anon::policy::Role;
use medmesh_anon::Table;
use medmesh_zk::{
    EncodedTable, KeyStore, Proof, ProofRequest, Salt, Schema, SchemaColumn, Shape, Statement,
};

/// The table, what proves it, and the proof.
pub struct ProvenTable {
    /// The released table.
    pub table: Table,
    /// Its schema.
    pub schema: Schema,
    /// The commitment's salt.
    pub salt: Salt,
    /// What the proof proves.
    pub statement: Statement,
    /// The proof.
    pub proof: Proof,
}

/// The test chain's hospital (dev account 1, [`crate::chain::Chain::hospital`]).
pub fn hospital() -> alloy::primitives::Address {
    medmesh_chain::devchain::dev_signers()[1].address()
}

/// The proven table (the proving key is generated from its seed in a temporary
/// directory: under a second for this circuit).
pub fn proven_table() -> &'static ProvenTable {
    static PROVEN: OnceLock<ProvenTable> = OnceLock::new();
    PROVEN.get_or_init(|| {
        let mut table = Table::with_columns(&["zip3", "age", "diagnosis"]).unwrap();
        for (zip, age, n) in [
            ("021", "30-39", 5),
            ("021", "40-49", 9),
            ("100", "30-39", 8),
        ] {
            for i in 0..n {
                table
                    .push_row(&[zip, age, ["J45", "E11", "I10"][i % 3]])
                    .unwrap();
            }
        }
        table.push_row(&["*", "*", "*"]).unwrap();
        table.push_row(&["*", "*", "*"]).unwrap();
        let schema = Schema {
            columns: [
                ("zip3", Role::QuasiIdentifier),
                ("age", Role::QuasiIdentifier),
                ("diagnosis", Role::Sensitive),
            ]
            .into_iter()
            .map(|(name, role)| SchemaColumn {
                name: name.into(),
                role,
            })
            .collect(),
        };
        let encoded = EncodedTable::new(&table, &schema).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = KeyStore::new(dir.path())
            .proving_key(Shape::ROWS_64)
            .unwrap();
        let salt = Salt::random();
        let request = ProofRequest {
            table: &encoded,
            schema: &schema,
            k: 5,
            limit: 2,
            salt: &salt,
            institution: hospital().into_array(),
        };
        let (statement, proof) = medmesh_zk::prove(&key, Shape::ROWS_64, &request).unwrap();
        ProvenTable {
            table,
            schema,
            salt,
            statement,
            proof,
        }
    })
}
