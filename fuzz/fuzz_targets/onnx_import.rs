//! ONNX import (`hecnn_nn::onnx::import_onnx`: protobuf decoding, opset and operator
//! checks, shape inference, initializers) followed, on what imports, by the HE-friendly
//! rewrite pass (`hecnn_nn::rewrite`) with default options and with ReLU and max pooling
//! replaced (so that models with them reach the folding passes too), then, for small
//! models, compilation in batch packing at the smallest ring degree (under a millisecond for
//! the seeds' models; single-image packing generates parameters from `N = 2^13` and takes
//! milliseconds, so it is left out).
#![no_main]

use hecnn_fuzz::compile_options;
use hecnn_nn::compile::{PackingRequest, compile};
use hecnn_nn::onnx::import_onnx;
use hecnn_nn::{Model, RewriteOptions, rewrite};
use libfuzzer_sys::fuzz_target;

/// Largest model compiled here: values over all nodes' outputs and nodes. This bounds the
/// harness's work per input (a batch-packed plan grows with the image), not what the
/// compiler accepts.
const COMPILE_VALUES: usize = 1 << 12;
/// Most nodes of a model compiled here.
const COMPILE_NODES: usize = 64;

/// Compiles `model` in batch packing when it is small.
fn compile_small(model: &Model) {
    let Ok(shapes) = model.shapes() else {
        return;
    };
    let values = shapes
        .iter()
        .map(|s| s.iter().product::<usize>())
        .fold(0usize, usize::saturating_add);
    if model.nodes.len() <= COMPILE_NODES && values <= COMPILE_VALUES {
        let _ = compile(model, &compile_options(PackingRequest::Batch));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(model) = import_onnx(data) else {
        return;
    };
    let _ = model.shapes();
    if let Ok(rewritten) = rewrite(&model, &RewriteOptions::default()) {
        compile_small(&rewritten);
    }
    let replaced = RewriteOptions {
        relu_replacement: Some(vec![0.125, 0.5, 0.25]),
        maxpool_as_avgpool: true,
    };
    let _ = rewrite(&model, &replaced);
});
