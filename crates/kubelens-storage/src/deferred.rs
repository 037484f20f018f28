//! Stores that become available once a background task managed to open the backend.
//!
//! The server must answer `/healthz` (and serve log streams that need no storage) while the
//! database is still unreachable at startup, so the binary does not block on [`crate::open`].
//! Instead it hands out a [`DeferredStores`] immediately; every call answers
//! `StorageError::Unavailable` until the opener task succeeds. The retry loop lives here, in
//! the composition layer, not inside any store implementation.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kubelens_core::config::{StorageBackend, StorageConfig};
use kubelens_core::storage::{
    AppendOutcome, ArchivedLine, LineQuery, PodMeta, Precondition, SourceInfo, SourceKey, StorageError, StoreLimits,
    StoredSession, Version,
};

use crate::Stores;
use crate::backend::{Backend, StoreAdapter};

/// First and largest delay between two attempts to open the backend.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(15);

/// A [`Stores`] slot filled once; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DeferredStores {
    slot: Arc<OnceLock<Stores>>,
}

impl DeferredStores {
    /// An empty slot: every call is `Unavailable` until [`DeferredStores::set`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills the slot; later calls are ignored (the first opened backend wins).
    pub fn set(&self, stores: Stores) {
        let _ = self.slot.set(stores);
    }

    /// The opened stores, if any yet.
    pub fn get(&self) -> Option<&Stores> {
        self.slot.get()
    }

    /// The trait objects handlers use; they delegate to the slot.
    pub fn as_stores(&self, backend: StorageBackend) -> Stores {
        let this = Arc::new(StoreAdapter::new(self.clone()));
        Stores { sessions: this.clone(), archive: this.clone(), credentials: this.clone(), audit: this, backend }
    }

    /// Spawns a task that calls [`crate::open`] with capped exponential backoff until it
    /// succeeds, then fills the slot. `on_error` sees every failed attempt (for logs and
    /// readiness). The task ends after the first success.
    pub fn open_in_background(
        config: StorageConfig,
        limits: StoreLimits,
        on_error: impl Fn(&StorageError) + Send + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let deferred = Self::new();
        let slot = deferred.clone();
        let task = tokio::spawn(async move {
            let mut delay = RETRY_MIN;
            loop {
                match crate::open(&config, limits).await {
                    Ok(stores) => {
                        slot.set(stores);
                        return;
                    }
                    Err(err) => {
                        on_error(&err);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RETRY_MAX);
                    }
                }
            }
        });
        (deferred, task)
    }

    fn stores(&self) -> Result<&Stores, StorageError> {
        self.slot.get().ok_or_else(|| StorageError::Unavailable("storage is not connected yet".to_owned()))
    }
}

impl Backend for DeferredStores {
    async fn session_get(&self, subject: &str) -> Result<Option<StoredSession>, StorageError> {
        self.stores()?.sessions.get(subject).await
    }
    async fn session_put(
        &self,
        subject: &str,
        data: &[u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> Result<Version, StorageError> {
        self.stores()?.sessions.put(subject, data, precondition, ttl).await
    }
    async fn session_delete(&self, subject: &str, precondition: Precondition) -> Result<bool, StorageError> {
        self.stores()?.sessions.delete(subject, precondition).await
    }
    async fn session_purge(&self) -> Result<u64, StorageError> {
        self.stores()?.sessions.purge_expired().await
    }
    async fn archive_append(
        &self,
        source: &SourceKey,
        meta: &PodMeta,
        lines: &[ArchivedLine],
    ) -> Result<AppendOutcome, StorageError> {
        self.stores()?.archive.append(source, meta, lines).await
    }
    async fn archive_read(&self, source: &SourceKey, query: LineQuery) -> Result<Vec<ArchivedLine>, StorageError> {
        self.stores()?.archive.read(source, query).await
    }
    async fn archive_list(&self, namespace: &str) -> Result<Vec<SourceInfo>, StorageError> {
        self.stores()?.archive.list_sources(namespace).await
    }
    async fn archive_mark(&self, source: &SourceKey, at_ms: i64, ttl: Duration) -> Result<bool, StorageError> {
        self.stores()?.archive.mark_terminated(source, at_ms, ttl).await
    }
    async fn archive_purge(&self) -> Result<u64, StorageError> {
        self.stores()?.archive.purge_expired().await
    }
    async fn credential_put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        self.stores()?.credentials.put(key, value, ttl).await
    }
    async fn credential_get(&self, key: &str, take: bool) -> Result<Option<Vec<u8>>, StorageError> {
        let credentials = &self.stores()?.credentials;
        if take { credentials.take(key).await } else { credentials.get(key).await }
    }
    async fn credential_purge(&self) -> Result<u64, StorageError> {
        self.stores()?.credentials.purge_expired().await
    }
    async fn audit_append(&self, events: &[kubelens_core::audit::AuditEvent]) -> Result<(), StorageError> {
        self.stores()?.audit.append(events).await
    }
    async fn audit_query(
        &self,
        query: kubelens_core::storage::AuditQuery,
    ) -> Result<kubelens_core::storage::AuditPage, StorageError> {
        self.stores()?.audit.query(query).await
    }
    async fn audit_purge(&self, cutoff_ms: i64) -> Result<u64, StorageError> {
        self.stores()?.audit.purge_before(cutoff_ms).await
    }
    async fn ping(&self) -> Result<(), StorageError> {
        let stores = self.stores()?;
        stores.sessions.ping().await?;
        stores.archive.ping().await
    }
}
