//! Test harness for the owner and edge services: processes of the `hecnn` binary on
//! loopback, an HTTP client, TLS material, real MNIST digits and the unprotected model's
//! predictions.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hecnn_nn::{Tensor, exec, onnx};
use serde_json::{Value, json};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hecnn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A service process; killed (SIGKILL) when dropped.
pub struct Service {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Service {
    /// Starts `hecnn ARGS` and waits for its "listening on" line.
    pub fn start(args: &[String], log: &Path) -> Self {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hecnn"))
            .args(args)
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{args:?} did not start: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        };
        Self {
            child,
            url,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

pub fn owner_args(state: &Path, port: u16, extra: &[String]) -> Vec<String> {
    let mut a = vec![
        "owner".into(),
        "serve".into(),
        "--state".into(),
        s(state),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--threads".into(),
        "1".into(),
    ];
    a.extend_from_slice(extra);
    a
}

pub fn edge_args(
    state: &Path,
    port: u16,
    owner: &str,
    token: &Path,
    owner_key: &Path,
    extra: &[String],
) -> Vec<String> {
    let mut a = vec![
        "edge".into(),
        "serve".into(),
        "--state".into(),
        s(state),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--owner".into(),
        owner.into(),
        "--token-file".into(),
        s(token),
        "--owner-key".into(),
        s(owner_key),
        "--threads".into(),
        "1".into(),
    ];
    a.extend_from_slice(extra);
    a
}

/// A CA and a certificate for 127.0.0.1 / localhost signed by it, as PEM files in `dir`:
/// `ca.pem`, `cert.pem`, `key.pem`.
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (ca_p, cert_p, key_p) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_p, ca.pem()).unwrap();
    std::fs::write(&cert_p, cert.pem()).unwrap();
    std::fs::write(&key_p, key.serialize_pem()).unwrap();
    (ca_p, cert_p, key_p)
}

/// An HTTP client trusting `ca` (when given).
pub fn client(ca: Option<&Path>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

/// An answer: status and JSON body.
pub fn call(req: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn token(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

pub struct Admin<'a> {
    pub http: &'a reqwest::blocking::Client,
    pub owner: String,
    pub token: String,
}

impl Admin<'_> {
    pub fn add_model(&self, model: &str, query: &str) -> u64 {
        let bytes = std::fs::read(repo().join(model)).unwrap();
        let (st, v) = call(
            self.http
                .post(format!("{}/v1/models?{query}", self.owner))
                .bearer_auth(&self.token)
                .body(bytes),
        );
        assert_eq!(st, 201, "{v}");
        v["id"].as_u64().unwrap()
    }

    /// Registers a node and writes its token to `file`.
    pub fn add_node(&self, name: &str, url: &str, file: &Path) {
        let (st, v) = call(
            self.http
                .post(format!("{}/v1/nodes", self.owner))
                .bearer_auth(&self.token)
                .json(&json!({ "name": name, "url": url })),
        );
        assert_eq!(st, 201, "{v}");
        std::fs::write(file, v["token"].as_str().unwrap()).unwrap();
    }

    pub fn deploy(&self, model_id: u64, node: &str) -> u64 {
        let (st, v) = call(
            self.http
                .post(format!("{}/v1/deployments", self.owner))
                .bearer_auth(&self.token)
                .json(&json!({ "model_id": model_id, "node": node })),
        );
        assert_eq!(st, 202, "{v}");
        v["deployment_id"].as_u64().unwrap()
    }

    pub fn deployment_state(&self, id: u64) -> String {
        let (st, v) = call(
            self.http
                .get(format!("{}/v1/deployments/{id}", self.owner))
                .bearer_auth(&self.token),
        );
        assert_eq!(st, 200, "{v}");
        v["state"].as_str().unwrap().to_string()
    }

    pub fn wait_active(&self, id: u64, timeout: Duration) {
        let t = Instant::now();
        loop {
            let state = self.deployment_state(id);
            if state == "active" {
                return;
            }
            assert!(t.elapsed() < timeout, "deployment {id} still {state}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// All results: input id → (deployment, class once decrypted).
    pub fn results(&self) -> Vec<(String, u64, Option<u64>)> {
        let (st, v) = call(
            self.http
                .get(format!("{}/v1/results?limit=10000", self.owner))
                .bearer_auth(&self.token),
        );
        assert_eq!(st, 200, "{v}");
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["input_id"].as_str().unwrap().to_string(),
                    r["deployment_id"].as_u64().unwrap(),
                    r["class"].as_u64(),
                )
            })
            .collect()
    }

    /// Waits until `ids` all have decrypted results; returns input id → class.
    pub fn wait_results(&self, ids: &[String], timeout: Duration) -> HashMap<String, u64> {
        let t = Instant::now();
        loop {
            let got: HashMap<String, u64> = self
                .results()
                .into_iter()
                .filter_map(|(id, _, c)| Some((id, c?)))
                .collect();
            if ids.iter().all(|i| got.contains_key(i)) {
                return got;
            }
            assert!(
                t.elapsed() < timeout,
                "{} of {} results after {timeout:?}",
                ids.iter().filter(|i| got.contains_key(*i)).count(),
                ids.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The bundled MNIST test digits (8-bit pixels) and labels.
pub fn mnist_sample() -> Vec<Vec<u8>> {
    let bytes = std::fs::read(repo().join("data/sample/mnist-test-images.idx3-ubyte")).unwrap();
    bytes[16..].chunks_exact(784).map(<[u8]>::to_vec).collect()
}

/// The unprotected model's class for an 8-bit image.
pub fn predict(model: &hecnn_nn::Model, shape: [usize; 3], px: &[u8]) -> u64 {
    let data = px
        .iter()
        .map(|&p| f64::from(f32::from(p) / 255.0))
        .collect();
    let out = exec::run(model, &Tensor::new(shape.to_vec(), data).unwrap()).unwrap();
    exec::argmax(out.data()) as u64
}

pub fn load_model(path: &str) -> hecnn_nn::Model {
    onnx::import_onnx_file(&repo().join(path)).unwrap()
}

/// The stream body for `images` named `{prefix}{index}`.
pub fn frames(prefix: &str, images: &[(usize, &[u8])]) -> (Vec<u8>, Vec<String>) {
    let mut body = Vec::new();
    let mut ids = Vec::new();
    for (i, px) in images {
        let id = format!("{prefix}{i:05}");
        body.extend_from_slice(&(id.len() as u16).to_le_bytes());
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(&(px.len() as u32).to_le_bytes());
        body.extend_from_slice(px);
        ids.push(id);
    }
    (body, ids)
}

/// Every file under `dir`, recursively.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Needles to look for in an edge's files and memory: 32-byte windows of the secret key's
/// ternary coefficients (as the key stores and serializes them), and the protected layers'
/// weights as pairs of consecutive values, in f64 (16 bytes) and in f32 (8 bytes). Pairs,
/// because weights that came from f32 have only 32 significant bits each.
pub struct Needles {
    pub secret: HashSet<[u8; 32]>,
    pub f64_pairs: HashSet<[u8; 16]>,
    pub f32_pairs: HashSet<[u8; 8]>,
}

impl Needles {
    pub fn new(secret_coeffs: &[u8], weights: &[f64]) -> Self {
        let secret = secret_coeffs
            .chunks_exact(32)
            .filter(|w| w.iter().filter(|&&b| b != 0).count() > 8)
            .map(|w| w.try_into().unwrap())
            .collect();
        let (mut f64_pairs, mut f32_pairs) = (HashSet::new(), HashSet::new());
        for p in weights.windows(2) {
            if p[0].abs() > 1e-6 && p[1].abs() > 1e-6 {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&p[0].to_le_bytes());
                b[8..].copy_from_slice(&p[1].to_le_bytes());
                f64_pairs.insert(b);
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&(p[0] as f32).to_le_bytes());
                b[4..].copy_from_slice(&(p[1] as f32).to_le_bytes());
                f32_pairs.insert(b);
            }
        }
        Self {
            secret,
            f64_pairs,
            f32_pairs,
        }
    }

    /// (secret-key windows, weight pairs) found in `bytes`, at 16-byte-aligned offsets for
    /// the key, 8-byte for f64 pairs and 4-byte for f32 pairs.
    pub fn count(&self, bytes: &[u8]) -> (usize, usize) {
        let (mut sk, mut w) = (0, 0);
        let mut i = 0;
        while i + 8 <= bytes.len() {
            let k: [u8; 8] = bytes[i..i + 8].try_into().unwrap();
            if k != [0; 8] && self.f32_pairs.contains(&k) {
                w += 1;
            }
            if i % 8 == 0 && i + 16 <= bytes.len() {
                let k: [u8; 16] = bytes[i..i + 16].try_into().unwrap();
                if self.f64_pairs.contains(&k) {
                    w += 1;
                }
            }
            if i % 16 == 0 && i + 32 <= bytes.len() {
                let k: [u8; 32] = bytes[i..i + 32].try_into().unwrap();
                if self.secret.contains(&k) {
                    sk += 1;
                }
            }
            i += 4;
        }
        (sk, w)
    }
}

/// Scans the readable memory of process `pid` (Linux /proc/PID/mem).
pub fn scan_memory(pid: u32, needles: &Needles) -> (usize, usize, usize) {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem"))
        .expect("reading another process's memory needs ptrace permission (same user)");
    let (mut scanned, mut sk, mut w) = (0usize, 0, 0);
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.contains("[vvar") || line.contains("[vsyscall") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        scanned += buf.len();
        let (s, x) = needles.count(&buf);
        sk += s;
        w += x;
    }
    (scanned, sk, w)
}
