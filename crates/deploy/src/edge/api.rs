//! The edge's HTTP handlers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post, put},
};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::oneshot;

use hecnn_ring::Backend;

use super::{Edge, Job};
use crate::auth::bearer;
use crate::body::read_body;
use crate::{ApiError, DeployError};

type Api<T> = Result<T, ApiError>;

pub(crate) fn router<B: Backend + Clone>(edge: Arc<Edge<B>>) -> Router {
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(json!({ "service": "hecnn-edge", "api": 1 })) }),
        )
        .route("/v1/deployment", put(put_deployment::<B>))
        .route("/v1/status", get(status::<B>))
        .route("/v1/stream", post(stream::<B>))
        .fallback(|| async {
            ApiError::not_found("no_route", "no such route (the API is under /v1)")
        })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(edge)
}

enum Caller {
    Owner,
    Input,
}

fn caller<B: Backend + Clone>(edge: &Edge<B>, headers: &HeaderMap) -> Api<Caller> {
    let t = bearer(headers)?;
    if edge.node_token.verify(&t) {
        Ok(Caller::Owner)
    } else if edge.input_token.verify(&t) {
        Ok(Caller::Input)
    } else {
        Err(ApiError::unauthorized())
    }
}

fn forbidden(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("this token may not {what}"),
    )
}

async fn put_deployment<B: Backend + Clone>(
    State(edge): State<Arc<Edge<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Api<impl IntoResponse> {
    if !matches!(caller(&edge, &headers)?, Caller::Owner) {
        return Err(forbidden("deploy models"));
    }
    let bytes = read_body(&headers, body, edge.config.max_bundle_bytes).await?;
    let e = Arc::clone(&edge);
    let dep = tokio::task::spawn_blocking(move || e.install(&bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            DeployError::Wire(m) => ApiError::bad_request(m),
            e @ (DeployError::StaleDeployment { .. } | DeployError::Signature(_)) => e.into(),
            DeployError::Nn(_) | DeployError::Rlwe(_) | DeployError::Ckks(_) => {
                ApiError::invalid(e.to_string())
            }
            other => ApiError::internal(other),
        })?;
    Ok(Json(json!({ "installed": dep.header() })))
}

async fn status<B: Backend + Clone>(
    State(edge): State<Arc<Edge<B>>>,
    headers: HeaderMap,
) -> Api<impl IntoResponse> {
    caller(&edge, &headers)?;
    let e = Arc::clone(&edge);
    let outbox = tokio::task::spawn_blocking(move || e.outbox_len())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "deployment": edge.current().map(|d| d.header().clone()),
        "outbox": outbox,
        "processed": edge.processed.load(Ordering::Relaxed),
        "forwarded": edge.forwarded.load(Ordering::Relaxed),
    })))
}

/// Most failures listed in a stream's answer (the count is always complete).
const MAX_LISTED_FAILURES: usize = 100;

/// Counts a frame's outcome: `None` when the inference worker stopped before answering.
fn record(
    id: String,
    outcome: Option<Result<(), DeployError>>,
    processed: &mut usize,
    failed: &mut Vec<serde_json::Value>,
) {
    let error = match outcome {
        Some(Ok(())) => {
            *processed += 1;
            return;
        }
        Some(Err(e)) => e.to_string(),
        None => "the inference worker stopped".to_string(),
    };
    if failed.len() < MAX_LISTED_FAILURES {
        failed.push(json!({ "input_id": id, "error": error }));
    }
}

/// Counts the frames at the front of `waiting` that are finished.
fn settle(
    waiting: &mut VecDeque<(String, oneshot::Receiver<Result<(), DeployError>>)>,
    processed: &mut usize,
    failed: &mut Vec<serde_json::Value>,
) {
    while let Some((_, rx)) = waiting.front_mut() {
        let outcome = match rx.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => return,
            Err(oneshot::error::TryRecvError::Closed) => None,
        };
        if let Some((id, _)) = waiting.pop_front() {
            record(id, outcome, processed, failed);
        }
    }
}

async fn stream<B: Backend + Clone>(
    State(edge): State<Arc<Edge<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Api<impl IntoResponse> {
    if !matches!(caller(&edge, &headers)?, Caller::Input) {
        return Err(forbidden("send inputs (use the input token)"));
    }
    let Some(dep) = edge.current() else {
        return Err(ApiError::conflict(
            "no_deployment",
            "no model is deployed on this node yet",
        ));
    };
    let pixels = dep.pixels();
    let mut data = body.into_data_stream();
    let mut buf = BytesMut::new();
    // Frames in flight, oldest first; finished ones are counted and dropped as the stream goes
    // on, so a long stream holds only what the queue holds.
    let mut waiting: VecDeque<(String, oneshot::Receiver<Result<(), DeployError>>)> =
        VecDeque::new();
    let mut processed = 0usize;
    let mut failed = Vec::new();
    let mut refused: Option<ApiError> = None;
    'read: while let Some(chunk) = data.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                refused = Some(ApiError::bad_request(format!("body: {e}")));
                break;
            }
        };
        buf.extend_from_slice(&chunk);
        loop {
            match crate::wire::next_frame(&mut buf, pixels).map_err(ApiError::from) {
                Ok(Some((input_id, px))) => {
                    let (tx, rx) = oneshot::channel();
                    let job = Job {
                        input_id: input_id.clone(),
                        pixels: px,
                        done: tx,
                    };
                    if edge.jobs.send(job).await.is_err() {
                        return Err(ApiError::internal("the inference worker has stopped"));
                    }
                    waiting.push_back((input_id, rx));
                    settle(&mut waiting, &mut processed, &mut failed);
                }
                Ok(None) => break,
                Err(e) => {
                    refused = Some(e);
                    break 'read;
                }
            }
        }
    }
    if refused.is_none() && !buf.is_empty() {
        refused = Some(ApiError::bad_request(format!(
            "the body ends inside a frame ({} bytes left)",
            buf.len()
        )));
    }
    for (id, rx) in waiting {
        record(id, rx.await.ok(), &mut processed, &mut failed);
    }
    if let Some(mut e) = refused {
        e.message = format!(
            "{} ({} earlier frames were processed, their results are queued for the owner)",
            e.message, processed
        );
        return Err(e);
    }
    Ok(Json(json!({
        "deployment_id": dep.header().deployment_id,
        "processed": processed,
        "failed": failed,
    })))
}
