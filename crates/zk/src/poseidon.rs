//! Poseidon over BN254's scalar field, natively: the permutation of width 13 with
//! circom's parameters (x⁵ S-box, 8 full and 65 partial rounds, from `light-poseidon`),
//! and the sponge medmesh commits tables with.
//!
//! The sponge keeps lane 0 as its capacity (set to a domain tag), adds up to 12 elements
//! into lanes 1–12, permutes, and after the last chunk reads lane 1. Width 13 is the
//! widest circom parameter set: the fewer permutations per absorbed element, the fewer
//! constraints (507 per permutation, 42.25 per element). The circuit's twin is
//! [`crate::gadget::SpongeVar`]; both are fixed-length, so no padding rule is needed
//! beyond the length being fixed by the circuit's shape (which the tag carries).

use std::sync::OnceLock;

use ark_bn254::Fr;
use ark_ff::{Field, Zero};

/// Lanes of the permutation.
pub const WIDTH: usize = 13;
/// Elements absorbed per permutation.
pub const RATE: usize = WIDTH - 1;

/// The permutation's constants.
pub(crate) struct Params {
    /// Round constants, one row per round.
    pub ark: Vec<[Fr; WIDTH]>,
    /// The MDS matrix, `new[i] = Σ_j mds[i][j] · old[j]`.
    pub mds: [[Fr; WIDTH]; WIDTH],
    /// Full rounds (half before, half after the partial ones).
    pub full_rounds: usize,
    /// Partial rounds (S-box on lane 0 only).
    pub partial_rounds: usize,
}

/// The width-13 parameters, converted once.
pub(crate) fn params() -> &'static Params {
    static PARAMS: OnceLock<Params> = OnceLock::new();
    PARAMS.get_or_init(|| {
        let p = light_poseidon::parameters::bn254_x5::get_poseidon_parameters::<Fr>(WIDTH as u8)
            .expect("light-poseidon ships width-13 parameters");
        assert_eq!((p.width, p.alpha), (WIDTH, 5), "circom's x^5 parameters");
        let rounds = p.full_rounds + p.partial_rounds;
        let ark = (0..rounds)
            .map(|r| std::array::from_fn(|i| p.ark[r * WIDTH + i]))
            .collect();
        let mds = std::array::from_fn(|i| std::array::from_fn(|j| p.mds[i][j]));
        Params {
            ark,
            mds,
            full_rounds: p.full_rounds,
            partial_rounds: p.partial_rounds,
        }
    })
}

/// x⁵.
pub(crate) fn sbox(x: Fr) -> Fr {
    let x2 = x.square();
    x2.square() * x
}

/// `state ← MDS · state`.
pub(crate) fn mix(state: &mut [Fr; WIDTH]) {
    let mds = &params().mds;
    let old = *state;
    for (lane, row) in state.iter_mut().zip(mds) {
        *lane = row.iter().zip(&old).map(|(m, x)| *m * x).sum();
    }
}

/// The permutation, in place.
pub fn permute(state: &mut [Fr; WIDTH]) {
    let p = params();
    let half = p.full_rounds / 2;
    for (round, constants) in p.ark.iter().enumerate() {
        for (lane, c) in state.iter_mut().zip(constants) {
            *lane += c;
        }
        if round < half || round >= half + p.partial_rounds {
            state.iter_mut().for_each(|x| *x = sbox(*x));
        } else {
            state[0] = sbox(state[0]);
        }
        mix(state);
    }
}

/// The fixed-length sponge: `tag` in the capacity lane, `elements` absorbed 12 at a
/// time, lane 1 read after the last permutation (one permutation if nothing is
/// absorbed).
pub fn sponge(tag: Fr, elements: impl IntoIterator<Item = Fr>) -> Fr {
    let mut state = [Fr::zero(); WIDTH];
    state[0] = tag;
    let mut pending = 0;
    let mut permuted = false;
    for x in elements {
        state[1 + pending] += x;
        pending += 1;
        if pending == RATE {
            permute(&mut state);
            pending = 0;
            permuted = true;
        }
    }
    if pending > 0 || !permuted {
        permute(&mut state);
    }
    state[1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use light_poseidon::{Poseidon, PoseidonHasher};

    #[test]
    fn the_permutation_is_circoms() {
        // circom's Poseidon(x1..x12) is the permutation of [0, x1..x12], lane 0 read.
        let inputs: Vec<Fr> = (1..=RATE as u64).map(|i| Fr::from(i * 7919)).collect();
        let expected = Poseidon::<Fr>::new_circom(RATE)
            .unwrap()
            .hash(&inputs)
            .unwrap();
        let mut state = [Fr::zero(); WIDTH];
        state[1..].copy_from_slice(&inputs);
        permute(&mut state);
        assert_eq!(state[0], expected);
    }

    #[test]
    fn the_sponge_separates_tags_lengths_and_order() {
        let a = sponge(Fr::from(1u64), [Fr::from(5u64), Fr::from(6u64)]);
        assert_ne!(a, sponge(Fr::from(2u64), [Fr::from(5u64), Fr::from(6u64)]));
        assert_ne!(a, sponge(Fr::from(1u64), [Fr::from(6u64), Fr::from(5u64)]));
        // 13 elements take two permutations; the 13th matters.
        let long: Vec<Fr> = (0..13u64).map(Fr::from).collect();
        let mut other = long.clone();
        other[12] = Fr::from(99u64);
        assert_ne!(sponge(Fr::zero(), long), sponge(Fr::zero(), other));
    }
}
