//! Serialization of BFV parameters, ciphertexts and plaintexts: round trips (every level,
//! seed-compressed and full, degree 2), refusal under other parameters or another `t`,
//! flipped bits, truncation, oversized and hostile inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;

use common::{T, setup, values};
use hecnn_bfv::{BfvError, BfvParams, Ciphertext, Plaintext, serial::PARAMS_TAIL_BYTES};
use hecnn_ring::CpuBackend;
use hecnn_rlwe::RlweError;
use hecnn_rlwe::serial::{Kind, encode};

/// Another prime `≡ 1 mod 2^13`, for "the same RLWE parameters, another t".
const OTHER_T: u64 = 786_433;

fn is_malformed(e: &BfvError) -> bool {
    matches!(e, BfvError::Rlwe(RlweError::Malformed { .. }))
}

#[test]
fn ciphertexts_round_trip_at_every_level_seeded_full_and_degree_2() {
    for log_n in hecnn_testkit::test_log_ns() {
        let mut c = setup(log_n, 3, &[]);
        let n = c.n();
        let (a, b) = (values(50, n, T), values(51, n, T));
        let ca = c.encrypt(&a);
        let cb = c.encrypt(&b);
        let rt = |ct: &Ciphertext<CpuBackend>| {
            let bytes = ct.to_bytes(&c.be, &c.params).unwrap();
            let back = Ciphertext::from_bytes(&c.be, &c.params, &bytes).unwrap();
            assert_eq!(back.level(), ct.level());
            assert_eq!(back.degree(), ct.degree());
            assert_eq!(back.fingerprint(), c.params.fingerprint());
            assert_eq!(back.to_bytes(&c.be, &c.params).unwrap(), bytes, "stable");
            (back, bytes.len())
        };
        // Seed-compressed: about half the size of a full ciphertext, seed kept.
        let (back, seeded_len) = rt(&ca);
        assert!(back.inner().seed().is_some());
        assert_eq!(c.decrypt(&back), a);
        let sum = c.eval.add(&ca, &cb).unwrap();
        assert!(sum.inner().seed().is_none());
        let (back, full_len) = rt(&sum);
        assert!(seeded_len < full_len * 6 / 10, "{seeded_len} vs {full_len}");
        assert_eq!(c.decrypt(&back), common::add(&a, &b));
        // Degree 2.
        let d = c.eval.mul(&ca, &cb).unwrap();
        let (back, _) = rt(&d);
        assert_eq!(back.degree(), 2);
        assert_eq!(c.decrypt(&back), common::mul(&a, &b));
        // Every level, fresh and after a product.
        let prod = c.eval.mul_relin(&ca, &cb).unwrap();
        for level in 0..=c.params.max_level() {
            for ct in [&ca, &prod] {
                let low = c.eval.mod_switch_to_level(ct, level).unwrap();
                let (back, len) = rt(&low);
                assert_eq!(back.level(), level);
                assert_eq!(c.decrypt(&back), c.decrypt(&low), "level {level}");
                assert!(len < (level + 2) * n * 8 * 2 + 4096);
            }
        }
    }
}

#[test]
fn plaintexts_and_parameters_round_trip() {
    let mut c = setup(10, 2, &[]);
    let v = values(52, c.n(), T);
    let pt = c.enc.encode(&v).unwrap();
    let bytes = pt.to_bytes(&c.params).unwrap();
    let back = Plaintext::from_bytes(&c.params, &bytes).unwrap();
    assert_eq!(back, pt);
    assert_eq!(c.enc.decode(&back).unwrap(), v);
    // Varint coefficients: 65537 needs at most 3 bytes.
    assert!(bytes.len() < c.n() * 3 + 200);

    let pbytes = c.params.to_bytes();
    let params = BfvParams::from_bytes(&pbytes).unwrap();
    assert_eq!(params.fingerprint(), c.params.fingerprint());
    assert_eq!(params.t(), T);
    assert_eq!(params.to_bytes(), pbytes);
    // Objects of the original parameters load under the reloaded ones.
    let ct = c.encrypt(&v);
    let ct_bytes = ct.to_bytes(&c.be, &c.params).unwrap();
    let back = Ciphertext::from_bytes(&c.be, &params, &ct_bytes).unwrap();
    assert_eq!(c.decrypt(&back), v);
    assert_eq!(Plaintext::from_bytes(&params, &bytes).unwrap(), pt);
    // A preset.
    let preset = hecnn_bfv::Preset::N13Qp216T65537.build().unwrap();
    let reloaded = BfvParams::from_bytes(&preset.to_bytes()).unwrap();
    assert_eq!(reloaded.fingerprint(), preset.fingerprint());
}

#[test]
fn objects_are_refused_under_another_t_or_other_parameters() {
    let mut c = setup(10, 2, &[]);
    let v = values(53, c.n(), T);
    let ct = c.encrypt(&v);
    let pt = c.enc.encode(&v).unwrap();
    let ct_bytes = ct.to_bytes(&c.be, &c.params).unwrap();
    let pt_bytes = pt.to_bytes(&c.params).unwrap();

    // Same RLWE parameters, another t.
    let other_t = BfvParams::new(Arc::clone(c.params.rlwe()), OTHER_T).unwrap();
    assert!(matches!(
        Ciphertext::from_bytes(&c.be, &other_t, &ct_bytes),
        Err(BfvError::PlainModulusMismatch {
            expected: OTHER_T,
            found: T
        })
    ));
    assert!(matches!(
        Plaintext::from_bytes(&other_t, &pt_bytes),
        Err(BfvError::PlainModulusMismatch {
            expected: OTHER_T,
            found: T
        })
    ));
    // Serializing with the wrong parameters is refused too.
    assert!(matches!(
        ct.to_bytes(&c.be, &other_t),
        Err(BfvError::ParamsMismatch)
    ));
    assert!(matches!(
        pt.to_bytes(&other_t),
        Err(BfvError::ParamsMismatch)
    ));

    // Other RLWE parameters (one more level), same t.
    let other = BfvParams::from_literal(&hecnn_testkit::toy_literal(10, 3), T).unwrap();
    assert!(matches!(
        Ciphertext::from_bytes(&c.be, &other, &ct_bytes),
        Err(BfvError::ParamsMismatch)
    ));
    assert!(matches!(
        Plaintext::from_bytes(&other, &pt_bytes),
        Err(BfvError::ParamsMismatch)
    ));

    // The right t but a forged BFV fingerprint.
    let forged = encode(
        Kind::Scheme,
        c.params.rlwe(),
        &((2u8, [7u8; 32], T), pt.coeffs()),
    );
    assert!(matches!(
        Plaintext::from_bytes(&c.params, &forged),
        Err(BfvError::ParamsMismatch)
    ));

    // A ciphertext is not a plaintext, nor the reverse.
    assert!(Plaintext::from_bytes(&c.params, &ct_bytes).is_err());
    assert!(Ciphertext::from_bytes(&c.be, &c.params, &pt_bytes).is_err());

    // Parameters whose tail names another t than its fingerprint.
    let mut pbytes = c.params.to_bytes();
    pbytes.truncate(pbytes.len() - PARAMS_TAIL_BYTES);
    pbytes.extend(encode(
        Kind::Scheme,
        c.params.rlwe(),
        &(3u8, c.params.fingerprint(), OTHER_T.to_le_bytes()),
    ));
    assert!(matches!(
        BfvParams::from_bytes(&pbytes),
        Err(BfvError::ParamsMismatch)
    ));
    // An unusable t (shares a factor with nothing, but is below 2).
    let mut pbytes = c.params.to_bytes();
    pbytes.truncate(pbytes.len() - PARAMS_TAIL_BYTES);
    pbytes.extend(encode(
        Kind::Scheme,
        c.params.rlwe(),
        &(3u8, c.params.fingerprint(), 1u64.to_le_bytes()),
    ));
    assert!(matches!(
        BfvParams::from_bytes(&pbytes),
        Err(BfvError::InvalidPlainModulus { t: 1, .. })
    ));
}

/// Byte positions to damage: the whole head and tail, and a stride through the middle.
fn positions(len: usize) -> Vec<usize> {
    (0..len)
        .filter(|&i| i < 128 || i + 128 >= len || i % 61 == 0)
        .collect()
}

#[test]
fn flipped_bits_and_truncations_are_refused() {
    let mut c = setup(10, 2, &[]);
    let v = values(54, c.n(), T);
    let seeded = c.encrypt(&v);
    let full = c.eval.add(&seeded, &seeded).unwrap();
    let pt = c.enc.encode(&v).unwrap();
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("seeded", seeded.to_bytes(&c.be, &c.params).unwrap()),
        ("full", full.to_bytes(&c.be, &c.params).unwrap()),
        ("plaintext", pt.to_bytes(&c.params).unwrap()),
        ("params", c.params.to_bytes()),
    ];
    let load = |what: &str, b: &[u8]| -> Result<(), BfvError> {
        match what {
            "plaintext" => Plaintext::from_bytes(&c.params, b).map(drop),
            "params" => BfvParams::from_bytes(b).map(drop),
            _ => Ciphertext::from_bytes(&c.be, &c.params, b).map(drop),
        }
    };
    for (what, bytes) in &objects {
        load(what, bytes).unwrap();
        for i in positions(bytes.len()) {
            for bit in [0u8, 3, 7] {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(load(what, &bad).is_err(), "{what}: bit {bit} of byte {i}");
            }
        }
        for len in positions(bytes.len()) {
            assert!(load(what, &bytes[..len]).is_err(), "{what}: {len} bytes");
        }
        assert!(load(what, &[]).is_err());
        // Appended bytes break the checksum (or the split of the parameters).
        let mut long = bytes.clone();
        long.push(0);
        assert!(load(what, &long).is_err(), "{what}: one byte appended");
    }
}

#[test]
fn oversized_and_hostile_inputs_are_refused_without_panics() {
    let c = setup(10, 2, &[]);
    let n = c.n();
    let rlwe = c.params.rlwe();
    // Oversized: refused before parsing.
    let huge = vec![0u8; hecnn_rlwe::serial::ciphertext_limit(rlwe) + 1];
    assert!(matches!(
        Ciphertext::from_bytes(&c.be, &c.params, &huge),
        Err(BfvError::Rlwe(RlweError::TooLarge { .. }))
    ));
    let huge = vec![0u8; Plaintext::bytes_limit(&c.params) + 1];
    assert!(matches!(
        Plaintext::from_bytes(&c.params, &huge),
        Err(BfvError::Rlwe(RlweError::TooLarge { .. }))
    ));
    let huge = vec![0u8; (1 << 20) + PARAMS_TAIL_BYTES + 1];
    assert!(matches!(
        BfvParams::from_bytes(&huge),
        Err(BfvError::Rlwe(RlweError::TooLarge { .. }))
    ));

    // Well-formed envelopes with hostile plaintext bodies.
    let meta = (2u8, c.params.fingerprint(), T);
    let body = |coeffs: Vec<u64>| encode(Kind::Scheme, rlwe, &(meta, coeffs));
    let bad = [
        body(vec![T; n]),
        body(vec![0; n - 1]),
        body(vec![0; n + 1]),
        body(vec![]),
        body(vec![u64::MAX; 3]),
    ];
    for (i, b) in bad.iter().enumerate() {
        let e = Plaintext::from_bytes(&c.params, b).unwrap_err();
        assert!(is_malformed(&e), "body {i}: {e:?}");
    }
    // A wrong tag.
    let e = Plaintext::from_bytes(
        &c.params,
        &encode(
            Kind::Scheme,
            rlwe,
            &((9u8, c.params.fingerprint(), T), vec![0u64; n]),
        ),
    )
    .unwrap_err();
    assert!(is_malformed(&e), "{e:?}");

    // A vector length claiming 2^63 coefficients, with a valid checksum: refused by the
    // parser, nothing allocated for it.
    let valid = body(vec![1; 4]);
    let mut forged = valid[..valid.len() - 32 - 5].to_vec();
    forged.extend([
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 1, 1,
    ]);
    let sum = blake3::hash(&forged);
    forged.extend_from_slice(sum.as_bytes());
    let e = Plaintext::from_bytes(&c.params, &forged).unwrap_err();
    assert!(is_malformed(&e), "{e:?}");

    // A ciphertext envelope whose metadata has the wrong shape.
    let e = Ciphertext::<CpuBackend>::from_bytes(
        &c.be,
        &c.params,
        &encode(Kind::Scheme, rlwe, &(1u8, 2u8)),
    )
    .unwrap_err();
    assert!(is_malformed(&e), "{e:?}");
    // Another kind of envelope altogether.
    let e = Ciphertext::<CpuBackend>::from_bytes(&c.be, &c.params, &rlwe.to_bytes()).unwrap_err();
    assert!(
        matches!(e, BfvError::Rlwe(RlweError::WrongKind { .. })),
        "{e:?}"
    );
    // Parameters: only a tail, or a tail on garbage.
    let tail = encode(
        Kind::Scheme,
        rlwe,
        &(3u8, c.params.fingerprint(), T.to_le_bytes()),
    );
    assert_eq!(tail.len(), PARAMS_TAIL_BYTES);
    assert!(BfvParams::from_bytes(&tail).is_err());
    let mut garbage = vec![0x42u8; 64];
    garbage.extend(&tail);
    assert!(BfvParams::from_bytes(&garbage).is_err());
}
