//! The [`Authenticator`]: Keycloak access-token validation with cached keys and outcomes.

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::error::{AuthError, KeySourceError};
use super::groups::GroupPolicy;
use super::keys::{KeySet, VerifyKey};
use super::principal::Principal;
use super::source::OidcSource;
use crate::config::AuthConfig;
use crate::readiness::ReadinessCheck;

/// Tokens longer than this are rejected before any decoding (Keycloak access tokens with many
/// groups stay well below 8 KiB; headers beyond this are an attack or a misconfiguration).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Validated tokens remembered at most this many at once (LRU-ish eviction beyond it; a
/// dropped entry only costs one more signature check).
pub const VALIDATED_CACHE_CAPACITY: u64 = 10_000;

/// A validated token is remembered at most this long even when it expires later, which
/// bounds how long a token signed by a key Keycloak has since withdrawn keeps working.
pub const VALIDATED_CACHE_MAX_TTL: Duration = Duration::from_secs(300);

/// First retry delay of the background discovery loop; doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between two discovery attempts while Keycloak is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Validates Keycloak access tokens and applies the group policy. Cheap to clone.
///
/// Keys come from OIDC discovery (`{issuer}/.well-known/openid-configuration` → `jwks_uri`)
/// or, for tests and embedders, from a static JWKS. See `docs/auth.md` for the rules.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.inner.settings.issuer)
            .field("keys", &self.key_count())
            .finish_non_exhaustive()
    }
}

/// Validation settings derived once from [`AuthConfig`].
#[derive(Debug)]
struct Settings {
    issuer: String,
    audience: String,
    client_id: String,
    accept_azp: bool,
    trusted_clients: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: i64,
    groups_claim: String,
    policy: GroupPolicy,
    refetch_cooldown: Duration,
    refresh_interval: Duration,
}

impl Settings {
    fn from_config(config: &AuthConfig) -> Self {
        // Config validation already refuses symmetric names; filtering again here means a
        // hand-built AuthConfig can never enable HMAC either.
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|name| Algorithm::from_str(name).ok())
            .filter(|alg| alg.family() != AlgorithmFamily::Hmac)
            .collect();
        Self {
            issuer: config.issuer(),
            audience: config.effective_audience().to_owned(),
            client_id: config.client_id.clone(),
            accept_azp: config.accept_azp,
            trusted_clients: config.trusted_clients.clone(),
            algorithms,
            leeway: i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX),
            groups_claim: config.groups_claim.clone(),
            policy: GroupPolicy::new(config.effective_allowed_groups(), &config.admin_group),
            refetch_cooldown: config.jwks_refetch_cooldown,
            refresh_interval: config.jwks_refresh_interval,
        }
    }
}

/// A validated token: the principal and whether the group policy admits it.
#[derive(Debug, Clone)]
struct CachedOutcome {
    principal: Arc<Principal>,
    allowed: bool,
    ttl: Duration,
}

impl CachedOutcome {
    fn result(&self) -> Result<Principal, AuthError> {
        if self.allowed { Ok(Principal::clone(&self.principal)) } else { Err(AuthError::NoAllowedGroup) }
    }
}

struct OutcomeExpiry;

impl moka::Expiry<[u8; 32], CachedOutcome> for OutcomeExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &CachedOutcome,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

type SharedFetch = Shared<BoxFuture<'static, bool>>;

#[derive(Default)]
struct RefetchState {
    /// The fetch everybody currently waits for (single flight).
    in_flight: Option<SharedFetch>,
    /// Distinguishes fetches so a finished one only clears its own slot.
    generation: u64,
    /// Start of the last fetch caused by an unknown `kid` (the cooldown applies to these).
    last_on_demand: Option<tokio::time::Instant>,
}

struct Inner {
    settings: Settings,
    /// `None` until the first successful load. Swapped whole; never held across `.await`.
    keys: RwLock<Option<Arc<KeySet>>>,
    source: Option<OidcSource>,
    refetch: Mutex<RefetchState>,
    jwks_fetches: AtomicU64,
    cache: moka::sync::Cache<[u8; 32], CachedOutcome>,
    /// Seconds added to the system clock (tests only move it forward).
    clock_offset: AtomicI64,
}

/// Why a refresh attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    Loaded,
    Failed,
    CoolingDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A token named a `kid` we do not know: subject to the cooldown.
    UnknownKid,
    /// Startup discovery and the periodic refresh.
    Background,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Critical extensions: we implement none, so any `crit` header means "reject"
    /// (RFC 7515 §4.1.11). `jku`, `x5u`, `jwk` and `x5c` are not even read: keys only ever
    /// come from the configured issuer's JWKS.
    #[serde(default)]
    crit: Option<Value>,
}

impl Authenticator {
    /// An authenticator that loads keys from the issuer's OIDC discovery document. Makes no
    /// network call: call [`Authenticator::spawn_key_refresh`] (or [`Authenticator::load_keys`])
    /// to load keys. Until keys are loaded, tokens fail with [`AuthError::KeysUnavailable`]
    /// (after an on-demand fetch attempt).
    pub fn new(config: &AuthConfig) -> Result<Self, KeySourceError> {
        let source = OidcSource::new(config.issuer(), config.jwks_fetch_timeout)?;
        Ok(Self::build(config, Some(source), None))
    }

    /// An authenticator with a fixed JWKS and no network access (tests, embedders with
    /// pinned keys). Fails when the document is not JSON or holds no usable signing key.
    pub fn from_static_jwks(config: &AuthConfig, jwks: &Value) -> Result<Self, KeySourceError> {
        let body = serde_json::to_vec(jwks).map_err(|source| KeySourceError::Json { url: "static".to_owned(), source })?;
        let set = KeySet::parse(&body).map_err(|source| KeySourceError::Json { url: "static".to_owned(), source })?;
        if set.len() == 0 {
            return Err(KeySourceError::NoUsableKeys);
        }
        Ok(Self::build(config, None, Some(set)))
    }

    /// An authenticator that accepts nothing: every token fails with
    /// [`AuthError::KeysUnavailable`]. The placeholder until the real one is wired in.
    pub fn without_keys(config: &AuthConfig) -> Self {
        Self::build(config, None, None)
    }

    fn build(config: &AuthConfig, source: Option<OidcSource>, keys: Option<KeySet>) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(VALIDATED_CACHE_CAPACITY)
            .expire_after(OutcomeExpiry)
            .build();
        Self {
            inner: Arc::new(Inner {
                settings: Settings::from_config(config),
                keys: RwLock::new(keys.map(Arc::new)),
                source,
                refetch: Mutex::new(RefetchState::default()),
                jwks_fetches: AtomicU64::new(0),
                cache,
                clock_offset: AtomicI64::new(0),
            }),
        }
    }

    /// The issuer every token's `iss` must equal.
    pub fn issuer(&self) -> &str {
        &self.inner.settings.issuer
    }

    /// Number of usable signing keys currently cached.
    pub fn key_count(&self) -> usize {
        self.inner.current_keys().map_or(0, |k| k.len())
    }

    /// How many JWKS fetches were attempted so far (for tests and metrics).
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner.jwks_fetches.load(Ordering::Relaxed)
    }

    /// Fetches discovery (if not done yet) and the JWKS now, joining a fetch already in
    /// flight. Not subject to the unknown-`kid` cooldown.
    pub async fn load_keys(&self) -> bool {
        self.inner.refresh(Trigger::Background).await == Refresh::Loaded
    }

    /// Validates a bearer token and applies the group policy.
    ///
    /// Outcomes of tokens whose signature verified are cached by SHA-256 of the token until
    /// `exp` (at most [`VALIDATED_CACHE_MAX_TTL`]), so a busy client pays one signature check.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.inner.now();
        if let Some(hit) = self.inner.cache.get(&digest) {
            if hit.principal.expires_at > now {
                return hit.result();
            }
            // Expired while cached (the cache's own expiry is in wall time; this check keeps
            // the rule exact): validate afresh, which reports `expired` or accepts within leeway.
            self.inner.cache.invalidate(&digest);
        }
        let (principal, allowed) = self.inner.validate(token, now).await?;
        let remaining = u64::try_from(principal.expires_at.saturating_sub(now)).unwrap_or(0);
        let ttl = Duration::from_secs(remaining).min(VALIDATED_CACHE_MAX_TTL);
        let outcome = CachedOutcome { principal: Arc::new(principal), allowed, ttl };
        if !ttl.is_zero() {
            self.inner.cache.insert(digest, outcome.clone());
        }
        outcome.result()
    }

    /// Forgets every cached validation outcome, so the next request of each token is fully
    /// validated again (e.g. after withdrawing a compromised key from Keycloak).
    pub fn clear_cache(&self) {
        self.inner.cache.invalidate_all();
    }

    /// Starts the background task that loads discovery and keys (retrying with backoff while
    /// Keycloak is unreachable, reporting through `check`) and then refreshes the JWKS every
    /// `jwks_refresh_interval`. The task stops when the returned guard or every clone of this
    /// authenticator is dropped.
    ///
    /// `check` turns ready once keys were loaded and stays ready afterwards: cached keys keep
    /// validating tokens while Keycloak is down.
    pub fn spawn_key_refresh(&self, check: ReadinessCheck) -> KeyRefreshTask {
        if self.inner.source.is_none() {
            if self.key_count() > 0 {
                check.ready("static signing keys");
            } else {
                check.not_ready("no signing keys configured");
            }
            return KeyRefreshTask { handle: None };
        }
        check.not_ready("loading OIDC discovery and signing keys");
        let weak = Arc::downgrade(&self.inner);
        let handle = tokio::spawn(refresh_loop(weak, check));
        KeyRefreshTask { handle: Some(handle) }
    }

    /// Moves this authenticator's clock forward (expiry tests without sleeping).
    #[cfg(any(test, feature = "test-util"))]
    pub fn advance_clock(&self, by: Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        self.inner.clock_offset.fetch_add(secs, Ordering::Relaxed);
    }

    /// Number of validated outcomes currently cached (tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn cached_outcomes(&self) -> u64 {
        self.inner.cache.run_pending_tasks();
        self.inner.cache.entry_count()
    }
}

/// Owns the background key refresh; aborts it when dropped.
#[derive(Debug)]
pub struct KeyRefreshTask {
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for KeyRefreshTask {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

async fn refresh_loop(weak: Weak<Inner>, check: ReadinessCheck) {
    let mut backoff = INITIAL_BACKOFF;
    let mut attempts: u32 = 0;
    loop {
        let delay = {
            let Some(inner) = weak.upgrade() else { return };
            attempts = attempts.saturating_add(1);
            if inner.refresh(Trigger::Background).await == Refresh::Loaded {
                check.ready(&format!("{} signing keys loaded", inner.current_keys().map_or(0, |k| k.len())));
                backoff = INITIAL_BACKOFF;
                attempts = 0;
                inner.settings.refresh_interval
            } else {
                if inner.current_keys().is_none() {
                    check.not_ready(&format!("OIDC discovery/JWKS not loaded yet (attempt {attempts} failed; retrying)"));
                }
                let delay = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // While keys are cached, retry no faster than the regular interval would allow
                // to be useful, but soon enough to pick up rotations.
                delay.min(inner.settings.refresh_interval)
            }
            // `inner` dropped here: a sleeping task must not keep the authenticator alive.
        };
        tokio::time::sleep(delay).await;
    }
}

impl Inner {
    fn now(&self) -> i64 {
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        system.saturating_add(self.clock_offset.load(Ordering::Relaxed))
    }

    fn current_keys(&self) -> Option<Arc<KeySet>> {
        match self.keys.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn install_keys(&self, set: KeySet) {
        let set = Some(Arc::new(set));
        match self.keys.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    fn lock_refetch(&self) -> std::sync::MutexGuard<'_, RefetchState> {
        // The state is a few plain fields; a panic while holding the lock cannot leave it
        // inconsistent, so recovering from poison is safe.
        self.refetch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One JWKS fetch at a time: callers join the fetch in flight; unknown-`kid` triggers
    /// start at most one fetch per cooldown.
    async fn refresh(self: &Arc<Self>, trigger: Trigger) -> Refresh {
        if self.source.is_none() {
            return Refresh::Failed;
        }
        let fetch = {
            let mut state = self.lock_refetch();
            if let Some(fetch) = &state.in_flight {
                fetch.clone()
            } else {
                let now = tokio::time::Instant::now();
                if trigger == Trigger::UnknownKid {
                    if let Some(last) = state.last_on_demand
                        && now.saturating_duration_since(last) < self.settings.refetch_cooldown
                    {
                        return Refresh::CoolingDown;
                    }
                    state.last_on_demand = Some(now);
                }
                state.generation = state.generation.wrapping_add(1);
                let generation = state.generation;
                let inner = Arc::clone(self);
                // A spawned task finishes the fetch even when the requests waiting for it
                // are cancelled (client disconnects).
                let handle = tokio::spawn(async move {
                    let ok = inner.fetch_and_install().await;
                    let mut state = inner.lock_refetch();
                    if state.generation == generation {
                        state.in_flight = None;
                    }
                    ok
                });
                let fetch = async move { handle.await.unwrap_or(false) }.boxed().shared();
                state.in_flight = Some(fetch.clone());
                fetch
            }
        };
        if fetch.await { Refresh::Loaded } else { Refresh::Failed }
    }

    async fn fetch_and_install(&self) -> bool {
        let Some(source) = &self.source else { return false };
        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        match source.fetch_keys().await {
            Ok(set) => {
                tracing::debug!(keys = set.len(), "JWKS loaded");
                self.install_keys(set);
                true
            }
            Err(err) => {
                let cached = self.current_keys().is_some();
                tracing::warn!(error = %err, discovered = source.discovered(), keeping_cached_keys = cached, "loading signing keys failed");
                false
            }
        }
    }

    /// The key for `kid`, refetching the JWKS once (subject to the cooldown) when unknown.
    async fn key_for(self: &Arc<Self>, kid: &str) -> Result<Arc<VerifyKey>, AuthError> {
        let mut refetched = false;
        loop {
            let keys = self.current_keys();
            if let Some(key) = keys.as_ref().and_then(|k| k.keys.get(kid)) {
                return Ok(Arc::clone(key));
            }
            let miss = if keys.is_none() { AuthError::KeysUnavailable } else { AuthError::UnknownKey };
            if refetched {
                return Err(miss);
            }
            match self.refresh(Trigger::UnknownKid).await {
                Refresh::Loaded => refetched = true,
                Refresh::Failed | Refresh::CoolingDown => {
                    // Another fetch may have installed keys meanwhile.
                    let keys = self.current_keys();
                    return match keys.as_ref().and_then(|k| k.keys.get(kid)) {
                        Some(key) => Ok(Arc::clone(key)),
                        None if keys.is_none() => Err(AuthError::KeysUnavailable),
                        None => Err(AuthError::UnknownKey),
                    };
                }
            }
        }
    }

    async fn validate(self: &Arc<Self>, token: &str, now: i64) -> Result<(Principal, bool), AuthError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
            // An empty signature is what `alg: none` tokens carry.
            return Err(AuthError::Malformed);
        }
        let header: RawHeader = decode_segment(header_b64)?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        let alg = Algorithm::from_str(&header.alg).map_err(|_| AuthError::Algorithm)?;
        if !self.settings.algorithms.contains(&alg) {
            return Err(AuthError::Algorithm);
        }
        let kid = header.kid.filter(|k| !k.is_empty()).ok_or(AuthError::MissingKeyId)?;
        let key = self.key_for(&kid).await?;
        if !key.accepts(alg) {
            return Err(AuthError::Algorithm);
        }
        let message_len = header_b64.len() + 1 + payload_b64.len();
        let message = token.get(..message_len).ok_or(AuthError::Malformed)?;
        match jsonwebtoken::crypto::verify(signature_b64, message.as_bytes(), &key.key, alg) {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::BadSignature),
            Err(_) => return Err(AuthError::Malformed),
        }
        let claims: Map<String, Value> = decode_segment(payload_b64)?;
        self.check_claims(&claims, now)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: i64) -> Result<(Principal, bool), AuthError> {
        let s = &self.settings;
        let exp = claims.get("exp").and_then(numeric_date).ok_or(AuthError::MissingClaim("exp"))?;
        if now > exp.saturating_add(s.leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(nbf).ok_or(AuthError::MissingClaim("nbf"))?;
            if nbf > now.saturating_add(s.leeway) {
                return Err(AuthError::NotYetValid);
            }
        }
        if claims.get("iss").and_then(Value::as_str) != Some(s.issuer.as_str()) {
            return Err(AuthError::Issuer);
        }
        if claims.get("typ").and_then(Value::as_str) != Some("Bearer") {
            return Err(AuthError::TokenType);
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == s.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(s.audience.as_str())),
            _ => false,
        };
        let azp_ok = s.accept_azp
            && claims
                .get("azp")
                .and_then(Value::as_str)
                .is_some_and(|azp| azp == s.client_id || s.trusted_clients.iter().any(|c| c == azp));
        if !(aud_ok || azp_ok) {
            return Err(AuthError::Audience);
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|sub| !sub.is_empty())
            .ok_or(AuthError::MissingClaim("sub"))?
            .to_owned();
        let username = claims
            .get("preferred_username")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map_or_else(|| subject.clone(), str::to_owned);
        // Only an array of strings counts; a single string or any other shape means "no
        // groups" rather than being split or coerced.
        let groups: Vec<String> = match claims.get(&s.groups_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let allowed = s.policy.is_allowed(&groups);
        let is_admin = s.policy.is_admin(&groups);
        Ok((Principal { subject, username, groups, is_admin, expires_at: exp }, allowed))
    }
}

fn decode_segment<T: DeserializeOwned>(segment: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// A JWT NumericDate: integer seconds (fractions are allowed by RFC 7519 and truncated).
fn numeric_date(value: &Value) -> Option<i64> {
    match value.as_i64() {
        Some(secs) => Some(secs),
        None => value.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15).map(|f| f.floor() as i64),
    }
}
