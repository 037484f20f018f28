//! One-time stream tickets: how a browser `EventSource` (which cannot set headers) opens an
//! SSE stream without putting its long-lived access token in a URL.
//!
//! The client calls `POST /api/v1/stream-tickets` with its bearer token and gets an opaque
//! ticket: 256 random bits, base64url, valid for `auth.stream_ticket_ttl` (≈30 s) and
//! redeemable exactly once as `?ticket=` on an SSE route. The ticket is a lookup key into
//! this replica's memory, not a self-contained credential: nothing about the user is in the
//! URL (proxies log URLs), and "exactly once" is a single atomic removal. The trade-off: a
//! ticket only works on the replica that issued it, so several replicas need session
//! affinity for the ticket request and the stream request (see `docs/auth.md`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;

use super::principal::Principal;

/// Outstanding tickets kept at most. Beyond this the least recently issued ones are dropped
/// (their streams fail with 401 and the client asks for a new ticket); the bound caps memory
/// at roughly capacity × principal size no matter how fast tickets are requested.
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

/// Ticket ids a user holds, oldest first (some may already be redeemed or expired).
type Outstanding = Arc<Mutex<VecDeque<[u8; 32]>>>;

/// Issues and redeems one-time tickets. Cheap to clone (shared store).
///
/// Each user (`sub`) holds at most `per_user` outstanding tickets: issuing one more
/// invalidates that user's oldest, so one user asking in a loop only ever replaces their own
/// tickets and can never push other users' tickets out of the global LRU.
#[derive(Clone)]
pub struct StreamTickets {
    store: moka::sync::Cache<[u8; 32], Arc<Entry>>,
    /// Per-user ticket ids; an entry idles out one ttl after its user's last ticket, when all
    /// of them have expired anyway.
    by_user: moka::sync::Cache<String, Outstanding>,
    ttl: Duration,
    per_user: usize,
}

impl std::fmt::Debug for StreamTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTickets").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl StreamTickets {
    /// A store whose tickets live `ttl`, at most `per_user` outstanding per user (at least 1).
    pub fn new(ttl: Duration, per_user: usize) -> Self {
        let store = moka::sync::Cache::builder()
            .max_capacity(TICKET_CAPACITY)
            // LRU admits every new ticket; the default TinyLFU could refuse to store a fresh
            // ticket when full, which would make issuing silently fail.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_live(ttl)
            .build();
        let by_user = moka::sync::Cache::builder().max_capacity(TICKET_CAPACITY).time_to_idle(ttl).build();
        Self { store, by_user, ttl, per_user: per_user.max(1) }
    }

    /// How long a ticket stays redeemable.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh ticket for `principal`.
    pub fn issue(&self, principal: &Principal) -> String {
        let mut id = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        let entry = Entry { principal: principal.clone(), expires: tokio::time::Instant::now() + self.ttl };
        let outstanding = self.by_user.get_with_by_ref(principal.subject.as_str(), Outstanding::default);
        {
            let mut ids = outstanding.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget redeemed and expired ids first, then make room by invalidating the
            // user's oldest live ticket.
            ids.retain(|old| self.store.contains_key(old));
            while ids.len() >= self.per_user {
                if let Some(oldest) = ids.pop_front() {
                    self.store.invalidate(&oldest);
                }
            }
            ids.push_back(id);
            self.store.insert(id, Arc::new(entry));
        }
        URL_SAFE_NO_PAD.encode(id)
    }

    /// The principal the ticket was issued to, exactly once; `None` for unknown, malformed,
    /// expired or already redeemed tickets, and when the token behind it has expired since.
    pub fn redeem(&self, ticket: &str) -> Option<Principal> {
        if ticket.len() != TICKET_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(ticket).ok()?;
        let id: [u8; 32] = bytes.try_into().ok()?;
        // `remove` is atomic: of two concurrent redeemers only one gets the entry.
        let entry = self.store.remove(&id)?;
        if tokio::time::Instant::now() >= entry.expires {
            return None;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if entry.principal.expires_at <= now {
            return None;
        }
        Some(entry.principal.clone())
    }
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
        let ticket = tickets.issue(&principal());
        assert_eq!(ticket.len(), TICKET_LEN);
        assert!(ticket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(tickets.redeem(&ticket), Some(principal()));
        assert_eq!(tickets.redeem(&ticket), None);
        let other = tickets.issue(&principal());
        assert_ne!(ticket, other);
    }

    #[tokio::test]
    async fn concurrent_redeems_yield_one_principal() {
        let tickets = StreamTickets::new(Duration::from_secs(30), DEFAULT_TICKETS_PER_USER);
        let ticket = tickets.issue(&principal());
        let mut handles = Vec::new();
        for _ in 0..16 {
            let (tickets, ticket) = (tickets.clone(), ticket.clone());
            handles.push(tokio::spawn(async move { tickets.redeem(&ticket).is_some() }));
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
        let ticket = tickets.issue(&principal());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(tickets.redeem(&ticket), None);
        let ticket = tickets.issue(&principal());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(tickets.redeem(&ticket).is_some());
    }

    fn user(subject: &str) -> Principal {
        Principal { subject: subject.into(), username: subject.into(), ..principal() }
    }

    #[tokio::test]
    async fn a_ticket_yields_only_its_own_users_principal() {
        let tickets = StreamTickets::new(Duration::from_secs(30), DEFAULT_TICKETS_PER_USER);
        let (a, b) = (tickets.issue(&user("alice")), tickets.issue(&user("bob")));
        assert_eq!(tickets.redeem(&b).map(|p| p.subject), Some("bob".to_owned()));
        assert_eq!(tickets.redeem(&a).map(|p| p.subject), Some("alice".to_owned()));
    }

    /// One user asking for tickets in a loop must not evict other users' tickets from the
    /// global LRU; beyond the cap only their own oldest ones go.
    #[tokio::test]
    async fn one_user_cannot_evict_other_users_tickets() {
        let tickets = StreamTickets::new(Duration::from_secs(30), DEFAULT_TICKETS_PER_USER);
        let bobs = tickets.issue(&user("bob"));
        let mut mallory = Vec::new();
        for _ in 0..TICKET_CAPACITY + 1_000 {
            mallory.push(tickets.issue(&user("mallory")));
        }
        tickets.store.run_pending_tasks();
        assert!(tickets.store.entry_count() <= DEFAULT_TICKETS_PER_USER as u64 + 1, "{}", tickets.store.entry_count());
        assert_eq!(tickets.redeem(&bobs).map(|p| p.subject), Some("bob".to_owned()));
        let (old, recent) = mallory.split_at(mallory.len() - DEFAULT_TICKETS_PER_USER);
        assert!(old.iter().all(|t| tickets.redeem(t).is_none()), "beyond the cap the oldest are invalid");
        assert!(recent.iter().all(|t| tickets.redeem(t).is_some()), "the newest per-user tickets stay valid");
    }

    #[tokio::test]
    async fn redeemed_tickets_free_their_slot() {
        let tickets = StreamTickets::new(Duration::from_secs(30), 2);
        for _ in 0..10 {
            let first = tickets.issue(&user("alice"));
            assert!(tickets.redeem(&first).is_some());
        }
        let (a, b) = (tickets.issue(&user("alice")), tickets.issue(&user("alice")));
        assert!(tickets.redeem(&a).is_some() && tickets.redeem(&b).is_some());
    }

    #[tokio::test]
    async fn garbage_and_expired_tokens_are_refused() {
        let tickets = StreamTickets::new(Duration::from_secs(30), DEFAULT_TICKETS_PER_USER);
        for bad in ["", "x", &"A".repeat(43), &"A".repeat(44), "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"] {
            assert_eq!(tickets.redeem(bad), None, "{bad}");
        }
        let mut expired = principal();
        expired.expires_at = 1;
        let ticket = tickets.issue(&expired);
        assert_eq!(tickets.redeem(&ticket), None);
    }
}
