//! HE-friendly rewrites. The input model is never modified; a new model is returned.
//!
//! - ReLU and max pooling are refused with a clear message unless a replacement is requested
//!   (a polynomial for ReLU, average pooling for max pooling).
//! - Batch normalization becomes a per-channel affine map, and affine maps (and degree-1
//!   polynomials) following a convolution or dense layer are folded into its weights.
//! - Polynomial chains and sums over the same input are merged, so `a·x² + b·x + c`
//!   written as separate ONNX nodes becomes one activation, per channel when the
//!   coefficients are (AESPA/HerPN activations become one [`Op::ChannelPoly`]).
//! - Unreachable nodes are removed.

use crate::coeffs::Coeffs;
use crate::{Model, NnError, Op, ir::Node};

/// Options for [`rewrite`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RewriteOptions {
    /// Replace every ReLU by this polynomial (`Σ c_i x^i`).
    pub relu_replacement: Option<Vec<f64>>,
    /// Replace max pooling by average pooling with the same window.
    pub maxpool_as_avgpool: bool,
}

/// Applies the rewrites.
///
/// # Errors
/// [`NnError::NotPolynomial`] listing every ReLU / max-pooling node without a requested
/// replacement; shape errors from the result's validation.
pub fn rewrite(model: &Model, opts: &RewriteOptions) -> Result<Model, NnError> {
    model.shapes()?;
    let mut nodes = model.nodes.clone();
    let mut refused = Vec::new();
    for n in &mut nodes {
        match &n.op {
            Op::Relu => match &opts.relu_replacement {
                Some(p) => n.op = Op::Poly(p.clone()),
                None => refused.push(format!("{} ({})", n.name, "Relu")),
            },
            Op::MaxPool(p) if opts.maxpool_as_avgpool => n.op = Op::AvgPool(p.clone()),
            Op::MaxPool(_) => refused.push(format!("{} ({})", n.name, "MaxPool")),
            Op::BatchNorm(b) => {
                let scale: Vec<f64> = b
                    .scale
                    .iter()
                    .zip(&b.var)
                    .map(|(g, v)| g / (v + b.epsilon).sqrt())
                    .collect();
                let shift = b
                    .bias
                    .iter()
                    .zip(&b.mean)
                    .zip(&scale)
                    .map(|((beta, m), s)| beta - m * s)
                    .collect();
                n.op = Op::ChannelAffine { scale, shift };
            }
            _ => {}
        }
    }
    if !refused.is_empty() {
        return Err(NnError::NotPolynomial(refused));
    }

    // `redirect[i] = j` makes every use of node i a use of node j (j < i).
    let mut redirect: Vec<usize> = (0..nodes.len()).collect();
    let resolve = |r: &[usize], mut i: usize| {
        while r[i] != i {
            i = r[i];
        }
        i
    };
    loop {
        let mut changed = false;
        let uses = use_counts(&nodes, &redirect, model.output);
        for id in 0..nodes.len() {
            if redirect[id] != id || nodes[id].inputs.is_empty() {
                continue;
            }
            let inputs: Vec<usize> = nodes[id]
                .inputs
                .iter()
                .map(|&i| resolve(&redirect, i))
                .collect();
            nodes[id].inputs.clone_from(&inputs);
            let src = inputs[0];
            let exclusive = uses[src] == 1;
            match nodes[id].op.clone() {
                // Affine map after a linear layer: fold into the weights.
                Op::ChannelAffine { scale, shift }
                    if exclusive && fold_affine(&mut nodes[src].op, &scale, &shift) =>
                {
                    redirect[id] = src;
                    changed = true;
                }
                // A degree-1 polynomial after a linear layer: fold into the weights.
                Op::Poly(c)
                    if c.len() <= 2
                        && exclusive
                        && out_channels(&nodes[src].op).is_some_and(|k| {
                            let (a, b) = (
                                c.get(1).copied().unwrap_or(0.0),
                                c.first().copied().unwrap_or(0.0),
                            );
                            fold_affine(&mut nodes[src].op, &vec![a; k], &vec![b; k])
                        }) =>
                {
                    redirect[id] = src;
                    changed = true;
                }
                // Element-wise polynomials of element-wise polynomials compose when one of
                // them is affine (composing two squares would raise the degree).
                op @ (Op::Poly(_) | Op::ChannelPoly(_) | Op::ChannelAffine { .. }) if exclusive => {
                    if let (Some(outer), Some(inner)) =
                        (Coeffs::of(&op), Coeffs::of(&nodes[src].op))
                        && (outer.degree() <= 1 || inner.degree() <= 1)
                        && let Some(c) = outer.compose(&inner)
                    {
                        nodes[id].op = c.into_op();
                        nodes[id].inputs = std::mem::take(&mut nodes[src].inputs);
                        // `src` is dead now: it no longer counts as a reader of its input.
                        changed = true;
                    }
                }
                Op::Add => {
                    // p(x) + q(x) over the same x (x itself counts as the polynomial x): the
                    // terms of a·x² + b·x + c written as separate nodes, per channel or not.
                    let as_poly = |i: usize| match Coeffs::of(&nodes[i].op) {
                        Some(c) if uses[i] == 1 => (nodes[i].inputs[0], c),
                        _ => (i, Coeffs::identity()),
                    };
                    let ((xa, pa), (xb, pb)) = (as_poly(inputs[0]), as_poly(inputs[1]));
                    if xa == xb
                        && (xa != inputs[0] || xb != inputs[1])
                        && let Some(sum) = pa.add(&pb)
                    {
                        nodes[id].op = sum.into_op();
                        nodes[id].inputs = vec![xa];
                        changed = true;
                    }
                }
                _ => {}
            }
            if changed {
                // Use counts are stale after any change: start a fresh pass.
                break;
            }
        }
        if !changed {
            break;
        }
    }
    let output = resolve(&redirect, model.output);
    let out = compact(&nodes, &redirect, output, model);
    out.shapes()?;
    Ok(out)
}

fn out_channels(op: &Op) -> Option<usize> {
    match op {
        Op::Conv2d(c) => Some(c.out_channels()),
        Op::Dense(d) => Some(d.bias.len()),
        _ => None,
    }
}

/// Folds `y·scale + shift` (per output channel) into a convolution or dense layer.
fn fold_affine(op: &mut Op, scale: &[f64], shift: &[f64]) -> bool {
    let (weight, bias) = match op {
        Op::Conv2d(c) => (&mut c.weight, &mut c.bias),
        Op::Dense(d) => (&mut d.weight, &mut d.bias),
        _ => return false,
    };
    if bias.len() != scale.len() || scale.len() != shift.len() {
        return false;
    }
    let per = weight.len() / bias.len().max(1);
    for (i, w) in weight.data_mut().iter_mut().enumerate() {
        *w *= scale[i / per];
    }
    for ((b, s), t) in bias.iter_mut().zip(scale).zip(shift) {
        *b = *b * s + t;
    }
    true
}

fn use_counts(nodes: &[Node], redirect: &[usize], output: usize) -> Vec<usize> {
    let resolve = |mut i: usize| {
        while redirect[i] != i {
            i = redirect[i];
        }
        i
    };
    let mut uses = vec![0usize; nodes.len()];
    for (id, n) in nodes.iter().enumerate() {
        if redirect[id] == id {
            for &i in &n.inputs {
                uses[resolve(i)] += 1;
            }
        }
    }
    uses[resolve(output)] += 1;
    uses
}

/// Keeps the nodes the output depends on, renumbered in order.
fn compact(nodes: &[Node], redirect: &[usize], output: usize, model: &Model) -> Model {
    let resolve = |mut i: usize| {
        while redirect[i] != i {
            i = redirect[i];
        }
        i
    };
    let mut live = vec![false; nodes.len()];
    live[0] = true;
    live[output] = true;
    for id in (0..nodes.len()).rev() {
        if live[id] {
            for &i in &nodes[id].inputs {
                live[resolve(i)] = true;
            }
        }
    }
    let mut new_id = vec![usize::MAX; nodes.len()];
    let mut out = Vec::new();
    for (id, n) in nodes.iter().enumerate() {
        if live[id] && redirect[id] == id {
            new_id[id] = out.len();
            out.push(Node {
                name: n.name.clone(),
                op: n.op.clone(),
                inputs: n.inputs.iter().map(|&i| new_id[resolve(i)]).collect(),
            });
        }
    }
    Model {
        name: model.name.clone(),
        input_shape: model.input_shape,
        nodes: out,
        output: new_id[output],
    }
}
