//! The packing cost model of auto mode: estimated ring multiply-adds of single-image
//! packing (the plan's cost in plaintext products, each `N·limbs` on average, and every
//! relinearization as 12 products) against batch packing (every weighted-sum term a
//! plaintext-size product, every relinearization 12) for as many batches as the images
//! need.

use std::sync::Arc;

use hecnn_ckks::CkksParams;

use super::PackedPlan;
use crate::{NnError, batch::BatchPlan, single::SinglePlan};

/// A relinearization in plaintext products (about a rotation).
const RELIN_COST: usize = 12;

/// The packing auto mode chose, with its parameters and a line saying why.
#[derive(Debug)]
pub struct Choice {
    /// The chosen plan.
    pub plan: PackedPlan,
    /// Its parameters.
    pub params: Arc<CkksParams>,
    /// Why, in a line (estimates and the crossover).
    pub why: String,
}

/// Ring multiply-adds of `units` plaintext-size products at `levels` levels on average.
fn work(params: &CkksParams, units: usize) -> f64 {
    units as f64 * params.n() as f64 * (params.max_level() as f64 + 2.0) / 2.0
}

/// Picks the packing expected to classify `images` images fastest from the candidates
/// (either may have failed: the other is then taken, with the reason).
///
/// # Errors
/// Both candidates failed (the batch error is returned); batch operation counts.
pub fn choose(
    batch: Result<(BatchPlan, Arc<CkksParams>), NnError>,
    single: Result<(SinglePlan, Arc<CkksParams>), NnError>,
    images: usize,
) -> Result<Choice, NnError> {
    let (single, single_params) = match (single, &batch) {
        (Ok(s), _) => s,
        (Err(e), Ok(_)) => {
            let (plan, params) = batch?;
            return Ok(Choice {
                plan: PackedPlan::Batch(plan),
                params,
                why: format!("mode auto: batch (single-image packing cannot run this model: {e})"),
            });
        }
        (Err(_), Err(_)) => {
            return Err(batch
                .err()
                .unwrap_or(NnError::Internal("no packing".into())));
        }
    };
    let (batch, batch_params) = match batch {
        Ok(b) => b,
        Err(e) => {
            return Ok(Choice {
                plan: PackedPlan::Single(single),
                params: single_params,
                why: format!("mode auto: single (batch packing cannot run this model: {e})"),
            });
        }
    };
    let (terms, _, relins, _) = batch.op_counts()?;
    let per_batch = work(&batch_params, terms + RELIN_COST * relins);
    let per_image = work(
        &single_params,
        single.cost() + RELIN_COST * single.relinearizations(),
    );
    let batch_size = batch_params.max_slots();
    let batches = images.div_ceil(batch_size).max(1);
    let crossover = (per_batch / per_image).ceil();
    let pick_single = (images as f64) * per_image < batches as f64 * per_batch;
    let why = format!(
        "mode auto: {} for {images} image(s) (estimated work: single {per_image:.2e} per image, batch {per_batch:.2e} per batch of {batch_size}; single-image mode pays off below about {crossover} images)",
        if pick_single { "single" } else { "batch" },
    );
    Ok(if pick_single {
        Choice {
            plan: PackedPlan::Single(single),
            params: single_params,
            why,
        }
    } else {
        Choice {
            plan: PackedPlan::Batch(batch),
            params: batch_params,
            why,
        }
    })
}
