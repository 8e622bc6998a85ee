//! AVX-512 IFMA kernels for element-wise arithmetic modulo primes below 2^50.
//!
//! IFMA multiplies 52-bit lanes into 104-bit products (`vpmadd52luq` / `vpmadd52huq`), which
//! gives eight modular products in a handful of instructions. Two reductions are used:
//!
//! * **Barrett** for variable × variable: with `n = bits(q) ≤ 50`, `μ = ⌊2^(n+51)/q⌋ < 2^52`,
//!   product `P = hi·2^52 + lo < 2^(2n)`, `T = ⌊P / 2^(n-1)⌋ < 2^(n+1)`,
//!   `q̂ = ⌊T·μ / 2^52⌋` satisfies `⌊P/q⌋ − 2 ≤ q̂ ≤ ⌊P/q⌋`, so `P − q̂·q < 3q < 2^52` is exact
//!   in 52-bit arithmetic and two conditional subtractions finish.
//! * **Shoup** for a constant `w`: `w' = ⌊w·2^52/q⌋`, `q̂ = ⌊a·w'/2^52⌋`, and
//!   `a·w − q̂·q ∈ [0, 2q)` for any `a < 2^52`.
//!
//! Conditional subtraction is `min(x, x − q)` on unsigned lanes (the wrapped difference is
//! larger whenever `x < q`), so nothing branches on data. The CPU is detected once at run time;
//! every other machine (and every prime of 50 bits or more) takes the scalar path.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512i, _mm_set_epi64x, _mm256_loadu_si256, _mm512_add_epi64, _mm512_and_si512,
    _mm512_i32gather_epi64, _mm512_loadu_si512, _mm512_madd52hi_epu64, _mm512_madd52lo_epu64,
    _mm512_min_epu64, _mm512_or_si512, _mm512_set1_epi64, _mm512_setzero_si512, _mm512_sll_epi64,
    _mm512_srl_epi64, _mm512_storeu_si512, _mm512_sub_epi64,
};

use crate::modulus::Modulus;

/// Largest modulus the IFMA kernels accept (exclusive).
pub const IFMA_MAX_MODULUS: u64 = 1 << 50;

/// Whether this CPU has AVX-512F and AVX-512 IFMA (detected once).
pub fn ifma_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512ifma")
            && std::env::var_os("HECNN_NO_SIMD").is_none()
    })
}

/// Constants of one modulus for the IFMA kernels.
#[derive(Clone, Copy, Debug)]
pub struct IfmaModulus {
    q: u64,
    n: u32,
    mu: u64,
    /// 2^52 mod q and its Shoup factor (folding the high half of lazy sums).
    two52: u64,
    two52_shoup: u64,
}

impl IfmaModulus {
    /// The constants for `m`, if it is small enough and the CPU supports IFMA.
    pub fn new(m: &Modulus) -> Option<Self> {
        let q = m.value();
        if q >= IFMA_MAX_MODULUS || !ifma_available() {
            return None;
        }
        let n = m.bits();
        let mu = ((1u128 << (n + 51)) / q as u128) as u64;
        let two52 = ((1u128 << 52) % q as u128) as u64;
        let two52_shoup = (((two52 as u128) << 52) / q as u128) as u64;
        Some(Self {
            q,
            n,
            mu,
            two52,
            two52_shoup,
        })
    }

    /// Shoup constant `⌊w·2^52/q⌋` for a fixed operand `w < q`.
    pub fn shoup(&self, w: u64) -> u64 {
        (((w as u128) << 52) / self.q as u128) as u64
    }
}

const MASK52: i64 = (1 << 52) - 1;

// Every function below requires AVX-512F and AVX-512 IFMA; the safe wrappers at the bottom
// are only reachable through an `IfmaModulus`, whose constructor checked both.

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn csub(x: __m512i, q: __m512i) -> __m512i {
    _mm512_min_epu64(x, _mm512_sub_epi64(x, q))
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn barrett(a: __m512i, b: __m512i, c: &IfmaModulus) -> __m512i {
    let zero = _mm512_setzero_si512();
    let q = _mm512_set1_epi64(c.q as i64);
    let lo = _mm512_madd52lo_epu64(zero, a, b);
    let hi = _mm512_madd52hi_epu64(zero, a, b);
    let t = _mm512_or_si512(
        _mm512_sll_epi64(hi, _mm_set_epi64x(0, (53 - c.n) as i64)),
        _mm512_srl_epi64(lo, _mm_set_epi64x(0, (c.n - 1) as i64)),
    );
    let qhat = _mm512_madd52hi_epu64(zero, t, _mm512_set1_epi64(c.mu as i64));
    let r = _mm512_and_si512(
        _mm512_sub_epi64(lo, _mm512_madd52lo_epu64(zero, qhat, q)),
        _mm512_set1_epi64(MASK52),
    );
    csub(csub(r, q), q)
}

/// Lazy Shoup product in `[0, 2q)`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn shoup_lazy(a: __m512i, w: __m512i, ws: __m512i, q: __m512i) -> __m512i {
    let zero = _mm512_setzero_si512();
    let qhat = _mm512_madd52hi_epu64(zero, a, ws);
    _mm512_and_si512(
        _mm512_sub_epi64(
            _mm512_madd52lo_epu64(zero, a, w),
            _mm512_madd52lo_epu64(zero, qhat, q),
        ),
        _mm512_set1_epi64(MASK52),
    )
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn load(s: &[u64], i: usize) -> __m512i {
    debug_assert!(i + 8 <= s.len());
    // SAFETY: the callers iterate `i` over multiples of 8 below `s.len()`, which is a multiple
    // of 8, so the eight words `s[i..i + 8]` are in bounds; unaligned loads are allowed.
    unsafe { _mm512_loadu_si512(s.as_ptr().add(i).cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn store(s: &mut [u64], i: usize, v: __m512i) {
    debug_assert!(i + 8 <= s.len());
    // SAFETY: as in `load`, `s[i..i + 8]` is in bounds.
    unsafe { _mm512_storeu_si512(s.as_mut_ptr().add(i).cast(), v) }
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_assign_imp(d: &mut [u64], s: &[u64], c: &IfmaModulus) {
    for i in (0..d.len()).step_by(8) {
        let r = barrett(load(d, i), load(s, i), c);
        store(d, i, r);
    }
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_shoup_assign_imp(d: &mut [u64], w: u64, ws: u64, c: &IfmaModulus) {
    let (wv, wsv, q) = (
        _mm512_set1_epi64(w as i64),
        _mm512_set1_epi64(ws as i64),
        _mm512_set1_epi64(c.q as i64),
    );
    for i in (0..d.len()).step_by(8) {
        let r = csub(shoup_lazy(load(d, i), wv, wsv, q), q);
        store(d, i, r);
    }
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn sub_mul_shoup_assign_imp(d: &mut [u64], s: &[u64], w: u64, ws: u64, c: &IfmaModulus) {
    let (wv, wsv, q) = (
        _mm512_set1_epi64(w as i64),
        _mm512_set1_epi64(ws as i64),
        _mm512_set1_epi64(c.q as i64),
    );
    for i in (0..d.len()).step_by(8) {
        // (d - s) mod q, then × w.
        let diff = _mm512_add_epi64(_mm512_sub_epi64(load(d, i), load(s, i)), q);
        let r = csub(shoup_lazy(csub(diff, q), wv, wsv, q), q);
        store(d, i, r);
    }
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_sum_imp(
    out: &mut [u64],
    a: &[&[u64]],
    b: &[&[u64]],
    perm: Option<&[u32]>,
    accumulate: bool,
    c: &IfmaModulus,
) {
    let q = _mm512_set1_epi64(c.q as i64);
    for i in (0..out.len()).step_by(8) {
        let mut acc = if accumulate {
            load(out, i)
        } else {
            _mm512_setzero_si512()
        };
        let idx = perm.map(|p| {
            debug_assert!(i + 8 <= p.len());
            // SAFETY: `p` has `out.len()` entries (checked by the wrapper), so eight u32 at
            // `i` are in bounds.
            unsafe { _mm256_loadu_si256(p.as_ptr().add(i).cast()) }
        });
        for (x, y) in a.iter().zip(b) {
            let xa = match idx {
                // SAFETY: every index in `perm` is below `x.len()` (a permutation of
                // `0..n`, checked by the wrapper), so the gather stays in bounds.
                Some(ix) => unsafe { _mm512_i32gather_epi64::<8>(ix, x.as_ptr().cast()) },
                None => load(x, i),
            };
            acc = csub(_mm512_add_epi64(acc, barrett(xa, load(y, i), c)), q);
        }
        store(out, i, acc);
    }
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn dot_const_imp(
    out: &mut [u64],
    ys: &[&[u64]],
    consts: &[WideConst],
    wide: bool,
    c: &IfmaModulus,
) {
    let q = _mm512_set1_epi64(c.q as i64);
    let two_q = _mm512_set1_epi64(2 * c.q as i64);
    let low26 = _mm512_set1_epi64((1 << 26) - 1);
    let shift26 = _mm_set_epi64x(0, 26);
    let splat = |x: u64| _mm512_set1_epi64(x as i64);
    let cs: Vec<[__m512i; 4]> = consts
        .iter()
        .map(|k| [splat(k.w), splat(k.ws), splat(k.w_hi), splat(k.w_hi_s)])
        .collect();
    for i in (0..out.len()).step_by(8) {
        let mut acc = _mm512_setzero_si512();
        for (y, [w, ws, wh, whs]) in ys.iter().zip(&cs) {
            let a = load(y, i);
            if wide {
                // a = a_hi·2^26 + a_lo with both halves below 2^52.
                let lo = shoup_lazy(_mm512_and_si512(a, low26), *w, *ws, q);
                let hi = shoup_lazy(_mm512_srl_epi64(a, shift26), *wh, *whs, q);
                acc = csub(_mm512_add_epi64(acc, lo), two_q);
                acc = csub(_mm512_add_epi64(acc, hi), two_q);
            } else {
                acc = csub(_mm512_add_epi64(acc, shoup_lazy(a, *w, *ws, q)), two_q);
            }
        }
        store(out, i, csub(acc, q));
    }
}

/// `Σ_j y_j·w_j mod q` for `y_j, w_j < 2^50`, accumulating the low and high 52-bit halves of
/// the products in place (`vpmadd52luq/huq` add into their destination) and reducing once per
/// `LAZY_TERMS` terms: two instructions per term and lane group instead of a Shoup reduction.
/// Bound: after `k ≤ 15` terms `hi < 15·2^48 + 15 < 2^52` once the carry of `lo` is folded in.
#[target_feature(enable = "avx512f,avx512ifma")]
fn dot_lazy_imp(out: &mut [u64], ys: &[&[u64]], ws: &[u64], accumulate: bool, c: &IfmaModulus) {
    const LAZY_TERMS: usize = 15;
    let q = _mm512_set1_epi64(c.q as i64);
    let mask = _mm512_set1_epi64(MASK52);
    let shift52 = _mm_set_epi64x(0, 52);
    let (t, ts) = (
        _mm512_set1_epi64(c.two52 as i64),
        _mm512_set1_epi64(c.two52_shoup as i64),
    );
    let one = _mm512_set1_epi64(1);
    for i in (0..out.len()).step_by(8) {
        let mut acc = if accumulate {
            load(out, i)
        } else {
            _mm512_setzero_si512()
        };
        for (yc, wc) in ys.chunks(LAZY_TERMS).zip(ws.chunks(LAZY_TERMS)) {
            let mut lo = _mm512_setzero_si512();
            let mut hi = _mm512_setzero_si512();
            for (y, &w) in yc.iter().zip(wc) {
                let a = load(y, i);
                // A broadcast of the weight, which the compiler folds into the FMAs.
                let w = _mm512_set1_epi64(w as i64);
                lo = _mm512_madd52lo_epu64(lo, a, w);
                hi = _mm512_madd52hi_epu64(hi, a, w);
            }
            // value = hi·2^52 + lo, with lo's carry moved into hi.
            hi = _mm512_add_epi64(hi, _mm512_srl_epi64(lo, shift52));
            lo = _mm512_and_si512(lo, mask);
            let h = shoup_lazy(hi, t, ts, q); // hi·2^52 mod q, in [0, 2q)
            let l = barrett(lo, one, c); // lo mod q
            acc = csub(_mm512_add_epi64(acc, csub(h, q)), q);
            acc = csub(_mm512_add_epi64(acc, l), q);
        }
        store(out, i, acc);
    }
}

/// Both key-switching outputs in one pass over the digits:
/// `out_k[i] = Σ_j a_j[i]·b_kj[i] mod q` (`k = 0, 1`) for reduced operands, with the halves of
/// the products accumulated lazily and folded every `LAZY_TERMS` terms as in `dot_lazy_imp`.
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_sum_pair_imp(out: [&mut [u64]; 2], a: &[&[u64]], b: [&[&[u64]]; 2], c: &IfmaModulus) {
    const LAZY_TERMS: usize = 15;
    let zero = _mm512_setzero_si512();
    let [out0, out1] = out;
    for i in (0..out0.len()).step_by(8) {
        let mut acc = [zero; 2];
        for ((ac, b0c), b1c) in a
            .chunks(LAZY_TERMS)
            .zip(b[0].chunks(LAZY_TERMS))
            .zip(b[1].chunks(LAZY_TERMS))
        {
            let (mut lo, mut hi) = ([zero; 2], [zero; 2]);
            for ((x, y0), y1) in ac.iter().zip(b0c).zip(b1c) {
                let x = load(x, i);
                for (k, y) in [y0, y1].into_iter().enumerate() {
                    let y = load(y, i);
                    lo[k] = _mm512_madd52lo_epu64(lo[k], x, y);
                    hi[k] = _mm512_madd52hi_epu64(hi[k], x, y);
                }
            }
            for k in 0..2 {
                acc[k] = fold_lazy(acc[k], lo[k], hi[k], c);
            }
        }
        store(out0, i, acc[0]);
        store(out1, i, acc[1]);
    }
}

/// Coefficients per block of [`mul_sum_pair_blocked_imp`]: its six accumulator arrays (the
/// folded sums and the lazy halves of both outputs) take 12 KiB of L1.
const PAIR_BLOCK: usize = 256;

/// [`mul_sum_pair_imp`] with the loops swapped: per block of [`PAIR_BLOCK`] coefficients the
/// terms run outermost, so each operand is read as one contiguous run per block (a stream the
/// hardware prefetcher follows) rather than one cache line of every term per lane group, and
/// the lazy halves live in L1. Same lazy folding, so the same reduced results.
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_sum_pair_blocked_imp(
    out: [&mut [u64]; 2],
    a: &[&[u64]],
    b: [&[&[u64]]; 2],
    c: &IfmaModulus,
) {
    const LAZY_TERMS: usize = 15;
    const LANES: usize = PAIR_BLOCK / 8;
    let zero = _mm512_setzero_si512();
    let [out0, out1] = out;
    let n = out0.len();
    let mut acc = [[zero; LANES]; 2];
    let mut lo = [[zero; LANES]; 2];
    let mut hi = [[zero; LANES]; 2];
    for base in (0..n).step_by(PAIR_BLOCK) {
        let lanes = (n - base).min(PAIR_BLOCK) / 8;
        for sums in &mut acc {
            sums[..lanes].fill(zero);
        }
        for ((ac, b0c), b1c) in a
            .chunks(LAZY_TERMS)
            .zip(b[0].chunks(LAZY_TERMS))
            .zip(b[1].chunks(LAZY_TERMS))
        {
            for k in 0..2 {
                lo[k][..lanes].fill(zero);
                hi[k][..lanes].fill(zero);
            }
            for ((x, y0), y1) in ac.iter().zip(b0c).zip(b1c) {
                for v in 0..lanes {
                    let i = base + 8 * v;
                    let x = load(x, i);
                    let y = load(y0, i);
                    lo[0][v] = _mm512_madd52lo_epu64(lo[0][v], x, y);
                    hi[0][v] = _mm512_madd52hi_epu64(hi[0][v], x, y);
                    let y = load(y1, i);
                    lo[1][v] = _mm512_madd52lo_epu64(lo[1][v], x, y);
                    hi[1][v] = _mm512_madd52hi_epu64(hi[1][v], x, y);
                }
            }
            for k in 0..2 {
                for v in 0..lanes {
                    acc[k][v] = fold_lazy(acc[k][v], lo[k][v], hi[k][v], c);
                }
            }
        }
        for (v, (&r0, &r1)) in acc[0][..lanes].iter().zip(&acc[1][..lanes]).enumerate() {
            store(out0, base + 8 * v, r0);
            store(out1, base + 8 * v, r1);
        }
    }
}

/// Coefficients per block of [`IfmaModulus::weighted_sums_limb`]: four lane groups.
const WS_BLOCK: usize = 32;

/// Reduces lazily accumulated halves (`value = hi·2^52 + lo`) into `[0, q)` and adds to `acc`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn fold_lazy(acc: __m512i, lo: __m512i, hi: __m512i, c: &IfmaModulus) -> __m512i {
    let q = _mm512_set1_epi64(c.q as i64);
    let hi = _mm512_add_epi64(hi, _mm512_srl_epi64(lo, _mm_set_epi64x(0, 52)));
    let lo = _mm512_and_si512(lo, _mm512_set1_epi64(MASK52));
    let h = shoup_lazy(
        hi,
        _mm512_set1_epi64(c.two52 as i64),
        _mm512_set1_epi64(c.two52_shoup as i64),
        q,
    );
    let l = barrett(lo, _mm512_set1_epi64(1), c);
    let acc = csub(_mm512_add_epi64(acc, csub(h, q)), q);
    csub(_mm512_add_epi64(acc, l), q)
}

/// All rows of a sparse weighted sum for one limb, blocked over coefficients.
///
/// The caller (`weighted_sums_limb`) has checked: every output and input has length `n`, a
/// multiple of `WS_BLOCK`; every column indexes `ins`; every weight is below `q`.
#[target_feature(enable = "avx512f,avx512ifma")]
fn weighted_sums_imp(
    outs: &mut [&mut [u64]],
    ins: &[&[u64]],
    row_ptr: &[usize],
    cols: &[u32],
    ws: &[u64],
    n: usize,
    c: &IfmaModulus,
) {
    // Products of operands below 2^26 are exact in the low half: one IFMA per term, and 4096
    // terms fit a 64-bit lane before the reduction. Otherwise both halves are accumulated and
    // folded every 15 terms.
    if c.q < 1 << 26 {
        weighted_sums_blocks::<true>(outs, ins, row_ptr, cols, ws, n, c);
    } else {
        weighted_sums_blocks::<false>(outs, ins, row_ptr, cols, ws, n, c);
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn weighted_sums_blocks<const NARROW: bool>(
    outs: &mut [&mut [u64]],
    ins: &[&[u64]],
    row_ptr: &[usize],
    cols: &[u32],
    ws: &[u64],
    n: usize,
    c: &IfmaModulus,
) {
    let lazy_terms = if NARROW { 4096 } else { 15 };
    let zero = _mm512_setzero_si512();
    // Each block of every input is first copied into one contiguous scratch buffer. Inputs
    // are separate allocations at power-of-two distances, so the same block of all of them
    // maps to the same few L2 sets; read in place, they evict each other between rows.
    let mut scratch = vec![0u64; ins.len() * WS_BLOCK];
    for start in (0..n).step_by(WS_BLOCK) {
        for (j, y) in ins.iter().enumerate() {
            for g in 0..4 {
                store(&mut scratch, j * WS_BLOCK + 8 * g, load(y, start + 8 * g));
            }
        }
        for (k, out) in outs.iter_mut().enumerate() {
            let terms = row_ptr[k]..row_ptr[k + 1];
            let mut acc = [zero; 4];
            for (cc, wc) in cols[terms.clone()]
                .chunks(lazy_terms)
                .zip(ws[terms].chunks(lazy_terms))
            {
                let (mut lo, mut hi) = ([zero; 4], [zero; 4]);
                for (&j, &w) in cc.iter().zip(wc) {
                    let base = j as usize * WS_BLOCK;
                    let w = _mm512_set1_epi64(w as i64);
                    for g in 0..4 {
                        let a = load(&scratch, base + 8 * g);
                        lo[g] = _mm512_madd52lo_epu64(lo[g], a, w);
                        if !NARROW {
                            hi[g] = _mm512_madd52hi_epu64(hi[g], a, w);
                        }
                    }
                }
                for g in 0..4 {
                    acc[g] = fold_lazy(acc[g], lo[g], hi[g], c);
                }
            }
            for (g, v) in acc.iter().enumerate() {
                store(out, start + 8 * g, *v);
            }
        }
    }
}

/// A conversion constant `w` with its Shoup factor, and `w·2^26 mod q` with its own, for
/// sources of up to 64 bits split into two 26/38-bit halves.
#[derive(Clone, Copy, Debug)]
struct WideConst {
    w: u64,
    ws: u64,
    w_hi: u64,
    w_hi_s: u64,
}

/// Broadcast constants of a [`WideModulus`] for the wide kernels.
#[derive(Clone, Copy)]
struct WideLanes {
    p: __m512i,
    p0: __m512i,
    p1: __m512i,
    p_neg_inv: __m512i,
}

impl WideLanes {
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn new(c: &WideModulus) -> Self {
        Self {
            p: _mm512_set1_epi64(c.p as i64),
            p0: _mm512_set1_epi64((c.p & MASK52 as u64) as i64),
            p1: _mm512_set1_epi64((c.p >> 52) as i64),
            p_neg_inv: _mm512_set1_epi64(c.p_neg_inv as i64),
        }
    }
}

/// Splits 64-bit lanes at bit 52: `(x mod 2^52, ⌊x / 2^52⌋)`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn split52(x: __m512i) -> (__m512i, __m512i) {
    (
        _mm512_and_si512(x, _mm512_set1_epi64(MASK52)),
        _mm512_srl_epi64(x, _mm_set_epi64x(0, 52)),
    )
}

/// Adds the exact product `(x0 + x1·2^52)·(y0 + y1·2^52)` into the digit accumulators
/// `A0 + A1·2^52 + A2·2^104` (seven IFMA; every factor below 2^52, `x1·y1` below 2^52).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn wide_product_acc(acc: &mut [__m512i; 3], x: (__m512i, __m512i), y: (__m512i, __m512i)) {
    let [a0, a1, a2] = acc;
    *a0 = _mm512_madd52lo_epu64(*a0, x.0, y.0);
    *a1 = _mm512_madd52hi_epu64(*a1, x.0, y.0);
    *a1 = _mm512_madd52lo_epu64(*a1, x.0, y.1);
    *a1 = _mm512_madd52lo_epu64(*a1, x.1, y.0);
    *a2 = _mm512_madd52hi_epu64(*a2, x.0, y.1);
    *a2 = _mm512_madd52hi_epu64(*a2, x.1, y.0);
    *a2 = _mm512_madd52lo_epu64(*a2, x.1, y.1);
}

/// One Montgomery step in base 2^52 on two adjacent digits `(lo, mid)` of a sum: adds
/// `m·p` with `m = −lo/p mod 2^52`, which clears `lo` (its digit becomes 0 or 2^52, carried
/// on). Returns the new `mid` (below 2^54) and what overflows into the next digit up,
/// `hi(m·p1)` (below 2^9).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn montgomery_step(lo: __m512i, mid: __m512i, w: &WideLanes) -> (__m512i, __m512i) {
    let zero = _mm512_setzero_si512();
    let shift52 = _mm_set_epi64x(0, 52);
    let m = _mm512_madd52lo_epu64(zero, lo, w.p_neg_inv);
    let t = _mm512_madd52lo_epu64(lo, m, w.p0);
    let mut mid = _mm512_add_epi64(mid, _mm512_srl_epi64(t, shift52));
    mid = _mm512_madd52hi_epu64(mid, m, w.p0);
    mid = _mm512_madd52lo_epu64(mid, m, w.p1);
    (mid, _mm512_madd52hi_epu64(zero, m, w.p1))
}

/// `S·2^-104 mod p` in `[0, p)` for `S = A0 + A1·2^52 + A2·2^104` with `A1 ≤ 3·2^61` and
/// `S < 2^134`: two [`montgomery_step`]s, the first clearing A0, the second A1. The result
/// is below `p + S/2^104 + 1`, so one conditional subtraction suffices whenever
/// `S < (p − 1)·2^104`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn wide_montgomery(acc: [__m512i; 3], w: &WideLanes) -> __m512i {
    let mask = _mm512_set1_epi64(MASK52);
    let shift52 = _mm_set_epi64x(0, 52);
    let [mut a0, mut a1, mut a2] = acc;
    // Carries into 52-bit digits A0, A1 (A2 keeps the rest).
    a1 = _mm512_add_epi64(a1, _mm512_srl_epi64(a0, shift52));
    a0 = _mm512_and_si512(a0, mask);
    a2 = _mm512_add_epi64(a2, _mm512_srl_epi64(a1, shift52));
    a1 = _mm512_and_si512(a1, mask);
    let (a1, over) = montgomery_step(a0, a1, w);
    a2 = _mm512_add_epi64(a2, over);
    a2 = _mm512_add_epi64(a2, _mm512_srl_epi64(a1, shift52));
    let (a2, top) = montgomery_step(_mm512_and_si512(a1, mask), a2, w);
    csub(_mm512_add_epi64(a2, _mm512_sll_epi64(top, shift52)), w.p)
}

/// `S mod p` for a sum `S` of products of two plain residues accumulated in digits: the
/// Montgomery finish, then one product by `fix = 2^208 mod p` (split, see
/// [`WideModulus::fix_lanes`]) and a second finish to undo the factor `2^-104`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn wide_reduce_products(acc: [__m512i; 3], w: &WideLanes, fix: (__m512i, __m512i)) -> __m512i {
    let mut fixed = [_mm512_setzero_si512(); 3];
    wide_product_acc(&mut fixed, split52(wide_montgomery(acc, w)), fix);
    wide_montgomery(fixed, w)
}

/// `Σ_j ys[j]·c_j·2^-104 mod p` for a prime `2^50 ≤ p < 2^61` and 64-bit sources: the exact
/// sum accumulated in 52-bit digits, then [`wide_montgomery`]. The caller scales each
/// constant by `2^104 mod p` beforehand (see [`WideModulus::dot_const`] for the bounds).
#[target_feature(enable = "avx512f,avx512ifma")]
fn dot_const_wide_imp(out: &mut [u64], ys: &[&[u64]], cs: &[(u64, u64)], c: &WideModulus) {
    let zero = _mm512_setzero_si512();
    let w = WideLanes::new(c);
    let splats: Vec<(__m512i, __m512i)> = cs
        .iter()
        .map(|&(lo, hi)| (_mm512_set1_epi64(lo as i64), _mm512_set1_epi64(hi as i64)))
        .collect();
    for i in (0..out.len()).step_by(8) {
        let mut acc = [zero; 3];
        for (y, &k) in ys.iter().zip(&splats) {
            wide_product_acc(&mut acc, split52(load(y, i)), k);
        }
        store(out, i, wide_montgomery(acc, &w));
    }
}

/// `out[i] = [out[i] +] Σ_j a_j[i]·b_j[i] mod p` for reduced operands: the exact sum in 52-bit
/// digits, a Montgomery finish (`·2^-104`), then one more product with `2^208 mod p` to undo
/// the factor.
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_sum_wide_imp(
    out: &mut [u64],
    a: &[&[u64]],
    b: &[&[u64]],
    accumulate: bool,
    c: &WideModulus,
) {
    let zero = _mm512_setzero_si512();
    let w = WideLanes::new(c);
    let fix = c.fix_lanes();
    for i in (0..out.len()).step_by(8) {
        let mut acc = [zero; 3];
        for (x, y) in a.iter().zip(b) {
            wide_product_acc(&mut acc, split52(load(x, i)), split52(load(y, i)));
        }
        let mut r = wide_reduce_products(acc, &w, fix);
        if accumulate {
            r = csub(_mm512_add_epi64(r, load(out, i)), w.p);
        }
        store(out, i, r);
    }
}

/// [`mul_sum_wide_imp`] for both key-switching outputs in one pass over the digits (each
/// digit is loaded and split once).
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_sum_pair_wide_imp(out: [&mut [u64]; 2], a: &[&[u64]], b: [&[&[u64]]; 2], c: &WideModulus) {
    let zero = _mm512_setzero_si512();
    let w = WideLanes::new(c);
    let fix = c.fix_lanes();
    let [out0, out1] = out;
    for i in (0..out0.len()).step_by(8) {
        let mut acc = [[zero; 3]; 2];
        for ((x, y0), y1) in a.iter().zip(b[0]).zip(b[1]) {
            let x = split52(load(x, i));
            wide_product_acc(&mut acc[0], x, split52(load(y0, i)));
            wide_product_acc(&mut acc[1], x, split52(load(y1, i)));
        }
        store(out0, i, wide_reduce_products(acc[0], &w, fix));
        store(out1, i, wide_reduce_products(acc[1], &w, fix));
    }
}

/// Constants of a prime `2^50 ≤ p < 2^61` for the wide IFMA kernels, which IFMA's 52-bit
/// lanes cannot reduce directly: sums of products are formed exactly in three 52-bit digits
/// and reduced by Montgomery steps in base 2^52.
#[derive(Clone, Copy, Debug)]
pub struct WideModulus {
    p: u64,
    /// `−p^{-1} mod 2^52`.
    p_neg_inv: u64,
    /// `2^104 mod p`, the factor the two Montgomery steps divide out.
    r: u64,
}

impl WideModulus {
    /// The constants for `m`, if it is in `[2^50, 2^61)` and the CPU supports IFMA.
    pub fn new(m: &Modulus) -> Option<Self> {
        let p = m.value();
        if !(IFMA_MAX_MODULUS..1 << 61).contains(&p) || !ifma_available() {
            return None;
        }
        // Newton's iteration for p^{-1} mod 2^64 (p odd): each step doubles the correct bits.
        let mut inv = p;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(p.wrapping_mul(inv)));
        }
        let p_neg_inv = inv.wrapping_neg() & MASK52 as u64;
        let r = ((1u128 << 104) % p as u128) as u64;
        Some(Self { p, p_neg_inv, r })
    }

    /// `out[i] = Σ_j ys[j][i]·consts[j] mod p` (fast basis conversion into a wide prime).
    /// Sources may be any 64-bit words, constants must be below `p`; at most 2^9 terms.
    /// Returns false (doing nothing) if a shape or bound check fails.
    pub fn dot_const(&self, out: &mut [u64], ys: &[&[u64]], consts: &[u64]) -> bool {
        let n = out.len();
        if !lanes_ok(n)
            || ys.len() != consts.len()
            || ys.iter().any(|y| y.len() != n)
            || ys.len() > 1 << 9
            || consts.iter().any(|&w| w >= self.p)
        {
            return false;
        }
        // Bounds: with T ≤ 2^9 terms, A1 < 3T·2^52 < 2^64 and S < T·2^125, so the result
        // `S·2^-104 + p·(1 + 2^-52) < p + T·2^21 + 1 < 2p` needs one conditional subtraction.
        let p = self.p as u128;
        let cs: Vec<(u64, u64)> = consts
            .iter()
            .map(|&w| {
                let w = ((w as u128 * self.r as u128) % p) as u64;
                (w & MASK52 as u64, w >> 52)
            })
            .collect();
        // SAFETY: `WideModulus` exists only when AVX-512F and IFMA were detected; every load
        // and store is at a multiple of 8 below `n`, and all slices have length `n`.
        unsafe { dot_const_wide_imp(out, ys, &cs, self) };
        true
    }

    /// `2^208 mod p` split at bit 52 and broadcast: the factor that undoes a Montgomery
    /// finish on a product of two plain residues.
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn fix_lanes(&self) -> (__m512i, __m512i) {
        let r2 = ((self.r as u128 * self.r as u128) % self.p as u128) as u64;
        (
            _mm512_set1_epi64((r2 & MASK52 as u64) as i64),
            _mm512_set1_epi64((r2 >> 52) as i64),
        )
    }

    /// Both key-switching outputs, `out_k[i] = Σ_j a_j[i]·b_kj[i] mod p`, in one pass over
    /// the digits `a_j` (operands below `p`, at most 2^9 terms). Returns false (doing
    /// nothing) if a shape check fails.
    pub fn mul_sum_pair(&self, out: [&mut [u64]; 2], a: &[&[u64]], b: [&[&[u64]]; 2]) -> bool {
        if !pair_shapes_ok(&out, a, b, 1 << 9) {
            return false;
        }
        // SAFETY: as in `dot_const`; bounds as in `mul_sum`.
        unsafe { mul_sum_pair_wide_imp(out, a, b, self) };
        true
    }

    /// `out[i] = [out[i] +] Σ_j a_j[i]·b_j[i] mod p` for operands below `p` (the key-switching
    /// inner product), at most 2^9 terms. Returns false (doing nothing) if a shape check
    /// fails.
    pub fn mul_sum(&self, out: &mut [u64], a: &[&[u64]], b: &[&[u64]], accumulate: bool) -> bool {
        let n = out.len();
        if !lanes_ok(n)
            || a.len() != b.len()
            || a.len() > 1 << 9
            || a.iter().chain(b).any(|x| x.len() != n)
        {
            return false;
        }
        // Bounds: products of residues below 2^61, T ≤ 2^9 terms: A1 < 3T·2^52 and
        // S < T·2^122 < (p − 1)·2^104 for p ≥ 2^50, so the Montgomery result is reduced; the
        // correcting product is a single term. Operands are reduced limbs (the caller's
        // invariant); the digit split would stay exact for any 64-bit word.
        // SAFETY: as in `dot_const`.
        unsafe { mul_sum_wide_imp(out, a, b, accumulate, self) };
        true
    }
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn reduce_assign_imp(d: &mut [u64], c: &IfmaModulus) {
    let one = _mm512_set1_epi64(1);
    for i in (0..d.len()).step_by(8) {
        let r = barrett(load(d, i), one, c);
        store(d, i, r);
    }
}

fn lanes_ok(len: usize) -> bool {
    len.is_multiple_of(8)
}

/// Shapes of a two-output multiply-sum: equal lengths (a multiple of 8) and term counts.
fn pair_shapes_ok(
    out: &[&mut [u64]; 2],
    a: &[&[u64]],
    b: [&[&[u64]]; 2],
    max_terms: usize,
) -> bool {
    let n = out[0].len();
    lanes_ok(n)
        && out[1].len() == n
        && a.len() <= max_terms
        && b.iter().all(|bk| bk.len() == a.len())
        && a.iter().chain(b[0]).chain(b[1]).all(|x| x.len() == n)
}

impl IfmaModulus {
    /// `d[i] = d[i]·s[i] mod q`. Returns false (doing nothing) if the shape is unsupported.
    pub fn mul_assign(&self, d: &mut [u64], s: &[u64]) -> bool {
        if !lanes_ok(d.len()) || s.len() != d.len() {
            return false;
        }
        // SAFETY: `IfmaModulus` exists only when AVX-512F and IFMA were detected.
        unsafe { mul_assign_imp(d, s, self) };
        true
    }

    /// `d[i] = d[i]·w mod q` for a constant `w < q` with `ws = self.shoup(w)`; `d[i] < 2^52`.
    pub fn mul_shoup_assign(&self, d: &mut [u64], w: u64, ws: u64) -> bool {
        if !lanes_ok(d.len()) {
            return false;
        }
        // SAFETY: see `mul_assign`.
        unsafe { mul_shoup_assign_imp(d, w, ws, self) };
        true
    }

    /// `d[i] = (d[i] − s[i])·w mod q` (inputs reduced).
    pub fn sub_mul_shoup_assign(&self, d: &mut [u64], s: &[u64], w: u64, ws: u64) -> bool {
        if !lanes_ok(d.len()) || s.len() != d.len() {
            return false;
        }
        // SAFETY: see `mul_assign`.
        unsafe { sub_mul_shoup_assign_imp(d, s, w, ws, self) };
        true
    }

    /// `out[i] = [out[i] +] Σ_j a_j[perm[i]]·b_j[i] mod q` (inputs reduced).
    pub fn mul_sum(
        &self,
        out: &mut [u64],
        a: &[&[u64]],
        b: &[&[u64]],
        perm: Option<&[u32]>,
        accumulate: bool,
    ) -> bool {
        let n = out.len();
        if !lanes_ok(n)
            || a.len() != b.len()
            || a.iter().chain(b).any(|x| x.len() != n)
            || perm.is_some_and(|p| p.len() != n || n > i32::MAX as usize)
        {
            return false;
        }
        // SAFETY: see `mul_assign`; `perm` entries are below `n` by construction of the
        // context's permutation tables (a permutation of 0..n).
        unsafe { mul_sum_imp(out, a, b, perm, accumulate, self) };
        true
    }

    /// Both key-switching outputs, `out_k[i] = Σ_j a_j[i]·b_kj[i] mod q`, in one pass over
    /// the digits `a_j` (reduced operands). Returns false (doing nothing) if a shape check
    /// fails.
    pub fn mul_sum_pair(&self, out: [&mut [u64]; 2], a: &[&[u64]], b: [&[&[u64]]; 2]) -> bool {
        if !pair_shapes_ok(&out, a, b, usize::MAX) {
            return false;
        }
        // SAFETY: see `mul_assign`; operands are reduced limbs (below q < 2^50), the bound
        // `dot_lazy_imp` states for its lazy folding.
        unsafe { mul_sum_pair_imp(out, a, b, self) };
        true
    }

    /// [`Self::mul_sum_pair`] blocked over coefficients with the terms outermost: for many
    /// terms whose operands come from memory (the plaintext diagonals of a linear
    /// transform), where the lane-outer order would touch one cache line of every term per
    /// step. Same results. Returns false (doing nothing) if a shape check fails.
    pub fn mul_sum_pair_blocked(
        &self,
        out: [&mut [u64]; 2],
        a: &[&[u64]],
        b: [&[&[u64]]; 2],
    ) -> bool {
        if !pair_shapes_ok(&out, a, b, usize::MAX) {
            return false;
        }
        // SAFETY: as in `mul_sum_pair`: lengths are equal multiples of 8, so every lane group
        // `base + 8v < n` is in bounds; operands are reduced limbs.
        unsafe { mul_sum_pair_blocked_imp(out, a, b, self) };
        true
    }

    /// `out[i] = Σ_j ys[j][i]·w_j mod q` for constants `w_j < q` (fast basis conversion).
    /// Sources may be any 64-bit words; when some exceed 2^52 (`wide`), each is split in two
    /// halves that IFMA can multiply.
    pub fn dot_const(&self, out: &mut [u64], ys: &[&[u64]], consts: &[u64], wide: bool) -> bool {
        let n = out.len();
        if !lanes_ok(n)
            || ys.len() != consts.len()
            || ys.iter().any(|y| y.len() != n)
            || ys.len() > 1 << 9
        {
            return false;
        }
        let q = self.q as u128;
        let cs: Vec<WideConst> = consts
            .iter()
            .map(|&w| {
                let w_hi = (((w as u128) << 26) % q) as u64;
                WideConst {
                    w,
                    ws: self.shoup(w),
                    w_hi,
                    w_hi_s: self.shoup(w_hi),
                }
            })
            .collect();
        // SAFETY: see `mul_assign`.
        unsafe { dot_const_imp(out, ys, &cs, wide, self) };
        true
    }

    /// `out[i] = [out[i] +] Σ_j ys[j][i]·w_j mod q` for reduced `ys[j][i]` and `w_j < q`
    /// (lazy IFMA accumulation; see `dot_lazy_imp`).
    pub fn dot_lazy(&self, out: &mut [u64], ys: &[&[u64]], ws: &[u64], accumulate: bool) -> bool {
        let n = out.len();
        if !lanes_ok(n)
            || ys.len() != ws.len()
            || ys.iter().any(|y| y.len() != n)
            || ws.iter().any(|&w| w >= self.q)
        {
            return false;
        }
        // SAFETY: see `mul_assign`; every source word is below q < 2^50 by the caller's
        // invariant (reduced limbs).
        unsafe { dot_lazy_imp(out, ys, ws, accumulate, self) };
        true
    }

    /// `outs[k] = Σ_{t ∈ row k} ins[cols[t]]·ws[t] mod q` for all rows of a compressed-row
    /// sparse matrix, over whole limbs of length `n` (a multiple of 32), blocked so that a
    /// block of every input stays in L2 while all rows are accumulated. Inputs must be
    /// reduced. Returns false (doing nothing) if any shape or bound check fails.
    pub fn weighted_sums_limb(
        &self,
        outs: &mut [&mut [u64]],
        ins: &[&[u64]],
        row_ptr: &[usize],
        cols: &[u32],
        ws: &[u64],
    ) -> bool {
        let n = outs.first().map_or(0, |o| o.len());
        let ok = n.is_multiple_of(WS_BLOCK)
            && row_ptr.len() == outs.len() + 1
            && row_ptr.windows(2).all(|w| w[0] <= w[1])
            && row_ptr.last().is_some_and(|&e| e == cols.len())
            && ws.len() == cols.len()
            && outs.iter().all(|o| o.len() == n)
            && ins.iter().all(|i| i.len() == n)
            && cols.iter().all(|&j| (j as usize) < ins.len())
            && ws.iter().all(|&w| w < self.q);
        if !ok {
            return false;
        }
        // SAFETY: CPU support as in `mul_assign`; every load is at `start + 8g + 8 ≤ n` within
        // slices of length `n` (checked above), and every column indexes `ins`.
        unsafe { weighted_sums_imp(outs, ins, row_ptr, cols, ws, n, self) };
        true
    }

    /// `d[i] = d[i] mod q` for `d[i] < 2^52`.
    pub fn reduce_assign(&self, d: &mut [u64]) -> bool {
        if !lanes_ok(d.len()) || d.iter().any(|&x| x >= 1 << 52) {
            return false;
        }
        // SAFETY: see `mul_assign`.
        unsafe { reduce_assign_imp(d, self) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn modulus(bits: u32) -> Modulus {
        Modulus::new(crate::prime::ntt_primes(bits, 10, 1).unwrap()[0]).unwrap()
    }

    /// Test values below a bound from a xorshift stream seeded by `seed`.
    fn xorshift(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut s = seed | 1;
        move |bound| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % bound
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn kernels_match_scalar(seed in any::<u64>(), bits in prop::sample::select(vec![20u32, 24, 25, 26, 30, 40, 49, 50])) {
            let m = modulus(bits);
            let Some(c) = IfmaModulus::new(&m) else { return Ok(()); };
            let q = m.value();
            let mut next = xorshift(seed);
            let n = 64;
            let a: Vec<u64> = (0..n).map(|i| if i < 3 { q - 1 - i as u64 } else { next(q) }).collect();
            let b: Vec<u64> = (0..n).map(|i| if i < 3 { q - 1 } else { next(q) }).collect();
            let w = next(q);
            let ws = c.shoup(w);

            let mut d = a.clone();
            prop_assert!(c.mul_assign(&mut d, &b));
            let want: Vec<u64> = a.iter().zip(&b).map(|(&x, &y)| m.mul(x, y)).collect();
            prop_assert_eq!(&d, &want);

            let big: Vec<u64> = (0..n).map(|_| next(1 << 52)).collect();
            let mut d = big.clone();
            prop_assert!(c.mul_shoup_assign(&mut d, w, ws));
            let want: Vec<u64> = big.iter().map(|&x| ((x as u128 * w as u128) % q as u128) as u64).collect();
            prop_assert_eq!(&d, &want);

            let mut d = a.clone();
            prop_assert!(c.sub_mul_shoup_assign(&mut d, &b, w, ws));
            let want: Vec<u64> = a.iter().zip(&b).map(|(&x, &y)| m.mul(m.sub(x, y), w)).collect();
            prop_assert_eq!(&d, &want);

            let terms = 5;
            let xs: Vec<Vec<u64>> = (0..terms).map(|_| (0..n).map(|_| next(q)).collect()).collect();
            let ys: Vec<Vec<u64>> = (0..terms).map(|_| (0..n).map(|_| next(q)).collect()).collect();
            let xr: Vec<&[u64]> = xs.iter().map(Vec::as_slice).collect();
            let yr: Vec<&[u64]> = ys.iter().map(Vec::as_slice).collect();
            let perm: Vec<u32> = (0..n as u32).rev().collect();
            let mut out = a.clone();
            prop_assert!(c.mul_sum(&mut out, &xr, &yr, Some(&perm), true));
            for i in 0..n {
                let mut acc = a[i];
                for t in 0..terms { acc = m.add(acc, m.mul(xs[t][perm[i] as usize], ys[t][i])); }
                prop_assert_eq!(out[i], acc);
            }

            // Both pair kernels; the blocked order also across a block boundary (264 = 256 + 8)
            // and below one block.
            let cases = [(n, 0usize, false), (n, 5, false), (n, 16, false), (n, 31, false),
                (8, 1, true), (264, 0, true), (264, 15, true), (264, 16, true), (8, 31, true)];
            for (len, terms, blocked) in cases {
                let x: Vec<Vec<u64>> = (0..terms).map(|t| (0..len).map(|i| if t < 2 && i % 100 < 8 { q - 1 } else { next(q) }).collect()).collect();
                let y: Vec<Vec<u64>> = (0..2 * terms).map(|t| (0..len).map(|i| if t % terms < 2 && i % 100 < 8 { q - 1 } else { next(q) }).collect()).collect();
                let xr: Vec<&[u64]> = x.iter().map(Vec::as_slice).collect();
                let yr: Vec<&[u64]> = y.iter().map(Vec::as_slice).collect();
                let (mut p0, mut p1) = (vec![1; len], vec![2; len]);
                let out = [p0.as_mut_slice(), p1.as_mut_slice()];
                let b = [&yr[..terms], &yr[terms..]];
                let ran = if blocked { c.mul_sum_pair_blocked(out, &xr, b) } else { c.mul_sum_pair(out, &xr, b) };
                prop_assert!(ran);
                for i in 0..len {
                    let want = |k: usize| (0..terms).fold(0u128, |acc, t| (acc + x[t][i] as u128 * y[k * terms + t][i] as u128) % q as u128) as u64;
                    prop_assert_eq!((p0[i], p1[i]), (want(0), want(1)), "len {}, terms {}, i {}", len, terms, i);
                }
            }
            let (mut p0, mut p1) = (vec![0; 12], vec![0; 12]);
            prop_assert!(!c.mul_sum_pair_blocked([&mut p0, &mut p1], &[], [&[], &[]]));

            let consts: Vec<u64> = (0..terms).map(|_| next(q)).collect();
            for (wide, bound) in [(false, 1u64 << 50), (true, u64::MAX)] {
                let raw: Vec<Vec<u64>> = (0..terms).map(|_| (0..n).map(|_| next(bound)).collect()).collect();
                let rr: Vec<&[u64]> = raw.iter().map(Vec::as_slice).collect();
                let mut out = vec![0; n];
                prop_assert!(c.dot_const(&mut out, &rr, &consts, wide));
                for i in 0..n {
                    let want = (0..terms).fold(0u128, |acc, t| acc + raw[t][i] as u128 * consts[t] as u128) % q as u128;
                    prop_assert_eq!(out[i], want as u64);
                }
            }

            for terms in [1usize, 15, 16, 40] {
                let xs: Vec<Vec<u64>> = (0..terms).map(|t| (0..n).map(|i| if t < 2 && i < 8 { q - 1 } else { next(q) }).collect()).collect();
                let xr: Vec<&[u64]> = xs.iter().map(Vec::as_slice).collect();
                let ws: Vec<u64> = (0..terms).map(|t| if t < 2 { q - 1 } else { next(q) }).collect();
                let mut out = a.clone();
                prop_assert!(c.dot_lazy(&mut out, &xr, &ws, true));
                for i in 0..n {
                    let want = (0..terms).fold(a[i] as u128, |acc, t| acc + xs[t][i] as u128 * ws[t] as u128) % q as u128;
                    prop_assert_eq!(out[i], want as u64);
                }
            }

            // Sparse weighted sums: 3 rows over 5 inputs of 64 coefficients.
            let ins: Vec<Vec<u64>> = (0..5).map(|_| (0..n).map(|_| next(q)).collect()).collect();
            let insr: Vec<&[u64]> = ins.iter().map(Vec::as_slice).collect();
            let row_ptr = [0usize, 2, 2, 20];
            let cols: Vec<u32> = (0..20).map(|t| [0u32, 4, 1, 2, 3][t % 5]).collect();
            let ws: Vec<u64> = (0..20).map(|t| if t == 3 { q - 1 } else { next(q) }).collect();
            let mut outs: Vec<Vec<u64>> = vec![vec![7; n]; 3];
            {
                let mut refs: Vec<&mut [u64]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                prop_assert!(c.weighted_sums_limb(&mut refs, &insr, &row_ptr, &cols, &ws));
            }
            for k in 0..3 {
                for i in 0..n {
                    let want = (row_ptr[k]..row_ptr[k + 1]).fold(0u128, |acc, t| acc + ins[cols[t] as usize][i] as u128 * ws[t] as u128) % q as u128;
                    prop_assert_eq!(outs[k][i], want as u64);
                }
            }

            let mut d = big.clone();
            prop_assert!(c.reduce_assign(&mut d));
            prop_assert!(d.iter().zip(&big).all(|(&r, &x)| r == x % q));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn wide_dot_const_matches_u128(seed in any::<u64>(), bits in prop::sample::select(vec![51u32, 55, 58, 60, 61])) {
            let m = modulus(bits);
            let Some(c) = WideModulus::new(&m) else { return Ok(()); };
            let q = m.value();
            let mut next = xorshift(seed);
            let n = 64;
            for terms in [1usize, 6, 23, 512] {
                // Extremes first: all-ones sources and the largest constants.
                let raw: Vec<Vec<u64>> = (0..terms)
                    .map(|t| (0..n).map(|i| if t < 3 && i < 8 { u64::MAX - i as u64 } else { next(u64::MAX) }).collect())
                    .collect();
                let consts: Vec<u64> = (0..terms).map(|t| if t < 2 { q - 1 } else { next(q) }).collect();
                let rr: Vec<&[u64]> = raw.iter().map(Vec::as_slice).collect();
                let mut out = vec![0; n];
                prop_assert!(c.dot_const(&mut out, &rr, &consts));
                for i in 0..n {
                    let want = (0..terms).fold(0u128, |acc, t| (acc + raw[t][i] as u128 * consts[t] as u128) % q as u128);
                    prop_assert_eq!(out[i], want as u64);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn wide_mul_sum_matches_u128(seed in any::<u64>(), bits in prop::sample::select(vec![51u32, 55, 58, 60, 61]), accumulate in any::<bool>()) {
            let m = modulus(bits);
            let Some(c) = WideModulus::new(&m) else { return Ok(()); };
            let q = m.value();
            let mut next = xorshift(seed);
            let n = 64;
            for terms in [0usize, 1, 5, 33, 512] {
                let xs: Vec<Vec<u64>> = (0..terms).map(|t| (0..n).map(|i| if t < 2 && i < 8 { q - 1 - i as u64 } else { next(q) }).collect()).collect();
                let ys: Vec<Vec<u64>> = (0..terms).map(|t| (0..n).map(|i| if t < 2 && i < 8 { q - 1 } else { next(q) }).collect()).collect();
                let xr: Vec<&[u64]> = xs.iter().map(Vec::as_slice).collect();
                let yr: Vec<&[u64]> = ys.iter().map(Vec::as_slice).collect();
                let init: Vec<u64> = (0..n).map(|i| if i == 0 { q - 1 } else { next(q) }).collect();
                let (mut p0, mut p1) = (vec![1; n], vec![2; n]);
                let yrev: Vec<&[u64]> = yr.iter().rev().copied().collect();
                prop_assert!(c.mul_sum_pair([&mut p0, &mut p1], &xr, [&yr, &yrev]));
                for i in 0..n {
                    let want0 = (0..terms).fold(0u128, |acc, t| (acc + xs[t][i] as u128 * ys[t][i] as u128) % q as u128);
                    let want1 = (0..terms).fold(0u128, |acc, t| (acc + xs[t][i] as u128 * ys[terms - 1 - t][i] as u128) % q as u128);
                    prop_assert_eq!((p0[i], p1[i]), (want0 as u64, want1 as u64));
                }
                let mut out = init.clone();
                prop_assert!(c.mul_sum(&mut out, &xr, &yr, accumulate));
                for i in 0..n {
                    let start = if accumulate { init[i] as u128 } else { 0 };
                    let want = (0..terms).fold(start, |acc, t| (acc + xs[t][i] as u128 * ys[t][i] as u128) % q as u128);
                    prop_assert_eq!(out[i], want as u64);
                }
            }
        }
    }

    #[test]
    fn wide_modulus_refuses_bad_shapes() {
        if let Some(c) = WideModulus::new(&modulus(60)) {
            assert!(!c.dot_const(&mut [0; 7], &[&[1; 7]], &[1]));
            assert!(!c.dot_const(&mut [0; 8], &[&[1; 8]], &[u64::MAX]));
        }
        assert!(WideModulus::new(&modulus(40)).is_none());
    }

    #[test]
    fn refuses_large_primes_and_odd_shapes() {
        assert!(IfmaModulus::new(&modulus(55)).is_none());
        if let Some(c) = IfmaModulus::new(&modulus(40)) {
            assert!(!c.mul_assign(&mut [1; 7], &[1; 7]));
        }
    }
}
