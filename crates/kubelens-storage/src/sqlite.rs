//! The embedded sqlite backend (sqlx): one file, WAL journal, busy timeout, created when
//! missing, migrations from `migrations/sqlite` applied at open. Single replica only: two
//! processes on one file over a network filesystem corrupt WAL databases, and stream tickets
//! and credentials stay in each process's memory. Opening takes an advisory lock on
//! `<path>.lock`; when another process holds it, start-up says so (a warning: the second
//! process still works, alone, on the same file).
//!
//! The statements are the shared ones of [`crate::sql`]; this module is sqlite's dialect.
//! Writes to one source or session are serialized by sqlite's single writer
//! (`BEGIN IMMEDIATE` takes the write lock up front, so a read-then-write transaction never
//! fails with `SQLITE_BUSY` half-way; waiting writers honour `busy_timeout`).

use std::str::FromStr;
use std::time::Duration;

use kubelens_core::config::SqliteConfig;
use kubelens_core::storage::{ArchivedLine, StorageError, StoreLimits};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Sqlite};

use crate::backend::{Backend, StoreAdapter};
use crate::sql::{SqlBackend, SqlDialect, sqlx_error};

/// Rows per multi-row INSERT: 5 bound values each stays far below sqlite's variable limit.
const INSERT_CHUNK: usize = 400;

impl SqlDialect for Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    // A tiny write proves the file is open, the schema present and the file writable (sqlite
    // would otherwise show a read-only file or a full disk only on the next real write).
    const PING: &'static str = "INSERT OR REPLACE INTO kubelens_heartbeat (id, at_ms) \
        VALUES (1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))";

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn insert_lines(conn: &mut SqliteConnection, source_id: i64, lines: &[&ArchivedLine]) -> Result<(), StorageError> {
        for chunk in lines.chunks(INSERT_CHUNK) {
            let mut sql = String::from(
                "INSERT OR IGNORE INTO kubelens_log_lines (source_id, position, ts_ns, truncated, line) VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(?,?,?,?,?)");
            }
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for line in chunk {
                query = query
                    .bind(source_id)
                    .bind(line.position as i64)
                    .bind(line.timestamp_ns)
                    .bind(line.truncated)
                    .bind(line.line.as_slice());
            }
            query.execute(&mut *conn).await.map_err(sqlx_error)?;
        }
        Ok(())
    }
}

/// sqlite-backed sessions and archive; cheap to clone (pooled).
pub type SqliteStore = StoreAdapter<SqlBackend<Sqlite>>;

impl SqliteStore {
    /// Opens (creating when missing) the database file and applies migrations.
    pub async fn open(config: &SqliteConfig, limits: StoreLimits) -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", config.path))
            .map_err(|e| StorageError::Invalid(format!("storage.sqlite.path: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across process crashes in WAL mode; only an OS crash can lose
            // the last transactions, which is acceptable for sessions and log archives.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(config.busy_timeout)
            // Also makes purging a source delete its lines (ON DELETE CASCADE).
            .foreign_keys(true);
        warn_if_another_process_uses(&config.path);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(config.busy_timeout.max(Duration::from_secs(1)))
            .connect_with(options)
            .await
            .map_err(sqlx_error)?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await.map_err(|e| sqlx_error(e.into()))?;
        let backend = SqlBackend::new(pool, limits);
        // sqlite silently opens an unwritable file read-only; fail here, clearly, instead of
        // on the first user write.
        backend.ping().await?;
        Ok(StoreAdapter::new(backend))
    }
}

/// Lock files this process holds, by database path: held until exit, and reopening a file in
/// the same process (tests, a retried open) is not "another replica".
static HELD_LOCKS: std::sync::Mutex<Vec<(String, std::fs::File)>> = std::sync::Mutex::new(Vec::new());

/// Warns when another process holds the lock of the sqlite file at `path`.
fn warn_if_another_process_uses(path: &str) {
    if path.starts_with(':') || path.is_empty() {
        return; // in-memory database
    }
    let mut held = HELD_LOCKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if held.iter().any(|(p, _)| p == path) {
        return;
    }
    match lock_exclusively(&format!("{path}.lock")) {
        Ok(Some(file)) => held.push((path.to_owned(), file)),
        Ok(None) => tracing::warn!(
            path,
            "another process uses this sqlite database: sqlite serves ONE replica (stream tickets and credentials \
             stay per process, so a ticket from one replica fails on another); use storage.backend postgres or redis \
             for several replicas"
        ),
        Err(err) => tracing::debug!(path, error = %err, "cannot take the sqlite replica lock; not checking for other replicas"),
    }
}

/// `Some(file)` holding an exclusive advisory lock on `lock_path`, `None` when another open
/// file description (another process) holds it.
fn lock_exclusively(lock_path: &str) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_of_the_lock_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("kubelens.db.lock").display().to_string();
        let first = lock_exclusively(&lock).unwrap();
        assert!(first.is_some());
        // Another open file description is what another process would have.
        assert!(lock_exclusively(&lock).unwrap().is_none(), "the second replica is detected");
        drop(first);
        assert!(lock_exclusively(&lock).unwrap().is_some(), "the lock ends with its holder");
    }
}
