//! # hecnn-ckks
//!
//! CKKS approximate homomorphic encryption on the hecnn RLWE core: an encoder for the
//! canonical embedding (full and sparse slots, real and complex), an evaluator with exact
//! scale tracking, BSGS linear transforms with hoisted rotations, and depth-optimal Chebyshev
//! polynomial evaluation.
//!
//! ```
//! use std::sync::Arc;
//! use hecnn_ring::{CpuBackend, Prng};
//! use hecnn_rlwe::{KeyRequirements, SecretKey};
//! use hecnn_ckks::{Evaluator, Preset, encrypt_sk, decrypt};
//!
//! let params = Preset::N13Qp218.build()?;
//! let be = CpuBackend::new(1)?;
//! let mut rng = Prng::from_entropy()?;
//! let sk = SecretKey::generate(params.rlwe(), &mut rng)?;
//! let keys = sk.evaluation_keys(&be, &KeyRequirements::relin().with_rotations([1]), &mut rng)?;
//! let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone())?;
//! let slots = params.max_slots();
//! let x: Vec<f64> = (0..slots).map(|i| i as f64 / slots as f64).collect();
//! let pt = eval.encode_real(&x, params.max_level(), params.default_scale(), slots)?;
//! let ct = encrypt_sk(&sk, &be, &pt, &mut rng)?;
//! let y = eval.rescale(&eval.mul_relin(&ct, &ct)?)?; // x²
//! let y = eval.rotate(&y, 1)?;                         // slot i ← slot i+1
//! let out = eval.encoder().decode_real(&be, &params, &decrypt(&sk, &be, &y)?)?;
//! assert!((out[0] - x[1] * x[1]).abs() < 1e-6);
//! # Ok::<(), hecnn_ckks::CkksError>(())
//! ```

pub mod bootstrap;
mod ciphertext;
pub mod cost;
mod encoder;
mod evaluator;
pub mod flooding;
mod linear;
mod params;
mod poly_eval;

pub use bootstrap::{BootstrapConfig, BootstrapPhases, Bootstrapper};
pub use ciphertext::{Ciphertext, Decryptor, Plaintext, decrypt, encrypt_pk, encrypt_sk};
pub use encoder::Encoder;
pub use evaluator::{Evaluator, OpCounts, inner_sum_rotations};
pub use flooding::Flooding;
pub use linear::{
    BlockDiagonals, DEFAULT_BABY_WEIGHT, DEFERRED_CHUNK_BYTES, LinearTransform,
    block_rotation_counts, block_rotations, block_rotations_weighted, bsgs_rotations, diagonals_of,
};
pub use num_complex::Complex64;
pub use params::{CkksParams, Preset};
pub use poly_eval::ChebyshevPoly;

use hecnn_ring::RingError;
use hecnn_rlwe::RlweError;

/// Errors of the CKKS layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CkksError {
    /// An error from the RLWE layer.
    #[error(transparent)]
    Rlwe(#[from] RlweError),
    /// Operands with different scales.
    #[error("scale mismatch: 2^{lhs:.3} vs 2^{rhs:.3} (use Evaluator::adjust to match)")]
    ScaleMismatch {
        /// log2 of the left scale.
        lhs: f64,
        /// log2 of the right scale.
        rhs: f64,
    },
    /// Operands with different slot counts.
    #[error("slot count mismatch: {lhs} vs {rhs}")]
    SlotMismatch {
        /// Left slots.
        lhs: usize,
        /// Right slots.
        rhs: usize,
    },
    /// Not enough levels left.
    #[error("not enough levels: need {needed}, have {have}")]
    LevelTooLow {
        /// Needed level.
        needed: usize,
        /// Available level.
        have: usize,
    },
    /// Level above the parameters' maximum.
    #[error("level {level} above the maximum {max}")]
    LevelTooHigh {
        /// Requested level.
        level: usize,
        /// Maximum.
        max: usize,
    },
    /// Slot count not a power of two or above `n/2`.
    #[error("invalid slot count {slots} (a power of two up to {max})")]
    InvalidSlots {
        /// Requested slots.
        slots: usize,
        /// Maximum.
        max: usize,
    },
    /// More values than slots.
    #[error("{values} values do not fit in {slots} slots")]
    TooManyValues {
        /// Values given.
        values: usize,
        /// Slots.
        slots: usize,
    },
    /// A scale outside `[1, q_0)` or not finite.
    #[error("invalid scale {scale}")]
    InvalidScale {
        /// The scale.
        scale: f64,
    },
    /// A scaled value does not fit in 126 bits.
    #[error("value {value} at scale 2^{:.1} overflows", scale.log2())]
    Overflow {
        /// The value.
        value: f64,
        /// The scale.
        scale: f64,
    },
    /// NaN or infinite input.
    #[error("input values must be finite")]
    NonFinite,
    /// A ciphertext of the wrong degree.
    #[error("expected a degree-{expected} ciphertext, found degree {found}")]
    Degree {
        /// Expected degree.
        expected: usize,
        /// Found degree.
        found: usize,
    },
    /// No rotation key (direct or composable) for a step.
    #[error("no rotation key for step {step} (generate it, or the power-of-two keys)")]
    MissingRotationKey {
        /// The step.
        step: i64,
    },
    /// Noise flooding whose tail would wrap the modulus left at the ciphertext's level: the
    /// decryption is refused rather than returned wrong.
    #[error(
        "flooding of σ = 2^{sigma_log2:.1} is wider than the modulus left at the \
         ciphertext's level (2^{log_q:.1}): decrypt at a higher level, or with more \
         precision at the output"
    )]
    FloodingTooWide {
        /// log2 of the flooding's standard deviation.
        sigma_log2: f64,
        /// log2 of the modulus at the ciphertext's level.
        log_q: f64,
    },
    /// Any other invalid argument.
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What was wrong.
        what: &'static str,
    },
}

impl From<RingError> for CkksError {
    fn from(e: RingError) -> Self {
        Self::Rlwe(RlweError::Ring(e))
    }
}
