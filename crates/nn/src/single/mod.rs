//! Single-image packing: one image's activations fill the slots of a few ciphertexts, so one
//! encrypted image is classified at once (batch mode needs thousands to pay off).
//!
//! The model is cut into stages (module `stages`): consecutive linear operators are composed into
//! one matrix (one level), and every activation `a·x² + b·x + c` is one slot-wise square, its
//! linear term read again by the next stage when completing the square would shift far (as
//! in batch mode, the value carries a pending affine map `true = a·ct + γ` that the next
//! linear stage folds into its weights and bias). A linear stage is a block matrix over the
//! ciphertexts that hold its input, evaluated by the diagonal method with baby-step
//! giant-step rotations ([`hecnn_ckks::LinearTransform`]: baby steps hoisted per input
//! ciphertext, lazy accumulation, one rescale).
//!
//! Where the outputs go is the planner's choice, per stage (module `layout`): for images, a grid
//! that keeps its input's frames and multiplies the gaps by the stage's stride, with the
//! channels multiplexed into the gaps, so a strided convolution needs only its kernel's
//! offsets as diagonals; for dense layers with few outputs, partial sums on every residue
//! class summed by rotations (the hybrid method). The planner prices every candidate
//! (plaintext products and rotations) and keeps the cheapest. A stage's diagonals only
//! reference real neurons, so whatever the unused slots hold never reaches a result.
//!
//! The rotation keys the plan needs are known before key generation
//! ([`SinglePlan::rotations`]). Stages follow the graph: a residual addition is composed
//! into the linear stage after it (a stage may read several values, aligned to the lowest
//! one's level and scale), so it costs no level.

pub(crate) mod layout;
mod stages;

use std::collections::{BTreeMap, BTreeSet};

use hecnn_ckks::{BlockDiagonals, Ciphertext, CkksError, Complex64, Evaluator, Plaintext};
use hecnn_ring::Backend;

pub use crate::compile::params::{MAX_LOG_SCALE, MIN_LOG_SCALE, VALUE_BOUND_BITS};
use crate::{
    Model, NnError,
    batch::OutputMap,
    pending::{Map, Shift, folded_bias_map},
    scheme::{Scheme, SchemeError},
};
use layout::{Grid, Target};
use stages::{Stage, StageOp};

/// Estimated cost of a hoisted baby-step rotation, in plaintext products at the same level.
const BABY_COST: usize = 6;
/// Estimated cost of a full rotation (giant step or partial-sum step), in plaintext products.
const ROTATION_COST: usize = 12;

/// The planner's choice for one linear stage.
#[derive(Clone, Debug)]
struct LinearPlan {
    target: Target,
    /// Non-zero diagonal indices per `(output, input)` ciphertext pair.
    indices: BTreeMap<(usize, usize), BTreeSet<i64>>,
    in_cts: usize,
    out_cts: usize,
    layout: String,
}

impl LinearPlan {
    fn diagonals(&self) -> usize {
        self.indices.values().map(BTreeSet::len).sum()
    }
}

/// What the planner chose for one linear stage (for reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerReport {
    /// The stage's index.
    pub stage: usize,
    /// The operators composed into the stage.
    pub name: String,
    /// The output layout.
    pub layout: String,
    /// Input and output ciphertexts.
    pub cts: (usize, usize),
    /// Plaintext products (non-zero diagonals over all ciphertext pairs).
    pub diagonals: usize,
    /// Hoisted baby-step rotations, giant-step rotations, partial-sum rotations.
    pub rotations: (usize, usize, usize),
}

/// The record of a candidate layout.
fn stage_layout(target: &Target, grid: Option<&Grid>) -> StageLayout {
    match (target, grid) {
        (_, Some(g)) => StageLayout::Grid {
            gap: g.gap,
            frame: g.frame,
        },
        (Target::Place(_), None) => StageLayout::Vector,
        (Target::Summed { m }, None) => StageLayout::Summed { m: *m },
    }
}

/// Plans and prices one candidate target for a stage.
fn price(
    target: Target,
    layout: String,
    rows: &[crate::linear::Row],
    input: &[usize],
    in_cts: usize,
    slots: usize,
) -> (usize, LinearPlan) {
    let mut seen: BTreeMap<(usize, usize), Vec<bool>> = BTreeMap::new();
    target.entries(rows, input, slots, |v, u, k, _, _| {
        seen.entry((v, u)).or_insert_with(|| vec![false; slots])[k as usize] = true;
    });
    let indices: BTreeMap<(usize, usize), BTreeSet<i64>> = seen
        .into_iter()
        .map(|(vu, s)| {
            let set = s
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b)
                .map(|(k, _)| k as i64)
                .collect();
            (vu, set)
        })
        .collect();
    let (babies, giants) = hecnn_ckks::block_rotation_counts(&indices, slots);
    let sums = target.sum_steps(slots).len();
    let out_cts = target.cts(slots);
    let plan = LinearPlan {
        target,
        indices,
        in_cts,
        out_cts,
        layout,
    };
    let cost = plan.diagonals() + BABY_COST * babies + ROTATION_COST * (giants + sums);
    (cost, plan)
}

/// A checked single-image plan for a rewritten model at a given slot count.
#[derive(Clone, Debug)]
pub struct SinglePlan {
    model: Model,
    stages: Vec<Stage>,
    slots: usize,
    /// Flat positions of the input's neurons.
    input: Vec<usize>,
    /// Flat positions of every stage's output neurons.
    positions: Vec<Vec<usize>>,
    /// The plan of every linear stage (by stage index).
    linear: BTreeMap<usize, LinearPlan>,
    /// The pending affine map of every value (0: the input, `i + 1`: stage `i`'s output).
    maps: Vec<Map>,
    /// Estimated cost of one evaluation, in plaintext products.
    cost: usize,
    /// The layouts the planner chose (what a compiled model records).
    layouts: Layouts,
    /// Stages whose output a refresh brings back up (from the level pass), with the bound
    /// on that output's slots ([`Scheme::refresh`]).
    refreshes: BTreeMap<usize, f64>,
}

/// Where the planner put one linear stage's output: what a compiled model records so that
/// loading it rebuilds the plan without searching ([`SinglePlan::with_layouts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StageLayout {
    /// An image grid with these gaps between a channel's pixels, in frames of this size.
    Grid {
        /// Gaps `(gy, gx)`.
        gap: (usize, usize),
        /// Frame `(fh, fw)` in slots.
        frame: (usize, usize),
    },
    /// Output `o` at flat position `o`.
    Vector,
    /// Partial sums at every slot `≡ o (mod m)`, added by rotations.
    Summed {
        /// The residue modulus.
        m: usize,
    },
}

/// Every layout choice of a single-image plan: the input frame and each linear stage's
/// output layout, in stage order. Together with the model and the slot count they determine
/// the plan.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layouts {
    /// Slots per ciphertext.
    pub slots: usize,
    /// The input's frame `(fh, fw)`.
    pub input_frame: (usize, usize),
    /// The output layout of every linear stage, in order.
    pub stages: Vec<StageLayout>,
}

/// Levels a single-image evaluation of `model` consumes along its longest path: one per
/// linear stage (consecutive linear operators and residual additions compose into one) and
/// one per square.
///
/// # Errors
/// See [`SinglePlan::new`].
pub fn depth(model: &Model) -> Result<usize, NnError> {
    Ok(levels(&stages::stages(model)?))
}

/// Levels the stages consume along their longest path: one per linear stage and per square.
fn levels(stages: &[Stage]) -> usize {
    let mut depth = vec![0usize];
    for s in stages {
        let from = s
            .sources
            .iter()
            .map(|&v| depth.get(v).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        let consumes = matches!(s.op, StageOp::Linear { .. }) || s.op.squares();
        depth.push(from + usize::from(consumes));
    }
    depth.last().copied().unwrap_or(0)
}

impl SinglePlan {
    /// Plans a model that has been through [`crate::rewrite()`] for ciphertexts of `slots`
    /// slots (a power of two): stages, the output layout of every linear stage, the
    /// rotations.
    ///
    /// # Errors
    /// [`NnError::NotSupported`] for operators single-image mode cannot run (activations of
    /// degree above 2, non-polynomial operators, activations squaring some channels and not
    /// others);
    /// [`NnError::Mismatch`] for a slot count that is not a power of two;
    /// [`NnError::TooFewSlots`] for an input channel larger than a ciphertext.
    pub fn new(model: &Model, slots: usize) -> Result<Self, NnError> {
        Self::plan(model, slots, None)
    }

    /// Rebuilds the plan a compiled model recorded: the same stages with the recorded
    /// layouts, no search.
    ///
    /// # Errors
    /// As [`SinglePlan::new`]; [`NnError::LayoutMismatch`] when a recorded layout is not one
    /// the planner could have chosen for this model (the record belongs to another model or
    /// was altered).
    pub fn with_layouts(model: &Model, layouts: &Layouts) -> Result<Self, NnError> {
        Self::plan(model, layouts.slots, Some(layouts))
    }

    /// Plans `model` for `slots`: every candidate input frame (or only the recorded one),
    /// and the cheapest plan kept.
    fn plan(model: &Model, slots: usize, fixed: Option<&Layouts>) -> Result<Self, NnError> {
        if !slots.is_power_of_two() {
            return Err(NnError::Mismatch {
                what: "slots per ciphertext",
                expected: "a power of two".into(),
                found: slots.to_string(),
            });
        }
        let stages = stages::stages(model)?;
        // The client packs the input, so its frame is free: a row stride padded to a power
        // of two aligns the kernel offsets with the baby steps. Every candidate frame is
        // planned through the whole network and the cheapest kept.
        let [c, h, w] = model.input_shape;
        let mut frames = vec![(h, w), (h, w.next_power_of_two())];
        frames.push((h.next_power_of_two(), w.next_power_of_two()));
        frames.dedup();
        if let Some(fixed) = fixed {
            if !frames.contains(&fixed.input_frame) {
                return Err(NnError::LayoutMismatch {
                    stage: "input".into(),
                    layout: format!("frame {:?}", fixed.input_frame),
                });
            }
            frames = vec![fixed.input_frame];
        }
        let mut best: Option<(usize, Self)> = None;
        let mut first_err = None;
        for frame in frames {
            let grid = Grid {
                chw: [c, h, w],
                gap: (1, 1),
                frame,
            };
            match Self::with_input(model, &stages, slots, grid, fixed.map(|f| &f.stages[..])) {
                Ok((cost, plan)) => {
                    if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                        best = Some((cost, plan));
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match (best, first_err) {
            (Some((_, plan)), _) => Ok(plan),
            (None, Some(e)) => Err(e),
            (None, None) => Err(NnError::Internal("no input layout".into())),
        }
    }

    /// Plans every stage for an input packed as `input_grid`; returns the estimated cost.
    fn with_input(
        model: &Model,
        stages: &[Stage],
        slots: usize,
        input_grid: Grid,
        fixed: Option<&[StageLayout]>,
    ) -> Result<(usize, Self), NnError> {
        let input_frame = input_grid.frame;
        let mut chosen = Vec::new();
        let mut total = 0;
        if !input_grid.fits(slots) {
            return Err(NnError::TooFewSlots {
                what: format!(
                    "an input channel of {}×{}",
                    model.input_shape[1], model.input_shape[2]
                ),
                slots,
            });
        }
        let input = input_grid.positions(slots);
        // Per value (0: the input, `i + 1`: stage `i`'s output): its grid, pending map and
        // positions.
        let mut grids: Vec<Option<Grid>> = vec![Some(input_grid)];
        let mut maps = vec![Map::IDENTITY];
        let mut values: Vec<Vec<usize>> = vec![input.clone()];
        let mut linear = BTreeMap::new();
        for (i, stage) in stages.iter().enumerate() {
            let (grid, map, current) = match &stage.op {
                StageOp::Poly(act) => {
                    let v = stage.sources.first().copied().unwrap_or(0);
                    let applied = act.apply(&maps[v], values[v].len()).map_err(|why| {
                        NnError::NotSupported {
                            node: stage.name.clone(),
                            op: "Poly",
                            packing: "single-image",
                            why: why.into(),
                        }
                    })?;
                    (grids[v], applied.map, values[v].clone())
                }
                StageOp::Linear { rows, strides } => {
                    let current = concat_positions(|v| values[v].as_slice(), &stage.sources, slots);
                    let in_cts = layout::cts_of(&current, slots);
                    let mut candidates: Vec<(Target, String, Option<Grid>)> = Vec::new();
                    if let &[c, h, w] = stage.shape.as_slice() {
                        let chw = [c, h, w];
                        let mut grids_to_try = Vec::new();
                        for (&v, stride) in stage.sources.iter().zip(strides) {
                            if let Some(g) = grids[v] {
                                grids_to_try.push(Grid {
                                    chw,
                                    gap: (g.gap.0 * stride.0, g.gap.1 * stride.1),
                                    frame: g.frame,
                                });
                                grids_to_try.push(Grid {
                                    chw,
                                    gap: g.gap,
                                    frame: g.frame,
                                });
                            }
                        }
                        grids_to_try.push(Grid::dense(chw));
                        let mut seen = Vec::new();
                        for g in grids_to_try.into_iter().filter(|g| g.fits(slots)) {
                            if seen.contains(&g) {
                                continue;
                            }
                            seen.push(g);
                            candidates.push((
                                Target::Place(g.positions(slots)),
                                g.describe(slots),
                                Some(g),
                            ));
                        }
                    } else {
                        let n = rows.len();
                        candidates.push((
                            Target::Place((0..n).collect()),
                            format!("vector of {n}"),
                            None,
                        ));
                        let m = n.next_power_of_two();
                        if m < slots {
                            candidates.push((
                                Target::Summed { m },
                                format!("vector of {n}, partial sums mod {m}"),
                                None,
                            ));
                        }
                    }
                    if let Some(fixed) = fixed {
                        let want = fixed.get(chosen.len()).copied();
                        candidates.retain(|(t, _, g)| Some(stage_layout(t, g.as_ref())) == want);
                        if candidates.is_empty() {
                            return Err(NnError::LayoutMismatch {
                                stage: stage.name.clone(),
                                layout: format!("{want:?}"),
                            });
                        }
                    }
                    let mut best: Option<(usize, LinearPlan, Option<Grid>)> = None;
                    for (target, describe, g) in candidates {
                        let (cost, plan) = price(target, describe, rows, &current, in_cts, slots);
                        if best.as_ref().is_none_or(|(c, _, _)| cost < *c) {
                            best = Some((cost, plan, g));
                        }
                    }
                    let (cost, plan, g) = best.ok_or_else(|| NnError::TooFewSlots {
                        what: format!("no layout of '{}' ({:?})", stage.name, stage.shape),
                        slots,
                    })?;
                    total += cost;
                    chosen.push(stage_layout(&plan.target, g.as_ref()));
                    let out = plan.target.positions(rows.len());
                    linear.insert(i, plan);
                    (g, Map::IDENTITY, out)
                }
            };
            grids.push(grid);
            maps.push(map);
            values.push(current);
        }
        values.remove(0);
        let positions = values;
        let plan = Self {
            model: model.clone(),
            stages: stages.to_vec(),
            slots,
            input,
            positions,
            linear,
            maps,
            cost: total,
            layouts: Layouts {
                slots,
                input_frame,
                stages: chosen,
            },
            refreshes: BTreeMap::new(),
        };
        if fixed.is_some_and(|f| f.len() != plan.layouts.stages.len()) {
            return Err(NnError::LayoutMismatch {
                stage: "(all)".into(),
                layout: "a different number of linear stages".into(),
            });
        }
        Ok((total, plan))
    }

    /// The stages as the level pass sees them ([`crate::compile::levels`]).
    pub fn level_stages(&self) -> Vec<crate::compile::levels::Stage> {
        use crate::compile::levels::{Stage as LevelStage, StageKind};
        self.stages
            .iter()
            .enumerate()
            .map(|(i, s)| LevelStage {
                name: s.name.clone(),
                inputs: s.sources.clone(),
                cts: layout::cts_of(
                    self.positions.get(i).map_or(&[][..], Vec::as_slice),
                    self.slots,
                ),
                kind: match &s.op {
                    StageOp::Linear { .. } => StageKind::Linear,
                    op if op.squares() => StageKind::Square,
                    StageOp::Poly(_) => StageKind::Keep,
                },
            })
            .collect()
    }

    /// The plan with a refresh (bootstrapping) after every stage of `levels.refreshes()`,
    /// whose slots are at most `bound` in magnitude: encoding and evaluation then follow
    /// those levels, at the level the scheme's refresh gives back.
    pub fn with_refreshes(
        mut self,
        levels: &crate::compile::levels::LevelPlan,
        bound: f64,
    ) -> Self {
        self.refreshes = levels.refreshes().into_iter().map(|i| (i, bound)).collect();
        self
    }

    /// Stages whose output is refreshed, with the bound on its slots.
    pub fn refreshes(&self) -> &BTreeMap<usize, f64> {
        &self.refreshes
    }

    /// The layouts the planner chose: with the model, all [`SinglePlan::with_layouts`] needs.
    pub fn layouts(&self) -> &Layouts {
        &self.layouts
    }

    /// Estimated cost of one evaluation of the linear stages, in plaintext products (a
    /// hoisted rotation counted as 6, any other rotation as 12): the planner's objective.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Slots of every ciphertext.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Levels the evaluation consumes (see [`depth`]).
    pub fn depth(&self) -> usize {
        levels(&self.stages)
    }

    /// The planned model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Number of input neurons (`C·H·W`).
    pub fn inputs(&self) -> usize {
        self.input.len()
    }

    /// Flat positions of the input's values (ciphertext `p / slots`, slot `p % slots`).
    pub fn input_positions(&self) -> &[usize] {
        &self.input
    }

    /// Flat positions of the logits.
    pub fn output_positions(&self) -> &[usize] {
        self.positions.last().unwrap_or(&self.input)
    }

    /// Ciphertexts an encrypted image takes.
    pub fn input_cts(&self) -> usize {
        layout::cts_of(&self.input, self.slots)
    }

    /// Relinearizations of one evaluation: one per ciphertext of every squared activation
    /// (each about the cost of a rotation, which [`SinglePlan::cost`] leaves out).
    pub fn relinearizations(&self) -> usize {
        self.stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.op.squares())
            .map(|(i, _)| layout::cts_of(&self.input_of(i), self.slots))
            .sum()
    }

    /// Ciphertexts one image's output (the logits) occupies.
    pub fn output_cts(&self) -> usize {
        layout::cts_of(self.positions.last().unwrap_or(&self.input), self.slots)
    }

    /// The largest magnitude any slot takes while the plan runs on `image`, from the
    /// cleartext model: the input, every linear stage's output (and, for partial sums, the
    /// copies of each sum without its bias in the other slots of its residue class), every
    /// square (under the affine map it carries, `slot = (value − γ) / a`) and the `δ²` a
    /// square leaves in unused slots. Single-image parameters are designed for magnitudes
    /// below 2^[`VALUE_BOUND_BITS`]: the outputs are decrypted at the base prime, and the
    /// hidden stages keep the same margin.
    ///
    /// # Errors
    /// Wrong image shape; a value that is not finite.
    pub fn max_slot_magnitude(&self, image: &crate::Tensor) -> Result<f64, NnError> {
        Ok(self.slot_magnitudes(image)?.0)
    }

    /// The largest magnitude of the slots refreshed while the plan runs on `image` (what
    /// the refreshes' bound must hold; 0 without refreshes).
    ///
    /// # Errors
    /// As [`SinglePlan::max_slot_magnitude`].
    pub fn refresh_magnitude(&self, image: &crate::Tensor) -> Result<f64, NnError> {
        Ok(self.magnitudes(image)?.1)
    }

    /// [`SinglePlan::max_slot_magnitude`] and [`SinglePlan::refresh_magnitude`] from one
    /// cleartext run.
    ///
    /// # Errors
    /// As [`SinglePlan::max_slot_magnitude`].
    pub fn magnitudes(&self, image: &crate::Tensor) -> Result<(f64, f64), NnError> {
        let (max, per_value) = self.slot_magnitudes(image)?;
        let refreshed = self
            .refreshes
            .keys()
            .filter_map(|&i| per_value.get(i + 1))
            .fold(0.0, |m: f64, &v| m.max(v));
        Ok((max, refreshed))
    }

    /// The largest slot magnitude over the whole run, and of every value's slots (0: the
    /// input, `i + 1`: stage `i`'s output).
    fn slot_magnitudes(&self, image: &crate::Tensor) -> Result<(f64, Vec<f64>), NnError> {
        let values = crate::exec::run_all(&self.model, image)?;
        let mut max = 0.0f64;
        let mut stage_max = 0.0f64;
        let mut per_value = Vec::with_capacity(self.stages.len() + 1);
        let mut see = |v: f64, what: &str, stage_max: &mut f64| {
            if !v.is_finite() {
                return Err(NnError::OutOfRange {
                    node: what.to_string(),
                    value: v,
                    bound: f64::MAX,
                    what: "finite value",
                });
            }
            max = max.max(v.abs());
            *stage_max = stage_max.max(v.abs());
            Ok(())
        };
        for &v in image.data() {
            see(v, "input", &mut stage_max)?;
        }
        per_value.push(stage_max);
        for (i, stage) in self.stages.iter().enumerate() {
            stage_max = 0.0;
            let out = values.get(stage.node).ok_or_else(|| {
                NnError::Internal(format!("'{}' has no cleartext value", stage.name))
            })?;
            let map = self.stage_map(i);
            let map = map.as_ref();
            match &stage.op {
                StageOp::Linear { rows, .. } => {
                    let summed = self
                        .linear
                        .get(&i)
                        .is_some_and(|p| matches!(p.target, Target::Summed { .. }));
                    for (row, &v) in rows.iter().zip(out.data()) {
                        see(v, &stage.name, &mut stage_max)?;
                        if summed {
                            see(v - folded_bias_map(row, map), &stage.name, &mut stage_max)?;
                        }
                    }
                }
                StageOp::Poly(act) => {
                    let n = self.input_of(i).len();
                    let applied = act.apply(map, n).map_err(|why| NnError::NotSupported {
                        node: stage.name.clone(),
                        op: "Poly",
                        packing: "single-image",
                        why: why.into(),
                    })?;
                    let Some(shift) = applied.shift else {
                        // Not squared: the same slots as its input's.
                        let src = stage.sources.first().copied().unwrap_or(0);
                        per_value.push(per_value.get(src).copied().unwrap_or(0.0));
                        continue;
                    };
                    if let Shift::Uniform(delta) = shift {
                        // Unused slots are shifted and squared too (per-neuron shifts leave
                        // them at zero).
                        see(delta * delta, &stage.name, &mut stage_max)?;
                    }
                    // The square's slots, from its input's: `(slot + δ)²` with
                    // `slot = (value − γ) / a` (the stage may square only part of the
                    // model's activation, whose value is not the slot's).
                    let src = stage.sources.first().copied().unwrap_or(0);
                    let input = match src.checked_sub(1) {
                        None => Some(image),
                        Some(k) => self.stages.get(k).and_then(|s| values.get(s.node)),
                    }
                    .ok_or_else(|| {
                        NnError::Internal(format!("'{}' has no cleartext input", stage.name))
                    })?;
                    for (j, &v) in input.data().iter().enumerate() {
                        let (a, gamma) = map.at(j);
                        let delta = match &shift {
                            Shift::Uniform(d) => *d,
                            Shift::PerNeuron(d) => d.get(j).copied().unwrap_or(0.0),
                        };
                        let slot = (v - gamma) / a + delta;
                        see(slot * slot, &stage.name, &mut stage_max)?;
                    }
                }
            }
            per_value.push(stage_max);
        }
        Ok((max, per_value))
    }

    /// The rotation steps evaluation needs (request them at key generation).
    pub fn rotations(&self) -> BTreeSet<i64> {
        self.rotations_by_stage().into_values().flatten().collect()
    }

    /// The rotation steps of every linear stage, by stage index: keys restricted to the
    /// level a stage runs at serve it.
    pub fn rotations_by_stage(&self) -> BTreeMap<usize, BTreeSet<i64>> {
        self.linear
            .iter()
            .map(|(&i, p)| {
                let mut r = hecnn_ckks::block_rotations(&p.indices, self.slots);
                r.extend(p.target.sum_steps(self.slots));
                (i, r)
            })
            .collect()
    }

    /// What the planner chose for every linear stage.
    pub fn layers(&self) -> Vec<LayerReport> {
        self.linear
            .iter()
            .map(|(&i, p)| {
                let (babies, giants) = hecnn_ckks::block_rotation_counts(&p.indices, self.slots);
                LayerReport {
                    stage: i,
                    name: self.stages[i].name.clone(),
                    layout: p.layout.clone(),
                    cts: (p.in_cts, p.out_cts),
                    diagonals: p.diagonals(),
                    rotations: (babies, giants, p.target.sum_steps(self.slots).len()),
                }
            })
            .collect()
    }

    /// Encodes the plan's transforms and biases for inputs at `top_level` and `scale` (done
    /// once per model and key set; reused for every image), in any [`Scheme`].
    ///
    /// # Errors
    /// Too few levels, more slots than the parameters have, encoding errors.
    pub fn encode<S: Scheme>(
        &self,
        s: &S,
        top_level: usize,
        scale: f64,
    ) -> Result<EncodedSingle<S::Transform, S::Pt>, NnError> {
        self.lower(s, top_level, scale, Lowering::Eager)
    }

    /// Lowers the plan for inputs at `top_level` and `scale`: the levels and scales of
    /// every stage and the activations' shift plaintexts, with the linear stages' diagonals
    /// encoded now ([`Lowering::Eager`], as [`SinglePlan::encode`]) or while each image
    /// runs, one stage at a time ([`Lowering::OnTheFly`]).
    ///
    /// # Errors
    /// As [`SinglePlan::encode`].
    pub fn lower<S: Scheme>(
        &self,
        s: &S,
        top_level: usize,
        scale: f64,
        lowering: Lowering,
    ) -> Result<EncodedSingle<S::Transform, S::Pt>, NnError> {
        if self.slots > s.max_slots() {
            return Err(NnError::Mismatch {
                what: "slots per ciphertext (use a larger ring degree)",
                expected: format!("at least {} (the plan's)", self.slots),
                found: s.max_slots().to_string(),
            });
        }
        if top_level < self.depth() && self.refreshes.is_empty() {
            return Err(NnError::Levels {
                what: "the model".into(),
                needed: self.depth(),
                have: top_level,
            });
        }
        let slots = self.slots;
        let input_scale = scale;
        // Level and scale of every value, as the evaluation will have them.
        let mut at: Vec<(usize, f64)> = vec![(top_level, scale)];
        let mut transforms = BTreeMap::new();
        let mut shifts = BTreeMap::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let err = |source| NnError::Encrypted {
                node: stage.name.clone(),
                source,
            };
            let (mut level, mut scale) = self.stage_input_level(i, &at)?;
            if level == 0 && (stage.op.squares() || matches!(stage.op, StageOp::Linear { .. })) {
                return Err(NnError::OutOfLevels {
                    stage: stage.name.clone(),
                    index: i,
                    depth: self.depth(),
                    levels: top_level,
                });
            }
            match &stage.op {
                StageOp::Poly(act) => {
                    let input = self.input_of(i);
                    let applied = act.apply(&self.stage_map(i), input.len()).map_err(|why| {
                        NnError::Internal(format!("'{}' was planned: {why}", stage.name))
                    })?;
                    if let Some(Shift::PerNeuron(deltas)) = applied.shift {
                        // Per-neuron shifts (per-channel activations) are a plaintext at the
                        // square's input, zero in unused slots.
                        let mut v = vec![vec![0.0; slots]; layout::cts_of(&input, slots)];
                        for (&p, d) in input.iter().zip(deltas) {
                            v[p / slots][p % slots] = d;
                        }
                        let pts = v
                            .iter()
                            .map(|d| s.encode(d, level, scale, slots))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(err)?;
                        shifts.insert(i, pts);
                    }
                    if stage.op.squares() {
                        scale = scale * scale / s.q_at(level);
                        level -= 1;
                    }
                }
                StageOp::Linear { .. } => {
                    let lowered = match lowering {
                        Lowering::Eager => {
                            let (lt, bias) =
                                self.encode_linear(s, i, level, scale, input_scale, false)?;
                            Lowered::Ready(lt, bias)
                        }
                        Lowering::OnTheFly => Lowered::OnTheFly { level, scale },
                    };
                    transforms.insert(i, lowered);
                    scale = input_scale;
                    level -= 1;
                }
            }
            if self.refreshes.contains_key(&i) {
                // Refreshed: read at the refresh's level and scale.
                (level, scale) = s.refresh_output().ok_or_else(|| {
                    err(SchemeError::Unsupported {
                        op: "refresh (bootstrapping)",
                        scheme: s.name(),
                    })
                })?;
            }
            at.push((level, scale));
        }
        Ok(EncodedSingle {
            transforms,
            shifts,
            top_level,
            scale: input_scale,
        })
    }

    /// Encodes linear stage `i`'s diagonals for an input at `level` and `scale` (its output
    /// at `input_scale`, the nominal scale) and its biases; `deferred` for a transform used
    /// once ([`Scheme::defer_transform`]: encoded a few diagonals at a time as it runs).
    fn encode_linear<S: Scheme>(
        &self,
        s: &S,
        i: usize,
        level: usize,
        scale: f64,
        input_scale: f64,
        deferred: bool,
    ) -> Result<EncodedStage<S::Transform, S::Pt>, NnError> {
        let stage = &self.stages[i];
        let StageOp::Linear { rows, .. } = &stage.op else {
            return Err(NnError::Internal(format!("'{}' is not linear", stage.name)));
        };
        let slots = self.slots;
        let err = |source| NnError::Encrypted {
            node: stage.name.clone(),
            source,
        };
        let plan = self
            .linear
            .get(&i)
            .ok_or_else(|| NnError::Internal(format!("'{}' was not planned", stage.name)))?;
        let map = self.stage_map(i);
        let map = map.as_ref();
        // The input's pending multipliers go into the weights: one for all, or
        // one per input neuron.
        let (a, folded);
        let weights = match map.uniform() {
            Some((u, _)) => {
                a = u;
                rows.as_slice()
            }
            None => {
                a = 1.0;
                folded = fold_multipliers(rows, map);
                folded.as_slice()
            }
        };
        let mut diagonals: BlockDiagonals = BTreeMap::new();
        plan.target
            .entries(weights, &self.input_of(i), slots, |v, u, k, at, w| {
                diagonals
                    .entry((v, u))
                    .or_default()
                    .entry(k)
                    .or_insert_with(|| vec![Complex64::new(0.0, 0.0); slots])[at]
                    .re += w * a;
            });
        // An output ciphertext whose rows are all zero (pruned channels) still
        // gets a block, a zero diagonal, so the transform produces it.
        for v in 0..plan.out_cts {
            if !diagonals.keys().any(|&(w, _)| w == v) {
                diagonals.insert(
                    (v, 0),
                    BTreeMap::from([(0, vec![Complex64::new(0.0, 0.0); slots])]),
                );
            }
        }
        // Diagonals at `q_level · nominal / input scale`: the output comes back at
        // the nominal scale, whatever the squares before did to it (their
        // `scale² / q` drifts away from it, doubling its distance every square).
        let (shape, diagonal_scale) = (
            (plan.out_cts, plan.in_cts),
            s.q_at(level) * input_scale / scale,
        );
        let lt = if deferred {
            s.defer_transform(diagonals, shape, slots, level, diagonal_scale)
        } else {
            s.encode_transform(&diagonals, shape, slots, level, diagonal_scale)
        }
        .map_err(err)?;
        let level = level.checked_sub(1).ok_or_else(|| NnError::OutOfLevels {
            stage: stage.name.clone(),
            index: i,
            depth: self.depth(),
            levels: 0,
        })?;
        let scale = input_scale;
        let mut bias = vec![vec![0.0; slots]; plan.out_cts];
        for (row, &p) in rows.iter().zip(&self.positions[i]) {
            bias[p / slots][p % slots] = folded_bias_map(row, map);
        }
        let bias = bias
            .iter()
            .map(|b| {
                if b.iter().all(|&v| v == 0.0) {
                    Ok(None)
                } else {
                    s.encode(b, level, scale, slots).map(Some)
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok((lt, bias))
    }

    /// Level and scale of stage `i`'s input, given every earlier value's (`at[v]`): its
    /// sources' lowest level (after a refresh, the refresh's), at the scale of the sources
    /// there; sources above it are brought down to that level and scale (one rescale each,
    /// from their spare levels).
    ///
    /// # Errors
    /// [`NnError::NotSupported`] for sources at that level with different scales.
    fn stage_input_level(&self, i: usize, at: &[(usize, f64)]) -> Result<(usize, f64), NnError> {
        let stage = &self.stages[i];
        let of = |v: usize| {
            at.get(v)
                .copied()
                .ok_or_else(|| NnError::Internal(format!("'{}' reads a later value", stage.name)))
        };
        let mut level = usize::MAX;
        let mut scale = 1.0;
        for &v in &stage.sources {
            let (l, sc) = of(v)?;
            if l < level {
                (level, scale) = (l, sc);
            }
        }
        for &v in &stage.sources {
            let (l, sc) = of(v)?;
            if l == level && sc != scale {
                return Err(NnError::NotSupported {
                    node: stage.name.clone(),
                    op: "linear stage",
                    packing: "single-image",
                    why: format!(
                        "it reads values at the same level {level} with different scales \
                         (2^{:.3} and 2^{:.3})",
                        scale.log2(),
                        sc.log2()
                    ),
                });
            }
        }
        Ok((level, scale))
    }

    /// The output's pending map, which the client applies after decryption: one `(a, γ)`
    /// for every logit.
    fn output_map(&self) -> Result<(f64, f64), NnError> {
        match self.maps.last() {
            None => Ok((1.0, 0.0)),
            Some(map) => map.uniform().ok_or_else(|| NnError::NotSupported {
                node: self
                    .stages
                    .last()
                    .map_or_else(String::new, |s| s.name.clone()),
                op: "Poly",
                packing: "single-image",
                why: "a per-channel activation as the model's output: end the model with a \
                      linear layer"
                    .into(),
            }),
        }
    }

    /// Flat positions of value `v`'s neurons (0: the input, `i + 1`: stage `i`'s output).
    fn value_positions(&self, v: usize) -> &[usize] {
        match v.checked_sub(1) {
            None => &self.input,
            Some(i) => self.positions.get(i).map_or(&[], Vec::as_slice),
        }
    }

    /// Flat positions of stage `i`'s input neurons: its sources' ciphertexts one after the
    /// other.
    fn input_of(&self, i: usize) -> std::borrow::Cow<'_, [usize]> {
        match self.stages.get(i).map(|s| s.sources.as_slice()) {
            Some(&[v]) => std::borrow::Cow::Borrowed(self.value_positions(v)),
            Some(sources) => std::borrow::Cow::Owned(concat_positions(
                |v| self.value_positions(v),
                sources,
                self.slots,
            )),
            None => std::borrow::Cow::Borrowed(&[]),
        }
    }

    /// The pending map of stage `i`'s input neurons (its sources' maps one after the other).
    fn stage_map(&self, i: usize) -> std::borrow::Cow<'_, Map> {
        use std::borrow::Cow;
        let sources = self.stages.get(i).map_or(&[][..], |s| s.sources.as_slice());
        let map = |v: usize| self.maps.get(v).unwrap_or(&Map::IDENTITY);
        if let [v] = sources {
            return Cow::Borrowed(map(*v));
        }
        let first = sources.first().map(|&v| map(v).uniform());
        if let Some(Some(u)) = first
            && sources.iter().all(|&v| map(v).uniform() == Some(u))
        {
            return Cow::Owned(Map::Uniform(u.0, u.1));
        }
        let (mut a, mut g) = (Vec::new(), Vec::new());
        for &v in sources {
            for j in 0..self.value_positions(v).len() {
                let (aj, gj) = map(v).at(j);
                a.push(aj);
                g.push(gj);
            }
        }
        Cow::Owned(Map::PerNeuron(a, g))
    }

    /// Encrypts one image (`C×H×W` values) into the plan's input layout at `level`.
    ///
    /// # Errors
    /// Wrong image size, encoding or encryption errors.
    pub fn encrypt_image<B: Backend>(
        &self,
        eval: &Evaluator<B>,
        image: &crate::Tensor,
        level: usize,
        encrypt: impl FnMut(&Plaintext<B>) -> Result<Ciphertext<B>, CkksError>,
    ) -> Result<Vec<Ciphertext<B>>, NnError> {
        crate::compile::client::encrypt_single(eval, self.slots, &self.input, image, level, encrypt)
    }

    /// Evaluates the plan on one encrypted image (or its cleartext stand-in) in any
    /// [`Scheme`]; returns the output ciphertexts and the map from their decoded slots to the
    /// logits.
    ///
    /// # Errors
    /// Level, slot or key errors (with the stage name).
    pub fn run<S: Scheme>(
        &self,
        s: &S,
        encoded: &EncodedSingle<S::Transform, S::Pt>,
        input: Vec<S::Ct>,
    ) -> Result<(Vec<S::Ct>, OutputMap), NnError> {
        self.run_observed(s, encoded, input, &mut |_| {})
    }

    /// As [`SinglePlan::run`], calling `observe` after every stage, and after every
    /// refresh, with the time it took.
    ///
    /// # Errors
    /// As [`SinglePlan::run`].
    pub fn run_observed<S: Scheme>(
        &self,
        s: &S,
        encoded: &EncodedSingle<S::Transform, S::Pt>,
        input: Vec<S::Ct>,
        observe: &mut (dyn FnMut(StageTime) + Send),
    ) -> Result<(Vec<S::Ct>, OutputMap), NnError> {
        if input.len() != self.input_cts()
            || input.iter().any(|c| {
                s.level(c) != encoded.top_level
                    || s.slots(c) != self.slots
                    || s.scale(c) != encoded.scale
            })
        {
            return Err(NnError::Mismatch {
                what: "input ciphertexts",
                expected: format!(
                    "{} at level {} with {} slots at scale 2^{:.1}",
                    self.input_cts(),
                    encoded.top_level,
                    self.slots,
                    encoded.scale.log2()
                ),
                found: format!(
                    "{} at levels {:?}",
                    input.len(),
                    input.iter().map(|c| s.level(c)).collect::<BTreeSet<_>>()
                ),
            });
        }
        // Every value's ciphertexts (0: the input, `i + 1`: stage `i`'s output), dropped
        // after their last reader.
        let mut last_read = vec![0usize; self.stages.len() + 1];
        for (i, stage) in self.stages.iter().enumerate() {
            for &v in &stage.sources {
                last_read[v] = i;
            }
        }
        let mut held: Vec<Option<Vec<S::Ct>>> = Vec::with_capacity(self.stages.len() + 1);
        held.push(Some(input));
        for (i, stage) in self.stages.iter().enumerate() {
            let err = |source| NnError::Encrypted {
                node: stage.name.clone(),
                source,
            };
            let mut parts = Vec::with_capacity(stage.sources.len());
            for (k, &v) in stage.sources.iter().enumerate() {
                // Taken at its last reading, cloned before.
                let cts = if last_read[v] == i && !stage.sources[k + 1..].contains(&v) {
                    held.get_mut(v).and_then(Option::take)
                } else {
                    held.get(v).and_then(Clone::clone)
                };
                parts.push(cts.ok_or_else(|| {
                    NnError::Internal(format!("'{}' reads a value no longer held", stage.name))
                })?);
            }
            let clock = std::time::Instant::now();
            // Aligned to the lowest source's level and scale, as `encode` assumes.
            let values = align(s, parts).map_err(err)?;
            let out = match &stage.op {
                StageOp::Linear { .. } => {
                    let now;
                    let (lt, bias) = match encoded.transforms.get(&i) {
                        Some(Lowered::Ready(lt, bias)) => (lt, bias),
                        Some(&Lowered::OnTheFly { level, scale }) => {
                            now = self.encode_linear(s, i, level, scale, encoded.scale, true)?;
                            (&now.0, &now.1)
                        }
                        None => {
                            return Err(NnError::Internal(format!(
                                "'{}' was not lowered",
                                stage.name
                            )));
                        }
                    };
                    let mut out = s.transform(&values, lt).map_err(err)?;
                    if let Some(plan) = self.linear.get(&i) {
                        for step in plan.target.sum_steps(self.slots) {
                            for ct in &mut out {
                                let r = s.rotate(ct, step).map_err(err)?;
                                s.add_assign(ct, &r).map_err(err)?;
                            }
                        }
                    }
                    for (ct, b) in out.iter_mut().zip(bias) {
                        if let Some(pt) = b {
                            *ct = s.add_plain(ct, pt).map_err(err)?;
                        }
                    }
                    out
                }
                StageOp::Poly(act) => {
                    let applied = act
                        .apply(&self.stage_map(i), self.input_of(i).len())
                        .map_err(|why| NnError::NotSupported {
                            node: stage.name.clone(),
                            op: "Poly",
                            packing: "single-image",
                            why: why.into(),
                        })?;
                    let shifts = encoded.shifts.get(&i);
                    match applied.shift {
                        None => values,
                        Some(shift) => values
                            .iter()
                            .enumerate()
                            .map(|(u, ct)| {
                                let u = match (&shift, shifts) {
                                    (Shift::Uniform(d), _) if *d != 0.0 => s.add_const(ct, *d)?,
                                    (Shift::Uniform(_), _) => ct.clone(),
                                    (Shift::PerNeuron(_), Some(pts)) => {
                                        let pt = pts.get(u).ok_or(SchemeError::Operands(
                                            "fewer shift plaintexts than ciphertexts",
                                        ))?;
                                        s.add_plain(ct, pt)?
                                    }
                                    (Shift::PerNeuron(_), None) => {
                                        return Err(SchemeError::Operands(
                                            "the per-channel shifts were not encoded",
                                        ));
                                    }
                                };
                                let mut sq = s.mul_relin(&u, &u)?;
                                s.rescale_assign(&mut sq)?;
                                Ok(sq)
                            })
                            .collect::<Result<Vec<_>, SchemeError>>()
                            .map_err(err)?,
                    }
                }
            };
            let time = |kind, cts, clock: std::time::Instant| StageTime {
                stage: i,
                name: stage.name.clone(),
                kind,
                cts,
                seconds: clock.elapsed().as_secs_f64(),
            };
            observe(time(
                match stage.op {
                    StageOp::Linear { .. } => StageTimeKind::Linear,
                    StageOp::Poly(_) => StageTimeKind::Activation,
                },
                out.len(),
                clock,
            ));
            let out = match self.refreshes.get(&i) {
                Some(&bound) => {
                    let clock = std::time::Instant::now();
                    let out = out
                        .iter()
                        .map(|ct| s.refresh(ct, bound))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(err)?;
                    observe(time(StageTimeKind::Refresh, out.len(), clock));
                    out
                }
                None => out,
            };
            held.push(Some(out));
        }
        let values = held
            .pop()
            .flatten()
            .ok_or_else(|| NnError::Internal("the evaluation produced no output".into()))?;
        let (a, gamma) = self.output_map()?;
        Ok((values, OutputMap { a, gamma }))
    }

    /// Decrypts the output ciphertexts into the logits.
    ///
    /// # Errors
    /// Decryption or decoding errors, the wrong number of ciphertexts.
    pub fn decrypt_output<B: Backend>(
        &self,
        eval: &Evaluator<B>,
        out: &[Ciphertext<B>],
        map: OutputMap,
        decrypt: impl FnMut(&Ciphertext<B>) -> Result<Plaintext<B>, CkksError>,
    ) -> Result<Vec<f64>, NnError> {
        crate::compile::client::decrypt_single(
            eval,
            self.slots,
            self.output_positions(),
            out,
            map,
            decrypt,
        )
    }
}

/// One linear stage encoded: its transform and one bias plaintext per output ciphertext
/// (`None` where every bias is zero).
type EncodedStage<T, P> = (T, Vec<Option<P>>);

/// Where one image's evaluation spent its time: one stage, or the refresh after it
/// ([`SinglePlan::run_observed`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StageTime {
    /// Stage index.
    pub stage: usize,
    /// Stage name (the model's nodes it covers).
    pub name: String,
    /// What ran.
    pub kind: StageTimeKind,
    /// Ciphertexts the stage produced (and a refresh refreshed).
    pub cts: usize,
    /// Seconds it took.
    pub seconds: f64,
}

/// What a [`StageTime`] measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageTimeKind {
    /// A linear stage (convolution, dense, pooling), its diagonals encoded on the fly
    /// included.
    Linear,
    /// An activation.
    Activation,
    /// The refresh (bootstrapping) of a stage's output.
    Refresh,
}

/// When a single-image plan's diagonals are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lowering {
    /// Once, before the first image: fastest per image, and every stage's diagonals held
    /// (HCNN's CIFAR-10 network: 8 GB at N = 2^14).
    #[default]
    Eager,
    /// Each linear stage's diagonals encoded when an image reaches it, a few giant steps at
    /// a time (under CKKS: [`hecnn_ckks::DEFERRED_CHUNK_BYTES`]), and dropped after: memory
    /// for one stage's diagonals as slot values, at the cost of encoding them for every
    /// image.
    OnTheFly,
}

/// A linear stage lowered: encoded, or what encoding it while an image runs needs.
enum Lowered<T, P> {
    Ready(T, Vec<Option<P>>),
    OnTheFly { level: usize, scale: f64 },
}

/// A single-image plan lowered for a scheme: every linear stage's diagonals as plaintexts at
/// their level and its biases (one plaintext per output ciphertext), or with
/// [`Lowering::OnTheFly`] the level and scale to encode them at while an image runs; the
/// activations' per-neuron shifts.
pub struct EncodedSingle<T, P> {
    transforms: BTreeMap<usize, Lowered<T, P>>,
    /// Per-neuron shifts of the squares of per-channel activations, by stage.
    shifts: BTreeMap<usize, Vec<P>>,
    top_level: usize,
    scale: f64,
}

/// Rows with their input's per-neuron multipliers folded into the weights (`w·a_j`).
fn fold_multipliers(rows: &[crate::linear::Row], map: &Map) -> Vec<crate::linear::Row> {
    rows.iter()
        .map(|r| crate::linear::Row {
            terms: r.terms.iter().map(|&(j, w)| (j, w * map.at(j).0)).collect(),
            bias: r.bias,
        })
        .collect()
}

/// The positions of `sources`' neurons as one transform reads them: each source's
/// ciphertexts after the previous sources'.
fn concat_positions<'a>(
    positions: impl Fn(usize) -> &'a [usize],
    sources: &[usize],
    slots: usize,
) -> Vec<usize> {
    let mut out = Vec::new();
    let mut cts = 0;
    for &v in sources {
        let p = positions(v);
        out.extend(p.iter().map(|&x| x + cts * slots));
        cts += layout::cts_of(p, slots);
    }
    out
}

/// The ciphertexts of a stage's sources as one list at one scale, the lowest source's:
/// sources above it at another scale are brought down to its level by [`Scheme::adjust`]
/// (one rescale from their spare levels); those at its scale are left for the transform
/// to drop. A single source is returned as it is.
fn align<S: Scheme>(s: &S, parts: Vec<Vec<S::Ct>>) -> Result<Vec<S::Ct>, SchemeError> {
    if parts.len() == 1 {
        return Ok(parts.into_iter().flatten().collect());
    }
    let Some((level, scale)) = parts
        .iter()
        .flatten()
        .map(|ct| (s.level(ct), s.scale(ct)))
        .min_by_key(|&(l, _)| l)
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for ct in parts.into_iter().flatten() {
        if s.level(&ct) > level && s.scale(&ct) != scale {
            out.push(s.adjust(&ct, level, scale)?);
        } else {
            out.push(ct);
        }
    }
    Ok(out)
}
