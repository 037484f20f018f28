//! Open a log at a line: the lines around a line id, exactly (`around=<id>`).
//!
//! A line id is a permalink (see `docs/log-ids.md`): `<ts>~<k>` names the `k`-th line with
//! timestamp `ts` of one source, and an app id's frontier `<ts>~<tag>~<k>` names one line of
//! a merged app log. [`open_around`] finds that line in a finite read and returns the `N`
//! lines before it (a ring of at most `N` items: the only buffer), the line itself, and the
//! rest of the read, from which the caller takes the `M` lines after ([`take_lines`]) or
//! switches to a live stream resumed right after the target.
//!
//! Reading the whole log for every permalink would be wasteful, so the first read starts
//! [`AROUND_WINDOW`] before the target's second (a read that starts on a whole second gives
//! every line the same index as any other such read: the whole same-timestamp group is
//! read). Only when that window held fewer than `N` lines before the target is the log read
//! again from its beginning, at most [`MAX_AROUND_SCAN_BYTES`] of it; beyond that bound the
//! answer keeps what the window had and says so (`before_complete == false`).
//!
//! Errors tell the user what happened to a link that no longer opens: the log now starts
//! after the line ([`AroundError::Rotated`]: rotated away, or the id predates this
//! container instance), the log covers the line's time but has no such line
//! ([`AroundError::NotFound`]), the source is gone ([`AroundError::Gone`]).

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::time::Duration;

use futures::{Stream, StreamExt};

use super::app::AppEvent;
use super::id::{LineId, MergeKey};
use super::time::LogTimestamp;
use super::upstream::{SourceState, StatusReason, UpstreamEvent};

/// Lines before and after the target when the request does not say (`before`, `after`).
pub const DEFAULT_AROUND_CONTEXT: u32 = 50;
/// Most lines before, and most lines after, one `around` request may ask for. The ring holds
/// at most this many lines, and at most [`MAX_AROUND_RING_BYTES`].
pub const MAX_AROUND_CONTEXT: u32 = 1_000;
/// Most bytes the ring of lines before the target holds (line text plus
/// [`LINE_SCAN_OVERHEAD`] per line). Over it the oldest lines are dropped, and the answer
/// says it is short (`before_complete == false`): 1,000 lines of 10,000 characters would
/// otherwise be up to 40 MB per request.
pub const MAX_AROUND_RING_BYTES: u64 = 8 * 1024 * 1024;
/// How far before the target's second the first read starts.
pub const AROUND_WINDOW: Duration = Duration::from_secs(60);
/// Most bytes of log (line text plus [`LINE_SCAN_OVERHEAD`] per line) one read scans before
/// reaching the target. The first read reaching it is retried from the target's own second;
/// a re-read from the beginning reaching it falls back to what the first read had.
pub const MAX_AROUND_SCAN_BYTES: u64 = 64 * 1024 * 1024;
/// What one line costs in the scan budget besides its text (timestamp, id, framing).
pub const LINE_SCAN_OVERHEAD: u64 = 40;

/// Why the lines around an id cannot be shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AroundError {
    /// The log now starts after the line (rotated away, or the id is from an older instance).
    #[error("the line is no longer in the log: the log now starts after it (rotated away, or the id is from an earlier container instance)")]
    Rotated,
    /// The log covers the line's time but has no line with this id.
    #[error("there is no line with this id in the log (the log covers its time)")]
    NotFound,
    /// The source ended before anything was read (pod deleted, or hidden by the policy).
    #[error("the log source is gone ({0:?})")]
    Gone(StatusReason),
    /// Reaching the line would scan more than the bound.
    #[error("reaching the line would scan more than {0} bytes of log")]
    ScanLimit(u64),
    /// No read could be opened (the caller's admission said no).
    #[error("no log read could be opened")]
    Unavailable,
}

/// How an item of a read ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The read is over (the rest of the stream is not looked at).
    Complete,
    /// The source is gone.
    Gone(StatusReason),
}

/// An item of a finite log read, as [`open_around`] needs to see it.
pub trait AroundItem {
    /// The total order of the read's lines (a pod's [`LineId`], an app's [`MergeKey`]).
    type Pos: Ord + Copy;
    /// The position of a line; `None` for anything else (status, caught-up markers).
    fn position(&self) -> Option<Self::Pos>;
    /// What scanning this item costs in the byte budget.
    fn scan_cost(&self) -> u64;
    /// `Some` when this item ends the read.
    fn read_end(&self) -> Option<ReadEnd>;
}

impl AroundItem for UpstreamEvent {
    type Pos = LineId;
    fn position(&self) -> Option<LineId> {
        match self {
            UpstreamEvent::Line(raw) => Some(LineId { ts: raw.position.ts.into(), index: raw.position.index }),
            _ => None,
        }
    }
    fn scan_cost(&self) -> u64 {
        match self {
            UpstreamEvent::Line(raw) => u64::try_from(raw.text.len()).unwrap_or(u64::MAX).saturating_add(LINE_SCAN_OVERHEAD),
            _ => 0,
        }
    }
    fn read_end(&self) -> Option<ReadEnd> {
        match self {
            UpstreamEvent::Status(s) if s.state == SourceState::Ended => Some(match s.reason {
                StatusReason::Deleted | StatusReason::Hidden => ReadEnd::Gone(s.reason),
                _ => ReadEnd::Complete,
            }),
            _ => None,
        }
    }
}

impl AroundItem for AppEvent {
    type Pos = MergeKey;
    fn position(&self) -> Option<MergeKey> {
        match self {
            AppEvent::Line { line, .. } => Some(MergeKey { ts: line.ts, tag: line.source.tag, index: line.index }),
            AppEvent::Status { .. } => None,
        }
    }
    fn scan_cost(&self) -> u64 {
        match self {
            AppEvent::Line { line, .. } => u64::try_from(line.text.len()).unwrap_or(u64::MAX).saturating_add(LINE_SCAN_OVERHEAD),
            AppEvent::Status { .. } => 0,
        }
    }
    /// A finite app read ends when its stream does (a source ending is not the end).
    fn read_end(&self) -> Option<ReadEnd> {
        None
    }
}

/// The target line found in a read.
pub struct Found<T, S> {
    /// The lines before the target, oldest first (at most the number asked for).
    pub before: Vec<T>,
    /// The target line.
    pub target: T,
    /// The rest of the read, right after the target.
    pub rest: S,
    /// True when `before` has every line asked for, or every line the log has before the
    /// target. False only when the scan bound stopped the re-read from the beginning.
    pub before_complete: bool,
}

impl<T: std::fmt::Debug, S> std::fmt::Debug for Found<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Found").field("before", &self.before).field("target", &self.target).field("before_complete", &self.before_complete).finish_non_exhaustive()
    }
}

/// What one read says about the target.
enum Seek<T, S> {
    /// `trimmed`: the ring's byte bound dropped lines the count bound would have kept.
    Found(Found<T, S>, bool),
    /// The read passed the target's position, or ended, without it. `covered`: it saw a line
    /// before the target.
    Missing { covered: bool },
    Gone(StatusReason),
    ScanLimit,
}

/// Reads `stream` up to `target`, keeping the last `plan.before` lines (at most
/// `plan.max_ring_bytes`) in a ring.
async fn seek<T, S>(mut stream: S, target: T::Pos, plan: &AroundPlan) -> Seek<T, S>
where
    T: AroundItem,
    S: Stream<Item = T> + Unpin,
{
    let (before, max_scan) = (plan.before, plan.max_scan_bytes);
    let mut ring: VecDeque<T> = VecDeque::with_capacity(before.min(64));
    let (mut ring_bytes, mut trimmed) = (0u64, false);
    let mut covered = false;
    let mut scanned: u64 = 0;
    while let Some(item) = stream.next().await {
        match item.read_end() {
            Some(ReadEnd::Complete) => break,
            Some(ReadEnd::Gone(reason)) => return Seek::Gone(reason),
            None => {}
        }
        let Some(pos) = item.position() else { continue };
        match pos.cmp(&target) {
            Ordering::Less => {
                covered = true;
                scanned = scanned.saturating_add(item.scan_cost());
                if scanned > max_scan {
                    return Seek::ScanLimit;
                }
                if before == 0 {
                    continue;
                }
                if ring.len() == before
                    && let Some(old) = ring.pop_front()
                {
                    ring_bytes = ring_bytes.saturating_sub(old.scan_cost());
                }
                ring_bytes = ring_bytes.saturating_add(item.scan_cost());
                ring.push_back(item);
                while ring_bytes > plan.max_ring_bytes && ring.len() > 1 {
                    if let Some(old) = ring.pop_front() {
                        ring_bytes = ring_bytes.saturating_sub(old.scan_cost());
                        trimmed = true;
                    }
                }
            }
            Ordering::Equal => {
                let before_complete = ring.len() == before && !trimmed;
                return Seek::Found(Found { before: ring.into(), target: item, rest: stream, before_complete }, trimmed);
            }
            Ordering::Greater => return Seek::Missing { covered },
        }
    }
    Seek::Missing { covered }
}

/// Where a read of [`open_around`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AroundStart {
    /// Every line with a timestamp at or after this whole second.
    From(LogTimestamp),
    /// The log's first line.
    Beginning,
}

/// The bounds of one [`open_around`].
#[derive(Debug, Clone, Copy)]
pub struct AroundPlan {
    /// Lines wanted before the target (≤ [`MAX_AROUND_CONTEXT`] at the HTTP layer).
    pub before: usize,
    /// How far before the target's second the first read starts.
    pub window: Duration,
    /// Most bytes one read scans before the target.
    pub max_scan_bytes: u64,
    /// Most bytes the ring of lines before the target holds.
    pub max_ring_bytes: u64,
}

impl AroundPlan {
    /// The documented defaults with `before` lines before the target.
    pub fn new(before: usize) -> Self {
        Self { before, window: AROUND_WINDOW, max_scan_bytes: MAX_AROUND_SCAN_BYTES, max_ring_bytes: MAX_AROUND_RING_BYTES }
    }
}

/// Finds the line at `target` (timestamp `target_ts`) in reads opened by `open`, with the
/// `plan.before` lines before it. `open` returns `None` when it cannot open a read (no
/// upstream slot): the first read is then [`AroundError::Unavailable`], a re-read is skipped.
///
/// 1. Read from `floor(target_ts) - plan.window`. Found with a full ring: done.
/// 2. Found with a short ring: the window may have begun after the log did, so read from the
///    beginning (bounded by `plan.max_scan_bytes`; over it, keep the first answer).
/// 3. Not found after seeing earlier lines: [`AroundError::NotFound`]. Not found without
///    seeing any earlier line: the log's first line decides — after the target (or no line
///    at all) is [`AroundError::Rotated`], otherwise [`AroundError::NotFound`].
/// 4. The first read over the scan bound is retried from the target's own second.
pub async fn open_around<T, S, F>(mut open: F, target: T::Pos, target_ts: LogTimestamp, plan: AroundPlan) -> Result<Found<T, S>, AroundError>
where
    T: AroundItem,
    S: Stream<Item = T> + Unpin,
    F: FnMut(AroundStart) -> Option<S>,
{
    let second = target_ts.floor_second();
    let window_nanos = i64::try_from(plan.window.as_nanos()).unwrap_or(i64::MAX);
    let from = LogTimestamp::from_unix_nanos(second.unix_nanos().saturating_sub(window_nanos)).floor_second();
    let first = open(AroundStart::From(from)).ok_or(AroundError::Unavailable)?;
    let found = match seek(first, target, &plan).await {
        Seek::Found(found, _) if found.before_complete => return Ok(found),
        // The byte bound cut the ring: a re-read from the beginning would be cut the same way.
        Seek::Found(found, true) => return Ok(found),
        Seek::Found(found, false) => found,
        Seek::Missing { covered: true } => return Err(AroundError::NotFound),
        Seek::Missing { covered: false } => return Err(first_line_verdict(&mut open, target).await),
        Seek::Gone(reason) => return Err(AroundError::Gone(reason)),
        Seek::ScanLimit if from == second => return Err(AroundError::ScanLimit(plan.max_scan_bytes)),
        Seek::ScanLimit => {
            // The window is too busy: start at the target's second (still a whole second, so
            // the indexes are the same), and do not re-read from the beginning.
            let near = open(AroundStart::From(second)).ok_or(AroundError::Unavailable)?;
            return match seek(near, target, &plan).await {
                // Started at the target's second, not the log's start: never "complete" short.
                Seek::Found(found, _) => Ok(found),
                Seek::Missing { .. } => Err(AroundError::NotFound),
                Seek::Gone(reason) => Err(AroundError::Gone(reason)),
                Seek::ScanLimit => Err(AroundError::ScanLimit(plan.max_scan_bytes)),
            };
        }
    };
    // Short ring: did the window start before the log did? Only a read from the beginning
    // can tell (and it gives the lines before the window if there are any).
    let Some(whole) = open(AroundStart::Beginning) else { return Ok(Found { before_complete: false, ..found }) };
    match seek(whole, target, &plan).await {
        // From the beginning, a short ring is every line there is (unless the bytes cut it).
        Seek::Found(again, trimmed) => Ok(Found { before_complete: !trimmed, ..again }),
        // Over the bound (or the log changed between the reads): keep the first answer.
        _ => Ok(Found { before_complete: false, ..found }),
    }
}

/// Rotated or not found: decided by the log's first line.
async fn first_line_verdict<T, S, F>(open: &mut F, target: T::Pos) -> AroundError
where
    T: AroundItem,
    S: Stream<Item = T> + Unpin,
    F: FnMut(AroundStart) -> Option<S>,
{
    let Some(mut whole) = open(AroundStart::Beginning) else { return AroundError::NotFound };
    while let Some(item) = whole.next().await {
        match item.read_end() {
            Some(ReadEnd::Complete) => break,
            Some(ReadEnd::Gone(reason)) => return AroundError::Gone(reason),
            None => {}
        }
        if let Some(pos) = item.position() {
            return if pos > target { AroundError::Rotated } else { AroundError::NotFound };
        }
    }
    AroundError::Rotated
}

/// The items of `stream` until `lines` lines have passed (non-line items pass through and do
/// not count), then its end: the `M` lines after a target. An item that ends the read
/// ([`AroundItem::read_end`]) passes and ends it too.
pub fn take_lines<T, S>(stream: S, lines: usize) -> impl Stream<Item = T>
where
    T: AroundItem,
    S: Stream<Item = T> + Unpin,
{
    futures::stream::unfold((stream, lines, false), |(mut stream, left, done)| async move {
        if done || left == 0 {
            return None;
        }
        let item = stream.next().await?;
        let ends = item.read_end().is_some();
        let left = if item.position().is_some() { left - 1 } else { left };
        Some((item, (stream, left, ends)))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::logs::upstream::{LinePosition, RawLine, SourceStatus};
    use chrono::{DateTime, Utc};
    use futures::stream::BoxStream;
    use std::sync::{Arc, Mutex};

    const SEC: i64 = 1_000_000_000;
    const BASE: i64 = 1_769_767_200 * SEC;

    /// A fake kubelet over lines with these timestamps: a read from `t` returns the lines
    /// with `ts >= t`, indexed from the read's start (like `LineDecoder`), then `ended`.
    fn kubelet(stamps: Vec<i64>, opened: Arc<Mutex<Vec<AroundStart>>>) -> impl FnMut(AroundStart) -> Option<BoxStream<'static, UpstreamEvent>> {
        move |start| {
            opened.lock().unwrap().push(start);
            let from = match start {
                AroundStart::From(t) => t.unix_nanos(),
                AroundStart::Beginning => i64::MIN,
            };
            let mut events = Vec::new();
            let mut last: Option<(i64, u32)> = None;
            for (i, &ts) in stamps.iter().enumerate().filter(|(_, ts)| **ts >= from) {
                let index = match last {
                    Some((t, k)) if t == ts => k + 1,
                    _ => 0,
                };
                last = Some((ts, index));
                events.push(UpstreamEvent::Line(RawLine {
                    position: LinePosition { ts: DateTime::<Utc>::from_timestamp_nanos(ts), index },
                    text: format!("line {i}"),
                    truncated: false,
                }));
            }
            events.push(UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Complete)));
            Some(futures::stream::iter(events).boxed())
        }
    }

    fn id(ts: i64, index: u32) -> LineId {
        LineId { ts: LogTimestamp::from_unix_nanos(ts), index }
    }

    fn texts(items: &[UpstreamEvent]) -> Vec<String> {
        items
            .iter()
            .map(|e| match e {
                UpstreamEvent::Line(l) => l.text.clone(),
                other => panic!("not a line: {other:?}"),
            })
            .collect()
    }

    async fn around(stamps: Vec<i64>, target: LineId, before: usize, after: usize) -> (Result<(Vec<String>, String, Vec<String>, bool), AroundError>, Vec<AroundStart>) {
        let opened = Arc::new(Mutex::new(Vec::new()));
        let result = open_around(kubelet(stamps, Arc::clone(&opened)), target, target.ts, AroundPlan::new(before)).await;
        let out = match result {
            Ok(found) => {
                let rest: Vec<UpstreamEvent> = take_lines(found.rest, after).filter(|e| futures::future::ready(e.position().is_some())).collect().await;
                Ok((texts(&found.before), texts(&[found.target])[0].clone(), texts(&rest), found.before_complete))
            }
            Err(e) => Err(e),
        };
        let opened = opened.lock().unwrap().clone();
        (out, opened)
    }

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("line {i}")).collect()
    }

    #[tokio::test]
    async fn exact_neighbours_from_one_window_read() {
        // 200 lines, 100 ms apart: the window (60 s) holds plenty before line 150.
        let stamps: Vec<i64> = (0..200).map(|i| BASE + i * SEC / 10).collect();
        let (out, opened) = around(stamps.clone(), id(stamps[150], 0), 5, 3).await;
        let (before, target, after, complete) = out.unwrap();
        assert_eq!((before, target, after, complete), (names(145..150), "line 150".to_owned(), names(151..154), true));
        assert_eq!(opened.len(), 1, "one read when the window is enough: {opened:?}");
        assert_eq!(opened[0], AroundStart::From(LogTimestamp::from_unix_nanos(stamps[150]).floor_second().minus_secs(60)));
    }

    #[tokio::test]
    async fn a_short_window_re_reads_from_the_beginning() {
        // Lines every 10 s: the 60 s window has only 6 lines before line 50.
        let stamps: Vec<i64> = (0..60).map(|i| BASE + i * 10 * SEC).collect();
        let (out, opened) = around(stamps.clone(), id(stamps[50], 0), 20, 2).await;
        let (before, target, after, complete) = out.unwrap();
        assert_eq!((before, target.as_str(), after, complete), (names(30..50), "line 50", names(51..53), true));
        assert_eq!(opened.len(), 2);
        assert_eq!(opened[1], AroundStart::Beginning);
        // Near the start of the log: fewer lines exist than asked for, and that is complete.
        let (out, _) = around(stamps.clone(), id(stamps[3], 0), 20, 100).await;
        let (before, _, after, complete) = out.unwrap();
        assert_eq!((before, after.len(), complete), (names(0..3), 56, true));
    }

    #[tokio::test]
    async fn ids_inside_a_group_of_equal_timestamps_are_exact() {
        // Line 10.. 19 share one timestamp (k = 0..9), mid-second.
        let mut stamps: Vec<i64> = (0..10).map(|i| BASE + i * SEC / 10).collect();
        stamps.extend(std::iter::repeat_n(BASE + SEC + 123, 10));
        stamps.extend((0..10).map(|i| BASE + 2 * SEC + i));
        for k in 0..10u32 {
            let (out, _) = around(stamps.clone(), id(BASE + SEC + 123, k), 3, 2).await;
            let (before, target, after, _) = out.unwrap();
            let i = 10 + k as usize;
            assert_eq!((before, target, after), (names(i - 3..i), format!("line {i}"), names(i + 1..i + 3)), "k = {k}");
        }
        // k = 10 does not exist: the log covers the time.
        assert_eq!(around(stamps, id(BASE + SEC + 123, 10), 3, 2).await.0.unwrap_err(), AroundError::NotFound);
    }

    #[tokio::test]
    async fn missing_and_rotated_ids_are_told_apart() {
        let stamps: Vec<i64> = (0..20).map(|i| BASE + 100 * SEC + i * SEC).collect();
        // Between two lines: not found (and only the window was read).
        let (out, opened) = around(stamps.clone(), id(BASE + 105 * SEC + 1, 0), 3, 2).await;
        assert_eq!((out.unwrap_err(), opened.len()), (AroundError::NotFound, 1));
        // Before the log's first line: rotated away.
        let (out, opened) = around(stamps.clone(), id(BASE + 10 * SEC, 0), 3, 2).await;
        assert_eq!((out.unwrap_err(), opened.len()), (AroundError::Rotated, 2));
        // After the log's last line: not found (the log covers up to now).
        assert_eq!(around(stamps.clone(), id(BASE + 1_000 * SEC, 0), 3, 2).await.0.unwrap_err(), AroundError::NotFound);
        // Far after an old line but nothing in the window: the first line decides, not found.
        let sparse = vec![BASE, BASE + 1_000 * SEC];
        assert_eq!(around(sparse, id(BASE + 500 * SEC, 0), 3, 2).await.0.unwrap_err(), AroundError::NotFound);
        // An empty log has no line at all.
        assert_eq!(around(Vec::new(), id(BASE, 0), 3, 2).await.0.unwrap_err(), AroundError::Rotated);
    }

    #[tokio::test]
    async fn gone_sources_and_the_scan_bound() {
        let gone = |_: AroundStart| -> Option<BoxStream<'static, UpstreamEvent>> {
            Some(futures::stream::iter([UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Deleted))]).boxed())
        };
        let err = open_around(gone, id(BASE, 0), LogTimestamp::from_unix_nanos(BASE), AroundPlan::new(3)).await.unwrap_err();
        assert_eq!(err, AroundError::Gone(StatusReason::Deleted));
        let none = |_: AroundStart| -> Option<BoxStream<'static, UpstreamEvent>> { None };
        let err = open_around(none, id(BASE, 0), LogTimestamp::from_unix_nanos(BASE), AroundPlan::new(3)).await.unwrap_err();
        assert_eq!(err, AroundError::Unavailable);
        // A busy window over the bound: retried from the target's second, and the ring is
        // only as full as that second allows (and says so).
        let stamps: Vec<i64> = (0..100).map(|i| BASE + i * SEC / 10).collect();
        let opened = Arc::new(Mutex::new(Vec::new()));
        let plan = AroundPlan { max_scan_bytes: 60 * (LINE_SCAN_OVERHEAD + 7), ..AroundPlan::new(50) };
        let target = id(stamps[95], 0);
        let found = open_around(kubelet(stamps, Arc::clone(&opened)), target, target.ts, plan).await.unwrap();
        assert_eq!((texts(&found.before), found.before_complete), (names(90..95), false));
        assert_eq!(opened.lock().unwrap().clone(), [
            AroundStart::From(target.ts.floor_second().minus_secs(60)),
            AroundStart::From(target.ts.floor_second())
        ]);
    }

    #[tokio::test]
    async fn the_ring_is_bounded_in_bytes_too() {
        let stamps: Vec<i64> = (0..100).map(|i| BASE + i * SEC / 10).collect();
        let opened = Arc::new(Mutex::new(Vec::new()));
        // Room for 10 lines of `line NN` (7 bytes + overhead) out of the 50 asked for.
        let plan = AroundPlan { max_ring_bytes: 10 * (LINE_SCAN_OVERHEAD + 7), ..AroundPlan::new(50) };
        let target = id(stamps[80], 0);
        let found = open_around(kubelet(stamps, Arc::clone(&opened)), target, target.ts, plan).await.unwrap();
        assert_eq!((texts(&found.before), found.before_complete), (names(70..80), false));
        assert_eq!(opened.lock().unwrap().len(), 1, "no pointless re-read when the bytes cut the ring");
    }

    #[tokio::test]
    async fn take_lines_counts_lines_only_and_stops_at_the_end() {
        let status = UpstreamEvent::Status(SourceStatus::new(SourceState::Reconnecting, StatusReason::Dropped));
        let line = |i: i64| UpstreamEvent::Line(RawLine { position: LinePosition { ts: DateTime::<Utc>::from_timestamp_nanos(i), index: 0 }, text: String::new(), truncated: false });
        let events = vec![line(1), status.clone(), line(2), line(3)];
        let out: Vec<_> = take_lines(futures::stream::iter(events).boxed(), 2).collect().await;
        assert_eq!(out.len(), 3, "two lines and the status between them");
        let end = UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Complete));
        let out: Vec<_> = take_lines(futures::stream::iter(vec![line(1), end, line(2)]).boxed(), 5).collect().await;
        assert_eq!(out.len(), 2, "the end passes and ends the read");
    }

    trait MinusSecs {
        fn minus_secs(self, s: i64) -> Self;
    }
    impl MinusSecs for LogTimestamp {
        fn minus_secs(self, s: i64) -> Self {
            LogTimestamp::from_unix_nanos(self.unix_nanos() - s * SEC)
        }
    }
}
