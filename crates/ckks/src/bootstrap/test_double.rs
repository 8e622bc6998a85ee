//! A secret-key "bootstrapper" for tests: decrypts and re-encrypts. It lets tests of circuits
//! that bootstrap (deep networks, level planning) run in milliseconds at toy sizes.
//!
//! **Insecure by construction**: it holds the secret key. It exists only under `cfg(test)` or
//! the `test-double` feature, which no production crate enables; enable it from a
//! `[dev-dependencies]` entry only.

use std::sync::Mutex;

use hecnn_ring::{Backend, Prng};
use hecnn_rlwe::SecretKey;

use super::Refresh;
use crate::{Ciphertext, CkksError, Evaluator, decrypt, encrypt_sk};

/// Decrypt-and-re-encrypt in place of bootstrapping (tests only).
pub struct SecretKeyBootstrapper {
    sk: SecretKey,
    output_level: usize,
    rng: Mutex<Prng>,
}

impl std::fmt::Debug for SecretKeyBootstrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeyBootstrapper")
            .field("output_level", &self.output_level)
            .finish_non_exhaustive()
    }
}

impl SecretKeyBootstrapper {
    /// A test double refreshing ciphertexts to `output_level` at the default scale.
    pub fn insecure_for_tests(sk: SecretKey, output_level: usize, rng: Prng) -> Self {
        Self {
            sk,
            output_level,
            rng: Mutex::new(rng),
        }
    }
}

impl<B: Backend> Refresh<B> for SecretKeyBootstrapper {
    fn output_level(&self) -> usize {
        self.output_level
    }

    fn refresh(&self, eval: &Evaluator<B>, ct: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        let (be, params) = (eval.backend(), eval.params());
        let values = eval
            .encoder()
            .decode(be, params, &decrypt(&self.sk, be, ct)?)?;
        let pt = eval.encode(
            &values,
            self.output_level,
            params.default_scale(),
            ct.slots(),
        )?;
        let mut rng = self.rng.lock().map_err(|_| CkksError::InvalidArgument {
            what: "test-double random generator poisoned",
        })?;
        encrypt_sk(&self.sk, be, &pt, &mut rng)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use hecnn_ring::CpuBackend;
    use hecnn_rlwe::KeyRequirements;

    use super::*;
    use crate::CkksParams;

    #[test]
    fn refreshes_levels_and_keeps_values() {
        let lit = hecnn_rlwe::ParamsLiteral {
            log_n: 10,
            log_q: vec![50, 40, 40, 40],
            log_p: vec![55],
            dnum: None,
            secret: hecnn_rlwe::SecretDistribution::Ternary,
            security: hecnn_rlwe::SecurityLevel::UncheckedForReproduction,
        };
        let params = Arc::new(CkksParams::from_literal(&lit, 40).unwrap());
        let be = CpuBackend::new(1).unwrap();
        let mut rng = Prng::from_seed([3; 32]);
        let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
        let keys = sk
            .evaluation_keys(&be, &KeyRequirements::relin(), &mut rng)
            .unwrap();
        let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
        let x: Vec<f64> = (0..512).map(|i| (i as f64 / 100.0).sin()).collect();
        let pt = eval
            .encode_real(&x, 0, params.default_scale(), 512)
            .unwrap();
        let ct = encrypt_sk(&sk, &be, &pt, &mut rng).unwrap();
        let sk2 = SecretKey::from_secret_bytes(params.rlwe(), &sk.to_secret_bytes()).unwrap();
        let boot = SecretKeyBootstrapper::insecure_for_tests(sk2, 3, Prng::from_seed([4; 32]));
        let out = Refresh::<CpuBackend>::refresh(&boot, &eval, &ct).unwrap();
        assert_eq!(out.level(), 3);
        let got = eval
            .encoder()
            .decode_real(&be, &params, &decrypt(&sk, &be, &out).unwrap())
            .unwrap();
        for (a, b) in x.iter().zip(&got) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
