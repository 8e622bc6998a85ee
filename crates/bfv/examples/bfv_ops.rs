//! Wall-clock times of the main BFV operations at the presets `N13_QP216_T65537` and
//! `N14_QP432_T65537`, on one thread (median of a few runs; not a benchmark harness).
//!
//! ```text
//! cargo run --release -p hecnn-bfv --example bfv_ops
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use hecnn_bfv::{BatchEncoder, Evaluator, Preset, decrypt, encrypt_pk, encrypt_sk};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey};

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reps = 5;
    for preset in [Preset::N13Qp216T65537, Preset::N14Qp432T65537] {
        let params = preset.build()?;
        let be = CpuBackend::new(1)?;
        let mut rng = Prng::from_seed([1; 32]);
        let sk = SecretKey::generate(params.rlwe(), &mut rng)?;
        let pk = sk.public_key(&be, &mut rng)?;
        let keys =
            sk.evaluation_keys(&be, &KeyRequirements::relin().with_rotations([1]), &mut rng)?;
        let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone())?;
        let enc = BatchEncoder::new(&params)?;
        let x: Vec<u64> = (0..params.n() as u64).map(|i| i % params.t()).collect();
        let pt = enc.encode(&x)?;
        let ct = encrypt_sk(&params, &sk, &be, &pt, &mut rng)?;
        let ct2 = encrypt_sk(&params, &sk, &be, &pt, &mut rng)?;
        println!(
            "{} (N = {}, log QP = {:.0}, {} Q primes, {} aux primes R), 1 thread:",
            preset.name(),
            params.n(),
            params.rlwe().log_qp(),
            params.max_level() + 1,
            params.aux_primes().len()
        );
        let rows: [(&str, f64); 9] = [
            ("encode", median_ms(reps, || drop(enc.encode(&x).unwrap()))),
            (
                "encrypt (secret key)",
                median_ms(reps, || {
                    drop(encrypt_sk(&params, &sk, &be, &pt, &mut rng).unwrap())
                }),
            ),
            (
                "encrypt (public key)",
                median_ms(reps, || {
                    drop(encrypt_pk(&params, &pk, &be, &pt, &mut rng).unwrap())
                }),
            ),
            (
                "decrypt",
                median_ms(reps, || drop(decrypt(&params, &sk, &be, &ct).unwrap())),
            ),
            (
                "add",
                median_ms(reps, || drop(eval.add(&ct, &ct2).unwrap())),
            ),
            (
                "mul_plain",
                median_ms(reps, || drop(eval.mul_plain(&ct, &pt).unwrap())),
            ),
            (
                "mul (HPS tensor, degree 2)",
                median_ms(reps, || drop(eval.mul(&ct, &ct2).unwrap())),
            ),
            (
                "mul_relin",
                median_ms(reps, || drop(eval.mul_relin(&ct, &ct2).unwrap())),
            ),
            (
                "rotate_rows(1)",
                median_ms(reps, || drop(eval.rotate_rows(&ct, 1).unwrap())),
            ),
        ];
        for (name, ms) in rows {
            println!("  {name:<28} {ms:9.2} ms");
        }
        let y = eval.mul_relin(&ct, &ct2)?;
        println!(
            "  noise budget: fresh {:.1} bits, after one mul_relin {:.1} bits",
            hecnn_bfv::noise_budget_bits(&params, &sk, &be, &ct)?,
            hecnn_bfv::noise_budget_bits(&params, &sk, &be, &y)?
        );
    }
    Ok(())
}
