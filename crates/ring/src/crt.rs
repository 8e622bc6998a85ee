//! Chinese-remainder reconstruction: exact big-integer CRT (test oracle, parameter tools) and
//! Garner's mixed-radix conversion to `f64` (fast decoding without big integers).

use num_bigint::{BigInt, BigUint};

use crate::{Basis, RnsContext};

/// Exact centered CRT reconstruction of coefficient `idx` from limb-major coefficient-domain
/// data over `basis`: the representative in `(-Q/2, Q/2]`.
pub fn crt_centered(ctx: &RnsContext, basis: Basis, limbs: &[u64], idx: usize) -> BigInt {
    let n = ctx.n();
    let moduli = ctx.basis_moduli(&basis);
    let big_q: BigUint = moduli.iter().map(|m| BigUint::from(m.value())).product();
    let mut acc = BigUint::from(0u32);
    for (pos, m) in moduli.iter().enumerate() {
        let qi = BigUint::from(m.value());
        let q_hat = &big_q / &qi;
        let q_hat_mod = (&q_hat % &qi).to_u64_digits().first().copied().unwrap_or(0);
        let inv = m.inv(q_hat_mod).unwrap_or(0);
        let term = m.mul(limbs[pos * n + idx], inv);
        acc += q_hat * BigUint::from(term);
    }
    acc %= &big_q;
    let half = &big_q >> 1;
    if acc > half {
        BigInt::from(acc) - BigInt::from(big_q)
    } else {
        BigInt::from(acc)
    }
}

/// Centered values of every coefficient as `f64` (relative error about `L·2^-53`), by
/// Garner's algorithm: mixed-radix digits in word arithmetic, then a Horner evaluation on the
/// centered digits. Costs `O(L²)` word operations per coefficient, no allocation per
/// coefficient.
pub fn to_centered_f64(ctx: &RnsContext, basis: Basis, limbs: &[u64]) -> Vec<f64> {
    use rayon::prelude::*;
    let n = ctx.n();
    let moduli = ctx.basis_moduli(&basis);
    let l = moduli.len();
    // inv[i][j] = q_j^{-1} mod q_i for j < i.
    let inv: Vec<Vec<u64>> = (0..l)
        .map(|i| {
            (0..i)
                .map(|j| moduli[i].inv(moduli[j].value()).unwrap_or(0))
                .collect()
        })
        .collect();
    let garner = |residue: &dyn Fn(usize) -> u64, v: &mut [u64]| {
        for i in 0..l {
            let m = &moduli[i];
            let mut x = residue(i);
            for j in 0..i {
                // x = (x - v_j) · q_j^{-1} mod q_i
                x = m.mul(m.sub(x, m.reduce(v[j])), inv[i][j]);
            }
            v[i] = x;
        }
    };
    // Mixed-radix digits of (Q-1)/2: its residue mod q_i is -2^{-1} mod q_i (Q ≡ 0).
    let mut half = vec![0u64; l];
    garner(
        &|i| {
            let m = &moduli[i];
            m.neg(m.inv(2).unwrap_or(0))
        },
        &mut half,
    );
    (0..n)
        .into_par_iter()
        .map(|c| {
            let mut buf = [0u64; 64];
            let mut heap = Vec::new();
            let v: &mut [u64] = if l <= 64 {
                &mut buf[..l]
            } else {
                heap.resize(l, 0);
                &mut heap
            };
            garner(&|i| limbs[i * n + c], v);
            // value > (Q-1)/2 ⟺ its digit string is larger, compared from the top digit.
            let negative = v
                .iter()
                .rev()
                .zip(half.iter().rev())
                .find(|(a, b)| a != b)
                .is_some_and(|(a, b)| a > b);
            if negative {
                // Q - value: digits of (Q - 1 - value) + 1.
                let mut carry = 1u64;
                for i in 0..l {
                    let qi = moduli[i].value();
                    let d = qi - 1 - v[i] + carry;
                    if d == qi {
                        v[i] = 0;
                        carry = 1;
                    } else {
                        v[i] = d;
                        carry = 0;
                    }
                }
            }
            let mut acc = 0.0f64;
            for i in (0..l).rev() {
                acc = acc * moduli[i].value() as f64 + v[i] as f64;
            }
            if negative { -acc } else { acc }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_traits::ToPrimitive;

    #[test]
    fn garner_matches_bigint() {
        let q = crate::prime::ntt_primes(50, 4, 5).unwrap();
        let ctx = RnsContext::new(4, &q, &[], crate::NttKind::Fast).unwrap();
        let basis = Basis::q(5);
        let vals: Vec<i128> = vec![0, 1, -1, 123456789, -987654321987, 1 << 100, -(1 << 90), 7];
        let mut limbs = vec![0u64; 5 * 16];
        for (c, &v) in vals.iter().enumerate() {
            for (i, m) in ctx.basis_moduli(&basis).iter().enumerate() {
                limbs[i * 16 + c] = m.reduce_i128(v);
            }
        }
        let f = to_centered_f64(&ctx, basis, &limbs);
        for (c, &v) in vals.iter().enumerate() {
            let exact = crt_centered(&ctx, basis, &limbs, c).to_f64().unwrap();
            assert_eq!(exact, v as f64);
            assert!(
                (f[c] - v as f64).abs() <= (v as f64).abs() * 1e-15,
                "{c}: {} vs {v}",
                f[c]
            );
        }
    }

    #[test]
    fn garner_sign_at_the_half_modulus() {
        use num_bigint::BigUint;
        let q = crate::prime::ntt_primes(50, 4, 5).unwrap();
        let ctx = RnsContext::new(4, &q, &[], crate::NttKind::Fast).unwrap();
        let basis = Basis::q(5);
        let big_q: BigUint = q.iter().map(|&v| BigUint::from(v)).product();
        let half = (&big_q - 1u32) / 2u32;
        let vals = [
            half.clone(),
            &half + 1u32,
            &half - 1u32,
            &big_q - 1u32,
            BigUint::from(0u32),
        ];
        let mut limbs = vec![0u64; 5 * 16];
        for (c, v) in vals.iter().enumerate() {
            for (i, &qi) in q.iter().enumerate() {
                limbs[i * 16 + c] = (v % qi).to_u64_digits().first().copied().unwrap_or(0);
            }
        }
        let f = to_centered_f64(&ctx, basis, &limbs);
        for (c, &fc) in f.iter().enumerate().take(vals.len()) {
            let exact = crt_centered(&ctx, basis, &limbs, c).to_f64().unwrap();
            assert_eq!(fc.signum(), exact.signum(), "{c}");
            assert!(
                (fc - exact).abs() <= exact.abs() * 1e-14,
                "{c}: {fc} vs {exact}"
            );
        }
    }
}
