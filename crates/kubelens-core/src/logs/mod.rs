//! The log pipeline: bytes from Kubernetes in, ordered, resumable, bounded lines out.
//!
//! The stages, each usable on its own and each bounded:
//!
//! 0. [`upstream`] reads one container's log from Kubernetes and tells its ends apart;
//!    [`admission`] caps the number of upstream streams.
//! 1. [`split`] cuts an upstream byte stream into lines, never buffering more than
//!    `max_line_length` (+ a few bytes) per line, truncating overlong lines with a visible
//!    marker, and parses the kubelet's `<RFC3339Nano> <text>` prefix ([`time`]).
//! 2. [`id`] gives every line a resume id (`<ts>~<k>`, `k` = index among the source's lines
//!    with the same timestamp) and turns a `Last-Event-ID` back into a [`SourceCursor`] that
//!    drops exactly the lines a client already has (Kubernetes only resumes to the second).
//! 3. [`hub`] fans one upstream per (namespace, pod, container, previous) out to any number of
//!    viewers through a ring buffer and bounded per-viewer queues.
//! 4. [`app`] composes an app's live log (membership, shared sources, merge);
//!    [`merge`] merges the sources of an app in timestamp order with a watermark window and
//!    emits ids that resume a merged stream exactly ([`AppLogId`]).
//! 5. [`grep`] applies include/exclude regexes and the level and field filters before a line
//!    leaves the server, [`structured`] reads JSON/logfmt lines and their level, and
//!    [`json`] renders the SSE `data:` payload.
//! 6. [`search`] scans whole logs (finite reads, one source at a time) for matching lines
//!    within byte, match and time bounds.
//!
//! The whole module is runtime-agnostic: it uses `futures` streams and tokio's sync
//! primitives; the only timers (hub linger, merge watermark, search deadline and progress) use `tokio::time`, which the
//! caller's runtime must provide. Task spawning is supplied by the caller ([`hub::Spawner`]).
//! The design of the ids, their guarantees and limits is written up in `docs/log-ids.md`.

use std::sync::Arc;

pub mod admission;
pub mod app;
pub mod around;
pub mod grep;
pub mod hub;
pub mod id;
pub mod json;
pub mod merge;
pub mod search;
pub mod split;
pub mod structured;
pub mod time;
pub mod upstream;

pub use id::{AppLogId, LineId, SourceCursor, SourceTag};
pub use split::{LineDecoder, LineSplitter, RawLine, decode_log_stream, split_lines};
pub use time::LogTimestamp;
pub use upstream::{SourceKey, SourceState, SourceStatus, StartAt, StatusReason, UpstreamEvent};

/// Errors of the log pipeline. Parsing errors carry a short, sanitized preview of the bad
/// input (never a whole log line) and map to HTTP 400 in the salvo adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A timestamp (`since`, a line prefix, an id part) is not RFC3339.
    #[error("invalid RFC3339 timestamp `{0}`")]
    BadTimestamp(String),
    /// A `Last-Event-ID` (or resume id) is malformed, forged or too long.
    #[error("invalid log event id: {0}")]
    BadEventId(String),
    /// A grep pattern does not compile or exceeds the size limit.
    #[error("invalid grep pattern: {0}")]
    BadPattern(String),
    /// A `level` filter names no known level.
    #[error("invalid level filter: {0}")]
    BadLevel(String),
    /// A `field.<key>=<value>` filter is malformed, too long, repeated, or one too many.
    #[error("invalid field filter: {0}")]
    BadFieldFilter(String),
    /// The upstream byte stream failed; the source error is kept.
    #[error("log upstream failed")]
    Upstream(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Identifies where a line comes from: shared by every line of one source (one `Arc` per
/// source, so a line costs a pointer, not two strings).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogSource {
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Short stable hash of (pod, container) used inside merged-stream ids.
    pub tag: SourceTag,
}

impl LogSource {
    /// A source for one container of one pod.
    pub fn new(pod: impl Into<String>, container: impl Into<String>) -> Arc<Self> {
        let pod = pod.into();
        let container = container.into();
        let tag = SourceTag::of(&pod, &container);
        Arc::new(Self { pod, container, tag })
    }
}

/// One log line after splitting, truncation and timestamp parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the container runtime wrote the line (nanoseconds). A line the kubelet sent
    /// without a parseable timestamp inherits the previous line's timestamp (or 0), so the
    /// per-source order and the ids stay consistent.
    pub ts: LogTimestamp,
    /// Index of this line among the lines of its source that share `ts` (0 for the first).
    pub index: u32,
    /// Pod and container.
    pub source: Arc<LogSource>,
    /// The text without timestamp and newline; invalid UTF-8 replaced by U+FFFD; cut to the
    /// configured maximum with a ` … [truncated N bytes]` marker when `truncated`.
    pub text: String,
    /// True when the original line was longer than the maximum and was cut.
    pub truncated: bool,
    /// The line's wire encoding, made once by the hub's [`hub::LineEncoder`] before the line
    /// is shared, so 100 viewers of a pod cost one encoding, not 100 (a `Bytes` clone is a
    /// reference count). `None` where no encoder runs (one-shot and archive reads, tests).
    pub encoded: Option<bytes::Bytes>,
}

impl LogLine {
    /// The resume id of this line within its source (`<ts>~<index>`).
    pub fn id(&self) -> LineId {
        LineId { ts: self.ts, index: self.index }
    }
}

impl LogLine {
    /// Builds a line from what the Kubernetes source ([`upstream`]) read.
    pub fn from_raw(raw: upstream::RawLine, source: Arc<LogSource>) -> Self {
        Self {
            ts: LogTimestamp::from(raw.position.ts),
            index: raw.position.index,
            source,
            text: raw.text,
            truncated: raw.truncated,
            encoded: None,
        }
    }
}
