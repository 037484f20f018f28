#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may unwrap
//! Runs the one conformance suite against every store: memory, sqlite, PostgreSQL, Redis.
//! PostgreSQL and Redis come from `scripts/storage/run.sh` (KUBELENS_TEST_POSTGRES_URL,
//! KUBELENS_TEST_REDIS_URL); each check gets its own schema / key prefix / file.

mod common;

use kubelens_core::config::{PostgresConfig, RedisConfig, Secret, SqliteConfig};
use kubelens_core::storage::StoreLimits;
use kubelens_storage::{Stores, conformance};

fn assert_conformant(backend: &str, failures: Vec<String>) {
    assert!(failures.is_empty(), "{backend} failed {} check(s):\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_is_conformant() {
    let failures = conformance::run(|limits: StoreLimits| async move { Ok(Stores::memory(limits)) }).await;
    assert_conformant("memory", failures);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_is_conformant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let failures = conformance::run(|limits: StoreLimits| {
        let file = path.join(format!("{}.db", common::unique("conf")));
        async move {
            let config = SqliteConfig { path: file.display().to_string(), ..SqliteConfig::default() };
            let store = kubelens_storage::sqlite::SqliteStore::open(&config, limits).await?;
            Ok(Stores::from_one(store, kubelens_core::config::StorageBackend::Sqlite))
        }
    })
    .await;
    assert_conformant("sqlite", failures);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_is_conformant() {
    let Some(url) = common::required_url("KUBELENS_TEST_POSTGRES_URL") else { return };
    let failures = conformance::run(|limits: StoreLimits| {
        let config = PostgresConfig {
            url: Secret::new(url.clone()),
            max_connections: 8,
            schema: Some(common::unique("conf")),
        };
        async move {
            let store = kubelens_storage::postgres::PostgresStore::open(&config, limits).await?;
            Ok(Stores::from_one(store, kubelens_core::config::StorageBackend::Postgres))
        }
    })
    .await;
    assert_conformant("postgres", failures);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_is_conformant() {
    let Some(url) = common::required_url("KUBELENS_TEST_REDIS_URL") else { return };
    let failures = conformance::run(|limits: StoreLimits| {
        let config = RedisConfig { url: Secret::new(url.clone()), key_prefix: Some(format!("{}:", common::unique("conf"))) };
        async move {
            let store = kubelens_storage::redis::RedisStore::open(&config, limits).await?;
            Ok(Stores::from_one(store, kubelens_core::config::StorageBackend::Redis))
        }
    })
    .await;
    assert_conformant("redis", failures);
}

#[tokio::test]
async fn open_dispatches_on_the_configured_backend() {
    let mut config = kubelens_core::config::StorageConfig { backend: kubelens_core::config::StorageBackend::Memory, ..Default::default() };
    let stores = kubelens_storage::open(&config, StoreLimits::default()).await.unwrap();
    assert_eq!(stores.backend, kubelens_core::config::StorageBackend::Memory);
    let dir = tempfile::tempdir().unwrap();
    config.backend = kubelens_core::config::StorageBackend::Sqlite;
    config.sqlite.path = dir.path().join("nested-ok.db").display().to_string();
    let stores = kubelens_storage::open(&config, StoreLimits::default()).await.unwrap();
    stores.sessions.ping().await.unwrap();
    // Re-opening an existing file re-runs migrations as a no-op.
    let again = kubelens_storage::open(&config, StoreLimits::default()).await.unwrap();
    again.archive.ping().await.unwrap();
}

#[tokio::test]
async fn bad_urls_are_invalid_without_echoing_secrets() {
    let mut config = kubelens_core::config::StorageConfig::default();
    config.backend = kubelens_core::config::StorageBackend::Postgres;
    config.postgres.url = Secret::new("not a url with hunter2");
    let err = kubelens_storage::open(&config, StoreLimits::default()).await.unwrap_err();
    assert!(matches!(err, kubelens_storage::StorageError::Invalid(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    config.backend = kubelens_core::config::StorageBackend::Redis;
    config.redis.url = Secret::new("nope://hunter2@x");
    let err = kubelens_storage::open(&config, StoreLimits::default()).await.unwrap_err();
    assert!(matches!(err, kubelens_storage::StorageError::Invalid(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}
