//! The inference service's metrics in the Prometheus text format (version 0.0.4): requests
//! by route and status, and histograms of evaluation and job latency. Gauges (queue depth,
//! jobs in flight, sessions) are read from the service's state when the metrics are served.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 13] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A cumulative histogram of durations in seconds.
#[derive(Default)]
pub(crate) struct Histogram {
    inner: Mutex<HistogramInner>,
}

#[derive(Default)]
struct HistogramInner {
    /// Observations at most each bound (not cumulative; summed when rendered).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Records one observation.
    pub(crate) fn observe(&self, seconds: f64) {
        let mut h = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            h.buckets[i] += 1;
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The mean observation, if any.
    pub(crate) fn mean(&self) -> Option<f64> {
        let h = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (h.count > 0).then(|| h.sum / h.count as f64)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(h.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
    }
}

/// Counters and histograms of the service.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Requests by (method, route template, status).
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Seconds of each evaluation (`Server::run`, outputs serialized).
    pub(crate) eval: Histogram,
    /// Seconds from a job's acceptance to its stored result.
    pub(crate) job: Histogram,
    /// Images evaluated.
    pub(crate) images: AtomicU64,
    /// Jobs finished with stored outputs.
    pub(crate) jobs_done: AtomicU64,
    /// Jobs whose evaluation failed.
    pub(crate) jobs_failed: AtomicU64,
    /// Results removed because their time to live passed.
    pub(crate) expired: AtomicU64,
}

/// Gauges read from the service's state when the metrics are served.
pub(crate) struct Gauges {
    /// Jobs accepted and waiting for a worker.
    pub(crate) queued: usize,
    /// Jobs being evaluated.
    pub(crate) running: usize,
    /// Most jobs waiting before submissions get 429.
    pub(crate) queue_capacity: usize,
    /// Finished results stored.
    pub(crate) results: usize,
    /// Registered clients.
    pub(crate) clients: usize,
    /// Registered sessions.
    pub(crate) sessions: usize,
    /// Sessions whose evaluation keys are loaded in memory.
    pub(crate) loaded: usize,
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Counts one answered request.
    pub(crate) fn request(&self, method: &str, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((method.to_string(), route.to_string(), status))
            .or_insert(0) += 1;
    }

    /// The metrics in the Prometheus text format.
    pub(crate) fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP hecnn_http_requests_total HTTP requests answered, by method, route and status."
        );
        let _ = writeln!(out, "# TYPE hecnn_http_requests_total counter");
        for ((method, route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "hecnn_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                label(method),
                label(route)
            );
        }
        let gauges = [
            (
                "hecnn_infer_queue_depth",
                "Jobs accepted and waiting for a worker.",
                g.queued,
            ),
            (
                "hecnn_infer_queue_capacity",
                "Jobs that may wait before submissions are refused with 429.",
                g.queue_capacity,
            ),
            (
                "hecnn_infer_jobs_in_flight",
                "Jobs being evaluated.",
                g.running,
            ),
            (
                "hecnn_infer_results_stored",
                "Finished jobs whose results are stored.",
                g.results,
            ),
            ("hecnn_infer_clients", "Registered clients.", g.clients),
            ("hecnn_infer_sessions", "Registered sessions.", g.sessions),
            (
                "hecnn_infer_sessions_loaded",
                "Sessions whose evaluation keys are loaded in memory.",
                g.loaded,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "hecnn_infer_images_total",
                "Images evaluated.",
                &self.images,
            ),
            (
                "hecnn_infer_jobs_done_total",
                "Jobs finished with stored outputs.",
                &self.jobs_done,
            ),
            (
                "hecnn_infer_jobs_failed_total",
                "Jobs whose evaluation failed.",
                &self.jobs_failed,
            ),
            (
                "hecnn_infer_results_expired_total",
                "Results removed after their time to live.",
                &self.expired,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        self.eval.render(
            &mut out,
            "hecnn_infer_eval_seconds",
            "Seconds per job evaluation (encrypted inference and serialization of the outputs).",
        );
        self.job.render(
            &mut out,
            "hecnn_infer_job_seconds",
            "Seconds from a job's acceptance to its stored result (queueing included).",
        );
        out
    }
}

/// Middleware counting every answer by method, route template (`/v1/jobs/{id}`, not the
/// id) and status; requests that match no route count under `unmatched`.
pub(crate) async fn count(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    metrics.request(&method, &route, resp.status().as_u16());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_cumulative_buckets_and_escaped_labels() {
        let m = Metrics::default();
        m.request("GET", "/v1/jobs/{id}", 202);
        m.request("GET", "/v1/jobs/{id}", 202);
        m.request("POST", "a\"b", 429);
        for s in [0.07, 0.3, 700.0] {
            m.eval.observe(s);
        }
        let text = m.render(&Gauges {
            queued: 3,
            running: 1,
            queue_capacity: 4,
            results: 0,
            clients: 2,
            sessions: 2,
            loaded: 1,
        });
        assert!(text.contains(
            "hecnn_http_requests_total{method=\"GET\",route=\"/v1/jobs/{id}\",status=\"202\"} 2"
        ));
        assert!(text.contains("route=\"a\\\"b\""), "{text}");
        assert!(text.contains("hecnn_infer_queue_depth 3"));
        assert!(text.contains("hecnn_infer_eval_seconds_bucket{le=\"0.05\"} 0"));
        assert!(text.contains("hecnn_infer_eval_seconds_bucket{le=\"0.1\"} 1"));
        assert!(text.contains("hecnn_infer_eval_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("hecnn_infer_eval_seconds_bucket{le=\"600\"} 2"));
        assert!(text.contains("hecnn_infer_eval_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("hecnn_infer_eval_seconds_count 3"));
        assert_eq!(m.eval.mean(), Some((0.07 + 0.3 + 700.0) / 3.0));
    }
}
