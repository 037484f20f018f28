//! Storage metrics as a decorator: every operation of any store is timed into
//! `storage_operation_duration_seconds`, and backend failures (`Unavailable`, `Corrupt`) are
//! counted by operation in `storage_errors_total{operation}`. Expected outcomes — a failed
//! precondition, a value over a limit, an invalid request — are answers, not errors, and are
//! not counted. Wrapping keeps the backends free of metrics code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    AppendOutcome, ArchivedLine, AuditPage, AuditQuery, AuditStore, CredentialStore, LineQuery, LogArchive, PodMeta, Precondition, SessionStore, SourceInfo, SourceKey,
    StorageError, StoreFuture, StoredSession, Version,
};
use crate::metrics::Metrics;

/// A [`SessionStore`], [`LogArchive`], [`CredentialStore`] and/or [`AuditStore`] with metrics
/// (see the module docs).
#[derive(Debug)]
pub struct Instrumented<T: ?Sized> {
    inner: Arc<T>,
    metrics: Metrics,
}

impl<T: ?Sized> Instrumented<T> {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<T>, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }
}

/// Awaits `op`, recording its latency and (for backend failures) an error for `operation`.
async fn measured<T>(
    metrics: &Metrics,
    operation: &'static str,
    op: StoreFuture<'_, T>,
) -> Result<T, StorageError> {
    let started = Instant::now();
    let result = op.await;
    metrics.storage_latency.observe(started.elapsed());
    if let Err(StorageError::Unavailable(_) | StorageError::Corrupt(_)) = &result {
        metrics.storage_errors.inc(&[operation]);
    }
    result
}

impl<T: SessionStore + ?Sized> SessionStore for Instrumented<T> {
    fn get<'a>(&'a self, subject: &'a str) -> StoreFuture<'a, Option<StoredSession>> {
        Box::pin(measured(&self.metrics, "session_get", self.inner.get(subject)))
    }

    fn put<'a>(
        &'a self,
        subject: &'a str,
        data: &'a [u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, Version> {
        Box::pin(measured(&self.metrics, "session_put", self.inner.put(subject, data, precondition, ttl)))
    }

    fn delete<'a>(&'a self, subject: &'a str, precondition: Precondition) -> StoreFuture<'a, bool> {
        Box::pin(measured(&self.metrics, "session_delete", self.inner.delete(subject, precondition)))
    }

    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(measured(&self.metrics, "session_purge", SessionStore::purge_expired(&*self.inner)))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(measured(&self.metrics, "session_ping", SessionStore::ping(&*self.inner)))
    }
}

impl<T: LogArchive + ?Sized> LogArchive for Instrumented<T> {
    fn append<'a>(
        &'a self,
        source: &'a SourceKey,
        meta: &'a PodMeta,
        lines: &'a [ArchivedLine],
    ) -> StoreFuture<'a, AppendOutcome> {
        Box::pin(measured(&self.metrics, "archive_append", self.inner.append(source, meta, lines)))
    }

    fn read<'a>(&'a self, source: &'a SourceKey, query: LineQuery) -> StoreFuture<'a, Vec<ArchivedLine>> {
        Box::pin(measured(&self.metrics, "archive_read", self.inner.read(source, query)))
    }

    fn list_sources<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, Vec<SourceInfo>> {
        Box::pin(measured(&self.metrics, "archive_list", self.inner.list_sources(namespace)))
    }

    fn mark_terminated<'a>(
        &'a self,
        source: &'a SourceKey,
        terminated_at_ms: i64,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(measured(&self.metrics, "archive_mark", self.inner.mark_terminated(source, terminated_at_ms, ttl)))
    }

    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(measured(&self.metrics, "archive_purge", LogArchive::purge_expired(&*self.inner)))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(measured(&self.metrics, "archive_ping", LogArchive::ping(&*self.inner)))
    }
}

impl<T: CredentialStore + ?Sized> CredentialStore for Instrumented<T> {
    fn put<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(measured(&self.metrics, "credential_put", self.inner.put(key, value, ttl)))
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(measured(&self.metrics, "credential_get", self.inner.get(key)))
    }

    fn take<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(measured(&self.metrics, "credential_take", self.inner.take(key)))
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(measured(&self.metrics, "credential_remove", self.inner.remove(key)))
    }

    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(measured(&self.metrics, "credential_purge", CredentialStore::purge_expired(&*self.inner)))
    }
}

impl<T: AuditStore + ?Sized> AuditStore for Instrumented<T> {
    fn append<'a>(&'a self, events: &'a [crate::audit::AuditEvent]) -> StoreFuture<'a, ()> {
        Box::pin(measured(&self.metrics, "audit_append", self.inner.append(events)))
    }

    fn query(&self, query: AuditQuery) -> StoreFuture<'_, AuditPage> {
        Box::pin(measured(&self.metrics, "audit_query", self.inner.query(query)))
    }

    fn purge_before(&self, cutoff_ms: i64) -> StoreFuture<'_, u64> {
        Box::pin(measured(&self.metrics, "audit_purge", self.inner.purge_before(cutoff_ms)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[tokio::test]
    async fn operations_are_timed_and_only_backend_failures_count_as_errors() {
        let metrics = Metrics::new();
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(crate::storage::StoreLimits::default()));
        let sessions = Instrumented::new(store, metrics.clone());
        let version = sessions.put("alice", b"{}", Precondition::None, None).await.unwrap();
        assert!(sessions.get("alice").await.unwrap().is_some());
        // A lost race is an answer (412), not a storage error.
        let stale = Precondition::Matches(Version(version.0 + 1));
        assert!(matches!(sessions.put("alice", b"{}", stale, None).await, Err(StorageError::Conflict { .. })));
        assert_eq!(metrics.storage_errors.get(&["session_put"]), 0);
        let rendered = metrics.render_prometheus();
        assert!(rendered.contains("kubelens_storage_operation_duration_seconds_count 3"), "{rendered}");
    }

    /// A credential store that is down.
    #[derive(Debug)]
    struct Down;

    impl CredentialStore for Down {
        fn put<'a>(&'a self, _: &'a str, _: &'a [u8], _: Duration) -> StoreFuture<'a, ()> {
            Box::pin(async { Err(StorageError::Unavailable("down".into())) })
        }
        fn get<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
            Box::pin(async { Err(StorageError::Unavailable("down".into())) })
        }
        fn take<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
            Box::pin(async { Err(StorageError::Unavailable("down".into())) })
        }
        fn remove<'a>(&'a self, _: &'a str) -> StoreFuture<'a, bool> {
            Box::pin(async { Ok(false) })
        }
        fn purge_expired(&self) -> StoreFuture<'_, u64> {
            Box::pin(async { Ok(0) })
        }
    }

    #[tokio::test]
    async fn credential_and_audit_operations_are_measured_too() {
        let metrics = Metrics::new();
        let credentials = Instrumented::new(Arc::new(Down), metrics.clone());
        assert!(credentials.take("ticket:x").await.is_err());
        assert_eq!(metrics.storage_errors.get(&["credential_take"]), 1);
        let store: Arc<dyn AuditStore> = Arc::new(MemoryStore::new(crate::storage::StoreLimits::default()));
        let audit = Instrumented::new(store, metrics.clone());
        audit.append(&[crate::audit::AuditEvent::new("denied")]).await.unwrap();
        assert_eq!(audit.query(AuditQuery { limit: 5, ..AuditQuery::default() }).await.unwrap().events.len(), 1);
        assert!(metrics.render_prometheus().contains("kubelens_storage_operation_duration_seconds_count 3"));
    }
}
