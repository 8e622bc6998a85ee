//! The services' binary frames (`hecnn_deploy::wire`): deployment bundles (`HCND`, owner →
//! edge) and result envelopes (`HCNR`, edge → owner). A bundle that parses is also loaded
//! as the edge loads it (`Deployed::load`: signature, protected model, evaluation and
//! public keys, key ids), as given and with its model resealed and signed again with the
//! fixed key and its keys resealed; an envelope's output is read as the owner reads it
//! (`ProtectedOutput::from_bytes`).
#![no_main]

use hecnn_deploy::edge::Deployed;
use hecnn_deploy::wire::{DeploymentBundle, ResultEnvelope};
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

fuzz_target!(|data: &[u8]| {
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
