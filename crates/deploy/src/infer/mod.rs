//! Encrypted inference as a service (`hecnn serve`): HCNN's deep learning as a service.
//!
//! The service loads one compiled model ([`hecnn_nn::compile::CompiledModel`]) and
//! evaluates it on clients' encrypted images with their evaluation keys; it never holds a
//! secret key. HTTP API (bulk bodies are the library's binary formats, everything else is
//! JSON):
//!
//! | route | token | what |
//! |---|---|---|
//! | `GET /v1/health` | – | liveness, the model's name, fingerprint and packing |
//! | `GET /v1/metrics` | – | Prometheus text: requests by route and status, queue depth, jobs in flight, latency histograms |
//! | `GET /v1/spec` | – | the model's client spec (`HCNC`): all a client needs to make keys, encrypt and decrypt |
//! | `POST /v1/clients` `{"name"}` | admin | creates a client; answers its token once (201) |
//! | `GET /v1/clients` | admin | the clients and their sessions |
//! | `POST /v1/sessions` | client | body: evaluation keys; checked against the plan, stored; answers the session id (201, or 200 for keys already registered) |
//! | `GET /v1/sessions/{id}` | client | the session: key pair, model, jobs |
//! | `DELETE /v1/sessions/{id}` | client | removes the session and its keys (204; 409 while a job of it is pending) |
//! | `POST /v1/sessions/{id}/jobs` | client | body: encrypted inputs (`HCNB`); checked, stored, queued (202 with the job id; 429 with `Retry-After` when the queue is full) |
//! | `GET /v1/jobs/{id}?wait=SECS` | client | 202 while pending (waiting up to `wait` seconds for the result first), 200 with the encrypted outputs (`HCNB`) |
//! | `DELETE /v1/jobs/{id}` | client | removes a finished job's result (204) |
//!
//! A client sees only its own sessions and jobs: another client's are answered 404.
//!
//! Durability: a job's inputs and record are written atomically (fsync and rename) before
//! its 202, its outputs before its record says done; at start-up pending jobs are queued
//! again and finished results served, so `kill -9` loses no accepted job. Evaluation keys
//! are stored with their session; after a restart a session's evaluator is rebuilt from
//! them on its first job. Results are removed after their time to live.

mod api;
mod metrics;
mod store;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hecnn_nn::compile::{
    CompiledModel, EncryptedImages, ImagesKind, IoLayout, PackingKind, Server, ServerPlan,
};
use hecnn_ring::Backend;
use hecnn_rlwe::EvaluationKeys;
use tokio::sync::{mpsc, watch};

use self::metrics::{Gauges, Metrics};
use self::store::{ClientRecord, JobRecord, JobState, SessionRecord, Store, now_ms};
use crate::auth::{Token, TokenHash, hex};
use crate::net::{Server as HttpServer, TlsFiles};
use crate::{DeployError, files};

/// Settings of the inference service.
#[derive(Clone, Debug)]
pub struct InferConfig {
    /// State directory: tokens, clients, sessions (with their evaluation keys), jobs.
    pub state_dir: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Serve over TLS with these files.
    pub tls: Option<TlsFiles>,
    /// Jobs that may wait for a worker; beyond, submissions get 429 with `Retry-After`.
    pub queue: usize,
    /// Jobs evaluated at once (each on the shared worker threads).
    pub workers: usize,
    /// How long a finished job's result is kept.
    pub result_ttl: Duration,
    /// Most images of one job (single-image packing; a batch-packed job is one batch).
    pub max_job_images: usize,
    /// Sessions whose evaluators are kept in memory at once; the least recently used one is
    /// dropped beyond (and rebuilt from its stored keys when needed).
    pub max_loaded_sessions: usize,
    /// Sessions one client may hold.
    pub max_sessions_per_client: usize,
}

impl InferConfig {
    /// Defaults: loopback, an ephemeral port, a queue of 4 jobs, 1 worker on all cores,
    /// results kept 1 hour, jobs of at most 64 images, 4 evaluators in memory, 4 sessions
    /// per client.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            listen: "127.0.0.1:0".into(),
            tls: None,
            queue: 4,
            workers: 1,
            result_ttl: Duration::from_secs(3600),
            max_job_images: 64,
            max_loaded_sessions: 4,
            max_sessions_per_client: 4,
        }
    }
}

/// Most seconds a `GET /v1/jobs/{id}?wait=` waits.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// A registered session and, while loaded, its evaluator.
pub(crate) struct Session<B: Backend> {
    pub(crate) rec: SessionRecord,
    pub(crate) key_id: [u8; 32],
    server: Mutex<Option<Arc<Server<B>>>>,
    last_used: AtomicU64,
}

/// A job as the service tracks it.
#[derive(Clone, Debug)]
pub(crate) struct JobEntry {
    pub(crate) rec: JobRecord,
    /// Being evaluated now.
    pub(crate) running: bool,
}

/// Clients, sessions and jobs (a short lock, never held across an await or a file write
/// of bulk data).
pub(crate) struct Registry<B: Backend> {
    pub(crate) clients: HashMap<String, ClientRecord>,
    pub(crate) by_token: HashMap<[u8; 32], String>,
    pub(crate) sessions: HashMap<String, Arc<Session<B>>>,
    pub(crate) jobs: HashMap<String, JobEntry>,
}

impl<B: Backend> Default for Registry<B> {
    fn default() -> Self {
        Self {
            clients: HashMap::new(),
            by_token: HashMap::new(),
            sessions: HashMap::new(),
            jobs: HashMap::new(),
        }
    }
}

/// A job handed to a worker, with its inputs when they are already decoded.
pub(crate) struct Queued<B: Backend> {
    id: String,
    inputs: Option<EncryptedImages<B>>,
}

/// The service's shared state.
pub(crate) struct Infer<B: Backend> {
    pub(crate) config: InferConfig,
    pub(crate) plan: ServerPlan,
    pub(crate) spec_bytes: Vec<u8>,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) model_name: String,
    pub(crate) be: B,
    pub(crate) store: Store,
    pub(crate) admin: TokenHash,
    /// Switching keys a session may register (relinearization and the plan's rotations).
    pub(crate) max_keys: usize,
    /// The Galois elements of the plan's rotation keys.
    galois: BTreeSet<usize>,
    /// Held while a session is registered.
    registering: Mutex<()>,
    /// Largest evaluation-key body.
    pub(crate) key_limit: usize,
    /// Largest job body.
    pub(crate) job_limit: usize,
    pub(crate) reg: Mutex<Registry<B>>,
    queue: mpsc::UnboundedSender<Queued<B>>,
    /// Jobs accepted and not finished (waiting or running), and slots reserved by uploads.
    pub(crate) admitted: AtomicUsize,
    /// Jobs being evaluated.
    pub(crate) running: AtomicUsize,
    /// Counts finished jobs; long polls wait on it.
    pub(crate) finished: watch::Sender<u64>,
    pub(crate) metrics: Arc<Metrics>,
    tick: AtomicU64,
}

/// Bytes of one ciphertext at the top level: two polynomials of `n` coefficients per
/// modulus, eight bytes each, and a small header.
fn ciphertext_bytes(n: usize, moduli: usize) -> usize {
    2usize
        .saturating_mul(n)
        .saturating_mul(moduli)
        .saturating_mul(8)
        .saturating_add(256)
}

/// The largest job body for `plan`: the input ciphertexts of one batch, or of
/// `max_images` single-packed images, with room for the envelope.
fn job_limit(plan: &ServerPlan, max_images: usize) -> usize {
    let spec = plan.client_spec();
    let params = spec.params();
    let ct = ciphertext_bytes(params.rlwe().n(), params.max_level() + 1);
    let cts = match spec.io() {
        IoLayout::Batch { .. } => spec.io().input_cts(),
        IoLayout::Single { .. } => spec.io().input_cts().saturating_mul(max_images),
    };
    cts.saturating_mul(ct.saturating_add(16))
        .saturating_add(64 << 10)
}

impl<B: Backend + Clone> Infer<B> {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Registry<B>> {
        self.reg.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Most jobs accepted and not finished before submissions get 429.
    pub(crate) fn capacity(&self) -> usize {
        self.config.queue.max(1) + self.config.workers.max(1)
    }

    /// Most images per job.
    pub(crate) fn max_job_images(&self) -> usize {
        match self.plan.packing() {
            PackingKind::Batch => self.plan.client_spec().max_images(),
            PackingKind::Single => self
                .config
                .max_job_images
                .clamp(1, self.plan.client_spec().max_images()),
        }
    }

    /// Seconds a refused submission should wait: the queue ahead at the mean evaluation
    /// time, 1 to 60.
    pub(crate) fn retry_after(&self) -> u64 {
        let waiting = self.admitted.load(Ordering::Relaxed) as f64;
        let per = self.metrics.eval.mean().unwrap_or(1.0);
        let secs = (waiting * per / self.config.workers.max(1) as f64).ceil();
        (secs as u64).clamp(1, 60)
    }

    /// The current gauges.
    pub(crate) fn gauges(&self) -> Gauges {
        let reg = self.lock();
        let running = self.running.load(Ordering::Relaxed);
        let pending = reg
            .jobs
            .values()
            .filter(|j| j.rec.state == JobState::Pending)
            .count();
        Gauges {
            queued: pending.saturating_sub(running),
            running,
            queue_capacity: self.config.queue.max(1),
            results: reg.jobs.len() - pending,
            clients: reg.clients.len(),
            sessions: reg.sessions.len(),
            loaded: reg
                .sessions
                .values()
                .filter(|s| s.server.try_lock().map_or(true, |g| g.is_some()))
                .count(),
        }
    }

    /// Registers a session (or finds the client's session for the same key pair): the
    /// keys are checked against the plan, stored, and their evaluator built and kept.
    /// Returns the session and whether it is new.
    pub(crate) fn register(
        &self,
        client: &str,
        bytes: &[u8],
    ) -> Result<(Arc<Session<B>>, bool), SessionError> {
        let keys =
            EvaluationKeys::from_bytes(&self.be, self.plan.params().rlwe(), bytes, self.max_keys)
                .map_err(SessionError::Keys)?;
        self.plan.check_keys(&keys).map_err(SessionError::Plan)?;
        if let Some(g) = keys.galois_elements().find(|g| !self.galois.contains(g)) {
            return Err(SessionError::Plan(hecnn_nn::NnError::Mismatch {
                what: "evaluation keys",
                expected: format!("the {} rotation keys the plan uses", self.galois.len()),
                found: format!("also one for Galois element {g}"),
            }));
        }
        let key_id = keys.key_id();
        // One registration at a time, so a key pair sent twice at once makes one session.
        let _one = self
            .registering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        {
            let reg = self.lock();
            let mine: Vec<&Arc<Session<B>>> = reg
                .sessions
                .values()
                .filter(|s| s.rec.client == client)
                .collect();
            if let Some(s) = mine.iter().find(|s| s.key_id == key_id) {
                return Ok((Arc::clone(s), false));
            }
            if mine.len() >= self.config.max_sessions_per_client {
                return Err(SessionError::TooMany(self.config.max_sessions_per_client));
            }
        }
        let rec = SessionRecord {
            id: store::new_id()?,
            client: client.to_string(),
            key_id: hex(&key_id),
            model: hex(&self.fingerprint),
            created_ms: now_ms(),
        };
        let server = Server::new(self.plan.clone(), keys, self.be.clone()).map_err(|e| {
            SessionError::Other(DeployError::Config(format!("building the evaluator: {e}")))
        })?;
        self.store.put_session(&rec, bytes)?;
        let session = Arc::new(Session {
            rec,
            key_id,
            server: Mutex::new(Some(Arc::new(server))),
            last_used: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
        });
        self.lock()
            .sessions
            .insert(session.rec.id.clone(), Arc::clone(&session));
        self.evict(&session.rec.id);
        Ok((session, true))
    }

    /// The evaluator of `session`, built from its stored keys when not loaded.
    fn server(&self, session: &Session<B>) -> Result<Arc<Server<B>>, DeployError> {
        session
            .last_used
            .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        let mut slot = session
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = &*slot {
            return Ok(Arc::clone(s));
        }
        let path = self.store.keys_file(&session.rec.id);
        let bytes = hecnn_nn::compile::read_bounded(&path, self.key_limit as u64)?;
        let keys =
            EvaluationKeys::from_bytes(&self.be, self.plan.params().rlwe(), &bytes, self.max_keys)?;
        let server = Arc::new(Server::new(self.plan.clone(), keys, self.be.clone())?);
        *slot = Some(Arc::clone(&server));
        drop(slot);
        eprintln!("session {}: evaluator loaded", session.rec.id);
        self.evict(&session.rec.id);
        Ok(server)
    }

    /// Drops the least recently used evaluators beyond the configured number (never
    /// `keep`'s, never one being built).
    fn evict(&self, keep: &str) {
        let sessions: Vec<Arc<Session<B>>> = self.lock().sessions.values().cloned().collect();
        let mut loaded: Vec<(u64, Arc<Session<B>>)> = sessions
            .into_iter()
            .filter(|s| s.rec.id != keep && s.server.try_lock().is_ok_and(|g| g.is_some()))
            .map(|s| (s.last_used.load(Ordering::Relaxed), s))
            .collect();
        loaded.sort_by_key(|(t, _)| *t);
        let room = self.config.max_loaded_sessions.max(1) - 1;
        let excess = loaded.len().saturating_sub(room);
        for (_, s) in loaded.into_iter().take(excess) {
            if let Ok(mut g) = s.server.try_lock() {
                *g = None;
            }
        }
    }

    /// Evaluates one job and stores its outcome (blocking).
    fn process(&self, job: Queued<B>) {
        let t = Instant::now();
        let rec = {
            let mut reg = self.lock();
            match reg.jobs.get_mut(&job.id) {
                Some(e) if e.rec.state == JobState::Pending => {
                    e.running = true;
                    e.rec.clone()
                }
                // Removed meanwhile (its session was deleted).
                _ => {
                    drop(reg);
                    self.admitted.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        let outcome = self.evaluate(&rec, job.inputs);
        let mut rec = rec;
        rec.finished_ms = Some(now_ms());
        let stored = match outcome {
            Ok((bytes, eval_seconds)) => {
                rec.state = JobState::Done;
                rec.eval_seconds = Some(eval_seconds);
                let r = self.store.put_result(&rec, &bytes);
                if r.is_ok() {
                    self.metrics.eval.observe(eval_seconds);
                    self.metrics.images.fetch_add(rec.images, Ordering::Relaxed);
                    self.metrics.jobs_done.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            eprintln!("job {}: {e}", rec.id);
            rec.state = JobState::Failed;
            rec.eval_seconds = None;
            rec.error = Some(e.to_string());
            if let Err(e) = self.store.put_failure(&rec) {
                eprintln!("job {}: the failure was not recorded: {e}", rec.id);
            }
            self.metrics.jobs_failed.fetch_add(1, Ordering::Relaxed);
        }
        let accepted = rec.accepted_ms;
        if let Some(e) = self.lock().jobs.get_mut(&rec.id) {
            e.running = false;
            e.rec = rec;
        }
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.admitted.fetch_sub(1, Ordering::Relaxed);
        let queued_ms = now_ms().saturating_sub(accepted);
        self.metrics
            .job
            .observe((queued_ms as f64 / 1e3).max(t.elapsed().as_secs_f64()));
        self.finished.send_modify(|n| *n += 1);
    }

    /// Runs a job: its session's evaluator on its inputs; the serialized outputs and the
    /// seconds taken.
    fn evaluate(
        &self,
        rec: &JobRecord,
        inputs: Option<EncryptedImages<B>>,
    ) -> Result<(Vec<u8>, f64), DeployError> {
        let session = self
            .lock()
            .sessions
            .get(&rec.session)
            .cloned()
            .ok_or_else(|| DeployError::Config(format!("session {} is gone", rec.session)))?;
        let inputs = match inputs {
            Some(i) => i,
            None => {
                let path = self.store.input_file(&rec.id);
                let bytes = hecnn_nn::compile::read_bounded(&path, self.job_limit as u64)?;
                EncryptedImages::from_bytes(
                    &self.be,
                    self.plan.client_spec(),
                    ImagesKind::Inputs,
                    &bytes,
                )?
            }
        };
        let server = self.server(&session)?;
        let t = Instant::now();
        let out = server.run(inputs, |_, _| {})?;
        let bytes = out.to_bytes(&self.be, self.plan.params())?;
        Ok((bytes, t.elapsed().as_secs_f64()))
    }

    /// Queues an accepted job.
    pub(crate) fn enqueue(&self, id: String, inputs: Option<EncryptedImages<B>>) {
        if self.queue.send(Queued { id, inputs }).is_err() {
            eprintln!("the job queue is closed");
        }
    }

    /// Removes the results whose time to live has passed (blocking).
    fn sweep(&self) {
        let ttl = u64::try_from(self.config.result_ttl.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let expired: Vec<String> = {
            let mut reg = self.lock();
            let ids: Vec<String> = reg
                .jobs
                .values()
                .filter(|j| {
                    j.rec.state != JobState::Pending
                        && j.rec
                            .finished_ms
                            .is_some_and(|f| now.saturating_sub(f) >= ttl)
                })
                .map(|j| j.rec.id.clone())
                .collect();
            for id in &ids {
                reg.jobs.remove(id);
            }
            ids
        };
        for id in expired {
            if let Err(e) = self.store.delete_job(&id) {
                eprintln!("job {id}: {e}");
            }
            self.metrics.expired.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Why a session was not registered.
#[derive(Debug)]
pub(crate) enum SessionError {
    /// The body is not evaluation keys of the model's parameters.
    Keys(hecnn_rlwe::RlweError),
    /// The keys lack one the plan needs.
    Plan(hecnn_nn::NnError),
    /// The client holds the most sessions allowed.
    TooMany(usize),
    /// Anything else (storage).
    Other(DeployError),
}

impl From<DeployError> for SessionError {
    fn from(e: DeployError) -> Self {
        Self::Other(e)
    }
}

/// A running inference service.
pub struct InferHandle {
    /// The base address it serves, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Where the administrator token is (written at the first start, mode 0600).
    pub admin_token_file: PathBuf,
    /// Jobs found pending at start and queued again.
    pub recovered_jobs: usize,
    task: tokio::task::JoinHandle<()>,
}

impl InferHandle {
    /// Serves until the process ends (or the server task fails).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Stops serving (the workers finish the job they run and stop taking others once the
    /// runtime ends).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// The administrator token's hash: read from the state, or a new token written (mode 0600)
/// with its hash at the first start.
fn admin_hash(store: &Store) -> Result<TokenHash, DeployError> {
    let hash_file = store.admin_hash_file();
    match std::fs::read_to_string(&hash_file) {
        Ok(s) => store::unhex32(s.trim())
            .map(TokenHash)
            .ok_or_else(|| DeployError::Config(format!("{}: malformed", hash_file.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = Token::generate()?;
            files::write_private(
                &store.admin_token_file(),
                format!("{}\n", token.expose()).as_bytes(),
            )?;
            let hash = token.hash();
            files::write_atomic(&hash_file, format!("{}\n", hex(&hash.0)).as_bytes())?;
            Ok(hash)
        }
        Err(e) => Err(DeployError::io(&hash_file, e)),
    }
}

/// Opens the state (clients, sessions, jobs; pending jobs queued again), starts the
/// workers and the result sweeper, and serves the API for `model`. Evaluations run on `be`
/// (the binary passes a CPU backend sized by `--threads`).
///
/// # Errors
/// Configuration, state-directory and listening errors.
pub async fn start<B: Backend + Clone>(
    config: InferConfig,
    model: &CompiledModel,
    be: B,
) -> Result<InferHandle, DeployError> {
    if model.refresh().is_some() {
        return Err(DeployError::Config(format!(
            "'{}' bootstraps, and clients cannot upload bootstrapping's encapsulation keys yet: \
             serve it compiled with --bootstrap never, or run it with `hecnn keygen` and `hecnn run` \
             or `hecnn eval`",
            model.name()
        )));
    }
    let store = Store::open(&config.state_dir)?;
    let admin = admin_hash(&store)?;
    let plan = model.server_plan();
    let spec_bytes = plan.client_spec().to_bytes()?;
    let fingerprint = model.fingerprint();
    let galois = plan
        .key_requirements()
        .galois_elements(plan.params().rlwe());
    let max_keys = 1 + galois.len();
    let key_limit = max_keys
        .saturating_mul(plan.params().rlwe().switching_key_bytes() + 4096)
        .max(1 << 16);
    let job_limit = job_limit(&plan, config.max_job_images.max(1));

    let mut reg = Registry::default();
    for c in store.load_clients()? {
        if let Some(h) = c.hash() {
            reg.by_token.insert(h.0, c.id.clone());
            reg.clients.insert(c.id.clone(), c);
        }
    }
    let model_hex = hex(&fingerprint);
    for s in store.load_sessions()? {
        let key_id = store::unhex32(&s.key_id);
        match key_id {
            Some(key_id) if s.model == model_hex && reg.clients.contains_key(&s.client) => {
                reg.sessions.insert(
                    s.id.clone(),
                    Arc::new(Session {
                        rec: s,
                        key_id,
                        server: Mutex::new(None),
                        last_used: AtomicU64::new(0),
                    }),
                );
            }
            _ => eprintln!(
                "session {}: registered for another model or client; not served",
                s.id
            ),
        }
    }
    let mut pending = Vec::new();
    for mut j in store.load_jobs()? {
        if j.state == JobState::Pending && !reg.sessions.contains_key(&j.session) {
            j.state = JobState::Failed;
            j.finished_ms = Some(now_ms());
            j.error = Some("its session is not served by this model".into());
            store.put_failure(&j)?;
        }
        if j.state == JobState::Pending {
            pending.push((j.accepted_ms, j.id.clone()));
        }
        reg.jobs.insert(
            j.id.clone(),
            JobEntry {
                rec: j,
                running: false,
            },
        );
    }
    pending.sort();

    let server = HttpServer::bind(&config.listen, config.tls.as_ref()).await?;
    let url = server.url()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (finished, _) = watch::channel(0u64);
    let admin_token_file = store.admin_token_file();
    let infer = Arc::new(Infer {
        plan,
        spec_bytes,
        fingerprint,
        model_name: model.name().to_string(),
        be,
        store,
        admin,
        max_keys,
        galois,
        registering: Mutex::new(()),
        key_limit,
        job_limit,
        reg: Mutex::new(reg),
        queue: tx,
        admitted: AtomicUsize::new(pending.len()),
        running: AtomicUsize::new(0),
        finished,
        metrics: Arc::new(Metrics::default()),
        tick: AtomicU64::new(1),
        config,
    });
    let recovered_jobs = pending.len();
    for (_, id) in pending {
        infer.enqueue(id, None);
    }
    if recovered_jobs > 0 {
        eprintln!("{recovered_jobs} pending jobs queued again");
    }
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..infer.config.workers.max(1) {
        tokio::spawn(worker(Arc::clone(&infer), Arc::clone(&rx)));
    }
    tokio::spawn(sweeper(Arc::clone(&infer)));
    let task = tokio::spawn(server.serve(api::router(infer)));
    Ok(InferHandle {
        url,
        admin_token_file,
        recovered_jobs,
        task,
    })
}

/// Takes queued jobs one at a time and evaluates each on the blocking pool.
async fn worker<B: Backend + Clone>(
    infer: Arc<Infer<B>>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued<B>>>>,
) {
    loop {
        let job = rx.lock().await.recv().await;
        let Some(job) = job else { return };
        let i = Arc::clone(&infer);
        if let Err(e) = tokio::task::spawn_blocking(move || i.process(job)).await {
            eprintln!("worker: {e}");
        }
    }
}

/// Removes expired results, a few times per time to live.
async fn sweeper<B: Backend + Clone>(infer: Arc<Infer<B>>) {
    let every =
        (infer.config.result_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let i = Arc::clone(&infer);
        let _ = tokio::task::spawn_blocking(move || i.sweep()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hecnn_ring::CpuBackend;

    #[test]
    fn the_ciphertext_size_bound_is_what_the_library_writes() {
        use hecnn_nn::compile::{self, Client, CompileOptions, PackingRequest};
        use hecnn_nn::{
            Model, Op, Tensor,
            ir::{Dense, Node},
        };
        use hecnn_ring::Prng;
        use hecnn_rlwe::SecurityLevel;
        let model = Model {
            name: "tiny".into(),
            input_shape: [1, 2, 2],
            nodes: vec![
                Node {
                    name: "x".into(),
                    op: Op::Input,
                    inputs: vec![],
                },
                Node {
                    name: "sq".into(),
                    op: Op::Poly(vec![0.0, 0.0, 1.0]),
                    inputs: vec![0],
                },
                Node {
                    name: "fc".into(),
                    op: Op::Dense(Dense {
                        weight: Tensor::new(vec![2, 4], vec![1.0; 8]).unwrap(),
                        bias: vec![0.0, 0.0],
                    }),
                    inputs: vec![1],
                },
            ],
            output: 2,
        };
        let be = CpuBackend::new(1).unwrap();
        for packing in [PackingRequest::Batch, PackingRequest::Single] {
            let opts = CompileOptions {
                packing,
                log_n: 11,
                security: SecurityLevel::UncheckedForReproduction,
                ..CompileOptions::default()
            };
            let c = compile::compile(&model, &opts).unwrap();
            let client = Client::new(c.client_spec(), be.clone()).unwrap();
            let mut rng = Prng::from_entropy().unwrap();
            let keys = client.keygen(&mut rng).unwrap();
            let image = Tensor::new(vec![1, 2, 2], vec![0.5; 4]).unwrap();
            let images = vec![image; 3];
            let bytes = client
                .encrypt(&keys.public, &images, &mut rng)
                .unwrap()
                .to_bytes(&be, c.params())
                .unwrap();
            let limit = job_limit(&c.server_plan(), 3);
            assert!(
                bytes.len() <= limit,
                "{packing:?}: {} > {limit}",
                bytes.len()
            );
            assert!(
                bytes.len() * 2 > limit,
                "{packing:?}: {} ≪ {limit}",
                bytes.len()
            );
        }
    }
}
