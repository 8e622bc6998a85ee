//! Negacyclic number-theoretic transforms behind our own trait.
//!
//! Convention (shared by every implementation and backend, so results are bit-exact):
//! the forward transform maps coefficients `a_0..a_{n-1}` to evaluations in bit-reversed
//! order, `â[i] = a(ψ^(2·brev(i)+1)) mod q`, where `ψ` is the primitive `2n`-th root of unity
//! stored in the plan ([`Ntt::root`]). Outputs are fully reduced into `[0, q)`, and the inverse
//! transform includes the factor `n^(-1)`.

use std::fmt::Debug;

use crate::{RingError, modulus::Modulus};

/// A negacyclic NTT over `Z_q[X]/(X^n + 1)` for one prime `q`.
pub trait Ntt: Send + Sync + Debug {
    /// Ring degree `n`.
    fn n(&self) -> usize;
    /// The prime modulus.
    fn modulus(&self) -> &Modulus;
    /// The primitive `2n`-th root of unity `ψ` that defines the evaluation points.
    fn root(&self) -> u64;
    /// In-place forward transform (coefficients → bit-reversed evaluations), inputs in `[0, q)`.
    fn forward(&self, a: &mut [u64]);
    /// In-place inverse transform (bit-reversed evaluations → coefficients), includes `n^(-1)`.
    fn inverse(&self, a: &mut [u64]);
}

/// Which NTT implementation a ring context uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NttKind {
    /// Portable scalar Harvey NTT (reference; used for GPU twiddle tables and tests).
    Scalar,
    /// `tfhe-ntt` (AVX-512 / IFMA where the CPU has it): the fastest measured here.
    #[default]
    Fast,
}

/// Reverses the lowest `bits` bits of `x`.
#[inline]
pub fn bit_reverse(x: usize, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        x.reverse_bits() >> (usize::BITS - bits)
    }
}

/// Portable reference NTT: Cooley–Tukey forward / Gentleman–Sande inverse with Harvey's
/// lazy butterflies (values kept in `[0, 4q)` resp. `[0, 2q)`) and Shoup twiddles.
#[derive(Clone, Debug)]
pub struct ScalarNtt {
    q: Modulus,
    n: usize,
    root: u64,
    /// ψ^brev(k), with Shoup factors.
    fwd: Vec<(u64, u64)>,
    /// ψ^-brev(k), with Shoup factors.
    inv: Vec<(u64, u64)>,
    n_inv: (u64, u64),
}

impl ScalarNtt {
    /// Builds tables for degree `n` (a power of two ≥ 2) with the given primitive `2n`-th root.
    ///
    /// # Errors
    /// [`RingError::NoRootOfUnity`] if `root` is not a primitive `2n`-th root of unity mod `q`.
    pub fn new(q: Modulus, n: usize, root: u64) -> Result<Self, RingError> {
        let bad = RingError::NoRootOfUnity {
            modulus: q.value(),
            order: 2 * n as u64,
        };
        if !n.is_power_of_two() || n < 2 || q.pow(root, n as u64) != q.value() - 1 {
            return Err(bad);
        }
        if q.bits() > 61 {
            return Err(bad);
        }
        let log_n = n.trailing_zeros();
        let root_inv = q.inv(root)?;
        let mut fwd = vec![(0, 0); n];
        let mut inv = vec![(0, 0); n];
        let (mut w, mut wi) = (1u64, 1u64);
        for k in 0..n {
            let r = bit_reverse(k, log_n);
            fwd[r] = (w, q.shoup(w));
            inv[r] = (wi, q.shoup(wi));
            w = q.mul(w, root);
            wi = q.mul(wi, root_inv);
        }
        let ni = q.inv(n as u64)?;
        Ok(Self {
            q,
            n,
            root,
            fwd,
            inv,
            n_inv: (ni, q.shoup(ni)),
        })
    }
}

impl Ntt for ScalarNtt {
    fn n(&self) -> usize {
        self.n
    }
    fn modulus(&self) -> &Modulus {
        &self.q
    }
    fn root(&self) -> u64 {
        self.root
    }

    fn forward(&self, a: &mut [u64]) {
        debug_assert_eq!(a.len(), self.n);
        let q = self.q.value();
        let two_q = 2 * q;
        let mut t = self.n;
        let mut m = 1;
        while m < self.n {
            t >>= 1;
            for i in 0..m {
                let (w, ws) = self.fwd[m + i];
                let (lo, hi) = a[2 * i * t..2 * i * t + 2 * t].split_at_mut(t);
                for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
                    let mut u = *x;
                    if u >= two_q {
                        u -= two_q;
                    }
                    let v = self.q.mul_shoup_lazy(*y, w, ws);
                    *x = u + v;
                    *y = u + two_q - v;
                }
            }
            m <<= 1;
        }
        for x in a.iter_mut() {
            let mut v = *x;
            if v >= two_q {
                v -= two_q;
            }
            if v >= q {
                v -= q;
            }
            *x = v;
        }
    }

    fn inverse(&self, a: &mut [u64]) {
        debug_assert_eq!(a.len(), self.n);
        let q = self.q.value();
        let two_q = 2 * q;
        let mut t = 1;
        let mut m = self.n;
        while m > 1 {
            let h = m >> 1;
            for i in 0..h {
                let (w, ws) = self.inv[h + i];
                let (lo, hi) = a[2 * i * t..2 * i * t + 2 * t].split_at_mut(t);
                for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
                    let (u, v) = (*x, *y);
                    let mut s = u + v;
                    if s >= two_q {
                        s -= two_q;
                    }
                    *x = s;
                    *y = self.q.mul_shoup_lazy(u + two_q - v, w, ws);
                }
            }
            t <<= 1;
            m = h;
        }
        let (ni, nis) = self.n_inv;
        for x in a.iter_mut() {
            *x = self.q.mul_shoup(*x, ni, nis);
        }
    }
}

/// NTT backed by `tfhe-ntt` (AVX-512 with IFMA for primes below 2^50, AVX2 or scalar
/// otherwise). Its evaluation order is bit-reversed like [`ScalarNtt`]; its root is read back
/// from the plan so the two implementations agree bit for bit.
#[derive(Clone, Debug)]
pub struct FastNtt {
    plan: tfhe_ntt::prime64::Plan,
    q: Modulus,
    root: u64,
}

impl FastNtt {
    /// Builds a plan for degree `n ≥ 16`.
    ///
    /// # Errors
    /// [`RingError::NoRootOfUnity`] if no plan exists for these parameters.
    pub fn new(q: Modulus, n: usize) -> Result<Self, RingError> {
        let plan =
            tfhe_ntt::prime64::Plan::try_new(n, q.value()).ok_or(RingError::NoRootOfUnity {
                modulus: q.value(),
                order: 2 * n as u64,
            })?;
        // The transform of X at index 0 is ψ^(2·brev(0)+1) = ψ.
        let mut x = vec![0u64; n];
        x[1] = 1;
        plan.fwd(&mut x);
        let root = x[0];
        Ok(Self { plan, q, root })
    }

    /// The root that `tfhe-ntt` uses for this prime and degree.
    pub fn root_of(q: Modulus, n: usize) -> Result<u64, RingError> {
        Ok(Self::new(q, n)?.root)
    }
}

impl Ntt for FastNtt {
    fn n(&self) -> usize {
        self.plan.ntt_size()
    }
    fn modulus(&self) -> &Modulus {
        &self.q
    }
    fn root(&self) -> u64 {
        self.root
    }
    fn forward(&self, a: &mut [u64]) {
        self.plan.fwd(a);
    }
    fn inverse(&self, a: &mut [u64]) {
        self.plan.inv(a);
        self.plan.normalize(a);
    }
}

/// Builds the NTT of the requested kind for `q` and degree `n`, using the canonical root
/// (the one `tfhe-ntt` selects) so that both kinds agree bit for bit.
///
/// # Errors
/// [`RingError::NoRootOfUnity`] if `q ≢ 1 (mod 2n)`.
pub fn build_ntt(kind: NttKind, q: Modulus, n: usize) -> Result<Box<dyn Ntt>, RingError> {
    if n < 16 {
        // tfhe-ntt needs n ≥ 16; tiny rings use the scalar transform with the smallest root.
        let root = crate::prime::min_primitive_root(&q, 2 * n as u64)?;
        return Ok(Box::new(ScalarNtt::new(q, n, root)?));
    }
    let fast = FastNtt::new(q, n)?;
    Ok(match kind {
        NttKind::Fast => Box::new(fast),
        NttKind::Scalar => Box::new(ScalarNtt::new(q, n, fast.root)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_negacyclic(a: &[u64], b: &[u64], q: &Modulus) -> Vec<u64> {
        let n = a.len();
        let mut c = vec![0u64; n];
        for i in 0..n {
            for j in 0..n {
                let p = q.mul(a[i], b[j]);
                if i + j < n {
                    c[i + j] = q.add(c[i + j], p);
                } else {
                    c[i + j - n] = q.sub(c[i + j - n], p);
                }
            }
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn scalar_and_fast_agree_and_multiply(seed in any::<u64>(), log_n in 4u32..=8, bits in prop::sample::select(vec![30u32, 45, 49, 52, 58, 61])) {
            let n = 1usize << log_n;
            let q = Modulus::new(crate::prime::ntt_primes(bits, log_n, 1).unwrap()[0]).unwrap();
            let mut s = seed;
            let mut next = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (s >> 11) % q.value() };
            let a: Vec<u64> = (0..n).map(|_| next()).collect();
            let b: Vec<u64> = (0..n).map(|_| next()).collect();
            let scalar = build_ntt(NttKind::Scalar, q, n).unwrap();
            let fast = build_ntt(NttKind::Fast, q, n).unwrap();
            let (mut fa, mut sa) = (a.clone(), a.clone());
            fast.forward(&mut fa);
            scalar.forward(&mut sa);
            prop_assert_eq!(&fa, &sa);
            // Evaluation points: â[i] = a(ψ^(2 brev(i)+1)).
            let psi = scalar.root();
            for i in [0usize, 1, n - 1] {
                let x = q.pow(psi, 2 * bit_reverse(i, log_n) as u64 + 1);
                let mut acc = 0u64; let mut xp = 1u64;
                for &c in &a { acc = q.add(acc, q.mul(c, xp)); xp = q.mul(xp, x); }
                prop_assert_eq!(sa[i], acc);
            }
            let mut fb = b.clone();
            fast.forward(&mut fb);
            let mut prod: Vec<u64> = fa.iter().zip(&fb).map(|(&x, &y)| q.mul(x, y)).collect();
            let mut prod2 = prod.clone();
            fast.inverse(&mut prod);
            scalar.inverse(&mut prod2);
            prop_assert_eq!(&prod, &prod2);
            prop_assert_eq!(prod, naive_negacyclic(&a, &b, &q));
        }
    }

    #[test]
    fn tiny_ring_uses_scalar() {
        let q = Modulus::new(crate::prime::ntt_primes(30, 3, 1).unwrap()[0]).unwrap();
        let ntt = build_ntt(NttKind::Fast, q, 8).unwrap();
        let a: Vec<u64> = (1..=8).collect();
        let mut b = a.clone();
        ntt.forward(&mut b);
        ntt.inverse(&mut b);
        assert_eq!(a, b);
    }
}
