//! Shutdown with work in flight (issue 15): SIGTERM while a terminated pod's log capture is
//! being written lets the capture finish (within `server.shutdown_grace`) before the process
//! exits, so a pod that just completed does not lose its logs to a rollout of kubelens.
//!
//! Run: `testenv/run -- cargo test -p kubelens-salvo --test e2e_shutdown`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use kubelens_core::config::SqliteConfig;
use kubelens_core::storage::{LogArchive, SourceInfo, StoreLimits};
use kubelens_storage::sqlite::SqliteStore;
use kubelens_testenv::TestEnv;
use support::Kubelens;

const NS: &str = "team-a";
/// Lines of the captured log: enough that the (debug-built) capture is still writing when the
/// signal arrives.
const LINES: u64 = 200_000;

fn kubectl(env: &TestEnv, args: &[&str]) -> String {
    env.kubectl(args).unwrap_or_else(|e| panic!("kubectl {args:?}: {e:#}"))
}

async fn sources(path: &str, uid: &str) -> Vec<SourceInfo> {
    let config = SqliteConfig { path: path.to_owned(), ..SqliteConfig::default() };
    let store = SqliteStore::open(&config, StoreLimits::default()).await.unwrap();
    store.list_sources(NS).await.unwrap().into_iter().filter(|s| s.key.pod_uid == uid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_capture_finish_before_exit() {
    let Some(env) = TestEnv::e2e() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("archive.db").to_str().unwrap().to_owned();
    let kubeconfig = support::sa_kubeconfig(env, dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&support::e2e_config(env, port, &kubeconfig, "")).unwrap();
    config["server"]["shutdown_grace"] = "60s".into();
    config["storage"] = serde_yaml_ng::to_value(serde_json::json!({"backend": "sqlite", "sqlite": {"path": db}})).unwrap();
    config["logs"] = serde_yaml_ng::to_value(serde_json::json!({
        "archive_max_lines_per_container": LINES,
        "archive_max_bytes_per_container": 256 << 20,
    }))
    .unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let mut server = Kubelens::start_with_config(dir, &path, port);

    // A Job's pod whose whole log is written before it starts; KWOK completes it at once.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let job = format!("drain-{:x}{:x}", std::process::id() % 4096, nanos % 0xfffff);
    let job_manifest = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job, "namespace": NS},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "registry.invalid/e2e:1"}]}}}
    });
    env.kubectl_apply(&job_manifest.to_string()).unwrap();
    let job_uid = kubectl(env, &["-n", NS, "get", "job", &job, "-o", "jsonpath={.metadata.uid}"]);
    let pod = format!("{job}-x1");
    let log = env.ensure_pod_logs(NS, &pod, &["app"]).unwrap().remove(0);
    let status = env
        .loggen_cmd()
        .arg("--file")
        .arg(&log)
        .args(["--count", &LINES.to_string(), "--rate", "0", "--size", "100", "--src", &pod, "--quiet"])
        .status()
        .unwrap();
    assert!(status.success());
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": NS, "labels": {"job-name": job},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": job_uid, "controller": true}]},
        "spec": {
            "nodeName": env.node_name, "restartPolicy": "Never",
            "containers": [{"name": "app", "image": "registry.invalid/e2e:1"}],
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
        }
    });
    env.kubectl_apply(&manifest.to_string()).unwrap();
    let uid = kubectl(env, &["-n", NS, "get", "pod", &pod, "-o", "jsonpath={.metadata.uid}"]);
    env.wait_logs_mapped(NS, &pod, "app", Duration::from_secs(60)).unwrap();

    // As soon as the capture has written its first batch, SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_signal = loop {
        let found = sources(&db, &uid).await;
        if let Some(source) = found.first().filter(|s| s.lines > 0) {
            break source.lines;
        }
        assert!(Instant::now() < deadline, "the capture never started:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap().success());
    assert!(at_signal < LINES, "the capture finished before the signal ({at_signal} lines): the test proves nothing; raise LINES");
    let exit = server.wait_exit(Duration::from_secs(90)).unwrap_or_else(|| panic!("kubelens did not exit:\n{}", server.log()));
    assert!(exit.success(), "{exit:?}\n{}", server.log());

    let archived = sources(&db, &uid).await;
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(
        archived[0].lines, LINES,
        "{at_signal} lines were archived at SIGTERM; the capture must finish before exit:\n{}",
        server.log()
    );
    let _ = env.kubectl(&["-n", NS, "delete", "job", &job, "--wait=false"]);
    let _ = env.kubectl(&["-n", NS, "delete", "pod", &pod, "--wait=false"]);
}
