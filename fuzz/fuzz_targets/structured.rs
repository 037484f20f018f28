//! Structured-line parsers (`logs::structured`): level detection, JSON/logfmt field reading
//! and field filters never panic on any input; what they read agrees with serde_json on
//! well-formed JSON; shown fields stay within their bounds and a filter on a shown field
//! (key and full value) accepts the line.
#![no_main]

use kubelens_core::logs::structured::{
    FieldFilters, Format, MAX_FIELDS, MAX_FIELDS_BYTES, MAX_FIELD_VALUE_BYTES, MAX_DEPTH, detect_level, fields, shown_fields,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    let _ = detect_level(text);
    let (format, iter) = fields(text);
    let read: Option<Vec<(String, String)>> = iter.map(|f| f.map(|(k, v)| (k.decode().into_owned(), v.text().into_owned()))).collect::<Result<_, ()>>().ok();
    if let Some(shown) = shown_fields(text) {
        assert_ne!(format, Format::Plain);
        assert!(shown.len() <= MAX_FIELDS);
        assert!(shown.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= MAX_FIELDS_BYTES);
        assert!(shown.iter().all(|(_, v)| v.len() <= MAX_FIELD_VALUE_BYTES + '…'.len_utf8()));
        let read = read.as_ref().expect("shown fields come from a well-formed line");
        // A filter on the first occurrence of a key with its full value passes.
        if let Some((key, value)) = read.first() {
            if !key.is_empty() && key.len() <= 128 && value.len() <= 1024 {
                let filter = FieldFilters::new([(key.as_str(), value.as_str())]).expect("a valid filter");
                assert!(filter.accepts(text), "{text:?}: {key:?}={value:?}");
            }
        }
    }
    // Well-formed JSON objects (no duplicate keys) read exactly as serde_json reads them.
    // (Deeper than MAX_DEPTH is plain text by design.)
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) {
        if text.trim_start().starts_with('{') && map.values().map(depth).max().unwrap_or(0) < MAX_DEPTH {
            let read = read.expect("serde_json's objects are read as JSON");
            assert_eq!(format, Format::Json);
            if read.len() == map.len() {
                for (key, value) in &read {
                    match &map[key] {
                        serde_json::Value::String(s) => assert_eq!(s, value),
                        // Non-strings are their JSON text as written; it parses to the same value.
                        other => assert_eq!(&serde_json::from_str::<serde_json::Value>(value).ok(), &Some(other.clone()), "{key}"),
                    }
                }
            }
        }
    }
});

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
