//! The PostgreSQL backend (sqlx pool): shared by several replicas. Migrations from
//! `migrations/postgres` run at open (sqlx takes an advisory lock, so replicas starting
//! together apply them once). An optional `schema` isolates installations (and tests) that
//! share one database.
//!
//! The statements are the shared ones of [`crate::sql`]; this module is PostgreSQL's dialect.
//! Concurrency: every write is a single statement or a transaction that first locks the
//! source row (`INSERT .. ON CONFLICT DO UPDATE` takes the row lock), so concurrent appends
//! to one source from several replicas serialize and never duplicate a position; session
//! preconditions are checked in the `UPDATE .. WHERE version = $n` itself.
//!
//! Lines are written with one `INSERT … SELECT FROM UNNEST(arrays)`: the whole batch is one
//! statement sent in one write (Parse/Bind/Execute/Sync), answered in one round trip. It has no
//! `ON CONFLICT`, and needs none: the lines handed to it were just probed as absent while the
//! source row lock is held, so no other writer can insert them before this transaction commits.
//! Should that reasoning ever break, the primary key still refuses the duplicate and the whole
//! batch fails (`Unavailable`) without writing anything.
//!
//! Why not `COPY … FROM STDIN`, PostgreSQL's bulk path: sqlx 0.9.0 does not set `TCP_NODELAY`
//! (upstream issue transact-rs/sqlx#4335), and COPY writes its data and then `CopyDone` as two
//! writes before reading the answer, so over TCP Nagle's algorithm holds `CopyDone` until the
//! server's delayed ACK (~40 ms) — measured: 2,200 lines/s with batches of 100 over TCP against
//! 44,000 over a Unix socket (docs/benchmarks/storage.md). One statement per batch never waits.

use std::time::Duration;

use kubelens_core::config::PostgresConfig;
use kubelens_core::storage::{ArchivedLine, StorageError, StoreLimits};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres};

use crate::backend::StoreAdapter;
use crate::sql::{SqlBackend, SqlDialect, sqlx_error};

/// How long a call waits for a pooled connection before answering `Unavailable`: short, so a
/// dead database turns into a prompt 503 instead of hanging requests.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// True for a plain lowercase SQL identifier (no quoting needed, no injection possible).
fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
}

impl SqlDialect for Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    // Reading the sessions table proves a connection works and the schema is present.
    const PING: &'static str = "SELECT 1 FROM kubelens_sessions LIMIT 1";

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn insert_lines(conn: &mut PgConnection, source_id: i64, lines: &[&ArchivedLine]) -> Result<(), StorageError> {
        // Positions are bounded far below i64::MAX (a source's line count).
        let positions: Vec<i64> = lines.iter().map(|l| i64::try_from(l.position).unwrap_or(i64::MAX)).collect();
        let stamps: Vec<i64> = lines.iter().map(|l| l.timestamp_ns).collect();
        let truncated: Vec<bool> = lines.iter().map(|l| l.truncated).collect();
        let payloads: Vec<&[u8]> = lines.iter().map(|l| l.line.as_slice()).collect();
        let result = sqlx::query(
            "INSERT INTO kubelens_log_lines (source_id, position, ts_ns, truncated, line) \
             SELECT $1, * FROM UNNEST($2::int8[], $3::int8[], $4::bool[], $5::bytea[])",
        )
        .bind(source_id)
        .bind(positions)
        .bind(stamps)
        .bind(truncated)
        .bind(payloads)
        .execute(&mut *conn)
        .await
        .map_err(sqlx_error)?;
        if result.rows_affected() != lines.len() as u64 {
            return Err(StorageError::Unavailable(format!("stored {} of {} lines", result.rows_affected(), lines.len())));
        }
        Ok(())
    }
}

/// PostgreSQL-backed sessions and archive; cheap to clone (pooled).
pub type PostgresStore = StoreAdapter<SqlBackend<Postgres>>;

impl PostgresStore {
    /// Connects, creates the configured schema if needed and applies migrations.
    pub async fn open(config: &PostgresConfig, limits: StoreLimits) -> Result<Self, StorageError> {
        let mut options: PgConnectOptions = config
            .url
            .expose()
            .parse()
            // The parse error may echo parts of the URL; keep the message generic.
            .map_err(|_| StorageError::Invalid("storage.postgres.url is not a valid PostgreSQL URL".to_owned()))?;
        if let Some(schema) = &config.schema {
            if !is_plain_identifier(schema) {
                return Err(StorageError::Invalid(
                    "storage.postgres.schema must be a lowercase identifier ([a-z_][a-z0-9_]*)".to_owned(),
                ));
            }
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(sqlx_error)?;
        if let Some(schema) = &config.schema {
            let created = sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}"))).execute(&pool).await;
            match created {
                // Replicas starting together race here: `IF NOT EXISTS` is not atomic, and the
                // loser gets unique_violation (23505) although the schema now exists.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {}
                other => {
                    other.map_err(sqlx_error)?;
                }
            }
        }
        sqlx::migrate!("./migrations/postgres").run(&pool).await.map_err(|e| sqlx_error(e.into()))?;
        Ok(StoreAdapter::new(SqlBackend::new(pool, limits)))
    }
}
