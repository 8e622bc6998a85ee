//! Batch-mode plans executed under encryption at a small ring degree (toy, insecure
//! parameters) against the cleartext executor, image by image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use hecnn_ckks::{CkksParams, Decryptor, Evaluator, encrypt_sk};
use hecnn_nn::{
    Model, Op, RewriteOptions, Tensor,
    batch::{self, BatchPlan, Form},
    exec,
    ir::{Conv2d, Dense, Node, Pool},
    rewrite,
};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey};

fn values(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    hecnn_testkit::uniform_values(seed, n)
        .into_iter()
        .map(|v| v * scale)
        .collect()
}

fn node(name: &str, op: Op, inputs: Vec<usize>) -> Node {
    Node {
        name: name.into(),
        op,
        inputs,
    }
}

fn conv(seed: u64, o: usize, i: usize, k: usize, stride: usize, pad: usize) -> Op {
    Op::Conv2d(Conv2d {
        weight: Tensor::new(vec![o, i, k, k], values(seed, o * i * k * k, 0.6)).unwrap(),
        bias: values(seed + 1, o, 0.2),
        stride: [stride; 2],
        padding: [pad; 4],
        groups: 1,
    })
}

/// A miniature HCNN: conv (stride 2, padding) → x² → conv → a·x²+b·x+c → avg pool → residual
/// add → dense.
fn small_cnn() -> Model {
    Model {
        name: "small".into(),
        input_shape: [2, 6, 6],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node("conv1", conv(1, 3, 2, 3, 2, 1), vec![0]),
            node("sq1", Op::Poly(vec![0.0, 0.0, 1.0]), vec![1]),
            node("conv2", conv(3, 3, 3, 3, 1, 1), vec![2]),
            node("act2", Op::Poly(vec![0.1, 0.5, 0.25]), vec![3]),
            node("res", Op::Add, vec![4, 2]),
            node(
                "pool",
                Op::AvgPool(Pool {
                    kernel: [2, 2],
                    stride: [1, 1],
                    padding: [0; 4],
                }),
                vec![5],
            ),
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
    let params =
        Arc::new(CkksParams::from_literal(&hecnn_testkit::toy_literal(10, depth), 40).unwrap());
    let be = CpuBackend::new(2).unwrap();
    let mut rng = Prng::from_seed([5; 32]);
    let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    let keys = sk
        .evaluation_keys(&be, &KeyRequirements::relin(), &mut rng)
        .unwrap();
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();

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
    let mut steps = 0;
    let (out, map) = plan.run_encrypted(&eval, cts, |_, _| steps += 1).unwrap();
    assert_eq!(steps, model.nodes.len());
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
    let lit = batch::parameters(
        plan.depth(),
        10,
        hecnn_rlwe::SecurityLevel::UncheckedForReproduction,
    );
    let params = hecnn_rlwe::Params::from_bytes(&lit.build().unwrap().to_bytes()).unwrap();
    let engine = batch::Packed::new(params.q());
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
