//! The caches survive a kube-apiserver restart: lists keep answering from memory while the
//! API server is down, the watches back off and resume, and changes made after the restart
//! reach the list and the change stream. Its own test binary, because it stops the API
//! server every other test of the run would be using.
//!
//! testenv has no restart command, so this test restarts the apiserver the way `testenv/up`
//! started it: same command line (read from `/proc`), its own session, output appended to
//! `DIR/logs/kube-apiserver.log`, and the new process group recorded in `DIR/pids` so
//! `testenv/down` stops it.
//!
//! Run: `testenv/run -- cargo test -p kubelens-salvo --test e2e_discovery_restart`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod discovery_support;

use std::process::Command;
use std::time::{Duration, Instant};

use discovery_support::{delete_pod, pod_manifest, start, unique};
use kubelens_testenv::TestEnv;

const FILTERS: &str = "filters:\n  exclude_labels:\n    kubelens.io/hide: 'true'\n";

/// The pgid and command line of the running kube-apiserver of this testenv.
fn apiserver_process(env: &TestEnv) -> (u32, Vec<String>) {
    let pids = std::fs::read_to_string(env.dir.join("pids")).unwrap();
    let pgid: u32 = pids
        .lines()
        .filter(|l| l.starts_with("kube-apiserver "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .rfind(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .expect("a live kube-apiserver in DIR/pids");
    let cmdline = std::fs::read(format!("/proc/{pgid}/cmdline")).unwrap();
    let args = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    (pgid, args)
}

fn apiserver_ready(env: &TestEnv) -> bool {
    env.kubectl(&["get", "--raw", "/readyz", "--request-timeout=2s"]).is_ok_and(|out| out.trim() == "ok")
}

#[tokio::test]
async fn caches_recover_after_an_apiserver_restart() {
    let Some(env) = TestEnv::e2e() else { return };
    let backend = start(env, FILTERS).await;
    let mut events = backend.watch("team-a").await;
    let before = backend.pod_names("team-a").await;
    assert!(before.contains(&"debug".to_owned()));

    // Stop the API server: SIGTERM, and SIGKILL after 10 s (its graceful shutdown waits for
    // in-flight requests and can hang on open watches; a crash is the harsher case anyway).
    let (pgid, args) = apiserver_process(env);
    let alive = || std::path::Path::new(&format!("/proc/{pgid}")).exists();
    let status = Command::new("kill").args(["-TERM", "--", &format!("-{pgid}")]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if alive() {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() {
        assert!(Instant::now() < deadline, "kube-apiserver did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // While it is down: lists come from the caches, the process keeps serving.
    for _ in 0..5 {
        assert_eq!(backend.pod_names("team-a").await, before);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, _) = backend.get("/api/v1/namespaces/team-a/apps").await;
    assert_eq!(status, 200);

    // Start it again, exactly as before, recorded for `testenv/down`.
    let script = r#"set -e; . "$1/testenv/lib/common.sh"; log="$2"; pids="$3"; shift 3
        setsid "$@" >>"$log" 2>&1 </dev/null & record_pid "$pids" kube-apiserver $!"#;
    let status = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("restart-apiserver")
        .arg(kubelens_testenv::workspace_root())
        .arg(env.dir.join("logs/kube-apiserver.log"))
        .arg(env.dir.join("pids"))
        .args(&args)
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !apiserver_ready(env) {
        assert!(Instant::now() < deadline, "kube-apiserver did not come back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let restarted = Instant::now();

    // A pod created after the restart reaches the stream and the list: the watches resumed.
    let name = unique("e2e-after-restart");
    env.kubectl_apply(&pod_manifest("team-a", &name, &[])).unwrap();
    let added = events.wait_for("added", &name, Duration::from_secs(90)).await;
    assert!(added.is_some(), "no added event for {name} within 90 s of the restart");
    assert!(backend.pod_names("team-a").await.contains(&name));
    eprintln!("pod visible {:?} after the apiserver was ready again", restarted.elapsed());
    let (status, body) = backend.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    delete_pod(env, "team-a", &name);
    events.wait_for("deleted", &name, Duration::from_secs(60)).await.expect("deleted after restart");

    // Leave the environment as we found it: later test binaries create pods with their own
    // KWOK `Logs` objects, and KWOK's watch on those may still be backing off.
    env.wait_kwok_logs_current(Duration::from_secs(120)).expect("KWOK's Logs watch resumed after the restart");
}
