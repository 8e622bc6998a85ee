//! The compiler as a library: a model in, an immutable [`CompiledModel`] out, which splits
//! into the [`ClientSpec`] a data owner needs (parameters, input and output layouts, the
//! exact key requirements) and the [`ServerPlan`] an inference server runs.
//!
//! The passes, in order:
//! 1. **import**: [`crate::onnx`] (every unsupported operator reported at once);
//! 2. **rewrite**: [`crate::rewrite()`] (batch-norm folding, polynomial activations);
//! 3. **plan**: the packing ([`PackingRequest`]: batch, single or auto by the cost model of
//!    [`cost`]) and its layouts ([`BatchPlan`], [`SinglePlan`]);
//! 4. **levels and parameters**: [`params`] turns the plan's depth into a checked modulus
//!    chain (the one parameter generator) at the smallest ring degree that holds the plan;
//! 5. **lower**: the server encodes weights at their levels when it is built
//!    ([`Server::new`]); nothing is encoded in the artifact.
//!
//! A compiled model serializes with a format version and a checksum; loading it rebuilds
//! the plan from the recorded choices (a single-image plan's layouts are recorded, not
//! searched again) and checks the parameters against the plan's depth and slots.
//!
//! ```
//! use std::path::Path;
//! use hecnn_nn::compile::{self, Client, CompileOptions, PackingRequest, Server};
//! use hecnn_nn::{data, exec, onnx};
//! use hecnn_ring::{CpuBackend, Prng};
//!
//! // The bundled MNIST network and two of the bundled test digits.
//! let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
//! let model = onnx::import_onnx_file(&repo.join("models/hcnn-mnist.onnx"))?;
//! let digits = data::load_idx(
//!     &repo.join("data/sample/mnist-test-images.idx3-ubyte"),
//!     &repo.join("data/sample/mnist-test-labels.idx1-ubyte"),
//! )?;
//! let images = [digits.image(0), digits.image(1)];
//! let be = CpuBackend::new(0)?;
//! for packing in [PackingRequest::Batch, PackingRequest::Single] {
//!     // 128-bit security by default; batch packing at N = 2^14 (8,192 images a batch),
//!     // single-image packing at the smallest degree that holds its plan.
//!     let compiled = compile::compile(&model, &CompileOptions { packing, ..Default::default() })?;
//!     // The client makes keys, encrypts and decrypts; the server holds evaluation keys only.
//!     let client = Client::new(compiled.client_spec(), be.clone())?;
//!     let mut rng = Prng::from_entropy()?;
//!     let keys = client.keygen(&mut rng)?;
//!     let server = Server::new(compiled.server_plan(), keys.evaluation, be.clone())?;
//!     let inputs = client.encrypt(&keys.public, &images, &mut rng)?;
//!     let outputs = server.run(inputs, |_, _| {})?;
//!     let logits = client.decrypt(&keys.secret, &outputs)?;
//!     for (image, got) in images.iter().zip(&logits) {
//!         let want = exec::run(compiled.model(), image)?;
//!         assert_eq!(exec::argmax(got), exec::argmax(want.data()));
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod client;
pub mod cost;
pub(crate) mod envelope;
pub mod estimate;
pub mod levels;
pub mod params;
mod report;
mod server;

use std::path::Path;
use std::sync::Arc;

use hecnn_ckks::CkksParams;
use hecnn_rlwe::{KeyRequirements, ParamsLiteral, SecurityLevel};
use serde::{Deserialize, Serialize};

use crate::{
    Model, NnError, RewriteOptions, Tensor,
    batch::BatchPlan,
    exec::{self, argmax},
    single::{Layouts, SinglePlan},
};
pub use client::{
    Client, ClientSpec, EncryptedImages, ImagesHeader, ImagesKind, IoLayout, KeySet,
    MAX_IMAGES_BYTES, MAX_SINGLE_IMAGES, MAX_SPEC_BYTES,
};
pub use envelope::read_bounded;
pub use report::human_bytes;
pub use server::{Server, ServerPlan};

/// How images are packed into ciphertexts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackingKind {
    /// One image per slot (HCNN): thousands of images per evaluation, no rotation keys.
    Batch,
    /// One image densely packed into a few ciphertexts: linear layers by rotations.
    Single,
}

impl std::fmt::Display for PackingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Batch => "batch",
            Self::Single => "single-image",
        })
    }
}

/// The packing a compilation is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackingRequest {
    /// Batch packing.
    Batch,
    /// Single-image packing.
    Single,
    /// Whichever the cost model ([`cost::choose`]) expects to be faster for this many
    /// images sent together; a model only one packing can run gets that one.
    Auto {
        /// Images sent together.
        images: usize,
    },
}

/// What [`compile`] is asked to do.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// The packing.
    pub packing: PackingRequest,
    /// log2 of the ring degree in batch packing (a batch holds `2^(log_n − 1)` images);
    /// single-image packing takes the smallest degree from 2^13 to 2^16 that holds its plan.
    pub log_n: u32,
    /// Security level the parameters are checked against.
    pub security: SecurityLevel,
    /// Rewrites of non-polynomial operators.
    pub rewrite: RewriteOptions,
    /// Bootstrapping inside the network (single-image packing).
    pub bootstrapping: Bootstrapping,
    /// Levels between refreshes when bootstrapping (`None`: as many as the security level
    /// allows).
    pub refresh_levels: Option<usize>,
    /// log2 of the bound on the values bootstrapping refreshes (they are refreshed divided by
    /// it, so its error grows with it): default [`params::REFRESH_BOUND_BITS`], the bound
    /// every single-image value stays below; a calibrated model can take less.
    pub refresh_bound_bits: u32,
}

/// Bootstrapping inside the network, in single-image packing (batch packing never
/// refreshes: its depth is the model's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bootstrapping {
    /// Never: a plan deeper than one modulus chain holds is refused.
    Never,
    /// Only when the plan does not fit without it: no secure parameters hold its depth, or
    /// its keys and encoded weights would need more than [`AUTO_BOOTSTRAP_BYTES`] (ResNet-20
    /// without bootstrapping: 39 levels at N = 2^16, 52.6 GiB of keys alone).
    #[default]
    Auto,
    /// Always.
    Always,
}

/// Above this memory estimate ([`CompiledModel::memory_estimate`]) auto mode bootstraps.
pub const AUTO_BOOTSTRAP_BYTES: usize = 16 << 30;

/// How a compiled single-image plan bootstraps: the circuit's slots, the bound on the
/// values it refreshes (`2^bound_bits`), and the circuit's depth, ephemeral weight and
/// message ratio as compiled (a build whose circuit differs refuses the record rather than
/// run other levels under the same fingerprint). The parameters hold the circuit's levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    /// Slots of the bootstrapping circuit (the plan's).
    pub slots: usize,
    /// log2 of the bound on refreshed values.
    pub bound_bits: u32,
    /// Levels the circuit consumes.
    pub depth: usize,
    /// Hamming weight of its ephemeral secret.
    pub ephemeral_weight: usize,
    /// log2 of its message ratio.
    pub log_message_ratio: u32,
}

impl RefreshRecord {
    /// The record of this build's circuit for `slots` slots.
    ///
    /// # Errors
    /// A circuit that cannot be built for `slots`.
    pub fn new(slots: usize, bound_bits: u32) -> Result<Self, NnError> {
        let config = hecnn_ckks::BootstrapConfig::new(slots);
        Ok(Self {
            slots,
            bound_bits,
            depth: config.depth()?,
            ephemeral_weight: config.ephemeral_weight,
            log_message_ratio: config.log_message_ratio,
        })
    }

    /// The bootstrapping circuit.
    pub fn config(&self) -> hecnn_ckks::BootstrapConfig {
        hecnn_ckks::BootstrapConfig::new(self.slots)
    }

    /// Checks the record against this build's circuit, `params` and the level plan: the
    /// same circuit, its keys computable, and every refreshed value's scale times the bound
    /// within the message ratio (`q_0 / 2^ratio`).
    ///
    /// # Errors
    /// [`NnError::Mismatch`] naming what differs or the stage whose bound does not fit.
    fn check(&self, params: &CkksParams, levels: &levels::LevelPlan) -> Result<(), NnError> {
        let ours = Self::new(self.slots, self.bound_bits)?;
        if ours != *self {
            return Err(NnError::Mismatch {
                what: "bootstrapping circuit (compile the model again with this build)",
                expected: format!("{ours:?}"),
                found: format!("{self:?}"),
            });
        }
        if self.bound_bits > 20 {
            return Err(NnError::Mismatch {
                what: "refresh bound",
                expected: "at most 2^20".into(),
                found: format!("2^{}", self.bound_bits),
            });
        }
        let room = params.q_at(0).log2() - f64::from(self.log_message_ratio);
        for s in levels.stages.iter().filter(|s| s.refresh_after) {
            if s.log_scale_out + f64::from(self.bound_bits) > room {
                return Err(NnError::Mismatch {
                    what: "refresh bound (scale times bound above q_0 over the message ratio)",
                    expected: format!(
                        "at most 2^{} for '{}' at scale 2^{:.2}",
                        (room - s.log_scale_out).floor(),
                        s.name,
                        s.log_scale_out
                    ),
                    found: format!("2^{}", self.bound_bits),
                });
            }
        }
        Ok(())
    }

    /// Levels left between refreshes with `params`.
    ///
    /// # Errors
    /// [`NnError::Mismatch`] when the parameters cannot hold the circuit.
    pub fn levels(&self, params: &CkksParams) -> Result<usize, NnError> {
        let depth = self.config().depth()?;
        params
            .max_level()
            .checked_sub(depth)
            .filter(|&l| l >= 1)
            .ok_or_else(|| NnError::Mismatch {
                what: "bootstrapping levels",
                expected: format!("more than {depth} levels"),
                found: params.max_level().to_string(),
            })
    }
}

/// Bits of precision the packed simulator gives a refresh, relative to its bound: its error
/// is modelled as uniform in `±bound · 2^-20`, whose mean `bound · 2^-21` is what
/// bootstrapping measured at N = 2^16 with 2^15 slots (mean precision 20.9 bits,
/// bench/RESULTS.md §6c). The rare worse slots (down to 16.5 bits) are not modelled.
pub const SIMULATED_REFRESH_PRECISION_BITS: f64 = 20.0;

impl Default for CompileOptions {
    /// Batch packing at N = 2^14 (8,192 images per batch), 128-bit security, no rewrites of
    /// ReLU or max pooling.
    fn default() -> Self {
        Self {
            packing: PackingRequest::Batch,
            log_n: 14,
            security: SecurityLevel::Bits128,
            rewrite: RewriteOptions::default(),
            bootstrapping: Bootstrapping::Auto,
            refresh_levels: None,
            refresh_bound_bits: params::REFRESH_BOUND_BITS,
        }
    }
}

/// A plan in one of the packings.
#[derive(Debug)]
pub enum PackedPlan {
    /// Batch packing.
    Batch(BatchPlan),
    /// Single-image packing.
    Single(SinglePlan),
}

impl PackedPlan {
    /// The packing.
    pub fn kind(&self) -> PackingKind {
        match self {
            Self::Batch(_) => PackingKind::Batch,
            Self::Single(_) => PackingKind::Single,
        }
    }

    /// The rewritten model the plan runs.
    pub fn model(&self) -> &Model {
        match self {
            Self::Batch(p) => p.model(),
            Self::Single(p) => p.model(),
        }
    }

    /// Levels one evaluation consumes.
    pub fn depth(&self) -> usize {
        match self {
            Self::Batch(p) => p.depth(),
            Self::Single(p) => p.depth(),
        }
    }

    /// The evaluation keys the plan needs: relinearization, and single-image packing's
    /// rotations.
    pub fn key_requirements(&self) -> KeyRequirements {
        match self {
            Self::Batch(_) => KeyRequirements::relin(),
            Self::Single(p) => KeyRequirements::relin().with_rotations(p.rotations()),
        }
    }
}

/// A compiled model: the rewritten network, its plan in one packing and the checked
/// parameters the plan runs with. Immutable; serializable ([`CompiledModel::to_bytes`]).
#[derive(Debug, Clone)]
pub struct CompiledModel {
    name: String,
    plan: Arc<PackedPlan>,
    params: Arc<CkksParams>,
    /// Why the packing was chosen (auto mode), for reports.
    choice: Option<String>,
    /// The level pass's result.
    levels: levels::LevelPlan,
    /// How the plan bootstraps (single-image packing only).
    refresh: Option<RefreshRecord>,
    /// The evaluation keys the plan needs (bootstrapping's computed once: its transforms
    /// are built to find them).
    keys: KeyRequirements,
    fingerprint: [u8; 32],
}

/// Most levels between refreshes a compilation accepts (the RLWE layer takes at most 128
/// ciphertext primes, and bootstrapping needs its own).
pub const MAX_REFRESH_LEVELS: usize = 64;

/// Compiles `model`: rewrite, plan in the packing asked for, parameters. The model is not
/// changed; the compiled model is named after it.
///
/// # Errors
/// Unsupported or non-polynomial operators ([`NnError::NotPolynomial`] lists them all),
/// shapes that do not fit, [`NnError::NoParameters`] when no secure parameters run the plan
/// in the packing asked for (for auto: in either).
pub fn compile(model: &Model, opts: &CompileOptions) -> Result<CompiledModel, NnError> {
    if let Some(r) = opts.refresh_levels
        && !(2..=MAX_REFRESH_LEVELS).contains(&r)
    {
        // Refused before any parameter is made: a huge count would size prime lists by it.
        return Err(NnError::OutOfRange {
            node: "refresh_levels".into(),
            value: r as f64,
            bound: MAX_REFRESH_LEVELS as f64,
            what: "levels between refreshes (at least 2)",
        });
    }
    model.check_finite()?;
    let rewritten = crate::rewrite(model, &opts.rewrite)?;
    plan_rewritten(rewritten, opts)
}

/// Plans a rewritten model (see [`compile`]).
fn plan_rewritten(model: Model, opts: &CompileOptions) -> Result<CompiledModel, NnError> {
    let name = model.name.clone();
    let (plan, params, choice) = match opts.packing {
        PackingRequest::Batch => {
            let (plan, params) = batch_candidate(&model, opts)?;
            (PackedPlan::Batch(plan), params, None)
        }
        PackingRequest::Single => return single_compiled(model, opts),
        // Bootstrapping runs in single-image packing only: asked for, or the only way the
        // model runs, auto packing takes it.
        PackingRequest::Auto { .. } if opts.bootstrapping == Bootstrapping::Always => {
            return single_compiled(model, opts);
        }
        PackingRequest::Auto { images } => {
            let batch = batch_candidate(&model, opts);
            let single = single_candidate(&model, opts.security);
            if batch.is_err() && single.is_err() && opts.bootstrapping == Bootstrapping::Auto {
                return single_compiled(model, opts);
            }
            let choice = cost::choose(batch, single, images)?;
            if choice.plan.kind() == PackingKind::Single
                && opts.bootstrapping == Bootstrapping::Auto
            {
                // The same rule as single-image packing asked for: bootstrap when the plan
                // does not fit without it.
                let mut c = single_compiled(model, opts)?;
                c.choice = Some(choice.why);
                return Ok(c);
            }
            (choice.plan, choice.params, Some(choice.why))
        }
    };
    CompiledModel::new(name, plan, params, choice, None)
}

/// Single-image packing with or without bootstrapping, as `opts` asks.
fn single_compiled(model: Model, opts: &CompileOptions) -> Result<CompiledModel, NnError> {
    let name = model.name.clone();
    let plain = || {
        let (plan, params) = single_candidate(&model, opts.security)?;
        CompiledModel::new(name.clone(), PackedPlan::Single(plan), params, None, None)
    };
    let refreshed = || {
        let levels = opts.refresh_levels;
        let (plan, params, mut record) = refreshed_candidate(&model, opts.security, levels)?;
        record.bound_bits = opts.refresh_bound_bits;
        CompiledModel::new(
            name.clone(),
            PackedPlan::Single(plan),
            params,
            None,
            Some(record),
        )
    };
    match opts.bootstrapping {
        Bootstrapping::Never => plain(),
        Bootstrapping::Always => refreshed(),
        Bootstrapping::Auto => match plain() {
            Ok(c) if c.memory_estimate().bytes <= AUTO_BOOTSTRAP_BYTES => Ok(c),
            // Too large without bootstrapping: bootstrap, unless bootstrapping cannot run
            // the plan either (then the large plan is what there is).
            Ok(c) => match refreshed() {
                Ok(r) => Ok(r),
                Err(
                    NnError::NoParameters { .. }
                    | NnError::OutOfLevels { .. }
                    | NnError::RefreshPlacement { .. },
                ) => Ok(c),
                Err(e) => Err(e),
            },
            Err(e @ (NnError::NoParameters { .. } | NnError::OutOfLevels { .. })) => refreshed()
                .map_err(|boot| NnError::NoParameters {
                    chain: params::Chain::Single,
                    reason: format!("{e}; with bootstrapping: {boot}"),
                }),
            Err(e) => Err(e),
        },
    }
}

/// Single-image packing with bootstrapping: the smallest ring degree whose bootstrapped
/// chain passes the security check and whose slots hold the layouts; bootstrapping runs on
/// the plan's slot count (sparse below `N/2`).
fn refreshed_candidate(
    model: &Model,
    security: SecurityLevel,
    levels: Option<usize>,
) -> Result<(SinglePlan, Arc<CkksParams>, RefreshRecord), NnError> {
    let lo = if security == SecurityLevel::UncheckedForReproduction {
        11
    } else {
        13
    };
    let mut last = String::from("no ring degree tried");
    for log_n in lo..=16u32 {
        let slots = 1usize << (log_n - 1);
        let Some((lit, log_scale, _)) = params::bootstrapped(log_n, slots, levels, security) else {
            last = format!("N = 2^{log_n} cannot hold bootstrapping and two levels");
            continue;
        };
        let params = match CkksParams::from_literal(&lit, log_scale) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                last = format!("at N = 2^{log_n}: {e}");
                continue;
            }
        };
        match SinglePlan::new(model, params.max_slots()) {
            Ok(plan) => {
                let record = RefreshRecord::new(plan.slots(), params::REFRESH_BOUND_BITS)?;
                return Ok((plan, params, record));
            }
            Err(e @ NnError::TooFewSlots { .. }) => last = format!("at N = 2^{log_n}: {e}"),
            Err(e) => return Err(e),
        }
    }
    Err(NnError::NoParameters {
        chain: params::Chain::Single,
        reason: format!(
            "no ring degree from 2^{lo} to 2^16 holds bootstrapping at {security:?} ({last})"
        ),
    })
}

/// Batch packing's plan and parameters at the degree asked for.
fn batch_candidate(
    model: &Model,
    opts: &CompileOptions,
) -> Result<(BatchPlan, Arc<CkksParams>), NnError> {
    let plan = BatchPlan::new(model)?;
    let (lit, log_scale) = params::literal(
        params::Chain::Batch,
        plan.depth(),
        opts.log_n,
        opts.security,
    )
    .ok_or_else(|| no_batch(plan.depth(), opts.log_n, "no chain".into()))?;
    let params = CkksParams::from_literal(&lit, log_scale)
        .map_err(|e| no_batch(plan.depth(), opts.log_n, e.to_string()))?;
    Ok((plan, Arc::new(params)))
}

fn no_batch(depth: usize, log_n: u32, why: String) -> NnError {
    NnError::NoParameters {
        chain: params::Chain::Batch,
        reason: format!(
            "no parameters for depth {depth} at N = 2^{log_n}: {why} (raise the ring degree, or use single-image packing)"
        ),
    }
}

/// Single-image packing's plan and parameters: the smallest ring degree whose parameters
/// for the model's depth pass the security check and whose slots hold the layouts.
fn single_candidate(
    model: &Model,
    security: SecurityLevel,
) -> Result<(SinglePlan, Arc<CkksParams>), NnError> {
    let depth = crate::single::depth(model)?;
    let (params, plan) =
        params::smallest_ring(params::Chain::Single, depth, security, 13..=16, |p| {
            SinglePlan::new(model, p.max_slots())
        })?;
    Ok((plan, params))
}

/// The level pass over a plan with its parameters: without a refresh the inputs start at
/// the top level and a plan deeper than the parameters is refused; with one they start at
/// the level bootstrapping gives back (the levels above are bootstrapping's), and the pass
/// places the refreshes.
fn level_plan(
    plan: &PackedPlan,
    params: &CkksParams,
    refresh: Option<&RefreshRecord>,
) -> Result<levels::LevelPlan, NnError> {
    let q: Vec<f64> = params.rlwe().q().iter().map(|&p| p as f64).collect();
    let stages = match plan {
        PackedPlan::Single(p) => p.level_stages(),
        PackedPlan::Batch(p) => return batch_levels(p, params),
    };
    let (top, spec) = match refresh {
        None => (params.max_level(), None),
        Some(r) => {
            let level = r.levels(params)?;
            (level, Some(levels::RefreshSpec { level }))
        }
    };
    levels::assign(&stages, &q, top, f64::from(params.log_scale()), spec)
}

/// Batch packing's levels: every node's output at `top − depth` (the plan's depths follow
/// the graph, branches included), the output one more rescale down when it is left squared.
fn batch_levels(p: &BatchPlan, params: &CkksParams) -> Result<levels::LevelPlan, NnError> {
    let top = params.max_level();
    if p.depth() > top {
        return Err(NnError::OutOfLevels {
            stage: "output".into(),
            index: p.model().nodes.len(),
            depth: p.depth(),
            levels: top,
        });
    }
    let nodes = p.nodes();
    let log_scale = f64::from(params.log_scale());
    let mut stages = Vec::new();
    for (i, node) in p.model().nodes.iter().enumerate().skip(1) {
        let depth = nodes.get(i).map_or(0, |n| n.depth);
        let from = node
            .inputs
            .iter()
            .filter_map(|&j| nodes.get(j).map(|n| n.depth))
            .max()
            .unwrap_or(0);
        if depth > from {
            stages.push(levels::StageLevels {
                name: node.name.clone(),
                level_in: top.saturating_sub(from),
                level_out: top.saturating_sub(depth),
                log_scale_out: log_scale,
                refresh_after: false,
                cts: nodes.get(i).map_or(0, |n| n.neurons),
            });
        }
    }
    let last = stages.last().map_or(top, |s| s.level_out);
    if top - p.depth() < last {
        stages.push(levels::StageLevels {
            name: "output".into(),
            level_in: last,
            level_out: top - p.depth(),
            log_scale_out: log_scale,
            refresh_after: false,
            cts: p.outputs(),
        });
    }
    Ok(levels::LevelPlan {
        top,
        refresh_level: None,
        stages,
    })
}

/// BLAKE3 of what determines the computation: the rewritten model, the plan record and the
/// parameters (not the name or the report of auto mode's choice, so a renamed copy of the
/// same model serves the same ciphertexts).
fn fingerprint(body: &CompiledBody) -> Result<[u8; 32], NnError> {
    let bytes = postcard::to_allocvec(&(
        &body.model,
        &body.plan,
        &body.literal,
        body.log_scale,
        &body.refresh,
    ))
    .map_err(|e| NnError::Format {
        what: COMPILED.what,
        reason: format!("cannot serialize: {e}"),
    })?;
    Ok(*blake3::hash(&bytes).as_bytes())
}

/// The envelope of a compiled model.
const COMPILED: envelope::Kind = envelope::Kind {
    what: "compiled model",
    magic: *b"HCNM",
    // 3: checksummed envelope, the model stored exactly (f64), single-image layouts recorded.
    // 4: bootstrapping (the refresh record); 5: the record carries the circuit's depth,
    // weight and ratio, and the fingerprint covers it.
    version: 5,
    remedy: "compile the model again",
    limit: MAX_COMPILED_BYTES,
};

/// Largest compiled model read (bytes): far above the CIFAR-10 network's 5 MB.
pub const MAX_COMPILED_BYTES: u64 = 1 << 30;

/// How the plan is rebuilt on load.
#[derive(Serialize, Deserialize)]
enum PlanRecord {
    Batch,
    Single(Layouts),
}

#[derive(Serialize, Deserialize)]
struct CompiledBody {
    name: String,
    model: Model,
    plan: PlanRecord,
    literal: ParamsLiteral,
    log_scale: u32,
    choice: Option<String>,
    refresh: Option<RefreshRecord>,
}

/// The evaluation keys `plan` needs: its own, each rotation restricted to the highest level
/// a stage applies it at (`levels`), and bootstrapping's (at every level; shared with the
/// plan's where they coincide).
///
/// # Errors
/// A bootstrapping circuit that cannot be built for the parameters.
fn key_requirements(
    plan: &PackedPlan,
    params: &CkksParams,
    levels: &levels::LevelPlan,
    refresh: Option<&RefreshRecord>,
) -> Result<KeyRequirements, NnError> {
    let mut req = match plan {
        PackedPlan::Single(p) => p.rotations_by_stage().into_iter().fold(
            KeyRequirements::relin(),
            |req, (stage, steps)| {
                let level = levels
                    .stages
                    .get(stage)
                    .map_or(params.max_level(), |s| s.level_in);
                req.with_rotations_at(steps, level)
            },
        ),
        PackedPlan::Batch(_) => plan.key_requirements(),
    };
    if let Some(r) = refresh {
        req = req.union(&r.config().key_requirements(params)?);
    }
    Ok(req)
}

/// The plan with the level pass's refreshes, and the pass's result.
fn with_levels(
    plan: PackedPlan,
    params: &CkksParams,
    refresh: Option<&RefreshRecord>,
) -> Result<(PackedPlan, levels::LevelPlan), NnError> {
    let levels = level_plan(&plan, params, refresh)?;
    if let Some(r) = refresh {
        r.check(params, &levels)?;
    }
    let plan = match (plan, refresh) {
        (PackedPlan::Single(p), Some(r)) => {
            PackedPlan::Single(p.with_refreshes(&levels, f64::from(r.bound_bits).exp2()))
        }
        (plan, _) => plan,
    };
    Ok((plan, levels))
}

impl CompiledModel {
    fn new(
        name: String,
        plan: PackedPlan,
        params: Arc<CkksParams>,
        choice: Option<String>,
        refresh: Option<RefreshRecord>,
    ) -> Result<Self, NnError> {
        let (plan, levels) = with_levels(plan, &params, refresh.as_ref())?;
        let keys = key_requirements(&plan, &params, &levels, refresh.as_ref())?;
        let mut c = Self {
            name,
            plan: Arc::new(plan),
            params,
            choice,
            levels,
            refresh,
            keys,
            fingerprint: [0; 32],
        };
        c.fingerprint = fingerprint(&c.body())?;
        Ok(c)
    }

    fn body(&self) -> CompiledBody {
        CompiledBody {
            name: self.name.clone(),
            model: self.plan.model().clone(),
            plan: match &*self.plan {
                PackedPlan::Batch(_) => PlanRecord::Batch,
                PackedPlan::Single(p) => PlanRecord::Single(p.layouts().clone()),
            },
            literal: self.params.rlwe().literal().clone(),
            log_scale: self.params.log_scale(),
            choice: self.choice.clone(),
            refresh: self.refresh,
        }
    }

    /// Serializes the compiled model (format version, checksum).
    ///
    /// # Errors
    /// Serialization failures.
    pub fn to_bytes(&self) -> Result<Vec<u8>, NnError> {
        envelope::seal(COMPILED, &self.body())
    }

    /// Whether `bytes` look like a compiled model (its magic number), not an ONNX file.
    pub fn is_compiled(bytes: &[u8]) -> bool {
        envelope::is(COMPILED, bytes)
    }

    /// Reads a compiled model: the checksum and version, then the plan rebuilt from the
    /// recorded choices (no search), then the parameters checked against the plan.
    ///
    /// # Errors
    /// [`NnError::Checksum`], [`NnError::Version`], [`NnError::Format`] for damaged or
    /// foreign bytes; [`NnError::LayoutMismatch`] or [`NnError::Mismatch`] for records that
    /// do not fit the model; parameter errors (security checked on the primes generated).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NnError> {
        let body: CompiledBody = envelope::open(COMPILED, bytes)?;
        // The parameters first (bounded before any prime is generated), so that a recorded
        // layout is checked against their slots before it is planned.
        let params = Arc::new(params::from_record(&body.literal, body.log_scale)?);
        let plan = match &body.plan {
            PlanRecord::Batch => PackedPlan::Batch(BatchPlan::new(&body.model)?),
            PlanRecord::Single(layouts) => {
                if !layouts.slots.is_power_of_two() || layouts.slots > params.max_slots() {
                    return Err(NnError::Mismatch {
                        what: "compiled model's slots",
                        expected: format!("a power of two up to {}", params.max_slots()),
                        found: layouts.slots.to_string(),
                    });
                }
                PackedPlan::Single(SinglePlan::with_layouts(&body.model, layouts)?)
            }
        };
        if body.refresh.is_some() && plan.kind() != PackingKind::Single {
            return Err(NnError::Mismatch {
                what: "compiled model's bootstrapping",
                expected: "single-image packing".into(),
                found: plan.kind().to_string(),
            });
        }
        if let (Some(r), PackedPlan::Single(p)) = (&body.refresh, &plan)
            && (r.slots != p.slots() || r.bound_bits > 20)
        {
            return Err(NnError::Mismatch {
                what: "compiled model's bootstrapping",
                expected: format!("the plan's {} slots and a bound of at most 2^20", p.slots()),
                found: format!("{} slots, bound 2^{}", r.slots, r.bound_bits),
            });
        }
        if body.refresh.is_none() && params.max_level() < plan.depth() {
            return Err(NnError::Mismatch {
                what: "compiled model's levels",
                expected: format!("at least {} (the plan's depth)", plan.depth()),
                found: params.max_level().to_string(),
            });
        }
        if let PackedPlan::Single(p) = &plan
            && p.slots() > params.max_slots()
        {
            return Err(NnError::Mismatch {
                what: "compiled model's slots",
                expected: format!("at least {} (the plan's layout)", p.slots()),
                found: params.max_slots().to_string(),
            });
        }
        let (plan, levels) = with_levels(plan, &params, body.refresh.as_ref())?;
        let keys = key_requirements(&plan, &params, &levels, body.refresh.as_ref())?;
        let fingerprint = fingerprint(&body)?;
        Ok(Self {
            name: body.name,
            plan: Arc::new(plan),
            params,
            choice: body.choice,
            levels,
            refresh: body.refresh,
            keys,
            fingerprint,
        })
    }

    /// Writes the compiled model to `path` atomically.
    ///
    /// # Errors
    /// [`NnError::Io`] with the path.
    pub fn save(&self, path: &Path) -> Result<(), NnError> {
        crate::data::write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a compiled model from `path` (at most [`MAX_COMPILED_BYTES`]).
    ///
    /// # Errors
    /// [`NnError::Io`], [`NnError::TooLarge`], and those of [`CompiledModel::from_bytes`].
    pub fn load(path: &Path) -> Result<Self, NnError> {
        Self::from_bytes(&read_bounded(path, MAX_COMPILED_BYTES)?)
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rewritten model the plan runs (the cleartext reference of every encrypted run).
    pub fn model(&self) -> &Model {
        self.plan.model()
    }

    /// The plan.
    pub fn plan(&self) -> &PackedPlan {
        &self.plan
    }

    /// The packing.
    pub fn packing(&self) -> PackingKind {
        self.plan.kind()
    }

    /// The checked parameters keys and ciphertexts are made under.
    pub fn params(&self) -> &Arc<CkksParams> {
        &self.params
    }

    /// Why auto mode chose this packing (none when the packing was asked for).
    pub fn choice(&self) -> Option<&str> {
        self.choice.as_deref()
    }

    /// The level and scale of every stage's output, and where refreshes run.
    pub fn levels(&self) -> &levels::LevelPlan {
        &self.levels
    }

    /// How the plan bootstraps, if it does.
    pub fn refresh(&self) -> Option<&RefreshRecord> {
        self.refresh.as_ref()
    }

    /// Level the inputs are encrypted at: the top level, or with bootstrapping the level it
    /// gives back (the levels above are bootstrapping's own).
    pub fn input_level(&self) -> usize {
        self.levels.top
    }

    /// BLAKE3 of the rewritten model, the plan record and the parameters: client specs,
    /// ciphertexts and server sessions name the model by it.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The exact evaluation keys the server needs: the plan's, and bootstrapping's (its
    /// rotations shared with the plan's where they coincide).
    pub fn key_requirements(&self) -> KeyRequirements {
        self.keys.clone()
    }

    /// What a data owner needs: parameters, layouts, key requirements.
    pub fn client_spec(&self) -> ClientSpec {
        ClientSpec::of(self)
    }

    /// What an inference server runs.
    pub fn server_plan(&self) -> ServerPlan {
        ServerPlan::of(self)
    }

    /// The same rewritten model in another packing (for a packing asked for at run time):
    /// `opts` as for [`compile`] (its rewrite options aside: the model is rewritten
    /// already).
    ///
    /// # Errors
    /// As [`compile`].
    pub fn repack(&self, opts: &CompileOptions) -> Result<Self, NnError> {
        plan_rewritten(self.model().clone(), opts)
    }

    /// Memory the server needs at once: batch packing's live ciphertexts, or single-image
    /// packing's keys (as the server holds them: [`CompiledModel::default_key_storage`])
    /// and diagonals.
    pub fn memory_estimate(&self) -> MemoryEstimate {
        self.memory_estimate_for(self.default_lowering())
    }

    /// [`CompiledModel::memory_estimate`] with single-image diagonals encoded as
    /// `lowering` says.
    pub fn memory_estimate_for(&self, lowering: crate::single::Lowering) -> MemoryEstimate {
        let r = self.params.rlwe();
        match &*self.plan {
            PackedPlan::Batch(p) => MemoryEstimate {
                bytes: p.peak_ciphertext_bytes(r.n(), r.max_level()),
                what: format!(
                    "ciphertexts: batch packing keeps one per neuron (the largest layer has {} neurons)",
                    p.nodes().iter().map(|n| n.neurons).max().unwrap_or(0)
                ),
            },
            PackedPlan::Single(p) => {
                let galois = self.key_requirements().galois_elements(r).len();
                // Every stage's diagonals encoded at the level it runs at (their limbs); on
                // the fly, the largest stage's as complex slot values while they are
                // gathered, and one chunk of them encoded.
                let diagonal_bytes = match lowering {
                    crate::single::Lowering::Eager => p
                        .layers()
                        .iter()
                        .map(|l| {
                            let level = self
                                .levels
                                .stages
                                .get(l.stage)
                                .map_or(r.max_level(), |s| s.level_in);
                            l.diagonals * (level + 1) * r.n() * 8
                        })
                        .sum(),
                    crate::single::Lowering::OnTheFly => {
                        let largest = p.layers().iter().map(|l| l.diagonals).max().unwrap_or(0);
                        largest * p.slots() * 16 + hecnn_ckks::DEFERRED_CHUNK_BYTES
                    }
                };
                let diagonals: usize = p.layers().iter().map(|l| l.diagonals).sum();
                // Switching keys (each over the limbs of the levels it serves; compact ones
                // are the size of their serialized form) and the diagonal plaintexts.
                let compact = self.default_key_storage() == hecnn_rlwe::KeyStorage::Compact;
                let keys = if compact {
                    self.keys.key_bytes(r)
                } else {
                    self.keys.expanded_key_bytes(r)
                };
                // Bootstrapping's encoded transforms and its dense encapsulation key (over
                // all of Q ∪ P; the sparse one, two limbs, is negligible). The record was
                // checked against the parameters when the model was compiled or loaded,
                // so its circuit fits them.
                let bootstrapping = self.refresh.as_ref().map_or(0, |rec| {
                    let transforms = rec.config().encoded_bytes(&self.params).unwrap_or(0);
                    let dense = if compact {
                        r.switching_key_bytes()
                    } else {
                        r.expanded_switching_key_bytes_at(r.max_level())
                    };
                    transforms + dense
                });
                MemoryEstimate {
                    bytes: keys + diagonal_bytes + bootstrapping,
                    what: format!(
                        "keys and encoded diagonals ({galois} Galois keys, {diagonals} diagonals at N = 2^{}{}{})",
                        r.log_n(),
                        if lowering == crate::single::Lowering::OnTheFly {
                            ", encoded a chunk at a time as each stage runs"
                        } else {
                            ""
                        },
                        if self.refresh.is_some() {
                            "; bootstrapping's transforms and encapsulation keys"
                        } else {
                            ""
                        }
                    ),
                }
            }
        }
    }

    /// How a server holds this plan's evaluation keys by default: compact when the plan
    /// bootstraps (ResNet-20's keys: 6 GiB compact, 12 GiB expanded at N = 2^16; a key
    /// switch then expands its key's uniform half again, a few milliseconds), expanded
    /// otherwise.
    pub fn default_key_storage(&self) -> hecnn_rlwe::KeyStorage {
        if self.refresh.is_some() {
            hecnn_rlwe::KeyStorage::Compact
        } else {
            hecnn_rlwe::KeyStorage::Expanded
        }
    }

    /// When a server encodes this plan's single-image diagonals by default: on the fly when
    /// the plan bootstraps (a network deep enough to need it has more diagonals than memory
    /// holds: ResNet-20, 15,872 at N = 2^16), once otherwise.
    pub fn default_lowering(&self) -> crate::single::Lowering {
        if self.refresh.is_some() {
            crate::single::Lowering::OnTheFly
        } else {
            crate::single::Lowering::Eager
        }
    }

    /// A report of the plan and parameters (what `hecnn compile` prints).
    ///
    /// # Errors
    /// A batch plan whose operation counts cannot be computed.
    pub fn report(&self) -> Result<String, NnError> {
        report::report(self)
    }

    /// Runs the plan on `images` in the packed cleartext scheme ([`crate::scheme::Packed`]):
    /// the same plan code as the encrypted run, on `f64` slot vectors with the levels and
    /// scales CKKS would have, no keys, no encryption noise (bootstrapping's error is
    /// modelled, [`SIMULATED_REFRESH_PRECISION_BITS`]). Returns every image's logits and the
    /// smallest headroom below the modulus any value had.
    ///
    /// # Errors
    /// Images of another shape; more images than a batch holds; plan errors.
    pub fn simulate(&self, images: &[Tensor]) -> Result<Simulation, NnError> {
        self.simulator()?.run(images)
    }

    /// The packed cleartext scheme ready to run this plan ([`Self::simulate`]) on many
    /// images: a single-image plan's transforms are encoded once, here.
    ///
    /// # Errors
    /// Encoding errors of the plan.
    pub fn simulator(&self) -> Result<Simulator<'_>, NnError> {
        let mut engine = crate::scheme::Packed::new(self.params.rlwe().q());
        if let Some(r) = &self.refresh {
            let ratio = r.config().log_message_ratio;
            engine = engine.with_refresh(crate::scheme::PackedRefresh {
                level: r.levels(&self.params)?,
                scale: self.params.default_scale(),
                precision_bits: SIMULATED_REFRESH_PRECISION_BITS,
                max_scale: self.params.q_at(0) / f64::from(ratio).exp2(),
            });
        }
        let (top, scale) = (self.input_level(), self.params.default_scale());
        let encoded = match &*self.plan {
            PackedPlan::Batch(_) => None,
            PackedPlan::Single(plan) => Some(plan.encode(&engine, top, scale)?),
        };
        Ok(Simulator {
            model: self,
            engine,
            encoded,
        })
    }

    /// Checks the plan's value ranges on `images` without keys and compares its predictions
    /// with the cleartext model's: batch packing simulates the plan ([`Self::simulate`]) and
    /// measures the headroom below the modulus; single-image packing bounds every slot's
    /// magnitude below 2^[`crate::single::VALUE_BOUND_BITS`], which its parameters are
    /// designed for.
    ///
    /// # Errors
    /// No images, shapes that do not fit, simulation errors.
    pub fn calibrate(&self, images: &[Tensor]) -> Result<Calibration, NnError> {
        if images.is_empty() {
            return Err(NnError::Mismatch {
                what: "calibration images",
                expected: "at least one".into(),
                found: "none".into(),
            });
        }
        match &*self.plan {
            PackedPlan::Batch(_) => {
                let images = &images[..images.len().min(self.params.max_slots())];
                let sim = self.simulate(images)?;
                let mut agree = 0;
                for (image, got) in images.iter().zip(&sim.logits) {
                    if argmax(exec::run(self.model(), image)?.data()) == argmax(got) {
                        agree += 1;
                    }
                }
                Ok(Calibration {
                    diverged: Vec::new(),
                    images: images.len(),
                    agree: Some(agree),
                    headroom_bits: sim.headroom_bits,
                    min_headroom_bits: 10.0,
                    bound: "the modulus".into(),
                    largest: None,
                    refreshed: None,
                })
            }
            PackedPlan::Single(plan) => {
                let bits = crate::single::VALUE_BOUND_BITS;
                let diverges_above = f64::from(1u32 << bits) * DIVERGENCE_FACTOR;
                let (mut max, mut refreshed) = (0.0f64, 0.0f64);
                let mut diverged = Vec::new();
                for (k, image) in images.iter().enumerate() {
                    match plan.magnitudes(image) {
                        Ok((m, _)) if m > diverges_above => diverged.push((k, m)),
                        Ok((m, r)) => {
                            max = max.max(m);
                            refreshed = refreshed.max(r);
                        }
                        Err(NnError::OutOfRange { value, .. }) if !value.is_finite() => {
                            diverged.push((k, f64::INFINITY));
                        }
                        Err(e) => return Err(e),
                    }
                }
                if diverged.len() == images.len() {
                    return Err(NnError::Mismatch {
                        what: "calibration images",
                        expected: "at least one on which the model stays finite".into(),
                        found: format!(
                            "the cleartext model diverges on all {} (values above {diverges_above:e})",
                            images.len()
                        ),
                    });
                }
                Ok(Calibration {
                    diverged,
                    images: images.len(),
                    agree: None,
                    headroom_bits: (f64::from(1u32 << bits) / max).log2(),
                    min_headroom_bits: 1.0,
                    bound: format!("2^{bits}"),
                    largest: Some(max),
                    refreshed: self
                        .refresh
                        .map(|r| (refreshed, f64::from(r.bound_bits).exp2())),
                })
            }
        }
    }
}

/// What [`CompiledModel::simulate`] computed.
#[derive(Clone, Debug, PartialEq)]
pub struct Simulation {
    /// Every image's logits.
    pub logits: Vec<Vec<f64>>,
    /// The smallest headroom, in bits, between any value (times its scale) and half the
    /// modulus at its level.
    pub headroom_bits: f64,
}

/// A compiled model's plan on the packed cleartext scheme, its transforms encoded
/// ([`CompiledModel::simulator`]).
pub struct Simulator<'a> {
    model: &'a CompiledModel,
    engine: crate::scheme::Packed,
    encoded: Option<
        crate::single::EncodedSingle<crate::scheme::PackedTransform, crate::scheme::PackedValue>,
    >,
}

impl Simulator<'_> {
    /// Runs the plan on `images` (one batch in batch packing, one at a time in single-image
    /// packing): their logits, and the smallest headroom below the modulus of any value
    /// in this run.
    ///
    /// # Errors
    /// Images of another shape; more images than a batch holds; plan errors.
    pub fn run(&self, images: &[Tensor]) -> Result<Simulation, NnError> {
        let c = self.model;
        let spec = c.client_spec();
        spec.check_shapes(images)?;
        // A headroom record per run: runs on several threads share the encoded transforms.
        let engine = &self.engine.fresh();
        let (top, scale) = (c.input_level(), c.params.default_scale());
        let logits = match (&*c.plan, &self.encoded) {
            (PackedPlan::Batch(plan), _) => {
                if images.len() > c.params.max_slots() {
                    return Err(NnError::Mismatch {
                        what: "images in one batch",
                        expected: format!("at most {}", c.params.max_slots()),
                        found: images.len().to_string(),
                    });
                }
                let columns: Vec<Vec<f64>> = (0..plan.inputs())
                    .map(|p| {
                        images
                            .iter()
                            .map(|im| im.data().get(p).copied().unwrap_or(0.0))
                            .collect()
                    })
                    .collect();
                let (out, map) = plan.run(engine, engine.inputs(columns, top, scale), |_, _| {})?;
                (0..images.len())
                    .map(|i| {
                        out.iter()
                            .map(|o| map.a * o.slots.get(i).copied().unwrap_or(0.0) + map.gamma)
                            .collect()
                    })
                    .collect()
            }
            (PackedPlan::Single(plan), Some(encoded)) => {
                let IoLayout::Single {
                    slots,
                    input,
                    output,
                } = spec.io()
                else {
                    return Err(NnError::Internal(
                        "a single-image plan without its layout".into(),
                    ));
                };
                let mut logits = Vec::with_capacity(images.len());
                for image in images {
                    let cts = client::scatter(*slots, input, image)?;
                    let (out, map) = plan.run(engine, encoded, engine.inputs(cts, top, scale))?;
                    let decoded: Vec<Vec<f64>> = out.into_iter().map(|v| v.slots).collect();
                    logits.push(client::gather(*slots, output, &decoded, map)?);
                }
                logits
            }
            (PackedPlan::Single(_), None) => {
                return Err(NnError::Internal(
                    "a single-image simulator without its transforms".into(),
                ));
            }
        };
        Ok(Simulation {
            logits,
            headroom_bits: engine.min_headroom_bits(),
        })
    }
}

/// Memory a plan needs at once on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Bytes.
    pub bytes: usize,
    /// What they hold.
    pub what: String,
}

/// What a keyless simulation of a plan found ([`CompiledModel::calibrate`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// Images simulated.
    pub images: usize,
    /// Of those, how many the simulated plan predicts as the cleartext model does (batch
    /// packing simulates the values themselves; single-image packing bounds them).
    pub agree: Option<usize>,
    /// The smallest distance, in bits, between any value and the bound it must stay below.
    pub headroom_bits: f64,
    /// The headroom the parameters are designed to keep.
    pub min_headroom_bits: f64,
    /// The bound values must stay below: the modulus (batch packing), or 2^13, the largest
    /// magnitude single-image parameters hold.
    pub bound: String,
    /// The largest magnitude any slot took, where it is bounded rather than simulated.
    pub largest: Option<f64>,
    /// With bootstrapping: the largest magnitude of a refreshed slot, and the bound
    /// refreshes were compiled for (`--refresh-bound` sets its log2; the smallest power of
    /// two above twice the largest keeps a margin and the most precision).
    pub refreshed: Option<(f64, f64)>,
    /// Images on which the cleartext model itself diverges (single-image packing): their
    /// index among the images given and their largest magnitude (∞ when not finite),
    /// above [`DIVERGENCE_FACTOR`] times the bound. They are left out of the figures above:
    /// no plan computes what the model does not, and one such input must not hide how
    /// the others fit. A briefly trained network of squares has a few in a thousand.
    pub diverged: Vec<(usize, f64)>,
}

/// How far above single-image packing's value bound a calibration image's values must go
/// to count as the model diverging rather than the plan's scale being too tight (2^10:
/// such an input is beyond any rescaling of the weights).
pub const DIVERGENCE_FACTOR: f64 = 1024.0;

impl Calibration {
    /// Whether the values keep the headroom the parameters need (and refreshed values stay
    /// below their bound).
    pub fn fits(&self) -> bool {
        self.headroom_bits >= self.min_headroom_bits
            && self
                .refreshed
                .is_none_or(|(largest, bound)| largest <= bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Dense, Node};

    fn tiny() -> Model {
        Model {
            name: "tiny".into(),
            input_shape: [1, 2, 2],
            nodes: vec![
                Node {
                    name: "x".into(),
                    op: crate::Op::Input,
                    inputs: vec![],
                },
                Node {
                    name: "sq".into(),
                    op: crate::Op::Poly(vec![0.0, 0.0, 1.0]),
                    inputs: vec![0],
                },
                Node {
                    name: "fc".into(),
                    op: crate::Op::Dense(Dense {
                        weight: Tensor::zeros(vec![2, 4]),
                        bias: vec![0.5, 0.25],
                    }),
                    inputs: vec![1],
                },
            ],
            output: 2,
        }
    }

    /// A record sealed with a valid checksum (the checksum has no key) but altered: the
    /// loader refuses it before planning or allocating anything of its size.
    #[test]
    fn altered_records_are_refused_before_they_are_planned() {
        let opts = CompileOptions {
            packing: PackingRequest::Single,
            security: SecurityLevel::UncheckedForReproduction,
            ..CompileOptions::default()
        };
        let c = compile(&tiny(), &opts).unwrap();
        let reseal = |f: &dyn Fn(&mut CompiledBody)| {
            let mut body = c.body();
            f(&mut body);
            envelope::seal(COMPILED, &body).unwrap()
        };
        let huge = reseal(&|b| {
            if let PlanRecord::Single(l) = &mut b.plan {
                l.slots = 1 << 40;
            }
        });
        let e = CompiledModel::from_bytes(&huge).unwrap_err();
        assert!(matches!(e, NnError::Mismatch { .. }), "{e}");
        let other = reseal(&|b| {
            if let PlanRecord::Single(l) = &mut b.plan {
                l.input_frame = (3, 3);
            }
        });
        let e = CompiledModel::from_bytes(&other).unwrap_err();
        assert!(matches!(e, NnError::LayoutMismatch { .. }), "{e}");
        let many_primes = reseal(&|b| b.literal.log_q = vec![30; 5000]);
        let e = CompiledModel::from_bytes(&many_primes).unwrap_err();
        assert!(matches!(e, NnError::Format { .. }), "{e}");
        // Renaming does not change what the model computes: the fingerprint stays.
        let renamed = CompiledModel::from_bytes(&reseal(&|b| b.name = "copy".into())).unwrap();
        assert_eq!(renamed.fingerprint(), c.fingerprint());
    }
}
