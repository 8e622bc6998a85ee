//! # hecnn-ring
//!
//! The arithmetic foundation of hecnn: word-size modular arithmetic (Barrett and Shoup),
//! NTT-friendly primes, negacyclic NTTs behind the [`Ntt`] trait, RNS bases and contexts,
//! basis conversion (ModUp / ModDown), rescaling, Galois automorphisms, samplers, and the
//! [`Backend`] trait with its multi-threaded [`CpuBackend`].
//!
//! Polynomials are limb-major (`[limb][n]`), 64-byte aligned, and carry their domain in the
//! type ([`RnsPoly<B, Coeff>`] / [`RnsPoly<B, Eval>`]).
//!
//! ```
//! use hecnn_ring::{prime, Basis, Backend, CpuBackend, NttKind, RnsContext, RnsPoly, Coeff};
//! let q = prime::ntt_primes(50, 10, 2)?;
//! let ctx = RnsContext::new(10, &q, &[], NttKind::Fast)?;
//! let be = CpuBackend::new(1)?;
//! let mut x = vec![0u64; 2 * 1024];
//! x[1] = 1; // X in limb 0
//! x[1024 + 1] = 1; // X in limb 1
//! let a = RnsPoly::<_, Coeff>::from_host(&be, &ctx, Basis::q(2), &x)?.into_eval(&be, &ctx);
//! let mut sq = a.clone();
//! sq.mul_assign(&be, &ctx, &a)?; // X·X = X²
//! let back = sq.into_coeff(&be, &ctx).to_host(&be, &ctx)?;
//! assert_eq!(back[2], 1);
//! # Ok::<(), hecnn_ring::RingError>(())
//! ```

mod aligned;
pub mod backend;
mod context;
mod cpu;
pub mod crt;
pub mod modulus;
pub mod ntt;
mod poly;
pub mod prime;
pub mod sampler;
#[cfg(target_arch = "x86_64")]
pub mod simd;
#[cfg(not(target_arch = "x86_64"))]
#[path = "simd_fallback.rs"]
pub mod simd;

pub use aligned::AlignedVec;
pub use backend::Backend;
pub use context::{Basis, RnsContext};
pub use cpu::CpuBackend;
pub use modulus::Modulus;
pub use ntt::{Ntt, NttKind};
pub use poly::{Coeff, Domain, Eval, RnsPoly};
pub use sampler::Prng;

/// Errors of the ring layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// A modulus is even, too small or too large (≥ 2^61).
    #[error("invalid modulus {value}: must be an odd prime below 2^61")]
    InvalidModulus {
        /// The rejected value.
        value: u64,
    },
    /// Not enough NTT-friendly primes of the requested size exist.
    #[error("not enough {bits}-bit primes ≡ 1 mod 2^{} for {count} primes", log_n + 1)]
    NotEnoughPrimes {
        /// Requested bit size.
        bits: u32,
        /// log2 of the ring degree.
        log_n: u32,
        /// Requested count.
        count: usize,
    },
    /// No primitive root of unity of the requested order exists.
    #[error("no primitive {order}-th root of unity modulo {modulus}")]
    NoRootOfUnity {
        /// The modulus.
        modulus: u64,
        /// The order.
        order: u64,
    },
    /// A value has no inverse.
    #[error("{value} is not invertible modulo {modulus}")]
    NotInvertible {
        /// The value.
        value: u64,
        /// The modulus.
        modulus: u64,
    },
    /// Unsupported ring degree.
    #[error("unsupported ring degree 2^{log_n} (supported: 2^1..2^17)")]
    InvalidDegree {
        /// log2 of the degree.
        log_n: u32,
    },
    /// A basis with no prime.
    #[error("the ciphertext modulus chain is empty")]
    EmptyBasis,
    /// The same prime appears twice.
    #[error("modulus {value} appears more than once")]
    DuplicateModulus {
        /// The repeated prime.
        value: u64,
    },
    /// Two operands live over incompatible bases.
    #[error("basis mismatch: {lhs:?} vs {rhs:?}")]
    BasisMismatch {
        /// Destination basis.
        lhs: Basis,
        /// Operand basis.
        rhs: Basis,
    },
    /// A basis exceeds what the context or the polynomial holds.
    #[error("basis {basis:?} out of range (have q = {q}, p = {p})")]
    BasisOutOfRange {
        /// Requested basis.
        basis: Basis,
        /// Available Q limbs.
        q: usize,
        /// Available P limbs.
        p: usize,
    },
    /// Wrong number of words or scalars.
    #[error("length mismatch: expected {expected}, found {found}")]
    LengthMismatch {
        /// Expected length.
        expected: usize,
        /// Found length.
        found: usize,
    },
    /// An index past the end of what it indexes (a sparse row's input, for example).
    #[error("index {index} out of range for {len} items")]
    IndexOutOfRange {
        /// The index.
        index: usize,
        /// How many items there are.
        len: usize,
    },
    /// Input words are not reduced modulo their prime.
    #[error("limb {limb} holds a value not reduced modulo its prime")]
    UnreducedInput {
        /// Offending limb position.
        limb: usize,
    },
    /// A Galois element is even or out of range.
    #[error("invalid Galois element {galois} for n = {n} (must be odd and below 2n)")]
    InvalidGaloisElement {
        /// The element.
        galois: usize,
        /// The ring degree.
        n: usize,
    },
    /// Hamming weight larger than the dimension.
    #[error("Hamming weight {h} exceeds the dimension {n}")]
    InvalidHammingWeight {
        /// Requested weight.
        h: usize,
        /// Dimension.
        n: usize,
    },
    /// The OS entropy source failed.
    #[error("operating-system entropy unavailable: {0}")]
    Entropy(String),
    /// A device or runtime failure inside a backend.
    #[error("backend failure: {0}")]
    Backend(String),
}
