//! End-to-end retention of terminated pods' logs, against the real testenv (kube-apiserver +
//! KWOK kubelet) and every storage backend.
//!
//! Run (PostgreSQL/Redis from scripts/storage/run.sh, the cluster from testenv/run):
//!
//! ```sh
//! scripts/storage/run.sh -- testenv/run --no-keycloak -- cargo test -p kubelens-salvo --test e2e_retention
//! ```
//!
//! Every replica is the real salvo service on a loopback port with the backend's
//! ServiceAccount token, its own retention recorder fed by its own pod watches, and tokens
//! from a local test issuer (token validation has its own suite). Tests create their own
//! pods with unique names in `team-a`, so they run in parallel. Without the testenv or the
//! PostgreSQL/Redis URLs the tests fail, unless `KUBELENS_SKIP_E2E=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubelens_core::Config;
use kubelens_core::auth::testing::TestIssuer;
use kubelens_core::config::{PostgresConfig, RedisConfig, Secret, SqliteConfig, StorageBackend};
use kubelens_core::storage::{LineQuery, LogArchive, SourceInfo, StoreLimits};
use kubelens_salvo::AppState;
use kubelens_salvo::archive::Retention;
use kubelens_salvo::logs::LogService;
use kubelens_testenv::TestEnv;
use salvo::conn::tcp::TcpAcceptor;
use serde_json::Value;

const NS: &str = "team-a";

// ---- backends ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Sqlite,
    Postgres,
    Redis,
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{:x}{:x}-{}", std::process::id() % 4096, nanos % 0xfffff, N.fetch_add(1, Ordering::SeqCst))
}

fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if TestEnv::skip_e2e() => None,
        _ => panic!("{var} is not set: run through scripts/storage/run.sh (or set KUBELENS_SKIP_E2E=1)"),
    }
}

/// Opens handles on one shared archive: each `open` is a new connection (a new replica or a
/// restarted process), except for memory, which can only be shared in-process.
struct Stores {
    backend: Backend,
    memory: Option<Arc<dyn LogArchive>>,
    sqlite: PathBuf,
    url: String,
    scope: String,
    _dir: tempfile::TempDir,
}

impl Stores {
    fn new(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let url = match backend {
            Backend::Postgres => required("KUBELENS_TEST_POSTGRES_URL")?,
            Backend::Redis => required("KUBELENS_TEST_REDIS_URL")?,
            _ => String::new(),
        };
        let memory: Option<Arc<dyn LogArchive>> = (backend == Backend::Memory)
            .then(|| Arc::new(kubelens_core::storage::memory::MemoryStore::new(StoreLimits::default())) as Arc<dyn LogArchive>);
        Some(Self {
            backend,
            memory,
            sqlite: dir.path().join("kubelens.db"),
            url,
            scope: unique("ret").replace('-', "_"),
            _dir: dir,
        })
    }

    async fn open(&self) -> Arc<dyn LogArchive> {
        let limits = StoreLimits::default();
        match self.backend {
            Backend::Memory => self.memory.clone().unwrap(),
            Backend::Sqlite => {
                let config = SqliteConfig { path: self.sqlite.display().to_string(), ..SqliteConfig::default() };
                Arc::new(kubelens_storage::sqlite::SqliteStore::open(&config, limits).await.unwrap())
            }
            Backend::Postgres => {
                let config = PostgresConfig { url: Secret::new(self.url.clone()), max_connections: 4, schema: Some(self.scope.clone()) };
                Arc::new(kubelens_storage::postgres::PostgresStore::open(&config, limits).await.unwrap())
            }
            Backend::Redis => {
                let config = RedisConfig { url: Secret::new(self.url.clone()), key_prefix: Some(format!("{}:", self.scope)) };
                Arc::new(kubelens_storage::redis::RedisStore::open(&config, limits).await.unwrap())
            }
        }
    }

    /// A second live replica on the same storage. sqlite is single-replica by design (one
    /// embedded file), memory cannot be shared across processes: both share one handle.
    async fn open_replica(&self, first: &Arc<dyn LogArchive>) -> Arc<dyn LogArchive> {
        match self.backend {
            Backend::Memory | Backend::Sqlite => Arc::clone(first),
            Backend::Postgres | Backend::Redis => self.open().await,
        }
    }
}

// ---- replicas ------------------------------------------------------------------------------

struct Replica {
    base: String,
    state: AppState,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn replica(env: &TestEnv, issuer: &TestIssuer, archive: Arc<dyn LogArchive>, ttl: Duration) -> Replica {
    let filter = std::env::var("KUBELENS_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_test_writer().try_init();
    let mut config = Config::default();
    config.namespaces.allowed = vec!["team-a".into(), "team-b".into()];
    config.logs.terminated_log_ttl = ttl;
    config.logs.keepalive_interval = Duration::from_secs(2);
    config.filters.exclude_labels = [("kubelens.io/hide".to_owned(), "true".to_owned())].into();
    config.auth = issuer.config();
    config.storage.backend = StorageBackend::Memory;
    let state = AppState::new(config, kubelens_core::Readiness::new()).with_auth(issuer.authenticator());
    let cluster = support::sa_cluster(env, &state.policy).await;
    let logs = Arc::new(LogService::new(&state.config, cluster.clone(), Arc::clone(&state.policy)));
    // As the binary wires it: one client (the cluster's) for the watches and the log reads.
    let client = cluster.client();
    let mut state = state.with_cluster(cluster);
    state.logs = Some(Arc::clone(&logs));
    state.retention = Some(Retention::start_with_watches(&state, archive, client, logs.upstream.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let acceptor = TcpAcceptor::try_from(listener).unwrap();
    let service = kubelens_salvo::service(state.clone());
    let server = tokio::spawn(async move { salvo::Server::new(acceptor).serve(service).await });
    Replica { base: format!("http://{addr}/api/v1"), state, server }
}

impl Replica {
    fn metrics(&self) -> &kubelens_core::Metrics {
        &self.state.metrics
    }
}

// ---- HTTP ----------------------------------------------------------------------------------

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// One-shot JSON logs: (status, lines as (id, text)).
async fn one_shot(r: &Replica, token: &str, pod: &str, extra: &str) -> (u16, Vec<(String, String)>) {
    let url = format!("{}/namespaces/{NS}/pods/{pod}/logs?follow=false&tailLines=10000{extra}", r.base);
    let res = http().get(url).bearer_auth(token).header("accept", "application/json").send().await.unwrap();
    let status = res.status().as_u16();
    if status != 200 {
        return (status, Vec::new());
    }
    let body: Value = res.json().await.unwrap();
    let lines = body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["id"].as_str().unwrap().to_owned(), l["line"].as_str().unwrap().to_owned()))
        .collect();
    (status, lines)
}

/// A parsed SSE event.
#[derive(Debug, Clone)]
struct Event {
    event: String,
    id: Option<String>,
    data: Value,
}

fn parse_events(buf: &mut String) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if !data.is_empty() {
            out.push(Event { event, id, data: serde_json::from_str(&data).unwrap_or(Value::Null) });
        }
    }
    out
}

/// A whole (finite) SSE response.
async fn sse_all(r: &Replica, token: &str, pod: &str, last_event_id: Option<&str>) -> (u16, Vec<Event>) {
    let mut req = http()
        .get(format!("{}/namespaces/{NS}/pods/{pod}/logs?tailLines=10000", r.base))
        .bearer_auth(token)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let mut text = res.text().await.unwrap();
    (status, parse_events(&mut text))
}

// ---- cluster fixtures ----------------------------------------------------------------------

fn kubectl(env: &TestEnv, args: &[&str]) -> String {
    env.kubectl(args).unwrap_or_else(|e| panic!("kubectl {args:?}: {e:#}"))
}

fn write_lines(path: &Path, texts: &[String]) {
    let now = chrono::Utc::now();
    let mut body = String::new();
    for (i, t) in texts.iter().enumerate() {
        // Distinct, increasing timestamps (1 ms apart), like a real runtime's.
        body.push_str(&kubelens_testenv::cri_line(now + chrono::Duration::milliseconds(i as i64), "stdout", t));
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(body.as_bytes()).unwrap();
}

fn texts(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} line {i}")).collect()
}

/// Creates a pod on the KWOK node (optionally owned by a Job, which KWOK completes).
fn create_pod(env: &TestEnv, name: &str, job: Option<(&str, &str)>) -> String {
    let mut meta = serde_json::json!({"name": name, "namespace": NS, "labels": {"e2e": "retention"}});
    if let Some((job, uid)) = job {
        meta["ownerReferences"] =
            serde_json::json!([{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": uid, "controller": true}]);
        meta["labels"]["job-name"] = Value::from(job);
    }
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {
            "nodeName": env.node_name,
            "restartPolicy": if job.is_some() { "Never" } else { "Always" },
            "containers": [{"name": "app", "image": "registry.invalid/e2e:1"}],
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
        }
    });
    env.kubectl_apply(&pod.to_string()).unwrap();
    kubectl(env, &["-n", NS, "get", "pod", name, "-o", "jsonpath={.metadata.uid}"])
}

fn create_job(env: &TestEnv, name: &str) -> String {
    let job = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "registry.invalid/e2e:1"}]}}}
    });
    env.kubectl_apply(&job.to_string()).unwrap();
    kubectl(env, &["-n", NS, "get", "job", name, "-o", "jsonpath={.metadata.uid}"])
}

async fn wait_phase(env: &TestEnv, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let phase = env.kubectl(&["-n", NS, "get", "pod", name, "-o", "jsonpath={.status.phase}"]).unwrap_or_default();
        if phase == want {
            return;
        }
        assert!(Instant::now() < deadline, "pod {name} not {want} (phase {phase:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_gone(env: &TestEnv, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.kubectl(&["-n", NS, "get", "pod", name, "--ignore-not-found", "-o", "name"]).unwrap_or_default().trim() != "" {
        assert!(Instant::now() < deadline, "pod {name} not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sources of pod `uid`, polled until `done` holds (bounded).
async fn wait_sources(archive: &dyn LogArchive, uid: &str, what: &str, done: impl Fn(&[SourceInfo]) -> bool) -> Vec<SourceInfo> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sources: Vec<SourceInfo> =
            archive.list_sources(NS).await.unwrap().into_iter().filter(|s| s.key.pod_uid == uid).collect();
        if done(&sources) {
            return sources;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {sources:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn archived_texts(archive: &dyn LogArchive, source: &SourceInfo) -> Vec<String> {
    let lines = archive.read(&source.key, LineQuery::after(None, 10_000)).await.unwrap();
    lines.into_iter().map(|l| String::from_utf8(l.line).unwrap()).collect()
}

fn text_of(lines: &[(String, String)]) -> Vec<String> {
    lines.iter().map(|(_, t)| t.clone()).collect()
}

// ---- scenarios ------------------------------------------------------------------------------

/// A Job's pod completes and is deleted: both replicas capture it (no duplicate line), any
/// replica serves it with exact resume, a restarted instance still has it, and it is gone
/// after the TTL.
async fn job_pod_lifecycle(backend: Backend) {
    let Some(env) = TestEnv::e2e() else { return };
    let Some(stores) = Stores::new(backend) else { return };
    let issuer = TestIssuer::new();
    let token = issuer.viewer_token();
    let ttl = Duration::from_secs(4);
    let archive_a = stores.open().await;
    let archive_b = stores.open_replica(&archive_a).await;
    let a = replica(env, &issuer, Arc::clone(&archive_a), ttl).await;
    let b = replica(env, &issuer, Arc::clone(&archive_b), ttl).await;

    let name = unique("job");
    let job_uid = create_job(env, &name);
    let pod = format!("{name}-x1");
    let path = env.ensure_pod_logs(NS, &pod, &["app"]).unwrap().remove(0);
    let lines = texts(&pod, 0..30);
    write_lines(&path, &lines);
    let uid = create_pod(env, &pod, Some((&name, &job_uid)));
    wait_phase(env, &pod, "Succeeded").await;

    // Both replicas see it complete and capture it; the archive holds each line once.
    let sources = wait_sources(archive_a.as_ref(), &uid, "capture", |s| s.len() == 1 && s[0].lines == 30).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.metrics().archive_captured.get() + b.metrics().archive_captured.get() < 2 {
        assert!(Instant::now() < deadline, "both replicas should capture the completed pod");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(archived_texts(archive_b.as_ref(), &sources[0]).await, lines, "two replicas, no duplicate, in order");
    let live = one_shot(&a, &token, &pod, "").await;
    assert_eq!(text_of(&live.1), lines, "served live while the pod exists");

    kubectl(env, &["-n", NS, "delete", "pod", &pod, "--wait=false"]);
    wait_gone(env, &pod).await;
    wait_sources(archive_a.as_ref(), &uid, "termination mark", |s| s.iter().all(|s| s.terminated_at_ms.is_some())).await;

    // Any replica serves it from the archive, with the live ids.
    let (status_a, from_a) = one_shot(&a, &token, &pod, "").await;
    let (status_b, from_b) = one_shot(&b, &token, &pod, "").await;
    assert_eq!((status_a, status_b), (200, 200));
    assert_eq!(from_a, live.1, "archived ids and lines equal the live ones");
    assert_eq!(from_b, from_a);
    // SSE: archived marker, exact resume after line 9, final `ended`.
    let (status, events) = sse_all(&b, &token, &pod, Some(&from_a[9].0)).await;
    assert_eq!(status, 200);
    assert_eq!(events[0].event, "status");
    assert_eq!(events[0].data["state"], "archived");
    let resumed: Vec<String> = events.iter().filter(|e| e.event == "log").map(|e| e.data["line"].as_str().unwrap().to_owned()).collect();
    assert_eq!(resumed, lines[10..].to_vec(), "resume from the archive: no gap, no duplicate");
    assert_eq!(events.iter().find(|e| e.event == "log").unwrap().id.as_deref(), Some(from_a[10].0.as_str()));
    assert_eq!(events.last().unwrap().data["state"], "ended");
    // The namespace's archived pods list it as terminated.
    let list: Value = http()
        .get(format!("{}/namespaces/{NS}/archived-pods", a.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let item = list["items"].as_array().unwrap().iter().find(|p| p["name"] == pod.as_str()).unwrap().clone();
    assert_eq!((item["terminated"].clone(), item["archived"].clone(), item["appKind"].clone()), (Value::Bool(true), Value::Bool(true), Value::from("Job")));

    // Restart: a new process on the same storage (same sqlite file, same database) serves it.
    if backend != Backend::Memory {
        drop(a);
        let restarted = replica(env, &issuer, stores.open().await, ttl).await;
        assert_eq!(one_shot(&restarted, &token, &pod, "").await.1, from_b, "nothing archived is lost by a restart");
    }

    // After the TTL it is gone everywhere (404, not listed).
    let deadline = Instant::now() + ttl + Duration::from_secs(15);
    loop {
        let (status, _) = one_shot(&b, &token, &pod, "").await;
        let listed = archive_b.list_sources(NS).await.unwrap().iter().any(|s| s.key.pod_uid == uid);
        if status == 404 && !listed {
            break;
        }
        assert!(Instant::now() < deadline, "archived pod still served after the TTL (status {status}, listed {listed})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = env.kubectl(&["-n", NS, "delete", "job", &name, "--wait=false"]);
}

/// A pod force-deleted while a viewer follows it keeps the tail the viewer saw; a
/// crash-looping container's previous instances are kept.
async fn followed_and_crash_looping(backend: Backend) {
    let Some(env) = TestEnv::e2e() else { return };
    let Some(stores) = Stores::new(backend) else { return };
    let issuer = TestIssuer::new();
    let token = issuer.viewer_token();
    let archive = stores.open().await;
    let a = replica(env, &issuer, Arc::clone(&archive), Duration::from_secs(120)).await;
    let b = replica(env, &issuer, stores.open_replica(&archive).await, Duration::from_secs(120)).await;

    // -- followed, then force-deleted (its log is gone with it) --
    let pod = unique("tail");
    let path = env.ensure_pod_logs(NS, &pod, &["app"]).unwrap().remove(0);
    write_lines(&path, &texts(&pod, 0..5));
    let uid = create_pod(env, &pod, None);
    wait_phase(env, &pod, "Running").await;
    env.wait_logs_mapped(NS, &pod, "app", Duration::from_secs(60)).unwrap();
    let mut res = http()
        .get(format!("{}/namespaces/{NS}/pods/{pod}/logs?tailLines=100", a.base))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let mut buf = String::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut appended = false;
    while seen.len() < 10 {
        let chunk = tokio::time::timeout_at(deadline.into(), res.chunk()).await.expect("follow stream stalled").unwrap().unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        for e in parse_events(&mut buf) {
            if e.event == "log" {
                seen.push(e.data["line"].as_str().unwrap().to_owned());
            }
        }
        if seen.len() >= 5 && !appended {
            write_lines(&path, &texts(&pod, 5..10));
            appended = true;
        }
    }
    assert_eq!(seen, texts(&pod, 0..10));
    kubectl(env, &["-n", NS, "delete", "pod", &pod, "--grace-period=0", "--force", "--wait=false"]);
    let _ = env.kubectl(&["-n", NS, "delete", "logs.kwok.x-k8s.io", &pod, "--wait=false"]);
    wait_gone(env, &pod).await;
    wait_sources(archive.as_ref(), &uid, "tap write", |s| s.len() == 1 && s[0].lines == 10 && s[0].terminated_at_ms.is_some()).await;
    drop(res);
    let (status, tail) = one_shot(&b, &token, &pod, "").await;
    assert_eq!(status, 200);
    assert_eq!(text_of(&tail), texts(&pod, 0..10), "the followed tail survives a force delete, on another replica");

    // -- crash loop: two restarts, each previous instance archived --
    let pod = unique("crash");
    let path = env.ensure_pod_logs(NS, &pod, &["app"]).unwrap().remove(0);
    let previous = env.previous_log_path(NS, &pod, "app");
    write_lines(&path, &texts("instance-0", 0..4));
    let uid = create_pod(env, &pod, None);
    wait_phase(env, &pod, "Running").await;
    env.wait_logs_mapped(NS, &pod, "app", Duration::from_secs(60)).unwrap();
    for restart in 1..=2u32 {
        std::fs::rename(&path, &previous).unwrap();
        write_lines(&path, &texts(&format!("instance-{restart}"), 0..4));
        let status: Value = serde_json::from_str(&kubectl(env, &["-n", NS, "get", "pod", &pod, "-o", "json"])).unwrap();
        let mut cs = status["status"]["containerStatuses"].clone();
        for c in cs.as_array_mut().unwrap() {
            c["restartCount"] = Value::from(restart);
            c["lastState"] = serde_json::json!({"terminated": {"exitCode": 2, "reason": "Error"}});
        }
        let patch = serde_json::json!({"status": {"containerStatuses": cs}}).to_string();
        kubectl(env, &["-n", NS, "patch", "pod", &pod, "--subresource=status", "--type=merge", "-p", &patch]);
        let instance = restart - 1;
        let sources = wait_sources(archive.as_ref(), &uid, "previous instance capture", |s| {
            s.iter().any(|s| s.key.instance == instance && s.lines == 4)
        })
        .await;
        let source = sources.iter().find(|s| s.key.instance == instance).unwrap();
        assert_eq!(archived_texts(archive.as_ref(), source).await, texts(&format!("instance-{instance}"), 0..4));
    }
    kubectl(env, &["-n", NS, "delete", "pod", &pod, "--wait=false"]);
    wait_gone(env, &pod).await;
    // Let in-flight captures (the current instance, seen terminating) finish first.
    let deadline = Instant::now() + Duration::from_secs(30);
    for r in [&a, &b] {
        let recorder = &r.state.retention.as_ref().unwrap().recorder;
        while recorder.in_flight() > 0 {
            assert!(Instant::now() < deadline, "captures did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let sources = wait_sources(archive.as_ref(), &uid, "marks", |s| s.iter().all(|s| s.terminated_at_ms.is_some())).await;
    let latest = sources.iter().map(|s| s.key.instance).max().unwrap();
    // The current instance (2) is captured when its deletion is seen in time; either way the
    // newest archived instance is served by default and the one before it with previous=true.
    let (_, current) = one_shot(&b, &token, &pod, "").await;
    assert_eq!(text_of(&current), texts(&format!("instance-{latest}"), 0..4));
    let (_, prev) = one_shot(&b, &token, &pod, "&previous=true").await;
    assert_eq!(text_of(&prev), texts(&format!("instance-{}", latest - 1), 0..4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_job_pod_lifecycle() {
    job_pod_lifecycle(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_job_pod_lifecycle() {
    job_pod_lifecycle(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_job_pod_lifecycle() {
    job_pod_lifecycle(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_job_pod_lifecycle() {
    job_pod_lifecycle(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_followed_and_crash_looping() {
    followed_and_crash_looping(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_followed_and_crash_looping() {
    followed_and_crash_looping(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_followed_and_crash_looping() {
    followed_and_crash_looping(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_followed_and_crash_looping() {
    followed_and_crash_looping(Backend::Redis).await;
}

/// A pod the policy hides is never archived, so it cannot be read after it is gone; its
/// visible sibling is archived by the same replica at the same time (so the test can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_pods_are_never_archived_or_served() {
    let Some(env) = TestEnv::e2e() else { return };
    let issuer = TestIssuer::new();
    let token = issuer.viewer_token();
    let archive: Arc<dyn LogArchive> = Arc::new(kubelens_core::storage::memory::MemoryStore::new(StoreLimits::default()));
    let a = replica(env, &issuer, Arc::clone(&archive), Duration::from_secs(120)).await;
    let job = unique("hidejob");
    let job_uid = create_job(env, &job);
    let mut uids = Vec::new();
    for (suffix, hidden) in [("seen", false), ("hidden", true)] {
        let pod = format!("{job}-{suffix}");
        let path = env.ensure_pod_logs(NS, &pod, &["app"]).unwrap().remove(0);
        write_lines(&path, &texts(&pod, 0..5));
        let mut labels = serde_json::json!({"e2e": "retention", "job-name": job});
        if hidden {
            labels["kubelens.io/hide"] = Value::from("true");
        }
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": NS, "labels": labels,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": job_uid, "controller": true}]},
            "spec": {"nodeName": env.node_name, "restartPolicy": "Never",
                     "containers": [{"name": "app", "image": "registry.invalid/e2e:1"}],
                     "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]}
        });
        env.kubectl_apply(&manifest.to_string()).unwrap();
        uids.push((pod.clone(), kubectl(env, &["-n", NS, "get", "pod", &pod, "-o", "jsonpath={.metadata.uid}"])));
        wait_phase(env, &pod, "Succeeded").await;
    }
    let (seen, seen_uid) = &uids[0];
    let (hidden, hidden_uid) = &uids[1];
    wait_sources(archive.as_ref(), seen_uid, "the visible pod's capture", |s| s.len() == 1 && s[0].lines == 5).await;
    // Both completed before the wait above; give the hidden one two more seconds to be
    // (wrongly) captured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hidden_sources: Vec<SourceInfo> =
        archive.list_sources(NS).await.unwrap().into_iter().filter(|s| &s.key.pod_uid == hidden_uid).collect();
    assert!(hidden_sources.is_empty(), "a hidden pod was archived: {hidden_sources:?}");
    for pod in [seen, hidden] {
        kubectl(env, &["-n", NS, "delete", "pod", pod, "--wait=false"]);
        wait_gone(env, pod).await;
    }
    assert_eq!(one_shot(&a, &token, seen, "").await.0, 200, "the visible pod is served from the archive");
    assert_eq!(one_shot(&a, &token, hidden, "").await.0, 404, "the hidden pod is not");
}

/// Issue 13: the retention watch used a client whose socket read timeout was
/// `kubernetes.request_timeout`, so a quiet watch failed every timeout period, re-listed and
/// backed off (a pod terminating in the gap was not captured). Built as the binary builds it
/// (`client_config` + `build_client`), a watch of a quiet namespace stays up for many request
/// timeouts without an error or a re-list, and still sees the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_retention_watch_stays_up_without_errors() {
    use futures::StreamExt;
    use kubelens_core::retention::PodSignal;
    let Some(env) = TestEnv::e2e() else { return };
    let ns = unique("quiet");
    kubectl(env, &["create", "namespace", &ns]);
    // No controller-manager in testenv: the ServiceAccount admission needs `default` to exist.
    kubectl(env, &["-n", &ns, "create", "serviceaccount", "default"]);
    let settings = kubelens_core::config::KubernetesConfig {
        kubeconfig: Some(env.kubeconfig.display().to_string()),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let (kube_config, _) = kubelens_core::kubeclient::client_config(&settings).await.unwrap();
    let client = kubelens_core::cluster::build_client(kube_config, &settings, Default::default()).unwrap();
    let metrics = kubelens_core::Metrics::default();
    let mut signals = Box::pin(kubelens_core::retention::watch::pod_signals(client, &ns, |_| true, metrics.clone()));
    let first = tokio::time::timeout(Duration::from_secs(30), signals.next()).await.unwrap().unwrap();
    assert!(matches!(first, PodSignal::Listed { .. }), "the initial list: {first:?}");
    // Quiet for 12 request timeouts: a read timeout would have failed the watch (counted) and
    // re-listed (a second `Listed`).
    let quiet = tokio::time::timeout(Duration::from_secs(24), signals.next()).await;
    assert!(quiet.is_err(), "a quiet watch produced {quiet:?}");
    assert_eq!(metrics.retention_watch_errors.get(), 0, "watch errors while quiet");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "after-quiet", "namespace": ns},
        "spec": {"nodeName": env.node_name, "containers": [{"name": "app", "image": "registry.invalid/e2e:1"}],
                 "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]}
    });
    env.kubectl_apply(&pod.to_string()).unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match signals.next().await {
                Some(PodSignal::Observed(p)) if p.name == "after-quiet" => return,
                Some(_) => {}
                None => panic!("the watch stream ended"),
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the watch missed a pod created after the quiet period");
    let _ = env.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
