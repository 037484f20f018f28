//! The Redis backend: a `ConnectionManager` (reconnects by itself after Redis restarts),
//! Lua scripts for every read-check-write (atomic on the server, so replicas never race),
//! and native key expiry for sessions and terminated sources.
//!
//! Key layout (all under the configured prefix, default `kubelens:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `schema` | string | schema version (`1`); a newer value makes `open` fail |
//! | `session:{sub}` | hash | `d` data, `v` version, `u` updated ms; `PEXPIRE` = session TTL |
//! | `src:{id}` | hash | source key fields, `meta`, counters, `term`, `exp` |
//! | `lines:{id}` | hash | position → 20-digit zero-padded ns timestamp, `0`/`1` truncated flag, raw bytes |
//! | `idx:{id}` | sorted set | positions scored by position (cursor reads) |
//! | `ns:{namespace}` | sorted set | source ids scored by expiry ms (`+inf` while running) |
//! | `namespaces` | set | namespaces with sources (for the purge job) |
//!
//! `{id}` is [`SourceKey::id`]. Source keys get `PEXPIREAT` at their expiry; the namespace
//! index is cleaned lazily by reads and by `purge_expired`.

use std::collections::HashMap;
use std::time::Duration;

use kubelens_core::config::RedisConfig;
use kubelens_core::storage::{
    AppendOutcome, ArchivedLine, LineQuery, PodMeta, Precondition, SourceInfo, SourceKey, StorageError, StoreLimits, StoredSession, Version, now_ms, validate_append, validate_credential_key,
    validate_credential_put, validate_query, validate_session_put, validate_subject,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script, Value};

use crate::backend::{Backend, StoreAdapter};

/// Schema version this binary writes and understands.
const SCHEMA_VERSION: i64 = 1;
/// Per-command timeout: a stopped Redis becomes a prompt `Unavailable`, not a hung request.
/// Audit events the stream keeps at most (approximately: `XADD MAXLEN ~`), whatever the
/// retention says; about 1 KiB each.
const AUDIT_MAX_EVENTS: u64 = 1_000_000;
/// Entries one `XREVRANGE` of an audit query reads.
const AUDIT_SCAN_CHUNK: usize = 500;

/// A Redis stream id (`<ms>-<seq>`), the audit cursor on this backend.
fn is_stream_id(cursor: &str) -> bool {
    cursor.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty() && !seq.is_empty() && ms.len() <= 20 && seq.len() <= 20 && (ms.bytes().chain(seq.bytes())).all(|b| b.is_ascii_digit())
    })
}

const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn redis_error(err: redis::RedisError) -> StorageError {
    if err.kind() == redis::ErrorKind::UnexpectedReturnType || err.kind() == redis::ErrorKind::Parse {
        StorageError::Corrupt(err.to_string())
    } else {
        StorageError::Unavailable(err.to_string())
    }
}

const SESSION_PUT: &str = r#"
-- KEYS[1] session; ARGV: data, kind, expected, candidate, now, ttl_ms (0 = none)
local cur = redis.call('HGET', KEYS[1], 'v')
local kind = ARGV[2]
if (kind == 'match' and cur ~= ARGV[3]) or (kind == 'exists' and not cur) or (kind == 'absent' and cur) then
  return {0, cur or ''}
end
local newv = tonumber(ARGV[4])
if cur and tonumber(cur) + 1 > newv then newv = tonumber(cur) + 1 end
local v = string.format('%.0f', newv)
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'v', v, 'u', ARGV[5])
if tonumber(ARGV[6]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[6]) else redis.call('PERSIST', KEYS[1]) end
return {1, v}
"#;

const SESSION_DELETE: &str = r#"
-- KEYS[1] session; ARGV: kind, expected
local cur = redis.call('HGET', KEYS[1], 'v')
local kind = ARGV[1]
if (kind == 'match' and cur ~= ARGV[2]) or (kind == 'exists' and not cur) or (kind == 'absent' and cur) then
  return {0, cur or ''}
end
return {1, redis.call('DEL', KEYS[1])}
"#;

const APPEND: &str = r#"
-- KEYS: src, lines, idx, ns, namespaces
-- ARGV: now, meta, namespace, pod, uid, container, instance, max_lines, max_bytes, id,
--       then (position, value, byte length) triples sorted by position, unique
local now = tonumber(ARGV[1])
local exp = redis.call('HGET', KEYS[1], 'exp')
if exp and tonumber(exp) <= now then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[10])
  exp = false
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'namespace', ARGV[3], 'pod', ARGV[4], 'uid', ARGV[5], 'container', ARGV[6],
    'instance', ARGV[7], 'lines', 0, 'bytes', 0, 'dropped', 0)
end
redis.call('HSET', KEYS[1], 'meta', ARGV[2])
local lines = tonumber(redis.call('HGET', KEYS[1], 'lines'))
local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes'))
local max_lines = tonumber(ARGV[8])
local max_bytes = tonumber(ARGV[9])
local inserted, dup, dropped, full = 0, 0, 0, false
for i = 11, #ARGV, 3 do
  local pos = ARGV[i]
  if redis.call('HEXISTS', KEYS[2], pos) == 1 then
    dup = dup + 1
  else
    local len = tonumber(ARGV[i + 2])
    if full or lines + 1 > max_lines or bytes + len > max_bytes then
      full = true
      dropped = dropped + 1
    else
      redis.call('HSET', KEYS[2], pos, ARGV[i + 1])
      redis.call('ZADD', KEYS[3], pos, pos)
      lines = lines + 1
      bytes = bytes + len
      inserted = inserted + 1
    end
  end
end
redis.call('HSET', KEYS[1], 'lines', lines, 'bytes', bytes)
redis.call('HINCRBY', KEYS[1], 'dropped', dropped)
if exp then
  redis.call('PEXPIREAT', KEYS[1], exp)
  if inserted > 0 then
    redis.call('PEXPIREAT', KEYS[2], exp)
    redis.call('PEXPIREAT', KEYS[3], exp)
  end
  redis.call('ZADD', KEYS[4], exp, ARGV[10])
else
  redis.call('ZADD', KEYS[4], '+inf', ARGV[10])
end
redis.call('SADD', KEYS[5], ARGV[3])
return {inserted, dup, dropped}
"#;

const READ: &str = r#"
-- KEYS: src, lines, idx; ARGV: now, after ('-inf' or '(<pos>'), since (20 digits or ''),
--       until (20 digits or ''), limit
local exp = redis.call('HGET', KEYS[1], 'exp')
if exp and tonumber(exp) <= tonumber(ARGV[1]) then return {} end
local limit = tonumber(ARGV[5])
local out = {}
local from = ARGV[2]
local chunk = 1000
while #out < 2 * limit do
  local positions = redis.call('ZRANGEBYSCORE', KEYS[3], from, '+inf', 'LIMIT', 0, chunk)
  if #positions == 0 then break end
  local values = redis.call('HMGET', KEYS[2], unpack(positions))
  for i, pos in ipairs(positions) do
    local v = values[i]
    if v then
      local ts = string.sub(v, 1, 20)
      if (ARGV[3] == '' or ts >= ARGV[3]) and (ARGV[4] == '' or ts < ARGV[4]) then
        out[#out + 1] = pos
        out[#out + 1] = v
        if #out >= 2 * limit then break end
      end
    end
  end
  if #positions < chunk then break end
  from = '(' .. positions[#positions]
end
return out
"#;

const MARK: &str = r#"
-- KEYS: src, lines, idx, ns; ARGV: now, at, ttl_ms, id
local now = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local exp = redis.call('HGET', KEYS[1], 'exp')
if exp and tonumber(exp) <= now then return 0 end
local at = tonumber(ARGV[2])
local old = redis.call('HGET', KEYS[1], 'term')
if old and tonumber(old) < at then at = tonumber(old) end
local e = at + tonumber(ARGV[3])
local es = string.format('%.0f', e)
redis.call('HSET', KEYS[1], 'term', string.format('%.0f', at), 'exp', es)
redis.call('PEXPIREAT', KEYS[1], es)
redis.call('PEXPIREAT', KEYS[2], es)
redis.call('PEXPIREAT', KEYS[3], es)
redis.call('ZADD', KEYS[4], es, ARGV[4])
return 1
"#;

/// Redis-backed sessions and archive (served through [`RedisStore`]); cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    conn: ConnectionManager,
    prefix: String,
    limits: StoreLimits,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    session_put: Script,
    session_delete: Script,
    append: Script,
    read: Script,
    mark: Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection (and its URL with a possible password) is deliberately not printed.
        f.debug_struct("RedisStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Fixed-width decimal so Lua can compare timestamps as strings (Lua numbers are doubles and
/// cannot hold nanosecond timestamps exactly).
fn ts20(ns: i64) -> String {
    format!("{:020}", ns.max(0))
}

fn precondition_args(p: Precondition) -> (&'static str, String) {
    match p {
        Precondition::None => ("none", String::new()),
        Precondition::Matches(v) => ("match", v.0.to_string()),
        Precondition::Exists => ("exists", String::new()),
        Precondition::Absent => ("absent", String::new()),
    }
}

fn parse_version(raw: &str) -> Option<Version> {
    raw.parse::<u64>().ok().map(Version)
}

/// Redis-backed sessions and archive; cheap to clone.
pub type RedisStore = StoreAdapter<RedisBackend>;

impl RedisStore {
    /// Connects, checks (or writes) the schema version and returns the store.
    pub async fn open(config: &RedisConfig, limits: StoreLimits) -> Result<Self, StorageError> {
        RedisBackend::connect(config, limits).await.map(StoreAdapter::new)
    }
}

impl RedisBackend {
    async fn connect(config: &RedisConfig, limits: StoreLimits) -> Result<Self, StorageError> {
        let client = redis::Client::open(config.url.expose())
            .map_err(|_| StorageError::Invalid("storage.redis.url is not a valid Redis URL".to_owned()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // Reconnection attempts happen in the background; a call during an outage fails
            // promptly instead of waiting through many retries.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, manager_config).await.map_err(redis_error)?;
        let prefix = config.key_prefix.clone().unwrap_or_else(|| "kubelens:".to_owned());
        let store = Self {
            conn,
            prefix,
            limits,
            scripts: std::sync::Arc::new(Scripts {
                session_put: Script::new(SESSION_PUT),
                session_delete: Script::new(SESSION_DELETE),
                append: Script::new(APPEND),
                read: Script::new(READ),
                mark: Script::new(MARK),
            }),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The Redis "migration": record the schema version, refuse data from a newer one.
    async fn migrate(&self) -> Result<(), StorageError> {
        let mut conn = self.conn.clone();
        let key = format!("{}schema", self.prefix);
        let _: bool = conn.set_nx(&key, SCHEMA_VERSION).await.map_err(redis_error)?;
        let found: i64 = conn.get(&key).await.map_err(redis_error)?;
        if found > SCHEMA_VERSION {
            return Err(StorageError::Corrupt(format!(
                "redis schema version {found} is newer than this binary supports ({SCHEMA_VERSION})"
            )));
        }
        Ok(())
    }

    fn audit_key(&self) -> String {
        format!("{}audit", self.prefix)
    }

    fn credential_key(&self, key: &str) -> String {
        format!("{}cred:{key}", self.prefix)
    }

    fn session_key(&self, subject: &str) -> String {
        format!("{}session:{subject}", self.prefix)
    }

    fn source_keys(&self, id: &str, namespace: &str) -> [String; 5] {
        let p = &self.prefix;
        [
            format!("{p}src:{id}"),
            format!("{p}lines:{id}"),
            format!("{p}idx:{id}"),
            format!("{p}ns:{namespace}"),
            format!("{p}namespaces"),
        ]
    }

}

impl Backend for RedisBackend {
    async fn session_get(&self, subject: &str) -> Result<Option<StoredSession>, StorageError> {
        validate_subject(subject)?;
        let mut conn = self.conn.clone();
        let fields: HashMap<String, Vec<u8>> = conn.hgetall(self.session_key(subject)).await.map_err(redis_error)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let text = |name: &str| fields.get(name).and_then(|v| std::str::from_utf8(v).ok());
        let version = text("v").and_then(parse_version);
        let updated = text("u").and_then(|u| u.parse::<i64>().ok());
        match (fields.get("d"), version, updated) {
            (Some(data), Some(version), Some(updated_at_ms)) => {
                Ok(Some(StoredSession { data: data.clone(), version, updated_at_ms }))
            }
            _ => Err(StorageError::Corrupt("session hash is missing fields".to_owned())),
        }
    }

    async fn session_put(
        &self,
        subject: &str,
        data: &[u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> Result<Version, StorageError> {
        validate_session_put(subject, data, &self.limits)?;
        let (kind, expected) = precondition_args(precondition);
        let ttl_ms = ttl.map_or(0, |t| t.as_millis().max(1));
        let mut conn = self.conn.clone();
        let (ok, value): (i64, String) = self
            .scripts
            .session_put
            .key(self.session_key(subject))
            .arg(data)
            .arg(kind)
            .arg(expected)
            .arg(Version::next(None).0)
            .arg(now_ms())
            .arg(ttl_ms.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        if ok == 1 {
            parse_version(&value).ok_or_else(|| StorageError::Corrupt("bad session version".to_owned()))
        } else {
            Err(StorageError::Conflict { current: parse_version(&value) })
        }
    }

    async fn session_delete(&self, subject: &str, precondition: Precondition) -> Result<bool, StorageError> {
        validate_subject(subject)?;
        let (kind, expected) = precondition_args(precondition);
        let mut conn = self.conn.clone();
        let (ok, value): (i64, Value) = self
            .scripts
            .session_delete
            .key(self.session_key(subject))
            .arg(kind)
            .arg(expected)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        if ok == 1 {
            Ok(matches!(value, Value::Int(1)))
        } else {
            let current = match value {
                Value::BulkString(bytes) => std::str::from_utf8(&bytes).ok().and_then(parse_version),
                _ => None,
            };
            Err(StorageError::Conflict { current })
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
        let mut sorted: Vec<&ArchivedLine> = lines.iter().collect();
        sorted.sort_by_key(|l| l.position);
        sorted.dedup_by_key(|l| l.position);
        let in_batch_duplicates = (lines.len() - sorted.len()) as u64;
        let id = key.id();
        let keys = self.source_keys(&id, &key.namespace);
        let mut invocation = self.scripts.append.prepare_invoke();
        for k in &keys {
            invocation.key(k);
        }
        invocation
            .arg(now_ms())
            .arg(&meta_json)
            .arg(&key.namespace)
            .arg(&key.pod)
            .arg(&key.pod_uid)
            .arg(&key.container)
            .arg(key.instance)
            .arg(self.limits.archive_max_lines_per_source)
            .arg(self.limits.archive_max_bytes_per_source)
            .arg(&id);
        for line in sorted {
            let mut value = Vec::with_capacity(21 + line.line.len());
            value.extend_from_slice(ts20(line.timestamp_ns).as_bytes());
            value.push(if line.truncated { b'1' } else { b'0' });
            value.extend_from_slice(&line.line);
            invocation.arg(line.position).arg(value).arg(line.line.len());
        }
        let mut conn = self.conn.clone();
        let (inserted, duplicates, dropped): (u64, u64, u64) =
            invocation.invoke_async(&mut conn).await.map_err(redis_error)?;
        Ok(AppendOutcome { inserted, duplicates: duplicates + in_batch_duplicates, dropped })
    }

    async fn archive_read(&self, key: &SourceKey, query: LineQuery) -> Result<Vec<ArchivedLine>, StorageError> {
        validate_query(key, &query)?;
        let id = key.id();
        let keys = self.source_keys(&id, &key.namespace);
        let after = match query.after {
            None => "-inf".to_owned(),
            Some(a) => format!("({a}"),
        };
        let since = query.since_ns.map_or(String::new(), ts20);
        // A negative `until` excludes everything; encode it as the smallest key.
        let until = query.until_ns.map_or(String::new(), |u| if u <= 0 { ts20(0) } else { ts20(u) });
        let mut conn = self.conn.clone();
        let raw: Vec<Vec<u8>> = self
            .scripts
            .read
            .key(&keys[0])
            .key(&keys[1])
            .key(&keys[2])
            .arg(now_ms())
            .arg(after)
            .arg(since)
            .arg(until)
            .arg(query.limit)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let mut out = Vec::with_capacity(raw.len() / 2);
        for pair in raw.chunks_exact(2) {
            let position = std::str::from_utf8(&pair[0])
                .ok()
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or_else(|| StorageError::Corrupt("bad line position".to_owned()))?;
            let value = &pair[1];
            if value.len() < 21 {
                return Err(StorageError::Corrupt("archived line too short".to_owned()));
            }
            let timestamp_ns = std::str::from_utf8(&value[..20])
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| StorageError::Corrupt("bad line timestamp".to_owned()))?;
            out.push(ArchivedLine { position, timestamp_ns, truncated: value[20] == b'1', line: value[21..].to_vec() });
        }
        Ok(out)
    }

    async fn archive_list(&self, namespace: &str) -> Result<Vec<SourceInfo>, StorageError> {
        let mut conn = self.conn.clone();
        let index = format!("{}ns:{namespace}", self.prefix);
        let now = now_ms();
        let ids: Vec<String> = conn.zrangebyscore(&index, format!("({now}"), "+inf").await.map_err(redis_error)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let fields: HashMap<String, String> =
                conn.hgetall(format!("{}src:{id}", self.prefix)).await.map_err(redis_error)?;
            if fields.is_empty() {
                continue; // expired between the index read and now
            }
            let get = |name: &str| fields.get(name).cloned().unwrap_or_default();
            let num = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
            if num("exp").is_some_and(|e| e <= now) {
                continue;
            }
            out.push(SourceInfo {
                key: SourceKey {
                    namespace: get("namespace"),
                    pod: get("pod"),
                    pod_uid: get("uid"),
                    container: get("container"),
                    instance: num("instance")
                        .and_then(|i| u32::try_from(i).ok())
                        .ok_or_else(|| StorageError::Corrupt("bad source instance".to_owned()))?,
                },
                meta: serde_json::from_str(&get("meta")).map_err(|e| StorageError::Corrupt(e.to_string()))?,
                terminated_at_ms: num("term"),
                expires_at_ms: num("exp"),
                lines: num("lines").unwrap_or(0) as u64,
                bytes: num("bytes").unwrap_or(0) as u64,
                dropped: num("dropped").unwrap_or(0) as u64,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn archive_mark(&self, key: &SourceKey, at_ms: i64, ttl: Duration) -> Result<bool, StorageError> {
        key.validate()?;
        let id = key.id();
        let keys = self.source_keys(&id, &key.namespace);
        let mut conn = self.conn.clone();
        let marked: i64 = self
            .scripts
            .mark
            .key(&keys[0])
            .key(&keys[1])
            .key(&keys[2])
            .key(&keys[3])
            .arg(now_ms())
            .arg(at_ms)
            .arg(ttl.as_millis().min(i64::MAX as u128 / 2).to_string())
            .arg(&id)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(marked == 1)
    }

    async fn archive_purge(&self) -> Result<u64, StorageError> {
        // Source data expires natively; only the namespace indexes need trimming.
        let mut conn = self.conn.clone();
        let namespaces: Vec<String> =
            conn.smembers(format!("{}namespaces", self.prefix)).await.map_err(redis_error)?;
        let now = now_ms();
        let mut removed = 0u64;
        for ns in namespaces {
            let n: u64 = conn
                .zrembyscore(format!("{}ns:{ns}", self.prefix), "-inf", now)
                .await
                .map_err(redis_error)?;
            removed += n;
        }
        Ok(removed)
    }

    async fn session_purge(&self) -> Result<u64, StorageError> {
        // Native TTL: nothing to do.
        Ok(0)
    }

    async fn credential_put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        validate_credential_put(key, value, ttl)?;
        let mut conn = self.conn.clone();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let _: () = redis::cmd("SET")
            .arg(self.credential_key(key))
            .arg(value)
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn credential_get(&self, key: &str, take: bool) -> Result<Option<Vec<u8>>, StorageError> {
        validate_credential_key(key)?;
        let mut conn = self.conn.clone();
        // GETDEL (Redis 6.2+) reads and deletes in one atomic command: of concurrent takers on
        // any replica exactly one gets the value.
        let command = if take { "GETDEL" } else { "GET" };
        redis::cmd(command).arg(self.credential_key(key)).query_async(&mut conn).await.map_err(redis_error)
    }

    async fn credential_purge(&self) -> Result<u64, StorageError> {
        // Native TTL: nothing to do.
        Ok(0)
    }

    async fn audit_append(&self, events: &[kubelens_core::audit::AuditEvent]) -> Result<(), StorageError> {
        let encoded = kubelens_core::storage::encode_audit_events(events)?;
        if encoded.is_empty() {
            return Ok(());
        }
        let key = self.audit_key();
        // One MULTI/EXEC: the whole batch or nothing. `MAXLEN ~` bounds the stream's memory
        // whatever the retention; the purge trims by age.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for json in &encoded {
            pipe.cmd("XADD").arg(&key).arg("MAXLEN").arg("~").arg(AUDIT_MAX_EVENTS).arg("*").arg("e").arg(json.as_slice()).ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await.map_err(redis_error)?;
        Ok(())
    }

    async fn audit_query(
        &self,
        query: kubelens_core::storage::AuditQuery,
    ) -> Result<kubelens_core::storage::AuditPage, StorageError> {
        use kubelens_core::storage::{AuditPage, MAX_AUDIT_SCAN, validate_audit_query};
        validate_audit_query(&query)?;
        let mut end = match &query.before {
            Some(cursor) if is_stream_id(cursor) => format!("({cursor}"),
            Some(_) => return Err(StorageError::Invalid("audit cursor is not valid".to_owned())),
            None => "+".to_owned(),
        };
        let key = self.audit_key();
        let mut conn = self.conn.clone();
        let mut page = AuditPage::default();
        let mut scanned = 0usize;
        // Redis cannot filter a stream, so scan newest first in chunks, filtering here, up to
        // MAX_AUDIT_SCAN entries per query; then the cursor lets the client continue.
        loop {
            let chunk: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(AUDIT_SCAN_CHUNK)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            let exhausted = chunk.len() < AUDIT_SCAN_CHUNK;
            for (id, fields) in chunk {
                scanned += 1;
                end = format!("({id}");
                let Some(json) = fields.get("e") else { continue };
                let event: kubelens_core::audit::AuditEvent = serde_json::from_slice(json)
                    .map_err(|e| StorageError::Corrupt(format!("audit event: {e}")))?;
                if !query.matches(&event) {
                    continue;
                }
                if page.events.len() == query.limit {
                    page.next = page.events.last().map(|(id, _)| id.clone());
                    return Ok(page);
                }
                page.events.push((id, event));
            }
            if exhausted {
                return Ok(page);
            }
            if scanned >= MAX_AUDIT_SCAN {
                // Continue after the last entry examined, even if it did not match.
                page.next = Some(end.trim_start_matches('(').to_owned());
                return Ok(page);
            }
        }
    }

    async fn audit_purge(&self, cutoff_ms: i64) -> Result<u64, StorageError> {
        let mut conn = self.conn.clone();
        // Stream ids start with Redis's own millisecond clock, close to the events' times. Exact
        // trimming (no `~`): a purge every few minutes can afford it.
        let removed: u64 = redis::cmd("XTRIM")
            .arg(self.audit_key())
            .arg("MINID")
            .arg(cutoff_ms.max(0))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(removed)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(redis_error)?;
        Ok(())
    }
}
