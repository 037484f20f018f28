//! Log timestamps: a hand-rolled RFC3339 parser and formatter with nanosecond precision.
//!
//! Kubernetes returns `timestamps=true` lines as `<RFC3339Nano> <text>`. Every line of every
//! stream goes through [`split_timestamp`], so the parser is a straight-line byte scanner with
//! no allocation and no calendar library (chrono's general parser is several times slower and
//! is not needed for the one format the kubelet writes). Timestamps are kept as `i64`
//! nanoseconds since the Unix epoch, which covers 1677-09-21 .. 2262-04-11; anything outside
//! that range is rejected rather than wrapped.

use std::fmt;

use super::LogError;

/// Nanoseconds since 1970-01-01T00:00:00Z. Ordered, copyable, 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogTimestamp(i64);

const NANOS_PER_SEC: i64 = 1_000_000_000;
/// Longest accepted RFC3339 text: `YYYY-MM-DDTHH:MM:SS.fffffffff+HH:MM` is 35 bytes.
pub const MAX_RFC3339_LEN: usize = 35;

impl LogTimestamp {
    /// Wraps nanoseconds since the Unix epoch.
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn unix_nanos(self) -> i64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (floored, also for pre-1970 times).
    pub const fn unix_seconds(self) -> i64 {
        self.0.div_euclid(NANOS_PER_SEC)
    }

    /// This time rounded down to the whole second: what Kubernetes `sinceTime` can express.
    pub const fn floor_second(self) -> Self {
        Self(self.unix_seconds() * NANOS_PER_SEC)
    }

    /// The next representable instant (saturating).
    pub const fn next_nano(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// The current wall-clock time (saturating outside the representable range).
    pub fn now() -> Self {
        let nanos = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_nanos()).map(|n| -n).unwrap_or(i64::MIN),
        };
        Self(nanos)
    }

    /// Parses an RFC3339 timestamp: `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)`.
    ///
    /// Accepts `T`/`t` and `Z`/`z` as RFC3339 allows, 0–9 fraction digits and any offset.
    /// Used for the kubelet's line prefixes, for user `since` values and for event ids.
    pub fn parse_rfc3339(text: &str) -> Result<Self, LogError> {
        parse_bytes(text.as_bytes()).ok_or_else(|| LogError::BadTimestamp(preview(text)))
    }

    /// Appends the canonical form `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (always 9 fraction digits,
    /// so ids sort as text too) to `out`.
    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_rfc3339_bytes());
    }

    /// The canonical 30-byte form (see [`LogTimestamp::write_rfc3339`]).
    pub fn to_rfc3339_bytes(self) -> [u8; 30] {
        let secs = self.unix_seconds();
        let nanos = self.0.rem_euclid(NANOS_PER_SEC) as u32;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        let mut b = *b"0000-00-00T00:00:00.000000000Z";
        // The representable range is years 1677..=2262, always four digits.
        let y = y.clamp(0, 9999) as u32;
        put(&mut b[0..4], y);
        put(&mut b[5..7], m);
        put(&mut b[8..10], d);
        put(&mut b[11..13], sod / 3600);
        put(&mut b[14..16], sod / 60 % 60);
        put(&mut b[17..19], sod % 60);
        put(&mut b[20..29], nanos);
        b
    }
}

impl From<chrono::DateTime<chrono::Utc>> for LogTimestamp {
    /// Saturates outside 1677..2262 (the kubelet never writes such times).
    fn from(t: chrono::DateTime<chrono::Utc>) -> Self {
        Self(t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 { i64::MIN } else { i64::MAX }))
    }
}

impl From<LogTimestamp> for chrono::DateTime<chrono::Utc> {
    fn from(t: LogTimestamp) -> Self {
        chrono::DateTime::from_timestamp_nanos(t.0)
    }
}

impl fmt::Display for LogTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_rfc3339_bytes();
        // The buffer is built from ASCII digits and separators only.
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

/// Splits a kubelet line `<RFC3339Nano> <text>` into its timestamp and text.
///
/// Returns `None` when the line does not start with a valid timestamp followed by one space
/// (the caller then keeps the whole line as text; see [`super::split`]).
#[inline]
pub fn split_timestamp(line: &[u8]) -> Option<(LogTimestamp, &[u8])> {
    let limit = line.len().min(MAX_RFC3339_LEN + 1);
    let space = line[..limit].iter().position(|&c| c == b' ')?;
    let ts = parse_bytes(&line[..space])?;
    Some((ts, &line[space + 1..]))
}

/// Writes `value` as zero-padded decimal filling `out`.
#[inline]
fn put(out: &mut [u8], mut value: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[inline]
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u32::from(d);
    }
    Some(v)
}

#[inline]
fn parse_bytes(b: &[u8]) -> Option<LogTimestamp> {
    if b.len() < 20 || b.len() > MAX_RFC3339_LEN {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start == 9 {
                return None;
            }
            nanos = nanos * 10 + u32::from(b[i] - b'0');
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        nanos *= 10u32.pow(9 - n as u32);
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(b, i + 1, 2)?;
            let om = digits(b, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(i64::from(nanos)).map(LogTimestamp)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A short, printable excerpt of untrusted input for error messages.
pub(crate) fn preview(text: &str) -> String {
    let mut out: String = text.chars().take(40).filter(|c| !c.is_control()).collect();
    if text.chars().count() > 40 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> LogTimestamp {
        LogTimestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn parses_kubelet_and_user_forms() {
        assert_eq!(p("1970-01-01T00:00:00Z").unix_nanos(), 0);
        assert_eq!(p("1970-01-01T00:00:01.5Z").unix_nanos(), 1_500_000_000);
        assert_eq!(p("2026-01-30T10:00:00.123456789Z").to_string(), "2026-01-30T10:00:00.123456789Z");
        assert_eq!(p("2026-01-30T12:00:00+02:00"), p("2026-01-30T10:00:00Z"));
        assert_eq!(p("2026-01-30T08:30:00.1-01:30"), p("2026-01-30T10:00:00.100Z"));
        assert_eq!(p("2024-02-29t23:59:59z").to_string(), "2024-02-29T23:59:59.000000000Z");
        assert_eq!(p("1969-12-31T23:59:59.999999999Z").unix_nanos(), -1);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "2026-01-30",
            "2026-01-30T10:00:00",
            "2026-01-30T10:00:00.Z",
            "2026-01-30T10:00:00.1234567890Z",
            "2026-02-29T10:00:00Z",
            "2026-13-01T10:00:00Z",
            "2026-01-30T24:00:00Z",
            "2026-01-30T10:60:00Z",
            "2026-01-30T10:00:60Z",
            "2026-01-30 10:00:00Z",
            "2026-01-30T10:00:00+0200",
            "2026-01-30T10:00:00Z ",
            "9999-12-31T23:59:59Z",
            "+026-01-30T10:00:00Z",
            "２026-01-30T10:00:00Z",
        ] {
            assert!(LogTimestamp::parse_rfc3339(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn splits_kubelet_lines() {
        let (ts, rest) = split_timestamp(b"2026-01-30T10:00:00.000000001Z hello world").unwrap();
        assert_eq!(ts.unix_nanos() % 1_000_000_000, 1);
        assert_eq!(rest, b"hello world");
        let (_, rest) = split_timestamp(b"2026-01-30T10:00:00Z ").unwrap();
        assert_eq!(rest, b"");
        assert!(split_timestamp(b"no timestamp here").is_none());
        assert!(split_timestamp(b"2026-01-30T10:00:00Z").is_none());
    }

    #[test]
    fn floor_second_is_floor_for_negative_times() {
        assert_eq!(LogTimestamp::from_unix_nanos(-1).floor_second().unix_nanos(), -1_000_000_000);
        assert_eq!(LogTimestamp::from_unix_nanos(1_999_999_999).floor_second().unix_nanos(), 1_000_000_000);
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(n in -9_223_372_036_000_000_000i64..9_223_372_036_000_000_000i64) {
            let ts = LogTimestamp::from_unix_nanos(n);
            prop_assert_eq!(LogTimestamp::parse_rfc3339(&ts.to_string()).unwrap(), ts);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = LogTimestamp::parse_rfc3339(&s);
            let _ = split_timestamp(s.as_bytes());
        }

        #[test]
        fn agrees_with_chrono(n in 0i64..4_000_000_000_000_000_000i64, off in -1439i32..1439) {
            let dt = chrono::DateTime::from_timestamp_nanos(n)
                .with_timezone(&chrono::FixedOffset::east_opt(off * 60).unwrap());
            let text = dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
            prop_assert_eq!(LogTimestamp::parse_rfc3339(&text).unwrap().unix_nanos(), n);
        }
    }
}
