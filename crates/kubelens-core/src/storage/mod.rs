//! Storage traits: per-user UI sessions and the archive of log lines (terminated pods,
//! resume buffers), plus a bounded in-memory reference implementation ([`memory`]).
//!
//! The traits are object-safe (`Arc<dyn SessionStore>`, `Arc<dyn LogArchive>`) and name no
//! driver type, so `kubelens-storage` can implement them with sqlx and redis while core stays
//! driver-free. Methods return boxed futures ([`StoreFuture`]) instead of using
//! `async fn` in traits, because `dyn` dispatch over async methods needs a concrete future
//! type.
//!
//! Implementations do exactly one attempt per call: no hidden retry loops. Callers compose
//! retries and timeouts outside (the binary retries opening the store; readiness pings it).
//! A backend that is down answers [`StorageError::Unavailable`] promptly and recovers on a
//! later call once the backend is back.

pub mod instrumented;
pub mod memory;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The future every storage method returns: boxed so the traits stay object-safe.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'a>>;

/// Why a storage call failed. Callers map these to HTTP statuses (503, 412, 413, 400).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend cannot be reached or refused the operation for a transient reason
    /// (connection refused, pool timeout, read-only file, disk full). Retrying later may work.
    /// The message is safe to log (no credentials) but is not meant for API clients.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// An optimistic-concurrency precondition did not hold (version mismatch, or the item
    /// exists / does not exist contrary to the precondition).
    #[error("storage precondition failed: the item changed (current version: {current:?})")]
    Conflict {
        /// The version currently stored, `None` when the item does not exist.
        current: Option<Version>,
    },
    /// A value exceeds a configured limit.
    #[error("{what} exceeds the limit of {limit}")]
    TooLarge {
        /// What was too large (e.g. `session`, `log line`).
        what: &'static str,
        /// The limit that was exceeded (bytes or lines, see `what`).
        limit: u64,
    },
    /// The caller passed something the store cannot accept (empty subject, bad source name,
    /// position out of range). Not retryable.
    #[error("invalid storage request: {0}")]
    Invalid(String),
    /// Stored data could not be decoded, or the schema is newer than this binary.
    #[error("storage data is corrupt or from an incompatible version: {0}")]
    Corrupt(String),
}

impl StorageError {
    /// True for errors where retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// An opaque, per-item version for optimistic concurrency (rendered as an HTTP ETag).
///
/// Versions are strictly increasing for one subject and start from a time-derived value, so a
/// version observed before a delete does not match the version of a session created later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version(pub u64);

impl Version {
    /// The version after `previous` (or the first one): `max(previous + 1, now in µs)`.
    pub fn next(previous: Option<Version>) -> Version {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        let now = u64::try_from(now).unwrap_or(u64::MAX >> 1);
        match previous {
            Some(Version(prev)) => Version(prev.saturating_add(1).max(now)),
            None => Version(now.max(1)),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A precondition on a write, mirroring HTTP `If-Match` / `If-None-Match: *`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write unconditionally (last writer wins).
    None,
    /// The item must exist with exactly this version (`If-Match: "<etag>"`).
    Matches(Version),
    /// The item must exist, any version (`If-Match: *`).
    Exists,
    /// The item must not exist (`If-None-Match: *`): create only.
    Absent,
}

impl Precondition {
    /// Checks the precondition against the current version; `Conflict` when it fails.
    pub fn check(self, current: Option<Version>) -> Result<(), StorageError> {
        let ok = match self {
            Self::None => true,
            Self::Matches(v) => current == Some(v),
            Self::Exists => current.is_some(),
            Self::Absent => current.is_none(),
        };
        if ok { Ok(()) } else { Err(StorageError::Conflict { current }) }
    }
}

/// A session as stored: opaque bytes (the HTTP layer stores validated JSON) plus metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The document bytes, exactly as written.
    pub data: Vec<u8>,
    /// Current version; changes on every write.
    pub version: Version,
    /// When it was last written (milliseconds since the Unix epoch).
    pub updated_at_ms: i64,
}

/// Limits every store enforces, whatever the backend. Derived from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest session document in bytes (`session.max_bytes`).
    pub session_max_bytes: usize,
    /// Archived lines kept per source (`logs.archive_max_lines_per_container`).
    pub archive_max_lines_per_source: u64,
    /// Archived bytes (line payloads) kept per source (`logs.archive_max_bytes_per_container`).
    pub archive_max_bytes_per_source: u64,
    /// Largest single archived line in bytes. Lines are truncated upstream to
    /// `logs.max_line_length` characters; a UTF-8 character takes at most 4 bytes, plus room
    /// for the truncation marker.
    pub archive_max_line_bytes: usize,
    /// Lines accepted in one `append` call; bounds the size of one write transaction.
    pub archive_max_batch_lines: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

impl StoreLimits {
    /// Limits from the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            session_max_bytes: config.session.max_bytes,
            archive_max_lines_per_source: config.logs.archive_max_lines_per_container as u64,
            archive_max_bytes_per_source: config.logs.archive_max_bytes_per_container as u64,
            archive_max_line_bytes: config.logs.max_line_length.saturating_mul(4).saturating_add(64),
            archive_max_batch_lines: 10_000,
        }
    }
}

/// Longest accepted session subject (`sub` claims are at most 255 characters in Keycloak).
pub const MAX_SUBJECT_BYTES: usize = 255;

/// Shared validation of a session write, so every backend refuses the same inputs: a valid
/// subject and a document within `limits.session_max_bytes`.
pub fn validate_session_put(subject: &str, data: &[u8], limits: &StoreLimits) -> Result<(), StorageError> {
    validate_subject(subject)?;
    if data.len() > limits.session_max_bytes {
        return Err(StorageError::TooLarge { what: "session", limit: limits.session_max_bytes as u64 });
    }
    Ok(())
}

/// Validates a session subject (the JWT `sub`).
pub fn validate_subject(subject: &str) -> Result<(), StorageError> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES || subject.chars().any(char::is_control) {
        return Err(StorageError::Invalid(format!(
            "session subject must be 1..={MAX_SUBJECT_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// Per-user UI sessions keyed by the token's `sub`.
///
/// Isolation is by key only: the HTTP layer passes the authenticated principal's subject, never
/// a client-supplied one, so one user can never address another user's session.
pub trait SessionStore: fmt::Debug + Send + Sync {
    /// The session of `subject`, or `None` when there is none (or it expired).
    fn get<'a>(&'a self, subject: &'a str) -> StoreFuture<'a, Option<StoredSession>>;

    /// Creates or replaces the session of `subject` if `precondition` holds, and returns the
    /// new version. `ttl` (when set) makes the session expire that long after this write.
    /// Errors: `TooLarge` beyond `session_max_bytes`, `Conflict` when the precondition fails.
    fn put<'a>(
        &'a self,
        subject: &'a str,
        data: &'a [u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, Version>;

    /// Deletes the session of `subject` if `precondition` holds. Returns whether a session
    /// existed. `Precondition::None` on a missing session is not an error.
    fn delete<'a>(&'a self, subject: &'a str, precondition: Precondition) -> StoreFuture<'a, bool>;

    /// Removes expired sessions (backends without native TTL); returns how many.
    fn purge_expired(&self) -> StoreFuture<'_, u64>;

    /// Cheap round trip proving the backend is reachable and writable schema is present.
    fn ping(&self) -> StoreFuture<'_, ()>;
}

/// Identity of one archived log source: one instance (restart count) of one container of one
/// pod. The pod uid distinguishes a re-created pod with the same name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceKey {
    /// Namespace (DNS-1123 label).
    pub namespace: String,
    /// Pod name (DNS-1123 subdomain).
    pub pod: String,
    /// Pod uid (as Kubernetes reports it).
    pub pod_uid: String,
    /// Container name (DNS-1123 label).
    pub container: String,
    /// Container instance: the restart count whose logs these are.
    pub instance: u32,
}

impl SourceKey {
    /// Checks the names so a key can be embedded in storage keys without escaping.
    pub fn validate(&self) -> Result<(), StorageError> {
        let ok_uid = !self.pod_uid.is_empty()
            && self.pod_uid.len() <= 64
            && self.pod_uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !crate::names::is_dns1123_label(&self.namespace)
            || !crate::names::is_dns1123_subdomain(&self.pod)
            || !crate::names::is_dns1123_label(&self.container)
            || !ok_uid
        {
            return Err(StorageError::Invalid(
                "log source needs a valid namespace, pod name, pod uid and container name".to_owned(),
            ));
        }
        Ok(())
    }

    /// A stable, unambiguous string id (`ns/pod/uid/container/instance`); the components
    /// cannot contain `/` once validated.
    pub fn id(&self) -> String {
        format!("{}/{}/{}/{}/{}", self.namespace, self.pod, self.pod_uid, self.container, self.instance)
    }
}

/// Pod metadata kept with a source so archived pods can be listed after the pod is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodMeta {
    /// Kind of the owning app (`Deployment`, `Job`, ...), if any.
    pub app_kind: Option<String>,
    /// Name of the owning app, if any.
    pub app_name: Option<String>,
    /// Node the pod ran on.
    pub node: Option<String>,
    /// The pod's labels at capture, so archive reads apply `filters.exclude_labels` like live
    /// reads. `None`: not recorded (archived before labels were recorded, or too large to
    /// keep): such a pod is hidden whenever `exclude_labels` is configured (fail closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// The owning app's labels at capture (`None`: not known). Reads prefer the app's current
    /// labels while it is still cached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_labels: Option<std::collections::BTreeMap<String, String>>,
}

/// Most metadata bytes stored per source (serialized JSON), so metadata cannot grow unbounded.
pub const MAX_POD_META_BYTES: usize = 2048;

/// Largest accepted line position: positions must fit exactly into an IEEE double (Redis
/// sorted-set scores) on every backend, so the limit is uniform: 2^53 - 1.
pub const MAX_POSITION: u64 = (1 << 53) - 1;

/// One archived log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedLine {
    /// Per-source sequence assigned by the capturer (e.g. the line's index in the container
    /// log). It is the idempotency key: appending a position that is already stored is a
    /// no-op, so two replicas capturing the same source do not duplicate lines. At most
    /// [`MAX_POSITION`].
    pub position: u64,
    /// Timestamp in nanoseconds since the Unix epoch (the kubelet's RFC3339Nano stamp).
    /// Must not be negative.
    pub timestamp_ns: i64,
    /// The raw line bytes without the trailing newline. Not necessarily UTF-8.
    pub line: Vec<u8>,
    /// The line was cut upstream at the configured maximum length.
    pub truncated: bool,
}

/// What an `append` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppendOutcome {
    /// Lines newly stored.
    pub inserted: u64,
    /// Lines whose position was already stored (idempotent re-append, another replica).
    pub duplicates: u64,
    /// Lines refused because the source reached its line or byte cap. Capture should ask
    /// Kubernetes for at most the cap (`tailLines`) so the newest lines are the ones kept.
    pub dropped: u64,
}

/// A read of archived lines: ordered by position, strictly after `after`, optionally
/// restricted to `[since_ns, until_ns)`, at most `limit` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineQuery {
    /// Cursor: only positions greater than this (`None` = from the start).
    pub after: Option<u64>,
    /// Only lines with `timestamp_ns >= since_ns`.
    pub since_ns: Option<i64>,
    /// Only lines with `timestamp_ns < until_ns`.
    pub until_ns: Option<i64>,
    /// Most lines returned; the next page starts after the last returned position.
    pub limit: usize,
}

impl LineQuery {
    /// Everything after `after`, up to `limit` lines.
    pub fn after(after: Option<u64>, limit: usize) -> Self {
        Self { after, since_ns: None, until_ns: None, limit }
    }
}

/// Largest `limit` a single read may ask for; bounds memory per call.
pub const MAX_READ_LIMIT: usize = 10_000;

/// A listed archive source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceInfo {
    /// Which source.
    pub key: SourceKey,
    /// Pod metadata from the latest append.
    pub meta: PodMeta,
    /// When the source was marked terminated (ms since the Unix epoch), if it was.
    pub terminated_at_ms: Option<i64>,
    /// When the archive forgets it (ms since the Unix epoch), if scheduled.
    pub expires_at_ms: Option<i64>,
    /// Stored lines.
    pub lines: u64,
    /// Stored payload bytes.
    pub bytes: u64,
    /// Lines refused because of the caps.
    pub dropped: u64,
}

/// The log archive: bounded per-source line stores, readable from any replica.
pub trait LogArchive: fmt::Debug + Send + Sync {
    /// Appends `lines` (any order; duplicates by position are ignored) to `source`, creating
    /// it with `meta` if needed (an existing source gets `meta` replaced). Lines over the
    /// per-source caps are dropped and counted. Errors: `TooLarge` for a line over
    /// `archive_max_line_bytes` or a batch over `archive_max_batch_lines` (nothing is written),
    /// `Invalid` for bad keys, negative timestamps or positions over [`MAX_POSITION`].
    fn append<'a>(
        &'a self,
        source: &'a SourceKey,
        meta: &'a PodMeta,
        lines: &'a [ArchivedLine],
    ) -> StoreFuture<'a, AppendOutcome>;

    /// Reads lines of `source` (see [`LineQuery`]). A missing or expired source reads empty.
    fn read<'a>(&'a self, source: &'a SourceKey, query: LineQuery) -> StoreFuture<'a, Vec<ArchivedLine>>;

    /// Sources of `namespace` that have not expired, ordered by key.
    fn list_sources<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, Vec<SourceInfo>>;

    /// Marks `source` terminated at `terminated_at_ms` and schedules its expiry `ttl` after
    /// that. Returns false when the source does not exist. Marking again keeps the earliest
    /// termination time (replicas may observe the termination at different moments).
    fn mark_terminated<'a>(
        &'a self,
        source: &'a SourceKey,
        terminated_at_ms: i64,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Deletes sources whose expiry passed (backends with native TTL clean up indexes only);
    /// returns how many sources were removed.
    fn purge_expired(&self) -> StoreFuture<'_, u64>;

    /// Cheap round trip proving the backend is reachable.
    fn ping(&self) -> StoreFuture<'_, ()>;
}

/// Longest key of a [`CredentialStore`] entry (a kind prefix plus a hex digest).
pub const MAX_CREDENTIAL_KEY_BYTES: usize = 128;
/// Largest value of a [`CredentialStore`] entry: one serialized principal. Tokens are capped
/// far below this (`auth.max_token_bytes`), so a principal taken from one always fits.
pub const MAX_CREDENTIAL_VALUE_BYTES: usize = 64 * 1024;
/// Longest lifetime of a [`CredentialStore`] entry.
pub const MAX_CREDENTIAL_TTL: Duration = Duration::from_secs(24 * 3600);

/// Short-lived secrets that every replica must be able to redeem: stream tickets (once) and
/// stream credentials (until they expire). Shared through PostgreSQL or Redis when several
/// replicas run; see `kubelens_core::auth::tickets`.
///
/// Keys are digests of the secret, never the secret itself, so whoever can read the store
/// cannot redeem what is in it. Values are opaque bytes (a serialized principal).
pub trait CredentialStore: fmt::Debug + Send + Sync {
    /// Stores `value` under `key` for `ttl` (replacing an entry with that key).
    /// Errors: `TooLarge` beyond the value cap, `Invalid` for a bad key or ttl.
    fn put<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> StoreFuture<'a, ()>;

    /// The value under `key` while it has not expired.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Removes and returns the value under `key` in one atomic step: of concurrent callers
    /// (on any replica) at most one gets it. Expired entries are removed and yield `None`.
    fn take<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Removes the entry under `key`; returns whether a live one existed.
    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;

    /// Removes expired entries (backends without native TTL); returns how many.
    fn purge_expired(&self) -> StoreFuture<'_, u64>;
}

/// Shared validation of a credential write, so every backend refuses the same inputs.
pub fn validate_credential_put(key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
    validate_credential_key(key)?;
    if value.len() > MAX_CREDENTIAL_VALUE_BYTES {
        return Err(StorageError::TooLarge { what: "credential", limit: MAX_CREDENTIAL_VALUE_BYTES as u64 });
    }
    if ttl.is_zero() || ttl > MAX_CREDENTIAL_TTL {
        return Err(StorageError::Invalid(format!("credential ttl must be within 1 ms..={MAX_CREDENTIAL_TTL:?}")));
    }
    Ok(())
}

/// Validates a credential key: 1..=[`MAX_CREDENTIAL_KEY_BYTES`] of `[A-Za-z0-9:_-]`.
pub fn validate_credential_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_CREDENTIAL_KEY_BYTES
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::Invalid(format!(
            "credential key must be 1..={MAX_CREDENTIAL_KEY_BYTES} bytes of [A-Za-z0-9:_-]"
        )))
    }
}

/// Most events one audit query returns.
pub const MAX_AUDIT_PAGE: usize = 1000;
/// Most stored events one audit query examines before it returns what it found with a
/// cursor to continue (Redis filters while scanning; SQL uses indexes and never reaches it).
pub const MAX_AUDIT_SCAN: usize = 20_000;
/// Largest stored audit event (JSON); every field of an event is bounded far below this.
pub const MAX_AUDIT_EVENT_BYTES: usize = 8 * 1024;

/// Which stored audit events a query wants, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events older than this cursor (the `next` of the previous page).
    pub before: Option<String>,
    /// Most events returned, 1..=[`MAX_AUDIT_PAGE`].
    pub limit: usize,
    /// Only events of this `user`.
    pub user: Option<String>,
    /// Only events in this namespace.
    pub namespace: Option<String>,
    /// Only events of this kind (`logs_opened`, `denied`, …).
    pub audit: Option<String>,
    /// Only events at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only events before this time (ms since the epoch).
    pub until_ms: Option<i64>,
}

impl AuditQuery {
    /// Whether `event` passes the filters (the cursor aside).
    pub fn matches(&self, event: &crate::audit::AuditEvent) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        eq(&self.user, &event.user)
            && eq(&self.namespace, &event.namespace)
            && self.audit.as_ref().is_none_or(|a| *a == event.audit)
            && self.since_ms.is_none_or(|t| event.time_ms >= t)
            && self.until_ms.is_none_or(|t| event.time_ms < t)
    }
}

/// One page of stored audit events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditPage {
    /// `(cursor, event)`, newest first.
    pub events: Vec<(String, crate::audit::AuditEvent)>,
    /// Pass as [`AuditQuery::before`] for the next page; `None` when there is nothing older.
    pub next: Option<String>,
}

/// The stored copy of the audit trail (`audit.store`), shared by all replicas.
pub trait AuditStore: fmt::Debug + Send + Sync {
    /// Appends `events` (in order). Errors: `TooLarge` for an event over
    /// [`MAX_AUDIT_EVENT_BYTES`] (nothing of the batch is written).
    fn append<'a>(&'a self, events: &'a [crate::audit::AuditEvent]) -> StoreFuture<'a, ()>;

    /// Events matching `query`, newest first. Errors: `Invalid` for a bad limit or cursor.
    fn query(&self, query: AuditQuery) -> StoreFuture<'_, AuditPage>;

    /// Deletes events older than `cutoff_ms`; returns how many (Redis: an estimate, `0`).
    fn purge_before(&self, cutoff_ms: i64) -> StoreFuture<'_, u64>;
}

/// Shared validation of an audit batch: each event's JSON, within the size cap.
pub fn encode_audit_events(events: &[crate::audit::AuditEvent]) -> Result<Vec<Vec<u8>>, StorageError> {
    events
        .iter()
        .map(|e| {
            let json = serde_json::to_vec(e).map_err(|err| StorageError::Invalid(format!("audit event: {err}")))?;
            if json.len() > MAX_AUDIT_EVENT_BYTES {
                return Err(StorageError::TooLarge { what: "audit event", limit: MAX_AUDIT_EVENT_BYTES as u64 });
            }
            Ok(json)
        })
        .collect()
}

/// Shared validation of an audit query's limit.
pub fn validate_audit_query(query: &AuditQuery) -> Result<(), StorageError> {
    if query.limit == 0 || query.limit > MAX_AUDIT_PAGE {
        return Err(StorageError::Invalid(format!("audit limit must be 1..={MAX_AUDIT_PAGE}")));
    }
    Ok(())
}

/// Shared validation of an append batch, so every backend refuses the same inputs.
pub fn validate_append(
    source: &SourceKey,
    meta: &PodMeta,
    lines: &[ArchivedLine],
    limits: &StoreLimits,
) -> Result<(), StorageError> {
    source.validate()?;
    if serde_json::to_vec(meta).map(|v| v.len()).unwrap_or(usize::MAX) > MAX_POD_META_BYTES {
        return Err(StorageError::TooLarge { what: "pod metadata", limit: MAX_POD_META_BYTES as u64 });
    }
    if lines.len() > limits.archive_max_batch_lines {
        return Err(StorageError::TooLarge { what: "append batch (lines)", limit: limits.archive_max_batch_lines as u64 });
    }
    for line in lines {
        if line.line.len() > limits.archive_max_line_bytes {
            return Err(StorageError::TooLarge { what: "log line", limit: limits.archive_max_line_bytes as u64 });
        }
        if line.position > MAX_POSITION {
            return Err(StorageError::Invalid(format!("line position must be at most {MAX_POSITION}")));
        }
        if line.timestamp_ns < 0 {
            return Err(StorageError::Invalid("line timestamp must not be before 1970".to_owned()));
        }
    }
    Ok(())
}

/// Shared validation of a read.
pub fn validate_query(source: &SourceKey, query: &LineQuery) -> Result<(), StorageError> {
    source.validate()?;
    if query.limit == 0 || query.limit > MAX_READ_LIMIT {
        return Err(StorageError::Invalid(format!("read limit must be 1..={MAX_READ_LIMIT}")));
    }
    Ok(())
}

/// Applies caps to the new (non-duplicate) lines of a batch, in position order: returns how
/// many of `new_lines` fit given what the source already holds. Shared so every backend drops
/// exactly the same lines.
pub fn lines_within_caps(
    new_lines: &[&ArchivedLine],
    stored_lines: u64,
    stored_bytes: u64,
    limits: &StoreLimits,
) -> usize {
    let room_lines = limits.archive_max_lines_per_source.saturating_sub(stored_lines);
    let mut bytes = stored_bytes;
    for (i, line) in new_lines.iter().enumerate() {
        let len = line.line.len() as u64;
        if i as u64 >= room_lines || bytes + len > limits.archive_max_bytes_per_source {
            return i;
        }
        bytes += len;
    }
    new_lines.len()
}

/// Milliseconds since the Unix epoch, for expiry bookkeeping.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `now + ttl` in milliseconds, saturating.
pub fn expiry_ms(from_ms: i64, ttl: Duration) -> i64 {
    from_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions() {
        let v = Version(7);
        assert!(Precondition::None.check(None).is_ok());
        assert!(Precondition::Matches(v).check(Some(v)).is_ok());
        assert!(matches!(
            Precondition::Matches(v).check(Some(Version(8))),
            Err(StorageError::Conflict { current: Some(Version(8)) })
        ));
        assert!(Precondition::Matches(v).check(None).is_err());
        assert!(Precondition::Exists.check(None).is_err());
        assert!(Precondition::Absent.check(Some(v)).is_err());
        assert!(Precondition::Absent.check(None).is_ok());
    }

    #[test]
    fn versions_increase_and_do_not_restart_after_delete() {
        let first = Version::next(None);
        let second = Version::next(Some(first));
        assert!(second > first);
        let far_future = Version(u64::MAX >> 2);
        assert_eq!(Version::next(Some(far_future)).0, far_future.0 + 1);
        // A fresh session created later starts above an old one's first version.
        std::thread::sleep(Duration::from_millis(2));
        assert!(Version::next(None) > first);
    }

    #[test]
    fn caps_keep_the_first_lines_that_fit() {
        let limits = StoreLimits {
            archive_max_lines_per_source: 3,
            archive_max_bytes_per_source: 10,
            ..StoreLimits::default()
        };
        let lines: Vec<ArchivedLine> = (0..5)
            .map(|i| ArchivedLine { position: i, timestamp_ns: 0, line: vec![b'x'; 4], truncated: false })
            .collect();
        let refs: Vec<&ArchivedLine> = lines.iter().collect();
        assert_eq!(lines_within_caps(&refs, 0, 0, &limits), 2, "bytes cap: 4+4 fits, +4 > 10");
        assert_eq!(lines_within_caps(&refs[..1], 2, 0, &limits), 1);
        assert_eq!(lines_within_caps(&refs[..1], 3, 0, &limits), 0, "line cap");
    }

    #[test]
    fn source_keys_reject_separators() {
        let good = SourceKey {
            namespace: "team-a".into(),
            pod: "web-1".into(),
            pod_uid: "0b7c-11".into(),
            container: "app".into(),
            instance: 0,
        };
        assert!(good.validate().is_ok());
        assert_eq!(good.id(), "team-a/web-1/0b7c-11/app/0");
        for bad in [
            SourceKey { namespace: "a/b".into(), ..good.clone() },
            SourceKey { pod_uid: "x:y".into(), ..good.clone() },
            SourceKey { container: String::new(), ..good.clone() },
        ] {
            assert!(matches!(bad.validate(), Err(StorageError::Invalid(_))), "{bad:?}");
        }
    }
}
