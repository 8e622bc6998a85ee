//! Batch-mode plans executed under encryption at a small ring degree (toy, insecure
//! parameters) against the cleartext executor, image by image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{Toy, conv, node, pool, toy, values};
use hecnn_ckks::{Decryptor, encrypt_sk};
use hecnn_nn::{
    Model, Op, RewriteOptions, Tensor,
    batch::{self, BatchPlan, Form},
    exec,
    ir::Dense,
    rewrite,
};
use hecnn_ring::Prng;
use std::collections::BTreeSet;

/// A miniature HCNN: conv (stride 2, padding) → x² → conv → a·x²+b·x+c → avg pool → residual
/// add → dense.
fn small_cnn() -> Model {
    Model {
        name: "small".into(),
        input_shape: [2, 6, 6],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node("conv1", conv(1, (3, 2, 3), 2, 1, 0.6), vec![0]),
            node("sq1", Op::Poly(vec![0.0, 0.0, 1.0]), vec![1]),
            node("conv2", conv(3, (3, 3, 3), 1, 1, 0.6), vec![2]),
            node("act2", Op::Poly(vec![0.1, 0.5, 0.25]), vec![3]),
            node("res", Op::Add, vec![4, 2]),
            node("pool", Op::AvgPool(pool(2, 1)), vec![5]),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![4, 12], values(9, 48, 0.5)).unwrap(),
                    bias: values(10, 4, 0.1),
                }),
                vec![6],
            ),
        ],
        output: 7,
    }
}

#[test]
fn encrypted_batch_matches_cleartext() {
    let model = rewrite(&small_cnn(), &RewriteOptions::default()).unwrap();
    let plan = BatchPlan::new(&model).unwrap();
    assert_eq!(plan.nodes()[2].form, Form::Squared, "squares are lazy");
    let depth = plan.depth();
    let mut rng = Prng::from_seed([5; 32]);
    let Toy {
        params,
        be,
        sk,
        eval,
    } = toy(10, depth, BTreeSet::new(), &mut rng);

    let count = 200; // fewer images than the 512 slots: the rest are zero
    let images: Vec<Tensor> = (0..count)
        .map(|i| {
            Tensor::new(
                vec![2, 6, 6],
                values(100 + i as u64, 72, 1.0)
                    .into_iter()
                    .map(|v| v.abs())
                    .collect(),
            )
            .unwrap()
        })
        .collect();
    let cts = batch::encrypt_images(&eval, &images, params.max_level(), &mut rng, |pt, r| {
        encrypt_sk(&sk, &be, pt, r)
    })
    .unwrap();
    let mut done = Vec::new();
    let (out, map) = plan
        .run_encrypted(&eval, cts, |d, total| done.push((d, total)))
        .unwrap();
    assert!(
        done.windows(2).all(|w| w[0].0 < w[1].0),
        "progress {done:?}"
    );
    assert_eq!(done.last(), Some(&(model.nodes.len(), model.nodes.len())));
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].level(), params.max_level() - depth);
    let dec = Decryptor::new(&sk, &be).unwrap();
    let logits = batch::decrypt_outputs(&eval, &out, map, count, |ct| dec.decrypt(ct)).unwrap();
    let mut worst = 0.0f64;
    for (img, got) in images.iter().zip(&logits) {
        let want = exec::run(&small_cnn(), img).unwrap();
        for (g, w) in got.iter().zip(want.data()) {
            worst = worst.max((g - w).abs());
        }
    }
    eprintln!(
        "depth {depth}, max error {worst:e}, first logits {:?}",
        &logits[0]
    );
    assert!(worst < 1e-4, "max |encrypted − cleartext| = {worst:e}");
}

#[test]
fn plans_refuse_what_batch_mode_cannot_run() {
    let mut m = small_cnn();
    m.nodes[2].op = Op::Poly(vec![0.0, 0.0, 0.0, 1.0]);
    assert!(BatchPlan::new(&m).is_err(), "degree 3");
    let mut m = small_cnn();
    m.nodes[2].op = Op::Relu;
    assert!(BatchPlan::new(&m).is_err(), "ReLU");
    // Level accounting: conv (1) + conv on a square (2) + the add of a square materializes (2)
    // + the dense layer (1).
    let plan = BatchPlan::new(&rewrite(&small_cnn(), &RewriteOptions::default()).unwrap()).unwrap();
    assert!(plan.depth() >= 4);
}

#[test]
fn packed_cleartext_mode_matches_the_executor_and_simulates_headroom() {
    let model = rewrite(&small_cnn(), &RewriteOptions::default()).unwrap();
    let plan = BatchPlan::new(&model).unwrap();
    let lit = hecnn_nn::compile::params::literal(
        hecnn_nn::compile::params::Chain::Batch,
        plan.depth(),
        10,
        hecnn_rlwe::SecurityLevel::UncheckedForReproduction,
    )
    .unwrap()
    .0;
    let params = hecnn_rlwe::Params::from_bytes(&lit.build().unwrap().to_bytes()).unwrap();
    let engine = hecnn_nn::scheme::Packed::new(params.q());
    let count = 64;
    let images: Vec<Tensor> = (0..count)
        .map(|i| {
            Tensor::new(
                vec![2, 6, 6],
                values(500 + i as u64, 72, 1.0)
                    .into_iter()
                    .map(|v| v.abs())
                    .collect(),
            )
            .unwrap()
        })
        .collect();
    let columns: Vec<Vec<f64>> = (0..72)
        .map(|p| images.iter().map(|img| img.data()[p]).collect())
        .collect();
    let inputs = engine.inputs(
        columns,
        params.max_level(),
        2f64.powi(batch::BATCH_LOG_SCALE as i32),
    );
    let (out, map) = plan.run(&engine, inputs, |_, _| {}).unwrap();
    for (i, img) in images.iter().enumerate() {
        let want = exec::run(&small_cnn(), img).unwrap();
        for (k, w) in want.data().iter().enumerate() {
            let got = map.a * out[k].slots[i] + map.gamma;
            assert!((got - w).abs() < 1e-6, "image {i} logit {k}: {got} vs {w}");
        }
    }
    assert_eq!(
        out[0].level,
        params.max_level() - plan.depth(),
        "levels as in CKKS"
    );
    let headroom = engine.min_headroom_bits();
    assert!(headroom > 10.0, "headroom {headroom:.1} bits");
}

fn pool2() -> Op {
    Op::AvgPool(pool(2, 2))
}

/// HCNN's CIFAR-10 pattern in miniature: [conv → x² → avg pool] ×2 → flatten → dense → dense.
fn pooled_cnn() -> Model {
    Model {
        name: "pooled".into(),
        input_shape: [3, 8, 8],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node("conv1", conv(21, (4, 3, 3), 1, 1, 0.6), vec![0]),
            node("sq1", Op::Poly(vec![0.0, 0.0, 1.0]), vec![1]),
            node("pool1", pool2(), vec![2]),
            node("conv2", conv(23, (8, 4, 3), 1, 1, 0.6), vec![3]),
            node("sq2", Op::Poly(vec![0.0, 0.0, 1.0]), vec![4]),
            node("pool2", pool2(), vec![5]),
            node("flat", Op::Flatten, vec![6]),
            node(
                "fc1",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![6, 32], values(25, 192, 0.4)).unwrap(),
                    bias: values(26, 6, 0.1),
                }),
                vec![7],
            ),
            node(
                "fc2",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![3, 6], values(27, 18, 0.5)).unwrap(),
                    bias: values(28, 3, 0.1),
                }),
                vec![8],
            ),
        ],
        output: 9,
    }
}

fn pooled_images(count: usize, seed: u64) -> Vec<Tensor> {
    (0..count)
        .map(|i| {
            Tensor::new(
                vec![3, 8, 8],
                values(seed + i as u64, 192, 1.0)
                    .into_iter()
                    .map(|v| v.abs())
                    .collect(),
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn pooling_costs_no_level_and_squares_are_relinearized_after_pooling() {
    let model = rewrite(&pooled_cnn(), &RewriteOptions::default()).unwrap();
    let plan = BatchPlan::new(&model).unwrap();
    // conv1 (1) + relinearize/rescale the pooled squares (1) + conv2 (1) + the fused dense
    // layers on lazy squares (2).
    assert_eq!(plan.depth(), 5);
    assert_eq!(plan.nodes()[2].form, Form::Squared, "square stays lazy");
    assert_eq!(
        plan.nodes()[3].form,
        Form::Linear,
        "pooled, then relinearized"
    );
    assert_eq!(
        plan.nodes()[6].form,
        Form::Squared,
        "lazy into the dense layer"
    );
    let (_, squares, relins, _) = plan.op_counts().unwrap();
    assert_eq!(squares, 4 * 64 + 8 * 16);
    // One relinearization per pooled neuron of pool1, one per logit.
    assert_eq!(relins, 4 * 16 + 3);
    // Streaming keeps less alive than the inputs and the 256 neurons after conv1 together
    // (n = 1024, 5 levels: 6 limbs at the input, 5 after conv1).
    let whole_layer = (192 * 6 + 256 * 5) * 2 * 1024 * 8;
    let streamed = BatchPlan::with_chunk_rows(&model, 16).unwrap();
    assert!(streamed.peak_ciphertext_bytes(1024, 5) < whole_layer);
}

#[test]
fn streamed_chunks_of_any_size_give_the_same_values() {
    let model = rewrite(&pooled_cnn(), &RewriteOptions::default()).unwrap();
    let depth = BatchPlan::new(&model).unwrap().depth();
    let lit = hecnn_nn::compile::params::literal(
        hecnn_nn::compile::params::Chain::Batch,
        depth,
        10,
        hecnn_rlwe::SecurityLevel::UncheckedForReproduction,
    )
    .unwrap()
    .0;
    let params = hecnn_rlwe::Params::from_bytes(&lit.build().unwrap().to_bytes()).unwrap();
    let images = pooled_images(16, 700);
    let columns: Vec<Vec<f64>> = (0..192)
        .map(|p| images.iter().map(|img| img.data()[p]).collect())
        .collect();
    let scale = 2f64.powi(batch::BATCH_LOG_SCALE as i32);
    let mut reference: Option<Vec<Vec<f64>>> = None;
    for chunk_rows in [1, 7, 64, 100_000] {
        let plan = BatchPlan::with_chunk_rows(&model, chunk_rows).unwrap();
        let engine = hecnn_nn::scheme::Packed::new(params.q());
        let inputs = engine.inputs(columns.clone(), params.max_level(), scale);
        let (out, map) = plan.run(&engine, inputs, |_, _| {}).unwrap();
        let logits: Vec<Vec<f64>> = (0..images.len())
            .map(|i| out.iter().map(|o| map.a * o.slots[i] + map.gamma).collect())
            .collect();
        for (img, got) in images.iter().zip(&logits) {
            let want = exec::run(&pooled_cnn(), img).unwrap();
            for (g, w) in got.iter().zip(want.data()) {
                assert!((g - w).abs() < 1e-6, "chunk {chunk_rows}: {g} vs {w}");
            }
        }
        match &reference {
            None => reference = Some(logits),
            Some(r) => assert_eq!(r, &logits, "chunk size {chunk_rows} changed the values"),
        }
    }
}

#[test]
fn encrypted_pooled_network_matches_cleartext() {
    let model = rewrite(&pooled_cnn(), &RewriteOptions::default()).unwrap();
    let plan = BatchPlan::with_chunk_rows(&model, 24).unwrap();
    let depth = plan.depth();
    let mut rng = Prng::from_seed([9; 32]);
    let Toy {
        params,
        be,
        sk,
        eval,
    } = toy(10, depth, BTreeSet::new(), &mut rng);
    let images = pooled_images(64, 900);
    let cts = batch::encrypt_images(&eval, &images, params.max_level(), &mut rng, |pt, r| {
        encrypt_sk(&sk, &be, pt, r)
    })
    .unwrap();
    let (out, map) = plan.run_encrypted(&eval, cts, |_, _| {}).unwrap();
    assert_eq!(out[0].level(), params.max_level() - depth);
    let dec = Decryptor::new(&sk, &be).unwrap();
    let logits =
        batch::decrypt_outputs(&eval, &out, map, images.len(), |ct| dec.decrypt(ct)).unwrap();
    let mut worst = 0.0f64;
    for (img, got) in images.iter().zip(&logits) {
        let want = exec::run(&pooled_cnn(), img).unwrap();
        for (g, w) in got.iter().zip(want.data()) {
            worst = worst.max((g - w).abs());
        }
    }
    assert!(worst < 1e-4, "max |encrypted − cleartext| = {worst:e}");
}
