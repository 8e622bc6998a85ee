//! `hecnn bench bootstrap`: key generation, circuit encoding, bootstrapping time and
//! precision at a bootstrappable parameter set, with the numbers bench/RESULTS.md records.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use hecnn_ckks::bootstrap::bootstrap_literal;
use hecnn_ckks::{BootstrapConfig, Bootstrapper, CkksParams, Complex64, Evaluator, encrypt_sk};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{SecretKey, SecurityLevel};

use crate::{CliError, cnn_cmds::peak_memory, stats};

/// Options of `hecnn bench bootstrap`.
#[derive(Args, Debug)]
pub struct BootstrapArgs {
    /// log2 of the ring degree (16 for the 128-bit preset; smaller ones are toy sizes and
    /// need --insecure).
    #[arg(long, default_value_t = 16)]
    log_n: u32,
    /// Complex slots (default: n/2, full slots).
    #[arg(long)]
    slots: Option<usize>,
    /// Levels left for computation after bootstrapping.
    #[arg(long, default_value_t = 9)]
    residual: usize,
    /// CoeffToSlot levels.
    #[arg(long, default_value_t = 4)]
    cts_levels: usize,
    /// SlotToCoeff levels.
    #[arg(long, default_value_t = 3)]
    stc_levels: usize,
    /// Double-angle steps of EvalMod (default: the circuit's, 4; fewer: a higher-degree
    /// interpolant).
    #[arg(long)]
    double_angles: Option<usize>,
    /// Cost of a hoisted baby-step rotation relative to a giant step (sets the linear
    /// transforms' baby/giant split and the rotation keys).
    #[arg(long, default_value_t = hecnn_ckks::bootstrap::BOOTSTRAP_BABY_WEIGHT)]
    baby_weight: f64,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed bootstrappings (after one warm-up; median and minimum are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Skip the security check (toy ring sizes).
    #[arg(long)]
    insecure: bool,
}

/// Runs the benchmark and prints a report.
pub fn run(a: &BootstrapArgs) -> Result<(), CliError> {
    let n = 1usize << a.log_n;
    let slots = a.slots.unwrap_or(n / 2);
    let mut config = BootstrapConfig::new(slots);
    config.cts_levels = a.cts_levels;
    if let Some(r) = a.double_angles {
        config.double_angles = r;
    }
    config.baby_step_weight = a.baby_weight;
    config.stc_levels = a.stc_levels;
    let security = if a.insecure {
        SecurityLevel::UncheckedForReproduction
    } else {
        SecurityLevel::Bits128
    };
    let lit = bootstrap_literal(a.log_n, a.residual, &config, security)?;
    let params = Arc::new(CkksParams::from_literal(&lit, 40)?);
    let r = params.rlwe();
    println!(
        "parameters: N = 2^{}, log QP = {:.1} ({} Q + {} P primes, dnum {}), {}, uniform \
         ternary secret, ephemeral h = {}",
        a.log_n,
        r.log_qp(),
        r.q().len(),
        r.p().len(),
        r.dnum(),
        if a.insecure {
            "UNCHECKED (toy)".to_string()
        } else {
            format!("{security} (checked)")
        },
        config.ephemeral_weight
    );
    let poly = config.eval_mod_poly()?;
    println!(
        "circuit: {slots} slots, CtS {} + EvalMod {} (Chebyshev degree {}, {} double angles, \
         K = {}) + StC {} levels; message ratio 2^{}",
        config.cts_levels,
        poly.depth(),
        poly.cheb.degree(),
        poly.double_angles,
        poly.k_bound,
        config.stc_levels,
        config.log_message_ratio
    );

    let be = CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(r, &mut rng)?;
    let req = config.key_requirements(&params)?;
    let t = Instant::now();
    let keys = sk.evaluation_keys(&be, &req, &mut rng)?;
    let encaps = sk.encapsulation_keys(&be, config.ephemeral_weight, &mut rng)?;
    let keygen = t.elapsed().as_secs_f64();
    println!(
        "keys: {} rotation + conjugation + relinearization keys, {} serialized (+ {} \
         encapsulation, sparse key at log(q0·p0) = {:.1}); generated in {keygen:.1} s",
        req.rotations.len(),
        stats::human_bytes(keys.size_bytes()),
        stats::human_bytes(encaps.size_bytes()),
        encaps.small_log_qp()
    );
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone())?;
    let t = Instant::now();
    let boot = Bootstrapper::new(&eval, config, encaps)?;
    println!(
        "encoded {} diagonals in {:.1} s",
        boot.diagonal_count(),
        t.elapsed().as_secs_f64()
    );

    let re = stats::uniform_values(21, slots);
    let im = stats::uniform_values(22, slots);
    let z: Vec<Complex64> = re
        .iter()
        .zip(&im)
        .map(|(&x, &y)| Complex64::new(x, y))
        .collect();
    let pt = eval.encode(&z, 0, params.default_scale(), slots)?;
    let ct = encrypt_sk(&sk, &be, &pt, &mut rng)?;
    let mut out = None;
    let (med, min) = stats::time_ms(a.reps, || -> Result<(), CliError> {
        out = Some(boot.bootstrap_with_phases(&eval, &ct)?);
        Ok(())
    })?;
    let (out, phases) = out.ok_or_else(|| CliError::Usage("no bootstrapping ran".into()))?;
    let got = eval
        .encoder()
        .decode(&be, &params, &hecnn_ckks::decrypt(&sk, &be, &out)?)?;
    let (min_bits, mean_bits, median_bits) = stats::precision_complex(&z, &got);
    println!(
        "bootstrap ({} thread{}): median {:.2} s, min {:.2} s over {} runs",
        a.threads,
        if a.threads == 1 { "" } else { "s" },
        med / 1e3,
        min / 1e3,
        a.reps
    );
    let secs = |d: std::time::Duration| d.as_secs_f64();
    println!(
        "phases of the last run: ModRaise {:.2} s, SubSum {:.2} s, CoeffToSlot {:.2} s, \
         EvalMod {:.2} s, SlotToCoeff {:.2} s",
        secs(phases.mod_raise),
        secs(phases.sub_sum),
        secs(phases.coeff_to_slot),
        secs(phases.eval_mod),
        secs(phases.slot_to_coeff)
    );
    println!(
        "precision on {slots} uniform complex slots in [-1, 1]²: mean {:.2} bits, median {:.2} \
         bits, min {:.2} bits; {} levels left",
        mean_bits,
        median_bits,
        min_bits,
        out.level()
    );
    println!("peak memory: {}", peak_memory());
    Ok(())
}
