//! The model IR: a directed acyclic graph of HE-relevant operators over images (`C×H×W`)
//! and feature vectors. It holds no cryptography; planners and runtimes consume it.

use crate::{NnError, Tensor};

/// Index of a node in [`Model::nodes`].
pub type NodeId = usize;

/// A 2-D convolution (cross-correlation, as in ONNX / PyTorch).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conv2d {
    /// Weights `[out][in/groups][kh][kw]`.
    pub weight: Tensor,
    /// One bias per output channel.
    pub bias: Vec<f64>,
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]` zero padding.
    pub padding: [usize; 4],
    /// Channel groups.
    pub groups: usize,
}

impl Conv2d {
    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.shape()[0]
    }
    /// Kernel size `[kh, kw]`.
    pub fn kernel(&self) -> [usize; 2] {
        [self.weight.shape()[2], self.weight.shape()[3]]
    }
}

/// A fully connected layer `y = W·x + b`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dense {
    /// Weights `[out][in]`.
    pub weight: Tensor,
    /// Bias per output.
    pub bias: Vec<f64>,
}

/// Pooling window.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pool {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub padding: [usize; 4],
}

/// Batch normalization (inference form).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchNorm {
    /// γ per channel.
    pub scale: Vec<f64>,
    /// β per channel.
    pub bias: Vec<f64>,
    /// Running mean.
    pub mean: Vec<f64>,
    /// Running variance.
    pub var: Vec<f64>,
    /// ε.
    pub epsilon: f64,
}

/// An operator.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Op {
    /// The model input.
    Input,
    /// Convolution.
    Conv2d(Conv2d),
    /// Fully connected layer (flattens its input).
    Dense(Dense),
    /// Average pooling (zero padding counted in the divisor, ONNX `count_include_pad = 1`
    /// semantics are not supported: padding must be zero).
    AvgPool(Pool),
    /// Global average pooling to `C×1×1`.
    GlobalAvgPool,
    /// Batch normalization.
    BatchNorm(BatchNorm),
    /// Per-channel (or per-feature, for vectors) `x·scale + shift`.
    ChannelAffine {
        /// Multiplier per channel.
        scale: Vec<f64>,
        /// Offset per channel.
        shift: Vec<f64>,
    },
    /// Flatten to a vector.
    Flatten,
    /// Element-wise sum of two inputs (residual connections).
    Add,
    /// Element-wise polynomial `Σ c_i x^i` (the HE-friendly activation).
    Poly(Vec<f64>),
    /// ReLU: not evaluable under HE; must be rewritten to a polynomial.
    Relu,
    /// Max pooling: not evaluable under HE; must be rewritten (e.g. to average pooling).
    MaxPool(Pool),
    /// Per-channel (or per-feature, for vectors) polynomial: channel `k` computes
    /// `Σ_i coeffs[k][i]·x^i`. AESPA (HerPN) activations fold to one of degree 2 per channel.
    ChannelPoly(Vec<Vec<f64>>),
}

impl Op {
    /// Short name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "Input",
            Op::Conv2d(_) => "Conv2d",
            Op::Dense(_) => "Dense",
            Op::AvgPool(_) => "AvgPool",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::BatchNorm(_) => "BatchNorm",
            Op::ChannelAffine { .. } => "ChannelAffine",
            Op::Flatten => "Flatten",
            Op::Add => "Add",
            Op::Poly(_) => "Poly",
            Op::Relu => "Relu",
            Op::MaxPool(_) => "MaxPool",
            Op::ChannelPoly(_) => "ChannelPoly",
        }
    }
}

/// A node: an operator applied to the outputs of earlier nodes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// Name (from the source model) for messages.
    pub name: String,
    /// The operator.
    pub op: Op,
    /// Input nodes (earlier in the list).
    pub inputs: Vec<NodeId>,
}

/// A model: nodes in topological order; node 0 is the input.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Model {
    /// Model name.
    pub name: String,
    /// Input shape `[C, H, W]`.
    pub input_shape: [usize; 3],
    /// Nodes, topologically ordered.
    pub nodes: Vec<Node>,
    /// The output node.
    pub output: NodeId,
}

impl Op {
    /// Every number the operator holds (weights, biases, statistics, coefficients).
    fn numbers(&self) -> Vec<&[f64]> {
        match self {
            Self::Conv2d(c) => vec![c.weight.data(), &c.bias],
            Self::Dense(d) => vec![d.weight.data(), &d.bias],
            Self::BatchNorm(b) => vec![
                &b.scale,
                &b.bias,
                &b.mean,
                &b.var,
                std::slice::from_ref(&b.epsilon),
            ],
            Self::ChannelAffine { scale, shift } => vec![scale, shift],
            Self::Poly(c) => vec![c],
            Self::ChannelPoly(cs) => cs.iter().map(Vec::as_slice).collect(),
            Self::Input
            | Self::AvgPool(_)
            | Self::GlobalAvgPool
            | Self::Flatten
            | Self::Add
            | Self::Relu
            | Self::MaxPool(_) => vec![],
        }
    }
}

/// Most values a model's input may have (2^24: ImageNet's 3 × 224 × 224 is 150,528).
pub const MAX_INPUT_VALUES: usize = 1 << 24;

impl Model {
    /// Refuses a model holding a NaN or infinite number: it would compile, encrypt and
    /// run, and every prediction would be garbage.
    ///
    /// # Errors
    /// [`NnError::Graph`] naming the first such node.
    pub fn check_finite(&self) -> Result<(), NnError> {
        for node in &self.nodes {
            let numbers = node.op.numbers();
            if let Some(v) = numbers
                .iter()
                .flat_map(|s| s.iter())
                .find(|v| !v.is_finite())
            {
                return Err(NnError::Graph {
                    node: node.name.clone(),
                    detail: format!("{} holds a non-finite number ({v})", node.op.kind()),
                });
            }
        }
        Ok(())
    }

    /// The nodes that read each node's value (each reader once).
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut c = vec![Vec::new(); self.nodes.len()];
        for (k, node) in self.nodes.iter().enumerate() {
            for &i in &node.inputs {
                if let Some(readers) = c.get_mut(i)
                    && !readers.contains(&k)
                {
                    readers.push(k);
                }
            }
        }
        c
    }

    /// The last node that reads each node's value (`usize::MAX` for the output, which
    /// outlives the evaluation; 0 for a value nobody reads).
    pub fn last_uses(&self) -> Vec<usize> {
        let mut last = vec![0usize; self.nodes.len()];
        for (id, node) in self.nodes.iter().enumerate() {
            for &i in &node.inputs {
                if let Some(l) = last.get_mut(i) {
                    *l = id;
                }
            }
        }
        if let Some(l) = last.get_mut(self.output) {
            *l = usize::MAX;
        }
        last
    }

    /// Checks structure (topological order, arities) and returns every node's output shape.
    ///
    /// # Errors
    /// [`NnError::Shape`], [`NnError::NodeShape`] or [`NnError::Graph`] describing the first
    /// inconsistency.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>, NnError> {
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(self.nodes.len());
        for (id, node) in self.nodes.iter().enumerate() {
            if node.inputs.iter().any(|&i| i >= id) {
                return Err(NnError::Graph {
                    node: node.name.clone(),
                    detail: "uses a later node as input".into(),
                });
            }
            let arity = match node.op {
                Op::Input => 0,
                Op::Add => 2,
                _ => 1,
            };
            if node.inputs.len() != arity {
                return Err(NnError::Graph {
                    node: node.name.clone(),
                    detail: format!(
                        "{} has {} inputs, expected {arity}",
                        node.op.kind(),
                        node.inputs.len()
                    ),
                });
            }
            let input = |k: usize| shapes[node.inputs[k]].clone();
            let misfit = |detail: String| NnError::NodeShape {
                node: node.name.clone(),
                op: node.op.kind(),
                input: node
                    .inputs
                    .first()
                    .and_then(|&i| shapes.get(i))
                    .cloned()
                    .unwrap_or_default(),
                detail,
            };
            let shape = match &node.op {
                Op::Input => {
                    // Every later shape derives from this one: bounded here, the sizes the
                    // nodes compute cannot overflow (a model read from a file is untrusted).
                    let values = self
                        .input_shape
                        .iter()
                        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                        .filter(|&v| v > 0 && v <= MAX_INPUT_VALUES);
                    if values.is_none() {
                        return Err(misfit(format!(
                            "input shape {:?}: 1 to {MAX_INPUT_VALUES} values",
                            self.input_shape
                        )));
                    }
                    self.input_shape.to_vec()
                }
                Op::Conv2d(c) => {
                    let s = chw(&input(0), &node.name)?;
                    let w = c.weight.shape();
                    if w.len() != 4
                        || c.groups == 0
                        || s[0] != w[1] * c.groups
                        || w[0] % c.groups != 0
                    {
                        return Err(misfit(format!(
                            "weight {w:?} with {} groups does not fit",
                            c.groups
                        )));
                    }
                    if c.bias.len() != w[0] {
                        return Err(misfit(format!(
                            "{} biases for {} filters",
                            c.bias.len(),
                            w[0]
                        )));
                    }
                    let [oh, ow] = window_out(&s, [w[2], w[3]], c.stride, c.padding, &node.name)?;
                    vec![w[0], oh, ow]
                }
                Op::Dense(d) => {
                    let n: usize = input(0).iter().product();
                    let w = d.weight.shape();
                    if w.len() != 2 || w[1] != n || d.bias.len() != w[0] {
                        return Err(misfit(format!(
                            "weight {w:?} and {} biases do not fit {n} inputs",
                            d.bias.len()
                        )));
                    }
                    vec![w[0]]
                }
                Op::AvgPool(p) | Op::MaxPool(p) => {
                    let s = chw(&input(0), &node.name)?;
                    let [oh, ow] = window_out(&s, p.kernel, p.stride, p.padding, &node.name)?;
                    vec![s[0], oh, ow]
                }
                Op::GlobalAvgPool => vec![chw(&input(0), &node.name)?[0], 1, 1],
                Op::BatchNorm(b) => {
                    let s = input(0);
                    let c = s.first().copied().unwrap_or(0);
                    if [&b.scale, &b.bias, &b.mean, &b.var]
                        .iter()
                        .any(|v| v.len() != c)
                    {
                        return Err(misfit(format!("statistics of other than {c} channels")));
                    }
                    s
                }
                Op::ChannelAffine { scale, shift } => {
                    let s = input(0);
                    let c = s.first().copied().unwrap_or(0);
                    if scale.len() != c || shift.len() != c {
                        return Err(misfit(format!(
                            "{} / {} values for {c} channels",
                            scale.len(),
                            shift.len()
                        )));
                    }
                    s
                }
                Op::Flatten => vec![
                    input(0)
                        .iter()
                        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                        .ok_or_else(|| misfit("more values than an index holds".into()))?,
                ],
                Op::Add => {
                    let (a, b) = (input(0), input(1));
                    if a != b {
                        return Err(misfit(format!("the second input has shape {b:?}")));
                    }
                    a
                }
                Op::ChannelPoly(coeffs) => {
                    let s = input(0);
                    let c = s.first().copied().unwrap_or(0);
                    if coeffs.len() != c {
                        return Err(misfit(format!(
                            "{} coefficient lists for {c} channels",
                            coeffs.len()
                        )));
                    }
                    s
                }
                Op::Poly(_) | Op::Relu => input(0),
            };
            shapes.push(shape);
        }
        if self.output >= self.nodes.len() {
            return Err(NnError::Graph {
                node: format!("#{}", self.output),
                detail: format!("the output is not one of the {} nodes", self.nodes.len()),
            });
        }
        Ok(shapes)
    }

    /// Nodes that cannot be evaluated homomorphically as they are (ReLU, MaxPool).
    pub fn non_polynomial_nodes(&self) -> Vec<(&str, &'static str)> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Relu | Op::MaxPool(_)))
            .map(|n| (n.name.as_str(), n.op.kind()))
            .collect()
    }
}

fn chw(s: &[usize], name: &str) -> Result<[usize; 3], NnError> {
    match *s {
        [c, h, w] => Ok([c, h, w]),
        _ => Err(NnError::Shape(format!(
            "'{name}' expects a C×H×W input, got {s:?}"
        ))),
    }
}

fn window_out(
    s: &[usize; 3],
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
    name: &str,
) -> Result<[usize; 2], NnError> {
    let (h, w) = (s[1] + pad[0] + pad[2], s[2] + pad[1] + pad[3]);
    if stride.contains(&0) || k[0] == 0 || k[1] == 0 || k[0] > h || k[1] > w {
        return Err(NnError::Shape(format!(
            "'{name}': window {k:?} stride {stride:?} does not fit {s:?} with padding {pad:?}"
        )));
    }
    Ok([(h - k[0]) / stride[0] + 1, (w - k[1]) / stride[1] + 1])
}
