//! The one SQL store, generic over sqlx's [`Database`]: sqlite and PostgreSQL run the same
//! statements (`$n` placeholders, `INSERT … ON CONFLICT`, `RETURNING`, `CASE` instead of
//! `MAX`/`GREATEST`), and a [`SqlDialect`] supplies what really differs: how a write
//! transaction begins, the readiness ping, and how a batch of lines is inserted (sqlite:
//! multi-row `INSERT`s; PostgreSQL: one `INSERT … SELECT FROM UNNEST`). The schemas (DDL) are the two
//! migration directories.
//!
//! Appends: one transaction that first upserts the source row — on PostgreSQL that takes the
//! row lock, so concurrent appenders of one source (other replicas) serialize; sqlite has a
//! single writer anyway (`BEGIN IMMEDIATE`) — then reads which positions of the batch are
//! already stored, applies the caps and inserts only the new lines. Under that lock no other
//! writer can insert those positions, and the primary key `(source_id, position)` guarantees
//! no duplicate even if one tried.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use kubelens_core::audit::AuditEvent;
use kubelens_core::storage::{
    AppendOutcome, ArchivedLine, AuditPage, AuditQuery, encode_audit_events, validate_audit_query, LineQuery, PodMeta, Precondition, SourceInfo, SourceKey, StorageError, StoreLimits,
    StoredSession, Version, expiry_ms, lines_within_caps, now_ms, validate_append, validate_credential_key,
    validate_credential_put, validate_query, validate_session_put, validate_subject,
};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::backend::Backend;

/// Audit events per `INSERT` (5 parameters each: far below sqlite's and PostgreSQL's caps).
const AUDIT_ROWS_PER_STATEMENT: usize = 200;

/// What differs between the SQL databases behind [`SqlBackend`].
pub trait SqlDialect: Database {
    /// The statement that starts a write transaction.
    const BEGIN_WRITE: &'static str;
    /// The readiness ping: a cheap statement proving the connection and the schema.
    const PING: &'static str;
    /// How many rows a statement changed (each driver has its own result type).
    fn rows_affected(result: &Self::QueryResult) -> u64;
    /// Inserts `lines` (sorted by position, none stored yet) of source `source_id` inside the
    /// open write transaction on `conn`.
    fn insert_lines(
        conn: &mut Self::Connection,
        source_id: i64,
        lines: &[&ArchivedLine],
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// Maps sqlx errors: connection-level and resource errors are `Unavailable`, decode errors
/// `Corrupt`. The message never contains the connection URL (sqlx does not print it).
pub(crate) fn sqlx_error(err: sqlx::Error) -> StorageError {
    match &err {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. } => StorageError::Corrupt(err.to_string()),
        sqlx::Error::Migrate(m) => StorageError::Corrupt(format!("migration failed: {m}")),
        _ => StorageError::Unavailable(err.to_string()),
    }
}

/// Sessions and archive in a SQL database; cheap to clone (pooled).
#[derive(Debug)]
pub struct SqlBackend<DB: Database> {
    pool: Pool<DB>,
    limits: StoreLimits,
}

impl<DB: Database> Clone for SqlBackend<DB> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), limits: self.limits }
    }
}

impl<DB: Database> SqlBackend<DB> {
    /// A backend on `pool`, whose schema is migrated already.
    pub(crate) fn new(pool: Pool<DB>, limits: StoreLimits) -> Self {
        Self { pool, limits }
    }
}

// The bounds below say that sqlx can run our statements on `DB` and bind/decode the column
// types we use; Rust does not imply them from a trait, so they stand here, once.
impl<DB> Backend for SqlBackend<DB>
where
    DB: SqlDialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn session_get(&self, subject: &str) -> Result<Option<StoredSession>, StorageError> {
        validate_subject(subject)?;
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        let row = sqlx::query(
            "SELECT data, version, updated_at_ms FROM kubelens_sessions \
             WHERE subject = $1 AND (expires_at_ms IS NULL OR expires_at_ms > $2)",
        )
        .bind(subject)
        .bind(now_ms())
        .fetch_optional(&mut *conn)
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
        // lock held across round trips. The new version is max(candidate, version + 1).
        let (sql, expected): (&'static str, Option<i64>) = match precondition {
            Precondition::None => (
                "INSERT INTO kubelens_sessions (subject, data, version, updated_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (subject) DO UPDATE SET data = excluded.data, \
                   version = CASE WHEN excluded.version > kubelens_sessions.version \
                     THEN excluded.version ELSE kubelens_sessions.version + 1 END, \
                   updated_at_ms = excluded.updated_at_ms, expires_at_ms = excluded.expires_at_ms \
                 RETURNING version",
                None,
            ),
            Precondition::Absent => (
                "INSERT INTO kubelens_sessions (subject, data, version, updated_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (subject) DO UPDATE SET data = excluded.data, \
                   version = CASE WHEN excluded.version > kubelens_sessions.version \
                     THEN excluded.version ELSE kubelens_sessions.version + 1 END, \
                   updated_at_ms = excluded.updated_at_ms, expires_at_ms = excluded.expires_at_ms \
                 WHERE kubelens_sessions.expires_at_ms IS NOT NULL AND kubelens_sessions.expires_at_ms <= $4 \
                 RETURNING version",
                None,
            ),
            Precondition::Exists => (
                "UPDATE kubelens_sessions SET data = $2, \
                   version = CASE WHEN $3 > version THEN $3 ELSE version + 1 END, \
                   updated_at_ms = $4, expires_at_ms = $5 \
                 WHERE subject = $1 AND (expires_at_ms IS NULL OR expires_at_ms > $4) RETURNING version",
                None,
            ),
            Precondition::Matches(v) => (
                "UPDATE kubelens_sessions SET data = $2, \
                   version = CASE WHEN $3 > version THEN $3 ELSE version + 1 END, \
                   updated_at_ms = $4, expires_at_ms = $5 \
                 WHERE subject = $1 AND (expires_at_ms IS NULL OR expires_at_ms > $4) AND version = $6 \
                 RETURNING version",
                Some(v.0 as i64),
            ),
        };
        let mut query = sqlx::query(sql).bind(subject).bind(data).bind(candidate).bind(now).bind(expires);
        if let Some(expected) = expected {
            query = query.bind(expected);
        }
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        let row = query.fetch_optional(&mut *conn).await.map_err(sqlx_error)?;
        drop(conn);
        match row {
            Some(row) => Ok(Version(row.get::<i64, _>(0) as u64)),
            None => Err(StorageError::Conflict { current: self.session_get(subject).await?.map(|s| s.version) }),
        }
    }

    async fn session_delete(&self, subject: &str, precondition: Precondition) -> Result<bool, StorageError> {
        validate_subject(subject)?;
        let now = now_ms();
        let deleted = match precondition {
            Precondition::Absent => 0,
            Precondition::None => {
                // Deletes expired leftovers too, but only reports live sessions as existing.
                let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
                let row = sqlx::query(
                    "DELETE FROM kubelens_sessions WHERE subject = $1 \
                     RETURNING (expires_at_ms IS NULL OR expires_at_ms > $2)",
                )
                .bind(subject)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await
                .map_err(sqlx_error)?;
                return Ok(row.is_some_and(|r| r.get::<bool, _>(0)));
            }
            Precondition::Exists | Precondition::Matches(_) => {
                let version = match precondition {
                    Precondition::Matches(v) => Some(v.0 as i64),
                    _ => None,
                };
                let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
                sqlx::query(
                    "DELETE FROM kubelens_sessions WHERE subject = $1 \
                     AND (expires_at_ms IS NULL OR expires_at_ms > $2) AND ($3 IS NULL OR version = $3)",
                )
                .bind(subject)
                .bind(now)
                .bind(version)
                .execute(&mut *conn)
                .await
                .map_err(sqlx_error)
                .map(|r| DB::rows_affected(&r))?
            }
        };
        if deleted == 1 {
            return Ok(true);
        }
        let current = self.session_get(subject).await?.map(|s| s.version);
        match (precondition, current) {
            (Precondition::Absent, None) => Ok(false),
            _ => Err(StorageError::Conflict { current }),
        }
    }

    async fn session_purge(&self) -> Result<u64, StorageError> {
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        sqlx::query("DELETE FROM kubelens_sessions WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= $1")
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .map_err(sqlx_error)
            .map(|r| DB::rows_affected(&r))
    }

    async fn credential_put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        validate_credential_put(key, value, ttl)?;
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        sqlx::query(
            "INSERT INTO kubelens_credentials (id, value, expires_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET value = excluded.value, expires_at_ms = excluded.expires_at_ms",
        )
        .bind(key)
        .bind(value)
        .bind(expiry_ms(now_ms(), ttl))
        .execute(&mut *conn)
        .await
        .map_err(sqlx_error)?;
        Ok(())
    }

    async fn credential_get(&self, key: &str, take: bool) -> Result<Option<Vec<u8>>, StorageError> {
        validate_credential_key(key)?;
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        // `DELETE … RETURNING` is one atomic statement: of concurrent takers on any replica
        // exactly one gets the row. An expired row is deleted too but yields nothing.
        let sql = if take {
            "DELETE FROM kubelens_credentials WHERE id = $1 RETURNING value, expires_at_ms > $2"
        } else {
            "SELECT value, expires_at_ms > $2 FROM kubelens_credentials WHERE id = $1"
        };
        let row = sqlx::query(sql).bind(key).bind(now_ms()).fetch_optional(&mut *conn).await.map_err(sqlx_error)?;
        Ok(row.filter(|r| r.get::<bool, _>(1)).map(|r| r.get::<Vec<u8>, _>(0)))
    }

    async fn credential_purge(&self) -> Result<u64, StorageError> {
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        sqlx::query("DELETE FROM kubelens_credentials WHERE expires_at_ms <= $1")
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .map_err(sqlx_error)
            .map(|r| DB::rows_affected(&r))
    }

    async fn audit_append(&self, events: &[AuditEvent]) -> Result<(), StorageError> {
        let encoded = encode_audit_events(events)?;
        for (events, encoded) in events.chunks(AUDIT_ROWS_PER_STATEMENT).zip(encoded.chunks(AUDIT_ROWS_PER_STATEMENT)) {
            // One multi-row INSERT per chunk: a single statement, so atomic without a
            // transaction. The placeholders are generated here; no value is in the SQL text.
            let mut sql = String::from("INSERT INTO kubelens_audit (time_ms, audit, user_name, namespace, data) VALUES ");
            for i in 0..events.len() {
                let n = i * 5;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("(${}, ${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4, n + 5));
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (event, json) in events.iter().zip(encoded) {
                let json = std::str::from_utf8(json).map_err(|e| StorageError::Invalid(e.to_string()))?;
                query = query
                    .bind(event.time_ms)
                    .bind(event.audit.as_str())
                    .bind(event.user.as_deref())
                    .bind(event.namespace.as_deref())
                    .bind(json);
            }
            let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
            query.execute(&mut *conn).await.map_err(sqlx_error)?;
        }
        Ok(())
    }

    async fn audit_query(&self, query: AuditQuery) -> Result<AuditPage, StorageError> {
        validate_audit_query(&query)?;
        let before = match &query.before {
            Some(cursor) => Some(
                cursor.parse::<i64>().map_err(|_| StorageError::Invalid("audit cursor is not valid".to_owned()))?,
            ),
            None => None,
        };
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        let rows = sqlx::query(
            "SELECT id, data FROM kubelens_audit \
             WHERE ($1 IS NULL OR id < $1) AND ($2 IS NULL OR user_name = $2) AND ($3 IS NULL OR namespace = $3) \
               AND ($4 IS NULL OR audit = $4) AND ($5 IS NULL OR time_ms >= $5) AND ($6 IS NULL OR time_ms < $6) \
             ORDER BY id DESC LIMIT $7",
        )
        .bind(before)
        .bind(query.user.as_deref())
        .bind(query.namespace.as_deref())
        .bind(query.audit.as_deref())
        .bind(query.since_ms)
        .bind(query.until_ms)
        .bind(query.limit as i64 + 1)
        .fetch_all(&mut *conn)
        .await
        .map_err(sqlx_error)?;
        let mut page = AuditPage::default();
        for row in rows.iter().take(query.limit) {
            let data: String = row.get(1);
            let event = serde_json::from_str(&data).map_err(|e| StorageError::Corrupt(format!("audit event: {e}")))?;
            page.events.push((row.get::<i64, _>(0).to_string(), event));
        }
        if rows.len() > query.limit {
            page.next = page.events.last().map(|(id, _)| id.clone());
        }
        Ok(page)
    }

    async fn audit_purge(&self, cutoff_ms: i64) -> Result<u64, StorageError> {
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        sqlx::query("DELETE FROM kubelens_audit WHERE time_ms < $1")
            .bind(cutoff_ms)
            .execute(&mut *conn)
            .await
            .map_err(sqlx_error)
            .map(|r| DB::rows_affected(&r))
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
        // Transactions are plain BEGIN / COMMIT / ROLLBACK statements, so that a failed commit
        // (disk full, server gone) is rolled back right here, and a connection whose state is
        // unknown is closed instead of going back to the pool.
        sqlx::query(DB::BEGIN_WRITE).execute(&mut *conn).await.map_err(sqlx_error)?;
        let result = async {
            let tx = &mut *conn;
            let now = now_ms();
            let row = sqlx::query(
                "INSERT INTO kubelens_log_sources (namespace, pod, pod_uid, container, instance, meta, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (namespace, pod, pod_uid, container, instance) DO UPDATE SET meta = excluded.meta \
                 RETURNING id, line_count, byte_count, expires_at_ms",
            )
            .bind(key.namespace.as_str())
            .bind(key.pod.as_str())
            .bind(key.pod_uid.as_str())
            .bind(key.container.as_str())
            .bind(i64::from(key.instance))
            .bind(meta_json.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(sqlx_error)?;
            let id: i64 = row.get(0);
            let (mut stored_lines, mut stored_bytes): (i64, i64) = (row.get(1), row.get(2));
            let expires: Option<i64> = row.get(3);
            if expires.is_some_and(|at| at <= now) {
                // An expired source that the purge job has not removed yet starts over.
                sqlx::query("DELETE FROM kubelens_log_lines WHERE source_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(sqlx_error)?;
                sqlx::query(
                    "UPDATE kubelens_log_sources SET line_count = 0, byte_count = 0, dropped = 0, \
                     terminated_at_ms = NULL, expires_at_ms = NULL, created_at_ms = $2 WHERE id = $1",
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
                (Some(first), Some(last)) => sqlx::query(
                    "SELECT position FROM kubelens_log_lines WHERE source_id = $1 AND position BETWEEN $2 AND $3",
                )
                .bind(id)
                .bind(first.position as i64)
                .bind(last.position as i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(sqlx_error)?
                .iter()
                .map(|r| r.get::<i64, _>(0))
                .collect(),
                _ => HashSet::new(),
            };
            let fresh: Vec<&ArchivedLine> =
                sorted.into_iter().filter(|l| !existing.contains(&(l.position as i64))).collect();
            let duplicates = (lines.len() - fresh.len()) as u64;
            let fit = lines_within_caps(&fresh, stored_lines as u64, stored_bytes as u64, &self.limits);
            let accepted = &fresh[..fit];
            if !accepted.is_empty() {
                DB::insert_lines(&mut *tx, id, accepted).await?;
            }
            let added_bytes: u64 = accepted.iter().map(|l| l.line.len() as u64).sum();
            let dropped = (fresh.len() - fit) as i64;
            sqlx::query(
                "UPDATE kubelens_log_sources SET line_count = line_count + $2, byte_count = byte_count + $3, \
                 dropped = dropped + $4 WHERE id = $1",
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
        .await;
        let result = match result {
            Ok(value) => sqlx::query("COMMIT").execute(&mut *conn).await.map(|_| value).map_err(sqlx_error),
            Err(err) => Err(err),
        };
        if result.is_err() && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
            // "No transaction is active" after the database rolled back already is harmless;
            // anything else leaves the connection in an unknown state. Either way: do not reuse it.
            let _ = sqlx::Connection::close(conn.detach()).await;
        }
        result
    }

    async fn archive_read(&self, key: &SourceKey, query: LineQuery) -> Result<Vec<ArchivedLine>, StorageError> {
        validate_query(key, &query)?;
        let after = query.after.map_or(-1, |a| a.min(i64::MAX as u64) as i64);
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        let rows = sqlx::query(
            "SELECT l.position, l.ts_ns, l.truncated, l.line FROM kubelens_log_lines l \
             JOIN kubelens_log_sources s ON s.id = l.source_id \
             WHERE s.namespace = $1 AND s.pod = $2 AND s.pod_uid = $3 AND s.container = $4 AND s.instance = $5 \
               AND (s.expires_at_ms IS NULL OR s.expires_at_ms > $6) \
               AND l.position > $7 AND ($8 IS NULL OR l.ts_ns >= $8) AND ($9 IS NULL OR l.ts_ns < $9) \
             ORDER BY l.position LIMIT $10",
        )
        .bind(key.namespace.as_str())
        .bind(key.pod.as_str())
        .bind(key.pod_uid.as_str())
        .bind(key.container.as_str())
        .bind(i64::from(key.instance))
        .bind(now_ms())
        .bind(after)
        .bind(query.since_ns)
        .bind(query.until_ns)
        .bind(query.limit as i64)
        .fetch_all(&mut *conn)
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
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        let rows = sqlx::query(
            "SELECT namespace, pod, pod_uid, container, instance, meta, terminated_at_ms, expires_at_ms, \
               line_count, byte_count, dropped FROM kubelens_log_sources \
             WHERE namespace = $1 AND (expires_at_ms IS NULL OR expires_at_ms > $2)",
        )
        .bind(namespace)
        .bind(now_ms())
        .fetch_all(&mut *conn)
        .await
        .map_err(sqlx_error)?;
        let mut sources = rows
            .into_iter()
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
            .collect::<Result<Vec<_>, StorageError>>()?;
        // Ordered by key, byte-wise, in Rust: the databases' text collations differ.
        sources.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(sources)
    }

    async fn archive_mark(&self, key: &SourceKey, at_ms: i64, ttl: Duration) -> Result<bool, StorageError> {
        key.validate()?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        // The earliest termination time wins; expiry = that time + ttl.
        let result = sqlx::query(
            "UPDATE kubelens_log_sources SET \
               terminated_at_ms = CASE WHEN terminated_at_ms < $6 THEN terminated_at_ms ELSE $6 END, \
               expires_at_ms = CASE WHEN terminated_at_ms < $6 THEN terminated_at_ms ELSE $6 END + $7 \
             WHERE namespace = $1 AND pod = $2 AND pod_uid = $3 AND container = $4 AND instance = $5 \
               AND (expires_at_ms IS NULL OR expires_at_ms > $8)",
        )
        .bind(key.namespace.as_str())
        .bind(key.pod.as_str())
        .bind(key.pod_uid.as_str())
        .bind(key.container.as_str())
        .bind(i64::from(key.instance))
        .bind(at_ms)
        .bind(ttl_ms)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(sqlx_error)?;
        Ok(DB::rows_affected(&result) == 1)
    }

    async fn archive_purge(&self) -> Result<u64, StorageError> {
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        // One statement: the lines go with their source (`ON DELETE CASCADE`).
        sqlx::query("DELETE FROM kubelens_log_sources WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= $1")
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .map_err(sqlx_error)
            .map(|r| DB::rows_affected(&r))
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let mut conn = self.pool.acquire().await.map_err(sqlx_error)?;
        sqlx::query(DB::PING).execute(&mut *conn).await.map_err(sqlx_error)?;
        Ok(())
    }
}
