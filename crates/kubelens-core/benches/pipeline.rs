//! Core log pipeline micro-benchmark (a plain `harness = false` binary; no timed assertions).
//!
//!     cargo bench -p kubelens-core --bench pipeline            # everything
//!     cargo bench -p kubelens-core --bench pipeline -- quick   # fewer lines
//!
//! Stages, single thread, input = realistic kubelet `timestamps=true` output in 32 KiB chunks
//! (1 % of lines are 20 KB and get truncated at 10,000 bytes; some lines share a timestamp):
//!   split               LineSplitter only
//!   split+decode        + timestamp parse, same-timestamp index, truncation, UTF-8 → LogLine
//!   +json+sse (hand)    + `id:`/`event:`/`data:` SSE frame with the hand-written JSON
//!   +json+sse (serde)   the same frame with serde_json (for comparison)
//!   merge 10 sources    AppLogMerge ordering + ids over 10 pre-filled sources
//!   structured lines    level detection, `fields`, field filters per line on plain text,
//!                       logfmt and JSON (alone, and inside the full +json+sse path)
//! Then the memory of idle hub subscriptions (RSS delta / subscriptions).
//! Results and machine notes: docs/benchmarks/pipeline.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kubelens_core::logs::hub::{HubConfig, HubEvent, LogHub, ResumePoint};
use kubelens_core::logs::json::{write_json_str, write_line_json, write_line_json_serde};
use kubelens_core::logs::merge::{AppLogMerge, MergeConfig, MergedEvent};
use kubelens_core::logs::structured::{FieldFilters, detect_level, shown_fields};
use kubelens_core::logs::upstream::SourceKey;
use kubelens_core::logs::{LineDecoder, LineSplitter, LogLine, LogSource, LogTimestamp};

const MAX_LINE: usize = 10_000;

/// The text of a line of the generated input.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `level=info msg="GET …" …` (the historical input of this bench).
    Logfmt,
    /// An access-log line without `=` or a level word.
    Plain,
    /// A JSON object with the level third.
    Json,
}

fn text_of(kind: Kind, i: usize) -> String {
    match kind {
        Kind::Logfmt => format!(
            "level=info msg=\"GET /api/v1/items/{i} 200\" duration=1.{:03}ms user=alice trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
            i % 1000
        ),
        Kind::Plain => format!("10.1.2.3 - alice [30/Jan/2026:10:00:00 +0000] \"GET /api/v1/items/{i} HTTP/1.1\" 200 {} \"-\" \"curl/8.5.0\"", i % 1000),
        Kind::Json => format!(
            "{{\"ts\":\"2026-01-30T10:00:00.{:03}Z\",\"logger\":\"http\",\"level\":\"info\",\"msg\":\"GET /api/v1/items/{i} 200\",\"duration_ms\":1.{:03},\"user\":\"alice\"}}",
            i % 1000,
            i % 1000
        ),
    }
}

fn input(lines: usize) -> (Vec<Bytes>, usize) {
    input_of(lines, Kind::Logfmt)
}

fn input_of(lines: usize, kind: Kind) -> (Vec<Bytes>, usize) {
    let mut body = Vec::with_capacity(lines * 150);
    let mut ts = LogTimestamp::parse_rfc3339("2026-01-30T10:00:00Z").map(|t| t.unix_nanos()).unwrap_or(0);
    for i in 0..lines {
        if i % 7 != 0 {
            ts += 37_123; // every 7th line shares the previous timestamp
        }
        LogTimestamp::from_unix_nanos(ts).write_rfc3339(&mut body);
        if i % 100 == 99 {
            body.extend_from_slice(b" ");
            body.extend(std::iter::repeat_n(b'x', 20_000));
        } else {
            body.push(b' ');
            body.extend_from_slice(text_of(kind, i).as_bytes());
        }
        body.push(b'\n');
    }
    let total = body.len();
    let body = Bytes::from(body);
    let chunks = (0..total).step_by(32 * 1024).map(|s| body.slice(s..(s + 32 * 1024).min(total))).collect();
    (chunks, total)
}

/// Nanoseconds this thread has spent on a CPU (`/proc/thread-self/schedstat`): rates per
/// CPU-second stay meaningful on a loaded, shared machine where wall time does not.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn measure(name: &str, lines: usize, bytes: usize, mut run: impl FnMut() -> usize) {
    let mut best = Duration::MAX;
    let mut best_cpu = u64::MAX;
    for _ in 0..5 {
        let cpu = thread_cpu_ns();
        let start = Instant::now();
        let n = run();
        let took = start.elapsed();
        best_cpu = best_cpu.min(thread_cpu_ns().saturating_sub(cpu).max(1));
        assert_eq!(n, lines, "{name} saw every line");
        best = best.min(took);
    }
    let secs = best.as_secs_f64();
    let cpu_secs = best_cpu as f64 / 1e9;
    println!(
        "{name:<22} {:>6.2} M lines/CPU-s {:>6.1} ns/line {:>7.1} MB/CPU-s | wall {:>6.2} M lines/s ({lines} lines, best of 5: {:.0} ms wall, {:.0} ms CPU)",
        lines as f64 / cpu_secs / 1e6,
        cpu_secs * 1e9 / lines as f64,
        bytes as f64 / cpu_secs / 1e6,
        lines as f64 / secs / 1e6,
        secs * 1e3,
        cpu_secs * 1e3
    );
}

/// How the bench renders a line.
#[derive(Clone, Copy)]
enum Encode {
    /// `json::write_line_json` (with `level`).
    Hand,
    /// `json::write_line_json_serde`.
    Serde,
    /// The payload as it was before levels (no detection): the baseline of their cost.
    HandWithoutLevel,
}

fn sse_frame(line: &LogLine, out: &mut Vec<u8>, encode: Encode) {
    out.extend_from_slice(b"id: ");
    line.id().write_to(out);
    out.extend_from_slice(b"\nevent: log\ndata: ");
    match encode {
        Encode::Serde => {
            let _ = write_line_json_serde(line, out);
        }
        Encode::Hand => write_line_json(line, out),
        Encode::HandWithoutLevel => {
            out.extend_from_slice(b"{\"ts\":\"");
            line.ts.write_rfc3339(out);
            out.extend_from_slice(b"\",\"pod\":");
            write_json_str(&line.source.pod, out);
            out.extend_from_slice(b",\"container\":");
            write_json_str(&line.source.container, out);
            out.extend_from_slice(b",\"line\":");
            write_json_str(&line.text, out);
            out.extend_from_slice(if line.truncated { b",\"truncated\":true}" } else { b",\"truncated\":false}" });
        }
    }
    out.extend_from_slice(b"\n\n");
}

fn pipeline(chunks: &[Bytes], encode: Option<Encode>) -> usize {
    let source = LogSource::new("web-7d9f-x2k4", "app");
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut decoder = LineDecoder::new(source, MAX_LINE);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut n = 0;
    for chunk in chunks {
        splitter.feed(chunk, |raw| {
            n += 1;
            let line = decoder.decode(&raw.bytes, raw.dropped);
            if let Some(encode) = encode {
                sse_frame(&line, &mut out, encode);
            }
            black_box(&line);
        });
        black_box(&out);
        out.clear();
    }
    splitter.finish(|_| n += 1);
    n
}

/// Per-line cost of the structured-line stages alone, over already decoded texts.
fn structured_bench(lines: usize) {
    for (kind, name) in [(Kind::Plain, "plain"), (Kind::Logfmt, "logfmt"), (Kind::Json, "json")] {
        let texts: Vec<String> = (0..lines).map(|i| text_of(kind, i)).collect();
        let bytes = texts.iter().map(String::len).sum();
        measure(&format!("level {name}"), lines, bytes, || {
            texts.iter().inspect(|t| {
                black_box(detect_level(black_box(t)));
            }).count()
        });
        let filter = FieldFilters::new([("user", "alice"), ("logger", "http")]).unwrap_or_default();
        measure(&format!("field filter {name}"), lines, bytes, || {
            texts.iter().inspect(|t| {
                black_box(filter.accepts(black_box(t)));
            }).count()
        });
        measure(&format!("fields=true {name}"), lines, bytes, || {
            texts.iter().inspect(|t| {
                black_box(shown_fields(black_box(t)));
            }).count()
        });
    }
}

fn split_only(chunks: &[Bytes]) -> usize {
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut n = 0;
    for chunk in chunks {
        splitter.feed(chunk, |raw| {
            n += 1;
            black_box(raw);
        });
    }
    splitter.finish(|_| n += 1);
    n
}

fn merge_bench(rt: &tokio::runtime::Runtime, per_source: usize) {
    let sources: Vec<_> = (0..10).map(|i| LogSource::new(format!("web-{i}"), "app")).collect();
    let lines: Vec<Vec<HubEvent>> = sources
        .iter()
        .enumerate()
        .map(|(s, src)| {
            (0..per_source)
                .map(|i| {
                    HubEvent::Line(Arc::new(LogLine {
                        ts: LogTimestamp::from_unix_nanos(1_800_000_000_000_000_000 + (i as i64) * 10_000 + s as i64 * 7),
                        index: 0,
                        source: src.clone(),
                        text: "GET /api/v1/items 200".into(),
                        truncated: false,
                        encoded: None,
                    }))
                })
                .collect()
        })
        .collect();
    let total = per_source * sources.len();
    measure("merge 10 sources+ids", total, 0, || {
        rt.block_on(async {
            let mut merge: AppLogMerge<usize> =
                AppLogMerge::new(MergeConfig { watermark: Duration::from_millis(250), adaptive: false, max_buffered_per_source: usize::MAX, history_timeout: Duration::from_secs(10) }, None);
            for (i, src) in sources.iter().enumerate() {
                merge.insert(i, src.clone(), None, futures::stream::iter(lines[i].clone()).boxed());
            }
            let mut n = 0;
            let mut buf = Vec::with_capacity(128);
            while let Some(ev) = merge.next().await {
                if let MergedEvent::Line { id, .. } = ev {
                    buf.clear();
                    id.write_to(&mut buf);
                    black_box(&buf);
                    n += 1;
                }
            }
            n
        })
    });
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn hub_memory(rt: &tokio::runtime::Runtime, viewers: usize) {
    rt.block_on(async {
        let hub = LogHub::new(
            HubConfig { buffer_lines: 10_000, buffer_bytes: 8 * 1024 * 1024, viewer_queue_lines: 4_096, linger: Duration::ZERO, encoder: None },
            Arc::new(|f| {
                tokio::spawn(f);
            }),
        );
        let key = SourceKey { namespace: "ns".into(), pod: "web".into(), container: "app".into(), previous: false };
        // Warm up allocator arenas, then measure.
        let warm: Vec<_> =
            (0..1000).map(|_| hub.subscribe(key.clone(), ResumePoint::Tail(0), |_| futures::stream::pending().boxed())).collect();
        drop(warm);
        tokio::task::yield_now().await;
        let before = rss_bytes();
        let subs: Vec<_> =
            (0..viewers).map(|_| hub.subscribe(key.clone(), ResumePoint::Tail(0), |_| futures::stream::pending().boxed())).collect();
        let after = rss_bytes();
        println!(
            "hub idle viewers       {viewers} subscriptions: RSS +{} KiB = {} bytes per idle subscription (size_of Subscription = {} B; opens = {})",
            (after.saturating_sub(before)) / 1024,
            after.saturating_sub(before) / viewers,
            std::mem::size_of_val(&subs[0]),
            hub.upstreams_opened(),
        );
        drop(subs);
    });
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let lines = if quick { 200_000 } else { 2_000_000 };
    let (chunks, bytes) = input(lines);
    println!("input: {lines} lines, {:.1} MB, 1% of lines 20 KB (truncated to {MAX_LINE})", bytes as f64 / 1e6);
    measure("split", lines, bytes, || split_only(&chunks));
    measure("split+decode", lines, bytes, || pipeline(&chunks, None));
    measure("+json+sse (hand)", lines, bytes, || pipeline(&chunks, Some(Encode::Hand)));
    measure("+json+sse (serde)", lines, bytes, || pipeline(&chunks, Some(Encode::Serde)));
    measure("+json+sse no level", lines, bytes, || pipeline(&chunks, Some(Encode::HandWithoutLevel)));
    for (kind, name) in [(Kind::Plain, "plain"), (Kind::Json, "json")] {
        let (chunks, bytes) = input_of(lines, kind);
        measure(&format!("+json+sse {name}"), lines, bytes, || pipeline(&chunks, Some(Encode::Hand)));
        measure(&format!("+json+sse {name} no lvl"), lines, bytes, || pipeline(&chunks, Some(Encode::HandWithoutLevel)));
    }
    structured_bench(lines);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| {
        eprintln!("runtime: {e}");
        std::process::exit(1)
    });
    merge_bench(&rt, if quick { 20_000 } else { 100_000 });
    hub_memory(&rt, 20_000);
}
