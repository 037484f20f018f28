//! Operational metrics, rendered in the Prometheus text format by the HTTP adapter.
//!
//! A deliberately small, dependency-free implementation: counters and gauges are atomics
//! (cheap on per-line hot paths), labelled families are a mutex-protected map touched only on
//! rare events (auth failures, HTTP responses, storage errors), histograms have fixed buckets.
//! There is no global registry: one [`Metrics`] value is created by the binary and handed to
//! every subsystem, so tests get isolated counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Mirrors a monotonic count kept by a subsystem (pulled at scrape time).
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

/// A value that goes up and down (open streams, sync state).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Increments a gauge now and decrements it when dropped (open streams, in-flight work).
#[derive(Debug)]
pub struct GaugeGuard {
    metrics: Metrics,
    gauge: fn(&MetricsInner) -> &Gauge,
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.gauge)(&self.metrics.inner).dec();
    }
}

/// A counter family keyed by label values. For rare events only (it takes a lock).
#[derive(Debug, Default)]
pub struct CounterVec {
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    /// Adds one to the series with these label values (in the family's label order).
    pub fn inc(&self, labels: &[&str]) {
        let key: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        let mut guard = self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard.entry(key).or_insert(0) += 1;
    }
    /// Value of one series (0 when never incremented).
    pub fn get(&self, labels: &[&str]) -> u64 {
        let key: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        let guard = self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.get(&key).copied().unwrap_or(0)
    }
    fn snapshot(&self) -> BTreeMap<Vec<String>, u64> {
        self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Upper bounds (seconds) of latency histogram buckets: 0.5 ms … 10 s.
const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Every metric KubeLens exports. Field names are the metric names without the `kubelens_`
/// prefix; see [`Metrics::render_prometheus`] for help texts.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct MetricsInner {
    /// HTTP responses by route pattern, method and status.
    pub http_requests: CounterVec,
    /// HTTP request duration (until the response head; streams excluded).
    pub http_request_duration: Histogram,
    /// Open SSE streams (logs and pod watches).
    pub sse_streams_open: Gauge,
    /// Open upstream Kubernetes log streams.
    pub upstream_log_streams_open: Gauge,
    /// Upstream log streams opened since start.
    pub upstream_log_streams_opened: Counter,
    /// Upstream reconnects after a drop while the container was running.
    pub upstream_reconnects: Counter,
    /// Log lines received from Kubernetes.
    pub log_lines_received: Counter,
    /// Log bytes received from Kubernetes.
    pub log_bytes_received: Counter,
    /// Log lines sent to viewers (all viewers counted).
    pub log_lines_sent: Counter,
    /// Lines cut at `logs.max_line_length`.
    pub log_lines_truncated: Counter,
    /// Viewers cut loose because their bounded queue was full.
    pub lagged_viewers: Counter,
    /// Streams refused by admission control (429), by limit (`upstream` or `user`).
    pub streams_rejected: CounterVec,
    /// Authentication failures by reason.
    pub auth_failures: CounterVec,
    /// JWKS fetches attempted (mirrored from the authenticator at scrape time).
    pub jwks_fetches: Counter,
    /// Watch caches synced (1) or not (0), by resource.
    pub cache_synced: CounterVec,
    /// Kubernetes API requests made by the backend (rate-limited client).
    pub kube_api_requests: Counter,
    /// Storage errors by operation.
    pub storage_errors: CounterVec,
    /// Storage operation latency.
    pub storage_latency: Histogram,
    /// Containers whose logs were captured into the archive.
    pub archive_captured: Counter,
    /// Bytes written to the archive.
    pub archive_bytes: Counter,
    /// Captures that could not be made (pod and logs gone first), by reason.
    pub archive_missed: CounterVec,
    /// Failures of the retention pod watches (each is retried with backoff; pods that
    /// terminate during the gap are caught by the re-list or counted in `archive_missed`).
    pub retention_watch_errors: Counter,
    /// Pods found deleted by a re-list of a retention watch (their deletion event fell in a
    /// watch gap); each is then handled as a deletion, and what could not be read is counted
    /// in `archive_missed{reason="logs_gone"}`.
    pub retention_deleted_unseen: Counter,
    /// Audit events missing from the store's copy (`audit.queue_max_events` full, or the
    /// store refused them after retries); the process log still has them.
    pub audit_events_dropped: Counter,
}

/// Shared handle to all metrics; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

impl std::ops::Deref for Metrics {
    type Target = MetricsInner;
    fn deref(&self) -> &MetricsInner {
        &self.inner
    }
}

impl Metrics {
    /// A fresh set of zeroed metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts an open SSE stream until the guard is dropped.
    pub fn sse_stream_guard(&self) -> GaugeGuard {
        self.inner.sse_streams_open.inc();
        GaugeGuard { metrics: self.clone(), gauge: |m| &m.sse_streams_open }
    }

    /// Counts an open upstream log stream until the guard is dropped.
    pub fn upstream_stream_guard(&self) -> GaugeGuard {
        self.inner.upstream_log_streams_open.inc();
        self.inner.upstream_log_streams_opened.inc();
        GaugeGuard { metrics: self.clone(), gauge: |m| &m.upstream_log_streams_open }
    }

    /// Sets a labelled 0/1 state gauge (rendered as a gauge; stored in a counter family).
    pub fn set_cache_synced(&self, resource: &str, synced: bool) {
        let mut guard =
            self.inner.cache_synced.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.insert(vec![resource.to_owned()], u64::from(synced));
    }

    /// The Prometheus text exposition (version 0.0.4) of every metric.
    pub fn render_prometheus(&self) -> String {
        let m = &*self.inner;
        let mut out = String::with_capacity(4096);
        family(&mut out, "http_requests_total", "counter", "HTTP responses by route, method and status.", &["route", "method", "status"], &m.http_requests);
        histogram(&mut out, "http_request_duration_seconds", "Time to the response head (streams count until their head).", &m.http_request_duration);
        gauge(&mut out, "sse_streams_open", "Open SSE streams.", m.sse_streams_open.get());
        gauge(&mut out, "upstream_log_streams_open", "Open upstream Kubernetes log streams.", m.upstream_log_streams_open.get());
        counter(&mut out, "upstream_log_streams_opened_total", "Upstream log streams opened.", m.upstream_log_streams_opened.get());
        counter(&mut out, "upstream_reconnects_total", "Upstream log stream reconnects while the container kept running.", m.upstream_reconnects.get());
        counter(&mut out, "log_lines_received_total", "Log lines received from Kubernetes.", m.log_lines_received.get());
        counter(&mut out, "log_bytes_received_total", "Log bytes received from Kubernetes.", m.log_bytes_received.get());
        counter(&mut out, "log_lines_sent_total", "Log lines sent to viewers.", m.log_lines_sent.get());
        counter(&mut out, "log_lines_truncated_total", "Log lines truncated at logs.max_line_length.", m.log_lines_truncated.get());
        counter(&mut out, "lagged_viewers_total", "Viewers cut loose because their queue was full (they resume without loss).", m.lagged_viewers.get());
        family(&mut out, "streams_rejected_total", "counter", "Streams refused by admission control (429).", &["limit"], &m.streams_rejected);
        family(&mut out, "auth_failures_total", "counter", "Authentication failures by reason.", &["reason"], &m.auth_failures);
        counter(&mut out, "jwks_fetches_total", "JWKS fetches attempted (startup, refresh, unknown key ids).", m.jwks_fetches.get());
        family(&mut out, "cache_synced", "gauge", "Watch cache synced (1) or not (0).", &["resource"], &m.cache_synced);
        counter(&mut out, "kube_api_requests_total", "Kubernetes API requests made by the backend.", m.kube_api_requests.get());
        family(&mut out, "storage_errors_total", "counter", "Storage errors by operation.", &["operation"], &m.storage_errors);
        histogram(&mut out, "storage_operation_duration_seconds", "Storage operation latency.", &m.storage_latency);
        counter(&mut out, "retention_watch_errors_total", "Retention pod watch failures (retried with backoff).", m.retention_watch_errors.get());
        counter(&mut out, "retention_pods_deleted_unseen_total", "Pods whose deletion a retention watch only saw by re-listing.", m.retention_deleted_unseen.get());
        counter(&mut out, "archive_containers_captured_total", "Containers of terminated pods whose logs were archived.", m.archive_captured.get());
        counter(&mut out, "archive_bytes_total", "Bytes written to the log archive.", m.archive_bytes.get());
        counter(&mut out, "audit_events_dropped_total", "Audit events missing from the store's copy (the process log has them).", m.audit_events_dropped.get());
        family(&mut out, "archive_captures_missed_total", "counter", "Archive captures that could not be made, by reason.", &["reason"], &m.archive_missed);
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP kubelens_{name} {help}");
    let _ = writeln!(out, "# TYPE kubelens_{name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "kubelens_{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "kubelens_{name} {value}");
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, labels: &[&str], values: &CounterVec) {
    header(out, name, kind, help);
    for (label_values, value) in values.snapshot() {
        let pairs: Vec<String> = labels
            .iter()
            .zip(&label_values)
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        let _ = writeln!(out, "kubelens_{name}{{{}}} {value}", pairs.join(","));
    }
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
        let _ = writeln!(out, "kubelens_{name}_bucket{{le=\"{bound}\"}} {}", bucket.load(Ordering::Relaxed));
    }
    let count = h.count.load(Ordering::Relaxed);
    let _ = writeln!(out, "kubelens_{name}_bucket{{le=\"+Inf\"}} {count}");
    let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "kubelens_{name}_sum {sum}");
    let _ = writeln!(out, "kubelens_{name}_count {count}");
}

/// Escapes a label value per the exposition format (backslash, quote, newline).
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_families_gauges_and_histograms() {
        let metrics = Metrics::new();
        metrics.log_lines_received.add(42);
        metrics.auth_failures.inc(&["expired"]);
        metrics.auth_failures.inc(&["expired"]);
        metrics.http_requests.inc(&["/api/v1/namespaces", "GET", "200"]);
        metrics.storage_latency.observe(Duration::from_millis(3));
        metrics.set_cache_synced("pods", true);
        {
            let _open = metrics.sse_stream_guard();
            assert_eq!(metrics.sse_streams_open.get(), 1);
        }
        assert_eq!(metrics.sse_streams_open.get(), 0);
        let text = metrics.render_prometheus();
        assert!(text.contains("kubelens_log_lines_received_total 42"), "{text}");
        assert!(text.contains("kubelens_auth_failures_total{reason=\"expired\"} 2"), "{text}");
        assert!(text.contains("kubelens_http_requests_total{route=\"/api/v1/namespaces\",method=\"GET\",status=\"200\"} 1"));
        assert!(text.contains("kubelens_storage_operation_duration_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("kubelens_storage_operation_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("kubelens_storage_operation_duration_seconds_count 1"));
        assert!(text.contains("kubelens_cache_synced{resource=\"pods\"} 1"));
        assert!(text.contains("# TYPE kubelens_sse_streams_open gauge"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
