//! Resume ids and cursors: exact resume on top of Kubernetes' one-second `sinceTime`.
//!
//! * A line of one source has the id `<RFC3339Nano>~<k>` ([`LineId`]), `k` being its index
//!   among that source's lines with the same timestamp. The part before `~` is a valid
//!   RFC3339 time, so a client can read it as a time or pass it as `since`.
//! * A `Last-Event-ID` becomes a [`SourceCursor`] ("deliver lines after this one"). The
//!   upstream re-reads from [`SourceCursor::upstream_since`] (the id's second, floored) and
//!   [`SourceCursor::admits`] drops exactly the lines the client already has. Because the
//!   re-read starts on a second boundary at or before the id's time, the whole group of lines
//!   sharing that timestamp is re-read, and their indexes come out the same as the first time.
//! * A merged app stream uses [`AppLogId`]: the merge key of the last emitted line (the
//!   *frontier*, `<ts>~<tag>~<k>`) plus an explicit cursor segment `;<tag>=<ts>[~<k>]` for each
//!   source that is *behind* the frontier. See `docs/log-ids.md` for the reasoning, the
//!   bandwidth cost and the limits.
//!
//! All parsers take untrusted header values: they bound the length first, never allocate in
//! proportion to garbage, never panic, and explain what is wrong.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use super::LogError;
use super::upstream::{LinePosition, StartAt};
use super::time::{LogTimestamp, preview};

/// Longest accepted pod-stream id (`<30-byte time>~<u32>` is at most 41 bytes).
pub const MAX_LINE_ID_LEN: usize = 64;
/// Longest accepted app-stream id. Larger ids are rejected with 400 rather than parsed.
pub const MAX_APP_ID_LEN: usize = 4096;
/// Most explicit per-source cursors an app id carries (see `docs/log-ids.md`, limits).
pub const MAX_BEHIND_SEGMENTS: usize = 64;

/// A short, stable name of a source (pod, container) inside merged-stream ids: the low 48
/// bits of FNV-1a-64 over `pod \0 container`, printed as 12 lowercase hex digits. Stable
/// across processes and replicas (no random seed), so any replica can resume any id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceTag(u64);

impl SourceTag {
    /// The largest tag; sorts after every real source.
    pub const MAX: SourceTag = SourceTag((1 << 48) - 1);

    /// The tag of one container of one pod.
    pub fn of(pod: &str, container: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in pod.as_bytes().iter().chain(&[0u8]).chain(container.as_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self((h ^ (h >> 48)) & Self::MAX.0)
    }

    /// The raw 48-bit value.
    pub fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SourceTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

impl FromStr for SourceTag {
    type Err = LogError;
    fn from_str(s: &str) -> Result<Self, LogError> {
        if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(LogError::BadEventId(format!("source tag `{}` is not 12 lowercase hex digits", preview(s))));
        }
        u64::from_str_radix(s, 16).map(SourceTag).map_err(|_| LogError::BadEventId("bad source tag".into()))
    }
}

/// The id of one line within its source: timestamp plus index among equal timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineId {
    /// The line's timestamp.
    pub ts: LogTimestamp,
    /// Index among the source's lines with this timestamp.
    pub index: u32,
}

impl fmt::Display for LineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}", self.ts, self.index)
    }
}

impl LineId {
    /// Parses a pod-stream line id `<RFC3339>~<k>` (a bare time is not a line id). Bounded
    /// like [`SourceCursor::parse_last_event_id`]; every failure is [`LogError::BadEventId`].
    pub fn parse(text: &str) -> Result<Self, LogError> {
        if text.len() > MAX_LINE_ID_LEN {
            return Err(LogError::BadEventId(format!("longer than {MAX_LINE_ID_LEN} bytes")));
        }
        match text.split_once('~') {
            None => Err(LogError::BadEventId("a line id is `<RFC3339>~<k>`; a bare time names no line".into())),
            Some((ts, k)) => Ok(Self { ts: parse_ts(ts)?, index: parse_index(k)? }),
        }
    }
}

impl LineId {
    /// Appends `<ts>~<index>` to `out` without going through `fmt` (hot path).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.ts.write_rfc3339(out);
        out.push(b'~');
        write_u32(out, self.index);
    }
}

/// Where to resume one source: deliver lines with `ts > self.ts`, or `ts == self.ts` and
/// `index >= self.skip`. Ordered as a position in the source (earlier cursor = more lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceCursor {
    /// The timestamp group the cursor points into.
    pub ts: LogTimestamp,
    /// How many lines of that group the client already has.
    pub skip: u32,
}

impl SourceCursor {
    /// Deliver everything from `ts` on (what `since` means).
    pub fn from_time(ts: LogTimestamp) -> Self {
        Self { ts, skip: 0 }
    }

    /// Deliver everything after the line `id`.
    pub fn after(id: LineId) -> Self {
        match id.index.checked_add(1) {
            Some(skip) => Self { ts: id.ts, skip },
            None => Self { ts: id.ts.next_nano(), skip: 0 },
        }
    }

    /// True when the line `(ts, index)` has not been delivered yet and must be sent.
    #[inline]
    pub fn admits(&self, ts: LogTimestamp, index: u32) -> bool {
        match ts.cmp(&self.ts) {
            Ordering::Greater => true,
            Ordering::Equal => index >= self.skip,
            Ordering::Less => false,
        }
    }

    /// The `sinceTime` to ask Kubernetes for: this cursor's second, rounded down. Kubernetes
    /// cannot express more precision; [`SourceCursor::admits`] removes the re-read lines.
    pub fn upstream_since(&self) -> LogTimestamp {
        self.ts.floor_second()
    }

    /// Parses a pod-stream `Last-Event-ID`: `<RFC3339>~<k>` (resume after that line) or a
    /// bare `<RFC3339>` (resume from that time, like `since`).
    pub fn parse_last_event_id(text: &str) -> Result<Self, LogError> {
        if text.len() > MAX_LINE_ID_LEN {
            return Err(LogError::BadEventId(format!("longer than {MAX_LINE_ID_LEN} bytes")));
        }
        match text.split_once('~') {
            None => Ok(Self::from_time(parse_ts(text)?)),
            Some((ts, k)) => Ok(Self::after(LineId { ts: parse_ts(ts)?, index: parse_index(k)? })),
        }
    }
}

impl SourceCursor {
    /// The cursor right after a line position reported by [`super::upstream`].
    pub fn after_position(pos: LinePosition) -> Self {
        Self::after(LineId { ts: pos.ts.into(), index: pos.index })
    }

    /// Where an upstream request must start to deliver exactly the lines this cursor admits:
    /// `Since(ts)` for a bare time, `After(position)` after a known line.
    pub fn to_start_at(&self) -> StartAt {
        match self.skip.checked_sub(1) {
            None => StartAt::Since(self.ts.into()),
            Some(index) => StartAt::After(LinePosition { ts: self.ts.into(), index }),
        }
    }
}

impl fmt::Display for SourceCursor {
    /// The inverse of [`SourceCursor::parse_last_event_id`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.skip.checked_sub(1) {
            None => write!(f, "{}", self.ts),
            Some(index) => write!(f, "{}", LineId { ts: self.ts, index }),
        }
    }
}

/// The total order of a merged app stream: timestamp, then source tag, then index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MergeKey {
    /// Line timestamp.
    pub ts: LogTimestamp,
    /// Source tag (breaks ties between sources deterministically on every replica).
    pub tag: SourceTag,
    /// Index within the source's same-timestamp group.
    pub index: u32,
}

impl MergeKey {
    /// The resume cursor this key implies for `tag`, assuming every line of that source
    /// with a smaller-or-equal merge key has been delivered.
    pub fn cursor_for(&self, tag: SourceTag) -> SourceCursor {
        match tag.cmp(&self.tag) {
            Ordering::Less => SourceCursor::from_time(self.ts.next_nano()),
            Ordering::Equal => SourceCursor::after(LineId { ts: self.ts, index: self.index }),
            Ordering::Greater => SourceCursor::from_time(self.ts),
        }
    }

    /// True when a line of source `tag` at `cursor` position is already covered by this key.
    pub fn covers(&self, tag: SourceTag, cursor: SourceCursor) -> bool {
        cursor <= self.cursor_for(tag)
    }
}

/// Resume id of a merged app stream; see the module docs and `docs/log-ids.md`.
///
/// Text form: `<frontier ts>~<frontier tag>~<k>` followed by `;<tag>=<ts>[~<k>]` for every
/// source that is behind (sorted by tag). A bare RFC3339 time is also accepted and means
/// "everything from that time" (what `since` means).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppLogId {
    /// The merge key of the last line emitted in order.
    pub frontier: MergeKey,
    /// Sources whose delivered position is not implied by the frontier, sorted by tag.
    pub behind: Vec<(SourceTag, SourceCursor)>,
}

impl AppLogId {
    /// An id meaning "every line before `ts` was delivered" (used for `since`).
    pub fn from_since(ts: LogTimestamp) -> Self {
        let before = LogTimestamp::from_unix_nanos(ts.unix_nanos().saturating_sub(1));
        Self { frontier: MergeKey { ts: before, tag: SourceTag::MAX, index: u32::MAX }, behind: Vec::new() }
    }

    /// Where to resume source `tag`: its explicit segment if it was behind, otherwise the
    /// position implied by the frontier.
    pub fn cursor_for(&self, tag: SourceTag) -> SourceCursor {
        match self.behind.binary_search_by_key(&tag, |(t, _)| *t) {
            Ok(i) => self.behind[i].1,
            Err(_) => self.frontier.cursor_for(tag),
        }
    }

    /// Parses an app-stream `Last-Event-ID`. Rejects (never panics on) anything longer than
    /// [`MAX_APP_ID_LEN`], more than [`MAX_BEHIND_SEGMENTS`] segments, unsorted or duplicate
    /// tags, segments that are not actually behind, and malformed parts.
    pub fn parse(text: &str) -> Result<Self, LogError> {
        if text.len() > MAX_APP_ID_LEN {
            return Err(LogError::BadEventId(format!("longer than {MAX_APP_ID_LEN} bytes")));
        }
        let mut parts = text.split(';');
        let head = parts.next().unwrap_or_default();
        let mut fields = head.split('~');
        let ts = parse_ts(fields.next().unwrap_or_default())?;
        let frontier = match (fields.next(), fields.next(), fields.next()) {
            (None, _, _) => {
                if text.contains(';') {
                    return Err(LogError::BadEventId("a bare time cannot carry source segments".into()));
                }
                return Ok(Self::from_since(ts));
            }
            (Some(tag), Some(k), None) => MergeKey { ts, tag: tag.parse()?, index: parse_index(k)? },
            (Some(_), None, _) => {
                return Err(LogError::BadEventId("this is a pod stream id, not an app stream id".into()));
            }
            _ => return Err(LogError::BadEventId("too many `~` in the frontier".into())),
        };
        let mut behind: Vec<(SourceTag, SourceCursor)> = Vec::new();
        for segment in parts {
            if behind.len() == MAX_BEHIND_SEGMENTS {
                return Err(LogError::BadEventId(format!("more than {MAX_BEHIND_SEGMENTS} source segments")));
            }
            let (tag, cursor) = segment
                .split_once('=')
                .ok_or_else(|| LogError::BadEventId(format!("segment `{}` lacks `=`", preview(segment))))?;
            let tag: SourceTag = tag.parse()?;
            let cursor = SourceCursor::parse_last_event_id(cursor)?;
            if behind.last().is_some_and(|(last, _)| *last >= tag) {
                return Err(LogError::BadEventId("source segments must be sorted by tag, without duplicates".into()));
            }
            if frontier.covers(tag, cursor) && cursor == frontier.cursor_for(tag) {
                return Err(LogError::BadEventId("segment repeats what the frontier implies".into()));
            }
            if cursor > frontier.cursor_for(tag) {
                return Err(LogError::BadEventId("segment is ahead of the frontier".into()));
            }
            behind.push((tag, cursor));
        }
        Ok(Self { frontier, behind })
    }

    /// Appends the text form to `out` (hot path: called for every emitted app line).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.frontier.ts.write_rfc3339(out);
        out.push(b'~');
        write_tag(out, self.frontier.tag);
        out.push(b'~');
        write_u32(out, self.frontier.index);
        for (tag, cursor) in &self.behind {
            out.push(b';');
            write_tag(out, *tag);
            out.push(b'=');
            cursor.ts.write_rfc3339(out);
            if let Some(index) = cursor.skip.checked_sub(1) {
                out.push(b'~');
                write_u32(out, index);
            }
        }
    }
}

impl fmt::Display for AppLogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(48);
        self.write_to(&mut out);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

fn parse_ts(text: &str) -> Result<LogTimestamp, LogError> {
    LogTimestamp::parse_rfc3339(text).map_err(|_| LogError::BadEventId(format!("`{}` is not an RFC3339 time", preview(text))))
}

fn parse_index(text: &str) -> Result<u32, LogError> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) || (text.len() > 1 && text.starts_with('0'))
    {
        return Err(LogError::BadEventId(format!("line index `{}` is not a canonical number", preview(text))));
    }
    text.parse().map_err(|_| LogError::BadEventId("line index out of range".into()))
}

/// Appends a `u32` in decimal.
pub(crate) fn write_u32(out: &mut Vec<u8>, mut v: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_tag(out: &mut Vec<u8>, tag: SourceTag) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..12).rev() {
        out.push(HEX[((tag.0 >> (shift * 4)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> LogTimestamp {
        LogTimestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn line_ids_name_one_line_and_refuse_bare_times() {
        let id = LineId { ts: ts("2026-01-30T10:00:00.5Z"), index: 2 };
        assert_eq!(LineId::parse(&id.to_string()).unwrap(), id);
        // Any RFC3339 spelling of the time names the same line.
        assert_eq!(LineId::parse("2026-01-30T11:00:00.5+01:00~2").unwrap(), id);
        for bad in ["2026-01-30T10:00:00Z", "", "~1", "2026-01-30T10:00:00Z~", "2026-01-30T10:00:00Z~01", "2026-01-30T10:00:00Z~1~2", &"9".repeat(65)] {
            assert!(matches!(LineId::parse(bad), Err(LogError::BadEventId(_))), "{bad:?}");
        }
    }

    #[test]
    fn pod_ids_round_trip_and_resume_after_the_line() {
        let id = LineId { ts: ts("2026-01-30T10:00:00.5Z"), index: 2 };
        assert_eq!(id.to_string(), "2026-01-30T10:00:00.500000000Z~2");
        let cursor = SourceCursor::parse_last_event_id(&id.to_string()).unwrap();
        assert_eq!(cursor, SourceCursor { ts: id.ts, skip: 3 });
        assert_eq!(cursor.to_string(), id.to_string());
        assert!(!cursor.admits(id.ts, 2));
        assert!(cursor.admits(id.ts, 3));
        assert!(!cursor.admits(ts("2026-01-30T10:00:00.4Z"), 9));
        assert!(cursor.admits(ts("2026-01-30T10:00:00.6Z"), 0));
        assert_eq!(cursor.upstream_since(), ts("2026-01-30T10:00:00Z"));
        // A bare time means `since`.
        let since = SourceCursor::parse_last_event_id("2026-01-30T10:00:00Z").unwrap();
        assert!(since.admits(ts("2026-01-30T10:00:00Z"), 0));
    }

    #[test]
    fn resume_drops_exactly_what_was_sent_from_a_one_second_reread() {
        // Source lines (ts, index) as the kubelet serves them from sinceTime = floor second.
        let t = |ms: i64| LogTimestamp::from_unix_nanos(1_000_000_000 * 100 + ms * 1_000_000);
        let lines = [(t(0), 0), (t(100), 0), (t(100), 1), (t(100), 2), (t(900), 0), (t(1200), 0)];
        for (cut, &(ts, index)) in lines.iter().enumerate() {
            let cursor = SourceCursor::parse_last_event_id(&LineId { ts, index }.to_string()).unwrap();
            let since = cursor.upstream_since();
            assert!(since <= ts);
            // The kubelet re-sends every line with ts >= sinceTime; indexes are recomputed
            // from the re-read, which starts on a whole second, so they match.
            let reread = lines.iter().filter(|(t, _)| *t >= since);
            let resent: Vec<_> = reread.filter(|(ts, i)| cursor.admits(*ts, *i)).collect();
            assert_eq!(resent, lines[cut + 1..].iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn rejects_garbage_pod_ids() {
        for bad in [
            "",
            "~",
            "x~1",
            "2026-01-30T10:00:00Z~",
            "2026-01-30T10:00:00Z~-1",
            "2026-01-30T10:00:00Z~01",
            "2026-01-30T10:00:00Z~4294967296",
            "2026-01-30T10:00:00Z~1~2",
            "2026-01-30T10:00:00Z~ 1",
            &"9".repeat(100_000),
        ] {
            assert!(matches!(SourceCursor::parse_last_event_id(bad), Err(LogError::BadEventId(_))), "{bad:?}");
        }
    }

    #[test]
    fn app_ids_round_trip_and_imply_cursors() {
        let a = SourceTag::of("web-1", "app");
        let b = SourceTag::of("web-2", "app");
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let frontier = MergeKey { ts: ts("2026-01-30T10:00:01Z"), tag: lo, index: 0 };
        let behind_cursor = SourceCursor::after(LineId { ts: ts("2026-01-30T09:59:58Z"), index: 4 });
        let id = AppLogId { frontier, behind: vec![(hi, behind_cursor)] };
        let text = id.to_string();
        assert!(text.starts_with("2026-01-30T10:00:01.000000000Z~"), "{text}");
        assert_eq!(AppLogId::parse(&text).unwrap(), id);
        assert_eq!(id.cursor_for(hi), behind_cursor);
        assert_eq!(id.cursor_for(lo), SourceCursor { ts: frontier.ts, skip: 1 });
        // A bare time is `since` for every source.
        let since = AppLogId::parse("2026-01-30T10:00:00Z").unwrap();
        assert_eq!(since.cursor_for(a), SourceCursor::from_time(ts("2026-01-30T10:00:00Z")));
        assert_eq!(since.cursor_for(SourceTag::MAX), SourceCursor::from_time(ts("2026-01-30T10:00:00Z")));
    }

    #[test]
    fn rejects_forged_app_ids() {
        let f = "2026-01-30T10:00:01.000000000Z~00000000000a~0";
        for bad in [
            "2026-01-30T10:00:01Z~3".to_owned(),
            format!("{f};00000000000b"),
            format!("{f};00000000000B=2026-01-30T10:00:00Z"),
            format!("{f};00000000000c=2026-01-30T10:00:00Z;00000000000b=2026-01-30T10:00:00Z"),
            format!("{f};00000000000b=2026-01-30T10:00:00Z;00000000000b=2026-01-30T10:00:00Z"),
            format!("{f};00000000000b=2026-01-30T11:00:00Z"),
            format!("{f};00000000000b=2026-01-30T10:00:01Z"),
            "2026-01-30T10:00:01Z;00000000000b=2026-01-30T10:00:00Z".to_owned(),
            format!("{f}{}", ";00000000000b=2026-01-30T10:00:00Z".repeat(200)),
            "2026-01-30T10:00:01Z~zzzzzzzzzzzz~0".to_owned(),
        ] {
            assert!(matches!(AppLogId::parse(&bad), Err(LogError::BadEventId(_))), "{bad:?}");
        }
        let too_many: String = (0..65u64).map(|i| format!(";{:012x}=2026-01-30T10:00:00Z", i + 100)).collect();
        assert!(AppLogId::parse(&format!("{f}{too_many}")).is_err());
    }

    #[test]
    fn cursors_convert_to_upstream_start_points() {
        let c = SourceCursor::parse_last_event_id("2026-01-30T10:00:00.5Z~2").unwrap();
        let StartAt::After(pos) = c.to_start_at() else { panic!("{:?}", c.to_start_at()) };
        assert_eq!((LogTimestamp::from(pos.ts), pos.index), (c.ts, 2));
        assert_eq!(SourceCursor::after_position(pos), c);
        let since = SourceCursor::parse_last_event_id("2026-01-30T10:00:00.5Z").unwrap();
        assert!(matches!(since.to_start_at(), StartAt::Since(t) if LogTimestamp::from(t) == since.ts));
    }

    #[test]
    fn tags_are_stable() {
        assert_eq!(SourceTag::of("web-7d9f-x2k4", "app"), SourceTag::of("web-7d9f-x2k4", "app"));
        assert_ne!(SourceTag::of("ab", "c"), SourceTag::of("a", "bc"));
        assert_eq!(SourceTag::of("web", "app").to_string().len(), 12);
    }

    proptest! {
        #[test]
        fn line_ids_round_trip(n in -9_000_000_000_000_000_000i64..9_000_000_000_000_000_000i64, k in any::<u32>()) {
            let id = LineId { ts: LogTimestamp::from_unix_nanos(n), index: k };
            let mut buf = Vec::new();
            id.write_to(&mut buf);
            prop_assert_eq!(String::from_utf8(buf).unwrap(), id.to_string());
            let c = SourceCursor::parse_last_event_id(&id.to_string()).unwrap();
            prop_assert_eq!(c, SourceCursor::after(id));
            prop_assert!(!c.admits(id.ts, id.index));
            if k < u32::MAX { prop_assert_eq!(SourceCursor::parse_last_event_id(&c.to_string()).unwrap(), c); }
        }

        #[test]
        fn app_ids_round_trip(n in 0i64..4_000_000_000_000_000_000i64, k in any::<u32>(), tags in proptest::collection::btree_set(0u64..(1<<48), 1..8), lags in proptest::collection::vec((1i64..10_000_000_000, 0u32..5), 8)) {
            let tags: Vec<_> = tags.into_iter().map(SourceTag).collect();
            let frontier = MergeKey { ts: LogTimestamp::from_unix_nanos(n), tag: tags[0], index: k };
            let behind = tags[1..].iter().zip(&lags).map(|(t, (lag, skip))| (*t, SourceCursor { ts: LogTimestamp::from_unix_nanos(n - lag), skip: *skip })).collect();
            let id = AppLogId { frontier, behind };
            prop_assert_eq!(AppLogId::parse(&id.to_string()).unwrap(), id);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,120}") {
            let _ = SourceCursor::parse_last_event_id(&s);
            let _ = AppLogId::parse(&s);
        }
    }
}
