//! The one behavioural suite every store must pass: the in-memory reference store, sqlite,
//! PostgreSQL and Redis run exactly these checks (see `tests/conformance.rs`).
//!
//! The suite does not panic: [`run`] returns the failed checks with a message naming the
//! check and the source line, so a test can print all failures of a backend at once.
//! Each check gets fresh stores from the caller's factory (a new file, schema or key
//! prefix) created with [`LIMITS`], so checks are independent and can run in parallel.

use std::future::Future;
use std::time::Duration;

use kubelens_core::storage::{
    ArchivedLine, LineQuery, MAX_CREDENTIAL_KEY_BYTES, MAX_CREDENTIAL_TTL, MAX_CREDENTIAL_VALUE_BYTES, MAX_POSITION, PodMeta, Precondition, SourceKey, StorageError, StoreLimits, Version,
    now_ms,
};

use crate::Stores;

/// Limits the suite opens stores with (small, so caps are cheap to reach).
pub const LIMITS: StoreLimits = StoreLimits {
    session_max_bytes: 4096,
    archive_max_lines_per_source: 1000,
    archive_max_bytes_per_source: 64 * 1024,
    archive_max_line_bytes: 2048,
    archive_max_batch_lines: 2000,
};

/// TTL used by expiry checks; the checks wait a multiple of it (bounded).
const SHORT_TTL: Duration = Duration::from_millis(1000);
const AFTER_TTL: Duration = Duration::from_millis(2200);

type CheckResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("line {}: {}", line!(), format!($($msg)+)));
        }
    };
}

macro_rules! t {
    ($fut:expr) => {
        $fut.await.map_err(|e| format!("line {}: unexpected error: {e}", line!()))?
    };
}

/// Names of all checks, in run order.
pub const CHECKS: &[&str] = &[
    "session_round_trip_and_overwrite",
    "session_preconditions",
    "session_limits_and_invalid_subjects",
    "session_per_user_isolation",
    "session_binary_data",
    "session_ttl_expiry",
    "session_concurrent_writers",
    "archive_order_and_cursor_reads",
    "archive_time_range",
    "archive_idempotent_reappend",
    "archive_concurrent_writers",
    "archive_caps",
    "archive_line_bytes_and_timestamps",
    "archive_list_terminate_and_expire",
    "archive_invalid_input",
    "credential_get_take_remove",
    "credential_ttl_expiry",
    "credential_concurrent_takers",
    "credential_invalid_input",
    "audit_order_filters_and_paging",
    "audit_purge_and_invalid_input",
    "ping",
];

/// Runs every check against fresh stores from `factory`; returns `"check: message"` for each
/// failure (empty = conformant).
pub async fn run<F, Fut>(factory: F) -> Vec<String>
where
    F: Fn(StoreLimits) -> Fut,
    Fut: Future<Output = Result<Stores, StorageError>>,
{
    let mut failures = Vec::new();
    for name in CHECKS {
        let stores = match factory(LIMITS).await {
            Ok(stores) => stores,
            Err(err) => {
                failures.push(format!("{name}: cannot open stores: {err}"));
                continue;
            }
        };
        let result = run_check(name, stores).await;
        if let Err(message) = result {
            failures.push(format!("{name}: {message}"));
        }
    }
    failures
}

async fn run_check(name: &str, s: Stores) -> CheckResult {
    match name {
        "session_round_trip_and_overwrite" => session_round_trip(s).await,
        "session_preconditions" => session_preconditions(s).await,
        "session_limits_and_invalid_subjects" => session_limits(s).await,
        "session_per_user_isolation" => session_isolation(s).await,
        "session_binary_data" => session_binary(s).await,
        "session_ttl_expiry" => session_ttl(s).await,
        "session_concurrent_writers" => session_concurrent(s).await,
        "archive_order_and_cursor_reads" => archive_order(s).await,
        "archive_time_range" => archive_time_range(s).await,
        "archive_idempotent_reappend" => archive_idempotent(s).await,
        "archive_concurrent_writers" => archive_concurrent(s).await,
        "archive_caps" => archive_caps(s).await,
        "archive_line_bytes_and_timestamps" => archive_bytes(s).await,
        "archive_list_terminate_and_expire" => archive_terminate(s).await,
        "archive_invalid_input" => archive_invalid(s).await,
        "credential_get_take_remove" => credential_get_take_remove(s).await,
        "credential_ttl_expiry" => credential_ttl(s).await,
        "credential_concurrent_takers" => credential_concurrent(s).await,
        "credential_invalid_input" => credential_invalid(s).await,
        "audit_order_filters_and_paging" => audit_paging(s).await,
        "audit_purge_and_invalid_input" => audit_purge(s).await,
        "ping" => ping(s).await,
        other => Err(format!("unknown check {other}")),
    }
}

fn is_conflict(r: &Result<impl Sized, StorageError>, expected: Option<Version>) -> bool {
    matches!(r, Err(StorageError::Conflict { current }) if *current == expected)
}

async fn session_round_trip(s: Stores) -> CheckResult {
    let st = &s.sessions;
    ensure!(t!(st.get("alice")).is_none(), "a new store has no session");
    let v1 = t!(st.put("alice", br#"{"theme":"dark"}"#, Precondition::Absent, None));
    let got = t!(st.get("alice")).ok_or("session missing after put")?;
    ensure!(got.data == br#"{"theme":"dark"}"#, "data round trip: {:?}", got.data);
    ensure!(got.version == v1, "version round trip {:?} != {v1:?}", got.version);
    ensure!((now_ms() - got.updated_at_ms).abs() < 60_000, "updated_at_ms is now-ish: {}", got.updated_at_ms);
    let v2 = t!(st.put("alice", b"{}", Precondition::None, None));
    ensure!(v2 > v1, "versions increase: {v1:?} then {v2:?}");
    let got = t!(st.get("alice")).ok_or("session missing after overwrite")?;
    ensure!(got.data == b"{}" && got.version == v2, "overwrite visible");
    ensure!(t!(st.delete("alice", Precondition::None)), "delete reports an existing session");
    ensure!(t!(st.get("alice")).is_none(), "deleted session is gone");
    ensure!(!t!(st.delete("alice", Precondition::None)), "deleting again reports nothing deleted");
    Ok(())
}

async fn session_preconditions(s: Stores) -> CheckResult {
    let st = &s.sessions;
    let r = st.put("bob", b"1", Precondition::Exists, None).await;
    ensure!(is_conflict(&r, None), "Exists on a missing session conflicts: {r:?}");
    let r = st.put("bob", b"1", Precondition::Matches(Version(1)), None).await;
    ensure!(is_conflict(&r, None), "Matches on a missing session conflicts: {r:?}");
    ensure!(t!(st.get("bob")).is_none(), "failed preconditions store nothing");
    let v1 = t!(st.put("bob", b"1", Precondition::Absent, None));
    let r = st.put("bob", b"x", Precondition::Absent, None).await;
    ensure!(is_conflict(&r, Some(v1)), "Absent on an existing session conflicts with its version: {r:?}");
    let v2 = t!(st.put("bob", b"2", Precondition::Matches(v1), None));
    let r = st.put("bob", b"stale", Precondition::Matches(v1), None).await;
    ensure!(is_conflict(&r, Some(v2)), "a stale version conflicts and reports the current one: {r:?}");
    ensure!(t!(st.get("bob")).map(|x| x.data) == Some(b"2".to_vec()), "the stale write changed nothing");
    let v3 = t!(st.put("bob", b"3", Precondition::Exists, None));
    ensure!(v3 > v2, "Exists writes");
    let r = st.delete("bob", Precondition::Matches(v2)).await;
    ensure!(is_conflict(&r, Some(v3)), "delete with a stale version conflicts: {r:?}");
    let r = st.delete("bob", Precondition::Absent).await;
    ensure!(is_conflict(&r, Some(v3)), "delete with Absent on an existing session conflicts: {r:?}");
    ensure!(t!(st.delete("bob", Precondition::Matches(v3))), "delete with the current version");
    let r = st.delete("bob", Precondition::Exists).await;
    ensure!(is_conflict(&r, None), "delete with Exists on a missing session conflicts: {r:?}");
    // A version seen before the delete must not match a session created afterwards.
    let v4 = t!(st.put("bob", b"4", Precondition::Absent, None));
    ensure!(v4 != v3 && v4 != v1 && v4 != v2, "re-created session gets a fresh version: {v4:?}");
    let r = st.put("bob", b"x", Precondition::Matches(v3), None).await;
    ensure!(is_conflict(&r, Some(v4)), "old version does not match the re-created session: {r:?}");
    Ok(())
}

async fn session_limits(s: Stores) -> CheckResult {
    let st = &s.sessions;
    let max = LIMITS.session_max_bytes;
    t!(st.put("carol", &vec![b'a'; max], Precondition::None, None));
    let r = st.put("carol", &vec![b'b'; max + 1], Precondition::None, None).await;
    ensure!(matches!(r, Err(StorageError::TooLarge { .. })), "one byte over the limit is TooLarge: {r:?}");
    let got = t!(st.get("carol")).ok_or("session vanished")?;
    ensure!(got.data.len() == max && got.data[0] == b'a', "the refused write changed nothing");
    for bad in ["", "a\nb", "nul\0", &"x".repeat(256)] {
        let r = st.put(bad, b"{}", Precondition::None, None).await;
        ensure!(matches!(r, Err(StorageError::Invalid(_))), "subject {bad:?} is invalid: {r:?}");
        let r = st.get(bad).await;
        ensure!(matches!(r, Err(StorageError::Invalid(_))), "get {bad:?} is invalid: {r:?}");
    }
    let longest = "y".repeat(255);
    t!(st.put(&longest, b"{}", Precondition::None, None));
    ensure!(t!(st.get(&longest)).is_some(), "a 255-byte subject works");
    t!(st.put("empty-doc", b"", Precondition::None, None));
    ensure!(t!(st.get("empty-doc")).map(|x| x.data) == Some(Vec::new()), "empty data round trips");
    Ok(())
}

async fn session_isolation(s: Stores) -> CheckResult {
    let st = &s.sessions;
    let users = ["u-1", "U-1", "u-1 ", "ユーザー", "svc:a/b", "f:8e1c..:admin"];
    for (i, user) in users.iter().enumerate() {
        t!(st.put(user, format!("doc-{i}").as_bytes(), Precondition::None, None));
    }
    for (i, user) in users.iter().enumerate() {
        let got = t!(st.get(user)).ok_or(format!("{user} missing"))?;
        ensure!(got.data == format!("doc-{i}").as_bytes(), "{user} sees only its own session");
    }
    t!(st.delete("u-1", Precondition::None));
    ensure!(t!(st.get("u-1")).is_none(), "deleted");
    ensure!(t!(st.get("U-1")).is_some() && t!(st.get("u-1 ")).is_some(), "similar subjects are untouched");
    Ok(())
}

async fn session_binary(s: Stores) -> CheckResult {
    let st = &s.sessions;
    let data: Vec<u8> = (0u8..=255).chain([0xff, 0xfe, 0, 0xc3, 0x28]).collect();
    t!(st.put("bin", &data, Precondition::None, None));
    ensure!(t!(st.get("bin")).map(|x| x.data) == Some(data), "arbitrary bytes round trip exactly");
    let text = "{\"emoji\":\"🦀\",\"rtl\":\"שלום\",\"nul\":\"\\u0000\"}";
    t!(st.put("text", text.as_bytes(), Precondition::None, None));
    ensure!(t!(st.get("text")).map(|x| x.data) == Some(text.as_bytes().to_vec()), "unicode round trips");
    Ok(())
}

async fn session_ttl(s: Stores) -> CheckResult {
    let st = &s.sessions;
    let v = t!(st.put("ttl", b"short", Precondition::None, Some(SHORT_TTL)));
    t!(st.put("keep", b"long", Precondition::None, None));
    ensure!(t!(st.get("ttl")).is_some(), "visible before the TTL");
    tokio::time::sleep(AFTER_TTL).await;
    ensure!(t!(st.get("ttl")).is_none(), "gone after the TTL");
    ensure!(t!(st.get("keep")).is_some(), "sessions without TTL stay");
    let r = st.put("ttl", b"x", Precondition::Matches(v), None).await;
    ensure!(is_conflict(&r, None), "an expired session cannot be matched: {r:?}");
    t!(st.put("ttl", b"again", Precondition::Absent, None));
    ensure!(t!(st.get("ttl")).map(|x| x.data) == Some(b"again".to_vec()), "re-created after expiry");
    // A write without TTL clears an earlier TTL.
    t!(st.put("ttl2", b"a", Precondition::None, Some(SHORT_TTL)));
    t!(st.put("ttl2", b"b", Precondition::None, None));
    tokio::time::sleep(AFTER_TTL).await;
    ensure!(t!(st.get("ttl2")).is_some(), "overwriting without TTL keeps the session");
    t!(st.purge_expired());
    ensure!(t!(st.get("keep")).is_some(), "purge keeps live sessions");
    Ok(())
}

async fn session_concurrent(s: Stores) -> CheckResult {
    let st = s.sessions.clone();
    let v0 = t!(st.put("race", b"0", Precondition::None, None));
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let st = st.clone();
        tasks.push(tokio::spawn(async move { st.put("race", &[b'a' + i], Precondition::Matches(v0), None).await }));
    }
    let mut wins = 0;
    let mut conflicts = 0;
    for task in tasks {
        match task.await.map_err(|e| e.to_string())? {
            Ok(_) => wins += 1,
            Err(StorageError::Conflict { .. }) => conflicts += 1,
            Err(other) => return Err(format!("unexpected error under contention: {other}")),
        }
    }
    ensure!(wins == 1 && conflicts == 7, "exactly one of 8 conditional writers wins (won {wins}, conflicts {conflicts})");
    // Unconditional writers all succeed and end with distinct, increasing versions.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let st = st.clone();
        tasks.push(tokio::spawn(async move { st.put("race", &[i], Precondition::None, None).await }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?);
    }
    let max = versions.iter().copied().max().ok_or("no versions")?;
    versions.sort();
    versions.dedup();
    ensure!(versions.len() == 8, "every write got its own version");
    ensure!(t!(st.get("race")).map(|x| x.version) == Some(max), "the last write's version is current");
    Ok(())
}

fn source(ns: &str, pod: &str, container: &str, instance: u32) -> SourceKey {
    SourceKey {
        namespace: ns.to_owned(),
        pod: pod.to_owned(),
        pod_uid: format!("{pod}-uid-0001"),
        container: container.to_owned(),
        instance,
    }
}

fn line(position: u64, ts: i64, text: &str) -> ArchivedLine {
    ArchivedLine { position, timestamp_ns: ts, line: text.as_bytes().to_vec(), truncated: false }
}

const T0: i64 = 1_769_767_200_123_456_789; // 2026-01-30T10:00:00.123456789Z

async fn archive_order(s: Stores) -> CheckResult {
    let a = &s.archive;
    let src = source("team-a", "web-1", "app", 0);
    let meta = PodMeta::default();
    // Appended out of order, in two batches; equal timestamps on purpose.
    let mut lines: Vec<ArchivedLine> = (0..50).map(|i| line(i, T0 + (i as i64 / 3), &format!("line {i}"))).collect();
    lines.reverse();
    let (first, second) = lines.split_at(20);
    let o = t!(a.append(&src, &meta, second));
    ensure!(o.inserted == 30 && o.duplicates == 0 && o.dropped == 0, "first batch {o:?}");
    t!(a.append(&src, &meta, first));
    let all = t!(a.read(&src, LineQuery::after(None, 1000)));
    ensure!(all.len() == 50, "all lines read back: {}", all.len());
    ensure!(all.iter().enumerate().all(|(i, l)| l.position == i as u64), "ordered by position");
    ensure!(all[7].line == b"line 7" && all[7].timestamp_ns == T0 + 2, "content and timestamp");
    // Cursor paging: no gap, no duplicate.
    let mut cursor = None;
    let mut seen = Vec::new();
    for _ in 0..20 {
        let page = t!(a.read(&src, LineQuery::after(cursor, 7)));
        if page.is_empty() {
            break;
        }
        ensure!(page.len() <= 7, "limit respected");
        cursor = page.last().map(|l| l.position);
        seen.extend(page.into_iter().map(|l| l.position));
    }
    ensure!(seen == (0..50).collect::<Vec<_>>(), "paging yields every position once: {seen:?}");
    ensure!(t!(a.read(&src, LineQuery::after(Some(49), 10))).is_empty(), "after the last position: empty");
    ensure!(t!(a.read(&src, LineQuery::after(Some(MAX_POSITION), 10))).is_empty(), "after the max position: empty");
    let other = source("team-a", "web-1", "app", 1);
    ensure!(t!(a.read(&other, LineQuery::after(None, 10))).is_empty(), "another instance is a different source");
    Ok(())
}

async fn archive_time_range(s: Stores) -> CheckResult {
    let a = &s.archive;
    let src = source("team-a", "job-1", "main", 0);
    let lines: Vec<ArchivedLine> = (0..30).map(|i| line(i, T0 + i as i64 * 1_000, &format!("{i}"))).collect();
    t!(a.append(&src, &PodMeta::default(), &lines));
    let q = LineQuery { after: None, since_ns: Some(T0 + 10_000), until_ns: Some(T0 + 20_000), limit: 100 };
    let got: Vec<u64> = t!(a.read(&src, q)).into_iter().map(|l| l.position).collect();
    ensure!(got == (10..20).collect::<Vec<_>>(), "since inclusive, until exclusive, ns precision: {got:?}");
    let q = LineQuery { after: Some(14), since_ns: Some(T0 + 10_000), until_ns: None, limit: 3 };
    let got: Vec<u64> = t!(a.read(&src, q)).into_iter().map(|l| l.position).collect();
    ensure!(got == vec![15, 16, 17], "cursor combines with time range and limit: {got:?}");
    let q = LineQuery { after: None, since_ns: Some(T0 + 10_001), until_ns: Some(T0 + 10_002), limit: 10 };
    ensure!(t!(a.read(&src, q)).is_empty(), "a range between two lines is empty");
    Ok(())
}

async fn archive_idempotent(s: Stores) -> CheckResult {
    let a = &s.archive;
    let src = source("team-a", "web-2", "app", 0);
    let meta = PodMeta::default();
    let lines: Vec<ArchivedLine> = (0..100).map(|i| line(i, T0 + i as i64, &format!("l{i}"))).collect();
    t!(a.append(&src, &meta, &lines[..60]));
    let o = t!(a.append(&src, &meta, &lines[40..]));
    ensure!(o.inserted == 40 && o.duplicates == 20, "overlapping batch inserts only new positions: {o:?}");
    let o = t!(a.append(&src, &meta, &lines));
    ensure!(o.inserted == 0 && o.duplicates == 100, "full re-append is a no-op: {o:?}");
    // Same position, different content (a second capture): the first write wins.
    let o = t!(a.append(&src, &meta, &[line(5, T0, "changed")]));
    ensure!(o.duplicates == 1, "rewrite of a position is a duplicate");
    let mut batch = vec![line(200, T0, "dup"), line(200, T0, "dup"), line(201, T0, "x")];
    batch.push(line(201, T0, "x"));
    let o = t!(a.append(&src, &meta, &batch));
    ensure!(o.inserted == 2 && o.duplicates == 2, "duplicates inside one batch: {o:?}");
    let all = t!(a.read(&src, LineQuery::after(None, 1000)));
    ensure!(all.len() == 102, "no duplicates stored: {}", all.len());
    ensure!(all[5].line == b"l5", "first write of a position wins");
    let info = t!(a.list_sources("team-a"));
    ensure!(info.len() == 1 && info[0].lines == 102, "counters count distinct lines: {info:?}");
    ensure!(info[0].bytes == all.iter().map(|l| l.line.len() as u64).sum::<u64>(), "byte counter");
    ensure!(t!(a.append(&src, &meta, &[])) == Default::default(), "empty batch");
    Ok(())
}

async fn archive_concurrent(s: Stores) -> CheckResult {
    let src = source("team-b", "db-0", "postgres", 2);
    let lines: Vec<ArchivedLine> = (0..600).map(|i| line(i, T0 + i as i64, &format!("concurrent {i}"))).collect();
    let mut tasks = Vec::new();
    // Four "replicas" capture the same source with different batch sizes.
    for chunk in [50usize, 77, 200, 600] {
        let archive = s.archive.clone();
        let src = src.clone();
        let lines = lines.clone();
        tasks.push(tokio::spawn(async move {
            let mut inserted = 0;
            for batch in lines.chunks(chunk) {
                inserted += archive.append(&src, &PodMeta::default(), batch).await?.inserted;
            }
            Ok::<u64, StorageError>(inserted)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|e| e.to_string())?.map_err(|e| format!("writer failed: {e}"))?;
    }
    ensure!(total == 600, "each line inserted exactly once across writers: {total}");
    let all = t!(s.archive.read(&src, LineQuery::after(None, 1000)));
    ensure!(all.len() == 600, "600 distinct lines stored: {}", all.len());
    ensure!(all.windows(2).all(|w| w[0].position + 1 == w[1].position), "no gap, no duplicate");
    Ok(())
}

async fn archive_caps(s: Stores) -> CheckResult {
    let a = &s.archive;
    let meta = PodMeta::default();
    // Line cap.
    let src = source("team-a", "chatty", "app", 0);
    let max_lines = LIMITS.archive_max_lines_per_source;
    let lines: Vec<ArchivedLine> = (0..max_lines + 50).map(|i| line(i, T0, "x")).collect();
    let o = t!(a.append(&src, &meta, &lines));
    ensure!(o.inserted == max_lines && o.dropped == 50, "line cap: {o:?}");
    let o = t!(a.append(&src, &meta, &[line(max_lines + 100, T0, "late")]));
    ensure!(o.dropped == 1 && o.inserted == 0, "a full source refuses further lines: {o:?}");
    let o = t!(a.append(&src, &meta, &lines[..10]));
    ensure!(o.duplicates == 10, "duplicates are still recognized when full: {o:?}");
    let info = t!(a.list_sources("team-a"));
    ensure!(info[0].lines == max_lines && info[0].dropped == 51, "counters: {info:?}");
    // Byte cap: lines of 2000 bytes, 64 KiB cap → 32 fit.
    let src = source("team-a", "wide", "app", 0);
    let lines: Vec<ArchivedLine> =
        (0..40).map(|i| ArchivedLine { position: i, timestamp_ns: T0, line: vec![b'w'; 2000], truncated: true }).collect();
    let o = t!(a.append(&src, &meta, &lines));
    ensure!(o.inserted == 32 && o.dropped == 8, "byte cap: {o:?}");
    // A line at the limit is fine, one byte over fails the whole batch.
    let src = source("team-a", "edge", "app", 0);
    let at = ArchivedLine { position: 0, timestamp_ns: T0, line: vec![b'e'; LIMITS.archive_max_line_bytes], truncated: true };
    let over = ArchivedLine { position: 1, line: vec![b'e'; LIMITS.archive_max_line_bytes + 1], ..at.clone() };
    t!(a.append(&src, &meta, std::slice::from_ref(&at)));
    let r = a.append(&src, &meta, &[line(2, T0, "ok"), over]).await;
    ensure!(matches!(r, Err(StorageError::TooLarge { .. })), "line over the limit: {r:?}");
    ensure!(t!(a.read(&src, LineQuery::after(None, 10))).len() == 1, "a refused batch writes nothing");
    let batch: Vec<ArchivedLine> = (0..LIMITS.archive_max_batch_lines as u64 + 1).map(|i| line(i, T0, "b")).collect();
    let r = a.append(&src, &meta, &batch).await;
    ensure!(matches!(r, Err(StorageError::TooLarge { .. })), "batch over the limit: {r:?}");
    Ok(())
}

async fn archive_bytes(s: Stores) -> CheckResult {
    let a = &s.archive;
    let src = source("team-a", "bytes", "app", 0);
    let cases: Vec<Vec<u8>> = vec![
        "plain ascii".into(),
        "unicode: 🦀 ünïcødé 日本語 שלום".into(),
        vec![0xff, 0xfe, 0xfd, b'x', 0xc3, 0x28],
        vec![0, 1, 2, 0, b'\r', b'\t'],
        Vec::new(),
        "trailing spaces   ".into(),
        "\u{202e}bidi override".into(),
    ];
    let lines: Vec<ArchivedLine> = cases
        .iter()
        .enumerate()
        .map(|(i, bytes)| ArchivedLine {
            position: i as u64,
            timestamp_ns: if i == 0 { 0 } else { T0 + i as i64 },
            line: bytes.clone(),
            truncated: i % 2 == 1,
        })
        .collect();
    t!(a.append(&src, &PodMeta::default(), &lines));
    let got = t!(a.read(&src, LineQuery::after(None, 100)));
    ensure!(got == lines, "bytes, flags and ns timestamps round trip exactly: {got:?}");
    let far = line(MAX_POSITION, i64::MAX, "max position and timestamp");
    t!(a.append(&src, &PodMeta::default(), std::slice::from_ref(&far)));
    let got = t!(a.read(&src, LineQuery::after(Some(100), 10)));
    ensure!(got == vec![far], "extreme values round trip: {got:?}");
    Ok(())
}

async fn archive_terminate(s: Stores) -> CheckResult {
    let a = &s.archive;
    let meta = PodMeta {
        app_kind: Some("Job".into()),
        app_name: Some("backup".into()),
        node: Some("node-1".into()),
        labels: Some([("team".to_owned(), "ops".to_owned()), ("kubelens.io/hide".to_owned(), "false".to_owned())].into()),
        app_labels: Some(std::collections::BTreeMap::new()),
    };
    let done = source("team-a", "backup-x1", "main", 0);
    let running = source("team-a", "web-9", "app", 0);
    let elsewhere = source("team-b", "backup-x1", "main", 0);
    for src in [&done, &running, &elsewhere] {
        t!(a.append(src, &meta, &[line(0, T0, "hello"), line(1, T0 + 1, "bye")]));
    }
    let listed = t!(a.list_sources("team-a"));
    ensure!(listed.len() == 2, "list is per namespace: {listed:?}");
    ensure!(listed[0].key == done && listed[1].key == running, "ordered by key");
    ensure!(listed[0].meta == meta && listed[0].terminated_at_ms.is_none(), "metadata kept");
    ensure!(t!(a.list_sources("team-c")).is_empty(), "empty namespace");
    let missing = source("team-a", "ghost", "main", 0);
    ensure!(!t!(a.mark_terminated(&missing, now_ms(), SHORT_TTL)), "marking a missing source is false");
    let at = now_ms();
    ensure!(t!(a.mark_terminated(&done, at, SHORT_TTL)), "mark");
    // A later observation by another replica keeps the earliest termination time.
    ensure!(t!(a.mark_terminated(&done, at + 5_000, SHORT_TTL)), "mark again");
    let listed = t!(a.list_sources("team-a"));
    let info = listed.iter().find(|i| i.key == done).ok_or("terminated source missing")?;
    ensure!(info.terminated_at_ms == Some(at), "earliest termination kept: {info:?}");
    ensure!(info.expires_at_ms == Some(at + SHORT_TTL.as_millis() as i64), "expiry = termination + ttl: {info:?}");
    // Lines captured after termination (graceful shutdown tail) are still accepted.
    let o = t!(a.append(&done, &meta, &[line(2, T0 + 2, "tail")]));
    ensure!(o.inserted == 1, "append after termination");
    ensure!(t!(a.read(&done, LineQuery::after(None, 10))).len() == 3, "readable before expiry");
    tokio::time::sleep(AFTER_TTL).await;
    ensure!(t!(a.read(&done, LineQuery::after(None, 10))).is_empty(), "expired source reads empty");
    let listed = t!(a.list_sources("team-a"));
    ensure!(listed.len() == 1 && listed[0].key == running, "expired source not listed: {listed:?}");
    ensure!(!t!(a.mark_terminated(&done, now_ms(), SHORT_TTL)), "an expired source cannot be re-marked");
    t!(a.purge_expired());
    ensure!(t!(a.read(&running, LineQuery::after(None, 10))).len() == 2, "purge keeps running sources");
    ensure!(t!(a.list_sources("team-b")).len() == 1, "other namespaces untouched");
    // The same pod captured again after expiry starts from scratch.
    let o = t!(a.append(&done, &meta, &[line(0, T0, "new")]));
    ensure!(o.inserted == 1 && o.duplicates == 0, "fresh source after expiry: {o:?}");
    let listed = t!(a.list_sources("team-a"));
    let info = listed.iter().find(|i| i.key == done).ok_or("re-created source missing")?;
    ensure!(info.lines == 1 && info.terminated_at_ms.is_none(), "fresh counters: {info:?}");
    Ok(())
}

async fn archive_invalid(s: Stores) -> CheckResult {
    let a = &s.archive;
    let good = source("team-a", "web-1", "app", 0);
    let meta = PodMeta::default();
    for bad in [
        SourceKey { namespace: "Team-A".into(), ..good.clone() },
        SourceKey { namespace: "../etc".into(), ..good.clone() },
        SourceKey { pod: "a/b".into(), ..good.clone() },
        SourceKey { pod_uid: "uid:1".into(), ..good.clone() },
        SourceKey { container: "".into(), ..good.clone() },
    ] {
        let r = a.append(&bad, &meta, &[line(0, T0, "x")]).await;
        ensure!(matches!(r, Err(StorageError::Invalid(_))), "bad key {bad:?}: {r:?}");
        let r = a.read(&bad, LineQuery::after(None, 1)).await;
        ensure!(matches!(r, Err(StorageError::Invalid(_))), "bad key read {bad:?}: {r:?}");
    }
    let r = a.append(&good, &meta, &[line(MAX_POSITION + 1, T0, "x")]).await;
    ensure!(matches!(r, Err(StorageError::Invalid(_))), "position over the maximum: {r:?}");
    let r = a.append(&good, &meta, &[line(0, -1, "x")]).await;
    ensure!(matches!(r, Err(StorageError::Invalid(_))), "negative timestamp: {r:?}");
    let r = a.read(&good, LineQuery::after(None, 0)).await;
    ensure!(matches!(r, Err(StorageError::Invalid(_))), "zero limit: {r:?}");
    let huge = PodMeta { app_name: Some("n".repeat(5000)), ..PodMeta::default() };
    let r = a.append(&good, &huge, &[line(0, T0, "x")]).await;
    ensure!(matches!(r, Err(StorageError::TooLarge { .. })), "metadata over the limit: {r:?}");
    ensure!(t!(a.list_sources("team-a")).is_empty(), "nothing written by refused calls");
    Ok(())
}

const MINUTE: Duration = Duration::from_secs(60);

async fn credential_get_take_remove(s: Stores) -> CheckResult {
    let c = &s.credentials;
    ensure!(t!(c.get("ticket:a")).is_none(), "a new store has no credential");
    t!(c.put("ticket:a", b"alice", MINUTE));
    t!(c.put("stream:a", b"other kind", MINUTE));
    for _ in 0..2 {
        ensure!(t!(c.get("ticket:a")).as_deref() == Some(&b"alice"[..]), "get is repeatable");
    }
    ensure!(t!(c.take("ticket:a")).as_deref() == Some(&b"alice"[..]), "take returns the value");
    ensure!(t!(c.take("ticket:a")).is_none(), "take works once");
    ensure!(t!(c.get("ticket:a")).is_none(), "taken is gone");
    ensure!(t!(c.get("stream:a")).as_deref() == Some(&b"other kind"[..]), "keys are independent");
    t!(c.put("stream:a", &[0, 255, 10], MINUTE));
    ensure!(t!(c.get("stream:a")).as_deref() == Some(&[0u8, 255, 10][..]), "put replaces; bytes are binary-safe");
    ensure!(t!(c.remove("stream:a")), "remove reports a live entry");
    ensure!(!t!(c.remove("stream:a")), "remove of a missing entry is false");
    Ok(())
}

async fn credential_ttl(s: Stores) -> CheckResult {
    let c = &s.credentials;
    t!(c.put("ticket:short", b"x", SHORT_TTL));
    t!(c.put("ticket:short2", b"y", SHORT_TTL));
    t!(c.put("ticket:long", b"z", MINUTE));
    tokio::time::sleep(AFTER_TTL).await;
    ensure!(t!(c.get("ticket:short")).is_none(), "expired credentials are not read");
    ensure!(t!(c.take("ticket:short2")).is_none(), "expired credentials are not taken");
    t!(c.purge_expired());
    ensure!(t!(c.get("ticket:short")).is_none(), "purged stays gone");
    ensure!(t!(c.get("ticket:long")).is_some(), "purge keeps live credentials");
    Ok(())
}

async fn credential_concurrent(s: Stores) -> CheckResult {
    for round in 0..3 {
        let key = format!("ticket:race{round}");
        t!(s.credentials.put(&key, b"once", MINUTE));
        let takes = (0..12).map(|_| {
            let (c, key) = (s.credentials.clone(), key.clone());
            async move { c.take(&key).await }
        });
        let results = futures::future::join_all(takes).await;
        let mut won = 0;
        for r in results {
            won += usize::from(r.map_err(|e| format!("line {}: take failed: {e}", line!()))?.is_some());
        }
        ensure!(won == 1, "round {round}: {won} concurrent takers got the value, expected exactly one");
    }
    Ok(())
}

async fn credential_invalid(s: Stores) -> CheckResult {
    let c = &s.credentials;
    let long_key = "k".repeat(MAX_CREDENTIAL_KEY_BYTES + 1);
    for bad in ["", "with space", "new\nline", "ticket:ü", long_key.as_str()] {
        ensure!(matches!(c.put(bad, b"v", MINUTE).await, Err(StorageError::Invalid(_))), "put accepted key {bad:?}");
        ensure!(matches!(c.get(bad).await, Err(StorageError::Invalid(_))), "get accepted key {bad:?}");
        ensure!(matches!(c.take(bad).await, Err(StorageError::Invalid(_))), "take accepted key {bad:?}");
    }
    let big = vec![b'x'; MAX_CREDENTIAL_VALUE_BYTES + 1];
    ensure!(matches!(c.put("ticket:big", &big, MINUTE).await, Err(StorageError::TooLarge { .. })), "oversized value");
    for ttl in [Duration::ZERO, MAX_CREDENTIAL_TTL + Duration::from_secs(1)] {
        ensure!(matches!(c.put("ticket:ttl", b"v", ttl).await, Err(StorageError::Invalid(_))), "ttl {ttl:?} accepted");
    }
    ensure!(t!(c.get("ticket:big")).is_none() && t!(c.get("ticket:ttl")).is_none(), "refused writes stored nothing");
    let max_key = "k".repeat(MAX_CREDENTIAL_KEY_BYTES);
    let max_value = vec![7u8; MAX_CREDENTIAL_VALUE_BYTES];
    t!(c.put(&max_key, &max_value, MINUTE));
    ensure!(t!(c.get(&max_key)).map(|v| v.len()) == Some(MAX_CREDENTIAL_VALUE_BYTES), "limits are inclusive");
    Ok(())
}

fn audit_event(i: usize, now: i64) -> kubelens_core::audit::AuditEvent {
    let mut event = kubelens_core::audit::AuditEvent::new(if i.is_multiple_of(5) { "denied" } else { "logs_opened" });
    event.time_ms = now + i as i64;
    event.user = Some(if i.is_multiple_of(2) { "alice" } else { "bob" }.to_owned());
    event.namespace = Some(if i.is_multiple_of(3) { "team-a" } else { "team-b" }.to_owned());
    event.name = Some(format!("pod-{i}"));
    event.lines = Some(i as u64);
    event
}

async fn audit_paging(s: Stores) -> CheckResult {
    let now = now_ms();
    let events: Vec<_> = (0..25).map(|i| audit_event(i, now)).collect();
    t!(s.audit.append(&events[..10]));
    t!(s.audit.append(&events[10..]));
    t!(s.audit.append(&[]));
    let names = |page: &kubelens_core::storage::AuditPage| -> Vec<u64> {
        page.events.iter().map(|(_, e)| e.lines.unwrap_or(999)).collect()
    };
    let mut query = kubelens_core::storage::AuditQuery { limit: 10, ..Default::default() };
    let first = t!(s.audit.query(query.clone()));
    ensure!(names(&first) == (15..25).rev().collect::<Vec<u64>>(), "newest first: {:?}", names(&first));
    ensure!(first.events[0].1 == events[24], "events round-trip exactly");
    query.before = first.next.clone();
    ensure!(query.before.is_some(), "a full page has a cursor");
    let second = t!(s.audit.query(query.clone()));
    ensure!(names(&second) == (5..15).rev().collect::<Vec<u64>>(), "second page: {:?}", names(&second));
    query.before = second.next.clone();
    let third = t!(s.audit.query(query.clone()));
    ensure!(names(&third) == (0..5).rev().collect::<Vec<u64>>(), "last page: {:?}", names(&third));
    ensure!(third.next.is_none(), "nothing older: no cursor");
    let filtered = |f: fn(&mut kubelens_core::storage::AuditQuery)| {
        let mut q = kubelens_core::storage::AuditQuery { limit: 100, ..Default::default() };
        f(&mut q);
        q
    };
    let alice = t!(s.audit.query(filtered(|q| q.user = Some("alice".into()))));
    ensure!(names(&alice) == (0..25).rev().filter(|i| i % 2 == 0).collect::<Vec<u64>>(), "user filter: {:?}", names(&alice));
    let both = t!(s.audit.query(filtered(|q| {
        q.namespace = Some("team-a".into());
        q.audit = Some("denied".into());
    })));
    ensure!(names(&both) == vec![15, 0], "namespace + kind filter: {:?}", names(&both));
    let mut window = filtered(|_| {});
    window.since_ms = Some(now + 3);
    window.until_ms = Some(now + 6);
    ensure!(names(&t!(s.audit.query(window))) == vec![5, 4, 3], "time window");
    let mut paged_filter = filtered(|q| q.user = Some("bob".into()));
    paged_filter.limit = 5;
    let bob1 = t!(s.audit.query(paged_filter.clone()));
    paged_filter.before = bob1.next.clone();
    let bob2 = t!(s.audit.query(paged_filter.clone()));
    ensure!(names(&bob1) == vec![23, 21, 19, 17, 15] && names(&bob2) == vec![13, 11, 9, 7, 5], "filtered paging");
    Ok(())
}

async fn audit_purge(s: Stores) -> CheckResult {
    let now = now_ms();
    let events: Vec<_> = (0..4).map(|i| audit_event(i, now)).collect();
    t!(s.audit.append(&events));
    let all = kubelens_core::storage::AuditQuery { limit: 100, ..Default::default() };
    t!(s.audit.purge_before(now - 3_600_000));
    ensure!(t!(s.audit.query(all.clone())).events.len() == 4, "an old cutoff keeps recent events");
    t!(s.audit.purge_before(now_ms() + 60_000));
    ensure!(t!(s.audit.query(all.clone())).events.is_empty(), "a cutoff in the future removes everything");
    for limit in [0, kubelens_core::storage::MAX_AUDIT_PAGE + 1] {
        let q = kubelens_core::storage::AuditQuery { limit, ..Default::default() };
        ensure!(matches!(s.audit.query(q).await, Err(StorageError::Invalid(_))), "limit {limit} accepted");
    }
    let bad_cursor = kubelens_core::storage::AuditQuery { limit: 1, before: Some("x'; --".into()), ..Default::default() };
    ensure!(matches!(s.audit.query(bad_cursor).await, Err(StorageError::Invalid(_))), "bad cursor accepted");
    let mut huge = audit_event(0, now);
    huge.query = Some("q".repeat(kubelens_core::storage::MAX_AUDIT_EVENT_BYTES));
    let batch = [audit_event(1, now), huge];
    ensure!(matches!(s.audit.append(&batch).await, Err(StorageError::TooLarge { .. })), "oversized event accepted");
    ensure!(t!(s.audit.query(all)).events.is_empty(), "a refused batch writes nothing");
    Ok(())
}

async fn ping(s: Stores) -> CheckResult {
    t!(s.sessions.ping());
    t!(s.archive.ping());
    Ok(())
}
