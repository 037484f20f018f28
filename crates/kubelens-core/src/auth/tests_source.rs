//! Key loading against a stub OIDC server on 127.0.0.1: discovery, JWKS failures at startup
//! and later, single-flight refetch with cooldown under a random-kid flood, key rotation.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;

use super::testing::{StubBehavior, StubOidc, TestIssuer, TestKey};
use super::*;
use crate::config::AuthConfig;
use crate::readiness::Readiness;

/// Polls `cond` every 20 ms for at most `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn config(issuer: &TestIssuer) -> AuthConfig {
    let mut config = issuer.config();
    config.jwks_fetch_timeout = Duration::from_millis(500);
    config
}

async fn setup() -> (StubOidc, TestIssuer, Authenticator) {
    let issuer = TestIssuer::new();
    let stub = StubOidc::start(issuer.jwks()).await;
    let issuer = TestIssuer { keycloak_url: stub.url.clone(), ..issuer };
    let auth = Authenticator::new(&config(&issuer)).unwrap();
    (stub, issuer, auth)
}

fn token_with_kid(issuer: &TestIssuer, key: &TestKey, kid: &str) -> String {
    key.sign(&json!({"alg": "RS256", "typ": "JWT", "kid": kid}), &issuer.claims("viewer", &["/k8s-logs-access"]), Algorithm::RS256)
}

#[tokio::test]
async fn discovery_then_jwks_load_in_the_background_and_readiness_follows() {
    let (stub, issuer, auth) = setup().await;
    let readiness = Readiness::new();
    let _task = auth.spawn_key_refresh(readiness.register("oidc", "starting"));
    assert!(eventually(Duration::from_secs(5), || readiness.report().ready).await);
    assert_eq!(auth.key_count(), 1);
    assert_eq!((stub.discovery_requests(), stub.jwks_requests()), (1, 1));
    assert!(auth.authenticate(&issuer.viewer_token()).await.is_ok());
    assert_eq!(stub.jwks_requests(), 1);
}

#[tokio::test]
async fn a_token_before_the_background_load_triggers_one_fetch() {
    let (stub, issuer, auth) = setup().await;
    assert!(auth.authenticate(&issuer.viewer_token()).await.is_ok());
    assert_eq!(stub.jwks_requests(), 1);
}

#[tokio::test]
async fn discovery_must_name_exactly_the_configured_issuer() {
    for announced in ["/", "x"] {
        let (stub, issuer, auth) = setup().await;
        stub.set_discovery_issuer(&format!("{}{announced}", issuer.issuer()));
        assert!(!auth.load_keys().await);
        assert_eq!(auth.authenticate(&issuer.viewer_token()).await, Err(AuthError::KeysUnavailable));
        assert_eq!(stub.jwks_requests(), 0, "no JWKS fetched from an untrusted discovery document");
    }
    let (stub, issuer, auth) = setup().await;
    stub.set_discovery_issuer(&issuer.issuer().replace("http://", "https://"));
    assert!(!auth.load_keys().await);
}

#[tokio::test]
async fn keycloak_down_at_startup_reports_unready_then_recovers() {
    let bad = [
        (StubBehavior::Drop, true),
        (StubBehavior::Status(500), true),
        (StubBehavior::Status(404), false),
        (StubBehavior::BadJson, false),
        (StubBehavior::NoKeys, false),
        (StubBehavior::Slow(Duration::from_secs(3)), false),
        (StubBehavior::Body("x".repeat(MAX_DOCUMENT_BYTES + 1)), false),
    ];
    for (behavior, on_discovery) in bad {
        let (stub, issuer, auth) = setup().await;
        if on_discovery {
            stub.set_discovery_behavior(behavior.clone());
        }
        stub.set_jwks_behavior(behavior.clone());
        let readiness = Readiness::new();
        let check = readiness.register("oidc", "starting");
        let _task = auth.spawn_key_refresh(check.clone());
        // The first attempt fails: not ready, and tokens cannot be checked (503, not 401).
        assert!(eventually(Duration::from_secs(3), || readiness.report().checks["oidc"].detail.contains("attempt")).await, "{behavior:?}");
        assert!(!check.is_ready());
        assert_eq!(auth.authenticate(&issuer.viewer_token()).await, Err(AuthError::KeysUnavailable), "{behavior:?}");
        // Keycloak comes back: the background retry loads the keys without a restart.
        stub.set_discovery_behavior(StubBehavior::Ok);
        stub.set_jwks_behavior(StubBehavior::Ok);
        assert!(eventually(Duration::from_secs(8), || check.is_ready()).await, "{behavior:?}");
        assert!(auth.authenticate(&issuer.viewer_token()).await.is_ok(), "{behavior:?}");
    }
}

#[tokio::test]
async fn cached_keys_keep_working_while_keycloak_is_down() {
    for behavior in [
        StubBehavior::Drop,
        StubBehavior::Status(500),
        StubBehavior::Status(503),
        StubBehavior::BadJson,
        StubBehavior::NoKeys,
        StubBehavior::Slow(Duration::from_secs(3)),
    ] {
        let (stub, issuer, auth) = setup().await;
        assert!(auth.load_keys().await);
        stub.set_jwks_behavior(behavior.clone());
        stub.set_discovery_behavior(behavior.clone());
        // A failed refresh keeps the old keys.
        assert!(!auth.load_keys().await, "{behavior:?}");
        assert_eq!(auth.key_count(), 1);
        // Fresh (uncached) tokens signed by a known key validate.
        assert!(auth.authenticate(&issuer.token_for("fresh", &["/k8s-logs-access"])).await.is_ok(), "{behavior:?}");
        // An unknown kid is refused (401), not "unavailable", and bounded in time.
        let started = std::time::Instant::now();
        let unknown = token_with_kid(&issuer, &TestKey::b(), "key-b");
        assert_eq!(auth.authenticate(&unknown).await, Err(AuthError::UnknownKey), "{behavior:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{behavior:?}: {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_random_kid_flood_causes_at_most_one_fetch_per_cooldown() {
    let (stub, issuer, _) = setup().await;
    let mut config = config(&issuer);
    // Long enough that the flood below fits inside one cooldown on a loaded 2-core machine.
    config.jwks_refetch_cooldown = Duration::from_secs(5);
    let auth = Authenticator::new(&config).unwrap();
    assert!(auth.load_keys().await);
    assert_eq!(stub.jwks_requests(), 1);
    // Signed up front so the flood itself is fast compared to the cooldown.
    let attacker = TestKey::attacker("x");
    let tokens: Vec<String> = (0..500).map(|i| token_with_kid(&issuer, &attacker, &format!("random-{i}"))).collect();
    // 300 concurrent requests with random kids: they share one refetch.
    let started = tokio::time::Instant::now();
    let mut handles = Vec::new();
    for token in &tokens[..300] {
        let (auth, token) = (auth.clone(), token.clone());
        handles.push(tokio::spawn(async move { auth.authenticate(&token).await }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), Err(AuthError::UnknownKey));
    }
    // More random kids within the cooldown: no fetch at all.
    for token in &tokens[300..] {
        assert_eq!(auth.authenticate(token).await, Err(AuthError::UnknownKey));
    }
    assert!(started.elapsed() < Duration::from_secs(5), "flood took {:?}; the assertion below needs it inside one cooldown", started.elapsed());
    assert_eq!(stub.jwks_requests(), 2, "one initial load + one refetch for 500 random kids");
    assert_eq!(auth.jwks_fetch_count(), 2);
    // After the cooldown, one more.
    tokio::time::sleep(Duration::from_millis(5100)).await;
    for token in &tokens[..50] {
        assert_eq!(auth.authenticate(token).await, Err(AuthError::UnknownKey));
    }
    assert_eq!(stub.jwks_requests(), 3);
    // Valid tokens are unaffected throughout.
    assert!(auth.authenticate(&issuer.viewer_token()).await.is_ok());
}

#[tokio::test]
async fn key_rotation_new_kid_after_one_refetch_old_kid_while_published() {
    let (stub, issuer, auth) = setup().await;
    assert!(auth.load_keys().await);
    let old = issuer.token_for("old", &["/k8s-logs-access"]);
    let rotated = TestIssuer { key: TestKey::b(), published: vec![TestKey::a(), TestKey::b()], ..issuer.clone() };
    let new = rotated.token_for("new", &["/k8s-logs-access"]);
    // Keycloak publishes the new key next to the old one.
    stub.set_jwks(rotated.jwks());
    assert_eq!(auth.authenticate(&new).await.unwrap().subject, "new");
    assert_eq!(stub.jwks_requests(), 2, "exactly one refetch for the new kid");
    assert_eq!(auth.authenticate(&old).await.unwrap().subject, "old");
    assert_eq!(auth.authenticate(&issuer.token_for("old-2", &["/k8s-logs-access"])).await.unwrap().subject, "old-2");
    assert_eq!(stub.jwks_requests(), 2);
    // The old key is withdrawn: after the next refresh, fresh tokens signed by it fail.
    stub.set_jwks(TestIssuer { published: vec![TestKey::b()], ..issuer.clone() }.jwks());
    assert!(auth.load_keys().await);
    assert_eq!(auth.authenticate(&issuer.token_for("old-3", &["/k8s-logs-access"])).await, Err(AuthError::UnknownKey));
    assert!(auth.authenticate(&rotated.token_for("new-2", &["/k8s-logs-access"])).await.is_ok());
}

#[tokio::test]
async fn the_periodic_refresh_picks_up_rotations() {
    let (stub, issuer, _) = setup().await;
    let mut config = config(&issuer);
    config.jwks_refresh_interval = Duration::from_millis(200);
    let auth = Authenticator::new(&config).unwrap();
    let readiness = Readiness::new();
    let task = auth.spawn_key_refresh(readiness.register("oidc", "starting"));
    assert!(eventually(Duration::from_secs(5), || auth.key_count() == 1).await);
    stub.set_jwks(TestIssuer { published: vec![TestKey::a(), TestKey::b()], ..issuer.clone() }.jwks());
    assert!(eventually(Duration::from_secs(5), || auth.key_count() == 2).await);
    // Keycloak down later: readiness stays ready (cached keys still validate).
    stub.set_jwks_behavior(StubBehavior::Status(500));
    let before = stub.jwks_requests();
    assert!(eventually(Duration::from_secs(5), || stub.jwks_requests() > before + 1).await);
    assert!(readiness.report().ready);
    assert_eq!(auth.key_count(), 2);
    // Dropping the guard stops the loop.
    drop(task);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped_at = stub.jwks_requests();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(stub.jwks_requests(), stopped_at);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_fetch_even_when_slow() {
    let (stub, issuer, auth) = setup().await;
    stub.set_jwks_behavior(StubBehavior::Slow(Duration::from_millis(200)));
    let mut handles = Vec::new();
    for i in 0..50 {
        let (auth, token) = (auth.clone(), issuer.token_for(&format!("u{i}"), &["/k8s-logs-access"]));
        handles.push(tokio::spawn(async move { auth.authenticate(&token).await }));
    }
    for h in handles {
        assert!(h.await.unwrap().is_ok());
    }
    assert_eq!(stub.jwks_requests(), 1);
    assert_eq!(stub.discovery_requests(), 1);
}

#[tokio::test]
async fn a_jwks_with_only_unusable_keys_is_not_installed() {
    let (stub, issuer, auth) = setup().await;
    assert!(auth.load_keys().await);
    stub.set_jwks(json!({"keys": [{"kty": "oct", "kid": "key-a", "k": "c2VjcmV0"}]}));
    assert!(!auth.load_keys().await);
    assert_eq!(auth.key_count(), 1);
    assert!(auth.authenticate(&issuer.token_for("still", &["/k8s-logs-access"])).await.is_ok());
}

#[tokio::test]
async fn an_unreachable_keycloak_fails_fast_and_reports_keys_unavailable() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let issuer = TestIssuer::at(&url);
    let auth = Authenticator::new(&config(&issuer)).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(auth.authenticate(&issuer.viewer_token()).await, Err(AuthError::KeysUnavailable));
    assert!(started.elapsed() < Duration::from_secs(2));
    // Within the cooldown, no new attempt is made.
    assert_eq!(auth.authenticate(&issuer.viewer_token()).await, Err(AuthError::KeysUnavailable));
    assert_eq!(auth.jwks_fetch_count(), 1);
}

/// `0.0.0.0` reaches this machine on Linux but is not loopback: it stands in for "plain HTTP
/// to some other host" without sending traffic anywhere but 127.0.0.1.
fn off_loopback(stub: &StubOidc, path: &str) -> String {
    format!("{}{path}", stub.url.replace("127.0.0.1", "0.0.0.0"))
}

#[tokio::test]
async fn a_plain_http_jwks_uri_off_loopback_is_refused() {
    let (stub, issuer, auth) = setup().await;
    stub.set_discovery_jwks_uri(&off_loopback(&stub, "/realms/kubelens/protocol/openid-connect/certs"));
    assert!(!auth.load_keys().await);
    assert_eq!(auth.authenticate(&issuer.viewer_token()).await, Err(AuthError::KeysUnavailable));
    assert_eq!(stub.jwks_requests(), 0, "no key material fetched over plain HTTP off loopback");
}

#[tokio::test]
async fn a_redirect_to_plain_http_off_loopback_is_refused() {
    let (stub, issuer, auth) = setup().await;
    let target = off_loopback(&stub, "/realms/kubelens/.well-known/openid-configuration");
    stub.set_discovery_behavior(StubBehavior::Redirect(target));
    assert!(!auth.load_keys().await);
    assert_eq!(stub.discovery_requests(), 1, "the redirect target was not requested");
    assert_eq!(auth.authenticate(&issuer.viewer_token()).await, Err(AuthError::KeysUnavailable));
    assert_eq!(stub.jwks_requests(), 0);
}

#[tokio::test]
async fn a_loopback_http_issuer_may_use_loopback_http_keys() {
    let (stub, issuer, auth) = setup().await;
    stub.set_discovery_jwks_uri(&format!(
        "{}/realms/kubelens/protocol/openid-connect/certs",
        stub.url.replace("127.0.0.1", "localhost")
    ));
    assert!(auth.load_keys().await);
    assert!(auth.authenticate(&issuer.viewer_token()).await.is_ok());
}
