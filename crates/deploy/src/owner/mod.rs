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
use hecnn_nn::NnError;
use hecnn_nn::protect::{
    ProtectedModel, ProtectedOutput, decrypt_output, decrypt_output_flooded, output_flooding,
};

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
    /// Results of a model refused for noise above the flooding's bound
    /// ([`REFUSED_REASON`]) before the owner stops decrypting that model's results
    /// ([`SUSPENDED_REASON`]; default [`DEFAULT_REFUSAL_BUDGET`]). Each refusal tells the
    /// edge that crafted the result one bit about the model's secret key; this bounds them.
    /// Counted from the refused results stored in the registry, so it survives restarts; a
    /// budget of 0 suspends every model's releases.
    pub refusal_budget: u32,
}

/// The default [`OwnerConfig::refusal_budget`]: one refusal, then the model's releases are
/// suspended until it is protected again under a fresh key. Honest results are not refused
/// (the flooding's bound sits above every noise measured: `hecnn_nn::protect::OUTPUT_NOISE_LOG2`),
/// so a refusal means a crafted result or inputs far outside the model's.
pub const DEFAULT_REFUSAL_BUDGET: u32 = 1;

/// What is stored and served for a result refused because its noise is above the flooding's
/// bound: a fixed string (the noise estimate behind the refusal is secret-dependent and
/// stays in the owner's log).
pub const REFUSED_REASON: &str =
    "not released: the result is noisier than the model's noise flooding hides";

/// What is stored and served for the results of a model whose refusal budget is spent: a
/// fixed string, whatever the result (it is not decrypted).
pub const SUSPENDED_REASON: &str =
    "release suspended: this model's key must be renewed (hecnn protect again)";

/// What of a decrypted result the owner stores and serves to consumers.
///
/// A CKKS decryption is `m + e` with the noise `e` a function of the secret key, and an edge
/// node knows the ciphertexts it sends: full-precision logits let it (or a consumer it
/// colludes with) solve for the key (Li and Micciancio; `hecnn_ckks::flooding`). Noise
/// flooding at 30-bit statistical security costs about 27 bits of precision: models
/// protected with `hecnn_nn::protect::parameters` (a `2^60` scale) keep 5 to 6 fractional
/// bits of their logits once flooded (6 at N = 2^13, 5 from 2^14 with the default noise
/// bounds; [`Release::FloodedLogits`]). For such models **every** release mode decides from
/// the flooded decryption (`hecnn_nn::protect::decrypt_output_flooded`): the class is the
/// flooded logits' largest, rounded logits are the flooded ones rounded, and a result
/// noisier than the flooding's bound is refused ([`REFUSED_REASON`]) in every mode, within
/// the refusal budget ([`OwnerConfig::refusal_budget`]). Models protected before (a `2^40`
/// scale) cannot be flooded: their class (and rounded logits) come from an unflooded
/// decryption, an oracle on the secret key that an adaptive edge can query (residual risk:
/// protect them again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Release {
    /// The predicted class only (the default): the flooded logits' largest where the model
    /// can flood (a result above the flooding's bound is refused), an unflooded argmax for
    /// models protected before.
    #[default]
    Class,
    /// The class and the logits decrypted with noise flooding
    /// (`hecnn_nn::protect::decrypt_output_flooded`: the flooding the model's parameters
    /// allow at the default statistical security, rounded to the bits it leaves). The class
    /// is the flooded logits' largest. A model whose parameters cannot be flooded (protected
    /// before they were sized for it) releases its class alone, and a result noisier than
    /// the flooding's bound is refused. Only logits stored flooded are served
    /// ([`ResultRow::flooded`]); rows stored under an earlier, unflooded release serve
    /// their class alone.
    FloodedLogits,
    /// The class and the logits rounded to multiples of `2^-bits`: the flooded logits for
    /// models whose parameters can flood, **unflooded** ones for models protected before.
    /// Unflooded, rounding drops the low-order bits where the noise lives, but it is no
    /// proof against adaptive queries: release logits this way only to consumers the owner
    /// trusts not to collude with an edge, and prefer [`Release::FloodedLogits`].
    RoundedLogits {
        /// Fractional bits kept (at most 20).
        bits: u32,
    },
}

impl Release {
    /// The most fractional bits [`Release::RoundedLogits`] keeps: the unflooded outputs'
    /// noise sits near `2^-21` at the `2^40` scale (bench/RESULTS.md), and keeping it would
    /// hand it out.
    pub const MAX_BITS: u32 = 20;

    /// Whether results are decrypted with noise flooding.
    pub fn flooded(self) -> bool {
        self == Self::FloodedLogits
    }

    /// What leaves the owner of a decryption's `logits`: the class, and the logits when
    /// released (rounded for [`Release::RoundedLogits`]; as given for
    /// [`Release::FloodedLogits`], whose decryption flooded and rounded them).
    ///
    /// # Errors
    /// [`DeployError::Config`] for more fractional bits than [`Release::MAX_BITS`].
    pub fn apply(self, logits: &[f64]) -> Result<Prediction, DeployError> {
        let class = hecnn_nn::exec::argmax(logits) as u32;
        match self {
            Self::Class => Ok(Prediction {
                class,
                logits: None,
                flooded: false,
            }),
            Self::FloodedLogits => Ok(Prediction {
                class,
                logits: Some(logits.to_vec()),
                flooded: false,
            }),
            Self::RoundedLogits { bits } if bits <= Self::MAX_BITS => {
                let unit = f64::from(bits).exp2();
                Ok(Prediction {
                    class,
                    logits: Some(logits.iter().map(|l| (l * unit).round() / unit).collect()),
                    flooded: false,
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
    /// Whether the class and logits come from a noise-flooded decryption.
    pub flooded: bool,
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
            refusal_budget: DEFAULT_REFUSAL_BUDGET,
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

    /// Decrypts a result for `release`: what [`Release::apply`] then turns into what leaves
    /// the owner.
    fn decrypt(&self, model_id: u64, bytes: &[u8]) -> Result<Prediction, DeployError> {
        let l = self
            .loaded(model_id)?
            .ok_or_else(|| DeployError::Wire(format!("model {model_id} is not registered")))?;
        let (spec, params) = (l.model.spec(), l.model.params());
        let (out, _) = ProtectedOutput::from_bytes(&self.be, spec, params, bytes)?;
        let dec = Decryptor::new(&l.secret, &self.be)?;
        let release = self.config.release;
        let Ok(flooding) = output_flooding(spec, params) else {
            // Parameters that cannot flood (models protected before they were sized for
            // it): the class, or rounded logits, from an unflooded decryption (an oracle on
            // the key: the residual risk of such models, documented in docs/services.md);
            // flooded logits are not released.
            let logits = decrypt_output(spec, params, &dec, &self.be, &out)?;
            return match release {
                Release::FloodedLogits => Release::Class.apply(&logits),
                r => r.apply(&logits),
            };
        };
        // Every release mode decides from the flooded decryption, the class included: an
        // argmax of an unflooded one would be an oracle on the key. A refusal
        // (`NnError::NoiseAboveBound`) is counted against the refusal budget by the caller.
        let mut rng = hecnn_ring::Prng::from_entropy()?;
        let logits =
            decrypt_output_flooded(spec, params, &dec, &self.be, &out, &flooding, &mut rng)?;
        let mut p = release.apply(&logits)?;
        p.flooded = true;
        Ok(p)
    }
}

/// A batch of decryption outcomes as the registry stores them: a prediction or the fixed
/// reason it was not released, by sequence number.
type Outcomes = Vec<(u64, Result<Prediction, String>)>;

/// The outcomes of a batch of decryptions, in sequence order, as they are stored: each
/// refusal for noise above the flooding's bound is counted against its model's budget
/// (`refused`, the model's refusals so far, updated), stored as [`REFUSED_REASON`] and
/// logged (with the noise estimate) for the owner on stderr only; once a model has spent
/// `budget` refusals, its later results are stored as [`SUSPENDED_REASON`] whatever they
/// decrypted to. `Err` is for errors to retry later (the registry, the master key).
fn apply_refusal_budget(
    decrypted: Vec<(u64, u64, Result<Prediction, DeployError>)>,
    refused: &mut HashMap<u64, u32>,
    budget: u32,
) -> Result<Outcomes, DeployError> {
    let mut outcomes = Vec::with_capacity(decrypted.len());
    for (seq, model_id, prediction) in decrypted {
        let spent = refused.entry(model_id).or_insert(0);
        if *spent >= budget {
            outcomes.push((seq, Err(SUSPENDED_REASON.to_string())));
            continue;
        }
        match prediction {
            Ok(p) => outcomes.push((seq, Ok(p))),
            Err(DeployError::Nn(NnError::NoiseAboveBound {
                noise_log2,
                bound_log2,
            })) => {
                *spent += 1;
                // The owner's log only: the estimate is a function of the secret key.
                eprintln!(
                    "decryption agent: result {seq} of model {model_id}: estimated noise \
                     2^{noise_log2:.1} above the flooding bound 2^{bound_log2:.1}: refused \
                     ({spent} of {budget} refusals)"
                );
                if *spent >= budget {
                    eprintln!(
                        "decryption agent: model {model_id}: refusal budget ({budget}) spent: \
                         its results are no longer decrypted; protect the model again under a \
                         fresh key (each refusal told the edge one bit about this key)"
                    );
                }
                outcomes.push((seq, Err(REFUSED_REASON.to_string())));
            }
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
    Ok(outcomes)
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
            let budget = o.config.refusal_budget;
            // Each model's refusals so far (stored results), so the budget survives restarts.
            let mut refused = HashMap::new();
            {
                let db = o.db.lock().unwrap_or_else(PoisonError::into_inner);
                for r in &batch {
                    if let std::collections::hash_map::Entry::Vacant(e) = refused.entry(r.model_id)
                    {
                        e.insert(db.refusals(r.model_id, REFUSED_REASON)?);
                    }
                }
            }
            // Results of a model whose budget is already spent are not decrypted at all.
            let results = o.be.par_map(batch, |r| {
                let prediction = if refused.get(&r.model_id).is_some_and(|&n| n >= budget) {
                    Err(DeployError::Config(SUSPENDED_REASON.into()))
                } else {
                    o.decrypt(r.model_id, &r.output)
                };
                (r.seq, r.model_id, prediction)
            });
            // The budget is applied in sequence order, after the parallel decryptions: a
            // batch cannot spend more refusals than the budget allows.
            let outcomes = apply_refusal_budget(results, &mut refused, budget)?;
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
                logits: None,
                flooded: false,
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

    /// Each refusal is counted against its model's budget, stored as a fixed string (never
    /// the noise estimate), and once the budget is spent the model's later results are
    /// suspended whatever they decrypted to; other models are not affected.
    #[test]
    fn the_refusal_budget_suspends_a_models_releases() {
        use super::{DeployError, NnError, REFUSED_REASON, SUSPENDED_REASON, apply_refusal_budget};
        use std::collections::HashMap;
        let ok = || {
            Ok(Prediction {
                class: 1,
                logits: None,
                flooded: true,
            })
        };
        let refused = || {
            Err(DeployError::Nn(NnError::NoiseAboveBound {
                noise_log2: 23.456,
                bound_log2: 21.0,
            }))
        };
        for budget in [1, 2] {
            let mut spent = HashMap::new();
            let batch = vec![
                (1, 7, ok()),
                (2, 7, refused()),
                (3, 8, ok()),
                (4, 7, refused()),
                (5, 7, ok()),
                (6, 8, refused()),
            ];
            let out = apply_refusal_budget(batch, &mut spent, budget).unwrap();
            let reasons: Vec<Option<&str>> = out
                .iter()
                .map(|(_, o)| o.as_ref().err().map(String::as_str))
                .collect();
            let want: Vec<Option<&str>> = if budget == 1 {
                vec![
                    None,
                    Some(REFUSED_REASON),
                    None,
                    Some(SUSPENDED_REASON),
                    Some(SUSPENDED_REASON),
                    Some(REFUSED_REASON),
                ]
            } else {
                vec![
                    None,
                    Some(REFUSED_REASON),
                    None,
                    Some(REFUSED_REASON),
                    Some(SUSPENDED_REASON),
                    Some(REFUSED_REASON),
                ]
            };
            assert_eq!(reasons, want, "budget {budget}");
            assert_eq!(
                out.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                [1, 2, 3, 4, 5, 6]
            );
            for (_, o) in &out {
                if let Err(e) = o {
                    assert!(!e.contains("23.4") && !e.contains("23.5"), "{e}");
                }
            }
            // A later batch: model 7 stays suspended (its refusals counted), model 8 follows
            // its own count.
            let out =
                apply_refusal_budget(vec![(7, 7, ok()), (8, 8, ok())], &mut spent, budget).unwrap();
            assert_eq!(
                out[0].1.as_ref().err().map(String::as_str),
                Some(SUSPENDED_REASON)
            );
            assert_eq!(out[1].1.is_ok(), budget > 1);
        }
    }

    /// The registry counts a model's stored refusals (so the budget survives restarts),
    /// records whether a row's prediction was flooded, and reads rows from before it
    /// recorded it as not flooded.
    #[test]
    fn refusals_and_flooded_rows_are_recorded() {
        use super::REFUSED_REASON;
        use super::registry::NewModel;
        let dir = std::env::temp_dir().join(format!("hecnn-refusals-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.sqlite");
        let mut reg = Registry::open(&path).unwrap();
        let model = reg
            .insert_model(&NewModel {
                name: "m",
                scope: "last",
                security: 128,
                encrypt_features: false,
                key_id: [1; 32],
                protected: b"p",
                public_key: b"k",
                eval_keys: b"e",
                sealed_secret: b"s",
            })
            .unwrap();
        let node = reg
            .insert_node(
                "edge",
                "http://127.0.0.1:1",
                crate::auth::TokenHash([3; 32]),
                b"t",
            )
            .unwrap();
        let dep = reg.insert_deployment(model.id, node).unwrap();
        for i in 0..4 {
            reg.insert_result(dep, &format!("x{i}"), &[i]).unwrap();
        }
        let p = |flooded| Prediction {
            class: 2,
            logits: Some(vec![0.5, 1.0, 2.0]),
            flooded,
        };
        reg.store_decrypted(&[
            (1, Ok(p(true))),
            (2, Ok(p(false))),
            (3, Err(REFUSED_REASON.to_string())),
        ])
        .unwrap();
        assert_eq!(reg.refusals(model.id, REFUSED_REASON).unwrap(), 1);
        assert_eq!(reg.refusals(model.id + 1, REFUSED_REASON).unwrap(), 0);
        let rows = reg.results(0, None, 10).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.flooded).collect::<Vec<_>>(),
            [true, false, false]
        );
        assert_eq!(rows[2].error.as_deref(), Some(REFUSED_REASON));
        drop(reg);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flooded_release_keeps_the_flooded_logits_and_their_class() {
        // The decryption flooded and rounded them; the release passes them on.
        let flooded = [0.125, 1.984_375, 2.015_625, -3.25];
        let p = Release::FloodedLogits.apply(&flooded).unwrap();
        assert_eq!(p.class, 2);
        assert_eq!(p.logits, Some(flooded.to_vec()));
        assert!(Release::FloodedLogits.flooded());
        assert!(!Release::default().flooded());
        assert!(!Release::RoundedLogits { bits: 8 }.flooded());
    }
}
