//! Batch packing (HCNN): one image per SIMD slot, one ciphertext per neuron, so one
//! evaluation classifies `n/2` images and needs no rotation keys.
//!
//! Linear layers are integer-weighted sums of ciphertexts (one fused, lazily reduced
//! multiply-sum per output neuron). Squares are evaluated lazily: `a·x² + b·x + c` is written
//! `a'·(x + δ)² + γ'`, the ciphertext keeps the un-relinearized, un-rescaled tensor `u⊗u`,
//! and the next linear layer folds `a'` into its weights and `γ'` into its bias before one
//! relinearization per *output* neuron. Every value carries a pending affine map
//! `true = a·ct + γ` that the next layer (or the client, after decryption) applies, so scales
//! stay exact: each linear layer lands on the working scale `Δ`.

use hecnn_ckks::{Ciphertext, CkksError, Evaluator};
use hecnn_ring::Backend;

use crate::{
    Model, NnError, Op,
    linear::{Row, rows},
};

/// How a value's ciphertexts relate to its true value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Form {
    /// Degree-1 ciphertexts at the working scale: `true = a·ct + γ`.
    Linear,
    /// Lazily squared: degree-2 tensors `u⊗u` at the square of the working scale, not
    /// rescaled: `true = a·(u⊗u) + γ`.
    Squared,
}

/// Per-node facts of the plan (no cryptography).
#[derive(Clone, Debug, PartialEq)]
pub struct NodePlan {
    /// Form of the node's value.
    pub form: Form,
    /// Levels consumed from the input up to (and including) this node.
    pub depth: usize,
    /// Number of neurons (ciphertexts).
    pub neurons: usize,
}

/// A checked batch-mode plan for a rewritten model.
#[derive(Clone, Debug)]
pub struct BatchPlan {
    model: Model,
    shapes: Vec<Vec<usize>>,
    nodes: Vec<NodePlan>,
    last_use: Vec<usize>,
}

/// A square whose value is read by at least this many weighted-sum terms per neuron (on
/// average) is relinearized and rescaled right away: the consuming layer then works on two
/// components and one limb fewer, which outweighs one relinearization per square. Below it,
/// the square stays lazy and the consumer relinearizes its (fewer) outputs instead.
pub const EAGER_FAN_OUT: usize = 32;

/// Average number of weighted-sum terms that read each neuron of node `id` (0 unless its only
/// consumer is a linear layer).
fn fan_out(model: &Model, shapes: &[Vec<usize>], id: usize) -> Result<usize, NnError> {
    let consumers: Vec<usize> = (0..model.nodes.len())
        .filter(|&k| model.nodes[k].inputs.contains(&id))
        .collect();
    let [k] = consumers.as_slice() else {
        return Ok(0);
    };
    let neurons: usize = shapes[id].iter().product();
    Ok(match rows(&model.nodes[*k].op, &shapes[id], &shapes[*k])? {
        Some(r) => r.iter().map(|row| row.terms.len()).sum::<usize>() / neurons.max(1),
        None => 0,
    })
}

/// Levels a linear layer consumes for an input of this form.
fn linear_cost(form: Form) -> usize {
    match form {
        Form::Linear => 1,
        Form::Squared => 2,
    }
}

impl BatchPlan {
    /// Plans a model that has been through [`crate::rewrite`].
    ///
    /// # Errors
    /// [`NnError::Invalid`] for operators batch mode cannot run (non-polynomial operators,
    /// activations of degree above 2).
    pub fn new(model: &Model) -> Result<Self, NnError> {
        let shapes = model.shapes()?;
        let mut nodes: Vec<NodePlan> = Vec::with_capacity(model.nodes.len());
        for (id, node) in model.nodes.iter().enumerate() {
            let neurons = shapes[id].iter().product();
            let input = node.inputs.first().map(|&i| nodes[i].clone());
            let plan = match (&node.op, input) {
                (Op::Input, _) => NodePlan {
                    form: Form::Linear,
                    depth: 0,
                    neurons,
                },
                (Op::Flatten, Some(p)) => NodePlan { neurons, ..p },
                (Op::Poly(c), Some(p)) => {
                    if c.len() > 3 && c[3..].iter().any(|&v| v != 0.0) {
                        return Err(NnError::Invalid(format!(
                            "activation '{}' has degree {}: batch mode evaluates degree ≤ 2 (x², a·x²+b·x+c)",
                            node.name,
                            c.len() - 1
                        )));
                    }
                    let square = c.get(2).is_some_and(|&v| v != 0.0);
                    match (square, p.form) {
                        (false, _) => p,
                        (true, Form::Linear) if fan_out(model, &shapes, id)? >= EAGER_FAN_OUT => {
                            NodePlan {
                                form: Form::Linear,
                                depth: p.depth + 1,
                                neurons,
                            }
                        }
                        (true, Form::Linear) => NodePlan {
                            form: Form::Squared,
                            ..p
                        },
                        // Materialize (an identity linear layer), then square.
                        (true, Form::Squared) => NodePlan {
                            form: Form::Squared,
                            depth: p.depth + 2,
                            neurons,
                        },
                    }
                }
                (Op::Add, Some(p)) => {
                    let q = &nodes[node.inputs[1]];
                    if p.form == Form::Linear && q.form == Form::Linear {
                        NodePlan {
                            form: Form::Linear,
                            depth: p.depth.max(q.depth),
                            neurons,
                        }
                    } else {
                        let d = p.depth.max(q.depth) + 2;
                        NodePlan {
                            form: Form::Linear,
                            depth: d,
                            neurons,
                        }
                    }
                }
                (op, Some(p)) if rows(op, &shapes[node.inputs[0]], &shapes[id])?.is_some() => {
                    NodePlan {
                        form: Form::Linear,
                        depth: p.depth + linear_cost(p.form),
                        neurons,
                    }
                }
                (op, _) => {
                    return Err(NnError::Invalid(format!(
                        "operator {} ('{}') cannot run in batch mode; rewrite the model first",
                        op.kind(),
                        node.name
                    )));
                }
            };
            nodes.push(plan);
        }
        let mut last_use = vec![0usize; model.nodes.len()];
        for (id, node) in model.nodes.iter().enumerate() {
            for &i in &node.inputs {
                last_use[i] = id;
            }
        }
        last_use[model.output] = usize::MAX;
        Ok(Self {
            model: model.clone(),
            shapes,
            nodes,
            last_use,
        })
    }

    /// Levels the whole evaluation consumes (the output is made linear if needed).
    pub fn depth(&self) -> usize {
        let out = &self.nodes[self.model.output];
        out.depth + if out.form == Form::Squared { 2 } else { 0 }
    }

    /// Number of input ciphertexts (`C·H·W`).
    pub fn inputs(&self) -> usize {
        self.model.input_shape.iter().product()
    }

    /// The planned model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Per-node plan facts.
    pub fn nodes(&self) -> &[NodePlan] {
        &self.nodes
    }

    /// Estimated peak memory of the ciphertexts alive at once during one batch, for ring
    /// degree `n` and `top_level` levels at the input (each value is freed after its last
    /// use; a lazily squared value has three components, others two).
    pub fn peak_ciphertext_bytes(&self, n: usize, top_level: usize) -> usize {
        let size = |id: usize| {
            let p = &self.nodes[id];
            let comps = if p.form == Form::Squared { 3 } else { 2 };
            let limbs = top_level.saturating_sub(p.depth) + 1;
            p.neurons * comps * limbs * n * 8
        };
        let mut live = 0usize;
        let mut peak = 0usize;
        for (id, node) in self.model.nodes.iter().enumerate() {
            // Flatten moves its input; every other node allocates its output.
            if !matches!(node.op, Op::Flatten) {
                live += size(id);
            }
            peak = peak.max(live);
            for &i in &node.inputs {
                if self.last_use[i] == id && !matches!(node.op, Op::Flatten) {
                    live = live.saturating_sub(size(i));
                }
            }
        }
        peak
    }

    /// Ciphertext-level operation counts: (weighted-sum terms, tensor products,
    /// relinearizations, rescales).
    ///
    /// # Errors
    /// Shape errors (none for a plan that was built).
    pub fn op_counts(&self) -> Result<(usize, usize, usize, usize), NnError> {
        let (mut terms, mut squares, mut relins, mut rescales) = (0, 0, 0, 0);
        for (id, node) in self.model.nodes.iter().enumerate() {
            let Some(&i) = node.inputs.first() else {
                continue;
            };
            let input = &self.nodes[i];
            match &node.op {
                Op::Poly(c) if c.get(2).is_some_and(|&v| v != 0.0) => {
                    squares += self.nodes[id].neurons;
                    if self.nodes[id].form == Form::Linear {
                        // Eager square: relinearized and rescaled right away.
                        relins += self.nodes[id].neurons;
                        rescales += self.nodes[id].neurons;
                    }
                }
                op => {
                    if let Some(r) = rows(op, &self.shapes[i], &self.shapes[id])? {
                        terms += r.iter().map(|row| row.terms.len()).sum::<usize>();
                        let k = r.len();
                        rescales += k * linear_cost(input.form);
                        if input.form == Form::Squared {
                            relins += k;
                        }
                    }
                }
            }
        }
        Ok((terms, squares, relins, rescales))
    }
}

/// A value during encrypted evaluation.
struct Value<B: Backend> {
    cts: Vec<Ciphertext<B>>,
    form: Form,
    a: f64,
    gamma: f64,
}

// Not derived: the derive would require `B: Clone`, but ciphertexts clone for any backend.
impl<B: Backend> Clone for Value<B> {
    fn clone(&self) -> Self {
        Self {
            cts: self.cts.clone(),
            form: self.form,
            a: self.a,
            gamma: self.gamma,
        }
    }
}

/// The decrypted-side meaning of the output ciphertexts: `logit = a·decoded + γ`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutputMap {
    /// Multiplier.
    pub a: f64,
    /// Offset.
    pub gamma: f64,
}

/// Errors of the runtime, with the node that failed.
fn at(node: &str) -> impl Fn(CkksError) -> NnError + '_ {
    move |source| NnError::Encrypted {
        node: node.to_string(),
        source,
    }
}

impl BatchPlan {
    /// Runs the plan on encrypted inputs (one ciphertext per input pixel, `C×H×W` order, all
    /// at the same level and scale). `progress(done, total)` is called after every node.
    ///
    /// # Errors
    /// Too few levels, wrong input count, evaluation errors (with the node name).
    pub fn run_encrypted<B: Backend>(
        &self,
        eval: &Evaluator<B>,
        inputs: Vec<Ciphertext<B>>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(Vec<Ciphertext<B>>, OutputMap), NnError> {
        if inputs.len() != self.inputs() {
            return Err(NnError::Shape(format!(
                "{} input ciphertexts, the model takes {}",
                inputs.len(),
                self.inputs()
            )));
        }
        let level = inputs.iter().map(Ciphertext::level).min().unwrap_or(0);
        if level < self.depth() {
            return Err(NnError::Invalid(format!(
                "the inputs have {level} levels, the model needs {}",
                self.depth()
            )));
        }
        let delta = inputs.first().map_or(1.0, Ciphertext::scale);
        let total = self.model.nodes.len();
        let mut values: Vec<Option<Value<B>>> = (0..total).map(|_| None).collect();
        values[0] = Some(Value {
            cts: inputs,
            form: Form::Linear,
            a: 1.0,
            gamma: 0.0,
        });
        progress(1, total);
        for id in 1..total {
            let node = &self.model.nodes[id];
            let err = at(&node.name);
            let input = |k: usize| {
                values[node.inputs[k]].as_ref().ok_or_else(|| {
                    NnError::Invalid(format!("value of node {} was freed early", node.inputs[k]))
                })
            };
            let value = match &node.op {
                Op::Flatten => {
                    let i = node.inputs[0];
                    if self.last_use[i] == id {
                        // Last use: move the ciphertexts instead of copying them.
                        values[i]
                            .take()
                            .ok_or_else(|| NnError::Invalid("flatten input missing".into()))?
                    } else {
                        input(0)?.clone()
                    }
                }
                Op::Poly(c) => {
                    let v = input(0)?;
                    let v = if v.form == Form::Squared && c.get(2).is_some_and(|&x| x != 0.0) {
                        &self.materialize(eval, v, delta, &err)?
                    } else {
                        v
                    };
                    let out = poly(eval, v, c, &err)?;
                    if out.form == Form::Squared && self.nodes[id].form == Form::Linear {
                        relinearize_rescale(eval, out, &err)?
                    } else {
                        out
                    }
                }
                Op::Add => {
                    let (u, v) = (input(0)?, input(1)?);
                    self.add(eval, u, v, delta, &err)?
                }
                op => {
                    let i = node.inputs[0];
                    let r = rows(op, &self.shapes[i], &self.shapes[id])?.ok_or_else(|| {
                        NnError::Invalid(format!("'{}' is not a batch-mode operator", node.name))
                    })?;
                    linear(eval, input(0)?, &r, delta, &err)?
                }
            };
            values[id] = Some(value);
            for &i in &node.inputs {
                if self.last_use[i] == id {
                    values[i] = None;
                }
            }
            progress(id + 1, total);
        }
        let out = values[self.model.output]
            .take()
            .ok_or_else(|| NnError::Invalid("no output".into()))?;
        let out = if out.form == Form::Squared {
            self.materialize(eval, &out, delta, &at("output"))?
        } else {
            out
        };
        Ok((
            out.cts,
            OutputMap {
                a: out.a,
                gamma: out.gamma,
            },
        ))
    }

    /// Relinearizes and rescales a lazily squared value (an identity linear layer).
    fn materialize<B: Backend>(
        &self,
        eval: &Evaluator<B>,
        v: &Value<B>,
        delta: f64,
        err: &impl Fn(CkksError) -> NnError,
    ) -> Result<Value<B>, NnError> {
        let identity: Vec<Row> = (0..v.cts.len())
            .map(|i| Row {
                terms: vec![(i, 1.0)],
                bias: 0.0,
            })
            .collect();
        linear(eval, v, &identity, delta, err)
    }

    fn add<B: Backend>(
        &self,
        eval: &Evaluator<B>,
        u: &Value<B>,
        v: &Value<B>,
        delta: f64,
        err: &impl Fn(CkksError) -> NnError,
    ) -> Result<Value<B>, NnError> {
        let fu;
        let u = if u.form == Form::Squared {
            fu = self.materialize(eval, u, delta, err)?;
            &fu
        } else {
            u
        };
        let fv;
        let v = if v.form == Form::Squared {
            fv = self.materialize(eval, v, delta, err)?;
            &fv
        } else {
            v
        };
        if u.a == v.a {
            let cts = u
                .cts
                .iter()
                .zip(&v.cts)
                .map(|(x, y)| eval.add(x, y))
                .collect::<Result<_, _>>()
                .map_err(err)?;
            return Ok(Value {
                cts,
                form: Form::Linear,
                a: u.a,
                gamma: u.gamma + v.gamma,
            });
        }
        // Different pending multipliers: a two-term linear layer per neuron.
        let n = u.cts.len();
        let joined = Value {
            cts: u.cts.iter().chain(&v.cts).cloned().collect(),
            form: Form::Linear,
            a: 1.0,
            gamma: 0.0,
        };
        let r: Vec<Row> = (0..n)
            .map(|k| Row {
                terms: vec![(k, u.a), (n + k, v.a)],
                bias: u.gamma + v.gamma,
            })
            .collect();
        linear(eval, &joined, &r, delta, err)
    }
}

/// Relinearizes and rescales a lazily squared value (one level), keeping its pending map.
fn relinearize_rescale<B: Backend>(
    eval: &Evaluator<B>,
    v: Value<B>,
    err: &impl Fn(CkksError) -> NnError,
) -> Result<Value<B>, NnError> {
    let cts = eval
        .backend()
        .par_map(v.cts, |ct| {
            let mut r = eval.relinearize(ct)?;
            eval.rescale_assign(&mut r)?;
            Ok(r)
        })
        .into_iter()
        .collect::<Result<_, CkksError>>()
        .map_err(err)?;
    Ok(Value {
        cts,
        form: Form::Linear,
        a: v.a,
        gamma: v.gamma,
    })
}

/// A degree ≤ 2 activation on a linear value.
fn poly<B: Backend>(
    eval: &Evaluator<B>,
    v: &Value<B>,
    c: &[f64],
    err: &impl Fn(CkksError) -> NnError,
) -> Result<Value<B>, NnError> {
    let (c0, c1, c2) = (
        c.first().copied().unwrap_or(0.0),
        c.get(1).copied().unwrap_or(0.0),
        c.get(2).copied().unwrap_or(0.0),
    );
    if c2 == 0.0 {
        // Affine: only the pending map changes.
        return Ok(Value {
            cts: v.cts.clone(),
            form: v.form,
            a: c1 * v.a,
            gamma: c1 * v.gamma + c0,
        });
    }
    if v.a == 0.0 {
        return Err(NnError::Invalid("activation of a constant value".into()));
    }
    // c2·x² + c1·x + c0 = c2·(x + c1/(2·c2))² + c0 − c1²/(4·c2), with x = a·ct + γ
    //                   = c2·a²·(ct + δ)² + γ',  δ = (γ + c1/(2·c2)) / a.
    let delta = (v.gamma + c1 / (2.0 * c2)) / v.a;
    let cts = eval
        .backend()
        .par_map(v.cts.iter().collect(), |ct| {
            let u = if delta != 0.0 {
                eval.add_const(ct, delta)?
            } else {
                ct.clone()
            };
            eval.mul(&u, &u)
        })
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(err)?;
    Ok(Value {
        cts,
        form: Form::Squared,
        a: c2 * v.a * v.a,
        gamma: c0 - c1 * c1 / (4.0 * c2),
    })
}

/// A linear layer: integer weights chosen so the output lands exactly on the working scale.
fn linear<B: Backend>(
    eval: &Evaluator<B>,
    v: &Value<B>,
    rows: &[Row],
    delta: f64,
    err: &impl Fn(CkksError) -> NnError,
) -> Result<Value<B>, NnError> {
    let params = eval.params();
    let level = v.cts.iter().map(Ciphertext::level).min().unwrap_or(0);
    let scale = v.cts.first().map_or(1.0, Ciphertext::scale);
    let rescales = linear_cost(v.form);
    if level < rescales {
        return Err(NnError::Invalid(format!(
            "out of levels: a linear layer needs {rescales}, {level} left"
        )));
    }
    let divisor: f64 = (0..rescales).map(|k| params.q_at(level - k)).product();
    let dw = delta * divisor / scale; // weight scale
    let round = |x: f64| -> Result<i128, NnError> {
        let r = x.round();
        if r.is_finite() && r.abs() < 2f64.powi(120) {
            Ok(r as i128)
        } else {
            Err(NnError::Invalid(format!(
                "weight {x:e} overflows at this scale"
            )))
        }
    };
    // One call for the whole layer: the backend reads every input once (blocked).
    let inputs: Vec<&Ciphertext<B>> = v.cts.iter().collect();
    let mut int_rows = Vec::with_capacity(rows.len());
    let mut biases = Vec::with_capacity(rows.len());
    for row in rows {
        let terms = row
            .terms
            .iter()
            .map(|&(j, w)| Ok((j, round(w * v.a * dw)?)))
            .collect::<Result<Vec<_>, NnError>>()?;
        int_rows.push(terms);
        let bias_true = row.bias + v.gamma * row.terms.iter().map(|&(_, w)| w).sum::<f64>();
        biases.push(round(bias_true * scale * dw)?);
    }
    let mut cts = eval
        .weighted_sums(&inputs, &int_rows, &biases, scale * dw)
        .map_err(err)?;
    let relin = cts.first().is_some_and(|c| c.degree() > 1);
    cts = eval
        .backend()
        .par_map(cts, |mut ct| {
            for _ in 0..rescales {
                eval.rescale_assign(&mut ct)?;
            }
            if relin { eval.relinearize(ct) } else { Ok(ct) }
        })
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(err)?;

    Ok(Value {
        cts,
        form: Form::Linear,
        a: 1.0,
        gamma: 0.0,
    })
}

/// Encodes and encrypts a batch of images (at most `slots`): ciphertext `p` holds pixel `p`
/// of every image, one image per slot. `encrypt` is the client's encryption (public or
/// secret key); pixels are encrypted in parallel, each with its own generator seeded from
/// `rng`.
///
/// # Errors
/// More images than slots, shape mismatches, encryption errors.
pub fn encrypt_images<B: Backend>(
    eval: &Evaluator<B>,
    images: &[crate::Tensor],
    level: usize,
    rng: &mut hecnn_ring::Prng,
    encrypt: impl Fn(
        &hecnn_ckks::Plaintext<B>,
        &mut hecnn_ring::Prng,
    ) -> Result<Ciphertext<B>, CkksError>
    + Sync
    + Send,
) -> Result<Vec<Ciphertext<B>>, NnError> {
    let params = eval.params();
    let slots = params.max_slots();
    if images.len() > slots {
        return Err(NnError::Shape(format!(
            "{} images exceed the {slots} slots of a ciphertext",
            images.len()
        )));
    }
    let Some(first) = images.first() else {
        return Ok(vec![]);
    };
    if images.iter().any(|t| t.shape() != first.shape()) {
        return Err(NnError::Shape(
            "images of different shapes in one batch".into(),
        ));
    }
    let tasks: Vec<(usize, [u8; 32])> = (0..first.len()).map(|p| (p, rng.seed())).collect();
    eval.backend()
        .par_map(tasks, |(p, seed)| {
            let column: Vec<f64> = images.iter().map(|img| img.data()[p]).collect();
            let pt = eval
                .encode_real(&column, level, params.default_scale(), slots)
                .map_err(|e| NnError::Invalid(format!("encoding pixel {p}: {e}")))?;
            let mut local = hecnn_ring::Prng::from_seed(seed);
            encrypt(&pt, &mut local)
                .map_err(|e| NnError::Invalid(format!("encrypting pixel {p}: {e}")))
        })
        .into_iter()
        .collect()
}

/// Decrypts the output ciphertexts into per-image values (`count` images), applying the
/// output map.
///
/// # Errors
/// Decryption or decoding errors.
pub fn decrypt_outputs<B: Backend>(
    eval: &Evaluator<B>,
    outputs: &[Ciphertext<B>],
    map: OutputMap,
    count: usize,
    mut decrypt: impl FnMut(&Ciphertext<B>) -> Result<hecnn_ckks::Plaintext<B>, CkksError>,
) -> Result<Vec<Vec<f64>>, NnError> {
    let mut per_image = vec![Vec::with_capacity(outputs.len()); count];
    for ct in outputs {
        let pt = decrypt(ct).map_err(|e| NnError::Invalid(format!("decrypting: {e}")))?;
        let slots = eval
            .encoder()
            .decode_real(eval.backend(), eval.params(), &pt)
            .map_err(|e| NnError::Invalid(format!("decoding: {e}")))?;
        for (img, &v) in per_image.iter_mut().zip(&slots) {
            img.push(map.a * v + map.gamma);
        }
    }
    Ok(per_image)
}

/// Working scale of batch-mode ciphertexts (bits). Rescaling primes near 2^25 stay below 2^26,
/// so the products in weighted sums fit 52 bits and cost one IFMA instruction per term; CNN
/// logits need far less precision than that to keep their argmax (measured by `hecnn eval`).
pub const BATCH_LOG_SCALE: u32 = 30;

/// CKKS parameters for a batch-mode plan of `depth` levels at ring degree `2^log_n`: a
/// 49-bit base prime (every intermediate and output value must stay below about 2^17 in
/// magnitude at the 2^25 working scale; [`crate::batch::check_ranges`] verifies this on
/// calibration data), `depth` primes near the scale, and 49-bit special primes
/// covering two-prime digits for relinearization. All primes are below 2^50 (IFMA).
pub fn parameters(
    depth: usize,
    log_n: u32,
    security: hecnn_rlwe::SecurityLevel,
) -> hecnn_rlwe::ParamsLiteral {
    let mut log_q = vec![49];
    log_q.extend(std::iter::repeat_n(BATCH_LOG_SCALE, depth));
    hecnn_rlwe::ParamsLiteral {
        log_n,
        log_q,
        log_p: vec![49, 49],
        dnum: Some((depth + 1).div_ceil(2)),
        secret: hecnn_rlwe::SecretDistribution::Ternary,
        security,
    }
}

/// Largest magnitude a batch-mode value may reach (see [`parameters`]).
pub const MAX_VALUE: f64 = 131_072.0;

/// Runs the model in the clear on calibration images and returns, for every node, the
/// largest absolute value seen, checking it against [`MAX_VALUE`].
///
/// # Errors
/// [`NnError::Invalid`] naming the first node whose values exceed the bound.
pub fn check_ranges(model: &Model, images: &[crate::Tensor]) -> Result<Vec<f64>, NnError> {
    let mut max = vec![0.0f64; model.nodes.len()];
    for img in images {
        let per_node = crate::exec::run_all(model, img)?;
        for (m, t) in max.iter_mut().zip(&per_node) {
            *m = t.data().iter().fold(*m, |a, &v| a.max(v.abs()));
        }
    }
    if let Some((i, v)) = max.iter().enumerate().find(|(_, v)| **v > MAX_VALUE) {
        return Err(NnError::Invalid(format!(
            "node '{}' reaches |value| = {v:.3e} on the calibration images, above the {MAX_VALUE:e} that batch-mode parameters hold",
            model.nodes[i].name
        )));
    }
    Ok(max)
}
