//! ONNX → [`Model`]: operators mapped to the IR, every unsupported operator collected and
//! reported at once with its node name.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use prost::Message;

use super::proto::{self, AttributeProto, ModelProto, NodeProto, TensorProto, data_type};
use crate::{
    Model, NnError, Op, Tensor,
    ir::{BatchNorm, Conv2d, Dense, Node, NodeId, Pool},
};

/// Largest ONNX file accepted (bytes).
pub const MAX_ONNX_BYTES: usize = 512 << 20;

/// Most nodes a graph may have (ResNet-44 has about 300): bounds the import's time and
/// memory on hostile files.
pub const MAX_ONNX_NODES: usize = 1 << 16;

/// Highest polynomial degree the importer builds from products of activations. Every
/// packing evaluates degree ≤ 2; beyond this the product is reported unsupported instead of
/// being expanded (a chain of `Mul(x, x)` doubles the degree at each node).
pub const MAX_POLY_DEGREE: usize = 64;

/// Reads at most `limit` bytes of the regular file `path` (devices, pipes and directories
/// are refused: their reported size means nothing).
fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, NnError> {
    crate::compile::read_bounded(path, limit as u64).map_err(|e| match e {
        NnError::TooLarge { size, .. } => NnError::Onnx(format!(
            "{}: {size} bytes, above the {limit}-byte budget of a model and its external data",
            path.display()
        )),
        other => other,
    })
}

/// Supported opset range of the default domain.
pub const OPSET_RANGE: std::ops::RangeInclusive<i64> = 7..=22;

/// Operator types the importer understands (some only in particular forms).
pub const SUPPORTED: &[&str] = &[
    "Constant",
    "Identity",
    "Dropout",
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "AveragePool",
    "MaxPool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "BatchNormalization",
    "Relu",
];

/// A value flowing through the ONNX graph during import.
#[derive(Clone)]
enum Value {
    Node(NodeId),
    Const(Tensor),
    /// Produced by an unsupported node: users are skipped (already reported).
    Poisoned,
}

/// Parses an ONNX model held in memory and converts it to the IR. Models whose weights are
/// stored as external data need [`import_onnx_file`].
///
/// # Errors
/// [`NnError::Onnx`] for malformed files, [`NnError::Unsupported`] listing every unsupported
/// operator (`op_type` and node name), [`NnError::Shape`] for inconsistent shapes.
pub fn import_onnx(bytes: &[u8]) -> Result<Model, NnError> {
    import_with(bytes, &mut ExternalData::none())
}

/// Reads an ONNX file and converts it to the IR; external weight files (as PyTorch's
/// torch.export-based exporter writes them) are read from the model's directory.
///
/// # Errors
/// See [`import_onnx`]; also I/O errors and external-data locations that leave the model's
/// directory or exceed the size limit.
pub fn import_onnx_file(path: &Path) -> Result<Model, NnError> {
    let bytes = read_limited(path, MAX_ONNX_BYTES)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    import_with(
        &bytes,
        &mut ExternalData {
            dir: Some(dir),
            files: HashMap::new(),
            total: 0,
        },
    )
}

/// Resolves external tensor data relative to the model's directory, caching the files.
struct ExternalData {
    dir: Option<PathBuf>,
    files: HashMap<String, Vec<u8>>,
    total: usize,
}

impl ExternalData {
    fn none() -> Self {
        Self {
            dir: None,
            files: HashMap::new(),
            total: 0,
        }
    }

    /// The bytes of an external tensor.
    fn bytes(&mut self, t: &TensorProto) -> Result<Vec<u8>, NnError> {
        let Some(dir) = &self.dir else {
            return Err(NnError::Onnx(format!(
                "tensor '{}' is stored as external data: import the model from its file (import_onnx_file)",
                t.name
            )));
        };
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.as_str())
        };
        let location = get("location").ok_or_else(|| {
            NnError::Onnx(format!(
                "tensor '{}': external data without a location",
                t.name
            ))
        })?;
        let rel = Path::new(location);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(NnError::Onnx(format!(
                "tensor '{}': external data location '{location}' must stay inside the model's directory",
                t.name
            )));
        }
        let parse = |k: &str| -> Result<Option<usize>, NnError> {
            get(k)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| NnError::Onnx(format!("tensor '{}': bad {k} '{v}'", t.name)))
                })
                .transpose()
        };
        let (offset, length) = (parse("offset")?.unwrap_or(0), parse("length")?);
        if !self.files.contains_key(location) {
            let path = dir.join(rel);
            // The external files share the model's byte budget.
            let data = read_limited(&path, MAX_ONNX_BYTES.saturating_sub(self.total))?;
            self.total += data.len();
            self.files.insert(location.to_string(), data);
        }
        let data = &self.files[location];
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(data.len()),
        };
        end.and_then(|e| data.get(offset..e))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                NnError::Onnx(format!(
                    "tensor '{}': external data range outside '{location}'",
                    t.name
                ))
            })
    }
}

fn import_with(bytes: &[u8], external: &mut ExternalData) -> Result<Model, NnError> {
    if bytes.len() > MAX_ONNX_BYTES {
        return Err(NnError::Onnx(format!(
            "file of {} bytes exceeds the {MAX_ONNX_BYTES}-byte limit",
            bytes.len()
        )));
    }
    let proto =
        ModelProto::decode(bytes).map_err(|e| NnError::Onnx(format!("not an ONNX model: {e}")))?;
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version);
    if !OPSET_RANGE.contains(&opset) {
        return Err(NnError::Onnx(format!(
            "opset {opset} is outside the supported range {}..={}",
            OPSET_RANGE.start(),
            OPSET_RANGE.end()
        )));
    }
    let graph = proto
        .graph
        .ok_or_else(|| NnError::Onnx("model without a graph".into()))?;
    if graph.node.len() > MAX_ONNX_NODES {
        return Err(NnError::Onnx(format!(
            "{} nodes exceed the limit of {MAX_ONNX_NODES}",
            graph.node.len()
        )));
    }

    let mut values: HashMap<String, Value> = HashMap::new();
    for init in &graph.initializer {
        let t = if init.data_location == 1 {
            let mut resolved = init.clone();
            resolved.raw_data = external.bytes(init)?;
            resolved.data_location = 0;
            tensor_of(&resolved)?
        } else {
            tensor_of(init)?
        };
        values.insert(init.name.clone(), Value::Const(t));
    }
    let input = graph
        .input
        .iter()
        .find(|i| !values.contains_key(&i.name))
        .ok_or_else(|| NnError::Onnx("graph has no non-initializer input".into()))?;
    let input_shape = input_shape(input)?;
    let mut nodes = vec![Node {
        name: input.name.clone(),
        op: Op::Input,
        inputs: vec![],
    }];
    values.insert(input.name.clone(), Value::Node(0));

    let mut unsupported: Vec<(String, String)> = Vec::new();
    for (k, n) in graph.node.iter().enumerate() {
        let name = if n.name.is_empty() {
            format!("{}_{k}", n.op_type)
        } else {
            n.name.clone()
        };
        let ins: Vec<Option<Value>> = n
            .input
            .iter()
            .map(|i| {
                if i.is_empty() {
                    None
                } else {
                    values.get(i).cloned()
                }
            })
            .collect();
        if ins.iter().any(|v| matches!(v, Some(Value::Poisoned))) {
            // Still report operators that are unsupported in themselves.
            if !SUPPORTED.contains(&n.op_type.as_str()) {
                unsupported.push((name, n.op_type.clone()));
            }
            poison(&mut values, n);
            continue;
        }
        if n.input
            .iter()
            .zip(&ins)
            .any(|(i, v)| !i.is_empty() && v.is_none())
        {
            return Err(NnError::Onnx(format!(
                "node '{name}' uses an undefined value"
            )));
        }
        match convert(n, &name, &ins, &mut nodes, opset)? {
            Converted::Value(v) => {
                if let Some(out) = n.output.first() {
                    values.insert(out.clone(), v);
                }
            }
            Converted::Unsupported(why) => {
                unsupported.push((name, why));
                poison(&mut values, n);
            }
        }
    }
    if !unsupported.is_empty() {
        return Err(NnError::Unsupported(unsupported));
    }
    let out_name = graph
        .output
        .first()
        .map(|o| o.name.clone())
        .ok_or_else(|| NnError::Onnx("graph has no output".into()))?;
    let output = match values.get(&out_name) {
        Some(Value::Node(id)) => *id,
        _ => {
            return Err(NnError::Onnx(format!(
                "output '{out_name}' is not computed from the input"
            )));
        }
    };
    let model = Model {
        name: if graph.name.is_empty() {
            "model".into()
        } else {
            graph.name.clone()
        },
        input_shape,
        nodes,
        output,
    };
    model.shapes()?;
    Ok(model)
}

fn poison(values: &mut HashMap<String, Value>, n: &NodeProto) {
    for o in &n.output {
        values.insert(o.clone(), Value::Poisoned);
    }
}

enum Converted {
    Value(Value),
    Unsupported(String),
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map_or(default, |a| a.f)
}

fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn attr_s(n: &NodeProto, name: &str) -> String {
    attr(n, name).map_or(String::new(), |a| {
        String::from_utf8_lossy(&a.s).into_owned()
    })
}

fn to_usize2(
    v: Option<Vec<i64>>,
    default: usize,
    what: &str,
    name: &str,
) -> Result<[usize; 2], NnError> {
    match v.as_deref() {
        None => Ok([default; 2]),
        Some([a, b]) if *a > 0 && *b > 0 => Ok([*a as usize, *b as usize]),
        Some(other) => Err(NnError::Onnx(format!(
            "node '{name}': {what} {other:?} must be two positive values"
        ))),
    }
}

fn pads(n: &NodeProto, name: &str) -> Result<Option<[usize; 4]>, NnError> {
    let auto = attr_s(n, "auto_pad");
    if !(auto.is_empty() || auto == "NOTSET" || auto == "VALID") {
        return Ok(None); // SAME_UPPER / SAME_LOWER: resolved by the caller as unsupported
    }
    match attr_ints(n, "pads").as_deref() {
        None => Ok(Some([0; 4])),
        Some([t, l, b, r]) if [*t, *l, *b, *r].iter().all(|&v| v >= 0) => {
            Ok(Some([*t as usize, *l as usize, *b as usize, *r as usize]))
        }
        Some(other) => Err(NnError::Onnx(format!("node '{name}': pads {other:?}"))),
    }
}

fn push(nodes: &mut Vec<Node>, name: &str, op: Op, inputs: Vec<NodeId>) -> Value {
    nodes.push(Node {
        name: name.to_string(),
        op,
        inputs,
    });
    Value::Node(nodes.len() - 1)
}

fn convert(
    n: &NodeProto,
    name: &str,
    ins: &[Option<Value>],
    nodes: &mut Vec<Node>,
    opset: i64,
) -> Result<Converted, NnError> {
    use Converted::{Unsupported, Value as V};
    let node_in = |k: usize| match ins.get(k) {
        Some(Some(Value::Node(id))) => Some(*id),
        _ => None,
    };
    let const_in = |k: usize| match ins.get(k) {
        Some(Some(Value::Const(t))) => Some(t.clone()),
        _ => None,
    };
    if !(n.domain.is_empty() || n.domain == "ai.onnx") {
        return Ok(Unsupported(format!(
            "{} (domain '{}')",
            n.op_type, n.domain
        )));
    }
    let op = n.op_type.as_str();
    Ok(match op {
        "Constant" => {
            let t = if let Some(a) = attr(n, "value").and_then(|a| a.t.as_ref()) {
                tensor_of(a)?
            } else if let Some(a) = attr(n, "value_float") {
                Tensor::new(vec![], vec![f64::from(a.f)])?
            } else if let Some(a) = attr(n, "value_floats") {
                Tensor::new(
                    vec![a.floats.len()],
                    a.floats.iter().map(|&f| f64::from(f)).collect(),
                )?
            } else if let Some(a) = attr(n, "value_int") {
                Tensor::new(vec![], vec![a.i as f64])?
            } else if let Some(a) = attr(n, "value_ints") {
                Tensor::new(
                    vec![a.ints.len()],
                    a.ints.iter().map(|&i| i as f64).collect(),
                )?
            } else {
                return Ok(Unsupported("Constant of an unsupported kind".into()));
            };
            V(Value::Const(t))
        }
        "Identity" | "Dropout" => match ins.first() {
            Some(Some(v)) => V(v.clone()),
            _ => return Err(NnError::Onnx(format!("node '{name}': missing input"))),
        },
        "Conv" => {
            let (Some(x), Some(w)) = (node_in(0), const_in(1)) else {
                return Ok(Unsupported("Conv with a non-constant weight".into()));
            };
            if w.shape().len() != 4 {
                return Ok(Unsupported(format!(
                    "Conv with weight rank {} (only 2-D convolutions)",
                    w.shape().len()
                )));
            }
            if attr_ints(n, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1)) {
                return Ok(Unsupported("dilated Conv".into()));
            }
            let Some(padding) = pads(n, name)? else {
                return Ok(Unsupported("Conv with auto_pad SAME".into()));
            };
            let bias = match const_in(2) {
                Some(b) => b.data().to_vec(),
                None => vec![0.0; w.shape()[0]],
            };
            let conv = Conv2d {
                stride: to_usize2(attr_ints(n, "strides"), 1, "strides", name)?,
                padding,
                groups: attr_i(n, "group", 1).max(1) as usize,
                weight: w,
                bias,
            };
            V(push(nodes, name, Op::Conv2d(conv), vec![x]))
        }
        "Gemm" => {
            let (Some(x), Some(b)) = (node_in(0), const_in(1)) else {
                return Ok(Unsupported("Gemm with a non-constant B".into()));
            };
            if attr_i(n, "transA", 0) != 0 || b.shape().len() != 2 {
                return Ok(Unsupported("Gemm with transA or a non-matrix B".into()));
            }
            let alpha = f64::from(attr_f(n, "alpha", 1.0));
            let beta = f64::from(attr_f(n, "beta", 1.0));
            let w = if attr_i(n, "transB", 0) != 0 {
                b
            } else {
                transpose(&b)?
            };
            let w = Tensor::new(
                w.shape().to_vec(),
                w.data().iter().map(|v| v * alpha).collect(),
            )?;
            let out = w.shape()[0];
            let bias = match const_in(2) {
                Some(c) if c.len() == out => c.data().iter().map(|v| v * beta).collect(),
                Some(c) if c.len() == 1 => vec![c.data()[0] * beta; out],
                Some(_) => {
                    return Ok(Unsupported(
                        "Gemm with a bias that does not broadcast".into(),
                    ));
                }
                None => vec![0.0; out],
            };
            let flat = flatten_if_needed(nodes, x, name);
            V(push(
                nodes,
                name,
                Op::Dense(Dense { weight: w, bias }),
                vec![flat],
            ))
        }
        "MatMul" => {
            let (Some(x), Some(b)) = (node_in(0), const_in(1)) else {
                return Ok(Unsupported("MatMul of two activations".into()));
            };
            if b.shape().len() != 2 {
                return Ok(Unsupported("MatMul with a non-matrix constant".into()));
            }
            let w = transpose(&b)?;
            let out = w.shape()[0];
            let flat = flatten_if_needed(nodes, x, name);
            V(push(
                nodes,
                name,
                Op::Dense(Dense {
                    weight: w,
                    bias: vec![0.0; out],
                }),
                vec![flat],
            ))
        }
        "Add" | "Sub" | "Mul" | "Div" => binary(op, name, ins, nodes)?,
        "Pow" => match (node_in(0), const_in(1)) {
            (Some(x), Some(e)) if e.len() == 1 && e.data()[0] == 2.0 => {
                V(push(nodes, name, Op::Poly(vec![0.0, 0.0, 1.0]), vec![x]))
            }
            _ => Unsupported("Pow with an exponent other than the constant 2".into()),
        },
        "AveragePool" | "MaxPool" => {
            let Some(x) = node_in(0) else {
                return Ok(Unsupported(format!("{op} of a constant")));
            };
            let Some(padding) = pads(n, name)? else {
                return Ok(Unsupported(format!("{op} with auto_pad SAME")));
            };
            if attr_i(n, "ceil_mode", 0) != 0 {
                return Ok(Unsupported(format!("{op} with ceil_mode")));
            }
            if op == "AveragePool" && padding != [0; 4] && attr_i(n, "count_include_pad", 0) == 0 {
                return Ok(Unsupported(
                    "padded AveragePool with count_include_pad = 0".into(),
                ));
            }
            let kernel = to_usize2(attr_ints(n, "kernel_shape"), 0, "kernel_shape", name)?;
            let pool = Pool {
                stride: to_usize2(attr_ints(n, "strides"), 1, "strides", name)?,
                kernel,
                padding,
            };
            let op = if op == "MaxPool" {
                Op::MaxPool(pool)
            } else {
                Op::AvgPool(pool)
            };
            V(push(nodes, name, op, vec![x]))
        }
        "ReduceMean" => {
            // Mean over the spatial axes of N×C×H×W = global average pooling. Axes are an
            // attribute before opset 18 and an input from opset 18 on.
            let axes: Option<Vec<i64>> = attr_ints(n, "axes")
                .or_else(|| const_in(1).map(|t| t.data().iter().map(|&v| v as i64).collect()));
            let spatial = axes.is_some_and(|mut a| {
                a.iter_mut().for_each(|v| {
                    if *v < 0 {
                        *v += 4
                    }
                });
                a.sort_unstable();
                a == [2, 3]
            });
            match node_in(0) {
                Some(x) if spatial => {
                    let pooled = push(nodes, name, Op::GlobalAvgPool, vec![x]);
                    if attr_i(n, "keepdims", 1) == 0 {
                        let p = nodes.len() - 1;
                        V(push(
                            nodes,
                            &format!("{name}/flatten"),
                            Op::Flatten,
                            vec![p],
                        ))
                    } else {
                        V(pooled)
                    }
                }
                _ => Unsupported("ReduceMean other than over the two spatial axes".into()),
            }
        }
        "GlobalAveragePool" => match node_in(0) {
            Some(x) => V(push(nodes, name, Op::GlobalAvgPool, vec![x])),
            None => Unsupported("GlobalAveragePool of a constant".into()),
        },
        "Flatten" => match node_in(0) {
            Some(x) if attr_i(n, "axis", 1) == 1 => V(push(nodes, name, Op::Flatten, vec![x])),
            _ => Unsupported("Flatten with axis other than 1".into()),
        },
        "Reshape" => match (node_in(0), const_in(1)) {
            // [N, -1] or [N, features]: a flatten of each sample.
            (Some(x), Some(shape)) if shape.len() == 2 && opset >= 5 => {
                V(push(nodes, name, Op::Flatten, vec![x]))
            }
            _ => Unsupported("Reshape other than flattening each sample".into()),
        },
        "BatchNormalization" => {
            let (Some(x), Some(s), Some(b), Some(m), Some(v)) = (
                node_in(0),
                const_in(1),
                const_in(2),
                const_in(3),
                const_in(4),
            ) else {
                return Ok(Unsupported(
                    "BatchNormalization with non-constant statistics".into(),
                ));
            };
            let bn = BatchNorm {
                scale: s.data().to_vec(),
                bias: b.data().to_vec(),
                mean: m.data().to_vec(),
                var: v.data().to_vec(),
                epsilon: f64::from(attr_f(n, "epsilon", 1e-5)),
            };
            V(push(nodes, name, Op::BatchNorm(bn), vec![x]))
        }
        "Relu" => match node_in(0) {
            Some(x) => V(push(nodes, name, Op::Relu, vec![x])),
            None => Unsupported("Relu of a constant".into()),
        },
        other => Unsupported(other.to_string()),
    })
}

/// Element-wise binary operators with at most one constant operand.
fn binary(
    op: &str,
    name: &str,
    ins: &[Option<Value>],
    nodes: &mut Vec<Node>,
) -> Result<Converted, NnError> {
    use Converted::{Unsupported, Value as V};
    let get = |k: usize| ins.get(k).cloned().flatten();
    match (get(0), get(1)) {
        (Some(Value::Node(a)), Some(Value::Node(b))) => match op {
            "Add" => Ok(V(push(nodes, name, Op::Add, vec![a, b]))),
            "Mul" => {
                // p(x)·q(x) for polynomials of the same input x (x itself counts as the
                // polynomial x): e.g. (0.5·z)·z as PyTorch writes 0.5*z*z.
                let as_poly = |i: usize| match &nodes[i].op {
                    Op::Poly(c) => (nodes[i].inputs[0], c.clone()),
                    _ => (i, vec![0.0, 1.0]),
                };
                let ((xa, pa), (xb, pb)) = (as_poly(a), as_poly(b));
                if xa != xb {
                    return Ok(Unsupported("Mul of two different activations".into()));
                }
                let degree = pa.len() + pb.len() - 2;
                if degree > MAX_POLY_DEGREE {
                    return Ok(Unsupported(format!(
                        "Mul raising an activation to degree {degree} (above \
                         {MAX_POLY_DEGREE}; the packings evaluate degree ≤ 2)"
                    )));
                }
                let mut prod = vec![0.0; pa.len() + pb.len() - 1];
                for (i, u) in pa.iter().enumerate() {
                    for (j, v) in pb.iter().enumerate() {
                        prod[i + j] += u * v;
                    }
                }
                Ok(V(push(nodes, name, Op::Poly(prod), vec![xa])))
            }
            _ => Ok(Unsupported(format!("{op} of two different activations"))),
        },
        (Some(Value::Node(x)), Some(Value::Const(c))) => {
            let commutes = matches!(op, "Add" | "Mul");
            affine(op, name, x, &c, false, commutes, nodes)
        }
        (Some(Value::Const(c)), Some(Value::Node(x))) => {
            affine(op, name, x, &c, true, matches!(op, "Add" | "Mul"), nodes)
        }
        (Some(Value::Const(a)), Some(Value::Const(b))) => {
            if a.is_empty() || b.is_empty() {
                return Ok(Unsupported(format!("{op} of an empty constant")));
            }
            if a.shape() != b.shape() && a.len() != 1 && b.len() != 1 {
                return Ok(Unsupported(format!(
                    "{op} of constants with different shapes"
                )));
            }
            let (big, small) = if a.len() >= b.len() {
                (&a, &b)
            } else {
                (&b, &a)
            };
            let v: Vec<f64> = (0..big.len())
                .map(|i| {
                    let (x, y) = if a.len() >= b.len() {
                        (big.data()[i], small.data()[i % small.len()])
                    } else {
                        (small.data()[i % small.len()], big.data()[i])
                    };
                    match op {
                        "Add" => x + y,
                        "Sub" => x - y,
                        "Mul" => x * y,
                        _ => x / y,
                    }
                })
                .collect();
            Ok(V(Value::Const(Tensor::new(big.shape().to_vec(), v)?)))
        }
        _ => Err(NnError::Onnx(format!(
            "node '{name}': {op} needs two inputs"
        ))),
    }
}

/// `x ∘ c` for a constant `c`: a scalar becomes a degree-1 polynomial, a per-channel vector a
/// channel affine map.
fn affine(
    op: &str,
    name: &str,
    x: NodeId,
    c: &Tensor,
    const_first: bool,
    commutes: bool,
    nodes: &mut Vec<Node>,
) -> Result<Converted, NnError> {
    use Converted::{Unsupported, Value as V};
    if const_first && !commutes {
        return Ok(Unsupported(format!(
            "{op} with the constant as first operand"
        )));
    }
    let (scale, shift): (Vec<f64>, Vec<f64>) = match op {
        "Add" => (vec![1.0; c.len()], c.data().to_vec()),
        "Sub" => (vec![1.0; c.len()], c.data().iter().map(|v| -v).collect()),
        "Mul" => (c.data().to_vec(), vec![0.0; c.len()]),
        _ => {
            if c.data().contains(&0.0) {
                return Ok(Unsupported("Div by zero".into()));
            }
            (
                c.data().iter().map(|v| 1.0 / v).collect(),
                vec![0.0; c.len()],
            )
        }
    };
    if c.len() == 1 {
        // A scalar affine map of a polynomial of `y` is a polynomial of `y` of the same
        // degree: composed here, so that Horner's form `(x·a + b)·x` (what the exporter
        // writes) reads back as one activation of `x`.
        let (input, coeffs) = match &nodes[x].op {
            Op::Poly(q) if nodes[x].inputs.len() == 1 => {
                let mut p: Vec<f64> = q.iter().map(|v| v * scale[0]).collect();
                if let Some(c0) = p.first_mut() {
                    *c0 += shift[0];
                }
                (nodes[x].inputs[0], p)
            }
            _ => (x, vec![shift[0], scale[0]]),
        };
        return Ok(V(push(nodes, name, Op::Poly(coeffs), vec![input])));
    }
    // Per-channel constants, as ONNX broadcasting writes them: [C], [C,1,1] or [1,C,1,1].
    let dims: Vec<usize> = c.shape().iter().copied().filter(|&d| d != 1).collect();
    if dims.len() != 1 {
        return Ok(Unsupported(format!(
            "{op} with a constant of shape {:?}",
            c.shape()
        )));
    }
    Ok(V(push(
        nodes,
        name,
        Op::ChannelAffine { scale, shift },
        vec![x],
    )))
}

fn flatten_if_needed(nodes: &mut Vec<Node>, x: NodeId, name: &str) -> NodeId {
    // Dense flattens implicitly in the IR; an explicit Flatten node keeps shapes obvious.
    if matches!(nodes[x].op, Op::Flatten | Op::Dense(_)) {
        return x;
    }
    nodes.push(Node {
        name: format!("{name}/flatten"),
        op: Op::Flatten,
        inputs: vec![x],
    });
    nodes.len() - 1
}

fn transpose(t: &Tensor) -> Result<Tensor, NnError> {
    let (r, c) = (t.shape()[0], t.shape()[1]);
    let mut v = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            v[j * r + i] = t.data()[i * c + j];
        }
    }
    Tensor::new(vec![c, r], v)
}

fn input_shape(vi: &proto::ValueInfoProto) -> Result<[usize; 3], NnError> {
    let dims: Vec<Option<i64>> = vi
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.iter().map(|d| d.dim_value).collect())
        .unwrap_or_default();
    let positive = |d: &Option<i64>| d.filter(|&v| v > 0).map(|v| v as usize);
    let fixed: Vec<usize> = match dims.len() {
        4 => dims[1..].iter().filter_map(positive).collect(),
        3 => dims.iter().filter_map(positive).collect(),
        _ => vec![],
    };
    match fixed.as_slice() {
        [c, h, w] => Ok([*c, *h, *w]),
        _ => Err(NnError::Onnx(format!(
            "input '{}' must have a fixed N×C×H×W or C×H×W shape (found {dims:?})",
            vi.name
        ))),
    }
}

/// Converts a `TensorProto` to an `f64` tensor.
fn tensor_of(t: &TensorProto) -> Result<Tensor, NnError> {
    if t.data_location != 0 {
        return Err(NnError::Onnx(format!(
            "tensor '{}' uses external data, which is not supported",
            t.name
        )));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| NnError::Onnx(format!("tensor '{}' has a negative dimension", t.name)))
        })
        .collect::<Result<_, _>>()?;
    let count: usize = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| NnError::Onnx(format!("tensor '{}' is too large", t.name)))?;
    let raw = &t.raw_data;
    let values: Vec<f64> = match t.data_type {
        data_type::FLOAT if !raw.is_empty() => chunks(raw, 4, count, &t.name)?
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        data_type::FLOAT => t.float_data.iter().map(|&f| f64::from(f)).collect(),
        data_type::DOUBLE if !raw.is_empty() => chunks(raw, 8, count, &t.name)?
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
        data_type::DOUBLE => t.double_data.clone(),
        data_type::INT64 if !raw.is_empty() => chunks(raw, 8, count, &t.name)?
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64)
            .collect(),
        data_type::INT64 => t.int64_data.iter().map(|&i| i as f64).collect(),
        data_type::INT32 if !raw.is_empty() => chunks(raw, 4, count, &t.name)?
            .map(|b| f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        data_type::INT32 => t.int32_data.iter().map(|&i| f64::from(i)).collect(),
        other => {
            return Err(NnError::Onnx(format!(
                "tensor '{}' has unsupported data type {other}",
                t.name
            )));
        }
    };
    Tensor::new(dims, values).map_err(|_| {
        NnError::Onnx(format!(
            "tensor '{}': data does not match its dimensions",
            t.name
        ))
    })
}

fn chunks<'a>(
    raw: &'a [u8],
    width: usize,
    count: usize,
    name: &str,
) -> Result<std::slice::ChunksExact<'a, u8>, NnError> {
    if raw.len() != width * count {
        return Err(NnError::Onnx(format!(
            "tensor '{name}': {} raw bytes for {count} values",
            raw.len()
        )));
    }
    Ok(raw.chunks_exact(width))
}
