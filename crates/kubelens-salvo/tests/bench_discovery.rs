//! Discovery benchmark on testenv (not a timed test: it measures and prints, and is
//! `#[ignore]`d so normal runs skip it). Results and the exact command live in
//! `docs/benchmarks/discovery.md`.
//!
//! `testenv/run -- cargo test --release -p kubelens-salvo --test bench_discovery -- --ignored --nocapture`
//!
//! 1. creates `BENCH_PODS` (default 5,000) pods in `team-b` with the admin client,
//! 2. waits until the backend (ServiceAccount client, real Keycloak token) lists them all,
//! 3. measures `GET /api/v1/namespaces/team-b/pods` latency (p50/p99 over 200 calls) and the
//!    API requests kubelens made meanwhile,
//! 4. creates 20 more pods one by one and measures creation → visible in the list and
//!    creation → `added` on the change stream,
//! 5. deletes everything it created.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod discovery_support;

use std::time::{Duration, Instant};

use discovery_support::start;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubelens_testenv::TestEnv;

fn bench_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-b", "labels": {"bench": "discovery", "app": "bench"}},
        "spec": {"nodeName": "kwok-node-1", "containers": [
            {"name": "app", "image": "registry.invalid/kubelens/demo:1.0"},
            {"name": "sidecar", "image": "registry.invalid/kubelens/demo:1.0"}
        ]}
    }))
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored --nocapture on a testenv"]
async fn discovery_benchmark() {
    let Some(env) = TestEnv::e2e() else { return };
    let count: usize = std::env::var("BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let kubeconfig = Kubeconfig::read_from(&env.kubeconfig).unwrap();
    let admin_config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    let admin = kube::Client::try_from(admin_config).unwrap();
    let pods: Api<Pod> = Api::namespaced(admin, "team-b");
    let _ = pods.delete_collection(&DeleteParams::default().grace_period(0), &ListParams::default().labels("bench=discovery")).await;

    let backend = start(env, "").await;
    let rss_before = rss_mib();
    let baseline = backend.pod_names("team-b").await.len();

    // 1. Create the pods, 16 at a time.
    let started = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let pods = pods.clone();
            async move { pods.create(&PostParams::default(), &bench_pod(&format!("bench-{i:05}"))).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    let created_in = started.elapsed();

    // 2. Wait until all are listed.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let listed = backend.pod_names("team-b").await.len();
        if listed >= baseline + count {
            break;
        }
        assert!(Instant::now() < deadline, "only {listed} of {} pods listed", baseline + count);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_listed_in = started.elapsed();
    // Let KWOK finish marking them Running so the list measurement is not racing a storm.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 3. List latency and API requests per list.
    let requests_before = backend.cluster.api_requests();
    let mut latencies = Vec::new();
    let mut bytes = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let res = backend
            .http
            .get(format!("{}/api/v1/namespaces/team-b/pods", backend.base))
            .bearer_auth(&backend.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        bytes = res.bytes().await.unwrap().len();
        latencies.push(t.elapsed());
    }
    let mut app_latencies = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let (status, _) = backend.get("/api/v1/namespaces/team-b/apps").await;
        assert_eq!(status, 200);
        app_latencies.push(t.elapsed());
    }
    let requests_after = backend.cluster.api_requests();
    latencies.sort();
    app_latencies.sort();

    // 4. Creation → visible.
    let mut events = backend.watch("team-b").await;
    let mut to_list = Vec::new();
    let mut to_stream = Vec::new();
    for i in 0..20 {
        let name = format!("bench-probe-{i:02}");
        let t = Instant::now();
        pods.create(&PostParams::default(), &bench_pod(&name)).await.unwrap();
        let created = t.elapsed();
        let from = Instant::now();
        let listed = loop {
            let ns = backend.cluster.pod(&backend.state.policy, &backend.state.policy.namespace("team-b").unwrap(), &name);
            if ns.is_ok() {
                break from.elapsed();
            }
            assert!(from.elapsed() < Duration::from_secs(30), "{name} never listed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        events.wait_for("added", &name, Duration::from_secs(30)).await.expect("added event");
        let streamed = from.elapsed();
        to_list.push(listed + created);
        to_stream.push(streamed + created);
    }
    to_list.sort();
    to_stream.sort();
    let rss_after = rss_mib();

    println!("\n=== discovery benchmark: {count} pods in team-b (+{baseline} seeded) ===");
    println!("create {count} pods (admin client, 16 in flight): {created_in:?}; all listed by kubelens after {all_listed_in:?}");
    println!(
        "GET /pods ({} pods, {} KiB JSON) x200: p50 {:?}  p99 {:?}  max {:?}",
        baseline + count,
        bytes / 1024,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    println!(
        "GET /apps x50: p50 {:?}  p99 {:?}",
        percentile(&app_latencies, 0.5),
        percentile(&app_latencies, 0.99)
    );
    println!(
        "API requests during the 250 list calls: total {} (watches {}), before {:?}, after {:?}",
        requests_after.total - requests_before.total,
        requests_after.watches - requests_before.watches,
        requests_before,
        requests_after
    );
    println!(
        "creation -> in list (create call included) x20: p50 {:?}  max {:?}",
        percentile(&to_list, 0.5),
        to_list.last().unwrap()
    );
    println!(
        "creation -> SSE added (create call included) x20: p50 {:?}  max {:?}",
        percentile(&to_stream, 0.5),
        to_stream.last().unwrap()
    );
    println!("test process RSS: {rss_before:.0} MiB before, {rss_after:.0} MiB after (backend + caches + test client)");

    // 5. Clean up (one collection delete of 5,000 pods can outlast a request timeout: the
    // apiserver keeps deleting, so an error here is only reported).
    if let Err(err) = pods
        .delete_collection(&DeleteParams::default().grace_period(0), &ListParams::default().labels("bench=discovery"))
        .await
    {
        eprintln!("cleanup: {err} (the apiserver keeps deleting in the background)");
    }
}
