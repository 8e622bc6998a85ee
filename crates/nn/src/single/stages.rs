//! A chain model cut into single-image stages: consecutive linear operators (convolutions,
//! pooling, dense layers, with any reshapes between them) are composed into one matrix, so
//! each costs one level however many operators it holds (average pooling followed by a
//! convolution, or two dense layers without an activation between them); every polynomial
//! activation is a stage of its own.

use crate::{Model, NnError, Op, linear::Row, pending::Act};

/// What a stage computes.
#[derive(Clone, Debug)]
pub(super) enum StageOp {
    /// A composed linear map: its rows over the stage input's neurons, and the stride
    /// `(sy, sx)` of its output grid over its input grid (1 for dense outputs).
    Linear {
        /// Rows over the input neurons.
        rows: Vec<Row>,
        /// Output pixel `(y, x)` sits over input pixel `(sy·y, sx·x)` (plus an offset).
        stride: (usize, usize),
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

/// One stage: what it does, its output's shape, and the names of the operators it holds.
#[derive(Clone, Debug)]
pub(super) struct Stage {
    pub op: StageOp,
    pub shape: Vec<usize>,
    pub name: String,
    /// The model node whose output the stage computes.
    pub node: usize,
}

/// A linear stage being composed: its rows, stride and operator names.
type Open = Option<(Vec<Row>, (usize, usize), Vec<String>)>;

/// The stride of an operator's output grid over its input grid.
fn op_stride(op: &Op) -> (usize, usize) {
    match op {
        Op::Conv2d(c) => (c.stride[0], c.stride[1]),
        Op::AvgPool(p) => (p.stride[0], p.stride[1]),
        _ => (1, 1),
    }
}

/// Cuts a rewritten chain model into stages.
///
/// # Errors
/// [`NnError::NotSupported`] for graphs that are not a chain (residual additions), activations
/// of degree above 2 and operators that are neither linear nor polynomial.
pub(super) fn stages(model: &Model) -> Result<Vec<Stage>, NnError> {
    let shapes = model.shapes()?;
    let mut out: Vec<Stage> = Vec::new();
    let mut open: Open = None;
    for (id, node) in model.nodes.iter().enumerate().skip(1) {
        if node.inputs != [id - 1] {
            return Err(NnError::NotSupported {
                node: node.name.clone(),
                op: node.op.kind(),
                packing: "single-image",
                why: "it does not read only the previous node: single-image packing runs chains of single-input layers (no residual additions yet)".into(),
            });
        }
        let close = |open: &mut Open, out: &mut Vec<Stage>, node: usize| {
            if let Some((rows, stride, names)) = open.take() {
                out.push(Stage {
                    op: StageOp::Linear { rows, stride },
                    shape: shapes[node].clone(),
                    name: names.join(" + "),
                    node,
                });
            }
        };
        match &node.op {
            Op::Flatten => {}
            Op::Poly(_) | Op::ChannelPoly(_) => {
                let act = if let Op::ChannelPoly(cs) = &node.op {
                    let neurons: usize = shapes[id].iter().product();
                    Act::per_channel(cs.clone(), neurons / cs.len().max(1))
                } else if let Op::Poly(c) = &node.op {
                    Act::uniform(c.clone())
                } else {
                    return Err(NnError::Internal(format!(
                        "'{}' is not a polynomial",
                        node.name
                    )));
                };
                let degree = act.degree();
                if degree > 2 {
                    return Err(NnError::NotSupported {
                        node: node.name.clone(),
                        op: node.op.kind(),
                        packing: "single-image",
                        why: format!("degree {degree}: single-image packing evaluates degree ≤ 2"),
                    });
                }
                close(&mut open, &mut out, id - 1);
                out.push(Stage {
                    op: StageOp::Poly(act),
                    shape: shapes[id].clone(),
                    name: node.name.clone(),
                    node: id,
                });
            }
            op => {
                let rows =
                    crate::linear::rows(op, &shapes[id - 1], &shapes[id])?.ok_or_else(|| {
                        NnError::NotSupported {
                            node: node.name.clone(),
                            op: op.kind(),
                            packing: "single-image",
                            why: "not linear or polynomial: rewrite the model first".into(),
                        }
                    })?;
                let (sy, sx) = op_stride(op);
                open = Some(match open.take() {
                    None => (rows, (sy, sx), vec![node.name.clone()]),
                    Some((inner, (ay, ax), mut names)) => {
                        names.push(node.name.clone());
                        (
                            crate::linear::compose(&rows, &inner),
                            (ay * sy, ax * sx),
                            names,
                        )
                    }
                });
            }
        }
        if id == model.output {
            close(&mut open, &mut out, id);
            // A trailing reshape changes the shape, not the neurons.
            if let Some(last) = out.last_mut() {
                last.shape = shapes[id].clone();
            }
            break;
        }
    }
    Ok(out)
}
