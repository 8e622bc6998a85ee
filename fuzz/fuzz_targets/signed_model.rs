//! Signed protected models (`hecnn_deploy::signing`, `HCNS`): `is_signed`,
//! `claimed_signer` and `verify_model` on the input as given; then the input (or its
//! payload, when it is a signed model already), its ciphertexts resealed, signed with a
//! fixed key, verified against that key and parsed as a protected model, so that the
//! fuzzer reaches what an edge parses after a signature holds.
#![no_main]

use hecnn_deploy::signing::{claimed_signer, is_signed, verify_model};
use hecnn_fuzz::{backend, protected, resign};
use hecnn_nn::protect::ProtectedModel;
use hecnn_ring::CpuBackend;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = protected();
    let _ = is_signed(data);
    let _ = claimed_signer(data);
    if let Ok(model) = verify_model(data, &p.owner) {
        let _ = ProtectedModel::<CpuBackend>::from_bytes(backend(), model);
    }
    let signed = resign(&p.signing, data);
    let model = verify_model(&signed, &p.owner).expect("a model just signed verifies");
    let _ = ProtectedModel::<CpuBackend>::from_bytes(backend(), model);
});
