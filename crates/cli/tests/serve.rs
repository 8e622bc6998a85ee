//! The protected-model services as separate processes on loopback: the owner and two edges
//! end to end (TLS and plain HTTP, plain and encrypted features), kill -9 in the middle of
//! deployments and streams, and bad requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod services;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hecnn_deploy::owner::{Registry, read_secret_key};
use hecnn_deploy::wire::{DeploymentBundle, ResultEnvelope, ResultHeader};
use hecnn_nn::protect::{ProtectPlan, Scope};
use serde_json::json;
use services::*;

const MNIST_SHAPE: [usize; 3] = [1, 28, 28];

fn protected_weights(model: &hecnn_nn::Model, scope: Scope) -> Vec<f64> {
    let plan = ProtectPlan::new(model, scope).unwrap();
    plan.layers()
        .iter()
        .flat_map(|l| l.weight.iter().chain(&l.bias).copied())
        .collect()
}

fn secret_coeffs(owner_state: &Path, model_id: u64) -> Vec<u8> {
    let sk = read_secret_key(
        &hecnn_ring::CpuBackend::new(1).unwrap(),
        &owner_state.join("registry.sqlite"),
        &owner_state.join("master.key"),
        model_id,
    )
    .unwrap();
    // The serialized key ends with its N ternary coefficients (one byte each), its 32-byte
    // id (`SecretKey::to_secret_bytes`) and the envelope's 32-byte checksum.
    let n = sk.params().n();
    let bytes = sk.to_secret_bytes();
    let end = bytes.len() - 32 - 32;
    let coeffs = bytes[end - n..end].to_vec();
    assert!(
        coeffs.iter().all(|&c| matches!(c, 0 | 1 | 255)),
        "not the coefficients"
    );
    coeffs
}

fn stream(
    http: &reqwest::blocking::Client,
    edge: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<(u16, serde_json::Value), String> {
    let resp = http
        .post(format!("{edge}/v1/stream"))
        .bearer_auth(token)
        .body(body)
        .send()
        .map_err(|e| e.to_string())?;
    let st = resp.status().as_u16();
    Ok((st, resp.json().unwrap_or(serde_json::Value::Null)))
}

#[test]
fn owner_and_two_edges_classify_streamed_digits() {
    let dir = temp_dir("serve-e2e");
    let (ca, cert, key) = tls_files(&dir);
    let tls = vec![
        "--tls-cert".to_string(),
        s(&cert),
        "--tls-key".into(),
        s(&key),
    ];
    let mut owner_extra = tls.clone();
    owner_extra.extend(["--edge-ca".into(), s(&ca)]);
    let owner_state = dir.join("owner");
    let owner = Service::start(
        &owner_args(&owner_state, free_port(), &owner_extra),
        &dir.join("owner.log"),
    );
    assert!(owner.url.starts_with("https://"), "{}", owner.url);
    let http = client(Some(&ca));
    let admin = Admin {
        http: &http,
        owner: owner.url.clone(),
        token: token(&owner_state.join("admin.token")),
    };

    // The paper's two ends: the last layer with plain features, and the whole classifier
    // with x²+2x and encrypted features.
    let (last_path, poly_path) = (
        "models/protect-mnist-relu.onnx",
        "models/protect-mnist-poly.onnx",
    );
    let last = admin.add_model(last_path, "name=mnist-last&layers=last&features=plain");
    let poly = admin.add_model(
        poly_path,
        "name=mnist-poly&layers=classifier&features=encrypted",
    );

    // Edge A over TLS, edge B over plain HTTP; both report to the owner over TLS.
    let (pa, pb) = (free_port(), free_port());
    admin.add_node(
        "edge-a",
        &format!("https://127.0.0.1:{pa}"),
        &dir.join("a.token"),
    );
    admin.add_node(
        "edge-b",
        &format!("http://127.0.0.1:{pb}"),
        &dir.join("b.token"),
    );
    let mut a_extra = tls.clone();
    a_extra.extend(["--owner-ca".into(), s(&ca)]);
    let b_extra = vec!["--owner-ca".to_string(), s(&ca)];
    let edge_a = Service::start(
        &edge_args(
            &dir.join("edge-a"),
            pa,
            &owner.url,
            &dir.join("a.token"),
            &owner_state.join("owner.pub"),
            &a_extra,
        ),
        &dir.join("edge-a.log"),
    );
    let edge_b = Service::start(
        &edge_args(
            &dir.join("edge-b"),
            pb,
            &owner.url,
            &dir.join("b.token"),
            &owner_state.join("owner.pub"),
            &b_extra,
        ),
        &dir.join("edge-b.log"),
    );
    let (da, db) = (admin.deploy(poly, "edge-a"), admin.deploy(last, "edge-b"));
    admin.wait_active(da, Duration::from_secs(120));
    admin.wait_active(db, Duration::from_secs(120));

    // Stream real digits to both edges at once.
    let digits = mnist_sample();
    let a_imgs: Vec<(usize, &[u8])> = (0..12).map(|i| (i, digits[i].as_slice())).collect();
    let b_imgs: Vec<(usize, &[u8])> = (12..36).map(|i| (i, digits[i].as_slice())).collect();
    let (a_body, a_ids) = frames("a", &a_imgs);
    let (b_body, b_ids) = frames("b", &b_imgs);
    let (ta, tb) = (
        token(&dir.join("edge-a/input.token")),
        token(&dir.join("edge-b/input.token")),
    );
    std::thread::scope(|sc| {
        let h1 = sc.spawn(|| stream(&http, &edge_a.url, &ta, a_body));
        let h2 = sc.spawn(|| stream(&http, &edge_b.url, &tb, b_body));
        for (h, n) in [(h1, 12), (h2, 24)] {
            let (st, v) = h.join().unwrap().unwrap();
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["processed"], n, "{v}");
        }
    });
    let mut ids = a_ids.clone();
    ids.extend(b_ids.iter().cloned());
    let got = admin.wait_results(&ids, Duration::from_secs(300));

    // The decrypted results are the unprotected models' predictions.
    let (m_poly, m_last) = (load_model(poly_path), load_model(last_path));
    for (i, px) in &a_imgs {
        assert_eq!(
            got[&format!("a{i:05}")],
            predict(&m_poly, MNIST_SHAPE, px),
            "image {i}"
        );
    }
    for (i, px) in &b_imgs {
        assert_eq!(
            got[&format!("b{i:05}")],
            predict(&m_last, MNIST_SHAPE, px),
            "image {i}"
        );
    }

    // A consumer token reads results; a node token does not.
    let (st, v) = call(
        http.post(format!("{}/v1/consumers", owner.url))
            .bearer_auth(&admin.token)
            .json(&json!({ "name": "dashboard" })),
    );
    assert_eq!(st, 201, "{v}");
    let consumer = v["token"].as_str().unwrap().to_string();
    let (st, v) = call(
        http.get(format!("{}/v1/results", owner.url))
            .bearer_auth(&consumer),
    );
    assert_eq!((st, v["results"].as_array().unwrap().len()), (200, 36));
    // Only the class leaves the owner by default: full-precision logits are a decryption
    // oracle for the secret key (IND-CPA-D).
    for r in v["results"].as_array().unwrap() {
        assert!(r["class"].is_u64() && r["logits"].is_null(), "{r}");
    }
    let (st, _) = call(
        http.get(format!("{}/v1/results", owner.url))
            .bearer_auth(token(&dir.join("a.token"))),
    );
    assert_eq!(st, 403, "a node's valid token on a consumer route");

    // Neither edge's files nor memory hold its model's secret key or a protected weight;
    // the scanner finds the secret key in the owner's memory (it decrypts) and the weights
    // in this test's memory (it computed them), so it does look.
    let mut owner_needles = Vec::new();
    for (edge, model_id, path, scope, name) in [
        (&edge_a, poly, poly_path, Scope::Classifier, "edge-a"),
        (&edge_b, last, last_path, Scope::LastLayer, "edge-b"),
    ] {
        let weights = protected_weights(&load_model(path), scope);
        let needles = Needles::new(&secret_coeffs(&owner_state, model_id), &weights);
        assert!(needles.secret.len() > 100 && needles.f64_pairs.len() > 1000);
        for f in all_files(&dir.join(name)) {
            let found = needles.count(&std::fs::read(&f).unwrap());
            assert_eq!(
                found,
                (0, 0),
                "{} holds secret-key windows / weights",
                f.display()
            );
        }
        let (scanned, sk, w) = scan_memory(edge.pid(), &needles);
        assert!(scanned > 10 << 20, "scanned only {scanned} bytes of {name}");
        assert_eq!((sk, w), (0, 0), "{name}'s memory");
        let (_, _, w_here) = scan_memory(std::process::id(), &needles);
        assert!(
            w_here > 0,
            "the scanner finds the weights this process holds"
        );
        owner_needles.push(needles);
    }
    let (_, sk_owner, _) = scan_memory(owner.pid(), &owner_needles[0]);
    assert!(
        sk_owner > 0,
        "the scanner finds the secret key the owner holds"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn results_by_id(admin: &Admin<'_>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (id, _, _) in admin.results() {
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn no_partials(dir: &Path) {
    for f in all_files(dir) {
        assert!(
            !f.to_string_lossy().ends_with(".partial"),
            "{} left behind",
            f.display()
        );
    }
}

#[test]
fn kill_9_mid_deployment_and_mid_stream_loses_no_result() {
    let dir = temp_dir("serve-crash");
    let owner_state = dir.join("owner");
    let edge_state = dir.join("edge");
    let (po, pe) = (free_port(), free_port());
    let log = |n: &str| dir.join(format!("{n}.log"));
    let mut owner = Service::start(&owner_args(&owner_state, po, &[]), &log("owner"));
    let http = client(None);
    let admin = Admin {
        http: &http,
        owner: owner.url.clone(),
        token: token(&owner_state.join("admin.token")),
    };
    // The largest MNIST bundle (the whole classifier), so a deployment takes a while.
    let path = "models/protect-mnist-poly.onnx";
    let model_id = admin.add_model(path, "name=mnist&layers=classifier&features=plain");
    admin.add_node(
        "edge",
        &format!("http://127.0.0.1:{pe}"),
        &dir.join("edge.token"),
    );
    let owner_url = owner.url.clone();
    let start_edge = || {
        Service::start(
            &edge_args(
                &edge_state,
                pe,
                &owner_url,
                &dir.join("edge.token"),
                &owner_state.join("owner.pub"),
                &[],
            ),
            &log("edge"),
        )
    };

    // 1. The edge dies while the deployment arrives: after a restart it holds the whole
    //    bundle or none, and the agent delivers it.
    let mut edge = start_edge();
    let d1 = admin.deploy(model_id, "edge");
    std::thread::sleep(Duration::from_millis(150));
    edge.kill9();
    let stored = edge_state.join("deployment.hcnd");
    if stored.exists() {
        DeploymentBundle::from_bytes(&std::fs::read(&stored).unwrap()).unwrap();
    }
    let edge = start_edge();
    no_partials(&edge_state);
    admin.wait_active(d1, Duration::from_secs(60));

    // 2. The owner dies right after recording a deployment: the agent resumes it.
    let d2 = admin.deploy(model_id, "edge");
    std::thread::sleep(Duration::from_millis(100));
    owner.kill9();
    owner = Service::start(&owner_args(&owner_state, po, &[]), &log("owner"));
    admin.wait_active(d2, Duration::from_secs(60));
    let input = token(&edge_state.join("input.token"));
    wait_for(
        "the edge to run deployment 2",
        Duration::from_secs(30),
        || {
            let (_, v) = call(
                http.get(format!("{}/v1/status", edge.url))
                    .bearer_auth(&input),
            );
            v["deployment"]["deployment_id"] == d2
        },
    );

    // 3. The edge dies mid-stream: every result the owner had stays, each once; the client
    //    sends the stream again and every input ends with exactly one result.
    let digits = mnist_sample();
    let model = load_model(path);
    let imgs: Vec<(usize, &[u8])> = (0..80).map(|i| (i, digits[i].as_slice())).collect();
    let (body, ids) = frames("k", &imgs);
    let mut edge = edge;
    let edge_url = edge.url.clone();
    std::thread::scope(|sc| {
        let h = sc.spawn(|| stream(&http, &edge_url, &input, body.clone()));
        wait_for("results before the kill", Duration::from_secs(120), || {
            admin.results().iter().filter(|r| r.2.is_some()).count() >= 3
        });
        edge.kill9();
        let _ = h.join().unwrap();
    });
    let before = results_by_id(&admin);
    assert!(
        before.len() >= 3 && before.len() < 24,
        "{} results",
        before.len()
    );
    let edge = start_edge();
    no_partials(&edge_state);
    let (st, v) = stream(&http, &edge.url, &input, body).unwrap();
    // Inputs whose results are still in the outbox are refused as duplicates (409 per
    // frame); all others are processed. Either way each ends with one result.
    assert_eq!(st, 200, "{v}");
    let got = admin.wait_results(&ids, Duration::from_secs(300));
    let after = results_by_id(&admin);
    for id in before.keys() {
        assert!(after.contains_key(id), "{id} was lost");
    }
    assert!(after.values().all(|&n| n == 1), "duplicates: {after:?}");
    for (i, px) in &imgs {
        assert_eq!(got[&format!("k{i:05}")], predict(&model, MNIST_SHAPE, px));
    }

    // 4. The owner dies mid-stream: the edge keeps its results in the outbox and delivers
    //    them once the owner is back.
    let imgs: Vec<(usize, &[u8])> = (80..96).map(|i| (i, digits[i].as_slice())).collect();
    let (body, ids) = frames("m", &imgs);
    let mut owner = owner;
    std::thread::scope(|sc| {
        let h = sc.spawn(|| stream(&http, &edge.url, &input, body));
        wait_for("results before the kill", Duration::from_secs(120), || {
            admin
                .results()
                .iter()
                .filter(|r| r.0.starts_with('m'))
                .count()
                >= 2
        });
        owner.kill9();
        let (st, v) = h.join().unwrap().unwrap();
        assert_eq!(
            (st, &v["processed"]),
            (200, &json!(16)),
            "the edge goes on without the owner: {v}"
        );
    });
    let owner = Service::start(&owner_args(&owner_state, po, &[]), &log("owner"));
    let got = admin.wait_results(&ids, Duration::from_secs(120));
    for (i, px) in &imgs {
        assert_eq!(got[&format!("m{i:05}")], predict(&model, MNIST_SHAPE, px));
    }
    let all = results_by_id(&admin);
    assert_eq!(all.len(), 96);
    assert!(all.values().all(|&n| n == 1));
    let reg = Registry::open(&owner_state.join("registry.sqlite")).unwrap();
    assert_eq!(reg.integrity_check().unwrap(), "ok");
    drop((owner, edge));
    no_partials(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_requests_get_clear_4xx_answers() {
    let dir = temp_dir("serve-bad");
    let owner_state = dir.join("owner");
    let edge_state = dir.join("edge");
    let owner = Service::start(
        &owner_args(&owner_state, free_port(), &[]),
        &dir.join("owner.log"),
    );
    let http = client(None);
    let admin = Admin {
        http: &http,
        owner: owner.url.clone(),
        token: token(&owner_state.join("admin.token")),
    };
    let o = |p: &str| format!("{}{p}", owner.url);
    let expect = |(st, v): (u16, serde_json::Value), want: u16, code: &str| {
        assert_eq!(st, want, "{v}");
        assert_eq!(v["error"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    };

    // Tokens.
    expect(call(http.get(o("/v1/models"))), 401, "unauthorized");
    expect(
        call(
            http.get(o("/v1/models"))
                .bearer_auth("0123456789abcdef0123"),
        ),
        401,
        "unauthorized",
    );
    // Models.
    let post_model = |q: &str, body: Vec<u8>| {
        call(
            http.post(o(&format!("/v1/models?{q}")))
                .bearer_auth(&admin.token)
                .body(body),
        )
    };
    expect(
        post_model("name=x", b"not an onnx model".to_vec()),
        422,
        "invalid_content",
    );
    expect(post_model("name=x&layers=all", vec![]), 400, "bad_request");
    expect(post_model("name=../x", vec![]), 400, "bad_request");
    expect(
        post_model("name=x&security=100", vec![]),
        400,
        "bad_request",
    );
    let model_id = admin.add_model("models/protect-mnist-relu.onnx", "name=mnist&layers=last");
    // Nodes and deployments.
    let pe = free_port();
    admin.add_node(
        "edge",
        &format!("http://127.0.0.1:{pe}"),
        &dir.join("edge.token"),
    );
    let node_token = token(&dir.join("edge.token"));
    expect(
        call(
            http.post(o("/v1/nodes"))
                .bearer_auth(&admin.token)
                .json(&json!({ "name": "edge", "url": "http://x:1" })),
        ),
        409,
        "node_exists",
    );
    expect(
        call(
            http.post(o("/v1/nodes"))
                .bearer_auth(&admin.token)
                .body("{"),
        ),
        400,
        "bad_request",
    );
    expect(
        call(
            http.post(o("/v1/deployments"))
                .bearer_auth(&admin.token)
                .json(&json!({ "model_id": 99, "node": "edge" })),
        ),
        404,
        "unknown_model",
    );
    expect(
        call(
            http.post(o("/v1/deployments"))
                .bearer_auth(&admin.token)
                .json(&json!({ "model_id": model_id, "node": "nope" })),
        ),
        404,
        "unknown_node",
    );
    expect(
        call(http.get(o("/v1/deployments/abc")).bearer_auth(&admin.token)),
        400,
        "bad_request",
    );
    expect(
        call(http.get(o("/v1/deployments/7")).bearer_auth(&admin.token)),
        404,
        "unknown_deployment",
    );
    expect(
        call(http.get(o("/v1/models")).bearer_auth(&node_token)),
        403,
        "forbidden",
    );
    expect(call(http.get(o("/nope"))), 404, "no_route");
    // A route with another method: 405 with the JSON error body, like every refusal.
    expect(
        call(http.delete(o("/v1/models")).bearer_auth(&admin.token)),
        405,
        "method_not_allowed",
    );
    expect(
        call(http.get(o("/v1/results?limit=0")).bearer_auth(&admin.token)),
        400,
        "bad_request",
    );

    // The edge, before any deployment.
    let edge = Service::start(
        &edge_args(
            &edge_state,
            pe,
            &owner.url,
            &dir.join("edge.token"),
            &owner_state.join("owner.pub"),
            &[],
        ),
        &dir.join("edge.log"),
    );
    let e = |p: &str| format!("{}{p}", edge.url);
    let input = token(&edge_state.join("input.token"));
    let digits = mnist_sample();
    let (good, _) = frames("g", &[(0, digits[0].as_slice())]);
    expect(
        call(
            http.post(e("/v1/stream"))
                .bearer_auth(&input)
                .body(good.clone()),
        ),
        409,
        "no_deployment",
    );
    expect(
        call(
            http.put(e("/v1/deployment"))
                .bearer_auth(&input)
                .body(vec![1, 2, 3]),
        ),
        403,
        "forbidden",
    );
    expect(
        call(
            http.put(e("/v1/deployment"))
                .bearer_auth(&node_token)
                .body(b"HCND junk".to_vec()),
        ),
        400,
        "bad_request",
    );
    expect(
        call(http.put(e("/v1/deployment")).body(vec![1])),
        401,
        "unauthorized",
    );

    let dep = admin.deploy(model_id, "edge");
    admin.wait_active(dep, Duration::from_secs(60));
    // Bundles whose model the owner did not sign are refused, even with the owner's node
    // token (as one that leaked would carry): a changed model, one signed by another key,
    // one not signed at all.
    let installed =
        DeploymentBundle::from_bytes(&std::fs::read(edge_state.join("deployment.hcnd")).unwrap())
            .unwrap();
    let payload = hecnn_deploy::signing::verify_model(
        &installed.protected,
        &hecnn_deploy::signing::OwnerKey::read(&owner_state.join("owner.pub")).unwrap(),
    )
    .unwrap()
    .to_vec();
    let mut flipped = installed.protected.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 1;
    let stranger = hecnn_deploy::signing::SigningKey::generate().unwrap();
    for (what, protected) in [
        ("changed", flipped),
        ("another signer", stranger.sign_model(&payload)),
        ("unsigned", payload.clone()),
    ] {
        let mut forged = installed.clone();
        forged.header.deployment_id += 1;
        forged.protected = protected;
        let (st, v) = call(
            http.put(e("/v1/deployment"))
                .bearer_auth(&node_token)
                .body(forged.to_bytes().unwrap()),
        );
        assert_eq!(
            (st, v["error"].as_str()),
            (422, Some("bad_signature")),
            "{what}: {v}"
        );
    }
    expect(
        call(
            http.post(e("/v1/stream"))
                .bearer_auth(&node_token)
                .body(good.clone()),
        ),
        403,
        "forbidden",
    );
    let (short, _) = frames("s", &[(0, &digits[0][..700])]);
    expect(
        call(http.post(e("/v1/stream")).bearer_auth(&input).body(short)),
        400,
        "bad_request",
    );
    expect(
        call(
            http.post(e("/v1/stream"))
                .bearer_auth(&input)
                .body(good[..100].to_vec()),
        ),
        400,
        "bad_request",
    );

    // Results sent to the owner.
    let post = |body: Vec<u8>| {
        call(
            http.post(o("/v1/results"))
                .bearer_auth(&node_token)
                .body(body),
        )
    };
    let envelope = |dep: u64, version: u32, output: Vec<u8>| {
        ResultEnvelope {
            header: ResultHeader {
                deployment_id: dep,
                model_id,
                model_version: version,
                input_id: "forged".into(),
            },
            output,
        }
        .to_bytes()
        .unwrap()
    };
    expect(post(b"garbage".to_vec()), 400, "bad_request");
    expect(
        post(envelope(42, 1, vec![0; 64])),
        404,
        "unknown_deployment",
    );
    expect(post(envelope(dep, 2, vec![0; 64])), 409, "version_mismatch");
    expect(post(envelope(dep, 1, vec![0; 64])), 422, "invalid_content");
    // Refused before the body is read (declared length, then token): the client, still
    // writing, must read the answer rather than a reset connection.
    expect(post(vec![0; 17 << 20]), 413, "too_large");
    expect(
        call(
            http.post(o("/v1/results"))
                .bearer_auth("0123456789abcdef0123")
                .body(vec![0; 8 << 20]),
        ),
        401,
        "unauthorized",
    );
    expect(
        call(
            http.post(o("/v1/results"))
                .bearer_auth(&admin.token)
                .body(envelope(dep, 1, vec![])),
        ),
        403,
        "forbidden",
    );

    // Both services are still up, and a good stream goes through.
    for url in [o("/v1/health"), e("/v1/health")] {
        assert_eq!(call(http.get(url)).0, 200);
    }
    let (st, v) = stream(&http, &edge.url, &input, good).unwrap();
    assert_eq!((st, &v["processed"]), (200, &json!(1)), "{v}");
    let got = admin.wait_results(&["g00000".to_string()], Duration::from_secs(60));
    let model = load_model("models/protect-mnist-relu.onnx");
    assert_eq!(got["g00000"], predict(&model, MNIST_SHAPE, &digits[0]));

    // Nodes and consumers are listed and revoked; a revoked token is refused at once.
    let (st, v) = call(
        http.post(o("/v1/consumers"))
            .bearer_auth(&admin.token)
            .json(&json!({ "name": "reader" })),
    );
    assert_eq!(st, 201, "{v}");
    let reader = v["token"].as_str().unwrap().to_string();
    assert_eq!(
        call(http.get(o("/v1/results?after=0")).bearer_auth(&reader)).0,
        200
    );
    let (st, v) = call(http.get(o("/v1/consumers")).bearer_auth(&admin.token));
    assert_eq!((st, &v["consumers"]), (200, &json!(["reader"])), "{v}");
    let (st, v) = call(http.get(o("/v1/nodes")).bearer_auth(&admin.token));
    assert_eq!(
        (st, &v["nodes"][0]["name"], &v["nodes"][0]["revoked"]),
        (200, &json!("edge"), &json!(false)),
        "{v}"
    );
    expect(
        call(http.get(o("/v1/nodes")).bearer_auth(&reader)),
        403,
        "forbidden",
    );
    let (st, v) = call(
        http.delete(o("/v1/consumers/reader"))
            .bearer_auth(&admin.token),
    );
    assert_eq!((st, &v["tokens"]), (200, &json!(1)), "{v}");
    expect(
        call(http.get(o("/v1/results?after=0")).bearer_auth(&reader)),
        401,
        "unauthorized",
    );
    expect(
        call(
            http.delete(o("/v1/consumers/reader"))
                .bearer_auth(&admin.token),
        ),
        404,
        "unknown_consumer",
    );
    let (st, v) = call(http.delete(o("/v1/nodes/edge")).bearer_auth(&admin.token));
    assert_eq!((st, &v["already"]), (200, &json!(false)), "{v}");
    let (st, v) = call(http.delete(o("/v1/nodes/edge")).bearer_auth(&admin.token));
    assert_eq!((st, &v["already"]), (200, &json!(true)), "{v}");
    expect(
        call(http.delete(o("/v1/nodes/nope")).bearer_auth(&admin.token)),
        404,
        "unknown_node",
    );
    let (_, v) = call(http.get(o("/v1/nodes")).bearer_auth(&admin.token));
    assert_eq!(v["nodes"][0]["revoked"], json!(true), "{v}");
    // The revoked node's results are refused, nothing more is deployed to it, and its name
    // is not given to another node.
    expect(
        call(
            http.post(o("/v1/results"))
                .bearer_auth(&node_token)
                .body(envelope(dep, 1, vec![])),
        ),
        401,
        "unauthorized",
    );
    expect(
        call(
            http.post(o("/v1/deployments"))
                .bearer_auth(&admin.token)
                .json(&json!({ "model_id": model_id, "node": "edge" })),
        ),
        409,
        "node_revoked",
    );
    expect(
        call(
            http.post(o("/v1/nodes"))
                .bearer_auth(&admin.token)
                .json(&json!({ "name": "edge", "url": "http://x:1" })),
        ),
        409,
        "node_exists",
    );
    drop((owner, edge));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_watched_directory_takes_whole_files_and_never_follows_links() {
    let dir = temp_dir("serve-watch");
    let (owner_state, edge_state) = (dir.join("owner"), dir.join("edge"));
    let incoming = dir.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let owner = Service::start(
        &owner_args(&owner_state, free_port(), &[]),
        &dir.join("owner.log"),
    );
    let http = client(None);
    let admin = Admin {
        http: &http,
        owner: owner.url.clone(),
        token: token(&owner_state.join("admin.token")),
    };
    let path = "models/protect-mnist-relu.onnx";
    let model_id = admin.add_model(path, "name=mnist&layers=last&features=plain");
    let pe = free_port();
    admin.add_node(
        "edge",
        &format!("http://127.0.0.1:{pe}"),
        &dir.join("edge.token"),
    );
    let edge = Service::start(
        &edge_args(
            &edge_state,
            pe,
            &owner.url,
            &dir.join("edge.token"),
            &owner_state.join("owner.pub"),
            &["--watch".to_string(), s(&incoming)],
        ),
        &dir.join("edge.log"),
    );
    let dep = admin.deploy(model_id, "edge");
    admin.wait_active(dep, Duration::from_secs(60));
    let digits = mnist_sample();

    // Two inputs written elsewhere and renamed in (the documented convention).
    for (i, digit) in digits.iter().take(2).enumerate() {
        let part = incoming.join(format!("w{i}.u8.part"));
        std::fs::write(&part, digit).unwrap();
        std::fs::rename(&part, incoming.join(format!("w{i}.u8"))).unwrap();
    }
    // One written in place, slowly: a piece every 0.3 s for 2.4 s. It must not be read
    // before it is whole (a truncated image would land in failed/).
    let slow = incoming.join("w2.u8");
    let mut f = std::fs::File::create(&slow).unwrap();
    for chunk in digits[2].chunks(98) {
        use std::io::Write;
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(f);
    // A link to a readable image: moved aside unread, never followed.
    let target = dir.join("elsewhere.u8");
    std::fs::write(&target, &digits[3]).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, incoming.join("link.u8")).unwrap();

    let ids: Vec<String> = (0..3).map(|i| format!("w{i}.u8")).collect();
    let got = admin.wait_results(&ids, Duration::from_secs(120));
    let model = load_model(path);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(got[id], predict(&model, MNIST_SHAPE, &digits[i]), "{id}");
        assert!(incoming.join("done").join(id).exists(), "{id} not in done/");
    }
    #[cfg(unix)]
    {
        let moved = incoming.join("failed").join("link.u8");
        let t = Instant::now();
        while std::fs::symlink_metadata(&moved).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the link was not moved aside"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            std::fs::symlink_metadata(&moved)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(!got.contains_key("link.u8"), "a link was read");
    }
    assert!(
        std::fs::read_dir(incoming.join("failed"))
            .map(|d| d.count())
            .unwrap_or(0)
            <= 1,
        "an input failed"
    );
    drop((owner, edge));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An upload whose client goes away stops at the next stage of its work (the owner does not
/// keep both cores busy for nobody) and registers nothing; the same upload, waited for, does
/// the work and registers the model.
#[test]
fn a_dropped_upload_stops_its_work_and_registers_nothing() {
    let dir = temp_dir("serve-dropped-upload");
    let owner_state = dir.join("owner");
    let owner = Service::start(
        &owner_args(&owner_state, free_port(), &[]),
        &dir.join("owner.log"),
    );
    let token = token(&owner_state.join("admin.token"));
    let model = std::fs::read(repo().join("models/protect-cifar10-poly.onnx")).unwrap();
    // The whole classifier with encrypted features: about a second of work on an idle core
    // (76 MB of weight ciphertexts), ten times the client's patience.
    let url = format!(
        "{}/v1/models?name=dropped&layers=classifier&features=encrypted",
        owner.url
    );
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let sent = impatient
        .post(&url)
        .bearer_auth(&token)
        .body(model.clone())
        .send();
    assert!(
        sent.is_err_and(|e| e.is_timeout()),
        "the upload was not cut short"
    );
    let log = || std::fs::read_to_string(&owner.log).unwrap_or_default();
    wait_for(
        "the cancelled upload's log line",
        Duration::from_secs(120),
        || log().contains("model upload \"dropped\": the client went away; stopped at"),
    );
    assert!(!log().contains("registered: dropped"), "{}", log());
    let http = client(None);
    let (st, v) = call(
        http.get(format!("{}/v1/models", owner.url))
            .bearer_auth(&token),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["models"].as_array().map(Vec::len), Some(0), "{v}");

    let (st, v) = call(http.post(&url).bearer_auth(&token).body(model));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["name"], "dropped", "{v}");
}
