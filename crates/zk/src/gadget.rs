//! The circuit's building blocks over raw rank-1 constraints: linear combinations that
//! carry their value ([`Lc`]), a [`Builder`] that allocates and constrains, Poseidon's
//! permutation and sponge ([`SpongeVar`], the twin of [`crate::poseidon::sponge`]), and
//! range checks by boolean bits ([`Builder::bits_of`]).
//!
//! Values are `None` while the keys are generated (setup synthesizes the shape only).

use std::sync::OnceLock;

use ark_bn254::Fr;
use ark_ff::{Field, One, Zero};
use ark_r1cs_std::uint8::UInt8;
use ark_r1cs_std::GR1CSVar;
use ark_relations::gr1cs::{ConstraintSystemRef, LinearCombination, SynthesisError, Variable};

use crate::poseidon::{self, params, WIDTH};

/// A linear combination of circuit variables and its value (when proving).
#[derive(Clone, Debug)]
pub(crate) struct Lc {
    pub lc: LinearCombination<Fr>,
    pub value: Option<Fr>,
}

impl Lc {
    /// The constant `c`.
    pub fn constant(c: Fr) -> Self {
        let lc = if c.is_zero() {
            LinearCombination::zero()
        } else {
            LinearCombination::from((c, Variable::One))
        };
        Lc { lc, value: Some(c) }
    }

    fn variable(variable: Variable, value: Option<Fr>) -> Self {
        Lc {
            lc: LinearCombination::from(variable),
            value,
        }
    }

    pub fn add(&self, other: &Lc) -> Lc {
        Lc {
            lc: &self.lc + &other.lc,
            value: self.value.zip(other.value).map(|(a, b)| a + b),
        }
    }

    pub fn sub(&self, other: &Lc) -> Lc {
        Lc {
            lc: &self.lc - &other.lc,
            value: self.value.zip(other.value).map(|(a, b)| a - b),
        }
    }

    pub fn scale(&self, c: Fr) -> Lc {
        Lc {
            lc: &self.lc * c,
            value: self.value.map(|v| v * c),
        }
    }

    pub fn add_constant(&self, c: Fr) -> Lc {
        self.add(&Lc::constant(c))
    }

    /// `Σ terms`, built at once (adding one by one would copy a growing combination
    /// for every term).
    pub fn sum(terms: &[Lc]) -> Lc {
        let mut lc = LinearCombination(terms.iter().flat_map(|t| t.lc.0.iter().copied()).collect());
        lc.compactify();
        let value = terms
            .iter()
            .try_fold(Fr::zero(), |acc, t| t.value.map(|v| acc + v));
        Lc { lc, value }
    }

    /// The big-endian integer of `bytes` (bytes of the SHA-256 gadget) with its
    /// `dropped` lowest bits left out (shifted right by them); its value is read from
    /// the bits' when proving.
    pub fn from_be_bits(bytes: &[UInt8<Fr>], dropped: usize) -> Lc {
        let mut terms = Vec::with_capacity(8 * bytes.len());
        let mut value = Some(Fr::zero());
        let mut weight = Fr::one();
        // Bit t of the integer, from the least significant, has weight 2^(t − dropped).
        let bits = bytes.iter().rev().flat_map(|byte| byte.bits.iter());
        for bit in bits.skip(dropped) {
            terms.push((weight, bit.variable()));
            value = value
                .zip(bit.value().ok())
                .map(|(acc, b)| if b { acc + weight } else { acc });
            weight += weight;
        }
        let mut lc = LinearCombination(terms);
        lc.compactify();
        Lc { lc, value }
    }
}

/// Allocates variables and enforces constraints.
pub(crate) struct Builder {
    cs: ConstraintSystemRef<Fr>,
}

type Result<T> = std::result::Result<T, SynthesisError>;

impl Builder {
    pub fn new(cs: ConstraintSystemRef<Fr>) -> Self {
        Builder { cs }
    }

    /// Constraints so far.
    pub fn constraints(&self) -> usize {
        self.cs.num_constraints()
    }

    pub fn witness(&self, value: Option<Fr>) -> Result<Lc> {
        let v = self
            .cs
            .new_witness_variable(|| value.ok_or(SynthesisError::AssignmentMissing))?;
        Ok(Lc::variable(v, value))
    }

    pub fn input(&self, value: Option<Fr>) -> Result<Lc> {
        let v = self
            .cs
            .new_input_variable(|| value.ok_or(SynthesisError::AssignmentMissing))?;
        Ok(Lc::variable(v, value))
    }

    /// `a · b = c`.
    pub fn enforce_product(&self, a: &Lc, b: &Lc, c: &Lc) -> Result<()> {
        self.cs
            .enforce_r1cs_constraint(|| a.lc.clone(), || b.lc.clone(), || c.lc.clone())
    }

    /// `a = b`.
    pub fn enforce_equal(&self, a: &Lc, b: &Lc) -> Result<()> {
        self.enforce_product(
            &a.sub(b),
            &Lc::constant(Fr::one()),
            &Lc::constant(Fr::zero()),
        )
    }

    /// A new variable `c = a · b`.
    pub fn mul(&self, a: &Lc, b: &Lc) -> Result<Lc> {
        let c = self.witness(a.value.zip(b.value).map(|(a, b)| a * b))?;
        self.enforce_product(a, b, &c)?;
        Ok(c)
    }

    /// A new variable `q` with `q · divisor = numerator`; when proving, a zero divisor
    /// is an error (not a panic): the witness has no quotient.
    pub fn quotient(&self, numerator: &Lc, divisor: &Lc) -> Result<Lc> {
        let value = match (numerator.value, divisor.value) {
            (Some(n), Some(d)) => Some(n * d.inverse().ok_or(SynthesisError::DivisionByZero)?),
            _ => None,
        };
        let q = self.witness(value)?;
        self.enforce_product(&q, divisor, numerator)?;
        Ok(q)
    }

    /// `n` bytes the prover chooses, for the SHA-256 gadget (each its 8 boolean bits).
    pub fn statement_bytes(&self, values: Option<&[u8]>, n: usize) -> Result<Vec<UInt8<Fr>>> {
        let values: Vec<Option<u8>> = (0..n).map(|i| values.map(|v| v[i])).collect();
        UInt8::new_witness_vec(self.cs.clone(), &values)
    }

    /// A value the prover chooses, of `n` bits: `n` boolean variables (one constraint
    /// each) and their sum. When proving, a value that does not fit keeps its low bits
    /// (and then fails the constraints that use it).
    pub fn bits_of(&self, value: Option<u64>, n: usize) -> Result<Lc> {
        let one = Lc::constant(Fr::one());
        let zero = Lc::constant(Fr::zero());
        let mut bits = Vec::with_capacity(n);
        let mut weight = Fr::one();
        for i in 0..n {
            let bit = self.witness(value.map(|v| Fr::from((v >> i) & 1)))?;
            self.enforce_product(&bit, &one.sub(&bit), &zero)?;
            bits.push(bit.scale(weight));
            weight += weight;
        }
        Ok(Lc::sum(&bits))
    }

    /// x⁵ in three constraints.
    fn sbox(&self, x: &Lc) -> Result<Lc> {
        let x2 = self.mul(x, x)?;
        let x4 = self.mul(&x2, &x2)?;
        self.mul(&x4, x)
    }

    /// Poseidon's permutation of `state`.
    pub fn permute(&self, state: &mut [Lc; WIDTH]) -> Result<()> {
        let p = params();
        let half = p.full_rounds / 2;
        let mut outputs = Vec::new();
        for round in 0..half {
            outputs = self.full_round(state, round)?;
        }
        self.partial_rounds(state, half, &outputs)?;
        for round in half + p.partial_rounds..p.full_rounds + p.partial_rounds {
            self.full_round(state, round)?;
        }
        Ok(())
    }

    /// One full round; returns its S-box outputs (the state is `MDS ·` them).
    fn full_round(&self, state: &mut [Lc; WIDTH], round: usize) -> Result<Vec<Variable>> {
        let p = params();
        let mut outputs = Vec::with_capacity(WIDTH);
        for (lane, c) in state.iter().zip(&p.ark[round]) {
            outputs.push(self.sbox(&lane.add_constant(*c))?);
        }
        let variables: Vec<Variable> = outputs.iter().map(|y| y.lc.0[0].1).collect();
        for (lane, row) in state.iter_mut().zip(&p.mds) {
            let value = outputs
                .iter()
                .zip(row)
                .try_fold(Fr::zero(), |acc, (y, m)| y.value.map(|v| acc + *m * v));
            *lane = Lc {
                lc: combination(row, &variables),
                value,
            };
        }
        Ok(variables)
    }

    /// The partial rounds from round `first`, entered with `state = MDS · y`: lane 0's
    /// S-box inputs and the outputs are linear in `y` and these rounds' own S-box
    /// outputs, so they are built from coefficients worked out once ([`PartialPlan`])
    /// instead of by mixing growing linear combinations round after round. The values
    /// follow the native permutation step by step.
    fn partial_rounds(&self, state: &mut [Lc; WIDTH], first: usize, y: &[Variable]) -> Result<()> {
        let plan = partial_plan();
        let p = params();
        let mut basis: Vec<Variable> = Vec::with_capacity(1 + WIDTH + plan.sbox_inputs.len());
        basis.push(Variable::One);
        basis.extend_from_slice(y);
        let mut native: Option<[Fr; WIDTH]> = state
            .iter()
            .map(|l| l.value)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.try_into().expect("width"));
        for (r, coefficients) in plan.sbox_inputs.iter().enumerate() {
            if let Some(s) = native.as_mut() {
                for (lane, c) in s.iter_mut().zip(&p.ark[first + r]) {
                    *lane += c;
                }
            }
            let input = Lc {
                lc: combination(coefficients, &basis),
                value: native.map(|s| s[0]),
            };
            let output = self.sbox(&input)?;
            basis.push(output.lc.0[0].1);
            if let (Some(s), Some(z)) = (native.as_mut(), output.value) {
                s[0] = z;
                poseidon::mix(s);
            }
        }
        for (i, (lane, coefficients)) in state.iter_mut().zip(&plan.outputs).enumerate() {
            *lane = Lc {
                lc: combination(coefficients, &basis),
                value: native.map(|s| s[i]),
            };
        }
        Ok(())
    }
}

/// `Σ coefficients[i] · basis[i]` over the non-zero coefficients.
fn combination(coefficients: &[Fr], basis: &[Variable]) -> LinearCombination<Fr> {
    let mut lc = LinearCombination(
        coefficients
            .iter()
            .zip(basis)
            .filter(|(c, _)| !c.is_zero())
            .map(|(c, v)| (*c, *v))
            .collect(),
    );
    lc.compactify();
    lc
}

/// The partial rounds as coefficients over the basis `[1, y_0..y_12, z_1..z_P]`, where
/// the state entering them is `MDS · y` and `z_r` is round `r`'s S-box output.
pub(crate) struct PartialPlan {
    /// Per partial round, lane 0's S-box input.
    pub sbox_inputs: Vec<Vec<Fr>>,
    /// The state after the partial rounds.
    pub outputs: Vec<Vec<Fr>>,
}

pub(crate) fn partial_plan() -> &'static PartialPlan {
    static PLAN: OnceLock<PartialPlan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let p = params();
        let basis = 1 + WIDTH + p.partial_rounds;
        let first = p.full_rounds / 2;
        // lanes[i][b]: coefficient of basis element b in lane i.
        let mut lanes: Vec<Vec<Fr>> = (0..WIDTH)
            .map(|i| {
                let mut c = vec![Fr::zero(); basis];
                c[1..=WIDTH].copy_from_slice(&p.mds[i]);
                c
            })
            .collect();
        let mut sbox_inputs = Vec::with_capacity(p.partial_rounds);
        for r in 0..p.partial_rounds {
            for (lane, c) in lanes.iter_mut().zip(&p.ark[first + r]) {
                lane[0] += c;
            }
            sbox_inputs.push(lanes[0].clone());
            lanes[0] = vec![Fr::zero(); basis];
            lanes[0][1 + WIDTH + r] = Fr::one();
            lanes = p
                .mds
                .iter()
                .map(|row| {
                    let mut mixed = vec![Fr::zero(); basis];
                    for (m, lane) in row.iter().zip(&lanes) {
                        for (acc, x) in mixed.iter_mut().zip(lane) {
                            *acc += *m * x;
                        }
                    }
                    mixed
                })
                .collect();
        }
        PartialPlan {
            sbox_inputs,
            outputs: lanes,
        }
    })
}

/// The sponge of [`crate::poseidon::sponge`] in the circuit.
pub(crate) struct SpongeVar {
    state: [Lc; WIDTH],
    pending: usize,
    permuted: bool,
}

impl SpongeVar {
    pub fn new(tag: Fr) -> Self {
        let mut state: [Lc; WIDTH] = std::array::from_fn(|_| Lc::constant(Fr::zero()));
        state[0] = Lc::constant(tag);
        SpongeVar {
            state,
            pending: 0,
            permuted: false,
        }
    }

    pub fn absorb(&mut self, builder: &Builder, x: &Lc) -> Result<()> {
        let lane = &mut self.state[1 + self.pending];
        *lane = lane.add(x);
        self.pending += 1;
        if self.pending == poseidon::RATE {
            builder.permute(&mut self.state)?;
            self.pending = 0;
            self.permuted = true;
        }
        Ok(())
    }

    pub fn finish(mut self, builder: &Builder) -> Result<Lc> {
        if self.pending > 0 || !self.permuted {
            builder.permute(&mut self.state)?;
        }
        let [_, out, ..] = self.state;
        Ok(out)
    }
}
