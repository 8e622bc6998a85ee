//! Noise flooding of decryptions that leave the key owner (IND-CPA-D security).
//!
//! A CKKS decryption returns `m + e`, and the noise `e` is a function of the secret key:
//! whoever reads decryptions of ciphertexts it knows (an edge node that encrypted its own
//! input, a consumer colluding with one) can solve for the key from a couple of them (Li and
//! Micciancio, EUROCRYPT 2021). Adding to `c_0 + c_1·s` a fresh Gaussian `z` of standard
//! deviation
//!
//! ```text
//! σ = √(12·τ) · 2^(s/2) · E
//! ```
//!
//! where `E` bounds the ciphertext's noise in the coefficient domain, `τ` is the number of
//! decryptions an adversary may see and `s` the statistical security in bits, makes the
//! decryptions statistically independent of the key (Li, Micciancio, Schultz and Sorrell,
//! CRYPTO 2022; the formula OpenFHE documents for its `NOISE_FLOODING_DECRYPT` mode). The
//! price is precision: the output loses `log2(σ / E)` bits, reported by
//! [`Flooding::cost_bits`].
//!
//! `E` must bound the noise of *every* ciphertext decrypted under the setting, not the
//! average one (Guo et al., USENIX Security 2024, recover keys from flooding sized on
//! average-case estimates): callers derive it from a worst-case measurement with a margin
//! ([`Flooding::noise_log2_from_slot_error`]) and refuse results noisier than that.

use hecnn_ring::{Backend, Basis, Coeff, Prng, RnsPoly, sampler};

use crate::{Ciphertext, CkksError, CkksParams, Complex64, Decryptor, Encoder, Plaintext};

/// Statistical security of the flooding by default (bits): an adversary's advantage is at
/// most `2^-30` (the level OpenFHE recommends as the least).
pub const DEFAULT_STATISTICAL_BITS: u32 = 30;

/// Decryptions an adversary may see under one key by default, as a power of two (about a
/// million results per model key).
pub const DEFAULT_QUERIES_LOG2: u32 = 20;

/// The widest flooding the sampler draws exactly: every integer below `2^52` is an `f64`,
/// so `round(σ·g)` reaches every integer for the Gaussians `|g| < 16` it can produce.
pub const MAX_SIGMA_LOG2: f64 = 48.0;

/// Bits of the modulus kept clear above the flooding's standard deviation, so that neither
/// the flooding's tail nor the message wraps modulo `Q` at the output level: a flooding is
/// refused unless `log2 σ + WRAP_MARGIN_BITS ≤ log2 Q − 1` ([`Decryptor::decrypt_flooded`]).
pub const WRAP_MARGIN_BITS: f64 = 8.0;

/// How a decryption is flooded: the statistical security, the number of decryptions it must
/// withstand and the noise bound it hides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flooding {
    statistical_bits: u32,
    queries_log2: u32,
    noise_log2: f64,
}

impl Flooding {
    /// Flooding that hides noise up to `2^noise_log2` (coefficient domain) over
    /// `2^queries_log2` decryptions with `statistical_bits` of security.
    ///
    /// # Errors
    /// [`CkksError::InvalidArgument`] for statistical security outside 1..=128, more than
    /// 2^64 queries, a non-finite or negative noise bound, or a standard deviation above
    /// `2^`[`MAX_SIGMA_LOG2`].
    pub fn new(
        statistical_bits: u32,
        queries_log2: u32,
        noise_log2: f64,
    ) -> Result<Self, CkksError> {
        if !(1..=128).contains(&statistical_bits) {
            return Err(CkksError::InvalidArgument {
                what: "flooding statistical security outside 1..=128 bits",
            });
        }
        if queries_log2 > 64 {
            return Err(CkksError::InvalidArgument {
                what: "flooding for more than 2^64 decryptions",
            });
        }
        if !(noise_log2.is_finite() && noise_log2 >= 0.0) {
            return Err(CkksError::InvalidArgument {
                what: "a flooding noise bound below 1 or not finite",
            });
        }
        let f = Self {
            statistical_bits,
            queries_log2,
            noise_log2,
        };
        if f.sigma_log2() > MAX_SIGMA_LOG2 {
            return Err(CkksError::InvalidArgument {
                what: "flooding wider than 2^48: the noise bound leaves no precision to flood",
            });
        }
        Ok(f)
    }

    /// Flooding with the default security and query count for the noise bound `2^noise_log2`.
    ///
    /// # Errors
    /// See [`Flooding::new`].
    pub fn with_defaults(noise_log2: f64) -> Result<Self, CkksError> {
        Self::new(DEFAULT_STATISTICAL_BITS, DEFAULT_QUERIES_LOG2, noise_log2)
    }

    /// `log2 E` for a ciphertext whose decoded slots are off by at most `max_slot_error` in
    /// their real and imaginary parts, at scale `scale`.
    ///
    /// For the power-of-two cyclotomic ring the coefficient norm is bounded by the slots':
    /// `‖e‖_∞ ≤ ‖e‖_2 = ‖σ(e)‖_2 / √N ≤ max_j |σ(e)_j| ≤ √2 · max_slot_error · scale`.
    /// The bound holds whatever the slots hold, so it is as good as `max_slot_error` is: a
    /// maximum over every slot of the worst inputs, with a margin.
    pub fn noise_log2_from_slot_error(max_slot_error: f64, scale: f64) -> f64 {
        (std::f64::consts::SQRT_2 * max_slot_error * scale)
            .max(1.0)
            .log2()
    }

    /// Statistical security (bits).
    pub fn statistical_bits(&self) -> u32 {
        self.statistical_bits
    }

    /// `log2 τ`: the decryptions it withstands.
    pub fn queries_log2(&self) -> u32 {
        self.queries_log2
    }

    /// `log2 E`: the noise bound it hides.
    pub fn noise_log2(&self) -> f64 {
        self.noise_log2
    }

    /// `log2 σ = log2 √(12·τ) + s/2 + log2 E`.
    pub fn sigma_log2(&self) -> f64 {
        0.5 * (12f64.log2() + f64::from(self.queries_log2))
            + 0.5 * f64::from(self.statistical_bits)
            + self.noise_log2
    }

    /// Bits of precision the flooding costs: `log2(σ / E)`.
    pub fn cost_bits(&self) -> f64 {
        self.sigma_log2() - self.noise_log2
    }

    /// Standard deviation of the error the flooding adds to the real part of each decoded
    /// slot in a ring of degree `n` at scale `scale`: `σ·√(n/2) / scale`.
    pub fn slot_std(&self, n: usize, scale: f64) -> f64 {
        self.sigma_log2().exp2() * (n as f64 / 2.0).sqrt() / scale
    }
}

/// `log2` of the largest noise coefficient of a decrypted plaintext whose exact slots are
/// real, estimated from its imaginary parts (the heuristic of Costache et al., which
/// OpenFHE's noise-estimation mode uses): the slots `i·Im(z_j)` are the embedding of the
/// noise's antisymmetric half `(e − conj(e))/2`, whose largest coefficient, doubled,
/// estimates `‖e‖_∞`. The estimate is a function of the ciphertext's noise, hence of the
/// secret key: its value must never leave the key's holder. Run on ciphertexts being
/// released (as `hecnn_nn::protect::decrypt_output_flooded` does, to refuse results noisier
/// than the flooding's bound), whether it passes is itself one bit about `c0 + c1·s` that
/// whoever chose the ciphertext learns from the outcome: the caller must bound how many
/// refusals it serves (the owner service suspends a model's releases after a few), and
/// reveal nothing but the outcome. For calibration, measure it with a key of its own on
/// representative inputs.
///
/// # Errors
/// Backend failures.
pub fn estimate_noise_log2<B: Backend>(
    encoder: &Encoder,
    be: &B,
    params: &CkksParams,
    pt: &Plaintext<B>,
) -> Result<f64, CkksError> {
    let slots = encoder.decode(be, params, pt)?;
    let anti: Vec<Complex64> = slots.iter().map(|z| Complex64::new(0.0, z.im)).collect();
    let coeffs = encoder.embed_inverse(&anti, pt.slots())?;
    let largest = coeffs.iter().fold(0.0f64, |m, c| m.max(c.abs())) * pt.scale();
    Ok((2.0 * largest).max(1.0).log2())
}

/// Independent rounded Gaussians of standard deviation `2^sigma_log2` (Box–Muller on 53-bit
/// uniforms from the cryptographic generator). Their magnitudes stay below `2^52`.
fn sample_flooding(rng: &mut Prng, n: usize, sigma_log2: f64) -> Vec<i64> {
    const UNIT: f64 = 1.0 / (1u64 << 53) as f64;
    let sigma = sigma_log2.exp2();
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 * UNIT; // (0, 1]
        let u2 = (rng.next_u64() >> 11) as f64 * UNIT; // [0, 1)
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        out.push((sigma * r * cos).round() as i64);
        out.push((sigma * r * sin).round() as i64);
    }
    out.truncate(n);
    out
}

impl<B: Backend> Decryptor<'_, B> {
    /// Decrypts with noise flooding (module docs): `c_0 + c_1·s + z`, `z` a fresh Gaussian
    /// of the flooding's standard deviation in every coefficient.
    ///
    /// # Errors
    /// [`CkksError::FloodingTooWide`] when the flooding's tail would wrap the modulus at the
    /// ciphertext's level; backend failures.
    pub fn decrypt_flooded(
        &self,
        ct: &Ciphertext<B>,
        flooding: &Flooding,
        rng: &mut Prng,
    ) -> Result<Plaintext<B>, CkksError> {
        self.flood(self.decrypt(ct)?, flooding, rng)
    }

    /// Floods a plaintext this decryptor decrypted (`+ z`, as [`Self::decrypt_flooded`]):
    /// for an owner who inspects a decryption (its noise, against a bound) before it
    /// releases the flooded values, without decrypting twice. The unflooded plaintext is
    /// consumed: only the flooded one leaves.
    ///
    /// # Errors
    /// [`CkksError::FloodingTooWide`] when the flooding's tail would wrap the modulus of the
    /// plaintext's basis; backend failures.
    pub fn flood(
        &self,
        mut pt: Plaintext<B>,
        flooding: &Flooding,
        rng: &mut Prng,
    ) -> Result<Plaintext<B>, CkksError> {
        let inner = self.inner();
        let (params, be) = (inner.params(), inner.backend());
        let ctx = params.ctx();
        let basis: Basis = pt.poly().basis();
        let log_q: f64 = (0..basis.len())
            .map(|pos| (ctx.limb_modulus(&basis, pos).value() as f64).log2())
            .sum();
        if flooding.sigma_log2() + WRAP_MARGIN_BITS > log_q - 1.0 {
            return Err(CkksError::FloodingTooWide {
                sigma_log2: flooding.sigma_log2(),
                log_q,
            });
        }
        let z = zeroize::Zeroizing::new(sample_flooding(rng, ctx.n(), flooding.sigma_log2()));
        let limbs = zeroize::Zeroizing::new(sampler::small_to_rns(ctx, basis, &z));
        let mut z = RnsPoly::<B, Coeff>::from_host(be, ctx, basis, &limbs)?.into_eval(be, ctx);
        pt.poly_mut().add_assign(be, ctx, &z)?;
        be.zeroize(z.buffer_mut());
        Ok(pt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_follows_the_published_formula() {
        let f = Flooding::new(30, 0, 10.0).unwrap();
        // √12 · 2^15 · 2^10
        assert!((f.sigma_log2() - (12f64.sqrt().log2() + 25.0)).abs() < 1e-12);
        let g = Flooding::new(30, 20, 10.0).unwrap();
        assert!((g.cost_bits() - f.cost_bits() - 10.0).abs() < 1e-12);
        assert!(Flooding::new(0, 0, 1.0).is_err());
        assert!(Flooding::new(30, 65, 1.0).is_err());
        assert!(Flooding::new(30, 0, f64::NAN).is_err());
        assert!(Flooding::new(30, 0, -1.0).is_err());
        assert!(Flooding::new(128, 64, 1.0).is_err(), "σ above 2^48");
    }

    #[test]
    fn the_sampler_draws_the_asked_standard_deviation() {
        let mut rng = Prng::from_seed([3; 32]);
        for log_sigma in [0.0, 20.0, 47.0] {
            let xs = sample_flooding(&mut rng, 100_001, log_sigma);
            assert_eq!(xs.len(), 100_001);
            let sigma = f64::exp2(log_sigma);
            let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / xs.len() as f64;
            assert!(
                mean.abs() < 0.02 * sigma.max(1.0),
                "mean {mean} at 2^{log_sigma}"
            );
            // The rounding adds 1/12 to the variance.
            let want = (sigma * sigma + 1.0 / 12.0).sqrt();
            assert!(
                (var.sqrt() / want - 1.0).abs() < 0.01,
                "σ {} vs {want}",
                var.sqrt()
            );
            // Low bits are random too: odd and even values alike.
            let odd = xs.iter().filter(|&&x| x & 1 == 1).count() as f64 / xs.len() as f64;
            if log_sigma > 4.0 {
                assert!((odd - 0.5).abs() < 0.01, "odd fraction {odd}");
            }
        }
    }
}
