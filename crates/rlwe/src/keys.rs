//! Secret, public, relinearization and Galois keys.
//!
//! The [`SecretKey`] stays with the party that generated it: it is not `Clone`, it is zeroized
//! on drop, and no server-side API accepts it. Everything else is public and carries the
//! 32-byte seeds its uniform parts were expanded from, so keys travel at half size.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hecnn_ring::{Backend, Basis, Coeff, Eval, Prng, RnsPoly, sampler};
use zeroize::Zeroizing;

use crate::{Params, PolyPair, RlweError, SecretDistribution};

/// The secret key `s` (ternary), kept on the host in coefficient and evaluation form.
pub struct SecretKey {
    params: Arc<Params>,
    /// Random identifier of this key pair, copied into every public and evaluation key made
    /// from it, so mismatched keys and ciphertexts can be detected (it reveals nothing).
    id: [u8; 32],
    coeffs: Zeroizing<Vec<i8>>,
    /// NTT of `s` over the full basis `Q ∪ P`, limb-major.
    eval_qp: Zeroizing<Vec<u64>>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Uploads the evaluation form of a small polynomial over `basis`.
pub(crate) fn small_eval<B: Backend>(
    be: &B,
    params: &Params,
    basis: Basis,
    coeffs: &[i64],
) -> Result<RnsPoly<B, Eval>, RlweError> {
    let ctx = params.ctx();
    let host = Zeroizing::new(sampler::small_to_rns(ctx, basis, coeffs));
    Ok(RnsPoly::<B, Coeff>::from_host(be, ctx, basis, &host)?.into_eval(be, ctx))
}

/// A fresh Gaussian error polynomial over `basis`, evaluation domain.
pub(crate) fn gaussian_eval<B: Backend>(
    be: &B,
    params: &Params,
    basis: Basis,
    rng: &mut Prng,
) -> Result<RnsPoly<B, Eval>, RlweError> {
    let e = Zeroizing::new(sampler::sample_gaussian(rng, params.n()));
    small_eval(be, params, basis, &e)
}

/// The uniform polynomial expanded from `seed` over `basis`.
pub(crate) fn uniform_eval<B: Backend>(
    be: &B,
    params: &Params,
    basis: Basis,
    seed: &[u8; 32],
) -> Result<RnsPoly<B, Eval>, RlweError> {
    let ctx = params.ctx();
    ctx.check_basis(basis)?;
    // Reduced by construction (rejection sampling below each prime): written straight
    // into the backend's buffer, no validation pass (compact keys expand on every use).
    let buf = be.fill_buffer(basis.len() * ctx.n(), &mut |out| {
        sampler::expand_uniform_into(seed, ctx, basis, out)
    })?;
    Ok(RnsPoly::from_buffer(buf, basis))
}

impl SecretKey {
    /// Samples a secret key with the parameters' secret distribution.
    ///
    /// # Errors
    /// Sampling errors (e.g. an impossible Hamming weight).
    pub fn generate(params: &Arc<Params>, rng: &mut Prng) -> Result<Self, RlweError> {
        let n = params.n();
        let coeffs = Zeroizing::new(match params.secret() {
            SecretDistribution::Ternary => sampler::sample_ternary(rng, n),
            SecretDistribution::SparseTernary { h } => sampler::sample_sparse_ternary(rng, n, h)?,
        });
        let id = rng.seed();
        Self::from_coeffs(params, coeffs, id)
    }

    pub(crate) fn from_coeffs(
        params: &Arc<Params>,
        coeffs: Zeroizing<Vec<i8>>,
        id: [u8; 32],
    ) -> Result<Self, RlweError> {
        let ctx = params.ctx();
        let wide: Zeroizing<Vec<i64>> = Zeroizing::new(coeffs.iter().map(|&c| c as i64).collect());
        let mut eval = Zeroizing::new(sampler::small_to_rns(ctx, ctx.full_basis(), &wide));
        for (g, limb) in eval.chunks_exact_mut(params.n()).enumerate() {
            ctx.ntt(g).forward(limb);
        }
        Ok(Self {
            params: Arc::clone(params),
            id,
            coeffs,
            eval_qp: eval,
        })
    }

    /// A copy of the ternary coefficients (zeroized on drop).
    pub(crate) fn coeffs_copy(&self) -> Zeroizing<Vec<i8>> {
        self.coeffs.clone()
    }

    /// The parameters of this key.
    pub fn params(&self) -> &Arc<Params> {
        &self.params
    }

    /// The key-pair identifier shared by all keys made from this secret.
    pub fn key_id(&self) -> [u8; 32] {
        self.id
    }

    /// `s` over `basis` in the evaluation domain, on the backend.
    pub(crate) fn eval_poly<B: Backend>(
        &self,
        be: &B,
        basis: Basis,
    ) -> Result<RnsPoly<B, Eval>, RlweError> {
        let ctx = self.params.ctx();
        let n = self.params.n();
        ctx.check_basis(basis)?;
        let mut host = Zeroizing::new(Vec::with_capacity(basis.len() * n));
        for pos in 0..basis.len() {
            let g = basis.global(ctx, pos);
            host.extend_from_slice(&self.eval_qp[g * n..(g + 1) * n]);
        }
        // Produced here from reduced residues: no need to re-validate.
        Ok(RnsPoly::from_buffer(be.upload(&host)?, basis))
    }

    /// The public key `(b, a) = (-a·s + e, a)` over `Q`.
    ///
    /// # Errors
    /// Backend failures.
    pub fn public_key<B: Backend>(
        &self,
        be: &B,
        rng: &mut Prng,
    ) -> Result<PublicKey<B>, RlweError> {
        let basis = Basis::q(self.params.q().len());
        let seed = rng.seed();
        let (b, a) = self.rlwe_sample(be, basis, &seed, rng)?;
        Ok(PublicKey {
            params: Arc::clone(&self.params),
            id: self.id,
            b,
            a,
            seed,
        })
    }

    /// `(-a·s + e, a)` over `basis` with `a` expanded from `seed`.
    pub(crate) fn rlwe_sample<B: Backend>(
        &self,
        be: &B,
        basis: Basis,
        seed: &[u8; 32],
        rng: &mut Prng,
    ) -> Result<PolyPair<B>, RlweError> {
        let s = self.eval_poly(be, basis)?;
        self.rlwe_sample_under(be, &s, seed, rng)
    }

    /// `(-a·t + e, a)` for the secret `t` (evaluation domain, over its basis).
    fn rlwe_sample_under<B: Backend>(
        &self,
        be: &B,
        s: &RnsPoly<B, Eval>,
        seed: &[u8; 32],
        rng: &mut Prng,
    ) -> Result<PolyPair<B>, RlweError> {
        let ctx = self.params.ctx();
        let basis = s.basis();
        let a = uniform_eval(be, &self.params, basis, seed)?;
        let mut b = gaussian_eval(be, &self.params, basis, rng)?;
        let mut as_ = a.clone();
        as_.mul_assign(be, ctx, s)?;
        b.sub_assign(be, ctx, &as_)?;
        Ok((b, a))
    }

    /// A key switching from `s'` to `t`, both in evaluation form over the key's basis
    /// `Q_k ∪ P` (all of `Q` or a prefix: a key for ciphertexts up to level `k − 1`): digits
    /// `(-a_j·t + e_j + P·g_j·s', a_j)` for every digit that meets `Q_k`.
    pub(crate) fn switching_key<B: Backend>(
        &self,
        be: &B,
        s_prime: &RnsPoly<B, Eval>,
        target: &RnsPoly<B, Eval>,
        rng: &mut Prng,
    ) -> Result<SwitchingKey<B>, RlweError> {
        let params = &self.params;
        let ctx = params.ctx();
        if params.p().is_empty() {
            return Err(RlweError::NoSpecialPrimes);
        }
        let basis = target.basis();
        if s_prime.basis() != basis || basis.p != ctx.p_count() {
            return Err(hecnn_ring::RingError::BasisMismatch {
                lhs: basis,
                rhs: s_prime.basis(),
            }
            .into());
        }
        let p_mod_q: Vec<u64> = (0..basis.q)
            .map(|i| {
                let m = ctx.modulus(i);
                params.p().iter().fold(1, |acc, &p| m.mul(acc, m.reduce(p)))
            })
            .collect();
        let digits = params.digits().iter().filter(|d| d.start < basis.q);
        let mut parts = Vec::with_capacity(params.dnum());
        let mut seeds = Vec::with_capacity(params.dnum());
        for digit in digits {
            let seed = rng.seed();
            let (mut b, a) = self.rlwe_sample_under(be, target, &seed, rng)?;
            // + P·g_j·s' where [g_j]_{q_i} = 1 for q_i in the digit, 0 elsewhere (and mod P).
            let scalars: Vec<u64> = (0..basis.len())
                .map(|pos| {
                    if pos < basis.q && digit.contains(&pos) {
                        p_mod_q[pos]
                    } else {
                        0
                    }
                })
                .collect();
            let mut t = s_prime.clone();
            t.mul_scalar_assign(be, ctx, &scalars)?;
            b.add_assign(be, ctx, &t)?;
            parts.push((b, Some(a)));
            seeds.push(seed);
        }
        Ok(SwitchingKey {
            parts,
            seeds,
            basis,
        })
    }

    /// The relinearization key (switches `s²` to `s`).
    ///
    /// # Errors
    /// [`RlweError::NoSpecialPrimes`] without P primes; backend failures.
    pub fn relin_key<B: Backend>(&self, be: &B, rng: &mut Prng) -> Result<RelinKey<B>, RlweError> {
        let ctx = self.params.ctx();
        let s = self.eval_poly(be, ctx.full_basis())?;
        let mut s2 = s.clone();
        s2.mul_assign(be, ctx, &s)?;
        Ok(RelinKey(self.switching_key(be, &s2, &s, rng)?))
    }

    /// The Galois key for `σ: X ↦ X^galois`, for ciphertexts at every level.
    ///
    /// It is stored *pre-permuted*: a switching key from `s` to `σ⁻¹(s)`. Switching `c_1`
    /// with it gives `(v_0, v_1)` with `v_0 + v_1·σ⁻¹(s) ≈ c_1·s`, and applying `σ` afterwards
    /// yields `σ(v_0) + σ(v_1)·s ≈ σ(c_1)·σ(s)`. The automorphism thus touches two output
    /// polynomials instead of every digit of the decomposition inside the inner product.
    ///
    /// # Errors
    /// Invalid Galois element, no P primes, backend failures.
    pub fn galois_key<B: Backend>(
        &self,
        be: &B,
        galois: usize,
        rng: &mut Prng,
    ) -> Result<GaloisKey<B>, RlweError> {
        self.galois_key_at(be, galois, self.params.max_level(), rng)
    }

    /// The Galois key for `σ: X ↦ X^galois` restricted to ciphertexts at `level` or below:
    /// it holds the limbs of `Q_level ∪ P` and the digits that meet `Q_level` only, so a key
    /// used low in the modulus chain is several times smaller than a full one (and its
    /// modulus, smaller, is more secure).
    ///
    /// # Errors
    /// Invalid Galois element or level, no P primes, backend failures.
    pub fn galois_key_at<B: Backend>(
        &self,
        be: &B,
        galois: usize,
        level: usize,
        rng: &mut Prng,
    ) -> Result<GaloisKey<B>, RlweError> {
        let ctx = self.params.ctx();
        ctx.check_galois(galois)?;
        if level > self.params.max_level() {
            return Err(RlweError::KeyLevel {
                level,
                key_level: self.params.max_level(),
            });
        }
        let basis = Basis::qp(level + 1, ctx.p_count());
        let s = self.eval_poly(be, basis)?;
        // σ⁻¹ = X ↦ X^(g⁻¹ mod 2n); the group (Z/2n)^* has order n, so g⁻¹ = g^(n-1).
        let two_n = 2 * ctx.n() as u64;
        let mut inv = 1u64;
        for _ in 0..ctx.n() - 1 {
            inv = inv * galois as u64 % two_n;
        }
        let s_inv = s.automorphism(be, ctx, inv as usize)?;
        Ok(GaloisKey {
            galois,
            key: self.switching_key(be, &s, &s_inv, rng)?,
        })
    }

    /// Generates exactly the evaluation keys listed in `req`.
    ///
    /// # Errors
    /// See [`SecretKey::relin_key`] and [`SecretKey::galois_key`].
    pub fn evaluation_keys<B: Backend>(
        &self,
        be: &B,
        req: &KeyRequirements,
        rng: &mut Prng,
    ) -> Result<EvaluationKeys<B>, RlweError> {
        self.evaluation_keys_with(be, req, KeyStorage::Expanded, rng)
    }

    /// As [`SecretKey::evaluation_keys`], each key held as `storage` says from the moment it
    /// is made (compact keys never exist expanded all at once).
    ///
    /// # Errors
    /// See [`SecretKey::evaluation_keys`].
    pub fn evaluation_keys_with<B: Backend>(
        &self,
        be: &B,
        req: &KeyRequirements,
        storage: KeyStorage,
        rng: &mut Prng,
    ) -> Result<EvaluationKeys<B>, RlweError> {
        let store = |mut key: SwitchingKey<B>| {
            if storage == KeyStorage::Compact {
                key.compact();
            }
            key
        };
        let relin = if req.relin {
            Some(RelinKey(store(self.relin_key(be, rng)?.0)))
        } else {
            None
        };
        let mut galois = BTreeMap::new();
        for (g, level) in req.galois_levels(&self.params) {
            let key = self.galois_key_at(be, g, level, rng)?;
            galois.insert(
                g,
                GaloisKey {
                    galois: key.galois,
                    key: store(key.key),
                },
            );
        }
        Ok(EvaluationKeys {
            params: Arc::clone(&self.params),
            id: self.id,
            relin,
            galois,
        })
    }

    /// Serializes the secret key (ternary coefficients, 2 bits of information each, stored as
    /// bytes). Store the result only where the key owner controls it.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        // Sized once: growing it would leave the coefficients in the freed buffer.
        let mut body = Zeroizing::new(Vec::with_capacity(self.coeffs.len() + self.id.len()));
        body.extend(self.coeffs.iter().map(|&c| c as u8));
        body.extend_from_slice(&self.id);
        crate::serial::encode_secret(crate::serial::Kind::SecretKey, &self.params, &body)
    }

    /// Loads a secret key written by [`SecretKey::to_secret_bytes`].
    ///
    /// # Errors
    /// Malformed data, wrong parameters, coefficients outside `{-1, 0, 1}`.
    pub fn from_secret_bytes(params: &Arc<Params>, bytes: &[u8]) -> Result<Self, RlweError> {
        let body: Vec<u8> = crate::serial::decode(
            crate::serial::Kind::SecretKey,
            params,
            bytes,
            params.n() + 128,
        )?;
        let body = Zeroizing::new(body);
        if body.len() != params.n() + 32 {
            return Err(RlweError::Malformed {
                what: "secret key length",
            });
        }
        let (secret, id_bytes) = body.split_at(params.n());
        let mut id = [0u8; 32];
        id.copy_from_slice(id_bytes);
        let coeffs: Zeroizing<Vec<i8>> = Zeroizing::new(secret.iter().map(|&b| b as i8).collect());
        if coeffs.iter().any(|&c| !(-1..=1).contains(&c)) {
            return Err(RlweError::Malformed {
                what: "secret key coefficient",
            });
        }
        Self::from_coeffs(params, coeffs, id)
    }
}

/// The public encryption key `(b, a)` over `Q`.
pub struct PublicKey<B: Backend> {
    pub(crate) params: Arc<Params>,
    pub(crate) id: [u8; 32],
    pub(crate) b: RnsPoly<B, Eval>,
    pub(crate) a: RnsPoly<B, Eval>,
    pub(crate) seed: [u8; 32],
}

/// How a server holds its switching keys in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyStorage {
    /// Both halves of every digit: fastest.
    #[default]
    Expanded,
    /// Only `b_j` and the seed of `a_j`, which is expanded again (in a few milliseconds per
    /// key at N = 2^16) each time the key is used: half the memory.
    Compact,
}

/// One digit of a switching key: `b_j`, and `a_j` unless the key is compact.
type Digit<B> = (RnsPoly<B, Eval>, Option<RnsPoly<B, Eval>>);

/// The `(b_j, a_j)` buffers of a key's digits, as the backend's key switch reads them.
type DigitBuffers<'a, B> = Vec<(&'a <B as Backend>::Buffer, &'a <B as Backend>::Buffer)>;

/// Digits `(b_j, a_j)` of a hybrid key-switching key over `Q_k ∪ P` (all of `Q`, or the
/// prefix the key is restricted to), with the seeds of `a_j`; `a_j` is absent when the key
/// is held compact ([`KeyStorage::Compact`]).
pub struct SwitchingKey<B: Backend> {
    pub(crate) parts: Vec<Digit<B>>,
    pub(crate) seeds: Vec<[u8; 32]>,
    pub(crate) basis: Basis,
}

impl<B: Backend> SwitchingKey<B> {
    /// Number of digits.
    pub fn dnum(&self) -> usize {
        self.parts.len()
    }
    /// Highest ciphertext level the key switches.
    pub fn max_level(&self) -> usize {
        self.basis.q - 1
    }
    /// Bytes the key holds in memory.
    pub fn memory_bytes(&self, n: usize) -> usize {
        let halves: usize = self
            .parts
            .iter()
            .map(|(_, a)| 1 + usize::from(a.is_some()))
            .sum();
        halves * self.basis.len() * n * 8
    }
    /// Drops the expanded `a_j` (kept as seeds).
    pub(crate) fn compact(&mut self) {
        for (_, a) in &mut self.parts {
            *a = None;
        }
    }
    /// The buffers of the first `digits` digits, with `a_j` expanded from its seed where the
    /// key is compact (`fresh` holds those expansions while the caller uses them).
    pub(crate) fn digit_buffers<'a>(
        &'a self,
        params: &Params,
        be: &B,
        digits: usize,
        fresh: &'a mut Vec<RnsPoly<B, Eval>>,
    ) -> Result<DigitBuffers<'a, B>, RlweError> {
        let parts = self.parts.get(..digits).ok_or(RlweError::Malformed {
            what: "a switching key with fewer digits than the ciphertext's decomposition",
        })?;
        fresh.clear();
        for ((_, a), seed) in parts.iter().zip(&self.seeds) {
            if a.is_none() {
                fresh.push(uniform_eval(be, params, self.basis, seed)?);
            }
        }
        let mut fresh = fresh.iter();
        parts
            .iter()
            .map(|(b, a)| {
                let a = match a {
                    Some(a) => a,
                    None => fresh.next().ok_or(RlweError::Malformed {
                        what: "switching-key digit",
                    })?,
                };
                Ok((b.buffer(), a.buffer()))
            })
            .collect()
    }
}

/// Relinearization key.
pub struct RelinKey<B: Backend>(pub(crate) SwitchingKey<B>);

impl<B: Backend> RelinKey<B> {
    /// Highest ciphertext level the key relinearizes (a server needs every level).
    pub fn max_level(&self) -> usize {
        self.0.max_level()
    }
}

/// Galois (rotation / conjugation) key for one Galois element.
pub struct GaloisKey<B: Backend> {
    pub(crate) galois: usize,
    pub(crate) key: SwitchingKey<B>,
}

impl<B: Backend> GaloisKey<B> {
    /// The Galois element `g` of `X ↦ X^g`.
    pub fn galois(&self) -> usize {
        self.galois
    }
    /// Highest ciphertext level the key rotates.
    pub fn max_level(&self) -> usize {
        self.key.max_level()
    }
}

/// Which evaluation keys a computation needs (computed from a circuit or plan).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRequirements {
    /// Relinearization key.
    pub relin: bool,
    /// Slot rotations by these steps.
    pub rotations: BTreeSet<i64>,
    /// Complex conjugation.
    pub conjugate: bool,
    /// The highest ciphertext level some rotations are applied at: their keys are restricted
    /// to it ([`SecretKey::galois_key_at`]). Rotations not listed get keys for every level.
    pub rotation_levels: BTreeMap<i64, usize>,
}

impl KeyRequirements {
    /// Only a relinearization key.
    pub fn relin() -> Self {
        Self {
            relin: true,
            ..Self::default()
        }
    }

    /// Adds rotation steps, for ciphertexts at every level.
    pub fn with_rotations(mut self, steps: impl IntoIterator<Item = i64>) -> Self {
        for step in steps {
            self.rotations.insert(step);
            self.rotation_levels.remove(&step);
        }
        self
    }

    /// Adds rotation steps applied to ciphertexts at `level` or below. A step already
    /// required keeps the higher of its two levels.
    pub fn with_rotations_at(mut self, steps: impl IntoIterator<Item = i64>, level: usize) -> Self {
        for step in steps {
            if self.rotations.insert(step) {
                self.rotation_levels.insert(step, level);
            } else if let Some(l) = self.rotation_levels.get_mut(&step) {
                *l = (*l).max(level);
            }
        }
        self
    }

    /// Adds the conjugation key.
    pub fn with_conjugate(mut self) -> Self {
        self.conjugate = true;
        self
    }

    /// Everything `self` or `other` requires, each rotation at the higher of its levels.
    pub fn union(mut self, other: &Self) -> Self {
        self.relin |= other.relin;
        self.conjugate |= other.conjugate;
        for &step in &other.rotations {
            match other.rotation_levels.get(&step) {
                Some(&level) => self = self.with_rotations_at([step], level),
                None => self = self.with_rotations([step]),
            }
        }
        self
    }

    /// The distinct Galois elements these requirements translate to.
    pub fn galois_elements(&self, params: &Params) -> BTreeSet<usize> {
        self.galois_levels(params).into_keys().collect()
    }

    /// The distinct Galois elements with the highest level each is used at (steps that
    /// coincide as automorphisms share one key, at the higher level).
    pub fn galois_levels(&self, params: &Params) -> BTreeMap<usize, usize> {
        let ctx = params.ctx();
        let top = params.max_level();
        let mut out = BTreeMap::new();
        let mut add = |g: usize, level: usize| {
            let l = out.entry(g).or_insert(0);
            *l = (*l).max(level.min(top));
        };
        for &k in &self.rotations {
            let g = ctx.galois_element(k);
            if g != 1 {
                add(g, self.rotation_levels.get(&k).copied().unwrap_or(top));
            }
        }
        if self.conjugate {
            add(ctx.galois_conjugate(), top);
        }
        out
    }

    /// Number of switching keys these requirements produce.
    pub fn key_count(&self, params: &Params) -> usize {
        self.galois_levels(params).len() + usize::from(self.relin)
    }

    /// Size in bytes of the seed-compressed keys these requirements produce.
    pub fn key_bytes(&self, params: &Params) -> usize {
        let galois: usize = self
            .galois_levels(params)
            .values()
            .map(|&l| params.switching_key_bytes_at(l))
            .sum();
        galois + usize::from(self.relin) * params.switching_key_bytes()
    }

    /// Size in bytes of these keys expanded in memory (the uniform halves regenerated from
    /// their seeds): about twice [`KeyRequirements::key_bytes`].
    pub fn expanded_key_bytes(&self, params: &Params) -> usize {
        let galois: usize = self
            .galois_levels(params)
            .values()
            .map(|&l| params.expanded_switching_key_bytes_at(l))
            .sum();
        galois
            + usize::from(self.relin) * params.expanded_switching_key_bytes_at(params.max_level())
    }
}

/// The evaluation keys a server holds: relinearization and Galois keys. Never a secret key.
pub struct EvaluationKeys<B: Backend> {
    pub(crate) params: Arc<Params>,
    pub(crate) id: [u8; 32],
    pub(crate) relin: Option<RelinKey<B>>,
    pub(crate) galois: BTreeMap<usize, GaloisKey<B>>,
}

impl<B: Backend> EvaluationKeys<B> {
    /// A key set holding no key, for evaluators that only encode, add and multiply by
    /// plaintexts (every key-switching operation then reports the missing key).
    pub fn empty(params: &Arc<Params>) -> Self {
        Self {
            params: Arc::clone(params),
            id: [0; 32],
            relin: None,
            galois: BTreeMap::new(),
        }
    }

    /// The parameters these keys belong to.
    pub fn params(&self) -> &Arc<Params> {
        &self.params
    }
    /// Identifier of the key pair these keys were made from.
    pub fn key_id(&self) -> [u8; 32] {
        self.id
    }
    /// The relinearization key.
    ///
    /// # Errors
    /// [`RlweError::MissingRelinKey`].
    pub fn relin(&self) -> Result<&RelinKey<B>, RlweError> {
        self.relin.as_ref().ok_or(RlweError::MissingRelinKey)
    }
    /// The Galois key for element `g`.
    ///
    /// # Errors
    /// [`RlweError::MissingGaloisKey`].
    pub fn galois(&self, g: usize) -> Result<&GaloisKey<B>, RlweError> {
        self.galois
            .get(&g)
            .ok_or(RlweError::MissingGaloisKey { galois: g })
    }
    /// Whether a Galois key for `g` is present.
    pub fn has_galois(&self, g: usize) -> bool {
        self.galois.contains_key(&g)
    }
    /// The Galois elements with keys.
    pub fn galois_elements(&self) -> impl Iterator<Item = usize> + '_ {
        self.galois.keys().copied()
    }
    /// Adds (or replaces) the Galois key for its element.
    pub(crate) fn insert_galois(&mut self, key: GaloisKey<B>) {
        self.galois.insert(key.galois, key);
    }
    /// Holds every key compact ([`KeyStorage::Compact`]): half the memory.
    pub fn compact(&mut self) {
        if let Some(r) = &mut self.relin {
            r.0.compact();
        }
        for k in self.galois.values_mut() {
            k.key.compact();
        }
    }

    /// Bytes these keys hold in memory.
    pub fn memory_bytes(&self) -> usize {
        let n = self.params.n();
        self.relin
            .iter()
            .map(|r| r.0.memory_bytes(n))
            .sum::<usize>()
            + self
                .galois
                .values()
                .map(|k| k.key.memory_bytes(n))
                .sum::<usize>()
    }

    /// Size in bytes of these keys in seed-compressed serialized form.
    pub fn size_bytes(&self) -> usize {
        let params = &self.params;
        let galois: usize = self
            .galois
            .values()
            .map(|k| params.switching_key_bytes_at(k.max_level()))
            .sum();
        galois + usize::from(self.relin.is_some()) * params.switching_key_bytes()
    }
}
