//! Integer networks: a model quantized to integer weights and integer inputs, evaluated
//! exactly (the reference that BFV's decrypted results must equal bit for bit).
//!
//! [`QuantModel::quantize`] turns a rewritten model whose activations are squares (HCNN's
//! networks) into a chain of integer layers. Every neuron carries its own scale `s`
//! (`real ≈ integer / s`), so nothing is ever divided:
//!
//! - the input: `x_int = clamp(round(x·s_in))` with `s_in` from [`QuantSpec::input_bits`]
//!   and the input range;
//! - a linear layer (convolution, dense, pooling, batch norm, affine): output `j` computes
//!   `Σ_i round(v_ji·s_j)·x_i + round(b_j·s_j)` with the effective weights `v_ji = w_ji/s_i`
//!   and `s_j` chosen so that the largest `|v_ji|·s_j` is `2^(weight_bits−1) − 1` (per
//!   output neuron, which is finer than per channel); a row whose effective weights are all
//!   equal in magnitude (average pooling) keeps them exact as `±1`;
//! - a square `a·x²`: `x_int²`, at scale `s²/a`; a constant `c` (`a·x² + c`) is rounded
//!   once per neuron at that scale and folded into the next linear layer's biases through
//!   its integer weights, so that the quantized weights cancel it exactly.
//!
//! The executor ([`QuantModel::run`]) computes in `i128` with every operation checked.
//! [`QuantModel::bounds`] propagates worst-case intervals from the input range to every
//! layer: what a plaintext modulus must hold. Since every layer is a ring operation, values
//! computed modulo `t` are the integers' residues throughout, so only the **output** must
//! fit in `(−t/2, t/2)` for decryption to recover it exactly; intermediate values may wrap.

mod exec;

pub use exec::{Bounds, LayerBound};

use crate::{Model, NnError, Op, Tensor, linear};

/// How to quantize a model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantSpec {
    /// Bits of the quantized input (unsigned for a non-negative range, else signed).
    pub input_bits: u32,
    /// Bits of every weight (signed: weights in `±(2^(weight_bits−1) − 1)`).
    pub weight_bits: u32,
    /// The range of the real input values (pixels in `[0, 1]` by default); values outside it
    /// are clamped.
    pub input_range: (f64, f64),
}

impl Default for QuantSpec {
    /// 4-bit inputs and 6-bit weights over pixels in `[0, 1]`: HCNN's MNIST network loses no
    /// accuracy quantized after training at this precision. HCNN's own 4-bit weights need
    /// quantization-aware training (`training/qat_mnist.py`) to keep it.
    fn default() -> Self {
        Self {
            input_bits: 4,
            weight_bits: 6,
            input_range: (0.0, 1.0),
        }
    }
}

/// Most bits of an input or weight (the executor's `i128` must hold products of them).
pub const MAX_QUANT_BITS: u32 = 16;

impl QuantSpec {
    fn check(&self) -> Result<(), NnError> {
        let (lo, hi) = self.input_range;
        let bad = |what: &str, why: String| NnError::Quantization {
            what: what.into(),
            why,
        };
        if !(1..=MAX_QUANT_BITS).contains(&self.input_bits) {
            return Err(bad(
                "input bits",
                format!("must be 1 to {MAX_QUANT_BITS}, not {}", self.input_bits),
            ));
        }
        if !(2..=MAX_QUANT_BITS).contains(&self.weight_bits) {
            return Err(bad(
                "weight bits",
                format!("must be 2 to {MAX_QUANT_BITS}, not {}", self.weight_bits),
            ));
        }
        if !(lo.is_finite() && hi.is_finite() && lo < hi && hi > 0.0) {
            return Err(bad(
                "input range",
                format!("[{lo}, {hi}] must be finite, non-empty and reach above 0"),
            ));
        }
        if self.input_bits == 1 && lo < 0.0 {
            return Err(bad("input bits", "a signed input needs at least 2".into()));
        }
        Ok(())
    }
}

/// One output of an integer linear layer: `Σ w·x[i] + bias`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantRow {
    /// `(input index, weight)` pairs.
    pub terms: Vec<(u32, i64)>,
    /// The bias, at the output's scale.
    pub bias: i128,
}

/// A layer of an integer network.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum QuantLayer {
    /// An integer-weighted linear layer (one row per output neuron).
    Linear {
        /// The source node(s), for messages.
        node: String,
        /// The rows.
        rows: Vec<QuantRow>,
    },
    /// Every neuron squared.
    Square {
        /// The source node, for messages.
        node: String,
    },
}

impl QuantLayer {
    /// The source node's name.
    pub fn node(&self) -> &str {
        match self {
            QuantLayer::Linear { node, .. } | QuantLayer::Square { node } => node,
        }
    }
}

/// The input's quantization: `x_int = clamp(round(x·scale), lo, hi)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputQuant {
    /// Integers per unit.
    pub scale: f64,
    /// Smallest integer.
    pub lo: i64,
    /// Largest integer.
    pub hi: i64,
}

/// A quantized network: integer layers, the input's quantization and the output's scales.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantModel {
    name: String,
    input_shape: [usize; 3],
    spec: QuantSpec,
    input: InputQuant,
    layers: Vec<QuantLayer>,
    /// `real ≈ integer / scale` per output.
    output_scales: Vec<f64>,
}

/// Largest magnitude of a quantized bias (the executor must hold sums of them).
const MAX_BIAS: f64 = 1e30;

impl QuantModel {
    /// Quantizes a rewritten model (see [`crate::rewrite`]) whose nodes form a chain from
    /// the input of linear layers, flattens and `a·x²` activations.
    ///
    /// # Errors
    /// [`NnError::Quantization`] for a bad spec or a value that does not quantize;
    /// [`NnError::NotSupported`] naming the first node integer mode cannot run (another
    /// polynomial, ReLU, max pooling, a residual addition); shape errors.
    pub fn quantize(model: &Model, spec: &QuantSpec) -> Result<Self, NnError> {
        spec.check()?;
        model.check_finite()?;
        let shapes = model.shapes()?;
        let path = chain(model)?;
        let (lo, hi) = spec.input_range;
        let input = if lo >= 0.0 {
            let top = (1i64 << spec.input_bits) - 1;
            InputQuant {
                scale: top as f64 / hi,
                lo: 0,
                hi: top,
            }
        } else {
            let top = (1i64 << (spec.input_bits - 1)) - 1;
            InputQuant {
                scale: top as f64 / lo.abs().max(hi),
                lo: -top,
                hi: top,
            }
        };
        let qmax = ((1i64 << (spec.weight_bits - 1)) - 1) as f64;
        let mut scales = vec![input.scale; shapes[0].iter().product()];
        let mut layers = Vec::new();
        // Per-neuron integer constants of a square `a·x² + c0` awaiting the next linear
        // layer.
        let mut pending: Option<Vec<i128>> = None;
        for &id in &path[1..] {
            let node = &model.nodes[id];
            let unsupported = |why: &str| NnError::NotSupported {
                node: node.name.clone(),
                op: node.op.kind(),
                packing: "integer (BFV)",
                why: why.into(),
            };
            match &node.op {
                Op::Flatten => {}
                Op::Poly(c) => {
                    let (a, c0) = square_terms(c).ok_or_else(|| unsupported(SQUARES_ONLY))?;
                    if pending.is_some() {
                        return Err(unsupported(CONSTANT_THEN_LINEAR));
                    }
                    scales.iter_mut().for_each(|s| *s = *s * *s / a);
                    layers.push(QuantLayer::Square {
                        node: node.name.clone(),
                    });
                    if c0 != 0.0 {
                        // `a·x² + c0` at scale `s²/a`: the constant, rounded once per
                        // neuron, is folded into the next layer's biases through its
                        // integer weights (exact: the quantized weights cancel it).
                        pending = Some(
                            scales
                                .iter()
                                .map(|&s| {
                                    let v = (c0 * s).round();
                                    if v.is_finite() && v.abs() <= MAX_BIAS {
                                        Ok(v as i128)
                                    } else {
                                        Err(NnError::Quantization {
                                            what: format!("the constant of '{}'", node.name),
                                            why: format!("{c0} at scale {s:e} does not fit"),
                                        })
                                    }
                                })
                                .collect::<Result<Vec<_>, _>>()?,
                        );
                    }
                }
                Op::ChannelPoly(per) if pending.is_some() => {
                    return Err(unsupported(CONSTANT_THEN_LINEAR));
                }
                Op::ChannelPoly(per) => {
                    let a: Vec<f64> = per
                        .iter()
                        .map(|c| square_coefficient(c))
                        .collect::<Option<_>>()
                        .ok_or_else(|| unsupported(SQUARES_ONLY))?;
                    let per_channel = scales.len() / a.len().max(1);
                    if per_channel * a.len() != scales.len() {
                        return Err(NnError::Internal(format!(
                            "'{}': {} channels for {} values",
                            node.name,
                            a.len(),
                            scales.len()
                        )));
                    }
                    for (i, s) in scales.iter_mut().enumerate() {
                        *s = *s * *s / a[i / per_channel];
                    }
                    layers.push(QuantLayer::Square {
                        node: node.name.clone(),
                    });
                }
                op => {
                    let Some(rows) = linear::rows(op, &shapes[node.inputs[0]], &shapes[id])? else {
                        return Err(unsupported(
                            "integer mode runs linear layers, flattens and x² activations \
                             in a chain (no ReLU, max pooling or residual additions)",
                        ));
                    };
                    let (mut rows, out_scales) = quantize_rows(&node.name, &rows, &scales, qmax)?;
                    if let Some(constants) = pending.take() {
                        fold_constants(&node.name, &mut rows, &constants)?;
                    }
                    layers.push(QuantLayer::Linear {
                        node: node.name.clone(),
                        rows,
                    });
                    scales = out_scales;
                }
            }
        }
        if pending.is_some() {
            return Err(NnError::NotSupported {
                node: model.nodes[model.output].name.clone(),
                op: model.nodes[model.output].op.kind(),
                packing: "integer (BFV)",
                why: CONSTANT_THEN_LINEAR.into(),
            });
        }
        let [c, h, w] = model.input_shape;
        Ok(Self {
            name: model.name.clone(),
            input_shape: [c, h, w],
            spec: spec.clone(),
            input,
            layers,
            output_scales: scales,
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The input shape `C×H×W`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }
    /// The spec it was quantized with.
    pub fn spec(&self) -> &QuantSpec {
        &self.spec
    }
    /// The input's quantization.
    pub fn input(&self) -> InputQuant {
        self.input
    }
    /// The integer layers.
    pub fn layers(&self) -> &[QuantLayer] {
        &self.layers
    }
    /// Number of input values.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }
    /// Number of outputs.
    pub fn output_len(&self) -> usize {
        self.output_scales.len()
    }
    /// Squares in the network (its multiplicative depth).
    pub fn depth(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| matches!(l, QuantLayer::Square { .. }))
            .count()
    }

    /// Quantizes one input image.
    ///
    /// # Errors
    /// [`NnError::Shape`] if `x` is not of the model's input shape.
    pub fn quantize_input(&self, x: &Tensor) -> Result<Vec<i64>, NnError> {
        if x.shape() != self.input_shape {
            return Err(NnError::Shape(format!(
                "the input is {:?}, the model takes {:?}",
                x.shape(),
                self.input_shape
            )));
        }
        let q = self.input;
        Ok(x.data()
            .iter()
            .map(|&v| {
                let r = (v * q.scale).round();
                // NaN maps to 0; the clamp bounds everything else.
                if r.is_nan() {
                    0
                } else {
                    (r as i64).clamp(q.lo, q.hi)
                }
            })
            .collect())
    }

    /// Checks what a deserialized model must satisfy before anything runs it or sizes a
    /// buffer by it: an input range within [`MAX_QUANT_BITS`], an input of at most
    /// `max_values` values, at most `max_layers` layers and `max_terms` weights, every row
    /// reading an input that exists, and finite, non-negative output scales, one per output.
    ///
    /// # Errors
    /// What is wrong, in words (the caller wraps it in its format's error).
    pub fn check_structure(
        &self,
        max_values: usize,
        max_layers: usize,
        max_terms: usize,
    ) -> Result<(), String> {
        let input = self.input;
        let limit = 1u64 << MAX_QUANT_BITS;
        if input.lo > input.hi
            || input.lo.unsigned_abs() > limit
            || input.hi.unsigned_abs() > limit
            || !(input.scale.is_finite() && input.scale > 0.0)
        {
            return Err(format!("input range [{}, {}]", input.lo, input.hi));
        }
        if self.layers.len() > max_layers {
            return Err(format!(
                "{} layers (at most {max_layers})",
                self.layers.len()
            ));
        }
        let terms: usize = self
            .layers
            .iter()
            .map(|l| match l {
                QuantLayer::Linear { rows, .. } => rows.iter().map(|r| r.terms.len() + 1).sum(),
                QuantLayer::Square { .. } => 0,
            })
            .fold(0usize, usize::saturating_add);
        if terms > max_terms {
            return Err(format!("{terms} weights (at most {max_terms})"));
        }
        let [c, h, w] = self.input_shape;
        let mut width = c
            .checked_mul(h)
            .and_then(|v| v.checked_mul(w))
            .filter(|&v| (1..=max_values).contains(&v))
            .ok_or_else(|| format!("input shape {:?}", [c, h, w]))?;
        for layer in &self.layers {
            if let QuantLayer::Linear { rows, node } = layer {
                if let Some(r) = rows
                    .iter()
                    .find(|r| r.terms.iter().any(|&(j, _)| j as usize >= width))
                {
                    return Err(format!(
                        "layer '{node}' reads input {} of {width}",
                        r.terms.iter().map(|&(j, _)| j).max().unwrap_or(0)
                    ));
                }
                if rows.is_empty() || rows.len() > max_values {
                    return Err(format!("layer '{node}' has {} outputs", rows.len()));
                }
                width = rows.len();
            }
        }
        if width != self.output_scales.len()
            || self
                .output_scales
                .iter()
                .any(|s| !(s.is_finite() && *s >= 0.0))
        {
            return Err("output scales do not match the last layer".into());
        }
        Ok(())
    }

    /// The real values that integer outputs stand for (`y / s` per output).
    pub fn dequantize(&self, y: &[i128]) -> Vec<f64> {
        y.iter()
            .zip(&self.output_scales)
            .map(|(&v, &s)| v as f64 / s)
            .collect()
    }
}

const SQUARES_ONLY: &str = "integer mode runs a·x² (+ c) activations only (HCNN's square); \
                            retrain with x², or run the model in CKKS";

const CONSTANT_THEN_LINEAR: &str = "the constant of an a·x² + c activation is folded into \
                                    the next linear layer, and none follows it";

/// `(a, c0)` if the polynomial is `a·x² + c0` with `a ≠ 0` (no linear term).
fn square_terms(c: &[f64]) -> Option<(f64, f64)> {
    let c0 = c.first().copied().unwrap_or(0.0);
    let a = square_coefficient(&[&[0.0], c.get(1..).unwrap_or(&[])].concat())?;
    c0.is_finite().then_some((a, c0))
}

/// Adds `Σ_i w_i·constants[i]` to every row's bias (a constant input folded exactly).
fn fold_constants(node: &str, rows: &mut [QuantRow], constants: &[i128]) -> Result<(), NnError> {
    let overflow = || NnError::Quantization {
        what: format!("the biases of '{node}'"),
        why: "the folded constant of the activation before it overflows".into(),
    };
    for row in rows {
        for &(i, w) in &row.terms {
            let k = *constants
                .get(i as usize)
                .ok_or_else(|| NnError::Internal(format!("'{node}': input {i} out of range")))?;
            row.bias = k
                .checked_mul(i128::from(w))
                .and_then(|v| row.bias.checked_add(v))
                .ok_or_else(overflow)?;
        }
    }
    Ok(())
}

/// `a` if the polynomial is `a·x²` with `a ≠ 0`.
fn square_coefficient(c: &[f64]) -> Option<f64> {
    let a = *c.get(2)?;
    let rest_zero = c[..2].iter().chain(&c[3..]).all(|&v| v == 0.0);
    (rest_zero && a != 0.0 && a.is_finite()).then_some(a)
}

/// The nodes from the input to the output, if they form a chain of single-input nodes.
fn chain(model: &Model) -> Result<Vec<usize>, NnError> {
    let mut path = vec![model.output];
    let mut id = model.output;
    while !matches!(model.nodes[id].op, Op::Input) {
        let node = &model.nodes[id];
        let [input] = node.inputs[..] else {
            return Err(NnError::NotSupported {
                node: node.name.clone(),
                op: node.op.kind(),
                packing: "integer (BFV)",
                why: "integer mode runs chains of single-input layers (no residual additions)"
                    .into(),
            });
        };
        path.push(input);
        id = input;
    }
    path.reverse();
    Ok(path)
}

/// Quantizes a linear layer's rows for inputs at `scales`; returns the rows and the
/// outputs' scales.
fn quantize_rows(
    node: &str,
    rows: &[linear::Row],
    scales: &[f64],
    qmax: f64,
) -> Result<(Vec<QuantRow>, Vec<f64>), NnError> {
    let mut out = Vec::with_capacity(rows.len());
    let mut out_scales = Vec::with_capacity(rows.len());
    let mut empty = Vec::new();
    for (j, row) in rows.iter().enumerate() {
        let eff: Vec<(usize, f64)> =
            row.terms
                .iter()
                .map(|&(i, w)| {
                    scales.get(i).map(|&s| (i, w / s)).ok_or_else(|| {
                        NnError::Internal(format!("'{node}': input {i} out of range"))
                    })
                })
                .collect::<Result<_, _>>()?;
        let top = eff.iter().map(|&(_, v)| v.abs()).fold(0.0f64, f64::max);
        if top == 0.0 {
            empty.push(j);
            out.push(QuantRow {
                terms: Vec::new(),
                bias: 0,
            });
            out_scales.push(0.0);
            continue;
        }
        let uniform = eff
            .iter()
            .all(|&(_, v)| (v.abs() - top).abs() <= top * 1e-12);
        let s = if uniform { 1.0 / top } else { qmax / top };
        let terms = eff
            .iter()
            .filter_map(|&(i, v)| {
                let w = (v * s).round() as i64;
                (w != 0).then_some((i as u32, w))
            })
            .collect();
        out.push(QuantRow {
            terms,
            bias: quantize_bias(node, row.bias, s)?,
        });
        out_scales.push(s);
    }
    // Rows without inputs (a constant): the largest scale of the layer keeps their bias's
    // precision.
    let fill = out_scales.iter().copied().fold(0.0f64, f64::max);
    let fill = if fill > 0.0 { fill } else { qmax };
    for j in empty {
        out_scales[j] = fill;
        out[j].bias = quantize_bias(node, rows[j].bias, fill)?;
    }
    Ok((out, out_scales))
}

fn quantize_bias(node: &str, b: f64, s: f64) -> Result<i128, NnError> {
    let v = (b * s).round();
    if !v.is_finite() || v.abs() > MAX_BIAS {
        return Err(NnError::Quantization {
            what: format!("bias of '{node}'"),
            why: format!("{b:e} at scale {s:e} does not fit the integer executor"),
        });
    }
    Ok(v as i128)
}
