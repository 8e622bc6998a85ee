//! The inference service's state on disk: one JSON record per client, session and job, and
//! the bulk bytes (evaluation keys, encrypted inputs, encrypted outputs) next to them, each
//! written through [`crate::files`] (temporary file, fsync, rename, directory fsync).
//!
//! ```text
//! <state>/admin.token            the administrator token (mode 0600, written once)
//! <state>/admin.hash             its BLAKE3 hash (what the service checks)
//! <state>/clients/<id>.json      a client: name, token hash
//! <state>/sessions/<id>.keys     a session's evaluation keys (written first)
//! <state>/sessions/<id>.json     the session: client, key pair, model (written second)
//! <state>/jobs/<id>.in           an accepted job's encrypted inputs (written first)
//! <state>/jobs/<id>.json         the job: client, session, state (written second, rewritten
//!                                when the job finishes)
//! <state>/jobs/<id>.out          the encrypted outputs (written before the record says done)
//! ```
//!
//! A record exists only once its bulk file is whole, so after a crash a bulk file without a
//! record is a leftover and is removed at start-up, and a record always finds its bulk file.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::auth::{TokenHash, hex};
use crate::{DeployError, files};

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fresh random identifier: 128 bits as 32 lower-case hex digits.
pub(crate) fn new_id() -> Result<String, DeployError> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| DeployError::Config(format!("no randomness: {e}")))?;
    Ok(hex(&raw))
}

/// Whether `s` has the form of an identifier (so it is safe in a file name).
pub(crate) fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The bytes of lower-case or upper-case hex `s`.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// 32 bytes from hex.
pub(crate) fn unhex32(s: &str) -> Option<[u8; 32]> {
    unhex(s)?.try_into().ok()
}

/// A registered client.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ClientRecord {
    /// Its identifier.
    pub(crate) id: String,
    /// Its name (unique), as the administrator gave it.
    pub(crate) name: String,
    /// BLAKE3 of its token, hex.
    pub(crate) token_hash: String,
    /// When it was created.
    pub(crate) created_ms: u64,
}

impl ClientRecord {
    /// The stored hash of its token.
    pub(crate) fn hash(&self) -> Option<TokenHash> {
        unhex32(&self.token_hash).map(TokenHash)
    }
}

/// A session: one client's evaluation keys for the served model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// Its identifier.
    pub(crate) id: String,
    /// The client it belongs to.
    pub(crate) client: String,
    /// The key pair of its evaluation keys, hex.
    pub(crate) key_id: String,
    /// The fingerprint of the compiled model it was registered for, hex.
    pub(crate) model: String,
    /// When it was registered.
    pub(crate) created_ms: u64,
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobState {
    /// Accepted, waiting for a worker or being evaluated.
    Pending,
    /// The outputs are stored.
    Done,
    /// The evaluation failed (the reason is in the record).
    Failed,
}

/// A job's record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    /// Its identifier.
    pub(crate) id: String,
    /// The client that submitted it.
    pub(crate) client: String,
    /// The session it runs under.
    pub(crate) session: String,
    /// Images in its inputs.
    pub(crate) images: u64,
    /// When it was accepted.
    pub(crate) accepted_ms: u64,
    /// Its state.
    pub(crate) state: JobState,
    /// When it finished (done or failed).
    #[serde(default)]
    pub(crate) finished_ms: Option<u64>,
    /// Seconds the evaluation took.
    #[serde(default)]
    pub(crate) eval_seconds: Option<f64>,
    /// Why it failed.
    #[serde(default)]
    pub(crate) error: Option<String>,
}

/// The state directory's layout.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating what is missing) the state directory `root` and removes the
    /// temporary files a crash left.
    pub(crate) fn open(root: &Path) -> Result<Self, DeployError> {
        let s = Self {
            root: root.to_path_buf(),
        };
        for d in [s.root.clone(), s.clients(), s.sessions(), s.jobs()] {
            files::ensure_dir(&d)?;
            files::sweep_temporaries(&d)?;
        }
        Ok(s)
    }

    fn clients(&self) -> PathBuf {
        self.root.join("clients")
    }
    fn sessions(&self) -> PathBuf {
        self.root.join("sessions")
    }
    fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }

    /// The administrator token's file.
    pub(crate) fn admin_token_file(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    /// The administrator token's hash file.
    pub(crate) fn admin_hash_file(&self) -> PathBuf {
        self.root.join("admin.hash")
    }

    /// A session's evaluation keys.
    pub(crate) fn keys_file(&self, session: &str) -> PathBuf {
        self.sessions().join(format!("{session}.keys"))
    }
    /// A job's encrypted inputs.
    pub(crate) fn input_file(&self, job: &str) -> PathBuf {
        self.jobs().join(format!("{job}.in"))
    }
    /// A job's encrypted outputs.
    pub(crate) fn output_file(&self, job: &str) -> PathBuf {
        self.jobs().join(format!("{job}.out"))
    }

    /// Stores a client's record.
    pub(crate) fn put_client(&self, c: &ClientRecord) -> Result<(), DeployError> {
        write_json(&self.clients().join(format!("{}.json", c.id)), c)
    }

    /// Stores a session: its keys, then its record.
    pub(crate) fn put_session(&self, s: &SessionRecord, keys: &[u8]) -> Result<(), DeployError> {
        files::write_atomic(&self.keys_file(&s.id), keys)?;
        write_json(&self.sessions().join(format!("{}.json", s.id)), s)
    }

    /// Removes a session: its record first, then its keys.
    pub(crate) fn delete_session(&self, id: &str) -> Result<(), DeployError> {
        remove(&self.sessions().join(format!("{id}.json")))?;
        remove(&self.keys_file(id))
    }

    /// Stores an accepted job: its inputs, then its record.
    pub(crate) fn put_new_job(&self, j: &JobRecord, inputs: &[u8]) -> Result<(), DeployError> {
        files::write_atomic(&self.input_file(&j.id), inputs)?;
        self.put_job(j)
    }

    /// Stores (or replaces) a job's record.
    pub(crate) fn put_job(&self, j: &JobRecord) -> Result<(), DeployError> {
        write_json(&self.jobs().join(format!("{}.json", j.id)), j)
    }

    /// Stores a finished job: its outputs, then its record (done), then drops its inputs.
    pub(crate) fn put_result(&self, j: &JobRecord, outputs: &[u8]) -> Result<(), DeployError> {
        files::write_atomic(&self.output_file(&j.id), outputs)?;
        self.put_job(j)?;
        remove(&self.input_file(&j.id))
    }

    /// Stores a failed job's record, then drops its inputs.
    pub(crate) fn put_failure(&self, j: &JobRecord) -> Result<(), DeployError> {
        self.put_job(j)?;
        remove(&self.input_file(&j.id))
    }

    /// Removes a job: its record first, then its files.
    pub(crate) fn delete_job(&self, id: &str) -> Result<(), DeployError> {
        remove(&self.jobs().join(format!("{id}.json")))?;
        remove(&self.input_file(id))?;
        remove(&self.output_file(id))
    }

    /// Every client record (unreadable ones are reported and skipped).
    pub(crate) fn load_clients(&self) -> Result<Vec<ClientRecord>, DeployError> {
        load_all(&self.clients())
    }

    /// Every session record whose keys are present. Leftover keys without a record are
    /// removed.
    pub(crate) fn load_sessions(&self) -> Result<Vec<SessionRecord>, DeployError> {
        let records: Vec<SessionRecord> = load_all(&self.sessions())?;
        let mut kept = Vec::with_capacity(records.len());
        for r in records {
            if self.keys_file(&r.id).is_file() {
                kept.push(r);
            } else {
                eprintln!("session {}: its keys are missing; dropped", r.id);
                remove(&self.sessions().join(format!("{}.json", r.id)))?;
            }
        }
        for keys in files::list(&self.sessions(), "keys")? {
            let id = stem(&keys);
            if !kept.iter().any(|r| r.id == id) {
                remove(&keys)?;
            }
        }
        Ok(kept)
    }

    /// Every job record, its bulk files made consistent with it: a pending job whose outputs
    /// are stored is done; a pending job without inputs, or a done job without outputs, is
    /// dropped; inputs and outputs without a record are removed.
    pub(crate) fn load_jobs(&self) -> Result<Vec<JobRecord>, DeployError> {
        let records: Vec<JobRecord> = load_all(&self.jobs())?;
        let mut kept = Vec::with_capacity(records.len());
        for mut j in records {
            let (has_in, has_out) = (
                self.input_file(&j.id).is_file(),
                self.output_file(&j.id).is_file(),
            );
            match j.state {
                JobState::Pending if has_out => {
                    // The crash came after the outputs were stored, before the record said so.
                    j.state = JobState::Done;
                    j.finished_ms = Some(now_ms());
                    self.put_job(&j)?;
                    remove(&self.input_file(&j.id))?;
                }
                JobState::Pending if !has_in => {
                    eprintln!("job {}: its inputs are missing; dropped", j.id);
                    self.delete_job(&j.id)?;
                    continue;
                }
                JobState::Done if !has_out => {
                    eprintln!("job {}: its outputs are missing; dropped", j.id);
                    self.delete_job(&j.id)?;
                    continue;
                }
                // Finished: the inputs are no longer needed (the crash came before their
                // removal).
                JobState::Done | JobState::Failed if has_in => remove(&self.input_file(&j.id))?,
                _ => {}
            }
            kept.push(j);
        }
        for ext in ["in", "out"] {
            for f in files::list(&self.jobs(), ext)? {
                let id = stem(&f);
                if !kept.iter().any(|j| j.id == id) {
                    remove(&f)?;
                }
            }
        }
        Ok(kept)
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DeployError> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| DeployError::Config(format!("{}: {e}", path.display())))?;
    files::write_atomic(path, &bytes)
}

/// Removes `path`; a file already gone is fine.
fn remove(path: &Path) -> Result<(), DeployError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DeployError::io(path, e)),
    }
}

/// Every `*.json` record of `dir` that parses and whose name is its id.
fn load_all<T: for<'de> Deserialize<'de> + HasId>(dir: &Path) -> Result<Vec<T>, DeployError> {
    let mut out = Vec::new();
    for path in files::list(dir, "json")? {
        let bytes = std::fs::read(&path).map_err(|e| DeployError::io(&path, e))?;
        match serde_json::from_slice::<T>(&bytes) {
            Ok(r) if r.id() == stem(&path) && is_id(r.id()) => out.push(r),
            Ok(_) => eprintln!(
                "{}: the record's id is not its name; ignored",
                path.display()
            ),
            Err(e) => eprintln!("{}: unreadable record ({e}); ignored", path.display()),
        }
    }
    Ok(out)
}

/// Records named by their id.
trait HasId {
    fn id(&self) -> &str;
}
impl HasId for ClientRecord {
    fn id(&self) -> &str {
        &self.id
    }
}
impl HasId for SessionRecord {
    fn id(&self) -> &str {
        &self.id
    }
}
impl HasId for JobRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, state: JobState) -> JobRecord {
        JobRecord {
            id: id.into(),
            client: "c".repeat(32),
            session: "s".repeat(32),
            images: 1,
            accepted_ms: 1,
            state,
            finished_ms: None,
            eval_seconds: None,
            error: None,
        }
    }

    #[test]
    fn ids_and_hex_round_trip() {
        let id = new_id().unwrap();
        assert!(is_id(&id));
        assert!(!is_id("../../etc/passwd"));
        assert!(!is_id(&id.to_uppercase()));
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn records_and_their_files_are_made_consistent_at_load() {
        let dir = std::env::temp_dir().join(format!("hecnn-infer-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let st = Store::open(&dir).unwrap();
        let ids: Vec<String> = (0..5).map(|_| new_id().unwrap()).collect();
        // 0: pending with inputs; 1: pending whose outputs were stored before the crash;
        // 2: done; 3: pending without inputs; 4: inputs without a record.
        st.put_new_job(&job(&ids[0], JobState::Pending), b"in0")
            .unwrap();
        st.put_new_job(&job(&ids[1], JobState::Pending), b"in1")
            .unwrap();
        std::fs::write(st.output_file(&ids[1]), b"out1").unwrap();
        st.put_new_job(&job(&ids[2], JobState::Pending), b"in2")
            .unwrap();
        st.put_result(&job(&ids[2], JobState::Done), b"out2")
            .unwrap();
        st.put_job(&job(&ids[3], JobState::Pending)).unwrap();
        std::fs::write(st.input_file(&ids[4]), b"in4").unwrap();
        let mut got: Vec<(String, JobState)> = st
            .load_jobs()
            .unwrap()
            .into_iter()
            .map(|j| (j.id, j.state))
            .collect();
        got.sort();
        let mut want = vec![
            (ids[0].clone(), JobState::Pending),
            (ids[1].clone(), JobState::Done),
            (ids[2].clone(), JobState::Done),
        ];
        want.sort();
        assert_eq!(got, want);
        assert!(!st.input_file(&ids[1]).exists());
        assert!(!st.input_file(&ids[2]).exists());
        assert!(!st.input_file(&ids[4]).exists());
        assert!(!dir.join("jobs").join(format!("{}.json", ids[3])).exists());

        // A session's record without keys is dropped; keys without a record are removed.
        let s = SessionRecord {
            id: new_id().unwrap(),
            client: ids[0].clone(),
            key_id: "00".repeat(32),
            model: "00".repeat(32),
            created_ms: 0,
        };
        st.put_session(&s, b"keys").unwrap();
        let orphan = new_id().unwrap();
        std::fs::write(st.keys_file(&orphan), b"k").unwrap();
        let lost = SessionRecord {
            id: new_id().unwrap(),
            ..s.clone()
        };
        st.put_session(&lost, b"keys").unwrap();
        std::fs::remove_file(st.keys_file(&lost.id)).unwrap();
        let got = st.load_sessions().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, s.id);
        assert!(!st.keys_file(&orphan).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
