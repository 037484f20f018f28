//! Namespaces, pods, apps and the pod change stream.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An allowlisted namespace that exists in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSummary {
    /// Namespace name.
    pub name: String,
    /// `Active` or `Terminating` (as reported by Kubernetes).
    pub phase: Option<String>,
    /// Creation time.
    pub created_at: Option<DateTime<Utc>>,
    /// Namespace labels.
    pub labels: BTreeMap<String, String>,
}

/// The top-level workload kinds that make an app.
///
/// Serialized with Kubernetes' spelling (`Deployment`, `CronJob`, ...). Parsing (for the
/// `?kind=` query parameter) also accepts lowercase and plural forms (`deployments`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AppKind {
    /// `apps/v1` Deployment (pods reach it through a ReplicaSet).
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
    /// `batch/v1` CronJob (pods reach it through a Job).
    CronJob,
    /// `batch/v1` Job not owned by a CronJob.
    Job,
    /// `apps/v1` ReplicaSet not owned by a Deployment.
    ReplicaSet,
}

impl AppKind {
    /// Every kind, in the precedence order used for sorting.
    pub const ALL: [AppKind; 6] = [
        AppKind::Deployment,
        AppKind::StatefulSet,
        AppKind::DaemonSet,
        AppKind::CronJob,
        AppKind::Job,
        AppKind::ReplicaSet,
    ];

    /// Kubernetes' spelling of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Deployment => "Deployment",
            AppKind::StatefulSet => "StatefulSet",
            AppKind::DaemonSet => "DaemonSet",
            AppKind::CronJob => "CronJob",
            AppKind::Job => "Job",
            AppKind::ReplicaSet => "ReplicaSet",
        }
    }
}

impl fmt::Display for AppKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `kind` that names no app kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown app kind (expected one of Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet)")]
pub struct UnknownAppKind;

impl FromStr for AppKind {
    type Err = UnknownAppKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Bounded before lowercasing so a huge parameter costs nothing.
        if s.len() > 16 {
            return Err(UnknownAppKind);
        }
        let lower = s.to_ascii_lowercase();
        let singular = lower.strip_suffix('s').unwrap_or(&lower);
        AppKind::ALL
            .into_iter()
            .find(|k| k.as_str().to_ascii_lowercase() == singular)
            .ok_or(UnknownAppKind)
    }
}

/// The app a pod belongs to, resolved through ownerReferences.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerApp {
    /// Top-level workload kind.
    pub kind: AppKind,
    /// Workload name.
    pub name: String,
}

/// What a container is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerState {
    /// Not started yet, or backing off (see `stateReason`, e.g. `CrashLoopBackOff`).
    Waiting,
    /// Running.
    Running,
    /// Exited (see `stateReason`, e.g. `Completed`, `Error`, `OOMKilled`).
    Terminated,
    /// No status reported yet.
    Unknown,
}

/// One container (or init container) of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSummary {
    /// Container name (what log requests use).
    pub name: String,
    /// Image reference from the spec.
    pub image: Option<String>,
    /// Readiness as reported by the kubelet.
    pub ready: bool,
    /// Current state.
    pub state: ContainerState,
    /// Reason of the current waiting/terminated state, when Kubernetes gives one.
    pub state_reason: Option<String>,
    /// Restarts of this container.
    pub restart_count: i32,
    /// Why the previous instance ended (e.g. `Error`, `OOMKilled`): the one worth reading
    /// `previous=true` logs for.
    pub last_termination_reason: Option<String>,
}

/// A pod, as lists and the change stream show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSummary {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod UID (changes when a pod of the same name is recreated).
    pub uid: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: Option<String>,
    /// Pod-level status reason (e.g. `Evicted`), when set.
    pub reason: Option<String>,
    /// The pod's `Ready` condition is true.
    pub ready: bool,
    /// Containers (not init containers) reporting ready.
    pub ready_containers: usize,
    /// Containers (not init containers) in the spec.
    pub total_containers: usize,
    /// Sum of restarts over all containers.
    pub restarts: i32,
    /// Node the pod is scheduled on.
    pub node: Option<String>,
    /// Pod IP.
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    /// Containers in spec order.
    pub containers: Vec<ContainerSummary>,
    /// Init containers in spec order.
    pub init_containers: Vec<ContainerSummary>,
    /// The app this pod belongs to; `null` for bare pods and pods of other controllers.
    pub owner_app: Option<OwnerApp>,
    /// Creation time.
    pub created_at: Option<DateTime<Utc>>,
    /// Seconds since creation, computed when the summary was built.
    pub age: i64,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Set while the pod is terminating.
    pub deletion_timestamp: Option<DateTime<Utc>>,
}

/// A top-level workload and how many of its pods are ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSummary {
    /// Workload kind.
    pub kind: AppKind,
    /// Workload name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Desired pods: `spec.replicas` (Deployment, StatefulSet, ReplicaSet),
    /// `status.desiredNumberScheduled` (DaemonSet), `spec.parallelism` while a Job runs (0 once
    /// it finished), and for a CronJob the pods its current Jobs own.
    pub replicas_desired: i32,
    /// Ready pods as reported by the workload's status (for CronJobs: counted from its pods).
    pub replicas_ready: i32,
    /// Visible pods that belong to this app right now.
    pub pods: usize,
    /// Label selector in `kubectl` syntax (`app=web,tier in (a,b)`); `null` for CronJobs.
    pub selector: Option<String>,
    /// Names of the visible pods that belong to this app, sorted.
    pub pod_names: Vec<String>,
    /// Creation time.
    pub created_at: Option<DateTime<Utc>>,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
}

/// One app with its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppDetail {
    /// The app.
    pub app: AppSummary,
    /// Its visible pods, sorted by name (the same set as `app.podNames`).
    pub pods: Vec<PodSummary>,
}

/// A change in a namespace's pod list, as the change stream delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "pod", rename_all = "camelCase")]
pub enum PodEvent {
    /// A pod appeared (or became visible).
    Added(PodSummary),
    /// A visible pod changed.
    Modified(PodSummary),
    /// A pod disappeared (or became hidden); carries its last known state.
    Deleted(PodSummary),
    /// Events may have been missed (this subscriber fell behind, or the watch had to relist):
    /// reload the list and continue with the following events.
    Resync,
}

impl PodEvent {
    /// `added`, `modified`, `deleted` or `resync`: the SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            PodEvent::Added(_) => "added",
            PodEvent::Modified(_) => "modified",
            PodEvent::Deleted(_) => "deleted",
            PodEvent::Resync => "resync",
        }
    }

    /// The pod the event is about (`None` for [`PodEvent::Resync`]).
    pub fn pod(&self) -> Option<&PodSummary> {
        match self {
            PodEvent::Added(p) | PodEvent::Modified(p) | PodEvent::Deleted(p) => Some(p),
            PodEvent::Resync => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_loosely_but_only_real_kinds() {
        assert_eq!("Deployment".parse::<AppKind>(), Ok(AppKind::Deployment));
        assert_eq!("deployments".parse::<AppKind>(), Ok(AppKind::Deployment));
        assert_eq!("cronjob".parse::<AppKind>(), Ok(AppKind::CronJob));
        assert_eq!("STATEFULSET".parse::<AppKind>(), Ok(AppKind::StatefulSet));
        for bad in ["", "Pod", "*", "all", "deploymentss", "x".repeat(1000).as_str()] {
            assert!(bad.parse::<AppKind>().is_err(), "{bad}");
        }
    }

    #[test]
    fn json_is_camel_case() {
        let app = AppSummary {
            kind: AppKind::CronJob,
            name: "nightly".into(),
            namespace: "team-a".into(),
            replicas_desired: 1,
            replicas_ready: 0,
            pods: 1,
            selector: None,
            pod_names: vec!["nightly-1-x".into()],
            created_at: None,
            labels: BTreeMap::new(),
        };
        let json = serde_json::to_value(&app).unwrap();
        assert_eq!(json["kind"], "CronJob");
        assert_eq!(json["replicasDesired"], 1);
        assert_eq!(json["podNames"][0], "nightly-1-x");
        let event = serde_json::to_value(PodEvent::Resync).unwrap();
        assert_eq!(event["type"], "resync");
    }
}
