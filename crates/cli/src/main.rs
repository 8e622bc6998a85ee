//! `hecnn`: the command-line entry point.

mod bench;
mod demo;
mod params_cmd;
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
    /// List the CKKS parameter presets with their security, levels and key sizes.
    Params(params_cmd::ParamsArgs),
    /// Encrypt a vector, compute on it under encryption, decrypt, and report precision and time.
    Demo(demo::DemoArgs),
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
    /// A bad command-line value.
    #[error("{0}")]
    Usage(String),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Params(a) => params_cmd::run(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Bench(b) => bench::run(&b),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
