//! Bad input gets typed errors: mismatched parameters and levels, missing keys, truncated or
//! corrupted serialized data, insecure parameters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;

use hecnn_ckks::{Ciphertext, CkksError, CkksParams, Evaluator, Preset};
use hecnn_ring::CpuBackend;
use hecnn_rlwe::{
    EvaluationKeys, KeyRequirements, Params, ParamsLiteral, PublicKey, RlweError, SecretKey,
    SecurityLevel,
};
use hecnn_testkit::uniform_values;

#[test]
fn insecure_parameters_are_refused() {
    let mut lit = Preset::N14Qp427.literal();
    lit.log_q.push(40); // 467 bits > 438
    let err = CkksParams::from_literal(&lit, 40).unwrap_err();
    assert!(
        matches!(err, CkksError::Rlwe(RlweError::Insecure { max: 438, .. })),
        "{err}"
    );
    lit.security = SecurityLevel::Bits192;
    lit.log_q.truncate(3);
    assert!(CkksParams::from_literal(&lit, 40).is_ok());
    lit.log_q.extend([40; 4]);
    assert!(matches!(
        CkksParams::from_literal(&lit, 40),
        Err(CkksError::Rlwe(RlweError::Insecure { max: 305, .. }))
    ));
    // Scale not below q_0.
    assert!(matches!(
        CkksParams::from_literal(&Preset::N13Qp218.literal(), 50),
        Err(CkksError::InvalidScale { .. })
    ));
}

#[test]
fn mismatched_parameters_levels_and_keys() {
    let mut c = common::setup(10, 3, &[1]);
    let x = uniform_values(1, c.slots);
    let ct = c.encrypt(&x);

    // Keys of other parameters.
    let other = common::setup(11, 3, &[]);
    let keys = other
        .sk
        .evaluation_keys(&other.be, &KeyRequirements::relin(), &mut c.rng)
        .unwrap();
    let err = Evaluator::new(Arc::clone(&c.params), Arc::new(keys), c.be.clone()).unwrap_err();
    assert!(matches!(err, CkksError::Rlwe(RlweError::ParamsMismatch)));

    // Missing rotation key (no power-of-two composition available for 3 with only key 1? 3 = 2 + 1
    // needs key 2, absent).
    assert!(matches!(
        c.eval.rotate(&ct, 3),
        Err(CkksError::MissingRotationKey { step: 3 })
    ));
    assert!(matches!(
        c.eval.rotate_hoisted(&ct, &[1, 2]),
        Err(CkksError::MissingRotationKey { step: 2 })
    ));
    // No relinearization key.
    let sk_keys: EvaluationKeys<CpuBackend> =
        c.sk.evaluation_keys(&c.be, &KeyRequirements::default(), &mut c.rng)
            .unwrap();
    let bare = Evaluator::new(Arc::clone(&c.params), Arc::new(sk_keys), c.be.clone()).unwrap();
    assert!(matches!(
        bare.mul_relin(&ct, &ct),
        Err(CkksError::Rlwe(RlweError::MissingRelinKey))
    ));
    assert!(matches!(
        bare.conjugate(&ct),
        Err(CkksError::Rlwe(RlweError::MissingGaloisKey { .. }))
    ));

    // Levels: rescale at level 0, plaintext below the ciphertext, adjust upwards.
    let low = c.eval.drop_to_level(&ct, 0).unwrap();
    assert!(matches!(
        c.eval.rescale(&low),
        Err(CkksError::LevelTooLow { .. })
    ));
    let pt_low = c.encode(&x, 1);
    assert!(matches!(
        c.eval.mul_plain(&ct, &pt_low),
        Err(CkksError::LevelTooLow { .. })
    ));
    assert!(c.eval.adjust(&low, 1, ct.scale()).is_err());
    assert!(c.eval.drop_to_level(&low, 2).is_err());
    // Slots.
    let pt_sparse = c
        .eval
        .encode_real(&x[..8], 3, c.params.default_scale(), 8)
        .unwrap();
    assert!(matches!(
        c.eval.add_plain(&ct, &pt_sparse),
        Err(CkksError::SlotMismatch { .. })
    ));
    assert!(matches!(
        c.eval.encode_real(&x, 3, c.params.default_scale(), 3),
        Err(CkksError::InvalidSlots { .. })
    ));
    assert!(matches!(
        c.eval.encode_real(&[f64::NAN], 3, 1e10, 8),
        Err(CkksError::NonFinite)
    ));
    assert!(matches!(
        c.eval.encode_real(&[1.0], 9, 1e10, 8),
        Err(CkksError::LevelTooHigh { .. })
    ));
    // Degree.
    let deg2 = c.eval.mul(&ct, &ct).unwrap();
    assert!(matches!(
        c.eval.mul(&deg2, &ct),
        Err(CkksError::Degree { .. })
    ));
    assert!(c.eval.rotate(&deg2, 1).is_err());
}

#[test]
fn serialization_roundtrips_and_rejects_corruption() {
    let mut c = common::setup(10, 2, &[1]);
    let x = uniform_values(2, c.slots);
    let ct = c.encrypt(&x);
    let params = Arc::clone(&c.params);
    let be = c.be.clone();

    // Fresh secret-key ciphertexts are seed-compressed: about one polynomial.
    let bytes = ct.to_bytes(&be, &params).unwrap();
    let poly = params.rlwe().poly_bytes(params.max_level());
    assert!(
        bytes.len() < poly + 200,
        "{} bytes for a {poly}-byte polynomial",
        bytes.len()
    );
    let back = Ciphertext::from_bytes(&be, &params, &bytes).unwrap();
    assert_eq!(c.decrypt(&back), c.decrypt(&ct));
    // Evaluated ciphertexts carry both components.
    let sq = c
        .eval
        .rescale(&c.eval.mul_relin(&ct, &ct).unwrap())
        .unwrap();
    let sq_bytes = sq.to_bytes(&be, &params).unwrap();
    assert!(sq_bytes.len() > poly);
    let sq_back = Ciphertext::from_bytes(&be, &params, &sq_bytes).unwrap();
    assert_eq!(c.decrypt(&sq_back), c.decrypt(&sq));

    // Truncation at every prefix length class, corruption of magic, version and words.
    for cut in [0, 1, 4, 7, 40, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            Ciphertext::from_bytes(&be, &params, &bytes[..cut]).is_err(),
            "cut {cut}"
        );
    }
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    assert!(matches!(
        Ciphertext::from_bytes(&be, &params, &bad),
        Err(CkksError::Rlwe(RlweError::Malformed { .. }))
    ));
    let mut bad = bytes.clone();
    bad[4] = 9; // version varint
    assert!(matches!(
        Ciphertext::from_bytes(&be, &params, &bad),
        Err(CkksError::Rlwe(RlweError::UnsupportedVersion {
            found: 9,
            ..
        }))
    ));
    // One flipped bit anywhere, even one that leaves every word below its modulus, is
    // caught by the checksum.
    let mut bad = bytes.clone();
    bad[8] ^= 0x01; // in the header: refused by what it names (kind, fingerprint)
    assert!(Ciphertext::from_bytes(&be, &params, &bad).is_err());
    for at in [
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 40,
        bytes.len() - 1,
    ] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        assert!(
            matches!(
                Ciphertext::from_bytes(&be, &params, &bad),
                Err(CkksError::Rlwe(RlweError::Malformed { .. }))
            ),
            "a flip at byte {at} of {}",
            bytes.len()
        );
    }
    // A version-1 object (no checksum) is still read; a version-2 one relabelled as
    // version 1 is not (its checksum would be trailing bytes).
    assert_eq!(bytes[4], 2, "the version varint");
    let mut v1 = bytes[..bytes.len() - 32].to_vec();
    v1[4] = 1;
    let old = Ciphertext::from_bytes(&be, &params, &v1).unwrap();
    assert_eq!(c.decrypt(&old), c.decrypt(&ct));
    let mut relabelled = bytes.clone();
    relabelled[4] = 1;
    assert!(Ciphertext::from_bytes(&be, &params, &relabelled).is_err());
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid..mid + 16].fill(0xff); // covers a whole word, which becomes ≥ its modulus
    assert!(matches!(
        Ciphertext::from_bytes(&be, &params, &bad),
        Err(CkksError::Rlwe(RlweError::Malformed { .. }))
    ));
    // Oversized input is refused before parsing.
    let huge = vec![0u8; hecnn_rlwe::serial::ciphertext_limit(params.rlwe()) + 1];
    assert!(matches!(
        Ciphertext::from_bytes(&be, &params, &huge),
        Err(CkksError::Rlwe(RlweError::TooLarge { .. }))
    ));
    // Another parameter set's ciphertext.
    let other = common::setup(10, 3, &[]);
    assert!(matches!(
        Ciphertext::from_bytes(&be, &other.params, &bytes),
        Err(CkksError::Rlwe(RlweError::ParamsMismatch))
    ));

    // Keys and parameters round-trip.
    let rlwe = params.rlwe();
    let p2 = Params::from_bytes(&rlwe.to_bytes()).unwrap();
    assert_eq!(p2.fingerprint(), rlwe.fingerprint());
    let pk = c.sk.public_key(&be, &mut c.rng).unwrap();
    let pk2 = PublicKey::from_bytes(&be, rlwe, &pk.to_bytes(&be).unwrap()).unwrap();
    assert_eq!(pk2.to_bytes(&be).unwrap(), pk.to_bytes(&be).unwrap());
    let req = KeyRequirements::relin().with_rotations([1]);
    let evk = c.sk.evaluation_keys(&be, &req, &mut c.rng).unwrap();
    let evk_bytes = evk.to_bytes(&be).unwrap();
    assert!(
        EvaluationKeys::<CpuBackend>::from_bytes(&be, rlwe, &evk_bytes, 1).is_err(),
        "key-count bound"
    );
    let evk2 = EvaluationKeys::from_bytes(&be, rlwe, &evk_bytes, 2).unwrap();
    let eval2 = Evaluator::new(Arc::clone(&params), Arc::new(evk2), be.clone()).unwrap();
    let r = eval2.rotate(&ct, 1).unwrap();
    let got = c.decrypt(&r);
    assert!((got[0] - x[1]).abs() < 1e-5);
    let sk_bytes = c.sk.to_secret_bytes();
    let sk2 = SecretKey::from_secret_bytes(rlwe, &sk_bytes).unwrap();
    let pt = hecnn_ckks::decrypt(&sk2, &be, &ct).unwrap();
    let dec = c.eval.encoder().decode_real(&be, &params, &pt).unwrap();
    assert!((dec[3] - x[3]).abs() < 1e-6);
    // A secret key is not a public key.
    assert!(matches!(
        PublicKey::<CpuBackend>::from_bytes(&be, rlwe, &sk_bytes),
        Err(RlweError::WrongKind { .. })
    ));
    let bad_params = ParamsLiteral {
        log_n: 2,
        ..params.rlwe().literal().clone()
    };
    assert!(bad_params.build().is_err());
}
