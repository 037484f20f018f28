//! End to end against the testenv's real Keycloak: each test user's real token through the
//! real router gets the expected 200/401/403, and a key rotation in Keycloak (a new active
//! RSA key) is accepted without restarting the authenticator.
//!
//! Run with `testenv/run -- cargo test -p kubelens-salvo --test e2e_auth`. Without a running
//! testenv these tests FAIL; `KUBELENS_SKIP_E2E=1` skips them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kubelens_core::auth::{AuthError, Authenticator};
use kubelens_core::config::AuthConfig;
use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;
use kubelens_testenv::TestEnv;
use salvo::http::StatusCode;
use salvo::prelude::*;
use salvo::test::{ResponseExt, TestClient};
use serde_json::{Value, json};

const BASE: &str = "http://127.0.0.1:5800";

/// The rotation test adds and then deletes a realm key; the other tests hold this too so none
/// of their tokens is signed by a key deleted under them.
static REALM_KEYS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The backend's view of the testenv realm: client `kubelens`; the CLI client's default-shape
/// tokens (`azp=kubelens-cli`, no `kubelens` audience) are accepted through `trusted_clients`.
fn auth_config(env: &TestEnv, trust_cli: bool) -> AuthConfig {
    AuthConfig {
        keycloak_url: env.keycloak_url.clone().expect("testenv runs with Keycloak"),
        realm: env.realm.clone(),
        client_id: env.backend_client_id.clone(),
        trusted_clients: if trust_cli { vec![env.cli_client_id.clone()] } else { Vec::new() },
        allowed_groups: Some(vec!["k8s-logs-access".to_owned()]),
        admin_group: "k8s-admin-access".to_owned(),
        ..AuthConfig::default()
    }
}

async fn service(env: &TestEnv, trust_cli: bool) -> (Service, Authenticator) {
    let config = Config { auth: auth_config(env, trust_cli), ..Config::default() };
    let auth = Authenticator::new(&config.auth).unwrap();
    // Keys loaded once up front (the background refresh loop is covered by the stub-server
    // tests); fetch counts below are then exact.
    assert!(auth.load_keys().await, "discovery + JWKS from the real Keycloak");
    let state = AppState::new(config, Readiness::new()).with_auth(auth.clone());
    (kubelens_salvo::service(state), auth)
}

async fn me(svc: &Service, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = TestClient::get(format!("{BASE}/api/v1/me"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let mut res = req.send(svc).await;
    let status = res.status_code.unwrap();
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
    }
    (status, res.take_json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn each_real_user_gets_the_expected_status() {
    let Some(env) = TestEnv::e2e() else { return };
    let _realm_keys = REALM_KEYS.lock().await;
    let (svc, _) = service(env, true).await;
    let (cli, web) = (env.cli_client_id.as_str(), env.web_client_id.as_str());
    for (client, user, want, admin) in [
        (cli, "nogroup", StatusCode::FORBIDDEN, false),
        (cli, "viewer", StatusCode::OK, false),
        (cli, "admin", StatusCode::OK, true),
        (cli, "evil", StatusCode::FORBIDDEN, false),
        (web, "nogroup", StatusCode::FORBIDDEN, false),
        (web, "viewer", StatusCode::OK, false),
        (web, "admin", StatusCode::OK, true),
        (web, "evil", StatusCode::FORBIDDEN, false),
    ] {
        let token = env.password_token(client, user).await;
        let (status, body) = me(&svc, Some(&token)).await;
        assert_eq!(status, want, "{user} via {client}: {body}");
        if status == StatusCode::OK {
            assert_eq!(body["username"], user, "{body}");
            assert_eq!(body["isAdmin"], admin, "{body}");
        }
    }
    let (status, _) = me(&svc, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn id_refresh_and_tampered_tokens_are_401() {
    let Some(env) = TestEnv::e2e() else { return };
    let _realm_keys = REALM_KEYS.lock().await;
    let (svc, auth) = service(env, true).await;
    let grant = env.try_password_token(&env.cli_client_id, "viewer").await.unwrap();
    let id_token = grant.id_token.expect("scope=openid yields an ID token");
    assert_eq!(me(&svc, Some(&id_token)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(auth.authenticate(&id_token).await, Err(AuthError::TokenType));
    let refresh = grant.refresh_token.expect("a refresh token");
    assert_eq!(me(&svc, Some(&refresh)).await.0, StatusCode::UNAUTHORIZED);
    // Keycloak signs refresh tokens with the realm's HMAC key: refused on the algorithm.
    assert!(auth.authenticate(&refresh).await.is_err());
    // Claims swapped: viewer's signature over admin's claims.
    let viewer = grant.access_token;
    let admin = env.password_token(&env.cli_client_id, "admin").await;
    let (v, a): (Vec<&str>, Vec<&str>) = (viewer.split('.').collect(), admin.split('.').collect());
    let forged = format!("{}.{}.{}", v[0], a[1], v[2]);
    assert_eq!(me(&svc, Some(&forged)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(auth.authenticate(&forged).await, Err(AuthError::BadSignature));
}

#[tokio::test]
async fn audience_rule_matches_both_real_token_shapes() {
    let Some(env) = TestEnv::e2e() else { return };
    let _realm_keys = REALM_KEYS.lock().await;
    // Without trusting the CLI client, its default-shape tokens (azp=kubelens-cli, no
    // `kubelens` audience) are refused, while the web client's audience-mapped tokens pass.
    let (svc, auth) = service(env, false).await;
    let cli = env.password_token(&env.cli_client_id, "viewer").await;
    assert_eq!(me(&svc, Some(&cli)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(auth.authenticate(&cli).await, Err(AuthError::Audience));
    let web = env.password_token(&env.web_client_id, "viewer").await;
    assert_eq!(me(&svc, Some(&web)).await.0, StatusCode::OK);
}

fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let json: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    json["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_key_rotated_in_keycloak_is_accepted_without_restart() {
    let Some(env) = TestEnv::e2e() else { return };
    let _realm_keys = REALM_KEYS.lock().await;
    let (svc, auth) = service(env, true).await;
    let kc = env.keycloak_url.clone().unwrap();
    let http = reqwest::Client::new();
    let admin = env.keycloak_admin_token().await.unwrap();
    let before = env.password_token(&env.cli_client_id, "viewer").await;
    assert_eq!(me(&svc, Some(&before)).await.0, StatusCode::OK);
    // Signed by the old key, validated only after the rotation (so not from the cache).
    let before_unchecked = env.password_token(&env.cli_client_id, "admin").await;
    let fetches_before = auth.jwks_fetch_count();

    // Add a new RSA key provider with a higher priority than the realm's default: Keycloak
    // signs new tokens with it at once, and keeps publishing the old key.
    let realm: Value = http
        .get(format!("{kc}/admin/realms/{}", env.realm))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let name = format!("kubelens-e2e-rotation-{}", std::process::id());
    let created = http
        .post(format!("{kc}/admin/realms/{}/components", env.realm))
        .bearer_auth(&admin)
        .json(&json!({
            "name": name,
            "providerId": "rsa-generated",
            "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm["id"],
            "config": {
                "priority": ["10000"],
                "enabled": ["true"],
                "active": ["true"],
                "algorithm": ["RS256"],
                "keySize": ["2048"],
            },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED, "{:?}", created.text().await);
    let location = created.headers().get("location").unwrap().to_str().unwrap().to_owned();

    let after = env.password_token(&env.cli_client_id, "viewer").await;
    let cleanup = async {
        let _ = http.delete(&location).bearer_auth(&admin).send().await;
    };
    assert_ne!(kid_of(&before), kid_of(&after), "Keycloak signs with the new key");
    // New kid: accepted after one refetch, by the same (running) authenticator.
    let (status, body) = me(&svc, Some(&after)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(auth.jwks_fetch_count(), fetches_before + 1);
    // The old key is still published: a not-yet-cached token signed by it still validates.
    assert_eq!(kid_of(&before_unchecked), kid_of(&before));
    assert_eq!(auth.authenticate(&before_unchecked).await.unwrap().username, "admin");
    assert_eq!(auth.jwks_fetch_count(), fetches_before + 1);
    cleanup.await;
}
