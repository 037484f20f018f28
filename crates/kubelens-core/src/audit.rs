//! The audit trail: one structured event per access decision that matters, written through
//! `tracing` with target [`TARGET`] (so with `KUBELENS_LOG_FORMAT=json` each is one JSON line on
//! stderr, next to the operational log, and `KUBELENS_LOG=kubelens::audit=info` keeps only
//! them). The schema is stable and documented in `docs/audit.md`:
//!
//! | `audit` | when | fields |
//! |---|---|---|
//! | `logs_opened` | a log stream, read, download or search starts sending | `user`, `subject`, `namespace`, `resource` (`pod`/`app`), `name`, `mode`, `query` |
//! | `logs_closed` | it ends (finished, client gone, shutdown) | the same, plus `lines`, `bytes`, `duration_ms` |
//! | `logs_refused` | a log request is answered with an error | `user`, `subject`, `namespace`, `resource`, `name`, `mode`, `status` |
//! | `details_viewed` | a pod's details were served | `user`, `subject`, `namespace`, `name`, `masked` |
//! | `session_changed` | the saved console session was written or deleted | `user`, `subject`, `change` |
//! | `denied` | the group policy (403) or the cluster's RBAC (404) refused a request | `reason`, `path`, and `user`/`subject`/`namespace` when known |
//!
//! Never the token, a ticket or log content: `query` is the request's query string without
//! `ticket` (and at most [`MAX_QUERY_BYTES`] of it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::storage::AuditStore;

/// The `tracing` target of every audit event.
pub const TARGET: &str = "kubelens::audit";

/// Longest `query` recorded; a longer one is cut on a character boundary and ends in `…`.
pub const MAX_QUERY_BYTES: usize = 1024;

/// Every value of [`AuditEvent::audit`] (the `event` filter of `GET /api/v1/audit`).
pub const EVENT_KINDS: &[&str] = &["logs_opened", "logs_closed", "logs_refused", "details_viewed", "session_changed", "denied"];

/// Longest `path` recorded (then cut like `query`).
pub const MAX_PATH_BYTES: usize = 512;

/// One audit event, as the process log writes it and the store keeps it. Fields that do not
/// apply to an event are absent (not `null`) in both. The schema is stable: `docs/audit.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened (milliseconds since the Unix epoch).
    pub time_ms: i64,
    /// Which event: `logs_opened`, `logs_closed`, `logs_refused`, `details_viewed`,
    /// `session_changed`, `denied`.
    pub audit: String,
    /// The caller's username (`preferred_username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The caller's `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `pod` or `app` (log events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The pod's or app's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `stream`, `read`, `download` or `search` (log events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The query string without credentials (log events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The HTTP status of a refusal (`logs_refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Log lines sent (`logs_closed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u64>,
    /// Bytes handed to the connection (`logs_closed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// How long the answer streamed (`logs_closed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Whether secret material was masked (`details_viewed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked: Option<bool>,
    /// `saved` or `deleted` (`session_changed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// Why a request was refused (`denied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The refused request's path (`denied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl AuditEvent {
    /// An event named `audit`, now, with no other field.
    pub fn new(audit: &str) -> Self {
        Self {
            time_ms: crate::storage::now_ms(),
            audit: audit.to_owned(),
            user: None,
            subject: None,
            namespace: None,
            resource: None,
            name: None,
            mode: None,
            query: None,
            status: None,
            lines: None,
            bytes: None,
            duration_ms: None,
            masked: None,
            change: None,
            reason: None,
            path: None,
        }
    }

    fn by(mut self, principal: &Principal) -> Self {
        self.user = Some(principal.username.clone());
        self.subject = Some(principal.subject.clone());
        self
    }

    fn for_access(audit: &str, a: &LogAccess) -> Self {
        let mut event = Self::new(audit);
        event.user = Some(a.user.clone());
        event.subject = Some(a.subject.clone());
        event.namespace = Some(a.namespace.clone());
        event.resource = Some(a.resource.to_owned());
        event.name = Some(a.name.clone());
        event.mode = Some(a.mode.to_owned());
        event.query = Some(a.query.clone());
        event
    }

    /// Writes the event to the process log (one JSON line with `KUBELENS_LOG_FORMAT=json`).
    fn emit(&self) {
        tracing::info!(target: TARGET, audit = self.audit.as_str(), user = self.user.as_deref(),
            subject = self.subject.as_deref(), namespace = self.namespace.as_deref(),
            resource = self.resource.as_deref(), name = self.name.as_deref(), mode = self.mode.as_deref(),
            query = self.query.as_deref(), status = self.status, lines = self.lines, bytes = self.bytes,
            duration_ms = self.duration_ms, masked = self.masked, change = self.change.as_deref(),
            reason = self.reason.as_deref(), path = self.path.as_deref(), "audit");
    }
}

/// Where audit events go: always the process log, and with `audit.store` also a bounded
/// queue that [`AuditWriter`] drains into the store. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AuditTrail {
    queue: Option<tokio::sync::mpsc::Sender<AuditEvent>>,
    dropped: Arc<AtomicU64>,
}

impl AuditTrail {
    /// Events go to the process log only.
    pub fn log_only() -> Self {
        Self::default()
    }

    /// Events also go to `store`, through a queue of at most `queue_max_events`; the returned
    /// writer must be spawned (it ends when every clone of the trail is dropped).
    pub fn with_store(store: Arc<dyn AuditStore>, queue_max_events: usize, retention: Duration) -> (Self, AuditWriter) {
        let (tx, rx) = tokio::sync::mpsc::channel(queue_max_events.max(1));
        let trail = Self { queue: Some(tx), dropped: Arc::default() };
        let writer = AuditWriter { rx, store, retention, dropped: trail.dropped.clone() };
        (trail, writer)
    }

    /// Events the store's copy lost (queue full, or the store refused them after retries).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records `event`: the process log now, the store soon.
    pub fn record(&self, event: AuditEvent) {
        event.emit();
        if let Some(queue) = &self.queue
            && let Err(err) = queue.try_send(event)
        {
            let before = self.dropped.fetch_add(1, Ordering::Relaxed);
            // Closed: the writer has stopped (shutdown); only a full queue is worth a warning.
            if matches!(err, tokio::sync::mpsc::error::TrySendError::Full(_)) && (before == 0 || before.is_power_of_two()) {
                tracing::warn!(dropped = before + 1, "audit queue full: events are missing from the store (the process log has them)");
            }
        }
    }

    /// A pod's details were served to `principal`, with secret material masked or not.
    pub fn details_viewed(&self, principal: &Principal, namespace: &str, pod: &str, masked: bool) {
        let mut event = AuditEvent::new("details_viewed").by(principal);
        event.namespace = Some(namespace.to_owned());
        event.name = Some(pod.to_owned());
        event.masked = Some(masked);
        self.record(event);
    }

    /// `principal`'s saved console session was `change`d (`saved` or `deleted`).
    pub fn session_changed(&self, principal: &Principal, change: &'static str) {
        let mut event = AuditEvent::new("session_changed").by(principal);
        event.change = Some(change.to_owned());
        self.record(event);
    }

    /// A request to `path` was refused for `reason` (`not_in_allowed_group`: 403 by the group
    /// policy, no user known beyond the token being valid; `rbac`: 404 by the cluster's RBAC;
    /// `rbac_revoked`: an open stream ended).
    pub fn denied(&self, reason: &'static str, path: &str, who: Option<(&Principal, &str)>) {
        let mut event = AuditEvent::new("denied");
        if let Some((principal, namespace)) = who {
            event = event.by(principal);
            event.namespace = Some(namespace.to_owned());
        }
        event.reason = Some(reason.to_owned());
        event.path = Some(cut(path, MAX_PATH_BYTES).to_owned());
        self.record(event);
    }
}

/// Writes queued events to the store in batches, retrying a failed batch, and deletes events
/// older than the retention every [`AuditWriter::PURGE_EVERY`].
pub struct AuditWriter {
    rx: tokio::sync::mpsc::Receiver<AuditEvent>,
    store: Arc<dyn AuditStore>,
    retention: Duration,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter").field("retention", &self.retention).finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Largest batch written at once.
    pub const BATCH: usize = 500;
    /// How often expired events are deleted.
    pub const PURGE_EVERY: Duration = Duration::from_secs(600);
    /// Attempts per batch before it is dropped (and counted).
    const ATTEMPTS: u32 = 5;

    /// Runs until every [`AuditTrail`] clone is gone, or `stop` completes, and the queue is
    /// written out (after `stop`, events recorded later go to the process log only).
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut batch = Vec::with_capacity(Self::BATCH);
        let mut last_purge: Option<Instant> = None;
        let mut stop = std::pin::pin!(stop);
        loop {
            let received = tokio::select! {
                n = self.rx.recv_many(&mut batch, Self::BATCH) => n,
                () = &mut stop => {
                    // Take what is queued, then no more.
                    self.rx.close();
                    while self.rx.recv_many(&mut batch, Self::BATCH).await > 0 {
                        self.write(&batch).await;
                        batch.clear();
                    }
                    return;
                }
            };
            if received == 0 {
                return;
            }
            self.write(&batch).await;
            batch.clear();
            if last_purge.is_none_or(|at| at.elapsed() >= Self::PURGE_EVERY) {
                last_purge = Some(Instant::now());
                let cutoff = crate::storage::now_ms().saturating_sub(i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX));
                match self.store.purge_before(cutoff).await {
                    Ok(n) if n > 0 => tracing::debug!(events = n, "purged audit events past the retention"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "cannot purge old audit events"),
                }
            }
        }
    }

    async fn write(&self, batch: &[AuditEvent]) {
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=Self::ATTEMPTS {
            match self.store.append(batch).await {
                Ok(()) => return,
                Err(err) if attempt == Self::ATTEMPTS || !err.is_transient() => {
                    self.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::warn!(error = %err, events = batch.len(), "audit events could not be stored (the process log has them)");
                    return;
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

/// Lines and bytes a response sent, counted by its body while it streams.
#[derive(Debug, Clone, Default)]
pub struct SentCounter(Arc<[AtomicU64; 2]>);

impl SentCounter {
    /// Counts `lines` log lines.
    pub fn lines(&self, lines: u64) {
        self.0[0].fetch_add(lines, Ordering::Relaxed);
    }

    /// Counts `bytes` bytes handed to the connection.
    pub fn bytes(&self, bytes: u64) {
        self.0[1].fetch_add(bytes, Ordering::Relaxed);
    }

    /// `(lines, bytes)` so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.0[0].load(Ordering::Relaxed), self.0[1].load(Ordering::Relaxed))
    }
}

/// What a log request reads.
#[derive(Debug, Clone)]
pub struct LogAccess {
    /// The caller's username (`preferred_username`).
    pub user: String,
    /// The caller's `sub`.
    pub subject: String,
    /// The namespace.
    pub namespace: String,
    /// `pod` or `app`.
    pub resource: &'static str,
    /// The pod's or app's name.
    pub name: String,
    /// `stream`, `read`, `download` or `search`.
    pub mode: &'static str,
    /// The query string without credentials (see the module docs).
    pub query: String,
}

impl LogAccess {
    /// The access of `principal` with the raw query string `query` (`ticket` is removed).
    pub fn new(principal: &Principal, namespace: &str, resource: &'static str, name: &str, mode: &'static str, query: &str) -> Self {
        Self {
            user: principal.username.clone(),
            subject: principal.subject.clone(),
            namespace: namespace.to_owned(),
            resource,
            name: name.to_owned(),
            mode,
            query: safe_query(query),
        }
    }
}

/// `query` without `ticket=` pairs, cut to [`MAX_QUERY_BYTES`] (then ending in `…`).
fn safe_query(query: &str) -> String {
    let kept: Vec<&str> = query.split('&').filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("ticket")).collect();
    let joined = kept.join("&");
    let short = cut(&joined, MAX_QUERY_BYTES);
    if short.len() < joined.len() { format!("{short}…") } else { joined }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An open log response: emits `logs_opened` when the body starts ([`LogAccessGuard::opened`])
/// and `logs_closed` with what was sent when it is dropped; or `logs_refused` instead
/// ([`LogAccessGuard::refused`]).
#[derive(Debug)]
pub struct LogAccessGuard {
    trail: AuditTrail,
    access: LogAccess,
    sent: SentCounter,
    started: Instant,
    open: bool,
}

impl LogAccessGuard {
    /// A guard for `access` recording into `trail`; nothing is recorded yet.
    pub fn new(trail: AuditTrail, access: LogAccess) -> Self {
        Self { trail, access, sent: SentCounter::default(), started: Instant::now(), open: false }
    }

    /// The counter the body updates.
    pub fn counter(&self) -> SentCounter {
        self.sent.clone()
    }

    /// The body starts: records `logs_opened`; `logs_closed` follows on drop.
    pub fn opened(mut self) -> Self {
        self.trail.record(AuditEvent::for_access("logs_opened", &self.access));
        self.open = true;
        self
    }

    /// The request was answered with `status` before any body: records `logs_refused`.
    pub fn refused(mut self, status: u16) {
        let mut event = AuditEvent::for_access("logs_refused", &self.access);
        event.status = Some(status);
        self.trail.record(event);
        self.open = false;
    }
}

impl Drop for LogAccessGuard {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let (lines, bytes) = self.sent.snapshot();
        let mut event = AuditEvent::for_access("logs_closed", &self.access);
        event.lines = Some(lines);
        event.bytes = Some(bytes);
        event.duration_ms = Some(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX));
        self.trail.record(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_never_carries_a_ticket_and_is_bounded() {
        assert_eq!(safe_query("ticket=abc&grep=err&follow=false"), "grep=err&follow=false");
        assert_eq!(safe_query("grep=x&ticket=abc"), "grep=x");
        assert_eq!(safe_query("ticket"), "");
        assert_eq!(safe_query("ticketing=1"), "ticketing=1");
        let long = format!("grep={}", "é".repeat(2000));
        let cut = safe_query(&long);
        assert!(cut.len() <= MAX_QUERY_BYTES + '…'.len_utf8() && cut.ends_with('…'), "{}", cut.len());
    }

    #[tokio::test]
    async fn the_writer_stores_what_is_queued_when_it_is_stopped() {
        let store = Arc::new(crate::storage::memory::MemoryStore::new(crate::storage::StoreLimits::default()));
        let (trail, writer) = AuditTrail::with_store(store.clone(), 100, Duration::from_secs(3600));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        for _ in 0..3 {
            trail.record(AuditEvent::new("denied"));
        }
        drop(stop);
        writer.run(async move {
            let _ = stopped.await;
        })
        .await;
        let query = crate::storage::AuditQuery { limit: 10, ..Default::default() };
        assert_eq!(crate::storage::AuditStore::query(&*store, query.clone()).await.unwrap().events.len(), 3);
        // After the stop the queue is closed: later events go to the process log only, and
        // count as missing from the store's copy.
        trail.record(AuditEvent::new("denied"));
        assert_eq!(crate::storage::AuditStore::query(&*store, query).await.unwrap().events.len(), 3);
        assert_eq!(trail.dropped(), 1);
    }

    #[test]
    fn the_counter_adds_up() {
        let counter = SentCounter::default();
        counter.lines(3);
        counter.bytes(10);
        counter.clone().lines(1);
        assert_eq!(counter.snapshot(), (4, 10));
    }
}
