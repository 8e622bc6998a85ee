//! CKKS plaintexts and ciphertexts: RLWE objects with their scale and slot count, plus
//! encryption and decryption.

use hecnn_ring::{Backend, Eval, Prng, RnsPoly};
use hecnn_rlwe::{PublicKey, SecretKey, serial};
use serde::{Deserialize, Serialize};

use crate::{CkksError, CkksParams};

/// An encoded message: an evaluation-domain polynomial over `Q_level`, its scale and the
/// number of slots it packs.
pub struct Plaintext<B: Backend> {
    poly: RnsPoly<B, Eval>,
    scale: f64,
    slots: usize,
}

impl<B: Backend> Clone for Plaintext<B> {
    fn clone(&self) -> Self {
        Self {
            poly: self.poly.clone(),
            scale: self.scale,
            slots: self.slots,
        }
    }
}

impl<B: Backend> Plaintext<B> {
    pub(crate) fn new(poly: RnsPoly<B, Eval>, scale: f64, slots: usize) -> Self {
        Self { poly, scale, slots }
    }
    /// The polynomial.
    pub fn poly(&self) -> &RnsPoly<B, Eval> {
        &self.poly
    }

    pub(crate) fn poly_mut(&mut self) -> &mut RnsPoly<B, Eval> {
        &mut self.poly
    }
    /// The scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// Level (live Q limbs − 1).
    pub fn level(&self) -> usize {
        self.poly.basis().q - 1
    }
}

/// A CKKS ciphertext: an RLWE ciphertext with its scale and slot count (private metadata,
/// checked by every evaluator operation).
pub struct Ciphertext<B: Backend> {
    inner: hecnn_rlwe::Ciphertext<B>,
    scale: f64,
    slots: usize,
}

impl<B: Backend> Clone for Ciphertext<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            scale: self.scale,
            slots: self.slots,
        }
    }
}

impl<B: Backend> std::fmt::Debug for Ciphertext<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ciphertext")
            .field("level", &self.level())
            .field("degree", &self.inner.degree())
            .field("log2_scale", &self.scale.log2())
            .field("slots", &self.slots)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Meta {
    scale: f64,
    slots: u32,
}

impl<B: Backend> Ciphertext<B> {
    pub(crate) fn new(inner: hecnn_rlwe::Ciphertext<B>, scale: f64, slots: usize) -> Self {
        Self {
            inner,
            scale,
            slots,
        }
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
    /// The scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    pub(crate) fn set_scale(&mut self, scale: f64) {
        self.scale = scale;
    }
    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// Level: remaining rescales.
    pub fn level(&self) -> usize {
        self.inner.level()
    }
    /// Degree (1 after relinearization).
    pub fn degree(&self) -> usize {
        self.inner.degree()
    }

    /// Serializes the ciphertext with its scale and slot count (seed-compressed when fresh).
    ///
    /// # Errors
    /// Backend transfer failures.
    pub fn to_bytes(&self, be: &B, params: &CkksParams) -> Result<Vec<u8>, CkksError> {
        let meta = Meta {
            scale: self.scale,
            slots: self.slots as u32,
        };
        Ok(serial::encode_with_meta(
            be,
            params.rlwe(),
            &self.inner,
            &meta,
        )?)
    }

    /// Loads and validates a ciphertext.
    ///
    /// # Errors
    /// Size, version, fingerprint and content errors; an invalid scale or slot count.
    pub fn from_bytes(be: &B, params: &CkksParams, bytes: &[u8]) -> Result<Self, CkksError> {
        let (inner, meta): (_, Meta) = serial::decode_with_meta(be, params.rlwe(), bytes)?;
        let slots = meta.slots as usize;
        if !slots.is_power_of_two() || slots > params.max_slots() {
            return Err(CkksError::InvalidSlots {
                slots,
                max: params.max_slots(),
            });
        }
        if !(meta.scale.is_finite() && meta.scale >= 1.0 && meta.scale < 2f64.powi(1000)) {
            return Err(CkksError::InvalidScale { scale: meta.scale });
        }
        Ok(Self::new(inner, meta.scale, slots))
    }
}

/// Encrypts with the secret key (client side; the ciphertext is seed-compressed).
///
/// # Errors
/// Backend failures.
pub fn encrypt_sk<B: Backend>(
    sk: &SecretKey,
    be: &B,
    pt: &Plaintext<B>,
    rng: &mut Prng,
) -> Result<Ciphertext<B>, CkksError> {
    Ok(Ciphertext::new(
        sk.encrypt(be, pt.poly(), rng)?,
        pt.scale(),
        pt.slots(),
    ))
}

/// Encrypts with the public key (anyone can encrypt).
///
/// # Errors
/// Backend failures.
pub fn encrypt_pk<B: Backend>(
    pk: &PublicKey<B>,
    be: &B,
    pt: &Plaintext<B>,
    rng: &mut Prng,
) -> Result<Ciphertext<B>, CkksError> {
    Ok(Ciphertext::new(
        pk.encrypt(be, pt.poly(), rng)?,
        pt.scale(),
        pt.slots(),
    ))
}

/// Decrypts to a plaintext (decode it with the [`crate::Encoder`]).
///
/// # Errors
/// Backend failures.
pub fn decrypt<B: Backend>(
    sk: &SecretKey,
    be: &B,
    ct: &Ciphertext<B>,
) -> Result<Plaintext<B>, CkksError> {
    Ok(Plaintext::new(
        sk.decrypt(be, ct.inner())?,
        ct.scale(),
        ct.slots(),
    ))
}

/// Decrypts many ciphertexts with the secret key uploaded once (zeroized on drop).
pub struct Decryptor<'a, B: Backend>(hecnn_rlwe::Decryptor<'a, B>);

impl<'a, B: Backend> Decryptor<'a, B> {
    /// Uploads the secret key.
    ///
    /// # Errors
    /// Backend failures.
    pub fn new(sk: &'a SecretKey, be: &'a B) -> Result<Self, CkksError> {
        Ok(Self(sk.decryptor(be)?))
    }

    pub(crate) fn inner(&self) -> &hecnn_rlwe::Decryptor<'a, B> {
        &self.0
    }

    /// Decrypts to a plaintext.
    ///
    /// # Errors
    /// Backend failures.
    pub fn decrypt(&self, ct: &Ciphertext<B>) -> Result<Plaintext<B>, CkksError> {
        Ok(Plaintext::new(
            self.0.decrypt(ct.inner())?,
            ct.scale(),
            ct.slots(),
        ))
    }
}
