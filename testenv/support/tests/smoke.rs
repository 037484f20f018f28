//! e2e smoke test of the testenv itself: the real apiserver → KWOK log path and the
//! Keycloak token shapes the backend must handle.
//!
//! Fails (does not skip) when the testenv is not running, unless KUBELENS_SKIP_E2E=1.
//! Run: `testenv/run -- cargo test -p kubelens-testenv`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kubelens_testenv::{TestEnv, jwt_audiences, jwt_claims, jwt_groups};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{label}-{}-{nanos}", std::process::id())
}

/// Lines of `kubectl logs ARGS` (admin).
fn logs(env: &TestEnv, args: &[&str]) -> Vec<String> {
    let mut full = vec!["logs"];
    full.extend_from_slice(args);
    env.kubectl(&full)
        .unwrap_or_else(|e| panic!("kubectl {full:?}: {e:#}"))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// (timestamp, message) of each line of a CRI file.
fn cri_file(path: &std::path::Path) -> Vec<(DateTime<Utc>, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = DateTime::parse_from_rfc3339(it.next().unwrap())
                .unwrap()
                .with_timezone(&Utc);
            let _stream = it.next();
            let _tag = it.next();
            (ts, it.next().unwrap_or_default().to_owned())
        })
        .collect()
}

fn seqs_of(lines: &[String], src: &str) -> Vec<u64> {
    let needle = format!(" src={src}");
    lines
        .iter()
        .filter(|l| {
            l.contains(&needle) && (l.ends_with(&needle) || l.contains(&format!("{needle} ")))
        })
        .filter_map(|l| l.split("seq=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

/// Follow a container's log with `kubectl logs -f`, append `count` lines with loggen
/// (optionally rotating the file), and check every line arrives once, in order.
async fn follow_and_generate(
    env: &TestEnv,
    ns: &str,
    pod: &str,
    container: &str,
    count: u64,
    extra: &[&str],
) {
    let src = unique(pod);
    let mut child = Command::new(&env.kubectl)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(["logs", "-f", "--tail=1", "-n", ns, pod, "-c", container])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kubectl logs -f");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The stream is open once the tail line arrives.
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("kubectl logs -f printed nothing within 20s")
        .unwrap();
    assert!(
        first.is_some(),
        "kubectl logs -f ended before the first line"
    );

    let file = env.log_path(ns, pod, container);
    let count_s = count.to_string();
    let mut args = vec![
        "--file",
        file.to_str().unwrap(),
        "--count",
        &count_s,
        "--rate",
        "2000",
        "--src",
        &src,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let status = env.loggen_cmd().args(&args).status().expect("run loggen");
    assert!(status.success(), "loggen failed");

    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seqs_of(&got, &src).len() < count as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, lines.next_line()).await {
            Ok(Ok(Some(l))) => got.push(l),
            Ok(Ok(None)) => panic!("kubectl logs -f ended after {} lines", got.len()),
            Ok(Err(e)) => panic!("reading kubectl logs -f: {e}"),
            Err(_) => panic!(
                "timed out: {} of {count} generated lines arrived",
                seqs_of(&got, &src).len()
            ),
        }
    }
    let seqs = seqs_of(&got, &src);
    let want: Vec<u64> = (1..=count).collect();
    assert_eq!(seqs, want, "lines lost, duplicated or reordered");
    child.kill().await.ok();
}

#[tokio::test]
async fn logs_follow_receives_appended_lines() {
    let Some(env) = TestEnv::e2e() else { return };
    follow_and_generate(env, "team-a", "debug", "debug", 500, &[]).await;
}

#[tokio::test]
async fn logs_follow_survives_rotation() {
    let Some(env) = TestEnv::e2e() else { return };
    follow_and_generate(
        env,
        "team-a",
        "web-7d9f8b6c5d-m8n3q",
        "app",
        300,
        &["--rotate-every", "100"],
    )
    .await;
}

#[test]
fn tail_lines() {
    let Some(env) = TestEnv::e2e() else { return };
    let lines = logs(env, &["-n", "team-a", "db-0", "--tail=5"]);
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(
        seqs_of(&lines, "team-a/db-0/postgres"),
        vec![16, 17, 18, 19, 20]
    );
}

#[test]
fn since_time() {
    let Some(env) = TestEnv::e2e() else { return };
    let file = cri_file(&env.log_path("team-a", "db-1", "postgres"));
    assert!(file.len() >= 20);
    let since = file[10].0; // line seq=11
    let lines = logs(
        env,
        &[
            "-n",
            "team-a",
            "db-1",
            &format!(
                "--since-time={}",
                since.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            ),
        ],
    );
    assert_eq!(
        seqs_of(&lines, "team-a/db-1/postgres"),
        (11..=20).collect::<Vec<_>>()
    );
}

#[test]
fn timestamps() {
    let Some(env) = TestEnv::e2e() else { return };
    let file = cri_file(&env.log_path("team-a", "db-0", "postgres"));
    let lines = logs(env, &["-n", "team-a", "db-0", "--timestamps", "--tail=3"]);
    assert_eq!(lines.len(), 3);
    for (line, (ts, msg)) in lines.iter().zip(&file[file.len() - 3..]) {
        let (t, rest) = line.split_once(' ').unwrap();
        let t = DateTime::parse_from_rfc3339(t)
            .unwrap_or_else(|e| panic!("timestamp of {line:?}: {e}"));
        assert_eq!(t.with_timezone(&Utc), *ts);
        assert_eq!(rest, msg);
    }
    // Without --timestamps the line is the message alone.
    let plain = logs(env, &["-n", "team-a", "db-0", "--tail=1"]);
    assert_eq!(plain, vec![file.last().unwrap().1.clone()]);
}

#[test]
fn previous_and_containers() {
    let Some(env) = TestEnv::e2e() else { return };
    let prev = logs(env, &["-n", "team-a", "crashy", "--previous"]);
    assert_eq!(prev.len(), 11, "{prev:?}");
    assert!(prev.last().unwrap().contains("panic: simulated crash"));
    assert!(
        prev.iter().all(|l| !l.contains("src=team-a/crashy/app ")),
        "previous must not serve the current file"
    );
    let cur = logs(env, &["-n", "team-a", "crashy", "--tail=2"]);
    assert_eq!(seqs_of(&cur, "team-a/crashy/app"), vec![19, 20]);
    let status = env
        .kubectl(&[
            "-n",
            "team-a",
            "get",
            "pod",
            "crashy",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])
        .unwrap();
    assert_eq!(status, "3");

    // multi: default container from the annotation, the sidecar and the init container.
    let l = logs(env, &["-n", "team-a", "multi", "--tail=1"]);
    assert!(l[0].contains("src=team-a/multi/app "), "{l:?}");
    let l = logs(env, &["-n", "team-a", "multi", "-c", "sidecar", "--tail=1"]);
    assert!(l[0].contains("src=team-a/multi/sidecar "), "{l:?}");
    let l = logs(
        env,
        &["-n", "team-a", "multi", "-c", "init-config", "--tail=1"],
    );
    assert!(l[0].contains("src=team-a/multi/init-config "), "{l:?}");
}

#[test]
fn seeded_objects_and_service_account_rbac() {
    let Some(env) = TestEnv::e2e() else { return };
    let pods = env
        .kubectl(&[
            "-n",
            "team-a",
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
        ])
        .unwrap();
    for want in [
        "web-7d9f8b6c5d-x2k4p=Running",
        "db-0=Running",
        "agent-q4v9t=Running",
        "debug=Running",
        "multi=Running",
        "crashy=Running",
        "hidden-canary=Running",
        "migrate-8xk2d=Succeeded",
        "nightly-29000000-h5j2k=Succeeded",
    ] {
        assert!(pods.contains(want), "{want} not in {pods}");
    }
    let owner = env
        .kubectl(&[
            "-n",
            "team-a",
            "get",
            "rs",
            "web-7d9f8b6c5d",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].uid}",
        ])
        .unwrap();
    let uid = env
        .kubectl(&[
            "-n",
            "team-a",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .unwrap();
    assert_eq!(owner, uid);

    // The backend's ServiceAccount: read in the allowlist, nothing else.
    let can = |args: &[&str]| -> String {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        // `can-i` exits 1 for "no"; its stdout is what matters.
        let out = env.kubectl_sa_cmd().args(&full).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(can(&["list", "pods", "-n", "team-a"]), "yes");
    assert_eq!(can(&["get", "pods/log", "-n", "team-b"]), "yes");
    assert_eq!(can(&["watch", "deployments.apps", "-n", "team-a"]), "yes");
    assert_eq!(can(&["list", "cronjobs.batch", "-n", "team-b"]), "yes");
    if env.metrics {
        // kubectl resolves the resource by discovery: only meaningful with metrics-server.
        assert_eq!(can(&["list", "pods.metrics.k8s.io", "-n", "team-a"]), "yes");
    }
    // Namespaces: only the allowlisted ones, by name (resourceNames; the backend watches each
    // with a metadata.name field selector), never all of them.
    assert_eq!(can(&["get", "namespaces/team-a"]), "yes");
    assert_eq!(can(&["get", "namespaces/secret-ns"]), "no");
    assert_eq!(can(&["list", "namespaces"]), "no");
    assert_eq!(can(&["get", "secrets", "-n", "team-a"]), "no");
    assert_eq!(can(&["list", "pods", "-n", "secret-ns"]), "no");
    assert_eq!(can(&["create", "pods/exec", "-n", "team-a"]), "no");
    assert_eq!(can(&["list", "nodes"]), "no");
    let logs = env
        .kubectl_sa(&["logs", "-n", "team-a", "db-0", "--tail=1"])
        .unwrap();
    assert!(logs.contains("src=team-a/db-0/postgres"));
    assert!(
        env.kubectl_sa(&["logs", "-n", "secret-ns", "forbidden"])
            .is_err()
    );
}

#[test]
fn metrics_when_enabled() {
    let Some(env) = TestEnv::e2e() else { return };
    if !env.metrics {
        eprintln!("testenv started without --metrics: metrics.k8s.io not checked");
        return;
    }
    let raw = env
        .kubectl(&[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods/multi",
        ])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let names: Vec<&str> = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"app") && names.contains(&"sidecar"),
        "{raw}"
    );
}

#[tokio::test]
async fn keycloak_token_shapes() {
    let Some(env) = TestEnv::e2e() else { return };
    let Some(issuer) = env.issuer_url.clone() else {
        eprintln!("testenv started with --no-keycloak: token shapes not checked");
        return;
    };
    let cases: [(&str, &str, &[&str]); 5] = [
        (env.cli_client_id.as_str(), "nogroup", &[]),
        (env.cli_client_id.as_str(), "viewer", &["/k8s-logs-access"]),
        (
            env.cli_client_id.as_str(),
            "admin",
            &["/k8s-admin-access", "/k8s-logs-access"],
        ),
        (
            env.cli_client_id.as_str(),
            "evil",
            &["/k8s-logs-access-evil", "/other/k8s-logs-access"],
        ),
        (env.web_client_id.as_str(), "viewer", &["/k8s-logs-access"]),
    ];
    for (client, user, groups) in cases {
        let token = env.password_token(client, user).await;
        let claims = jwt_claims(&token).unwrap();
        let mut got = jwt_groups(&claims);
        got.sort();
        assert_eq!(got, groups, "{user} via {client}: groups in {claims}");
        assert_eq!(claims["iss"], issuer.as_str(), "{user} via {client}");
        assert_eq!(claims["azp"], client, "{user} via {client}");
        assert_eq!(claims["preferred_username"], user);
        let aud = jwt_audiences(&claims);
        if client == env.web_client_id {
            assert!(
                aud.contains(&env.backend_client_id),
                "web tokens carry aud {}: {aud:?}",
                env.backend_client_id
            );
        } else {
            assert!(
                !aud.contains(&env.backend_client_id),
                "cli tokens have the default shape: {aud:?}"
            );
            assert!(
                aud.iter().all(|a| a == "account"),
                "cli aud is 'account' or absent: {aud:?}"
            );
        }
    }
    // Wrong password is refused.
    let bad = kubelens_testenv::post_form(
        &env.token_endpoint().unwrap(),
        &[
            ("grant_type", "password"),
            ("client_id", env.cli_client_id.as_str()),
            ("username", "viewer"),
            ("password", "nope"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    // The admin REST API is reachable (key rotation tests use it).
    let admin = env.keycloak_admin_token().await.unwrap();
    assert!(!admin.is_empty());
}

#[test]
fn test_created_pod_with_restart() {
    let Some(env) = TestEnv::e2e() else { return };
    let pod = unique("restart");
    let pod = pod.to_lowercase().replace('_', "-");
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "team-a", "labels": {"app": "restart-test"}},
        "spec": {"nodeName": env.node_name, "containers": [{"name": "app", "image": "registry.invalid/x:1"}]},
    });
    env.kubectl_apply(&manifest.to_string()).unwrap();
    let paths = env.ensure_pod_logs("team-a", &pod, &["app"]).unwrap();
    let file = paths[0].to_str().unwrap();
    let generate = |extra: &[&str]| {
        let mut args = vec!["--file", file, "--rate", "0", "--src", "r", "--quiet"];
        args.extend_from_slice(extra);
        assert!(env.loggen_cmd().args(&args).status().unwrap().success());
    };
    generate(&["--count", "5"]);
    generate(&["--count", "3", "--start-seq", "6", "--restart"]);
    env.kubectl(&[
        "-n",
        "team-a",
        "wait",
        "--for=condition=Ready",
        "--timeout=30s",
        &format!("pod/{pod}"),
    ])
    .unwrap();
    let cur = logs(env, &["-n", "team-a", &pod]);
    assert_eq!(seqs_of(&cur, "r"), vec![6, 7, 8], "{cur:?}");
    let prev = logs(env, &["-n", "team-a", &pod, "--previous"]);
    assert_eq!(seqs_of(&prev, "r"), vec![1, 2, 3, 4, 5], "{prev:?}");
    env.kubectl(&["-n", "team-a", "delete", "pod", &pod, "--wait=false"])
        .unwrap();
    env.kubectl(&["-n", "team-a", "delete", "logs.kwok.x-k8s.io", &pod])
        .unwrap();
}
