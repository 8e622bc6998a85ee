//! EvalMod: the scaled modular reduction `t ↦ t mod 1` on `t = I + ε` (`I` an integer with
//! `|I| < K`, `ε` small), approximated by `sin(2πt)/2π`.
//!
//! The input is `x = t/K ∈ [-1, 1]`. A Chebyshev interpolant gives
//! `c_0 ≈ cos(2π(Kx − 1/4)/2^r)`, and `r` double-angle steps `c ← 2c² − 1` turn it into
//! `cos(2π(t − 1/4)) = sin(2πt)`. The last step also multiplies by a constant `κ` (folded into
//! the scale, at no cost), so the output is `κ·sin(2πt)`. Every step lands on a scale chosen
//! backwards from the requested output scale, so scales are exact.

use hecnn_ring::Backend;

use crate::{ChebyshevPoly, Ciphertext, CkksError, Evaluator};

/// Largest Chebyshev degree tried (depth 7).
const MAX_DEGREE: usize = 127;

/// The approximation EvalMod evaluates, chosen for an interval bound and a precision.
#[derive(Clone, Debug)]
pub struct EvalModPoly {
    /// `K`: the input satisfies `|t| < K`.
    pub k_bound: f64,
    /// Number of double-angle steps `r`.
    pub double_angles: usize,
    /// The Chebyshev interpolant on `[-1, 1]`.
    pub cheb: ChebyshevPoly,
    /// Largest error of the interpolant on `[-1, 1]` (checked on a dense grid).
    pub approx_error: f64,
}

impl EvalModPoly {
    /// The lowest-degree interpolant of `cos(2π(Kx − 1/4)/2^r)` (or of `sin(2πKx)` when
    /// `r = 0`) whose error is at most `2^-log_error` on `[-1, 1]`.
    ///
    /// # Errors
    /// [`CkksError::InvalidArgument`] if no degree up to 127 reaches the precision.
    pub fn new(k_bound: f64, double_angles: usize, log_error: u32) -> Result<Self, CkksError> {
        let f = move |x: f64| {
            let two_pi = 2.0 * std::f64::consts::PI;
            if double_angles == 0 {
                (two_pi * k_bound * x).sin()
            } else {
                (two_pi * (k_bound * x - 0.25) / (1u64 << double_angles) as f64).cos()
            }
        };
        let target = 2f64.powi(-(log_error as i32));
        let grid: Vec<f64> = (0..=8192).map(|i| -1.0 + i as f64 / 4096.0).collect();
        let mut degree = 7;
        while degree <= MAX_DEGREE {
            let cheb = ChebyshevPoly::interpolate(f, degree, -1.0, 1.0)?;
            let err = grid
                .iter()
                .map(|&x| (cheb.eval(x) - f(x)).abs())
                .fold(0.0, f64::max);
            if err <= target {
                return Ok(Self {
                    k_bound,
                    double_angles,
                    cheb,
                    approx_error: err,
                });
            }
            degree += 2;
        }
        Err(CkksError::InvalidArgument {
            what: "no Chebyshev degree up to 127 reaches the EvalMod precision: raise the \
                   double-angle count or lower the target",
        })
    }

    /// Levels EvalMod consumes.
    pub fn depth(&self) -> usize {
        self.cheb.depth() + self.double_angles
    }

    /// The function EvalMod computes, in the clear (for tests and error estimates).
    pub fn eval(&self, t: f64, kappa: f64) -> f64 {
        let mut c = self.cheb.eval(t / self.k_bound);
        if self.double_angles == 0 {
            return kappa * c;
        }
        for step in 0..self.double_angles {
            let k = if step + 1 == self.double_angles {
                kappa
            } else {
                1.0
            };
            c = k * (2.0 * c * c - 1.0);
        }
        c
    }
}

impl<B: Backend> Evaluator<B> {
    /// `κ·sin(2πt)` for slots `x = t/K`, landing on `out_scale` exactly, `depth()` levels
    /// lower.
    ///
    /// # Errors
    /// Too few levels; missing relinearization key.
    pub(crate) fn eval_mod(
        &self,
        ct: &Ciphertext<B>,
        poly: &EvalModPoly,
        kappa: f64,
        out_scale: f64,
    ) -> Result<Ciphertext<B>, CkksError> {
        let r = poly.double_angles;
        if ct.level() < poly.depth() {
            return Err(CkksError::LevelTooLow {
                needed: poly.depth(),
                have: ct.level(),
            });
        }
        if r == 0 {
            // κ·sin directly: scale the target instead of the coefficients.
            let mut out = self.evaluate_chebyshev(ct, &poly.cheb, Some(out_scale / kappa))?;
            out.set_scale(out_scale);
            return Ok(out);
        }
        let cheb_level = ct.level() - poly.cheb.depth();
        // Only the last double angle carries κ.
        let kappa_of = |k: usize| if k + 1 == r { kappa } else { 1.0 };
        // Backwards: S_k = sqrt(2·κ_k·q·S_{k+1}) for the step rescaling by q at level
        // cheb_level − k.
        let mut scales = vec![0.0; r + 1];
        scales[r] = out_scale;
        for k in (0..r).rev() {
            let q = self.params().q_at(cheb_level - k);
            scales[k] = (2.0 * kappa_of(k) * q * scales[k + 1]).sqrt();
        }
        let mut c = self.evaluate_chebyshev(ct, &poly.cheb, Some(scales[0]))?;
        for k in 0..r {
            let kk = kappa_of(k);
            let s = c.scale();
            let mut sq = self.mul_relin(&c, &c)?;
            // Raw value c²·s², read at scale s²/(2κ): the slots hold 2κc².
            sq.set_scale(s * s / (2.0 * kk));
            self.add_int_assign(&mut sq, -Self::round_to_i128(s * s / 2.0)?)?;
            self.rescale_assign(&mut sq)?;
            c = sq;
        }
        // Exact up to the rounding of S_0 into the Chebyshev target; pin the label.
        c.set_scale(out_scale);
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximates_the_scaled_sine_near_integers() {
        let p = EvalModPoly::new(17.0, 3, 40).unwrap();
        assert!(p.approx_error <= 2f64.powi(-40));
        let kappa = 3.0;
        for i in -16..=16 {
            for eps in [-1e-3, -1e-5, 0.0, 2e-4, 1e-3] {
                let t = i as f64 + eps;
                let want = kappa * (2.0 * std::f64::consts::PI * t).sin();
                assert!((p.eval(t, kappa) - want).abs() < 1e-9, "t = {t}");
            }
        }
    }

    #[test]
    fn more_double_angles_need_lower_degree() {
        let a = EvalModPoly::new(17.0, 2, 40).unwrap();
        let b = EvalModPoly::new(17.0, 4, 40).unwrap();
        assert!(b.cheb.degree() < a.cheb.degree());
        assert!(EvalModPoly::new(1000.0, 0, 46).is_err());
    }
}
