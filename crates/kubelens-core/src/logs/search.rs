//! Search of whole logs: a one-shot scan of one or more sources (container instances: the
//! current one, the previous one, archived ones; every container of every pod of an app) for
//! the lines a [`LineFilter`] accepts, as a stream of [`SearchEvent`]s.
//!
//! The scan is an adapter over finite upstream reads ([`UpstreamEvent`] streams, e.g.
//! `PodLogUpstream::stream` with `follow: false` from the beginning, or an archive read). It
//! holds one line at a time: matches are streamed as they are found, never collected, so a
//! search of a 1 GB log costs what the upstream read costs (one read chunk) plus one line.
//! Sources are read **one after another**, in the order given (callers give them oldest
//! first), and a source is only opened when the previous one has ended, so a search never
//! holds more than one upstream request.
//!
//! Every search is bounded ([`SearchBounds`]): bytes scanned, matches returned and wall time.
//! Reaching a bound ends the stream with an [`SearchEvent::End`] that says which bound
//! (`max_bytes`, `max_matches`, `max_duration`); a search that read every source ends with
//! `complete`. Bounds are exact: a `max_matches` end means a further match *was found* (so
//! more exist), a `max_bytes` end means the next line would have crossed the byte cap (so
//! unscanned data remains), and the totals never exceed the caps.
//!
//! Progress ([`SearchEvent::Progress`]) is reported about every
//! [`SearchBounds::progress_interval`] while the search runs (also while an upstream is
//! quiet), so a client can show bytes and lines scanned and the match count so far.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::stream::BoxStream;
use serde::Serialize;

use super::grep::LineFilter;
use super::upstream::{RawLine, SourceState, SourceStatus, StatusReason, UpstreamEvent, UpstreamStream};

/// The caps of one search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchBounds {
    /// Bytes of log text scanned at most (each line's text plus its newline, after the
    /// runtime timestamp), over all sources.
    pub max_bytes: u64,
    /// Matches returned at most.
    pub max_matches: u64,
    /// Wall time at most, from the first poll.
    pub max_duration: Duration,
    /// How often progress is reported.
    pub progress_interval: Duration,
}

impl Default for SearchBounds {
    fn default() -> Self {
        Self {
            max_bytes: 4 << 30,
            max_matches: 10_000,
            max_duration: Duration::from_secs(120),
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

impl SearchBounds {
    /// The bounds of `logs.search` (progress every [`DEFAULT_PROGRESS_INTERVAL`]).
    pub fn from_config(config: &crate::config::SearchConfig) -> Self {
        Self {
            max_bytes: config.max_bytes,
            max_matches: config.max_matches,
            max_duration: config.max_duration,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

/// The default progress cadence.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Lines scanned between two looks at the clock (progress due? deadline passed?) and between
/// two yields to the runtime when the upstream is always ready. Keeps the per-line cost a
/// counter increment.
const LINES_PER_CHECK: u32 = 1024;

/// Which instance of a container a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SearchInstance {
    /// The running (or last) instance, read from Kubernetes.
    Current,
    /// The previous instance (before the last restart), read from Kubernetes.
    Previous,
    /// An instance read from the log archive, with its restart count.
    Archived(u32),
}

impl SearchInstance {
    /// `current`, `previous` or `archived`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Previous => "previous",
            Self::Archived(_) => "archived",
        }
    }
}

/// What a source is: the labels its matches carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchScope {
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Which instance.
    pub instance: SearchInstance,
}

/// One source to scan: its labels and its finite read.
pub struct SearchSource {
    /// Labels of its matches (shared by all of them: a match costs a pointer, not strings).
    pub scope: Arc<SearchScope>,
    /// A finite read of the source. It ends with an `ended` status (or just ends).
    pub events: UpstreamStream,
}

impl std::fmt::Debug for SearchSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchSource").field("scope", &self.scope).finish_non_exhaustive()
    }
}

/// Counters of a search so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchProgress {
    /// Bytes of log text scanned (line text plus newline; see [`SearchBounds::max_bytes`]).
    pub bytes: u64,
    /// Lines scanned.
    pub lines: u64,
    /// Matches returned.
    pub matches: u64,
    /// Sources finished (read to their end, or ended otherwise).
    pub sources: u64,
}

/// Why a search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SearchEndReason {
    /// Every source was read to its end.
    Complete,
    /// Another match was found after `max_matches` were returned.
    MaxMatches,
    /// The next line would have taken the scan past `max_bytes`.
    MaxBytes,
    /// `max_duration` passed.
    MaxDuration,
}

/// An item of a search stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchEvent {
    /// A matching line.
    Match {
        /// Where it comes from.
        scope: Arc<SearchScope>,
        /// The line, with its position (its id within its source).
        line: RawLine,
    },
    /// Counters so far (about every [`SearchBounds::progress_interval`]).
    Progress(SearchProgress),
    /// A source ended otherwise than by reaching its end (deleted mid-read, refused, no
    /// such container...): it was searched only up to here. The search goes on with the next.
    SourceEnded {
        /// Which source.
        scope: Arc<SearchScope>,
        /// Its final status.
        status: SourceStatus,
    },
    /// The last item: the totals and why the search ended.
    End {
        /// Final counters.
        progress: SearchProgress,
        /// Why.
        reason: SearchEndReason,
    },
}

/// A boxed search stream.
pub type SearchStream = BoxStream<'static, SearchEvent>;

/// Scans `sources` (opened one at a time, in order) for lines `filter` accepts, within
/// `bounds`. The stream always ends with exactly one [`SearchEvent::End`].
pub fn search(sources: BoxStream<'static, SearchSource>, filter: LineFilter, bounds: SearchBounds) -> SearchStream {
    Box::pin(Search {
        sources: Some(sources),
        current: None,
        filter,
        bounds,
        progress: SearchProgress::default(),
        started: None,
        deadline: None,
        ticker: None,
        next_progress: None,
        since_check: 0,
        done: false,
    })
}

struct Search {
    /// The sources not opened yet (`None` once exhausted).
    sources: Option<BoxStream<'static, SearchSource>>,
    current: Option<SearchSource>,
    filter: LineFilter,
    bounds: SearchBounds,
    progress: SearchProgress,
    started: Option<tokio::time::Instant>,
    /// Fires at the end of `max_duration` (registered while the search waits).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Fires when progress is due (registered while the search waits).
    ticker: Option<Pin<Box<tokio::time::Sleep>>>,
    next_progress: Option<tokio::time::Instant>,
    since_check: u32,
    done: bool,
}

impl Search {
    fn finish(&mut self, reason: SearchEndReason) -> Poll<Option<SearchEvent>> {
        self.done = true;
        // Release the upstream request (and whatever it holds) now, not when the stream drops.
        self.current = None;
        self.sources = None;
        Poll::Ready(Some(SearchEvent::End { progress: self.progress, reason }))
    }

    fn start_clock(&mut self) {
        if self.started.is_some() {
            return;
        }
        let now = tokio::time::Instant::now();
        self.started = Some(now);
        self.deadline = Some(Box::pin(tokio::time::sleep_until(now + self.bounds.max_duration)));
        let next = now + self.bounds.progress_interval;
        self.next_progress = Some(next);
        self.ticker = Some(Box::pin(tokio::time::sleep_until(next)));
    }

    /// Looks at the clock: the end if the deadline passed, else progress if due.
    fn check_clock(&mut self) -> Option<Poll<Option<SearchEvent>>> {
        let now = tokio::time::Instant::now();
        if self.started.is_some_and(|s| now >= s + self.bounds.max_duration) {
            return Some(self.finish(SearchEndReason::MaxDuration));
        }
        if self.next_progress.is_some_and(|due| now >= due) {
            return Some(Poll::Ready(Some(self.progress_now(now))));
        }
        None
    }

    fn progress_now(&mut self, now: tokio::time::Instant) -> SearchEvent {
        let next = now + self.bounds.progress_interval;
        self.next_progress = Some(next);
        if let Some(ticker) = self.ticker.as_mut() {
            ticker.as_mut().reset(next);
        }
        SearchEvent::Progress(self.progress)
    }

    /// Registers the timers before the search waits on a source; `Some` when one fired.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Option<Poll<Option<SearchEvent>>> {
        if self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready()) {
            return Some(self.finish(SearchEndReason::MaxDuration));
        }
        if self.ticker.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready()) {
            let event = self.progress_now(tokio::time::Instant::now());
            return Some(Poll::Ready(Some(event)));
        }
        None
    }

    /// Counts one line; `Some` when it is a match to return or the scan must end.
    fn scan(&mut self, scope: &Arc<SearchScope>, line: RawLine) -> Option<Poll<Option<SearchEvent>>> {
        let size = u64::try_from(line.text.len()).unwrap_or(u64::MAX).saturating_add(1);
        if self.progress.bytes.saturating_add(size) > self.bounds.max_bytes {
            return Some(self.finish(SearchEndReason::MaxBytes));
        }
        self.progress.bytes += size;
        self.progress.lines += 1;
        if !self.filter.accepts(&line.text) {
            return None;
        }
        if self.progress.matches >= self.bounds.max_matches {
            return Some(self.finish(SearchEndReason::MaxMatches));
        }
        self.progress.matches += 1;
        Some(Poll::Ready(Some(SearchEvent::Match { scope: Arc::clone(scope), line })))
    }
}

impl Stream for Search {
    type Item = SearchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SearchEvent>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        this.start_clock();
        loop {
            this.since_check += 1;
            if this.since_check >= LINES_PER_CHECK {
                this.since_check = 0;
                if let Some(out) = this.check_clock() {
                    return out;
                }
                // An always-ready upstream must not hold the runtime thread for a whole log.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let Some(source) = this.current.as_mut() else {
                let Some(sources) = this.sources.as_mut() else {
                    return this.finish(SearchEndReason::Complete);
                };
                match sources.as_mut().poll_next(cx) {
                    Poll::Ready(Some(next)) => this.current = Some(next),
                    Poll::Ready(None) => return this.finish(SearchEndReason::Complete),
                    Poll::Pending => {
                        return this.poll_timers(cx).unwrap_or(Poll::Pending);
                    }
                }
                continue;
            };
            match source.events.as_mut().poll_next(cx) {
                Poll::Ready(Some(UpstreamEvent::Line(line))) => {
                    let scope = Arc::clone(&source.scope);
                    if let Some(out) = this.scan(&scope, line) {
                        return out;
                    }
                }
                Poll::Ready(Some(UpstreamEvent::Status(status))) if status.state == SourceState::Ended => {
                    let scope = Arc::clone(&source.scope);
                    this.current = None;
                    this.progress.sources += 1;
                    if status.reason != StatusReason::Complete {
                        return Poll::Ready(Some(SearchEvent::SourceEnded { scope, status }));
                    }
                }
                Poll::Ready(Some(UpstreamEvent::Status(_) | UpstreamEvent::CaughtUp)) => {}
                Poll::Ready(None) => {
                    this.current = None;
                    this.progress.sources += 1;
                }
                Poll::Pending => {
                    return this.poll_timers(cx).unwrap_or(Poll::Pending);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::logs::upstream::LinePosition;
    use chrono::DateTime;
    use futures::StreamExt;

    fn line(sec: i64, index: u32, text: &str) -> UpstreamEvent {
        UpstreamEvent::Line(RawLine { position: LinePosition { ts: DateTime::from_timestamp(sec, 0).unwrap(), index }, text: text.into(), truncated: false })
    }

    fn ended(reason: StatusReason) -> UpstreamEvent {
        UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, reason))
    }

    fn source(pod: &str, instance: SearchInstance, events: Vec<UpstreamEvent>) -> SearchSource {
        SearchSource {
            scope: Arc::new(SearchScope { pod: pod.into(), container: "app".into(), instance }),
            events: futures::stream::iter(events).boxed(),
        }
    }

    fn filter(q: &str) -> LineFilter {
        LineFilter::new(Some(q), None).unwrap()
    }

    async fn run(sources: Vec<SearchSource>, filter: LineFilter, bounds: SearchBounds) -> Vec<SearchEvent> {
        search(futures::stream::iter(sources).boxed(), filter, bounds).collect().await
    }

    fn matches(events: &[SearchEvent]) -> Vec<(String, &'static str, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                SearchEvent::Match { scope, line } => Some((scope.pod.clone(), scope.instance.as_str(), line.text.clone())),
                _ => None,
            })
            .collect()
    }

    fn end(events: &[SearchEvent]) -> (SearchProgress, SearchEndReason) {
        match events.last() {
            Some(SearchEvent::End { progress, reason }) => (*progress, *reason),
            other => panic!("no end: {other:?}"),
        }
    }

    #[tokio::test]
    async fn finds_every_match_in_source_order_and_counts_what_it_scanned() {
        let sources = vec![
            source("p", SearchInstance::Archived(0), vec![line(1, 0, "error a"), line(1, 1, "ok"), ended(StatusReason::Complete)]),
            source("p", SearchInstance::Previous, vec![line(2, 0, "fine"), line(3, 0, "error b")]),
            source("p", SearchInstance::Current, vec![line(4, 0, "error c"), ended(StatusReason::Complete)]),
        ];
        let events = run(sources, filter("error"), SearchBounds::default()).await;
        assert_eq!(
            matches(&events),
            vec![
                ("p".into(), "archived", "error a".into()),
                ("p".into(), "previous", "error b".into()),
                ("p".into(), "current", "error c".into())
            ]
        );
        let bytes = ["error a", "ok", "fine", "error b", "error c"].iter().map(|t| t.len() as u64 + 1).sum();
        assert_eq!(end(&events), (SearchProgress { bytes, lines: 5, matches: 3, sources: 3 }, SearchEndReason::Complete));
        assert_eq!(events.iter().filter(|e| matches!(e, SearchEvent::End { .. })).count(), 1);
        // The match keeps the line's position (its id).
        let SearchEvent::Match { line: first, .. } = &events[0] else { panic!() };
        assert_eq!(first.position.index, 0);
        let SearchEvent::Match { line: third, .. } = events.iter().filter(|e| matches!(e, SearchEvent::Match { .. })).nth(2).unwrap() else { panic!() };
        assert_eq!(third.position.ts.timestamp(), 4);
    }

    #[tokio::test]
    async fn max_matches_ends_only_when_one_more_match_exists() {
        let lines: Vec<UpstreamEvent> = (0..10).map(|i| line(i, 0, &format!("hit {i}"))).collect();
        let bounds = SearchBounds { max_matches: 3, ..SearchBounds::default() };
        let events = run(vec![source("p", SearchInstance::Current, lines)], filter("hit"), bounds).await;
        assert_eq!(matches(&events).len(), 3);
        let (progress, reason) = end(&events);
        assert_eq!(reason, SearchEndReason::MaxMatches);
        assert_eq!((progress.matches, progress.lines), (3, 4), "the fourth match was scanned, not returned");
        // Exactly the cap of matches and no more: complete.
        let lines: Vec<UpstreamEvent> = (0..3).map(|i| line(i, 0, &format!("hit {i}"))).chain([line(9, 0, "miss")]).collect();
        let events = run(vec![source("p", SearchInstance::Current, lines)], filter("hit"), bounds).await;
        assert_eq!(end(&events).1, SearchEndReason::Complete);
    }

    #[tokio::test]
    async fn max_bytes_never_scans_past_the_cap() {
        // Each line is 10 bytes with its newline.
        let lines: Vec<UpstreamEvent> = (0..10).map(|i| line(i, 0, &format!("line {i:04}"))).collect();
        let bounds = SearchBounds { max_bytes: 35, ..SearchBounds::default() };
        let events = run(vec![source("p", SearchInstance::Current, lines.clone())], filter("line"), bounds).await;
        let (progress, reason) = end(&events);
        assert_eq!((progress.bytes, progress.lines, progress.matches, reason), (30, 3, 3, SearchEndReason::MaxBytes));
        // Exactly fitting is complete.
        let bounds = SearchBounds { max_bytes: 100, ..SearchBounds::default() };
        let events = run(vec![source("p", SearchInstance::Current, lines)], filter("line"), bounds).await;
        assert_eq!(end(&events), (SearchProgress { bytes: 100, lines: 10, matches: 10, sources: 1 }, SearchEndReason::Complete));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_upstream_gets_progress_and_the_deadline_ends_the_search() {
        let (mut tx, rx) = futures::channel::mpsc::channel::<UpstreamEvent>(4);
        tx.try_send(line(1, 0, "error x")).unwrap();
        let source = SearchSource {
            scope: Arc::new(SearchScope { pod: "p".into(), container: "app".into(), instance: SearchInstance::Current }),
            events: rx.boxed(),
        };
        let bounds = SearchBounds { max_duration: Duration::from_secs(2), progress_interval: Duration::from_millis(250), ..SearchBounds::default() };
        let events = search(futures::stream::iter([source]).boxed(), filter("error"), bounds).collect::<Vec<_>>().await;
        drop(tx);
        assert_eq!(matches(&events).len(), 1);
        let progress: Vec<_> = events.iter().filter(|e| matches!(e, SearchEvent::Progress(_))).collect();
        assert!((6..=8).contains(&progress.len()), "about one progress per 250 ms of 2 s: {}", progress.len());
        assert!(progress.iter().all(|p| matches!(p, SearchEvent::Progress(SearchProgress { matches: 1, lines: 1, .. }))));
        assert_eq!(end(&events).1, SearchEndReason::MaxDuration);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_upstream_still_reports_progress_and_meets_its_deadline() {
        // An endless, always-ready source that takes 1 ms of (paused) time per line.
        let endless = futures::stream::unfold(0i64, |i| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Some((line(i, 0, "x"), i + 1))
        });
        let source = SearchSource {
            scope: Arc::new(SearchScope { pod: "p".into(), container: "app".into(), instance: SearchInstance::Current }),
            events: endless.boxed(),
        };
        let bounds = SearchBounds { max_duration: Duration::from_secs(1), ..SearchBounds::default() };
        let events = search(futures::stream::iter([source]).boxed(), filter("never"), bounds).collect::<Vec<_>>().await;
        let (progress, reason) = end(&events);
        assert_eq!(reason, SearchEndReason::MaxDuration);
        assert!((990..=1000).contains(&progress.lines), "about 1,000 lines in 1 s: {progress:?}");
        assert!(events.iter().filter(|e| matches!(e, SearchEvent::Progress(_))).count() >= 3);
    }

    #[tokio::test]
    async fn a_source_that_ends_early_is_reported_and_the_search_goes_on() {
        let sources = vec![
            source("a", SearchInstance::Current, vec![line(1, 0, "error a"), ended(StatusReason::Deleted)]),
            source("b", SearchInstance::Current, vec![line(2, 0, "error b"), ended(StatusReason::Complete)]),
        ];
        let events = run(sources, filter("error"), SearchBounds::default()).await;
        assert_eq!(matches(&events).len(), 2);
        assert!(events.iter().any(|e| matches!(e, SearchEvent::SourceEnded { scope, status } if scope.pod == "a" && status.reason == StatusReason::Deleted)));
        assert_eq!(end(&events), (SearchProgress { bytes: 16, lines: 2, matches: 2, sources: 2 }, SearchEndReason::Complete));
    }

    #[tokio::test]
    async fn sources_are_opened_one_at_a_time() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let opened = Arc::new(AtomicUsize::new(0));
        let open = {
            let opened = Arc::clone(&opened);
            move |i: i64| {
                opened.fetch_add(1, Ordering::SeqCst);
                source("p", SearchInstance::Current, vec![line(i, 0, "hit"), ended(StatusReason::Complete)])
            }
        };
        let sources = futures::stream::iter(0..5).map(open).boxed();
        let mut stream = search(sources, filter("hit"), SearchBounds::default());
        assert!(matches!(stream.next().await, Some(SearchEvent::Match { .. })));
        assert_eq!(opened.load(Ordering::SeqCst), 1, "the second source is not opened before the first ends");
        let rest: Vec<_> = stream.collect().await;
        assert_eq!(opened.load(Ordering::SeqCst), 5);
        assert_eq!(end(&rest).0.matches, 5);
    }

    #[tokio::test]
    async fn the_filter_is_the_whole_line_filter() {
        let lines = vec![
            line(1, 0, r#"{"level":"error","app":"web","msg":"db down"}"#),
            line(2, 0, r#"{"level":"info","app":"web","msg":"db ok"}"#),
            line(3, 0, "level=error app=db msg=db"),
            line(4, 0, "E0102 15:04:05.000000 1 main.go:1] db healthz"),
        ];
        let filter = LineFilter::new(Some("db"), Some("healthz")).unwrap().with_min_level(Some(crate::logs::structured::Level::Error));
        let events = run(vec![source("p", SearchInstance::Current, lines)], filter, SearchBounds::default()).await;
        assert_eq!(matches(&events).iter().map(|m| m.2.as_str()).collect::<Vec<_>>(), vec![
            r#"{"level":"error","app":"web","msg":"db down"}"#,
            "level=error app=db msg=db"
        ]);
        assert_eq!(end(&events).0.lines, 4);
    }
}
