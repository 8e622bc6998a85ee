//! The RNS kernels of BFV that the ring layer does not provide: base conversion between two
//! sets of primes, the scale-and-round `⌊t·x/Q⌉` of the multiplication, and the exact
//! scale-and-round of decryption.
//!
//! # Multiplication: Halevi–Polyakov–Shoup (HPS, CT-RSA 2019), why not BEHZ
//!
//! BFV multiplication needs `⌊(t/Q)·(a ⊗ b)⌉ mod Q` where the tensor product of the
//! *integer* (centered) ciphertext components is far larger than `Q`. We follow HPS:
//!
//! 1. **Lift** every component from `Q` to `Q ∪ R` (an auxiliary basis of primes with
//!    `R > 2^4·t·N·Q`) with the floating-point-corrected base conversion of HPS §2.2
//!    ([`Converter`]): `y_i = [x_i·(Q/q_i)^{-1}]_{q_i}`, `v = ⌊Σ y_i/q_i⌉` in `f64`,
//!    `x = Σ y_i·(Q/q_i) − v·Q`, which is the centered representative of `x` except when
//!    `x/Q` lies within about `L·2^-52` of `±1/2` (then it is off by `±Q`, which only adds a
//!    multiple of `t·(Δm + v)` of negligible size to the noise, Kim–Polyakov–Zucca 2021 §4).
//! 2. **Tensor** in the NTT domain over `Q ∪ R` (on the backend).
//! 3. **Scale**: `y = ⌊t·x/Q⌉` in the basis `R`, computed as `(t·x − [t·x]_Q)·Q^{-1}` with
//!    `[t·x]_Q` the centered remainder converted from `Q` to `R` by the same corrected
//!    conversion (HPS's "simple scaling" written as an exact division; a misrounded `v`
//!    changes `y` by `±1`, the same rounding slack HPS accepts). `R > 2^4·t·N·Q` makes `t·x`
//!    and `y` exact in `Q·R` and `R` respectively, with `|y| < R/8`.
//! 4. **Return** from `R` to `Q` with the corrected conversion, exact because `|y| < R/8`
//!    keeps `Σ y_j/r_j` at least `3/8` away from a rounding boundary.
//!
//! BEHZ (Bajard–Eynard–Hasan–Zucca, SAC 2016) avoids floating point with two extra moduli
//! (`m̃` for a Montgomery reduction of the lift's overflow, `m_sk` for the Shenoy–Kumaresan
//! return). It does more work per coefficient (the extra moduli, the Montgomery step, a
//! second correction) and its lifts are only approximate, which costs a few bits of noise
//! per multiplication; HPS's corrected conversions are single passes of multiply-accumulate
//! with one `f64` sum per coefficient. Halevi, Polyakov and Shoup measured HPS faster than
//! BEHZ in PALISADE at every size they tried, and it is the simpler of the two to get
//! right and to port to a GPU (no extra moduli, no Montgomery bookkeeping); we chose it.
//!
//! # Decryption: exact
//!
//! [`ExactScaler`] computes `⌊t·x/Q⌉ mod t = −[t·x]_Q · Q^{-1} mod t` with `[t·x]_Q`, the
//! centered remainder, obtained exactly by Garner's mixed-radix conversion (word arithmetic
//! only, no floating point): decryption is exact for every ciphertext whose noise is in
//! range, not merely with high probability. The same `[t·x]_Q` gives the invariant noise.
//!
//! These kernels work on host, limb-major coefficient vectors (`[limb][n]`), in parallel on
//! the rayon pool they are called from (the evaluator runs them inside
//! [`hecnn_ring::Backend::install`]). Moving them behind `ring::Backend` as primitives is
//! what a device backend needs to run BFV multiplication without transfers.

use hecnn_ring::{
    Modulus, RingError,
    simd::{IfmaModulus, WideModulus},
};
use rayon::prelude::*;

/// The vector kernel of one target prime's multiply-accumulate: IFMA for primes below
/// `2^50`, the wide IFMA kernel for `2^50..2^61`, or none (the scalar loop: no AVX-512 IFMA,
/// or `HECNN_NO_SIMD`).
#[derive(Clone, Copy, Debug)]
enum Kernel {
    Ifma(IfmaModulus),
    Wide(WideModulus),
    Scalar,
}

impl Kernel {
    fn new(m: &Modulus) -> Self {
        if let Some(c) = IfmaModulus::new(m) {
            Self::Ifma(c)
        } else if let Some(c) = WideModulus::new(m) {
            Self::Wide(c)
        } else {
            Self::Scalar
        }
    }
}

/// Products of two words summed in a `u128` before a reduction: 32 terms below `2^122` each
/// stay below `2^127`.
const LAZY_TERMS: usize = 32;

/// `a·b mod m` for any modulus `m ≥ 1` (not hot: plaintext-modulus arithmetic).
pub(crate) fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((a as u128 * b as u128) % m as u128) as u64
}

/// The inverse of `a` modulo `m` (`m ≥ 2`, not necessarily prime), if `gcd(a, m) = 1`.
pub(crate) fn inv_mod(a: u64, m: u64) -> Option<u64> {
    let (mut r0, mut r1) = (m as i128, (a % m) as i128);
    let (mut s0, mut s1) = (0i128, 1i128);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (s0, s1) = (s1, s0 - q * s1);
    }
    (r0 == 1).then(|| s0.rem_euclid(m as i128) as u64)
}

/// `Π moduli mod m` for a word modulus `m`.
fn product_mod(values: &[u64], m: &Modulus) -> u64 {
    values
        .iter()
        .fold(1 % m.value(), |acc, &v| m.mul(acc, m.reduce(v)))
}

/// Floating-point-corrected fast base conversion (HPS §2.2) from a source basis `S` to a
/// target basis `T`: maps residues of `x` modulo `S` to residues modulo `T` of its centered
/// representative in `(−S/2, S/2)` (exactly, unless `x/S` is within about `|S|·2^-52` of
/// `±1/2`, where the result may be off by `±S`).
#[derive(Clone, Debug)]
pub struct Converter {
    src: Vec<Modulus>,
    dst: Vec<Modulus>,
    /// `(S/s_i)^{-1} mod s_i` and its Shoup factor.
    hat_inv: Vec<(u64, u64)>,
    /// `1/s_i`.
    inv_f: Vec<f64>,
    /// `[S/s_i]_{t_j}`, row `j`.
    hat_mod: Vec<Vec<u64>>,
    /// `[-S]_{t_j}`.
    neg_s_mod: Vec<u64>,
    /// Row `j`: `hat_mod[j]` followed by `neg_s_mod[j]` (the constants of one target's dot
    /// product over the `y_i` and `v`).
    consts: Vec<Vec<u64>>,
    /// Vector kernels of the source primes (for `y_i`) and of the target primes.
    src_kernels: Vec<Kernel>,
    dst_kernels: Vec<Kernel>,
    /// Some source residue may exceed `2^52` (IFMA splits such words).
    wide_sources: bool,
}

impl Converter {
    /// Precomputes the constants for `src → dst` (all moduli distinct primes).
    ///
    /// # Errors
    /// [`RingError::NotInvertible`] if the bases share a prime.
    pub fn new(src: &[Modulus], dst: &[Modulus]) -> Result<Self, RingError> {
        let values: Vec<u64> = src.iter().map(|m| m.value()).collect();
        let others = |i: usize| -> Vec<u64> {
            values
                .iter()
                .enumerate()
                .filter(|&(k, _)| k != i)
                .map(|(_, &v)| v)
                .collect()
        };
        let hat_inv = src
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let inv = m.inv(product_mod(&others(i), m))?;
                Ok((inv, m.shoup(inv)))
            })
            .collect::<Result<Vec<_>, RingError>>()?;
        let hat_mod: Vec<Vec<u64>> = dst
            .iter()
            .map(|t| (0..src.len()).map(|i| product_mod(&others(i), t)).collect())
            .collect();
        let neg_s_mod = dst
            .iter()
            .map(|t| {
                let s = product_mod(&values, t);
                if s == 0 {
                    Err(RingError::NotInvertible {
                        value: 0,
                        modulus: t.value(),
                    })
                } else {
                    Ok(t.neg(s))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let consts = hat_mod
            .iter()
            .zip(&neg_s_mod)
            .map(|(h, &ns)| h.iter().copied().chain([ns]).collect())
            .collect();
        Ok(Self {
            consts,
            src_kernels: src.iter().map(Kernel::new).collect(),
            dst_kernels: dst.iter().map(Kernel::new).collect(),
            wide_sources: src.iter().any(|m| m.value() >= 1 << 52),
            inv_f: src.iter().map(|m| 1.0 / m.value() as f64).collect(),
            src: src.to_vec(),
            dst: dst.to_vec(),
            hat_inv,
            hat_mod,
            neg_s_mod,
        })
    }

    /// Number of source limbs.
    pub fn src_len(&self) -> usize {
        self.src.len()
    }

    /// Number of target limbs.
    pub fn dst_len(&self) -> usize {
        self.dst.len()
    }

    /// Converts the `n` coefficients in `src` (limb-major over the source basis) into `dst`
    /// (limb-major over the target basis).
    ///
    /// # Errors
    /// [`RingError::LengthMismatch`] for buffers of the wrong size.
    pub fn convert(&self, n: usize, src: &[u64], dst: &mut [u64]) -> Result<(), RingError> {
        check_len(self.src.len() * n, src.len())?;
        check_len(self.dst.len() * n, dst.len())?;
        // y_i = [x_i · (S/s_i)^{-1}]_{s_i}
        let mut y = src.to_vec();
        y.par_chunks_mut(n)
            .zip(
                self.src
                    .par_iter()
                    .zip(&self.hat_inv)
                    .zip(&self.src_kernels),
            )
            .for_each(|(y, ((m, &(w, ws)), k))| {
                if let Kernel::Ifma(c) = k
                    && c.mul_shoup_assign(y, w, c.shoup(w))
                {
                    return;
                }
                for y in y.iter_mut() {
                    *y = m.mul_shoup(*y, w, ws);
                }
            });
        // v = ⌊Σ y_i / s_i⌉ (the number of times S was overshot).
        let mut v = vec![0u64; n];
        v.par_chunks_mut(1024).enumerate().for_each(|(b, v)| {
            let start = b * 1024;
            let mut acc = vec![0.0f64; v.len()];
            for (limb, &f) in y.chunks_exact(n).zip(&self.inv_f) {
                for (a, &yv) in acc.iter_mut().zip(&limb[start..start + v.len()]) {
                    *a += yv as f64 * f;
                }
            }
            for (v, a) in v.iter_mut().zip(acc) {
                *v = a.round() as u64;
            }
        });
        self.accumulate(n, &y, &v, dst);
        Ok(())
    }

    /// `dst_j = Σ_i y_i·[S/s_i]_{t_j} + v·[−S]_{t_j}` for every target limb.
    fn accumulate(&self, n: usize, y: &[u64], v: &[u64], dst: &mut [u64]) {
        let mut sources: Vec<&[u64]> = y.chunks_exact(n).collect();
        sources.push(v);
        dst.par_chunks_mut(n)
            .zip(self.dst.par_iter().zip(&self.hat_mod).zip(&self.neg_s_mod))
            .zip(self.consts.par_iter().zip(&self.dst_kernels))
            .for_each(|((out, ((t, hat), &neg_s)), (consts, k))| {
                let vectorized = match k {
                    Kernel::Ifma(c) => c.dot_const(out, &sources, consts, self.wide_sources),
                    Kernel::Wide(c) => c.dot_const(out, &sources, consts),
                    Kernel::Scalar => false,
                };
                if vectorized {
                    return;
                }
                let mut acc = vec![0u128; n];
                for (k, (limb, &h)) in y.chunks_exact(n).zip(hat).enumerate() {
                    for (a, &yv) in acc.iter_mut().zip(limb) {
                        *a += yv as u128 * h as u128;
                    }
                    if (k + 1) % LAZY_TERMS == 0 {
                        for a in acc.iter_mut() {
                            *a = t.reduce_u128_any(*a) as u128;
                        }
                    }
                }
                for ((o, a), &vv) in out.iter_mut().zip(acc).zip(v) {
                    *o = t.reduce_u128_any(a + vv as u128 * neg_s as u128);
                }
            });
    }
}

fn check_len(expected: usize, found: usize) -> Result<(), RingError> {
    if expected == found {
        Ok(())
    } else {
        Err(RingError::LengthMismatch { expected, found })
    }
}

/// The HPS scale-and-round of one level: `⌊t·x/Q_l⌉` from `x` over `Q_l ∪ R` to `Q_l`.
#[derive(Clone, Debug)]
pub struct HpsScaler {
    q: Vec<Modulus>,
    r: Vec<Modulus>,
    /// `Q_l → R`.
    to_r: Converter,
    /// `R → Q_l`.
    from_r: Converter,
    /// `[t]_{q_i}` with Shoup factors.
    t_mod_q: Vec<(u64, u64)>,
    /// `([t·Q_l^{-1}]_{r_j}, [−Q_l^{-1}]_{r_j})`: `y = t·x·Q^{-1} − z·Q^{-1}` over `R`.
    r_consts: Vec<[u64; 2]>,
    /// Vector kernels of the `Q_l` and `R` primes.
    q_kernels: Vec<Kernel>,
    r_kernels: Vec<Kernel>,
}

impl HpsScaler {
    /// Constants for the basis `Q_l` (the first primes of the chain), the auxiliary basis
    /// `R` and the plaintext modulus `t`.
    ///
    /// # Errors
    /// [`RingError::NotInvertible`] if the bases share a prime.
    pub fn new(q: &[Modulus], r: &[Modulus], t: u64) -> Result<Self, RingError> {
        let q_values: Vec<u64> = q.iter().map(|m| m.value()).collect();
        let q_inv_mod_r = r
            .iter()
            .map(|m| m.inv(product_mod(&q_values, m)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            to_r: Converter::new(q, r)?,
            from_r: Converter::new(r, q)?,
            t_mod_q: q
                .iter()
                .map(|m| {
                    let tm = m.reduce(t);
                    (tm, m.shoup(tm))
                })
                .collect(),
            r_consts: r
                .iter()
                .zip(&q_inv_mod_r)
                .map(|(m, &qi)| [m.mul(m.reduce(t), qi), m.neg(qi)])
                .collect(),
            q_kernels: q.iter().map(Kernel::new).collect(),
            r_kernels: r.iter().map(Kernel::new).collect(),
            q: q.to_vec(),
            r: r.to_vec(),
        })
    }

    /// Lifts `x` (limb-major over `Q_l`) to `Q_l ∪ R`: `out` receives the `Q_l` limbs as they
    /// are and the `R` limbs of the centered representative.
    ///
    /// # Errors
    /// [`RingError::LengthMismatch`].
    pub fn lift(&self, n: usize, x: &[u64], out: &mut [u64]) -> Result<(), RingError> {
        let ql = self.q.len() * n;
        check_len((self.q.len() + self.r.len()) * n, out.len())?;
        check_len(ql, x.len())?;
        let (head, tail) = out.split_at_mut(ql);
        head.copy_from_slice(x);
        self.to_r.convert(n, x, tail)
    }

    /// `⌊t·x/Q_l⌉` over `Q_l` from `x` over `Q_l ∪ R` (limb-major, coefficient domain), for
    /// `|x| < R·Q_l / (2t)`.
    ///
    /// # Errors
    /// [`RingError::LengthMismatch`].
    pub fn scale(&self, n: usize, x: &[u64], out: &mut [u64]) -> Result<(), RingError> {
        let ql = self.q.len() * n;
        check_len((self.q.len() + self.r.len()) * n, x.len())?;
        check_len(ql, out.len())?;
        let (xq, xr) = x.split_at(ql);
        // w = [t·x]_{Q_l}
        let mut w = xq.to_vec();
        w.par_chunks_mut(n)
            .zip(self.q.par_iter().zip(&self.t_mod_q).zip(&self.q_kernels))
            .for_each(|(w, ((m, &(tq, ts)), k))| {
                if let Kernel::Ifma(c) = k
                    && c.mul_shoup_assign(w, tq, c.shoup(tq))
                {
                    return;
                }
                for w in w.iter_mut() {
                    *w = m.mul_shoup(*w, tq, ts);
                }
            });
        // z = the centered [t·x]_Q, over R
        let mut z = vec![0u64; self.r.len() * n];
        self.to_r.convert(n, &w, &mut z)?;
        // y = (t·x − z) · Q^{-1} = x·[t·Q^{-1}] + z·[−Q^{-1}] over R, written over x's limbs.
        let mut y = vec![0u64; self.r.len() * n];
        y.par_chunks_mut(n)
            .zip(xr.par_chunks(n).zip(z.par_chunks(n)))
            .zip(self.r.par_iter().zip(&self.r_consts).zip(&self.r_kernels))
            .for_each(|((y, (x, z)), ((m, c), k))| {
                let vectorized = match k {
                    Kernel::Ifma(v) => v.dot_const(y, &[x, z], c, false),
                    Kernel::Wide(v) => v.dot_const(y, &[x, z], c),
                    Kernel::Scalar => false,
                };
                if vectorized {
                    return;
                }
                let cs = [m.shoup(c[0]), m.shoup(c[1])];
                for ((y, &x), &z) in y.iter_mut().zip(x).zip(z) {
                    *y = m.add(m.mul_shoup(x, c[0], cs[0]), m.mul_shoup(z, c[1], cs[1]));
                }
            });
        self.from_r.convert(n, &y, out)
    }
}

/// Exact `⌊t·x/Q⌉ mod t` and the invariant noise `[t·x]_Q` by Garner's mixed-radix
/// conversion.
#[derive(Clone, Debug)]
pub struct ExactScaler {
    q: Vec<Modulus>,
    t: u64,
    /// `[t]_{q_i}`.
    t_mod_q: Vec<u64>,
    /// `inv[i][j] = q_j^{-1} mod q_i` for `j < i`.
    inv: Vec<Vec<u64>>,
    /// Mixed-radix digits of `(Q − 1)/2`.
    half: Vec<u64>,
    /// `[Π_{j<i} q_j]_t`: the mixed-radix weights modulo `t`.
    radix_mod_t: Vec<u64>,
    /// `t` as a [`Modulus`] (Barrett reduction, no division) when it is one: odd, at least
    /// 3; otherwise the reductions divide.
    t_mod: Option<Modulus>,
    /// `[Q]_t`.
    big_q_mod_t: u64,
    /// `[Q^{-1}]_t`.
    big_q_inv_mod_t: u64,
}

/// One decrypted coefficient: the message mod `t` and `|[t·x]_Q|` as a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scaled {
    /// `⌊t·x/Q⌉ mod t`.
    pub message: u64,
    /// `|[t·x]_Q|` (the invariant noise times `Q`), rounded to `f64`.
    pub noise_abs: f64,
}

impl ExactScaler {
    /// Constants for `Q = Π q` and `t` (`2 ≤ t`, coprime with `Q`).
    ///
    /// # Errors
    /// [`RingError::NotInvertible`] if `t` shares a factor with `Q` or `t < 2`.
    pub fn new(q: &[Modulus], t: u64) -> Result<Self, RingError> {
        let not_inv = RingError::NotInvertible {
            value: 0,
            modulus: t,
        };
        if t < 2 {
            return Err(not_inv);
        }
        let l = q.len();
        let inv = (0..l)
            .map(|i| {
                (0..i)
                    .map(|j| q[i].inv(q[j].value()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let q_mod_t: Vec<u64> = q.iter().map(|m| m.value() % t).collect();
        let big_q_mod_t = q_mod_t.iter().fold(1 % t, |acc, &v| mul_mod(acc, v, t));
        let big_q_inv_mod_t = inv_mod(big_q_mod_t, t).ok_or(not_inv)?;
        let radix_mod_t: Vec<u64> = q_mod_t
            .iter()
            .scan(1 % t, |acc, &v| {
                let w = *acc;
                *acc = mul_mod(*acc, v, t);
                Some(w)
            })
            .collect();
        let mut out = Self {
            t_mod_q: q.iter().map(|m| m.reduce(t)).collect(),
            q: q.to_vec(),
            t,
            inv,
            half: vec![0; l],
            radix_mod_t,
            t_mod: Modulus::new(t).ok(),
            big_q_mod_t,
            big_q_inv_mod_t,
        };
        // (Q − 1)/2 ≡ −2^{-1} (mod q_i).
        let mut half = vec![0u64; l];
        let residues: Vec<u64> = q
            .iter()
            .map(|m| m.inv(2).map(|h| m.neg(h)))
            .collect::<Result<_, _>>()?;
        out.digits(&|i| residues[i], &mut half);
        out.half = half;
        Ok(out)
    }

    /// Mixed-radix digits `v` of the value with residues `residue(i)`: value = `Σ v_i·Π_{j<i} q_j`.
    fn digits(&self, residue: &dyn Fn(usize) -> u64, v: &mut [u64]) {
        for (i, (m, inv)) in self.q.iter().zip(&self.inv).enumerate() {
            let mut x = residue(i);
            for (&d, &w) in v[..i].iter().zip(inv) {
                x = m.mul(m.sub(x, m.reduce(d)), w);
            }
            v[i] = x;
        }
    }

    /// The message of one coefficient from the mixed-radix digits `v` of `w = [t·x]_Q`
    /// (in `[0, Q)`), and whether `w` stands for a negative value (`w > (Q − 1)/2`).
    fn message(&self, v: &[u64]) -> (u64, bool) {
        let t = self.t;
        let negative = v
            .iter()
            .rev()
            .zip(self.half.iter().rev())
            .find(|(a, b)| a != b)
            .is_some_and(|(a, b)| a > b);
        // w mod t = Σ v_i·[Π_{j<i} q_j]_t: products below 2^121 (v_i < 2^61, t < 2^60),
        // reduced every LAZY_TERMS / 4 terms.
        let reduce = |x: u128| match &self.t_mod {
            Some(m) => m.reduce_u128_any(x),
            None => (x % u128::from(t)) as u64,
        };
        let mut w_mod_t = 0u64;
        for (d, r) in v
            .chunks(LAZY_TERMS / 4)
            .zip(self.radix_mod_t.chunks(LAZY_TERMS / 4))
        {
            let sum = d.iter().zip(r).fold(u128::from(w_mod_t), |acc, (&d, &r)| {
                acc + u128::from(d) * u128::from(r)
            });
            w_mod_t = reduce(sum);
        }
        // z = w − Q when negative; message = −z · Q^{-1} mod t (all operands below t).
        let z_mod_t = if negative {
            let (w, q) = (w_mod_t, self.big_q_mod_t);
            if w >= q { w - q } else { w + (t - q) }
        } else {
            w_mod_t
        };
        let minus_z = if z_mod_t == 0 { 0 } else { t - z_mod_t };
        let message = reduce(u128::from(minus_z) * u128::from(self.big_q_inv_mod_t));
        (message, negative)
    }

    /// The mixed-radix digits of `[t·x]_Q` for coefficient `c` of `x` (limb-major, `n` per
    /// limb).
    fn digits_of(&self, x: &[u64], n: usize, c: usize, v: &mut [u64]) {
        self.digits(&|i| self.q[i].mul(x[i * n + c], self.t_mod_q[i]), v);
    }

    /// `⌊t·x/Q⌉ mod t` for every coefficient of `x` (limb-major over `Q`, coefficient
    /// domain): decryption's scaling, without the noise [`Self::scale`] also measures.
    ///
    /// # Errors
    /// [`RingError::LengthMismatch`].
    pub fn messages(&self, n: usize, x: &[u64]) -> Result<Vec<u64>, RingError> {
        let l = self.q.len();
        check_len(l * n, x.len())?;
        Ok((0..n)
            .into_par_iter()
            .map_init(
                || vec![0u64; l],
                |v, c| {
                    self.digits_of(x, n, c, v);
                    self.message(v).0
                },
            )
            .collect())
    }

    /// Scales every coefficient of `x` (limb-major over `Q`, coefficient domain) and
    /// measures its invariant noise.
    ///
    /// # Errors
    /// [`RingError::LengthMismatch`].
    pub fn scale(&self, n: usize, x: &[u64]) -> Result<Vec<Scaled>, RingError> {
        let l = self.q.len();
        check_len(l * n, x.len())?;
        Ok((0..n)
            .into_par_iter()
            .map_init(
                || vec![0u64; l],
                |v, c| {
                    self.digits_of(x, n, c, v);
                    let (message, negative) = self.message(v);
                    if negative {
                        // |z| = Q − w: digits of (Q − 1 − w) + 1.
                        let mut carry = 1u64;
                        for (d, m) in v.iter_mut().zip(&self.q) {
                            let s = m.value() - 1 - *d + carry;
                            (*d, carry) = if s == m.value() { (0, 1) } else { (s, 0) };
                        }
                    }
                    let noise_abs = v
                        .iter()
                        .zip(&self.q)
                        .rev()
                        .fold(0.0f64, |acc, (&d, m)| acc * m.value() as f64 + d as f64);
                    Scaled { message, noise_abs }
                },
            )
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hecnn_ring::prime;

    fn moduli(v: &[u64]) -> Vec<Modulus> {
        v.iter().map(|&x| Modulus::new(x).unwrap()).collect()
    }

    /// Residues of a signed 128-bit value.
    fn residues(m: &[Modulus], x: i128) -> Vec<u64> {
        m.iter().map(|m| m.reduce_i128(x)).collect()
    }

    /// Converts the residues over `q` of `vals` (limb-major) and checks every result
    /// against the residues over `r` of the same integers.
    fn assert_converts(conv: &Converter, q: &[Modulus], r: &[Modulus], vals: &[i128], what: &str) {
        let n = vals.len();
        let mut src = vec![0u64; q.len() * n];
        for (c, &v) in vals.iter().enumerate() {
            for (i, x) in residues(q, v).into_iter().enumerate() {
                src[i * n + c] = x;
            }
        }
        let mut dst = vec![0u64; r.len() * n];
        conv.convert(n, &src, &mut dst).unwrap();
        for (c, &v) in vals.iter().enumerate() {
            for (j, x) in residues(r, v).into_iter().enumerate() {
                assert_eq!(dst[j * n + c], x, "{what}value {v}, limb {j}");
            }
        }
    }

    #[test]
    fn inverse_mod_composite() {
        assert_eq!(inv_mod(3, 16), Some(11));
        assert_eq!(inv_mod(4, 16), None);
        assert_eq!(mul_mod(inv_mod(12345, 65537).unwrap(), 12345, 65537), 1);
    }

    #[test]
    fn conversion_is_centered() {
        let q = moduli(&prime::ntt_primes(30, 4, 2).unwrap());
        let r = moduli(&prime::ntt_primes(40, 4, 2).unwrap());
        let conv = Converter::new(&q, &r).unwrap();
        let big_q = q[0].value() as i128 * q[1].value() as i128;
        // Within about 2^-50 of ±Q/2 the correction may round either way (documented).
        let vals = [
            0i128,
            1,
            -1,
            12345678,
            -(big_q / 2) + big_q / 1000,
            big_q / 2 - big_q / 1000,
            -987654321,
        ];
        assert_converts(&conv, &q, &r, &vals, "");
    }

    #[test]
    fn exact_scaler_rounds() {
        let q = moduli(&prime::ntt_primes(40, 4, 2).unwrap());
        let big_q = q[0].value() as i128 * q[1].value() as i128;
        let t = 65537u64;
        let s = ExactScaler::new(&q, t).unwrap();
        // x = Δ·m + e with Δ = ⌊Q/t⌋.
        let delta = big_q / t as i128;
        let cases = [
            (5i128, 100i128),
            (0, -3),
            (t as i128 - 1, 7),
            (1234, -(delta / 3)),
        ];
        let n = cases.len();
        let mut x = vec![0u64; 2 * n];
        for (c, &(m, e)) in cases.iter().enumerate() {
            for (i, r) in residues(&q, delta * m + e).into_iter().enumerate() {
                x[i * n + c] = r;
            }
        }
        let out = s.scale(n, &x).unwrap();
        for (c, &(m, e)) in cases.iter().enumerate() {
            assert_eq!(out[c].message as i128, m, "case {c}");
            // [t·x]_Q = t·e − (Q mod t)·m
            let z = t as i128 * e - (big_q % t as i128) * m;
            assert_eq!(out[c].noise_abs, z.unsigned_abs() as f64, "case {c}");
        }
    }

    /// Ten limbs (the mod-t sum spans two of its lazy chunks), an odd and an even `t`:
    /// `messages` and `scale` against big-integer arithmetic.
    #[test]
    fn exact_scaler_over_many_limbs_and_even_t() {
        use num_bigint::BigInt;
        use num_traits::Euclid;
        let q = moduli(&prime::ntt_primes(20, 4, 10).unwrap());
        let big_q: BigInt = q.iter().map(|m| BigInt::from(m.value())).product();
        for t in [65537u64, 1 << 16, 3] {
            let s = ExactScaler::new(&q, t).unwrap();
            let delta = &big_q / BigInt::from(t);
            let cases: Vec<(u64, i64)> =
                vec![(0, 0), (1, -5), (t - 1, 12345), (t / 2, -999), (7 % t, 1)];
            let n = cases.len();
            let mut x = vec![0u64; q.len() * n];
            for (c, &(m, e)) in cases.iter().enumerate() {
                let v = (&delta * BigInt::from(m) + BigInt::from(e)).rem_euclid(&big_q);
                for (i, qi) in q.iter().enumerate() {
                    let r = (&v % BigInt::from(qi.value())).to_u64_digits().1;
                    x[i * n + c] = r.first().copied().unwrap_or(0);
                }
            }
            let messages = s.messages(n, &x).unwrap();
            let scaled = s.scale(n, &x).unwrap();
            for (c, &(m, _)) in cases.iter().enumerate() {
                assert_eq!(messages[c], m, "t = {t}, case {c}");
                assert_eq!(scaled[c].message, m, "t = {t}, case {c}");
            }
        }
    }

    /// The vector kernels (IFMA sources and targets, wide targets, wide sources) against
    /// exact residues, over lengths they accept (multiples of 8), on random values of the
    /// whole centered range.
    #[test]
    fn conversion_kernels_are_exact_across_prime_sizes() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for (sb, db) in [(49, 60), (60, 49), (43, 43), (60, 60), (30, 52)] {
            let q = moduli(&prime::ntt_primes(sb, 4, 2).unwrap());
            let r = moduli(
                &prime::ntt_primes_excluding(db, 4, 2, &[q[0].value(), q[1].value()]).unwrap(),
            );
            let conv = Converter::new(&q, &r).unwrap();
            // On a CPU with IFMA (unless HECNN_NO_SIMD), the vector kernels are what runs.
            if hecnn_ring::simd::ifma_available() {
                assert!(
                    conv.dst_kernels
                        .iter()
                        .all(|k| !matches!(k, Kernel::Scalar)),
                    "{db}-bit targets fell back to the scalar loop"
                );
            }
            let big_q = q[0].value() as i128 * q[1].value() as i128;
            let n = 64;
            // Values well inside (−Q/2, Q/2): the correction is exact there.
            let vals: Vec<i128> = (0..n)
                .map(|_| {
                    let u = ((next() as u128) << 64 | next() as u128) % (big_q as u128 * 9 / 10);
                    u as i128 - big_q * 9 / 20
                })
                .collect();
            assert_converts(&conv, &q, &r, &vals, &format!("{sb} → {db} bits: "));
        }
    }

    #[test]
    fn hps_scaler_matches_integer_rounding() {
        let q = moduli(&prime::ntt_primes(30, 4, 2).unwrap());
        let r = moduli(&prime::ntt_primes(45, 4, 2).unwrap());
        let t = 257u64;
        let s = HpsScaler::new(&q, &r, t).unwrap();
        let big_q = q[0].value() as i128 * q[1].value() as i128;
        let vals = [
            0i128,
            1,
            -1,
            big_q * 1000 + 7,
            -big_q * 12345 - big_q / 2 + 3,
            99999,
        ];
        let n = vals.len();
        let all: Vec<Modulus> = q.iter().chain(&r).copied().collect();
        let mut x = vec![0u64; 4 * n];
        for (c, &v) in vals.iter().enumerate() {
            for (i, res) in residues(&all, v).into_iter().enumerate() {
                x[i * n + c] = res;
            }
        }
        let mut out = vec![0u64; 2 * n];
        s.scale(n, &x, &mut out).unwrap();
        for (c, &v) in vals.iter().enumerate() {
            let num = t as i128 * v;
            // round half away from zero is irrelevant here (Q odd, no ties).
            let want = (2 * num + big_q).div_euclid(2 * big_q);
            for (i, res) in residues(&q, want).into_iter().enumerate() {
                assert_eq!(out[i * n + c], res, "value {v}, limb {i}");
            }
        }
    }
}
