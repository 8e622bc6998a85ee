//! BFV protected models (`BfvProtectedModel::from_bytes`, `HCNB`: the ring rebuilt from its
//! literal, the plaintext moduli, the features' quantization, the ONNX feature extractor,
//! the layer chain and every ciphertext's parameters, level and degree), their encrypted
//! results (`BfvProtectedOutput::from_bytes`, `HCBO`) and the owner's plan
//! (`BfvProtectPlan::from_owner_bytes`, `HCBP`, its bound re-derived), the last two against
//! a tiny BFV protected model at `N = 2^5`. Each input is parsed as given and with its
//! nested ciphertexts' checksums resealed.
#![no_main]

use hecnn_fuzz::{backend, bfv_protected, reseal_bfv_output, reseal_bfv_protected};
use hecnn_nn::protect::bfv::{BfvProtectPlan, BfvProtectedModel, BfvProtectedOutput};
use hecnn_ring::CpuBackend;
use libfuzzer_sys::fuzz_target;

/// Runs the three parsers on `bytes`.
fn parse_all(bytes: &[u8]) {
    let p = bfv_protected();
    let _ = BfvProtectedModel::<CpuBackend>::from_bytes(backend(), bytes);
    let _ = BfvProtectedOutput::<CpuBackend>::from_bytes(backend(), &p.model, bytes);
    let _ = BfvProtectPlan::from_owner_bytes(bytes, &p.model);
}

fuzz_target!(|data: &[u8]| {
    parse_all(data);
    if let Some(deep) = reseal_bfv_protected(data) {
        parse_all(&deep);
    }
    if let Some(deep) = reseal_bfv_output(data) {
        parse_all(&deep);
    }
});
