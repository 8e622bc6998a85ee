//! What a hostile or careless command line meets (issue 24): bounded work and clear words.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod binary;

use binary::hecnn;

#[test]
fn threads_beyond_the_cores_are_capped_and_said_so() {
    let t = std::time::Instant::now();
    let (ok, log) = hecnn(&[
        "bench",
        "bootstrap",
        "--log-n",
        "11",
        "--insecure",
        "--reps",
        "1",
        "--threads",
        "100000",
    ]);
    assert!(ok, "{log}");
    assert!(log.contains("--threads 100000: capped at the"), "{log}");
    // 100,000 worker threads took minutes to start.
    assert!(
        t.elapsed() < std::time::Duration::from_secs(120),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_hostile_onnx_chain_is_refused_at_once() {
    // 40 nested squares: the importer refuses the product past degree 64 instead of
    // expanding a polynomial of degree 2^40.
    let dir = std::env::temp_dir().join(format!("hecnn-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chain.onnx");
    std::fs::write(&path, squares_chain(40)).unwrap();
    let t = std::time::Instant::now();
    let out = dir.join("chain.hecnn");
    let (ok, log) = hecnn(&[
        "compile",
        path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && log.contains("degree 128"), "{log}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An ONNX model: Flatten, then `n` nodes `Mul(x, x)`, then a dense layer.
fn squares_chain(n: usize) -> Vec<u8> {
    use hecnn_nn::onnx::proto;
    let node = |op: &str, name: String, inputs: Vec<String>, output: String| proto::NodeProto {
        op_type: op.into(),
        name,
        input: inputs,
        output: vec![output],
        ..Default::default()
    };
    let mut nodes = vec![node("Flatten", "flat".into(), vec!["x".into()], "f".into())];
    let mut prev = "f".to_string();
    for i in 0..n {
        nodes.push(node(
            "Mul",
            format!("sq{i}"),
            vec![prev.clone(), prev.clone()],
            format!("m{i}"),
        ));
        prev = format!("m{i}");
    }
    nodes.push(node(
        "MatMul",
        "fc".into(),
        vec![prev, "w".into()],
        "y".into(),
    ));
    let w = proto::TensorProto {
        name: "w".into(),
        dims: vec![784, 10],
        data_type: 1,
        float_data: vec![0.01; 7840],
        ..Default::default()
    };
    hecnn_nn::onnx::graph_to_onnx(&[1, 1, 28, 28], nodes, vec![w])
}

#[test]
fn an_existing_secret_key_is_not_replaced_without_force() {
    let dir = std::env::temp_dir().join(format!("hecnn-force-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let keys = dir.join("keys");
    let keys = keys.to_str().unwrap();
    let (ok, log) = hecnn(&["keygen", "models/hcnn-mnist.onnx", "--out-dir", keys]);
    assert!(ok, "{log}");
    let secret = dir.join("keys/secret.key");
    let first = std::fs::read(&secret).unwrap();
    let (ok, log) = hecnn(&["keygen", "models/hcnn-mnist.onnx", "--out-dir", keys]);
    assert!(!ok && log.contains("--force"), "{log}");
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        first,
        "the key was touched"
    );
    let (ok, log) = hecnn(&[
        "keygen",
        "models/hcnn-mnist.onnx",
        "--out-dir",
        keys,
        "--force",
    ]);
    assert!(ok, "{log}");
    assert_ne!(std::fs::read(&secret).unwrap(), first);
    // The owner's key of a protected model likewise.
    let out = dir.join("protected");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("secret.key"), b"the owner's only key").unwrap();
    let (ok, log) = hecnn(&[
        "protect",
        "models/protect-mnist-relu.onnx",
        "--layers",
        "last",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && log.contains("--force"), "{log}");
    assert_eq!(
        std::fs::read(out.join("secret.key")).unwrap(),
        b"the owner's only key"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// HCNN's MNIST network compiled in single-image packing (with `extra` options) into a
/// fresh directory named after `name`: the directory, the model's path, and the command's
/// outcome.
fn compiled_mnist(name: &str, extra: &[&str]) -> (std::path::PathBuf, String, bool, String) {
    let dir = std::env::temp_dir().join(format!("hecnn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("m.hecnn").to_str().unwrap().to_string();
    let mut args = vec!["compile", "models/hcnn-mnist.onnx", "--mode", "single"];
    args.extend_from_slice(extra);
    args.extend(["-o", model.as_str()]);
    let (ok, log) = hecnn(&args);
    (dir, model, ok, log)
}

#[test]
fn ring_and_security_asked_against_a_compiled_model_are_honoured_or_refused() {
    let (dir, model, ok, log) = compiled_mnist("conflict", &[]);
    let model = model.as_str();
    assert!(ok && log.contains("N = 2^13"), "{log}");
    let keys = dir.join("keys");
    let keys = keys.to_str().unwrap();
    for (flag, value, says) in [
        ("--log-n", "15", "compiled for N = 2^13"),
        ("--security", "256", "compiled for 128-bit security"),
    ] {
        let (ok, log) = hecnn(&["keygen", model, "--out-dir", keys, flag, value]);
        assert!(!ok && log.contains(says), "{flag} {value}: {log}");
        assert!(
            !dir.join("keys/secret.key").exists(),
            "{flag}: keys written"
        );
    }
    // What the model already satisfies is accepted.
    let (ok, log) = hecnn(&[
        "keygen",
        model,
        "--out-dir",
        keys,
        "--log-n",
        "13",
        "--security",
        "128",
    ]);
    assert!(ok, "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn planning_a_compiled_model_again_keeps_what_it_was_compiled_for() {
    let (dir, model, ok, log) = compiled_mnist("replan", &["--security", "192"]);
    let model = model.as_str();
    assert!(ok && log.contains("security 192-bit"), "{log}");
    // Planned again without --security: the file's level, not the 128-bit default.
    let again = dir.join("again.hecnn");
    let (ok, log) = hecnn(&[
        "compile",
        model,
        "--mode",
        "single",
        "-o",
        again.to_str().unwrap(),
    ]);
    assert!(ok && log.contains("security 192-bit"), "{log}");
    // An explicit request is a new compilation, and honoured.
    let (ok, log) = hecnn(&[
        "compile",
        model,
        "--mode",
        "single",
        "--security",
        "128",
        "-o",
        again.to_str().unwrap(),
    ]);
    assert!(ok && log.contains("security 128-bit"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_compile_writes_keygen_reads_for_the_pytorch_residual_fixtures() {
    let dir = std::env::temp_dir().join(format!("hecnn-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for fixture in ["torch-residual-opset13.onnx", "torch-residual-dynamo.onnx"] {
        let onnx = format!("crates/nn/tests/fixtures/{fixture}");
        let model = dir.join(format!("{fixture}.hecnn"));
        let model = model.to_str().unwrap();
        let (ok, log) = hecnn(&["compile", &onnx, "-o", model]);
        assert!(ok, "{fixture}: {log}");
        let keys = dir.join(format!("{fixture}.keys"));
        let (ok, log) = hecnn(&["keygen", model, "--out-dir", keys.to_str().unwrap()]);
        assert!(ok && log.contains("eval.keys"), "{fixture}: {log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_demo_model_and_samples_come_from_the_binary_outside_the_source_tree() {
    // Run from an empty directory with its own HOME: no models/ or data/ to find.
    let dir = std::env::temp_dir().join(format!("hecnn-bundled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hecnn"))
        .args([
            "eval",
            "--mode",
            "single",
            "--data",
            "sample:mnist",
            "--count",
            "2",
        ])
        .current_dir(&dir)
        .env("HOME", dir.join("home"))
        .env_remove("HECNN_SAMPLES")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(log.contains("built into the binary"), "{log}");
    assert!(log.contains("same prediction"), "{log}");
    let cached = dir.join("home/.cache/hecnn/bundled/hcnn-mnist.onnx");
    assert_eq!(
        std::fs::read(cached).unwrap(),
        std::fs::read(binary::repo().join("models/hcnn-mnist.onnx")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
