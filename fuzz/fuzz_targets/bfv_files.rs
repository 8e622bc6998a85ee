//! BFV files: plans (`BfvPlan::from_bytes`, the `HBFP` envelope, then the structural checks
//! a runtime relies on), batches of BFV ciphertexts (`batch_from_bytes`, the `HBFC` envelope,
//! bound to a plan) and single BFV ciphertexts (`hecnn_bfv::Ciphertext::from_bytes`, with
//! `t` in their metadata), each as given and resealed so that the bodies are reached.
#![no_main]

use hecnn_fuzz::{backend, bfv_toy, reseal_nn, reseal_rlwe};
use hecnn_nn::bfv_batch::{BfvPlan, batch_from_bytes};
use hecnn_ring::CpuBackend;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let toy = bfv_toy();
    let _ = BfvPlan::is_plan(data);
    let _ = BfvPlan::from_bytes(data);
    let _ = BfvPlan::from_bytes(&reseal_nn(data));
    let n = toy.plan.quant().input_len();
    let _ = batch_from_bytes::<CpuBackend>(&toy.plan, &toy.params, backend(), n, data);
    let _ = batch_from_bytes::<CpuBackend>(&toy.plan, &toy.params, backend(), n, &reseal_nn(data));
    let p = &toy.params[0];
    let _ = hecnn_bfv::Ciphertext::<CpuBackend>::from_bytes(backend(), p, data);
    let _ = hecnn_bfv::Ciphertext::<CpuBackend>::from_bytes(backend(), p, &reseal_rlwe(data));
});
