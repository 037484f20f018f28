//! Retention of terminated pods' logs: capture into the [`LogArchive`], serve from it, expire.
//!
//! Jobs finish and vanish, crash-looping containers replace their previous instance, rollouts
//! delete old pods — and Kubernetes forgets their logs with them. This module keeps them for
//! `logs.terminated_log_ttl` (default 60 min) after the pod is deleted:
//!
//! * [`capture::ArchiveRecorder`] is driven by a stream of [`PodSignal`]s (the pod cache's
//!   change stream turned into [`PodSnapshot`]s). It captures a container instance when
//!   the pod starts terminating (`deletionTimestamp`: it follows the log until the stream
//!   ends during graceful termination), when the pod reaches `Succeeded`/`Failed`, when a
//!   container terminates, and when a container restarts (restart count increases: the
//!   *previous* instance is captured). Capture reads at most the per-container caps
//!   (`tailLines` = line cap, then a ring trimmed to the byte cap), so the newest lines are
//!   the ones kept.
//! * Lines are stored under a position derived from the line itself ([`LinePositioner`]):
//!   every replica (and a restarted process) computes the same position for the same line,
//!   so two replicas capturing the same pod write the same keys and the archive's idempotent
//!   append stores each line once. No leader election is needed.
//! * [`read`] serves archived lines with the same resume ids as live streams
//!   (`<RFC3339Nano>~<k>`), so a client that was following a pod and reconnects after the
//!   pod is gone resumes exactly from the archive.
//! * Expiry: when a pod is deleted, its sources are marked terminated with the TTL; the
//!   recorder's expiry loop calls [`LogArchive::purge_expired`] (rows with a past expiry
//!   for sqlite/PostgreSQL; index trimming for Redis, whose keys expire natively).
//!
//! What cannot be captured (a force-deleted pod whose logs vanished first, an instance that
//! restarted twice between two observations, lines beyond the caps) is counted in
//! `kubelens_archive_captures_missed_total{reason}` and documented in `docs/retention.md`.

pub mod capture;
pub mod read;
pub mod watch;

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde::Serialize;

use crate::storage::{MAX_POD_META_BYTES, MAX_POSITION, PodMeta, StorageError};

pub use capture::{ArchiveRecorder, LogOpener, RecorderConfig};
pub use read::{ArchivedContainer, ArchivedLogLine, ArchivedPod};

/// Errors of the retention subsystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    /// The archive failed (see the source).
    #[error("log archive: {0}")]
    Storage(#[from] StorageError),
    /// The archive holds no such pod, container or instance (or it expired).
    #[error("no archived logs for this {what}")]
    NotArchived {
        /// `pod`, `container` or `instance`.
        what: &'static str,
    },
    /// The archived pod has several containers and the request named none.
    #[error("the archived pod has several containers; choose one with `container`: {choices}")]
    ContainerRequired {
        /// Comma-separated container names.
        choices: String,
    },
}

/// What a container is doing, as far as capture cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerRun {
    /// Not started, or between restarts.
    Waiting,
    /// Running.
    Running,
    /// Exited (for now or for good).
    Terminated,
}

/// One container (or init container) of a [`PodSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSnapshot {
    /// Container name.
    pub name: String,
    /// Restart count: the current instance's number (the previous one is `restart_count - 1`).
    pub restart_count: u32,
    /// Current state.
    pub run: ContainerRun,
}

/// The facts capture needs about a pod, from a Pod object or the discovery cache's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSnapshot {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod uid (a pod recreated under the same name is another pod).
    pub uid: String,
    /// Creation time (ms since the Unix epoch): the anchor of line positions.
    pub created_at_ms: Option<i64>,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: Option<String>,
    /// `deletionTimestamp` is set: the pod is terminating.
    pub deleting: bool,
    /// Node the pod runs on.
    pub node: Option<String>,
    /// Owning app (kind, name), if any.
    pub app: Option<(String, String)>,
    /// The pod's labels (recorded so archive reads can apply `filters.exclude_labels`).
    pub labels: BTreeMap<String, String>,
    /// The owning app's labels, when the caller knows them (the discovery cache does).
    pub app_labels: Option<BTreeMap<String, String>>,
    /// Init containers, then regular containers.
    pub containers: Vec<ContainerSnapshot>,
}

impl PodSnapshot {
    /// The pod reached `Succeeded` or `Failed`: no container will run again.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// Metadata stored with every archived source of this pod.
    ///
    /// Labels that would push the metadata over [`MAX_POD_META_BYTES`] are left out (`None`):
    /// reads then treat the pod as hidden whenever label exclusions are configured.
    pub fn meta(&self) -> PodMeta {
        let mut meta = PodMeta {
            app_kind: self.app.as_ref().map(|(k, _)| k.clone()),
            app_name: self.app.as_ref().map(|(_, n)| n.clone()),
            node: self.node.clone(),
            labels: Some(self.labels.clone()),
            app_labels: self.app_labels.clone(),
        };
        let size = |meta: &PodMeta| serde_json::to_vec(meta).map_or(usize::MAX, |v| v.len());
        if size(&meta) > MAX_POD_META_BYTES {
            meta.app_labels = None;
        }
        if size(&meta) > MAX_POD_META_BYTES {
            meta.labels = None;
        }
        meta
    }

    /// Reads a Pod object (watch event, GET). `None` without name, namespace or uid.
    ///
    /// The owning app is resolved from the controller reference alone (a ReplicaSet named
    /// `<deployment>-<pod-template-hash>` counts as that Deployment); the discovery cache's
    /// summaries resolve it through the real owner chain and are preferred when available.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let status = pod.status.as_ref();
        let statuses = |list: Option<&Vec<ContainerStatus>>| -> Vec<ContainerSnapshot> {
            list.into_iter().flatten().map(container_from_status).collect()
        };
        let mut containers = statuses(status.and_then(|s| s.init_container_statuses.as_ref()));
        containers.extend(statuses(status.and_then(|s| s.container_statuses.as_ref())));
        // Containers without a status yet have not run: nothing to capture for them.
        let app = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| {
            let hash = meta.labels.as_ref().and_then(|l| l.get("pod-template-hash"));
            match (o.kind.as_str(), hash) {
                ("ReplicaSet", Some(hash)) => match o.name.strip_suffix(&format!("-{hash}")) {
                    Some(deployment) => ("Deployment".to_owned(), deployment.to_owned()),
                    None => (o.kind.clone(), o.name.clone()),
                },
                _ => (o.kind.clone(), o.name.clone()),
            }
        });
        Some(Self {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            created_at_ms: meta.creation_timestamp.as_ref().map(|t| t.0.as_millisecond()),
            phase: status.and_then(|s| s.phase.clone()),
            deleting: meta.deletion_timestamp.is_some(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            app,
            labels: meta.labels.clone().unwrap_or_default(),
            app_labels: None,
            containers,
        })
    }
}

fn container_from_status(cs: &ContainerStatus) -> ContainerSnapshot {
    let state = cs.state.as_ref();
    let run = if state.and_then(|s| s.terminated.as_ref()).is_some() {
        ContainerRun::Terminated
    } else if state.and_then(|s| s.running.as_ref()).is_some() {
        ContainerRun::Running
    } else {
        ContainerRun::Waiting
    };
    ContainerSnapshot { name: cs.name.clone(), restart_count: u32::try_from(cs.restart_count).unwrap_or(0), run }
}

/// A change of a pod, as the recorder consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSignal {
    /// The pod exists in this state (added, modified, or listed at startup).
    Observed(PodSnapshot),
    /// The pod object is gone (or became hidden by the policy).
    Deleted(PodSnapshot),
    /// A complete list of the namespace's pods was observed (startup, relist): sources of
    /// any other pod uid belong to pods deleted while nobody watched and are marked
    /// terminated now.
    Listed {
        /// The namespace listed.
        namespace: String,
        /// Uids of the pods that exist.
        live_uids: HashSet<String>,
    },
}

/// Assigns archive positions to the lines of one container instance.
///
/// `position = (µs since anchor) << 6 | k`, where the anchor is one day before the pod's
/// creation (second precision, the same for every replica; the day absorbs node clock skew)
/// and `k` (0..=63) is the line's index among the lines of the same microsecond. 47 bits of
/// microseconds cover 4.4 years of pod age; the whole stays below [`MAX_POSITION`] (2^53,
/// exact in every backend). Positions follow line order, so reading by position reads the
/// log in order, and they depend only on the line, so any replica (or a restarted process)
/// capturing the same line writes the same position: the archive's idempotent append
/// stores it once.
///
/// Limits (documented in `docs/retention.md`): more than 64 lines within one microsecond
/// share the last position (the extra lines are stored once); a read that starts in the
/// middle of a microsecond (a `tailLines` cut) numbers that microsecond's first lines from 0.
#[derive(Debug, Clone)]
pub struct LinePositioner {
    anchor_us: i64,
    last_us: Option<i64>,
    k: u64,
}

/// Bits of the same-microsecond index.
const K_BITS: u32 = 6;
const K_MAX: u64 = (1 << K_BITS) - 1;
/// Anchor used when a pod's creation time is unknown (2024-01-01T00:00:00Z, in µs).
const FALLBACK_ANCHOR_US: i64 = 1_704_067_200_000_000;

impl LinePositioner {
    /// A positioner for an instance of a pod created at `created_at_ms`.
    pub fn new(created_at_ms: Option<i64>) -> Self {
        let anchor_us = created_at_ms
            .map(|ms| (ms.div_euclid(1000) - 86_400).saturating_mul(1_000_000))
            .unwrap_or(FALLBACK_ANCHOR_US);
        Self { anchor_us, last_us: None, k: 0 }
    }

    /// The position of the next line (lines must come in log order).
    pub fn next(&mut self, ts_ns: i64) -> u64 {
        let us = ts_ns.div_euclid(1000);
        if self.last_us == Some(us) {
            self.k = (self.k + 1).min(K_MAX);
        } else {
            self.last_us = Some(us);
            self.k = 0;
        }
        let offset = u64::try_from(us.saturating_sub(self.anchor_us)).unwrap_or(0);
        offset.saturating_mul(1 << K_BITS).saturating_add(self.k).min(MAX_POSITION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_ordered_and_replica_independent() {
        let created = Some(1_769_767_200_000); // 2026-01-30T10:00:00Z
        let base = 1_769_767_210_000_000_000i64; // ten seconds later, in ns
        let mut a = LinePositioner::new(created);
        let lines = [base, base + 500, base + 1_000, base + 1_000, base + 2_000_000];
        let pa: Vec<u64> = lines.iter().map(|&t| a.next(t)).collect();
        assert!(pa.windows(2).all(|w| w[0] < w[1]), "{pa:?}");
        // Another replica reading from the third line on agrees on the shared lines.
        let mut b = LinePositioner::new(created);
        let pb: Vec<u64> = lines[2..].iter().map(|&t| b.next(t)).collect();
        assert_eq!(pb[1..], pa[3..], "lines after the first microsecond group agree");
        assert!(pa.iter().all(|p| *p <= MAX_POSITION));
        // Far future saturates instead of overflowing.
        assert_eq!(LinePositioner::new(created).next(i64::MAX), MAX_POSITION);
        // Clock skew before the anchor clamps at 0 rather than failing.
        assert_eq!(LinePositioner::new(created).next(0), 0);
    }

    #[test]
    fn snapshot_from_pod_resolves_deployment_and_states() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-7d9f-x", "namespace": "team-a", "uid": "u-1",
                "creationTimestamp": "2026-01-30T10:00:00Z", "deletionTimestamp": "2026-01-30T11:00:00Z",
                "labels": {"pod-template-hash": "7d9f"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f", "uid": "r", "controller": true}]},
            "spec": {"containers": [{"name": "app"}], "nodeName": "n1"},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "app", "ready": true, "restartCount": 2, "image": "x", "imageID": "", "state": {"running": {}}}]}
        }))
        .unwrap();
        let s = PodSnapshot::from_pod(&pod).unwrap();
        assert_eq!(s.app, Some(("Deployment".into(), "web".into())));
        assert!(s.deleting && !s.is_terminal());
        assert_eq!(s.containers, vec![ContainerSnapshot { name: "app".into(), restart_count: 2, run: ContainerRun::Running }]);
        assert_eq!(s.created_at_ms, Some(1_769_767_200_000));
        assert_eq!(s.meta().node.as_deref(), Some("n1"));
    }
}
