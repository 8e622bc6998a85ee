//! Sparse-secret encapsulation (Bossuat, Troncoso-Pastoriza and Hubaux, "Bootstrapping for
//! approximate homomorphic encryption with negligible failure-probability by using
//! sparse-secret encapsulation", ACNS 2022, eprint 2022/024).
//!
//! Bootstrapping removes `q_0·I` from a raised ciphertext, and the size of `I` grows with the
//! Hamming weight of the secret. The main secret stays *uniform ternary* (dense, covered by
//! the HE-standard table); only inside bootstrapping a level-0 ciphertext is switched to an
//! ephemeral sparse secret `s'` of weight `h`, raised, and switched back to `s` at the top
//! level. Then `|I| ≤ (h + 1)/2` holds for every coefficient, deterministically.
//!
//! - The key `s → s'` is an RLWE sample under the *sparse* `s'`, so it is published only
//!   modulo `q_0·p_0` (the restricted ring of [`Params::restricted`]), where the sparse secret
//!   is secure; it never exists at the full modulus.
//! - The key `s' → s` is an RLWE sample under the dense `s` at the full `Q·P`, like any other
//!   evaluation key.

use std::sync::Arc;

use hecnn_ring::{Backend, Prng, RnsPoly, sampler};
use zeroize::Zeroizing;

use crate::keys::SecretKey;
use crate::{Ciphertext, Params, RlweError, SecretDistribution, SwitchingKey, keyswitch};

/// The two switching keys of sparse-secret encapsulation. Public: the server holds them
/// with its other evaluation keys.
pub struct EncapsulationKeys<B: Backend> {
    pub(crate) params: Arc<Params>,
    pub(crate) small: Arc<Params>,
    pub(crate) id: [u8; 32],
    pub(crate) weight: usize,
    pub(crate) to_sparse: SwitchingKey<B>,
    pub(crate) to_dense: SwitchingKey<B>,
}

impl<B: Backend> std::fmt::Debug for EncapsulationKeys<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncapsulationKeys")
            .field("weight", &self.weight)
            .field("small_log_qp", &self.small.log_qp())
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// Samples an ephemeral sparse secret of Hamming weight `h` and returns the keys that
    /// switch level-0 ciphertexts to it and raised ciphertexts back. The sparse secret itself
    /// is dropped (zeroized) before this returns.
    ///
    /// # Errors
    /// [`RlweError::NoSpecialPrimes`]; an impossible weight; backend failures.
    pub fn encapsulation_keys<B: Backend>(
        &self,
        be: &B,
        h: usize,
        rng: &mut Prng,
    ) -> Result<EncapsulationKeys<B>, RlweError> {
        let params = self.params();
        if params.p().is_empty() {
            return Err(RlweError::NoSpecialPrimes);
        }
        let n = params.n();
        let sparse = Zeroizing::new(sampler::sample_sparse_ternary(rng, n, h)?);
        let small = small_params(params, h)?;

        // s → s' modulo q_0·p_0, as an RLWE sample under s'.
        let small_dense = SecretKey::from_coeffs(&small, self.coeffs_copy(), self.key_id())?;
        let small_sparse = SecretKey::from_coeffs(&small, sparse.clone(), self.key_id())?;
        let full_small = small.ctx().full_basis();
        let to_sparse = small_sparse.switching_key(
            be,
            &small_dense.eval_poly(be, full_small)?,
            &small_sparse.eval_poly(be, full_small)?,
            rng,
        )?;

        // s' → s at the full modulus, as an RLWE sample under s.
        let main_sparse = SecretKey::from_coeffs(params, sparse, self.key_id())?;
        let full = params.ctx().full_basis();
        let to_dense = self.switching_key(
            be,
            &main_sparse.eval_poly(be, full)?,
            &self.eval_poly(be, full)?,
            rng,
        )?;
        Ok(EncapsulationKeys {
            params: Arc::clone(params),
            small,
            id: self.key_id(),
            weight: h,
            to_sparse,
            to_dense,
        })
    }
}

impl<B: Backend> EncapsulationKeys<B> {
    /// Hamming weight of the ephemeral secret.
    pub fn weight(&self) -> usize {
        self.weight
    }

    /// Identifier of the key pair these keys were made from.
    pub fn key_id(&self) -> [u8; 32] {
        self.id
    }

    /// The parameters of the main ring.
    pub fn params(&self) -> &Arc<Params> {
        &self.params
    }

    /// log2 of the modulus `q_0·p_0` the sparse-secret key is published at.
    pub fn small_log_qp(&self) -> f64 {
        self.small.log_qp()
    }

    /// Size in bytes of both keys in seed-compressed serialized form.
    pub fn size_bytes(&self) -> usize {
        self.small.switching_key_bytes() + self.params.switching_key_bytes()
    }

    /// Switches a level-0 ciphertext from `s` to the sparse `s'`.
    ///
    /// # Errors
    /// [`RlweError::LevelMismatch`] unless the ciphertext is at level 0; wrong degree;
    /// backend failures.
    pub fn to_sparse(&self, be: &B, ct: &Ciphertext<B>) -> Result<Ciphertext<B>, RlweError> {
        if ct.level() != 0 {
            return Err(RlweError::LevelMismatch {
                lhs: ct.level(),
                rhs: 0,
            });
        }
        // The restricted ring shares q_0 (and its NTT tables) with the main ring, so level-0
        // polynomials are valid in both.
        switch(be, &self.small, ct, &self.to_sparse)
    }

    /// Switches a ciphertext (any level) from the sparse `s'` back to `s`.
    ///
    /// # Errors
    /// Wrong degree; backend failures.
    pub fn to_dense(&self, be: &B, ct: &Ciphertext<B>) -> Result<Ciphertext<B>, RlweError> {
        switch(be, &self.params, ct, &self.to_dense)
    }
}

/// The restricted ring `q_0·p_0` the sparse-secret key lives in, for a weight-`h` secret.
pub(crate) fn small_params(params: &Params, h: usize) -> Result<Arc<Params>, RlweError> {
    if h == 0 || h > params.n() {
        return Err(RlweError::InvalidParams {
            reason: format!(
                "an ephemeral secret of Hamming weight {h} in a ring of degree {}",
                params.n()
            ),
        });
    }
    Ok(Arc::new(params.restricted(
        1,
        1,
        SecretDistribution::SparseTernary { h },
    )?))
}

/// `(c_0 + k_0, k_1)` with `k_0 + k_1·t ≈ c_1·s'` for a key switching `s'` to `t`.
fn switch<B: Backend>(
    be: &B,
    params: &Params,
    ct: &Ciphertext<B>,
    key: &SwitchingKey<B>,
) -> Result<Ciphertext<B>, RlweError> {
    let [c0, c1] = ct.parts() else {
        return Err(RlweError::Malformed {
            what: "key switching expects a degree-1 ciphertext",
        });
    };
    let dec = keyswitch::decompose(be, params, c1)?;
    let (mut k0, k1): (RnsPoly<B, _>, _) =
        keyswitch::switch_decomposed(be, params, &dec, key, None)?;
    k0.add_assign(be, params.ctx(), c0)?;
    Ciphertext::from_parts(vec![k0, k1])
}
