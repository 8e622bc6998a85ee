//! Batch packing (HCNN): one image per SIMD slot, one ciphertext per neuron, so one
//! evaluation classifies `n/2` images and needs no rotation keys.
//!
//! Linear layers are integer-weighted sums of ciphertexts (one fused, lazily reduced
//! multiply-sum per output neuron). Squares are evaluated lazily: `a·x² + b·x + c` is written
//! `a'·(x + δ)² + γ'`, the ciphertext keeps the un-relinearized, un-rescaled tensor `u⊗u`,
//! and the next linear layer folds `a'` into its weights and `γ'` into its bias before one
//! relinearization per *output* neuron. Every value carries a pending affine map
//! `true = a·ct + γ` that the next layer (or the client, after decryption) applies, so scales
//! stay exact: each linear layer lands on the working scale `Δ`. Uniform layers (average
//! pooling) are plain additions folded into that map and consume no level, so a lazily
//! squared value is pooled *before* it is relinearized: one relinearization per pooled
//! neuron. Layers run as streamed chains (a computing layer with the activations and pools
//! after it, a chunk of neurons at a time) so that a layer's ciphertexts never all exist at
//! once.

mod chain;
mod lower;

pub use crate::compile::params::BATCH_LOG_SCALE;
pub use chain::CHUNK_ROWS;

use chain::{Chain, Uniform, uniform};
use hecnn_ckks::{Ciphertext, CkksError, Evaluator};
use hecnn_ring::Backend;

use crate::{
    Model, NnError, Op,
    linear::Row,
    pending::{Activation, activation},
    scheme::{Scheme, SchemeError},
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
    nodes: Vec<NodePlan>,
    last_use: Vec<usize>,
    /// The sparse matrix of every linear node (composed with fused predecessors).
    rows: Vec<Option<Vec<Row>>>,
    /// Linear nodes folded into their consumer: they pass their input through.
    deferred: Vec<bool>,
    /// Uniform (additive) layers: sums folded into the pending map.
    uniform: Vec<Option<Uniform>>,
    /// Streamed chains, indexed by their head node.
    chains: Vec<Option<Chain>>,
    /// Nodes evaluated by the chain of an earlier head.
    in_chain: Vec<bool>,
}

/// Two consecutive linear layers are fused into one (saving a level and a rescale per
/// neuron) when the composed matrix has at most this many times their total terms.
pub const FUSE_MAX_GROWTH: usize = 4;

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
        // Uniform layers stay additions: they cost no level, and composing them into a
        // neighbour multiplies its terms.
        let additive = |r: &Option<Vec<Row>>| r.as_deref().and_then(uniform).is_some();
        let fusable = j != 0
            && j != model.output
            && consumers[j].len() == 1
            && rows[j].is_some()
            && !additive(&rows[j])
            && !additive(&rows[k]);
        if !fusable {
            continue;
        }
        let (Some(first), Some(second)) = (&rows[j], &rows[k]) else {
            continue;
        };
        let composed = crate::linear::compose(second, first);
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

/// Whether a lazily squared value at node `id` is relinearized and rescaled where it is
/// produced: yes when its reader squares it again or reads each neuron at least
/// [`EAGER_FAN_OUT`] times (following Flatten and fused linear nodes); no when it flows
/// into a uniform layer, which sums it first, or into several readers.
fn materializes(
    model: &Model,
    shapes: &[Vec<usize>],
    rows: &[Option<Vec<Row>>],
    deferred: &[bool],
    consumers: &[Vec<usize>],
    id: usize,
) -> bool {
    let single = |i: usize| match consumers[i].as_slice() {
        [k] if i != model.output => Some(*k),
        _ => None,
    };
    let Some(mut k) = single(id) else {
        return false;
    };
    loop {
        match &model.nodes[k].op {
            Op::Poly(c) if c.get(2).is_some_and(|&v| v != 0.0) => return true,
            Op::Flatten => {}
            _ if deferred[k] => {}
            _ if rows[k].as_deref().and_then(uniform).is_some() => return false,
            _ => break,
        }
        match single(k) {
            Some(next) => k = next,
            None => return false,
        }
    }
    let neurons: usize = shapes[id].iter().product();
    rows[k]
        .as_ref()
        .is_some_and(|r| term_count(r) / neurons.max(1) >= EAGER_FAN_OUT)
}

/// Levels a linear layer consumes for an input of this form.
fn linear_cost(form: Form) -> usize {
    match form {
        Form::Linear => 1,
        Form::Squared => 2,
    }
}

impl BatchPlan {
    /// Plans a model that has been through [`crate::rewrite()`].
    ///
    /// # Errors
    /// [`NnError::NotSupported`] for operators batch mode cannot run (non-polynomial operators,
    /// activations of degree above 2).
    pub fn new(model: &Model) -> Result<Self, NnError> {
        Self::with_chunk_rows(model, CHUNK_ROWS)
    }

    /// [`BatchPlan::new`] with about `chunk_rows` head neurons per streamed chunk (smaller:
    /// less memory, more re-reads of shared inputs; 0 counts as 1).
    ///
    /// # Errors
    /// See [`BatchPlan::new`].
    pub fn with_chunk_rows(model: &Model, chunk_rows: usize) -> Result<Self, NnError> {
        let lowered = lower::channel_polys(model)?;
        let model = &lowered;
        let shapes = model.shapes()?;
        let (fused_rows, deferred) = fuse_linear(model, &shapes)?;
        let consumers = model.consumers();
        let uniform: Vec<Option<Uniform>> = (0..model.nodes.len())
            .map(|k| {
                if deferred[k] {
                    None
                } else {
                    fused_rows[k].as_deref().and_then(uniform)
                }
            })
            .collect();
        let materialize =
            |id: usize| materializes(model, &shapes, &fused_rows, &deferred, &consumers, id);
        let mut nodes: Vec<NodePlan> = Vec::with_capacity(model.nodes.len());
        // Every value's pending multiplier `a`, computed as the runtime computes it: an Add
        // of two values with different multipliers costs a linear layer.
        let mut pending_a: Vec<f64> = Vec::with_capacity(model.nodes.len());
        for (id, node) in model.nodes.iter().enumerate() {
            let neurons = shapes[id].iter().product();
            let input = node.inputs.first().map(|&i| nodes[i].clone());
            let in_a = node.inputs.first().map_or(1.0, |&i| pending_a[i]);
            // A lazily squared operand of an Add is materialized by an identity layer (a = 1).
            let add_a = |i: usize| {
                if nodes[i].form == Form::Squared {
                    1.0
                } else {
                    pending_a[i]
                }
            };
            let a = match &node.op {
                Op::Input => 1.0,
                Op::Poly(c) => {
                    // A square of a squared value squares its materialization (a = 1).
                    let squares = c.get(2).is_some_and(|&v| v != 0.0);
                    let v = if squares && input.as_ref().is_some_and(|p| p.form == Form::Squared) {
                        1.0
                    } else {
                        in_a
                    };
                    match activation(c, v, 0.0) {
                        Activation::Affine { a, .. } | Activation::Square { a, .. } => a,
                        Activation::OfConstant => 0.0,
                    }
                }
                Op::Add => match node.inputs.as_slice() {
                    [u, v] if add_a(*u) == add_a(*v) => add_a(*u),
                    _ => 1.0,
                },
                Op::Flatten => in_a,
                _ if deferred[id] => in_a,
                _ => match uniform[id] {
                    Some(u) => u.weight * in_a,
                    None => 1.0,
                },
            };
            let mixed = match (&node.op, node.inputs.as_slice()) {
                (Op::Add, [u, v]) => usize::from(add_a(*u) != add_a(*v)),
                _ => 0,
            };
            pending_a.push(a);
            // A lazily squared value, relinearized and rescaled here if its reader wants it.
            let squared = |depth: usize| {
                if materialize(id) {
                    NodePlan {
                        form: Form::Linear,
                        depth: depth + 1,
                        neurons,
                    }
                } else {
                    NodePlan {
                        form: Form::Squared,
                        depth,
                        neurons,
                    }
                }
            };
            let plan = match (&node.op, input) {
                (Op::Input, _) => NodePlan {
                    form: Form::Linear,
                    depth: 0,
                    neurons,
                },
                (Op::Flatten, Some(p)) => NodePlan { neurons, ..p },
                (Op::Poly(c), Some(p)) => {
                    if c.len() > 3 && c[3..].iter().any(|&v| v != 0.0) {
                        return Err(NnError::NotSupported {
                            node: node.name.clone(),
                            op: "Poly",
                            packing: "batch",
                            why: format!(
                                "degree {}: batch packing evaluates degree ≤ 2 (x², a·x²+b·x+c)",
                                c.len() - 1
                            ),
                        });
                    }
                    let square = c.get(2).is_some_and(|&v| v != 0.0);
                    match (square, p.form) {
                        (false, _) => NodePlan { neurons, ..p },
                        (true, Form::Linear) => squared(p.depth),
                        // Materialize (an identity linear layer), then square.
                        (true, Form::Squared) => squared(p.depth + 2),
                    }
                }
                (Op::Add, Some(p)) => {
                    let j = node.inputs.get(1).copied().unwrap_or(node.inputs[0]);
                    let q = &nodes[j];
                    // Squared operands are materialized (2 levels); operands with different
                    // pending multipliers are combined by a linear layer (1 level).
                    let ready = |x: &NodePlan| x.depth + 2 * usize::from(x.form == Form::Squared);
                    NodePlan {
                        form: Form::Linear,
                        depth: ready(&p).max(ready(q)) + mixed,
                        neurons,
                    }
                }
                // A fused layer passes its input through unchanged.
                (_, Some(p)) if deferred[id] => p,
                (_, Some(p)) if uniform[id].is_some() => match p.form {
                    Form::Linear => NodePlan { neurons, ..p },
                    Form::Squared => squared(p.depth),
                },
                (_, Some(p)) if fused_rows[id].is_some() => NodePlan {
                    form: Form::Linear,
                    depth: p.depth + linear_cost(p.form),
                    neurons,
                },
                (op, _) => {
                    return Err(NnError::NotSupported {
                        node: node.name.clone(),
                        op: op.kind(),
                        packing: "batch",
                        why: "not linear or polynomial: rewrite the model first".into(),
                    });
                }
            };
            nodes.push(plan);
        }
        let last_use = model.last_uses();
        // Streamed chains: a computing layer and the element-wise, uniform and reshape
        // layers after it.
        let follows = |k: usize| {
            matches!(model.nodes[k].op, Op::Poly(_) | Op::Flatten) || uniform[k].is_some()
        };
        let mut chains: Vec<Option<Chain>> = vec![None; model.nodes.len()];
        let mut in_chain = vec![false; model.nodes.len()];
        for (id, node) in model.nodes.iter().enumerate() {
            if in_chain[id] || deferred[id] || fused_rows[id].is_none() {
                continue;
            }
            let Some(&input) = node.inputs.first() else {
                continue;
            };
            let dies = last_use[input] == id && input != model.output;
            let chain = Chain::plan(
                model,
                &shapes,
                id,
                &fused_rows,
                follows,
                &consumers,
                dies,
                chunk_rows,
            );
            for &k in &chain.nodes[1..] {
                in_chain[k] = true;
            }
            chains[id] = Some(chain);
        }
        Ok(Self {
            model: model.clone(),
            nodes,
            last_use,
            rows: fused_rows,
            deferred,
            uniform,
            chains,
            in_chain,
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

    /// Number of output ciphertexts (the output node's neurons).
    pub fn outputs(&self) -> usize {
        self.nodes.get(self.model.output).map_or(0, |n| n.neurons)
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
    /// degree `n` and `top_level` levels at the input: follows the streamed schedule (each
    /// chunk's working set, inputs freed after their last chunk, values freed after their
    /// last use); a lazily squared value has three components, others two.
    pub fn peak_ciphertext_bytes(&self, n: usize, top_level: usize) -> usize {
        let unit = |id: usize| {
            let p = &self.nodes[id];
            let comps = if p.form == Form::Squared { 3 } else { 2 };
            comps * (top_level.saturating_sub(p.depth) + 1) * n * 8
        };
        let size = |id: usize| self.nodes[id].neurons * unit(id);
        let mut live = size(0);
        let mut peak = live;
        for (id, node) in self.model.nodes.iter().enumerate().skip(1) {
            if self.in_chain[id] {
                continue;
            }
            let passes = matches!(node.op, Op::Flatten) || self.deferred[id];
            if let Some(ch) = &self.chains[id] {
                let last = ch.last();
                // A chunk holds its head neurons and, transiently, their squares.
                let scratch = |rows: usize| rows * unit(id) * 5 / 2;
                let input = node.inputs[0];
                for (c, chunk) in ch.chunks.iter().enumerate() {
                    live += chunk.len() * unit(last);
                    peak = peak.max(live + scratch(ch.head_rows[c]));
                    if let Some(frees) = &ch.frees {
                        live = live.saturating_sub(frees[c].len() * unit(input));
                    }
                }
                if ch.frees.is_some() {
                    // Released chunk by chunk above; the loop below releases it again.
                    live += size(input);
                }
            } else if !passes {
                live += size(id);
                peak = peak.max(live);
            }
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
            let (input, this) = (&self.nodes[i], &self.nodes[id]);
            // Relinearizations and rescales of a square materialized at this node.
            let materialized =
                |squared: bool| usize::from(squared && this.form == Form::Linear) * this.neurons;
            match &node.op {
                Op::Poly(c) if c.get(2).is_some_and(|&v| v != 0.0) => {
                    squares += this.neurons;
                    relins += materialized(true);
                    rescales += materialized(true);
                }
                _ if self.uniform[id].is_some() => {
                    relins += materialized(input.form == Form::Squared);
                    rescales += materialized(input.form == Form::Squared);
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

impl<C> Value<C> {
    /// The value's ciphertexts by reference.
    fn refs(&self) -> Refs<'_, C> {
        Refs {
            cts: self.cts.iter().collect(),
            form: self.form,
            a: self.a,
            gamma: self.gamma,
        }
    }
}

/// A value (or a chunk of one) by reference: the ciphertexts an operation reads.
struct Refs<'a, C> {
    cts: Vec<&'a C>,
    form: Form,
    a: f64,
    gamma: f64,
}

/// The input of a streamed chain: owned when the chain is its last reader (neurons are
/// dropped as soon as their last chunk is done), borrowed otherwise.
enum Source<'a, C> {
    Owned {
        cts: Vec<Option<C>>,
        form: Form,
        a: f64,
        gamma: f64,
    },
    Borrowed(&'a Value<C>),
}

impl<C> Source<'_, C> {
    /// The neurons `set` (sorted) by reference.
    fn view(&self, set: &[usize]) -> Result<Refs<'_, C>, NnError> {
        let dropped = |j: usize| NnError::Internal(format!("input neuron {j} was dropped early"));
        match self {
            Source::Owned {
                cts,
                form,
                a,
                gamma,
            } => Ok(Refs {
                cts: set
                    .iter()
                    .map(|&j| {
                        cts.get(j)
                            .and_then(Option::as_ref)
                            .ok_or_else(|| dropped(j))
                    })
                    .collect::<Result<_, _>>()?,
                form: *form,
                a: *a,
                gamma: *gamma,
            }),
            Source::Borrowed(v) => Ok(Refs {
                cts: set
                    .iter()
                    .map(|&j| v.cts.get(j).ok_or_else(|| dropped(j)))
                    .collect::<Result<_, _>>()?,
                form: v.form,
                a: v.a,
                gamma: v.gamma,
            }),
        }
    }
}

/// Position of neuron `j` in the sorted set `set`.
fn position(set: &[usize], j: usize) -> Result<usize, NnError> {
    set.binary_search(&j)
        .map_err(|_| NnError::Internal(format!("neuron {j} is not in the chunk")))
}

/// A uniform layer's neurons `set_out`: plain sums of the input neurons `set_in` (held by
/// `v` in that order), with the common weight and bias folded into the pending map.
fn sums<E: Scheme>(
    eng: &E,
    v: Refs<'_, E::Ct>,
    set_in: &[usize],
    rows: &[Row],
    set_out: &[usize],
    u: Uniform,
    err: &impl Fn(SchemeError) -> NnError,
) -> Result<Value<E::Ct>, NnError> {
    let groups = set_out
        .iter()
        .map(|&i| {
            rows.get(i)
                .ok_or_else(|| NnError::Internal(format!("no row {i}")))?
                .terms
                .iter()
                .map(|&(j, _)| position(set_in, j))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cts = eng
        .par_map(groups, |g| {
            let (&first, rest) = g
                .split_first()
                .ok_or(SchemeError::Operands("a uniform row without terms"))?;
            let mut acc = v.cts[first].clone();
            for &p in rest {
                eng.add_assign(&mut acc, v.cts[p])?;
            }
            Ok(acc)
        })
        .into_iter()
        .collect::<Result<_, SchemeError>>()
        .map_err(err)?;
    Ok(Value {
        cts,
        form: v.form,
        a: u.weight * v.a,
        gamma: u.weight * u.count as f64 * v.gamma + u.bias,
    })
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
fn at(node: &str) -> impl Fn(SchemeError) -> NnError + '_ {
    move |source| NnError::Encrypted {
        node: node.to_string(),
        source,
    }
}

impl BatchPlan {
    /// Runs the plan on encrypted inputs (one ciphertext per input pixel, `C×H×W` order, all
    /// at the same level and scale). `progress(done, total)` reports how many nodes are
    /// done, never decreasing (a streamed chain completes several nodes at once).
    ///
    /// # Errors
    /// Too few levels, wrong input count, evaluation errors (with the node name).
    pub fn run_encrypted<B: Backend>(
        &self,
        eval: &Evaluator<B>,
        inputs: Vec<Ciphertext<B>>,
        progress: impl FnMut(usize, usize),
    ) -> Result<(Vec<Ciphertext<B>>, OutputMap), NnError> {
        self.run(eval, inputs, progress)
    }

    /// Runs the plan with any scheme: CKKS (an [`Evaluator`]), or [`crate::scheme::Packed`] for the cleartext and
    /// simulation modes.
    ///
    /// # Errors
    /// See [`BatchPlan::run_encrypted`].
    pub fn run<E: Scheme>(
        &self,
        eng: &E,
        inputs: Vec<E::Ct>,
        progress: impl FnMut(usize, usize),
    ) -> Result<(Vec<E::Ct>, OutputMap), NnError> {
        self.run_unless(eng, inputs, progress, &|| false)
    }

    /// [`BatchPlan::run`], asking `cancelled` after every node and stopping with
    /// [`NnError::Cancelled`] once it says so (a caller that went away, a user's Ctrl-C).
    ///
    /// # Errors
    /// Those of [`BatchPlan::run`]; [`NnError::Cancelled`].
    pub fn run_unless<E: Scheme>(
        &self,
        eng: &E,
        inputs: Vec<E::Ct>,
        mut progress: impl FnMut(usize, usize),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(Vec<E::Ct>, OutputMap), NnError> {
        if inputs.len() != self.inputs() {
            return Err(NnError::Mismatch {
                what: "input ciphertexts",
                expected: self.inputs().to_string(),
                found: inputs.len().to_string(),
            });
        }
        let level = inputs.iter().map(|c| eng.level(c)).min().unwrap_or(0);
        if level < self.depth() {
            return Err(NnError::Levels {
                what: "the model".into(),
                needed: self.depth(),
                have: level,
            });
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
        let mut reported = 1;
        for id in 1..total {
            if self.in_chain[id] {
                continue;
            }
            let node = &self.model.nodes[id];
            let err = at(&node.name);
            let missing = |k: usize| {
                NnError::Internal(format!("value of node {} was freed early", node.inputs[k]))
            };
            let (slot, value) = if let Some(ch) = &self.chains[id] {
                let i = node.inputs[0];
                let value = if ch.frees.is_some() {
                    let v = values[i].take().ok_or_else(|| missing(0))?;
                    let source = Source::Owned {
                        cts: v.cts.into_iter().map(Some).collect(),
                        form: v.form,
                        a: v.a,
                        gamma: v.gamma,
                    };
                    self.run_chain(eng, ch, source, delta)?
                } else {
                    let v = values[i].as_ref().ok_or_else(|| missing(0))?;
                    self.run_chain(eng, ch, Source::Borrowed(v), delta)?
                };
                (ch.last(), value)
            } else {
                let input = |k: usize| values[node.inputs[k]].as_ref().ok_or_else(|| missing(k));
                let value = match &node.op {
                    _ if self.deferred[id] || matches!(node.op, Op::Flatten) => {
                        let i = node.inputs[0];
                        if self.last_use[i] == id {
                            // Last use: move the ciphertexts instead of copying them.
                            values[i].take().ok_or_else(|| missing(0))?
                        } else {
                            input(0)?.clone()
                        }
                    }
                    Op::Poly(c) => self.activation(eng, id, input(0)?, c, delta)?,
                    Op::Add => {
                        let (u, v) = (input(0)?, input(1)?);
                        self.add(eng, u, v, delta, &err)?
                    }
                    _ => {
                        return Err(NnError::Internal(format!(
                            "'{}' is not a batch-mode operator",
                            node.name
                        )));
                    }
                };
                (id, value)
            };
            values[slot] = Some(value);
            for &i in &node.inputs {
                if self.last_use[i] == id {
                    values[i] = None;
                }
            }
            // A chain completes its nodes at its head's turn; never report going backwards.
            reported = reported.max(slot + 1);
            progress(reported, total);
            if cancelled() {
                return Err(NnError::Cancelled(format!(
                    "batch evaluation after node '{}'",
                    node.name
                )));
            }
        }
        let out = values[self.model.output]
            .take()
            .ok_or_else(|| NnError::Internal("no output".into()))?;
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

    /// Evaluates a chain chunk by chunk (see [`chain`](self::chain)).
    fn run_chain<E: Scheme>(
        &self,
        eng: &E,
        ch: &Chain,
        mut source: Source<'_, E::Ct>,
        delta: f64,
    ) -> Result<Value<E::Ct>, NnError> {
        let last = ch.last();
        let mut out: Vec<Option<E::Ct>> = (0..self.nodes[last].neurons).map(|_| None).collect();
        let mut meta = None;
        for (c, chunk) in ch.chunks.iter().enumerate() {
            let sets = chain::needed_sets(&ch.nodes, &self.rows, chunk.clone());
            let mut cur = {
                let v = source.view(&sets[0])?;
                self.chain_head(eng, ch.nodes[0], v, &sets[0], &sets[1], delta)?
            };
            for (k, &id) in ch.nodes.iter().enumerate().skip(1) {
                cur = self.chain_step(eng, id, cur, &sets[k], &sets[k + 1], delta)?;
            }
            meta = Some((cur.form, cur.a, cur.gamma));
            if cur.cts.len() != chunk.len() {
                return Err(NnError::Internal("chain chunk lost neurons".into()));
            }
            for (&f, ct) in chunk.iter().zip(cur.cts) {
                out[f] = Some(ct);
            }
            if let (Some(frees), Source::Owned { cts, .. }) = (&ch.frees, &mut source) {
                for &j in &frees[c] {
                    if let Some(slot) = cts.get_mut(j) {
                        *slot = None;
                    }
                }
            }
        }
        let (form, a, gamma) = meta.ok_or_else(|| NnError::Internal("empty layer".into()))?;
        let cts = out
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| NnError::Internal("chain left neurons uncomputed".into()))?;
        Ok(Value {
            cts,
            form,
            a,
            gamma,
        })
    }

    /// The head of a chain on one chunk: its neurons `set_out` from the input neurons
    /// `set_in` (`v` holds exactly those, in order).
    fn chain_head<E: Scheme>(
        &self,
        eng: &E,
        id: usize,
        v: Refs<'_, E::Ct>,
        set_in: &[usize],
        set_out: &[usize],
        delta: f64,
    ) -> Result<Value<E::Ct>, NnError> {
        let node = &self.model.nodes[id];
        let err = at(&node.name);
        let rows = self.rows[id]
            .as_ref()
            .ok_or_else(|| NnError::Internal(format!("'{}' has no rows", node.name)))?;
        if let Some(u) = self.uniform[id] {
            let out = sums(eng, v, set_in, rows, set_out, u, &err)?;
            return self.settle(eng, id, out, &err);
        }
        let local = set_out
            .iter()
            .map(|&i| {
                let row = rows
                    .get(i)
                    .ok_or_else(|| NnError::Internal(format!("'{}': no row {i}", node.name)))?;
                Ok(Row {
                    terms: row
                        .terms
                        .iter()
                        .map(|&(j, w)| Ok((position(set_in, j)?, w)))
                        .collect::<Result<_, NnError>>()?,
                    bias: row.bias,
                })
            })
            .collect::<Result<Vec<_>, NnError>>()?;
        linear(eng, v, &local, delta, &err)
    }

    /// A follower of a chain (activation, uniform layer or reshape) on one chunk.
    fn chain_step<E: Scheme>(
        &self,
        eng: &E,
        id: usize,
        cur: Value<E::Ct>,
        set_in: &[usize],
        set_out: &[usize],
        delta: f64,
    ) -> Result<Value<E::Ct>, NnError> {
        let node = &self.model.nodes[id];
        let err = at(&node.name);
        match (&node.op, self.uniform[id], &self.rows[id]) {
            (Op::Flatten, ..) => Ok(cur),
            (Op::Poly(c), ..) => self.activation(eng, id, &cur, c, delta),
            (_, Some(u), Some(rows)) => {
                let out = sums(eng, cur.refs(), set_in, rows, set_out, u, &err)?;
                self.settle(eng, id, out, &err)
            }
            _ => Err(NnError::Internal(format!(
                "'{}' cannot follow a streamed layer",
                node.name
            ))),
        }
    }

    /// An activation at node `id`; a square is materialized afterwards if the plan says so.
    fn activation<E: Scheme>(
        &self,
        eng: &E,
        id: usize,
        v: &Value<E::Ct>,
        c: &[f64],
        delta: f64,
    ) -> Result<Value<E::Ct>, NnError> {
        let err = at(&self.model.nodes[id].name);
        let squares = c.get(2).is_some_and(|&x| x != 0.0);
        let materialized;
        let v = if v.form == Form::Squared && squares {
            materialized = self.materialize(eng, v, delta, &err)?;
            &materialized
        } else {
            v
        };
        let out = poly(eng, v, c, &err)?;
        self.settle(eng, id, out, &err)
    }

    /// Relinearizes and rescales a squared value at node `id` if the plan wants it linear.
    fn settle<E: Scheme>(
        &self,
        eng: &E,
        id: usize,
        v: Value<E::Ct>,
        err: &impl Fn(SchemeError) -> NnError,
    ) -> Result<Value<E::Ct>, NnError> {
        if v.form == Form::Squared && self.nodes[id].form == Form::Linear {
            relinearize_rescale(eng, v, err)
        } else {
            Ok(v)
        }
    }

    /// Relinearizes and rescales a lazily squared value (an identity linear layer).
    fn materialize<E: Scheme>(
        &self,
        eng: &E,
        v: &Value<E::Ct>,
        delta: f64,
        err: &impl Fn(SchemeError) -> NnError,
    ) -> Result<Value<E::Ct>, NnError> {
        let identity: Vec<Row> = (0..v.cts.len())
            .map(|i| Row {
                terms: vec![(i, 1.0)],
                bias: 0.0,
            })
            .collect();
        linear(eng, v.refs(), &identity, delta, err)
    }

    fn add<E: Scheme>(
        &self,
        eng: &E,
        u: &Value<E::Ct>,
        v: &Value<E::Ct>,
        delta: f64,
        err: &impl Fn(SchemeError) -> NnError,
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
        linear(eng, joined.refs(), &r, delta, err)
    }
}

/// Relinearizes and rescales a lazily squared value (one level), keeping its pending map.
fn relinearize_rescale<E: Scheme>(
    eng: &E,
    v: Value<E::Ct>,
    err: &impl Fn(SchemeError) -> NnError,
) -> Result<Value<E::Ct>, NnError> {
    let cts = eng
        .par_map(v.cts, |ct| {
            let mut r = eng.relinearize(ct)?;
            eng.rescale_assign(&mut r)?;
            Ok(r)
        })
        .into_iter()
        .collect::<Result<_, SchemeError>>()
        .map_err(err)?;
    Ok(Value {
        cts,
        form: Form::Linear,
        a: v.a,
        gamma: v.gamma,
    })
}

/// A degree ≤ 2 activation on a linear value.
fn poly<E: Scheme>(
    eng: &E,
    v: &Value<E::Ct>,
    c: &[f64],
    err: &impl Fn(SchemeError) -> NnError,
) -> Result<Value<E::Ct>, NnError> {
    let (delta, a, gamma) = match activation(c, v.a, v.gamma) {
        Activation::Affine { a, gamma } => {
            // Only the pending map changes.
            return Ok(Value {
                cts: v.cts.clone(),
                form: v.form,
                a,
                gamma,
            });
        }
        Activation::OfConstant => {
            return Err(NnError::Internal("activation of a constant value".into()));
        }
        Activation::Square { delta, a, gamma } => (delta, a, gamma),
    };
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
        a,
        gamma,
    })
}

/// A linear layer: integer weights chosen so the output lands exactly on the working scale.
fn linear<E: Scheme>(
    eng: &E,
    v: Refs<'_, E::Ct>,
    rows: &[Row],
    delta: f64,
    err: &impl Fn(SchemeError) -> NnError,
) -> Result<Value<E::Ct>, NnError> {
    let level = v.cts.iter().map(|c| eng.level(c)).min().unwrap_or(0);
    let scale = v.cts.first().map_or(1.0, |c| eng.scale(c));
    let rescales = linear_cost(v.form);
    if level < rescales {
        return Err(NnError::Levels {
            what: "a linear layer".into(),
            needed: rescales,
            have: level,
        });
    }
    let divisor: f64 = (0..rescales).map(|k| eng.q_at(level - k)).product();
    let dw = delta * divisor / scale; // weight scale
    let round = |x: f64| -> Result<i128, NnError> {
        let r = x.round();
        if r.is_finite() && r.abs() < 2f64.powi(120) {
            Ok(r as i128)
        } else {
            Err(NnError::OutOfRange {
                node: "a linear layer".into(),
                value: x,
                bound: 2f64.powi(120),
                what: "an integer weight may reach at this scale",
            })
        }
    };
    // One call for the whole layer: the backend reads every input once (blocked).
    let inputs = v.cts;
    let mut int_rows = Vec::with_capacity(rows.len());
    let mut biases = Vec::with_capacity(rows.len());
    for row in rows {
        let terms = row
            .terms
            .iter()
            .map(|&(j, w)| Ok((j, round(w * v.a * dw)?)))
            .collect::<Result<Vec<_>, NnError>>()?;
        int_rows.push(terms);
        let bias_true = crate::pending::folded_bias(row, v.gamma);
        biases.push(round(bias_true * scale * dw)?);
    }
    let mut cts = eng
        .weighted_sums(&inputs, &int_rows, &biases, scale * dw)
        .map_err(err)?;
    let relin = cts.first().is_some_and(|c| eng.degree(c) > 1);
    cts = eng
        .par_map(cts, |mut ct| {
            for _ in 0..rescales {
                eng.rescale_assign(&mut ct)?;
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
        return Err(NnError::Mismatch {
            what: "images in one batch",
            expected: format!("at most {slots}"),
            found: images.len().to_string(),
        });
    }
    let Some(first) = images.first() else {
        return Ok(vec![]);
    };
    if images.iter().any(|t| t.shape() != first.shape()) {
        return Err(NnError::Mismatch {
            what: "image shapes in one batch",
            expected: format!("{:?}", first.shape()),
            found: "images of other shapes".into(),
        });
    }
    let tasks: Vec<(usize, [u8; 32])> = (0..first.len()).map(|p| (p, rng.seed())).collect();
    eval.backend()
        .par_map(tasks, |(p, seed)| {
            let column: Vec<f64> = images.iter().map(|img| img.data()[p]).collect();
            let pt = eval
                .encode_real(&column, level, params.default_scale(), slots)
                .map_err(|e| NnError::Encrypted {
                    node: format!("input pixel {p}"),
                    source: e.into(),
                })?;
            let mut local = hecnn_ring::Prng::from_seed(seed);
            encrypt(&pt, &mut local).map_err(|e| NnError::Encrypted {
                node: format!("input pixel {p}"),
                source: e.into(),
            })
        })
        .into_iter()
        .collect()
}

/// Decrypts the output ciphertexts into per-image values (`count` images), applying the
/// output map.
///
/// # Errors
/// More images than a ciphertext has slots (checked before anything is allocated);
/// decryption or decoding errors.
pub fn decrypt_outputs<B: Backend>(
    eval: &Evaluator<B>,
    outputs: &[Ciphertext<B>],
    map: OutputMap,
    count: usize,
    mut decrypt: impl FnMut(&Ciphertext<B>) -> Result<hecnn_ckks::Plaintext<B>, CkksError>,
) -> Result<Vec<Vec<f64>>, NnError> {
    let slots = eval.params().max_slots();
    if count > slots {
        return Err(NnError::Mismatch {
            what: "images in one batch",
            expected: format!("at most {slots}"),
            found: count.to_string(),
        });
    }
    let mut per_image = vec![Vec::with_capacity(outputs.len()); count];
    for ct in outputs {
        let out = |e: CkksError| NnError::Encrypted {
            node: "output".into(),
            source: e.into(),
        };
        let pt = decrypt(ct).map_err(out)?;
        let slots = eval
            .encoder()
            .decode_real(eval.backend(), eval.params(), &pt)
            .map_err(out)?;
        for (img, &v) in per_image.iter_mut().zip(&slots) {
            img.push(map.a * v + map.gamma);
        }
    }
    Ok(per_image)
}

/// Largest magnitude a batch-mode value may reach (see [`crate::compile::params`]).
pub const MAX_VALUE: f64 = 131_072.0;

/// Runs the model in the clear on calibration images and returns, for every node, the
/// largest absolute value seen, checking it against [`MAX_VALUE`].
///
/// # Errors
/// [`NnError::OutOfRange`] naming the first node whose values exceed the bound.
pub fn check_ranges(model: &Model, images: &[crate::Tensor]) -> Result<Vec<f64>, NnError> {
    let mut max = vec![0.0f64; model.nodes.len()];
    for img in images {
        let per_node = crate::exec::run_all(model, img)?;
        for (m, t) in max.iter_mut().zip(&per_node) {
            *m = t.data().iter().fold(*m, |a, &v| a.max(v.abs()));
        }
    }
    if let Some((i, v)) = max.iter().enumerate().find(|(_, v)| **v > MAX_VALUE) {
        return Err(NnError::OutOfRange {
            node: model.nodes[i].name.clone(),
            value: *v,
            bound: MAX_VALUE,
            what: "that batch-packing parameters hold (on the calibration images)",
        });
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
                        // Padded borders: the rows are not uniform, so the pool is a
                        // linear layer that fuses.
                        padding: [1; 4],
                    }),
                    inputs: vec![1],
                },
                Node {
                    name: "fc".into(),
                    op: Op::Dense(Dense {
                        weight: Tensor::new(
                            vec![2, 32],
                            (0..64).map(|i| i as f64 / 32.0 - 1.0).collect(),
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
