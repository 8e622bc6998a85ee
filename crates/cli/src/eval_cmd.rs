//! `hecnn eval` and the CNN demo: keys, encryption, evaluation and decryption of a data set
//! in one process through the library's client and server, compared image by image with
//! the cleartext model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use hecnn_nn::{
    compile::{
        Client, CompiledModel, PackedPlan, PackingKind, PackingRequest, Server, Simulator,
        human_bytes,
    },
    data::Dataset,
    exec::{self, argmax},
    single::Lowering,
};
use hecnn_ring::{Backend, Prng};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    CliError,
    agreement_record::{AgreementRecord, ImageOutcome},
    cnn,
    cnn_cmds::{Mode, ModelOpts, check_memory, check_shape, peak_memory, select},
    stats::Agreement,
};

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
    /// Single-image packing: run the compiled plan on the packed cleartext scheme (its
    /// levels, scales, diagonals, rotations and pending maps, without keys or noise)
    /// instead of encrypting, and compare with the model; with `--record`, a record of its
    /// own.
    #[arg(long, conflicts_with = "cleartext")]
    simulate: bool,
    /// Packing: `batch` (one image per slot, thousands per evaluation), `single` (one image
    /// densely packed, classified on its own) or `auto` (picked for the number of images).
    /// Default: the compiled model's packing (batch for an `.onnx` file).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Single-image packing: encode the weights (diagonals) `once` before the first image,
    /// or `on-the-fly`, one layer at a time as each image reaches it (less memory, more
    /// time). Default: on the fly for a plan that bootstraps, once otherwise.
    #[arg(long, value_enum)]
    weights: Option<Weights>,
    /// Scheme: `ckks` (approximate real arithmetic, the model as trained) or `bfv` (the
    /// model quantized to integers and run exactly, batch packing; every decrypted output
    /// is checked against the integer executor).
    #[arg(long, value_enum, default_value_t = SchemeArg::Ckks)]
    scheme: SchemeArg,
    /// `--scheme bfv`: bits of the quantized input pixels.
    #[arg(long, default_value_t = 4)]
    input_bits: u32,
    /// `--scheme bfv`: bits of the quantized weights (per output neuron).
    #[arg(long, default_value_t = 6)]
    weight_bits: u32,
    #[command(flatten)]
    opts: ModelOpts,
}

/// `--scheme`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemeArg {
    /// CKKS.
    Ckks,
    /// BFV, quantized.
    Bfv,
}

/// `--weights`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// Encoded once, every layer held.
    Once,
    /// Encoded per image, one layer at a time.
    OnTheFly,
}

/// `hecnn eval`: keys, encryption, evaluation and decryption of a whole data set in one
/// process, compared with the cleartext model (or, with `--cleartext`, the cleartext model
/// alone).
///
/// # Errors
/// Models or data that do not fit each other, memory, I/O.
pub fn eval(a: &EvalArgs) -> Result<(), CliError> {
    let model = cnn::model_path(&a.model)?;
    let all = cnn::load_data(&a.data)?;
    let ds = select(&all, a.offset, a.count, usize::MAX)?;
    if a.record.is_some() && (a.cleartext || a.mode == Some(Mode::Batch)) {
        return Err(CliError::Usage(
            "--record keeps image-by-image outcomes of --mode single (or auto choosing it)".into(),
        ));
    }
    if a.scheme == SchemeArg::Bfv {
        if a.cleartext || a.simulate || a.record.is_some() || a.weights.is_some() {
            return Err(CliError::Usage(
                "--scheme bfv runs encrypted batches: --cleartext, --simulate, --record and \
                 --weights belong to CKKS"
                    .into(),
            ));
        }
        if matches!(a.mode, Some(Mode::Single)) {
            return Err(CliError::Usage(
                "--scheme bfv runs batch packing (one image per slot); --mode single is CKKS's"
                    .into(),
            ));
        }
        let run = crate::eval_bfv::BfvEval {
            data: &a.data,
            input_bits: a.input_bits,
            weight_bits: a.weight_bits,
            verbose: a.verbose,
        };
        return crate::eval_bfv::eval_bfv(&model, &ds, &a.opts, &run);
    }
    if a.cleartext {
        // In the clear the model needs no plan: a model too deep for any packing still runs.
        let m = cnn::load_rewritten(&model, &a.opts.compile_options(PackingRequest::Batch)?)?;
        if ds.shape() != m.input_shape {
            return Err(CliError::Usage(format!(
                "the data has images of shape {:?}, the model takes {:?}",
                ds.shape(),
                m.input_shape
            )));
        }
        let t = Instant::now();
        let correct = (0..ds.len())
            .filter(|&i| {
                exec::run(&m, &ds.image(i))
                    .is_ok_and(|out| argmax(out.data()) == usize::from(ds.labels()[i]))
            })
            .count();
        println!(
            "cleartext accuracy of '{}' on {} ({} images): {:.2}% ({correct}/{}) in {:.1} s",
            m.name,
            a.data,
            ds.len(),
            100.0 * correct as f64 / ds.len().max(1) as f64,
            ds.len(),
            t.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let c = match a.mode {
        None => a.opts.load(&model)?,
        Some(mode) => {
            let c = a.opts.plan(&model, mode.request(ds.len()))?;
            if let Some(why) = c.choice() {
                println!("{why}");
            }
            c
        }
    };
    check_shape(&c, &ds)?;
    match c.packing() {
        PackingKind::Single => {
            let run = SingleRun {
                data: &a.data,
                model: &model,
                offset: a.offset,
                record: a.record.as_deref(),
                simulate: a.simulate,
                lowering: a.weights.map(|w| match w {
                    Weights::Once => Lowering::Eager,
                    Weights::OnTheFly => Lowering::OnTheFly,
                }),
                verbose: a.verbose,
            };
            eval_single(&c, &ds, &run, &a.opts)
        }
        PackingKind::Batch if a.simulate => Err(CliError::Usage(
            "--simulate runs single-image plans; for batch packing, `hecnn compile --calibrate` \
             simulates a batch"
                .into(),
        )),
        PackingKind::Batch if a.record.is_some() => Err(CliError::Usage(
            "batch packing does not keep --record image by image: use --mode single".into(),
        )),
        PackingKind::Batch => eval_batch(&c, &ds, a),
    }
}

fn eval_batch(c: &CompiledModel, ds: &Dataset, a: &EvalArgs) -> Result<(), CliError> {
    check_memory(c)?;
    let params = c.params();
    let be = a.opts.backend()?;
    println!("hecnn: encrypted CNN inference");
    println!("{}", c.report()?);
    println!(
        "data: {} ({} images), backend {}",
        a.data,
        ds.len(),
        be.name()
    );

    // Client: keys.
    let t = Instant::now();
    let mut rng = Prng::from_entropy()?;
    let client = Client::new(c.client_spec(), be.clone())?;
    let step = crate::progress::step("generating keys");
    let keys = client.keygen(&mut rng)?;
    let key_bytes = keys.evaluation.size_bytes();
    let keygen_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(step);
    let server = Server::new(c.server_plan(), keys.evaluation, be.clone())?;

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
        let inputs = client.encrypt(&keys.public, &images, &mut rng)?;
        enc_s += t.elapsed().as_secs_f64();
        if b == 0 {
            ct_bytes = inputs
                .ciphertexts()
                .first()
                .map_or(Ok(0), |ct| ct.to_bytes(&be, params).map(|v| v.len()))?;
        }
        pb.set_message("evaluating");
        let t = Instant::now();
        let mut marks = Vec::new();
        let out = server.run(inputs, |done, _| marks.push((done, Instant::now())))?;
        run_s += t.elapsed().as_secs_f64();
        if a.verbose && b == 0 {
            pb.suspend(|| print_layer_times(c, t, &marks));
        }
        pb.set_message("decrypting");
        let t = Instant::now();
        let logits = client.decrypt(&keys.secret, &out)?;
        dec_s += t.elapsed().as_secs_f64();
        for (i, got) in logits.iter().enumerate() {
            let want = exec::run(c.model(), &images[i])?;
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

/// The time of every streamed chain of the first batch (a layer and the activations and
/// pools after it report once, for all their nodes).
fn print_layer_times(c: &CompiledModel, start: Instant, marks: &[(usize, Instant)]) {
    let (mut prev, mut from) = (start, 1);
    for (done, at) in marks {
        let names: Vec<String> = c.model().nodes[from.min(*done)..*done]
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
        simulate: false,
        mode: None,
        weights: None,
        scheme: SchemeArg::Ckks,
        input_bits: 4,
        weight_bits: 6,
        opts: ModelOpts {
            log_n: None,
            security: None,
            relu_poly: vec![],
            maxpool_as_avgpool: false,
            threads,
            bootstrap: crate::cnn_cmds::Bootstrap::Auto,
            refresh_levels: None,
            refresh_bound: None,
        },
    };
    eval(&args)
}

/// How a single-image evaluation is run and reported.
struct SingleRun<'a> {
    /// The data set's name, for the report and the record's header.
    data: &'a str,
    /// The model file, whose bytes the record's header pins by a digest.
    model: &'a Path,
    /// Position of the first image of the selection in the whole data set.
    offset: usize,
    /// The resumable record to append to ([`AgreementRecord`]).
    record: Option<&'a Path>,
    /// Simulate the plan instead of encrypting.
    simulate: bool,
    /// When the server encodes the weights (`None`: the plan's default).
    lowering: Option<Lowering>,
    /// Print every stage's time for the first image.
    verbose: bool,
}

/// Encrypts, evaluates and decrypts every image of `ds` on its own; compares with the
/// cleartext model. With a record, images already in it are skipped, each new outcome is
/// appended as soon as it is known, and the summary covers the whole record.
fn eval_single(
    c: &CompiledModel,
    ds: &Dataset,
    run: &SingleRun<'_>,
    opts: &ModelOpts,
) -> Result<(), CliError> {
    let PackedPlan::Single(plan) = c.plan() else {
        return Err(CliError::Usage("not a single-image plan".into()));
    };
    let params = c.params();
    let data = run.data;
    let r = params.rlwe();
    let diagonals: usize = plan.layers().iter().map(|l| l.diagonals).sum();
    let mut record = run
        .record
        .map(|path| {
            let digest = std::fs::read(run.model)
                .map(|b| blake3::hash(&b).to_hex()[..16].to_string())
                .map_err(|e| hecnn_nn::NnError::io(run.model, e))?;
            let header = format!(
                "model={} blake3={digest} data={data} mode={} log_n={} log_qp={:.1} levels={} scale_bits={} diagonals={diagonals}",
                c.name(),
                if run.simulate { "single-simulated" } else { "single" },
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
            print_record(
                rec,
                if run.simulate {
                    "simulated"
                } else {
                    "encrypted"
                },
            );
            return Ok(());
        }
    }
    if run.simulate {
        if run.lowering.is_some() {
            return Err(CliError::Usage(
                "--weights chooses how an encrypted run encodes its weights; --simulate encodes them once"
                    .into(),
            ));
        }
        return simulate_single(c, ds, run, opts, &todo, record.as_mut());
    }
    let be = opts.backend()?;
    println!("hecnn: encrypted CNN inference, single-image mode");
    println!("{}", c.report()?);
    println!("data: {data} ({} images), backend {}", ds.len(), be.name());
    let plan = match run.lowering {
        Some(l) => c.server_plan().with_lowering(l),
        None => c.server_plan(),
    };
    let lowering = plan.lowering();
    crate::cnn_cmds::check_memory_for(c, lowering)?;

    let t = Instant::now();
    let mut rng = Prng::from_entropy()?;
    let client = Client::new(c.client_spec(), be.clone())?;
    let plan_storage = plan.key_storage();
    let step = crate::progress::step(format!(
        "generating keys ({} Galois keys)",
        c.key_requirements()
            .galois_elements(c.params().rlwe())
            .len()
    ));
    let keys = client.keygen_with(&mut rng, plan_storage)?;
    drop(step);
    let key_bytes = keys.evaluation.size_bytes();
    let key_memory = keys.evaluation.memory_bytes();
    let rotations = c.key_requirements().rotations.len();
    let keygen_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let step = crate::progress::step("setting up the server (transforms, keys)");
    let server = match keys.encapsulation {
        Some(encaps) => Server::bootstrapping(plan, keys.evaluation, encaps, be.clone())?,
        None => Server::new(plan, keys.evaluation, be.clone())?,
    };
    drop(step);
    let encode_s = t.elapsed().as_secs_f64();

    let pb = image_progress(todo.len(), "classifying");
    let (mut enc_s, mut run_s, mut dec_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut agreement = Agreement::default();
    let mut breakdown = None;
    for &i in &todo {
        let image = ds.image(i);
        let t = Instant::now();
        let inputs = client.encrypt(&keys.public, std::slice::from_ref(&image), &mut rng)?;
        enc_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut stages = Vec::new();
        let out = server.run_profiled(
            inputs,
            |_, _| {},
            |_, time, ops| {
                if breakdown.is_none() {
                    stages.push((time, ops));
                }
            },
        )?;
        run_s.push(t.elapsed().as_secs_f64());
        if breakdown.is_none() {
            breakdown = Some(stages);
        }
        let t = Instant::now();
        let got = client.decrypt(&keys.secret, &out)?;
        dec_s.push(t.elapsed().as_secs_f64());
        compare(
            c,
            ds,
            run,
            i,
            &image,
            got.first(),
            &mut agreement,
            record.as_mut(),
        )?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    println!(
        "\nresults over the {} images of this run, one at a time:",
        todo.len()
    );
    agreement.print();
    if let Some(rec) = &record {
        print_record(rec, "encrypted");
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
    if let Some(stages) = &breakdown {
        print_breakdown(stages, run.verbose);
    }
    println!(
        "setup: keygen {keygen_s:.2} s, evaluation keys {} serialized, {} held {} (relinearization + {rotations} rotations), transforms {} in {encode_s:.2} s; peak memory {}",
        human_bytes(key_bytes),
        human_bytes(key_memory),
        match plan_storage {
            hecnn_rlwe::KeyStorage::Expanded => "expanded",
            hecnn_rlwe::KeyStorage::Compact => "compact",
        },
        match lowering {
            Lowering::Eager => "encoded",
            Lowering::OnTheFly => "lowered (diagonals encoded per image)",
        },
        peak_memory()
    );
    Ok(())
}

/// `eval --simulate`: the plan on the packed cleartext scheme against the model, images
/// on every worker thread at once (they share the encoded transforms), outcomes recorded
/// in the order of the images.
fn simulate_single(
    c: &CompiledModel,
    ds: &Dataset,
    run: &SingleRun<'_>,
    opts: &ModelOpts,
    todo: &[usize],
    mut record: Option<&mut AgreementRecord>,
) -> Result<(), CliError> {
    println!("hecnn: the single-image plan simulated without keys (packed cleartext scheme)");
    println!("{}", c.report()?);
    let be = opts.backend()?;
    println!(
        "data: {} ({} images), {} thread(s)",
        run.data,
        ds.len(),
        be.threads()
    );
    let t = Instant::now();
    let sim = c.simulator()?;
    println!("transforms encoded in {:.1} s", t.elapsed().as_secs_f64());
    let pb = image_progress(todo.len(), "simulating");
    let mut agreement = Agreement::default();
    let t = Instant::now();
    // A few images per thread between record writes: a stopped run loses at most these.
    for chunk in todo.chunks(4 * be.threads()) {
        let outcomes = be.par_map(chunk.to_vec(), |i| simulate_image(c, ds, run, &sim, i));
        for outcome in outcomes {
            let (outcome, why) = outcome?;
            if let Some(why) = why {
                pb.suspend(|| eprintln!("image {}: out of range: {why}", outcome.index));
            }
            agreement.add(&outcome);
            if let Some(rec) = record.as_deref_mut() {
                rec.push(outcome)?;
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    println!(
        "\nresults over the {} images of this run (simulated, {:.3} s per image on {} thread(s)):",
        todo.len(),
        t.elapsed().as_secs_f64() / todo.len().max(1) as f64,
        be.threads()
    );
    agreement.print_as("simulated");
    if let Some(rec) = record.as_deref() {
        print_record(rec, "simulated");
    }
    Ok(())
}

/// One simulated image's outcome against the cleartext model, and why it is out of range
/// if it is.
fn simulate_image(
    c: &CompiledModel,
    ds: &Dataset,
    run: &SingleRun<'_>,
    sim: &Simulator<'_>,
    i: usize,
) -> Result<(ImageOutcome, Option<String>), CliError> {
    let image = ds.image(i);
    // A value beyond what a refresh holds, or one that wraps the modulus: encrypted, this
    // image would decrypt to garbage. Recorded as a disagreement; the run goes on.
    let why = match sim.run(std::slice::from_ref(&image)) {
        Ok(out) if out.headroom_bits >= 0.0 => {
            return Ok((outcome(c, ds, run, i, &image, out.logits.first())?, None));
        }
        Ok(out) => format!(
            "a value wraps the modulus ({:.1} bits of headroom)",
            out.headroom_bits
        ),
        Err(
            e @ hecnn_nn::NnError::Encrypted {
                source: hecnn_nn::scheme::SchemeError::Range { .. },
                ..
            },
        ) => e.to_string(),
        Err(e) => return Err(e.into()),
    };
    let want = exec::run(c.model(), &image)?;
    let label = usize::from(ds.labels()[i]);
    Ok((
        ImageOutcome::out_of_range(run.offset + i, label, want.data()),
        Some(why),
    ))
}

/// Image `i`'s outcome: its logits `got` against the cleartext model's.
fn outcome(
    c: &CompiledModel,
    ds: &Dataset,
    run: &SingleRun<'_>,
    i: usize,
    image: &hecnn_nn::Tensor,
    got: Option<&Vec<f64>>,
) -> Result<ImageOutcome, CliError> {
    let got = got.ok_or_else(|| CliError::Usage("no output for the image".into()))?;
    let want = exec::run(c.model(), image)?;
    Ok(ImageOutcome::new(
        run.offset + i,
        usize::from(ds.labels()[i]),
        got,
        want.data(),
    ))
}

/// A progress bar over `n` images.
fn image_progress(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {pos}/{len} images {elapsed_precise} (eta {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Compares image `i`'s logits with the cleartext model's, adds the outcome to the tally
/// and appends it to the record.
#[allow(clippy::too_many_arguments)]
fn compare(
    c: &CompiledModel,
    ds: &Dataset,
    run: &SingleRun<'_>,
    i: usize,
    image: &hecnn_nn::Tensor,
    got: Option<&Vec<f64>>,
    agreement: &mut Agreement,
    record: Option<&mut AgreementRecord>,
) -> Result<(), CliError> {
    let outcome = outcome(c, ds, run, i, image, got)?;
    agreement.add(&outcome);
    if let Some(rec) = record {
        rec.push(outcome)?;
    }
    Ok(())
}

/// Prints the summary over a whole record and its disagreements with their margins.
fn print_record(rec: &AgreementRecord, what: &str) {
    let agreement = rec.summary();
    println!("results over the whole record:");
    agreement.print_as(what);
    for o in rec.disagreements() {
        if o.encrypted == crate::agreement_record::OUT_OF_RANGE {
            println!(
                "  image {}: cleartext {} (margin {:.3}), {what}: out of range",
                o.index, o.cleartext, o.cleartext_margin
            );
            continue;
        }
        println!(
            "  image {}: cleartext {} (margin {:.3}), {what} {}, max |Δ logit| {:.3}",
            o.index, o.cleartext, o.cleartext_margin, o.encrypted, o.max_abs_diff
        );
    }
}

/// Where the first image's evaluation spent its time: by kind of stage (and with
/// `verbose`, stage by stage), with the key switches and on-the-fly encodings each ran.
fn print_breakdown(stages: &[(hecnn_nn::single::StageTime, hecnn_ckks::OpCounts)], verbose: bool) {
    use hecnn_ckks::OpCounts;
    use hecnn_nn::single::StageTimeKind;
    #[derive(Default)]
    struct Sum {
        seconds: f64,
        cts: usize,
        ops: OpCounts,
    }
    let mut sums: [Sum; 3] = Default::default();
    if verbose {
        println!(
            "stages of the first image (seconds; key switches; diagonals encoded on the fly):"
        );
    }
    for (t, ops) in stages {
        let k = match t.kind {
            StageTimeKind::Linear => 0,
            StageTimeKind::Activation => 1,
            StageTimeKind::Refresh => 2,
        };
        let sum = &mut sums[k];
        sum.seconds += t.seconds;
        sum.cts += t.cts;
        sum.ops.relinearizations += ops.relinearizations;
        sum.ops.rotations += ops.rotations;
        sum.ops.deferred_encodings += ops.deferred_encodings;
        sum.ops.deferred_encoding_ns += ops.deferred_encoding_ns;
        if verbose {
            println!(
                "  {:>3} {:<10} {:<60} {:>8.2} s {:>5} ks {:>5} enc",
                t.stage,
                format!("{:?}", t.kind).to_lowercase(),
                t.name,
                t.seconds,
                ops.key_switches(),
                ops.deferred_encodings,
            );
        }
    }
    let [linear, act, refresh] = &sums;
    let total: f64 = sums.iter().map(|s| s.seconds).sum();
    println!(
        "breakdown of the first image ({total:.1} s): linear stages {:.1} s ({} rotations; {} diagonals encoded on the fly, {:.1} s of it), activations {:.1} s ({} relinearizations), {} bootstrap(s) {:.1} s ({} key switches)",
        linear.seconds,
        linear.ops.rotations,
        linear.ops.deferred_encodings,
        linear.ops.deferred_encoding_ns as f64 * 1e-9,
        act.seconds,
        act.ops.relinearizations,
        refresh.cts,
        refresh.seconds,
        refresh.ops.key_switches(),
    );
}
