//! Protected models (Gomez et al.): the weights and biases of a model's classifier encrypted
//! under the model owner's key, so that an edge node runs a model it cannot read.
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
//! ciphertext when they are encrypted; see [`Layout`] for the slot layout. Levels: the
//! first layer consumes one, the square activation one and the second layer one.
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

mod plan;
mod wire;

pub use plan::{DenseWeights, Layout, ProtectPlan, ProtectedSpec, Scope};
pub use wire::{OUTPUT_MAGIC, PROTECTED_MAGIC, WIRE_VERSION};

use std::sync::Arc;

use hecnn_ckks::{
    Ciphertext, CkksError, CkksParams, Decryptor, Encoder, Evaluator, Plaintext, encrypt_pk,
    encrypt_sk,
};
use hecnn_ring::{Backend, Prng};
use hecnn_rlwe::{KeyRequirements, ParamsLiteral, PublicKey, SecretDistribution, SecretKey};

use crate::NnError;

/// Scale bits of the protected part's parameters.
pub const PROTECT_LOG_SCALE: u32 = 40;

/// Most switching keys an edge deployment may carry when it loads its evaluation keys (the
/// relinearization key and the rotations of the block sums: far fewer in practice).
pub const MAX_EDGE_KEYS: usize = 64;

fn he(what: &'static str) -> impl Fn(CkksError) -> NnError {
    move |source| NnError::Encrypted {
        node: what.to_string(),
        source,
    }
}

/// The smallest parameters for a protected part of depth `depth` at `security`: a 49-bit
/// output prime, one 40-bit prime per level, one 49-bit special prime, and the smallest
/// ring degree (from 2^13) whose bound in the security table admits them and whose slots
/// hold the first layer's block.
///
/// # Errors
/// [`NnError::Invalid`] when no ring degree up to 2^16 fits.
pub fn parameters(
    spec: &ProtectedSpec,
    security: hecnn_rlwe::SecurityLevel,
) -> Result<Arc<CkksParams>, NnError> {
    let mut log_q = vec![49];
    log_q.extend(std::iter::repeat_n(40, spec.depth()));
    let mut last = None;
    for log_n in 13..=16u32 {
        let lit = ParamsLiteral {
            log_n,
            log_q: log_q.clone(),
            log_p: vec![49],
            dnum: None,
            secret: SecretDistribution::Ternary,
            security,
        };
        match CkksParams::from_literal(&lit, PROTECT_LOG_SCALE) {
            Ok(p) if spec.layout(p.max_slots()).is_ok() => return Ok(Arc::new(p)),
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    Err(NnError::Invalid(format!(
        "no ring degree up to 2^16 fits the protected part at {security:?}{}",
        last.map(|e| format!(" ({e})")).unwrap_or_default()
    )))
}

/// Scales of the evaluation, in the evaluator's own floating-point order, so that the
/// owner encrypts every bias at exactly the scale the edge's value will have.
struct Scales {
    /// After the first layer.
    hidden: f64,
    /// After the second layer.
    out: f64,
}

fn scales(params: &CkksParams, top: usize) -> Scales {
    let features = params.default_scale();
    let hidden = features * params.q_at(top) / params.q_at(top);
    let square = hidden * hidden / params.q_at(top.saturating_sub(1));
    let out = square * params.q_at(top.saturating_sub(2)) / params.q_at(top.saturating_sub(2));
    Scales { hidden, out }
}

/// A protected model as the edge holds it: the public spec and the encrypted layers.
pub struct ProtectedModel<B: Backend> {
    spec: ProtectedSpec,
    params: Arc<CkksParams>,
    layout: Layout,
    key_id: [u8; 32],
    /// First layer, one ciphertext per column group (top level, scale `q_top`).
    columns: Vec<Ciphertext<B>>,
    /// First layer's bias, repeated in every block.
    hidden_bias: Ciphertext<B>,
    /// Second layer, one ciphertext per row group.
    rows: Vec<Ciphertext<B>>,
    /// Second layer's bias, per row group, in the first slot of each block.
    out_bias: Vec<Ciphertext<B>>,
}

impl ProtectPlan {
    /// Encrypts the protected layers under the owner's secret key (seed-compressed
    /// ciphertexts: half the size of public-key encryptions).
    ///
    /// # Errors
    /// [`NnError::Invalid`] when the parameters have fewer levels than the protected part
    /// needs or too few slots; encoding failures (weights too large for the scale).
    pub fn protect<B: Backend>(
        &self,
        params: &Arc<CkksParams>,
        sk: &SecretKey,
        be: &B,
        rng: &mut Prng,
    ) -> Result<ProtectedModel<B>, NnError> {
        let spec = self.spec().clone();
        let top = params.max_level();
        if top < spec.depth() {
            return Err(NnError::Invalid(format!(
                "the protected part needs {} levels, the parameters have {top}",
                spec.depth()
            )));
        }
        let layout = spec.layout(params.max_slots())?;
        let encoder = Encoder::new(params.n());
        let slots = layout.slots;
        let mut encrypt = |v: &[f64], level: usize, scale: f64, what| {
            let pt = encoder
                .encode_real(be, params, v, level, scale, slots)
                .map_err(he(what))?;
            encrypt_sk(sk, be, &pt, rng).map_err(he(what))
        };
        let s = scales(params, top);
        let w1 = self.first();
        let mut columns = Vec::with_capacity(layout.columns);
        for t in 0..layout.columns {
            let mut v = vec![0.0; slots];
            for (g, block) in v.chunks_mut(layout.block).enumerate() {
                let col = t * layout.groups + g;
                if col < w1.inputs {
                    for (j, x) in block.iter_mut().take(w1.outputs).enumerate() {
                        *x = w1.weight[j * w1.inputs + col];
                    }
                }
            }
            columns.push(encrypt(&v, top, params.q_at(top), "protect: first layer")?);
        }
        let mut bias = vec![0.0; slots];
        for block in bias.chunks_mut(layout.block) {
            block[..w1.outputs].copy_from_slice(&w1.bias);
        }
        let hidden_bias = encrypt(&bias, top - 1, s.hidden, "protect: first bias")?;
        let (mut rows, mut out_bias) = (Vec::new(), Vec::new());
        if let Some(w2) = self.second() {
            let level = top - 2;
            for u in 0..layout.rows {
                let mut v = vec![0.0; slots];
                let mut b = vec![0.0; slots];
                for g in 0..layout.groups {
                    let row = u * layout.groups + g;
                    if row < w2.outputs {
                        let dst = &mut v[g * layout.block..g * layout.block + w2.inputs];
                        dst.copy_from_slice(&w2.weight[row * w2.inputs..(row + 1) * w2.inputs]);
                        b[g * layout.block] = w2.bias[row];
                    }
                }
                rows.push(encrypt(
                    &v,
                    level,
                    params.q_at(level),
                    "protect: second layer",
                )?);
                out_bias.push(encrypt(&b, level - 1, s.out, "protect: second bias")?);
            }
        }
        Ok(ProtectedModel {
            spec,
            params: Arc::clone(params),
            layout,
            key_id: sk.key_id(),
            columns,
            hidden_bias,
            rows,
            out_bias,
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
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Identifier of the owner key the weights are encrypted under.
    pub fn key_id(&self) -> [u8; 32] {
        self.key_id
    }

    /// Number of weight and bias ciphertexts.
    pub fn ciphertext_count(&self) -> usize {
        self.columns.len() + 1 + self.rows.len() + self.out_bias.len()
    }

    /// The evaluation keys the edge needs: relinearization (for encrypted features and the
    /// square) and the rotations of the block sums.
    pub fn key_requirements(&self) -> KeyRequirements {
        KeyRequirements::relin().with_rotations(self.layout.rotations(self.spec.second.is_some()))
    }

    fn check_keys(&self, eval: &Evaluator<B>) -> Result<(), NnError> {
        if eval.keys().key_id() != self.key_id {
            return Err(NnError::Invalid(
                "the evaluation keys belong to another owner key than the protected model".into(),
            ));
        }
        if eval.params().rlwe().fingerprint() != self.params.rlwe().fingerprint() {
            return Err(NnError::Invalid(
                "the evaluator's parameters differ from the protected model's".into(),
            ));
        }
        Ok(())
    }

    fn check_features(&self, features: &[f64]) -> Result<(), NnError> {
        if features.len() != self.spec.features {
            return Err(NnError::Shape(format!(
                "{} features given, the protected part reads {}",
                features.len(),
                self.spec.features
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
        let jobs: Vec<(usize, [u8; 32])> =
            (0..self.layout.columns).map(|t| (t, rng.seed())).collect();
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
        let columns: Vec<&Ciphertext<B>> = self.columns.iter().collect();
        let hidden = match input {
            FeatureInput::Plain(features) => {
                self.check_features(features)?;
                let pts = eval
                    .backend()
                    .par_map((0..self.layout.columns).collect(), |t| {
                        self.encode_column(eval, features, t)
                    })
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(he("encode features"))?;
                let pts: Vec<_> = pts.iter().collect();
                eval.dot_plain(&columns, &pts).map_err(he("first layer"))?
            }
            FeatureInput::Encrypted(cts) => {
                if cts.len() != columns.len() {
                    return Err(NnError::Shape(format!(
                        "{} feature ciphertexts given, the protected part reads {}",
                        cts.len(),
                        columns.len()
                    )));
                }
                let tensor = eval
                    .dot(&columns, &cts.iter().collect::<Vec<_>>())
                    .map_err(he("first layer"))?;
                eval.relinearize(tensor).map_err(he("first layer"))?
            }
        };
        let first = (|| {
            let y = eval.rescale(&hidden)?;
            let y = eval.inner_sum(&y, self.layout.block as i64, self.layout.groups)?;
            eval.add(&y, &self.hidden_bias)
        })()
        .map_err(he("first layer"))?;
        let Some((shift, _)) = self.spec.second else {
            return Ok(ProtectedOutput { cts: vec![first] });
        };
        let square = (|| {
            let u = eval.add_const(&first, shift)?;
            eval.rescale(&eval.mul_relin(&u, &u)?)
        })()
        .map_err(he("activation"))?;
        let block = self.layout.block;
        let cts = eval
            .backend()
            .par_map(
                self.rows.iter().zip(&self.out_bias).collect(),
                |(row, bias)| {
                    let z = eval.rescale(&eval.mul_relin(row, &square)?)?;
                    let z = eval.inner_sum(&z, 1, block)?;
                    eval.add(&z, bias)
                },
            )
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(he("second layer"))?;
        Ok(ProtectedOutput { cts })
    }
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
    let layout = spec.layout(params.max_slots())?;
    let expected = if spec.second.is_some() {
        layout.rows
    } else {
        1
    };
    if out.cts.len() != expected {
        return Err(NnError::Shape(format!(
            "a result of {} ciphertexts, the model produces {expected}",
            out.cts.len()
        )));
    }
    let encoder = Encoder::new(params.n());
    let mut values = Vec::with_capacity(spec.outputs());
    for ct in &out.cts {
        let pt = decryptor.decrypt(ct).map_err(he("decrypt"))?;
        let slots = encoder
            .decode_real(be, params, &pt)
            .map_err(he("decrypt"))?;
        match spec.second {
            None => values.extend_from_slice(&slots[..spec.hidden]),
            Some(_) => values.extend(slots.iter().step_by(layout.block).take(layout.groups)),
        }
    }
    values.truncate(spec.outputs());
    Ok(values)
}
