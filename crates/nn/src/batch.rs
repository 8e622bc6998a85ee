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

use crate::{Model, NnError, Op, linear::Row};

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
    nodes: Vec<NodePlan>,
    last_use: Vec<usize>,
    /// The sparse matrix of every linear node (composed with fused predecessors).
    rows: Vec<Option<Vec<Row>>>,
    /// Linear nodes folded into their consumer: they pass their input through.
    deferred: Vec<bool>,
}

/// Two consecutive linear layers are fused into one (saving a level and a rescale per
/// neuron) when the composed matrix has at most this many times their total terms.
pub const FUSE_MAX_GROWTH: usize = 4;

/// `second ∘ first`: rows of `second` over the outputs of `first`, re-expressed over the
/// inputs of `first`.
fn compose(second: &[Row], first: &[Row]) -> Vec<Row> {
    second
        .iter()
        .map(|r| {
            let mut acc: std::collections::BTreeMap<usize, f64> = std::collections::BTreeMap::new();
            let mut bias = r.bias;
            for &(m, w) in &r.terms {
                let inner = &first[m];
                bias += w * inner.bias;
                for &(j, v) in &inner.terms {
                    *acc.entry(j).or_insert(0.0) += w * v;
                }
            }
            Row {
                terms: acc.into_iter().filter(|&(_, w)| w != 0.0).collect(),
                bias,
            }
        })
        .collect()
}

fn term_count(rows: &[Row]) -> usize {
    rows.iter().map(|r| r.terms.len()).sum()
}

/// Every linear node's rows (`None` for other nodes).
type LayerRows = Vec<Option<Vec<Row>>>;

/// Precomputes every linear node's rows and fuses chains of linear nodes (through Flatten).
fn fuse_linear(model: &Model, shapes: &[Vec<usize>]) -> Result<(LayerRows, Vec<bool>), NnError> {
    let n = model.nodes.len();
    let consumers: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            (0..n)
                .filter(|&k| model.nodes[k].inputs.contains(&i))
                .collect()
        })
        .collect();
    let mut rows: Vec<Option<Vec<Row>>> = Vec::with_capacity(n);
    for (id, node) in model.nodes.iter().enumerate() {
        rows.push(match node.inputs.first() {
            Some(&i) => crate::linear::rows(&node.op, &shapes[i], &shapes[id])?,
            None => None,
        });
    }
    let mut deferred = vec![false; n];
    for k in 0..n {
        if rows[k].is_none() {
            continue;
        }
        // Walk back through single-consumer Flatten nodes to the producing node.
        let mut j = model.nodes[k].inputs[0];
        while matches!(model.nodes[j].op, Op::Flatten)
            && consumers[j].len() == 1
            && j != model.output
        {
            j = model.nodes[j].inputs[0];
        }
        let fusable = j != 0 && j != model.output && consumers[j].len() == 1 && rows[j].is_some();
        if !fusable {
            continue;
        }
        let (Some(first), Some(second)) = (&rows[j], &rows[k]) else {
            continue;
        };
        let composed = compose(second, first);
        if term_count(&composed) <= FUSE_MAX_GROWTH * (term_count(first) + term_count(second)) {
            rows[k] = Some(composed);
            deferred[j] = true;
        }
    }
    Ok((rows, deferred))
}

/// A square whose value is read by at least this many weighted-sum terms per neuron (on
/// average) is relinearized and rescaled right away: the consuming layer then works on two
/// components and one limb fewer, which outweighs one relinearization per square. Below it,
/// the square stays lazy and the consumer relinearizes its (fewer) outputs instead.
pub const EAGER_FAN_OUT: usize = 32;

/// Average number of weighted-sum terms that read each neuron of node `id`: follows its
/// single consumer through Flatten and fused (deferred) linear nodes to the layer that
/// computes from it (0 if that is not a linear layer).
fn fan_out(
    model: &Model,
    shapes: &[Vec<usize>],
    rows: &[Option<Vec<Row>>],
    deferred: &[bool],
    id: usize,
) -> usize {
    let single_consumer = |i: usize| {
        let c: Vec<usize> = (0..model.nodes.len())
            .filter(|&k| model.nodes[k].inputs.contains(&i))
            .collect();
        if let [k] = c.as_slice() {
            Some(*k)
        } else {
            None
        }
    };
    let mut k = match single_consumer(id) {
        Some(k) => k,
        None => return 0,
    };
    while deferred[k] || matches!(model.nodes[k].op, Op::Flatten) {
        match single_consumer(k) {
            Some(next) => k = next,
            None => return 0,
        }
    }
    let neurons: usize = shapes[id].iter().product();
    rows[k]
        .as_ref()
        .map_or(0, |r| term_count(r) / neurons.max(1))
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
        let (fused_rows, deferred) = fuse_linear(model, &shapes)?;
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
                        (true, Form::Linear)
                            if fan_out(model, &shapes, &fused_rows, &deferred, id)
                                >= EAGER_FAN_OUT =>
                        {
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
                (_, Some(p)) if deferred[id] => NodePlan { neurons, ..p },
                (_, Some(p)) if fused_rows[id].is_some() => NodePlan {
                    form: Form::Linear,
                    depth: p.depth + linear_cost(p.form),
                    neurons,
                },
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
            nodes,
            last_use,
            rows: fused_rows,
            deferred,
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

    /// Which nodes were fused into their consumer (they pass their input through).
    pub fn fused(&self) -> &[bool] {
        &self.deferred
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
            // Flatten and fused nodes pass their input through; others allocate their output.
            let passes = matches!(node.op, Op::Flatten) || self.deferred[id];
            if !passes {
                live += size(id);
            }
            peak = peak.max(live);
            for &i in &node.inputs {
                if self.last_use[i] == id && !passes {
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
                _ => {
                    if let (false, Some(r)) = (self.deferred[id], &self.rows[id]) {
                        terms += term_count(r);
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

/// The operations the batch runtime needs from a ciphertext engine: the encrypted engine
/// ([`Encrypted`]) and the cleartext / simulation engine ([`Packed`]) run the same plan code.
pub trait Engine: Sync {
    /// A ciphertext (or its cleartext stand-in).
    type Ct: Clone + Send + Sync;
    /// Level of a value.
    fn level(&self, ct: &Self::Ct) -> usize;
    /// Scale of a value.
    fn scale(&self, ct: &Self::Ct) -> f64;
    /// Degree of a value (1, or 2 before relinearization).
    fn degree(&self, ct: &Self::Ct) -> usize;
    /// The prime dropped by a rescale at `level`.
    fn q_at(&self, level: usize) -> f64;
    /// `a + b`.
    ///
    /// # Errors
    /// Scale, slot or level errors of the engine.
    fn add(&self, a: &Self::Ct, b: &Self::Ct) -> Result<Self::Ct, CkksError>;
    /// Adds a real constant to every slot.
    ///
    /// # Errors
    /// Overflow.
    fn add_const(&self, a: &Self::Ct, c: f64) -> Result<Self::Ct, CkksError>;
    /// Tensor square (degree 2, scale squared, not rescaled).
    ///
    /// # Errors
    /// Degree errors.
    fn square(&self, a: &Self::Ct) -> Result<Self::Ct, CkksError>;
    /// Relinearization.
    ///
    /// # Errors
    /// Missing key.
    fn relinearize(&self, a: Self::Ct) -> Result<Self::Ct, CkksError>;
    /// Rescale by the last prime.
    ///
    /// # Errors
    /// Out of levels.
    fn rescale(&self, a: &mut Self::Ct) -> Result<(), CkksError>;
    /// Integer-weighted sums of many outputs over the same inputs (see
    /// [`Evaluator::weighted_sums`]).
    ///
    /// # Errors
    /// Mismatched inputs.
    fn weighted_sums(
        &self,
        inputs: &[&Self::Ct],
        rows: &[Vec<(usize, i128)>],
        biases: &[i128],
        scale: f64,
    ) -> Result<Vec<Self::Ct>, CkksError>;
    /// Maps over independent items, in parallel where possible.
    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R>;
}

/// The encrypted engine: CKKS on a backend.
pub struct Encrypted<'a, B: Backend>(pub &'a Evaluator<B>);

impl<B: Backend> Engine for Encrypted<'_, B> {
    type Ct = Ciphertext<B>;
    fn level(&self, ct: &Ciphertext<B>) -> usize {
        ct.level()
    }
    fn scale(&self, ct: &Ciphertext<B>) -> f64 {
        ct.scale()
    }
    fn degree(&self, ct: &Ciphertext<B>) -> usize {
        ct.degree()
    }
    fn q_at(&self, level: usize) -> f64 {
        self.0.params().q_at(level)
    }
    fn add(&self, a: &Ciphertext<B>, b: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        self.0.add(a, b)
    }
    fn add_const(&self, a: &Ciphertext<B>, c: f64) -> Result<Ciphertext<B>, CkksError> {
        self.0.add_const(a, c)
    }
    fn square(&self, a: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        self.0.mul(a, a)
    }
    fn relinearize(&self, a: Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        self.0.relinearize(a)
    }
    fn rescale(&self, a: &mut Ciphertext<B>) -> Result<(), CkksError> {
        self.0.rescale_assign(a)
    }
    fn weighted_sums(
        &self,
        inputs: &[&Ciphertext<B>],
        rows: &[Vec<(usize, i128)>],
        biases: &[i128],
        scale: f64,
    ) -> Result<Vec<Ciphertext<B>>, CkksError> {
        self.0.weighted_sums(inputs, rows, biases, scale)
    }
    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        self.0.backend().par_map(items, f)
    }
}

/// A cleartext stand-in for a ciphertext: the decoded slot values with the level, scale and
/// degree CKKS would have.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedValue {
    /// Decoded values, one per slot.
    pub slots: Vec<f64>,
    /// Level.
    pub level: usize,
    /// Scale.
    pub scale: f64,
    /// Degree.
    pub degree: usize,
}

/// The cleartext engine: runs a plan on packed `f64` slot vectors exactly as the encrypted
/// engine would (integer weights, scales, levels, lazy squares), without noise, and
/// simulates the modulus budget: it records the smallest headroom
/// `log2(Q_level / 2) − log2(max |value · scale|)` over every intermediate value.
pub struct Packed {
    q: Vec<f64>,
    headroom: std::sync::Mutex<f64>,
}

impl Packed {
    /// An engine for the Q primes of a parameter set.
    pub fn new(q: &[u64]) -> Self {
        Self {
            q: q.iter().map(|&v| v as f64).collect(),
            headroom: std::sync::Mutex::new(f64::INFINITY),
        }
    }

    /// The smallest headroom (bits) seen so far; negative means the value would wrap modulo Q.
    pub fn min_headroom_bits(&self) -> f64 {
        self.headroom.lock().map_or(f64::NEG_INFINITY, |h| *h)
    }

    fn record(&self, v: &PackedValue) {
        let log_q: f64 = self.q[..=v.level.min(self.q.len() - 1)]
            .iter()
            .map(|q| q.log2())
            .sum();
        let max = v.slots.iter().fold(0.0f64, |m, x| m.max(x.abs())) * v.scale;
        let bits = log_q - 1.0 - max.max(1.0).log2();
        if let Ok(mut h) = self.headroom.lock() {
            *h = h.min(bits);
        }
    }

    /// Wraps input values (one vector of slot values per input neuron) at `level` and
    /// `scale`.
    pub fn inputs(&self, columns: Vec<Vec<f64>>, level: usize, scale: f64) -> Vec<PackedValue> {
        columns
            .into_iter()
            .map(|slots| PackedValue {
                slots,
                level,
                scale,
                degree: 1,
            })
            .collect()
    }

    fn done(&self, v: PackedValue) -> Result<PackedValue, CkksError> {
        self.record(&v);
        Ok(v)
    }
}

impl Engine for Packed {
    type Ct = PackedValue;
    fn level(&self, ct: &PackedValue) -> usize {
        ct.level
    }
    fn scale(&self, ct: &PackedValue) -> f64 {
        ct.scale
    }
    fn degree(&self, ct: &PackedValue) -> usize {
        ct.degree
    }
    fn q_at(&self, level: usize) -> f64 {
        self.q.get(level).copied().unwrap_or(1.0)
    }
    fn add(&self, a: &PackedValue, b: &PackedValue) -> Result<PackedValue, CkksError> {
        let slots = a.slots.iter().zip(&b.slots).map(|(x, y)| x + y).collect();
        self.done(PackedValue {
            slots,
            level: a.level.min(b.level),
            scale: a.scale,
            degree: a.degree.max(b.degree),
        })
    }
    fn add_const(&self, a: &PackedValue, c: f64) -> Result<PackedValue, CkksError> {
        let k = (c * a.scale).round() / a.scale;
        self.done(PackedValue {
            slots: a.slots.iter().map(|x| x + k).collect(),
            ..a.clone()
        })
    }
    fn square(&self, a: &PackedValue) -> Result<PackedValue, CkksError> {
        self.done(PackedValue {
            slots: a.slots.iter().map(|x| x * x).collect(),
            level: a.level,
            scale: a.scale * a.scale,
            degree: 2,
        })
    }
    fn relinearize(&self, a: PackedValue) -> Result<PackedValue, CkksError> {
        Ok(PackedValue { degree: 1, ..a })
    }
    fn rescale(&self, a: &mut PackedValue) -> Result<(), CkksError> {
        if a.level == 0 {
            return Err(CkksError::LevelTooLow { needed: 1, have: 0 });
        }
        a.scale /= self.q_at(a.level);
        a.level -= 1;
        Ok(())
    }
    fn weighted_sums(
        &self,
        inputs: &[&PackedValue],
        rows: &[Vec<(usize, i128)>],
        biases: &[i128],
        scale: f64,
    ) -> Result<Vec<PackedValue>, CkksError> {
        let first = inputs.first().ok_or(CkksError::InvalidArgument {
            what: "weighted sums of no input",
        })?;
        let level = inputs.iter().map(|v| v.level).min().unwrap_or(0);
        let n = first.slots.len();
        rows.iter()
            .zip(biases)
            .map(|(row, &bias)| {
                // content = Σ W·(v·s_in) + bias, declared at `scale`.
                let mut slots = vec![bias as f64; n];
                for &(j, w) in row {
                    let v = inputs[j];
                    for (o, x) in slots.iter_mut().zip(&v.slots) {
                        *o += w as f64 * x * v.scale;
                    }
                }
                slots.iter_mut().for_each(|o| *o /= scale);
                self.done(PackedValue {
                    slots,
                    level,
                    scale,
                    degree: first.degree,
                })
            })
            .collect()
    }
    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        items.into_iter().map(f).collect()
    }
}

/// A value during evaluation: one ciphertext per neuron, its form and pending affine map.
struct Value<C> {
    cts: Vec<C>,
    form: Form,
    a: f64,
    gamma: f64,
}

// Not derived: a derive would bound the engine type, but only `C: Clone` is needed.
impl<C: Clone> Clone for Value<C> {
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
        progress: impl FnMut(usize, usize),
    ) -> Result<(Vec<Ciphertext<B>>, OutputMap), NnError> {
        self.run(&Encrypted(eval), inputs, progress)
    }

    /// Runs the plan with any engine: [`Encrypted`], or [`Packed`] for the cleartext and
    /// simulation modes.
    ///
    /// # Errors
    /// See [`BatchPlan::run_encrypted`].
    pub fn run<E: Engine>(
        &self,
        eng: &E,
        inputs: Vec<E::Ct>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(Vec<E::Ct>, OutputMap), NnError> {
        if inputs.len() != self.inputs() {
            return Err(NnError::Shape(format!(
                "{} input ciphertexts, the model takes {}",
                inputs.len(),
                self.inputs()
            )));
        }
        let level = inputs.iter().map(|c| eng.level(c)).min().unwrap_or(0);
        if level < self.depth() {
            return Err(NnError::Invalid(format!(
                "the inputs have {level} levels, the model needs {}",
                self.depth()
            )));
        }
        let delta = inputs.first().map_or(1.0, |c| eng.scale(c));
        let total = self.model.nodes.len();
        let mut values: Vec<Option<Value<E::Ct>>> = (0..total).map(|_| None).collect();
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
                _ if self.deferred[id] || matches!(node.op, Op::Flatten) => {
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
                        &self.materialize(eng, v, delta, &err)?
                    } else {
                        v
                    };
                    let out = poly(eng, v, c, &err)?;
                    if out.form == Form::Squared && self.nodes[id].form == Form::Linear {
                        relinearize_rescale(eng, out, &err)?
                    } else {
                        out
                    }
                }
                Op::Add => {
                    let (u, v) = (input(0)?, input(1)?);
                    self.add(eng, u, v, delta, &err)?
                }
                _ => {
                    // The layer's rows, composed with any fused predecessor.
                    let r = self.rows[id].as_ref().ok_or_else(|| {
                        NnError::Invalid(format!("'{}' is not a batch-mode operator", node.name))
                    })?;
                    linear(eng, input(0)?, r, delta, &err)?
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
            self.materialize(eng, &out, delta, &at("output"))?
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
    fn materialize<E: Engine>(
        &self,
        eng: &E,
        v: &Value<E::Ct>,
        delta: f64,
        err: &impl Fn(CkksError) -> NnError,
    ) -> Result<Value<E::Ct>, NnError> {
        let identity: Vec<Row> = (0..v.cts.len())
            .map(|i| Row {
                terms: vec![(i, 1.0)],
                bias: 0.0,
            })
            .collect();
        linear(eng, v, &identity, delta, err)
    }

    fn add<E: Engine>(
        &self,
        eng: &E,
        u: &Value<E::Ct>,
        v: &Value<E::Ct>,
        delta: f64,
        err: &impl Fn(CkksError) -> NnError,
    ) -> Result<Value<E::Ct>, NnError> {
        let fu;
        let u = if u.form == Form::Squared {
            fu = self.materialize(eng, u, delta, err)?;
            &fu
        } else {
            u
        };
        let fv;
        let v = if v.form == Form::Squared {
            fv = self.materialize(eng, v, delta, err)?;
            &fv
        } else {
            v
        };
        if u.a == v.a {
            let cts = u
                .cts
                .iter()
                .zip(&v.cts)
                .map(|(x, y)| eng.add(x, y))
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
        linear(eng, &joined, &r, delta, err)
    }
}

/// Relinearizes and rescales a lazily squared value (one level), keeping its pending map.
fn relinearize_rescale<E: Engine>(
    eng: &E,
    v: Value<E::Ct>,
    err: &impl Fn(CkksError) -> NnError,
) -> Result<Value<E::Ct>, NnError> {
    let cts = eng
        .par_map(v.cts, |ct| {
            let mut r = eng.relinearize(ct)?;
            eng.rescale(&mut r)?;
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
fn poly<E: Engine>(
    eng: &E,
    v: &Value<E::Ct>,
    c: &[f64],
    err: &impl Fn(CkksError) -> NnError,
) -> Result<Value<E::Ct>, NnError> {
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
    let cts = eng
        .par_map(v.cts.iter().collect(), |ct| {
            let u = if delta != 0.0 {
                eng.add_const(ct, delta)?
            } else {
                ct.clone()
            };
            eng.square(&u)
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
fn linear<E: Engine>(
    eng: &E,
    v: &Value<E::Ct>,
    rows: &[Row],
    delta: f64,
    err: &impl Fn(CkksError) -> NnError,
) -> Result<Value<E::Ct>, NnError> {
    let level = v.cts.iter().map(|c| eng.level(c)).min().unwrap_or(0);
    let scale = v.cts.first().map_or(1.0, |c| eng.scale(c));
    let rescales = linear_cost(v.form);
    if level < rescales {
        return Err(NnError::Invalid(format!(
            "out of levels: a linear layer needs {rescales}, {level} left"
        )));
    }
    let divisor: f64 = (0..rescales).map(|k| eng.q_at(level - k)).product();
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
    let inputs: Vec<&E::Ct> = v.cts.iter().collect();
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
    let mut cts = eng
        .weighted_sums(&inputs, &int_rows, &biases, scale * dw)
        .map_err(err)?;
    let relin = cts.first().is_some_and(|c| eng.degree(c) > 1);
    cts = eng
        .par_map(cts, |mut ct| {
            for _ in 0..rescales {
                eng.rescale(&mut ct)?;
            }
            if relin { eng.relinearize(ct) } else { Ok(ct) }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Tensor,
        ir::{Dense, Node, Pool},
    };

    #[test]
    fn fused_rows_equal_the_layers_they_replace() {
        let model = Model {
            name: "pool-dense".into(),
            input_shape: [2, 3, 3],
            nodes: vec![
                Node {
                    name: "x".into(),
                    op: Op::Input,
                    inputs: vec![],
                },
                Node {
                    name: "sq".into(),
                    op: Op::Poly(vec![0.0, 0.0, 1.0]),
                    inputs: vec![0],
                },
                Node {
                    name: "pool".into(),
                    op: Op::AvgPool(Pool {
                        kernel: [2, 2],
                        stride: [1, 1],
                        padding: [0; 4],
                    }),
                    inputs: vec![1],
                },
                Node {
                    name: "fc".into(),
                    op: Op::Dense(Dense {
                        weight: Tensor::new(
                            vec![2, 8],
                            (0..16).map(|i| i as f64 / 8.0 - 1.0).collect(),
                        )
                        .unwrap(),
                        bias: vec![0.5, -0.25],
                    }),
                    inputs: vec![2],
                },
            ],
            output: 3,
        };
        let plan = BatchPlan::new(&model).unwrap();
        assert!(plan.fused()[2], "pool fused into the dense layer");
        let x = Tensor::new(
            vec![2, 3, 3],
            (0..18).map(|i| (i as f64 * 0.37).sin()).collect(),
        )
        .unwrap();
        let all = crate::exec::run_all(&model, &x).unwrap();
        let rows = plan.rows[3].as_ref().unwrap();
        for (k, row) in rows.iter().enumerate() {
            let v: f64 = row.bias
                + row
                    .terms
                    .iter()
                    .map(|&(j, w)| w * all[1].data()[j])
                    .sum::<f64>();
            assert!(
                (v - all[3].data()[k]).abs() < 1e-12,
                "row {k}: {v} vs {}",
                all[3].data()[k]
            );
        }
    }
}
