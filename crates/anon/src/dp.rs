//! Differentially private counts.
//!
//! - Exact samplers for Bernoulli(exp(−γ)), the discrete Laplace and the discrete
//!   Gaussian distributions (Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for
//!   Differential Privacy", Algorithms 1–3). Their arithmetic is on integers only, with
//!   every overflow checked. No floating-point number touches a sample.
//! - [`answer`]: a counting query over a [`Table`]: filters, then an optional group-by
//!   over a *public* domain, with noise added to every cell.
//! - [`Budget`]: a privacy budget under basic sequential composition.
//!
//! # The privacy guarantee
//!
//! Two tables are neighbours when one is the other with **one row added or removed**
//! (unbounded DP). A count changes by at most 1 between neighbours, so its sensitivity
//! is 1. In a group-by each row falls into exactly one cell (or into none, when its
//! value is outside the public domain), so the vector of counts has L1 and L2
//! sensitivity 1. The whole histogram therefore costs the same ε (and δ) as a single
//! count: this is parallel composition. If the neighbour relation you need is *one row
//! replaced* (bounded DP), the sensitivities become 2 and √2, and the privacy cost of
//! every mechanism here doubles. Declare half the ε in that case.
//!
//! - [`Mechanism::Laplace`]: discrete Laplace noise of scale 1/ε, which is ε-DP. The
//!   scale is the exact reciprocal of the binary value of the `f64` ε (see
//!   [`laplace_scale`]), so the ε spent equals the ε declared, with no rounding.
//! - [`Mechanism::Gaussian`]: discrete Gaussian noise. With variance σ² it is
//!   ρ-zCDP with ρ = 1/(2σ²) (CKS20, Theorem 4), and ρ-zCDP implies
//!   (ρ + 2·√(ρ·ln(1/δ)), δ)-DP for every δ > 0 (Bun and Steinke 2016, Proposition
//!   1.3). [`gaussian_variance`] solves that for ρ and rounds σ² up, so the ε spent is at
//!   most the ε declared.
//!
//! # What callers must get right
//!
//! - **Group domains must be public.** They must come from a code list, a schema or a
//!   hierarchy, and never from the data: [`crate::Column::dictionary`] is not a public
//!   domain. If the set of reported groups depended on the data, a group appearing
//!   would reveal that some row has that value, whatever the noise.
//! - **Charge before you release.** [`answer_with_budget`] validates the query,
//!   charges the budget and only then counts.
//! - **Timing.** The samplers' running time depends on the value drawn, as in every
//!   known exact sampler, OpenDP's included. Don't expose precise timings of single
//!   queries to the analyst.
//! - Noisy counts may be negative. Clamping them at zero (`clamp_at_zero`) is
//!   post-processing and costs no privacy.

use std::collections::HashMap;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::{error::AnonError, table::Table};

/// The smallest ε accepted. It keeps the exact integer arithmetic of the samplers
/// within `u128`.
pub const MIN_EPSILON: f64 = 1e-6;
/// The largest ε accepted. Beyond it a "private" count is close to the true one.
pub const MAX_EPSILON: f64 = 10.0;
/// The largest δ accepted for the Gaussian mechanism.
pub const MAX_DELTA: f64 = 1e-3;
/// The most cells (combinations of group values) a query may report.
pub const MAX_GROUPS: usize = 10_000;
/// Relative slack with which [`Budget::charge`] accepts a charge that reaches the
/// total. See [`Budget`].
pub const BUDGET_SLACK: f64 = 1e-12;

/// Relative amount by which the Gaussian's σ² is enlarged beyond the calibrated
/// value. It covers the `f64` rounding of `ln` and `sqrt`, which is about 1e-16.
const CALIBRATION_MARGIN: f64 = 1e-9;

// ---------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------

/// A source of uniform random integers for the samplers.
///
/// Implementations supply [`RandomSource::next_u128`]. [`RandomSource::uniform_below`]
/// is provided on top of it and is unbiased. For releases use [`SystemRandomSource`]:
/// any other source must be a cryptographically secure generator, or the privacy
/// guarantee is void.
pub trait RandomSource {
    /// 128 uniformly random bits.
    fn next_u128(&mut self) -> Result<u128, AnonError>;

    /// A uniform integer in `[0, n)`. It uses rejection sampling, so no value is
    /// favoured (there is no modulo bias). `n = 0` is an error.
    fn uniform_below(&mut self, n: u128) -> Result<u128, AnonError> {
        if n == 0 {
            return Err(AnonError::Dp(
                "uniform_below(0): the range is empty".to_owned(),
            ));
        }
        if n.is_power_of_two() {
            return Ok(self.next_u128()? & (n - 1));
        }
        // [0, zone) holds a whole number of copies of [0, n).
        let zone = u128::MAX - u128::MAX % n;
        loop {
            let x = self.next_u128()?;
            if x < zone {
                return Ok(x % n);
            }
        }
    }
}

/// The operating system's CSPRNG, through `ring`'s [`SystemRandom`]. Use it for every
/// release.
///
/// It reads 512 bytes at a time. Each value is wiped from the buffer once it has been
/// handed out.
pub struct SystemRandomSource {
    rng: SystemRandom,
    buffer: [u8; 512],
    used: usize,
}

impl SystemRandomSource {
    /// A source reading the operating system's generator.
    pub fn new() -> Self {
        Self {
            rng: SystemRandom::new(),
            buffer: [0; 512],
            used: 512,
        }
    }
}

impl Default for SystemRandomSource {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SystemRandomSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemRandomSource")
    }
}

impl RandomSource for SystemRandomSource {
    fn next_u128(&mut self) -> Result<u128, AnonError> {
        if self.used + 16 > self.buffer.len() {
            self.rng
                .fill(&mut self.buffer)
                .map_err(|_| AnonError::Randomness)?;
            self.used = 0;
        }
        let chunk = &mut self.buffer[self.used..self.used + 16];
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(chunk);
        chunk.fill(0);
        self.used += 16;
        Ok(u128::from_le_bytes(bytes))
    }
}

// ---------------------------------------------------------------------------------
// Exact samplers (CKS20)
// ---------------------------------------------------------------------------------

fn overflow() -> AnonError {
    AnonError::Dp("integer overflow in the noise sampler (parameters too large)".to_owned())
}

/// Bernoulli(num/den), for 0 ≤ num ≤ den and den ≥ 1.
fn bernoulli_rational<R: RandomSource + ?Sized>(
    rng: &mut R,
    num: u128,
    den: u128,
) -> Result<bool, AnonError> {
    Ok(rng.uniform_below(den)? < num)
}

/// Bernoulli(exp(−num/den)) for 0 ≤ num/den ≤ 1 (CKS20 Algorithm 1, first part).
fn bernoulli_exp_at_most_one<R: RandomSource + ?Sized>(
    rng: &mut R,
    num: u128,
    den: u128,
) -> Result<bool, AnonError> {
    let mut k: u128 = 1;
    loop {
        let d = den.checked_mul(k).ok_or_else(overflow)?;
        if !bernoulli_rational(rng, num, d)? {
            return Ok(k % 2 == 1);
        }
        k = k.checked_add(1).ok_or_else(overflow)?;
    }
}

/// Draws from Bernoulli(exp(−γ)) with γ = `num`/`den` ≥ 0, exactly (CKS20 Algorithm 1).
///
/// The result is `true` with probability exp(−num/den). `den = 0` is an error.
pub fn sample_bernoulli_exp<R: RandomSource + ?Sized>(
    rng: &mut R,
    num: u128,
    den: u128,
) -> Result<bool, AnonError> {
    if den == 0 {
        return Err(AnonError::Dp(
            "Bernoulli(exp(−γ)): γ has denominator 0".to_owned(),
        ));
    }
    // exp(−γ) = exp(−1)^⌊γ⌋ · exp(−(γ − ⌊γ⌋)): one Bernoulli(exp(−1)) per whole unit.
    let mut num = num;
    while num > den {
        if !bernoulli_exp_at_most_one(rng, 1, 1)? {
            return Ok(false);
        }
        num -= den;
    }
    bernoulli_exp_at_most_one(rng, num, den)
}

/// Draws from the discrete Laplace distribution of scale `t`/`s`, exactly (CKS20
/// Algorithm 2): P[Z = z] ∝ exp(−|z|·s/t) for every integer z.
///
/// Added to a sensitivity-1 count it gives (s/t)-DP. `t = 0` or `s = 0` is an error.
pub fn sample_discrete_laplace<R: RandomSource + ?Sized>(
    rng: &mut R,
    t: u128,
    s: u128,
) -> Result<i128, AnonError> {
    if t == 0 || s == 0 {
        return Err(AnonError::Dp(format!(
            "discrete Laplace: scale {t}/{s} must be positive"
        )));
    }
    loop {
        let u = rng.uniform_below(t)?;
        if !sample_bernoulli_exp(rng, u, t)? {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp_at_most_one(rng, 1, 1)? {
            v = v.checked_add(1).ok_or_else(overflow)?;
        }
        let x = t
            .checked_mul(v)
            .and_then(|tv| tv.checked_add(u))
            .ok_or_else(overflow)?;
        let y = i128::try_from(x / s).map_err(|_| overflow())?;
        let negative = bernoulli_rational(rng, 1, 2)?;
        if negative && y == 0 {
            continue;
        }
        return Ok(if negative { -y } else { y });
    }
}

/// Draws from the discrete Gaussian distribution with σ² = `p`/`q`, exactly (CKS20
/// Algorithm 3): P[Z = z] ∝ exp(−z²/(2σ²)) for every integer z.
///
/// Added to a count of L2 sensitivity 1 it gives ρ-zCDP with ρ = 1/(2σ²). `p = 0` or
/// `q = 0` is an error.
pub fn sample_discrete_gaussian<R: RandomSource + ?Sized>(
    rng: &mut R,
    p: u128,
    q: u128,
) -> Result<i128, AnonError> {
    if p == 0 || q == 0 {
        return Err(AnonError::Dp(format!(
            "discrete Gaussian: σ² = {p}/{q} must be positive"
        )));
    }
    // t = ⌊σ⌋ + 1, since ⌊√⌊x⌋⌋ = ⌊√x⌋.
    let t = (p / q).isqrt() + 1;
    // The acceptance probability exp(−(|y| − σ²/t)² / (2σ²)) is
    // exp(−(|y|·q·t − p)² / (2·p·q·t²)).
    let den = [2, q, t, t]
        .iter()
        .try_fold(p, |acc, &f| acc.checked_mul(f))
        .ok_or_else(overflow)?;
    loop {
        let y = sample_discrete_laplace(rng, t, 1)?;
        let yqt = y
            .unsigned_abs()
            .checked_mul(q)
            .and_then(|v| v.checked_mul(t))
            .ok_or_else(overflow)?;
        let diff = yqt.abs_diff(p);
        let num = diff.checked_mul(diff).ok_or_else(overflow)?;
        if sample_bernoulli_exp(rng, num, den)? {
            return Ok(y);
        }
    }
}

// ---------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------

/// A non-negative rational number, `numerator / denominator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    /// The numerator.
    pub numerator: u128,
    /// The denominator (never 0 in the values this module returns).
    pub denominator: u128,
}

impl Ratio {
    /// The nearest `f64`, for display.
    pub fn to_f64(self) -> f64 {
        self.numerator as f64 / self.denominator as f64
    }
}

fn check_epsilon(epsilon: f64) -> Result<(), AnonError> {
    if (MIN_EPSILON..=MAX_EPSILON).contains(&epsilon) {
        Ok(())
    } else {
        Err(AnonError::Dp(format!(
            "ε = {epsilon} is out of range: ε must be a finite number from {MIN_EPSILON} to {MAX_EPSILON}"
        )))
    }
}

fn check_delta(delta: f64) -> Result<(), AnonError> {
    if delta > 0.0 && delta <= MAX_DELTA {
        Ok(())
    } else {
        Err(AnonError::Dp(format!(
            "δ = {delta} is out of range: δ must be above 0 and at most {MAX_DELTA}"
        )))
    }
}

/// The exact value of a positive normal `f64` as `m / 2^k`, m odd or k = 0.
fn dyadic(x: f64) -> Option<(u128, u32)> {
    if !x.is_normal() || x.is_sign_negative() {
        return None;
    }
    let bits = x.to_bits();
    let biased = i32::try_from((bits >> 52) & 0x7ff).ok()?;
    let mantissa = (bits & ((1u64 << 52) - 1)) | (1u64 << 52);
    let zeros = mantissa.trailing_zeros();
    let mantissa = u128::from(mantissa >> zeros);
    let exponent = biased - 1075 + i32::try_from(zeros).ok()?;
    if exponent >= 0 {
        // mantissa < 2^53, so the shift below stays under 2^117.
        let shift = u32::try_from(exponent).ok().filter(|&e| e < 64)?;
        Some((mantissa << shift, 0))
    } else {
        let k = u32::try_from(-exponent).ok().filter(|&k| k < 120)?;
        Some((mantissa, k))
    }
}

/// The discrete Laplace scale t/s for an ε-DP count of sensitivity 1: exactly 1/ε.
///
/// An `f64` ε is exactly m/2^k for integers m and k. The scale is 2^k/m, so the ε
/// spent, s/t, *is* the declared `f64` ε, with nothing rounded. A decimal ε such as
/// 0.1 is charged and spent as its `f64` value (0.1000000000000000055…). The budget
/// accounts in the same `f64` values, so the two agree. ε must be from
/// [`MIN_EPSILON`] to [`MAX_EPSILON`].
pub fn laplace_scale(epsilon: f64) -> Result<Ratio, AnonError> {
    check_epsilon(epsilon)?;
    let (m, k) = dyadic(epsilon).ok_or_else(|| AnonError::Dp(format!("ε = {epsilon}")))?;
    Ok(Ratio {
        numerator: 1u128 << k,
        denominator: m,
    })
}

/// ε of ρ-zCDP at `ln_inv_delta` = ln(1/δ), for ρ = q/(2p) (σ² = p/q).
fn bun_steinke_epsilon(p: u128, q: u128, ln_inv_delta: f64) -> f64 {
    let rho = q as f64 / (2.0 * p as f64);
    rho + 2.0 * (rho * ln_inv_delta).sqrt()
}

/// The discrete Gaussian variance σ² = p/q for an (ε, δ)-DP count of sensitivity 1.
///
/// The formula:
///
/// - The discrete Gaussian with variance σ² is ρ-zCDP with ρ = 1/(2σ²) (CKS20,
///   Theorem 4).
/// - ρ-zCDP implies (ε, δ)-DP with ε = ρ + 2·√(ρ·L), where L = ln(1/δ) (Bun and
///   Steinke 2016, Proposition 1.3).
/// - Solving for √ρ, a quadratic, gives √ρ = √(L + ε) − √L = ε / (√(L + ε) + √L). The
///   second form has no cancellation. Then σ² = 1/(2ρ).
///
/// Only this calibration uses floating point. σ² is enlarged by a relative 1e-9,
/// which is far above the ~1e-16 rounding of `ln` and `sqrt`. It is then rounded *up*
/// to a rational p/q, and the result is checked again with the formula. So the ε the
/// mechanism spends at δ is at most the declared ε.
/// The denominator q is the largest power of ten up to 10¹² that keeps p ≤ 10¹³ (q = 1
/// beyond σ² = 10¹³, where p ≤ about 2·10¹⁵ at the smallest ε). That rounds σ² up
/// by at most 10⁻¹¹ relative and keeps the sampler's arithmetic within `u128`.
///
/// The Bun–Steinke conversion is simple but not the tightest. OpenDP's exact conversion
/// (`cdp_delta`) needs somewhat less noise for the same (ε, δ).
pub fn gaussian_variance(epsilon: f64, delta: f64) -> Result<Ratio, AnonError> {
    check_epsilon(epsilon)?;
    check_delta(delta)?;
    let ln_inv_delta = -delta.ln();
    let sqrt_rho = epsilon / ((ln_inv_delta + epsilon).sqrt() + ln_inv_delta.sqrt());
    let sigma2 = (1.0 + CALIBRATION_MARGIN) / (2.0 * sqrt_rho * sqrt_rho);
    let mut q: u128 = 1_000_000_000_000;
    while q > 1 && sigma2 * q as f64 > 1e13 {
        q /= 10;
    }
    let p = (sigma2 * q as f64).ceil();
    if !(1.0..=1e18).contains(&p) {
        return Err(AnonError::Dp(format!(
            "ε = {epsilon}, δ = {delta}: the Gaussian variance {sigma2} is out of range"
        )));
    }
    // In range 1..=1e18, so the conversion is exact enough and cannot saturate.
    let mut p = p as u128;
    for _ in 0..64 {
        if bun_steinke_epsilon(p, q, ln_inv_delta) <= epsilon {
            return Ok(Ratio {
                numerator: p,
                denominator: q,
            });
        }
        p += (p >> 30).max(1);
    }
    Err(AnonError::Dp(format!(
        "ε = {epsilon}, δ = {delta}: the Gaussian variance could not be calibrated"
    )))
}

// ---------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------

/// How noise is added to the counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Discrete Laplace noise of scale 1/ε: ε-DP.
    Laplace {
        /// The privacy loss ε, from [`MIN_EPSILON`] to [`MAX_EPSILON`].
        epsilon: f64,
    },
    /// Discrete Gaussian noise calibrated by [`gaussian_variance`]: (ε, δ)-DP.
    Gaussian {
        /// The privacy loss ε, from [`MIN_EPSILON`] to [`MAX_EPSILON`].
        epsilon: f64,
        /// The failure probability δ, above 0 and at most [`MAX_DELTA`].
        delta: f64,
    },
}

impl Mechanism {
    /// The (ε, δ) a query with this mechanism spends, whatever the group-by. This is
    /// what [`answer_with_budget`] charges.
    pub fn cost(&self) -> (f64, f64) {
        match *self {
            Self::Laplace { epsilon } => (epsilon, 0.0),
            Self::Gaussian { epsilon, delta } => (epsilon, delta),
        }
    }

    /// Checks the parameters, and returns the exact noise distribution.
    fn noise(&self) -> Result<Noise, AnonError> {
        match *self {
            Self::Laplace { epsilon } => laplace_scale(epsilon).map(Noise::Laplace),
            Self::Gaussian { epsilon, delta } => {
                gaussian_variance(epsilon, delta).map(Noise::Gaussian)
            }
        }
    }

    /// Checks the parameters (ε range, δ range).
    pub fn validate(&self) -> Result<(), AnonError> {
        self.noise().map(|_| ())
    }
}

/// The exact noise distribution of a mechanism.
enum Noise {
    /// Discrete Laplace of this scale.
    Laplace(Ratio),
    /// Discrete Gaussian of this variance.
    Gaussian(Ratio),
}

impl Noise {
    fn sample<R: RandomSource + ?Sized>(&self, rng: &mut R) -> Result<i128, AnonError> {
        match *self {
            Self::Laplace(r) => sample_discrete_laplace(rng, r.numerator, r.denominator),
            Self::Gaussian(r) => sample_discrete_gaussian(rng, r.numerator, r.denominator),
        }
    }

    /// Laplace: the scale; Gaussian: σ.
    fn scale(&self) -> f64 {
        match *self {
            Self::Laplace(r) => r.to_f64(),
            Self::Gaussian(r) => r.to_f64().sqrt(),
        }
    }
}

/// A condition on one column. Rows must meet every filter of a query to be counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// The column tested.
    pub column: String,
    /// The test.
    pub op: FilterOp,
}

/// A test of a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    /// The value is exactly this string.
    Equals(String),
    /// The value is one of these strings.
    In(Vec<String>),
    /// The value is a number within the bounds (both inclusive; a missing bound is
    /// open). A value that does not parse as a number doesn't match. It is not an
    /// error, because an error would reveal what is in the data.
    Range {
        /// The lower bound, if any.
        min: Option<f64>,
        /// The upper bound, if any.
        max: Option<f64>,
    },
}

impl FilterOp {
    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Equals(v) => v == value,
            Self::In(vs) => vs.iter().any(|v| v == value),
            Self::Range { min, max } => match value.trim().parse::<f64>() {
                Ok(x) => min.is_none_or(|m| x >= m) && max.is_none_or(|m| x <= m),
                Err(_) => false,
            },
        }
    }

    fn validate(&self, column: &str) -> Result<(), AnonError> {
        if let Self::Range { min, max } = self {
            if min.is_some_and(f64::is_nan) || max.is_some_and(f64::is_nan) {
                return Err(AnonError::Dp(format!(
                    "the range filter on `{column}` has a NaN bound"
                )));
            }
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo > hi {
                    return Err(AnonError::Dp(format!(
                        "the range filter on `{column}` is empty: min {lo} > max {hi}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A differentially private counting query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountQuery {
    /// Rows must meet all of these to be counted.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Columns to group by. Empty: a single count.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// For each `group_by` column, in the same order, its **public** domain: the values
    /// it can take, known without looking at the data. Every combination of values is
    /// reported, including those with no rows. Rows whose value is outside the domain
    /// are counted in no cell. Required when `group_by` is not empty.
    #[serde(default)]
    pub group_domains: Vec<Vec<String>>,
    /// The noise.
    pub mechanism: Mechanism,
    /// Report negative noisy counts as 0 (post-processing: no privacy cost).
    #[serde(default)]
    pub clamp_at_zero: bool,
}

impl CountQuery {
    /// A count of all rows, with no filter or group-by.
    pub fn new(mechanism: Mechanism) -> Self {
        Self {
            filters: Vec::new(),
            group_by: Vec::new(),
            group_domains: Vec::new(),
            mechanism,
            clamp_at_zero: false,
        }
    }
}

/// One cell of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCount {
    /// The group's values, one per `group_by` column (empty without a group-by).
    pub key: Vec<String>,
    /// The noisy count. It may be negative unless the query clamps at zero.
    pub count: i64,
}

/// The released answer to a [`CountQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountAnswer {
    /// The mechanism used.
    pub mechanism: Mechanism,
    /// The ε spent. This is an upper bound on the privacy loss of the whole answer,
    /// all cells together. It equals the declared ε: exactly for Laplace, and as an
    /// upper bound of the Bun–Steinke ε of the rounded σ² for Gaussian.
    pub epsilon_spent: f64,
    /// The δ spent (0 for Laplace).
    pub delta_spent: f64,
    /// The noise scale: for Laplace the scale 1/ε of the discrete Laplace, for Gaussian
    /// the σ of the discrete Gaussian.
    pub noise_scale: f64,
    /// Whether negative counts were reported as 0.
    pub clamped_at_zero: bool,
    /// The group-by columns.
    pub group_by: Vec<String>,
    /// One count per combination of the group domains, in lexicographic order of the
    /// domains as given (the first column varies slowest).
    pub groups: Vec<GroupCount>,
}

/// A group-by column resolved against the table.
struct GroupColumn {
    /// Position in the table.
    column: usize,
    /// Per dictionary code of the column, its index in the domain (None: outside).
    slot: Vec<Option<usize>>,
    /// Size of the domain.
    size: usize,
}

/// A query resolved against a table, ready to count.
struct Plan<'q> {
    /// Per filter: the column's position and, per dictionary code, whether it matches.
    filters: Vec<(usize, Vec<bool>)>,
    groups: Vec<GroupColumn>,
    domains: &'q [Vec<String>],
    cells: usize,
    noise: Noise,
}

impl<'q> Plan<'q> {
    /// Validates the query. Every error here depends only on the query and the table's
    /// column names, never on the rows.
    fn new(table: &Table, query: &'q CountQuery) -> Result<Self, AnonError> {
        let noise = query.mechanism.noise()?;
        let mut filters = Vec::with_capacity(query.filters.len());
        for filter in &query.filters {
            let column = table.position(&filter.column)?;
            filter.op.validate(&filter.column)?;
            let mask = table
                .column_at(column)
                .dictionary()
                .iter()
                .map(|v| filter.op.matches(v))
                .collect();
            filters.push((column, mask));
        }
        if query.group_by.len() != query.group_domains.len() {
            return Err(AnonError::Dp(if query.group_domains.is_empty() {
                format!(
                    "group_by ({}) needs the public domain of each column in group_domains",
                    query.group_by.join(", ")
                )
            } else {
                format!(
                    "group_by names {} columns but group_domains gives {} domains",
                    query.group_by.len(),
                    query.group_domains.len()
                )
            }));
        }
        let mut groups = Vec::with_capacity(query.group_by.len());
        let mut cells: usize = 1;
        for (name, domain) in query.group_by.iter().zip(&query.group_domains) {
            let column = table.position(name)?;
            if domain.is_empty() {
                return Err(AnonError::Dp(format!(
                    "the public domain of `{name}` is empty"
                )));
            }
            let mut index = HashMap::with_capacity(domain.len());
            for (i, value) in domain.iter().enumerate() {
                if index.insert(value.as_str(), i).is_some() {
                    return Err(AnonError::Dp(format!(
                        "the public domain of `{name}` lists `{value}` twice"
                    )));
                }
            }
            cells = cells
                .checked_mul(domain.len())
                .filter(|&c| c <= MAX_GROUPS)
                .ok_or_else(|| {
                    AnonError::Dp(format!(
                        "the group domains have more than {MAX_GROUPS} combinations"
                    ))
                })?;
            let slot = table
                .column_at(column)
                .dictionary()
                .iter()
                .map(|v| index.get(v.as_str()).copied())
                .collect();
            groups.push(GroupColumn {
                column,
                slot,
                size: domain.len(),
            });
        }
        Ok(Self {
            filters,
            groups,
            domains: &query.group_domains,
            cells,
            noise,
        })
    }

    /// The true count of every cell.
    fn true_counts(&self, table: &Table) -> Vec<u64> {
        let filters: Vec<(&[u32], &[bool])> = self
            .filters
            .iter()
            .map(|(column, mask)| (table.column_at(*column).codes(), mask.as_slice()))
            .collect();
        let groups: Vec<(&[u32], &GroupColumn)> = self
            .groups
            .iter()
            .map(|g| (table.column_at(g.column).codes(), g))
            .collect();
        let mut counts = vec![0u64; self.cells];
        'rows: for row in 0..table.len() {
            for (codes, mask) in &filters {
                if !mask[codes[row] as usize] {
                    continue 'rows;
                }
            }
            let mut cell = 0;
            for (codes, group) in &groups {
                match group.slot[codes[row] as usize] {
                    Some(i) => cell = cell * group.size + i,
                    None => continue 'rows,
                }
            }
            counts[cell] += 1;
        }
        counts
    }

    /// The group values of a cell.
    fn key(&self, cell: usize) -> Vec<String> {
        let mut rest = cell;
        let mut key: Vec<String> = self
            .groups
            .iter()
            .zip(self.domains)
            .rev()
            .map(|(group, domain)| {
                let i = rest % group.size;
                rest /= group.size;
                domain[i].clone()
            })
            .collect();
        key.reverse();
        key
    }

    /// Counts, adds noise, and builds the answer.
    fn release<R: RandomSource + ?Sized>(
        &self,
        table: &Table,
        query: &CountQuery,
        rng: &mut R,
    ) -> Result<CountAnswer, AnonError> {
        let counts = self.true_counts(table);
        let mut groups = Vec::with_capacity(counts.len());
        for (cell, &count) in counts.iter().enumerate() {
            let noisy = i128::from(count)
                .checked_add(self.noise.sample(rng)?)
                .ok_or_else(overflow)?;
            let noisy = if query.clamp_at_zero {
                noisy.max(0)
            } else {
                noisy
            };
            groups.push(GroupCount {
                key: self.key(cell),
                count: i64::try_from(noisy).map_err(|_| overflow())?,
            });
        }
        let (epsilon_spent, delta_spent) = query.mechanism.cost();
        Ok(CountAnswer {
            mechanism: query.mechanism,
            epsilon_spent,
            delta_spent,
            noise_scale: self.noise.scale(),
            clamped_at_zero: query.clamp_at_zero,
            group_by: query.group_by.clone(),
            groups,
        })
    }
}

/// Answers a counting query with differential privacy.
///
/// The query is validated first: unknown columns, group domains missing, empty, with
/// duplicates, or with more than [`MAX_GROUPS`] combinations, and mechanism parameters
/// out of range are errors. Then the true count of every cell is computed and
/// independent noise is added to each. The whole answer costs
/// [`Mechanism::cost`], whatever the number of cells (see the module documentation).
///
/// This does not charge a budget; [`answer_with_budget`] does.
pub fn answer<R: RandomSource + ?Sized>(
    table: &Table,
    query: &CountQuery,
    rng: &mut R,
) -> Result<CountAnswer, AnonError> {
    Plan::new(table, query)?.release(table, query, rng)
}

/// Checks a query against a table (columns, group domains, mechanism) without
/// counting anything: what [`answer`] would refuse, it refuses. Its errors depend on
/// the query and the column names only, never on the rows.
pub fn validate_query(table: &Table, query: &CountQuery) -> Result<(), AnonError> {
    Plan::new(table, query).map(|_| ())
}

/// Validates the query, charges its cost to `budget`, and answers it.
///
/// The budget is charged before anything is counted. An invalid query or a refused
/// charge leaves the budget untouched. If the sampler fails after the charge (the
/// system generator failing), the charge stands and nothing is released. That is the
/// safe direction.
pub fn answer_with_budget<R: RandomSource + ?Sized>(
    table: &Table,
    query: &CountQuery,
    budget: &mut Budget,
    rng: &mut R,
) -> Result<CountAnswer, AnonError> {
    let plan = Plan::new(table, query)?;
    let (epsilon, delta) = query.mechanism.cost();
    budget.charge(epsilon, delta)?;
    plan.release(table, query, rng)
}

// ---------------------------------------------------------------------------------
// Budget
// ---------------------------------------------------------------------------------

/// A privacy budget under basic sequential composition: the ε and the δ of the answers
/// released add up.
///
/// # Floating point
///
/// There are two kinds of drift, and each is handled in its own direction.
///
/// - **Accumulation must not under-count.** Each sum `spent + charge` is rounded
///   *up*: the exact rounding error is computed (Knuth's TwoSum), and the sum is moved
///   one ulp up when it fell short. So `epsilon_spent` and `delta_spent` are never below
///   the exact sum of the charges.
/// - **Decimal budgets must be usable to the end.** Ten charges of `0.1` from a total
///   of `1.0` add up, exactly, to slightly more than `1.0`, because `0.1` is not a
///   binary number. A charge is therefore accepted when the new total is at most
///   `total · (1 + BUDGET_SLACK)`, with [`BUDGET_SLACK`] = 1e-12. This is the only place
///   where tolerance lets a charge through. It lets the budget be overspent by at most
///   10⁻¹²·ε_total, which multiplies the e^ε bound by at most 1 + 10⁻¹²·ε_total.
///
/// No tolerance is applied in the refusing direction: a charge that fits, even by an
/// ulp, is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// The total ε that may be spent.
    pub epsilon_total: f64,
    /// The total δ that may be spent (0 allows only pure-DP mechanisms).
    pub delta_total: f64,
    /// The ε spent so far.
    pub epsilon_spent: f64,
    /// The δ spent so far.
    pub delta_spent: f64,
}

/// `a + b` for finite `a, b ≥ 0`, rounded up instead of to nearest.
fn add_rounding_up(a: f64, b: f64) -> f64 {
    let sum = a + b;
    // TwoSum: a + b = sum + error exactly (no overflow as long as sum is finite).
    let b_virtual = sum - a;
    let a_virtual = sum - b_virtual;
    let error = (a - a_virtual) + (b - b_virtual);
    if sum.is_finite() && error > 0.0 {
        // The next f64 up; sum ≥ 0 and finite (f64::next_up needs Rust 1.86).
        f64::from_bits(sum.to_bits() + 1)
    } else {
        sum
    }
}

impl Budget {
    /// A fresh budget. `epsilon_total` must be finite and ≥ 0, and `delta_total` must
    /// be in [0, 1).
    pub fn new(epsilon_total: f64, delta_total: f64) -> Result<Self, AnonError> {
        let budget = Self {
            epsilon_total,
            delta_total,
            epsilon_spent: 0.0,
            delta_spent: 0.0,
        };
        budget.check()?;
        Ok(budget)
    }

    /// Checks that the record makes sense (it may come from storage).
    fn check(&self) -> Result<(), AnonError> {
        let fine = |x: f64| x.is_finite() && x >= 0.0;
        if fine(self.epsilon_total)
            && fine(self.epsilon_spent)
            && fine(self.delta_total)
            && fine(self.delta_spent)
            && self.delta_total < 1.0
        {
            Ok(())
        } else {
            Err(AnonError::Dp(format!(
                "invalid privacy budget: total ε = {}, δ = {}; spent ε = {}, δ = {} \
                 (all must be finite and ≥ 0, the total δ below 1)",
                self.epsilon_total, self.delta_total, self.epsilon_spent, self.delta_spent
            )))
        }
    }

    /// What is left: (ε, δ), never negative.
    pub fn remaining(&self) -> (f64, f64) {
        (
            (self.epsilon_total - self.epsilon_spent).max(0.0),
            (self.delta_total - self.delta_spent).max(0.0),
        )
    }

    /// Spends (ε, δ) if it fits in what remains. Otherwise it returns
    /// [`AnonError::BudgetExceeded`] naming the remaining budget, and spends nothing.
    pub fn charge(&mut self, epsilon: f64, delta: f64) -> Result<(), AnonError> {
        self.check()?;
        let fine = |x: f64| x.is_finite() && x >= 0.0;
        if !fine(epsilon) || !fine(delta) {
            return Err(AnonError::Dp(format!(
                "cannot charge ε = {epsilon}, δ = {delta}: both must be finite and ≥ 0"
            )));
        }
        let epsilon_spent = add_rounding_up(self.epsilon_spent, epsilon);
        let delta_spent = add_rounding_up(self.delta_spent, delta);
        let epsilon_limit = self.epsilon_total * (1.0 + BUDGET_SLACK);
        let delta_limit = self.delta_total * (1.0 + BUDGET_SLACK);
        if epsilon_spent > epsilon_limit || delta_spent > delta_limit {
            let (remaining_epsilon, remaining_delta) = self.remaining();
            return Err(AnonError::BudgetExceeded {
                epsilon,
                delta,
                remaining_epsilon,
                remaining_delta,
            });
        }
        self.epsilon_spent = epsilon_spent;
        self.delta_spent = delta_spent;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: deterministic and fast. **Not** a cryptographic generator; tests only.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    impl RandomSource for SplitMix64 {
        fn next_u128(&mut self) -> Result<u128, AnonError> {
            Ok((u128::from(self.next_u64()) << 64) | u128::from(self.next_u64()))
        }
    }

    /// Replays fixed values.
    struct Script(Vec<u128>);

    impl RandomSource for Script {
        fn next_u128(&mut self) -> Result<u128, AnonError> {
            Ok(self.0.remove(0))
        }
    }

    const N: usize = 100_000;
    /// Tolerance in standard errors: a correct sampler fails a check with probability
    /// about 6e-7, and a wrong scale by a few percent fails for sure.
    const K: f64 = 5.0;

    fn samples(n: usize, mut draw: impl FnMut() -> i128) -> Vec<i128> {
        (0..n).map(|_| draw()).collect()
    }

    /// Checks the sample mean (expected 0), variance and P[X = 0] against a symmetric
    /// pmf, each within K standard errors. Returns the pmf's variance.
    fn check_against(xs: &[i128], pmf: impl Fn(i128) -> f64, support: i128, what: &str) -> f64 {
        let (mut mass, mut m2, mut m4) = (0.0, 0.0, 0.0);
        for z in -support..=support {
            let p = pmf(z);
            let z2 = (z * z) as f64;
            mass += p;
            m2 += p * z2;
            m4 += p * z2 * z2;
        }
        assert!((mass - 1.0).abs() < 1e-9, "{what}: the pmf sums to {mass}");
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let p0 = pmf(0);
        let zeros = xs.iter().filter(|&&x| x == 0).count() as f64 / n;
        let mean_tol = K * (m2 / n).sqrt();
        let var_tol = K * ((m4 - m2 * m2) / n).sqrt();
        let p0_tol = K * (p0 * (1.0 - p0) / n).sqrt();
        assert!(
            mean.abs() < mean_tol,
            "{what}: mean {mean}, tolerance {mean_tol}"
        );
        assert!(
            (var - m2).abs() < var_tol,
            "{what}: variance {var}, expected {m2} ± {var_tol}"
        );
        assert!(
            (zeros - p0).abs() < p0_tol,
            "{what}: P[0] {zeros}, expected {p0} ± {p0_tol}"
        );
        m2
    }

    fn laplace_case(rng: &mut SplitMix64, t: u128, s: u128) {
        let tau = t as f64 / s as f64;
        let e = (-1.0 / tau).exp();
        let pmf = |z: i128| (1.0 - e) / (1.0 + e) * e.powi(z.unsigned_abs() as i32);
        let xs = samples(N, || sample_discrete_laplace(&mut *rng, t, s).unwrap());
        let var = check_against(&xs, pmf, 2_000, &format!("Lap_Z({t}/{s})"));
        // The closed forms.
        let closed_var = 2.0 * e / (1.0 - e).powi(2);
        assert!(
            (var - closed_var).abs() < 1e-9 * closed_var,
            "{var} vs {closed_var}"
        );
        assert!((pmf(0) - (1.0 - e) / (1.0 + e)).abs() < 1e-15);
    }

    #[test]
    fn discrete_laplace_matches_its_distribution() {
        let mut rng = SplitMix64(1);
        laplace_case(&mut rng, 2, 1);
        laplace_case(&mut rng, 10, 3);
        laplace_case(&mut rng, 1, 1);
        // The scale of ε = 0.3, 2^k/m with k = 54: the big-integer path.
        let r = laplace_scale(0.3).unwrap();
        assert!(r.numerator > 1 << 50);
        laplace_case(&mut rng, r.numerator, r.denominator);
    }

    fn gaussian_case(rng: &mut SplitMix64, p: u128, q: u128) -> f64 {
        let sigma2 = p as f64 / q as f64;
        let weight = |z: i128| (-((z * z) as f64) / (2.0 * sigma2)).exp();
        let z: f64 = (-500..=500).map(weight).sum();
        let xs = samples(N, || sample_discrete_gaussian(&mut *rng, p, q).unwrap());
        check_against(&xs, |k| weight(k) / z, 500, &format!("N_Z({p}/{q})"))
    }

    #[test]
    fn discrete_gaussian_matches_its_distribution() {
        let mut rng = SplitMix64(2);
        let var = gaussian_case(&mut rng, 4, 1);
        // For σ ≥ 1 the discrete Gaussian's variance is σ² to within 1e-6 or so.
        assert!((var - 4.0).abs() < 1e-6, "{var}");
        let var = gaussian_case(&mut rng, 25, 2);
        assert!((var - 12.5).abs() < 1e-6, "{var}");
        gaussian_case(&mut rng, 1, 4); // σ < 1: variance below σ², from the pmf
        let r = gaussian_variance(1.0, 1e-5).unwrap();
        let var = gaussian_case(&mut rng, r.numerator, r.denominator);
        assert!((var - r.to_f64()).abs() < 1e-6, "{var}");
    }

    #[test]
    fn bernoulli_exp_has_probability_exp_minus_gamma() {
        let mut rng = SplitMix64(3);
        for (num, den) in [(1u128, 2u128), (3, 2), (5, 2), (7, 1)] {
            let p = (-(num as f64) / den as f64).exp();
            let hits = (0..N)
                .filter(|_| sample_bernoulli_exp(&mut rng, num, den).unwrap())
                .count() as f64
                / N as f64;
            let tol = K * (p * (1.0 - p) / N as f64).sqrt();
            assert!(
                (hits - p).abs() < tol,
                "γ = {num}/{den}: {hits} vs {p} ± {tol}"
            );
        }
        assert!((0..1000).all(|_| sample_bernoulli_exp(&mut rng, 0, 5).unwrap()));
        assert!(sample_bernoulli_exp(&mut rng, 1, 0).is_err());
    }

    #[test]
    fn uniform_below_rejects_and_is_uniform() {
        // 2^128 − 1 is divisible by 3, so u128::MAX is the one value rejected for n = 3.
        let mut script = Script(vec![u128::MAX, 5]);
        assert_eq!(script.uniform_below(3).unwrap(), 2);
        assert!(script.0.is_empty());
        let mut rng = SplitMix64(4);
        assert!(rng.uniform_below(0).is_err());
        assert_eq!(rng.uniform_below(1).unwrap(), 0);
        let mut buckets = [0usize; 6];
        for _ in 0..60_000 {
            buckets[rng.uniform_below(6).unwrap() as usize] += 1;
        }
        let tol = K * (60_000.0 * (1.0 / 6.0) * (5.0 / 6.0_f64)).sqrt();
        for b in buckets {
            assert!((b as f64 - 10_000.0).abs() < tol, "{buckets:?}");
        }
        assert!(sample_discrete_laplace(&mut rng, 0, 1).is_err());
        assert!(sample_discrete_gaussian(&mut rng, 1, 0).is_err());
    }

    #[test]
    fn system_random_source_works() {
        let mut rng = SystemRandomSource::new();
        let a = rng.next_u128().unwrap();
        let b = rng.next_u128().unwrap();
        assert_ne!(a, b);
        for _ in 0..100 {
            assert!(rng.uniform_below(7).unwrap() < 7);
        }
    }

    #[test]
    fn laplace_scale_is_exactly_one_over_epsilon() {
        assert_eq!(
            laplace_scale(0.5).unwrap(),
            Ratio {
                numerator: 2,
                denominator: 1
            }
        );
        assert_eq!(
            laplace_scale(2.0).unwrap(),
            Ratio {
                numerator: 1,
                denominator: 2
            }
        );
        for epsilon in [0.1, 0.3, 1.0, 1e-6, 7.25, 10.0] {
            let r = laplace_scale(epsilon).unwrap();
            // Both are exact in f64 here, so the quotient is the exact f64 ε.
            assert_eq!(r.denominator as f64 / r.numerator as f64, epsilon);
        }
    }

    #[test]
    fn gaussian_calibration_spends_at_most_epsilon() {
        for epsilon in [1e-6, 0.01, 0.1, 1.0, 5.0, 10.0] {
            for delta in [1e-3, 1e-6, 1e-12, 1e-300] {
                let r = gaussian_variance(epsilon, delta).unwrap();
                let spent = bun_steinke_epsilon(r.numerator, r.denominator, -delta.ln());
                assert!(spent <= epsilon, "ε = {epsilon}, δ = {delta}: {spent}");
                assert!(
                    spent > epsilon * (1.0 - 1e-6),
                    "ε = {epsilon}, δ = {delta}: {spent}"
                );
            }
        }
        // ε = 1, δ = 1e-5: √ρ = 1/(√(L+1) + √L) with L = ln 1e5, σ² = 1/(2ρ) ≈ 24.0155.
        let s2 = gaussian_variance(1.0, 1e-5).unwrap().to_f64();
        assert!((s2 - 24.0155).abs() < 1e-3, "{s2}");
    }

    #[test]
    fn parameters_out_of_range_are_refused() {
        for epsilon in [0.0, -1.0, f64::NAN, f64::INFINITY, 10.5, 1e-7] {
            assert!(
                matches!(laplace_scale(epsilon), Err(AnonError::Dp(_))),
                "ε = {epsilon}"
            );
            assert!(gaussian_variance(epsilon, 1e-6).is_err(), "ε = {epsilon}");
        }
        for delta in [0.0, -1e-6, 2e-3, 1.0, f64::NAN] {
            assert!(
                matches!(gaussian_variance(1.0, delta), Err(AnonError::Dp(_))),
                "δ = {delta}"
            );
        }
        let message = laplace_scale(11.0).unwrap_err().to_string();
        assert!(message.contains("ε = 11"), "{message}");
        assert!(Mechanism::Laplace { epsilon: 1.0 }.validate().is_ok());
        assert!(Mechanism::Gaussian {
            epsilon: 1.0,
            delta: 0.01
        }
        .validate()
        .is_err());
    }

    fn table() -> Table {
        let mut t = Table::with_columns(&["sex", "age", "dx"]).unwrap();
        for row in [
            ["F", "34", "flu"],
            ["M", "51", "flu"],
            ["F", "29", "cold"],
            ["F", "62", "flu"],
            ["M", "unknown", "cold"],
            ["M", "45", "asthma"],
            ["F", "34", "flu"],
        ] {
            t.push_row(&row).unwrap();
        }
        t
    }

    fn filter(column: &str, op: FilterOp) -> Filter {
        Filter {
            column: column.to_owned(),
            op,
        }
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|&v| v.to_owned()).collect()
    }

    const LAPLACE_1: Mechanism = Mechanism::Laplace { epsilon: 1.0 };

    fn true_counts(table: &Table, query: &CountQuery) -> Vec<u64> {
        Plan::new(table, query).unwrap().true_counts(table)
    }

    fn filtered(filters: Vec<Filter>) -> CountQuery {
        CountQuery {
            filters,
            ..CountQuery::new(LAPLACE_1)
        }
    }

    #[test]
    fn filters_select_the_right_rows() {
        let t = table();
        assert_eq!(true_counts(&t, &CountQuery::new(LAPLACE_1)), [7]);
        let eq = |c: &str, v: &str| filter(c, FilterOp::Equals(v.to_owned()));
        assert_eq!(true_counts(&t, &filtered(vec![eq("sex", "F")])), [4]);
        assert_eq!(true_counts(&t, &filtered(vec![eq("sex", "Z")])), [0]);
        let flu_or_cold = filter("dx", FilterOp::In(strings(&["flu", "cold"])));
        assert_eq!(true_counts(&t, &filtered(vec![flu_or_cold])), [6]);
        let range = |min, max| filter("age", FilterOp::Range { min, max });
        // 34, 45, 34; "unknown" is not a number and does not match.
        assert_eq!(
            true_counts(&t, &filtered(vec![range(Some(30.0), Some(50.0))])),
            [3]
        );
        assert_eq!(
            true_counts(&t, &filtered(vec![range(Some(51.0), None)])),
            [2]
        );
        assert_eq!(true_counts(&t, &filtered(vec![range(None, None)])), [6]);
        assert_eq!(
            true_counts(&t, &filtered(vec![eq("sex", "F"), eq("dx", "flu")])),
            [3]
        );
    }

    #[test]
    fn group_by_counts_every_cell_of_the_public_domain() {
        let t = table();
        let query = CountQuery {
            group_by: strings(&["sex", "dx"]),
            group_domains: vec![strings(&["F", "M"]), strings(&["flu", "cold"])],
            ..CountQuery::new(LAPLACE_1)
        };
        // The asthma row is outside the domain and counted nowhere.
        assert_eq!(true_counts(&t, &query), [3, 1, 1, 1]);
        let query = CountQuery {
            filters: vec![filter("dx", FilterOp::Equals("flu".to_owned()))],
            group_by: strings(&["sex"]),
            group_domains: vec![strings(&["X", "M", "F"])],
            ..CountQuery::new(Mechanism::Laplace { epsilon: 10.0 })
        };
        assert_eq!(true_counts(&t, &query), [0, 1, 3]);

        let answer = answer(&t, &query, &mut SplitMix64(5)).unwrap();
        let keys: Vec<_> = answer.groups.iter().map(|g| g.key.clone()).collect();
        assert_eq!(keys, [strings(&["X"]), strings(&["M"]), strings(&["F"])]);
        for (group, truth) in answer.groups.iter().zip([0, 1, 3]) {
            // At ε = 10, |noise| ≥ 3 has probability about e^-30.
            assert!((group.count - truth).abs() <= 2, "{answer:?}");
        }
        assert_eq!(answer.epsilon_spent, 10.0);
        assert_eq!(answer.delta_spent, 0.0);
        assert!((answer.noise_scale - 0.1).abs() < 1e-15);
        assert_eq!(answer.group_by, strings(&["sex"]));
    }

    #[test]
    fn noisy_counts_can_be_negative_unless_clamped() {
        let t = table();
        let domain: Vec<String> = (0..200).map(|i| format!("v{i}")).collect();
        let mut query = CountQuery {
            group_by: strings(&["dx"]),
            group_domains: vec![domain],
            ..CountQuery::new(Mechanism::Laplace { epsilon: 0.5 })
        };
        let raw = answer(&t, &query, &mut SplitMix64(6)).unwrap();
        assert_eq!(raw.groups.len(), 200);
        assert!(raw.groups.iter().any(|g| g.count < 0));
        assert!(raw.groups.iter().any(|g| g.count > 0));
        query.clamp_at_zero = true;
        let clamped = answer(&t, &query, &mut SplitMix64(6)).unwrap();
        assert!(clamped.clamped_at_zero);
        assert!(clamped.groups.iter().all(|g| g.count >= 0));
        assert!(clamped.groups.iter().any(|g| g.count > 0));
    }

    #[test]
    fn gaussian_answer_reports_its_parameters() {
        let t = table();
        let query = CountQuery::new(Mechanism::Gaussian {
            epsilon: 1.0,
            delta: 1e-5,
        });
        let answer = answer(&t, &query, &mut SplitMix64(7)).unwrap();
        assert_eq!((answer.epsilon_spent, answer.delta_spent), (1.0, 1e-5));
        assert!((answer.noise_scale - 24.0155_f64.sqrt()).abs() < 1e-3);
        assert_eq!(answer.groups.len(), 1);
        assert!(answer.groups[0].key.is_empty());
    }

    #[test]
    fn malformed_queries_are_refused() {
        let t = table();
        let mut rng = SplitMix64(8);
        let unknown = filtered(vec![filter("nope", FilterOp::Equals("x".to_owned()))]);
        assert!(matches!(
            answer(&t, &unknown, &mut rng),
            Err(AnonError::UnknownColumn { column, .. }) if column == "nope"
        ));
        let grouped = |group_by: &[&str], domains: Vec<Vec<String>>| CountQuery {
            group_by: strings(group_by),
            group_domains: domains,
            ..CountQuery::new(LAPLACE_1)
        };
        let err = |q: &CountQuery| match answer(&t, q, &mut SplitMix64(9)) {
            Err(AnonError::Dp(message)) => message,
            other => panic!("{other:?}"),
        };
        assert!(err(&grouped(&["sex"], vec![])).contains("group_domains"));
        assert!(err(&grouped(&[], vec![strings(&["F"])])).contains("0 columns"));
        assert!(err(&grouped(&["sex"], vec![vec![]])).contains("empty"));
        assert!(err(&grouped(&["sex"], vec![strings(&["F", "M", "F"])])).contains("twice"));
        let big: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        let small: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert!(err(&grouped(&["sex", "age"], vec![big, small])).contains("10000"));
        assert!(matches!(
            answer(&t, &grouped(&["nope"], vec![strings(&["a"])]), &mut rng),
            Err(AnonError::UnknownColumn { .. })
        ));
        let range = |min, max| filtered(vec![filter("age", FilterOp::Range { min, max })]);
        assert!(err(&range(Some(5.0), Some(1.0))).contains("min 5 > max 1"));
        assert!(err(&range(Some(f64::NAN), None)).contains("NaN"));
        let bad_epsilon = CountQuery::new(Mechanism::Laplace { epsilon: 0.0 });
        assert!(err(&bad_epsilon).contains("ε = 0"));
        let bad_delta = CountQuery::new(Mechanism::Gaussian {
            epsilon: 1.0,
            delta: 0.0,
        });
        assert!(err(&bad_delta).contains("δ = 0"));
    }

    #[test]
    fn budget_charges_and_refuses_with_the_remainder() {
        let mut budget = Budget::new(1.0, 0.0).unwrap();
        budget.charge(0.75, 0.0).unwrap();
        let refused = budget.charge(0.5, 0.0).unwrap_err();
        assert!(matches!(refused, AnonError::BudgetExceeded { .. }));
        let message = refused.to_string();
        assert!(message.contains("remaining ε = 0.25, δ = 0"), "{message}");
        assert_eq!(budget.epsilon_spent, 0.75);
        // δ > 0 does not fit a pure-DP budget.
        assert!(budget.charge(0.1, 1e-6).is_err());
        budget.charge(0.25, 0.0).unwrap();
        assert_eq!(budget.remaining(), (0.0, 0.0));
        assert!(budget.charge(1e-6, 0.0).is_err());
        budget.charge(0.0, 0.0).unwrap();

        let mut budget = Budget::new(2.0, 1e-5).unwrap();
        budget.charge(1.0, 1e-6).unwrap();
        let message = budget.charge(1.0, 1e-5).unwrap_err().to_string();
        assert!(
            message.contains("remaining ε = 1, δ = 0.000009"),
            "{message}"
        );
        assert!(matches!(
            budget.charge(f64::NAN, 0.0),
            Err(AnonError::Dp(_))
        ));
        assert!(matches!(budget.charge(-1.0, 0.0), Err(AnonError::Dp(_))));
        assert!(Budget::new(f64::INFINITY, 0.0).is_err());
        assert!(Budget::new(1.0, 1.0).is_err());
        let mut corrupt = Budget {
            epsilon_spent: f64::NAN,
            ..Budget::new(1.0, 0.0).unwrap()
        };
        assert!(matches!(corrupt.charge(0.1, 0.0), Err(AnonError::Dp(_))));
    }

    #[test]
    fn decimal_budgets_can_be_used_up_and_sums_round_up() {
        let mut budget = Budget::new(1.0, 0.0).unwrap();
        for i in 0..10 {
            budget
                .charge(0.1, 0.0)
                .unwrap_or_else(|e| panic!("charge {i}: {e}"));
        }
        assert!(budget.charge(0.1, 0.0).is_err());
        assert!(budget.charge(1e-9, 0.0).is_err());
        // 1 + 1e-16 rounds to 1 to nearest; the budget rounds it up instead.
        assert!(add_rounding_up(1.0, 1e-16) > 1.0);
        assert_eq!(add_rounding_up(0.5, 0.25), 0.75);
        assert_eq!(add_rounding_up(0.1, 0.2), 0.1 + 0.2);
    }

    #[test]
    fn budget_round_trips_through_toml() {
        let mut budget = Budget::new(3.0, 1e-6).unwrap();
        budget.charge(0.1, 1e-7).unwrap();
        let text = toml::to_string(&budget).unwrap();
        let back: Budget = toml::from_str(&text).unwrap();
        assert_eq!(back, budget);
    }

    #[test]
    fn answer_with_budget_charges_first_and_only_valid_queries() {
        let t = table();
        let mut budget = Budget::new(1.5, 0.0).unwrap();
        let mut rng = SplitMix64(10);
        let query = CountQuery::new(LAPLACE_1);
        answer_with_budget(&t, &query, &mut budget, &mut rng).unwrap();
        assert_eq!(budget.epsilon_spent, 1.0);
        let refused = answer_with_budget(&t, &query, &mut budget, &mut rng).unwrap_err();
        assert!(
            refused.to_string().contains("remaining ε = 0.5"),
            "{refused}"
        );
        assert_eq!(budget.epsilon_spent, 1.0);
        let invalid = filtered(vec![filter("nope", FilterOp::Equals("x".to_owned()))]);
        assert!(answer_with_budget(&t, &invalid, &mut budget, &mut rng).is_err());
        assert_eq!(budget.epsilon_spent, 1.0);
        let gaussian = CountQuery::new(Mechanism::Gaussian {
            epsilon: 0.5,
            delta: 1e-6,
        });
        // The budget has no δ.
        assert!(answer_with_budget(&t, &gaussian, &mut budget, &mut rng).is_err());
        let half = CountQuery::new(Mechanism::Laplace { epsilon: 0.5 });
        answer_with_budget(&t, &half, &mut budget, &mut rng).unwrap();
        assert_eq!(budget.remaining(), (0.0, 0.0));
    }
}
