//! Protected models (Gomez et al.): the model owner encrypts a model's classifier under its
//! own key and signs it; an edge node verifies the signature, runs the encrypted classifier
//! on its images and returns results only the owner can decrypt.
//!
//! The artifacts are the command-line tool's (`hecnn protect`, `hecnn edge run`, `hecnn
//! owner decrypt`): a signed `model.hecnnp`, `owner.pub`, `public.key`, `eval.keys` for the
//! edge, `secret.key` and `owner-signing.key` for the owner only, and one `.hcno` file per
//! result.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hecnn_ckks::{Decryptor, Evaluator, Flooding};
use hecnn_deploy::signing::{self, OwnerKey, SigningKey};
use hecnn_nn::compile::read_bounded;
use hecnn_nn::protect::{
    self, FeatureInput, MAX_EDGE_KEYS, OutputFlooding, ProtectPlan, ProtectedModel,
    ProtectedOutput, Scope,
};
use hecnn_nn::{NnError, data, onnx};
use hecnn_ring::{Backend, CpuBackend, Prng};
use hecnn_rlwe::{EvaluationKeys, PublicKey, SecretKey};
use numpy::ndarray::Array1;
use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::client::type_name;
use crate::convert::{self, Images, Progress};
use crate::errors::Error;

/// The file names `hecnn protect` writes and `hecnn edge run` / `owner decrypt` read.
const MODEL_FILE: &str = "model.hecnnp";
const OWNER_KEY_FILE: &str = "owner.pub";
const SIGNING_KEY_FILE: &str = "owner-signing.key";
const SECRET_FILE: &str = "secret.key";
const PUBLIC_FILE: &str = "public.key";
const EVAL_FILE: &str = "eval.keys";

/// Largest artifact read from a file (what the command line accepts).
const MAX_FILE: u64 = 64 << 30;

/// A signing error as the binding's: a signature that does not hold (or a malformed key)
/// is a [`Error::Signature`]; reading a key file, the library error it is.
fn signature(e: hecnn_deploy::DeployError) -> Error {
    use hecnn_deploy::DeployError as D;
    match e {
        D::Nn(e) => Error::Nn(e),
        D::Io { path, source } => Error::Nn(NnError::io(Path::new(&path), source)),
        other => Error::Signature(other.to_string()),
    }
}

/// The scope of `layers`: `"last"`, `"classifier"` or `"network"`.
fn scope(layers: &str) -> Result<Scope, Error> {
    match layers {
        "last" => Ok(Scope::LastLayer),
        "classifier" => Ok(Scope::Classifier),
        "network" => Ok(Scope::Network),
        other => Err(Error::usage(
            "layers",
            format!("{other:?}"),
            "\"last\", \"classifier\" or \"network\"",
        )),
    }
}

/// The owner's public signing key from its text (`owner.pub`'s content) or a path to it.
fn owner_key_of(obj: &Bound<'_, PyAny>) -> Result<OwnerKey, Error> {
    if let Ok(text) = obj.extract::<String>()
        && text.trim_start().starts_with("hecnn-owner")
    {
        return OwnerKey::from_text(&text).map_err(signature);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        let text = std::str::from_utf8(b.as_bytes()).map_err(|_| {
            Error::usage("owner_key", "bytes that are not text", "owner.pub's text")
        })?;
        return OwnerKey::from_text(text).map_err(signature);
    }
    if let Ok(p) = obj.extract::<PathBuf>() {
        return OwnerKey::read(&p).map_err(signature);
    }
    Err(Error::usage(
        "owner_key",
        type_name(obj),
        "owner.pub's text, its bytes or its path",
    ))
}

/// The protected part's parameters as a dict (ring degree, levels, log QP, security).
fn parameters<'py>(
    py: Python<'py>,
    model: &ProtectedModel<CpuBackend>,
) -> PyResult<Bound<'py, PyDict>> {
    let params = model.params();
    convert::params_dict(py, params, params.max_level())
}

/// Describes a protected model: its scope, features, outputs and ciphertexts.
fn describe(model: &ProtectedModel<CpuBackend>) -> String {
    let spec = model.spec();
    format!(
        "{} ({} features → {} outputs, {} layer(s) encrypted, {} ciphertexts, N = 2^{})",
        spec.scope.name(),
        spec.features(),
        spec.outputs(),
        spec.layers.len(),
        model.ciphertext_count(),
        model.params().rlwe().log_n()
    )
}

/// Protects an ONNX model (path or bytes): the owner's side of Gomez et al.'s deployment.
///
/// Imports the model, encrypts the protected layers (``layers``: ``"last"``, the last dense
/// layer; ``"classifier"``, the dense layers and polynomial activations after the features;
/// ``"network"``, an HE-friendly network whole) under a fresh secret key at ``security``,
/// and signs the result with ``signing_key`` (PKCS#8 bytes of an Ed25519 key; a new one
/// when ``None``). The GIL is released meanwhile.
#[pyfunction]
#[pyo3(signature = (source, layers = "classifier", security = None, signing_key = None, threads = 0, progress = None))]
pub fn protect_onnx(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    layers: &str,
    security: Option<&Bound<'_, PyAny>>,
    signing_key: Option<&[u8]>,
    threads: usize,
    progress: Option<Py<PyAny>>,
) -> Result<PyOwner, Error> {
    let scope = scope(layers)?;
    let security = match security {
        Some(s) => crate::model::security_level(s)?,
        None => hecnn_rlwe::SecurityLevel::Bits128,
    };
    let onnx_bytes = if let Ok(b) = source.cast::<PyBytes>() {
        b.as_bytes().to_vec()
    } else if let Ok(p) = source.extract::<PathBuf>() {
        py.detach(|| read_bounded(&p, MAX_FILE))?
    } else {
        return Err(Error::usage(
            "model",
            type_name(source),
            "an ONNX file's path or bytes",
        ));
    };
    let signer = match signing_key {
        Some(b) => SigningKey::from_pkcs8(b).map_err(signature)?,
        None => SigningKey::generate().map_err(signature)?,
    };
    let be = convert::backend(threads)?;
    let mut progress = Progress::new(progress);
    let owner = py.detach(|| {
        let r = (|| -> Result<PyOwner, Error> {
            progress.report("protect", 0, 2);
            let model = onnx::import_onnx(&onnx_bytes)?;
            let plan = ProtectPlan::new(&model, scope)?;
            let params = protect::parameters(plan.spec(), security)?;
            let mut rng = Prng::from_entropy()?;
            let sk = SecretKey::generate(params.rlwe(), &mut rng)?;
            let protected = plan.protect(&params, &sk, &be, &mut rng)?;
            progress.report("protect", 1, 2);
            let pk = sk.public_key(&be, &mut rng)?;
            let evk = sk.evaluation_keys(&be, &protected.key_requirements(), &mut rng)?;
            let signed = signer.sign_model(&protected.to_bytes(&be)?);
            progress.report("protect", 2, 2);
            Ok(PyOwner {
                plain: Some(model),
                model: protected,
                signed,
                owner_key: signer.owner_key(),
                secret: sk,
                public: pk.to_bytes(&be)?,
                evaluation: Some(evk.to_bytes(&be)?),
                signer: Some(signer),
                be,
            })
        })();
        progress.finish(r)
    })?;
    Ok(owner)
}

/// The model owner of a protected model: the signed model and the keys the edge receives,
/// the secret key that decrypts the edge's results, and the signing key. Made by
/// :func:`hecnn.protect` or :meth:`load`. The secret and signing keys leave it only when
/// asked (:meth:`secret_key`, :meth:`signing_key`, :meth:`save`).
#[pyclass(module = "hecnn._hecnn", name = "Owner", frozen)]
pub struct PyOwner {
    /// The unprotected model, for an owner made by [`protect_onnx`] (not for one loaded).
    plain: Option<hecnn_nn::Model>,
    model: ProtectedModel<CpuBackend>,
    signed: Vec<u8>,
    owner_key: OwnerKey,
    secret: SecretKey,
    public: Vec<u8>,
    /// Absent for an owner loaded from a directory without `eval.keys`.
    evaluation: Option<Vec<u8>>,
    /// Absent for an owner loaded without its signing key (it can still decrypt).
    signer: Option<SigningKey>,
    be: CpuBackend,
}

impl PyOwner {
    /// Decrypts one result (the CLI's `.hcno` bytes), flooded for release when `flooding`
    /// is given.
    fn decrypt_one(
        &self,
        dec: &Decryptor<'_, CpuBackend>,
        bytes: &[u8],
        flooding: Option<&OutputFlooding>,
        rng: &mut Prng,
    ) -> Result<Vec<f64>, Error> {
        let params = self.model.params();
        let (out, key) = ProtectedOutput::from_bytes(&self.be, self.model.spec(), params, bytes)?;
        if key != self.secret.key_id() {
            return Err(Error::Nn(NnError::Mismatch {
                what: "owner key of the result",
                expected: convert::hex(&self.secret.key_id()),
                found: convert::hex(&key),
            }));
        }
        let spec = self.model.spec();
        Ok(match flooding {
            Some(f) => protect::decrypt_output_flooded(spec, params, dec, &self.be, &out, f, rng)?,
            None => protect::decrypt_output(spec, params, dec, &self.be, &out)?,
        })
    }
}

impl PyOwner {
    /// The flooding of released logits at `noise_bound` (`log2`), or at the ring degree's.
    fn flooding(&self, noise_bound: Option<f64>) -> Result<OutputFlooding, Error> {
        let (spec, params) = (self.model.spec(), self.model.params());
        Ok(match noise_bound {
            None => protect::output_flooding(spec, params)?,
            Some(b) if b.is_finite() && b > 0.0 => protect::output_flooding_with(
                spec,
                params,
                Flooding::with_defaults(b).map_err(NnError::from)?,
            )?,
            Some(b) => {
                return Err(Error::usage(
                    "noise_bound",
                    b.to_string(),
                    "a positive log2 noise bound",
                ));
            }
        })
    }
}

/// Result bytes from `results`: one `bytes` (single) or a sequence of them.
fn results_of(results: &Bound<'_, PyAny>) -> Result<(Vec<Vec<u8>>, bool), Error> {
    if let Ok(b) = results.cast::<PyBytes>() {
        return Ok((vec![b.as_bytes().to_vec()], true));
    }
    if let Ok(list) = results.extract::<Vec<Vec<u8>>>()
        && !results.is_instance_of::<pyo3::types::PyString>()
    {
        return Ok((list, false));
    }
    Err(Error::usage(
        "results",
        type_name(results),
        "one result's bytes (Edge.run's items, the CLI's .hcno files) or a list of them",
    ))
}

#[pymethods]
impl PyOwner {
    /// The signed protected model's bytes (``model.hecnnp``): what the edge runs. It holds
    /// the cleartext feature extractor and the encrypted layers, no secret.
    fn protected_model<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.signed)
    }

    /// The owner's public signing key as text (``owner.pub``): the edge must receive it out
    /// of band, not with the model, and verifies the model against it.
    #[getter]
    fn owner_key(&self) -> String {
        self.owner_key.to_text()
    }

    /// The public key's bytes (``public.key``): the edge encrypts its features with it.
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.public)
    }

    /// The evaluation keys' bytes (``eval.keys``): relinearization and the rotations the
    /// encrypted layers need, for the edge. Absent for an owner loaded without them.
    fn evaluation_keys<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>, Error> {
        match &self.evaluation {
            Some(b) => Ok(PyBytes::new(py, b)),
            None => Err(Error::usage(
                "owner",
                "an owner loaded without eval.keys",
                "the owner made by hecnn.protect, or a directory holding eval.keys",
            )),
        }
    }

    /// The secret key's bytes (``secret.key``). Keep them private: they decrypt every
    /// result and every weight of the model.
    fn secret_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.secret.to_secret_bytes())
    }

    /// The signing key's bytes (PKCS#8, ``owner-signing.key``): pass them to
    /// :func:`hecnn.protect` to sign the owner's next models with the same key. Keep them
    /// private. ``None`` for an owner loaded without it.
    fn signing_key<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.signer.as_ref().map(|s| PyBytes::new(py, s.to_pkcs8()))
    }

    /// The key-pair id (hex) the model's weights and the edge's results are encrypted under.
    #[getter]
    fn key_id(&self) -> String {
        convert::hex(&self.model.key_id())
    }

    /// What is protected, as ``layers`` named it: ``"last"``, ``"classifier"`` or ``"network"``.
    #[getter]
    fn scope(&self) -> &'static str {
        self.model.spec().scope.name()
    }

    /// The input shape ``(C, H, W)`` of the whole model.
    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        let [c, h, w] = self.model.spec().prefix.input_shape;
        (c, h, w)
    }

    /// The number of outputs (logits).
    #[getter]
    fn output_size(&self) -> usize {
        self.model.spec().outputs()
    }

    /// The protected part's parameters: ``log_n``, ``n``, ``slots``, ``levels``, ``log_qp``,
    /// ``log_scale``, ``dnum``, ``security``.
    #[getter]
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        parameters(py, &self.model)
    }

    /// Decrypts the edge's results: one result's bytes give ``(outputs,)`` logits, a list
    /// of them ``(N, outputs)``. Checks that each is encrypted under this owner's key and
    /// has the model's shape. The GIL is released meanwhile.
    ///
    /// ``release=False``: the owner's own values, at the noise's precision; never hand them
    /// to another party (CKKS decryptions leak the noise, and with it the key: IND-CPA-D).
    /// ``release=True``: logits fit to leave the owner: each decryption noise-flooded at
    /// 30-bit statistical security over 2^20 decryptions for output noise up to
    /// ``noise_bound`` (``log2``; by default the bound for the ring degree, or the one
    /// ``hecnn protect --calibrate`` measured), then rounded to the bits the flooding
    /// leaves (:meth:`release_precision`). A result noisier than the bound is refused
    /// (``NoiseAboveBound``) rather than released.
    #[pyo3(signature = (results, release = false, noise_bound = None))]
    fn decrypt<'py>(
        &self,
        py: Python<'py>,
        results: &Bound<'py, PyAny>,
        release: bool,
        noise_bound: Option<f64>,
    ) -> Result<Bound<'py, PyAny>, Error> {
        let (items, single) = results_of(results)?;
        let flooding = if release {
            Some(self.flooding(noise_bound)?)
        } else if noise_bound.is_some() {
            return Err(Error::usage(
                "noise_bound",
                "a bound without release=True",
                "release=True (the bound sizes the flooding of released logits)",
            ));
        } else {
            None
        };
        let rows = py.detach(|| {
            let dec = Decryptor::new(&self.secret, &self.be)?;
            let mut rng = Prng::from_entropy()?;
            items
                .iter()
                .map(|b| self.decrypt_one(&dec, b, flooding.as_ref(), &mut rng))
                .collect::<Result<Vec<_>, Error>>()
        })?;
        let outputs = self.model.spec().outputs();
        if single {
            let row = rows.into_iter().next().unwrap_or_default();
            let a: Bound<'py, PyArray1<f64>> = Array1::from_vec(row).into_pyarray(py);
            return Ok(a.into_any());
        }
        Ok(convert::logits(py, rows, outputs)?.into_any())
    }

    /// What ``decrypt(..., release=True)`` costs: a dict with ``noise_bound_log2``,
    /// ``sigma_log2`` (the flooding's standard deviation, coefficient domain),
    /// ``output_std`` (what it adds to each logit) and ``release_bits`` (fractional bits
    /// of each released logit).
    #[pyo3(signature = (noise_bound = None))]
    fn release_precision<'py>(
        &self,
        py: Python<'py>,
        noise_bound: Option<f64>,
    ) -> Result<Bound<'py, PyDict>, Error> {
        let f = self.flooding(noise_bound)?;
        let d = PyDict::new(py);
        d.set_item("noise_bound_log2", f.flooding().noise_log2())?;
        d.set_item("sigma_log2", f.flooding().sigma_log2())?;
        d.set_item("output_std", f.output_std())?;
        d.set_item("release_bits", f.release_bits())?;
        Ok(d)
    }

    /// The unprotected model's logits on ``x`` (``(C, H, W)`` or ``(N, C, H, W)``), computed
    /// in the clear in float64: the owner's reference for what :meth:`decrypt` returns.
    /// Available on an owner made by :func:`hecnn.protect` (a loaded one holds only the
    /// encrypted model).
    fn plaintext<'py>(&self, py: Python<'py>, x: Images<'py>) -> Result<Bound<'py, PyAny>, Error> {
        let Some(model) = &self.plain else {
            return Err(Error::usage(
                "owner",
                "an owner loaded from files",
                "the owner made by hecnn.protect (it keeps the unprotected model)",
            ));
        };
        let (images, single) = convert::images(&x, self.model.spec().prefix.input_shape)?;
        let rows = py.detach(|| {
            images
                .iter()
                .map(|im| Ok(hecnn_nn::exec::run(model, im)?.data().to_vec()))
                .collect::<Result<Vec<_>, Error>>()
        })?;
        let outputs = self.model.spec().outputs();
        if single {
            let row = rows.into_iter().next().unwrap_or_default();
            return Ok(Array1::from_vec(row).into_pyarray(py).into_any());
        }
        Ok(convert::logits(py, rows, outputs)?.into_any())
    }

    /// Writes the owner's files into ``directory`` under the CLI's names: ``model.hecnnp``,
    /// ``owner.pub``, ``public.key``, ``eval.keys`` (what the edge receives; ``owner.pub``
    /// out of band) and ``secret.key``, ``owner-signing.key`` (the owner's only, written
    /// readable by the owner alone from the first byte). Refuses to replace an existing
    /// ``secret.key`` unless ``force``.
    #[pyo3(signature = (directory, force = false))]
    fn save(&self, py: Python<'_>, directory: PathBuf, force: bool) -> Result<(), Error> {
        py.detach(|| {
            let secret = directory.join(SECRET_FILE);
            if !force && std::fs::symlink_metadata(&secret).is_ok() {
                return Err(Error::usage(
                    "force",
                    format!("False with {} present", secret.display()),
                    "force=True to replace it (results encrypted under it become unreadable)",
                ));
            }
            std::fs::create_dir_all(&directory).map_err(|e| NnError::io(&directory, e))?;
            data::write_atomic_private(&secret, &self.secret.to_secret_bytes())?;
            if let Some(s) = &self.signer {
                data::write_atomic_private(&directory.join(SIGNING_KEY_FILE), s.to_pkcs8())?;
            }
            data::write_atomic(&directory.join(MODEL_FILE), &self.signed)?;
            data::write_atomic(
                &directory.join(OWNER_KEY_FILE),
                self.owner_key.to_text().as_bytes(),
            )?;
            data::write_atomic(&directory.join(PUBLIC_FILE), &self.public)?;
            if let Some(e) = &self.evaluation {
                data::write_atomic(&directory.join(EVAL_FILE), e)?;
            }
            Ok(())
        })
    }

    /// Loads the owner's directory that :meth:`save` or ``hecnn protect`` wrote: the model
    /// (verified against ``owner.pub``), ``secret.key`` (it must be the model's key),
    /// ``public.key``, and ``eval.keys`` and ``owner-signing.key`` where present.
    #[staticmethod]
    #[pyo3(signature = (directory, threads = 0))]
    fn load(py: Python<'_>, directory: PathBuf, threads: usize) -> Result<Self, Error> {
        let be = convert::backend(threads)?;
        py.detach(move || {
            let dir = directory.as_path();
            let key = OwnerKey::read(&dir.join(OWNER_KEY_FILE)).map_err(signature)?;
            let signed = read_bounded(&dir.join(MODEL_FILE), MAX_FILE)?;
            let model = ProtectedModel::from_bytes(
                &be,
                signing::verify_model(&signed, &key).map_err(signature)?,
            )?;
            let params = Arc::clone(model.params());
            let key_limit = (params.rlwe().switching_key_bytes() as u64).saturating_mul(2) + 8192;
            let secret = SecretKey::from_secret_bytes(
                params.rlwe(),
                &zeroize::Zeroizing::new(read_bounded(&dir.join(SECRET_FILE), key_limit)?),
            )?;
            if secret.key_id() != model.key_id() {
                return Err(Error::Nn(NnError::Mismatch {
                    what: "key pair of secret.key",
                    expected: convert::hex(&model.key_id()),
                    found: convert::hex(&secret.key_id()),
                }));
            }
            let optional = |name: &str, limit: u64| -> Result<Option<Vec<u8>>, Error> {
                let path = dir.join(name);
                if std::fs::symlink_metadata(&path).is_err() {
                    return Ok(None);
                }
                Ok(Some(read_bounded(&path, limit)?))
            };
            let public = match optional(PUBLIC_FILE, key_limit)? {
                Some(b) => {
                    let pk = PublicKey::from_bytes(&be, params.rlwe(), &b)?;
                    check_key_id("public.key", pk.key_id(), model.key_id())?;
                    b
                }
                None => secret
                    .public_key(&be, &mut Prng::from_entropy()?)?
                    .to_bytes(&be)?,
            };
            let evaluation = optional(EVAL_FILE, MAX_FILE)?;
            if let Some(b) = &evaluation {
                let evk = EvaluationKeys::from_bytes(&be, params.rlwe(), b, MAX_EDGE_KEYS)?;
                check_key_id("eval.keys", evk.key_id(), model.key_id())?;
            }
            let signer = optional(SIGNING_KEY_FILE, 1 << 16)?
                .map(|b| SigningKey::from_pkcs8(&zeroize::Zeroizing::new(b)))
                .transpose()
                .map_err(signature)?;
            if let Some(s) = &signer
                && s.owner_key() != key
            {
                return Err(Error::Signature(format!(
                    "{SIGNING_KEY_FILE} is not the key of {OWNER_KEY_FILE}"
                )));
            }
            Ok(Self {
                plain: None,
                model,
                signed,
                owner_key: key,
                secret,
                public,
                evaluation,
                signer,
                be,
            })
        })
    }

    fn __repr__(&self) -> String {
        format!("<hecnn.Owner {}>", describe(&self.model))
    }
}

fn check_key_id(what: &'static str, found: [u8; 32], expected: [u8; 32]) -> Result<(), Error> {
    if found == expected {
        return Ok(());
    }
    Err(Error::Nn(NnError::Mismatch {
        what,
        expected: convert::hex(&expected),
        found: convert::hex(&found),
    }))
}

/// An edge node running a protected model: the signed model (verified against the owner's
/// public signing key before anything else), the owner's evaluation keys and, to encrypt
/// features, its public key. It holds no secret key: its results are readable by the owner
/// only.
///
/// ``Edge(protected_model, owner_key, evaluation_keys, public_key=None, threads=0)``:
/// ``owner_key`` is ``owner.pub``'s text, bytes or path.
#[pyclass(module = "hecnn._hecnn", name = "Edge", frozen)]
pub struct PyEdge {
    model: ProtectedModel<CpuBackend>,
    eval: Evaluator<CpuBackend>,
    public: Option<PublicKey<CpuBackend>>,
}

impl PyEdge {
    fn build(
        be: CpuBackend,
        signed: &[u8],
        owner_key: &OwnerKey,
        evaluation_keys: &[u8],
        public_key: Option<&[u8]>,
    ) -> Result<Self, Error> {
        let model = ProtectedModel::from_bytes(
            &be,
            signing::verify_model(signed, owner_key).map_err(signature)?,
        )?;
        let params = Arc::clone(model.params());
        let evk = EvaluationKeys::from_bytes(&be, params.rlwe(), evaluation_keys, MAX_EDGE_KEYS)?;
        check_key_id(
            "owner key of the evaluation keys",
            evk.key_id(),
            model.key_id(),
        )?;
        let public = public_key
            .map(|b| PublicKey::from_bytes(&be, params.rlwe(), b))
            .transpose()?;
        if let Some(pk) = &public {
            check_key_id("owner key of the public key", pk.key_id(), model.key_id())?;
        }
        let eval = Evaluator::new(params, Arc::new(evk), be)?;
        Ok(Self {
            model,
            eval,
            public,
        })
    }
}

/// Refuses a deployment directory that holds one of the owner's secrets.
fn refuse_owner_secrets(dir: &Path) -> Result<(), Error> {
    for (name, what) in [
        (SECRET_FILE, "secret key"),
        (SIGNING_KEY_FILE, "signing key"),
    ] {
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(Error::usage(
                "directory",
                format!("{} (the owner's {what})", path.display()),
                "a deployment without the owner's secrets: only model.hecnnp, public.key and \
                 eval.keys go to an edge node",
            ));
        }
    }
    Ok(())
}

#[pymethods]
impl PyEdge {
    #[new]
    #[pyo3(signature = (protected_model, owner_key, evaluation_keys, public_key = None, threads = 0))]
    fn new(
        py: Python<'_>,
        protected_model: &[u8],
        owner_key: &Bound<'_, PyAny>,
        evaluation_keys: &[u8],
        public_key: Option<&[u8]>,
        threads: usize,
    ) -> Result<Self, Error> {
        let key = owner_key_of(owner_key)?;
        let be = convert::backend(threads)?;
        py.detach(|| Self::build(be, protected_model, &key, evaluation_keys, public_key))
    }

    /// Loads a deployment directory (``model.hecnnp``, ``eval.keys`` and, where present,
    /// ``public.key``), verifying the model against ``owner_key`` (``owner.pub``'s text,
    /// bytes or path, received out of band). Refuses a directory holding the owner's secret
    /// or signing key: they must never reach an edge node.
    #[staticmethod]
    #[pyo3(signature = (directory, owner_key, threads = 0))]
    fn load(
        py: Python<'_>,
        directory: PathBuf,
        owner_key: &Bound<'_, PyAny>,
        threads: usize,
    ) -> Result<Self, Error> {
        let key = owner_key_of(owner_key)?;
        let be = convert::backend(threads)?;
        py.detach(move || {
            refuse_owner_secrets(&directory)?;
            let signed = read_bounded(&directory.join(MODEL_FILE), MAX_FILE)?;
            let evaluation = read_bounded(&directory.join(EVAL_FILE), MAX_FILE)?;
            let public_path = directory.join(PUBLIC_FILE);
            let public = if std::fs::symlink_metadata(&public_path).is_ok() {
                Some(read_bounded(&public_path, MAX_FILE)?)
            } else {
                None
            };
            Self::build(be, &signed, &key, &evaluation, public.as_deref())
        })
    }

    /// The key-pair id (hex) of the owner the model belongs to.
    #[getter]
    fn key_id(&self) -> String {
        convert::hex(&self.model.key_id())
    }

    /// What is protected, as ``layers`` named it: ``"last"``, ``"classifier"`` or ``"network"``.
    #[getter]
    fn scope(&self) -> &'static str {
        self.model.spec().scope.name()
    }

    /// The input shape ``(C, H, W)``.
    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        let [c, h, w] = self.model.spec().prefix.input_shape;
        (c, h, w)
    }

    /// The number of outputs (logits) the owner decrypts.
    #[getter]
    fn output_size(&self) -> usize {
        self.model.spec().outputs()
    }

    /// The protected part's parameters (as :attr:`Owner.parameters`).
    #[getter]
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        parameters(py, &self.model)
    }

    /// Runs the protected model on ``x`` (``(C, H, W)`` or ``(N, C, H, W)``): the cleartext
    /// feature extractor, then the encrypted layers, on the features in the clear or, with
    /// ``encrypt_features``, encrypted with the owner's public key (ciphertext ×
    /// ciphertext products). Returns one result's bytes per image (a list; the CLI's
    /// ``.hcno`` files), which only the owner decrypts. ``progress(stage, done, total)`` is
    /// called with ``stage="edge"`` after every image; an exception it raises (or Ctrl-C)
    /// stops the run after that image. The GIL is released meanwhile.
    #[pyo3(signature = (x, encrypt_features = false, progress = None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        x: Images<'py>,
        encrypt_features: bool,
        progress: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyList>, Error> {
        let [c, h, w] = self.model.spec().prefix.input_shape;
        let (images, _) = convert::images(&x, [c, h, w])?;
        let pk = match (encrypt_features, &self.public) {
            (false, _) => None,
            (true, Some(pk)) => Some(pk),
            (true, None) => {
                return Err(Error::usage(
                    "encrypt_features",
                    "True on an edge without the owner's public key",
                    "an Edge made with public_key (or a deployment holding public.key)",
                ));
            }
        };
        let mut progress = Progress::new(progress);
        let n = images.len();
        let be = self.eval.backend().clone();
        let results = py.detach(|| {
            let r = be.install(|| -> Result<Vec<Vec<u8>>, Error> {
                let mut rng = Prng::from_entropy()?;
                let mut out = Vec::with_capacity(n);
                for (i, image) in images.iter().enumerate() {
                    let features = self.model.spec().features_of(image)?;
                    let input = match pk {
                        Some(pk) => FeatureInput::Encrypted(
                            self.model
                                .encrypt_features(&self.eval, pk, &features, &mut rng)?,
                        ),
                        None => FeatureInput::Plain(features),
                    };
                    let result = self.model.evaluate(&self.eval, &input)?;
                    out.push(result.to_bytes(&be, self.model.params(), self.model.key_id())?);
                    progress.report("edge", i + 1, n);
                    if progress.stopped() {
                        break;
                    }
                }
                Ok(out)
            });
            progress.finish(r)
        })?;
        let items: Vec<Bound<'py, PyBytes>> = results.iter().map(|b| PyBytes::new(py, b)).collect();
        Ok(PyList::new(py, items)?)
    }

    fn __repr__(&self) -> String {
        format!("<hecnn.Edge {}>", describe(&self.model))
    }
}
