//! Plain reads: one finite request **without** `timestamps=true`, for answers that need the
//! text of the log and nothing else (a text download without timestamps).
//!
//! Why a second reader: exact positions come from the kubelet's timestamps, which make
//! `timestamps=true` output about a fifth bigger than the text (a 30-byte RFC 3339 stamp per
//! ~150-byte line). On the API server → kubelet path that is what a whole-log download waits
//! for, so reading what `kubectl logs` reads is what makes a download as fast as `kubectl
//! logs > file` (docs/benchmarks/search.md). The price: lines have no position, so a plain
//! read cannot resume. It is one request; a request that fails or drops mid-way ends with
//! `ended/dropped` (a download is then aborted, so the client sees a failed transfer, as with
//! `kubectl`), and only starts that need no position are possible (the whole log, or a tail).

use std::collections::VecDeque;

use chrono::DateTime;
use futures::{AsyncReadExt, StreamExt};
use kube::api::{Api, LogParams};
use k8s_openapi::api::core::v1::Pod;

use super::{
    LinePosition, PodLogUpstream, RawLine, READ_CHUNK, Reader, SourceKey, SourceState, SourceStatus, StatusReason,
    UpstreamEvent, UpstreamPermit, UpstreamStream,
};
use crate::logs::split::{LineSplitter, truncate_text};
use crate::metrics::{GaugeGuard, Metrics};

/// The position every line of a plain read carries: plain reads have none (see the module
/// docs), and their consumers never look at it.
pub const NO_POSITION: LinePosition = LinePosition { ts: DateTime::UNIX_EPOCH, index: 0 };

struct PlainRead {
    api: Api<Pod>,
    key: SourceKey,
    params: Option<LogParams>,
    reader: Option<Reader>,
    splitter: LineSplitter,
    max_line_length: usize,
    buf: Vec<u8>,
    pending: VecDeque<UpstreamEvent>,
    done: bool,
    metrics: Option<Metrics>,
    _open: Option<GaugeGuard>,
    _permit: Option<UpstreamPermit>,
}

impl PodLogUpstream {
    /// A plain read of `key` (see the module docs): the whole log, or its last `tail` lines,
    /// each with [`NO_POSITION`], then `ended/complete` (or `ended/dropped` when the request
    /// failed mid-way). Holds `permit` until it ends.
    pub fn plain_read(&self, key: SourceKey, tail: Option<u32>, max_line_length: usize, permit: Option<UpstreamPermit>) -> UpstreamStream {
        let tail_lines = tail.map(i64::from);
        let params = LogParams {
            container: Some(key.container.clone()),
            follow: false,
            timestamps: false,
            previous: key.previous,
            tail_lines,
            ..LogParams::default()
        };
        let read = PlainRead {
            api: Api::namespaced(self.client.clone(), &key.namespace),
            key,
            params: Some(params),
            reader: None,
            splitter: LineSplitter::new(max_line_length),
            max_line_length,
            buf: vec![0; READ_CHUNK],
            pending: VecDeque::new(),
            done: false,
            _open: self.metrics.as_ref().map(Metrics::upstream_stream_guard),
            metrics: self.metrics.clone(),
            _permit: permit,
        };
        futures::stream::unfold(read, |mut read| async move {
            let event = read.next_event().await?;
            Some((event, read))
        })
        .boxed()
    }
}

impl PlainRead {
    async fn next_event(&mut self) -> Option<UpstreamEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            if let Some(params) = self.params.take() {
                match self.api.log_stream(&self.key.pod, &params).await {
                    Ok(reader) => self.reader = Some(Box::pin(reader)),
                    Err(err) => {
                        let reason = match &err {
                            kube::Error::Api(status) if status.code == 404 => StatusReason::Deleted,
                            kube::Error::Api(status) if status.code == 400 && self.key.previous => StatusReason::NoPreviousInstance,
                            kube::Error::Api(status) if matches!(status.code, 401 | 403) => StatusReason::Refused,
                            _ => StatusReason::Dropped,
                        };
                        tracing::debug!(source = %self.key, error = %err, "plain log read refused");
                        return Some(self.end(reason));
                    }
                }
            }
            let Some(reader) = self.reader.as_mut() else { return Some(self.end(StatusReason::Dropped)) };
            match reader.read(&mut self.buf).await {
                Ok(0) => {
                    let mut last = None;
                    self.splitter.finish(|raw| last = Some(raw));
                    if let Some(raw) = last {
                        self.accept(raw);
                    }
                    let end = self.end(StatusReason::Complete);
                    self.pending.push_back(end);
                }
                Ok(n) => {
                    let chunk = bytes::Bytes::copy_from_slice(self.buf.get(..n).unwrap_or_default());
                    let mut lines = Vec::new();
                    self.splitter.feed(&chunk, |line| lines.push(line));
                    for line in lines {
                        self.accept(line);
                    }
                }
                Err(err) => {
                    tracing::debug!(source = %self.key, error = %err, "plain log read dropped");
                    return Some(self.end(StatusReason::Dropped));
                }
            }
        }
    }

    fn accept(&mut self, line: crate::logs::split::RawLine) {
        if let Some(m) = &self.metrics {
            m.log_lines_received.inc();
            m.log_bytes_received.add(u64::try_from(line.bytes.len().saturating_add(line.dropped)).unwrap_or(u64::MAX));
        }
        let (text, truncated) = truncate_text(&line.bytes, line.dropped, self.max_line_length);
        if let Some(m) = self.metrics.as_ref().filter(|_| truncated) {
            m.log_lines_truncated.inc();
        }
        self.pending.push_back(UpstreamEvent::Line(RawLine { position: NO_POSITION, text, truncated }));
    }

    /// The final event; the request (and the upstream slot) is released now.
    fn end(&mut self, reason: StatusReason) -> UpstreamEvent {
        self.done = true;
        self.reader = None;
        self._open = None;
        self._permit = None;
        UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, reason))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::cluster::testing::{FakeCluster, FakeObjects};
    use crate::config::{FiltersConfig, NamespacesConfig};
    use crate::logs::upstream::CachedContainerLookup;
    use crate::policy::AccessPolicy;

    /// A fake API server answering one log request with `body` (then closing), remembering
    /// the request line.
    async fn serve_once(status: &'static str, body: &'static str) -> (String, Arc<Mutex<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(String::new()));
        let seen_by_server = Arc::clone(&seen);
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let n = socket.read(&mut head).await.unwrap();
            *seen_by_server.lock().unwrap() = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or_default().to_owned();
            let response = format!("HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            socket.write_all(response.as_bytes()).await.unwrap();
        });
        (format!("http://{addr}"), seen)
    }

    fn upstream(url: &str) -> PodLogUpstream {
        let objects = FakeObjects {
            namespaces: vec![serde_json::from_value(serde_json::json!({"metadata": {"name": "team-a"}})).unwrap()],
            ..FakeObjects::default()
        };
        let policy = AccessPolicy::new(&NamespacesConfig { allowed: vec!["team-a".into()] }, &FiltersConfig::default()).unwrap();
        let fake = FakeCluster::new(&policy, objects);
        let lookup = Arc::new(CachedContainerLookup::new(fake.cluster(), Arc::new(policy)));
        PodLogUpstream::new(kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap(), lookup)
    }

    fn key() -> SourceKey {
        SourceKey { namespace: "team-a".into(), pod: "p".into(), container: "app".into(), previous: false }
    }

    #[tokio::test]
    async fn reads_the_text_without_timestamps_and_cuts_long_lines() {
        let (url, seen) = serve_once("200 OK", "first\nsecond line is long\nlast without newline").await;
        let events: Vec<UpstreamEvent> = upstream(&url).plain_read(key(), Some(3), 10, None).collect().await;
        let request = seen.lock().unwrap().clone();
        assert!(request.contains("tailLines=3") && !request.contains("timestamps=true") && !request.contains("follow=true"), "{request}");
        let lines: Vec<(String, bool)> = events
            .iter()
            .filter_map(|e| match e {
                UpstreamEvent::Line(l) => Some((l.text.clone(), l.truncated)),
                _ => None,
            })
            .collect();
        assert_eq!(lines.len(), 3, "{events:?}");
        assert_eq!(lines[0], ("first".to_owned(), false));
        assert!(lines[1].1 && lines[1].0.starts_with("second lin"), "cut like every other read: {lines:?}");
        assert!(lines[2].1 && lines[2].0.starts_with("last witho"), "the last line, without its newline: {lines:?}");
        assert_eq!(events.last(), Some(&UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Complete))));
    }

    #[tokio::test]
    async fn a_missing_pod_ends_as_deleted() {
        let (url, _) = serve_once("404 Not Found", r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"p\" not found","reason":"NotFound","code":404}"#).await;
        let events: Vec<UpstreamEvent> = upstream(&url).plain_read(key(), None, 100, None).collect().await;
        assert_eq!(events, [UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Deleted))]);
    }
}
