//! Serving from the archive: archived pods of a namespace, and their lines with the same
//! resume ids as live streams.
//!
//! A live line's id is `<RFC3339Nano>~<k>`, `k` = index among the source's lines with that
//! exact timestamp. Archived lines are stored in log order (see
//! [`super::LinePositioner`]), so the same `k` is recomputed here while reading: a client
//! that followed a pod live and reconnects with its `Last-Event-ID` after the pod is gone
//! resumes exactly from the archive (no line twice, none lost — as long as the archive holds
//! the lines around the cursor).

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::RetentionError;
use crate::logs::upstream::{LinePosition, RawLine, StartAt};
use crate::logs::{LogTimestamp, SourceCursor};
use crate::storage::{ArchivedLine, LineQuery, LogArchive, PodMeta, SourceInfo, SourceKey};

/// Lines read per archive call.
const PAGE: usize = 5000;

/// One archived container of an archived pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedContainer {
    /// Container name.
    pub name: String,
    /// Archived instances (restart counts), ascending. The last one is the latest.
    pub instances: Vec<u32>,
    /// Stored lines over all instances.
    pub lines: u64,
    /// Stored bytes over all instances.
    pub bytes: u64,
}

/// A pod known to the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedPod {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod uid.
    pub uid: String,
    /// Owning app kind, if known.
    pub app_kind: Option<String>,
    /// Owning app name, if known.
    pub app_name: Option<String>,
    /// Node it ran on.
    pub node: Option<String>,
    /// When the pod was deleted (earliest mark over its sources), if it was.
    pub terminated_at: Option<DateTime<Utc>>,
    /// When the archive forgets it (latest expiry over its sources), if scheduled.
    pub expires_at: Option<DateTime<Utc>>,
    /// Archived containers, by name.
    pub containers: Vec<ArchivedContainer>,
    /// The metadata recorded at capture (labels, owning app): what archive reads check the
    /// current policy against. Not part of the API output.
    #[serde(skip)]
    pub meta: PodMeta,
}

fn time_of(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(DateTime::<Utc>::from_timestamp_millis)
}

/// Archived pods of `namespace` (one entry per pod uid), sorted by name, then most recently
/// terminated first.
pub async fn archived_pods(archive: &dyn LogArchive, namespace: &str) -> Result<Vec<ArchivedPod>, RetentionError> {
    let sources = archive.list_sources(namespace).await?;
    Ok(group(sources))
}

/// A pod being assembled: the pod, its earliest termination and latest expiry (ms).
type Grouping = (ArchivedPod, Option<i64>, Option<i64>);

fn group(sources: Vec<SourceInfo>) -> Vec<ArchivedPod> {
    let mut pods: BTreeMap<(String, String), Grouping> = BTreeMap::new();
    for info in sources {
        let key = info.key;
        let entry = pods.entry((key.pod.clone(), key.pod_uid.clone())).or_insert_with(|| {
            let pod = ArchivedPod {
                namespace: key.namespace.clone(),
                name: key.pod.clone(),
                uid: key.pod_uid.clone(),
                app_kind: info.meta.app_kind.clone(),
                app_name: info.meta.app_name.clone(),
                node: info.meta.node.clone(),
                terminated_at: None,
                expires_at: None,
                containers: Vec::new(),
                meta: info.meta.clone(),
            };
            (pod, None, None)
        });
        if let Some(t) = info.terminated_at_ms {
            entry.1 = Some(entry.1.map_or(t, |e: i64| e.min(t)));
        }
        if let Some(t) = info.expires_at_ms {
            entry.2 = Some(entry.2.map_or(t, |e: i64| e.max(t)));
        }
        let containers = &mut entry.0.containers;
        let container = match containers.iter_mut().position(|c| c.name == key.container) {
            Some(i) => &mut containers[i],
            None => {
                containers.push(ArchivedContainer { name: key.container.clone(), instances: Vec::new(), lines: 0, bytes: 0 });
                let last = containers.len() - 1;
                &mut containers[last]
            }
        };
        container.instances.push(key.instance);
        container.instances.sort_unstable();
        container.lines += info.lines;
        container.bytes += info.bytes;
    }
    let mut out: Vec<ArchivedPod> = pods
        .into_values()
        .map(|(mut pod, terminated, expires)| {
            pod.terminated_at = time_of(terminated);
            pod.expires_at = time_of(expires);
            pod.containers.sort_by(|a, b| a.name.cmp(&b.name));
            pod
        })
        .collect();
    // Unmarked (deletion not recorded yet) counts as the most recent.
    out.sort_by(|a, b| a.name.cmp(&b.name).then(b.terminated_at.unwrap_or(DateTime::<Utc>::MAX_UTC).cmp(&a.terminated_at.unwrap_or(DateTime::<Utc>::MAX_UTC))));
    out
}

/// The most recent archived pod called `name` (a StatefulSet pod recreated under the same
/// name has several; the latest one is served).
pub async fn find_pod(archive: &dyn LogArchive, namespace: &str, name: &str) -> Result<Option<ArchivedPod>, RetentionError> {
    Ok(archived_pods(archive, namespace).await?.into_iter().find(|p| p.name == name))
}

impl ArchivedPod {
    /// The source to serve: `container` (or the only archived one), its latest instance, or
    /// the one before it for `previous`.
    pub fn source(&self, container: Option<&str>, previous: bool) -> Result<SourceKey, RetentionError> {
        let chosen = match container {
            Some(name) => self.containers.iter().find(|c| c.name == name).ok_or(RetentionError::NotArchived { what: "container" })?,
            None => match self.containers.as_slice() {
                [only] => only,
                [] => return Err(RetentionError::NotArchived { what: "pod" }),
                many => {
                    let choices = many.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
                    return Err(RetentionError::ContainerRequired { choices });
                }
            },
        };
        let instance = if previous {
            chosen.instances.iter().rev().nth(1)
        } else {
            chosen.instances.last()
        };
        let instance = *instance.ok_or(RetentionError::NotArchived { what: "instance" })?;
        Ok(SourceKey {
            namespace: self.namespace.clone(),
            pod: self.name.clone(),
            pod_uid: self.uid.clone(),
            container: chosen.name.clone(),
            instance,
        })
    }
}

/// An archived line with its resume position (same shape as a live line).
pub type ArchivedLogLine = RawLine;

/// Reads the lines of `source` from `start` (the same start points as a live stream:
/// `Tail`, `Beginning`, `Since` a time, `After` a line id), at most `max` lines; the bool is
/// true when more lines followed the cap.
pub async fn read_lines(
    archive: &dyn LogArchive,
    source: &SourceKey,
    start: StartAt,
    max: usize,
) -> Result<(Vec<ArchivedLogLine>, bool), RetentionError> {
    let (since_ns, cursor, tail) = start_bounds(start);
    let mut out: VecDeque<RawLine> = VecDeque::new();
    let mut more = false;
    let mut after: Option<u64> = None;
    let mut last: Option<(i64, u32)> = None;
    'pages: loop {
        let page = archive
            .read(source, LineQuery { after, since_ns, until_ns: None, limit: PAGE })
            .await?;
        let full = page.len() == PAGE;
        for line in page {
            after = Some(line.position);
            let index = match last {
                Some((ts, k)) if ts == line.timestamp_ns => k.saturating_add(1),
                _ => 0,
            };
            last = Some((line.timestamp_ns, index));
            if cursor.is_some_and(|c| !c.admits(LogTimestamp::from_unix_nanos(line.timestamp_ns), index)) {
                continue;
            }
            let raw = to_raw(line, index);
            match tail {
                Some(n) => {
                    if n == 0 {
                        continue;
                    }
                    if out.len() == n {
                        out.pop_front();
                    }
                    out.push_back(raw);
                }
                None => {
                    if out.len() == max {
                        more = true;
                        break 'pages;
                    }
                    out.push_back(raw);
                }
            }
        }
        if !full {
            break;
        }
    }
    if tail.is_some() && out.len() > max {
        out.drain(..out.len() - max);
    }
    Ok((out.into(), more))
}

/// Lines per archive call of a [`line_stream`] read: what such a read holds at once (at
/// most this many times `logs.max_line_length` bytes).
pub const STREAM_PAGE: usize = 500;

/// Where a read for `start` begins in the archive (`since_ns`), which lines it keeps
/// (`cursor`), and how many of the last it keeps (`Tail`).
fn start_bounds(start: StartAt) -> (Option<i64>, Option<SourceCursor>, Option<usize>) {
    match start {
        StartAt::Beginning => (None, None, None),
        StartAt::Tail(n) => (None, None, Some(usize::try_from(n).unwrap_or(usize::MAX))),
        StartAt::Since(t) => {
            let ts = LogTimestamp::from(t);
            (Some(ts.unix_nanos()), Some(SourceCursor::from_time(ts)), None)
        }
        StartAt::After(pos) => {
            let cursor = SourceCursor::after_position(pos);
            // Read from the cursor's timestamp: its whole same-timestamp group is re-read,
            // so the group's indexes come out as they were first served.
            (Some(cursor.ts.unix_nanos()), Some(cursor), None)
        }
    }
}

/// Every line of `source` from `start` (the start points of a live stream) as a finite
/// upstream-shaped stream ([`line_stream`]: a page at a time, ending `complete`, or `dropped`
/// when the archive fails), for a read of the whole archived log such as a download. A
/// `Tail` start is one bounded read (its caller bounds the tail).
pub fn stream_from(
    archive: std::sync::Arc<dyn LogArchive>,
    source: SourceKey,
    start: StartAt,
) -> futures::stream::BoxStream<'static, crate::logs::UpstreamEvent> {
    use crate::logs::upstream::{SourceState, SourceStatus, StatusReason, UpstreamEvent};
    use futures::StreamExt;
    let (since_ns, cursor, tail) = start_bounds(start);
    if let Some(n) = tail {
        return futures::stream::once(async move {
            let events: Vec<UpstreamEvent> = match read_lines(archive.as_ref(), &source, start, n).await {
                Ok((lines, _)) => lines
                    .into_iter()
                    .map(UpstreamEvent::Line)
                    .chain(std::iter::once(UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Complete))))
                    .collect(),
                Err(err) => {
                    tracing::warn!(error = %err, pod = %source.pod, "archive read failed");
                    vec![UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Dropped))]
                }
            };
            futures::stream::iter(events)
        })
        .flatten()
        .boxed();
    }
    line_stream(archive, source, since_ns)
        .filter(move |event| {
            let keep = match (event, cursor) {
                (UpstreamEvent::Line(line), Some(c)) => c.admits(LogTimestamp::from(line.position.ts), line.position.index),
                _ => true,
            };
            futures::future::ready(keep)
        })
        .boxed()
}

/// The lines of `source` from `since_ns` (`None`: from the first archived line) as a finite
/// stream, read a page ([`STREAM_PAGE`] lines) at a time, with the same ids as [`read_lines`] (the
/// index of a line among equal timestamps is counted from the read's start, so start on a
/// whole second at or before the lines you need, as a live read does). Ends with an `ended`
/// status: `complete`, or `dropped` when the archive failed (logged).
pub fn line_stream(
    archive: std::sync::Arc<dyn LogArchive>,
    source: SourceKey,
    since_ns: Option<i64>,
) -> futures::stream::BoxStream<'static, crate::logs::UpstreamEvent> {
    use crate::logs::upstream::{SourceState, SourceStatus, StatusReason, UpstreamEvent};
    use futures::StreamExt;
    struct Page {
        archive: std::sync::Arc<dyn LogArchive>,
        source: SourceKey,
        since_ns: Option<i64>,
        after: Option<u64>,
        last: Option<(i64, u32)>,
        page: VecDeque<ArchivedLine>,
        full: bool,
        done: bool,
    }
    let state = Page { archive, source, since_ns, after: None, last: None, page: VecDeque::new(), full: true, done: false };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.page.is_empty() && st.full {
            let query = LineQuery { after: st.after, since_ns: st.since_ns, until_ns: None, limit: STREAM_PAGE };
            match st.archive.read(&st.source, query).await {
                Ok(page) => {
                    st.full = page.len() == STREAM_PAGE;
                    st.page = page.into();
                }
                Err(err) => {
                    tracing::warn!(error = %err, pod = %st.source.pod, "archive read failed");
                    st.done = true;
                    return Some((UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Dropped)), st));
                }
            }
        }
        let Some(line) = st.page.pop_front() else {
            st.done = true;
            return Some((UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Complete)), st));
        };
        st.after = Some(line.position);
        let index = match st.last {
            Some((ts, k)) if ts == line.timestamp_ns => k.saturating_add(1),
            _ => 0,
        };
        st.last = Some((line.timestamp_ns, index));
        Some((UpstreamEvent::Line(to_raw(line, index)), st))
    })
    .boxed()
}

fn to_raw(line: ArchivedLine, index: u32) -> RawLine {
    RawLine {
        position: LinePosition { ts: DateTime::<Utc>::from_timestamp_nanos(line.timestamp_ns), index },
        text: String::from_utf8_lossy(&line.line).into_owned(),
        truncated: line.truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;
    use crate::storage::StoreLimits;

    fn key(uid: &str, container: &str, instance: u32) -> SourceKey {
        SourceKey { namespace: "team-a".into(), pod: "p".into(), pod_uid: uid.into(), container: container.into(), instance }
    }

    #[tokio::test]
    async fn ids_match_live_ids_and_resume_exactly() {
        let store = MemoryStore::new(StoreLimits::default());
        let base = 1_769_767_200_000_000_000i64;
        // Two lines share a timestamp (k = 0, 1), like the kubelet can produce.
        let stamps = [base, base + 1, base + 1, base + 2, base + 1_000_000_000];
        let lines: Vec<ArchivedLine> = stamps
            .iter()
            .enumerate()
            .map(|(i, &t)| ArchivedLine { position: i as u64 * 10, timestamp_ns: t, line: format!("l{i}").into_bytes(), truncated: false })
            .collect();
        let k = key("u", "app", 0);
        store.append(&k, &PodMeta::default(), &lines).await.unwrap();
        let (all, more) = read_lines(&store, &k, StartAt::Beginning, 100).await.unwrap();
        assert!(!more);
        assert_eq!(all.iter().map(|l| l.position.index).collect::<Vec<_>>(), [0, 0, 1, 0, 0]);
        for cut in 0..all.len() {
            let (rest, _) = read_lines(&store, &k, StartAt::After(all[cut].position), 100).await.unwrap();
            assert_eq!(rest, all[cut + 1..].to_vec(), "resume after line {cut}");
        }
        let (tail, _) = read_lines(&store, &k, StartAt::Tail(2), 100).await.unwrap();
        assert_eq!(tail, all[3..].to_vec());
        let (capped, more) = read_lines(&store, &k, StartAt::Beginning, 2).await.unwrap();
        assert!(more && capped.len() == 2);
        // The streamed read gives the same lines and ids, and ends `complete`.
        let store: std::sync::Arc<dyn LogArchive> = std::sync::Arc::new(store);
        let streamed: Vec<crate::logs::UpstreamEvent> = futures::StreamExt::collect(line_stream(std::sync::Arc::clone(&store), k.clone(), None)).await;
        let lines: Vec<RawLine> = streamed.iter().filter_map(|e| match e { crate::logs::UpstreamEvent::Line(l) => Some(l.clone()), _ => None }).collect();
        assert_eq!(lines, all);
        assert!(matches!(streamed.last(), Some(crate::logs::UpstreamEvent::Status(s)) if s.reason == crate::logs::StatusReason::Complete));
    }

    /// A whole-log read of a long archive (groups of equal timestamps straddling page ends)
    /// yields every line exactly once, in order, with the ids of one whole read — from the
    /// beginning, after any line, and as a tail.
    #[tokio::test]
    async fn streamed_reads_cover_a_long_log_exactly_once_from_any_start() {
        use crate::logs::upstream::UpstreamEvent;
        use futures::StreamExt as _;
        let store = std::sync::Arc::new(MemoryStore::new(StoreLimits::default()));
        let base = 1_769_767_200_000_000_000i64;
        let n = 2 * STREAM_PAGE + 7;
        let lines: Vec<ArchivedLine> = (0..n)
            .map(|i| ArchivedLine { position: i as u64, timestamp_ns: base + (i / 3) as i64, line: format!("l{i}").into_bytes(), truncated: false })
            .collect();
        let k = key("u", "app", 0);
        for batch in lines.chunks(PAGE) {
            store.append(&k, &PodMeta::default(), batch).await.unwrap();
        }
        let (whole, _) = read_lines(store.as_ref(), &k, StartAt::Beginning, usize::MAX).await.unwrap();
        assert_eq!(whole.len(), n);
        let archive: std::sync::Arc<dyn LogArchive> = store;
        let read = |start| {
            let stream = stream_from(std::sync::Arc::clone(&archive), k.clone(), start);
            async move {
                let events: Vec<UpstreamEvent> = stream.collect().await;
                assert!(matches!(events.last(), Some(UpstreamEvent::Status(s)) if s.reason == crate::logs::StatusReason::Complete));
                events.into_iter().filter_map(|e| match e { UpstreamEvent::Line(l) => Some(l), _ => None }).collect::<Vec<_>>()
            }
        };
        assert_eq!(read(StartAt::Beginning).await, whole);
        for cut in [0, 1, STREAM_PAGE - 1, STREAM_PAGE, STREAM_PAGE + 1, n - 2] {
            assert_eq!(read(StartAt::After(whole[cut].position)).await, whole[cut + 1..].to_vec(), "after line {cut}");
        }
        assert_eq!(read(StartAt::Tail(4)).await, whole[n - 4..].to_vec());
    }

    #[tokio::test]
    async fn pods_group_sources_and_choose_instances() {
        let store = MemoryStore::new(StoreLimits::default());
        for (uid, c, i) in [("u1", "app", 0), ("u1", "app", 1), ("u1", "side", 0), ("u2", "app", 0)] {
            store.append(&key(uid, c, i), &PodMeta::default(), &[]).await.unwrap();
        }
        store.mark_terminated(&key("u1", "app", 0), crate::storage::now_ms(), std::time::Duration::from_secs(60)).await.unwrap();
        let pods = archived_pods(&store, "team-a").await.unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].uid, "u2", "unmarked = most recent first");
        let u1 = &pods[1];
        assert!(matches!(u1.source(None, false), Err(RetentionError::ContainerRequired { .. })));
        assert_eq!(u1.source(Some("app"), false).unwrap().instance, 1);
        assert_eq!(u1.source(Some("app"), true).unwrap().instance, 0);
        assert!(u1.source(Some("side"), true).is_err());
        assert_eq!(u1.containers[0].instances, [0, 1]);
        assert!(u1.terminated_at.is_some());
    }
}
