//! Line splitting + truncation + decoding: arbitrary bytes in arbitrary chunks.
//! Invariants: the splitter never holds more than its limit; every line is the reference
//! split of the input (cut to the limit, the rest counted); decoded text is bounded and
//! carries the marker exactly when truncated.
#![no_main]

use bytes::Bytes;
use kubelens_core::logs::split::{LineDecoder, LineSplitter, TRUNCATION_MARKER_PREFIX};
use kubelens_core::logs::LogSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, data)) = data.split_first() else { return };
    let limit = usize::from(head % 64) + 1;
    let max_text = usize::from(head % 16) + 1;
    let chunk = usize::from(head / 16) + 1;
    let mut splitter = LineSplitter::with_limit(limit);
    let mut decoder = LineDecoder::new(LogSource::new("pod", "c"), max_text);
    let mut got = Vec::new();
    let mut check = |raw: kubelens_core::logs::RawLine| {
        assert!(raw.bytes.len() <= limit);
        let line = decoder.decode(&raw.bytes, raw.dropped);
        let body = line.text.split(TRUNCATION_MARKER_PREFIX).next().unwrap_or("");
        assert!(body.len() <= 3 * limit);
        if line.truncated {
            assert!(line.text.contains(TRUNCATION_MARKER_PREFIX));
        }
        got.push((raw.bytes.to_vec(), raw.dropped));
    };
    for piece in data.chunks(chunk) {
        splitter.feed(&Bytes::copy_from_slice(piece), &mut check);
        assert!(splitter.buffered() <= limit);
    }
    splitter.finish(&mut check);

    let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    let want: Vec<(Vec<u8>, usize)> = parts
        .into_iter()
        .map(|p| {
            let p = p.strip_suffix(b"\r").unwrap_or(p);
            let keep = p.len().min(limit);
            (p[..keep].to_vec(), p.len() - keep)
        })
        .collect();
    assert_eq!(got, want);
});
