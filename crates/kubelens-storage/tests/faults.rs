#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may unwrap
//! Fault tests with real processes: each test starts its OWN private redis-server /
//! PostgreSQL (isolated from the shared ones of `scripts/storage/run.sh`), breaks it, and
//! checks that calls fail promptly with `Unavailable` (no panic, no hang), that the store
//! recovers by itself once the server is back (no re-open), and that nothing written before
//! the fault is lost.
//!
//! Binaries: `KUBELENS_TEST_REDIS_SERVER` / `KUBELENS_TEST_PG_BINDIR` (exported by
//! `scripts/storage/run.sh`), else `redis-server` on PATH and `/usr/lib/postgresql/*/bin`.
//! A missing binary fails the test unless `KUBELENS_SKIP_E2E=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubelens_core::config::{PostgresConfig, RedisConfig, Secret, SqliteConfig, StorageBackend, StorageConfig};
use kubelens_core::storage::{
    ArchivedLine, LineQuery, PodMeta, Precondition, SourceKey, StorageError, StoreLimits,
};
use kubelens_storage::{DeferredStores, Stores};

/// Upper bound for one call while the backend is down: it must fail, not hang.
const PROMPT: Duration = Duration::from_secs(12);
/// Upper bound for recovery after the backend is back.
const RECOVERY: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn redis_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("KUBELENS_TEST_REDIS_SERVER")
        && !path.is_empty()
    {
        return Some(path.into());
    }
    let found = Command::new("sh").arg("-c").arg("command -v redis-server").output().ok()?;
    let path = String::from_utf8(found.stdout).ok()?.trim().to_owned();
    if path.is_empty() { None } else { Some(path.into()) }
}

fn pg_bindir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("KUBELENS_TEST_PG_BINDIR")
        && !dir.is_empty()
    {
        return Some(dir.into());
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn require<T>(what: &str, value: Option<T>) -> Option<T> {
    if value.is_none() {
        if std::env::var("KUBELENS_SKIP_E2E").as_deref() == Ok("1") {
            eprintln!("SKIPPED: {what} not found and KUBELENS_SKIP_E2E=1");
        } else {
            panic!("{what} not found; run scripts/storage/install.sh (or set KUBELENS_SKIP_E2E=1)");
        }
    }
    value
}

/// A private redis-server with append-only persistence (so a restart keeps the data, as a
/// production Redis holding the archive should be configured).
struct PrivateRedis {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(binary: PathBuf) -> Self {
        let mut redis = Self { binary, dir: tempfile::tempdir().unwrap(), port: free_port(), child: None };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port);
    }

    /// SIGTERM and wait: a clean shutdown like `systemctl stop redis`.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server on port {port} did not come up");
}

/// A private PostgreSQL cluster run as the `postgres` user when the tests run as root.
struct PrivatePostgres {
    bindir: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn pg_command(bindir: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bindir.join(tool));
        c
    } else {
        Command::new(bindir.join(tool))
    }
}

impl PrivatePostgres {
    fn start(bindir: PathBuf) -> Self {
        let dir = tempfile::Builder::new().prefix("kubelens-pgfault").tempdir().unwrap();
        if is_root() {
            let status = Command::new("chown").arg("-R").arg("postgres").arg(dir.path()).status().unwrap();
            assert!(status.success(), "chown for postgres");
        }
        let data = dir.path().join("data");
        let status = pg_command(&bindir, "initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb");
        let pg = Self { bindir, dir, port: free_port() };
        pg.ctl("start");
        pg
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let mut cmd = pg_command(&self.bindir, "pg_ctl");
        cmd.arg("-D").arg(&data).args(["-w", "-t", "60", "-m", "fast", "-o", &options]);
        cmd.arg("-l").arg(self.dir.path().join("server.log")).arg(action);
        let status = cmd.stdout(Stdio::null()).status().unwrap();
        assert!(status.success(), "pg_ctl {action}");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = pg_command(&self.bindir, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn source() -> SourceKey {
    SourceKey {
        namespace: "team-a".into(),
        pod: "job-1".into(),
        pod_uid: "uid-1".into(),
        container: "main".into(),
        instance: 0,
    }
}

fn lines(range: std::ops::Range<u64>) -> Vec<ArchivedLine> {
    range
        .map(|i| ArchivedLine {
            position: i,
            timestamp_ns: 1_769_767_200_000_000_000 + i as i64,
            line: format!("line {i}").into_bytes(),
            truncated: false,
        })
        .collect()
}

async fn write_before_fault(stores: &Stores) {
    stores.sessions.put("alice", b"{\"theme\":\"dark\"}", Precondition::None, None).await.unwrap();
    let o = stores.archive.append(&source(), &PodMeta::default(), &lines(0..500)).await.unwrap();
    assert_eq!(o.inserted, 500);
}

/// While the backend is down every call fails promptly with `Unavailable`.
async fn assert_down(stores: &Stores) {
    let started = Instant::now();
    let r = tokio::time::timeout(PROMPT, stores.sessions.get("alice")).await.expect("session get hung");
    assert!(matches!(r, Err(StorageError::Unavailable(_))), "{r:?}");
    let r = tokio::time::timeout(PROMPT, stores.sessions.put("alice", b"{}", Precondition::None, None))
        .await
        .expect("session put hung");
    assert!(matches!(r, Err(StorageError::Unavailable(_))), "{r:?}");
    let r = tokio::time::timeout(PROMPT, stores.archive.append(&source(), &PodMeta::default(), &lines(500..510)))
        .await
        .expect("append hung");
    assert!(matches!(r, Err(StorageError::Unavailable(_))), "{r:?}");
    let r = tokio::time::timeout(PROMPT, stores.sessions.ping()).await.expect("ping hung");
    assert!(r.is_err(), "ping must fail while down");
    eprintln!("down: 4 calls failed in {:?}", started.elapsed());
}

/// After the backend returns, the same store objects work again within `RECOVERY`, and the
/// data written before the fault is intact.
async fn assert_recovered(stores: &Stores, stored: u64) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        if stores.sessions.ping().await.is_ok() && stores.archive.ping().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "store did not recover within {RECOVERY:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A first call after recovery may still hit a connection that died with the server
    // (the pool discards it); what matters is that the store heals without being reopened.
    let mut session = stores.sessions.get("alice").await;
    if session.is_err() {
        session = stores.sessions.get("alice").await;
    }
    assert_eq!(session.unwrap().unwrap().data, b"{\"theme\":\"dark\"}", "session survived the fault");
    let read = stores.archive.read(&source(), LineQuery::after(None, 1000)).await.unwrap();
    assert_eq!(read.len() as u64, stored, "archived lines survived the fault");
    assert!(read.iter().enumerate().all(|(i, l)| l.position == i as u64));
    let o = stores.archive.append(&source(), &PodMeta::default(), &lines(stored - 100..stored + 100)).await.unwrap();
    assert_eq!((o.inserted, o.duplicates), (100, 100), "writes work again, idempotently");
    stores.sessions.put("alice", b"{\"theme\":\"dark\"}", Precondition::None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted() {
    let Some(binary) = require("redis-server", redis_binary()) else { return };
    let mut redis = PrivateRedis::start(binary);
    let config = RedisConfig { url: Secret::new(redis.url()), key_prefix: None };
    let store = kubelens_storage::redis::RedisStore::open(&config, StoreLimits::default()).await.unwrap();
    let stores = Stores::from_one(store, StorageBackend::Redis);
    write_before_fault(&stores).await;
    redis.stop();
    assert_down(&stores).await;
    redis.spawn();
    assert_recovered(&stores, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_startup_is_opened_in_the_background() {
    let Some(binary) = require("redis-server", redis_binary()) else { return };
    let port = free_port();
    let config = StorageConfig {
        backend: StorageBackend::Redis,
        redis: RedisConfig { url: Secret::new(format!("redis://127.0.0.1:{port}/0")), key_prefix: None },
        ..StorageConfig::default()
    };
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = failures.clone();
    let (deferred, task) = DeferredStores::open_in_background(config, StoreLimits::default(), move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let stores = deferred.as_stores(StorageBackend::Redis);
    let r = stores.sessions.get("alice").await;
    assert!(matches!(r, Err(StorageError::Unavailable(_))), "{r:?}");
    // Wait until at least one attempt failed, then bring Redis up on that port.
    let deadline = Instant::now() + PROMPT;
    while failures.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no open attempt failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut redis = PrivateRedis { binary, dir: tempfile::tempdir().unwrap(), port, child: None };
    redis.spawn();
    tokio::time::timeout(RECOVERY, task).await.expect("opener did not succeed").unwrap();
    stores.sessions.put("alice", b"{}", Precondition::None, None).await.unwrap();
    assert!(stores.sessions.get("alice").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted() {
    let Some(bindir) = require("PostgreSQL binaries", pg_bindir()) else { return };
    let pg = PrivatePostgres::start(bindir);
    let config = PostgresConfig { url: Secret::new(pg.url()), max_connections: 4, schema: Some("fault".into()) };
    let store = kubelens_storage::postgres::PostgresStore::open(&config, StoreLimits::default()).await.unwrap();
    let stores = Stores::from_one(store, StorageBackend::Postgres);
    write_before_fault(&stores).await;
    pg.ctl("stop");
    assert_down(&stores).await;
    pg.ctl("start");
    assert_recovered(&stores, 500).await;
    // A restart while idle connections sit in the pool (the usual production case).
    pg.ctl("restart");
    assert_recovered(&stores, 600).await;
}

/// A tiny private tmpfs, so "disk full" is real: sqlite gets ENOSPC on writes through its
/// already-open files, exactly like a full volume in production. Needs mount privileges.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::Builder::new().prefix("kubelens-tinyfs").tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Self { dir })
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem of `dir` until the next write fails with ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_and_recovered() {
    let Some(fs) = require("a mountable tmpfs (root)", TinyFs::mount("8m")) else { return };
    let path = fs.dir.path().join("kubelens.db");
    let config = SqliteConfig { path: path.display().to_string(), busy_timeout: Duration::from_millis(500) };
    let store = kubelens_storage::sqlite::SqliteStore::open(&config, StoreLimits::default()).await.unwrap();
    let stores = Stores::from_one(store, StorageBackend::Sqlite);
    write_before_fault(&stores).await;
    let filler = fill(fs.dir.path());
    // Enough new data that sqlite must grow its WAL: fails with SQLITE_FULL/IOERR.
    let big: Vec<ArchivedLine> = (1000..1400)
        .map(|i| ArchivedLine { position: i, timestamp_ns: 0, line: vec![b'x'; 8000], truncated: false })
        .collect();
    let r = tokio::time::timeout(PROMPT, stores.archive.append(&source(), &PodMeta::default(), &big))
        .await
        .expect("append hung");
    assert!(matches!(r, Err(StorageError::Unavailable(_))), "append on a full disk: {r:?}");
    let ping = tokio::time::timeout(PROMPT, stores.sessions.ping()).await.expect("ping hung");
    // Reads keep working while the disk is full (nothing written before is lost).
    let read = stores.archive.read(&source(), LineQuery::after(None, 1000)).await.unwrap();
    assert_eq!(read.len(), 500);
    std::fs::remove_file(&filler).unwrap();
    eprintln!("ping while full: {ping:?}");
    assert!(ping.is_err(), "the readiness ping (a tiny write) notices the full disk");
    assert_recovered(&stores, 500).await;
    // The refused batch left nothing half-written: it appends completely now.
    let o = stores.archive.append(&source(), &PodMeta::default(), &big).await.unwrap();
    assert_eq!(o.inserted, 400);
}

fn set_immutable(path: &Path, on: bool) -> bool {
    Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A database file that cannot be written when the store is opened (read-only volume,
/// immutable file): opening fails with a clear `Unavailable`, and succeeds once writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_unwritable_file_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubelens.db");
    let config = SqliteConfig { path: path.display().to_string(), busy_timeout: Duration::from_millis(500) };
    {
        let store = kubelens_storage::sqlite::SqliteStore::open(&config, StoreLimits::default()).await.unwrap();
        let stores = Stores::from_one(store, StorageBackend::Sqlite);
        write_before_fault(&stores).await;
    }
    // Root ignores permission bits; an immutable file behaves like a read-only volume.
    let locked: Vec<PathBuf> = [path.clone(), dir.path().to_path_buf()]
        .into_iter()
        .filter(|p| set_immutable(p, true))
        .collect();
    let used_chattr = !locked.is_empty();
    if !used_chattr {
        assert!(!is_root(), "chattr unavailable and running as root: cannot make sqlite unwritable");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    let r = tokio::time::timeout(PROMPT, kubelens_storage::sqlite::SqliteStore::open(&config, StoreLimits::default()))
        .await
        .expect("open hung");
    for p in locked.iter().rev() {
        set_immutable(p, false);
    }
    if !used_chattr {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let err = r.map(|_| ()).unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    let store = kubelens_storage::sqlite::SqliteStore::open(&config, StoreLimits::default()).await.unwrap();
    let stores = Stores::from_one(store, StorageBackend::Sqlite);
    assert_recovered(&stores, 500).await;
}

#[tokio::test]
async fn sqlite_unopenable_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let config = SqliteConfig { path: file.join("kubelens.db").display().to_string(), ..SqliteConfig::default() };
    let err = kubelens_storage::sqlite::SqliteStore::open(&config, StoreLimits::default()).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
}
