//! Glue between Python values and the library's: numpy arrays and images, logits and
//! arrays, option names, progress callbacks, backends.

use hecnn_ckks::CkksParams;
use hecnn_nn::compile::{ClientSpec, IoLayout, PackingKind};
use hecnn_nn::{NnError, Tensor};
use hecnn_ring::CpuBackend;
use numpy::ndarray::Array2;
use numpy::{AllowTypeChange, IntoPyArray, PyArray2, PyArrayLikeDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::{Borrowed, FromPyObject};

use crate::errors::Error;

/// An array of images: `(C, H, W)` for one image or `(N, C, H, W)` for several, of a
/// numeric dtype (bool, integer or float; converted to `float64`). Strings, complex numbers
/// and objects are refused rather than parsed or truncated.
pub struct Images<'py>(PyArrayLikeDyn<'py, f64, AllowTypeChange>);

impl<'a, 'py> FromPyObject<'a, 'py> for Images<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let array = obj.py().import("numpy")?.call_method1("asarray", (obj,))?;
        let dtype = array.getattr("dtype")?;
        let kind: String = dtype.getattr("kind")?.extract()?;
        if !matches!(kind.as_str(), "b" | "i" | "u" | "f") {
            return Err(Error::usage(
                "x",
                format!("an array of dtype {}", dtype.str()?),
                "a numeric array (bool, integer or float): strings, complex numbers and \
                 objects are not images",
            )
            .into());
        }
        Ok(Self(array.extract()?))
    }
}

/// The images of `array` as tensors, and whether it held one image without a batch axis.
///
/// # Errors
/// [`NnError::Mismatch`] (`what = "image shape"`) when the array is not `(C, H, W)` or
/// `(N, C, H, W)` with the model's `C, H, W`.
pub fn images(array: &Images<'_>, shape: [usize; 3]) -> Result<(Vec<Tensor>, bool), Error> {
    let array = &array.0;
    let dims = array.shape().to_vec();
    let wrong = || {
        Error::Nn(NnError::Mismatch {
            what: "image shape",
            expected: format!(
                "{shape:?} for one image, or (N, {}, {}, {}) for N",
                shape[0], shape[1], shape[2]
            ),
            found: format!("an array of shape {dims:?}"),
        })
    };
    let (count, single) = match dims.as_slice() {
        [c, h, w] if [*c, *h, *w] == shape => (1, true),
        [n, c, h, w] if [*c, *h, *w] == shape => (*n, false),
        _ => return Err(wrong()),
    };
    let view = array.as_array();
    let values: Vec<f64> = view.iter().copied().collect();
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(Error::usage(
            "x",
            format!("an array holding {bad}"),
            "finite values",
        ));
    }
    let per: usize = shape.iter().product();
    let tensors = values
        .chunks(per.max(1))
        .take(count)
        .map(|c| Tensor::new(shape.to_vec(), c.to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((tensors, single))
}

/// Logits as a `(N, outputs)` array.
///
/// # Errors
/// Rows of another length than `outputs` (a bug).
pub fn logits<'py>(
    py: Python<'py>,
    rows: Vec<Vec<f64>>,
    outputs: usize,
) -> Result<Bound<'py, PyArray2<f64>>, Error> {
    let n = rows.len();
    let flat: Vec<f64> = rows.into_iter().flatten().collect();
    let array = Array2::from_shape_vec((n, outputs), flat)
        .map_err(|e| NnError::Internal(format!("logits of {n} images: {e}")))?;
    Ok(array.into_pyarray(py))
}

/// The number of logits a plan outputs per image.
pub fn outputs(spec: &ClientSpec) -> usize {
    match spec.io() {
        IoLayout::Batch { outputs, .. } => *outputs,
        IoLayout::Single { output, .. } => output.len(),
    }
}

/// The packing's name in the API: `"batch"` or `"single"`.
pub fn packing_name(p: PackingKind) -> &'static str {
    match p {
        PackingKind::Batch => "batch",
        PackingKind::Single => "single",
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The parameters as a dict: ring degree, slots, levels, log QP, scale, dnum, security.
pub fn params_dict<'py>(
    py: Python<'py>,
    params: &CkksParams,
    input_level: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let r = params.rlwe();
    let d = PyDict::new(py);
    d.set_item("log_n", r.log_n())?;
    d.set_item("n", r.n())?;
    d.set_item("slots", params.max_slots())?;
    d.set_item("levels", r.max_level())?;
    d.set_item("input_level", input_level)?;
    d.set_item("log_qp", r.log_qp())?;
    d.set_item("log_scale", params.log_scale())?;
    d.set_item("dnum", r.dnum())?;
    d.set_item("security_requested", r.security().to_string())?;
    d.set_item(
        "security",
        hecnn_rlwe::security::achieved_level(r.log_n(), r.log_qp())
            .map_or_else(|| "none".to_string(), |l| l.to_string()),
    )?;
    Ok(d)
}

/// A worker pool of `threads` threads (0: every core).
///
/// # Errors
/// The pool cannot start.
pub fn backend(threads: usize) -> Result<CpuBackend, Error> {
    Ok(CpuBackend::new(threads)?)
}

/// A progress callback `progress(stage, done, total)`, called with the GIL; the first
/// exception it raises (or a pending signal such as Ctrl-C) is kept and raised when the
/// call returns. Work that reports between steps (a server's layers or images, an edge's
/// images) stops at the next step once it has raised ([`Progress::stopped`]); work without
/// steps (key generation) finishes first.
pub struct Progress {
    callback: Option<Py<PyAny>>,
    error: Option<PyErr>,
}

impl Progress {
    /// A progress reporter for `callback` (or only signal checks without one).
    pub fn new(callback: Option<Py<PyAny>>) -> Self {
        Self {
            callback,
            error: None,
        }
    }

    /// Reports `done` of `total` in `stage`. Called without the GIL.
    pub fn report(&mut self, stage: &str, done: usize, total: usize) {
        if self.error.is_some() {
            return;
        }
        Python::attach(|py| {
            if let Err(e) = py.check_signals() {
                self.error = Some(e);
                return;
            }
            if let Some(cb) = &self.callback
                && let Err(e) = cb.call1(py, (stage, done, total))
            {
                self.error = Some(e);
            }
        });
    }

    /// Whether the callback raised (or a signal arrived): work that reports between steps
    /// stops at the next one.
    pub fn stopped(&self) -> bool {
        self.error.is_some()
    }

    /// `result`, unless the callback raised (its exception then).
    ///
    /// # Errors
    /// The callback's exception, or the work's error.
    pub fn finish<T>(self, result: Result<T, Error>) -> Result<T, Error> {
        match self.error {
            Some(e) => Err(Error::Py(e)),
            None => result,
        }
    }
}
