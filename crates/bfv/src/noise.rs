//! The invariant noise budget **estimated from the parameters alone**, without any key: a
//! compiler can predict the budget left at a network's output before keys exist.
//!
//! [`NoiseModel::new`] precomputes the constants of a [`BfvParams`]; [`NoiseModel::fresh_sk`]
//! and [`NoiseModel::fresh_pk`] give the [`NoiseEstimate`] of a fresh encryption, and the
//! estimate's methods mirror the [`crate::Evaluator`]'s operations (same level and degree
//! rules, same errors). [`NoiseEstimate::budget_bits`] predicts what
//! [`crate::noise_budget_bits`] measures with the secret key.
//!
//! # Model (average case, central limit heuristic)
//!
//! We follow the average-case ("CLT") heuristic of Costache and Smart (CT-RSA 2016) and
//! Costache–Laine–Player (ESORICS 2020), in coefficient form (as SEAL's estimates), for
//! the *invariant noise* of SEAL and of this crate (see [`crate::noise_budget_bits`]:
//! `(t/Q_l)·(c_0 + c_1·s) = m + v + t·k`). The estimate tracks the **variance `V` of one
//! coefficient of `v`**, in `log2`, assuming every coefficient of `v` is a centered random
//! variable independent of the others and of the operands' `c_i` (which look uniform mod
//! `Q_l`). With `σ² = 3.2²` (the error), `ς² = Var(s_i)` (`2/3` for a uniform ternary
//! secret, `h/N` for `h` non-zeros), `Var(u_i) = 2/3` (the public-key mask), it propagates:
//!
//! | operation | new `V` |
//! |---|---|
//! | secret-key encryption | `(t/Q)²·(σ² + 1/12)` (the error and the rounding of `Q·m/t`) |
//! | public-key encryption | `(t/Q)²·(σ²·(1 + N·2/3 + N·ς²) + 1/12)` (`u·e + e_0 + e_1·s`) |
//! | `a ± b` | `V_a + V_b` (independent operands) |
//! | `a ± pt` | `V_a + (t/Q)²/12` |
//! | `a · pt` | `V_a·‖p‖₂²`, `p` the plaintext centered in `(−t/2, t/2]` |
//! | `a · k` | `V_a·k²`, `k` centered |
//! | `a · b` (HPS) | `G·(f(π_a)·V_a + f(π_b)·V_b) + (t/Q)²·(1 + N·ς² + N²·ς⁴)/12` |
//! | `a²` | `G·4·f(π_a)·V_a + (t/Q)²·(1 + N·ς² + N²·ς⁴)/12` (both cross terms equal) |
//! | key switching (relinearization, rotation) | `V + (t/Q)²·E_ks` |
//! | modulus switch `Q_l → Q_{l−1}` | `V + (t/Q_{l−1})²·(1 + N·ς² (+ N²·ς⁴ at degree 2))/12` |
//!
//! The multiplication row is from `v_× = (t/Q)·(x_a·v_b + x_b·v_a) − v_a·v_b + (t/Q)·r(s)`,
//! `x = c_0 + c_1·s` over the integers (coefficients of variance `Q²·(1 + N·ς²)/12`) and `r`
//! the rounding of the scaled tensor; the `v_a·v_b` term is negligible. The independent
//! model's growth factor is `G = t²·N·(1 + N·ς²)/12`; `f(π) = min(π + 1, (ln(N/2) + γ)/2)`
//! corrects it for the powers of `s` the noise carries (below).
//!
//! **Powers of `s` (a correction to the independence assumption).** Every `x` is, up to a
//! small part, `c_1·s` with a fresh uniform `c_1`, so after `k` products without an
//! automorphism in between the noise carries `s^k`. The coefficients of `s^k` (one secret
//! multiplied by itself) have about `k!` times the variance of a product of `k` independent
//! secrets (every ordering of the same factors adds up coherently), so multiplying noise
//! that carries `s^π` by one more `x` grows its variance by `(π + 1)·G`, not `G`. The
//! estimate tracks `π` (a variance-weighted average over its contributions: 0 for the error
//! of a secret-key encryption, about 1/2 for a public-key one, about 1 for key-switching and
//! modulus-switching roundings) and resets it to 0 at an automorphism, after which the
//! noise carries `σ(s)` instead of `s`.
//!
//! The factor `π + 1` is an expectation over the secret; for the one fixed secret of a key
//! the growth saturates: in the canonical embedding the noise concentrates, product after
//! product, on the points `ζ` where `|s(ζ)|` is largest, and `|s(ζ)|²/(N·ς²)` behaves like
//! `N/2` exponential variables whose largest is about `ln(N/2) + γ`. The factor is therefore
//! capped at `(ln(N/2) + γ)/2` (3.4 at `N = 2^10`, 4.8 at `N = 2^14`); the halving is an
//! **empirical calibration** (chains of up to 13 products with fresh operands, `N = 2^10`
//! to `2^14`, `t` from 17 to 786433), not a derivation. Without the correction such a
//! chain is underestimated by about 0.75 bit per product at `N = 2^10` and more at larger
//! `N` (measured: 4 bits too optimistic after 7 products at `N = 2^10`). The hybrid
//! key-switching noise (digits `D_j` of `Q_l`, special modulus `P`) is
//! `E_ks = Σ_j N·σ²·E[d_j²]/P² + (1 + N·ς²)/12·(1 + 3·(k−1)²)` with `k` the number of special
//! primes: the first term the digits times the key errors (`d_j` the fast-base-conversion
//! lift of a digit, `E[d_j²] = α·D_j²/12 + α²·D_j²/4` for `α` primes, not centered), the
//! second the rounding of the division by `P` (with the fast conversion's overflow of up to
//! `k − 1` multiples of `P`, an assumption on the ring layer's conversion that errs on the
//! pessimistic side).
//!
//! **Budget.** The measured budget is `−log2(2·‖v‖_∞)`; the estimate replaces `‖v‖_∞` by
//! `z·√V`, where `z = √(2·ln(2N/ε))` with `ε = 2^−20` bounds the largest of `N` Gaussian
//! coefficients except with probability about `ε` (a high-probability bound, so the
//! estimate is slightly pessimistic on average: the expected maximum is nearer `√(2·ln 2N)`).
//!
//! # Accuracy (asserted in `tests/noise.rs`)
//!
//! On random data at `N = 2^10` and `2^12` (and `2^14` with `HECNN_TEST_PROFILE=long`),
//! `t ∈ {17, 2^16, 65537, 786433}` (toy parameters, 40-bit primes), after each kind of
//! operation and along multiplication chains down to an exhausted budget (products with
//! fresh operands; squares with rotations, plaintext products and modulus switches;
//! squares with modulus switches), the estimate is asserted **never more optimistic than
//! the measurement by more than 1 bit** and **never more pessimistic by more than 4 bits**.
//! Measured: from 2.7 bits pessimistic to 0.3 bit optimistic (the worst optimism: one
//! rotation of a fresh ciphertext, where the key-switching rounding dominates); about
//! 0.9 bit of pessimism comes from the tail factor alone. The 1-bit allowance covers the
//! randomness of one measurement (the largest of `N` coefficients, one secret) and what the
//! model ignores (the HPS lift's rare `±Q` errors, `v_a·v_b`); the 4-bit one bounds what a
//! compiler loses by trusting the estimate, a tenth of one 40-bit level. Chains longer than
//! those tested, without automorphisms, may drift by a few tenths of a bit per product
//! either way (the saturation above is calibrated, and depends on the secret).
//! The model assumes independent operands: for `a + a` use [`NoiseEstimate::mul_scalar`]
//! by 2, for `a · a` [`NoiseEstimate::square`]; a rotation followed by its inverse
//! restores the correlation with `s` that [`NoiseEstimate::apply_galois`] forgets.

use std::sync::Arc;

use hecnn_ring::sampler::SIGMA;
use hecnn_rlwe::SecretDistribution;

use crate::{BfvError, BfvParams, Plaintext};

/// Probability (`log2`) that the largest noise coefficient exceeds the budget's bound.
const LOG2_TAIL_PROBABILITY: f64 = -20.0;

/// The Euler–Mascheroni constant (the largest of `m` exponential variables is about
/// `ln m + γ`).
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// `log2(2^a + 2^b)`, exact for infinite inputs (`log2 0 = −∞`).
fn log2_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (1.0 + (lo - hi).exp2()).log2()
}

/// The parameters' constants that the estimates need.
#[derive(Debug)]
struct Consts {
    fingerprint: [u8; 32],
    n: usize,
    t: u64,
    /// `log2 Q_l` per level.
    log_q: Vec<f64>,
    /// `log2` of the key-switching variance `E_ks` per level (integer units).
    log_ks: Vec<f64>,
    /// Power of `s` that the key-switching noise carries (its rounding's `ε_1·s`).
    ks_power: f64,
    /// `log2(t²·N·(1 + N·ς²)/12)`: the multiplication's growth factor.
    log_mul: f64,
    /// `log2((1 + N·ς² + N²·ς⁴)/12)`: the multiplication's rounding (times `(t/Q)²`).
    log_mul_round: f64,
    /// `log2((1 + N·ς²)/12)` and `log2((1 + N·ς² + N²·ς⁴)/12)`: modulus-switch rounding of
    /// degree 1 and 2.
    log_switch: [f64; 2],
    /// Powers of `s` of the modulus-switch rounding, degree 1 and 2.
    switch_power: [f64; 2],
    /// `log2(σ² + 1/12)` and `log2(σ²·(1 + N·2/3 + N·ς²) + 1/12)`.
    log_fresh: [f64; 2],
    /// Power of `s` of a public-key encryption's noise (its `e_1·s` share).
    pk_power: f64,
    /// `log2 t`.
    log_t: f64,
    /// `log2 z` (the budget's tail factor).
    log_tail: f64,
    /// Largest variance growth from the powers of `s` in one product:
    /// `(ln(N/2) + γ)/2`.
    power_cap: f64,
}

/// Precomputed constants of the noise estimates for one set of [`BfvParams`] (cheap to
/// clone; shared by every [`NoiseEstimate`] it produces).
#[derive(Clone, Debug)]
pub struct NoiseModel {
    consts: Arc<Consts>,
}

impl NoiseModel {
    /// The model of `params` (see the [module documentation](self) for the formulas).
    pub fn new(params: &BfvParams) -> Self {
        Self::for_modulus(params.rlwe(), params.t())
    }

    /// The model of the BFV parameters that `rlwe` and the plaintext modulus `t` would make,
    /// without building them (no auxiliary basis, no precomputed tables): a planner can try
    /// many `t` cheaply. Estimates compare equal to those of [`NoiseModel::new`] for the
    /// same parameters.
    pub fn for_modulus(rlwe: &hecnn_rlwe::Params, t: u64) -> Self {
        let n = rlwe.n();
        let nf = n as f64;
        let var_s = match rlwe.secret() {
            SecretDistribution::Ternary => 2.0 / 3.0,
            SecretDistribution::SparseTernary { h } => h as f64 / nf,
        };
        let sigma2 = SIGMA * SIGMA;
        let lin = 1.0 + nf * var_s;
        let quad = lin + nf * nf * var_s * var_s;
        let log_t = (t as f64).log2();

        // Key switching: digits of Q_l, special modulus P with k primes.
        let log_p: f64 = rlwe.p().iter().map(|&p| (p as f64).log2()).sum();
        let k = rlwe.p().len() as f64;
        let round = lin / 12.0 * (1.0 + 3.0 * (k - 1.0).max(0.0).powi(2));
        let q = rlwe.q();
        let log_ks = (0..q.len())
            .map(|level| {
                let digits = rlwe
                    .digits()
                    .iter()
                    .map(|r| {
                        let primes = q.get(r.start..r.end.min(level + 1)).unwrap_or_default();
                        let alpha = primes.len() as f64;
                        let log_d: f64 = primes.iter().map(|&p| (p as f64).log2()).sum();
                        // N·σ²·E[d²]/P², E[d²] = (α/12 + α²/4)·D².
                        if primes.is_empty() {
                            f64::NEG_INFINITY
                        } else {
                            (nf * sigma2 * (alpha / 12.0 + alpha * alpha / 4.0)).log2()
                                + 2.0 * (log_d - log_p)
                        }
                    })
                    .fold(f64::NEG_INFINITY, log2_add);
                log2_add(digits, round.log2())
            })
            .collect();

        let tail =
            (2.0 * (2.0 * nf).ln() - 2.0 * LOG2_TAIL_PROBABILITY * std::f64::consts::LN_2).sqrt();
        Self {
            consts: Arc::new(Consts {
                fingerprint: crate::params::fingerprint_for(rlwe, t),
                n,
                t,
                log_q: q
                    .iter()
                    .scan(0.0, |acc, &p| {
                        *acc += (p as f64).log2();
                        Some(*acc)
                    })
                    .collect(),
                log_ks,
                ks_power: nf * var_s / lin,
                log_mul: 2.0 * log_t + (nf * lin / 12.0).log2(),
                log_mul_round: (quad / 12.0).log2(),
                log_switch: [(lin / 12.0).log2(), (quad / 12.0).log2()],
                switch_power: [
                    nf * var_s / lin,
                    (nf * var_s + 2.0 * nf * nf * var_s * var_s) / quad,
                ],
                log_fresh: [
                    (sigma2 + 1.0 / 12.0).log2(),
                    (sigma2 * (1.0 + nf * 2.0 / 3.0 + nf * var_s) + 1.0 / 12.0).log2(),
                ],
                pk_power: sigma2 * nf * var_s / (sigma2 * (1.0 + nf * 2.0 / 3.0 + nf * var_s)),
                log_t,
                log_tail: tail.log2(),
                power_cap: ((nf / 2.0).ln() + EULER_GAMMA) / 2.0,
            }),
        }
    }

    fn top(&self) -> usize {
        self.consts.log_q.len().saturating_sub(1)
    }

    fn estimate(&self, level: usize, noise: Term) -> NoiseEstimate {
        NoiseEstimate {
            consts: Arc::clone(&self.consts),
            level,
            degree: 1,
            noise,
        }
    }

    /// A fresh secret-key encryption (top level), as [`crate::encrypt_sk`] makes.
    pub fn fresh_sk(&self) -> NoiseEstimate {
        let c = &self.consts;
        let level = self.top();
        self.estimate(level, Term::new(c.scaled(c.log_fresh[0], level), 0.0))
    }

    /// A fresh public-key encryption (top level), as [`crate::encrypt_pk`] makes.
    pub fn fresh_pk(&self) -> NoiseEstimate {
        let c = &self.consts;
        let level = self.top();
        self.estimate(
            level,
            Term::new(c.scaled(c.log_fresh[1], level), c.pk_power),
        )
    }

    /// The budget's tail factor `z` (the estimated `‖v‖_∞` is `z·√V`).
    pub fn tail_factor(&self) -> f64 {
        self.consts.log_tail.exp2()
    }
}

impl Consts {
    /// `log2((t/Q_l)²·2^x)`.
    fn scaled(&self, log_x: f64, level: usize) -> f64 {
        let log_q = self.log_q.get(level).copied().unwrap_or(0.0);
        log_x + 2.0 * (self.log_t - log_q)
    }
}

/// A noise contribution: `log2` of its coefficient variance and the (variance-weighted)
/// power of the secret `s` it carries since the last automorphism.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Term {
    log2_var: f64,
    power: f64,
}

impl Term {
    fn new(log2_var: f64, power: f64) -> Self {
        Self { log2_var, power }
    }

    /// The sum of two independent contributions.
    fn plus(self, other: Self) -> Self {
        let log2_var = log2_add(self.log2_var, other.log2_var);
        if log2_var == f64::NEG_INFINITY {
            return self;
        }
        let w = |t: Self| (t.log2_var - log2_var).exp2();
        Self {
            log2_var,
            power: w(self) * self.power + w(other) * other.power,
        }
    }

    /// This contribution times `x = c_0 + c_1·s` (one more power of `s`), scaled by `2^log_f`:
    /// the variance grows by `(power + 1)` besides the independent model's factor.
    fn times_s(self, log_f: f64, cap: f64) -> Self {
        Self {
            log2_var: self.log2_var + log_f + (self.power + 1.0).min(cap).log2(),
            power: self.power + 1.0,
        }
    }
}

/// The predicted noise of one ciphertext: its level and degree, and the variance of its
/// invariant-noise coefficients (see the [module documentation](self)). Methods mirror the
/// [`crate::Evaluator`]'s operations and return the estimate of their result, refusing what
/// the evaluator refuses ([`BfvError::LevelMismatch`], [`BfvError::Degree`],
/// [`BfvError::LevelTooLow`], [`BfvError::ParamsMismatch`]).
#[derive(Clone, Debug)]
pub struct NoiseEstimate {
    consts: Arc<Consts>,
    level: usize,
    degree: usize,
    noise: Term,
}

impl NoiseEstimate {
    /// The level (as [`crate::Ciphertext::level`]).
    pub fn level(&self) -> usize {
        self.level
    }

    /// The degree (as [`crate::Ciphertext::degree`]).
    pub fn degree(&self) -> usize {
        self.degree
    }

    /// `log2` of the standard deviation of one invariant-noise coefficient.
    pub fn log2_std(&self) -> f64 {
        self.noise.log2_var / 2.0
    }

    /// The predicted invariant noise budget in bits, `−log2(2·z·√V)` floored at 0: what
    /// [`crate::noise_budget_bits`] would measure, within the margins of the
    /// [module documentation](self). Decryption is predicted correct while it is positive.
    pub fn budget_bits(&self) -> f64 {
        // A noiseless estimate (a zero plaintext factor) reports what the measurement does
        // for zero noise, `log2 Q_l − 1`.
        let ceiling = self.consts.log_q.get(self.level).copied().unwrap_or(0.0) - 1.0;
        (-1.0 - self.consts.log_tail - self.log2_std()).clamp(0.0, ceiling.max(0.0))
    }

    fn with(&self, level: usize, degree: usize, noise: Term) -> Self {
        Self {
            consts: Arc::clone(&self.consts),
            level,
            degree,
            noise,
        }
    }

    fn check_pair(&self, other: &Self) -> Result<(), BfvError> {
        if self.consts.fingerprint != other.consts.fingerprint {
            return Err(BfvError::ParamsMismatch);
        }
        if self.level != other.level {
            return Err(BfvError::LevelMismatch {
                lhs: self.level,
                rhs: other.level,
            });
        }
        Ok(())
    }

    fn check_degree(&self, expected: usize) -> Result<(), BfvError> {
        if self.degree == expected {
            Ok(())
        } else {
            Err(BfvError::Degree {
                expected,
                found: self.degree,
            })
        }
    }

    /// `a + b` (independent operands; for `a + a` use [`NoiseEstimate::mul_scalar`] by 2).
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`], [`BfvError::LevelMismatch`].
    pub fn add(&self, other: &Self) -> Result<Self, BfvError> {
        self.check_pair(other)?;
        Ok(self.with(
            self.level,
            self.degree.max(other.degree),
            self.noise.plus(other.noise),
        ))
    }

    /// `a − b` (as [`NoiseEstimate::add`]).
    ///
    /// # Errors
    /// See [`NoiseEstimate::add`].
    pub fn sub(&self, other: &Self) -> Result<Self, BfvError> {
        self.add(other)
    }

    /// `−a` (the noise is negated: unchanged in size).
    pub fn neg(&self) -> Self {
        self.clone()
    }

    /// `a ± pt` (the rounding of `Q_l·pt/t`; any plaintext).
    pub fn add_plain(&self) -> Self {
        let c = &self.consts;
        let extra = Term::new(c.scaled(-(12f64.log2()), self.level), 0.0);
        self.with(self.level, self.degree, self.noise.plus(extra))
    }

    /// `a · p` for a plaintext whose centered coefficients have squared Euclidean norm
    /// `norm_sq = Σ p_i²` (`N·t²/12` on average for uniformly random slots).
    pub fn mul_plain_norm(&self, norm_sq: f64) -> Self {
        let noise = Term::new(
            self.noise.log2_var + norm_sq.max(0.0).log2(),
            self.noise.power,
        );
        self.with(self.level, self.degree, noise)
    }

    /// `a · pt`, from the plaintext's own norm (its coefficients centered in `(−t/2, t/2]`).
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`] for a plaintext of other parameters.
    pub fn mul_plain(&self, pt: &Plaintext) -> Result<Self, BfvError> {
        if pt.fingerprint() != self.consts.fingerprint {
            return Err(BfvError::ParamsMismatch);
        }
        let norm_sq: f64 = pt
            .coeffs()
            .iter()
            .map(|&v| {
                let x = self.center(v);
                x * x
            })
            .sum();
        Ok(self.mul_plain_norm(norm_sq))
    }

    /// `a · pt` for a plaintext with uniformly random slots (`‖p‖₂² = N·t²/12`): what a
    /// compiler assumes before the weights are known.
    pub fn mul_plain_uniform(&self) -> Self {
        let c = &self.consts;
        let t = c.t as f64;
        self.mul_plain_norm(c.n as f64 * t * t / 12.0)
    }

    /// `a · k` for an integer `k` in `[0, t)` (taken centered, as the evaluator does).
    ///
    /// # Errors
    /// [`BfvError::ValueOutOfRange`] for `k ≥ t`.
    pub fn mul_scalar(&self, k: u64) -> Result<Self, BfvError> {
        let t = self.consts.t;
        if k >= t {
            return Err(BfvError::ValueOutOfRange {
                index: 0,
                value: k as i128,
                t,
            });
        }
        let kc = self.center(k);
        Ok(self.mul_plain_norm(kc * kc))
    }

    fn center(&self, v: u64) -> f64 {
        let t = self.consts.t;
        if v > t / 2 {
            v as f64 - t as f64
        } else {
            v as f64
        }
    }

    fn product(&self, other: &Self, main: Term) -> Result<Self, BfvError> {
        self.check_pair(other)?;
        self.check_degree(1)?;
        other.check_degree(1)?;
        let c = &self.consts;
        let round = Term::new(c.scaled(c.log_mul_round, self.level), c.switch_power[1]);
        Ok(self.with(self.level, 2, main.plus(round)))
    }

    /// `a · b` without relinearization (degree 2), independent operands.
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`], [`BfvError::LevelMismatch`], [`BfvError::Degree`].
    pub fn mul(&self, other: &Self) -> Result<Self, BfvError> {
        let f = self.consts.log_mul;
        let cap = self.consts.power_cap;
        let main = self.noise.times_s(f, cap).plus(other.noise.times_s(f, cap));
        self.product(other, main)
    }

    /// `a · a` without relinearization (the evaluator's `mul(a, a)`: the two cross terms
    /// are the same, which doubles the variance of [`NoiseEstimate::mul`]'s main term).
    ///
    /// # Errors
    /// [`BfvError::Degree`].
    pub fn square(&self) -> Result<Self, BfvError> {
        let main = self
            .noise
            .times_s(self.consts.log_mul + 2.0, self.consts.power_cap);
        self.product(self, main)
    }

    fn key_switch(&self, noise: Term) -> Self {
        let c = &self.consts;
        let ks = c
            .log_ks
            .get(self.level)
            .copied()
            .unwrap_or(f64::NEG_INFINITY);
        let ks = Term::new(c.scaled(ks, self.level), c.ks_power);
        self.with(self.level, 1, noise.plus(ks))
    }

    /// Relinearization of a degree-2 estimate (one key switch).
    ///
    /// # Errors
    /// [`BfvError::Degree`].
    pub fn relinearize(&self) -> Result<Self, BfvError> {
        self.check_degree(2)?;
        Ok(self.key_switch(self.noise))
    }

    /// `a · b`, relinearized.
    ///
    /// # Errors
    /// See [`NoiseEstimate::mul`].
    pub fn mul_relin(&self, other: &Self) -> Result<Self, BfvError> {
        self.mul(other)?.relinearize()
    }

    /// `a²`, relinearized.
    ///
    /// # Errors
    /// See [`NoiseEstimate::square`].
    pub fn square_relin(&self) -> Result<Self, BfvError> {
        self.square()?.relinearize()
    }

    /// A row rotation by `k` (the identity, without key switching, when `k ≡ 0 mod N/2`).
    ///
    /// # Errors
    /// [`BfvError::Degree`].
    pub fn rotate_rows(&self, k: i64) -> Result<Self, BfvError> {
        let half = (self.consts.n / 2).max(1) as i64;
        if k.rem_euclid(half) == 0 {
            return Ok(self.clone());
        }
        self.apply_galois()
    }

    /// The row swap.
    ///
    /// # Errors
    /// [`BfvError::Degree`].
    pub fn swap_rows(&self) -> Result<Self, BfvError> {
        self.apply_galois()
    }

    /// Any Galois automorphism followed by its key switch. The noise's coefficients are
    /// permuted with signs (its variance is kept) and it now carries `σ(s)` instead of `s`,
    /// so its power of `s` restarts at zero.
    ///
    /// # Errors
    /// [`BfvError::Degree`].
    pub fn apply_galois(&self) -> Result<Self, BfvError> {
        self.check_degree(1)?;
        Ok(self.key_switch(Term::new(self.noise.log2_var, 0.0)))
    }

    /// Modulus switch one level down: the invariant noise is kept, plus the rounding term.
    ///
    /// # Errors
    /// [`BfvError::LevelTooLow`] at level 0.
    pub fn mod_switch_to_next(&self) -> Result<Self, BfvError> {
        let level = self
            .level
            .checked_sub(1)
            .ok_or(BfvError::LevelTooLow { needed: 1, have: 0 })?;
        let c = &self.consts;
        let idx = usize::from(self.degree >= 2);
        let round = Term::new(c.scaled(c.log_switch[idx], level), c.switch_power[idx]);
        Ok(self.with(level, self.degree, self.noise.plus(round)))
    }

    /// Modulus switch down to `level`.
    ///
    /// # Errors
    /// [`BfvError::LevelTooLow`] if `level` is above this estimate's level.
    pub fn mod_switch_to_level(&self, level: usize) -> Result<Self, BfvError> {
        if level > self.level {
            return Err(BfvError::LevelTooLow {
                needed: level,
                have: self.level,
            });
        }
        let mut out = self.clone();
        while out.level > level {
            out = out.mod_switch_to_next()?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The presets' documented budgets (measured with keys: 141 bits fresh and depth 5 for
    /// `N13_QP216_T65537`, 303 bits and depth 10 for `N14_QP432_T65537`) from the model alone.
    #[test]
    fn presets_budget_and_depth_from_the_model() {
        for (preset, fresh, depth) in [
            (crate::Preset::N13Qp216T65537, 141.0, 5),
            (crate::Preset::N14Qp432T65537, 303.0, 10),
        ] {
            let params = preset.build().unwrap();
            let model = NoiseModel::new(&params);
            let f = model.fresh_sk();
            assert!(
                (f.budget_bits() - fresh).abs() < 2.0,
                "{}: {}",
                preset.name(),
                f.budget_bits()
            );
            let mut x = f.clone();
            let mut d = 0;
            loop {
                x = x.mul_relin(&f.clone()).unwrap();
                if x.budget_bits() <= 0.0 {
                    break;
                }
                d += 1;
            }
            assert_eq!(d, depth, "{}", preset.name());
        }
        // Zero noise: the measurement's ceiling, not infinity.
        let params = crate::Preset::N13Qp216T65537.build().unwrap();
        let f = NoiseModel::new(&params).fresh_sk();
        let z = f.mul_plain_norm(0.0);
        assert_eq!(z.budget_bits(), params.log_q_at(params.max_level()) - 1.0);
        assert_eq!(f.mul_plain_norm(f64::NAN).budget_bits(), z.budget_bits());
    }

    #[test]
    fn log2_add_is_exact_enough() {
        assert!((log2_add(3.0, 3.0) - 4.0).abs() < 1e-12);
        assert_eq!(log2_add(5.0, f64::NEG_INFINITY), 5.0);
        assert!((log2_add(-1000.0, -1001.0) - (-1000.0 + 1.5f64.log2())).abs() < 1e-9);
    }
}
