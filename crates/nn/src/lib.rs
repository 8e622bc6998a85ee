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
pub mod data;
pub mod exec;
pub mod ir;
pub mod linear;
pub mod onnx;
mod pending;
pub mod protect;
pub mod rewrite;
pub mod single;
mod tensor;

pub use ir::{Model, Op};
pub use rewrite::{RewriteOptions, rewrite};
pub use tensor::Tensor;

/// Errors of the model layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
        source: hecnn_ckks::CkksError,
    },
    /// Missing or malformed data files.
    #[error("data: {0}")]
    Data(String),
    /// Structurally invalid model.
    #[error("invalid model: {0}")]
    Invalid(String),
    /// A single-image layout needs more slots than the ring degree has (a larger degree
    /// may hold it).
    #[error("{what} does not fit {slots} slots (a larger ring degree has more)")]
    TooFewSlots {
        /// What did not fit.
        what: String,
        /// The slots per ciphertext.
        slots: usize,
    },
}
