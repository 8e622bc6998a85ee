//! The CKKS evaluator: arithmetic, rescaling, level and scale management, rotations
//! (direct, composed and hoisted), conjugation, inner sums and replication.
//!
//! The evaluator holds parameters, evaluation keys and a backend handle and keeps no
//! per-call state, so one instance can be shared across threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hecnn_ring::{Backend, Basis, Eval, RnsContext, RnsPoly, backend::Operand};
use hecnn_rlwe::{EvaluationKeys, keyswitch};
use num_complex::Complex64;

use crate::{Ciphertext, CkksError, CkksParams, Encoder, Plaintext, bootstrap::Refresh};

/// Relative scale difference below which two scales count as equal (floating-point
/// rounding of scale products, far below CKKS noise).
const SCALE_TOLERANCE: f64 = 1e-12;

/// Evaluates CKKS operations with a fixed set of evaluation keys on one backend.
pub struct Evaluator<B: Backend> {
    params: Arc<CkksParams>,
    keys: Arc<EvaluationKeys<B>>,
    be: B,
    encoder: Encoder,
    /// What refreshes ciphertexts' levels (bootstrapping), when one is installed.
    refresh: Option<Arc<dyn Refresh<B> + Send + Sync>>,
    /// What this evaluator has done, for breakdowns.
    counters: Arc<Counters>,
}

/// Counts of the costly operations an [`Evaluator`] has run since it was made (bootstrapping's
/// own included): read them before and after a computation for its breakdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Relinearizations (key switches by the relinearization key).
    pub relinearizations: u64,
    /// Rotations and conjugations, one key switch each (hoisted ones included).
    pub rotations: u64,
    /// Refreshes (bootstrappings).
    pub refreshes: u64,
    /// Diagonals of deferred linear transforms encoded while they ran.
    pub deferred_encodings: u64,
    /// Wall-clock time spent encoding them, in nanoseconds (threads overlapping).
    pub deferred_encoding_ns: u64,
}

impl OpCounts {
    /// Key switches: relinearizations and rotations.
    pub fn key_switches(&self) -> u64 {
        self.relinearizations + self.rotations
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &OpCounts) -> OpCounts {
        OpCounts {
            relinearizations: self
                .relinearizations
                .saturating_sub(earlier.relinearizations),
            rotations: self.rotations.saturating_sub(earlier.rotations),
            refreshes: self.refreshes.saturating_sub(earlier.refreshes),
            deferred_encodings: self
                .deferred_encodings
                .saturating_sub(earlier.deferred_encodings),
            deferred_encoding_ns: self
                .deferred_encoding_ns
                .saturating_sub(earlier.deferred_encoding_ns),
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    relinearizations: AtomicU64,
    rotations: AtomicU64,
    refreshes: AtomicU64,
    pub(crate) deferred_encodings: AtomicU64,
    pub(crate) deferred_encoding_ns: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl<B: Backend> std::fmt::Debug for Evaluator<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("backend", &self.be.name())
            .field("params", &self.params.rlwe().fingerprint_hex())
            .finish()
    }
}

/// Signed binary digits of `k` (all with the sign of `k`).
fn binary(k: i64) -> Vec<i64> {
    let sign = k.signum();
    let m = k.unsigned_abs();
    (0..64)
        .filter(|i| m >> i & 1 == 1)
        .map(|i| sign * (1i64 << i))
        .collect()
}

/// Non-adjacent form of `k`: signed powers of two summing to `k`, no two adjacent.
fn naf(mut k: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut bit = 1i64;
    while k != 0 {
        if k & 1 == 1 {
            let d = 2 - k.rem_euclid(4); // +1 or −1
            out.push(d * bit);
            k -= d;
        }
        k >>= 1;
        bit <<= 1;
    }
    out
}

impl<B: Backend> Evaluator<B> {
    /// An evaluator for `params` with the server's evaluation keys.
    ///
    /// # Errors
    /// [`CkksError::Rlwe`] (`ParamsMismatch`) if the keys belong to other parameters.
    pub fn new(
        params: Arc<CkksParams>,
        keys: Arc<EvaluationKeys<B>>,
        be: B,
    ) -> Result<Self, CkksError> {
        if keys.params().fingerprint() != params.rlwe().fingerprint() {
            return Err(hecnn_rlwe::RlweError::ParamsMismatch.into());
        }
        let encoder = Encoder::new(params.n());
        Ok(Self {
            params,
            keys,
            be,
            encoder,
            refresh: None,
            counters: Arc::default(),
        })
    }

    /// The operations this evaluator has run so far.
    pub fn op_counts(&self) -> OpCounts {
        let c = &self.counters;
        OpCounts {
            relinearizations: c.relinearizations.load(Ordering::Relaxed),
            rotations: c.rotations.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
            deferred_encodings: c.deferred_encodings.load(Ordering::Relaxed),
            deferred_encoding_ns: c.deferred_encoding_ns.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The evaluator with `refresh` bringing ciphertexts back to a high level
    /// ([`Evaluator::refresh`]): a [`crate::Bootstrapper`] built for this evaluator, or in
    /// tests the secret-key test double.
    pub fn with_refresh(mut self, refresh: Arc<dyn Refresh<B> + Send + Sync>) -> Self {
        self.refresh = Some(refresh);
        self
    }

    /// Level of refreshed ciphertexts, when a refresh is installed.
    pub fn refresh_level(&self) -> Option<usize> {
        self.refresh.as_ref().map(|r| r.output_level())
    }

    /// Refreshes `ct`, whose slots are at most `bound` in magnitude, with the installed
    /// refresh (see [`Refresh::refresh_bounded`]).
    ///
    /// # Errors
    /// [`CkksError::InvalidArgument`] without a refresh; the refresh's errors.
    pub fn refresh(&self, ct: &Ciphertext<B>, bound: f64) -> Result<Ciphertext<B>, CkksError> {
        let r = self.refresh.as_ref().ok_or(CkksError::InvalidArgument {
            what: "no bootstrapping is installed in this evaluator",
        })?;
        Counters::add(&self.counters.refreshes, 1);
        r.refresh_bounded(self, ct, bound)
    }

    /// The parameters.
    pub fn params(&self) -> &Arc<CkksParams> {
        &self.params
    }
    /// The backend.
    pub fn backend(&self) -> &B {
        &self.be
    }
    /// The encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    /// The evaluation keys.
    pub fn keys(&self) -> &EvaluationKeys<B> {
        &self.keys
    }
    pub(crate) fn ctx(&self) -> &RnsContext {
        self.params.rlwe().ctx()
    }

    /// Encodes real values at `level` and `scale` with the ciphertext slot count `slots`.
    ///
    /// # Errors
    /// See [`Encoder::encode`].
    pub fn encode_real(
        &self,
        values: &[f64],
        level: usize,
        scale: f64,
        slots: usize,
    ) -> Result<Plaintext<B>, CkksError> {
        self.encoder
            .encode_real(&self.be, &self.params, values, level, scale, slots)
    }

    /// Encodes complex values.
    ///
    /// # Errors
    /// See [`Encoder::encode`].
    pub fn encode(
        &self,
        values: &[Complex64],
        level: usize,
        scale: f64,
        slots: usize,
    ) -> Result<Plaintext<B>, CkksError> {
        self.encoder
            .encode(&self.be, &self.params, values, level, scale, slots)
    }

    // ----- checks -------------------------------------------------------------------------

    fn check_slots(a: usize, b: usize) -> Result<(), CkksError> {
        if a == b {
            Ok(())
        } else {
            Err(CkksError::SlotMismatch { lhs: a, rhs: b })
        }
    }

    fn check_degree(expected: usize, found: usize) -> Result<(), CkksError> {
        if expected == found {
            Ok(())
        } else {
            Err(CkksError::Degree { expected, found })
        }
    }

    fn check_scale(a: f64, b: f64) -> Result<(), CkksError> {
        if ((a - b) / a).abs() <= SCALE_TOLERANCE {
            Ok(())
        } else {
            Err(CkksError::ScaleMismatch {
                lhs: a.log2(),
                rhs: b.log2(),
            })
        }
    }

    /// Component `k` of every ciphertext, as backend operands.
    fn component<'c>(cts: &[&'c Ciphertext<B>], k: usize) -> Vec<Operand<'c, B>> {
        cts.iter()
            .map(|c| {
                let p = &c.inner().parts()[k];
                (p.buffer(), p.basis())
            })
            .collect()
    }

    /// The operand lists of an inner product must be non-empty and of equal length.
    fn check_pairing(lhs: usize, rhs: usize) -> Result<(), CkksError> {
        if lhs == 0 || rhs == 0 {
            return Err(CkksError::InvalidArgument {
                what: "empty inner product",
            });
        }
        if lhs != rhs {
            return Err(CkksError::InvalidArgument {
                what: "inner product of unequal lengths",
            });
        }
        Ok(())
    }

    /// Residues of the integer `v` in every limb of `basis`.
    pub(crate) fn int_residues(&self, v: i128, basis: Basis) -> Vec<u64> {
        let ctx = self.ctx();
        (0..basis.len())
            .map(|pos| ctx.limb_modulus(&basis, pos).reduce_i128(v))
            .collect()
    }

    /// `round(v)` as an integer, or [`CkksError::Overflow`] beyond 126 bits or for NaN.
    pub(crate) fn round_to_i128(v: f64) -> Result<i128, CkksError> {
        let r = v.round();
        if !r.is_finite() || r.abs() >= 2f64.powi(126) {
            return Err(CkksError::Overflow {
                value: v,
                scale: 1.0,
            });
        }
        Ok(r as i128)
    }

    // ----- levels -------------------------------------------------------------------------

    /// Drops limbs down to `level` without rescaling (the scale is unchanged).
    ///
    /// # Errors
    /// [`CkksError::Rlwe`] (`LevelMismatch`) if `level` is above the current level.
    pub fn drop_to_level_assign(
        &self,
        ct: &mut Ciphertext<B>,
        level: usize,
    ) -> Result<(), CkksError> {
        ct.inner_mut().drop_to_level(level)?;
        Ok(())
    }

    /// Copy of `ct` at `level` (see [`Evaluator::drop_to_level_assign`]).
    ///
    /// # Errors
    /// See [`Evaluator::drop_to_level_assign`].
    pub fn drop_to_level(
        &self,
        ct: &Ciphertext<B>,
        level: usize,
    ) -> Result<Ciphertext<B>, CkksError> {
        let mut out = ct.clone();
        self.drop_to_level_assign(&mut out, level)?;
        Ok(out)
    }

    /// Brings `ct` to `level` and exactly `scale` by one multiplication with the constant 1
    /// encoded at the right scale and a rescale (consumes one level: `ct` must be above
    /// `level`).
    ///
    /// # Errors
    /// [`CkksError::LevelTooLow`] if `ct.level() <= level`.
    pub fn adjust(
        &self,
        ct: &Ciphertext<B>,
        level: usize,
        scale: f64,
    ) -> Result<Ciphertext<B>, CkksError> {
        if ct.level() <= level {
            return Err(CkksError::LevelTooLow {
                needed: level + 1,
                have: ct.level(),
            });
        }
        let mut x = self.drop_to_level(ct, level + 1)?;
        let factor = scale * self.params.q_at(level + 1) / x.scale();
        let k = Self::round_to_i128(factor)?;
        if k == 0 {
            // The target scale is so far below the value's that the constant rounds to 0.
            return Err(CkksError::InvalidArgument {
                what: "a scale adjustment whose constant rounds to zero",
            });
        }
        self.mul_int_big_assign(&mut x, k)?;
        x.set_scale(scale * self.params.q_at(level + 1));
        self.rescale_assign(&mut x)?;
        x.set_scale(scale);
        Ok(x)
    }

    // ----- additive operations ------------------------------------------------------------

    /// `a + b`; the operand at the higher level is dropped to the lower level first.
    ///
    /// # Errors
    /// [`CkksError::ScaleMismatch`], [`CkksError::SlotMismatch`].
    pub fn add(&self, a: &Ciphertext<B>, b: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        let mut out = a.clone();
        self.add_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a += b`.
    ///
    /// # Errors
    /// See [`Evaluator::add`].
    pub fn add_assign(&self, a: &mut Ciphertext<B>, b: &Ciphertext<B>) -> Result<(), CkksError> {
        self.combine(a, b, false, true)
    }

    /// `a - b`.
    ///
    /// # Errors
    /// See [`Evaluator::add`].
    pub fn sub(&self, a: &Ciphertext<B>, b: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        let mut out = a.clone();
        self.sub_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a -= b`.
    ///
    /// # Errors
    /// See [`Evaluator::add`].
    pub fn sub_assign(&self, a: &mut Ciphertext<B>, b: &Ciphertext<B>) -> Result<(), CkksError> {
        self.combine(a, b, true, true)
    }

    /// Adds or subtracts; `check` is false only for internal callers that matched scales up
    /// to integer rounding of a scaling constant (a relative error near 2^-40).
    pub(crate) fn combine(
        &self,
        a: &mut Ciphertext<B>,
        b: &Ciphertext<B>,
        subtract: bool,
        check: bool,
    ) -> Result<(), CkksError> {
        Self::check_slots(a.slots(), b.slots())?;
        if check {
            Self::check_scale(a.scale(), b.scale())?;
        }
        let level = a.level().min(b.level());
        if a.level() > level {
            self.drop_to_level_assign(a, level)?;
        }
        let ctx = self.params.rlwe().ctx();
        let be = &self.be;
        let b_parts = b.inner().parts();
        // Extend a to b's degree with zero components if needed.
        if a.degree() < b.degree() {
            let basis = a.inner().basis();
            let mut parts = a.inner().parts().to_vec();
            while parts.len() < b_parts.len() {
                parts.push(RnsPoly::zero(be, ctx, basis)?);
            }
            *a.inner_mut() = hecnn_rlwe::Ciphertext::from_parts(parts)?;
        }
        for (x, y) in a.inner_mut().parts_mut().iter_mut().zip(b_parts) {
            if subtract {
                x.sub_assign(be, ctx, y)?;
            } else {
                x.add_assign(be, ctx, y)?;
            }
        }
        Ok(())
    }

    /// `-a`.
    pub fn neg(&self, a: &Ciphertext<B>) -> Ciphertext<B> {
        let mut out = a.clone();
        for p in out.inner_mut().parts_mut() {
            p.neg_assign(&self.be, self.ctx());
        }
        out
    }

    /// `a + pt` (the plaintext's level must be at least the ciphertext's).
    ///
    /// # Errors
    /// Scale, slot or level mismatches.
    pub fn add_plain(
        &self,
        a: &Ciphertext<B>,
        pt: &Plaintext<B>,
    ) -> Result<Ciphertext<B>, CkksError> {
        self.plain_combine(a, pt, false)
    }

    /// `a - pt`.
    ///
    /// # Errors
    /// See [`Evaluator::add_plain`].
    pub fn sub_plain(
        &self,
        a: &Ciphertext<B>,
        pt: &Plaintext<B>,
    ) -> Result<Ciphertext<B>, CkksError> {
        self.plain_combine(a, pt, true)
    }

    fn plain_combine(
        &self,
        a: &Ciphertext<B>,
        pt: &Plaintext<B>,
        subtract: bool,
    ) -> Result<Ciphertext<B>, CkksError> {
        Self::check_slots(a.slots(), pt.slots())?;
        Self::check_scale(a.scale(), pt.scale())?;
        Self::check_plain_level(a, pt)?;
        let mut out = a.clone();
        let c0 = &mut out.inner_mut().parts_mut()[0];
        if subtract {
            c0.sub_assign(&self.be, self.ctx(), pt.poly())?;
        } else {
            c0.add_assign(&self.be, self.ctx(), pt.poly())?;
        }
        Ok(out)
    }

    fn check_plain_level(a: &Ciphertext<B>, pt: &Plaintext<B>) -> Result<(), CkksError> {
        if pt.level() < a.level() {
            return Err(CkksError::LevelTooLow {
                needed: a.level(),
                have: pt.level(),
            });
        }
        Ok(())
    }

    /// Adds the real constant `c` to every slot.
    ///
    /// # Errors
    /// [`CkksError::Overflow`] for a constant too large for the scale.
    pub fn add_const(&self, a: &Ciphertext<B>, c: f64) -> Result<Ciphertext<B>, CkksError> {
        let mut out = a.clone();
        let v = Self::round_to_i128(c * a.scale())?;
        self.add_int_assign(&mut out, v)?;
        Ok(out)
    }

    /// Adds the integer `v` (already scaled) to every slot.
    pub(crate) fn add_int_assign(&self, a: &mut Ciphertext<B>, v: i128) -> Result<(), CkksError> {
        let basis = a.inner().basis();
        let residues = self.int_residues(v, basis);
        a.inner_mut().parts_mut()[0].add_scalar_assign(&self.be, self.ctx(), &residues)?;
        Ok(())
    }

    // ----- multiplicative operations ------------------------------------------------------

    /// Multiplies by the integer `k` (scale unchanged, no level consumed).
    ///
    /// # Errors
    /// Backend failures.
    pub fn mul_int(&self, a: &Ciphertext<B>, k: i64) -> Result<Ciphertext<B>, CkksError> {
        let mut out = a.clone();
        self.mul_int_big_assign(&mut out, k as i128)?;
        Ok(out)
    }

    pub(crate) fn mul_int_big_assign(
        &self,
        a: &mut Ciphertext<B>,
        k: i128,
    ) -> Result<(), CkksError> {
        let residues = self.int_residues(k, a.inner().basis());
        let (be, ctx) = (&self.be, self.params.rlwe().ctx());
        for p in a.inner_mut().parts_mut() {
            p.mul_scalar_assign(be, ctx, &residues)?;
        }
        Ok(())
    }

    /// Multiplies by the real constant `c`, encoded at scale `q_level` so that the following
    /// [`Evaluator::rescale`] restores the input scale exactly. The result is not rescaled.
    ///
    /// # Errors
    /// [`CkksError::Overflow`].
    pub fn mul_const(&self, a: &Ciphertext<B>, c: f64) -> Result<Ciphertext<B>, CkksError> {
        self.mul_const_scaled(a, c, self.params.q_at(a.level()))
    }

    /// Multiplies by `round(c · const_scale)`; the result's scale is `scale · const_scale`.
    ///
    /// # Errors
    /// [`CkksError::Overflow`].
    pub fn mul_const_scaled(
        &self,
        a: &Ciphertext<B>,
        c: f64,
        const_scale: f64,
    ) -> Result<Ciphertext<B>, CkksError> {
        let k = Self::round_to_i128(c * const_scale)?;
        let mut out = a.clone();
        self.mul_int_big_assign(&mut out, k)?;
        out.set_scale(a.scale() * const_scale);
        Ok(out)
    }

    /// `a ⊙ pt` (scales multiply; not rescaled).
    ///
    /// # Errors
    /// Slot or level mismatches.
    pub fn mul_plain(
        &self,
        a: &Ciphertext<B>,
        pt: &Plaintext<B>,
    ) -> Result<Ciphertext<B>, CkksError> {
        Self::check_slots(a.slots(), pt.slots())?;
        Self::check_plain_level(a, pt)?;
        let mut out = a.clone();
        for p in out.inner_mut().parts_mut() {
            p.mul_assign(&self.be, self.params.rlwe().ctx(), pt.poly())?;
        }
        out.set_scale(a.scale() * pt.scale());
        Ok(out)
    }

    /// Tensor product of two degree-1 ciphertexts (degree 2; scales multiply).
    ///
    /// # Errors
    /// Slot mismatch or degrees other than 1.
    pub fn mul(&self, a: &Ciphertext<B>, b: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        Self::check_slots(a.slots(), b.slots())?;
        let level = a.level().min(b.level());
        let basis = Basis::q(level + 1);
        let (be, ctx) = (&self.be, self.ctx());
        let (ap, bp) = (a.inner().parts(), b.inner().parts());
        let ([a0, a1], [b0, b1]) = (ap, bp) else {
            return Err(CkksError::Degree {
                expected: 1,
                found: a.degree().max(b.degree()),
            });
        };
        let mut d0 = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
        let mut d1 = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
        let mut d2 = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
        d0.mul_acc(be, ctx, a0, b0)?;
        be.mul_sum(
            ctx,
            basis,
            d1.buffer_mut(),
            &[(a0.buffer(), a0.basis()), (a1.buffer(), a1.basis())],
            &[(b1.buffer(), b1.basis()), (b0.buffer(), b0.basis())],
            None,
            false,
        );
        d2.mul_acc(be, ctx, a1, b1)?;
        let inner = hecnn_rlwe::Ciphertext::from_parts(vec![d0, d1, d2])?;
        Ok(Ciphertext::new(inner, a.scale() * b.scale(), a.slots()))
    }

    /// Inner product `Σ_j cts[j] ⊙ pts[j]` of ciphertexts with plaintexts: one lazily reduced
    /// multiply-sum per component, at the lowest level of the operands, not rescaled. All
    /// products must have the same scale (that scale is the result's) and slot count.
    ///
    /// # Errors
    /// Empty or unequal-length inputs, mismatched slots, scales or degrees, a plaintext
    /// below its ciphertext's level.
    pub fn dot_plain(
        &self,
        cts: &[&Ciphertext<B>],
        pts: &[&Plaintext<B>],
    ) -> Result<Ciphertext<B>, CkksError> {
        Self::check_pairing(cts.len(), pts.len())?;
        let (c0, p0) = (cts[0], pts[0]);
        let (slots, degree, scale) = (c0.slots(), c0.degree(), c0.scale() * p0.scale());
        for (c, p) in cts.iter().zip(pts) {
            Self::check_slots(slots, c.slots())?;
            Self::check_slots(slots, p.slots())?;
            Self::check_plain_level(c, p)?;
            Self::check_scale(scale, c.scale() * p.scale())?;
            Self::check_degree(degree, c.degree())?;
        }
        let level = cts.iter().map(|c| c.level()).min().unwrap_or(0);
        let basis = Basis::q(level + 1);
        let (be, ctx) = (&self.be, self.ctx());
        let rhs: Vec<Operand<'_, B>> = pts
            .iter()
            .map(|p| (p.poly().buffer(), p.poly().basis()))
            .collect();
        let mut parts = Vec::with_capacity(degree + 1);
        for comp in 0..=degree {
            let mut acc = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
            let lhs = Self::component(cts, comp);
            be.mul_sum(ctx, basis, acc.buffer_mut(), &lhs, &rhs, None, false);
            parts.push(acc);
        }
        let inner = hecnn_rlwe::Ciphertext::from_parts(parts)?;
        Ok(Ciphertext::new(inner, scale, slots))
    }

    /// Inner product `Σ_j a[j] ⊗ b[j]` of degree-1 ciphertexts: the degree-2 tensor of the
    /// sum, lazily reduced, so that a single [`Evaluator::relinearize`] serves the whole sum.
    /// At the lowest level of the operands, not rescaled; all products must have the same
    /// scale.
    ///
    /// # Errors
    /// Empty or unequal-length inputs, mismatched slots or scales, degrees other than 1.
    pub fn dot(
        &self,
        a: &[&Ciphertext<B>],
        b: &[&Ciphertext<B>],
    ) -> Result<Ciphertext<B>, CkksError> {
        Self::check_pairing(a.len(), b.len())?;
        let (slots, scale) = (a[0].slots(), a[0].scale() * b[0].scale());
        for (x, y) in a.iter().zip(b) {
            Self::check_slots(slots, x.slots())?;
            Self::check_slots(slots, y.slots())?;
            Self::check_scale(scale, x.scale() * y.scale())?;
            let found = x.degree().max(y.degree());
            if x.degree() != 1 || y.degree() != 1 {
                return Err(CkksError::Degree { expected: 1, found });
            }
        }
        let level = a.iter().chain(b).map(|c| c.level()).min().unwrap_or(0);
        let basis = Basis::q(level + 1);
        let (be, ctx) = (&self.be, self.ctx());
        let mut d0 = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
        let mut d1 = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
        let mut d2 = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
        be.mul_sum(
            ctx,
            basis,
            d0.buffer_mut(),
            &Self::component(a, 0),
            &Self::component(b, 0),
            None,
            false,
        );
        // d1 = Σ a0·b1 + a1·b0: both halves in one sum.
        let mut lhs = Self::component(a, 0);
        lhs.extend(Self::component(a, 1));
        let mut rhs = Self::component(b, 1);
        rhs.extend(Self::component(b, 0));
        be.mul_sum(ctx, basis, d1.buffer_mut(), &lhs, &rhs, None, false);
        be.mul_sum(
            ctx,
            basis,
            d2.buffer_mut(),
            &Self::component(a, 1),
            &Self::component(b, 1),
            None,
            false,
        );
        let inner = hecnn_rlwe::Ciphertext::from_parts(vec![d0, d1, d2])?;
        Ok(Ciphertext::new(inner, scale, slots))
    }

    /// Relinearizes a degree-2 ciphertext.
    ///
    /// # Errors
    /// [`CkksError::Rlwe`] (`MissingRelinKey`), wrong degree.
    pub fn relinearize(&self, ct: Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        let (scale, slots) = (ct.scale(), ct.slots());
        let rlk = self.keys.relin()?;
        Counters::add(&self.counters.relinearizations, 1);
        let inner = keyswitch::relinearize(&self.be, self.params.rlwe(), ct.into_inner(), rlk)?;
        Ok(Ciphertext::new(inner, scale, slots))
    }

    /// `relinearize(a ⊗ b)` (not rescaled).
    ///
    /// # Errors
    /// See [`Evaluator::mul`] and [`Evaluator::relinearize`].
    pub fn mul_relin(
        &self,
        a: &Ciphertext<B>,
        b: &Ciphertext<B>,
    ) -> Result<Ciphertext<B>, CkksError> {
        self.relinearize(self.mul(a, b)?)
    }

    /// Divides by the last prime `q_level`: level − 1, scale / `q_level`.
    ///
    /// # Errors
    /// [`CkksError::LevelTooLow`] at level 0.
    pub fn rescale(&self, a: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        let mut out = a.clone();
        self.rescale_assign(&mut out)?;
        Ok(out)
    }

    /// In-place [`Evaluator::rescale`].
    ///
    /// # Errors
    /// See [`Evaluator::rescale`].
    pub fn rescale_assign(&self, a: &mut Ciphertext<B>) -> Result<(), CkksError> {
        if a.level() == 0 {
            return Err(CkksError::LevelTooLow { needed: 1, have: 0 });
        }
        let q = self.params.q_at(a.level());
        let (be, ctx) = (&self.be, self.params.rlwe().ctx());
        for p in a.inner_mut().parts_mut() {
            p.rescale_assign(be, ctx)?;
        }
        a.set_scale(a.scale() / q);
        Ok(())
    }

    // ----- rotations ----------------------------------------------------------------------

    fn normalize_step(slots: usize, k: i64) -> i64 {
        k.rem_euclid(slots as i64)
    }

    fn galois_for(&self, slots: usize, k: i64) -> Option<usize> {
        let ctx = self.ctx();
        let k = Self::normalize_step(slots, k);
        [k, k - slots as i64]
            .into_iter()
            .map(|s| ctx.galois_element(s))
            .find(|&g| self.keys.has_galois(g))
    }

    fn apply_galois(&self, ct: &Ciphertext<B>, g: usize) -> Result<Ciphertext<B>, CkksError> {
        let gk = self.keys.galois(g)?;
        Counters::add(&self.counters.rotations, 1);
        let inner = keyswitch::apply_galois(&self.be, self.params.rlwe(), ct.inner(), gk)?;
        Ok(Ciphertext::new(inner, ct.scale(), ct.slots()))
    }

    /// Rotates the slots left by `k` (slot `i` receives slot `i + k`); negative `k` rotates
    /// right. Uses the key for `k` if present, otherwise composes power-of-two rotations.
    ///
    /// # Errors
    /// [`CkksError::MissingRotationKey`] if no combination of available keys gives `k`.
    pub fn rotate(&self, ct: &Ciphertext<B>, k: i64) -> Result<Ciphertext<B>, CkksError> {
        let slots = ct.slots();
        let k = Self::normalize_step(slots, k);
        if k == 0 {
            return Ok(ct.clone());
        }
        if let Some(g) = self.galois_for(slots, k) {
            return self.apply_galois(ct, g);
        }
        // Compose from power-of-two keys: the binary or non-adjacent form of k or of k − slots,
        // the first whose keys all exist; availability is checked before any work.
        let k_neg = k - slots as i64;
        let plan = [naf(k), binary(k), naf(k_neg), binary(k_neg)]
            .into_iter()
            .find_map(|digits| {
                digits
                    .into_iter()
                    .map(|d| self.galois_for(slots, d))
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or(CkksError::MissingRotationKey { step: k })?;
        let mut out = ct.clone();
        for g in plan {
            out = self.apply_galois(&out, g)?;
        }
        Ok(out)
    }

    /// Rotations of one ciphertext by several steps, sharing one decomposition (hoisting).
    /// Every step needs its own key.
    ///
    /// # Errors
    /// [`CkksError::MissingRotationKey`].
    pub fn rotate_hoisted(
        &self,
        ct: &Ciphertext<B>,
        steps: &[i64],
    ) -> Result<Vec<Ciphertext<B>>, CkksError> {
        let slots = ct.slots();
        let galois: Vec<Option<usize>> = steps
            .iter()
            .map(|&k| {
                if Self::normalize_step(slots, k) == 0 {
                    Ok(None)
                } else {
                    self.galois_for(slots, k)
                        .map(Some)
                        .ok_or(CkksError::MissingRotationKey { step: k })
                }
            })
            .collect::<Result<_, _>>()?;
        if galois.iter().all(Option::is_none) {
            return Ok(vec![ct.clone(); steps.len()]);
        }
        let params = self.params.rlwe();
        let dec = keyswitch::decompose_ct(&self.be, params, ct.inner())?;
        // The rotations share the decomposition and are otherwise independent.
        self.be
            .par_map(galois, |g| match g {
                None => Ok(ct.clone()),
                Some(g) => {
                    let gk = self.keys.galois(g)?;
                    Counters::add(&self.counters.rotations, 1);
                    let inner =
                        keyswitch::apply_galois_hoisted(&self.be, params, ct.inner(), &dec, gk)?;
                    Ok(Ciphertext::new(inner, ct.scale(), ct.slots()))
                }
            })
            .into_iter()
            .collect()
    }

    /// Complex conjugation of every slot.
    ///
    /// # Errors
    /// [`CkksError::Rlwe`] (`MissingGaloisKey`) without the conjugation key.
    pub fn conjugate(&self, ct: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        self.apply_galois(ct, self.ctx().galois_conjugate())
    }

    /// `Σ_{j < count} rotate(ct, j·stride)`: slot `i` receives the sum of slots
    /// `i, i + stride, …, i + (count−1)·stride`. Uses `O(log count)` rotations.
    ///
    /// # Errors
    /// [`CkksError::MissingRotationKey`].
    pub fn inner_sum(
        &self,
        ct: &Ciphertext<B>,
        stride: i64,
        count: usize,
    ) -> Result<Ciphertext<B>, CkksError> {
        if count == 0 {
            return Err(CkksError::InvalidArgument {
                what: "inner_sum over zero elements",
            });
        }
        let mut acc: Option<Ciphertext<B>> = None;
        let mut cur = ct.clone(); // Σ_{j < block} rot(ct, j·stride)
        let mut shift = 0i64;
        let mut block = 1usize;
        let mut i = 0;
        while block <= count {
            if count >> i & 1 == 1 {
                let part = self.rotate(&cur, shift)?;
                acc = Some(match acc {
                    None => part,
                    Some(a) => self.add(&a, &part)?,
                });
                shift += stride * block as i64;
            }
            if block * 2 <= count {
                let r = self.rotate(&cur, stride * block as i64)?;
                self.add_assign(&mut cur, &r)?;
            }
            block <<= 1;
            i += 1;
        }
        acc.ok_or(CkksError::InvalidArgument { what: "inner_sum" })
    }

    /// Replicates: slot `i` receives `Σ_{j < count} ct[i − j·stride]`, which copies a block
    /// of `stride` slots `count` times when the other slots are zero.
    ///
    /// # Errors
    /// [`CkksError::MissingRotationKey`].
    pub fn replicate(
        &self,
        ct: &Ciphertext<B>,
        stride: i64,
        count: usize,
    ) -> Result<Ciphertext<B>, CkksError> {
        self.inner_sum(ct, -stride, count)
    }

    /// `Σ_j k_j·ct_j + bias` with integer weights `k_j` and integer `bias` (added to every
    /// slot, already scaled), the result declared at `scale`. All inputs must have the same
    /// degree and slot count; they are brought to the lowest level. One fused multiply-sum per
    /// component (lazily reduced), no rescale: the weighted sums of batch-mode linear layers.
    ///
    /// # Errors
    /// Empty input, mismatched slots or degrees, length mismatch.
    pub fn linear_combination(
        &self,
        cts: &[&Ciphertext<B>],
        weights: &[i128],
        bias: i128,
        scale: f64,
    ) -> Result<Ciphertext<B>, CkksError> {
        let first = cts.first().ok_or(CkksError::InvalidArgument {
            what: "empty linear combination",
        })?;
        if cts.len() != weights.len() {
            return Err(CkksError::InvalidArgument {
                what: "one weight per ciphertext",
            });
        }
        let (slots, degree) = (first.slots(), first.degree());
        let level = cts.iter().map(|c| c.level()).min().unwrap_or(0);
        for c in cts {
            Self::check_slots(slots, c.slots())?;
            Self::check_degree(degree, c.degree())?;
        }
        let basis = Basis::q(level + 1);
        let (be, ctx) = (&self.be, self.ctx());
        let scalars: Vec<Vec<u64>> = weights
            .iter()
            .map(|&w| self.int_residues(w, basis))
            .collect();
        let mut parts = Vec::with_capacity(degree + 1);
        for comp in 0..=degree {
            let mut acc = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
            let srcs = Self::component(cts, comp);
            be.scalar_mul_sum(ctx, basis, acc.buffer_mut(), &srcs, &scalars, false);
            parts.push(acc);
        }
        let mut out = Ciphertext::new(hecnn_rlwe::Ciphertext::from_parts(parts)?, scale, slots);
        if bias != 0 {
            self.add_int_assign(&mut out, bias)?;
        }
        Ok(out)
    }

    /// Many weighted sums over the same inputs at once: output `k` is
    /// `Σ_{(j, w) ∈ rows[k]} w·cts[j] + biases[k]` (integer weights and scaled integer
    /// biases), declared at `scale`. Inputs must share degree and slot count; they are taken
    /// at their lowest common level. The backend reads each input once per call (blocked over
    /// coefficients), which is what makes batch-mode linear layers compute-bound.
    ///
    /// # Errors
    /// Empty input, mismatched slots or degrees, an index out of range.
    pub fn weighted_sums(
        &self,
        cts: &[&Ciphertext<B>],
        rows: &[Vec<(usize, i128)>],
        biases: &[i128],
        scale: f64,
    ) -> Result<Vec<Ciphertext<B>>, CkksError> {
        let first = cts.first().ok_or(CkksError::InvalidArgument {
            what: "weighted sums of no input",
        })?;
        if rows.len() != biases.len() || rows.iter().flatten().any(|&(j, _)| j >= cts.len()) {
            return Err(CkksError::InvalidArgument {
                what: "rows and biases must match and index the inputs",
            });
        }
        let (slots, degree) = (first.slots(), first.degree());
        for c in cts {
            Self::check_slots(slots, c.slots())?;
            Self::check_degree(degree, c.degree())?;
        }
        let level = cts.iter().map(|c| c.level()).min().unwrap_or(0);
        let basis = Basis::q(level + 1);
        let (be, ctx) = (&self.be, self.ctx());
        let sparse = hecnn_ring::backend::SparseRowsOwned::new(ctx, basis, rows, cts.len())?;
        let sparse = sparse.view();
        let mut comps: Vec<Vec<B::Buffer>> = Vec::with_capacity(degree + 1);
        for comp in 0..=degree {
            let inputs = Self::component(cts, comp);
            let mut outs = (0..rows.len())
                .map(|_| be.alloc(basis.len() * ctx.n()))
                .collect::<Result<Vec<_>, _>>()?;
            be.weighted_sums(ctx, basis, &inputs, sparse, &mut outs);
            comps.push(outs);
        }
        let mut out = Vec::with_capacity(rows.len());
        let mut iters: Vec<_> = comps.into_iter().map(Vec::into_iter).collect();
        for &bias in biases {
            let parts = iters
                .iter_mut()
                .map(|it| it.next().map(|b| RnsPoly::<B, Eval>::from_buffer(b, basis)))
                .collect::<Option<Vec<_>>>()
                .ok_or(CkksError::InvalidArgument {
                    what: "weighted sums",
                })?;
            let mut ct = Ciphertext::new(hecnn_rlwe::Ciphertext::from_parts(parts)?, scale, slots);
            if bias != 0 {
                self.add_int_assign(&mut ct, bias)?;
            }
            out.push(ct);
        }
        Ok(out)
    }

    /// Adds the integer `v` (already multiplied by the ciphertext's scale) to every slot.
    ///
    /// # Errors
    /// Backend failures.
    pub fn add_scaled_integer(&self, ct: &mut Ciphertext<B>, v: i128) -> Result<(), CkksError> {
        self.add_int_assign(ct, v)
    }

    /// A noiseless encryption of the real constant `value` in every slot (for circuits that
    /// need a ciphertext operand).
    ///
    /// # Errors
    /// [`CkksError::Overflow`].
    pub fn trivial(
        &self,
        value: f64,
        level: usize,
        scale: f64,
        slots: usize,
    ) -> Result<Ciphertext<B>, CkksError> {
        let basis = Basis::q(level + 1);
        let (be, ctx) = (&self.be, self.ctx());
        let c0 = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
        let c1 = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
        let mut ct = Ciphertext::new(
            hecnn_rlwe::Ciphertext::from_parts(vec![c0, c1])?,
            scale,
            slots,
        );
        self.add_int_assign(&mut ct, Self::round_to_i128(value * scale)?)?;
        Ok(ct)
    }
}

/// Rotation steps [`Evaluator::inner_sum`] uses (a function of the stride and count only,
/// so a planner calls it without a backend).
pub fn inner_sum_rotations(stride: i64, count: usize) -> Vec<i64> {
    let mut out = Vec::new();
    let mut shift = 0i64;
    let mut block = 1usize;
    let mut i = 0;
    while block <= count {
        if count >> i & 1 == 1 {
            if shift != 0 {
                out.push(shift);
            }
            shift += stride * block as i64;
        }
        if block * 2 <= count {
            out.push(stride * block as i64);
        }
        block <<= 1;
        i += 1;
    }
    out.sort_unstable();
    out.dedup();
    out
}
