//! # hecnn-nn
//!
//! The model side of hecnn, free of cryptography: a small IR for HE-friendly CNNs
//! ([`Model`]), ONNX import (every unsupported operator reported at once) and export,
//! HE-friendly rewrites (batch-norm folding, polynomial activations, refusal of ReLU and max
//! pooling unless a replacement is requested), and the cleartext `f64` reference executor
//! that encrypted runs are checked against.
//!
//! ```
//! use hecnn_nn::{Model, Op, Tensor, ir::{Dense, Node}, exec, onnx};
//! let model = Model {
//!     name: "tiny".into(),
//!     input_shape: [1, 2, 2],
//!     nodes: vec![
//!         Node { name: "x".into(), op: Op::Input, inputs: vec![] },
//!         Node { name: "sq".into(), op: Op::Poly(vec![0.0, 0.0, 1.0]), inputs: vec![0] },
//!         Node { name: "fc".into(), op: Op::Dense(Dense {
//!             weight: Tensor::new(vec![1, 4], vec![1.0; 4])?, bias: vec![0.5] }), inputs: vec![1] },
//!     ],
//!     output: 2,
//! };
//! let x = Tensor::new(vec![1, 2, 2], vec![1.0, 2.0, 3.0, 4.0])?;
//! assert_eq!(exec::run(&model, &x)?.data(), &[30.5]);
//! let back = onnx::import_onnx(&onnx::export_onnx(&model)?)?;
//! assert_eq!(exec::run(&back, &x)?.data(), &[30.5]);
//! # Ok::<(), hecnn_nn::NnError>(())
//! ```

pub mod batch;
pub mod bfv_batch;
mod coeffs;
pub mod compile;
pub mod data;
pub mod exec;
pub mod ir;
pub mod linear;
pub mod onnx;
mod pending;
pub mod protect;
pub mod quant;
pub mod rewrite;
pub mod scheme;
pub mod single;
mod tensor;

pub use ir::{Model, Op};
pub use rewrite::{RewriteOptions, rewrite};
pub use tensor::Tensor;

/// Errors of the model layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NnError {
    /// Malformed or unsupported ONNX structure.
    #[error("ONNX: {0}")]
    Onnx(String),
    /// Operators hecnn cannot import, as (node name, operator) pairs — all of them.
    #[error("unsupported ONNX operators: {}", .0.iter().map(|(n, op)| format!("{op} (node '{n}')")).collect::<Vec<_>>().join(", "))]
    Unsupported(Vec<(String, String)>),
    /// Non-polynomial operators without a requested replacement.
    #[error(
        "not evaluable under homomorphic encryption: {}; replace ReLU with a polynomial \
         (e.g. x² as in HCNN) and max pooling with average pooling, or retrain with them",
        .0.join(", ")
    )]
    NotPolynomial(Vec<String>),
    /// Inconsistent shapes.
    #[error("shape error: {0}")]
    Shape(String),
    /// A homomorphic operation failed while evaluating a node.
    #[error("encrypted evaluation failed at node '{node}': {source}")]
    Encrypted {
        /// The node's name.
        node: String,
        /// The underlying error.
        #[source]
        source: scheme::SchemeError,
    },
    /// Missing or malformed data files.
    #[error("data: {0}")]
    Data(String),
    /// A single-image layout needs more slots than the ring degree has (a larger degree
    /// may hold it).
    #[error("{what} does not fit {slots} slots (a larger ring degree has more)")]
    TooFewSlots {
        /// What did not fit.
        what: String,
        /// The slots per ciphertext.
        slots: usize,
    },
    /// A node whose weights or attributes do not fit its input's shape.
    #[error("{op} '{node}': {detail} (input shape {input:?})")]
    NodeShape {
        /// The node.
        node: String,
        /// Its operator.
        op: &'static str,
        /// The input's shape.
        input: Vec<usize>,
        /// What does not fit.
        detail: String,
    },
    /// A graph that is not a well-formed model (inputs, arity, output).
    #[error("invalid graph at '{node}': {detail}")]
    Graph {
        /// The node.
        node: String,
        /// What is wrong.
        detail: String,
    },
    /// An operator or pattern a packing cannot run.
    #[error("{op} '{node}' cannot run in {packing} packing: {why}")]
    NotSupported {
        /// The node.
        node: String,
        /// Its operator.
        op: &'static str,
        /// The packing.
        packing: &'static str,
        /// Why, and what to do.
        why: String,
    },
    /// A model or spec that does not quantize to integers.
    #[error("quantization: {what}: {why}")]
    Quantization {
        /// What does not quantize: a setting (`input bits`, `weight bits`, `input range`),
        /// a node (its bias), or the plaintext moduli.
        what: String,
        /// Why, with the bound it breaks.
        why: String,
    },
    /// Work stopped on request (its caller went away) before it finished.
    #[error("{0}: cancelled")]
    Cancelled(String),
    /// A protected result whose estimated noise is above the bound its flooding was sized to
    /// hide (inputs far outside what the model was measured on, or a crafted ciphertext):
    /// flooded, its noise would still show, so it is not released. The message names the
    /// (public) bound only: the noise estimate is a function of the secret key, for the
    /// owner's eyes alone, and must never reach whoever sent the result.
    #[error("a result noisier than the flooding bound 2^{bound_log2:.1}: not released")]
    NoiseAboveBound {
        /// `log2` of the result's estimated noise (coefficient domain). Secret-dependent:
        /// the owner's alone, never to be shown to an edge or a consumer.
        noise_log2: f64,
        /// `log2` of the bound the flooding hides.
        bound_log2: f64,
    },
    /// A BFV result whose measured noise budget is below `bound_bits`: its decryption would
    /// be wrong, so nothing is released. The message names the public threshold only (the
    /// measured budget depends on the secret key).
    #[error("{what}: noise budget exhausted (below {bound_bits} bits): not decrypted")]
    BudgetExhausted {
        /// The ciphertext refused.
        what: String,
        /// The public threshold.
        bound_bits: f64,
    },
    /// Values with fewer levels than the plan needs.
    #[error("{what} needs {needed} levels, {have} left")]
    Levels {
        /// What needs them.
        what: String,
        /// Levels needed.
        needed: usize,
        /// Levels the values have.
        have: usize,
    },
    /// A value outside what the parameters hold.
    #[error("'{node}' reaches {value:.3e}, beyond the {bound:e} {what}")]
    OutOfRange {
        /// The node or stage.
        node: String,
        /// The value.
        value: f64,
        /// The bound.
        bound: f64,
        /// What the bound is.
        what: &'static str,
    },
    /// A part of a model that cannot be protected (evaluated on encrypted weights).
    #[error("cannot protect '{node}': {why}")]
    Unprotectable {
        /// The node, or the part of the model.
        node: String,
        /// Why, and what to do.
        why: String,
    },
    /// A broken internal invariant: a bug in hecnn.
    #[error("internal error: {0} (a bug in hecnn: please report it)")]
    Internal(String),
    /// A recorded single-image layout the planner could not have chosen for this model.
    #[error(
        "the recorded layout of '{stage}' ({layout}) does not fit the model: the compiled model was altered or belongs to another model; compile it again"
    )]
    LayoutMismatch {
        /// The stage.
        stage: String,
        /// The recorded layout.
        layout: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// Bytes that are not the artifact they should be.
    #[error("{what}: {reason}")]
    Format {
        /// The kind of artifact ("compiled model", "client spec", ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An artifact written by another format version.
    #[error("{what}: format version {found} (this build reads {expected}): {remedy}")]
    Version {
        /// The kind of artifact.
        what: &'static str,
        /// The version in the bytes.
        found: u8,
        /// The version this build reads.
        expected: u8,
        /// What to do about it.
        remedy: &'static str,
    },
    /// An artifact whose checksum does not match its contents.
    #[error("{what}: checksum mismatch (the bytes were corrupted or altered)")]
    Checksum {
        /// The kind of artifact.
        what: &'static str,
    },
    /// An artifact larger than the bound a reader accepts.
    #[error("{what}: {size} bytes, more than the {limit} accepted")]
    TooLarge {
        /// The artifact or file.
        what: String,
        /// Its size (at least; reading stops at the limit).
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// Artifacts that do not belong together (model, parameters, keys, packing).
    #[error("{what}: expected {expected}, got {found}")]
    Mismatch {
        /// What differs.
        what: &'static str,
        /// What the model or key expects.
        expected: String,
        /// What was given.
        found: String,
    },
    /// No secure parameters run the model in the packing asked for.
    #[error("{chain}: {reason}")]
    NoParameters {
        /// The parameter chain asked for.
        chain: compile::params::Chain,
        /// Why not, with what to try.
        reason: String,
    },
    /// No secure BFV parameters hold an integer network's outputs with its noise.
    #[error(
        "no BFV parameters at {security}: the outputs need {need_bits:.1} bits of plaintext (worst case); {reason}"
    )]
    NoBfvParameters {
        /// The security level asked for.
        security: hecnn_rlwe::SecurityLevel,
        /// Bits of plaintext the outputs need.
        need_bits: f64,
        /// Why nothing fits, and what to try.
        reason: String,
    },
    /// No placement of refreshes (bootstrapping) runs the plan: some part of it between two
    /// points where one value holds everything later stages read needs more levels than a
    /// refresh gives back.
    #[error(
        "'{stage}' (stage {index}) cannot be reached: refreshes give back {levels} level(s), and the stages from the last point where a refresh could run to this one need more (residual branches are refreshed only where they join)"
    )]
    RefreshPlacement {
        /// The first stage no placement reaches.
        stage: String,
        /// Its index.
        index: usize,
        /// Levels a refresh gives back.
        levels: usize,
    },
    /// A plan deeper than its parameters' levels, with no refresh to bring values back up.
    #[error(
        "'{stage}' (stage {index}) runs out of levels: the plan consumes {depth}, the parameters have {levels}, and no refresh (bootstrapping) is available"
    )]
    OutOfLevels {
        /// The stage.
        stage: String,
        /// Its index.
        index: usize,
        /// Levels the plan consumes without refreshes.
        depth: usize,
        /// Levels of the parameters.
        levels: usize,
    },
    /// An error of the CKKS layer outside any node (keys, encoding, serialization).
    #[error(transparent)]
    Ckks(#[from] hecnn_ckks::CkksError),
    /// An error of the RLWE layer (keys, serialization).
    #[error(transparent)]
    Rlwe(#[from] hecnn_rlwe::RlweError),
}

impl NnError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source: std::sync::Arc::new(source),
        }
    }
}
