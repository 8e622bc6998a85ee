//! Every BFV operation against the same arithmetic mod t on the slot vectors (seeded random
//! data), at the toy ring sizes of `hecnn_testkit::test_log_ns()`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{T, add, mul, rotate_rows, setup, sub, swap_rows, values};
use hecnn_bfv::{BatchEncoder, Plaintext, encrypt_pk};

#[test]
fn encoder_round_trip_and_automorphisms_on_plaintexts() {
    for log_n in hecnn_testkit::test_log_ns() {
        let c = setup(log_n, 1, &[]);
        let n = c.n();
        let v = values(1, n, T);
        let pt = c.enc.encode(&v).unwrap();
        assert_eq!(c.enc.decode(&pt).unwrap(), v, "logN={log_n}");
        // Fewer values: zero padding.
        assert_eq!(
            c.enc.decode(&c.enc.encode(&v[..5]).unwrap()).unwrap()[..6],
            [v[0], v[1], v[2], v[3], v[4], 0]
        );
        // Signed values.
        let s: Vec<i64> = v.iter().map(|&x| x as i64 - (T / 2) as i64).collect();
        assert_eq!(
            c.enc
                .decode_signed(&c.enc.encode_signed(&s).unwrap())
                .unwrap(),
            s
        );
        // The layout: X ↦ X^(5^k) rotates the rows left by k, X ↦ X^(2N-1) swaps them.
        let auto = |pt: &Plaintext, g: usize| -> Vec<u64> {
            let mut out = vec![0u64; n];
            for (i, &x) in pt.coeffs().iter().enumerate() {
                let e = i * g % (2 * n);
                if e < n {
                    out[e] = (out[e] + x) % T;
                } else {
                    out[e - n] = (out[e - n] + T - x) % T;
                }
            }
            c.enc
                .decode(&Plaintext::from_coeffs(&c.params, &out).unwrap())
                .unwrap()
        };
        let ctx = c.params.rlwe().ctx();
        for k in [1i64, 2, 7, -1] {
            assert_eq!(
                auto(&pt, ctx.galois_element(k)),
                rotate_rows(&v, k),
                "k={k}"
            );
        }
        assert_eq!(auto(&pt, 2 * n - 1), swap_rows(&v));
    }
}

#[test]
fn encrypt_decrypt_secret_and_public_key() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 3, &[]);
        let v = values(2, c.n(), T);
        let ct = c.encrypt(&v);
        assert!(
            ct.inner().seed().is_some(),
            "secret-key encryption is seed-compressed"
        );
        assert_eq!(c.decrypt(&ct), v);
        let b_sk = c.budget(&ct);
        let pk = c.sk.public_key(&c.be, &mut c.rng).unwrap();
        let ct = encrypt_pk(
            &c.params,
            &pk,
            &c.be,
            &c.enc.encode(&v).unwrap(),
            &mut c.rng,
        )
        .unwrap();
        assert_eq!(c.decrypt(&ct), v);
        let b_pk = c.budget(&ct);
        let log_q = c.params.log_q_at(c.params.max_level());
        // Fresh noise: t·e with ‖e‖ about 2^4 (secret key: a Gaussian) to 2^(logN/2 + 4)
        // (public key: e·u + e_0 + e_1·s).
        let t_bits = (T as f64).log2();
        assert!(
            b_sk < log_q - t_bits - 3.0 && b_sk > log_q - t_bits - 8.0,
            "sk budget {b_sk}"
        );
        assert!(
            b_pk < b_sk && b_pk > log_q - t_bits - log_n as f64 / 2.0 - 10.0,
            "pk budget {b_pk}"
        );
        eprintln!("logN={log_n} logQ={log_q:.1}: fresh budget sk {b_sk:.1}, pk {b_pk:.1}");
    }
}

#[test]
fn additive_and_plaintext_operations_match_mod_t() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 2, &[]);
        let n = c.n();
        let (a, b, p) = (values(3, n, T), values(4, n, T), values(5, n, T));
        let (ca, cb) = (c.encrypt(&a), c.encrypt(&b));
        let pt = c.enc.encode(&p).unwrap();
        let e = &c.eval;
        assert_eq!(c.decrypt(&e.add(&ca, &cb).unwrap()), add(&a, &b));
        assert_eq!(c.decrypt(&e.sub(&ca, &cb).unwrap()), sub(&a, &b));
        let zero = vec![0u64; n];
        assert_eq!(c.decrypt(&e.neg(&ca).unwrap()), sub(&zero, &a));
        assert_eq!(c.decrypt(&e.add_plain(&ca, &pt).unwrap()), add(&a, &p));
        assert_eq!(c.decrypt(&e.sub_plain(&ca, &pt).unwrap()), sub(&a, &p));
        let prod = e.mul_plain(&ca, &pt).unwrap();
        assert_eq!(c.decrypt(&prod), mul(&a, &p));
        let k = 12345u64;
        assert_eq!(
            c.decrypt(&e.mul_scalar(&ca, k).unwrap()),
            mul(&a, &vec![k; n])
        );
        // A plaintext product costs about log2(t·√N) bits of budget.
        let lost = c.budget(&ca) - c.budget(&prod);
        let t_bits = (T as f64).log2();
        assert!(
            lost > t_bits - 2.0 && lost < t_bits + log_n as f64 + 2.0,
            "mul_plain cost {lost}"
        );
    }
}

#[test]
fn multiplication_relinearization_and_squaring() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 3, &[]);
        let n = c.n();
        let (a, b) = (values(6, n, T), values(7, n, T));
        let (ca, cb) = (c.encrypt(&a), c.encrypt(&b));
        let d = c.eval.mul(&ca, &cb).unwrap();
        assert_eq!(d.degree(), 2);
        assert_eq!(c.decrypt(&d), mul(&a, &b), "degree 2, logN={log_n}");
        let r = c.eval.relinearize(&d).unwrap();
        assert_eq!(r.degree(), 1);
        assert_eq!(c.decrypt(&r), mul(&a, &b));
        assert!(
            c.budget(&r) > c.budget(&d) - 1.0,
            "relinearization noise is negligible"
        );
        assert_eq!(c.decrypt(&c.eval.mul_relin(&ca, &ca).unwrap()), mul(&a, &a));
        // Sum of a degree-2 and a degree-1 ciphertext.
        assert_eq!(
            c.decrypt(&c.eval.add(&ca, &d).unwrap()),
            add(&a, &mul(&a, &b))
        );
        assert_eq!(
            c.decrypt(&c.eval.sub(&ca, &d).unwrap()),
            sub(&a, &mul(&a, &b))
        );
    }
}

#[test]
fn a_dot_product_equals_the_sum_of_its_products() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 3, &[]);
        let n = c.n();
        // Many pairs: the sum of tensor products grows with their count.
        let xs: Vec<Vec<u64>> = (0..48).map(|k| values(20 + k, n, T)).collect();
        let ys: Vec<Vec<u64>> = (0..48).map(|k| values(140 + k, n, T)).collect();
        let cx: Vec<_> = xs.iter().map(|v| c.encrypt(v)).collect();
        let cy: Vec<_> = ys.iter().map(|v| c.encrypt(v)).collect();
        let pairs: Vec<_> = cx.iter().zip(&cy).collect();
        let d = c.eval.dot(&pairs).unwrap();
        assert_eq!(d.degree(), 2);
        let want = xs
            .iter()
            .zip(&ys)
            .fold(vec![0; n], |acc, (x, y)| add(&acc, &mul(x, y)));
        assert_eq!(c.decrypt(&d), want, "logN={log_n}");
        // Fewer scalings than products: no noisier than the sum of the products.
        let mut sum = c.eval.mul(&cx[0], &cy[0]).unwrap();
        for (x, y) in cx.iter().zip(&cy).skip(1) {
            sum = c.eval.add(&sum, &c.eval.mul(x, y).unwrap()).unwrap();
        }
        assert_eq!(c.decrypt(&sum), want);
        assert!(c.budget(&d) >= c.budget(&sum) - 1.0);
        // A pair that is one ciphertext twice is a square.
        let sq = c.eval.dot(&[(&cx[0], &cx[0])]).unwrap();
        assert_eq!(c.decrypt(&sq), mul(&xs[0], &xs[0]));
        assert!(c.eval.dot(&[]).is_err());
    }
}

#[test]
fn multiplication_chain_until_the_budget_runs_out() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 4, &[]);
        let n = c.n();
        let mut want = values(8, n, T);
        let mut ct = c.encrypt(&want);
        let mut budget = c.budget(&ct);
        let mut depth = 0;
        let t_bits = (T as f64).log2();
        eprintln!(
            "logN={log_n} logQ={:.1} fresh budget {budget:.1}",
            c.params.log_q_at(4)
        );
        loop {
            let x = values(100 + depth, n, T);
            let cx = c.encrypt(&x);
            ct = c.eval.mul_relin(&ct, &cx).unwrap();
            want = mul(&want, &x);
            depth += 1;
            let b = c.budget(&ct);
            eprintln!("  depth {depth}: budget {b:.1} (−{:.1})", budget - b);
            // Below one bit the noise may have wrapped around (see `noise_budget_bits`).
            if b < 1.0 {
                break;
            }
            assert_eq!(c.decrypt(&ct), want, "depth {depth}, budget {b:.1}");
            let lost = budget - b;
            assert!(
                lost > t_bits && lost < t_bits + 2.0 * log_n as f64 + 8.0,
                "depth {depth}: lost {lost:.1} bits"
            );
            budget = b;
        }
        assert!(depth >= 3, "logN={log_n}: only {depth} multiplications");
        // Once the budget is gone, decryption fails (overwhelmingly likely).
        assert_ne!(c.decrypt(&ct), want);
    }
}

#[test]
fn rotations_match_the_rotated_matrix() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 2, &[1, 3, -2]);
        let v = values(9, c.n(), T);
        let ct = c.encrypt(&v);
        for k in [1i64, 3, -2] {
            let r = c.eval.rotate_rows(&ct, k).unwrap();
            assert_eq!(c.decrypt(&r), rotate_rows(&v, k), "logN={log_n} k={k}");
        }
        assert_eq!(c.decrypt(&c.eval.swap_rows(&ct).unwrap()), swap_rows(&v));
        assert_eq!(c.decrypt(&c.eval.rotate_rows(&ct, 0).unwrap()), v);
        // Rotation after a multiplication.
        let sq = c.eval.mul_relin(&ct, &ct).unwrap();
        assert_eq!(
            c.decrypt(&c.eval.rotate_rows(&sq, 1).unwrap()),
            rotate_rows(&mul(&v, &v), 1)
        );
    }
}

#[test]
fn modulus_switching_keeps_decryption_and_budget() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 3, &[1]);
        let n = c.n();
        let (a, b) = (values(10, n, T), values(11, n, T));
        let (ca, cb) = (c.encrypt(&a), c.encrypt(&b));
        let prod = c.eval.mul_relin(&ca, &cb).unwrap();
        let before = c.budget(&prod);
        let down = c.eval.mod_switch_to_next(&prod).unwrap();
        assert_eq!(down.level(), prod.level() - 1);
        assert_eq!(c.decrypt(&down), mul(&a, &b));
        let after = c.budget(&down);
        eprintln!("logN={log_n}: budget {before:.1} -> {after:.1} after switching");
        // The invariant noise is kept; the rounding term t·(ε_0 + ε_1·s)/Q_{l-1} (about
        // t·√N/Q_{l-1}) caps the budget at about log2(Q_{l-1}/t) − logN/2 − 4.
        let cap = c.params.log_q_at(down.level()) - (T as f64).log2() - log_n as f64 / 2.0 - 4.0;
        assert!(
            after >= before.min(cap) - 2.0 && after <= before + 0.5,
            "{before} -> {after} (cap {cap:.1})"
        );
        // Fresh ciphertexts: the rounding term dominates, the budget drops by < log2(q_l).
        let fresh = c.eval.mod_switch_to_level(&ca, 1).unwrap();
        assert_eq!(c.decrypt(&fresh), a);
        assert!(c.budget(&fresh) > 0.0);
        // Operations at the lower level: multiplication, rotation, plaintext ops.
        let cb1 = c.eval.mod_switch_to_level(&cb, 1).unwrap();
        let p = c.eval.mod_switch_to_level(&prod, 1).unwrap();
        let x = c.eval.mul_relin(&p, &cb1).unwrap();
        assert_eq!(c.decrypt(&x), mul(&mul(&a, &b), &b));
        assert_eq!(
            c.decrypt(&c.eval.rotate_rows(&fresh, 1).unwrap()),
            rotate_rows(&a, 1)
        );
        let pt = c.enc.encode(&b).unwrap();
        assert_eq!(
            c.decrypt(&c.eval.add_plain(&fresh, &pt).unwrap()),
            add(&a, &b)
        );
        assert_eq!(
            c.decrypt(&c.eval.mul_plain(&fresh, &pt).unwrap()),
            mul(&a, &b)
        );
        // Down to level 0.
        let z = c.eval.mod_switch_to_level(&prod, 0).unwrap();
        assert_eq!(c.decrypt(&z), mul(&a, &b));
    }
}

#[test]
fn integer_encoding_without_batching() {
    // t = 2^16 (not prime): constants only.
    let t = 1u64 << 16;
    let params = std::sync::Arc::new(
        hecnn_bfv::BfvParams::from_literal(&hecnn_testkit::toy_literal(10, 2), t).unwrap(),
    );
    assert!(!params.batching());
    assert!(matches!(
        BatchEncoder::new(&params),
        Err(hecnn_bfv::BfvError::BatchingUnavailable { t: 65536, n: 1024 })
    ));
    let be = hecnn_ring::CpuBackend::new(1).unwrap();
    let mut rng = hecnn_ring::Prng::from_seed([3; 32]);
    let sk = hecnn_rlwe::SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    let keys = sk
        .evaluation_keys(&be, &hecnn_rlwe::KeyRequirements::relin(), &mut rng)
        .unwrap();
    let eval = hecnn_bfv::Evaluator::new(
        std::sync::Arc::clone(&params),
        std::sync::Arc::new(keys),
        be.clone(),
    )
    .unwrap();
    let enc = |v: u64, rng: &mut hecnn_ring::Prng| {
        let pt = Plaintext::constant(&params, v).unwrap();
        hecnn_bfv::encrypt_sk(&params, &sk, &be, &pt, rng).unwrap()
    };
    let (x, y) = (40_000u64, 12_345u64);
    let (cx, cy) = (enc(x, &mut rng), enc(y, &mut rng));
    let dec = |ct: &hecnn_bfv::Ciphertext<hecnn_ring::CpuBackend>| {
        hecnn_bfv::decrypt(&params, &sk, &be, ct)
            .unwrap()
            .constant_coeff()
    };
    assert_eq!(dec(&eval.mul_relin(&cx, &cy).unwrap()), x * y % t);
    assert_eq!(dec(&eval.add(&cx, &cy).unwrap()), (x + y) % t);
    let c3 = Plaintext::constant_signed(&params, -3).unwrap();
    assert_eq!(dec(&eval.mul_plain(&cx, &c3).unwrap()), (t - 3) * x % t);
}

#[test]
fn prepared_plaintext_operands_match_the_uncached_path() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 3, &[]);
        let n = c.n();
        let (a, b, p) = (values(60, n, T), values(61, n, T), values(62, n, T));
        let pt = c.enc.encode(&p).unwrap();
        let top = c.params.max_level();
        let op = c.eval.prepare_plain(&pt, top).unwrap();
        assert_eq!(op.level(), top);
        let ca = c.encrypt(&a);
        let cb = c.encrypt(&b);
        let prod = c.eval.mul_relin(&ca, &cb).unwrap();
        let bytes = |ct: &hecnn_bfv::Ciphertext<hecnn_ring::CpuBackend>| {
            ct.to_bytes(&c.be, &c.params).unwrap()
        };
        for ct in [&ca, &prod] {
            // One operand prepared at the top level, reused at every level.
            for level in (0..=top).rev() {
                let x = c.eval.mod_switch_to_level(ct, level).unwrap();
                let cached = c.eval.mul_plain_operand(&x, &op).unwrap();
                let uncached = c.eval.mul_plain(&x, &pt).unwrap();
                assert_eq!(
                    bytes(&cached),
                    bytes(&uncached),
                    "logN={log_n} level {level}"
                );
                assert_eq!(c.decrypt(&cached), mul(&c.decrypt(&x), &p));
                // An operand prepared at exactly this level gives the same bits.
                let exact = c.eval.prepare_plain(&pt, level).unwrap();
                let y = c.eval.mul_plain_operand(&x, &exact).unwrap();
                assert_eq!(bytes(&y), bytes(&uncached));
            }
        }
        // A degree-2 ciphertext.
        let d = c.eval.mul(&ca, &ca).unwrap();
        assert_eq!(
            bytes(&c.eval.mul_plain_operand(&d, &op).unwrap()),
            bytes(&c.eval.mul_plain(&d, &pt).unwrap())
        );
        // Refusals: an operand below the ciphertext's level, another t.
        let low = c.eval.prepare_plain(&pt, 0).unwrap();
        assert!(matches!(
            c.eval.mul_plain_operand(&ca, &low),
            Err(hecnn_bfv::BfvError::LevelTooLow { needed, have: 0 }) if needed == top
        ));
        assert!(c.eval.prepare_plain(&pt, top + 1).is_err());
        let other =
            hecnn_bfv::BfvParams::new(std::sync::Arc::clone(c.params.rlwe()), 786_433).unwrap();
        let other_pt = Plaintext::constant(&other, 3).unwrap();
        assert!(c.eval.prepare_plain(&other_pt, top).is_err());
        // The operand's norm feeds the noise estimate exactly like the plaintext.
        let est = hecnn_bfv::NoiseModel::new(&c.params).fresh_sk();
        assert_eq!(
            est.mul_plain_norm(op.norm_sq()).budget_bits(),
            est.mul_plain(&pt).unwrap().budget_bits()
        );
    }
}
