//! The embedded sqlite backend (sqlx): one file, WAL journal, busy timeout, created when
//! missing, migrations from `migrations/sqlite` applied at open. Single replica only: two
//! processes on one file over a network filesystem corrupt WAL databases.
//!
//! Writes to one source or session are serialized by sqlite's single writer
//! (`BEGIN IMMEDIATE` takes the write lock up front, so a read-then-write transaction never
//! fails with `SQLITE_BUSY` half-way; waiting writers honour `busy_timeout`).

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use kubelens_core::config::SqliteConfig;
use kubelens_core::storage::{
    AppendOutcome, ArchivedLine, LineQuery, LogArchive, PodMeta, Precondition, SessionStore, SourceInfo, SourceKey,
    StorageError, StoreFuture, StoreLimits, StoredSession, Version, expiry_ms, lines_within_caps, now_ms,
    validate_append, validate_query, validate_session_put, validate_subject,
};
use sqlx::sqlite::{SqliteConnection, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row};

use crate::sqlx_error;

/// Rows per multi-row INSERT: 5 bound values each stays far below sqlite's variable limit.
const INSERT_CHUNK: usize = 400;

/// Starts a write transaction that holds sqlite's write lock from the start.
///
/// Transactions are driven with plain `BEGIN IMMEDIATE` / `COMMIT` / `ROLLBACK` statements
/// (not sqlx's `Transaction`) so that a failed commit (disk full, I/O error) is rolled back
/// right here, and a connection whose state is unknown is closed instead of going back to
/// the pool: otherwise the next write on that pooled connection would fail too.
async fn begin_immediate(conn: &mut SqliteConnection) -> Result<(), StorageError> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.map_err(sqlx_error)?;
    Ok(())
}

/// Commits on success, rolls back on failure (closing the connection if even that fails).
async fn finish<T>(
    mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    result: Result<T, StorageError>,
) -> Result<T, StorageError> {
    let result = match result {
        Ok(value) => sqlx::query("COMMIT").execute(&mut *conn).await.map(|_| value).map_err(sqlx_error),
        Err(err) => Err(err),
    };
    if result.is_err() && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
        // "no transaction is active" after sqlite already rolled back is harmless; anything
        // else leaves the connection in an unknown state. Either way: do not reuse it.
        let _ = sqlx::Connection::close(conn.detach()).await;
    }
    result
}

/// sqlite-backed sessions and archive; cheap to clone (pooled).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    limits: StoreLimits,
}

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
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(config.busy_timeout.max(Duration::from_secs(1)))
            .connect_with(options)
            .await
            .map_err(sqlx_error)?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await.map_err(|e| sqlx_error(e.into()))?;
        let store = Self { pool, limits };
        // sqlite silently opens an unwritable file read-only; fail here, clearly, instead of
        // on the first user write.
        store.ping_db().await?;
        Ok(store)
    }

    async fn current_version(&self, subject: &str, now: i64) -> Result<Option<Version>, StorageError> {
        let row = sqlx::query(
            "SELECT version FROM kubelens_sessions WHERE subject = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
        )
        .bind(subject)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(sqlx_error)?;
        Ok(row.map(|r| Version(r.get::<i64, _>(0) as u64)))
    }

    async fn session_get(&self, subject: &str) -> Result<Option<StoredSession>, StorageError> {
        validate_subject(subject)?;
        let row = sqlx::query(
            "SELECT data, version, updated_at_ms FROM kubelens_sessions \
             WHERE subject = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
        )
        .bind(subject)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(sqlx_error)?;
        Ok(row.map(|r| StoredSession {
            data: r.get(0),
            version: Version(r.get::<i64, _>(1) as u64),
            updated_at_ms: r.get(2),
        }))
    }

    async fn session_put(
        &self,
        subject: &str,
        data: &[u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> Result<Version, StorageError> {
        validate_session_put(subject, data, &self.limits)?;
        let now = now_ms();
        let candidate = Version::next(None).0 as i64;
        let expires = ttl.map(|t| expiry_ms(now, t));
        // One statement per precondition, so the check and the write are atomic without a
        // lock held across round trips. `MAX(candidate, version + 1)` keeps versions increasing.
        let (sql, expected): (&'static str, Option<i64>) = match precondition {
            Precondition::None => (
                "INSERT INTO kubelens_sessions (subject, data, version, updated_at_ms, expires_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (subject) DO UPDATE SET data = excluded.data, \
                   version = MAX(excluded.version, kubelens_sessions.version + 1), \
                   updated_at_ms = excluded.updated_at_ms, expires_at_ms = excluded.expires_at_ms \
                 RETURNING version",
                None,
            ),
            Precondition::Absent => (
                "INSERT INTO kubelens_sessions (subject, data, version, updated_at_ms, expires_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (subject) DO UPDATE SET data = excluded.data, \
                   version = MAX(excluded.version, kubelens_sessions.version + 1), \
                   updated_at_ms = excluded.updated_at_ms, expires_at_ms = excluded.expires_at_ms \
                 WHERE kubelens_sessions.expires_at_ms IS NOT NULL AND kubelens_sessions.expires_at_ms <= ?4 \
                 RETURNING version",
                None,
            ),
            Precondition::Exists => (
                "UPDATE kubelens_sessions SET data = ?2, version = MAX(?3, version + 1), updated_at_ms = ?4, \
                   expires_at_ms = ?5 \
                 WHERE subject = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?4) RETURNING version",
                None,
            ),
            Precondition::Matches(v) => (
                "UPDATE kubelens_sessions SET data = ?2, version = MAX(?3, version + 1), updated_at_ms = ?4, \
                   expires_at_ms = ?5 \
                 WHERE subject = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?4) AND version = ?6 \
                 RETURNING version",
                Some(v.0 as i64),
            ),
        };
        let mut query = sqlx::query(sql).bind(subject).bind(data).bind(candidate).bind(now).bind(expires);
        if let Some(expected) = expected {
            query = query.bind(expected);
        }
        let row = query.fetch_optional(&self.pool).await.map_err(sqlx_error)?;
        match row {
            Some(row) => Ok(Version(row.get::<i64, _>(0) as u64)),
            None => Err(StorageError::Conflict { current: self.current_version(subject, now).await? }),
        }
    }

    async fn session_delete(&self, subject: &str, precondition: Precondition) -> Result<bool, StorageError> {
        validate_subject(subject)?;
        let now = now_ms();
        let live = "(expires_at_ms IS NULL OR expires_at_ms > ?2)";
        let result = match precondition {
            Precondition::Absent => {
                let current = self.current_version(subject, now).await?;
                return match current {
                    Some(_) => Err(StorageError::Conflict { current }),
                    None => Ok(false),
                };
            }
            Precondition::None => {
                // Deletes expired leftovers too, but only reports live sessions as existing.
                let row = sqlx::query(
                    "DELETE FROM kubelens_sessions WHERE subject = ?1 \
                     RETURNING (expires_at_ms IS NULL OR expires_at_ms > ?2)",
                )
                .bind(subject)
                .bind(now)
                .fetch_optional(&self.pool)
                .await
                .map_err(sqlx_error)?;
                return Ok(row.is_some_and(|r| r.get::<bool, _>(0)));
            }
            Precondition::Exists => sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM kubelens_sessions WHERE subject = ?1 AND {live}"
            )))
            .bind(subject)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(sqlx_error)?,
            Precondition::Matches(v) => sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM kubelens_sessions WHERE subject = ?1 AND {live} AND version = ?3"
            )))
            .bind(subject)
            .bind(now)
            .bind(v.0 as i64)
            .execute(&self.pool)
            .await
            .map_err(sqlx_error)?,
        };
        if result.rows_affected() == 1 {
            Ok(true)
        } else {
            Err(StorageError::Conflict { current: self.current_version(subject, now).await? })
        }
    }

    async fn archive_append(
        &self,
        key: &SourceKey,
        meta: &PodMeta,
        lines: &[ArchivedLine],
    ) -> Result<AppendOutcome, StorageError> {
        validate_append(key, meta, lines, &self.limits)?;
        let meta_json = serde_json::to_string(meta).map_err(|e| StorageError::Invalid(e.to_string()))?;
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        begin_immediate(&mut conn).await?;
        let result = self.append_in_tx(&mut conn, key, &meta_json, lines).await;
        finish(conn, result).await
    }

    async fn append_in_tx(
        &self,
        tx: &mut SqliteConnection,
        key: &SourceKey,
        meta_json: &str,
        lines: &[ArchivedLine],
    ) -> Result<AppendOutcome, StorageError> {
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO kubelens_log_sources (namespace, pod, pod_uid, container, instance, meta, created_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (namespace, pod, pod_uid, container, instance) DO UPDATE SET meta = excluded.meta \
             RETURNING id, line_count, byte_count, expires_at_ms",
        )
        .bind(&key.namespace)
        .bind(&key.pod)
        .bind(&key.pod_uid)
        .bind(&key.container)
        .bind(i64::from(key.instance))
        .bind(meta_json)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(sqlx_error)?;
        let id: i64 = row.get(0);
        let (mut stored_lines, mut stored_bytes): (i64, i64) = (row.get(1), row.get(2));
        let expires: Option<i64> = row.get(3);
        if expires.is_some_and(|at| at <= now) {
            // An expired source that the purge job has not removed yet starts over.
            sqlx::query("DELETE FROM kubelens_log_lines WHERE source_id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(sqlx_error)?;
            sqlx::query(
                "UPDATE kubelens_log_sources SET line_count = 0, byte_count = 0, dropped = 0, \
                 terminated_at_ms = NULL, expires_at_ms = NULL, created_at_ms = ?2 WHERE id = ?1",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(sqlx_error)?;
            (stored_lines, stored_bytes) = (0, 0);
        }
        let mut sorted: Vec<&ArchivedLine> = lines.iter().collect();
        sorted.sort_by_key(|l| l.position);
        sorted.dedup_by_key(|l| l.position);
        let existing: HashSet<i64> = match (sorted.first(), sorted.last()) {
            (Some(first), Some(last)) => sqlx::query_scalar(
                "SELECT position FROM kubelens_log_lines WHERE source_id = ?1 AND position BETWEEN ?2 AND ?3",
            )
            .bind(id)
            .bind(first.position as i64)
            .bind(last.position as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(sqlx_error)?
            .into_iter()
            .collect(),
            _ => HashSet::new(),
        };
        let fresh: Vec<&ArchivedLine> =
            sorted.into_iter().filter(|l| !existing.contains(&(l.position as i64))).collect();
        let duplicates = (lines.len() - fresh.len()) as u64;
        let fit = lines_within_caps(&fresh, stored_lines as u64, stored_bytes as u64, &self.limits);
        let accepted = &fresh[..fit];
        for chunk in accepted.chunks(INSERT_CHUNK) {
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
                    .bind(id)
                    .bind(line.position as i64)
                    .bind(line.timestamp_ns)
                    .bind(line.truncated)
                    .bind(line.line.as_slice());
            }
            query.execute(&mut *tx).await.map_err(sqlx_error)?;
        }
        let added_bytes: u64 = accepted.iter().map(|l| l.line.len() as u64).sum();
        let dropped = (fresh.len() - fit) as i64;
        sqlx::query(
            "UPDATE kubelens_log_sources SET line_count = line_count + ?2, byte_count = byte_count + ?3, \
             dropped = dropped + ?4 WHERE id = ?1",
        )
        .bind(id)
        .bind(fit as i64)
        .bind(added_bytes as i64)
        .bind(dropped)
        .execute(&mut *tx)
        .await
        .map_err(sqlx_error)?;
        Ok(AppendOutcome { inserted: fit as u64, duplicates, dropped: dropped as u64 })
    }

    async fn archive_read(&self, key: &SourceKey, query: LineQuery) -> Result<Vec<ArchivedLine>, StorageError> {
        validate_query(key, &query)?;
        let after = query.after.map_or(-1, |a| a.min(i64::MAX as u64) as i64);
        let rows = sqlx::query(
            "SELECT l.position, l.ts_ns, l.truncated, l.line FROM kubelens_log_lines l \
             JOIN kubelens_log_sources s ON s.id = l.source_id \
             WHERE s.namespace = ?1 AND s.pod = ?2 AND s.pod_uid = ?3 AND s.container = ?4 AND s.instance = ?5 \
               AND (s.expires_at_ms IS NULL OR s.expires_at_ms > ?6) \
               AND l.position > ?7 AND (?8 IS NULL OR l.ts_ns >= ?8) \
               AND (?9 IS NULL OR l.ts_ns < ?9) \
             ORDER BY l.position LIMIT ?10",
        )
        .bind(&key.namespace)
        .bind(&key.pod)
        .bind(&key.pod_uid)
        .bind(&key.container)
        .bind(i64::from(key.instance))
        .bind(now_ms())
        .bind(after)
        .bind(query.since_ns)
        .bind(query.until_ns)
        .bind(query.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(sqlx_error)?;
        Ok(rows
            .into_iter()
            .map(|r| ArchivedLine {
                position: r.get::<i64, _>(0) as u64,
                timestamp_ns: r.get(1),
                truncated: r.get(2),
                line: r.get(3),
            })
            .collect())
    }

    async fn archive_list(&self, namespace: &str) -> Result<Vec<SourceInfo>, StorageError> {
        let rows = sqlx::query(
            "SELECT namespace, pod, pod_uid, container, instance, meta, terminated_at_ms, expires_at_ms, \
               line_count, byte_count, dropped FROM kubelens_log_sources \
             WHERE namespace = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2) \
             ORDER BY pod, pod_uid, container, instance",
        )
        .bind(namespace)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(sqlx_error)?;
        rows.into_iter()
            .map(|r| {
                let meta: String = r.get(5);
                Ok(SourceInfo {
                    key: SourceKey {
                        namespace: r.get(0),
                        pod: r.get(1),
                        pod_uid: r.get(2),
                        container: r.get(3),
                        instance: u32::try_from(r.get::<i64, _>(4))
                            .map_err(|_| StorageError::Corrupt("instance out of range".to_owned()))?,
                    },
                    meta: serde_json::from_str(&meta).map_err(|e| StorageError::Corrupt(e.to_string()))?,
                    terminated_at_ms: r.get(6),
                    expires_at_ms: r.get(7),
                    lines: r.get::<i64, _>(8) as u64,
                    bytes: r.get::<i64, _>(9) as u64,
                    dropped: r.get::<i64, _>(10) as u64,
                })
            })
            .collect()
    }

    async fn archive_mark(&self, key: &SourceKey, at_ms: i64, ttl: Duration) -> Result<bool, StorageError> {
        key.validate()?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let result = sqlx::query(
            "UPDATE kubelens_log_sources SET \
               terminated_at_ms = MIN(COALESCE(terminated_at_ms, ?6), ?6), \
               expires_at_ms = MIN(COALESCE(terminated_at_ms, ?6), ?6) + ?7 \
             WHERE namespace = ?1 AND pod = ?2 AND pod_uid = ?3 AND container = ?4 AND instance = ?5 \
               AND (expires_at_ms IS NULL OR expires_at_ms > ?8)",
        )
        .bind(&key.namespace)
        .bind(&key.pod)
        .bind(&key.pod_uid)
        .bind(&key.container)
        .bind(i64::from(key.instance))
        .bind(at_ms)
        .bind(ttl_ms)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(sqlx_error)?;
        Ok(result.rows_affected() == 1)
    }

    async fn archive_purge(&self) -> Result<u64, StorageError> {
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        begin_immediate(&mut conn).await?;
        let result = Self::purge_in_tx(&mut conn).await;
        finish(conn, result).await
    }

    async fn purge_in_tx(tx: &mut SqliteConnection) -> Result<u64, StorageError> {
        let now = now_ms();
        sqlx::query(
            "DELETE FROM kubelens_log_lines WHERE source_id IN \
             (SELECT id FROM kubelens_log_sources WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(sqlx_error)?;
        let removed =
            sqlx::query("DELETE FROM kubelens_log_sources WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1")
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(sqlx_error)?
                .rows_affected();
        Ok(removed)
    }

    async fn session_purge(&self) -> Result<u64, StorageError> {
        Ok(sqlx::query("DELETE FROM kubelens_sessions WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1")
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(sqlx_error)?
            .rows_affected())
    }

    async fn ping_db(&self) -> Result<(), StorageError> {
        // A tiny write proves the file is open, the schema present and the file writable.
        sqlx::query("INSERT OR REPLACE INTO kubelens_heartbeat (id, at_ms) VALUES (1, ?1)")
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(sqlx_error)?;
        Ok(())
    }
}

impl SessionStore for SqliteStore {
    fn get<'a>(&'a self, subject: &'a str) -> StoreFuture<'a, Option<StoredSession>> {
        Box::pin(self.session_get(subject))
    }
    fn put<'a>(
        &'a self,
        subject: &'a str,
        data: &'a [u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, Version> {
        Box::pin(self.session_put(subject, data, precondition, ttl))
    }
    fn delete<'a>(&'a self, subject: &'a str, precondition: Precondition) -> StoreFuture<'a, bool> {
        Box::pin(self.session_delete(subject, precondition))
    }
    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.session_purge())
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.ping_db())
    }
}

impl LogArchive for SqliteStore {
    fn append<'a>(
        &'a self,
        source: &'a SourceKey,
        meta: &'a PodMeta,
        lines: &'a [ArchivedLine],
    ) -> StoreFuture<'a, AppendOutcome> {
        Box::pin(self.archive_append(source, meta, lines))
    }
    fn read<'a>(&'a self, source: &'a SourceKey, query: LineQuery) -> StoreFuture<'a, Vec<ArchivedLine>> {
        Box::pin(self.archive_read(source, query))
    }
    fn list_sources<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, Vec<SourceInfo>> {
        Box::pin(self.archive_list(namespace))
    }
    fn mark_terminated<'a>(
        &'a self,
        source: &'a SourceKey,
        terminated_at_ms: i64,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.archive_mark(source, terminated_at_ms, ttl))
    }
    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.archive_purge())
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.ping_db())
    }
}
