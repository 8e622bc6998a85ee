//! BFV through the `hecnn` binary, the client and server roles apart: `compile --scheme bfv`
//! writes a plan that `keygen`, `encrypt` (secret key), `run` (relinearization key only) and
//! `decrypt` follow, and the decrypted outputs are the integer executor's, bit for bit. Also
//! the refusals: inputs of another plan, a key of another plan, a damaged plan.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod binary;

use binary::hecnn;
use hecnn_nn::{
    Model, Op, Tensor,
    data::{Dataset, save_idx},
    ir::{Conv2d, Dense, Node},
    onnx,
};

fn node(name: &str, op: Op, inputs: Vec<usize>) -> Node {
    Node {
        name: name.into(),
        op,
        inputs,
    }
}

fn wave(n: usize, k: f64) -> Vec<f64> {
    (0..n).map(|i| ((i as f64) * k + 0.3).sin() * 0.5).collect()
}

/// Conv 3×3 (2 filters) → x² → flatten → dense 3, on 1×6×6 images.
fn model() -> Model {
    Model {
        name: "tiny-bfv".into(),
        input_shape: [1, 6, 6],
        nodes: vec![
            node("x", Op::Input, vec![]),
            node(
                "conv",
                Op::Conv2d(Conv2d {
                    weight: Tensor::new(vec![2, 1, 3, 3], wave(18, 0.71)).unwrap(),
                    bias: vec![0.05, -0.1],
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
                    weight: Tensor::new(vec![3, 32], wave(96, 0.37)).unwrap(),
                    bias: vec![0.1, 0.0, -0.1],
                }),
                vec![3],
            ),
        ],
        output: 4,
    }
}

#[test]
fn bfv_plan_runs_client_and_server_apart_exactly() {
    let tmp = std::env::temp_dir().join(format!("hecnn-bfv-flow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let p = |f: &str| tmp.join(f).to_str().unwrap().to_string();
    std::fs::write(p("tiny.onnx"), onnx::export_onnx(&model()).unwrap()).unwrap();
    let n = 24;
    let pixels: Vec<f32> = (0..n * 36)
        .map(|i| ((i * 37 % 101) as f32) / 100.0)
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let ds = Dataset::new([1, 6, 6], pixels, labels).unwrap();
    save_idx(&ds, p("img.idx").as_ref(), p("lab.idx").as_ref()).unwrap();
    let data = format!("idx:{},{}", p("img.idx"), p("lab.idx"));

    let ok = |args: &[&str]| {
        let (ok, log) = hecnn(args);
        assert!(ok, "hecnn {args:?}:\n{log}");
        log
    };
    let log = ok(&[
        "compile",
        &p("tiny.onnx"),
        "--scheme",
        "bfv",
        "-o",
        &p("a.hecnn"),
    ]);
    assert!(log.contains("BFV batch plan"), "{log}");
    ok(&["keygen", &p("a.hecnn"), "--out-dir", &p("keys")]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p("keys/secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    ok(&[
        "encrypt",
        &p("a.hecnn"),
        "--secret-key",
        &p("keys/secret.key"),
        "--data",
        &data,
        "-o",
        &p("in.ct"),
    ]);
    ok(&[
        "run",
        &p("a.hecnn"),
        "--eval-keys",
        &p("keys/eval.keys"),
        "--in",
        &p("in.ct"),
        "-o",
        &p("out.ct"),
    ]);
    let log = ok(&[
        "decrypt",
        &p("a.hecnn"),
        "--secret-key",
        &p("keys/secret.key"),
        "--in",
        &p("out.ct"),
        "--data",
        &data,
    ]);
    assert!(
        log.contains(&format!("outputs equal to the integer executor's: {n}/{n}")),
        "{log}"
    );

    // Another plan (other quantization): its inputs, its key and its outputs are refused.
    ok(&[
        "compile",
        &p("tiny.onnx"),
        "--scheme",
        "bfv",
        "--weight-bits",
        "5",
        "-o",
        &p("b.hecnn"),
    ]);
    ok(&["keygen", &p("b.hecnn"), "--out-dir", &p("keys-b")]);
    let (fine, log) = hecnn(&[
        "run",
        &p("b.hecnn"),
        "--eval-keys",
        &p("keys-b/eval.keys"),
        "--in",
        &p("in.ct"),
        "-o",
        &p("x.ct"),
    ]);
    assert!(!fine && log.contains("another compiled model"), "{log}");
    let (fine, log) = hecnn(&[
        "decrypt",
        &p("b.hecnn"),
        "--secret-key",
        &p("keys-b/secret.key"),
        "--in",
        &p("out.ct"),
    ]);
    assert!(!fine && log.contains("another compiled model"), "{log}");

    // Ciphertexts of the other scheme: a CKKS compilation of the same model, its inputs
    // given to the BFV server, and the BFV inputs to the CKKS server.
    ok(&["compile", &p("tiny.onnx"), "-o", &p("ckks.hecnn")]);
    ok(&["keygen", &p("ckks.hecnn"), "--out-dir", &p("keys-ckks")]);
    ok(&[
        "encrypt",
        &p("ckks.hecnn"),
        "--public-key",
        &p("keys-ckks/public.key"),
        "--data",
        &data,
        "-o",
        &p("ckks.ct"),
    ]);
    let (fine, log) = hecnn(&[
        "run",
        &p("a.hecnn"),
        "--eval-keys",
        &p("keys/eval.keys"),
        "--in",
        &p("ckks.ct"),
        "-o",
        &p("x.ct"),
    ]);
    // Refused by its size (more than the plan's ciphertexts can take) or by its kind.
    assert!(
        !fine && (log.contains("BFV ciphertexts") || log.contains("accepted")),
        "{log}"
    );
    let (fine, log) = hecnn(&[
        "run",
        &p("ckks.hecnn"),
        "--eval-keys",
        &p("keys-ckks/eval.keys"),
        "--in",
        &p("in.ct"),
        "-o",
        &p("x.ct"),
    ]);
    assert!(!fine, "{log}");

    // A damaged plan is refused by every command, before any key is read.
    let mut bytes = std::fs::read(p("a.hecnn")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(p("bad.hecnn"), &bytes).unwrap();
    let (fine, log) = hecnn(&["keygen", &p("bad.hecnn"), "--out-dir", &p("keys-bad")]);
    assert!(!fine && log.contains("checksum"), "{log}");

    // A plan on unchecked (insecure) parameters, or below the security asked for, is
    // refused before any key is made.
    let quant = hecnn_nn::quant::QuantModel::quantize(&model(), &Default::default()).unwrap();
    let ring = hecnn_rlwe::ParamsLiteral {
        log_n: 11,
        log_q: vec![45; 3],
        log_p: vec![45],
        dnum: None,
        secret: hecnn_rlwe::SecretDistribution::Ternary,
        security: hecnn_rlwe::SecurityLevel::UncheckedForReproduction,
    };
    let opts = hecnn_nn::bfv_batch::BfvOptions {
        ring: Some(ring),
        ..Default::default()
    };
    hecnn_nn::bfv_batch::plan(quant, &opts)
        .unwrap()
        .save(p("insecure.hecnn").as_ref())
        .unwrap();
    let (fine, log) = hecnn(&["keygen", &p("insecure.hecnn"), "--out-dir", &p("keys-x")]);
    assert!(!fine && log.contains("security level"), "{log}");
    let (fine, log) = hecnn(&[
        "keygen",
        &p("a.hecnn"),
        "--out-dir",
        &p("keys-y"),
        "--security",
        "192",
    ]);
    assert!(!fine && log.contains("at least 192-bit"), "{log}");
    assert!(!std::path::Path::new(&p("keys-x/secret.key")).exists());
    let _ = std::fs::remove_dir_all(&tmp);
}
