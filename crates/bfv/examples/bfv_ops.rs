//! Wall-clock times of the main BFV operations at the presets `N13_QP216_T65537` and
//! `N14_QP432_T65537` (median of a few runs; not a benchmark harness).
//!
//! ```text
//! cargo run --release -p hecnn-bfv --example bfv_ops
//! cargo run --release -p hecnn-bfv --example bfv_ops -- --log-n 13 --threads 2 --reps 20 --json
//! ```
//!
//! Options: `--log-n 13|14` (default both), `--threads T` (the backend's thread count,
//! `CpuBackend::new(T)`; default 1), `--reps R` (timed calls per operation after one
//! untimed warm-up; default 5), `--json` (one JSON line per operation in the schema of the
//! BFV peer scripts, `bench/peers/bfv_side_by_side.sh`, instead of the table).
//!
//! JSON operations: `encrypt` (public key), `decrypt` (no decode), `mul_plain` (variant
//! `prepared operand`: `mul_plain_operand` with a `PlaintextOperand` prepared once; variant
//! `plaintext`: `mul_plain`, which prepares the operand on every call), `mul_relin`
//! (HPS multiplication then relinearization), `rotate` (`rotate_rows(1)`). Results of
//! `mul_plain`, `mul_relin` and `rotate` are decrypted and checked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use hecnn_bfv::{BatchEncoder, Decryptor, Evaluator, Preset, encrypt_pk, encrypt_sk};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey};

/// The allocator the `hecnn` binary runs with: freed polynomial buffers are reused, not
/// returned to the kernel and page-faulted (and zeroed) again on the next operation, which
/// the system allocator does for every buffer above its mmap threshold.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Samples in ms: one untimed warm-up, then `reps` timed calls.
fn samples_ms(reps: usize, mut f: impl FnMut()) -> Vec<f64> {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

fn median_ms(reps: usize, f: impl FnMut()) -> f64 {
    let t = samples_ms(reps, f);
    t[t.len() / 2]
}

struct Opts {
    presets: Vec<Preset>,
    threads: usize,
    reps: usize,
    json: bool,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        presets: vec![Preset::N13Qp216T65537, Preset::N14Qp432T65537],
        threads: 1,
        reps: 5,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--log-n" => {
                o.presets = vec![match val()?.as_str() {
                    "13" => Preset::N13Qp216T65537,
                    "14" => Preset::N14Qp432T65537,
                    v => return Err(format!("--log-n {v}: 13 or 14")),
                }]
            }
            "--threads" => o.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--reps" => o.reps = val()?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--json" => o.json = true,
            "-h" | "--help" => {
                println!("usage: bfv_ops [--log-n 13|14] [--threads T] [--reps R] [--json]");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.reps == 0 || o.threads == 0 {
        return Err("--reps and --threads must be at least 1".into());
    }
    Ok(o)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = parse_args()?;
    let reps = opts.reps;
    for preset in opts.presets.iter().copied() {
        let params = preset.build()?;
        let be = CpuBackend::new(opts.threads)?;
        let mut rng = Prng::from_seed([1; 32]);
        let sk = SecretKey::generate(params.rlwe(), &mut rng)?;
        let pk = sk.public_key(&be, &mut rng)?;
        let keys =
            sk.evaluation_keys(&be, &KeyRequirements::relin().with_rotations([1]), &mut rng)?;
        let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone())?;
        let enc = BatchEncoder::new(&params)?;
        let t = params.t();
        let n = params.n();
        let x: Vec<u64> = (0..n as u64).map(|i| i % t).collect();
        let y: Vec<u64> = (0..n as u64).map(|i| (3 * i + 1) % t).collect();
        let pt = enc.encode(&x)?;
        let pt_y = enc.encode(&y)?;
        let ct = encrypt_sk(&params, &sk, &be, &pt, &mut rng)?;
        let ct2 = encrypt_sk(&params, &sk, &be, &pt_y, &mut rng)?;

        if opts.json {
            let rlwe = params.rlwe();
            let log_q = params.log_q_at(params.max_level());
            let emit = |op: &str, variant: &str, s: Vec<f64>| {
                println!(
                    "{{\"library\": \"hecnn\", \"op\": \"{op}\", \"variant\": \"{variant}\", \
                     \"log_n\": {}, \"t\": {t}, \"log_q\": {log_q:.1}, \"log_qp\": {:.1}, \
                     \"q_limbs\": {}, \"p_limbs\": {}, \"dnum\": {}, \"threads\": {}, \
                     \"threads_applied\": true, \"ms\": {:.4}, \"min_ms\": {:.4}, \
                     \"reps\": {}}}",
                    rlwe.log_n(),
                    rlwe.log_qp(),
                    rlwe.q().len(),
                    rlwe.p().len(),
                    rlwe.dnum(),
                    opts.threads,
                    s[s.len() / 2],
                    s[0],
                    s.len()
                );
            };
            let xy: Vec<u64> = x.iter().zip(&y).map(|(a, b)| a * b % t).collect();
            let dec = Decryptor::new(&params, &sk, &be).unwrap();
            let check = |what: &str, c: &hecnn_bfv::Ciphertext<CpuBackend>, want: &[u64]| {
                let got = enc.decode(&dec.decrypt(c).unwrap()).unwrap();
                assert_eq!(got, want, "{what}: wrong result");
            };
            emit(
                "encrypt",
                "public key",
                samples_ms(reps, || {
                    drop(encrypt_pk(&params, &pk, &be, &pt, &mut rng).unwrap())
                }),
            );
            emit(
                "decrypt",
                "no decode, key prepared",
                samples_ms(reps, || drop(dec.decrypt(&ct).unwrap())),
            );
            let op = eval.prepare_plain(&pt_y, params.max_level())?;
            emit(
                "mul_plain",
                "prepared operand",
                samples_ms(reps, || drop(eval.mul_plain_operand(&ct, &op).unwrap())),
            );
            check("mul_plain", &eval.mul_plain_operand(&ct, &op)?, &xy);
            emit(
                "mul_plain",
                "plaintext",
                samples_ms(reps, || drop(eval.mul_plain(&ct, &pt_y).unwrap())),
            );
            emit(
                "mul_relin",
                "mul + relinearize",
                samples_ms(reps, || drop(eval.mul_relin(&ct, &ct2).unwrap())),
            );
            check("mul_relin", &eval.mul_relin(&ct, &ct2)?, &xy);
            emit(
                "rotate",
                "rows by 1",
                samples_ms(reps, || drop(eval.rotate_rows(&ct, 1).unwrap())),
            );
            let half = n / 2;
            let rot: Vec<u64> = (0..n)
                .map(|i| x[(i / half) * half + (i % half + 1) % half])
                .collect();
            check("rotate", &eval.rotate_rows(&ct, 1)?, &rot);
            continue;
        }

        println!(
            "{} (N = {}, log QP = {:.0}, {} Q primes, {} aux primes R), {} thread(s):",
            preset.name(),
            params.n(),
            params.rlwe().log_qp(),
            params.max_level() + 1,
            params.aux_primes().len(),
            opts.threads
        );
        let dec = Decryptor::new(&params, &sk, &be).unwrap();
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
                median_ms(reps, || drop(dec.decrypt(&ct).unwrap())),
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
