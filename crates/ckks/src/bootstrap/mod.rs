//! CKKS bootstrapping: ModRaise, CoeffToSlot, EvalMod, SlotToCoeff, for full (`n/2`) and
//! sparse (fewer) slot counts, with sparse-secret encapsulation.
//!
//! A ciphertext at level 0 decrypts to `m` modulo `q_0`. Raised to the top modulus it
//! decrypts to `m + q_0·I` for a small integer polynomial `I`. The circuit:
//! 1. **Encapsulation and ModRaise.** At level 0 the ciphertext is switched to an ephemeral
//!    sparse secret of weight `h` ([`hecnn_rlwe::EncapsulationKeys`]). It is raised and
//!    switched back to the dense secret. Then `|I| ≤ (h + 1)/2` for every coefficient, so
//!    `K = ⌊(h + 1)/2⌋ + 1` bounds `t = I + m/q_0` with **no failure probability** from `I`.
//! 2. **SubSum** (sparse slots only). It zeroes the coefficients that do not carry slots.
//! 3. **CoeffToSlot.** The special DFT's inverse, as `cts_levels` BSGS linear transforms with
//!    hoisted baby steps, then one conjugation. Its output holds the real and imaginary parts
//!    of the bit-reversed coefficients divided by `K`. Full slots need two ciphertexts. Sparse
//!    slots need one with `2·slots` slots, imaginary parts in the upper half.
//! 4. **EvalMod.** `κ·sin(2πt)` by a Chebyshev interpolant and double-angle steps
//!    ([`EvalModPoly`]). `κ = q_0 / (2π·Δ')` returns the message coefficients in units of
//!    the message scale.
//! 5. **SlotToCoeff.** The special DFT, as `stc_levels` transforms whose diagonals are encoded
//!    at scales that land the output exactly on the default scale.
//!
//! Every constant (`1/n`, `1/K`, the SubSum factor, the real/imaginary split) is folded into
//! scales or diagonals. Only the linear transforms, EvalMod and nothing else consume levels.

mod dft;
mod eval_mod;
#[cfg(any(test, feature = "test-double"))]
pub mod test_double;

use std::collections::{BTreeMap, BTreeSet};
use std::f64::consts::PI;

use hecnn_ring::{Backend, Basis, Coeff, RnsPoly, sampler};
use hecnn_rlwe::{EncapsulationKeys, KeyRequirements};
use num_complex::Complex64;

pub use dft::{DiagMatrix, coeff_to_slot_factors, slot_to_coeff_factors};
pub use eval_mod::EvalModPoly;

use crate::{
    Ciphertext, CkksError, CkksParams, Evaluator, LinearTransform, Plaintext,
    block_rotations_weighted, cost::OpTally,
};

/// The default [`BootstrapConfig::baby_step_weight`]. At N = 2^16 with five key-switching
/// digits a hoisted baby step skips the decomposition that dominates a key switch; 0.4
/// (7 baby and 3 giant steps instead of 3 and 7 for the 31-diagonal CoeffToSlot factors)
/// measured 10.8 s against 11.9 s with equal weights (bench/RESULTS.md §7).
pub const BOOTSTRAP_BABY_WEIGHT: f64 = 0.4;

/// The default Hamming weight of bootstrapping's ephemeral sparse secret (the weight the
/// preset's security argument covers; a client refuses to make encapsulation keys for
/// another, since a low weight would let the server find the secret).
pub const BOOTSTRAP_EPHEMERAL_WEIGHT: usize = 32;

/// The shape of a bootstrapping circuit.
#[derive(Clone, Debug, PartialEq)]
pub struct BootstrapConfig {
    /// Complex slots of the ciphertexts to bootstrap (a power of two up to `n/2`).
    pub slots: usize,
    /// Levels (linear transforms) of CoeffToSlot.
    pub cts_levels: usize,
    /// Levels (linear transforms) of SlotToCoeff.
    pub stc_levels: usize,
    /// Hamming weight of the ephemeral sparse secret.
    pub ephemeral_weight: usize,
    /// Double-angle steps of EvalMod.
    pub double_angles: usize,
    /// log2 of the target error of EvalMod's Chebyshev interpolant.
    pub log_approx_error: u32,
    /// log2 of `q_0 / Δ'`: the message is pre-multiplied so that its scale is this far
    /// below `q_0` (larger: smaller sine error, more EvalMod precision needed).
    pub log_message_ratio: u32,
    /// log2 of the scale EvalMod's output and SlotToCoeff's input carry (above the output
    /// scale, so SlotToCoeff's rounding noise stays below the message's precision).
    pub log_stc_scale: u32,
    /// Cost of a hoisted baby-step rotation relative to a giant step in the CoeffToSlot and
    /// SlotToCoeff transforms (it sets their baby/giant split and so the rotation keys).
    pub baby_step_weight: f64,
}

impl BootstrapConfig {
    /// The defaults for `slots` slots: 4 CoeffToSlot and 3 SlotToCoeff levels, `h = 32`,
    /// four double angles with a 2^-46 interpolant (near the floor of `f64` evaluation:
    /// degree 27, depth 5 + 4, 15 ciphertext products against 16 with three double angles
    /// and degree 39 at the same depth), message ratio 2^10, SlotToCoeff scale 2^50.
    pub fn new(slots: usize) -> Self {
        Self {
            slots,
            cts_levels: 4,
            stc_levels: 3,
            ephemeral_weight: BOOTSTRAP_EPHEMERAL_WEIGHT,
            double_angles: 4,
            log_approx_error: 46,
            log_message_ratio: 10,
            log_stc_scale: 50,
            baby_step_weight: BOOTSTRAP_BABY_WEIGHT,
        }
    }

    /// The bound `K` on `|I + m/q_0|` that the ephemeral weight guarantees.
    pub fn k_bound(&self) -> f64 {
        (self.ephemeral_weight.div_ceil(2) + 1) as f64
    }

    /// The EvalMod approximation for this configuration.
    ///
    /// # Errors
    /// See [`EvalModPoly::new`].
    pub fn eval_mod_poly(&self) -> Result<EvalModPoly, CkksError> {
        EvalModPoly::new(self.k_bound(), self.double_angles, self.log_approx_error)
    }

    fn check(&self, params: &CkksParams) -> Result<(), CkksError> {
        let max = params.max_slots();
        if !self.slots.is_power_of_two() || self.slots > max {
            return Err(CkksError::InvalidSlots {
                slots: self.slots,
                max,
            });
        }
        let stages = self.slots.trailing_zeros().max(1) as usize;
        if self.cts_levels == 0
            || self.stc_levels == 0
            || self.cts_levels > stages
            || self.stc_levels > stages
        {
            return Err(CkksError::InvalidArgument {
                what: "CoeffToSlot and SlotToCoeff levels must be between 1 and log2(slots)",
            });
        }
        if !(self.baby_step_weight.is_finite() && self.baby_step_weight > 0.0) {
            return Err(CkksError::InvalidArgument {
                what: "the baby-step weight must be positive and finite",
            });
        }
        if self.ephemeral_weight == 0 || self.ephemeral_weight > params.n() {
            return Err(CkksError::InvalidArgument {
                what: "ephemeral Hamming weight outside 1..=n",
            });
        }
        Ok(())
    }

    /// Levels the whole circuit consumes.
    ///
    /// # Errors
    /// See [`EvalModPoly::new`].
    pub fn depth(&self) -> Result<usize, CkksError> {
        Ok(self.cts_levels + self.eval_mod_poly()?.depth() + self.stc_levels)
    }

    fn is_sparse(&self, params: &CkksParams) -> bool {
        self.slots < params.max_slots()
    }

    /// The CoeffToSlot matrices (the last one acting on `2·slots` slots when sparse).
    fn cts_matrices(&self, params: &CkksParams) -> Vec<DiagMatrix> {
        let n = self.slots;
        let mut f = coeff_to_slot_factors(n, self.cts_levels);
        if self.is_sparse(params)
            && let Some(last) = f.pop()
        {
            // Rows of the lower half × 1/2, of the upper half × −i/2: after adding the
            // conjugate, the lower half holds Re v, the upper half Im v.
            let d: Vec<Complex64> = (0..2 * n)
                .map(|p| {
                    if p < n {
                        Complex64::new(0.5, 0.0)
                    } else {
                        Complex64::new(0.0, -0.5)
                    }
                })
                .collect();
            f.push(last.extend_periodic(2).scale_rows(&d));
        }
        f
    }

    /// The SlotToCoeff matrices (the first one reading `2·slots` slots when sparse).
    fn stc_matrices(&self, params: &CkksParams) -> Vec<DiagMatrix> {
        let n = self.slots;
        let mut f = slot_to_coeff_factors(n, self.stc_levels);
        if self.is_sparse(params) && !f.is_empty() {
            // out_p = y_{p mod n} + i·y_{(p mod n) + n}: recombine Re and Im halves.
            let one = Complex64::new(1.0, 0.0);
            let i = Complex64::new(0.0, 1.0);
            let d0: Vec<Complex64> = (0..2 * n).map(|p| if p < n { one } else { i }).collect();
            let dn: Vec<Complex64> = (0..2 * n).map(|p| if p < n { i } else { one }).collect();
            let combine = DiagMatrix::from_diagonals(2 * n, [(0, d0), (n, dn)]);
            let first = f.remove(0).extend_periodic(2).mul(&combine);
            f.insert(0, first);
        }
        f
    }

    /// Exactly the evaluation keys bootstrapping needs (relinearization, conjugation, the
    /// linear transforms' and SubSum's rotations), plus the encapsulation keys
    /// ([`hecnn_rlwe::SecretKey::encapsulation_keys`]).
    ///
    /// # Errors
    /// Invalid slot counts or levels.
    pub fn key_requirements(&self, params: &CkksParams) -> Result<KeyRequirements, CkksError> {
        self.check(params)?;
        let rotations = |matrices: &[DiagMatrix]| -> BTreeSet<i64> {
            matrices
                .iter()
                .flat_map(|m| {
                    let idx: BTreeSet<i64> = m.diagonals().keys().map(|&k| k as i64).collect();
                    block_rotations_weighted(
                        &BTreeMap::from([((0, 0), idx)]),
                        m.slots(),
                        self.baby_step_weight,
                    )
                })
                .collect()
        };
        let mut subsum = BTreeSet::new();
        let mut step = self.slots;
        while step < params.max_slots() {
            subsum.insert(step as i64);
            step *= 2;
        }
        // CoeffToSlot and SubSum run at the top levels; SlotToCoeff below EvalMod, so its
        // keys are restricted to the level it starts at.
        Ok(KeyRequirements::relin()
            .with_rotations_at(rotations(&self.stc_matrices(params)), self.stc_top(params)?)
            .with_rotations(rotations(&self.cts_matrices(params)))
            .with_rotations(subsum)
            .with_conjugate())
    }

    /// The operations of one bootstrap by level, for time estimates
    /// ([`crate::cost`]): the encapsulation switch back to the dense secret and SubSum at
    /// the top, CoeffToSlot's and SlotToCoeff's BSGS transforms at their levels, the
    /// conjugation, and EvalMod (twice for full slots) with its products averaged over
    /// the levels it spans.
    ///
    /// # Errors
    /// Invalid configuration; too few levels.
    pub fn op_tally(&self, params: &CkksParams) -> Result<OpTally, CkksError> {
        self.check(params)?;
        let top = params.max_level();
        let poly = self.eval_mod_poly()?;
        let stc_top = self.stc_top(params)?;
        let mut t = OpTally::new();
        let mut subsum = 0.0;
        let mut step = self.slots;
        while step < params.max_slots() {
            subsum += 1.0;
            step *= 2;
        }
        // ModRaise (about a rescale's NTTs), the switch back to the dense secret, SubSum.
        let o = t.at(top);
        o.rescales += 1.0;
        o.key_switches += 1.0 + subsum;
        t.keys_at(top, 1.0 + subsum);
        let transform = |t: &mut OpTally, m: &DiagMatrix, level: usize, key_level: usize| {
            let idx: BTreeSet<i64> = m.diagonals().keys().map(|&k| k as i64).collect();
            let (babies, giants) = crate::linear::block_rotation_counts_weighted(
                &BTreeMap::from([((0, 0), idx)]),
                m.slots(),
                self.baby_step_weight,
            );
            let o = t.at(level);
            o.decompositions += 1.0;
            o.hoisted += babies as f64;
            o.key_switches += giants as f64;
            o.products += m.diagonals().len() as f64;
            o.rescales += 1.0;
            t.keys_at(key_level, (babies + giants) as f64);
        };
        let cts = self.cts_matrices(params);
        for (i, m) in cts.iter().enumerate() {
            transform(&mut t, m, top - i, top);
        }
        let em_in = top - cts.len();
        t.at(em_in).key_switches += 1.0; // conjugation
        t.keys_at(top, 1.0);
        // EvalMod (twice for full slots: real and imaginary parts, the latter times i
        // before and after): its ciphertext products spread evenly over the levels it
        // consumes. Constant multiplications and leaf rescales are not counted.
        let sparse = self.is_sparse(params);
        let runs = if sparse { 1.0 } else { 2.0 };
        let depth = poly.depth().max(1);
        let products = (poly.cheb.products() + poly.double_angles) as f64 * runs;
        for d in 0..depth {
            let o = t.at(em_in - d);
            let share = products / depth as f64;
            o.tensors += share;
            o.key_switches += share;
            o.rescales += share;
        }
        t.keys_at(top, products);
        if !sparse {
            t.at(em_in).products += 1.0;
            t.at(stc_top).products += 1.0;
        }
        for (i, m) in self.stc_matrices(params).iter().enumerate() {
            transform(&mut t, m, stc_top - i, stc_top);
        }
        Ok(t)
    }

    /// Bytes of the circuit [`Bootstrapper::new`] encodes for `params`: CoeffToSlot's and
    /// SlotToCoeff's diagonals, each over the limbs of its level, and the two `i`
    /// plaintexts (the keys not included).
    ///
    /// # Errors
    /// Invalid configuration; too few levels.
    pub fn encoded_bytes(&self, params: &CkksParams) -> Result<usize, CkksError> {
        self.check(params)?;
        let top = params.max_level();
        let stc_top = self.stc_top(params)?;
        let poly_bytes = |level: usize| (level + 1) * params.n() * 8;
        let matrices = |m: &[DiagMatrix], start: usize| -> usize {
            m.iter()
                .enumerate()
                .map(|(i, m)| m.diagonals().len() * poly_bytes(start - i))
                .sum()
        };
        let cts = self.cts_matrices(params);
        let em_in = top - cts.len();
        Ok(matrices(&cts, top)
            + matrices(&self.stc_matrices(params), stc_top)
            + poly_bytes(em_in)
            + poly_bytes(stc_top))
    }

    /// The level SlotToCoeff starts at: below CoeffToSlot's levels and EvalMod's.
    /// Refuses parameters with fewer levels than the whole circuit consumes (SlotToCoeff's
    /// included), as [`Bootstrapper::new`] does.
    fn stc_top(&self, params: &CkksParams) -> Result<usize, CkksError> {
        let above = self.cts_matrices(params).len() + self.eval_mod_poly()?.depth();
        let needed = above + self.stc_matrices(params).len();
        if params.max_level() < needed {
            return Err(CkksError::LevelTooLow {
                needed,
                have: params.max_level(),
            });
        }
        Ok(params.max_level() - above)
    }
}

/// Something that refreshes a ciphertext's levels: the real [`Bootstrapper`], or in tests a
/// secret-key test double (`test_double::SecretKeyBootstrapper`, feature `test-double`).
pub trait Refresh<B: Backend> {
    /// Level of refreshed ciphertexts.
    fn output_level(&self) -> usize;
    /// Refreshes `ct`: the same slots at [`Refresh::output_level`], default scale.
    ///
    /// # Errors
    /// Implementation-specific (see [`Bootstrapper::bootstrap`]).
    fn refresh(&self, eval: &Evaluator<B>, ct: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError>;

    /// Refreshes `ct` whose slots are at most `bound` (a power of two) in magnitude: a
    /// network's values are far above the unit range bootstrapping's sine approximation is
    /// accurate on. `ct` is read as `ct / bound` (its scale times `bound`, no operation),
    /// refreshed, and multiplied back by the integer `bound` (no level), so the result
    /// holds the same values at [`Refresh::output_level`] and the refresh's scale.
    /// Bootstrapping's error, relative to the unit range, grows by `bound` in absolute
    /// terms, so a tight bound keeps more precision.
    ///
    /// # Errors
    /// A bound that is not a power of two of at most 2^30; those of [`Refresh::refresh`]
    /// (a scale times bound above what the message ratio allows).
    fn refresh_bounded(
        &self,
        eval: &Evaluator<B>,
        ct: &Ciphertext<B>,
        bound: f64,
    ) -> Result<Ciphertext<B>, CkksError> {
        if !(bound >= 1.0 && bound <= f64::from(1u32 << 30) && bound.log2().fract() == 0.0) {
            return Err(CkksError::InvalidArgument {
                what: "a refresh bound must be a power of two from 1 to 2^30",
            });
        }
        let mut read = ct.clone();
        read.set_scale(ct.scale() * bound);
        let out = self.refresh(eval, &read)?;
        if bound == 1.0 {
            return Ok(out);
        }
        eval.mul_int(&out, bound as i64)
    }
}

impl<B: Backend> Refresh<B> for Bootstrapper<B> {
    fn output_level(&self) -> usize {
        Bootstrapper::output_level(self)
    }
    fn refresh(&self, eval: &Evaluator<B>, ct: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        self.bootstrap(eval, ct)
    }
}

/// A bootstrapping circuit encoded for one parameter set: the linear transforms at their
/// levels and the EvalMod approximation.
pub struct Bootstrapper<B: Backend> {
    config: BootstrapConfig,
    encaps: EncapsulationKeys<B>,
    cts: Vec<LinearTransform<B>>,
    stc: Vec<LinearTransform<B>>,
    poly: EvalModPoly,
    /// The monomial `X^{n/2}` (multiplies every slot by `i`) at EvalMod's input and output
    /// levels.
    times_i: [Plaintext<B>; 2],
    /// Scale the raised ciphertext is read at.
    raise_scale: f64,
    /// Scale EvalMod's input carries.
    eval_mod_in_scale: f64,
    sparse: bool,
}

impl<B: Backend> std::fmt::Debug for Bootstrapper<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrapper")
            .field("config", &self.config)
            .field("cts", &self.cts)
            .field("stc", &self.stc)
            .field("eval_mod_degree", &self.poly.cheb.degree())
            .finish_non_exhaustive()
    }
}

/// Scales for a chain of transforms at `levels` (top first) that take `from` to `to`
/// geometrically, the last one exactly.
fn chain_scales(params: &CkksParams, levels: &[usize], from: f64, to: f64) -> Vec<f64> {
    let k = levels.len() as f64;
    let ratio = (to / from).powf(1.0 / k);
    let mut s = from;
    levels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let q = params.q_at(l);
            let pt = if i + 1 == levels.len() {
                q * to / s
            } else {
                q * ratio
            };
            s = s * pt / q;
            pt
        })
        .collect()
}

impl<B: Backend> Bootstrapper<B> {
    /// Encodes the circuit for `eval`'s parameters.
    ///
    /// # Errors
    /// Invalid configuration; too few levels; encapsulation keys of other parameters.
    pub fn new(
        eval: &Evaluator<B>,
        config: BootstrapConfig,
        encaps: EncapsulationKeys<B>,
    ) -> Result<Self, CkksError> {
        let params = eval.params();
        config.check(params)?;
        if encaps.params().fingerprint() != params.rlwe().fingerprint() {
            return Err(hecnn_rlwe::RlweError::ParamsMismatch.into());
        }
        if encaps.key_id() != eval.keys().key_id() {
            return Err(CkksError::InvalidArgument {
                what: "encapsulation keys made from another secret key than the evaluation keys",
            });
        }
        if encaps.weight() != config.ephemeral_weight {
            return Err(CkksError::InvalidArgument {
                what: "encapsulation keys of another ephemeral weight",
            });
        }
        let poly = config.eval_mod_poly()?;
        let top = params.max_level();
        let depth = config.cts_levels + poly.depth() + config.stc_levels;
        if top < depth {
            return Err(CkksError::LevelTooLow {
                needed: depth,
                have: top,
            });
        }
        let sparse = config.is_sparse(params);
        let n = config.slots;
        let gap = (params.max_slots() / n) as f64;
        let q0 = params.q_at(0);
        let k = config.k_bound();
        // Read the raised ciphertext so that CtS (which multiplies by n) and SubSum (× gap)
        // leave (I + m/q0)/K, halved for full slots (the conjugate is added afterwards).
        let raise_scale = q0 * n as f64 * gap * k * if sparse { 1.0 } else { 2.0 };

        let cts_m = config.cts_matrices(params);
        let cts_levels: Vec<usize> = (0..cts_m.len()).map(|i| top - i).collect();
        let em_in_level = top - cts_m.len();
        let eval_mod_in_scale = params.q_at(em_in_level);
        let cts_pt = chain_scales(params, &cts_levels, raise_scale, eval_mod_in_scale);
        let mut cts = Vec::with_capacity(cts_m.len());
        let encode = |m: &DiagMatrix, level: usize, scale: f64| {
            LinearTransform::blocks_weighted(
                eval,
                &BTreeMap::from([((0, 0), m.to_linear_diagonals())]),
                (1, 1),
                m.slots(),
                level,
                scale,
                config.baby_step_weight,
            )
        };
        for ((m, &l), &s) in cts_m.iter().zip(&cts_levels).zip(&cts_pt) {
            cts.push(encode(m, l, s)?);
        }

        let stc_m = config.stc_matrices(params);
        let stc_top = em_in_level - poly.depth();
        debug_assert_eq!(Ok(stc_top), config.stc_top(params).map_err(|_| ()));
        let stc_levels: Vec<usize> = (0..stc_m.len()).map(|i| stc_top - i).collect();
        let stc_in = 2f64.powi(config.log_stc_scale as i32);
        let stc_pt = chain_scales(params, &stc_levels, stc_in, params.default_scale());
        let mut stc = Vec::with_capacity(stc_m.len());
        for ((m, &l), &s) in stc_m.iter().zip(&stc_levels).zip(&stc_pt) {
            stc.push(encode(m, l, s)?);
        }
        let i_values = vec![Complex64::new(0.0, 1.0); params.max_slots()];
        let times_i = [
            eval.encode(&i_values, em_in_level, 1.0, params.max_slots())?,
            eval.encode(&i_values, stc_top, 1.0, params.max_slots())?,
        ];
        Ok(Self {
            config,
            encaps,
            cts,
            stc,
            poly,
            times_i,
            raise_scale,
            eval_mod_in_scale,
            sparse,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BootstrapConfig {
        &self.config
    }

    /// The EvalMod approximation in use.
    pub fn eval_mod_poly(&self) -> &EvalModPoly {
        &self.poly
    }

    /// Level of bootstrapped ciphertexts (the levels left for computation).
    pub fn output_level(&self) -> usize {
        self.stc.last().map_or(0, |lt| lt.level() - 1)
    }

    /// Total diagonals of the encoded linear transforms.
    pub fn diagonal_count(&self) -> usize {
        self.cts
            .iter()
            .chain(&self.stc)
            .map(LinearTransform::diagonal_count)
            .sum()
    }

    /// Refreshes `ct` (any level, any scale below `q_0 / 2^log_message_ratio`): the result
    /// holds the same slots at [`Bootstrapper::output_level`] with the default scale.
    ///
    /// # Errors
    /// Slot-count mismatch; a scale too large for the message ratio; missing keys.
    pub fn bootstrap(
        &self,
        eval: &Evaluator<B>,
        ct: &Ciphertext<B>,
    ) -> Result<Ciphertext<B>, CkksError> {
        self.bootstrap_with_phases(eval, ct).map(|(ct, _)| ct)
    }

    /// As [`Bootstrapper::bootstrap`], also returning the wall-clock time of each phase (for
    /// benchmarks: where the time goes).
    ///
    /// # Errors
    /// See [`Bootstrapper::bootstrap`].
    pub fn bootstrap_with_phases(
        &self,
        eval: &Evaluator<B>,
        ct: &Ciphertext<B>,
    ) -> Result<(Ciphertext<B>, BootstrapPhases), CkksError> {
        let mut phases = BootstrapPhases::default();
        let mut clock = std::time::Instant::now();
        let mut lap = |slot: &mut std::time::Duration| {
            let now = std::time::Instant::now();
            *slot += now - clock;
            clock = now;
        };
        let params = eval.params();
        if ct.slots() != self.config.slots {
            return Err(CkksError::SlotMismatch {
                lhs: ct.slots(),
                rhs: self.config.slots,
            });
        }
        if ct.degree() != 1 {
            return Err(CkksError::Degree {
                expected: 1,
                found: ct.degree(),
            });
        }
        let be = eval.backend();
        let q0 = params.q_at(0);
        let ct0 = eval.drop_to_level(ct, 0)?;

        // Message ratio: multiply by an integer so that the message scale is q0 / 2^ρ.
        let mult = (q0 / (ct0.scale() * 2f64.powi(self.config.log_message_ratio as i32))).floor();
        if mult < 1.0 {
            return Err(CkksError::InvalidScale { scale: ct0.scale() });
        }
        let msg_scale = ct0.scale() * mult;
        let sparse_ct = self.encaps.to_sparse(be, ct0.inner())?;
        let mut sparse_ct = Ciphertext::new(sparse_ct, msg_scale, ct0.slots());
        eval.mul_int_big_assign(&mut sparse_ct, mult as i128)?;

        let raised = mod_raise(eval, sparse_ct.inner())?;
        let dense = self.encaps.to_dense(be, &raised)?;
        let mut x = Ciphertext::new(dense, self.raise_scale, params.max_slots());
        lap(&mut phases.mod_raise);

        // SubSum over the rotations by slots·2^j (the automorphisms fixing X^gap).
        let mut step = self.config.slots;
        while step < params.max_slots() {
            let r = eval.rotate(&x, step as i64)?;
            eval.add_assign(&mut x, &r)?;
            step *= 2;
        }

        lap(&mut phases.sub_sum);

        // CoeffToSlot.
        let mut x = Ciphertext::new(x.into_inner(), self.raise_scale, self.config.slots);
        for lt in &self.cts {
            if x.slots() != lt.slots() {
                // Sparse: the last factor reads the n-periodic vector on 2n slots.
                let s = x.scale();
                x = Ciphertext::new(x.into_inner(), s, lt.slots());
            }
            x = eval.linear_transform(&x, lt)?;
        }
        x.set_scale(self.eval_mod_in_scale);
        let conj = eval.conjugate(&x)?;
        lap(&mut phases.coeff_to_slot);
        let kappa = q0 / (2.0 * PI * msg_scale);
        let stc_scale = 2f64.powi(self.config.log_stc_scale as i32);

        let y = if self.sparse {
            let re_im = eval.add(&x, &conj)?;
            eval.eval_mod(&re_im, &self.poly, kappa, stc_scale)?
        } else {
            // x = v/2: Re v = x + x̄ and Im v = i·(x̄ − x).
            let re = eval.add(&x, &conj)?;
            let im = eval.mul_plain(&eval.sub(&conj, &x)?, &self.times_i[0])?;
            let re = eval.eval_mod(&re, &self.poly, kappa, stc_scale)?;
            let im = eval.eval_mod(&im, &self.poly, kappa, stc_scale)?;
            eval.add(&re, &eval.mul_plain(&im, &self.times_i[1])?)?
        };

        lap(&mut phases.eval_mod);

        // SlotToCoeff.
        let mut z = y;
        for lt in &self.stc {
            if z.slots() != lt.slots() {
                z = Ciphertext::new(z.into_inner(), stc_scale, lt.slots());
            }
            z = eval.linear_transform(&z, lt)?;
            if z.slots() != self.config.slots {
                let s = z.scale();
                z = Ciphertext::new(z.into_inner(), s, self.config.slots);
            }
        }
        z.set_scale(params.default_scale());
        lap(&mut phases.slot_to_coeff);
        Ok((z, phases))
    }
}

/// Wall-clock time of each phase of one bootstrapping
/// ([`Bootstrapper::bootstrap_with_phases`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BootstrapPhases {
    /// Encapsulation, message-ratio multiplication, ModRaise and the switch back.
    pub mod_raise: std::time::Duration,
    /// SubSum (sparse slots only; zero otherwise).
    pub sub_sum: std::time::Duration,
    /// CoeffToSlot and the conjugation.
    pub coeff_to_slot: std::time::Duration,
    /// EvalMod (both real and imaginary parts for full slots).
    pub eval_mod: std::time::Duration,
    /// SlotToCoeff.
    pub slot_to_coeff: std::time::Duration,
}

/// Lifts a level-0 ciphertext to the top level: each coefficient centred modulo `q_0` and
/// reduced into every prime of `Q`.
fn mod_raise<B: Backend>(
    eval: &Evaluator<B>,
    ct: &hecnn_rlwe::Ciphertext<B>,
) -> Result<hecnn_rlwe::Ciphertext<B>, CkksError> {
    let (be, ctx) = (eval.backend(), eval.ctx());
    let top = eval.params().max_level();
    let basis = Basis::q(top + 1);
    let m0 = ctx.modulus(0);
    let n = ctx.n();
    let mut parts = Vec::with_capacity(ct.parts().len());
    for p in ct.parts() {
        let host = p.clone().into_coeff(be, ctx).to_host(be, ctx)?;
        let centred: Vec<i64> = host[..n].iter().map(|&v| m0.center(v)).collect();
        let lifted = sampler::small_to_rns(ctx, basis, &centred);
        parts.push(RnsPoly::<B, Coeff>::from_host(be, ctx, basis, &lifted)?.into_eval(be, ctx));
    }
    Ok(hecnn_rlwe::Ciphertext::from_parts(parts)?)
}

/// The parameter literal for a bootstrappable parameter set: `q_0` of 60 bits, `residual`
/// levels of 40 bits for computation after bootstrapping, then SlotToCoeff (50-bit), EvalMod
/// (60-bit) and CoeffToSlot (58-bit) levels, and six 61-bit special primes (key switching
/// digits sized to them). The security check runs on the whole `log QP`, bootstrapping
/// moduli included, when the literal is built.
///
/// # Errors
/// See [`EvalModPoly::new`].
pub fn bootstrap_literal(
    log_n: u32,
    residual: usize,
    config: &BootstrapConfig,
    security: hecnn_rlwe::SecurityLevel,
) -> Result<hecnn_rlwe::ParamsLiteral, CkksError> {
    bootstrap_literal_with(log_n, residual, 40, config, security)
}

/// As [`bootstrap_literal`], with residual levels of `log_residual` bits (the scale of the
/// computation between bootstrappings; bootstrapping lands its output on it).
///
/// # Errors
/// See [`EvalModPoly::new`].
pub fn bootstrap_literal_with(
    log_n: u32,
    residual: usize,
    log_residual: u32,
    config: &BootstrapConfig,
    security: hecnn_rlwe::SecurityLevel,
) -> Result<hecnn_rlwe::ParamsLiteral, CkksError> {
    let mut log_q = vec![60];
    log_q.extend(std::iter::repeat_n(log_residual, residual));
    log_q.extend(std::iter::repeat_n(50, config.stc_levels));
    log_q.extend(std::iter::repeat_n(60, config.eval_mod_poly()?.depth()));
    log_q.extend(std::iter::repeat_n(58, config.cts_levels));
    let p_count = 6;
    let alpha = p_count; // 61-bit P primes cover digits of `p_count` ≤ 60-bit primes
    let dnum = log_q.len().div_ceil(alpha);
    Ok(hecnn_rlwe::ParamsLiteral {
        log_n,
        log_q,
        log_p: vec![61; p_count],
        dnum: Some(dnum),
        secret: hecnn_rlwe::SecretDistribution::Ternary,
        security,
    })
}

/// Named bootstrappable parameter sets (numbers in the name: N, log QP, ephemeral weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootstrapPreset {
    /// N = 2^16, log QP = 1708 (128-bit, checked on the whole modulus), uniform ternary main
    /// secret, ephemeral weight 32 inside bootstrapping. 9 levels of 40 bits left for
    /// computation; CtS 4, EvalMod 9 (60-bit), StC 3 levels; scale 2^40.
    N16Qp1708H32,
}

impl BootstrapPreset {
    /// The preset's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::N16Qp1708H32 => "N16_QP1708_H32",
        }
    }

    /// The circuit for `slots` slots (full: `2^15`).
    pub fn config(self, slots: usize) -> BootstrapConfig {
        BootstrapConfig::new(slots)
    }

    /// Builds the checked parameters.
    ///
    /// # Errors
    /// Never for the shipped preset (checked in tests).
    pub fn build(self) -> Result<std::sync::Arc<CkksParams>, CkksError> {
        let lit = bootstrap_literal(
            16,
            9,
            &self.config(1 << 15),
            hecnn_rlwe::SecurityLevel::Bits128,
        )?;
        Ok(std::sync::Arc::new(CkksParams::from_literal(&lit, 40)?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn preset_matches_its_name_and_leaves_nine_levels() {
        let p = BootstrapPreset::N16Qp1708H32;
        let params = p.build().unwrap();
        let qp = params.rlwe().log_qp().round() as u32;
        assert!(p.name().contains(&format!("QP{qp}")), "log QP {qp}");
        let depth = p.config(1 << 15).depth().unwrap();
        assert_eq!(params.max_level() - depth, 9);
    }
}
