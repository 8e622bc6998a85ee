//! `hecnn`: the command-line entry point.

mod agreement_record;
mod bench;
mod bench_bootstrap;
mod bench_infer;
mod bench_protected_bfv;
mod bench_serve;
mod bfv_cmds;
mod cnn;
mod cnn_cmds;
mod data_cmd;
mod demo;
mod eval_bfv;
mod eval_cmd;
mod infer_cmd;
mod params_cmd;
mod progress;
mod protect_bfv_cmd;
mod protect_cmd;
mod serve_cmd;
mod stats;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed pages mapped, so the many short-lived polynomial buffers of an
/// evaluation do not page-fault on every allocation (glibc maps and unmaps large blocks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Private CNN inference with fully homomorphic encryption.
#[derive(Parser, Debug)]
#[command(name = "hecnn", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Classify the bundled MNIST sample under encryption with the bundled model (or, with
    /// --ckks, a vector computation showing the CKKS primitives).
    Demo(demo::DemoArgs),
    /// Compile an ONNX model: import, HE-friendly rewrites, the plan of the chosen packing
    /// (batch or single-image) with its rotation keys, checked parameters.
    Compile(cnn_cmds::CompileArgs),
    /// Generate the client's keys for a model (secret, public, evaluation).
    Keygen(cnn_cmds::KeygenArgs),
    /// Encrypt images with the public key (client).
    Encrypt(cnn_cmds::EncryptArgs),
    /// Evaluate the model on encrypted images with evaluation keys only (server).
    Run(cnn_cmds::RunArgs),
    /// Decrypt the outputs with the secret key (client).
    Decrypt(cnn_cmds::DecryptArgs),
    /// Encrypt, evaluate and decrypt a whole data set; compare with the cleartext model.
    Eval(eval_cmd::EvalArgs),
    /// Encrypt a model's last layer, classifier or whole network under a new owner key (Gomez
    /// et al.): writes the protected model, the owner's secret key and the public and
    /// evaluation keys for edge nodes.
    Protect(protect_cmd::ProtectArgs),
    /// Encrypted inference as a service: serve a compiled model to clients who register
    /// their evaluation keys and submit encrypted images (HTTP API, durable jobs).
    Serve(infer_cmd::ServeArgs),
    /// The client of `hecnn serve`: fetch the client spec, register evaluation keys, run
    /// encrypted inputs.
    #[command(subcommand)]
    Client(infer_cmd::ClientCommand),
    /// An edge node: run a deployed protected model (no secret key).
    #[command(subcommand)]
    Edge(protect_cmd::EdgeCommand),
    /// The model owner's backend: decrypt edge results.
    #[command(subcommand)]
    Owner(protect_cmd::OwnerCommand),
    /// Data-set utilities.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// List the CKKS parameter presets with their security, levels and key sizes.
    Params(params_cmd::ParamsArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Errors reported by the command-line tool.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the CKKS layer.
    #[error(transparent)]
    Ckks(#[from] hecnn_ckks::CkksError),
    /// From the RLWE layer.
    #[error(transparent)]
    Rlwe(#[from] hecnn_rlwe::RlweError),
    /// From the ring layer.
    #[error(transparent)]
    Ring(#[from] hecnn_ring::RingError),
    /// From the model layer.
    #[error(transparent)]
    Nn(#[from] hecnn_nn::NnError),
    /// From the services.
    #[error(transparent)]
    Deploy(#[from] hecnn_deploy::DeployError),
    /// A bad command-line value.
    #[error("{0}")]
    Usage(String),
    /// Valid input this machine or these parameters cannot run (memory, value ranges).
    #[error("{0}")]
    Refused(String),
}

/// Keeps freed memory committed for reuse. An encrypted evaluation allocates and frees
/// gigabytes of large polynomial buffers; returning them to the OS makes every reuse
/// page-fault and be zeroed by the kernel again (measured: MNIST batch 8.4 → 5.7 s on two
/// threads). Option ids follow `mi_option_e` (purge_delay = 15, arena_eager_commit = 4),
/// the same in mimalloc 2 and in mimalloc 3, which `libmimalloc-sys` builds.
fn tune_allocator() {
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    // SAFETY: plain setters of mimalloc's global options, called before any worker thread
    // exists; they take integers and touch no memory the program owns.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 1);
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Params(a) => params_cmd::run(&a),
        Command::Protect(a) => protect_cmd::protect_model(&a),
        Command::Edge(c) => protect_cmd::edge(&c),
        Command::Owner(c) => protect_cmd::owner(&c),
        Command::Demo(a) => demo::run(&a),
        Command::Compile(a) => cnn_cmds::compile(&a),
        Command::Keygen(a) => cnn_cmds::keygen(&a),
        Command::Encrypt(a) => cnn_cmds::encrypt(&a),
        Command::Run(a) => cnn_cmds::run(&a),
        Command::Decrypt(a) => cnn_cmds::decrypt(&a),
        Command::Eval(a) => eval_cmd::eval(&a),
        Command::Serve(a) => infer_cmd::serve(&a),
        Command::Client(c) => infer_cmd::client(&c),
        Command::Data(d) => data_cmd::run(&d),
        Command::Bench(b) => bench::run(&b),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

impl CliError {
    /// The exit status: 2 for a bad command line, 65 for input that is not what it should
    /// be (malformed, corrupted or mismatched files, unsupported models), 74 for I/O
    /// errors, 1 otherwise (the BSD `sysexits` convention).
    fn exit_code(&self) -> u8 {
        use hecnn_nn::NnError;
        match self {
            Self::Usage(_) => 2,
            Self::Nn(NnError::Io { .. }) => 74,
            Self::Nn(
                NnError::Onnx(_)
                | NnError::Unsupported(_)
                | NnError::NotPolynomial(_)
                | NnError::Shape(_)
                | NnError::Data(_)
                | NnError::Format { .. }
                | NnError::Version { .. }
                | NnError::Checksum { .. }
                | NnError::TooLarge { .. }
                | NnError::Mismatch { .. }
                | NnError::LayoutMismatch { .. }
                | NnError::NodeShape { .. }
                | NnError::Graph { .. }
                | NnError::NotSupported { .. }
                | NnError::Unprotectable { .. }
                | NnError::NoParameters { .. }
                | NnError::NoBfvParameters { .. }
                | NnError::Quantization { .. },
            ) => 65,
            _ => 1,
        }
    }

    /// What to try, in the command line's terms, where the error has a remedy there.
    fn hint(&self) -> Option<&'static str> {
        use hecnn_nn::{NnError, compile::params::Chain};
        match self {
            Self::Nn(NnError::NoParameters {
                chain: Chain::Batch,
                ..
            }) => Some("pass a larger --log-n, or --mode single (or auto)"),
            Self::Nn(NnError::NotPolynomial(_)) => Some(
                "--relu-poly 0,0,1 and --maxpool-as-avgpool replace them (retraining recovers the accuracy)",
            ),
            _ => None,
        }
    }
}
