//! Rotation keys restricted to the levels they are used at: they rotate correctly at and
//! below their level, refuse higher ciphertexts with a typed error, are smaller, and
//! round-trip through serialization.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use hecnn_ckks::{CkksError, CkksParams, Evaluator, encrypt_sk};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{EvaluationKeys, KeyRequirements, KeyStorage, RlweError, SecretKey};
use hecnn_testkit::{PrecisionStats, uniform_values};

#[test]
fn requirements_keep_the_highest_level_of_each_rotation() {
    let params = CkksParams::from_literal(&hecnn_testkit::toy_literal(10, 5), 40).unwrap();
    let rlwe = params.rlwe();
    let req = KeyRequirements::relin()
        .with_rotations_at([1, 2], 1)
        .with_rotations_at([2, 4], 3)
        .with_rotations([4, 8])
        .with_rotations_at([8], 0);
    let ctx = rlwe.ctx();
    let levels = req.galois_levels(rlwe);
    assert_eq!(levels[&ctx.galois_element(1)], 1);
    assert_eq!(levels[&ctx.galois_element(2)], 3);
    // Once needed at every level, a step stays so.
    assert_eq!(levels[&ctx.galois_element(4)], rlwe.max_level());
    assert_eq!(levels[&ctx.galois_element(8)], rlwe.max_level());
    // A union keeps the higher level of each step.
    let other = KeyRequirements::default().with_rotations_at([1], 2);
    let joined = req.clone().union(&other);
    assert_eq!(joined.galois_levels(rlwe)[&ctx.galois_element(1)], 2);
    assert_eq!(
        other.union(&req).galois_levels(rlwe),
        joined.galois_levels(rlwe)
    );
    // Six primes in digits of two: a level-1 key has one digit of four limbs, a full key
    // three of eight.
    assert_eq!(rlwe.dnum(), 3);
    assert_eq!(rlwe.digits_at(1), 1);
    assert_eq!(rlwe.digits_at(2), 2);
    let n = rlwe.n();
    assert_eq!(rlwe.switching_key_bytes_at(1), 4 * n * 8 + 32);
    assert_eq!(rlwe.switching_key_bytes(), 3 * (8 * n * 8 + 32));
}

#[test]
fn restricted_keys_rotate_below_their_level_and_refuse_above() {
    for log_n in hecnn_testkit::test_log_ns() {
        let params =
            Arc::new(CkksParams::from_literal(&hecnn_testkit::toy_literal(log_n, 5), 40).unwrap());
        let be = CpuBackend::new(2).unwrap();
        let mut rng = Prng::from_seed([7; 32]);
        let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
        let req = KeyRequirements::relin()
            .with_rotations_at([1, 5], 2)
            .with_rotations_at([3], 0)
            .with_rotations([7]);
        let keys = sk.evaluation_keys(&be, &req, &mut rng).unwrap();
        assert_eq!(keys.size_bytes(), req.key_bytes(params.rlwe()));
        let full = KeyRequirements::relin().with_rotations([1, 3, 5, 7]);
        assert!(keys.size_bytes() < full.key_bytes(params.rlwe()));

        // The keys after a serialization round trip behave the same.
        let bytes = keys.to_bytes(&be).unwrap();
        assert!(
            bytes.len() <= keys.size_bytes() + 4096,
            "{} bytes",
            bytes.len()
        );
        let loaded = EvaluationKeys::from_bytes(&be, params.rlwe(), &bytes, 8).unwrap();
        let ctx = params.rlwe().ctx();
        for (step, level) in [(1, 2), (3, 0), (5, 2), (7, params.max_level())] {
            let g = ctx.galois_element(step);
            assert_eq!(loaded.galois(g).unwrap().max_level(), level, "step {step}");
        }

        for keys in [keys, loaded] {
            let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
            let slots = params.max_slots();
            let x = uniform_values(3, slots);
            let pt = eval
                .encode_real(&x, params.max_level(), params.default_scale(), slots)
                .unwrap();
            let top = encrypt_sk(&sk, &be, &pt, &mut rng).unwrap();
            let decrypt = |ct: &hecnn_ckks::Ciphertext<CpuBackend>| {
                let pt = hecnn_ckks::decrypt(&sk, &be, ct).unwrap();
                eval.encoder().decode_real(&be, &params, &pt).unwrap()
            };
            let rotated =
                |k: i64| -> Vec<f64> { (0..slots).map(|i| x[(i + k as usize) % slots]).collect() };
            for (step, level) in [(1, 2), (1, 1), (5, 2), (3, 0), (7, params.max_level())] {
                let ct = eval.drop_to_level(&top, level).unwrap();
                let got = decrypt(&eval.rotate(&ct, step).unwrap());
                PrecisionStats::real(&rotated(step), &got).assert_at_least(
                    &format!("rotate {step} at level {level}, logN={log_n}"),
                    20.0,
                    23.0,
                );
            }
            let at2 = eval.drop_to_level(&top, 2).unwrap();
            let hoisted = eval.rotate_hoisted(&at2, &[1, 5]).unwrap();
            for (k, ct) in [1i64, 5].iter().zip(&hoisted) {
                PrecisionStats::real(&rotated(*k), &decrypt(ct)).assert_at_least(
                    "hoisted at level 2",
                    20.0,
                    23.0,
                );
            }
            // Above a key's level: a typed error naming both levels, never a wrong result.
            for (step, level) in [(1, 3), (3, 1), (5, params.max_level())] {
                let ct = eval.drop_to_level(&top, level).unwrap();
                match eval.rotate(&ct, step) {
                    Err(CkksError::Rlwe(RlweError::KeyLevel {
                        level: l,
                        key_level,
                    })) => assert_eq!((l, key_level < l), (level, true)),
                    other => panic!("rotate {step} at level {level}: {:?}", other.map(|_| ())),
                }
            }
        }
    }
}

#[test]
fn compact_keys_switch_exactly_as_expanded_ones_in_half_the_memory() {
    let params =
        Arc::new(CkksParams::from_literal(&hecnn_testkit::toy_literal(11, 4), 40).unwrap());
    let be = CpuBackend::new(2).unwrap();
    let sk = SecretKey::generate(params.rlwe(), &mut Prng::from_seed([1; 32])).unwrap();
    let req = KeyRequirements::relin()
        .with_rotations_at([1, 3], 2)
        .with_rotations([5]);
    // The same generator state: the same keys, held two ways.
    let expanded = sk
        .evaluation_keys_with(
            &be,
            &req,
            KeyStorage::Expanded,
            &mut Prng::from_seed([2; 32]),
        )
        .unwrap();
    let compact = sk
        .evaluation_keys_with(
            &be,
            &req,
            KeyStorage::Compact,
            &mut Prng::from_seed([2; 32]),
        )
        .unwrap();
    assert_eq!(2 * compact.memory_bytes(), expanded.memory_bytes());
    assert_eq!(
        compact.to_bytes(&be).unwrap(),
        expanded.to_bytes(&be).unwrap()
    );
    let loaded = EvaluationKeys::from_bytes_with(
        &be,
        params.rlwe(),
        &expanded.to_bytes(&be).unwrap(),
        8,
        KeyStorage::Compact,
    )
    .unwrap();
    assert_eq!(loaded.memory_bytes(), compact.memory_bytes());
    let mut compacted =
        EvaluationKeys::from_bytes(&be, params.rlwe(), &expanded.to_bytes(&be).unwrap(), 8)
            .unwrap();
    compacted.compact();
    assert_eq!(compacted.memory_bytes(), compact.memory_bytes());

    let evals: Vec<Evaluator<CpuBackend>> = [expanded, compact, loaded]
        .into_iter()
        .map(|k| Evaluator::new(Arc::clone(&params), Arc::new(k), be.clone()).unwrap())
        .collect();
    let slots = params.max_slots();
    let x = uniform_values(4, slots);
    let pt = evals[0]
        .encode_real(&x, params.max_level(), params.default_scale(), slots)
        .unwrap();
    let ct = encrypt_sk(&sk, &be, &pt, &mut Prng::from_seed([3; 32])).unwrap();
    let at2 = evals[0].drop_to_level(&ct, 2).unwrap();
    let run = |e: &Evaluator<CpuBackend>| {
        let r = e.rotate(&at2, 1).unwrap();
        let h = e.rotate_hoisted(&at2, &[3, 1]).unwrap();
        let m = e
            .rescale(&e.mul_relin(&ct, &e.rotate(&ct, 5).unwrap()).unwrap())
            .unwrap();
        [r, h[0].clone(), h[1].clone(), m]
            .iter()
            .map(|c| c.to_bytes(&be, &params).unwrap())
            .collect::<Vec<_>>()
    };
    let want = run(&evals[0]);
    for e in &evals[1..] {
        assert_eq!(
            run(e),
            want,
            "compact keys switch to the very same ciphertexts"
        );
    }
}
