//! Bounded line splitting, truncation and decoding of an upstream log byte stream.
//!
//! [`LineSplitter`] never holds more than `max_line_length + PREFIX_SLACK` bytes of one line:
//! once a line is longer, the rest of it up to the next `\n` is counted and discarded as it
//! streams past, so a 1 MB line costs a counter, not a megabyte. Lines that lie wholly inside
//! one upstream chunk are handed out as zero-copy [`Bytes`] slices of that chunk.
//!
//! [`LineDecoder`] then parses the kubelet's timestamp prefix, assigns the per-timestamp
//! index used by resume ids, and cuts the text to `max_line_length` **bytes** of UTF-8 on a
//! character boundary, appending ` … [truncated N bytes]` (N = bytes removed). For ASCII logs
//! bytes are characters; a line of multi-byte characters shows fewer characters than the
//! limit, which keeps the memory bound exact. Invalid UTF-8 is replaced with U+FFFD
//! (`String::from_utf8_lossy`): binary output stays visible and can never produce invalid
//! JSON; the replacement can at most triple the byte length of the kept part.
//!
//! Line ends: `\n` and `\r\n` (the `\r` is removed); a last line without a newline is still
//! emitted when the stream ends; empty lines are kept.

use std::error::Error as StdError;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use super::time::{LogTimestamp, split_timestamp};
use super::{LogError, LogLine, LogSource, SourceCursor};

/// Bytes kept beyond `max_line_length` for the kubelet's timestamp prefix and a space
/// (`2026-01-30T10:00:00.123456789+00:00 ` is 36 bytes).
pub const PREFIX_SLACK: usize = 36;

/// The visible marker appended to a cut line; `{}` is the number of removed bytes.
pub const TRUNCATION_MARKER_PREFIX: &str = " … [truncated ";

/// One raw line as cut by [`LineSplitter`]: at most the splitter's limit of bytes, plus the
/// number of bytes of the same line that were discarded beyond it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    /// The kept bytes (no line terminator).
    pub bytes: Bytes,
    /// Bytes of this line discarded beyond the limit (0 when the line fit).
    pub dropped: usize,
}

/// Cuts a byte stream into lines with a hard per-line memory bound.
#[derive(Debug)]
pub struct LineSplitter {
    limit: usize,
    partial: BytesMut,
    dropped: usize,
    last_cr: bool,
    in_line: bool,
}

impl LineSplitter {
    /// A splitter keeping at most `max_line_length + PREFIX_SLACK` bytes of any line.
    pub fn new(max_line_length: usize) -> Self {
        Self::with_limit(max_line_length.saturating_add(PREFIX_SLACK))
    }

    /// A splitter keeping at most `limit` raw bytes of any line (at least 1).
    pub fn with_limit(limit: usize) -> Self {
        Self { limit: limit.max(1), partial: BytesMut::new(), dropped: 0, last_cr: false, in_line: false }
    }

    /// Forgets an unfinished line (the stream it came from was dropped; the line is read
    /// again, whole, after reconnecting).
    pub fn reset(&mut self) {
        self.partial.clear();
        self.dropped = 0;
        self.last_cr = false;
        self.in_line = false;
    }

    /// Bytes currently held for an unfinished line (never more than the limit).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds one chunk, calling `emit` for every line it completes.
    pub fn feed(&mut self, chunk: &Bytes, mut emit: impl FnMut(RawLine)) {
        let mut pos = 0;
        while pos < chunk.len() {
            let Some(nl) = memchr::memchr(b'\n', &chunk[pos..]) else {
                self.append(chunk, pos, chunk.len());
                return;
            };
            let end = pos + nl;
            if !self.in_line {
                // Fast path: the whole line is inside this chunk; hand out a slice of it.
                let len = end - pos;
                let cr = len > 0 && chunk[end - 1] == b'\r';
                if len <= self.limit {
                    let stop = if cr { end - 1 } else { end };
                    emit(RawLine { bytes: chunk.slice(pos..stop), dropped: 0 });
                } else {
                    let dropped = len - self.limit - usize::from(cr);
                    emit(RawLine { bytes: chunk.slice(pos..pos + self.limit), dropped });
                }
            } else {
                self.append(chunk, pos, end);
                emit(self.take_line());
            }
            pos = end + 1;
        }
    }

    /// Ends the stream: emits the last line if it had no terminating newline.
    pub fn finish(&mut self, mut emit: impl FnMut(RawLine)) {
        if self.in_line {
            emit(self.take_line());
        }
    }

    /// Adds `chunk[from..to]` (no newline inside) to the current line, within the bound.
    fn append(&mut self, chunk: &Bytes, from: usize, to: usize) {
        if from == to {
            return;
        }
        self.in_line = true;
        let room = self.limit - self.partial.len();
        let keep = room.min(to - from);
        self.partial.extend_from_slice(&chunk[from..from + keep]);
        self.dropped += to - from - keep;
        self.last_cr = chunk[to - 1] == b'\r';
    }

    fn take_line(&mut self) -> RawLine {
        let mut dropped = self.dropped;
        if self.last_cr {
            if dropped > 0 {
                dropped -= 1;
            } else {
                self.partial.truncate(self.partial.len() - 1);
            }
        }
        let bytes = self.partial.split().freeze();
        self.dropped = 0;
        self.last_cr = false;
        self.in_line = false;
        RawLine { bytes, dropped }
    }
}

/// Turns raw lines of one source into [`LogLine`]s: timestamp, index, truncation, UTF-8.
#[derive(Debug)]
pub struct LineDecoder {
    source: Arc<LogSource>,
    max_line_length: usize,
    last_ts: LogTimestamp,
    next_index: u32,
    seen: bool,
}

impl LineDecoder {
    /// A decoder for one source. Start a new decoder for every upstream request: the index
    /// of a line counts from the first line of the request with the same timestamp.
    pub fn new(source: Arc<LogSource>, max_line_length: usize) -> Self {
        Self { source, max_line_length, last_ts: LogTimestamp::default(), next_index: 0, seen: false }
    }

    /// Assigns the timestamp and index of the next line and returns its text part. Lines
    /// without a parseable timestamp prefix inherit the previous timestamp.
    #[inline]
    pub fn position<'a>(&mut self, raw: &'a [u8]) -> (LogTimestamp, u32, &'a [u8]) {
        let (ts, text) = split_timestamp(raw).unwrap_or((self.last_ts, raw));
        let index = if self.seen && ts == self.last_ts { self.next_index } else { 0 };
        self.seen = true;
        self.last_ts = ts;
        self.next_index = index.saturating_add(1);
        (ts, index, text)
    }

    /// Decodes one raw line.
    #[inline]
    pub fn decode(&mut self, raw: &[u8], dropped: usize) -> LogLine {
        let (ts, index, text) = self.position(raw);
        self.finish_line(ts, index, text, dropped)
    }

    /// Decodes one raw line unless `cursor` says the client already has it.
    #[inline]
    pub fn decode_after(&mut self, raw: &[u8], dropped: usize, cursor: Option<&SourceCursor>) -> Option<LogLine> {
        let (ts, index, text) = self.position(raw);
        if cursor.is_some_and(|c| !c.admits(ts, index)) {
            return None;
        }
        Some(self.finish_line(ts, index, text, dropped))
    }

    fn finish_line(&self, ts: LogTimestamp, index: u32, text: &[u8], dropped: usize) -> LogLine {
        let (text, truncated) = truncate_text(text, dropped, self.max_line_length);
        LogLine { ts, index, source: self.source.clone(), text, truncated, encoded: None }
    }
}

/// Cuts `text` to at most `max` bytes on a UTF-8 boundary and appends the marker when
/// anything was removed (`dropped` = bytes already discarded by the splitter).
pub fn truncate_text(text: &[u8], dropped: usize, max: usize) -> (String, bool) {
    if text.len() <= max && dropped == 0 {
        return (lossy(text), false);
    }
    let mut cut = max.min(text.len());
    // Step back over at most 3 continuation bytes so a multi-byte character is not split.
    let mut back = 0;
    while cut > 0 && back < 3 && text.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
        cut -= 1;
        back += 1;
    }
    // The splitter may have cut inside a character too (text ends where the kept bytes end):
    // drop an incomplete trailing sequence instead of rendering it as U+FFFD.
    if let Err(e) = std::str::from_utf8(&text[..cut])
        && e.error_len().is_none()
    {
        cut = e.valid_up_to();
    }
    let removed = text.len() - cut + dropped;
    let mut out = lossy(&text[..cut]);
    out.push_str(TRUNCATION_MARKER_PREFIX);
    out.push_str(&removed.to_string());
    out.push_str(" bytes]");
    (out, true)
}

fn lossy(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Adapts an upstream byte stream into bounded [`RawLine`]s. Errors of the inner stream are
/// passed through as items; the pending partial line is emitted when the stream ends.
pub fn split_lines<S, E>(stream: S, max_line_length: usize) -> impl Stream<Item = Result<RawLine, E>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    let state = (Box::pin(stream), LineSplitter::new(max_line_length), std::collections::VecDeque::new(), false);
    futures::stream::unfold(state, |(mut inner, mut splitter, mut pending, mut done)| async move {
        loop {
            if let Some(line) = pending.pop_front() {
                return Some((Ok(line), (inner, splitter, pending, done)));
            }
            if done {
                return None;
            }
            match inner.next().await {
                Some(Ok(chunk)) => splitter.feed(&chunk, |l| pending.push_back(l)),
                Some(Err(e)) => return Some((Err(e), (inner, splitter, pending, done))),
                None => {
                    done = true;
                    splitter.finish(|l| pending.push_back(l));
                }
            }
        }
    })
}

/// The whole decode stage for one upstream request of one source: bytes in, [`LogLine`]s
/// out. With `resume`, lines the client already has are dropped (the request must start at
/// or before `resume.upstream_since()`, as [`SourceCursor`] explains). Inner errors become
/// [`LogError::Upstream`] items.
pub fn decode_log_stream<S, E>(
    stream: S,
    source: Arc<LogSource>,
    max_line_length: usize,
    resume: Option<SourceCursor>,
) -> impl Stream<Item = Result<LogLine, LogError>>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut decoder = LineDecoder::new(source, max_line_length);
    split_lines(stream, max_line_length).filter_map(move |item| {
        let out = match item {
            Ok(raw) => decoder.decode_after(&raw.bytes, raw.dropped, resume.as_ref()).map(Ok),
            Err(e) => Some(Err(LogError::Upstream(e.into()))),
        };
        futures::future::ready(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_all(chunks: &[&[u8]], limit: usize) -> Vec<(Vec<u8>, usize)> {
        let mut s = LineSplitter::with_limit(limit);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(&Bytes::copy_from_slice(c), |l| out.push((l.bytes.to_vec(), l.dropped)));
            assert!(s.buffered() <= limit);
        }
        s.finish(|l| out.push((l.bytes.to_vec(), l.dropped)));
        out
    }

    #[test]
    fn splits_crlf_empty_and_unterminated_lines() {
        let out = split_all(&[b"a\r\n\nb", b"c\r", b"\nlast"], 100);
        let want: Vec<(Vec<u8>, usize)> =
            vec![(b"a".to_vec(), 0), (vec![], 0), (b"bc".to_vec(), 0), (b"last".to_vec(), 0)];
        assert_eq!(out, want);
        assert!(split_all(&[b""], 10).is_empty());
        assert_eq!(split_all(&[b"\n"], 10), vec![(vec![], 0)]);
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_discarded_without_buffering() {
        assert_eq!(split_all(&[b"0123456789abc\nok\n"], 4), vec![(b"0123".to_vec(), 9), (b"ok".to_vec(), 0)]);
        // Across chunks, with CRLF: the \r is neither kept nor counted.
        assert_eq!(split_all(&[b"0123", b"4567", b"89\r", b"\n"], 4), vec![(b"0123".to_vec(), 6)]);
        assert_eq!(split_all(&[b"0123\r\n"], 4), vec![(b"0123".to_vec(), 0)]);
        assert_eq!(split_all(&[b"01", b"23\r", b"\n"], 4), vec![(b"0123".to_vec(), 0)]);
        // A 1 MB line fed in 64 KiB chunks never grows the buffer past the limit.
        let mut s = LineSplitter::with_limit(1000);
        let chunk = Bytes::from(vec![b'x'; 65_536]);
        let mut lines = Vec::new();
        for _ in 0..16 {
            s.feed(&chunk, |l| lines.push(l));
            assert!(s.buffered() <= 1000);
        }
        s.feed(&Bytes::from_static(b"\n"), |l| lines.push(l));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].bytes.len(), 1000);
        assert_eq!(lines[0].dropped, 16 * 65_536 - 1000);
    }

    #[test]
    fn decodes_timestamps_indexes_truncation_and_bad_utf8() {
        let src = LogSource::new("web-1", "app");
        let mut d = LineDecoder::new(src, 64);
        let a = d.decode(b"2026-01-30T10:00:00.1Z first", 0);
        let b = d.decode(b"2026-01-30T10:00:00.1Z second", 0);
        let c = d.decode(b"no timestamp", 0);
        let e = d.decode(b"2026-01-30T10:00:00.2Z third", 0);
        assert_eq!((a.index, b.index, c.index, e.index), (0, 1, 2, 0));
        assert_eq!(c.ts, a.ts);
        assert_eq!(b.text, "second");
        assert_eq!(c.id().to_string(), "2026-01-30T10:00:00.100000000Z~2");
        let bad = d.decode(b"2026-01-30T10:00:00.3Z \xff\xfebin", 0);
        assert_eq!(bad.text, "\u{fffd}\u{fffd}bin");
        let long = format!("2026-01-30T10:00:00.3Z {}é", "x".repeat(63));
        let cut = d.decode(long.as_bytes(), 1000);
        assert!(cut.truncated);
        assert_eq!(cut.text, format!("{} … [truncated 1002 bytes]", "x".repeat(63)));
        // The splitter cut inside `é` (kept bytes end mid-character): no U+FFFD at the cut.
        let cut = d.decode("2026-01-30T10:00:00.3Z abcé".as_bytes().split_last().unwrap().1, 10);
        assert_eq!(cut.text, "abc … [truncated 11 bytes]");
    }

    #[tokio::test]
    async fn decode_stream_resumes_after_cursor() {
        let body: &[u8] = b"2026-01-30T10:00:00.1Z a\n2026-01-30T10:00:00.1Z b\n2026-01-30T10:00:00.2Z c";
        let chunks: Vec<Result<Bytes, std::io::Error>> = body.chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let cursor = SourceCursor::parse_last_event_id("2026-01-30T10:00:00.1Z~0").unwrap();
        let lines: Vec<_> =
            decode_log_stream(futures::stream::iter(chunks), LogSource::new("p", "c"), 100, Some(cursor)).collect().await;
        let texts: Vec<_> = lines.into_iter().map(|l| l.unwrap().text).collect();
        assert_eq!(texts, ["b", "c"]);
    }

    proptest! {
        /// Any chunking of any input yields the same lines as a reference split, each cut to
        /// the limit with the discarded count exact.
        #[test]
        fn chunking_does_not_matter(data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..400), cuts in proptest::collection::vec(0usize..400, 0..10), limit in 1usize..40) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                chunks.push(&data[prev..c]);
                prev = c;
            }
            let got = split_all(&chunks, limit);
            let mut want = Vec::new();
            let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
            if parts.last().is_some_and(|p| p.is_empty()) { parts.pop(); }
            for p in parts {
                let p = p.strip_suffix(b"\r").unwrap_or(p);
                let keep = p.len().min(limit);
                want.push((p[..keep].to_vec(), p.len() - keep));
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn truncation_is_bounded_and_valid(text in proptest::collection::vec(any::<u8>(), 0..300), max in 1usize..100) {
            let (out, truncated) = truncate_text(&text, 0, max);
            prop_assert_eq!(truncated, text.len() > max);
            if truncated { prop_assert!(out.contains(" … [truncated ")); }
            let body = out.split(TRUNCATION_MARKER_PREFIX).next().unwrap_or("");
            prop_assert!(body.len() <= 3 * max);
        }
    }
}
