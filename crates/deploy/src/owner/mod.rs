//! The model owner's backend service (`hecnn owner serve`).
//!
//! HTTP API (JSON unless noted; every route but `/v1/health` needs a bearer token):
//!
//! | route | token | what |
//! |---|---|---|
//! | `GET /v1/health` | – | liveness |
//! | `POST /v1/models?name=&layers=last\|classifier\|network&security=128&features=plain\|encrypted` | admin | body: ONNX model; generates a key pair, protects the model, registers it as the next version of `name` |
//! | `GET /v1/models` | admin | the registered models |
//! | `POST /v1/nodes` `{"name", "url"}` | admin | registers an edge node; answers its token (shown once) |
//! | `POST /v1/consumers` `{"name"}` | admin | a token that may read results |
//! | `POST /v1/deployments` `{"model_id", "node"}` | admin | records a deployment; the deployment agent pushes it |
//! | `GET /v1/deployments/{id}` | admin | its state: `pending`, `active`, `superseded`, `failed` |
//! | `POST /v1/results` | node | body: `HCNR` result envelope; stored, then decrypted by the decryption agent |
//! | `GET /v1/results?after=&deployment=&limit=` | admin, consumer | decrypted predictions |

mod api;
mod registry;

pub use registry::{DeploymentRow, ModelBlobs, ModelRow, Registry, ResultRow};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hecnn_ckks::Decryptor;
use hecnn_nn::protect::{ProtectedModel, ProtectedOutput, decrypt_output};

use crate::signing::SigningKey;
use hecnn_ring::Backend;
use hecnn_rlwe::SecretKey;
use tokio::sync::Notify;

use crate::auth::{Token, hex};
use crate::net::{self, Server, TlsFiles};
use crate::vault::MasterKey;
use crate::wire::{DeploymentBundle, DeploymentHeader};
use crate::{DeployError, files};

/// Settings of the owner service.
#[derive(Clone, Debug)]
pub struct OwnerConfig {
    /// State directory: `registry.sqlite`, `admin.token` and (by default) `master.key`.
    pub state_dir: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Serve over TLS with these files.
    pub tls: Option<TlsFiles>,
    /// The master key sealing secrets at rest (default `<state_dir>/master.key`).
    pub master_key: Option<PathBuf>,
    /// Certificate authorities trusted when pushing to `https` edges.
    pub edge_ca: Option<PathBuf>,
    /// Largest ONNX upload, in bytes.
    pub max_model_bytes: usize,
    /// Largest result envelope, in bytes.
    pub max_result_bytes: usize,
    /// What of a decrypted result leaves the owner.
    pub release: Release,
}

/// What of a decrypted result the owner stores and serves to consumers.
///
/// A CKKS decryption is `m + e` with the noise `e` a function of the secret key, and an edge
/// node knows the ciphertexts it sends: full-precision logits let it (or a consumer it
/// colludes with) solve for the key (Li and Micciancio; `hecnn_ckks::flooding`). Noise
/// flooding at 30-bit statistical security costs about 27 bits of precision, more than the
/// protected parameters' outputs carry (`hecnn bench protected` measures both), so until
/// they do, the owner releases the class alone by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Release {
    /// The predicted class only (the default).
    #[default]
    Class,
    /// The class and the logits rounded to multiples of `2^-bits`. Rounding drops the
    /// low-order bits where the noise lives, but it is no proof against adaptive queries:
    /// release logits only to consumers the owner trusts not to collude with an edge.
    RoundedLogits {
        /// Fractional bits kept (at most 20).
        bits: u32,
    },
}

impl Release {
    /// The most fractional bits [`Release::RoundedLogits`] keeps: the protected outputs'
    /// noise sits near `2^-21` (bench/RESULTS.md), and keeping it would hand it out.
    pub const MAX_BITS: u32 = 20;

    /// What leaves the owner of a decryption's `logits`: the class, and the rounded logits
    /// when released.
    ///
    /// # Errors
    /// [`DeployError::Config`] for more fractional bits than [`Release::MAX_BITS`].
    pub fn apply(self, logits: &[f64]) -> Result<Prediction, DeployError> {
        let class = hecnn_nn::exec::argmax(logits) as u32;
        match self {
            Self::Class => Ok(Prediction {
                class,
                logits: None,
            }),
            Self::RoundedLogits { bits } if bits <= Self::MAX_BITS => {
                let unit = f64::from(bits).exp2();
                Ok(Prediction {
                    class,
                    logits: Some(logits.iter().map(|l| (l * unit).round() / unit).collect()),
                })
            }
            Self::RoundedLogits { bits } => Err(DeployError::Config(format!(
                "logits rounded to 2^-{bits}: at most {} fractional bits leave the owner",
                Self::MAX_BITS
            ))),
        }
    }
}

/// A decrypted result as it leaves the owner ([`Release::apply`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The predicted class (the largest logit, decided before any rounding).
    pub class: u32,
    /// The rounded logits, when the owner releases them.
    pub logits: Option<Vec<f64>>,
}

impl OwnerConfig {
    /// Defaults for a state directory: loopback, an ephemeral port, 256 MiB models, 16 MiB
    /// results.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            listen: "127.0.0.1:0".into(),
            tls: None,
            master_key: None,
            edge_ca: None,
            max_model_bytes: 256 << 20,
            max_result_bytes: 16 << 20,
            release: Release::Class,
        }
    }
}

/// A registered model, loaded for checking and decrypting its results.
struct Loaded<B: Backend> {
    model: ProtectedModel<B>,
    secret: SecretKey,
}

/// The owner's shared state.
pub(crate) struct Owner<B: Backend> {
    config: OwnerConfig,
    db: Mutex<Registry>,
    master: MasterKey,
    /// Signs what is deployed (its public half: `owner.pub` in the state directory).
    signer: SigningKey,
    be: B,
    client: reqwest::Client,
    loaded: Mutex<HashMap<u64, Arc<Loaded<B>>>>,
    deploy_wake: Notify,
    decrypt_wake: Notify,
}

/// How long a deployment is retried before it is marked failed.
const DELIVERY_ATTEMPTS: u32 = 30;

impl<B: Backend + Clone> Owner<B> {
    /// Runs `f` on the registry in a blocking task.
    pub(crate) async fn db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Registry) -> Result<T, DeployError> + Send + 'static,
    ) -> Result<T, DeployError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut db = me.db.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut db)
        })
        .await
        .map_err(|e| DeployError::Config(format!("registry task: {e}")))?
    }

    /// The model `id`, loaded (and its secret key unsealed) once.
    fn loaded(&self, model_id: u64) -> Result<Option<Arc<Loaded<B>>>, DeployError> {
        if let Some(l) = self
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&model_id)
        {
            return Ok(Some(Arc::clone(l)));
        }
        let blobs = self
            .db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .model_blobs(model_id)?;
        let Some(blobs) = blobs else { return Ok(None) };
        let (model, secret) = unseal(&self.master, &self.be, &blobs)?;
        let l = Arc::new(Loaded { model, secret });
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(model_id, Arc::clone(&l));
        Ok(Some(l))
    }

    /// Checks an encrypted output against its model: ciphertext count, levels, scales,
    /// parameters and owner key.
    fn check_output(&self, model_id: u64, bytes: &[u8]) -> Result<(), DeployError> {
        let l = self
            .loaded(model_id)?
            .ok_or_else(|| DeployError::Wire(format!("model {model_id} is not registered")))?;
        let (_, key) =
            ProtectedOutput::from_bytes(&self.be, l.model.spec(), l.model.params(), bytes)?;
        if key != l.model.key_id() {
            return Err(DeployError::Wire(
                "the result is tagged with another owner key than the model's".into(),
            ));
        }
        Ok(())
    }

    fn decrypt(&self, model_id: u64, bytes: &[u8]) -> Result<Vec<f64>, DeployError> {
        let l = self
            .loaded(model_id)?
            .ok_or_else(|| DeployError::Wire(format!("model {model_id} is not registered")))?;
        let (out, _) =
            ProtectedOutput::from_bytes(&self.be, l.model.spec(), l.model.params(), bytes)?;
        let dec = Decryptor::new(&l.secret, &self.be)?;
        Ok(decrypt_output(
            l.model.spec(),
            l.model.params(),
            &dec,
            &self.be,
            &out,
        )?)
    }
}

/// The secret key of a registered model, unsealed with the master key: for the owner's own
/// tooling (offline decryption, audits), where the registry and the master key are. The
/// services never send it anywhere.
///
/// # Errors
/// An unknown model, a wrong master key, registry errors.
pub fn read_secret_key<B: Backend + Clone>(
    be: &B,
    registry: &std::path::Path,
    master_key: &std::path::Path,
    model_id: u64,
) -> Result<SecretKey, DeployError> {
    let master = MasterKey::load(master_key)?;
    let blobs = Registry::open(registry)?
        .model_blobs(model_id)?
        .ok_or_else(|| DeployError::Config(format!("no model {model_id}")))?;
    Ok(unseal(&master, be, &blobs)?.1)
}

/// Loads a registered model and opens its sealed secret key, checking that the key is the
/// one the model is encrypted under.
fn unseal<B: Backend + Clone>(
    master: &MasterKey,
    be: &B,
    blobs: &ModelBlobs,
) -> Result<(ProtectedModel<B>, SecretKey), DeployError> {
    let model = ProtectedModel::from_bytes(be, &blobs.protected)?;
    let bytes = master.open(&secret_aad(&model.key_id()), &blobs.sealed_secret)?;
    let secret = SecretKey::from_secret_bytes(model.params().rlwe(), &bytes)?;
    if secret.key_id() != model.key_id() {
        return Err(DeployError::Unseal);
    }
    Ok((model, secret))
}

/// Associated data sealing a model's secret key.
pub(crate) fn secret_aad(key_id: &[u8; 32]) -> String {
    format!("model-secret:{}", hex(key_id))
}

/// Associated data sealing a node's token.
pub(crate) fn node_token_aad(name: &str) -> String {
    format!("node-token:{name}")
}

/// A running owner service.
pub struct OwnerHandle {
    /// The base address it serves, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Where the administrator token is (written at the first start, mode 0600).
    pub admin_token_file: PathBuf,
    /// The owner's public signing key (`owner.pub`), for the edges' `--owner-key`.
    pub owner_key_file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl OwnerHandle {
    /// Serves until the process ends (or the server task fails).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// What the state's master-key check seals.
const MASTER_CHECK: &[u8] = b"hecnn owner state";
const MASTER_CHECK_AAD: &str = "master-check";

/// The state's master key: created with a new state, and otherwise required to exist and to
/// be the one the state was sealed with. A missing or other key would leave every
/// registered model undecryptable, so the owner refuses to start instead.
fn open_master(registry: &Registry, path: &std::path::Path) -> Result<MasterKey, DeployError> {
    let master = if registry.has_sealed_state()? {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(DeployError::Config(format!(
                "{}: no master key, and the state holds secrets sealed with one; give \
                 --master-key the file it was started with (a new key would make every \
                 registered model undecryptable)",
                path.display()
            )));
        }
        MasterKey::load(path)?
    } else {
        MasterKey::load_or_create(path)?
    };
    match registry.master_check()? {
        Some(sealed) => {
            let opened = master.open(MASTER_CHECK_AAD, &sealed).map_err(|_| {
                DeployError::Config(format!(
                    "{}: not the master key this state was sealed with",
                    path.display()
                ))
            })?;
            if opened.as_slice() != MASTER_CHECK {
                return Err(DeployError::Config(format!(
                    "{}: not the master key this state was sealed with",
                    path.display()
                )));
            }
        }
        None => {
            // A state from before the check: the key must open what it already sealed.
            if let Some((by, sealed)) = registry.first_sealed()? {
                let aad = match by {
                    registry::SealedBy::Model(key_id) => secret_aad(&key_id),
                    registry::SealedBy::Node(name) => node_token_aad(&name),
                };
                master.open(&aad, &sealed).map_err(|_| {
                    DeployError::Config(format!(
                        "{}: not the master key this state was sealed with",
                        path.display()
                    ))
                })?;
            }
            registry.set_master_check(&master.seal(MASTER_CHECK_AAD, MASTER_CHECK)?)?;
        }
    }
    Ok(master)
}

/// The owner's public signing key in the state directory.
pub const OWNER_KEY_FILE: &str = "owner.pub";
/// The signing key, sealed with the master key.
const SIGNING_KEY_FILE: &str = "signing.key.sealed";
const SIGNING_KEY_AAD: &str = "owner-signing-key";

/// The owner's signing key: made with a new state (sealed with the master key, written
/// 0600), opened otherwise.
fn open_signer(state_dir: &std::path::Path, master: &MasterKey) -> Result<SigningKey, DeployError> {
    let path = state_dir.join(SIGNING_KEY_FILE);
    match std::fs::read(&path) {
        Ok(sealed) => {
            let pkcs8 = master.open(SIGNING_KEY_AAD, &sealed).map_err(|_| {
                DeployError::Config(format!(
                    "{}: cannot be opened with this master key (tampered, or another state's)",
                    path.display()
                ))
            })?;
            SigningKey::from_pkcs8(&pkcs8)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate()?;
            files::write_private(&path, &master.seal(SIGNING_KEY_AAD, key.to_pkcs8())?)?;
            Ok(key)
        }
        Err(source) => Err(DeployError::io(&path, source)),
    }
}

/// Opens the state, starts the deployment and decryption agents, and serves the API.
/// Protection and decryption run on `be` (the binary passes a CPU backend sized by
/// `--threads`).
///
/// # Errors
/// Configuration, state-directory, database and listening errors.
pub async fn start<B: Backend + Clone>(
    config: OwnerConfig,
    be: B,
) -> Result<OwnerHandle, DeployError> {
    // A release the decryption agent would refuse on every result is refused here.
    config.release.apply(&[0.0])?;
    files::ensure_dir(&config.state_dir)?;
    files::sweep_temporaries(&config.state_dir)?;
    let master_path = config
        .master_key
        .clone()
        .unwrap_or_else(|| config.state_dir.join("master.key"));
    let registry = Registry::open(&config.state_dir.join("registry.sqlite"))?;
    let master = open_master(&registry, &master_path)?;
    let signer = open_signer(&config.state_dir, &master)?;
    let owner_key_file = config.state_dir.join(OWNER_KEY_FILE);
    files::write_atomic(&owner_key_file, signer.owner_key().to_text().as_bytes())?;
    let admin_token_file = config.state_dir.join("admin.token");
    if !registry.has_admin()? {
        let token = Token::generate()?;
        files::write_private(
            &admin_token_file,
            format!("{}\n", token.expose()).as_bytes(),
        )?;
        registry.add_token(token.hash(), "admin", "admin")?;
    }
    let client = net::client(config.edge_ca.as_deref())?;
    let server = Server::bind(&config.listen, config.tls.as_ref()).await?;
    let url = server.url()?;
    let owner = Arc::new(Owner {
        config,
        db: Mutex::new(registry),
        master,
        signer,
        be,
        client,
        loaded: Mutex::new(HashMap::new()),
        deploy_wake: Notify::new(),
        decrypt_wake: Notify::new(),
    });
    tokio::spawn(deployment_agent(Arc::clone(&owner)));
    tokio::spawn(decryption_agent(Arc::clone(&owner)));
    let router = api::router(Arc::clone(&owner));
    let task = tokio::spawn(server.serve(router));
    Ok(OwnerHandle {
        url,
        admin_token_file,
        owner_key_file,
        task,
    })
}

/// Builds the bundle of a deployment from the registry.
fn bundle(db: &Registry, dep: &DeploymentRow, signer: &SigningKey) -> Result<Vec<u8>, DeployError> {
    let model = db.model(dep.model_id)?.ok_or_else(|| {
        DeployError::Config(format!("deployment {}: no model {}", dep.id, dep.model_id))
    })?;
    let blobs = db.model_blobs(dep.model_id)?.ok_or_else(|| {
        DeployError::Config(format!("deployment {}: no model {}", dep.id, dep.model_id))
    })?;
    DeploymentBundle {
        header: DeploymentHeader {
            deployment_id: dep.id,
            model_id: model.id,
            model_name: model.name,
            model_version: model.version,
            key_id: blobs.key_id,
            encrypt_features: model.encrypt_features,
        },
        // Signed: the edge runs only what this owner's key signed (`signing`).
        protected: signer.sign_model(&blobs.protected),
        public_key: blobs.public_key,
        eval_keys: blobs.eval_keys,
    }
    .to_bytes()
}

async fn push<B: Backend + Clone>(
    owner: &Arc<Owner<B>>,
    dep: &DeploymentRow,
) -> Result<(), DeployError> {
    let d = dep.clone();
    let me = Arc::clone(owner);
    let (node, body) = owner
        .db(move |db| {
            let node = db
                .node(d.node_id)?
                .ok_or_else(|| DeployError::Config(format!("no node {}", d.node_id)))?;
            Ok((node, bundle(db, &d, &me.signer)?))
        })
        .await?;
    let token = owner
        .master
        .open(&node_token_aad(&node.name), &node.sealed_token)?;
    let token = std::str::from_utf8(&token).map_err(|_| DeployError::Unseal)?;
    let url = format!("{}/v1/deployment", node.url.trim_end_matches('/'));
    let resp = owner
        .client
        .put(&url)
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await?;
    net::check(&url, resp).await?;
    Ok(())
}

/// Pushes pending deployments to their nodes, retrying with back-off; a deployment becomes
/// `active` only once the node has stored it. Pending deployments survive restarts.
async fn deployment_agent<B: Backend + Clone>(owner: Arc<Owner<B>>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let pending = owner
            .db(|db| db.pending_deployments())
            .await
            .unwrap_or_else(|e| {
                eprintln!("deployment agent: {e}");
                vec![]
            });
        let mut failed = false;
        for dep in pending {
            match push(&owner, &dep).await {
                Ok(()) => {
                    let d = dep.clone();
                    if let Err(e) = owner.db(move |db| db.activate(&d)).await {
                        eprintln!("deployment agent: {e}");
                    }
                    eprintln!("deployment {} delivered to node {}", dep.id, dep.node_id);
                }
                Err(e) => {
                    failed = true;
                    let msg = e.to_string();
                    let give_up = dep.attempts + 1 >= DELIVERY_ATTEMPTS
                        || matches!(e, DeployError::Remote { status, .. } if (400..500).contains(&status) && status != 408 && status != 429);
                    eprintln!(
                        "deployment {}: {msg}{}",
                        dep.id,
                        if give_up { " (giving up)" } else { "" }
                    );
                    let id = dep.id;
                    let _ = owner
                        .db(move |db| db.delivery_failed(id, &msg, give_up))
                        .await;
                }
            }
        }
        let wait = if failed {
            backoff = (backoff * 2).min(Duration::from_secs(5));
            backoff
        } else {
            backoff = Duration::from_millis(200);
            Duration::from_secs(5)
        };
        tokio::select! {
            () = owner.deploy_wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Decrypts stored results in arrival order with their model's secret key. A result is
/// stored before it is acknowledged to the edge, so results received before a crash are
/// decrypted after the restart.
async fn decryption_agent<B: Backend + Clone>(owner: Arc<Owner<B>>) {
    loop {
        let batch = owner.db(|db| db.undecrypted(64)).await.unwrap_or_else(|e| {
            eprintln!("decryption agent: {e}");
            vec![]
        });
        if batch.is_empty() {
            tokio::select! {
                () = owner.decrypt_wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            continue;
        }
        let o = Arc::clone(&owner);
        let done = tokio::task::spawn_blocking(move || {
            let results =
                o.be.par_map(batch, |r| (r.seq, o.decrypt(r.model_id, &r.output)));
            let mut outcomes = Vec::with_capacity(results.len());
            for (seq, logits) in results {
                match logits.and_then(|l| o.config.release.apply(&l)) {
                    Ok(p) => outcomes.push((seq, Ok(p))),
                    // A result that does not decode or decrypt never will: record why.
                    Err(
                        e @ (DeployError::Nn(_)
                        | DeployError::Ckks(_)
                        | DeployError::Rlwe(_)
                        | DeployError::Wire(_)),
                    ) => {
                        eprintln!("decryption agent: result {seq}: {e}");
                        outcomes.push((seq, Err(e.to_string())));
                    }
                    // Anything else (the registry, the master key) is retried later.
                    Err(e) => return Err(e),
                }
            }
            o.db.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .store_decrypted(&outcomes)
        })
        .await
        .map_err(|e| DeployError::Config(e.to_string()))
        .and_then(|r| r);
        if let Err(e) = done {
            eprintln!("decryption agent: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MasterKey, Prediction, Registry, Release, open_master};

    #[test]
    fn an_existing_state_refuses_a_missing_or_other_master_key() {
        let dir = std::env::temp_dir().join(format!("hecnn-master-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let registry = Registry::open(&dir.join("registry.sqlite")).unwrap();
        let key = dir.join("master.key");
        // A new state creates its key; the same key opens it again.
        open_master(&registry, &key).unwrap();
        open_master(&registry, &key).unwrap();
        // Missing: refused, and no new key is made in its place.
        let saved = std::fs::read(&key).unwrap();
        std::fs::remove_file(&key).unwrap();
        let e = open_master(&registry, &key).err().unwrap().to_string();
        assert!(e.contains("--master-key"), "{e}");
        assert!(!key.exists());
        // Another key: refused.
        let other = dir.join("other.key");
        MasterKey::load_or_create(&other).unwrap();
        let e = open_master(&registry, &other).err().unwrap().to_string();
        assert!(e.contains("not the master key"), "{e}");
        // A damaged key file is reported as what it is, not as a missing one.
        std::fs::write(&key, b"short").unwrap();
        let e = open_master(&registry, &key).err().unwrap().to_string();
        assert!(e.contains("32 bytes"), "{e}");
        // The right one, back in place: accepted.
        std::fs::write(&key, saved).unwrap();
        open_master(&registry, &key).unwrap();

        // A state from before the check, with a node sealed under its key: another key is
        // refused by that record, and the right one is accepted and recorded.
        let legacy = Registry::open(&dir.join("legacy.sqlite")).unwrap();
        let right = MasterKey::load(&key).unwrap();
        let sealed = right
            .seal(&super::node_token_aad("edge1"), b"token")
            .unwrap();
        legacy
            .insert_node(
                "edge1",
                "http://127.0.0.1:1",
                crate::auth::TokenHash([7; 32]),
                &sealed,
            )
            .unwrap();
        let e = open_master(&legacy, &other).err().unwrap().to_string();
        assert!(e.contains("not the master key"), "{e}");
        assert!(
            legacy.master_check().unwrap().is_none(),
            "a wrong key left a record"
        );
        open_master(&legacy, &key).unwrap();
        assert!(legacy.master_check().unwrap().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reused_input_id_is_told_apart_from_a_retry() {
        use super::registry::{NewModel, Stored};
        let dir = std::env::temp_dir().join(format!("hecnn-reuse-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut db = Registry::open(&dir.join("registry.sqlite")).unwrap();
        let model = db
            .insert_model(&NewModel {
                name: "m",
                scope: "classifier",
                security: 128,
                encrypt_features: false,
                key_id: [1; 32],
                protected: b"p",
                public_key: b"k",
                eval_keys: b"e",
                sealed_secret: b"s",
            })
            .unwrap();
        let node = db
            .insert_node(
                "edge1",
                "http://127.0.0.1:1",
                crate::auth::TokenHash([2; 32]),
                b"t",
            )
            .unwrap();
        let dep = db.insert_deployment(model.id, node).unwrap();
        assert_eq!(
            db.insert_result(dep, "img1", b"first").unwrap(),
            Stored::New
        );
        assert_eq!(
            db.insert_result(dep, "img1", b"first").unwrap(),
            Stored::Again
        );
        assert_eq!(
            db.insert_result(dep, "img1", b"second").unwrap(),
            Stored::OtherForSameId
        );
        assert_eq!(db.undecrypted(10).unwrap()[0].output, b"first");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_the_class_leaves_by_default_and_logits_are_rounded_when_asked() {
        let logits = [0.1, 2.000_001_234, 1.999_999_9, -3.25];
        assert_eq!(
            Release::default().apply(&logits).unwrap(),
            Prediction {
                class: 1,
                logits: None
            }
        );
        let p = Release::RoundedLogits { bits: 4 }.apply(&logits).unwrap();
        // The class is decided before rounding (two logits round to the same 2.0).
        assert_eq!(p.class, 1);
        assert_eq!(p.logits, Some(vec![0.125, 2.0, 2.0, -3.25]));
        let p = Release::RoundedLogits { bits: 20 }.apply(&logits).unwrap();
        let kept = p.logits.unwrap();
        assert!(
            kept.iter()
                .all(|l| (l * f64::from(1u32 << 20)).fract() == 0.0)
        );
        assert!(Release::RoundedLogits { bits: 21 }.apply(&logits).is_err());
    }
}
