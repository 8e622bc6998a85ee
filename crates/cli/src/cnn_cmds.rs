//! `hecnn compile | keygen | encrypt | run | decrypt | eval` and the CNN demo.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use hecnn_ckks::{CkksParams, Decryptor, Evaluator, encrypt_pk};
use hecnn_nn::{
    RewriteOptions, batch,
    data::Dataset,
    exec::{self, argmax},
};
use hecnn_ring::{Backend, CpuBackend, Prng};
use hecnn_rlwe::{EvaluationKeys, KeyRequirements, PublicKey, SecretKey, SecurityLevel, security};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    CliError,
    agreement_record::ImageOutcome,
    cnn::{self, BatchKind, CompileOptions, Compiled, KeyPaths, Packing},
    stats::{Agreement, human_bytes},
};

/// Model and parameter options shared by the commands.
#[derive(Args, Debug, Clone)]
pub struct ModelOpts {
    /// log2 of the ring degree; one batch holds 2^(log_n − 1) images.
    #[arg(long, default_value_t = 14)]
    log_n: u32,
    /// Security level checked on the parameters: 128, 192 or 256.
    #[arg(long, default_value_t = 128)]
    security: u32,
    /// Replace ReLU by this polynomial (comma-separated coefficients c0,c1,c2, e.g. 0,0,1).
    #[arg(long, value_delimiter = ',')]
    relu_poly: Vec<f64>,
    /// Replace max pooling by average pooling.
    #[arg(long)]
    maxpool_as_avgpool: bool,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl ModelOpts {
    fn compile_options(&self) -> Result<CompileOptions, CliError> {
        let security = cnn::security_level(self.security)?;
        Ok(CompileOptions {
            log_n: self.log_n,
            security,
            rewrite: RewriteOptions {
                relu_replacement: (!self.relu_poly.is_empty()).then(|| self.relu_poly.clone()),
                maxpool_as_avgpool: self.maxpool_as_avgpool,
            },
        })
    }
}

fn load(model: &std::path::Path, opts: &ModelOpts) -> Result<Compiled, CliError> {
    Compiled::load(model, &opts.compile_options()?)
}

/// Memory the operating system reports as available (Linux), if known.
pub fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses plans that cannot fit in this machine's memory, for the model's packing.
fn check_memory(c: &Compiled) -> Result<(), CliError> {
    let Packing::Single(params, plan) = &c.packing else {
        return check_batch_memory(c);
    };
    crate::single_cmd::check_memory(c, params, plan)
}

/// Refuses batch plans whose ciphertexts cannot fit in this machine's memory.
fn check_batch_memory(c: &Compiled) -> Result<(), CliError> {
    let params = c.batch_params()?;
    let need = c.plan.peak_ciphertext_bytes(params.n(), params.max_level());
    if let Some(have) = available_memory()
        && need > have
    {
        return Err(CliError::Usage(format!(
            "one batch of '{}' needs about {} of ciphertexts at once, more than the {} available: \
             batch packing keeps one ciphertext per neuron (the largest layer has {} neurons); \
             use a machine with more memory or a smaller ring degree (--log-n)",
            c.name,
            human_bytes(need),
            human_bytes(have),
            c.plan.nodes().iter().map(|p| p.neurons).max().unwrap_or(0)
        )));
    }
    Ok(())
}

fn describe(c: &Compiled) -> Result<String, CliError> {
    let params = c.batch_params()?;
    let r = params.rlwe();
    let (terms, squares, relins, rescales) = c.plan.op_counts()?;
    let peak = human_bytes(c.plan.peak_ciphertext_bytes(params.n(), params.max_level()));
    Ok(format!(
        "model '{}': {} nodes, batch packing ({} images per ciphertext), depth {}\n\
         parameters: N = 2^{}, log QP = {:.1}, {} levels, scale 2^{}, dnum {}, security {} (checked)\n\
         per batch: {} input ciphertexts, {} weighted-sum terms, {} squares, {} relinearizations, {} rescales; relinearization key {}; peak ciphertext memory ≈ {peak}",
        c.name,
        c.plan.model().nodes.len(),
        params.max_slots(),
        c.plan.depth(),
        r.log_n(),
        r.log_qp(),
        r.max_level(),
        params.log_scale(),
        r.dnum(),
        security::achieved_level(r.log_n(), r.log_qp()).map_or("none".into(), |l| l.to_string()),
        c.plan.inputs(),
        terms,
        squares,
        relins,
        rescales,
        human_bytes(r.switching_key_bytes()),
    ))
}

/// `hecnn compile`.
#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Output file (default: the model's name with `.hecnn`).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Simulate the plan on images from this data set first (e.g. sample:mnist): checks
    /// that no intermediate value overflows the modulus, without any key.
    #[arg(long)]
    calibrate: Option<String>,
    /// Number of calibration images.
    #[arg(long, default_value_t = 256)]
    calibrate_count: usize,
    /// Packing: `batch`, `single` (reports the single-image plan, its rotation keys and
    /// their size before any key exists) or `auto` (picked for `--images`). The compiled
    /// model records it; keygen, encrypt, run, decrypt and eval follow it.
    #[arg(long, value_enum, default_value_t = Mode::Batch)]
    mode: Mode,
    /// For `--mode auto`: how many images will be sent together.
    #[arg(long, default_value_t = 1)]
    images: usize,
    #[command(flatten)]
    opts: ModelOpts,
}

/// `hecnn compile`: imports and rewrites the model, plans it for the chosen packing, checks
/// the parameters, optionally simulates it on data, and writes the compiled model (which the
/// other commands then follow, packing included).
///
/// # Errors
/// Models or packings that cannot run, calibration that finds values too large, I/O.
pub fn compile(a: &CompileArgs) -> Result<(), CliError> {
    let mut c = load(&a.model, &a.opts)?;
    let level = a.opts.compile_options()?.security;
    let (packing, why) = choose_packing(&c, a.mode, a.images, level)?;
    if !why.is_empty() {
        println!("{why}");
    }
    c.packing = packing;
    if let Some(spec) = &a.calibrate {
        let ds = cnn::load_data(spec)?;
        check_shape(&c, &ds)?;
        match &c.packing {
            Packing::Batch => calibrate_batch(&c, &ds, spec, a.calibrate_count)?,
            Packing::Single(_, plan) => crate::single_cmd::calibrate(
                plan,
                &ds.slice(0, a.calibrate_count.min(ds.len())),
                spec,
            )?,
        }
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.model.with_extension("hecnn"));
    if let Err(e) = check_memory(&c) {
        eprintln!("warning: {e}");
    }
    c.save(&out)?;
    match &c.packing {
        Packing::Batch => println!("{}\nwrote {}", describe(&c)?, out.display()),
        Packing::Single(params, plan) => println!(
            "{}\nwrote {} (single-image packing: keygen, encrypt, run, decrypt and eval follow it)",
            crate::single_cmd::describe(&c, params, plan),
            out.display()
        ),
    }
    Ok(())
}

/// Simulates the batch plan on up to `count` images of `ds` without keys: the smallest
/// modulus headroom, and whether the predictions are the model's.
fn calibrate_batch(c: &Compiled, ds: &Dataset, spec: &str, count: usize) -> Result<(), CliError> {
    let params = c.batch_params()?;
    let ds = ds.slice(0, count.min(params.max_slots()).min(ds.len()));
    let engine = batch::Packed::new(params.rlwe().q());
    let columns: Vec<Vec<f64>> = (0..c.plan.inputs())
        .map(|p| (0..ds.len()).map(|i| f64::from(ds.pixels(i)[p])).collect())
        .collect();
    let inputs = engine.inputs(columns, params.max_level(), params.default_scale());
    let (out, map) = c.plan.run(&engine, inputs, |_, _| {})?;
    let headroom = engine.min_headroom_bits();
    let agree = (0..ds.len())
        .filter(|&i| {
            let sim: Vec<f64> = out.iter().map(|o| map.a * o.slots[i] + map.gamma).collect();
            exec::run(c.plan.model(), &ds.image(i)).is_ok_and(|t| argmax(t.data()) == argmax(&sim))
        })
        .count();
    println!(
        "simulation on {} images of {spec}: smallest modulus headroom {headroom:.1} bits, predictions as the model's: {agree}/{}",
        ds.len(),
        ds.len()
    );
    if headroom < 10.0 {
        return Err(CliError::Usage(format!(
            "values come within {headroom:.1} bits of the modulus: the parameters are too small for this model's value ranges"
        )));
    }
    Ok(())
}

/// `hecnn keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Compiled model (`.hecnn`) or ONNX model.
    model: PathBuf,
    /// Directory for secret.key, public.key and eval.keys.
    #[arg(long, default_value = "keys")]
    out_dir: PathBuf,
    #[command(flatten)]
    opts: ModelOpts,
}

/// `hecnn keygen`: the client's secret, public and evaluation keys for the model's packing
/// (single-image packing adds the plan's rotation keys).
///
/// # Errors
/// I/O, key generation.
pub fn keygen(a: &KeygenArgs) -> Result<(), CliError> {
    let c = load(&a.model, &a.opts)?;
    let be = CpuBackend::new(a.opts.threads)?;
    let params = c.packing_params()?;
    let needs = KeyRequirements::relin().with_rotations(c.packing.rotations());
    let t = Instant::now();
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(params.rlwe(), &mut rng)?;
    let pk = sk.public_key(&be, &mut rng)?;
    let evk = sk.evaluation_keys(&be, &needs, &mut rng)?;
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| CliError::Usage(format!("{}: {e}", a.out_dir.display())))?;
    let paths = KeyPaths::in_dir(&a.out_dir);
    let sk_bytes = sk.to_secret_bytes();
    cnn::write_file(&paths.secret, &sk_bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&paths.secret, std::fs::Permissions::from_mode(0o600));
    }
    let pk_bytes = pk.to_bytes(&be)?;
    cnn::write_file(&paths.public, &pk_bytes)?;
    let ev_bytes = evk.to_bytes(&be)?;
    cnn::write_file(&paths.eval, &ev_bytes)?;
    println!(
        "keys in {} ({:.0} ms): secret.key {} (keep it private), public.key {}, eval.keys {}",
        a.out_dir.display(),
        t.elapsed().as_secs_f64() * 1e3,
        human_bytes(sk_bytes.len()),
        human_bytes(pk_bytes.len()),
        human_bytes(ev_bytes.len())
    );
    Ok(())
}

/// `hecnn encrypt`.
#[derive(Args, Debug)]
pub struct EncryptArgs {
    /// Compiled model (`.hecnn`) or ONNX model.
    model: PathBuf,
    /// Public key file.
    #[arg(long, default_value = "keys/public.key")]
    public_key: PathBuf,
    /// Data: mnist, cifar10, sample:mnist, sample:cifar10, idx:IMAGES,LABELS, cifar-bin:FILE.
    #[arg(long, default_value = "sample:mnist")]
    data: String,
    /// First image.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Number of images (default: a full batch or what the data set has).
    #[arg(long)]
    count: Option<usize>,
    /// Output batch file.
    #[arg(short, long, default_value = "inputs.ct")]
    out: PathBuf,
    #[command(flatten)]
    opts: ModelOpts,
}

/// Images one single-image input file holds at most (each image is a few ciphertexts of its
/// own, megabytes each).
const SINGLE_FILE_IMAGES: usize = 256;

/// `hecnn encrypt`: the client encrypts images with the public key, in the model's packing.
///
/// # Errors
/// Keys or data that do not fit the model, I/O.
pub fn encrypt(a: &EncryptArgs) -> Result<(), CliError> {
    let c = load(&a.model, &a.opts)?;
    let be = CpuBackend::new(a.opts.threads)?;
    let params = c.packing_params()?;
    let pk = PublicKey::from_bytes(&be, params.rlwe(), &cnn::read_file(&a.public_key)?)?;
    let cap = match &c.packing {
        Packing::Batch => c.batch_size()?,
        Packing::Single(..) => SINGLE_FILE_IMAGES,
    };
    let ds = select(&cnn::load_data(&a.data)?, a.offset, a.count, cap)?;
    check_shape(&c, &ds)?;
    let eval = server_eval(params, &be, None)?;
    let images: Vec<_> = (0..ds.len()).map(|i| ds.image(i)).collect();
    let mut rng = Prng::from_entropy()?;
    let t = Instant::now();
    let cts = match &c.packing {
        Packing::Batch => {
            batch::encrypt_images(&eval, &images, params.max_level(), &mut rng, |pt, r| {
                encrypt_pk(&pk, &be, pt, r)
            })?
        }
        Packing::Single(_, plan) => {
            let mut cts = Vec::with_capacity(images.len() * plan.input_cts());
            for image in &images {
                cts.extend(plan.encrypt_image(&eval, image, params.max_level(), |pt| {
                    encrypt_pk(&pk, &be, pt, &mut rng)
                })?);
            }
            cts
        }
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let n_cts = cts.len();
    let inputs = cnn::Batch {
        images: ds.len(),
        map: batch::OutputMap { a: 1.0, gamma: 0.0 },
        key_id: pk.key_id(),
        cts,
    };
    let size = cnn::save_batch(&a.out, BatchKind::Inputs, &inputs, &be, params)?;
    println!(
        "encrypted {} images into {n_cts} ciphertexts in {ms:.0} ms: {} ({})",
        ds.len(),
        a.out.display(),
        human_bytes(size)
    );
    Ok(())
}

/// `hecnn run`: the server side. It holds evaluation keys only.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Compiled model (`.hecnn`) or ONNX model.
    model: PathBuf,
    /// Evaluation keys file.
    #[arg(long, default_value = "keys/eval.keys")]
    eval_keys: PathBuf,
    /// Encrypted inputs.
    #[arg(long = "in", default_value = "inputs.ct")]
    input: PathBuf,
    /// Encrypted outputs.
    #[arg(short, long, default_value = "outputs.ct")]
    out: PathBuf,
    #[command(flatten)]
    opts: ModelOpts,
}

fn server_eval(
    params: &Arc<CkksParams>,
    be: &CpuBackend,
    keys: Option<EvaluationKeys<CpuBackend>>,
) -> Result<Evaluator<CpuBackend>, CliError> {
    // Encoding and decoding need no key.
    let keys = keys.unwrap_or_else(|| EvaluationKeys::empty(params.rlwe()));
    Ok(Evaluator::new(
        Arc::clone(params),
        Arc::new(keys),
        be.clone(),
    )?)
}

fn progress_bar(total: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} layers {elapsed_precise}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// `hecnn run`: the server evaluates the model on encrypted inputs with evaluation keys
/// only, in the model's packing.
///
/// # Errors
/// Keys or ciphertexts that do not fit the model or each other, memory, I/O.
pub fn run(a: &RunArgs) -> Result<(), CliError> {
    let c = load(&a.model, &a.opts)?;
    check_memory(&c)?;
    let be = CpuBackend::new(a.opts.threads)?;
    let params = c.packing_params()?;
    // The keys the packing asks for and no more: relinearization, and the plan's rotations.
    let max_keys = 1 + c.packing.rotations().len();
    let evk =
        EvaluationKeys::from_bytes(&be, params.rlwe(), &cnn::read_file(&a.eval_keys)?, max_keys)?;
    let key_id = evk.key_id();
    let input = cnn::load_batch(&a.input, BatchKind::Inputs, &be, params)?;
    cnn::check_key(&input.key_id, &key_id, &a.input.display().to_string())?;
    let eval = server_eval(params, &be, Some(evk))?;
    let (images, cts) = (input.images, input.cts);
    let t = Instant::now();
    let (out, map) = match &c.packing {
        Packing::Batch => {
            let pb = progress_bar(c.plan.model().nodes.len(), "evaluating");
            let result = c
                .plan
                .run_encrypted(&eval, cts, |done, _| pb.set_position(done as u64));
            pb.finish_and_clear();
            result?
        }
        Packing::Single(_, plan) => crate::single_cmd::run_images(plan, &eval, &be, images, cts)?,
    };
    let secs = t.elapsed().as_secs_f64();
    let outputs = cnn::Batch {
        images,
        map,
        key_id,
        cts: out,
    };
    let size = cnn::save_batch(&a.out, BatchKind::Outputs, &outputs, &be, params)?;
    println!(
        "evaluated {images} images in {secs:.2} s ({:.2} ms per image) on {}: {} ({})",
        secs * 1e3 / images.max(1) as f64,
        be.name(),
        a.out.display(),
        human_bytes(size)
    );
    Ok(())
}

/// `hecnn decrypt`.
#[derive(Args, Debug)]
pub struct DecryptArgs {
    /// Compiled model (`.hecnn`) or ONNX model.
    model: PathBuf,
    /// Secret key file.
    #[arg(long, default_value = "keys/secret.key")]
    secret_key: PathBuf,
    /// Encrypted outputs.
    #[arg(long = "in", default_value = "outputs.ct")]
    input: PathBuf,
    /// The data set the inputs came from, to report accuracy (same --offset).
    #[arg(long)]
    data: Option<String>,
    /// First image of the data set.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    #[command(flatten)]
    opts: ModelOpts,
}

/// `hecnn decrypt`: the client decrypts the outputs with the secret key; the predictions,
/// and the accuracy when the data set is named.
///
/// # Errors
/// A key that does not fit the ciphertexts, malformed files, I/O.
pub fn decrypt(a: &DecryptArgs) -> Result<(), CliError> {
    let c = load(&a.model, &a.opts)?;
    let be = CpuBackend::new(a.opts.threads)?;
    let params = c.packing_params()?;
    let sk = SecretKey::from_secret_bytes(params.rlwe(), &cnn::read_file(&a.secret_key)?)?;
    let output = cnn::load_batch(&a.input, BatchKind::Outputs, &be, params)?;
    cnn::check_key(&output.key_id, &sk.key_id(), &a.input.display().to_string())?;
    let (images, map, cts) = (output.images, output.map, output.cts);
    let eval = server_eval(params, &be, None)?;
    let dec = Decryptor::new(&sk, &be)?;
    let logits = match &c.packing {
        Packing::Batch => batch::decrypt_outputs(&eval, &cts, map, images, |ct| dec.decrypt(ct))?,
        Packing::Single(_, plan) => {
            crate::single_cmd::decrypt_images(plan, &eval, &cts, map, images, |ct| dec.decrypt(ct))?
        }
    };
    let preds: Vec<usize> = logits.iter().map(|l| argmax(l)).collect();
    println!(
        "predictions: {}",
        preds
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(spec) = &a.data {
        let ds = select(&cnn::load_data(spec)?, a.offset, Some(images), usize::MAX)?;
        let correct = preds
            .iter()
            .zip(ds.labels())
            .filter(|(p, l)| **p == usize::from(**l))
            .count();
        println!(
            "accuracy {:.2}% ({correct}/{images})",
            100.0 * correct as f64 / images.max(1) as f64
        );
    }
    Ok(())
}

/// `hecnn eval` (and the demo).
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Compiled model (`.hecnn`) or ONNX model.
    #[arg(default_value = "models/hcnn-mnist.onnx")]
    model: PathBuf,
    /// Data: mnist, cifar10, sample:mnist, sample:cifar10, idx:IMAGES,LABELS, cifar-bin:FILE.
    #[arg(long, default_value = "mnist")]
    data: String,
    /// Number of images (default: all from `--offset` on).
    #[arg(long)]
    count: Option<usize>,
    /// Position of the first image in the data set.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Single-image mode: append each image's outcome to this CSV file as soon as it is
    /// done, skip the images it already holds, and summarise the whole file (a long check
    /// survives interruptions and adds up across runs).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Batch packing: print the time spent in every layer of the first batch.
    #[arg(long)]
    verbose: bool,
    /// Only run the model in the clear (f64) and report its accuracy: no keys, no encryption.
    #[arg(long)]
    cleartext: bool,
    /// Packing: `batch` (one image per slot, thousands per evaluation), `single` (one image
    /// densely packed, classified on its own) or `auto` (picked for the number of images).
    /// Default: the compiled model's packing (batch for an `.onnx` file).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    #[command(flatten)]
    opts: ModelOpts,
}

/// How images are packed into ciphertexts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One image per slot, one ciphertext per neuron.
    Batch,
    /// One image per ciphertext, linear layers by rotations.
    Single,
    /// Whichever the cost model expects to be faster for the number of images.
    Auto,
}

/// Resolves `mode` for `images` images. [`Mode::Auto`] compares estimated ring
/// multiply-adds of single-image mode (the plan's cost in plaintext products, each `N·limbs`
/// on average, and every relinearization 12) against batch mode (every weighted-sum term a
/// plaintext-size product, every relinearization 12) for as many batches as the images
/// need; a model only one packing can run gets that one. Returns the packing and, for
/// `auto`, a line explaining the choice.
///
/// # Errors
/// The packing asked for unable to run the model (for `auto`: neither can).
pub fn choose_packing(
    c: &Compiled,
    mode: Mode,
    images: usize,
    level: SecurityLevel,
) -> Result<(Packing, String), CliError> {
    let single = match mode {
        Mode::Batch => {
            c.batch_params()?;
            return Ok((Packing::Batch, String::new()));
        }
        Mode::Single => {
            let (params, plan) = crate::single_cmd::plan(c, level)?;
            return Ok((Packing::Single(params, Box::new(plan)), String::new()));
        }
        Mode::Auto => match crate::single_cmd::plan(c, level) {
            Ok(p) => p,
            Err(e) => {
                c.batch_params()?;
                return Ok((
                    Packing::Batch,
                    format!("mode auto: batch (single-image mode cannot run this model: {e})"),
                ));
            }
        },
    };
    let batch_params = match c.batch_params() {
        Ok(p) => p,
        Err(e) => {
            return Ok((
                Packing::Single(single.0, Box::new(single.1)),
                format!("mode auto: single (batch packing cannot run this model: {e})"),
            ));
        }
    };
    let work = |n: usize, levels: usize, units: usize| -> f64 {
        units as f64 * n as f64 * (levels as f64 + 2.0) / 2.0
    };
    let (terms, _, relins, _) = c.plan.op_counts()?;
    let batch = work(
        batch_params.n(),
        batch_params.max_level(),
        terms + 12 * relins,
    );
    let per_image = work(
        single.0.n(),
        single.0.max_level(),
        single.1.cost() + 12 * single.1.relinearizations(),
    );
    let batch_size = batch_params.max_slots();
    let batches = images.div_ceil(batch_size).max(1);
    let crossover = (batch / per_image).ceil();
    let pick_single = (images as f64) * per_image < batches as f64 * batch;
    let why = format!(
        "mode auto: {} for {images} image(s) (estimated work: single {per_image:.2e} per image, batch {batch:.2e} per batch of {batch_size}; single-image mode pays off below about {crossover} images)",
        if pick_single { "single" } else { "batch" },
    );
    let packing = if pick_single {
        Packing::Single(single.0, Box::new(single.1))
    } else {
        Packing::Batch
    };
    Ok((packing, why))
}

/// `hecnn eval`: keys, encryption, evaluation and decryption of a whole data set in one
/// process, compared with the cleartext model (or, with `--cleartext`, the cleartext model
/// alone).
///
/// # Errors
/// Models or data that do not fit each other, memory, I/O.
pub fn eval(a: &EvalArgs) -> Result<(), CliError> {
    let model = if a.model.exists() {
        a.model.clone()
    } else {
        cnn::repo_path(&a.model.to_string_lossy())
    };
    let mut c = load(&model, &a.opts)?;
    let all = cnn::load_data(&a.data)?;
    let ds = select(&all, a.offset, a.count, usize::MAX)?;
    check_shape(&c, &ds)?;
    if a.record.is_some() && (a.cleartext || a.mode == Some(Mode::Batch)) {
        return Err(CliError::Usage(
            "--record keeps image-by-image outcomes of --mode single (or auto choosing it)".into(),
        ));
    }
    if a.cleartext {
        let t = Instant::now();
        let correct = (0..ds.len())
            .filter(|&i| {
                exec::run(c.plan.model(), &ds.image(i))
                    .is_ok_and(|out| argmax(out.data()) == usize::from(ds.labels()[i]))
            })
            .count();
        println!(
            "cleartext accuracy of '{}' on {} ({} images): {:.2}% ({correct}/{}) in {:.1} s",
            c.name,
            a.data,
            ds.len(),
            100.0 * correct as f64 / ds.len().max(1) as f64,
            ds.len(),
            t.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let packing = match a.mode {
        // The compiled packing, moved out (the plan holds the whole model).
        None => std::mem::replace(&mut c.packing, Packing::Batch),
        Some(mode) => {
            let level = a.opts.compile_options()?.security;
            let (packing, why) = choose_packing(&c, mode, ds.len(), level)?;
            if !why.is_empty() {
                println!("{why}");
            }
            packing
        }
    };
    if let Packing::Single(params, plan) = packing {
        let run = crate::single_cmd::SingleRun {
            data: &a.data,
            model: &model,
            offset: a.offset,
            record: a.record.as_deref(),
            threads: a.opts.threads,
        };
        return crate::single_cmd::eval(&c, &params, &plan, &ds, &run);
    }
    if a.record.is_some() {
        return Err(CliError::Usage(
            "batch packing does not keep --record image by image: use --mode single".into(),
        ));
    }
    check_memory(&c)?;
    let params = c.batch_params()?;
    let be = CpuBackend::new(a.opts.threads)?;
    println!("hecnn: encrypted CNN inference");
    println!("{}", describe(&c)?);
    println!(
        "data: {} ({} images), backend {}",
        a.data,
        ds.len(),
        be.name()
    );

    // Client: keys.
    let t = Instant::now();
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(params.rlwe(), &mut rng)?;
    let pk = sk.public_key(&be, &mut rng)?;
    let evk = sk.evaluation_keys(&be, &KeyRequirements::relin(), &mut rng)?;
    let key_bytes = evk.size_bytes();
    let keygen_ms = t.elapsed().as_secs_f64() * 1e3;
    let eval = server_eval(params, &be, Some(evk))?;
    let dec = Decryptor::new(&sk, &be)?;

    let batch_size = params.max_slots();
    let batches = ds.len().div_ceil(batch_size);
    let (mut enc_s, mut run_s, mut dec_s) = (0.0, 0.0, 0.0);
    let mut agreement = Agreement::default();
    let mut ct_bytes = 0usize;
    let pb = ProgressBar::new(ds.len() as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {pos}/{len} images {elapsed_precise} (eta {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    for b in 0..batches {
        let part = ds.slice(b * batch_size, (b + 1) * batch_size);
        let images: Vec<_> = (0..part.len()).map(|i| part.image(i)).collect();
        pb.set_message("encrypting");
        let t = Instant::now();
        let cts = batch::encrypt_images(&eval, &images, params.max_level(), &mut rng, |pt, r| {
            encrypt_pk(&pk, &be, pt, r)
        })?;
        enc_s += t.elapsed().as_secs_f64();
        if b == 0 {
            ct_bytes = cts
                .first()
                .map_or(Ok(0), |ct| ct.to_bytes(&be, params).map(|v| v.len()))?;
        }
        pb.set_message("evaluating");
        let t = Instant::now();
        let mut marks = Vec::new();
        let (out, map) = c
            .plan
            .run_encrypted(&eval, cts, |done, _| marks.push((done, Instant::now())))?;
        run_s += t.elapsed().as_secs_f64();
        if a.verbose && b == 0 {
            pb.suspend(|| {
                // A streamed chain (a layer and the activations and pools after it) reports
                // once, for all its nodes.
                let (mut prev, mut from) = (t, 1);
                for (done, at) in &marks {
                    let names: Vec<String> = c.plan.model().nodes[from.min(*done)..*done]
                        .iter()
                        .map(|n| format!("{} ({})", n.name, n.op.kind()))
                        .collect();
                    if !names.is_empty() {
                        println!(
                            "  {:>10.1} ms  {}",
                            (*at - prev).as_secs_f64() * 1e3,
                            names.join(" → ")
                        );
                    }
                    (prev, from) = (*at, *done);
                }
            });
        }
        pb.set_message("decrypting");
        let t = Instant::now();
        let logits = batch::decrypt_outputs(&eval, &out, map, part.len(), |ct| dec.decrypt(ct))?;
        dec_s += t.elapsed().as_secs_f64();
        for (i, got) in logits.iter().enumerate() {
            let want = exec::run(c.plan.model(), &images[i])?;
            let label = usize::from(part.labels()[i]);
            agreement.add(&ImageOutcome::new(
                b * batch_size + i,
                label,
                got,
                want.data(),
            ));
        }
        pb.inc(part.len() as u64);
    }
    pb.finish_and_clear();
    let n = ds.len().max(1) as f64;
    println!(
        "\nresults over {} images in {batches} batch(es) of up to {batch_size}:",
        ds.len()
    );
    agreement.print();
    println!("timings ({}):", be.name());
    println!(
        "  keygen {keygen_ms:.0} ms, evaluation keys {}",
        human_bytes(key_bytes)
    );
    println!(
        "  encrypt {:.2} s total, {:.3} ms per image (client, public key)",
        enc_s,
        enc_s * 1e3 / n
    );
    println!(
        "  evaluate {:.2} s total: {:.2} s per batch, {:.3} ms per image amortized",
        run_s,
        run_s / batches.max(1) as f64,
        run_s * 1e3 / n
    );
    println!("  decrypt {:.2} s total", dec_s);
    println!(
        "  one input ciphertext {} (seed-less, public-key encrypted); peak memory {}",
        human_bytes(ct_bytes),
        peak_memory()
    );
    Ok(())
}

/// `hecnn demo`: encrypted classification of the bundled MNIST sample with the bundled model.
pub fn demo(threads: usize) -> Result<(), CliError> {
    let args = EvalArgs {
        model: PathBuf::from("models/hcnn-mnist.onnx"),
        data: "sample:mnist".into(),
        count: None,
        offset: 0,
        record: None,
        verbose: false,
        cleartext: false,
        mode: None,
        opts: ModelOpts {
            log_n: 14,
            security: 128,
            relu_poly: vec![],
            maxpool_as_avgpool: false,
            threads,
        },
    };
    eval(&args)
}

fn select(
    ds: &Dataset,
    offset: usize,
    count: Option<usize>,
    cap: usize,
) -> Result<Dataset, CliError> {
    if offset >= ds.len() {
        return Err(CliError::Usage(format!(
            "--offset {offset} is past the {} images of the data set",
            ds.len()
        )));
    }
    let count = count.unwrap_or(ds.len() - offset).min(ds.len() - offset);
    if count > cap {
        return Err(CliError::Usage(format!(
            "{count} images exceed the {cap} one file holds: choose fewer with --count and --offset, or run them all with hecnn eval"
        )));
    }
    Ok(ds.slice(offset, offset + count))
}

fn check_shape(c: &Compiled, ds: &Dataset) -> Result<(), CliError> {
    if ds.shape() != c.plan.model().input_shape {
        return Err(CliError::Usage(format!(
            "the data has images of shape {:?}, the model takes {:?}",
            ds.shape(),
            c.plan.model().input_shape
        )));
    }
    Ok(())
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB");
    kb.trim().parse::<usize>().ok().map(|kb| kb * 1024)
}

/// Peak resident memory of this process (Linux), for reports.
pub fn peak_memory() -> String {
    peak_rss().map_or_else(|| "n/a".into(), |b| format!("{} kB", b / 1024))
}
