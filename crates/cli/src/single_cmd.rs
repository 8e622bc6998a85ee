//! `hecnn eval --mode single`: one encrypted image at a time, densely packed.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hecnn_ckks::{Ciphertext, CkksError, CkksParams, Decryptor, Evaluator, Plaintext, encrypt_pk};
use hecnn_nn::{
    NnError,
    batch::OutputMap,
    data::Dataset,
    exec,
    single::{self, SinglePlan},
};
use hecnn_ring::{Backend, CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey, SecurityLevel, security};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    CliError,
    agreement_record::{AgreementRecord, ImageOutcome},
    cnn::Compiled,
    cnn_cmds::peak_memory,
    stats::{Agreement, human_bytes},
};

/// The single-image parameters and plan for a compiled model: the smallest ring degree
/// (2^13 … 2^16) whose parameters for the model's depth pass the security check at `level`
/// (at the largest scale that degree allows, [`single::parameters`]) and whose slots hold
/// the model's layouts.
///
/// # Errors
/// Models single-image mode cannot run, no secure parameters, no degree whose slots fit.
pub fn plan(c: &Compiled, level: SecurityLevel) -> Result<(Arc<CkksParams>, SinglePlan), CliError> {
    let depth = single::depth(c.plan.model())?;
    let mut last = None;
    for log_n in 13..=16u32 {
        let Some((lit, log_scale)) = single::parameters(depth, log_n, level) else {
            continue;
        };
        let params = match CkksParams::from_literal(&lit, log_scale) {
            Ok(p) => p,
            Err(e) => {
                last = Some(e.to_string());
                continue;
            }
        };
        // A larger degree has more slots: a layout that does not fit may fit there. Any
        // other refusal does not depend on the degree.
        match SinglePlan::new(c.plan.model(), params.max_slots()) {
            Ok(plan) => return Ok((Arc::new(params), plan)),
            Err(e @ NnError::TooFewSlots { .. }) => last = Some(format!("at N = 2^{log_n}: {e}")),
            Err(e) => return Err(e.into()),
        }
    }
    Err(CliError::Usage(format!(
        "single-image mode: no ring degree from 2^13 to 2^16 runs {depth} levels at this security level{}",
        last.map(|e| format!(" ({e})")).unwrap_or_default()
    )))
}

/// Refuses a plan whose keys and encoded diagonals cannot fit in this machine's memory.
///
/// # Errors
/// [`CliError::Usage`] with the sizes, when the operating system reports less available.
pub fn check_memory(c: &Compiled, params: &CkksParams, plan: &SinglePlan) -> Result<(), CliError> {
    let r = params.rlwe();
    let rotations = plan.rotations().len();
    let diagonals: usize = plan.layers().iter().map(|l| l.diagonals).sum();
    // Expanded switching keys (twice their seed-compressed size) and the diagonal plaintexts.
    let keys = (rotations + 1) * 2 * r.switching_key_bytes();
    let need = keys + diagonals * (r.max_level() + 1) * r.n() * 8;
    if let Some(have) = crate::cnn_cmds::available_memory()
        && need > have
    {
        return Err(CliError::Usage(format!(
            "single-image mode for '{}' needs about {} of keys and encoded diagonals ({rotations} rotation keys, {diagonals} diagonals at N = 2^{}), more than the {} available",
            c.name,
            human_bytes(need),
            r.log_n(),
            human_bytes(have),
        )));
    }
    Ok(())
}

/// `hecnn compile --calibrate` for single-image packing: the largest slot value over the
/// images of `ds` ([`SinglePlan::max_slot_magnitude`]) against the parameters' bound
/// `2^`[`single::VALUE_BOUND_BITS`]. No key is involved.
///
/// # Errors
/// No images; less than a bit of headroom below the bound the parameters are designed for
/// (decrypted outputs beyond it wrap around the base prime).
pub fn calibrate(plan: &SinglePlan, ds: &Dataset, spec: &str) -> Result<(), CliError> {
    if ds.is_empty() {
        return Err(CliError::Usage(format!(
            "--calibrate {spec}: no images to calibrate on"
        )));
    }
    let mut max = 0.0f64;
    for i in 0..ds.len() {
        max = max.max(plan.max_slot_magnitude(&ds.image(i))?);
    }
    let limit = f64::from(1u32 << single::VALUE_BOUND_BITS);
    let headroom = (limit / max).log2();
    println!(
        "simulation on {} images of {spec}: largest value in any slot {max:.2}, below 2^{} by {headroom:.1} bits",
        ds.len(),
        single::VALUE_BOUND_BITS
    );
    if headroom < 1.0 {
        return Err(CliError::Usage(format!(
            "values reach {max:.1}, within {headroom:.1} bits of 2^{}, the largest magnitude single-image parameters are designed for (outputs beyond it wrap around the base prime): rescale the model's weights or use batch packing",
            single::VALUE_BOUND_BITS
        )));
    }
    Ok(())
}

/// `hecnn run` for single-image packing: evaluates each image's ciphertexts in turn (the
/// transforms encoded once) and returns every image's outputs in order, with the output map.
///
/// # Errors
/// A ciphertext count that is not `images` times the plan's input, evaluation errors.
pub fn run_images(
    plan: &SinglePlan,
    eval: &Evaluator<CpuBackend>,
    be: &CpuBackend,
    images: usize,
    cts: Vec<Ciphertext<CpuBackend>>,
) -> Result<(Vec<Ciphertext<CpuBackend>>, OutputMap), CliError> {
    let per = plan.input_cts();
    if images.checked_mul(per) != Some(cts.len()) {
        return Err(CliError::Usage(format!(
            "{} input ciphertexts for {images} images: the single-image plan takes {per} per image",
            cts.len()
        )));
    }
    let top = cts
        .first()
        .map_or(eval.params().max_level(), Ciphertext::level);
    let encoded = plan.encode(eval, top)?;
    let pb = ProgressBar::new(images as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} images {elapsed_precise}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message("evaluating");
    let mut out = Vec::with_capacity(images.saturating_mul(plan.output_cts()));
    let mut map = OutputMap { a: 1.0, gamma: 0.0 };
    let mut cts = cts.into_iter();
    for _ in 0..images {
        let image: Vec<_> = cts.by_ref().take(per).collect();
        let (o, m) = be.install(|| plan.run(eval, &encoded, image))?;
        out.extend(o);
        map = m;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok((out, map))
}

/// `hecnn decrypt` for single-image packing: every image's logits from its output
/// ciphertexts.
///
/// # Errors
/// A ciphertext count that is not `images` times the plan's output, decryption errors.
pub fn decrypt_images(
    plan: &SinglePlan,
    eval: &Evaluator<CpuBackend>,
    cts: &[Ciphertext<CpuBackend>],
    map: OutputMap,
    images: usize,
    mut decrypt: impl FnMut(&Ciphertext<CpuBackend>) -> Result<Plaintext<CpuBackend>, CkksError>,
) -> Result<Vec<Vec<f64>>, CliError> {
    let per = plan.output_cts();
    if images.checked_mul(per) != Some(cts.len()) {
        return Err(CliError::Usage(format!(
            "{} output ciphertexts for {images} images: the single-image plan produces {per} per image",
            cts.len()
        )));
    }
    cts.chunks(per.max(1))
        .map(|image| Ok(plan.decrypt_output(eval, image, map, &mut decrypt)?))
        .collect()
}

/// A report of the single-image plan: parameters, every linear stage's layout and cost, and
/// the rotation keys (count and size) before any key is generated.
pub fn describe(c: &Compiled, params: &CkksParams, plan: &SinglePlan) -> String {
    let r = params.rlwe();
    let rotations = plan.rotations();
    let mut out = format!(
        "model '{}': {} nodes, single-image packing: one image in {} ciphertext(s) of {} slots, depth {}\n",
        c.name,
        plan.model().nodes.len(),
        plan.input_cts(),
        plan.slots(),
        plan.depth(),
    );
    for l in plan.layers() {
        out += &format!(
            "  {}: {} → {} ciphertext(s), {}; {} plaintext products, rotations {} hoisted + {} + {} sums\n",
            l.name,
            l.cts.0,
            l.cts.1,
            l.layout,
            l.diagonals,
            l.rotations.0,
            l.rotations.1,
            l.rotations.2
        );
    }
    out += &format!(
        "parameters: N = 2^{}, log QP = {:.1}, {} levels, scale 2^{}, dnum {}, security {} (checked)\n\
         keys: relinearization + {} rotations, {}",
        r.log_n(),
        r.log_qp(),
        r.max_level(),
        params.default_scale().log2(),
        r.dnum(),
        security::achieved_level(r.log_n(), r.log_qp()).map_or("none".into(), |l| l.to_string()),
        rotations.len(),
        human_bytes((rotations.len() + 1) * r.switching_key_bytes()),
    );
    out
}

/// How a single-image evaluation is run and reported.
pub struct SingleRun<'a> {
    /// The data set's name, for the report and the record's header.
    pub data: &'a str,
    /// The model file, whose bytes the record's header pins by a digest.
    pub model: &'a Path,
    /// Position of the first image of the selection in the whole data set.
    pub offset: usize,
    /// The resumable record to append to ([`AgreementRecord`]).
    pub record: Option<&'a Path>,
    /// Worker threads.
    pub threads: usize,
}

/// Encrypts, evaluates and decrypts every image of `ds` on its own; compares with the
/// cleartext model. With a record, images already in it are skipped, each new outcome is
/// appended as soon as it is known, and the summary covers the whole record.
pub fn eval(
    c: &Compiled,
    params: &Arc<CkksParams>,
    plan: &SinglePlan,
    ds: &Dataset,
    run: &SingleRun<'_>,
) -> Result<(), CliError> {
    let (data, threads) = (run.data, run.threads);
    let r = params.rlwe();
    let diagonals: usize = plan.layers().iter().map(|l| l.diagonals).sum();
    let mut record = run
        .record
        .map(|path| {
            let digest = std::fs::read(run.model)
                .map(|b| blake3::hash(&b).to_hex()[..16].to_string())
                .map_err(|e| CliError::Usage(format!("{}: {e}", run.model.display())))?;
            let header = format!(
                "model={} blake3={digest} data={data} mode=single log_n={} log_qp={:.1} levels={} scale_bits={} diagonals={diagonals}",
                c.name,
                r.log_n(),
                r.log_qp(),
                r.max_level(),
                params.default_scale().log2(),
            );
            AgreementRecord::open(path, &header)
        })
        .transpose()?;
    let done = record
        .as_ref()
        .map(AgreementRecord::done)
        .unwrap_or_default();
    let todo: Vec<usize> = (0..ds.len())
        .filter(|i| !done.contains(&(run.offset + i)))
        .collect();
    if let Some(rec) = &record {
        println!(
            "record {}: {} images already recorded, {} of the {} selected still to run",
            rec.path().display(),
            done.len(),
            todo.len(),
            ds.len()
        );
        if todo.is_empty() {
            print_record(rec);
            return Ok(());
        }
    }
    let rotations = plan.rotations();
    let be = CpuBackend::new(threads)?;
    println!("hecnn: encrypted CNN inference, single-image mode");
    println!("{}", describe(c, params, plan));
    println!("data: {data} ({} images), backend {}", ds.len(), be.name());
    check_memory(c, params, plan)?;

    let t = Instant::now();
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(r, &mut rng)?;
    let pk = sk.public_key(&be, &mut rng)?;
    let evk = sk.evaluation_keys(
        &be,
        &KeyRequirements::relin().with_rotations(rotations.iter().copied()),
        &mut rng,
    )?;
    let key_bytes = evk.size_bytes();
    let keygen_s = t.elapsed().as_secs_f64();
    let eval = Evaluator::new(Arc::clone(params), Arc::new(evk), be.clone())?;
    let dec = Decryptor::new(&sk, &be)?;
    let t = Instant::now();
    let encoded = plan.encode(&eval, params.max_level())?;
    let encode_s = t.elapsed().as_secs_f64();

    let pb = ProgressBar::new(todo.len() as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {pos}/{len} images {elapsed_precise} (eta {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message("classifying");
    let (mut enc_s, mut run_s, mut dec_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut agreement = Agreement::default();
    for &i in &todo {
        let image = ds.image(i);
        let t = Instant::now();
        let cts = plan.encrypt_image(&eval, &image, params.max_level(), |pt| {
            encrypt_pk(&pk, &be, pt, &mut rng)
        })?;
        enc_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        // Inside the backend's pool, its many small parallel sections start without a
        // cross-thread handoff each (at N = 2^13 an operation takes tens of microseconds).
        let (out, map) = be.install(|| plan.run(&eval, &encoded, cts))?;
        run_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let got = plan.decrypt_output(&eval, &out, map, |ct| dec.decrypt(ct))?;
        dec_s.push(t.elapsed().as_secs_f64());
        let want = exec::run(plan.model(), &image)?;
        let outcome = ImageOutcome::new(
            run.offset + i,
            usize::from(ds.labels()[i]),
            &got,
            want.data(),
        );
        agreement.add(&outcome);
        if let Some(rec) = &mut record {
            rec.push(outcome)?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    println!(
        "\nresults over the {} images of this run, one at a time:",
        todo.len()
    );
    agreement.print();
    if let Some(rec) = &record {
        print_record(rec);
    }
    println!("timings ({}), per image, median (mean):", be.name());
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied().unwrap_or(0.0);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        format!("{:.1} ms ({:.1} ms)", median * 1e3, mean * 1e3)
    };
    let mut total: Vec<f64> = (0..enc_s.len())
        .map(|i| enc_s[i] + run_s[i] + dec_s[i])
        .collect();
    println!("  encrypt  {}", stat(&mut enc_s));
    println!("  evaluate {}", stat(&mut run_s));
    println!("  decrypt  {}", stat(&mut dec_s));
    println!("  end to end {}", stat(&mut total));
    println!(
        "setup: keygen {keygen_s:.2} s, evaluation keys {} (relinearization + {} rotations), transforms encoded in {encode_s:.2} s; peak memory {}",
        human_bytes(key_bytes),
        rotations.len(),
        peak_memory()
    );
    Ok(())
}

/// Prints the summary over a whole record and its disagreements with their margins.
fn print_record(rec: &AgreementRecord) {
    let agreement = rec.summary();
    println!("results over the whole record:");
    agreement.print();
    for o in rec.disagreements() {
        println!(
            "  image {}: cleartext {} (margin {:.3}), encrypted {}, max |Δ logit| {:.3}",
            o.index, o.cleartext, o.cleartext_margin, o.encrypted, o.max_abs_diff
        );
    }
}
