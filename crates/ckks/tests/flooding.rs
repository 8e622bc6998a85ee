//! IND-CPA-D: the Li–Micciancio key recovery through the decryption path the owner uses
//! (decrypt, decode the real parts), at a toy size. Without flooding two decryptions of
//! ciphertexts the adversary made give the secret key; with flooding the same algebra gives
//! noise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use hecnn_ckks::{CkksError, CkksParams, Complex64, Decryptor, Encoder, Flooding, encrypt_pk};
use hecnn_ring::{Basis, CpuBackend, Prng, RnsContext, RnsPoly};
use hecnn_rlwe::{PublicKey, SecretKey};

const LOG_N: u32 = 10;
const LOG_SCALE: u32 = 40;

struct Setup {
    params: std::sync::Arc<CkksParams>,
    be: CpuBackend,
    sk: SecretKey,
    pk: PublicKey<CpuBackend>,
    encoder: Encoder,
    rng: Prng,
}

fn setup() -> Setup {
    let params = std::sync::Arc::new(
        CkksParams::from_literal(&hecnn_testkit::toy_literal(LOG_N, 0), LOG_SCALE).unwrap(),
    );
    let be = CpuBackend::new(1).unwrap();
    let mut rng = Prng::from_seed([41; 32]);
    let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    let pk = sk.public_key(&be, &mut rng).unwrap();
    let encoder = Encoder::new(params.n());
    Setup {
        params,
        be,
        sk,
        pk,
        encoder,
        rng,
    }
}

/// Arithmetic modulo the single prime of level 0, on host vectors.
struct Zq<'a> {
    ctx: &'a RnsContext,
    be: &'a CpuBackend,
    q: u64,
}

impl<'a> Zq<'a> {
    /// Level 0's prime of `ctx`.
    fn level0(ctx: &'a RnsContext, be: &'a CpuBackend) -> Self {
        Self {
            ctx,
            be,
            q: ctx.modulus(0).value(),
        }
    }
    fn mul(&self, a: u64, b: u64) -> u64 {
        ((u128::from(a) * u128::from(b)) % u128::from(self.q)) as u64
    }
    fn sub(&self, a: u64, b: u64) -> u64 {
        (a + self.q - b) % self.q
    }
    fn inv(&self, a: u64) -> u64 {
        let (mut r, mut b, mut e) = (1u64, a, self.q - 2);
        while e > 0 {
            if e & 1 == 1 {
                r = self.mul(r, b);
            }
            b = self.mul(b, b);
            e >>= 1;
        }
        r
    }
    fn reduce(&self, x: i64) -> u64 {
        x.rem_euclid(self.q as i64) as u64
    }
    fn centered(&self, x: u64) -> i64 {
        if x > self.q / 2 {
            x as i64 - self.q as i64
        } else {
            x as i64
        }
    }
    fn ntt(&self, a: &[u64]) -> Vec<u64> {
        RnsPoly::<CpuBackend, hecnn_ring::Coeff>::from_host(self.be, self.ctx, Basis::q(1), a)
            .unwrap()
            .into_eval(self.be, self.ctx)
            .to_host(self.be, self.ctx)
            .unwrap()
    }
    fn intt(&self, a: &[u64]) -> Vec<u64> {
        RnsPoly::<CpuBackend, hecnn_ring::Eval>::from_host(self.be, self.ctx, Basis::q(1), a)
            .unwrap()
            .into_coeff(self.be, self.ctx)
            .to_host(self.be, self.ctx)
            .unwrap()
    }
    /// `X ↦ X^-1` on coefficients: `X^i ↦ -X^(n-i)`.
    fn conj(&self, a: &[u64]) -> Vec<u64> {
        let n = a.len();
        let mut out = vec![0; n];
        out[0] = a[0];
        for i in 1..n {
            out[n - i] = self.sub(0, a[i]);
        }
        out
    }
}

fn coeffs(s: &Setup, ct: &hecnn_ckks::Ciphertext<CpuBackend>, part: usize) -> Vec<u64> {
    let ctx = s.params.rlwe().ctx();
    ct.inner().parts()[part]
        .clone()
        .into_coeff(&s.be, ctx)
        .to_host(&s.be, ctx)
        .unwrap()
}

/// What the oracle hands out for `ct`: the real parts of the decoded slots, with or without
/// flooding.
fn oracle(
    s: &mut Setup,
    ct: &hecnn_ckks::Ciphertext<CpuBackend>,
    flooding: Option<&Flooding>,
) -> Vec<f64> {
    let dec = Decryptor::new(&s.sk, &s.be).unwrap();
    let pt = match flooding {
        None => dec.decrypt(ct).unwrap(),
        Some(f) => dec.decrypt_flooded(ct, f, &mut s.rng).unwrap(),
    };
    s.encoder.decode_real(&s.be, &s.params, &pt).unwrap()
}

/// The attack: encrypt zero twice with the public key, read both decryptions, rebuild
/// `p + conj(p)` for `p = c_0 + c_1·s` from the real slots and solve the two linear
/// equations `c_1·s + conj(c_1)·conj(s) = p + conj(p) − c_0 − conj(c_0)` slot by slot in
/// the NTT domain. Returns the candidate key's centred coefficients.
fn recover_key(s: &mut Setup, flooding: Option<&Flooding>) -> Vec<i64> {
    let (params, be) = (std::sync::Arc::clone(&s.params), s.be.clone());
    let ctx = params.rlwe().ctx();
    let zq = Zq::level0(ctx, &be);
    let slots = s.params.max_slots();
    let scale = s.params.default_scale();
    let mut eqs = Vec::new();
    for _ in 0..2 {
        let pt = s
            .encoder
            .encode_real(&s.be, &s.params, &vec![0.0; slots], 0, scale, slots)
            .unwrap();
        let ct = encrypt_pk(&s.pk, &s.be, &pt, &mut s.rng).unwrap();
        let seen = oracle(s, &ct, flooding);
        let z: Vec<Complex64> = seen.iter().map(|&r| Complex64::new(r, 0.0)).collect();
        let sym: Vec<u64> = s
            .encoder
            .embed_inverse(&z, slots)
            .unwrap()
            .iter()
            .map(|c| zq.reduce((2.0 * scale * c).round() as i64))
            .collect();
        let (c0, c1) = (coeffs(s, &ct, 0), coeffs(s, &ct, 1));
        let c0c = zq.conj(&c0);
        let d: Vec<u64> = (0..sym.len())
            .map(|i| zq.sub(zq.sub(sym[i], c0[i]), c0c[i]))
            .collect();
        eqs.push((zq.ntt(&c1), zq.ntt(&zq.conj(&c1)), zq.ntt(&d)));
    }
    let ((a1, b1, d1), (a2, b2, d2)) = (&eqs[0], &eqs[1]);
    let x: Vec<u64> = (0..a1.len())
        .map(|j| {
            let det = zq.sub(zq.mul(a1[j], b2[j]), zq.mul(a2[j], b1[j]));
            let num = zq.sub(zq.mul(d1[j], b2[j]), zq.mul(d2[j], b1[j]));
            zq.mul(num, zq.inv(det))
        })
        .collect();
    zq.intt(&x).into_iter().map(|v| zq.centered(v)).collect()
}

/// Decrypts a victim's ciphertext of `values` with the candidate key: the largest error.
fn decrypt_with_candidate(s: &mut Setup, candidate: &[i64], values: &[f64]) -> f64 {
    let (params, be) = (std::sync::Arc::clone(&s.params), s.be.clone());
    let ctx = params.rlwe().ctx();
    let zq = Zq::level0(ctx, &be);
    let slots = s.params.max_slots();
    let scale = s.params.default_scale();
    let pt = s
        .encoder
        .encode_real(&s.be, &s.params, values, 0, scale, slots)
        .unwrap();
    let ct = encrypt_pk(&s.pk, &s.be, &pt, &mut s.rng).unwrap();
    let (c0, c1) = (zq.ntt(&coeffs(s, &ct, 0)), zq.ntt(&coeffs(s, &ct, 1)));
    let key = zq.ntt(&candidate.iter().map(|&c| zq.reduce(c)).collect::<Vec<_>>());
    let m: Vec<u64> = (0..c0.len())
        .map(|j| (c0[j] + zq.mul(c1[j], key[j])) % zq.q)
        .collect();
    let m: Vec<f64> = zq
        .intt(&m)
        .into_iter()
        .map(|v| zq.centered(v) as f64 / scale)
        .collect();
    let got = s.encoder.embed(&m, slots).unwrap();
    got.iter()
        .zip(values)
        .map(|(g, v)| (g.re - v).abs())
        .fold(0.0, f64::max)
}

#[test]
fn two_unflooded_decryptions_give_the_key_and_flooded_ones_do_not() {
    let mut s = setup();
    let values: Vec<f64> = hecnn_testkit::uniform_values(5, s.params.max_slots());

    // Without flooding: a ternary key that decrypts the victim's ciphertext.
    let key = recover_key(&mut s, None);
    assert!(key.iter().all(|c| c.abs() <= 1), "not a ternary key");
    let err = decrypt_with_candidate(&mut s, &key, &values);
    assert!(err < 1e-6, "the recovered key decrypts with error {err}");

    // The noise bound, measured on fresh encryptions the way a deployment would (largest
    // slot error, real and imaginary, over many ciphertexts), with a margin of 2^4.
    let slots = s.params.max_slots();
    let scale = s.params.default_scale();
    let dec = Decryptor::new(&s.sk, &s.be).unwrap();
    let mut worst = 0.0f64;
    for _ in 0..8 {
        let pt = s
            .encoder
            .encode_real(&s.be, &s.params, &vec![0.0; slots], 0, scale, slots)
            .unwrap();
        let ct = encrypt_pk(&s.pk, &s.be, &pt, &mut s.rng).unwrap();
        let z = s
            .encoder
            .decode(&s.be, &s.params, &dec.decrypt(&ct).unwrap())
            .unwrap();
        worst = z
            .iter()
            .fold(worst, |m, c| m.max(c.re.abs()).max(c.im.abs()));
    }
    drop(dec);
    let flooding =
        Flooding::with_defaults(Flooding::noise_log2_from_slot_error(16.0 * worst, scale)).unwrap();
    assert!(flooding.cost_bits() > 25.0);
    eprintln!(
        "noise bound 2^{:.1}, flooding σ = 2^{:.1} ({:.1} bits of precision)",
        flooding.noise_log2(),
        flooding.sigma_log2(),
        flooding.cost_bits()
    );

    // With flooding the same attack yields no key: not ternary, and it does not decrypt.
    let key = recover_key(&mut s, Some(&flooding));
    let big = key.iter().filter(|c| c.abs() > 1).count();
    assert!(
        big > key.len() / 2,
        "{big} of {} coefficients off {{-1, 0, 1}}",
        key.len()
    );
    let err = decrypt_with_candidate(&mut s, &key, &values);
    assert!(
        err > 1.0,
        "a flooded decryption still gave a working key (error {err})"
    );
}

#[test]
fn flooded_decryptions_decode_within_the_stated_error() {
    let mut s = setup();
    let slots = s.params.max_slots();
    let scale = s.params.default_scale();
    let values = hecnn_testkit::uniform_values(9, slots);
    let pt = s
        .encoder
        .encode_real(&s.be, &s.params, &values, 0, scale, slots)
        .unwrap();
    let ct = encrypt_pk(&s.pk, &s.be, &pt, &mut s.rng).unwrap();
    // A small bound (2^8) and few queries keep the flooding well inside the precision.
    let f = Flooding::new(30, 0, 8.0).unwrap();
    let got = oracle(&mut s, &ct, Some(&f));
    let std = f.slot_std(s.params.n(), scale);
    let errs: Vec<f64> = got.iter().zip(&values).map(|(g, v)| g - v).collect();
    let rms = (errs.iter().map(|e| e * e).sum::<f64>() / errs.len() as f64).sqrt();
    assert!(
        (rms / std - 1.0).abs() < 0.1,
        "rms error {rms:e} against the stated {std:e}"
    );
    // Two flooded decryptions of one ciphertext differ: the noise is fresh each time.
    let again = oracle(&mut s, &ct, Some(&f));
    assert_ne!(got, again);
    // Flooding the sampler allows (σ = 2^46.8) but whose tail would wrap the 55-bit
    // modulus left at level 0 is refused by the decryption.
    let wide = Flooding::new(30, 0, 30.0).unwrap();
    let dec = Decryptor::new(&s.sk, &s.be).unwrap();
    assert!(matches!(
        dec.decrypt_flooded(&ct, &wide, &mut s.rng),
        Err(CkksError::FloodingTooWide { .. })
    ));
}

#[test]
fn the_noise_estimate_from_imaginary_parts_tracks_the_true_noise() {
    let mut s = setup();
    let ctx = s.params.rlwe().ctx();
    let slots = s.params.max_slots();
    let scale = s.params.default_scale();
    let dec = Decryptor::new(&s.sk, &s.be).unwrap();
    for seed in 0..4 {
        let values = hecnn_testkit::uniform_values(seed, slots);
        let pt = s
            .encoder
            .encode_real(&s.be, &s.params, &values, 0, scale, slots)
            .unwrap();
        let ct = encrypt_pk(&s.pk, &s.be, &pt, &mut s.rng).unwrap();
        let got = dec.decrypt(&ct).unwrap();
        // The exact noise: the decryption minus the encoding, coefficient by coefficient.
        let mut e = got.poly().clone();
        e.sub_assign(&s.be, ctx, pt.poly()).unwrap();
        let e = e.into_coeff(&s.be, ctx);
        let host = e.to_host(&s.be, ctx).unwrap();
        let q = ctx.modulus(0).value();
        let largest = host
            .iter()
            .map(|&v| if v > q / 2 { q - v } else { v })
            .max()
            .unwrap() as f64;
        let estimate =
            hecnn_ckks::flooding::estimate_noise_log2(&s.encoder, &s.be, &s.params, &got).unwrap();
        assert!(
            (estimate - largest.log2()).abs() < 1.5,
            "estimate 2^{estimate:.2} against 2^{:.2}",
            largest.log2()
        );
    }
}
