#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Archive reads under the current policy (issue 14, "Policy bypasses" 2, 3, 6, 7): the real
//! handlers over an in-memory cluster and the in-memory archive. Several servers share one
//! archive with different filters, the way a config change (or a second replica) sees it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubelens_core::Config;
use kubelens_core::auth::testing::TestIssuer;
use kubelens_core::cluster::testing::{FakeCluster, FakeObjects};
use kubelens_core::readiness::Readiness;
use kubelens_core::retention::{ArchiveRecorder, LogOpener, RecorderConfig};
use kubelens_core::storage::memory::MemoryStore;
use kubelens_core::storage::{
    AppendOutcome, ArchivedLine, LineQuery, LogArchive, PodMeta, SourceInfo, SourceKey, StoreFuture, StoreLimits,
};
use kubelens_salvo::AppState;
use kubelens_salvo::archive::Retention;
use kubelens_salvo::logs::LogService;
use salvo::http::StatusCode;
use salvo::test::{ResponseExt, TestClient};
use serde_json::Value;

/// The in-memory archive, counting `list_sources` calls (the query every archive read makes).
#[derive(Debug)]
struct CountingArchive {
    inner: MemoryStore,
    lists: AtomicUsize,
}

impl LogArchive for CountingArchive {
    fn append<'a>(&'a self, source: &'a SourceKey, meta: &'a PodMeta, lines: &'a [ArchivedLine]) -> StoreFuture<'a, AppendOutcome> {
        self.inner.append(source, meta, lines)
    }
    fn read<'a>(&'a self, source: &'a SourceKey, query: LineQuery) -> StoreFuture<'a, Vec<ArchivedLine>> {
        self.inner.read(source, query)
    }
    fn list_sources<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, Vec<SourceInfo>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list_sources(namespace)
    }
    fn mark_terminated<'a>(&'a self, source: &'a SourceKey, at: i64, ttl: Duration) -> StoreFuture<'a, bool> {
        self.inner.mark_terminated(source, at, ttl)
    }
    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        self.inner.purge_expired()
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn meta(ns: &str, name: &str, pod_labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        uid: Some(format!("uid-{name}")),
        labels: Some(labels(pod_labels)),
        ..ObjectMeta::default()
    }
}

fn objects(with_web: bool) -> FakeObjects {
    let namespace = |name: &str, l: &[(&str, &str)]| Namespace {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels(l)), ..ObjectMeta::default() },
        ..Namespace::default()
    };
    let pod = |name: &str, l: &[(&str, &str)]| Pod {
        metadata: meta("team-a", name, l),
        spec: Some(PodSpec { containers: vec![Container { name: "app".into(), ..Container::default() }], ..PodSpec::default() }),
        status: None,
    };
    FakeObjects {
        namespaces: vec![namespace("team-a", &[]), namespace("team-b", &[("kubelens.io/hide", "true")])],
        deployments: if with_web { vec![Deployment { metadata: meta("team-a", "web", &[]), ..Default::default() }] } else { vec![] },
        pods: vec![pod("hidden-canary", &[("kubelens.io/hide", "true")]), pod("live", &[])],
        ..FakeObjects::default()
    }
}

const T0: i64 = 1_769_767_200_000_000_000;

/// What the archive holds before any server starts (captured under an earlier config).
async fn fill(archive: &dyn LogArchive) {
    let source = |ns: &str, pod: &str| SourceKey {
        namespace: ns.into(),
        pod: pod.into(),
        pod_uid: format!("old-{pod}"),
        container: "app".into(),
        instance: 0,
    };
    let lines: Vec<ArchivedLine> = ["a secret", "b public"]
        .iter()
        .enumerate()
        .map(|(i, t)| ArchivedLine { position: i as u64, timestamp_ns: T0 + i as i64, line: t.as_bytes().to_vec(), truncated: false })
        .collect();
    let recorded = |pod_labels: &[(&str, &str)]| PodMeta {
        app_kind: Some("Deployment".into()),
        app_name: Some("web".into()),
        labels: Some(labels(pod_labels)),
        app_labels: Some(labels(&[("tier", "front")])),
        ..PodMeta::default()
    };
    // A deleted pod of app `web`, recorded with its labels.
    archive.append(&source("team-a", "gone-web-1"), &recorded(&[("team", "ops")]), &lines).await.unwrap();
    // An older instance of a pod that still exists and is hidden now.
    archive.append(&source("team-a", "hidden-canary"), &recorded(&[]), &lines).await.unwrap();
    // Archived before labels were recorded.
    archive.append(&source("team-a", "gone-old"), &PodMeta::default(), &lines).await.unwrap();
    // A pod of a namespace that is hidden by its labels.
    archive.append(&source("team-b", "gone-b"), &recorded(&[]), &lines).await.unwrap();
}

fn issuer() -> &'static TestIssuer {
    static ISSUER: std::sync::OnceLock<TestIssuer> = std::sync::OnceLock::new();
    ISSUER.get_or_init(TestIssuer::new)
}

/// A server with `filters` (YAML) over `archive`; the cluster holds [`objects`].
fn server(filters: &str, archive: Arc<dyn LogArchive>, with_web: bool) -> (salvo::Service, FakeCluster) {
    let text = format!(
        "auth:\n  keycloak_url: http://127.0.0.1:1\n  realm: kubelens\n  client_id: kubelens\n  allowed_groups: [k8s-logs-access]\n\
         namespaces:\n  allowed: [team-a, team-b]\nlogs:\n  keepalive_interval: 1s\nfilters:\n{filters}"
    );
    let (mut config, _) = Config::load(&text, |_| None).unwrap();
    config.auth = issuer().config();
    let mut state = AppState::new(config, Readiness::new()).with_auth(issuer().authenticator());
    let fake = FakeCluster::new(&state.policy, objects(with_web));
    let logs = LogService::new(&state.config, fake.cluster(), Arc::clone(&state.policy));
    state.logs = Some(Arc::new(logs));
    let opener: LogOpener = Arc::new(|_, _| futures::stream::empty().boxed());
    let recorder = ArchiveRecorder::new(archive, opener, RecorderConfig::from_logs(&state.config.logs), state.metrics.clone());
    state.retention = Some(Retention::new(recorder));
    let state = state.with_cluster(fake.cluster());
    (kubelens_salvo::service(state), fake)
}

use futures::StreamExt;

async fn get(service: &salvo::Service, path: &str, accept: &str) -> (StatusCode, String) {
    let request = TestClient::get(format!("http://127.0.0.1{path}")).bearer_auth(issuer().viewer_token()).add_header("accept", accept, true);
    let mut res = tokio::time::timeout(Duration::from_secs(10), request.send(service)).await.expect("response");
    let status = res.status_code.unwrap_or(StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(10), res.take_string()).await.expect("body").unwrap();
    (status, body)
}

async fn status(service: &salvo::Service, path: &str) -> StatusCode {
    get(service, path, "application/json").await.0
}

fn archived_names(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap();
    v["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect()
}

const HIDE: &str = "  exclude_labels:\n    kubelens.io/hide: 'true'\n";
const LOGS: &str = "/api/v1/namespaces/team-a/pods";

/// 14.2: archive reads apply today's filters to what was recorded at capture.
#[tokio::test]
async fn archive_reads_apply_the_current_filters() {
    let archive: Arc<dyn LogArchive> = Arc::new(MemoryStore::new(StoreLimits::default()));
    fill(archive.as_ref()).await;
    let (before, _) = server(HIDE, Arc::clone(&archive), true);
    assert_eq!(status(&before, &format!("{LOGS}/gone-web-1/logs?follow=false")).await, StatusCode::OK, "served under the old filters");
    for (filters, why) in [
        (format!("{HIDE}  pods:\n    exclude: ['^gone-web']\n"), "filters.pods.exclude"),
        (format!("{HIDE}  apps:\n    exclude: ['^web$']\n"), "filters.apps.exclude (app gone from the cache: recorded app)"),
        ("  exclude_labels:\n    team: ops\n".to_owned(), "exclude_labels on the recorded pod labels"),
        ("  exclude_labels:\n    tier: front\n".to_owned(), "exclude_labels on the recorded app labels"),
    ] {
        let (after, _) = server(&filters, Arc::clone(&archive), false);
        assert_eq!(status(&after, &format!("{LOGS}/gone-web-1/logs?follow=false")).await, StatusCode::NOT_FOUND, "{why}");
        let (code, body) = get(&after, "/api/v1/namespaces/team-a/archived-pods", "application/json").await;
        assert_eq!(code, StatusCode::OK);
        assert!(!archived_names(&body).contains(&"gone-web-1".to_owned()), "{why}: {body}");
    }
    // The app's current labels win while it is cached: `web` (cached, no labels) is not
    // hidden by the `tier: front` it had at capture.
    let (cached, _) = server("  exclude_labels:\n    tier: front\n", Arc::clone(&archive), true);
    assert_eq!(status(&cached, &format!("{LOGS}/gone-web-1/logs?follow=false")).await, StatusCode::OK);
    // Labels not recorded (archived by an older version): hidden while label rules exist.
    assert_eq!(status(&before, &format!("{LOGS}/gone-old/logs?follow=false")).await, StatusCode::NOT_FOUND);
    let (no_rules, _) = server("  pods:\n    exclude: ['^nothing$']\n", Arc::clone(&archive), true);
    assert_eq!(status(&no_rules, &format!("{LOGS}/gone-old/logs?follow=false")).await, StatusCode::OK);
}

/// 14.3: archive listings leave out present-but-hidden pods, and a namespace hidden by its
/// labels answers 404 like on every other route.
#[tokio::test]
async fn archive_listings_apply_the_policy() {
    let archive: Arc<dyn LogArchive> = Arc::new(MemoryStore::new(StoreLimits::default()));
    fill(archive.as_ref()).await;
    let (service, _) = server(HIDE, archive, true);
    let (code, body) = get(&service, "/api/v1/namespaces/team-a/archived-pods", "application/json").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(archived_names(&body), ["gone-web-1"], "{body}");
    let (code, body) = get(&service, "/api/v1/namespaces/team-a/pods?includeTerminated=true", "application/json").await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<String> = serde_json::from_str::<Value>(&body).unwrap().as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    assert!(names.contains(&"gone-web-1".to_owned()) && names.contains(&"live".to_owned()), "{names:?}");
    assert!(!names.contains(&"hidden-canary".to_owned()), "a hidden pod's archived instance is listed: {names:?}");
    for path in ["/api/v1/namespaces/team-b/archived-pods", "/api/v1/namespaces/team-b/pods", "/api/v1/namespaces/team-b/pods/gone-b/logs?follow=false"] {
        assert_eq!(status(&service, path).await, StatusCode::NOT_FOUND, "{path}");
    }
}

/// 14.6: `grep`/`grepExclude` filter archived SSE reads too.
#[tokio::test]
async fn archived_sse_applies_grep() {
    let archive: Arc<dyn LogArchive> = Arc::new(MemoryStore::new(StoreLimits::default()));
    fill(archive.as_ref()).await;
    let (service, _) = server(HIDE, archive, true);
    for (query, want) in [("grep=public", vec!["b public"]), ("grepExclude=secret", vec!["b public"]), ("grep=.", vec!["a secret", "b public"])] {
        let (code, body) = get(&service, &format!("{LOGS}/gone-web-1/logs?tailLines=100&{query}"), "text/event-stream").await;
        assert_eq!(code, StatusCode::OK);
        let lines: Vec<String> = body
            .split("\n\n")
            .filter(|block| block.contains("event: log"))
            .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|data| serde_json::from_str::<Value>(data).unwrap()["line"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(lines, want, "{query}: {body}");
        let (_, one_shot) = get(&service, &format!("{LOGS}/gone-web-1/logs?follow=false&{query}"), "application/json").await;
        let one: Vec<String> = serde_json::from_str::<Value>(&one_shot).unwrap()["lines"].as_array().unwrap().iter().map(|l| l["line"].as_str().unwrap().to_owned()).collect();
        assert_eq!(one, want, "one-shot {query}");
    }
}

/// 14.7: a hidden pod that exists and a missing one do the same archive query before their
/// 404, so response timing does not tell them apart.
#[tokio::test]
async fn hidden_and_missing_pods_cost_the_same_archive_query() {
    let archive = Arc::new(CountingArchive { inner: MemoryStore::new(StoreLimits::default()), lists: AtomicUsize::new(0) });
    fill(archive.as_ref()).await;
    let (service, _) = server(HIDE, archive.clone(), true);
    for pod in ["hidden-canary", "no-such-pod"] {
        let before = archive.lists.load(Ordering::SeqCst);
        assert_eq!(status(&service, &format!("{LOGS}/{pod}/logs?follow=false")).await, StatusCode::NOT_FOUND, "{pod}");
        assert_eq!(archive.lists.load(Ordering::SeqCst) - before, 1, "{pod}: one archive query");
    }
}
