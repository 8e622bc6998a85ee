//! Linear layers as sparse matrices over flattened `C×H×W` activations: the form in which
//! batch packing evaluates them (one ciphertext per neuron, integer-weighted sums).

use crate::{NnError, Op};

/// One output neuron: `Σ weight·input[index] + bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `(input index, weight)` pairs.
    pub terms: Vec<(usize, f64)>,
    /// Bias.
    pub bias: f64,
}

/// The rows of a linear operator applied to an input of `in_shape` (output `out_shape`), or
/// `None` for operators that are not linear layers.
///
/// # Errors
/// [`NnError::Shape`] on inconsistent shapes.
pub fn rows(op: &Op, in_shape: &[usize], out_shape: &[usize]) -> Result<Option<Vec<Row>>, NnError> {
    let chw = |s: &[usize]| -> Result<[usize; 3], NnError> {
        match *s {
            [c, h, w] => Ok([c, h, w]),
            _ => Err(NnError::Shape(format!("expected C×H×W, got {s:?}"))),
        }
    };
    Ok(Some(match op {
        Op::Conv2d(c) => {
            let [_, h, w] = chw(in_shape)?;
            let [oc, oh, ow] = chw(out_shape)?;
            let ws = c.weight.shape();
            let (cig, kh, kw) = (ws[1], ws[2], ws[3]);
            let ocg = oc / c.groups;
            let mut rows = Vec::with_capacity(oc * oh * ow);
            for o in 0..oc {
                let g = o / ocg;
                for y in 0..oh {
                    for x in 0..ow {
                        let mut terms = Vec::with_capacity(cig * kh * kw);
                        for i in 0..cig {
                            for a in 0..kh {
                                let iy = (y * c.stride[0] + a) as isize - c.padding[0] as isize;
                                for b in 0..kw {
                                    let ix = (x * c.stride[1] + b) as isize - c.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let wv = c.weight.data()[((o * cig + i) * kh + a) * kw + b];
                                    if wv != 0.0 {
                                        terms.push((
                                            ((g * cig + i) * h + iy as usize) * w + ix as usize,
                                            wv,
                                        ));
                                    }
                                }
                            }
                        }
                        rows.push(Row {
                            terms,
                            bias: c.bias[o],
                        });
                    }
                }
            }
            rows
        }
        Op::Dense(d) => {
            let n_in = d.weight.shape()[1];
            (0..d.bias.len())
                .map(|o| Row {
                    terms: d.weight.data()[o * n_in..(o + 1) * n_in]
                        .iter()
                        .enumerate()
                        .filter(|(_, w)| **w != 0.0)
                        .map(|(j, &w)| (j, w))
                        .collect(),
                    bias: d.bias[o],
                })
                .collect()
        }
        Op::AvgPool(p) => {
            let [c, h, w] = chw(in_shape)?;
            let [_, oh, ow] = chw(out_shape)?;
            let inv = 1.0 / (p.kernel[0] * p.kernel[1]) as f64;
            let mut rows = Vec::with_capacity(c * oh * ow);
            for k in 0..c {
                for y in 0..oh {
                    for x in 0..ow {
                        let mut terms = Vec::new();
                        for a in 0..p.kernel[0] {
                            for b in 0..p.kernel[1] {
                                let iy = (y * p.stride[0] + a) as isize - p.padding[0] as isize;
                                let ix = (x * p.stride[1] + b) as isize - p.padding[1] as isize;
                                if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                    terms.push(((k * h + iy as usize) * w + ix as usize, inv));
                                }
                            }
                        }
                        rows.push(Row { terms, bias: 0.0 });
                    }
                }
            }
            rows
        }
        Op::GlobalAvgPool => {
            let [c, h, w] = chw(in_shape)?;
            let inv = 1.0 / (h * w) as f64;
            (0..c)
                .map(|k| Row {
                    terms: (0..h * w).map(|i| (k * h * w + i, inv)).collect(),
                    bias: 0.0,
                })
                .collect()
        }
        Op::ChannelAffine { scale, shift } => {
            let n: usize = in_shape.iter().product();
            let per = n / scale.len().max(1);
            (0..n)
                .map(|i| Row {
                    terms: vec![(i, scale[i / per])],
                    bias: shift[i / per],
                })
                .collect()
        }
        _ => return Ok(None),
    }))
}

/// `second ∘ first`: rows of `second` over the outputs of `first`, re-expressed over the
/// inputs of `first` (consecutive linear layers as one).
pub(crate) fn compose(second: &[Row], first: &[Row]) -> Vec<Row> {
    second
        .iter()
        .map(|r| {
            let mut acc: std::collections::BTreeMap<usize, f64> = std::collections::BTreeMap::new();
            let mut bias = r.bias;
            for &(m, w) in &r.terms {
                let inner = &first[m];
                bias += w * inner.bias;
                for &(j, v) in &inner.terms {
                    *acc.entry(j).or_insert(0.0) += w * v;
                }
            }
            Row {
                terms: acc.into_iter().filter(|&(_, w)| w != 0.0).collect(),
                bias,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composition_matches_applying_both() {
        let inner = vec![
            Row {
                terms: vec![(0, 1.0), (1, 2.0)],
                bias: 0.5,
            },
            Row {
                terms: vec![(1, -1.0)],
                bias: 1.0,
            },
        ];
        let outer = vec![Row {
            terms: vec![(0, 3.0), (1, 4.0)],
            bias: -2.0,
        }];
        let x = [5.0, 7.0];
        let apply = |rows: &[Row], x: &[f64]| -> Vec<f64> {
            rows.iter()
                .map(|r| r.bias + r.terms.iter().map(|&(j, w)| w * x[j]).sum::<f64>())
                .collect()
        };
        let two = apply(&outer, &apply(&inner, &x));
        let one = apply(&compose(&outer, &inner), &x);
        assert_eq!(two, one);
    }
}
