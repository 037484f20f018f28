//! One-time stream tickets: how a browser `EventSource` (which cannot set headers) opens an
//! SSE stream without putting its long-lived access token in a URL.
//!
//! The client calls `POST /api/v1/stream-tickets` with its bearer token and gets an opaque
//! ticket: 256 random bits, base64url, valid for `auth.stream_ticket_ttl` (≈30 s) and
//! redeemable exactly once as `?ticket=` on an SSE route. The ticket is a lookup key, not a
//! self-contained credential: nothing about the user is in the URL (proxies log URLs), and
//! "exactly once" is a single atomic removal.
//!
//! Where the ticket lives:
//! - one replica (memory or sqlite storage): in this process's memory;
//! - several replicas (PostgreSQL or Redis storage, [`StreamTickets::with_shared_store`]): in
//!   the shared store under a digest of the ticket (`shared_grant`), so any replica redeems it,
//!   and the removal is atomic in the store (`DELETE … RETURNING`, `GETDEL`). When the store
//!   cannot be reached while issuing, the ticket is kept in memory instead and works on this
//!   replica only, so streaming survives a database outage.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;

use super::principal::Principal;
use super::shared_grant::{Grant, GrantKind, store_key, unix_now};
use crate::storage::{CredentialStore, StorageError};

/// Outstanding tickets kept at most in memory, and users tracked for the per-user cap.
/// Beyond this the least recently issued ones are dropped (their streams fail with 401 and
/// the client asks for a new ticket); the bound caps memory at roughly capacity × principal
/// size no matter how fast tickets are requested.
pub const TICKET_CAPACITY: u64 = 100_000;

/// Default of `auth.max_stream_tickets_per_user`.
pub const DEFAULT_TICKETS_PER_USER: usize = 32;

/// Length of an encoded ticket: 32 random bytes in unpadded base64url.
const TICKET_LEN: usize = 43;

#[derive(Debug)]
struct Entry {
    principal: Principal,
    expires: tokio::time::Instant,
}

/// Ticket ids a user was issued here within the last ttl, oldest first, with when (some may
/// already be redeemed: invalidating those is a no-op).
type Outstanding = Arc<Mutex<VecDeque<([u8; 32], tokio::time::Instant)>>>;

/// Issues and redeems one-time tickets. Cheap to clone (shared store).
///
/// Each user (`sub`) holds at most `per_user` outstanding tickets issued by this replica:
/// issuing one more invalidates that user's oldest, so one user asking in a loop only ever
/// replaces their own tickets and can never push other users' tickets out of the global LRU
/// (or fill the shared store: it holds at most replicas × `per_user` per user, each for ttl).
#[derive(Clone)]
pub struct StreamTickets {
    local: moka::sync::Cache<[u8; 32], Arc<Entry>>,
    /// Per-user ticket ids; an entry idles out one ttl after its user's last ticket, when all
    /// of them have expired anyway.
    by_user: moka::sync::Cache<String, Outstanding>,
    ttl: Duration,
    per_user: usize,
    shared: Option<Arc<dyn CredentialStore>>,
}

impl std::fmt::Debug for StreamTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTickets")
            .field("ttl", &self.ttl)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl StreamTickets {
    /// A store whose tickets live `ttl`, at most `per_user` outstanding per user (at least 1),
    /// kept in this process's memory.
    pub fn new(ttl: Duration, per_user: usize) -> Self {
        let local = moka::sync::Cache::builder()
            .max_capacity(TICKET_CAPACITY)
            // LRU admits every new ticket; the default TinyLFU could refuse to store a fresh
            // ticket when full, which would make issuing silently fail.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_live(ttl)
            .build();
        let by_user = moka::sync::Cache::builder().max_capacity(TICKET_CAPACITY).time_to_idle(ttl).build();
        Self { local, by_user, ttl, per_user: per_user.max(1), shared: None }
    }

    /// Keeps tickets in `store`, shared with the other replicas, so any of them redeems a
    /// ticket issued here.
    pub fn with_shared_store(mut self, store: Arc<dyn CredentialStore>) -> Self {
        self.shared = Some(store);
        self
    }

    /// How long a ticket stays redeemable.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh ticket for `principal`.
    pub async fn issue(&self, principal: &Principal) -> String {
        let mut id = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        let now = tokio::time::Instant::now();
        let evicted = {
            let outstanding = self.by_user.get_with_by_ref(principal.subject.as_str(), Outstanding::default);
            let mut ids = outstanding.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget ids that expired by now, then make room by invalidating the user's oldest.
            ids.retain(|(_, issued)| *issued + self.ttl > now);
            let excess = (ids.len() + 1).saturating_sub(self.per_user);
            let evicted: Vec<[u8; 32]> = ids.drain(..excess).map(|(old, _)| old).collect();
            ids.push_back((id, now));
            evicted
        };
        for old in &evicted {
            self.local.invalidate(old);
            if let Some(store) = &self.shared
                && let Err(err) = store.remove(&store_key(GrantKind::Ticket, old)).await
            {
                // It expires within ttl anyway.
                tracing::debug!(error = %err, "cannot invalidate a user's oldest ticket in the shared store");
            }
        }
        if let Some(store) = &self.shared {
            let grant = Grant { principal: principal.clone(), valid_until: valid_until(self.ttl) };
            let stored = match grant.encode() {
                Ok(value) => store.put(&store_key(GrantKind::Ticket, &id), &value, self.ttl).await,
                Err(err) => Err(err),
            };
            match stored {
                Ok(()) => return URL_SAFE_NO_PAD.encode(id),
                Err(err) => tracing::warn!(
                    error = %err,
                    "cannot store a stream ticket in the shared store; it is valid on this replica only"
                ),
            }
        }
        self.local.insert(id, Arc::new(Entry { principal: principal.clone(), expires: now + self.ttl }));
        URL_SAFE_NO_PAD.encode(id)
    }

    /// The principal the ticket was issued to, exactly once; `None` for unknown, malformed,
    /// expired or already redeemed tickets, and when the token behind it has expired since.
    /// Errors only when the shared store cannot be asked.
    pub async fn redeem(&self, ticket: &str) -> Result<Option<Principal>, StorageError> {
        let Some(id) = decode(ticket) else { return Ok(None) };
        // `remove` is atomic: of two concurrent redeemers only one gets the entry.
        if let Some(entry) = self.local.remove(&id) {
            let live = tokio::time::Instant::now() < entry.expires;
            return Ok(live.then(|| entry.principal.clone()).filter(token_still_valid));
        }
        let Some(store) = &self.shared else { return Ok(None) };
        let Some(value) = store.take(&store_key(GrantKind::Ticket, &id)).await? else { return Ok(None) };
        let grant = Grant::decode(&value)?;
        Ok((unix_now() < grant.valid_until).then_some(grant.principal).filter(token_still_valid))
    }
}

fn decode(ticket: &str) -> Option<[u8; 32]> {
    if ticket.len() != TICKET_LEN {
        return None;
    }
    URL_SAFE_NO_PAD.decode(ticket).ok()?.try_into().ok()
}

/// The token behind a ticket may expire before the ticket does.
fn token_still_valid(principal: &Principal) -> bool {
    principal.expires_at > unix_now()
}

/// Unix seconds at which a grant living `ttl` from now ends (rounded up: the store's own
/// expiry, in milliseconds, is the tight bound).
fn valid_until(ttl: Duration) -> i64 {
    let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    unix_now().saturating_add(secs).saturating_add(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            subject: "u-1".into(),
            username: "viewer".into(),
            groups: vec!["/k8s-logs-access".into()],
            is_admin: false,
            expires_at: i64::MAX / 2,
        }
    }

    #[tokio::test]
    async fn a_ticket_is_redeemable_exactly_once() {
        let tickets = StreamTickets::new(Duration::from_secs(30), DEFAULT_TICKETS_PER_USER);
        let ticket = tickets.issue(&principal()).await;
        assert_eq!(ticket.len(), TICKET_LEN);
        assert!(ticket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(tickets.redeem(&ticket).await.unwrap(), Some(principal()));
        assert_eq!(tickets.redeem(&ticket).await.unwrap(), None);
        let other = tickets.issue(&principal()).await;
        assert_ne!(ticket, other);
    }

    #[tokio::test]
    async fn concurrent_redeems_yield_one_principal() {
        let tickets = StreamTickets::new(Duration::from_secs(30), DEFAULT_TICKETS_PER_USER);
        let ticket = tickets.issue(&principal()).await;
        let mut handles = Vec::new();
        for _ in 0..16 {
            let (tickets, ticket) = (tickets.clone(), ticket.clone());
            handles.push(tokio::spawn(async move { tickets.redeem(&ticket).await.unwrap().is_some() }));
        }
        let mut wins = 0;
        for h in handles {
            wins += usize::from(h.await.unwrap());
        }
        assert_eq!(wins, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn tickets_expire() {
        let tickets = StreamTickets::new(Duration::from_secs(30), DEFAULT_TICKETS_PER_USER);
        let ticket = tickets.issue(&principal()).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(tickets.redeem(&ticket).await.unwrap(), None);
        let ticket = tickets.issue(&principal()).await;
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(tickets.redeem(&ticket).await.unwrap().is_some());
    }

    fn user(subject: &str) -> Principal {
        Principal { subject: subject.into(), username: subject.into(), ..principal() }
    }

    #[tokio::test]
    async fn a_ticket_yields_only_its_own_users_principal() {
        let tickets = StreamTickets::new(Duration::from_secs(30), DEFAULT_TICKETS_PER_USER);
        let (a, b) = (tickets.issue(&user("alice")).await, tickets.issue(&user("bob")).await);
        assert_eq!(tickets.redeem(&b).await.unwrap().map(|p| p.subject), Some("bob".to_owned()));
        assert_eq!(tickets.redeem(&a).await.unwrap().map(|p| p.subject), Some("alice".to_owned()));
    }

    /// One user asking for tickets in a loop must not evict other users' tickets from the
    /// global LRU; beyond the cap only their own oldest ones go.
    #[tokio::test]
    async fn one_user_cannot_evict_other_users_tickets() {
        let tickets = StreamTickets::new(Duration::from_secs(30), DEFAULT_TICKETS_PER_USER);
        let bobs = tickets.issue(&user("bob")).await;
        let mut mallory = Vec::new();
        for _ in 0..TICKET_CAPACITY + 1_000 {
            mallory.push(tickets.issue(&user("mallory")).await);
        }
        tickets.local.run_pending_tasks();
        assert!(tickets.local.entry_count() <= DEFAULT_TICKETS_PER_USER as u64 + 1, "{}", tickets.local.entry_count());
        assert_eq!(tickets.redeem(&bobs).await.unwrap().map(|p| p.subject), Some("bob".to_owned()));
        let (old, recent) = mallory.split_at(mallory.len() - DEFAULT_TICKETS_PER_USER);
        for t in old {
            assert!(tickets.redeem(t).await.unwrap().is_none(), "beyond the cap the oldest are invalid");
        }
        for t in recent {
            assert!(tickets.redeem(t).await.unwrap().is_some(), "the newest per-user tickets stay valid");
        }
    }

    #[tokio::test]
    async fn redeemed_tickets_free_their_slot() {
        let tickets = StreamTickets::new(Duration::from_secs(30), 2);
        for _ in 0..10 {
            let first = tickets.issue(&user("alice")).await;
            assert!(tickets.redeem(&first).await.unwrap().is_some());
        }
        let (a, b) = (tickets.issue(&user("alice")).await, tickets.issue(&user("alice")).await);
        assert!(tickets.redeem(&a).await.unwrap().is_some() && tickets.redeem(&b).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn garbage_and_expired_tokens_are_refused() {
        let tickets = StreamTickets::new(Duration::from_secs(30), DEFAULT_TICKETS_PER_USER);
        for bad in ["", "x", &"A".repeat(43), &"A".repeat(44), "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"] {
            assert_eq!(tickets.redeem(bad).await.unwrap(), None, "{bad}");
        }
        let mut expired = principal();
        expired.expires_at = 1;
        let ticket = tickets.issue(&expired).await;
        assert_eq!(tickets.redeem(&ticket).await.unwrap(), None);
    }

    fn replicas(n: usize) -> (Vec<StreamTickets>, crate::storage::memory::MemoryStore) {
        let store = crate::storage::memory::MemoryStore::new(crate::storage::StoreLimits::default());
        let shared: Arc<dyn CredentialStore> = Arc::new(store.clone());
        let replicas = (0..n)
            .map(|_| StreamTickets::new(Duration::from_secs(30), 2).with_shared_store(shared.clone()))
            .collect();
        (replicas, store)
    }

    #[tokio::test]
    async fn a_shared_ticket_is_redeemed_on_another_replica_exactly_once() {
        let (replicas, store) = replicas(3);
        let ticket = replicas[0].issue(&principal()).await;
        // Nothing of it is in the issuing replica's memory, and the store holds only a digest.
        assert_eq!(replicas[0].local.entry_count(), 0);
        let key = store_key(GrantKind::Ticket, &decode(&ticket).unwrap());
        assert!(CredentialStore::get(&store, &key).await.unwrap().is_some());
        assert!(!key.contains(&ticket));
        let mut handles = Vec::new();
        for replica in replicas.iter().cycle().take(12) {
            let (replica, ticket) = (replica.clone(), ticket.clone());
            handles.push(tokio::spawn(async move { replica.redeem(&ticket).await.unwrap() }));
        }
        let mut won = Vec::new();
        for h in handles {
            won.extend(h.await.unwrap());
        }
        assert_eq!(won, vec![principal()]);
    }

    #[tokio::test]
    async fn the_per_user_cap_also_holds_in_the_shared_store() {
        let (replicas, _store) = replicas(2);
        let mut issued = Vec::new();
        for _ in 0..5 {
            issued.push(replicas[0].issue(&principal()).await);
        }
        let mut valid = 0;
        for t in &issued {
            valid += usize::from(replicas[1].redeem(t).await.unwrap().is_some());
        }
        assert_eq!(valid, 2, "per_user is 2");
    }

    /// A store that is down.
    #[derive(Debug)]
    struct Down;

    impl CredentialStore for Down {
        fn put<'a>(&'a self, _: &'a str, _: &'a [u8], _: Duration) -> crate::storage::StoreFuture<'a, ()> {
            Box::pin(async { Err(StorageError::Unavailable("down".into())) })
        }
        fn get<'a>(&'a self, _: &'a str) -> crate::storage::StoreFuture<'a, Option<Vec<u8>>> {
            Box::pin(async { Err(StorageError::Unavailable("down".into())) })
        }
        fn take<'a>(&'a self, _: &'a str) -> crate::storage::StoreFuture<'a, Option<Vec<u8>>> {
            Box::pin(async { Err(StorageError::Unavailable("down".into())) })
        }
        fn remove<'a>(&'a self, _: &'a str) -> crate::storage::StoreFuture<'a, bool> {
            Box::pin(async { Err(StorageError::Unavailable("down".into())) })
        }
        fn purge_expired(&self) -> crate::storage::StoreFuture<'_, u64> {
            Box::pin(async { Err(StorageError::Unavailable("down".into())) })
        }
    }

    #[tokio::test]
    async fn with_the_store_down_tickets_work_on_the_issuing_replica() {
        let tickets = StreamTickets::new(Duration::from_secs(30), 2).with_shared_store(Arc::new(Down));
        let ticket = tickets.issue(&principal()).await;
        assert_eq!(tickets.redeem(&ticket).await.unwrap(), Some(principal()));
        // A ticket this replica does not hold must be asked of the store: that fails loudly
        // (503), not as an invalid ticket (401), so the client retries instead of giving up.
        assert!(matches!(tickets.redeem(&ticket).await, Err(StorageError::Unavailable(_))));
    }
}
