//! The client/server steps for a model compiled with `--scheme bfv`: `compile` writes a BFV
//! plan, and `keygen`, `encrypt`, `run` and `decrypt` recognise it by its magic number and
//! come here (glue over `hecnn_nn::bfv_batch`).

use std::{io::Read, path::Path, sync::Arc, time::Instant};

use hecnn_nn::{
    bfv_batch::{self, BfvClient, BfvOptions, BfvPlan, BfvServer},
    exec::argmax,
    quant::{QuantModel, QuantSpec},
};
use hecnn_ring::{Backend, Prng};
use hecnn_rlwe::{EvaluationKeys, SecretKey};

use crate::{
    CliError, cnn,
    cnn::KeyPaths,
    cnn_cmds::{ModelOpts, human_secs, select},
};
use hecnn_nn::compile::human_bytes;

/// Whether the file at `path` is a BFV plan (reads its first four bytes only).
pub fn is_plan(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| BfvPlan::is_plan(&magic))
}

/// Reads a plan and refuses one whose ring was not checked against the HE standard (a
/// plan is untrusted input: a tampered or hostile one must not lead a client to make keys
/// for insecure parameters) or is below the `--security` asked for.
fn load_plan(path: &Path, opts: &ModelOpts) -> Result<Arc<BfvPlan>, CliError> {
    let plan = BfvPlan::load(path)?;
    let level = plan.ring().security;
    let refused = |expected: String| {
        CliError::Nn(hecnn_nn::NnError::Mismatch {
            what: "security level",
            expected,
            found: format!("{}: {level}; compile the model again", path.display()),
        })
    };
    let Some(bits) = level.bits() else {
        return Err(refused("128, 192 or 256 bits, checked".into()));
    };
    if let Some(asked) = opts.security
        && bits < asked
    {
        return Err(refused(format!("at least {asked}-bit (--security)")));
    }
    Ok(Arc::new(plan))
}

/// The rewritten model at `path`, quantized by `spec` and planned at `--security`: what
/// `compile --scheme bfv` writes and `eval --scheme bfv` runs.
///
/// # Errors
/// Models integer mode cannot run, no parameters, I/O.
pub fn plan_model(
    path: &Path,
    opts: &ModelOpts,
    spec: &QuantSpec,
) -> Result<(hecnn_nn::Model, BfvPlan), CliError> {
    let model = cnn::load_rewritten(
        path,
        &opts.compile_options(hecnn_nn::compile::PackingRequest::Batch)?,
    )?;
    let quant = QuantModel::quantize(&model, spec)?;
    let bopts = BfvOptions {
        security: cnn::security_level(opts.security.unwrap_or(128))?,
        ..BfvOptions::default()
    };
    let plan = bfv_batch::plan(quant, &bopts)?;
    Ok((model, plan))
}

/// `hecnn compile --scheme bfv`: quantizes, bounds, plans and writes the plan.
///
/// # Errors
/// Models integer mode cannot run, no parameters, I/O.
pub fn compile(
    model: &Path,
    out: Option<&Path>,
    opts: &ModelOpts,
    spec: &QuantSpec,
) -> Result<(), CliError> {
    let t = Instant::now();
    let (_, plan) = plan_model(model, opts, spec)?;
    let out = out.map_or_else(|| model.with_extension("bfv.hecnn"), Path::to_path_buf);
    plan.save(&out)?;
    print!("{}", plan.report());
    println!(
        "quantized to {}-bit inputs and {}-bit weights and planned in {:.2} s; wrote {} \
         (keygen, encrypt, run and decrypt follow it; encrypt uses the secret key)",
        spec.input_bits,
        spec.weight_bits,
        t.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// `hecnn keygen` for a BFV plan: the secret key (written private) and the
/// relinearization key; BFV batch inference needs no rotation keys.
///
/// # Errors
/// An existing secret key without `--force`; I/O.
pub fn keygen(model: &Path, out_dir: &Path, force: bool, opts: &ModelOpts) -> Result<(), CliError> {
    let paths = KeyPaths::in_dir(out_dir);
    cnn::refuse_secret_overwrite(&paths.secret, force)?;
    let plan = load_plan(model, opts)?;
    let be = opts.backend()?;
    let t = Instant::now();
    let mut rng = Prng::from_entropy()?;
    let client = BfvClient::new(plan, be.clone(), &mut rng)?;
    let evk = client.evaluation_keys(&mut rng)?;
    std::fs::create_dir_all(out_dir).map_err(|e| hecnn_nn::NnError::io(out_dir, e))?;
    let sk = client.secret_key().to_secret_bytes();
    cnn::write_secret(&paths.secret, &sk)?;
    let ev = evk.to_bytes(&be)?;
    cnn::write_file(&paths.eval, &ev)?;
    // Keys of another plan must not be mistaken for this one's.
    for stale in [&paths.public, &paths.bootstrap] {
        match std::fs::remove_file(stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(hecnn_nn::NnError::io(stale, e).into());
            }
            _ => {}
        }
    }
    println!(
        "keys in {} ({:.0} ms): secret.key {} (keep it private; it also encrypts), eval.keys {}",
        out_dir.display(),
        t.elapsed().as_secs_f64() * 1e3,
        human_bytes(sk.len()),
        human_bytes(ev.len())
    );
    Ok(())
}

fn client(
    plan: Arc<BfvPlan>,
    secret_key: &Path,
    opts: &ModelOpts,
) -> Result<BfvClient<hecnn_ring::CpuBackend>, CliError> {
    let rlwe = plan.rlwe()?;
    let sk = SecretKey::from_secret_bytes(&rlwe, &cnn::read_file(secret_key)?)?;
    Ok(BfvClient::from_secret_key(plan, sk, opts.backend()?)?)
}

/// What `hecnn encrypt` selected.
pub struct Selection<'a> {
    /// The data set.
    pub data: &'a str,
    /// First image.
    pub offset: usize,
    /// Number of images.
    pub count: Option<usize>,
}

/// `hecnn encrypt` for a BFV plan: quantizes the images and encrypts them with the secret
/// key (seed-compressed), one ciphertext per pixel and plaintext modulus.
///
/// # Errors
/// Keys or data that do not fit the plan, I/O.
pub fn encrypt(
    model: &Path,
    secret_key: &Path,
    sel: &Selection<'_>,
    out: &Path,
    opts: &ModelOpts,
) -> Result<(), CliError> {
    let start = Instant::now();
    let plan = load_plan(model, opts)?;
    let client = client(Arc::clone(&plan), secret_key, opts)?;
    let ds = select(
        &cnn::load_data(sel.data)?,
        sel.offset,
        sel.count,
        plan.slots(),
    )?;
    let q = plan.quant();
    let images: Vec<Vec<i64>> = (0..ds.len())
        .map(|i| q.quantize_input(&ds.image(i)))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    let cts = client.encrypt(&images, &mut Prng::from_entropy()?)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes =
        bfv_batch::batch_to_bytes(&plan, client.params(), client.backend(), images.len(), &cts)?;
    cnn::write_file(out, &bytes)?;
    println!(
        "encrypted {} images into {} ciphertexts ({} plaintext moduli) in {ms:.0} ms: {} ({}); {} in all",
        images.len(),
        cts.iter().map(Vec::len).sum::<usize>(),
        cts.len(),
        out.display(),
        human_bytes(bytes.len()),
        human_secs(start.elapsed().as_secs_f64())
    );
    Ok(())
}

/// `hecnn run` for a BFV plan: the server, with the relinearization key only.
///
/// # Errors
/// Keys or ciphertexts of another plan, I/O.
pub fn run(
    model: &Path,
    eval_keys: &Path,
    input: &Path,
    out: &Path,
    opts: &ModelOpts,
) -> Result<(), CliError> {
    let start = Instant::now();
    let plan = load_plan(model, opts)?;
    let be = opts.backend()?;
    let rlwe = plan.rlwe()?;
    let limit = rlwe.switching_key_bytes() as u64 + 8192;
    let evk = EvaluationKeys::from_bytes(
        &be,
        &rlwe,
        &hecnn_nn::compile::read_bounded(eval_keys, limit)?,
        1,
    )?;
    let server = BfvServer::new(Arc::clone(&plan), Arc::new(evk), be.clone())?;
    let params = server.params();
    let per = plan.quant().input_len();
    let bytes = hecnn_nn::compile::read_bounded(input, plan.batch_bytes_limit(per)?)?;
    let (images, cts) =
        bfv_batch::batch_from_bytes(&plan, &params, &be, plan.quant().input_len(), &bytes)?;
    drop(bytes);
    let layers = plan.quant().layers().len() * plan.moduli().len();
    let pb = indicatif::ProgressBar::new(layers as u64);
    let t = Instant::now();
    let outs = server.evaluate(cts, &mut |_, _| {
        pb.inc(1);
        Ok(())
    });
    pb.finish_and_clear();
    let outs = outs?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = bfv_batch::batch_to_bytes(&plan, &params, &be, images, &outs)?;
    cnn::write_file(out, &bytes)?;
    println!(
        "evaluated {images} images in {secs:.2} s ({:.2} ms per image, a batch holds {}) on {}: {} ({}); {} in all",
        secs * 1e3 / images.max(1) as f64,
        plan.slots(),
        be.name(),
        out.display(),
        human_bytes(bytes.len()),
        human_secs(start.elapsed().as_secs_f64())
    );
    Ok(())
}

/// `hecnn decrypt` for a BFV plan: exact integer outputs, their predictions, the noise
/// budget left; with the data set, accuracy and a bit-for-bit check against the integer
/// executor.
///
/// # Errors
/// A key of another plan, an exhausted budget, a mismatch with the executor, I/O.
pub fn decrypt(
    model: &Path,
    secret_key: &Path,
    input: &Path,
    data: Option<(&str, usize)>,
    opts: &ModelOpts,
) -> Result<(), CliError> {
    let plan = load_plan(model, opts)?;
    let client = client(Arc::clone(&plan), secret_key, opts)?;
    let per = plan.quant().output_len();
    let bytes = hecnn_nn::compile::read_bounded(input, plan.batch_bytes_limit(per)?)?;
    let (images, outs) = bfv_batch::batch_from_bytes(
        &plan,
        client.params(),
        client.backend(),
        plan.quant().output_len(),
        &bytes,
    )?;
    let got = client.decrypt(&outs, images)?;
    let q = plan.quant();
    let preds: Vec<usize> = got
        .values
        .iter()
        .map(|v| argmax(&q.dequantize(v)))
        .collect();
    println!(
        "predictions: {}",
        preds
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "noise budget left: {} bits (smallest per plaintext modulus)",
        got.budgets
            .iter()
            .map(|b| format!("{b:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some((spec, offset)) = data {
        let ds = select(&cnn::load_data(spec)?, offset, Some(images), usize::MAX)?;
        let mut exact = 0;
        let mut correct = 0;
        for (i, (values, &pred)) in got.values.iter().zip(&preds).enumerate().take(ds.len()) {
            exact += usize::from(&q.run(&q.quantize_input(&ds.image(i))?)? == values);
            correct += usize::from(pred == usize::from(ds.labels()[i]));
        }
        println!(
            "accuracy {:.2}% ({correct}/{images}); outputs equal to the integer executor's: {exact}/{images}",
            100.0 * correct as f64 / images.max(1) as f64
        );
        if exact != images {
            return Err(CliError::Refused(format!(
                "{} of {images} images decrypted to other integers than the executor's: were they encrypted from this --data and --offset?",
                images - exact
            )));
        }
    }
    Ok(())
}
