//! Admission control for log streams: a process-wide cap on upstream Kubernetes log streams,
//! a per-user cap on open streams (log streams, one-shot and archive reads, pod change
//! streams) and a per-user cap on the sources (containers) that user's app streams read.
//!
//! Why two caps: upstream streams cost the API server and the kubelet (one long-lived HTTP
//! request each), so their number is bounded for the whole process no matter who asks; SSE
//! streams cost us memory and a per-viewer queue, so one user (one browser with fifty tabs,
//! or a script) cannot take the whole budget. Both answer "no" immediately instead of
//! queueing: the HTTP layer turns that into `429 too_many_streams`, and an app stream turns it
//! into a `status` event for the pod that could not join.
//!
//! Permits are RAII guards: dropping one (the SSE response body was dropped because the client
//! went away, or the upstream stream ended) gives the slot back. There is no "release" call
//! to forget.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::config::LogsConfig;

/// Why a stream was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// The process already runs `limit` upstream Kubernetes log streams.
    #[error("the server already follows {limit} upstream log streams; try again later")]
    UpstreamLimit {
        /// `logs.max_upstream_streams`.
        limit: usize,
    },
    /// This user already has `limit` open log streams.
    #[error("you already have {limit} open log streams; close one and try again")]
    UserLimit {
        /// `logs.max_streams_per_user`.
        limit: usize,
    },
    /// This user's app streams already read `limit` sources (containers) together.
    #[error("your app log streams already read {limit} containers; close one and try again")]
    UserSourceLimit {
        /// `logs.max_sources_per_user`.
        limit: usize,
    },
}

/// The two stream caps. Cheap to clone; clones share the counters.
#[derive(Clone)]
pub struct StreamAdmission {
    upstream: Arc<Semaphore>,
    max_upstream: usize,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
    max_per_user: usize,
    /// Sources (containers) read by each user's app streams.
    sources: Arc<Mutex<HashMap<String, usize>>>,
    max_sources_per_user: usize,
}

impl fmt::Debug for StreamAdmission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Subjects are personal identifiers: only counts are printed.
        f.debug_struct("StreamAdmission")
            .field("upstream_in_use", &self.upstream_in_use())
            .field("max_upstream", &self.max_upstream)
            .field("users", &self.users_with_streams())
            .field("max_per_user", &self.max_per_user)
            .finish()
    }
}

impl StreamAdmission {
    /// Caps from `logs.max_upstream_streams` and `logs.max_streams_per_user`.
    pub fn from_config(config: &LogsConfig) -> Self {
        Self::new(config.max_upstream_streams, config.max_streams_per_user).with_sources_per_user(config.max_sources_per_user)
    }

    /// Caps the sources (containers) one user's app streams read together (default: no cap
    /// beyond the upstream cap).
    pub fn with_sources_per_user(mut self, max: usize) -> Self {
        self.max_sources_per_user = max;
        self
    }

    /// Explicit caps. A cap of 0 admits nothing (config validation forbids it; tests use it).
    pub fn new(max_upstream: usize, max_per_user: usize) -> Self {
        // Semaphore::MAX_PERMITS is far above any sensible cap; clamp instead of panicking.
        let max_upstream = max_upstream.min(Semaphore::MAX_PERMITS);
        Self {
            upstream: Arc::new(Semaphore::new(max_upstream)),
            max_upstream,
            per_user: Arc::new(Mutex::new(HashMap::new())),
            max_per_user,
            sources: Arc::new(Mutex::new(HashMap::new())),
            max_sources_per_user: max_upstream,
        }
    }

    /// Takes one upstream slot, or fails at once when all are in use.
    pub fn try_upstream(&self) -> Result<UpstreamPermit, AdmissionError> {
        match Arc::clone(&self.upstream).try_acquire_owned() {
            Ok(permit) => Ok(UpstreamPermit { _permit: permit }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                Err(AdmissionError::UpstreamLimit { limit: self.max_upstream })
            }
        }
    }

    /// Takes one SSE stream slot for `subject` (the token's `sub`), or fails at once.
    pub fn try_viewer(&self, subject: &str) -> Result<ViewerPermit, AdmissionError> {
        take(&self.per_user, self.max_per_user, subject)
            .ok_or(AdmissionError::UserLimit { limit: self.max_per_user })
    }

    /// Takes one source slot (one container read by an app stream) for `subject`, or fails
    /// at once when the user's app streams already read `logs.max_sources_per_user` sources.
    pub fn try_source(&self, subject: &str) -> Result<ViewerPermit, AdmissionError> {
        take(&self.sources, self.max_sources_per_user, subject)
            .ok_or(AdmissionError::UserSourceLimit { limit: self.max_sources_per_user })
    }

    /// Sources currently read by `subject`'s app streams.
    pub fn user_sources(&self, subject: &str) -> usize {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner).get(subject).copied().unwrap_or(0)
    }

    /// Upstream streams currently admitted.
    pub fn upstream_in_use(&self) -> usize {
        self.max_upstream.saturating_sub(self.upstream.available_permits())
    }

    /// SSE streams currently open for `subject`.
    pub fn viewer_streams(&self, subject: &str) -> usize {
        self.per_user.lock().unwrap_or_else(PoisonError::into_inner).get(subject).copied().unwrap_or(0)
    }

    /// Users with at least one open stream (the map never keeps zero entries, so its memory
    /// is bounded by the number of concurrent streams).
    pub fn users_with_streams(&self) -> usize {
        self.per_user.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Counts one more for `subject` unless it is at `max`.
fn take(counts: &Arc<Mutex<HashMap<String, usize>>>, max: usize, subject: &str) -> Option<ViewerPermit> {
    // The lock is never held across an await and the critical section cannot panic, so
    // a poisoned mutex still holds consistent counts: recover it instead of failing.
    let mut users = counts.lock().unwrap_or_else(PoisonError::into_inner);
    let count = users.entry(subject.to_owned()).or_insert(0);
    if *count >= max {
        if *count == 0 {
            users.remove(subject);
        }
        return None;
    }
    *count += 1;
    Some(ViewerPermit { subject: subject.to_owned(), users: Arc::clone(counts) })
}

/// One admitted upstream Kubernetes log stream; the slot is released on drop.
#[derive(Debug)]
pub struct UpstreamPermit {
    _permit: OwnedSemaphorePermit,
}

/// One admitted stream (or, from [`StreamAdmission::try_source`], one app-stream source) of
/// a user; the slot is released on drop.
pub struct ViewerPermit {
    subject: String,
    users: Arc<Mutex<HashMap<String, usize>>>,
}

impl fmt::Debug for ViewerPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewerPermit").finish_non_exhaustive()
    }
}

impl Drop for ViewerPermit {
    fn drop(&mut self) {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = users.get_mut(&self.subject) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                users.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn upstream_cap_is_enforced_and_released_on_drop() {
        let admission = StreamAdmission::new(2, 10);
        let a = admission.try_upstream().unwrap();
        let _b = admission.try_upstream().unwrap();
        assert_eq!(admission.try_upstream().unwrap_err(), AdmissionError::UpstreamLimit { limit: 2 });
        assert_eq!(admission.upstream_in_use(), 2);
        drop(a);
        assert_eq!(admission.upstream_in_use(), 1);
        assert!(admission.try_upstream().is_ok());
    }

    #[test]
    fn per_user_cap_is_per_subject_and_released_on_drop() {
        let admission = StreamAdmission::new(10, 2);
        let a1 = admission.try_viewer("alice").unwrap();
        let a2 = admission.try_viewer("alice").unwrap();
        assert_eq!(admission.try_viewer("alice").unwrap_err(), AdmissionError::UserLimit { limit: 2 });
        // Another user is unaffected.
        let b = admission.try_viewer("bob").unwrap();
        assert_eq!(admission.viewer_streams("alice"), 2);
        drop(a1);
        let a3 = admission.try_viewer("alice").unwrap();
        drop((a2, a3, b));
        assert_eq!(admission.users_with_streams(), 0, "zero-count entries are removed");
    }

    #[test]
    fn source_slots_are_per_user_and_separate_from_stream_slots() {
        let admission = StreamAdmission::new(100, 1).with_sources_per_user(2);
        let _stream = admission.try_viewer("alice").unwrap();
        let s1 = admission.try_source("alice").unwrap();
        let _s2 = admission.try_source("alice").unwrap();
        assert_eq!(admission.try_source("alice").unwrap_err(), AdmissionError::UserSourceLimit { limit: 2 });
        assert!(admission.try_source("bob").is_ok());
        assert_eq!(admission.user_sources("alice"), 2);
        drop(s1);
        assert!(admission.try_source("alice").is_ok());
    }

    #[test]
    fn clones_share_counters() {
        let admission = StreamAdmission::new(1, 1);
        let clone = admission.clone();
        let _p = admission.try_upstream().unwrap();
        assert!(clone.try_upstream().is_err());
        let _v = clone.try_viewer("subject-1234").unwrap();
        assert!(admission.try_viewer("subject-1234").is_err());
        assert!(!format!("{admission:?}").contains("subject-1234"), "subjects are not printed");
    }
}
