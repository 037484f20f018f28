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
//! Lines are written with `COPY … FROM STDIN (FORMAT binary)`, the fastest way into
//! PostgreSQL. COPY has no `ON CONFLICT`, and needs none: the lines handed to it were just
//! probed as absent while the source row lock is held, so no other writer can insert them
//! before this transaction commits. Should that reasoning ever break, the primary key still
//! refuses the duplicate and the whole batch fails (`Unavailable`) without writing anything.

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

/// The lines of one batch in PostgreSQL's binary COPY format: the signature header, one
/// tuple of five fields per line (int8, int8, int8, bool, bytea; each a big-endian length
/// and the value's binary form) and the end marker.
fn copy_binary(source_id: i64, lines: &[&ArchivedLine]) -> Vec<u8> {
    let payload: usize = lines.iter().map(|l| l.line.len()).sum();
    let mut buf = Vec::with_capacity(21 + lines.len() * 47 + payload);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    buf.extend_from_slice(&0i32.to_be_bytes()); // no header extension
    for line in lines {
        buf.extend_from_slice(&5i16.to_be_bytes());
        for value in [source_id, line.position as i64, line.timestamp_ns] {
            buf.extend_from_slice(&8i32.to_be_bytes());
            buf.extend_from_slice(&value.to_be_bytes());
        }
        buf.extend_from_slice(&1i32.to_be_bytes());
        buf.push(u8::from(line.truncated));
        // Lines are bounded by `archive_max_line_bytes`, far below i32::MAX.
        buf.extend_from_slice(&i32::try_from(line.line.len()).unwrap_or(i32::MAX).to_be_bytes());
        buf.extend_from_slice(&line.line);
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf
}

impl SqlDialect for Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    // Reading the sessions table proves a connection works and the schema is present.
    const PING: &'static str = "SELECT 1 FROM kubelens_sessions LIMIT 1";

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn insert_lines(conn: &mut PgConnection, source_id: i64, lines: &[&ArchivedLine]) -> Result<(), StorageError> {
        let mut copy = conn
            .copy_in_raw("COPY kubelens_log_lines (source_id, position, ts_ns, truncated, line) FROM STDIN (FORMAT binary)")
            .await
            .map_err(sqlx_error)?;
        if let Err(err) = copy.send(copy_binary(source_id, lines)).await {
            let _ = copy.abort("send failed").await;
            return Err(sqlx_error(err));
        }
        let copied = copy.finish().await.map_err(sqlx_error)?;
        if copied != lines.len() as u64 {
            return Err(StorageError::Unavailable(format!("COPY stored {copied} of {} lines", lines.len())));
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
            sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}")))
                .execute(&pool)
                .await
                .map_err(sqlx_error)?;
        }
        sqlx::migrate!("./migrations/postgres").run(&pool).await.map_err(|e| sqlx_error(e.into()))?;
        Ok(StoreAdapter::new(SqlBackend::new(pool, limits)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_binary_layout() {
        let line = ArchivedLine { position: 7, timestamp_ns: 9, line: b"ab".to_vec(), truncated: true };
        let buf = copy_binary(3, &[&line]);
        assert_eq!(&buf[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(buf.len(), 19 + 2 + 3 * 12 + 5 + 6 + 2);
        assert_eq!(&buf[19..21], &5i16.to_be_bytes());
        assert_eq!(&buf[buf.len() - 4..], &[b'a', b'b', 0xff, 0xff]);
    }
}
