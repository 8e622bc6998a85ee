//! Integer networks in BFV batch packing: quantization, worst-case bounds, parameter
//! choice, and encrypted evaluation whose decrypted outputs equal the integer executor's
//! bit for bit, on small rings (insecure, for speed; the planner's own rings are exercised
//! by `hecnn eval --scheme bfv`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use hecnn_nn::{
    Model, NnError, Op, Tensor,
    bfv_batch::{self, BfvClient, BfvOptions, BfvServer},
    exec,
    ir::{Conv2d, Dense, Node},
    quant::{QuantModel, QuantSpec},
};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{ParamsLiteral, SecretDistribution, SecurityLevel};
use hecnn_testkit::uniform_values;

fn node(name: &str, op: Op, inputs: Vec<usize>) -> Node {
    Node {
        name: name.into(),
        op,
        inputs,
    }
}

/// Conv 3×3 (2 filters) → x² → flatten → dense 3 on a 1×5×5 input.
fn tiny(seed: u64) -> Model {
    let w = uniform_values(seed, 18);
    let d = uniform_values(seed + 1, 3 * 18);
    Model {
        name: "tiny".into(),
        input_shape: [1, 5, 5],
        nodes: vec![
            node("x", Op::Input, vec![]),
            node(
                "conv",
                Op::Conv2d(Conv2d {
                    weight: Tensor::new(vec![2, 1, 3, 3], w).unwrap(),
                    bias: vec![0.1, -0.2],
                    stride: [1, 1],
                    padding: [0; 4],
                    groups: 1,
                }),
                vec![0],
            ),
            node("sq", Op::Poly(vec![0.0, 0.0, 1.0]), vec![1]),
            node("flat", Op::Flatten, vec![2]),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![3, 18], d).unwrap(),
                    bias: vec![0.3, 0.0, -0.1],
                }),
                vec![3],
            ),
        ],
        output: 4,
    }
}

fn ring(log_n: u32, q: usize, bits: u32) -> ParamsLiteral {
    ParamsLiteral {
        log_n,
        log_q: vec![bits; q],
        log_p: vec![bits],
        dnum: None,
        secret: SecretDistribution::Ternary,
        security: SecurityLevel::UncheckedForReproduction,
    }
}

fn images(model: &QuantModel, count: usize, seed: u64) -> Vec<Vec<i64>> {
    (0..count)
        .map(|i| {
            let v = uniform_values(seed + i as u64, model.input_len());
            let x = Tensor::new(
                model.input_shape().to_vec(),
                v.iter().map(|a| a.abs()).collect(),
            )
            .unwrap();
            model.quantize_input(&x).unwrap()
        })
        .collect()
}

#[test]
fn quantized_executor_tracks_the_model_and_bounds_hold() {
    let model = tiny(7);
    let q = QuantModel::quantize(
        &model,
        &QuantSpec {
            input_bits: 8,
            weight_bits: 10,
            ..QuantSpec::default()
        },
    )
    .unwrap();
    let bounds = q.bounds().unwrap();
    for (i, x) in images(&q, 20, 100).iter().enumerate() {
        let y = q.run(x).unwrap();
        for (k, &(lo, hi)) in bounds.outputs.iter().enumerate() {
            assert!(
                lo <= y[k] && y[k] <= hi,
                "image {i} output {k}: {} not in [{lo}, {hi}]",
                y[k]
            );
        }
        // The dequantized outputs approximate the real network on the dequantized input.
        let real: Vec<f64> = x.iter().map(|&v| v as f64 / q.input().scale).collect();
        let want = exec::run(&model, &Tensor::new(vec![1, 5, 5], real).unwrap()).unwrap();
        for (g, w) in q.dequantize(&y).iter().zip(want.data()) {
            assert!(
                (g - w).abs() < 2e-2 * (1.0 + w.abs()),
                "image {i}: {g} vs {w}"
            );
        }
    }
    // The all-ones image reaches the first layer's bound for some neuron exactly.
    let ones = vec![q.input().hi; q.input_len()];
    assert!(q.run(&ones).is_ok());
}

#[test]
fn a_square_with_a_constant_folds_into_the_next_biases_exactly() {
    // x² + 0.75 (scaled by 0.5): the constant reaches the dense layer's biases through its
    // integer weights; the dequantized outputs follow the real network and the bounds hold.
    let mut model = tiny(11);
    model.nodes[2].op = Op::Poly(vec![0.75, 0.0, 0.5]);
    let q = QuantModel::quantize(
        &model,
        &QuantSpec {
            input_bits: 8,
            weight_bits: 10,
            ..QuantSpec::default()
        },
    )
    .unwrap();
    let bounds = q.bounds().unwrap();
    for x in &images(&q, 10, 300) {
        let y = q.run(x).unwrap();
        for (k, &(lo, hi)) in bounds.outputs.iter().enumerate() {
            assert!(lo <= y[k] && y[k] <= hi);
        }
        let real: Vec<f64> = x.iter().map(|&v| v as f64 / q.input().scale).collect();
        let want = exec::run(&model, &Tensor::new(vec![1, 5, 5], real).unwrap()).unwrap();
        for (g, w) in q.dequantize(&y).iter().zip(want.data()) {
            assert!((g - w).abs() < 2e-2 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }
    // A constant with no linear layer after it has nowhere to go.
    let mut last = tiny(11);
    last.nodes.truncate(3);
    last.nodes[2].op = Op::Poly(vec![0.75, 0.0, 1.0]);
    last.output = 2;
    let err = QuantModel::quantize(&last, &QuantSpec::default()).unwrap_err();
    assert!(matches!(err, NnError::NotSupported { .. }), "{err}");
    // A linear term is still not a square.
    let mut linear = tiny(11);
    linear.nodes[2].op = Op::Poly(vec![0.0, 1.0, 1.0]);
    assert!(QuantModel::quantize(&linear, &QuantSpec::default()).is_err());
}

#[test]
fn refuses_what_integers_cannot_run() {
    let mut model = tiny(3);
    model.nodes[2].op = Op::Poly(vec![0.1, 0.5, 0.25]);
    let e = QuantModel::quantize(&model, &QuantSpec::default()).unwrap_err();
    assert!(
        matches!(e, NnError::NotSupported { ref node, .. } if node == "sq"),
        "{e}"
    );
    let bad = QuantSpec {
        weight_bits: 40,
        ..QuantSpec::default()
    };
    assert!(matches!(
        QuantModel::quantize(&tiny(3), &bad),
        Err(NnError::Quantization { ref what, .. }) if what == "weight bits"
    ));
    let bad = QuantSpec {
        input_range: (1.0, 0.0),
        ..QuantSpec::default()
    };
    assert!(matches!(
        QuantModel::quantize(&tiny(3), &bad),
        Err(NnError::Quantization { ref what, .. }) if what == "input range"
    ));
}

/// Plans on a fixed ring, encrypts, evaluates, decrypts: every output equals the integer
/// executor's; the measured budgets are within the noise model's margins of the plan's.
fn round_trip(lit: ParamsLiteral, spec: QuantSpec, min_moduli: usize) {
    let q = QuantModel::quantize(&tiny(11), &spec).unwrap();
    let opts = BfvOptions {
        ring: Some(lit),
        ..BfvOptions::default()
    };
    let plan = Arc::new(bfv_batch::plan(q, &opts).unwrap());
    assert!(plan.moduli().len() >= min_moduli, "{}", plan.report());
    let product: f64 = plan.moduli().iter().map(|&t| (t as f64).log2()).sum();
    assert!(product > ((2 * plan.output_bound() + 1) as f64).log2());

    let be = CpuBackend::new(2).unwrap();
    let mut rng = Prng::from_seed([5; 32]);
    let client = BfvClient::new(Arc::clone(&plan), be.clone(), &mut rng).unwrap();
    let keys = Arc::new(client.evaluation_keys(&mut rng).unwrap());
    let be2 = be.clone();
    let server = BfvServer::new(Arc::clone(&plan), keys, be).unwrap();
    // The plan and the ciphertexts go through their files, as between client and server.
    let back = bfv_batch::BfvPlan::from_bytes_allowing_insecure(&plan.to_bytes().unwrap()).unwrap();
    assert_eq!(&back, plan.as_ref());
    let xs = images(plan.quant(), 37, 900);
    let cts = client.encrypt(&xs, &mut rng).unwrap();
    let bytes = bfv_batch::batch_to_bytes(&plan, client.params(), &be2, xs.len(), &cts).unwrap();
    let (count, cts) = bfv_batch::batch_from_bytes(
        &plan,
        &server.params(),
        &be2,
        plan.quant().input_len(),
        &bytes,
    )
    .unwrap();
    assert_eq!(count, xs.len());
    let mut seen = Vec::new();
    let out = server
        .evaluate(cts, &mut |d, _| {
            seen.push((d.instance, d.layer));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        seen.len(),
        plan.moduli().len() * plan.quant().layers().len()
    );
    let got = client.decrypt(&out, xs.len()).unwrap();
    for (i, x) in xs.iter().enumerate() {
        assert_eq!(got.values[i], plan.quant().run(x).unwrap(), "image {i}");
    }
    let predicted = *plan.budgets().last().unwrap();
    for &b in &got.budgets {
        assert!(b > 0.0);
        assert!(
            predicted <= b + 1.0 && predicted >= b - 4.0,
            "predicted {predicted:.1} bits, measured {b:.1}"
        );
    }
}

#[test]
fn one_modulus_decrypts_the_integer_outputs_exactly() {
    round_trip(ring(11, 3, 45), QuantSpec::default(), 1);
}

#[test]
fn plaintext_crt_decrypts_the_integer_outputs_exactly() {
    // Little modulus and wide integers: several plaintext primes.
    let spec = QuantSpec {
        input_bits: 8,
        weight_bits: 12,
        ..QuantSpec::default()
    };
    round_trip(ring(11, 2, 45), spec, 2);
}

#[test]
fn an_exhausted_budget_is_refused_by_the_plan_and_named_at_the_layer() {
    let q = QuantModel::quantize(&tiny(11), &QuantSpec::default()).unwrap();
    // One 30-bit prime cannot hold a product: no parameters.
    let opts = BfvOptions {
        ring: Some(ring(11, 1, 30)),
        ..BfvOptions::default()
    };
    let e = bfv_batch::plan(q.clone(), &opts).unwrap_err();
    assert!(matches!(e, NnError::NoBfvParameters { .. }), "{e}");
    assert!(e.to_string().contains("bits of plaintext"), "{e}");

    // A plan forced through (a margin far below zero) fails at decryption, and a client
    // watching the layers names the first whose budget is gone.
    let opts = BfvOptions {
        ring: Some(ring(11, 1, 40)),
        margin_bits: -1e9,
        ..BfvOptions::default()
    };
    let plan = Arc::new(bfv_batch::plan(q, &opts).unwrap());
    let be = CpuBackend::new(1).unwrap();
    let mut rng = Prng::from_seed([9; 32]);
    let client = BfvClient::new(Arc::clone(&plan), be.clone(), &mut rng).unwrap();
    let keys = Arc::new(client.evaluation_keys(&mut rng).unwrap());
    let server = BfvServer::new(Arc::clone(&plan), keys, be).unwrap();
    let xs = images(plan.quant(), 4, 1);
    let out = server
        .evaluate(client.encrypt(&xs, &mut rng).unwrap(), &mut |_, _| Ok(()))
        .unwrap();
    let e = client.decrypt(&out, xs.len()).unwrap_err();
    assert!(e.to_string().contains("noise budget"), "{e}");
    let e = server
        .evaluate(client.encrypt(&xs, &mut rng).unwrap(), &mut |d, cts| {
            let b = client.budget(d.instance, &cts[0])?;
            if b < bfv_batch::EXHAUSTED_BELOW_BITS {
                return Err(NnError::OutOfRange {
                    node: d.node.into(),
                    value: b,
                    bound: 0.0,
                    what: "noise budget",
                });
            }
            Ok(())
        })
        .unwrap_err();
    // The first layer whose budget is gone is named (which one depends on the margin the
    // forced plan left).
    assert!(
        ["'conv'", "'sq'", "'fc'"]
            .iter()
            .any(|n| e.to_string().contains(n)),
        "{e}"
    );
    assert!(
        matches!(
            e,
            NnError::OutOfRange {
                what: "noise budget",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn the_server_refuses_keys_of_another_ring() {
    let q = QuantModel::quantize(&tiny(11), &QuantSpec::default()).unwrap();
    let a = Arc::new(
        bfv_batch::plan(
            q.clone(),
            &BfvOptions {
                ring: Some(ring(11, 3, 45)),
                ..BfvOptions::default()
            },
        )
        .unwrap(),
    );
    let b = Arc::new(
        bfv_batch::plan(
            q,
            &BfvOptions {
                ring: Some(ring(11, 3, 44)),
                ..BfvOptions::default()
            },
        )
        .unwrap(),
    );
    let be = CpuBackend::new(1).unwrap();
    let mut rng = Prng::from_seed([1; 32]);
    let client = BfvClient::new(a, be.clone(), &mut rng).unwrap();
    let keys = Arc::new(client.evaluation_keys(&mut rng).unwrap());
    assert!(matches!(
        BfvServer::new(b, keys, be),
        Err(NnError::Mismatch { .. })
    ));
}

/// Negative square coefficients, per-channel squares and a signed input range quantize to
/// networks that track the real model, within their bounds.
#[test]
fn signed_inputs_and_scaled_squares_quantize_faithfully() {
    let mut model = tiny(21);
    model.nodes[2].op = Op::ChannelPoly(vec![vec![0.0, 0.0, -0.5], vec![0.0, 0.0, 2.0]]);
    let spec = QuantSpec {
        input_bits: 8,
        weight_bits: 10,
        input_range: (-1.0, 1.0),
    };
    let q = QuantModel::quantize(&model, &spec).unwrap();
    assert_eq!(q.input().lo, -127);
    let bounds = q.bounds().unwrap();
    for seed in 0..10 {
        let real = Tensor::new(vec![1, 5, 5], uniform_values(300 + seed, 25)).unwrap();
        let x = q.quantize_input(&real).unwrap();
        let y = q.run(&x).unwrap();
        for (k, &(lo, hi)) in bounds.outputs.iter().enumerate() {
            assert!(lo <= y[k] && y[k] <= hi, "output {k}");
        }
        let deq: Vec<f64> = x.iter().map(|&v| v as f64 / q.input().scale).collect();
        let want = exec::run(&model, &Tensor::new(vec![1, 5, 5], deq).unwrap()).unwrap();
        for (g, w) in q.dequantize(&y).iter().zip(want.data()) {
            assert!(
                (g - w).abs() < 2e-2 * (1.0 + w.abs()),
                "seed {seed}: {g} vs {w}"
            );
        }
    }
}

/// Conv (540 outputs: more than one chunk) → x² relinearized at once (the next layer is
/// wider) → dense 600 (chunked) → x² relinearized after → dense 3: exact.
#[test]
fn wide_layers_and_eager_squares_decrypt_exactly() {
    let w = uniform_values(41, 60 * 9);
    let d1 = uniform_values(42, 600 * 540);
    let d2 = uniform_values(43, 3 * 600);
    let model = Model {
        name: "wide".into(),
        input_shape: [1, 5, 5],
        nodes: vec![
            node("x", Op::Input, vec![]),
            node(
                "conv",
                Op::Conv2d(Conv2d {
                    weight: Tensor::new(vec![60, 1, 3, 3], w).unwrap(),
                    bias: vec![0.01; 60],
                    stride: [1, 1],
                    padding: [0; 4],
                    groups: 1,
                }),
                vec![0],
            ),
            node("sq1", Op::Poly(vec![0.0, 0.0, 1.0]), vec![1]),
            node("flat", Op::Flatten, vec![2]),
            node(
                "fc1",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![600, 540], d1).unwrap(),
                    bias: vec![0.0; 600],
                }),
                vec![3],
            ),
            node("sq2", Op::Poly(vec![0.0, 0.0, 1.0]), vec![4]),
            node(
                "fc2",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![3, 600], d2).unwrap(),
                    bias: vec![0.5, 0.0, -0.5],
                }),
                vec![5],
            ),
        ],
        output: 6,
    };
    let spec = QuantSpec {
        input_bits: 2,
        weight_bits: 3,
        ..QuantSpec::default()
    };
    let q = QuantModel::quantize(&model, &spec).unwrap();
    let opts = BfvOptions {
        ring: Some(ring(12, 4, 45)),
        ..BfvOptions::default()
    };
    let plan = Arc::new(bfv_batch::plan(q, &opts).unwrap());
    assert!(!plan.lazy(1) && plan.lazy(3), "{}", plan.report());
    let be = CpuBackend::new(2).unwrap();
    let mut rng = Prng::from_seed([6; 32]);
    let client = BfvClient::new(Arc::clone(&plan), be.clone(), &mut rng).unwrap();
    let keys = Arc::new(client.evaluation_keys(&mut rng).unwrap());
    let server = BfvServer::new(Arc::clone(&plan), keys, be).unwrap();
    let xs = images(plan.quant(), 5, 77);
    let out = server
        .evaluate(client.encrypt(&xs, &mut rng).unwrap(), &mut |_, _| Ok(()))
        .unwrap();
    let got = client.decrypt(&out, xs.len()).unwrap();
    for (i, x) in xs.iter().enumerate() {
        assert_eq!(got.values[i], plan.quant().run(x).unwrap(), "image {i}");
    }
}

#[test]
fn inputs_outside_the_quantized_range_are_refused() {
    let q = QuantModel::quantize(&tiny(11), &QuantSpec::default()).unwrap();
    let opts = BfvOptions {
        ring: Some(ring(11, 3, 45)),
        ..BfvOptions::default()
    };
    let plan = Arc::new(bfv_batch::plan(q, &opts).unwrap());
    let be = CpuBackend::new(1).unwrap();
    let mut rng = Prng::from_seed([2; 32]);
    let client = BfvClient::new(Arc::clone(&plan), be, &mut rng).unwrap();
    let mut x = vec![0i64; plan.quant().input_len()];
    x[3] = plan.quant().input().hi + 1;
    let e = client.encrypt(&[x], &mut rng).unwrap_err();
    assert!(matches!(e, NnError::OutOfRange { .. }), "{e}");
}
