//! Compiled models (`CompiledModel::from_bytes`, the `HCNC` envelope): the envelope as
//! given, then resealed (length field and checksum made right) so that the body reaches the
//! parameter bounds, plan reconstruction from the recorded layouts, and the consistency
//! checks between plan, parameters and bootstrapping record.
#![no_main]

use hecnn_fuzz::reseal_nn;
use hecnn_nn::compile::CompiledModel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = CompiledModel::is_compiled(data);
    let _ = CompiledModel::from_bytes(data);
    let _ = CompiledModel::from_bytes(&reseal_nn(data));
});
