//! CKKS ciphertexts (`hecnn_ckks::Ciphertext::from_bytes`: an RLWE ciphertext with its
//! scale and slot count) at toy parameters (`N = 2^4`), as given and with the checksum
//! resealed, so that the scale and slot checks are reached.
#![no_main]

use hecnn_ckks::Ciphertext;
use hecnn_fuzz::{backend, reseal_rlwe, rlwe_toy};
use hecnn_ring::CpuBackend;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t = rlwe_toy();
    let _ = Ciphertext::<CpuBackend>::from_bytes(backend(), &t.ckks, data);
    let _ = Ciphertext::<CpuBackend>::from_bytes(backend(), &t.ckks, &reseal_rlwe(data));
});
