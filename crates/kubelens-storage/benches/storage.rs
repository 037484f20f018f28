#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark binary
//! Storage benchmark (not a test): per backend, session GET/PUT latency (p50/p99) and archive
//! append throughput with batches of 100/500/1000 lines plus read-back by cursor.
//!
//!   scripts/storage/run.sh -- cargo bench -p kubelens-storage --bench storage
//!
//! Backends: memory and sqlite always; postgres / redis when KUBELENS_TEST_POSTGRES_URL /
//! KUBELENS_TEST_REDIS_URL are set (run.sh sets both). KUBELENS_BENCH_LINES (default
//! 100000) lines are appended per batch size; KUBELENS_BENCH_SESSIONS (default 2000)
//! session operations are timed one by one.

use std::time::{Duration, Instant};

use kubelens_core::config::{PostgresConfig, RedisConfig, Secret, SqliteConfig, StorageBackend};
use kubelens_core::storage::{ArchivedLine, LineQuery, PodMeta, Precondition, SourceKey, StoreLimits};
use kubelens_storage::Stores;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

async fn bench(name: &str, stores: Stores, lines_total: usize, sessions: usize) {
    // A realistic session document of ~1 KiB.
    let doc = format!(
        r#"{{"activeResources":[{}],"pinnedResources":[],"theme":"dark","uiPrefs":{{"wrap":true,"fontSize":13}}}}"#,
        (0..8)
            .map(|i| format!(r#"{{"kind":"pod","namespace":"team-a","name":"web-7d9f-{i:04}","container":"app"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut put = Vec::with_capacity(sessions);
    let mut get = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let user = format!("user-{}", i % 100);
        let t = Instant::now();
        stores.sessions.put(&user, doc.as_bytes(), Precondition::None, None).await.unwrap();
        put.push(t.elapsed());
        let t = Instant::now();
        let got = stores.sessions.get(&user).await.unwrap();
        get.push(t.elapsed());
        assert!(got.is_some());
    }
    put.sort();
    get.sort();
    println!(
        "| {name} | session PUT ({} B) | p50 {:.3} ms | p99 {:.3} ms |",
        doc.len(),
        percentile(&put, 0.5).as_secs_f64() * 1e3,
        percentile(&put, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| {name} | session GET | p50 {:.3} ms | p99 {:.3} ms |",
        percentile(&get, 0.5).as_secs_f64() * 1e3,
        percentile(&get, 0.99).as_secs_f64() * 1e3
    );

    for batch in [100usize, 500, 1000] {
        let source = SourceKey {
            namespace: "bench".into(),
            pod: format!("pod-{batch}"),
            pod_uid: format!("uid-{batch}"),
            container: "app".into(),
            instance: 0,
        };
        // ~120-byte lines, like typical structured application logs.
        let lines: Vec<ArchivedLine> = (0..lines_total as u64)
            .map(|i| ArchivedLine {
                position: i,
                timestamp_ns: 1_769_767_200_000_000_000 + i as i64 * 1000,
                line: format!(
                    "2026-01-30T10:00:00.{i:09}Z INFO request handled method=GET path=/api/v1/items status=200 seq={i}"
                )
                .into_bytes(),
                truncated: false,
            })
            .collect();
        let bytes: usize = lines.iter().map(|l| l.line.len()).sum();
        let t = Instant::now();
        for chunk in lines.chunks(batch) {
            let o = stores.archive.append(&source, &PodMeta::default(), chunk).await.unwrap();
            assert_eq!(o.inserted as usize, chunk.len());
        }
        let append = t.elapsed();
        let t = Instant::now();
        let mut cursor = None;
        let mut read = 0usize;
        loop {
            let page = stores.archive.read(&source, LineQuery::after(cursor, 1000)).await.unwrap();
            if page.is_empty() {
                break;
            }
            read += page.len();
            cursor = page.last().map(|l| l.position);
        }
        let readback = t.elapsed();
        assert_eq!(read, lines_total);
        println!(
            "| {name} | append, batches of {batch} | {:.0} lines/s | {:.1} MB/s | read-back by cursor (pages of 1000): {:.0} lines/s |",
            lines_total as f64 / append.as_secs_f64(),
            bytes as f64 / append.as_secs_f64() / 1e6,
            read as f64 / readback.as_secs_f64(),
        );
    }
}

/// The peer for the PostgreSQL archive: `psql \copy` of the same rows (text format, one
/// COPY) into a table of the same shape (primary key and time index) on the same server.
fn psql_copy_peer(url: &str, lines_total: usize) {
    let psql = std::env::var("KUBELENS_TEST_PG_BINDIR").map(|d| format!("{d}/psql")).unwrap_or_else(|_| "psql".into());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.tsv");
    let mut tsv = String::new();
    for i in 0..lines_total as u64 {
        let line = format!(
            "2026-01-30T10:00:00.{i:09}Z INFO request handled method=GET path=/api/v1/items status=200 seq={i}"
        );
        let hex: String = line.bytes().map(|b| format!("{b:02x}")).collect();
        tsv.push_str(&format!("1\t{i}\t{}\tf\t\\\\x{hex}\n", 1_769_767_200_000_000_000i64 + i as i64 * 1000));
    }
    std::fs::write(&file, tsv).unwrap();
    let table = unique("bench_copy");
    let run = |sql: &str| {
        let out = std::process::Command::new(&psql).arg(url).arg("-q").arg("-v").arg("ON_ERROR_STOP=1").arg("-c").arg(sql).output().unwrap();
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&format!(
        "CREATE TABLE {table} (source_id BIGINT NOT NULL, position BIGINT NOT NULL, ts_ns BIGINT NOT NULL, \
         truncated BOOLEAN NOT NULL, line BYTEA NOT NULL, PRIMARY KEY (source_id, position)); \
         CREATE INDEX ON {table} (source_id, ts_ns)"
    ));
    let t = Instant::now();
    run(&format!("\\copy {table} (source_id, position, ts_ns, truncated, line) FROM '{}'", file.display()));
    let copy = t.elapsed();
    run(&format!("DROP TABLE {table}"));
    println!(
        "| psql | \\copy of the same {lines_total} rows (one COPY, incl. psql start) | {:.0} lines/s | | |",
        lines_total as f64 / copy.as_secs_f64()
    );
}

fn limits() -> StoreLimits {
    StoreLimits {
        archive_max_lines_per_source: 10_000_000,
        archive_max_bytes_per_source: 4 << 30,
        archive_max_batch_lines: 10_000,
        ..StoreLimits::default()
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is parsed.
    let lines = env_usize("KUBELENS_BENCH_LINES", 100_000);
    let sessions = env_usize("KUBELENS_BENCH_SESSIONS", 2_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!("| backend | operation | result | | |");
        println!("|---|---|---|---|---|");
        bench("memory", Stores::memory(limits()), lines, sessions).await;

        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig { path: dir.path().join("bench.db").display().to_string(), ..SqliteConfig::default() };
        let store = kubelens_storage::sqlite::SqliteStore::open(&config, limits()).await.unwrap();
        bench("sqlite", Stores::from_one(store, StorageBackend::Sqlite), lines, sessions).await;

        match std::env::var("KUBELENS_TEST_POSTGRES_URL") {
            Ok(url) => {
                let config = PostgresConfig { url: Secret::new(url.clone()), max_connections: 4, schema: Some(unique("bench")) };
                let store = kubelens_storage::postgres::PostgresStore::open(&config, limits()).await.unwrap();
                bench("postgres", Stores::from_one(store, StorageBackend::Postgres), lines, sessions).await;
                psql_copy_peer(&url, lines);
            }
            Err(_) => eprintln!("postgres skipped: KUBELENS_TEST_POSTGRES_URL unset"),
        }
        match std::env::var("KUBELENS_TEST_REDIS_URL") {
            Ok(url) => {
                let config = RedisConfig { url: Secret::new(url), key_prefix: Some(format!("{}:", unique("bench"))) };
                let store = kubelens_storage::redis::RedisStore::open(&config, limits()).await.unwrap();
                bench("redis", Stores::from_one(store, StorageBackend::Redis), lines, sessions).await;
            }
            Err(_) => eprintln!("redis skipped: KUBELENS_TEST_REDIS_URL unset"),
        }
    });
}
