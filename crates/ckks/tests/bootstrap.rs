//! Bootstrapping at toy (insecure) ring sizes: full and sparse slots, against the input
//! values. The full-size check (N = 2^16, 2^15 slots, 128-bit) is `#[ignore]`d:
//! `cargo test --release -p hecnn-ckks --test bootstrap -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use hecnn_ckks::bootstrap::bootstrap_literal;
use hecnn_ckks::{BootstrapConfig, Bootstrapper, CkksParams, Complex64, Evaluator, encrypt_sk};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{SecretKey, SecurityLevel};
use hecnn_testkit::{PrecisionStats, uniform_values};

struct Run {
    stats: PrecisionStats,
    level: usize,
}

fn run(log_n: u32, config: BootstrapConfig, residual: usize, security: SecurityLevel) -> Run {
    let lit = bootstrap_literal(log_n, residual, &config, security).unwrap();
    let params = Arc::new(CkksParams::from_literal(&lit, 40).unwrap());
    let be = CpuBackend::new(2).unwrap();
    let mut rng = Prng::from_seed([7; 32]);
    let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    let req = config.key_requirements(&params).unwrap();
    let keys = sk.evaluation_keys(&be, &req, &mut rng).unwrap();
    let encaps = sk
        .encapsulation_keys(&be, config.ephemeral_weight, &mut rng)
        .unwrap();
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
    let slots = config.slots;
    let boot = Bootstrapper::new(&eval, config, encaps).unwrap();

    let re = uniform_values(11, slots);
    let im = uniform_values(12, slots);
    let z: Vec<Complex64> = re
        .iter()
        .zip(&im)
        .map(|(&a, &b)| Complex64::new(a, b))
        .collect();
    let pt = eval.encode(&z, 0, params.default_scale(), slots).unwrap();
    let ct = encrypt_sk(&sk, &be, &pt, &mut rng).unwrap();
    let before = eval.op_counts();
    let out = boot.bootstrap(&eval, &ct).unwrap();
    assert_eq!(out.scale(), params.default_scale());
    // The time estimate's tally counts the key switches this bootstrap ran (and the switch
    // back to the dense secret, which the evaluator does not count).
    let ran = eval.op_counts().since(&before).key_switches() as f64;
    let tallied = boot.config().op_tally(&params).unwrap().key_switches() - 1.0;
    assert!(
        (tallied - ran).abs() <= 0.1 * ran,
        "ran {ran}, tallied {tallied}"
    );
    let got = eval
        .encoder()
        .decode(&be, &params, &hecnn_ckks::decrypt(&sk, &be, &out).unwrap())
        .unwrap();
    Run {
        stats: PrecisionStats::complex(&z, &got),
        level: out.level(),
    }
}

#[test]
fn full_slots_toy() {
    let mut c = BootstrapConfig::new(1 << 10);
    c.cts_levels = 3;
    c.stc_levels = 2;
    let r = run(11, c, 2, SecurityLevel::UncheckedForReproduction);
    eprintln!("full slots, N = 2^11: {:?}", r.stats);
    assert_eq!(r.level, 2);
    r.stats
        .assert_at_least("full-slot bootstrap (toy)", 15.0, 18.0);
}

#[test]
fn sparse_slots_toy() {
    for slots in [1usize << 4, 1 << 8] {
        let mut c = BootstrapConfig::new(slots);
        c.cts_levels = 2;
        c.stc_levels = 2;
        let r = run(11, c, 1, SecurityLevel::UncheckedForReproduction);
        eprintln!("{slots} slots, N = 2^11: {:?}", r.stats);
        assert_eq!(r.level, 1);
        r.stats
            .assert_at_least("sparse-slot bootstrap (toy)", 15.0, 18.0);
    }
}

#[test]
fn rejects_bad_configurations_and_inputs() {
    let params =
        Arc::new(CkksParams::from_literal(&hecnn_testkit::toy_literal(10, 3), 40).unwrap());
    let mut c = BootstrapConfig::new(1 << 4);
    c.cts_levels = 5; // more levels than the 4 butterfly stages of 16 slots
    assert!(c.key_requirements(&params).is_err());
    let c = BootstrapConfig::new(3);
    assert!(c.key_requirements(&params).is_err());
    let c = BootstrapConfig::new(1 << 12); // above n/2
    assert!(c.key_requirements(&params).is_err());
}

#[test]
fn refuses_too_few_levels_and_foreign_keys() {
    let mut config = BootstrapConfig::new(1 << 4);
    config.cts_levels = 2;
    config.stc_levels = 2;
    // Parameters with too few levels for the circuit.
    let lit = hecnn_testkit::toy_literal(11, 4);
    let params = Arc::new(CkksParams::from_literal(&lit, 40).unwrap());
    let be = CpuBackend::new(1).unwrap();
    let mut rng = Prng::from_seed([9; 32]);
    let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    // The key requirements already name the missing levels.
    let err = config.key_requirements(&params).unwrap_err();
    assert!(
        matches!(err, hecnn_ckks::CkksError::LevelTooLow { .. }),
        "{err}"
    );
    let keys = sk
        .evaluation_keys(&be, &hecnn_rlwe::KeyRequirements::relin(), &mut rng)
        .unwrap();
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
    let encaps = sk.encapsulation_keys(&be, 32, &mut rng).unwrap();
    let err = Bootstrapper::new(&eval, config.clone(), encaps).unwrap_err();
    assert!(
        matches!(err, hecnn_ckks::CkksError::LevelTooLow { .. }),
        "{err}"
    );
    // Encapsulation keys of another secret key.
    let other = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    let encaps = other.encapsulation_keys(&be, 32, &mut rng).unwrap();
    assert!(Bootstrapper::new(&eval, config, encaps).is_err());
}

/// The full-size check: N = 2^16, 2^15 slots, 128-bit (checked on the whole log QP),
/// mean precision ≥ 20 bits, minimum ≥ 15 bits, ≥ 9 levels left. About 13 GB of memory and a
/// minute on two cores:
/// `cargo test --release -p hecnn-ckks --test bootstrap -- --ignored --nocapture`.
#[test]
#[ignore = "N = 2^16: ~13 GB and a minute; run explicitly"]
fn full_size_n16_precision() {
    let r = run(16, BootstrapConfig::new(1 << 15), 9, SecurityLevel::Bits128);
    eprintln!(
        "N = 2^16, 2^15 slots: {:?}, {} levels left",
        r.stats, r.level
    );
    assert!(r.level >= 9);
    r.stats.assert_at_least("full-size bootstrap", 15.0, 20.0);
}

/// Encapsulation keys written and read back (expanded and compact) bootstrap to the very
/// same ciphertext; truncated, foreign and mislabelled files are refused.
#[test]
fn encapsulation_keys_round_trip_through_bytes() {
    use hecnn_rlwe::{EncapsulationKeys, KeyStorage, RlweError};
    let mut config = BootstrapConfig::new(1 << 4);
    config.cts_levels = 2;
    config.stc_levels = 2;
    let lit = bootstrap_literal(11, 1, &config, SecurityLevel::UncheckedForReproduction).unwrap();
    let params = Arc::new(CkksParams::from_literal(&lit, 40).unwrap());
    let be = CpuBackend::new(2).unwrap();
    let mut rng = Prng::from_seed([21; 32]);
    let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    let req = config.key_requirements(&params).unwrap();
    let keys = Arc::new(sk.evaluation_keys(&be, &req, &mut rng).unwrap());
    let encaps = sk
        .encapsulation_keys(&be, config.ephemeral_weight, &mut rng)
        .unwrap();
    let bytes = encaps.to_bytes(&be).unwrap();
    let eval = Evaluator::new(Arc::clone(&params), Arc::clone(&keys), be.clone()).unwrap();

    let z: Vec<Complex64> = uniform_values(3, config.slots)
        .into_iter()
        .map(|v| Complex64::new(v, -v))
        .collect();
    let pt = eval
        .encode(&z, 0, params.default_scale(), config.slots)
        .unwrap();
    let ct = encrypt_sk(&sk, &be, &pt, &mut rng).unwrap();
    let boot = |e: EncapsulationKeys<CpuBackend>| {
        let b = Bootstrapper::new(&eval, config.clone(), e).unwrap();
        b.bootstrap(&eval, &ct)
            .unwrap()
            .to_bytes(&be, &params)
            .unwrap()
    };
    let before = eval.op_counts();
    let want = boot(encaps);
    // The time estimate's tally of one bootstrap against the key switches it ran (the
    // switch back to the dense secret goes through the encapsulation keys, which the
    // evaluator does not count).
    let ran = eval.op_counts().since(&before).key_switches() as f64;
    let tallied = config.op_tally(&params).unwrap().key_switches() - 1.0;
    eprintln!("bootstrap key switches: ran {ran}, tallied {tallied}");
    assert!(
        (tallied - ran).abs() <= 0.1 * ran,
        "ran {ran}, tallied {tallied}"
    );
    // Keys made for another ephemeral weight are refused.
    let other = sk.encapsulation_keys(&be, 16, &mut rng).unwrap();
    assert!(Bootstrapper::new(&eval, config.clone(), other).is_err());
    for storage in [KeyStorage::Expanded, KeyStorage::Compact] {
        let loaded =
            EncapsulationKeys::from_bytes_with(&be, params.rlwe(), &bytes, storage).unwrap();
        assert_eq!(loaded.weight(), config.ephemeral_weight);
        assert_eq!(loaded.key_id(), sk.key_id());
        assert_eq!(boot(loaded), want, "{storage:?}");
    }

    let load = |b: &[u8]| {
        EncapsulationKeys::<CpuBackend>::from_bytes_with(
            &be,
            params.rlwe(),
            b,
            KeyStorage::Expanded,
        )
    };
    assert!(load(&bytes[..bytes.len() - 1]).is_err());
    assert!(load(&bytes[..10]).is_err());
    let err = load(&ct.to_bytes(&be, &params).unwrap()).unwrap_err();
    assert!(matches!(err, RlweError::WrongKind { .. }), "{err}");
    let other =
        Arc::new(CkksParams::from_literal(&hecnn_testkit::toy_literal(11, 16), 40).unwrap());
    let err = EncapsulationKeys::<CpuBackend>::from_bytes_with(
        &be,
        other.rlwe(),
        &bytes,
        KeyStorage::Expanded,
    )
    .unwrap_err();
    assert!(matches!(err, RlweError::ParamsMismatch), "{err}");
}
