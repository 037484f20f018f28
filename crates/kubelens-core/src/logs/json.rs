//! The SSE `data:` payload of a log line: `{"ts","pod","container","line","truncated"}`, then
//! `"level"` when one is detected ([`super::structured::detect_level`]) and `"fields"` when the
//! request asked for them ([`LineJsonOptions::fields`]). Both are computed from the line's text
//! alone, so a line renders the same for every viewer with the same options, and a line
//! without a level renders exactly as before levels existed.
//!
//! Hand-written because it runs for every line sent to every viewer: it appends into a
//! reused buffer, copies runs of plain bytes at once and only escapes what JSON requires
//! (`"`, `\`, control characters). [`write_line_json_serde`] is the serde_json equivalent,
//! kept for the benchmark comparison (`docs/benchmarks/pipeline.md`) and as the test oracle.

use serde::Serialize;

use super::LogLine;
use super::structured::{detect_level, shown_fields};

/// What a log event carries besides the line (query parameters of the request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LineJsonOptions {
    /// Add `"fields"`: the flat top-level fields of a JSON or logfmt line
    /// ([`super::structured::shown_fields`]; omitted for other lines).
    pub fields: bool,
}

/// Appends the JSON object for `line` to `out` (with `level`, without `fields`).
#[inline]
pub fn write_line_json(line: &LogLine, out: &mut Vec<u8>) {
    write_line_json_with(line, LineJsonOptions::default(), out);
}

/// Appends the JSON object for `line` to `out` with `options`.
#[inline]
pub fn write_line_json_with(line: &LogLine, options: LineJsonOptions, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ts\":\"");
    line.ts.write_rfc3339(out);
    out.extend_from_slice(b"\",\"pod\":");
    write_json_str(&line.source.pod, out);
    out.extend_from_slice(b",\"container\":");
    write_json_str(&line.source.container, out);
    out.extend_from_slice(b",\"line\":");
    write_json_str(&line.text, out);
    out.extend_from_slice(if line.truncated { b",\"truncated\":true" } else { b",\"truncated\":false" });
    write_structured(&line.text, options, out);
    out.push(b'}');
}

/// Appends `,"level":"<level>"` when `text` has one and, with `options.fields`,
/// `,"fields":{…}` when it is a JSON or logfmt line — the members a log event object gets
/// after its fixed ones. Nothing for a plain line without a level.
#[inline]
pub fn write_structured(text: &str, options: LineJsonOptions, out: &mut Vec<u8>) {
    if let Some(level) = detect_level(text) {
        out.extend_from_slice(b",\"level\":\"");
        out.extend_from_slice(level.as_str().as_bytes());
        out.push(b'"');
    }
    if options.fields
        && let Some(fields) = shown_fields(text) {
            out.extend_from_slice(b",\"fields\":{");
            for (i, (key, value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(key, out);
                out.push(b':');
                write_json_str(value, out);
            }
            out.push(b'}');
        }
}

/// Appends `s` as a JSON string literal (with quotes).
///
/// Scans 8 bytes at a time (SWAR): a word without `"`, `\\` or a control byte is copied
/// as part of a run without looking at its bytes one by one; log text rarely needs escaping.
#[inline]
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            let x = u64::from_le_bytes(w);
            let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
            // High bit set in a lane: that byte is < 0x20, `"` or `\\` (bytes >= 0x80 are
            // excluded from the control test by `!x`).
            let special = (x.wrapping_sub(ONES * 0x20) & !x & HIGHS) | zero(x ^ (ONES * b'"' as u64)) | zero(x ^ (ONES * b'\\' as u64));
            if special == 0 {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(escape);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[derive(Serialize)]
struct LineJson<'a> {
    ts: String,
    pod: &'a str,
    container: &'a str,
    line: &'a str,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<&'static str>,
}

/// The same payload through serde_json (slower; see the benchmark; without `fields`).
pub fn write_line_json_serde(line: &LogLine, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    serde_json::to_writer(
        out,
        &LineJson {
            ts: line.ts.to_string(),
            pod: &line.source.pod,
            container: &line.source.container,
            line: &line.text,
            truncated: line.truncated,
            level: detect_level(&line.text).map(|l| l.as_str()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{LogSource, LogTimestamp};
    use proptest::prelude::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            ts: LogTimestamp::parse_rfc3339("2026-01-30T10:00:00.123456789Z").unwrap(),
            index: 0,
            source: LogSource::new("web-7d9f-x2k4", "app"),
            text: text.to_owned(),
            truncated: false,
            encoded: None,
        }
    }

    #[test]
    fn matches_the_contract() {
        let mut out = Vec::new();
        write_line_json(&line("he said \"hi\"\t\u{1}"), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"ts":"2026-01-30T10:00:00.123456789Z","pod":"web-7d9f-x2k4","container":"app","line":"he said \"hi\"\t\u0001","truncated":false}"#
        );
    }

    #[test]
    fn level_and_fields_follow_the_fixed_members() {
        let mut out = Vec::new();
        write_line_json(&line(r#"{"level":"warn","msg":"slow \"db\"","n":3}"#), &mut out);
        assert!(String::from_utf8(out).unwrap().ends_with(r#","truncated":false,"level":"warn"}"#));
        let mut out = Vec::new();
        write_line_json_with(&line(r#"{"level":"warn","msg":"slow \"db\"","n":3}"#), LineJsonOptions { fields: true }, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["fields"], serde_json::json!({"level": "warn", "msg": "slow \"db\"", "n": "3"}));
        // Plain lines: byte-identical to the payload without structure, fields or not.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_line_json(&line("GET /healthz 200"), &mut a);
        write_line_json_with(&line("GET /healthz 200"), LineJsonOptions { fields: true }, &mut b);
        let plain = r#"{"ts":"2026-01-30T10:00:00.123456789Z","pod":"web-7d9f-x2k4","container":"app","line":"GET /healthz 200","truncated":false}"#;
        assert_eq!((String::from_utf8(a).unwrap().as_str(), String::from_utf8(b).unwrap().as_str()), (plain, plain));
    }

    proptest! {
        #[test]
        fn fields_are_valid_json_and_match_the_line(key in "[a-z\"é\\\\\\x01]{1,6}", value in "\\PC{0,300}|[\\x00-\\x1f\"\\\\é€😀a-z]{0,40}") {
            prop_assume!(key != "level" && key != "n");
            let text = serde_json::json!({ "level": "error", key.clone(): value.clone(), "n": 1 }).to_string();
            let mut out = Vec::new();
            write_line_json_with(&line(&text), LineJsonOptions { fields: true }, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(&v["level"], "error");
            let shown = v["fields"][&key].as_str().unwrap().to_owned();
            if value.len() <= crate::logs::structured::MAX_FIELD_VALUE_BYTES {
                prop_assert_eq!(shown, value);
            } else {
                prop_assert!(shown.ends_with('…') && value.starts_with(shown.trim_end_matches('…')));
            }
        }

        #[test]
        fn equals_serde_json(text in "\\PC*|[\\x00-\\x1f\"\\\\é€😀a-z]{0,40}|(ERROR|\\[warn\\]|level=info|E0102 15:|\\{\"lvl\":\"dbg\"\\}) \\PC{0,20}") {
            let l = line(&text);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            write_line_json(&l, &mut a);
            write_line_json_serde(&l, &mut b).unwrap();
            let a: serde_json::Value = serde_json::from_slice(&a).unwrap();
            let b: serde_json::Value = serde_json::from_slice(&b).unwrap();
            prop_assert_eq!(a, b);
        }
    }
}
