//! The CKKS encoder: the canonical embedding evaluated with the "special" FFT over the
//! rotation group `⟨5⟩ ⊂ Z_2n^*`, for full (`n/2`) or sparse (fewer, power-of-two) slot
//! counts. Slot `j` holds the value at `ζ^(5^j)`, `ζ = exp(iπ/n)`, so the automorphism
//! `X ↦ X^5` rotates slots left by one.

use std::f64::consts::PI;

use hecnn_ring::{Backend, Basis, Coeff, RnsPoly, crt};
use num_complex::Complex64;

use crate::{CkksError, CkksParams, Plaintext};

/// Precomputed tables for encoding and decoding.
#[derive(Debug, Clone)]
pub struct Encoder {
    n: usize,
    /// `5^j mod 2n` for `j < n/2`.
    rot_group: Vec<usize>,
    /// `exp(2πi·k / 2n)` for `k ≤ 2n`.
    ksi: Vec<Complex64>,
}

fn bit_reverse_in_place(v: &mut [Complex64]) {
    let n = v.len();
    let bits = n.trailing_zeros();
    for i in 0..n {
        let j = hecnn_ring::ntt::bit_reverse(i, bits);
        if i < j {
            v.swap(i, j);
        }
    }
}

impl Encoder {
    /// Builds the tables for ring degree `n`.
    pub fn new(n: usize) -> Self {
        let m = 2 * n;
        let mut rot_group = Vec::with_capacity(n / 2);
        let mut g = 1usize;
        for _ in 0..n / 2 {
            rot_group.push(g);
            g = g * 5 % m;
        }
        let ksi = (0..=m)
            .map(|k| Complex64::from_polar(1.0, 2.0 * PI * k as f64 / m as f64))
            .collect();
        Self { n, rot_group, ksi }
    }

    /// Evaluates the embedding (coefficients → slots), in place, `v.len()` slots.
    fn fft_special(&self, v: &mut [Complex64]) {
        let size = v.len();
        let m = 2 * self.n;
        bit_reverse_in_place(v);
        let mut len = 2;
        while len <= size {
            let (lenh, lenq) = (len >> 1, len << 2);
            for chunk in v.chunks_exact_mut(len) {
                let (lo, hi) = chunk.split_at_mut(lenh);
                for j in 0..lenh {
                    let idx = (self.rot_group[j] % lenq) * (m / lenq);
                    let u = lo[j];
                    let w = hi[j] * self.ksi[idx];
                    lo[j] = u + w;
                    hi[j] = u - w;
                }
            }
            len <<= 1;
        }
    }

    /// Inverse of [`Encoder::fft_special`] (slots → coefficients), in place.
    fn fft_special_inv(&self, v: &mut [Complex64]) {
        let size = v.len();
        let m = 2 * self.n;
        let mut len = size;
        while len >= 2 {
            let (lenh, lenq) = (len >> 1, len << 2);
            for chunk in v.chunks_exact_mut(len) {
                let (lo, hi) = chunk.split_at_mut(lenh);
                for j in 0..lenh {
                    let idx = (lenq - (self.rot_group[j] % lenq)) * (m / lenq);
                    let u = lo[j] + hi[j];
                    let w = (lo[j] - hi[j]) * self.ksi[idx];
                    lo[j] = u;
                    hi[j] = w;
                }
            }
            len >>= 1;
        }
        bit_reverse_in_place(v);
        let inv = 1.0 / size as f64;
        for x in v.iter_mut() {
            *x *= inv;
        }
    }

    fn check_slots(&self, slots: usize) -> Result<(), CkksError> {
        if !slots.is_power_of_two() || slots > self.n / 2 {
            return Err(CkksError::InvalidSlots {
                slots,
                max: self.n / 2,
            });
        }
        Ok(())
    }

    /// Real coefficients (unscaled) of the polynomial whose embedding is `values`, padded
    /// with zeros to `slots` slots.
    pub fn embed_inverse(&self, values: &[Complex64], slots: usize) -> Result<Vec<f64>, CkksError> {
        self.check_slots(slots)?;
        if values.len() > slots {
            return Err(CkksError::TooManyValues {
                values: values.len(),
                slots,
            });
        }
        let mut v = vec![Complex64::new(0.0, 0.0); slots];
        v[..values.len()].copy_from_slice(values);
        self.fft_special_inv(&mut v);
        let gap = self.n / 2 / slots;
        let mut coeffs = vec![0.0; self.n];
        for (i, z) in v.iter().enumerate() {
            coeffs[i * gap] = z.re;
            coeffs[i * gap + self.n / 2] = z.im;
        }
        Ok(coeffs)
    }

    /// The embedding of real coefficients, read at `slots` slots.
    pub fn embed(&self, coeffs: &[f64], slots: usize) -> Result<Vec<Complex64>, CkksError> {
        self.check_slots(slots)?;
        let gap = self.n / 2 / slots;
        let mut v: Vec<Complex64> = (0..slots)
            .map(|i| Complex64::new(coeffs[i * gap], coeffs[i * gap + self.n / 2]))
            .collect();
        self.fft_special(&mut v);
        Ok(v)
    }

    /// Encodes complex values into a plaintext at `level` with the given `scale`
    /// (coefficients `round(scale · embed⁻¹(values))`).
    ///
    /// # Errors
    /// Invalid slot counts or levels, too many values, a scale that makes the coefficients
    /// overflow 127 bits, non-finite inputs.
    pub fn encode<B: Backend>(
        &self,
        be: &B,
        params: &CkksParams,
        values: &[Complex64],
        level: usize,
        scale: f64,
        slots: usize,
    ) -> Result<Plaintext<B>, CkksError> {
        let ctx = params.rlwe().ctx();
        if level > params.max_level() {
            return Err(CkksError::LevelTooHigh {
                level,
                max: params.max_level(),
            });
        }
        if !(scale.is_finite() && scale >= 1.0) {
            return Err(CkksError::InvalidScale { scale });
        }
        if values
            .iter()
            .any(|z| !(z.re.is_finite() && z.im.is_finite()))
        {
            return Err(CkksError::NonFinite);
        }
        let coeffs = self.embed_inverse(values, slots)?;
        let basis = Basis::q(level + 1);
        let poly = scaled_to_rns(be, ctx, basis, &coeffs, scale)?.into_eval(be, ctx);
        Ok(Plaintext::new(poly, scale, slots))
    }

    /// Encodes real values (imaginary parts zero).
    ///
    /// # Errors
    /// See [`Encoder::encode`].
    pub fn encode_real<B: Backend>(
        &self,
        be: &B,
        params: &CkksParams,
        values: &[f64],
        level: usize,
        scale: f64,
        slots: usize,
    ) -> Result<Plaintext<B>, CkksError> {
        let z: Vec<Complex64> = values.iter().map(|&x| Complex64::new(x, 0.0)).collect();
        self.encode(be, params, &z, level, scale, slots)
    }

    /// Decodes a plaintext to its complex slot values.
    ///
    /// # Errors
    /// Backend failures.
    pub fn decode<B: Backend>(
        &self,
        be: &B,
        params: &CkksParams,
        pt: &Plaintext<B>,
    ) -> Result<Vec<Complex64>, CkksError> {
        let ctx = params.rlwe().ctx();
        let poly = pt.poly().clone().into_coeff(be, ctx);
        let host = poly.to_host(be, ctx)?;
        let mut coeffs = crt::to_centered_f64(ctx, poly.basis(), &host);
        let inv = 1.0 / pt.scale();
        for c in coeffs.iter_mut() {
            *c *= inv;
        }
        self.embed(&coeffs, pt.slots())
    }

    /// Decodes the real parts.
    ///
    /// # Errors
    /// Backend failures.
    pub fn decode_real<B: Backend>(
        &self,
        be: &B,
        params: &CkksParams,
        pt: &Plaintext<B>,
    ) -> Result<Vec<f64>, CkksError> {
        Ok(self.decode(be, params, pt)?.iter().map(|z| z.re).collect())
    }
}

/// `round(scale·x)` for every coefficient, reduced into each limb of `basis`.
pub(crate) fn scaled_to_rns<B: Backend>(
    be: &B,
    ctx: &hecnn_ring::RnsContext,
    basis: Basis,
    coeffs: &[f64],
    scale: f64,
) -> Result<RnsPoly<B, Coeff>, CkksError> {
    let n = ctx.n();
    let too_big = |c: f64| {
        let v = (c * scale).round().abs();
        v.is_nan() || v >= 2f64.powi(126)
    };
    if let Some(&worst) = coeffs.iter().find(|&&c| too_big(c)) {
        return Err(CkksError::Overflow {
            value: worst,
            scale,
        });
    }
    let max = coeffs
        .iter()
        .fold(0f64, |m, &c| m.max((c * scale).round().abs()));
    // Below 2^63 (every network weight at a CKKS scale) the rounded coefficients are
    // reduced from i64; wider ones (bootstrapping's transforms at 60-bit scales times large
    // entries) from i128.
    let fill: &mut dyn FnMut(&mut [u64]) = if max < 2f64.powi(63) {
        let ints: Vec<i64> = coeffs.iter().map(|&c| (c * scale).round() as i64).collect();
        &mut move |out: &mut [u64]| {
            for (pos, limb) in out.chunks_exact_mut(n).enumerate() {
                let m = ctx.limb_modulus(&basis, pos);
                for (o, &v) in limb.iter_mut().zip(&ints) {
                    *o = m.reduce_i64(v);
                }
            }
        }
    } else {
        let ints: Vec<i128> = coeffs
            .iter()
            .map(|&c| (c * scale).round() as i128)
            .collect();
        &mut move |out: &mut [u64]| {
            for (pos, limb) in out.chunks_exact_mut(n).enumerate() {
                let m = ctx.limb_modulus(&basis, pos);
                for (o, &v) in limb.iter_mut().zip(&ints) {
                    *o = m.reduce_i128(v);
                }
            }
        }
    };
    // Reduced by construction: no need to validate again.
    let buf = be.fill_buffer(basis.len() * n, fill)?;
    Ok(RnsPoly::from_buffer(buf, basis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_fft_matches_definition() {
        let n = 64;
        let enc = Encoder::new(n);
        for slots in [1usize, 4, 32] {
            let vals: Vec<Complex64> = (0..slots)
                .map(|i| Complex64::new(i as f64 * 0.1 - 0.7, 0.3 - i as f64 * 0.05))
                .collect();
            let coeffs = enc.embed_inverse(&vals, slots).unwrap();
            // Evaluate the polynomial at ζ^(5^j) directly.
            for (j, want) in vals.iter().enumerate() {
                let e = enc.rot_group[j];
                let mut acc = Complex64::new(0.0, 0.0);
                for (k, &c) in coeffs.iter().enumerate() {
                    acc += Complex64::from_polar(c, PI * (e * k) as f64 / n as f64);
                }
                assert!(
                    (acc - want).norm() < 1e-12,
                    "slots {slots} j {j}: {acc} vs {want}"
                );
            }
            let back = enc.embed(&coeffs, slots).unwrap();
            for (a, b) in back.iter().zip(&vals) {
                assert!((a - b).norm() < 1e-12);
            }
        }
        assert!(enc.embed_inverse(&[], 3).is_err());
        assert!(
            enc.embed_inverse(&[Complex64::new(1.0, 0.0); 5], 4)
                .is_err()
        );
    }
}
