//! ONNX files written by PyTorch's exporters (TorchScript-based at opsets 11, 13 and 17, and
//! the torch.export-based "dynamo" exporter, which stores weights as external data): import,
//! rewrite, run in the clear, and compare with PyTorch's own output. Regenerate with
//! `python training/export_fixtures.py crates/nn/tests/fixtures`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;

use hecnn_nn::{RewriteOptions, Tensor, batch::BatchPlan, exec, onnx, rewrite};

#[test]
fn pytorch_exports_import_and_match() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("torch-fixtures.json")).unwrap()).unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 6, "fixtures missing");
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let model =
            onnx::import_onnx_file(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let model =
            rewrite(&model, &RewriteOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        BatchPlan::new(&model).unwrap_or_else(|e| panic!("{file}: {e}"));
        let shape: Vec<usize> = case["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let input: Vec<f64> = case["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let want: Vec<f64> = case["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = exec::run(&model, &Tensor::new(shape, input).unwrap()).unwrap();
        assert_eq!(got.len(), want.len(), "{file}");
        for (g, w) in got.data().iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{file}: {g} vs {w}"
            );
        }
    }
}
