//! Test support for the KubeLens testenv (placeholder until the testenv crate lands).
