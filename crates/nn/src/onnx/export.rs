//! [`Model`] → ONNX (opset 13), as the training script and tests write models. Polynomials
//! become `Mul`/`Add` chains (`x·x` for squares), dense layers `Gemm` with `transB = 1`.

use prost::Message;

use super::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto, attribute_type, data_type,
};
use crate::{Model, NnError, Op};

struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    counter: usize,
}

impl Builder {
    fn fresh(&mut self, base: &str) -> String {
        self.counter += 1;
        format!("{base}_{}", self.counter)
    }

    fn init(&mut self, base: &str, shape: &[usize], data: &[f64]) -> String {
        let name = self.fresh(base);
        self.inits.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            name: name.clone(),
            raw_data: data
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
            ..Default::default()
        });
        name
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(name);
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i: v,
        ..Default::default()
    }
}

fn float(name: &str, v: f64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f: v as f32,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Some(v) => Dimension {
                                dim_value: Some(*v as i64),
                                dim_param: None,
                            },
                            None => Dimension {
                                dim_value: None,
                                dim_param: Some("N".into()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
        doc_string: String::new(),
    }
}

/// Serializes a model as ONNX (weights as `float32`).
///
/// # Errors
/// The errors of [`Model::shapes`] if the model is inconsistent.
pub fn export_onnx(model: &Model) -> Result<Vec<u8>, NnError> {
    let shapes = model.shapes()?;
    let mut b = Builder {
        nodes: vec![],
        inits: vec![],
        counter: 0,
    };
    let mut names: Vec<String> = Vec::with_capacity(model.nodes.len());
    for (id, node) in model.nodes.iter().enumerate() {
        let x = |k: usize| names[node.inputs[k]].clone();
        let base = if node.name.is_empty() {
            node.op.kind().to_string()
        } else {
            node.name.clone()
        };
        let out = match &node.op {
            Op::Input => "input".to_string(),
            Op::Conv2d(c) => {
                let w = b.init("W", c.weight.shape(), c.weight.data());
                let bias = b.init("B", &[c.bias.len()], &c.bias);
                let attrs = vec![
                    ints("kernel_shape", &c.kernel()),
                    ints("strides", &c.stride),
                    ints("pads", &c.padding),
                    int("group", c.groups as i64),
                ];
                b.node("Conv", &base, vec![x(0), w, bias], attrs)
            }
            Op::Dense(d) => {
                let input = if shapes[node.inputs[0]].len() == 1 {
                    x(0)
                } else {
                    b.node(
                        "Flatten",
                        &format!("{base}/flatten"),
                        vec![x(0)],
                        vec![int("axis", 1)],
                    )
                };
                let w = b.init("W", d.weight.shape(), d.weight.data());
                let bias = b.init("B", &[d.bias.len()], &d.bias);
                b.node("Gemm", &base, vec![input, w, bias], vec![int("transB", 1)])
            }
            Op::AvgPool(p) | Op::MaxPool(p) => {
                let op = if matches!(node.op, Op::MaxPool(_)) {
                    "MaxPool"
                } else {
                    "AveragePool"
                };
                let mut attrs = vec![
                    ints("kernel_shape", &p.kernel),
                    ints("strides", &p.stride),
                    ints("pads", &p.padding),
                ];
                if op == "AveragePool" {
                    attrs.push(int("count_include_pad", 1));
                }
                b.node(op, &base, vec![x(0)], attrs)
            }
            Op::GlobalAvgPool => b.node("GlobalAveragePool", &base, vec![x(0)], vec![]),
            Op::BatchNorm(bn) => {
                let c = bn.scale.len();
                let ins = vec![
                    x(0),
                    b.init("scale", &[c], &bn.scale),
                    b.init("bias", &[c], &bn.bias),
                    b.init("mean", &[c], &bn.mean),
                    b.init("var", &[c], &bn.var),
                ];
                b.node(
                    "BatchNormalization",
                    &base,
                    ins,
                    vec![float("epsilon", bn.epsilon)],
                )
            }
            Op::ChannelAffine { scale, shift } => {
                let shape = shapes[id].clone();
                let bshape: Vec<usize> = std::iter::once(scale.len())
                    .chain(std::iter::repeat_n(1, shape.len() - 1))
                    .collect();
                let s = b.init("scale", &bshape, scale);
                let t = b.init("shift", &bshape, shift);
                let m = b.node("Mul", &base, vec![x(0), s], vec![]);
                b.node("Add", &base, vec![m, t], vec![])
            }
            Op::Flatten => b.node("Flatten", &base, vec![x(0)], vec![int("axis", 1)]),
            Op::Add => b.node("Add", &base, vec![x(0), x(1)], vec![]),
            Op::Relu => b.node("Relu", &base, vec![x(0)], vec![]),
            Op::Poly(c) => poly(&mut b, &base, &x(0), c),
            Op::ChannelPoly(c) => {
                let shape = &shapes[id];
                let bshape: Vec<usize> = std::iter::once(c.len())
                    .chain(std::iter::repeat_n(1, shape.len() - 1))
                    .collect();
                channel_poly(&mut b, &base, &x(0), c, &bshape)
            }
        };
        names.push(out);
    }
    let in_dims = [
        None,
        Some(model.input_shape[0]),
        Some(model.input_shape[1]),
        Some(model.input_shape[2]),
    ];
    let out_shape: Vec<Option<usize>> = std::iter::once(None)
        .chain(shapes[model.output].iter().map(|&d| Some(d)))
        .collect();
    let graph = GraphProto {
        node: b.nodes,
        name: model.name.clone(),
        initializer: b.inits,
        input: vec![value_info("input", &in_dims)],
        output: vec![value_info(&names[model.output], &out_shape)],
        ..Default::default()
    };
    let proto = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "hecnn".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    };
    Ok(proto.encode_to_vec())
}

/// The smallest well-formed ONNX model around hand-built nodes: one float input `x` of shape
/// `input`, the last node's first output as the model's output, opset 13. For graphs the
/// exporter does not write (tests of the importer's refusals, fuzzing seeds).
pub fn graph_to_onnx(
    input: &[usize],
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
) -> Vec<u8> {
    let output = nodes
        .last()
        .and_then(|n| n.output.first())
        .cloned()
        .unwrap_or_default();
    let dims: Vec<Option<usize>> = input.iter().copied().map(Some).collect();
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "hecnn".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            node: nodes,
            initializer: initializers,
            input: vec![value_info("x", &dims)],
            output: vec![ValueInfoProto {
                name: output,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `Σ c_i x^i` as ONNX nodes (Horner's rule; `x·x` for the square term).
/// `Σ_i K_i·x^i` with per-channel coefficient tensors `K_i` of shape `bshape`, written in
/// the monomial form PyTorch exports (`x·x·A + x·B + C`), which the importer and the
/// rewrite fold back into one [`Op::ChannelPoly`].
fn channel_poly(b: &mut Builder, base: &str, x: &str, c: &[Vec<f64>], bshape: &[usize]) -> String {
    let degree = c
        .iter()
        .map(|l| l.len())
        .max()
        .unwrap_or(0)
        .saturating_sub(1);
    let coeff =
        |i: usize| -> Vec<f64> { c.iter().map(|l| l.get(i).copied().unwrap_or(0.0)).collect() };
    let mut power = x.to_string();
    let mut acc: Option<String> = None;
    for i in 1..=degree.max(1) {
        if i > 1 {
            power = b.node("Mul", base, vec![power, x.into()], vec![]);
        }
        let k = b.init("coeff", bshape, &coeff(i));
        let term = b.node("Mul", base, vec![power.clone(), k], vec![]);
        acc = Some(match acc {
            None => term,
            Some(a) => b.node("Add", base, vec![a, term], vec![]),
        });
    }
    let k = b.init("coeff", bshape, &coeff(0));
    let acc = acc.unwrap_or_else(|| x.to_string());
    b.node("Add", base, vec![acc, k], vec![])
}

fn poly(b: &mut Builder, base: &str, x: &str, c: &[f64]) -> String {
    let scalar = |b: &mut Builder, v: f64| b.init("c", &[], &[v]);
    if c == [0.0, 0.0, 1.0] {
        return b.node("Mul", base, vec![x.into(), x.into()], vec![]);
    }
    let d = c.len().saturating_sub(1);
    let mut acc = {
        let k = scalar(b, c[d]);
        b.node("Mul", base, vec![x.into(), k], vec![])
    };
    for i in (1..d).rev() {
        let k = scalar(b, c[i]);
        let s = b.node("Add", base, vec![acc, k], vec![]);
        acc = b.node("Mul", base, vec![s, x.into()], vec![]);
    }
    let k = scalar(b, c.first().copied().unwrap_or(0.0));
    b.node("Add", base, vec![acc, k], vec![])
}
