//! Pure conversions from Kubernetes objects to our API types, and app resolution through
//! ownerReferences. No I/O: everything here is table-tested with objects built in code.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time};

use crate::api::{
    AppKind, AppSummary, ContainerState, ContainerSummary, NamespaceSummary, OwnerApp, PodSummary,
};

/// Converts a Kubernetes timestamp.
pub(crate) fn time(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.0.as_second(), u32::try_from(t.0.subsec_nanosecond()).unwrap_or(0))
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// The controller ownerReference, if any.
pub(crate) fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.as_deref()?.iter().find(|o| o.controller == Some(true))
}

fn is_ref(owner: &OwnerReference, group: &str, kind: &str) -> bool {
    owner.kind == kind && owner.api_version.split_once('/').map(|(g, _)| g) == Some(group)
}

/// Looks up intermediate owners (ReplicaSets, Jobs) in one namespace's caches.
pub(crate) trait OwnerLookup {
    /// A ReplicaSet by name.
    fn replica_set(&self, name: &str) -> Option<Arc<ReplicaSet>>;
    /// A Job by name.
    fn job(&self, name: &str) -> Option<Arc<Job>>;
}

/// Resolves the app a pod belongs to.
///
/// - Pod → ReplicaSet → Deployment; a ReplicaSet with no Deployment controller is its own app.
/// - Pod → Job → CronJob; a Job with no CronJob controller is its own app.
/// - Pod → StatefulSet, Pod → DaemonSet.
/// - Anything else (bare pods, other controllers) has no app.
///
/// Only *controller* references count (`controller: true`), and the API group must match
/// (`apps/…`, `batch/…`), so a custom resource that happens to be called `ReplicaSet` is not
/// mistaken for one. An intermediate owner missing from the cache (e.g. during sync) makes
/// the intermediate itself the app (and, not being cached, it hides its pods: visibility
/// fails closed for owners the cache does not hold).
pub(crate) fn resolve_owner(pod: &Pod, lookup: &impl OwnerLookup) -> Option<OwnerApp> {
    let owner = controller_of(&pod.metadata)?;
    let app = |kind, name: &str| Some(OwnerApp { kind, name: name.to_owned() });
    if is_ref(owner, "apps", "ReplicaSet") {
        let parent = lookup.replica_set(&owner.name);
        match parent.as_deref().and_then(|rs| controller_of(&rs.metadata)) {
            Some(top) if is_ref(top, "apps", "Deployment") => app(AppKind::Deployment, &top.name),
            _ => app(AppKind::ReplicaSet, &owner.name),
        }
    } else if is_ref(owner, "batch", "Job") {
        let parent = lookup.job(&owner.name);
        match parent.as_deref().and_then(|job| controller_of(&job.metadata)) {
            Some(top) if is_ref(top, "batch", "CronJob") => app(AppKind::CronJob, &top.name),
            _ => app(AppKind::Job, &owner.name),
        }
    } else if is_ref(owner, "apps", "StatefulSet") {
        app(AppKind::StatefulSet, &owner.name)
    } else if is_ref(owner, "apps", "DaemonSet") {
        app(AppKind::DaemonSet, &owner.name)
    } else {
        None
    }
}

/// True for a ReplicaSet that is an app on its own (no Deployment controls it).
pub(crate) fn replica_set_is_app(rs: &ReplicaSet) -> bool {
    !controller_of(&rs.metadata).is_some_and(|o| is_ref(o, "apps", "Deployment"))
}

/// True for a Job that is an app on its own (no CronJob controls it).
pub(crate) fn job_is_app(job: &Job) -> bool {
    !controller_of(&job.metadata).is_some_and(|o| is_ref(o, "batch", "CronJob"))
}

/// The namespace as the API shows it.
pub(crate) fn namespace_summary(ns: &Namespace) -> NamespaceSummary {
    NamespaceSummary {
        name: ns.metadata.name.clone().unwrap_or_default(),
        phase: ns.status.as_ref().and_then(|s| s.phase.clone()),
        created_at: ns.metadata.creation_timestamp.as_ref().and_then(time),
        labels: labels(&ns.metadata),
    }
}

fn container_summary(container: &Container, status: Option<&ContainerStatus>) -> ContainerSummary {
    let (state, state_reason) = match status.and_then(|s| s.state.as_ref()) {
        Some(s) if s.running.is_some() => (ContainerState::Running, None),
        Some(s) if s.terminated.is_some() => {
            (ContainerState::Terminated, s.terminated.as_ref().and_then(|t| t.reason.clone()))
        }
        Some(s) if s.waiting.is_some() => (ContainerState::Waiting, s.waiting.as_ref().and_then(|w| w.reason.clone())),
        _ => (ContainerState::Unknown, None),
    };
    ContainerSummary {
        name: container.name.clone(),
        image: container.image.clone(),
        ready: status.is_some_and(|s| s.ready),
        state,
        state_reason,
        restart_count: status.map_or(0, |s| s.restart_count),
        last_termination_reason: status
            .and_then(|s| s.last_state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.reason.clone()),
    }
}

fn containers(specs: &[Container], statuses: Option<&Vec<ContainerStatus>>) -> Vec<ContainerSummary> {
    specs
        .iter()
        .map(|c| {
            let status = statuses.and_then(|all| all.iter().find(|s| s.name == c.name));
            container_summary(c, status)
        })
        .collect()
}

/// The pod as the API shows it. `now` makes `age` deterministic in tests.
pub(crate) fn pod_summary(pod: &Pod, owner_app: Option<OwnerApp>, now: DateTime<Utc>) -> PodSummary {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let containers = containers(
        spec.map_or(&[][..], |s| &s.containers[..]),
        status.and_then(|s| s.container_statuses.as_ref()),
    );
    let init_containers = containers_opt(
        spec.and_then(|s| s.init_containers.as_deref()),
        status.and_then(|s| s.init_container_statuses.as_ref()),
    );
    let created_at = pod.metadata.creation_timestamp.as_ref().and_then(time);
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    PodSummary {
        name: pod.metadata.name.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()),
        reason: status.and_then(|s| s.reason.clone()),
        ready,
        ready_containers: containers.iter().filter(|c| c.ready).count(),
        total_containers: containers.len(),
        restarts: containers.iter().chain(&init_containers).map(|c| c.restart_count).sum(),
        node: spec.and_then(|s| s.node_name.clone()),
        pod_ip: status.and_then(|s| s.pod_ip.clone()),
        containers,
        init_containers,
        owner_app,
        created_at,
        age: created_at.map_or(0, |t| (now - t).num_seconds().max(0)),
        labels: labels(&pod.metadata),
        deletion_timestamp: pod.metadata.deletion_timestamp.as_ref().and_then(time),
    }
}

fn containers_opt(specs: Option<&[Container]>, statuses: Option<&Vec<ContainerStatus>>) -> Vec<ContainerSummary> {
    specs.map(|s| containers(s, statuses)).unwrap_or_default()
}

/// `kubectl`-style rendering of a label selector (`a=b,c in (x,y),!d`).
pub(crate) fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.clone().unwrap_or_default().join(",");
        parts.push(match expr.operator.as_str() {
            "In" => format!("{} in ({values})", expr.key),
            "NotIn" => format!("{} notin ({values})", expr.key),
            "Exists" => expr.key.clone(),
            "DoesNotExist" => format!("!{}", expr.key),
            other => format!("{} {other} ({values})", expr.key),
        });
    }
    parts.join(",")
}

/// A workload that can be an app, with what its summary needs.
pub(crate) struct Workload<'a> {
    pub kind: AppKind,
    pub meta: &'a ObjectMeta,
    pub replicas_desired: i32,
    /// `None`: count ready pods instead (CronJobs have no aggregate status).
    pub replicas_ready: Option<i32>,
    pub selector: Option<&'a LabelSelector>,
}

impl<'a> Workload<'a> {
    pub fn deployment(d: &'a Deployment) -> Self {
        let spec = d.spec.as_ref();
        Self {
            kind: AppKind::Deployment,
            meta: &d.metadata,
            replicas_desired: spec.and_then(|s| s.replicas).unwrap_or(1),
            replicas_ready: Some(d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)),
            selector: spec.map(|s| &s.selector),
        }
    }
    pub fn stateful_set(s: &'a StatefulSet) -> Self {
        let spec = s.spec.as_ref();
        Self {
            kind: AppKind::StatefulSet,
            meta: &s.metadata,
            replicas_desired: spec.and_then(|s| s.replicas).unwrap_or(1),
            replicas_ready: Some(s.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)),
            selector: spec.map(|s| &s.selector),
        }
    }
    pub fn daemon_set(d: &'a DaemonSet) -> Self {
        let status = d.status.as_ref();
        Self {
            kind: AppKind::DaemonSet,
            meta: &d.metadata,
            replicas_desired: status.map_or(0, |s| s.desired_number_scheduled),
            replicas_ready: Some(status.map_or(0, |s| s.number_ready)),
            selector: d.spec.as_ref().map(|s| &s.selector),
        }
    }
    pub fn replica_set(r: &'a ReplicaSet) -> Self {
        let spec = r.spec.as_ref();
        Self {
            kind: AppKind::ReplicaSet,
            meta: &r.metadata,
            replicas_desired: spec.and_then(|s| s.replicas).unwrap_or(1),
            replicas_ready: Some(r.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)),
            selector: spec.map(|s| &s.selector),
        }
    }
    pub fn job(j: &'a Job) -> Self {
        let spec = j.spec.as_ref();
        let status = j.status.as_ref();
        let finished = status.is_some_and(|s| s.completion_time.is_some())
            || status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"));
        Self {
            kind: AppKind::Job,
            meta: &j.metadata,
            replicas_desired: if finished { 0 } else { spec.and_then(|s| s.parallelism).unwrap_or(1) },
            replicas_ready: Some(status.and_then(|s| s.ready).unwrap_or(0)),
            selector: spec.and_then(|s| s.selector.as_ref()),
        }
    }
    pub fn cron_job(c: &'a CronJob) -> Self {
        Self { kind: AppKind::CronJob, meta: &c.metadata, replicas_desired: 0, replicas_ready: None, selector: None }
    }

    pub fn name(&self) -> &str {
        self.meta.name.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        labels(self.meta)
    }

    /// The summary, given this app's visible pods (sorted by name).
    pub fn summary(&self, pods: &[PodSummary]) -> AppSummary {
        let pod_ready = i32::try_from(pods.iter().filter(|p| p.ready).count()).unwrap_or(i32::MAX);
        let live = |p: &&PodSummary| !matches!(p.phase.as_deref(), Some("Succeeded" | "Failed"));
        let replicas_desired = match self.kind {
            AppKind::CronJob => i32::try_from(pods.iter().filter(live).count()).unwrap_or(i32::MAX),
            _ => self.replicas_desired,
        };
        AppSummary {
            kind: self.kind,
            name: self.name().to_owned(),
            namespace: self.meta.namespace.clone().unwrap_or_default(),
            replicas_desired,
            replicas_ready: self.replicas_ready.unwrap_or(pod_ready),
            pods: pods.len(),
            selector: self.selector.map(selector_string),
            pod_names: pods.iter().map(|p| p.name.clone()).collect(),
            created_at: self.meta.creation_timestamp.as_ref().and_then(time),
            labels: labels(self.meta),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, PodCondition, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::HashMap;

    pub(crate) fn meta(name: &str, owner: Option<(&str, &str, &str)>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("team-a".into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("1".into()),
            owner_references: owner.map(|(api_version, kind, owner_name)| {
                vec![OwnerReference {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    name: owner_name.into(),
                    uid: format!("uid-{owner_name}"),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    pub(crate) fn pod(name: &str, owner: Option<(&str, &str, &str)>) -> Pod {
        Pod {
            metadata: meta(name, owner),
            spec: Some(PodSpec {
                containers: vec![Container { name: "app".into(), image: Some("img:1".into()), ..Container::default() }],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    #[derive(Default)]
    pub(crate) struct Owners {
        pub rs: HashMap<String, Arc<ReplicaSet>>,
        pub jobs: HashMap<String, Arc<Job>>,
    }

    impl OwnerLookup for Owners {
        fn replica_set(&self, name: &str) -> Option<Arc<ReplicaSet>> {
            self.rs.get(name).cloned()
        }
        fn job(&self, name: &str) -> Option<Arc<Job>> {
            self.jobs.get(name).cloned()
        }
    }

    fn owners() -> Owners {
        let mut o = Owners::default();
        for (name, owner) in [
            ("web-7d9f", Some(("apps/v1", "Deployment", "web"))),
            ("bare-rs", None),
            ("weird-rs", Some(("example.com/v1", "Deployment", "web"))),
        ] {
            o.rs.insert(name.into(), Arc::new(ReplicaSet { metadata: meta(name, owner), ..ReplicaSet::default() }));
        }
        for (name, owner) in [("nightly-290", Some(("batch/v1", "CronJob", "nightly"))), ("migrate", None)] {
            o.jobs.insert(name.into(), Arc::new(Job { metadata: meta(name, owner), ..Job::default() }));
        }
        o
    }

    type OwnerCase<'a> = (Option<(&'a str, &'a str, &'a str)>, Option<(AppKind, &'a str)>);

    #[test]
    fn owner_resolution_table() {
        let o = owners();
        let cases: &[OwnerCase] = &[
            (Some(("apps/v1", "ReplicaSet", "web-7d9f")), Some((AppKind::Deployment, "web"))),
            (Some(("apps/v1", "ReplicaSet", "bare-rs")), Some((AppKind::ReplicaSet, "bare-rs"))),
            // RS owned by a non-apps "Deployment": the RS is the app.
            (Some(("apps/v1", "ReplicaSet", "weird-rs")), Some((AppKind::ReplicaSet, "weird-rs"))),
            // RS not (yet) in the cache: the RS stands in.
            (Some(("apps/v1", "ReplicaSet", "unknown-rs")), Some((AppKind::ReplicaSet, "unknown-rs"))),
            (Some(("batch/v1", "Job", "nightly-290")), Some((AppKind::CronJob, "nightly"))),
            (Some(("batch/v1", "Job", "migrate")), Some((AppKind::Job, "migrate"))),
            (Some(("apps/v1", "StatefulSet", "db")), Some((AppKind::StatefulSet, "db"))),
            (Some(("apps/v1", "DaemonSet", "agent")), Some((AppKind::DaemonSet, "agent"))),
            (Some(("example.com/v1", "ReplicaSet", "x")), None),
            (Some(("v1", "Node", "n1")), None),
            (None, None),
        ];
        for (owner, expected) in cases {
            let got = resolve_owner(&pod("p", *owner), &o);
            let expected = expected.map(|(kind, name)| OwnerApp { kind, name: name.into() });
            assert_eq!(got, expected, "{owner:?}");
        }
        // Non-controller references are ignored.
        let mut p = pod("p", Some(("apps/v1", "StatefulSet", "db")));
        p.metadata.owner_references.as_mut().unwrap()[0].controller = Some(false);
        assert_eq!(resolve_owner(&p, &o), None);
    }

    #[test]
    fn which_intermediates_are_apps() {
        let o = owners();
        assert!(!replica_set_is_app(&o.rs["web-7d9f"]));
        assert!(replica_set_is_app(&o.rs["bare-rs"]));
        assert!(replica_set_is_app(&o.rs["weird-rs"]));
        assert!(!job_is_app(&o.jobs["nightly-290"]));
        assert!(job_is_app(&o.jobs["migrate"]));
    }

    #[test]
    fn pod_summary_fields() {
        let now = DateTime::parse_from_rfc3339("2026-01-30T10:01:00Z").unwrap().with_timezone(&Utc);
        let created: k8s_openapi::jiff::Timestamp = "2026-01-30T10:00:00Z".parse().unwrap();
        let mut p = pod("multi", None);
        p.metadata.creation_timestamp = Some(Time(created));
        p.metadata.labels = Some([("app".to_string(), "multi".to_string())].into());
        let spec = p.spec.as_mut().unwrap();
        spec.node_name = Some("kwok-node-0".into());
        spec.containers.push(Container { name: "sidecar".into(), ..Container::default() });
        spec.init_containers = Some(vec![Container { name: "init".into(), ..Container::default() }]);
        let running = k8s_openapi::api::core::v1::ContainerState { running: Some(ContainerStateRunning::default()), ..Default::default() };
        let waiting = k8s_openapi::api::core::v1::ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some("CrashLoopBackOff".into()), ..Default::default() }),
            ..Default::default()
        };
        let oom = k8s_openapi::api::core::v1::ContainerState {
            terminated: Some(ContainerStateTerminated { reason: Some("OOMKilled".into()), ..Default::default() }),
            ..Default::default()
        };
        let completed = k8s_openapi::api::core::v1::ContainerState {
            terminated: Some(ContainerStateTerminated { reason: Some("Completed".into()), ..Default::default() }),
            ..Default::default()
        };
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.0.0.7".into()),
            conditions: Some(vec![PodCondition { type_: "Ready".into(), status: "False".into(), ..Default::default() }]),
            container_statuses: Some(vec![
                ContainerStatus { name: "app".into(), ready: true, restart_count: 0, state: Some(running), ..Default::default() },
                ContainerStatus {
                    name: "sidecar".into(),
                    ready: false,
                    restart_count: 3,
                    state: Some(waiting),
                    last_state: Some(oom),
                    ..Default::default()
                },
            ]),
            init_container_statuses: Some(vec![ContainerStatus {
                name: "init".into(),
                ready: false,
                restart_count: 1,
                state: Some(completed),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let s = pod_summary(&p, None, now);
        assert_eq!(s.name, "multi");
        assert_eq!(s.uid, "uid-multi");
        assert_eq!(s.age, 60);
        assert!(!s.ready);
        assert_eq!((s.ready_containers, s.total_containers), (1, 2));
        assert_eq!(s.restarts, 4);
        assert_eq!(s.node.as_deref(), Some("kwok-node-0"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(s.containers[0].state, ContainerState::Running);
        assert_eq!(s.containers[1].state, ContainerState::Waiting);
        assert_eq!(s.containers[1].state_reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(s.containers[1].last_termination_reason.as_deref(), Some("OOMKilled"));
        assert_eq!(s.init_containers[0].state, ContainerState::Terminated);
        assert_eq!(s.init_containers[0].state_reason.as_deref(), Some("Completed"));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["podIP"], "10.0.0.7");
        assert_eq!(json["readyContainers"], 1);
        assert_eq!(json["initContainers"][0]["name"], "init");
        assert!(json.get("spec").is_none() && json.get("env").is_none());
    }

    #[test]
    fn a_pod_without_status_is_unknown_not_an_error() {
        let s = pod_summary(&pod("new", None), None, Utc::now());
        assert_eq!(s.containers[0].state, ContainerState::Unknown);
        assert_eq!(s.phase, None);
        assert_eq!(s.age, 0);
    }

    #[test]
    fn selectors_render_like_kubectl() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement { key: "tier".into(), operator: "In".into(), values: Some(vec!["a".into(), "b".into()]) },
                LabelSelectorRequirement { key: "canary".into(), operator: "DoesNotExist".into(), values: None },
                LabelSelectorRequirement { key: "x".into(), operator: "Exists".into(), values: None },
                LabelSelectorRequirement { key: "y".into(), operator: "NotIn".into(), values: Some(vec!["z".into()]) },
            ]),
        };
        assert_eq!(selector_string(&sel), "app=web,tier in (a,b),!canary,x,y notin (z)");
    }
}
