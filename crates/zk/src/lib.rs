//! medmesh's zero-knowledge proof that a released research table is k-anonymous.
//!
//! A published dataset is listed on chain with a commitment to its table and a Groth16
//! proof (BN254, so the EVM verifies it with its pairing precompiles) that the committed
//! table has every quasi-identifier tuple at least `k` times, with at most the declared
//! number of rows suppressed, under a named schema. A researcher who is granted the
//! table recomputes the commitment from it ([`EncodedTable::commitment`]).
//!
//! - [`encoding`]: the table as codes, the schema, the commitment (Poseidon sponge);
//! - [`circuit`](crate::circuit) (private): the constraints, documented there;
//! - [`keys`]: reproducible (testnet) keys, published verifying keys, a key store;
//! - [`prove`] / [`verify`]: the proof and its check;
//! - [`Shape`]: the few fixed circuit sizes.

mod circuit;
pub mod encoding;
mod error;
mod gadget;
pub mod keys;
pub mod poseidon;
mod proof;
mod shape;

pub use circuit::constraint_profile;
pub use encoding::{Commitment, EncodedTable, Salt, Schema, SchemaColumn};
pub use error::ZkError;
pub use keys::KeyStore;
pub use proof::{
    check_table, prove, shape_for, verify, verify_with, Proof, ProofRequest, Statement,
};
pub use shape::{Shape, KEY_BITS, SENSITIVE_BYTES};
