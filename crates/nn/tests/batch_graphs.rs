//! Batch plans on graph shapes the CNN tests do not cover: a fused layer feeding a streamed
//! chain, an Add of a pooled branch, branches numbered inside a chain, a global average pool
//! of an affine-plus-square activation as the output, overlapping pools and a square of a
//! square. Each runs in the packed cleartext engine and must match the executor at exactly
//! the planned depth, with non-decreasing progress.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
use common::{node, pool};
use hecnn_nn::{
    Model, Op, Tensor,
    batch::BatchPlan,
    exec,
    ir::{Conv2d, Dense, Pool},
};

fn vals(n: usize, s: f64) -> Vec<f64> {
    (0..n)
        .map(|i| ((i as f64) * 0.37 + 0.1).sin() * s)
        .collect()
}

fn run_packed(model: &Model, n_in: usize) -> (usize, Vec<(usize, usize)>, Result<usize, String>) {
    let plan = BatchPlan::new(model).unwrap();
    let depth = plan.depth();
    let lit = hecnn_nn::compile::params::literal(
        hecnn_nn::compile::params::Chain::Batch,
        depth,
        10,
        hecnn_rlwe::SecurityLevel::UncheckedForReproduction,
    )
    .unwrap()
    .0;
    let params = hecnn_rlwe::Params::from_bytes(&lit.build().unwrap().to_bytes()).unwrap();
    let engine = hecnn_nn::scheme::Packed::new(params.q());
    let img = Tensor::new(
        model.input_shape.to_vec(),
        vals(n_in, 1.0).iter().map(|v| v.abs()).collect(),
    )
    .unwrap();
    let cols: Vec<Vec<f64>> = img.data().iter().map(|&v| vec![v]).collect();
    let inputs = engine.inputs(cols, params.max_level(), 2f64.powi(30));
    let mut prog = Vec::new();
    let r = plan.run(&engine, inputs, |d, t| prog.push((d, t)));
    assert!(
        prog.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress went backwards: {prog:?}"
    );
    let r = r.map_err(|e| e.to_string()).map(|(out, map)| {
        let want = exec::run(model, &img).unwrap();
        for (k, w) in want.data().iter().enumerate() {
            let got = map.a * out[k].slots[0] + map.gamma;
            assert!((got - w).abs() < 1e-5, "logit {k}: {got} vs {w}");
        }
        params.max_level() - out[0].level
    });
    (depth, prog, r)
}

#[test]
fn fused_padded_pool_feeding_a_dense_chain() {
    // padded pool (non-uniform, 18 -> 32 neurons) fused into dense
    let model = Model {
        name: "p".into(),
        input_shape: [2, 3, 3],
        nodes: vec![
            node("x", Op::Input, vec![]),
            node("sq", Op::Poly(vec![0.0, 0.0, 1.0]), vec![0]),
            node(
                "pool",
                Op::AvgPool(Pool {
                    kernel: [2, 2],
                    stride: [1, 1],
                    padding: [1; 4],
                }),
                vec![1],
            ),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![2, 32], vals(64, 0.5)).unwrap(),
                    bias: vec![0.5, -0.25],
                }),
                vec![2],
            ),
        ],
        output: 3,
    };
    let (depth, _, r) = run_packed(&model, 18);
    assert_eq!(r, Ok(depth));
}

#[test]
fn add_of_a_pooled_branch_and_a_convolution() {
    // conv stride 2 branch + avgpool stride 2 skip -> add -> dense
    let model = Model {
        name: "p".into(),
        input_shape: [1, 4, 4],
        nodes: vec![
            node("x", Op::Input, vec![]),
            node(
                "conv",
                Op::Conv2d(Conv2d {
                    weight: Tensor::new(vec![1, 1, 2, 2], vals(4, 0.6)).unwrap(),
                    bias: vec![0.1],
                    stride: [2, 2],
                    padding: [0; 4],
                    groups: 1,
                }),
                vec![0],
            ),
            node("pool", Op::AvgPool(pool(2, 2)), vec![0]),
            node("add", Op::Add, vec![1, 2]),
            node("flat", Op::Flatten, vec![3]),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![2, 4], vals(8, 0.5)).unwrap(),
                    bias: vec![0.5, -0.25],
                }),
                vec![4],
            ),
        ],
        output: 5,
    };
    let (depth, _, r) = run_packed(&model, 16);
    assert_eq!(r, Ok(depth));
}

#[test]
fn progress_never_goes_backwards_across_branches() {
    // conv1 -> sq -> pool chain, with an unrelated branch node id in between
    let model = Model {
        name: "p".into(),
        input_shape: [1, 4, 4],
        nodes: vec![
            node("x", Op::Input, vec![]),
            node(
                "conv",
                Op::Conv2d(Conv2d {
                    weight: Tensor::new(vec![1, 1, 3, 3], vals(9, 0.6)).unwrap(),
                    bias: vec![0.1],
                    stride: [1, 1],
                    padding: [1; 4],
                    groups: 1,
                }),
                vec![0],
            ),
            node(
                "convb",
                Op::Conv2d(Conv2d {
                    weight: Tensor::new(vec![1, 1, 2, 2], vals(4, 0.3)).unwrap(),
                    bias: vec![0.2],
                    stride: [2, 2],
                    padding: [0; 4],
                    groups: 1,
                }),
                vec![0],
            ),
            node("sq", Op::Poly(vec![0.0, 0.0, 1.0]), vec![1]),
            node("pool", Op::AvgPool(pool(2, 2)), vec![3]),
            node("add", Op::Add, vec![4, 2]),
        ],
        output: 5,
    };
    let (depth, prog, r) = run_packed(&model, 16);
    assert_eq!(r, Ok(depth));
    assert_eq!(prog.last(), Some(&(6, 6)));
}

#[test]
fn global_pool_of_a_quadratic_activation_as_output() {
    let model = Model {
        name: "p".into(),
        input_shape: [2, 4, 4],
        nodes: vec![
            node("x", Op::Input, vec![]),
            node(
                "conv",
                Op::Conv2d(Conv2d {
                    weight: Tensor::new(vec![3, 2, 3, 3], vals(54, 0.6)).unwrap(),
                    bias: vec![0.1, 0.2, -0.3],
                    stride: [1, 1],
                    padding: [1; 4],
                    groups: 1,
                }),
                vec![0],
            ),
            node("act", Op::Poly(vec![0.1, 0.5, 0.25]), vec![1]),
            node("gap", Op::GlobalAvgPool, vec![2]),
        ],
        output: 3,
    };
    let (depth, _, r) = run_packed(&model, 32);
    assert_eq!(r, Ok(depth));
}

#[test]
fn overlapping_pool_after_a_square_of_a_square() {
    let model = Model {
        name: "p".into(),
        input_shape: [1, 5, 5],
        nodes: vec![
            node("x", Op::Input, vec![]),
            node(
                "conv",
                Op::Conv2d(Conv2d {
                    weight: Tensor::new(vec![2, 1, 3, 3], vals(18, 0.6)).unwrap(),
                    bias: vec![0.1, 0.2],
                    stride: [1, 1],
                    padding: [1; 4],
                    groups: 1,
                }),
                vec![0],
            ),
            node("act", Op::Poly(vec![0.1, 0.5, 0.25]), vec![1]),
            node("aff", Op::Poly(vec![0.3, 2.0]), vec![2]),
            node("sq", Op::Poly(vec![0.0, 0.0, 1.0]), vec![3]),
            node("pool", Op::AvgPool(pool(3, 1)), vec![4]),
            node("flat", Op::Flatten, vec![5]),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![2, 18], vals(36, 0.5)).unwrap(),
                    bias: vec![0.5, -0.25],
                }),
                vec![6],
            ),
        ],
        output: 7,
    };
    let (depth, _, r) = run_packed(&model, 25);
    assert_eq!(r, Ok(depth));
}
