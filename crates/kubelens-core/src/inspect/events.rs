//! Recent Kubernetes events of a pod for the inspector, cached briefly.
//!
//! `GET …/details` needs the pod's events, which no watch cache holds. Listing them on every
//! request would let one user (a script, or a UI polling fast) spend the shared Kubernetes API
//! budget of every other user, so [`PodEventsReader`] keeps each pod's answer for
//! [`EVENTS_CACHE_TTL`] and coalesces concurrent misses into one list call: N requests for a
//! pod within the TTL cost one `list events`. The cache is bounded by the number of events it
//! holds ([`EVENTS_CACHE_MAX_EVENTS`]), and only the newest [`MAX_EVENTS`](super::MAX_EVENTS)
//! of a pod are kept (the inspector shows no more).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use moka::future::Cache;

/// How long one pod's events are served from memory. Events are advisory (Kubernetes itself
/// rate-limits and aggregates them), so a few seconds of staleness are invisible to a reader.
pub const EVENTS_CACHE_TTL: Duration = Duration::from_secs(5);

/// Upper bound of events held by the cache across all pods (each entry weighs its event
/// count + 1; at most `MAX_EVENTS` = 50 per pod, ~1–2 KiB each: a few MiB at most).
pub const EVENTS_CACHE_MAX_EVENTS: u64 = 10_000;

/// Events listed per miss (the newest `MAX_EVENTS` of them are kept).
pub const EVENT_LIST_LIMIT: u32 = 200;

/// Reads a pod's events through one cache shared by all users. Cheap to clone.
#[derive(Clone)]
pub struct PodEventsReader {
    client: kube::Client,
    cache: Cache<(String, String), Arc<Vec<Event>>>,
}

impl std::fmt::Debug for PodEventsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodEventsReader").field("entries", &self.cache.entry_count()).finish_non_exhaustive()
    }
}

impl PodEventsReader {
    /// A reader listing through `client` (the shared, rate-limited one).
    pub fn new(client: kube::Client) -> Self {
        Self::with_ttl(client, EVENTS_CACHE_TTL)
    }

    /// A reader whose entries live `ttl` (tests).
    pub fn with_ttl(client: kube::Client, ttl: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(EVENTS_CACHE_MAX_EVENTS)
            .weigher(|_key: &(String, String), events: &Arc<Vec<Event>>| u32::try_from(events.len()).unwrap_or(u32::MAX).saturating_add(1))
            .time_to_live(ttl)
            .build();
        Self { client, cache }
    }

    /// The newest events about the pod `uid` in `namespace`, newest first. A failed list is
    /// logged and answered with no events (not cached, so the next request tries again):
    /// the inspector is still useful without them.
    pub async fn events(&self, namespace: &str, uid: &str) -> Arc<Vec<Event>> {
        let key = (namespace.to_owned(), uid.to_owned());
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let params = ListParams::default().fields(&format!("involvedObject.uid={uid}")).limit(EVENT_LIST_LIMIT);
        // `try_get_with` runs one list for concurrent callers of the same key.
        let result = self
            .cache
            .try_get_with(key, async move {
                let list = api.list(&params).await?;
                let mut events = list.items;
                events.sort_by_key(|e| std::cmp::Reverse(super::event_time(e)));
                events.truncate(super::MAX_EVENTS);
                Ok::<_, kube::Error>(Arc::new(events))
            })
            .await;
        result.unwrap_or_else(|err| {
            tracing::warn!(error = %err, namespace, "cannot list pod events");
            Arc::new(Vec::new())
        })
    }
}
