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
//! [`open`] picks the backend from [`StorageConfig`] and applies that backend's migrations.
//! Every implementation makes exactly one attempt per call and maps driver errors to
//! [`StorageError`]; retries (opening at startup, readiness pings) are composed outside, see
//! [`DeferredStores`]. The [`conformance`] module is the one behavioural suite all of them
//! pass.
#![deny(missing_docs)]

pub mod conformance;
pub mod deferred;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::sync::Arc;

use kubelens_core::config::{StorageBackend, StorageConfig};
use kubelens_core::storage::memory::MemoryStore;
pub use kubelens_core::storage::{LogArchive, SessionStore, StorageError, StoreLimits};

pub use deferred::DeferredStores;

/// The two stores of one backend, shared by handlers and background tasks.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Per-user UI sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// Archived log lines.
    pub archive: Arc<dyn LogArchive>,
    /// Which backend these are (for logs and readiness details).
    pub backend: StorageBackend,
}

impl Stores {
    /// Both traits served by one value (every backend implements both on one handle).
    pub fn from_one<T: SessionStore + LogArchive + 'static>(store: T, backend: StorageBackend) -> Self {
        let store = Arc::new(store);
        Self { sessions: store.clone(), archive: store, backend }
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

/// Maps sqlx errors: connection-level and resource errors are `Unavailable`, decode errors
/// `Corrupt`. The message never contains the connection URL (sqlx does not print it).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
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
