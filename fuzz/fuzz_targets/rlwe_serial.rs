//! RLWE serialization (`hecnn_rlwe::serial`): parameters, ciphertexts, public keys, secret
//! keys, evaluation keys (expanded and compact) and bootstrapping's encapsulation keys, at
//! toy parameters (`N = 2^4`). Every parser sees the input as given (envelope header,
//! version and checksum checks) and resealed with a valid checksum (body decoders, limb
//! counts, reduction checks, seed expansion).
#![no_main]

use hecnn_fuzz::{backend, reseal_rlwe, rlwe_toy};
use hecnn_ring::CpuBackend;
use hecnn_rlwe::{
    Ciphertext, EncapsulationKeys, EvaluationKeys, KeyStorage, Params, PublicKey, SecretKey,
};
use libfuzzer_sys::fuzz_target;

/// Runs every RLWE parser on `bytes`; errors are expected, panics are bugs.
fn parse_all(bytes: &[u8]) {
    let t = rlwe_toy();
    let be = backend();
    let _ = Params::from_bytes(bytes);
    let _ = Ciphertext::<CpuBackend>::from_bytes(be, &t.params, bytes);
    let _ = PublicKey::<CpuBackend>::from_bytes(be, &t.params, bytes);
    let _ = SecretKey::from_secret_bytes(&t.params, bytes);
    let _ = EvaluationKeys::<CpuBackend>::from_bytes(be, &t.params, bytes, 8);
    let _ =
        EvaluationKeys::<CpuBackend>::from_bytes_with(be, &t.params, bytes, 8, KeyStorage::Compact);
    let _ =
        EncapsulationKeys::<CpuBackend>::from_bytes_with(be, &t.params, bytes, KeyStorage::Compact);
}

fuzz_target!(|data: &[u8]| {
    parse_all(data);
    parse_all(&reseal_rlwe(data));
});
