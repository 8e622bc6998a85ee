//! `hecnn bench serve`: a load test of the protected-model services. An owner and an edge
//! run in this process on loopback; concurrent streams of real images go to the edge, and
//! the clock stops when the owner has decrypted every result.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use hecnn_deploy::{
    auth::Token,
    edge::{self, EdgeConfig},
    owner::{self, OwnerConfig},
};
use hecnn_ring::CpuBackend;
use serde_json::{Value, json};

use crate::{CliError, cnn};

/// `hecnn bench serve`.
#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// The model to protect and deploy.
    #[arg(long, default_value = "models/protect-mnist-relu.onnx")]
    model: PathBuf,
    /// Which layers to encrypt: last or classifier.
    #[arg(long, default_value = "last")]
    layers: String,
    /// plain or encrypted features.
    #[arg(long, default_value = "plain")]
    features: String,
    /// Images: mnist, cifar10, sample:mnist, sample:cifar10, idx:…, cifar-bin:…
    #[arg(long, default_value = "sample:mnist")]
    data: String,
    /// Images in all (the first ones of the data set, repeated if it has fewer).
    #[arg(long, default_value_t = 200)]
    images: usize,
    /// Concurrent streams (HTTP requests of many frames each).
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Inference threads of the edge (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

async fn json_of(resp: reqwest::Response) -> Result<Value, CliError> {
    let st = resp.status();
    let v: Value = resp.json().await.map_err(err)?;
    if !st.is_success() {
        return Err(err(format!("HTTP {st}: {v}")));
    }
    Ok(v)
}

pub fn run(a: &BenchServeArgs) -> Result<(), CliError> {
    let ds = cnn::load_data(&a.data)?;
    if ds.is_empty() || a.images == 0 || a.streams == 0 {
        return Err(err(
            "--images, --streams and the data set must not be empty",
        ));
    }
    let onnx = cnn::read_file(&a.model)?;
    let dir = std::env::temp_dir().join(format!("hecnn-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = crate::serve_cmd::runtime()?;
    let result = rt.block_on(async {
        let oc = OwnerConfig::new(dir.join("owner"));
        let owner = owner::start(oc, CpuBackend::new(1)?).await?;
        let admin = Token::read(&owner.admin_token_file)?;
        let http = reqwest::Client::new();
        let t = Instant::now();
        let model = json_of(
            http.post(format!(
                "{}/v1/models?name=bench&layers={}&features={}",
                owner.url, a.layers, a.features
            ))
            .bearer_auth(admin.expose())
            .body(onnx)
            .send()
            .await
            .map_err(err)?,
        )
        .await?;
        let protect_s = t.elapsed().as_secs_f64();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(err)?
            .port();
        let node = json_of(
            http.post(format!("{}/v1/nodes", owner.url))
                .bearer_auth(admin.expose())
                .json(&json!({ "name": "edge", "url": format!("http://127.0.0.1:{port}") }))
                .send()
                .await
                .map_err(err)?,
        )
        .await?;
        let token = Token::parse(node["token"].as_str().unwrap_or_default())?;
        let owner_key = hecnn_deploy::signing::OwnerKey::read(&owner.owner_key_file)?;
        let mut ec = EdgeConfig::new(dir.join("edge"), owner.url.clone(), token, owner_key);
        ec.listen = format!("127.0.0.1:{port}");
        let edge = edge::start(ec, CpuBackend::new(crate::cnn_cmds::threads(a.threads))?).await?;
        let input = Token::read(&edge.input_token_file)?;
        let t = Instant::now();
        let dep = json_of(
            http.post(format!("{}/v1/deployments", owner.url))
                .bearer_auth(admin.expose())
                .json(&json!({ "model_id": model["id"], "node": "edge" }))
                .send()
                .await
                .map_err(err)?,
        )
        .await?;
        loop {
            let d = json_of(
                http.get(format!("{}/v1/deployments/{}", owner.url, dep["deployment_id"]))
                    .bearer_auth(admin.expose())
                    .send()
                    .await
                    .map_err(err)?,
            )
            .await?;
            match d["state"].as_str() {
                Some("active") => break,
                Some("failed") => return Err(err(format!("deployment failed: {d}"))),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let deploy_s = t.elapsed().as_secs_f64();

        // The streams' bodies, built before the clock starts.
        let bodies: Vec<Vec<u8>> = (0..a.streams)
            .map(|s| {
                let mut body = Vec::new();
                for i in (s..a.images).step_by(a.streams) {
                    let px: Vec<u8> = ds
                        .pixels(i % ds.len())
                        .iter()
                        .map(|&p| (p * 255.0).round().clamp(0.0, 255.0) as u8)
                        .collect();
                    let id = format!("s{s}-{i:06}");
                    body.extend_from_slice(&(id.len() as u16).to_le_bytes());
                    body.extend_from_slice(id.as_bytes());
                    body.extend_from_slice(&(px.len() as u32).to_le_bytes());
                    body.extend_from_slice(&px);
                }
                body
            })
            .collect();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for body in bodies {
            let (http, url, input) = (http.clone(), edge.url.clone(), input.clone());
            tasks.push(tokio::spawn(async move {
                let resp = http
                    .post(format!("{url}/v1/stream"))
                    .bearer_auth(input.expose())
                    .body(body)
                    .send()
                    .await
                    .map_err(err)?;
                json_of(resp).await
            }));
        }
        let mut processed = 0;
        for task in tasks {
            let v = task.await.map_err(err)??;
            processed += v["processed"].as_u64().unwrap_or(0);
        }
        let edge_s = t.elapsed().as_secs_f64();
        let mut done = 0;
        while done < a.images {
            let v = json_of(
                http.get(format!("{}/v1/results?limit=10000", owner.url))
                    .bearer_auth(admin.expose())
                    .send()
                    .await
                    .map_err(err)?,
            )
            .await?;
            done = v["results"]
                .as_array()
                .map_or(0, |r| r.iter().filter(|x| !x["class"].is_null()).count());
            if done < a.images {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let total_s = t.elapsed().as_secs_f64();
        println!(
            "{} (layers={}, features={}): protected in {protect_s:.2} s, deployed in {deploy_s:.2} s",
            a.model.display(),
            a.layers,
            a.features
        );
        println!(
            "{} images in {} concurrent streams: the edge processed {processed} in {edge_s:.2} s \
             ({:.1} images/s); all decrypted by the owner after {total_s:.2} s ({:.1} images/s end to end)",
            a.images,
            a.streams,
            processed as f64 / edge_s,
            a.images as f64 / total_s
        );
        Ok::<(), CliError>(())
    });
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
