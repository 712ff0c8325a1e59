//! The k-anonymity circuit.
//!
//! One public input: SHA-256 of the packed statement (commitment, k, rows, suppressed,
//! limit, schema hash, institution; [`Statement::packed`]) shifted right by 3 bits. One input
//! rather than three saves the verifier two scalar multiplications (~12 700 gas), and
//! SHA-256 is what the registry contract can recompute cheaply (a precompile), where
//! Poseidon would cost it tens of thousands of gas; in the circuit it is a fixed
//! ~80 000 constraints.
//!
//! The prover's witness: the statement's bytes, the salt, every row's key, the
//! sensitive elements, and a class table of `C` slots (a key and its count above `k`).
//! The circuit checks:
//! 0. the statement's bytes (boolean bits) hash to the public input, and give the
//!    commitment `D`, `k`, `rows ≤ N` and `suppressed ≤ limit` (32-bit differences);
//! 1. `D` is the sponge of the salt, `rows`, every row's key (one element each) and the
//!    sensitive elements: the researcher's recomputation, in the circuit;
//! 2. `γ` is the sponge of the public input, `D` and every slot's key and count, so
//!    everything the prover chose is fixed before `γ` exists (a row's key through `D`);
//! 3. `Σ_rows 1/(γ − key_i) = m_0/γ + Σ_j m_j/(γ − class_j)` (a log-derivative
//!    multiplicity check): the rows' keys are exactly the class table's keys with its
//!    counts. `m_0 = N − rows + suppressed` counts key 0 (padding and suppressed rows);
//!    a used slot has a non-zero key and `m_j = k + d_j` with `d_j` 24 boolean bits, an
//!    unused one has key 0 and `m_j = 0`. So every non-suppressed class has at least
//!    `k` rows.
//!
//! Every value the identity uses is bound individually before `γ`: a packed value (say,
//! bytes summed into one element) would not be, since it can be re-split after `γ` is
//! known unless its parts are range-checked by something that does not itself depend on
//! `γ`. Ranges here are boolean bits. Duplicate slots for one key only add counts that
//! are each at least `k`, so distinct keys need no check.

use ark_bn254::Fr;
use ark_ff::{Field, One, Zero};
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystemRef, SynthesisError};

use crate::encoding::{data_tag, tag, TAG_CHALLENGE};
use crate::gadget::{Builder, Lc, SpongeVar};
use crate::proof::STATEMENT_BYTES;
use crate::shape::COUNT_BITS;
use crate::{Shape, Statement};
use ark_crypto_primitives::crh::sha256::constraints::Sha256Gadget;

/// Everything the prover knows.
#[derive(Clone)]
pub(crate) struct Witness {
    pub statement: Statement,
    pub salt: Fr,
    /// Per row (padded to the shape), the key.
    pub keys: Vec<u64>,
    /// The sensitive elements (padded to the shape).
    pub sensitive: Vec<Fr>,
    /// Per slot (padded to the shape), the key and its count above `k`.
    pub classes: Vec<(u64, u64)>,
}

/// The circuit of one shape, with or without a witness (keys are generated without).
pub(crate) struct KAnonCircuit {
    pub shape: Shape,
    pub witness: Option<Witness>,
}

impl ConstraintSynthesizer<Fr> for KAnonCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        self.synthesize(cs, &mut |_, _| {})
    }
}

/// Constraints per part of the circuit of `shape`, in circuit order: parameters, data
/// commitment, challenge, class multiplicities.
pub fn constraint_profile(shape: Shape) -> Result<Vec<(&'static str, usize)>, SynthesisError> {
    let cs = ark_relations::gr1cs::ConstraintSystem::<Fr>::new_ref();
    cs.set_mode(ark_relations::gr1cs::SynthesisMode::Setup);
    let mut parts = Vec::new();
    let mut before = 0;
    KAnonCircuit {
        shape,
        witness: None,
    }
    .synthesize(cs, &mut |part, total| {
        parts.push((part, total - before));
        before = total;
    })?;
    Ok(parts)
}

impl KAnonCircuit {
    /// The constraints; `part(name, constraints so far)` is called after each part.
    fn synthesize(
        self,
        cs: ConstraintSystemRef<Fr>,
        part: &mut dyn FnMut(&'static str, usize),
    ) -> Result<(), SynthesisError> {
        let shape = self.shape;
        let w = self.witness.as_ref();
        if let Some(w) = w {
            let lengths = (w.keys.len(), w.sensitive.len(), w.classes.len());
            let expected = (
                shape.rows as usize,
                shape.sensitive_elements(),
                shape.classes as usize,
            );
            if lengths != expected {
                return Err(SynthesisError::Unsatisfiable);
            }
        }
        let b = Builder::new(cs);

        // 0. The statement: its packed bytes hash to the public input, and give the
        //    commitment, k, rows, suppressed and limit (big-endian).
        let st = w.map(|w| &w.statement);
        let statement = b.input(st.map(Statement::public_input))?;
        let packed = st.map(Statement::packed);
        let bytes = b.statement_bytes(packed.as_ref().map(|p| &p[..]), STATEMENT_BYTES)?;
        let digest = Sha256Gadget::digest(&bytes)?;
        // The digest shifted right by 3 bits, below the field's order.
        b.enforce_equal(&statement, &Lc::from_be_bits(&digest.0, 3))?;
        let field = |range: std::ops::Range<usize>| Lc::from_be_bits(&bytes[range], 0);
        let commitment = field(0..32);
        let k = field(32..34);
        let rows = field(34..38);
        let suppressed = field(38..42);
        let limit = field(42..46);
        let capacity = Lc::constant(Fr::from(shape.rows as u64));
        // rows ≤ N and suppressed ≤ limit: the differences have 32 bits each.
        let room = b.bits_of(st.map(|s| shape.rows.saturating_sub(s.rows) as u64), 32)?;
        b.enforce_equal(&room, &capacity.sub(&rows))?;
        let gap = b.bits_of(st.map(|s| s.limit.saturating_sub(s.suppressed) as u64), 32)?;
        b.enforce_equal(&gap, &limit.sub(&suppressed))?;
        part("statement (SHA-256) and parameters", b.constraints());

        // 1. The data commitment: the salt, the row count, every row's key as an element
        //    of its own (so the keys are fixed before the challenge, whatever their
        //    values), the sensitive elements.
        let salt = b.witness(w.map(|w| w.salt))?;
        let mut data = SpongeVar::new(data_tag(shape));
        data.absorb(&b, &salt)?;
        data.absorb(&b, &rows)?;
        let mut keys = Vec::with_capacity(shape.rows as usize);
        for i in 0..shape.rows as usize {
            let key = b.witness(w.map(|w| Fr::from(w.keys[i])))?;
            data.absorb(&b, &key)?;
            keys.push(key);
        }
        for i in 0..shape.sensitive_elements() {
            let element = b.witness(w.map(|w| w.sensitive[i]))?;
            data.absorb(&b, &element)?;
        }
        let computed = data.finish(&b)?;
        b.enforce_equal(&computed, &commitment)?;
        part("data commitment (Poseidon sponge)", b.constraints());

        // 2. The class table, and the challenge over everything the prover chose: each
        //    slot's key and its count above k (24 boolean bits: a range check that needs
        //    no challenge) are elements of their own in the transcript.
        let mut transcript = SpongeVar::new(tag(TAG_CHALLENGE, shape));
        transcript.absorb(&b, &statement)?;
        transcript.absorb(&b, &commitment)?;
        let mut slots = Vec::with_capacity(shape.classes as usize);
        for j in 0..shape.classes as usize {
            let key = b.witness(w.map(|w| Fr::from(w.classes[j].0)))?;
            let above_k = b.bits_of(w.map(|w| w.classes[j].1), COUNT_BITS)?;
            transcript.absorb(&b, &key)?;
            transcript.absorb(&b, &above_k)?;
            slots.push((key, above_k));
        }
        let gamma = transcript.finish(&b)?;
        part("challenge (class table)", b.constraints());

        // 3. The rows' keys are the class table's, each class at least k rows.
        let one = Lc::constant(Fr::one());
        let row_side = keys
            .iter()
            .map(|key| b.quotient(&one, &gamma.sub(key)))
            .collect::<Result<Vec<_>, _>>()?;
        let zero_count = capacity.sub(&rows).add(&suppressed);
        let mut table_side = vec![b.quotient(&zero_count, &gamma)?];
        for (key, above_k) in &slots {
            let used = b.witness(key.value.map(|v| Fr::from(!v.is_zero() as u64)))?;
            let key_inverse = b.witness(key.value.map(|v| v.inverse().unwrap_or_else(Fr::zero)))?;
            let unused = one.sub(&used);
            // used = 1 exactly when the key is not 0.
            b.enforce_product(key, &key_inverse, &used)?;
            b.enforce_product(key, &unused, &Lc::constant(Fr::zero()))?;
            // An unused slot counts nothing; a used one k + d.
            b.enforce_product(above_k, &unused, &Lc::constant(Fr::zero()))?;
            let k_if_used = b.mul(&k, &used)?;
            let count = k_if_used.add(above_k);
            table_side.push(b.quotient(&count, &gamma.sub(key))?);
        }
        b.enforce_equal(&Lc::sum(&row_side), &Lc::sum(&table_side))?;
        part("class multiplicities (lookup)", b.constraints());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{EncodedTable, Salt, Schema, SchemaColumn};
    use crate::ProofRequest;
    use ark_relations::gr1cs::ConstraintSystem;
    use medmesh_anon::policy::Role;
    use medmesh_anon::Table;

    /// 30 rows: classes of 5 (age band × sex), 2 suppressed, a sensitive column.
    fn table() -> (Table, Schema) {
        let mut t = Table::with_columns(&["age", "sex", "diagnosis"]).unwrap();
        for (i, (age, sex)) in [
            ("20-29", "F"),
            ("20-29", "M"),
            ("30-39", "F"),
            ("30-39", "M"),
        ]
        .iter()
        .enumerate()
        {
            for j in 0..7 {
                t.push_row(&[*age, *sex, ["flu", "asthma", "copd"][(i + j) % 3]])
                    .unwrap();
            }
        }
        t.push_row(&["*", "*", "*"]).unwrap();
        t.push_row(&["*", "*", "*"]).unwrap();
        let schema = Schema {
            columns: vec![
                SchemaColumn {
                    name: "age".into(),
                    role: Role::QuasiIdentifier,
                },
                SchemaColumn {
                    name: "sex".into(),
                    role: Role::QuasiIdentifier,
                },
                SchemaColumn {
                    name: "diagnosis".into(),
                    role: Role::Sensitive,
                },
            ],
        };
        (t, schema)
    }

    fn witness(k: u16) -> Witness {
        let (t, schema) = table();
        let encoded = EncodedTable::new(&t, &schema).unwrap();
        let salt = Salt([7; 31]);
        let request = ProofRequest {
            table: &encoded,
            schema: &schema,
            k,
            limit: 3,
            salt: &salt,
            institution: [0x11; 20],
        };
        request.witness(Some(Shape::ROWS_64)).unwrap().1
    }

    fn satisfied(witness: Witness) -> bool {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let circuit = KAnonCircuit {
            shape: Shape::ROWS_64,
            witness: Some(witness),
        };
        circuit.generate_constraints(cs.clone()).unwrap();
        cs.finalize();
        cs.is_satisfied().unwrap()
    }

    #[test]
    fn an_honest_witness_satisfies_every_constraint() {
        assert!(satisfied(witness(7)));
        assert!(satisfied(witness(5)));
    }

    #[test]
    fn the_shape_alone_has_as_many_constraints_as_a_witness() {
        let count = |witness: Option<Witness>| {
            let cs = ConstraintSystem::<Fr>::new_ref();
            if witness.is_none() {
                cs.set_mode(ark_relations::gr1cs::SynthesisMode::Setup);
            }
            KAnonCircuit {
                shape: Shape::ROWS_64,
                witness,
            }
            .generate_constraints(cs.clone())
            .unwrap();
            cs.num_constraints()
        };
        assert_eq!(count(None), count(Some(witness(5))));
    }

    #[test]
    fn a_class_below_k_cannot_be_forced_through() {
        // The prover refuses k = 8 (classes have 7 rows) ...
        let (t, schema) = table();
        let encoded = EncodedTable::new(&t, &schema).unwrap();
        let salt = Salt([7; 31]);
        let refused = ProofRequest {
            table: &encoded,
            schema: &schema,
            k: 8,
            limit: 3,
            salt: &salt,
            institution: [0x11; 20],
        }
        .witness(Some(Shape::ROWS_64));
        assert!(matches!(
            refused,
            Err(crate::ZkError::NotKAnonymous { size: 7, k: 8 })
        ));
        // ... and a witness built past that check, claiming each class has 8 + 0 rows,
        // breaks the multiplicity identity.
        let mut forced = witness(7);
        forced.statement.k = 8;
        for slot in forced.classes.iter_mut().filter(|(key, _)| *key != 0) {
            slot.1 = 0;
        }
        assert!(!satisfied(forced));
        // Nor with the largest count above k the bits hold (a stand-in for −1, which a
        // witness cannot even express: the count is 24 boolean bits).
        let mut negative = witness(7);
        negative.statement.k = 8;
        for slot in negative.classes.iter_mut().filter(|(key, _)| *key != 0) {
            slot.1 = u64::MAX;
        }
        assert!(!satisfied(negative));
    }

    #[test]
    fn lying_about_suppression_or_rows_is_caught() {
        let mut fewer_suppressed = witness(5);
        fewer_suppressed.statement.suppressed = 1;
        assert!(!satisfied(fewer_suppressed));
        let mut more_rows = witness(5);
        more_rows.statement.rows += 1;
        assert!(!satisfied(more_rows));
        // Suppressed rows passed off as padding (rows and suppressed both 2 lower, which
        // leaves the count of key-0 rows unchanged): the row count is in the commitment.
        let mut fewer_rows = witness(5);
        fewer_rows.statement.rows -= 2;
        fewer_rows.statement.suppressed -= 2;
        assert!(!satisfied(fewer_rows));
        // Two suppressed rows hidden in an unused slot (key 0, count 2) while claiming
        // two fewer suppressed: an unused slot counts nothing.
        let mut hidden = witness(5);
        hidden.statement.suppressed -= 2;
        let unused = hidden
            .classes
            .iter()
            .position(|(key, _)| *key == 0)
            .unwrap();
        hidden.classes[unused] = (0, 2);
        assert!(!satisfied(hidden));
        // More suppressed than the limit, consistently claimed.
        let mut over = witness(5);
        over.statement.limit = 1;
        assert!(!satisfied(over));
    }

    #[test]
    fn more_rows_than_the_circuit_holds_fail_on_the_room_check_alone() {
        // Claim 65 rows in the 64-row circuit with everything else consistent: the
        // commitment made with rows = 65, and suppressed raised so that the key-0 count
        // N − rows + suppressed still matches. Only `rows ≤ N` is left to fail.
        let mut w = witness(5);
        let zero_keys = w.keys.iter().filter(|k| **k == 0).count() as u32;
        w.statement.rows = 65;
        w.statement.suppressed = zero_keys + 65 - 64;
        w.statement.limit = w.statement.suppressed;
        let elements = [w.salt, Fr::from(65u64)]
            .into_iter()
            .chain(w.keys.iter().map(|k| Fr::from(*k)))
            .chain(w.sensitive.iter().copied());
        w.statement.commitment =
            crate::Commitment(crate::poseidon::sponge(data_tag(Shape::ROWS_64), elements));
        assert!(!satisfied(w.clone()));
        // The same witness with 64 rows (suppressed one lower) satisfies everything.
        w.statement.rows = 64;
        w.statement.suppressed -= 1;
        let elements = [w.salt, Fr::from(64u64)]
            .into_iter()
            .chain(w.keys.iter().map(|k| Fr::from(*k)))
            .chain(w.sensitive.iter().copied());
        w.statement.commitment =
            crate::Commitment(crate::poseidon::sponge(data_tag(Shape::ROWS_64), elements));
        assert!(satisfied(w));
    }

    #[test]
    fn a_class_table_that_is_not_the_rows_fails() {
        // Merge two classes into one slot of 14: the rows' keys no longer match.
        let mut merged = witness(5);
        let first = merged.classes[0];
        merged.classes[0] = (first.0, first.1 + 7);
        merged.classes[1] = (0, 0);
        assert!(!satisfied(merged));
        // A changed row key (the commitment no longer matches).
        let mut changed = witness(5);
        changed.keys[0] ^= 1;
        assert!(!satisfied(changed));
    }
}
