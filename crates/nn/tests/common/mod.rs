//! Model-building helpers shared by the encrypted-plan tests.
#![allow(dead_code, clippy::unwrap_used)]

use hecnn_nn::{
    Op, Tensor,
    ir::{Conv2d, Node},
};

/// `n` deterministic values in `[-scale, scale]`.
pub fn values(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    hecnn_testkit::uniform_values(seed, n)
        .into_iter()
        .map(|v| v * scale)
        .collect()
}

/// A graph node.
pub fn node(name: &str, op: Op, inputs: Vec<usize>) -> Node {
    Node {
        name: name.into(),
        op,
        inputs,
    }
}

/// A `k×k` convolution from `i` to `o` channels with weights in `[-w, w]` and biases in
/// `[-0.2, 0.2]`.
pub fn conv(seed: u64, (o, i, k): (usize, usize, usize), stride: usize, pad: usize, w: f64) -> Op {
    Op::Conv2d(Conv2d {
        weight: Tensor::new(vec![o, i, k, k], values(seed, o * i * k * k, w)).unwrap(),
        bias: values(seed + 1, o, 0.2),
        stride: [stride; 2],
        padding: [pad; 4],
        groups: 1,
    })
}
