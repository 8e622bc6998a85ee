//! Randomness: a ChaCha20 CSPRNG seeded from the operating system, seed expansion of
//! uniform polynomials with a BLAKE3 XOF, and the secret / error distributions.
//!
//! The ternary, sparse-ternary and Gaussian samplers never branch on or index by the sampled
//! values (rejection sampling only rejects raw random words, which carries no information
//! about the accepted output).

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use zeroize::Zeroize;

use crate::{Basis, RingError, RnsContext};

/// Identifier of the seed-expansion algorithm, recorded next to every serialized seed.
pub const UNIFORM_EXPANSION_ID: u8 = 1;

/// Standard deviation of the RLWE error distribution.
pub const SIGMA: f64 = 3.2;

/// The only random number generator hecnn's cryptographic code accepts: ChaCha20, seeded
/// from the OS (or from an explicit seed for reproducible tests).
pub struct Prng(ChaCha20Rng);

impl std::fmt::Debug for Prng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prng(ChaCha20)")
    }
}

impl Prng {
    /// A generator seeded from the operating system's entropy source.
    ///
    /// # Errors
    /// [`RingError::Entropy`] if the OS cannot provide randomness.
    pub fn from_entropy() -> Result<Self, RingError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| RingError::Entropy(e.to_string()))?;
        let rng = ChaCha20Rng::from_seed(seed);
        seed.zeroize();
        Ok(Self(rng))
    }

    /// A deterministic generator (tests, reproducible benchmarks). Never use a fixed seed
    /// for real keys.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ChaCha20Rng::from_seed(seed))
    }

    /// A uniformly random 64-bit word.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A fresh 32-byte seed.
    pub fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.0.fill_bytes(&mut s);
        s
    }

    /// Uniform integer in `[0, bound)` by rejection sampling (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        let mask = u64::MAX >> (bound.max(2) - 1).leading_zeros();
        loop {
            let x = self.next_u64() & mask;
            if x < bound {
                return x;
            }
        }
    }
}

/// Expands a 32-byte seed into a uniform polynomial over `basis` (every limb uniform modulo
/// its prime). Each limb is derived independently from (seed, global modulus index, modulus),
/// so expanding the same seed over a smaller basis gives the matching limbs. The output is
/// uniform in any domain; callers treat it as evaluation-domain data.
pub fn expand_uniform(seed: &[u8; 32], ctx: &RnsContext, basis: Basis) -> Vec<u64> {
    let mut out = vec![0u64; basis.len() * ctx.n()];
    expand_uniform_into(seed, ctx, basis, &mut out);
    out
}

/// As [`expand_uniform`], into `out` (its first `basis.len() · n` words; limbs in parallel).
pub fn expand_uniform_into(seed: &[u8; 32], ctx: &RnsContext, basis: Basis, out: &mut [u64]) {
    use rayon::prelude::*;
    let n = ctx.n();
    let words = (basis.len() * n).min(out.len());
    out[..words]
        .par_chunks_mut(n)
        .enumerate()
        .for_each(|(pos, limb)| {
            let g = basis.global(ctx, pos);
            let q = ctx.modulus(g).value();
            let mut h = blake3::Hasher::new_keyed(seed);
            h.update(b"hecnn/uniform/v1");
            h.update(&(g as u32).to_le_bytes());
            h.update(&q.to_le_bytes());
            let mut xof = h.finalize_xof();
            let mask = u64::MAX >> q.leading_zeros();
            let mut block = [0u8; 1024];
            let mut filled = 0;
            while filled < n {
                xof.fill(&mut block);
                for w in block.chunks_exact(8) {
                    let mut b8 = [0u8; 8];
                    b8.copy_from_slice(w);
                    let x = u64::from_le_bytes(b8) & mask;
                    if x < q {
                        limb[filled] = x;
                        filled += 1;
                        if filled == n {
                            break;
                        }
                    }
                }
            }
        });
}

/// Uniform ternary vector in `{-1, 0, 1}^n`.
pub fn sample_ternary(rng: &mut Prng, n: usize) -> Vec<i8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let w = rng.next_u64();
        for b in w.to_le_bytes() {
            // 255 = 3·85: rejecting 255 makes b mod 3 exactly uniform.
            if b < 255 && out.len() < n {
                out.push((b % 3) as i8 - 1);
            }
        }
    }
    out
}

/// Ternary vector with exactly `h` non-zero entries (each ±1 uniformly), positions uniform.
///
/// # Errors
/// [`RingError::InvalidHammingWeight`] if `h > n`.
pub fn sample_sparse_ternary(rng: &mut Prng, n: usize, h: usize) -> Result<Vec<i8>, RingError> {
    if h > n {
        return Err(RingError::InvalidHammingWeight { h, n });
    }
    let mut out = vec![0i8; n];
    // Partial Fisher–Yates over the index set: the first h positions of a random permutation.
    let mut idx: Vec<u32> = (0..n as u32).collect();
    for i in 0..h {
        let j = i + rng.below((n - i) as u64) as usize;
        idx.swap(i, j);
        let sign = (rng.next_u64() & 1) as i8;
        out[idx[i] as usize] = 1 - 2 * sign;
    }
    idx.zeroize();
    Ok(out)
}

/// Cumulative distribution table of |x| for the rounded Gaussian with σ = 3.2, tail-cut at
/// 12σ (≈ 2^-150 mass beyond), scaled to 2^63.
fn gaussian_cdt() -> &'static [u64] {
    static TABLE: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let bound = (12.0 * SIGMA).ceil() as i64;
        let rho = |x: i64| (-((x * x) as f64) / (2.0 * SIGMA * SIGMA)).exp();
        let total: f64 = (-bound..=bound).map(rho).sum();
        let scale = (1u64 << 63) as f64;
        let mut acc = 0.0f64;
        let mut table = Vec::new();
        for k in 0..bound {
            acc += if k == 0 { rho(0) } else { 2.0 * rho(k) } / total;
            table.push((acc * scale).min(scale - 1.0) as u64);
        }
        table
    })
}

/// Rounded Gaussian samples (σ = 3.2), constant-time: every table entry is compared for
/// every sample and the sign is applied with a mask.
pub fn sample_gaussian(rng: &mut Prng, n: usize) -> Vec<i64> {
    let table = gaussian_cdt();
    (0..n)
        .map(|_| {
            let w = rng.next_u64();
            let r = w >> 1;
            let sign = (w & 1).wrapping_neg(); // all ones when negative
            let mut mag = 0u64;
            for &t in table {
                // (r >= t) as 0/1 without a data-dependent branch.
                mag += ((r.wrapping_sub(t) >> 63) ^ 1) & 1;
            }
            ((mag ^ sign).wrapping_sub(sign)) as i64
        })
        .collect()
}

/// Lifts small signed coefficients into RNS limbs over `basis` (coefficient domain).
pub fn small_to_rns(ctx: &RnsContext, basis: Basis, coeffs: &[i64]) -> Vec<u64> {
    let n = ctx.n();
    let mut out = vec![0u64; basis.len() * n];
    for (pos, limb) in out.chunks_exact_mut(n).enumerate() {
        let m = ctx.limb_modulus(&basis, pos);
        for (o, &c) in limb.iter_mut().zip(coeffs) {
            *o = m.reduce_i64(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_statistics() {
        let mut rng = Prng::from_seed([7; 32]);
        let xs = sample_gaussian(&mut rng, 200_000);
        let mean = xs.iter().sum::<i64>() as f64 / xs.len() as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - SIGMA).abs() < 0.05, "sigma {}", var.sqrt());
        assert!(xs.iter().all(|x| x.abs() <= 39));
    }

    #[test]
    fn ternary_and_sparse() {
        let mut rng = Prng::from_seed([1; 32]);
        let t = sample_ternary(&mut rng, 30_000);
        for v in [-1i8, 0, 1] {
            let c = t.iter().filter(|&&x| x == v).count();
            assert!((c as f64 - 10_000.0).abs() < 400.0, "{v}: {c}");
        }
        let s = sample_sparse_ternary(&mut rng, 1024, 64).unwrap();
        assert_eq!(s.iter().filter(|&&x| x != 0).count(), 64);
        assert!(sample_sparse_ternary(&mut rng, 8, 9).is_err());
    }

    #[test]
    fn uniform_expansion_is_deterministic_and_prefix_consistent() {
        let q = crate::prime::ntt_primes(50, 6, 3).unwrap();
        let p = crate::prime::ntt_primes(40, 6, 1).unwrap();
        let ctx = RnsContext::new(6, &q, &p, crate::NttKind::Fast).unwrap();
        let full = expand_uniform(&[3; 32], &ctx, Basis::qp(3, 1));
        let part = expand_uniform(&[3; 32], &ctx, Basis::qp(1, 1));
        assert_eq!(&full[..64], &part[..64]);
        assert_eq!(&full[3 * 64..], &part[64..]);
        assert_ne!(full, expand_uniform(&[4; 32], &ctx, Basis::qp(3, 1)));
        // Roughly uniform: mean of the top bit.
        let hi = full[..64].iter().filter(|&&x| x > q[0] / 2).count();
        assert!((10..=54).contains(&hi));
    }
}
