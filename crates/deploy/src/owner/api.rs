//! The owner's HTTP handlers.

use std::sync::{Arc, PoisonError};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{delete, get, post},
};
use hecnn_nn::{
    onnx,
    protect::{self, ProtectPlan, Scope},
};
use hecnn_ring::{Backend, Prng};
use hecnn_rlwe::{SecretKey, SecurityLevel};
use serde::Deserialize;
use serde_json::json;

use super::{
    Owner, node_token_aad,
    registry::{NewModel, Stored},
    secret_aad,
};
use crate::auth::{Token, bearer};
use crate::body::read_body;
use crate::cancel;
use crate::wire::{ResultEnvelope, check_input_id};
use crate::{ApiError, DeployError};

type Api<T> = Result<T, ApiError>;

pub(crate) fn router<B: Backend + Clone>(owner: Arc<Owner<B>>) -> Router {
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(json!({ "service": "hecnn-owner", "api": 1 })) }),
        )
        .route("/v1/models", post(add_model::<B>).get(list_models::<B>))
        .route("/v1/nodes", post(add_node::<B>).get(list_nodes::<B>))
        .route("/v1/nodes/{name}", delete(revoke_node::<B>))
        .route(
            "/v1/consumers",
            post(add_consumer::<B>).get(list_consumers::<B>),
        )
        .route("/v1/consumers/{name}", delete(revoke_consumer::<B>))
        .route("/v1/deployments", post(add_deployment::<B>))
        .route("/v1/deployments/{id}", get(get_deployment::<B>))
        .route("/v1/results", post(post_result::<B>).get(get_results::<B>))
        .fallback(|| async {
            ApiError::not_found("no_route", "no such route (the API is under /v1)")
        })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(owner)
}

fn json_body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Api<T> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}

fn query<T: for<'de> Deserialize<'de>>(raw: Option<String>) -> Api<T> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("query string: {e}")))
}

async fn require_role<B: Backend + Clone>(
    owner: &Arc<Owner<B>>,
    headers: &HeaderMap,
    roles: &'static [&'static str],
) -> Api<()> {
    let token = bearer(headers)?;
    let hash = token.hash();
    let (role, node) = owner
        .db(move |db| Ok((db.token_role(hash)?, db.node_by_token(hash)?.is_some())))
        .await?;
    match role {
        Some(r) if roles.contains(&r.as_str()) => Ok(()),
        // A valid token of another role (a node's included): 403, not 401.
        Some(_) => Err(forbidden()),
        None if node => Err(forbidden()),
        None => Err(ApiError::unauthorized()),
    }
}

fn forbidden() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this token may not use this route",
    )
}

#[derive(Deserialize)]
struct ModelQuery {
    name: String,
    #[serde(default = "default_layers")]
    layers: String,
    #[serde(default = "default_security")]
    security: u32,
    #[serde(default = "default_features")]
    features: String,
}
fn default_layers() -> String {
    "classifier".into()
}
fn default_security() -> u32 {
    128
}
fn default_features() -> String {
    "plain".into()
}

async fn add_model<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin"]).await?;
    let q: ModelQuery = query(raw)?;
    check_input_id(&q.name).map_err(|e| ApiError::bad_request(format!("model name: {e}")))?;
    let scope = Scope::from_name(&q.layers).ok_or_else(|| {
        ApiError::bad_request(format!(
            "layers={}: use last, classifier or network",
            q.layers
        ))
    })?;
    let level = match q.security {
        128 => SecurityLevel::Bits128,
        192 => SecurityLevel::Bits192,
        256 => SecurityLevel::Bits256,
        other => {
            return Err(ApiError::bad_request(format!(
                "security={other}: use 128, 192 or 256"
            )));
        }
    };
    let encrypt_features = match q.features.as_str() {
        "plain" => false,
        "encrypted" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "features={other}: use plain or encrypted"
            )));
        }
    };
    let onnx_bytes = read_body(&headers, body, owner.config.max_model_bytes).await?;
    let o = Arc::clone(&owner);
    // Dropped with this future when the client goes away: the work below then stops at its
    // next stage and registers nothing.
    let (_request, cancel) = cancel::request_scope();
    let row = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let invalid = |e: hecnn_nn::NnError| ApiError::invalid(e.to_string());
        let work = format!("model upload {:?}", q.name);
        let check = |stage: &str| cancel.check(&work, stage);
        let model = onnx::import_onnx(&onnx_bytes).map_err(invalid)?;
        check("the imported model")?;
        let plan = ProtectPlan::new(&model, scope).map_err(invalid)?;
        let params = protect::parameters(plan.spec(), level).map_err(invalid)?;
        check("the chosen parameters")?;
        let be = &o.be;
        let mut rng = Prng::from_entropy().map_err(ApiError::internal)?;
        let sk = SecretKey::generate(params.rlwe(), &mut rng).map_err(ApiError::internal)?;
        let protected = be
            .install(|| plan.protect_unless(&params, &sk, be, &mut rng, &|| cancel.is_set()))
            .map_err(|e| match e {
                hecnn_nn::NnError::Cancelled(stage) => cancel::cancelled(&work, &stage),
                other => ApiError::internal(other),
            })?;
        check("the public key")?;
        let pk = sk.public_key(be, &mut rng).map_err(ApiError::internal)?;
        check("the evaluation keys")?;
        let evk = sk
            .evaluation_keys(be, &protected.key_requirements(), &mut rng)
            .map_err(ApiError::internal)?;
        check("registering the model")?;
        let key_id = sk.key_id();
        let sealed = o.master.seal(&secret_aad(&key_id), &sk.to_secret_bytes())?;
        let protected_bytes = protected.to_bytes(be).map_err(ApiError::internal)?;
        let pk_bytes = pk.to_bytes(be).map_err(ApiError::internal)?;
        let ev_bytes = evk.to_bytes(be).map_err(ApiError::internal)?;
        let new = NewModel {
            name: &q.name,
            scope: scope.name(),
            security: q.security,
            encrypt_features,
            key_id,
            protected: &protected_bytes,
            public_key: &pk_bytes,
            eval_keys: &ev_bytes,
            sealed_secret: &sealed,
        };
        let row =
            o.db.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert_model(&new)?;
        eprintln!(
            "model {} registered: {} v{} ({}, {}-bit, {} features), {} bytes protected",
            row.id,
            row.name,
            row.version,
            row.scope,
            row.security,
            if encrypt_features {
                "encrypted"
            } else {
                "plain"
            },
            protected_bytes.len()
        );
        Ok(row)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok((StatusCode::CREATED, Json(row)))
}

async fn list_models<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin"]).await?;
    let models = owner.db(|db| db.models()).await?;
    Ok(Json(json!({ "models": models })))
}

#[derive(Deserialize)]
struct NewNode {
    name: String,
    url: String,
}

async fn add_node<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin"]).await?;
    let n: NewNode = json_body(&read_body(&headers, body, 64 << 10).await?)?;
    check_input_id(&n.name).map_err(|e| ApiError::bad_request(format!("node name: {e}")))?;
    if !(n.url.starts_with("http://") || n.url.starts_with("https://"))
        || reqwest::Url::parse(&n.url).is_err()
    {
        return Err(ApiError::bad_request(format!(
            "node url {:?}: use http(s)://host:port",
            n.url
        )));
    }
    let token = Token::generate()?;
    let sealed = owner
        .master
        .seal(&node_token_aad(&n.name), token.expose().as_bytes())?;
    let hash = token.hash();
    let (name, url) = (n.name.clone(), n.url.clone());
    let id = owner
        .db(move |db| {
            if db.node_by_name(&name)?.is_some() {
                return Ok(None);
            }
            db.insert_node(&name, &url, hash, &sealed).map(Some)
        })
        .await?
        .ok_or_else(|| {
            ApiError::conflict("node_exists", format!("a node named {:?} exists", n.name))
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "node_id": id, "name": n.name, "token": token.expose() })),
    ))
}

async fn list_nodes<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin"]).await?;
    let nodes = owner.db(|db| db.nodes()).await?;
    let nodes: Vec<_> = nodes
        .iter()
        .map(|n| json!({ "node_id": n.id, "name": n.name, "url": n.url, "revoked": n.revoked }))
        .collect();
    Ok(Json(json!({ "nodes": nodes })))
}

async fn revoke_node<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin"]).await?;
    let n = name.clone();
    match owner.db(move |db| db.revoke_node(&n)).await? {
        None => Err(ApiError::not_found(
            "unknown_node",
            format!("no node named {name:?}"),
        )),
        Some(now) => Ok(Json(json!({ "revoked": name, "already": !now }))),
    }
}

async fn list_consumers<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin"]).await?;
    let names = owner.db(|db| db.consumers()).await?;
    Ok(Json(json!({ "consumers": names })))
}

async fn revoke_consumer<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin"]).await?;
    let n = name.clone();
    match owner.db(move |db| db.revoke_consumer(&n)).await? {
        0 => Err(ApiError::not_found(
            "unknown_consumer",
            format!("no consumer named {name:?}"),
        )),
        tokens => Ok(Json(json!({ "revoked": name, "tokens": tokens }))),
    }
}

#[derive(Deserialize)]
struct NewConsumer {
    name: String,
}

async fn add_consumer<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin"]).await?;
    let c: NewConsumer = json_body(&read_body(&headers, body, 64 << 10).await?)?;
    check_input_id(&c.name).map_err(|e| ApiError::bad_request(format!("consumer name: {e}")))?;
    let token = Token::generate()?;
    let hash = token.hash();
    owner
        .db(move |db| db.add_token(hash, "consumer", &c.name))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token.expose() })),
    ))
}

#[derive(Deserialize)]
struct NewDeployment {
    model_id: u64,
    node: String,
}

async fn add_deployment<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin"]).await?;
    let d: NewDeployment = json_body(&read_body(&headers, body, 64 << 10).await?)?;
    let (model_id, node) = (d.model_id, d.node.clone());
    let id = owner
        .db(move |db| {
            if db.model(model_id)?.is_none() {
                return Ok(Err(ApiError::not_found(
                    "unknown_model",
                    format!("no model {model_id}"),
                )));
            }
            let Some(n) = db.node_by_name(&node)? else {
                return Ok(Err(ApiError::not_found(
                    "unknown_node",
                    format!("no node named {node:?}"),
                )));
            };
            if n.revoked {
                return Ok(Err(ApiError::conflict(
                    "node_revoked",
                    format!("node {node:?} was revoked: nothing is deployed to it"),
                )));
            }
            db.insert_deployment(model_id, n.id).map(Ok)
        })
        .await??;
    owner.deploy_wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deployment_id": id, "state": "pending" })),
    ))
}

async fn get_deployment<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin"]).await?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("deployment id {id:?} is not a number")))?;
    let dep = owner
        .db(move |db| db.deployment(id))
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_deployment", format!("no deployment {id}")))?;
    Ok(Json(dep))
}

async fn post_result<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Api<impl IntoResponse> {
    let token = bearer(&headers)?;
    let hash = token.hash();
    let (node, role) = owner
        .db(move |db| Ok((db.node_by_token(hash)?, db.token_role(hash)?)))
        .await?;
    let node = match (node, role) {
        (Some(node), _) => node,
        // An administrator's or consumer's token on the nodes' route.
        (None, Some(_)) => return Err(forbidden()),
        (None, None) => return Err(ApiError::unauthorized()),
    };
    let bytes = read_body(&headers, body, owner.config.max_result_bytes).await?;
    let env =
        ResultEnvelope::from_bytes(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let h = env.header.clone();
    let (dep, model) = owner
        .db(move |db| {
            let dep = db.deployment(h.deployment_id)?;
            let model = match &dep {
                Some(d) => db.model(d.model_id)?,
                None => None,
            };
            Ok((dep, model))
        })
        .await?;
    let (Some(dep), Some(model)) = (dep, model) else {
        return Err(ApiError::not_found(
            "unknown_deployment",
            format!("no deployment {}", env.header.deployment_id),
        ));
    };
    if dep.node_id != node.id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("deployment {} belongs to another node", dep.id),
        ));
    }
    if env.header.model_id != model.id || env.header.model_version != model.version {
        return Err(ApiError::conflict(
            "version_mismatch",
            format!(
                "deployment {} runs model {} v{}, the result claims model {} v{}",
                dep.id, model.name, model.version, env.header.model_id, env.header.model_version
            ),
        ));
    }
    let o = Arc::clone(&owner);
    let output = env.output;
    let input_id = env.header.input_id;
    let id_for_message = input_id.clone();
    let stored = tokio::task::spawn_blocking(move || -> Result<Stored, ApiError> {
        o.check_output(model.id, &output).map_err(|e| match e {
            DeployError::Nn(e) => ApiError::invalid(e.to_string()),
            DeployError::Wire(m) => ApiError::invalid(m),
            other => ApiError::internal(other),
        })?;
        Ok(o.db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert_result(dep.id, &input_id, &output)?)
    })
    .await
    .map_err(ApiError::internal)??;
    match stored {
        Stored::New | Stored::Again => {
            owner.decrypt_wake.notify_one();
            Ok(Json(
                json!({ "stored": true, "duplicate": stored == Stored::Again }),
            ))
        }
        Stored::OtherForSameId => Err(ApiError::conflict(
            "duplicate_input",
            format!(
                "input id {id_for_message:?} of deployment {} already has another result \
                 (a reused id, or a re-run after a crash that drew new randomness): this one \
                 is not stored; give each input its own id",
                dep.id
            ),
        )),
    }
}

#[derive(Deserialize)]
struct ResultsQuery {
    #[serde(default)]
    after: u64,
    deployment: Option<u64>,
    #[serde(default = "default_limit")]
    limit: usize,
}
fn default_limit() -> usize {
    1000
}

async fn get_results<B: Backend + Clone>(
    State(owner): State<Arc<Owner<B>>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Api<impl IntoResponse> {
    require_role(&owner, &headers, &["admin", "consumer"]).await?;
    let q: ResultsQuery = query(raw)?;
    if !(1..=10_000).contains(&q.limit) {
        return Err(ApiError::bad_request(format!(
            "limit={}: give 1 to 10000",
            q.limit
        )));
    }
    let limit = q.limit;
    let mut rows = owner
        .db(move |db| db.results(q.after, q.deployment, limit))
        .await?;
    // Rows stored under an earlier, more generous policy leave under the current one. Under
    // flooded release, only logits stored flooded leave (rounded when they were decrypted);
    // rows stored unflooded (under a rounded release, or before the registry recorded it)
    // leave their class alone.
    for r in &mut rows {
        r.logits = match (r.logits.take(), owner.config.release) {
            (Some(l), release @ super::Release::RoundedLogits { .. }) => {
                release.apply(&l).ok().and_then(|p| p.logits)
            }
            (Some(l), super::Release::FloodedLogits) if r.flooded => Some(l),
            _ => None,
        };
        // Refusals stored before their reason was a fixed string named the noise estimate.
        if r.error
            .as_deref()
            .is_some_and(|e| e.starts_with("a result with output noise"))
        {
            r.error = Some(super::REFUSED_REASON.into());
        }
    }
    Ok(Json(json!({ "results": rows })))
}
