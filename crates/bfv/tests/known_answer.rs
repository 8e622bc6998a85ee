//! Known-answer test of the HPS multiplication against an independent big-integer
//! computation: `⌊(t/Q)·(a ⊗ b)⌉ mod Q` from the centered integer components.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use hecnn_ring::{Basis, CpuBackend, crt::crt_centered};
use num_bigint::BigInt;
use num_traits::Euclid;

fn coeffs(c: &common::Ctx, ct: &hecnn_bfv::Ciphertext<CpuBackend>) -> Vec<Vec<BigInt>> {
    let ctx = c.params.rlwe().ctx();
    let basis = Basis::q(ct.level() + 1);
    ct.inner()
        .parts()
        .iter()
        .map(|p| {
            let host = p
                .clone()
                .into_coeff(&c.be, ctx)
                .to_host(&c.be, ctx)
                .unwrap();
            (0..c.n())
                .map(|i| crt_centered(ctx, basis, &host, i))
                .collect()
        })
        .collect()
}

/// Negacyclic product over the integers.
fn negacyclic(a: &[BigInt], b: &[BigInt]) -> Vec<BigInt> {
    let n = a.len();
    let mut out = vec![BigInt::from(0); n];
    for i in 0..n {
        for j in 0..n {
            let p = &a[i] * &b[j];
            if i + j < n {
                out[i + j] += p;
            } else {
                out[i + j - n] -= p;
            }
        }
    }
    out
}

#[test]
fn hps_multiplication_matches_big_integer_rounding_n4() {
    let mut c = common::setup(4, 2, &[]);
    let n = c.n();
    let big_q: BigInt = c
        .params
        .rlwe()
        .q()
        .iter()
        .map(|&q| BigInt::from(q))
        .product();
    let t = BigInt::from(common::T);
    let (a, b) = (
        c.encrypt(&common::values(1, n, common::T)),
        c.encrypt(&common::values(2, n, common::T)),
    );
    let d = c.eval.mul(&a, &b).unwrap();
    let (ia, ib, id) = (coeffs(&c, &a), coeffs(&c, &b), coeffs(&c, &d));
    let mut d1 = negacyclic(&ia[0], &ib[1]);
    for (x, y) in d1.iter_mut().zip(negacyclic(&ia[1], &ib[0])) {
        *x += y;
    }
    let exact = [negacyclic(&ia[0], &ib[0]), d1, negacyclic(&ia[1], &ib[1])];
    let mut off = 0;
    for (k, (want, got)) in exact.iter().zip(&id).enumerate() {
        for (i, (w, g)) in want.iter().zip(got).enumerate() {
            // ⌊t·w/Q⌉ = ⌊(2·t·w + Q) / (2Q)⌋, reduced to the centered range mod Q.
            let num: BigInt = &t * w * 2 + &big_q;
            let den: BigInt = &big_q * 2;
            let r: BigInt = num.div_euclid(&den);
            let mut diff: BigInt = (r - g).rem_euclid(&big_q);
            if diff > &big_q / 2 {
                diff -= &big_q;
            }
            assert!(
                diff.magnitude() <= &num_bigint::BigUint::from(1u32),
                "component {k}, coeff {i}: off by {diff}"
            );
            off += usize::from(diff != BigInt::from(0));
        }
    }
    // HPS rounds exactly except for rare floating-point ties.
    assert!(off <= 1, "{off} coefficients off by one");
}
