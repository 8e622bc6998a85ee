//! Shared setup for the CKKS scheme tests: toy (insecure) parameters at the ring sizes of
//! `hecnn_testkit::test_log_ns()`, keys with a deterministic generator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(dead_code)]

use std::sync::Arc;

use hecnn_ckks::{CkksParams, Evaluator, Plaintext, encrypt_sk};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey};

pub struct Ctx {
    pub params: Arc<CkksParams>,
    pub sk: SecretKey,
    pub eval: Evaluator<CpuBackend>,
    pub be: CpuBackend,
    pub rng: Prng,
    pub slots: usize,
}

pub fn setup(log_n: u32, levels: usize, rotations: &[i64]) -> Ctx {
    let params =
        Arc::new(CkksParams::from_literal(&hecnn_testkit::toy_literal(log_n, levels), 40).unwrap());
    let be = CpuBackend::new(2).unwrap();
    let mut rng = Prng::from_seed([log_n as u8; 32]);
    let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    let req = KeyRequirements::relin()
        .with_rotations(rotations.iter().copied())
        .with_conjugate();
    let keys = sk.evaluation_keys(&be, &req, &mut rng).unwrap();
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
    let slots = params.max_slots();
    Ctx {
        params,
        sk,
        eval,
        be,
        rng,
        slots,
    }
}

impl Ctx {
    pub fn encrypt(&mut self, x: &[f64]) -> hecnn_ckks::Ciphertext<CpuBackend> {
        let pt = self.encode(x, self.params.max_level());
        encrypt_sk(&self.sk, &self.be, &pt, &mut self.rng).unwrap()
    }

    pub fn encode(&self, x: &[f64], level: usize) -> Plaintext<CpuBackend> {
        self.eval
            .encode_real(x, level, self.params.default_scale(), self.slots)
            .unwrap()
    }

    pub fn decrypt(&self, ct: &hecnn_ckks::Ciphertext<CpuBackend>) -> Vec<f64> {
        let pt = hecnn_ckks::decrypt(&self.sk, &self.be, ct).unwrap();
        self.eval
            .encoder()
            .decode_real(&self.be, &self.params, &pt)
            .unwrap()
    }
}
