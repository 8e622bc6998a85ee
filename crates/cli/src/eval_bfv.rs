//! `hecnn eval --scheme bfv`: an integer (quantized) network in BFV batch packing, keys to
//! decryption in one process, every decrypted output compared with the integer executor's
//! bit for bit, and the measured noise budget with the plan's prediction.

use std::{sync::Arc, time::Instant};

use hecnn_nn::{
    NnError,
    bfv_batch::{BfvClient, BfvServer, EXHAUSTED_BELOW_BITS},
    data::Dataset,
    exec::{self, argmax},
    quant::QuantSpec,
};
use hecnn_ring::{Backend, Prng};

use crate::{
    CliError,
    cnn_cmds::{ModelOpts, peak_memory},
};

/// What `--scheme bfv` needs besides the model and the data.
pub struct BfvEval<'a> {
    /// The data set's name, for the report.
    pub data: &'a str,
    /// Bits of the quantized input.
    pub input_bits: u32,
    /// Bits of the quantized weights.
    pub weight_bits: u32,
    /// Print every layer's time (first batch) and, with the secret key, its noise budget.
    pub verbose: bool,
}

/// Runs the quantized model on every image of `ds` in BFV batches.
///
/// # Errors
/// A model integer mode cannot run, no parameters, evaluation or decryption failures (an
/// exhausted budget names its layer with `--verbose`), a mismatch with the executor.
pub fn eval_bfv(
    model_path: &std::path::Path,
    ds: &Dataset,
    opts: &ModelOpts,
    run: &BfvEval<'_>,
) -> Result<(), CliError> {
    let spec = QuantSpec {
        input_bits: run.input_bits,
        weight_bits: run.weight_bits,
        ..QuantSpec::default()
    };
    let t = Instant::now();
    let (model, plan) = crate::bfv_cmds::plan_model(model_path, opts, &spec)?;
    if ds.shape() != model.input_shape {
        return Err(CliError::Usage(format!(
            "the data has images of shape {:?}, the model takes {:?}",
            ds.shape(),
            model.input_shape
        )));
    }
    let plan = Arc::new(plan);
    println!("hecnn: exact integer CNN inference in BFV");
    println!(
        "'{}' quantized to {}-bit inputs and {}-bit weights, planned in {:.2} s",
        model.name,
        spec.input_bits,
        spec.weight_bits,
        t.elapsed().as_secs_f64()
    );
    print!("{}", plan.report());
    let be = opts.backend()?;
    println!(
        "data: {} ({} images), backend {}",
        run.data,
        ds.len(),
        be.name()
    );

    let t = Instant::now();
    let mut rng = Prng::from_entropy()?;
    let client = BfvClient::new(Arc::clone(&plan), be.clone(), &mut rng)?;
    let keys = Arc::new(client.evaluation_keys(&mut rng)?);
    let keygen_ms = t.elapsed().as_secs_f64() * 1e3;
    let server = BfvServer::new(Arc::clone(&plan), keys, be.clone())?;

    let q = plan.quant();
    let slots = plan.slots();
    let batches = ds.len().div_ceil(slots);
    let (mut enc_s, mut run_s, mut dec_s) = (0.0, 0.0, 0.0);
    let (mut exact, mut int_correct, mut f64_correct, mut same_argmax) = (0, 0, 0, 0);
    let mut worst_budget = f64::INFINITY;
    let mut first_mismatch = None;
    let mut per_batch = Vec::with_capacity(batches);
    for b in 0..batches {
        let part = ds.slice(b * slots, (b + 1) * slots);
        let images: Vec<Vec<i64>> = (0..part.len())
            .map(|i| q.quantize_input(&part.image(i)))
            .collect::<Result<_, _>>()?;
        let step = crate::progress::step(format!("batch {}/{batches}: encrypting", b + 1));
        let t = Instant::now();
        let inputs = client.encrypt(&images, &mut rng)?;
        enc_s += t.elapsed().as_secs_f64();
        drop(step);
        let step = crate::progress::step(format!("batch {}/{batches}: evaluating", b + 1));
        let t = Instant::now();
        let verbose = run.verbose && b == 0;
        let mut lines = Vec::new();
        let out = server.evaluate(inputs, &mut |d, cts| {
            if verbose {
                // The client's view (it holds the key): the budget left after the layer.
                let budget = match cts.first() {
                    Some(ct) => client.budget(d.instance, ct)?,
                    None => f64::NAN,
                };
                lines.push(format!(
                    "  t{} {:<12} {:>9.1} ms  budget {:>6.1} bits (predicted {:.1})",
                    d.instance,
                    d.node,
                    d.seconds * 1e3,
                    budget,
                    plan.budgets()[d.layer]
                ));
                if budget < EXHAUSTED_BELOW_BITS {
                    return Err(NnError::OutOfRange {
                        node: d.node.into(),
                        value: budget,
                        bound: EXHAUSTED_BELOW_BITS,
                        what: "noise budget (bits): exhausted at this layer",
                    });
                }
            }
            Ok(())
        });
        // Layer times include the budget measurement only where --verbose asked for it.
        per_batch.push(t.elapsed().as_secs_f64());
        run_s += t.elapsed().as_secs_f64();
        drop(step);
        for l in &lines {
            println!("{l}");
        }
        let out = out?;
        let t = Instant::now();
        let got = client.decrypt(&out, part.len())?;
        dec_s += t.elapsed().as_secs_f64();
        worst_budget = got.budgets.iter().copied().fold(worst_budget, f64::min);
        for (i, x) in images.iter().enumerate() {
            let want = q.run(x)?;
            let label = usize::from(part.labels()[i]);
            if got.values[i] == want {
                exact += 1;
            } else if first_mismatch.is_none() {
                first_mismatch = Some(b * slots + i);
            }
            let ours = argmax(&q.dequantize(&got.values[i]));
            int_correct += usize::from(ours == label);
            let real = exec::run(&model, &part.image(i))?;
            let theirs = argmax(real.data());
            f64_correct += usize::from(theirs == label);
            same_argmax += usize::from(ours == theirs);
        }
    }
    let n = ds.len().max(1) as f64;
    let pct = |k: usize| 100.0 * k as f64 / n;
    println!(
        "\nresults over {} images in {batches} batch(es) of up to {slots}:",
        ds.len()
    );
    println!(
        "  decrypted outputs equal to the integer executor's, every logit: {exact}/{} ({:.2} %)",
        ds.len(),
        pct(exact)
    );
    println!(
        "  accuracy: integer model {:.2} % (encrypted = executor), f64 model {:.2} %; same prediction as f64 {:.2} %",
        pct(int_correct),
        pct(f64_correct),
        pct(same_argmax)
    );
    println!(
        "  noise budget left at the output: {worst_budget:.1} bits measured (smallest), {:.1} predicted",
        plan.budgets().last().copied().unwrap_or(f64::NAN)
    );
    println!("timings ({}):", be.name());
    println!("  keygen {keygen_ms:.0} ms (secret key and relinearization key)");
    println!(
        "  encrypt {enc_s:.2} s total ({} ciphertexts per batch, secret key)",
        q.input_len() * plan.moduli().len()
    );
    let each: Vec<String> = per_batch.iter().map(|s| format!("{s:.2}")).collect();
    println!(
        "  evaluate {run_s:.2} s total: {:.2} s per batch (each: {} s; the first of a process touches fresh memory{}), {:.3} ms per image amortized",
        run_s / batches.max(1) as f64,
        each.join(", "),
        if run.verbose {
            ", and measures every layer's budget"
        } else {
            ""
        },
        run_s * 1e3 / n,
    );
    println!(
        "  decrypt {dec_s:.2} s total; peak memory {}",
        peak_memory()
    );
    if let Some(i) = first_mismatch {
        return Err(CliError::Refused(format!(
            "{} of {} images decrypted to outputs other than the integer executor's (first: image {i}): a bug in hecnn, please report it",
            ds.len() - exact,
            ds.len()
        )));
    }
    Ok(())
}
