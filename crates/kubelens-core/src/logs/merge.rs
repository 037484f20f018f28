//! App stream merge: many per-source streams in, one timestamp-ordered stream out, with ids
//! that resume the merged stream exactly.
//!
//! Shaped like mini-redis's `StreamMap`: sources are keyed, and the caller adds and removes
//! them at runtime ([`AppLogMerge::insert`], [`AppLogMerge::remove`]) as pods join and leave
//! the app. Like `StreamMap`, polling an empty merge yields `None`; callers that may add
//! sources later keep polling after adding.
//!
//! # Ordering: exact for history, watermark for live lines
//!
//! Lines are emitted in [`MergeKey`] order (timestamp, source tag, index). Sources are
//! ordered, so the oldest buffered line may go as soon as no open source could still send an
//! older one. For each source without a buffered line:
//!
//! * **It has sent something newer** (its cursor is past the candidate): it cannot owe an
//!   older line.
//! * **It is still sending its history** (it has not sent [`HubEvent::CaughtUp`] yet: its
//!   upstream is opening, or its backlog is arriving): the merge *holds* — however long that
//!   takes under load — because every line of that history exists already and may be older.
//!   The hold is bounded by `history_timeout` without any event from that source; then the
//!   source is merged as *behind* (its cursor carried explicitly in ids, so resume stays
//!   exact), a `status` with reason `late` says so, and its lines may arrive out of order.
//! * **It is live and quiet**: a quiet source cannot be told from a slow one, so the line
//!   waits — but only as long as that source could still need to deliver an older line. The
//!   merge learns each source's *delay* (arrival time minus the line's own timestamp: the
//!   kubelet, the API server, the hub and any clock skew between node and replica), as a
//!   maximum that decays slowly ([`DelayEstimate`]). A line stamped `t` is held until
//!   `t + delay + DELAY_MARGIN` of every live, quiet source, never longer than `watermark`
//!   after it arrived; a source that has sent no live line yet gets the whole `watermark`.
//!   Live lines that reach the merge later than that are emitted late, never dropped.
//!
//! So a read of finished or backfilling sources (history, and the backfill of every resumed
//! source up to its cursor) is in exact order; live lines are in order as long as each
//! source's delay stays within what the merge has seen of it (plus the margin), and never
//! wait longer than the watermark.
//!
//! # Bounds
//!
//! Each source buffers at most `max_buffered_per_source` lines. **When a source's buffer is
//! full** the merge stops reading that source (its upstream then backs up into the hub,
//! whose bounded viewer queue eventually cuts it loose with `Lagged`, surfaced here as
//! [`MergedEvent::Lagged`]) and emits the oldest buffered line early, before its watermark
//! expired. Early or late lines are never dropped; they are tracked by the ids below.
//!
//! # Ids
//!
//! Every line carries an [`AppLogId`]: the *frontier* (merge key of the newest line emitted
//! in order) plus an explicit cursor for each source that is *behind* it: one that emitted a
//! line older than the frontier (late), is reconnecting/waiting, was lagged, or joined with
//! a start older than the frontier. A behind source rejoins the frontier when it emits a line
//! newer than the frontier, or after it has been streaming and quiet for a whole watermark
//! window. See `docs/log-ids.md` for guarantees and limits.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use super::hub::HubEvent;
use super::id::{MAX_BEHIND_SEGMENTS, MergeKey};
use super::upstream::{SourceState, SourceStatus, StatusReason};
use super::{AppLogId, LogLine, LogSource, LogTimestamp, SourceCursor};
use crate::config::LogsConfig;

/// Slack added to a source's learned delay before a quieter source's line may go: covers
/// the jitter the estimate has not seen yet (scheduling, a busy API server).
pub const DELAY_MARGIN: Duration = Duration::from_millis(15);

/// How a source's delay estimate forgets a spike: each live line moves it `1/DELAY_DECAY` of
/// the way down to that line's delay (a spike is forgotten over a few hundred lines; a rise
/// is taken at once).
const DELAY_DECAY: i64 = 64;

/// The most a live source's lines have been seen to lag behind their own timestamps
/// (nanoseconds; negative when the node's clock is ahead), decaying slowly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayEstimate(Option<i64>);

impl DelayEstimate {
    /// Takes one live line's delay into account.
    pub fn observe(&mut self, delay_ns: i64) {
        self.0 = Some(match self.0 {
            Some(max) if delay_ns < max => max - (max - delay_ns) / DELAY_DECAY,
            _ => delay_ns,
        });
    }

    /// The estimate, `None` before any live line.
    pub fn get(self) -> Option<i64> {
        self.0
    }
}

/// Merge sizing.
#[derive(Debug, Clone)]
pub struct MergeConfig {
    /// How long a line waits for slower sources at most (`logs.merge_watermark`).
    pub watermark: Duration,
    /// Wait only as long as each quiet source's learned delay needs (`logs.merge_adaptive`;
    /// see "Ordering" in the module docs); `false`: always the whole watermark.
    pub adaptive: bool,
    /// Lines buffered per source before the merge emits early (see module docs).
    pub max_buffered_per_source: usize,
    /// How long the merge holds for a source still sending its history, counted from its last
    /// event (`logs.merge_history_timeout`; see module docs).
    pub history_timeout: Duration,
}

impl MergeConfig {
    /// Default per-source buffer: a second of a 1k lines/s pod plus slack.
    pub const DEFAULT_MAX_BUFFERED: usize = 2048;

    /// From the config file.
    pub fn from_logs(logs: &LogsConfig) -> Self {
        Self {
            watermark: logs.merge_watermark,
            adaptive: logs.merge_adaptive,
            max_buffered_per_source: Self::DEFAULT_MAX_BUFFERED,
            history_timeout: logs.merge_history_timeout,
        }
    }
}

/// What the merged stream yields.
#[derive(Debug, Clone)]
pub enum MergedEvent<K> {
    /// A line, in merge order, with the id that resumes the merged stream after it.
    Line {
        /// The line (pod and container inside).
        line: Arc<LogLine>,
        /// Its resume id.
        id: AppLogId,
    },
    /// A status change of one source.
    Status {
        /// Which source.
        key: K,
        /// Its pod and container.
        source: Arc<LogSource>,
        /// The new status.
        status: SourceStatus,
    },
    /// One source was cut loose by the hub; re-[`insert`](AppLogMerge::insert) it with a
    /// stream starting after `resume` ([`AppLogMerge::resume_cursor`]) and nothing is lost.
    Lagged {
        /// Which source.
        key: K,
        /// Where its new stream must start.
        resume: Option<SourceCursor>,
    },
}

struct Slot<K> {
    key: K,
    source: Arc<LogSource>,
    stream: Option<BoxStream<'static, HubEvent>>,
    /// Buffered lines with when they arrived and their delay (arrival wall time minus the
    /// line's timestamp, nanoseconds).
    buf: VecDeque<(Arc<LogLine>, Instant, i64)>,
    /// After the last line received (dedupes a replaced stream).
    received: Option<SourceCursor>,
    /// After the last line emitted (or the start).
    sent: Option<SourceCursor>,
    behind: bool,
    /// The source sent [`HubEvent::CaughtUp`] (or waits for a container to start, or was
    /// given up on after `history_timeout`): its next lines are live, not history.
    caught_up: bool,
    state: SourceState,
    /// An `ended` status that arrived while lines were still buffered: sent after the last
    /// of them, so a client never sees a source's lines after its end.
    pending_end: Option<SourceStatus>,
    last_activity: Instant,
    /// How late this source's live lines arrive (see "Ordering" in the module docs).
    delay: DelayEstimate,
}

/// Merges per-source [`HubEvent`] streams of one app into ordered [`MergedEvent`]s.
pub struct AppLogMerge<K> {
    config: MergeConfig,
    slots: Vec<Slot<K>>,
    frontier: Option<MergeKey>,
    resume: Option<AppLogId>,
    out: VecDeque<MergedEvent<K>>,
    timer: Option<Pin<Box<Sleep>>>,
    next_poll: usize,
    /// Wall-clock time (ns) and monotonic instant sampled together at creation: arrival times
    /// are measured on the monotonic clock from here, so a wall-clock step cannot fake a delay
    /// (and tests with paused time see the delays they simulate).
    anchor: (i64, Instant),
}

impl<K: std::fmt::Debug> std::fmt::Debug for AppLogMerge<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppLogMerge")
            .field("sources", &self.slots.iter().map(|s| &s.key).collect::<Vec<_>>())
            .field("frontier", &self.frontier)
            .finish_non_exhaustive()
    }
}

impl<K: Clone + PartialEq + Unpin> AppLogMerge<K> {
    /// A merge; `resume` is the client's `Last-Event-ID` (already parsed), if any.
    pub fn new(config: MergeConfig, resume: Option<AppLogId>) -> Self {
        Self {
            config,
            slots: Vec::new(),
            frontier: resume.as_ref().map(|r| r.frontier),
            resume,
            out: VecDeque::new(),
            timer: None,
            next_poll: 0,
            anchor: (LogTimestamp::now().unix_nanos(), Instant::now()),
        }
    }

    /// Where a source must start when the stream resumes from the client's id (`None`
    /// when not resuming: start from the request's `tailLines`/`since`).
    pub fn start_cursor_for(&self, source: &LogSource) -> Option<SourceCursor> {
        self.resume.as_ref().map(|r| r.cursor_for(source.tag))
    }

    /// Where a (re-)inserted stream for `key` must start: after its last received line.
    pub fn resume_cursor(&self, key: &K) -> Option<SourceCursor> {
        self.slots.iter().find(|s| &s.key == key).and_then(|s| s.received)
    }

    /// Number of sources.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True without sources.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds a source (a pod's container joined), or replaces the stream of an existing key
    /// (after [`MergedEvent::Lagged`]; buffered lines and cursors are kept). `start` is where
    /// the stream starts (lines before it are not wanted); `None` = "from now".
    pub fn insert(&mut self, key: K, source: Arc<LogSource>, start: Option<SourceCursor>, stream: BoxStream<'static, HubEvent>) {
        let now = Instant::now();
        if let Some(slot) = self.slots.iter_mut().find(|s| s.key == key) {
            slot.stream = Some(stream);
            // A re-opened stream replays from its cursor: history again until it says so.
            slot.caught_up = false;
            slot.last_activity = now;
            return;
        }
        let behind = match (start, self.frontier) {
            (Some(start), Some(f)) => start < f.cursor_for(source.tag),
            _ => false,
        };
        self.slots.push(Slot {
            key,
            source,
            stream: Some(stream),
            buf: VecDeque::new(),
            received: start,
            sent: start,
            behind,
            caught_up: false,
            // Assume live until the source says otherwise (hub subscriptions start with the
            // current status when one is known).
            state: SourceState::Streaming,
            pending_end: None,
            last_activity: now,
            delay: DelayEstimate::default(),
        });
    }

    /// Removes a source at once (pod left the app). Its buffered lines are dropped; prefer
    /// letting a source end by itself (its `ended` status) when its lines still matter.
    pub fn remove(&mut self, key: &K) {
        self.slots.retain(|s| &s.key != key);
    }

    /// Reads available items from every source into its buffer (statuses go to `out`).
    fn poll_sources(&mut self, cx: &mut Context<'_>) {
        let n = self.slots.len();
        let cap = self.config.max_buffered_per_source.max(1);
        let (anchor_wall, anchor_instant) = self.anchor;
        let since_anchor = i64::try_from(Instant::now().duration_since(anchor_instant).as_nanos()).unwrap_or(i64::MAX);
        let wall_now = anchor_wall.saturating_add(since_anchor);
        for step in 0..n {
            let i = (self.next_poll + step) % n;
            let slot = &mut self.slots[i];
            while slot.buf.len() < cap {
                let Some(stream) = slot.stream.as_mut() else { break };
                match stream.poll_next_unpin(cx) {
                    Poll::Ready(Some(HubEvent::Line(line))) => {
                        if slot.received.is_some_and(|c| !c.admits(line.ts, line.index)) {
                            continue;
                        }
                        slot.received = Some(SourceCursor::after(line.id()));
                        slot.last_activity = Instant::now();
                        let delay = wall_now.saturating_sub(line.ts.unix_nanos());
                        if slot.caught_up {
                            // Only live lines say how late this source is; history is old.
                            slot.delay.observe(delay);
                        }
                        slot.buf.push_back((line, slot.last_activity, delay));
                    }
                    Poll::Ready(Some(HubEvent::CaughtUp)) => {
                        slot.caught_up = true;
                        slot.last_activity = Instant::now();
                    }
                    Poll::Ready(Some(HubEvent::Status(status))) => {
                        slot.state = status.state;
                        slot.last_activity = Instant::now();
                        // A container that has not started has no history to wait for: its
                        // first lines will be new ones.
                        slot.caught_up |= status.state == SourceState::Waiting;
                        if matches!(status.state, SourceState::Reconnecting | SourceState::Waiting) && self.frontier.is_some() {
                            slot.behind = true;
                        }
                        if status.state == SourceState::Ended && !slot.buf.is_empty() {
                            slot.pending_end = Some(status);
                        } else {
                            self.out.push_back(MergedEvent::Status { key: slot.key.clone(), source: slot.source.clone(), status });
                        }
                    }
                    Poll::Ready(Some(HubEvent::Lagged { .. })) => {
                        slot.stream = None;
                        slot.behind |= self.frontier.is_some();
                        self.out.push_back(MergedEvent::Lagged { key: slot.key.clone(), resume: slot.received });
                    }
                    Poll::Ready(None) => {
                        slot.stream = None;
                        slot.state = SourceState::Ended;
                    }
                    Poll::Pending => break,
                }
            }
        }
        self.next_poll = self.next_poll.wrapping_add(1);
        // Ended (not lagged) sources leave once drained.
        self.slots.retain(|s| s.stream.is_some() || !s.buf.is_empty() || s.state != SourceState::Ended);
    }

    /// Sources still sending their history that have been silent for `history_timeout`
    /// stop holding the merge: they join as behind, with a `late` status.
    fn give_up_on_silent_history(&mut self, now: Instant) {
        let timeout = self.config.history_timeout;
        for slot in &mut self.slots {
            if slot.caught_up || slot.stream.is_none() || !slot.buf.is_empty() || slot.last_activity + timeout > now {
                continue;
            }
            tracing::warn!(pod = %slot.source.pod, container = %slot.source.container, ?timeout, "app source sent no history within logs.merge_history_timeout; merging without it");
            slot.caught_up = true;
            slot.behind |= self.frontier.is_some();
            let status = SourceStatus::new(slot.state, StatusReason::Late);
            self.out.push_back(MergedEvent::Status { key: slot.key.clone(), source: slot.source.clone(), status });
        }
    }

    /// The line to emit now, or the instant at which to look again (see "Ordering" in the
    /// module docs).
    fn pick(&self, now: Instant) -> Result<usize, Option<Instant>> {
        let mut best: Option<(usize, MergeKey, Instant, i64)> = None;
        let mut full = false;
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some((line, arrived, delay)) = slot.buf.front() {
                full |= slot.buf.len() >= self.config.max_buffered_per_source;
                let key = MergeKey { ts: line.ts, tag: slot.source.tag, index: line.index };
                if best.is_none_or(|(_, k, _, _)| key < k) {
                    best = Some((i, key, *arrived, *delay));
                }
            }
        }
        let Some((i, key, arrived, line_delay)) = best else { return Err(None) };
        let mut hold_until: Option<Instant> = None;
        // When the last live, quiet source could still deliver a line older than `key`.
        let mut quiet_until: Option<Instant> = None;
        for slot in &self.slots {
            if !slot.buf.is_empty() || slot.stream.is_none() {
                continue;
            }
            // Its next line comes after its cursor, so after `key`: it owes nothing older.
            if slot.received.is_some_and(|c| key < MergeKey { ts: c.ts, tag: slot.source.tag, index: c.skip }) {
                continue;
            }
            if slot.caught_up {
                let until = arrived + self.owed_for(slot, line_delay);
                quiet_until = Some(quiet_until.map_or(until, |q| q.max(until)));
            } else {
                let until = slot.last_activity + self.config.history_timeout;
                hold_until = Some(hold_until.map_or(until, |h| h.min(until)));
            }
        }
        if let Some(until) = hold_until {
            // History first: not even a full buffer jumps ahead of a source's backlog (the
            // full source backs up into the hub instead, which is lossless).
            return Err(Some(until));
        }
        match quiet_until {
            Some(due) if !full && due > now => Err(Some(due)),
            _ => Ok(i),
        }
    }

    /// How long after its arrival a line whose own delay was `line_delay` must wait for the
    /// live, quiet `slot`: until the line's timestamp plus that source's learned delay and
    /// the margin (a line of that source stamped earlier would have arrived by then), at most
    /// the watermark; the whole watermark while the source's delay is unknown.
    fn owed_for(&self, slot: &Slot<K>, line_delay: i64) -> Duration {
        let watermark = self.config.watermark;
        let Some(source_delay) = slot.delay.get().filter(|_| self.config.adaptive) else { return watermark };
        let margin = i64::try_from(DELAY_MARGIN.as_nanos()).unwrap_or(i64::MAX);
        let wait = source_delay.saturating_add(margin).saturating_sub(line_delay);
        Duration::from_nanos(u64::try_from(wait).unwrap_or(0)).min(watermark)
    }

    fn emit(&mut self, i: usize, now: Instant) -> MergedEvent<K> {
        let watermark = self.config.watermark;
        let slot = &mut self.slots[i];
        let Some((line, _, _)) = slot.buf.pop_front() else {
            // `pick` only returns slots with a buffered line.
            return MergedEvent::Lagged { key: slot.key.clone(), resume: slot.received };
        };
        let key = MergeKey { ts: line.ts, tag: slot.source.tag, index: line.index };
        slot.sent = Some(SourceCursor::after(line.id()));
        if slot.buf.is_empty()
            && let Some(status) = slot.pending_end.take()
        {
            // Queued behind this line: `poll_next` returns the line first.
            self.out.push_back(MergedEvent::Status { key: slot.key.clone(), source: slot.source.clone(), status });
        }
        match self.frontier {
            Some(f) if key <= f => slot.behind = true,
            _ => {
                self.frontier = Some(key);
                // A source that announced a drop may still owe lines older than this one
                // (they were buffered before its status arrived): it stays behind until it
                // streams again and catches up.
                slot.behind = slot.stream.is_none() || matches!(slot.state, SourceState::Reconnecting | SourceState::Waiting);
            }
        }
        let frontier = self.frontier.unwrap_or(key);
        let mut behind = Vec::new();
        for s in &mut self.slots {
            if !s.behind {
                continue;
            }
            // Rejoin: streaming, nothing buffered, quiet for a whole window.
            let settled = s.stream.is_some()
                && s.state == SourceState::Streaming
                && s.buf.is_empty()
                && s.last_activity + watermark <= now;
            let live = s.stream.is_some() && !matches!(s.state, SourceState::Reconnecting | SourceState::Waiting);
            let implied = frontier.cursor_for(s.source.tag);
            match s.sent {
                Some(sent) if !settled && sent < implied => behind.push((s.source.tag, sent)),
                // Caught up (or settled) while live: the frontier speaks for it again.
                _ if live => s.behind = false,
                // Not live: it may still owe older lines; keep tracking it.
                _ => {}
            }
        }
        if behind.len() > 1 {
            behind.sort_unstable_by_key(|(t, _)| *t);
            behind.dedup_by_key(|(t, _)| *t);
        }
        if behind.len() > MAX_BEHIND_SEGMENTS {
            // Keep the sources furthest behind; the rest resume from the frontier (limit
            // documented in docs/log-ids.md).
            tracing::warn!(behind = behind.len(), "more sources behind than an id can carry");
            behind.sort_unstable_by_key(|(_, c)| *c);
            behind.truncate(MAX_BEHIND_SEGMENTS);
            behind.sort_unstable_by_key(|(t, _)| *t);
        }
        MergedEvent::Line { line, id: AppLogId { frontier, behind } }
    }
}

impl<K: Clone + PartialEq + Unpin> Stream for AppLogMerge<K> {
    type Item = MergedEvent<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MergedEvent<K>>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.out.pop_front() {
                return Poll::Ready(Some(event));
            }
            this.poll_sources(cx);
            if let Some(event) = this.out.pop_front() {
                return Poll::Ready(Some(event));
            }
            let now = Instant::now();
            this.give_up_on_silent_history(now);
            if let Some(event) = this.out.pop_front() {
                return Poll::Ready(Some(event));
            }
            match this.pick(now) {
                Ok(i) => return Poll::Ready(Some(this.emit(i, now))),
                Err(None) if this.slots.is_empty() => return Poll::Ready(None),
                Err(None) => return Poll::Pending,
                Err(Some(due)) => {
                    let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                    if timer.deadline() != due {
                        timer.as_mut().reset(due);
                    }
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{LineId, LogTimestamp};
    use crate::logs::upstream::StatusReason;
    use proptest::prelude::*;
    use tokio::sync::mpsc;

    fn line(source: &Arc<LogSource>, ms: i64, index: u32) -> Arc<LogLine> {
        Arc::new(LogLine {
            ts: LogTimestamp::from_unix_nanos(1_700_000_000_000_000_000 + ms * 1_000_000),
            index,
            source: source.clone(),
            text: format!("{}@{ms}#{index}", source.pod),
            truncated: false,
            encoded: None,
        })
    }

    /// A source that is live from the start (it has no history).
    fn feed() -> (mpsc::Sender<HubEvent>, BoxStream<'static, HubEvent>) {
        let (tx, stream) = history_feed();
        (tx, futures::stream::iter([HubEvent::CaughtUp]).chain(stream).boxed())
    }

    /// A source that sends history until the test sends `CaughtUp`.
    fn history_feed() -> (mpsc::Sender<HubEvent>, BoxStream<'static, HubEvent>) {
        let (tx, rx) = mpsc::channel(10_000);
        (tx, futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).boxed())
    }

    fn cfg(ms: u64) -> MergeConfig {
        MergeConfig { watermark: Duration::from_millis(ms), adaptive: false, max_buffered_per_source: 100, history_timeout: Duration::from_secs(30) }
    }

    async fn next_line(m: &mut AppLogMerge<&'static str>) -> (String, AppLogId) {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), m.next()).await.unwrap() {
                Some(MergedEvent::Line { line, id }) => return (line.text.clone(), id),
                Some(_) => {}
                None => panic!("merge ended"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn orders_by_timestamp_within_the_watermark() {
        let (a, b) = (LogSource::new("a", "c"), LogSource::new("b", "c"));
        let (ta, sa) = feed();
        let (tb, sb) = feed();
        let mut m = AppLogMerge::new(cfg(250), None);
        m.insert("a", a.clone(), None, sa);
        m.insert("b", b.clone(), None, sb);
        ta.send(HubEvent::Line(line(&a, 20, 0))).await.unwrap();
        ta.send(HubEvent::Line(line(&a, 40, 0))).await.unwrap();
        // b's older line arrives 100 ms later: still inside the window.
        let start = Instant::now();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tb.send(HubEvent::Line(line(&b, 10, 0))).await.unwrap();
            tb.send(HubEvent::Line(line(&b, 30, 0))).await.unwrap();
            tb
        });
        let got: Vec<_> = [next_line(&mut m).await.0, next_line(&mut m).await.0].into();
        assert_eq!(got, ["b@10#0", "a@20#0"]);
        let _tb = late.await.unwrap();
        assert_eq!(next_line(&mut m).await.0, "b@30#0");
        let (text, id) = next_line(&mut m).await;
        assert_eq!(text, "a@40#0");
        assert!(Instant::now() - start >= Duration::from_millis(250), "a quiet source holds lines for the window");
        assert!(id.behind.is_empty());
        assert_eq!(id.frontier.ts, line(&a, 40, 0).ts);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_source_is_tracked_explicitly_in_ids_until_it_catches_up() {
        let (a, b) = (LogSource::new("a", "c"), LogSource::new("b", "c"));
        let (ta, sa) = feed();
        let (tb, sb) = feed();
        let mut m = AppLogMerge::new(cfg(100), None);
        m.insert("a", a.clone(), None, sa);
        m.insert("b", b.clone(), None, sb);
        tb.send(HubEvent::Status(SourceStatus::new(SourceState::Streaming, StatusReason::Connected))).await.unwrap();
        tb.send(HubEvent::Line(line(&b, 0, 0))).await.unwrap();
        assert_eq!(next_line(&mut m).await.0, "b@0#0");
        tb.send(HubEvent::Status(SourceStatus::new(SourceState::Reconnecting, StatusReason::Dropped))).await.unwrap();
        for ms in [1000, 2000, 3000] {
            ta.send(HubEvent::Line(line(&a, ms, 0))).await.unwrap();
        }
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(next_line(&mut m).await.1);
        }
        // While b reconnects, every id names b's own cursor.
        for id in &ids {
            assert_eq!(id.behind, vec![(b.tag, SourceCursor::after(LineId { ts: line(&b, 0, 0).ts, index: 0 }))]);
        }
        // b comes back with its backfill (older than the frontier): emitted late, tracked.
        tb.send(HubEvent::Status(SourceStatus::new(SourceState::Streaming, StatusReason::Resumed))).await.unwrap();
        tb.send(HubEvent::Line(line(&b, 500, 0))).await.unwrap();
        tb.send(HubEvent::Line(line(&b, 600, 0))).await.unwrap();
        let (text, id) = next_line(&mut m).await;
        assert_eq!(text, "b@500#0");
        assert_eq!(id.frontier.ts, line(&a, 3000, 0).ts);
        assert_eq!(id.behind, vec![(b.tag, SourceCursor::after(LineId { ts: line(&b, 500, 0).ts, index: 0 }))]);
        assert_eq!(id.cursor_for(a.tag), id.frontier.cursor_for(a.tag));
        // The last backfill line goes at once (a's cursor is past it: nothing older can
        // come), so b has not been quiet for a window yet and is still tracked explicitly.
        let (text, id) = next_line(&mut m).await;
        assert_eq!(text, "b@600#0");
        assert_eq!(id.behind, vec![(b.tag, SourceCursor::after(LineId { ts: line(&b, 600, 0).ts, index: 0 }))]);
        // b catches up past the frontier: the id is compact again.
        tb.send(HubEvent::Line(line(&b, 4000, 0))).await.unwrap();
        let (_, id) = next_line(&mut m).await;
        assert!(id.behind.is_empty(), "{id}");
        let text = id.to_string();
        assert_eq!(AppLogId::parse(&text).unwrap(), id);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_source_buffer_emits_early_instead_of_growing() {
        let (a, b) = (LogSource::new("a", "c"), LogSource::new("b", "c"));
        let (ta, sa) = feed();
        let (_tb, sb) = feed();
        let mut m = AppLogMerge::new(MergeConfig { watermark: Duration::from_secs(3600), adaptive: false, max_buffered_per_source: 4, history_timeout: Duration::from_secs(30) }, None);
        m.insert("a", a.clone(), None, sa);
        m.insert("b", b, None, sb);
        for ms in 0..10 {
            ta.send(HubEvent::Line(line(&a, ms, 0))).await.unwrap();
        }
        // Without the bound, a one-hour watermark would hold everything.
        for ms in 0..6 {
            assert_eq!(next_line(&mut m).await.0, format!("a@{ms}#0"));
        }
    }

    /// Feeds `sources` (per-source ordered lines, with arrival delays shorter than the
    /// watermark) through a merge, cutting the connection after `cut` lines and resuming
    /// from the id like a client would; the concatenation must equal the uninterrupted
    /// output: no duplicate, no gap, merge order.
    async fn run_with_cut(sources: &[Vec<(i64, u32, u64)>], cut: usize) -> (Vec<String>, Vec<String>) {
        let srcs: Vec<_> = (0..sources.len()).map(|i| LogSource::new(format!("p{i}"), "c")).collect();
        let all: Vec<(MergeKey, String)> = {
            let mut v: Vec<_> = sources
                .iter()
                .enumerate()
                .flat_map(|(i, ls)| {
                    let s = srcs[i].clone();
                    ls.iter().map(move |&(ms, k, _)| {
                        let l = line(&s, ms, k);
                        (MergeKey { ts: l.ts, tag: s.tag, index: k }, l.text.clone())
                    })
                })
                .collect();
            v.sort();
            v
        };
        let run = |resume: Option<AppLogId>, limit: usize| {
            let srcs = srcs.clone();
            let sources = sources.to_vec();
            async move {
                let mut m: AppLogMerge<usize> = AppLogMerge::new(cfg(1000), resume);
                let mut feeders = Vec::new();
                for (i, lines) in sources.into_iter().enumerate() {
                    let start = m.start_cursor_for(&srcs[i]);
                    let (tx, rx) = feed();
                    m.insert(i, srcs[i].clone(), start, rx);
                    let s = srcs[i].clone();
                    feeders.push(tokio::spawn(async move {
                        for (ms, k, delay) in lines {
                            let l = line(&s, ms, k);
                            // The upstream re-reads and filters by the source cursor.
                            if start.is_some_and(|c| !c.admits(l.ts, l.index)) {
                                continue;
                            }
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            if tx.send(HubEvent::Line(l)).await.is_err() {
                                return;
                            }
                        }
                        std::future::pending::<()>().await;
                    }));
                }
                let mut out = Vec::new();
                let mut last = None;
                while out.len() < limit {
                    match tokio::time::timeout(Duration::from_secs(60), m.next()).await {
                        Ok(Some(MergedEvent::Line { line, id })) => {
                            out.push(line.text.clone());
                            last = Some(id);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                for f in feeders {
                    f.abort();
                }
                (out, last)
            }
        };
        let (first, id) = run(None, cut).await;
        let rest = match id {
            Some(id) => {
                let text = id.to_string();
                run(Some(AppLogId::parse(&text).unwrap()), usize::MAX).await.0
            }
            None => run(None, usize::MAX).await.0,
        };
        let mut got = first;
        got.extend(rest);
        (got, all.into_iter().map(|(_, t)| t).collect())
    }

    /// A source drops (reconnecting) and delivers its backfill seconds late, far beyond the
    /// watermark. Cutting the client connection at every point and resuming from the id
    /// must still deliver every line exactly once.
    #[test]
    fn exact_resume_across_a_late_backfill_at_every_cut_point() {
        let (a, b) = (LogSource::new("a", "c"), LogSource::new("b", "c"));
        let a_lines: Vec<i64> = (0..30).map(|i| i * 100).collect();
        let b_lines: Vec<i64> = (0..20).map(|i| i * 150).collect();
        let total = a_lines.len() + b_lines.len();
        // First run: b reconnects after its 4th line and returns 2.5 s later with a burst.
        let scenario = |resume: Option<AppLogId>, limit: usize, reconnect: bool| {
            let (a, b, a_lines, b_lines) = (a.clone(), b.clone(), a_lines.clone(), b_lines.clone());
            async move {
                let mut m: AppLogMerge<&'static str> = AppLogMerge::new(cfg(200), resume);
                let (sa, sb) = (m.start_cursor_for(&a), m.start_cursor_for(&b));
                let (ta, ra) = feed();
                let (tb, rb) = feed();
                m.insert("a", a.clone(), sa, ra);
                m.insert("b", b.clone(), sb, rb);
                let fa = tokio::spawn(async move {
                    let t0 = Instant::now();
                    for ms in a_lines {
                        tokio::time::sleep_until(t0 + Duration::from_millis(ms as u64)).await;
                        let l = line(&a, ms, 0);
                        if sa.is_none_or(|c| c.admits(l.ts, 0)) { let _ = ta.send(HubEvent::Line(l)).await; }
                    }
                    std::future::pending::<()>().await;
                });
                let fb = tokio::spawn(async move {
                    let t0 = Instant::now();
                    let _ = tb.send(HubEvent::Status(SourceStatus::new(SourceState::Streaming, StatusReason::Connected))).await;
                    for (i, ms) in b_lines.into_iter().enumerate() {
                        if reconnect && i == 4 {
                            let _ = tb.send(HubEvent::Status(SourceStatus::new(SourceState::Reconnecting, StatusReason::Dropped))).await;
                            tokio::time::sleep_until(t0 + Duration::from_millis(2500)).await;
                            let _ = tb.send(HubEvent::Status(SourceStatus::new(SourceState::Streaming, StatusReason::Resumed))).await;
                        }
                        tokio::time::sleep_until(t0 + Duration::from_millis(ms as u64)).await;
                        let l = line(&b, ms, 0);
                        if sb.is_none_or(|c| c.admits(l.ts, 0)) { let _ = tb.send(HubEvent::Line(l)).await; }
                    }
                    std::future::pending::<()>().await;
                });
                let mut out = Vec::new();
                let mut last = None;
                while out.len() < limit {
                    match tokio::time::timeout(Duration::from_secs(10), m.next()).await {
                        Ok(Some(MergedEvent::Line { line, id })) => { out.push(line.text.clone()); last = Some(id); }
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
                fa.abort();
                fb.abort();
                (out, last)
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let (full, _) = rt.block_on(scenario(None, usize::MAX, true));
        assert_eq!(full.len(), total);
        let mut saw_segment = false;
        for cut in 1..total {
            let (mut got, id) = rt.block_on(scenario(None, cut, true));
            let id = id.unwrap();
            saw_segment |= !id.behind.is_empty();
            let (rest, _) = rt.block_on(scenario(Some(AppLogId::parse(&id.to_string()).unwrap()), usize::MAX, false));
            got.extend(rest);
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), got.len(), "duplicate at cut {cut}: {got:?}");
            assert_eq!(got.len(), total, "gap at cut {cut} (id {id}): {got:?}");
        }
        assert!(saw_segment, "the scenario exercises explicit cursors");
    }

    async fn collect_lines(m: &mut AppLogMerge<&'static str>, n: usize) -> Vec<(String, AppLogId)> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(next_line(m).await);
        }
        out
    }

    fn sorted_texts(lines: &[Arc<LogLine>]) -> Vec<String> {
        let mut keyed: Vec<_> = lines.iter().map(|l| ((l.ts, l.source.tag, l.index), l.text.clone())).collect();
        keyed.sort();
        keyed.into_iter().map(|(_, t)| t).collect()
    }

    /// History of finished sources comes out in exact order although one source's upstream
    /// opens seconds (far more than the watermark) after the others delivered everything.
    #[tokio::test(start_paused = true)]
    async fn history_is_exact_however_late_a_source_delivers_its_first_batch() {
        let srcs: Vec<_> = ["a", "b", "c"].iter().map(|p| LogSource::new(*p, "c")).collect();
        let mut m = AppLogMerge::new(cfg(250), None);
        let mut all = Vec::new();
        let mut feeds = Vec::new();
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            let (tx, rx) = history_feed();
            m.insert(key, srcs[i].clone(), None, rx);
            let lines: Vec<_> = (0..100).map(|k| line(&srcs[i], k * 10 + i as i64 * 3, 0)).collect();
            all.extend(lines.iter().cloned());
            feeds.push((tx, lines));
        }
        let mut tasks = Vec::new();
        for (i, (tx, lines)) in feeds.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                // b opens 5 s late (a loaded API server); the others at once.
                if i == 1 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                for l in lines {
                    tx.send(HubEvent::Line(l)).await.unwrap();
                }
                tx.send(HubEvent::CaughtUp).await.unwrap();
                tx
            }));
        }
        let got: Vec<String> = collect_lines(&mut m, all.len()).await.into_iter().map(|(t, _)| t).collect();
        assert_eq!(got, sorted_texts(&all));
    }

    /// A source that ends early does not hold the merge, and one whose backlog arrives in two
    /// batches seconds apart still merges exactly.
    #[tokio::test(start_paused = true)]
    async fn history_is_exact_with_an_early_end_and_a_backlog_in_two_late_batches() {
        let (a, b, c) = (LogSource::new("a", "c"), LogSource::new("b", "c"), LogSource::new("c", "c"));
        let mut m = AppLogMerge::new(cfg(250), None);
        let (ta, sa) = history_feed();
        let (tb, sb) = history_feed();
        let (tc, sc) = history_feed();
        m.insert("a", a.clone(), None, sa);
        m.insert("b", b.clone(), None, sb);
        m.insert("c", c.clone(), None, sc);
        let a_lines: Vec<_> = [10, 20, 30].iter().map(|&ms| line(&a, ms, 0)).collect();
        let b1: Vec<_> = [5, 15].iter().map(|&ms| line(&b, ms, 0)).collect();
        let b2: Vec<_> = [25, 35, 45].iter().map(|&ms| line(&b, ms, 0)).collect();
        let c_lines: Vec<_> = (1..50).step_by(7).map(|ms| line(&c, ms, 0)).collect();
        let all: Vec<_> = a_lines.iter().chain(&b1).chain(&b2).chain(&c_lines).cloned().collect();
        for l in &a_lines {
            ta.send(HubEvent::Line(l.clone())).await.unwrap();
        }
        ta.send(HubEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Exited))).await.unwrap();
        for l in &c_lines {
            tc.send(HubEvent::Line(l.clone())).await.unwrap();
        }
        tc.send(HubEvent::CaughtUp).await.unwrap();
        for l in &b1 {
            tb.send(HubEvent::Line(l.clone())).await.unwrap();
        }
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            for l in b2 {
                tb.send(HubEvent::Line(l)).await.unwrap();
            }
            tb.send(HubEvent::CaughtUp).await.unwrap();
            tb
        });
        let mut got = Vec::new();
        let mut a_ended_after = None;
        while got.len() < all.len() {
            match tokio::time::timeout(Duration::from_secs(30), m.next()).await.unwrap() {
                Some(MergedEvent::Line { line, .. }) => got.push(line.text.clone()),
                Some(MergedEvent::Status { key: "a", status, .. }) if status.state == SourceState::Ended => a_ended_after = Some(got.clone()),
                Some(_) => {}
                None => panic!("merge ended"),
            }
        }
        let _tb = late.await.unwrap();
        assert_eq!(got, sorted_texts(&all));
        let before_end = a_ended_after.expect("a's end is reported");
        assert_eq!(before_end.last().map(String::as_str), Some("a@30#0"), "a's end follows its last line");
    }

    /// A client resumes; one source's backfill up to now arrives seconds after the other's:
    /// still history, so the resumed part is in exact order and nothing repeats or is lost.
    #[tokio::test(start_paused = true)]
    async fn a_resume_whose_backfill_arrives_seconds_late_on_one_source_is_exact() {
        let (a, b) = (LogSource::new("a", "c"), LogSource::new("b", "c"));
        let a_lines: Vec<_> = (0..=20).map(|k| line(&a, k * 100, 0)).collect();
        let b_lines: Vec<_> = (0..=20).map(|k| line(&b, k * 100 + 50, 0)).collect();
        let all: Vec<_> = a_lines.iter().chain(&b_lines).cloned().collect();
        let run = |resume: Option<AppLogId>, late_b: Duration, limit: usize| {
            let (a, b, a_lines, b_lines) = (a.clone(), b.clone(), a_lines.clone(), b_lines.clone());
            async move {
                let mut m: AppLogMerge<&'static str> = AppLogMerge::new(cfg(250), resume);
                let (ca, cb) = (m.start_cursor_for(&a), m.start_cursor_for(&b));
                let (ta, sa) = history_feed();
                let (tb, sb) = history_feed();
                m.insert("a", a, ca, sa);
                m.insert("b", b, cb, sb);
                let send = |tx: mpsc::Sender<HubEvent>, lines: Vec<Arc<LogLine>>, start: Option<SourceCursor>, delay: Duration| {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        for l in lines.into_iter().filter(|l| start.is_none_or(|c| c.admits(l.ts, l.index))) {
                            tx.send(HubEvent::Line(l)).await.unwrap();
                        }
                        tx.send(HubEvent::CaughtUp).await.unwrap();
                        std::future::pending::<()>().await;
                    })
                };
                let fa = send(ta, a_lines, ca, Duration::ZERO);
                let fb = send(tb, b_lines, cb, late_b);
                let out = collect_lines(&mut m, limit).await;
                fa.abort();
                fb.abort();
                out
            }
        };
        let first = run(None, Duration::ZERO, 15).await;
        let id = first.last().unwrap().1.clone();
        let rest = run(Some(AppLogId::parse(&id.to_string()).unwrap()), Duration::from_secs(4), all.len() - 15).await;
        let got: Vec<String> = first.into_iter().chain(rest).map(|(t, _)| t).collect();
        assert_eq!(got, sorted_texts(&all));
    }

    /// A source that never sends its history holds the merge only for `history_timeout`;
    /// then it is merged as behind with a `late` status, and its lines still resume exactly.
    #[tokio::test(start_paused = true)]
    async fn a_silent_source_is_given_up_on_after_the_history_timeout() {
        let (a, b) = (LogSource::new("a", "c"), LogSource::new("b", "c"));
        let mut m = AppLogMerge::new(MergeConfig { history_timeout: Duration::from_secs(2), ..cfg(250) }, None);
        let (ta, sa) = history_feed();
        let (tb, sb) = history_feed();
        m.insert("a", a.clone(), None, sa);
        m.insert("b", b.clone(), None, sb);
        for ms in [10, 20] {
            ta.send(HubEvent::Line(line(&a, ms, 0))).await.unwrap();
        }
        ta.send(HubEvent::CaughtUp).await.unwrap();
        let start = Instant::now();
        let first = loop {
            match m.next().await.unwrap() {
                MergedEvent::Status { key, status, .. } => {
                    assert_eq!((key, status.reason), ("b", StatusReason::Late));
                }
                MergedEvent::Line { line, .. } => break line.text.clone(),
                MergedEvent::Lagged { .. } => panic!("lagged"),
            }
        };
        assert_eq!(first, "a@10#0");
        assert!(Instant::now() - start >= Duration::from_secs(2), "held for the history timeout");
        assert_eq!(next_line(&mut m).await.0, "a@20#0");
        tb.send(HubEvent::Line(line(&b, 5, 0))).await.unwrap();
        let (text, id) = next_line(&mut m).await;
        assert_eq!(text, "b@5#0");
        assert_eq!(id.behind, vec![(b.tag, SourceCursor::after(LineId { ts: line(&b, 5, 0).ts, index: 0 }))], "b is tracked explicitly");
    }

    fn sources_strategy() -> impl Strategy<Value = Vec<Vec<(i64, u32, u64)>>> {
        proptest::collection::vec(proptest::collection::vec((0i64..50, 0u64..30), 0..15), 1..5).prop_map(|srcs| {
            srcs.into_iter()
                .map(|mut lines| {
                    lines.sort();
                    let mut out: Vec<(i64, u32, u64)> = Vec::new();
                    for (ms, delay) in lines {
                        let k = match out.last() {
                            Some(&(p, k, _)) if p == ms => k + 1,
                            _ => 0,
                        };
                        out.push((ms, k, delay));
                    }
                    out
                })
                .collect()
        })
    }

    fn adaptive(ms: u64) -> MergeConfig {
        MergeConfig { adaptive: true, ..cfg(ms) }
    }

    /// A line of `source` stamped `lag_ms` before now on the merge's own clock (its anchor),
    /// so tests with paused time simulate delays exactly.
    fn live_line<K>(m: &AppLogMerge<K>, source: &Arc<LogSource>, lag_ms: i64, index: u32) -> Arc<LogLine> {
        let (wall, at) = m.anchor;
        let now = wall + i64::try_from(Instant::now().duration_since(at).as_nanos()).unwrap();
        Arc::new(LogLine {
            ts: LogTimestamp::from_unix_nanos(now - lag_ms * 1_000_000),
            index,
            source: source.clone(),
            text: format!("{}-{index}", source.pod),
            truncated: false,
            encoded: None,
        })
    }

    #[test]
    fn the_delay_estimate_rises_at_once_and_forgets_slowly() {
        let mut d = DelayEstimate::default();
        assert_eq!(d.get(), None);
        d.observe(5_000_000);
        d.observe(200_000_000);
        assert_eq!(d.get(), Some(200_000_000), "a rise is taken at once");
        d.observe(5_000_000);
        let after_one = d.get().unwrap();
        assert!(after_one < 200_000_000 && after_one > 190_000_000, "{after_one}");
        for _ in 0..1000 {
            d.observe(5_000_000);
        }
        assert!(d.get().unwrap() < 6_000_000, "forgotten after many lines: {:?}", d.get());
    }

    type Live = (mpsc::Sender<HubEvent>, Arc<LogSource>);

    /// An adaptive merge (watermark 1 s) of live sources `a` and `b` that has learned their
    /// delays from one line each, and then been quiet for 500 ms.
    async fn two_learned(lag_a: i64, lag_b: i64) -> (AppLogMerge<&'static str>, Live, Live) {
        let (a, b) = (LogSource::new("a", "c"), LogSource::new("b", "c"));
        let (ta, sa) = feed();
        let (tb, sb) = feed();
        let mut m = AppLogMerge::new(adaptive(1000), None);
        m.insert("a", a.clone(), None, sa);
        m.insert("b", b.clone(), None, sb);
        ta.send(HubEvent::Line(live_line(&m, &a, lag_a, 0))).await.unwrap();
        tb.send(HubEvent::Line(live_line(&m, &b, lag_b, 0))).await.unwrap();
        next_line(&mut m).await;
        next_line(&mut m).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        (m, (ta, a), (tb, b))
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_fast_source_holds_a_line_for_its_delay_not_the_whole_watermark() {
        // Both learn a delay of 5 ms.
        let (mut m, (ta, a), _b) = two_learned(5, 5).await;
        let start = Instant::now();
        ta.send(HubEvent::Line(live_line(&m, &a, 5, 1))).await.unwrap();
        assert_eq!(next_line(&mut m).await.0, "a-1");
        let held = Instant::now() - start;
        // b could still send a line stamped before a-1 until a-1's time + 5 ms + the margin.
        assert_eq!(held, DELAY_MARGIN, "held {held:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_source_is_waited_for_as_long_as_it_needs_and_order_stays_exact() {
        let (mut m, (ta, a), (tb, b)) = two_learned(0, 200).await;
        let start = Instant::now();
        let a1 = live_line(&m, &a, 0, 1);
        ta.send(HubEvent::Line(a1.clone())).await.unwrap();
        // b's line stamped 50 ms before a-1 arrives 150 ms after it (b lags 200 ms).
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let b1 = Arc::new(LogLine {
                ts: LogTimestamp::from_unix_nanos(a1.ts.unix_nanos() - 50_000_000),
                index: 1,
                source: b.clone(),
                text: "b-1".into(),
                truncated: false,
                encoded: None,
            });
            tb.send(HubEvent::Line(b1)).await.unwrap();
            tb
        });
        assert_eq!(next_line(&mut m).await.0, "b-1", "the slow source's older line first");
        assert_eq!(next_line(&mut m).await.0, "a-1");
        assert_eq!(Instant::now() - start, Duration::from_millis(200) + DELAY_MARGIN, "held for b's delay");
        drop(late.await.unwrap());
    }

    /// Each source delivers every line `lag` after its timestamp (its own, steady delay):
    /// the adaptive merge emits them in exact order, and never later than the watermark.
    async fn run_steady(sources: &[(u64, Vec<i64>)]) -> (Vec<String>, Vec<String>) {
        let srcs: Vec<_> = (0..sources.len()).map(|i| LogSource::new(format!("p{i}"), "c")).collect();
        let mut m: AppLogMerge<usize> = AppLogMerge::new(adaptive(1000), None);
        let (wall, at) = m.anchor;
        let mut want = Vec::new();
        for (i, (lag, offsets)) in sources.iter().enumerate() {
            let (tx, rx) = feed();
            m.insert(i, srcs[i].clone(), None, rx);
            let s = srcs[i].clone();
            let mut lines = Vec::new();
            for (k, &ms) in offsets.iter().enumerate() {
                let line = Arc::new(LogLine {
                    ts: LogTimestamp::from_unix_nanos(wall + (1000 + ms) * 1_000_000),
                    index: 0,
                    source: s.clone(),
                    text: format!("p{i}@{ms}#{k}"),
                    truncated: false,
                    encoded: None,
                });
                want.push((MergeKey { ts: line.ts, tag: s.tag, index: 0 }, line.text.clone()));
                lines.push((at + Duration::from_millis(1000 + u64::try_from(ms).unwrap() + lag), line));
            }
            tokio::spawn(async move {
                for (when, line) in lines {
                    tokio::time::sleep_until(when).await;
                    if tx.send(HubEvent::Line(line)).await.is_err() {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            });
        }
        want.sort();
        let mut got = Vec::new();
        while got.len() < want.len() {
            match tokio::time::timeout(Duration::from_secs(60), m.next()).await {
                Ok(Some(MergedEvent::Line { line, .. })) => got.push(line.text.clone()),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        (got, want.into_iter().map(|(_, t)| t).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn ordered_and_exact_across_a_reconnect(sources in sources_strategy(), cut_frac in 0.0f64..1.0) {
            let total: usize = sources.iter().map(Vec::len).sum();
            let cut = ((total as f64) * cut_frac) as usize;
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            let (got, want) = rt.block_on(run_with_cut(&sources, cut));
            prop_assert_eq!(got, want);
        }
    }

    fn steady_sources() -> impl Strategy<Value = Vec<(u64, Vec<i64>)>> {
        // Distinct timestamps per source (offsets in ms), a steady lag per source.
        proptest::collection::vec(
            (0u64..120, proptest::collection::btree_set(0i64..400, 0..12).prop_map(|s| s.into_iter().collect::<Vec<_>>())),
            1..5,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn adaptive_merge_is_exact_for_sources_with_steady_delays(sources in steady_sources()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            let (got, want) = rt.block_on(run_steady(&sources));
            prop_assert_eq!(got, want);
        }
    }
}
