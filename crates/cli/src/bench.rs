//! `hecnn bench primitives`: times CKKS primitives and prints JSON lines in the schema of
//! `bench/peers/` (so one run compares hecnn with SEAL and Lattigo), or a table.

use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use hecnn_ckks::{CkksParams, Decryptor, Evaluator, Preset, encrypt_pk, encrypt_sk};
use hecnn_ring::{Backend, CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, ParamsLiteral, SecretDistribution, SecretKey, SecurityLevel};

use crate::{CliError, stats};

/// Benchmark commands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time mul+relin, rescale, rotate, 8 hoisted rotations, encrypt and decrypt.
    Primitives(PrimitivesArgs),
    /// Bootstrapping: key generation, time, precision and memory.
    Bootstrap(crate::bench_bootstrap::BootstrapArgs),
    /// Protected models (encrypted weights): the tables of Gomez et al. for every variant,
    /// feature mode and security level.
    Protected(crate::protect_cmd::BenchProtectedArgs),
    /// Load test of the owner and edge services on loopback: concurrent streams of images,
    /// timed until the owner has decrypted every result.
    Serve(crate::bench_serve::BenchServeArgs),
    /// Load test of `hecnn serve` on loopback: concurrent clients, each with its own keys,
    /// submitting encrypted images; throughput and latency percentiles.
    InferServe(crate::bench_infer::BenchInferArgs),
}

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// A readable table.
    Table,
    /// One JSON object per line (the `bench/peers` schema).
    Jsonl,
}

/// Options of `hecnn bench primitives`.
#[derive(Args, Debug)]
pub struct PrimitivesArgs {
    /// A preset (overrides --log-n/--log-q/--log-p/--dnum).
    #[arg(long)]
    preset: Option<String>,
    /// log2 of the ring degree.
    #[arg(long, default_value_t = 14)]
    log_n: u32,
    /// Bit sizes of the Q primes, comma separated (default: 58 then eight 40s).
    #[arg(long, value_delimiter = ',')]
    log_q: Vec<u32>,
    /// Bit sizes of the P primes, comma separated (default: one 60).
    #[arg(long, value_delimiter = ',')]
    log_p: Vec<u32>,
    /// Key-switching digits (default: |Q| / |P| rounded up).
    #[arg(long)]
    dnum: Option<usize>,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed repetitions per operation (median and minimum are reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Only these operations (comma separated; default: all).
    #[arg(long, value_delimiter = ',')]
    ops: Vec<String>,
}

pub fn run(cmd: &BenchCommand) -> Result<(), CliError> {
    match cmd {
        BenchCommand::Primitives(a) => primitives(a),
        BenchCommand::Bootstrap(a) => crate::bench_bootstrap::run(a),
        BenchCommand::Protected(a) => crate::protect_cmd::bench_protected(a),
        BenchCommand::Serve(a) => crate::bench_serve::run(a),
        BenchCommand::InferServe(a) => crate::bench_infer::run(a),
    }
}

fn literal(a: &PrimitivesArgs) -> Result<ParamsLiteral, CliError> {
    if let Some(name) = &a.preset {
        return Preset::from_name(name)
            .map(Preset::literal)
            .ok_or_else(|| CliError::Usage(format!("unknown preset '{name}'")));
    }
    let log_q = if a.log_q.is_empty() {
        let mut v = vec![58];
        v.extend([40; 8]);
        v
    } else {
        a.log_q.clone()
    };
    let log_p = if a.log_p.is_empty() {
        vec![60]
    } else {
        a.log_p.clone()
    };
    Ok(ParamsLiteral {
        log_n: a.log_n,
        log_q,
        log_p,
        dnum: a.dnum,
        secret: SecretDistribution::Ternary,
        security: SecurityLevel::Bits128,
    })
}

fn primitives(a: &PrimitivesArgs) -> Result<(), CliError> {
    let params = Arc::new(CkksParams::from_literal(&literal(a)?, 40)?);
    let r = params.rlwe();
    let be = CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(r, &mut rng)?;
    let pk = sk.public_key(&be, &mut rng)?;
    let hoist: Vec<i64> = (1..=8).collect();
    let keys = sk.evaluation_keys(
        &be,
        &KeyRequirements::relin().with_rotations(hoist.clone()),
        &mut rng,
    )?;
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone())?;
    let slots = params.max_slots();
    let top = params.max_level();
    let x = stats::uniform_values(1, slots);
    let pt = eval.encode_real(&x, top, params.default_scale(), slots)?;
    let ct = encrypt_sk(&sk, &be, &pt, &mut rng)?;
    let ct2 = encrypt_sk(&sk, &be, &pt, &mut rng)?;
    let prod = eval.mul_relin(&ct, &ct2)?;
    let reps = a.reps;
    let ctx = r.ctx();
    let basis = hecnn_ring::Basis::q(top + 1);
    let mut poly = pt.poly().clone();

    let wanted = |op: &str| a.ops.is_empty() || a.ops.iter().any(|o| o == op);
    let mut results: Vec<(&str, (f64, f64))> = Vec::new();
    if wanted("ntt") {
        // One forward and one inverse transform of all limbs per repetition, reported per transform.
        let (med, min) = stats::time_ms(reps, || -> Result<(), CliError> {
            be.ntt_inverse(ctx, basis, poly.buffer_mut());
            be.ntt_forward(ctx, basis, poly.buffer_mut());
            Ok(())
        })?;
        results.push(("ntt", (med / 2.0, min / 2.0)));
    }
    if wanted("mul_relin") {
        results.push((
            "mul_relin",
            stats::time_ms(reps, || eval.mul_relin(&ct, &ct2))?,
        ));
    }
    if wanted("rescale") {
        results.push(("rescale", stats::time_ms(reps, || eval.rescale(&prod))?));
    }
    if wanted("rotate") {
        results.push(("rotate", stats::time_ms(reps, || eval.rotate(&ct, 1))?));
    }
    if wanted("hoisted_rotate8") {
        results.push((
            "hoisted_rotate8",
            stats::time_ms(reps, || eval.rotate_hoisted(&ct, &hoist))?,
        ));
    }
    if wanted("encrypt") {
        results.push((
            "encrypt",
            stats::time_ms(reps, || encrypt_pk(&pk, &be, &pt, &mut rng))?,
        ));
    }
    if wanted("decrypt") {
        let decryptor = Decryptor::new(&sk, &be)?;
        results.push(("decrypt", stats::time_ms(reps, || decryptor.decrypt(&ct))?));
    }

    match a.format {
        Format::Jsonl => {
            for (op, (med, min)) in results {
                let rec = serde_json::json!({
                    "library": "hecnn",
                    "version": env!("CARGO_PKG_VERSION"),
                    "op": op,
                    "log_n": r.log_n(),
                    "log_qp": (r.log_qp() * 10.0).round() / 10.0,
                    "q_limbs": r.q().len(),
                    "p_limbs": r.p().len(),
                    "dnum": r.dnum(),
                    "threads": be.threads(),
                    "ms": med,
                    "min_ms": min,
                    "reps": reps,
                });
                println!("{rec}");
            }
        }
        Format::Table => {
            println!(
                "hecnn primitives: N = 2^{}, log QP = {:.1}, {} Q + {} P limbs, dnum = {}, {}",
                r.log_n(),
                r.log_qp(),
                r.q().len(),
                r.p().len(),
                r.dnum(),
                be.name()
            );
            println!("  {:<18} {:>12} {:>12}", "op", "median ms", "min ms");
            for (op, (med, min)) in results {
                println!("  {op:<18} {med:>12.3} {min:>12.3}");
            }
        }
    }
    Ok(())
}
