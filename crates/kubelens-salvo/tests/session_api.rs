//! `/api/v1/session` through the real service (auth hoop with real RS256 tokens from the
//! test issuer) on real stores: sqlite always, PostgreSQL and Redis from
//! `scripts/storage/run.sh` (required unless KUBELENS_SKIP_E2E=1).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kubelens_core::auth::testing::TestIssuer;
use kubelens_core::config::{PostgresConfig, RedisConfig, Secret, SqliteConfig, StorageBackend};
use kubelens_core::storage::StoreLimits;
use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;
use kubelens_storage::Stores;
use salvo::prelude::*;
use salvo::test::{ResponseExt, TestClient};
use serde_json::Value;

const URL: &str = "http://127.0.0.1:5800/api/v1/session";

fn service(issuer: &TestIssuer, stores: Stores) -> Service {
    let mut config = Config::default();
    config.auth = issuer.config();
    let mut state = AppState::new(config, Readiness::new()).with_auth(issuer.authenticator());
    state.storage = Some(stores);
    kubelens_salvo::service(state)
}

async fn send(s: &Service, req: salvo::test::RequestBuilder) -> (u16, Option<String>, Value) {
    let mut res = req.send(s).await;
    let status = res.status_code.map(|c| c.as_u16()).unwrap_or(0);
    let etag = res.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = res.take_string().await.unwrap_or_default();
    (status, etag, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn exercise(s: &Service, issuer: &TestIssuer) {
    let alice = issuer.token_for("alice-sub", &["/k8s-logs-access"]);
    let bob = issuer.token_for("bob-sub", &["k8s-logs-access"]);
    let outsider = issuer.token_for("eve-sub", &["/other"]);

    // No token / wrong group never reach storage.
    assert_eq!(send(s, TestClient::get(URL)).await.0, 401);
    assert_eq!(send(s, TestClient::put(URL).bearer_auth(&outsider).raw_json("{}")).await.0, 403);

    let doc = r#"{"theme":"dark","pinnedResources":[{"kind":"app","namespace":"team-a","name":"web"}]}"#;
    let (status, etag, body) = send(s, TestClient::put(URL).bearer_auth(&alice).raw_json(doc)).await;
    assert_eq!(status, 200, "{body}");
    let etag = etag.unwrap();
    let (_, _, body) = send(s, TestClient::get(URL).bearer_auth(&bob)).await;
    assert_eq!(body["theme"], "system", "bob never sees alice's session");
    assert_eq!(send(s, TestClient::delete(URL).bearer_auth(&bob)).await.0, 204);
    let (_, etag2, body) = send(s, TestClient::get(URL).bearer_auth(&alice)).await;
    assert_eq!((body["theme"].as_str(), etag2.as_deref()), (Some("dark"), Some(etag.as_str())));

    // Validation: nothing stored.
    let (status, _, body) =
        send(s, TestClient::put(URL).bearer_auth(&alice).raw_json(r#"{"theme":"dark","evil":true}"#)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_session")));

    // Two tabs: both read the same ETag; the second save is refused.
    let tab1 = TestClient::put(URL)
        .bearer_auth(&alice)
        .add_header("if-match", etag.clone(), true)
        .raw_json(r#"{"theme":"light"}"#);
    let tab2 = TestClient::put(URL)
        .bearer_auth(&alice)
        .add_header("if-match", etag.clone(), true)
        .raw_json(r#"{"theme":"system"}"#);
    let (a, b) = tokio::join!(send(s, tab1), send(s, tab2));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "exactly one tab wins");
    assert_eq!(send(s, TestClient::delete(URL).bearer_auth(&alice)).await.0, 204);
    let (status, etag, body) = send(s, TestClient::get(URL).bearer_auth(&alice)).await;
    assert_eq!((status, etag, body["theme"].as_str()), (200, None, Some("system")));
}

#[tokio::test]
async fn session_api_on_sqlite() {
    let issuer = TestIssuer::new();
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig { path: dir.path().join("s.db").display().to_string(), ..SqliteConfig::default() };
    let store = kubelens_storage::sqlite::SqliteStore::open(&config, StoreLimits::default()).await.unwrap();
    exercise(&service(&issuer, Stores::from_one(store, StorageBackend::Sqlite)), &issuer).await;
}

fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("KUBELENS_SKIP_E2E").as_deref() == Ok("1") => None,
        _ => panic!("{var} unset: run through scripts/storage/run.sh (or set KUBELENS_SKIP_E2E=1)"),
    }
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("api_{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

#[tokio::test]
async fn session_api_on_postgres() {
    let Some(url) = required("KUBELENS_TEST_POSTGRES_URL") else { return };
    let issuer = TestIssuer::new();
    let config = PostgresConfig { url: Secret::new(url), max_connections: 4, schema: Some(unique()) };
    let store = kubelens_storage::postgres::PostgresStore::open(&config, StoreLimits::default()).await.unwrap();
    exercise(&service(&issuer, Stores::from_one(store, StorageBackend::Postgres)), &issuer).await;
}

#[tokio::test]
async fn session_api_on_redis() {
    let Some(url) = required("KUBELENS_TEST_REDIS_URL") else { return };
    let issuer = TestIssuer::new();
    let config = RedisConfig { url: Secret::new(url), key_prefix: Some(format!("{}:", unique())) };
    let store = kubelens_storage::redis::RedisStore::open(&config, StoreLimits::default()).await.unwrap();
    exercise(&service(&issuer, Stores::from_one(store, StorageBackend::Redis)), &issuer).await;
}

/// The same contract with real Keycloak access tokens (testenv): the session key is the
/// token's `sub`, so two real users never see each other's session, a user outside the
/// allowed group (`nogroup`, and `evil` with look-alike groups) never reaches storage, and
/// two tabs of one user race through `If-Match`.
#[tokio::test]
async fn session_api_with_real_keycloak_tokens() {
    let Some(env) = kubelens_testenv::TestEnv::e2e() else { return };
    let mut config = Config::default();
    config.auth.keycloak_url = env.keycloak_url.clone().expect("testenv runs Keycloak");
    config.auth.realm = env.realm.clone();
    config.auth.client_id = env.backend_client_id.clone();
    config.auth.trusted_clients = vec![env.cli_client_id.clone(), env.web_client_id.clone()];
    config.auth.allowed_groups = Some(vec!["k8s-logs-access".into()]);
    let auth = kubelens_core::auth::Authenticator::new(&config.auth).unwrap();
    assert!(auth.load_keys().await, "Keycloak keys");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteConfig { path: dir.path().join("s.db").display().to_string(), ..SqliteConfig::default() };
    let store = kubelens_storage::sqlite::SqliteStore::open(&sqlite, StoreLimits::default()).await.unwrap();
    let mut state = AppState::new(config, Readiness::new()).with_auth(auth);
    state.storage = Some(Stores::from_one(store, StorageBackend::Sqlite));
    let s = kubelens_salvo::service(state);

    let viewer = env.password_token(&env.web_client_id, "viewer").await;
    let admin = env.password_token(&env.cli_client_id, "admin").await;
    let nogroup = env.password_token(&env.web_client_id, "nogroup").await;
    let evil = env.password_token(&env.web_client_id, "evil").await;
    assert_eq!(send(&s, TestClient::get(URL).bearer_auth(&nogroup)).await.0, 403);
    assert_eq!(send(&s, TestClient::put(URL).bearer_auth(&evil).raw_json("{}")).await.0, 403);

    let (status, etag, body) =
        send(&s, TestClient::put(URL).bearer_auth(&viewer).raw_json(r#"{"theme":"dark","uiPrefs":{"fontSize":15}}"#)).await;
    assert_eq!(status, 200, "{body}");
    let etag = etag.expect("an ETag on save");
    let (_, _, theirs) = send(&s, TestClient::get(URL).bearer_auth(&admin)).await;
    assert_eq!(theirs["theme"], "system", "admin never sees viewer's session: {theirs}");
    let (_, same_etag, mine) = send(&s, TestClient::get(URL).bearer_auth(&viewer)).await;
    assert_eq!((mine["theme"].as_str(), same_etag.as_deref()), (Some("dark"), Some(etag.as_str())), "{mine}");

    let (status, _, body) = send(&s, TestClient::put(URL).bearer_auth(&viewer).raw_json(r#"{"theme":"neon"}"#)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_session")), "{body}");
    let tab = |theme: &str| {
        TestClient::put(URL).bearer_auth(&viewer).add_header("if-match", etag.clone(), true).raw_json(format!(r#"{{"theme":"{theme}"}}"#))
    };
    let (a, b) = tokio::join!(send(&s, tab("light")), send(&s, tab("system")));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412], "exactly one tab wins");
    assert_eq!(send(&s, TestClient::delete(URL).bearer_auth(&viewer)).await.0, 204);
}
