//! Protected models in BFV: Gomez et al.'s own setting (they ran SEAL's BFV).
//!
//! The owner quantizes the protected layers ([`crate::quant`]: integer weights per output
//! neuron, the features quantized to integers over a calibrated range as the batch mode
//! quantizes pixels), and encrypts them under its secret key, one BFV instance per
//! plaintext modulus (plaintext CRT, [`Crt`], when the outputs need more than one prime).
//! The edge evaluates them on its own features, in the clear or encrypted, in the slot
//! layout of the CKKS protected models ([`Layout`], in the first row of BFV's `2 × N/2`
//! slot matrix, whose row rotations are CKKS's slot rotations).
//!
//! What BFV gives here that CKKS does not:
//! - the owner's decryption is **exact**: every output equals the integer reference
//!   ([`BfvProtectPlan::reference`]) bit for bit;
//! - the decryption of a result an honest edge computed reveals nothing about its noise,
//!   so no flooding is needed (CKKS's results need [`super::output_flooding`]). A dishonest
//!   edge is another matter, in either scheme: it can send crafted ciphertexts as
//!   "results" (a noiseless `(0, Δ·X^k)` decrypts to the secret key's coefficients, a
//!   replayed weight ciphertext to the weights), so an owner who decrypts results from an
//!   untrusted edge and shows the outputs to it is a decryption oracle; release classes
//!   only to such parties, and bound the decryptions per key;
//! - the **noise budget** left in every result is measured at decryption and predicted by
//!   the plan for each layer ([`BfvProtectPlan::budgets`]), the figure Gomez et al. report.
//!
//! A square activation `a·(y + δ)² + c` becomes `x²` of a layer whose bias carries `δ`
//! (nothing is shifted in the encrypted domain), its `a` scales the next layer's weights, and
//! its `c` is folded into the next layer's integer biases through the quantized weights (see
//! [`crate::quant`]): folded in reals before quantizing, the constant `c·Σ W` would no
//! longer cancel against the rounded weights.
//!
//! ```
//! use std::sync::Arc;
//! use hecnn_nn::protect::{ProtectPlan, Scope};
//! use hecnn_nn::protect::bfv::{BfvFeatures, BfvProtectOptions, BfvProtectPlan};
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
//! let mut opts = BfvProtectOptions::with_feature_range((-1.0, 2.0));
//! opts.bfv.ring = Some(ParamsLiteral { log_n: 10, log_q: vec![50; 4], log_p: vec![50],
//!     dnum: None, secret: SecretDistribution::Ternary,
//!     security: SecurityLevel::UncheckedForReproduction }); // a toy ring, for speed
//! let plan = BfvProtectPlan::new(&ProtectPlan::new(&model, Scope::Classifier)?, &opts)?;
//! let be = CpuBackend::new(1)?;
//! let mut rng = Prng::from_seed([7; 32]);
//!
//! // Owner: keys and the protected model.
//! let sk = SecretKey::generate(&plan.rlwe()?, &mut rng)?;
//! let protected = plan.protect(&sk, &be, &mut rng)?;
//! let keys = Arc::new(sk.evaluation_keys(&be, &protected.key_requirements(), &mut rng)?);
//!
//! // Edge: features in the clear, encrypted weights.
//! let image = Tensor::new(vec![1, 2, 2], vec![0.5, -1.0, 0.25, 2.0])?;
//! let features = protected.quantize_features(&protected.spec().features_of(&image)?)?;
//! let out = protected.evaluate(&keys, &be, &BfvFeatures::Plain(features.clone()))?;
//!
//! // Owner: exact decryption.
//! let result = plan.decrypt(&sk, &be, &out)?;
//! assert_eq!(result.values, plan.reference(&features)?);
//! assert!(result.budget_bits > 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use hecnn_bfv::{
    BatchEncoder, BfvError, BfvParams, Ciphertext, Decryptor, Evaluator, NoiseEstimate, NoiseModel,
    encrypt_pk, encrypt_sk,
};
use hecnn_ring::{Backend, Prng};
use hecnn_rlwe::{EvaluationKeys, KeyRequirements, Params, ParamsLiteral, PublicKey, SecretKey};

use super::{Form, Layout, ProtectPlan, ProtectedSpec, layer_slots_of, read_outputs};
use crate::bfv_batch::{
    BfvOptions, Crt, EXHAUSTED_BELOW_BITS, MAX_CRT_BITS, bfv_error, candidate_rings, fit_ring,
};
use crate::compile::client::short;
use crate::ir::{Dense, Node};
use crate::quant::{InputQuant, QuantLayer, QuantModel, QuantSpec};
use crate::{Model, NnError, Op, Tensor};

/// How [`BfvProtectPlan::new`] quantizes and chooses parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct BfvProtectOptions {
    /// The quantization: `input_bits` for the features, `weight_bits` for the protected
    /// weights, `input_range` the range of the features (values outside it are clamped:
    /// calibrate it on the owner's data with [`feature_range`]).
    pub quant: QuantSpec,
    /// Security, noise margin, a fixed ring, most plaintext moduli.
    pub bfv: BfvOptions,
}

impl BfvProtectOptions {
    /// 8-bit features over `range` and 8-bit weights, 128-bit security, a 3-bit noise
    /// margin, the ring chosen by the planner.
    pub fn with_feature_range(range: (f64, f64)) -> Self {
        Self {
            quant: QuantSpec {
                input_bits: 8,
                weight_bits: 8,
                input_range: range,
            },
            bfv: BfvOptions::default(),
        }
    }
}

/// The range of feature vectors (for [`QuantSpec::input_range`]): from `min(0, smallest)`
/// to the largest value seen; `None` for no finite value above 0.
pub fn feature_range<'a>(samples: impl IntoIterator<Item = &'a [f64]>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for v in samples.into_iter().flatten().filter(|v| v.is_finite()) {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    (hi > 0.0).then_some((lo, hi))
}

/// One protected layer in integers: `y = W·x + b`, `W` row-major `[outputs][inputs]`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct IntLayer {
    pub(super) inputs: usize,
    pub(super) outputs: usize,
    weight: Vec<i128>,
    bias: Vec<i128>,
}

/// The owner's BFV plan of a protected part: the integer layers, the ring, the plaintext
/// moduli and the predicted noise budget of every layer. It holds cleartext weights: it
/// never leaves the owner (the edge gets a [`BfvProtectedModel`]).
#[derive(Clone, Debug)]
pub struct BfvProtectPlan {
    pub(super) spec: ProtectedSpec,
    pub(super) quant: QuantModel,
    pub(super) layers: Vec<IntLayer>,
    pub(super) squares: Vec<bool>,
    pub(super) layout: Layout,
    pub(super) ring: ParamsLiteral,
    pub(super) moduli: Vec<u64>,
    pub(super) budgets: Vec<f64>,
    /// `[plain, encrypted]` features: the predicted budget after every layer, worst
    /// instance.
    pub(super) by_features: [Vec<f64>; 2],
    pub(super) output_bound: u128,
}

/// The protected part as an integer chain: `Dense → x² → Dense …` with each activation's
/// shift in the bias before it.
fn protected_model(plan: &ProtectPlan) -> Result<Model, NnError> {
    let spec = plan.spec();
    let node = |name: String, op, input: Option<usize>| Node {
        name,
        op,
        inputs: input.into_iter().collect(),
    };
    let mut nodes = vec![
        node("features".into(), Op::Input, None),
        node("features.flatten".into(), Op::Flatten, Some(0)),
    ];
    // The constant `c/a` of each activation, as the input of the layer after it.
    let constant = |i: usize| match plan.folds().get(i) {
        Some(Some((a, c))) => c / a,
        _ => 0.0,
    };
    for (i, (w, shape)) in plan.layers().iter().zip(&spec.layers).enumerate() {
        let shift = shape.square.unwrap_or(0.0);
        // The bias without the activation's folded constant (`c·Σ W`): the integer chain
        // folds it through the quantized weights instead, where it cancels exactly.
        let unfolded = constant(i);
        let dense = Dense {
            weight: Tensor::new(vec![w.outputs, w.inputs], w.weight.clone())?,
            bias: w
                .bias
                .iter()
                .enumerate()
                .map(|(k, b)| {
                    let row = &w.weight[k * w.inputs..(k + 1) * w.inputs];
                    b - unfolded * row.iter().sum::<f64>() + shift
                })
                .collect(),
        };
        let at = nodes.len() - 1;
        nodes.push(node(
            format!("protected layer {i}"),
            Op::Dense(dense),
            Some(at),
        ));
        if shape.square.is_some() {
            let at = nodes.len() - 1;
            nodes.push(node(
                format!("protected square {i}"),
                Op::Poly(vec![constant(i + 1), 0.0, 1.0]),
                Some(at),
            ));
        }
    }
    Ok(Model {
        name: format!("{} (protected part)", spec.prefix.name),
        input_shape: [spec.features(), 1, 1],
        output: nodes.len() - 1,
        nodes,
    })
}

/// The dense integer matrices of the quantized chain's linear layers, and after which of
/// them a square follows.
pub(super) fn int_layers(quant: &QuantModel) -> Result<(Vec<IntLayer>, Vec<bool>), NnError> {
    let mut layers = Vec::new();
    let mut squares: Vec<bool> = Vec::new();
    let mut inputs = quant.input_len();
    for layer in quant.layers() {
        match layer {
            QuantLayer::Linear { rows, .. } => {
                let outputs = rows.len();
                let mut weight = vec![0i128; outputs * inputs];
                for (k, row) in rows.iter().enumerate() {
                    for &(j, w) in &row.terms {
                        let at = weight.get_mut(k * inputs + j as usize).ok_or_else(|| {
                            NnError::Internal(format!("input {j} of a layer of {inputs}"))
                        })?;
                        *at += i128::from(w);
                    }
                }
                layers.push(IntLayer {
                    inputs,
                    outputs,
                    weight,
                    bias: rows.iter().map(|r| r.bias).collect(),
                });
                squares.push(false);
                inputs = outputs;
            }
            QuantLayer::Square { node } => match squares.last_mut() {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(NnError::Internal(format!(
                        "'{node}': a square that follows no linear layer"
                    )));
                }
            },
        }
    }
    Ok((layers, squares))
}

/// `Σ_{j < count} rot(x, j·stride)` on a noise estimate, in the evaluator's order.
fn inner_sum_noise(x: NoiseEstimate, stride: i64, count: usize) -> Result<NoiseEstimate, BfvError> {
    let mut acc: Option<NoiseEstimate> = None;
    let mut cur = x;
    let (mut shift, mut block, mut i) = (0i64, 1usize, 0);
    while block <= count {
        if count >> i & 1 == 1 {
            let part = if shift == 0 {
                cur.clone()
            } else {
                cur.rotate_rows(shift)?
            };
            acc = Some(match acc {
                None => part,
                Some(a) => a.add(&part)?,
            });
            shift += stride * block as i64;
        }
        if block * 2 <= count {
            cur = cur.add(&cur.rotate_rows(stride * block as i64)?)?;
        }
        block <<= 1;
        i += 1;
    }
    Ok(acc.unwrap_or(cur))
}

/// What the first layer's product noise is multiplied by, for the prediction only.
/// [`hecnn_bfv::noise`]'s model, calibrated on chains of products, rotations and plaintext
/// products, underestimates these layouts' first layer (products summed over the column
/// groups by `log2 groups` rotations): measured on the MNIST models of `hecnn bench
/// protected --scheme bfv` at `N = 2^13` to `2^15`, the budget left was 2.3 to 3.5 bits
/// below the model's prediction with features in the clear and 2.1 to 3.4 bits below with
/// encrypted features (the toy models of `tests/protect_bfv.rs`: up to 3.7 bits). Why
/// the model misses it is not established; 16 (4 bits) covers what was measured, and the
/// plan keeps its margin on top.
const FIRST_LAYER_ALLOWANCE: u64 = 16;

/// `n` independent copies of `x` summed.
fn sum_of(x: &NoiseEstimate, n: usize) -> Result<NoiseEstimate, BfvError> {
    let mut acc = x.clone();
    for _ in 1..n {
        acc = acc.add(x)?;
    }
    Ok(acc)
}

/// The predicted budget after every protected layer for plaintext modulus `t` on `rlwe`,
/// features in the clear (`encrypted == false`) or encrypted with the public key.
fn predict(
    rlwe: &Params,
    t: u64,
    layout: &Layout,
    squares: &[bool],
    encrypted: bool,
) -> Result<Vec<f64>, BfvError> {
    let model = NoiseModel::for_modulus(rlwe, t);
    let w = model.fresh_sk();
    let (block, groups) = (layout.block as i64, layout.groups);
    let mut out = Vec::with_capacity(layout.layers.len());
    let mut x: Option<NoiseEstimate> = None;
    for (l, &square) in layout.layers.iter().zip(squares) {
        let y = match (l.form, x.take()) {
            (Form::Columns, input) => {
                let product = match input {
                    None if encrypted => w
                        .mul(&model.fresh_pk())?
                        .mul_scalar(FIRST_LAYER_ALLOWANCE)?,
                    None => w.mul_plain_uniform().mul_scalar(FIRST_LAYER_ALLOWANCE)?,
                    Some(x) => w.mul(&x)?,
                };
                let mut sum = sum_of(&product, l.weights)?;
                if sum.degree() == 2 {
                    sum = sum.relinearize()?;
                }
                inner_sum_noise(sum, block, groups)?.add(&w)?
            }
            (Form::Rows, Some(x)) => inner_sum_noise(w.mul_relin(&x)?, 1, layout.block)?.add(&w)?,
            (Form::Rows, None) => {
                return Err(BfvError::InvalidArgument {
                    what: "a protected part that starts with a row layer",
                });
            }
        };
        let y = if square { y.square_relin()? } else { y };
        out.push(y.budget_bits());
        x = Some(y);
    }
    Ok(out)
}

impl BfvProtectPlan {
    /// Quantizes the protected layers of `plan` and chooses the ring and plaintext moduli:
    /// the moduli's product holds the worst-case output over the quantized feature range,
    /// and the predicted budget (features in the clear or encrypted, whichever is worse)
    /// keeps the margin after every layer.
    ///
    /// # Errors
    /// [`NnError::Quantization`] for a bad spec; [`NnError::OutOfRange`] when the outputs
    /// need more than 126 bits; [`NnError::NoBfvParameters`] when no ring at the security
    /// level holds the noise (the message says what to try); layout errors.
    pub fn new(plan: &ProtectPlan, opts: &BfvProtectOptions) -> Result<Self, NnError> {
        let spec = plan.spec().clone();
        let quant = QuantModel::quantize(&protected_model(plan)?, &opts.quant)?;
        let (layers, squares) = int_layers(&quant)?;
        if layers.len() != spec.layers.len() {
            return Err(NnError::Internal(format!(
                "{} protected layers quantized to {}",
                spec.layers.len(),
                layers.len()
            )));
        }
        let output_bound = quant.bounds()?.output_magnitude();
        let need_bits = ((2.0 * output_bound as f64) + 2.0).log2();
        if need_bits > (MAX_CRT_BITS - 1) as f64 {
            return Err(NnError::OutOfRange {
                node: quant.name().into(),
                value: output_bound as f64,
                bound: 2f64.powi(MAX_CRT_BITS as i32 - 2),
                what: "output magnitude plaintext CRT can hold (quantize to fewer bits)",
            });
        }
        let rings = match &opts.bfv.ring {
            Some(r) => vec![r.clone()],
            None => candidate_rings(opts.bfv.security),
        };
        let mut best: Option<(crate::bfv_batch::Candidate, Layout)> = None;
        for ring in &rings {
            let Some(slots) = ring
                .log_n
                .checked_sub(1)
                .and_then(|k| 1usize.checked_shl(k))
            else {
                continue;
            };
            let Ok(layout) = spec.layout(slots) else {
                continue;
            };
            let predict = |rlwe: &Params, t: u64| {
                let plain = predict(rlwe, t, &layout, &squares, false)?;
                let enc = predict(rlwe, t, &layout, &squares, true)?;
                Ok(plain.iter().zip(&enc).map(|(a, b)| a.min(*b)).collect())
            };
            if let Some(c) = fit_ring(ring, predict, output_bound, &opts.bfv)?
                && best.as_ref().is_none_or(|(b, _)| c.cost < b.cost)
            {
                best = Some((c, layout));
            }
        }
        let Some((best, layout)) = best else {
            return Err(NnError::NoBfvParameters {
                security: opts.bfv.security,
                need_bits,
                reason: format!(
                    "no ring of {} tried holds the layout and keeps a predicted noise budget of \
                     {} bits with at most {} plaintext primes; quantize the features or \
                     weights to fewer bits, or protect fewer layers",
                    rings.len(),
                    opts.bfv.margin_bits,
                    opts.bfv.max_moduli
                ),
            });
        };
        let rlwe = best
            .ring
            .build()
            .map_err(|e| bfv_error("parameters", e.into()))?;
        let mut by_features = [Vec::new(), Vec::new()];
        for (encrypted, worst) in [false, true].into_iter().zip(&mut by_features) {
            for &t in &best.moduli {
                let b = predict(&rlwe, t, &layout, &squares, encrypted)
                    .map_err(|e| bfv_error("parameters", e))?;
                *worst = if worst.is_empty() {
                    b
                } else {
                    worst.iter().zip(&b).map(|(x, y)| x.min(*y)).collect()
                };
            }
        }
        Ok(Self {
            spec,
            quant,
            layers,
            squares,
            layout,
            ring: best.ring,
            moduli: best.moduli,
            budgets: best.budgets,
            by_features,
            output_bound,
        })
    }

    /// The public spec.
    pub fn spec(&self) -> &ProtectedSpec {
        &self.spec
    }

    /// The integer chain (the reference's layers).
    pub fn quant(&self) -> &QuantModel {
        &self.quant
    }

    /// The slot layout at the plan's ring degree.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The ring's parameter literal.
    pub fn ring(&self) -> &ParamsLiteral {
        &self.ring
    }

    /// The plaintext moduli, one BFV instance each.
    pub fn moduli(&self) -> &[u64] {
        &self.moduli
    }

    /// The predicted noise budget (bits) after every protected layer, for the worse of
    /// plain and encrypted features and the worst instance.
    pub fn budgets(&self) -> &[f64] {
        &self.budgets
    }

    /// The predicted noise budget (bits) after every protected layer for features in the
    /// clear (`encrypted == false`) or encrypted with the public key, worst instance.
    pub fn predicted_budgets(&self, encrypted: bool) -> &[f64] {
        &self.by_features[usize::from(encrypted)]
    }

    /// The worst-case output magnitude over the quantized feature range (`Π t_i` exceeds
    /// twice it).
    pub fn output_bound(&self) -> u128 {
        self.output_bound
    }

    /// The ring's checked parameters.
    ///
    /// # Errors
    /// [`NnError::Encrypted`] if the literal does not build.
    pub fn rlwe(&self) -> Result<Arc<Params>, NnError> {
        Ok(Arc::new(
            self.ring
                .build()
                .map_err(|e| bfv_error("parameters", e.into()))?,
        ))
    }

    /// The protected part on quantized features, in integers: what decryption gives.
    ///
    /// # Errors
    /// [`NnError::Shape`] for the wrong number of features; overflow of the executor.
    pub fn reference(&self, features: &[i64]) -> Result<Vec<i128>, NnError> {
        self.quant.run(features)
    }

    /// A summary: ring, moduli, bounds, the predicted budget of every layer.
    pub fn report(&self) -> String {
        let r = &self.ring;
        let bits = |v: u128| u128::BITS - v.leading_zeros();
        let mut s = format!(
            "BFV protected part: N = 2^{}, {} ciphertext primes of {:?} bits, {} special, {}; \
             plaintext {} prime(s) {:?} ({:.1} bits) for outputs within ±2^{} (worst case); \
             {} weight and bias ciphertexts per prime; predicted budget after each layer:",
            r.log_n,
            r.log_q.len(),
            r.log_q,
            r.log_p.len(),
            r.security,
            self.moduli.len(),
            self.moduli,
            self.moduli.iter().map(|&t| (t as f64).log2()).sum::<f64>(),
            bits(self.output_bound),
            self.layout.ciphertexts()
        );
        for b in &self.budgets {
            s.push_str(&format!(" {b:.1}"));
        }
        s.push_str(" bits");
        s
    }

    fn instances(&self, rlwe: &Arc<Params>) -> Result<Vec<Arc<BfvParams>>, NnError> {
        self.moduli
            .iter()
            .map(|&t| {
                BfvParams::new(Arc::clone(rlwe), t)
                    .map(Arc::new)
                    .map_err(|e| bfv_error("parameters", e))
            })
            .collect()
    }

    fn check_key(&self, rlwe: &Params, sk: &SecretKey) -> Result<(), NnError> {
        if sk.params().fingerprint() != rlwe.fingerprint() {
            return Err(NnError::Mismatch {
                what: "secret key",
                expected: "a key for the plan's ring".into(),
                found: "a key made for other parameters".into(),
            });
        }
        Ok(())
    }

    /// Encrypts the protected layers under the owner's secret key (seed-compressed), one
    /// set per plaintext modulus.
    ///
    /// # Errors
    /// A key of other parameters; encryption failures.
    pub fn protect<B: Backend>(
        &self,
        sk: &SecretKey,
        be: &B,
        rng: &mut Prng,
    ) -> Result<BfvProtectedModel<B>, NnError> {
        let rlwe = self.rlwe()?;
        self.check_key(&rlwe, sk)?;
        let params = self.instances(&rlwe)?;
        let mut instances = Vec::with_capacity(params.len());
        for p in &params {
            let enc = BatchEncoder::new(p).map_err(|e| bfv_error("parameters", e))?;
            let t = p.t() as i128;
            let mut layers = Vec::with_capacity(self.layers.len());
            for (at, l) in self.layers.iter().enumerate() {
                let (ws, bs) =
                    layer_slots_of(&self.layout, at, l.inputs, l.outputs, &l.weight, &l.bias);
                let mut encrypt = |vs: Vec<Vec<i128>>, what: &str| {
                    let jobs: Vec<(Vec<i128>, [u8; 32])> =
                        vs.into_iter().map(|v| (v, rng.seed())).collect();
                    be.par_map(jobs, |(v, seed)| {
                        let residues: Vec<u64> = v.iter().map(|x| x.rem_euclid(t) as u64).collect();
                        let pt = enc.encode(&residues)?;
                        encrypt_sk(p, sk, be, &pt, &mut Prng::from_seed(seed))
                    })
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bfv_error(&format!("protect: {what} of layer {at}"), e))
                };
                let weights = encrypt(ws, "weights")?;
                let biases = encrypt(bs, "biases")?;
                layers.push(EncryptedLayer { weights, biases });
            }
            instances.push(layers);
        }
        // The edge's spec says where a square is, not its shift: BFV folds the shift into
        // the encrypted bias, and the public file need not carry it.
        let mut spec = self.spec.clone();
        for l in &mut spec.layers {
            l.square = l.square.map(|_| 0.0);
        }
        Ok(BfvProtectedModel {
            spec,
            input: self.quant.input(),
            ring: self.ring.clone(),
            moduli: self.moduli.clone(),
            layout: self.layout.clone(),
            squares: self.squares.clone(),
            key_id: sk.key_id(),
            params,
            instances,
        })
    }

    /// Decrypts an edge's result (the owner's side): the exact integer outputs, the logits
    /// they stand for, and the smallest noise budget left in any result ciphertext.
    ///
    /// # Errors
    /// [`NnError::OutOfRange`] for a result whose budget is exhausted (its decryption would
    /// be wrong); the wrong number of instances or ciphertexts; a key of other parameters.
    pub fn decrypt<B: Backend>(
        &self,
        sk: &SecretKey,
        be: &B,
        out: &BfvProtectedOutput<B>,
    ) -> Result<BfvDecrypted, NnError> {
        let rlwe = self.rlwe()?;
        self.check_key(&rlwe, sk)?;
        let params = self.instances(&rlwe)?;
        let per_instance = output_ciphertexts(&self.layout);
        if out.cts.len() != params.len() || out.cts.iter().any(|c| c.len() != per_instance) {
            return Err(NnError::Mismatch {
                what: "encrypted result",
                expected: format!("{} instances of {per_instance} ciphertexts", params.len()),
                found: format!(
                    "{:?} ciphertexts per instance",
                    out.cts.iter().map(Vec::len).collect::<Vec<_>>()
                ),
            });
        }
        let mut residues: Vec<Vec<u64>> = Vec::with_capacity(params.len());
        let mut budget = f64::INFINITY;
        for (i, (p, cts)) in params.iter().zip(&out.cts).enumerate() {
            let err = |e| bfv_error("decrypt", e);
            let enc = BatchEncoder::new(p).map_err(err)?;
            let dec = Decryptor::new(p, sk, be).map_err(err)?;
            let mut decoded = Vec::with_capacity(cts.len());
            for (k, ct) in cts.iter().enumerate() {
                let b = dec.noise_budget_bits(ct).map_err(err)?;
                if b < EXHAUSTED_BELOW_BITS {
                    return Err(NnError::BudgetExhausted {
                        what: format!(
                            "result ciphertext {k} (plaintext modulus {})",
                            self.moduli[i]
                        ),
                        bound_bits: EXHAUSTED_BELOW_BITS,
                    });
                }
                budget = budget.min(b);
                decoded.push(enc.decode(&dec.decrypt(ct).map_err(err)?).map_err(err)?);
            }
            residues.push(read_outputs(&self.layout, self.spec.outputs(), &decoded)?);
        }
        let crt = Crt::new(&self.moduli)?;
        let values = (0..self.spec.outputs())
            .map(|j| {
                let r = residues
                    .iter()
                    .map(|r| {
                        r.get(j).copied().ok_or_else(|| {
                            NnError::Internal(format!("output {j} missing from a result"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                crt.combine(&r)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BfvDecrypted {
            logits: self.quant.dequantize(&values),
            values,
            budget_bits: budget,
        })
    }
}

/// Ciphertexts per instance in a result of `layout`: one after column groups, one per row
/// group after row groups.
fn output_ciphertexts(layout: &Layout) -> usize {
    match layout.layers.last() {
        Some(l) if l.form == Form::Rows => l.weights,
        _ => 1,
    }
}

/// An owner's decryption of a BFV protected result.
#[derive(Clone, Debug, PartialEq)]
pub struct BfvDecrypted {
    /// The integer outputs, exact.
    pub values: Vec<i128>,
    /// The real values they stand for (`value / scale` per output).
    pub logits: Vec<f64>,
    /// The smallest noise budget (bits) left in any result ciphertext, measured. A
    /// function of the secret key: an owner's diagnostic, never to be released to whoever
    /// sent the result.
    pub budget_bits: f64,
}

/// One protected layer's ciphertexts in one instance.
pub(super) struct EncryptedLayer<B: Backend> {
    pub(super) weights: Vec<Ciphertext<B>>,
    pub(super) biases: Vec<Ciphertext<B>>,
}

/// The features entering a BFV protected part.
pub enum BfvFeatures<B: Backend> {
    /// Quantized features in the clear ([`BfvProtectedModel::quantize_features`]):
    /// products are ciphertext × plaintext.
    Plain(Vec<i64>),
    /// Encrypted with [`BfvProtectedModel::encrypt_features`] (`[instance][column]`):
    /// products are ciphertext × ciphertext.
    Encrypted(Vec<Vec<Ciphertext<B>>>),
}

/// The encrypted result of one evaluation, `[instance][ciphertext]` (only the owner can
/// decrypt it: [`BfvProtectPlan::decrypt`]).
pub struct BfvProtectedOutput<B: Backend> {
    pub(super) cts: Vec<Vec<Ciphertext<B>>>,
}

impl<B: Backend> BfvProtectedOutput<B> {
    /// The ciphertexts, per instance.
    pub fn ciphertexts(&self) -> &[Vec<Ciphertext<B>>] {
        &self.cts
    }
}

/// A BFV protected model as the edge holds it: the public spec, the features'
/// quantization, the ring and moduli, and the encrypted layers of every instance.
pub struct BfvProtectedModel<B: Backend> {
    pub(super) spec: ProtectedSpec,
    pub(super) input: InputQuant,
    pub(super) ring: ParamsLiteral,
    pub(super) moduli: Vec<u64>,
    pub(super) layout: Layout,
    pub(super) squares: Vec<bool>,
    pub(super) key_id: [u8; 32],
    pub(super) params: Vec<Arc<BfvParams>>,
    /// `[instance][layer]`.
    pub(super) instances: Vec<Vec<EncryptedLayer<B>>>,
}

/// `Σ_{j < count} rot(ct, j·stride)` with row rotations (the algorithm of
/// [`hecnn_ckks::inner_sum_rotations`]: its rotation keys serve).
fn inner_sum<B: Backend>(
    eval: &Evaluator<B>,
    ct: &Ciphertext<B>,
    stride: i64,
    count: usize,
) -> Result<Ciphertext<B>, BfvError> {
    let mut acc: Option<Ciphertext<B>> = None;
    let mut cur = ct.clone();
    let (mut shift, mut block, mut i) = (0i64, 1usize, 0);
    while block <= count {
        if count >> i & 1 == 1 {
            let part = if shift == 0 {
                cur.clone()
            } else {
                eval.rotate_rows(&cur, shift)?
            };
            acc = Some(match acc {
                None => part,
                Some(mut a) => {
                    eval.add_assign(&mut a, &part)?;
                    a
                }
            });
            shift += stride * block as i64;
        }
        if block * 2 <= count {
            let r = eval.rotate_rows(&cur, stride * block as i64)?;
            eval.add_assign(&mut cur, &r)?;
        }
        block <<= 1;
        i += 1;
    }
    Ok(acc.unwrap_or(cur))
}

/// `Σ_k f(k)` for `k < n`, the terms computed in parallel chunks (one per worker, so
/// that at most that many products exist at once beside the partial sums).
fn par_sum<B: Backend>(
    eval: &Evaluator<B>,
    n: usize,
    f: impl Fn(usize) -> Result<Ciphertext<B>, BfvError> + Sync + Send,
) -> Result<Ciphertext<B>, BfvError> {
    let workers = eval.backend().parallelism().clamp(1, n.max(1));
    let chunk = n.div_ceil(workers).max(1);
    let ranges: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(chunk)
        .map(|s| s..(s + chunk).min(n))
        .collect();
    let partial = eval.backend().par_map(ranges, |r| {
        let mut acc: Option<Ciphertext<B>> = None;
        for k in r {
            let term = f(k)?;
            match acc.as_mut() {
                None => acc = Some(term),
                Some(a) => eval.add_assign(a, &term)?,
            }
        }
        Ok::<_, BfvError>(acc)
    });
    let mut total: Option<Ciphertext<B>> = None;
    for p in partial {
        if let Some(p) = p? {
            match total.as_mut() {
                None => total = Some(p),
                Some(t) => eval.add_assign(t, &p)?,
            }
        }
    }
    total.ok_or(BfvError::InvalidArgument {
        what: "a sum of no terms",
    })
}

/// `Σ_t w_t · x_t` (degree 2), one [`Evaluator::dot`] per worker, the partial sums added.
fn par_dot<B: Backend>(
    eval: &Evaluator<B>,
    w: &[Ciphertext<B>],
    x: &[Ciphertext<B>],
) -> Result<Ciphertext<B>, BfvError> {
    let pairs: Vec<(&Ciphertext<B>, &Ciphertext<B>)> = w.iter().zip(x).collect();
    let workers = eval.backend().parallelism().clamp(1, pairs.len().max(1));
    let chunks: Vec<&[(&Ciphertext<B>, &Ciphertext<B>)]> =
        pairs.chunks(pairs.len().div_ceil(workers).max(1)).collect();
    let mut total: Option<Ciphertext<B>> = None;
    for part in eval.backend().par_map(chunks, |c| eval.dot(c)) {
        let part = part?;
        match total.as_mut() {
            None => total = Some(part),
            Some(t) => eval.add_assign(t, &part)?,
        }
    }
    total.ok_or(BfvError::InvalidArgument {
        what: "a dot product of no pairs",
    })
}

impl<B: Backend> BfvProtectedModel<B> {
    /// The public spec.
    pub fn spec(&self) -> &ProtectedSpec {
        &self.spec
    }

    /// The slot layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The ring's parameter literal.
    pub fn ring(&self) -> &ParamsLiteral {
        &self.ring
    }

    /// The plaintext moduli.
    pub fn moduli(&self) -> &[u64] {
        &self.moduli
    }

    /// The BFV parameters of every instance.
    pub fn params(&self) -> &[Arc<BfvParams>] {
        &self.params
    }

    /// Identifier of the owner key the weights are encrypted under.
    pub fn key_id(&self) -> [u8; 32] {
        self.key_id
    }

    /// Ciphertexts per instance in a result.
    pub fn output_ciphertexts(&self) -> usize {
        output_ciphertexts(&self.layout)
    }

    /// Weight and bias ciphertexts over all instances.
    pub fn ciphertext_count(&self) -> usize {
        self.layout.ciphertexts() * self.instances.len()
    }

    /// Bytes of the encrypted layers as serialized (seed-compressed where the encryption
    /// allows).
    ///
    /// # Errors
    /// Serialization failures.
    pub fn encrypted_bytes(&self, be: &B) -> Result<usize, NnError> {
        let mut total = 0usize;
        for (p, layers) in self.params.iter().zip(&self.instances) {
            for l in layers {
                for ct in l.weights.iter().chain(&l.biases) {
                    total += ct
                        .to_bytes(be, p)
                        .map_err(|e| bfv_error("serialize", e))?
                        .len();
                }
            }
        }
        Ok(total)
    }

    /// The evaluation keys the edge needs: relinearization and the rotations of the sums.
    pub fn key_requirements(&self) -> KeyRequirements {
        KeyRequirements::relin().with_rotations(self.layout.rotations())
    }

    /// Real features quantized as the owner's plan expects them (clamped to its range).
    ///
    /// # Errors
    /// [`NnError::Shape`] for the wrong number of features.
    pub fn quantize_features(&self, features: &[f64]) -> Result<Vec<i64>, NnError> {
        self.check_len(features.len())?;
        let q = self.input;
        Ok(features
            .iter()
            .map(|&v| {
                let r = (v * q.scale).round();
                if r.is_nan() {
                    0
                } else {
                    (r as i64).clamp(q.lo, q.hi)
                }
            })
            .collect())
    }

    fn check_len(&self, n: usize) -> Result<(), NnError> {
        if n != self.spec.features() {
            return Err(NnError::Shape(format!(
                "{n} features given, the protected part reads {}",
                self.spec.features()
            )));
        }
        Ok(())
    }

    fn check_features(&self, q: &[i64]) -> Result<(), NnError> {
        self.check_len(q.len())?;
        let (lo, hi) = (self.input.lo, self.input.hi);
        if let Some((i, &v)) = q.iter().enumerate().find(|(_, v)| !(lo..=hi).contains(*v)) {
            return Err(NnError::OutOfRange {
                node: format!("feature {i}"),
                value: v as f64,
                bound: hi.max(-lo) as f64,
                what: "quantized feature range (quantize with quantize_features)",
            });
        }
        Ok(())
    }

    /// The quantized features of column group `t` as slot values mod `t_i`.
    fn column(&self, q: &[i64], t: usize, modulus: u64) -> Vec<u64> {
        let residues: Vec<u64> = q
            .iter()
            .map(|&v| i128::from(v).rem_euclid(i128::from(modulus)) as u64)
            .collect();
        self.layout.feature_column(&residues, t)
    }

    /// Encrypts quantized features with the owner's public key, `[instance][column]`.
    ///
    /// # Errors
    /// The wrong number of features or a value outside the quantized range; a public key
    /// of other parameters; encryption failures.
    pub fn encrypt_features(
        &self,
        pk: &PublicKey<B>,
        features: &[i64],
        be: &B,
        rng: &mut Prng,
    ) -> Result<Vec<Vec<Ciphertext<B>>>, NnError> {
        self.check_features(features)?;
        let columns = self.layout.layers[0].weights;
        let mut out = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let enc = BatchEncoder::new(p).map_err(|e| bfv_error("parameters", e))?;
            let jobs: Vec<(usize, [u8; 32])> = (0..columns).map(|t| (t, rng.seed())).collect();
            let cts = be
                .par_map(jobs, |(t, seed)| {
                    let pt = enc.encode(&self.column(features, t, p.t()))?;
                    encrypt_pk(p, pk, be, &pt, &mut Prng::from_seed(seed))
                })
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bfv_error("encrypt features", e))?;
            out.push(cts);
        }
        Ok(out)
    }

    /// Runs the protected part on one feature vector, every instance in turn.
    ///
    /// # Errors
    /// Keys of another owner or ring, missing rotation keys; the wrong number of features,
    /// instances or feature ciphertexts; feature ciphertexts of other parameters.
    pub fn evaluate(
        &self,
        keys: &Arc<EvaluationKeys<B>>,
        be: &B,
        input: &BfvFeatures<B>,
    ) -> Result<BfvProtectedOutput<B>, NnError>
    where
        B: Clone,
    {
        if keys.key_id() != self.key_id {
            return Err(NnError::Mismatch {
                what: "owner key of the evaluation keys",
                expected: short(&self.key_id),
                found: short(&keys.key_id()),
            });
        }
        match input {
            BfvFeatures::Plain(q) => self.check_features(q)?,
            BfvFeatures::Encrypted(cts) => {
                let want = self.layout.layers[0].weights;
                if cts.len() != self.params.len() || cts.iter().any(|c| c.len() != want) {
                    return Err(NnError::Shape(format!(
                        "feature ciphertexts {:?} per instance, the protected part reads {} \
                         instances of {want}",
                        cts.iter().map(Vec::len).collect::<Vec<_>>(),
                        self.params.len()
                    )));
                }
            }
        }
        let mut cts = Vec::with_capacity(self.params.len());
        for (i, (p, layers)) in self.params.iter().zip(&self.instances).enumerate() {
            let eval = Evaluator::new(Arc::clone(p), Arc::clone(keys), be.clone())
                .map_err(|e| bfv_error("evaluation keys", e))?;
            cts.push(self.evaluate_instance(&eval, layers, input, i)?);
        }
        Ok(BfvProtectedOutput { cts })
    }

    fn evaluate_instance(
        &self,
        eval: &Evaluator<B>,
        layers: &[EncryptedLayer<B>],
        input: &BfvFeatures<B>,
        instance: usize,
    ) -> Result<Vec<Ciphertext<B>>, NnError> {
        let (block, groups) = (self.layout.block, self.layout.groups);
        let modulus = eval.params().t();
        let enc = BatchEncoder::new(eval.params()).map_err(|e| bfv_error("parameters", e))?;
        // Replicated: one ciphertext; grouped: one per row group.
        let mut value: Vec<Ciphertext<B>> = Vec::new();
        for (at, (layer, shape)) in layers.iter().zip(&self.layout.layers).enumerate() {
            let err = |e| bfv_error(&format!("protected layer {at}"), e);
            let bias = |k: usize| {
                layer
                    .biases
                    .get(k)
                    .ok_or_else(|| NnError::Internal(format!("bias {k} of protected layer {at}")))
            };
            value = match shape.form {
                Form::Columns => {
                    let sum = if at == 0 {
                        match input {
                            BfvFeatures::Plain(q) => par_sum(eval, layer.weights.len(), |t| {
                                let pt = enc.encode(&self.column(q, t, modulus))?;
                                eval.mul_plain(&layer.weights[t], &pt)
                            }),
                            BfvFeatures::Encrypted(cts) => {
                                par_dot(eval, &layer.weights, &cts[instance])
                            }
                        }
                    } else {
                        if value.len() != layer.weights.len() {
                            return Err(NnError::Shape(format!(
                                "protected layer {at} reads {} ciphertexts, the layer before \
                                 wrote {}",
                                layer.weights.len(),
                                value.len()
                            )));
                        }
                        par_dot(eval, &layer.weights, &value)
                    }
                    .map_err(err)?;
                    let sum = if sum.degree() == 2 {
                        eval.relinearize(&sum).map_err(err)?
                    } else {
                        sum
                    };
                    let y = inner_sum(eval, &sum, block as i64, groups).map_err(err)?;
                    vec![eval.add(&y, bias(0)?).map_err(err)?]
                }
                Form::Rows => {
                    let x = value.first().ok_or_else(|| {
                        NnError::Internal(format!("protected layer {at} has no input"))
                    })?;
                    if layer.weights.len() != layer.biases.len() {
                        return Err(NnError::Internal(format!(
                            "protected layer {at}: {} weight and {} bias ciphertexts",
                            layer.weights.len(),
                            layer.biases.len()
                        )));
                    }
                    let jobs: Vec<(&Ciphertext<B>, &Ciphertext<B>)> =
                        layer.weights.iter().zip(&layer.biases).collect();
                    eval.backend()
                        .par_map(jobs, |(row, b)| {
                            let z = inner_sum(eval, &eval.mul_relin(row, x)?, 1, block)?;
                            eval.add(&z, b)
                        })
                        .into_iter()
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(err)?
                }
            };
            if self.squares.get(at).copied().unwrap_or(false) {
                value = eval
                    .backend()
                    .par_map(value, |ct| eval.mul_relin(&ct, &ct))
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bfv_error(&format!("protected square {at}"), e))?;
            }
        }
        Ok(value)
    }
}
