//! Test support (feature `test-util`): a local token issuer with committed RSA/EC test keys,
//! and a stub OIDC/JWKS HTTP server on 127.0.0.1.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use kubelens_core::auth::testing::TestIssuer;
//! let issuer = TestIssuer::new();
//! let auth = issuer.authenticator();
//! let principal = auth.authenticate(&issuer.token_for("u-1", &["/k8s-logs-access"])).await.unwrap();
//! assert_eq!(principal.subject, "u-1");
//! # }
//! ```
//!
//! The PEM files under `crates/kubelens-core/testdata/` were generated with openssl for tests
//! only (see the README there); they protect nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::Authenticator;
use crate::config::AuthConfig;

/// Realm of every test issuer.
pub const REALM: &str = "kubelens";
/// Backend client id in [`TestIssuer::config`].
pub const CLIENT_ID: &str = "kubelens";
/// Allowed group in [`TestIssuer::config`].
pub const ALLOWED_GROUP: &str = "k8s-logs-access";
/// Admin group in [`TestIssuer::config`].
pub const ADMIN_GROUP: &str = "k8s-admin-access";

/// PEM of the test RSA key `key-a` (published by default).
pub const RSA_A_PRIVATE_PEM: &str = include_str!("../../testdata/rsa-a.key.pem");
/// Public half of `key-a` (used as the HMAC secret in the key-confusion attack test).
pub const RSA_A_PUBLIC_PEM: &str = include_str!("../../testdata/rsa-a.pub.pem");
/// PEM of the test RSA key `key-b` (not published until a test rotates it in).
pub const RSA_B_PRIVATE_PEM: &str = include_str!("../../testdata/rsa-b.key.pem");
/// PEM of an attacker's RSA key that is never published.
pub const RSA_ATTACKER_PRIVATE_PEM: &str = include_str!("../../testdata/rsa-attacker.key.pem");
/// PEM of the test P-256 key `key-ec`.
pub const EC_P256_PRIVATE_PEM: &str = include_str!("../../testdata/ec-p256.key.pem");

/// One signing key of the test issuer.
#[derive(Clone)]
pub struct TestKey {
    /// Its `kid`.
    pub kid: String,
    /// Its algorithm.
    pub alg: Algorithm,
    encoding: EncodingKey,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

impl TestKey {
    /// An RSA key from PEM (PKCS#8).
    pub fn rsa(kid: &str, pem: &str) -> Self {
        Self { kid: kid.to_owned(), alg: Algorithm::RS256, encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap() }
    }

    /// A P-256 key from PEM (PKCS#8), for ES256.
    pub fn ec(kid: &str, pem: &str) -> Self {
        Self { kid: kid.to_owned(), alg: Algorithm::ES256, encoding: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap() }
    }

    /// `key-a`, the default signing key.
    pub fn a() -> Self {
        Self::rsa("key-a", RSA_A_PRIVATE_PEM)
    }

    /// `key-b`, for rotation tests.
    pub fn b() -> Self {
        Self::rsa("key-b", RSA_B_PRIVATE_PEM)
    }

    /// A key the issuer never publishes, presented under the `kid` of a published key.
    pub fn attacker(kid: &str) -> Self {
        Self::rsa(kid, RSA_ATTACKER_PRIVATE_PEM)
    }

    /// `key-ec`.
    pub fn ec_p256() -> Self {
        Self::ec("key-ec", EC_P256_PRIVATE_PEM)
    }

    /// This key as a public JWK (`use: sig`, with `alg`).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        serde_json::to_value(jwk).unwrap()
    }

    /// Signs `header.claims` with this key and `alg` (which may differ from [`TestKey::alg`]
    /// to build mismatched tokens). `header` is used verbatim, so tests can add any field.
    pub fn sign(&self, header: &Value, claims: &Value, alg: Algorithm) -> String {
        let message = format!("{}.{}", b64_json(header), b64_json(claims));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, alg).unwrap();
        format!("{message}.{signature}")
    }
}

/// base64url (unpadded) of a JSON value.
pub fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// Now, in seconds since the epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Mints Keycloak-shaped access tokens for a realm whose keys it holds.
#[derive(Debug, Clone)]
pub struct TestIssuer {
    /// `{keycloak_url}`, e.g. `https://keycloak.test` or a stub server's URL.
    pub keycloak_url: String,
    /// The signing key (`key-a` unless changed).
    pub key: TestKey,
    /// Keys published in [`TestIssuer::jwks`].
    pub published: Vec<TestKey>,
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIssuer {
    /// Issuer `https://keycloak.test/realms/kubelens`, signing with `key-a`.
    pub fn new() -> Self {
        Self::at("https://keycloak.test")
    }

    /// The same for another Keycloak base URL (e.g. a [`StubOidc`] server).
    pub fn at(keycloak_url: &str) -> Self {
        let key = TestKey::a();
        Self { keycloak_url: keycloak_url.trim_end_matches('/').to_owned(), published: vec![key.clone()], key }
    }

    /// `{keycloak_url}/realms/kubelens`.
    pub fn issuer(&self) -> String {
        format!("{}/realms/{REALM}", self.keycloak_url)
    }

    /// An auth config that trusts this issuer: client `kubelens`, allowed group
    /// `k8s-logs-access`, admin group `k8s-admin-access`, defaults otherwise.
    pub fn config(&self) -> AuthConfig {
        AuthConfig {
            keycloak_url: self.keycloak_url.clone(),
            realm: REALM.to_owned(),
            client_id: CLIENT_ID.to_owned(),
            allowed_groups: Some(vec![ALLOWED_GROUP.to_owned()]),
            admin_group: ADMIN_GROUP.to_owned(),
            ..AuthConfig::default()
        }
    }

    /// The published keys as a JWKS document.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.published.iter().map(TestKey::public_jwk).collect::<Vec<_>>() })
    }

    /// An authenticator with [`TestIssuer::config`] and this issuer's keys, no network.
    pub fn authenticator(&self) -> Authenticator {
        self.authenticator_with(&self.config())
    }

    /// An authenticator with `config` and this issuer's keys, no network.
    pub fn authenticator_with(&self, config: &AuthConfig) -> Authenticator {
        Authenticator::from_static_jwks(config, &self.jwks()).unwrap()
    }

    /// Valid Keycloak-style access-token claims (default shape: `aud: account`,
    /// `azp: kubelens`), expiring in an hour. Edit the returned value to build bad tokens.
    pub fn claims(&self, sub: &str, groups: &[&str]) -> Value {
        let now = now();
        json!({
            "exp": now + 3600,
            "iat": now,
            "jti": format!("jti-{sub}-{now}"),
            "iss": self.issuer(),
            "aud": "account",
            "sub": sub,
            "typ": "Bearer",
            "azp": CLIENT_ID,
            "preferred_username": sub,
            "email": format!("{sub}@example.test"),
            "realm_access": { "roles": ["default-roles-kubelens", "offline_access"] },
            "groups": groups,
        })
    }

    /// The header Keycloak sends: `alg`, `typ: JWT`, `kid`.
    pub fn header(&self) -> Value {
        json!({ "alg": "RS256", "typ": "JWT", "kid": self.key.kid })
    }

    /// Signs `claims` with the issuer's key and header.
    pub fn token(&self, claims: &Value) -> String {
        self.key.sign(&self.header(), claims, self.key.alg)
    }

    /// A valid token for `sub` in `groups`.
    pub fn token_for(&self, sub: &str, groups: &[&str]) -> String {
        self.token(&self.claims(sub, groups))
    }

    /// A valid token of a user in the allowed group.
    pub fn viewer_token(&self) -> String {
        self.token_for("viewer", &["/k8s-logs-access"])
    }

    /// A valid token of a user in the allowed and the admin group.
    pub fn admin_token(&self) -> String {
        self.token_for("admin", &["/k8s-logs-access", "/k8s-admin-access"])
    }

    /// A valid token of a user in no group (→ 403).
    pub fn nogroup_token(&self) -> String {
        self.token_for("nogroup", &[])
    }
}

/// What a [`StubOidc`] endpoint answers.
#[derive(Debug, Clone, PartialEq)]
pub enum StubBehavior {
    /// The normal document.
    Ok,
    /// This HTTP status with an empty JSON object.
    Status(u16),
    /// A 200 with a body that is not JSON.
    BadJson,
    /// A 200 JWKS with no keys.
    NoKeys,
    /// Wait this long before answering normally.
    Slow(Duration),
    /// Close the connection without answering.
    Drop,
    /// A 200 with this exact body.
    Body(String),
    /// A `302 Found` to this `Location`.
    Redirect(String),
}

#[derive(Debug)]
struct StubState {
    discovery: StubBehavior,
    jwks_behavior: StubBehavior,
    jwks: Value,
    issuer_override: Option<String>,
    jwks_uri_override: Option<String>,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 serving `/realms/kubelens/.well-known/openid-configuration`
/// and `/realms/kubelens/protocol/openid-connect/certs`, counting requests. Stops on drop.
#[derive(Debug)]
pub struct StubOidc {
    /// `http://127.0.0.1:PORT` (the `keycloak_url`).
    pub url: String,
    state: Arc<Mutex<StubState>>,
    jwks_requests: Arc<AtomicU64>,
    discovery_requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StubOidc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StubOidc {
    /// Starts the server with `jwks` and both endpoints answering normally.
    pub async fn start(jwks: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(StubState {
            discovery: StubBehavior::Ok,
            jwks_behavior: StubBehavior::Ok,
            jwks,
            issuer_override: None,
            jwks_uri_override: None,
        }));
        let jwks_requests = Arc::new(AtomicU64::new(0));
        let discovery_requests = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(
            listener,
            url.clone(),
            state.clone(),
            jwks_requests.clone(),
            discovery_requests.clone(),
        ));
        Self { url, state, jwks_requests, discovery_requests, task }
    }

    /// Replaces the published JWKS (key rotation).
    pub fn set_jwks(&self, jwks: Value) {
        self.state.lock().unwrap().jwks = jwks;
    }

    /// Changes how the JWKS endpoint answers.
    pub fn set_jwks_behavior(&self, behavior: StubBehavior) {
        self.state.lock().unwrap().jwks_behavior = behavior;
    }

    /// Changes how the discovery endpoint answers.
    pub fn set_discovery_behavior(&self, behavior: StubBehavior) {
        self.state.lock().unwrap().discovery = behavior;
    }

    /// Makes discovery announce another `issuer` value.
    pub fn set_discovery_issuer(&self, issuer: &str) {
        self.state.lock().unwrap().issuer_override = Some(issuer.to_owned());
    }

    /// Makes discovery announce another `jwks_uri`.
    pub fn set_discovery_jwks_uri(&self, jwks_uri: &str) {
        self.state.lock().unwrap().jwks_uri_override = Some(jwks_uri.to_owned());
    }

    /// JWKS requests served so far.
    pub fn jwks_requests(&self) -> u64 {
        self.jwks_requests.load(Ordering::SeqCst)
    }

    /// Discovery requests served so far.
    pub fn discovery_requests(&self) -> u64 {
        self.discovery_requests.load(Ordering::SeqCst)
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    url: String,
    state: Arc<Mutex<StubState>>,
    jwks_requests: Arc<AtomicU64>,
    discovery_requests: Arc<AtomicU64>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let (url, state, jwks_requests, discovery_requests) =
            (url.clone(), state.clone(), jwks_requests.clone(), discovery_requests.clone());
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let discovery_path = format!("/realms/{REALM}/.well-known/openid-configuration");
            let jwks_path = format!("/realms/{REALM}/protocol/openid-connect/certs");
            let (behavior, normal) = {
                let state = state.lock().unwrap();
                if path == discovery_path {
                    discovery_requests.fetch_add(1, Ordering::SeqCst);
                    let issuer = state.issuer_override.clone().unwrap_or_else(|| format!("{url}/realms/{REALM}"));
                    let jwks_uri = state.jwks_uri_override.clone().unwrap_or_else(|| format!("{url}{jwks_path}"));
                    let doc = json!({ "issuer": issuer, "jwks_uri": jwks_uri });
                    (state.discovery.clone(), doc.to_string())
                } else if path == jwks_path {
                    jwks_requests.fetch_add(1, Ordering::SeqCst);
                    (state.jwks_behavior.clone(), state.jwks.to_string())
                } else {
                    (StubBehavior::Status(404), String::new())
                }
            };
            let mut location = String::new();
            let (status, body) = match behavior {
                StubBehavior::Ok => (200, normal),
                StubBehavior::Status(code) => (code, "{}".to_owned()),
                StubBehavior::BadJson => (200, "{\"keys\": [".to_owned()),
                StubBehavior::NoKeys => (200, "{\"keys\": []}".to_owned()),
                StubBehavior::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    (200, normal)
                }
                StubBehavior::Drop => return,
                StubBehavior::Body(body) => (200, body),
                StubBehavior::Redirect(to) => {
                    location = format!("Location: {to}\r\n");
                    (302, String::new())
                }
            };
            let response = format!(
                "HTTP/1.1 {status} X\r\n{location}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
