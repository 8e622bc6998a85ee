//! `hecnn serve` (encrypted inference as a service) as a separate process on loopback, with
//! the bundled MNIST model compiled in single-image packing: two clients with their own keys
//! at once, privacy of sessions and jobs between clients, clear 4xx answers for bad
//! requests, back-pressure (429 with Retry-After), and kill -9 after accepted jobs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod services;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hecnn_nn::compile::{
    self, Client, ClientSpec, CompileOptions, CompiledModel, EncryptedImages, ImagesKind,
    PackingRequest,
};
use hecnn_nn::{Model, Op, Tensor, exec, ir::Dense, ir::Node, onnx};
use hecnn_ring::{CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey, SecurityLevel};
use reqwest::blocking::Client as Http;
use serde_json::{Value, json};
use services::{Service, call, free_port, repo, s, temp_dir};

const MODEL: &str = "models/hcnn-mnist.onnx";

/// One client's material: its keys on disk and in memory, and encrypted images.
struct Keys {
    secret: SecretKey,
    eval_file: PathBuf,
    eval: Vec<u8>,
    /// Images 4k..4k+4 of the sample, encrypted (file and bytes).
    inputs_file: PathBuf,
    inputs: Vec<u8>,
    /// The cleartext model's predictions for them.
    want: Vec<usize>,
}

/// What every test shares: the compiled model, two clients' keys and inputs, and inputs
/// that do not fit the served model.
struct Fixture {
    dir: PathBuf,
    model_file: PathBuf,
    compiled: CompiledModel,
    be: CpuBackend,
    alice: Keys,
    bob: Keys,
    /// Alice's images encrypted for a compiled model of another name (another fingerprint).
    other_model: Vec<u8>,
    /// A batch-packed input (of a toy model).
    other_packing: Vec<u8>,
    /// Evaluation keys of other parameters (the toy model's).
    other_keys: Vec<u8>,
    /// Alice's relinearization key alone (no rotation keys).
    relin_only: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        sweep_earlier_runs();
        let dir = temp_dir("infer-fixture");
        let model = onnx::import_onnx_file(&repo().join(MODEL)).unwrap();
        let opts = CompileOptions {
            packing: PackingRequest::Single,
            ..CompileOptions::default()
        };
        let compiled = compile::compile(&model, &opts).unwrap();
        let model_file = dir.join("mnist-single.hecnn");
        compiled.save(&model_file).unwrap();
        let be = CpuBackend::new(2).unwrap();
        let client = Client::new(compiled.client_spec(), be.clone()).unwrap();
        let sample = hecnn_nn::data::load_idx(
            &repo().join("data/sample/mnist-test-images.idx3-ubyte"),
            &repo().join("data/sample/mnist-test-labels.idx1-ubyte"),
        )
        .unwrap();
        let mut rng = Prng::from_entropy().unwrap();
        let mut keys = |name: &str, first: usize| {
            let k = client.keygen(&mut rng).unwrap();
            let eval = k.evaluation.to_bytes(&be).unwrap();
            let eval_file = dir.join(format!("{name}.eval.keys"));
            std::fs::write(&eval_file, &eval).unwrap();
            std::fs::write(
                dir.join(format!("{name}.secret.key")),
                k.secret.to_secret_bytes(),
            )
            .unwrap();
            let images: Vec<Tensor> = (first..first + 4).map(|i| sample.image(i)).collect();
            let want = images
                .iter()
                .map(|im| exec::argmax(exec::run(compiled.model(), im).unwrap().data()))
                .collect();
            let inputs = client
                .encrypt(&k.public, &images, &mut rng)
                .unwrap()
                .to_bytes(&be, compiled.params())
                .unwrap();
            let inputs_file = dir.join(format!("{name}.inputs.ct"));
            std::fs::write(&inputs_file, &inputs).unwrap();
            (
                Keys {
                    secret: k.secret,
                    eval_file,
                    eval,
                    inputs_file,
                    inputs,
                    want,
                },
                k.public,
            )
        };
        let (alice, alice_pk) = keys("alice", 0);
        let (bob, _) = keys("bob", 4);
        let relin_only = alice
            .secret
            .evaluation_keys(&be, &KeyRequirements::relin(), &mut rng)
            .unwrap()
            .to_bytes(&be)
            .unwrap();

        // The same network with another bias in its last layer: another fingerprint, the
        // same plan and parameters, so Alice's public key encrypts for it.
        let mut changed = model.clone();
        let last = changed
            .nodes
            .iter_mut()
            .rev()
            .find_map(|n| match &mut n.op {
                Op::Dense(d) => Some(d),
                _ => None,
            })
            .unwrap();
        last.bias[0] += 0.5;
        let other = compile::compile(&changed, &opts).unwrap();
        assert_ne!(other.fingerprint(), compiled.fingerprint());
        let other_client = Client::new(other.client_spec(), be.clone()).unwrap();
        let other_model = other_client
            .encrypt(&alice_pk, &[sample.image(0)], &mut rng)
            .unwrap()
            .to_bytes(&be, other.params())
            .unwrap();

        // A toy model in batch packing at a toy ring degree.
        let toy = Model {
            name: "toy".into(),
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
                        weight: Tensor::new(vec![2, 4], vec![0.5; 8]).unwrap(),
                        bias: vec![0.0, 0.0],
                    }),
                    inputs: vec![1],
                },
            ],
            output: 2,
        };
        let toy = compile::compile(
            &toy,
            &CompileOptions {
                packing: PackingRequest::Batch,
                log_n: 11,
                security: SecurityLevel::UncheckedForReproduction,
                ..CompileOptions::default()
            },
        )
        .unwrap();
        let toy_client = Client::new(toy.client_spec(), be.clone()).unwrap();
        let toy_keys = toy_client.keygen(&mut rng).unwrap();
        let other_packing = toy_client
            .encrypt(
                &toy_keys.public,
                &[Tensor::new(vec![1, 2, 2], vec![0.1; 4]).unwrap()],
                &mut rng,
            )
            .unwrap()
            .to_bytes(&be, toy.params())
            .unwrap();
        let other_keys = toy_keys.evaluation.to_bytes(&be).unwrap();
        Fixture {
            dir,
            model_file,
            compiled,
            be,
            alice,
            bob,
            other_model,
            other_packing,
            other_keys,
            relin_only,
        }
    })
}

/// Removes what earlier runs of these tests left in the temporary directory (keys are
/// hundreds of megabytes): directories of processes no longer running.
fn sweep_earlier_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("hecnn-infer-") else {
            continue;
        };
        let pid = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid
            .is_some_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists())
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Starts `hecnn serve` on the fixture's model with a state directory of its own.
fn serve(dir: &Path, extra: &[&str]) -> Service {
    let f = fixture();
    let mut args = vec![
        "serve".to_string(),
        s(&f.model_file),
        "--state".into(),
        s(&dir.join("state")),
        "--listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--threads".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Service::start(&args, &dir.join("serve.log"))
}

fn http() -> Http {
    Http::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn admin_token(dir: &Path) -> String {
    services::token(&dir.join("state/admin.token"))
}

/// Creates a client; its token.
fn add_client(http: &Http, url: &str, admin: &str, name: &str) -> String {
    let (st, v) = call(
        http.post(format!("{url}/v1/clients"))
            .bearer_auth(admin)
            .json(&json!({ "name": name })),
    );
    assert_eq!(st, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// Registers evaluation keys; the session id.
fn register(http: &Http, url: &str, token: &str, keys: &[u8]) -> String {
    let (st, v) = call(
        http.post(format!("{url}/v1/sessions"))
            .bearer_auth(token)
            .body(keys.to_vec()),
    );
    assert!(st == 201 || st == 200, "{st} {v}");
    v["session_id"].as_str().unwrap().to_string()
}

/// Submits a job; status and JSON answer (and the Retry-After header).
fn submit(
    http: &Http,
    url: &str,
    token: &str,
    session: &str,
    body: &[u8],
) -> (u16, Value, Option<String>) {
    let resp = http
        .post(format!("{url}/v1/sessions/{session}/jobs"))
        .bearer_auth(token)
        .body(body.to_vec())
        .send()
        .unwrap();
    let st = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (st, resp.json().unwrap_or(Value::Null), retry)
}

/// Submits a job that must be accepted; its id.
fn accepted(http: &Http, url: &str, token: &str, session: &str, body: &[u8]) -> String {
    let (st, v, _) = submit(http, url, token, session, body);
    assert_eq!(st, 202, "{v}");
    v["job_id"].as_str().unwrap().to_string()
}

/// Waits for a job's outputs (long polls).
fn outputs(http: &Http, url: &str, token: &str, job: &str) -> Vec<u8> {
    let t = Instant::now();
    loop {
        let resp = http
            .get(format!("{url}/v1/jobs/{job}?wait=10"))
            .bearer_auth(token)
            .send()
            .unwrap();
        match resp.status().as_u16() {
            200 => return resp.bytes().unwrap().to_vec(),
            202 => assert!(t.elapsed() < Duration::from_secs(120), "job {job} pending"),
            st => panic!("job {job}: {st} {}", resp.text().unwrap_or_default()),
        }
    }
}

/// The predictions in encrypted outputs.
fn predictions(keys: &Keys, bytes: &[u8]) -> Vec<usize> {
    let f = fixture();
    let client = Client::new(f.compiled.client_spec(), f.be.clone()).unwrap();
    let out =
        EncryptedImages::from_bytes(&f.be, client.spec(), ImagesKind::Outputs, bytes).unwrap();
    client
        .decrypt(&keys.secret, &out)
        .unwrap()
        .iter()
        .map(|l| exec::argmax(l))
        .collect()
}

/// Runs the `hecnn` binary; success and stdout+stderr.
fn hecnn(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hecnn"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Sends only the head of a POST announcing a body of `len` bytes; the answer.
fn declared_only(url: &str, path: &str, token: &str, len: u64) -> (u16, Value) {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_prefix} in\n{text}"))
}

#[test]
fn two_clients_at_once_get_the_predictions_of_hecnn_run() {
    let f = fixture();
    let dir = temp_dir("infer-two-clients");
    let server = serve(&dir, &[]);
    let http = http();
    let admin = admin_token(&dir);
    let (ta, tb) = (
        add_client(&http, &server.url, &admin, "alice"),
        add_client(&http, &server.url, &admin, "bob"),
    );
    let alice_token = dir.join("alice.token");
    std::fs::write(&alice_token, &ta).unwrap();
    let p = |name: &str| s(&dir.join(name));

    // Alice uses the command line only: the spec, her session, her job.
    let (ok, log) = hecnn(&[
        "client",
        "spec",
        "--server",
        &server.url,
        "-o",
        &p("fetched.spec"),
    ]);
    assert!(ok, "{log}");
    let spec = std::fs::read(dir.join("fetched.spec")).unwrap();
    assert_eq!(spec, f.compiled.client_spec().to_bytes().unwrap());
    assert_eq!(
        ClientSpec::from_bytes(&spec).unwrap().model_fingerprint(),
        f.compiled.fingerprint()
    );

    // Both register at once (Alice with the command line, Bob over HTTP).
    let (alice_session, bob_session) = std::thread::scope(|sc| {
        let a = sc.spawn(|| {
            let (ok, log) = hecnn(&[
                "client",
                "register",
                "--server",
                &server.url,
                "--token-file",
                &s(&alice_token),
                "--eval-keys",
                &s(&f.alice.eval_file),
                "-o",
                &p("alice.session"),
            ]);
            assert!(ok, "{log}");
            log.lines()
                .find_map(|l| l.strip_prefix("session "))
                .unwrap()
                .trim()
                .to_string()
        });
        let b = sc.spawn(|| register(&http, &server.url, &tb, &f.bob.eval));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(
        std::fs::read_to_string(dir.join("alice.session"))
            .unwrap()
            .trim(),
        alice_session
    );
    assert_ne!(alice_session, bob_session);
    // The same keys again: the same session.
    assert_eq!(register(&http, &server.url, &tb, &f.bob.eval), bob_session);

    // Both run at once: Alice one job through `hecnn client run`, Bob two over HTTP.
    let bob_outputs = std::thread::scope(|sc| {
        let a = sc.spawn(|| {
            hecnn(&[
                "client",
                "run",
                "--server",
                &server.url,
                "--token-file",
                &s(&alice_token),
                "--session",
                &p("alice.session"),
                "--in",
                &s(&f.alice.inputs_file),
                "-o",
                &p("alice.out.ct"),
            ])
        });
        let jobs: Vec<String> = (0..2)
            .map(|_| accepted(&http, &server.url, &tb, &bob_session, &f.bob.inputs))
            .collect();
        let outs: Vec<Vec<u8>> = jobs
            .iter()
            .map(|j| outputs(&http, &server.url, &tb, j))
            .collect();
        let (ok, log) = a.join().unwrap();
        assert!(ok, "{log}");
        outs
    });
    for out in &bob_outputs {
        assert_eq!(predictions(&f.bob, out), f.bob.want);
    }

    // Alice decrypts with `hecnn decrypt` and the fetched spec; her outputs are exactly what
    // `hecnn run` computes from the same inputs and evaluation keys.
    let alice_out = std::fs::read(dir.join("alice.out.ct")).unwrap();
    assert_eq!(predictions(&f.alice, &alice_out), f.alice.want);
    let (ok, log) = hecnn(&[
        "decrypt",
        &p("fetched.spec"),
        "--secret-key",
        &s(&f.dir.join("alice.secret.key")),
        "--in",
        &p("alice.out.ct"),
    ]);
    assert!(ok, "{log}");
    let want: Vec<String> = f.alice.want.iter().map(usize::to_string).collect();
    assert!(
        log.contains(&format!("predictions: {}", want.join(" "))),
        "{log}"
    );
    let (ok, log) = hecnn(&[
        "run",
        &s(&f.model_file),
        "--eval-keys",
        &s(&f.alice.eval_file),
        "--in",
        &s(&f.alice.inputs_file),
        "-o",
        &p("alice.run.ct"),
    ]);
    assert!(ok, "{log}");
    assert_eq!(std::fs::read(dir.join("alice.run.ct")).unwrap(), alice_out);

    // The metrics count the requests by route and status, and the evaluations.
    let text = http
        .get(format!("{}/v1/metrics", server.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        metric(
            &text,
            "hecnn_http_requests_total{method=\"POST\",route=\"/v1/sessions/{id}/jobs\",status=\"202\"} "
        ),
        3.0
    );
    assert_eq!(metric(&text, "hecnn_infer_eval_seconds_count "), 3.0);
    assert_eq!(metric(&text, "hecnn_infer_images_total "), 12.0);
    assert_eq!(metric(&text, "hecnn_infer_queue_depth "), 0.0);
    let (st, v) = call(http.get(format!("{}/v1/health", server.url)));
    assert_eq!((st, v["packing"].as_str()), (200, Some("single-image")));
}

#[test]
fn sessions_and_jobs_are_private_to_their_client() {
    let f = fixture();
    let dir = temp_dir("infer-private");
    let server = serve(&dir, &["--result-ttl", "2"]);
    let url = &server.url;
    let http = http();
    let admin = admin_token(&dir);
    let (ta, tb) = (
        add_client(&http, url, &admin, "alice"),
        add_client(&http, url, &admin, "bob"),
    );
    let session = register(&http, url, &ta, &f.alice.eval);
    let job = accepted(&http, url, &ta, &session, &f.alice.inputs);

    // Bob, with a valid token, sees neither Alice's session nor her job.
    let (st, v) = call(http.get(format!("{url}/v1/jobs/{job}")).bearer_auth(&tb));
    assert_eq!((st, v["error"].as_str()), (404, Some("unknown_job")), "{v}");
    let (st, _) = call(http.delete(format!("{url}/v1/jobs/{job}")).bearer_auth(&tb));
    assert_eq!(st, 404);
    let (st, v) = call(
        http.get(format!("{url}/v1/sessions/{session}"))
            .bearer_auth(&tb),
    );
    assert_eq!((st, v["error"].as_str()), (404, Some("unknown_session")));
    let (st, v, _) = submit(&http, url, &tb, &session, &f.bob.inputs);
    assert_eq!((st, v["error"].as_str()), (404, Some("unknown_session")));
    let (st, _) = call(
        http.delete(format!("{url}/v1/sessions/{session}"))
            .bearer_auth(&tb),
    );
    assert_eq!(st, 404);
    // No token, a wrong token, and a token of the other role.
    let (st, _) = call(http.get(format!("{url}/v1/jobs/{job}")));
    assert_eq!(st, 401);
    let (st, _) = call(
        http.get(format!("{url}/v1/jobs/{job}"))
            .bearer_auth("0123456789abcdef0123456789abcdef"),
    );
    assert_eq!(st, 401);
    let (st, v) = call(http.get(format!("{url}/v1/jobs/{job}")).bearer_auth(&admin));
    assert_eq!((st, v["error"].as_str()), (403, Some("forbidden")));
    let (st, _) = call(
        http.post(format!("{url}/v1/clients"))
            .bearer_auth(&ta)
            .json(&json!({ "name": "mallory" })),
    );
    assert_eq!(st, 403);

    // Alice gets her result, deletes it, and it is gone.
    let out = outputs(&http, url, &ta, &job);
    assert_eq!(predictions(&f.alice, &out), f.alice.want);
    let (st, _) = call(http.delete(format!("{url}/v1/jobs/{job}")).bearer_auth(&ta));
    assert_eq!(st, 204);
    let (st, _) = call(http.get(format!("{url}/v1/jobs/{job}")).bearer_auth(&ta));
    assert_eq!(st, 404);
    // A result not fetched expires after its time to live (2 s here).
    let job = accepted(&http, url, &ta, &session, &f.alice.inputs);
    outputs(&http, url, &ta, &job);
    std::thread::sleep(Duration::from_millis(2500));
    let (st, _) = call(http.get(format!("{url}/v1/jobs/{job}")).bearer_auth(&ta));
    assert_eq!(st, 404);
    let t = Instant::now();
    while dir.join(format!("state/jobs/{job}.out")).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the expired result stays"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Alice deletes her session: its keys leave the disk.
    let keys = dir.join(format!("state/sessions/{session}.keys"));
    assert!(keys.exists());
    let (st, _) = call(
        http.delete(format!("{url}/v1/sessions/{session}"))
            .bearer_auth(&ta),
    );
    assert_eq!(st, 204);
    assert!(!keys.exists());
    let (st, _, _) = submit(&http, url, &ta, &session, &f.alice.inputs);
    assert_eq!(st, 404);
}

#[test]
fn malformed_oversized_and_mismatched_inputs_get_clear_4xx() {
    let f = fixture();
    let dir = temp_dir("infer-bad");
    let server = serve(&dir, &["--max-job-images", "4"]);
    let url = &server.url;
    let http = http();
    let admin = admin_token(&dir);
    let (ta, tb) = (
        add_client(&http, url, &admin, "alice"),
        add_client(&http, url, &admin, "bob"),
    );
    let expect = |(st, v): (u16, Value), status: u16, code: &str, says: &str| {
        assert_eq!(st, status, "{v}");
        assert_eq!(v["error"].as_str(), Some(code), "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(says), "{msg:?} does not say {says:?}");
    };

    // Sessions: garbage, keys of other parameters, too large, and a duplicate client name.
    let keys = |body: Vec<u8>| {
        call(
            http.post(format!("{url}/v1/sessions"))
                .bearer_auth(&ta)
                .body(body),
        )
    };
    expect(
        keys(b"not keys at all".to_vec()),
        400,
        "bad_request",
        "evaluation keys",
    );
    expect(
        keys(f.other_keys.clone()),
        422,
        "invalid_content",
        "other parameters",
    );
    expect(
        keys(f.relin_only.clone()),
        422,
        "invalid_content",
        "rotation keys",
    );
    // Refused on the declared length, before any of the body is read (a body this large is
    // not drained either, so the request announces it and sends nothing).
    expect(
        declared_only(url, "/v1/sessions", &ta, 1 << 30),
        413,
        "too_large",
        "limit",
    );
    expect(
        call(
            http.post(format!("{url}/v1/clients"))
                .bearer_auth(&admin)
                .json(&json!({ "name": "alice" })),
        ),
        409,
        "client_exists",
        "alice",
    );
    expect(
        call(
            http.post(format!("{url}/v1/clients"))
                .bearer_auth(&admin)
                .body("{\"name\":"),
        ),
        400,
        "bad_request",
        "JSON",
    );

    // Jobs.
    let session = register(&http, url, &ta, &f.alice.eval);
    register(&http, url, &tb, &f.bob.eval);
    let job = |body: &[u8]| {
        let (st, v, _) = submit(&http, url, &ta, &session, body);
        (st, v)
    };
    expect(job(b"garbage"), 400, "bad_request", "not encrypted images");
    let truncated = &f.alice.inputs[..f.alice.inputs.len() - 100];
    expect(job(truncated), 400, "bad_request", "truncated");
    let mut flipped = f.alice.inputs.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    expect(job(&flipped), 400, "bad_request", "checksum");
    expect(job(&vec![0u8; 4 << 20]), 413, "too_large", "limit");
    // Bob's ciphertexts under Alice's session: another key pair.
    expect(job(&f.bob.inputs), 409, "key_mismatch", "key pair");
    expect(job(&f.other_model), 409, "model_mismatch", "compiled model");
    expect(
        job(&f.other_packing),
        409,
        "packing_mismatch",
        "batch packing",
    );
    // Outputs are not inputs.
    let done = accepted(&http, url, &ta, &session, &f.alice.inputs);
    let out = outputs(&http, url, &ta, &done);
    expect(job(&out), 422, "invalid_content", "outputs, not inputs");
    // An unknown route, an unknown job id, a malformed one.
    let (st, v) = call(http.get(format!("{url}/v2/anything")));
    assert_eq!((st, v["error"].as_str()), (404, Some("no_route")));
    for id in ["0123456789abcdef0123456789abcdef", "..%2F..%2Fetc"] {
        let (st, _) = call(http.get(format!("{url}/v1/jobs/{id}")).bearer_auth(&ta));
        assert_eq!(st, 404, "{id}");
    }
    // Nothing refused was queued: only the one good job ran.
    let text = http
        .get(format!("{url}/v1/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(metric(&text, "hecnn_infer_jobs_done_total "), 1.0);
    assert_eq!(
        std::fs::read_dir(dir.join("state/jobs"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "in")
            .count(),
        0
    );
}

#[test]
fn a_full_queue_answers_429_with_retry_after_and_the_client_retries() {
    let f = fixture();
    let dir = temp_dir("infer-queue");
    let server = serve(&dir, &["--queue", "1", "--workers", "1"]);
    let url = &server.url;
    let http = http();
    let admin = admin_token(&dir);
    let ta = add_client(&http, url, &admin, "alice");
    let session = register(&http, url, &ta, &f.alice.eval);
    // One job runs (4 images, about half a second), one waits, the third is refused.
    let first = accepted(&http, url, &ta, &session, &f.alice.inputs);
    let second = accepted(&http, url, &ta, &session, &f.alice.inputs);
    let (st, v, retry) = submit(&http, url, &ta, &session, &f.alice.inputs);
    assert_eq!((st, v["error"].as_str()), (429, Some("busy")), "{v}");
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    // `hecnn client run` waits as told and gets through once there is room.
    let token_file = dir.join("alice.token");
    std::fs::write(&token_file, &ta).unwrap();
    let (ok, log) = hecnn(&[
        "client",
        "run",
        "--server",
        url,
        "--token-file",
        &s(&token_file),
        "--session",
        &session,
        "--in",
        &s(&f.alice.inputs_file),
        "-o",
        &s(&dir.join("out.ct")),
        "--timeout",
        "120",
    ]);
    assert!(ok, "{log}");
    let out = std::fs::read(dir.join("out.ct")).unwrap();
    assert_eq!(predictions(&f.alice, &out), f.alice.want);
    for job in [first, second] {
        assert_eq!(
            predictions(&f.alice, &outputs(&http, url, &ta, &job)),
            f.alice.want
        );
    }
    let text = http
        .get(format!("{url}/v1/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metric(
            &text,
            "hecnn_http_requests_total{method=\"POST\",route=\"/v1/sessions/{id}/jobs\",status=\"429\"} "
        ) >= 1.0
    );
}

#[test]
fn accepted_jobs_survive_kill_9_and_finish_after_restart() {
    let f = fixture();
    let dir = temp_dir("infer-kill9");
    let mut server = serve(&dir, &[]);
    let http = http();
    let admin = admin_token(&dir);
    let ta = add_client(&http, &server.url, &admin, "alice");
    let session = register(&http, &server.url, &ta, &f.alice.eval);
    // One job finished (its result not yet fetched), then two accepted and killed at once.
    let done = accepted(&http, &server.url, &ta, &session, &f.alice.inputs);
    let done_out = outputs(&http, &server.url, &ta, &done);
    let pending: Vec<String> = (0..2)
        .map(|_| accepted(&http, &server.url, &ta, &session, &f.alice.inputs))
        .collect();
    server.kill9();
    // Each 202 came after the inputs were on disk.
    let jobs = dir.join("state/jobs");
    for j in &pending {
        assert!(jobs.join(format!("{j}.json")).exists(), "{j}");
        assert!(
            jobs.join(format!("{j}.in")).exists() || jobs.join(format!("{j}.out")).exists(),
            "{j}"
        );
    }

    let server = serve(&dir, &[]);
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    // The finished result is served as it was; the pending jobs run (the session's
    // evaluator rebuilt from its stored keys) and decrypt to the model's predictions.
    let (st, _) = call(
        http.get(format!("{}/v1/jobs/{done}", server.url))
            .bearer_auth(&ta),
    );
    assert_eq!(st, 200);
    assert_eq!(outputs(&http, &server.url, &ta, &done), done_out);
    for j in &pending {
        let out = outputs(&http, &server.url, &ta, j);
        assert_eq!(predictions(&f.alice, &out), f.alice.want, "{j}\n{log}");
    }
    // The session still takes jobs, and the administrator token still works.
    let again = accepted(&http, &server.url, &ta, &session, &f.alice.inputs);
    outputs(&http, &server.url, &ta, &again);
    add_client(&http, &server.url, &admin_token(&dir), "bob");
}
