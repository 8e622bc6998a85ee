//! BFV ciphertexts, encryption, exact decryption and the invariant noise budget.
//!
//! A ciphertext at level `l` encrypts `m` when `c_0 + c_1·s (+ c_2·s²) = Δ_l·m + e (mod Q_l)`
//! with `Δ_l = ⌊Q_l/t⌋`; in the invariant form of Bajard et al. and SEAL,
//! `(t/Q_l)·(c_0 + c_1·s) = m + v + t·k` for an integer polynomial `k` and the *invariant
//! noise* `v`. Decryption is correct while `‖v‖_∞ < 1/2`.
//!
//! **Noise budget** ([`noise_budget_bits`], SEAL's definition): with
//! `z = [t·(c_0 + c_1·s)]_{Q_l}` (centered; `z = Q_l·v` coefficient-wise),
//! `budget = log2(Q_l) − log2(‖z‖_∞) − 1 = −log2(2·‖v‖_∞)`, floored at zero. SEAL reports
//! the same quantity rounded down to whole bits (`bits(Q) − bits(‖z‖) − 1`); we keep the
//! fraction. Decryption is correct whenever the budget is positive.

use hecnn_ring::{Backend, Basis, Coeff, Eval, Prng, RnsPoly};
use hecnn_rlwe::{PublicKey, SecretKey};

use crate::{BfvError, BfvParams, Plaintext};

/// A BFV ciphertext: an RLWE ciphertext (evaluation domain, over `Q_level`) tied to the BFV
/// parameters it was made with.
pub struct Ciphertext<B: Backend> {
    inner: hecnn_rlwe::Ciphertext<B>,
    fingerprint: [u8; 32],
}

impl<B: Backend> Clone for Ciphertext<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            fingerprint: self.fingerprint,
        }
    }
}

impl<B: Backend> std::fmt::Debug for Ciphertext<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ciphertext")
            .field("level", &self.level())
            .field("degree", &self.degree())
            .finish()
    }
}

impl<B: Backend> Ciphertext<B> {
    pub(crate) fn new(inner: hecnn_rlwe::Ciphertext<B>, fingerprint: [u8; 32]) -> Self {
        Self { inner, fingerprint }
    }
    /// The RLWE ciphertext.
    pub fn inner(&self) -> &hecnn_rlwe::Ciphertext<B> {
        &self.inner
    }
    pub(crate) fn inner_mut(&mut self) -> &mut hecnn_rlwe::Ciphertext<B> {
        &mut self.inner
    }
    pub(crate) fn into_inner(self) -> hecnn_rlwe::Ciphertext<B> {
        self.inner
    }
    /// Level: live ciphertext primes − 1 (each modulus switch lowers it by one).
    pub fn level(&self) -> usize {
        self.inner.level()
    }
    /// Degree (1 after relinearization, 2 after a multiplication without it).
    pub fn degree(&self) -> usize {
        self.inner.degree()
    }
    /// Fingerprint of the BFV parameters this ciphertext belongs to.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

/// `⌊Q_l·m/t⌉ = Δ_l·m + ⌊[Q_l]_t·m/t⌉` over `Q_l`, evaluation domain. The correction term
/// keeps the encoding error below `1/2` (instead of `[Q_l]_t·m/t < t` for `Δ_l·m` alone),
/// which saves about `log2 t` bits of fresh noise budget (as SEAL does).
pub(crate) fn delta_poly<B: Backend>(
    params: &BfvParams,
    be: &B,
    pt: &Plaintext,
    level: usize,
) -> Result<RnsPoly<B, Eval>, BfvError> {
    params.check(&pt.fingerprint())?;
    let ctx = params.rlwe().ctx();
    let lc = params.level(level)?;
    let t = params.t() as u128;
    let r = lc.q_mod_t as u128;
    let correction: Vec<u64> = pt
        .coeffs()
        .iter()
        .map(|&m| ((r * m as u128 + t / 2) / t) as u64)
        .collect();
    let n = params.n();
    let mut host = vec![0u64; lc.delta.len() * n];
    for ((limb, &d), i) in host.chunks_exact_mut(n).zip(&lc.delta).zip(0..) {
        let m = ctx.modulus(i);
        let ds = m.shoup(d);
        for ((o, &c), &e) in limb.iter_mut().zip(pt.coeffs()).zip(&correction) {
            *o = m.add(m.mul_shoup(c, d, ds), m.reduce(e));
        }
    }
    upload_eval(params, be, Basis::q(level + 1), &host)
}

/// The plaintext's coefficients centered into `(−t/2, t/2]`, over `Q_l`, evaluation domain:
/// the operand of a plaintext multiplication.
pub(crate) fn centered_poly<B: Backend>(
    params: &BfvParams,
    be: &B,
    pt: &Plaintext,
    level: usize,
) -> Result<RnsPoly<B, Eval>, BfvError> {
    params.check(&pt.fingerprint())?;
    params.level(level)?;
    let ctx = params.rlwe().ctx();
    let centered: Vec<i64> = pt.coeffs().iter().map(|&c| params.center(c)).collect();
    let host = hecnn_ring::sampler::small_to_rns(ctx, Basis::q(level + 1), &centered);
    upload_eval(params, be, Basis::q(level + 1), &host)
}

/// Uploads reduced coefficient-domain limbs (produced here) and transforms them.
pub(crate) fn upload_eval<B: Backend>(
    params: &BfvParams,
    be: &B,
    basis: Basis,
    host: &[u64],
) -> Result<RnsPoly<B, Eval>, BfvError> {
    let ctx = params.rlwe().ctx();
    Ok(RnsPoly::<B, Coeff>::from_buffer(be.upload(host)?, basis).into_eval(be, ctx))
}

/// Encrypts `pt` with the secret key at the top level (seed-compressed: `c_1` is expanded
/// from a 32-byte seed).
///
/// # Errors
/// [`BfvError::ParamsMismatch`] for a key or plaintext of other parameters; backend failures.
pub fn encrypt_sk<B: Backend>(
    params: &BfvParams,
    sk: &SecretKey,
    be: &B,
    pt: &Plaintext,
    rng: &mut Prng,
) -> Result<Ciphertext<B>, BfvError> {
    params.check_rlwe(sk.params())?;
    let m = delta_poly(params, be, pt, params.max_level())?;
    Ok(Ciphertext::new(
        sk.encrypt(be, &m, rng)?,
        params.fingerprint(),
    ))
}

/// Encrypts `pt` with the public key at the top level.
///
/// # Errors
/// [`BfvError::ParamsMismatch`] for a key or plaintext of other parameters; backend failures.
pub fn encrypt_pk<B: Backend>(
    params: &BfvParams,
    pk: &PublicKey<B>,
    be: &B,
    pt: &Plaintext,
    rng: &mut Prng,
) -> Result<Ciphertext<B>, BfvError> {
    params.check_rlwe(pk.params())?;
    let m = delta_poly(params, be, pt, params.max_level())?;
    Ok(Ciphertext::new(
        pk.encrypt(be, &m, rng)?,
        params.fingerprint(),
    ))
}

/// Decrypts with the secret key held on the backend in the evaluation domain (converted
/// once, zeroized on drop): what a key owner that decrypts many results uses. The free
/// functions [`decrypt`] and [`noise_budget_bits`] convert the key on every call.
pub struct Decryptor<'a, B: Backend> {
    params: &'a BfvParams,
    inner: hecnn_rlwe::Decryptor<'a, B>,
}

impl<'a, B: Backend> Decryptor<'a, B> {
    /// A decryptor for `sk` under `params`.
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`] for a key of other parameters; backend failures.
    pub fn new(params: &'a BfvParams, sk: &'a SecretKey, be: &'a B) -> Result<Self, BfvError> {
        params.check_rlwe(sk.params())?;
        Ok(Self {
            params,
            inner: sk.decryptor(be)?,
        })
    }

    /// `c_0 + c_1·s (+ c_2·s²)` in the coefficient domain (host, limb-major) and the level's
    /// constants.
    fn phase(
        &self,
        ct: &Ciphertext<B>,
    ) -> Result<(Vec<u64>, &crate::params::LevelConsts), BfvError> {
        self.params.check(&ct.fingerprint)?;
        let (be, ctx) = (self.inner.backend(), self.params.rlwe().ctx());
        let level = self.params.level(ct.level())?;
        let x = self
            .inner
            .decrypt(&ct.inner)?
            .into_coeff(be, ctx)
            .to_host(be, ctx)?;
        Ok((x, level))
    }

    /// Decrypts exactly: `⌊(t/Q_l)·(c_0 + c_1·s + …)⌉ mod t`.
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`] for a ciphertext of other parameters; backend failures.
    pub fn decrypt(&self, ct: &Ciphertext<B>) -> Result<Plaintext, BfvError> {
        let (x, level) = self.phase(ct)?;
        let n = self.params.n();
        let messages = self
            .inner
            .backend()
            .install(|| level.exact.messages(n, &x))?;
        Ok(Plaintext::new(self.params, messages))
    }

    /// The invariant noise budget in bits (see [`noise_budget_bits`]).
    ///
    /// # Errors
    /// See [`Self::decrypt`].
    pub fn noise_budget_bits(&self, ct: &Ciphertext<B>) -> Result<f64, BfvError> {
        let (x, level) = self.phase(ct)?;
        let n = self.params.n();
        let s = self.inner.backend().install(|| level.exact.scale(n, &x))?;
        let max = s.iter().map(|c| c.noise_abs).fold(0.0f64, f64::max);
        let log_q = self.params.log_q_at(ct.level());
        Ok((log_q - max.max(1.0).log2() - 1.0).max(0.0))
    }
}

/// Decrypts exactly: `⌊(t/Q_l)·(c_0 + c_1·s + …)⌉ mod t` by Garner's mixed-radix conversion
/// (integer arithmetic only). Converts the key for this one call: use a [`Decryptor`] for
/// many.
///
/// # Errors
/// [`BfvError::ParamsMismatch`] for a key or ciphertext of other parameters; backend failures.
pub fn decrypt<B: Backend>(
    params: &BfvParams,
    sk: &SecretKey,
    be: &B,
    ct: &Ciphertext<B>,
) -> Result<Plaintext, BfvError> {
    Decryptor::new(params, sk, be)?.decrypt(ct)
}

/// The invariant noise budget in bits (SEAL's definition, see the module documentation):
/// `log2(Q_l) − log2(‖[t·(c_0 + c_1·s)]_{Q_l}‖_∞) − 1`, at least 0. Decryption is correct
/// while it is positive; a multiplication typically consumes `log2(t·N)` plus a few bits.
///
/// # Errors
/// See [`decrypt`].
pub fn noise_budget_bits<B: Backend>(
    params: &BfvParams,
    sk: &SecretKey,
    be: &B,
    ct: &Ciphertext<B>,
) -> Result<f64, BfvError> {
    Decryptor::new(params, sk, be)?.noise_budget_bits(ct)
}
