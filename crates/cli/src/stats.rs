//! Small measurement helpers shared by the commands.

use crate::agreement_record::ImageOutcome;
use std::time::Instant;

/// Precision of `got` against `want` in bits: `(min, mean)` = `(-log2 max|err|, -log2 mean|err|)`.
pub fn precision(want: &[f64], got: &[f64]) -> (f64, f64) {
    let errs: Vec<f64> = want.iter().zip(got).map(|(a, b)| (a - b).abs()).collect();
    bits_of(&errs)
}

/// Precision of complex `got` against `want` in bits: `(min, mean, median)`.
pub fn precision_complex(
    want: &[hecnn_ckks::Complex64],
    got: &[hecnn_ckks::Complex64],
) -> (f64, f64, f64) {
    let mut errs: Vec<f64> = want.iter().zip(got).map(|(a, b)| (a - b).norm()).collect();
    let (min, mean) = bits_of(&errs);
    errs.sort_by(f64::total_cmp);
    let median = errs.get(errs.len() / 2).copied().unwrap_or(0.0);
    (min, mean, bits(median))
}

fn bits(e: f64) -> f64 {
    -(e.max(f64::MIN_POSITIVE)).log2()
}

fn bits_of(errs: &[f64]) -> (f64, f64) {
    let max = errs.iter().copied().fold(0.0, f64::max);
    let mean = errs.iter().sum::<f64>() / errs.len().max(1) as f64;
    (bits(max), bits(mean))
}

/// Times `f` `reps` times after one warm-up; returns (median, min) in milliseconds.
pub fn time_ms<T, E>(reps: usize, mut f: impl FnMut() -> Result<T, E>) -> Result<(f64, f64), E> {
    f()?;
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = Instant::now();
            f().map(|_| s.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t[0]))
}

pub use hecnn_nn::compile::human_bytes;

/// Reproducible pseudo-random values in `[-1, 1]` for demo and benchmark inputs (a seeded
/// ChaCha20 stream; inputs, not keys).
pub fn uniform_values(seed: u64, count: usize) -> Vec<f64> {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = hecnn_ring::Prng::from_seed(s);
    (0..count)
        .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        .collect()
}

/// Encrypted against cleartext predictions over a data set, image by image.
#[derive(Debug, Default)]
pub struct Agreement {
    images: usize,
    correct_plain: usize,
    correct_enc: usize,
    agree: usize,
    max_diff: f64,
    out_of_range: usize,
}

impl Agreement {
    /// Records one image's outcome.
    pub fn add(&mut self, o: &ImageOutcome) {
        self.images += 1;
        self.correct_enc += usize::from(o.encrypted == o.label);
        self.correct_plain += usize::from(o.cleartext == o.label);
        self.agree += usize::from(o.encrypted == o.cleartext);
        if o.encrypted == crate::agreement_record::OUT_OF_RANGE {
            self.out_of_range += 1;
        } else if o.max_abs_diff.is_finite() {
            self.max_diff = self.max_diff.max(o.max_abs_diff);
        }
    }

    /// `(images, correct in the clear, correct encrypted, same prediction)`.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.images,
            self.correct_plain,
            self.correct_enc,
            self.agree,
        )
    }

    /// Prints the accuracies, the agreement and the largest logit difference.
    pub fn print(&self) {
        self.print_as("encrypted");
    }

    /// [`Agreement::print`], naming the compared run (`encrypted`, `simulated`).
    pub fn print_as(&self, what: &str) {
        let n = self.images;
        let pct = |k: usize| 100.0 * k as f64 / n.max(1) as f64;
        let (plain, enc, agree) = (self.correct_plain, self.correct_enc, self.agree);
        println!("  cleartext accuracy   {:.2}% ({plain}/{n})", pct(plain));
        println!("  {what:<9} accuracy   {:.2}% ({enc}/{n})", pct(enc));
        println!("  same prediction      {:.2}% ({agree}/{n})", pct(agree));
        println!("  max |{what} − cleartext logit| {:.3e}", self.max_diff);
        if self.out_of_range > 0 {
            println!(
                "  out of range         {} image(s): a value left what the parameters or a refresh hold (counted as disagreeing, left out of the max)",
                self.out_of_range
            );
        }
    }
}
