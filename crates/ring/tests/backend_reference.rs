//! Backend kernels against a big-integer reference (num-bigint), and fused kernels against
//! the primitives they fuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use hecnn_ring::{
    Backend, Basis, Coeff, CpuBackend, Eval, NttKind, Prng, RnsContext, RnsPoly, crt, prime,
    sampler,
};
use num_bigint::BigInt;
use proptest::prelude::*;

const LOG_N: u32 = 5;
const N: usize = 1 << LOG_N;

fn ctx(kind: NttKind) -> RnsContext {
    let q = prime::ntt_primes_near(45, LOG_N, 4, &[]).unwrap();
    let p = prime::ntt_primes(50, LOG_N, 2).unwrap();
    RnsContext::new(LOG_N, &q, &p, kind).unwrap()
}

fn random_poly(ctx: &RnsContext, basis: Basis, seed: u64) -> Vec<u64> {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    sampler::expand_uniform(&s, ctx, basis)
}

fn big(ctx: &RnsContext, basis: Basis, limbs: &[u64]) -> Vec<BigInt> {
    (0..N)
        .map(|i| crt::crt_centered(ctx, basis, limbs, i))
        .collect()
}

fn modulus_of(ctx: &RnsContext, basis: Basis) -> BigInt {
    ctx.basis_moduli(&basis)
        .iter()
        .map(|m| BigInt::from(m.value()))
        .product()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn rescale_is_exact_rounding(seed in any::<u64>(), threads in 1usize..=2) {
        let ctx = ctx(NttKind::Fast);
        let be = CpuBackend::new(threads).unwrap();
        let basis = Basis::q(4);
        let host = random_poly(&ctx, basis, seed);
        let want: Vec<BigInt> = big(&ctx, basis, &host).iter().map(|a| {
            let ql = BigInt::from(ctx.modulus(3).value());
            let h = &ql / 2;
            let s = a + h;
            // floor division
            let (d, r) = (&s / &ql, &s % &ql);
            if r < BigInt::from(0) { d - 1 } else { d }
        }).collect();
        let mut p = RnsPoly::<_, Coeff>::from_host(&be, &ctx, basis, &host).unwrap().into_eval(&be, &ctx);
        p.rescale_assign(&be, &ctx).unwrap();
        let got = p.into_coeff(&be, &ctx).to_host(&be, &ctx).unwrap();
        prop_assert_eq!(big(&ctx, Basis::q(3), &got), want);
    }

    #[test]
    fn mod_down_divides_by_p(seed in any::<u64>()) {
        let ctx = ctx(NttKind::Fast);
        let be = CpuBackend::new(2).unwrap();
        let ext = Basis::qp(3, 2);
        let host = random_poly(&ctx, ext, seed);
        let x = big(&ctx, ext, &host);
        let pp = modulus_of(&ctx, Basis::qp(0, 2));
        let poly = RnsPoly::<_, Coeff>::from_host(&be, &ctx, ext, &host).unwrap().into_eval(&be, &ctx);
        let (mut buf, _) = poly.into_parts();
        be.mod_down(&ctx, 3, &mut buf);
        let out = RnsPoly::<_, Eval>::from_buffer(buf, Basis::q(3)).into_coeff(&be, &ctx).to_host(&be, &ctx).unwrap();
        let got = big(&ctx, Basis::q(3), &out);
        for (g, xv) in got.iter().zip(&x) {
            let diff = g * &pp - xv;
            // ⌊x/P⌋ up to the approximate conversion's u·P term, |u| ≤ number of P primes.
            prop_assert!(diff.magnitude() <= (&pp * 3u32).magnitude(), "diff {}", diff);
        }
    }

    #[test]
    fn mod_up_is_congruent_modulo_the_digit(seed in any::<u64>()) {
        let ctx = ctx(NttKind::Scalar);
        let be = CpuBackend::new(1).unwrap();
        let basis = Basis::q(4);
        let host = random_poly(&ctx, basis, seed);
        let c_eval = RnsPoly::<_, Coeff>::from_host(&be, &ctx, basis, &host).unwrap().into_eval(&be, &ctx);
        let c_coeff = RnsPoly::<_, Coeff>::from_host(&be, &ctx, basis, &host).unwrap();
        let ext = Basis::qp(4, 2);
        let mut out = be.alloc(ext.len() * N).unwrap();
        be.mod_up(&ctx, 4, 1..3, c_coeff.buffer(), c_eval.buffer(), &mut out);
        let up = RnsPoly::<_, Eval>::from_buffer(out, ext).into_coeff(&be, &ctx).to_host(&be, &ctx).unwrap();
        let got = big(&ctx, ext, &up);
        let (m1, m2) = (ctx.modulus(1), ctx.modulus(2));
        let qd = BigInt::from(m1.value()) * BigInt::from(m2.value());
        let full = modulus_of(&ctx, ext);
        for (i, v) in got.iter().enumerate() {
            // [x]_{Q_D} in [0, Q_D) from the digit's two residues (Garner).
            let (a1, a2) = (host[N + i], host[2 * N + i]);
            let t = m2.mul(m2.sub(a2, m2.reduce(a1)), m2.inv(m1.value()).unwrap());
            let x_d = BigInt::from(a1) + BigInt::from(t) * BigInt::from(m1.value());
            let v = if *v < BigInt::from(0) { v + &full } else { v.clone() };
            // v = [x]_{Q_D} + u·Q_D with 0 ≤ u ≤ α = 2 (approximate fast basis conversion).
            let diff = v - x_d;
            prop_assert!(
                diff >= BigInt::from(0) && diff <= &qd * 2 && (&diff % &qd) == BigInt::from(0),
                "u·Q_D expected, got {}", diff
            );
        }
    }

    #[test]
    fn automorphism_domains_agree(seed in any::<u64>(), k in 0usize..N) {
        let ctx = ctx(NttKind::Fast);
        let be = CpuBackend::new(1).unwrap();
        let basis = Basis::qp(2, 2);
        let host = random_poly(&ctx, basis, seed);
        let galois = 2 * k + 1;
        let a = RnsPoly::<_, Coeff>::from_host(&be, &ctx, basis, &host).unwrap();
        let via_coeff = a.automorphism(&be, &ctx, galois).unwrap().into_eval(&be, &ctx).to_host(&be, &ctx).unwrap();
        let via_eval = a.clone().into_eval(&be, &ctx).automorphism(&be, &ctx, galois).unwrap().to_host(&be, &ctx).unwrap();
        prop_assert_eq!(&via_coeff, &via_eval);
        // Coefficient domain against the definition X^i -> X^(i·g) over big integers.
        let x = big(&ctx, basis, &host);
        let got = big(&ctx, basis, &a.automorphism(&be, &ctx, galois).unwrap().to_host(&be, &ctx).unwrap());
        for (i, xi) in x.iter().enumerate() {
            let j = (i * galois) % (2 * N);
            if j < N { prop_assert_eq!(&got[j], xi); } else { prop_assert_eq!(&got[j - N], &(-xi.clone())); }
        }
    }

    #[test]
    fn products_match_negacyclic_convolution(seed in any::<u64>()) {
        let ctx = ctx(NttKind::Fast);
        let be = CpuBackend::new(2).unwrap();
        let basis = Basis::q(3);
        let mut rng = Prng::from_seed([seed as u8; 32]);
        let a_small = sampler::sample_gaussian(&mut rng, N);
        let b_small: Vec<i64> = (0..N).map(|_| rng.below(1 << 40) as i64 - (1 << 39)).collect();
        let a = RnsPoly::<_, Coeff>::from_host(&be, &ctx, basis, &sampler::small_to_rns(&ctx, basis, &a_small)).unwrap().into_eval(&be, &ctx);
        let b = RnsPoly::<_, Coeff>::from_host(&be, &ctx, basis, &sampler::small_to_rns(&ctx, basis, &b_small)).unwrap().into_eval(&be, &ctx);
        let mut acc = RnsPoly::<_, Eval>::zero(&be, &ctx, basis).unwrap();
        acc.mul_acc(&be, &ctx, &a, &b).unwrap();
        acc.mul_acc(&be, &ctx, &a, &b).unwrap();
        let got = big(&ctx, basis, &acc.into_coeff(&be, &ctx).to_host(&be, &ctx).unwrap());
        let mut want = vec![BigInt::from(0); N];
        for i in 0..N { for j in 0..N {
            let p = BigInt::from(a_small[i]) * BigInt::from(b_small[j]) * 2;
            if i + j < N { want[i + j] += p; } else { want[i + j - N] -= p; }
        }}
        prop_assert_eq!(got, want);
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let ctx = ctx(NttKind::Fast);
    let be = CpuBackend::new(1).unwrap();
    let err = RnsPoly::<_, Coeff>::from_host(&be, &ctx, Basis::q(2), &[0; 3]).unwrap_err();
    assert!(matches!(err, hecnn_ring::RingError::LengthMismatch { .. }));
    let mut bad = vec![0u64; 2 * N];
    bad[5] = u64::MAX;
    let err = RnsPoly::<_, Coeff>::from_host(&be, &ctx, Basis::q(2), &bad).unwrap_err();
    assert!(matches!(
        err,
        hecnn_ring::RingError::UnreducedInput { limb: 0 }
    ));
    let a = RnsPoly::<_, Eval>::zero(&be, &ctx, Basis::q(3)).unwrap();
    let mut b = RnsPoly::<_, Eval>::zero(&be, &ctx, Basis::q(4)).unwrap();
    assert!(matches!(
        b.add_assign(&be, &ctx, &a),
        Err(hecnn_ring::RingError::BasisMismatch { .. })
    ));
    assert!(a.automorphism(&be, &ctx, 2).is_err());
}

/// `mul_sums_pair` (coefficient-blocked, both components per weight read) against one
/// `mul_sum` per row and component: prime sizes on either side of 2^50 (the IFMA and the
/// wide kernels where the CPU has them, the scalar path otherwise), several blocks per limb,
/// a shorter last span (300 inputs give 64-coefficient blocks, three threads three spans of
/// 1,408, 1,408 and 1,280 coefficients), rows of 0 to 20 terms, operands over a wider basis
/// than the outputs, outputs prefilled with noise (they must be overwritten) and one more
/// output than rows (it must be left alone).
#[test]
fn poly_row_sums_match_one_mul_sum_per_row() {
    use hecnn_ring::backend::{Operand, PolyRows};
    const LOG_N: u32 = 12;
    for (bits, inputs, threads) in [(30, 5, 1), (45, 5, 2), (45, 300, 3), (55, 5, 2), (61, 7, 1)] {
        let q = prime::ntt_primes(bits, LOG_N, 3).unwrap();
        let ctx = RnsContext::new(LOG_N, &q, &[], NttKind::Fast).unwrap();
        let (wide, basis) = (Basis::q(3), Basis::q(2));
        let be = CpuBackend::new(threads).unwrap();
        let poly = |seed: u64| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&seed.to_le_bytes());
            be.upload(&sampler::expand_uniform(&s, &ctx, wide)).unwrap()
        };
        let polys: Vec<[_; 2]> = (0..inputs as u64)
            .map(|i| [poly(2 * i), poly(2 * i + 1)])
            .collect();
        let row_ptr = [0usize, 3, 3, 23, 24];
        let cols: Vec<u32> = (0..24u32).map(|t| (t * 7 + t / 5) % inputs).collect();
        let weights: Vec<_> = (0..cols.len() as u64).map(|t| poly(1000 + t)).collect();
        let ops: Vec<[Operand<'_, CpuBackend>; 2]> =
            polys.iter().map(|[a, b]| [(a, wide), (b, wide)]).collect();
        let wops: Vec<Operand<'_, CpuBackend>> = weights.iter().map(|w| (w, wide)).collect();
        let rows = PolyRows {
            row_ptr: &row_ptr,
            cols: &cols,
            weights: &wops,
        };
        let words = basis.len() * ctx.n();
        let noise: Vec<u64> = (0..words as u64).map(|i| i % 1000 + 1).collect();
        let mut got: Vec<[_; 2]> = (0..=rows.rows())
            .map(|_| [be.upload(&noise).unwrap(), be.upload(&noise).unwrap()])
            .collect();
        be.mul_sums_pair(&ctx, basis, &ops, rows, &mut got);
        let case = format!("{bits}-bit primes, {inputs} inputs, {threads} threads");
        for (k, out) in got.iter().enumerate() {
            for (c, buf) in out.iter().enumerate() {
                let want = if k < rows.rows() {
                    let terms = row_ptr[k]..row_ptr[k + 1];
                    let a: Vec<_> = cols[terms.clone()]
                        .iter()
                        .map(|&j| ops[j as usize][c])
                        .collect();
                    let mut want = be.alloc(words).unwrap();
                    be.mul_sum(&ctx, basis, &mut want, &a, &wops[terms], None, false);
                    be.download(&want, words).unwrap()
                } else {
                    noise.clone()
                };
                assert_eq!(
                    be.download(buf, words).unwrap(),
                    want,
                    "{case}, row {k}, part {c}"
                );
            }
        }
    }
}

/// Element-wise products at every prime size the kernels distinguish (below 2^50: IFMA;
/// 2^50 to 2^61: the wide IFMA product; both fall back to scalar Barrett without IFMA)
/// against the scalar modular product.
#[test]
fn element_wise_products_are_exact_at_every_prime_size() {
    for bits in [30, 45, 50, 55, 61] {
        let q = prime::ntt_primes(bits, LOG_N, 3).unwrap();
        let ctx = RnsContext::new(LOG_N, &q, &[], NttKind::Fast).unwrap();
        let be = CpuBackend::new(2).unwrap();
        let basis = Basis::q(3);
        let a = random_poly(&ctx, basis, 11 + bits as u64);
        let b = random_poly(&ctx, basis, 97 + bits as u64);
        let mut x = RnsPoly::<_, Eval>::from_host(&be, &ctx, basis, &a).unwrap();
        let y = RnsPoly::<_, Eval>::from_host(&be, &ctx, basis, &b).unwrap();
        x.mul_assign(&be, &ctx, &y).unwrap();
        let got = x.to_host(&be, &ctx).unwrap();
        for (k, ((&g, &u), &v)) in got.iter().zip(&a).zip(&b).enumerate() {
            let m = ctx.modulus(k / N);
            assert_eq!(g, m.mul(u, v), "{bits}-bit primes, word {k}");
        }
    }
}
