//! The Kubernetes log source: one container's log, read through the API server's
//! `pods/log` subresource, as a [`Stream`] of lines and status changes.
//!
//! # Why it is shaped like this
//!
//! A follow request to `pods/log` ends for many reasons that look the same on the wire (the
//! body just ends): the container exited, it restarted, the kubelet/containerd closed the
//! stream after its 4-hour cap, the API server restarted, the network dropped, the pod was
//! deleted. After every end the stream asks the pod (through [`ContainerLookup`]: the
//! discovery cache, or one GET) what happened and acts on it:
//!
//! | what the pod says | what the stream does |
//! |---|---|
//! | pod gone | `ended`, reason `deleted` |
//! | pod (or its app or namespace) now hidden by the policy | `ended`, reason `hidden` |
//! | same container instance still running | `reconnecting`, backoff, reconnect from the cursor |
//! | new instance (restart count / container id / pod uid changed) | `streaming`, reason `restarted`, read the new instance from its beginning |
//! | instance terminated and will restart | `waiting`, poll until the new instance runs |
//! | instance terminated for good | `ended`, reason `exited`, with the exit code |
//!
//! Lines are always requested with `timestamps=true`: the timestamp is the line's identity
//! for resuming. `sinceTime` has one-second precision upstream (and kube-rs *rounds* it to
//! the nearest second, which could skip up to half a second of lines), so this module always
//! asks from the *floor* of the last timestamp and drops what it already delivered, using
//! [`LinePosition`] = (timestamp, index among the source's lines with that exact timestamp).
//!
//! # History, then live
//!
//! A follow request gives no sign of where the existing log ends and new lines begin, yet an
//! ordered app merge needs exactly that: a source still sending its history can owe lines
//! older than anything another source sent, however long that takes under load. So a
//! following stream first reads the history with a non-follow request (its end of body is
//! the definite end of the history), sends [`UpstreamEvent::CaughtUp`], then opens the follow
//! request from the last delivered position (the usual floor-of-the-second re-read and
//! dedupe, so nothing is lost or repeated between the two). This costs one extra request per
//! opened stream, none per viewer. A `tailLines=0` start has no history: it skips the read and
//! sends `CaughtUp` as soon as its follow request is open.
//!
//! The stream is a plain `unfold` over private state: no task is spawned, so dropping the
//! stream (the client went away) drops the in-flight HTTP request to the API server at once.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{AsyncRead, AsyncReadExt, FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};

use crate::metrics::{GaugeGuard, Metrics};
use serde::Serialize;

use super::admission::UpstreamPermit;

mod plain;
pub use plain::NO_POSITION;

/// One upstream source: a container of a pod, current or previous instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// The previous (terminated) instance instead of the current one.
    pub previous: bool,
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.pod, self.container)?;
        if self.previous { f.write_str(" (previous)") } else { Ok(()) }
    }
}

/// Where a line sits in its source: its timestamp, and how many earlier lines of the same
/// source carry exactly the same timestamp. Unique within one container instance, stable
/// across re-reads, so it is the dedupe key when a resume re-reads a second of lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinePosition {
    /// The runtime's timestamp of the line (nanosecond precision).
    pub ts: DateTime<Utc>,
    /// 0 for the first line with this timestamp, 1 for the second, ...
    pub index: u32,
}

/// Where the first read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The whole log of the instance.
    Beginning,
    /// The last `n` lines (0 = only new lines).
    Tail(u32),
    /// Lines with a timestamp at or after this instant (exact, not rounded to a second).
    Since(DateTime<Utc>),
    /// Lines strictly after this position (exact resume).
    After(LinePosition),
}

/// How a stream reads and recovers.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Where to start.
    pub start: StartAt,
    /// Keep following after the current end of the log.
    pub follow: bool,
    /// Lines longer than this many characters are cut and marked truncated; bytes beyond
    /// 4× this are never buffered (a 1 MB line costs at most that much memory).
    pub max_line_length: usize,
    /// First reconnect delay after a dropped stream; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Largest reconnect delay.
    pub max_backoff: Duration,
    /// How often a waiting container (not started yet, or about to restart) is polled.
    pub poll_interval: Duration,
    /// While a request is open, how often the pod is re-checked for deletion or a restart.
    /// Needed because an open follow request does not always end when the pod goes away
    /// (and its first byte may never come for an empty log). With the watch-fed lookup this
    /// is free; with [`ApiContainerLookup`] it is one GET per interval. `None` disables it.
    pub liveness_interval: Option<Duration>,
    /// An open request that delivers no byte for this long is treated as dropped and opened
    /// again from the cursor (nothing lost). This is what notices a dead connection (a peer
    /// that vanished without closing it); the client itself has no socket read timeout, since
    /// that would also cut its quiet watches. A quiet container is re-requested once per
    /// interval, which costs one request.
    pub stall_timeout: Duration,
}

/// Default [`UpstreamOptions::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            start: StartAt::Tail(500),
            follow: true,
            max_line_length: 10_000,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            liveness_interval: Some(Duration::from_secs(5)),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// One log line as read from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    /// Its position (timestamp + same-timestamp index).
    pub position: LinePosition,
    /// The text without the runtime timestamp and newline; invalid UTF-8 is replaced with
    /// U+FFFD; cut lines end with ` … [truncated N bytes]` (see [`super::split`]).
    pub text: String,
    /// The line was longer than the limit and was cut.
    pub truncated: bool,
}

/// The lifecycle state reported in `status` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SourceState {
    /// The container has not started (yet, or again after an exit).
    Waiting,
    /// Lines are flowing.
    Streaming,
    /// The upstream stream dropped while the container runs; reconnecting from the cursor.
    Reconnecting,
    /// No more lines will come from this source.
    Ended,
}

/// Why the state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StatusReason {
    /// First connection established.
    Connected,
    /// Reconnected after a drop (no line lost or repeated).
    Resumed,
    /// A new container instance started; its log follows.
    Restarted,
    /// The container is waiting to start.
    ContainerWaiting,
    /// The container exited and will not be restarted.
    Exited,
    /// The container exited; the kubelet will restart it.
    ExitedWillRestart,
    /// The pod was deleted.
    Deleted,
    /// The pod still exists but the access policy now hides it (it, its app or its namespace
    /// gained an excluded label, or the filters changed): its viewers' streams end, and
    /// nothing of it is archived from then on.
    Hidden,
    /// The upstream stream ended or failed while the container runs (network, API server
    /// restart, the kubelet's 4-hour cap).
    Dropped,
    /// A non-follow read reached the end of the log.
    Complete,
    /// `previous=true` but the container never restarted.
    NoPreviousInstance,
    /// The container does not exist in the pod (any more).
    NoSuchContainer,
    /// The API server refused the request for good (e.g. 403: RBAC too narrow).
    Refused,
    /// The process-wide upstream stream cap is reached.
    TooManyStreams,
    /// The server is shutting down.
    Shutdown,
    /// The viewer's token expired (plus `auth.stream_token_grace`): the stream ends; the client
    /// reconnects with a fresh token and its last id.
    TokenExpired,
    /// The viewer may no longer read this source: per-user RBAC
    /// (`auth.kubernetes_authorization`), re-checked while the stream is open, now denies it.
    Revoked,
    /// In an app stream: this source sent no history within `logs.merge_history_timeout`;
    /// the merge goes on without waiting for it, and its lines may arrive out of order.
    Late,
    /// A viewer's source is being re-opened at its resume cursor and has not delivered yet
    /// (used inside app merges so the merge tracks the source as behind; not sent to clients).
    Resuming,
}

/// A status change of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The new state.
    pub state: SourceState,
    /// Why.
    pub reason: StatusReason,
    /// Exit code, for `exited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl SourceStatus {
    /// A status without an exit code.
    pub fn new(state: SourceState, reason: StatusReason) -> Self {
        Self { state, reason, exit_code: None }
    }
}

/// An item of an upstream stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamEvent {
    /// A log line.
    Line(RawLine),
    /// A state change.
    Status(SourceStatus),
    /// Every line that existed when the stream opened has been delivered: from here on lines
    /// arrive as they are written. Sent once, by following streams only (see "History, then
    /// live" in the module docs). Ordered merges wait for it instead of guessing from time.
    CaughtUp,
}

/// What the pod says about one of its containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerProbe {
    /// The pod does not exist.
    PodGone,
    /// The pod exists but the access policy hides it (the pod, its app or its namespace).
    Hidden,
    /// The pod exists but has no such container.
    NoSuchContainer,
    /// The container's runtime state.
    Present(ContainerRuntime),
}

/// Runtime facts of a container, enough to tell its log ends apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRuntime {
    /// The pod's uid: a pod recreated under the same name (StatefulSet) is a new instance.
    pub pod_uid: Option<String>,
    /// `containerID` of the current instance (`None` before the first start).
    pub container_id: Option<String>,
    /// `restartCount`.
    pub restart_count: i32,
    /// Current state.
    pub phase: ContainerPhase,
    /// A terminated instance will be restarted (restart policy, pod not terminal/deleting).
    pub will_restart: bool,
    /// A previous instance exists (`previous=true` has something to read).
    pub has_previous: bool,
}

impl ContainerRuntime {
    fn same_instance(&self, other: &ContainerRuntime) -> bool {
        self.pod_uid == other.pod_uid
            && self.restart_count == other.restart_count
            && (self.container_id == other.container_id || self.container_id.is_none() || other.container_id.is_none())
    }
}

/// A container's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerPhase {
    /// Not running yet (or between restarts).
    Waiting {
        /// e.g. `ContainerCreating`, `CrashLoopBackOff`.
        reason: Option<String>,
    },
    /// Running.
    Running,
    /// Terminated.
    Terminated {
        /// The exit code.
        exit_code: i32,
    },
}

/// Answers "what is this container doing?" — from the discovery cache or one API GET.
/// Only called when a log stream ends or before the first read, never per line.
pub trait ContainerLookup: Send + Sync + 'static {
    /// The container's current state.
    fn probe(&self, namespace: &str, pod: &str, container: &str) -> BoxFuture<'static, Result<ContainerProbe, kube::Error>>;
}

/// [`ContainerLookup`] by one `GET pod` per question: always fresh, used when no watch
/// cache is at hand (examples, tests).
#[derive(Clone)]
pub struct ApiContainerLookup {
    client: kube::Client,
}

impl fmt::Debug for ApiContainerLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiContainerLookup").finish_non_exhaustive()
    }
}

impl ApiContainerLookup {
    /// Uses `client` (the backend's service account).
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl ContainerLookup for ApiContainerLookup {
    fn probe(&self, namespace: &str, pod: &str, container: &str) -> BoxFuture<'static, Result<ContainerProbe, kube::Error>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pod.to_owned();
        let container = container.to_owned();
        async move {
            Ok(match api.get_opt(&pod).await? {
                None => ContainerProbe::PodGone,
                Some(pod) => probe_pod(&pod, &container),
            })
        }
        .boxed()
    }
}

/// [`ContainerLookup`] over the discovery watch cache: no API request per question, so
/// liveness checks of thousands of open streams cost nothing. A pod the cache does not hold
/// is [`ContainerProbe::PodGone`]; one it holds that the policy hides (the pod, its app or its
/// namespace) is [`ContainerProbe::Hidden`].
#[derive(Debug, Clone)]
pub struct CachedContainerLookup {
    cluster: crate::cluster::Cluster,
    policy: Arc<crate::policy::AccessPolicy>,
}

impl CachedContainerLookup {
    /// Lookups in `cluster`, as `policy` lets the backend see it.
    pub fn new(cluster: crate::cluster::Cluster, policy: Arc<crate::policy::AccessPolicy>) -> Self {
        Self { cluster, policy }
    }
}

impl ContainerLookup for CachedContainerLookup {
    fn probe(&self, namespace: &str, pod: &str, container: &str) -> BoxFuture<'static, Result<ContainerProbe, kube::Error>> {
        let probe = match self.policy.namespace(namespace) {
            Err(_) => ContainerProbe::PodGone,
            Ok(ns) => match self.cluster.pod_object(&self.policy, &ns, pod) {
                Ok(object) => probe_pod(&object, container),
                Err(crate::cluster::ClusterError::Access(_)) if self.cluster.pod_exists(&ns, pod) => ContainerProbe::Hidden,
                Err(crate::cluster::ClusterError::Access(_)) => ContainerProbe::PodGone,
                // Not synced yet (or another transient state): say "running, same instance"
                // by reporting what we cannot know as an API error, which callers retry.
                Err(other) => {
                    let status = kube::core::Status::failure(&other.to_string(), "CacheNotReady").with_code(503);
                    return futures::future::ready(Err(kube::Error::Api(Box::new(status)))).boxed();
                }
            },
        };
        futures::future::ready(Ok(probe)).boxed()
    }
}

/// Reads a container's runtime facts out of a pod object (shared by every lookup).
pub fn probe_pod(pod: &Pod, container: &str) -> ContainerProbe {
    let spec_has = pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == container)
            || s.init_containers.iter().flatten().any(|c| c.name == container)
            || s.ephemeral_containers.iter().flatten().any(|c| c.name == container)
    });
    if !spec_has {
        return ContainerProbe::NoSuchContainer;
    }
    let status = pod.status.as_ref();
    let cs = status.and_then(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
            .chain(s.ephemeral_container_statuses.iter().flatten())
            .find(|c| c.name == container)
    });
    let terminal_phase = matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let restart_policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    let Some(cs) = cs else {
        return ContainerProbe::Present(ContainerRuntime {
            pod_uid: pod.metadata.uid.clone(),
            container_id: None,
            restart_count: 0,
            phase: ContainerPhase::Waiting { reason: None },
            will_restart: !terminal_phase && !deleting,
            has_previous: false,
        });
    };
    let state = cs.state.as_ref();
    let phase = if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        ContainerPhase::Terminated { exit_code: t.exit_code }
    } else if state.and_then(|s| s.running.as_ref()).is_some() {
        ContainerPhase::Running
    } else {
        ContainerPhase::Waiting { reason: state.and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone()) }
    };
    let will_restart = !terminal_phase
        && !deleting
        && match (&phase, restart_policy) {
            (ContainerPhase::Terminated { exit_code }, "OnFailure") => *exit_code != 0,
            (_, "Never") => false,
            _ => true,
        };
    ContainerProbe::Present(ContainerRuntime {
        pod_uid: pod.metadata.uid.clone(),
        container_id: cs.container_id.clone(),
        restart_count: cs.restart_count,
        phase,
        will_restart,
        has_previous: cs.restart_count > 0 || cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).is_some(),
    })
}

/// Opens upstream log streams. Cheap to clone.
#[derive(Clone)]
pub struct PodLogUpstream {
    client: kube::Client,
    lookup: Arc<dyn ContainerLookup>,
    metrics: Option<Metrics>,
}

impl fmt::Debug for PodLogUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodLogUpstream").finish_non_exhaustive()
    }
}

/// A boxed upstream stream.
pub type UpstreamStream = BoxStream<'static, UpstreamEvent>;

impl PodLogUpstream {
    /// Streams through `client`; `lookup` explains stream ends.
    ///
    /// Give `client` no read timeout or a generous one: an idle follow stream sends nothing,
    /// and every read timeout costs a reconnect (lossless, but a request).
    pub fn new(client: kube::Client, lookup: Arc<dyn ContainerLookup>) -> Self {
        Self { client, lookup, metrics: None }
    }

    /// Counts open upstream streams, reconnects, and lines/bytes received and truncated.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The lines of `key` as a stream. `permit` (if any) is held until the stream is
    /// dropped, so the admission slot lives exactly as long as the upstream request.
    ///
    /// The stream never fails: errors become `status` items (`reconnecting`, or `ended` with
    /// a reason) and the stream ends after an `ended` status.
    pub fn stream(&self, key: SourceKey, options: UpstreamOptions, permit: Option<UpstreamPermit>) -> UpstreamStream {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut run = Run::new(key, options, api, Arc::clone(&self.lookup), permit);
        run.open_guard = self.metrics.as_ref().map(Metrics::upstream_stream_guard);
        run.metrics = self.metrics.clone();
        futures::stream::unfold(run, |mut run| async move {
            let event = run.next_event().await?;
            Some((event, run))
        })
        .boxed()
    }
}

// ---- the state machine -------------------------------------------------------------------

/// Bytes asked from the API server per read.
const READ_CHUNK: usize = 32 * 1024;

type Reader = Pin<Box<dyn AsyncRead + Send>>;

enum Phase {
    /// Open (or re-open) the request.
    Connect,
    /// Read the open request.
    Read(Reader),
    /// The request ended; ask the pod why.
    Probe,
    /// Wait, then continue with `then`.
    Sleep(Duration, Box<Phase>),
    /// Finished.
    Done,
}

struct Run {
    key: SourceKey,
    options: UpstreamOptions,
    api: Api<Pod>,
    lookup: Arc<dyn ContainerLookup>,
    /// Lines at or before this position were delivered already (resume / reconnect dedupe).
    delivered: Option<LinePosition>,
    /// Lines strictly before this instant are not wanted (`since`, or the connect time of a
    /// `tailLines` start that has not produced a line yet).
    not_before: Option<DateTime<Utc>>,
    /// Read the current instance from its beginning on the next connect (after a restart).
    from_instance_start: bool,
    /// Last liveness check of the open request.
    checked_at: tokio::time::Instant,
    /// When the open request last delivered bytes (or opened): see `stall_timeout`.
    last_bytes_at: tokio::time::Instant,
    /// When the first request of a `tailLines` start was opened (see `connect`).
    reconnect_floor: Option<DateTime<Utc>>,
    /// The instance being followed.
    instance: Option<ContainerRuntime>,
    /// Following, and the history (everything before the first request) is still being
    /// read with a non-follow request; see "History, then live".
    reading_history: bool,
    /// The next successful connect is the follow request that continues the history read.
    switching_to_follow: bool,
    /// The history read found an empty log: the follow request reads the instance from its
    /// start (what was written between the two requests), not a tail of it.
    history_was_empty: bool,
    connects: u32,
    failures: u32,
    /// Same-timestamp counter of the current read.
    last_seen: Option<LinePosition>,
    splitter: super::split::LineSplitter,
    /// Reused read buffer (heap, so the stream's future stays small).
    read_buf: Vec<u8>,
    pending: VecDeque<UpstreamEvent>,
    reported: Option<(SourceState, StatusReason)>,
    phase: Phase,
    _permit: Option<UpstreamPermit>,
    metrics: Option<Metrics>,
    /// Counts this stream in `upstream_log_streams_open` while it lives.
    open_guard: Option<GaugeGuard>,
}

impl Run {
    fn new(
        key: SourceKey,
        options: UpstreamOptions,
        api: Api<Pod>,
        lookup: Arc<dyn ContainerLookup>,
        permit: Option<UpstreamPermit>,
    ) -> Self {
        let (delivered, not_before) = match options.start {
            StartAt::After(p) => (Some(p), None),
            StartAt::Since(t) => (None, Some(t)),
            StartAt::Beginning | StartAt::Tail(_) => (None, None),
        };
        let splitter = super::split::LineSplitter::new(options.max_line_length);
        let following = options.follow && !key.previous;
        let reading_history = following && options.start != StartAt::Tail(0);
        Self {
            key,
            options,
            api,
            lookup,
            delivered,
            not_before,
            from_instance_start: false,
            reconnect_floor: None,
            checked_at: tokio::time::Instant::now(),
            last_bytes_at: tokio::time::Instant::now(),
            instance: None,
            reading_history,
            switching_to_follow: false,
            history_was_empty: false,
            connects: 0,
            failures: 0,
            last_seen: None,
            splitter,
            read_buf: Vec::new(),
            pending: VecDeque::new(),
            reported: None,
            phase: Phase::Connect,
            _permit: permit,
            metrics: None,
            open_guard: None,
        }
    }

    fn report(&mut self, status: SourceStatus) {
        let key = (status.state, status.reason);
        if let Some(m) = &self.metrics
            && key == (SourceState::Reconnecting, StatusReason::Dropped)
        {
            m.upstream_reconnects.inc();
        }
        if self.reported != Some(key) {
            self.reported = Some(key);
            self.pending.push_back(UpstreamEvent::Status(status));
        }
    }

    fn end(&mut self, status: SourceStatus) {
        tracing::debug!(source = %self.key, reason = ?status.reason, "upstream log stream ended");
        self.report(status);
        self.phase = Phase::Done;
    }

    fn backoff(&mut self) -> Duration {
        let exp = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        self.options.initial_backoff.saturating_mul(1u32 << exp.min(10)).min(self.options.max_backoff)
    }

    async fn next_event(&mut self) -> Option<UpstreamEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Connect => self.connect().await,
                Phase::Read(reader) => self.read(reader).await,
                Phase::Probe => self.probe_after_end().await,
                Phase::Sleep(delay, then) => {
                    tokio::time::sleep(delay).await;
                    self.phase = *then;
                }
            }
        }
    }

    fn log_params(&self) -> LogParams {
        let mut params = LogParams {
            container: Some(self.key.container.clone()),
            follow: self.options.follow && !self.key.previous && !self.reading_history,
            timestamps: true,
            previous: self.key.previous,
            ..LogParams::default()
        };
        if self.from_instance_start || self.history_was_empty {
            return params;
        }
        // Resume point: the floor of the last delivered (or wanted) second; the dedupe below
        // drops what was already sent. Flooring ourselves matters: kube-rs rounds to the
        // nearest second, which could skip lines in the upper half of that second.
        let resume_from = self.delivered.map(|p| p.ts).or(self.not_before);
        if let Some(ts) = resume_from {
            params.since_time = jiff::Timestamp::from_second(ts.timestamp()).ok();
        } else if let StartAt::Tail(n) = self.options.start {
            params.tail_lines = Some(i64::from(n));
        }
        params
    }

    async fn connect(&mut self) {
        if self.instance.is_none() && self.options.follow && !self.key.previous {
            // Learn which instance is followed, so a later end can tell a restart from a drop.
            match self.lookup.probe(&self.key.namespace, &self.key.pod, &self.key.container).await {
                Ok(ContainerProbe::PodGone) => return self.end(SourceStatus::new(SourceState::Ended, StatusReason::Deleted)),
                Ok(ContainerProbe::Hidden) => return self.end(SourceStatus::new(SourceState::Ended, StatusReason::Hidden)),
                Ok(ContainerProbe::NoSuchContainer) => {
                    return self.end(SourceStatus::new(SourceState::Ended, StatusReason::NoSuchContainer));
                }
                Ok(ContainerProbe::Present(rt)) => {
                    if matches!(rt.phase, ContainerPhase::Waiting { .. }) && rt.container_id.is_none() {
                        self.report(SourceStatus::new(SourceState::Waiting, StatusReason::ContainerWaiting));
                        self.phase = Phase::Sleep(self.options.poll_interval, Box::new(Phase::Connect));
                        return;
                    }
                    self.instance = Some(rt);
                }
                Err(err) => {
                    tracing::debug!(source = %self.key, error = %err, "container probe failed; connecting anyway");
                }
            }
        }
        if self.connects > 0 && self.delivered.is_none() && self.not_before.is_none() && !self.from_instance_start && !self.history_was_empty {
            // A `tailLines` start that has not produced a line yet must not replay that tail
            // after a reconnect: only lines after the first connect are new.
            self.not_before = self.reconnect_floor;
        }
        let params = self.log_params();
        let opened_at = Utc::now();
        let api = self.api.clone();
        let pod = self.key.pod.clone();
        let request = async move { api.log_stream(&pod, &params).await.map(|r| Box::pin(r) as Reader) };
        futures::pin_mut!(request);
        self.checked_at = tokio::time::Instant::now();
        let opened = loop {
            let Some(every) = self.liveness_due() else { break request.await };
            match tokio::time::timeout_at(every, &mut request).await {
                Ok(result) => break result,
                Err(_) => {
                    if !self.still_live().await {
                        return;
                    }
                }
            }
        };
        let continuing = std::mem::take(&mut self.switching_to_follow);
        self.last_bytes_at = tokio::time::Instant::now();
        match opened {
            Ok(reader) if continuing => {
                // The follow request after the history read: a continuation, not a new
                // connection (its status was reported with the history request).
                self.last_seen = None;
                self.splitter.reset();
                self.phase = Phase::Read(reader);
            }
            Ok(reader) => {
                self.connects += 1;
                let reason = if self.from_instance_start && self.connects > 1 {
                    StatusReason::Restarted
                } else if self.connects == 1 {
                    StatusReason::Connected
                } else {
                    StatusReason::Resumed
                };
                if self.options.follow && !self.key.previous {
                    self.report(SourceStatus::new(SourceState::Streaming, reason));
                    // A `tailLines=0` stream has no history to read: it is caught up once its
                    // follow request is open. Said explicitly, because the hub hands this on to
                    // every later subscriber — an app stream resuming on this upstream would
                    // otherwise hold its merge for `merge_history_timeout` waiting for it.
                    if self.connects == 1 && self.options.start == StartAt::Tail(0) {
                        self.pending.push_back(UpstreamEvent::CaughtUp);
                    }
                }
                // A `tailLines` start that yields no line must not replay that tail after a
                // reconnect: from now on only lines after this connect are new.
                if self.connects == 1 && matches!(self.options.start, StartAt::Tail(_)) {
                    self.reconnect_floor = Some(opened_at);
                }
                self.last_seen = None;
                self.splitter.reset();
                self.phase = Phase::Read(reader);
            }
            Err(kube::Error::Api(status)) => self.refused(status.code, &status.message).await,
            Err(err) => {
                tracing::debug!(source = %self.key, error = %err, "log request failed");
                self.retry_later();
            }
        }
    }

    fn retry_later(&mut self) {
        let delay = self.backoff();
        if self.connects > 0 || self.failures > 1 {
            self.report(SourceStatus::new(SourceState::Reconnecting, StatusReason::Dropped));
        }
        self.phase = Phase::Sleep(delay, Box::new(Phase::Probe));
    }

    async fn refused(&mut self, code: u16, message: &str) {
        tracing::debug!(source = %self.key, code, message, "log request refused");
        match code {
            400 if self.key.previous => self.end(SourceStatus::new(SourceState::Ended, StatusReason::NoPreviousInstance)),
            400 if message.contains("waiting to start") || message.contains("ContainerCreating") || message.contains("PodInitializing") => {
                self.report(SourceStatus::new(SourceState::Waiting, StatusReason::ContainerWaiting));
                self.phase = Phase::Sleep(self.options.poll_interval, Box::new(Phase::Connect));
            }
            401 | 403 => self.end(SourceStatus::new(SourceState::Ended, StatusReason::Refused)),
            404 | 400 => self.probe_after_end().await,
            _ => self.retry_later(),
        }
    }

    async fn read(&mut self, mut reader: Reader) {
        if self.liveness_due().is_some_and(|due| due <= tokio::time::Instant::now()) && !self.still_live().await {
            return;
        }
        let mut buf = std::mem::take(&mut self.read_buf);
        buf.resize(READ_CHUNK, 0);
        let stalled_at = self.last_bytes_at + self.options.stall_timeout;
        let due = self.liveness_due().map_or(stalled_at, |due| due.min(stalled_at));
        // Reading is cancel-safe: a read that times out consumed nothing.
        let result = tokio::time::timeout_at(due, reader.read(&mut buf)).await.ok();
        self.read_buf = buf;
        let Some(result) = result else {
            if tokio::time::Instant::now() >= stalled_at {
                // Nothing for `stall_timeout`: open it again from the cursor (a dead
                // connection never ends by itself). A partial line is re-read whole.
                tracing::debug!(source = %self.key, after = ?self.options.stall_timeout, "log stream stalled; reopening");
                self.splitter.reset();
                self.phase = Phase::Probe;
                return;
            }
            // Quiet stream: check the pod at the top of the next read.
            self.phase = Phase::Read(reader);
            return;
        };
        match result {
            Ok(0) if self.reading_history => {
                // The end of the history. A partial last line is being written right now:
                // the follow request re-reads it whole (it starts at or before its second).
                self.splitter.reset();
                self.reading_history = false;
                self.switching_to_follow = true;
                self.history_was_empty = self.delivered.is_none() && self.not_before.is_none();
                self.pending.push_back(UpstreamEvent::CaughtUp);
                self.phase = Phase::Connect;
            }
            Ok(0) => {
                if !self.options.follow || self.key.previous {
                    let mut last = None;
                    self.splitter.finish(|raw| last = Some(raw));
                    if let Some(raw) = last {
                        self.accept(raw);
                    }
                    return self.end(SourceStatus::new(SourceState::Ended, StatusReason::Complete));
                }
                // A partial line at a dropped stream is re-read whole after reconnecting.
                self.splitter.reset();
                self.phase = Phase::Probe;
            }
            Ok(n) => {
                self.last_bytes_at = tokio::time::Instant::now();
                let mut lines = Vec::new();
                // One copy per read chunk; lines are zero-copy slices of it.
                let chunk = bytes::Bytes::copy_from_slice(self.read_buf.get(..n).unwrap_or_default());
                self.splitter.feed(&chunk, |line| lines.push(line));
                for line in lines {
                    self.accept(line);
                }
                if !self.pending.is_empty() {
                    self.failures = 0;
                }
                self.phase = Phase::Read(reader);
            }
            Err(err) => {
                tracing::debug!(source = %self.key, error = %err, "log stream read failed");
                self.splitter.reset();
                self.phase = Phase::Probe;
            }
        }
    }

    fn liveness_due(&self) -> Option<tokio::time::Instant> {
        let every = self.options.liveness_interval.filter(|_| self.options.follow && !self.key.previous)?;
        Some(self.checked_at + every)
    }

    /// Re-checks the pod while a request is open. False when the stream must stop reading
    /// (pod deleted, container gone or replaced: `self.phase` says what comes next).
    async fn still_live(&mut self) -> bool {
        self.checked_at = tokio::time::Instant::now();
        match self.lookup.probe(&self.key.namespace, &self.key.pod, &self.key.container).await {
            Ok(ContainerProbe::PodGone) => {
                self.end(SourceStatus::new(SourceState::Ended, StatusReason::Deleted));
                false
            }
            Ok(ContainerProbe::Hidden) => {
                self.end(SourceStatus::new(SourceState::Ended, StatusReason::Hidden));
                false
            }
            Ok(ContainerProbe::NoSuchContainer) => {
                self.end(SourceStatus::new(SourceState::Ended, StatusReason::NoSuchContainer));
                false
            }
            Ok(ContainerProbe::Present(rt)) if self.instance.as_ref().is_some_and(|old| !old.same_instance(&rt)) => {
                // The rest of the old instance is lost only if it was not yet read; the probe
                // path re-reads nothing of the new one twice (it starts at its beginning).
                self.splitter.reset();
                self.phase = Phase::Probe;
                false
            }
            Ok(ContainerProbe::Present(_)) | Err(_) => true,
        }
    }

    /// Parses one complete line (`<RFC3339Nano> <text>`), assigns its position and drops it
    /// when it was delivered before.
    fn accept(&mut self, line: super::split::RawLine) {
        if let Some(m) = &self.metrics {
            m.log_lines_received.inc();
            m.log_bytes_received.add(u64::try_from(line.bytes.len().saturating_add(line.dropped)).unwrap_or(u64::MAX));
        }
        let Some((ts, text)) = super::time::split_timestamp(&line.bytes) else {
            // Without `timestamps=true` output we cannot place the line; the API server always
            // sends one, so this is garbage (e.g. a cut-off first line): skip it.
            tracing::trace!(source = %self.key, "log line without timestamp skipped");
            return;
        };
        let ts: DateTime<Utc> = ts.into();
        let index = match self.last_seen {
            Some(prev) if prev.ts == ts => prev.index.saturating_add(1),
            _ => 0,
        };
        let position = LinePosition { ts, index };
        self.last_seen = Some(position);
        if self.not_before.is_some_and(|nb| ts < nb) || self.delivered.is_some_and(|d| position <= d) {
            return;
        }
        self.delivered = Some(position);
        self.not_before = None;
        self.from_instance_start = false;
        self.history_was_empty = false;
        let (text, truncated) = super::split::truncate_text(text, line.dropped, self.options.max_line_length);
        if let Some(m) = self.metrics.as_ref().filter(|_| truncated) {
            m.log_lines_truncated.inc();
        }
        self.pending.push_back(UpstreamEvent::Line(RawLine { position, text, truncated }));
    }

    async fn probe_after_end(&mut self) {
        let probe = self.lookup.probe(&self.key.namespace, &self.key.pod, &self.key.container).await;
        let rt = match probe {
            Ok(ContainerProbe::PodGone) => return self.end(SourceStatus::new(SourceState::Ended, StatusReason::Deleted)),
            Ok(ContainerProbe::Hidden) => return self.end(SourceStatus::new(SourceState::Ended, StatusReason::Hidden)),
            Ok(ContainerProbe::NoSuchContainer) => {
                return self.end(SourceStatus::new(SourceState::Ended, StatusReason::NoSuchContainer));
            }
            Ok(ContainerProbe::Present(rt)) => rt,
            Err(err) => {
                tracing::debug!(source = %self.key, error = %err, "container probe failed");
                let delay = self.backoff();
                self.report(SourceStatus::new(SourceState::Reconnecting, StatusReason::Dropped));
                self.phase = Phase::Sleep(delay, Box::new(Phase::Probe));
                return;
            }
        };
        let new_instance = self.instance.as_ref().is_some_and(|old| !old.same_instance(&rt));
        if new_instance {
            // A restart: the old instance's log is complete (it is now `previous`); follow the
            // new one from its first line.
            match rt.phase {
                ContainerPhase::Waiting { .. } => {
                    self.report(SourceStatus::new(SourceState::Waiting, StatusReason::ContainerWaiting));
                    self.phase = Phase::Sleep(self.options.poll_interval, Box::new(Phase::Probe));
                }
                ContainerPhase::Running | ContainerPhase::Terminated { .. } => {
                    self.instance = Some(rt);
                    self.from_instance_start = true;
                    // `delivered` stays: the new instance is read from its first line, and its
                    // lines already sent are dropped by position. That happens when the old
                    // request ended before the pod status showed the restart: the reconnect
                    // (same instance as far as we knew) was served the new instance's log by
                    // the kubelet. Timestamps only grow across instances, so nothing new is
                    // lost.
                    self.not_before = None;
                    self.reported = None;
                    self.phase = Phase::Connect;
                }
            }
            return;
        }
        match rt.phase {
            ContainerPhase::Running => {
                let delay = self.backoff();
                self.report(SourceStatus::new(SourceState::Reconnecting, StatusReason::Dropped));
                self.instance = Some(rt);
                self.phase = Phase::Sleep(delay, Box::new(Phase::Connect));
            }
            ContainerPhase::Terminated { exit_code } if !rt.will_restart => {
                self.end(SourceStatus { state: SourceState::Ended, reason: StatusReason::Exited, exit_code: Some(exit_code) });
            }
            ContainerPhase::Terminated { exit_code } => {
                self.report(SourceStatus {
                    state: SourceState::Waiting,
                    reason: StatusReason::ExitedWillRestart,
                    exit_code: Some(exit_code),
                });
                self.instance = Some(rt);
                self.phase = Phase::Sleep(self.options.poll_interval, Box::new(Phase::Probe));
            }
            ContainerPhase::Waiting { .. } => {
                self.report(SourceStatus::new(SourceState::Waiting, StatusReason::ContainerWaiting));
                if self.instance.is_none() {
                    self.instance = Some(rt);
                }
                self.phase = Phase::Sleep(self.options.poll_interval, Box::new(Phase::Probe));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn pod_probe_tells_instances_apart() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": [{"name": "app"}], "restartPolicy": "Always"},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 2,
                "containerID": "containerd://abc",
                "state": {"running": {"startedAt": "2026-01-30T10:00:00Z"}},
                "lastState": {"terminated": {"exitCode": 1}}
            }]}
        }))
        .unwrap();
        let ContainerProbe::Present(rt) = probe_pod(&pod, "app") else { panic!("present") };
        assert_eq!(rt.phase, ContainerPhase::Running);
        assert!(rt.has_previous && rt.will_restart);
        assert_eq!(rt.restart_count, 2);
        assert_eq!(probe_pod(&pod, "nope"), ContainerProbe::NoSuchContainer);
        let mut restarted = rt.clone();
        restarted.restart_count = 3;
        assert!(!rt.same_instance(&restarted));
        assert!(rt.same_instance(&rt.clone()));
    }

    /// Issue 14.1: a pod the policy hides (itself, its app or its namespace) ends its stream
    /// as `hidden`, a missing one as `deleted` — the archive treats the two differently.
    #[tokio::test]
    async fn a_hidden_pod_ends_the_stream_as_hidden_not_deleted() {
        use crate::cluster::testing::{FakeCluster, FakeObjects};
        use crate::config::{FiltersConfig, NamespacesConfig};
        use crate::policy::AccessPolicy;
        let hide = serde_json::json!({"kubelens.io/hide": "true"});
        let pod = |ns: &str, name: &str, labels: serde_json::Value, owner: Option<&str>| -> Pod {
            let mut meta = serde_json::json!({"name": name, "namespace": ns, "uid": format!("u-{name}"), "labels": labels});
            if let Some(owner) = owner {
                meta["ownerReferences"] =
                    serde_json::json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": owner, "uid": "s", "controller": true}]);
            }
            serde_json::from_value(serde_json::json!({
                "metadata": meta,
                "spec": {"containers": [{"name": "app"}]},
                "status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": true,
                    "restartCount": 0, "containerID": "containerd://a", "state": {"running": {}}}]}
            }))
            .unwrap()
        };
        let objects = FakeObjects {
            namespaces: vec![
                serde_json::from_value(serde_json::json!({"metadata": {"name": "team-a"}})).unwrap(),
                serde_json::from_value(serde_json::json!({"metadata": {"name": "team-b", "labels": hide.clone()}})).unwrap(),
            ],
            stateful_sets: vec![serde_json::from_value(serde_json::json!({
                "metadata": {"name": "secret-db", "namespace": "team-a", "labels": hide.clone()}
            }))
            .unwrap()],
            pods: vec![
                pod("team-a", "labelled", hide.clone(), None),
                pod("team-a", "secret-db-0", serde_json::json!({}), Some("secret-db")),
                pod("team-b", "in-hidden-ns", serde_json::json!({}), None),
            ],
            ..FakeObjects::default()
        };
        let filters: FiltersConfig = serde_yaml_ng::from_str("exclude_labels:\n  kubelens.io/hide: 'true'\n").unwrap();
        let policy = AccessPolicy::new(&NamespacesConfig { allowed: vec!["team-a".into(), "team-b".into()] }, &filters).unwrap();
        let fake = FakeCluster::new(&policy, objects);
        let lookup = Arc::new(CachedContainerLookup::new(fake.cluster(), Arc::new(policy)));
        let upstream = PodLogUpstream::new(fake.cluster().client(), lookup);
        for (ns, name, reason) in [
            ("team-a", "labelled", StatusReason::Hidden),
            ("team-a", "secret-db-0", StatusReason::Hidden),
            ("team-b", "in-hidden-ns", StatusReason::Hidden),
            ("team-a", "never-existed", StatusReason::Deleted),
        ] {
            let key = SourceKey { namespace: ns.into(), pod: name.into(), container: "app".into(), previous: false };
            let events: Vec<UpstreamEvent> = upstream.stream(key, UpstreamOptions::default(), None).collect().await;
            assert_eq!(
                events,
                [UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, reason))],
                "{ns}/{name}"
            );
        }
    }

    /// A log request that stays open but delivers nothing (a dead peer) is reopened after
    /// `stall_timeout` from the cursor: the client has no socket read timeout, so this is
    /// the only thing that notices. Each connection of the fake API server sends the whole
    /// log so far and then goes silent; every line arrives once.
    #[tokio::test]
    async fn a_stalled_request_is_reopened_from_the_cursor() {
        use crate::cluster::testing::{FakeCluster, FakeObjects};
        use crate::config::{FiltersConfig, NamespacesConfig};
        use crate::policy::AccessPolicy;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let served = Arc::clone(&connections);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let mut head = vec![0u8; 4096];
                let _ = socket.read(&mut head).await;
                let mut body = String::new();
                for i in 1..=n.min(3) {
                    body.push_str(&format!("2026-01-01T00:00:0{i}.000000000Z line {i}\n"));
                }
                let response = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n", body.len());
                let _ = socket.write_all(response.as_bytes()).await;
                // Silent from here on, the connection left open.
                held.push(socket);
            }
        });

        let objects = FakeObjects {
            namespaces: vec![serde_json::from_value(serde_json::json!({"metadata": {"name": "team-a"}})).unwrap()],
            pods: vec![serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "team-a", "uid": "u-p"},
                "spec": {"containers": [{"name": "app"}]},
                "status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": true,
                    "restartCount": 0, "containerID": "containerd://a", "state": {"running": {}}}]}
            }))
            .unwrap()],
            ..FakeObjects::default()
        };
        let policy = AccessPolicy::new(&NamespacesConfig { allowed: vec!["team-a".into()] }, &FiltersConfig::default()).unwrap();
        let fake = FakeCluster::new(&policy, objects);
        let lookup = Arc::new(CachedContainerLookup::new(fake.cluster(), Arc::new(policy)));
        let client = kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap())).unwrap();
        let upstream = PodLogUpstream::new(client, lookup);
        let key = SourceKey { namespace: "team-a".into(), pod: "p".into(), container: "app".into(), previous: false };
        let options = UpstreamOptions {
            start: StartAt::Beginning,
            stall_timeout: Duration::from_millis(300),
            initial_backoff: Duration::from_millis(10),
            ..UpstreamOptions::default()
        };
        let mut stream = upstream.stream(key, options, None);
        let mut lines = Vec::new();
        let read = async {
            while lines.len() < 3 {
                match stream.next().await {
                    Some(UpstreamEvent::Line(line)) => lines.push(line.text),
                    Some(_) => {}
                    None => break,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read).await.expect("the stalled request was never reopened");
        assert_eq!(lines, ["line 1", "line 2", "line 3"], "every line once, in order");
        assert!(connections.load(std::sync::atomic::Ordering::SeqCst) >= 3, "reopened after each stall");
    }

    #[test]
    fn exited_container_under_never_policy_will_not_restart() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "job"}], "restartPolicy": "Never"},
            "status": {"phase": "Succeeded", "containerStatuses": [{
                "name": "job", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0}}
            }]}
        }))
        .unwrap();
        let ContainerProbe::Present(rt) = probe_pod(&pod, "job") else { panic!("present") };
        assert_eq!(rt.phase, ContainerPhase::Terminated { exit_code: 0 });
        assert!(!rt.will_restart && !rt.has_previous);
    }
}
