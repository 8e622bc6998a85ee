//! # hecnn-rlwe
//!
//! The RLWE core shared by the CKKS and BFV schemes: checked parameters with the
//! HE-standard security table, secret / public / relinearization / Galois keys,
//! public- and secret-key encryption (seed-compressed), hybrid key switching with special
//! primes and a configurable `dnum`, hoisted automorphisms, and versioned serialization.
//!
//! ```
//! use std::sync::Arc;
//! use hecnn_ring::{CpuBackend, Prng};
//! use hecnn_rlwe::{ParamsLiteral, SecretDistribution, SecurityLevel, SecretKey};
//! let params = Arc::new(ParamsLiteral {
//!     log_n: 12, log_q: vec![36, 30], log_p: vec![40], dnum: None,
//!     secret: SecretDistribution::Ternary, security: SecurityLevel::Bits128,
//! }.build()?);
//! let be = CpuBackend::new(1)?;
//! let mut rng = Prng::from_entropy()?;
//! let sk = SecretKey::generate(&params, &mut rng)?;
//! let pk = sk.public_key(&be, &mut rng)?;
//! # Ok::<(), hecnn_rlwe::RlweError>(())
//! ```

mod ciphertext;
mod encapsulation;
mod keys;
pub mod keyswitch;
mod params;
pub mod security;
pub mod serial;

pub use ciphertext::{Ciphertext, Decryptor};
pub use encapsulation::EncapsulationKeys;
pub use keys::{
    EvaluationKeys, GaloisKey, KeyRequirements, KeyStorage, PublicKey, RelinKey, SecretKey,
    SwitchingKey,
};
pub use params::{MAX_P_PRIMES, MAX_Q_PRIMES, Params, ParamsLiteral, SecretDistribution};
pub use security::SecurityLevel;

use hecnn_ring::{Eval, RingError, RnsPoly};

/// Two evaluation-domain polynomials, e.g. the `(b, a)` of an RLWE sample or the output of a
/// key switch.
pub type PolyPair<B> = (RnsPoly<B, Eval>, RnsPoly<B, Eval>);

/// Errors of the RLWE layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RlweError {
    /// An error from the ring layer.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The parameters exceed the security bound.
    #[error(
        "insecure parameters: N = 2^{log_n}, log2(QP) = {log_qp:.1}, bound for {level} = {max}: {reason}"
    )]
    Insecure {
        /// log2 of the ring degree.
        log_n: u32,
        /// Actual log2(QP).
        log_qp: f64,
        /// Table bound (0 when not applicable).
        max: u32,
        /// Requested level.
        level: SecurityLevel,
        /// Why.
        reason: String,
    },
    /// Inconsistent parameter literal.
    #[error("invalid parameters: {reason}")]
    InvalidParams {
        /// Why.
        reason: String,
    },
    /// Objects built for different parameters.
    #[error("parameter fingerprint mismatch: the object was made for other parameters")]
    ParamsMismatch,
    /// Operands at different levels.
    #[error("level mismatch: {lhs} vs {rhs}")]
    LevelMismatch {
        /// Left operand level.
        lhs: usize,
        /// Right operand level.
        rhs: usize,
    },
    /// Key switching needs special primes.
    #[error("these parameters have no special primes P: key switching is unavailable")]
    NoSpecialPrimes,
    /// No relinearization key was generated.
    #[error("no relinearization key")]
    MissingRelinKey,
    /// A key-switching key restricted to lower levels than the ciphertext it is applied to.
    #[error(
        "a key for ciphertexts up to level {key_level} applied at level {level} (generate the \
         keys from the plan that runs them)"
    )]
    KeyLevel {
        /// The ciphertext's level.
        level: usize,
        /// The highest level the key serves.
        key_level: usize,
    },
    /// No key for a Galois element.
    #[error("no Galois key for element {galois}")]
    MissingGaloisKey {
        /// The element.
        galois: usize,
    },
    /// Serialized data larger than allowed.
    #[error("serialized object of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Input size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Corrupted or inconsistent data.
    #[error("malformed data: {what}")]
    Malformed {
        /// What was wrong.
        what: &'static str,
    },
    /// A format version this build cannot read.
    #[error("unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// Found version.
        found: u16,
        /// Supported version.
        supported: u16,
    },
    /// An object of another kind.
    #[error("expected a serialized {expected}, found {found}")]
    WrongKind {
        /// Expected kind.
        expected: String,
        /// Found kind.
        found: String,
    },
}
