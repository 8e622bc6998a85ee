//! Test support for hecnn (a dev-dependency only): CKKS precision statistics, toy parameter
//! literals, and deterministic random inputs.

use hecnn_rlwe::{ParamsLiteral, SecretDistribution, SecurityLevel};
use num_complex::Complex64;

/// Precision of a computed vector against the expected one, in bits (`-log2 |error|`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrecisionStats {
    /// `-log2(max |err|)`: the worst slot.
    pub min_bits: f64,
    /// `-log2(mean |err|)`.
    pub mean_bits: f64,
    /// `-log2(median |err|)`.
    pub median_bits: f64,
    /// Largest absolute error.
    pub max_error: f64,
}

impl PrecisionStats {
    /// Statistics of `got` against `want` (complex).
    ///
    /// # Panics
    /// If the lengths differ or are zero (test helper).
    pub fn complex(want: &[Complex64], got: &[Complex64]) -> Self {
        assert_eq!(want.len(), got.len(), "length mismatch");
        assert!(!want.is_empty(), "empty vectors");
        let mut errs: Vec<f64> = want.iter().zip(got).map(|(w, g)| (w - g).norm()).collect();
        errs.sort_by(f64::total_cmp);
        let max = errs[errs.len() - 1];
        let mean = errs.iter().sum::<f64>() / errs.len() as f64;
        let median = errs[errs.len() / 2];
        let bits = |e: f64| -(e.max(f64::MIN_POSITIVE)).log2();
        Self {
            min_bits: bits(max),
            mean_bits: bits(mean),
            median_bits: bits(median),
            max_error: max,
        }
    }

    /// Statistics of real vectors.
    ///
    /// # Panics
    /// See [`PrecisionStats::complex`].
    pub fn real(want: &[f64], got: &[f64]) -> Self {
        let w: Vec<Complex64> = want.iter().map(|&x| Complex64::new(x, 0.0)).collect();
        let g: Vec<Complex64> = got.iter().map(|&x| Complex64::new(x, 0.0)).collect();
        Self::complex(&w, &g)
    }

    /// Panics with a readable message unless both thresholds hold.
    ///
    /// # Panics
    /// When `min_bits < min` or `mean_bits < mean`.
    pub fn assert_at_least(&self, what: &str, min: f64, mean: f64) {
        assert!(
            self.min_bits >= min && self.mean_bits >= mean,
            "{what}: precision min {:.1} / mean {:.1} bits, wanted ≥ {min} / {mean} (max error {:e})",
            self.min_bits,
            self.mean_bits,
            self.max_error
        );
    }
}

/// Toy CKKS parameters for fast logic tests: **insecure** (security unchecked), uniform
/// ternary secret, `levels` 40-bit primes above a 55-bit base prime, two 55-bit special primes.
pub fn toy_literal(log_n: u32, levels: usize) -> ParamsLiteral {
    let mut log_q = vec![55];
    log_q.extend(std::iter::repeat_n(40, levels));
    ParamsLiteral {
        log_n,
        log_q,
        log_p: vec![55, 55],
        dnum: None,
        secret: SecretDistribution::Ternary,
        security: SecurityLevel::UncheckedForReproduction,
    }
}

/// Ring sizes for scheme tests; `HECNN_TEST_PROFILE=short` keeps only the smallest.
pub fn test_log_ns() -> Vec<u32> {
    match std::env::var("HECNN_TEST_PROFILE").as_deref() {
        Ok("short") => vec![10],
        Ok("long") => vec![12, 14],
        _ => vec![10, 12],
    }
}

/// Deterministic pseudo-random values in `[-1, 1]` (SplitMix64).
pub fn uniform_values(seed: u64, count: usize) -> Vec<f64> {
    let mut s = seed;
    (0..count)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}
