//! `Last-Event-ID` and `around` id parsing for pod and app streams: never panics on garbage;
//! anything accepted prints back to an id that parses to the same value.
#![no_main]

use kubelens_core::logs::{AppLogId, LineId, SourceCursor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cursor) = SourceCursor::parse_last_event_id(text) {
        assert_eq!(SourceCursor::parse_last_event_id(&cursor.to_string()).ok(), Some(cursor));
    }
    if let Ok(id) = LineId::parse(text) {
        assert_eq!(LineId::parse(&id.to_string()).ok(), Some(id));
        // A line id is also a resume id: resuming after it starts right after that line.
        assert_eq!(SourceCursor::parse_last_event_id(text).ok(), Some(SourceCursor::after(id)));
    }
    if let Ok(id) = AppLogId::parse(text) {
        let again = AppLogId::parse(&id.to_string()).expect("printed id parses");
        assert_eq!(again, id);
    }
});
