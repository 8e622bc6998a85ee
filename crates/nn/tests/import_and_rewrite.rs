//! ONNX import of generated models against the cleartext executor, unsupported-operator
//! reporting, malformed input, and the HE-friendly rewrites.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use hecnn_nn::{
    Model, NnError, Op, RewriteOptions, Tensor, exec,
    ir::{BatchNorm, Conv2d, Dense, Node, Pool},
    onnx::{self, proto},
    rewrite,
};

fn values(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    // Multiples of 2^-12: exactly representable in f32, so export is lossless.
    hecnn_testkit::uniform_values(seed, n)
        .into_iter()
        .map(|v| (v * scale * 4096.0).round() / 4096.0)
        .collect()
}

fn tensor(seed: u64, shape: Vec<usize>, scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape, values(seed, n, scale)).unwrap()
}

fn node(name: &str, op: Op, inputs: Vec<usize>) -> Node {
    Node {
        name: name.into(),
        op,
        inputs,
    }
}

/// HCNN's MNIST network: conv 5×5/2 (5) → x² → conv 5×5/2 (50) → x² → dense 10.
fn hcnn_mnist() -> Model {
    Model {
        name: "hcnn-mnist".into(),
        input_shape: [1, 28, 28],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node(
                "conv1",
                Op::Conv2d(Conv2d {
                    weight: tensor(1, vec![5, 1, 5, 5], 0.5),
                    bias: values(2, 5, 0.1),
                    stride: [2, 2],
                    padding: [1, 1, 0, 0],
                    groups: 1,
                }),
                vec![0],
            ),
            node("sq1", Op::Poly(vec![0.0, 0.0, 1.0]), vec![1]),
            node(
                "conv2",
                Op::Conv2d(Conv2d {
                    weight: tensor(3, vec![50, 5, 5, 5], 0.2),
                    bias: values(4, 50, 0.1),
                    stride: [2, 2],
                    padding: [0; 4],
                    groups: 1,
                }),
                vec![2],
            ),
            node("sq2", Op::Poly(vec![0.0, 0.0, 1.0]), vec![3]),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: tensor(5, vec![10, 50 * 5 * 5], 0.05),
                    bias: values(6, 10, 0.1),
                }),
                vec![4],
            ),
        ],
        output: 5,
    }
}

/// Conv → BN → (a·x² + b·x + c as separate nodes) → residual add → avg pool → GAP → dense.
fn residual_model() -> Model {
    let bn = BatchNorm {
        scale: values(10, 4, 1.0),
        bias: values(11, 4, 0.5),
        mean: values(12, 4, 0.3),
        var: values(13, 4, 0.4).iter().map(|v| v.abs() + 0.5).collect(),
        epsilon: 1e-5,
    };
    Model {
        name: "residual".into(),
        input_shape: [3, 8, 8],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node(
                "conv",
                Op::Conv2d(Conv2d {
                    weight: tensor(7, vec![4, 3, 3, 3], 0.5),
                    bias: values(8, 4, 0.1),
                    stride: [1, 1],
                    padding: [1, 1, 1, 1],
                    groups: 1,
                }),
                vec![0],
            ),
            node("bn", Op::BatchNorm(bn), vec![1]),
            node("sq", Op::Poly(vec![0.0, 0.0, 1.0]), vec![2]),
            node("a_sq", Op::Poly(vec![0.0, 0.25]), vec![3]),
            node("b_x", Op::Poly(vec![0.0, 0.5]), vec![2]),
            node("act", Op::Add, vec![4, 5]),
            node("act_c", Op::Poly(vec![0.125, 1.0]), vec![6]),
            node(
                "conv2",
                Op::Conv2d(Conv2d {
                    weight: tensor(9, vec![4, 1, 3, 3], 0.5),
                    bias: vec![0.0; 4],
                    stride: [1, 1],
                    padding: [1, 1, 1, 1],
                    groups: 4,
                }),
                vec![7],
            ),
            node("res", Op::Add, vec![8, 7]),
            node(
                "pool",
                Op::AvgPool(Pool {
                    kernel: [2, 2],
                    stride: [2, 2],
                    padding: [0; 4],
                }),
                vec![9],
            ),
            node("gap", Op::GlobalAvgPool, vec![10]),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: tensor(14, vec![3, 4], 1.0),
                    bias: values(15, 3, 0.1),
                }),
                vec![11],
            ),
        ],
        output: 12,
    }
}

/// Conv → per-channel quadratic (AESPA) → conv, added to the activation (a residual) →
/// per-channel quadratic → GAP → dense.
fn aespa_model() -> Model {
    let quad = |seed: u64| {
        Op::ChannelPoly(
            (0..4)
                .map(|k| {
                    let v = values(seed + k, 3, 0.5);
                    vec![v[0], 1.0 + v[1], 0.25 + 0.5 * v[2].abs()]
                })
                .collect(),
        )
    };
    let conv = |seed: u64, groups: usize| {
        Op::Conv2d(Conv2d {
            weight: tensor(seed, vec![4, 4 / groups, 3, 3], 0.5),
            bias: values(seed + 1, 4, 0.1),
            stride: [1, 1],
            padding: [1, 1, 1, 1],
            groups,
        })
    };
    Model {
        name: "aespa".into(),
        input_shape: [4, 6, 6],
        nodes: vec![
            node("input", Op::Input, vec![]),
            node("conv1", conv(30, 1), vec![0]),
            node("act1", quad(40), vec![1]),
            node("conv2", conv(32, 4), vec![2]),
            node("res", Op::Add, vec![3, 2]),
            node("act2", quad(50), vec![4]),
            node("gap", Op::GlobalAvgPool, vec![5]),
            node(
                "fc",
                Op::Dense(Dense {
                    weight: tensor(34, vec![3, 4], 1.0),
                    bias: values(35, 3, 0.1),
                }),
                vec![6],
            ),
        ],
        output: 7,
    }
}

#[test]
fn per_channel_quadratics_export_as_pytorch_writes_them_and_fold_back() {
    let model = aespa_model();
    let x = tensor(22, model.input_shape.to_vec(), 1.0);
    let want = exec::run(&model, &x).unwrap();
    let bytes = onnx::export_onnx(&model).unwrap();
    let imported = onnx::import_onnx(&bytes).unwrap();
    // x·x·A + x·B + C: five nodes for each activation.
    assert!(imported.nodes.len() > model.nodes.len() + 8);
    assert_close(&exec::run(&imported, &x).unwrap(), &want, 1e-6);
    let rewritten = rewrite(&imported, &RewriteOptions::default()).unwrap();
    assert_close(&exec::run(&rewritten, &x).unwrap(), &want, 1e-9);
    let kinds: Vec<&str> = rewritten.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(
        kinds,
        [
            "Input",
            "Conv2d",
            "ChannelPoly",
            "Conv2d",
            "Add",
            "ChannelPoly",
            "GlobalAvgPool",
            "Flatten",
            "Dense"
        ]
    );
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.shape(), b.shape());
    for (x, y) in a.data().iter().zip(b.data()) {
        assert!((x - y).abs() <= tol * (1.0 + x.abs()), "{x} vs {y}");
    }
}

/// Every activation polynomial the exporter writes (Horner's form, `(x·a + b)·x + c`) reads
/// back as one activation of the same input: `x² + 2x` (Gomez et al.'s activation) used to
/// come back as "Mul of two different activations".
#[test]
fn exported_activation_polynomials_import_as_one_activation() {
    for c in [
        vec![0.0, 2.0, 1.0],
        vec![0.5, -1.0, 0.25],
        vec![1.0, 0.0, 1.0],
        vec![0.0, 0.0, 1.0],
        vec![0.25, 0.5],
    ] {
        let dense = |seed: u64, o: usize, i: usize| {
            Op::Dense(hecnn_nn::ir::Dense {
                weight: tensor(seed, vec![o, i], 0.5),
                bias: values(seed + 1, o, 0.1),
            })
        };
        let model = Model {
            name: "poly".into(),
            input_shape: [1, 2, 2],
            nodes: vec![
                node("x", Op::Input, vec![]),
                node("flat", Op::Flatten, vec![0]),
                node("fc1", dense(30, 3, 4), vec![1]),
                node("act", Op::Poly(c.clone()), vec![2]),
                node("fc2", dense(32, 2, 3), vec![3]),
            ],
            output: 4,
        };
        let x = tensor(33, vec![1, 2, 2], 1.0);
        let want = exec::run(&model, &x).unwrap();
        let imported = onnx::import_onnx(&onnx::export_onnx(&model).unwrap())
            .unwrap_or_else(|e| panic!("{c:?}: {e}"));
        let rewritten = rewrite(&imported, &RewriteOptions::default()).unwrap();
        assert_close(&exec::run(&rewritten, &x).unwrap(), &want, 1e-12);
        let polys: Vec<&Op> = rewritten
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Poly(_)))
            .map(|n| &n.op)
            .collect();
        assert_eq!(polys, vec![&Op::Poly(c.clone())], "{c:?}");
    }
}

/// A model read from a file is untrusted: an input shape whose size overflows (found by the
/// CI's fuzz smoke run on a compiled model) or is empty is refused, not multiplied.
#[test]
fn hostile_input_shapes_are_refused_not_overflowed() {
    let model = |input_shape: [usize; 3]| Model {
        name: "shape".into(),
        input_shape,
        nodes: vec![
            node("x", Op::Input, vec![]),
            node("flat", Op::Flatten, vec![0]),
        ],
        output: 1,
    };
    for bad in [[1 << 40, 1 << 40, 1], [0, 28, 28], [1, 1 << 13, 1 << 12]] {
        match model(bad).shapes() {
            Err(NnError::NodeShape { detail, .. }) => {
                assert!(detail.contains("values"), "{detail}")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(
        model([3, 224, 224]).shapes().unwrap()[1],
        vec![3 * 224 * 224]
    );
}

#[test]
fn onnx_round_trip_matches_cleartext() {
    for (model, seed) in [(hcnn_mnist(), 20u64), (residual_model(), 21)] {
        let x = tensor(seed, model.input_shape.to_vec(), 1.0);
        let want = exec::run(&model, &x).unwrap();
        let bytes = onnx::export_onnx(&model).unwrap();
        let imported = onnx::import_onnx(&bytes).unwrap();
        assert_close(&exec::run(&imported, &x).unwrap(), &want, 1e-6);
        let rewritten = rewrite(&imported, &RewriteOptions::default()).unwrap();
        assert_close(&exec::run(&rewritten, &x).unwrap(), &want, 1e-9);
        // Rewrites shrink the graph: no BatchNorm / affine nodes left, one activation per layer.
        assert!(
            rewritten
                .nodes
                .iter()
                .all(|n| !matches!(n.op, Op::BatchNorm(_) | Op::ChannelAffine { .. }))
        );
    }
    let rewritten = rewrite(&residual_model(), &RewriteOptions::default()).unwrap();
    let polys: Vec<&Vec<f64>> = rewritten
        .nodes
        .iter()
        .filter_map(|n| {
            if let Op::Poly(c) = &n.op {
                Some(c)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        polys,
        vec![&vec![0.125, 0.5, 0.25]],
        "a·x² + b·x + c recognised as one activation"
    );
}

fn raw_model(nodes: Vec<proto::NodeProto>, initializers: Vec<proto::TensorProto>) -> Vec<u8> {
    onnx::graph_to_onnx(&[1, 1, 4, 4], nodes, initializers)
}

fn pnode(op: &str, name: &str, inputs: &[&str], output: &str) -> proto::NodeProto {
    proto::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

#[test]
fn every_unsupported_operator_is_listed() {
    let bytes = raw_model(
        vec![
            pnode("Tanh", "act_tanh", &["x"], "a"),
            pnode("Mul", "square", &["x", "x"], "b"),
            pnode("Softmax", "probabilities", &["b"], "c"),
            pnode("LSTM", "rnn", &["c"], "d"),
            pnode("Add", "join", &["a", "d"], "e"),
        ],
        vec![],
    );
    let err = onnx::import_onnx(&bytes).unwrap_err();
    let NnError::Unsupported(list) = &err else {
        panic!("{err}")
    };
    let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
    // The LSTM consumes the Softmax output, yet is reported too; the Add of poisoned values is
    // not (it is not itself unsupported).
    assert_eq!(names, vec!["act_tanh", "probabilities", "rnn"]);
    let msg = err.to_string();
    assert!(
        msg.contains("Tanh (node 'act_tanh')") && msg.contains("LSTM (node 'rnn')"),
        "{msg}"
    );
}

#[test]
fn malformed_and_mismatched_inputs_are_typed_errors() {
    assert!(matches!(
        onnx::import_onnx(b"definitely not protobuf \xff\xff\xff"),
        Err(NnError::Onnx(_))
    ));
    let bytes = onnx::export_onnx(&hcnn_mnist()).unwrap();
    for cut in [1, bytes.len() / 3, bytes.len() - 7] {
        assert!(onnx::import_onnx(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    // A weight of the wrong size for its declared dimensions.
    let bad_w = proto::TensorProto {
        dims: vec![2, 1, 3, 3],
        data_type: 1,
        name: "w".into(),
        raw_data: vec![0; 12],
        ..Default::default()
    };
    let bytes = raw_model(vec![pnode("Conv", "c", &["x", "w"], "y")], vec![bad_w]);
    assert!(matches!(onnx::import_onnx(&bytes), Err(NnError::Onnx(m)) if m.contains("raw bytes")));
    // Wrong input shape to the executor.
    let x = Tensor::zeros(vec![1, 27, 28]);
    assert!(matches!(
        exec::run(&hcnn_mnist(), &x),
        Err(NnError::Shape(_))
    ));
    // Inconsistent model: dense layer of the wrong width.
    let mut m = hcnn_mnist();
    if let Op::Dense(d) = &mut m.nodes[5].op {
        d.weight = tensor(1, vec![10, 7], 1.0);
    }
    assert!(
        matches!(m.shapes(), Err(NnError::NodeShape { ref node, .. }) if !node.is_empty()),
        "{:?}",
        m.shapes()
    );
}

#[test]
fn relu_and_maxpool_need_a_replacement() {
    let bytes = raw_model(
        vec![pnode("Relu", "relu1", &["x"], "a"), {
            let mut n = pnode("MaxPool", "pool1", &["a"], "b");
            n.attribute = vec![
                proto::AttributeProto {
                    name: "kernel_shape".into(),
                    r#type: 7,
                    ints: vec![2, 2],
                    ..Default::default()
                },
                proto::AttributeProto {
                    name: "strides".into(),
                    r#type: 7,
                    ints: vec![2, 2],
                    ..Default::default()
                },
            ];
            n
        }],
        vec![],
    );
    let model = onnx::import_onnx(&bytes).unwrap();
    let err = rewrite(&model, &RewriteOptions::default()).unwrap_err();
    assert!(
        matches!(&err, NnError::NotPolynomial(v) if v.len() == 2),
        "{err}"
    );
    assert!(err.to_string().contains("relu1 (Relu)"));
    let opts = RewriteOptions {
        relu_replacement: Some(vec![0.0, 0.5, 0.25]),
        maxpool_as_avgpool: true,
    };
    let he = rewrite(&model, &opts).unwrap();
    let x = tensor(3, vec![1, 4, 4], 1.0);
    let y = exec::run(&he, &x).unwrap();
    assert_eq!(y.shape(), &[1, 2, 2]);
    let want = (x.data()[0] * 0.5
        + x.data()[0].powi(2) * 0.25
        + x.data()[1] * 0.5
        + x.data()[1].powi(2) * 0.25
        + x.data()[4] * 0.5
        + x.data()[4].powi(2) * 0.25
        + x.data()[5] * 0.5
        + x.data()[5].powi(2) * 0.25)
        / 4.0;
    assert!((y.data()[0] - want).abs() < 1e-12);
}

#[test]
fn external_data_must_stay_in_the_model_directory() {
    let dir = std::env::temp_dir().join(format!("hecnn-extdata-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let entry = |k: &str, v: &str| proto::StringStringEntryProto {
        key: k.into(),
        value: v.into(),
    };
    let weight = |location: &str| proto::TensorProto {
        dims: vec![1, 1, 1, 1],
        data_type: 1,
        name: "w".into(),
        external_data: vec![
            entry("location", location),
            entry("offset", "0"),
            entry("length", "4"),
        ],
        data_location: 1,
        ..Default::default()
    };
    std::fs::write(dir.join("w.bin"), 2.0f32.to_le_bytes()).unwrap();
    for (location, ok) in [("w.bin", true), ("../w.bin", false), ("/etc/passwd", false)] {
        let bytes = raw_model(
            vec![pnode("Conv", "c", &["x", "w"], "y")],
            vec![weight(location)],
        );
        std::fs::write(dir.join("m.onnx"), &bytes).unwrap();
        let r = onnx::import_onnx_file(&dir.join("m.onnx"));
        assert_eq!(r.is_ok(), ok, "{location}: {r:?}");
        // From memory, external data cannot be resolved at all.
        assert!(onnx::import_onnx(&bytes).is_err());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hostile_graphs_are_refused_in_bounded_time() {
    // A chain of 40 Mul(x, x) would be a polynomial of degree 2^40: refused where the degree
    // passes the cap, at once, and listed as unsupported.
    let mut nodes = vec![];
    let mut prev = "x".to_string();
    for i in 0..40 {
        let out = format!("m{i}");
        nodes.push(pnode("Mul", &format!("square{i}"), &[&prev, &prev], &out));
        prev = out;
    }
    let t = std::time::Instant::now();
    let err = onnx::import_onnx(&raw_model(nodes, vec![])).unwrap_err();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    let NnError::Unsupported(list) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        list[0].0, "square6",
        "degree 128 is the first above the cap: {err}"
    );
    assert!(err.to_string().contains("degree 128"), "{err}");

    // More nodes than the limit: refused before any is converted.
    let many: Vec<_> = (0..=onnx::MAX_ONNX_NODES)
        .map(|i| pnode("Identity", &format!("id{i}"), &["x"], &format!("y{i}")))
        .collect();
    let err = onnx::import_onnx(&raw_model(many, vec![])).unwrap_err();
    assert!(
        matches!(&err, NnError::Onnx(m) if m.contains("nodes exceed")),
        "{err}"
    );
}

#[test]
fn a_model_file_is_read_through_a_bounded_reader() {
    // /dev/zero reports a length of 0 and never ends: refused as not a regular file, at
    // once, instead of growing to the limit.
    if std::path::Path::new("/dev/zero").exists() {
        let t = std::time::Instant::now();
        let err = onnx::import_onnx_file(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}

#[test]
fn an_empty_constant_in_a_product_is_refused_not_a_panic() {
    let empty = proto::TensorProto {
        name: "empty".into(),
        dims: vec![0],
        data_type: 1,
        ..Default::default()
    };
    let two = proto::TensorProto {
        name: "two".into(),
        dims: vec![],
        data_type: 1,
        float_data: vec![2.0],
        ..Default::default()
    };
    let bytes = raw_model(
        vec![
            pnode("Mul", "fold", &["empty", "two"], "k"),
            pnode("Add", "use", &["x", "k"], "y"),
        ],
        vec![empty, two],
    );
    let err = onnx::import_onnx(&bytes).unwrap_err();
    assert!(err.to_string().contains("empty constant"), "{err}");
}
