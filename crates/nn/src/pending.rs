//! The pending affine map both packing modes carry: a value's ciphertexts hold `ct` with
//! `true = a·ct + γ`, so activations and uniform layers change `(a, γ)` instead of spending
//! levels, and the next linear layer folds the map into its weights and bias.

/// A linear row's bias once its input's pending map `true = a·ct + γ` is folded in: the
/// weights take `a`, the bias gains `γ·Σ w`.
pub(crate) fn folded_bias(row: &crate::linear::Row, gamma: f64) -> f64 {
    row.bias + gamma * row.terms.iter().map(|&(_, w)| w).sum::<f64>()
}

/// What a degree ≤ 2 activation `c0 + c1·x + c2·x²` does to a value with map `(a, γ)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Activation {
    /// Affine (`c2 = 0`): only the map changes.
    Affine { a: f64, gamma: f64 },
    /// `c2·a²·(ct + δ)² + γ'`: add `δ`, square, and carry the new map.
    Square { delta: f64, a: f64, gamma: f64 },
    /// A square of a constant value (`a = 0`): nothing to evaluate under encryption.
    OfConstant,
}

/// `c2·x² + c1·x + c0 = c2·(x + c1/(2·c2))² + c0 − c1²/(4·c2)` with `x = a·ct + γ`
/// `= c2·a²·(ct + δ)² + γ'`, `δ = (γ + c1/(2·c2)) / a`.
pub(crate) fn activation(c: &[f64], a: f64, gamma: f64) -> Activation {
    let (c0, c1, c2) = (
        c.first().copied().unwrap_or(0.0),
        c.get(1).copied().unwrap_or(0.0),
        c.get(2).copied().unwrap_or(0.0),
    );
    if c2 == 0.0 {
        return Activation::Affine {
            a: c1 * a,
            gamma: c1 * gamma + c0,
        };
    }
    if a == 0.0 {
        return Activation::OfConstant;
    }
    Activation::Square {
        delta: (gamma + c1 / (2.0 * c2)) / a,
        a: c2 * a * a,
        gamma: c0 - c1 * c1 / (4.0 * c2),
    }
}

/// A value's pending map, the same for every neuron or one per neuron (after a per-channel
/// activation): neuron `j` holds `ct_j` with `true_j = a_j·ct_j + γ_j`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Map {
    /// One `(a, γ)` for every neuron.
    Uniform(f64, f64),
    /// `a_j` and `γ_j` for every neuron.
    PerNeuron(Vec<f64>, Vec<f64>),
}

impl Map {
    /// `true = ct`.
    pub(crate) const IDENTITY: Self = Self::Uniform(1.0, 0.0);

    /// Neuron `j`'s `(a, γ)`.
    pub(crate) fn at(&self, j: usize) -> (f64, f64) {
        match self {
            Self::Uniform(a, g) => (*a, *g),
            Self::PerNeuron(a, g) => (
                a.get(j).copied().unwrap_or(1.0),
                g.get(j).copied().unwrap_or(0.0),
            ),
        }
    }

    /// `(a, γ)` when every neuron shares it.
    pub(crate) fn uniform(&self) -> Option<(f64, f64)> {
        match self {
            Self::Uniform(a, g) => Some((*a, *g)),
            Self::PerNeuron(..) => None,
        }
    }
}

/// A degree ≤ 2 activation for every neuron of a value: one coefficient list shared by all
/// neurons, or one per channel of `per` consecutive neurons (AESPA/HerPN).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Act {
    lists: Vec<Vec<f64>>,
    per: usize,
}

/// What an activation does to a value: the new map, and the shift `δ` each neuron gets
/// before it is squared (`None` for an affine activation, which squares nothing).
pub(crate) struct Applied {
    pub map: Map,
    pub shift: Option<Shift>,
}

/// The constant added to each neuron before its square.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Shift {
    /// The same `δ` for every neuron.
    Uniform(f64),
    /// `δ_j` for every neuron.
    PerNeuron(Vec<f64>),
}

impl Act {
    /// The activation an element-wise polynomial operator computes on `neurons` neurons
    /// (`None` for other operators).
    pub(crate) fn of(op: &crate::Op, neurons: usize) -> Option<Self> {
        match op {
            crate::Op::Poly(c) => Some(Self::uniform(c.clone())),
            crate::Op::ChannelPoly(cs) => {
                Some(Self::per_channel(cs.clone(), neurons / cs.len().max(1)))
            }
            _ => None,
        }
    }

    /// One polynomial for every neuron.
    pub(crate) fn uniform(c: Vec<f64>) -> Self {
        Self {
            lists: vec![c],
            per: usize::MAX,
        }
    }

    /// One polynomial per channel, each over `per` consecutive neurons.
    pub(crate) fn per_channel(lists: Vec<Vec<f64>>, per: usize) -> Self {
        Self {
            lists,
            per: per.max(1),
        }
    }

    /// Neuron `j`'s coefficients.
    pub(crate) fn at(&self, j: usize) -> &[f64] {
        let k = (j / self.per).min(self.lists.len().saturating_sub(1));
        self.lists.get(k).map_or(&[], Vec::as_slice)
    }

    /// The highest degree with a non-zero coefficient.
    pub(crate) fn degree(&self) -> usize {
        self.lists
            .iter()
            .map(|c| c.iter().rposition(|&v| v != 0.0).unwrap_or(0))
            .max()
            .unwrap_or(0)
    }

    /// Whether it squares (a level and a relinearization per ciphertext).
    pub(crate) fn squares(&self) -> bool {
        self.lists
            .iter()
            .any(|c| c.get(2).is_some_and(|&v| v != 0.0))
    }

    /// The activation on `n` neurons carrying `map`.
    ///
    /// # Errors
    /// A message when some neurons would be squared and others not (one ciphertext cannot
    /// be both), or a square of a constant value.
    pub(crate) fn apply(&self, map: &Map, n: usize) -> Result<Applied, &'static str> {
        if let ([c], Some((a, gamma))) = (self.lists.as_slice(), map.uniform()) {
            return match activation(c, a, gamma) {
                Activation::Affine { a, gamma } => Ok(Applied {
                    map: Map::Uniform(a, gamma),
                    shift: None,
                }),
                Activation::Square { delta, a, gamma } => Ok(Applied {
                    map: Map::Uniform(a, gamma),
                    shift: Some(Shift::Uniform(delta)),
                }),
                Activation::OfConstant => Err(CONSTANT),
            };
        }
        let squares = self.squares();
        let (mut a2, mut g2, mut deltas) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for j in 0..n {
            let (a, gamma) = map.at(j);
            match (activation(self.at(j), a, gamma), squares) {
                (Activation::Affine { a, gamma }, false) => {
                    a2.push(a);
                    g2.push(gamma);
                }
                (Activation::Square { delta, a, gamma }, true) => {
                    a2.push(a);
                    g2.push(gamma);
                    deltas.push(delta);
                }
                (Activation::OfConstant, _) => return Err(CONSTANT),
                _ => {
                    return Err(
                        "some channels are squared and others not (x² coefficients of \
                                zero and non-zero): one ciphertext cannot be both",
                    );
                }
            }
        }
        let shift = if deltas.iter().all(|&d| d == 0.0) {
            Shift::Uniform(0.0)
        } else {
            Shift::PerNeuron(deltas)
        };
        Ok(Applied {
            map: Map::PerNeuron(a2, g2),
            shift: squares.then_some(shift),
        })
    }

    /// The largest shift `|c1 / (2·c2)|` completing the square adds to a neuron of a value
    /// with the identity map (0 when nothing is squared).
    pub(crate) fn widest_shift(&self) -> f64 {
        self.lists
            .iter()
            .filter_map(|c| {
                let (c1, c2) = (c.get(1).copied().unwrap_or(0.0), c.get(2).copied()?);
                (c2 != 0.0).then(|| (c1 / (2.0 * c2)).abs())
            })
            .fold(0.0, f64::max)
    }

    /// The activation without its linear term (`c0 + c2·x²`) and the linear coefficients
    /// (`c1`) per channel: `c2·x² + c1·x + c0` evaluated as a square plus a scaled copy of
    /// `x`, which needs no shift.
    pub(crate) fn split_linear(&self) -> (Self, Vec<f64>) {
        let at = |c: &[f64], i: usize| c.get(i).copied().unwrap_or(0.0);
        let square = Self {
            lists: self
                .lists
                .iter()
                .map(|c| vec![at(c, 0), 0.0, at(c, 2)])
                .collect(),
            per: self.per,
        };
        (square, self.lists.iter().map(|c| at(c, 1)).collect())
    }

    /// Neurons per coefficient list.
    pub(crate) fn per(&self) -> usize {
        self.per
    }
}

const CONSTANT: &str = "an activation of a constant value (fold it into the bias)";

/// A linear row's bias once its input's per-neuron map is folded in: `bias + Σ w·γ_j`.
pub(crate) fn folded_bias_map(row: &crate::linear::Row, map: &Map) -> f64 {
    match map.uniform() {
        Some((_, gamma)) => folded_bias(row, gamma),
        None => row.bias + row.terms.iter().map(|&(j, w)| w * map.at(j).1).sum::<f64>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_keeps_the_activation() {
        let (a, gamma) = (0.5, 0.25);
        let c = [0.1, 2.0, 1.0];
        let Activation::Square {
            delta,
            a: a2,
            gamma: g2,
        } = activation(&c, a, gamma)
        else {
            panic!("a square");
        };
        for ct in [-1.0, 0.0, 0.3, 2.0] {
            let x = a * ct + gamma;
            let want = c[2] * x * x + c[1] * x + c[0];
            let got = a2 * (ct + delta) * (ct + delta) + g2;
            assert!((want - got).abs() < 1e-12);
        }
        assert_eq!(
            activation(&[0.5, 3.0], a, gamma),
            Activation::Affine {
                a: 1.5,
                gamma: 1.25
            }
        );
        assert_eq!(activation(&c, 0.0, gamma), Activation::OfConstant);
    }

    #[test]
    fn per_channel_activations_keep_each_channel() {
        // Two channels of two neurons, under a per-neuron map.
        let act = Act::per_channel(vec![vec![0.5, 1.0, 2.0], vec![-1.0, 0.0, -0.5]], 2);
        let map = Map::PerNeuron(vec![1.0, 0.5, 2.0, 1.0], vec![0.0, 0.1, -0.2, 0.3]);
        let Applied {
            map: out,
            shift: Some(Shift::PerNeuron(deltas)),
        } = act.apply(&map, 4).unwrap()
        else {
            panic!("a per-neuron square");
        };
        for (j, &delta) in deltas.iter().enumerate() {
            let c = act.at(j);
            let (a, g) = map.at(j);
            let (a2, g2) = out.at(j);
            for ct in [-1.0, 0.0, 0.4] {
                let x = a * ct + g;
                let want = c[2] * x * x + c[1] * x + c[0];
                let got = a2 * (ct + delta) * (ct + delta) + g2;
                assert!((want - got).abs() < 1e-12, "neuron {j}");
            }
        }
        let mixed = Act::per_channel(vec![vec![0.0, 1.0, 1.0], vec![0.0, 1.0]], 1);
        assert!(mixed.apply(&Map::IDENTITY, 2).is_err());
        let uniform = Act::uniform(vec![0.0, 0.0, 1.0]);
        assert_eq!(
            uniform.apply(&Map::Uniform(2.0, 1.0), 5).unwrap().shift,
            Some(Shift::Uniform(0.5))
        );
    }
}
