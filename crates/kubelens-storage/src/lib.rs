//! KubeLens storage backends implementing the `kubelens-core` storage traits
//! ([`SessionStore`], [`LogArchive`]).
//!
//! | backend | feature | replicas | TTL |
//! |---|---|---|---|
//! | sqlite (sqlx, WAL, busy timeout) | `sqlite` | one (embedded file) | `expires_at_ms` columns + [`SessionStore::purge_expired`] job |
//! | PostgreSQL (sqlx pool) | `postgres` | several | same as sqlite |
//! | Redis (connection manager, Lua scripts) | `redis` | several | native key expiry |
//! | memory (`kubelens_core::storage::memory`) | always | one, lost on restart | checked on read |
//!
//! sqlite and PostgreSQL share one implementation ([`sql::SqlBackend`], generic over a small
//! [`sql::SqlDialect`]); every backend implements [`backend::Backend`] with plain async
//! methods and is exposed to core's object-safe traits by the one [`backend::StoreAdapter`].
//!
//! [`open`] picks the backend from [`StorageConfig`] and applies that backend's migrations.
//! Every implementation makes exactly one attempt per call and maps driver errors to
//! [`StorageError`]; retries (opening at startup, readiness pings) are composed outside, see
//! [`DeferredStores`]. The [`conformance`] module is the one behavioural suite all of them
//! pass.
#![deny(missing_docs)]

pub mod backend;
pub mod conformance;
pub mod deferred;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;

use std::sync::Arc;

use kubelens_core::config::{StorageBackend, StorageConfig};
use kubelens_core::storage::memory::MemoryStore;
pub use kubelens_core::storage::{AuditStore, CredentialStore, LogArchive, SessionStore, StorageError, StoreLimits};

pub use deferred::DeferredStores;

/// The two stores of one backend, shared by handlers and background tasks.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Per-user UI sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// Archived log lines.
    pub archive: Arc<dyn LogArchive>,
    /// Stream tickets and credentials (used only when several replicas share this backend:
    /// see [`Stores::is_shared`]).
    pub credentials: Arc<dyn CredentialStore>,
    /// The stored copy of the audit trail (`audit.store`).
    pub audit: Arc<dyn AuditStore>,
    /// Which backend these are (for logs and readiness details).
    pub backend: StorageBackend,
}

impl Stores {
    /// Both traits served by one value (every backend implements both on one handle).
    pub fn from_one<T: SessionStore + LogArchive + CredentialStore + AuditStore + 'static>(
        store: T,
        backend: StorageBackend,
    ) -> Self {
        let store = Arc::new(store);
        Self { sessions: store.clone(), archive: store.clone(), credentials: store.clone(), audit: store, backend }
    }

    /// Whether several replicas can share this backend (PostgreSQL, Redis), so stream
    /// tickets and credentials belong in it; memory and sqlite serve one process.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, StorageBackend::Postgres | StorageBackend::Redis)
    }

    /// In-memory stores (tests, demos, the `memory` backend).
    pub fn memory(limits: StoreLimits) -> Self {
        Self::from_one(MemoryStore::new(limits), StorageBackend::Memory)
    }
}

/// Opens the configured backend: connects, applies its migrations and returns both stores.
/// One attempt; a backend that is down yields `StorageError::Unavailable` and the caller
/// decides whether and when to retry (see [`DeferredStores::open_in_background`]).
pub async fn open(config: &StorageConfig, limits: StoreLimits) -> Result<Stores, StorageError> {
    match config.backend {
        StorageBackend::Memory => Ok(Stores::memory(limits)),
        #[cfg(feature = "sqlite")]
        StorageBackend::Sqlite => {
            let store = sqlite::SqliteStore::open(&config.sqlite, limits).await?;
            Ok(Stores::from_one(store, StorageBackend::Sqlite))
        }
        #[cfg(feature = "postgres")]
        StorageBackend::Postgres => {
            let store = postgres::PostgresStore::open(&config.postgres, limits).await?;
            Ok(Stores::from_one(store, StorageBackend::Postgres))
        }
        #[cfg(feature = "redis")]
        StorageBackend::Redis => {
            let store = redis::RedisStore::open(&config.redis, limits).await?;
            Ok(Stores::from_one(store, StorageBackend::Redis))
        }
        #[allow(unreachable_patterns)]
        other => Err(StorageError::Invalid(format!(
            "storage backend {other:?} is not compiled into this binary (cargo feature missing)"
        ))),
    }
}

/// How long one readiness ping may take before storage counts as down.
pub const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Keeps `check` in step with the storage: pings every `interval` (ready / not ready, so
/// readiness recovers by itself when the backend returns) and runs `purge_expired` on both
/// stores every `purge_every` pings. Never returns; spawn it and abort it on shutdown.
/// Failures are logged at `warn` once per transition, not on every ping.
pub async fn watch_health(
    stores: Stores,
    check: kubelens_core::ReadinessCheck,
    interval: std::time::Duration,
    purge_every: u32,
) {
    let mut was_ready: Option<bool> = None;
    let mut tick: u32 = 0;
    loop {
        let result = match tokio::time::timeout(PING_TIMEOUT, async {
            stores.sessions.ping().await?;
            stores.archive.ping().await
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(StorageError::Unavailable(format!("ping timed out after {PING_TIMEOUT:?}"))),
        };
        let backend = format!("{:?}", stores.backend).to_lowercase();
        match result {
            Ok(()) => {
                if was_ready != Some(true) {
                    tracing::info!(backend = %backend, "storage reachable");
                }
                check.ready(&format!("{backend} reachable"));
                was_ready = Some(true);
                tick = tick.wrapping_add(1);
                if purge_every > 0 && tick.is_multiple_of(purge_every) {
                    let sessions = stores.sessions.purge_expired().await;
                    let sources = stores.archive.purge_expired().await;
                    let credentials = stores.credentials.purge_expired().await;
                    match (sessions, sources, credentials) {
                        (Ok(s), Ok(a), Ok(c)) if s + a + c > 0 => {
                            tracing::debug!(sessions = s, sources = a, credentials = c, "purged expired storage entries");
                        }
                        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                            tracing::warn!(error = %e, "storage purge failed");
                        }
                        _ => {}
                    }
                }
            }
            Err(err) => {
                if was_ready != Some(false) {
                    tracing::warn!(backend = %backend, error = %err, "storage unreachable");
                }
                // The detail is public (/readyz is unauthenticated): no driver message.
                check.not_ready(&format!("{backend} unreachable"));
                was_ready = Some(false);
            }
        }
        tokio::time::sleep(interval).await;
    }
}
