//! `hecnn compile | keygen | encrypt | run | decrypt`: the compiler, the client and the
//! server as separate steps over files. The work is the library's (`hecnn_nn::compile`);
//! this module parses arguments, reads and writes files and prints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use hecnn_ckks::cost::UnitCosts;
use hecnn_nn::{
    RewriteOptions,
    compile::{
        Bootstrapping, Client, ClientSpec, CompileOptions, CompiledModel, EncryptedImages,
        ImagesKind, PackingKind, PackingRequest, Server, human_bytes,
    },
    data::Dataset,
    exec::argmax,
    single::Lowering,
};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{EncapsulationKeys, EvaluationKeys, KeyStorage, PublicKey, SecretKey};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    CliError,
    cnn::{self, KeyPaths},
};

/// Model and parameter options shared by the commands.
#[derive(Args, Debug, Clone)]
pub struct ModelOpts {
    /// log2 of the ring degree for an ONNX model [default: 14]; one batch holds
    /// 2^(log_n − 1) images. A compiled model keeps its own, and a different one is refused.
    #[arg(long)]
    pub log_n: Option<u32>,
    /// Security level checked on the parameters: 128, 192 or 256 [default: 128]. A compiled
    /// model below the level asked is refused.
    #[arg(long)]
    pub security: Option<u32>,
    /// Replace ReLU by this polynomial (comma-separated coefficients c0,c1,c2, e.g. 0,0,1).
    #[arg(long, value_delimiter = ',')]
    pub relu_poly: Vec<f64>,
    /// Replace max pooling by average pooling.
    #[arg(long)]
    pub maxpool_as_avgpool: bool,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Bootstrapping inside the network (single-image packing): auto bootstraps only when
    /// the plan does not fit without it.
    #[arg(long, value_enum, default_value_t = Bootstrap::Auto)]
    pub bootstrap: Bootstrap,
    /// Levels between bootstrappings (default: as many as the security level allows).
    #[arg(long)]
    pub refresh_levels: Option<usize>,
    /// log2 of the bound on values at bootstrapping (bootstrapping's error grows with it;
    /// `compile --calibrate` shows the largest value) [default: 13, or a compiled model's].
    #[arg(long)]
    pub refresh_bound: Option<u32>,
}

/// `--bootstrap`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Only when the plan does not fit without it (no parameters, or keys and weights
    /// above 16 GiB).
    Auto,
    /// Never: a plan deeper than one modulus chain is refused.
    Never,
    /// Always.
    Always,
}

impl ModelOpts {
    /// The library's options for `packing`.
    pub fn compile_options(&self, packing: PackingRequest) -> Result<CompileOptions, CliError> {
        Ok(CompileOptions {
            packing,
            log_n: self.log_n.unwrap_or(14),
            security: cnn::security_level(self.security.unwrap_or(128))?,
            rewrite: RewriteOptions {
                relu_replacement: (!self.relu_poly.is_empty()).then(|| self.relu_poly.clone()),
                maxpool_as_avgpool: self.maxpool_as_avgpool,
            },
            bootstrapping: match self.bootstrap {
                Bootstrap::Never => Bootstrapping::Never,
                Bootstrap::Auto => Bootstrapping::Auto,
                Bootstrap::Always => Bootstrapping::Always,
            },
            refresh_levels: self.refresh_levels,
            refresh_bound_bits: self
                .refresh_bound
                .unwrap_or(hecnn_nn::compile::params::REFRESH_BOUND_BITS),
        })
    }

    /// The library's options for planning the compiled model `c` again in `packing`: what
    /// the command line leaves out comes from the file (its security level, its ring when
    /// it was batch-packed, its refresh bound), so planning again never silently lowers
    /// what the model was compiled for. What the command line gives is honoured: it is a
    /// new compilation.
    pub fn replan_options(
        &self,
        c: &CompiledModel,
        packing: PackingRequest,
    ) -> Result<CompileOptions, CliError> {
        let mut o = self.compile_options(packing)?;
        let r = c.params().rlwe();
        if self.security.is_none() {
            o.security = r.security();
        }
        if self.log_n.is_none() && c.packing() == PackingKind::Batch {
            o.log_n = r.log_n();
        }
        if let (None, Some(refresh)) = (self.refresh_bound, c.refresh()) {
            o.refresh_bound_bits = refresh.bound_bits;
        }
        Ok(o)
    }

    /// The model at `path` planned in `packing`: an ONNX file compiled with these options,
    /// a compiled model planned again from its rewritten model with
    /// [`ModelOpts::replan_options`].
    ///
    /// # Errors
    /// As [`cnn::model_from`], and plans that cannot run.
    pub fn plan(&self, path: &Path, packing: PackingRequest) -> Result<CompiledModel, CliError> {
        let bytes = cnn::read_file(path)?;
        if CompiledModel::is_compiled(&bytes) {
            let c = CompiledModel::from_bytes(&bytes)?;
            cnn::refuse_unchecked(path, c.params())?;
            return Ok(c.repack(&self.replan_options(&c, packing)?)?);
        }
        cnn::model_from(path, &bytes, &self.compile_options(packing)?)
    }

    /// The model at `path` in the packing it was compiled with (an ONNX file: batch
    /// packing).
    pub fn load(&self, path: &Path) -> Result<CompiledModel, CliError> {
        let c = cnn::load_model(path, &self.compile_options(PackingRequest::Batch)?)?;
        self.check_compiled(path, c.params())?;
        Ok(c)
    }

    /// Refuses `--log-n` or `--security` given with a model compiled otherwise: the keys
    /// or ciphertexts would silently follow the model, not the request.
    ///
    /// # Errors
    /// [`CliError::Usage`] naming what the file was compiled for.
    pub fn check_compiled(
        &self,
        path: &Path,
        params: &hecnn_ckks::CkksParams,
    ) -> Result<(), CliError> {
        let r = params.rlwe();
        if let Some(n) = self.log_n.filter(|&n| n != r.log_n()) {
            return Err(CliError::Usage(format!(
                "{} was compiled for N = 2^{}; --log-n {n} asks for another ring: compile \
                 the ONNX model again with it, or leave --log-n out",
                path.display(),
                r.log_n()
            )));
        }
        if let Some(bits) = self.security {
            cnn::security_level(bits)?;
            let has = hecnn_rlwe::security::achieved_level(r.log_n(), r.log_qp())
                .and_then(hecnn_rlwe::SecurityLevel::bits);
            if has.is_none_or(|h| h < bits) {
                return Err(CliError::Usage(format!(
                    "{} was compiled for {} security; --security {bits} asks for more: \
                     compile the ONNX model again with it",
                    path.display(),
                    has.map_or("unchecked".into(), |h| format!("{h}-bit"))
                )));
            }
        }
        Ok(())
    }

    /// The worker pool.
    pub fn backend(&self) -> Result<CpuBackend, CliError> {
        Ok(CpuBackend::new(threads(self.threads))?)
    }
}

/// Worker threads for `--threads`: 0 means every core, and more than the cores is
/// capped at the cores (extra threads only contend).
pub fn threads(asked: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if asked > cores {
        eprintln!("--threads {asked}: capped at the {cores} cores of this machine");
    }
    if asked == 0 { cores } else { asked.min(cores) }
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

impl Mode {
    /// The library's request for `images` images sent together.
    pub fn request(self, images: usize) -> PackingRequest {
        match self {
            Self::Batch => PackingRequest::Batch,
            Self::Single => PackingRequest::Single,
            Self::Auto => PackingRequest::Auto { images },
        }
    }
}

/// Memory the operating system reports as available (Linux), if known.
pub fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses plans that cannot fit in this machine's memory.
pub fn check_memory(c: &CompiledModel) -> Result<(), CliError> {
    check_memory_for(c, c.default_lowering())
}

/// [`check_memory`] with single-image weights encoded as `lowering` says.
pub fn check_memory_for(c: &CompiledModel, lowering: Lowering) -> Result<(), CliError> {
    let need = c.memory_estimate_for(lowering);
    if let Some(have) = available_memory()
        && need.bytes > have
    {
        return Err(CliError::Refused(format!(
            "'{}' needs about {} of {} at once, more than the {} available: use a machine with more memory{}",
            c.name(),
            human_bytes(need.bytes),
            need.what,
            human_bytes(have),
            if c.plan().kind() == PackingKind::Batch {
                " or a smaller ring degree (--log-n)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// `hecnn compile`.
#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Output file (default: the model's name with `.hecnn`).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Also write the client spec (parameters, layouts, key requirements; no weights) to
    /// this file: all a client needs to make keys, encrypt and decrypt.
    #[arg(long)]
    client_spec: Option<PathBuf>,
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
    /// Scheme: `ckks`, or `bfv` (the model quantized to integers and run exactly in batch
    /// packing; writes a BFV plan, default name MODEL.bfv.hecnn).
    #[arg(long, value_enum, default_value_t = crate::eval_cmd::SchemeArg::Ckks)]
    scheme: crate::eval_cmd::SchemeArg,
    /// `--scheme bfv`: bits of the quantized input pixels.
    #[arg(long, default_value_t = 4)]
    input_bits: u32,
    /// `--scheme bfv`: bits of the quantized weights (per output neuron).
    #[arg(long, default_value_t = 6)]
    weight_bits: u32,
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
    if a.scheme == crate::eval_cmd::SchemeArg::Bfv {
        if a.calibrate.is_some() || a.client_spec.is_some() || a.mode != Mode::Batch {
            return Err(CliError::Usage(
                "--scheme bfv plans batch packing from worst-case bounds: --calibrate, \
                 --client-spec and --mode belong to CKKS"
                    .into(),
            ));
        }
        let spec = hecnn_nn::quant::QuantSpec {
            input_bits: a.input_bits,
            weight_bits: a.weight_bits,
            ..Default::default()
        };
        return crate::bfv_cmds::compile(&a.model, a.out.as_deref(), &a.opts, &spec);
    }
    let c = a.opts.plan(&a.model, a.mode.request(a.images))?;
    if let Some(why) = c.choice() {
        println!("{why}");
    }
    if let Some(spec) = &a.calibrate {
        let ds = cnn::load_data(spec)?;
        check_shape(&c, &ds)?;
        let n = a.calibrate_count.min(ds.len());
        let images: Vec<_> = (0..n).map(|i| ds.image(i)).collect();
        let step = crate::progress::step(format!("simulating {n} images of {spec}"));
        let cal = c.calibrate(&images)?;
        drop(step);
        println!(
            "simulation on {} images of {spec}: {}below {} by {:.1} bits{}",
            cal.images,
            cal.largest
                .map(|m| format!("largest value in any slot {m:.2}, "))
                .unwrap_or_default(),
            cal.bound,
            cal.headroom_bits,
            cal.agree
                .map(|k| format!(", predictions as the model's: {k}/{}", cal.images))
                .unwrap_or_default()
        );
        if !cal.diverged.is_empty() {
            let shown: Vec<String> = cal
                .diverged
                .iter()
                .take(12)
                .map(|(k, m)| format!("{k} ({m:.1e})"))
                .collect();
            println!(
                "the cleartext model diverges on {} of the {} images (values above 2^{:.0} or \
                 not finite), left out of the figures here: {}{}; encrypted results on such \
                 inputs are meaningless",
                cal.diverged.len(),
                cal.images,
                (f64::from(1u32 << hecnn_nn::single::VALUE_BOUND_BITS)
                    * hecnn_nn::compile::DIVERGENCE_FACTOR)
                    .log2(),
                shown.join(", "),
                if cal.diverged.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            );
        }
        if let Some((largest, bound)) = cal.refreshed {
            let widest = hecnn_nn::compile::params::REFRESH_BOUND_BITS;
            let suggest = (2.0 * largest).max(1.0).log2().ceil();
            let advice = if suggest <= f64::from(widest) {
                format!("--refresh-bound {suggest} keeps a factor of two and the most precision")
            } else {
                format!(
                    "the widest bound, --refresh-bound {widest}, keeps less than a factor of two"
                )
            };
            println!("refreshed values: largest {largest:.2}, bound {bound} ({advice})");
            if largest > bound {
                return Err(CliError::Refused(format!(
                    "a refreshed value reaches {largest:.2}, above the bound {bound}: compile with \
                     --refresh-bound {}",
                    suggest.min(f64::from(widest))
                )));
            }
        }
        if !cal.fits() {
            return Err(CliError::Refused(format!(
                "values come within {:.1} bits of {} (at least {} needed): rescale the model's weights, or use the other packing",
                cal.headroom_bits, cal.bound, cal.min_headroom_bits
            )));
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
    if let Some(path) = &a.client_spec {
        cnn::write_file(path, &c.client_spec().to_bytes()?)?;
    }
    println!("{}", c.report()?);
    // The estimates are advice: a failure to make them does not fail the compilation.
    if let Err(e) = print_estimate(&c, &a.opts) {
        eprintln!("warning: no time estimate: {e}");
    }
    println!(
        "wrote {} ({} packing: keygen, encrypt, run, decrypt and eval follow it)",
        out.display(),
        c.packing()
    );
    if let Some(path) = &a.client_spec {
        println!("wrote the client spec to {}", path.display());
    }
    Ok(())
}

/// Prints the estimated memory, and the estimated time of one image (single-image packing)
/// on this machine, its unit costs measured now with the threads the other commands would
/// use.
fn print_estimate(c: &CompiledModel, opts: &ModelOpts) -> Result<(), CliError> {
    let memory = c.memory_estimate();
    println!(
        "estimated memory: {} ({})",
        human_bytes(memory.bytes),
        memory.what
    );
    if c.packing() != PackingKind::Single {
        return Ok(());
    }
    let be = opts.backend()?;
    let step = crate::progress::step("measuring this machine's unit costs for the estimate");
    let units = UnitCosts::calibrate(&be, c.params())?;
    drop(step);
    if let Some(e) = c.time_estimate(&units)? {
        println!(
            "estimated time per image on this machine ({} threads): {:.1} s: linear {:.1} s (encoding weights {:.1} s), activations {:.1} s, {} bootstrap(s) × {:.1} s; {:.0} key switches (measured now: limb NTT {:.1} µs, limb product {:.1} µs, encoding {:.2} ms + {:.2} ms per limb)",
            be.threads(),
            e.total_s(),
            e.linear_s,
            e.encode_s,
            e.activation_s,
            e.bootstraps,
            e.bootstrap_s,
            e.key_switches,
            units.ntt_s * 1e6,
            units.product_s * 1e6,
            units.encode_s * 1e3,
            units.encode_limb_s * 1e3,
        );
    }
    Ok(())
}

/// The client spec of `path`: a client-spec file, a compiled model or an ONNX file.
fn load_spec(path: &Path, opts: &ModelOpts) -> Result<ClientSpec, CliError> {
    let bytes = cnn::read_file(path)?;
    if ClientSpec::is_spec(&bytes) {
        let spec = ClientSpec::from_bytes(&bytes)?;
        cnn::refuse_unchecked(path, spec.params())?;
        opts.check_compiled(path, spec.params())?;
        return Ok(spec);
    }
    let batch = opts.compile_options(PackingRequest::Batch)?;
    let c = cnn::model_from(path, &bytes, &batch)?;
    if CompiledModel::is_compiled(&bytes) {
        opts.check_compiled(path, c.params())?;
    }
    Ok(c.client_spec())
}

/// `hecnn keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Compiled model (`.hecnn`), its client spec, or an ONNX model.
    model: PathBuf,
    /// Directory for secret.key, public.key and eval.keys.
    #[arg(long, default_value = "keys")]
    out_dir: PathBuf,
    /// Replace an existing secret.key (whatever it encrypted becomes unreadable).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    opts: ModelOpts,
}

/// `hecnn keygen`: the client's secret, public and evaluation keys, exactly those the
/// model's plan needs.
///
/// # Errors
/// I/O, key generation.
pub fn keygen(a: &KeygenArgs) -> Result<(), CliError> {
    if crate::bfv_cmds::is_plan(&a.model) {
        return crate::bfv_cmds::keygen(&a.model, &a.out_dir, a.force, &a.opts);
    }
    let paths = KeyPaths::in_dir(&a.out_dir);
    cnn::refuse_secret_overwrite(&paths.secret, a.force)?;
    let spec = load_spec(&a.model, &a.opts)?;
    let bootstraps = spec.encapsulation_weight().is_some();
    let client = Client::new(spec, a.opts.backend()?)?;
    let t = Instant::now();
    // A bootstrapping plan's keys are many GB expanded; they are written seed-compressed
    // either way, so they are made compact and never exist expanded all at once.
    let storage = if bootstraps {
        KeyStorage::Compact
    } else {
        KeyStorage::Expanded
    };
    let step = crate::progress::step("generating keys");
    let keys = client.keygen_with(&mut Prng::from_entropy()?, storage)?;
    drop(step);
    let writing = crate::progress::step(format!("writing keys to {}", a.out_dir.display()));
    let be = client.backend();
    std::fs::create_dir_all(&a.out_dir).map_err(|e| hecnn_nn::NnError::io(&a.out_dir, e))?;
    let sk_bytes = keys.secret.to_secret_bytes();
    cnn::write_secret(&paths.secret, &sk_bytes)?;
    let pk_bytes = keys.public.to_bytes(be)?;
    cnn::write_file(&paths.public, &pk_bytes)?;
    let ev_bytes = keys.evaluation.to_bytes(be)?;
    cnn::write_file(&paths.eval, &ev_bytes)?;
    let bootstrap = match &keys.encapsulation {
        Some(encaps) => {
            let bytes = encaps.to_bytes(be)?;
            cnn::write_file(&paths.bootstrap, &bytes)?;
            format!(", bootstrap.keys {}", human_bytes(bytes.len()))
        }
        None => {
            // Keys of another plan must not be mistaken for this one's.
            match std::fs::remove_file(&paths.bootstrap) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(hecnn_nn::NnError::io(&paths.bootstrap, e).into());
                }
                _ => String::new(),
            }
        }
    };
    drop(writing);
    println!(
        "keys in {} ({:.0} ms): secret.key {} (keep it private), public.key {}, eval.keys {}{bootstrap}",
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
    /// Compiled model (`.hecnn`), its client spec, or an ONNX model.
    model: PathBuf,
    /// Public key file.
    #[arg(long, default_value = "keys/public.key")]
    public_key: PathBuf,
    /// Secret key file (a BFV plan's inputs are encrypted with the secret key).
    #[arg(long, default_value = "keys/secret.key")]
    secret_key: PathBuf,
    /// Data: mnist, cifar10, sample:mnist, sample:cifar10, idx:IMAGES,LABELS, cifar-bin:FILE.
    #[arg(long, default_value = "sample:mnist")]
    data: String,
    /// First image.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Number of images (default: a full batch or what the data set has).
    #[arg(long)]
    count: Option<usize>,
    /// Output file.
    #[arg(short, long, default_value = "inputs.ct")]
    out: PathBuf,
    #[command(flatten)]
    opts: ModelOpts,
}

/// `hecnn encrypt`: the client encrypts images with the public key, in the model's packing.
///
/// # Errors
/// Keys or data that do not fit the model, I/O.
pub fn encrypt(a: &EncryptArgs) -> Result<(), CliError> {
    if crate::bfv_cmds::is_plan(&a.model) {
        let sel = crate::bfv_cmds::Selection {
            data: &a.data,
            offset: a.offset,
            count: a.count,
        };
        return crate::bfv_cmds::encrypt(&a.model, &a.secret_key, &sel, &a.out, &a.opts);
    }
    let start = Instant::now();
    let spec = load_spec(&a.model, &a.opts)?;
    let client = Client::new(spec, a.opts.backend()?)?;
    let spec = client.spec();
    let be = client.backend();
    let pk = PublicKey::from_bytes(be, spec.params().rlwe(), &cnn::read_file(&a.public_key)?)?;
    let ds = select(
        &cnn::load_data(&a.data)?,
        a.offset,
        a.count,
        spec.max_images(),
    )?;
    let images: Vec<_> = (0..ds.len()).map(|i| ds.image(i)).collect();
    let t = Instant::now();
    let inputs = client.encrypt(&pk, &images, &mut Prng::from_entropy()?)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes = inputs.to_bytes(be, spec.params())?;
    cnn::write_file(&a.out, &bytes)?;
    println!(
        "encrypted {} images into {} ciphertexts in {ms:.0} ms: {} ({}); {} in all, reading \
         and writing included",
        ds.len(),
        inputs.ciphertexts().len(),
        a.out.display(),
        human_bytes(bytes.len()),
        human_secs(start.elapsed().as_secs_f64())
    );
    Ok(())
}

/// Seconds for a person: `850 ms`, `37.5 s`, `2 min 05 s`.
pub fn human_secs(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1e3)
    } else if secs < 120.0 {
        format!("{secs:.1} s")
    } else {
        let whole = secs.round() as u64;
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
}

/// `hecnn run`: the server side. It holds evaluation keys only.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Compiled model (`.hecnn`) or ONNX model.
    model: PathBuf,
    /// Evaluation keys file.
    #[arg(long, default_value = "keys/eval.keys")]
    eval_keys: PathBuf,
    /// Bootstrapping's encapsulation keys (read only for a plan that bootstraps).
    #[arg(long, default_value = "keys/bootstrap.keys")]
    bootstrap_keys: PathBuf,
    /// Encrypted inputs.
    #[arg(long = "in", default_value = "inputs.ct")]
    input: PathBuf,
    /// Encrypted outputs.
    #[arg(short, long, default_value = "outputs.ct")]
    out: PathBuf,
    #[command(flatten)]
    opts: ModelOpts,
}

fn progress_bar(total: usize, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{msg:>12}} [{{bar:40}}] {{pos}}/{{len}} {unit} {{elapsed_precise}}"
    )) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message("evaluating");
    pb
}

/// `hecnn run`: the server evaluates the model on encrypted inputs with evaluation keys
/// only, in the model's packing.
///
/// # Errors
/// Keys or ciphertexts that do not fit the model or each other, memory, I/O.
pub fn run(a: &RunArgs) -> Result<(), CliError> {
    if crate::bfv_cmds::is_plan(&a.model) {
        return crate::bfv_cmds::run(&a.model, &a.eval_keys, &a.input, &a.out, &a.opts);
    }
    let start = Instant::now();
    let c = a.opts.load(&a.model)?;
    check_memory(&c)?;
    let be = a.opts.backend()?;
    let plan = c.server_plan();
    // The keys the plan asks for and no more, held as the plan holds them (compact when it
    // bootstraps).
    let params = c.params().rlwe();
    let max_keys = plan.key_requirements().key_count(params);
    let limit = max_keys.saturating_mul(params.switching_key_bytes() + 4096);
    let setup = crate::progress::step("loading the keys and setting up the server");
    let evk = EvaluationKeys::from_bytes_with(
        &be,
        params,
        &hecnn_nn::compile::read_bounded(&a.eval_keys, limit as u64)?,
        max_keys,
        plan.key_storage(),
    )?;
    let inputs = EncryptedImages::from_bytes(
        &be,
        plan.client_spec(),
        ImagesKind::Inputs,
        &cnn::read_file(&a.input)?,
    )?;
    let images = inputs.images();
    let server = if plan.refresh().is_some() {
        // Both keys and the envelope at most: a larger file is refused before it is read.
        let limit = params.switching_key_bytes().saturating_mul(2) + 8192;
        let bytes = hecnn_nn::compile::read_bounded(&a.bootstrap_keys, limit as u64)?;
        let encaps = EncapsulationKeys::from_bytes_with(&be, params, &bytes, plan.key_storage())?;
        Server::bootstrapping(plan, evk, encaps, be.clone())?
    } else {
        Server::new(plan, evk, be.clone())?
    };
    drop(setup);
    let t = Instant::now();
    let (total, unit) = match c.plan() {
        hecnn_nn::compile::PackedPlan::Batch(p) => (p.model().nodes.len(), "layers"),
        hecnn_nn::compile::PackedPlan::Single(_) => (images, "images"),
    };
    let pb = progress_bar(total, unit);
    let out = server.run(inputs, |done, _| pb.set_position(done as u64));
    pb.finish_and_clear();
    let out = out?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = out.to_bytes(&be, c.params())?;
    cnn::write_file(&a.out, &bytes)?;
    println!(
        "evaluated {images} images in {secs:.2} s ({:.2} ms per image) on {}: {} ({}); {} in \
         all, reading the keys and inputs and writing the outputs included",
        secs * 1e3 / images.max(1) as f64,
        hecnn_ring::Backend::name(&be),
        a.out.display(),
        human_bytes(bytes.len()),
        human_secs(start.elapsed().as_secs_f64())
    );
    Ok(())
}

/// `hecnn decrypt`.
#[derive(Args, Debug)]
pub struct DecryptArgs {
    /// Compiled model (`.hecnn`), its client spec, or an ONNX model.
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
    if crate::bfv_cmds::is_plan(&a.model) {
        let data = a.data.as_deref().map(|d| (d, a.offset));
        return crate::bfv_cmds::decrypt(&a.model, &a.secret_key, &a.input, data, &a.opts);
    }
    let spec = load_spec(&a.model, &a.opts)?;
    let client = Client::new(spec, a.opts.backend()?)?;
    let spec = client.spec();
    let sk = SecretKey::from_secret_bytes(spec.params().rlwe(), &cnn::read_file(&a.secret_key)?)?;
    let out = EncryptedImages::from_bytes(
        client.backend(),
        spec,
        ImagesKind::Outputs,
        &cnn::read_file(&a.input)?,
    )?;
    let images = out.images();
    let logits = client.decrypt(&sk, &out)?;
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

/// Images `offset..offset + count` of `ds` (count: to the end), at most `cap`.
pub fn select(
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
    if count == Some(0) {
        return Err(CliError::Usage(
            "--count 0 selects no image: give at least 1, or leave it out for all".into(),
        ));
    }
    let count = count.unwrap_or(ds.len() - offset).min(ds.len() - offset);
    if count > cap {
        return Err(CliError::Usage(format!(
            "{count} images exceed the {cap} one file holds: choose fewer with --count and --offset, or run them all with hecnn eval"
        )));
    }
    Ok(ds.slice(offset, offset + count))
}

/// Fails unless the data's images have the model's input shape.
pub fn check_shape(c: &CompiledModel, ds: &Dataset) -> Result<(), CliError> {
    if ds.shape() != c.model().input_shape {
        return Err(CliError::Usage(format!(
            "the data has images of shape {:?}, the model takes {:?}",
            ds.shape(),
            c.model().input_shape
        )));
    }
    Ok(())
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss() -> Option<usize> {
    proc_status_bytes("VmHWM:")
}

/// Resident memory of this process now, in bytes (Linux `VmRSS`), if known.
pub fn current_rss() -> Option<usize> {
    proc_status_bytes("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn proc_status_bytes(field: &str) -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb = line.trim_start_matches(field).trim().trim_end_matches("kB");
    kb.trim().parse::<usize>().ok().map(|kb| kb * 1024)
}

/// Peak resident memory of this process (Linux), for reports.
pub fn peak_memory() -> String {
    peak_rss().map_or_else(|| "n/a".into(), human_bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn seconds_read_as_people_write_them() {
        assert_eq!(super::human_secs(0.8504), "850 ms");
        assert_eq!(super::human_secs(37.52), "37.5 s");
        assert_eq!(super::human_secs(125.4), "2 min 05 s");
    }
}
