//! Protected models (Gomez et al.): the weights and biases of a model's last layer, its
//! classifier or the whole network encrypted under the model owner's key, so that an edge
//! node runs a model it cannot read.
//!
//! The roles and what each one holds:
//! - the **owner** holds the cleartext model and the secret key; [`ProtectPlan::protect`]
//!   encrypts the protected layers into a [`ProtectedModel`], and [`decrypt_output`] turns
//!   an edge node's encrypted result into logits;
//! - the **edge** holds a [`ProtectedModel`] (the cleartext feature extractor, the public
//!   [`ProtectedSpec`] and ciphertexts), the public key and the evaluation keys. It computes
//!   the features of its own input in the clear, optionally encrypts them
//!   ([`ProtectedModel::encrypt_features`]), and evaluates ([`ProtectedModel::evaluate`]).
//!   No function on the edge's path takes a [`SecretKey`] or cleartext protected weights:
//!   [`ProtectedModel`] cannot be built from them except through the owner's
//!   [`ProtectPlan::protect`].
//!
//! Products are ciphertext × plaintext when the features are in the clear, ciphertext ×
//! ciphertext when they are encrypted, and ciphertext × ciphertext after the first layer;
//! see [`Layout`] for the slot layout. Every linear layer (convolutions are encrypted as
//! their dense matrices) consumes one level and every square activation one
//! ([`ProtectedSpec::depth`]).
//!
//! ```
//! use std::sync::Arc;
//! use hecnn_ckks::{CkksParams, Decryptor, Evaluator};
//! use hecnn_nn::protect::{FeatureInput, ProtectPlan, Scope, decrypt_output};
//! use hecnn_nn::{Model, Op, Tensor, ir::{Dense, Node}};
//! use hecnn_ring::{CpuBackend, Prng};
//! use hecnn_rlwe::{ParamsLiteral, SecretDistribution, SecretKey, SecurityLevel};
//!
//! // Flatten(1×2×2) → Dense 3 → x²+2x → Dense 2.
//! let dense = |o: usize, i: usize, s: f64| Op::Dense(Dense {
//!     weight: Tensor::new(vec![o, i], (0..o * i).map(|k| s * (k as f64 - 2.0)).collect()).unwrap(),
//!     bias: vec![0.25; o],
//! });
//! let node = |name: &str, op, inputs| Node { name: name.into(), op, inputs };
//! let model = Model {
//!     name: "tiny".into(),
//!     input_shape: [1, 2, 2],
//!     nodes: vec![
//!         node("x", Op::Input, vec![]),
//!         node("flat", Op::Flatten, vec![0]),
//!         node("fc1", dense(3, 4, 0.1), vec![1]),
//!         node("act", Op::Poly(vec![0.0, 2.0, 1.0]), vec![2]),
//!         node("fc2", dense(2, 3, 0.2), vec![3]),
//!     ],
//!     output: 4,
//! };
//! let plan = ProtectPlan::new(&model, Scope::Classifier)?;
//! let lit = ParamsLiteral { log_n: 10, log_q: vec![55, 40, 40, 40], log_p: vec![55, 55],
//!     dnum: None, secret: SecretDistribution::Ternary,
//!     security: SecurityLevel::UncheckedForReproduction }; // a toy ring, for speed
//! let params = Arc::new(CkksParams::from_literal(&lit, 40)?);
//! let be = CpuBackend::new(1)?;
//! let mut rng = Prng::from_seed([7; 32]);
//!
//! // Owner: keys and the protected model.
//! let sk = SecretKey::generate(params.rlwe(), &mut rng)?;
//! let protected = plan.protect(&params, &sk, &be, &mut rng)?;
//! let keys = sk.evaluation_keys(&be, &protected.key_requirements(), &mut rng)?;
//!
//! // Edge: features in the clear, encrypted weights.
//! let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone())?;
//! let image = Tensor::new(vec![1, 2, 2], vec![0.5, -1.0, 0.25, 2.0])?;
//! let features = protected.spec().features_of(&image)?;
//! let out = protected.evaluate(&eval, &FeatureInput::Plain(features.clone()))?;
//!
//! // Owner: decryption.
//! let logits = decrypt_output(protected.spec(), &params, &Decryptor::new(&sk, &be)?, &be, &out)?;
//! let want = hecnn_nn::exec::run(&model, &image)?;
//! assert!(logits.iter().zip(want.data()).all(|(a, b)| (a - b).abs() < 1e-6));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bfv;
mod bfv_wire;
mod plan;
mod wire;

pub use bfv_wire::{
    BFV_OUTPUT_MAGIC, BFV_OWNER_MAGIC, BFV_PROTECTED_MAGIC, BFV_WIRE_VERSION, MAX_BFV_MODULI,
};
pub use plan::{
    DenseWeights, Form, LayerLayout, LayerShape, Layout, MAX_LAYER_WEIGHTS,
    MAX_PROTECTED_CIPHERTEXTS, MAX_PROTECTED_LAYERS, ProtectPlan, ProtectedSpec, Scope,
};
pub use wire::{OUTPUT_MAGIC, PROTECTED_MAGIC, WIRE_VERSION};

use std::sync::Arc;

use hecnn_ckks::{
    Ciphertext, CkksError, CkksParams, Decryptor, Encoder, Evaluator, Flooding, Plaintext,
    encrypt_pk, encrypt_sk, flooding,
};
use hecnn_ring::{Backend, Prng};
use hecnn_rlwe::{KeyRequirements, PublicKey, SecretKey};

use crate::NnError;
use crate::compile::client::short;

pub use crate::compile::params::{PROTECT_LOG_SCALE, UNFLOODED_PROTECT_LOG_SCALE};

/// Most switching keys an edge deployment may carry when it loads its evaluation keys (the
/// relinearization key and the rotations of the block sums: far fewer in practice).
pub const MAX_EDGE_KEYS: usize = 64;

fn he(what: &'static str) -> impl Fn(CkksError) -> NnError {
    move |source: CkksError| NnError::Encrypted {
        node: what.to_string(),
        source: source.into(),
    }
}

/// The smallest parameters for the protected part at `security`, sized for flooded
/// decryption: the protected chain of [`crate::compile::params`] (two output primes of 61
/// and 25 bits, one 60-bit prime per level of [`ProtectedSpec::depth`] at the scale
/// [`PROTECT_LOG_SCALE`] = 60, one 61-bit special prime; results are decrypted at the
/// two-prime level) at the smallest ring degree (from 2^13) whose bound in the security
/// table admits them and whose slots hold the layout. [`output_flooding`] floods their
/// outputs at the default statistical security.
///
/// # Errors
/// [`NnError::NoParameters`] when no ring degree up to 2^16 fits: the depth is beyond what
/// the security level allows, or the layers are wider than the slots.
pub fn parameters(
    spec: &ProtectedSpec,
    security: hecnn_rlwe::SecurityLevel,
) -> Result<Arc<CkksParams>, NnError> {
    parameters_of(crate::compile::params::Chain::Protected, spec, security)
}

/// The parameters the protected part had before they were sized for flooding: a 49-bit
/// output prime, one 40-bit prime per level, one 49-bit special prime, at the smallest ring
/// degree that holds them. Their outputs carry about 21 bits and cannot be flooded (the
/// flooding would move every logit by about `10^3`, and [`output_flooding`] refuses them):
/// for comparisons, and for owners who release the class alone.
///
/// # Errors
/// As [`parameters`].
pub fn parameters_unflooded(
    spec: &ProtectedSpec,
    security: hecnn_rlwe::SecurityLevel,
) -> Result<Arc<CkksParams>, NnError> {
    parameters_of(
        crate::compile::params::Chain::ProtectedUnflooded,
        spec,
        security,
    )
}

fn parameters_of(
    chain: crate::compile::params::Chain,
    spec: &ProtectedSpec,
    security: hecnn_rlwe::SecurityLevel,
) -> Result<Arc<CkksParams>, NnError> {
    crate::compile::params::smallest_ring(chain, spec.depth(), security, 13..=16, |p| {
        spec.layout(p.max_slots()).map(drop)
    })
    .map(|(params, ())| params)
}

/// Level and scale of each protected layer's weights and bias, computed in the
/// evaluator's own floating-point order, so that the owner encrypts every bias at exactly
/// the scale the edge's value will have.
struct Step {
    /// Level of the layer's input and weights (weights at scale `q_level`).
    level: usize,
    /// Scale of the layer's output, at `level − 1`, where its bias is added.
    out_scale: f64,
}

/// The steps of every layer, and the level and scale of the result.
fn schedule(params: &CkksParams, spec: &ProtectedSpec) -> (Vec<Step>, usize, f64) {
    let mut level = params.max_level();
    let mut scale = params.default_scale();
    let mut steps = Vec::with_capacity(spec.layers.len());
    for l in &spec.layers {
        let q = params.q_at(level);
        scale = scale * q / q;
        steps.push(Step {
            level,
            out_scale: scale,
        });
        level = level.saturating_sub(1);
        if l.square.is_some() {
            scale = scale * scale / params.q_at(level);
            level = level.saturating_sub(1);
        }
    }
    (steps, level, scale)
}

/// One protected layer's ciphertexts.
struct EncryptedLayer<B: Backend> {
    /// One per column or row group.
    weights: Vec<Ciphertext<B>>,
    /// One (column groups) or one per weight ciphertext (row groups).
    biases: Vec<Ciphertext<B>>,
}

/// A protected model as the edge holds it: the public spec and the encrypted layers.
pub struct ProtectedModel<B: Backend> {
    spec: ProtectedSpec,
    params: Arc<CkksParams>,
    layout: Layout,
    key_id: [u8; 32],
    layers: Vec<EncryptedLayer<B>>,
}

/// The slot vectors of one layer's weight and bias ciphertexts (see [`Layout`]).
fn layer_slots(layout: &Layout, at: usize, w: &DenseWeights) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    layer_slots_of(layout, at, w.inputs, w.outputs, &w.weight, &w.bias)
}

/// [`layer_slots`] for any slot type: `weight` row-major `[outputs][inputs]`, one bias per
/// output (CKKS's reals, BFV's integers).
pub(crate) fn layer_slots_of<T: Copy + Default>(
    layout: &Layout,
    at: usize,
    inputs: usize,
    outputs: usize,
    weight: &[T],
    bias: &[T],
) -> (Vec<Vec<T>>, Vec<Vec<T>>) {
    let l = layout.layers[at];
    let (groups, slots) = (layout.groups, layout.slots);
    match l.form {
        Form::Columns => {
            let weights = (0..l.weights)
                .map(|t| {
                    let mut v = vec![T::default(); slots];
                    for g in 0..groups {
                        let col = t * groups + g;
                        if col < inputs {
                            for j in 0..outputs {
                                v[layout.slot(l.offset, g, j)] = weight[j * inputs + col];
                            }
                        }
                    }
                    v
                })
                .collect();
            let mut b = vec![T::default(); slots];
            for g in 0..groups {
                for (j, &x) in bias.iter().enumerate() {
                    b[layout.slot(l.offset, g, j)] = x;
                }
            }
            (weights, vec![b])
        }
        Form::Rows => {
            // Outputs land in the `block − inputs + 1` slots that end at each group's
            // offset (in every slot with one group); the bias covers all of them.
            let window = if groups == 1 {
                slots - 1
            } else {
                layout.block - inputs
            };
            (0..l.weights)
                .map(|u| {
                    let mut v = vec![T::default(); slots];
                    let mut b = vec![T::default(); slots];
                    for g in 0..groups {
                        let row = u * groups + g;
                        if row >= outputs {
                            continue;
                        }
                        for j in 0..inputs {
                            v[layout.slot(l.offset, g, j)] = weight[row * inputs + j];
                        }
                        for k in 0..=window {
                            b[layout.slot(l.offset + slots - window, g, k)] = bias[row];
                        }
                    }
                    (v, b)
                })
                .unzip()
        }
    }
}

/// The outputs of a protected part from the decoded slots of its result's ciphertexts (in
/// order), as the last layer's form leaves them.
pub(crate) fn read_outputs<T: Copy>(
    layout: &Layout,
    outputs: usize,
    decoded: &[Vec<T>],
) -> Result<Vec<T>, NnError> {
    let Some(last) = layout.layers.last() else {
        return Err(NnError::Format {
            what: "protected model",
            reason: "a protected part without layers".into(),
        });
    };
    let mut values = Vec::with_capacity(outputs);
    for slots in decoded {
        let at = |i: usize| {
            slots.get(i).copied().ok_or_else(|| {
                NnError::Internal(format!("slot {i} of a result of {} slots", slots.len()))
            })
        };
        match last.form {
            Form::Columns => {
                for j in 0..outputs {
                    values.push(at(layout.slot(last.offset, 0, j))?);
                }
            }
            Form::Rows => {
                for g in 0..layout.groups {
                    values.push(at(layout.slot(last.offset, g, 0))?);
                }
            }
        }
    }
    values.truncate(outputs);
    Ok(values)
}

impl ProtectPlan {
    /// Encrypts the protected layers under the owner's secret key (seed-compressed
    /// ciphertexts: half the size of public-key encryptions).
    ///
    /// # Errors
    /// [`NnError::Levels`] when the parameters have fewer levels than the protected part
    /// needs, or too few slots for its layout ([`ProtectedSpec::layout`]); encoding
    /// failures (weights too large for the scale).
    pub fn protect<B: Backend>(
        &self,
        params: &Arc<CkksParams>,
        sk: &SecretKey,
        be: &B,
        rng: &mut Prng,
    ) -> Result<ProtectedModel<B>, NnError> {
        self.protect_unless(params, sk, be, rng, &|| false)
    }

    /// [`Self::protect`], asking `cancelled` before each ciphertext and stopping with
    /// [`NnError::Cancelled`] once it says so (a service whose client went away).
    ///
    /// # Errors
    /// Those of [`Self::protect`]; [`NnError::Cancelled`].
    pub fn protect_unless<B: Backend>(
        &self,
        params: &Arc<CkksParams>,
        sk: &SecretKey,
        be: &B,
        rng: &mut Prng,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<ProtectedModel<B>, NnError> {
        let spec = self.spec().clone();
        if params.max_level() < spec.depth() {
            return Err(NnError::Levels {
                what: "the protected part".into(),
                needed: spec.depth(),
                have: params.max_level(),
            });
        }
        let layout = spec.layout(params.max_slots())?;
        let encoder = Encoder::new(params.n());
        let (steps, _, _) = schedule(params, &spec);
        // One ChaCha stream per ciphertext, seeded in order from `rng`, so that the
        // ciphertexts encrypt in parallel.
        let mut layers = Vec::with_capacity(spec.layers.len());
        for (at, (w, step)) in self.layers().iter().zip(&steps).enumerate() {
            let (weight_slots, bias_slots) = layer_slots(&layout, at, w);
            let mut encrypt = |vs: &[Vec<f64>], level: usize, scale: f64, what| {
                let jobs: Vec<(&Vec<f64>, [u8; 32])> = vs.iter().map(|v| (v, rng.seed())).collect();
                be.par_map(jobs, |(v, seed)| {
                    if cancelled() {
                        return Ok(None);
                    }
                    let pt = encoder.encode_real(be, params, v, level, scale, layout.slots)?;
                    encrypt_sk(sk, be, &pt, &mut Prng::from_seed(seed)).map(Some)
                })
                .into_iter()
                .collect::<Result<Option<Vec<_>>, _>>()
                .map_err(he(what))?
                .ok_or_else(|| NnError::Cancelled(format!("{what} of layer {}", at + 1)))
            };
            let weights = encrypt(
                &weight_slots,
                step.level,
                params.q_at(step.level),
                "protect: weights",
            )?;
            let biases = encrypt(
                &bias_slots,
                step.level - 1,
                step.out_scale,
                "protect: biases",
            )?;
            layers.push(EncryptedLayer { weights, biases });
        }
        Ok(ProtectedModel {
            spec,
            params: Arc::clone(params),
            layout,
            key_id: sk.key_id(),
            layers,
        })
    }
}

/// The features entering the protected part.
pub enum FeatureInput<B: Backend> {
    /// In the clear: the edge's own data, products are ciphertext × plaintext.
    Plain(Vec<f64>),
    /// Encrypted with [`ProtectedModel::encrypt_features`]: products are ciphertext ×
    /// ciphertext.
    Encrypted(Vec<Ciphertext<B>>),
}

/// The encrypted result of one evaluation (only the owner can decrypt it).
pub struct ProtectedOutput<B: Backend> {
    cts: Vec<Ciphertext<B>>,
}

impl<B: Backend> ProtectedOutput<B> {
    /// The ciphertexts.
    pub fn ciphertexts(&self) -> &[Ciphertext<B>] {
        &self.cts
    }

    /// Levels left in the result (the remaining "noise budget" of CKKS).
    pub fn levels_left(&self) -> usize {
        self.cts.iter().map(Ciphertext::level).min().unwrap_or(0)
    }
}

/// A value between protected layers.
enum Value<B: Backend> {
    /// One ciphertext holding the vector every `block` slots (after column groups).
    Replicated(Ciphertext<B>),
    /// One ciphertext per group of values (after row groups).
    Grouped(Vec<Ciphertext<B>>),
}

impl<B: Backend> ProtectedModel<B> {
    /// The public spec.
    pub fn spec(&self) -> &ProtectedSpec {
        &self.spec
    }

    /// The parameters.
    pub fn params(&self) -> &Arc<CkksParams> {
        &self.params
    }

    /// The slot layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Identifier of the owner key the weights are encrypted under.
    pub fn key_id(&self) -> [u8; 32] {
        self.key_id
    }

    /// Number of weight and bias ciphertexts.
    pub fn ciphertext_count(&self) -> usize {
        self.layout.ciphertexts()
    }

    /// The evaluation keys the edge needs: relinearization (for encrypted features and the
    /// squares) and the rotations of the group sums.
    pub fn key_requirements(&self) -> KeyRequirements {
        KeyRequirements::relin().with_rotations(self.layout.rotations())
    }

    fn check_keys(&self, eval: &Evaluator<B>) -> Result<(), NnError> {
        if eval.keys().key_id() != self.key_id {
            return Err(NnError::Mismatch {
                what: "owner key of the evaluation keys",
                expected: short(&self.key_id),
                found: short(&eval.keys().key_id()),
            });
        }
        if eval.params().rlwe().fingerprint() != self.params.rlwe().fingerprint() {
            return Err(NnError::Mismatch {
                what: "parameters of the evaluator",
                expected: short(&self.params.rlwe().fingerprint()),
                found: short(&eval.params().rlwe().fingerprint()),
            });
        }
        Ok(())
    }

    fn check_features(&self, features: &[f64]) -> Result<(), NnError> {
        if features.len() != self.spec.features() {
            return Err(NnError::Shape(format!(
                "{} features given, the protected part reads {}",
                features.len(),
                self.spec.features()
            )));
        }
        Ok(())
    }

    /// The features of column group `t`, encoded at the top level and the working scale.
    fn encode_column(
        &self,
        eval: &Evaluator<B>,
        features: &[f64],
        t: usize,
    ) -> Result<Plaintext<B>, CkksError> {
        let v = self.layout.feature_column(features, t);
        let (top, scale) = (self.params.max_level(), self.params.default_scale());
        eval.encode_real(&v, top, scale, self.layout.slots)
    }

    /// Encrypts a feature vector with the owner's public key, in the column-group layout
    /// (one ciphertext per weight ciphertext of the first layer).
    ///
    /// # Errors
    /// [`NnError::Shape`] for a wrong length; encoding failures.
    pub fn encrypt_features(
        &self,
        eval: &Evaluator<B>,
        pk: &PublicKey<B>,
        features: &[f64],
        rng: &mut Prng,
    ) -> Result<Vec<Ciphertext<B>>, NnError> {
        self.check_features(features)?;
        // One ChaCha stream per ciphertext, seeded from `rng`, so the columns encrypt in
        // parallel.
        let jobs: Vec<(usize, [u8; 32])> = (0..self.layout.layers[0].weights)
            .map(|t| (t, rng.seed()))
            .collect();
        eval.backend()
            .par_map(jobs, |(t, seed)| {
                let pt = self.encode_column(eval, features, t)?;
                encrypt_pk(pk, eval.backend(), &pt, &mut Prng::from_seed(seed))
            })
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(he("encrypt features"))
    }

    /// Runs the protected part on one feature vector.
    ///
    /// # Errors
    /// Keys of another owner or parameters, a wrong number of features or feature
    /// ciphertexts, feature ciphertexts at the wrong level or scale, missing keys.
    pub fn evaluate(
        &self,
        eval: &Evaluator<B>,
        input: &FeatureInput<B>,
    ) -> Result<ProtectedOutput<B>, NnError> {
        self.check_keys(eval)?;
        let first = &self.layers[0];
        let weights: Vec<&Ciphertext<B>> = first.weights.iter().collect();
        let products = match input {
            FeatureInput::Plain(features) => {
                self.check_features(features)?;
                let pts = eval
                    .backend()
                    .par_map((0..weights.len()).collect(), |t| {
                        self.encode_column(eval, features, t)
                    })
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(he("encode features"))?;
                eval.dot_plain(&weights, &pts.iter().collect::<Vec<_>>())
                    .map_err(he("layer 0"))?
            }
            FeatureInput::Encrypted(cts) => {
                if cts.len() != weights.len() {
                    return Err(NnError::Shape(format!(
                        "{} feature ciphertexts given, the protected part reads {}",
                        cts.len(),
                        weights.len()
                    )));
                }
                let tensor = eval
                    .dot(&weights, &cts.iter().collect::<Vec<_>>())
                    .map_err(he("layer 0"))?;
                eval.relinearize(tensor).map_err(he("layer 0"))?
            }
        };
        let mut value = Value::Replicated(
            self.sum_columns(eval, &products, first)
                .map_err(he("layer 0"))?,
        );
        for (at, layer) in self.layers.iter().enumerate() {
            let context = |what: &str| {
                let node = format!("protected {what} {at}");
                move |source: CkksError| NnError::Encrypted {
                    node,
                    source: source.into(),
                }
            };
            if at > 0 {
                value = self.linear(eval, value, layer, at)?;
            }
            if let Some(shift) = self.spec.layers[at].square {
                value = self
                    .square(eval, value, shift)
                    .map_err(context("activation after layer"))?;
            }
        }
        Ok(ProtectedOutput {
            cts: match value {
                Value::Replicated(ct) => vec![ct],
                Value::Grouped(cts) => cts,
            },
        })
    }

    /// A column layer's products summed over the groups, plus its bias. The groups are
    /// summed before the rescale: the rotations' key-switching noise is then divided by the
    /// level's prime with the products' (an output noise 2 to 3 bits lower, which the
    /// owner's noise flooding multiplies by 2^26.8), at the cost of one more limb per
    /// rotation.
    fn sum_columns(
        &self,
        eval: &Evaluator<B>,
        products: &Ciphertext<B>,
        layer: &EncryptedLayer<B>,
    ) -> Result<Ciphertext<B>, CkksError> {
        let y = eval.inner_sum(products, self.layout.block as i64, self.layout.groups)?;
        let y = eval.rescale(&y)?;
        eval.add(&y, &layer.biases[0])
    }

    /// Layer `at` (after the first): row groups on a replicated value, column groups on a
    /// grouped one.
    fn linear(
        &self,
        eval: &Evaluator<B>,
        value: Value<B>,
        layer: &EncryptedLayer<B>,
        at: usize,
    ) -> Result<Value<B>, NnError> {
        let encrypted = |source: hecnn_ckks::CkksError| NnError::Encrypted {
            node: format!("protected layer {at}"),
            source: source.into(),
        };
        let block = self.layout.block;
        match value {
            Value::Replicated(x) => {
                let cts = eval
                    .backend()
                    .par_map(
                        layer.weights.iter().zip(&layer.biases).collect(),
                        |(row, bias)| {
                            // Summed before the rescale, as in `sum_columns`.
                            let z = eval.inner_sum(&eval.mul_relin(row, &x)?, 1, block)?;
                            eval.add(&eval.rescale(&z)?, bias)
                        },
                    )
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(encrypted)?;
                Ok(Value::Grouped(cts))
            }
            Value::Grouped(xs) => {
                if xs.len() != layer.weights.len() {
                    return Err(NnError::Shape(format!(
                        "protected layer {at} reads {} ciphertexts, the layer before wrote {}",
                        layer.weights.len(),
                        xs.len()
                    )));
                }
                (|| {
                    let tensor = eval.dot(
                        &layer.weights.iter().collect::<Vec<_>>(),
                        &xs.iter().collect::<Vec<_>>(),
                    )?;
                    let products = eval.relinearize(tensor)?;
                    Ok(Value::Replicated(self.sum_columns(eval, &products, layer)?))
                })()
                .map_err(encrypted)
            }
        }
    }

    /// `(x + δ)²` slot-wise on every ciphertext of the value.
    fn square(
        &self,
        eval: &Evaluator<B>,
        value: Value<B>,
        shift: f64,
    ) -> Result<Value<B>, CkksError> {
        let square = |ct: &Ciphertext<B>| {
            let u = eval.add_const(ct, shift)?;
            eval.rescale(&eval.mul_relin(&u, &u)?)
        };
        Ok(match value {
            Value::Replicated(ct) => Value::Replicated(square(&ct)?),
            Value::Grouped(cts) => Value::Grouped(
                eval.backend()
                    .par_map(cts.iter().collect(), square)
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        })
    }
}

/// The ciphertext count, level and scale of a protected part's result.
fn output_shape(params: &CkksParams, spec: &ProtectedSpec, layout: &Layout) -> (usize, usize, f64) {
    let (_, level, scale) = schedule(params, spec);
    let last = layout.layers.last().map_or(1, |l| match l.form {
        Form::Columns => 1,
        Form::Rows => l.weights,
    });
    (last, level, scale)
}

/// The scale of the protected part's outputs under `params` (the working scale for the
/// default chains, up to the drift of the primes).
///
/// # Errors
/// Layout errors (too few slots).
pub fn output_scale(spec: &ProtectedSpec, params: &CkksParams) -> Result<f64, NnError> {
    let layout = spec.layout(params.max_slots())?;
    Ok(output_shape(params, spec, &layout).2)
}

/// Decrypts an edge node's result into the model's outputs (the owner's side).
///
/// # Errors
/// [`NnError::Shape`] for a result with the wrong number of ciphertexts; decryption
/// failures.
pub fn decrypt_output<B: Backend>(
    spec: &ProtectedSpec,
    params: &CkksParams,
    decryptor: &Decryptor<'_, B>,
    be: &B,
    out: &ProtectedOutput<B>,
) -> Result<Vec<f64>, NnError> {
    decrypt_output_with(spec, params, be, out, |ct| decryptor.decrypt(ct))
}

/// [`decrypt_output`] with the owner's own decryption of each ciphertext (for instance
/// [`Decryptor::decrypt_flooded`], for results that leave the owner).
///
/// # Errors
/// As [`decrypt_output`], and the errors of `decrypt`.
pub fn decrypt_output_with<B: Backend>(
    spec: &ProtectedSpec,
    params: &CkksParams,
    be: &B,
    out: &ProtectedOutput<B>,
    mut decrypt: impl FnMut(&Ciphertext<B>) -> Result<Plaintext<B>, CkksError>,
) -> Result<Vec<f64>, NnError> {
    let layout = spec.layout(params.max_slots())?;
    let (expected, _, _) = output_shape(params, spec, &layout);
    if out.cts.len() != expected {
        return Err(NnError::Shape(format!(
            "a result of {} ciphertexts, the model produces {expected}",
            out.cts.len()
        )));
    }
    let encoder = Encoder::new(params.n());
    let decoded = out
        .cts
        .iter()
        .map(|ct| {
            let pt = decrypt(ct).map_err(he("decrypt"))?;
            encoder.decode_real(be, params, &pt).map_err(he("decrypt"))
        })
        .collect::<Result<Vec<_>, NnError>>()?;
    read_outputs(&layout, spec.outputs(), &decoded)
}

/// `log2` of the output noise (coefficient domain) that [`output_flooding`] hides at ring
/// degree 2^13 ([`output_noise_bound_log2`] adds [`OUTPUT_NOISE_LOG2_PER_DOUBLING`] per
/// doubling of the degree, up to [`MAX_OUTPUT_NOISE_LOG2`]).
///
/// Measured with `hecnn bench protected` (bench/RESULTS.md §9b): the largest noise
/// estimated over the Gomez variants on MNIST and CIFAR-10, plain and encrypted features,
/// 128 to 256 bits (the estimator already doubles it) was 2^19.0 at N = 2^13, 2^20.1 at
/// 2^14 and 2^15.9 at 2^15, the largest from CIFAR-10's composed classifier on 2304
/// encrypted features; most variants stay below 2^16.7. The bound keeps a margin above
/// them: 2 bits at 2^13 (2^21.0), 5.3 bits from 2^15 (2^21.2), but only 1.1 bits at 2^14,
/// where [`MAX_OUTPUT_NOISE_LOG2`] (the widest flooding the exact sampler draws, 2^48)
/// caps it at 2^21.2: a wider margin there needs a wider sampler, or a per-model bound.
/// An owner who measured its own model may flood for a lower bound
/// ([`output_flooding_with`]): results above it are refused, not released.
/// A result noisier than the bound is not released ([`decrypt_output_flooded`] refuses it
/// with [`NnError::NoiseAboveBound`]): flooding sized on a typical rather than a worst-case
/// noise is what Guo et al. (USENIX Security 2024) attack.
pub const OUTPUT_NOISE_LOG2: f64 = 21.0;

/// Bits [`output_noise_bound_log2`] adds per doubling of the ring degree (the layouts sum
/// twice the groups, and a polynomial product's noise grows with the degree's square root;
/// the same variant measured 0.5 to 1.6 bits noisier at 2^14 than at 2^13).
pub const OUTPUT_NOISE_LOG2_PER_DOUBLING: f64 = 0.7;

/// The largest noise bound [`output_noise_bound_log2`] gives: the widest flooding the
/// sampler draws exactly ([`flooding::MAX_SIGMA_LOG2`]) at the default statistical
/// security and query count.
pub const MAX_OUTPUT_NOISE_LOG2: f64 = 21.2;

/// The noise bound [`output_flooding`] floods for at the parameters' ring degree:
/// [`OUTPUT_NOISE_LOG2`] `+` [`OUTPUT_NOISE_LOG2_PER_DOUBLING`]` · (log_n − 13)`, at most
/// [`MAX_OUTPUT_NOISE_LOG2`] (2^21.0 at N = 2^13, 2^21.2 from 2^14; below 2^13, 0.7 bit less
/// per halving).
pub fn output_noise_bound_log2(params: &CkksParams) -> f64 {
    let doublings = f64::from(params.rlwe().log_n()) - 13.0;
    (OUTPUT_NOISE_LOG2 + OUTPUT_NOISE_LOG2_PER_DOUBLING * doublings).min(MAX_OUTPUT_NOISE_LOG2)
}

/// How the owner floods a protected model's results before they leave it: the flooding
/// ([`hecnn_ckks::flooding`]) and what it costs each output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutputFlooding {
    flooding: Flooding,
    output_std: f64,
    output_log_q: f64,
}

impl OutputFlooding {
    /// The flooding: its statistical security, query count, noise bound and σ.
    pub fn flooding(&self) -> &Flooding {
        &self.flooding
    }

    /// Standard deviation the flooding adds to each output (logit): `σ·√(N/2) / scale`.
    pub fn output_std(&self) -> f64 {
        self.output_std
    }

    /// `log2` of the modulus the outputs are decrypted under.
    pub fn output_log_q(&self) -> f64 {
        self.output_log_q
    }

    /// Fractional bits of a flooded output worth releasing: `⌊−log2(output_std)⌋`, the
    /// bits above the flooding's standard deviation (0 when it moves outputs by more than
    /// 1). [`decrypt_output_flooded`] rounds the outputs to `2^-release_bits`.
    pub fn release_bits(&self) -> u32 {
        let bits = (-self.output_std.log2()).floor();
        if bits.is_finite() && bits > 0.0 {
            bits.min(52.0) as u32
        } else {
            0
        }
    }

    /// `x` rounded to `2^-release_bits`.
    pub fn round(&self, x: f64) -> f64 {
        let unit = f64::from(self.release_bits()).exp2();
        (x * unit).round() / unit
    }
}

/// The owner's flooding of `spec`'s results under `params`: at the default statistical
/// security over the default number of decryptions
/// ([`hecnn_ckks::flooding::DEFAULT_STATISTICAL_BITS`],
/// [`hecnn_ckks::flooding::DEFAULT_QUERIES_LOG2`]) for output noise up to
/// [`output_noise_bound_log2`].
///
/// # Errors
/// [`CkksError::FloodingTooWide`] (in [`NnError::Ckks`]) when the output level's modulus
/// cannot hold the flooding ([`parameters_unflooded`]'s single 49-bit output prime);
/// layout errors.
pub fn output_flooding(
    spec: &ProtectedSpec,
    params: &CkksParams,
) -> Result<OutputFlooding, NnError> {
    output_flooding_with(
        spec,
        params,
        Flooding::with_defaults(output_noise_bound_log2(params))?,
    )
}

/// [`output_flooding`] with a flooding of the caller's (another security, query count or
/// noise bound).
///
/// # Errors
/// As [`output_flooding`].
pub fn output_flooding_with(
    spec: &ProtectedSpec,
    params: &CkksParams,
    flooding: Flooding,
) -> Result<OutputFlooding, NnError> {
    let layout = spec.layout(params.max_slots())?;
    let (_, level, scale) = output_shape(params, spec, &layout);
    let output_log_q: f64 = (0..=level).map(|l| params.q_at(l).log2()).sum();
    if flooding.sigma_log2() + flooding::WRAP_MARGIN_BITS > output_log_q - 1.0 {
        return Err(CkksError::FloodingTooWide {
            sigma_log2: flooding.sigma_log2(),
            log_q: output_log_q,
        }
        .into());
    }
    Ok(OutputFlooding {
        flooding,
        output_std: flooding.slot_std(params.n(), scale),
        output_log_q,
    })
}

/// Decrypts an edge node's result for release (the owner's side): every ciphertext's noise
/// is estimated first, and a result noisier than the flooding's bound is refused; then each
/// ciphertext is decrypted with noise flooding ([`Decryptor::decrypt_flooded`]) and the
/// outputs are rounded to [`OutputFlooding::release_bits`].
///
/// # What the outcome leaks
/// Whether a result is released or refused is a function of its noise, that is of
/// `c0 + c1·s`: **each outcome tells whoever chose the ciphertext one bit about the secret
/// key**, and an adaptive edge that crafts results at the threshold can recover the key's
/// coefficients one by one in about `N` queries. The flooding hides everything else (the
/// released values), so the leak is exactly the refusals an attacker gets to see. Callers
/// must therefore (the owner service does both):
/// - bound the refusals per key: after a small budget, stop decrypting results under that
///   key altogether (and protect the model again under a fresh key), so at most that many
///   bits leave (honest results are not refused: the bound sits above every measured
///   noise);
/// - take every release decision from this function, the class included: an `argmax` of
///   an unflooded decryption is an oracle too.
///
/// The [`NnError::NoiseAboveBound`] error's message names the public bound only; its
/// `noise_log2` is the secret-dependent estimate, for the owner's eyes alone.
///
/// # Errors
/// [`NnError::NoiseAboveBound`]; the errors of [`decrypt_output`] and of the flooded
/// decryption.
pub fn decrypt_output_flooded<B: Backend>(
    spec: &ProtectedSpec,
    params: &CkksParams,
    decryptor: &Decryptor<'_, B>,
    be: &B,
    out: &ProtectedOutput<B>,
    flooding: &OutputFlooding,
    rng: &mut Prng,
) -> Result<Vec<f64>, NnError> {
    let encoder = Encoder::new(params.n());
    let bound_log2 = flooding.flooding.noise_log2();
    // Each ciphertext is decrypted once: every noise is checked before any result is
    // flooded, then the same plaintexts are flooded and decoded.
    let mut plain = Vec::with_capacity(out.cts.len());
    for ct in &out.cts {
        let pt = decryptor.decrypt(ct).map_err(he("decrypt"))?;
        let noise_log2 =
            flooding::estimate_noise_log2(&encoder, be, params, &pt).map_err(he("decrypt"))?;
        if noise_log2 > bound_log2 {
            return Err(NnError::NoiseAboveBound {
                noise_log2,
                bound_log2,
            });
        }
        plain.push(pt);
    }
    let mut plain = plain.into_iter();
    let values = decrypt_output_with(spec, params, be, out, |_| {
        let pt = plain.next().ok_or(CkksError::InvalidArgument {
            what: "a result with more ciphertexts than it was decrypted with",
        })?;
        decryptor.flood(pt, &flooding.flooding, rng)
    })?;
    Ok(values.into_iter().map(|v| flooding.round(v)).collect())
}

/// Bits [`measure_output_noise_log2`] adds to the largest noise it measures.
pub const MEASURED_NOISE_MARGIN_LOG2: f64 = 1.0;

/// The owner's measurement of a model's output noise, for a per-model flooding bound
/// ([`output_flooding_with`]; `hecnn protect --calibrate`): protects `plan` under a
/// throwaway key of its own, evaluates it on every feature vector of `features` with the
/// features in the clear and encrypted, and returns the largest estimated output noise
/// (`log2`, coefficient domain; [`hecnn_ckks::flooding::estimate_noise_log2`]) plus
/// [`MEASURED_NOISE_MARGIN_LOG2`]. The key never decrypts a released result, so the
/// measurement tells nothing about the owner's key.
///
/// The bound is as good as the features are representative: results noisier than it are
/// refused by [`decrypt_output_flooded`], so features unlike the edge's show up as refusals,
/// not as leaks.
///
/// # Errors
/// [`NnError::Shape`] for no feature vectors or ones of the wrong length; the errors of
/// protection, evaluation and decryption.
pub fn measure_output_noise_log2<B: Backend + Clone>(
    plan: &ProtectPlan,
    params: &Arc<CkksParams>,
    be: &B,
    features: &[Vec<f64>],
    rng: &mut Prng,
) -> Result<f64, NnError> {
    if features.is_empty() {
        return Err(NnError::Shape(
            "no feature vectors to measure the output noise on".into(),
        ));
    }
    let sk = SecretKey::generate(params.rlwe(), rng)?;
    let protected = plan.protect(params, &sk, be, rng)?;
    let keys = sk.evaluation_keys(be, &protected.key_requirements(), rng)?;
    let pk = sk.public_key(be, rng)?;
    let eval = Evaluator::new(Arc::clone(params), Arc::new(keys), be.clone())
        .map_err(he("measure noise"))?;
    let dec = Decryptor::new(&sk, be).map_err(he("measure noise"))?;
    let encoder = Encoder::new(params.n());
    let mut worst = 0.0f64;
    for f in features {
        let encrypted = protected.encrypt_features(&eval, &pk, f, rng)?;
        for input in [
            FeatureInput::Plain(f.clone()),
            FeatureInput::Encrypted(encrypted),
        ] {
            let out = protected.evaluate(&eval, &input)?;
            for ct in &out.cts {
                let pt = dec.decrypt(ct).map_err(he("measure noise"))?;
                worst = worst.max(
                    flooding::estimate_noise_log2(&encoder, be, params, &pt)
                        .map_err(he("measure noise"))?,
                );
            }
        }
    }
    Ok(worst + MEASURED_NOISE_MARGIN_LOG2)
}
