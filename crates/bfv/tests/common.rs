//! Shared setup for the BFV tests: toy (insecure) parameters, keys from a deterministic
//! generator, a seeded slot generator and the reference arithmetic mod t.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(dead_code)]

use std::sync::Arc;

use hecnn_bfv::{BatchEncoder, BfvParams, Ciphertext, Evaluator, decrypt, encrypt_sk};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey};

pub const T: u64 = 65537;

pub struct Ctx {
    pub params: Arc<BfvParams>,
    pub sk: SecretKey,
    pub eval: Evaluator<CpuBackend>,
    pub enc: BatchEncoder,
    pub be: CpuBackend,
    pub rng: Prng,
}

/// Toy parameters (`hecnn_testkit::toy_literal`: a 55-bit prime, `levels` 40-bit primes,
/// two 55-bit special primes; security unchecked) with `t = 65537`, relinearization and the
/// given rotation keys plus the row swap.
pub fn setup(log_n: u32, levels: usize, rotations: &[i64]) -> Ctx {
    let params =
        Arc::new(BfvParams::from_literal(&hecnn_testkit::toy_literal(log_n, levels), T).unwrap());
    let be = CpuBackend::new(2).unwrap();
    let mut rng = Prng::from_seed([log_n as u8 + 100; 32]);
    let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    let req = KeyRequirements::relin()
        .with_rotations(rotations.iter().copied())
        .with_conjugate();
    let keys = sk.evaluation_keys(&be, &req, &mut rng).unwrap();
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
    let enc = BatchEncoder::new(&params).unwrap();
    Ctx {
        params,
        sk,
        eval,
        enc,
        be,
        rng,
    }
}

/// Seeded values in `[0, t)` (SplitMix64).
pub fn values(seed: u64, count: usize, t: u64) -> Vec<u64> {
    let mut s = seed;
    (0..count)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            z % t
        })
        .collect()
}

pub fn add(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| (x + y) % T).collect()
}

pub fn sub(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| (x + T - y) % T).collect()
}

pub fn mul(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x * y % T).collect()
}

/// Both rows of the `2 × n/2` matrix rotated left by `k`.
pub fn rotate_rows(a: &[u64], k: i64) -> Vec<u64> {
    let h = a.len() / 2;
    let mut out = vec![0; a.len()];
    for r in 0..2 {
        for c in 0..h {
            let src = (c as i64 + k).rem_euclid(h as i64) as usize;
            out[r * h + c] = a[r * h + src];
        }
    }
    out
}

pub fn swap_rows(a: &[u64]) -> Vec<u64> {
    let h = a.len() / 2;
    a[h..].iter().chain(&a[..h]).copied().collect()
}

impl Ctx {
    pub fn encrypt(&mut self, v: &[u64]) -> Ciphertext<CpuBackend> {
        let pt = self.enc.encode(v).unwrap();
        encrypt_sk(&self.params, &self.sk, &self.be, &pt, &mut self.rng).unwrap()
    }

    pub fn decrypt(&self, ct: &Ciphertext<CpuBackend>) -> Vec<u64> {
        let pt = decrypt(&self.params, &self.sk, &self.be, ct).unwrap();
        self.enc.decode(&pt).unwrap()
    }

    pub fn budget(&self, ct: &Ciphertext<CpuBackend>) -> f64 {
        hecnn_bfv::noise_budget_bits(&self.params, &self.sk, &self.be, ct).unwrap()
    }

    pub fn n(&self) -> usize {
        self.params.n()
    }
}
