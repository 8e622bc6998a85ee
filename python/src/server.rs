//! The inference server's side: a compiled model's plan and one client's evaluation keys;
//! no secret key.

use std::sync::atomic::{AtomicBool, Ordering};

use hecnn_nn::compile::{ClientSpec, CompiledModel, ImagesKind, Server};
use hecnn_ring::CpuBackend;
use hecnn_rlwe::{EncapsulationKeys, EvaluationKeys};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::client::{PyEncryptedImages, type_name};
use crate::convert::{self, Progress};
use crate::errors::Error;
use crate::model::PyCompiledModel;

/// An inference server for one client's key pair: the compiled model's plan and the
/// client's evaluation keys (bytes from :meth:`Client.evaluation_keys`, and
/// :meth:`Client.bootstrap_keys` for a plan that bootstraps). It never holds a secret key.
///
/// ``Server(model, evaluation_keys, bootstrap_keys=None, threads=0)``: ``model`` is a
/// :class:`CompiledModel` or its bytes. Building it checks the keys against the plan and
/// encodes the plan's weights (single-image packing); the GIL is released meanwhile.
#[pyclass(module = "hecnn._hecnn", name = "Server", frozen)]
pub struct PyServer {
    server: Server<CpuBackend>,
    spec: ClientSpec,
    be: CpuBackend,
}

impl PyServer {
    /// Runs `images`, reporting to `progress` and stopping once it has raised.
    fn run_reporting(
        &self,
        images: hecnn_nn::compile::EncryptedImages<CpuBackend>,
        progress: &mut Progress,
    ) -> Result<hecnn_nn::compile::EncryptedImages<CpuBackend>, Error> {
        let stop = AtomicBool::new(false);
        let out = self.server.run_unless(
            images,
            |d, t| {
                progress.report("run", d, t);
                if progress.stopped() {
                    stop.store(true, Ordering::Relaxed);
                }
            },
            |_, _, _| {},
            &|| stop.load(Ordering::Relaxed),
        )?;
        Ok(out)
    }
}

#[pymethods]
impl PyServer {
    #[new]
    #[pyo3(signature = (model, evaluation_keys, bootstrap_keys = None, threads = 0))]
    fn new(
        py: Python<'_>,
        model: &Bound<'_, PyAny>,
        evaluation_keys: &[u8],
        bootstrap_keys: Option<&[u8]>,
        threads: usize,
    ) -> Result<Self, Error> {
        let be = convert::backend(threads)?;
        let plan = if let Ok(m) = model.cast::<PyCompiledModel>() {
            m.get().inner.server_plan()
        } else if let Ok(b) = model.cast::<PyBytes>() {
            let bytes = b.as_bytes().to_vec();
            py.detach(|| CompiledModel::from_bytes(&bytes))?
                .server_plan()
        } else {
            return Err(Error::usage(
                "model",
                type_name(model),
                "a CompiledModel or its bytes",
            ));
        };
        let spec = plan.client_spec().clone();
        let server = py.detach(|| -> Result<_, Error> {
            let params = plan.params().rlwe();
            // The keys the plan asks for and no more, held as the plan holds them.
            let max_keys = plan.key_requirements().key_count(params);
            let evk = EvaluationKeys::from_bytes_with(
                &be,
                params,
                evaluation_keys,
                max_keys,
                plan.key_storage(),
            )?;
            Ok(match (plan.refresh().is_some(), bootstrap_keys) {
                (true, Some(b)) => {
                    let encaps =
                        EncapsulationKeys::from_bytes_with(&be, params, b, plan.key_storage())?;
                    Server::bootstrapping(plan, evk, encaps, be.clone())?
                }
                (false, Some(_)) => {
                    return Err(Error::usage(
                        "bootstrap_keys",
                        "bootstrapping keys",
                        "None: this plan does not bootstrap",
                    ));
                }
                // Without them, the library names what is missing.
                (_, None) => Server::new(plan, evk, be.clone())?,
            })
        })?;
        Ok(Self { server, spec, be })
    }

    /// The key-pair id (hex) this server evaluates for.
    #[getter]
    fn key_id(&self) -> String {
        convert::hex(&self.server.key_id())
    }

    /// The fingerprint (hex) of the compiled model it runs.
    #[getter]
    fn fingerprint(&self) -> String {
        convert::hex(&self.server.plan().model_fingerprint())
    }

    /// The client spec that goes with the plan (what a server hands its clients).
    fn client_spec(&self) -> crate::client::PyClientSpec {
        crate::client::PyClientSpec {
            inner: self.spec.clone(),
        }
    }

    /// Evaluates the plan on a client's encrypted inputs (:class:`EncryptedImages`, which
    /// this consumes, or their bytes) and returns the encrypted outputs. ``progress(stage,
    /// done, total)`` is called with ``stage="run"`` after every layer (batch packing) or
    /// image (single-image packing); an exception it raises (or Ctrl-C) stops the run at
    /// the next layer or image and is raised (the inputs are consumed). The GIL is released
    /// meanwhile.
    #[pyo3(signature = (inputs, progress = None))]
    fn run(
        &self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        progress: Option<Py<PyAny>>,
    ) -> Result<PyEncryptedImages, Error> {
        let mut progress = Progress::new(progress);
        let out = if let Ok(e) = inputs.cast::<PyEncryptedImages>() {
            let e = e.get();
            py.detach(|| {
                // Inputs the server refuses (another key pair, model or packing) stay with
                // the caller: checked before they are taken.
                e.with(|images| Ok(self.server.check_inputs(images)?))?;
                let r = e
                    .take()
                    .and_then(|images| self.run_reporting(images, &mut progress));
                progress.finish(r)
            })?
        } else if let Ok(b) = inputs.cast::<PyBytes>() {
            let bytes = b.as_bytes().to_vec();
            py.detach(|| {
                let r =
                    PyEncryptedImages::read(&bytes, &self.spec, &self.be, Some(ImagesKind::Inputs))
                        .and_then(|images| self.run_reporting(images, &mut progress));
                progress.finish(r)
            })?
        } else {
            return Err(Error::usage(
                "inputs",
                type_name(inputs),
                "EncryptedImages or their bytes",
            ));
        };
        Ok(PyEncryptedImages::new(
            out,
            self.spec.clone(),
            self.be.clone(),
        ))
    }

    fn __repr__(&self) -> String {
        format!(
            "<hecnn.Server '{}': key pair {}>",
            self.spec.name(),
            &self.key_id()[..12]
        )
    }
}
