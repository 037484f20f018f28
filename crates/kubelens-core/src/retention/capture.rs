//! Capture: turns pod changes into archived container logs.
//!
//! ```text
//! PodSignal ──► ArchiveRecorder::handle ──► capture task (≤ max_concurrent running,
//!                  (decides what to capture)      ≤ max_pending queued; beyond: counted
//!                                                 as missed{reason="overloaded"})
//!                                               └► upstream (Tail = line cap) ─► ring (caps) ─► LogArchive::append
//! followed stream ──► ArchiveTap (ring of the lines the viewer already fetched)
//! ```
//!
//! * One capture per (pod uid, container, instance) per process: a replica remembers what it
//!   captured; across replicas the positions ([`LinePositioner`]) make duplicate captures
//!   harmless (idempotent append).
//! * A source followed by a viewer has an [`ArchiveTap`]: when capture is due for it, the
//!   tap writes the lines the viewer's stream already read instead of opening a second
//!   upstream; if the viewer leaves before the source ended, the tap hands the capture back
//!   (one upstream, overlapping lines deduplicated by position). A tap also writes its tail
//!   when its stream ends because the pod was deleted or the container exited, so a pod
//!   force-deleted while being followed keeps its tail even when its log is gone. A stream
//!   that ends because the policy now hides the pod (`hidden`) writes nothing, and a capture
//!   whose read ends that way discards what it read.
//! * Sources are marked terminated when the pod is deleted (TTL from then); a previous
//!   instance of a container that restarted is marked when captured (it expires TTL after
//!   the restart, which bounds a crash loop's archive).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::Semaphore;

use super::{ContainerRun, LinePositioner, PodSignal, PodSnapshot};
use crate::config::LogsConfig;
use crate::logs::upstream::{
    RawLine, SourceKey as UpstreamKey, SourceState, SourceStatus, StartAt, StatusReason, UpstreamEvent,
    UpstreamOptions, UpstreamStream,
};
use crate::metrics::Metrics;
use crate::storage::{ArchivedLine, LogArchive, PodMeta, SourceKey, StorageError, now_ms};

/// Opens an upstream log stream (in production [`crate::logs::upstream::PodLogUpstream::stream`]
/// without an admission permit: captures are bounded by [`RecorderConfig::max_concurrent`]).
pub type LogOpener = Arc<dyn Fn(UpstreamKey, UpstreamOptions) -> UpstreamStream + Send + Sync>;

/// Sizing and timing of the recorder.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// How long a terminated pod's logs stay readable (`logs.terminated_log_ttl`).
    pub ttl: Duration,
    /// Lines kept per container instance (`logs.archive_max_lines_per_container`).
    pub max_lines: usize,
    /// Bytes kept per container instance (`logs.archive_max_bytes_per_container`).
    pub max_bytes: usize,
    /// Line length limit of upstream reads (`logs.max_line_length`).
    pub max_line_length: usize,
    /// Captures reading an upstream at the same time (each is one API request).
    pub max_concurrent: usize,
    /// Captures waiting for a slot; beyond this a capture is dropped and counted as
    /// `missed{reason="overloaded"}` (the watch never waits for the archive).
    pub max_pending: usize,
    /// Longest a capture follows a terminating container (graceful termination is 30 s by
    /// default; a stuck stream must not hold a slot forever).
    pub follow_limit: Duration,
    /// How often buffered lines are written while a capture follows.
    pub flush_interval: Duration,
    /// How often expired sources are purged.
    pub purge_interval: Duration,
    /// Lines a tap keeps of a followed stream (its write on deletion is at most this).
    pub tap_lines: usize,
}

impl RecorderConfig {
    /// Settings from the `logs` config section.
    pub fn from_logs(logs: &LogsConfig) -> Self {
        let ttl = logs.terminated_log_ttl;
        Self {
            ttl,
            max_lines: logs.archive_max_lines_per_container.max(1),
            max_bytes: logs.archive_max_bytes_per_container.max(1),
            max_line_length: logs.max_line_length,
            max_concurrent: 8,
            max_pending: 1024,
            follow_limit: Duration::from_secs(15 * 60),
            flush_interval: Duration::from_secs(1),
            // Purge often enough that expiry is at most ~10% late, never busier than 1/s.
            purge_interval: (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            tap_lines: logs.hub_buffer_lines.clamp(1, logs.archive_max_lines_per_container.max(1)),
        }
    }
}

/// `archive_missed` reasons (label values of `kubelens_archive_captures_missed_total`).
pub mod missed {
    /// The pod (and its log) was gone before capture could read it: force deletion, or a
    /// previous instance the kubelet no longer keeps.
    pub const LOGS_GONE: &str = "logs_gone";
    /// The container restarted more than once between two observations: only the latest
    /// previous instance is readable from Kubernetes.
    pub const INSTANCE_GONE: &str = "instance_gone";
    /// Lines beyond the per-container line/byte caps were not kept.
    pub const CAP_REACHED: &str = "cap_reached";
    /// Too many captures were queued.
    pub const OVERLOADED: &str = "overloaded";
    /// The archive refused or failed the write.
    pub const STORAGE_ERROR: &str = "storage_error";
    /// The API server refused the log request (RBAC).
    pub const REFUSED: &str = "refused";
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning only means a panic elsewhere; the maps stay consistent per operation.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What to capture.
#[derive(Debug, Clone)]
struct CaptureJob {
    source: SourceKey,
    upstream: UpstreamKey,
    follow: bool,
    meta: PodMeta,
    created_at_ms: Option<i64>,
    /// Mark terminated right after capture (previous instances).
    mark_now: bool,
}

#[derive(Debug)]
struct PodTrack {
    /// The latest observation: what a deletion seen only through a re-list is planned from.
    last: PodSnapshot,
    restarts: HashMap<String, u32>,
    captured: HashSet<(String, u32)>,
}

impl PodTrack {
    fn new(pod: &PodSnapshot) -> Self {
        Self { last: pod.clone(), restarts: HashMap::new(), captured: HashSet::new() }
    }
}

/// Captures terminated pods' logs into the archive. Cheap to clone.
#[derive(Clone)]
pub struct ArchiveRecorder {
    inner: Arc<Inner>,
}

struct Inner {
    archive: Arc<dyn LogArchive>,
    opener: LogOpener,
    config: RecorderConfig,
    metrics: Metrics,
    pods: Mutex<HashMap<String, PodTrack>>,
    /// uid → deletion time (ms), so captures finishing after the delete mark their source.
    deleted: Mutex<HashMap<String, i64>>,
    taps: Mutex<HashMap<UpstreamKey, Weak<TapShared>>>,
    permits: Arc<Semaphore>,
    pending: AtomicUsize,
}

impl std::fmt::Debug for ArchiveRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveRecorder").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// Most deleted uids remembered (each entry lives `follow_limit`; the bound is a backstop).
const MAX_DELETED: usize = 10_000;

impl ArchiveRecorder {
    /// A recorder writing to `archive`, reading through `opener`.
    pub fn new(archive: Arc<dyn LogArchive>, opener: LogOpener, config: RecorderConfig, metrics: Metrics) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        Self {
            inner: Arc::new(Inner {
                archive,
                opener,
                config,
                metrics,
                pods: Mutex::new(HashMap::new()),
                deleted: Mutex::new(HashMap::new()),
                taps: Mutex::new(HashMap::new()),
                permits,
                pending: AtomicUsize::new(0),
            }),
        }
    }

    /// The archive written to.
    pub fn archive(&self) -> &Arc<dyn LogArchive> {
        &self.inner.archive
    }

    /// The recorder's settings.
    pub fn config(&self) -> &RecorderConfig {
        &self.inner.config
    }

    /// Captures queued or running right now (tests and shutdown wait for 0).
    pub fn in_flight(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Consumes a pod change stream until it ends. Must run inside a tokio runtime (captures
    /// are spawned tasks).
    pub async fn run(self, signals: impl Stream<Item = PodSignal> + Send) {
        let mut signals = std::pin::pin!(signals);
        while let Some(signal) = signals.next().await {
            self.handle(signal);
        }
    }

    /// Purges expired sources every `purge_interval`, forever (spawn it; abort to stop).
    pub async fn purge_loop(self) {
        let mut tick = tokio::time::interval(self.inner.config.purge_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.inner.archive.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(sources = n, "expired archived log sources purged"),
                Err(err) => tracing::warn!(error = %err, "archive purge failed; retrying next tick"),
            }
        }
    }

    /// Reacts to one pod change: decides what to capture and starts it.
    pub fn handle(&self, signal: PodSignal) {
        match signal {
            PodSignal::Observed(pod) => {
                for job in self.plan(&pod) {
                    self.start(job);
                }
            }
            PodSignal::Deleted(mut pod) => {
                // A pod that vanished without a terminating state first (force deletion, or a
                // watch gap): capture whatever Kubernetes still serves.
                pod.deleting = true;
                for job in self.plan(&pod) {
                    self.start(job);
                }
                let now = now_ms();
                {
                    let mut deleted = lock(&self.inner.deleted);
                    let horizon = now - i64::try_from(self.inner.config.follow_limit.as_millis()).unwrap_or(i64::MAX / 2) - 60_000;
                    if deleted.len() >= MAX_DELETED {
                        deleted.retain(|_, at| *at > horizon);
                    }
                    deleted.insert(pod.uid.clone(), now);
                }
                lock(&self.inner.pods).remove(&pod.uid);
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(err) = this.mark_pod(&pod.namespace, &pod.uid, now).await {
                        tracing::warn!(namespace = %pod.namespace, pod = %pod.name, error = %err, "cannot mark archived pod terminated");
                    }
                });
            }
            PodSignal::Listed { namespace, live_uids } => {
                // Pods this process tracked that the list no longer has were deleted during a
                // watch gap (a re-list after an error): their deletion was never signalled.
                // Handle them as deletions now — capture what Kubernetes still serves; what it
                // no longer serves is counted as `missed{reason="logs_gone"}` — and say so.
                let vanished: Vec<PodSnapshot> = {
                    let pods = lock(&self.inner.pods);
                    pods.iter()
                        .filter(|(uid, track)| track.last.namespace == namespace && !live_uids.contains(*uid))
                        .map(|(_, track)| track.last.clone())
                        .collect()
                };
                for pod in vanished {
                    self.inner.metrics.retention_deleted_unseen.inc();
                    tracing::warn!(namespace = %pod.namespace, pod = %pod.name,
                        "pod was deleted while the pod watch was re-listing; capturing what is left of its logs");
                    self.handle(PodSignal::Deleted(pod));
                }
                let this = self.clone();
                tokio::spawn(async move {
                    match this.sweep_orphans(&namespace, &live_uids).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(namespace = %namespace, sources = n, "archived sources of pods deleted unseen marked terminated"),
                        Err(err) => tracing::warn!(namespace = %namespace, error = %err, "archive orphan sweep failed"),
                    }
                });
            }
        }
    }

    /// Marks every archived source of pod `uid` terminated at `at_ms` (TTL from then).
    pub async fn mark_pod(&self, namespace: &str, uid: &str, at_ms: i64) -> Result<usize, StorageError> {
        let sources = self.inner.archive.list_sources(namespace).await?;
        let mut marked = 0;
        for info in sources.iter().filter(|s| s.key.pod_uid == uid) {
            if self.inner.archive.mark_terminated(&info.key, at_ms, self.inner.config.ttl).await? {
                marked += 1;
            }
        }
        Ok(marked)
    }

    /// Marks sources of pods that no longer exist (deleted while no replica watched, e.g.
    /// during a restart): every unmarked source of `namespace` whose pod uid is not in
    /// `live_uids` is marked terminated now. Call after listing the namespace's pods.
    pub async fn sweep_orphans(&self, namespace: &str, live_uids: &HashSet<String>) -> Result<usize, StorageError> {
        let now = now_ms();
        let mut marked = 0;
        for info in self.inner.archive.list_sources(namespace).await? {
            if info.terminated_at_ms.is_none()
                && !live_uids.contains(&info.key.pod_uid)
                && self.inner.archive.mark_terminated(&info.key, now, self.inner.config.ttl).await?
            {
                marked += 1;
            }
        }
        Ok(marked)
    }

    /// The captures `pod` calls for that this process has not started yet.
    fn plan(&self, pod: &PodSnapshot) -> Vec<CaptureJob> {
        let mut pods = lock(&self.inner.pods);
        let track = pods.entry(pod.uid.clone()).or_insert_with(|| PodTrack::new(pod));
        track.last.clone_from(pod);
        let mut jobs = Vec::new();
        for c in &pod.containers {
            let seen = track.restarts.insert(c.name.clone(), c.restart_count);
            // A restart: the previous instance is readable (only the latest one).
            let restarted = seen.map_or(c.restart_count > 0, |before| c.restart_count > before);
            if restarted {
                let before = seen.unwrap_or(c.restart_count.saturating_sub(1));
                for _ in before.saturating_add(1)..c.restart_count {
                    self.inner.metrics.archive_missed.inc(&[missed::INSTANCE_GONE]);
                }
                let instance = c.restart_count - 1;
                if track.captured.insert((c.name.clone(), instance)) {
                    jobs.push(self.job(pod, &c.name, instance, true, false));
                }
            }
            // The current instance: when it ended, or when the pod ends or is going away.
            let due = c.run == ContainerRun::Terminated || pod.is_terminal() || pod.deleting;
            if due && c.run != ContainerRun::Waiting && track.captured.insert((c.name.clone(), c.restart_count)) {
                let follow = c.run == ContainerRun::Running;
                jobs.push(self.job(pod, &c.name, c.restart_count, false, follow));
            }
        }
        jobs
    }

    fn job(&self, pod: &PodSnapshot, container: &str, instance: u32, previous: bool, follow: bool) -> CaptureJob {
        CaptureJob {
            source: SourceKey {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                pod_uid: pod.uid.clone(),
                container: container.to_owned(),
                instance,
            },
            upstream: UpstreamKey {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                container: container.to_owned(),
                previous,
            },
            follow,
            meta: pod.meta(),
            created_at_ms: pod.created_at_ms,
            mark_now: previous,
        }
    }

    fn start(&self, job: CaptureJob) {
        // A viewer's stream already reads this source: let its tap write the lines.
        if !job.upstream.previous
            && let Some(tap) = lock(&self.inner.taps).get(&job.upstream).and_then(Weak::upgrade)
            && lock(&tap.state).instance == job.source.instance
        {
            tracing::debug!(source = %job.source.id(), "capture delegated to the followed stream's tap");
            tap.take_over(job);
            return;
        }
        let pending = self.inner.pending.fetch_add(1, Ordering::AcqRel);
        if pending >= self.inner.config.max_pending {
            self.inner.pending.fetch_sub(1, Ordering::AcqRel);
            self.inner.metrics.archive_missed.inc(&[missed::OVERLOADED]);
            tracing::warn!(source = %job.source.id(), "archive capture queue full; capture dropped");
            return;
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let permit = Arc::clone(&inner.permits).acquire_owned().await;
            let span = tracing::debug_span!("archive_capture", source = %job.source.id(), follow = job.follow);
            tracing::Instrument::instrument(capture(&inner, job), span).await;
            drop(permit);
            inner.pending.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// A tap on a viewer's stream of `key` (the current instance `instance` of a pod). Feed it
    /// every event of that stream; see [`ArchiveTap`].
    pub fn tap(&self, key: UpstreamKey, pod: &PodSnapshot, instance: u32) -> ArchiveTap {
        let shared = Arc::new(TapShared {
            recorder: Arc::downgrade(&self.inner),
            state: Mutex::new(TapState {
                source: SourceKey {
                    namespace: key.namespace.clone(),
                    pod: key.pod.clone(),
                    pod_uid: pod.uid.clone(),
                    container: key.container.clone(),
                    instance,
                },
                meta: pod.meta(),
                created_at_ms: pod.created_at_ms,
                instance,
                positioner: LinePositioner::new(pod.created_at_ms),
                ring: VecDeque::new(),
                owned: None,
                ended: false,
            }),
        });
        if !key.previous {
            lock(&self.inner.taps).insert(key.clone(), Arc::downgrade(&shared));
        }
        ArchiveTap { shared, key }
    }
}

// ---- the capture task ----------------------------------------------------------------------

/// Lines read but not written yet, trimmed to the caps (oldest first out) until the first
/// write; after that, lines beyond the remaining room are dropped (counted as cap_reached).
struct Pending {
    lines: VecDeque<ArchivedLine>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
    written_lines: usize,
    written_bytes: usize,
    flushed_once: bool,
    capped: bool,
}

impl Pending {
    fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines,
            max_bytes,
            written_lines: 0,
            written_bytes: 0,
            flushed_once: false,
            capped: false,
        }
    }

    fn push(&mut self, line: ArchivedLine) {
        let room_lines = self.max_lines.saturating_sub(self.written_lines);
        let room_bytes = self.max_bytes.saturating_sub(self.written_bytes);
        if self.flushed_once {
            if self.lines.len() >= room_lines || self.bytes + line.line.len() > room_bytes {
                self.capped = true;
                return;
            }
        } else {
            while !self.lines.is_empty() && (self.lines.len() >= room_lines || self.bytes + line.line.len() > room_bytes) {
                if let Some(old) = self.lines.pop_front() {
                    self.bytes -= old.line.len();
                }
                self.capped = true;
            }
            if line.line.len() > room_bytes {
                self.capped = true;
                return;
            }
        }
        self.bytes += line.line.len();
        self.lines.push_back(line);
    }
}

/// Lines per `append` call (the archive accepts at most `archive_max_batch_lines`).
const WRITE_BATCH: usize = 1000;

#[derive(Default)]
struct Written {
    stored: u64,
    failed: bool,
    /// The last failure may pass by itself (the store is unreachable, or not open yet).
    retryable: bool,
}

/// How long the last write of a capture keeps retrying a store that is unreachable. At
/// start-up the store opens in the background while the first captures already run (every
/// replica of a rollout starts so), and a database restart takes seconds; the lines wait in
/// memory meanwhile (bounded by the capture's caps and the number of concurrent captures).
const FINAL_WRITE_RETRY_FOR: Duration = Duration::from_secs(60);

async fn write(inner: &Inner, job: &CaptureJob, pending: &mut Pending, totals: &mut Written) {
    while !pending.lines.is_empty() {
        let n = pending.lines.len().min(WRITE_BATCH);
        let batch: Vec<ArchivedLine> = pending.lines.iter().take(n).cloned().collect();
        let bytes: usize = batch.iter().map(|l| l.line.len()).sum();
        match inner.archive.append(&job.source, &job.meta, &batch).await {
            Ok(outcome) => {
                pending.lines.drain(..n);
                pending.bytes -= bytes;
                pending.written_lines += n;
                pending.written_bytes += bytes;
                pending.flushed_once = true;
                totals.stored += outcome.inserted + outcome.duplicates;
                if outcome.dropped > 0 {
                    pending.capped = true;
                }
                // Bytes newly stored (exact unless the batch mixed new and duplicate lines).
                let inserted_bytes = if outcome.inserted as usize == n {
                    bytes as u64
                } else {
                    (bytes as u64).saturating_mul(outcome.inserted) / (n as u64).max(1)
                };
                inner.metrics.archive_bytes.add(inserted_bytes);
            }
            Err(err) => {
                // Kept for the next flush; the final write retries (`write_final`).
                tracing::warn!(source = %job.source.id(), error = %err, "archive write failed");
                totals.failed = true;
                totals.retryable = err.is_transient();
                return;
            }
        }
    }
    totals.failed = false;
}

/// Attempts of a capture that read nothing while the pod still existed (a kubelet that has
/// not flushed the log yet, a transient API error); an empty log is recorded after the last.
const EMPTY_ATTEMPTS: u32 = 3;

async fn capture(inner: &Inner, job: CaptureJob) {
    for attempt in 1..=EMPTY_ATTEMPTS {
        let retry = attempt < EMPTY_ATTEMPTS;
        if capture_once(inner, &job, retry).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500) * attempt).await;
    }
}

/// One read of the source; false when it read nothing and `retry_empty` asks for another try.
async fn capture_once(inner: &Inner, job: &CaptureJob, retry_empty: bool) -> bool {
    let config = &inner.config;
    let options = UpstreamOptions {
        start: StartAt::Tail(u32::try_from(config.max_lines).unwrap_or(u32::MAX)),
        follow: job.follow,
        max_line_length: config.max_line_length,
        ..UpstreamOptions::default()
    };
    let mut stream = (inner.opener)(job.upstream.clone(), options);
    let mut positioner = LinePositioner::new(job.created_at_ms);
    let mut pending = Pending::new(config.max_lines, config.max_bytes);
    let mut totals = Written::default();
    let mut seen = 0u64;
    let mut end: Option<StatusReason> = None;
    let deadline = tokio::time::sleep(config.follow_limit);
    tokio::pin!(deadline);
    let mut flush = tokio::time::interval(config.flush_interval);
    flush.tick().await;
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(UpstreamEvent::Line(raw)) => {
                    seen += 1;
                    pending.push(archived(&mut positioner, raw));
                }
                Some(UpstreamEvent::Status(status)) => {
                    if let Some(reason) = instance_end(&status) {
                        end = Some(reason);
                        break;
                    }
                }
                Some(UpstreamEvent::CaughtUp) => {}
                None => break,
            },
            _ = flush.tick(), if job.follow => write(inner, job, &mut pending, &mut totals).await,
            () = &mut deadline => {
                tracing::warn!(source = %job.source.id(), "capture follow limit reached; keeping what was read");
                break;
            }
        }
    }
    drop(stream);
    if end == Some(StatusReason::Hidden) {
        // The policy hides the pod now: nothing more of it goes into the archive.
        tracing::debug!(source = %job.source.id(), "pod hidden by the policy; capture discarded");
        return true;
    }
    let gone = matches!(end, Some(StatusReason::Deleted | StatusReason::NoPreviousInstance | StatusReason::NoSuchContainer | StatusReason::Refused));
    if seen == 0 && retry_empty && !gone {
        tracing::debug!(source = %job.source.id(), "capture read nothing; retrying");
        return false;
    }
    write_final(inner, job, &mut pending, &mut totals).await;
    finish(inner, job, seen, end, &pending, &totals).await;
    true
}

/// The last write of a capture: retried with backoff for up to [`FINAL_WRITE_RETRY_FOR`] while
/// the store is unreachable (writes are idempotent: positions come from the log).
async fn write_final(inner: &Inner, job: &CaptureJob, pending: &mut Pending, totals: &mut Written) {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        write(inner, job, pending, totals).await;
        if !totals.failed || !totals.retryable || started.elapsed() + delay > FINAL_WRITE_RETRY_FOR {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(8));
    }
}

/// The reason the followed instance's log is complete, if `status` says so.
fn instance_end(status: &SourceStatus) -> Option<StatusReason> {
    match (status.state, status.reason) {
        (SourceState::Ended, reason) => Some(reason),
        // The instance exited and another one will start: its log is complete.
        (SourceState::Waiting, StatusReason::ExitedWillRestart) => Some(StatusReason::ExitedWillRestart),
        // Never read a following instance into this one's source.
        (SourceState::Streaming, StatusReason::Restarted) => Some(StatusReason::Restarted),
        _ => None,
    }
}

fn archived(positioner: &mut LinePositioner, raw: RawLine) -> ArchivedLine {
    let ts_ns = raw.position.ts.timestamp_nanos_opt().unwrap_or(0).max(0);
    ArchivedLine { position: positioner.next(ts_ns), timestamp_ns: ts_ns, line: raw.text.into_bytes(), truncated: raw.truncated }
}

async fn finish(inner: &Inner, job: &CaptureJob, seen: u64, end: Option<StatusReason>, pending: &Pending, totals: &Written) {
    let metrics = &inner.metrics;
    if totals.failed {
        metrics.archive_missed.inc(&[missed::STORAGE_ERROR]);
        return;
    }
    if seen == 0 {
        match end {
            Some(StatusReason::Deleted | StatusReason::NoPreviousInstance | StatusReason::NoSuchContainer) => {
                tracing::warn!(source = %job.source.id(), "logs were gone before they could be captured");
                metrics.archive_missed.inc(&[missed::LOGS_GONE]);
                return;
            }
            Some(StatusReason::Refused) => {
                metrics.archive_missed.inc(&[missed::REFUSED]);
                return;
            }
            // An instance that wrote nothing: record the (empty) source, so the pod is listed.
            _ => {
                if let Err(err) = inner.archive.append(&job.source, &job.meta, &[]).await {
                    tracing::warn!(source = %job.source.id(), error = %err, "archive write failed");
                    metrics.archive_missed.inc(&[missed::STORAGE_ERROR]);
                    return;
                }
            }
        }
    }
    if pending.capped {
        metrics.archive_missed.inc(&[missed::CAP_REACHED]);
    }
    metrics.archive_captured.inc();
    tracing::debug!(source = %job.source.id(), lines = totals.stored, "container log archived");
    mark_if_due(inner, &job.source, job.mark_now).await;
}

/// Marks a source terminated when its pod is known deleted (or right away for a previous
/// instance).
async fn mark_if_due(inner: &Inner, source: &SourceKey, now: bool) {
    let at = if now { Some(now_ms()) } else { lock(&inner.deleted).get(&source.pod_uid).copied() };
    if let Some(at) = at
        && let Err(err) = inner.archive.mark_terminated(source, at, inner.config.ttl).await
    {
        tracing::warn!(source = %source.id(), error = %err, "cannot mark archived source terminated");
    }
}

// ---- taps on followed streams ---------------------------------------------------------------

/// Watches a viewer's log stream so its lines need not be fetched again for the archive.
///
/// Feed it every event of the stream ([`ArchiveTap::observe`]). It keeps the last
/// [`RecorderConfig::tap_lines`] lines in memory (nothing is written while the pod lives).
/// It writes them — and every later line — to the archive when
/// * the recorder wants to capture this source (the pod is terminating or ended): the tap
///   takes over the capture instead of a second upstream request, or
/// * the stream ends because the pod was deleted or the container exited: a force-deleted
///   pod keeps the tail its viewer saw, even though Kubernetes no longer serves its log.
///
/// Dropped before its stream ended while it owned a capture, it hands the capture back to
/// the recorder (one upstream; overlapping lines are deduplicated by position).
#[derive(Debug)]
pub struct ArchiveTap {
    shared: Arc<TapShared>,
    key: UpstreamKey,
}

struct TapShared {
    recorder: Weak<Inner>,
    state: Mutex<TapState>,
}

impl std::fmt::Debug for TapShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapShared").finish_non_exhaustive()
    }
}

struct TapState {
    source: SourceKey,
    meta: PodMeta,
    created_at_ms: Option<i64>,
    instance: u32,
    /// Positions the current instance's lines in stream order (same rule as captures).
    positioner: LinePositioner,
    /// The last lines of the current instance, in order (bounded by `tap_lines`).
    ring: VecDeque<ArchivedLine>,
    /// A capture the recorder delegated to this tap.
    owned: Option<CaptureJob>,
    ended: bool,
}

impl TapShared {
    fn take_over(self: &Arc<Self>, job: CaptureJob) {
        let flush = {
            let mut state = lock(&self.state);
            state.owned = Some(job);
            std::mem::take(&mut state.ring)
        };
        // Counts as the capture (and marks the source if the pod is already deleted);
        // later lines are appended as they come.
        self.write_lines(flush, true);
    }

    /// Writes `lines` of the current instance in a background task.
    fn write_lines(self: &Arc<Self>, lines: VecDeque<ArchivedLine>, final_write: bool) {
        let Some(inner) = self.recorder.upgrade() else { return };
        let (source, meta, created) = {
            let state = lock(&self.state);
            (state.source.clone(), state.meta.clone(), state.created_at_ms)
        };
        tokio::spawn(async move {
            let job = CaptureJob {
                upstream: UpstreamKey {
                    namespace: source.namespace.clone(),
                    pod: source.pod.clone(),
                    container: source.container.clone(),
                    previous: false,
                },
                source,
                follow: false,
                meta,
                created_at_ms: created,
                mark_now: false,
            };
            let mut pending = Pending::new(inner.config.max_lines, inner.config.max_bytes);
            let seen = lines.len() as u64;
            for line in lines {
                pending.push(line);
            }
            let mut totals = Written::default();
            write(&inner, &job, &mut pending, &mut totals).await;
            if final_write {
                finish(&inner, &job, seen, None, &pending, &totals).await;
            } else if totals.failed {
                inner.metrics.archive_missed.inc(&[missed::STORAGE_ERROR]);
            }
        });
    }
}

impl ArchiveTap {
    /// Records one event of the followed stream.
    pub fn observe(&self, event: &UpstreamEvent) {
        let max = self.shared.recorder.upgrade().map_or(1, |r| r.config.tap_lines);
        match event {
            UpstreamEvent::Line(raw) => {
                let mut state = lock(&self.shared.state);
                let line = archived(&mut state.positioner, raw.clone());
                if state.owned.is_some() {
                    drop(state);
                    // Captured: every line goes to the archive (one small append each;
                    // the pod is terminating, so this is its last output).
                    self.shared.write_lines(VecDeque::from([line]), false);
                    return;
                }
                if state.ring.len() >= max {
                    state.ring.pop_front();
                }
                state.ring.push_back(line);
            }
            UpstreamEvent::CaughtUp => {}
            UpstreamEvent::Status(status) => match instance_end(status) {
                Some(StatusReason::Restarted) => {
                    // A new instance follows: the old one's capture (if due) is the
                    // recorder's previous-instance capture; start over for the new one.
                    let mut state = lock(&self.shared.state);
                    state.instance = state.instance.saturating_add(1);
                    state.source.instance = state.instance;
                    state.positioner = LinePositioner::new(state.created_at_ms);
                    state.ring.clear();
                    state.owned = None;
                }
                Some(reason) => {
                    let lines = {
                        let mut state = lock(&self.shared.state);
                        state.ended = true;
                        let owned = state.owned.take().is_some();
                        // A stream ended because the pod became hidden writes nothing (and
                        // neither does the capture it owned, from now on).
                        let keep = !owned && matches!(reason, StatusReason::Deleted | StatusReason::Exited);
                        let ring = std::mem::take(&mut state.ring);
                        // An owned capture already wrote every line as it came.
                        keep.then_some(ring)
                    };
                    if let Some(lines) = lines {
                        self.shared.write_lines(lines, true);
                        if reason == StatusReason::Deleted
                            && let Some(inner) = self.shared.recorder.upgrade()
                        {
                            // The pod is gone: its sources expire TTL from now even if the
                            // delete event reaches this replica late (or never).
                            let now = now_ms();
                            lock(&inner.deleted).entry(self.shared.state_uid()).or_insert(now);
                        }
                    }
                }
                None => {}
            },
        }
    }
}

impl TapShared {
    fn state_uid(&self) -> String {
        lock(&self.state).source.pod_uid.clone()
    }
}

impl Drop for ArchiveTap {
    fn drop(&mut self) {
        let Some(inner) = self.shared.recorder.upgrade() else { return };
        {
            let mut taps = lock(&inner.taps);
            if taps.get(&self.key).is_some_and(|w| w.ptr_eq(&Arc::downgrade(&self.shared))) {
                taps.remove(&self.key);
            }
        }
        let job = {
            let mut state = lock(&self.shared.state);
            let pod_deleted = lock(&inner.deleted).contains_key(&state.source.pod_uid);
            // After the pod's deletion the tap already wrote everything there will be.
            if state.ended || pod_deleted { None } else { state.owned.take() }
        };
        if let Some(job) = job {
            // The viewer left before the source ended: the recorder finishes the capture.
            ArchiveRecorder { inner }.start(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::upstream::LinePosition;
    use crate::retention::ContainerSnapshot;
    use crate::storage::memory::MemoryStore;
    use crate::storage::{LineQuery, StoreLimits};
    use chrono::{DateTime, Utc};
    use std::collections::BTreeMap;

    fn raw(sec: i64, text: &str) -> UpstreamEvent {
        let ts = DateTime::<Utc>::from_timestamp(1_769_767_200 + sec, 0).unwrap();
        UpstreamEvent::Line(RawLine { position: LinePosition { ts, index: 0 }, text: text.into(), truncated: false })
    }

    /// An opener serving fixed scripts per (pod, container, previous) and counting opens.
    #[derive(Clone, Default)]
    struct Script {
        logs: Arc<Mutex<HashMap<UpstreamKey, Vec<UpstreamEvent>>>>,
        opens: Arc<AtomicUsize>,
    }

    impl Script {
        fn set(&self, pod: &str, container: &str, previous: bool, events: Vec<UpstreamEvent>) {
            let key = UpstreamKey { namespace: "team-a".into(), pod: pod.into(), container: container.into(), previous };
            lock(&self.logs).insert(key, events);
        }
        fn opener(&self) -> LogOpener {
            let this = self.clone();
            Arc::new(move |key, options| {
                this.opens.fetch_add(1, Ordering::SeqCst);
                let mut events = lock(&this.logs).get(&key).cloned().unwrap_or_else(|| {
                    vec![UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Deleted))]
                });
                if let StartAt::Tail(n) = options.start {
                    let lines: Vec<usize> =
                        events.iter().enumerate().filter(|(_, e)| matches!(e, UpstreamEvent::Line(_))).map(|(i, _)| i).collect();
                    let cut = lines.len().saturating_sub(n as usize);
                    let drop_idx: HashSet<usize> = lines[..cut].iter().copied().collect();
                    events = events.into_iter().enumerate().filter(|(i, _)| !drop_idx.contains(i)).map(|(_, e)| e).collect();
                }
                futures::stream::iter(events).boxed()
            })
        }
    }

    fn pod(uid: &str, phase: &str, deleting: bool, containers: &[(&str, u32, ContainerRun)]) -> PodSnapshot {
        PodSnapshot {
            namespace: "team-a".into(),
            name: "job-x".into(),
            uid: uid.into(),
            created_at_ms: Some(1_769_767_200_000),
            phase: Some(phase.into()),
            deleting,
            node: None,
            app: Some(("Job".into(), "job".into())),
            labels: BTreeMap::new(),
            app_labels: None,
            containers: containers
                .iter()
                .map(|(n, r, run)| ContainerSnapshot { name: (*n).into(), restart_count: *r, run: *run })
                .collect(),
        }
    }

    fn recorder(script: &Script, max_lines: usize) -> (ArchiveRecorder, Arc<MemoryStore>, Metrics) {
        let store = Arc::new(MemoryStore::new(StoreLimits::default()));
        let metrics = Metrics::new();
        let mut config = RecorderConfig::from_logs(&LogsConfig::default());
        config.max_lines = max_lines;
        config.ttl = Duration::from_secs(60);
        let rec = ArchiveRecorder::new(store.clone(), script.opener(), config, metrics.clone());
        (rec, store, metrics)
    }

    async fn idle(rec: &ArchiveRecorder) {
        // Up to 10 s: captures are spawned tasks, slow on a loaded machine.
        for _ in 0..2000 {
            if rec.in_flight() == 0 {
                // Let spawned mark/tap tasks run too.
                for _ in 0..50 {
                    tokio::task::yield_now().await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("captures did not finish");
    }

    fn key(uid: &str, container: &str, instance: u32) -> SourceKey {
        SourceKey { namespace: "team-a".into(), pod: "job-x".into(), pod_uid: uid.into(), container: container.into(), instance }
    }

    async fn texts(store: &MemoryStore, key: &SourceKey) -> Vec<String> {
        store.read(key, LineQuery::after(None, 1000)).await.unwrap().into_iter().map(|l| String::from_utf8(l.line).unwrap()).collect()
    }

    #[tokio::test]
    async fn completed_pod_is_captured_once_with_the_newest_lines_and_marked_on_delete() {
        let script = Script::default();
        let events: Vec<_> = (0..10).map(|i| raw(i, &format!("l{i}"))).collect();
        script.set("job-x", "main", false, events);
        let (rec, store, metrics) = recorder(&script, 4);
        let done = pod("u1", "Succeeded", false, &[("main", 0, ContainerRun::Terminated)]);
        rec.handle(PodSignal::Observed(done.clone()));
        rec.handle(PodSignal::Observed(done.clone()));
        idle(&rec).await;
        assert_eq!(script.opens.load(Ordering::SeqCst), 1, "one capture per instance");
        assert_eq!(texts(&store, &key("u1", "main", 0)).await, ["l6", "l7", "l8", "l9"], "the newest lines within the cap");
        assert_eq!(metrics.archive_captured.get(), 1);
        let info = store.list_sources("team-a").await.unwrap();
        assert_eq!(info[0].terminated_at_ms, None, "still exists: not marked");
        rec.handle(PodSignal::Deleted(done));
        idle(&rec).await;
        let info = store.list_sources("team-a").await.unwrap();
        assert!(info[0].terminated_at_ms.is_some() && info[0].expires_at_ms.is_some());
        assert_eq!(script.opens.load(Ordering::SeqCst), 1, "deletion of a captured pod reads nothing again");
    }

    #[tokio::test]
    async fn restarts_capture_the_previous_instance_and_count_skipped_ones() {
        let script = Script::default();
        script.set("job-x", "app", true, vec![raw(1, "crash 1"), raw(2, "panic")]);
        let (rec, store, metrics) = recorder(&script, 100);
        rec.handle(PodSignal::Observed(pod("u2", "Running", false, &[("app", 0, ContainerRun::Running)])));
        idle(&rec).await;
        assert_eq!(script.opens.load(Ordering::SeqCst), 0, "a running pod is not captured");
        rec.handle(PodSignal::Observed(pod("u2", "Running", false, &[("app", 1, ContainerRun::Running)])));
        idle(&rec).await;
        assert_eq!(texts(&store, &key("u2", "app", 0)).await, ["crash 1", "panic"]);
        let info = store.list_sources("team-a").await.unwrap();
        assert!(info[0].expires_at_ms.is_some(), "previous instances expire TTL after the restart");
        rec.handle(PodSignal::Observed(pod("u2", "Running", false, &[("app", 3, ContainerRun::Running)])));
        idle(&rec).await;
        assert_eq!(metrics.archive_missed.get(&[missed::INSTANCE_GONE]), 1, "instance 1 was never readable");
        assert!(store.list_sources("team-a").await.unwrap().iter().any(|s| s.key.instance == 2));
    }

    /// An archive whose first `fail` appends answer `Unavailable` (a store still opening).
    #[derive(Debug)]
    struct Flaky {
        store: Arc<MemoryStore>,
        fail: std::sync::atomic::AtomicU32,
    }

    impl LogArchive for Flaky {
        fn append<'a>(
            &'a self,
            source: &'a SourceKey,
            meta: &'a crate::storage::PodMeta,
            lines: &'a [ArchivedLine],
        ) -> crate::storage::StoreFuture<'a, crate::storage::AppendOutcome> {
            if self.fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Box::pin(async { Err(crate::storage::StorageError::Unavailable("not connected yet".into())) });
            }
            self.store.append(source, meta, lines)
        }
        fn read<'a>(&'a self, source: &'a SourceKey, query: LineQuery) -> crate::storage::StoreFuture<'a, Vec<ArchivedLine>> {
            self.store.read(source, query)
        }
        fn list_sources<'a>(&'a self, namespace: &'a str) -> crate::storage::StoreFuture<'a, Vec<crate::storage::SourceInfo>> {
            self.store.list_sources(namespace)
        }
        fn mark_terminated<'a>(&'a self, source: &'a SourceKey, at_ms: i64, ttl: Duration) -> crate::storage::StoreFuture<'a, bool> {
            self.store.mark_terminated(source, at_ms, ttl)
        }
        fn purge_expired(&self) -> crate::storage::StoreFuture<'_, u64> {
            LogArchive::purge_expired(&*self.store)
        }
        fn ping(&self) -> crate::storage::StoreFuture<'_, ()> {
            LogArchive::ping(&*self.store)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_capture_waits_for_a_store_that_is_not_open_yet() {
        let script = Script::default();
        script.set("job-x", "main", false, vec![raw(1, "early"), raw(2, "line")]);
        let store = Arc::new(MemoryStore::new(StoreLimits::default()));
        let flaky = Arc::new(Flaky { store: store.clone(), fail: std::sync::atomic::AtomicU32::new(4) });
        let metrics = Metrics::new();
        let config = RecorderConfig::from_logs(&LogsConfig::default());
        let rec = ArchiveRecorder::new(flaky, script.opener(), config, metrics.clone());
        rec.handle(PodSignal::Observed(pod("u9", "Succeeded", false, &[("main", 0, ContainerRun::Terminated)])));
        idle(&rec).await;
        assert_eq!(texts(&store, &key("u9", "main", 0)).await, ["early", "line"], "written once the store answers");
        assert_eq!(metrics.archive_captured.get(), 1);
        assert_eq!(metrics.archive_missed.get(&[missed::STORAGE_ERROR]), 0);
    }

    #[tokio::test]
    async fn force_deleted_pod_whose_log_is_gone_is_counted() {
        let script = Script::default();
        let (rec, store, metrics) = recorder(&script, 100);
        rec.handle(PodSignal::Observed(pod("u3", "Running", false, &[("app", 0, ContainerRun::Running)])));
        rec.handle(PodSignal::Deleted(pod("u3", "Running", false, &[("app", 0, ContainerRun::Running)])));
        idle(&rec).await;
        assert_eq!(metrics.archive_missed.get(&[missed::LOGS_GONE]), 1);
        assert!(store.list_sources("team-a").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_tap_keeps_the_tail_of_a_pod_deleted_while_followed_and_replaces_a_second_fetch() {
        let script = Script::default();
        let (rec, store, metrics) = recorder(&script, 100);
        let running = pod("u4", "Running", false, &[("app", 0, ContainerRun::Running)]);
        let key4 = UpstreamKey { namespace: "team-a".into(), pod: "job-x".into(), container: "app".into(), previous: false };
        let tap = rec.tap(key4.clone(), &running, 0);
        for i in 0..5 {
            tap.observe(&raw(i, &format!("t{i}")));
        }
        // Terminating: the recorder delegates to the tap instead of opening an upstream.
        rec.handle(PodSignal::Observed(pod("u4", "Running", true, &[("app", 0, ContainerRun::Running)])));
        tap.observe(&raw(6, "last words"));
        tap.observe(&UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Deleted)));
        rec.handle(PodSignal::Deleted(running));
        idle(&rec).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(script.opens.load(Ordering::SeqCst), 0, "no second fetch");
        assert_eq!(texts(&store, &key("u4", "app", 0)).await, ["t0", "t1", "t2", "t3", "t4", "last words"]);
        assert_eq!(metrics.archive_captured.get(), 1);
        assert!(store.list_sources("team-a").await.unwrap()[0].terminated_at_ms.is_some());
        drop(tap);
        // A viewer that just disconnects from a live pod writes nothing.
        let live = pod("u5", "Running", false, &[("app", 0, ContainerRun::Running)]);
        let tap = rec.tap(key4, &live, 0);
        tap.observe(&raw(1, "x"));
        drop(tap);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(store.list_sources("team-a").await.unwrap().iter().all(|s| s.key.pod_uid != "u5"));
    }

    #[tokio::test]
    async fn a_pod_deleted_during_a_watch_gap_is_captured_from_the_relist_or_counted() {
        let script = Script::default();
        script.set("job-x", "app", false, vec![raw(1, "still served"), raw(2, "by the kubelet")]);
        let (rec, store, metrics) = recorder(&script, 100);
        let running = pod("u7", "Running", false, &[("app", 0, ContainerRun::Running)]);
        let mut other_ns = pod("u8", "Running", false, &[("app", 0, ContainerRun::Running)]);
        other_ns.namespace = "team-b".into();
        rec.handle(PodSignal::Observed(running));
        rec.handle(PodSignal::Observed(other_ns));
        idle(&rec).await;
        // The watch failed, the pod was deleted meanwhile, the re-list does not have it.
        rec.handle(PodSignal::Listed { namespace: "team-a".into(), live_uids: HashSet::new() });
        idle(&rec).await;
        assert_eq!(texts(&store, &key("u7", "app", 0)).await, ["still served", "by the kubelet"]);
        assert_eq!(metrics.retention_deleted_unseen.get(), 1, "only team-a's pod vanished");
        assert!(store.list_sources("team-a").await.unwrap()[0].terminated_at_ms.is_some(), "marked: its TTL runs");
        // A pod whose log was gone as well is counted as missed, never dropped silently.
        let mut gone = pod("u9", "Running", false, &[("main", 0, ContainerRun::Running)]);
        gone.name = "gone".into();
        rec.handle(PodSignal::Observed(gone));
        rec.handle(PodSignal::Listed { namespace: "team-a".into(), live_uids: HashSet::new() });
        idle(&rec).await;
        assert_eq!(metrics.retention_deleted_unseen.get(), 2);
        assert_eq!(metrics.archive_missed.get(&[missed::LOGS_GONE]), 1);
        // team-b's pod is still tracked: its own re-list without it captures it.
        rec.handle(PodSignal::Listed { namespace: "team-b".into(), live_uids: HashSet::new() });
        idle(&rec).await;
        assert_eq!(metrics.retention_deleted_unseen.get(), 3);
    }

    #[tokio::test]
    async fn sweep_marks_sources_of_pods_that_vanished_unseen() {
        let script = Script::default();
        script.set("job-x", "main", false, vec![raw(1, "x")]);
        let (rec, _store, _) = recorder(&script, 100);
        rec.handle(PodSignal::Observed(pod("u6", "Failed", false, &[("main", 0, ContainerRun::Terminated)])));
        idle(&rec).await;
        assert_eq!(rec.sweep_orphans("team-a", &HashSet::from(["u6".to_owned()])).await.unwrap(), 0);
        assert_eq!(rec.sweep_orphans("team-a", &HashSet::new()).await.unwrap(), 1);
    }
}
