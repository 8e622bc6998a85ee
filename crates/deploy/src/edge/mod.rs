//! The edge node service (`hecnn edge serve`).
//!
//! HTTP API:
//!
//! | route | token | what |
//! |---|---|---|
//! | `GET /v1/health` | – | liveness |
//! | `PUT /v1/deployment` | node | body: `HCND` bundle; checked, stored atomically, then served |
//! | `GET /v1/status` | node, input | the current deployment and the outbox's length |
//! | `POST /v1/stream` | input | body: a stream of frames (`u16` id length, id, `u32` pixel count, 8-bit C×H×W pixels); answers once every frame's encrypted result is in the outbox |
//!
//! Inputs also come from a watched directory (PNG or raw `.u8` files; moved to `done/` or
//! `failed/`). Each encrypted result is written to `outbox/` before it is acknowledged,
//! and the forwarder sends the outbox to the owner until the owner has stored each result,
//! so a crash of either side loses no completed result (the owner acknowledges a result it
//! already has; a different one under the same input id, such as a re-run with encrypted
//! features after a crash, is refused with 409 and kept in `rejected/`).
//!
//! State directory: `deployment.hcnd` (the current bundle), `input.token`, `outbox/`,
//! `rejected/` (results the owner refused, with the reason).

mod api;
mod deployed;

pub use deployed::{Deployed, decode_image};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hecnn_ring::Backend;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::auth::{Token, TokenHash};
use crate::net::{self, Server, TlsFiles};
use crate::signing::OwnerKey;
use crate::wire::{DeploymentBundle, check_input_id};
use crate::{DeployError, files};

/// Settings of the edge service.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// State directory.
    pub state_dir: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Serve over TLS with these files.
    pub tls: Option<TlsFiles>,
    /// The owner service's base address.
    pub owner_url: String,
    /// This node's token, issued by the owner (`POST /v1/nodes`).
    pub node_token: Token,
    /// The owner's public signing key (its `owner.pub`), received out of band: a
    /// deployment whose model it did not sign is refused.
    pub owner_key: OwnerKey,
    /// Certificate authorities trusted for an `https` owner.
    pub owner_ca: Option<PathBuf>,
    /// A directory to take images from.
    pub watch: Option<PathBuf>,
    /// Largest deployment bundle, in bytes.
    pub max_bundle_bytes: usize,
    /// Inputs queued for inference before the stream reader waits (back-pressure).
    pub queue: usize,
}

impl EdgeConfig {
    /// Defaults: loopback, an ephemeral port, 1 GiB bundles, a queue of 64 inputs.
    pub fn new(
        state_dir: PathBuf,
        owner_url: String,
        node_token: Token,
        owner_key: OwnerKey,
    ) -> Self {
        Self {
            state_dir,
            listen: "127.0.0.1:0".into(),
            tls: None,
            owner_url,
            node_token,
            owner_key,
            owner_ca: None,
            watch: None,
            max_bundle_bytes: 1 << 30,
            queue: 64,
        }
    }
}

/// One input for the inference worker.
pub(crate) struct Job {
    pub(crate) input_id: String,
    pub(crate) pixels: Vec<u8>,
    /// Answered once the result is durable in the outbox.
    pub(crate) done: oneshot::Sender<Result<(), DeployError>>,
}

/// The edge's shared state.
pub(crate) struct Edge<B: Backend> {
    config: EdgeConfig,
    be: B,
    node_token: TokenHash,
    input_token: TokenHash,
    current: RwLock<Option<Arc<Deployed<B>>>>,
    installing: std::sync::Mutex<()>,
    jobs: mpsc::Sender<Job>,
    outbox_wake: Notify,
    client: reqwest::Client,
    processed: AtomicU64,
    forwarded: AtomicU64,
}

const BUNDLE_FILE: &str = "deployment.hcnd";

impl<B: Backend + Clone> Edge<B> {
    pub(crate) fn current(&self) -> Option<Arc<Deployed<B>>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn outbox(&self) -> PathBuf {
        self.config.state_dir.join("outbox")
    }

    /// Checks, stores (atomically) and switches to a new deployment. A bundle equal to the
    /// current deployment is acknowledged without change (the owner retries after a lost
    /// answer).
    pub(crate) fn install(&self, bytes: &[u8]) -> Result<Arc<Deployed<B>>, DeployError> {
        let bundle = DeploymentBundle::from_bytes(bytes)?;
        // One install at a time, so the stored bundle and the served one stay the same.
        let _guard = self
            .installing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(cur) = self.current() {
            if cur.header() == &bundle.header {
                return Ok(cur);
            }
            if bundle.header.deployment_id < cur.header().deployment_id {
                return Err(DeployError::StaleDeployment {
                    offered: bundle.header.deployment_id,
                    current: cur.header().deployment_id,
                });
            }
        }
        let deployed = Arc::new(Deployed::load(&self.be, &bundle, &self.config.owner_key)?);
        files::write_atomic(&self.config.state_dir.join(BUNDLE_FILE), bytes)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&deployed));
        let h = deployed.header();
        eprintln!(
            "deployment {} installed: model {} v{} ({} features)",
            h.deployment_id,
            h.model_name,
            h.model_version,
            if h.encrypt_features {
                "encrypted"
            } else {
                "plain"
            }
        );
        Ok(deployed)
    }

    pub(crate) fn outbox_len(&self) -> usize {
        files::list(&self.outbox(), "hcnr").map_or(0, |v| v.len())
    }
}

/// A running edge service.
pub struct EdgeHandle {
    /// The base address it serves.
    pub url: String,
    /// Where the input token is (written at the first start, mode 0600).
    pub input_token_file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl EdgeHandle {
    /// Serves until the process ends.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Opens the state (reloading the stored deployment and the outbox), starts the inference
/// worker, the forwarder and the directory watch, and serves the API. Inference runs on
/// `be` (the binary passes a CPU backend sized by `--threads`).
///
/// # Errors
/// Configuration, state-directory and listening errors, and a stored deployment that no
/// longer loads.
pub async fn start<B: Backend + Clone>(
    config: EdgeConfig,
    be: B,
) -> Result<EdgeHandle, DeployError> {
    let dir = &config.state_dir;
    for d in [dir.clone(), dir.join("outbox"), dir.join("rejected")] {
        files::ensure_dir(&d)?;
        files::sweep_temporaries(&d)?;
    }
    if let Some(w) = &config.watch {
        for d in [w.clone(), w.join("done"), w.join("failed")] {
            files::ensure_dir(&d)?;
        }
        files::sweep_temporaries(w)?;
    }
    let input_token_file = dir.join("input.token");
    let input_token = match Token::read(&input_token_file) {
        Ok(t) => t,
        Err(DeployError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let t = Token::generate()?;
            files::write_private(&input_token_file, format!("{}\n", t.expose()).as_bytes())?;
            t
        }
        Err(e) => return Err(e),
    };
    let client = net::client(config.owner_ca.as_deref())?;
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let server = Server::bind(&config.listen, config.tls.as_ref()).await?;
    let url = server.url()?;
    let edge = Arc::new(Edge {
        node_token: config.node_token.hash(),
        input_token: input_token.hash(),
        config,
        be,
        current: RwLock::new(None),
        installing: std::sync::Mutex::new(()),
        jobs: tx,
        outbox_wake: Notify::new(),
        client,
        processed: AtomicU64::new(0),
        forwarded: AtomicU64::new(0),
    });
    let stored = edge.config.state_dir.join(BUNDLE_FILE);
    if stored.exists() {
        let bytes = std::fs::read(&stored).map_err(|e| DeployError::io(&stored, e))?;
        // A stored bundle that no longer loads (e.g. written by another version) is set
        // aside, so the node still starts and the owner can deploy again.
        if let Err(e) = edge.install(&bytes) {
            let aside = stored.with_extension("hcnd.unloadable");
            eprintln!(
                "the stored deployment does not load ({e}); moved to {}",
                aside.display()
            );
            files::rename_durable(&stored, &aside)?;
        }
    }
    {
        let e = Arc::clone(&edge);
        std::thread::Builder::new()
            .name("hecnn-infer".into())
            .spawn(move || worker(&e, rx))
            .map_err(|e| DeployError::Config(format!("worker thread: {e}")))?;
    }
    if let Some(w) = edge.config.watch.clone() {
        let e = Arc::clone(&edge);
        std::thread::Builder::new()
            .name("hecnn-watch".into())
            .spawn(move || watch(&e, &w))
            .map_err(|e| DeployError::Config(format!("watch thread: {e}")))?;
    }
    tokio::spawn(forwarder(Arc::clone(&edge)));
    let task = tokio::spawn(server.serve(api::router(edge)));
    Ok(EdgeHandle {
        url,
        input_token_file,
        task,
    })
}

/// The inference worker: takes the queued inputs (up to two per thread at a time), runs
/// them in parallel, writes each result to the outbox, then acknowledges.
fn worker<B: Backend + Clone>(edge: &Arc<Edge<B>>, mut rx: mpsc::Receiver<Job>) {
    let most = edge.be.parallelism().max(1) * 2;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < most {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let Some(dep) = edge.current() else {
            for j in batch {
                let _ = j.done.send(Err(DeployError::NoDeployment));
            }
            continue;
        };
        let (inputs, acks): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|j| ((j.input_id, j.pixels), j.done))
            .unzip();
        let outbox = edge.outbox();
        let results = edge.be.par_map(inputs, |(id, px)| {
            let path = outbox.join(format!("{}-{id}.hcnr", dep.header().deployment_id));
            // An id whose result still waits for the owner is refused, so a reused id can
            // never replace an acknowledged result before the owner has it.
            if path.exists() {
                return Err(DeployError::DuplicateInput(id));
            }
            let envelope = dep.infer(&id, &px)?;
            files::write_atomic(&path, &envelope)
        });
        for (r, ack) in results.into_iter().zip(acks) {
            if r.is_ok() {
                edge.processed.fetch_add(1, Ordering::Relaxed);
            }
            let _ = ack.send(r);
        }
        edge.outbox_wake.notify_one();
    }
}

fn move_to(path: &Path, dir: &Path) {
    if let Some(name) = path.file_name()
        && let Err(e) = files::rename_durable(path, &dir.join(name))
    {
        eprintln!("watch: {e}");
    }
}

/// How long a watched file must have been left unmodified before it is read: a writer
/// still appending to it under its final name is not raced (the documented way is to write
/// elsewhere, or under another extension, and rename into the directory).
const SETTLE: Duration = Duration::from_secs(1);

/// Largest watched input file (bytes): far above any image the models take.
const MAX_INPUT_FILE: usize = 64 << 20;

/// Whether `path` was last modified at least [`SETTLE`] ago. A modification time in the
/// future (a skewed clock on a shared file system) is not settled; a file whose time cannot
/// be read counts as settled, and reading it then reports the real error.
fn settled(path: &Path) -> bool {
    match std::fs::symlink_metadata(path).and_then(|m| m.modified()) {
        Ok(t) => t.elapsed().is_ok_and(|age| age >= SETTLE),
        Err(_) => true,
    }
}

/// Polls `dir` for images (`.png`, `.u8`), queues them, and moves each to `done/` once its
/// result is in the outbox (or to `failed/` with the reason logged). Links are moved to
/// `failed/` unread; files modified in the last second wait for the next poll. A crash
/// before the move re-queues the file at the next start; the owner acknowledges the same
/// result again, or refuses a re-encrypted one (kept in `rejected/`), so none is lost.
fn watch<B: Backend + Clone>(edge: &Arc<Edge<B>>, dir: &Path) {
    let (done, failed) = (dir.join("done"), dir.join("failed"));
    loop {
        let mut waiting = Vec::new();
        if let Some(dep) = edge.current() {
            let mut found = files::entries(dir, "png").unwrap_or_default();
            found.extend(files::entries(dir, "u8").unwrap_or_default());
            found.sort();
            let mut inputs = Vec::new();
            for (path, kind) in found {
                match kind {
                    files::Entry::File if settled(&path) => inputs.push(path),
                    files::Entry::File | files::Entry::Other => {}
                    files::Entry::Link => {
                        eprintln!("watch: {}: a link, not read", path.display());
                        move_to(&path, &failed);
                    }
                }
            }
            for path in inputs.into_iter().take(64) {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let pixels = check_input_id(&name).and_then(|()| {
                    let bytes = files::read_regular(&path, MAX_INPUT_FILE)?;
                    decode_image(&name, &bytes, dep.shape())
                });
                match pixels {
                    Ok(pixels) => {
                        let (tx, rx) = oneshot::channel();
                        let job = Job {
                            input_id: name,
                            pixels,
                            done: tx,
                        };
                        if edge.jobs.blocking_send(job).is_err() {
                            return;
                        }
                        waiting.push((path, rx));
                    }
                    Err(e) => {
                        eprintln!("watch: {e}");
                        move_to(&path, &failed);
                    }
                }
            }
        }
        let idle = waiting.is_empty();
        for (path, rx) in waiting {
            match rx.blocking_recv() {
                Ok(Ok(())) => move_to(&path, &done),
                Ok(Err(e)) => {
                    eprintln!("watch: {}: {e}", path.display());
                    move_to(&path, &failed);
                }
                Err(_) => return,
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Sends the outbox to the owner, oldest first, removing each result once the owner has
/// stored it. Results the owner refuses (4xx) move to `rejected/` with the reason; network
/// and server errors are retried with back-off.
async fn forwarder<B: Backend + Clone>(edge: Arc<Edge<B>>) {
    let url = format!("{}/v1/results", edge.config.owner_url.trim_end_matches('/'));
    let token = edge.config.node_token.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let outbox = edge.outbox();
        let pending = tokio::task::spawn_blocking(move || files::list(&outbox, "hcnr"))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let mut stalled = false;
        for path in &pending {
            let body = match tokio::fs::read(path).await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("forwarder: {}: {e}", path.display());
                    stalled = true;
                    break;
                }
            };
            let sent = edge
                .client
                .post(&url)
                .bearer_auth(token.expose())
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .await
                .map_err(DeployError::from);
            let answer = match sent {
                Ok(resp) => net::check(&url, resp).await.map(drop),
                Err(e) => Err(e),
            };
            match answer {
                Ok(()) => {
                    if let Err(e) = tokio::fs::remove_file(path).await {
                        eprintln!("forwarder: {}: {e}", path.display());
                        stalled = true;
                        break;
                    }
                    edge.forwarded.fetch_add(1, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                }
                Err(DeployError::Remote {
                    status, message, ..
                }) if (400..500).contains(&status) && ![401, 408, 429].contains(&status) => {
                    eprintln!(
                        "forwarder: the owner refused {}: {status} {message}",
                        path.display()
                    );
                    let rejected = edge.config.state_dir.join("rejected");
                    if let Some(name) = path.file_name() {
                        let why = rejected.join(format!("{}.why", name.to_string_lossy()));
                        let _ =
                            files::write_atomic(&why, format!("{status} {message}\n").as_bytes());
                    }
                    move_to(path, &rejected);
                }
                Err(e) => {
                    eprintln!("forwarder: {e} (retrying in {} ms)", backoff.as_millis());
                    stalled = true;
                    break;
                }
            }
        }
        let wait = if stalled {
            let w = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            w
        } else if pending.is_empty() {
            Duration::from_secs(1)
        } else {
            continue;
        };
        tokio::select! {
            () = edge.outbox_wake.notified(), if !stalled => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_is_settled_a_second_after_its_last_write_and_never_from_the_future() {
        let dir = std::env::temp_dir().join(format!("hecnn-settle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.png");
        std::fs::write(&path, b"x").unwrap();
        assert!(!super::settled(&path), "just written");
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        let now = std::time::SystemTime::now();
        file.set_modified(now - std::time::Duration::from_secs(5))
            .unwrap();
        assert!(super::settled(&path));
        file.set_modified(now + std::time::Duration::from_secs(3600))
            .unwrap();
        assert!(!super::settled(&path), "a time in the future");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
