//! Server-Sent Events encoding and the streaming response body.
//!
//! [`SseBody`] turns a stream of [`SseFrame`]s into HTTP body chunks:
//!
//! - **Coalescing**: every frame that is ready *now* goes into one write (bounded by
//!   [`MAX_BATCH_BYTES`]), so a burst of 5,000 lines costs a handful of writes. With
//!   [`SseBody::coalesce`] (`logs.sse_write_coalesce`, 5 ms by default) a partial batch also
//!   waits that long for more frames: a source printing one line at a time then costs one
//!   socket write per window per viewer instead of one per line — with 100 viewers of a
//!   1,000 lines/s pod, the difference between 100,000 and ≤ 20,000 `writev`s a second — for
//!   at most that much added latency.
//! - **Batched lines** ([`SseBody::batch_lines`], the `batch=true` query parameter): the
//!   `log` events of one write are sent as one `logs` event whose `data:` is a JSON array of
//!   the lines, each with its `id`, and whose `id:` is the last line's. A browser pays a
//!   main-thread task per SSE event; at 5,000 lines/s one event per line is 5,000 dispatches a
//!   second, and a 256 KiB chunk of them is one task of hundreds of milliseconds. Resume stays
//!   exact: `EventSource` takes an event's id only once the whole event has arrived.
//! - **Keepalive**: a `: keepalive` comment after `keepalive` of silence, so proxies and load
//!   balancers keep idle streams open.
//! - **Shutdown**: when the server's shutdown token fires the body writes a final frame
//!   (a `status` event `ended`/`shutdown`) and ends, instead of being cut mid-stream.
//! - **Token expiry**: [`SseBody::end_at`] ends the body with final frames (a `status` event
//!   `ended`/`token_expired`) at the caller's token expiry plus `auth.stream_token_grace`: a
//!   stream cannot re-authenticate, so it must not outlive its credentials indefinitely. The
//!   client reconnects with a fresh token and its last id, losing nothing.
//! - **Cancellation**: the body owns the upstream stream; when the client disconnects,
//!   hyper drops the body and with it the upstream Kubernetes request and any admission
//!   permit stored in [`SseBody::hold`].
//!
//! The body never compresses (compression buffers, which defeats streaming), and the
//! response carries `X-Accel-Buffering: no` for nginx.

use std::any::Any;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use futures::stream::BoxStream;
use salvo::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use salvo::prelude::*;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Reconnect delay advertised to `EventSource` clients (`retry:` field), in milliseconds.
pub const RETRY_MS: u32 = 2000;

/// Upper bound of one coalesced write. Larger bursts are split over several writes so one
/// chatty stream cannot build an unbounded buffer.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// One SSE frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseFrame {
    /// An event: optional `id:`, `event:` name and one `data:` line (JSON, no newlines).
    Event {
        /// Resume id (`id:` field); `None` leaves the client's last id unchanged.
        id: Option<String>,
        /// Event name (`log`, `status`, `lagged`).
        event: &'static str,
        /// The `data:` payload; must not contain `\n` or `\r` (JSON from serde never does).
        data: Bytes,
    },
    /// A comment line (`: text`), ignored by clients.
    Comment(&'static str),
    /// A `log` event already in wire form, made once by the hub for every viewer of a pod
    /// ([`crate::logs::encode_pod_line`]): writing it is a copy, not an encoding.
    EncodedLog(Bytes),
}

impl SseFrame {
    /// Appends the wire form of this frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            SseFrame::Event { id, event, data } => {
                if let Some(id) = id {
                    put_id_field(out, id);
                }
                out.put_slice(b"event: ");
                out.put_slice(event.as_bytes());
                out.put_slice(b"\ndata: ");
                out.put_slice(data);
                out.put_slice(b"\n\n");
            }
            SseFrame::Comment(text) => {
                out.put_slice(b": ");
                out.put_slice(text.as_bytes());
                out.put_slice(b"\n\n");
            }
            SseFrame::EncodedLog(frame) => out.put_slice(frame),
        }
    }

    fn is_log(&self) -> bool {
        matches!(self, SseFrame::Event { event: "log", .. } | SseFrame::EncodedLog(_))
    }

    /// The id and `data:` JSON of a `log` event that has an id; `None` for any other frame.
    fn log_parts(&self) -> Option<(&str, &[u8])> {
        match self {
            SseFrame::Event { id: Some(id), event: "log", data } => Some((id, data)),
            SseFrame::EncodedLog(frame) => encoded_log_parts(frame),
            _ => None,
        }
    }

    /// A JSON event.
    pub fn json(event: &'static str, id: Option<String>, value: &impl serde::Serialize) -> Self {
        // Serializing our own plain structs cannot fail; fall back to `{}` rather than panic.
        let data = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        SseFrame::Event { id, event, data: Bytes::from(data) }
    }
}

/// The id and `data:` JSON of a `log` event in wire form with an id
/// (`id: <id>\nevent: log\ndata: <json>\n\n`, as [`SseFrame::encode`] writes it: the hub's
/// shared encoding, [`SseFrame::EncodedLog`]).
pub(crate) fn encoded_log_parts(frame: &[u8]) -> Option<(&str, &[u8])> {
    let rest = frame.strip_prefix(b"id: ")?;
    // The id never contains a newline (`put_id_field`), so the first one ends it.
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let id = std::str::from_utf8(&rest[..nl]).ok()?;
    let data = rest[nl..].strip_prefix(b"\nevent: log\ndata: ")?.strip_suffix(b"\n\n")?;
    Some((id, data))
}

/// `id: <id>\n`. An id with a newline would break framing; ids are generated by us, but stay
/// safe anyway (without allocating for the ids that are fine).
fn put_id_field(out: &mut BytesMut, id: &str) {
    out.put_slice(b"id: ");
    for part in id.split(['\n', '\r']) {
        out.put_slice(part.as_bytes());
    }
    out.put_u8(b'\n');
}

/// `s` as a JSON string.
fn put_json_string(out: &mut BytesMut, s: &str) {
    // Writing into a `BytesMut` cannot fail, and a `str` always serializes.
    let _ = serde_json::to_writer(out.writer(), s);
}

/// Builds the final frames sent when the server shuts down.
pub type ShutdownFrames = Box<dyn FnOnce() -> Vec<SseFrame> + Send>;

/// The streaming SSE response body. See the module docs.
pub struct SseBody {
    frames: BoxStream<'static, SseFrame>,
    keepalive_every: Duration,
    keepalive: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    on_shutdown: Option<ShutdownFrames>,
    /// When set: the moment the stream must end, and the frames it ends with.
    deadline: Option<(Pin<Box<Sleep>>, ShutdownFrames)>,
    started: bool,
    done: bool,
    /// Values that must live exactly as long as the response (admission permits).
    hold: Vec<Box<dyn Any + Send>>,
    /// Counts `log` events sent (`log_lines_sent`) when set.
    metrics: Option<kubelens_core::Metrics>,
    /// Lines and bytes this body sent, for its audit record ([`SseBody::audit`]).
    sent: Option<kubelens_core::audit::SentCounter>,
    /// Encoded frames not yet handed to hyper (bounded by [`MAX_BATCH_BYTES`] + one frame);
    /// empty, with no allocation, between batches ([`take_batch`]).
    out: BytesMut,
    /// Log lines go out as `logs` events ([`SseBody::batch_lines`]).
    batch_lines: bool,
    /// The id of the last line of the `logs` event open at the end of `out`, if one is open:
    /// it becomes the event's `id:` when the event is closed ([`SseBody::close_lines`]).
    open_lines: Option<String>,
    /// How long a partial batch may wait for more frames ([`SseBody::coalesce`]).
    coalesce: Duration,
    /// When the pending partial batch is flushed.
    flush_at: Option<Pin<Box<Sleep>>>,
}

impl fmt::Debug for SseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseBody").field("done", &self.done).finish_non_exhaustive()
    }
}

impl SseBody {
    /// A body streaming `frames`, with keepalives every `keepalive_every`, ending with
    /// `on_shutdown()`'s frames when `shutdown` is cancelled.
    pub fn new(
        frames: BoxStream<'static, SseFrame>,
        keepalive_every: Duration,
        shutdown: CancellationToken,
        on_shutdown: ShutdownFrames,
    ) -> Self {
        Self {
            frames,
            keepalive_every,
            keepalive: Box::pin(tokio::time::sleep(keepalive_every)),
            shutdown: Box::pin(shutdown.cancelled_owned()),
            on_shutdown: Some(on_shutdown),
            deadline: None,
            started: false,
            done: false,
            hold: Vec::new(),
            metrics: None,
            sent: None,
            out: BytesMut::new(),
            batch_lines: false,
            open_lines: None,
            coalesce: Duration::ZERO,
            flush_at: None,
        }
    }

    /// Lets a partial batch wait up to `window` for more frames before it is written (see
    /// the module docs); zero (the default) writes every ready batch at once.
    pub fn coalesce(mut self, window: Duration) -> Self {
        self.coalesce = window;
        self
    }

    /// Sends the log lines of each write as one `logs` event (see the module docs).
    pub fn batch_lines(mut self, on: bool) -> Self {
        self.batch_lines = on;
        self
    }

    /// Adds a line to the `logs` event at the end of `out`, opening one if none is open.
    fn push_line(&mut self, id: &str, data: &[u8]) {
        if self.open_lines.is_some() {
            self.out.put_u8(b',');
        } else {
            self.out.put_slice(b"event: logs\ndata: [");
        }
        // `{"id":<id>` then the rest of the line's object (`data` is a JSON object).
        self.out.put_slice(b"{\"id\":");
        put_json_string(&mut self.out, id);
        let rest = data.strip_prefix(b"{").unwrap_or(b"}");
        if !rest.starts_with(b"}") {
            self.out.put_u8(b',');
        }
        self.out.put_slice(rest);
        let last = self.open_lines.get_or_insert_with(String::new);
        last.clear();
        last.push_str(id);
    }

    /// Closes the open `logs` event, if any: its id is its last line's.
    fn close_lines(&mut self) {
        if let Some(id) = self.open_lines.take() {
            self.out.put_slice(b"]\n");
            put_id_field(&mut self.out, &id);
            self.out.put_u8(b'\n');
        }
    }

    /// Counts this stream in `sse_streams_open` while it lives and its `log` events in
    /// `log_lines_sent`.
    pub fn metrics(mut self, metrics: &kubelens_core::Metrics) -> Self {
        self.hold.push(Box::new(metrics.sse_stream_guard()));
        self.metrics = Some(metrics.clone());
        self
    }

    /// Records the stream in the audit trail: `logs_opened` now, `logs_closed` with the lines
    /// and bytes sent when the body is dropped (`None`: not audited).
    pub fn audit(mut self, guard: Option<kubelens_core::audit::LogAccessGuard>) -> Self {
        if let Some(guard) = guard {
            self.sent = Some(guard.counter());
            self.hold.push(Box::new(guard.opened()));
        }
        self
    }

    /// Keeps `value` alive until the body is dropped (the client disconnected or the stream
    /// ended): used for admission permits.
    pub fn hold(mut self, value: impl Any + Send) -> Self {
        self.hold.push(Box::new(value));
        self
    }

    /// Ends the body at `deadline` with `frames()` (see the module docs: token expiry).
    pub fn end_at(mut self, deadline: Instant, frames: ShutdownFrames) -> Self {
        self.deadline = Some((Box::pin(tokio::time::sleep_until(deadline)), frames));
        self
    }

    /// Sets SSE headers and the body on `res`.
    pub fn respond(self, res: &mut Response) {
        set_sse_headers(res);
        res.stream(self);
    }
}

/// `Content-Type: text/event-stream`, `Cache-Control: no-cache`, `X-Accel-Buffering: no`.
pub fn set_sse_headers(res: &mut Response) {
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// Hands the encoded batch to hyper with its whole allocation: `split()` would leave the
/// unused tail of the allocation in `out` for the stream's lifetime, kept alive (the
/// allocation is shared) even after hyper wrote and dropped the batch. An idle stream then
/// holds no buffer at all between keepalives; a busy one allocates once per batch (at most
/// one per [`MAX_BATCH_BYTES`] or coalescing window).
fn take_batch(out: &mut BytesMut) -> Bytes {
    std::mem::take(out).freeze()
}

impl SseBody {
    /// The encoded batch for hyper ([`take_batch`]), counted for the audit record.
    fn emit(&mut self) -> Poll<Option<Result<Bytes, Infallible>>> {
        let batch = take_batch(&mut self.out);
        if let Some(sent) = &self.sent {
            sent.bytes(batch.len() as u64);
        }
        Poll::Ready(Some(Ok(batch)))
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.started {
            this.started = true;
            this.out.put_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.done = true;
            this.close_lines();
            if let Some(frames) = this.on_shutdown.take() {
                for frame in frames() {
                    frame.encode(&mut this.out);
                }
            }
            return this.emit();
        }
        if let Some((sleep, _)) = this.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            this.done = true;
            this.close_lines();
            if let Some((_, frames)) = this.deadline.take() {
                for frame in frames() {
                    frame.encode(&mut this.out);
                }
            }
            return this.emit();
        }
        // A partial batch waiting for its coalescing window does not look at new frames until
        // the window ends: polling them would register this task's waker with the viewer's
        // queue again, and then every line would wake every viewer (100 viewers of a 1,000
        // lines/s pod: 100,000 wake-ups a second instead of 20,000). The frames wait in the
        // viewer's bounded queue (`logs.viewer_queue_lines`, 4,096 by default: more than a
        // window holds below ~800k lines/s).
        if let Some(timer) = this.flush_at.as_mut()
            && timer.as_mut().poll(cx).is_pending()
        {
            return Poll::Pending;
        }
        let mut ended = false;
        while this.out.len() < MAX_BATCH_BYTES {
            match this.frames.as_mut().poll_next(cx) {
                Poll::Ready(Some(frame)) => {
                    if frame.is_log() {
                        if let Some(m) = &this.metrics {
                            m.log_lines_sent.inc();
                        }
                        if let Some(sent) = &this.sent {
                            sent.lines(1);
                        }
                    }
                    if this.batch_lines {
                        if let Some((id, data)) = frame.log_parts() {
                            this.push_line(id, data);
                            continue;
                        }
                        this.close_lines();
                    }
                    frame.encode(&mut this.out);
                }
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if ended {
            this.done = true;
        }
        if !this.out.is_empty() {
            // Coalescing: a lone line waits up to `coalesce` for company, so a viewer of a
            // line-at-a-time source costs one socket write per window instead of one per line.
            // A full batch, the end, or a zero window flush at once.
            let hold = !ended && this.out.len() < MAX_BATCH_BYTES && !this.coalesce.is_zero();
            if hold {
                let window = this.coalesce;
                let timer = this.flush_at.get_or_insert_with(|| Box::pin(tokio::time::sleep(window)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            this.flush_at = None;
            this.close_lines();
            let next = Instant::now() + this.keepalive_every;
            this.keepalive.as_mut().reset(next);
            return this.emit();
        }
        if ended {
            return Poll::Ready(None);
        }
        if this.keepalive.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + this.keepalive_every;
            this.keepalive.as_mut().reset(next);
            SseFrame::Comment("keepalive").encode(&mut this.out);
            // Register the new deadline with the waker.
            let _ = this.keepalive.as_mut().poll(cx);
            return this.emit();
        }
        Poll::Pending
    }
}

use std::future::Future as _;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn log(id: &str) -> SseFrame {
        SseFrame::Event { id: Some(id.to_owned()), event: "log", data: Bytes::from_static(b"{}") }
    }

    #[test]
    fn frames_encode_to_the_wire_format() {
        let mut out = BytesMut::new();
        log("t~1").encode(&mut out);
        SseFrame::Comment("keepalive").encode(&mut out);
        SseFrame::Event { id: Some("evil\nid".into()), event: "status", data: Bytes::from_static(b"{\"a\":1}") }
            .encode(&mut out);
        assert_eq!(
            &out[..],
            b"id: t~1\nevent: log\ndata: {}\n\n: keepalive\n\nid: evilid\nevent: status\ndata: {\"a\":1}\n\n"
        );
    }

    #[tokio::test]
    async fn ready_frames_are_coalesced_into_one_write() {
        let frames = futures::stream::iter(vec![log("1"), log("2"), log("3")]).boxed();
        let mut body = SseBody::new(frames, Duration::from_secs(15), CancellationToken::new(), Box::new(Vec::new));
        let first = body.next().await.unwrap().unwrap();
        let text = String::from_utf8(first.to_vec()).unwrap();
        assert!(text.starts_with("retry: 2000\n\n"));
        assert_eq!(text.matches("event: log").count(), 3, "{text}");
        assert!(body.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_streams_get_keepalives_and_shutdown_ends_them_with_a_final_frame() {
        let (tx, rx) = futures::channel::mpsc::channel::<SseFrame>(4);
        let token = CancellationToken::new();
        let mut body = SseBody::new(
            rx.boxed(),
            Duration::from_secs(15),
            token.clone(),
            Box::new(|| vec![SseFrame::Comment("bye")]),
        );
        assert!(body.next().await.unwrap().unwrap().starts_with(b"retry:"));
        let keepalive = body.next().await.unwrap().unwrap();
        assert_eq!(&keepalive[..], b": keepalive\n\n");
        token.cancel();
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b": bye\n\n");
        assert!(body.next().await.is_none());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_ends_the_stream_with_its_final_frames() {
        let (tx, rx) = futures::channel::mpsc::channel::<SseFrame>(4);
        let mut body = SseBody::new(rx.boxed(), Duration::from_secs(15), CancellationToken::new(), Box::new(Vec::new))
            .end_at(Instant::now() + Duration::from_secs(20), Box::new(|| vec![SseFrame::Comment("expired")]));
        assert!(body.next().await.unwrap().unwrap().starts_with(b"retry:"));
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b": keepalive\n\n", "15 s of silence");
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b": expired\n\n", "at 20 s");
        assert!(body.next().await.is_none());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn partial_batches_wait_for_the_coalescing_window() {
        use futures::SinkExt;
        let (mut tx, rx) = futures::channel::mpsc::channel::<SseFrame>(16);
        let mut body = SseBody::new(rx.boxed(), Duration::from_secs(15), CancellationToken::new(), Box::new(Vec::new))
            .coalesce(Duration::from_millis(5));
        tx.send(log("1")).await.unwrap();
        let started = Instant::now();
        // Lines arriving inside the window share one write.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            tx.send(log("2")).await.unwrap();
            tx
        });
        let first = body.next().await.unwrap().unwrap();
        let text = String::from_utf8(first.to_vec()).unwrap();
        assert_eq!(text.matches("event: log").count(), 2, "{text}");
        assert!(started.elapsed() >= Duration::from_millis(5) && started.elapsed() < Duration::from_millis(10));
        drop(sender.await.unwrap());
        assert!(body.next().await.is_none(), "the end flushes at once");
    }

    #[tokio::test]
    async fn a_written_batch_leaves_no_buffer_behind() {
        use futures::SinkExt;
        let (mut tx, rx) = futures::channel::mpsc::channel::<SseFrame>(16);
        let mut body = SseBody::new(rx.boxed(), Duration::from_secs(15), CancellationToken::new(), Box::new(Vec::new));
        tx.send(log(&"x".repeat(10_000))).await.unwrap();
        let batch = body.next().await.unwrap().unwrap();
        assert!(batch.len() > 10_000);
        // An idle stream keeps no allocation between batches (with `split()` it kept the
        // unused tail and, shared, the whole allocation).
        assert_eq!(body.out.capacity(), 0);
    }

    /// Counts how often the body polls its frames.
    struct Counted<S> {
        inner: S,
        polls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<S: Stream + Unpin> Stream for Counted<S> {
        type Item = S::Item;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
            self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Pin::new(&mut self.inner).poll_next(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lines_arriving_inside_the_window_wait_in_the_queue_without_waking_the_body() {
        use futures::SinkExt;
        let (mut tx, rx) = futures::channel::mpsc::channel::<SseFrame>(16);
        let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let frames = Counted { inner: rx, polls: std::sync::Arc::clone(&polls) }.boxed();
        let mut body = SseBody::new(frames, Duration::from_secs(15), CancellationToken::new(), Box::new(Vec::new))
            .coalesce(Duration::from_millis(5));
        tx.send(log("1")).await.unwrap();
        let sender = tokio::spawn(async move {
            for i in 2..=5 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.send(log(&i.to_string())).await.unwrap();
            }
            tx
        });
        let first = body.next().await.unwrap().unwrap();
        let text = String::from_utf8(first.to_vec()).unwrap();
        assert_eq!(text.matches("event: log").count(), 5, "{text}");
        // Line 1 and the empty queue (2 polls), then nothing until the window ends, then
        // lines 2..5 and the empty queue (5): a body woken by every line would poll 11 times.
        assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 7);
        drop(sender.await.unwrap());
    }

    fn encoded(id: &str, data: &str) -> SseFrame {
        let mut out = BytesMut::new();
        SseFrame::Event { id: Some(id.into()), event: "log", data: Bytes::from(data.to_owned()) }.encode(&mut out);
        SseFrame::EncodedLog(out.freeze())
    }

    #[tokio::test]
    async fn batched_lines_are_one_logs_event_per_run_of_lines_with_the_last_id() {
        let status = SseFrame::Event { id: None, event: "status", data: Bytes::from_static(b"{\"state\":\"x\"}") };
        let frames = vec![log("a~0"), encoded("b\"~1", r#"{"line":"x"}"#), status, encoded("c~0", r#"{"line":"y","level":"info"}"#)];
        let metrics = kubelens_core::Metrics::new();
        let mut body = SseBody::new(futures::stream::iter(frames).boxed(), Duration::from_secs(15), CancellationToken::new(), Box::new(Vec::new))
            .metrics(&metrics)
            .batch_lines(true);
        let text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
        assert_eq!(
            text,
            concat!(
                "retry: 2000\n\n",
                "event: logs\ndata: [{\"id\":\"a~0\"},{\"id\":\"b\\\"~1\",\"line\":\"x\"}]\nid: b\"~1\n\n",
                "event: status\ndata: {\"state\":\"x\"}\n\n",
                "event: logs\ndata: [{\"id\":\"c~0\",\"line\":\"y\",\"level\":\"info\"}]\nid: c~0\n\n",
            )
        );
        // Each `data:` is valid JSON: an array of the lines with their ids.
        let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        let first: serde_json::Value = serde_json::from_str(data[0]).unwrap();
        assert_eq!(first[1]["id"], "b\"~1");
        assert_eq!(metrics.log_lines_sent.get(), 3, "lines are counted, not events");
        assert!(body.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_logs_event_open_in_the_coalescing_window_is_closed_before_the_shutdown_frame() {
        use futures::SinkExt;
        let (mut tx, rx) = futures::channel::mpsc::channel::<SseFrame>(4);
        let token = CancellationToken::new();
        let mut body = SseBody::new(rx.boxed(), Duration::from_secs(15), token.clone(), Box::new(|| vec![SseFrame::Comment("bye")]))
            .coalesce(Duration::from_secs(1))
            .batch_lines(true);
        tx.send(log("a~0")).await.unwrap();
        let cancel = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            token.cancel();
            tx
        });
        let text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
        assert_eq!(text, "retry: 2000\n\nevent: logs\ndata: [{\"id\":\"a~0\"}]\nid: a~0\n\n: bye\n\n");
        drop(cancel.await.unwrap());
    }

    #[tokio::test]
    async fn metrics_count_open_streams_and_log_lines() {
        let metrics = kubelens_core::Metrics::new();
        let frames = futures::stream::iter(vec![log("1"), SseFrame::Comment("c"), log("2")]).chain(futures::stream::pending()).boxed();
        let mut body = SseBody::new(frames, Duration::from_secs(15), CancellationToken::new(), Box::new(Vec::new)).metrics(&metrics);
        assert_eq!(metrics.sse_streams_open.get(), 1);
        let _ = body.next().await.unwrap().unwrap();
        assert_eq!(metrics.log_lines_sent.get(), 2);
        drop(body);
        assert_eq!(metrics.sse_streams_open.get(), 0);
    }

    #[tokio::test]
    async fn held_values_are_dropped_with_the_body() {
        let marker = std::sync::Arc::new(());
        let body = SseBody::new(futures::stream::pending().boxed(), Duration::from_secs(1), CancellationToken::new(), Box::new(Vec::new))
            .hold(marker.clone());
        assert_eq!(std::sync::Arc::strong_count(&marker), 2);
        drop(body);
        assert_eq!(std::sync::Arc::strong_count(&marker), 1);
    }
}
