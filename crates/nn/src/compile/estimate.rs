//! The estimated time of one single-image evaluation, before any key exists: the plan's
//! operations tallied by level ([`hecnn_ckks::cost::OpTally`]), bootstrapping's included,
//! priced with unit costs measured on the machine ([`hecnn_ckks::cost::UnitCosts`]).

use hecnn_ckks::cost::{OpTally, UnitCosts};
use hecnn_rlwe::KeyStorage;

use super::{CompiledModel, PackedPlan};
use crate::NnError;
use crate::single::Lowering;

/// Estimated seconds of one image, by part.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeEstimate {
    /// Linear stages (convolutions, dense layers, pooling), on-the-fly encoding included.
    pub linear_s: f64,
    /// Of which encoding weights on the fly.
    pub encode_s: f64,
    /// Activations.
    pub activation_s: f64,
    /// Bootstraps per image.
    pub bootstraps: usize,
    /// Seconds per bootstrap.
    pub bootstrap_s: f64,
    /// Key switches per image (rotations, relinearizations; bootstrapping's included).
    pub key_switches: f64,
}

impl TimeEstimate {
    /// The whole evaluation.
    pub fn total_s(&self) -> f64 {
        self.linear_s + self.activation_s + self.bootstraps as f64 * self.bootstrap_s
    }
}

/// Tallies of the plan's parts: (linear without encoding, encoding, activations, one
/// bootstrap), or `None` for batch packing.
fn tallies(c: &CompiledModel) -> Result<Option<[OpTally; 4]>, NnError> {
    let PackedPlan::Single(plan) = c.plan() else {
        return Ok(None);
    };
    let lp = c.levels();
    let on_the_fly = c.default_lowering() == Lowering::OnTheFly;
    let (mut linear, mut encode, mut act) = (OpTally::new(), OpTally::new(), OpTally::new());
    let layers: std::collections::BTreeMap<usize, _> =
        plan.layers().into_iter().map(|l| (l.stage, l)).collect();
    let top = c.params().max_level();
    for (i, s) in lp.stages.iter().enumerate() {
        if let Some(l) = layers.get(&i) {
            // BSGS at the input's level (rotation keys restricted to it), the rescale, then
            // the partial sums of every output ciphertext one level lower.
            let (babies, giants, sums) = l.rotations;
            let o = linear.at(s.level_in);
            if babies > 0 {
                o.decompositions += l.cts.0 as f64;
            }
            o.hoisted += babies as f64;
            o.key_switches += giants as f64;
            o.products += l.diagonals as f64;
            o.rescales += l.cts.1 as f64;
            let summed = (sums * l.cts.1) as f64;
            linear.at(s.level_in.saturating_sub(1)).key_switches += summed;
            linear.keys_at(s.level_in, (babies + giants) as f64 + summed);
            if on_the_fly {
                encode.at(s.level_in).encodes += l.diagonals as f64;
            }
        } else if s.level_out < s.level_in {
            // A quadratic activation per ciphertext, (x + d)² after the folding: the shift,
            // the square, its relinearization (the relinearization key serves every
            // level), the rescale.
            let o = act.at(s.level_in);
            let cts = s.cts as f64;
            o.tensors += cts;
            o.key_switches += cts;
            o.rescales += cts;
            act.keys_at(top, cts);
        }
    }
    let boot = match c.refresh() {
        Some(r) => r.config().op_tally(c.params())?,
        None => OpTally::new(),
    };
    Ok(Some([linear, encode, act, boot]))
}

impl CompiledModel {
    /// The estimated time of one image with these unit costs (measure them on the machine
    /// that will run it: [`UnitCosts::calibrate`]); `None` for batch packing. The model
    /// counts NTTs and limb products only, so it is an estimate: RESULTS compares it with
    /// measured runs.
    ///
    /// # Errors
    /// A bootstrapping configuration the parameters cannot hold.
    pub fn time_estimate(&self, units: &UnitCosts) -> Result<Option<TimeEstimate>, NnError> {
        let Some([linear, encode, act, boot]) = tallies(self)? else {
            return Ok(None);
        };
        let params = self.params();
        let compact = self.default_key_storage() == KeyStorage::Compact;
        let secs = |t: &OpTally| units.seconds(&t.work(params, compact));
        let bootstraps = self.levels().refreshed_cts();
        let encode_s = secs(&encode);
        Ok(Some(TimeEstimate {
            linear_s: secs(&linear) + encode_s,
            encode_s,
            activation_s: secs(&act),
            bootstraps,
            bootstrap_s: if bootstraps > 0 { secs(&boot) } else { 0.0 },
            key_switches: linear.key_switches()
                + act.key_switches()
                + bootstraps as f64 * boot.key_switches(),
        }))
    }
}
