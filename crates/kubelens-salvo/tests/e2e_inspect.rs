//! Pod inspector and metrics end to end: the real `kubelens` binary on testenv (ServiceAccount
//! token bound by `deploy/`'s RBAC), real Keycloak tokens, KWOK-simulated usage through a real
//! metrics-server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use kubelens_testenv::TestEnv;
use serde_json::Value;
use support::Kubelens;

const WEB_POD: &str = "web-7d9f8b6c5d-x2k4p";
const MASKED: &str = "<masked: admin only>";

async fn get(server: &Kubelens, token: &str, path: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .get(format!("{}{path}", server.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn env_var<'a>(details: &'a Value, container: &str, name: &str) -> &'a Value {
    let containers = details["containers"].as_array().unwrap();
    let container = containers.iter().find(|c| c["name"] == container).unwrap();
    container["env"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap()
}

fn volume<'a>(details: &'a Value, name: &str) -> &'a Value {
    details["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap()
}

#[tokio::test]
async fn details_are_masked_for_viewers_and_complete_for_admins_and_metrics_work() {
    let Some(env) = TestEnv::e2e() else { return };
    let server = Kubelens::start(env, "");
    let viewer = env.password_token(&env.cli_client_id, "viewer").await;
    let admin = env.password_token(&env.web_client_id, "admin").await;
    let path = format!("/api/v1/namespaces/team-a/pods/{WEB_POD}/details");

    // A viewer: literal env values, secret volume names and the last-applied manifest masked;
    // secret references shown as references; nothing of the seeded secrets anywhere.
    let (status, details) = get(&server, &viewer, &path).await;
    assert_eq!(status, 200, "{details}");
    assert_eq!(details["masked"], true);
    let password = env_var(&details, "app", "DATABASE_PASSWORD");
    assert_eq!(password["value"], MASKED);
    assert_eq!(password["masked"], true);
    let api_token = env_var(&details, "app", "API_TOKEN");
    assert_eq!(api_token["valueFrom"]["type"], "secret");
    assert_eq!(api_token["valueFrom"]["name"], "web-secrets");
    assert_eq!(api_token["valueFrom"]["key"], "api-token");
    assert_eq!(volume(&details, "secrets")["source"], MASKED);
    let text = details.to_string();
    for secret in ["hunter2-literal-secret", "s3cr3t-api-token", "s3cr3t-session-key"] {
        assert!(!text.contains(secret), "{secret} leaked to a viewer");
    }
    assert_eq!(details["owners"][0]["kind"], "ReplicaSet");
    assert_eq!(details["node"], env.node_name.as_str());

    // An admin sees the literal value and the secret volume's name (never the Secret's data:
    // the ServiceAccount cannot read Secrets at all).
    let (status, details) = get(&server, &admin, &path).await;
    assert_eq!(status, 200, "{details}");
    assert_eq!(env_var(&details, "app", "DATABASE_PASSWORD")["value"], "hunter2-literal-secret");
    assert_eq!(volume(&details, "secrets")["source"], "web-secrets");
    assert!(!details.to_string().contains("s3cr3t-api-token"));

    // Policy applies as everywhere: hidden, missing and non-allowlisted pods are 404, bad
    // names 400, and users without the group 403.
    for (path, expected) in [
        ("/api/v1/namespaces/team-a/pods/hidden-canary/details", 404),
        ("/api/v1/namespaces/team-a/pods/nope/details", 404),
        ("/api/v1/namespaces/secret-ns/pods/forbidden/details", 404),
        ("/api/v1/namespaces/team-a/pods/Bad..Name/details", 400),
        ("/api/v1/namespaces/secret-ns/pods/forbidden/metrics", 404),
    ] {
        let (status, body) = get(&server, &viewer, path).await;
        assert_eq!(status, expected, "{path}: {body}");
    }
    let nogroup = env.password_token(&env.cli_client_id, "nogroup").await;
    assert_eq!(get(&server, &nogroup, &path).await.0, 403);

    if !env.metrics {
        // Without metrics-server: the documented answer, not a 500.
        let (status, body) = get(&server, &viewer, &format!("/api/v1/namespaces/team-a/pods/{WEB_POD}/metrics")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("metrics_unavailable")), "{body}");
        return;
    }

    // With metrics-server scraping KWOK's simulated usage (default 1m CPU / 1Mi per container).
    let metrics_path = format!("/api/v1/namespaces/team-a/pods/{WEB_POD}/metrics");
    let deadline = Instant::now() + Duration::from_secs(90);
    let usage = loop {
        let (status, body) = get(&server, &viewer, &metrics_path).await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "no metrics after 90 s: {status} {body}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let app = &usage["containers"].as_array().unwrap()[0];
    assert_eq!(app["name"], "app");
    assert!(app["cpuMillicores"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(app["memoryBytes"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["timestamp"].is_string());

    // Take metrics-server away (delete its APIService): the same endpoint answers the
    // documented 503 `metrics_unavailable`; put it back afterwards.
    let apiservice = env.kubectl(&["get", "apiservice", "v1beta1.metrics.k8s.io", "-o", "json"]).unwrap();
    env.kubectl(&["delete", "apiservice", "v1beta1.metrics.k8s.io", "--wait=true"]).unwrap();
    let result = std::panic::AssertUnwindSafe(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = get(&server, &viewer, &metrics_path).await;
            if status == 503 {
                assert_eq!(body["error"]["code"], "metrics_unavailable", "{body}");
                break;
            }
            assert!(Instant::now() < deadline, "still {status} without metrics-server: {body}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let outcome = futures::FutureExt::catch_unwind(result).await;
    let mut restored: Value = serde_json::from_str(&apiservice).unwrap();
    restored["metadata"].as_object_mut().unwrap().retain(|k, _| k == "name" || k == "labels");
    restored.as_object_mut().unwrap().remove("status");
    env.kubectl_apply(&restored.to_string()).unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
