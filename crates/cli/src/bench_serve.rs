//! `hecnn bench serve`: a load test of the protected-model services. An owner and an edge
//! run in this process on loopback; concurrent streams of real images go to the edge, and
//! the clock stops when the owner has decrypted every result. With `--duration` it is a soak
//! test: the streams go on for that long while the process's memory is sampled, and every
//! image sent must come back decrypted exactly once.

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
    /// Soak test: keep the streams going for this many seconds (each request carries
    /// `--images / --streams` frames, new ids every round), sampling memory; 0 runs the
    /// `--images` once and times them.
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Seconds between the soak test's samples.
    #[arg(long, default_value_t = 30)]
    sample: u64,
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

        println!(
            "{} (layers={}, features={}): protected in {protect_s:.2} s, deployed in {deploy_s:.2} s",
            a.model.display(),
            a.layers,
            a.features
        );
        if a.duration > 0 {
            let soak = Soak {
                http: &http,
                owner_url: &owner.url,
                admin: &admin,
                edge_url: &edge.url,
                input: &input,
                state: &dir,
            };
            return soak.run(a, &ds).await;
        }
        // The streams' bodies, built before the clock starts.
        let bodies: Vec<Vec<u8>> = (0..a.streams)
            .map(|s| stream_body(&ds, (s..a.images).step_by(a.streams), &|i| format!("s{s}-{i:06}")))
            .collect::<Result<_, _>>()?;
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
        let mut results = Results::default();
        while results.decrypted + results.failed < a.images {
            results.page(&http, &owner.url, &admin).await?;
            if results.decrypted + results.failed < a.images {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if results.failed > 0 {
            return Err(err(format!(
                "{} of {} results could not be decrypted",
                results.failed, a.images
            )));
        }
        let total_s = t.elapsed().as_secs_f64();
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

/// The frames of `images` (indices into `ds`, wrapping), each under the id `id(i)`: the
/// edge's stream format (`wire::push_frame`).
fn stream_body(
    ds: &hecnn_nn::data::Dataset,
    images: impl Iterator<Item = usize>,
    id: &dyn Fn(usize) -> String,
) -> Result<Vec<u8>, CliError> {
    let mut body = Vec::new();
    for i in images {
        let px: Vec<u8> = ds
            .pixels(i % ds.len())
            .iter()
            .map(|&p| (p * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        hecnn_deploy::wire::push_frame(&mut body, &id(i), &px)?;
    }
    Ok(body)
}

/// The owner's decrypted results, read page by page in arrival order: each id counted
/// once it is decrypted, pages resumed after the last decrypted row.
#[derive(Default)]
struct Results {
    /// Rows read up to here (the next page starts after it).
    after: u64,
    /// Decrypted results.
    decrypted: usize,
    /// Results whose decryption failed.
    failed: usize,
    /// How often each input id came back.
    seen: std::collections::HashMap<String, u32>,
}

impl Results {
    /// Reads every page available now. The owner lists decrypted results only, and
    /// decrypts in arrival order, so the rows after the last one read are all new.
    async fn page(
        &mut self,
        http: &reqwest::Client,
        owner: &str,
        admin: &Token,
    ) -> Result<(), CliError> {
        loop {
            let v = json_of(
                http.get(format!(
                    "{owner}/v1/results?after={}&limit=10000",
                    self.after
                ))
                .bearer_auth(admin.expose())
                .send()
                .await
                .map_err(err)?,
            )
            .await?;
            let rows = v["results"].as_array().cloned().unwrap_or_default();
            let full = rows.len() == 10_000;
            for r in &rows {
                if !r["class"].is_null() {
                    self.decrypted += 1;
                } else {
                    self.failed += 1;
                }
                let id = r["input_id"].as_str().unwrap_or_default().to_string();
                *self.seen.entry(id).or_insert(0) += 1;
                self.after = r["seq"].as_u64().unwrap_or(self.after);
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// The soak test's view of the running services.
struct Soak<'a> {
    http: &'a reqwest::Client,
    owner_url: &'a str,
    admin: &'a Token,
    edge_url: &'a str,
    input: &'a Token,
    /// The services' state directories (owner and edge), whose size is sampled.
    state: &'a std::path::Path,
}

impl Soak<'_> {
    /// Streams for `a.duration` seconds, samples memory every `a.sample` seconds, then waits
    /// for the owner to decrypt everything and checks that each id came back exactly once.
    async fn run(&self, a: &BenchServeArgs, ds: &hecnn_nn::data::Dataset) -> Result<(), CliError> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        // One copy of the images for every stream (CIFAR-10's test split is 123 MB).
        let ds = Arc::new(ds.clone());
        let per_request = a.images.div_ceil(a.streams).max(1);
        let sent = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(a.duration);
        let mut tasks = Vec::new();
        for s in 0..a.streams {
            let (http, url, input) = (
                self.http.clone(),
                self.edge_url.to_string(),
                self.input.clone(),
            );
            let (sent, ds, streams) = (Arc::clone(&sent), Arc::clone(&ds), a.streams);
            tasks.push(tokio::spawn(async move {
                let mut round = 0usize;
                while Instant::now() < deadline {
                    let first = (s + round * streams) * per_request;
                    let body = stream_body(&ds, first..first + per_request, &|i| {
                        format!("s{s}-r{round}-{i:07}")
                    })?;
                    let v = json_of(
                        http.post(format!("{url}/v1/stream"))
                            .bearer_auth(input.expose())
                            .body(body)
                            .send()
                            .await
                            .map_err(err)?,
                    )
                    .await?;
                    let processed = v["processed"].as_u64().unwrap_or(0) as usize;
                    if processed != per_request {
                        return Err(err(format!(
                            "stream {s} round {round}: the edge took {processed} of {per_request} frames: {v}"
                        )));
                    }
                    sent.fetch_add(processed, Ordering::Relaxed);
                    round += 1;
                }
                Ok::<usize, CliError>(round)
            }));
        }
        let mut results = Results::default();
        let mut samples: Vec<(f64, usize)> = Vec::new();
        println!(
            "soak: {} streams of {per_request} frames per request for {} s, a sample every {} s",
            a.streams, a.duration, a.sample
        );
        println!(
            "{:>8}  {:>10}  {:>10}  {:>10}  {:>10}",
            "elapsed", "accepted", "decrypted", "resident", "state"
        );
        let mut next = start;
        // A stream that stops early (an error) ends the sampling: its error is reported now,
        // not after the whole duration.
        while Instant::now() < deadline && !tasks.iter().any(|t| t.is_finished()) {
            next += Duration::from_secs(a.sample.max(1));
            tokio::time::sleep_until(next.min(deadline).into()).await;
            results.page(self.http, self.owner_url, self.admin).await?;
            let rss = crate::cnn_cmds::current_rss().unwrap_or(0);
            let t = start.elapsed().as_secs_f64();
            samples.push((t, rss));
            println!(
                "{:>7.0}s  {:>10}  {:>10}  {:>10}  {:>10}",
                t,
                sent.load(Ordering::Relaxed),
                results.decrypted,
                hecnn_nn::compile::human_bytes(rss),
                hecnn_nn::compile::human_bytes(dir_size(self.state))
            );
        }
        for task in tasks {
            task.await.map_err(err)??;
        }
        let streamed_s = start.elapsed().as_secs_f64();
        let sent = sent.load(Ordering::Relaxed);
        let stop = Instant::now();
        while results.decrypted + results.failed < sent && stop.elapsed() < Duration::from_secs(300)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            results.page(self.http, self.owner_url, self.admin).await?;
        }
        let lost = sent.saturating_sub(results.seen.len());
        let repeated = results.seen.values().filter(|&&n| n > 1).count();
        let (first, last) = (
            samples.first().map_or(0, |s| s.1),
            samples.last().map_or(0, |s| s.1),
        );
        let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
        println!(
            "{sent} images streamed in {streamed_s:.0} s ({:.1} images/s): {} decrypted, {} \
             failed, {lost} lost, {repeated} ids more than once; resident memory {} at the first \
             sample, {} at the last, {} at most (peak of the process {}; it includes this load \
             generator's map of every id sent); state {}",
            sent as f64 / streamed_s,
            results.decrypted,
            results.failed,
            hecnn_nn::compile::human_bytes(first),
            hecnn_nn::compile::human_bytes(last),
            hecnn_nn::compile::human_bytes(peak),
            crate::cnn_cmds::peak_memory(),
            hecnn_nn::compile::human_bytes(dir_size(self.state))
        );
        if lost > 0 || repeated > 0 || results.failed > 0 || results.decrypted != sent {
            return Err(err(format!(
                "soak: {lost} images lost, {repeated} repeated, {} failed of {sent}",
                results.failed
            )));
        }
        Ok(())
    }
}

/// Bytes of the regular files under `dir` (0 for what cannot be read).
fn dir_size(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len() as usize),
            _ => 0,
        })
        .sum()
}
