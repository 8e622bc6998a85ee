//! The BFV evaluator: additive operations, plaintext operations, HPS multiplication,
//! relinearization, row rotations and the row swap, modulus switching.
//!
//! The evaluator holds parameters, evaluation keys and a backend handle and keeps no
//! per-call state, so one instance can be shared across threads. Operands must be at the
//! same level: BFV levels are aligned by modulus switching (a scaling, not a truncation),
//! which the evaluator never does implicitly.

mod linear;

use std::sync::Arc;

use hecnn_ring::{Backend, Basis, Coeff, Eval, RnsPoly};
use hecnn_rlwe::{EvaluationKeys, keyswitch};

use crate::ciphertext::{centered_poly, delta_poly};
use crate::{BfvError, BfvParams, Ciphertext, Plaintext};

/// A plaintext prepared for repeated multiplications ([`Evaluator::prepare_plain`]): its
/// centered coefficients in the evaluation domain over `Q_level`, usable with ciphertexts at
/// `level` and below.
pub struct PlaintextOperand<B: Backend> {
    poly: RnsPoly<B, Eval>,
    level: usize,
    norm_sq: f64,
    fingerprint: [u8; 32],
}

impl<B: Backend> Clone for PlaintextOperand<B> {
    fn clone(&self) -> Self {
        Self {
            poly: self.poly.clone(),
            level: self.level,
            norm_sq: self.norm_sq,
            fingerprint: self.fingerprint,
        }
    }
}

impl<B: Backend> std::fmt::Debug for PlaintextOperand<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaintextOperand")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> PlaintextOperand<B> {
    /// The highest ciphertext level it multiplies.
    pub fn level(&self) -> usize {
        self.level
    }
    /// `Σ p_i²` over the centered coefficients, for
    /// [`crate::NoiseEstimate::mul_plain_norm`].
    pub fn norm_sq(&self) -> f64 {
        self.norm_sq
    }
    /// Fingerprint of the parameters it belongs to.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

/// Evaluates BFV operations with a fixed set of evaluation keys on one backend.
pub struct Evaluator<B: Backend> {
    params: Arc<BfvParams>,
    keys: Arc<EvaluationKeys<B>>,
    be: B,
}

impl<B: Backend> std::fmt::Debug for Evaluator<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("backend", &self.be.name())
            .field("params", &self.params)
            .finish()
    }
}

impl<B: Backend> Evaluator<B> {
    /// An evaluator for `params` with the server's evaluation keys (relinearization key for
    /// [`Evaluator::relinearize`]; rotation steps `k` for [`Evaluator::rotate_rows`] and the
    /// conjugation key for [`Evaluator::swap_rows`], as in [`hecnn_rlwe::KeyRequirements`]).
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`] if the keys belong to other parameters.
    pub fn new(
        params: Arc<BfvParams>,
        keys: Arc<EvaluationKeys<B>>,
        be: B,
    ) -> Result<Self, BfvError> {
        params.check_rlwe(keys.params())?;
        Ok(Self { params, keys, be })
    }

    /// The parameters.
    pub fn params(&self) -> &Arc<BfvParams> {
        &self.params
    }
    /// The backend.
    pub fn backend(&self) -> &B {
        &self.be
    }
    /// The evaluation keys.
    pub fn keys(&self) -> &EvaluationKeys<B> {
        &self.keys
    }

    // ----- checks -------------------------------------------------------------------------

    fn check(&self, ct: &Ciphertext<B>) -> Result<(), BfvError> {
        self.params.check(&ct.fingerprint())
    }

    fn check_pair(&self, a: &Ciphertext<B>, b: &Ciphertext<B>) -> Result<(), BfvError> {
        self.check(a)?;
        self.check(b)?;
        if a.level() != b.level() {
            return Err(BfvError::LevelMismatch {
                lhs: a.level(),
                rhs: b.level(),
            });
        }
        Ok(())
    }

    fn check_degree(ct: &Ciphertext<B>, expected: usize) -> Result<(), BfvError> {
        if ct.degree() == expected {
            Ok(())
        } else {
            Err(BfvError::Degree {
                expected,
                found: ct.degree(),
            })
        }
    }

    fn wrap(&self, inner: hecnn_rlwe::Ciphertext<B>) -> Ciphertext<B> {
        Ciphertext::new(inner, self.params.fingerprint())
    }

    // ----- additive operations ------------------------------------------------------------

    /// `a + b` (any degrees; the result has the larger one).
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`], [`BfvError::LevelMismatch`].
    pub fn add(&self, a: &Ciphertext<B>, b: &Ciphertext<B>) -> Result<Ciphertext<B>, BfvError> {
        let mut out = a.clone();
        self.add_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a += b`.
    ///
    /// # Errors
    /// See [`Evaluator::add`].
    pub fn add_assign(&self, a: &mut Ciphertext<B>, b: &Ciphertext<B>) -> Result<(), BfvError> {
        self.combine(a, b, false)
    }

    /// `a − b`.
    ///
    /// # Errors
    /// See [`Evaluator::add`].
    pub fn sub(&self, a: &Ciphertext<B>, b: &Ciphertext<B>) -> Result<Ciphertext<B>, BfvError> {
        let mut out = a.clone();
        self.sub_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a −= b`.
    ///
    /// # Errors
    /// See [`Evaluator::add`].
    pub fn sub_assign(&self, a: &mut Ciphertext<B>, b: &Ciphertext<B>) -> Result<(), BfvError> {
        self.combine(a, b, true)
    }

    fn combine(&self, a: &mut Ciphertext<B>, b: &Ciphertext<B>, sub: bool) -> Result<(), BfvError> {
        self.check_pair(a, b)?;
        let ctx = self.params.rlwe().ctx();
        let be = &self.be;
        let bp = b.inner().parts();
        for (x, y) in a.inner_mut().parts_mut().iter_mut().zip(bp) {
            if sub {
                x.sub_assign(be, ctx, y)?;
            } else {
                x.add_assign(be, ctx, y)?;
            }
        }
        if b.degree() > a.degree() {
            let mut parts = a.inner().parts().to_vec();
            for y in &bp[parts.len()..] {
                let mut y = y.clone();
                if sub {
                    y.neg_assign(be, ctx);
                }
                parts.push(y);
            }
            *a.inner_mut() = hecnn_rlwe::Ciphertext::from_parts(parts)?;
        }
        Ok(())
    }

    /// `−a`.
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`].
    pub fn neg(&self, a: &Ciphertext<B>) -> Result<Ciphertext<B>, BfvError> {
        let mut out = a.clone();
        self.neg_assign(&mut out)?;
        Ok(out)
    }

    /// `a = −a`.
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`].
    pub fn neg_assign(&self, a: &mut Ciphertext<B>) -> Result<(), BfvError> {
        self.check(a)?;
        let ctx = self.params.rlwe().ctx();
        for p in a.inner_mut().parts_mut() {
            p.neg_assign(&self.be, ctx);
        }
        Ok(())
    }

    // ----- plaintext operations -----------------------------------------------------------

    /// `a + pt` (adds `⌊Q_l·pt/t⌉` to `c_0`; the invariant noise grows by less than `1/Q_l`).
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`].
    pub fn add_plain(&self, a: &Ciphertext<B>, pt: &Plaintext) -> Result<Ciphertext<B>, BfvError> {
        let mut out = a.clone();
        self.add_plain_assign(&mut out, pt)?;
        Ok(out)
    }

    /// `a += pt`.
    ///
    /// # Errors
    /// See [`Evaluator::add_plain`].
    pub fn add_plain_assign(&self, a: &mut Ciphertext<B>, pt: &Plaintext) -> Result<(), BfvError> {
        self.plain_shift(a, pt, false)
    }

    /// `a − pt`.
    ///
    /// # Errors
    /// See [`Evaluator::add_plain`].
    pub fn sub_plain(&self, a: &Ciphertext<B>, pt: &Plaintext) -> Result<Ciphertext<B>, BfvError> {
        let mut out = a.clone();
        self.sub_plain_assign(&mut out, pt)?;
        Ok(out)
    }

    /// `a −= pt`.
    ///
    /// # Errors
    /// See [`Evaluator::add_plain`].
    pub fn sub_plain_assign(&self, a: &mut Ciphertext<B>, pt: &Plaintext) -> Result<(), BfvError> {
        self.plain_shift(a, pt, true)
    }

    fn plain_shift(
        &self,
        a: &mut Ciphertext<B>,
        pt: &Plaintext,
        sub: bool,
    ) -> Result<(), BfvError> {
        self.check(a)?;
        let m = delta_poly(&self.params, &self.be, pt, a.level())?;
        let ctx = self.params.rlwe().ctx();
        let c0 = a
            .inner_mut()
            .parts_mut()
            .first_mut()
            .ok_or(BfvError::InvalidArgument {
                what: "empty ciphertext",
            })?;
        if sub {
            c0.sub_assign(&self.be, ctx, &m)?;
        } else {
            c0.add_assign(&self.be, ctx, &m)?;
        }
        Ok(())
    }

    /// `a · pt` (the plaintext's coefficients taken centered in `(−t/2, t/2]`; the invariant
    /// noise grows by a factor up to `N·t/2`, typically `√N·t/2`).
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`].
    pub fn mul_plain(&self, a: &Ciphertext<B>, pt: &Plaintext) -> Result<Ciphertext<B>, BfvError> {
        let mut out = a.clone();
        self.mul_plain_assign(&mut out, pt)?;
        Ok(out)
    }

    /// `a *= pt`.
    ///
    /// # Errors
    /// See [`Evaluator::mul_plain`].
    pub fn mul_plain_assign(&self, a: &mut Ciphertext<B>, pt: &Plaintext) -> Result<(), BfvError> {
        self.check(a)?;
        let op = self.prepare_plain(pt, a.level())?;
        self.mul_plain_operand_assign(a, &op)
    }

    /// Prepares `pt` once as the operand of plaintext multiplications at `level` and below
    /// (its centered coefficients over `Q_level`, in the evaluation domain): what
    /// [`Evaluator::mul_plain`] computes on every call, to reuse across calls (weights of a
    /// layer applied to many ciphertexts). An operand prepared at the top level serves every
    /// level, at the memory cost of all the limbs.
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`]; [`BfvError::InvalidArgument`] for a level above the
    /// parameters' maximum; backend failures.
    pub fn prepare_plain(
        &self,
        pt: &Plaintext,
        level: usize,
    ) -> Result<PlaintextOperand<B>, BfvError> {
        let poly = centered_poly(&self.params, &self.be, pt, level)?;
        let norm_sq = pt
            .coeffs()
            .iter()
            .map(|&c| {
                let x = self.params.center(c) as f64;
                x * x
            })
            .sum();
        Ok(PlaintextOperand {
            poly,
            level,
            norm_sq,
            fingerprint: self.params.fingerprint(),
        })
    }

    /// `a · op` for a prepared plaintext (bit for bit what [`Evaluator::mul_plain`] gives
    /// with the plaintext `op` was prepared from).
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`]; [`BfvError::LevelTooLow`] if `a` is above the operand's
    /// level.
    pub fn mul_plain_operand(
        &self,
        a: &Ciphertext<B>,
        op: &PlaintextOperand<B>,
    ) -> Result<Ciphertext<B>, BfvError> {
        self.check(a)?;
        self.params.check(&op.fingerprint)?;
        if a.level() > op.level {
            return Err(BfvError::LevelTooLow {
                needed: a.level(),
                have: op.level,
            });
        }
        let ctx = self.params.rlwe().ctx();
        // One pass per component into a new polynomial (the operand's basis contains the
        // ciphertext's: its first limbs are used).
        let parts = a
            .inner()
            .parts()
            .iter()
            .map(|p| RnsPoly::product(&self.be, ctx, p.basis(), p, &op.poly))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.wrap(hecnn_rlwe::Ciphertext::from_parts(parts)?))
    }

    /// `a *= op` (see [`Evaluator::mul_plain_operand`]).
    ///
    /// # Errors
    /// See [`Evaluator::mul_plain_operand`].
    pub fn mul_plain_operand_assign(
        &self,
        a: &mut Ciphertext<B>,
        op: &PlaintextOperand<B>,
    ) -> Result<(), BfvError> {
        self.check(a)?;
        self.params.check(&op.fingerprint)?;
        if a.level() > op.level {
            return Err(BfvError::LevelTooLow {
                needed: a.level(),
                have: op.level,
            });
        }
        let ctx = self.params.rlwe().ctx();
        for p in a.inner_mut().parts_mut() {
            // The operand's basis contains the ciphertext's: its first limbs are used.
            p.mul_assign(&self.be, ctx, &op.poly)?;
        }
        Ok(())
    }

    /// `a · k` for an integer `k` in `[0, t)` (taken centered: the noise grows by `|k|`).
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`], [`BfvError::ValueOutOfRange`].
    pub fn mul_scalar(&self, a: &Ciphertext<B>, k: u64) -> Result<Ciphertext<B>, BfvError> {
        self.check(a)?;
        let t = self.params.t();
        if k >= t {
            return Err(BfvError::ValueOutOfRange {
                index: 0,
                value: k as i128,
                t,
            });
        }
        let kc = self.params.center(k);
        let ctx = self.params.rlwe().ctx();
        let basis = a.inner().basis();
        let scalars: Vec<u64> = (0..basis.len())
            .map(|i| ctx.limb_modulus(&basis, i).reduce_i64(kc))
            .collect();
        let mut out = a.clone();
        for p in out.inner_mut().parts_mut() {
            p.mul_scalar_assign(&self.be, ctx, &scalars)?;
        }
        Ok(out)
    }

    // ----- multiplication -----------------------------------------------------------------

    /// `a · b` without relinearization: a degree-2 ciphertext, by the HPS algorithm (see
    /// [`crate::rns`]): lift to `Q_l ∪ R`, tensor in the NTT domain, scale by `t/Q_l` and
    /// round, return to `Q_l`.
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`], [`BfvError::LevelMismatch`], [`BfvError::Degree`] for
    /// inputs not of degree 1; backend failures.
    pub fn mul(&self, a: &Ciphertext<B>, b: &Ciphertext<B>) -> Result<Ciphertext<B>, BfvError> {
        self.dot(&[(a, b)])
    }

    /// `Σ a_i · b_i` without relinearization: a degree-2 ciphertext. The tensor products
    /// accumulate in `Q_l ∪ R` and are scaled by `t/Q_l` once per group of as many as the
    /// auxiliary basis holds exactly (its slack over one product's bound; in practice all
    /// of them), so a dot product of `k` pairs costs `4k` lifts and 3 scalings per group
    /// instead of `k` multiplications' `4k` and `3k`.
    ///
    /// # Errors
    /// [`BfvError::InvalidArgument`] for no pairs; as [`Evaluator::mul`] for each pair (all
    /// at one level).
    pub fn dot(
        &self,
        pairs: &[(&Ciphertext<B>, &Ciphertext<B>)],
    ) -> Result<Ciphertext<B>, BfvError> {
        let (first, _) = pairs.first().ok_or(BfvError::InvalidArgument {
            what: "a dot product of no pairs",
        })?;
        let level = first.level();
        for (a, b) in pairs {
            self.check_pair(a, b)?;
            if a.level() != level {
                return Err(BfvError::LevelMismatch {
                    lhs: level,
                    rhs: a.level(),
                });
            }
            Self::check_degree(a, 1)?;
            Self::check_degree(b, 1)?;
        }
        let mut total: Option<Ciphertext<B>> = None;
        for group in pairs.chunks(self.params.dot_capacity(level)) {
            let part = self.dot_group(group, level)?;
            match total.as_mut() {
                None => total = Some(part),
                Some(t) => self.add_assign(t, &part)?,
            }
        }
        total.ok_or(BfvError::InvalidArgument {
            what: "a dot product of no pairs",
        })
    }

    /// One scaling's worth of [`Self::dot`]: checked pairs at `level`.
    fn dot_group(
        &self,
        pairs: &[(&Ciphertext<B>, &Ciphertext<B>)],
        level: usize,
    ) -> Result<Ciphertext<B>, BfvError> {
        let aux = self.params.aux();
        let be = &self.be;
        // d0 = Σ a0·b0, d1 = Σ a0·b1 + a1·b0, d2 = Σ a1·b1
        let mut acc: Option<[RnsPoly<B, Eval>; 3]> = None;
        for (a, b) in pairs {
            let [a0, a1] = self.lift(a)?;
            let [b0, b1] = if std::ptr::eq(*a, *b) {
                [a0.clone(), a1.clone()]
            } else {
                self.lift(b)?
            };
            match acc.as_mut() {
                None => {
                    let mut d0 = a0.clone();
                    d0.mul_assign(be, aux, &b0)?;
                    let mut d1 = a0;
                    d1.mul_assign(be, aux, &b1)?;
                    d1.mul_acc(be, aux, &a1, &b0)?;
                    let mut d2 = a1;
                    d2.mul_assign(be, aux, &b1)?;
                    acc = Some([d0, d1, d2]);
                }
                Some([d0, d1, d2]) => {
                    d0.mul_acc(be, aux, &a0, &b0)?;
                    d1.mul_acc(be, aux, &a0, &b1)?;
                    d1.mul_acc(be, aux, &a1, &b0)?;
                    d2.mul_acc(be, aux, &a1, &b1)?;
                }
            }
        }
        let Some([d0, d1, d2]) = acc else {
            return Err(BfvError::InvalidArgument {
                what: "a dot product of no pairs",
            });
        };
        let parts = vec![
            self.scale_down(d0, level)?,
            self.scale_down(d1, level)?,
            self.scale_down(d2, level)?,
        ];
        Ok(self.wrap(hecnn_rlwe::Ciphertext::from_parts(parts)?))
    }

    /// The two components of a degree-1 ciphertext lifted to `Q_l ∪ R`, in the NTT domain.
    fn lift(&self, ct: &Ciphertext<B>) -> Result<[RnsPoly<B, Eval>; 2], BfvError> {
        let [c0, c1] = ct.inner().parts() else {
            return Err(BfvError::Degree {
                expected: 1,
                found: ct.degree(),
            });
        };
        let lc = self.params.level(ct.level())?;
        let aux = self.params.aux();
        let be = &self.be;
        let n = self.params.n();
        let ext = Basis::qp(ct.level() + 1, aux.p_count());
        let one = |p: &RnsPoly<B, Eval>| -> Result<RnsPoly<B, Eval>, BfvError> {
            let x = p
                .clone()
                .into_coeff(be, self.params.rlwe().ctx())
                .to_host(be, self.params.rlwe().ctx())?;
            let mut out = vec![0u64; ext.len() * n];
            be.install(|| lc.hps.lift(n, &x, &mut out))?;
            Ok(RnsPoly::<B, Coeff>::from_buffer(be.upload(&out)?, ext).into_eval(be, aux))
        };
        Ok([one(c0)?, one(c1)?])
    }

    /// A tensor component over `Q_l ∪ R` scaled by `t/Q_l`, rounded, back in `Q_l`.
    fn scale_down(&self, d: RnsPoly<B, Eval>, level: usize) -> Result<RnsPoly<B, Eval>, BfvError> {
        let lc = self.params.level(level)?;
        let aux = self.params.aux();
        let be = &self.be;
        let n = self.params.n();
        let q = level + 1;
        let x = d.into_coeff(be, aux).to_host(be, aux)?;
        let mut out = vec![0u64; q * n];
        be.install(|| lc.hps.scale(n, &x, &mut out))?;
        crate::ciphertext::upload_eval(&self.params, be, Basis::q(q), &out)
    }

    /// Relinearizes a degree-2 ciphertext to degree 1 with the relinearization key (hybrid
    /// key switching, [`keyswitch::relinearize`]).
    ///
    /// # Errors
    /// [`BfvError::Degree`]; [`BfvError::Rlwe`] (`MissingRelinKey`).
    pub fn relinearize(&self, a: &Ciphertext<B>) -> Result<Ciphertext<B>, BfvError> {
        self.check(a)?;
        Self::check_degree(a, 2)?;
        let rlk = self.keys.relin()?;
        let out = keyswitch::relinearize(&self.be, self.params.rlwe(), a.inner().clone(), rlk)?;
        Ok(self.wrap(out))
    }

    /// `a · b`, relinearized.
    ///
    /// # Errors
    /// See [`Evaluator::mul`] and [`Evaluator::relinearize`].
    pub fn mul_relin(
        &self,
        a: &Ciphertext<B>,
        b: &Ciphertext<B>,
    ) -> Result<Ciphertext<B>, BfvError> {
        let rlk = self.keys.relin()?;
        let d = self.mul(a, b)?;
        let out = keyswitch::relinearize(&self.be, self.params.rlwe(), d.into_inner(), rlk)?;
        Ok(self.wrap(out))
    }

    // ----- rotations ----------------------------------------------------------------------

    /// Rotates both rows of the slot matrix left by `k` (new column `c` holds old column
    /// `c + k mod N/2`; negative `k` rotates right), with the Galois element `5^k mod 2N`.
    ///
    /// # Errors
    /// [`BfvError::Degree`]; [`BfvError::Rlwe`] (`MissingGaloisKey`) without the key for
    /// step `k`.
    pub fn rotate_rows(&self, a: &Ciphertext<B>, k: i64) -> Result<Ciphertext<B>, BfvError> {
        let g = self.params.rlwe().ctx().galois_element(k);
        if g == 1 {
            self.check(a)?;
            return Ok(a.clone());
        }
        self.apply_galois(a, g)
    }

    /// Swaps the two rows of the slot matrix (Galois element `2N − 1`, the conjugation key
    /// of [`hecnn_rlwe::KeyRequirements`]).
    ///
    /// # Errors
    /// [`BfvError::Degree`]; [`BfvError::Rlwe`] (`MissingGaloisKey`).
    pub fn swap_rows(&self, a: &Ciphertext<B>) -> Result<Ciphertext<B>, BfvError> {
        self.apply_galois(a, self.params.rlwe().ctx().galois_conjugate())
    }

    /// Applies `X ↦ X^g` (odd `g < 2N`) and switches back to the secret key.
    ///
    /// # Errors
    /// [`BfvError::Degree`]; [`BfvError::Rlwe`] (`MissingGaloisKey`).
    pub fn apply_galois(&self, a: &Ciphertext<B>, g: usize) -> Result<Ciphertext<B>, BfvError> {
        self.check(a)?;
        Self::check_degree(a, 1)?;
        let gk = self.keys.galois(g)?;
        let out = keyswitch::apply_galois(&self.be, self.params.rlwe(), a.inner(), gk)?;
        Ok(self.wrap(out))
    }

    // ----- modulus switching --------------------------------------------------------------

    /// Drops the last ciphertext prime `q_l`, scaling: `c ← ⌊c/q_l⌉` over `Q_{l−1}`. The
    /// invariant noise is kept (plus a rounding term of about `t·√N/Q_{l−1}`), so the budget
    /// stays nearly the same while the ciphertext shrinks and later operations get cheaper.
    ///
    /// # Errors
    /// [`BfvError::LevelTooLow`] at level 0; [`BfvError::ParamsMismatch`].
    pub fn mod_switch_to_next_assign(&self, a: &mut Ciphertext<B>) -> Result<(), BfvError> {
        self.check(a)?;
        if a.level() == 0 {
            return Err(BfvError::LevelTooLow { needed: 1, have: 0 });
        }
        let ctx = self.params.rlwe().ctx();
        for p in a.inner_mut().parts_mut() {
            p.rescale_assign(&self.be, ctx)?;
        }
        Ok(())
    }

    /// Copy of `a` switched down one level (see [`Evaluator::mod_switch_to_next_assign`]).
    ///
    /// # Errors
    /// See [`Evaluator::mod_switch_to_next_assign`].
    pub fn mod_switch_to_next(&self, a: &Ciphertext<B>) -> Result<Ciphertext<B>, BfvError> {
        let mut out = a.clone();
        self.mod_switch_to_next_assign(&mut out)?;
        Ok(out)
    }

    /// Copy of `a` switched down to `level`.
    ///
    /// # Errors
    /// [`BfvError::LevelTooLow`] if `level` is above `a`'s level.
    pub fn mod_switch_to_level(
        &self,
        a: &Ciphertext<B>,
        level: usize,
    ) -> Result<Ciphertext<B>, BfvError> {
        self.check(a)?;
        if level > a.level() {
            return Err(BfvError::LevelTooLow {
                needed: level,
                have: a.level(),
            });
        }
        let mut out = a.clone();
        while out.level() > level {
            self.mod_switch_to_next_assign(&mut out)?;
        }
        Ok(out)
    }
}
