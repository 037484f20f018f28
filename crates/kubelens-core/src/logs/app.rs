//! An app's live log: every container of every pod of the app, merged in timestamp order,
//! with pods joining and leaving while it streams.
//!
//! [`AppLogStream`] is the composition the HTTP adapter serves and the `kubetail` example
//! prints. It is independent of where membership comes from and of how a source is opened:
//!
//! * **Members** ([`MembersFn`]): the app's current pods and their containers, re-read every
//!   `poll_interval` while following (the discovery cache makes this free; a plain API lister
//!   works too). A pod that appears joins, read from its first line (it started after the
//!   stream did); a source that ends (pod deleted, container exited) leaves and is not
//!   re-read while that pod instance (its UID) is still listed — a completed Job pod would
//!   otherwise be replayed every tick — while a pod recreated under the same name (a new UID)
//!   joins again.
//! * **Sources** ([`SourceOpener`]): one [`HubEvent`] stream per (pod, container), usually a
//!   [`LogHub`](super::hub::LogHub) subscription ([`subscribe_shared`] opens the shared
//!   upstream under an admission cap), so any number of app and pod viewers share one upstream
//!   per container.
//! * **Order and resume**: an [`AppLogMerge`] orders lines within its watermark window and
//!   gives each line an [`AppLogId`] that resumes the merged stream exactly. A source cut loose
//!   by the hub (`lagged`) is re-opened at its cursor and tracked as behind until it catches up,
//!   so the merge never implies its lines were sent.
//!
//! Everything is bounded: the merge buffers at most `max_buffered_per_source` lines per
//! source, the hub's queues are bounded, and membership is polled, not buffered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::admission::{AdmissionError, UpstreamPermit};
use super::hub::{HubEvent, LogHub, ResumePoint, Subscription};
use super::merge::{AppLogMerge, MergeConfig, MergedEvent};
use super::upstream::{PodLogUpstream, SourceKey, SourceState, SourceStatus, StatusReason, UpstreamEvent, UpstreamOptions, UpstreamStream};
use super::{AppLogId, LogLine, LogSource};

/// How often an app stream re-reads its members by default.
pub const DEFAULT_MEMBER_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A pod of an app, as the app stream needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPod {
    /// Pod name.
    pub name: String,
    /// Pod UID: tells a recreated pod of the same name from the one whose source ended.
    pub uid: String,
    /// Its containers (regular containers, in spec order).
    pub containers: Vec<String>,
}

/// A read of the app's members: `None` when the app no longer exists or the read failed
/// (the stream keeps its sources and tries again on the next tick).
pub type MembersFuture = BoxFuture<'static, Option<Vec<AppPod>>>;

/// Reads the app's current members.
pub type MembersFn = Box<dyn FnMut() -> MembersFuture + Send>;

/// Opens one source of the app from a resume point (see [`subscribe_shared`]).
pub type SourceOpener = Box<dyn FnMut(&SourceKey, ResumePoint) -> BoxStream<'static, HubEvent> + Send>;

/// What an app stream yields.
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// A line in merge order, with the id that resumes the merged stream after it.
    Line {
        /// The line (pod and container inside).
        line: Arc<LogLine>,
        /// Its resume id.
        id: AppLogId,
    },
    /// A status change of one source (`ended` means it left the app stream).
    Status {
        /// Its pod and container.
        source: Arc<LogSource>,
        /// The new status.
        status: SourceStatus,
    },
}

/// Options of one app stream.
#[derive(Debug, Clone)]
pub struct AppStreamOptions {
    /// Merge order window and per-source buffer.
    pub merge: MergeConfig,
    /// Resume after this id (a `Last-Event-ID`); sources start at their cursor in it.
    pub resume: Option<AppLogId>,
    /// Where the sources present at the start begin when there is no resume id
    /// (`None`: from their beginning).
    pub start: Option<ResumePoint>,
    /// Keep streaming and follow membership; `false` ends when every source has ended.
    pub follow: bool,
    /// How often membership is re-read while following.
    pub poll_interval: Duration,
}

/// The merged log of one app. See the module docs.
pub struct AppLogStream {
    merge: AppLogMerge<SourceKey>,
    /// Sources in the stream, with their pod's UID.
    joined: HashMap<SourceKey, (Arc<LogSource>, String)>,
    /// (pod UID, container) of sources that ended: not joined again while listed. Pruned to
    /// the listed pods on every membership read, so it is bounded by the app's size.
    finished: HashSet<(String, String)>,
    namespace: String,
    members: MembersFn,
    open: SourceOpener,
    /// Start of sources without a resume cursor.
    first_start: Option<ResumePoint>,
    refreshing: Option<MembersFuture>,
    follow: bool,
    ticker: tokio::time::Interval,
}

impl std::fmt::Debug for AppLogStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppLogStream")
            .field("namespace", &self.namespace)
            .field("sources", &self.joined.len())
            .field("follow", &self.follow)
            .finish_non_exhaustive()
    }
}

impl AppLogStream {
    /// A stream over the app in `namespace` whose members `members` reads and whose sources
    /// `open` opens. Call [`AppLogStream::join`] with the members known now (so the caller can
    /// answer "not found" or "over the cap" before streaming), then
    /// [`AppLogStream::into_stream`].
    ///
    /// Needs a tokio runtime with timers (membership ticks and the merge watermark).
    pub fn new(namespace: impl Into<String>, options: AppStreamOptions, members: MembersFn, open: SourceOpener) -> Self {
        let mut ticker = tokio::time::interval(options.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let first_start = if options.resume.is_some() { None } else { options.start };
        Self {
            merge: AppLogMerge::new(options.merge, options.resume),
            joined: HashMap::new(),
            finished: HashSet::new(),
            namespace: namespace.into(),
            members,
            open,
            first_start,
            refreshing: None,
            follow: options.follow,
            ticker,
        }
    }

    /// Sources currently in the stream.
    pub fn sources(&self) -> usize {
        self.joined.len()
    }

    /// Adds every container of `pods` that is not in the stream yet.
    pub fn join(&mut self, pods: &[AppPod]) {
        for pod in pods {
            for container in &pod.containers {
                let key = SourceKey {
                    namespace: self.namespace.clone(),
                    pod: pod.name.clone(),
                    container: container.clone(),
                    previous: false,
                };
                if self.joined.contains_key(&key) || self.finished.contains(&(pod.uid.clone(), container.clone())) {
                    continue;
                }
                let source = LogSource::new(pod.name.clone(), container.clone());
                let cursor = self.merge.start_cursor_for(&source);
                let from = match (cursor, self.first_start) {
                    (Some(c), _) => ResumePoint::After(c),
                    (None, Some(from)) => from,
                    (None, None) => ResumePoint::Beginning,
                };
                let mut stream = (self.open)(&key, from);
                if cursor.is_some() {
                    stream = resuming(stream);
                }
                self.merge.insert(key.clone(), Arc::clone(&source), cursor, stream);
                self.joined.insert(key, (source, pod.uid.clone()));
            }
        }
    }

    /// A fresh membership read: forget ended sources of pods no longer listed, then join.
    fn refreshed(&mut self, pods: &[AppPod]) {
        let listed: HashSet<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        self.finished.retain(|(uid, _)| listed.contains(uid.as_str()));
        self.join(pods);
    }

    /// The events of the app stream. Pods that join from now on started after the stream
    /// did, so they are read from their beginning.
    pub fn into_stream(mut self) -> BoxStream<'static, AppEvent> {
        self.first_start = Some(ResumePoint::Beginning);
        futures::stream::unfold(self, |mut this| async move {
            let event = this.next_event().await?;
            Some((event, this))
        })
        .boxed()
    }

    async fn next_event(&mut self) -> Option<AppEvent> {
        loop {
            if let Some(refresh) = self.refreshing.take()
                && let Some(pods) = refresh.await
            {
                self.refreshed(&pods);
            }
            let event = if self.merge.is_empty() {
                if !self.follow {
                    return None;
                }
                self.ticker.tick().await;
                self.refreshing = Some((self.members)());
                continue;
            } else if self.follow {
                tokio::select! {
                    event = self.merge.next() => event,
                    _ = self.ticker.tick() => {
                        self.refreshing = Some((self.members)());
                        continue;
                    }
                }
            } else {
                self.merge.next().await
            };
            let Some(event) = event else { continue };
            match event {
                MergedEvent::Line { line, id } => return Some(AppEvent::Line { line, id }),
                MergedEvent::Status { status, .. } if status.reason == StatusReason::Resuming => {}
                MergedEvent::Status { key, source, status } => {
                    if status.state == SourceState::Ended {
                        // The source left. The merge still emits the lines it buffered and
                        // then drops the source by itself (removing it here would lose up to
                        // a watermark of its last lines). A pod recreated under the same name
                        // (new UID) may join again, this instance not.
                        if let Some((_, uid)) = self.joined.remove(&key) {
                            self.finished.insert((uid, key.container));
                        }
                    }
                    return Some(AppEvent::Status { source, status });
                }
                MergedEvent::Lagged { key, resume } => {
                    // This source's viewer queue overflowed: re-open it from what the merge
                    // received; the merge tracks it as behind until it catches up.
                    if let Some((source, _)) = self.joined.get(&key).cloned() {
                        let from = resume.map_or(ResumePoint::Beginning, ResumePoint::After);
                        let stream = resuming((self.open)(&key, from));
                        self.merge.insert(key, source, resume, stream);
                    }
                }
            }
        }
    }
}

/// Marks a re-opened source as catching up: until it delivers, the merge must not let the
/// frontier imply that its lines were sent (the re-open can take longer than the watermark).
fn resuming(stream: BoxStream<'static, HubEvent>) -> BoxStream<'static, HubEvent> {
    let status = SourceStatus::new(SourceState::Reconnecting, StatusReason::Resuming);
    futures::stream::iter([HubEvent::Status(status)]).chain(stream).boxed()
}

/// Subscribes to `key` through `hub`, opening the shared upstream with `upstream` only when
/// the hub needs a new one. Joining an open (or lingering) upstream needs no slot; a new one
/// consumes `permit`. When a new upstream was needed and `permit` is an error, the
/// subscription carries a single `ended`/`too_many_streams` status and `admitted` is false.
/// `tap` is opened only when a new upstream is, and sees each of its events (once per
/// upstream, not per viewer).
pub fn subscribe_shared(
    hub: &LogHub,
    upstream: &PodLogUpstream,
    key: SourceKey,
    from: ResumePoint,
    mut options: UpstreamOptions,
    permit: Result<UpstreamPermit, AdmissionError>,
    tap: Option<UpstreamTap>,
) -> SharedSubscription {
    let refused = Arc::new(AtomicBool::new(false));
    let refused_in_opener = Arc::clone(&refused);
    let upstream = upstream.clone();
    let open_key = key.clone();
    // The hub calls the opener synchronously inside `subscribe`, so `refused` is known when
    // it returns.
    let subscription = hub.subscribe(key, from, move |start| match permit {
        Ok(permit) => {
            options.start = start;
            let stream: UpstreamStream = upstream.stream(open_key, options, Some(permit));
            match tap {
                Some(open_tap) => {
                    let mut tap = open_tap();
                    stream.inspect(move |event| tap(event)).boxed()
                }
                None => stream,
            }
        }
        Err(_) => {
            refused_in_opener.store(true, Ordering::Release);
            let status = SourceStatus::new(SourceState::Ended, StatusReason::TooManyStreams);
            futures::stream::iter([UpstreamEvent::Status(status)]).boxed()
        }
    });
    SharedSubscription { admitted: !refused.load(Ordering::Acquire), subscription }
}

/// Opens an observer of a newly opened upstream's events (e.g. the log archive's tap).
pub type UpstreamTap = Box<dyn FnOnce() -> Box<dyn FnMut(&UpstreamEvent) + Send> + Send>;

/// The result of [`subscribe_shared`].
#[derive(Debug)]
pub struct SharedSubscription {
    /// False when a new upstream was needed and the cap refused it.
    pub admitted: bool,
    /// The viewer's events.
    pub subscription: Subscription,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::logs::LogTimestamp;

    fn line(pod: &str, ts: i64, text: &str) -> HubEvent {
        HubEvent::Line(Arc::new(LogLine {
            ts: LogTimestamp::from_unix_nanos(ts),
            index: 0,
            source: LogSource::new(pod, "app"),
            text: text.to_owned(),
            truncated: false,
            encoded: None,
        }))
    }

    fn pod(name: &str) -> AppPod {
        AppPod { name: name.to_owned(), uid: format!("uid-{name}"), containers: vec!["app".to_owned()] }
    }

    fn options(follow: bool) -> AppStreamOptions {
        AppStreamOptions {
            merge: MergeConfig { watermark: Duration::from_millis(50), adaptive: false, max_buffered_per_source: 64, history_timeout: Duration::from_secs(5) },
            resume: None,
            start: None,
            follow,
            poll_interval: Duration::from_millis(20),
        }
    }

    /// Sources are canned per pod; an ended source leaves.
    fn opener(canned: HashMap<String, Vec<HubEvent>>, opened: Arc<Mutex<Vec<String>>>) -> SourceOpener {
        Box::new(move |key, _from| {
            opened.lock().unwrap().push(key.pod.clone());
            let mut events = canned.get(&key.pod).cloned().unwrap_or_default();
            events.push(HubEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Complete)));
            futures::stream::iter(events).boxed()
        })
    }

    fn texts(events: &[AppEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                AppEvent::Line { line, .. } => Some(line.text.clone()),
                AppEvent::Status { .. } => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn sources_are_merged_in_timestamp_order() {
        let canned = HashMap::from([
            ("a".to_owned(), vec![line("a", 1, "a1"), line("a", 4, "a4")]),
            ("b".to_owned(), vec![line("b", 2, "b2"), line("b", 3, "b3")]),
        ]);
        let opened = Arc::new(Mutex::new(Vec::new()));
        let members: MembersFn = Box::new(|| Box::pin(async { None }));
        let mut app = AppLogStream::new("ns", options(false), members, opener(canned, Arc::clone(&opened)));
        app.join(&[pod("a"), pod("b")]);
        assert_eq!(app.sources(), 2);
        let events: Vec<AppEvent> = tokio::time::timeout(Duration::from_secs(5), app.into_stream().collect()).await.unwrap();
        assert_eq!(texts(&events), ["a1", "b2", "b3", "a4"]);
        let ended = events.iter().filter(|e| matches!(e, AppEvent::Status { status, .. } if status.state == SourceState::Ended)).count();
        assert_eq!(ended, 2, "each source reports its end");
        // …after its last line, never before.
        let position = |what: &dyn Fn(&AppEvent) -> bool| events.iter().position(what).unwrap();
        let a_end = position(&|e| matches!(e, AppEvent::Status { source, .. } if source.pod == "a"));
        let a4 = position(&|e| matches!(e, AppEvent::Line { line, .. } if line.text == "a4"));
        let b_end = position(&|e| matches!(e, AppEvent::Status { source, .. } if source.pod == "b"));
        let b3 = position(&|e| matches!(e, AppEvent::Line { line, .. } if line.text == "b3"));
        assert!(a_end > a4 && b_end > b3, "{events:?}");
    }

    #[tokio::test]
    async fn pods_that_appear_while_following_join() {
        let canned = HashMap::from([("late".to_owned(), vec![line("late", 5, "late5")])]);
        let opened = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(Mutex::new(0u32));
        let calls_in = Arc::clone(&calls);
        let members: MembersFn = Box::new(move || {
            *calls_in.lock().unwrap() += 1;
            Box::pin(async { Some(vec![pod("late")]) })
        });
        let app = AppLogStream::new("ns", options(true), members, opener(canned, Arc::clone(&opened)));
        let mut stream = app.into_stream();
        let first = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(AppEvent::Line { line, .. }) = stream.next().await {
                    return line.text.clone();
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(first, "late5", "the ended source's buffered line is still delivered");
        assert!(*calls.lock().unwrap() >= 1);
        // The source ended but the pod is still listed (a completed Job pod): it is not read
        // again, however many membership reads follow.
        let more = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                match stream.next().await {
                    Some(AppEvent::Line { line, .. }) => return line.text.clone(),
                    Some(AppEvent::Status { .. }) => {}
                    None => return String::new(),
                }
            }
        })
        .await;
        assert!(more.is_err(), "replayed: {more:?}");
        assert!(*calls.lock().unwrap() >= 5, "membership kept being read");
        assert_eq!(opened.lock().unwrap().as_slice(), ["late"], "opened once");
    }
}
