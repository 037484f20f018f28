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
    AppendOutcome, ArchivedLine, LineQuery, LogArchive, PodMeta, Precondition, SessionStore, SourceInfo, SourceKey,
    StorageError, StoreFuture, StoreLimits, StoredSession, Version,
};

use crate::Stores;

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
        let this = Arc::new(self.clone());
        Stores { sessions: this.clone(), archive: this, backend }
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

impl SessionStore for DeferredStores {
    fn get<'a>(&'a self, subject: &'a str) -> StoreFuture<'a, Option<StoredSession>> {
        match self.stores() {
            Ok(s) => s.sessions.get(subject),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn put<'a>(
        &'a self,
        subject: &'a str,
        data: &'a [u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, Version> {
        match self.stores() {
            Ok(s) => s.sessions.put(subject, data, precondition, ttl),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn delete<'a>(&'a self, subject: &'a str, precondition: Precondition) -> StoreFuture<'a, bool> {
        match self.stores() {
            Ok(s) => s.sessions.delete(subject, precondition),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        match self.stores() {
            Ok(s) => s.sessions.purge_expired(),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        match self.stores() {
            Ok(s) => s.sessions.ping(),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

impl LogArchive for DeferredStores {
    fn append<'a>(
        &'a self,
        source: &'a SourceKey,
        meta: &'a PodMeta,
        lines: &'a [ArchivedLine],
    ) -> StoreFuture<'a, AppendOutcome> {
        match self.stores() {
            Ok(s) => s.archive.append(source, meta, lines),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn read<'a>(&'a self, source: &'a SourceKey, query: LineQuery) -> StoreFuture<'a, Vec<ArchivedLine>> {
        match self.stores() {
            Ok(s) => s.archive.read(source, query),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn list_sources<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, Vec<SourceInfo>> {
        match self.stores() {
            Ok(s) => s.archive.list_sources(namespace),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn mark_terminated<'a>(
        &'a self,
        source: &'a SourceKey,
        terminated_at_ms: i64,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        match self.stores() {
            Ok(s) => s.archive.mark_terminated(source, terminated_at_ms, ttl),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn purge_expired(&self) -> StoreFuture<'_, u64> {
        match self.stores() {
            Ok(s) => s.archive.purge_expired(),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        match self.stores() {
            Ok(s) => s.archive.ping(),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}
