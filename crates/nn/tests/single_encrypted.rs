//! Single-image plans executed under encryption at small ring degrees (toy, insecure
//! parameters, and the chain single-image mode runs with) against the cleartext executor:
//! every layer type (convolutions plain, strided and grouped, average and global average
//! pooling, dense layers, activations), stride 1 and 2, symmetric and asymmetric padding,
//! non-square inputs and kernels, composed linear stages, values spread over several
//! ciphertexts, pruned channels, and the summed (hybrid) dense layout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{Toy, conv, node, toy, toy_with, values};
use hecnn_ckks::{Decryptor, encrypt_sk};
use hecnn_nn::{
    Model, Op, RewriteOptions, Tensor, exec,
    ir::{Conv2d, Dense, Pool},
    rewrite,
    single::{self, SinglePlan},
};
use hecnn_ring::Prng;
use hecnn_rlwe::SecurityLevel;
use std::collections::BTreeSet;

fn pool(k: usize, stride: usize) -> Op {
    Op::AvgPool(Pool {
        kernel: [k, k],
        stride: [stride, stride],
        padding: [0; 4],
    })
}

fn dense(seed: u64, o: usize, i: usize) -> Op {
    Op::Dense(Dense {
        weight: Tensor::new(vec![o, i], values(seed, o * i, 0.5)).unwrap(),
        bias: values(seed + 1, o, 0.1),
    })
}

/// conv (stride 1, padding 1) → a·x²+b·x+c → conv (stride 2, padding 1) → x² → avg pool →
/// flatten → dense.
fn model() -> Model {
    Model {
        name: "single".into(),
        input_shape: [2, 6, 6],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node("conv1", conv(31, (3, 2, 3), 1, 1, 0.5), vec![0]),
            node("act1", Op::Poly(vec![0.1, 0.5, 0.25]), vec![1]),
            node("conv2", conv(33, (4, 3, 3), 2, 1, 0.5), vec![2]),
            node("sq2", Op::Poly(vec![0.0, 0.0, 1.0]), vec![3]),
            node("pool", pool(2, 1), vec![4]),
            node("flat", Op::Flatten, vec![5]),
            node("fc", dense(35, 5, 16), vec![6]),
        ],
        output: 7,
    }
}

/// HCNN-like: conv 5×5 stride 2 without padding → x² → avg pool 2 (stride 2) composed with
/// conv 3×3 padding 1 → x² → dense → dense (composed).
fn strided_model() -> Model {
    Model {
        name: "strided".into(),
        input_shape: [1, 16, 16],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node("conv1", conv(41, (4, 1, 5), 2, 0, 0.4), vec![0]),
            node("sq1", Op::Poly(vec![0.0, 0.0, 1.0]), vec![1]),
            node("pool", pool(2, 2), vec![2]),
            node("conv2", conv(43, (6, 4, 3), 1, 1, 0.3), vec![3]),
            node("sq2", Op::Poly(vec![0.0, 0.3, 0.5]), vec![4]),
            node("flat", Op::Flatten, vec![5]),
            node("fc1", dense(45, 12, 54), vec![6]),
            node("fc2", dense(47, 3, 12), vec![7]),
        ],
        output: 8,
    }
}

/// Encrypts `images` images, runs the plan at `2^log_n`, and returns the largest difference
/// from the cleartext executor.
fn worst_error(model: &Model, log_n: u32, images: u64, seed: u8) -> (f64, SinglePlan) {
    worst_error_with(model, log_n, images, seed, false)
}

/// As [`worst_error`]; with `chain`, under the parameters single-image mode runs with
/// ([`hecnn_nn::compile::params`]: scale 2^26, base and special primes above it), unchecked at
/// this small degree, instead of the toy chain at scale 2^40.
fn worst_error_with(
    model: &Model,
    log_n: u32,
    images: u64,
    seed: u8,
    chain: bool,
) -> (f64, SinglePlan) {
    let model = rewrite(model, &RewriteOptions::default()).unwrap();
    let depth = single::depth(&model).unwrap();
    let plan = SinglePlan::new(&model, 1 << (log_n - 1)).unwrap();
    assert_eq!(plan.depth(), depth);
    let mut rng = Prng::from_seed([seed; 32]);
    let Toy {
        params,
        be,
        sk,
        eval,
    } = if chain {
        let (lit, log_scale) = hecnn_nn::compile::params::literal(
            hecnn_nn::compile::params::Chain::Single,
            depth,
            log_n,
            SecurityLevel::UncheckedForReproduction,
        )
        .unwrap();
        assert_eq!(log_scale, single::MIN_LOG_SCALE);
        toy_with(&lit, log_scale, plan.rotations(), &mut rng)
    } else {
        toy(log_n, depth, plan.rotations(), &mut rng)
    };
    let encoded = plan
        .encode(&eval, params.max_level(), params.default_scale())
        .unwrap();
    let dec = Decryptor::new(&sk, &be).unwrap();
    let [c, h, w] = model.input_shape;
    let mut worst = 0.0f64;
    for i in 0..images {
        let image = Tensor::new(
            vec![c, h, w],
            values(40 + i, c * h * w, 1.0)
                .into_iter()
                .map(f64::abs)
                .collect(),
        )
        .unwrap();
        let cts = plan
            .encrypt_image(&eval, &image, params.max_level(), |pt| {
                encrypt_sk(&sk, &be, pt, &mut rng)
            })
            .unwrap();
        assert_eq!(cts.len(), plan.input_cts());
        let (out, map) = plan.run(&eval, &encoded, cts).unwrap();
        assert!(out.iter().all(|c| c.level() == params.max_level() - depth));
        let got = plan
            .decrypt_output(&eval, &out, map, |c| dec.decrypt(c))
            .unwrap();
        let want = exec::run(&model, &image).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want.data()) {
            worst = worst.max((g - w).abs());
        }
    }
    (worst, plan)
}

#[test]
fn encrypted_single_image_matches_cleartext() {
    let (worst, plan) = worst_error(&model(), 10, 3, 3);
    assert!(worst < 1e-4, "max |encrypted − cleartext| = {worst:e}");
    // conv1, conv2, pool + flatten + dense composed into one stage.
    assert_eq!(plan.depth(), 5);
    assert_eq!(plan.layers().len(), 3);
    assert_eq!(plan.input_cts(), 1);
}

#[test]
fn values_spread_over_several_ciphertexts() {
    // 64 slots: each 6×6 input channel takes a ciphertext of its own, conv1's 108 outputs
    // several.
    let (worst, plan) = worst_error(&model(), 7, 2, 5);
    assert!(worst < 1e-4, "max |encrypted − cleartext| = {worst:e}");
    assert_eq!(plan.input_cts(), 2);
    assert!(
        plan.layers().iter().any(|l| l.cts.1 > 1),
        "{:?}",
        plan.layers()
    );
}

#[test]
fn strided_layers_keep_the_kernel_offsets_as_diagonals() {
    let (worst, plan) = worst_error(&strided_model(), 10, 2, 7);
    assert!(worst < 1e-4, "max |encrypted − cleartext| = {worst:e}");
    let layers = plan.layers();
    assert_eq!(layers.len(), 3, "pool + conv2 and fc1 + fc2 compose");
    // conv1: 25 kernel offsets × the channel offsets of a gap-2 grid, far fewer than the
    // 256 diagonals of a compact layout.
    assert!(layers[0].layout.contains("gap 2×2"), "{:?}", layers[0]);
    assert!(layers[0].diagonals < 100, "{:?}", layers[0]);
    // The 3-output dense layer sums partial rows.
    assert!(layers[2].rotations.2 > 0, "{:?}", layers[2]);
    assert!(layers[2].diagonals <= 4, "{:?}", layers[2]);
}

/// The edge cases: a non-square input and kernel, stride (2, 1) with asymmetric padding, a
/// grouped convolution with padding on the far sides only, average pooling with padding, a
/// global average pool composed with the dense layer.
fn edge_model() -> Model {
    let conv_with = |seed, (o, i, kh, kw), stride: [usize; 2], padding, groups| {
        Op::Conv2d(Conv2d {
            weight: Tensor::new(vec![o, i, kh, kw], values(seed, o * i * kh * kw, 0.5)).unwrap(),
            bias: values(seed + 1, o, 0.2),
            stride,
            padding,
            groups,
        })
    };
    Model {
        name: "edges".into(),
        input_shape: [2, 7, 6],
        nodes: vec![
            node("input", Op::Input, vec![]),
            // 2×7×6 → 4×3×6
            node(
                "conv1",
                conv_with(51, (4, 2, 3, 2), [2, 1], [1, 0, 0, 1], 1),
                vec![0],
            ),
            node("act1", Op::Poly(vec![0.0, 0.5, 0.3]), vec![1]),
            // grouped, 4×3×6 → 4×3×6
            node(
                "conv2",
                conv_with(53, (4, 2, 2, 2), [1, 1], [0, 1, 1, 0], 2),
                vec![2],
            ),
            // padded pooling, 4×3×6 → 4×2×3
            node(
                "pool",
                Op::AvgPool(Pool {
                    kernel: [3, 3],
                    stride: [2, 2],
                    padding: [1, 1, 1, 1],
                }),
                vec![3],
            ),
            node("sq", Op::Poly(vec![0.0, 0.0, 1.0]), vec![4]),
            node("gap", Op::GlobalAvgPool, vec![5]),
            node("flat", Op::Flatten, vec![6]),
            node("fc", dense(55, 3, 4), vec![7]),
        ],
        output: 8,
    }
}

#[test]
fn padding_stride_and_pooling_edge_cases() {
    let image = Tensor::zeros(vec![2, 7, 6]);
    assert_eq!(
        exec::run_all(&edge_model(), &image).unwrap()[4].shape(),
        [4, 2, 3]
    );
    let (worst, plan) = worst_error(&edge_model(), 10, 2, 11);
    assert!(worst < 1e-4, "max |encrypted − cleartext| = {worst:e}");
    // conv1; conv2 + pool; gap + flatten + fc.
    assert_eq!(plan.layers().len(), 3, "{:?}", plan.layers());
    assert_eq!(plan.depth(), 5);
}

#[test]
fn the_parameters_single_mode_runs_with() {
    // Scale 2^26 instead of 2^40: the error grows by about 2^14 (measured near 1e-4, from
    // 1e-9), still far below the margins between logits.
    let (worst, _) = worst_error_with(&model(), 10, 2, 13, true);
    assert!(worst < 1e-3, "max |encrypted − cleartext| = {worst:e}");
    let (worst, _) = worst_error_with(&strided_model(), 10, 1, 15, true);
    assert!(worst < 1e-3, "max |encrypted − cleartext| = {worst:e}");
}

#[test]
fn a_pruned_channel_still_gets_its_ciphertext() {
    // At 64 slots every 6×6 channel of conv1 has a ciphertext of its own; with channel 2's
    // weights and bias zero, that ciphertext's block has no diagonal at all.
    let mut m = model();
    let Op::Conv2d(c) = &mut m.nodes[1].op else {
        panic!("conv1 is a convolution")
    };
    let per = c.weight.len() / 3;
    c.weight.data_mut()[2 * per..].fill(0.0);
    c.bias[2] = 0.0;
    let (worst, plan) = worst_error(&m, 7, 1, 9);
    assert!(worst < 1e-4, "max |encrypted − cleartext| = {worst:e}");
    assert!(plan.layers()[0].cts.1 >= 3, "{:?}", plan.layers());
}

#[test]
fn the_slot_magnitude_bound_sees_every_stage() {
    let good = rewrite(&model(), &RewriteOptions::default()).unwrap();
    let plan = SinglePlan::new(&good, 512).unwrap();
    let image = Tensor::new(vec![2, 6, 6], values(5, 72, 1.0)).unwrap();
    let max = plan.max_slot_magnitude(&image).unwrap();
    let logits = exec::run(&good, &image).unwrap();
    let largest = |t: &[f64]| t.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(max >= largest(logits.data()) && max >= largest(image.data()));
    assert!(max < f64::from(1u32 << single::VALUE_BOUND_BITS), "{max}");
    // Blow up one hidden layer: the bound sees it.
    let mut big = model();
    let Op::Conv2d(c) = &mut big.nodes[3].op else {
        panic!("conv2 is a convolution")
    };
    c.weight.data_mut().iter_mut().for_each(|w| *w *= 1e4);
    let big = rewrite(&big, &RewriteOptions::default()).unwrap();
    let plan = SinglePlan::new(&big, 512).unwrap();
    let max = plan.max_slot_magnitude(&image).unwrap();
    assert!(max > f64::from(1u32 << single::VALUE_BOUND_BITS), "{max}");
    assert!(
        plan.max_slot_magnitude(&Tensor::zeros(vec![1, 2, 2]))
            .is_err()
    );
}

/// The error's message, for checking that a refusal is the expected one.
fn refusal<T>(r: Result<T, hecnn_nn::NnError>) -> String {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn single_mode_refuses_what_it_cannot_run_and_bad_inputs() {
    // A residual addition of conv2's output and its square (in place of the pooling, with
    // the dense layer widened to match) plans: the addition joins the dense layer's stage.
    let mut m = model();
    m.nodes[5] = node("res", Op::Add, vec![4, 3]);
    m.nodes[7] = node("fc", dense(35, 5, 36), vec![6]);
    assert!(exec::run(&m, &Tensor::zeros(vec![2, 6, 6])).is_ok());
    assert!(SinglePlan::new(&m, 512).is_ok());
    let mut m = model();
    m.nodes[2].op = Op::Poly(vec![0.0, 0.0, 0.0, 1.0]);
    let e = refusal(SinglePlan::new(&m, 512));
    assert!(e.contains("degree 3"), "{e}");
    // Trailing zero coefficients do not raise the degree.
    let mut m = model();
    m.nodes[2].op = Op::Poly(vec![0.1, 0.5, 0.25, 0.0]);
    assert!(SinglePlan::new(&m, 512).is_ok());
    let good = rewrite(&model(), &RewriteOptions::default()).unwrap();
    let e = refusal(SinglePlan::new(&good, 500));
    assert!(e.contains("power of two"), "{e}");
    let e = refusal(SinglePlan::new(&good, 16));
    assert!(e.contains("does not fit 16 slots"), "{e}");

    let plan = SinglePlan::new(&good, 512).unwrap();
    // Too few levels and too few slots are typed errors, not panics.
    let mut rng = Prng::from_seed([4; 32]);
    let Toy {
        params,
        be,
        sk,
        eval,
    } = toy(10, 3, BTreeSet::new(), &mut rng);
    let e = refusal(plan.encode(&eval, params.max_level(), params.default_scale()));
    assert!(e.contains("the model needs 5 levels"), "{e}");
    let small = toy(7, plan.depth(), BTreeSet::new(), &mut rng);
    let e = refusal(plan.encode(
        &small.eval,
        small.params.max_level(),
        small.params.default_scale(),
    ));
    assert!(e.contains("at least 512"), "{e}");
    let wrong = Tensor::new(vec![1, 2, 2], vec![0.0; 4]).unwrap();
    let e = refusal(plan.encrypt_image(&eval, &wrong, params.max_level(), |pt| {
        encrypt_sk(&sk, &be, pt, &mut rng)
    }));
    assert!(e.contains("image values: expected 72, got 4"), "{e}");
    // Outputs: too few, too many, or of the wrong slot count are refused.
    let dec = Decryptor::new(&sk, &be).unwrap();
    let image = Tensor::new(vec![2, 6, 6], values(5, 72, 1.0)).unwrap();
    let ct = plan
        .encrypt_image(&eval, &image, params.max_level(), |pt| {
            encrypt_sk(&sk, &be, pt, &mut rng)
        })
        .unwrap();
    assert_eq!(plan.output_cts(), 1);
    let map = hecnn_nn::batch::OutputMap { a: 1.0, gamma: 0.0 };
    for out in [vec![], vec![ct[0].clone(), ct[0].clone()]] {
        let e = refusal(plan.decrypt_output(&eval, &out, map, |c| dec.decrypt(c)));
        assert!(e.contains("expected 1 of 512 slots"), "{e}");
    }
}
