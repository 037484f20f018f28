//! Validation rules and attacks (security.md "Tokens"), with locally minted tokens and static
//! keys. Network behaviour (discovery, JWKS failures, refetch, rotation) lives in
//! `tests_source.rs`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::testing::{RSA_A_PUBLIC_PEM, TestIssuer, TestKey, b64_json, now};
use super::*;
use crate::config::AuthConfig;

async fn reason(auth: &Authenticator, token: &str) -> &'static str {
    match auth.authenticate(token).await {
        Ok(_) => "ok",
        Err(err) => err.reason(),
    }
}

/// Flips the first signature character (still valid base64url, wrong signature).
fn corrupt_signature(token: &str) -> String {
    let at = token.rfind('.').unwrap() + 1;
    let replacement = if token[at..].starts_with('A') { "B" } else { "A" };
    format!("{}{replacement}{}", &token[..at], &token[at + 1..])
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

#[tokio::test]
async fn a_valid_token_yields_the_principal() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let p = auth.authenticate(&issuer.admin_token()).await.unwrap();
    assert_eq!(p.subject, "admin");
    assert_eq!(p.username, "admin");
    assert_eq!(p.groups, vec!["/k8s-logs-access", "/k8s-admin-access"]);
    assert!(p.is_admin);
    assert!(p.expires_at > now());
    let p = auth.authenticate(&issuer.viewer_token()).await.unwrap();
    assert!(!p.is_admin);
    // preferred_username falls back to sub
    let token = issuer.token(&without(issuer.claims("u-9", &["k8s-logs-access"]), "preferred_username"));
    assert_eq!(auth.authenticate(&token).await.unwrap().username, "u-9");
}

#[tokio::test]
async fn alg_none_and_empty_signatures_are_rejected() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let claims = b64_json(&issuer.claims("viewer", &["/k8s-logs-access"]));
    for alg in ["none", "None", "NONE"] {
        let header = b64_json(&json!({"alg": alg, "typ": "JWT", "kid": "key-a"}));
        assert_eq!(reason(&auth, &format!("{header}.{claims}.")).await, "malformed", "{alg}");
        assert_eq!(reason(&auth, &format!("{header}.{claims}.c2ln")).await, "algorithm", "{alg}");
    }
    // A real RS256 header with the signature stripped.
    let token = issuer.viewer_token();
    let stripped = &token[..token.rfind('.').unwrap() + 1];
    assert_eq!(reason(&auth, stripped).await, "malformed");
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_rejected() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let claims = issuer.claims("viewer", &["/k8s-logs-access"]);
    let hmac = TestKeyHmac(EncodingKey::from_secret(RSA_A_PUBLIC_PEM.as_bytes()));
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let header = json!({"alg": format!("{alg:?}"), "typ": "JWT", "kid": "key-a"});
        assert_eq!(reason(&auth, &hmac.sign(&header, &claims, alg)).await, "algorithm");
    }
    // Even if the operator (wrongly) allowlisted HS256, the key type decides.
    let mut config = issuer.config();
    config.algorithms = vec!["RS256".into(), "HS256".into()];
    let auth = issuer.authenticator_with(&config);
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": "key-a"});
    assert_eq!(reason(&auth, &hmac.sign(&header, &claims, Algorithm::HS256)).await, "algorithm");
}

struct TestKeyHmac(EncodingKey);
impl TestKeyHmac {
    fn sign(&self, header: &Value, claims: &Value, alg: Algorithm) -> String {
        let message = format!("{}.{}", b64_json(header), b64_json(claims));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.0, alg).unwrap();
        format!("{message}.{sig}")
    }
}

#[tokio::test]
async fn algorithms_outside_the_allowlist_or_not_fitting_the_key_are_rejected() {
    let mut issuer = TestIssuer::new();
    issuer.published.push(TestKey::ec_p256());
    let claims = issuer.claims("viewer", &["/k8s-logs-access"]);
    let auth = issuer.authenticator();
    // PS256 is RSA, but not allowlisted (default [RS256]).
    let ps = TestKey::a().sign(&json!({"alg": "PS256", "kid": "key-a"}), &claims, Algorithm::PS256);
    assert_eq!(reason(&auth, &ps).await, "algorithm");
    // ES256 with a valid EC key, not allowlisted.
    let ec = TestKey::ec_p256();
    let es = ec.sign(&json!({"alg": "ES256", "kid": "key-ec"}), &claims, Algorithm::ES256);
    assert_eq!(reason(&auth, &es).await, "algorithm");
    // Allowlisted now: accepted with its own key…
    let mut config = issuer.config();
    config.algorithms = vec!["RS256".into(), "ES256".into(), "PS256".into()];
    let auth = issuer.authenticator_with(&config);
    assert_eq!(reason(&auth, &es).await, "ok");
    // …but never under the kid of a key of another type,
    let es_on_rsa = ec.sign(&json!({"alg": "ES256", "kid": "key-a"}), &claims, Algorithm::ES256);
    assert_eq!(reason(&auth, &es_on_rsa).await, "algorithm");
    // and never with another alg than the one the JWK publishes (key-a says RS256).
    assert_eq!(reason(&auth, &ps).await, "algorithm");
    // Unknown algorithm names.
    for alg in ["RS1", "rs256", "EdDSA", "", "ES512"] {
        let header = b64_json(&json!({"alg": alg, "kid": "key-a"}));
        let token = format!("{header}.{}.c2ln", b64_json(&claims));
        assert_eq!(reason(&auth, &token).await, "algorithm", "{alg}");
    }
}

#[tokio::test]
async fn oct_keys_in_the_jwks_are_never_used() {
    let issuer = TestIssuer::new();
    let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0";
    let jwks = json!({"keys": [
        {"kty": "oct", "kid": "hmac", "k": secret, "alg": "HS256"},
        issuer.key.public_jwk(),
    ]});
    let mut config = issuer.config();
    config.algorithms = vec!["RS256".into(), "HS256".into()];
    let auth = Authenticator::from_static_jwks(&config, &jwks).unwrap();
    assert_eq!(auth.key_count(), 1);
    let hmac = TestKeyHmac(EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(secret).unwrap()));
    let claims = issuer.claims("v", &["k8s-logs-access"]);
    // HS* never makes it into the effective allowlist, whatever the config says…
    let token = hmac.sign(&json!({"alg": "HS256", "kid": "hmac"}), &claims, Algorithm::HS256);
    assert_eq!(reason(&auth, &token).await, "algorithm");
    // …and the oct key was dropped from the JWKS, so its kid is unknown for any algorithm.
    let token = issuer.key.sign(&json!({"alg": "RS256", "kid": "hmac"}), &claims, Algorithm::RS256);
    assert_eq!(reason(&auth, &token).await, "unknown_key");
    // A JWKS of only symmetric keys is no key source at all.
    let only_oct = json!({"keys": [{"kty": "oct", "kid": "hmac", "k": secret}]});
    assert!(matches!(Authenticator::from_static_jwks(&config, &only_oct), Err(KeySourceError::NoUsableKeys)));
}

#[tokio::test]
async fn jku_x5u_and_jwk_headers_are_ignored() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let attacker = TestKey::attacker("key-a");
    let claims = issuer.claims("viewer", &["/k8s-logs-access"]);
    // Signed by the attacker, pointing at the attacker's keys in every possible way.
    let header = json!({
        "alg": "RS256", "kid": "key-a",
        "jku": "http://127.0.0.1:1/attacker-jwks.json",
        "x5u": "http://127.0.0.1:1/attacker.pem",
        "jwk": attacker.public_jwk(),
    });
    assert_eq!(reason(&auth, &attacker.sign(&header, &claims, Algorithm::RS256)).await, "bad_signature");
    // The same headers on a genuine token change nothing either.
    assert_eq!(reason(&auth, &issuer.key.sign(&header, &claims, Algorithm::RS256)).await, "ok");
    // `crit` names extensions we would have to understand: refused.
    let crit = json!({"alg": "RS256", "kid": "key-a", "crit": ["exp"], "exp": 1});
    assert_eq!(reason(&auth, &issuer.key.sign(&crit, &claims, Algorithm::RS256)).await, "malformed");
}

#[tokio::test]
async fn missing_and_unknown_kids_are_rejected_without_a_key_source() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let claims = issuer.claims("viewer", &["/k8s-logs-access"]);
    let no_kid = issuer.key.sign(&json!({"alg": "RS256"}), &claims, Algorithm::RS256);
    assert_eq!(auth.authenticate(&no_kid).await, Err(AuthError::MissingKeyId));
    let empty_kid = issuer.key.sign(&json!({"alg": "RS256", "kid": ""}), &claims, Algorithm::RS256);
    assert_eq!(auth.authenticate(&empty_kid).await, Err(AuthError::MissingKeyId));
    let unknown = issuer.key.sign(&json!({"alg": "RS256", "kid": "nope"}), &claims, Algorithm::RS256);
    assert_eq!(auth.authenticate(&unknown).await, Err(AuthError::UnknownKey));
    assert_eq!(auth.jwks_fetch_count(), 0);
}

#[tokio::test]
async fn a_signature_by_another_key_or_over_other_claims_fails() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let token = issuer.viewer_token();
    let forged = TestKey::attacker("key-a").sign(&issuer.header(), &issuer.claims("viewer", &["/k8s-logs-access"]), Algorithm::RS256);
    assert_eq!(reason(&auth, &forged).await, "bad_signature");
    // Swap in admin claims under the viewer's signature.
    let parts: Vec<&str> = token.split('.').collect();
    let admin_claims = b64_json(&issuer.claims("admin", &["/k8s-admin-access", "/k8s-logs-access"]));
    assert_eq!(reason(&auth, &format!("{}.{admin_claims}.{}", parts[0], parts[2])).await, "bad_signature");
    // A corrupted signature.
    assert_eq!(reason(&auth, &corrupt_signature(&token)).await, "bad_signature");
}

#[tokio::test]
async fn time_claims_are_enforced_with_leeway() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator(); // leeway 30s
    let base = issuer.claims("viewer", &["/k8s-logs-access"]);
    let t = now();
    assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "exp", json!(t - 3600)))).await, "expired");
    assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "exp", json!(t - 10)))).await, "ok");
    assert_eq!(reason(&auth, &issuer.token(&without(base.clone(), "exp"))).await, "missing_claim");
    assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "exp", json!("tomorrow")))).await, "missing_claim");
    assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "exp", json!(null)))).await, "missing_claim");
    assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "nbf", json!(t + 3600)))).await, "not_yet_valid");
    assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "nbf", json!(t + 10)))).await, "ok");
    assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "nbf", json!("now")))).await, "missing_claim");
    assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "exp", json!((t + 60) as f64 + 0.5)))).await, "ok");
    let mut strict = issuer.config();
    strict.leeway = Duration::ZERO;
    let auth = issuer.authenticator_with(&strict);
    assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "exp", json!(t - 10)))).await, "expired");
}

#[tokio::test]
async fn the_issuer_must_match_exactly() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let base = issuer.claims("viewer", &["/k8s-logs-access"]);
    for iss in [
        json!("https://keycloak.test/realms/kubelens/"),
        json!("http://keycloak.test/realms/kubelens"),
        json!("https://keycloak.test/realms/other"),
        json!("https://keycloak.test/realms/kubelens-evil"),
        json!("https://KEYCLOAK.test/realms/kubelens"),
        json!(["https://keycloak.test/realms/kubelens"]),
        json!(null),
    ] {
        assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "iss", iss.clone()))).await, "issuer", "{iss}");
    }
    assert_eq!(reason(&auth, &issuer.token(&without(base, "iss"))).await, "issuer");
}

#[tokio::test]
async fn audience_or_azp_must_name_this_service() {
    let issuer = TestIssuer::new();
    let base = issuer.claims("viewer", &["/k8s-logs-access"]);
    let auth = issuer.authenticator(); // client kubelens, accept_azp, no trusted clients
    let other = with(base.clone(), "azp", json!("other-client"));
    // Default Keycloak shape: aud account, azp = client → accepted through azp.
    assert_eq!(reason(&auth, &issuer.token(&base)).await, "ok");
    // Only `account`, another client in azp → rejected.
    assert_eq!(reason(&auth, &issuer.token(&other)).await, "audience");
    assert_eq!(reason(&auth, &issuer.token(&without(other.clone(), "aud"))).await, "audience");
    assert_eq!(reason(&auth, &issuer.token(&with(other.clone(), "aud", json!(["account"])))).await, "audience");
    assert_eq!(reason(&auth, &issuer.token(&without(without(base.clone(), "azp"), "aud"))).await, "audience");
    // Audience-mapped: aud as a string or an array containing the client id.
    assert_eq!(reason(&auth, &issuer.token(&with(other.clone(), "aud", json!("kubelens")))).await, "ok");
    assert_eq!(reason(&auth, &issuer.token(&with(other.clone(), "aud", json!(["account", "kubelens"])))).await, "ok");
    assert_eq!(reason(&auth, &issuer.token(&with(other.clone(), "aud", json!(["kubelens-evil"])))).await, "audience");
    assert_eq!(reason(&auth, &issuer.token(&with(other.clone(), "aud", json!({"kubelens": true})))).await, "audience");
    // Trusted clients.
    let mut config = issuer.config();
    config.trusted_clients = vec!["other-client".into()];
    let trusting = issuer.authenticator_with(&config);
    assert_eq!(reason(&trusting, &issuer.token(&other)).await, "ok");
    // accept_azp off: only aud counts.
    config.accept_azp = false;
    let strict = issuer.authenticator_with(&config);
    assert_eq!(reason(&strict, &issuer.token(&base)).await, "audience");
    assert_eq!(reason(&strict, &issuer.token(&other)).await, "audience");
    assert_eq!(reason(&strict, &issuer.token(&with(other, "aud", json!(["kubelens"])))).await, "ok");
    // A configured audience replaces the client id in the aud check.
    let mut config = issuer.config();
    config.audience = Some("kubelens-api".into());
    config.accept_azp = false;
    let custom = issuer.authenticator_with(&config);
    assert_eq!(reason(&custom, &issuer.token(&with(base.clone(), "aud", json!("kubelens-api")))).await, "ok");
    assert_eq!(reason(&custom, &issuer.token(&with(base, "aud", json!("kubelens")))).await, "audience");
}

#[tokio::test]
async fn only_bearer_access_tokens_are_accepted() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let base = issuer.claims("viewer", &["/k8s-logs-access"]);
    for typ in [json!("ID"), json!("Refresh"), json!("Offline"), json!("bearer"), json!(""), json!(null)] {
        assert_eq!(reason(&auth, &issuer.token(&with(base.clone(), "typ", typ.clone()))).await, "token_type", "{typ}");
    }
    assert_eq!(reason(&auth, &issuer.token(&without(base.clone(), "typ"))).await, "token_type");
    assert_eq!(reason(&auth, &issuer.token(&without(base.clone(), "sub"))).await, "missing_claim");
    assert_eq!(reason(&auth, &issuer.token(&with(base, "sub", json!("")))).await, "missing_claim");
}

#[tokio::test]
async fn malformed_tokens_are_rejected_without_panicking() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let token = issuer.viewer_token();
    let parts: Vec<&str> = token.split('.').collect();
    let cases = [
        String::from("x"),
        String::from("."),
        String::from(".."),
        String::from("..."),
        format!("{}.{}", parts[0], parts[1]),
        format!("{token}.{}", parts[2]),
        format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]),
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}*", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("not json"), parts[1], parts[2]),
        format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("[1,2]"), parts[1], parts[2]),
        format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("{\"kid\":\"key-a\"}"), parts[1], parts[2]),
        String::from("Bearer x.y.z"),
        String::from("\u{0}.\u{0}.\u{0}"),
        String::from("é.é.é"),
    ];
    for case in &cases {
        assert_eq!(reason(&auth, case).await, "malformed", "{case}");
    }
    assert_eq!(reason(&auth, "").await, "missing");
    // A payload that is not JSON, correctly signed.
    let message = format!("{}.{}", parts[0], URL_SAFE_NO_PAD.encode("not json"));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_rsa_pem(super::testing::RSA_A_PRIVATE_PEM.as_bytes()).unwrap(),
        Algorithm::RS256,
    )
    .unwrap();
    assert_eq!(reason(&auth, &format!("{message}.{sig}")).await, "malformed");
}

#[tokio::test]
async fn oversized_tokens_are_rejected_before_parsing() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    assert_eq!(reason(&auth, &"a".repeat(100 * 1024)).await, "too_large");
    // A validly signed token with a 100 KB claim.
    let claims = with(issuer.claims("viewer", &["/k8s-logs-access"]), "pad", json!("x".repeat(100 * 1024)));
    assert_eq!(reason(&auth, &issuer.token(&claims)).await, "too_large");
    assert_eq!(reason(&auth, &"a".repeat(MAX_TOKEN_BYTES + 1)).await, "too_large");
}

#[tokio::test]
async fn group_claim_shapes_and_near_misses() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let base = issuer.claims("u", &[]);
    let cases: Vec<(Value, &str)> = vec![
        (json!(["/k8s-logs-access"]), "ok"),
        (json!(["k8s-logs-access"]), "ok"),
        (json!(["/k8s-logs-access-evil"]), "no_allowed_group"),
        (json!(["/x/k8s-logs-access"]), "no_allowed_group"),
        (json!(["/other/k8s-logs-access", "/k8s-logs-access-evil"]), "no_allowed_group"),
        (json!(["/K8S-LOGS-ACCESS"]), "no_allowed_group"),
        (json!(["K8s-Logs-Access"]), "no_allowed_group"),
        (json!("/k8s-logs-access"), "no_allowed_group"),
        (json!({"0": "/k8s-logs-access"}), "no_allowed_group"),
        (json!([["/k8s-logs-access"]]), "no_allowed_group"),
        (json!([1, null, true]), "no_allowed_group"),
        (json!(null), "no_allowed_group"),
        (json!(["default-roles-kubelens", "offline_access", "uma_authorization"]), "no_allowed_group"),
        (json!([1, "/k8s-logs-access"]), "ok"),
    ];
    for (groups, want) in cases {
        let token = issuer.token(&with(base.clone(), "groups", groups.clone()));
        assert_eq!(reason(&auth, &token).await, want, "{groups}");
    }
    assert_eq!(reason(&auth, &issuer.token(&without(base.clone(), "groups"))).await, "no_allowed_group");
    // Realm roles elsewhere in the token never grant access.
    let roles = with(
        without(base.clone(), "groups"),
        "realm_access",
        json!({"roles": ["k8s-logs-access", "/k8s-logs-access"]}),
    );
    assert_eq!(reason(&auth, &issuer.token(&roles)).await, "no_allowed_group");
    // With a full path configured, a plain-name role leaking into `groups` does not match.
    let mut config = issuer.config();
    config.allowed_groups = Some(vec!["/k8s-logs-access".into()]);
    let strict = issuer.authenticator_with(&config);
    assert_eq!(reason(&strict, &issuer.token(&with(base.clone(), "groups", json!(["k8s-logs-access"])))).await, "no_allowed_group");
    assert_eq!(reason(&strict, &issuer.token(&with(base.clone(), "groups", json!(["/k8s-logs-access"])))).await, "ok");
    // A configurable claim name.
    let mut config = issuer.config();
    config.groups_claim = "kubelens_groups".into();
    let custom = issuer.authenticator_with(&config);
    assert_eq!(reason(&custom, &issuer.token(&with(base.clone(), "groups", json!(["/k8s-logs-access"])))).await, "no_allowed_group");
    assert_eq!(reason(&custom, &issuer.token(&with(base, "kubelens_groups", json!(["/k8s-logs-access"])))).await, "ok");
}

#[tokio::test]
async fn admin_without_an_allowed_group_is_forbidden() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let err = auth.authenticate(&issuer.token_for("a", &["/k8s-admin-access"])).await.unwrap_err();
    assert_eq!(err, AuthError::NoAllowedGroup);
    assert_eq!(err.kind(), AuthFailureKind::Forbidden);
}

#[tokio::test]
async fn validated_outcomes_are_cached_until_exp() {
    let issuer = TestIssuer::new();
    let mut config = issuer.config();
    config.leeway = Duration::ZERO;
    let auth = issuer.authenticator_with(&config);
    let claims = with(issuer.claims("viewer", &["/k8s-logs-access"]), "exp", json!(now() + 60));
    let token = issuer.token(&claims);
    assert_eq!(reason(&auth, &token).await, "ok");
    assert_eq!(reason(&auth, &issuer.nogroup_token()).await, "no_allowed_group");
    // Failures without a valid signature are not cached.
    assert_eq!(reason(&auth, &corrupt_signature(&token)).await, "bad_signature");
    assert_eq!(auth.cached_outcomes(), 2);
    assert_eq!(reason(&auth, &token).await, "ok");
    assert_eq!(reason(&auth, &issuer.nogroup_token()).await, "no_allowed_group");
    // Past exp the cached outcome is not used.
    auth.advance_clock(Duration::from_secs(61));
    assert_eq!(reason(&auth, &token).await, "expired");
    // An already-expired token (within leeway elsewhere) is never cached.
    let auth = issuer.authenticator();
    let stale = issuer.token(&with(issuer.claims("v", &["/k8s-logs-access"]), "exp", json!(now() - 5)));
    assert_eq!(reason(&auth, &stale).await, "ok");
    assert_eq!(auth.cached_outcomes(), 0);
}

#[tokio::test]
async fn errors_never_echo_the_token_or_claims() {
    let issuer = TestIssuer::new();
    let auth = issuer.authenticator();
    let claims = with(issuer.claims("secret-user-42", &["/k8s-logs-access"]), "iss", json!("https://evil.example/realms/x"));
    let token = issuer.token(&claims);
    let err = auth.authenticate(&token).await.unwrap_err();
    let text = format!("{err} {err:?}");
    for needle in ["secret-user-42", "evil.example", &token[..20], "key-a"] {
        assert!(!text.contains(needle), "{needle} leaked in {text}");
    }
}

#[tokio::test]
async fn without_keys_nothing_is_accepted() {
    let issuer = TestIssuer::new();
    let auth = Authenticator::without_keys(&issuer.config());
    let err = auth.authenticate(&issuer.viewer_token()).await.unwrap_err();
    assert_eq!(err, AuthError::KeysUnavailable);
    assert_eq!(err.kind(), AuthFailureKind::Unavailable);
    let _ = AuthConfig::default();
}
