//! `hecnn bench protected --scheme bfv`: Gomez et al.'s protected-model table in BFV, with
//! the noise budget left at the output (measured with the owner's key, and predicted by
//! the plan) beside time, size and memory, and every decryption checked bit for bit
//! against the integer reference.

use std::sync::Arc;
use std::time::Instant;

use hecnn_nn::{
    data::Dataset,
    exec::{self, argmax},
    protect::{
        ProtectPlan,
        bfv::{BfvFeatures, BfvProtectOptions, BfvProtectPlan, feature_range},
    },
};
use hecnn_ring::{Backend, CpuBackend, Prng};
use hecnn_rlwe::SecretKey;

use crate::{
    CliError, cnn,
    protect_cmd::{BenchData, BenchProtectedArgs, import, median, peak_rss, reset_peak, variant},
    stats::human_bytes,
};

/// Feature vectors the owner calibrates the features' range on (the first images of the
/// training split: the test images are never looked at).
const CALIBRATION_IMAGES: usize = 500;

/// One timed row.
struct Row {
    protect_ms: f64,
    model_bytes: usize,
    features_ms: f64,
    encrypt_ms: f64,
    process_ms: f64,
    process_mem: usize,
    decrypt_ms: f64,
    /// Smallest measured budget over the images (bits).
    budget: f64,
    exact: usize,
    agree: usize,
    total: usize,
}

fn bench_row(
    model: &hecnn_nn::Model,
    plan: &BfvProtectPlan,
    be: &CpuBackend,
    ds: &Dataset,
    encrypted: bool,
) -> Result<Row, CliError> {
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(&plan.rlwe()?, &mut rng)?;
    let t = Instant::now();
    let protected = plan.protect(&sk, be, &mut rng)?;
    let protect_ms = t.elapsed().as_secs_f64() * 1e3;
    let model_bytes = protected.encrypted_bytes(be)?;
    let keys = Arc::new(sk.evaluation_keys(be, &protected.key_requirements(), &mut rng)?);
    let pk = sk.public_key(be, &mut rng)?;
    let (mut feat_t, mut enc_t, mut proc_t, mut dec_t) = (vec![], vec![], vec![], vec![]);
    let (mut process_mem, mut budget, mut exact, mut agree) = (0, f64::INFINITY, 0, 0);
    for i in 0..ds.len() {
        let image = ds.image(i);
        let want = exec::run(model, &image)?;
        let t = Instant::now();
        let features = protected.spec().features_of(&image)?;
        let q = protected.quantize_features(&features)?;
        feat_t.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let input = if encrypted {
            BfvFeatures::Encrypted(protected.encrypt_features(&pk, &q, be, &mut rng)?)
        } else {
            BfvFeatures::Plain(q.clone())
        };
        enc_t.push(t.elapsed().as_secs_f64() * 1e3);
        reset_peak();
        let t = Instant::now();
        let out = protected.evaluate(&keys, be, &input)?;
        proc_t.push(t.elapsed().as_secs_f64() * 1e3);
        process_mem = process_mem.max(peak_rss());
        drop(input);
        let t = Instant::now();
        let got = plan.decrypt(&sk, be, &out)?;
        dec_t.push(t.elapsed().as_secs_f64() * 1e3);
        budget = budget.min(got.budget_bits);
        exact += usize::from(got.values == plan.reference(&q)?);
        agree += usize::from(argmax(&got.logits) == argmax(want.data()));
    }
    Ok(Row {
        protect_ms,
        model_bytes,
        features_ms: median(&mut feat_t),
        encrypt_ms: median(&mut enc_t),
        process_ms: median(&mut proc_t),
        process_mem,
        decrypt_ms: median(&mut dec_t),
        budget,
        exact,
        agree,
        total: ds.len(),
    })
}

/// Accuracy over `ds` with plain features: unprotected, protected, the same prediction,
/// and how many decryptions equal the integer reference.
fn accuracy(
    model: &hecnn_nn::Model,
    plan: &BfvProtectPlan,
    be: &CpuBackend,
    ds: &Dataset,
) -> Result<[usize; 4], CliError> {
    let mut rng = Prng::from_entropy()?;
    let sk = SecretKey::generate(&plan.rlwe()?, &mut rng)?;
    let protected = plan.protect(&sk, be, &mut rng)?;
    let keys = Arc::new(sk.evaluation_keys(be, &protected.key_requirements(), &mut rng)?);
    // One image per worker, each evaluated on one thread.
    let one = CpuBackend::new(1)?;
    let per_image = |i: usize| -> Result<[bool; 4], CliError> {
        let image = ds.image(i);
        let want = argmax(exec::run(model, &image)?.data());
        let q = protected.quantize_features(&protected.spec().features_of(&image)?)?;
        let out = protected.evaluate(&keys, &one, &BfvFeatures::Plain(q.clone()))?;
        let got = plan.decrypt(&sk, &one, &out)?;
        let label = usize::from(ds.labels()[i]);
        let class = argmax(&got.logits);
        Ok([
            want == label,
            class == label,
            class == want,
            got.values == plan.reference(&q)?,
        ])
    };
    let mut counts = [0usize; 4];
    for r in be.par_map((0..ds.len()).collect(), per_image) {
        for (c, ok) in counts.iter_mut().zip(r?) {
            *c += usize::from(ok);
        }
    }
    Ok(counts)
}

/// The BFV table (see the module's documentation).
pub fn bench_protected_bfv(a: &BenchProtectedArgs) -> Result<(), CliError> {
    let be = CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    println!(
        "| data | variant | features | security | N | log Q | plaintext primes | model enc. | \
         encrypted layers | features (clear) | feature enc. | processing | proc. mem | \
         decryption | budget left, measured / predicted | exact | same as unprotected |"
    );
    println!("|{}", "---|".repeat(17));
    let mut lines = Vec::new();
    for &data in &a.data {
        let name = match data {
            BenchData::Mnist => "mnist",
            BenchData::Cifar10 => "cifar10",
        };
        let (calibration, test) = if a.sample {
            let s = cnn::load_data(&format!("sample:{name}"))?;
            (s.clone(), s)
        } else {
            let (train, test) = cnn::load_split_pair(name)?;
            (train.take(CALIBRATION_IMAGES.min(train.len())), test)
        };
        let timed = test.take(a.images.min(test.len()));
        for v in &a.variants {
            let (label, scope, file) = variant(v, name)?;
            let model = import(&a.models.join(file))?;
            let plan = match ProtectPlan::new(&model, scope) {
                Ok(plan) => plan,
                Err(e) => {
                    lines.push(format!("{name} {v} ({label}): skipped: {e}"));
                    continue;
                }
            };
            let samples = (0..calibration.len())
                .map(|i| plan.spec().features_of(&calibration.image(i)))
                .collect::<Result<Vec<_>, _>>()?;
            let range = feature_range(samples.iter().map(Vec::as_slice)).ok_or_else(|| {
                CliError::Usage(format!("{name} {v}: the calibration features are all zero"))
            })?;
            for &bits in &a.security {
                let mut opts = BfvProtectOptions::with_feature_range(range);
                opts.quant.input_bits = a.feature_bits;
                opts.quant.weight_bits = a.weight_bits;
                opts.bfv.security = cnn::security_level(bits)?;
                let bfv = match BfvProtectPlan::new(&plan, &opts) {
                    Ok(p) => p,
                    Err(e) => {
                        lines.push(format!("{name} {v} at {bits}-bit: skipped: {e}"));
                        continue;
                    }
                };
                if bits == a.security[0] {
                    lines.push(format!("{name} {v} ({label}): {}", bfv.report()));
                    let n = a.accuracy_images.unwrap_or(a.images).min(test.len());
                    let t = Instant::now();
                    let [clear, prot, same, exact] =
                        be.install(|| accuracy(&model, &bfv, &be, &test.take(n)))?;
                    lines.push(format!(
                        "{name} {v} ({label}): unprotected {clear}/{n}, protected {prot}/{n}, \
                         same prediction {same}/{n}, decryption equal to the integer reference \
                         {exact}/{n} ({bits}-bit, plain features, {}-bit features, {}-bit \
                         weights); {:.1} images/s on {} threads",
                        a.feature_bits,
                        a.weight_bits,
                        n as f64 / t.elapsed().as_secs_f64(),
                        be.threads()
                    ));
                }
                let modes: &[bool] = if a.plain_only {
                    &[false]
                } else {
                    &[false, true]
                };
                let r = bfv.ring();
                let log_q: u32 = r.log_q.iter().sum();
                for &encrypted in modes {
                    let row = be.install(|| bench_row(&model, &bfv, &be, &timed, encrypted))?;
                    println!(
                        "| {name} | {label} | {} | {bits} | 2^{} | {log_q} | {} × {:.0} bits | \
                         {:.0} ms | {} | {:.1} ms | {} | {:.1} ms | {} | {:.2} ms | {:.1} / \
                         {:.1} bits | {}/{} | {}/{} |",
                        if encrypted { "encrypted" } else { "plain" },
                        r.log_n,
                        bfv.moduli().len(),
                        bfv.moduli()
                            .iter()
                            .map(|&t| (t as f64).log2())
                            .fold(0.0f64, f64::max),
                        row.protect_ms,
                        human_bytes(row.model_bytes),
                        row.features_ms,
                        if encrypted {
                            format!("{:.1} ms", row.encrypt_ms)
                        } else {
                            "–".into()
                        },
                        row.process_ms,
                        human_bytes(row.process_mem),
                        row.decrypt_ms,
                        row.budget,
                        bfv.predicted_budgets(encrypted)
                            .last()
                            .copied()
                            .unwrap_or(f64::NAN),
                        row.exact,
                        row.total,
                        row.agree,
                        row.total
                    );
                }
            }
        }
    }
    println!();
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
