//! What `compile` reports about a plan: parameters, operation counts, layouts, keys.

use std::fmt::Write;

use hecnn_rlwe::security;

use super::{CompiledModel, PackedPlan, RefreshRecord};
use crate::NnError;

/// A byte count in KiB, MiB or GiB.
pub fn human_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / 1024f64.powi(3))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024f64.powi(2))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// The report of [`CompiledModel::report`].
pub(super) fn report(c: &CompiledModel) -> Result<String, NnError> {
    let params = c.params();
    let r = params.rlwe();
    let achieved =
        security::achieved_level(r.log_n(), r.log_qp()).map_or("none".into(), |l| l.to_string());
    let mut out = String::new();
    match c.plan() {
        PackedPlan::Batch(plan) => {
            let (terms, squares, relins, rescales) = plan.op_counts()?;
            let peak = human_bytes(plan.peak_ciphertext_bytes(params.n(), params.max_level()));
            let _ = write!(
                out,
                "model '{}': {} nodes, batch packing ({} images per ciphertext), depth {}\n\
                 parameters: N = 2^{}, log QP = {:.1}, {} levels, scale 2^{}, dnum {}, security {achieved} (checked)\n\
                 per batch: {} input ciphertexts, {terms} weighted-sum terms, {squares} squares, {relins} relinearizations, {rescales} rescales; relinearization key {}; peak ciphertext memory ≈ {peak}",
                c.name(),
                plan.model().nodes.len(),
                params.max_slots(),
                plan.depth(),
                r.log_n(),
                r.log_qp(),
                r.max_level(),
                params.log_scale(),
                r.dnum(),
                plan.inputs(),
                human_bytes(r.switching_key_bytes()),
            );
        }
        PackedPlan::Single(plan) => {
            let rotations = plan.rotations();
            let _ = writeln!(
                out,
                "model '{}': {} nodes, single-image packing: one image in {} ciphertext(s) of {} slots, depth {}",
                c.name(),
                plan.model().nodes.len(),
                plan.input_cts(),
                plan.slots(),
                plan.depth(),
            );
            for l in plan.layers() {
                let _ = writeln!(
                    out,
                    "  {}: {} → {} ciphertext(s), {}; {} plaintext products, rotations {} hoisted + {} + {} sums",
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
            let req = c.key_requirements();
            let galois = req.galois_elements(r).len();
            let _ = write!(
                out,
                "parameters: N = 2^{}, log QP = {:.1}, {} levels, scale 2^{}, dnum {}, security {achieved} (checked on the whole modulus)\n\
                 keys: relinearization + {galois} Galois keys ({} rotations of the plan{}), {} seed-compressed, {} expanded ({} restricted to the levels they rotate at){}",
                r.log_n(),
                r.log_qp(),
                r.max_level(),
                params.default_scale().log2(),
                r.dnum(),
                rotations.len(),
                if req.conjugate {
                    format!(
                        ", {} of bootstrapping, shared where they coincide, and conjugation",
                        req.rotations.len() - rotations.len()
                    )
                } else {
                    String::new()
                },
                human_bytes(req.key_bytes(r)),
                human_bytes(req.expanded_key_bytes(r)),
                req.galois_levels(r)
                    .values()
                    .filter(|&&l| l < r.max_level())
                    .count(),
                if c.default_key_storage() == hecnn_rlwe::KeyStorage::Compact {
                    "; the server holds them compact, at the seed-compressed size"
                } else {
                    ""
                },
            );
            if let Some(rec) = c.refresh() {
                bootstrapping(&mut out, c, rec)?;
            }
        }
    }
    let _ = write!(out, "\n{}", c.levels().describe());
    Ok(out)
}

/// Where and how the plan bootstraps.
fn bootstrapping(out: &mut String, c: &CompiledModel, rec: &RefreshRecord) -> Result<(), NnError> {
    let params = c.params();
    let config = rec.config();
    let poly = config.eval_mod_poly()?;
    let lp = c.levels();
    let level = rec.levels(params)?;
    let _ = write!(
        out,
        "\nbootstrapping: {} slots ({}), CoeffToSlot {} + EvalMod {} + SlotToCoeff {} levels above the {level} between refreshes, \
         ephemeral secret of weight {}, message ratio 2^{}; values refreshed divided by 2^{} (bootstrapping's error grows with it)\n\
         refreshes: {} per image ({} ciphertext bootstrap(s)), each on a value that holds everything later stages read:",
        config.slots,
        if config.slots < params.max_slots() {
            "sparse"
        } else {
            "full"
        },
        config.cts_levels,
        poly.depth(),
        config.stc_levels,
        config.ephemeral_weight,
        config.log_message_ratio,
        rec.bound_bits,
        lp.refreshes().len(),
        lp.refreshed_cts(),
    );
    let refreshes: Vec<usize> = lp.refreshes().into_iter().collect();
    for (k, &i) in refreshes.iter().enumerate() {
        let s = &lp.stages[i];
        // The stages the refreshed levels carry: up to the next refresh or the output.
        let end = refreshes.get(k + 1).copied().unwrap_or(lp.stages.len() - 1);
        let used = level - lp.stages[end].level_out;
        let _ = write!(
            out,
            "\n  after '{}' at level {} ({} ct): the stages up to {} use {used} of the {level} levels it gives back",
            s.name,
            s.level_out,
            s.cts,
            lp.stages.get(end).map_or("the output", |e| e.name.as_str()),
        );
    }
    Ok(())
}
