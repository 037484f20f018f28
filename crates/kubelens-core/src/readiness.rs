//! Readiness: a registry that subsystems add named checks to.
//!
//! Each subsystem holds a [`ReadinessCheck`] and flips it as its dependency comes and goes
//! (caches synced, storage pingable, OIDC discovery loaded). The HTTP layer renders
//! [`Readiness::report`]. Shutdown marks the whole process unready first, so load balancers
//! stop sending traffic before streams are drained.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;

#[derive(Debug, Default)]
struct Inner {
    checks: RwLock<BTreeMap<String, CheckState>>,
    shutting_down: AtomicBool,
}

/// State of one named check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckState {
    /// Whether this dependency is usable.
    pub ready: bool,
    /// Short, safe explanation (never secrets).
    pub detail: String,
}

/// Process-wide readiness registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Inner>,
}

/// A handle one subsystem uses to report its state.
#[derive(Debug, Clone)]
pub struct ReadinessCheck {
    inner: Arc<Inner>,
    name: String,
}

/// What `/readyz` renders.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessReport {
    /// True when every check is ready and the process is not shutting down.
    pub ready: bool,
    /// True once shutdown started.
    pub shutting_down: bool,
    /// Every registered check by name.
    pub checks: BTreeMap<String, CheckState>,
}

impl Readiness {
    /// An empty registry (ready, with no checks).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a check, initially not ready with `detail`.
    pub fn register(&self, name: &str, detail: &str) -> ReadinessCheck {
        let check = ReadinessCheck { inner: self.inner.clone(), name: name.to_owned() };
        check.set(false, detail);
        check
    }

    /// Marks the process as shutting down: readiness fails from now on.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
    }

    /// True once [`Readiness::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// A snapshot of all checks.
    pub fn report(&self) -> ReadinessReport {
        let checks = match self.inner.checks.read() {
            Ok(guard) => guard.clone(),
            // A writer panicked mid-update; the map itself is still consistent.
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let shutting_down = self.is_shutting_down();
        let ready = !shutting_down && checks.values().all(|c| c.ready);
        ReadinessReport { ready, shutting_down, checks }
    }
}

impl ReadinessCheck {
    /// Updates this check.
    pub fn set(&self, ready: bool, detail: &str) {
        let state = CheckState { ready, detail: detail.to_owned() };
        let mut guard = match self.inner.checks.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.insert(self.name.clone(), state);
    }

    /// Shorthand for `set(true, detail)`.
    pub fn ready(&self, detail: &str) {
        self.set(true, detail);
    }

    /// Shorthand for `set(false, detail)`.
    pub fn not_ready(&self, detail: &str) {
        self.set(false, detail);
    }

    /// Whether this check is currently ready.
    pub fn is_ready(&self) -> bool {
        self.inner
            .checks
            .read()
            .map(|g| g.get(&self.name).is_some_and(|c| c.ready))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_checks_must_be_ready_and_shutdown_wins() {
        let readiness = Readiness::new();
        assert!(readiness.report().ready);
        let kube = readiness.register("kubernetes", "connecting");
        let storage = readiness.register("storage", "connecting");
        assert!(!readiness.report().ready);
        kube.ready("ok");
        assert!(!readiness.report().ready);
        storage.ready("ok");
        let report = readiness.report();
        assert!(report.ready);
        assert_eq!(report.checks.len(), 2);
        storage.not_ready("ping failed");
        assert!(!readiness.report().ready);
        assert!(!storage.is_ready());
        storage.ready("ok");
        readiness.begin_shutdown();
        let report = readiness.report();
        assert!(!report.ready && report.shutting_down);
    }
}
