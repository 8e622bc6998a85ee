//! Protected models (encrypted weights) at small ring degrees (toy, insecure parameters)
//! against the cleartext executor on the *original* model: the three classifier variants of
//! Gomez et al. (last layer; whole classifier without activation; with x²+2x) and whole
//! HE-friendly networks (convolutions, pooling, several squares), with features in the
//! clear and encrypted, serialization round trips and the refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;

use common::{conv, node, pool, values};
use hecnn_ckks::{CkksParams, Decryptor, Evaluator};
use hecnn_nn::{
    Model, NnError, Op, Tensor, exec,
    ir::Dense,
    protect::{
        FeatureInput, Form, ProtectPlan, ProtectedModel, ProtectedOutput, Scope, decrypt_output,
    },
};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::SecretKey;

fn dense(seed: u64, o: usize, i: usize, w: f64) -> Op {
    Op::Dense(Dense {
        weight: Tensor::new(vec![o, i], values(seed, o * i, w)).unwrap(),
        bias: values(seed + 1, o, 0.1),
    })
}

/// The Keras `cifar10_cnn` shape in miniature: conv → ReLU → max pool → flatten (18
/// features) → dense 12 → `act` → dense 3. `act` is `None` for no activation.
fn model(act: Option<Op>) -> Model {
    let mut nodes = vec![
        node("input", Op::Input, vec![]),
        node("conv", conv(11, (2, 1, 3), 1, 1, 0.5), vec![0]),
        node("relu", Op::Relu, vec![1]),
        node("pool", Op::MaxPool(pool(2, 2)), vec![2]),
        node("flat", Op::Flatten, vec![3]),
        node("fc1", dense(13, 12, 18, 0.4), vec![4]),
    ];
    if let Some(a) = act {
        nodes.push(node("act", a, vec![5]));
    }
    let last = nodes.len() - 1;
    nodes.push(node("fc2", dense(15, 3, 12, 0.4), vec![last]));
    Model {
        name: "mini-keras".into(),
        input_shape: [1, 6, 6],
        output: nodes.len() - 1,
        nodes,
    }
}

fn image(seed: u64) -> Tensor {
    Tensor::new(vec![1, 6, 6], values(seed, 36, 1.0)).unwrap()
}

struct Owner {
    params: Arc<CkksParams>,
    be: CpuBackend,
    sk: SecretKey,
    rng: Prng,
}

fn owner(log_n: u32, levels: usize, seed: u8) -> Owner {
    let params =
        Arc::new(CkksParams::from_literal(&hecnn_testkit::toy_literal(log_n, levels), 40).unwrap());
    let be = CpuBackend::new(2).unwrap();
    let mut rng = Prng::from_seed([seed; 32]);
    let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    Owner {
        params,
        be,
        sk,
        rng,
    }
}

/// Protects `model`, evaluates `images` at the edge (plain and encrypted features) and
/// returns the worst logit error against the cleartext original.
fn worst_error(model: &Model, scope: Scope, log_n: u32) -> f64 {
    let plan = ProtectPlan::new(model, scope).unwrap();
    let mut o = owner(log_n, plan.spec().depth(), 1);
    let protected = plan.protect(&o.params, &o.sk, &o.be, &mut o.rng).unwrap();
    let keys =
        o.sk.evaluation_keys(&o.be, &protected.key_requirements(), &mut o.rng)
            .unwrap();
    let pk = o.sk.public_key(&o.be, &mut o.rng).unwrap();
    let eval = Evaluator::new(Arc::clone(&o.params), Arc::new(keys), o.be.clone()).unwrap();
    let dec = Decryptor::new(&o.sk, &o.be).unwrap();
    let mut worst = 0.0f64;
    for seed in 0..3 {
        let x = image(100 + seed);
        let want = exec::run(model, &x).unwrap();
        let f = protected.spec().features_of(&x).unwrap();
        let reference = plan.reference(&f);
        for (a, b) in reference.iter().zip(want.data()) {
            assert!((a - b).abs() < 1e-9, "composition changed the function");
        }
        let enc = protected
            .encrypt_features(&eval, &pk, &f, &mut o.rng)
            .unwrap();
        for input in [FeatureInput::Plain(f), FeatureInput::Encrypted(enc)] {
            let out = protected.evaluate(&eval, &input).unwrap();
            assert_eq!(
                out.levels_left(),
                o.params.max_level() - plan.spec().depth()
            );
            let got = decrypt_output(protected.spec(), &o.params, &dec, &o.be, &out).unwrap();
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(want.data()) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    worst
}

#[test]
fn last_layer_protected_matches_cleartext() {
    let err = worst_error(&model(Some(Op::Relu)), Scope::LastLayer, 10);
    assert!(err < 1e-6, "worst logit error {err:e}");
}

#[test]
fn classifier_without_activation_is_one_composed_layer() {
    let m = model(None);
    let plan = ProtectPlan::new(&m, Scope::Classifier).unwrap();
    assert_eq!(
        plan.spec().depth(),
        1,
        "two dense layers compose into one level"
    );
    assert_eq!((plan.spec().features(), plan.spec().outputs()), (18, 3));
    let err = worst_error(&m, Scope::Classifier, 10);
    assert!(err < 1e-6, "worst logit error {err:e}");
}

#[test]
fn classifier_with_square_activation_matches_cleartext() {
    // x²+2x as the paper's activation, at two ring degrees (different block counts).
    let m = model(Some(Op::Poly(vec![0.0, 2.0, 1.0])));
    let plan = ProtectPlan::new(&m, Scope::Classifier).unwrap();
    assert_eq!(plan.spec().depth(), 3);
    assert_eq!(plan.spec().layers[0].square, Some(1.0));
    for log_n in [10, 11] {
        let err = worst_error(&m, Scope::Classifier, log_n);
        assert!(err < 1e-5, "logN={log_n}: worst logit error {err:e}");
    }
    // A general quadratic, and the last layer only of the same model.
    let m = model(Some(Op::Poly(vec![0.3, -0.7, 0.45])));
    assert!(worst_error(&m, Scope::Classifier, 10) < 1e-5);
    assert!(worst_error(&m, Scope::LastLayer, 10) < 1e-6);
}

#[test]
fn many_column_groups_span_several_weight_ciphertexts() {
    // 18 features, 12 hidden (block 16): 32 blocks at N = 2^10, but only 2 at N = 2^6 is
    // not a valid ring; a wide first layer forces several column ciphertexts instead.
    let mut m = model(Some(Op::Poly(vec![0.0, 2.0, 1.0])));
    m.nodes[5] = node("fc1", dense(13, 100, 18, 0.2), vec![4]);
    m.nodes[7] = node("fc2", dense(15, 3, 100, 0.2), vec![6]);
    let plan = ProtectPlan::new(&m, Scope::Classifier).unwrap();
    let layout = plan.spec().layout(512).unwrap();
    assert_eq!((layout.block, layout.groups), (128, 4));
    assert_eq!((layout.layers[0].weights, layout.layers[1].weights), (5, 1));
    let err = worst_error(&m, Scope::Classifier, 10);
    assert!(err < 1e-5, "worst logit error {err:e}");
}

#[test]
fn protection_stops_once_cancelled() {
    let plan = ProtectPlan::new(&model(Some(Op::Relu)), Scope::LastLayer).unwrap();
    let mut o = owner(10, plan.spec().depth(), 1);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    // Cancelled after the first question: the first weight ciphertext may be made, no more.
    let cancelled = || calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0;
    match plan.protect_unless(&o.params, &o.sk, &o.be, &mut o.rng, &cancelled) {
        Err(NnError::Cancelled(stage)) => assert!(stage.contains("layer 1"), "{stage}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("protection went on after cancellation"),
    }
    assert!(
        plan.protect_unless(&o.params, &o.sk, &o.be, &mut o.rng, &|| false)
            .is_ok()
    );
}

#[test]
fn protection_refuses_what_it_cannot_run() {
    let relu_head = model(Some(Op::Relu));
    let err = ProtectPlan::new(&relu_head, Scope::Classifier).unwrap_err();
    assert!(
        matches!(&err, NnError::Unprotectable { node, why } if node == "act" && why.contains("Relu")),
        "{err}"
    );
    let cubic = model(Some(Op::Poly(vec![0.0, 1.0, 0.0, 1.0])));
    let err = ProtectPlan::new(&cubic, Scope::Classifier).unwrap_err();
    assert!(err.to_string().contains("degree 3"), "{err}");
    let mut no_dense = model(None);
    no_dense.nodes.truncate(5);
    no_dense.output = 4;
    let err = ProtectPlan::new(&no_dense, Scope::LastLayer).unwrap_err();
    assert!(err.to_string().contains("end with a dense layer"), "{err}");
    let err = ProtectPlan::new(&model(Some(Op::Relu)), Scope::Network).unwrap_err();
    for refused in ["'relu' (Relu)", "'pool' (MaxPool)", "'act' (Relu)"] {
        assert!(err.to_string().contains(refused), "{err}");
    }
    let wide = Model {
        name: "wide".into(),
        input_shape: [1, 64, 64],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node("conv1", conv(21, (2, 1, 3), 1, 1, 0.4), vec![0]),
            node("flat", Op::Flatten, vec![1]),
            node("fc", dense(25, 2, 8192, 0.3), vec![2]),
        ],
        output: 3,
    };
    let err = ProtectPlan::new(&wide, Scope::Network).unwrap_err();
    assert!(
        matches!(&err, NnError::Unprotectable { node, why } if node == "conv1" && why.contains("maps 4096 values")),
        "{err}"
    );
}

/// An HE-friendly CNN: conv 3×3 (pad 1) → x²+2x → avg pool 2 → conv 3×3 stride 2 (pad 1)
/// → 0.5·x² → flatten → dense 16 → x² → dense 3. Protected whole, its layers alternate
/// column and row groups twice (the last layer in row groups), with depth 7.
fn he_friendly() -> Model {
    let nodes = vec![
        node("input", Op::Input, vec![]),
        node("conv1", conv(21, (2, 1, 3), 1, 1, 0.4), vec![0]),
        node("act1", Op::Poly(vec![0.0, 2.0, 1.0]), vec![1]),
        node("pool", Op::AvgPool(pool(2, 2)), vec![2]),
        node("conv2", conv(23, (3, 2, 3), 2, 1, 0.4), vec![3]),
        node("act2", Op::Poly(vec![0.0, 0.0, 0.5]), vec![4]),
        node("flat", Op::Flatten, vec![5]),
        node("fc1", dense(25, 16, 12, 0.3), vec![6]),
        node("act3", Op::Poly(vec![0.1, 0.0, 1.0]), vec![7]),
        node("fc2", dense(27, 3, 16, 0.3), vec![8]),
    ];
    Model {
        name: "he-friendly".into(),
        input_shape: [1, 6, 6],
        output: nodes.len() - 1,
        nodes,
    }
}

#[test]
fn whole_network_protected_matches_cleartext() {
    let m = he_friendly();
    let plan = ProtectPlan::new(&m, Scope::Network).unwrap();
    let spec = plan.spec();
    assert_eq!(spec.prefix.nodes.len(), 1, "nothing stays in the clear");
    let widths: Vec<_> = spec.layers.iter().map(|l| (l.inputs, l.outputs)).collect();
    assert_eq!(widths, [(36, 72), (72, 12), (12, 16), (16, 3)]);
    assert_eq!(spec.depth(), 7);
    // Block 128 (72 inputs to the row layer leave a window of 57 ≥ 16 outputs).
    let layout = spec.layout(512).unwrap();
    assert_eq!((layout.block, layout.groups), (128, 4));
    let forms: Vec<_> = layout.layers.iter().map(|l| l.form).collect();
    assert_eq!(
        forms,
        [Form::Columns, Form::Rows, Form::Columns, Form::Rows]
    );
    for log_n in [10, 11] {
        let err = worst_error(&m, Scope::Network, log_n);
        assert!(err < 1e-4, "logN={log_n}: worst logit error {err:e}");
    }
    // The same model with its classifier protected only: the convolutions stay in the
    // clear.
    let plan = ProtectPlan::new(&m, Scope::Classifier).unwrap();
    assert_eq!(plan.spec().prefix.nodes.len(), 7);
    assert_eq!(plan.spec().depth(), 3);
    assert!(worst_error(&m, Scope::Classifier, 10) < 1e-5);
    // Cut after fc1: three layers, the last in column groups at a non-zero offset.
    let mut three = m.clone();
    three.nodes.truncate(8);
    three.output = 7;
    let plan = ProtectPlan::new(&three, Scope::Network).unwrap();
    assert_eq!(plan.spec().layers.len(), 3);
    assert_ne!(plan.spec().layout(512).unwrap().layers[2].offset, 0);
    assert!(worst_error(&three, Scope::Network, 10) < 1e-4);

    // The whole network survives a save and load (offsets and windows included).
    let plan = ProtectPlan::new(&m, Scope::Network).unwrap();
    let mut o = owner(10, plan.spec().depth(), 4);
    let protected = plan.protect(&o.params, &o.sk, &o.be, &mut o.rng).unwrap();
    let loaded = ProtectedModel::from_bytes(&o.be, &protected.to_bytes(&o.be).unwrap()).unwrap();
    assert_eq!(loaded.spec(), protected.spec());
    let keys =
        o.sk.evaluation_keys(&o.be, &loaded.key_requirements(), &mut o.rng)
            .unwrap();
    let eval = Evaluator::new(Arc::clone(&o.params), Arc::new(keys), o.be.clone()).unwrap();
    let x = image(9);
    let f = loaded.spec().features_of(&x).unwrap();
    let out = loaded.evaluate(&eval, &FeatureInput::Plain(f)).unwrap();
    let dec = Decryptor::new(&o.sk, &o.be).unwrap();
    let got = decrypt_output(loaded.spec(), &o.params, &dec, &o.be, &out).unwrap();
    for (a, b) in got.iter().zip(exec::run(&m, &x).unwrap().data()) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn protected_models_round_trip_and_reject_bad_bytes() {
    let m = model(Some(Op::Poly(vec![0.0, 2.0, 1.0])));
    let plan = ProtectPlan::new(&m, Scope::Classifier).unwrap();
    let mut o = owner(10, 3, 2);
    let protected = plan.protect(&o.params, &o.sk, &o.be, &mut o.rng).unwrap();
    let bytes = protected.to_bytes(&o.be).unwrap();
    let loaded = ProtectedModel::from_bytes(&o.be, &bytes).unwrap();
    assert_eq!(loaded.spec().features(), 18);
    assert_eq!(loaded.key_id(), o.sk.key_id());

    // No weight of a protected layer appears in the file: neither as f64 nor as a pair of
    // neighbouring f32 (8-byte patterns, which random ciphertext bytes do not produce).
    let file_has = |p: &[f64]| {
        let mut pair = (p[0] as f32).to_le_bytes().to_vec();
        pair.extend((p[1] as f32).to_le_bytes());
        let f64b = p[0].to_le_bytes();
        bytes.windows(8).any(|w| w == pair || w == f64b)
    };
    let w1 = &plan.layers()[0];
    for p in w1.weight.windows(2).chain(w1.bias.windows(2)) {
        assert!(
            !file_has(p),
            "protected weights {p:?} are stored in the clear"
        );
    }

    // The loaded model evaluates to the same logits.
    let keys =
        o.sk.evaluation_keys(&o.be, &loaded.key_requirements(), &mut o.rng)
            .unwrap();
    let eval = Evaluator::new(Arc::clone(&o.params), Arc::new(keys), o.be.clone()).unwrap();
    let x = image(7);
    let f = loaded.spec().features_of(&x).unwrap();
    let out = loaded
        .evaluate(&eval, &FeatureInput::Plain(f.clone()))
        .unwrap();
    let out_bytes = out.to_bytes(&o.be, &o.params, loaded.key_id()).unwrap();
    let (back, key) =
        ProtectedOutput::from_bytes(&o.be, loaded.spec(), &o.params, &out_bytes).unwrap();
    assert_eq!(key, o.sk.key_id());
    let dec = Decryptor::new(&o.sk, &o.be).unwrap();
    let got = decrypt_output(loaded.spec(), &o.params, &dec, &o.be, &back).unwrap();
    let want = exec::run(&m, &x).unwrap();
    for (a, b) in got.iter().zip(want.data()) {
        assert!((a - b).abs() < 1e-5);
    }

    // Malformed or mismatched input: errors, never panics.
    let invalid = |r: Result<ProtectedModel<CpuBackend>, NnError>| {
        matches!(
            r,
            Err(NnError::Format { .. } | NnError::Encrypted { .. } | NnError::Onnx(_))
        )
    };
    assert!(invalid(ProtectedModel::from_bytes(
        &o.be,
        &bytes[..bytes.len() / 2]
    )));
    assert!(invalid(ProtectedModel::from_bytes(&o.be, b"HCNP")));
    let mut wrong_magic = bytes.clone();
    wrong_magic[0] ^= 1;
    assert!(invalid(ProtectedModel::from_bytes(&o.be, &wrong_magic)));
    for pos in [bytes.len() / 3, bytes.len() - 40] {
        let mut flipped = bytes.clone();
        flipped[pos] ^= 0x80;
        // A flipped byte in a ciphertext body may still decode (the result is then
        // garbage, as for any altered ciphertext), but it must never panic.
        let _ = ProtectedModel::<CpuBackend>::from_bytes(&o.be, &flipped);
    }
    assert!(ProtectedOutput::from_bytes(&o.be, loaded.spec(), &o.params, &bytes).is_err());
    assert!(ProtectedOutput::from_bytes(&o.be, loaded.spec(), &o.params, &out_bytes[..9]).is_err());

    // Keys of another owner, and a feature vector of the wrong length.
    let mut other = owner(10, 3, 3);
    let other_keys = other
        .sk
        .evaluation_keys(&other.be, &loaded.key_requirements(), &mut other.rng)
        .unwrap();
    let other_eval = Evaluator::new(
        Arc::clone(&other.params),
        Arc::new(other_keys),
        other.be.clone(),
    )
    .unwrap();
    let err = loaded
        .evaluate(&other_eval, &FeatureInput::Plain(f.clone()))
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            NnError::Mismatch {
                what: "owner key of the evaluation keys",
                ..
            }
        ),
        "{err}"
    );
    let err = loaded
        .evaluate(&eval, &FeatureInput::Plain(f[..5].to_vec()))
        .err()
        .unwrap();
    assert!(matches!(err, NnError::Shape(_)), "{err}");
}

/// Flatten(1×6×6) → dense chain with squares between, widths `widths` (the first is the
/// feature count, 36).
fn dense_chain(widths: &[usize]) -> Model {
    let mut nodes = vec![
        node("input", Op::Input, vec![]),
        node("flat", Op::Flatten, vec![0]),
    ];
    for (k, w) in widths.windows(2).enumerate() {
        if k > 0 {
            let last = nodes.len() - 1;
            nodes.push(node(
                &format!("act{k}"),
                Op::Poly(vec![0.05, 0.3, 0.5]),
                vec![last],
            ));
        }
        let last = nodes.len() - 1;
        let scale = 1.0 / (w[0] as f64).sqrt();
        nodes.push(node(
            &format!("fc{k}"),
            dense(40 + k as u64, w[1], w[0], scale),
            vec![last],
        ));
    }
    Model {
        name: "chain".into(),
        input_shape: [1, 6, 6],
        output: nodes.len() - 1,
        nodes,
    }
}

#[test]
fn layouts_at_their_limits_evaluate_exactly() {
    // A column layer whose outputs exactly fill the window the row layer before leaves:
    // 9 outputs after 8 row inputs in blocks of 16 (8 + 9 = 16 + 1).
    let tight = dense_chain(&[36, 8, 5, 9]);
    let plan = ProtectPlan::new(&tight, Scope::Classifier).unwrap();
    assert_eq!(plan.spec().layout(512).unwrap().block, 16);
    assert!(worst_error(&tight, Scope::Classifier, 10) < 1e-4);
    // One group (block = slots = 512): the row sums fill every slot, so the 250 outputs
    // after 300 row inputs fit although no window of 213 slots would hold them.
    let one_group = dense_chain(&[36, 300, 7, 250]);
    let layout = ProtectPlan::new(&one_group, Scope::Classifier)
        .unwrap()
        .spec()
        .layout(512)
        .unwrap();
    assert_eq!((layout.block, layout.groups), (512, 1));
    assert!(worst_error(&one_group, Scope::Classifier, 10) < 1e-4);
}

#[test]
fn absurd_layer_sizes_are_refused_not_overflowed() {
    let plan = ProtectPlan::new(&he_friendly(), Scope::Network).unwrap();
    let mut spec = plan.spec().clone();
    // As a malicious file could declare them: the last layer's width at the type's limit.
    spec.layers.pop();
    spec.layers.pop();
    spec.layers.last_mut().unwrap().square = None;
    spec.layers.last_mut().unwrap().outputs = usize::MAX;
    assert!(spec.layout(1 << 15).is_err());
    let widths = std::iter::once(36).chain([4; 100]).collect::<Vec<_>>();
    let err = ProtectPlan::new(&dense_chain(&widths), Scope::Classifier).unwrap_err();
    assert!(err.to_string().contains("at most 64"), "{err}");
}

/// The flooding-sized chain (`protect::parameters`) at a toy ring degree: the owner's
/// flooded decryption (default statistical security and query count, the fixed noise bound)
/// moves no logit by more than its stated bound, keeps every argmax, and the chain from
/// before flooding was sized for refuses to flood.
#[test]
fn flooded_outputs_stay_within_their_bound_and_keep_the_argmax() {
    use hecnn_ckks::flooding;
    use hecnn_nn::compile::params::{Chain, literal};
    use hecnn_nn::protect::{decrypt_output_flooded, output_flooding};
    use hecnn_rlwe::SecurityLevel;

    let variants = [
        (model(Some(Op::Relu)), Scope::LastLayer),
        (model(None), Scope::Classifier),
        (
            model(Some(Op::Poly(vec![0.0, 2.0, 1.0]))),
            Scope::Classifier,
        ),
    ];
    for (m, scope) in variants {
        let plan = ProtectPlan::new(&m, scope).unwrap();
        let depth = plan.spec().depth();
        let (lit, log_scale) = literal(
            Chain::Protected,
            depth,
            11,
            SecurityLevel::UncheckedForReproduction,
        )
        .unwrap();
        assert_eq!(log_scale, 60);
        let params = Arc::new(CkksParams::from_literal(&lit, log_scale).unwrap());
        assert_eq!(params.max_level(), depth + 1, "a two-prime output level");
        let be = CpuBackend::new(2).unwrap();
        let mut rng = Prng::from_seed([9; 32]);
        let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
        let protected = plan.protect(&params, &sk, &be, &mut rng).unwrap();
        let keys = sk
            .evaluation_keys(&be, &protected.key_requirements(), &mut rng)
            .unwrap();
        let pk = sk.public_key(&be, &mut rng).unwrap();
        let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
        let dec = Decryptor::new(&sk, &be).unwrap();

        let f = output_flooding(protected.spec(), &params).unwrap();
        assert_eq!(
            f.flooding().statistical_bits(),
            flooding::DEFAULT_STATISTICAL_BITS
        );
        assert_eq!(f.flooding().queries_log2(), flooding::DEFAULT_QUERIES_LOG2);
        // σ ≈ 2^46 at N = 2^11, each logit moved by σ·√(N/2)/2^60 ≈ 2^-9.
        assert!(
            f.output_std() < 4e-3,
            "{scope:?}: ±{:e} per logit",
            f.output_std()
        );
        assert!(f.release_bits() >= 8, "{} bits", f.release_bits());
        // Six standard deviations and the rounding: no honest logit moves by more.
        let bound = 6.0 * f.output_std() + f64::from(f.release_bits()).exp2().recip();
        assert!(bound < 2.5e-2);
        let mut worst = 0.0f64;
        for seed in 0..4 {
            let x = image(300 + seed);
            let want = exec::run(&m, &x).unwrap();
            let feats = protected.spec().features_of(&x).unwrap();
            let enc = protected
                .encrypt_features(&eval, &pk, &feats, &mut rng)
                .unwrap();
            for input in [FeatureInput::Plain(feats), FeatureInput::Encrypted(enc)] {
                let out = protected.evaluate(&eval, &input).unwrap();
                assert_eq!(out.levels_left(), 1);
                let exact = decrypt_output(protected.spec(), &params, &dec, &be, &out).unwrap();
                let flooded = decrypt_output_flooded(
                    protected.spec(),
                    &params,
                    &dec,
                    &be,
                    &out,
                    &f,
                    &mut rng,
                )
                .unwrap();
                for (a, b) in flooded.iter().zip(&exact) {
                    worst = worst.max((a - b).abs());
                    // Rounded to the released bits.
                    let unit = f64::from(f.release_bits()).exp2();
                    assert_eq!((a * unit).fract(), 0.0);
                }
                // The same class as the cleartext model wherever its margin exceeds the bound.
                let mut sorted = want.data().to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                if sorted[0] - sorted[1] > 2.0 * bound {
                    assert_eq!(exec::argmax(&flooded), exec::argmax(want.data()));
                }
                for (a, b) in exact.iter().zip(want.data()) {
                    assert!((a - b).abs() < 1e-6, "unflooded {a} vs {b}");
                }
            }
        }
        assert!(worst <= bound, "{scope:?}: flooded logits {worst:e} off");
        // Rounding alone moves a logit by at most half a unit: a move beyond a whole unit is
        // the flooding's.
        let unit = f64::from(f.release_bits()).exp2().recip();
        assert!(
            worst > unit,
            "{scope:?}: {worst:e} moved, no more than rounding"
        );

        // The flooding's spread: the same result decrypted many times deviates from the
        // exact logits by about `output_std` (the rounding's unit²/12 beside it), fresh each
        // time.
        let feats = protected.spec().features_of(&image(310)).unwrap();
        let out = protected
            .evaluate(&eval, &FeatureInput::Plain(feats))
            .unwrap();
        let exact = decrypt_output(protected.spec(), &params, &dec, &be, &out).unwrap();
        let (mut sum, mut sum_sq, mut n) = (0.0f64, 0.0f64, 0.0f64);
        let mut first = None;
        let mut all_same = true;
        for _ in 0..100 {
            let flooded =
                decrypt_output_flooded(protected.spec(), &params, &dec, &be, &out, &f, &mut rng)
                    .unwrap();
            match &first {
                None => first = Some(flooded.clone()),
                Some(v) => all_same &= *v == flooded,
            }
            for (a, b) in flooded.iter().zip(&exact) {
                let d = a - b;
                sum += d;
                sum_sq += d * d;
                n += 1.0;
            }
        }
        assert!(!all_same, "{scope:?}: the same flooding every time");
        let std = (sum_sq / n - (sum / n).powi(2)).sqrt();
        assert!(
            (0.5 * f.output_std()..=2.0 * f.output_std()).contains(&std),
            "{scope:?}: flooded logits spread ±{std:e}, the flooding promises ±{:e}",
            f.output_std()
        );
    }
}

/// `protect::parameters` at 128 bits is the flooding-sized chain and passes the security
/// table; the chain from before flooding was sized for cannot flood its outputs.
#[test]
fn protected_parameters_are_sized_for_flooding_and_the_old_ones_refuse_it() {
    use hecnn_nn::protect::{output_flooding, parameters, parameters_unflooded};
    use hecnn_rlwe::SecurityLevel;

    let plan = ProtectPlan::new(&model(Some(Op::Relu)), Scope::LastLayer).unwrap();
    let params = parameters(plan.spec(), SecurityLevel::Bits128).unwrap();
    assert_eq!(params.rlwe().log_n(), 13);
    assert_eq!(params.log_scale(), 60);
    assert!(params.rlwe().log_qp() <= 218.0);
    let f = output_flooding(plan.spec(), &params).unwrap();
    assert!(f.output_log_q() > f.flooding().sigma_log2() + 9.0);
    // 2^21 of noise hidden at N = 2^13: each logit moves by about 1.4·10^-2.
    assert!(f.output_std() < 2e-2, "±{:e}", f.output_std());
    assert_eq!(f.flooding().noise_log2(), 21.0);

    let old = parameters_unflooded(plan.spec(), SecurityLevel::Bits128).unwrap();
    assert_eq!(old.log_scale(), 40);
    match output_flooding(plan.spec(), &old) {
        Err(NnError::Ckks(hecnn_ckks::CkksError::FloodingTooWide { .. })) => {}
        other => panic!("the 49-bit output prime flooded: {other:?}"),
    }
}

/// A per-model bound measured by the owner (`measure_output_noise_log2`, with a throwaway
/// key) is below the ring degree's fixed bound, floods less, and releases the edge's results
/// on similar inputs; a bound below their noise refuses them instead of releasing them.
#[test]
fn a_measured_noise_bound_floods_less_and_refuses_what_it_does_not_cover() {
    use hecnn_ckks::Flooding;
    use hecnn_nn::compile::params::{Chain, literal};
    use hecnn_nn::protect::{
        decrypt_output_flooded, measure_output_noise_log2, output_flooding, output_flooding_with,
    };
    use hecnn_rlwe::SecurityLevel;

    let m = model(Some(Op::Poly(vec![0.0, 2.0, 1.0])));
    let plan = ProtectPlan::new(&m, Scope::Classifier).unwrap();
    let (lit, s) = literal(
        Chain::Protected,
        plan.spec().depth(),
        11,
        SecurityLevel::UncheckedForReproduction,
    )
    .unwrap();
    let params = Arc::new(CkksParams::from_literal(&lit, s).unwrap());
    let be = CpuBackend::new(2).unwrap();
    let mut rng = Prng::from_seed([5; 32]);
    let calibration: Vec<Vec<f64>> = (0..4)
        .map(|i| plan.spec().features_of(&image(500 + i)).unwrap())
        .collect();
    let bound = measure_output_noise_log2(&plan, &params, &be, &calibration, &mut rng).unwrap();
    assert!(measure_output_noise_log2(&plan, &params, &be, &[], &mut rng).is_err());

    let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    let protected = plan.protect(&params, &sk, &be, &mut rng).unwrap();
    let keys = sk
        .evaluation_keys(&be, &protected.key_requirements(), &mut rng)
        .unwrap();
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
    let dec = Decryptor::new(&sk, &be).unwrap();
    let fixed = output_flooding(protected.spec(), &params).unwrap();
    assert!(
        bound + 2.0 < fixed.flooding().noise_log2(),
        "2^{bound} measured"
    );
    let measured = output_flooding_with(
        protected.spec(),
        &params,
        Flooding::with_defaults(bound).unwrap(),
    )
    .unwrap();
    assert!(measured.output_std() < fixed.output_std() / 4.0);
    let too_low = output_flooding_with(
        protected.spec(),
        &params,
        Flooding::with_defaults(bound - 6.0).unwrap(),
    )
    .unwrap();
    for i in 0..3 {
        let x = image(600 + i);
        let f = protected.spec().features_of(&x).unwrap();
        let out = protected.evaluate(&eval, &FeatureInput::Plain(f)).unwrap();
        let exact = decrypt_output(protected.spec(), &params, &dec, &be, &out).unwrap();
        let got = decrypt_output_flooded(
            protected.spec(),
            &params,
            &dec,
            &be,
            &out,
            &measured,
            &mut rng,
        )
        .unwrap();
        let allowed =
            6.0 * measured.output_std() + f64::from(measured.release_bits()).exp2().recip();
        for (a, b) in got.iter().zip(&exact) {
            assert!((a - b).abs() <= allowed, "{a} vs {b}");
        }
        match decrypt_output_flooded(
            protected.spec(),
            &params,
            &dec,
            &be,
            &out,
            &too_low,
            &mut rng,
        ) {
            Err(e @ NnError::NoiseAboveBound { .. }) => {
                // The message names the public bound, never the secret-dependent estimate.
                assert_eq!(
                    e.to_string(),
                    format!(
                        "a result noisier than the flooding bound 2^{:.1}: not released",
                        bound - 6.0
                    )
                );
            }
            other => panic!("a result above the bound was released: {other:?}"),
        }
    }
}
