//! Serving a router over HTTP/1.1 and HTTP/2 (TLS optional), and the HTTP client the
//! services use to call each other.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::DeployError;

/// A certificate chain and its private key (PEM files) for serving over TLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn acceptor(tls: &TlsFiles) -> Result<TlsAcceptor, DeployError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| DeployError::Config(format!("{}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(DeployError::Config(format!(
            "{}: no certificate",
            tls.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| DeployError::Config(format!("{}: {e}", tls.key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| DeployError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| DeployError::Config(format!("{}: {e}", tls.cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and loads the TLS files when given.
    ///
    /// # Errors
    /// Binding and certificate errors.
    pub async fn bind(addr: &str, tls: Option<&TlsFiles>) -> Result<Self, DeployError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| DeployError::Config(format!("cannot listen on {addr}: {e}")))?;
        let tls = tls.map(acceptor).transpose()?;
        Ok(Self { listener, tls })
    }

    /// The service's base address, e.g. `https://127.0.0.1:40123`.
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn url(&self) -> Result<String, DeployError> {
        let addr = self
            .listener
            .local_addr()
            .map_err(|e| DeployError::Config(e.to_string()))?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{addr}"))
    }

    /// Serves `router` until the task is dropped. Each connection runs on its own task; a
    /// failed TLS handshake or a broken connection ends only that connection.
    ///
    /// Every request body is wrapped in a lingering close (the crate's `body` module), so a client
    /// still sending when a handler refuses its request reads the refusal instead of a reset.
    pub async fn serve(self, router: Router) {
        let router = router.layer(axum::middleware::from_fn(crate::body::linger));
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(router.clone());
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let mut builder = Builder::new(TokioExecutor::new());
                // A client that never finishes its request headers holds nothing for long.
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30));
                let result = match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls_stream)) => {
                                builder
                                    .serve_connection(TokioIo::new(tls_stream), service)
                                    .await
                            }
                            _ => return,
                        }
                    }
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
                drop(result);
            });
        }
    }
}

/// The HTTP client for calls between services: HTTP/1.1 or HTTP/2, and for `https`
/// addresses only the certificate authorities given (a private PKI, as deployments use).
///
/// # Errors
/// Unreadable or malformed CA files.
pub fn client(ca: Option<&Path>) -> Result<reqwest::Client, DeployError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(600))
        .pool_idle_timeout(Duration::from_secs(30));
    if let Some(path) = ca {
        let pem = std::fs::read(path).map_err(|e| DeployError::io(path, e))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| DeployError::Config(format!("{}: {e}", path.display())))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build()
        .map_err(|e| DeployError::Config(format!("HTTP client: {e}")))
}

/// Turns a non-success answer into [`DeployError::Remote`] with the service's message.
///
/// # Errors
/// [`DeployError::Remote`] for 4xx and 5xx answers.
pub async fn check(url: &str, resp: reqwest::Response) -> Result<reqwest::Response, DeployError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    // Read at most 64 KiB of the error body.
    let mut resp = resp;
    let mut raw = Vec::new();
    while raw.len() < 64 << 10 {
        match resp.chunk().await {
            Ok(Some(c)) => raw.extend_from_slice(&c),
            _ => break,
        }
    }
    raw.truncate(64 << 10);
    let body = String::from_utf8_lossy(&raw).into_owned();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or(body);
    Err(DeployError::Remote {
        url: url.to_string(),
        status,
        message,
    })
}
