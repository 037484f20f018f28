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
//! refresh, which replaces the previous one. Like tickets the value is a lookup key, not a
//! self-contained token: in this replica's memory, or — with several replicas on PostgreSQL
//! or Redis ([`StreamCredentials::with_shared_store`]) — in the shared store under its digest,
//! so every replica resolves it (see `docs/auth.md`, which also has the threat analysis).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;

use super::principal::Principal;
use super::shared_grant::{Grant, GrantKind, store_key, unix_now};
use crate::storage::{CredentialStore, StorageError};

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
    shared: Option<Arc<dyn CredentialStore>>,
}

impl std::fmt::Debug for StreamCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamCredentials")
            .field("outstanding", &self.store.entry_count())
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl Default for StreamCredentials {
    fn default() -> Self {
        Self::new()
    }
}

fn decode(value: &str) -> Option<[u8; 32]> {
    if value.len() != CREDENTIAL_LEN {
        return None;
    }
    URL_SAFE_NO_PAD.decode(value).ok()?.try_into().ok()
}

impl StreamCredentials {
    /// An empty store in this process's memory.
    pub fn new() -> Self {
        let store = moka::sync::Cache::builder()
            .max_capacity(STREAM_CREDENTIAL_CAPACITY)
            // LRU admits every new credential (TinyLFU could refuse a fresh one when full).
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .expire_after(ExpireAtTokenExp)
            .build();
        Self { store, shared: None }
    }

    /// Keeps credentials in `store`, shared with the other replicas, so a browser's reconnect
    /// that reaches another replica still resolves. When the store cannot be reached while
    /// issuing, the credential is kept in memory and works on this replica only.
    pub fn with_shared_store(mut self, store: Arc<dyn CredentialStore>) -> Self {
        self.shared = Some(store);
        self
    }

    /// A fresh credential for `principal`, valid until its token's `exp`; `None` when that
    /// has already passed. `previous` (the credential the same browser presented, if any) is
    /// revoked when it belongs to the same subject, so refreshing does not pile up entries.
    pub async fn issue(&self, principal: &Principal, previous: Option<&str>) -> Option<IssuedStreamCredential> {
        self.issue_at(principal, previous, unix_now()).await
    }

    async fn issue_at(&self, principal: &Principal, previous: Option<&str>, now: i64) -> Option<IssuedStreamCredential> {
        if let Some(old) = previous.and_then(decode)
            && self.resolve_id(&old, now).await.ok().flatten().is_some_and(|p| p.subject == principal.subject)
        {
            self.revoke_id(&old).await;
        }
        let remaining = u64::try_from(principal.expires_at.checked_sub(now)?).ok().filter(|s| *s > 0)?;
        let lifetime = Duration::from_secs(remaining).min(STREAM_CREDENTIAL_MAX_LIFETIME);
        let valid_until = now.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
        let mut id = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        let issued = IssuedStreamCredential { value: URL_SAFE_NO_PAD.encode(id), expires_in: lifetime.as_secs() };
        if let Some(shared) = &self.shared {
            let grant = Grant { principal: principal.clone(), valid_until };
            let stored = match grant.encode() {
                Ok(value) => shared.put(&store_key(GrantKind::StreamCredential, &id), &value, lifetime).await,
                Err(err) => Err(err),
            };
            match stored {
                Ok(()) => return Some(issued),
                Err(err) => tracing::warn!(
                    error = %err,
                    "cannot store a stream credential in the shared store; it is valid on this replica only"
                ),
            }
        }
        self.store.insert(id, Arc::new(Entry { principal: principal.clone(), valid_until, lifetime }));
        Some(issued)
    }

    /// The principal the credential was issued to, as often as asked while it is valid;
    /// `None` for unknown, malformed, revoked or expired credentials. Errors only when the
    /// shared store cannot be asked.
    pub async fn resolve(&self, value: &str) -> Result<Option<Principal>, StorageError> {
        self.resolve_at(value, unix_now()).await
    }

    async fn resolve_at(&self, value: &str, now: i64) -> Result<Option<Principal>, StorageError> {
        match decode(value) {
            Some(id) => self.resolve_id(&id, now).await,
            None => Ok(None),
        }
    }

    async fn resolve_id(&self, id: &[u8; 32], now: i64) -> Result<Option<Principal>, StorageError> {
        if let Some(entry) = self.store.get(id) {
            return Ok((now < entry.valid_until).then(|| entry.principal.clone()));
        }
        let Some(shared) = &self.shared else { return Ok(None) };
        let Some(value) = shared.get(&store_key(GrantKind::StreamCredential, id)).await? else { return Ok(None) };
        let grant = Grant::decode(&value)?;
        Ok((now < grant.valid_until).then_some(grant.principal))
    }

    /// Forgets the credential (logout); unknown values are ignored.
    pub async fn revoke(&self, value: &str) {
        if let Some(id) = decode(value) {
            self.revoke_id(&id).await;
        }
    }

    async fn revoke_id(&self, id: &[u8; 32]) {
        self.store.invalidate(id);
        if let Some(shared) = &self.shared
            && let Err(err) = shared.remove(&store_key(GrantKind::StreamCredential, id)).await
        {
            // It still ends at its token's `exp`.
            tracing::warn!(error = %err, "cannot revoke a stream credential in the shared store");
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

    #[tokio::test]
    async fn a_credential_resolves_repeatedly_until_the_token_expires() {
        let creds = StreamCredentials::new();
        let p = principal("u-1", NOW + 300);
        let issued = creds.issue_at(&p, None, NOW).await.unwrap();
        assert_eq!(issued.value.len(), CREDENTIAL_LEN);
        assert_eq!(issued.expires_in, 300);
        // Reusable: every native EventSource reconnect presents the same value.
        for t in [NOW, NOW + 1, NOW + 299] {
            assert_eq!(creds.resolve_at(&issued.value, t).await.unwrap(), Some(p.clone()));
        }
        assert_eq!(creds.resolve_at(&issued.value, NOW + 300).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_expired_token_gets_no_credential() {
        let creds = StreamCredentials::new();
        assert!(creds.issue_at(&principal("u-1", NOW), None, NOW).await.is_none());
        assert!(creds.issue_at(&principal("u-1", NOW - 5), None, NOW).await.is_none());
    }

    #[tokio::test]
    async fn reissuing_revokes_the_previous_credential_of_the_same_subject_only() {
        let creds = StreamCredentials::new();
        let first = creds.issue_at(&principal("u-1", NOW + 60), None, NOW).await.unwrap();
        let second = creds.issue_at(&principal("u-1", NOW + 600), Some(&first.value), NOW).await.unwrap();
        assert_eq!(creds.resolve_at(&first.value, NOW).await.unwrap(), None);
        assert_eq!(creds.resolve_at(&second.value, NOW).await.unwrap().unwrap().expires_at, NOW + 600);
        // Someone else presenting u-1's value (e.g. a stolen cookie) cannot revoke it.
        let other = creds.issue_at(&principal("u-2", NOW + 60), Some(&second.value), NOW).await.unwrap();
        assert!(creds.resolve_at(&second.value, NOW).await.unwrap().is_some());
        assert_eq!(creds.resolve_at(&other.value, NOW).await.unwrap().unwrap().subject, "u-2");
    }

    #[tokio::test]
    async fn revoked_malformed_and_unknown_values_resolve_to_nothing() {
        let creds = StreamCredentials::new();
        let issued = creds.issue_at(&principal("u-1", NOW + 60), None, NOW).await.unwrap();
        creds.revoke(&issued.value).await;
        assert_eq!(creds.resolve_at(&issued.value, NOW).await.unwrap(), None);
        for bad in ["", "x", &"A".repeat(43), &"*".repeat(43), &"A".repeat(44)] {
            assert_eq!(creds.resolve_at(bad, NOW).await.unwrap(), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn lifetime_is_capped() {
        let creds = StreamCredentials::new();
        let issued = creds.issue_at(&principal("u-1", i64::MAX), None, NOW).await.unwrap();
        assert_eq!(issued.expires_in, STREAM_CREDENTIAL_MAX_LIFETIME.as_secs());
    }

    #[tokio::test]
    async fn a_shared_credential_resolves_on_every_replica_until_revoked_on_any() {
        let store: Arc<dyn CredentialStore> =
            Arc::new(crate::storage::memory::MemoryStore::new(crate::storage::StoreLimits::default()));
        let a = StreamCredentials::new().with_shared_store(store.clone());
        let b = StreamCredentials::new().with_shared_store(store.clone());
        let p = principal("u-1", NOW + 300);
        let issued = a.issue_at(&p, None, NOW).await.unwrap();
        assert_eq!(a.store.entry_count(), 0, "kept in the shared store, not in memory");
        for _ in 0..3 {
            assert_eq!(b.resolve_at(&issued.value, NOW + 10).await.unwrap(), Some(p.clone()));
        }
        assert_eq!(b.resolve_at(&issued.value, NOW + 300).await.unwrap(), None, "ends at the token's exp");
        // Refreshing on B replaces the credential issued by A.
        let renewed = b.issue_at(&p, Some(&issued.value), NOW).await.unwrap();
        assert_eq!(a.resolve_at(&issued.value, NOW).await.unwrap(), None);
        assert!(a.resolve_at(&renewed.value, NOW).await.unwrap().is_some());
        a.revoke(&renewed.value).await;
        assert_eq!(b.resolve_at(&renewed.value, NOW).await.unwrap(), None);
    }
}
