//! Several replicas as one service (issue 20): three real `kubelens` processes on ONE
//! PostgreSQL (and, in the other test, ONE Redis), each on its own port, behind a round-robin
//! TCP proxy written here (every new connection goes to the next live backend; a backend that
//! refuses the connection is skipped, as a killed process does). Proven through the proxy and
//! the replicas' own ports:
//!
//! 1. every request type works through the proxy, one new connection per request, and each
//!    replica served its share (each replica's `/metrics` HTTP counter);
//! 2. a stream ticket issued by one replica is redeemed on another exactly once, and the
//!    stream-credential cookie issued by one replica works repeatedly on the others;
//! 3. terminated pods' logs, captured by all three replicas, read back identically from
//!    every replica with no line stored twice (a completed Job pod, and a pod followed through
//!    two replicas' taps while it is deleted);
//! 4. failover without loss: a pod stream and an app stream, opened on replica A, survive
//!    SIGTERM of A (final `status` `ended`/`shutdown`, then resume through the proxy with
//!    `Last-Event-ID`) and SIGKILL of the replica they resumed on (the connection drops;
//!    resume again): the concatenated lines have no gap and no duplicate.
//!
//! The parts run one after another; a failing part is reported and the next one still runs,
//! and the test fails at the end listing every failed part.
//!
//! Run (PostgreSQL/Redis from scripts/storage/run.sh, the cluster and Keycloak from
//! testenv/run):
//!
//! ```sh
//! scripts/storage/run.sh -- testenv/run -- cargo test -p kubelens-salvo --test e2e_replicas -- --nocapture
//! ```
//!
//! Without `KUBELENS_TEST_POSTGRES_URL` / `KUBELENS_TEST_REDIS_URL` the test of that backend
//! is skipped (with a message); without the testenv it fails unless `KUBELENS_SKIP_E2E=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use kubelens_testenv::TestEnv;
use rand::Rng;
use serde_json::Value;
use support::{Kubelens, seq_of};

const NS: &str = "team-a";
const REPLICAS: usize = 3;
/// The replicas log their archive captures (debug) so the test can see that all three did.
const LOG_FILTER: &str = "info,kubelens_core::retention=debug";

/// The two backend tests start three processes each; on 2 cores they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Redis,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::rng().random::<u32>())
}

/// The `storage:` section of every replica: one shared database, a schema / key prefix of
/// this test's own. `None` (skip) when the backend's URL is not set.
fn storage_section(backend: Backend) -> Option<Value> {
    let var = match backend {
        Backend::Postgres => "KUBELENS_TEST_POSTGRES_URL",
        Backend::Redis => "KUBELENS_TEST_REDIS_URL",
    };
    let url = match std::env::var(var) {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!("{var} is not set: skipping (run through scripts/storage/run.sh)");
            return None;
        }
    };
    let scope = unique("replicas").replace('-', "_");
    Some(match backend {
        Backend::Postgres => {
            serde_json::json!({"backend": "postgres", "postgres": {"url": url, "schema": scope, "max_connections": 4}})
        }
        Backend::Redis => serde_json::json!({"backend": "redis", "redis": {"url": url, "key_prefix": format!("{scope}:")}}),
    })
}

// ---- the round-robin proxy -----------------------------------------------------------------

/// A TCP proxy on 127.0.0.1: each accepted connection goes to the next live backend in turn
/// (skipping backends taken out of rotation and backends that refuse the connection), then
/// bytes are copied both ways until either side closes.
struct Proxy {
    url: String,
    backends: Arc<Vec<(SocketAddr, AtomicBool)>>,
    /// Backend index of every proxied connection, in order.
    routed: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(backends: &[SocketAddr]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends: Arc<Vec<(SocketAddr, AtomicBool)>> = Arc::new(backends.iter().map(|a| (*a, AtomicBool::new(true))).collect());
        let routed = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (backends, routed) = (Arc::clone(&backends), Arc::clone(&routed));
            async move {
                let mut next = 0usize;
                loop {
                    let Ok((mut client, _)) = listener.accept().await else { continue };
                    let n = backends.len();
                    let mut upstream = None;
                    for i in 0..n {
                        let b = (next + i) % n;
                        if !backends[b].1.load(Ordering::SeqCst) {
                            continue;
                        }
                        if let Ok(server) = tokio::net::TcpStream::connect(backends[b].0).await {
                            upstream = Some((b, server));
                            break;
                        }
                    }
                    // No backend: dropping the client closes its connection.
                    let Some((b, mut server)) = upstream else { continue };
                    next = b + 1;
                    routed.lock().unwrap().push(b);
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                }
            }
        });
        Self { url: format!("http://{addr}"), backends, routed, task }
    }

    /// Takes backend `i` out of rotation (what an endpoints controller does when a pod is
    /// terminating or not ready).
    fn remove(&self, i: usize) {
        self.backends[i].1.store(false, Ordering::SeqCst);
    }

    fn routed_len(&self) -> usize {
        self.routed.lock().unwrap().len()
    }

    fn routed_since(&self, from: usize) -> Vec<usize> {
        self.routed.lock().unwrap()[from..].to_vec()
    }

    /// The backend the latest connection went to.
    fn last(&self) -> usize {
        *self.routed.lock().unwrap().last().expect("no connection was proxied")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- replicas --------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `kubelens` process with the e2e config on the shared `storage`.
fn start_replica(env: &TestEnv, storage: &Value) -> Kubelens {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::sa_kubeconfig(env, dir.path());
    let port = free_port();
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&support::e2e_config(env, port, &kubeconfig, "")).unwrap();
    config["storage"] = serde_yaml_ng::to_value(storage).unwrap();
    config["audit"] = serde_yaml_ng::from_str("store: true").unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    Kubelens::start_with_config_env(dir, &path, port, &[("KUBELENS_LOG", LOG_FILTER)])
}

/// The replicas (index = proxy backend index; `None` once stopped) and the proxy.
struct Service {
    replicas: Vec<Option<Kubelens>>,
    urls: Vec<String>,
    proxy: Proxy,
    /// Stopped replicas, kept so their logs (in their temp dirs) can be read at the end.
    retired: Vec<Kubelens>,
}

impl Service {
    fn replica(&self, i: usize) -> &Kubelens {
        self.replicas[i].as_ref().unwrap_or_else(|| panic!("replica {i} is stopped"))
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.replicas.iter().enumerate() {
            if let Some(r) = r {
                let log = r.log();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                out.push_str(&format!("--- replica {i} ({}) last lines:\n", r.url));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

// ---- cluster fixtures ------------------------------------------------------------------------

fn kubectl(env: &TestEnv, args: &[&str]) -> String {
    env.kubectl(args).unwrap_or_else(|e| panic!("kubectl {args:?}: {e:#}"))
}

/// Lines `seq=<from..to> src=<src> …`, 1 ms apart, appended as CRI lines.
fn write_lines(path: &Path, src: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<String> {
    let now = chrono::Utc::now();
    let mut body = String::new();
    let mut texts = Vec::new();
    for (i, seq) in seqs.enumerate() {
        let text = format!("seq={seq} src={src} replicas test line");
        body.push_str(&kubelens_testenv::cri_line(now + chrono::Duration::milliseconds(i as i64), "stdout", &text));
        texts.push(text);
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(body.as_bytes()).unwrap();
    texts
}

/// A pod on the KWOK node with one container `app`, optionally owned by `(apiVersion, kind,
/// name, uid)`; waits for `phase` and for KWOK to serve its log file.
fn create_pod(env: &TestEnv, name: &str, owner: Option<(&str, &str, &str, &str)>, labels: Value, phase: &str) {
    let mut meta = serde_json::json!({"name": name, "namespace": NS, "labels": labels});
    if let Some((api_version, kind, owner_name, uid)) = owner {
        meta["ownerReferences"] =
            serde_json::json!([{"apiVersion": api_version, "kind": kind, "name": owner_name, "uid": uid, "controller": true}]);
    }
    let job = owner.is_some_and(|o| o.1 == "Job");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {
            "nodeName": env.node_name,
            "restartPolicy": if job { "Never" } else { "Always" },
            "containers": [{"name": "app", "image": "registry.invalid/e2e:1"}],
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
        }
    });
    env.kubectl_apply(&pod.to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = env.kubectl(&["-n", NS, "get", "pod", name, "-o", "jsonpath={.status.phase}"]).unwrap_or_default();
        if now == phase {
            break;
        }
        assert!(Instant::now() < deadline, "pod {name} not {phase} (phase {now:?})");
        std::thread::sleep(Duration::from_millis(200));
    }
    env.wait_logs_mapped(NS, name, "app", Duration::from_secs(60)).unwrap();
}

fn wait_gone(env: &TestEnv, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.kubectl(&["-n", NS, "get", "pod", name, "--ignore-not-found", "-o", "name"]).unwrap_or_default().trim() != "" {
        assert!(Instant::now() < deadline, "pod {name} not deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Fixtures {
    /// A running pod a loggen writes into during the failover part.
    follow_pod: String,
    follow_path: PathBuf,
    /// A bare ReplicaSet (app) with two running pods, for the app stream failover.
    app: String,
    app_pods: Vec<(String, PathBuf)>,
    /// A Job and its completed pod, whose 30 lines were written before it started.
    job: String,
    job_pod: String,
    job_lines: Vec<String>,
    /// A running pod with 200 lines, followed and then deleted in the archive part.
    tap_pod: String,
    tap_path: PathBuf,
    tap_lines: Vec<String>,
}

fn create_fixtures(env: &TestEnv) -> Fixtures {
    let labels = serde_json::json!({"e2e": "replicas"});
    let follow_pod = unique("rep-follow");
    let follow_path = env.ensure_pod_logs(NS, &follow_pod, &["app"]).unwrap().remove(0);
    create_pod(env, &follow_pod, None, labels.clone(), "Running");

    let app = unique("rep-app");
    let rs = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": app, "namespace": NS, "labels": {"app": app}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": app}},
                 "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "app", "image": "registry.invalid/e2e:1"}]}}}
    });
    env.kubectl_apply(&rs.to_string()).unwrap();
    let rs_uid = kubectl(env, &["-n", NS, "get", "replicaset", &app, "-o", "jsonpath={.metadata.uid}"]);
    let mut app_pods = Vec::new();
    for i in 0..2 {
        let pod = format!("{app}-p{i}");
        let path = env.ensure_pod_logs(NS, &pod, &["app"]).unwrap().remove(0);
        create_pod(env, &pod, Some(("apps/v1", "ReplicaSet", &app, &rs_uid)), serde_json::json!({"app": app, "e2e": "replicas"}), "Running");
        app_pods.push((pod, path));
    }

    let job = unique("rep-job");
    let manifest = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job, "namespace": NS},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "registry.invalid/e2e:1"}]}}}
    });
    env.kubectl_apply(&manifest.to_string()).unwrap();
    let job_uid = kubectl(env, &["-n", NS, "get", "job", &job, "-o", "jsonpath={.metadata.uid}"]);
    let job_pod = format!("{job}-x1");
    let job_path = env.ensure_pod_logs(NS, &job_pod, &["app"]).unwrap().remove(0);
    let job_lines = write_lines(&job_path, &job_pod, 1..=30);
    create_pod(env, &job_pod, Some(("batch/v1", "Job", &job, &job_uid)), serde_json::json!({"job-name": job, "e2e": "replicas"}), "Succeeded");

    let tap_pod = unique("rep-tap");
    let tap_path = env.ensure_pod_logs(NS, &tap_pod, &["app"]).unwrap().remove(0);
    let tap_lines = write_lines(&tap_path, &tap_pod, 1..=200);
    create_pod(env, &tap_pod, None, labels, "Running");
    Fixtures { follow_pod, follow_path, app, app_pods, job, job_pod, job_lines, tap_pod, tap_path, tap_lines }
}

fn cleanup(env: &TestEnv, fx: &Fixtures) {
    let mut pods: Vec<&str> = vec![&fx.follow_pod, &fx.job_pod, &fx.tap_pod];
    pods.extend(fx.app_pods.iter().map(|(p, _)| p.as_str()));
    for pod in pods {
        let _ = env.kubectl(&["-n", NS, "delete", "pod", pod, "--grace-period=0", "--force", "--wait=false", "--ignore-not-found"]);
        let _ = env.kubectl(&["-n", NS, "delete", "logs.kwok.x-k8s.io", pod, "--wait=false", "--ignore-not-found"]);
    }
    let _ = env.kubectl(&["-n", NS, "delete", "replicaset", &fx.app, "--wait=false", "--ignore-not-found"]);
    let _ = env.kubectl(&["-n", NS, "delete", "job", &fx.job, "--wait=false", "--ignore-not-found"]);
}

fn loggen(env: &TestEnv, path: &Path, src: &str, count: u64, rate: u64) -> Child {
    env.loggen_cmd()
        .arg("--file")
        .arg(path)
        .args(["--count", &count.to_string(), "--rate", &rate.to_string(), "--src", src, "--quiet"])
        .spawn()
        .unwrap()
}

// ---- HTTP ------------------------------------------------------------------------------------

/// A client that never reuses a connection: every request is a new TCP connection, so the
/// proxy's round robin spreads them over the replicas.
fn http() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).connect_timeout(Duration::from_secs(5)).build().unwrap()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let res = req.header("connection", "close").timeout(Duration::from_secs(30)).send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn get_json(url: &str, token: &str) -> (u16, Value) {
    let (status, _, body) = send(http().get(url).bearer_auth(token).header("accept", "application/json")).await;
    (status, body)
}

/// `(id, line)` of a one-shot JSON log read.
fn id_lines(body: &Value) -> Vec<(String, String)> {
    body["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines in {body}"))
        .iter()
        .map(|l| (l["id"].as_str().unwrap().to_owned(), l["line"].as_str().unwrap().to_owned()))
        .collect()
}

/// `kubelens_http_requests_total` of one replica, summed over status: (route, method) → count.
async fn route_counts(base: &str) -> BTreeMap<(String, String), f64> {
    let text = http().get(format!("{base}/metrics")).header("connection", "close").send().await.unwrap().text().await.unwrap();
    let label = |labels: &str, name: &str| -> String {
        let start = labels.find(&format!("{name}=\"")).map(|i| i + name.len() + 2).unwrap();
        labels[start..].split('"').next().unwrap().to_owned()
    };
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("kubelens_http_requests_total{") else { continue };
        let (labels, value) = rest.split_once("} ").unwrap();
        *out.entry((label(labels, "route"), label(labels, "method"))).or_insert(0.0) += value.trim().parse::<f64>().unwrap();
    }
    out
}

// ---- SSE -------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Event {
    id: Option<String>,
    event: String,
    data: Value,
}

enum Cred<'a> {
    Bearer(&'a str),
    /// `kubelens_stream=<value>` (the cookie pair).
    Cookie(&'a str),
    /// No header: `?ticket=` in the URL.
    None,
}

struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

/// Opens an SSE stream on a new connection; `Err((status, body))` when it is not a 200.
async fn open_sse(url: &str, cred: Cred<'_>, last_event_id: Option<&str>) -> Result<Sse, (u16, String)> {
    let mut req = http().get(url).header("accept", "text/event-stream").header("connection", "close");
    req = match cred {
        Cred::Bearer(token) => req.bearer_auth(token),
        Cred::Cookie(pair) => req.header("cookie", pair),
        Cred::None => req,
    };
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let res = tokio::time::timeout(Duration::from_secs(30), req.send()).await.expect("no SSE response head within 30 s").unwrap();
    let status = res.status().as_u16();
    if status != 200 {
        return Err((status, res.text().await.unwrap_or_default()));
    }
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    Ok(Sse { body: res.bytes_stream().boxed(), buf: Vec::new() })
}

impl Sse {
    /// The next event (comments and `retry:` skipped); `None` when the stream ends or the
    /// connection drops. Panics when nothing arrives within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&frame).into_owned();
                let (mut id, mut event, mut data) = (None, None, None);
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap_or(Value::String(v.to_owned())));
                    }
                }
                if let (Some(event), Some(data)) = (event, data) {
                    return Some(Event { id, event, data });
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Some(Err(_)) | None) => return None,
                Err(_) => panic!("no SSE event within {timeout:?}"),
            }
        }
    }

    /// The next `n` `log` events.
    async fn logs(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(Duration::from_secs(20)).await {
                Some(e) if e.event == "log" => out.push(e),
                Some(_) => {}
                None => panic!("the stream ended after {} of {n} log events", out.len()),
            }
        }
        out
    }
}


/// Every line a (resumed, re-resumed) stream delivered, per source.
struct Tracker {
    what: &'static str,
    total: u64,
    seqs: BTreeMap<String, Vec<u64>>,
    last_id: Option<String>,
    /// The latest event of any kind on the current connection.
    last_event: Option<Event>,
}

impl Tracker {
    fn new(what: &'static str, sources: &[String], total: u64) -> Self {
        Self { what, total, seqs: sources.iter().map(|s| (s.clone(), Vec::new())).collect(), last_id: None, last_event: None }
    }

    fn on(&mut self, e: &Event) {
        self.last_event = Some(e.clone());
        if e.event != "log" {
            return;
        }
        let (seq, src) = seq_of(e.data["line"].as_str().unwrap());
        self.seqs.get_mut(&src).unwrap_or_else(|| panic!("{}: unexpected source {src}", self.what)).push(seq);
        self.last_id = Some(e.id.clone().unwrap_or_else(|| panic!("{}: a log event without an id", self.what)));
    }

    fn lines(&self) -> usize {
        self.seqs.values().map(Vec::len).sum()
    }

    fn done(&self) -> bool {
        self.seqs.values().all(|v| v.iter().max() == Some(&self.total))
    }

    /// Reads until `n` more lines arrived (or everything did); panics if the stream ends.
    async fn read(&mut self, sse: &mut Sse, n: usize) {
        let target = self.lines() + n;
        while self.lines() < target && !self.done() {
            match sse.next(Duration::from_secs(20)).await {
                Some(e) => self.on(&e),
                None => panic!("{}: the stream ended early ({} lines so far)", self.what, self.lines()),
            }
        }
    }

    /// Reads (and records) until the stream ends or the connection drops, bounded.
    async fn drain(&mut self, sse: &mut Sse, within: Duration) {
        self.last_event = None;
        let deadline = Instant::now() + within;
        while let Some(e) = sse.next(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))).await {
            self.on(&e);
        }
    }

    /// Every source's sequence is exactly 1..=total: no gap, no duplicate, in order.
    fn verify(&self) {
        for (src, seqs) in &self.seqs {
            let expected: Vec<u64> = (1..=self.total).collect();
            if *seqs != expected {
                let seen: BTreeSet<u64> = seqs.iter().copied().collect();
                let missing: Vec<u64> = expected.iter().copied().filter(|s| !seen.contains(s)).collect();
                let mut counts = BTreeMap::new();
                for s in seqs {
                    *counts.entry(*s).or_insert(0) += 1;
                }
                let dups: Vec<u64> = counts.iter().filter(|(_, n)| **n > 1).map(|(s, _)| *s).collect();
                let reordered = seqs.windows(2).filter(|w| w[1] <= w[0]).count();
                panic!(
                    "{} source {src}: {} lines for {}; missing {} {:?}; duplicated {} {:?}; {reordered} out of order",
                    self.what,
                    seqs.len(),
                    self.total,
                    missing.len(),
                    &missing[..missing.len().min(20)],
                    dups.len(),
                    &dups[..dups.len().min(20)],
                );
            }
        }
    }
}

// ---- parts -----------------------------------------------------------------------------------

/// Runs each part, catching its panic so the next part still runs.
#[derive(Default)]
struct Parts {
    failed: Vec<String>,
    timings: Vec<(String, Duration, bool)>,
}

impl Parts {
    async fn run(&mut self, name: &str, part: impl std::future::Future<Output = ()>) {
        let started = Instant::now();
        eprintln!("[e2e_replicas] {name} ...");
        let outcome = AssertUnwindSafe(part).catch_unwind().await;
        let took = started.elapsed();
        self.timings.push((name.to_owned(), took, outcome.is_ok()));
        match outcome {
            Ok(()) => eprintln!("[e2e_replicas] PASS {name} ({took:.1?})"),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "(non-string panic)".to_owned());
                eprintln!("[e2e_replicas] FAIL {name} ({took:.1?}): {text}");
                let short: String = text.chars().take(1500).collect();
                self.failed.push(format!("{name}: {short}"));
            }
        }
    }
}

/// Part 1: every request type through the proxy, one connection per request; each replica
/// serves every type once (3 rounds of 11 request types over 3 backends: 11 mod 3 ≠ 0, so
/// round r shifts every type to the next replica).
async fn every_request_type_through_the_proxy(svc: &Service, token: &str, fx: &Fixtures) {
    let before: Vec<_> = futures::future::join_all(svc.urls.iter().map(|u| route_counts(u))).await;
    let from = svc.proxy.routed_len();
    let api = format!("{}/api/v1", svc.proxy.url);
    let mut one_shot_first: Option<Vec<(String, String)>> = None;
    let mut app_first: Option<Vec<(String, String)>> = None;
    let mut etag: Option<String> = None;
    for round in 0..3 {
        // 1 namespaces
        let (status, body) = get_json(&format!("{api}/namespaces"), token).await;
        assert_eq!(status, 200, "namespaces: {body}");
        let names: Vec<&str> = body.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["team-a", "team-b"]);
        // 2 pods list
        let (status, body) = get_json(&format!("{api}/namespaces/{NS}/pods"), token).await;
        assert_eq!(status, 200, "pods: {body}");
        let pods: Vec<&str> = body.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert!(pods.contains(&"debug") && pods.contains(&fx.follow_pod.as_str()), "round {round}: {pods:?}");
        // 3 pod summary
        let (status, body) = get_json(&format!("{api}/namespaces/{NS}/pods/debug"), token).await;
        assert_eq!((status, body["name"].as_str()), (200, Some("debug")), "{body}");
        // 4 pod details
        let (status, body) = get_json(&format!("{api}/namespaces/{NS}/pods/debug/details"), token).await;
        assert_eq!(status, 200, "details: {body}");
        // 5 one-shot log read: same ids and lines from every replica
        let (status, body) = get_json(&format!("{api}/namespaces/{NS}/pods/debug/logs?follow=false&tailLines=5"), token).await;
        assert_eq!(status, 200, "one-shot: {body}");
        let lines = id_lines(&body);
        assert_eq!(lines.len(), 5, "{body}");
        match &one_shot_first {
            None => one_shot_first = Some(lines.clone()),
            Some(first) => assert_eq!(&lines, first, "round {round}: a one-shot read differs between replicas"),
        }
        // 6 pod SSE: the last 3 lines, with the one-shot's ids
        let mut sse = open_sse(&format!("{api}/namespaces/{NS}/pods/debug/logs?tailLines=3"), Cred::Bearer(token), None)
            .await
            .unwrap_or_else(|e| panic!("pod SSE: {e:?}"));
        let got: Vec<(String, String)> =
            sse.logs(3).await.iter().map(|e| (e.id.clone().unwrap(), e.data["line"].as_str().unwrap().to_owned())).collect();
        assert_eq!(got, lines[2..].to_vec(), "round {round}: SSE ids/lines differ from the one-shot read");
        drop(sse);
        // 7 app SSE (seeded Deployment `web`, 3 pods)
        let mut sse = open_sse(&format!("{api}/namespaces/{NS}/apps/web/logs?tailLines=2"), Cred::Bearer(token), None)
            .await
            .unwrap_or_else(|e| panic!("app SSE: {e:?}"));
        let got: Vec<(String, String)> = sse
            .logs(2)
            .await
            .iter()
            .map(|e| (e.data["pod"].as_str().unwrap().to_owned(), e.data["line"].as_str().unwrap().to_owned()))
            .collect();
        match &app_first {
            None => app_first = Some(got),
            Some(first) => assert_eq!(&got, first, "round {round}: the app stream starts differently on another replica"),
        }
        drop(sse);
        // 8 session PUT (conditional on the ETag another replica answered)
        let theme = ["dark", "light", "dark"][round];
        let mut put = http().put(format!("{api}/session")).bearer_auth(token).header("content-type", "application/json");
        if let Some(etag) = &etag {
            put = put.header("if-match", etag.as_str());
        }
        let (status, headers, body) = send(put.body(format!(r#"{{"theme":"{theme}"}}"#))).await;
        assert_eq!(status, 200, "round {round}: session PUT (If-Match {etag:?} from another replica): {body}");
        let put_etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
        // 9 session GET (another replica): what the PUT stored
        let (status, headers, body) = send(http().get(format!("{api}/session")).bearer_auth(token)).await;
        assert_eq!((status, body["theme"].as_str()), (200, Some(theme)), "round {round}: session GET after a PUT elsewhere: {body}");
        assert_eq!(headers.get("etag").map(|v| v.to_str().unwrap()), Some(put_etag.as_str()));
        etag = Some(put_etag);
        // 10 stream ticket
        let (status, _, body) = send(http().post(format!("{api}/stream-tickets")).bearer_auth(token)).await;
        assert_eq!(status, 201, "stream ticket: {body}");
        assert_eq!(body["ticket"].as_str().map(str::len), Some(43), "{body}");
        // 11 apps list
        let (status, body) = get_json(&format!("{api}/namespaces/{NS}/apps"), token).await;
        assert_eq!(status, 200, "apps: {body}");
        assert!(body.as_array().unwrap().iter().any(|a| a["name"] == "web"), "{body}");
    }
    let routed = svc.proxy.routed_since(from);
    let per_backend: Vec<usize> = (0..REPLICAS).map(|b| routed.iter().filter(|r| **r == b).count()).collect();
    assert_eq!(per_backend, [11, 11, 11], "connections per replica (each request its own connection)");
    let after: Vec<_> = futures::future::join_all(svc.urls.iter().map(|u| route_counts(u))).await;
    let mut union = BTreeSet::new();
    let mut per_replica = Vec::new();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let delta: BTreeMap<(String, String), f64> = a
            .iter()
            .filter(|((route, _), _)| route.starts_with("/api/v1"))
            .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d > 0.0)
            .collect();
        let served: f64 = delta.values().sum();
        assert_eq!(served, 11.0, "replica {i} counted {served} API requests (of 33 through the proxy): {delta:?}");
        union.extend(delta.keys().cloned());
        per_replica.push(delta.keys().cloned().collect::<BTreeSet<_>>());
    }
    assert_eq!(union.len(), 10, "10 (route, method) pairs (the pod log route serves both one-shot and SSE): {union:?}");
    for (i, keys) in per_replica.iter().enumerate() {
        assert_eq!(keys, &union, "replica {i} did not serve every request type");
    }
    eprintln!("[e2e_replicas] 33 requests: 11 per replica, every type on every replica");
}

async fn issue_ticket(base: &str, token: &str) -> String {
    let (status, _, body) = send(http().post(format!("{base}/api/v1/stream-tickets")).bearer_auth(token)).await;
    assert_eq!(status, 201, "{body}");
    body["ticket"].as_str().unwrap().to_owned()
}

/// Opens the `debug` pod's stream on `base` with `cred` (and `?ticket=`); status, and one log
/// line read on success.
async fn stream_status(base: &str, cred: Cred<'_>, ticket: Option<&str>) -> u16 {
    let mut url = format!("{base}/api/v1/namespaces/{NS}/pods/debug/logs?tailLines=1");
    if let Some(ticket) = ticket {
        url.push_str(&format!("&ticket={ticket}"));
    }
    match open_sse(&url, cred, None).await {
        Ok(mut sse) => {
            sse.logs(1).await;
            200
        }
        Err((status, _)) => status,
    }
}

/// Part 2a: a ticket from replica A is redeemed on replica B exactly once.
async fn tickets_are_shared(svc: &Service, token: &str) {
    let (a, b, c) = (&svc.urls[0], &svc.urls[1], &svc.urls[2]);
    // The single-replica behaviour, so a failure below is about sharing, not tickets.
    let ticket = issue_ticket(a, token).await;
    assert_eq!(stream_status(a, Cred::None, Some(&ticket)).await, 200, "control: a ticket on the replica that issued it");
    assert_eq!(stream_status(a, Cred::None, Some(&ticket)).await, 401, "control: a ticket is redeemed once");

    let ticket = issue_ticket(a, token).await;
    let first = stream_status(b, Cred::None, Some(&ticket)).await;
    let second = stream_status(c, Cred::None, Some(&ticket)).await;
    let third = stream_status(b, Cred::None, Some(&ticket)).await;
    assert_eq!(
        (first, second, third),
        (200, 401, 401),
        "a ticket issued by replica A: first use on replica B, second on C, third on B (want 200, 401, 401)"
    );
    // Two replicas redeeming one ticket at the same moment: exactly one stream opens.
    let ticket = issue_ticket(a, token).await;
    let (on_b, on_c) = tokio::join!(stream_status(b, Cred::None, Some(&ticket)), stream_status(c, Cred::None, Some(&ticket)));
    let mut both = [on_b, on_c];
    both.sort_unstable();
    assert_eq!(both, [200, 401], "one ticket redeemed concurrently on replicas B and C (B {on_b}, C {on_c})");
}

/// Part 2b: the stream-credential cookie from replica A works repeatedly on B and C.
async fn stream_credentials_are_shared(svc: &Service, token: &str) {
    let (a, b, c) = (&svc.urls[0], &svc.urls[1], &svc.urls[2]);
    let (status, headers, body) = send(http().post(format!("{a}/api/v1/stream-credential")).bearer_auth(token)).await;
    assert_eq!(status, 200, "{body}");
    let header = headers.get("set-cookie").expect("a Set-Cookie").to_str().unwrap().to_owned();
    let pair = header.split(';').next().unwrap().to_owned();
    assert!(pair.starts_with("kubelens_stream="), "{header}");
    assert_eq!(stream_status(a, Cred::Cookie(&pair), None).await, 200, "control: the cookie on the replica that issued it");
    assert_eq!(stream_status(a, Cred::Cookie(&pair), None).await, 200, "control: the cookie again on its replica");
    let uses = [
        stream_status(b, Cred::Cookie(&pair), None).await,
        stream_status(c, Cred::Cookie(&pair), None).await,
        stream_status(b, Cred::Cookie(&pair), None).await,
        stream_status(a, Cred::Cookie(&pair), None).await,
    ];
    assert_eq!(uses, [200, 200, 200, 200], "the stream credential issued by replica A used on B, C, B, A (want 200 each time)");
    // Renewal on B presenting the old cookie replaces it on every replica; sign-out on C
    // revokes the new one on every replica.
    let (status, headers, body) =
        send(http().post(format!("{b}/api/v1/stream-credential")).bearer_auth(token).header("cookie", pair.as_str())).await;
    assert_eq!(status, 200, "{body}");
    let renewed = headers.get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    assert_ne!(renewed, pair);
    assert_eq!(stream_status(c, Cred::Cookie(&pair), None).await, 401, "a cookie replaced on replica B still works on replica C");
    assert_eq!(stream_status(a, Cred::Cookie(&renewed), None).await, 200, "the cookie renewed on B, used on A");
    let (status, _, body) =
        send(http().delete(format!("{c}/api/v1/stream-credential")).bearer_auth(token).header("cookie", renewed.as_str())).await;
    assert_eq!(status, 204, "sign-out on C: {body}");
    let after = [stream_status(a, Cred::Cookie(&renewed), None).await, stream_status(b, Cred::Cookie(&renewed), None).await];
    assert_eq!(after, [401, 401], "a cookie signed out on replica C still works on A / B");
}

/// Waits (bounded) until every replica's log says it archived `pod`'s container.
/// Each replica serves the admin the details of one pod (a `details_viewed` event each);
/// every replica's `GET /api/v1/audit` then returns all three, identically.
async fn audit_is_shared(svc: &Service, admin: &str, fx: &Fixtures) {
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for base in &svc.urls {
        let (status, body) = get_json(&format!("{base}/api/v1/namespaces/{NS}/pods/{}/details", fx.follow_pod), admin).await;
        assert_eq!(status, 200, "{base}: {body}");
    }
    let query = format!("/api/v1/audit?event=details_viewed&user=admin&since={}", since.replace('+', "%2B"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: Vec<Value> = Vec::new();
    for base in &svc.urls {
        loop {
            let (status, body) = get_json(&format!("{base}{query}"), admin).await;
            assert_eq!(status, 200, "{base}: {body}");
            let events = body["events"].as_array().cloned().unwrap_or_default();
            if events.len() >= REPLICAS || Instant::now() > deadline {
                assert_eq!(events.len(), REPLICAS, "{base}: one details_viewed per replica: {body}");
                if !seen.is_empty() {
                    assert_eq!(events, seen, "{base} answers like the others");
                }
                seen = events;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(seen.iter().all(|e| e["name"] == fx.follow_pod.as_str() && e["masked"] == false), "{seen:#?}");
}

fn wait_all_captured(svc: &Service, pod: &str) {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let missing: Vec<usize> = (0..REPLICAS)
            .filter(|i| {
                !svc.replica(*i).log().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|e| {
                    e["message"] == "container log archived" && e["source"].as_str().is_some_and(|s| s.contains(&format!("/{pod}/")))
                })
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "replicas {missing:?} never archived {pod}:\n{}", svc.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The archived log of `pod` as every replica serves it, once each has at least `want` lines
/// (bounded); asserts they are identical, equal to `expected`, without a repeated line.
async fn archived_everywhere_once(svc: &Service, token: &str, pod: &str, expected: &[String]) {
    let url = |base: &str| format!("{base}/api/v1/namespaces/{NS}/pods/{pod}/logs?follow=false&tailLines=10000");
    let deadline = Instant::now() + Duration::from_secs(30);
    for base in &svc.urls {
        loop {
            let (status, body) = get_json(&url(base), token).await;
            if status == 200 && id_lines(&body).len() >= expected.len() {
                break;
            }
            assert!(Instant::now() < deadline, "{base} serves {pod}'s archived log as {status}: {body}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // Late writers (a second replica's capture) must not add anything.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut all = Vec::new();
    for base in &svc.urls {
        let (status, body) = get_json(&url(base), token).await;
        assert_eq!(status, 200, "{base}: {body}");
        all.push(id_lines(&body));
    }
    let texts: Vec<String> = all[0].iter().map(|(_, l)| l.clone()).collect();
    let distinct: BTreeSet<&String> = texts.iter().collect();
    assert_eq!(distinct.len(), texts.len(), "{pod}: {} of {} archived lines are repeats", texts.len() - distinct.len(), texts.len());
    let ids: BTreeSet<&String> = all[0].iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), all[0].len(), "{pod}: repeated ids in the archive");
    assert_eq!(texts, expected, "{pod}: the archive holds {} lines for {} written", texts.len(), expected.len());
    for (i, lines) in all.iter().enumerate().skip(1) {
        assert_eq!(lines, &all[0], "{pod}: replica {i} serves a different archived log than replica 0");
    }
    for (i, base) in svc.urls.iter().enumerate() {
        let (status, list) = get_json(&format!("{base}/api/v1/namespaces/{NS}/archived-pods"), token).await;
        assert_eq!(status, 200, "{list}");
        let item = list["items"].as_array().unwrap().iter().find(|p| p["name"] == pod).unwrap_or_else(|| panic!("replica {i}: {pod} not listed: {list}"));
        assert_eq!(item["containers"].as_array().map(Vec::len), Some(1), "replica {i}: {item}");
        assert_eq!(
            (item["containers"][0]["lines"].as_u64(), item["containers"][0]["instances"].clone()),
            (Some(expected.len() as u64), serde_json::json!([0])),
            "replica {i}: one archived instance with every line once: {item}"
        );
    }
}

/// Part 3a: a completed Job pod, captured by all three replicas, then deleted.
async fn a_completed_pod_is_archived_once_and_served_everywhere(svc: &Service, env: &TestEnv, token: &str, fx: &Fixtures) {
    wait_all_captured(svc, &fx.job_pod);
    kubectl(env, &["-n", NS, "delete", "pod", &fx.job_pod, "--wait=false"]);
    wait_gone(env, &fx.job_pod);
    archived_everywhere_once(svc, token, &fx.job_pod, &fx.job_lines).await;
}

/// Part 3b: a running pod followed through replicas A and B (their taps hold its lines) while it
/// is deleted; every replica's recorder also captures it.
async fn a_followed_pod_deleted_is_archived_once_and_served_everywhere(svc: &Service, env: &TestEnv, token: &str, fx: &Fixtures) {
    let url = |i: usize| format!("{}/api/v1/namespaces/{NS}/pods/{}/logs?tailLines=1000", svc.urls[i], fx.tap_pod);
    let mut streams = Vec::new();
    for i in [0, 1] {
        let mut sse = open_sse(&url(i), Cred::Bearer(token), None).await.unwrap_or_else(|e| panic!("replica {i}: {e:?}"));
        sse.logs(200).await;
        streams.push(sse);
    }
    let mut expected = fx.tap_lines.clone();
    expected.extend(write_lines(&fx.tap_path, &fx.tap_pod, 201..=220));
    for sse in &mut streams {
        let got: Vec<String> = sse.logs(20).await.iter().map(|e| e.data["line"].as_str().unwrap().to_owned()).collect();
        assert_eq!(got, expected[200..].to_vec());
    }
    kubectl(env, &["-n", NS, "delete", "pod", &fx.tap_pod, "--wait=false"]);
    for (i, sse) in streams.iter_mut().enumerate() {
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(e) = sse.next(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))).await {
            assert_ne!(e.event, "log", "replica {i}: a line after the ones written: {e:?}");
            last = Some(e);
        }
        let last = last.unwrap_or_else(|| panic!("replica {i}: the stream ended without a status"));
        assert_eq!((last.event.as_str(), last.data["state"].as_str()), ("status", Some("ended")), "replica {i}: {last:?}");
    }
    drop(streams);
    wait_gone(env, &fx.tap_pod);
    archived_everywhere_once(svc, token, &fx.tap_pod, &expected).await;
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success(), "kill {sig} {pid}");
}

/// Asserts the stream's final event was `status` `ended`/`shutdown`.
fn assert_shutdown_end(tracker: &Tracker) {
    let last = tracker.last_event.as_ref().unwrap_or_else(|| panic!("{}: the stream ended without any event", tracker.what));
    assert_eq!(
        (last.event.as_str(), last.data["state"].as_str(), last.data["reason"].as_str()),
        ("status", Some("ended"), Some("shutdown")),
        "{}: the last event before the replica exited: {last:?}",
        tracker.what
    );
}

/// Part 4: a pod stream and an app stream opened on replica A; SIGTERM A; resume through the
/// proxy; SIGKILL the replica they resumed on; resume again; no gap, no duplicate.
async fn streams_fail_over_without_loss(svc: &mut Service, env: &TestEnv, token: &str, fx: &Fixtures) {
    const POD_TOTAL: u64 = 400; // 40 lines/s: 10 s
    const APP_TOTAL: u64 = 200; // per pod, 2 × 20 lines/s: 10 s
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut gens = vec![loggen(env, &fx.follow_path, &fx.follow_pod, POD_TOTAL, 40)];
    gens.extend(fx.app_pods.iter().map(|(pod, path)| loggen(env, path, pod, APP_TOTAL, 20)));
    let pod_path = format!("/api/v1/namespaces/{NS}/pods/{}/logs", fx.follow_pod);
    let app_path = format!("/api/v1/namespaces/{NS}/apps/{}/logs", fx.app);
    let app_sources: Vec<String> = fx.app_pods.iter().map(|(p, _)| p.clone()).collect();
    let mut pod = Tracker::new("pod stream", std::slice::from_ref(&fx.follow_pod), POD_TOTAL);
    let mut app = Tracker::new("app stream", &app_sources, APP_TOTAL);

    // Opened on replica A (its own port).
    let a = 0;
    let mut pod_sse = open_sse(&format!("{}{pod_path}?since={since}", svc.urls[a]), Cred::Bearer(token), None).await.unwrap();
    let mut app_sse = open_sse(&format!("{}{app_path}?since={since}", svc.urls[a]), Cred::Bearer(token), None).await.unwrap();
    pod.read(&mut pod_sse, 40).await;
    app.read(&mut app_sse, 40).await;

    // SIGTERM A (taken out of rotation first, as its endpoint would be): both streams end
    // with the final status; A exits cleanly within its grace.
    svc.proxy.remove(a);
    signal(svc.replica(a).pid(), "-TERM");
    pod.drain(&mut pod_sse, Duration::from_secs(15)).await;
    app.drain(&mut app_sse, Duration::from_secs(15)).await;
    assert_shutdown_end(&pod);
    assert_shutdown_end(&app);
    let mut stopped = svc.replicas[a].take().unwrap();
    let exit = stopped.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| panic!("replica A did not exit:\n{}", stopped.log()));
    assert!(exit.success(), "replica A exited with {exit:?}:\n{}", stopped.log());
    svc.retired.push(stopped);
    eprintln!("[e2e_replicas] after SIGTERM of A: pod {} lines, app {} lines", pod.lines(), app.lines());

    // Resume both through the proxy; both on the same replica X (a connection that lands
    // elsewhere is dropped unread and the resume repeated: one more resume point).
    let resume = |tracker: &Tracker, path: &str| (format!("{}{path}", svc.proxy.url), tracker.last_id.clone());
    let (url, id) = resume(&pod, &pod_path);
    pod_sse = open_sse(&url, Cred::Bearer(token), id.as_deref()).await.unwrap_or_else(|e| panic!("pod resume: {e:?}"));
    let x = svc.proxy.last();
    let (url, id) = resume(&app, &app_path);
    let mut tries = 0;
    loop {
        app_sse = open_sse(&url, Cred::Bearer(token), id.as_deref()).await.unwrap_or_else(|e| panic!("app resume: {e:?}"));
        if svc.proxy.last() == x {
            break;
        }
        tries += 1;
        assert!(tries < 4, "the proxy never sent the app resume to replica {x}");
    }
    assert_ne!(x, a);
    pod.read(&mut pod_sse, 40).await;
    app.read(&mut app_sse, 40).await;

    // SIGKILL X mid-stream: the connections just drop. X stays in rotation: the proxy skips it
    // because it refuses connections.
    signal(svc.replica(x).pid(), "-KILL");
    pod.drain(&mut pod_sse, Duration::from_secs(15)).await;
    app.drain(&mut app_sse, Duration::from_secs(15)).await;
    let mut killed = svc.replicas[x].take().unwrap();
    assert!(killed.wait_exit(Duration::from_secs(10)).is_some(), "replica X survived SIGKILL");
    svc.retired.push(killed);
    eprintln!("[e2e_replicas] after SIGKILL of {x}: pod {} lines, app {} lines", pod.lines(), app.lines());

    let y = (1..REPLICAS).find(|i| *i != x).unwrap();
    let (url, id) = resume(&pod, &pod_path);
    pod_sse = open_sse(&url, Cred::Bearer(token), id.as_deref()).await.unwrap_or_else(|e| panic!("pod resume after SIGKILL: {e:?}"));
    assert_eq!(svc.proxy.last(), y, "the proxy skips the killed replica");
    let (url, id) = resume(&app, &app_path);
    app_sse = open_sse(&url, Cred::Bearer(token), id.as_deref()).await.unwrap_or_else(|e| panic!("app resume after SIGKILL: {e:?}"));
    assert_eq!(svc.proxy.last(), y);
    let deadline = Instant::now() + Duration::from_secs(40);
    while !pod.done() {
        assert!(Instant::now() < deadline, "pod stream: {} of {POD_TOTAL} lines", pod.lines());
        pod.read(&mut pod_sse, 50).await;
    }
    while !app.done() {
        assert!(Instant::now() < deadline, "app stream: {} of {} lines", app.lines(), 2 * APP_TOTAL);
        app.read(&mut app_sse, 50).await;
    }
    for g in &mut gens {
        let _ = g.wait();
    }
    pod.verify();
    app.verify();
    eprintln!("[e2e_replicas] failover: pod {POD_TOTAL} lines and app 2 × {APP_TOTAL} lines over 3 replicas, no gap, no duplicate");
}

// ---- the test --------------------------------------------------------------------------------

async fn replicas_as_one_service(backend: Backend) {
    let Some(env) = TestEnv::e2e() else { return };
    let Some(storage) = storage_section(backend) else { return };
    let _serial = SERIAL.lock().await;
    let started = Instant::now();

    // Three replicas on the one store, started at once (as a rollout would), while the
    // fixtures are created.
    let starts: Vec<_> = (0..REPLICAS)
        .map(|_| {
            let storage = storage.clone();
            tokio::task::spawn_blocking(move || start_replica(env, &storage))
        })
        .collect();
    let fixtures = tokio::task::spawn_blocking(move || create_fixtures(env));
    let token = env.password_token(&env.web_client_id, "viewer").await;
    let mut replicas = Vec::new();
    for s in starts {
        replicas.push(s.await.unwrap());
    }
    let fx = fixtures.await.unwrap();
    eprintln!("[e2e_replicas] {backend:?}: 3 replicas ready and fixtures created in {:.1?}", started.elapsed());
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let addrs: Vec<SocketAddr> = urls.iter().map(|u| u.strip_prefix("http://").unwrap().parse().unwrap()).collect();
    let proxy = Proxy::start(&addrs).await;
    let mut svc = Service { replicas: replicas.into_iter().map(Some).collect(), urls, proxy, retired: Vec::new() };

    // Every replica's discovery cache has the fixtures.
    let deadline = Instant::now() + Duration::from_secs(30);
    for base in &svc.urls {
        loop {
            let (s1, _) = get_json(&format!("{base}/api/v1/namespaces/{NS}/pods/{}", fx.follow_pod), &token).await;
            let (s2, app) = get_json(&format!("{base}/api/v1/namespaces/{NS}/apps/{}", fx.app), &token).await;
            if s1 == 200 && s2 == 200 && app["pods"].as_array().is_some_and(|p| p.len() == 2) {
                break;
            }
            assert!(Instant::now() < deadline, "{base} does not see the fixtures ({s1}, {s2}: {app})");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let mut parts = Parts::default();
    parts.run("every request type through the proxy", every_request_type_through_the_proxy(&svc, &token, &fx)).await;
    parts.run("a ticket from replica A is redeemed once on replica B", tickets_are_shared(&svc, &token)).await;
    parts.run("the stream credential from replica A works on B and C", stream_credentials_are_shared(&svc, &token)).await;
    let admin = env.password_token(&env.web_client_id, "admin").await;
    parts.run("audit events of every replica are queried on any replica", audit_is_shared(&svc, &admin, &fx)).await;
    parts
        .run(
            "a completed pod is archived once and served by every replica",
            a_completed_pod_is_archived_once_and_served_everywhere(&svc, env, &token, &fx),
        )
        .await;
    parts
        .run(
            "a followed pod deleted is archived once and served by every replica",
            a_followed_pod_deleted_is_archived_once_and_served_everywhere(&svc, env, &token, &fx),
        )
        .await;
    parts.run("pod and app streams fail over without loss", streams_fail_over_without_loss(&mut svc, env, &token, &fx)).await;

    // What the replicas warned about (diagnostics only).
    let mut warnings: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for log in svc.replicas.iter().flatten().chain(svc.retired.iter()).map(Kubelens::log) {
        for (line, e) in log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok().map(|e| (l, e))) {
            if matches!(e["level"].as_str(), Some("WARN" | "ERROR")) {
                let key = format!("{} {}", e["level"].as_str().unwrap(), e["message"].as_str().unwrap_or("?"));
                warnings.entry(key).or_insert_with(|| (0, line.chars().take(400).collect())).0 += 1;
            }
        }
    }
    for (message, (n, example)) in &warnings {
        eprintln!("[e2e_replicas] replicas logged {n} × {message}; e.g. {example}");
    }
    cleanup(env, &fx);
    eprintln!("[e2e_replicas] {backend:?}: {:.1?} in all", started.elapsed());
    for (name, took, ok) in &parts.timings {
        eprintln!("[e2e_replicas]   {} {name}: {took:.1?}", if *ok { "ok  " } else { "FAIL" });
    }
    assert!(parts.failed.is_empty(), "{backend:?}: {} part(s) failed:\n{}", parts.failed.len(), parts.failed.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_postgres_behave_as_one_service() {
    replicas_as_one_service(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_redis_behave_as_one_service() {
    replicas_as_one_service(Backend::Redis).await;
}
