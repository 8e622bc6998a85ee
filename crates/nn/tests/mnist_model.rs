//! The committed MNIST model (exported by PyTorch, see models/hcnn-mnist.md) on the bundled
//! sample: ONNX import of a real exported file, cleartext accuracy, and encrypted batch
//! inference equal to the cleartext predictions. The encrypted part runs at N = 2^10 with
//! security unchecked (toy parameters: 512 slots hold the 300 sample images).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;

use hecnn_ckks::{CkksParams, Decryptor, Evaluator, encrypt_pk};
use hecnn_nn::{
    RewriteOptions, Tensor, batch, data,
    exec::{self, argmax},
    onnx, rewrite,
};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey, SecurityLevel};

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

#[test]
fn pytorch_mnist_model_encrypted_equals_cleartext() {
    let bytes = std::fs::read(repo("models/hcnn-mnist.onnx")).unwrap();
    let model = rewrite(
        &onnx::import_onnx(&bytes).unwrap(),
        &RewriteOptions::default(),
    )
    .unwrap();
    let sample = data::load_idx(
        &repo("data/sample/mnist-test-images.idx3-ubyte"),
        &repo("data/sample/mnist-test-labels.idx1-ubyte"),
    )
    .unwrap();
    assert_eq!(sample.len(), 300);
    let images: Vec<Tensor> = (0..sample.len()).map(|i| sample.image(i)).collect();
    let clear: Vec<usize> = images
        .iter()
        .map(|x| argmax(exec::run(&model, x).unwrap().data()))
        .collect();
    let correct = clear
        .iter()
        .zip(sample.labels())
        .filter(|(p, l)| **p == usize::from(**l))
        .count();
    assert!(correct >= 290, "cleartext accuracy {correct}/300");
    batch::check_ranges(&model, &images[..50]).unwrap();

    let plan = batch::BatchPlan::new(&model).unwrap();
    let lit = hecnn_nn::compile::params::literal(
        hecnn_nn::compile::params::Chain::Batch,
        plan.depth(),
        10,
        SecurityLevel::UncheckedForReproduction,
    )
    .unwrap()
    .0;
    let params = Arc::new(CkksParams::from_literal(&lit, batch::BATCH_LOG_SCALE).unwrap());
    let be = CpuBackend::new(2).unwrap();
    let mut rng = Prng::from_seed([11; 32]);
    let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
    let pk = sk.public_key(&be, &mut rng).unwrap();
    let keys = sk
        .evaluation_keys(&be, &KeyRequirements::relin(), &mut rng)
        .unwrap();
    let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
    let cts = batch::encrypt_images(&eval, &images, params.max_level(), &mut rng, |pt, r| {
        encrypt_pk(&pk, &be, pt, r)
    })
    .unwrap();
    let (out, map) = plan.run_encrypted(&eval, cts, |_, _| {}).unwrap();
    let dec = Decryptor::new(&sk, &be).unwrap();
    let logits =
        batch::decrypt_outputs(&eval, &out, map, images.len(), |ct| dec.decrypt(ct)).unwrap();
    let encrypted: Vec<usize> = logits.iter().map(|l| argmax(l)).collect();
    assert_eq!(
        encrypted, clear,
        "encrypted predictions differ from cleartext"
    );
}

#[test]
fn pytorch_cifar10_model_imports_and_classifies_the_sample() {
    let model = onnx::import_onnx_file(&repo("models/hcnn-cifar10.onnx")).unwrap();
    let model = rewrite(&model, &RewriteOptions::default()).unwrap();
    let plan = batch::BatchPlan::new(&model).unwrap();
    assert_eq!(plan.depth(), 7, "pooling and the dense layers fuse");
    let sample = data::load_cifar_binary(&repo("data/sample/cifar10-test.bin")).unwrap();
    let correct = (0..sample.len())
        .filter(|&i| {
            argmax(exec::run(&model, &sample.image(i)).unwrap().data())
                == usize::from(sample.labels()[i])
        })
        .count();
    // 235/300 = 78.3% (80.1% on the full test split, see models/hcnn-cifar10.md).
    assert!(correct >= 225, "cleartext accuracy {correct}/300");
}
