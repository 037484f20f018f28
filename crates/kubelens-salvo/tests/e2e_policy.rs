//! Policy bypasses (issue 14, "Policy bypasses"), end to end: the real `kubelens` binary
//! (discovery cache, retention into the memory archive, the e2e config that hides objects
//! labelled `kubelens.io/hide: "true"`) against the testenv, with real Keycloak tokens.
//!
//! Run: `testenv/run -- cargo test -p kubelens-salvo --test e2e_policy`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use kubelens_testenv::TestEnv;
use serde_json::Value;
use support::Kubelens;

const NS: &str = "team-a";

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{:x}{:x}", std::process::id() % 4096, nanos % 0xfffff)
}

fn kubectl(env: &TestEnv, args: &[&str]) -> String {
    env.kubectl(args).unwrap_or_else(|e| panic!("kubectl {args:?}: {e:#}"))
}

/// A running pod on the KWOK node whose log holds `lines`.
fn running_pod(env: &TestEnv, name: &str, lines: &[String]) {
    let path = env.ensure_pod_logs(NS, name, &["app"]).unwrap().remove(0);
    let now = chrono::Utc::now();
    let stamped: Vec<String> =
        lines.iter().enumerate().map(|(i, t)| kubelens_testenv::cri_line(now + chrono::Duration::milliseconds(i as i64), "stdout", t)).collect();
    std::fs::write(&path, stamped.concat()).unwrap();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"e2e": "policy"}},
        "spec": {
            "nodeName": env.node_name,
            "containers": [{"name": "app", "image": "registry.invalid/e2e:1"}],
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
        }
    });
    env.kubectl_apply(&pod.to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while kubectl(env, &["-n", NS, "get", "pod", name, "-o", "jsonpath={.status.phase}"]) != "Running" {
        assert!(Instant::now() < deadline, "pod {name} not Running");
        std::thread::sleep(Duration::from_millis(200));
    }
    env.wait_logs_mapped(NS, name, "app", Duration::from_secs(60)).unwrap();
}

fn wait_gone(env: &TestEnv, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubectl(env, &["-n", NS, "get", "pod", name, "--ignore-not-found", "-o", "name"]).trim().is_empty() {
        assert!(Instant::now() < deadline, "pod {name} not deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SSE events (event name, data) parsed out of `buf`, leaving an incomplete tail in it.
fn parse_events(buf: &mut String) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let (mut event, mut data) = (String::from("message"), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if !data.is_empty() {
            out.push((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
        }
    }
    out
}

/// Reads `res` until `done` says stop (bounded by `within`); returns every event read.
async fn read_until(res: &mut reqwest::Response, within: Duration, done: impl Fn(&[(String, Value)]) -> bool) -> Vec<(String, Value)> {
    let deadline = tokio::time::Instant::now() + within;
    let (mut buf, mut events) = (String::new(), Vec::new());
    while !done(&events) {
        let chunk = match tokio::time::timeout_at(deadline, res.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            other => panic!("stream stalled or ended before the condition held ({other:?}): {events:?}"),
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        events.extend(parse_events(&mut buf));
    }
    events
}

/// Issue 14.1: a pod hidden while someone follows it ends that stream with reason `hidden`
/// (not `deleted`), and nothing of it reaches the archive: after the pod is deleted its logs
/// answer 404 and `archived-pods` does not list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_hidden_while_followed_ends_hidden_and_is_never_archived() {
    let Some(env) = TestEnv::e2e() else { return };
    let server = Kubelens::start(env, "");
    let token = env.password_token(&env.web_client_id, "viewer").await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let pod = unique("hide-follow");
    let lines: Vec<String> = (0..5).map(|i| format!("{pod} secret line {i}")).collect();
    running_pod(env, &pod, &lines);
    let logs_url = format!("{}/api/v1/namespaces/{NS}/pods/{pod}/logs", server.url);

    let mut res = http.get(format!("{logs_url}?tailLines=100")).bearer_auth(&token).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let seen = read_until(&mut res, Duration::from_secs(30), |e| e.iter().filter(|(n, _)| n == "log").count() >= lines.len()).await;
    assert!(seen.iter().any(|(n, d)| n == "log" && d["line"] == lines[4].as_str()), "{seen:?}");

    kubectl(env, &["-n", NS, "label", "pod", &pod, "kubelens.io/hide=true"]);
    let events = read_until(&mut res, Duration::from_secs(60), |e| e.iter().any(|(n, d)| n == "status" && d["state"] == "ended")).await;
    let ended = events.iter().find(|(n, d)| n == "status" && d["state"] == "ended").unwrap();
    assert_eq!(ended.1["reason"], "hidden", "the stream must end as hidden, not as deleted: {events:?}");
    drop(res);

    // While it exists it is a 404 like any hidden pod; once deleted, the archive must not
    // have it either.
    let one_shot = |url: String| {
        let (http, token) = (http.clone(), token.clone());
        async move { http.get(url).bearer_auth(token).header("accept", "application/json").send().await.unwrap().status().as_u16() }
    };
    assert_eq!(one_shot(format!("{logs_url}?follow=false")).await, 404);
    kubectl(env, &["-n", NS, "delete", "pod", &pod, "--wait=false"]);
    wait_gone(env, &pod);
    // The archive tap writes in the background when a stream ends; give a wrong write time
    // to land, checking all along.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(one_shot(format!("{logs_url}?follow=false")).await, 404, "the hidden pod is served from the archive");
        let list: Value = http
            .get(format!("{}/api/v1/namespaces/{NS}/archived-pods", server.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = list["items"].as_array().unwrap();
        assert!(items.iter().all(|p| p["name"] != pod.as_str()), "the hidden pod is listed as archived: {list}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = server.log();
    assert!(!log.contains("secret line"), "log line contents must not be logged");
}
