//! `hecnn owner serve` and `hecnn edge serve`: the protected-model services.

use std::path::PathBuf;

use clap::Args;
use hecnn_deploy::{
    auth::Token,
    edge::{self, EdgeConfig},
    net::TlsFiles,
    owner::{self, OwnerConfig},
};

use hecnn_ring::CpuBackend;

use crate::CliError;

/// TLS options shared by both services.
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// Serve over TLS with this certificate chain (PEM, leaf first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The certificate and key files, when both are given.
    pub(crate) fn files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// `hecnn owner serve`.
#[derive(Args, Debug)]
pub struct OwnerServeArgs {
    /// State directory: the registry database, the administrator token, the master key.
    #[arg(long, default_value = "owner-state")]
    state: PathBuf,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7800")]
    listen: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// The master key that seals secret keys at rest (default: <state>/master.key; keep it
    /// on other storage than the database).
    #[arg(long)]
    master_key: Option<PathBuf>,
    /// Certificate authorities (PEM) trusted when pushing deployments to https edges.
    #[arg(long)]
    edge_ca: Option<PathBuf>,
    /// Worker threads for protection and decryption (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Release the logits beside the class: `flooded` decrypts them with noise flooding
    /// (IND-CPA-D; models protected with flooding-sized parameters, the default since
    /// issue 24 §1), rounded to the bits the flooding leaves; a number BITS (at most 20)
    /// rounds the logits to that many fractional bits (flooded ones where the model can
    /// flood; unflooded ones, for trusted consumers only, for models protected before). By
    /// default only the class leaves the owner, from the flooded decryption where the model
    /// can flood: unflooded logits would let an edge that colludes with a consumer recover
    /// the secret key (docs/services.md, Guarantees).
    #[arg(long, value_name = "flooded|BITS")]
    release_logits: Option<String>,
    /// Results of a model refused for noise above its flooding's bound before the owner
    /// stops decrypting that model's results (until it is protected again under a fresh
    /// key): each refusal tells the edge one bit about the model's secret key
    /// (docs/services.md, Guarantees). At least 1.
    #[arg(long, value_name = "N", default_value_t = owner::DEFAULT_REFUSAL_BUDGET)]
    refusal_budget: u32,
}

/// `hecnn edge serve`.
#[derive(Args, Debug)]
pub struct EdgeServeArgs {
    /// State directory: the current deployment, the input token, the outbox.
    #[arg(long, default_value = "edge-state")]
    state: PathBuf,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7801")]
    listen: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// The owner service's address, e.g. https://owner.example:7800.
    #[arg(long)]
    owner: String,
    /// File holding this node's token (from the owner's POST /v1/nodes).
    #[arg(long)]
    token_file: PathBuf,
    /// The owner's public signing key (`owner.pub` in the owner's state directory),
    /// received out of band: deployments whose model it did not sign are refused.
    #[arg(long)]
    owner_key: PathBuf,
    /// Certificate authorities (PEM) trusted for an https owner.
    #[arg(long)]
    owner_ca: Option<PathBuf>,
    /// Also take images from this directory (PNG or raw .u8 files; moved to done/ or failed/).
    #[arg(long)]
    watch: Option<PathBuf>,
    /// Worker threads for inference (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Inputs queued before a stream waits for the worker.
    #[arg(long, default_value_t = 64)]
    queue: usize,
}

/// The async runtime of the services (their heavy work runs on the backends' own threads).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("async runtime: {e}")))
}

/// How long a stopping service waits for work under way (a registry transaction, an image
/// being evaluated, a model being compiled) before the process exits anyway. Nothing is
/// lost by the cut: every service commits its state before it answers, and work not
/// committed is redone from the stored state at the next start (the `kill -9` tests).
pub(crate) const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a service's `main` on [`runtime`] until it returns (its handle finished, or a
/// signal), then gives blocking work still under way [`SHUTDOWN_GRACE`] and returns. (A
/// runtime dropped instead waits for every blocking task however long it runs: SIGTERM
/// then did not stop a busy service.)
pub(crate) fn run_service(
    main: impl std::future::Future<Output = Result<(), CliError>>,
) -> Result<(), CliError> {
    let rt = runtime()?;
    let result = rt.block_on(main);
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// Returns at SIGINT or SIGTERM.
pub(crate) async fn until_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

pub fn owner_serve(a: &OwnerServeArgs) -> Result<(), CliError> {
    let mut config = OwnerConfig::new(a.state.clone());
    config.listen = a.listen.clone();
    config.tls = a.tls.files();
    config.master_key = a.master_key.clone();
    config.edge_ca = a.edge_ca.clone();
    if a.refusal_budget == 0 {
        return Err(CliError::Usage(
            "--refusal-budget 0: at least one refusal is served before a model's releases are \
             suspended"
                .into(),
        ));
    }
    config.refusal_budget = a.refusal_budget;
    config.release = match a.release_logits.as_deref() {
        None => owner::Release::Class,
        Some("flooded") => owner::Release::FloodedLogits,
        Some(bits) => match bits.parse::<u32>() {
            Ok(bits) if bits <= owner::Release::MAX_BITS => owner::Release::RoundedLogits { bits },
            Ok(bits) => {
                return Err(CliError::Usage(format!(
                    "--release-logits {bits}: at most {} fractional bits leave the owner \
                     unflooded (`--release-logits flooded` releases flooded logits)",
                    owner::Release::MAX_BITS
                )));
            }
            Err(_) => {
                return Err(CliError::Usage(format!(
                    "--release-logits {bits}: give `flooded` or a number of fractional bits"
                )));
            }
        },
    };
    let be = CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    run_service(async {
        let handle = owner::start(config, be).await?;
        println!("listening on {}", handle.url);
        println!(
            "administrator token in {}",
            handle.admin_token_file.display()
        );
        println!(
            "owner signing key in {} (give it to the edges: --owner-key)",
            handle.owner_key_file.display()
        );
        tokio::select! {
            () = handle.wait() => {}
            () = until_signal() => eprintln!("owner: stopping"),
        }
        Ok(())
    })
}

pub fn edge_serve(a: &EdgeServeArgs) -> Result<(), CliError> {
    let token = Token::read(&a.token_file)?;
    let owner_key = hecnn_deploy::signing::OwnerKey::read(&a.owner_key)?;
    let mut config = EdgeConfig::new(a.state.clone(), a.owner.clone(), token, owner_key);
    config.listen = a.listen.clone();
    config.tls = a.tls.files();
    config.owner_ca = a.owner_ca.clone();
    config.watch = a.watch.clone();
    let be = CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    config.queue = a.queue;
    run_service(async {
        let handle = edge::start(config, be).await?;
        println!("listening on {}", handle.url);
        println!("input token in {}", handle.input_token_file.display());
        tokio::select! {
            () = handle.wait() => {}
            () = until_signal() => eprintln!("edge: stopping"),
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_service_waits_for_busy_work_only_as_long_as_the_grace() {
        let t = std::time::Instant::now();
        let r = run_service(async {
            // Work that outlives the service's main future, as a busy evaluation does.
            tokio::task::spawn_blocking(|| std::thread::sleep(std::time::Duration::from_secs(30)));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Ok(())
        });
        assert!(r.is_ok());
        assert!(
            t.elapsed() < SHUTDOWN_GRACE + std::time::Duration::from_secs(3),
            "{:?}",
            t.elapsed()
        );
    }
}
