//! The BFV protected-model flow through the `hecnn` binary on the bundled MNIST sample:
//! `hecnn protect --scheme bfv`, `hecnn edge run` (plain and encrypted features) and
//! `hecnn owner decrypt` (exact outputs, the noise budget), the refusals that guard it,
//! and `hecnn bench protected --scheme bfv`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod binary;

use std::path::Path;

use binary::{hecnn, repo};
use hecnn_nn::{exec, onnx};

#[test]
fn bfv_owner_protects_edge_classifies_owner_decrypts_exactly() {
    let model = "models/protect-mnist-relu.onnx";
    let tmp = std::env::temp_dir().join(format!("hecnn-protect-bfv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (owner, edge, results) = (tmp.join("owner"), tmp.join("edge"), tmp.join("results"));
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Quantization options are BFV's; CKKS refuses them rather than ignoring them.
    let (ok, log) = hecnn(&["protect", model, "--feature-bits", "6", "-o", &s(&owner)]);
    assert!(!ok && log.contains("--scheme bfv"), "{log}");
    // BFV quantizes the features over a calibrated range: without data it says so.
    let (ok, log) = hecnn(&[
        "protect",
        model,
        "--scheme",
        "bfv",
        "--layers",
        "last",
        "-o",
        &s(&owner),
    ]);
    assert!(!ok && log.contains("--calibrate"), "{log}");
    let (ok, log) = hecnn(&[
        "protect",
        model,
        "--scheme",
        "bfv",
        "--layers",
        "last",
        "--calibrate",
        "sample:mnist",
        "--threads",
        "1",
        "-o",
        &s(&owner),
    ]);
    assert!(ok, "{log}");
    assert!(
        log.contains("in BFV") && log.contains("predicted budget"),
        "{log}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(owner.join("owner-plan.hcbp"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the owner's plan holds the quantized weights"
        );
    }
    std::fs::create_dir_all(&edge).unwrap();
    for f in ["model.hecnnp", "public.key", "eval.keys"] {
        std::fs::copy(owner.join(f), edge.join(f)).unwrap();
    }
    let owner_key = s(&owner.join("owner.pub"));
    let m = onnx::import_onnx_file(&repo().join(model)).unwrap();
    let sample = hecnn_nn::data::load_idx(
        &repo().join("data/sample/mnist-test-images.idx3-ubyte"),
        &repo().join("data/sample/mnist-test-labels.idx1-ubyte"),
    )
    .unwrap();
    let count = 3;
    for encrypted in [false, true] {
        let _ = std::fs::remove_dir_all(&results);
        let count_s = count.to_string();
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
            &count_s,
            "--threads",
            "1",
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
        assert!(log.contains("exact integer outputs"), "{log}");
        assert!(!log.contains("flooded"), "{log}");
        for i in 0..count {
            let want = exec::argmax(exec::run(&m, &sample.image(i)).unwrap().data());
            assert!(log.contains(&format!("image {i}: class {want} ")), "{log}");
        }
    }

    // CKKS's flooding bound means nothing to BFV results.
    let (ok, log) = hecnn(&[
        "owner",
        "decrypt",
        "--owner",
        &s(&owner),
        "--in",
        &s(&results),
        "--noise-bound",
        "20",
    ]);
    assert!(!ok && log.contains("need no flooding"), "{log}");
    // A deployment holding the owner's plan is refused.
    std::fs::copy(owner.join("owner-plan.hcbp"), edge.join("owner-plan.hcbp")).unwrap();
    let (ok, log) = hecnn(&[
        "edge",
        "run",
        "--deployment",
        &s(&edge),
        "--owner-key",
        &owner_key,
        "--data",
        "sample:mnist",
        "--count",
        "1",
        "-o",
        &s(&results),
    ]);
    assert!(!ok && log.contains("BFV plan"), "{log}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn bench_protected_in_bfv_reports_exact_results_and_the_budget() {
    let (ok, log) = hecnn(&[
        "bench",
        "protected",
        "--scheme",
        "bfv",
        "--data",
        "mnist",
        "--variants",
        "relu",
        "--security",
        "128",
        "--images",
        "2",
        "--sample",
        "--threads",
        "1",
    ]);
    assert!(ok, "{log}");
    for mode in ["plain", "encrypted"] {
        let row = log
            .lines()
            .find(|l| l.starts_with(&format!("| mnist | last layer | {mode} | 128")))
            .unwrap_or_else(|| panic!("no {mode} row: {log}"));
        assert!(row.contains("| 2/2 | 2/2 |"), "{row}");
        assert!(row.contains(" bits |"), "{row}");
    }
    assert!(
        log.contains("decryption equal to the integer reference 2/2"),
        "{log}"
    );
}
