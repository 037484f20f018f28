//! Reusable stream credentials: what lets a browser's *native* `EventSource` reconnect
//! (same URL, plus `Last-Event-ID`) resume a stream for as long as the user's token is valid.
//!
//! A one-time ticket (`tickets.rs`) is spent by the first request, so the browser's own
//! reconnect of the same URL gets a 401 and the stream is dead until script code notices.
//! A stream credential is instead an opaque 256-bit value the adapter puts into an
//! `HttpOnly; SameSite=Strict` cookie scoped to `/api/v1`: the browser sends it with every
//! reconnect by itself, script code cannot read it, and other sites' pages do not send it.
//!
//! It is bound to the principal of the bearer token that obtained it and valid exactly until
//! that token's `exp` (a stream opened with it still ends at `exp + auth.stream_token_grace`,
//! like one opened with the token itself). The console obtains a fresh one after every token
//! refresh, which replaces the previous one. Like tickets the value is a lookup key into this
//! replica's memory, not a self-contained token: several replicas need session affinity
//! (see `docs/auth.md`, which also has the threat analysis).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;

use super::principal::Principal;

/// Outstanding credentials kept at most (LRU beyond). Each holds one principal, so this caps
/// memory no matter how often credentials are requested; an evicted credential's next
/// reconnect gets a 401 and the console obtains a new one.
pub const STREAM_CREDENTIAL_CAPACITY: u64 = 100_000;

/// Longest lifetime of a credential whatever the token's `exp` says (Keycloak access tokens
/// live minutes; this only bounds a misconfigured realm).
pub const STREAM_CREDENTIAL_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Length of an encoded credential: 32 random bytes in unpadded base64url.
const CREDENTIAL_LEN: usize = 43;

#[derive(Debug)]
struct Entry {
    principal: Principal,
    /// Unix seconds after which the credential is refused (the token's `exp`).
    valid_until: i64,
    /// Monotonic lifetime handed to the cache's per-entry expiry.
    lifetime: Duration,
}

struct ExpireAtTokenExp;

impl moka::Expiry<[u8; 32], Arc<Entry>> for ExpireAtTokenExp {
    fn expire_after_create(&self, _key: &[u8; 32], value: &Arc<Entry>, _created_at: Instant) -> Option<Duration> {
        Some(value.lifetime)
    }
}

/// An issued credential: the cookie value and how long it stays valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedStreamCredential {
    /// Opaque value (43 base64url characters).
    pub value: String,
    /// Seconds until it expires (the token's `exp` minus now).
    pub expires_in: u64,
}

/// Issues, resolves and revokes stream credentials. Cheap to clone (shared store).
#[derive(Clone)]
pub struct StreamCredentials {
    store: moka::sync::Cache<[u8; 32], Arc<Entry>>,
}

impl std::fmt::Debug for StreamCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamCredentials").field("outstanding", &self.store.entry_count()).finish()
    }
}

impl Default for StreamCredentials {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn decode(value: &str) -> Option<[u8; 32]> {
    if value.len() != CREDENTIAL_LEN {
        return None;
    }
    URL_SAFE_NO_PAD.decode(value).ok()?.try_into().ok()
}

impl StreamCredentials {
    /// An empty store.
    pub fn new() -> Self {
        let store = moka::sync::Cache::builder()
            .max_capacity(STREAM_CREDENTIAL_CAPACITY)
            // LRU admits every new credential (TinyLFU could refuse a fresh one when full).
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .expire_after(ExpireAtTokenExp)
            .build();
        Self { store }
    }

    /// A fresh credential for `principal`, valid until its token's `exp`; `None` when that
    /// has already passed. `previous` (the credential the same browser presented, if any) is
    /// revoked when it belongs to the same subject, so refreshing does not pile up entries.
    pub fn issue(&self, principal: &Principal, previous: Option<&str>) -> Option<IssuedStreamCredential> {
        self.issue_at(principal, previous, unix_now())
    }

    fn issue_at(&self, principal: &Principal, previous: Option<&str>, now: i64) -> Option<IssuedStreamCredential> {
        if let Some(old) = previous.and_then(decode)
            && self.store.get(&old).is_some_and(|e| e.principal.subject == principal.subject)
        {
            self.store.invalidate(&old);
        }
        let remaining = u64::try_from(principal.expires_at.checked_sub(now)?).ok().filter(|s| *s > 0)?;
        let lifetime = Duration::from_secs(remaining).min(STREAM_CREDENTIAL_MAX_LIFETIME);
        let valid_until = now.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
        let mut id = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        self.store.insert(id, Arc::new(Entry { principal: principal.clone(), valid_until, lifetime }));
        Some(IssuedStreamCredential { value: URL_SAFE_NO_PAD.encode(id), expires_in: lifetime.as_secs() })
    }

    /// The principal the credential was issued to, as often as asked while it is valid;
    /// `None` for unknown, malformed, revoked or expired credentials.
    pub fn resolve(&self, value: &str) -> Option<Principal> {
        self.resolve_at(value, unix_now())
    }

    fn resolve_at(&self, value: &str, now: i64) -> Option<Principal> {
        let entry = self.store.get(&decode(value)?)?;
        (now < entry.valid_until).then(|| entry.principal.clone())
    }

    /// Forgets the credential (logout); unknown values are ignored.
    pub fn revoke(&self, value: &str) {
        if let Some(id) = decode(value) {
            self.store.invalidate(&id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn principal(subject: &str, expires_at: i64) -> Principal {
        Principal {
            subject: subject.into(),
            username: subject.into(),
            groups: vec!["/k8s-logs-access".into()],
            is_admin: false,
            expires_at,
        }
    }

    #[test]
    fn a_credential_resolves_repeatedly_until_the_token_expires() {
        let creds = StreamCredentials::new();
        let p = principal("u-1", NOW + 300);
        let issued = creds.issue_at(&p, None, NOW).unwrap();
        assert_eq!(issued.value.len(), CREDENTIAL_LEN);
        assert_eq!(issued.expires_in, 300);
        // Reusable: every native EventSource reconnect presents the same value.
        for t in [NOW, NOW + 1, NOW + 299] {
            assert_eq!(creds.resolve_at(&issued.value, t), Some(p.clone()));
        }
        assert_eq!(creds.resolve_at(&issued.value, NOW + 300), None);
    }

    #[test]
    fn an_expired_token_gets_no_credential() {
        let creds = StreamCredentials::new();
        assert!(creds.issue_at(&principal("u-1", NOW), None, NOW).is_none());
        assert!(creds.issue_at(&principal("u-1", NOW - 5), None, NOW).is_none());
    }

    #[test]
    fn reissuing_revokes_the_previous_credential_of_the_same_subject_only() {
        let creds = StreamCredentials::new();
        let first = creds.issue_at(&principal("u-1", NOW + 60), None, NOW).unwrap();
        let second = creds.issue_at(&principal("u-1", NOW + 600), Some(&first.value), NOW).unwrap();
        assert_eq!(creds.resolve_at(&first.value, NOW), None);
        assert_eq!(creds.resolve_at(&second.value, NOW).unwrap().expires_at, NOW + 600);
        // Someone else presenting u-1's value (e.g. a stolen cookie) cannot revoke it.
        let other = creds.issue_at(&principal("u-2", NOW + 60), Some(&second.value), NOW).unwrap();
        assert!(creds.resolve_at(&second.value, NOW).is_some());
        assert_eq!(creds.resolve_at(&other.value, NOW).unwrap().subject, "u-2");
    }

    #[test]
    fn revoked_malformed_and_unknown_values_resolve_to_nothing() {
        let creds = StreamCredentials::new();
        let issued = creds.issue_at(&principal("u-1", NOW + 60), None, NOW).unwrap();
        creds.revoke(&issued.value);
        assert_eq!(creds.resolve_at(&issued.value, NOW), None);
        for bad in ["", "x", &"A".repeat(43), &"*".repeat(43), &"A".repeat(44)] {
            assert_eq!(creds.resolve_at(bad, NOW), None, "{bad:?}");
        }
    }

    #[test]
    fn lifetime_is_capped() {
        let creds = StreamCredentials::new();
        let issued = creds.issue_at(&principal("u-1", i64::MAX), None, NOW).unwrap();
        assert_eq!(issued.expires_in, STREAM_CREDENTIAL_MAX_LIFETIME.as_secs());
    }
}
