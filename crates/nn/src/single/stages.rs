//! A model cut into single-image stages: linear operators (convolutions, pooling, dense
//! layers, with any reshapes between them) are composed into one matrix, so each costs one
//! level however many operators it holds; a residual addition is a linear operator over
//! two values, composed the same way (a ResNet block's second convolution, its shortcut and
//! the addition are one stage); every polynomial activation is a stage of its own.
//!
//! Values are numbered: value 0 is the model input, value `i + 1` stage `i`'s output. A
//! linear stage reads one or more values ([`Stage::sources`]); its rows index their neurons
//! one after the other.

use crate::{
    Model, NnError, Op,
    linear::{Row, compose},
    pending::Act,
};

/// What a stage computes.
#[derive(Clone, Debug)]
pub(super) enum StageOp {
    /// A composed linear map: its rows over the concatenated neurons of the stage's sources,
    /// and for each source the stride `(sy, sx)` of the output grid over the source's grid
    /// (1 for dense outputs).
    Linear {
        /// Rows over the sources' neurons.
        rows: Vec<Row>,
        /// Output pixel `(y, x)` sits over source pixel `(sy·y, sx·x)` (plus an offset).
        strides: Vec<(usize, usize)>,
    },
    /// A polynomial activation of degree ≤ 2, the same on every neuron or per channel.
    Poly(Act),
}

impl StageOp {
    /// Whether the stage squares its input (a level and a relinearization per ciphertext);
    /// an affine activation only changes the pending map.
    pub fn squares(&self) -> bool {
        matches!(self, Self::Poly(act) if act.squares())
    }
}

/// One stage: what it does, what it reads, its output's shape, and the names of the
/// operators it holds.
#[derive(Clone, Debug)]
pub(super) struct Stage {
    pub op: StageOp,
    /// The values it reads (0: the model input; `k + 1`: stage `k`'s output), in the order
    /// its rows index them. An activation reads one.
    pub sources: Vec<usize>,
    pub shape: Vec<usize>,
    pub name: String,
    /// The model node whose output the stage computes.
    pub node: usize,
}

/// A linear expression not yet evaluated: rows over the concatenated neurons of `sources`.
#[derive(Clone, Debug)]
struct Open {
    rows: Vec<Row>,
    sources: Vec<usize>,
    strides: Vec<(usize, usize)>,
    names: Vec<String>,
}

/// What a node's output is while cutting: an evaluated value, or a linear expression of
/// evaluated values.
#[derive(Clone, Debug)]
enum Expr {
    Value(usize),
    Open(Open),
}

/// The largest shift `c1 / (2·c2)` an activation's completed square may add: past it,
/// the activation is split into a square and a linear term (see [`stages`]). Slot values
/// are kept below 2^13 ([`crate::single::VALUE_BOUND_BITS`]), and `(x + 64)²` alone is half
/// of that.
const MAX_SHIFT: f64 = 64.0;

/// Whether an open expression is cheap enough to compose into each of several readers: at
/// most two terms a row (a split activation, an affine map), where evaluating it on its
/// own would cost a level.
fn cheap(o: &Open) -> bool {
    o.rows.iter().all(|r| r.terms.len() <= 2)
}

/// Whether every reader of node `id` composes it into a linear stage (linear operators and
/// additions, looking through reshapes), so that an activation split into a square and a
/// linear term costs no extra level; not so for the model's output or an activation reader.
fn read_linearly(model: &Model, consumers: &[Vec<usize>], id: usize) -> bool {
    id != model.output
        && consumers[id].iter().all(|&k| match &model.nodes[k].op {
            Op::Flatten => read_linearly(model, consumers, k),
            Op::Poly(_) | Op::ChannelPoly(_) | Op::Relu | Op::MaxPool(_) | Op::Input => false,
            _ => true,
        })
}

/// The stride of an operator's output grid over its input grid.
fn op_stride(op: &Op) -> (usize, usize) {
    match op {
        Op::Conv2d(c) => (c.stride[0], c.stride[1]),
        Op::AvgPool(p) => (p.stride[0], p.stride[1]),
        _ => (1, 1),
    }
}

/// The cutter's state.
struct Cutter<'m> {
    model: &'m Model,
    shapes: Vec<Vec<usize>>,
    consumers: Vec<Vec<usize>>,
    exprs: Vec<Option<Expr>>,
    /// Neurons of every value.
    neurons: Vec<usize>,
    out: Vec<Stage>,
}

impl Cutter<'_> {
    fn expr(&self, id: usize) -> Result<&Expr, NnError> {
        self.exprs
            .get(id)
            .and_then(Option::as_ref)
            .ok_or_else(|| NnError::Internal(format!("node {id} was not cut")))
    }

    /// Evaluates node `id`'s expression into a stage if it is still open; its value.
    fn materialize(&mut self, id: usize) -> Result<usize, NnError> {
        let open = match self.expr(id)? {
            Expr::Value(v) => return Ok(*v),
            Expr::Open(o) => o.clone(),
        };
        self.neurons.push(open.rows.len());
        self.out.push(Stage {
            op: StageOp::Linear {
                rows: open.rows,
                strides: open.strides,
            },
            sources: open.sources,
            shape: self.shapes[id].clone(),
            name: open.names.join(" + "),
            node: id,
        });
        let v = self.out.len();
        self.exprs[id] = Some(Expr::Value(v));
        Ok(v)
    }

    /// Node `id` as a linear expression for one consumer: its open expression when that
    /// consumer is its only reader (composed, it is evaluated once) or when the expression
    /// is cheap ([`cheap`]: composed into each reader instead of costing a level), and it
    /// is not the model's output; otherwise the identity over its evaluated value.
    fn linear_of(&mut self, id: usize) -> Result<Open, NnError> {
        if let Expr::Open(o) = self.expr(id)?
            && id != self.model.output
            && (self.consumers[id].len() <= 1 || cheap(o))
        {
            return Ok(o.clone());
        }
        let v = self.materialize(id)?;
        let n = self.neurons[v];
        Ok(Open {
            rows: (0..n)
                .map(|j| Row {
                    terms: vec![(j, 1.0)],
                    bias: 0.0,
                })
                .collect(),
            sources: vec![v],
            strides: vec![(1, 1)],
            names: Vec::new(),
        })
    }

    /// `a + b`, the sources of both concatenated (a source both read at the same stride is
    /// read once).
    fn sum(&self, a: Open, b: Open, name: &str) -> Result<Open, NnError> {
        if a.rows.len() != b.rows.len() {
            return Err(NnError::Internal(format!(
                "'{name}' adds {} values to {}",
                b.rows.len(),
                a.rows.len()
            )));
        }
        let mut sources = a.sources.clone();
        let mut strides = a.strides.clone();
        // Where each of b's sources starts among the concatenated neurons.
        let offsets = |sources: &[usize]| -> Vec<usize> {
            sources
                .iter()
                .scan(0, |acc, &v| {
                    let at = *acc;
                    *acc += self.neurons[v];
                    Some(at)
                })
                .collect()
        };
        let b_offsets = offsets(&b.sources);
        let mut b_to = Vec::with_capacity(b.sources.len());
        for (&v, &s) in b.sources.iter().zip(&b.strides) {
            match sources
                .iter()
                .zip(&strides)
                .position(|(&u, &t)| u == v && t == s)
            {
                Some(k) => b_to.push(k),
                None => {
                    sources.push(v);
                    strides.push(s);
                    b_to.push(sources.len() - 1);
                }
            }
        }
        let to_offsets = offsets(&sources);
        // b's term index → the concatenation's.
        let remap = |j: usize| -> usize {
            let k = b_offsets.partition_point(|&o| o <= j) - 1;
            to_offsets[b_to[k]] + (j - b_offsets[k])
        };
        let rows = a
            .rows
            .into_iter()
            .zip(b.rows)
            .map(|(mut r, s)| {
                r.terms
                    .extend(s.terms.into_iter().map(|(j, w)| (remap(j), w)));
                r.terms.sort_unstable_by_key(|&(j, _)| j);
                r.terms.dedup_by(|later, first| {
                    if later.0 == first.0 {
                        first.1 += later.1;
                        true
                    } else {
                        false
                    }
                });
                r.bias += s.bias;
                r
            })
            .collect();
        let mut names = a.names;
        names.extend(b.names);
        names.push(name.to_string());
        Ok(Open {
            rows,
            sources,
            strides,
            names,
        })
    }
}

/// Cuts a rewritten model into stages, in an order where every stage comes after the
/// values it reads.
///
/// # Errors
/// [`NnError::NotSupported`] for activations of degree above 2 and operators that are
/// neither linear nor polynomial.
pub(super) fn stages(model: &Model) -> Result<Vec<Stage>, NnError> {
    let shapes = model.shapes()?;
    let mut c = Cutter {
        model,
        consumers: model.consumers(),
        exprs: vec![None; model.nodes.len()],
        neurons: vec![model.input_shape.iter().product()],
        out: Vec::new(),
        shapes,
    };
    for (id, node) in model.nodes.iter().enumerate() {
        let input = |k: usize| {
            node.inputs.get(k).copied().ok_or_else(|| NnError::Graph {
                node: node.name.clone(),
                detail: format!("input {k} missing"),
            })
        };
        let expr = match &node.op {
            Op::Input => Expr::Value(0),
            Op::Flatten => {
                let u = input(0)?;
                // A reshape: the same neurons, read by the flatten's consumers.
                let shared = match c.expr(u)? {
                    Expr::Open(o) => c.consumers[u].len() > 1 && !cheap(o),
                    Expr::Value(_) => false,
                };
                if shared {
                    Expr::Value(c.materialize(u)?)
                } else {
                    c.expr(u)?.clone()
                }
            }
            op @ (Op::Poly(_) | Op::ChannelPoly(_)) => {
                let neurons: usize = c.shapes[id].iter().product();
                let act = Act::of(op, neurons).ok_or_else(|| {
                    NnError::Internal(format!("{} is not a polynomial", op.kind()))
                })?;
                let degree = act.degree();
                if degree > 2 {
                    return Err(NnError::NotSupported {
                        node: node.name.clone(),
                        op: node.op.kind(),
                        packing: "single-image",
                        why: format!("degree {degree}: single-image packing evaluates degree ≤ 2"),
                    });
                }
                let u = input(0)?;
                // A square right after a linear stage whose completed square would shift
                // values far (`c2` small against `c1`: a nearly linear channel) is evaluated
                // as `c2·x² + c0` plus `c1·x` read again by the next linear stage: no shift,
                // the same levels, values as large as `x²`.
                let v = c.materialize(u)?;
                let identity_map = v
                    .checked_sub(1)
                    .is_none_or(|k| matches!(c.out[k].op, StageOp::Linear { .. }));
                let split = identity_map
                    && act.squares()
                    && act.widest_shift() > MAX_SHIFT
                    && read_linearly(model, &c.consumers, id);
                let (act, linear) = if split {
                    let (square, linear) = act.split_linear();
                    (square, Some(linear))
                } else {
                    (act, None)
                };
                let per = act.per();
                c.neurons.push(c.neurons[v]);
                c.out.push(Stage {
                    op: StageOp::Poly(act),
                    sources: vec![v],
                    shape: c.shapes[id].clone(),
                    name: node.name.clone(),
                    node: id,
                });
                let square = c.out.len();
                match linear {
                    None => Expr::Value(square),
                    Some(c1) => {
                        let n = c.neurons[v];
                        let coeff =
                            |j: usize| c1.get(j / per).or(c1.last()).copied().unwrap_or(0.0);
                        Expr::Open(Open {
                            rows: (0..n)
                                .map(|j| Row {
                                    terms: vec![(j, 1.0), (n + j, coeff(j))],
                                    bias: 0.0,
                                })
                                .collect(),
                            sources: vec![square, v],
                            strides: vec![(1, 1), (1, 1)],
                            names: vec![node.name.clone()],
                        })
                    }
                }
            }
            Op::Add => {
                let a = c.linear_of(input(0)?)?;
                let b = c.linear_of(input(1)?)?;
                Expr::Open(c.sum(a, b, &node.name)?)
            }
            op => {
                let u = input(0)?;
                let rows =
                    crate::linear::rows(op, &c.shapes[u], &c.shapes[id])?.ok_or_else(|| {
                        NnError::NotSupported {
                            node: node.name.clone(),
                            op: op.kind(),
                            packing: "single-image",
                            why: "not linear or polynomial: rewrite the model first".into(),
                        }
                    })?;
                let inner = c.linear_of(u)?;
                let (sy, sx) = op_stride(op);
                let mut names = inner.names;
                names.push(node.name.clone());
                Expr::Open(Open {
                    rows: compose(&rows, &inner.rows),
                    sources: inner.sources,
                    strides: inner
                        .strides
                        .iter()
                        .map(|&(ay, ax)| (ay * sy, ax * sx))
                        .collect(),
                    names,
                })
            }
        };
        c.exprs[id] = Some(expr);
    }
    let last = c.materialize(model.output)?;
    if last != c.out.len() {
        return Err(NnError::NotSupported {
            node: model.nodes[model.output].name.clone(),
            op: model.nodes[model.output].op.kind(),
            packing: "single-image",
            why: "the output is the input or an earlier value".into(),
        });
    }
    let mut out = c.out;
    // A trailing reshape changes the shape, not the neurons.
    if let Some(last) = out.last_mut() {
        last.shape = c.shapes[model.output].clone();
    }
    Ok(out)
}
