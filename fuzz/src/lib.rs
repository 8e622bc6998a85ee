//! Shared support for hecnn's fuzz targets (`fuzz/fuzz_targets/*.rs`) and for the seed-corpus
//! generator (`fuzz/examples/seeds.rs`):
//!
//! - **fixtures**, built once per process ([`OnceLock`]) at toy (insecure) parameters so
//!   that an execution takes microseconds: RLWE/CKKS parameters at `N = 2^4`
//!   ([`rlwe_toy`]), a tiny compiled model in batch packing with its client spec and key
//!   pair ([`compiled`]), a tiny protected model with its keys and an Ed25519 signing key
//!   made once per process ([`protected`]);
//! - **resealing**: most hecnn formats end with a BLAKE3 checksum, which a random mutation
//!   almost never keeps valid. The targets therefore parse every input twice: as given
//!   (headers and the checksum check) and *resealed* by the functions here (checksums
//!   recomputed, nested ones included, and signatures made again with the fixed key), so
//!   that the fuzzer reaches the body decoders. Library code is never weakened for fuzzing.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use hecnn_ckks::CkksParams;
use hecnn_deploy::signing::{OwnerKey, SigningKey};
use hecnn_nn::compile::{
    self, Client, ClientSpec, CompileOptions, CompiledModel, ImagesHeader, PackingRequest,
};
use hecnn_nn::ir::{Dense, Node};
use hecnn_nn::protect::{ProtectPlan, ProtectedModel, Scope};
use hecnn_nn::{Model, Op, Tensor};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, Params, ParamsLiteral, PublicKey, SecretKey, SecurityLevel};
use serde::{Deserialize, Serialize};

/// log2 of the ring degree of the RLWE/CKKS toy parameters (the smallest sizes keep
/// every execution fast; the RLWE layer accepts degrees from 2^3).
pub const RLWE_LOG_N: u32 = 4;
/// Levels of the RLWE/CKKS toy parameters.
pub const RLWE_LEVELS: usize = 2;
/// log2 of the ring degree of the tiny protected model.
pub const PROTECTED_LOG_N: u32 = 5;
/// Bytes of a BLAKE3 checksum.
pub const CHECKSUM: usize = 32;
/// Bytes of the header of a compiler envelope (`magic | version | body length`).
pub const NN_HEADER: usize = 13;
/// Bytes of the header of a signed protected model (`magic | version | key | signature`).
pub const SIGNED_HEADER: usize = 4 + 2 + 32 + 64;

/// The backend every target uses: the CPU, one thread.
pub fn backend() -> &'static CpuBackend {
    static BE: OnceLock<CpuBackend> = OnceLock::new();
    BE.get_or_init(|| CpuBackend::new(1).expect("CPU backend"))
}

/// Toy RLWE parameters, the CKKS parameters over them, and a secret key under them.
pub struct RlweToy {
    /// The RLWE parameters (`N = 2^RLWE_LOG_N`).
    pub params: Arc<Params>,
    /// CKKS over the same literal (scale 2^30).
    pub ckks: Arc<CkksParams>,
    /// A secret key (for the seeds).
    pub sk: SecretKey,
}

/// The literal of the toy parameters.
pub fn rlwe_literal() -> ParamsLiteral {
    hecnn_testkit::toy_literal(RLWE_LOG_N, RLWE_LEVELS)
}

/// The toy RLWE/CKKS fixture, built once.
pub fn rlwe_toy() -> &'static RlweToy {
    static T: OnceLock<RlweToy> = OnceLock::new();
    T.get_or_init(|| {
        let ckks = Arc::new(CkksParams::from_literal(&rlwe_literal(), 30).expect("toy params"));
        let params = Arc::clone(ckks.rlwe());
        let sk = SecretKey::generate(&params, &mut Prng::from_seed([1; 32])).expect("key");
        RlweToy { params, ckks, sk }
    })
}

/// A graph node.
fn node(name: &str, op: Op, inputs: Vec<usize>) -> Node {
    Node {
        name: name.into(),
        op,
        inputs,
    }
}

/// A dense layer of `o × i` deterministic weights.
fn dense(o: usize, i: usize, s: f64) -> Op {
    Op::Dense(Dense {
        weight: Tensor::new(
            vec![o, i],
            (0..o * i).map(|k| s * (k as f64 - 1.5)).collect(),
        )
        .expect("weights"),
        bias: vec![0.25; o],
    })
}

/// The compiled model's graph: input `1×1×2` → flatten → dense 2×2 → `x²`.
pub fn tiny_compile_model() -> Model {
    Model {
        name: "fuzz-tiny".into(),
        input_shape: [1, 1, 2],
        nodes: vec![
            node("x", Op::Input, vec![]),
            node("flat", Op::Flatten, vec![0]),
            node("fc", dense(2, 2, 0.5), vec![1]),
            node("sq", Op::Poly(vec![0.0, 0.0, 1.0]), vec![2]),
        ],
        output: 3,
    }
}

/// The protected model's graph: input `1×2×2` → flatten → dense 3 → `x² + 2x` → dense 2.
pub fn tiny_protect_model() -> Model {
    Model {
        name: "fuzz-protected".into(),
        input_shape: [1, 2, 2],
        nodes: vec![
            node("x", Op::Input, vec![]),
            node("flat", Op::Flatten, vec![0]),
            node("fc1", dense(3, 4, 0.1), vec![1]),
            node("act", Op::Poly(vec![0.0, 2.0, 1.0]), vec![2]),
            node("fc2", dense(2, 3, 0.2), vec![3]),
        ],
        output: 4,
    }
}

/// Compile options at the smallest (insecure) ring degree the compiler accepts.
pub fn compile_options(packing: PackingRequest) -> CompileOptions {
    CompileOptions {
        packing,
        log_n: 10,
        security: SecurityLevel::UncheckedForReproduction,
        ..CompileOptions::default()
    }
}

/// A compiled model in batch packing, its client spec and a client's key pair.
pub struct Compiled {
    /// The compiled model.
    pub model: CompiledModel,
    /// Its client spec (what encrypted images are checked against).
    pub spec: ClientSpec,
    /// The client's secret key.
    pub secret: SecretKey,
    /// The client's public key.
    pub public: PublicKey<CpuBackend>,
    /// The client's evaluation keys, serialized.
    pub evaluation: Vec<u8>,
}

/// The compiled-model fixture, built once.
pub fn compiled() -> &'static Compiled {
    static C: OnceLock<Compiled> = OnceLock::new();
    C.get_or_init(|| {
        let model = compile::compile(
            &tiny_compile_model(),
            &compile_options(PackingRequest::Batch),
        )
        .expect("compile");
        let spec = model.client_spec();
        let client = Client::new(spec.clone(), backend().clone()).expect("client");
        let keys = client
            .keygen(&mut Prng::from_seed([2; 32]))
            .expect("keygen");
        let evaluation = keys.evaluation.to_bytes(backend()).expect("keys");
        Compiled {
            model,
            spec,
            secret: keys.secret,
            public: keys.public,
            evaluation,
        }
    })
}

/// A protected model, the owner's keys for it, and the fixed signing key.
pub struct Protected {
    /// The protected model.
    pub model: ProtectedModel<CpuBackend>,
    /// The owner's secret key the model is encrypted under.
    pub sk: SecretKey,
    /// The owner's public key, serialized.
    pub public_key: Vec<u8>,
    /// The evaluation keys the model needs, serialized.
    pub eval_keys: Vec<u8>,
    /// The fixed signing key the targets sign with.
    pub signing: SigningKey,
    /// Its public half.
    pub owner: OwnerKey,
}

/// The fixed seed of the fuzz signing key: public on purpose (it signs fuzz inputs only),
/// so that the committed signed seeds verify as given in every process.
const FUZZ_SIGNING_SEED: [u8; 32] = *b"hecnn fuzz signing key, public!!";

/// The fuzz targets' Ed25519 signing key, the same in every process: made from
/// [`FUZZ_SIGNING_SEED`] as a PKCS#8 v2 document (what `SigningKey` reads).
pub fn signing_key() -> SigningKey {
    // RFC 8410 / RFC 5958: version 1 (v2), Ed25519, the seed, then the public key.
    const PREFIX: [u8; 16] = [
        0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const MIDDLE: [u8; 5] = [0xa1, 0x23, 0x03, 0x21, 0x00];
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&FUZZ_SIGNING_SEED)
        .expect("an Ed25519 seed");
    let mut doc = PREFIX.to_vec();
    doc.extend_from_slice(&FUZZ_SIGNING_SEED);
    doc.extend_from_slice(&MIDDLE);
    doc.extend_from_slice(ring::signature::KeyPair::public_key(&pair).as_ref());
    SigningKey::from_pkcs8(&doc).expect("the fixed fuzz signing key")
}

/// The protected-model fixture, built once.
pub fn protected() -> &'static Protected {
    static P: OnceLock<Protected> = OnceLock::new();
    P.get_or_init(|| {
        let be = backend();
        let plan = ProtectPlan::new(&tiny_protect_model(), Scope::Classifier).expect("plan");
        let lit = hecnn_testkit::toy_literal(PROTECTED_LOG_N, plan.spec().depth());
        let params = Arc::new(CkksParams::from_literal(&lit, 40).expect("params"));
        let mut rng = Prng::from_seed([3; 32]);
        let sk = SecretKey::generate(params.rlwe(), &mut rng).expect("key");
        let model = plan.protect(&params, &sk, be, &mut rng).expect("protect");
        let public_key = sk
            .public_key(be, &mut rng)
            .and_then(|pk| pk.to_bytes(be))
            .expect("public key");
        let eval_keys = sk
            .evaluation_keys(be, &model.key_requirements(), &mut rng)
            .and_then(|k| k.to_bytes(be))
            .expect("evaluation keys");
        let signing = signing_key();
        let owner = signing.owner_key();
        Protected {
            model,
            sk,
            public_key,
            eval_keys,
            signing,
            owner,
        }
    })
}

/// Relin-only key requirements plus rotations (for the RLWE seeds).
pub fn toy_key_requirements() -> KeyRequirements {
    KeyRequirements::relin().with_rotations([1, 2, -1])
}

/// An RLWE object (`serial` version 2) with its trailing checksum recomputed over
/// everything before it; inputs shorter than a checksum get one appended.
pub fn reseal_rlwe(data: &[u8]) -> Vec<u8> {
    let body = if data.len() < CHECKSUM {
        data
    } else {
        &data[..data.len() - CHECKSUM]
    };
    let mut out = body.to_vec();
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out
}

/// A compiler envelope (`magic | version | length | body | blake3(header | body)`) around
/// `body`, with the magic and version of `header` (padded when short).
pub fn seal_nn(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(NN_HEADER + body.len() + CHECKSUM);
    let mut head = [0u8; 5];
    let n = header.len().min(5);
    head[..n].copy_from_slice(&header[..n]);
    out.extend_from_slice(&head);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// The body of a compiler envelope, whatever its length field and checksum say (the
/// bytes between the header and the last 32 bytes, or after the header when shorter).
pub fn nn_body(data: &[u8]) -> &[u8] {
    let rest = data.get(NN_HEADER..).unwrap_or_default();
    if rest.len() >= CHECKSUM {
        &rest[..rest.len() - CHECKSUM]
    } else {
        rest
    }
}

/// A compiler envelope with its length field and checksum made right.
pub fn reseal_nn(data: &[u8]) -> Vec<u8> {
    seal_nn(data, nn_body(data))
}

/// The stored form of encrypted images, field for field (postcard is positional).
#[derive(Serialize, Deserialize)]
struct ImagesBodyMirror {
    head: ImagesHeader,
    map: (f64, f64),
    cts: Vec<Vec<u8>>,
}

/// Encrypted images resealed through and through: every ciphertext's checksum, then the
/// envelope's; `None` when the body does not decode as encrypted images.
pub fn reseal_images(data: &[u8]) -> Option<Vec<u8>> {
    let mut body: ImagesBodyMirror = postcard::from_bytes(nn_body(data)).ok()?;
    for ct in &mut body.cts {
        *ct = reseal_rlwe(ct);
    }
    Some(seal_nn(data, &postcard::to_allocvec(&body).ok()?))
}

/// A protected-model file (version 2), field for field.
#[derive(Serialize, Deserialize)]
struct ModelFileMirror {
    magic: [u8; 4],
    version: u16,
    prefix: Vec<u8>,
    scope: String,
    features: u64,
    layers: Vec<LayerFileMirror>,
    literal: ParamsLiteral,
    log_scale: u32,
    key_id: [u8; 32],
}

/// One protected layer of a [`ModelFileMirror`].
#[derive(Serialize, Deserialize)]
struct LayerFileMirror {
    outputs: u64,
    square: Option<f64>,
    weights: Vec<Vec<u8>>,
    biases: Vec<Vec<u8>>,
}

/// An encrypted result of a protected model, field for field.
#[derive(Serialize, Deserialize)]
struct OutputFileMirror {
    magic: [u8; 4],
    version: u16,
    key_id: [u8; 32],
    cts: Vec<Vec<u8>>,
}

/// A protected model (version 2) with every ciphertext's checksum recomputed; `None` when
/// it does not decode as one.
pub fn reseal_protected(data: &[u8]) -> Option<Vec<u8>> {
    let mut f: ModelFileMirror = postcard::from_bytes(data).ok()?;
    for l in &mut f.layers {
        for ct in l.weights.iter_mut().chain(l.biases.iter_mut()) {
            *ct = reseal_rlwe(ct);
        }
    }
    postcard::to_allocvec(&f).ok()
}

/// A protected model's encrypted result with every ciphertext's checksum recomputed;
/// `None` when it does not decode as one.
pub fn reseal_output(data: &[u8]) -> Option<Vec<u8>> {
    let mut f: OutputFileMirror = postcard::from_bytes(data).ok()?;
    for ct in &mut f.cts {
        *ct = reseal_rlwe(ct);
    }
    postcard::to_allocvec(&f).ok()
}

/// The protected model inside `data`: the payload of a signed model (`HCNS`), else `data`.
pub fn unsigned(data: &[u8]) -> &[u8] {
    if hecnn_deploy::signing::is_signed(data) && data.len() >= SIGNED_HEADER {
        &data[SIGNED_HEADER..]
    } else {
        data
    }
}

/// `data` taken as a protected model (signed or not), its ciphertexts resealed when it
/// decodes, signed again with the fixed key.
pub fn resign(key: &SigningKey, data: &[u8]) -> Vec<u8> {
    let model = unsigned(data);
    let model = reseal_protected(model).unwrap_or_else(|| model.to_vec());
    key.sign_model(&model)
}

/// A toy BFV plan (insecure ring `N = 2^5`, checks off) and the pieces a reader needs: its
/// instances' parameters and an encrypted batch, for the BFV file parsers.
pub struct BfvToy {
    /// The plan.
    pub plan: hecnn_nn::bfv_batch::BfvPlan,
    /// Its bytes.
    pub plan_bytes: Vec<u8>,
    /// Parameters of every instance.
    pub params: Vec<std::sync::Arc<hecnn_bfv::BfvParams>>,
    /// An encrypted batch of one image, as `hecnn encrypt` writes it.
    pub batch: Vec<u8>,
    /// One BFV ciphertext as `hecnn_bfv::Ciphertext::to_bytes` writes it.
    pub ciphertext: Vec<u8>,
}

/// The toy BFV plan, built once.
pub fn bfv_toy() -> &'static BfvToy {
    static TOY: OnceLock<BfvToy> = OnceLock::new();
    TOY.get_or_init(|| {
        use hecnn_nn::{
            bfv_batch::{self, BfvClient, BfvOptions},
            quant::{QuantModel, QuantSpec},
        };
        let quant = QuantModel::quantize(&tiny_compile_model(), &QuantSpec::default())
            .expect("quantize the toy model");
        let ring = ParamsLiteral {
            log_n: 5,
            log_q: vec![40, 40, 40],
            log_p: vec![40],
            dnum: None,
            secret: hecnn_rlwe::SecretDistribution::Ternary,
            security: hecnn_rlwe::SecurityLevel::UncheckedForReproduction,
        };
        let plan = bfv_batch::plan(
            quant,
            &BfvOptions {
                ring: Some(ring),
                ..BfvOptions::default()
            },
        )
        .expect("plan the toy model");
        let plan_bytes = plan.to_bytes().expect("plan bytes");
        let shared = std::sync::Arc::new(plan.clone());
        let mut rng = Prng::from_seed([3; 32]);
        let client = BfvClient::new(shared, backend().clone(), &mut rng).expect("client");
        let image = vec![1i64; client.plan().quant().input_len()];
        let cts = client.encrypt(&[image], &mut rng).expect("encrypt");
        let batch = bfv_batch::batch_to_bytes(&plan, client.params(), backend(), 1, &cts)
            .expect("batch bytes");
        let ciphertext = cts[0][0]
            .to_bytes(backend(), &client.params()[0])
            .expect("ciphertext bytes");
        BfvToy {
            params: client.params().to_vec(),
            plan,
            plan_bytes,
            batch,
            ciphertext,
        }
    })
}

/// A tiny BFV protected model (the protected-model graph at `N = 2^5`, checks off), the
/// owner's plan bytes and an encrypted result, for the BFV protected-model parsers.
pub struct BfvProtected {
    /// The edge's model.
    pub model: hecnn_nn::protect::bfv::BfvProtectedModel<CpuBackend>,
    /// Its bytes.
    pub model_bytes: Vec<u8>,
    /// The owner's plan as `BfvProtectPlan::to_owner_bytes` writes it.
    pub owner: Vec<u8>,
    /// One encrypted result.
    pub output: Vec<u8>,
}

/// The BFV protected-model fixture, built once.
pub fn bfv_protected() -> &'static BfvProtected {
    static P: OnceLock<BfvProtected> = OnceLock::new();
    P.get_or_init(|| {
        use hecnn_nn::protect::bfv::{BfvFeatures, BfvProtectOptions, BfvProtectPlan};
        let be = backend();
        let plan = ProtectPlan::new(&tiny_protect_model(), Scope::Classifier).expect("plan");
        let mut opts = BfvProtectOptions::with_feature_range((-1.0, 1.0));
        opts.bfv.ring = Some(ParamsLiteral {
            log_n: PROTECTED_LOG_N,
            log_q: vec![50; 4],
            log_p: vec![50],
            dnum: None,
            secret: hecnn_rlwe::SecretDistribution::Ternary,
            security: SecurityLevel::UncheckedForReproduction,
        });
        let bfv = BfvProtectPlan::new(&plan, &opts).expect("BFV plan");
        let mut rng = Prng::from_seed([5; 32]);
        let sk = SecretKey::generate(&bfv.rlwe().expect("ring"), &mut rng).expect("key");
        let model = bfv.protect(&sk, be, &mut rng).expect("protect");
        let keys = Arc::new(
            sk.evaluation_keys(be, &model.key_requirements(), &mut rng)
                .expect("evaluation keys"),
        );
        let q = model
            .quantize_features(&[0.5, -1.0, 0.25, 0.75])
            .expect("features");
        let output = model
            .evaluate(&keys, be, &BfvFeatures::Plain(q))
            .and_then(|o| o.to_bytes(be, &model))
            .expect("result");
        BfvProtected {
            model_bytes: model.to_bytes(be).expect("model bytes"),
            owner: bfv.to_owner_bytes(sk.key_id()).expect("owner plan"),
            output,
            model,
        }
    })
}

/// A BFV protected-model file, field for field (postcard encodes a struct as the tuple of
/// its fields).
#[derive(Serialize, Deserialize)]
struct BfvModelFileMirror {
    magic: [u8; 4],
    version: u16,
    prefix: Vec<u8>,
    scope: String,
    features: u64,
    layers: Vec<(u64, Option<f64>)>,
    literal: ParamsLiteral,
    moduli: Vec<u64>,
    input: (f64, i64, i64),
    key_id: [u8; 32],
    instances: Vec<Vec<(Vec<Vec<u8>>, Vec<Vec<u8>>)>>,
}

/// A BFV protected model's result, field for field.
#[derive(Serialize, Deserialize)]
struct BfvOutputFileMirror {
    magic: [u8; 4],
    version: u16,
    key_id: [u8; 32],
    moduli: Vec<u64>,
    cts: Vec<Vec<Vec<u8>>>,
}

/// A BFV protected model with every ciphertext's checksum recomputed; `None` when it does
/// not decode as one.
pub fn reseal_bfv_protected(data: &[u8]) -> Option<Vec<u8>> {
    let mut f: BfvModelFileMirror = postcard::from_bytes(data).ok()?;
    for layers in &mut f.instances {
        for (weights, biases) in layers {
            for ct in weights.iter_mut().chain(biases.iter_mut()) {
                *ct = reseal_rlwe(ct);
            }
        }
    }
    postcard::to_allocvec(&f).ok()
}

/// A BFV protected model's result with every ciphertext's checksum recomputed; `None` when
/// it does not decode as one.
pub fn reseal_bfv_output(data: &[u8]) -> Option<Vec<u8>> {
    let mut f: BfvOutputFileMirror = postcard::from_bytes(data).ok()?;
    for ct in f.cts.iter_mut().flatten() {
        *ct = reseal_rlwe(ct);
    }
    postcard::to_allocvec(&f).ok()
}
