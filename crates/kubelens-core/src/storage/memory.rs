//! The in-memory reference store: the semantics every backend must match (the conformance
//! suite in `kubelens-storage` runs against it first), and the `memory` backend for tests
//! and demos. Process-local and lost on restart: never for several replicas.
//!
//! Bounded: besides the per-session and per-source caps of [`StoreLimits`], it holds at most
//! [`MemoryStore::MAX_SESSIONS`] sessions and [`MemoryStore::MAX_SOURCES`] sources; beyond
//! that, writes that would add one more fail with `TooLarge` (after expired entries were purged).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{
    AppendOutcome, ArchivedLine, AuditPage, AuditQuery, AuditStore, CredentialStore, LineQuery, LogArchive, PodMeta, Precondition, SessionStore, SourceInfo,
    SourceKey, StorageError, StoreFuture, StoreLimits, StoredSession, Version, expiry_ms, lines_within_caps,
    now_ms, validate_append, validate_credential_key, validate_credential_put, validate_query, validate_session_put,
    validate_subject,
};

#[derive(Debug)]
struct Session {
    stored: StoredSession,
    expires_at_ms: Option<i64>,
}

#[derive(Debug)]
struct Source {
    meta: PodMeta,
    lines: BTreeMap<u64, ArchivedLine>,
    bytes: u64,
    dropped: u64,
    terminated_at_ms: Option<i64>,
    expires_at_ms: Option<i64>,
}

impl Source {
    fn expired(&self, now: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now)
    }
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    sources: BTreeMap<SourceKey, Source>,
    /// Credential values with their expiry (ms since the epoch).
    credentials: HashMap<String, (Vec<u8>, i64)>,
    /// Audit events with their ids, oldest first.
    audit: std::collections::VecDeque<(u64, crate::audit::AuditEvent)>,
    next_audit_id: u64,
}

/// Sessions and archive in process memory; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    limits: StoreLimits,
}

impl MemoryStore {
    /// Most sessions held at once.
    pub const MAX_SESSIONS: usize = 100_000;
    /// Most archive sources held at once.
    pub const MAX_SOURCES: usize = 10_000;
    /// Most credentials held at once.
    pub const MAX_CREDENTIALS: usize = 100_000;
    /// Most audit events held; beyond, the oldest go first.
    pub const MAX_AUDIT_EVENTS: usize = 100_000;

    /// An empty store enforcing `limits`.
    pub fn new(limits: StoreLimits) -> Self {
        Self { inner: Arc::new(Mutex::new(Inner::default())), limits }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied write: every mutation
        // below is computed first and applied with infallible map operations.
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn session_get(&self, subject: &str) -> Result<Option<StoredSession>, StorageError> {
        validate_subject(subject)?;
        let now = now_ms();
        let inner = self.lock();
        Ok(inner
            .sessions
            .get(subject)
            .filter(|s| s.expires_at_ms.is_none_or(|at| at > now))
            .map(|s| s.stored.clone()))
    }

    fn session_put(
        &self,
        subject: &str,
        data: &[u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> Result<Version, StorageError> {
        validate_session_put(subject, data, &self.limits)?;
        let now = now_ms();
        let mut inner = self.lock();
        let current = inner
            .sessions
            .get(subject)
            .filter(|s| s.expires_at_ms.is_none_or(|at| at > now))
            .map(|s| s.stored.version);
        precondition.check(current)?;
        if current.is_none() && inner.sessions.len() >= Self::MAX_SESSIONS {
            inner.sessions.retain(|_, s| s.expires_at_ms.is_none_or(|at| at > now));
            if inner.sessions.len() >= Self::MAX_SESSIONS {
                return Err(StorageError::TooLarge { what: "session count", limit: Self::MAX_SESSIONS as u64 });
            }
        }
        let previous = inner.sessions.get(subject).map(|s| s.stored.version);
        let version = Version::next(previous.max(current));
        inner.sessions.insert(
            subject.to_owned(),
            Session {
                stored: StoredSession { data: data.to_vec(), version, updated_at_ms: now },
                expires_at_ms: ttl.map(|ttl| expiry_ms(now, ttl)),
            },
        );
        Ok(version)
    }

    fn session_delete(&self, subject: &str, precondition: Precondition) -> Result<bool, StorageError> {
        validate_subject(subject)?;
        let now = now_ms();
        let mut inner = self.lock();
        let current = inner
            .sessions
            .get(subject)
            .filter(|s| s.expires_at_ms.is_none_or(|at| at > now))
            .map(|s| s.stored.version);
        precondition.check(current)?;
        let removed = inner.sessions.remove(subject);
        Ok(removed.is_some() && current.is_some())
    }

    fn archive_append(
        &self,
        key: &SourceKey,
        meta: &PodMeta,
        lines: &[ArchivedLine],
    ) -> Result<AppendOutcome, StorageError> {
        validate_append(key, meta, lines, &self.limits)?;
        let now = now_ms();
        let mut inner = self.lock();
        if inner.sources.get(key).is_some_and(|s| s.expired(now)) {
            inner.sources.remove(key);
        }
        if !inner.sources.contains_key(key) && inner.sources.len() >= Self::MAX_SOURCES {
            inner.sources.retain(|_, s| !s.expired(now));
            if inner.sources.len() >= Self::MAX_SOURCES {
                return Err(StorageError::TooLarge { what: "archive source count", limit: Self::MAX_SOURCES as u64 });
            }
        }
        let source = inner.sources.entry(key.clone()).or_insert_with(|| Source {
            meta: meta.clone(),
            lines: BTreeMap::new(),
            bytes: 0,
            dropped: 0,
            terminated_at_ms: None,
            expires_at_ms: None,
        });
        source.meta = meta.clone();
        let mut sorted: Vec<&ArchivedLine> = lines.iter().collect();
        sorted.sort_by_key(|l| l.position);
        sorted.dedup_by_key(|l| l.position);
        let fresh: Vec<&ArchivedLine> = sorted.into_iter().filter(|l| !source.lines.contains_key(&l.position)).collect();
        let duplicates = (lines.len() - fresh.len()) as u64;
        let fit = lines_within_caps(&fresh, source.lines.len() as u64, source.bytes, &self.limits);
        for line in &fresh[..fit] {
            source.bytes += line.line.len() as u64;
            source.lines.insert(line.position, (*line).clone());
        }
        let dropped = (fresh.len() - fit) as u64;
        source.dropped += dropped;
        Ok(AppendOutcome { inserted: fit as u64, duplicates, dropped })
    }

    fn archive_read(&self, key: &SourceKey, query: LineQuery) -> Result<Vec<ArchivedLine>, StorageError> {
        validate_query(key, &query)?;
        let now = now_ms();
        let inner = self.lock();
        let Some(source) = inner.sources.get(key).filter(|s| !s.expired(now)) else {
            return Ok(Vec::new());
        };
        let start = query.after.map_or(0, |a| a.saturating_add(1));
        if query.after == Some(u64::MAX) {
            return Ok(Vec::new());
        }
        Ok(source
            .lines
            .range(start..)
            .map(|(_, line)| line)
            .filter(|l| query.since_ns.is_none_or(|s| l.timestamp_ns >= s))
            .filter(|l| query.until_ns.is_none_or(|u| l.timestamp_ns < u))
            .take(query.limit)
            .cloned()
            .collect())
    }

    fn archive_list(&self, namespace: &str) -> Result<Vec<SourceInfo>, StorageError> {
        let now = now_ms();
        let inner = self.lock();
        Ok(inner
            .sources
            .iter()
            .filter(|(k, s)| k.namespace == namespace && !s.expired(now))
            .map(|(k, s)| SourceInfo {
                key: k.clone(),
                meta: s.meta.clone(),
                terminated_at_ms: s.terminated_at_ms,
                expires_at_ms: s.expires_at_ms,
                lines: s.lines.len() as u64,
                bytes: s.bytes,
                dropped: s.dropped,
            })
            .collect())
    }

    fn archive_mark(&self, key: &SourceKey, at_ms: i64, ttl: Duration) -> Result<bool, StorageError> {
        key.validate()?;
        let now = now_ms();
        let mut inner = self.lock();
        match inner.sources.get_mut(key).filter(|s| !s.expired(now)) {
            Some(source) => {
                let at = source.terminated_at_ms.map_or(at_ms, |prev| prev.min(at_ms));
                source.terminated_at_ms = Some(at);
                source.expires_at_ms = Some(expiry_ms(at, ttl));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn purge_sessions(&self) -> u64 {
        let now = now_ms();
        let mut inner = self.lock();
        let before = inner.sessions.len();
        inner.sessions.retain(|_, s| s.expires_at_ms.is_none_or(|at| at > now));
        (before - inner.sessions.len()) as u64
    }

    fn credential_put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        validate_credential_put(key, value, ttl)?;
        let now = now_ms();
        let mut inner = self.lock();
        if inner.credentials.len() >= Self::MAX_CREDENTIALS && !inner.credentials.contains_key(key) {
            inner.credentials.retain(|_, (_, at)| *at > now);
            if inner.credentials.len() >= Self::MAX_CREDENTIALS {
                return Err(StorageError::TooLarge { what: "credential count", limit: Self::MAX_CREDENTIALS as u64 });
            }
        }
        inner.credentials.insert(key.to_owned(), (value.to_vec(), expiry_ms(now, ttl)));
        Ok(())
    }

    /// The live value under `key`; removed when `take`.
    fn credential_get(&self, key: &str, take: bool) -> Result<Option<Vec<u8>>, StorageError> {
        validate_credential_key(key)?;
        let now = now_ms();
        let mut inner = self.lock();
        let entry = if take { inner.credentials.remove(key) } else { inner.credentials.get(key).cloned() };
        Ok(entry.filter(|(_, at)| *at > now).map(|(value, _)| value))
    }

    fn audit_append(&self, events: &[crate::audit::AuditEvent]) -> Result<(), StorageError> {
        super::encode_audit_events(events)?;
        let mut inner = self.lock();
        for event in events {
            inner.next_audit_id += 1;
            let id = inner.next_audit_id;
            inner.audit.push_back((id, event.clone()));
            if inner.audit.len() > Self::MAX_AUDIT_EVENTS {
                inner.audit.pop_front();
            }
        }
        Ok(())
    }

    fn audit_query(&self, query: &AuditQuery) -> Result<AuditPage, StorageError> {
        super::validate_audit_query(query)?;
        let before = match &query.before {
            Some(cursor) => cursor.parse::<u64>().map_err(|_| StorageError::Invalid("audit cursor is not valid".to_owned()))?,
            None => u64::MAX,
        };
        let inner = self.lock();
        let mut page = AuditPage::default();
        let mut matching = inner.audit.iter().rev().filter(|(id, e)| *id < before && query.matches(e));
        for (id, event) in matching.by_ref().take(query.limit) {
            page.events.push((id.to_string(), event.clone()));
        }
        if matching.next().is_some() {
            page.next = page.events.last().map(|(id, _)| id.clone());
        }
        Ok(page)
    }

    fn purge_credentials(&self) -> u64 {
        let now = now_ms();
        let mut inner = self.lock();
        let before = inner.credentials.len();
        inner.credentials.retain(|_, (_, at)| *at > now);
        (before - inner.credentials.len()) as u64
    }

    fn purge_sources(&self) -> u64 {
        let now = now_ms();
        let mut inner = self.lock();
        let before = inner.sources.len();
        inner.sources.retain(|_, s| !s.expired(now));
        (before - inner.sources.len()) as u64
    }
}

impl SessionStore for MemoryStore {
    fn get<'a>(&'a self, subject: &'a str) -> StoreFuture<'a, Option<StoredSession>> {
        Box::pin(async move { self.session_get(subject) })
    }

    fn put<'a>(
        &'a self,
        subject: &'a str,
        data: &'a [u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, Version> {
        Box::pin(async move { self.session_put(subject, data, precondition, ttl) })
    }

    fn delete<'a>(&'a self, subject: &'a str, precondition: Precondition) -> StoreFuture<'a, bool> {
        Box::pin(async move { self.session_delete(subject, precondition) })
    }

    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move { Ok(self.purge_sessions()) })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move { Ok(()) })
    }
}

impl LogArchive for MemoryStore {
    fn append<'a>(
        &'a self,
        source: &'a SourceKey,
        meta: &'a PodMeta,
        lines: &'a [ArchivedLine],
    ) -> StoreFuture<'a, AppendOutcome> {
        Box::pin(async move { self.archive_append(source, meta, lines) })
    }

    fn read<'a>(&'a self, source: &'a SourceKey, query: LineQuery) -> StoreFuture<'a, Vec<ArchivedLine>> {
        Box::pin(async move { self.archive_read(source, query) })
    }

    fn list_sources<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, Vec<SourceInfo>> {
        Box::pin(async move { self.archive_list(namespace) })
    }

    fn mark_terminated<'a>(
        &'a self,
        source: &'a SourceKey,
        terminated_at_ms: i64,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move { self.archive_mark(source, terminated_at_ms, ttl) })
    }

    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move { Ok(self.purge_sources()) })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move { Ok(()) })
    }
}

impl CredentialStore for MemoryStore {
    fn put<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.credential_put(key, value, ttl) })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { self.credential_get(key, false) })
    }

    fn take<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { self.credential_get(key, true) })
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { self.credential_get(key, true).map(|v| v.is_some()) })
    }

    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move { Ok(self.purge_credentials()) })
    }
}

impl AuditStore for MemoryStore {
    fn append<'a>(&'a self, events: &'a [crate::audit::AuditEvent]) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.audit_append(events) })
    }

    fn query(&self, query: AuditQuery) -> StoreFuture<'_, AuditPage> {
        Box::pin(async move { self.audit_query(&query) })
    }

    fn purge_before(&self, cutoff_ms: i64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let mut inner = self.lock();
            let before = inner.audit.len();
            inner.audit.retain(|(_, e)| e.time_ms >= cutoff_ms);
            Ok((before - inner.audit.len()) as u64)
        })
    }
}
