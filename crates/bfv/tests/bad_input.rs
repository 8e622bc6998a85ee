//! Bad input gets typed errors, never a panic: values out of range, wrong lengths, mismatched
//! parameters, levels and degrees, missing keys, invalid plaintext moduli, insecure presets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;

use hecnn_bfv::{BatchEncoder, BfvError, BfvParams, Plaintext, Preset, decrypt, encrypt_sk};
use hecnn_rlwe::{RlweError, SecurityLevel};

#[test]
fn encoder_rejects_bad_values_and_lengths() {
    let c = common::setup(10, 1, &[]);
    let n = c.n();
    assert!(matches!(
        c.enc.encode(&[1, 2, common::T]),
        Err(BfvError::ValueOutOfRange {
            index: 2,
            t: common::T,
            ..
        })
    ));
    assert!(matches!(
        c.enc.encode(&vec![0; n + 1]),
        Err(BfvError::TooManyValues { values, slots }) if values == n + 1 && slots == n
    ));
    assert!(matches!(
        c.enc.encode_signed(&[0, 32769]),
        Err(BfvError::ValueOutOfRange { index: 1, .. })
    ));
    assert!(c.enc.encode_signed(&[32768, -32768]).is_ok());
    assert!(matches!(
        Plaintext::from_coeffs(&c.params, &vec![0; n + 1]),
        Err(BfvError::TooManyValues { .. })
    ));
    assert!(matches!(
        Plaintext::constant(&c.params, u64::MAX),
        Err(BfvError::ValueOutOfRange { .. })
    ));
}

#[test]
fn invalid_plain_moduli_are_refused() {
    let lit = hecnn_testkit::toy_literal(10, 1);
    let rlwe = Arc::new(lit.build().unwrap());
    for t in [0u64, 1, 1 << 60, u64::MAX] {
        assert!(
            matches!(
                BfvParams::new(Arc::clone(&rlwe), t),
                Err(BfvError::InvalidPlainModulus { .. })
            ),
            "t = {t}"
        );
    }
    // t sharing a factor with Q.
    let q0 = rlwe.q()[0];
    assert!(matches!(
        BfvParams::new(Arc::clone(&rlwe), q0),
        Err(BfvError::InvalidPlainModulus { .. })
    ));
    assert!(matches!(
        BfvParams::new(Arc::clone(&rlwe), 3 * rlwe.q()[1]),
        Err(BfvError::InvalidPlainModulus { .. })
    ));
    // Not ≡ 1 mod 2N: no batching, but a valid modulus.
    let p = BfvParams::new(rlwe, 65539).unwrap();
    assert!(!p.batching());
    assert!(matches!(
        BatchEncoder::new(&p),
        Err(BfvError::BatchingUnavailable { .. })
    ));
}

#[test]
fn insecure_presets_are_refused() {
    let mut lit = Preset::N13Qp216T65537.literal();
    lit.log_q.push(30);
    assert!(matches!(
        BfvParams::from_literal(&lit, 65537),
        Err(BfvError::Rlwe(RlweError::Insecure { max: 218, .. }))
    ));
    let mut lit = Preset::N14Qp300T65537S192.literal();
    lit.security = SecurityLevel::Bits256;
    assert!(matches!(
        BfvParams::from_literal(&lit, 65537),
        Err(BfvError::Rlwe(RlweError::Insecure { max: 237, .. }))
    ));
}

#[test]
fn mismatched_parameters_levels_degrees_and_keys() {
    let mut c = common::setup(10, 2, &[1]);
    let n = c.n();
    let v = common::values(1, n, common::T);
    let ct = c.encrypt(&v);

    // Same RLWE parameters, another t: every object is refused.
    let other = BfvParams::new(Arc::clone(c.params.rlwe()), 40961).unwrap();
    let other_enc = BatchEncoder::new(&other).unwrap();
    let other_pt = other_enc.encode(&[1, 2, 3]).unwrap();
    assert!(matches!(
        c.eval.add_plain(&ct, &other_pt),
        Err(BfvError::ParamsMismatch)
    ));
    assert!(matches!(
        c.eval.mul_plain(&ct, &other_pt),
        Err(BfvError::ParamsMismatch)
    ));
    assert!(matches!(
        c.enc.decode(&other_pt),
        Err(BfvError::ParamsMismatch)
    ));
    let other_ct = encrypt_sk(&other, &c.sk, &c.be, &other_pt, &mut c.rng).unwrap();
    assert!(matches!(
        c.eval.add(&ct, &other_ct),
        Err(BfvError::ParamsMismatch)
    ));
    assert!(matches!(
        c.eval.mul(&ct, &other_ct),
        Err(BfvError::ParamsMismatch)
    ));
    assert!(matches!(
        decrypt(&c.params, &c.sk, &c.be, &other_ct),
        Err(BfvError::ParamsMismatch)
    ));
    // A secret key of other RLWE parameters.
    let c2 = common::setup(10, 3, &[]);
    assert!(matches!(
        decrypt(&c.params, &c2.sk, &c.be, &ct),
        Err(BfvError::ParamsMismatch)
    ));
    assert!(matches!(
        encrypt_sk(
            &c.params,
            &c2.sk,
            &c.be,
            &c.enc.encode(&v).unwrap(),
            &mut c.rng
        ),
        Err(BfvError::ParamsMismatch)
    ));
    assert!(matches!(
        hecnn_bfv::Evaluator::new(
            Arc::clone(&c.params),
            Arc::new(
                c2.sk
                    .evaluation_keys(&c2.be, &hecnn_rlwe::KeyRequirements::relin(), &mut c.rng)
                    .unwrap()
            ),
            c.be.clone()
        ),
        Err(BfvError::ParamsMismatch)
    ));

    // Levels.
    let low = c.eval.mod_switch_to_next(&ct).unwrap();
    assert!(matches!(
        c.eval.add(&ct, &low),
        Err(BfvError::LevelMismatch { lhs: 2, rhs: 1 })
    ));
    assert!(matches!(
        c.eval.mul(&ct, &low),
        Err(BfvError::LevelMismatch { .. })
    ));
    let bottom = c.eval.mod_switch_to_level(&ct, 0).unwrap();
    assert!(matches!(
        c.eval.mod_switch_to_next(&bottom),
        Err(BfvError::LevelTooLow { needed: 1, have: 0 })
    ));
    assert!(matches!(
        c.eval.mod_switch_to_level(&low, 2),
        Err(BfvError::LevelTooLow { .. })
    ));

    // Degrees.
    let d = c.eval.mul(&ct, &ct).unwrap();
    assert!(matches!(
        c.eval.mul(&d, &ct),
        Err(BfvError::Degree {
            expected: 1,
            found: 2
        })
    ));
    assert!(matches!(
        c.eval.rotate_rows(&d, 1),
        Err(BfvError::Degree { .. })
    ));
    assert!(matches!(
        c.eval.relinearize(&ct),
        Err(BfvError::Degree {
            expected: 2,
            found: 1
        })
    ));

    // Keys.
    assert!(matches!(
        c.eval.rotate_rows(&ct, 2),
        Err(BfvError::Rlwe(RlweError::MissingGaloisKey { .. }))
    ));
    let bare = hecnn_bfv::Evaluator::new(
        Arc::clone(&c.params),
        Arc::new(hecnn_rlwe::EvaluationKeys::empty(c.params.rlwe())),
        c.be.clone(),
    )
    .unwrap();
    assert!(matches!(
        bare.mul_relin(&ct, &ct),
        Err(BfvError::Rlwe(RlweError::MissingRelinKey))
    ));
    assert!(matches!(
        bare.swap_rows(&ct),
        Err(BfvError::Rlwe(RlweError::MissingGaloisKey { .. }))
    ));
    assert!(matches!(
        c.eval.mul_scalar(&ct, common::T),
        Err(BfvError::ValueOutOfRange { .. })
    ));
    assert!(matches!(
        c.eval.apply_galois(&ct, 2),
        Err(BfvError::Rlwe(_))
    ));
}
