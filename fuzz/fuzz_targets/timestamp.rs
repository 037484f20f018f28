//! RFC3339 parsing (line prefixes, `since`): never panics; what parses formats back to a
//! canonical string that parses to the same instant; agrees with chrono on valid input.
#![no_main]

use kubelens_core::logs::time::split_timestamp;
use kubelens_core::logs::LogTimestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = split_timestamp(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(ts) = LogTimestamp::parse_rfc3339(text) {
        let canonical = ts.to_string();
        assert_eq!(LogTimestamp::parse_rfc3339(&canonical).ok(), Some(ts));
        // chrono accepts a superset (e.g. leap seconds, more fraction digits); whatever we
        // accept it must read as the same instant.
        if let Ok(c) = chrono::DateTime::parse_from_rfc3339(text) {
            assert_eq!(c.timestamp_nanos_opt(), Some(ts.unix_nanos()), "{text}");
        }
    }
});
