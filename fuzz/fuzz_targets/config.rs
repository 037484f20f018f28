//! Config parsing and validation of arbitrary YAML: errors, never panics.
#![no_main]

use kubelens_core::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(mut config) = Config::from_yaml(text) {
        let _ = config.validate();
    }
});
