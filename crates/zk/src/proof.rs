//! Proving that an encoded table is k-anonymous, and checking such a proof.

use ark_bn254::{Bn254, Fr};
use ark_ec::AffineRepr;
use ark_ff::{BigInteger, PrimeField};
use ark_groth16::{Groth16, ProvingKey, VerifyingKey};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use ark_snark::SNARK;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::circuit::{KAnonCircuit, Witness};
use crate::encoding::{Commitment, EncodedTable, Salt, Schema};
use crate::keys::published_verifying_key;
use crate::{Shape, ZkError};

/// What a proof proves: the table committed to by `commitment` (padded to `shape`) has
/// `rows` rows, `suppressed` of them with every quasi-identifier `*` (at most `limit`),
/// and every other row's quasi-identifier tuple occurs at least `k` times; its columns
/// are the schema hashed in `schema_hash`; `institution` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The circuit.
    pub shape: Shape,
    /// The table's commitment.
    pub commitment: Commitment,
    /// The k of k-anonymity.
    pub k: u16,
    /// Rows of the table.
    pub rows: u32,
    /// Rows suppressed.
    pub suppressed: u32,
    /// The declared suppression limit, in rows.
    pub limit: u32,
    /// SHA-256 of the schema.
    #[serde(with = "hex::serde")]
    pub schema_hash: [u8; 32],
    /// The account that lists the dataset: part of the statement, so that nobody else
    /// can list the proof as theirs.
    #[serde(with = "hex::serde")]
    pub institution: [u8; 20],
}

/// Bytes of the packed statement: commitment, k, rows, suppressed, limit, schema hash,
/// institution.
pub(crate) const STATEMENT_BYTES: usize = 32 + 2 + 4 + 4 + 4 + 32 + 20;

impl Statement {
    /// The statement as the registry contract packs it (`abi.encodePacked(commitment,
    /// k, rows, suppressed, limit, schemaHash, msg.sender)`: big-endian, 98 bytes).
    pub fn packed(&self) -> [u8; STATEMENT_BYTES] {
        let mut out = [0u8; STATEMENT_BYTES];
        let mut at = 0;
        for part in [
            &self.commitment.to_bytes()[..],
            &self.k.to_be_bytes(),
            &self.rows.to_be_bytes(),
            &self.suppressed.to_be_bytes(),
            &self.limit.to_be_bytes(),
            &self.schema_hash,
            &self.institution,
        ] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    /// The one public input: SHA-256 of [`Statement::packed`] as a big-endian integer,
    /// shifted right by 3 bits to be below the field's order (the registry computes the
    /// same, so it needs no hash but the EVM's cheap SHA-256).
    pub fn public_input(&self) -> Fr {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.packed());
        Fr::from_be_bytes_mod_order(&shift_right_3(digest.as_ref()))
    }

    /// The public input as the Solidity verifier's `uint256` (big-endian).
    pub fn public_input_word(&self) -> [u8; 32] {
        word(&self.public_input())
    }

    /// What the registry contract requires of any statement besides its proof.
    pub fn check(&self) -> Result<(), ZkError> {
        let refuse = |reason: &str| Err(ZkError::BadStatement(reason.to_string()));
        if self.k < 2 {
            return refuse("k below 2");
        }
        if self.rows == 0 || self.rows > self.shape.rows {
            return refuse("rows not within the circuit's size");
        }
        if self.suppressed > self.limit {
            return refuse("more rows suppressed than the limit");
        }
        Ok(())
    }
}

/// A 32-byte big-endian integer shifted right by 3 bits.
fn shift_right_3(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u8;
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = (b >> 3) | carry;
        carry = b << 5;
    }
    out
}

/// What is needed to prove one table.
pub struct ProofRequest<'a> {
    /// The table.
    pub table: &'a EncodedTable,
    /// Its schema.
    pub schema: &'a Schema,
    /// The k to prove.
    pub k: u16,
    /// The suppression limit, in rows.
    pub limit: u32,
    /// The commitment's salt.
    pub salt: &'a Salt,
    /// The account that will list it.
    pub institution: [u8; 20],
}

impl ProofRequest<'_> {
    /// The statement and witness, after checking natively what the circuit will check,
    /// so that a table that is not k-anonymous is refused with the reason instead of
    /// yielding a proof that does not verify. `shape` defaults to the smallest fitting.
    pub(crate) fn witness(&self, shape: Option<Shape>) -> Result<(Statement, Witness), ZkError> {
        if self.k < 2 {
            return Err(ZkError::BadK(self.k as u64));
        }
        let (classes, suppressed) = self.table.classes();
        let rows = self.table.len();
        if rows == 0 {
            return Err(ZkError::BadStatement("the table has no row".into()));
        }
        let shape = match shape {
            Some(s) if rows <= s.rows as usize && classes.len() <= s.classes as usize => s,
            Some(s) => {
                return Err(ZkError::DoesNotFit {
                    rows,
                    classes: classes.len(),
                    shape: s,
                })
            }
            None => Shape::fitting(rows, classes.len()).ok_or(ZkError::TooLarge {
                rows,
                classes: classes.len(),
            })?,
        };
        if let Some(smallest) = classes.values().copied().min() {
            if smallest < self.k as u64 {
                return Err(ZkError::NotKAnonymous {
                    size: smallest,
                    k: self.k,
                });
            }
        }
        if suppressed > self.limit as u64 {
            return Err(ZkError::OverSuppressionLimit {
                suppressed,
                limit: self.limit as u64,
            });
        }
        let statement = Statement {
            shape,
            commitment: self.table.commitment(shape, self.salt)?,
            k: self.k,
            rows: rows as u32,
            suppressed: suppressed as u32,
            limit: self.limit,
            schema_hash: self.schema.hash(),
            institution: self.institution,
        };
        let keys = self.table.padded_keys(shape);
        let mut slots: Vec<(u64, u64)> = classes
            .into_iter()
            .map(|(key, count)| (key, count - self.k as u64))
            .collect();
        slots.resize(shape.classes as usize, (0, 0));
        let witness = Witness {
            statement,
            salt: self.salt.element(),
            keys,
            sensitive: self.table.sensitive_elements(shape),
            classes: slots,
        };
        Ok((statement, witness))
    }
}

/// Whether `table` (decrypted by a researcher who was granted it) is the table
/// `statement` is about, under `schema` and `salt`: the schema's hash, the row count,
/// the suppressed rows, the commitment, and — natively, though the proof already says
/// so — every class at least `k` rows. An error says which differs.
pub fn check_table(
    statement: &Statement,
    table: &medmesh_anon::Table,
    schema: &Schema,
    salt: &Salt,
) -> Result<(), ZkError> {
    let differs = |what: String| Err(ZkError::TableMismatch(what));
    statement.check()?;
    if Shape::with_rows(statement.shape.rows) != Some(statement.shape) {
        return Err(ZkError::UnknownShape(statement.shape));
    }
    if schema.hash() != statement.schema_hash {
        return differs("the schema's hash is not the listed one".into());
    }
    let encoded = EncodedTable::new(table, schema)?;
    if encoded.len() != statement.rows as usize {
        return differs(format!(
            "the table has {} rows, the listing {}",
            encoded.len(),
            statement.rows
        ));
    }
    let (classes, suppressed) = encoded.classes();
    if suppressed != statement.suppressed as u64 {
        return differs(format!(
            "the table has {suppressed} suppressed rows, the listing {}",
            statement.suppressed
        ));
    }
    if let Some(smallest) = classes.values().min().filter(|n| **n < statement.k as u64) {
        return differs(format!(
            "a class has {smallest} rows, below the listing's k = {}",
            statement.k
        ));
    }
    if encoded.commitment(statement.shape, salt)? != statement.commitment {
        return differs("the table's commitment is not the listed one".into());
    }
    Ok(())
}

/// A Groth16 proof (BN254).
#[derive(Debug, Clone, PartialEq)]
pub struct Proof(pub ark_groth16::Proof<Bn254>);

impl Proof {
    /// Compressed, 128 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.0
            .serialize_compressed(&mut out)
            .expect("serializing into memory");
        out
    }

    /// From [`Proof::to_bytes`], the points checked on the curve and in the subgroup.
    pub fn from_bytes(bytes: &[u8]) -> Result<Proof, ZkError> {
        ark_groth16::Proof::deserialize_compressed(bytes)
            .map(Proof)
            .map_err(|source| ZkError::Decode {
                what: "proof",
                source,
            })
    }

    /// The eight `uint256`s of the Solidity verifier: `A.x, A.y, B.x.c1, B.x.c0, B.y.c1,
    /// B.y.c0, C.x, C.y` (EIP-197 puts the imaginary part first).
    pub fn solidity_words(&self) -> [[u8; 32]; 8] {
        let (a, b, c) = (self.0.a, self.0.b, self.0.c);
        let (ax, ay) = a.xy().unwrap_or_default();
        let (bx, by) = b.xy().unwrap_or_default();
        let (cx, cy) = c.xy().unwrap_or_default();
        [
            word(&ax),
            word(&ay),
            word(&bx.c1),
            word(&bx.c0),
            word(&by.c1),
            word(&by.c0),
            word(&cx),
            word(&cy),
        ]
    }
}

/// A field element as 32 big-endian bytes.
fn word<F: PrimeField>(x: &F) -> [u8; 32] {
    let mut out = [0u8; 32];
    let bytes = x.into_bigint().to_bytes_be();
    out[32 - bytes.len()..].copy_from_slice(&bytes);
    out
}

/// Proves `request` with `key` (of `shape`, or of the smallest fitting shape when
/// `shape` is `None`; the key must then be that shape's).
pub fn prove(
    key: &ProvingKey<Bn254>,
    shape: Shape,
    request: &ProofRequest<'_>,
) -> Result<(Statement, Proof), ZkError> {
    let (statement, witness) = request.witness(Some(shape))?;
    let circuit = KAnonCircuit {
        shape,
        witness: Some(witness),
    };
    // The proof's blinding (zero knowledge) from the system's randomness.
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .expect("the system's randomness");
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
    let proof = Proof(Groth16::<Bn254>::prove(key, circuit, &mut rng)?);
    // A damaged proving key (keys are read unchecked, for speed) makes proofs that do
    // not verify: found here in milliseconds rather than by a reverted listing.
    if !verify_with(&key.vk, &statement, &proof)? {
        return Err(ZkError::ProofRejected(shape));
    }
    Ok((statement, proof))
}

/// The shape `request` would be proven in (the smallest that holds it), after the same
/// checks as [`prove`].
pub fn shape_for(request: &ProofRequest<'_>) -> Result<Shape, ZkError> {
    request.witness(None).map(|(s, _)| s.shape)
}

/// Whether `proof` proves `statement`, under the published verifying key of its shape.
/// A statement the registry would refuse anyway is an error.
pub fn verify(statement: &Statement, proof: &Proof) -> Result<bool, ZkError> {
    statement.check()?;
    let vk = published_verifying_key(statement.shape)?;
    verify_with(&vk, statement, proof)
}

/// [`verify`] under a given key.
pub fn verify_with(
    vk: &VerifyingKey<Bn254>,
    statement: &Statement,
    proof: &Proof,
) -> Result<bool, ZkError> {
    Ok(Groth16::<Bn254>::verify(
        vk,
        &[statement.public_input()],
        &proof.0,
    )?)
}
