//! Single-image packing: one image's activations fill the slots of one ciphertext, so one
//! encrypted image is classified at once (batch mode needs thousands to pay off).
//!
//! Every value is a vector of at most `slots` neurons (`C×H×W` order, the rest of the slots
//! unused). A linear layer (convolution with any stride and padding, average pooling, dense)
//! is the matrix of its rows, evaluated by the diagonal method with baby-step giant-step
//! rotations ([`hecnn_ckks::LinearTransform`], hoisted baby steps, one rescale); its
//! diagonals only reference real neurons, so whatever the unused slots hold never reaches a
//! result. Activations `a·x² + b·x + c` are one slot-wise square: as in batch mode, the
//! value carries a pending affine map `true = a·ct + γ` that the next layer folds into its
//! weights and bias.
//!
//! The rotation keys the plan needs are known before key generation
//! ([`SinglePlan::rotations`]). Multiplexed layouts that cut the number of diagonals of
//! strided convolutions, residual additions, and values larger than one ciphertext are not
//! implemented yet.

use std::collections::{BTreeMap, BTreeSet};

use hecnn_ckks::{Ciphertext, CkksError, Complex64, Evaluator, LinearTransform, Plaintext};
use hecnn_ring::Backend;

use crate::{
    Model, NnError, Op,
    batch::OutputMap,
    linear::Row,
    pending::{Activation, activation},
};

/// What a node does in single-image mode.
#[derive(Clone, Debug)]
enum Step {
    /// Input or reshape: the slots are unchanged.
    Pass,
    /// A linear layer: its rows over the input neurons.
    Linear(Vec<Row>),
    /// A polynomial activation of degree ≤ 2 (coefficients, constant first).
    Poly(Vec<f64>),
}

/// A checked single-image plan for a rewritten model.
#[derive(Clone, Debug)]
pub struct SinglePlan {
    model: Model,
    steps: Vec<Step>,
    /// Neurons of every node's value.
    lengths: Vec<usize>,
    /// The last node that reads each node's value.
    last_use: Vec<usize>,
    slots: usize,
}

/// The diagonal holding entry `(o, j)` of a matrix in a `slots`-cyclic layout.
fn diagonal_index(o: usize, j: usize, slots: usize) -> i64 {
    ((j + slots - o % slots) % slots) as i64
}

/// Diagonals of a linear layer's matrix in a `slots`-cyclic layout:
/// `d_k[o] = M[o][(o + k) mod slots]`, weights scaled by `a` (the input's pending multiplier).
fn diagonals(rows: &[Row], slots: usize, a: f64) -> BTreeMap<i64, Vec<f64>> {
    let mut out: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (o, row) in rows.iter().enumerate() {
        for &(j, w) in &row.terms {
            out.entry(diagonal_index(o, j, slots))
                .or_insert_with(|| vec![0.0; slots])[o] += w * a;
        }
    }
    out.retain(|_, d| d.iter().any(|&v| v != 0.0));
    out
}

/// Indices of the non-zero diagonals (without building them).
fn diagonal_indices(rows: &[Row], slots: usize) -> BTreeSet<i64> {
    rows.iter()
        .enumerate()
        .flat_map(|(o, row)| {
            row.terms
                .iter()
                .filter(|&&(_, w)| w != 0.0)
                .map(move |&(j, _)| diagonal_index(o, j, slots))
        })
        .collect()
}

impl SinglePlan {
    /// Plans a model that has been through [`crate::rewrite()`].
    ///
    /// # Errors
    /// [`NnError::Invalid`] for operators single-image mode cannot run yet (residual
    /// additions, activations of degree above 2, non-polynomial operators).
    pub fn new(model: &Model) -> Result<Self, NnError> {
        let shapes = model.shapes()?;
        let lengths: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        let mut steps = Vec::with_capacity(model.nodes.len());
        for (id, node) in model.nodes.iter().enumerate() {
            let input = node.inputs.first().copied();
            let step = match (&node.op, input) {
                (Op::Input, _) | (Op::Flatten, Some(_)) => Step::Pass,
                (Op::Poly(c), Some(_)) => {
                    if c.len() > 3 && c[3..].iter().any(|&v| v != 0.0) {
                        return Err(NnError::Invalid(format!(
                            "activation '{}' has degree {}: single-image mode evaluates degree ≤ 2",
                            node.name,
                            c.len() - 1
                        )));
                    }
                    Step::Poly(c.clone())
                }
                (op, Some(i)) => match crate::linear::rows(op, &shapes[i], &shapes[id])? {
                    Some(rows) => Step::Linear(rows),
                    None => {
                        return Err(NnError::Invalid(format!(
                            "operator {} ('{}') cannot run in single-image mode yet",
                            op.kind(),
                            node.name
                        )));
                    }
                },
                (op, None) => {
                    return Err(NnError::Invalid(format!(
                        "operator {} ('{}') has no input",
                        op.kind(),
                        node.name
                    )));
                }
            };
            steps.push(step);
        }
        let slots = lengths
            .iter()
            .max()
            .copied()
            .unwrap_or(1)
            .next_power_of_two();
        let last_use = model.last_uses();
        Ok(Self {
            model: model.clone(),
            steps,
            lengths,
            last_use,
            slots,
        })
    }

    /// Slots every value occupies (a power of two ≥ the largest layer).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Levels the evaluation consumes: one per linear layer and per square.
    pub fn depth(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| match s {
                Step::Linear(_) => true,
                Step::Poly(c) => c.get(2).is_some_and(|&v| v != 0.0),
                Step::Pass => false,
            })
            .count()
    }

    /// The planned model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Number of input neurons (`C·H·W`).
    pub fn inputs(&self) -> usize {
        self.lengths.first().copied().unwrap_or(0)
    }

    /// The pending affine map `(a, γ)` of every node's value, in order.
    fn pending(&self) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = Vec::with_capacity(self.steps.len());
        for (id, step) in self.steps.iter().enumerate() {
            let input = self.model.nodes[id]
                .inputs
                .first()
                .map_or((1.0, 0.0), |&i| out[i]);
            out.push(match step {
                Step::Pass => input,
                Step::Linear(_) => (1.0, 0.0),
                Step::Poly(c) => match activation(c, input.0, input.1) {
                    Activation::Affine { a, gamma } | Activation::Square { a, gamma, .. } => {
                        (a, gamma)
                    }
                    Activation::OfConstant => (0.0, 0.0),
                },
            });
        }
        out
    }

    /// Non-zero diagonal indices of every linear layer (for the rotation keys and the
    /// report; a diagonal is non-zero whatever the input's pending multiplier, which is
    /// never 0 for an evaluable plan).
    fn layer_indices(&self) -> impl Iterator<Item = (usize, BTreeSet<i64>)> + '_ {
        self.steps
            .iter()
            .enumerate()
            .filter_map(|(id, step)| match step {
                Step::Linear(rows) => Some((id, diagonal_indices(rows, self.slots))),
                _ => None,
            })
    }

    /// The rotation steps evaluation needs (request them at key generation).
    pub fn rotations(&self) -> BTreeSet<i64> {
        self.layer_indices()
            .flat_map(|(_, idx)| hecnn_ckks::bsgs_rotations(&idx, self.slots))
            .collect()
    }

    /// Number of non-zero diagonals (plaintext products) of every linear layer.
    pub fn diagonal_counts(&self) -> Vec<(String, usize)> {
        self.layer_indices()
            .map(|(id, idx)| (self.model.nodes[id].name.clone(), idx.len()))
            .collect()
    }

    /// Encodes the plan's transforms for inputs at `top_level` (done once per model and
    /// key set; reused for every image).
    ///
    /// # Errors
    /// Too few levels, more slots than the parameters have, encoding errors.
    pub fn encode<B: Backend>(
        &self,
        eval: &Evaluator<B>,
        top_level: usize,
    ) -> Result<EncodedSingle<B>, NnError> {
        let max = eval.params().max_slots();
        if self.slots > max {
            return Err(NnError::Invalid(format!(
                "a layer of {} neurons needs {} slots; these parameters have {max} (use a larger ring degree)",
                self.lengths.iter().max().copied().unwrap_or(0),
                self.slots
            )));
        }
        if top_level < self.depth() {
            return Err(NnError::Invalid(format!(
                "the inputs have {top_level} levels, the model needs {}",
                self.depth()
            )));
        }
        let pending = self.pending();
        let mut level = vec![top_level; self.steps.len()];
        let mut transforms = BTreeMap::new();
        for (id, step) in self.steps.iter().enumerate() {
            let err = |source| NnError::Encrypted {
                node: self.model.nodes[id].name.clone(),
                source,
            };
            let input_level = self.model.nodes[id]
                .inputs
                .first()
                .map_or(top_level, |&i| level[i]);
            level[id] = match step {
                Step::Pass => input_level,
                Step::Poly(c) if c.get(2).is_some_and(|&v| v != 0.0) => input_level - 1,
                Step::Poly(_) => input_level,
                Step::Linear(rows) => {
                    let (a, gamma) = self.model.nodes[id]
                        .inputs
                        .first()
                        .map_or((1.0, 0.0), |&i| pending[i]);
                    let complex: BTreeMap<i64, Vec<Complex64>> = diagonals(rows, self.slots, a)
                        .into_iter()
                        .map(|(k, d)| (k, d.into_iter().map(|v| Complex64::new(v, 0.0)).collect()))
                        .collect();
                    let lt = LinearTransform::new(eval, &complex, self.slots, input_level)
                        .map_err(err)?;
                    let mut bias = vec![0.0; self.slots];
                    for (o, row) in rows.iter().enumerate() {
                        bias[o] = row.bias + gamma * row.terms.iter().map(|&(_, w)| w).sum::<f64>();
                    }
                    transforms.insert(id, (lt, bias));
                    input_level - 1
                }
            };
        }
        Ok(EncodedSingle {
            transforms,
            top_level,
        })
    }

    /// Encrypts one image (`C×H×W` values) into the plan's slots at `level`.
    ///
    /// # Errors
    /// Wrong image size, encoding or encryption errors.
    pub fn encrypt_image<B: Backend>(
        &self,
        eval: &Evaluator<B>,
        image: &crate::Tensor,
        level: usize,
        encrypt: impl FnOnce(&Plaintext<B>) -> Result<Ciphertext<B>, CkksError>,
    ) -> Result<Ciphertext<B>, NnError> {
        if image.len() != self.inputs() {
            return Err(NnError::Shape(format!(
                "an image of {} values, the model takes {}",
                image.len(),
                self.inputs()
            )));
        }
        let mut values = image.data().to_vec();
        values.resize(self.slots, 0.0);
        let pt = eval
            .encode_real(&values, level, eval.params().default_scale(), self.slots)
            .map_err(|e| NnError::Invalid(format!("encoding the image: {e}")))?;
        encrypt(&pt).map_err(|e| NnError::Invalid(format!("encrypting the image: {e}")))
    }

    /// Evaluates the plan on one encrypted image; returns the output ciphertext and the map
    /// from its decoded slots to the logits.
    ///
    /// # Errors
    /// Level, slot or key errors (with the node name).
    pub fn run<B: Backend>(
        &self,
        eval: &Evaluator<B>,
        encoded: &EncodedSingle<B>,
        input: Ciphertext<B>,
    ) -> Result<(Ciphertext<B>, OutputMap), NnError> {
        if input.level() != encoded.top_level || input.slots() != self.slots {
            return Err(NnError::Invalid(format!(
                "the input is at level {} with {} slots; the plan was encoded for level {} and {} slots",
                input.level(),
                input.slots(),
                encoded.top_level,
                self.slots
            )));
        }
        let mut values: Vec<Option<(Ciphertext<B>, f64, f64)>> =
            (0..self.steps.len()).map(|_| None).collect();
        values[0] = Some((input, 1.0, 0.0));
        for (id, step) in self.steps.iter().enumerate().skip(1) {
            let node = &self.model.nodes[id];
            let err = |source| NnError::Encrypted {
                node: node.name.clone(),
                source,
            };
            let i = node
                .inputs
                .first()
                .copied()
                .ok_or_else(|| NnError::Invalid(format!("'{}' has no input", node.name)))?;
            let value = if self.last_use[i] == id {
                values[i].take()
            } else {
                values[i].clone()
            };
            let (ct, a, gamma) = value.ok_or_else(|| {
                NnError::Invalid(format!("no value for the input of '{}'", node.name))
            })?;
            values[id] = Some(match step {
                Step::Pass => (ct, a, gamma),
                Step::Linear(_) => {
                    let (lt, bias) = encoded.transforms.get(&id).ok_or_else(|| {
                        NnError::Invalid(format!("'{}' was not encoded", node.name))
                    })?;
                    let out = eval.linear_transform(&ct, lt).map_err(err)?;
                    let pt = eval
                        .encode_real(bias, out.level(), out.scale(), self.slots)
                        .map_err(err)?;
                    (eval.add_plain(&out, &pt).map_err(err)?, 1.0, 0.0)
                }
                Step::Poly(c) => match activation(c, a, gamma) {
                    Activation::Affine { a, gamma } => (ct, a, gamma),
                    Activation::OfConstant => {
                        return Err(NnError::Invalid(format!(
                            "'{}': activation of a constant value",
                            node.name
                        )));
                    }
                    Activation::Square { delta, a, gamma } => {
                        let u = if delta != 0.0 {
                            eval.add_const(&ct, delta).map_err(err)?
                        } else {
                            ct
                        };
                        let mut sq = eval.mul_relin(&u, &u).map_err(err)?;
                        eval.rescale_assign(&mut sq).map_err(err)?;
                        (sq, a, gamma)
                    }
                },
            });
        }
        let (ct, a, gamma) = values[self.model.output]
            .take()
            .ok_or_else(|| NnError::Invalid("no output".into()))?;
        Ok((ct, OutputMap { a, gamma }))
    }

    /// Decrypts the output into the logits.
    ///
    /// # Errors
    /// Decryption or decoding errors.
    pub fn decrypt_output<B: Backend>(
        &self,
        eval: &Evaluator<B>,
        out: &Ciphertext<B>,
        map: OutputMap,
        decrypt: impl FnOnce(&Ciphertext<B>) -> Result<Plaintext<B>, CkksError>,
    ) -> Result<Vec<f64>, NnError> {
        let pt = decrypt(out).map_err(|e| NnError::Invalid(format!("decrypting: {e}")))?;
        let slots = eval
            .encoder()
            .decode_real(eval.backend(), eval.params(), &pt)
            .map_err(|e| NnError::Invalid(format!("decoding: {e}")))?;
        let n = self.lengths.get(self.model.output).copied().unwrap_or(0);
        Ok(slots
            .iter()
            .take(n)
            .map(|&v| map.a * v + map.gamma)
            .collect())
    }
}

/// Bits of the working scale in single-image mode. Smaller than batch mode's 2^30 so that the
/// MNIST network's five levels fit N = 2^13 at 128-bit security: the evaluation noise stays
/// near 2^-14 of a unit value, far below the gaps between logits.
pub const SINGLE_LOG_SCALE: u32 = 26;

/// CKKS parameters for a single-image plan of `depth` levels at ring degree `2^log_n`: a
/// 40-bit base prime (values must stay below 2^13 in magnitude), `depth` primes near
/// 2^26, and one 42-bit special prime with one-prime digits (every prime is below it), so
/// the special modulus is as small as key switching allows.
pub fn parameters(
    depth: usize,
    log_n: u32,
    security: hecnn_rlwe::SecurityLevel,
) -> hecnn_rlwe::ParamsLiteral {
    let mut log_q = vec![40];
    log_q.extend(std::iter::repeat_n(SINGLE_LOG_SCALE, depth));
    hecnn_rlwe::ParamsLiteral {
        log_n,
        log_q,
        log_p: vec![42],
        dnum: Some(depth + 1),
        secret: hecnn_rlwe::SecretDistribution::Ternary,
        security,
    }
}

/// A single-image plan's encoded transforms: the diagonals of every linear layer as
/// plaintexts at their level, and the layers' biases.
pub struct EncodedSingle<B: Backend> {
    transforms: BTreeMap<usize, (LinearTransform<B>, Vec<f64>)>,
    top_level: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonals_reproduce_the_matrix() {
        let rows = vec![
            Row {
                terms: vec![(0, 1.0), (2, 2.0)],
                bias: 0.0,
            },
            Row {
                terms: vec![(3, -1.0)],
                bias: 0.0,
            },
            Row {
                terms: vec![(0, 0.5)],
                bias: 0.0,
            },
        ];
        let slots = 4;
        let d = diagonals(&rows, slots, 2.0);
        let x = [1.0, 10.0, 100.0, 1000.0];
        // (M·x)[o] = Σ_k d_k[o] · x[(o + k) mod slots]
        let y: Vec<f64> = (0..3)
            .map(|o| {
                d.iter()
                    .map(|(&k, dk)| dk[o] * x[(o + k as usize) % slots])
                    .sum()
            })
            .collect();
        assert_eq!(y, vec![2.0 * 201.0, -2000.0, 1.0]);
    }
}
