//! Shared helpers for the storage integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A name unique within this machine and run: schema names and redis key prefixes, so tests
/// can run in parallel against one server.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}_{}", std::process::id(), nanos % 1_000_000_000_000, COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// The URL in `var`, or `None` when the run opted out with `KUBELENS_SKIP_E2E=1`.
/// Panics (fails the test) when it is unset without the opt-out: a test that needs a real
/// server must never pass silently without one.
pub fn required_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("KUBELENS_SKIP_E2E").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: {var} unset and KUBELENS_SKIP_E2E=1");
            None
        }
        _ => panic!(
            "{var} is not set. Run through scripts/storage/run.sh -- cargo test ..., \
             or set KUBELENS_SKIP_E2E=1 to skip explicitly"
        ),
    }
}
