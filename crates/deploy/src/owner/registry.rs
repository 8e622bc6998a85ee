//! The owner's registry: models, nodes, tokens, deployments and results in one SQLite
//! database (WAL journal, full synchronous commits). Every change is one transaction, so a
//! crash leaves each record whole or absent.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::DeployError;
use crate::auth::{TokenHash, hex};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    scope TEXT NOT NULL,
    security INTEGER NOT NULL,
    encrypt_features INTEGER NOT NULL,
    key_id BLOB NOT NULL,
    protected BLOB NOT NULL,
    public_key BLOB NOT NULL,
    eval_keys BLOB NOT NULL,
    sealed_secret BLOB NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    sealed_token BLOB NOT NULL,
    revoked INTEGER
);
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'consumer')),
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL REFERENCES models(id),
    node_id INTEGER NOT NULL REFERENCES nodes(id),
    state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'superseded', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY,
    deployment_id INTEGER NOT NULL REFERENCES deployments(id),
    input_id TEXT NOT NULL,
    output BLOB NOT NULL,
    received INTEGER NOT NULL,
    class INTEGER,
    logits TEXT,
    decrypted INTEGER,
    error TEXT,
    flooded INTEGER,
    UNIQUE (deployment_id, input_id)
);
CREATE INDEX IF NOT EXISTS results_pending ON results (seq) WHERE decrypted IS NULL;
CREATE TABLE IF NOT EXISTS master_check (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sealed BLOB NOT NULL
);
";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A model as registered.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelRow {
    /// Registry id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Version under the name.
    pub version: u32,
    /// `last layer` or `classifier`.
    pub scope: String,
    /// Security level in bits.
    pub security: u32,
    /// Whether edges encrypt the features.
    pub encrypt_features: bool,
    /// Owner key id (hex).
    pub key_id: String,
}

/// A new model to register.
pub struct NewModel<'a> {
    /// Name.
    pub name: &'a str,
    /// `last layer` or `classifier`.
    pub scope: &'a str,
    /// Security level in bits.
    pub security: u32,
    /// Whether edges encrypt the features.
    pub encrypt_features: bool,
    /// Owner key id.
    pub key_id: [u8; 32],
    /// `HCNP` bytes.
    pub protected: &'a [u8],
    /// Public key bytes.
    pub public_key: &'a [u8],
    /// Evaluation key bytes.
    pub eval_keys: &'a [u8],
    /// The secret key, sealed under the master key.
    pub sealed_secret: &'a [u8],
}

/// A model's stored material.
pub struct ModelBlobs {
    /// The owner key id.
    pub key_id: [u8; 32],
    /// `HCNP` bytes.
    pub protected: Vec<u8>,
    /// Public key bytes.
    pub public_key: Vec<u8>,
    /// Evaluation key bytes.
    pub eval_keys: Vec<u8>,
    /// The sealed secret key.
    pub sealed_secret: Vec<u8>,
}

/// An edge node.
#[derive(Clone, Debug)]
pub struct NodeRow {
    /// Registry id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Base URL of its service.
    pub url: String,
    /// Its token, sealed.
    pub sealed_token: Vec<u8>,
    /// Revoked (its token refused, nothing deployed to it); its name is not reused.
    pub revoked: bool,
}

/// A deployment.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeploymentRow {
    /// Registry id.
    pub id: u64,
    /// The model.
    pub model_id: u64,
    /// The node.
    pub node_id: u64,
    /// `pending`, `active`, `superseded` or `failed`.
    pub state: String,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last delivery error.
    pub last_error: Option<String>,
}

/// What [`Registry::insert_result`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A new result, stored.
    New,
    /// The stored result again (a retry): nothing changed.
    Again,
    /// Another result for an input id that already has one: refused, nothing changed.
    OtherForSameId,
}

/// Whose record [`Registry::first_sealed`] returned.
pub enum SealedBy {
    /// A model's secret key, by its key id.
    Model([u8; 32]),
    /// A node's token, by the node's name.
    Node(String),
}

/// A result ready for consumers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ResultRow {
    /// Sequence number (increasing; page with `after`).
    pub seq: u64,
    /// The deployment that produced it.
    pub deployment_id: u64,
    /// The input's id at the edge.
    pub input_id: String,
    /// Arrival time (ms since the epoch).
    pub received: i64,
    /// The predicted class (absent until decrypted).
    pub class: Option<u32>,
    /// The logits, rounded (absent until decrypted, and unless the owner releases them:
    /// [`super::Release`]).
    pub logits: Option<Vec<f64>>,
    /// Why the result could not be decrypted, if it could not.
    pub error: Option<String>,
    /// Whether the stored class and logits come from a noise-flooded decryption (false for
    /// rows stored before the registry recorded it). Not served: it decides what is.
    #[serde(skip)]
    pub flooded: bool,
}

/// An encrypted result waiting for the decryption agent.
pub struct PendingResult {
    /// Sequence number.
    pub seq: u64,
    /// The model it belongs to.
    pub model_id: u64,
    /// `HCNO` bytes.
    pub output: Vec<u8>,
}

/// The registry.
pub struct Registry {
    conn: Connection,
}

fn id(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const NODE_COLUMNS: &str = "id, name, url, sealed_token, revoked";

fn node_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRow> {
    Ok(NodeRow {
        id: id(r.get(0)?),
        name: r.get(1)?,
        url: r.get(2)?,
        sealed_token: r.get(3)?,
        revoked: r.get::<_, Option<i64>>(4)?.is_some(),
    })
}

impl Registry {
    /// Opens (or creates) the registry at `path`.
    ///
    /// # Errors
    /// Database errors.
    pub fn open(path: &Path) -> Result<Self, DeployError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        // Registries from before revocation: the column is added once, empty.
        let has_revoked: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('nodes') WHERE name = 'revoked'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_revoked {
            conn.execute_batch("ALTER TABLE nodes ADD COLUMN revoked INTEGER")?;
        }
        // Registries from before flooded releases: the column is added once, empty (a row
        // without it was not flooded).
        let has_flooded: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('results') WHERE name = 'flooded'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_flooded {
            conn.execute_batch("ALTER TABLE results ADD COLUMN flooded INTEGER")?;
        }
        Ok(Self { conn })
    }

    /// `PRAGMA integrity_check` (`ok` for a sound database).
    ///
    /// # Errors
    /// Database errors.
    pub fn integrity_check(&self) -> Result<String, DeployError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    /// Whether the state holds anything sealed with the master key (models or nodes), or
    /// its record of which key that is.
    ///
    /// # Errors
    /// Database errors.
    pub fn has_sealed_state(&self) -> Result<bool, DeployError> {
        Ok(self.conn.query_row(
            "SELECT (SELECT count(*) FROM models) + (SELECT count(*) FROM nodes) \
             + (SELECT count(*) FROM master_check)",
            [],
            |r| r.get::<_, i64>(0),
        )? > 0)
    }

    /// The constant sealed with the state's master key when it was created (absent in
    /// states made before the check existed).
    ///
    /// # Errors
    /// Database errors.
    pub fn master_check(&self) -> Result<Option<Vec<u8>>, DeployError> {
        let mut st = self
            .conn
            .prepare("SELECT sealed FROM master_check WHERE id = 1")?;
        let mut rows = st.query([])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    }

    /// One record sealed with the master key, for states made before the master check:
    /// the first model's secret (by key id) or else the first node's token (by name).
    ///
    /// # Errors
    /// Database errors.
    pub fn first_sealed(&self) -> Result<Option<(SealedBy, Vec<u8>)>, DeployError> {
        let model = self
            .conn
            .prepare("SELECT key_id, sealed_secret FROM models ORDER BY id LIMIT 1")?
            .query_row([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?;
        if let Some((key_id, sealed)) = model {
            let key_id: [u8; 32] = key_id.as_slice().try_into().map_err(|_| {
                DeployError::Config("registry: a model key id that is not 32 bytes".into())
            })?;
            return Ok(Some((SealedBy::Model(key_id), sealed)));
        }
        let node = self
            .conn
            .prepare("SELECT name, sealed_token FROM nodes ORDER BY id LIMIT 1")?
            .query_row([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?;
        Ok(node.map(|(name, sealed)| (SealedBy::Node(name), sealed)))
    }

    /// Records the sealed constant that identifies the state's master key.
    ///
    /// # Errors
    /// Database errors.
    pub fn set_master_check(&self, sealed: &[u8]) -> Result<(), DeployError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO master_check (id, sealed) VALUES (1, ?1)",
            params![sealed],
        )?;
        Ok(())
    }

    /// Whether an administrator token exists.
    ///
    /// # Errors
    /// Database errors.
    pub fn has_admin(&self) -> Result<bool, DeployError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM tokens WHERE role = 'admin'",
            [],
            |r| r.get::<_, i64>(0),
        )? > 0)
    }

    /// Adds a token of `role` (`admin` or `consumer`).
    ///
    /// # Errors
    /// Database errors.
    pub fn add_token(&self, hash: TokenHash, role: &str, name: &str) -> Result<(), DeployError> {
        self.conn.execute(
            "INSERT INTO tokens (hash, role, name) VALUES (?1, ?2, ?3)",
            params![hash.0.as_slice(), role, name],
        )?;
        Ok(())
    }

    /// The role of a token, if it is one.
    ///
    /// # Errors
    /// Database errors.
    pub fn token_role(&self, hash: TokenHash) -> Result<Option<String>, DeployError> {
        Ok(self
            .conn
            .query_row(
                "SELECT role FROM tokens WHERE hash = ?1",
                [hash.0.as_slice()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Registers a model, its version being one more than the last of its name.
    ///
    /// # Errors
    /// Database errors.
    pub fn insert_model(&mut self, m: &NewModel<'_>) -> Result<ModelRow, DeployError> {
        let tx = self.conn.transaction()?;
        let version: u32 = tx.query_row(
            "SELECT coalesce(max(version), 0) + 1 FROM models WHERE name = ?1",
            [m.name],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO models (name, version, scope, security, encrypt_features, key_id, \
             protected, public_key, eval_keys, sealed_secret, created) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                m.name,
                version,
                m.scope,
                m.security,
                m.encrypt_features,
                m.key_id.as_slice(),
                m.protected,
                m.public_key,
                m.eval_keys,
                m.sealed_secret,
                now()
            ],
        )?;
        let row_id = id(tx.last_insert_rowid());
        tx.commit()?;
        Ok(ModelRow {
            id: row_id,
            name: m.name.to_string(),
            version,
            scope: m.scope.to_string(),
            security: m.security,
            encrypt_features: m.encrypt_features,
            key_id: hex(&m.key_id),
        })
    }

    /// All models (without their blobs).
    ///
    /// # Errors
    /// Database errors.
    pub fn models(&self) -> Result<Vec<ModelRow>, DeployError> {
        self.models_where("?1 = ?1", 0)
    }

    fn models_where(&self, clause: &str, arg: i64) -> Result<Vec<ModelRow>, DeployError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT id, name, version, scope, security, encrypt_features, key_id FROM models \
             WHERE {clause} ORDER BY id"
        ))?;
        let rows = st.query_map([arg], |r| {
            Ok(ModelRow {
                id: id(r.get(0)?),
                name: r.get(1)?,
                version: r.get(2)?,
                scope: r.get(3)?,
                security: r.get(4)?,
                encrypt_features: r.get(5)?,
                key_id: hex(&r.get::<_, Vec<u8>>(6)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One model, if registered.
    ///
    /// # Errors
    /// Database errors.
    pub fn model(&self, model_id: u64) -> Result<Option<ModelRow>, DeployError> {
        Ok(self.models_where("id = ?1", model_id as i64)?.pop())
    }

    /// A model's stored material.
    ///
    /// # Errors
    /// Database errors.
    pub fn model_blobs(&self, model_id: u64) -> Result<Option<ModelBlobs>, DeployError> {
        Ok(self
            .conn
            .query_row(
                "SELECT protected, public_key, eval_keys, sealed_secret, key_id FROM models WHERE id = ?1",
                [model_id as i64],
                |r| {
                    let key: Vec<u8> = r.get(4)?;
                    Ok(ModelBlobs {
                        key_id: key.as_slice().try_into().unwrap_or([0; 32]),
                        protected: r.get(0)?,
                        public_key: r.get(1)?,
                        eval_keys: r.get(2)?,
                        sealed_secret: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Registers a node.
    ///
    /// # Errors
    /// Database errors, a name already taken included.
    pub fn insert_node(
        &self,
        name: &str,
        url: &str,
        token: TokenHash,
        sealed_token: &[u8],
    ) -> Result<u64, DeployError> {
        self.conn.execute(
            "INSERT INTO nodes (name, url, token_hash, sealed_token) VALUES (?1, ?2, ?3, ?4)",
            params![name, url, token.0.as_slice(), sealed_token],
        )?;
        Ok(id(self.conn.last_insert_rowid()))
    }

    fn node_where(
        &self,
        clause: &str,
        arg: &dyn rusqlite::ToSql,
    ) -> Result<Option<NodeRow>, DeployError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE {clause}"),
                [arg],
                node_row,
            )
            .optional()?)
    }

    /// The node a token belongs to, unless it was revoked.
    ///
    /// # Errors
    /// Database errors.
    pub fn node_by_token(&self, hash: TokenHash) -> Result<Option<NodeRow>, DeployError> {
        self.node_where("token_hash = ?1 AND revoked IS NULL", &hash.0.as_slice())
    }

    /// Every node, revoked ones included, by id.
    ///
    /// # Errors
    /// Database errors.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, DeployError> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"))?;
        let rows = st.query_map([], node_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes the node `name` in one transaction: its token stops working and its
    /// deployments not yet delivered fail. `None` for no such node, `Some(false)` when it
    /// was revoked already.
    ///
    /// # Errors
    /// Database errors.
    pub fn revoke_node(&mut self, name: &str) -> Result<Option<bool>, DeployError> {
        let tx = self.conn.transaction()?;
        let revoked: Option<Option<i64>> = tx
            .query_row("SELECT revoked FROM nodes WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        let out = match revoked {
            None => None,
            Some(Some(_)) => Some(false),
            Some(None) => {
                let t = now();
                tx.execute(
                    "UPDATE nodes SET revoked = ?2 WHERE name = ?1",
                    params![name, t],
                )?;
                tx.execute(
                    "UPDATE deployments SET state = 'failed', last_error = 'node revoked', \
                     updated = ?2 WHERE state = 'pending' AND node_id = \
                     (SELECT id FROM nodes WHERE name = ?1)",
                    params![name, t],
                )?;
                Some(true)
            }
        };
        tx.commit()?;
        Ok(out)
    }

    /// Consumer names, one per token (a name given twice has two tokens), sorted.
    ///
    /// # Errors
    /// Database errors.
    pub fn consumers(&self) -> Result<Vec<String>, DeployError> {
        let mut st = self
            .conn
            .prepare("SELECT name FROM tokens WHERE role = 'consumer' ORDER BY name")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes every consumer token of `name`; how many there were.
    ///
    /// # Errors
    /// Database errors.
    pub fn revoke_consumer(&self, name: &str) -> Result<usize, DeployError> {
        Ok(self.conn.execute(
            "DELETE FROM tokens WHERE role = 'consumer' AND name = ?1",
            [name],
        )?)
    }

    /// A node by name.
    ///
    /// # Errors
    /// Database errors.
    pub fn node_by_name(&self, name: &str) -> Result<Option<NodeRow>, DeployError> {
        self.node_where("name = ?1", &name)
    }

    /// A node by id.
    ///
    /// # Errors
    /// Database errors.
    pub fn node(&self, node_id: u64) -> Result<Option<NodeRow>, DeployError> {
        self.node_where("id = ?1", &(node_id as i64))
    }

    /// Records a deployment to push (state `pending`).
    ///
    /// # Errors
    /// Database errors.
    pub fn insert_deployment(&self, model_id: u64, node_id: u64) -> Result<u64, DeployError> {
        let t = now();
        self.conn.execute(
            "INSERT INTO deployments (model_id, node_id, state, created, updated) \
             VALUES (?1, ?2, 'pending', ?3, ?3)",
            params![model_id as i64, node_id as i64, t],
        )?;
        Ok(id(self.conn.last_insert_rowid()))
    }

    fn deployments_where(&self, clause: &str, arg: i64) -> Result<Vec<DeploymentRow>, DeployError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT id, model_id, node_id, state, attempts, last_error FROM deployments \
             WHERE {clause} ORDER BY id"
        ))?;
        let rows = st.query_map([arg], |r| {
            Ok(DeploymentRow {
                id: id(r.get(0)?),
                model_id: id(r.get(1)?),
                node_id: id(r.get(2)?),
                state: r.get(3)?,
                attempts: r.get(4)?,
                last_error: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One deployment.
    ///
    /// # Errors
    /// Database errors.
    pub fn deployment(&self, dep_id: u64) -> Result<Option<DeploymentRow>, DeployError> {
        Ok(self.deployments_where("id = ?1", dep_id as i64)?.pop())
    }

    /// Deployments still to push.
    ///
    /// # Errors
    /// Database errors.
    pub fn pending_deployments(&self) -> Result<Vec<DeploymentRow>, DeployError> {
        // A pending deployment older than the node's active one is left for `activate` of
        // the newer one to supersede; it is never pushed.
        self.deployments_where(
            "state = 'pending' AND ?1 = ?1 AND NOT EXISTS (SELECT 1 FROM deployments n \
             WHERE n.node_id = deployments.node_id AND n.id > deployments.id AND n.state = 'active')",
            0,
        )
    }

    /// Marks a deployment delivered: it becomes the node's active one, and the node's
    /// earlier active deployments are superseded (one transaction).
    ///
    /// # Errors
    /// Database errors.
    pub fn activate(&mut self, dep: &DeploymentRow) -> Result<(), DeployError> {
        let tx = self.conn.transaction()?;
        let t = now();
        // Older deployments of the node, delivered or not, are superseded: a retry of an
        // older one must never replace a newer model.
        tx.execute(
            "UPDATE deployments SET state = 'superseded', updated = ?3 \
             WHERE node_id = ?1 AND id < ?2 AND state IN ('active', 'pending')",
            params![dep.node_id as i64, dep.id as i64, t],
        )?;
        tx.execute(
            "UPDATE deployments SET state = 'active', attempts = attempts + 1, last_error = NULL, \
             updated = ?2 WHERE id = ?1",
            params![dep.id as i64, t],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records a failed delivery attempt; `give_up` marks the deployment failed.
    ///
    /// # Errors
    /// Database errors.
    pub fn delivery_failed(
        &self,
        dep_id: u64,
        error: &str,
        give_up: bool,
    ) -> Result<(), DeployError> {
        self.conn.execute(
            "UPDATE deployments SET attempts = attempts + 1, last_error = ?2, updated = ?3, \
             state = CASE WHEN ?4 THEN 'failed' ELSE state END WHERE id = ?1",
            params![dep_id as i64, error, now(), give_up],
        )?;
        Ok(())
    }

    /// Stores an encrypted result, unless this input's result is already stored: the same
    /// bytes again are a retry after a lost acknowledgement, other bytes a reused input id.
    ///
    /// # Errors
    /// Database errors.
    pub fn insert_result(
        &self,
        dep_id: u64,
        input_id: &str,
        output: &[u8],
    ) -> Result<Stored, DeployError> {
        let n = self.conn.execute(
            "INSERT INTO results (deployment_id, input_id, output, received) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (deployment_id, input_id) DO NOTHING",
            params![dep_id as i64, input_id, output, now()],
        )?;
        if n == 1 {
            return Ok(Stored::New);
        }
        let existing: Vec<u8> = self.conn.query_row(
            "SELECT output FROM results WHERE deployment_id = ?1 AND input_id = ?2",
            params![dep_id as i64, input_id],
            |r| r.get(0),
        )?;
        Ok(if existing == output {
            Stored::Again
        } else {
            Stored::OtherForSameId
        })
    }

    /// Up to `limit` results waiting for decryption, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub fn undecrypted(&self, limit: usize) -> Result<Vec<PendingResult>, DeployError> {
        let mut st = self.conn.prepare(
            "SELECT r.seq, d.model_id, r.output FROM results r JOIN deployments d ON d.id = r.deployment_id \
             WHERE r.decrypted IS NULL ORDER BY r.seq LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok(PendingResult {
                seq: id(r.get(0)?),
                model_id: id(r.get(1)?),
                output: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a batch of decryption outcomes in one transaction: a prediction (the class,
    /// and the logits where the owner releases them) or the reason it failed. Batches go in sequence order, so the decrypted
    /// results are always a prefix of the sequence and `after` paging never skips one.
    ///
    /// # Errors
    /// Database errors.
    pub fn store_decrypted(
        &mut self,
        batch: &[(u64, Result<super::Prediction, String>)],
    ) -> Result<(), DeployError> {
        let tx = self.conn.transaction()?;
        let t = now();
        for (seq, outcome) in batch {
            match outcome {
                Ok(p) => {
                    let json = p
                        .logits
                        .as_ref()
                        .map(serde_json::to_string)
                        .transpose()
                        .map_err(|e| DeployError::Wire(e.to_string()))?;
                    tx.execute(
                        "UPDATE results SET class = ?2, logits = ?3, decrypted = ?4, flooded = ?5 \
                         WHERE seq = ?1",
                        params![*seq as i64, p.class, json, t, p.flooded.then_some(1i64)],
                    )?;
                }
                Err(e) => {
                    tx.execute(
                        "UPDATE results SET error = ?2, decrypted = ?3 WHERE seq = ?1",
                        params![*seq as i64, e, t],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// How many results of model `model_id` were stored with the error `reason` (the
    /// refusals the decryption agent counts against the model's budget).
    ///
    /// # Errors
    /// Database errors.
    pub fn refusals(&self, model_id: u64, reason: &str) -> Result<u32, DeployError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM results r JOIN deployments d ON d.id = r.deployment_id \
             WHERE d.model_id = ?1 AND r.error = ?2",
            params![model_id as i64, reason],
            |r| r.get(0),
        )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Decrypted results (a prediction or a decryption error) after `after` (by sequence
    /// number), optionally of one deployment.
    ///
    /// # Errors
    /// Database errors.
    pub fn results(
        &self,
        after: u64,
        deployment: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ResultRow>, DeployError> {
        let mut st = self.conn.prepare(
            "SELECT seq, deployment_id, input_id, received, class, logits, error, flooded \
             FROM results \
             WHERE seq > ?1 AND decrypted IS NOT NULL AND (?2 IS NULL OR deployment_id = ?2) \
             ORDER BY seq LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![after as i64, deployment.map(|d| d as i64), limit as i64],
            |r| {
                let logits: Option<String> = r.get(5)?;
                Ok(ResultRow {
                    seq: id(r.get(0)?),
                    deployment_id: id(r.get(1)?),
                    input_id: r.get(2)?,
                    received: r.get(3)?,
                    class: r.get(4)?,
                    logits: logits.and_then(|l| serde_json::from_str(&l).ok()),
                    error: r.get(6)?,
                    flooded: r.get::<_, Option<i64>>(7)?.is_some_and(|f| f != 0),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry written before results recorded whether they were flooded opens, gains
    /// the column empty, and its stored logits read as not flooded.
    #[test]
    fn a_registry_from_before_flooded_results_is_migrated() {
        let dir = std::env::temp_dir().join(format!("hecnn-flooded-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.sqlite");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE results (seq INTEGER PRIMARY KEY, deployment_id INTEGER NOT NULL, \
                 input_id TEXT NOT NULL, output BLOB NOT NULL, received INTEGER NOT NULL, \
                 class INTEGER, logits TEXT, decrypted INTEGER, error TEXT, \
                 UNIQUE (deployment_id, input_id));
                 INSERT INTO results (deployment_id, input_id, output, received, class, logits, \
                 decrypted) VALUES (1, 'x', x'00', 1, 3, '[0.5,1.0]', 2);",
            )
            .unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        let rows = reg.results(0, None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].logits, Some(vec![0.5, 1.0]));
        assert!(!rows[0].flooded);
        drop(reg);
        assert!(Registry::open(&path).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A registry written before nodes could be revoked opens, gains the column empty, and
    /// its nodes keep working until revoked.
    #[test]
    fn a_registry_from_before_revocation_is_migrated() {
        let dir = std::env::temp_dir().join(format!("hecnn-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.sqlite");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE nodes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, \
                 url TEXT NOT NULL, token_hash BLOB NOT NULL UNIQUE, sealed_token BLOB NOT NULL);
                 INSERT INTO nodes (name, url, token_hash, sealed_token) \
                 VALUES ('edge', 'http://x:1', x'01', x'02');",
            )
            .unwrap();
        }
        let mut reg = Registry::open(&path).unwrap();
        let nodes = reg.nodes().unwrap();
        assert_eq!(nodes.len(), 1);
        assert!(!nodes[0].revoked);
        let hash = TokenHash([1; 32]);
        assert!(reg.node_by_token(hash).unwrap().is_none(), "another hash");
        assert_eq!(reg.revoke_node("edge").unwrap(), Some(true));
        assert_eq!(reg.revoke_node("edge").unwrap(), Some(false));
        assert_eq!(reg.revoke_node("nope").unwrap(), None);
        assert!(reg.nodes().unwrap()[0].revoked);
        drop(reg);
        // Opening again does not add the column twice.
        assert!(Registry::open(&path).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
