//! `hecnn demo`: an end-to-end encrypted computation with timings and precision.
//!
//! The client encrypts a vector with the public key; the server (holding only evaluation
//! keys) squares it, sums blocks by rotations, applies a banded matrix (BSGS) and a
//! polynomial activation; the client decrypts. Every step is checked against the same
//! computation in the clear.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use hecnn_ckks::{
    ChebyshevPoly, Complex64, Evaluator, LinearTransform, Preset, decrypt, encrypt_pk,
};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey, security};

use crate::{CliError, stats};

/// Options of `hecnn demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Run the CKKS vector demo instead of the CNN demo.
    #[arg(long)]
    ckks: bool,
    /// Parameter preset for the CKKS demo (see `hecnn params`).
    #[arg(long, default_value = "N14_QP427")]
    preset: String,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

struct Step {
    name: &'static str,
    ms: f64,
    level: usize,
    bits: (f64, f64),
}

pub fn run(args: &DemoArgs) -> Result<(), CliError> {
    if !args.ckks {
        return crate::eval_cmd::demo(args.threads);
    }
    let preset = Preset::from_name(&args.preset).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown preset '{}'; known: {}",
            args.preset,
            Preset::ALL.map(|p| p.name()).join(", ")
        ))
    })?;
    let params = preset.build()?;
    // square (1) + matrix (1) + sigmoid of degree 7 on [-4, 4] (3 + 1 for the interval).
    const DEMO_DEPTH: usize = 6;
    if params.max_level() < DEMO_DEPTH {
        return Err(CliError::Usage(format!(
            "preset {} has {} levels; the CKKS demo needs {DEMO_DEPTH} (try N14_QP427 or N15_QP836)",
            preset.name(),
            params.max_level()
        )));
    }
    let r = params.rlwe();
    let be = CpuBackend::new(crate::cnn_cmds::threads(args.threads))?;
    println!("hecnn demo: encrypted vector computation with CKKS");
    println!(
        "  parameters {}: N = 2^{}, log QP = {:.1}, {} levels, dnum = {}, scale 2^{}, security: {} (checked)",
        preset.name(),
        r.log_n(),
        r.log_qp(),
        r.max_level(),
        r.dnum(),
        params.log_scale(),
        security::achieved_level(r.log_n(), r.log_qp()).map_or("none".into(), |l| l.to_string()),
    );
    println!("  backend: {}", hecnn_ring::Backend::name(&be));

    let slots = params.max_slots();
    let block = 16usize;
    let band: Vec<i64> = vec![0, 1, 2, 3, 5, 8, 13, 21];
    let act = ChebyshevPoly::interpolate(|t| 1.0 / (1.0 + (-t).exp()), 7, -4.0, 4.0)?;

    // --- client: keys -----------------------------------------------------------------------
    let t = Instant::now();
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(r, &mut rng)?;
    let pk = sk.public_key(&be, &mut rng)?;
    let mut req =
        KeyRequirements::relin().with_rotations(hecnn_ckks::inner_sum_rotations(1, block));
    req = req.with_rotations(hecnn_ckks::bsgs_rotations(
        &band.iter().copied().collect(),
        slots,
    ));
    let keys = sk.evaluation_keys(&be, &req, &mut rng)?;
    println!(
        "  keygen: {:.0} ms; evaluation keys: {} ({} Galois keys + relinearization)",
        t.elapsed().as_secs_f64() * 1e3,
        stats::human_bytes(keys.size_bytes()),
        keys.galois_elements().count()
    );

    // --- client: encrypt --------------------------------------------------------------------
    let x = stats::uniform_values(2026, slots);
    let mut steps = Vec::new();
    let t = Instant::now();
    let pt = hecnn_ckks::Encoder::new(params.n()).encode_real(
        &be,
        &params,
        &x,
        params.max_level(),
        params.default_scale(),
        slots,
    )?;
    let ct = encrypt_pk(&pk, &be, &pt, &mut rng)?;
    let enc_ms = t.elapsed().as_secs_f64() * 1e3;
    let ct_bytes = ct.to_bytes(&be, &params)?.len();

    // --- server: evaluate (evaluation keys only) -------------------------------------------
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone())?;
    let dec = |c: &hecnn_ckks::Ciphertext<CpuBackend>| -> Result<Vec<f64>, CliError> {
        Ok(eval
            .encoder()
            .decode_real(&be, &params, &decrypt(&sk, &be, c)?)?)
    };
    steps.push(Step {
        name: "encrypt (public key)",
        ms: enc_ms,
        level: ct.level(),
        bits: stats::precision(&x, &dec(&ct)?),
    });

    let t = Instant::now();
    let sq = eval.rescale(&eval.mul_relin(&ct, &ct)?)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let x2: Vec<f64> = x.iter().map(|v| v * v).collect();
    steps.push(Step {
        name: "square (mul+relin+rescale)",
        ms,
        level: sq.level(),
        bits: stats::precision(&x2, &dec(&sq)?),
    });

    let t = Instant::now();
    let sums = eval.inner_sum(&sq, 1, block)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let want_sums: Vec<f64> = (0..slots)
        .map(|i| (0..block).map(|j| x2[(i + j) % slots]).sum())
        .collect();
    steps.push(Step {
        name: "block sums (16, rotations)",
        ms,
        level: sums.level(),
        bits: stats::precision(&want_sums, &dec(&sums)?),
    });

    let mut diagonals = std::collections::BTreeMap::new();
    let weights = stats::uniform_values(7, band.len() * slots);
    for (d, &k) in band.iter().enumerate() {
        let diag: Vec<Complex64> = (0..slots)
            .map(|i| Complex64::new(weights[d * slots + i] / 16.0, 0.0))
            .collect();
        diagonals.insert(k, diag);
    }
    let lt = LinearTransform::new(&eval, &diagonals, slots, sums.level())?;
    let t = Instant::now();
    let mv = eval.linear_transform(&sums, &lt)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let want_mv: Vec<f64> = (0..slots)
        .map(|i| {
            band.iter()
                .enumerate()
                .map(|(d, &k)| weights[d * slots + i] / 16.0 * want_sums[(i + k as usize) % slots])
                .sum()
        })
        .collect();
    steps.push(Step {
        name: "banded matrix × vector (BSGS)",
        ms,
        level: mv.level(),
        bits: stats::precision(&want_mv, &dec(&mv)?),
    });

    let t = Instant::now();
    let out = eval.evaluate_chebyshev(&mv, &act, None)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let want_out: Vec<f64> = want_mv.iter().map(|&v| act.eval(v)).collect();
    steps.push(Step {
        name: "sigmoid, Chebyshev degree 7",
        ms,
        level: out.level(),
        bits: stats::precision(&want_out, &dec(&out)?),
    });

    // --- client: decrypt --------------------------------------------------------------------
    let t = Instant::now();
    let result = dec(&out)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    steps.push(Step {
        name: "decrypt + decode",
        ms,
        level: out.level(),
        bits: stats::precision(&want_out, &result),
    });

    println!(
        "  {slots} values, ciphertext {} in memory, {} serialized",
        stats::human_bytes(2 * r.poly_bytes(r.max_level())),
        stats::human_bytes(ct_bytes)
    );
    println!(
        "\n  {:<32} {:>10} {:>6} {:>22}",
        "step", "time", "level", "precision min / mean"
    );
    for s in &steps {
        println!(
            "  {:<32} {:>8.1} ms {:>6} {:>10.1} / {:>5.1} bits",
            s.name, s.ms, s.level, s.bits.0, s.bits.1
        );
    }
    println!(
        "\n  first results: {:?}",
        result
            .iter()
            .take(4)
            .map(|v| format!("{v:.6}"))
            .collect::<Vec<_>>()
    );
    println!(
        "  expected:      {:?}",
        want_out
            .iter()
            .take(4)
            .map(|v| format!("{v:.6}"))
            .collect::<Vec<_>>()
    );
    Ok(())
}
