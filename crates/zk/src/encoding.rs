//! A released table as the circuit sees it, and its commitment.
//!
//! Every quasi-identifier column gets codes `1..=d` for its distinct values sorted
//! byte-wise, with `*` (suppressed or fully generalized) coded 0; a row's key packs its
//! columns' codes into 64 bits, so a row whose every quasi-identifier is `*` has key 0
//! and counts as suppressed. Sensitive columns get codes `0..d` the same way, packed into
//! 32 bits. The codes depend on the table alone, so a researcher who decrypts the table
//! recomputes them, and the commitment, without anything else.
//!
//! The commitment is the Poseidon sponge ([`crate::poseidon::sponge`]) of a random salt
//! (so that guessing the table cannot be confirmed against the public commitment), the
//! row count, every row's key as a field element of its own (padded with zero rows to
//! the shape), and the rows' sensitive codes (4 bytes per row, 31 bytes per element),
//! under a tag naming the shape. A sponge rather than a Merkle tree: nobody opens single
//! rows, the table is recomputed whole, and a sponge absorbs 12 elements per permutation
//! where a binary tree hashes 2.

use std::collections::BTreeMap;

use ark_bn254::Fr;
use ark_ff::{BigInteger, PrimeField};
use medmesh_anon::policy::Role;
use medmesh_anon::{Table, TOP};
use serde::{Deserialize, Serialize};

use crate::poseidon;
use crate::shape::{BYTES_PER_ELEMENT, KEY_BITS, SENSITIVE_BYTES};
use crate::{Shape, ZkError};

/// Domain tag of the data commitment.
const TAG_DATA: u64 = 1;
/// Domain tag of the circuit's challenge.
pub(crate) const TAG_CHALLENGE: u64 = 2;

/// The tag of a sponge of kind `kind` in circuits of `shape`.
pub(crate) fn tag(kind: u64, shape: Shape) -> Fr {
    Fr::from(kind)
        + Fr::from(shape.rows as u64) * Fr::from(1u64 << 8)
        + Fr::from(shape.classes as u64) * Fr::from(1u64 << 40)
}

/// The columns of a released table and their roles: part of the proven statement (its
/// hash is a public input), so a listing says what it contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// Every column of the table, in order.
    pub columns: Vec<SchemaColumn>,
}

/// One column of a [`Schema`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaColumn {
    /// Its name (the CSV header).
    pub name: String,
    /// Its role; never `identifier` in a published table.
    pub role: Role,
}

impl Schema {
    /// SHA-256 of the schema's canonical JSON (this struct, serialized).
    pub fn hash(&self) -> [u8; 32] {
        let json = serde_json::to_vec(self).expect("a schema serializes");
        let digest = ring::digest::digest(&ring::digest::SHA256, &json);
        digest.as_ref().try_into().expect("32 bytes")
    }

    /// Checks that the schema names the table's columns in order and has no direct
    /// identifier.
    pub fn check(&self, table: &Table) -> Result<(), ZkError> {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        let found: Vec<&str> = table.names().iter().map(String::as_str).collect();
        if names != found {
            return Err(ZkError::Schema(format!(
                "the schema names {names:?}, the table has {found:?}"
            )));
        }
        if let Some(c) = self.columns.iter().find(|c| c.role == Role::Identifier) {
            return Err(ZkError::Schema(format!(
                "column `{}` is a direct identifier: a published table has none",
                c.name
            )));
        }
        if !self.columns.iter().any(|c| c.role == Role::QuasiIdentifier) {
            return Err(ZkError::Schema(
                "no quasi-identifier column: there is nothing to prove k-anonymous".into(),
            ));
        }
        Ok(())
    }

    fn with_role(&self, role: Role) -> impl Iterator<Item = usize> + '_ {
        self.columns
            .iter()
            .enumerate()
            .filter(move |(_, c)| c.role == role)
            .map(|(i, _)| i)
    }
}

/// A table's rows as circuit codes.
#[derive(Debug, Clone)]
pub struct EncodedTable {
    /// Per row, the packed quasi-identifier codes (0: suppressed).
    pub keys: Vec<u64>,
    /// Per row, the packed sensitive codes.
    pub sensitive: Vec<u32>,
}

impl EncodedTable {
    /// Encodes `table` under `schema`.
    pub fn new(table: &Table, schema: &Schema) -> Result<Self, ZkError> {
        schema.check(table)?;
        let rows = table.len();
        let mut keys = vec![0u64; rows];
        let mut sensitive = vec![0u32; rows];
        let mut key_bits = 0u32;
        let mut key_detail = Vec::new();
        for c in schema.with_role(Role::QuasiIdentifier) {
            let (codes, bits) = column_codes(table, c, true);
            key_detail.push(format!("{}: {bits}", schema.columns[c].name));
            // A 0-bit column (all `*`) adds nothing; past the limit nothing is packed
            // (the error below says so).
            if bits > 0 && key_bits + bits <= KEY_BITS {
                for (key, code) in keys.iter_mut().zip(codes) {
                    *key |= (code as u64) << key_bits;
                }
            }
            key_bits += bits;
        }
        if key_bits > KEY_BITS {
            return Err(ZkError::KeyTooWide {
                bits: key_bits,
                max: KEY_BITS,
                detail: key_detail.join(", "),
            });
        }
        let mut sensitive_bits = 0u32;
        let mut sensitive_detail = Vec::new();
        for c in schema.with_role(Role::Sensitive) {
            let (codes, bits) = column_codes(table, c, false);
            sensitive_detail.push(format!("{}: {bits}", schema.columns[c].name));
            if bits > 0 && sensitive_bits + bits <= (SENSITIVE_BYTES * 8) as u32 {
                for (s, code) in sensitive.iter_mut().zip(codes) {
                    *s |= code << sensitive_bits;
                }
            }
            sensitive_bits += bits;
        }
        if sensitive_bits > (SENSITIVE_BYTES * 8) as u32 {
            return Err(ZkError::SensitiveTooWide {
                bits: sensitive_bits,
                max: (SENSITIVE_BYTES * 8) as u32,
                detail: sensitive_detail.join(", "),
            });
        }
        Ok(EncodedTable { keys, sensitive })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the table has no row.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Rows per non-zero key, and the suppressed rows (key 0).
    pub fn classes(&self) -> (BTreeMap<u64, u64>, u64) {
        let mut classes = BTreeMap::new();
        let mut suppressed = 0;
        for &key in &self.keys {
            if key == 0 {
                suppressed += 1;
            } else {
                *classes.entry(key).or_insert(0) += 1;
            }
        }
        (classes, suppressed)
    }

    /// The keys, padded with 0 to `shape`.
    pub(crate) fn padded_keys(&self, shape: Shape) -> Vec<u64> {
        let mut keys = self.keys.clone();
        keys.resize(shape.rows as usize, 0);
        keys
    }

    /// The sensitive elements of the commitment, padded to `shape`.
    pub(crate) fn sensitive_elements(&self, shape: Shape) -> Vec<Fr> {
        let bytes = self.sensitive.iter().flat_map(|s| s.to_le_bytes());
        pack(bytes, shape.sensitive_elements())
    }

    /// The commitment to this table, padded to `shape`, with `salt`; a table with more
    /// rows than the shape has none.
    pub fn commitment(&self, shape: Shape, salt: &Salt) -> Result<Commitment, ZkError> {
        if self.len() > shape.rows as usize {
            return Err(ZkError::DoesNotFit {
                rows: self.len(),
                classes: self.classes().0.len(),
                shape,
            });
        }
        let elements = [salt.element(), Fr::from(self.len() as u64)]
            .into_iter()
            .chain(self.padded_keys(shape).into_iter().map(Fr::from))
            .chain(self.sensitive_elements(shape));
        Ok(Commitment(poseidon::sponge(tag(TAG_DATA, shape), elements)))
    }
}

/// The data commitment's tag for `shape` (for the circuit).
pub(crate) fn data_tag(shape: Shape) -> Fr {
    tag(TAG_DATA, shape)
}

/// Codes of column `c`: sorted distinct values numbered from 1 (`*` is 0) for a
/// quasi-identifier, from 0 otherwise; and the bits they need.
fn column_codes(table: &Table, c: usize, star_is_zero: bool) -> (Vec<u32>, u32) {
    let column = table.column_at(c);
    // The values present (a dictionary may remember values of rows since removed).
    let frequencies = column.frequencies();
    let mut values: Vec<&str> = column
        .dictionary()
        .iter()
        .zip(&frequencies)
        .filter(|(_, n)| **n > 0)
        .map(|(v, _)| v.as_str())
        .collect();
    if star_is_zero {
        values.retain(|v| *v != TOP);
    }
    values.sort_unstable();
    let first = u32::from(star_is_zero);
    let code_of: std::collections::HashMap<&str, u32> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (*v, first + i as u32))
        .collect();
    let highest = (first + values.len() as u32).saturating_sub(1);
    let bits = u32::BITS - highest.leading_zeros();
    let codes = (0..column.len())
        .map(|row| code_of.get(column.value(row)).copied().unwrap_or(0))
        .collect();
    (codes, bits)
}

/// `bytes` packed 31 per element (little-endian), padded with zero elements to `count`.
fn pack(bytes: impl IntoIterator<Item = u8>, count: usize) -> Vec<Fr> {
    let bytes: Vec<u8> = bytes.into_iter().collect();
    let mut elements: Vec<Fr> = bytes
        .chunks(BYTES_PER_ELEMENT)
        .map(Fr::from_le_bytes_mod_order)
        .collect();
    elements.resize(count, Fr::from(0u64));
    elements
}

/// The random element that makes the commitment hiding. Kept with the encrypted table,
/// never published.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Salt(#[serde(with = "hex::serde")] pub [u8; 31]);

impl Salt {
    /// A fresh salt from the system's randomness.
    pub fn random() -> Salt {
        let mut bytes = [0u8; 31];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the system's randomness");
        Salt(bytes)
    }

    pub(crate) fn element(&self) -> Fr {
        Fr::from_le_bytes_mod_order(&self.0)
    }
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(…)")
    }
}

/// A table's commitment: a field element, shown and stored as 32 big-endian bytes
/// (the `uint256` the contracts see).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Commitment(pub Fr);

impl Commitment {
    /// Big-endian bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.0.into_bigint().to_bytes_be());
        out
    }

    /// From big-endian bytes; `None` when not below the field's order.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Commitment> {
        let element = Fr::from_be_bytes_mod_order(bytes);
        (Commitment(element).to_bytes() == *bytes).then_some(Commitment(element))
    }
}

impl Serialize for Commitment {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Commitment {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Commitment {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text.strip_prefix("0x").unwrap_or(text);
        let bytes: [u8; 32] = hex::decode(digits)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("`{text}` is not 32 bytes of hex"))?;
        Commitment::from_bytes(&bytes)
            .ok_or_else(|| format!("`{text}` is not below the field's order"))
    }
}

impl std::fmt::Display for Commitment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{}", hex::encode(self.to_bytes()))
    }
}
