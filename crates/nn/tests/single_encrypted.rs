//! Single-image plans executed under encryption at a small ring degree (toy, insecure
//! parameters) against the cleartext executor: every layer type, stride 1 and 2, padding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{Toy, conv, node, toy, values};
use hecnn_ckks::{Decryptor, encrypt_sk};
use hecnn_nn::{
    Model, Op, RewriteOptions, Tensor, exec,
    ir::{Dense, Pool},
    rewrite,
    single::SinglePlan,
};
use hecnn_ring::Prng;
use std::collections::BTreeSet;

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
            node(
                "pool",
                Op::AvgPool(Pool {
                    kernel: [2, 2],
                    stride: [1, 1],
                    padding: [0; 4],
                }),
                vec![4],
            ),
            node("flat", Op::Flatten, vec![5]),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![5, 16], values(35, 80, 0.5)).unwrap(),
                    bias: values(36, 5, 0.1),
                }),
                vec![6],
            ),
        ],
        output: 7,
    }
}

#[test]
fn encrypted_single_image_matches_cleartext() {
    let model = rewrite(&model(), &RewriteOptions::default()).unwrap();
    let plan = SinglePlan::new(&model).unwrap();
    assert_eq!(plan.slots(), 128, "108 neurons after conv1");
    assert_eq!(plan.depth(), 6);
    let mut rng = Prng::from_seed([3; 32]);
    let Toy {
        params,
        be,
        sk,
        eval,
    } = toy(10, plan.depth(), plan.rotations(), &mut rng);
    let encoded = plan.encode(&eval, params.max_level()).unwrap();
    let dec = Decryptor::new(&sk, &be).unwrap();
    let mut worst = 0.0f64;
    for i in 0..3 {
        let image = Tensor::new(
            vec![2, 6, 6],
            values(40 + i, 72, 1.0).into_iter().map(f64::abs).collect(),
        )
        .unwrap();
        let ct = plan
            .encrypt_image(&eval, &image, params.max_level(), |pt| {
                encrypt_sk(&sk, &be, pt, &mut rng)
            })
            .unwrap();
        let (out, map) = plan.run(&eval, &encoded, ct).unwrap();
        assert_eq!(out.level(), params.max_level() - plan.depth());
        let got = plan
            .decrypt_output(&eval, &out, map, |c| dec.decrypt(c))
            .unwrap();
        let want = exec::run(&model, &image).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want.data()) {
            worst = worst.max((g - w).abs());
        }
    }
    assert!(worst < 1e-4, "max |encrypted − cleartext| = {worst:e}");
}

#[test]
fn single_mode_refuses_what_it_cannot_run_and_bad_inputs() {
    let mut m = model();
    m.nodes[5] = node("res", Op::Add, vec![4, 4]);
    assert!(SinglePlan::new(&m).is_err(), "residual additions");
    let mut m = model();
    m.nodes[2].op = Op::Poly(vec![0.0, 0.0, 0.0, 1.0]);
    assert!(SinglePlan::new(&m).is_err(), "degree 3");

    let plan = SinglePlan::new(&rewrite(&model(), &RewriteOptions::default()).unwrap()).unwrap();
    // Too few levels and too few slots are typed errors, not panics.
    let mut rng = Prng::from_seed([4; 32]);
    let Toy {
        params,
        be,
        sk,
        eval,
    } = toy(10, 3, BTreeSet::new(), &mut rng);
    assert!(plan.encode(&eval, params.max_level()).is_err(), "levels");
    let small = toy(7, plan.depth(), BTreeSet::new(), &mut rng);
    assert!(
        plan.encode(&small.eval, small.params.max_level()).is_err(),
        "slots"
    );
    let wrong = Tensor::new(vec![1, 2, 2], vec![0.0; 4]).unwrap();
    assert!(
        plan.encrypt_image(&eval, &wrong, params.max_level(), |pt| encrypt_sk(
            &sk, &be, pt, &mut rng
        ))
        .is_err()
    );
}
