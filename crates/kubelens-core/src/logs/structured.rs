//! Structured lines: JSON and logfmt detection, a normalised `level`, and flat `fields`.
//!
//! Runs on every line that leaves the server, so it is written for the common case:
//!
//! * **No allocation for plain text**, and none for a JSON or logfmt line unless its fields
//!   are asked for (`fields=true`) or filtered on and a key or value contains an escape.
//! * **Bounded cost**: at most [`MAX_KEYS_SCANNED`] top-level keys are looked at, nesting
//!   deeper than [`MAX_DEPTH`] makes a line plain, the plain-text `key=value` scan reads at most
//!   [`EQ_SCAN_BYTES`] and the leading-word scan at most [`LEADING_TOKENS`] words of the first
//!   [`LEADING_BYTES`]. A line is already cut at `logs.max_line_length` before it gets here.
//!
//! # The level
//!
//! [`detect_level`] normalises to [`Level`] (trace < debug < info < warn < error < fatal):
//!
//! 1. A line starting with `{` (after spaces) is read as a JSON object: the first top-level key
//!    named (case-insensitively) `level`, `lvl`, `severity`, `loglevel`, `log_level`,
//!    `log.level`, `levelname`, `level_name`, `@l` or `@level`, with a string value that names
//!    a level (below) or a bunyan/pino number (10 trace … 60 fatal). A JSON line without such
//!    a key has no level (its text is not searched for words). A line that is not a JSON
//!    object before its level key is read as plain text.
//! 2. klog/glog: `Lmmdd hh:mm…` with `L` one of `I W E F` (`E0102 15:04:05.000000 …`).
//! 3. `key=value` (logfmt, also inside plain text): the first `level=`, `lvl=`, `severity=`,
//!    `loglevel=`, `log_level=` or `log.level=` whose value (quoted or not) names a level.
//! 4. A level word among the first words: bracketed in any case (`[warn]`, `<ERROR>`,
//!    `(info)`), upper-case standing alone or before `:`/`,`/`|` (`ERROR`, `WARN:`), or the
//!    first word in any case before `:` (`error: …`, `panic: …`).
//!
//! Level words (any case): `trace trc` · `debug dbg` · `info inf information informational
//! notice` · `warn warning wrn` · `error err severe` · `fatal ftl panic dpanic critical crit
//! alert emerg emergency`.
//!
//! # Fields
//!
//! [`fields`] yields the flat top-level `key → value` pairs of a well-formed JSON object or
//! logfmt line (every word `key=value`, the first key an identifier), in line order. String
//! values are unescaped; numbers, `true`/`false`/`null` and nested objects/arrays are their
//! JSON text. The first occurrence of a key wins (later duplicates are skipped), for display
//! and for filters alike.

use std::borrow::Cow;

use super::LogError;

/// Top-level keys of a JSON line (or pairs of a logfmt line) looked at for the level.
pub const MAX_KEYS_SCANNED: usize = 64;
/// Deepest nesting of a JSON value skipped over; deeper lines count as plain text.
pub const MAX_DEPTH: usize = 32;
/// Bytes of a plain line searched for `level=`-style pairs.
pub const EQ_SCAN_BYTES: usize = 4096;
/// Words at the start of a plain line looked at for a level word.
pub const LEADING_TOKENS: usize = 6;
/// Bytes at the start of a plain line that hold those words.
pub const LEADING_BYTES: usize = 160;

/// Fields shown per line (`fields=true`); further keys are left out.
pub const MAX_FIELDS: usize = 32;
/// Bytes of one shown field value; a longer one is cut on a character boundary and ends in `…`.
pub const MAX_FIELD_VALUE_BYTES: usize = 256;
/// Bytes of keys and values shown per line; the fields that would pass it are left out.
pub const MAX_FIELDS_BYTES: usize = 4096;

/// Field filters (`field.<key>=<value>`) per request.
pub const MAX_FIELD_FILTERS: usize = 8;
/// Longest key of a field filter.
pub const MAX_FILTER_KEY_BYTES: usize = 128;
/// Longest value of a field filter.
pub const MAX_FILTER_VALUE_BYTES: usize = 1024;

/// A normalised severity, ordered: `Trace < Debug < … < Fatal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `trace`
    Trace,
    /// `debug`
    Debug,
    /// `info` (also `notice`)
    Info,
    /// `warn` (also `warning`)
    Warn,
    /// `error` (also `err`, `severe`)
    Error,
    /// `fatal` (also `panic`, `critical`, `alert`, `emergency`)
    Fatal,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 6] = [Level::Trace, Level::Debug, Level::Info, Level::Warn, Level::Error, Level::Fatal];

    /// The wire name (`"warn"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// A query's `level=`: exactly one of the six wire names, any case. Anything else is
    /// [`LogError::BadLevel`] (the message quotes at most 32 characters of the input).
    pub fn parse_query(text: &str) -> Result<Level, LogError> {
        Level::ALL.into_iter().find(|l| l.as_str().eq_ignore_ascii_case(text)).ok_or_else(|| {
            let preview: String = text.chars().take(32).filter(|c| !c.is_control()).collect();
            LogError::BadLevel(format!("unknown level `{preview}`: use one of trace, debug, info, warn, error, fatal"))
        })
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A level word (see the module docs), any case; `None` for anything else.
fn level_word(word: &[u8]) -> Option<Level> {
    if word.is_empty() || word.len() > 13 {
        return None;
    }
    let mut buf = [0u8; 13];
    let lower = &mut buf[..word.len()];
    lower.copy_from_slice(word);
    lower.make_ascii_lowercase();
    Some(match &*lower {
        b"trace" | b"trc" => Level::Trace,
        b"debug" | b"dbg" => Level::Debug,
        b"info" | b"inf" | b"information" | b"informational" | b"notice" => Level::Info,
        b"warn" | b"warning" | b"wrn" => Level::Warn,
        b"error" | b"err" | b"severe" => Level::Error,
        b"fatal" | b"ftl" | b"panic" | b"dpanic" | b"critical" | b"crit" | b"alert" | b"emerg" | b"emergency" => Level::Fatal,
        _ => return None,
    })
}

fn is_json_level_key(key: &[u8]) -> bool {
    // Most keys are dismissed by their first byte (every level key starts with l, s or @).
    if !matches!(key.first(), Some(b'l' | b'L' | b's' | b'S' | b'@')) {
        return false;
    }
    const KEYS: [&[u8]; 10] = [b"level", b"lvl", b"severity", b"loglevel", b"log_level", b"log.level", b"levelname", b"level_name", b"@l", b"@level"];
    key.len() <= 10 && KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

fn is_pair_level_key(key: &[u8]) -> bool {
    const KEYS: [&[u8]; 6] = [b"level", b"lvl", b"severity", b"loglevel", b"log_level", b"log.level"];
    key.len() <= 9 && KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// The level of a line (see the module docs); never allocates.
pub fn detect_level(text: &str) -> Option<Level> {
    let b = text.as_bytes();
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    if b.get(start) == Some(&b'{')
        && let Ok(level) = json_level(text) {
            return level;
        }
    let b = &b[start..];
    klog_level(b).or_else(|| pair_level(b)).or_else(|| word_level(b))
}

/// `Ok(level)` when `text` reads as a JSON object up to its level key (or its end, or the key
/// bound); `Err` when it is not JSON.
///
/// The same reading as [`JsonFields`] (which stays the reference: the tests compare the two),
/// written straight over the bytes: this runs for every JSON line that leaves the server, and
/// the iterator's per-member values and checks cost about as much again.
fn json_level(text: &str) -> Result<Option<Level>, ()> {
    let b = text.as_bytes();
    let ws = |mut i: usize| {
        while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    };
    let mut pos = ws(0);
    if b.get(pos) != Some(&b'{') {
        return Err(());
    }
    pos = ws(pos + 1);
    if b.get(pos) == Some(&b'}') {
        return if ws(pos + 1) == b.len() { Ok(None) } else { Err(()) };
    }
    for n in 1..=MAX_KEYS_SCANNED {
        if b.get(pos) != Some(&b'"') {
            return Err(());
        }
        let (key_end, _) = json_string_end(b, pos + 1)?;
        let key = &b[pos + 1..key_end];
        pos = ws(key_end + 1);
        if b.get(pos) != Some(&b':') {
            return Err(());
        }
        pos = ws(pos + 1);
        let value_start = pos;
        let level_key = is_json_level_key(key);
        match *b.get(pos).ok_or(())? {
            b'"' => {
                let (end, escaped) = json_string_end(b, pos + 1)?;
                pos = end + 1;
                if level_key {
                    let raw = text.get(value_start + 1..end).ok_or(())?;
                    let level = if escaped { level_word(unescape(raw, true).as_bytes()) } else { level_word(raw.as_bytes()) };
                    if level.is_some() {
                        return Ok(level);
                    }
                }
            }
            b'{' | b'[' => {
                let mut skip = JsonFields { b, s: text, pos, started: true, done: false };
                skip.nested()?;
                pos = skip.pos;
                if matches!(b.get(pos), Some(c) if c.is_ascii_alphanumeric()) {
                    return Err(());
                }
            }
            c => {
                let len = match c {
                    b't' => b[pos..].starts_with(b"true").then_some(4),
                    b'f' => b[pos..].starts_with(b"false").then_some(5),
                    b'n' => b[pos..].starts_with(b"null").then_some(4),
                    b'-' | b'0'..=b'9' => {
                        let len = b[pos..].iter().take_while(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')).count();
                        b[pos..pos + len].iter().any(u8::is_ascii_digit).then_some(len)
                    }
                    _ => None,
                };
                pos += len.ok_or(())?;
                if matches!(b.get(pos), Some(c) if c.is_ascii_alphanumeric()) {
                    return Err(());
                }
                if level_key {
                    let level = match &b[value_start..pos] {
                        b"10" => Some(Level::Trace),
                        b"20" => Some(Level::Debug),
                        b"30" => Some(Level::Info),
                        b"40" => Some(Level::Warn),
                        b"50" => Some(Level::Error),
                        b"60" => Some(Level::Fatal),
                        _ => None,
                    };
                    if level.is_some() {
                        return Ok(level);
                    }
                }
            }
        }
        if n == MAX_KEYS_SCANNED {
            // The key bound: what follows the last member looked at is not read.
            break;
        }
        pos = ws(pos);
        match b.get(pos) {
            Some(b',') => pos = ws(pos + 1),
            Some(b'}') => return if ws(pos + 1) == b.len() { Ok(None) } else { Err(()) },
            _ => return Err(()),
        }
    }
    Ok(None)
}

/// The index of the closing quote of the JSON string whose text starts at `start`, and whether
/// it has escapes; `Err` for a malformed or unterminated string (as [`JsonFields::string`]).
#[inline]
fn json_string_end(b: &[u8], start: usize) -> Result<(usize, bool), ()> {
    let mut i = start;
    let mut escaped = false;
    loop {
        i += quote_or_backslash(b.get(i..).ok_or(())?).ok_or(())?;
        if b[i] == b'"' {
            return Ok((i, escaped));
        }
        escaped = true;
        match b.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
            Some(b'u') if hex4(b.get(i + 2..).unwrap_or_default()).is_some() => i += 6,
            _ => return Err(()),
        }
    }
}

fn klog_level(b: &[u8]) -> Option<Level> {
    let head = b.get(..9)?;
    let level = match head[0] {
        b'I' => Level::Info,
        b'W' => Level::Warn,
        b'E' => Level::Error,
        b'F' => Level::Fatal,
        _ => return None,
    };
    let digits = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
    (digits(&head[1..5]) && head[5] == b' ' && digits(&head[6..8]) && head[8] == b':').then_some(level)
}

fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'@' | b'/')
}

/// `level=…`-style pairs anywhere in the first [`EQ_SCAN_BYTES`].
fn pair_level(b: &[u8]) -> Option<Level> {
    let scan = &b[..b.len().min(EQ_SCAN_BYTES)];
    for eq in memchr::memchr_iter(b'=', scan) {
        // Walk back over the key (at most 10 bytes: the longest level key is 9).
        let mut k = eq;
        while k > 0 && eq - k <= 10 && is_key_byte(scan[k - 1]) {
            k -= 1;
        }
        if (k > 0 && is_key_byte(scan[k - 1])) || !is_pair_level_key(&scan[k..eq]) {
            continue;
        }
        let rest = &b[eq + 1..];
        let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
        let len = rest.iter().take(14).take_while(|c| c.is_ascii_alphabetic()).count();
        let end_ok = rest.get(len).is_none_or(|c| !c.is_ascii_alphanumeric());
        if let Some(level) = level_word(&rest[..len]).filter(|_| end_ok) {
            return Some(level);
        }
    }
    None
}

/// A level word among the first words (see the module docs).
fn word_level(b: &[u8]) -> Option<Level> {
    let head = &b[..b.len().min(LEADING_BYTES)];
    let mut pos = 0;
    let mut seen = 0;
    // Word boundaries by memchr (SIMD), and a look at a word's first byte before anything
    // else: most words (numbers, timestamps, paths, lower-case text) are dismissed at once.
    while pos < head.len() && seen < LEADING_TOKENS {
        if head[pos] == b' ' {
            pos += 1;
            continue;
        }
        // Words end at a space (one needle is the fastest memchr); a tab ends the level word
        // inside its "word" instead (`token_level`).
        let end = memchr::memchr(b' ', &head[pos..]).map_or(head.len(), |e| pos + e);
        let token = &head[pos..end];
        pos = end + 1;
        seen += 1;
        if let Some(level) = token_level(token, seen == 1) {
            return Some(level);
        }
    }
    None
}

/// The level named by one word (see the module docs); `first`: the line's first word.
#[inline]
fn token_level(token: &[u8], first: bool) -> Option<Level> {
    let close = match token[0] {
        b'[' => b']',
        b'<' => b'>',
        b'(' => b')',
        b'A'..=b'Z' => 0,
        b'a'..=b'z' if first => 0,
        _ => return None,
    };
    if close != 0 {
        let core = &token[1..];
        let len = core.iter().take_while(|c| c.is_ascii_alphabetic()).count();
        return if core.get(len) == Some(&close) { level_word(&core[..len]) } else { None };
    }
    let len = token.iter().take_while(|c| c.is_ascii_alphabetic()).count();
    let (core, next) = (&token[..len], token.get(len).copied());
    let upper = len >= 3 && core.iter().all(u8::is_ascii_uppercase) && matches!(next, None | Some(b':' | b',' | b'|' | b'\t'));
    if upper || (first && matches!(next, Some(b':' | b'\t'))) { level_word(core) } else { None }
}

// ---- fields -----------------------------------------------------------------------------------

/// The structure of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Neither of the others.
    Plain,
    /// A JSON object.
    Json,
    /// `key=value` pairs.
    Logfmt,
}

/// A key or string value as it appears in the line.
#[derive(Debug, Clone, Copy)]
pub struct Str<'a> {
    raw: &'a str,
    escaped: bool,
    json: bool,
}

impl<'a> Str<'a> {
    /// The text with escapes resolved (borrowed when there are none).
    pub fn decode(&self) -> Cow<'a, str> {
        if !self.escaped {
            return Cow::Borrowed(self.raw);
        }
        Cow::Owned(unescape(self.raw, self.json))
    }

    /// True when the decoded text equals `other` (no allocation without escapes).
    pub fn eq_text(&self, other: &str) -> bool {
        if self.escaped { self.decode() == other } else { self.raw == other }
    }
}

/// A field value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// A string.
    Str(Str<'a>),
    /// JSON text of a number, `true`/`false`/`null`, an object or an array.
    Raw(&'a str),
}

impl<'a> Value<'a> {
    /// The value as text (see the module docs).
    pub fn text(&self) -> Cow<'a, str> {
        match self {
            Value::Str(s) => s.decode(),
            Value::Raw(r) => Cow::Borrowed(r),
        }
    }

    fn eq_text(&self, other: &str) -> bool {
        match self {
            Value::Str(s) => s.eq_text(other),
            Value::Raw(r) => *r == other,
        }
    }
}

fn hex4(b: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    u32::from_str_radix(s, 16).ok().filter(|_| s.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Resolves the escapes of a validated JSON string (`json`) or of a logfmt quoted value
/// (`\"`, `\\`, `\n`, `\r`, `\t`, `\uXXXX`; any other backslash is kept as it is).
fn unescape(raw: &str, json: bool) -> String {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'\\', &b[i..]) {
        out.push_str(&raw[i..i + off]);
        i += off;
        let Some(&c) = b.get(i + 1) else { break };
        let simple = match c {
            b'"' => Some('"'),
            b'\\' => Some('\\'),
            b'/' if json => Some('/'),
            b'b' if json => Some('\u{8}'),
            b'f' if json => Some('\u{c}'),
            b'n' => Some('\n'),
            b'r' => Some('\r'),
            b't' => Some('\t'),
            _ => None,
        };
        if let Some(ch) = simple {
            out.push(ch);
            i += 2;
            continue;
        }
        if c == b'u'
            && let Some(hi) = hex4(&b[i + 2..]) {
                i += 6;
                let ch = if (0xD800..0xDC00).contains(&hi) {
                    match (b.get(i..i + 2), hex4(b.get(i + 2..).unwrap_or_default())) {
                        (Some(b"\\u"), Some(lo)) if (0xDC00..0xE000).contains(&lo) => {
                            i += 6;
                            char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                        }
                        _ => None,
                    }
                } else {
                    char::from_u32(hi)
                };
                out.push(ch.unwrap_or('\u{FFFD}'));
                continue;
            }
        // Not an escape we resolve: keep the backslash (logfmt only; JSON was validated).
        out.push('\\');
        i += 1;
    }
    out.push_str(&raw[i..]);
    out
}

/// The format and top-level fields of `text` (see the module docs), first occurrence of a key
/// first. The iterator yields `Err(())` and stops where the line turns out not to be
/// well-formed: a consumer that needs a whole well-formed line reads to the end.
pub fn fields(text: &str) -> (Format, FieldIter<'_>) {
    let trimmed = text.trim_start_matches(|c: char| c.is_ascii_whitespace());
    if trimmed.starts_with('{') {
        let mut probe = JsonFields::new(text);
        // A first key (or an empty object) makes it JSON; otherwise try logfmt/plain.
        if matches!(probe.next(), None | Some(Ok(_))) {
            return (Format::Json, FieldIter::Json(JsonFields::new(text)));
        }
    }
    if LogfmtFields::looks_like(trimmed) {
        return (Format::Logfmt, FieldIter::Logfmt(LogfmtFields { b: trimmed.as_bytes(), s: trimmed, pos: 0, done: false }));
    }
    (Format::Plain, FieldIter::Plain)
}

/// One top-level `key → value` pair.
pub type Field<'a> = (Str<'a>, Value<'a>);

/// The pairs of a line, in order (see [`fields`]).
#[derive(Debug)]
pub enum FieldIter<'a> {
    /// A plain line: no pairs.
    Plain,
    /// A JSON object's members.
    Json(JsonFields<'a>),
    /// A logfmt line's pairs.
    Logfmt(LogfmtFields<'a>),
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = Result<Field<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            FieldIter::Plain => None,
            FieldIter::Json(j) => j.next(),
            FieldIter::Logfmt(l) => l.next(),
        }
    }
}

/// The index of the first `"` or `\\` in `b`. Keys and most values are short: 8 bytes at a
/// time (SWAR, as in `json::write_json_str`) for the first 64 bytes, then `memchr2`.
#[inline]
fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut i = 0;
    while i < 64 {
        let Some(word) = b.get(i..i + 8) else { break };
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_le_bytes(w);
        let hit = zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\')));
        if hit != 0 {
            // The lowest flagged lane is a real match (borrows only run upwards).
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    memchr::memchr2(b'"', b'\\', &b[i.min(b.len())..]).map(|off| i.min(b.len()) + off)
}

/// Members of a top-level JSON object, validated as they are read.
#[derive(Debug)]
pub struct JsonFields<'a> {
    b: &'a [u8],
    s: &'a str,
    pos: usize,
    started: bool,
    done: bool,
}

impl<'a> JsonFields<'a> {
    fn new(s: &'a str) -> Self {
        Self { b: s.as_bytes(), s, pos: 0, started: false, done: false }
    }

    #[inline]
    fn ws(&mut self) {
        while matches!(self.b.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// A string starting at `pos` (on its `"`); leaves `pos` after the closing quote.
    #[inline]
    fn string(&mut self) -> Result<Str<'a>, ()> {
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            let rest = self.b.get(i..).ok_or(())?;
            i += quote_or_backslash(rest).ok_or(())?;
            if self.b[i] == b'"' {
                break;
            }
            escaped = true;
            match self.b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') if hex4(self.b.get(i + 2..).unwrap_or_default()).is_some() => i += 6,
                _ => return Err(()),
            }
        }
        self.pos = i + 1;
        // Both ends are ASCII quotes, so these are char boundaries.
        let raw = self.s.get(start..i).ok_or(())?;
        Ok(Str { raw, escaped, json: true })
    }

    #[inline]
    fn value(&mut self) -> Result<Value<'a>, ()> {
        let start = self.pos;
        match self.b.get(self.pos).copied().ok_or(())? {
            b'"' => return self.string().map(Value::Str),
            b'{' | b'[' => self.nested()?,
            b't' | b'f' | b'n' => {
                let rest = &self.b[self.pos..];
                let len = [&b"true"[..], b"false", b"null"].into_iter().find(|w| rest.starts_with(w)).map(<[u8]>::len).ok_or(())?;
                self.pos += len;
            }
            b'-' | b'0'..=b'9' => {
                let len = self.b[self.pos..].iter().take_while(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')).count();
                if !self.b[self.pos..self.pos + len].iter().any(u8::is_ascii_digit) {
                    return Err(());
                }
                self.pos += len;
            }
            _ => return Err(()),
        }
        if matches!(self.b.get(self.pos), Some(c) if c.is_ascii_alphanumeric()) {
            return Err(());
        }
        self.s.get(start..self.pos).map(Value::Raw).ok_or(())
    }

    /// Skips a nested object or array (balanced brackets, strings honoured, depth bounded).
    fn nested(&mut self) -> Result<(), ()> {
        let mut stack = [0u8; MAX_DEPTH];
        let mut depth = 0;
        loop {
            let c = *self.b.get(self.pos).ok_or(())?;
            match c {
                b'{' | b'[' => {
                    *stack.get_mut(depth).ok_or(())? = if c == b'{' { b'}' } else { b']' };
                    depth += 1;
                    self.pos += 1;
                }
                b'}' | b']' => {
                    depth -= 1;
                    if stack[depth] != c {
                        return Err(());
                    }
                    self.pos += 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                b'"' => {
                    self.string()?;
                }
                _ => self.pos += 1,
            }
        }
    }

    #[inline]
    fn member(&mut self) -> Result<Option<Field<'a>>, ()> {
        self.ws();
        if !self.started {
            self.started = true;
            if self.b.get(self.pos) != Some(&b'{') {
                return Err(());
            }
            self.pos += 1;
            self.ws();
            if self.b.get(self.pos) == Some(&b'}') {
                self.pos += 1;
                return self.end().map(|()| None);
            }
        } else {
            match self.b.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return self.end().map(|()| None);
                }
                _ => return Err(()),
            }
        }
        if self.b.get(self.pos) != Some(&b'"') {
            return Err(());
        }
        let key = self.string()?;
        self.ws();
        if self.b.get(self.pos) != Some(&b':') {
            return Err(());
        }
        self.pos += 1;
        self.ws();
        let value = self.value()?;
        self.ws();
        Ok(Some((key, value)))
    }

    /// After the closing brace: only whitespace may follow.
    fn end(&mut self) -> Result<(), ()> {
        self.ws();
        if self.pos == self.b.len() { Ok(()) } else { Err(()) }
    }
}

/// One step of a field iterator that stops for good after its end or its first error (both
/// iterators are fused: a malformed line yields one `Err` and nothing after it).
fn fused<'a>(step: Result<Option<Field<'a>>, ()>, done: &mut bool) -> Option<Result<Field<'a>, ()>> {
    let item = step.transpose();
    if !matches!(item, Some(Ok(_))) {
        *done = true;
    }
    item
}

impl<'a> Iterator for JsonFields<'a> {
    type Item = Result<Field<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = self.member();
        fused(step, &mut self.done)
    }
}

/// Pairs of a logfmt line.
#[derive(Debug)]
pub struct LogfmtFields<'a> {
    b: &'a [u8],
    s: &'a str,
    pos: usize,
    done: bool,
}

impl<'a> LogfmtFields<'a> {
    /// The first word is `identifier=`: the line is read as logfmt (it may still turn out
    /// malformed further on).
    fn looks_like(s: &str) -> bool {
        let b = s.as_bytes();
        let key = b.iter().take_while(|&&c| is_key_byte(c)).count();
        key > 0 && (b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b'@') && b.get(key) == Some(&b'=')
    }

    fn pair(&mut self) -> Result<Option<Field<'a>>, ()> {
        while matches!(self.b.get(self.pos), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let start = self.pos;
        let key_len = self.b[start..].iter().take_while(|&&c| is_key_byte(c)).count();
        if key_len == 0 || self.b.get(start + key_len) != Some(&b'=') {
            return Err(());
        }
        let key = Str { raw: self.s.get(start..start + key_len).ok_or(())?, escaped: false, json: false };
        self.pos = start + key_len + 1;
        let value = if self.b.get(self.pos) == Some(&b'"') {
            let vstart = self.pos + 1;
            let mut i = vstart;
            let mut escaped = false;
            loop {
                i += memchr::memchr2(b'"', b'\\', self.b.get(i..).ok_or(())?).ok_or(())?;
                if self.b[i] == b'"' {
                    break;
                }
                escaped = true;
                i += 2;
            }
            self.pos = i + 1;
            Str { raw: self.s.get(vstart..i).ok_or(())?, escaped, json: false }
        } else {
            let len = self.b[self.pos..].iter().take_while(|&&c| c != b' ' && c != b'\t').count();
            let raw = self.s.get(self.pos..self.pos + len).ok_or(())?;
            if raw.contains(['"', '=']) {
                return Err(());
            }
            self.pos += len;
            Str { raw, escaped: false, json: false }
        };
        if !matches!(self.b.get(self.pos), None | Some(b' ' | b'\t')) {
            return Err(());
        }
        Ok(Some((key, Value::Str(value))))
    }
}

impl<'a> Iterator for LogfmtFields<'a> {
    type Item = Result<Field<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = self.pair();
        fused(step, &mut self.done)
    }
}

/// The fields shown for a line with `fields=true`: the first [`MAX_FIELDS`] distinct keys of a
/// well-formed JSON or logfmt line, values cut at [`MAX_FIELD_VALUE_BYTES`], at most
/// [`MAX_FIELDS_BYTES`] in all. `None` for a plain or malformed line.
pub fn shown_fields(text: &str) -> Option<Vec<(Cow<'_, str>, Cow<'_, str>)>> {
    let (format, iter) = fields(text);
    if format == Format::Plain {
        return None;
    }
    let mut out: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::new();
    let mut bytes = 0;
    let mut full = false;
    for field in iter {
        let (key, value) = field.ok()?;
        if full {
            continue; // still read to the end: only a well-formed line has fields
        }
        let key = key.decode();
        if out.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let mut value = value.text();
        if value.len() > MAX_FIELD_VALUE_BYTES {
            let mut cut = MAX_FIELD_VALUE_BYTES;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value = Cow::Owned(format!("{}…", &value[..cut]));
        }
        if bytes + key.len() + value.len() > MAX_FIELDS_BYTES {
            full = true;
            continue;
        }
        bytes += key.len() + value.len();
        out.push((key, value));
        full = out.len() == MAX_FIELDS;
    }
    Some(out)
}

// ---- filters ----------------------------------------------------------------------------------

/// `field.<key>=<value>` filters: a line passes when, for every filter, the first occurrence
/// of `key` in the well-formed JSON or logfmt line has exactly `value` (see [`fields`]).
#[derive(Debug, Clone, Default)]
pub struct FieldFilters {
    filters: Box<[(Box<str>, Box<str>)]>,
}

impl FieldFilters {
    /// Validates the filters: at most [`MAX_FIELD_FILTERS`], keys 1..=[`MAX_FILTER_KEY_BYTES`]
    /// bytes, values at most [`MAX_FILTER_VALUE_BYTES`], no key twice.
    pub fn new<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self, LogError> {
        let mut filters: Vec<(Box<str>, Box<str>)> = Vec::new();
        let short = |s: &str| -> String { s.chars().take(32).filter(|c| !c.is_control()).collect() };
        for (key, value) in pairs {
            let (key, value) = (key.as_ref(), value.as_ref());
            if filters.len() == MAX_FIELD_FILTERS {
                return Err(LogError::BadFieldFilter(format!("at most {MAX_FIELD_FILTERS} field filters")));
            }
            if key.is_empty() {
                return Err(LogError::BadFieldFilter("a field filter needs a key: `field.<key>=<value>`".into()));
            }
            if key.len() > MAX_FILTER_KEY_BYTES {
                return Err(LogError::BadFieldFilter(format!("field filter key longer than {MAX_FILTER_KEY_BYTES} bytes")));
            }
            if value.len() > MAX_FILTER_VALUE_BYTES {
                return Err(LogError::BadFieldFilter(format!("value of field filter `{}` longer than {MAX_FILTER_VALUE_BYTES} bytes", short(key))));
            }
            if filters.iter().any(|(k, _)| &**k == key) {
                return Err(LogError::BadFieldFilter(format!("field filter `{}` given twice", short(key))));
            }
            filters.push((key.into(), value.into()));
        }
        Ok(Self { filters: filters.into() })
    }

    /// No filter.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// True when `text` passes every filter (see the type docs). Plain text is rejected after
    /// a look at its first bytes, without allocating.
    pub fn accepts(&self, text: &str) -> bool {
        if self.filters.is_empty() {
            return true;
        }
        let (format, iter) = fields(text);
        if format == Format::Plain {
            return false;
        }
        // Bit i: filter i has met its key (first occurrence decides).
        let mut seen: u32 = 0;
        let all = (1u32 << self.filters.len()) - 1;
        let mut matched = true;
        for field in iter {
            let Ok((key, value)) = field else { return false };
            if seen == all {
                continue; // decided; read on only to know the line is well-formed
            }
            for (i, (k, v)) in self.filters.iter().enumerate() {
                if seen & (1 << i) == 0 && key.eq_text(k) {
                    seen |= 1 << i;
                    matched &= value.eq_text(v);
                }
            }
            if !matched {
                return false;
            }
        }
        matched && seen == all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_levels() {
        assert_eq!(detect_level(r#"{"level":"warn","msg":"x"}"#), Some(Level::Warn));
        assert_eq!(detect_level(r#"  {"msg":"ERROR in text","lvl":"ERR"}"#), Some(Level::Error));
        assert_eq!(detect_level(r#"{"severity":"CRITICAL"}"#), Some(Level::Fatal));
        assert_eq!(detect_level(r#"{"log.level":"debug","@timestamp":"2026-01-01T00:00:00Z"}"#), Some(Level::Debug));
        assert_eq!(detect_level(r#"{"Level":"Information"}"#), Some(Level::Info));
        assert_eq!(detect_level(r#"{"level":30,"msg":"pino"}"#), Some(Level::Info));
        assert_eq!(detect_level(r#"{"level":50}"#), Some(Level::Error));
        assert_eq!(detect_level(r#"{"level":"\u0077arn"}"#), Some(Level::Warn));
        assert_eq!(detect_level(r#"{"a":{"level":"error"},"level":"info"}"#), Some(Level::Info), "nested keys are skipped");
        // A JSON line without a level key has none, whatever its text says.
        assert_eq!(detect_level(r#"{"msg":"ERROR something"}"#), None);
        assert_eq!(detect_level(r#"{"level":"verbose-ish"}"#), None);
        // Truncated JSON: the level before the cut still counts.
        assert_eq!(detect_level(r#"{"level":"error","msg":"xxxxx … [truncated 9 bytes]"#), Some(Level::Error));
        // Not JSON: plain rules.
        assert_eq!(detect_level("{oops} ERROR here"), Some(Level::Error));
    }

    /// The reference reading of a JSON line's level: [`JsonFields`], member by member.
    fn json_level_reference(text: &str) -> Result<Option<Level>, ()> {
        let mut fields = JsonFields::new(text);
        for _ in 0..MAX_KEYS_SCANNED {
            match fields.next() {
                None => return Ok(None),
                Some(Err(())) => return Err(()),
                Some(Ok((key, value))) if is_json_level_key(key.raw.as_bytes()) => {
                    let level = match value {
                        Value::Str(s) => level_word(s.decode().as_bytes()),
                        Value::Raw(n) => match n {
                            "10" => Some(Level::Trace),
                            "20" => Some(Level::Debug),
                            "30" => Some(Level::Info),
                            "40" => Some(Level::Warn),
                            "50" => Some(Level::Error),
                            "60" => Some(Level::Fatal),
                            _ => None,
                        },
                    };
                    if level.is_some() {
                        return Ok(level);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
        Ok(None)
    }

    #[test]
    fn the_byte_reader_reads_json_levels_as_the_field_iterator_does() {
        let mut cases: Vec<String> = [
            r#"{"level":"warn","msg":"x"}"#, r#"  {"msg":"ERROR in text","lvl":"ERR"}"#, r#"{"severity":"CRITICAL"}"#,
            r#"{"Level":"Information"}"#, r#"{"level":30,"msg":"pino"}"#, r#"{"level":"\u0077arn"}"#,
            r#"{"a":{"level":"error"},"level":"info"}"#, r#"{"msg":"ERROR something"}"#, r#"{"level":"verbose-ish"}"#,
            r#"{"level":"error","msg":"xxxxx … [truncated 9 bytes]"#, "{oops} ERROR here", "{}", "{ } x", "{}  ", r#"{"a":1}x"#,
            r#"{"a":[1,{"b":"}"}],"lvl":"debug"}"#, r#"{"a":{}x,"level":"info"}"#, r#"{"a":tru,"level":"info"}"#,
            r#"{"a":-,"level":"info"}"#, r#"{"a":1e5,"level":"60"}"#, r#"{"a":1,"level":60}"#, r#"{"a":1,"level":61}"#,
            r#"{"a" : "b" , "level" : "warn" }"#, r#"{"a":"\x"}"#, r#"{"a":"\u12"}"#, r#"{"a":"b""#, r#"{"a":"b"  "#,
            r#"{"a":"b",}"#, r#"{"\u006cevel":"error"}"#, r#"{"level":"err\"or"}"#, r#"{"level":null,"lvl":"warn"}"#,
            r#"{"level":true}x"#, "{\"a\":\"é\",\"level\":\"info\"}", "{", "{\"", r#"{"a""#, r#"{"a":"#,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // The key bound: the level as the 64th and the 65th key, and garbage after the 64th.
        let keys = |n: usize| (0..n).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>().join(",");
        cases.push(format!("{{{},\"level\":\"warn\"}}", keys(63)));
        cases.push(format!("{{{},\"level\":\"warn\"}}", keys(64)));
        cases.push(format!("{{{} garbage", keys(64)));
        cases.push(format!("{{{}}} garbage", keys(64)));
        // Every prefix of a few lines: truncation anywhere.
        for line in [r#"{"ts":"2026-01-30T10:00:00.123Z","logger":"http","level":"info","msg":"GET /x 200","n":[1,2]}"#, r#" { "a" : { "b" : [ "c" , 1 ] } , "severity" : 40 } "#] {
            for end in 0..=line.len() {
                if let Some(prefix) = line.get(..end) {
                    cases.push(prefix.to_owned());
                }
            }
        }
        for case in &cases {
            assert_eq!(json_level(case), json_level_reference(case), "{case}");
        }
    }

    #[test]
    fn plain_levels() {
        assert_eq!(detect_level("E0102 15:04:05.000000       1 main.go:10] boom"), Some(Level::Error));
        assert_eq!(detect_level("W1231 23:59:59.999999 1 x.go:1] careful"), Some(Level::Warn));
        assert_eq!(detect_level("I0102 15:04:05.000000 1 x.go:1] ok"), Some(Level::Info));
        assert_eq!(detect_level("E01 not klog"), None);
        assert_eq!(detect_level("2026-01-02 10:00:00,123 ERROR [main] db down"), Some(Level::Error));
        assert_eq!(detect_level("2026/01/02 10:00:00 [warn] 12#0: upstream slow"), Some(Level::Warn));
        assert_eq!(detect_level("[2026-01-02T10:00:00Z] <Debug> tick"), Some(Level::Debug));
        assert_eq!(detect_level("WARNING:root:disk almost full"), Some(Level::Warn));
        assert_eq!(detect_level("2026-01-02T10:00:00Z\tERROR\tdb down"), None, "a tab inside a word: the level word must start it");
        assert_eq!(detect_level("ts ERROR\tdb down"), Some(Level::Error));
        assert_eq!(detect_level("panic: simulated crash"), Some(Level::Fatal));
        assert_eq!(detect_level("error: could not connect"), Some(Level::Error));
        assert_eq!(detect_level("seq=10 src=a/b level=error msg=\"something failed\""), Some(Level::Error));
        assert_eq!(detect_level("ts=1 lvl=\"warn\" msg=x"), Some(Level::Warn));
        assert_eq!(detect_level("time=x LEVEL=INFO"), Some(Level::Info));
        // Not levels.
        assert_eq!(detect_level("GET /api/v1/items 200 1.2ms"), None);
        assert_eq!(detect_level("no error found in the logs"), None, "lower-case words mid-line are text");
        assert_eq!(detect_level("the information: x"), None);
        assert_eq!(detect_level("loglevel=errorish sublevel=error"), None);
        assert_eq!(detect_level("x-level=error"), None);
        assert_eq!(detect_level("ERRORS everywhere"), None);
        assert_eq!(detect_level("[errors] x"), None);
        assert_eq!(detect_level(""), None);
        assert_eq!(detect_level("{"), None);
    }

    #[test]
    fn query_levels() {
        assert_eq!(Level::parse_query("warn").unwrap(), Level::Warn);
        assert_eq!(Level::parse_query("ERROR").unwrap(), Level::Error);
        let err = Level::parse_query("warning").unwrap_err().to_string();
        assert!(err.contains("unknown level `warning`") && err.contains("trace, debug"), "{err}");
        assert!(Level::Trace < Level::Debug && Level::Error < Level::Fatal);
    }

    fn shown(text: &str) -> Option<Vec<(String, String)>> {
        shown_fields(text).map(|f| f.into_iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn quote_scan_finds_the_first_quote_or_backslash() {
        for len in 0..150 {
            for at in [0, 1, 7, 8, 9, 63, 64, 65, 100] {
                for c in [b'"', b'\\'] {
                    let mut b = vec![b'x'; len];
                    if at < len {
                        b[at] = c;
                        // A later one must not win, and bytes near '"'/'\\' must not match.
                        if at + 1 < len {
                            b[at + 1] = b'"';
                        }
                    }
                    b.iter_mut().take(at.min(len)).for_each(|x| *x = if *x == b'x' { b'#' } else { *x });
                    let want = b.iter().position(|&x| x == b'"' || x == b'\\');
                    assert_eq!(quote_or_backslash(&b), want, "len {len} at {at}");
                }
            }
        }
        // Multi-byte UTF-8 and bytes one off the needles.
        let t = "é😀!#[]\"x".as_bytes();
        assert_eq!(quote_or_backslash(t), t.iter().position(|&x| x == b'"'));
    }

    #[test]
    fn json_fields() {
        assert_eq!(
            shown(r#"{"level":"info","n":-1.5e3,"ok":true,"z":null,"o":{"a":[1,"}"]},"s":"a\"b\u00e9\ud83d\ude00"}"#),
            Some(pairs(&[("level", "info"), ("n", "-1.5e3"), ("ok", "true"), ("z", "null"), ("o", r#"{"a":[1,"}"]}"#), ("s", "a\"bé😀")]))
        );
        assert_eq!(shown("{}"), Some(vec![]));
        assert_eq!(shown(r#"{"a":"1","a":"2"}"#), Some(pairs(&[("a", "1")])), "first occurrence wins");
        // Malformed anywhere: no fields.
        for bad in [r#"{"a":1"#, r#"{"a":1} trailing"#, r#"{"a":tru}"#, r#"{"a":"\x"}"#, r#"{"a":[1}"#, r#"{a:1}"#, r#"{"a":1,}"#, r#"{"a":01x}"#] {
            assert_eq!(shown(bad), None, "{bad}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(shown(&deep), None);
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(shown(&ok).is_some());
    }

    #[test]
    fn logfmt_fields() {
        assert_eq!(
            shown(r#"ts=2026-01-01T00:00:00Z level=warn msg="slow \"db\"\n" empty= path=/x?y"#),
            Some(pairs(&[("ts", "2026-01-01T00:00:00Z"), ("level", "warn"), ("msg", "slow \"db\"\n"), ("empty", ""), ("path", "/x?y")]))
        );
        for plain in ["GET /x?a=b HTTP/1.1", "seq=1 src=x seed line 1 level=info", "a=\"open", "a=b\"c", "=x", "a=\"x\"y"] {
            assert_eq!(shown(plain), None, "{plain}");
        }
        assert_eq!(fields("hello world").0, Format::Plain);
        assert_eq!(fields("a=1").0, Format::Logfmt);
    }

    #[test]
    fn shown_fields_are_bounded() {
        let many: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        assert_eq!(shown(&many.join(" ")).unwrap().len(), MAX_FIELDS);
        let long = format!(r#"{{"a":"{}é","b":"x"}}"#, "x".repeat(MAX_FIELD_VALUE_BYTES - 1));
        let f = shown(&long).unwrap();
        assert!(f[0].1.ends_with('…') && f[0].1.len() <= MAX_FIELD_VALUE_BYTES + 3, "{}", f[0].1.len());
        let big: Vec<String> = (0..30).map(|i| format!("k{i}=\"{}\"", "y".repeat(250))).collect();
        let f = shown(&big.join(" ")).unwrap();
        assert!(f.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= MAX_FIELDS_BYTES);
        assert!(f.len() < 30);
    }

    #[test]
    fn field_filters() {
        let f = FieldFilters::new([("app", "web"), ("status", "500")]).unwrap();
        assert!(f.accepts(r#"{"app":"web","status":500}"#));
        assert!(f.accepts("status=500 app=web"));
        assert!(f.accepts(r#"{"app":"w\u0065b","status":500,"app":"db"}"#));
        assert!(!f.accepts(r#"{"app":"db","status":500,"app":"web"}"#), "first occurrence decides");
        assert!(!f.accepts(r#"{"app":"web"}"#), "every filter must match");
        assert!(!f.accepts(r#"{"app":"web","status":500"#), "malformed lines have no fields");
        assert!(!f.accepts("app=web status=500 and more"));
        assert!(!f.accepts("plain text app web status 500"));
        assert!(FieldFilters::new(Vec::<(String, String)>::new()).unwrap().accepts("anything"));
    }

    #[test]
    fn field_filters_are_validated() {
        let err = |p: Vec<(String, String)>| FieldFilters::new(p).unwrap_err().to_string();
        assert!(err(pairs(&[("", "x")])).contains("needs a key"));
        assert!(err(vec![("k".repeat(MAX_FILTER_KEY_BYTES + 1), "v".into())]).contains("longer than"));
        assert!(err(vec![("k".into(), "v".repeat(MAX_FILTER_VALUE_BYTES + 1))]).contains("longer than"));
        assert!(err(pairs(&[("a", "1"), ("a", "2")])).contains("given twice"));
        let many: Vec<(String, String)> = (0..=MAX_FIELD_FILTERS).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(err(many).contains("at most"));
        let max: Vec<(String, String)> = (0..MAX_FIELD_FILTERS).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(FieldFilters::new(max).is_ok());
    }
}
