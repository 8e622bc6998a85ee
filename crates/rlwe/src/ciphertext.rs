//! RLWE ciphertexts, encryption and decryption.

use std::sync::Arc;

use hecnn_ring::{Backend, Basis, Eval, Prng, RnsPoly};

use crate::{
    Params, PublicKey, RlweError, SecretKey,
    keys::{gaussian_eval, small_eval, uniform_eval},
};

/// An RLWE ciphertext `(c_0, c_1[, c_2])` in the evaluation domain; it decrypts to
/// `c_0 + c_1·s (+ c_2·s²)`. A fresh secret-key ciphertext remembers the seed of `c_1`
/// so it serializes at half size.
pub struct Ciphertext<B: Backend> {
    parts: Vec<RnsPoly<B, Eval>>,
    seed: Option<[u8; 32]>,
}

impl<B: Backend> Clone for Ciphertext<B> {
    fn clone(&self) -> Self {
        Self {
            parts: self.parts.clone(),
            seed: self.seed,
        }
    }
}

impl<B: Backend> std::fmt::Debug for Ciphertext<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ciphertext")
            .field("degree", &self.degree())
            .field("level", &self.level())
            .finish()
    }
}

impl<B: Backend> Ciphertext<B> {
    /// Builds a ciphertext from its components (all over the same Q basis).
    ///
    /// # Errors
    /// [`RlweError::Malformed`] for fewer than two components or mixed bases.
    pub fn from_parts(parts: Vec<RnsPoly<B, Eval>>) -> Result<Self, RlweError> {
        let Some(first) = parts.first() else {
            return Err(RlweError::Malformed {
                what: "ciphertext without components",
            });
        };
        let basis = first.basis();
        if parts.len() < 2 || parts.iter().any(|p| p.basis() != basis) || basis.p != 0 {
            return Err(RlweError::Malformed {
                what: "ciphertext components",
            });
        }
        Ok(Self { parts, seed: None })
    }

    pub(crate) fn with_seed(parts: Vec<RnsPoly<B, Eval>>, seed: Option<[u8; 32]>) -> Self {
        Self { parts, seed }
    }

    /// The seed of `c_1`, if this is an unmodified secret-key encryption.
    pub fn seed(&self) -> Option<&[u8; 32]> {
        self.seed.as_ref()
    }

    /// The components.
    pub fn parts(&self) -> &[RnsPoly<B, Eval>] {
        &self.parts
    }

    /// The components, mutably (forgets the seed, since `c_1` may change).
    pub fn parts_mut(&mut self) -> &mut [RnsPoly<B, Eval>] {
        self.seed = None;
        &mut self.parts
    }

    /// Consumes the ciphertext into its components.
    pub fn into_parts(self) -> Vec<RnsPoly<B, Eval>> {
        self.parts
    }

    /// Degree (number of components − 1).
    pub fn degree(&self) -> usize {
        self.parts.len() - 1
    }

    /// Level: live Q limbs − 1.
    pub fn level(&self) -> usize {
        self.basis().q - 1
    }

    /// The basis of the components.
    pub fn basis(&self) -> Basis {
        self.parts.first().map_or(Basis::q(0), |p| p.basis())
    }

    /// Drops Q limbs down to `level` (no rescaling).
    ///
    /// # Errors
    /// [`RlweError::LevelMismatch`] if `level` is above the current level.
    pub fn drop_to_level(&mut self, level: usize) -> Result<(), RlweError> {
        if level > self.level() {
            return Err(RlweError::LevelMismatch {
                lhs: self.level(),
                rhs: level,
            });
        }
        for p in &mut self.parts {
            p.truncate_q(level + 1)?;
        }
        Ok(())
    }
}

impl SecretKey {
    /// Encrypts an evaluation-domain plaintext (over `Q_l`): `(-a·s + e + m, a)`, with `a`
    /// expanded from a fresh seed.
    ///
    /// # Errors
    /// Backend failures; a plaintext with P limbs.
    pub fn encrypt<B: Backend>(
        &self,
        be: &B,
        m: &RnsPoly<B, Eval>,
        rng: &mut Prng,
    ) -> Result<Ciphertext<B>, RlweError> {
        let basis = m.basis();
        if basis.p != 0 {
            return Err(RlweError::Malformed {
                what: "plaintext with special-prime limbs",
            });
        }
        let seed = rng.seed();
        let (mut b, a) = self.rlwe_sample(be, basis, &seed, rng)?;
        b.add_assign(be, self.params().ctx(), m)?;
        Ok(Ciphertext::with_seed(vec![b, a], Some(seed)))
    }

    /// Decrypts to the evaluation-domain plaintext `c_0 + c_1·s (+ c_2·s²)`, uploading the
    /// key's live limbs for this call (use a [`Decryptor`] for many ciphertexts).
    ///
    /// # Errors
    /// Backend failures.
    pub fn decrypt<B: Backend>(
        &self,
        be: &B,
        ct: &Ciphertext<B>,
    ) -> Result<RnsPoly<B, Eval>, RlweError> {
        let mut s = self.eval_poly(be, ct.basis())?;
        let out = decrypt_with(be, self.params(), &s, ct);
        be.zeroize(s.buffer_mut());
        out
    }

    /// A decryptor that keeps `s` on the backend for repeated decryption.
    ///
    /// # Errors
    /// Backend failures.
    pub fn decryptor<'a, B: Backend>(&'a self, be: &'a B) -> Result<Decryptor<'a, B>, RlweError> {
        let s = self.eval_poly(be, Basis::q(self.params().q().len()))?;
        Ok(Decryptor { sk: self, be, s })
    }
}

/// Decrypts with the secret key held on the backend (uploaded once, zeroized on drop).
pub struct Decryptor<'a, B: Backend> {
    sk: &'a SecretKey,
    be: &'a B,
    s: RnsPoly<B, Eval>,
}

impl<B: Backend> Decryptor<'_, B> {
    /// Decrypts to the evaluation-domain plaintext.
    ///
    /// # Errors
    /// Backend failures.
    pub fn decrypt(&self, ct: &Ciphertext<B>) -> Result<RnsPoly<B, Eval>, RlweError> {
        decrypt_with(self.be, self.sk.params(), &self.s, ct)
    }

    /// The parameters of the key.
    pub fn params(&self) -> &Arc<Params> {
        self.sk.params()
    }

    /// The backend the key lives on.
    pub fn backend(&self) -> &B {
        self.be
    }
}

impl<B: Backend> Drop for Decryptor<'_, B> {
    fn drop(&mut self) {
        self.be.zeroize(self.s.buffer_mut());
    }
}

/// `c_0 + c_1·s (+ c_2·s²)` by Horner's rule; `s` may live over a larger basis.
fn decrypt_with<B: Backend>(
    be: &B,
    params: &Params,
    s: &RnsPoly<B, Eval>,
    ct: &Ciphertext<B>,
) -> Result<RnsPoly<B, Eval>, RlweError> {
    let ctx = params.ctx();
    {
        // ((c_d·s + c_{d-1})·s + …) + c_0
        let mut parts = ct.parts().iter().rev();
        let mut acc = parts
            .next()
            .ok_or(RlweError::Malformed {
                what: "empty ciphertext",
            })?
            .clone();
        for c in parts {
            acc.mul_assign(be, ctx, s)?;
            acc.add_assign(be, ctx, c)?;
        }
        Ok(acc)
    }
}

impl<B: Backend> PublicKey<B> {
    /// The parameters of this key.
    pub fn params(&self) -> &Arc<Params> {
        &self.params
    }

    /// Identifier of the key pair this key belongs to.
    pub fn key_id(&self) -> [u8; 32] {
        self.id
    }

    /// Encrypts an evaluation-domain plaintext over `Q_l`:
    /// `(b·u + e_0 + m, a·u + e_1)` with ternary `u`.
    ///
    /// # Errors
    /// Backend failures; a plaintext with P limbs.
    pub fn encrypt(
        &self,
        be: &B,
        m: &RnsPoly<B, Eval>,
        rng: &mut Prng,
    ) -> Result<Ciphertext<B>, RlweError> {
        let params = &self.params;
        let ctx = params.ctx();
        let basis = m.basis();
        if basis.p != 0 || basis.q > params.q().len() {
            return Err(RlweError::Malformed {
                what: "plaintext basis",
            });
        }
        let u: Vec<i64> = hecnn_ring::sampler::sample_ternary(rng, params.n())
            .into_iter()
            .map(i64::from)
            .collect();
        let u = small_eval(be, params, basis, &u)?;
        let mut c0 = gaussian_eval(be, params, basis, rng)?;
        let mut c1 = gaussian_eval(be, params, basis, rng)?;
        c0.mul_acc(be, ctx, &self.b, &u)?;
        c1.mul_acc(be, ctx, &self.a, &u)?;
        c0.add_assign(be, ctx, m)?;
        Ok(Ciphertext::with_seed(vec![c0, c1], None))
    }

    /// Re-expands the uniform part from the seed (used when loading).
    pub(crate) fn from_b_and_seed(
        be: &B,
        params: &Arc<Params>,
        id: [u8; 32],
        b: RnsPoly<B, Eval>,
        seed: [u8; 32],
    ) -> Result<Self, RlweError> {
        let a = uniform_eval(be, params, b.basis(), &seed)?;
        Ok(Self {
            params: Arc::clone(params),
            id,
            b,
            a,
            seed,
        })
    }
}
