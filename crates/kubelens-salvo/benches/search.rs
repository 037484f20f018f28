//! Whole-log search benchmark of issue 19, on the running testenv, against the real
//! `kubelens` binary (bench profile = release).
//!
//! ```text
//! testenv/run -- cargo bench -p kubelens-salvo --bench search -- [quick]
//! ```
//!
//! One pod whose log is written once by `loggen` at rate 0 (`--size 200`: 200 bytes of text per
//! line), about 1 GB on disk (`quick`: about 100 MB; `BENCH_SEARCH_MB` overrides), then side by
//! side in the same run, alternating (ours, kubectl, ours, kubectl; `BENCH_SEARCH_RUNS` rounds
//! per case, default 2):
//!
//! * **ours**: `GET /api/v1/namespaces/team-a/pods/<pod>/logs/search?q=<pattern>`, read to its
//!   `end` event; wall time, bytes and lines scanned (from `end`), matches; the kubelens
//!   process RSS before, its peak while the search runs (sampled every 50 ms) and after;
//!   kubelens CPU seconds.
//! * **kubectl**: `kubectl logs -n team-a <pod> | grep -cE <pattern>` (the same pattern in POSIX
//!   ERE): wall time and count; and the same with `kubectl logs --timestamps`, which reads the
//!   same bytes from the API server as kubelens does.
//!
//! Throughput = the log's text bytes (kubelens' `end.bytes`, i.e. what `kubectl logs` prints)
//! divided by each peer's wall time. The download case reads `…/logs?download=true` into a file
//! (bytes and lines counted as they arrive, RSS sampled the same way) against
//! `kubectl logs -n team-a <pod> > file && wc -l < file`. Every case is one row of [`CASES`];
//! `BENCH_SEARCH_CASES=download` (a comma list of case names) runs only those. Results:
//! docs/benchmarks/search.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kubelens_testenv::TestEnv;
use support::Kubelens;

const NS: &str = "team-a";
/// Bytes of text per generated line (`loggen --size`).
const LINE_TEXT: u64 = 200;
/// Bytes per line in the CRI file (text + `<RFC3339Nano> stdout F ` + newline).
const LINE_FILE: u64 = LINE_TEXT + 42;

/// One way of reading the whole log, ours and the peer's.
struct Case {
    name: &'static str,
    /// Our request (path and query after `/api/v1/namespaces/team-a/pods/<pod>/logs`).
    ours: &'static str,
    /// The peer's shell pipeline after `kubectl logs -n team-a <pod>`; prints one number: the
    /// matches of a search, the lines of a download.
    peer: &'static str,
    read: Read,
}

/// What our request answers, and so how it is read and what the peer must print.
#[derive(Clone, Copy)]
enum Read {
    /// SSE to its `end` event; the number is the match count.
    Search,
    /// A `text/plain` body written to a file, as `kubectl logs > file` does; the number is its
    /// line count.
    Download,
}

/// Where both peers of the download case write the log (each run overwrites it).
const DOWNLOAD_OURS: &str = "/tmp/kubelens-bench-download-kubelens.log";

/// The search pattern is `seq=[0-9]*12345 ` (Rust regex and POSIX ERE alike): `seq` numbers
/// ending in 12345, about one line in 100,000.
/// kubelens always reads with `timestamps=true` (the timestamp is the line's id), about 20 %
/// more bytes from the API server than plain `kubectl logs`: the second case gives kubectl the
/// same bytes to read.
const CASES: &[Case] = &[
    Case { name: "search", ours: "/search?q=seq%3D%5B0-9%5D*12345%20", peer: "| grep -cE 'seq=[0-9]*12345 '", read: Read::Search },
    Case { name: "search (kubectl --timestamps)", ours: "/search?q=seq%3D%5B0-9%5D*12345%20", peer: "--timestamps | grep -cE 'seq=[0-9]*12345 '", read: Read::Search },
    // The whole log to a file: `download=true` (no line cap; without timestamps kubelens
    // makes the same request as kubectl: a plain read, no `timestamps=true`).
    Case {
        name: "download",
        ours: "?download=true",
        peer: "> /tmp/kubelens-bench-download-kubectl.log && wc -l < /tmp/kubelens-bench-download-kubectl.log",
        read: Read::Download,
    },
    // With timestamps both sides read `timestamps=true` (kubelens's positioned read).
    Case {
        name: "download (timestamps)",
        ours: "?download=true&timestamps=true",
        peer: "--timestamps > /tmp/kubelens-bench-download-kubectl.log && wc -l < /tmp/kubelens-bench-download-kubectl.log",
        read: Read::Download,
    },
];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("search: a benchmark; run it with `cargo bench -p kubelens-salvo --bench search` (skipped)");
        return;
    }
    let quick = std::env::args().any(|a| a == "quick");
    let mb: u64 = std::env::var("BENCH_SEARCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick { 100 } else { 1000 });
    let env = TestEnv::require();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(env, mb));
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start_matches(':').split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else { return f64::NAN };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // CLK_TCK is 100 on Linux.
    (tick(11) + tick(12)) / 100.0
}

/// The pid of the `kubelens` child (the process whose command line names its config file).
fn kubelens_pid(server: &Kubelens) -> u32 {
    let needle = server.dir.path().join("config.yaml").to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ");
        if cmdline.contains("kubelens") && cmdline.contains(&needle) {
            return pid;
        }
    }
    panic!("kubelens process not found");
}

/// One pod with a KWOK `Logs` object; waits (bounded) until it runs.
fn create_pod(env: &TestEnv, pod: &str) {
    let path = env.log_path(NS, pod, "app");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let logs = serde_json::json!({
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
        "metadata": {"name": pod, "namespace": NS},
        "spec": {"logs": [{"containers": ["app"], "logsFile": path, "previousLogsFile": env.previous_log_path(NS, pod, "app"), "follow": true}]},
    });
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": NS, "labels": {"bench": "search"}},
        "spec": {"nodeName": env.node_name, "containers": [{"name": "app", "image": "registry.invalid/bench:1"}],
                 "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]}
    });
    env.kubectl_apply(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [logs, manifest]}).to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.kubectl(&["-n", NS, "get", "pod", pod, "-o", "jsonpath={.status.phase}"]).unwrap_or_default() != "Running" {
        assert!(Instant::now() < deadline, "pod {pod} not Running");
        std::thread::sleep(Duration::from_millis(300));
    }
    env.wait_logs_mapped(NS, pod, "app", Duration::from_secs(60)).unwrap();
}

/// What our read of one case saw.
#[derive(Debug, Default)]
struct Ours {
    seconds: f64,
    bytes: u64,
    lines: u64,
    matches: u64,
    reason: String,
    progress_events: u64,
    rss_before_kb: u64,
    rss_peak_kb: u64,
    rss_after_kb: u64,
    cpu_seconds: f64,
}

async fn ours(url: &str, token: &str, pid: u32, read: Read) -> Ours {
    let rss_before_kb = status_kb(pid, "VmRSS");
    let (done, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(rss_before_kb)));
    let sampler = {
        let (done, peak) = (Arc::clone(&done), Arc::clone(&peak));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(status_kb(pid, "VmRSS"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut out = match read {
        Read::Search => search(url, token).await,
        Read::Download => download(url, token).await,
    };
    out.seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    out.cpu_seconds = cpu_seconds(pid) - cpu_before;
    out.rss_peak_kb = peak.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    out.rss_after_kb = status_kb(pid, "VmRSS");
    out.rss_before_kb = rss_before_kb;
    out
}

/// A search read to its `end` event.
async fn search(url: &str, token: &str) -> Ours {
    let resp = reqwest::Client::new().get(url).bearer_auth(token).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    let mut body = resp.bytes_stream();
    let (mut buf, mut out) = (Vec::<u8>::new(), Ours::default());
    let mut ended = false;
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&frame);
            let event = text.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_owned();
            let data: serde_json::Value = text.lines().find_map(|l| l.strip_prefix("data: ")).and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
            match event.as_str() {
                "progress" => out.progress_events += 1,
                "end" => {
                    out.bytes = data["bytes"].as_u64().unwrap_or(0);
                    out.lines = data["lines"].as_u64().unwrap_or(0);
                    out.matches = data["matches"].as_u64().unwrap_or(0);
                    out.reason = data["reason"].as_str().unwrap_or("?").to_owned();
                    ended = true;
                }
                _ => {}
            }
        }
    }
    assert!(ended, "the search ended without an `end` event");
    out
}

/// A download written to [`DOWNLOAD_OURS`]: `bytes` is the body, `lines` (and `matches`, the
/// number the peer prints) its newlines.
async fn download(url: &str, token: &str) -> Ours {
    use std::io::Write as _;
    let resp = reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(DOWNLOAD_OURS).unwrap());
    let (mut body, mut out) = (resp.bytes_stream(), Ours::default());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        out.bytes += chunk.len() as u64;
        out.lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        file.write_all(&chunk).unwrap();
    }
    file.flush().unwrap();
    out.matches = out.lines;
    out.reason = "complete".into();
    out
}

/// `kubectl logs -n team-a <pod> <pipeline>` in `sh`: wall seconds and what it printed.
fn peer(env: &TestEnv, pod: &str, pipeline: &str) -> (f64, String) {
    let kubectl = format!("{} --kubeconfig {} logs -n {NS} {pod} {pipeline}", env.kubectl.display(), env.kubeconfig.display());
    let started = Instant::now();
    let out = Command::new("sh").args(["-c", &kubectl]).stderr(Stdio::inherit()).output().unwrap();
    (started.elapsed().as_secs_f64(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn run(env: &TestEnv, mb: u64) {
    let runs: u32 = std::env::var("BENCH_SEARCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("# machine: {cpus} CPUs; loadavg {} at start; kubelens binary {}", loadavg(), env!("CARGO_BIN_EXE_kubelens"));
    let pod = format!("bench-search-{:08x}", rand::random::<u32>());
    create_pod(env, &pod);
    let path = env.log_path(NS, &pod, "app");
    let count = mb * 1_000_000 / LINE_FILE;
    let started = Instant::now();
    let status = env
        .loggen_cmd()
        .arg("--file")
        .arg(&path)
        .args(["--count", &count.to_string(), "--rate", "0", "--size", &LINE_TEXT.to_string(), "--src", "bench", "--quiet"])
        .status()
        .unwrap();
    assert!(status.success());
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    println!("# log: {count} lines, {:.1} MB on disk, written in {:.1} s", file_bytes as f64 / 1e6, started.elapsed().as_secs_f64());
    let expected_matches = (1..=count).filter(|n| n % 100_000 == 12_345).count() as u64;

    let server = Kubelens::start(env, "logs:\n  search:\n    max_duration: 1h\n    max_bytes: 1099511627776\n");
    let pid = kubelens_pid(&server);
    let token = env.password_token(&env.web_client_id, "viewer").await;
    let base = format!("{}/api/v1/namespaces/{NS}/pods/{pod}/logs", server.url);
    println!("# kubelens idle RSS {} kB (VmHWM {} kB)", status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM"));
    println!();
    println!("| case | run | peer | wall s | MB/s | lines/s | matches | ratio vs kubectl | kubelens RSS before / peak / after (MB) | kubelens CPU s | progress events | loadavg |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|");
    let only = std::env::var("BENCH_SEARCH_CASES").ok();
    let chosen = |case: &&Case| only.as_deref().is_none_or(|names| names.split(',').any(|n| n.trim() == case.name));
    for case in CASES.iter().filter(chosen) {
        for run in 1..=runs {
            let got = ours(&format!("{base}{}", case.ours), &token, pid, case.read).await;
            let expected = match case.read {
                Read::Search => expected_matches,
                Read::Download => count,
            };
            assert_eq!(got.reason, "complete", "{got:?}");
            assert_eq!(got.matches, expected, "{got:?}");
            assert_eq!(got.lines, count, "{got:?}");
            let (peer_s, peer_out) = peer(env, &pod, case.peer);
            assert_eq!(peer_out, expected.to_string(), "kubectl logs {}", case.peer);
            let mbps = |s: f64| got.bytes as f64 / 1e6 / s;
            let mb = |kb: u64| kb as f64 / 1024.0;
            println!(
                "| {} | {run} | kubelens | {:.2} | {:.1} | {:.0} | {} | {:.2}× | {:.1} / {:.1} / {:.1} | {:.2} | {} | {} |",
                case.name,
                got.seconds,
                mbps(got.seconds),
                got.lines as f64 / got.seconds,
                got.matches,
                peer_s / got.seconds,
                mb(got.rss_before_kb),
                mb(got.rss_peak_kb),
                mb(got.rss_after_kb),
                got.cpu_seconds,
                got.progress_events,
                loadavg()
            );
            println!(
                "| {} | {run} | `kubectl logs {}` | {peer_s:.2} | {:.1} | {:.0} | {peer_out} | 1.00× | — | — | — | {} |",
                case.name,
                case.peer.replace('|', "\\|"),
                mbps(peer_s),
                got.lines as f64 / peer_s,
                loadavg()
            );
        }
    }
    println!();
    println!("# kubelens VmHWM after all runs: {} kB; bytes scanned per search: {}", status_kb(pid, "VmHWM"), count * (LINE_TEXT + 1));
    for file in [path.as_path(), DOWNLOAD_OURS.as_ref(), "/tmp/kubelens-bench-download-kubectl.log".as_ref()] {
        let _ = std::fs::remove_file(file);
    }
    let _ = env.kubectl(&["-n", NS, "delete", "pod", &pod, "--wait=false"]);
}
