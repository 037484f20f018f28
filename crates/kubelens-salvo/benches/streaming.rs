//! Side-by-side streaming benchmarks of issue 7, on the running testenv, against the real
//! `kubelens` binary (built in the bench profile = release: thin LTO, 4 codegen units).
//!
//! ```text
//! testenv/run -- cargo bench -p kubelens-salvo --bench streaming -- [chatty] [fanout] [app] [idle] [quick]
//! scripts/bench-streaming.sh [scenario…]        # same, with `ulimit -n 20000` and a log file
//! ```
//!
//! * `chatty` — one pod fed by `loggen` at 5k and 20k lines/s and as fast as possible: lines/s
//!   delivered to our SSE client and to `kubectl logs -f --timestamps` on the same pod at the
//!   same time, and the added latency (receive time − the line's CRI timestamp) of both.
//! * `fanout` — 1, 10, 100 SSE viewers of one pod: upstream log requests seen by the
//!   kube-apiserver (its own `/metrics`), kubelens CPU seconds (`/proc/<pid>/stat`).
//! * `app` — an app (bare ReplicaSet) of 100 pods: time until lines from every pod arrived on
//!   our app SSE stream and on `stern` started at the same moment, then live-line latency, and
//!   both processes' CPU.
//! * `idle` — 5,000 idle SSE connections following one quiet pod: kubelens RSS growth per
//!   connection (raw `TcpStream` clients with a 256-byte read buffer each), a plain keep-alive
//!   baseline, and the same 5,000 streams over HTTP/2: multiplexed on a few h2c connections
//!   (`BENCH_IDLE_H2_CONNECTIONS`, default 5), RSS growth per stream.
//!
//! Every wait is bounded; all traffic stays on 127.0.0.1. Results: docs/benchmarks/streaming.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kubelens_testenv::TestEnv;
use rand::Rng;
use support::Kubelens;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "team-a";

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench binaries without it,
    // and a benchmark is not a test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("streaming: a benchmark; run it with `cargo bench -p kubelens-salvo --bench streaming` (skipped)");
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let quick = args.iter().any(|a| a == "quick");
    let mut scenarios: Vec<String> = args.into_iter().filter(|a| a != "quick").collect();
    if scenarios.is_empty() || scenarios.iter().any(|s| s == "all") {
        scenarios = ["chatty", "fanout", "app", "idle"].map(String::from).to_vec();
    }
    let env = TestEnv::require();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    machine_notes(env);
    for scenario in &scenarios {
        println!();
        match scenario.as_str() {
            "chatty" => runtime.block_on(chatty(env, quick)),
            "fanout" => runtime.block_on(fanout(env, quick)),
            "app" => runtime.block_on(app(env, quick)),
            "idle" => runtime.block_on(idle(env, quick)),
            other => panic!("unknown scenario {other:?} (chatty, fanout, app, idle, quick)"),
        }
    }
}

// ---- machine and process measurements ---------------------------------------------------------

fn machine_notes(env: &TestEnv) {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().next().unwrap_or_default().to_owned();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .unwrap_or_default()
        .to_owned();
    let kubectl = env.kubectl(&["version", "--client"]).unwrap_or_default().lines().next().unwrap_or_default().to_owned();
    println!("# machine: {cpus} CPUs ({model}), {mem}; {kubectl}; loadavg {}", loadavg());
    println!("# kubelens binary: {}", env!("CARGO_BIN_EXE_kubelens"));
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else { return f64::NAN };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: [0] = state (field 3), so utime (14) is [11], stime (15) is [12].
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (tick(11) + tick(12)) / clk_tck()
}

/// A `/proc/<pid>/status` value in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start_matches(':').split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_files_limit(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Max open files")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The pid of the `kubelens` child: the process whose command line names its config file
/// (the support harness keeps the `Child` private).
fn kubelens_pid(server: &Kubelens) -> u32 {
    let config = server.dir.path().join("config.yaml");
    let needle = config.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("kubelens") && cmdline.contains(&needle) {
            return pid;
        }
    }
    panic!("kubelens process not found");
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

fn parse_ts_ns(ts: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(ts).ok()?.timestamp_nanos_opt()
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

/// `p50 / p99 / max` in ms of latencies in ns.
fn latency_summary(lat: &mut [i64]) -> (f64, f64, f64) {
    lat.sort_unstable();
    (percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 1.0))
}

// ---- kube-apiserver and kubelens metrics ------------------------------------------------------

/// `pods/log` requests as the kube-apiserver counts them (independent of kubelens).
#[derive(Debug, Clone, Default)]
struct ApiLogRequests {
    /// `apiserver_request_total` summed over verbs/codes (long-running requests are counted
    /// when they finish).
    total: f64,
    by_verb: BTreeMap<String, f64>,
    /// `apiserver_longrunning_requests`: log requests open right now.
    open: f64,
}

async fn api_log_requests(env: &TestEnv) -> ApiLogRequests {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(|| env.apiserver_client().unwrap());
    let text = client
        .get(format!("{}/metrics", env.apiserver_url))
        .bearer_auth(&env.admin_token)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = ApiLogRequests::default();
    for line in text.lines() {
        if line.starts_with('#') || !line.contains("resource=\"pods\"") || !line.contains("subresource=\"log\"") {
            continue;
        }
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        if line.starts_with("apiserver_request_total{") {
            let verb = line.split("verb=\"").nth(1).and_then(|v| v.split('"').next()).unwrap_or("?").to_owned();
            out.total += value;
            *out.by_verb.entry(verb).or_default() += value;
        } else if line.starts_with("apiserver_longrunning_requests{") || line.starts_with("apiserver_longrunning_gauge{") {
            out.open += value;
        }
    }
    out
}

/// Waits (bounded) until the apiserver has `target` log requests open; returns what it saw.
async fn wait_open_log_requests(env: &TestEnv, target: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let open = api_log_requests(env).await.open;
        if open == target || Instant::now() > deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn verbs_delta(before: &ApiLogRequests, after: &ApiLogRequests) -> String {
    after
        .by_verb
        .iter()
        .map(|(verb, v)| format!("{verb}={}", v - before.by_verb.get(verb).copied().unwrap_or(0.0)))
        .collect::<Vec<_>>()
        .join(",")
}

/// kubelens' own counters that say something about upstreams.
async fn kubelens_metrics(base: &str) -> BTreeMap<String, f64> {
    let Ok(resp) = reqwest::Client::new().get(format!("{base}/metrics")).timeout(Duration::from_secs(10)).send().await else {
        return BTreeMap::new();
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with("kubelens_kube_api_requests_total") || l.starts_with("kubelens_log_") || l.contains("upstream") || l.starts_with("kubelens_sse_streams_open"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn metrics_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    after.iter().map(|(k, v)| format!("{k} +{}", v - before.get(k).copied().unwrap_or(0.0))).collect::<Vec<_>>().join("; ")
}

// ---- cluster fixtures -------------------------------------------------------------------------

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::rng().random::<u32>())
}

fn pod_manifest(env: &TestEnv, name: &str, labels: serde_json::Value, owner: Option<(&str, &str)>) -> serde_json::Value {
    let mut meta = serde_json::json!({"name": name, "namespace": NS, "labels": labels});
    if let Some((rs, uid)) = owner {
        meta["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": uid, "controller": true}]);
    }
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {
            "nodeName": env.node_name,
            "containers": [{"name": "app", "image": "registry.invalid/bench:1"}],
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
        }
    })
}

fn logs_manifest(env: &TestEnv, pod: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
        "metadata": {"name": pod, "namespace": NS},
        "spec": {"logs": [{"containers": ["app"], "logsFile": env.log_path(NS, pod, "app"),
                           "previousLogsFile": env.previous_log_path(NS, pod, "app"), "follow": true}]},
    })
}

/// Creates pods (log files, KWOK `Logs` objects, pods) in one `kubectl apply` and waits
/// (bounded) until every one of them runs.
fn create_pods(env: &TestEnv, pods: &[String], labels: serde_json::Value, owner: Option<(&str, &str)>) {
    let mut items = Vec::new();
    for pod in pods {
        let path = env.log_path(NS, pod, "app");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        items.push(logs_manifest(env, pod));
    }
    for pod in pods {
        items.push(pod_manifest(env, pod, labels.clone(), owner));
    }
    for chunk in items.chunks(50) {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": chunk});
        env.kubectl_apply(&list.to_string()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let out = env
            .kubectl(&["-n", NS, "get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.phase}{\"\\n\"}{end}"])
            .unwrap_or_default();
        let running: std::collections::BTreeSet<&str> =
            out.lines().filter_map(|l| l.strip_suffix(" Running")).collect();
        let missing = pods.iter().filter(|p| !running.contains(p.as_str())).count();
        if missing == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{missing} of {} pods not Running", pods.len());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// KWOK leaves `containerID` empty and stern skips such containers ("Container ID is empty"),
/// so give each pod's container an id the way a kubelet would (status subresource, strategic
/// merge by container name). Done before kubelens starts, so it sees a single instance.
async fn set_container_ids(env: &TestEnv, pods: &[String]) {
    // Let KWOK finish its own status patches first (a later one of its could drop the id).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let client = env.apiserver_client().unwrap();
    for pod in pods {
        let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let patch = serde_json::json!({"status": {"containerStatuses": [{
            "name": "app", "containerID": format!("containerd://bench-{pod}"), "image": "registry.invalid/bench:1",
            "imageID": "", "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": started}},
        }]}});
        let resp = client
            .patch(format!("{}/api/v1/namespaces/{NS}/pods/{pod}/status", env.apiserver_url))
            .bearer_auth(&env.admin_token)
            .header("content-type", "application/strategic-merge-patch+json")
            .body(patch.to_string())
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "patch {pod}: {}", resp.text().await.unwrap_or_default());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = env
        .kubectl(&["-n", NS, "get", "pods", "-o", "jsonpath={range .items[*]}{.status.containerStatuses[0].containerID}{\"\\n\"}{end}"])
        .unwrap_or_default();
    let with_id = pods.iter().filter(|p| out.contains(&format!("bench-{p}\n"))).count();
    assert_eq!(with_id, pods.len(), "containerID patch did not stick (KWOK reverted it?)");
}

fn delete_pods(env: &TestEnv, pods: &[String]) {
    for chunk in pods.chunks(50) {
        let mut args = vec!["-n", NS, "delete", "pod", "--grace-period=0", "--force", "--wait=false", "--ignore-not-found"];
        args.extend(chunk.iter().map(String::as_str));
        let _ = env.kubectl(&args);
    }
}

fn loggen(env: &TestEnv, path: &Path, src: &str, count: u64, rate: u64, size: u32) -> Child {
    env.loggen_cmd()
        .arg("--file")
        .arg(path)
        .args(["--count", &count.to_string(), "--rate", &rate.to_string(), "--size", &size.to_string(), "--src", src, "--quiet"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

async fn viewer_token(env: &TestEnv) -> String {
    env.password_token(&env.web_client_id, "viewer").await
}

/// kubelens with caps raised for the benchmarks (5,000 streams of one user).
fn start_kubelens(env: &TestEnv) -> (Kubelens, u32) {
    start_kubelens_with(env, "")
}

/// [`start_kubelens`] with `server_extra` added to the `server:` section.
fn start_kubelens_with(env: &TestEnv, server_extra: &str) -> (Kubelens, u32) {
    // BENCH_SSE_COALESCE (e.g. `0s`, `5ms`) overrides `logs.sse_write_coalesce` for A/B runs.
    let coalesce = std::env::var("BENCH_SSE_COALESCE").map(|v| format!("  sse_write_coalesce: {v}\n")).unwrap_or_default();
    let server = Kubelens::start_with_server(
        env,
        server_extra,
        &format!("logs:\n  max_streams_per_user: 20000\n  max_upstream_streams: 2000\n{coalesce}"),
    );
    let pid = kubelens_pid(&server);
    (server, pid)
}

// ---- SSE client (reqwest; for the few-connection scenarios) -----------------------------------

struct Frame {
    event: String,
    id: Option<String>,
    data: String,
}

struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    start: usize,
    /// Wall-clock ns when the chunk holding the end of the last returned frame arrived.
    recv_ns: i64,
}

impl Sse {
    async fn open(client: &reqwest::Client, url: &str, token: &str, last_event_id: Option<&str>) -> Result<Sse, u16> {
        let mut req = client.get(url).bearer_auth(token).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.map_err(|_| 0u16)?;
        if !resp.status().is_success() {
            return Err(resp.status().as_u16());
        }
        Ok(Sse { body: resp.bytes_stream().boxed(), buf: Vec::with_capacity(64 * 1024), start: 0, recv_ns: 0 })
    }

    /// Next frame (comments and `retry:` skipped); `None` at the end, on error or at `deadline`.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Frame> {
        loop {
            if let Some(end) = self.buf[self.start..].windows(2).position(|w| w == b"\n\n") {
                let frame = &self.buf[self.start..self.start + end];
                self.start += end + 2;
                let text = std::str::from_utf8(frame).ok()?;
                let (mut event, mut id, mut data) = (None, None, None);
                for line in text.split('\n') {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(v.to_owned());
                    }
                }
                if let Some(data) = data {
                    return Some(Frame { event: event.unwrap_or_else(|| "message".into()), id, data });
                }
                continue;
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.recv_ns = now_ns();
                    self.buf.extend_from_slice(&chunk);
                }
                _ => return None,
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct LogData<'a> {
    #[serde(borrow)]
    ts: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    line: std::borrow::Cow<'a, str>,
}

/// `seq=<n>` and `src=<label>` of a loggen / bench line.
fn seq_src(line: &str) -> (Option<u64>, Option<&str>) {
    let (mut seq, mut src) = (None, None);
    for word in line.split(' ') {
        if let Some(v) = word.strip_prefix("seq=") {
            seq = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("src=") {
            src = Some(v);
        }
    }
    (seq, src)
}

/// What one peer received of a single pod's stream.
#[derive(Default)]
struct PeerStats {
    lines: u64,
    gaps_or_dups: u64,
    first_recv_ns: i64,
    last_recv_ns: i64,
    first_ts_ns: i64,
    last_ts_ns: i64,
    latencies: Vec<i64>,
}

/// Reads a peer process's stdout line by line (bounded: `count` lines or 180 s) and records
/// each line `parse` turns into (generator timestamp ns, sequence number).
fn read_peer(stdout: impl std::io::Read, count: u64, parse: impl Fn(&str) -> Option<(i64, Option<u64>)>) -> PeerStats {
    let mut stats = PeerStats { latencies: Vec::with_capacity(count as usize), ..PeerStats::default() };
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while stats.lines < count && Instant::now() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let recv = now_ns();
        if let Some((ts, seq)) = parse(line.trim_end()) {
            stats.record(recv, ts, seq);
        }
    }
    stats
}

impl PeerStats {
    fn record(&mut self, recv_ns: i64, ts_ns: i64, seq: Option<u64>) {
        if self.lines == 0 {
            self.first_recv_ns = recv_ns;
            self.first_ts_ns = ts_ns;
        }
        self.lines += 1;
        if seq != Some(self.lines) {
            self.gaps_or_dups += 1;
        }
        self.last_recv_ns = recv_ns;
        self.last_ts_ns = ts_ns;
        self.latencies.push(recv_ns - ts_ns);
    }
}

// ---- 1. one chatty pod: kubelens SSE vs kubectl logs -f --------------------------------------

async fn chatty(env: &TestEnv, quick: bool) {
    let (server, pid) = start_kubelens(env);
    let token = viewer_token(env).await;
    let client = reqwest::Client::new();
    let runs: &[(u64, u64)] = if quick { &[(5_000, 20_000), (20_000, 40_000), (0, 50_000)] } else { &[(5_000, 50_000), (20_000, 200_000), (0, 300_000)] };
    println!("## chatty: one pod, loggen --size 120, our SSE client and `kubectl logs -f --timestamps` side by side (loadavg {})", loadavg());
    println!(
        "| loggen rate | lines | peer | received | gaps/dups | delivered lines/s | ratio vs kubectl | added latency p50 / p99 / max (ms) | generator lines/s | CPU s (process) |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---|---:|---:|");
    let mut pods = Vec::new();
    for &(rate, count) in runs {
        let pod = unique("bench-chatty");
        create_pods(env, std::slice::from_ref(&pod), serde_json::json!({"bench": "chatty"}), None);
        pods.push(pod.clone());
        let path = env.log_path(NS, &pod, "app");
        let base_open = api_log_requests(env).await.open;

        // kubectl peer: a thread reading its stdout line by line.
        let mut kubectl = env
            .kubectl_cmd()
            .args(["-n", NS, "logs", "-f", "--timestamps", &pod])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kubectl_pid = kubectl.id();
        let stdout = kubectl.stdout.take().unwrap();
        // `kubectl logs --timestamps` prints `<RFC3339Nano> <line>`.
        let kubectl_reader = std::thread::spawn(move || {
            read_peer(stdout, count, |line| {
                let (ts, text) = line.split_once(' ')?;
                Some((parse_ts_ns(ts)?, seq_src(text).0))
            })
        });

        // Our SSE client.
        let url = format!("{}/api/v1/namespaces/{NS}/pods/{pod}/logs", server.url);
        let mut sse = Sse::open(&client, &url, &token, None).await.unwrap_or_else(|s| panic!("SSE open: {s}"));
        let (client2, token2) = (client.clone(), token.clone());
        let ours = tokio::spawn(async move {
            let mut stats = PeerStats { latencies: Vec::with_capacity(count as usize), ..PeerStats::default() };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
            let (mut lagged, mut last_id) = (0u32, None::<String>);
            while stats.lines < count {
                let Some(frame) = sse.next(deadline).await else {
                    // A `lagged` viewer is cut loose; a real client resumes with its last id.
                    if lagged == 0 || lagged > 100 || tokio::time::Instant::now() > deadline {
                        break;
                    }
                    match Sse::open(&client2, &url, &token2, last_id.as_deref()).await {
                        Ok(again) => sse = again,
                        Err(_) => break,
                    }
                    continue;
                };
                if frame.event == "lagged" {
                    lagged += 1;
                }
                if frame.event != "log" {
                    continue;
                }
                last_id = frame.id;
                let data: LogData = serde_json::from_str(&frame.data).unwrap();
                let Some(ts) = parse_ts_ns(&data.ts) else { continue };
                stats.record(sse.recv_ns, ts, seq_src(&data.line).0);
            }
            (stats, lagged)
        });
        // Optional third peer (BENCH_CURL_PEER=1): `curl -N` on the same SSE URL, read by a
        // blocking thread like kubectl's, to tell the bench's own async client apart from
        // kubelens in the latency. It joins our hub: still 2 upstream requests.
        let curl_peer = std::env::var("BENCH_CURL_PEER").is_ok_and(|v| v == "1").then(|| {
            let header = server.dir.path().join("auth-header");
            std::fs::write(&header, format!("Authorization: Bearer {token}\nAccept: text/event-stream\n")).unwrap();
            let mut curl = Command::new("curl")
                .args(["-sN", "--max-time", "300", "-H"])
                .arg(format!("@{}", header.display()))
                .arg(format!("{}/api/v1/namespaces/{NS}/pods/{pod}/logs", server.url))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = curl.stdout.take().unwrap();
            // `curl -N` prints the raw SSE stream; only `data:` lines carry log lines.
            let reader = std::thread::spawn(move || {
                read_peer(stdout, count, |line| {
                    let data = serde_json::from_str::<LogData>(line.strip_prefix("data: ")?).ok()?;
                    Some((parse_ts_ns(&data.ts)?, seq_src(&data.line).0))
                })
            });
            (curl, reader)
        });
        let open = wait_open_log_requests(env, base_open + 2.0, Duration::from_secs(20)).await;
        if open != base_open + 2.0 {
            println!("<!-- warning: {open} log requests open, expected {} -->", base_open + 2.0);
        }
        let cpu0 = cpu_seconds(pid);
        let started = Instant::now();
        let start_ns = now_ns();
        let mut generator = loggen(env, &path, &pod, count, rate, 120);
        let (ours, lagged) = ours.await.unwrap();
        let cpu1 = cpu_seconds(pid);
        let theirs = tokio::task::spawn_blocking(move || kubectl_reader.join().unwrap()).await.unwrap();
        let curl_stats = match curl_peer {
            Some((mut curl, reader)) => {
                let stats = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
                let _ = curl.kill();
                let _ = curl.wait();
                Some(stats)
            }
            None => None,
        };
        let kubectl_cpu = cpu_seconds(kubectl_pid);
        let _ = kubectl.kill();
        let _ = kubectl.wait();
        let _ = generator.wait();
        let wall = started.elapsed();
        let rate_of = |s: &PeerStats| s.lines as f64 / ((s.last_recv_ns - start_ns) as f64 / 1e9);
        let gen_rate = |s: &PeerStats| s.lines as f64 / ((s.last_ts_ns - s.first_ts_ns).max(1) as f64 / 1e9);
        let ratio = rate_of(&ours) / rate_of(&theirs);
        let rate_label = if rate == 0 { "max (0)".to_owned() } else { rate.to_string() };
        let their_rate = rate_of(&theirs);
        let mut peers = vec![
            ("kubelens SSE", ours, format!("{:.2}", cpu1 - cpu0), format!("**{ratio:.3}**")),
            ("kubectl logs -f", theirs, format!("{kubectl_cpu:.2}"), "1".to_owned()),
        ];
        if let Some(stats) = curl_stats {
            let r = rate_of(&stats) / their_rate;
            peers.push(("kubelens SSE via `curl -N` (2nd viewer)", stats, "–".to_owned(), format!("{r:.3}")));
        }
        for (peer, stats, cpu, ratio) in peers {
            let delivered = rate_of(&stats);
            let generated = gen_rate(&stats);
            let (lines, gaps) = (stats.lines, stats.gaps_or_dups);
            let mut lat = stats.latencies;
            let (p50, p99, max) = latency_summary(&mut lat);
            println!(
                "| {rate_label} | {count} | {peer} | {lines} | {gaps} | {delivered:.0} | {ratio} | {p50:.1} / {p99:.1} / {max:.1} | {generated:.0} | {cpu} |"
            );
        }
        println!("<!-- run wall {wall:.1?}, our client lagged (and resumed) {lagged} times, loadavg {} -->", loadavg());
        wait_open_log_requests(env, base_open, Duration::from_secs(30)).await;
    }
    drop(server);
    delete_pods(env, &pods);
}

// ---- 2. fan-out: 1, 10, 100 viewers of one pod -----------------------------------------------

async fn fanout(env: &TestEnv, quick: bool) {
    let (server, pid) = start_kubelens(env);
    let token = viewer_token(env).await;
    // BENCH_FANOUT_RATE (lines/s, default 1,000) and BENCH_FANOUT_VIEWERS (default `1,10,100`)
    // for the other points of issue 17: 5,000 lines/s, 1,000 viewers. The run lasts 10 s (5 s
    // in quick mode) whatever the rate.
    let rate: u64 = std::env::var("BENCH_FANOUT_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let count = rate * if quick { 5 } else { 10 };
    let viewers: Vec<usize> = std::env::var("BENCH_FANOUT_VIEWERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100]);
    println!("## fanout: N SSE viewers of one pod, loggen {rate} lines/s × {count} lines --size 120 (loadavg {})", loadavg());
    println!("| viewers | upstream log requests (apiserver_request_total Δ) | peak open log requests (apiserver) | kubelens counters Δ | lines per viewer (min) | lagged | last line after (s) | kubelens CPU s | CPU vs N=1 |");
    println!("|---:|---|---:|---|---:|---:|---:|---:|---:|");
    let mut cpu_n1 = None;
    let mut pods = Vec::new();
    for n in viewers {
        let pod = unique("bench-fanout");
        create_pods(env, std::slice::from_ref(&pod), serde_json::json!({"bench": "fanout"}), None);
        pods.push(pod.clone());
        let path = env.log_path(NS, &pod, "app");
        let api0 = api_log_requests(env).await;
        let kl0 = kubelens_metrics(&server.url).await;
        let url = format!("{}/api/v1/namespaces/{NS}/pods/{pod}/logs", server.url);
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let opened = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (client, url, token, opened) = (client.clone(), url.clone(), token.clone(), opened.clone());
            tasks.push(tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
                let (mut lines, mut lagged, mut last_id, mut last_recv) = (0u64, 0u32, None::<String>, 0i64);
                let mut first = true;
                while lines < count && lagged < 50 && tokio::time::Instant::now() < deadline {
                    let Ok(mut sse) = Sse::open(&client, &url, &token, last_id.as_deref()).await else { break };
                    if first {
                        opened.fetch_add(1, Ordering::SeqCst);
                        first = false;
                    }
                    while lines < count {
                        let Some(frame) = sse.next(deadline).await else { break };
                        match frame.event.as_str() {
                            "log" => {
                                lines += 1;
                                last_id = frame.id;
                                last_recv = sse.recv_ns;
                            }
                            "lagged" => {
                                lagged += 1;
                                break;
                            }
                            _ => {}
                        }
                    }
                }
                (lines, lagged, last_recv)
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while opened.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let open_before = wait_open_log_requests(env, api0.open + 1.0, Duration::from_secs(20)).await;
        let perf = perf_record(pid, &format!("fanout-{n}"));
        let cpu0 = cpu_seconds(pid);
        let start_ns = now_ns();
        let mut generator = loggen(env, &path, &pod, count, rate, 120);
        let mut peak_open = open_before - api0.open;
        let mut results = Vec::new();
        for task in tasks {
            while !task.is_finished() {
                peak_open = peak_open.max(api_log_requests(env).await.open - api0.open);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            results.push(task.await.unwrap());
        }
        let cpu = cpu_seconds(pid) - cpu0;
        perf_stop(perf);
        let _ = generator.wait();
        // The hub lingers 3 s after its last viewer, then drops the upstream request; the
        // apiserver counts a long-running request when it ends.
        wait_open_log_requests(env, api0.open, Duration::from_secs(30)).await;
        let api1 = api_log_requests(env).await;
        let kl1 = kubelens_metrics(&server.url).await;
        let min_lines = results.iter().map(|r| r.0).min().unwrap_or(0);
        let lagged: u32 = results.iter().map(|r| r.1).sum();
        let last = results.iter().map(|r| r.2).max().unwrap_or(0);
        let n1 = *cpu_n1.get_or_insert(cpu);
        println!(
            "| {n} | **{}** ({}) | {peak_open} | {} | {min_lines} | {lagged} | {:.2} | {cpu:.2} | {:.2}× |",
            api1.total - api0.total,
            verbs_delta(&api0, &api1),
            metrics_delta(&kl0, &kl1),
            (last - start_ns) as f64 / 1e9,
            cpu / n1,
        );
    }
    println!("<!-- loadavg {} -->", loadavg());
    drop(server);
    delete_pods(env, &pods);
}

/// With `BENCH_PERF_DIR` set: `perf record -g` of the kubelens process into
/// `$BENCH_PERF_DIR/<label>.perf.data` (see docs/benchmarks/streaming.md for the report).
fn perf_record(pid: u32, label: &str) -> Option<Child> {
    let dir = std::env::var_os("BENCH_PERF_DIR")?;
    std::fs::create_dir_all(&dir).ok()?;
    let out = Path::new(&dir).join(format!("{label}.perf.data"));
    Command::new("perf")
        .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn perf_stop(perf: Option<Child>) {
    if let Some(mut perf) = perf {
        let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = perf.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = perf.kill();
        let _ = perf.wait();
    }
}

// ---- 3. app of 100 pods: kubelens app stream vs stern ----------------------------------------

fn stern_path() -> PathBuf {
    if let Ok(p) = std::env::var("STERN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/kubelens-bench/bin/stern")
}

/// inotify instances open on the machine (readable `/proc/*/fd` links).
fn inotify_instances() -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir("/proc").map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        count += fds.flatten().filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:inotify")).count();
    }
    count
}

/// Per-client arrival bookkeeping of the app scenario: first seed line and each live round's
/// line, per pod.
struct Arrivals {
    seed: BTreeMap<String, i64>,
    live: Vec<BTreeMap<String, i64>>,
}

impl Arrivals {
    fn new(rounds: usize) -> Self {
        Self { seed: BTreeMap::new(), live: vec![BTreeMap::new(); rounds] }
    }

    fn record(&mut self, recv_ns: i64, line: &str) {
        let (seq, src) = seq_src(line);
        let (Some(seq), Some(src)) = (seq, src) else { return };
        if line.contains("phase=seed") {
            self.seed.entry(src.to_owned()).or_insert(recv_ns);
        } else if let Some(round) = seq.checked_sub(1001).map(|r| r as usize)
            && round < self.live.len()
        {
            self.live[round].entry(src.to_owned()).or_insert(recv_ns);
        }
    }
}

async fn app(env: &TestEnv, quick: bool) {
    let stern = stern_path();
    assert!(stern.exists(), "stern not found at {} (GOBIN=$HOME/.cache/kubelens-bench/bin go install github.com/stern/stern@v1.33.0, or STERN=path)", stern.display());
    // BENCH_APP_PODS: KWOK's kubelet log reader takes one inotify instance per follow stream
    // (fs.inotify.max_user_instances, 128 by default, shared by every process of the user), so
    // both clients' streams together must fit; see docs/benchmarks/streaming.md.
    let n = std::env::var("BENCH_APP_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick { 30 } else { 100 });
    // BENCH_APP_RATE > 0: live lines at that many lines/s per pod for BENCH_APP_SECONDS (3)
    // instead of 5 rounds 1 s apart (issue 17's "50 pods at 100 lines/s each").
    let rate: u32 = std::env::var("BENCH_APP_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let seconds: u32 = std::env::var("BENCH_APP_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let (rounds, every) = if rate > 0 {
        ((rate * seconds) as usize, Duration::from_secs(1) / rate)
    } else {
        (5usize, Duration::from_secs(1))
    };
    let name = unique("bench-app");
    let rs = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "registry.invalid/bench:1"}]}}}
    });
    env.kubectl_apply(&rs.to_string()).unwrap();
    let uid = env.kubectl(&["-n", NS, "get", "replicaset", &name, "-o", "jsonpath={.metadata.uid}"]).unwrap();
    let pods: Vec<String> = (0..n).map(|i| format!("{name}-p{i}")).collect();
    let created = Instant::now();
    // Seed lines first: both clients find 10 lines per pod when they start.
    for pod in &pods {
        let lines: Vec<String> = (1..=10).map(|k| format!("seq={k} src={pod} phase=seed")).collect();
        kubelens_testenv::append_cri_lines(&env.log_path(NS, pod, "app"), &lines).unwrap();
    }
    create_pods(env, &pods, serde_json::json!({"app": name}), Some((&name, &uid)));
    set_container_ids(env, &pods).await;
    println!("## app: {n} pods (bare ReplicaSet), our app SSE stream vs stern v1.33.0 started at the same moment (pods created in {:.1?}; loadavg {})", created.elapsed(), loadavg());
    let (server, pid) = start_kubelens(env);
    let token = viewer_token(env).await;
    // Let the pod cache see every pod before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api0 = api_log_requests(env).await;
    let inotify = |path: &str| std::fs::read_to_string(path).unwrap_or_default().trim().to_owned();
    println!(
        "<!-- fs.inotify.max_user_instances {}, inotify instances in use {} (each follow stream in KWOK takes one) -->",
        inotify("/proc/sys/fs/inotify/max_user_instances"),
        inotify_instances()
    );

    let cpu0 = cpu_seconds(pid);
    let t0 = now_ns();
    let mut stern_child = Command::new(&stern)
        .args(["--kubeconfig"])
        .arg(&env.kubeconfig)
        .args(["-n", NS, "--selector", &format!("app={name}"), "--since", "1h", "--max-log-requests", "300", "-o", "raw", "--color", "never"])
        .args(std::env::var("STERN_EXTRA_ARGS").unwrap_or_default().split_whitespace())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(std::env::temp_dir().join("kubelens-bench-stern.err")).unwrap())
        .spawn()
        .unwrap();
    let stern_pid = stern_child.id();
    let stern_arrivals = Arc::new(Mutex::new(Arrivals::new(rounds)));
    let stern_stdout = stern_child.stdout.take().unwrap();
    let sa = stern_arrivals.clone();
    let stern_reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stern_stdout);
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => sa.lock().unwrap().record(now_ns(), line.trim_end()),
            }
        }
    });

    let our_arrivals = Arc::new(Mutex::new(Arrivals::new(rounds)));
    let url = format!("{}/api/v1/namespaces/{NS}/apps/{name}/logs", server.url);
    let oa = our_arrivals.clone();
    let client = reqwest::Client::new();
    let ours = tokio::spawn(async move {
        let mut sse = Sse::open(&client, &url, &token, None).await.unwrap_or_else(|s| panic!("app SSE open: {s}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        let mut statuses = BTreeMap::<String, u32>::new();
        while let Some(frame) = sse.next(deadline).await {
            if frame.event == "log" {
                let data: LogData = serde_json::from_str(&frame.data).unwrap();
                oa.lock().unwrap().record(sse.recv_ns, &data.line);
            } else if frame.event == "status" {
                let v: serde_json::Value = serde_json::from_str(&frame.data).unwrap_or_default();
                *statuses.entry(format!("{}/{}", v["state"].as_str().unwrap_or(""), v["reason"].as_str().unwrap_or(""))).or_default() += 1;
            }
        }
        statuses
    });

    // Phase A: time until a line from every pod arrived.
    let all_seeded = |a: &Arc<Mutex<Arrivals>>| a.lock().unwrap().seed.len() >= n;
    let deadline = Instant::now() + Duration::from_secs(180);
    while !(all_seeded(&our_arrivals) && all_seeded(&stern_arrivals)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_a = cpu_seconds(pid);
    let stern_cpu_a = cpu_seconds(stern_pid);
    let api_mid = api_log_requests(env).await;

    // Phase B: `rounds` live rounds, one line per pod each, `every` apart (1 s, or 1/rate),
    // all stamped with the round's write time.
    if rate > 0 {
        println!("<!-- phase B: {rate} lines/s per pod for {seconds} s ({} lines/s in all) -->", rate as usize * n);
    }
    let mut round_ts = Vec::new();
    let mut tick = tokio::time::interval(every);
    for round in 0..rounds {
        tick.tick().await;
        let ts = chrono::Utc::now();
        for pod in &pods {
            let line = format!("seq={} src={pod} phase=live", 1001 + round);
            kubelens_testenv::append_cri_lines_at(&env.log_path(NS, pod, "app"), ts, "stdout", &[line]).unwrap();
        }
        round_ts.push(ts.timestamp_nanos_opt().unwrap_or(0));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all_live = |a: &Arc<Mutex<Arrivals>>| a.lock().unwrap().live.iter().all(|r| r.len() >= n);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(all_live(&our_arrivals) && all_live(&stern_arrivals)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_b = cpu_seconds(pid);
    let stern_cpu_b = cpu_seconds(stern_pid);
    let open_peak = api_mid.open - api0.open;
    let _ = stern_child.kill();
    let _ = stern_child.wait();
    let _ = stern_reader.join();
    drop(server);
    let statuses = tokio::time::timeout(Duration::from_secs(10), ours).await.ok().and_then(Result::ok).unwrap_or_default();

    println!("| client | pods with a line | time until every pod's first line (s) | median pod first line (s) | live lines (of {}) | live latency p50 / p99 / max (ms) | round complete p50 / max (ms) | CPU s phase A / B |", n * rounds);
    println!("|---|---:|---:|---:|---:|---|---|---|");
    for (client, arrivals, cpu_a, cpu_b) in [
        ("kubelens app SSE", &our_arrivals, cpu_a - cpu0, cpu_b - cpu_a),
        ("stern", &stern_arrivals, stern_cpu_a, stern_cpu_b - stern_cpu_a),
    ] {
        let a = arrivals.lock().unwrap();
        let mut firsts: Vec<i64> = a.seed.values().map(|v| v - t0).collect();
        firsts.sort_unstable();
        let all = if a.seed.len() >= n { format!("{:.2}", *firsts.last().unwrap_or(&0) as f64 / 1e9) } else { format!("— ({} pods)", a.seed.len()) };
        let median = percentile(&firsts, 0.5) / 1e3;
        let mut lat = Vec::new();
        let mut complete = Vec::new();
        for (round, arrivals) in a.live.iter().enumerate() {
            lat.extend(arrivals.values().map(|v| v - round_ts[round]));
            if arrivals.len() >= n {
                complete.push(arrivals.values().max().unwrap_or(&0) - round_ts[round]);
            }
        }
        let live = lat.len();
        let (p50, p99, max) = latency_summary(&mut lat);
        complete.sort_unstable();
        let (c50, cmax) = (percentile(&complete, 0.5), percentile(&complete, 1.0));
        println!(
            "| {client} | {} | {all} | {median:.2} | {live} | {p50:.0} / {p99:.0} / {max:.0} | {c50:.0} / {cmax:.0} | {cpu_a:.2} / {cpu_b:.2} |",
            a.seed.len()
        );
    }
    let stern_err = std::fs::read_to_string(std::env::temp_dir().join("kubelens-bench-stern.err")).unwrap_or_default();
    let (started, ended) = (stern_err.lines().filter(|l| l.starts_with("+ ")).count(), stern_err.lines().filter(|l| l.starts_with("- ")).count());
    println!("<!-- stern tails started {started}, ended before stern was stopped {ended} (its stderr: `+`/`-` lines) -->");
    println!(
        "<!-- open pods/log requests at the end of phase A (both clients): {open_peak}; apiserver pods/log requests finished during the run: {}; our stream's statuses: {statuses:?}; loadavg {} -->",
        api_log_requests(env).await.total - api0.total,
        loadavg()
    );
    delete_pods(env, &pods);
    let _ = env.kubectl(&["-n", NS, "delete", "replicaset", &name, "--wait=false", "--ignore-not-found"]);
}

// ---- 4. 5,000 idle SSE connections ------------------------------------------------------------

/// One idle connection with a hand-written HTTP/1.1 request and a 256-byte read buffer:
/// counts as ready once `needle` arrived (`event: log`: the SSE viewer is subscribed; end of
/// the response head for a plain request), then drains keepalives until `stop`.
async fn idle_connection(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    needle: &'static [u8],
    counters: Arc<(AtomicUsize, AtomicUsize)>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let subscribe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(&request).await.ok()?;
        let mut buf = [0u8; 256 + 16];
        let mut carry = 0usize;
        let mut first = true;
        loop {
            let n = stream.read(&mut buf[carry..]).await.ok()?;
            if n == 0 {
                return None;
            }
            let filled = carry + n;
            if first {
                if !buf[..filled].starts_with(b"HTTP/1.1 200") {
                    return None;
                }
                first = false;
            }
            if buf[..filled].windows(needle.len()).any(|w| w == needle) {
                return Some(stream);
            }
            let keep = filled.min(needle.len() - 1);
            buf.copy_within(filled - keep..filled, 0);
            carry = keep;
        }
    };
    let Ok(Some(mut stream)) = tokio::time::timeout(Duration::from_secs(120), subscribe).await else {
        counters.1.fetch_add(1, Ordering::SeqCst);
        return;
    };
    counters.0.fetch_add(1, Ordering::SeqCst);
    drop(permit);
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = stream.read(&mut buf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    counters.1.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        }
    }
}

/// A group of idle connections (at most 200 connecting at once).
struct Conns {
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    needle: &'static [u8],
    /// (ready, failed)
    counters: Arc<(AtomicUsize, AtomicUsize)>,
    semaphore: Arc<tokio::sync::Semaphore>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Conns {
    fn new(addr: SocketAddr, request: String, needle: &'static [u8]) -> Self {
        Self {
            addr,
            request: Arc::new(request.into_bytes()),
            needle,
            counters: Arc::new((AtomicUsize::new(0), AtomicUsize::new(0))),
            semaphore: Arc::new(tokio::sync::Semaphore::new(200)),
            stop: tokio::sync::watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// Opens `count` more and waits (bounded) until all are ready or failed; returns the time.
    async fn open(&mut self, count: usize) -> Duration {
        let started = Instant::now();
        for _ in 0..count {
            let (addr, request, needle, counters, semaphore, stop) =
                (self.addr, self.request.clone(), self.needle, self.counters.clone(), self.semaphore.clone(), self.stop.subscribe());
            self.tasks.push(tokio::spawn(async move {
                let permit = semaphore.acquire_owned().await.unwrap();
                idle_connection(addr, request, needle, counters, permit, stop).await;
            }));
        }
        let target = self.tasks.len();
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.ready() + self.failed() < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    fn ready(&self) -> usize {
        self.counters.0.load(Ordering::SeqCst)
    }

    fn failed(&self) -> usize {
        self.counters.1.load(Ordering::SeqCst)
    }

    async fn close(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

async fn idle(env: &TestEnv, quick: bool) {
    let mut n = if quick { 1_000usize } else { 5_000 };
    let (server, pid) = start_kubelens(env);
    let limit = open_files_limit(pid);
    let own_limit = open_files_limit(std::process::id());
    if limit < n as u64 + 200 || own_limit < n as u64 + 200 {
        println!("<!-- warning: open-file limits kubelens {limit}, bench {own_limit}: run under `ulimit -n 20000` (scripts/bench-streaming.sh); testing {} connections -->", limit.min(own_limit).saturating_sub(300));
        n = (limit.min(own_limit).saturating_sub(300)) as usize;
    }
    let token = viewer_token(env).await;
    let pod = unique("bench-idle");
    kubelens_testenv::append_cri_lines(&env.log_path(NS, &pod, "app"), &["seq=1 quiet", "seq=2 quiet", "seq=3 quiet"]).unwrap();
    create_pods(env, std::slice::from_ref(&pod), serde_json::json!({"bench": "idle"}), None);
    let sse_request = |addr: SocketAddr| {
        format!("GET /api/v1/namespaces/{NS}/pods/{pod}/logs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n")
    };
    let addr: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let api0 = api_log_requests(env).await;
    let rss_start = status_kb(pid, "VmRSS");
    let mut conns = Conns::new(addr, sse_request(addr), b"event: log");
    // One viewer first: the upstream, the hub entry and the token cache exist before the
    // baseline.
    conns.open(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_1 = status_kb(pid, "VmRSS");
    let open_time = conns.open(n - 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_n = status_kb(pid, "VmRSS");
    let open_upstreams = api_log_requests(env).await.open - api0.open;
    // Idle for one keepalive period (15 s): CPU of n idle streams.
    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(16)).await;
    let idle_cpu = cpu_seconds(pid) - cpu0;
    let rss_idle = status_kb(pid, "VmRSS");
    let (ok, bad) = (conns.ready(), conns.failed());
    conns.close().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_closed = status_kb(pid, "VmRSS");
    // More rounds on the same process (BENCH_IDLE_ROUNDS, default 2 in all): RSS that stops
    // growing means the memory of earlier rounds was reused (allocator kept it); RSS that
    // grows by the same amount every round would be a per-connection leak.
    let rounds: usize = std::env::var("BENCH_IDLE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let mut again_rss = Vec::new();
    for _ in 1..rounds.max(1) {
        let mut again = Conns::new(addr, sse_request(addr), b"event: log");
        again.open(n).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let open_rss = status_kb(pid, "VmRSS");
        let ok_again = again.ready();
        again.close().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        again_rss.push(format!("{ok_again} open {:.1} / closed {:.1}", open_rss as f64 / 1024.0, status_kb(pid, "VmRSS") as f64 / 1024.0));
    }
    let hwm = status_kb(pid, "VmHWM");
    drop(server);

    // The same number of plain idle HTTP/1.1 keep-alive connections (one `GET /healthz`
    // answered, then silent) on a fresh process: the server's own per-connection cost, to
    // tell it apart from what an SSE viewer adds.
    let (plain_server, plain_pid) = start_kubelens(env);
    let plain_addr: SocketAddr = plain_server.url.trim_start_matches("http://").parse().unwrap();
    let mut plain = Conns::new(plain_addr, format!("GET /healthz HTTP/1.1\r\nHost: {plain_addr}\r\n\r\n"), b"\r\n\r\n");
    plain.open(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let plain_1 = status_kb(plain_pid, "VmRSS");
    plain.open(n - 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plain_n = status_kb(plain_pid, "VmRSS");
    let plain_ok = plain.ready();
    plain.close().await;
    drop(plain_server);

    let per = |a: u64, b: u64, count: usize| (b.saturating_sub(a)) as f64 * 1024.0 / (count.max(2) - 1) as f64;
    let per_conn = per(rss_1, rss_n, ok);
    println!("## idle: {n} idle SSE connections following one quiet pod (open-file limit: kubelens {limit}, bench {own_limit}; loadavg {})", loadavg());
    println!("| connections | ready / failed | opened in (s) | kubelens RSS 1 conn → all (MiB) | **RSS per connection** | after 16 s idle | open upstream log requests | kubelens CPU s over 16 s idle |");
    println!("|---|---|---:|---|---:|---:|---:|---:|");
    let mib = |kb: u64| kb as f64 / 1024.0;
    println!(
        "| {n} SSE viewers of one pod | {ok} / {bad} | {:.1} | {:.1} → {:.1} | **{:.1} KiB** ({per_conn:.0} B) | {:.1} KiB | {open_upstreams} | {idle_cpu:.2} |",
        open_time.as_secs_f64(),
        mib(rss_1),
        mib(rss_n),
        per_conn / 1024.0,
        per(rss_1, rss_idle, ok) / 1024.0,
    );
    println!(
        "| {n} plain keep-alive HTTP/1.1 connections (after one `GET /healthz`), fresh process | {plain_ok} / {} | | {:.1} → {:.1} | {:.1} KiB | | | |",
        n - plain_ok,
        mib(plain_1),
        mib(plain_n),
        per(plain_1, plain_n, plain_ok) / 1024.0,
    );
    println!(
        "<!-- SSE process RSS (MiB): start {:.1}, after close {:.1}, further rounds: [{}], VmHWM {:.1}; loadavg {} -->",
        mib(rss_start),
        mib(rss_closed),
        again_rss.join("; "),
        mib(hwm),
        loadavg()
    );

    // HTTP/2: the same number of idle SSE streams multiplexed over a few h2c connections
    // (prior knowledge, one reqwest client per connection) on a fresh process whose
    // `server.http2.max_concurrent_streams` lets each connection carry its share.
    let h2_conns: usize = std::env::var("BENCH_IDLE_H2_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let per_conn_streams = n.div_ceil(h2_conns.max(1)) as u32;
    let (h2_server, h2_pid) =
        start_kubelens_with(env, &format!("  http2:\n    max_concurrent_streams: {}\n", per_conn_streams.clamp(1, 10_000)));
    let h2_url = format!("{}/api/v1/namespaces/{NS}/pods/{pod}/logs", h2_server.url);
    let mut h2 = H2Streams::new(h2_conns, h2_url, viewer_token(env).await);
    let fds_0 = socket_fds(h2_pid);
    h2.open(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h2_rss_1 = status_kb(h2_pid, "VmRSS");
    let h2_open_time = h2.open(n - 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h2_rss_n = status_kb(h2_pid, "VmRSS");
    let h2_sockets = socket_fds(h2_pid).saturating_sub(fds_0);
    let cpu0 = cpu_seconds(h2_pid);
    tokio::time::sleep(Duration::from_secs(16)).await;
    let h2_idle_cpu = cpu_seconds(h2_pid) - cpu0;
    let h2_rss_idle = status_kb(h2_pid, "VmRSS");
    let (h2_ok, h2_bad) = (h2.ready(), h2.failed());
    h2.close().await;
    drop(h2_server);
    let h2_per = per(h2_rss_1, h2_rss_n, h2_ok);
    println!();
    println!("| HTTP/2 streams | ready / failed | opened in (s) | kubelens RSS 1 stream → all (MiB) | **RSS per stream** | after 16 s idle | | kubelens CPU s over 16 s idle |");
    println!("|---|---|---:|---|---:|---:|---:|---:|");
    println!(
        "| {n} SSE viewers of one pod over {h2_conns} h2c connections (HTTP/2 prior knowledge; {h2_sockets} new server sockets), fresh process | {h2_ok} / {h2_bad} | {:.1} | {:.1} → {:.1} | **{:.1} KiB** ({h2_per:.0} B) per stream | {:.1} KiB | | {h2_idle_cpu:.2} |",
        h2_open_time.as_secs_f64(),
        mib(h2_rss_1),
        mib(h2_rss_n),
        h2_per / 1024.0,
        per(h2_rss_1, h2_rss_idle, h2_ok) / 1024.0,
    );
    println!("<!-- h2 loadavg {} -->", loadavg());
    delete_pods(env, std::slice::from_ref(&pod));
}

/// Open sockets of a process (`/proc/<pid>/fd` links to `socket:`).
fn socket_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}

/// Idle SSE streams over HTTP/2 with prior knowledge: stream `i` goes over client `i % clients`
/// (each reqwest client keeps one h2 connection and multiplexes its requests on it).
struct H2Streams {
    clients: Vec<reqwest::Client>,
    url: Arc<String>,
    token: Arc<String>,
    counters: Arc<(AtomicUsize, AtomicUsize)>,
    semaphore: Arc<tokio::sync::Semaphore>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl H2Streams {
    fn new(connections: usize, url: String, token: String) -> Self {
        let clients = (0..connections.max(1))
            .map(|_| reqwest::Client::builder().http2_prior_knowledge().build().unwrap())
            .collect();
        Self {
            clients,
            url: Arc::new(url),
            token: Arc::new(token),
            counters: Arc::new((AtomicUsize::new(0), AtomicUsize::new(0))),
            semaphore: Arc::new(tokio::sync::Semaphore::new(200)),
            stop: tokio::sync::watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    async fn open(&mut self, count: usize) -> Duration {
        let started = Instant::now();
        for _ in 0..count {
            let client = self.clients[self.tasks.len() % self.clients.len()].clone();
            let (url, token, counters, semaphore, mut stop) =
                (self.url.clone(), self.token.clone(), self.counters.clone(), self.semaphore.clone(), self.stop.subscribe());
            self.tasks.push(tokio::spawn(async move {
                let permit = semaphore.acquire_owned().await.unwrap();
                let subscribe = async {
                    let resp = client.get(url.as_str()).bearer_auth(token.as_str()).header("accept", "text/event-stream").send().await.ok()?;
                    if resp.status() != 200 || resp.version() != reqwest::Version::HTTP_2 {
                        return None;
                    }
                    let mut body = resp.bytes_stream();
                    let mut seen = Vec::new();
                    while let Some(chunk) = body.next().await {
                        seen.extend_from_slice(&chunk.ok()?);
                        if seen.windows(10).any(|w| w == b"event: log") {
                            return Some(body);
                        }
                        if seen.len() > 4096 {
                            seen.drain(..seen.len() - 16);
                        }
                    }
                    None
                };
                let Ok(Some(mut body)) = tokio::time::timeout(Duration::from_secs(120), subscribe).await else {
                    counters.1.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                counters.0.fetch_add(1, Ordering::SeqCst);
                drop(permit);
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        chunk = body.next() => {
                            if !matches!(chunk, Some(Ok(_))) {
                                counters.1.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                    }
                }
            }));
        }
        let target = self.tasks.len();
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.ready() + self.failed() < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    fn ready(&self) -> usize {
        self.counters.0.load(Ordering::SeqCst)
    }

    fn failed(&self) -> usize {
        self.counters.1.load(Ordering::SeqCst)
    }

    async fn close(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}
