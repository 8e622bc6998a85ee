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
}
