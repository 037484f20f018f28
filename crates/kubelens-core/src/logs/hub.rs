//! Fan-out hub: one upstream Kubernetes log stream per [`SourceKey`], however many viewers.
//!
//! ```text
//!   upstream (1 per key) ──► pump task ──► ring buffer (hub_buffer_lines and hub_buffer_bytes,
//!                                    │                  late-joiner backfill)
//!                                    └──► viewer queues (viewer_queue_lines each, try_send only)
//! ```
//!
//! * The first [`LogHub::subscribe`] for a key calls the caller's opener with a [`StartAt`]
//!   and spawns a pump task (through the caller's [`Spawner`]) that owns the upstream stream.
//!   Later subscribers share it: no second request to the API server.
//! * With a [`LineEncoder`] (the HTTP adapter sets one: the SSE frame of a pod-stream line)
//!   the pump encodes each line **once**, before it is shared, into [`LogLine::encoded`]:
//!   every viewer writes the same `Bytes`, so N viewers cost one encoding, not N.
//! * Every line is pushed into a ring bounded in lines and in bytes (oldest evicted when either
//!   bound is passed; a single line larger than the byte bound is kept alone) and `try_send` to each viewer's
//!   bounded queue. **When a viewer's queue is full** the viewer is cut loose: it still
//!   receives what is queued, then a final [`HubEvent::Lagged`] with the cursor after the
//!   last line it received, and its stream ends; it reconnects with that cursor and loses
//!   nothing. The pump never waits for a viewer, so a slow viewer slows neither the upstream
//!   nor the other viewers.
//! * A late joiner gets its backfill from the ring: the last `n` lines for
//!   [`ResumePoint::Tail`], or, for [`ResumePoint::After`], exactly the lines after its cursor
//!   when the ring still covers that cursor. A cursor older than the ring (or a source whose
//!   ring coverage is unknown) gets a private upstream opened at its cursor, which is exact
//!   but costs one more request (see `docs/log-ids.md`).
//! * When the last viewer leaves, the upstream is dropped after `linger` (dropping it cancels
//!   the Kubernetes request). A viewer that comes back within the linger window reuses it.
//!
//! Locks are `std::sync::Mutex` and are never held across an `.await`; the only waiting is
//! the pump's `select` on the upstream, a wake-up [`Notify`] and (when `linger > 0`) a
//! `tokio::time` sleep.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc};

use super::upstream::{SourceKey, SourceState, SourceStatus, StartAt, StatusReason, UpstreamEvent, UpstreamStream};
use super::{LineId, LogLine, LogSource, SourceCursor};
use crate::config::LogsConfig;

/// Runs the hub's pump tasks. The hub is runtime-agnostic; the caller passes e.g.
/// `Arc::new(|f| { tokio::spawn(f); })`.
pub type Spawner = Arc<dyn Fn(BoxFuture<'static, ()>) + Send + Sync>;

/// Opens the upstream for a key, starting at the given point. Called at most once per
/// shared upstream (and once per private catch-up upstream).
pub type UpstreamOpener = Box<dyn FnOnce(StartAt) -> UpstreamStream + Send>;

/// Encodes a line into its wire form once, in the hub's pump, for every viewer to share
/// (stored in [`LogLine::encoded`]). The hub does not know the wire format: the HTTP adapter
/// supplies it (kubelens-salvo: the whole SSE `log` event of a pod stream).
#[derive(Clone)]
pub struct LineEncoder(Arc<dyn Fn(&LogLine) -> bytes::Bytes + Send + Sync>);

impl LineEncoder {
    /// An encoder calling `encode` once per line.
    pub fn new(encode: impl Fn(&LogLine) -> bytes::Bytes + Send + Sync + 'static) -> Self {
        Self(Arc::new(encode))
    }

    fn encode(&self, line: &LogLine) -> bytes::Bytes {
        (self.0)(line)
    }
}

impl std::fmt::Debug for LineEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineEncoder")
    }
}

/// Hub sizing.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Lines kept per key for backfill and in-ring resume (`logs.hub_buffer_lines`).
    pub buffer_lines: usize,
    /// Bytes of line text and its shared encoding (plus [`LINE_OVERHEAD_BYTES`] per line) kept
    /// per key (`logs.hub_buffer_bytes`): with long lines this bound evicts before the line
    /// bound.
    pub buffer_bytes: usize,
    /// Events queued per viewer before it is lagged (`logs.viewer_queue_lines`).
    pub viewer_queue_lines: usize,
    /// How long an upstream without viewers is kept open (absorbs page reloads and
    /// reconnects). Zero closes at once and uses no timer.
    pub linger: Duration,
    /// Encodes each line once for all viewers (`None`: viewers encode for themselves).
    pub encoder: Option<LineEncoder>,
}

/// What a ring line costs besides its text (the `LogLine`, its `Arc` and the ring slot), as
/// counted against [`HubConfig::buffer_bytes`].
pub const LINE_OVERHEAD_BYTES: usize = 96;

fn ring_cost(line: &LogLine) -> usize {
    line.text.len() + line.encoded.as_ref().map_or(0, bytes::Bytes::len) + LINE_OVERHEAD_BYTES
}

impl HubConfig {
    /// Default linger: long enough for a browser `EventSource` reconnect (retry 2 s).
    pub const DEFAULT_LINGER: Duration = Duration::from_secs(3);

    /// Sizes from the config file.
    pub fn from_logs(logs: &LogsConfig) -> Self {
        Self {
            buffer_lines: logs.hub_buffer_lines.max(1),
            buffer_bytes: logs.hub_buffer_bytes.max(1),
            viewer_queue_lines: logs.viewer_queue_lines.max(1),
            linger: Self::DEFAULT_LINGER,
            encoder: None,
        }
    }

    /// Encodes every line once with `encoder` (see [`LineEncoder`]).
    pub fn with_encoder(mut self, encoder: LineEncoder) -> Self {
        self.encoder = Some(encoder);
        self
    }
}

/// Where a subscriber wants to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePoint {
    /// The last `n` lines, then live.
    Tail(u32),
    /// Exactly the lines after the cursor (from `Last-Event-ID` or `since`), then live.
    After(SourceCursor),
    /// The whole log, then live.
    Beginning,
}

/// What a viewer receives.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// A line (shared: one allocation for all viewers).
    Line(Arc<LogLine>),
    /// A status change of the source.
    Status(SourceStatus),
    /// The source's history has been delivered to this viewer; what follows is live (see
    /// [`UpstreamEvent::CaughtUp`]). A late joiner gets it right after its ring backfill when
    /// the upstream had caught up already.
    CaughtUp,
    /// This viewer fell behind its queue and was cut loose; this is its last item.
    /// Resuming at `resume` loses nothing (`None`: it received no line; start over).
    Lagged {
        /// The cursor after the last line this viewer received.
        resume: Option<SourceCursor>,
    },
}

/// The fan-out hub. Cheap to clone; all clones share the upstreams.
#[derive(Clone)]
pub struct LogHub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHub")
            .field("config", &self.inner.config)
            .field("upstreams_opened", &self.upstreams_opened())
            .finish_non_exhaustive()
    }
}

struct HubInner {
    config: HubConfig,
    spawner: Spawner,
    channels: Mutex<HashMap<SourceKey, Arc<Channel>>>,
    opened: AtomicU64,
    /// Viewers cut loose since the hub was created (shared with every channel).
    lagged: Arc<AtomicU64>,
}

struct Channel {
    key: SourceKey,
    source: Arc<LogSource>,
    state: Mutex<ChannelState>,
    /// Wakes the pump when the viewer count drops to zero.
    wake: Notify,
    shared: bool,
}

struct ChannelState {
    ring: VecDeque<Arc<LogLine>>,
    /// What the ring holds, as counted against `buffer_bytes` ([`ring_cost`]).
    ring_bytes: usize,
    /// The ring holds every line admitted by this cursor (None: unknown yet).
    covers: Option<SourceCursor>,
    /// The ring starts at the log's beginning and nothing was evicted.
    from_beginning: bool,
    status: Option<SourceStatus>,
    /// The upstream sent [`UpstreamEvent::CaughtUp`]: the ring's lines are all history.
    caught_up: bool,
    viewers: Vec<Viewer>,
    next_viewer: u64,
    closed: bool,
    /// The hub's count of viewers cut loose.
    lagged_total: Arc<AtomicU64>,
}

struct Viewer {
    id: u64,
    tx: mpsc::Sender<HubEvent>,
    /// Lines not admitted by this cursor are skipped (cleared after the first admitted line).
    filter: Option<SourceCursor>,
    lagged: Arc<AtomicBool>,
}

fn key_ns(channel: &Channel) -> &str {
    &channel.key.namespace
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the state is
    // plain data that every critical section leaves consistent, so keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LogHub {
    /// A hub spawning its pump tasks with `spawner`.
    pub fn new(config: HubConfig, spawner: Spawner) -> Self {
        Self {
            inner: Arc::new(HubInner {
                config,
                spawner,
                channels: Mutex::new(HashMap::new()),
                opened: AtomicU64::new(0),
                lagged: Arc::new(AtomicU64::new(0)),
            }),
        }
    }

    /// Viewers cut loose (`lagged`) since the hub was created.
    pub fn lagged_viewers(&self) -> u64 {
        self.inner.lagged.load(Ordering::Relaxed)
    }

    /// Upstreams opened since the hub was created (shared and private).
    pub fn upstreams_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// Shared upstreams open right now.
    pub fn active_upstreams(&self) -> usize {
        lock(&self.inner.channels).len()
    }

    /// Viewers of the shared upstream of `key` right now.
    pub fn viewers(&self, key: &SourceKey) -> usize {
        lock(&self.inner.channels).get(key).map_or(0, |c| lock(&c.state).viewers.len())
    }

    /// Subscribes to `key` from `from`. `open` is called (synchronously, inside this call)
    /// only when no shared upstream exists for `key` or the ring cannot serve `from`.
    pub fn subscribe<F>(&self, key: SourceKey, from: ResumePoint, open: F) -> Subscription
    where
        F: FnOnce(StartAt) -> UpstreamStream + Send + 'static,
    {
        let channels = lock(&self.inner.channels);
        if let Some(channel) = channels.get(&key).cloned() {
            let mut state = lock(&channel.state);
            if let Some(backfill) = state.backfill_for(from) {
                let sub = self.attach(&channel, &mut state, from, backfill);
                return sub;
            }
            drop(state);
            drop(channels);
            // The ring cannot serve this cursor: a private upstream, exact from the cursor.
            return self.open_channel(key, from, Box::new(open), false);
        }
        drop(channels);
        self.open_channel(key, from, Box::new(open), true)
    }

    fn open_channel(&self, key: SourceKey, from: ResumePoint, open: UpstreamOpener, shared: bool) -> Subscription {
        let (start, covers, from_beginning) = match from {
            ResumePoint::Tail(n) => (StartAt::Tail(n), None, false),
            ResumePoint::After(c) => (c.to_start_at(), Some(c), false),
            ResumePoint::Beginning => (StartAt::Beginning, None, true),
        };
        let source = LogSource::new(key.pod.clone(), key.container.clone());
        let channel = Arc::new(Channel {
            key: key.clone(),
            source,
            state: Mutex::new(ChannelState {
                ring: VecDeque::new(),
                ring_bytes: 0,
                covers,
                from_beginning,
                status: None,
                caught_up: false,
                viewers: Vec::new(),
                next_viewer: 0,
                closed: false,
                lagged_total: Arc::clone(&self.inner.lagged),
            }),
            wake: Notify::new(),
            shared,
        });
        let sub = {
            let mut state = lock(&channel.state);
            self.attach(&channel, &mut state, from, VecDeque::new())
        };
        if shared {
            let mut channels = lock(&self.inner.channels);
            // Two first subscribers may race between the lookup and here: the later one
            // keeps its own (private) channel rather than replacing the registered one.
            channels.entry(key).or_insert_with(|| Arc::clone(&channel));
        }
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        let upstream = open(start);
        let span = tracing::debug_span!("log_hub_upstream", namespace = %key_ns(&channel), pod = %channel.key.pod, container = %channel.key.container, previous = channel.key.previous, shared);
        let pump = pump(Arc::clone(&channel), Arc::downgrade(&self.inner), upstream, self.inner.config.clone());
        (self.inner.spawner)(Box::pin(tracing::Instrument::instrument(pump, span)));
        sub
    }

    fn attach(
        &self,
        channel: &Arc<Channel>,
        state: &mut ChannelState,
        from: ResumePoint,
        mut backfill: VecDeque<HubEvent>,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(self.inner.config.viewer_queue_lines);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = state.next_viewer;
        state.next_viewer += 1;
        let filter = match from {
            ResumePoint::After(c) => Some(c),
            _ => None,
        };
        if let Some(status) = &state.status {
            backfill.push_front(HubEvent::Status(status.clone()));
        }
        if state.caught_up {
            backfill.push_back(HubEvent::CaughtUp);
        }
        state.viewers.push(Viewer { id, tx, filter, lagged: Arc::clone(&lagged) });
        Subscription {
            backfill,
            rx,
            lagged,
            lagged_sent: false,
            last: None,
            start: filter,
            channel: Arc::clone(channel),
            viewer: id,
        }
    }
}

impl ChannelState {
    /// The ring lines `from` needs, or `None` when the ring cannot serve it exactly.
    fn backfill_for(&self, from: ResumePoint) -> Option<VecDeque<HubEvent>> {
        if self.closed {
            return None;
        }
        let lines: Box<dyn Iterator<Item = &Arc<LogLine>>> = match from {
            ResumePoint::Tail(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                Box::new(self.ring.iter().skip(self.ring.len().saturating_sub(n)))
            }
            ResumePoint::After(c) => {
                if self.covers.is_none_or(|covers| c < covers) {
                    return None;
                }
                // Ring lines are in source order: skip the prefix the client already has.
                let first = self.ring.partition_point(|l| !c.admits(l.ts, l.index));
                Box::new(self.ring.iter().skip(first))
            }
            ResumePoint::Beginning => {
                if !self.from_beginning {
                    return None;
                }
                Box::new(self.ring.iter())
            }
        };
        Some(lines.map(|l| HubEvent::Line(Arc::clone(l))).collect())
    }

    fn push_line(&mut self, line: Arc<LogLine>, config: &HubConfig) {
        if self.covers.is_none() {
            self.covers = Some(SourceCursor { ts: line.ts, skip: line.index });
        }
        let cost = ring_cost(&line);
        // Evict the oldest lines until the new one fits both bounds. An evicted line moves
        // the coverage past it, so a resume id older than the ring still gets an exact
        // private upstream (the same path as for lines evicted by the line bound).
        while !self.ring.is_empty()
            && (self.ring.len() >= config.buffer_lines || self.ring_bytes + cost > config.buffer_bytes)
            && let Some(old) = self.ring.pop_front()
        {
            self.ring_bytes = self.ring_bytes.saturating_sub(ring_cost(&old));
            self.covers = Some(SourceCursor::after(old.id()));
            self.from_beginning = false;
        }
        self.ring_bytes += cost;
        self.ring.push_back(Arc::clone(&line));
        self.viewers.retain_mut(|v| {
            if let Some(f) = v.filter {
                if !f.admits(line.ts, line.index) {
                    return true;
                }
                v.filter = None;
            }
            offer(v, HubEvent::Line(Arc::clone(&line)), &self.lagged_total)
        });
    }

    fn push_caught_up(&mut self) {
        self.caught_up = true;
        self.viewers.retain_mut(|v| offer(v, HubEvent::CaughtUp, &self.lagged_total));
    }

    fn push_status(&mut self, status: SourceStatus) {
        self.status = Some(status.clone());
        self.viewers.retain_mut(|v| offer(v, HubEvent::Status(status.clone()), &self.lagged_total));
    }
}

/// Offers an event to a viewer without waiting; false = remove the viewer.
fn offer(viewer: &mut Viewer, event: HubEvent, lagged_total: &AtomicU64) -> bool {
    match viewer.tx.try_send(event) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            // Cut loose: dropping the sender lets the viewer drain its queue, then end
            // with `Lagged`.
            viewer.lagged.store(true, Ordering::Release);
            lagged_total.fetch_add(1, Ordering::Relaxed);
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

async fn pump(channel: Arc<Channel>, hub: Weak<HubInner>, mut upstream: UpstreamStream, config: HubConfig) {
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let idle = lock(&channel.state).viewers.is_empty();
        if !idle {
            linger = None;
        } else if config.linger.is_zero() || linger.as_ref().is_some_and(|s| s.is_elapsed()) {
            if try_close(&channel, &hub) {
                tracing::debug!("last viewer left; upstream dropped");
                return;
            }
            continue;
        } else if linger.is_none() {
            linger = Some(Box::pin(tokio::time::sleep(config.linger)));
        }
        let lingering = async {
            match linger.as_mut() {
                Some(sleep) => sleep.as_mut().await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = channel.wake.notified() => {}
            () = lingering => {}
            item = upstream.next() => match item {
                Some(UpstreamEvent::Line(raw)) => {
                    let mut line = LogLine::from_raw(raw, Arc::clone(&channel.source));
                    // Outside the lock: viewers being attached need not wait for it.
                    line.encoded = config.encoder.as_ref().map(|e| e.encode(&line));
                    lock(&channel.state).push_line(Arc::new(line), &config);
                }
                Some(UpstreamEvent::Status(status)) => lock(&channel.state).push_status(status),
                Some(UpstreamEvent::CaughtUp) => lock(&channel.state).push_caught_up(),
                None => {
                    let mut state = lock(&channel.state);
                    if state.status.as_ref().is_none_or(|s| s.state != SourceState::Ended) {
                        state.push_status(SourceStatus::new(SourceState::Ended, StatusReason::Dropped));
                    }
                    drop(state);
                    close(&channel, &hub);
                    return;
                }
            },
        }
    }
}

/// Closes the channel if it still has no viewers (checked under the hub lock, so a
/// concurrent subscriber either attached first or will open a new upstream).
fn try_close(channel: &Arc<Channel>, hub: &Weak<HubInner>) -> bool {
    let inner = hub.upgrade();
    let mut channels = inner.as_ref().map(|h| lock(&h.channels));
    let mut state = lock(&channel.state);
    if !state.viewers.is_empty() {
        return false;
    }
    state.closed = true;
    if channel.shared
        && let Some(map) = channels.as_mut()
        && map.get(&channel.key).is_some_and(|c| Arc::ptr_eq(c, channel))
    {
        map.remove(&channel.key);
    }
    true
}

/// The upstream ended: unregister and release every viewer (they drain, then end).
fn close(channel: &Arc<Channel>, hub: &Weak<HubInner>) {
    let inner = hub.upgrade();
    let mut channels = inner.as_ref().map(|h| lock(&h.channels));
    let mut state = lock(&channel.state);
    state.closed = true;
    state.viewers.clear();
    if channel.shared
        && let Some(map) = channels.as_mut()
        && map.get(&channel.key).is_some_and(|c| Arc::ptr_eq(c, channel))
    {
        map.remove(&channel.key);
    }
}

/// One viewer's stream of [`HubEvent`]s: backfill first, then live events. Dropping it
/// unsubscribes (and, for the last viewer, lets the upstream close).
pub struct Subscription {
    backfill: VecDeque<HubEvent>,
    rx: mpsc::Receiver<HubEvent>,
    lagged: Arc<AtomicBool>,
    lagged_sent: bool,
    last: Option<LineId>,
    start: Option<SourceCursor>,
    channel: Arc<Channel>,
    viewer: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("key", &self.channel.key).field("last", &self.last).finish_non_exhaustive()
    }
}

impl Subscription {
    /// The cursor after the last line this subscription yielded (or its start cursor).
    pub fn cursor(&self) -> Option<SourceCursor> {
        self.last.map(SourceCursor::after).or(self.start)
    }

    /// The source (pod, container) of this subscription's lines.
    pub fn source(&self) -> &Arc<LogSource> {
        &self.channel.source
    }

    fn track(&mut self, event: HubEvent) -> HubEvent {
        if let HubEvent::Line(line) = &event {
            self.last = Some(line.id());
        }
        event
    }
}

impl Stream for Subscription {
    type Item = HubEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<HubEvent>> {
        if let Some(event) = self.backfill.pop_front() {
            if self.backfill.is_empty() {
                // Give the backfill's memory back: an idle viewer should cost little.
                self.backfill = VecDeque::new();
            }
            return Poll::Ready(Some(self.track(event)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(self.track(event))),
            Poll::Ready(None) if !self.lagged_sent && self.lagged.load(Ordering::Acquire) => {
                self.lagged_sent = true;
                Poll::Ready(Some(HubEvent::Lagged { resume: self.cursor() }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = lock(&self.channel.state);
        state.viewers.retain(|v| v.id != self.viewer);
        if state.viewers.is_empty() {
            drop(state);
            self.channel.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogTimestamp;
    use crate::logs::upstream::{LinePosition, RawLine};
    use std::sync::atomic::AtomicUsize;

    fn key(pod: &str) -> SourceKey {
        SourceKey { namespace: "ns".into(), pod: pod.into(), container: "app".into(), previous: false }
    }

    fn spawner() -> Spawner {
        Arc::new(|f| {
            tokio::spawn(f);
        })
    }

    fn hub(buffer: usize, queue: usize, linger: Duration) -> LogHub {
        LogHub::new(HubConfig { buffer_lines: buffer, buffer_bytes: usize::MAX, viewer_queue_lines: queue, linger, encoder: None }, spawner())
    }

    fn raw(sec: i64, index: u32, text: &str) -> UpstreamEvent {
        UpstreamEvent::Line(RawLine {
            position: LinePosition { ts: LogTimestamp::from_unix_nanos(sec * 1_000_000_000).into(), index },
            text: text.into(),
            truncated: false,
        })
    }

    /// A fake upstream fed by the test through a bounded channel; records opens, start
    /// points and drops.
    #[derive(Clone, Default)]
    struct Fake {
        opens: Arc<AtomicUsize>,
        drops: Arc<AtomicUsize>,
        starts: Arc<Mutex<Vec<StartAt>>>,
        feeds: Arc<Mutex<Vec<mpsc::Sender<UpstreamEvent>>>>,
    }

    struct DropCount(Arc<AtomicUsize>);
    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Fake {
        fn opener(&self) -> impl FnOnce(StartAt) -> UpstreamStream + Send + 'static {
            let this = self.clone();
            move |start| {
                this.opens.fetch_add(1, Ordering::SeqCst);
                lock(&this.starts).push(start);
                let (tx, rx) = mpsc::channel(100_000);
                lock(&this.feeds).push(tx);
                let guard = DropCount(Arc::clone(&this.drops));
                futures::stream::unfold((rx, guard), |(mut rx, g)| async move { rx.recv().await.map(|e| (e, (rx, g))) })
                    .boxed()
            }
        }
        async fn send(&self, upstream: usize, event: UpstreamEvent) {
            let tx = lock(&self.feeds)[upstream].clone();
            tx.send(event).await.unwrap();
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    async fn texts(sub: &mut Subscription, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap() {
                Some(HubEvent::Line(l)) => out.push(l.text.clone()),
                Some(_) => {}
                None => break,
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn many_viewers_share_one_upstream() {
        let hub = hub(100, 100, Duration::ZERO);
        let fake = Fake::default();
        let mut subs: Vec<_> = (0..50).map(|_| hub.subscribe(key("web"), ResumePoint::Tail(10), fake.opener())).collect();
        assert_eq!(fake.opens.load(Ordering::SeqCst), 1);
        assert_eq!(hub.viewers(&key("web")), 50);
        fake.send(0, raw(1, 0, "a")).await;
        fake.send(0, raw(2, 0, "b")).await;
        for s in &mut subs {
            assert_eq!(texts(s, 2).await, ["a", "b"]);
        }
        // Another key is another upstream.
        let _other = hub.subscribe(key("db"), ResumePoint::Tail(10), fake.opener());
        assert_eq!(hub.upstreams_opened(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn each_line_is_encoded_once_and_every_viewer_shares_the_bytes() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let encoder = LineEncoder::new(move |line| {
            counted.fetch_add(1, Ordering::SeqCst);
            bytes::Bytes::from(format!("<{}>", line.text))
        });
        let config = HubConfig { buffer_lines: 100, buffer_bytes: usize::MAX, viewer_queue_lines: 100, linger: Duration::ZERO, encoder: Some(encoder) };
        let hub = LogHub::new(config, spawner());
        let fake = Fake::default();
        let mut subs: Vec<_> = (0..20).map(|_| hub.subscribe(key("web"), ResumePoint::Tail(10), fake.opener())).collect();
        fake.send(0, raw(1, 0, "a")).await;
        fake.send(0, raw(2, 0, "b")).await;
        settle().await;
        // A late joiner's ring backfill carries the same encoding.
        subs.push(hub.subscribe(key("web"), ResumePoint::Tail(10), fake.opener()));
        let mut seen: Vec<Vec<bytes::Bytes>> = Vec::new();
        for s in &mut subs {
            let mut got = Vec::new();
            while got.len() < 2 {
                if let Some(HubEvent::Line(l)) = tokio::time::timeout(Duration::from_secs(5), s.next()).await.unwrap() {
                    got.push(l.encoded.clone().unwrap());
                }
            }
            seen.push(got);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one encoding per line, not per viewer");
        assert_eq!(&seen[0][0][..], b"<a>");
        for got in &seen {
            // The same allocation: a refcount, not a copy.
            assert_eq!(got[0].as_ptr(), seen[0][0].as_ptr());
            assert_eq!(got[1].as_ptr(), seen[0][1].as_ptr());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_ring_counts_the_shared_encoding_against_its_byte_bound() {
        let encoder = LineEncoder::new(|line| bytes::Bytes::from(line.text.repeat(2)));
        // Room for two lines of text + encoding, not three.
        let bytes = 2 * (3 * 1000 + LINE_OVERHEAD_BYTES) + 10;
        let config = HubConfig { buffer_lines: 1000, buffer_bytes: bytes, viewer_queue_lines: 100, linger: Duration::ZERO, encoder: Some(encoder) };
        let hub = LogHub::new(config, spawner());
        let fake = Fake::default();
        let mut live = hub.subscribe(key("web"), ResumePoint::Tail(10), fake.opener());
        for (sec, text) in [(1, "a"), (2, "b"), (3, "c")] {
            fake.send(0, raw(sec, 0, &text.repeat(1000))).await;
        }
        assert_eq!(texts(&mut live, 3).await.len(), 3);
        let mut late = hub.subscribe(key("web"), ResumePoint::Tail(10), fake.opener());
        fake.send(0, raw(4, 0, "d")).await;
        let got = texts(&mut late, 3).await;
        assert_eq!(got.len(), 3);
        assert!(got[0].starts_with('b') && got[1].starts_with('c') && got[2] == "d", "the oldest line was evicted: {:?}", got.iter().map(|t| &t[..1]).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_viewer_is_lagged_while_fast_one_continues_and_resumes_losslessly() {
        let hub = hub(1000, 4, Duration::ZERO);
        let fake = Fake::default();
        let mut fast = hub.subscribe(key("web"), ResumePoint::Tail(0), fake.opener());
        let mut slow = hub.subscribe(key("web"), ResumePoint::Tail(0), fake.opener());
        let mut got_fast = Vec::new();
        for i in 0..20 {
            fake.send(0, raw(10 + i, 0, &format!("l{i}"))).await;
            settle().await;
            got_fast.extend(texts(&mut fast, 1).await);
        }
        assert_eq!(got_fast.len(), 20, "the fast viewer got every line while the slow one stalled");
        // The slow viewer drains its queue, then gets Lagged with its cursor.
        let mut got_slow = Vec::new();
        let resume = loop {
            match slow.next().await {
                Some(HubEvent::Line(l)) => got_slow.push(l.text.clone()),
                Some(HubEvent::Lagged { resume }) => break resume.unwrap(),
                other => panic!("{other:?}"),
            }
        };
        assert!(slow.next().await.is_none());
        assert_eq!(got_slow, ["l0", "l1", "l2", "l3"]);
        // Reconnecting with the cursor is served from the ring: nothing lost, nothing twice.
        let mut again = hub.subscribe(key("web"), ResumePoint::After(resume), fake.opener());
        got_slow.extend(texts(&mut again, 16).await);
        assert_eq!(got_slow, got_fast);
        assert_eq!(fake.opens.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn late_joiner_gets_backfill_and_status() {
        let hub = hub(5, 100, Duration::ZERO);
        let fake = Fake::default();
        let _first = hub.subscribe(key("web"), ResumePoint::Tail(100), fake.opener());
        fake.send(0, UpstreamEvent::Status(SourceStatus::new(SourceState::Streaming, StatusReason::Connected))).await;
        for i in 0..8 {
            fake.send(0, raw(i, 0, &format!("l{i}"))).await;
        }
        settle().await;
        let mut late = hub.subscribe(key("web"), ResumePoint::Tail(3), fake.opener());
        assert!(matches!(late.next().await, Some(HubEvent::Status(s)) if s.state == SourceState::Streaming));
        assert_eq!(texts(&mut late, 3).await, ["l5", "l6", "l7"]);
        fake.send(0, raw(9, 0, "live")).await;
        assert_eq!(texts(&mut late, 1).await, ["live"]);
        // Asking for more than the ring holds gives what it holds (5 lines).
        let mut greedy = hub.subscribe(key("web"), ResumePoint::Tail(1000), fake.opener());
        assert_eq!(texts(&mut greedy, 5).await, ["l4", "l5", "l6", "l7", "live"]);
        assert_eq!(fake.opens.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn resume_inside_ring_is_exact_and_outside_opens_a_private_upstream() {
        let hub = hub(4, 100, Duration::ZERO);
        let fake = Fake::default();
        let _first = hub.subscribe(key("web"), ResumePoint::Tail(0), fake.opener());
        // Three lines share a timestamp.
        for (sec, idx, t) in [(1, 0, "a"), (2, 0, "b"), (2, 1, "c"), (2, 2, "d"), (3, 0, "e"), (4, 0, "f")] {
            fake.send(0, raw(sec, idx, t)).await;
        }
        settle().await;
        // Ring = c d e f (b evicted); this client has everything up to c.
        let c = SourceCursor::parse_last_event_id("1970-01-01T00:00:02Z~1").unwrap();
        let mut inside = hub.subscribe(key("web"), ResumePoint::After(c), fake.opener());
        assert_eq!(texts(&mut inside, 3).await, ["d", "e", "f"]);
        assert_eq!(fake.opens.load(Ordering::SeqCst), 1);
        // Up to a: older than the ring (b was evicted) -> private upstream from the cursor.
        let a = SourceCursor::parse_last_event_id("1970-01-01T00:00:01Z~0").unwrap();
        let _outside = hub.subscribe(key("web"), ResumePoint::After(a), fake.opener());
        assert_eq!(fake.opens.load(Ordering::SeqCst), 2);
        assert!(matches!(lock(&fake.starts)[1], StartAt::After(p) if p.index == 0));
        assert_eq!(hub.active_upstreams(), 1, "the private upstream is not shared");
    }

    #[tokio::test(start_paused = true)]
    async fn the_ring_is_bounded_in_bytes_and_resume_past_an_evicted_line_stays_exact() {
        // Room for three 1,000-byte lines, though the line bound would keep 1,000 of them.
        let bytes = 3 * (1000 + LINE_OVERHEAD_BYTES);
        let hub = LogHub::new(HubConfig { buffer_lines: 1000, buffer_bytes: bytes, viewer_queue_lines: 100, linger: Duration::ZERO, encoder: None }, spawner());
        let fake = Fake::default();
        let _first = hub.subscribe(key("web"), ResumePoint::Tail(0), fake.opener());
        for i in 0..10 {
            fake.send(0, raw(i, 0, &format!("{i}").repeat(1000))).await;
        }
        settle().await;
        let channel = lock(&hub.inner.channels).get(&key("web")).cloned().unwrap();
        {
            let state = lock(&channel.state);
            assert_eq!(state.ring.len(), 3, "evicted by bytes, not by lines");
            assert!(state.ring_bytes <= bytes);
        }
        // A late joiner asking for everything gets what the byte-bounded ring holds.
        let mut greedy = hub.subscribe(key("web"), ResumePoint::Tail(1000), fake.opener());
        let got: Vec<String> = texts(&mut greedy, 3).await.into_iter().map(|t| t[..1].to_owned()).collect();
        assert_eq!(got, ["7", "8", "9"]);
        assert_eq!(fake.opens.load(Ordering::SeqCst), 1);
        // Inside the ring: served from memory. Before it (line 5 was evicted by bytes): a
        // private upstream from exactly that cursor.
        let inside = SourceCursor::parse_last_event_id("1970-01-01T00:00:07Z~0").unwrap();
        let mut sub = hub.subscribe(key("web"), ResumePoint::After(inside), fake.opener());
        assert_eq!(texts(&mut sub, 2).await.iter().map(|t| t[..1].to_owned()).collect::<Vec<_>>(), ["8", "9"]);
        assert_eq!(fake.opens.load(Ordering::SeqCst), 1);
        let evicted = SourceCursor::parse_last_event_id("1970-01-01T00:00:05Z~0").unwrap();
        let _outside = hub.subscribe(key("web"), ResumePoint::After(evicted), fake.opener());
        assert_eq!(fake.opens.load(Ordering::SeqCst), 2);
        assert!(matches!(lock(&fake.starts)[1], StartAt::After(p) if p.index == 0 && p.ts == LogTimestamp::from_unix_nanos(5_000_000_000).into()));
        // A line larger than the whole bound is kept alone (a late joiner still sees it).
        fake.send(0, raw(20, 0, &"x".repeat(bytes * 2))).await;
        settle().await;
        assert_eq!(lock(&channel.state).ring.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn last_viewer_leaving_drops_the_upstream_after_linger() {
        let hub = hub(10, 10, Duration::from_secs(3));
        let fake = Fake::default();
        let a = hub.subscribe(key("web"), ResumePoint::Tail(0), fake.opener());
        let b = hub.subscribe(key("web"), ResumePoint::Tail(0), fake.opener());
        drop(a);
        settle().await;
        assert_eq!(fake.drops.load(Ordering::SeqCst), 0, "one viewer remains");
        drop(b);
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(fake.drops.load(Ordering::SeqCst), 0, "lingering");
        // A viewer coming back within the linger reuses the upstream.
        let c = hub.subscribe(key("web"), ResumePoint::Tail(0), fake.opener());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!((fake.opens.load(Ordering::SeqCst), fake.drops.load(Ordering::SeqCst)), (1, 0));
        drop(c);
        tokio::time::sleep(Duration::from_secs(4)).await;
        settle().await;
        assert_eq!(fake.drops.load(Ordering::SeqCst), 1, "the upstream (and its request) is gone");
        assert_eq!(hub.active_upstreams(), 0);
        // The next viewer opens a fresh upstream.
        let _d = hub.subscribe(key("web"), ResumePoint::Tail(0), fake.opener());
        assert_eq!(fake.opens.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_end_ends_viewers_with_a_final_status() {
        let hub = hub(10, 10, Duration::ZERO);
        let fake = Fake::default();
        let mut s = hub.subscribe(key("web"), ResumePoint::Tail(0), fake.opener());
        fake.send(0, raw(1, 0, "bye")).await;
        lock(&fake.feeds).clear();
        let mut events = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(5), s.next()).await.unwrap() {
            events.push(e);
        }
        assert!(matches!(events.as_slice(), [HubEvent::Line(_), HubEvent::Status(st)] if st.state == SourceState::Ended));
        assert_eq!(hub.active_upstreams(), 0);
    }
}
