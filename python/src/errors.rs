//! The library's typed errors as Python exceptions: each [`NnError`] variant becomes an
//! instance of a class of `hecnn._errors` (a subclass of `hecnn.HecnnError`) that carries the
//! variant's name (`kind`) and its fields as attributes.

use hecnn_nn::NnError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// An error of the binding: one of the library's, a Python exception raised by a callback
/// (or a signal such as Ctrl-C), or a bad argument.
#[derive(Debug)]
pub enum Error {
    /// The library's typed error.
    Nn(NnError),
    /// A Python exception (a progress callback's, a signal's), raised again as it is.
    Py(PyErr),
    /// A protected model whose signature does not hold (or a malformed signing key).
    Signature(String),
    /// An argument the binding cannot use.
    Usage {
        /// The argument.
        argument: &'static str,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

impl Error {
    /// A bad argument.
    pub fn usage(
        argument: &'static str,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Self::Usage {
            argument,
            value: value.into(),
            expected: expected.into(),
        }
    }
}

impl From<NnError> for Error {
    fn from(e: NnError) -> Self {
        Self::Nn(e)
    }
}

impl From<hecnn_rlwe::RlweError> for Error {
    fn from(e: hecnn_rlwe::RlweError) -> Self {
        Self::Nn(NnError::Rlwe(e))
    }
}

impl From<hecnn_ckks::CkksError> for Error {
    fn from(e: hecnn_ckks::CkksError) -> Self {
        Self::Nn(NnError::Ckks(e))
    }
}

impl From<hecnn_ring::RingError> for Error {
    fn from(e: hecnn_ring::RingError) -> Self {
        Self::Nn(NnError::Rlwe(hecnn_rlwe::RlweError::Ring(e)))
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Self::Py(e)
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> Self {
        match e {
            Error::Py(e) => e,
            other => Python::attach(|py| {
                to_python(py, &other).unwrap_or_else(|failed| {
                    // The exception classes could not be made (the extension imported
                    // without its package): the message, at least.
                    PyRuntimeError::new_err(format!("{} ({failed})", message(&other)))
                })
            }),
        }
    }
}

/// The message of an error.
fn message(e: &Error) -> String {
    match e {
        Error::Nn(e) => e.to_string(),
        Error::Py(e) => e.to_string(),
        Error::Signature(why) => why.clone(),
        Error::Usage {
            argument,
            value,
            expected,
        } => format!("{argument}={value}: expected {expected}"),
    }
}

/// The exception of `e`: its class in `hecnn._errors`, its message, its kind and fields.
fn to_python(py: Python<'_>, e: &Error) -> PyResult<PyErr> {
    let kw = PyDict::new(py);
    let class = match e {
        Error::Py(e) => return Ok(e.clone_ref(py)),
        Error::Usage {
            argument,
            value,
            expected,
        } => {
            kw.set_item("kind", "Usage")?;
            kw.set_item("argument", argument)?;
            kw.set_item("value", value)?;
            kw.set_item("expected", expected)?;
            "UsageError"
        }
        Error::Signature(why) => {
            kw.set_item("kind", "Signature")?;
            kw.set_item("detail", why)?;
            "SignatureError"
        }
        Error::Nn(e) => nn_fields(&kw, e)?,
    };
    let cls = py.import("hecnn._errors")?.getattr(class)?;
    let obj = cls.call((message(e),), Some(&kw))?;
    Ok(PyErr::from_value(obj))
}

/// Puts the variant's name (`kind`) and fields of `e` into `kw`; returns the class name.
fn nn_fields(kw: &Bound<'_, PyDict>, e: &NnError) -> PyResult<&'static str> {
    let set = |k: &str, v: &dyn ToPy| v.put(kw, k);
    let (kind, class) = match e {
        NnError::Onnx(detail) => {
            set("detail", detail)?;
            ("Onnx", "OnnxError")
        }
        NnError::Unsupported(ops) => {
            kw.set_item("operators", ops.clone())?;
            ("Unsupported", "UnsupportedOperatorError")
        }
        NnError::NotPolynomial(nodes) => {
            kw.set_item("nodes", nodes.clone())?;
            ("NotPolynomial", "NotPolynomialError")
        }
        NnError::Shape(detail) => {
            set("detail", detail)?;
            ("Shape", "ShapeError")
        }
        NnError::Encrypted { node, source } => {
            set("node", node)?;
            set("detail", &source.to_string())?;
            ("Encrypted", "EvaluationError")
        }
        NnError::Data(detail) => {
            set("detail", detail)?;
            ("Data", "DataError")
        }
        NnError::TooFewSlots { what, slots } => {
            set("what", what)?;
            kw.set_item("slots", slots)?;
            ("TooFewSlots", "ParametersError")
        }
        NnError::NodeShape {
            node,
            op,
            input,
            detail,
        } => {
            set("node", node)?;
            kw.set_item("op", op)?;
            kw.set_item("input", input.clone())?;
            set("detail", detail)?;
            ("NodeShape", "ShapeError")
        }
        NnError::Graph { node, detail } => {
            set("node", node)?;
            set("detail", detail)?;
            ("Graph", "ModelError")
        }
        NnError::NotSupported {
            node,
            op,
            packing,
            why,
        } => {
            set("node", node)?;
            kw.set_item("op", op)?;
            kw.set_item("packing", packing)?;
            set("why", why)?;
            ("NotSupported", "NotSupportedError")
        }
        NnError::Cancelled(what) => {
            set("what", what)?;
            ("Cancelled", "CancelledError")
        }
        NnError::Levels { what, needed, have } => {
            set("what", what)?;
            kw.set_item("needed", needed)?;
            kw.set_item("have", have)?;
            ("Levels", "ParametersError")
        }
        NnError::OutOfRange {
            node,
            value,
            bound,
            what,
        } => {
            set("node", node)?;
            kw.set_item("value", value)?;
            kw.set_item("bound", bound)?;
            kw.set_item("what", what)?;
            ("OutOfRange", "RangeError")
        }
        NnError::Unprotectable { node, why } => {
            set("node", node)?;
            set("why", why)?;
            ("Unprotectable", "ModelError")
        }
        NnError::NoiseAboveBound {
            noise_log2,
            bound_log2,
        } => {
            kw.set_item("noise_log2", noise_log2)?;
            kw.set_item("bound_log2", bound_log2)?;
            ("NoiseAboveBound", "RangeError")
        }
        NnError::Internal(detail) => {
            set("detail", detail)?;
            ("Internal", "InternalError")
        }
        NnError::LayoutMismatch { stage, layout } => {
            set("stage", stage)?;
            set("layout", layout)?;
            ("LayoutMismatch", "ArtifactError")
        }
        NnError::Io { path, source } => {
            kw.set_item("path", path.clone())?;
            set("detail", &source.to_string())?;
            kw.set_item("errno", source.raw_os_error())?;
            ("Io", "FileError")
        }
        NnError::Format { what, reason } => {
            kw.set_item("what", what)?;
            set("reason", reason)?;
            ("Format", "ArtifactError")
        }
        NnError::Version {
            what,
            found,
            expected,
            remedy,
        } => {
            kw.set_item("what", what)?;
            kw.set_item("found", found)?;
            kw.set_item("expected", expected)?;
            kw.set_item("remedy", remedy)?;
            ("Version", "ArtifactError")
        }
        NnError::Checksum { what } => {
            kw.set_item("what", what)?;
            ("Checksum", "ArtifactError")
        }
        NnError::TooLarge { what, size, limit } => {
            set("what", what)?;
            kw.set_item("size", size)?;
            kw.set_item("limit", limit)?;
            ("TooLarge", "ArtifactError")
        }
        NnError::Mismatch {
            what,
            expected,
            found,
        } => {
            kw.set_item("what", what)?;
            set("expected", expected)?;
            set("found", found)?;
            // A wrong input shape is a shape error (and a ValueError) first.
            let class = if *what == "image shape" {
                "ShapeError"
            } else {
                "MismatchError"
            };
            ("Mismatch", class)
        }
        NnError::NoParameters { chain, reason } => {
            set("chain", &chain.to_string())?;
            set("reason", reason)?;
            ("NoParameters", "ParametersError")
        }
        NnError::RefreshPlacement {
            stage,
            index,
            levels,
        } => {
            set("stage", stage)?;
            kw.set_item("index", index)?;
            kw.set_item("levels", levels)?;
            ("RefreshPlacement", "ParametersError")
        }
        NnError::OutOfLevels {
            stage,
            index,
            depth,
            levels,
        } => {
            set("stage", stage)?;
            kw.set_item("index", index)?;
            kw.set_item("depth", depth)?;
            kw.set_item("levels", levels)?;
            ("OutOfLevels", "ParametersError")
        }
        NnError::Ckks(e) => {
            set("detail", &e.to_string())?;
            ("Ckks", "CryptoError")
        }
        NnError::Rlwe(e) => {
            set("detail", &e.to_string())?;
            ("Rlwe", "CryptoError")
        }
        other => {
            set("detail", &other.to_string())?;
            ("Other", "HecnnError")
        }
    };
    kw.set_item("kind", kind)?;
    Ok(class)
}

/// A field value put into the keyword arguments.
trait ToPy {
    fn put(&self, kw: &Bound<'_, PyDict>, key: &str) -> PyResult<()>;
}

impl ToPy for String {
    fn put(&self, kw: &Bound<'_, PyDict>, key: &str) -> PyResult<()> {
        kw.set_item(key, self)
    }
}
