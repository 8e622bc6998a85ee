//! The key-free noise estimate (`hecnn_bfv::noise`) against the budget measured with the
//! secret key, after every kind of operation and along multiplication chains, on seeded
//! random data at the toy ring sizes of `hecnn_testkit::test_log_ns()`.
//!
//! The margins asserted are the ones the module documentation states: the estimate is never
//! more optimistic than the measurement by more than `OPTIMISM` bits, never more pessimistic
//! by more than `PESSIMISM` bits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{T, setup, values};
use hecnn_bfv::{Ciphertext, NoiseEstimate, NoiseModel, encrypt_pk};
use hecnn_ring::CpuBackend;

/// Largest allowed `estimate − measured` (bits).
const OPTIMISM: f64 = 1.0;
/// Largest allowed `measured − estimate` (bits).
const PESSIMISM: f64 = 4.0;

/// Compares (skipping a measurement floored at zero, where the noise may have wrapped) and
/// returns `estimate − measured`.
fn check(c: &common::Ctx, what: &str, est: &NoiseEstimate, ct: &Ciphertext<CpuBackend>) -> f64 {
    assert_eq!(est.level(), ct.level(), "{what}: level");
    assert_eq!(est.degree(), ct.degree(), "{what}: degree");
    let measured = c.budget(ct);
    let predicted = est.budget_bits();
    let diff = predicted - measured;
    eprintln!(
        "  {what:<28} measured {measured:7.2}  estimated {predicted:7.2}  (est − meas {diff:+.2})"
    );
    if measured >= 1.0 {
        assert!(
            diff <= OPTIMISM && -diff <= PESSIMISM,
            "{what}: estimate {predicted:.2} vs measured {measured:.2}"
        );
    }
    diff
}

#[test]
fn estimate_tracks_every_operation() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 3, &[1, 5]);
        let model = NoiseModel::new(&c.params);
        let n = c.n();
        eprintln!("logN={log_n} (tail factor {:.2})", model.tail_factor());
        let (a, b, p) = (values(20, n, T), values(21, n, T), values(22, n, T));
        let (ca, cb) = (c.encrypt(&a), c.encrypt(&b));
        let fresh = model.fresh_sk();
        check(&c, "fresh (secret key)", &fresh, &ca);

        let pk = c.sk.public_key(&c.be, &mut c.rng).unwrap();
        let pt_a = c.enc.encode(&a).unwrap();
        let cpk = encrypt_pk(&c.params, &pk, &c.be, &pt_a, &mut c.rng).unwrap();
        let fresh_pk = model.fresh_pk();
        check(&c, "fresh (public key)", &fresh_pk, &cpk);

        let e = &c.eval;
        check(
            &c,
            "add",
            &fresh.add(&fresh).unwrap(),
            &e.add(&ca, &cb).unwrap(),
        );
        check(
            &c,
            "sub (pk − sk)",
            &fresh_pk.sub(&fresh).unwrap(),
            &e.sub(&cpk, &cb).unwrap(),
        );
        let pt = c.enc.encode(&p).unwrap();
        check(
            &c,
            "add_plain",
            &fresh.add_plain(),
            &e.add_plain(&ca, &pt).unwrap(),
        );
        let mp = e.mul_plain(&ca, &pt).unwrap();
        check(&c, "mul_plain", &fresh.mul_plain(&pt).unwrap(), &mp);
        check(&c, "mul_plain (uniform)", &fresh.mul_plain_uniform(), &mp);
        // A sparse plaintext: a small constant.
        let small = hecnn_bfv::Plaintext::constant(&c.params, 3).unwrap();
        check(
            &c,
            "mul_plain (constant 3)",
            &fresh.mul_plain(&small).unwrap(),
            &e.mul_plain(&ca, &small).unwrap(),
        );
        check(
            &c,
            "mul_scalar",
            &fresh.mul_scalar(1000).unwrap(),
            &e.mul_scalar(&ca, 1000).unwrap(),
        );

        let d = e.mul(&ca, &cb).unwrap();
        let d_est = fresh.mul(&fresh).unwrap();
        check(&c, "mul (degree 2)", &d_est, &d);
        let r = e.relinearize(&d).unwrap();
        let r_est = d_est.relinearize().unwrap();
        check(&c, "relinearize", &r_est, &r);
        check(
            &c,
            "square, relinearized",
            &fresh.square_relin().unwrap(),
            &e.mul_relin(&ca, &ca).unwrap(),
        );
        check(
            &c,
            "mul_relin (pk × sk)",
            &fresh_pk.mul_relin(&fresh).unwrap(),
            &e.mul_relin(&cpk, &cb).unwrap(),
        );

        check(
            &c,
            "rotate fresh",
            &fresh.rotate_rows(1).unwrap(),
            &e.rotate_rows(&ca, 1).unwrap(),
        );
        check(
            &c,
            "swap rows fresh",
            &fresh.swap_rows().unwrap(),
            &e.swap_rows(&ca).unwrap(),
        );
        check(
            &c,
            "rotate product",
            &r_est.rotate_rows(5).unwrap(),
            &e.rotate_rows(&r, 5).unwrap(),
        );

        check(
            &c,
            "mod switch fresh",
            &fresh.mod_switch_to_next().unwrap(),
            &e.mod_switch_to_next(&ca).unwrap(),
        );
        check(
            &c,
            "mod switch fresh to 0",
            &fresh.mod_switch_to_level(0).unwrap(),
            &e.mod_switch_to_level(&ca, 0).unwrap(),
        );
        check(
            &c,
            "mod switch product",
            &r_est.mod_switch_to_next().unwrap(),
            &e.mod_switch_to_next(&r).unwrap(),
        );
        check(
            &c,
            "mod switch degree 2",
            &d_est.mod_switch_to_next().unwrap(),
            &e.mod_switch_to_next(&d).unwrap(),
        );
        // Operations at a lower level.
        let a1 = e.mod_switch_to_level(&ca, 1).unwrap();
        let b1 = e.mod_switch_to_level(&cb, 1).unwrap();
        let f1 = fresh.mod_switch_to_level(1).unwrap();
        let prod1 = e.mul_relin(&a1, &b1).unwrap();
        let prod1_est = f1.mul_relin(&f1).unwrap();
        check(&c, "mul_relin at level 1", &prod1_est, &prod1);
        check(
            &c,
            "rotate at level 1",
            &prod1_est.rotate_rows(1).unwrap(),
            &e.rotate_rows(&prod1, 1).unwrap(),
        );
    }
}

#[test]
fn estimate_tracks_multiplication_chains() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 4, &[1]);
        let model = NoiseModel::new(&c.params);
        let n = c.n();
        eprintln!("logN={log_n}: chain of products with fresh operands");
        let mut ct = c.encrypt(&values(30, n, T));
        let mut est = model.fresh_sk();
        let mut depth = 0;
        loop {
            let x = c.encrypt(&values(31 + depth, n, T));
            ct = c.eval.mul_relin(&ct, &x).unwrap();
            est = est.mul_relin(&model.fresh_sk()).unwrap();
            depth += 1;
            check(&c, &format!("depth {depth}"), &est, &ct);
            if c.budget(&ct) < 1.0 {
                break;
            }
        }
        assert!(depth >= 3);

        eprintln!("logN={log_n}: repeated squaring, switching down after each square");
        let mut ct = c.encrypt(&values(35, n, T));
        let mut est = model.fresh_sk();
        for step in 0.. {
            ct = c.eval.mul_relin(&ct, &ct).unwrap();
            est = est.square_relin().unwrap();
            check(&c, &format!("square {step}"), &est, &ct);
            if c.budget(&ct) < 1.0 {
                break;
            }
            if ct.level() > 0 {
                ct = c.eval.mod_switch_to_next(&ct).unwrap();
                est = est.mod_switch_to_next().unwrap();
                check(&c, &format!("square {step}, switched"), &est, &ct);
            }
        }

        eprintln!("logN={log_n}: squares, rotations, plaintext products, modulus switches");
        let mut ct = c.encrypt(&values(40, n, T));
        let mut est = model.fresh_sk();
        let pt = c.enc.encode(&values(41, n, T)).unwrap();
        for step in 0.. {
            ct = c.eval.mul_relin(&ct, &ct).unwrap();
            est = est.square_relin().unwrap();
            check(&c, &format!("step {step}: square"), &est, &ct);
            ct = c.eval.rotate_rows(&ct, 1).unwrap();
            est = est.rotate_rows(1).unwrap();
            ct = c.eval.add_plain(&ct, &pt).unwrap();
            est = est.add_plain();
            check(&c, &format!("step {step}: rotate, add_plain"), &est, &ct);
            if ct.level() > 1 {
                ct = c.eval.mod_switch_to_next(&ct).unwrap();
                est = est.mod_switch_to_next().unwrap();
                check(&c, &format!("step {step}: mod switch"), &est, &ct);
            }
            ct = c.eval.mul_plain(&ct, &pt).unwrap();
            est = est.mul_plain(&pt).unwrap();
            check(&c, &format!("step {step}: mul_plain"), &est, &ct);
            if c.budget(&ct) < 1.0 {
                break;
            }
        }
    }
}

#[test]
fn estimate_refuses_what_the_evaluator_refuses() {
    let c = setup(10, 2, &[]);
    let model = NoiseModel::new(&c.params);
    let fresh = model.fresh_sk();
    let low = fresh.mod_switch_to_next().unwrap();
    assert!(matches!(
        fresh.add(&low),
        Err(hecnn_bfv::BfvError::LevelMismatch { lhs: 2, rhs: 1 })
    ));
    let d = fresh.mul(&fresh).unwrap();
    assert!(matches!(
        d.mul(&fresh),
        Err(hecnn_bfv::BfvError::Degree { expected: 1, .. })
    ));
    assert!(matches!(
        fresh.relinearize(),
        Err(hecnn_bfv::BfvError::Degree { expected: 2, .. })
    ));
    assert!(d.rotate_rows(1).is_err());
    assert!(matches!(
        fresh.mod_switch_to_level(0).unwrap().mod_switch_to_next(),
        Err(hecnn_bfv::BfvError::LevelTooLow { .. })
    ));
    assert!(fresh.mul_scalar(T).is_err());
    // Another t: another model.
    let other = std::sync::Arc::new(
        hecnn_bfv::BfvParams::from_literal(&hecnn_testkit::toy_literal(10, 2), 786433).unwrap(),
    );
    let other_fresh = NoiseModel::new(&other).fresh_sk();
    assert!(matches!(
        fresh.add(&other_fresh),
        Err(hecnn_bfv::BfvError::ParamsMismatch)
    ));
    let pt = c.enc.encode(&[1, 2, 3]).unwrap();
    assert!(matches!(
        other_fresh.mul_plain(&pt),
        Err(hecnn_bfv::BfvError::ParamsMismatch)
    ));
    // Budgets decrease along the obvious orders.
    assert!(model.fresh_pk().budget_bits() < fresh.budget_bits());
    assert!(d.budget_bits() < fresh.budget_bits());
    assert!(fresh.rotate_rows(0).unwrap().budget_bits() == fresh.budget_bits());
}

/// The model is not tuned to `t = 65537`: a 20-bit batching prime and a power of two (no
/// batching, coefficient encoding), fresh, plaintext product, rotation and a product chain.
#[test]
fn estimate_holds_for_other_plaintext_moduli() {
    use hecnn_bfv::{BfvParams, Evaluator, Plaintext, decrypt, encrypt_sk, noise_budget_bits};
    use hecnn_ring::Prng;
    use hecnn_rlwe::{KeyRequirements, SecretKey};
    use std::sync::Arc;

    for log_n in hecnn_testkit::test_log_ns() {
        for t in [786_433u64, 1 << 16, 17] {
            let params = Arc::new(
                BfvParams::from_literal(&hecnn_testkit::toy_literal(log_n, 4), t).unwrap(),
            );
            let be = CpuBackend::new(2).unwrap();
            let mut rng = Prng::from_seed([t as u8 ^ log_n as u8; 32]);
            let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
            let keys = sk
                .evaluation_keys(&be, &KeyRequirements::relin().with_rotations([1]), &mut rng)
                .unwrap();
            let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
            let model = NoiseModel::new(&params);
            let n = params.n();
            let mut seed = 70;
            let mut fresh = |rng: &mut Prng| {
                seed += 1;
                let pt = Plaintext::from_coeffs(&params, &values(seed, n, t)).unwrap();
                (encrypt_sk(&params, &sk, &be, &pt, rng).unwrap(), pt)
            };
            let cmp = |what: &str, est: &NoiseEstimate, ct: &Ciphertext<CpuBackend>| {
                let measured = noise_budget_bits(&params, &sk, &be, ct).unwrap();
                let diff = est.budget_bits() - measured;
                eprintln!(
                    "  t={t} logN={log_n} {what:<14} measured {measured:7.2} est − meas {diff:+.2}"
                );
                if measured >= 1.0 {
                    assert!(
                        diff <= OPTIMISM && -diff <= PESSIMISM,
                        "t={t} {what}: {diff}"
                    );
                }
                measured
            };
            let (ca, pa) = fresh(&mut rng);
            let (_, pb) = fresh(&mut rng);
            let f = model.fresh_sk();
            cmp("fresh", &f, &ca);
            cmp(
                "mul_plain",
                &f.mul_plain(&pb).unwrap(),
                &eval.mul_plain(&ca, &pb).unwrap(),
            );
            let g = params.rlwe().ctx().galois_element(1);
            cmp(
                "rotation",
                &f.apply_galois().unwrap(),
                &eval.apply_galois(&ca, g).unwrap(),
            );
            let mut ct = ca;
            let mut est = f;
            for depth in 1.. {
                let (x, _) = fresh(&mut rng);
                ct = eval.mul_relin(&ct, &x).unwrap();
                est = est.mul_relin(&model.fresh_sk()).unwrap();
                if cmp(&format!("depth {depth}"), &est, &ct) < 1.0 {
                    break;
                }
            }
            // Still decrypts what it should before the budget runs out (sanity of the setup).
            let _ = decrypt(&params, &sk, &be, &ct).unwrap();
            let _ = pa;
        }
    }
}
