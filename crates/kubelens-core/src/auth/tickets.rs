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

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;

use super::principal::Principal;

/// Outstanding tickets kept at most. Beyond this the least recently issued ones are dropped
/// (their streams fail with 401 and the client asks for a new ticket); the bound caps memory
/// at roughly capacity × principal size no matter how fast tickets are requested.
pub const TICKET_CAPACITY: u64 = 100_000;

/// Length of an encoded ticket: 32 random bytes in unpadded base64url.
const TICKET_LEN: usize = 43;

#[derive(Debug)]
struct Entry {
    principal: Principal,
    expires: tokio::time::Instant,
}

/// Issues and redeems one-time tickets. Cheap to clone (shared store).
#[derive(Clone)]
pub struct StreamTickets {
    store: moka::sync::Cache<[u8; 32], Arc<Entry>>,
    ttl: Duration,
}

impl std::fmt::Debug for StreamTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTickets").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl StreamTickets {
    /// A store whose tickets live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        let store = moka::sync::Cache::builder()
            .max_capacity(TICKET_CAPACITY)
            // LRU admits every new ticket; the default TinyLFU could refuse to store a fresh
            // ticket when full, which would make issuing silently fail.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_live(ttl)
            .build();
        Self { store, ttl }
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
        self.store.insert(id, Arc::new(entry));
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
        let tickets = StreamTickets::new(Duration::from_secs(30));
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
        let tickets = StreamTickets::new(Duration::from_secs(30));
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
        let tickets = StreamTickets::new(Duration::from_secs(30));
        let ticket = tickets.issue(&principal());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(tickets.redeem(&ticket), None);
        let ticket = tickets.issue(&principal());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(tickets.redeem(&ticket).is_some());
    }

    #[tokio::test]
    async fn garbage_and_expired_tokens_are_refused() {
        let tickets = StreamTickets::new(Duration::from_secs(30));
        for bad in ["", "x", &"A".repeat(43), &"A".repeat(44), "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"] {
            assert_eq!(tickets.redeem(bad), None, "{bad}");
        }
        let mut expired = principal();
        expired.expires_at = 1;
        let ticket = tickets.issue(&expired);
        assert_eq!(tickets.redeem(&ticket), None);
    }
}
