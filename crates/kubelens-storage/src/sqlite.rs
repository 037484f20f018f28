//! The embedded sqlite backend (sqlx): one file, WAL journal, busy timeout, created when
//! missing, migrations from `migrations/sqlite` applied at open. Single replica only: two
//! processes on one file over a network filesystem corrupt WAL databases.
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
