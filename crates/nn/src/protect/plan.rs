//! Splitting a model into its cleartext feature extractor and its protected layers, and the
//! slot layout of the protected part (no cryptography).

use crate::{Model, NnError, Op, Tensor, exec, linear};

/// Which layers of a model are encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The last dense layer only (Gomez et al.'s first variant).
    LastLayer,
    /// The whole classifier: the trailing chain of dense layers and polynomial activations
    /// of degree at most two.
    Classifier,
    /// The whole network: every layer from the input on, which must then be linear
    /// (convolution, dense, average pooling, batch normalization) or a polynomial
    /// activation of degree at most two. The ring degree the depth needs at the chosen
    /// security level, and the size of the layers, decide whether a model fits.
    Network,
}

impl Scope {
    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Scope::LastLayer => "last",
            Scope::Classifier => "classifier",
            Scope::Network => "network",
        }
    }

    /// Looks a scope up by [`Scope::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        [Scope::LastLayer, Scope::Classifier, Scope::Network]
            .into_iter()
            .find(|s| s.name() == name)
    }

    /// Whether an operator may sit inside the protected part of this scope.
    fn admits(self, op: &Op) -> bool {
        match (self, op) {
            (_, Op::Dense(_)) => true,
            (Scope::LastLayer, _) => false,
            (_, Op::Flatten) => true,
            (_, Op::Poly(c)) => c.len() <= 3,
            (Scope::Classifier, _) => false,
            (
                Scope::Network,
                Op::Conv2d(_)
                | Op::AvgPool(_)
                | Op::GlobalAvgPool
                | Op::BatchNorm(_)
                | Op::ChannelAffine { .. },
            ) => true,
            (Scope::Network, _) => false,
        }
    }
}

/// Most weights (zeros included) of one protected layer once written as a dense matrix:
/// 2^24, 128 MiB of `f64`. A convolution is encrypted as its dense matrix, so a wide early
/// convolution (CIFAR-10's first, 3,072 → 32,768 values) is refused here, with its name.
pub const MAX_LAYER_WEIGHTS: usize = 1 << 24;

/// Most protected layers in one model (files declaring more are refused before anything
/// is allocated for them).
pub const MAX_PROTECTED_LAYERS: usize = 64;

/// Most weight and bias ciphertexts of one protected model (the MNIST network protected
/// whole takes 400 at N = 2^14).
pub const MAX_PROTECTED_CIPHERTEXTS: usize = 4096;

/// A linear layer in cleartext: `y = W·x + b`, `W` row-major `[outputs][inputs]`.
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
    /// The layer applied to `x`.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.outputs)
            .map(|k| {
                let row = &self.weight[k * self.inputs..(k + 1) * self.inputs];
                self.bias[k] + row.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
            })
            .collect()
    }

    /// The dense matrix of sparse rows over `inputs` values.
    fn from_rows(rows: &[linear::Row], inputs: usize, node: &str) -> Result<Self, NnError> {
        let outputs = rows.len();
        if outputs.saturating_mul(inputs) > MAX_LAYER_WEIGHTS {
            return Err(NnError::Unprotectable {
                node: node.to_string(),
                why: format!(
                    "it maps {inputs} values to {outputs}: {} weights as an encrypted dense \
                     matrix, more than the {MAX_LAYER_WEIGHTS} allowed; protect the classifier \
                     only",
                    outputs.saturating_mul(inputs)
                ),
            });
        }
        let mut weight = vec![0.0; outputs * inputs];
        for (k, row) in rows.iter().enumerate() {
            for &(j, w) in &row.terms {
                weight[k * inputs + j] += w;
            }
        }
        Ok(Self {
            outputs,
            inputs,
            weight,
            bias: rows.iter().map(|r| r.bias).collect(),
        })
    }

    /// `self ∘ first`: one dense layer computing `self(first(x))`.
    fn compose(&self, first: &DenseWeights, node: &str) -> Result<DenseWeights, NnError> {
        if self.outputs.saturating_mul(first.inputs) > MAX_LAYER_WEIGHTS {
            return Err(NnError::Unprotectable {
                node: node.to_string(),
                why: format!(
                    "composed with the layers before it, it maps {} values to {}, more than \
                     the {MAX_LAYER_WEIGHTS} weights allowed",
                    first.inputs, self.outputs
                ),
            });
        }
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
        Ok(DenseWeights {
            outputs: self.outputs,
            inputs: first.inputs,
            weight,
            bias: self.apply(&first.bias),
        })
    }

    /// `c1·self + c0` (a degree-1 polynomial applied to the outputs).
    fn affine(&mut self, c1: f64, c0: f64) {
        self.weight.iter_mut().for_each(|w| *w *= c1);
        self.bias.iter_mut().for_each(|b| *b = c1 * *b + c0);
    }

    /// `self(a·u + c)` as one layer on `u`: `(a·W)·u + (b + c·W·1)`.
    fn fold_input_affine(&mut self, a: f64, c: f64) {
        for k in 0..self.outputs {
            let row = &mut self.weight[k * self.inputs..(k + 1) * self.inputs];
            self.bias[k] += c * row.iter().sum::<f64>();
            row.iter_mut().for_each(|v| *v *= a);
        }
    }
}

/// One protected linear layer as the edge sees it: its size and the activation after it,
/// never its weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerShape {
    /// Input count.
    pub inputs: usize,
    /// Output count.
    pub outputs: usize,
    /// The square activation after this layer, as its shift `δ` in `a·(x + δ)² + c` (`a`
    /// and `c` are folded into the next, encrypted, layer); `None` after the last layer.
    pub square: Option<f64>,
}

/// The public shape of a protected model: everything the edge node may know. It holds no
/// weight of a protected layer.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtectedSpec {
    /// The cleartext feature extractor (its output is the feature vector; the input itself
    /// for [`Scope::Network`]).
    pub prefix: Model,
    /// What was protected.
    pub scope: Scope,
    /// The protected linear layers in order, each followed by its activation (if any).
    pub layers: Vec<LayerShape>,
}

impl ProtectedSpec {
    /// Multiplicative depth of the protected part: one level per linear layer and one per
    /// square activation.
    pub fn depth(&self) -> usize {
        self.layers.len() + self.layers.iter().filter(|l| l.square.is_some()).count()
    }

    /// Length of the feature vector: the first protected layer's inputs.
    pub fn features(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    /// Number of model outputs.
    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// The feature vector of one input (the cleartext part of the model).
    ///
    /// # Errors
    /// [`NnError::Shape`] for an input of the wrong shape.
    pub fn features_of(&self, input: &Tensor) -> Result<Vec<f64>, NnError> {
        let f = exec::run(&self.prefix, input)?;
        if f.len() != self.features() {
            return Err(NnError::Shape(format!(
                "the feature extractor produced {} values, the protected part reads {}",
                f.len(),
                self.features()
            )));
        }
        Ok(f.data().to_vec())
    }

    /// Checks that the layers chain (each reads what the one before writes), that there are
    /// between 1 and [`MAX_PROTECTED_LAYERS`], and that only the last has no activation
    /// after it.
    ///
    /// # Errors
    /// [`NnError::Format`] naming the inconsistency.
    pub fn check(&self) -> Result<(), NnError> {
        let bad = |reason: String| NnError::Format {
            what: "protected model",
            reason,
        };
        let Some(last) = self.layers.last() else {
            return Err(bad("a protected part without layers".into()));
        };
        if self.layers.len() > MAX_PROTECTED_LAYERS {
            return Err(bad(format!(
                "{} protected layers, at most {MAX_PROTECTED_LAYERS}",
                self.layers.len()
            )));
        }
        let mut inputs = self.features();
        for (i, l) in self.layers.iter().enumerate() {
            let last_one = i + 1 == self.layers.len();
            if l.inputs != inputs || l.inputs == 0 || l.outputs == 0 {
                return Err(bad(format!(
                    "protected layer {i} reads {} values and writes {}, after {inputs} values",
                    l.inputs, l.outputs
                )));
            }
            if l.square.is_some() == last_one || l.square.is_some_and(|s| !s.is_finite()) {
                return Err(bad(format!(
                    "protected layer {i}: every layer but the last is followed by a finite \
                     square activation"
                )));
            }
            inputs = l.outputs;
        }
        debug_assert!(last.square.is_none());
        Ok(())
    }

    /// The slot layout for `slots` slots: the smallest power-of-two block that every layer
    /// fits.
    ///
    /// # Errors
    /// [`NnError::Unprotectable`] when no block up to `slots` fits the layers, or the layout
    /// would take more than [`MAX_PROTECTED_CIPHERTEXTS`] ciphertexts.
    pub fn layout(&self, slots: usize) -> Result<Layout, NnError> {
        self.check()?;
        let fits = |block: usize| {
            let groups = slots / block;
            self.layers
                .iter()
                .enumerate()
                .all(|(i, l)| match Form::of(i) {
                    Form::Columns if i == 0 => l.outputs <= block,
                    // One group: the row sums fill every slot. Otherwise the outputs must fit
                    // in the window the previous (row) layer leaves.
                    Form::Columns => {
                        groups == 1
                            || l.outputs <= (block + 1).saturating_sub(self.layers[i - 1].inputs)
                    }
                    Form::Rows => l.inputs <= block,
                })
        };
        let Some(block) = (0..=slots.trailing_zeros())
            .map(|k| 1usize << k)
            .find(|&b| b <= slots && fits(b))
        else {
            let widest = self
                .layers
                .iter()
                .map(|l| l.inputs.max(l.outputs))
                .max()
                .unwrap_or(0);
            return Err(NnError::TooFewSlots {
                what: format!("the protected layers (up to {widest} values wide)"),
                slots,
            });
        };
        let groups = slots / block;
        let mut layers: Vec<LayerLayout> = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let form = Form::of(i);
            let offset = match (form, layers.last()) {
                (_, None) => 0,
                // A row layer reads its input where the column layer before wrote it.
                (Form::Rows, Some(prev)) => prev.offset,
                // A column layer reads the window the row layer before leaves: it ends at
                // that layer's offset and is `block − inputs + 1` slots wide.
                (Form::Columns, Some(prev)) => {
                    (prev.offset + slots - (block - self.layers[i - 1].inputs)) % slots
                }
            };
            let (weights, biases) = match form {
                Form::Columns => (l.inputs.div_ceil(groups), 1),
                Form::Rows => {
                    let n = l.outputs.div_ceil(groups);
                    (n, n)
                }
            };
            layers.push(LayerLayout {
                form,
                offset,
                weights,
                biases,
            });
        }
        let layout = Layout {
            slots,
            block,
            groups,
            layers,
        };
        if layout.ciphertexts() > MAX_PROTECTED_CIPHERTEXTS {
            return Err(NnError::Unprotectable {
                node: "the protected part".into(),
                why: format!(
                    "it would take {} ciphertexts of {slots} slots (at most \
                     {MAX_PROTECTED_CIPHERTEXTS}); protect fewer layers",
                    layout.ciphertexts()
                ),
            });
        }
        Ok(layout)
    }
}

/// How a layer's weights sit in the slots (see [`Layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Column groups: reads one ciphertext per group of inputs, writes one replicated
    /// vector.
    Columns,
    /// Row groups: reads a replicated vector, writes one ciphertext per group of outputs.
    Rows,
}

impl Form {
    /// The form of layer `i`: the two alternate, starting with columns.
    fn of(i: usize) -> Self {
        if i.is_multiple_of(2) {
            Form::Columns
        } else {
            Form::Rows
        }
    }
}

/// Where one protected layer sits in the slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerLayout {
    /// Column or row groups.
    pub form: Form,
    /// First slot of group 0's weights (groups follow every `block` slots, cyclically).
    pub offset: usize,
    /// Weight ciphertexts.
    pub weights: usize,
    /// Bias ciphertexts (one for column groups, one per weight ciphertext for rows).
    pub biases: usize,
}

/// How the protected layers sit in the slots. The slots are `groups` blocks of `block`
/// slots; group `g` starts at `g·block + offset` (modulo the slot count). The layers
/// alternate between two forms, so that each reads exactly what the one before wrote and
/// no ciphertext is ever re-packed:
///
/// - **Column groups** (layers 0, 2, …): weight ciphertext `t` holds, in group `g`, the
///   column `t·groups + g` of `W`; input ciphertext `t` holds the input `t·groups + g`
///   repeated over every slot of group `g` the weights use (the whole block for the
///   features, the window a row layer leaves after it). Their products summed over `t`,
///   then over the groups (`log₂ groups` rotations), leave `W·x` *replicated*: the same
///   vector every `block` slots.
/// - **Row groups** (layers 1, 3, …): weight ciphertext `u` holds, in group `g`, the row
///   `u·groups + g` of `W`, aligned with the replicated input. The product summed over
///   `block` consecutive slots (`log₂ block` rotations) leaves output `u·groups + g` in
///   each of the `block − inputs + 1` slots that end at group `g`'s first slot: exactly
///   the repeated input the next column layer reads.
///
/// Every slot a weight ciphertext does not use encrypts zero, so whatever the input holds
/// there (such as the square of a stray sum) never reaches an output. Those stray sums are
/// not masked away (that would cost a level): like the outputs, they must stay within the
/// output modulus' headroom over the scale (2^25 with the 61 + 25-bit output level and the
/// 2^60 scale of [`crate::protect::parameters`]; 2^8 with the 49-bit prime and 2^40 scale
/// of [`crate::protect::parameters_unflooded`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Slots per ciphertext.
    pub slots: usize,
    /// Block length.
    pub block: usize,
    /// Blocks per ciphertext.
    pub groups: usize,
    /// Per protected layer.
    pub layers: Vec<LayerLayout>,
}

impl Layout {
    /// Slot `position` of group `g` for a layer at `offset`.
    pub fn slot(&self, offset: usize, g: usize, position: usize) -> usize {
        (g * self.block + offset + position) % self.slots
    }

    /// The feature vector laid out for column group `t` of the first layer: feature
    /// `t·groups + g` over the whole of block `g`.
    pub fn feature_column<T: Copy + Default>(&self, features: &[T], t: usize) -> Vec<T> {
        let mut v = vec![T::default(); self.slots];
        for (g, chunk) in v.chunks_mut(self.block).enumerate() {
            if let Some(&x) = features.get(t * self.groups + g) {
                chunk.fill(x);
            }
        }
        v
    }

    /// Weight ciphertexts in all (biases included).
    pub fn ciphertexts(&self) -> usize {
        self.layers.iter().fold(0usize, |n, l| {
            n.saturating_add(l.weights).saturating_add(l.biases)
        })
    }

    /// Rotation steps the evaluation needs.
    pub fn rotations(&self) -> Vec<i64> {
        let sums = |form| match form {
            Form::Columns => hecnn_ckks::inner_sum_rotations(self.block as i64, self.groups),
            Form::Rows => hecnn_ckks::inner_sum_rotations(1, self.block),
        };
        let mut steps: Vec<i64> = self.layers.iter().flat_map(|l| sums(l.form)).collect();
        steps.sort_unstable();
        steps.dedup();
        steps
    }
}

/// The owner's view: the public spec plus the cleartext weights of the protected layers.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtectPlan {
    spec: ProtectedSpec,
    /// Each layer with the `a` and `c` of the activation before it folded in.
    layers: Vec<DenseWeights>,
    /// Per layer, the `(a, c)` folded into it (`None` for the first).
    folds: Vec<Option<(f64, f64)>>,
}

/// One step of the protected chain before normalisation.
enum Link {
    /// A linear layer (consecutive ones composed).
    Linear(DenseWeights),
    /// `a·(x + δ)² + c`.
    Square { a: f64, shift: f64, c: f64 },
}

impl ProtectPlan {
    /// Splits `model` into a cleartext feature extractor and the protected layers of
    /// `scope`. Consecutive linear layers (and degree-1 polynomials) are composed into one,
    /// as they compute the same function with one level; a degree-2 activation is written
    /// `a·(x + δ)² + c` and its `a`, `c` are folded into the next (encrypted) layer.
    ///
    /// # Errors
    /// [`NnError::Unprotectable`] when the model does not end with a dense layer; when the
    /// classifier holds an activation that is not a polynomial of degree at most two (with
    /// the node named); for [`Scope::Network`], listing every node that is neither linear
    /// nor such a polynomial; for an activation directly after another; when a layer is too
    /// large ([`MAX_LAYER_WEIGHTS`]).
    pub fn new(model: &Model, scope: Scope) -> Result<Self, NnError> {
        model.check_finite()?;
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
        if scope == Scope::Network {
            let refused: Vec<String> = model
                .nodes
                .iter()
                .zip(&live)
                .filter(|&(n, &l)| l && !matches!(n.op, Op::Input) && !scope.admits(&n.op))
                .map(|(n, _)| format!("'{}' ({})", n.name, n.op.kind()))
                .collect();
            if !refused.is_empty() {
                return Err(NnError::Unprotectable {
                    node: model.name.clone(),
                    why: format!(
                        "the whole network can be protected only when every layer is linear or \
                         a polynomial activation of degree at most 2; not so: {}",
                        refused.join(", ")
                    ),
                });
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
            if !scope.admits(&node.op) || !single(id) || node.inputs.len() != 1 {
                break;
            }
            chain.push(id);
            id = node.inputs[0];
            if scope == Scope::LastLayer {
                break;
            }
        }
        chain.reverse();
        // Leading activations and flattens compute on the features: they stay in the clear.
        while let Some(&first) = chain.first() {
            if !matches!(model.nodes[first].op, Op::Flatten | Op::Poly(_)) {
                break;
            }
            chain.remove(0);
        }
        let head = match chain.first() {
            Some(&head) if matches!(model.nodes[model.output].op, Op::Dense(_)) => head,
            _ => {
                return Err(NnError::Unprotectable {
                    node: model.nodes[model.output].name.clone(),
                    why: format!(
                        "the model must end with a dense layer to be protected (its output is \
                         {})",
                        model.nodes[model.output].op.kind()
                    ),
                });
            }
        };
        let stop = model.nodes[head].inputs[0];
        if scope == Scope::Classifier {
            check_classifier_boundary(model, stop)?;
        }

        let mut links: Vec<Link> = Vec::new();
        for &k in &chain {
            let node = &model.nodes[k];
            let in_shape = &shapes[node.inputs[0]];
            match &node.op {
                Op::Poly(c) => fold_poly(&mut links, c, &node.name)?,
                Op::Flatten => {} // linear layers read their input flattened
                op => {
                    let op = match op {
                        Op::BatchNorm(b) => batch_norm_as_affine(b),
                        other => other.clone(),
                    };
                    let rows = linear::rows(&op, in_shape, &shapes[k])?.ok_or_else(|| {
                        NnError::Unprotectable {
                            node: node.name.clone(),
                            why: "not a linear layer".into(),
                        }
                    })?;
                    let inputs: usize = in_shape.iter().product();
                    let w = DenseWeights::from_rows(&rows, inputs, &node.name)?;
                    match links.pop() {
                        Some(Link::Linear(prev)) => {
                            links.push(Link::Linear(w.compose(&prev, &node.name)?));
                        }
                        Some(sq) => {
                            links.push(sq);
                            links.push(Link::Linear(w));
                        }
                        None => links.push(Link::Linear(w)),
                    }
                }
            }
        }

        let mut prefix = model.clone();
        prefix.nodes.truncate(stop + 1);
        prefix.output = stop;
        // Alternate linear layers and squares; fold each square's `a`, `c` forward.
        let mut layers: Vec<DenseWeights> = Vec::new();
        let mut folds: Vec<Option<(f64, f64)>> = Vec::new();
        let mut shape: Vec<LayerShape> = Vec::new();
        let mut pending: Option<(f64, f64)> = None;
        for link in links {
            match link {
                Link::Linear(mut w) => {
                    // Links alternate: consecutive linear layers were composed above.
                    let fold = pending.take();
                    if let Some((a, c)) = fold {
                        w.fold_input_affine(a, c);
                    }
                    folds.push(fold);
                    shape.push(LayerShape {
                        inputs: w.inputs,
                        outputs: w.outputs,
                        square: None,
                    });
                    layers.push(w);
                }
                Link::Square { a, shift, c } => {
                    let Some(last) = shape.last_mut() else {
                        return Err(NnError::Unprotectable {
                            node: model.name.clone(),
                            why: "no linear layer to protect".into(),
                        });
                    };
                    last.square = Some(shift);
                    pending = Some((a, c));
                }
            }
        }
        if pending.is_some() || layers.is_empty() {
            return Err(NnError::Unprotectable {
                node: model.name.clone(),
                why: "the protected part must end with a dense layer".into(),
            });
        }
        let spec = ProtectedSpec {
            prefix,
            scope,
            layers: shape,
        };
        spec.check()?;
        Ok(Self {
            spec,
            layers,
            folds,
        })
    }

    /// The public part.
    pub fn spec(&self) -> &ProtectedSpec {
        &self.spec
    }

    /// The protected layers in cleartext, each with the `a` and `c` of the activation
    /// before it folded in.
    pub fn layers(&self) -> &[DenseWeights] {
        &self.layers
    }

    /// Per layer, the `a` and `c` of the activation `a·(x + δ)² + c` before it, folded
    /// into its weights and bias (`None` for the first layer).
    pub(crate) fn folds(&self) -> &[Option<(f64, f64)>] {
        &self.folds
    }

    /// The protected part evaluated in cleartext on a feature vector, with exactly the
    /// arithmetic the encrypted evaluation performs (composed layers, folded activations).
    pub fn reference(&self, features: &[f64]) -> Vec<f64> {
        let mut x = features.to_vec();
        for (w, shape) in self.layers.iter().zip(&self.spec.layers) {
            x = w.apply(&x);
            if let Some(shift) = shape.square {
                x.iter_mut().for_each(|v| *v = (*v + shift) * (*v + shift));
            }
        }
        x
    }
}

/// Adds an activation `Σ c_i x^i` (degree ≤ 2) to the chain: degree 1 folds into the link
/// before it, degree 2 becomes a square.
fn fold_poly(links: &mut Vec<Link>, c: &[f64], node: &str) -> Result<(), NnError> {
    let c0 = c.first().copied().unwrap_or(0.0);
    let c1 = c.get(1).copied().unwrap_or(0.0);
    let c2 = c.get(2).copied().unwrap_or(0.0);
    if c2 == 0.0 {
        match links.last_mut() {
            Some(Link::Linear(d)) => d.affine(c1, c0),
            Some(Link::Square { a, c, .. }) => {
                *a *= c1;
                *c = c1 * *c + c0;
            }
            None => {}
        }
        return Ok(());
    }
    if !matches!(links.last(), Some(Link::Linear(_))) {
        return Err(NnError::Unprotectable {
            node: node.to_string(),
            why: "an activation directly after another activation".into(),
        });
    }
    let shift = c1 / (2.0 * c2);
    links.push(Link::Square {
        a: c2,
        shift,
        c: c0 - c2 * shift * shift,
    });
    Ok(())
}

/// The classifier must start where the features end: a polynomial of higher degree, or a
/// ReLU or max pool *inside* the classifier (after a dense layer), cannot be protected.
fn check_classifier_boundary(model: &Model, stop: usize) -> Result<(), NnError> {
    if let Op::Poly(c) = &model.nodes[stop].op
        && c.len() > 3
    {
        return Err(NnError::Unprotectable {
            node: model.nodes[stop].name.clone(),
            why: format!(
                "an activation of degree {}: the protected classifier accepts polynomials of \
                 degree at most 2 (such as x²+2x)",
                c.len() - 1
            ),
        });
    }
    if matches!(model.nodes[stop].op, Op::Relu | Op::MaxPool(_)) && upstream_dense(model, stop) {
        return Err(NnError::Unprotectable {
            node: model.nodes[stop].name.clone(),
            why: format!(
                "a {} inside the classifier cannot be evaluated on encrypted weights; protect \
                 the last layer only, or retrain with a polynomial activation (x²+2x)",
                model.nodes[stop].op.kind()
            ),
        });
    }
    Ok(())
}

/// Batch normalization as the per-channel affine map it computes at inference.
fn batch_norm_as_affine(b: &crate::ir::BatchNorm) -> Op {
    let scale: Vec<f64> = (0..b.scale.len())
        .map(|k| b.scale[k] / (b.var[k] + b.epsilon).sqrt())
        .collect();
    let shift = (0..b.scale.len())
        .map(|k| b.bias[k] - b.mean[k] * scale[k])
        .collect();
    Op::ChannelAffine { scale, shift }
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
