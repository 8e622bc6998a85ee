//! What `compile` reports about a plan: parameters, operation counts, layouts, keys.

use std::fmt::Write;

use hecnn_rlwe::security;

use super::{CompiledModel, PackedPlan};
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
            let _ = write!(
                out,
                "parameters: N = 2^{}, log QP = {:.1}, {} levels, scale 2^{}, dnum {}, security {achieved} (checked)\n\
                 keys: relinearization + {} rotations, {}",
                r.log_n(),
                r.log_qp(),
                r.max_level(),
                params.default_scale().log2(),
                r.dnum(),
                rotations.len(),
                human_bytes((rotations.len() + 1) * r.switching_key_bytes()),
            );
        }
    }
    let _ = write!(out, "\n{}", c.levels().describe());
    Ok(out)
}
