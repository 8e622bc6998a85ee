//! `hecnn bench infer-serve`: a load test of `hecnn serve` on loopback. The service runs in
//! this process on 127.0.0.1; each client has its own keys and session and submits its
//! encrypted images job after job (as `hecnn client run` does: submit, long-poll, fetch,
//! delete); the clock covers the submissions only, keys and encryption come before it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hecnn_deploy::{
    auth::Token,
    infer::{self, InferConfig},
};
use hecnn_nn::{
    compile::{
        Client, ClientSpec, CompileOptions, CompiledModel, EncryptedImages, ImagesKind,
        PackingRequest,
    },
    exec::{self, argmax},
};
use hecnn_ring::{CpuBackend, Prng};
use serde_json::{Value, json};

use crate::{CliError, cnn, infer_cmd};

/// `hecnn bench infer-serve`.
#[derive(Args, Debug)]
pub struct BenchInferArgs {
    /// A compiled model, or an ONNX model (compiled here in single-image packing).
    #[arg(long, default_value = "models/hcnn-mnist.onnx")]
    model: PathBuf,
    /// Images: mnist, cifar10, sample:mnist, sample:cifar10, idx:…, cifar-bin:…
    #[arg(long, default_value = "sample:mnist")]
    data: String,
    /// Concurrent clients, each with its own keys and session (1 to 32).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Images in all, shared out among the clients (1 to 4096).
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Images per job.
    #[arg(long, default_value_t = 1)]
    per_job: usize,
    /// The service's queue (jobs waiting for a worker; default: one per client, so no
    /// submission is refused; fewer exercise the 429 answers and the clients' retries).
    #[arg(long)]
    queue: Option<usize>,
    /// The service's workers (jobs evaluated at once).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Worker threads of the evaluations (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Give up after this many seconds of load.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// The `q` quantile (nearest rank) of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

async fn json_of(resp: reqwest::Response) -> Result<Value, CliError> {
    let st = resp.status();
    let v: Value = resp.json().await.map_err(err)?;
    if !st.is_success() {
        return Err(err(format!("HTTP {st}: {v}")));
    }
    Ok(v)
}

fn load_model(a: &BenchInferArgs) -> Result<CompiledModel, CliError> {
    let bytes = cnn::read_file(&a.model)?;
    if CompiledModel::is_compiled(&bytes) {
        return infer_cmd::load_compiled(&a.model);
    }
    // Named after the file, as `hecnn compile` names it.
    cnn::load_model(
        &a.model,
        &CompileOptions {
            packing: PackingRequest::Single,
            ..CompileOptions::default()
        },
    )
}

/// One client: its keys' secret half, its session and its encrypted jobs.
struct Prepared {
    token: Token,
    session: String,
    secret: hecnn_rlwe::SecretKey,
    jobs: Vec<(Vec<usize>, Vec<u8>)>,
}

/// Runs the load test.
///
/// # Errors
/// Bad arguments, a model that does not compile, service and HTTP errors.
pub fn run(a: &BenchInferArgs) -> Result<(), CliError> {
    if !(1..=32).contains(&a.clients) || !(1..=4096).contains(&a.images) || a.per_job == 0 {
        return Err(err(
            "--clients is 1 to 32, --images 1 to 4096, --per-job at least 1",
        ));
    }
    let ds = cnn::load_data(&a.data)?;
    if ds.is_empty() {
        return Err(err("the data set is empty"));
    }
    let model = load_model(a)?;
    if model.model().input_shape != ds.shape() {
        return Err(err(format!(
            "the data has images of shape {:?}, the model takes {:?}",
            ds.shape(),
            model.model().input_shape
        )));
    }
    let threads = crate::cnn_cmds::threads(a.threads);
    let queue = a.queue.unwrap_or(a.clients);
    let dir = std::env::temp_dir().join(format!("hecnn-bench-infer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = crate::serve_cmd::runtime()?;
    let result = rt.block_on(async {
        let mut config = InferConfig::new(dir.join("state"));
        config.queue = queue;
        config.workers = a.workers;
        config.max_loaded_sessions = a.clients;
        config.max_job_images = a.per_job;
        let server = infer::start(config, &model, CpuBackend::new(threads)?).await?;
        let admin = Token::read(&server.admin_token_file)?;
        let http = reqwest::Client::new();
        let spec_bytes = http
            .get(format!("{}/v1/spec", server.url))
            .send()
            .await
            .map_err(err)?
            .bytes()
            .await
            .map_err(err)?;
        let spec = ClientSpec::from_bytes(&spec_bytes)?;
        let be = CpuBackend::new(threads)?;
        let client = Arc::new(Client::new(spec, be.clone())?);

        // Keys, sessions and encrypted jobs, before the clock starts.
        let t = Instant::now();
        let mut prepared = Vec::with_capacity(a.clients);
        let mut next = 0usize;
        for c in 0..a.clients {
            let v = json_of(
                http.post(format!("{}/v1/clients", server.url))
                    .bearer_auth(admin.expose())
                    .json(&json!({ "name": format!("bench-{c}") }))
                    .send()
                    .await
                    .map_err(err)?,
            )
            .await?;
            let token = Token::parse(v["token"].as_str().unwrap_or_default())?;
            let cl = Arc::clone(&client);
            let share = a.images / a.clients + usize::from(c < a.images % a.clients);
            let indices: Vec<usize> = (next..next + share).map(|i| i % ds.len()).collect();
            next += share;
            let images: Vec<_> = indices.iter().map(|&i| ds.image(i)).collect();
            let per_job = a.per_job;
            let (secret, eval, jobs) = tokio::task::spawn_blocking(move || {
                let mut rng = Prng::from_entropy()?;
                let keys = cl.keygen(&mut rng)?;
                let eval = keys.evaluation.to_bytes(cl.backend())?;
                let mut jobs = Vec::new();
                for (chunk, idx) in images.chunks(per_job).zip(indices.chunks(per_job)) {
                    let enc = cl.encrypt(&keys.public, chunk, &mut rng)?;
                    jobs.push((
                        idx.to_vec(),
                        enc.to_bytes(cl.backend(), cl.spec().params())?,
                    ));
                }
                Ok::<_, CliError>((keys.secret, eval, jobs))
            })
            .await
            .map_err(err)??;
            let v = json_of(
                http.post(format!("{}/v1/sessions", server.url))
                    .bearer_auth(token.expose())
                    .body(eval)
                    .send()
                    .await
                    .map_err(err)?,
            )
            .await?;
            let session = v["session_id"].as_str().unwrap_or_default().to_string();
            prepared.push(Prepared {
                token,
                session,
                secret,
                jobs,
            });
        }
        let setup_s = t.elapsed().as_secs_f64();

        // The load: every client submits its jobs one after the other.
        let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
        let t = Instant::now();
        let mut tasks = Vec::new();
        for p in prepared {
            let (http, url) = (http.clone(), server.url.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(p.jobs.len());
                let mut outputs = Vec::with_capacity(p.jobs.len());
                let mut refused = 0;
                for (indices, body) in &p.jobs {
                    let s = Instant::now();
                    let (job, r) =
                        infer_cmd::submit(&http, &url, &p.token, &p.session, body, deadline)
                            .await?;
                    let out = infer_cmd::fetch(&http, &url, &p.token, &job, deadline).await?;
                    latencies.push(s.elapsed().as_secs_f64());
                    refused += r;
                    let _ = http
                        .delete(format!("{url}/v1/jobs/{job}"))
                        .bearer_auth(p.token.expose())
                        .send()
                        .await;
                    outputs.push((indices.clone(), out));
                }
                Ok::<_, CliError>((p.secret, latencies, outputs, refused))
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.map_err(err)??);
        }
        let wall = t.elapsed().as_secs_f64();
        let metrics = http
            .get(format!("{}/v1/metrics", server.url))
            .send()
            .await
            .map_err(err)?
            .text()
            .await
            .map_err(err)?;
        server.abort();

        // Every output decrypts to the cleartext model's prediction.
        let (mut agree, mut total, mut refused) = (0, 0, 0);
        // Disagreements with the cleartext model's top-2 margin: CKKS is approximate, so a
        // near-tie may go either way; a clear margin means a wrong result.
        let mut differ: Vec<(usize, f64)> = Vec::new();
        let mut latencies = Vec::new();
        for (secret, lat, outputs, r) in results {
            latencies.extend(lat);
            refused += r;
            for (indices, bytes) in outputs {
                let out = EncryptedImages::from_bytes(
                    client.backend(),
                    client.spec(),
                    ImagesKind::Outputs,
                    &bytes,
                )?;
                for (logits, &i) in client.decrypt(&secret, &out)?.iter().zip(&indices) {
                    let clear = exec::run(model.model(), &ds.image(i))?;
                    let want = argmax(clear.data());
                    if argmax(logits) == want {
                        agree += 1;
                    } else {
                        differ.push((i, top2_margin(clear.data())));
                    }
                    total += 1;
                }
            }
        }
        latencies.sort_by(f64::total_cmp);
        let eval_line = metrics
            .lines()
            .filter(|l| l.starts_with("hecnn_infer_eval_seconds_"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .collect::<Vec<_>>();
        let mean_eval = match eval_line.as_slice() {
            [.., sum, count] if *count > 0.0 => sum / count,
            _ => f64::NAN,
        };
        println!(
            "'{}' ({} packing) on 127.0.0.1, {threads} threads, {} worker(s), queue {}: \
             {} clients set up (keys, sessions, encryption) in {setup_s:.1} s",
            model.name(),
            model.packing(),
            a.workers,
            queue,
            a.clients
        );
        println!(
            "{total} images in {} jobs of {} from {} concurrent clients in {wall:.2} s: \
             {:.2} images/s, {:.2} jobs/s; {refused} submissions refused with 429 and retried",
            latencies.len(),
            a.per_job,
            a.clients,
            total as f64 / wall,
            latencies.len() as f64 / wall
        );
        println!(
            "job latency (submit to outputs): p50 {:.3} s, p90 {:.3} s, p99 {:.3} s, max {:.3} s; \
             evaluation {:.3} s per job on average",
            quantile(&latencies, 0.5),
            quantile(&latencies, 0.9),
            quantile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN),
            mean_eval
        );
        println!("decrypted predictions equal to the cleartext model's: {agree}/{total}");
        for (i, margin) in &differ {
            println!("  image {i}: a near-tie in the clear (top-2 margin {margin:.3})");
        }
        if differ.iter().any(|&(_, m)| m >= NEAR_TIE) {
            return Err(err(format!(
                "{} of {total} predictions differ from the cleartext model's, some by a top-2 margin of {NEAR_TIE} or more",
                differ.len()
            )));
        }
        Ok::<(), CliError>(())
    });
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A cleartext top-2 margin below which an encrypted prediction may differ: about twice the
/// largest logit error measured for single-image MNIST (4.3e-2, bench/RESULTS.md §6b), far
/// below what a wrong result shows.
const NEAR_TIE: f64 = 0.1;

/// The gap between the largest and second largest logit.
fn top2_margin(logits: &[f64]) -> f64 {
    let mut v = logits.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    match v.as_slice() {
        [a, b, ..] => a - b,
        _ => f64::INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.9), 90.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
