//! `hecnn params`: the preset table.

use std::sync::Arc;

use clap::Args;
use hecnn_ckks::{Evaluator, Preset, decrypt, encrypt_sk};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey, security};

use crate::{CliError, stats};

/// Options of `hecnn params`.
#[derive(Args, Debug)]
pub struct ParamsArgs {
    /// Also measure precision (fresh encryption and one multiplication + rescale) per preset.
    #[arg(long)]
    measure: bool,
    /// Threads for the measurement.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: &ParamsArgs) -> Result<(), CliError> {
    println!(
        "{:<16} {:>5} {:>8} {:>7} {:>5} {:>6} {:>9} {:>11} {:>11}{}",
        "preset",
        "N",
        "log QP",
        "levels",
        "dnum",
        "scale",
        "security",
        "ct (top)",
        "switch key",
        if args.measure {
            "  fresh min/mean   mul+rescale min/mean"
        } else {
            ""
        }
    );
    for p in Preset::ALL {
        let params = p.build()?;
        let r = params.rlwe();
        let meets = security::achieved_level(r.log_n(), r.log_qp())
            .map_or("none".to_string(), |l| l.to_string());
        let mut line = format!(
            "{:<16} {:>5} {:>8.1} {:>7} {:>5} {:>6} {:>9} {:>11} {:>11}",
            p.name(),
            format!("2^{}", r.log_n()),
            r.log_qp(),
            r.max_level(),
            r.dnum(),
            format!("2^{}", params.log_scale()),
            meets,
            stats::human_bytes(2 * r.poly_bytes(r.max_level())),
            stats::human_bytes(r.switching_key_bytes()),
        );
        if args.measure {
            let (fresh, mul) = measure(&params, args.threads)?;
            line += &format!(
                "  {:>5.1} / {:>5.1}      {:>5.1} / {:>5.1}",
                fresh.0, fresh.1, mul.0, mul.1
            );
        }
        println!("{line}");
    }
    println!(
        "\nAll presets: uniform ternary secret, σ = 3.2, primes < 2^50, checked against the \
         HE-standard table; 'security' is the highest level the total log QP meets.\n\
         Sizes: a fresh public-key ciphertext at the top level (two polynomials), one \
         seed-compressed relinearization or rotation key."
    );
    Ok(())
}

type Bits = (f64, f64);

fn measure(params: &Arc<hecnn_ckks::CkksParams>, threads: usize) -> Result<(Bits, Bits), CliError> {
    let be = CpuBackend::new(crate::cnn_cmds::threads(threads))?;
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(params.rlwe(), &mut rng)?;
    let keys = sk.evaluation_keys(&be, &KeyRequirements::relin(), &mut rng)?;
    let eval = Evaluator::new(Arc::clone(params), Arc::new(keys), be.clone())?;
    let slots = params.max_slots();
    let x = stats::uniform_values(11, slots);
    let y = stats::uniform_values(12, slots);
    let top = params.max_level();
    let ct_x = encrypt_sk(
        &sk,
        &be,
        &eval.encode_real(&x, top, params.default_scale(), slots)?,
        &mut rng,
    )?;
    let ct_y = encrypt_sk(
        &sk,
        &be,
        &eval.encode_real(&y, top, params.default_scale(), slots)?,
        &mut rng,
    )?;
    let dec = |ct| -> Result<Vec<f64>, CliError> {
        Ok(eval
            .encoder()
            .decode_real(&be, params, &decrypt(&sk, &be, ct)?)?)
    };
    let fresh = stats::precision(&x, &dec(&ct_x)?);
    let prod = eval.rescale(&eval.mul_relin(&ct_x, &ct_y)?)?;
    let want: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a * b).collect();
    Ok((fresh, stats::precision(&want, &dec(&prod)?)))
}
