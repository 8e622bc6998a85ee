//! Per-channel activations for batch packing. Batch mode carries one pending map per value
//! (every neuron is its own ciphertext, so a per-channel constant is a per-ciphertext one,
//! but the map is shared); a per-channel quadratic `c2·x² + c1·x + c0` is written as
//! `x + δ` (per channel), a square, and `c2·y + γ` (per channel), which batch mode runs
//! as linear layers around a uniform square: `c2·(x + c1/(2·c2))² + c0 − c1²/(4·c2)`.

use crate::{Model, NnError, Op, ir::Node};

/// `model` with every [`Op::ChannelPoly`] replaced by the affine–square–affine form;
/// the model itself when it has none.
///
/// # Errors
/// The errors of [`Model::shapes`]; [`NnError::NotSupported`] for a per-channel polynomial
/// of degree above 2, or one that squares some channels and not others.
pub(super) fn channel_polys(model: &Model) -> Result<Model, NnError> {
    // A malformed graph is refused before any node is indexed.
    model.shapes()?;
    if !model
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::ChannelPoly(_)))
    {
        return Ok(model.clone());
    }
    let mut nodes: Vec<Node> = Vec::with_capacity(model.nodes.len() * 2);
    // The new id of every old node.
    let mut at = Vec::with_capacity(model.nodes.len());
    for node in &model.nodes {
        let inputs: Vec<usize> = node.inputs.iter().map(|&i| at[i]).collect();
        let Op::ChannelPoly(cs) = &node.op else {
            nodes.push(Node {
                name: node.name.clone(),
                op: node.op.clone(),
                inputs,
            });
            at.push(nodes.len() - 1);
            continue;
        };
        let refuse = |why: String| NnError::NotSupported {
            node: node.name.clone(),
            op: "ChannelPoly",
            packing: "batch",
            why,
        };
        let coef = |c: &[f64], i: usize| c.get(i).copied().unwrap_or(0.0);
        let degree = crate::coeffs::Coeffs::PerChannel(cs.clone()).degree();
        if degree > 2 {
            return Err(refuse(format!(
                "degree {degree}: batch packing evaluates degree ≤ 2"
            )));
        }
        let squared = cs.iter().filter(|c| coef(c, 2) != 0.0).count();
        let op = if squared == 0 {
            Op::ChannelAffine {
                scale: cs.iter().map(|c| coef(c, 1)).collect(),
                shift: cs.iter().map(|c| coef(c, 0)).collect(),
            }
        } else if squared == cs.len() {
            let shift = Node {
                name: format!("{}/shift", node.name),
                op: Op::ChannelAffine {
                    scale: vec![1.0; cs.len()],
                    shift: cs.iter().map(|c| coef(c, 1) / (2.0 * coef(c, 2))).collect(),
                },
                inputs,
            };
            nodes.push(shift);
            let square = Node {
                name: format!("{}/square", node.name),
                op: Op::Poly(vec![0.0, 0.0, 1.0]),
                inputs: vec![nodes.len() - 1],
            };
            nodes.push(square);
            nodes.push(Node {
                name: node.name.clone(),
                op: Op::ChannelAffine {
                    scale: cs.iter().map(|c| coef(c, 2)).collect(),
                    shift: cs
                        .iter()
                        .map(|c| coef(c, 0) - coef(c, 1) * coef(c, 1) / (4.0 * coef(c, 2)))
                        .collect(),
                },
                inputs: vec![nodes.len() - 1],
            });
            at.push(nodes.len() - 1);
            continue;
        } else {
            return Err(refuse(
                "some channels are squared and others not (x² coefficients of zero and \
                 non-zero)"
                    .into(),
            ));
        };
        nodes.push(Node {
            name: node.name.clone(),
            op,
            inputs,
        });
        at.push(nodes.len() - 1);
    }
    let lowered = Model {
        name: model.name.clone(),
        input_shape: model.input_shape,
        output: at[model.output],
        nodes,
    };
    lowered.shapes()?;
    Ok(lowered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Tensor, exec};

    #[test]
    fn the_lowered_form_computes_the_same() {
        let model = Model {
            name: "q".into(),
            input_shape: [2, 1, 2],
            nodes: vec![
                Node {
                    name: "x".into(),
                    op: Op::Input,
                    inputs: vec![],
                },
                Node {
                    name: "q".into(),
                    op: Op::ChannelPoly(vec![vec![0.5, -1.0, 2.0], vec![1.0, 3.0, -0.25]]),
                    inputs: vec![0],
                },
            ],
            output: 1,
        };
        let lowered = channel_polys(&model).unwrap();
        assert_eq!(lowered.nodes.len(), 4);
        let x = Tensor::new(vec![2, 1, 2], vec![0.3, -1.2, 2.0, 0.0]).unwrap();
        let want = exec::run(&model, &x).unwrap();
        let got = exec::run(&lowered, &x).unwrap();
        for (a, b) in want.data().iter().zip(got.data()) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        let mut mixed = model.clone();
        mixed.nodes[1].op = Op::ChannelPoly(vec![vec![0.0, 1.0, 1.0], vec![0.0, 1.0]]);
        assert!(matches!(
            channel_polys(&mixed),
            Err(NnError::NotSupported { .. })
        ));
    }
}
