//! `deploy/` end to end: the Kustomize overlay applies to a real API server, and kubelens
//! runs with the ServiceAccount it creates (token minted by TokenRequest), the config from the
//! ConfigMap it generates (only addresses swapped for the test), and serves every endpoint.
//! A non-allowlisted namespace is refused by our policy AND would be refused by RBAC.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use kubelens_testenv::TestEnv;
use serde_json::Value;
use support::Kubelens;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Applies the sqlite overlay, then returns the config.yaml of the ConfigMap it created.
fn apply_overlay(env: &TestEnv) -> String {
    let overlay = repo_root().join("deploy/kustomize/overlays/sqlite");
    let rendered = env.kubectl(&["kustomize", overlay.to_str().unwrap()]).unwrap();
    env.kubectl_apply(&rendered).unwrap();
    let configmaps: Value = serde_json::from_str(
        &env.kubectl(&["-n", "kubelens", "get", "configmaps", "-o", "json"]).unwrap(),
    )
    .unwrap();
    let config = configmaps["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cm| cm["metadata"]["name"].as_str().unwrap().starts_with("kubelens-config-"))
        .expect("the overlay's ConfigMap exists");
    config["data"]["config.yaml"].as_str().unwrap().to_owned()
}

fn kubeconfig_with_token(env: &TestEnv, dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {token}\n",
            env.apiserver_url,
            env.apiserver_ca.display()
        ),
    )
    .unwrap();
    path
}

async fn call(client: &reqwest::Client, method: reqwest::Method, url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client.request(method, url).timeout(Duration::from_secs(20));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_overlay_applies_and_kubelens_serves_every_endpoint_with_its_service_account() {
    let Some(env) = TestEnv::e2e() else { return };
    let config_text = apply_overlay(env);

    // The ServiceAccount the manifests create, with a fresh token: exactly the chart's RBAC.
    let token = env.kubectl(&["-n", "kubelens", "create", "token", "kubelens", "--duration=1h"]).unwrap();
    let token = token.trim();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_with_token(env, dir.path(), token);

    // The generated config, with only addresses and the Keycloak realm swapped for testenv.
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&config_text).unwrap();
    let port = free_port();
    let metrics_port = free_port();
    config["server"]["listen"] = format!("127.0.0.1:{port}").into();
    config["server"]["metrics_listen"] = format!("127.0.0.1:{metrics_port}").into();
    config["auth"]["keycloak_url"] = env.keycloak_url.clone().unwrap().into();
    config["auth"]["realm"] = env.realm.clone().into();
    config["auth"]["client_id"] = env.backend_client_id.clone().into();
    config["auth"]["trusted_clients"] = serde_yaml_ng::to_value(vec![env.cli_client_id.clone()]).unwrap();
    config["storage"]["sqlite"]["path"] = dir.path().join("kubelens.db").to_str().unwrap().into();
    config["kubernetes"] = serde_yaml_ng::to_value(serde_json::json!({"kubeconfig": kubeconfig})).unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let server = Kubelens::start_with_config(dir, &config_path, port);

    let viewer = env.password_token(&env.cli_client_id, "viewer").await;
    let client = reqwest::Client::new();
    let base = server.url.clone();
    use reqwest::Method;
    let get = Method::GET;

    // Every endpoint of the contract, as a viewer.
    let checks: Vec<(Method, String, u16)> = vec![
        (get.clone(), "/healthz".into(), 200),
        (get.clone(), "/readyz".into(), 200),
        (get.clone(), "/api/v1/openapi.json".into(), 200),
        (get.clone(), "/api/v1/me".into(), 200),
        (Method::POST, "/api/v1/stream-tickets".into(), 201),
        (get.clone(), "/api/v1/session".into(), 200),
        (Method::DELETE, "/api/v1/session".into(), 204),
        (get.clone(), "/api/v1/namespaces".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/pods".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/pods/debug".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/pods/debug/details".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/pods/debug/logs?follow=false&tailLines=5".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/apps".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/apps/web".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/apps/web/logs?follow=false&tailLines=5".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-b/apps/api".into(), 200),
    ];
    for (method, path, expected) in checks {
        let (status, body) = call(&client, method.clone(), &format!("{base}{path}"), Some(&viewer)).await;
        assert_eq!(status, expected, "{method} {path}: {body}\n{}", server.log());
    }
    let (status, body) = call(&client, get.clone(), &format!("{base}/api/v1/namespaces/team-a/pods/debug/logs?follow=false&tailLines=5"), Some(&viewer)).await;
    assert_eq!(status, 200);
    assert!(body.contains("seed line"), "{body}");
    let metrics_status = call(&client, get.clone(), &format!("{base}/api/v1/namespaces/team-a/pods/debug/metrics"), Some(&viewer)).await.0;
    assert!(matches!(metrics_status, 200 | 404 | 503), "metrics answered {metrics_status}");

    // The pod change stream answers as SSE.
    let res = client
        .get(format!("{base}/api/v1/namespaces/team-a/pods/watch"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    drop(res);

    // Prometheus metrics on the separate, unauthenticated listener, scraped while a log
    // stream is open: the stream, its upstream and its lines are counted.
    let mut stream = client
        .get(format!("{base}/api/v1/namespaces/team-a/pods/debug/logs?tailLines=3"))
        .bearer_auth(&viewer)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut received = String::new();
    while received.matches("event: log").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.chunk()).await.unwrap().unwrap().unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (status, metrics) = call(&client, get.clone(), &format!("http://127.0.0.1:{metrics_port}/metrics"), None).await;
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(metrics.contains("kubelens_http_requests_total"), "{metrics}");
    assert!(value("kubelens_sse_streams_open") >= 1.0, "{metrics}");
    assert!(value("kubelens_upstream_log_streams_open") >= 1.0, "{metrics}");
    assert!(value("kubelens_upstream_log_streams_opened_total") >= 3.0, "two one-shot reads and the stream: {metrics}");
    assert!(value("kubelens_log_lines_sent_total") >= 3.0, "{metrics}");
    assert!(value("kubelens_log_lines_received_total") >= 3.0, "{metrics}");
    drop(stream);

    // A namespace outside the allowlist: 404 from our policy ...
    let (status, _) = call(&client, get.clone(), &format!("{base}/api/v1/namespaces/secret-ns/pods"), Some(&viewer)).await;
    assert_eq!(status, 404);
    // ... and RBAC would refuse it too: the same ServiceAccount token cannot list there, nor
    // read secrets anywhere.
    let apiserver = env.apiserver_client().unwrap();
    for path in ["/api/v1/namespaces/secret-ns/pods", "/api/v1/namespaces/team-a/secrets", "/api/v1/namespaces/team-a/pods"] {
        let res = apiserver.get(format!("{}{path}", env.apiserver_url)).bearer_auth(token).send().await.unwrap();
        let expected = if path == "/api/v1/namespaces/team-a/pods" { 200 } else { 403 };
        assert_eq!(res.status().as_u16(), expected, "RBAC for {path}");
    }
}
