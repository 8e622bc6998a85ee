//! The compiler as a library: compile → client spec / server plan → keys → encrypt → run →
//! decrypt in both packings without the command line; the packed cleartext scheme running
//! the same plans; artifacts that round-trip and refuse corruption and mismatches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{conv, node, pool, values};
use hecnn_nn::{
    Model, NnError, Op, Tensor,
    compile::{
        self, Client, ClientSpec, CompileOptions, CompiledModel, EncryptedImages, ImagesKind,
        PackingKind, PackingRequest, Server,
    },
    exec,
    ir::Dense,
};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::SecurityLevel;

/// conv → a·x²+b·x+c → avg pool → conv (stride 2) → x² → flatten → dense.
fn model() -> Model {
    Model {
        name: "compile-test".into(),
        input_shape: [1, 8, 8],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node("conv1", conv(1, (2, 1, 3), 1, 1, 0.5), vec![0]),
            node("act1", Op::Poly(vec![0.1, 0.5, 0.25]), vec![1]),
            node("pool", Op::AvgPool(pool(2, 2)), vec![2]),
            node("conv2", conv(3, (3, 2, 3), 2, 1, 0.5), vec![3]),
            node("sq2", Op::Poly(vec![0.0, 0.0, 1.0]), vec![4]),
            node("flat", Op::Flatten, vec![5]),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![4, 12], values(5, 48, 0.5)).unwrap(),
                    bias: values(6, 4, 0.1),
                }),
                vec![6],
            ),
        ],
        output: 7,
    }
}

fn images(n: usize, seed: u64) -> Vec<Tensor> {
    (0..n)
        .map(|i| Tensor::new(vec![1, 8, 8], values(seed + i as u64, 64, 1.0)).unwrap())
        .collect()
}

/// Toy ring degree for batch packing (single-image packing takes its own smallest degree):
/// insecure, for tests only.
fn opts(packing: PackingRequest) -> CompileOptions {
    CompileOptions {
        packing,
        log_n: 10,
        security: SecurityLevel::UncheckedForReproduction,
        ..CompileOptions::default()
    }
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn both_packings_run_encrypted_and_simulated_as_the_cleartext_model() {
    let model = model();
    let imgs = images(3, 100);
    let be = CpuBackend::new(2).unwrap();
    for packing in [PackingRequest::Batch, PackingRequest::Single] {
        let c = compile::compile(&model, &opts(packing)).unwrap();
        let want: Vec<Vec<f64>> = imgs
            .iter()
            .map(|im| exec::run(c.model(), im).unwrap().data().to_vec())
            .collect();
        // Simulated: the same plan code on the packed cleartext scheme, no keys.
        let sim = c.simulate(&imgs).unwrap();
        for (got, want) in sim.logits.iter().zip(&want) {
            assert!(
                max_diff(got, want) < 1e-3,
                "{packing:?} simulated: {got:?} vs {want:?}"
            );
        }
        assert!(sim.headroom_bits > 10.0, "{}", sim.headroom_bits);
        // Encrypted, client and server apart.
        let client = Client::new(c.client_spec(), be.clone()).unwrap();
        let mut rng = Prng::from_seed([7; 32]);
        let keys = client.keygen(&mut rng).unwrap();
        assert_eq!(
            keys.evaluation.size_bytes(),
            c.client_spec().evaluation_key_bytes()
        );
        let server = Server::new(c.server_plan(), keys.evaluation, be.clone()).unwrap();
        let inputs = client.encrypt(&keys.public, &imgs, &mut rng).unwrap();
        let outputs = server.run(inputs, |_, _| {}).unwrap();
        let got = client.decrypt(&keys.secret, &outputs).unwrap();
        assert_eq!(got.len(), imgs.len());
        for (got, want) in got.iter().zip(&want) {
            assert!(
                max_diff(got, want) < 1e-2,
                "{packing:?} encrypted: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn a_run_stops_when_its_caller_cancels_it() {
    let model = model();
    let imgs = images(3, 101);
    let be = CpuBackend::new(2).unwrap();
    for packing in [PackingRequest::Batch, PackingRequest::Single] {
        let c = compile::compile(&model, &opts(packing)).unwrap();
        let client = Client::new(c.client_spec(), be.clone()).unwrap();
        let mut rng = Prng::from_seed([8; 32]);
        let keys = client.keygen(&mut rng).unwrap();
        let server = Server::new(c.server_plan(), keys.evaluation, be.clone()).unwrap();
        // Never cancelled: the run goes to the end, with `full` progress reports.
        let mut full = 0;
        let out = server.run_unless(
            client.encrypt(&keys.public, &imgs, &mut rng).unwrap(),
            |_, _| full += 1,
            |_, _, _| {},
            &|| false,
        );
        assert_eq!(
            client.decrypt(&keys.secret, &out.unwrap()).unwrap().len(),
            3
        );
        // Cancelled once the first layer (batch) or image (single) has been reported.
        let reports = std::sync::atomic::AtomicUsize::new(0);
        let first = if packing == PackingRequest::Batch {
            2
        } else {
            1
        };
        let r = server.run_unless(
            client.encrypt(&keys.public, &imgs, &mut rng).unwrap(),
            |_, _| {
                reports.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
            |_, _, _| {},
            &|| reports.load(std::sync::atomic::Ordering::Relaxed) >= first,
        );
        assert!(
            matches!(r, Err(NnError::Cancelled(_))),
            "{packing:?}: {:?}",
            r.err()
        );
        assert_eq!(
            reports.into_inner(),
            first,
            "{packing:?}: it went on after the cancel"
        );
        assert!(first < full, "{packing:?}: {full} reports in a whole run");
    }
}

#[test]
fn a_compiled_model_round_trips_without_planning_again_and_refuses_damage() {
    for packing in [PackingRequest::Batch, PackingRequest::Single] {
        let c = compile::compile(&model(), &opts(packing)).unwrap();
        let bytes = c.to_bytes().unwrap();
        let back = CompiledModel::from_bytes(&bytes).unwrap();
        assert_eq!(back.fingerprint(), c.fingerprint());
        assert_eq!(back.report().unwrap(), c.report().unwrap());
        assert_eq!(back.key_requirements(), c.key_requirements());
        assert_eq!(back.model(), c.model());
        if let (compile::PackedPlan::Single(a), compile::PackedPlan::Single(b)) =
            (back.plan(), c.plan())
        {
            assert_eq!(a.layouts(), b.layouts());
        }
        // Every flipped byte of the file is refused (a sample of positions).
        for i in (0..bytes.len()).step_by(bytes.len() / 97 + 1) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(CompiledModel::from_bytes(&bad).is_err(), "byte {i}");
        }
        let e = CompiledModel::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(e, NnError::Format { .. }), "{e}");
    }
}

#[test]
fn auto_mode_chooses_by_the_number_of_images() {
    // The bundled MNIST network, batch packing at N = 2^14 (8,192 images a batch) against
    // single-image packing at its smallest degree: one image is cheaper alone, a hundred
    // thousand in batches.
    let mnist = hecnn_nn::onnx::import_onnx_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/hcnn-mnist.onnx"
    )))
    .unwrap();
    let auto = |images| CompileOptions {
        log_n: 14,
        security: SecurityLevel::Bits128,
        ..opts(PackingRequest::Auto { images })
    };
    let one = compile::compile(&mnist, &auto(1)).unwrap();
    assert_eq!(one.packing(), PackingKind::Single);
    assert!(one.choice().unwrap().starts_with("mode auto: single"));
    let many = compile::compile(&mnist, &auto(100_000)).unwrap();
    assert_eq!(many.packing(), PackingKind::Batch);
    assert!(many.choice().unwrap().starts_with("mode auto: batch"));
}

#[test]
fn the_client_spec_travels_alone_and_ciphertexts_are_bound_to_model_packing_and_keys() {
    let be = CpuBackend::new(2).unwrap();
    let single = compile::compile(&model(), &opts(PackingRequest::Single)).unwrap();
    let batch = compile::compile(&model(), &opts(PackingRequest::Batch)).unwrap();
    let spec = ClientSpec::from_bytes(&single.client_spec().to_bytes().unwrap()).unwrap();
    assert_eq!(spec.model_fingerprint(), single.fingerprint());
    assert_eq!(spec.key_requirements(), &single.key_requirements());
    let mut bad = single.client_spec().to_bytes().unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        ClientSpec::from_bytes(&bad),
        Err(NnError::Checksum { .. })
    ));

    let mut rng = Prng::from_seed([9; 32]);
    let client = Client::new(spec, be.clone()).unwrap();
    let keys = client.keygen(&mut rng).unwrap();
    let other = client.keygen(&mut rng).unwrap();
    // Keys restricted below the levels the plan rotates at, or without relinearization, are
    // refused before anything runs.
    let plan = single.server_plan();
    assert!(plan.check_keys(&keys.evaluation).is_ok());
    let steps: Vec<i64> = single.key_requirements().rotations.into_iter().collect();
    let too_low = keys
        .secret
        .evaluation_keys(
            &be,
            &hecnn_rlwe::KeyRequirements::relin().with_rotations_at(steps.clone(), 0),
            &mut rng,
        )
        .unwrap();
    let no_relin = keys
        .secret
        .evaluation_keys(
            &be,
            &hecnn_rlwe::KeyRequirements::default().with_rotations(steps),
            &mut rng,
        )
        .unwrap();
    for (keys, why) in [(too_low, "up to level"), (no_relin, "relinearization")] {
        match plan.check_keys(&keys) {
            Err(NnError::Mismatch { expected, .. }) => {
                assert!(expected.contains(why), "{expected}")
            }
            other => panic!("{why}: {:?}", other.map(|_| ())),
        }
    }
    let inputs = client
        .encrypt(&keys.public, &images(2, 5), &mut rng)
        .unwrap();
    let bytes = inputs.to_bytes(&be, single.params()).unwrap();

    // The server of the same model reads them; another model's, or another packing's, not.
    let ok = EncryptedImages::from_bytes(&be, &single.client_spec(), ImagesKind::Inputs, &bytes);
    assert!(ok.is_ok());
    let wrong_kind =
        EncryptedImages::from_bytes(&be, &single.client_spec(), ImagesKind::Outputs, &bytes);
    assert!(matches!(wrong_kind, Err(NnError::Mismatch { .. })));
    let wrong_model =
        EncryptedImages::from_bytes(&be, &batch.client_spec(), ImagesKind::Inputs, &bytes);
    assert!(
        matches!(
            wrong_model,
            Err(NnError::Mismatch {
                what: "compiled model",
                ..
            })
        ),
        "{:?}",
        wrong_model.err()
    );

    // A server holding another key pair's keys refuses the inputs before evaluating.
    let server = Server::new(single.server_plan(), other.evaluation, be.clone()).unwrap();
    let e = server.run(ok.unwrap(), |_, _| {}).unwrap_err();
    assert!(
        matches!(
            e,
            NnError::Mismatch {
                what: "key pair",
                ..
            }
        ),
        "{e}"
    );

    // Keys missing a rotation the plan needs are refused when the server is built.
    let batch_client = Client::new(batch.client_spec(), be.clone()).unwrap();
    let batch_keys = batch_client.keygen(&mut rng).unwrap();
    let e = Server::new(single.server_plan(), batch_keys.evaluation, be.clone());
    assert!(matches!(e, Err(NnError::Mismatch { .. })));

    // Images of another shape are refused by the client.
    let e = client
        .encrypt(
            &keys.public,
            &[Tensor::new(vec![1, 4, 4], vec![0.0; 16]).unwrap()],
            &mut rng,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            NnError::Mismatch {
                what: "image shape",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn the_level_pass_places_refreshes_that_the_single_image_runtime_executes() {
    use hecnn_nn::compile::levels::{self, RefreshSpec};
    use hecnn_nn::scheme::Packed;
    let c = compile::compile(&model(), &opts(PackingRequest::Single)).unwrap();
    let compile::PackedPlan::Single(plan) = c.plan() else {
        panic!("single-image plan expected");
    };
    // Compiled with enough levels: no refresh, the output at level 0.
    assert!(c.levels().refreshes().is_empty());
    assert_eq!(c.levels().output_level(), 0);
    let depth = plan.depth();
    assert!(depth >= 4, "{depth}");
    // Two levels only, and a refresh (the cleartext scheme's test double) back to level 2.
    let q: Vec<u64> = c.params().rlwe().q()[..3].to_vec();
    let qf: Vec<f64> = q.iter().map(|&p| p as f64).collect();
    let scale = c.params().default_scale();
    let stages = plan.level_stages();
    let e = levels::assign(&stages, &qf, 2, scale.log2(), None).unwrap_err();
    assert!(matches!(e, NnError::OutOfLevels { .. }), "{e}");
    let lp = levels::assign(
        &stages,
        &qf,
        2,
        scale.log2(),
        Some(RefreshSpec { level: 2 }),
    )
    .unwrap();
    assert_eq!(
        lp.refreshes().len(),
        depth.div_ceil(2) - 1,
        "{}",
        lp.describe()
    );
    // Without the refreshes the same two levels are not enough.
    assert!(plan.encode(&Packed::new(&q), 2, scale).is_err());
    assert_refreshed_run_matches(&c, plan, &lp, &q, &images(3, 40));
}

/// Runs `plan` with the refreshes of `lp` (to `lp.top`) on the cleartext scheme over the
/// primes `q` and checks every image's logits against the cleartext model.
fn assert_refreshed_run_matches(
    c: &CompiledModel,
    plan: &hecnn_nn::single::SinglePlan,
    lp: &hecnn_nn::compile::levels::LevelPlan,
    q: &[u64],
    images: &[Tensor],
) {
    use hecnn_nn::scheme::{Packed, PackedRefresh, Scheme};
    let (top, scale) = (lp.top, c.params().default_scale());
    let refreshed = plan.clone().with_refreshes(lp, 16.0);
    let engine = Packed::new(q).with_refresh(PackedRefresh {
        level: top,
        scale,
        precision_bits: f64::INFINITY,
        max_scale: f64::MAX,
    });
    let encoded = refreshed.encode(&engine, top, scale).unwrap();
    let slots = plan.slots();
    for image in images {
        let mut cts = vec![vec![0.0; slots]; plan.input_cts()];
        for (&p, &v) in plan.input_positions().iter().zip(image.data()) {
            cts[p / slots][p % slots] = v;
        }
        let (out, map) = refreshed
            .run(&engine, &encoded, engine.inputs(cts, top, scale))
            .unwrap();
        assert!(out.iter().all(|ct| engine.level(ct) == lp.output_level()));
        let got: Vec<f64> = plan
            .output_positions()
            .iter()
            .map(|&p| map.a * out[p / slots].slots[p % slots] + map.gamma)
            .collect();
        let want = exec::run(c.model(), image).unwrap();
        assert!(max_diff(&got, want.data()) < 1e-3, "{got:?} vs {want:?}");
    }
}

#[test]
fn a_residual_graph_compiles_in_batch_packing_with_its_levels_along_the_graph() {
    // conv → x² → conv, added to the first convolution's output (a branch that skips two
    // levels), then a dense layer.
    let m = Model {
        name: "residual".into(),
        input_shape: [1, 6, 6],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node("conv1", conv(11, (2, 1, 3), 1, 1, 0.5), vec![0]),
            node("sq", Op::Poly(vec![0.0, 0.0, 1.0]), vec![1]),
            node("conv2", conv(13, (2, 2, 3), 1, 1, 0.5), vec![2]),
            node("add", Op::Add, vec![3, 1]),
            node("flat", Op::Flatten, vec![4]),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: Tensor::new(vec![3, 72], values(15, 216, 0.3)).unwrap(),
                    bias: values(16, 3, 0.1),
                }),
                vec![5],
            ),
        ],
        output: 6,
    };
    let c = compile::compile(&m, &opts(PackingRequest::Batch)).unwrap();
    assert_eq!(
        c.levels().output_level(),
        c.params().max_level() - c.plan().depth()
    );
    assert!(c.levels().stages.iter().all(|s| s.level_out < s.level_in));
    let imgs: Vec<Tensor> = (0..4)
        .map(|i| Tensor::new(vec![1, 6, 6], values(60 + i, 36, 1.0)).unwrap())
        .collect();
    let sim = c.simulate(&imgs).unwrap();
    for (image, got) in imgs.iter().zip(&sim.logits) {
        let want = exec::run(c.model(), image).unwrap();
        assert!(max_diff(got, want.data()) < 1e-3, "{got:?} vs {want:?}");
    }
}

/// An AESPA (HerPN) activation as the importer reads PyTorch's export of
/// `x·x·A + x·B + C` (A, B, C of one value per channel): five nodes from `x`, the last one
/// returned.
fn aespa(nodes: &mut Vec<hecnn_nn::ir::Node>, name: &str, x: usize, seed: u64, channels: usize) {
    let per = |s: u64, scale: f64, offset: f64| -> Vec<f64> {
        values(s, channels, scale)
            .into_iter()
            .map(|v| v + offset)
            .collect()
    };
    let affine = |scale: Vec<f64>, shift: Vec<f64>| Op::ChannelAffine { scale, shift };
    let at = nodes.len();
    nodes.push(node(
        &format!("{name}.sq"),
        Op::Poly(vec![0.0, 0.0, 1.0]),
        vec![x],
    ));
    nodes.push(node(
        &format!("{name}.a"),
        affine(per(seed, 0.1, 0.3), vec![0.0; channels]),
        vec![at],
    ));
    nodes.push(node(
        &format!("{name}.b"),
        affine(per(seed + 1, 0.5, 1.0), vec![0.0; channels]),
        vec![x],
    ));
    nodes.push(node(&format!("{name}.sum"), Op::Add, vec![at + 1, at + 2]));
    nodes.push(node(
        name,
        affine(vec![1.0; channels], per(seed + 2, 0.2, 0.0)),
        vec![at + 3],
    ));
}

#[test]
fn per_channel_quadratic_activations_fold_to_one_node_and_run_in_both_packings() {
    // conv → AESPA → avg pool → conv (stride 2) → AESPA → flatten → dense, the activations
    // written as five nodes each.
    let mut nodes = vec![
        node("input", Op::Input, vec![]),
        node("conv1", conv(21, (3, 1, 3), 1, 1, 0.5), vec![0]),
    ];
    aespa(&mut nodes, "act1", 1, 30, 3);
    nodes.push(node("pool", Op::AvgPool(pool(2, 2)), vec![nodes.len() - 1]));
    nodes.push(node(
        "conv2",
        conv(23, (2, 3, 3), 2, 1, 0.5),
        vec![nodes.len() - 1],
    ));
    let x = nodes.len() - 1;
    aespa(&mut nodes, "act2", x, 40, 2);
    nodes.push(node("flat", Op::Flatten, vec![nodes.len() - 1]));
    nodes.push(node(
        "fc",
        Op::Dense(Dense {
            weight: Tensor::new(vec![4, 8], values(25, 32, 0.5)).unwrap(),
            bias: values(26, 4, 0.1),
        }),
        vec![nodes.len() - 1],
    ));
    let model = Model {
        name: "aespa".into(),
        input_shape: [1, 8, 8],
        output: nodes.len() - 1,
        nodes,
    };
    let imgs = images(2, 300);
    let be = CpuBackend::new(2).unwrap();
    for packing in [PackingRequest::Single, PackingRequest::Batch] {
        let c = compile::compile(&model, &opts(packing)).unwrap();
        let want: Vec<Vec<f64>> = imgs
            .iter()
            .map(|im| exec::run(&model, im).unwrap().data().to_vec())
            .collect();
        if packing == PackingRequest::Single {
            // Each activation is one per-channel quadratic: one level each.
            let polys = c
                .model()
                .nodes
                .iter()
                .filter(|n| matches!(n.op, Op::ChannelPoly(_)))
                .count();
            assert_eq!(polys, 2, "{:#?}", c.model().nodes);
            assert_eq!(c.plan().depth(), 5);
        }
        for (im, want) in imgs.iter().zip(&want) {
            let got = exec::run(c.model(), im).unwrap();
            assert!(
                max_diff(got.data(), want) < 1e-9,
                "{packing:?} rewritten: {got:?} vs {want:?}"
            );
        }
        let sim = c.simulate(&imgs).unwrap();
        for (got, want) in sim.logits.iter().zip(&want) {
            assert!(
                max_diff(got, want) < 1e-3,
                "{packing:?} simulated: {got:?} vs {want:?}"
            );
        }
        let client = Client::new(c.client_spec(), be.clone()).unwrap();
        let mut rng = Prng::from_seed([9; 32]);
        let keys = client.keygen(&mut rng).unwrap();
        let server = Server::new(c.server_plan(), keys.evaluation, be.clone()).unwrap();
        let inputs = client.encrypt(&keys.public, &imgs, &mut rng).unwrap();
        let outputs = server.run(inputs, |_, _| {}).unwrap();
        let got = client.decrypt(&keys.secret, &outputs).unwrap();
        for (got, want) in got.iter().zip(&want) {
            assert!(
                max_diff(got, want) < 1e-2,
                "{packing:?} encrypted: {got:?} vs {want:?}"
            );
        }
    }
}

/// A per-channel quadratic with every x² coefficient positive.
fn quad(seed: u64, channels: usize) -> Op {
    Op::ChannelPoly(
        (0..channels as u64)
            .map(|k| {
                let v = values(seed + 7 * k, 3, 0.2);
                vec![v[0], 0.5 + v[1], 0.2 + v[2].abs()]
            })
            .collect(),
    )
}

/// A small ResNet: stem, an identity block, a stride-2 block with a 1×1 shortcut
/// convolution, global average pooling and a dense layer, with per-channel quadratics.
fn mini_resnet() -> Model {
    let nodes = vec![
        node("input", Op::Input, vec![]),
        node("stem", conv(50, (2, 1, 3), 1, 1, 0.4), vec![0]),
        node("act0", quad(51, 2), vec![1]),
        // Identity block.
        node("b1.conv1", conv(52, (2, 2, 3), 1, 1, 0.3), vec![2]),
        node("b1.act1", quad(53, 2), vec![3]),
        node("b1.conv2", conv(54, (2, 2, 3), 1, 1, 0.3), vec![4]),
        node("b1.add", Op::Add, vec![5, 2]),
        node("b1.act2", quad(55, 2), vec![6]),
        // Stride-2 block: 2 → 4 channels, the shortcut a 1×1 convolution of stride 2.
        node("b2.conv1", conv(56, (4, 2, 3), 2, 1, 0.3), vec![7]),
        node("b2.act1", quad(57, 4), vec![8]),
        node("b2.conv2", conv(58, (4, 4, 3), 1, 1, 0.3), vec![9]),
        node("b2.short", conv(59, (4, 2, 1), 2, 0, 0.5), vec![7]),
        node("b2.add", Op::Add, vec![10, 11]),
        node("b2.act2", quad(60, 4), vec![12]),
        node("gap", Op::GlobalAvgPool, vec![13]),
        node("flat", Op::Flatten, vec![14]),
        node(
            "fc",
            Op::Dense(Dense {
                weight: Tensor::new(vec![3, 4], values(61, 12, 0.5)).unwrap(),
                bias: values(62, 3, 0.1),
            }),
            vec![15],
        ),
    ];
    Model {
        name: "mini-resnet".into(),
        input_shape: [1, 8, 8],
        output: nodes.len() - 1,
        nodes,
    }
}

#[test]
fn residual_networks_run_in_single_image_packing() {
    let model = mini_resnet();
    let imgs = images(2, 500);
    let want: Vec<Vec<f64>> = imgs
        .iter()
        .map(|im| exec::run(&model, im).unwrap().data().to_vec())
        .collect();
    let c = compile::compile(&model, &opts(PackingRequest::Single)).unwrap();
    // The longest path: stem, act0, then two levels per convolution and activation of each
    // block (the additions join the second convolutions' stages), the head.
    assert_eq!(c.plan().depth(), 2 + 4 + 4 + 1);
    // Linear stages bring every value back to the nominal scale, so squares cannot make it
    // drift (each square doubles the distance from it).
    let nominal = f64::from(c.params().log_scale());
    for s in &c.levels().stages {
        assert!(
            (s.log_scale_out - nominal).abs() < 0.5,
            "{}: 2^{} against 2^{nominal}",
            s.name,
            s.log_scale_out
        );
    }
    let sim = c.simulate(&imgs).unwrap();
    for (got, want) in sim.logits.iter().zip(&want) {
        assert!(max_diff(got, want) < 1e-3, "simulated: {got:?} vs {want:?}");
    }
    let be = CpuBackend::new(2).unwrap();
    let client = Client::new(c.client_spec(), be.clone()).unwrap();
    let mut rng = Prng::from_seed([11; 32]);
    let keys = client.keygen(&mut rng).unwrap();
    let server = Server::new(c.server_plan(), keys.evaluation, be).unwrap();
    let inputs = client.encrypt(&keys.public, &imgs, &mut rng).unwrap();
    let outputs = server.run(inputs, |_, _| {}).unwrap();
    let got = client.decrypt(&keys.secret, &outputs).unwrap();
    for (got, want) in got.iter().zip(&want) {
        assert!(max_diff(got, want) < 1e-2, "encrypted: {got:?} vs {want:?}");
    }
}

#[test]
fn a_nearly_linear_channel_is_squared_without_a_wide_shift() {
    // Channel 1 is almost linear (x² coefficient 0.001 against 1.0: completing the square
    // would shift its values by 500 and square them to 250 000). The activation is split
    // into a square and a linear term the next stage reads again, at no extra level.
    let nodes = vec![
        node("input", Op::Input, vec![]),
        node("conv1", conv(70, (2, 1, 3), 1, 1, 0.5), vec![0]),
        node(
            "act",
            Op::ChannelPoly(vec![vec![0.1, 0.5, 0.25], vec![0.0, 1.0, 0.001]]),
            vec![1],
        ),
        node("conv2", conv(71, (2, 2, 3), 2, 1, 0.5), vec![2]),
        node("flat", Op::Flatten, vec![3]),
        node(
            "fc",
            Op::Dense(Dense {
                weight: Tensor::new(vec![3, 32], values(72, 96, 0.5)).unwrap(),
                bias: values(73, 3, 0.1),
            }),
            vec![4],
        ),
    ];
    let model = Model {
        name: "nearly-linear".into(),
        input_shape: [1, 8, 8],
        output: nodes.len() - 1,
        nodes,
    };
    let c = compile::compile(&model, &opts(PackingRequest::Single)).unwrap();
    // conv1, the activation, then conv2 and the dense layer composed into one stage.
    assert_eq!(c.plan().depth(), 3);
    let imgs = images(2, 700);
    let cal = c.calibrate(&imgs).unwrap();
    assert!(cal.largest.unwrap() < 100.0, "{cal:?}");
    let sim = c.simulate(&imgs).unwrap();
    for (image, got) in imgs.iter().zip(&sim.logits) {
        let want = exec::run(&model, image).unwrap();
        assert!(max_diff(got, want.data()) < 1e-3, "{got:?} vs {want:?}");
    }
}

#[test]
fn refreshes_placed_in_a_residual_network_run_on_stages_with_several_inputs() {
    use hecnn_nn::compile::levels::{self, RefreshSpec};
    let c = compile::compile(&mini_resnet(), &opts(PackingRequest::Single)).unwrap();
    let compile::PackedPlan::Single(plan) = c.plan() else {
        panic!("single-image plan expected");
    };
    let top = 4;
    let q: Vec<u64> = c.params().rlwe().q()[..=top].to_vec();
    let qf: Vec<f64> = q.iter().map(|&p| p as f64).collect();
    let scale = c.params().default_scale();
    let lp = levels::assign(
        &plan.level_stages(),
        &qf,
        top,
        scale.log2(),
        Some(RefreshSpec { level: top }),
    )
    .unwrap();
    assert!(lp.refreshes().len() >= 2, "{}", lp.describe());
    assert_refreshed_run_matches(&c, plan, &lp, &q, &images(2, 800));
}

/// The mini ResNet compiled with bootstrapping every five levels (toy ring, insecure),
/// values refreshed below 2^`bound_bits`.
fn bootstrapped_resnet_with(bound_bits: u32) -> Result<CompiledModel, NnError> {
    let o = CompileOptions {
        bootstrapping: compile::Bootstrapping::Always,
        refresh_levels: Some(5),
        refresh_bound_bits: bound_bits,
        ..opts(PackingRequest::Single)
    };
    compile::compile(&mini_resnet(), &o)
}

fn bootstrapped_resnet() -> CompiledModel {
    bootstrapped_resnet_with(4).unwrap()
}

/// Encrypts `imgs`, runs them on `server` and checks the decrypted logits against `want`
/// within `tol`; returns the largest difference.
#[allow(clippy::too_many_arguments)]
fn assert_encrypted_close(
    client: &Client<CpuBackend>,
    pk: &hecnn_rlwe::PublicKey<CpuBackend>,
    sk: &hecnn_rlwe::SecretKey,
    server: &Server<CpuBackend>,
    imgs: &[Tensor],
    want: &[Vec<f64>],
    tol: f64,
    what: &str,
) -> f64 {
    let mut rng = Prng::from_seed([41; 32]);
    let inputs = client.encrypt(pk, imgs, &mut rng).unwrap();
    let got = client
        .decrypt(sk, &server.run(inputs, |_, _| {}).unwrap())
        .unwrap();
    let mut worst = 0.0f64;
    for (got, want) in got.iter().zip(want) {
        let d = max_diff(got, want);
        assert!(d < tol, "{what}: {got:?} vs {want:?}");
        worst = worst.max(d);
    }
    worst
}

#[test]
fn bootstrapping_is_placed_where_one_value_holds_what_later_stages_read() {
    let c = bootstrapped_resnet();
    let lp = c.levels();
    // A block needs four of the five levels, so the stem's two cannot share them with the
    // first block: the stem's output is refreshed (at level 4: the stages then run at the
    // lowest levels, cheaper than refreshing after its activation at level 3). The first
    // block's output (the only value later stages read) is refreshed before the second.
    assert_eq!(c.input_level(), 5);
    assert_eq!(lp.refresh_level, Some(5));
    let names: Vec<&str> = lp
        .refreshes()
        .iter()
        .map(|&i| lp.stages[i].name.as_str())
        .collect();
    assert_eq!(names.len(), 2, "{}", lp.describe());
    assert_eq!(names, ["stem", "b1.act2"], "{}", lp.describe());
    assert_eq!(lp.output_level(), 0);
    // Bootstrapping's levels sit above the input level; its keys join the plan's.
    let boot = c.refresh().unwrap().config();
    assert_eq!(c.params().max_level(), 5 + boot.depth().unwrap());
    let req = c.key_requirements();
    assert!(req.conjugate && req.relin);
    let boot_keys = boot.key_requirements(c.params()).unwrap();
    assert!(boot_keys.rotations.is_subset(&req.rotations));
    // The record round-trips, and the client spec carries the input level and the
    // encapsulation weight.
    let again = CompiledModel::from_bytes(&c.to_bytes().unwrap()).unwrap();
    assert_eq!(again.levels(), c.levels());
    assert_eq!(again.fingerprint(), c.fingerprint());
    let spec = ClientSpec::from_bytes(&c.client_spec().to_bytes().unwrap()).unwrap();
    assert_eq!(spec.input_level(), 5);
    assert_eq!(spec.encapsulation_weight(), Some(boot.ephemeral_weight));
    // Never bootstrapping: the same model takes a chain deep enough for all eleven levels.
    let never = compile::compile(
        &mini_resnet(),
        &CompileOptions {
            bootstrapping: compile::Bootstrapping::Never,
            ..opts(PackingRequest::Single)
        },
    )
    .unwrap();
    assert!(never.refresh().is_none() && never.levels().refreshes().is_empty());
    // A bound whose product with the refreshed value's scale exceeds what bootstrapping's
    // message ratio accepts is refused at compile time (2^36 · 2^14 · 2^10 > q_0 < 2^60).
    let e = bootstrapped_resnet_with(14).unwrap_err();
    assert!(matches!(e, NnError::Mismatch { .. }), "{e}");
    assert!(bootstrapped_resnet_with(13).is_ok());
}

#[test]
fn calibration_leaves_out_and_names_the_images_the_model_diverges_on() {
    let c = bootstrapped_resnet();
    let tame = images(2, 900);
    let alone = c.calibrate(&tame).unwrap();
    assert!(alone.diverged.is_empty(), "{alone:?}");
    // An input far out of range: the squares take it beyond any bound (or to ∞).
    let wild = Tensor::new(vec![1, 8, 8], vec![1e40; 64]).unwrap();
    let mixed = [tame[0].clone(), wild.clone(), tame[1].clone()];
    let cal = c.calibrate(&mixed).unwrap();
    assert_eq!(cal.diverged.len(), 1, "{cal:?}");
    assert_eq!(cal.diverged[0].0, 1);
    assert!(cal.diverged[0].1 > 1e20, "{cal:?}");
    // The others' figures are what they are without it.
    assert_eq!(cal.largest, alone.largest);
    assert_eq!(cal.refreshed, alone.refreshed);
    assert!(cal.fits());
    // Nothing left to calibrate on: refused, not a vacuous fit.
    let e = c.calibrate(std::slice::from_ref(&wild)).unwrap_err();
    assert!(matches!(e, NnError::Mismatch { .. }), "{e}");
}

#[test]
fn a_bootstrapped_plan_matches_the_cleartext_model_simulated_and_with_the_test_double() {
    use hecnn_ckks::bootstrap::test_double::SecretKeyBootstrapper;
    use hecnn_rlwe::SecretKey;
    let c = bootstrapped_resnet();
    let model = mini_resnet();
    let imgs = images(2, 900);
    let want: Vec<Vec<f64>> = imgs
        .iter()
        .map(|im| exec::run(&model, im).unwrap().data().to_vec())
        .collect();
    // The refreshed values stay below the bound the plan was compiled for.
    let cal = c.calibrate(&imgs).unwrap();
    let (largest, bound) = cal.refreshed.unwrap();
    assert!(
        largest > 0.0 && largest <= bound && bound == 16.0,
        "{cal:?}"
    );
    assert!(cal.fits());
    // Simulated, bootstrapping's error modelled (2^-20 of the bound 2^4).
    let sim = c.simulate(&imgs).unwrap();
    for (got, want) in sim.logits.iter().zip(&want) {
        assert!(max_diff(got, want) < 1e-3, "simulated: {got:?} vs {want:?}");
    }
    // Encrypted, bootstrapping replaced by decryption and re-encryption (tests only).
    let be = CpuBackend::new(2).unwrap();
    let client = Client::new(c.client_spec(), be.clone()).unwrap();
    let mut rng = Prng::from_seed([21; 32]);
    let keys = client.keygen(&mut rng).unwrap();
    assert!(keys.encapsulation.is_some());
    // A plan that bootstraps refuses a server without bootstrapping.
    let other = client.keygen(&mut rng).unwrap();
    let e = Server::new(c.server_plan(), other.evaluation, be.clone()).err();
    assert!(matches!(e, Some(NnError::Mismatch { .. })), "{e:?}");
    // Refreshes by decryption and re-encryption (tests only) back to level 5.
    let double = |c: &CompiledModel, keys: hecnn_nn::compile::KeySet<CpuBackend>| {
        let sk = SecretKey::from_secret_bytes(c.params().rlwe(), &keys.secret.to_secret_bytes())
            .unwrap();
        let server = Server::with_refresh(
            c.server_plan(),
            keys.evaluation,
            CpuBackend::new(2).unwrap(),
            |_| {
                Ok(std::sync::Arc::new(
                    SecretKeyBootstrapper::insecure_for_tests(sk, 5, Prng::from_seed([22; 32])),
                ))
            },
        )
        .unwrap();
        (server, keys.public, keys.secret)
    };
    let (server, pk, sk) = double(&c, keys);
    assert_encrypted_close(
        &client,
        &pk,
        &sk,
        &server,
        &imgs,
        &want,
        1e-2,
        "test double",
    );
    // At the widest bound (2^13) the refreshed stem output is squared next: the refresh
    // must hand it back at the nominal scale (read back at scale / bound, the square would
    // land near 2^10 and drown in rounding noise).
    let wide = bootstrapped_resnet_with(13).unwrap();
    let client = Client::new(wide.client_spec(), CpuBackend::new(2).unwrap()).unwrap();
    let (server, pk, sk) = double(&wide, client.keygen(&mut rng).unwrap());
    assert_encrypted_close(&client, &pk, &sk, &server, &imgs, &want, 1e-2, "bound 2^13");
}

#[test]
fn a_bootstrapped_plan_runs_with_real_bootstrapping_at_a_toy_size() {
    let c = bootstrapped_resnet();
    // Eleven levels from inputs at level 5: it cannot finish without bootstrapping.
    assert!(c.plan().depth() > c.input_level() + 5);
    let model = mini_resnet();
    let imgs = images(1, 950);
    let be = CpuBackend::new(2).unwrap();
    let client = Client::new(c.client_spec(), be.clone()).unwrap();
    let mut rng = Prng::from_seed([23; 32]);
    let keys = client.keygen(&mut rng).unwrap();
    let server = Server::bootstrapping(
        c.server_plan(),
        keys.evaluation,
        keys.encapsulation.unwrap(),
        be,
    )
    .unwrap();
    let inputs = client.encrypt(&keys.public, &imgs, &mut rng).unwrap();
    let outputs = server.run(inputs, |_, _| {}).unwrap();
    let got = client.decrypt(&keys.secret, &outputs).unwrap();
    let want = exec::run(&model, &imgs[0]).unwrap();
    // Two bootstrappings at N = 2^11 (about 15 bits of the bound 2^4 each).
    let err = max_diff(&got[0], want.data());
    eprintln!(
        "bootstrapped mini ResNet at N = 2^11: max |Δ logit| {err:.2e}; {:?} vs {:?}",
        got[0],
        want.data()
    );
    assert!(err < 5e-2, "{:?} vs {:?}", got[0], want.data());
    assert_eq!(exec::argmax(&got[0]), exec::argmax(want.data()));
}

#[test]
fn weights_encoded_on_the_fly_give_what_weights_encoded_once_give() {
    use hecnn_nn::single::Lowering;
    let c = compile::compile(&mini_resnet(), &opts(PackingRequest::Single)).unwrap();
    assert_eq!(c.server_plan().lowering(), Lowering::Eager);
    let imgs = images(1, 1000);
    let be = CpuBackend::new(2).unwrap();
    let client = Client::new(c.client_spec(), be.clone()).unwrap();
    let mut rng = Prng::from_seed([31; 32]);
    let keys = client.keygen(&mut rng).unwrap();
    let plan = c.server_plan().with_lowering(Lowering::OnTheFly);
    assert_eq!(plan.lowering(), Lowering::OnTheFly);
    let server = Server::new(plan, keys.evaluation, be).unwrap();
    let want = vec![exec::run(c.model(), &imgs[0]).unwrap().data().to_vec()];
    assert_encrypted_close(
        &client,
        &keys.public,
        &keys.secret,
        &server,
        &imgs,
        &want,
        1e-2,
        "on the fly",
    );
    // A plan that bootstraps encodes its weights on the fly by default.
    assert_eq!(
        bootstrapped_resnet().server_plan().lowering(),
        Lowering::OnTheFly
    );
}

/// The time estimate counts what the plan runs: every refresh a bootstrap, the key
/// switches of the linear stages and bootstrapping, and scales with the unit costs.
#[test]
fn the_time_estimate_counts_the_plan_and_its_bootstraps() {
    use hecnn_ckks::cost::UnitCosts;
    let c = bootstrapped_resnet();
    let units = UnitCosts {
        ntt_s: 1e-6,
        product_s: 2e-7,
        expand_s: 3e-7,
        encode_s: 1e-5,
        encode_limb_s: 1e-6,
    };
    let e = c.time_estimate(&units).unwrap().unwrap();
    assert_eq!(e.bootstraps, c.levels().refreshed_cts());
    assert!(e.bootstraps > 0 && e.bootstrap_s > 0.0);
    assert!(e.linear_s > e.encode_s && e.encode_s > 0.0, "{e:?}");
    assert!(e.activation_s > 0.0);
    let total = e.linear_s + e.activation_s + e.bootstraps as f64 * e.bootstrap_s;
    assert!((e.total_s() - total).abs() < 1e-12);
    // A bootstrap alone switches keys more often than once per level it consumes.
    let boot = c.refresh().unwrap().config().op_tally(c.params()).unwrap();
    assert!(boot.key_switches() > c.refresh().unwrap().depth as f64);
    // Twice the unit costs, twice the time.
    let double = UnitCosts {
        ntt_s: 2e-6,
        product_s: 4e-7,
        expand_s: 6e-7,
        encode_s: 2e-5,
        encode_limb_s: 2e-6,
    };
    let e2 = c.time_estimate(&double).unwrap().unwrap();
    assert!((e2.total_s() / e.total_s() - 2.0).abs() < 1e-9);
    // Batch packing has no estimate (yet).
    let batch = compile::compile(&model(), &opts(PackingRequest::Batch)).unwrap();
    assert!(batch.time_estimate(&units).unwrap().is_none());
}

#[test]
fn the_packed_transform_rotates_every_diagonal_like_a_naive_product() {
    use hecnn_ckks::Complex64;
    use hecnn_nn::scheme::{Packed, Scheme};
    use std::collections::BTreeMap;
    // Every rotation from −n to n, on two input and two output blocks; integer values so
    // the sums are exact whatever their order.
    let n = 16usize;
    let mut diagonals = BTreeMap::new();
    for (v, u) in [(0, 0), (0, 1), (1, 1)] {
        let block: BTreeMap<i64, Vec<Complex64>> = (-(n as i64)..=n as i64)
            .map(|k| {
                let d = (0..n)
                    .map(|i| {
                        Complex64::new(((i as i64 * 7 + k * 3 + v as i64) % 5 - 2) as f64, 0.0)
                    })
                    .collect();
                (k, d)
            })
            .collect();
        diagonals.insert((v, u), block);
    }
    let engine = Packed::new(&[1 << 30, 1 << 30, 1 << 30]);
    let t = engine
        .encode_transform(&diagonals, (2, 2), n, 2, 1.0)
        .unwrap();
    let x: Vec<Vec<f64>> = (0..2)
        .map(|u| {
            (0..n)
                .map(|i| (i * 3 + u * 11) as f64 % 13.0 - 6.0)
                .collect()
        })
        .collect();
    let out = engine
        .transform(&engine.inputs(x.clone(), 2, 1.0), &t)
        .unwrap();
    for (v, o) in out.iter().enumerate() {
        for (i, &got) in o.slots.iter().enumerate() {
            let mut want = 0.0;
            for ((bv, u), block) in &diagonals {
                if *bv != v {
                    continue;
                }
                for (&k, d) in block {
                    want += d[i].re * x[*u][(i as i64 + k).rem_euclid(n as i64) as usize];
                }
            }
            assert_eq!(got, want, "output {v}, slot {i}");
        }
    }
}

#[test]
fn simulator_runs_on_several_threads_at_once_each_with_its_own_headroom() {
    let c = bootstrapped_resnet();
    let sim = c.simulator().unwrap();
    // One ordinary image, one scaled far past what a refresh holds.
    let imgs = images(2, 950);
    let loud = Tensor::new(
        imgs[1].shape().to_vec(),
        imgs[1].data().iter().map(|v| v * 1e6).collect(),
    )
    .unwrap();
    // Each run keeps its own record: a fresh engine starts with none.
    let engine = hecnn_nn::scheme::Packed::new(&[1 << 40, 1 << 40]);
    assert_eq!(engine.fresh().min_headroom_bits(), f64::INFINITY);
    let alone = sim.run(std::slice::from_ref(&imgs[0])).unwrap();
    let (quiet, loud) = std::thread::scope(|s| {
        let quiet = s.spawn(|| sim.run(std::slice::from_ref(&imgs[0])));
        let loud = s.spawn(|| sim.run(std::slice::from_ref(&loud)));
        (quiet.join().unwrap(), loud.join().unwrap())
    });
    let quiet = quiet.unwrap();
    assert_eq!(quiet.logits, alone.logits);
    assert_eq!(quiet.headroom_bits, alone.headroom_bits);
    assert!(alone.headroom_bits > 0.0);
    // The loud image fails on its own thread without touching the quiet one's record.
    assert!(loud.is_err() || loud.is_ok_and(|s| s.headroom_bits < 0.0));
}

#[test]
fn a_model_holding_nan_or_infinity_is_refused() {
    for (at, value) in [
        (1usize, f64::NAN),
        (2, f64::INFINITY),
        (7, f64::NEG_INFINITY),
    ] {
        let mut m = model();
        match &mut m.nodes[at].op {
            Op::Conv2d(c) => c.bias[0] = value,
            Op::Poly(c) => c[1] = value,
            Op::Dense(d) => d.weight.data_mut()[3] = value,
            other => panic!("{other:?}"),
        }
        let e = compile::compile(&m, &opts(PackingRequest::Batch)).err();
        assert!(
            matches!(&e, Some(NnError::Graph { node, .. }) if *node == m.nodes[at].name),
            "{e:?}"
        );
        let e = hecnn_nn::protect::ProtectPlan::new(&m, hecnn_nn::protect::Scope::Network).err();
        assert!(matches!(e, Some(NnError::Graph { .. })), "{e:?}");
    }
}

/// A hostile level count between refreshes is refused before any parameter is sized by it
/// (it once sized a prime list: a multi-terabyte allocation).
#[test]
fn absurd_refresh_levels_are_refused_up_front() {
    for levels in [0, 1, 65, 1 << 40] {
        let mut o = opts(PackingRequest::Single);
        o.refresh_levels = Some(levels);
        let e = compile::compile(&model(), &o).unwrap_err();
        assert!(
            matches!(e, hecnn_nn::NnError::OutOfRange { ref node, .. } if node == "refresh_levels"),
            "{levels}: {e}"
        );
    }
}
