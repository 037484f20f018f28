//! How kubelens reaches Kubernetes, end to end with the real binary and real Keycloak tokens:
//!
//! * per-user RBAC (issue 20, `auth.kubernetes_authorization.mode: subject_access_review`)
//!   with the ServiceAccount and RBAC the Helm chart renders in that mode and RoleBindings for
//!   the testenv users;
//! * one rate-limited client for every request (issue 15): log reads count in
//!   `kubelens_kube_api_requests_total` like every other call.
//!
//! Run: `testenv/run -- cargo test -p kubelens-salvo --test e2e_kube_access`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubelens_testenv::TestEnv;
use serde_json::Value;
use support::{Kubelens, helm, kubeconfig_with_token};

/// The release's namespace (its ServiceAccount lives here).
const RELEASE_NS: &str = "helm-rbac";
const RELEASE: &str = "kubelens-rbac";
/// What the API server's `--oidc-username-prefix` / `--oidc-groups-prefix` would be.
const PREFIX: &str = "oidc:";
/// `auth.kubernetes_authorization.cache_ttl` of the server under test.
const TTL: Duration = Duration::from_secs(2);

fn apply(env: &TestEnv, manifest: &str) {
    env.kubectl_apply(manifest).unwrap_or_else(|e| panic!("kubectl apply: {e:#}\n{manifest}"));
}

/// The chart's ServiceAccount and RBAC in SubjectAccessReview mode, applied; a token for it.
fn chart_service_account(env: &TestEnv) -> String {
    apply(env, &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {RELEASE_NS}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: {RELEASE_NS}\n"));
    let out = Command::new(helm())
        .args(["template", RELEASE])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/helm/kubelens"))
        .args(["--namespace", RELEASE_NS, "--set", "config.namespaces.allowed={team-a,team-b}"])
        .args(["--set", "config.auth.kubernetes_authorization.mode=subject_access_review"])
        .args(["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template failed");
    let rendered = String::from_utf8(out.stdout).unwrap();
    assert!(rendered.contains("subjectaccessreviews"), "the chart grants reviews in this mode:\n{rendered}");
    apply(env, &rendered);
    env.kubectl(&["-n", RELEASE_NS, "create", "token", RELEASE, "--duration=1h"]).unwrap().trim().to_owned()
}

/// kubelens in SubjectAccessReview mode, reaching the API server with `token`.
fn start(env: &TestEnv, token: &str) -> Kubelens {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_with_token(env, dir.path(), token);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&support::e2e_config(env, port, &kubeconfig, "")).unwrap();
    config["auth"]["kubernetes_authorization"] = serde_yaml_ng::to_value(serde_json::json!({
        "mode": "subject_access_review",
        "username_prefix": PREFIX,
        "groups_prefix": PREFIX,
        "cache_ttl": format!("{}s", TTL.as_secs()),
    }))
    .unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    Kubelens::start_with_config(dir, &path, port)
}

/// A running pod on the KWOK node in `ns` whose log holds `lines`.
fn running_pod(env: &TestEnv, ns: &str, name: &str, lines: usize) {
    let path = env.ensure_pod_logs(ns, name, &["app"]).unwrap().remove(0);
    let now = chrono::Utc::now();
    let text: String = (0..lines)
        .map(|i| kubelens_testenv::cri_line(now + chrono::Duration::milliseconds(i as i64), "stdout", &format!("{name} line {i}")))
        .collect();
    std::fs::write(&path, text).unwrap();
    apply(
        env,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "nodeName": env.node_name,
                "containers": [{"name": "app", "image": "registry.invalid/e2e:1"}],
                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            }
        })
        .to_string(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.kubectl(&["-n", ns, "get", "pod", name, "-o", "jsonpath={.status.phase}"]).unwrap() != "Running" {
        assert!(Instant::now() < deadline, "pod {ns}/{name} not Running");
        std::thread::sleep(Duration::from_millis(200));
    }
    env.wait_logs_mapped(ns, name, "app", Duration::from_secs(60)).unwrap();
}

/// A RoleBinding of the test's log-reader ClusterRole in `ns` to `subject` (`User`/`Group`).
fn binding(name: &str, ns: &str, kind: &str, subject: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {name}\n  namespace: {ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: e2e-rbac-log-reader\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: {kind}\n  name: \"{subject}\"\n"
    )
}

async fn status(http: &reqwest::Client, url: &str, token: &str) -> u16 {
    http.get(url).bearer_auth(token).header("accept", "application/json").send().await.unwrap().status().as_u16()
}

async fn namespaces(http: &reqwest::Client, base: &str, token: &str) -> Vec<String> {
    let list: Value = http.get(format!("{base}/api/v1/namespaces")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    list.as_array().unwrap_or_else(|| panic!("{list}")).iter().map(|n| n["name"].as_str().unwrap().to_owned()).collect()
}

/// A metric of kubelens's own `/metrics` (no labels).
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or_else(|| panic!("no {name}:\n{text}"))
}

/// Reads an SSE response until it holds `n` `log` events (bounded).
async fn read_logs(res: &mut reqwest::Response, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while text.matches("event: log\n").count() < n {
        match tokio::time::timeout_at(deadline, res.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("stream ended or stalled ({other:?}) after:\n{text}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_rbac_decides_per_user_revocations_apply_within_the_ttl_and_viewers_share_one_upstream() {
    let Some(env) = TestEnv::e2e() else { return };
    let sa_token = chart_service_account(env);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let viewer = env.password_token(&env.cli_client_id, "viewer").await;
    let admin = env.password_token(&env.cli_client_id, "admin").await;
    let admin_group = kubelens_testenv::jwt_groups(&kubelens_testenv::jwt_claims(&admin).unwrap())
        .into_iter()
        .find(|g| g.ends_with("k8s-admin-access"))
        .expect("the admin token names the admin group");

    // RBAC as a cluster admin would grant it: viewer reads team-a only, the admin group both.
    apply(env, "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: e2e-rbac-log-reader\nrules:\n- apiGroups: [\"\"]\n  resources: [\"pods\", \"pods/log\"]\n  verbs: [\"get\", \"list\", \"watch\"]\n");
    apply(env, &binding("e2e-rbac-viewer", "team-a", "User", &format!("{PREFIX}viewer")));
    for ns in ["team-a", "team-b"] {
        apply(env, &binding("e2e-rbac-admins", ns, "Group", &format!("{PREFIX}{admin_group}")));
    }
    let (pod_a, pod_b) = ("rbac-a", "rbac-b");
    running_pod(env, "team-a", pod_a, 5);
    running_pod(env, "team-b", pod_b, 5);

    let server = start(env, &sa_token);
    let base = server.url.clone();
    let a_logs = format!("{base}/api/v1/namespaces/team-a/pods/{pod_a}/logs");
    let b_logs = format!("{base}/api/v1/namespaces/team-b/pods/{pod_b}/logs");

    // viewer: team-a yes; team-b is a 404 on every route, like a namespace that does not exist.
    assert_eq!(namespaces(&http, &base, &viewer).await, ["team-a"]);
    assert_eq!(status(&http, &format!("{base}/api/v1/namespaces/team-a/pods"), &viewer).await, 200);
    assert_eq!(status(&http, &format!("{a_logs}?follow=false"), &viewer).await, 200);
    for path in ["pods", &format!("pods/{pod_b}"), &format!("pods/{pod_b}/details"), &format!("pods/{pod_b}/logs?follow=false"), "apps", "archived-pods"] {
        assert_eq!(status(&http, &format!("{base}/api/v1/namespaces/team-b/{path}"), &viewer).await, 404, "viewer: team-b/{path}");
    }
    assert_eq!(status(&http, &format!("{b_logs}?follow=false&download=true"), &viewer).await, 404);
    // The same routes spelled the ways salvo also routes them (a percent-encoded namespace,
    // empty segments): still reviewed, still 404.
    for path in [
        "/api/v1/namespaces/team%2Db/pods".to_owned(),
        format!("/api/v1//namespaces//team-b/pods/{pod_b}/logs?follow=false"),
        format!("/api/v1/namespaces/%74eam-b/pods/{pod_b}/%6Cogs?follow=false"),
    ] {
        assert_eq!(status(&http, &format!("{base}{path}"), &viewer).await, 404, "viewer: {path}");
    }
    // Each denial is one audit event naming the user and the namespace.
    let denials: Vec<Value> = server
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["target"] == "kubelens::audit" && e["audit"] == "denied" && e["reason"] == "rbac")
        .collect();
    assert!(
        denials.iter().any(|e| e["user"] == "viewer" && e["namespace"] == "team-b" && e["path"] == format!("/api/v1/namespaces/team-b/pods/{pod_b}")),
        "{denials:#?}"
    );
    // admin (by group): both.
    assert_eq!(namespaces(&http, &base, &admin).await, ["team-a", "team-b"]);
    assert_eq!(status(&http, &format!("{b_logs}?follow=false"), &admin).await, 200);
    assert_eq!(status(&http, &format!("{base}/api/v1/namespaces/team-b/pods/{pod_b}/details"), &admin).await, 200);

    // Two users on one pod: authorization is per viewer, the upstream stays one request.
    let opened = "kubelens_upstream_log_streams_opened_total";
    let before = metric(&http, &base, opened).await;
    let mut streams = Vec::new();
    for token in [&viewer, &admin] {
        let mut res = http.get(format!("{a_logs}?tailLines=5")).bearer_auth(token).header("accept", "text/event-stream").send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        read_logs(&mut res, 5).await;
        streams.push(res);
    }
    let after = metric(&http, &base, opened).await;
    assert_eq!(after - before, 1.0, "two users following one pod share one upstream request");
    drop(streams);

    // Revoking the viewer's RoleBinding takes effect within the cache TTL: for new requests,
    // and for the viewer's stream that is open meanwhile (it ends `revoked`).
    let mut open = http.get(format!("{a_logs}?tailLines=1")).bearer_auth(&viewer).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(open.status().as_u16(), 200);
    read_logs(&mut open, 1).await;
    env.kubectl(&["-n", "team-a", "delete", "rolebinding", "e2e-rbac-viewer"]).unwrap();
    let revoked = Instant::now();
    let mut text = String::new();
    while !text.contains("\"reason\":\"revoked\"") {
        let left = (TTL * 2 + Duration::from_secs(3)).saturating_sub(revoked.elapsed());
        match tokio::time::timeout(left, open.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("the open stream was not ended as revoked ({other:?}):\n{text}"),
        }
    }
    assert!(text.contains("\"state\":\"ended\""), "{text}");
    while status(&http, &format!("{a_logs}?follow=false"), &viewer).await != 404 {
        assert!(revoked.elapsed() < TTL + Duration::from_secs(3), "still allowed {:?} after the revocation", revoked.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(namespaces(&http, &base, &viewer).await, Vec::<String>::new());
    assert_eq!(status(&http, &format!("{a_logs}?follow=false"), &admin).await, 200, "the admin group's binding is untouched");

    env.kubectl(&["delete", "clusterrole", "e2e-rbac-log-reader", "--ignore-not-found"]).unwrap();
    for ns in ["team-a", "team-b"] {
        env.kubectl(&["-n", ns, "delete", "rolebinding", "e2e-rbac-admins", "--ignore-not-found"]).unwrap();
    }
}

/// Without `create subjectaccessreviews` (testenv's ServiceAccount has the chart's default
/// RBAC, mode `none`), the mode fails closed: 503 on namespaced routes, never an open door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_that_may_not_review_fails_closed() {
    let Some(env) = TestEnv::e2e() else { return };
    let server = start(env, &env.sa_token);
    let admin = env.password_token(&env.cli_client_id, "admin").await;
    let http = reqwest::Client::new();
    let res = http.get(format!("{}/api/v1/namespaces/team-a/pods", server.url)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "authorization_unavailable", "{body}");
    assert_eq!(status(&http, &format!("{}/api/v1/namespaces", server.url), &admin).await, 503);
    // Routes outside namespaces are unaffected.
    assert_eq!(status(&http, &format!("{}/api/v1/me", server.url), &admin).await, 200);
}

/// Issue 15: log reads go through the process's one client, so `kubernetes.qps` governs them
/// like every other API call (they had an unlimited client of their own, which this counter
/// did not see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_reads_go_through_the_one_rate_limited_client() {
    let Some(env) = TestEnv::e2e() else { return };
    let server = Kubelens::start(env, "");
    let viewer = env.password_token(&env.cli_client_id, "viewer").await;
    let http = reqwest::Client::new();
    let requests = "kubelens_kube_api_requests_total";
    let before = metric(&http, &server.url, requests).await;
    let reads = 5;
    for _ in 0..reads {
        let url = format!("{}/api/v1/namespaces/team-a/pods/debug/logs?follow=false&tailLines=2", server.url);
        assert_eq!(status(&http, &url, &viewer).await, 200);
    }
    let after = metric(&http, &server.url, requests).await;
    assert!(after - before >= f64::from(reads), "{reads} log reads, but the client counted {} requests", after - before);
}
