//! The client's files and what the inference service reads from request bodies: client
//! specs (`ClientSpec::from_bytes`), the header of encrypted images (`ImagesHeader::read`,
//! read before anything else) and encrypted images, inputs and results
//! (`EncryptedImages::from_bytes` against the spec of a tiny batch-packed model at
//! `N = 2^10`). Each input is parsed as given, with the envelope resealed, and with every
//! nested ciphertext and the envelope resealed.
#![no_main]

use hecnn_fuzz::{backend, compiled, reseal_images, reseal_nn};
use hecnn_nn::compile::{ClientSpec, EncryptedImages, ImagesHeader, ImagesKind};
use hecnn_ring::CpuBackend;
use libfuzzer_sys::fuzz_target;

/// Runs the client-file parsers on `bytes`.
fn parse_all(bytes: &[u8]) {
    let c = compiled();
    let _ = ClientSpec::is_spec(bytes);
    let _ = ClientSpec::from_bytes(bytes);
    let _ = ImagesHeader::read(bytes);
    for kind in [ImagesKind::Inputs, ImagesKind::Outputs] {
        let _ = EncryptedImages::<CpuBackend>::from_bytes(backend(), &c.spec, kind, bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    parse_all(data);
    parse_all(&reseal_nn(data));
    if let Some(deep) = reseal_images(data) {
        parse_all(&deep);
    }
});
