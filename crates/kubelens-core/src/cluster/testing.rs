//! An in-memory [`Cluster`] for tests of code built on it (HTTP handlers, examples): the
//! same stores, policy checks and change stream, fed by the test instead of an API server.
//!
//! Enabled by the `test-util` feature. Must be created inside a Tokio runtime (the unused
//! client spawns its request buffer there).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::sync::atomic::AtomicUsize;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Resource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::broadcast;
use tower::BoxError;

use super::{ApiRequestStats, Cluster, Inner, NamespaceCaches, POD_EVENT_BUFFER, PodFeed, STORES_PER_NAMESPACE};
use crate::policy::AccessPolicy;

/// The objects a [`FakeCluster`] starts with. Namespaced objects go to the caches of their
/// `metadata.namespace` when it is allowlisted and are dropped otherwise, like the real
/// watches would never list them.
#[derive(Debug, Clone, Default)]
pub struct FakeObjects {
    /// Namespace objects (a namespace without one "does not exist").
    pub namespaces: Vec<Namespace>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Deployments.
    pub deployments: Vec<Deployment>,
    /// ReplicaSets.
    pub replica_sets: Vec<ReplicaSet>,
    /// StatefulSets.
    pub stateful_sets: Vec<StatefulSet>,
    /// DaemonSets.
    pub daemon_sets: Vec<DaemonSet>,
    /// Jobs.
    pub jobs: Vec<Job>,
    /// CronJobs.
    pub cron_jobs: Vec<CronJob>,
}

/// A [`Cluster`] backed by [`FakeObjects`], whose pods the test can change.
#[allow(missing_debug_implementations)]
pub struct FakeCluster {
    cluster: Cluster,
    pod_feeds: BTreeMap<String, PodFeed>,
    requests: Arc<Mutex<Vec<String>>>,
}

fn filled<K>(objects: &[K], ns: Option<&str>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        let in_ns = match ns {
            Some(ns) => object.meta().namespace.as_deref() == Some(ns),
            None => true,
        };
        if in_ns {
            writer.apply_watcher_event(&watcher::Event::InitApply(object.clone()));
        }
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

impl FakeCluster {
    /// A synced cluster holding `objects`, for the namespaces `policy` allowlists.
    pub fn new(policy: &AccessPolicy, objects: FakeObjects) -> Self {
        // The fake API server records every request and answers event lists (empty), so
        // tests can count what a handler asks Kubernetes for; anything else fails.
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let path = req.uri().path().to_owned();
            recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(path.clone());
            async move {
                if path.ends_with("/events") {
                    let body = br#"{"kind":"EventList","apiVersion":"v1","metadata":{},"items":[]}"#.to_vec();
                    return http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(body))
                        .map_err(BoxError::from);
                }
                Err::<http::Response<kube::client::Body>, BoxError>("the fake cluster has no API server".into())
            }
        });
        let client = kube::Client::new(service, "default");
        let mut namespaces = BTreeMap::new();
        let mut pod_feeds = BTreeMap::new();
        for ns in policy.allowed_namespaces() {
            let name = ns.as_str();
            let own: Vec<Namespace> =
                objects.namespaces.iter().filter(|n| n.metadata.name.as_deref() == Some(name)).cloned().collect();
            let (pods, pod_writer) = reflector::store::<Pod>();
            let (pod_changes, _) = broadcast::channel(POD_EVENT_BUFFER);
            let mut feed = PodFeed::new(pod_writer, pods.clone(), pod_changes.clone());
            feed.handle(watcher::Event::Init);
            for pod in objects.pods.iter().filter(|p| p.metadata.namespace.as_deref() == Some(name)) {
                feed.handle(watcher::Event::InitApply(pod.clone()));
            }
            feed.handle(watcher::Event::InitDone);
            let caches = NamespaceCaches {
                name: name.to_owned(),
                namespace: filled(&own, None),
                pods,
                deployments: filled(&objects.deployments, Some(name)),
                replica_sets: filled(&objects.replica_sets, Some(name)),
                stateful_sets: filled(&objects.stateful_sets, Some(name)),
                daemon_sets: filled(&objects.daemon_sets, Some(name)),
                jobs: filled(&objects.jobs, Some(name)),
                cron_jobs: filled(&objects.cron_jobs, Some(name)),
                pod_changes,
                synced: Arc::new(AtomicUsize::new(STORES_PER_NAMESPACE)),
            };
            namespaces.insert(name.to_owned(), caches);
            pod_feeds.insert(name.to_owned(), feed);
        }
        let inner = Inner { client, stats: ApiRequestStats::default(), namespaces, tasks: Vec::new() };
        Self { cluster: Cluster { inner: Arc::new(inner) }, pod_feeds, requests }
    }

    /// The cluster handle (clone it into handler state).
    pub fn cluster(&self) -> Cluster {
        self.cluster.clone()
    }

    /// Paths of the requests sent to the (fake) API server so far, in order.
    pub fn api_requests(&self) -> Vec<String> {
        self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn feed(&mut self, pod: &Pod) -> Option<&mut PodFeed> {
        self.pod_feeds.get_mut(pod.metadata.namespace.as_deref()?)
    }

    /// A pod was created or changed (a watch `ADDED`/`MODIFIED`).
    pub fn apply_pod(&mut self, pod: Pod) {
        if let Some(feed) = self.feed(&pod) {
            feed.handle(watcher::Event::Apply(pod));
        }
    }

    /// A pod was deleted (a watch `DELETED`).
    pub fn delete_pod(&mut self, pod: Pod) {
        if let Some(feed) = self.feed(&pod) {
            feed.handle(watcher::Event::Delete(pod));
        }
    }

    /// The watch of `namespace` relisted (after an API server restart or `410 Gone`) and
    /// found exactly `pods`.
    pub fn relist_pods(&mut self, namespace: &str, pods: Vec<Pod>) {
        if let Some(feed) = self.pod_feeds.get_mut(namespace) {
            feed.handle(watcher::Event::Init);
            for pod in pods {
                feed.handle(watcher::Event::InitApply(pod));
            }
            feed.handle(watcher::Event::InitDone);
        }
    }
}
