//! The inference service's HTTP handlers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hecnn_nn::compile::{EncryptedImages, ImagesHeader, ImagesKind};
use hecnn_rlwe::RlweError;
use serde::Deserialize;
use serde_json::json;

use super::store::{ClientRecord, JobRecord, JobState, is_id, new_id, now_ms};
use hecnn_ring::Backend;

use super::{Infer, JobEntry, MAX_WAIT_SECONDS, Session, SessionError, metrics};
use crate::ApiError;
use crate::auth::{Token, bearer, hex};
use crate::body::read_body;
use crate::wire::check_input_id;

type Api<T> = Result<T, ApiError>;

pub(crate) fn router<B: Backend + Clone>(infer: Arc<Infer<B>>) -> Router {
    let m = Arc::clone(&infer.metrics);
    Router::new()
        .route("/v1/health", get(health::<B>))
        .route("/v1/metrics", get(metrics_text::<B>))
        .route("/v1/spec", get(spec::<B>))
        .route("/v1/clients", post(add_client::<B>).get(list_clients::<B>))
        .route("/v1/sessions", post(add_session::<B>))
        .route(
            "/v1/sessions/{id}",
            get(get_session::<B>).delete(delete_session::<B>),
        )
        .route("/v1/sessions/{id}/jobs", post(add_job::<B>))
        .route("/v1/jobs/{id}", get(get_job::<B>).delete(delete_job::<B>))
        .fallback(|| async {
            ApiError::not_found("no_route", "no such route (the API is under /v1)")
        })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(infer)
        .layer(axum::middleware::from_fn_with_state(m, metrics::count))
}

/// Who calls.
enum Caller {
    Admin,
    Client(String),
}

fn caller<B: Backend + Clone>(infer: &Infer<B>, headers: &HeaderMap) -> Api<Caller> {
    let t = bearer(headers)?;
    if infer.admin.verify(&t) {
        return Ok(Caller::Admin);
    }
    infer
        .lock()
        .by_token
        .get(&t.hash().0)
        .cloned()
        .map(Caller::Client)
        .ok_or_else(ApiError::unauthorized)
}

fn forbidden(what: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", what.to_string())
}

fn require_admin<B: Backend + Clone>(infer: &Infer<B>, headers: &HeaderMap) -> Api<()> {
    match caller(infer, headers)? {
        Caller::Admin => Ok(()),
        Caller::Client(_) => Err(forbidden(
            "a client token may not manage clients (use the administrator token)",
        )),
    }
}

fn require_client<B: Backend + Clone>(infer: &Infer<B>, headers: &HeaderMap) -> Api<String> {
    match caller(infer, headers)? {
        Caller::Client(id) => Ok(id),
        Caller::Admin => Err(forbidden(
            "the administrator token may not register keys or submit jobs (use a client token from POST /v1/clients)",
        )),
    }
}

fn unknown_session() -> ApiError {
    ApiError::not_found("unknown_session", "no such session for this client")
}

fn unknown_job() -> ApiError {
    ApiError::not_found(
        "unknown_job",
        "no such job for this client (or its result expired or was deleted)",
    )
}

/// `client`'s session `id`; another client's is unknown.
fn session_of<B: Backend + Clone>(
    infer: &Infer<B>,
    client: &str,
    id: &str,
) -> Api<Arc<Session<B>>> {
    if !is_id(id) {
        return Err(unknown_session());
    }
    infer
        .lock()
        .sessions
        .get(id)
        .filter(|s| s.rec.client == client)
        .cloned()
        .ok_or_else(unknown_session)
}

/// `client`'s job `id`; another client's, or an expired result, is unknown.
fn job_of<B: Backend + Clone>(infer: &Infer<B>, client: &str, id: &str) -> Api<JobEntry> {
    if !is_id(id) {
        return Err(unknown_job());
    }
    let ttl = u64::try_from(infer.config.result_ttl.as_millis()).unwrap_or(u64::MAX);
    let now = now_ms();
    infer
        .lock()
        .jobs
        .get(id)
        .filter(|j| j.rec.client == client)
        .filter(|j| {
            j.rec
                .finished_ms
                .is_none_or(|f| now.saturating_sub(f) < ttl)
        })
        .cloned()
        .ok_or_else(unknown_job)
}

fn with_header(mut resp: Response, name: header::HeaderName, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
    resp
}

async fn health<B: Backend + Clone>(State(infer): State<Arc<Infer<B>>>) -> impl IntoResponse {
    Json(json!({
        "service": "hecnn-serve",
        "api": 1,
        "model": infer.model_name,
        "fingerprint": hex(&infer.fingerprint),
        "packing": infer.plan.packing().to_string(),
    }))
}

async fn metrics_text<B: Backend + Clone>(State(infer): State<Arc<Infer<B>>>) -> Response {
    let text = infer.metrics.render(&infer.gauges());
    with_header(
        text.into_response(),
        header::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8",
    )
}

async fn spec<B: Backend + Clone>(State(infer): State<Arc<Infer<B>>>) -> Response {
    with_header(
        infer.spec_bytes.clone().into_response(),
        header::CONTENT_TYPE,
        "application/octet-stream",
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Api<T> + Send + 'static) -> Api<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

#[derive(Deserialize)]
struct NewClient {
    name: String,
}

async fn add_client<B: Backend + Clone>(
    State(infer): State<Arc<Infer<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Api<Response> {
    require_admin(&infer, &headers)?;
    let bytes = read_body(&headers, body, 64 << 10).await?;
    let req: NewClient = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    check_input_id(&req.name).map_err(|e| ApiError::bad_request(format!("client name: {e}")))?;
    let token = Token::generate().map_err(ApiError::internal)?;
    let rec = ClientRecord {
        id: new_id().map_err(ApiError::internal)?,
        name: req.name,
        token_hash: hex(&token.hash().0),
        created_ms: now_ms(),
    };
    let i = Arc::clone(&infer);
    let r = rec.clone();
    let hash = token.hash().0;
    blocking(move || {
        // Checked and stored under the lock, so two requests cannot both take a name.
        let mut reg = i.lock();
        if reg.clients.values().any(|c| c.name == r.name) {
            return Err(ApiError::conflict(
                "client_exists",
                format!("a client named {:?} exists", r.name),
            ));
        }
        i.store.put_client(&r).map_err(ApiError::internal)?;
        reg.by_token.insert(hash, r.id.clone());
        reg.clients.insert(r.id.clone(), r);
        Ok(())
    })
    .await?;
    eprintln!("client {} ({}) created", rec.name, rec.id);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "client_id": rec.id,
            "name": rec.name,
            "token": token.expose(),
        })),
    )
        .into_response())
}

async fn list_clients<B: Backend + Clone>(
    State(infer): State<Arc<Infer<B>>>,
    headers: HeaderMap,
) -> Api<Response> {
    require_admin(&infer, &headers)?;
    let reg = infer.lock();
    let mut clients: Vec<&ClientRecord> = reg.clients.values().collect();
    clients.sort_by_key(|c| c.created_ms);
    let list: Vec<_> = clients
        .iter()
        .map(|c| {
            json!({
                "client_id": c.id,
                "name": c.name,
                "created_ms": c.created_ms,
                "sessions": reg.sessions.values().filter(|s| s.rec.client == c.id).count(),
            })
        })
        .collect();
    Ok(Json(json!({ "clients": list })).into_response())
}

fn session_json<B: Backend + Clone>(s: &Session<B>, infer: &Infer<B>) -> serde_json::Value {
    let reg = infer.lock();
    let jobs = reg.jobs.values().filter(|j| j.rec.session == s.rec.id);
    let (mut pending, mut finished) = (0, 0);
    for j in jobs {
        if j.rec.state == JobState::Pending {
            pending += 1;
        } else {
            finished += 1;
        }
    }
    json!({
        "session_id": s.rec.id,
        "key_id": s.rec.key_id,
        "model": s.rec.model,
        "created_ms": s.rec.created_ms,
        "jobs_pending": pending,
        "jobs_finished": finished,
    })
}

async fn add_session<B: Backend + Clone>(
    State(infer): State<Arc<Infer<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Api<Response> {
    let client = require_client(&infer, &headers)?;
    let bytes = read_body(&headers, body, infer.key_limit).await?;
    let i = Arc::clone(&infer);
    let (session, new) = blocking(move || {
        i.register(&client, &bytes).map_err(|e| match e {
            SessionError::Keys(
                e @ (RlweError::Malformed { .. }
                | RlweError::UnsupportedVersion { .. }
                | RlweError::WrongKind { .. }),
            ) => ApiError::bad_request(format!("evaluation keys: {e}")),
            SessionError::Keys(RlweError::TooLarge { limit, .. }) => ApiError::too_large(limit),
            SessionError::Keys(e) => ApiError::invalid(format!(
                "evaluation keys: {e} (make them from this server's client spec, GET /v1/spec)"
            )),
            SessionError::Plan(e) => ApiError::invalid(format!(
                "evaluation keys: {e} (make them from this server's client spec, GET /v1/spec)"
            )),
            SessionError::TooMany(n) => ApiError::conflict(
                "too_many_sessions",
                format!("this client holds {n} sessions, the most allowed: delete one first"),
            ),
            SessionError::Other(e) => ApiError::internal(e),
        })
    })
    .await?;
    if new {
        eprintln!(
            "session {} registered for client {}",
            session.rec.id, session.rec.client
        );
    }
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(session_json(&session, &infer))).into_response())
}

async fn get_session<B: Backend + Clone>(
    State(infer): State<Arc<Infer<B>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Api<Response> {
    let client = require_client(&infer, &headers)?;
    let s = session_of(&infer, &client, &id)?;
    Ok(Json(session_json(&s, &infer)).into_response())
}

async fn delete_session<B: Backend + Clone>(
    State(infer): State<Arc<Infer<B>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Api<Response> {
    let client = require_client(&infer, &headers)?;
    let s = session_of(&infer, &client, &id)?;
    let jobs: Vec<String> = {
        let mut reg = infer.lock();
        let mine: Vec<&JobEntry> = reg
            .jobs
            .values()
            .filter(|j| j.rec.session == s.rec.id)
            .collect();
        if mine.iter().any(|j| j.rec.state == JobState::Pending) {
            return Err(ApiError::conflict(
                "session_busy",
                "a job of this session is pending: delete the session once it has finished",
            ));
        }
        let ids: Vec<String> = mine.iter().map(|j| j.rec.id.clone()).collect();
        for j in &ids {
            reg.jobs.remove(j);
        }
        reg.sessions.remove(&s.rec.id);
        ids
    };
    let i = Arc::clone(&infer);
    blocking(move || {
        for j in &jobs {
            i.store.delete_job(j).map_err(ApiError::internal)?;
        }
        i.store
            .delete_session(&s.rec.id)
            .map_err(ApiError::internal)
    })
    .await?;
    eprintln!("session {id} deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A place in the queue, held from before the upload is read until the job is queued;
/// given back when the job is refused.
struct Slot<B: Backend + Clone> {
    infer: Arc<Infer<B>>,
    held: bool,
}

impl<B: Backend + Clone> Slot<B> {
    fn reserve(infer: &Arc<Infer<B>>) -> Option<Self> {
        let cap = infer.capacity();
        infer
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Self {
                infer: Arc::clone(infer),
                held: true,
            })
    }

    /// The slot now counts the queued job (released when the job finishes).
    fn commit(mut self) {
        self.held = false;
    }
}

impl<B: Backend + Clone> Drop for Slot<B> {
    fn drop(&mut self) {
        if self.held {
            self.infer.admitted.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn busy<B: Backend + Clone>(infer: &Infer<B>) -> Response {
    let secs = infer.retry_after();
    let resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "busy",
        format!(
            "the queue is full ({} jobs waiting or running): retry after {secs} s",
            infer.admitted.load(Ordering::Relaxed)
        ),
    )
    .into_response();
    with_header(resp, header::RETRY_AFTER, &secs.to_string())
}

/// Decoded inputs at most this large stay in memory for the worker; larger ones are read
/// back from disk when their turn comes.
const KEEP_DECODED: usize = 64 << 20;

/// Checks a job's inputs against the model and the session, stores them and queues the job.
/// Returns the job id and its number of images.
fn accept<B: Backend + Clone>(
    infer: &Infer<B>,
    client: &str,
    session: &Session<B>,
    bytes: &[u8],
    slot: Slot<B>,
) -> Api<(String, u64)> {
    let short = |id: &[u8; 32]| hex(&id[..6]);
    let h = ImagesHeader::read(bytes)
        .map_err(|e| ApiError::bad_request(format!("not encrypted images: {e}")))?;
    let mismatch = |code, message: String| Err(ApiError::conflict(code, message));
    if h.kind != ImagesKind::Inputs {
        return Err(ApiError::invalid(
            "these are encrypted outputs, not inputs: send what `hecnn encrypt` wrote",
        ));
    }
    let packing = infer.plan.packing();
    if h.packing != packing {
        return mismatch(
            "packing_mismatch",
            format!(
                "the inputs are in {} packing, the served model in {packing} packing: encrypt with this server's client spec (GET /v1/spec)",
                h.packing
            ),
        );
    }
    if h.model != infer.fingerprint {
        return mismatch(
            "model_mismatch",
            format!(
                "the inputs are for compiled model {}, this server runs '{}' ({}): encrypt with this server's client spec (GET /v1/spec)",
                short(&h.model),
                infer.model_name,
                short(&infer.fingerprint)
            ),
        );
    }
    if h.key_id != session.key_id {
        return mismatch(
            "key_mismatch",
            format!(
                "the inputs are encrypted under key pair {}, session {} holds the evaluation keys of key pair {}: use the session of the keys you encrypted with",
                short(&h.key_id),
                session.rec.id,
                short(&session.key_id)
            ),
        );
    }
    let most = infer.max_job_images() as u64;
    if h.images == 0 || h.images > most {
        return Err(ApiError::invalid(format!(
            "{} images in one job; this server takes 1 to {most}",
            h.images
        )));
    }
    let inputs = EncryptedImages::from_bytes(
        &infer.be,
        infer.plan.client_spec(),
        ImagesKind::Inputs,
        bytes,
    )
    .map_err(|e| ApiError::invalid(format!("encrypted inputs: {e}")))?;
    let rec = JobRecord {
        id: new_id().map_err(ApiError::internal)?,
        client: client.to_string(),
        session: session.rec.id.clone(),
        images: h.images,
        accepted_ms: now_ms(),
        state: JobState::Pending,
        finished_ms: None,
        eval_seconds: None,
        error: None,
    };
    infer
        .store
        .put_new_job(&rec, bytes)
        .map_err(ApiError::internal)?;
    let id = rec.id.clone();
    infer.lock().jobs.insert(
        id.clone(),
        JobEntry {
            rec,
            running: false,
        },
    );
    slot.commit();
    infer.enqueue(id.clone(), (bytes.len() <= KEEP_DECODED).then_some(inputs));
    Ok((id, h.images))
}

async fn add_job<B: Backend + Clone>(
    State(infer): State<Arc<Infer<B>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Api<Response> {
    let client = require_client(&infer, &headers)?;
    let session = session_of(&infer, &client, &id)?;
    let Some(slot) = Slot::reserve(&infer) else {
        return Ok(busy(&infer));
    };
    let bytes = read_body(&headers, body, infer.job_limit).await?;
    let i = Arc::clone(&infer);
    let (job, images) = blocking(move || accept(&i, &client, &session, &bytes, slot)).await?;
    let ahead = infer.admitted.load(Ordering::Relaxed).saturating_sub(1);
    let resp = (
        StatusCode::ACCEPTED,
        Json(json!({
            "job_id": job,
            "session_id": id,
            "images": images,
            "jobs_ahead": ahead,
        })),
    )
        .into_response();
    Ok(with_header(
        resp,
        header::LOCATION,
        &format!("/v1/jobs/{job}"),
    ))
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait: Option<f64>,
}

async fn get_job<B: Backend + Clone>(
    State(infer): State<Arc<Infer<B>>>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> Api<Response> {
    let client = require_client(&infer, &headers)?;
    let wait = q
        .wait
        .filter(|w| w.is_finite() && *w > 0.0)
        .map_or(Duration::ZERO, |w| {
            Duration::from_secs_f64(w.min(MAX_WAIT_SECONDS as f64))
        });
    let deadline = Instant::now() + wait;
    let mut finished = infer.finished.subscribe();
    loop {
        let job = job_of(&infer, &client, &id)?;
        match job.rec.state {
            JobState::Pending => {
                let left = deadline.saturating_duration_since(Instant::now());
                let timed_out = left.is_zero()
                    || !matches!(
                        tokio::time::timeout(left, finished.changed()).await,
                        Ok(Ok(()))
                    );
                if timed_out {
                    let resp = (
                        StatusCode::ACCEPTED,
                        Json(json!({
                            "job_id": job.rec.id,
                            "state": if job.running { "running" } else { "queued" },
                            "images": job.rec.images,
                        })),
                    )
                        .into_response();
                    return Ok(with_header(resp, header::RETRY_AFTER, "1"));
                }
            }
            JobState::Done => {
                let path = infer.store.output_file(&job.rec.id);
                let bytes = match tokio::fs::read(&path).await {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(unknown_job());
                    }
                    Err(e) => return Err(ApiError::internal(format!("{}: {e}", path.display()))),
                };
                return Ok(with_header(
                    bytes.into_response(),
                    header::CONTENT_TYPE,
                    "application/octet-stream",
                ));
            }
            JobState::Failed => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "job_failed",
                    format!(
                        "the evaluation failed: {}",
                        job.rec.error.as_deref().unwrap_or("unknown error")
                    ),
                ));
            }
        }
    }
}

async fn delete_job<B: Backend + Clone>(
    State(infer): State<Arc<Infer<B>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Api<Response> {
    let client = require_client(&infer, &headers)?;
    let job = job_of(&infer, &client, &id)?;
    {
        let mut reg = infer.lock();
        if reg
            .jobs
            .get(&id)
            .is_some_and(|j| j.rec.state == JobState::Pending)
        {
            return Err(ApiError::conflict(
                "job_pending",
                "the job has not finished: delete it once its result is fetched",
            ));
        }
        reg.jobs.remove(&id);
    }
    let i = Arc::clone(&infer);
    blocking(move || i.store.delete_job(&job.rec.id).map_err(ApiError::internal)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
