//! `compile` and the compiled model: its plan, parameters, key sizes and estimates, its
//! artifacts, and prediction in the clear, simulated or encrypted.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hecnn_ckks::cost::UnitCosts;
use hecnn_nn::compile::{
    self, Bootstrapping, Client, CompileOptions, CompiledModel, PackingRequest, Server,
    read_bounded,
};
use hecnn_nn::{NnError, RewriteOptions, Tensor, exec, onnx};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{PublicKey, SecretKey, SecurityLevel};
use numpy::{PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::convert::{self, Images, Progress};
use crate::errors::Error;

/// The security level of `security`: 128, 192 or 256 (bits), or `"insecure"` for toy
/// parameters in tests (no check; everything reports them as insecure).
pub(crate) fn security_level(security: &Bound<'_, PyAny>) -> Result<SecurityLevel, Error> {
    if let Ok(bits) = security.extract::<u32>() {
        return match bits {
            128 => Ok(SecurityLevel::Bits128),
            192 => Ok(SecurityLevel::Bits192),
            256 => Ok(SecurityLevel::Bits256),
            other => Err(Error::usage(
                "security",
                other.to_string(),
                "128, 192, 256 or \"insecure\"",
            )),
        };
    }
    match security.extract::<String>().as_deref() {
        Ok("insecure") => Ok(SecurityLevel::UncheckedForReproduction),
        _ => Err(Error::usage(
            "security",
            security
                .repr()
                .map_or_else(|_| "?".into(), |r| r.to_string()),
            "128, 192, 256 or \"insecure\"",
        )),
    }
}

/// The packing request of `mode` for `images` images sent together.
fn packing(mode: &str, images: usize) -> Result<PackingRequest, Error> {
    match mode {
        "batch" => Ok(PackingRequest::Batch),
        "single" => Ok(PackingRequest::Single),
        "auto" => Ok(PackingRequest::Auto {
            images: images.max(1),
        }),
        other => Err(Error::usage(
            "mode",
            other,
            "\"auto\", \"batch\" or \"single\"",
        )),
    }
}

fn bootstrapping(b: &str) -> Result<Bootstrapping, Error> {
    match b {
        "auto" => Ok(Bootstrapping::Auto),
        "never" => Ok(Bootstrapping::Never),
        "always" => Ok(Bootstrapping::Always),
        other => Err(Error::usage(
            "bootstrap",
            other,
            "\"auto\", \"never\" or \"always\"",
        )),
    }
}

/// Compiles an ONNX model (a path, or the file's bytes) into a :class:`CompiledModel`.
///
/// The low-level entry point of :func:`hecnn.compile` (which also takes PyTorch modules
/// and an inputset): import (every unsupported operator reported at once), HE-friendly
/// rewrites, the packing (`mode`), levels and checked parameters. The GIL is released
/// while it runs.
#[pyfunction]
#[pyo3(signature = (
    source, *, mode = "auto", images = 1, security = None, log_n = None, relu_poly = None,
    maxpool_as_avgpool = false, bootstrap = "auto", refresh_levels = None,
    refresh_bound = None, name = None, threads = 0
))]
#[allow(clippy::too_many_arguments)]
pub fn compile_onnx(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    mode: &str,
    images: usize,
    security: Option<&Bound<'_, PyAny>>,
    log_n: Option<u32>,
    relu_poly: Option<Vec<f64>>,
    maxpool_as_avgpool: bool,
    bootstrap: &str,
    refresh_levels: Option<usize>,
    refresh_bound: Option<u32>,
    name: Option<String>,
    threads: usize,
) -> Result<PyCompiledModel, Error> {
    let opts = CompileOptions {
        packing: packing(mode, images)?,
        log_n: log_n.unwrap_or(14),
        security: match security {
            Some(s) => security_level(s)?,
            None => SecurityLevel::Bits128,
        },
        rewrite: RewriteOptions {
            relu_replacement: relu_poly,
            maxpool_as_avgpool,
        },
        bootstrapping: bootstrapping(bootstrap)?,
        refresh_levels,
        refresh_bound_bits: refresh_bound.unwrap_or(compile::params::REFRESH_BOUND_BITS),
    };
    enum Source {
        Bytes(Vec<u8>),
        Path(PathBuf),
    }
    let src = if let Ok(b) = source.cast::<PyBytes>() {
        Source::Bytes(b.as_bytes().to_vec())
    } else if let Ok(p) = source.extract::<PathBuf>() {
        Source::Path(p)
    } else {
        return Err(Error::usage(
            "model",
            source
                .get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string()),
            "an ONNX file's path or bytes (or, through hecnn.compile, a torch.nn.Module)",
        ));
    };
    let be = convert::backend(threads)?;
    let compiled = py.detach(move || -> Result<CompiledModel, Error> {
        // A compiled model given where an ONNX one belongs is named as such, before the
        // ONNX parser reports it as malformed (a path: its first bytes are read).
        let compiled = match &src {
            Source::Bytes(b) => CompiledModel::is_compiled(b),
            Source::Path(p) => {
                let mut head = [0u8; 16];
                let mut f = std::fs::File::open(p).map_err(|e| NnError::io(p, e))?;
                let n = std::io::Read::read(&mut f, &mut head).map_err(|e| NnError::io(p, e))?;
                CompiledModel::is_compiled(&head[..n])
            }
        };
        if compiled {
            return Err(Error::usage(
                "model",
                "a compiled model",
                "an ONNX model (load a compiled one with hecnn.load or hecnn.CompiledModel.from_bytes)",
            ));
        }
        let (mut model, stem) = match &src {
            Source::Bytes(b) => (onnx::import_onnx(b)?, None),
            Source::Path(p) => (
                onnx::import_onnx_file(p)?,
                p.file_stem().map(|s| s.to_string_lossy().into_owned()),
            ),
        };
        if let Some(n) = name.or(stem) {
            model.name = n;
        }
        Ok(compile::compile(&model, &opts)?)
    })?;
    Ok(PyCompiledModel::new(compiled, be))
}

/// What `predict(fhe="execute")` keeps between calls: the client's keys and a server.
struct Session {
    client: Client<CpuBackend>,
    secret: SecretKey,
    public: PublicKey<CpuBackend>,
    server: Server<CpuBackend>,
}

/// A compiled model: the rewritten network, its plan in one packing and the checked
/// parameters it runs with. Immutable; saved with :meth:`save` / :meth:`to_bytes`.
///
/// Make one with :func:`hecnn.compile`, or load one with :meth:`load` /
/// :meth:`from_bytes` (including files written by ``hecnn compile``).
#[pyclass(module = "hecnn._hecnn", name = "CompiledModel", frozen)]
pub struct PyCompiledModel {
    pub(crate) inner: Arc<CompiledModel>,
    pub(crate) be: CpuBackend,
    session: Mutex<Option<Arc<Session>>>,
}

impl PyCompiledModel {
    pub(crate) fn new(c: CompiledModel, be: CpuBackend) -> Self {
        Self {
            inner: Arc::new(c),
            be,
            session: Mutex::new(None),
        }
    }

    /// The keys and server of `predict(fhe="execute")`, made on first use.
    fn session(&self, progress: &mut Progress, force: bool) -> Result<Arc<Session>, Error> {
        let mut slot = self
            .session
            .lock()
            .map_err(|_| NnError::Internal("a keygen panicked".into()))?;
        if !force && let Some(s) = &*slot {
            return Ok(Arc::clone(s));
        }
        progress.report("keygen", 0, 1);
        let c = &self.inner;
        let plan = c.server_plan();
        let client = Client::new(c.client_spec(), self.be.clone())?;
        let mut rng = Prng::from_entropy()?;
        let keys = client.keygen_with(&mut rng, plan.key_storage())?;
        let server = match keys.encapsulation {
            Some(encaps) => Server::bootstrapping(plan, keys.evaluation, encaps, self.be.clone())?,
            None => Server::new(plan, keys.evaluation, self.be.clone())?,
        };
        let s = Arc::new(Session {
            client,
            secret: keys.secret,
            public: keys.public,
            server,
        });
        *slot = Some(Arc::clone(&s));
        progress.report("keygen", 1, 1);
        Ok(s)
    }

    /// Images per chunk: what one set of encrypted images (or one simulated batch) holds.
    fn chunk(&self) -> usize {
        self.inner.client_spec().max_images().max(1)
    }
}

#[pymethods]
impl PyCompiledModel {
    /// The model's name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// The packing: ``"batch"`` (one image per slot, thousands per evaluation) or
    /// ``"single"`` (one image densely packed, linear layers by rotations).
    #[getter]
    fn packing(&self) -> &'static str {
        convert::packing_name(self.inner.packing())
    }

    /// BLAKE3 fingerprint (hex) of what determines the computation: keys, ciphertexts and
    /// client specs name the model by it.
    #[getter]
    fn fingerprint(&self) -> String {
        convert::hex(&self.inner.fingerprint())
    }

    /// The shape ``(C, H, W)`` of one input image.
    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        let [c, h, w] = self.inner.model().input_shape;
        (c, h, w)
    }

    /// Logits per image.
    #[getter]
    fn output_size(&self) -> usize {
        convert::outputs(&self.inner.client_spec())
    }

    /// Most images one set of encrypted images holds (a batch's slots, or 256 images in
    /// single-image packing). ``predict`` splits larger inputs.
    #[getter]
    fn max_images(&self) -> usize {
        self.inner.client_spec().max_images()
    }

    /// Levels one evaluation consumes.
    #[getter]
    fn depth(&self) -> usize {
        self.inner.plan().depth()
    }

    /// Whether the plan bootstraps inside the network.
    #[getter]
    fn bootstraps(&self) -> bool {
        self.inner.refresh().is_some()
    }

    /// Why ``mode="auto"`` chose this packing (``None`` when the packing was asked for).
    #[getter]
    fn choice(&self) -> Option<String> {
        self.inner.choice().map(str::to_string)
    }

    /// The parameters: ``log_n``, ``n``, ``slots``, ``levels``, ``input_level``, ``log_qp``,
    /// ``log_scale``, ``dnum``, ``security`` (achieved on the generated primes) and
    /// ``security_requested``.
    #[getter]
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        convert::params_dict(py, self.inner.params(), self.inner.input_level())
    }

    /// Key sizes before any key exists: ``evaluation_keys`` (bytes as sent, seed-compressed),
    /// ``evaluation_keys_expanded`` (bytes as a server holds them expanded), ``key_count``,
    /// ``rotations``, ``relinearization``, ``bootstrapping``.
    #[getter]
    fn key_sizes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let req = self.inner.key_requirements();
        let r = self.inner.params().rlwe();
        let d = PyDict::new(py);
        d.set_item("evaluation_keys", req.key_bytes(r))?;
        d.set_item("evaluation_keys_expanded", req.expanded_key_bytes(r))?;
        d.set_item("key_count", req.key_count(r))?;
        d.set_item("rotations", req.rotations.len())?;
        d.set_item("relinearization", req.relin)?;
        d.set_item("bootstrapping", self.inner.refresh().is_some())?;
        Ok(d)
    }

    /// Memory the server needs at once: ``{"bytes": int, "what": str}``.
    #[getter]
    fn memory_estimate<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.inner.memory_estimate();
        let d = PyDict::new(py);
        d.set_item("bytes", m.bytes)?;
        d.set_item("what", m.what)?;
        Ok(d)
    }

    /// Estimated seconds of one image in single-image packing on this machine (unit costs
    /// measured now, about 0.1 s): a dict with ``total_s``, ``linear_s``, ``encode_s``,
    /// ``activation_s``, ``bootstraps``, ``bootstrap_s``, ``key_switches``; ``None`` in batch
    /// packing.
    fn time_estimate<'py>(&self, py: Python<'py>) -> Result<Option<Bound<'py, PyDict>>, Error> {
        let (c, be) = (&self.inner, &self.be);
        let est = py.detach(|| -> Result<_, Error> {
            let units = UnitCosts::calibrate(be, c.params())?;
            Ok(c.time_estimate(&units)?)
        })?;
        let Some(e) = est else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("total_s", e.total_s())?;
        d.set_item("linear_s", e.linear_s)?;
        d.set_item("encode_s", e.encode_s)?;
        d.set_item("activation_s", e.activation_s)?;
        d.set_item("bootstraps", e.bootstraps)?;
        d.set_item("bootstrap_s", e.bootstrap_s)?;
        d.set_item("key_switches", e.key_switches)?;
        Ok(Some(d))
    }

    /// The report ``hecnn compile`` prints: plan, parameters, operation counts, keys.
    fn report(&self) -> Result<String, Error> {
        Ok(self.inner.report()?)
    }

    /// The compiled model's bytes (format version, checksum): ``hecnn`` CLI's ``.hecnn``.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>, Error> {
        let bytes = py.detach(|| self.inner.to_bytes())?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Reads a compiled model (checksum, version, the plan rebuilt from its record, the
    /// parameters' security checked); ``threads`` sizes its worker pool (0: every core).
    #[staticmethod]
    #[pyo3(signature = (data, threads = 0))]
    fn from_bytes(py: Python<'_>, data: &[u8], threads: usize) -> Result<Self, Error> {
        let c = py.detach(|| CompiledModel::from_bytes(data))?;
        Ok(Self::new(c, convert::backend(threads)?))
    }

    /// Pickling: the model's bytes (:meth:`to_bytes`), read back by :meth:`from_bytes` (so
    /// a compiled model travels to ``multiprocessing`` workers and caches).
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
        py: Python<'py>,
    ) -> Result<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,)), Error> {
        let from_bytes = slf.get_type().getattr("from_bytes")?;
        Ok((from_bytes, (slf.get().to_bytes(py)?,)))
    }

    /// Writes the compiled model to ``path`` (atomically).
    fn save(&self, py: Python<'_>, path: PathBuf) -> Result<(), Error> {
        Ok(py.detach(|| self.inner.save(&path))?)
    }

    /// Reads a compiled model from ``path`` (as :meth:`from_bytes`).
    #[staticmethod]
    #[pyo3(signature = (path, threads = 0))]
    fn load(py: Python<'_>, path: PathBuf, threads: usize) -> Result<Self, Error> {
        let c = py.detach(|| {
            CompiledModel::from_bytes(&read_bounded(&path, compile::MAX_COMPILED_BYTES)?)
        })?;
        Ok(Self::new(c, convert::backend(threads)?))
    }

    /// What a client needs of this model (parameters, layouts, key requirements; no
    /// weights).
    fn client_spec(&self) -> crate::client::PyClientSpec {
        crate::client::PyClientSpec {
            inner: self.inner.client_spec(),
        }
    }

    /// Logits of ``x`` (``(C, H, W)`` or ``(N, C, H, W)``; any numeric dtype) as a
    /// ``float64`` array ``(N, output_size)`` (or ``(output_size,)`` for one image):
    ///
    /// * ``fhe="disable"``: the cleartext ``float64`` model (the reference);
    /// * ``fhe="simulate"``: the plan without keys on the packed cleartext scheme (the
    ///   levels and scales CKKS would have, bootstrapping's error modelled);
    /// * ``fhe="execute"``: encrypted: keys made once per compiled model (:meth:`keygen`),
    ///   encrypt, run, decrypt, in chunks of :attr:`max_images`.
    ///
    /// ``progress(stage, done, total)`` is called as the work advances (``"keygen"``,
    /// ``"encrypt"``, ``"run"``, ``"decrypt"``, ``"simulate"``, ``"disable"``). The GIL is
    /// released meanwhile.
    #[pyo3(signature = (x, fhe = "disable", progress = None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: Images<'py>,
        fhe: &str,
        progress: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyAny>, Error> {
        let (images, single) = convert::images(&x, self.inner.model().input_shape)?;
        let mut progress = Progress::new(progress);
        let rows = match fhe {
            "disable" => py.detach(|| {
                let r = self.clear(&images, &mut progress);
                progress.finish(r)
            })?,
            "simulate" => py.detach(|| {
                let r = self.simulated(&images, &mut progress).map(|(l, _)| l);
                progress.finish(r)
            })?,
            "execute" => py.detach(|| {
                let r = self.encrypted(&images, &mut progress);
                progress.finish(r)
            })?,
            other => {
                return Err(Error::usage(
                    "fhe",
                    other,
                    "\"disable\", \"simulate\" or \"execute\"",
                ));
            }
        };
        let out = convert::logits(py, rows, self.output_size())?;
        Ok(if single {
            out.reshape([self.output_size()])?.into_any()
        } else {
            out.into_any()
        })
    }

    /// Runs the plan on ``x`` without keys (as ``predict(fhe="simulate")``) and returns
    /// ``(logits, headroom_bits)``: the logits ``(N, output_size)`` and the smallest
    /// headroom, in bits, of any value below the modulus at its level.
    #[pyo3(signature = (x, progress = None))]
    fn simulate<'py>(
        &self,
        py: Python<'py>,
        x: Images<'py>,
        progress: Option<Py<PyAny>>,
    ) -> Result<(Bound<'py, PyArray2<f64>>, f64), Error> {
        let (images, _) = convert::images(&x, self.inner.model().input_shape)?;
        let mut progress = Progress::new(progress);
        let (rows, headroom) = py.detach(|| {
            let r = self.simulated(&images, &mut progress);
            progress.finish(r)
        })?;
        let out: Bound<'py, PyArray2<f64>> = convert::logits(py, rows, self.output_size())?;
        Ok((out, headroom))
    }

    /// Checks the plan's value ranges on ``x`` without keys (what ``hecnn compile
    /// --calibrate`` does): a dict with ``fits``, ``images``, ``agree`` (batch packing:
    /// predictions as the cleartext model's), ``headroom_bits``, ``min_headroom_bits``,
    /// ``bound``, ``largest``, ``refreshed`` and ``diverged``.
    fn calibrate<'py>(&self, py: Python<'py>, x: Images<'py>) -> Result<Bound<'py, PyDict>, Error> {
        let (images, _) = convert::images(&x, self.inner.model().input_shape)?;
        let cal = py.detach(|| self.inner.calibrate(&images))?;
        let d = PyDict::new(py);
        d.set_item("fits", cal.fits())?;
        d.set_item("images", cal.images)?;
        d.set_item("agree", cal.agree)?;
        d.set_item("headroom_bits", cal.headroom_bits)?;
        d.set_item("min_headroom_bits", cal.min_headroom_bits)?;
        d.set_item("bound", cal.bound)?;
        d.set_item("largest", cal.largest)?;
        d.set_item("refreshed", cal.refreshed)?;
        d.set_item("diverged", cal.diverged)?;
        Ok(d)
    }

    /// Makes the keys and the server ``predict(fhe="execute")`` uses (done on its first
    /// call otherwise); ``force`` makes new ones. For separate client and server roles use
    /// :class:`Client` and :class:`Server`.
    #[pyo3(signature = (force = false, progress = None))]
    fn keygen(
        &self,
        py: Python<'_>,
        force: bool,
        progress: Option<Py<PyAny>>,
    ) -> Result<(), Error> {
        let mut progress = Progress::new(progress);
        py.detach(|| {
            let r = self.session(&mut progress, force).map(|_| ());
            progress.finish(r)
        })
    }

    fn __repr__(&self) -> String {
        let r = self.inner.params().rlwe();
        format!(
            "<hecnn.CompiledModel '{}': {} packing, input {:?}, N = 2^{}, {} levels, {}>",
            self.inner.name(),
            self.packing(),
            self.inner.model().input_shape,
            r.log_n(),
            r.max_level(),
            hecnn_rlwe::security::achieved_level(r.log_n(), r.log_qp())
                .map_or_else(|| "INSECURE".to_string(), |l| l.to_string())
        )
    }
}

impl PyCompiledModel {
    /// The cleartext model's logits.
    fn clear(&self, images: &[Tensor], progress: &mut Progress) -> Result<Vec<Vec<f64>>, Error> {
        let model = self.inner.model();
        let mut rows = Vec::with_capacity(images.len());
        for (i, image) in images.iter().enumerate() {
            rows.push(exec::run(model, image)?.data().to_vec());
            progress.report("disable", i + 1, images.len());
        }
        Ok(rows)
    }

    /// The simulated plan's logits and the smallest headroom.
    fn simulated(
        &self,
        images: &[Tensor],
        progress: &mut Progress,
    ) -> Result<(Vec<Vec<f64>>, f64), Error> {
        let mut rows = Vec::with_capacity(images.len());
        let mut headroom = f64::INFINITY;
        if images.is_empty() {
            return Ok((rows, headroom));
        }
        let sim = self.inner.simulator()?;
        for chunk in images.chunks(self.chunk()) {
            let s = sim.run(chunk)?;
            rows.extend(s.logits);
            headroom = headroom.min(s.headroom_bits);
            progress.report("simulate", rows.len(), images.len());
        }
        Ok((rows, headroom))
    }

    /// Encrypted logits: keygen once, then encrypt, run and decrypt chunk by chunk.
    fn encrypted(
        &self,
        images: &[Tensor],
        progress: &mut Progress,
    ) -> Result<Vec<Vec<f64>>, Error> {
        let mut rows = Vec::with_capacity(images.len());
        if images.is_empty() {
            return Ok(rows);
        }
        let s = self.session(progress, false)?;
        let mut rng = Prng::from_entropy()?;
        for chunk in images.chunks(self.chunk()) {
            progress.report("encrypt", rows.len(), images.len());
            let inputs = s.client.encrypt(&s.public, chunk, &mut rng)?;
            let out = s.server.run(inputs, |done, total| {
                progress.report("run", done, total);
            })?;
            progress.report("decrypt", rows.len(), images.len());
            rows.extend(s.client.decrypt(&s.secret, &out)?);
        }
        progress.report("decrypt", rows.len(), images.len());
        Ok(rows)
    }
}
