//! Model-building helpers shared by the encrypted-plan tests.
#![allow(dead_code, clippy::unwrap_used)]

use hecnn_nn::{
    Op, Tensor,
    ir::{Conv2d, Node, Pool},
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

/// A `k×k` pooling window with stride `s` and no padding.
pub fn pool(k: usize, s: usize) -> Pool {
    Pool {
        kernel: [k; 2],
        stride: [s; 2],
        padding: [0; 4],
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

/// A toy (insecure) CKKS setup for tests: parameters with `levels` levels at ring degree
/// `2^log_n` and scale 2^40, a secret key, and an evaluator holding the relinearization key
/// and rotation keys for `rotations`. Keys are drawn from `rng`.
pub struct Toy {
    pub params: std::sync::Arc<hecnn_ckks::CkksParams>,
    pub be: hecnn_ring::CpuBackend,
    pub sk: hecnn_rlwe::SecretKey,
    pub eval: hecnn_ckks::Evaluator<hecnn_ring::CpuBackend>,
}

pub fn toy(
    log_n: u32,
    levels: usize,
    rotations: std::collections::BTreeSet<i64>,
    rng: &mut hecnn_ring::Prng,
) -> Toy {
    toy_with(
        &hecnn_testkit::toy_literal(log_n, levels),
        40,
        rotations,
        rng,
    )
}

/// As [`toy`], for given parameters and scale.
pub fn toy_with(
    literal: &hecnn_rlwe::ParamsLiteral,
    log_scale: u32,
    rotations: std::collections::BTreeSet<i64>,
    rng: &mut hecnn_ring::Prng,
) -> Toy {
    let params =
        std::sync::Arc::new(hecnn_ckks::CkksParams::from_literal(literal, log_scale).unwrap());
    let be = hecnn_ring::CpuBackend::new(2).unwrap();
    let sk = hecnn_rlwe::SecretKey::generate(params.rlwe(), rng).unwrap();
    let req = hecnn_rlwe::KeyRequirements::relin().with_rotations(rotations);
    let keys = sk.evaluation_keys(&be, &req, rng).unwrap();
    let eval = hecnn_ckks::Evaluator::new(
        std::sync::Arc::clone(&params),
        std::sync::Arc::new(keys),
        be.clone(),
    )
    .unwrap();
    Toy {
        params,
        be,
        sk,
        eval,
    }
}
