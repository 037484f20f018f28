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
use std::time::Instant;

use crate::auth::Principal;

/// The `tracing` target of every audit event.
pub const TARGET: &str = "kubelens::audit";

/// Longest `query` recorded; a longer one is cut on a character boundary and ends in `…`.
pub const MAX_QUERY_BYTES: usize = 1024;

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
    access: LogAccess,
    sent: SentCounter,
    started: Instant,
    open: bool,
}

impl LogAccessGuard {
    /// A guard for `access`; nothing is recorded yet.
    pub fn new(access: LogAccess) -> Self {
        Self { access, sent: SentCounter::default(), started: Instant::now(), open: false }
    }

    /// The counter the body updates.
    pub fn counter(&self) -> SentCounter {
        self.sent.clone()
    }

    /// The body starts: records `logs_opened`; `logs_closed` follows on drop.
    pub fn opened(mut self) -> Self {
        let a = &self.access;
        tracing::info!(target: TARGET, audit = "logs_opened", user = %a.user, subject = %a.subject, namespace = %a.namespace,
            resource = a.resource, name = %a.name, mode = a.mode, query = %a.query, "audit");
        self.open = true;
        self
    }

    /// The request was answered with `status` before any body: records `logs_refused`.
    pub fn refused(mut self, status: u16) {
        let a = &self.access;
        tracing::info!(target: TARGET, audit = "logs_refused", user = %a.user, subject = %a.subject, namespace = %a.namespace,
            resource = a.resource, name = %a.name, mode = a.mode, query = %a.query, status, "audit");
        self.open = false;
    }
}

impl Drop for LogAccessGuard {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let a = &self.access;
        let (lines, bytes) = self.sent.snapshot();
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(target: TARGET, audit = "logs_closed", user = %a.user, subject = %a.subject, namespace = %a.namespace,
            resource = a.resource, name = %a.name, mode = a.mode, query = %a.query, lines, bytes, duration_ms, "audit");
    }
}

/// A pod's details were served to `principal`, with secret material masked or not.
pub fn details_viewed(principal: &Principal, namespace: &str, pod: &str, masked: bool) {
    tracing::info!(target: TARGET, audit = "details_viewed", user = %principal.username, subject = %principal.subject,
        namespace, name = pod, masked, "audit");
}

/// `principal`'s saved console session was `change`d (`saved` or `deleted`).
pub fn session_changed(principal: &Principal, change: &'static str) {
    tracing::info!(target: TARGET, audit = "session_changed", user = %principal.username, subject = %principal.subject, change, "audit");
}

/// A request to `path` was refused for `reason` (`not_in_allowed_group`: 403 by the group
/// policy, no user known beyond the token being valid; `rbac`: 404 by the cluster's RBAC).
pub fn denied(reason: &'static str, path: &str, who: Option<(&Principal, &str)>) {
    let path = cut(path, 512);
    match who {
        Some((principal, namespace)) => tracing::info!(target: TARGET, audit = "denied", reason, path,
            user = %principal.username, subject = %principal.subject, namespace, "audit"),
        None => tracing::info!(target: TARGET, audit = "denied", reason, path, "audit"),
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

    #[test]
    fn the_counter_adds_up() {
        let counter = SentCounter::default();
        counter.lines(3);
        counter.bytes(10);
        counter.clone().lines(1);
        assert_eq!(counter.snapshot(), (4, 10));
    }
}
