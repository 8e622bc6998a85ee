//! The owner → edge → owner flow through the `hecnn` binary on the bundled MNIST sample:
//! `hecnn protect` (the last layer of a Keras-style model; the whole of HCNN's MNIST
//! network), `hecnn edge run` (plain and encrypted features) and `hecnn owner decrypt`,
//! checked against the cleartext model; the edge's deployment holds no secret key and no
//! cleartext weight of a protected layer, and an edge refuses a deployment that contains a
//! secret key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod binary;

use std::collections::HashSet;
use std::path::Path;

use binary::{hecnn, repo};
use hecnn_nn::{Op, exec, onnx};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn owner_protects_edge_classifies_owner_decrypts() {
    flow("models/protect-mnist-relu.onnx", "last", 4);
}

#[test]
fn whole_network_protected_through_the_cli() {
    flow("models/hcnn-mnist.onnx", "network", 2);
}

/// `bench protected` runs every row and its flooding table: with the default parameters
/// (sized for flooding) every row releases flooded logits; with `--unflooded` (the chain from
/// before) a flooding too wide for the output modulus is reported as refused, not an error
/// that ends the benchmark (it ended it, unnoticed, because no test ran the command).
#[test]
fn bench_protected_reports_refused_flooding_and_finishes() {
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "protected",
            "--data",
            "mnist",
            "--variants",
            "relu,poly",
            "--security",
            "128",
            "--images",
            "2",
            "--sample",
            "--threads",
            "1",
        ];
        args.extend(extra);
        hecnn(&args)
    };
    let (ok, log) = bench(&[]);
    assert!(ok, "{log}");
    for row in [
        "| mnist | last layer | plain | 128",
        "| mnist | classifier, x²+2x | encrypted | 128",
    ] {
        assert!(log.contains(row), "no row {row:?}: {log}");
    }
    assert!(log.contains("IND-CPA-D"), "{log}");
    assert!(!log.contains("refused"), "{log}");
    // Four flooding rows (two variants, plain and encrypted), each with released bits and
    // the unprotected model's predictions.
    let flooded = log
        .lines()
        .filter(|l| {
            l.starts_with("| mnist") && l.contains("(26.8 bits) | ±") && l.contains("| 2/2 |")
        })
        .count();
    assert_eq!(flooded, 4, "{log}");

    let (ok, log) = bench(&["--unflooded", "--plain-only"]);
    assert!(ok, "{log}");
    assert!(log.contains("refused"), "{log}");
}

/// Protects `model` (`--layers layers`), classifies `count` sample digits at the edge with
/// plain and with encrypted features, and decrypts at the owner.
fn flow(model: &str, layers: &str, count: usize) {
    let tmp = std::env::temp_dir().join(format!(
        "hecnn-protect-flow-{layers}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let (owner, edge, results) = (tmp.join("owner"), tmp.join("edge"), tmp.join("results"));
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let protect = |out: &Path| hecnn(&["protect", model, "--layers", layers, "--out-dir", &s(out)]);
    let (ok, log) = protect(&owner);
    assert!(ok, "{log}");
    // Deploy what the edge may hold, and nothing else.
    std::fs::create_dir_all(&edge).unwrap();
    for f in ["model.hecnnp", "public.key", "eval.keys"] {
        std::fs::copy(owner.join(f), edge.join(f)).unwrap();
    }

    // The edge's files hold neither the secret key nor a protected weight: those of the
    // last layer, or of every convolution and dense layer when the network is protected.
    let secret = std::fs::read(owner.join("secret.key")).unwrap();
    let m = onnx::import_onnx_file(&repo().join(model)).unwrap();
    let protected: Vec<(&[f64], &[f64])> = m
        .nodes
        .iter()
        .enumerate()
        .filter(|&(k, _)| layers == "network" || k == m.output)
        .filter_map(|(_, n)| match &n.op {
            Op::Dense(d) => Some((d.weight.data(), &d.bias[..])),
            Op::Conv2d(c) => Some((c.weight.data(), &c.bias[..])),
            _ => None,
        })
        .collect();
    assert!(!protected.is_empty());
    // Pairs of neighbouring weights as f32 (how ONNX stores tensors): 8-byte patterns,
    // which random ciphertext bytes do not produce by chance. One pass over each file.
    let pairs = |v: &[f64]| -> Vec<[u8; 8]> {
        v.windows(2)
            .map(|p| {
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&(p[0] as f32).to_le_bytes());
                b[4..].copy_from_slice(&(p[1] as f32).to_le_bytes());
                b
            })
            .collect()
    };
    let patterns: HashSet<[u8; 8]> = protected
        .iter()
        .flat_map(|(weight, bias)| pairs(weight).into_iter().chain(pairs(bias)))
        .collect();
    // The scan finds them where they are: in the cleartext ONNX file.
    let onnx_bytes = std::fs::read(repo().join(model)).unwrap();
    assert!(onnx_bytes.windows(8).any(|w| patterns.contains(w)));
    for f in std::fs::read_dir(&edge).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!contains(&bytes, &secret[secret.len() - 64..]));
        assert!(
            !bytes.windows(8).any(|w| patterns.contains(w)),
            "protected weights stored in the clear"
        );
    }

    // The owner's public signing key reaches the edge out of band (here: the owner's
    // directory); the model runs only under it.
    let owner_key = s(&owner.join("owner.pub"));
    let sample = hecnn_nn::data::load_idx(
        &repo().join("data/sample/mnist-test-images.idx3-ubyte"),
        &repo().join("data/sample/mnist-test-labels.idx1-ubyte"),
    )
    .unwrap();
    for encrypted in [false, true] {
        let _ = std::fs::remove_dir_all(&results);
        let mut args = vec![
            "edge",
            "run",
            "--deployment",
            &s(&edge),
            "--owner-key",
            &owner_key,
            "--data",
            "sample:mnist",
            "--count",
            &count.to_string(),
            "-o",
            &s(&results),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if encrypted {
            args.push("--encrypt-features".into());
        }
        let (ok, log) = hecnn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{log}");
        let (ok, log) = hecnn(&[
            "owner",
            "decrypt",
            "--owner",
            &s(&owner),
            "--in",
            &s(&results),
            "--data",
            "sample:mnist",
        ]);
        assert!(ok, "{log}");
        // The logits leave the owner noise-flooded (IND-CPA-D), with σ and its cost.
        assert!(log.contains("logits noise-flooded: σ = 2^"), "{log}");
        for i in 0..count {
            let want = exec::argmax(exec::run(&m, &sample.image(i)).unwrap().data());
            assert!(log.contains(&format!("image {i}: class {want} ")), "{log}");
        }
        assert_eq!(log.matches(", logits [").count(), count, "{log}");
    }

    // `--class-only` takes the class from the same flooded decryption: the classes come out
    // without logits, and a bound below the results' noise refuses the classes too, with a
    // message that names the bound alone (never the secret-dependent noise estimate).
    let class_only = |extra: &[&str]| {
        let mut args = vec![
            "owner".to_string(),
            "decrypt".into(),
            "--owner".into(),
            s(&owner),
            "--in".into(),
            s(&results),
            "--class-only".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        hecnn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (ok, log) = class_only(&[]);
    assert!(ok, "{log}");
    assert!(log.contains("classes noise-flooded: σ = 2^"), "{log}");
    for i in 0..count {
        let want = exec::argmax(exec::run(&m, &sample.image(i)).unwrap().data());
        assert!(log.contains(&format!("image {i}: class {want}")), "{log}");
    }
    assert!(!log.contains(", logits ["), "{log}");
    let (ok, log) = class_only(&["--noise-bound", "1"]);
    assert!(ok, "{log}");
    assert_eq!(
        log.matches("a result noisier than the flooding bound 2^1.0: not released")
            .count(),
        count,
        "{log}"
    );
    assert!(!log.contains(": class "), "{log}");

    // A model changed after signing, or signed by someone else, is refused before it is
    // read; so is a model whose owner key the edge was not given.
    let run_edge = |dir: &Path| {
        hecnn(&[
            "edge",
            "run",
            "--deployment",
            &s(dir),
            "--owner-key",
            &owner_key,
            "--count",
            "1",
            "-o",
            &s(&results),
        ])
    };
    let signed = std::fs::read(edge.join("model.hecnnp")).unwrap();
    let mut flipped = signed.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x10;
    std::fs::write(edge.join("model.hecnnp"), &flipped).unwrap();
    let (ok, log) = run_edge(&edge);
    assert!(!ok && log.contains("changed after it was signed"), "{log}");
    let mallory = tmp.join("mallory");
    let (ok, log) = protect(&mallory);
    assert!(ok, "{log}");
    // The edge refuses a directory with an owner's signing key in it, as with a secret key.
    let (ok, log) = run_edge(&mallory);
    assert!(!ok && log.contains("must never be deployed"), "{log}");
    std::fs::remove_file(mallory.join("secret.key")).unwrap();
    std::fs::remove_file(mallory.join("owner-signing.key")).unwrap();
    let (ok, log) = run_edge(&mallory);
    assert!(!ok && log.contains("not by the expected"), "{log}");
    std::fs::write(edge.join("model.hecnnp"), &signed).unwrap();
    let (ok, log) = hecnn(&["edge", "run", "--deployment", &s(&edge), "--count", "1"]);
    assert!(!ok && log.contains("--owner-key"), "{log}");
    // The signing key is the owner's secret: written 0600, and reused by the next model.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(owner.join("owner-signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A deployment with the owner's secret key in it is refused.
    std::fs::copy(owner.join("secret.key"), edge.join("secret.key")).unwrap();
    let (ok, log) = run_edge(&edge);
    assert!(!ok && log.contains("must never be deployed"), "{log}");
    let _ = std::fs::remove_dir_all(&tmp);
}
