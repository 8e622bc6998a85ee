//! The data owner's side: the client spec, keys, encryption and decryption, and the
//! encrypted images that travel between client and server.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hecnn_nn::compile::{
    Client, ClientSpec, EncryptedImages, ImagesHeader, ImagesKind, MAX_IMAGES_BYTES,
    MAX_SPEC_BYTES, read_bounded,
};
use hecnn_nn::{NnError, data};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{EncapsulationKeys, EvaluationKeys, KeyStorage, PublicKey, SecretKey};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::convert::{self, Images, Progress};
use crate::errors::Error;
use crate::model::PyCompiledModel;

/// What a client needs of a compiled model: parameters, input and output layouts and the
/// exact evaluation keys the server needs. No weights: a data owner can hold this alone.
#[pyclass(module = "hecnn._hecnn", name = "ClientSpec", frozen)]
pub struct PyClientSpec {
    pub(crate) inner: ClientSpec,
}

/// A client spec from a :class:`ClientSpec`, a :class:`CompiledModel` or a spec's bytes.
pub(crate) fn spec_of(obj: &Bound<'_, PyAny>) -> Result<ClientSpec, Error> {
    if let Ok(s) = obj.cast::<PyClientSpec>() {
        return Ok(s.get().inner.clone());
    }
    if let Ok(m) = obj.cast::<PyCompiledModel>() {
        return Ok(m.get().inner.client_spec());
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        let bytes = b.as_bytes().to_vec();
        return Ok(obj.py().detach(|| ClientSpec::from_bytes(&bytes))?);
    }
    Err(Error::usage(
        "spec",
        type_name(obj),
        "a ClientSpec, a CompiledModel or a client spec's bytes",
    ))
}

/// The name of `obj`'s type, for messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

#[pymethods]
impl PyClientSpec {
    /// The model's name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// The fingerprint (hex) of the compiled model this spec belongs to.
    #[getter]
    fn fingerprint(&self) -> String {
        convert::hex(&self.inner.model_fingerprint())
    }

    /// ``"batch"`` or ``"single"``.
    #[getter]
    fn packing(&self) -> &'static str {
        convert::packing_name(self.inner.packing())
    }

    /// The shape ``(C, H, W)`` of one input image.
    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        let [c, h, w] = self.inner.input_shape();
        (c, h, w)
    }

    /// Logits per image.
    #[getter]
    fn output_size(&self) -> usize {
        convert::outputs(&self.inner)
    }

    /// Most images one set of encrypted images holds.
    #[getter]
    fn max_images(&self) -> usize {
        self.inner.max_images()
    }

    /// Size in bytes of the evaluation keys (seed-compressed, as sent), before they exist.
    #[getter]
    fn evaluation_key_bytes(&self) -> usize {
        self.inner.evaluation_key_bytes()
    }

    /// Whether the plan bootstraps (the client then also makes bootstrapping keys).
    #[getter]
    fn bootstraps(&self) -> bool {
        self.inner.encapsulation_weight().is_some()
    }

    /// The parameters (as :attr:`CompiledModel.parameters`).
    #[getter]
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        convert::params_dict(py, self.inner.params(), self.inner.input_level())
    }

    /// The spec's bytes (format version, checksum), as ``hecnn compile --client-spec``
    /// writes them.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>, Error> {
        Ok(PyBytes::new(py, &self.inner.to_bytes()?))
    }

    /// Reads a spec (checksum, parameters' security, layouts against the parameters).
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> Result<Self, Error> {
        Ok(Self {
            inner: py.detach(|| ClientSpec::from_bytes(data))?,
        })
    }

    /// Pickling: the spec's bytes, read back by :meth:`from_bytes`.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
        py: Python<'py>,
    ) -> Result<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,)), Error> {
        let from_bytes = slf.get_type().getattr("from_bytes")?;
        Ok((from_bytes, (slf.get().to_bytes(py)?,)))
    }

    /// Writes the spec to ``path`` (atomically).
    fn save(&self, path: PathBuf) -> Result<(), Error> {
        Ok(data::write_atomic(&path, &self.inner.to_bytes()?)?)
    }

    /// Reads a spec from ``path``.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> Result<Self, Error> {
        let inner = py.detach(|| ClientSpec::from_bytes(&read_bounded(&path, MAX_SPEC_BYTES)?))?;
        Ok(Self { inner })
    }

    fn __repr__(&self) -> String {
        format!(
            "<hecnn.ClientSpec '{}': {} packing, input {:?}, model {}>",
            self.inner.name(),
            self.packing(),
            self.inner.input_shape(),
            &self.fingerprint()[..12]
        )
    }
}

/// A client's keys.
struct Keys {
    secret: SecretKey,
    public: PublicKey<CpuBackend>,
    /// Held from keygen until the client goes away (absent for keys loaded from bytes).
    evaluation: Option<EvaluationKeys<CpuBackend>>,
    encapsulation: Option<EncapsulationKeys<CpuBackend>>,
}

/// The data owner: makes keys, encrypts images, decrypts results. The secret key never
/// leaves it unless asked for (:meth:`secret_key`, :meth:`save_keys`).
///
/// ``Client(spec, threads=0)`` takes a :class:`ClientSpec`, a :class:`CompiledModel` or a
/// spec's bytes.
#[pyclass(module = "hecnn._hecnn", name = "Client", frozen)]
pub struct PyClient {
    client: Client<CpuBackend>,
    keys: Mutex<Option<Keys>>,
}

impl PyClient {
    fn with_keys<T>(&self, f: impl FnOnce(&Keys) -> Result<T, Error>) -> Result<T, Error> {
        let guard = self
            .keys
            .lock()
            .map_err(|_| NnError::Internal("a key operation panicked".into()))?;
        match &*guard {
            Some(k) => f(k),
            None => Err(Error::usage(
                "client",
                "a client without keys",
                "keys: call keygen() or load_keys() first",
            )),
        }
    }

    fn set_keys(&self, keys: Keys, force: bool) -> Result<(), Error> {
        let mut guard = self
            .keys
            .lock()
            .map_err(|_| NnError::Internal("a key operation panicked".into()))?;
        if guard.is_some() && !force {
            return Err(keys_held());
        }
        *guard = Some(keys);
        Ok(())
    }

    fn params(&self) -> &std::sync::Arc<hecnn_rlwe::Params> {
        self.client.spec().params().rlwe()
    }
}

#[pymethods]
impl PyClient {
    #[new]
    #[pyo3(signature = (spec, threads = 0))]
    fn new(spec: &Bound<'_, PyAny>, threads: usize) -> Result<Self, Error> {
        let spec = spec_of(spec)?;
        Ok(Self {
            client: Client::new(spec, convert::backend(threads)?)?,
            keys: Mutex::new(None),
        })
    }

    /// The client spec.
    #[getter]
    fn spec(&self) -> PyClientSpec {
        PyClientSpec {
            inner: self.client.spec().clone(),
        }
    }

    /// Whether the client holds keys.
    #[getter]
    fn has_keys(&self) -> bool {
        self.keys.lock().is_ok_and(|k| k.is_some())
    }

    /// The key-pair id (hex) of the keys held; ``None`` without keys.
    #[getter]
    fn key_id(&self) -> Option<String> {
        self.with_keys(|k| Ok(convert::hex(&k.secret.key_id())))
            .ok()
    }

    /// Generates a secret key, its public key and exactly the evaluation keys the plan
    /// needs (and bootstrapping's keys when it bootstraps). Refuses to replace keys already
    /// held unless ``force``. The GIL is released meanwhile.
    #[pyo3(signature = (force = false, progress = None))]
    fn keygen(
        &self,
        py: Python<'_>,
        force: bool,
        progress: Option<Py<PyAny>>,
    ) -> Result<(), Error> {
        if self.has_keys() && !force {
            return Err(keys_held());
        }
        let mut progress = Progress::new(progress);
        py.detach(|| {
            progress.report("keygen", 0, 1);
            let r = (|| -> Result<Keys, Error> {
                // A plan that bootstraps holds its keys compact (seed-expanded on use).
                let storage = if self.client.spec().encapsulation_weight().is_some() {
                    KeyStorage::Compact
                } else {
                    KeyStorage::Expanded
                };
                let keys = self
                    .client
                    .keygen_with(&mut Prng::from_entropy()?, storage)?;
                Ok(Keys {
                    secret: keys.secret,
                    public: keys.public,
                    evaluation: Some(keys.evaluation),
                    encapsulation: keys.encapsulation,
                })
            })();
            progress.report("keygen", 1, 1);
            // A callback that raised stops here: the keys are dropped, not half-installed,
            // so a retry starts clean.
            let keys = progress.finish(r)?;
            self.set_keys(keys, force)
        })
    }

    /// The secret key's bytes. Keep them private: they decrypt everything encrypted under
    /// this key pair.
    fn secret_key<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>, Error> {
        let bytes = self.with_keys(|k| Ok(k.secret.to_secret_bytes()))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The public key's bytes (encryption only).
    fn public_key<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>, Error> {
        let be = self.client.backend();
        let bytes = self.with_keys(|k| Ok(k.public.to_bytes(be)?))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The evaluation keys' bytes (seed-compressed): what the server needs, with no secret.
    /// Available after :meth:`keygen` (not for keys loaded with :meth:`load_keys`).
    fn evaluation_keys<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>, Error> {
        let be = self.client.backend();
        let bytes = py.detach(|| {
            self.with_keys(|k| match &k.evaluation {
                Some(e) => Ok(e.to_bytes(be)?),
                None => Err(Error::usage(
                    "client",
                    "keys loaded without their evaluation keys",
                    "keys made by keygen() (or the eval.keys file saved with them)",
                )),
            })
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Bootstrapping's encapsulation keys' bytes when the plan bootstraps (the server needs
    /// them with the evaluation keys); ``None`` otherwise.
    fn bootstrap_keys<'py>(&self, py: Python<'py>) -> Result<Option<Bound<'py, PyBytes>>, Error> {
        let be = self.client.backend();
        let bytes = py.detach(|| {
            self.with_keys(|k| {
                k.encapsulation
                    .as_ref()
                    .map(|e| e.to_bytes(be))
                    .transpose()
                    .map_err(Error::from)
            })
        })?;
        Ok(bytes.map(|b| PyBytes::new(py, &b)))
    }

    /// Loads keys from bytes: the secret key and, optionally, its public key (otherwise a
    /// new public key of the same key pair is made). Refuses to replace keys held unless
    /// ``force``.
    #[pyo3(signature = (secret_key, public_key = None, force = false))]
    fn load_keys(
        &self,
        py: Python<'_>,
        secret_key: &[u8],
        public_key: Option<&[u8]>,
        force: bool,
    ) -> Result<(), Error> {
        let be = self.client.backend();
        py.detach(|| {
            let secret = SecretKey::from_secret_bytes(self.params(), secret_key)?;
            let public = match public_key {
                Some(b) => PublicKey::from_bytes(be, self.params(), b)?,
                None => secret.public_key(be, &mut Prng::from_entropy()?)?,
            };
            if public.key_id() != secret.key_id() {
                return Err(Error::Nn(NnError::Mismatch {
                    what: "key pair",
                    expected: convert::hex(&secret.key_id()),
                    found: convert::hex(&public.key_id()),
                }));
            }
            self.set_keys(
                Keys {
                    secret,
                    public,
                    evaluation: None,
                    encapsulation: None,
                },
                force,
            )
        })
    }

    /// Writes the keys into ``directory`` under the names the ``hecnn`` CLI uses:
    /// ``secret.key`` (readable by the owner only), ``public.key``, ``eval.keys`` (after
    /// :meth:`keygen`) and ``bootstrap.keys`` (when the plan bootstraps). Refuses to replace
    /// an existing ``secret.key`` unless ``force``.
    #[pyo3(signature = (directory, force = false))]
    fn save_keys(&self, py: Python<'_>, directory: PathBuf, force: bool) -> Result<(), Error> {
        let be = self.client.backend();
        py.detach(|| {
            let secret = directory.join("secret.key");
            if !force && std::fs::symlink_metadata(&secret).is_ok() {
                return Err(Error::usage(
                    "force",
                    format!("False with {} present", secret.display()),
                    "force=True to replace it (what it decrypts becomes unreadable)",
                ));
            }
            std::fs::create_dir_all(&directory).map_err(|e| NnError::io(&directory, e))?;
            self.with_keys(|k| {
                data::write_atomic_private(&secret, &k.secret.to_secret_bytes())?;
                data::write_atomic(&directory.join("public.key"), &k.public.to_bytes(be)?)?;
                if let Some(e) = &k.evaluation {
                    data::write_atomic(&directory.join("eval.keys"), &e.to_bytes(be)?)?;
                }
                let boot = directory.join("bootstrap.keys");
                match &k.encapsulation {
                    Some(e) => data::write_atomic(&boot, &e.to_bytes(be)?)?,
                    // Keys of another plan must not be mistaken for these.
                    None => match std::fs::remove_file(&boot) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(NnError::io(&boot, e).into());
                        }
                        _ => {}
                    },
                }
                Ok(())
            })
        })
    }

    /// Loads the keys :meth:`save_keys` (or ``hecnn keygen``) wrote in ``directory``:
    /// ``secret.key``, ``public.key`` and, when present, ``eval.keys`` and
    /// ``bootstrap.keys``.
    #[pyo3(signature = (directory, force = false))]
    fn load_key_dir(&self, py: Python<'_>, directory: PathBuf, force: bool) -> Result<(), Error> {
        let be = self.client.backend();
        py.detach(|| {
            let params = self.params();
            let read = |name: &str, limit: u64| -> Result<Option<Vec<u8>>, Error> {
                let path = directory.join(name);
                if !path.exists() {
                    return Ok(None);
                }
                Ok(Some(read_bounded(&path, limit)?))
            };
            let key_limit = (params.switching_key_bytes() as u64).saturating_mul(2) + 8192;
            let secret_bytes = read_bounded(&directory.join("secret.key"), key_limit)?;
            let secret = SecretKey::from_secret_bytes(params, &secret_bytes)?;
            let public = match read("public.key", key_limit)? {
                Some(b) => PublicKey::from_bytes(be, params, &b)?,
                None => secret.public_key(be, &mut Prng::from_entropy()?)?,
            };
            let req = self.client.spec().key_requirements();
            let max_keys = req.key_count(params);
            let storage = if self.client.spec().encapsulation_weight().is_some() {
                KeyStorage::Compact
            } else {
                KeyStorage::Expanded
            };
            let limit =
                (max_keys as u64).saturating_mul(params.switching_key_bytes() as u64 + 4096);
            let evaluation = read("eval.keys", limit)?
                .map(|b| EvaluationKeys::from_bytes_with(be, params, &b, max_keys, storage))
                .transpose()?;
            let encapsulation = read("bootstrap.keys", key_limit)?
                .map(|b| EncapsulationKeys::from_bytes_with(be, params, &b, storage))
                .transpose()?;
            let id = secret.key_id();
            let ids = [
                Some(public.key_id()),
                evaluation.as_ref().map(EvaluationKeys::key_id),
                encapsulation.as_ref().map(EncapsulationKeys::key_id),
            ];
            if let Some(other) = ids.into_iter().flatten().find(|k| *k != id) {
                return Err(Error::Nn(NnError::Mismatch {
                    what: "key pair",
                    expected: convert::hex(&id),
                    found: convert::hex(&other),
                }));
            }
            self.set_keys(
                Keys {
                    secret,
                    public,
                    evaluation,
                    encapsulation,
                },
                force,
            )
        })
    }

    /// Encrypts ``x`` (``(C, H, W)`` or ``(N, C, H, W)``, at most
    /// :attr:`ClientSpec.max_images` images) with the public key in the plan's input
    /// layout. The GIL is released meanwhile.
    fn encrypt<'py>(&self, py: Python<'py>, x: Images<'py>) -> Result<PyEncryptedImages, Error> {
        let spec = self.client.spec();
        let (images, _) = convert::images(&x, spec.input_shape())?;
        let enc = py.detach(|| {
            self.with_keys(|k| {
                Ok(self
                    .client
                    .encrypt(&k.public, &images, &mut Prng::from_entropy()?)?)
            })
        })?;
        Ok(PyEncryptedImages::new(
            enc,
            spec.clone(),
            self.client.backend().clone(),
        ))
    }

    /// Decrypts a server's outputs (:class:`EncryptedImages` or their bytes) into logits,
    /// a ``float64`` array ``(N, output_size)``. The GIL is released meanwhile.
    fn decrypt<'py>(
        &self,
        py: Python<'py>,
        outputs: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, numpy::PyArray2<f64>>, Error> {
        let spec = self.client.spec();
        let be = self.client.backend();
        let rows = if let Ok(e) = outputs.cast::<PyEncryptedImages>() {
            let e = e.get();
            py.detach(|| {
                e.with(|images| self.with_keys(|k| Ok(self.client.decrypt(&k.secret, images)?)))
            })?
        } else if let Ok(b) = outputs.cast::<PyBytes>() {
            let bytes = b.as_bytes().to_vec();
            py.detach(|| {
                let images = EncryptedImages::from_bytes(be, spec, ImagesKind::Outputs, &bytes)?;
                self.with_keys(|k| Ok(self.client.decrypt(&k.secret, &images)?))
            })?
        } else {
            return Err(Error::usage(
                "outputs",
                type_name(outputs),
                "EncryptedImages or their bytes",
            ));
        };
        convert::logits(py, rows, convert::outputs(spec))
    }

    fn __repr__(&self) -> String {
        format!(
            "<hecnn.Client '{}': {}>",
            self.client.spec().name(),
            self.key_id().map_or_else(
                || "no keys".to_string(),
                |k| format!("key pair {}", &k[..12])
            )
        )
    }
}

/// Keys are held and `force` was not given.
fn keys_held() -> Error {
    Error::usage(
        "force",
        "False with keys already held",
        "force=True to replace them (what they encrypted becomes unreadable)",
    )
}

/// Encrypted images, bound to a compiled model and a key pair: a client's inputs or a
/// server's outputs. Serialize with :meth:`to_bytes`; read with :meth:`from_bytes`.
///
/// :meth:`Server.run` moves the inputs into the evaluation (as the library does, so that a
/// batch's ciphertexts are never held twice): afterwards this object is *consumed*; call
/// :meth:`copy` or :meth:`to_bytes` first to keep them.
#[pyclass(module = "hecnn._hecnn", name = "EncryptedImages", frozen)]
pub struct PyEncryptedImages {
    inner: Mutex<Option<EncryptedImages<CpuBackend>>>,
    spec: ClientSpec,
    be: CpuBackend,
    head: ImagesHeader,
    ciphertexts: usize,
}

impl PyEncryptedImages {
    pub(crate) fn new(e: EncryptedImages<CpuBackend>, spec: ClientSpec, be: CpuBackend) -> Self {
        let head = ImagesHeader {
            kind: e.kind(),
            model: e.model_fingerprint(),
            key_id: e.key_id(),
            packing: e.packing(),
            images: e.images() as u64,
        };
        Self {
            ciphertexts: e.ciphertexts().len(),
            inner: Mutex::new(Some(e)),
            spec,
            be,
            head,
        }
    }

    /// Runs `f` on the images, unless consumed.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&EncryptedImages<CpuBackend>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let guard = self
            .inner
            .lock()
            .map_err(|_| NnError::Internal("an operation on encrypted images panicked".into()))?;
        match &*guard {
            Some(e) => f(e),
            None => Err(consumed()),
        }
    }

    /// Takes the images out (for a run), leaving this object consumed.
    pub(crate) fn take(&self) -> Result<EncryptedImages<CpuBackend>, Error> {
        self.inner
            .lock()
            .map_err(|_| NnError::Internal("an operation on encrypted images panicked".into()))?
            .take()
            .ok_or_else(consumed)
    }

    fn bytes(&self) -> Result<Vec<u8>, Error> {
        self.with(|e| Ok(e.to_bytes(&self.be, self.spec.params())?))
    }

    /// Reads encrypted images of `spec` (their kind from their header).
    pub(crate) fn read(
        bytes: &[u8],
        spec: &ClientSpec,
        be: &CpuBackend,
        kind: Option<ImagesKind>,
    ) -> Result<EncryptedImages<CpuBackend>, Error> {
        let kind = match kind {
            Some(k) => k,
            None => ImagesHeader::read(bytes)?.kind,
        };
        Ok(EncryptedImages::from_bytes(be, spec, kind, bytes)?)
    }
}

fn consumed() -> Error {
    Error::usage(
        "encrypted images",
        "consumed by Server.run",
        "images not yet run: keep them with copy() or to_bytes() before the run",
    )
}

#[pymethods]
impl PyEncryptedImages {
    /// ``"inputs"`` (a client's) or ``"outputs"`` (a server's).
    #[getter]
    fn kind(&self) -> &'static str {
        match self.head.kind {
            ImagesKind::Inputs => "inputs",
            ImagesKind::Outputs => "outputs",
        }
    }

    /// Number of images.
    #[getter]
    fn images(&self) -> u64 {
        self.head.images
    }

    /// Number of ciphertexts.
    #[getter]
    fn ciphertexts(&self) -> usize {
        self.ciphertexts
    }

    /// ``"batch"`` or ``"single"``.
    #[getter]
    fn packing(&self) -> &'static str {
        convert::packing_name(self.head.packing)
    }

    /// The fingerprint (hex) of the compiled model they belong to.
    #[getter]
    fn model_fingerprint(&self) -> String {
        convert::hex(&self.head.model)
    }

    /// The key-pair id (hex) they are encrypted under.
    #[getter]
    fn key_id(&self) -> String {
        convert::hex(&self.head.key_id)
    }

    /// Whether :meth:`Server.run` has consumed them.
    #[getter]
    fn consumed(&self) -> bool {
        self.inner.lock().is_ok_and(|g| g.is_none())
    }

    /// The bytes (format version, checksum; ``hecnn encrypt``'s and ``hecnn run``'s
    /// ``.ct`` files).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>, Error> {
        let bytes = py.detach(|| self.bytes())?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Reads encrypted images for the model of ``spec`` (a :class:`ClientSpec`, a
    /// :class:`CompiledModel` or a spec's bytes): the checksum, model, packing and count are
    /// checked before any ciphertext is decoded, then every ciphertext.
    #[staticmethod]
    #[pyo3(signature = (data, spec, threads = 0))]
    fn from_bytes(
        py: Python<'_>,
        data: &[u8],
        spec: &Bound<'_, PyAny>,
        threads: usize,
    ) -> Result<Self, Error> {
        let spec = spec_of(spec)?;
        let be = convert::backend(threads)?;
        let e = py.detach(|| Self::read(data, &spec, &be, None))?;
        Ok(Self::new(e, spec, be))
    }

    /// Writes them to ``path`` (atomically).
    fn save(&self, py: Python<'_>, path: PathBuf) -> Result<(), Error> {
        py.detach(|| Ok(data::write_atomic(&path, &self.bytes()?)?))
    }

    /// Reads them from ``path`` (as :meth:`from_bytes`).
    #[staticmethod]
    #[pyo3(signature = (path, spec, threads = 0))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        spec: &Bound<'_, PyAny>,
        threads: usize,
    ) -> Result<Self, Error> {
        let spec = spec_of(spec)?;
        let be = convert::backend(threads)?;
        let e = py.detach(|| {
            let bytes = read_bounded(Path::new(&path), MAX_IMAGES_BYTES)?;
            Self::read(&bytes, &spec, &be, None)
        })?;
        Ok(Self::new(e, spec, be))
    }

    /// A copy (through their bytes), for images to run more than once.
    fn copy(&self, py: Python<'_>) -> Result<Self, Error> {
        let e = py.detach(|| {
            let bytes = self.bytes()?;
            Self::read(&bytes, &self.spec, &self.be, Some(self.head.kind))
        })?;
        Ok(Self::new(e, self.spec.clone(), self.be.clone()))
    }

    fn __repr__(&self) -> String {
        format!(
            "<hecnn.EncryptedImages: {} of {} image(s), {} ciphertext(s), {} packing{}>",
            self.kind(),
            self.head.images,
            self.ciphertexts,
            self.packing(),
            if self.consumed() { ", consumed" } else { "" }
        )
    }
}
