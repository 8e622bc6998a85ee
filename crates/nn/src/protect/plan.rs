//! Splitting a model into its cleartext feature extractor and its protected classifier, and
//! the slot layout of the protected part (no cryptography).

use crate::{Model, NnError, Op, Tensor, exec};

/// Which trailing layers of a model are encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The last dense layer only (Gomez et al.'s first variant).
    LastLayer,
    /// The whole classifier: the trailing chain of dense layers and polynomial activations
    /// of degree at most two, with at most one activation of degree two.
    Classifier,
}

impl Scope {
    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Scope::LastLayer => "last",
            Scope::Classifier => "classifier",
        }
    }

    /// Looks a scope up by [`Scope::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        [Scope::LastLayer, Scope::Classifier]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// A dense layer in cleartext: `y = W·x + b`, `W` row-major `[outputs][inputs]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseWeights {
    /// Output count.
    pub outputs: usize,
    /// Input count.
    pub inputs: usize,
    /// Weights, row-major.
    pub weight: Vec<f64>,
    /// Bias per output.
    pub bias: Vec<f64>,
}

impl DenseWeights {
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.outputs)
            .map(|k| {
                let row = &self.weight[k * self.inputs..(k + 1) * self.inputs];
                self.bias[k] + row.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
            })
            .collect()
    }

    /// `self ∘ first`: one dense layer computing `self(first(x))`.
    fn compose(&self, first: &DenseWeights) -> DenseWeights {
        let mut weight = vec![0.0; self.outputs * first.inputs];
        for k in 0..self.outputs {
            let out = &mut weight[k * first.inputs..(k + 1) * first.inputs];
            for j in 0..self.inputs {
                let w = self.weight[k * self.inputs + j];
                if w == 0.0 {
                    continue;
                }
                let row = &first.weight[j * first.inputs..(j + 1) * first.inputs];
                for (o, v) in out.iter_mut().zip(row) {
                    *o += w * v;
                }
            }
        }
        DenseWeights {
            outputs: self.outputs,
            inputs: first.inputs,
            weight,
            bias: self.apply(&first.bias),
        }
    }

    /// `c1·self + c0` (a degree-1 polynomial applied to the outputs).
    fn affine(&mut self, c1: f64, c0: f64) {
        self.weight.iter_mut().for_each(|w| *w *= c1);
        self.bias.iter_mut().for_each(|b| *b = c1 * *b + c0);
    }
}

/// The public shape of a protected model: everything the edge node may know. It holds no
/// weight of a protected layer.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtectedSpec {
    /// The cleartext feature extractor (its output is the feature vector).
    pub prefix: Model,
    /// What was protected.
    pub scope: Scope,
    /// Length of the feature vector.
    pub features: usize,
    /// Outputs of the first protected dense layer.
    pub hidden: usize,
    /// The activation between the two protected layers, as its shift `δ` in
    /// `a·(x + δ)² + c` (`a` and `c` are folded into the encrypted second layer), and the
    /// second layer's output count; `None` when one dense layer is protected.
    pub second: Option<(f64, usize)>,
}

impl ProtectedSpec {
    /// Multiplicative depth of the protected part: 1 for one dense layer, 3 with the square.
    pub fn depth(&self) -> usize {
        if self.second.is_some() { 3 } else { 1 }
    }

    /// Number of model outputs.
    pub fn outputs(&self) -> usize {
        self.second.map_or(self.hidden, |(_, m)| m)
    }

    /// The feature vector of one input (the cleartext part of the model).
    ///
    /// # Errors
    /// [`NnError::Shape`] for an input of the wrong shape.
    pub fn features_of(&self, input: &Tensor) -> Result<Vec<f64>, NnError> {
        let f = exec::run(&self.prefix, input)?;
        if f.len() != self.features {
            return Err(NnError::Shape(format!(
                "the feature extractor produced {} values, the protected part reads {}",
                f.len(),
                self.features
            )));
        }
        Ok(f.data().to_vec())
    }

    /// The slot layout for `slots` slots.
    ///
    /// # Errors
    /// [`NnError::Invalid`] when the first protected layer has more outputs than slots.
    pub fn layout(&self, slots: usize) -> Result<Layout, NnError> {
        let block = self.hidden.next_power_of_two();
        if block > slots {
            return Err(NnError::Invalid(format!(
                "the first protected layer has {} outputs, more than the {slots} slots",
                self.hidden
            )));
        }
        let groups = slots / block;
        Ok(Layout {
            slots,
            block,
            groups,
            columns: self.features.div_ceil(groups),
            rows: self.second.map_or(0, |(_, m)| m.div_ceil(groups)),
        })
    }
}

/// How the protected layers sit in the slots. The slots are `groups` blocks of `block`
/// (the first layer's outputs, rounded up to a power of two).
///
/// - First layer, *column groups*: weight ciphertext `t` holds, in block `g`, the column
///   `t·groups + g` of `W₁`; feature input `t` holds the feature `t·groups + g` repeated over
///   block `g`. Their products summed over `t`, then over the blocks (`log₂ groups`
///   rotations), leave `W₁·x` repeated in every block.
/// - Second layer, *row groups*: weight ciphertext `u` holds, in block `g`, the row
///   `u·groups + g` of `W₂`; its product with the repeated hidden vector, summed within each
///   block (`log₂ block` rotations), leaves output `u·groups + g` in the first slot of block
///   `g`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Slots per ciphertext.
    pub slots: usize,
    /// Block length.
    pub block: usize,
    /// Blocks per ciphertext.
    pub groups: usize,
    /// Weight (and feature) ciphertexts of the first layer.
    pub columns: usize,
    /// Weight ciphertexts of the second layer (0 without one).
    pub rows: usize,
}

impl Layout {
    /// The feature vector laid out for column group `t`.
    pub fn feature_column(&self, features: &[f64], t: usize) -> Vec<f64> {
        let mut v = vec![0.0; self.slots];
        for (g, chunk) in v.chunks_mut(self.block).enumerate() {
            if let Some(&x) = features.get(t * self.groups + g) {
                chunk.fill(x);
            }
        }
        v
    }

    /// Rotation steps the evaluation needs.
    pub fn rotations(&self, two_layers: bool) -> Vec<i64> {
        let mut steps = hecnn_ckks::Evaluator::<hecnn_ring::CpuBackend>::inner_sum_rotations(
            self.block as i64,
            self.groups,
        );
        if two_layers {
            steps.extend(
                hecnn_ckks::Evaluator::<hecnn_ring::CpuBackend>::inner_sum_rotations(1, self.block),
            );
        }
        steps.sort_unstable();
        steps.dedup();
        steps
    }
}

/// The owner's view: the public spec plus the cleartext weights of the protected layers.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtectPlan {
    spec: ProtectedSpec,
    first: DenseWeights,
    /// The second layer with the activation's `a` and `c` folded in.
    second: Option<DenseWeights>,
}

/// One step of the protected chain before normalisation.
enum Link {
    Dense(DenseWeights),
    /// `a·(x + δ)² + c`.
    Square {
        a: f64,
        shift: f64,
        c: f64,
    },
}

impl ProtectPlan {
    /// Splits `model` into a cleartext feature extractor and the protected layers of
    /// `scope`. Consecutive dense layers (and degree-1 polynomials) are composed into one,
    /// as they compute the same function with one level; a degree-2 activation is written
    /// `a·(x + δ)² + c` and its `a`, `c` are folded into the next (encrypted) layer.
    ///
    /// # Errors
    /// [`NnError::Invalid`] when the model does not end with a dense layer, when the
    /// classifier holds an activation that is not a polynomial of degree at most two (with
    /// the node named), or more than one degree-2 activation.
    pub fn new(model: &Model, scope: Scope) -> Result<Self, NnError> {
        let shapes = model.shapes()?;
        // Readers that reach the output (an importer may leave dead nodes behind, such as
        // the `x + 2` of `x·(x + 2)` once the product became one polynomial).
        let mut live = vec![false; model.nodes.len()];
        live[model.output] = true;
        for k in (0..model.nodes.len()).rev() {
            if live[k] {
                for &i in &model.nodes[k].inputs {
                    live[i] = true;
                }
            }
        }
        let consumers = model.consumers();
        let single =
            |i: usize| i == model.output || consumers[i].iter().filter(|&&k| live[k]).count() == 1;
        // Walk back from the output over the protectable chain.
        let mut chain = Vec::new();
        let mut id = model.output;
        loop {
            let node = &model.nodes[id];
            let protectable = match &node.op {
                Op::Dense(_) => true,
                Op::Flatten => scope == Scope::Classifier,
                Op::Poly(c) => scope == Scope::Classifier && c.len() <= 3,
                _ => false,
            };
            if !protectable || !single(id) || node.inputs.len() != 1 {
                break;
            }
            chain.push(id);
            id = node.inputs[0];
            if scope == Scope::LastLayer {
                break;
            }
        }
        chain.reverse();
        // Leading non-dense links compute on the features: they stay in the clear.
        while let Some(&first) = chain.first() {
            if matches!(model.nodes[first].op, Op::Dense(_)) {
                break;
            }
            chain.remove(0);
        }
        let Some(&head) = chain.first() else {
            return Err(NnError::Invalid(format!(
                "the model must end with a dense layer to be protected (its output node '{}' \
                 is {})",
                model.nodes[model.output].name,
                model.nodes[model.output].op.kind()
            )));
        };
        let stop = model.nodes[head].inputs[0];
        if scope == Scope::Classifier
            && let Op::Poly(c) = &model.nodes[stop].op
            && c.len() > 3
        {
            return Err(NnError::Invalid(format!(
                "activation '{}' has degree {}: the protected classifier accepts polynomials \
                 of degree at most 2 (such as x²+2x)",
                model.nodes[stop].name,
                c.len() - 1
            )));
        }
        if scope == Scope::Classifier
            && matches!(model.nodes[stop].op, Op::Relu | Op::MaxPool(_))
            && upstream_dense(model, stop)
        {
            return Err(NnError::Invalid(format!(
                "the classifier has a {} at node '{}', which cannot be evaluated on encrypted \
                 weights; protect the last layer only, or retrain with a polynomial \
                 activation (x²+2x)",
                model.nodes[stop].op.kind(),
                model.nodes[stop].name
            )));
        }

        let mut links: Vec<Link> = Vec::new();
        for &k in &chain {
            let input_len: usize = shapes[model.nodes[k].inputs[0]].iter().product();
            match &model.nodes[k].op {
                Op::Dense(d) => {
                    let w = DenseWeights {
                        outputs: d.bias.len(),
                        inputs: input_len,
                        weight: d.weight.data().to_vec(),
                        bias: d.bias.clone(),
                    };
                    match links.pop() {
                        Some(Link::Dense(prev)) => links.push(Link::Dense(w.compose(&prev))),
                        Some(sq) => {
                            links.push(sq);
                            links.push(Link::Dense(w));
                        }
                        None => links.push(Link::Dense(w)),
                    }
                }
                Op::Poly(c) => {
                    let c0 = c.first().copied().unwrap_or(0.0);
                    let c1 = c.get(1).copied().unwrap_or(0.0);
                    let c2 = c.get(2).copied().unwrap_or(0.0);
                    if c2 == 0.0 {
                        match links.last_mut() {
                            Some(Link::Dense(d)) => d.affine(c1, c0),
                            Some(Link::Square { a, c, .. }) => {
                                *a *= c1;
                                *c = c1 * *c + c0;
                            }
                            None => {}
                        }
                    } else if matches!(links.last(), Some(Link::Dense(_))) {
                        if links.iter().any(|l| matches!(l, Link::Square { .. })) {
                            return Err(NnError::Invalid(format!(
                                "activation '{}': the protected classifier supports one \
                                 degree-2 activation",
                                model.nodes[k].name
                            )));
                        }
                        let shift = c1 / (2.0 * c2);
                        links.push(Link::Square {
                            a: c2,
                            shift,
                            c: c0 - c2 * shift * shift,
                        });
                    } else {
                        return Err(NnError::Invalid(format!(
                            "activation '{}' directly after another activation",
                            model.nodes[k].name
                        )));
                    }
                }
                _ => {} // Flatten: dense layers flatten their input.
            }
        }

        let mut prefix = model.clone();
        prefix.nodes.truncate(stop + 1);
        prefix.output = stop;
        let features: usize = shapes[stop].iter().product();
        let mut links = links.into_iter();
        let Some(Link::Dense(first)) = links.next() else {
            return Err(NnError::Invalid("no dense layer to protect".into()));
        };
        let (second, spec_second) = match (links.next(), links.next()) {
            (None, _) => (None, None),
            (Some(Link::Square { a, shift, c }), Some(Link::Dense(mut w))) => {
                // W·(a·u² + c) + b = (a·W)·u² + (b + c·W·1).
                for k in 0..w.outputs {
                    let row = &mut w.weight[k * w.inputs..(k + 1) * w.inputs];
                    w.bias[k] += c * row.iter().sum::<f64>();
                    row.iter_mut().for_each(|v| *v *= a);
                }
                let m = w.outputs;
                (Some(w), Some((shift, m)))
            }
            _ => {
                return Err(NnError::Invalid(
                    "the protected classifier must end with a dense layer".into(),
                ));
            }
        };
        let spec = ProtectedSpec {
            prefix,
            scope,
            features,
            hidden: first.outputs,
            second: spec_second,
        };
        Ok(Self {
            spec,
            first,
            second,
        })
    }

    /// The public part.
    pub fn spec(&self) -> &ProtectedSpec {
        &self.spec
    }

    /// The first protected layer.
    pub fn first(&self) -> &DenseWeights {
        &self.first
    }

    /// The second protected layer (activation folded in), if any.
    pub fn second(&self) -> Option<&DenseWeights> {
        self.second.as_ref()
    }

    /// The protected part evaluated in cleartext on a feature vector, with exactly the
    /// arithmetic the encrypted evaluation performs (composed layers, folded activation).
    pub fn reference(&self, features: &[f64]) -> Vec<f64> {
        let y = self.first.apply(features);
        match (&self.second, self.spec.second) {
            (Some(w), Some((shift, _))) => {
                let u: Vec<f64> = y.iter().map(|v| (v + shift) * (v + shift)).collect();
                w.apply(&u)
            }
            _ => y,
        }
    }
}

/// Whether a dense layer feeds `id` through elementwise nodes (so that a ReLU at `id` sits
/// inside the classifier rather than after the convolutions).
fn upstream_dense(model: &Model, mut id: usize) -> bool {
    loop {
        match &model.nodes[id].op {
            Op::Dense(_) => return true,
            Op::Relu | Op::Poly(_) | Op::ChannelAffine { .. } | Op::BatchNorm(_) => {
                id = model.nodes[id].inputs[0];
            }
            _ => return false,
        }
    }
}
