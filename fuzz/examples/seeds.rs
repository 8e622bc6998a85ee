//! Writes the seed corpora of the fuzz targets to `fuzz/seeds/<target>/`: small valid
//! instances of every format at the fixtures' toy parameters, and a few invalid ones
//! (truncated, wrong magic, an older version). Run from anywhere:
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! The output is deterministic: the signed models are signed with the fixed fuzz signing key
//! (`hecnn_fuzz::signing_key`), so they verify as given.
//! Reproducers of fixed crashes (`*-oom`: parameter literals asking for 20,000 primes at
//! `N = 2^17`) are committed beside them and are not written here.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use hecnn_ckks::{Encoder, encrypt_pk, encrypt_sk};
use hecnn_deploy::wire::{
    DeploymentBundle, DeploymentHeader, ResultEnvelope, ResultHeader, push_frame,
};
use hecnn_fuzz::{
    backend, compile_options, compiled, protected, rlwe_toy, tiny_compile_model,
    tiny_protect_model, toy_key_requirements,
};
use hecnn_nn::compile::{self, Client, PackingRequest, Server};
use hecnn_nn::onnx::proto::{
    Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto,
};
use hecnn_nn::protect::FeatureInput;
use hecnn_nn::{Tensor, onnx};
use hecnn_ring::Prng;
use hecnn_rlwe::KeyStorage;
use prost::Message;

/// Where the seeds of `target` go (created).
fn dir(root: &Path, target: &str) -> PathBuf {
    let d = root.join(target);
    std::fs::create_dir_all(&d).expect("seed directory");
    d
}

/// Writes one seed.
fn put(root: &Path, target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(dir(root, target).join(name), bytes).expect("write seed");
}

/// Writes `bytes` under `name`, and invalid variants: truncated to half, and with the
/// first byte changed (a wrong magic).
fn put_with_variants(root: &Path, target: &str, name: &str, bytes: &[u8]) {
    put(root, target, name, bytes);
    put(
        root,
        target,
        &format!("{name}.truncated"),
        &bytes[..bytes.len() / 2],
    );
    let mut magic = bytes.to_vec();
    if let Some(b) = magic.first_mut() {
        *b ^= 0x20;
    }
    put(root, target, &format!("{name}.bad-magic"), &magic);
}

/// A version-1 RLWE object from a version-2 one: version byte 1, checksum dropped.
fn rlwe_v1(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes[..bytes.len() - 32].to_vec();
    v[4] = 1;
    v
}

fn rlwe_seeds(root: &Path) {
    let t = rlwe_toy();
    let be = backend();
    let mut rng = Prng::from_seed([7; 32]);
    let target = "rlwe_serial";
    put_with_variants(root, target, "params", &t.params.to_bytes());
    let pk = t.sk.public_key(be, &mut rng).unwrap();
    put_with_variants(root, target, "public-key", &pk.to_bytes(be).unwrap());
    put_with_variants(root, target, "secret-key", &t.sk.to_secret_bytes());
    let evk =
        t.sk.evaluation_keys(be, &toy_key_requirements(), &mut rng)
            .unwrap();
    put_with_variants(root, target, "evaluation-keys", &evk.to_bytes(be).unwrap());
    let compact =
        t.sk.evaluation_keys_with(be, &toy_key_requirements(), KeyStorage::Compact, &mut rng)
            .unwrap();
    put(
        root,
        target,
        "evaluation-keys-compact",
        &compact.to_bytes(be).unwrap(),
    );
    let enc = t.sk.encapsulation_keys(be, 4, &mut rng).unwrap();
    put_with_variants(
        root,
        target,
        "encapsulation-keys",
        &enc.to_bytes(be).unwrap(),
    );

    let encoder = Encoder::new(t.ckks.n());
    let values = hecnn_testkit::uniform_values(1, t.ckks.max_slots());
    let top = t.ckks.max_level();
    let pt = encoder
        .encode_real(
            be,
            &t.ckks,
            &values,
            top,
            t.ckks.default_scale(),
            t.ckks.max_slots(),
        )
        .unwrap();
    let seeded = t.sk.encrypt(be, pt.poly(), &mut rng).unwrap();
    let seeded = seeded.to_bytes(be, &t.params).unwrap();
    put_with_variants(root, target, "ciphertext-seeded", &seeded);
    put(root, target, "ciphertext-v1", &rlwe_v1(&seeded));
    let full = pk.encrypt(be, pt.poly(), &mut rng).unwrap();
    put(
        root,
        target,
        "ciphertext-full",
        &full.to_bytes(be, &t.params).unwrap(),
    );

    let target = "ckks_ciphertext";
    let ct = encrypt_sk(&t.sk, be, &pt, &mut rng).unwrap();
    let bytes = ct.to_bytes(be, &t.ckks).unwrap();
    put_with_variants(root, target, "seeded", &bytes);
    put(root, target, "v1", &rlwe_v1(&bytes));
    let ct = encrypt_pk(&pk, be, &pt, &mut rng).unwrap();
    put(root, target, "full", &ct.to_bytes(be, &t.ckks).unwrap());
    let low = encoder
        .encode_real(be, &t.ckks, &values[..2], 0, t.ckks.default_scale(), 2)
        .unwrap();
    let ct = encrypt_sk(&t.sk, be, &low, &mut rng).unwrap();
    put(
        root,
        target,
        "level0-2slots",
        &ct.to_bytes(be, &t.ckks).unwrap(),
    );
}

fn nn_seeds(root: &Path) {
    let c = compiled();
    let be = backend();
    let target = "compiled_model";
    put_with_variants(root, target, "batch", &c.model.to_bytes().unwrap());
    let single = compile::compile(
        &tiny_compile_model(),
        &compile_options(PackingRequest::Single),
    )
    .expect("single-image compile");
    put(root, target, "single", &single.to_bytes().unwrap());

    let target = "client_files";
    put_with_variants(root, target, "spec-batch", &c.spec.to_bytes().unwrap());
    put(
        root,
        target,
        "spec-single",
        &single.client_spec().to_bytes().unwrap(),
    );
    let client = Client::new(c.spec.clone(), be.clone()).unwrap();
    let image = Tensor::new(vec![1, 1, 2], vec![0.5, -0.25]).unwrap();
    let mut rng = Prng::from_seed([8; 32]);
    let inputs = client.encrypt(&c.public, &[image], &mut rng).unwrap();
    let params = c.model.params();
    put_with_variants(
        root,
        target,
        "inputs",
        &inputs.to_bytes(be, params).unwrap(),
    );
    let keys = hecnn_rlwe::EvaluationKeys::from_bytes(be, params.rlwe(), &c.evaluation, 64)
        .expect("evaluation keys");
    let server = Server::new(c.model.server_plan(), keys, be.clone()).unwrap();
    let outputs = server.run(inputs, |_, _| {}).unwrap();
    put(
        root,
        target,
        "outputs",
        &outputs.to_bytes(be, params).unwrap(),
    );
}

fn protected_seeds(root: &Path) {
    let p = protected();
    let be = backend();
    let model = p.model.to_bytes(be).unwrap();
    put_with_variants(root, "protected_model", "model", &model);
    let params = p.model.params();
    let keys = hecnn_rlwe::EvaluationKeys::from_bytes(be, params.rlwe(), &p.eval_keys, 64)
        .expect("evaluation keys");
    let eval = hecnn_ckks::Evaluator::new(
        std::sync::Arc::clone(params),
        std::sync::Arc::new(keys),
        be.clone(),
    )
    .unwrap();
    let image = Tensor::new(vec![1, 2, 2], vec![0.5, -1.0, 0.25, 0.75]).unwrap();
    let features = p.model.spec().features_of(&image).unwrap();
    let out = p
        .model
        .evaluate(&eval, &FeatureInput::Plain(features))
        .unwrap();
    let output = out.to_bytes(be, params, p.model.key_id()).unwrap();
    put_with_variants(root, "protected_model", "output", &output);

    let signed = p.signing.sign_model(&model);
    put(root, "signed_model", "unsigned", &model);
    put_with_variants(root, "signed_model", "signed", &signed);

    let target = "service_frames";
    let bundle = DeploymentBundle {
        header: DeploymentHeader {
            deployment_id: 1,
            model_id: 1,
            model_name: "fuzz".into(),
            model_version: 1,
            key_id: p.model.key_id(),
            encrypt_features: false,
        },
        protected: signed,
        public_key: p.public_key.clone(),
        eval_keys: p.eval_keys.clone(),
    };
    put_with_variants(root, target, "bundle", &bundle.to_bytes().unwrap());
    let env = ResultEnvelope {
        header: ResultHeader {
            deployment_id: 1,
            model_id: 1,
            model_version: 1,
            input_id: "image-1.png".into(),
        },
        output,
    };
    put_with_variants(root, target, "result", &env.to_bytes().unwrap());
    // Edge stream bodies: frames of 4 and of 784 pixels, and a frame with a bad id.
    let mut stream = Vec::new();
    for (id, px) in [
        ("a", [1u8, 2, 3, 4]),
        ("b.png", [5, 6, 7, 8]),
        ("c-1_x", [0, 0, 0, 255]),
    ] {
        push_frame(&mut stream, id, &px).unwrap();
    }
    put(root, target, "stream-4px", &stream);
    let digit: Vec<u8> = (0..784u32).map(|i| (i % 256) as u8).collect();
    let mut stream = Vec::new();
    push_frame(&mut stream, "digit-0", &digit).unwrap();
    put(root, target, "stream-784px", &stream);
    // push_frame refuses this id, so the frame is written by hand.
    let mut stream = 4u16.to_le_bytes().to_vec();
    stream.extend_from_slice(b"../x");
    stream.extend_from_slice(&4u32.to_le_bytes());
    stream.extend_from_slice(&[1, 2, 3, 4]);
    put(root, target, "stream-bad-id", &stream);
}

/// A PNG of `w×h` pixels of `color` at `depth` bits.
fn png(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        let mut writer = enc.write_header().unwrap();
        let bits = color.samples() * depth as usize;
        let row = (w as usize * bits).div_ceil(8);
        let data: Vec<u8> = (0..row * h as usize)
            .map(|i| (i * 37 % 256) as u8)
            .collect();
        writer.write_image_data(&data).unwrap();
    }
    out
}

fn image_seeds(root: &Path) {
    use png::{BitDepth, ColorType};
    let target = "edge_image";
    put(
        root,
        target,
        "grey8.png",
        &png(8, 8, ColorType::Grayscale, BitDepth::Eight),
    );
    put(
        root,
        target,
        "rgb8.png",
        &png(8, 8, ColorType::Rgb, BitDepth::Eight),
    );
    put(
        root,
        target,
        "rgba8.png",
        &png(8, 8, ColorType::Rgba, BitDepth::Eight),
    );
    put(
        root,
        target,
        "grey16.png",
        &png(8, 8, ColorType::Grayscale, BitDepth::Sixteen),
    );
    put(
        root,
        target,
        "grey1.png",
        &png(8, 8, ColorType::Grayscale, BitDepth::One),
    );
    put(
        root,
        target,
        "small.png",
        &png(4, 4, ColorType::Rgb, BitDepth::Eight),
    );
    let rgb = png(8, 8, ColorType::Rgb, BitDepth::Eight);
    put(root, target, "rgb8.png.truncated", &rgb[..rgb.len() / 2]);
    put(root, target, "raw64.u8", &[7u8; 64]);
    put(root, target, "raw192.u8", &[9u8; 192]);
}

/// A value of float type and shape `dims`.
fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            dim_value: Some(d),
                            dim_param: None,
                        })
                        .collect(),
                }),
            }),
        }),
        doc_string: String::new(),
    }
}

/// `x ↦ x·x` forty times over: a polynomial of degree 2^40 if merged naively.
fn mul_chain(n: usize) -> Vec<u8> {
    let name = |i: usize| {
        if i == 0 {
            "x".to_string()
        } else {
            format!("m{i}")
        }
    };
    let node = (1..=n)
        .map(|i| NodeProto {
            input: vec![name(i - 1), name(i - 1)],
            output: vec![name(i)],
            name: format!("mul{i}"),
            op_type: "Mul".into(),
            ..NodeProto::default()
        })
        .collect();
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "hecnn-fuzz".into(),
        graph: Some(GraphProto {
            node,
            name: "mul-chain".into(),
            input: vec![value("x", &[1, 1, 2, 2])],
            output: vec![value(&name(n), &[1, 1, 2, 2])],
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
    .encode_to_vec()
}

fn onnx_seeds(root: &Path, repo: &Path) {
    let target = "onnx_import";
    let fixtures = repo.join("crates/nn/tests/fixtures");
    let mut names: Vec<_> = std::fs::read_dir(&fixtures)
        .expect("fixtures")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    names.sort();
    for p in names {
        let bytes = std::fs::read(&p).unwrap();
        if bytes.len() <= 16 << 10 {
            put(
                root,
                target,
                &p.file_name().unwrap().to_string_lossy(),
                &bytes,
            );
        }
    }
    put(root, target, "mul-chain-40.onnx", &mul_chain(40));
    put(root, target, "mul-chain-3.onnx", &mul_chain(3));
    let compiled = onnx::export_onnx(&tiny_compile_model()).unwrap();
    put_with_variants(root, target, "tiny-dense.onnx", &compiled);
    put(
        root,
        target,
        "tiny-protect.onnx",
        &onnx::export_onnx(&tiny_protect_model()).unwrap(),
    );
}

fn data_seeds(root: &Path) {
    let target = "data_loaders";
    // Two 3×3 images and their labels, behind the images file's length.
    let mut img = Vec::new();
    for v in [0x0803u32, 2, 3, 3] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    img.extend((0..18u8).map(|i| i * 14));
    let mut lab = Vec::new();
    for v in [0x0801u32, 2] {
        lab.extend_from_slice(&v.to_be_bytes());
    }
    lab.extend_from_slice(&[3, 7]);
    let mut idx = (img.len() as u32).to_le_bytes().to_vec();
    idx.extend_from_slice(&img);
    idx.extend_from_slice(&lab);
    put(root, target, "idx", &idx);
    let mut bad = idx.clone();
    bad[7] = 0x02;
    put(root, target, "idx.bad-magic", &bad);
    put(root, target, "idx.truncated", &idx[..idx.len() - 1]);
    let cifar: Vec<u8> = (0..3073u32).map(|i| (i % 251) as u8).collect();
    put(root, target, "cifar-1", &cifar);
    put(root, target, "cifar.truncated", &cifar[..3000]);
}

/// The BFV files: a plan, a batch of one image, one ciphertext.
fn bfv_seeds(root: &Path) {
    let toy = hecnn_fuzz::bfv_toy();
    let target = "bfv_files";
    put_with_variants(root, target, "plan", &toy.plan_bytes);
    put_with_variants(root, target, "batch", &toy.batch);
    put_with_variants(root, target, "ciphertext", &toy.ciphertext);
}

/// The BFV protected-model files: a model, a result, the owner's plan.
fn bfv_protected_seeds(root: &Path) {
    let p = hecnn_fuzz::bfv_protected();
    let target = "bfv_protected";
    put_with_variants(root, target, "model", &p.model_bytes);
    put_with_variants(root, target, "output", &p.output);
    put_with_variants(root, target, "owner", &p.owner);
}

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz.join("seeds");
    rlwe_seeds(&root);
    nn_seeds(&root);
    protected_seeds(&root);
    image_seeds(&root);
    onnx_seeds(&root, fuzz.parent().expect("repository root"));
    data_seeds(&root);
    bfv_seeds(&root);
    bfv_protected_seeds(&root);
    println!("seeds written to {}", root.display());
}
