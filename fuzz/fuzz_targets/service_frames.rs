//! The services' binary frames (`hecnn_deploy::wire`): deployment bundles (`HCND`, owner →
//! edge) and result envelopes (`HCNR`, edge → owner). A bundle that parses is also loaded
//! as the edge loads it (`Deployed::load`: signature, protected model, evaluation and
//! public keys, key ids), as given and with its model resealed and signed again with the
//! fixed key and its keys resealed; an envelope's output is read as the owner reads it
//! (`ProtectedOutput::from_bytes`). The same bytes are also read as an edge stream body
//! (`wire::next_frame`, frames of 4 and of 784 pixels), fed in chunks whose size the first
//! byte chooses, as a client's body arrives.
#![no_main]

use bytes::BytesMut;
use hecnn_deploy::edge::Deployed;
use hecnn_deploy::wire::{DeploymentBundle, ResultEnvelope, next_frame};
use hecnn_fuzz::{backend, protected, reseal_output, reseal_rlwe, resign};
use hecnn_nn::protect::ProtectedOutput;
use hecnn_ring::CpuBackend;
use libfuzzer_sys::fuzz_target;

/// Reads an encrypted result as the owner's decryption agent does.
fn read_output(bytes: &[u8]) {
    let p = protected();
    let _ = ProtectedOutput::<CpuBackend>::from_bytes(
        backend(),
        p.model.spec(),
        p.model.params(),
        bytes,
    );
}

/// Reads `data` as a stream body in chunks of `chunk` bytes, frame by frame, until the end
/// or the first refused frame.
fn read_stream(data: &[u8], chunk: usize, pixels: usize) {
    let mut buf = BytesMut::new();
    for part in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(part);
        loop {
            match next_frame(&mut buf, pixels) {
                Ok(Some((id, px))) => assert_eq!(px.len(), pixels, "frame {id}"),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let chunk = 1 + usize::from(data.first().copied().unwrap_or(0) % 64);
    read_stream(data, chunk, 4);
    read_stream(data, chunk, 784);
    let p = protected();
    if let Ok(mut bundle) = DeploymentBundle::from_bytes(data) {
        let _ = bundle.to_bytes();
        let _ = Deployed::load(backend(), &bundle, &p.owner);
        bundle.protected = resign(&p.signing, &bundle.protected);
        bundle.public_key = reseal_rlwe(&bundle.public_key);
        bundle.eval_keys = reseal_rlwe(&bundle.eval_keys);
        let _ = Deployed::load(backend(), &bundle, &p.owner);
    }
    if let Ok(env) = ResultEnvelope::from_bytes(data) {
        let _ = env.to_bytes();
        read_output(&env.output);
        if let Some(deep) = reseal_output(&env.output) {
            read_output(&deep);
        }
    }
});
