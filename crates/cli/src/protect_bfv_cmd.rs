//! `hecnn protect --scheme bfv` and the BFV halves of `hecnn edge run` and `hecnn owner
//! decrypt`: the same files and roles as the CKKS protected models (a signed model, the
//! owner's keys, one result file per image), with exact decryption and the noise budget.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hecnn_deploy::signing::SigningKey;
use hecnn_nn::{
    exec::argmax,
    protect::{
        ProtectPlan,
        bfv::{
            BfvFeatures, BfvProtectOptions, BfvProtectPlan, BfvProtectedModel, BfvProtectedOutput,
            feature_range,
        },
    },
};
use hecnn_ring::{Backend, CpuBackend, Prng};
use hecnn_rlwe::{EvaluationKeys, PublicKey, SecretKey};

use crate::{
    CliError,
    cnn::{self, KeyPaths},
    protect_cmd::{
        EdgeRunArgs, OWNER_KEY_FILE, OwnerDecryptArgs, PROTECTED_FILE, ProtectArgs, edge_images,
        result_files,
    },
    stats::human_bytes,
};

/// The owner's BFV plan (the quantized weights in the clear: written like a secret key).
pub const OWNER_PLAN_FILE: &str = "owner-plan.hcbp";

/// Images of the calibration data whose features set the quantization range, by default.
const CALIBRATION_IMAGES: usize = 500;

/// The first `count` calibration images: of the training split of a named data set (never
/// its test images), of any other data set as given.
fn calibration_data(spec: &str, count: usize) -> Result<hecnn_nn::data::Dataset, CliError> {
    let ds = match spec {
        "mnist" | "cifar10" => cnn::load_split_pair(spec)?.0,
        other => cnn::load_data(other)?,
    };
    Ok(ds.take(count.clamp(1, ds.len().max(1))))
}

/// `hecnn protect --scheme bfv`.
pub fn protect_bfv(
    a: &ProtectArgs,
    model: &hecnn_nn::Model,
    plan: &ProtectPlan,
    signer: &SigningKey,
    signing_path: &Path,
    made: bool,
) -> Result<(), CliError> {
    let data = a.calibrate.as_deref().ok_or_else(|| {
        CliError::Usage(
            "BFV quantizes the features to integers over their range: give the data the \
             model was trained on with --calibrate DATA (mnist, cifar10, …; the training \
             split of a named set is used)"
                .into(),
        )
    })?;
    let ds = calibration_data(data, a.calibrate_images.unwrap_or(CALIBRATION_IMAGES))?;
    if ds.shape() != model.input_shape {
        return Err(CliError::Usage(format!(
            "--calibrate {data}: images of shape {:?}, the model takes {:?}",
            ds.shape(),
            model.input_shape
        )));
    }
    let samples = (0..ds.len())
        .map(|i| plan.spec().features_of(&ds.image(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let range = feature_range(samples.iter().map(Vec::as_slice))
        .ok_or_else(|| CliError::Usage(format!("--calibrate {data}: every feature is zero")))?;
    let mut opts = BfvProtectOptions::with_feature_range(range);
    if let Some(bits) = a.feature_bits {
        opts.quant.input_bits = bits;
    }
    if let Some(bits) = a.weight_bits {
        opts.quant.weight_bits = bits;
    }
    opts.bfv.security = cnn::security_level(a.security)?;
    let bfv = BfvProtectPlan::new(plan, &opts)?;
    let be = CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    let mut rng = Prng::from_entropy()?;
    let t = Instant::now();
    let sk = SecretKey::generate(&bfv.rlwe()?, &mut rng)?;
    let protected = bfv.protect(&sk, &be, &mut rng)?;
    let protect_ms = t.elapsed().as_secs_f64() * 1e3;
    let pk = sk.public_key(&be, &mut rng)?;
    let evk = sk.evaluation_keys(&be, &protected.key_requirements(), &mut rng)?;
    let paths = KeyPaths::in_dir(&a.out_dir);
    cnn::write_secret(&paths.secret, &sk.to_secret_bytes())?;
    cnn::write_secret(
        &a.out_dir.join(OWNER_PLAN_FILE),
        &bfv.to_owner_bytes(sk.key_id())?,
    )?;
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
    println!(
        "protected {} ({}) in BFV: {}",
        a.model.display(),
        plan.spec().scope.name(),
        bfv.report()
    );
    println!(
        "  features quantized to {} bits over [{:.4}, {:.4}] (from {} images of {data}), \
         weights to {} bits; predicted budget at the output: {:.1} bits (plain features), \
         {:.1} bits (encrypted)",
        opts.quant.input_bits,
        range.0,
        range.1,
        ds.len(),
        opts.quant.weight_bits,
        bfv.predicted_budgets(false)
            .last()
            .copied()
            .unwrap_or(f64::NAN),
        bfv.predicted_budgets(true)
            .last()
            .copied()
            .unwrap_or(f64::NAN)
    );
    println!(
        "  {} weight and bias ciphertexts, encrypted in {protect_ms:.0} ms",
        protected.ciphertext_count()
    );
    println!(
        "  in {}: {PROTECTED_FILE} {} and public.key {}, eval.keys {} (for the edge); \
         secret.key and {OWNER_PLAN_FILE} (the owner's only: the plan holds the quantized \
         weights)",
        a.out_dir.display(),
        human_bytes(model_bytes.len()),
        human_bytes(pk_bytes.len()),
        human_bytes(ev_bytes.len())
    );
    println!(
        "  signed by {} ({} {}); give the edge {OWNER_KEY_FILE} out of band",
        signer.owner_key(),
        if made { "made in" } else { "from" },
        signing_path.display()
    );
    Ok(())
}

/// `hecnn edge run` for a verified BFV model.
pub fn edge_run_bfv(a: &EdgeRunArgs, model_bytes: &[u8]) -> Result<(), CliError> {
    let be = CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    let model = BfvProtectedModel::from_bytes(&be, model_bytes)?;
    let paths = KeyPaths::in_dir(&a.deployment);
    let rlwe = Arc::clone(model.params()[0].rlwe());
    let evk = Arc::new(EvaluationKeys::from_bytes(
        &be,
        &rlwe,
        &cnn::read_file(&paths.eval)?,
        hecnn_nn::protect::MAX_EDGE_KEYS,
    )?);
    let pk = if a.encrypt_features {
        Some(PublicKey::from_bytes(
            &be,
            &rlwe,
            &cnn::read_file(&paths.public)?,
        )?)
    } else {
        None
    };
    let (ds, end) = edge_images(a, model.spec().prefix.input_shape)?;
    let pb = indicatif::ProgressBar::new((end - a.offset) as u64);
    let t = Instant::now();
    let mut rng = Prng::from_entropy()?;
    be.install(|| -> Result<(), CliError> {
        for i in a.offset..end {
            let q = model.quantize_features(&model.spec().features_of(&ds.image(i))?)?;
            let input = match &pk {
                Some(pk) => BfvFeatures::Encrypted(model.encrypt_features(pk, &q, &be, &mut rng)?),
                None => BfvFeatures::Plain(q),
            };
            let out = model.evaluate(&evk, &be, &input)?;
            cnn::write_file(
                &a.out_dir.join(format!("{i}.hcno")),
                &out.to_bytes(&be, &model)?,
            )?;
            pb.inc(1);
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    let n = end - a.offset;
    println!(
        "{n} images through the BFV protected model ({} features) in {:.2} s ({:.1} ms per \
         image); encrypted results in {}",
        if pk.is_some() { "encrypted" } else { "plain" },
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64,
        a.out_dir.display()
    );
    Ok(())
}

/// `hecnn owner decrypt` for a BFV model: exact outputs (an honest edge's results need no
/// flooding), the budget left reported to the owner.
pub fn owner_decrypt_bfv(a: &OwnerDecryptArgs, model_bytes: &[u8]) -> Result<(), CliError> {
    let be = CpuBackend::new(1)?;
    let model = BfvProtectedModel::from_bytes(&be, model_bytes)?;
    let plan =
        BfvProtectPlan::from_owner_bytes(&cnn::read_file(&a.owner.join(OWNER_PLAN_FILE))?, &model)?;
    let sk = SecretKey::from_secret_bytes(
        &plan.rlwe()?,
        &cnn::read_file(&KeyPaths::in_dir(&a.owner).secret)?,
    )?;
    if sk.key_id() != model.key_id() {
        return Err(CliError::Usage(
            "the secret key is not the one the protected model was encrypted under".into(),
        ));
    }
    if a.noise_bound.is_some() {
        return Err(CliError::Usage(
            "--noise-bound floods CKKS results; BFV results are exact and need no flooding".into(),
        ));
    }
    let ds = a.data.as_deref().map(cnn::load_data).transpose()?;
    let files: Vec<(usize, PathBuf)> = result_files(&a.input)?;
    let (mut correct, mut labelled, mut refused) = (0, 0, 0);
    let mut budget = f64::INFINITY;
    for (idx, path) in &files {
        let out = BfvProtectedOutput::from_bytes(&be, &model, &cnn::read_file(path)?)
            .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
        let got = match plan.decrypt(&sk, &be, &out) {
            Ok(got) => got,
            // The message names the public threshold only; the other results go on.
            Err(e @ hecnn_nn::NnError::BudgetExhausted { .. }) => {
                println!("image {idx}: {e}");
                refused += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        budget = budget.min(got.budget_bits);
        let class = argmax(&got.logits);
        let shown = if a.class_only {
            String::new()
        } else {
            let text: Vec<String> = got.logits.iter().map(|l| format!("{l:.4}")).collect();
            format!(", logits [{}]", text.join(", "))
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
    if refused > 0 {
        println!(
            "{refused} result(s) refused: their noise budget was exhausted (an evaluation that \
             went wrong, or results the owner's key did not produce)"
        );
    }
    if budget.is_finite() {
        println!(
            "BFV: exact integer outputs (an honest edge's results need no flooding; never show \
             outputs to an edge you do not trust: docs/bfv.md); owner-only diagnostic: smallest \
             noise budget left {budget:.1} bits (predicted {:.1} for plain features, {:.1} for \
             encrypted)",
            plan.predicted_budgets(false)
                .last()
                .copied()
                .unwrap_or(f64::NAN),
            plan.predicted_budgets(true)
                .last()
                .copied()
                .unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
