//! Element-wise polynomials as the rewrite composes them: one coefficient list shared by
//! every channel ([`Op::Poly`]) or one per channel ([`Op::ChannelAffine`],
//! [`Op::ChannelPoly`]). Sums and compositions of the two kinds stay exact, so the
//! `x·x·A + x·B + C` an AESPA (HerPN) activation exports as five ONNX nodes folds back into
//! one per-channel quadratic.

use crate::Op;

/// Coefficients, constant term first.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Coeffs {
    /// The same polynomial on every channel.
    Uniform(Vec<f64>),
    /// One polynomial per channel (per feature, for vectors).
    PerChannel(Vec<Vec<f64>>),
}

impl Coeffs {
    /// The element-wise polynomial an operator computes, if it is one.
    pub(crate) fn of(op: &Op) -> Option<Self> {
        match op {
            Op::Poly(c) => Some(Self::Uniform(c.clone())),
            Op::ChannelPoly(c) => Some(Self::PerChannel(c.clone())),
            Op::ChannelAffine { scale, shift } => Some(Self::PerChannel(
                scale.iter().zip(shift).map(|(&s, &t)| vec![t, s]).collect(),
            )),
            _ => None,
        }
    }

    /// The identity `x`.
    pub(crate) fn identity() -> Self {
        Self::Uniform(vec![0.0, 1.0])
    }

    /// The highest degree with a non-zero coefficient (0 for constants).
    pub(crate) fn degree(&self) -> usize {
        let deg = |c: &[f64]| c.iter().rposition(|&v| v != 0.0).unwrap_or(0);
        match self {
            Self::Uniform(c) => deg(c),
            Self::PerChannel(cs) => cs.iter().map(|c| deg(c)).max().unwrap_or(0),
        }
    }

    /// `f` applied channel by channel; a uniform side is broadcast. `None` when both sides
    /// are per channel with different channel counts.
    fn zip_with(&self, other: &Self, f: impl Fn(&[f64], &[f64]) -> Vec<f64>) -> Option<Self> {
        Some(match (self, other) {
            (Self::Uniform(a), Self::Uniform(b)) => Self::Uniform(f(a, b)),
            (Self::Uniform(a), Self::PerChannel(bs)) => {
                Self::PerChannel(bs.iter().map(|b| f(a, b)).collect())
            }
            (Self::PerChannel(as_), Self::Uniform(b)) => {
                Self::PerChannel(as_.iter().map(|a| f(a, b)).collect())
            }
            (Self::PerChannel(as_), Self::PerChannel(bs)) => {
                if as_.len() != bs.len() {
                    return None;
                }
                Self::PerChannel(as_.iter().zip(bs).map(|(a, b)| f(a, b)).collect())
            }
        })
    }

    /// `self(x) + other(x)`.
    pub(crate) fn add(&self, other: &Self) -> Option<Self> {
        self.zip_with(other, |a, b| {
            let len = a.len().max(b.len());
            trim(
                (0..len)
                    .map(|i| a.get(i).unwrap_or(&0.0) + b.get(i).unwrap_or(&0.0))
                    .collect(),
            )
        })
    }

    /// `self(inner(x))`.
    pub(crate) fn compose(&self, inner: &Self) -> Option<Self> {
        self.zip_with(inner, compose)
    }

    /// The simplest operator computing these coefficients: [`Op::Poly`] when every channel
    /// has the same polynomial, [`Op::ChannelAffine`] for per-channel maps of degree ≤ 1,
    /// [`Op::ChannelPoly`] otherwise.
    pub(crate) fn into_op(self) -> Op {
        match self {
            Self::Uniform(c) => Op::Poly(c),
            Self::PerChannel(cs) => {
                let cs: Vec<Vec<f64>> = cs.into_iter().map(trim).collect();
                if cs.windows(2).all(|w| w[0] == w[1])
                    && let Some(c) = cs.first()
                {
                    return Op::Poly(c.clone());
                }
                if cs.iter().all(|c| c.len() <= 2) {
                    let at = |c: &Vec<f64>, i: usize| c.get(i).copied().unwrap_or(0.0);
                    return Op::ChannelAffine {
                        scale: cs.iter().map(|c| at(c, 1)).collect(),
                        shift: cs.iter().map(|c| at(c, 0)).collect(),
                    };
                }
                Op::ChannelPoly(cs)
            }
        }
    }
}

/// Drops trailing zero coefficients (keeping at least one).
fn trim(mut c: Vec<f64>) -> Vec<f64> {
    while c.len() > 1 && c.last() == Some(&0.0) {
        c.pop();
    }
    c
}

/// `p(q(x))` for polynomials in the monomial basis.
pub(crate) fn compose(p: &[f64], q: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; (p.len().max(1) - 1) * (q.len().max(1) - 1) + 1];
    let mut power = vec![1.0]; // q^k
    for &pk in p {
        for (i, &v) in power.iter().enumerate() {
            out[i] += pk * v;
        }
        let mut next = vec![0.0; power.len() + q.len() - 1];
        for (i, &a) in power.iter().enumerate() {
            for (j, &b) in q.iter().enumerate() {
                next[i + j] += a * b;
            }
        }
        power = next;
    }
    trim(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(c: &[f64], x: f64) -> f64 {
        c.iter().rev().fold(0.0, |acc, &v| acc * x + v)
    }

    #[test]
    fn composition() {
        // (2y + 1) ∘ (x²) = 2x² + 1 ; (y²) ∘ (x + 1) = x² + 2x + 1
        assert_eq!(compose(&[1.0, 2.0], &[0.0, 0.0, 1.0]), vec![1.0, 0.0, 2.0]);
        assert_eq!(compose(&[0.0, 0.0, 1.0], &[1.0, 1.0]), vec![1.0, 2.0, 1.0]);
    }

    #[test]
    fn the_aespa_pattern_folds_to_one_quadratic_per_channel() {
        // x·x·A + x·B + C as the importer sees it: ChannelAffine{A, 0} ∘ x², plus
        // ChannelAffine{B, 0}, then ChannelAffine{1, C}.
        let (a, b, c) = ([0.5, -2.0], [1.0, 0.25], [0.1, 3.0]);
        let square = Coeffs::of(&Op::Poly(vec![0.0, 0.0, 1.0])).unwrap();
        let times_a = Coeffs::of(&Op::ChannelAffine {
            scale: a.to_vec(),
            shift: vec![0.0; 2],
        })
        .unwrap();
        let times_b = Coeffs::of(&Op::ChannelAffine {
            scale: b.to_vec(),
            shift: vec![0.0; 2],
        })
        .unwrap();
        let plus_c = Coeffs::of(&Op::ChannelAffine {
            scale: vec![1.0; 2],
            shift: c.to_vec(),
        })
        .unwrap();
        let q = plus_c
            .compose(&times_a.compose(&square).unwrap().add(&times_b).unwrap())
            .unwrap();
        let Op::ChannelPoly(cs) = q.into_op() else {
            panic!("a per-channel polynomial");
        };
        for k in 0..2 {
            for x in [-1.5, 0.0, 0.7] {
                let want = a[k] * x * x + b[k] * x + c[k];
                assert!((eval(&cs[k], x) - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn results_take_the_simplest_operator() {
        let same = Coeffs::PerChannel(vec![vec![1.0, 2.0, 3.0]; 3]);
        assert_eq!(same.into_op(), Op::Poly(vec![1.0, 2.0, 3.0]));
        let affine = Coeffs::PerChannel(vec![vec![1.0, 2.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(
            affine.into_op(),
            Op::ChannelAffine {
                scale: vec![2.0, 1.0],
                shift: vec![1.0, 0.0]
            }
        );
        let a = Coeffs::PerChannel(vec![vec![0.0]; 2]);
        let b = Coeffs::PerChannel(vec![vec![0.0]; 3]);
        assert_eq!(a.add(&b), None, "channel counts must agree");
        assert_eq!(Coeffs::identity().degree(), 1);
    }
}
