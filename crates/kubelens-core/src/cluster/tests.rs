//! Cluster queries over an in-memory cache: app resolution for every kind, filters applied
//! uniformly, the change stream.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetStatus, Deployment, DeploymentSpec, DeploymentStatus, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::summary::tests::{meta, pod};
use super::testing::{FakeCluster, FakeObjects};
use super::*;
use crate::config::{FiltersConfig, NamespacesConfig};

fn ns_object(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn in_ns<T>(mut object: T, ns: &str, set: impl Fn(&mut T) -> &mut ObjectMeta) -> T {
    set(&mut object).namespace = Some(ns.into());
    object
}

fn ready(mut p: Pod) -> Pod {
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() }]),
        ..Default::default()
    });
    p
}

fn labelled(mut p: Pod, labels: &[(&str, &str)]) -> Pod {
    p.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    p
}

/// The testenv seed, in code: team-a with every kind of app, team-b with one pod,
/// secret-ns (not allowlisted) with one pod.
fn seed() -> FakeObjects {
    let web_selector = LabelSelector {
        match_labels: Some([("app".to_string(), "web".to_string())].into()),
        ..Default::default()
    };
    FakeObjects {
        namespaces: vec![
            ns_object("team-a", &[]),
            ns_object("team-b", &[]),
            ns_object("secret-ns", &[]),
        ],
        deployments: vec![Deployment {
            metadata: meta("web", None),
            spec: Some(DeploymentSpec { replicas: Some(3), selector: web_selector, ..Default::default() }),
            status: Some(DeploymentStatus { ready_replicas: Some(3), ..Default::default() }),
        }],
        replica_sets: vec![
            ReplicaSet { metadata: meta("web-7d9f", Some(("apps/v1", "Deployment", "web"))), ..Default::default() },
            ReplicaSet { metadata: meta("legacy", None), ..Default::default() },
        ],
        stateful_sets: vec![StatefulSet { metadata: meta("db", None), ..Default::default() }],
        daemon_sets: vec![DaemonSet {
            metadata: meta("agent", None),
            status: Some(DaemonSetStatus { desired_number_scheduled: 1, number_ready: 1, ..Default::default() }),
            ..Default::default()
        }],
        cron_jobs: vec![CronJob { metadata: meta("nightly", None), ..Default::default() }],
        jobs: vec![
            Job { metadata: meta("nightly-290", Some(("batch/v1", "CronJob", "nightly"))), ..Default::default() },
            Job { metadata: meta("migrate", None), ..Default::default() },
        ],
        pods: vec![
            ready(pod("web-7d9f-a", Some(("apps/v1", "ReplicaSet", "web-7d9f")))),
            ready(pod("web-7d9f-b", Some(("apps/v1", "ReplicaSet", "web-7d9f")))),
            pod("web-7d9f-c", Some(("apps/v1", "ReplicaSet", "web-7d9f"))),
            ready(pod("db-0", Some(("apps/v1", "StatefulSet", "db")))),
            ready(pod("agent-x", Some(("apps/v1", "DaemonSet", "agent")))),
            pod("nightly-290-q", Some(("batch/v1", "Job", "nightly-290"))),
            pod("migrate-z", Some(("batch/v1", "Job", "migrate"))),
            pod("legacy-1", Some(("apps/v1", "ReplicaSet", "legacy"))),
            pod("debug", None),
            labelled(pod("hidden-canary", None), &[("kubelens.io/hide", "true")]),
            in_ns(pod("api-1", None), "team-b", |p| &mut p.metadata),
            in_ns(pod("vault-0", None), "secret-ns", |p| &mut p.metadata),
        ],
    }
}

fn policy(filters: &str) -> AccessPolicy {
    let filters: FiltersConfig = if filters.is_empty() { FiltersConfig::default() } else { serde_yaml_ng::from_str(filters).unwrap() };
    let namespaces = NamespacesConfig { allowed: vec!["team-a".into(), "team-b".into(), "missing-ns".into()] };
    AccessPolicy::new(&namespaces, &filters).unwrap()
}

const HIDE: &str = "exclude_labels:\n  kubelens.io/hide: 'true'\n";

fn names(pods: &[PodSummary]) -> Vec<&str> {
    pods.iter().map(|p| p.name.as_str()).collect()
}

#[tokio::test]
async fn namespaces_are_allowlisted_and_existing() {
    let policy = policy(HIDE);
    let fake = FakeCluster::new(&policy, seed());
    let cluster = fake.cluster();
    let listed: Vec<String> = cluster.namespaces(&policy).unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(listed, ["team-a", "team-b"], "secret-ns is not allowlisted, missing-ns does not exist");
    let missing = policy.namespace("missing-ns").unwrap();
    assert!(matches!(cluster.pods(&policy, &missing), Err(ClusterError::Access(AccessError::NotFound { .. }))));
    let team_b = policy.namespace("team-b").unwrap();
    assert_eq!(names(&cluster.pods(&policy, &team_b).unwrap()), ["api-1"]);
}

#[tokio::test]
async fn every_kind_of_app_resolves() {
    let policy = policy(HIDE);
    let fake = FakeCluster::new(&policy, seed());
    let cluster = fake.cluster();
    let ns = policy.namespace("team-a").unwrap();
    let apps = cluster.apps(&policy, &ns).unwrap();
    let got: Vec<(AppKind, &str, usize)> = apps.iter().map(|a| (a.kind, a.name.as_str(), a.pods)).collect();
    assert_eq!(
        got,
        [
            (AppKind::DaemonSet, "agent", 1),
            (AppKind::StatefulSet, "db", 1),
            (AppKind::ReplicaSet, "legacy", 1),
            (AppKind::Job, "migrate", 1),
            (AppKind::CronJob, "nightly", 1),
            (AppKind::Deployment, "web", 3),
        ],
        "RS web-7d9f and Job nightly-290 are not apps of their own; bare pods are not apps"
    );
    let web = &apps[5];
    assert_eq!((web.replicas_desired, web.replicas_ready), (3, 3));
    assert_eq!(web.selector.as_deref(), Some("app=web"));
    assert_eq!(web.pod_names, ["web-7d9f-a", "web-7d9f-b", "web-7d9f-c"]);
    let agent = &apps[0];
    assert_eq!((agent.replicas_desired, agent.replicas_ready), (1, 1));
    // Pods carry their app.
    let pods = cluster.pods(&policy, &ns).unwrap();
    let owner = |name: &str| pods.iter().find(|p| p.name == name).unwrap().owner_app.clone().map(|o| (o.kind, o.name));
    assert_eq!(owner("web-7d9f-a"), Some((AppKind::Deployment, "web".into())));
    assert_eq!(owner("nightly-290-q"), Some((AppKind::CronJob, "nightly".into())));
    assert_eq!(owner("migrate-z"), Some((AppKind::Job, "migrate".into())));
    assert_eq!(owner("legacy-1"), Some((AppKind::ReplicaSet, "legacy".into())));
    assert_eq!(owner("debug"), None);
    // App detail.
    let detail = cluster.app(&policy, &ns, "web", None).unwrap();
    assert_eq!(names(&detail.pods), ["web-7d9f-a", "web-7d9f-b", "web-7d9f-c"]);
    assert_eq!(detail.pods.iter().filter(|p| p.ready).count(), 2);
    let nightly = cluster.app(&policy, &ns, "nightly", Some(AppKind::CronJob)).unwrap();
    assert_eq!(nightly.app.replicas_desired, 1);
    assert!(matches!(
        cluster.app(&policy, &ns, "nightly", Some(AppKind::Deployment)),
        Err(ClusterError::Access(AccessError::NotFound { what: "app" }))
    ));
    assert!(matches!(cluster.app(&policy, &ns, "web-7d9f", None), Err(ClusterError::Access(AccessError::NotFound { .. }))));
}

#[tokio::test]
async fn two_kinds_with_one_name_need_a_kind() {
    let policy = policy("");
    let mut objects = seed();
    objects.stateful_sets.push(StatefulSet { metadata: meta("web", None), ..Default::default() });
    let fake = FakeCluster::new(&policy, objects);
    let cluster = fake.cluster();
    let ns = policy.namespace("team-a").unwrap();
    match cluster.app(&policy, &ns, "web", None) {
        Err(ClusterError::AmbiguousApp { kinds }) => assert_eq!(kinds, [AppKind::Deployment, AppKind::StatefulSet]),
        other => panic!("{other:?}"),
    }
    assert_eq!(cluster.app(&policy, &ns, "web", Some(AppKind::StatefulSet)).unwrap().app.kind, AppKind::StatefulSet);
    // Hiding one of them removes the ambiguity without revealing it.
    let only_deployments = {
        let filters = "apps:\n  exclude: ['^web$']\n";
        let p = self::policy(filters);
        let fake = FakeCluster::new(&p, {
            let mut o = seed();
            o.stateful_sets.push(StatefulSet { metadata: meta("web", None), ..Default::default() });
            o
        });
        let ns = p.namespace("team-a").unwrap();
        fake.cluster().app(&p, &ns, "web", None).map(|d| d.app.kind)
    };
    assert!(matches!(only_deployments, Err(ClusterError::Access(AccessError::NotFound { .. }))));
}

#[tokio::test]
async fn filters_apply_to_lists_lookups_and_apps_alike() {
    let policy = policy(&format!("{HIDE}pods:\n  exclude: ['^debug$']\napps:\n  exclude: ['^db$']\n"));
    let fake = FakeCluster::new(&policy, seed());
    let cluster = fake.cluster();
    let ns = policy.namespace("team-a").unwrap();
    let pods = cluster.pods(&policy, &ns).unwrap();
    for hidden in ["hidden-canary", "debug", "db-0"] {
        assert!(!names(&pods).contains(&hidden), "{hidden} listed");
        assert!(
            matches!(cluster.pod(&policy, &ns, hidden), Err(ClusterError::Access(AccessError::NotFound { what: "pod" }))),
            "{hidden} found by name"
        );
        assert!(cluster.pod_object(&policy, &ns, hidden).is_err());
    }
    assert!(cluster.pod(&policy, &ns, "web-7d9f-a").is_ok());
    assert!(!cluster.apps(&policy, &ns).unwrap().iter().any(|a| a.name == "db"));
    assert!(cluster.app(&policy, &ns, "db", None).is_err());
    // Hidden and missing look the same.
    let hidden = cluster.pod(&policy, &ns, "hidden-canary").unwrap_err().to_string();
    let missing = cluster.pod(&policy, &ns, "no-such-pod").unwrap_err().to_string();
    assert_eq!(hidden, missing);
    // Bad names are 400s, before any lookup.
    assert!(matches!(cluster.pod(&policy, &ns, "../x"), Err(ClusterError::Access(AccessError::BadName { .. }))));
}

#[tokio::test]
async fn app_labels_hide_the_app_and_its_pods() {
    let policy = policy(HIDE);
    let mut objects = seed();
    objects.stateful_sets[0].metadata.labels = Some([("kubelens.io/hide".to_string(), "true".to_string())].into());
    let fake = FakeCluster::new(&policy, objects);
    let cluster = fake.cluster();
    let ns = policy.namespace("team-a").unwrap();
    assert!(cluster.app(&policy, &ns, "db", None).is_err());
    assert!(cluster.pod(&policy, &ns, "db-0").is_err());
}

/// Issue 14.4: an owning workload missing from the cache (a Deployment deleted with
/// `--cascade=orphan`, a ReplicaSet not listed yet) must hide its pods, not reveal them with
/// empty labels under the ReplicaSet's name.
#[tokio::test]
async fn pods_of_an_uncached_owner_are_hidden() {
    let policy = policy(HIDE);
    let mut objects = seed();
    // The Deployment `web` (whose labels could hide it) is gone from the cache; its ReplicaSet still
    // names it as controller.
    objects.deployments.clear();
    // A pod whose ReplicaSet is not cached at all.
    objects.pods.push(pod("orphan-rs-x", Some(("apps/v1", "ReplicaSet", "not-cached"))));
    // A pod whose Job is not cached.
    objects.pods.push(pod("lost-job-x", Some(("batch/v1", "Job", "not-cached-job"))));
    let fake = FakeCluster::new(&policy, objects);
    let cluster = fake.cluster();
    let ns = policy.namespace("team-a").unwrap();
    for hidden in ["web-7d9f-a", "orphan-rs-x", "lost-job-x"] {
        assert!(
            matches!(cluster.pod(&policy, &ns, hidden), Err(ClusterError::Access(AccessError::NotFound { .. }))),
            "{hidden} must be hidden while its owner is unknown"
        );
    }
    let listed = cluster.pods(&policy, &ns).unwrap();
    for hidden in ["web-7d9f-a", "web-7d9f-b", "orphan-rs-x", "lost-job-x"] {
        assert!(!names(&listed).contains(&hidden), "{hidden} listed: {:?}", names(&listed));
    }
    // Pods whose owners are cached are unaffected.
    assert!(cluster.pod(&policy, &ns, "db-0").is_ok());
    assert!(cluster.pod(&policy, &ns, "legacy-1").is_ok());
}

#[tokio::test]
async fn hidden_namespaces_are_not_found() {
    let policy = policy(HIDE);
    let mut objects = seed();
    objects.namespaces[1] = ns_object("team-b", &[("kubelens.io/hide", "true")]);
    let fake = FakeCluster::new(&policy, objects);
    let cluster = fake.cluster();
    let listed: Vec<String> = cluster.namespaces(&policy).unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(listed, ["team-a"]);
    let team_b = policy.namespace("team-b").unwrap();
    assert!(cluster.pods(&policy, &team_b).is_err());
    assert!(cluster.namespace(&policy, &team_b).is_err());
}

async fn next(stream: &mut (impl Stream<Item = PodEvent> + Unpin)) -> PodEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("an event").expect("stream open")
}

#[tokio::test]
async fn change_stream_follows_visibility() {
    let policy = policy(HIDE);
    let mut fake = FakeCluster::new(&policy, seed());
    let cluster = fake.cluster();
    let ns = policy.namespace("team-a").unwrap();
    let mut events = Box::pin(cluster.pod_events(&policy, &ns).unwrap());

    fake.apply_pod(pod("new-pod", None));
    let PodEvent::Added(p) = next(&mut events).await else { panic!("added") };
    assert_eq!(p.name, "new-pod");
    assert!(cluster.pods(&policy, &ns).unwrap().iter().any(|p| p.name == "new-pod"), "in the list once announced");

    fake.apply_pod(ready(pod("new-pod", None)));
    let PodEvent::Modified(p) = next(&mut events).await else { panic!("modified") };
    assert!(p.ready);

    // Existing pods are modified, not added.
    fake.apply_pod(pod("web-7d9f-c", Some(("apps/v1", "ReplicaSet", "web-7d9f"))));
    let PodEvent::Modified(p) = next(&mut events).await else { panic!("modified") };
    assert_eq!(p.owner_app.unwrap().name, "web");

    // Hidden pods produce nothing; becoming hidden is a deletion for this viewer.
    fake.apply_pod(labelled(pod("hidden-canary", None), &[("kubelens.io/hide", "true"), ("v", "2")]));
    fake.apply_pod(labelled(pod("new-pod", None), &[("kubelens.io/hide", "true")]));
    let PodEvent::Deleted(p) = next(&mut events).await else { panic!("deleted") };
    assert_eq!(p.name, "new-pod");
    fake.apply_pod(pod("new-pod", None));
    assert!(matches!(next(&mut events).await, PodEvent::Added(_)));

    fake.delete_pod(pod("new-pod", None));
    let PodEvent::Deleted(p) = next(&mut events).await else { panic!("deleted") };
    assert_eq!(p.name, "new-pod");
    fake.delete_pod(labelled(pod("hidden-canary", None), &[("kubelens.io/hide", "true")]));

    // Other namespaces do not leak in.
    fake.apply_pod(in_ns(pod("api-2", None), "team-b", |p| &mut p.metadata));
    fake.apply_pod(pod("last", None));
    let PodEvent::Added(p) = next(&mut events).await else { panic!("added") };
    assert_eq!(p.name, "last", "hidden-canary's deletion and team-b's pod were not delivered");
}

#[tokio::test]
async fn relist_after_outage_becomes_events() {
    let policy = policy(HIDE);
    let mut fake = FakeCluster::new(&policy, seed());
    let cluster = fake.cluster();
    let ns = policy.namespace("team-a").unwrap();
    let mut events = Box::pin(cluster.pod_events(&policy, &ns).unwrap());
    // While the watch was down: debug was deleted, web-7d9f-c changed, fresh-1 appeared.
    let mut after: Vec<Pod> = seed()
        .pods
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some("team-a") && p.metadata.name.as_deref() != Some("debug"))
        .collect();
    for p in &mut after {
        if p.metadata.name.as_deref() == Some("web-7d9f-c") {
            p.metadata.resource_version = Some("2".into());
        }
    }
    after.push(pod("fresh-1", None));
    fake.relist_pods("team-a", after);
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = next(&mut events).await;
        got.push((e.name(), e.pod().unwrap().name.clone()));
    }
    got.sort();
    assert_eq!(
        got,
        [("added", "fresh-1".to_string()), ("deleted", "debug".to_string()), ("modified", "web-7d9f-c".to_string())]
    );
    assert!(cluster.pod(&policy, &ns, "debug").is_err());
    assert!(cluster.pod(&policy, &ns, "fresh-1").is_ok());
}

#[tokio::test]
async fn a_lagging_subscriber_gets_resync_not_silence() {
    let policy = policy("");
    let mut fake = FakeCluster::new(&policy, seed());
    let cluster = fake.cluster();
    let ns = policy.namespace("team-a").unwrap();
    let mut events = Box::pin(cluster.pod_events(&policy, &ns).unwrap());
    for i in 0..(POD_EVENT_BUFFER + 10) {
        let mut p = pod("churn", None);
        p.metadata.resource_version = Some(i.to_string());
        fake.apply_pod(p);
    }
    assert_eq!(next(&mut events).await, PodEvent::Resync);
    // After the resync the subscriber knows `churn` exists: the next change is a modification.
    fake.apply_pod(pod("churn", None));
    let mut last = next(&mut events).await;
    while !matches!(&last, PodEvent::Modified(p) if p.metadata_is("churn")) {
        last = next(&mut events).await;
    }
}

trait NameIs {
    fn metadata_is(&self, name: &str) -> bool;
}

impl NameIs for PodSummary {
    fn metadata_is(&self, name: &str) -> bool {
        self.name == name
    }
}

#[tokio::test]
async fn unsynced_caches_answer_not_synced() {
    let policy = policy("");
    let fake = FakeCluster::new(&policy, seed());
    let cluster = fake.cluster();
    cluster.inner.namespaces["team-a"].synced.store(3, Ordering::Release);
    let ns = policy.namespace("team-a").unwrap();
    assert!(matches!(cluster.pods(&policy, &ns), Err(ClusterError::NotSynced)));
    assert!(!cluster.is_synced());
}

#[test]
fn stripping_keeps_what_views_need() {
    let mut p = pod("x", None);
    p.metadata.managed_fields = Some(vec![Default::default()]);
    p.metadata.annotations = Some(BTreeMap::from([
        ("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{...}".to_string()),
        ("keep".to_string(), "me".to_string()),
    ]));
    strip_pod(&mut p);
    assert!(p.metadata.managed_fields.is_none());
    assert_eq!(p.metadata.annotations.unwrap().keys().collect::<Vec<_>>(), ["keep"]);
    assert!(p.spec.is_some(), "pod specs stay: the details view reads them");
}
