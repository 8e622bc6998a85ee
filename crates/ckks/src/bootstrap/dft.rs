//! The special DFT of the encoder, factored into sparse matrices for CoeffToSlot and
//! SlotToCoeff.
//!
//! The encoder's embedding of `n` slots is a bit reversal followed by `log2 n` butterfly
//! stages; each stage, as a matrix acting on the slot vector, has three non-zero diagonals
//! (offsets `0` and `±len/2`). Bootstrapping works on bit-reversed coefficients (EvalMod is
//! slot-wise, so the order does not matter), which removes the bit reversal: SlotToCoeff is
//! the product of the stages, CoeffToSlot the product of the inverse stages. Consecutive
//! stages are merged into one [`DiagMatrix`] per level, trading levels against diagonals.

use std::collections::BTreeMap;
use std::f64::consts::PI;

use num_complex::Complex64;

/// A `slots × slots` complex matrix by its non-zero cyclic diagonals:
/// `d_k[i] = M[i][(i + k) mod slots]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DiagMatrix {
    slots: usize,
    diags: BTreeMap<usize, Vec<Complex64>>,
}

const ZERO: Complex64 = Complex64::new(0.0, 0.0);
const ONE: Complex64 = Complex64::new(1.0, 0.0);

impl DiagMatrix {
    /// The identity.
    pub fn identity(slots: usize) -> Self {
        Self {
            slots,
            diags: BTreeMap::from([(0, vec![ONE; slots])]),
        }
    }

    /// A matrix from its diagonals (offsets reduced modulo `slots`; equal offsets add up).
    pub fn from_diagonals(
        slots: usize,
        diags: impl IntoIterator<Item = (usize, Vec<Complex64>)>,
    ) -> Self {
        let mut m = Self {
            slots,
            diags: BTreeMap::new(),
        };
        for (k, d) in diags {
            m.add_diagonal(k % slots, &d);
        }
        m
    }

    fn add_diagonal(&mut self, k: usize, d: &[Complex64]) {
        let e = self
            .diags
            .entry(k)
            .or_insert_with(|| vec![ZERO; self.slots]);
        for (x, y) in e.iter_mut().zip(d) {
            *x += y;
        }
    }

    /// Dimension.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The diagonals, by offset.
    pub fn diagonals(&self) -> &BTreeMap<usize, Vec<Complex64>> {
        &self.diags
    }

    /// `self · rhs` (apply `rhs` first).
    pub fn mul(&self, rhs: &Self) -> Self {
        assert_eq!(self.slots, rhs.slots, "dimension mismatch");
        let n = self.slots;
        let mut out = Self {
            slots: n,
            diags: BTreeMap::new(),
        };
        for (&a, da) in &self.diags {
            for (&b, db) in &rhs.diags {
                let d: Vec<Complex64> = (0..n).map(|p| da[p] * db[(p + a) % n]).collect();
                out.add_diagonal((a + b) % n, &d);
            }
        }
        out
    }

    /// Multiplies every entry by `c`.
    pub fn scale(mut self, c: Complex64) -> Self {
        for d in self.diags.values_mut() {
            for x in d.iter_mut() {
                *x *= c;
            }
        }
        self
    }

    /// Multiplies row `i` by `r[i]` (`diag(r) · self`).
    pub fn scale_rows(mut self, r: &[Complex64]) -> Self {
        for d in self.diags.values_mut() {
            for (x, y) in d.iter_mut().zip(r) {
                *x *= y;
            }
        }
        self
    }

    /// The same map on `factor·slots` slots holding `factor` copies of the input (a sparse
    /// ciphertext viewed with more slots): each diagonal repeated periodically.
    pub fn extend_periodic(&self, factor: usize) -> Self {
        let m = self.slots * factor;
        Self {
            slots: m,
            diags: self
                .diags
                .iter()
                .map(|(&k, d)| (k, (0..m).map(|p| d[p % self.slots]).collect()))
                .collect(),
        }
    }

    /// `M·x` in the clear.
    pub fn apply(&self, x: &[Complex64]) -> Vec<Complex64> {
        let n = self.slots;
        let mut out = vec![ZERO; n];
        for (&k, d) in &self.diags {
            for p in 0..n {
                out[p] += d[p] * x[(p + k) % n];
            }
        }
        out
    }

    /// The diagonals with signed offsets in `[0, slots)` as the linear-transform encoder
    /// expects them.
    pub fn to_linear_diagonals(&self) -> BTreeMap<i64, Vec<Complex64>> {
        self.diags
            .iter()
            .map(|(&k, d)| (k as i64, d.clone()))
            .collect()
    }
}

/// `exp(2πi·(5^j mod 4·len)/(4·len))`, the twiddle of butterfly `j` in a stage of length
/// `len` (the encoder's `ksi[(5^j mod lenq)·(2n/lenq)]`, independent of the ring degree).
fn twiddle(j: usize, len: usize) -> Complex64 {
    let lenq = 4 * len as u64;
    let mut g = 1u64;
    for _ in 0..j {
        g = g * 5 % lenq;
    }
    Complex64::from_polar(1.0, 2.0 * PI * g as f64 / lenq as f64)
}

/// Forward (embedding) butterfly stage of length `len` on `slots` slots.
fn forward_stage(slots: usize, len: usize) -> DiagMatrix {
    let h = len / 2;
    let mut d0 = vec![ZERO; slots];
    let mut dp = vec![ZERO; slots];
    let mut dm = vec![ZERO; slots];
    for p in 0..slots {
        let r = p % len;
        if r < h {
            // lo ← x[p] + w·x[p + h]
            d0[p] = ONE;
            dp[p] = twiddle(r, len);
        } else {
            // hi ← x[p − h] − w·x[p]
            d0[p] = -twiddle(r - h, len);
            dm[p] = ONE;
        }
    }
    DiagMatrix::from_diagonals(slots, [(0, d0), (h, dp), (slots - h, dm)])
}

/// Inverse butterfly stage of length `len` (without the final `1/slots`).
fn inverse_stage(slots: usize, len: usize) -> DiagMatrix {
    let h = len / 2;
    let mut d0 = vec![ZERO; slots];
    let mut dp = vec![ZERO; slots];
    let mut dm = vec![ZERO; slots];
    for p in 0..slots {
        let r = p % len;
        if r < h {
            // lo ← x[p] + x[p + h]
            d0[p] = ONE;
            dp[p] = ONE;
        } else {
            // hi ← (x[p − h] − x[p])·conj(w)
            let w = twiddle(r - h, len).conj();
            d0[p] = -w;
            dm[p] = w;
        }
    }
    DiagMatrix::from_diagonals(slots, [(0, d0), (h, dp), (slots - h, dm)])
}

/// Splits `stages` into `groups` consecutive runs, the longer runs first.
fn split(stages: Vec<DiagMatrix>, groups: usize) -> Vec<DiagMatrix> {
    let count = stages.len();
    let groups = groups.clamp(1, count.max(1));
    let mut out = Vec::with_capacity(groups);
    let mut it = stages.into_iter();
    for g in 0..groups {
        let size = count / groups + usize::from(g < count % groups);
        // Stages in application order: the product applies the earlier ones first.
        let merged = it.by_ref().take(size).fold(None::<DiagMatrix>, |acc, s| {
            Some(match acc {
                None => s,
                Some(a) => s.mul(&a),
            })
        });
        if let Some(m) = merged {
            out.push(m);
        }
    }
    out
}

/// CoeffToSlot factors, in application order: `slots` complex slots → `slots ×` the
/// bit-reversed coefficient vector (`v` of the encoder, `v[i] = c_{i·gap} + i·c_{i·gap+n/2}`),
/// merged into `levels` matrices.
pub fn coeff_to_slot_factors(slots: usize, levels: usize) -> Vec<DiagMatrix> {
    let mut stages = Vec::new();
    let mut len = slots;
    while len >= 2 {
        stages.push(inverse_stage(slots, len));
        len /= 2;
    }
    if stages.is_empty() {
        stages.push(DiagMatrix::identity(slots));
    }
    split(stages, levels)
}

/// SlotToCoeff factors, in application order: the bit-reversed coefficient vector → the
/// slots of its embedding, merged into `levels` matrices.
pub fn slot_to_coeff_factors(slots: usize, levels: usize) -> Vec<DiagMatrix> {
    let mut stages = Vec::new();
    let mut len = 2;
    while len <= slots {
        stages.push(forward_stage(slots, len));
        len *= 2;
    }
    if stages.is_empty() {
        stages.push(DiagMatrix::identity(slots));
    }
    split(stages, levels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoder;

    fn bitrev(v: &[Complex64]) -> Vec<Complex64> {
        let bits = v.len().trailing_zeros();
        (0..v.len())
            .map(|i| v[hecnn_ring::ntt::bit_reverse(i, bits)])
            .collect()
    }

    fn sample(n: usize) -> Vec<Complex64> {
        (0..n)
            .map(|i| Complex64::new((i as f64 * 0.731).sin(), (i as f64 * 0.377).cos()))
            .collect()
    }

    /// The factors reproduce the encoder exactly (up to bit reversal and `1/slots`), for
    /// full and sparse slot counts and every grouping.
    #[test]
    fn factors_match_the_encoder() {
        let n_ring = 64;
        let enc = Encoder::new(n_ring);
        for slots in [1usize, 2, 4, 8, 16, 32] {
            let gap = n_ring / 2 / slots;
            let w = sample(slots);
            let coeffs = enc.embed_inverse(&w, slots).unwrap();
            let v: Vec<Complex64> = (0..slots)
                .map(|i| Complex64::new(coeffs[i * gap], coeffs[i * gap + n_ring / 2]))
                .collect();
            for levels in 1..=slots.trailing_zeros().max(1) as usize {
                let mut x = w.clone();
                for f in coeff_to_slot_factors(slots, levels) {
                    x = f.apply(&x);
                }
                let want = bitrev(&v);
                for (a, b) in x.iter().zip(&want) {
                    assert!(
                        (a / slots as f64 - b).norm() < 1e-12,
                        "CtS {slots}/{levels}"
                    );
                }
                let mut y = want.clone();
                for f in slot_to_coeff_factors(slots, levels) {
                    y = f.apply(&y);
                }
                for (a, b) in y.iter().zip(&w) {
                    assert!((a - b).norm() < 1e-12, "StC {slots}/{levels}");
                }
            }
        }
    }

    #[test]
    fn merged_factors_have_few_diagonals() {
        let f = coeff_to_slot_factors(1 << 10, 3);
        assert_eq!(f.len(), 3);
        for m in &f {
            // 4 or 3 merged stages: at most 2^(k+1) − 1 diagonals.
            assert!(m.diagonals().len() <= 31, "{}", m.diagonals().len());
        }
    }

    #[test]
    fn periodic_extension_acts_on_copies() {
        let m = coeff_to_slot_factors(8, 2).remove(0);
        let x = sample(8);
        let x2: Vec<Complex64> = x.iter().chain(&x).copied().collect();
        let y = m.apply(&x);
        let y2 = m.extend_periodic(2).apply(&x2);
        for p in 0..16 {
            assert!((y2[p] - y[p % 8]).norm() < 1e-12);
        }
    }
}
