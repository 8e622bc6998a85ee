//! Protected models (`ProtectedModel::from_bytes`, `HCNP` versions 1 and 2: parameters
//! rebuilt from their literal, the ONNX feature extractor, the layer chain and every
//! ciphertext's level, scale and slots) and their encrypted results
//! (`ProtectedOutput::from_bytes`, `HCNO`, against a tiny protected model at `N = 2^5`).
//! Each input is parsed as given and with its nested ciphertexts' checksums resealed.
#![no_main]

use hecnn_fuzz::{backend, protected, reseal_output, reseal_protected};
use hecnn_nn::protect::{ProtectedModel, ProtectedOutput};
use hecnn_ring::CpuBackend;
use libfuzzer_sys::fuzz_target;

/// Runs both protected-model parsers on `bytes`.
fn parse_all(bytes: &[u8]) {
    let p = protected();
    let _ = ProtectedModel::<CpuBackend>::from_bytes(backend(), bytes);
    let _ = ProtectedOutput::<CpuBackend>::from_bytes(
        backend(),
        p.model.spec(),
        p.model.params(),
        bytes,
    );
}

fuzz_target!(|data: &[u8]| {
    parse_all(data);
    if let Some(deep) = reseal_protected(data) {
        parse_all(&deep);
    }
    if let Some(deep) = reseal_output(data) {
        parse_all(&deep);
    }
});
