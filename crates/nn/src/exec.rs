//! The cleartext reference executor: evaluates a model on one input in `f64`.

use crate::{Model, NnError, Op, Tensor, ir::Pool};

/// Runs `model` on one `C×H×W` input and returns the output node's values.
///
/// # Errors
/// [`NnError::Shape`] if the input does not match the model. (ReLU and max pooling are
/// evaluated exactly here, so that rewrites can be compared against the original.)
pub fn run(model: &Model, input: &Tensor) -> Result<Tensor, NnError> {
    let mut all = run_all(model, input)?;
    Ok(all.swap_remove(model.output))
}

/// Runs `model` and returns every node's values (for calibration).
///
/// # Errors
/// See [`run`].
pub fn run_all(model: &Model, input: &Tensor) -> Result<Vec<Tensor>, NnError> {
    let shapes = model.shapes()?;
    if input.shape() != model.input_shape {
        return Err(NnError::Shape(format!(
            "input shape {:?}, model expects {:?}",
            input.shape(),
            model.input_shape
        )));
    }
    let mut values: Vec<Tensor> = Vec::with_capacity(model.nodes.len());
    for (id, node) in model.nodes.iter().enumerate() {
        let x = |k: usize| &values[node.inputs[k]];
        let out = match &node.op {
            Op::Input => input.clone(),
            Op::Conv2d(c) => {
                let x = x(0);
                let [h, w] = [x.shape()[1], x.shape()[2]];
                let (oc, oh, ow) = (shapes[id][0], shapes[id][1], shapes[id][2]);
                let ws = c.weight.shape();
                let (cig, kh, kw) = (ws[1], ws[2], ws[3]);
                let ocg = oc / c.groups;
                let mut out = Tensor::zeros(vec![oc, oh, ow]);
                let wd = c.weight.data();
                let xd = x.data();
                for o in 0..oc {
                    let g = o / ocg;
                    for y in 0..oh {
                        for z in 0..ow {
                            let mut acc = c.bias[o];
                            for i in 0..cig {
                                let ic = g * cig + i;
                                for a in 0..kh {
                                    let iy = (y * c.stride[0] + a) as isize - c.padding[0] as isize;
                                    if iy < 0 || iy >= h as isize {
                                        continue;
                                    }
                                    for b in 0..kw {
                                        let ix =
                                            (z * c.stride[1] + b) as isize - c.padding[1] as isize;
                                        if ix < 0 || ix >= w as isize {
                                            continue;
                                        }
                                        acc += wd[((o * cig + i) * kh + a) * kw + b]
                                            * xd[(ic * h + iy as usize) * w + ix as usize];
                                    }
                                }
                            }
                            out.data_mut()[(o * oh + y) * ow + z] = acc;
                        }
                    }
                }
                out
            }
            Op::Dense(d) => {
                let xd = x(0).data();
                let n_in = xd.len();
                let out: Vec<f64> = (0..d.bias.len())
                    .map(|o| {
                        d.bias[o]
                            + d.weight.data()[o * n_in..(o + 1) * n_in]
                                .iter()
                                .zip(xd)
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                    })
                    .collect();
                Tensor::new(vec![out.len()], out)?
            }
            Op::AvgPool(p) => pool(x(0), p, &shapes[id], false),
            Op::MaxPool(p) => pool(x(0), p, &shapes[id], true),
            Op::GlobalAvgPool => {
                let x = x(0);
                let c = x.shape()[0];
                let hw = x.len() / c;
                let v = (0..c)
                    .map(|k| x.data()[k * hw..(k + 1) * hw].iter().sum::<f64>() / hw as f64)
                    .collect();
                Tensor::new(vec![c, 1, 1], v)?
            }
            Op::BatchNorm(b) => per_channel(x(0), |k, v| {
                (v - b.mean[k]) / (b.var[k] + b.epsilon).sqrt() * b.scale[k] + b.bias[k]
            }),
            Op::ChannelAffine { scale, shift } => per_channel(x(0), |k, v| v * scale[k] + shift[k]),
            Op::Flatten => x(0).clone().reshaped(vec![x(0).len()])?,
            Op::Add => {
                let (a, b) = (x(0), x(1));
                let v = a.data().iter().zip(b.data()).map(|(p, q)| p + q).collect();
                Tensor::new(a.shape().to_vec(), v)?
            }
            Op::Poly(c) => {
                let v = x(0).data().iter().map(|&t| eval_poly(c, t)).collect();
                Tensor::new(x(0).shape().to_vec(), v)?
            }
            Op::ChannelPoly(c) => per_channel(x(0), |k, v| eval_poly(&c[k], v)),
            Op::Relu => {
                let v = x(0).data().iter().map(|&t| t.max(0.0)).collect();
                Tensor::new(x(0).shape().to_vec(), v)?
            }
        };
        values.push(out);
    }
    Ok(values)
}

/// Index of the largest value (the first on ties; 0 for an empty slice).
pub fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

/// `Σ c_i t^i` by Horner's rule.
pub fn eval_poly(c: &[f64], t: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &k| acc * t + k)
}

fn per_channel(x: &Tensor, f: impl Fn(usize, f64) -> f64) -> Tensor {
    let c = x.shape()[0];
    let per = x.len() / c.max(1);
    let v = x
        .data()
        .iter()
        .enumerate()
        .map(|(i, &t)| f(i / per.max(1), t))
        .collect();
    Tensor::new(x.shape().to_vec(), v).unwrap_or_else(|_| x.clone())
}

fn pool(x: &Tensor, p: &Pool, out_shape: &[usize], max: bool) -> Tensor {
    let [c, h, w] = [x.shape()[0], x.shape()[1], x.shape()[2]];
    let (oh, ow) = (out_shape[1], out_shape[2]);
    let mut out = Tensor::zeros(vec![c, oh, ow]);
    let area = (p.kernel[0] * p.kernel[1]) as f64;
    for k in 0..c {
        for y in 0..oh {
            for z in 0..ow {
                let mut acc = if max { f64::NEG_INFINITY } else { 0.0 };
                for a in 0..p.kernel[0] {
                    for b in 0..p.kernel[1] {
                        let iy = (y * p.stride[0] + a) as isize - p.padding[0] as isize;
                        let ix = (z * p.stride[1] + b) as isize - p.padding[1] as isize;
                        let v = if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            0.0
                        } else {
                            x.data()[(k * h + iy as usize) * w + ix as usize]
                        };
                        acc = if max { acc.max(v) } else { acc + v };
                    }
                }
                out.data_mut()[(k * oh + y) * ow + z] = if max { acc } else { acc / area };
            }
        }
    }
    out
}
