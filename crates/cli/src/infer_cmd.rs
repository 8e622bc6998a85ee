//! `hecnn serve` (encrypted inference as a service) and `hecnn client spec | register |
//! run`, its client: the service is `hecnn_deploy::infer`; this module parses arguments,
//! talks HTTP and reads and writes files. The client's keys, encryption and decryption stay
//! the `keygen`, `encrypt` and `decrypt` commands, which take the fetched client spec.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hecnn_deploy::{
    DeployError,
    auth::Token,
    files,
    infer::{self, InferConfig},
    net,
};
use hecnn_nn::compile::{ClientSpec, CompiledModel, MAX_IMAGES_BYTES, human_bytes};
use serde_json::Value;

use crate::{CliError, serve_cmd::TlsArgs};

/// `hecnn serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The compiled model (`hecnn compile`; `--mode single` for a few images per request).
    model: PathBuf,
    /// State directory: the administrator token, clients, sessions with their evaluation
    /// keys, jobs and results.
    #[arg(long, default_value = "serve-state")]
    state: PathBuf,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7900")]
    listen: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// Jobs that may wait for a worker; beyond, submissions get 429 with Retry-After.
    #[arg(long, default_value_t = 4)]
    queue: usize,
    /// Jobs evaluated at once (they share the worker threads).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Worker threads of the evaluations (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seconds a finished job's result is kept.
    #[arg(long, default_value_t = 3600)]
    result_ttl: u64,
    /// Most images in one job (single-image packing; a batch-packed job is one batch).
    #[arg(long, default_value_t = 64)]
    max_job_images: usize,
    /// Sessions whose evaluation keys are kept loaded (least recently used dropped beyond;
    /// single-image MNIST takes about 0.6 GB each).
    #[arg(long, default_value_t = 4)]
    max_loaded_sessions: usize,
    /// Sessions one client may hold.
    #[arg(long, default_value_t = 4)]
    max_sessions_per_client: usize,
}

/// Loads a compiled model for serving; an ONNX file or unchecked parameters are refused.
pub fn load_compiled(path: &Path) -> Result<CompiledModel, CliError> {
    let bytes = crate::cnn::read_file(path)?;
    if !CompiledModel::is_compiled(&bytes) {
        return Err(CliError::Usage(format!(
            "{}: not a compiled model; compile it first (hecnn compile MODEL.onnx --mode single)",
            path.display()
        )));
    }
    let c = CompiledModel::from_bytes(&bytes)?;
    crate::cnn::refuse_unchecked(path, c.params())?;
    Ok(c)
}

/// `hecnn serve`: loads the compiled model once and serves it until SIGINT or SIGTERM.
///
/// # Errors
/// A model that does not load, state-directory, TLS and listening errors.
pub fn serve(a: &ServeArgs) -> Result<(), CliError> {
    let model = load_compiled(&a.model)?;
    let mut config = InferConfig::new(a.state.clone());
    config.listen = a.listen.clone();
    config.tls = a.tls.files();
    config.queue = a.queue;
    config.workers = a.workers;
    config.result_ttl = Duration::from_secs(a.result_ttl);
    config.max_job_images = a.max_job_images;
    config.max_loaded_sessions = a.max_loaded_sessions;
    config.max_sessions_per_client = a.max_sessions_per_client;
    let be = hecnn_ring::CpuBackend::new(crate::cnn_cmds::threads(a.threads))?;
    crate::serve_cmd::run_service(async {
        let handle = infer::start(config, &model, be).await?;
        println!(
            "serving '{}' ({} packing, {} evaluation keys per session)",
            model.name(),
            model.packing(),
            human_bytes(model.client_spec().evaluation_key_bytes())
        );
        println!(
            "administrator token in {}",
            handle.admin_token_file.display()
        );
        println!("listening on {}", handle.url);
        tokio::select! {
            () = handle.wait() => {}
            () = crate::serve_cmd::until_signal() => eprintln!("serve: stopping"),
        }
        Ok(())
    })
}

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ServerOpts {
    /// The service's address, e.g. https://infer.example:7900.
    #[arg(long)]
    server: String,
    /// Certificate authorities (PEM) trusted for an https server.
    #[arg(long)]
    ca: Option<PathBuf>,
}

impl ServerOpts {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }
}

/// `hecnn client`: the client of `hecnn serve`.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Fetch the served model's client spec (for keygen, encrypt and decrypt).
    Spec(SpecArgs),
    /// Register evaluation keys; prints the session id.
    Register(RegisterArgs),
    /// Submit encrypted inputs under a session and wait for the encrypted outputs.
    Run(RunArgs),
}

/// `hecnn client spec`.
#[derive(Args, Debug)]
pub struct SpecArgs {
    #[command(flatten)]
    server: ServerOpts,
    /// Where to write the client spec.
    #[arg(short, long, default_value = "model.spec")]
    out: PathBuf,
}

/// `hecnn client register`.
#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    server: ServerOpts,
    /// File holding this client's token (from the administrator's POST /v1/clients).
    #[arg(long)]
    token_file: PathBuf,
    /// The evaluation keys (`hecnn keygen`).
    #[arg(long, default_value = "keys/eval.keys")]
    eval_keys: PathBuf,
    /// Also write the session id to this file.
    #[arg(short, long)]
    out: Option<PathBuf>,
}

/// `hecnn client run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    server: ServerOpts,
    /// File holding this client's token.
    #[arg(long)]
    token_file: PathBuf,
    /// The session id (from `hecnn client register`), or a file holding it.
    #[arg(long)]
    session: String,
    /// Encrypted inputs (`hecnn encrypt`).
    #[arg(long = "in", default_value = "inputs.ct")]
    input: PathBuf,
    /// Where to write the encrypted outputs (for `hecnn decrypt`).
    #[arg(short, long, default_value = "outputs.ct")]
    out: PathBuf,
    /// Give up after this many seconds (submission retries and waiting included).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

/// Runs a client command.
///
/// # Errors
/// HTTP errors with the service's message, I/O.
pub fn client(cmd: &ClientCommand) -> Result<(), CliError> {
    let rt = crate::serve_cmd::runtime()?;
    match cmd {
        ClientCommand::Spec(a) => rt.block_on(spec(a)),
        ClientCommand::Register(a) => rt.block_on(register(a)),
        ClientCommand::Run(a) => rt.block_on(run(a)),
    }
}

async fn spec(a: &SpecArgs) -> Result<(), CliError> {
    let http = net::client(a.server.ca.as_deref())?;
    let url = a.server.url("/v1/spec");
    let resp = net::check(
        &url,
        http.get(&url).send().await.map_err(DeployError::from)?,
    )
    .await?;
    let bytes = resp.bytes().await.map_err(DeployError::from)?;
    let spec = ClientSpec::from_bytes(&bytes)?;
    files::write_atomic(&a.out, &bytes)?;
    println!(
        "client spec of '{}' ({} packing, model {}) in {}",
        spec.name(),
        spec.packing(),
        hecnn_deploy::auth::hex(&spec.model_fingerprint()[..6]),
        a.out.display()
    );
    Ok(())
}

async fn register(a: &RegisterArgs) -> Result<(), CliError> {
    let http = net::client(a.server.ca.as_deref())?;
    let token = Token::read(&a.token_file)?;
    let keys = crate::cnn::read_file(&a.eval_keys)?;
    let url = a.server.url("/v1/sessions");
    let size = keys.len();
    let resp = http
        .post(&url)
        .bearer_auth(token.expose())
        .header("content-type", "application/octet-stream")
        .body(keys)
        .send()
        .await
        .map_err(DeployError::from)?;
    let resp = net::check(&url, resp).await?;
    let v: Value = resp.json().await.map_err(DeployError::from)?;
    let id = v["session_id"]
        .as_str()
        .ok_or_else(|| CliError::Usage(format!("{url}: no session id in {v}")))?;
    if let Some(out) = &a.out {
        files::write_atomic(out, format!("{id}\n").as_bytes())?;
    }
    println!("session {id}");
    eprintln!(
        "registered {} of evaluation keys (key pair {}){}",
        human_bytes(size),
        v["key_id"]
            .as_str()
            .map_or("?", |k| k.get(..12).unwrap_or(k)),
        a.out
            .as_ref()
            .map(|o| format!("; session id in {}", o.display()))
            .unwrap_or_default()
    );
    Ok(())
}

/// The session id given, or read from the file named.
fn session_id(s: &str) -> Result<String, CliError> {
    let is_id = |t: &str| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit());
    if is_id(s) {
        return Ok(s.to_ascii_lowercase());
    }
    let text = std::fs::read_to_string(s)
        .map_err(|e| CliError::Usage(format!("--session {s}: not a session id, and {e}")))?;
    let t = text.trim();
    if is_id(t) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(CliError::Usage(format!("{s}: does not hold a session id")))
    }
}

/// Seconds of an answer's `Retry-After` header (the delay form).
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(300)))
}

/// Outcome of one submission or poll that the client may retry.
enum Attempt<T> {
    Done(T),
    /// Retry after this long (a 429's Retry-After, or the client's back-off).
    Again(Option<Duration>, String),
}

/// Doubles `backoff` up to 5 s.
fn grow(backoff: Duration) -> Duration {
    (backoff * 2).min(Duration::from_secs(5))
}

/// Sleeps `wait` unless past `deadline`.
async fn pause(wait: Duration, deadline: Instant, why: &str) -> Result<(), CliError> {
    if Instant::now() + wait > deadline {
        return Err(CliError::Usage(format!("gave up: {why}")));
    }
    tokio::time::sleep(wait).await;
    Ok(())
}

/// Submits `body` as a job of `session`: retries on 429 (after its Retry-After), on
/// connection errors and on 502/503/504 (a restarting server), until `deadline`.
pub async fn submit(
    http: &reqwest::Client,
    server: &str,
    token: &Token,
    session: &str,
    body: &[u8],
    deadline: Instant,
) -> Result<(String, usize), CliError> {
    let url = format!(
        "{}/v1/sessions/{session}/jobs",
        server.trim_end_matches('/')
    );
    let mut backoff = Duration::from_millis(100);
    let mut refused = 0;
    loop {
        let sent = http
            .post(&url)
            .bearer_auth(token.expose())
            .header("content-type", "application/octet-stream")
            .body(body.to_vec())
            .send()
            .await;
        let attempt = match sent {
            Err(e) => Attempt::Again(None, e.to_string()),
            Ok(resp) => match resp.status().as_u16() {
                202 => {
                    let v: Value = resp.json().await.map_err(DeployError::from)?;
                    let id = v["job_id"]
                        .as_str()
                        .ok_or_else(|| CliError::Usage(format!("{url}: no job id in {v}")))?;
                    Attempt::Done(id.to_string())
                }
                429 => {
                    refused += 1;
                    Attempt::Again(retry_after(&resp), "the queue is full".into())
                }
                502..=504 => Attempt::Again(retry_after(&resp), format!("HTTP {}", resp.status())),
                _ => {
                    return Err(net::check(&url, resp).await.err().map_or_else(
                        || CliError::Usage(format!("{url}: unexpected answer")),
                        CliError::from,
                    ));
                }
            },
        };
        match attempt {
            Attempt::Done(id) => return Ok((id, refused)),
            Attempt::Again(after, why) => {
                let wait = after.unwrap_or(backoff);
                backoff = grow(backoff);
                pause(wait, deadline, &format!("{url}: {why}")).await?;
            }
        }
    }
}

/// Waits for job `id`'s outputs (long polls of up to 20 s; connection errors and 5xx other
/// than a failed job are retried with back-off until `deadline`).
pub async fn fetch(
    http: &reqwest::Client,
    server: &str,
    token: &Token,
    id: &str,
    deadline: Instant,
) -> Result<Vec<u8>, CliError> {
    let base = format!("{}/v1/jobs/{id}", server.trim_end_matches('/'));
    let mut backoff = Duration::from_millis(100);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CliError::Usage(format!(
                "gave up: {base} still pending (raise --timeout)"
            )));
        }
        let wait = left.as_secs_f64().min(20.0);
        let url = format!("{base}?wait={wait:.1}");
        let asked = Instant::now();
        let attempt = match http.get(&url).bearer_auth(token.expose()).send().await {
            Err(e) => Attempt::<()>::Again(None, e.to_string()),
            Ok(resp) => match resp.status().as_u16() {
                200 => {
                    let bytes = resp.bytes().await.map_err(DeployError::from)?;
                    return Ok(bytes.to_vec());
                }
                // Pending: poll again at once after a long poll, after Retry-After when the
                // server answered early.
                202 if asked.elapsed().as_secs_f64() + 0.5 >= wait => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                202 | 429 | 502..=504 => {
                    Attempt::Again(retry_after(&resp), format!("HTTP {}", resp.status()))
                }
                _ => {
                    return Err(net::check(&base, resp).await.err().map_or_else(
                        || CliError::Usage(format!("{base}: unexpected answer")),
                        CliError::from,
                    ));
                }
            },
        };
        if let Attempt::Again(after, why) = attempt {
            let w = after.map_or(backoff, |a| a.min(backoff.max(Duration::from_secs(1))));
            backoff = grow(backoff);
            pause(w, deadline, &format!("{base}: {why}")).await?;
        }
    }
}

async fn run(a: &RunArgs) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let http = net::client(a.server.ca.as_deref())?;
    let token = Token::read(&a.token_file)?;
    let session = session_id(&a.session)?;
    let inputs = hecnn_nn::compile::read_bounded(&a.input, MAX_IMAGES_BYTES)?;
    let t = Instant::now();
    let (job, refused) =
        submit(&http, &a.server.server, &token, &session, &inputs, deadline).await?;
    eprintln!(
        "job {job} accepted{}",
        if refused > 0 {
            format!(" after {refused} refusals (queue full)")
        } else {
            String::new()
        }
    );
    let outputs = fetch(&http, &a.server.server, &token, &job, deadline).await?;
    files::write_atomic(&a.out, &outputs)?;
    // The result is stored; removing it from the server is a courtesy (it expires anyway).
    let url = a.server.url(&format!("/v1/jobs/{job}"));
    if let Err(e) = http.delete(&url).bearer_auth(token.expose()).send().await {
        eprintln!("warning: the result was not deleted on the server: {e}");
    }
    println!(
        "job {job}: outputs in {} ({}) after {:.2} s",
        a.out.display(),
        human_bytes(outputs.len()),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
