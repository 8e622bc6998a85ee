//! # hecnn-bfv
//!
//! BFV exact integer homomorphic encryption on the hecnn RLWE core (the same checked
//! [`hecnn_rlwe::Params`], keys, seed-compressed encryption and hybrid key switching as CKKS):
//!
//! - [`BfvParams`]: RLWE parameters plus the plaintext modulus `t`, with the derived RNS
//!   constants (`Δ = ⌊Q/t⌋` per level, the auxiliary base `R` of the multiplication);
//! - [`BatchEncoder`]: `N` values mod `t` in a `2 × N/2` matrix of slots (SIMD batching, for
//!   `t` prime and `t ≡ 1 (mod 2N)`), and [`Plaintext::constant`] / [`Plaintext::from_coeffs`]
//!   for any `t` coprime with `Q`;
//! - encryption with the secret key (seed-compressed) or the public key, exact decryption
//!   ([`encrypt_sk`], [`encrypt_pk`], [`decrypt`]), the invariant noise budget
//!   ([`noise_budget_bits`]);
//! - an [`Evaluator`]: addition, subtraction, negation, plaintext addition and multiplication,
//!   ciphertext multiplication in RNS after Halevi–Polyakov–Shoup (see [`rns`]),
//!   relinearization, row rotations and the row swap, modulus switching, and plaintext
//!   operands prepared once for repeated multiplications ([`PlaintextOperand`]);
//! - [`serial`]: parameters, ciphertexts and plaintexts in the RLWE layer's checksummed
//!   envelopes, bound to `t` as well as to the RLWE parameters;
//! - [`noise`]: the noise budget estimated from the parameters alone ([`NoiseModel`],
//!   [`NoiseEstimate`]), for planning before any key exists.
//!
//! ```
//! use std::sync::Arc;
//! use hecnn_ring::{CpuBackend, Prng};
//! use hecnn_rlwe::{KeyRequirements, SecretKey};
//! use hecnn_bfv::{BatchEncoder, Evaluator, Preset, decrypt, encrypt_sk};
//!
//! let params = Preset::N13Qp216T65537.build()?;
//! let be = CpuBackend::new(1)?;
//! let mut rng = Prng::from_entropy()?;
//! let sk = SecretKey::generate(params.rlwe(), &mut rng)?;
//! let keys = sk.evaluation_keys(&be, &KeyRequirements::relin().with_rotations([1]), &mut rng)?;
//! let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone())?;
//! let enc = BatchEncoder::new(&params)?;
//! let x: Vec<u64> = (0..params.n() as u64).collect();
//! let ct = encrypt_sk(&params, &sk, &be, &enc.encode(&x)?, &mut rng)?;
//! let y = eval.mul_relin(&ct, &ct)?;   // x² mod t, slot by slot
//! let y = eval.rotate_rows(&y, 1)?;    // each row: column c ← column c+1
//! let out = enc.decode(&decrypt(&params, &sk, &be, &y)?)?;
//! assert_eq!(out[0], 1);
//! assert_eq!(out[5], 36);
//! # Ok::<(), hecnn_bfv::BfvError>(())
//! ```

mod ciphertext;
mod encoder;
mod evaluator;
pub mod noise;
mod params;
pub mod rns;
pub mod serial;

pub use ciphertext::{Ciphertext, Decryptor, decrypt, encrypt_pk, encrypt_sk, noise_budget_bits};
pub use encoder::{BatchEncoder, Plaintext};
pub use evaluator::{Evaluator, PlaintextOperand};
pub use noise::{NoiseEstimate, NoiseModel};
pub use params::{BfvParams, Preset};

use hecnn_ring::RingError;
use hecnn_rlwe::RlweError;

/// Errors of the BFV layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BfvError {
    /// An error from the RLWE layer.
    #[error(transparent)]
    Rlwe(#[from] RlweError),
    /// A plaintext modulus the parameters cannot use.
    #[error("invalid plaintext modulus t = {t}: {reason}")]
    InvalidPlainModulus {
        /// The rejected modulus.
        t: u64,
        /// Why.
        reason: &'static str,
    },
    /// Batching needs `t` prime and `t ≡ 1 (mod 2N)`.
    #[error("batching is unavailable: t = {t} is not a prime ≡ 1 mod 2N = {}", 2 * n)]
    BatchingUnavailable {
        /// The plaintext modulus.
        t: u64,
        /// The ring degree.
        n: usize,
    },
    /// A value outside `[0, t)` (or, signed, outside `(-t/2, t/2]`).
    #[error("value {value} at index {index} is out of range for t = {t}")]
    ValueOutOfRange {
        /// Position of the value.
        index: usize,
        /// The value.
        value: i128,
        /// The plaintext modulus.
        t: u64,
    },
    /// More values than slots or coefficients.
    #[error("{values} values do not fit in {slots} slots")]
    TooManyValues {
        /// Values given.
        values: usize,
        /// Slots available.
        slots: usize,
    },
    /// An object made for other BFV parameters (other primes or another `t`).
    #[error("BFV parameter mismatch: the object was made for other parameters")]
    ParamsMismatch,
    /// An object made for the same RLWE parameters but another plaintext modulus.
    #[error(
        "plaintext modulus mismatch: the parameters have t = {expected}, the object t = {found}"
    )]
    PlainModulusMismatch {
        /// The parameters' `t`.
        expected: u64,
        /// The object's `t`.
        found: u64,
    },
    /// Operands at different levels (BFV levels are aligned by modulus switching, which
    /// the evaluator does not do behind the caller's back).
    #[error("level mismatch: {lhs} vs {rhs} (modulus-switch the higher one first)")]
    LevelMismatch {
        /// Left operand level.
        lhs: usize,
        /// Right operand level.
        rhs: usize,
    },
    /// Not enough levels left for a modulus switch.
    #[error("not enough levels: need {needed}, have {have}")]
    LevelTooLow {
        /// Needed level.
        needed: usize,
        /// Available level.
        have: usize,
    },
    /// A ciphertext of the wrong degree.
    #[error("expected a degree-{expected} ciphertext, found degree {found}")]
    Degree {
        /// Expected degree.
        expected: usize,
        /// Found degree.
        found: usize,
    },
    /// Any other invalid argument.
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What was wrong.
        what: &'static str,
    },
}

impl From<RingError> for BfvError {
    fn from(e: RingError) -> Self {
        Self::Rlwe(RlweError::Ring(e))
    }
}
