//! Server-side line filter: include/exclude regexes on line text, a minimum level and exact
//! `field.<key>=<value>` matches on structured lines ([`super::structured`]), applied before a
//! line leaves the server (so filtered lines cost no bandwidth and no client CPU). Filtering
//! never changes ids: a filtered line is simply not sent, and a resume id still points into
//! the unfiltered source, so exact resume works with any filter.
//!
//! Patterns come from query parameters, i.e. from users: they are length-limited and
//! compiled once per stream with bounded compiled-program and lazy-DFA sizes, so a hostile
//! pattern is a 400, never a memory spike. The `regex` crate guarantees linear-time matching
//! (no backtracking), so a pattern cannot make matching itself explode.

use regex::{Regex, RegexBuilder};

use super::LogError;
use super::structured::{FieldFilters, Level, detect_level};

/// Longest accepted pattern text.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Upper bound of one compiled pattern (`RegexBuilder::size_limit`).
pub const COMPILED_SIZE_LIMIT: usize = 1 << 20;
/// Upper bound of one pattern's lazy DFA cache (`RegexBuilder::dfa_size_limit`).
pub const DFA_SIZE_LIMIT: usize = 1 << 20;

/// A compiled line filter. A line passes when it matches `include` (if any), does not match
/// `exclude` (if any), has a detected level at or above `min_level` (if set; a line without
/// a level does not pass) and matches every field filter.
#[derive(Debug, Clone, Default)]
pub struct LineFilter {
    include: Option<Regex>,
    exclude: Option<Regex>,
    min_level: Option<Level>,
    fields: FieldFilters,
}

impl LineFilter {
    /// Compiles the patterns; empty strings count as absent.
    pub fn new(include: Option<&str>, exclude: Option<&str>) -> Result<Self, LogError> {
        Ok(Self { include: compile(include, "include")?, exclude: compile(exclude, "exclude")?, ..Self::default() })
    }

    /// Also requires a level at or above `level` (`None`: no level filter).
    pub fn with_min_level(mut self, level: Option<Level>) -> Self {
        self.min_level = level;
        self
    }

    /// Also requires every field filter of `fields` to match.
    pub fn with_fields(mut self, fields: FieldFilters) -> Self {
        self.fields = fields;
        self
    }

    /// True when the filter lets every line through (callers can skip it).
    pub fn is_pass_all(&self) -> bool {
        self.include.is_none() && self.exclude.is_none() && self.min_level.is_none() && self.fields.is_empty()
    }

    /// True when `text` should be sent. The cheap checks run first: the level (a bounded scan,
    /// no allocation), the regexes, then the field filters.
    #[inline]
    pub fn accepts(&self, text: &str) -> bool {
        self.min_level.is_none_or(|min| detect_level(text).is_some_and(|l| l >= min))
            && self.include.as_ref().is_none_or(|r| r.is_match(text))
            && !self.exclude.as_ref().is_some_and(|r| r.is_match(text))
            && self.fields.accepts(text)
    }
}

fn compile(pattern: Option<&str>, which: &str) -> Result<Option<Regex>, LogError> {
    let Some(pattern) = pattern.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(LogError::BadPattern(format!("{which} pattern longer than {MAX_PATTERN_LEN} bytes")));
    }
    RegexBuilder::new(pattern)
        .size_limit(COMPILED_SIZE_LIMIT)
        .dfa_size_limit(DFA_SIZE_LIMIT)
        .nest_limit(64)
        .build()
        .map(Some)
        .map_err(|e| {
            // The regex error quotes the pattern, which the caller sent; keep it short.
            let msg = e.to_string();
            let first = msg.lines().last().unwrap_or("does not compile").trim().to_owned();
            LogError::BadPattern(format!("{which}: {first}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_and_exclude() {
        let f = LineFilter::new(Some("(?i)error|warn"), Some("healthz")).unwrap();
        assert!(f.accepts("ERROR db down"));
        assert!(!f.accepts("info ok"));
        assert!(!f.accepts("warn GET /healthz"));
        assert!(LineFilter::new(Some(""), None).unwrap().is_pass_all());
        assert!(LineFilter::new(None, Some("x")).unwrap().accepts("y"));
    }

    #[test]
    fn level_and_fields_combine_with_grep() {
        let f = LineFilter::new(None, Some("healthz"))
            .unwrap()
            .with_min_level(Some(Level::Warn))
            .with_fields(FieldFilters::new([("app", "web")]).unwrap());
        assert!(!f.is_pass_all());
        assert!(f.accepts(r#"{"level":"error","app":"web","msg":"db down"}"#));
        assert!(f.accepts("level=warn app=web msg=slow"));
        assert!(!f.accepts(r#"{"level":"info","app":"web"}"#), "below the level");
        assert!(!f.accepts(r#"{"level":"error","app":"db"}"#), "another field value");
        assert!(!f.accepts(r#"{"level":"fatal","app":"web","path":"/healthz"}"#), "grepExclude still applies");
        assert!(!f.accepts("ERROR plain text has no fields"));
        let level_only = LineFilter::default().with_min_level(Some(Level::Error));
        assert!(level_only.accepts("E0102 15:04:05.000000 1 main.go:1] boom"));
        assert!(level_only.accepts("panic: simulated crash"));
        assert!(!level_only.accepts("seq=1 plain line without a level"), "no level: filtered out");
        assert!(!level_only.accepts("W0102 15:04:05.000000 1 main.go:1] careful"));
    }

    #[test]
    fn hostile_patterns_are_rejected() {
        assert!(matches!(LineFilter::new(Some("("), None), Err(LogError::BadPattern(_))));
        assert!(LineFilter::new(Some(&"a".repeat(2000)), None).is_err());
        // Compiles to far more than the size limit.
        assert!(matches!(LineFilter::new(Some(r"\w{1000}\w{1000}"), None), Err(LogError::BadPattern(_))));
        assert!(LineFilter::new(None, Some(&format!("{}a{}", "(".repeat(100), ")".repeat(100)))).is_err());
    }
}
