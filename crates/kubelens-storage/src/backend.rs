//! One adapter from plain `async fn` backends to core's object-safe storage traits.
//!
//! Core's [`SessionStore`] and [`LogArchive`] return boxed futures so they can be used as
//! `Arc<dyn …>`. Writing those boxes by hand in every backend repeats the same eleven
//! forwarders; instead a backend implements [`Backend`] with ordinary async methods, and
//! [`StoreAdapter`] boxes each future once, here. The same adapter serves [`CredentialStore`]
//! and [`AuditStore`].

use std::future::Future;
use std::time::Duration;

use kubelens_core::audit::AuditEvent;
use kubelens_core::storage::{
    AppendOutcome, ArchivedLine, AuditPage, AuditQuery, AuditStore, CredentialStore, LineQuery, LogArchive, PodMeta, Precondition, SessionStore, SourceInfo, SourceKey,
    StorageError, StoreFuture, StoredSession, Version,
};

/// A storage backend serving both sessions and the archive. The methods mean exactly what
/// the same-named methods of [`SessionStore`] and [`LogArchive`] mean; one [`Backend::ping`]
/// serves both traits.
pub trait Backend: std::fmt::Debug + Send + Sync + 'static {
    /// [`SessionStore::get`].
    fn session_get(&self, subject: &str) -> impl Future<Output = Result<Option<StoredSession>, StorageError>> + Send;
    /// [`SessionStore::put`].
    fn session_put(
        &self,
        subject: &str,
        data: &[u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<Version, StorageError>> + Send;
    /// [`SessionStore::delete`].
    fn session_delete(
        &self,
        subject: &str,
        precondition: Precondition,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;
    /// [`SessionStore::purge_expired`].
    fn session_purge(&self) -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// [`LogArchive::append`].
    fn archive_append(
        &self,
        source: &SourceKey,
        meta: &PodMeta,
        lines: &[ArchivedLine],
    ) -> impl Future<Output = Result<AppendOutcome, StorageError>> + Send;
    /// [`LogArchive::read`].
    fn archive_read(
        &self,
        source: &SourceKey,
        query: LineQuery,
    ) -> impl Future<Output = Result<Vec<ArchivedLine>, StorageError>> + Send;
    /// [`LogArchive::list_sources`].
    fn archive_list(&self, namespace: &str) -> impl Future<Output = Result<Vec<SourceInfo>, StorageError>> + Send;
    /// [`LogArchive::mark_terminated`].
    fn archive_mark(
        &self,
        source: &SourceKey,
        terminated_at_ms: i64,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;
    /// [`LogArchive::purge_expired`].
    fn archive_purge(&self) -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// [`CredentialStore::put`].
    fn credential_put(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// [`CredentialStore::get`] (`take: false`) and [`CredentialStore::take`] (`take: true`).
    fn credential_get(&self, key: &str, take: bool) -> impl Future<Output = Result<Option<Vec<u8>>, StorageError>> + Send;
    /// [`CredentialStore::purge_expired`].
    fn credential_purge(&self) -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// [`AuditStore::append`].
    fn audit_append(&self, events: &[AuditEvent]) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// [`AuditStore::query`].
    fn audit_query(&self, query: AuditQuery) -> impl Future<Output = Result<AuditPage, StorageError>> + Send;
    /// [`AuditStore::purge_before`].
    fn audit_purge(&self, cutoff_ms: i64) -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// [`SessionStore::ping`] and [`LogArchive::ping`].
    fn ping(&self) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// A [`Backend`] exposed as [`SessionStore`] + [`LogArchive`]; cheap to clone when the
/// backend is.
#[derive(Debug, Clone)]
pub struct StoreAdapter<B>(pub(crate) B);

impl<B: Backend> StoreAdapter<B> {
    /// Wraps `backend`.
    pub fn new(backend: B) -> Self {
        Self(backend)
    }
}

impl<B: Backend> SessionStore for StoreAdapter<B> {
    fn get<'a>(&'a self, subject: &'a str) -> StoreFuture<'a, Option<StoredSession>> {
        Box::pin(self.0.session_get(subject))
    }
    fn put<'a>(
        &'a self,
        subject: &'a str,
        data: &'a [u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, Version> {
        Box::pin(self.0.session_put(subject, data, precondition, ttl))
    }
    fn delete<'a>(&'a self, subject: &'a str, precondition: Precondition) -> StoreFuture<'a, bool> {
        Box::pin(self.0.session_delete(subject, precondition))
    }
    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.0.session_purge())
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.0.ping())
    }
}

impl<B: Backend> LogArchive for StoreAdapter<B> {
    fn append<'a>(
        &'a self,
        source: &'a SourceKey,
        meta: &'a PodMeta,
        lines: &'a [ArchivedLine],
    ) -> StoreFuture<'a, AppendOutcome> {
        Box::pin(self.0.archive_append(source, meta, lines))
    }
    fn read<'a>(&'a self, source: &'a SourceKey, query: LineQuery) -> StoreFuture<'a, Vec<ArchivedLine>> {
        Box::pin(self.0.archive_read(source, query))
    }
    fn list_sources<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, Vec<SourceInfo>> {
        Box::pin(self.0.archive_list(namespace))
    }
    fn mark_terminated<'a>(
        &'a self,
        source: &'a SourceKey,
        terminated_at_ms: i64,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.0.archive_mark(source, terminated_at_ms, ttl))
    }
    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.0.archive_purge())
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.0.ping())
    }
}

impl<B: Backend> CredentialStore for StoreAdapter<B> {
    fn put<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(self.0.credential_put(key, value, ttl))
    }
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.0.credential_get(key, false))
    }
    fn take<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.0.credential_get(key, true))
    }
    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { self.0.credential_get(key, true).await.map(|v| v.is_some()) })
    }
    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.0.credential_purge())
    }
}

impl<B: Backend> AuditStore for StoreAdapter<B> {
    fn append<'a>(&'a self, events: &'a [AuditEvent]) -> StoreFuture<'a, ()> {
        Box::pin(self.0.audit_append(events))
    }
    fn query(&self, query: AuditQuery) -> StoreFuture<'_, AuditPage> {
        Box::pin(self.0.audit_query(query))
    }
    fn purge_before(&self, cutoff_ms: i64) -> StoreFuture<'_, u64> {
        Box::pin(self.0.audit_purge(cutoff_ms))
    }
}
