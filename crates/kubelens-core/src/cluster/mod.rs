//! Kubernetes discovery: one [`Cluster`] handle owning the API client and watch-fed caches of
//! the allowlisted namespaces.
//!
//! Lists and lookups are answered from memory: a reflector per (namespace, kind) keeps a
//! store of Pods, Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs and CronJobs
//! current, plus one for the Namespace object itself (watched with the field selector
//! `metadata.name=<ns>`, so nothing outside the allowlist is ever listed). Once synced, a
//! list request costs zero API requests ([`Cluster::api_requests`] counts them).
//!
//! Watches use kube-runtime's `watcher` with the default exponential backoff; after an API
//! server restart or a `410 Gone` the watcher relists and the store is swapped atomically,
//! and the pod change stream turns the difference into added/modified/deleted events. Stores
//! keep serving their last state while a watch is down.
//!
//! Every query takes the [`AccessPolicy`] and an [`AllowedNamespace`] (from
//! [`AccessPolicy::namespace`]): hidden objects are absent from lists and `NotFound` on
//! lookup, exactly like missing ones.

mod client;
mod summary;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::Utc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use client::{ApiRequestCounts, ApiRequestLayer, ApiRequestService, ApiRequestStats, RequestTimeout, build_client};

use crate::api::{AppDetail, AppKind, AppSummary, NamespaceSummary, OwnerApp, PodEvent, PodSummary};
use crate::config::KubernetesConfig;
use crate::kubeclient::{ClientConfigError, ClientConfigSource, client_config};
use crate::policy::{AccessError, AccessPolicy, AllowedNamespace};
use crate::readiness::{Readiness, ReadinessCheck};
use crate::storage::PodMeta;
use summary::{OwnerLookup, Workload};

/// Pod changes buffered per namespace for change-stream subscribers. A subscriber more than
/// this many events behind loses the oldest ones and receives [`PodEvent::Resync`] instead
/// (it reloads the list); the watch itself never waits for a slow subscriber.
pub const POD_EVENT_BUFFER: usize = 1024;

/// Name of the readiness check the caches report to.
pub const READINESS_CHECK: &str = "kubernetes";

/// Discovery failures. `Access` carries the policy's 400/404 answers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Bad name (400) or not found / not visible (404).
    #[error(transparent)]
    Access(#[from] AccessError),
    /// Several visible apps share the name; the caller must say which kind (400).
    #[error("several apps are called that; add ?kind= with one of: {}", .kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "))]
    AmbiguousApp {
        /// The kinds that share the name.
        kinds: Vec<AppKind>,
    },
    /// The caches have not received their initial list yet (503).
    #[error("Kubernetes caches are still syncing")]
    NotSynced,
    /// No usable client configuration.
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// The client could not be built.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// What a change-stream subscriber receives from the pod watch of one namespace.
#[derive(Debug, Clone)]
enum PodChange {
    Applied(Arc<Pod>),
    Deleted(Arc<Pod>),
    /// The watch relisted; differences were already sent as `Applied`/`Deleted`.
    Relisted,
}

/// The stores of one allowlisted namespace.
#[derive(Debug, Clone)]
struct NamespaceCaches {
    name: String,
    namespace: Store<Namespace>,
    pods: Store<Pod>,
    deployments: Store<Deployment>,
    replica_sets: Store<ReplicaSet>,
    stateful_sets: Store<StatefulSet>,
    daemon_sets: Store<DaemonSet>,
    jobs: Store<Job>,
    cron_jobs: Store<CronJob>,
    pod_changes: broadcast::Sender<PodChange>,
    /// Stores of this namespace that received their first complete list.
    synced: Arc<AtomicUsize>,
}

/// Stores per namespace: Namespace + Pod + six workload kinds.
const STORES_PER_NAMESPACE: usize = 8;

impl NamespaceCaches {
    fn key<K: Resource<DynamicType = ()>>(&self, name: &str) -> ObjectRef<K> {
        ObjectRef::new(name).within(&self.name)
    }

    fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) >= STORES_PER_NAMESPACE
    }

    /// The labels of a workload, for app visibility; `None` when the workload is not cached.
    fn app_labels(&self, app: &OwnerApp) -> Option<BTreeMap<String, String>> {
        let name = app.name.as_str();
        let labels = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| meta.labels.clone().unwrap_or_default();
        match app.kind {
            AppKind::Deployment => self.deployments.get(&self.key(name)).map(|o| labels(&o.metadata)),
            AppKind::StatefulSet => self.stateful_sets.get(&self.key(name)).map(|o| labels(&o.metadata)),
            AppKind::DaemonSet => self.daemon_sets.get(&self.key(name)).map(|o| labels(&o.metadata)),
            AppKind::CronJob => self.cron_jobs.get(&self.key(name)).map(|o| labels(&o.metadata)),
            AppKind::Job => self.jobs.get(&self.key(name)).map(|o| labels(&o.metadata)),
            AppKind::ReplicaSet => self.replica_sets.get(&self.key(name)).map(|o| labels(&o.metadata)),
        }
    }

    /// Whether the app that owns a pod is visible. Fails closed: an owning workload missing
    /// from the cache (deleted with `--cascade=orphan` before the garbage collector removed
    /// the pod's or ReplicaSet's ownerReference, or not listed yet) hides its pods, because
    /// its labels — which may hide it — cannot be read. Once the ownerReference is gone, the
    /// ReplicaSet (or the pod) is judged as the app (or bare pod) it has become.
    fn owner_visible(&self, policy: &AccessPolicy, app: &OwnerApp) -> bool {
        self.app_labels(app).is_some_and(|labels| policy.app_visible(&app.name, &labels))
    }

    /// Summary of a pod if the policy lets the caller see it.
    fn visible_pod(&self, policy: &AccessPolicy, pod: &Pod, now: chrono::DateTime<Utc>) -> Option<PodSummary> {
        self.visible_pod_memo(policy, pod, now, &mut HashMap::new())
    }

    /// [`NamespaceCaches::visible_pod`] with the visibility of each owning app computed once
    /// per list (thousands of pods share a handful of apps).
    fn visible_pod_memo(
        &self,
        policy: &AccessPolicy,
        pod: &Pod,
        now: chrono::DateTime<Utc>,
        apps: &mut HashMap<OwnerApp, bool>,
    ) -> Option<PodSummary> {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        let owner = summary::resolve_owner(pod, self);
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
        // The pod's own checks; its app is checked below (through the memo).
        if !policy.pod_visible(name, labels, None) {
            return None;
        }
        if let Some(app) = &owner {
            let app_visible = match apps.get(app) {
                Some(visible) => *visible,
                None => {
                    let visible = self.owner_visible(policy, app);
                    apps.insert(app.clone(), visible);
                    visible
                }
            };
            if !app_visible {
                return None;
            }
        }
        Some(summary::pod_summary(pod, owner, now))
    }

    fn visible_pods(&self, policy: &AccessPolicy) -> Vec<PodSummary> {
        let now = Utc::now();
        let mut apps = HashMap::new();
        let mut pods: Vec<PodSummary> =
            self.pods.state().iter().filter_map(|pod| self.visible_pod_memo(policy, pod, now, &mut apps)).collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        pods
    }

    /// Every visible app, with its visible pods.
    fn visible_apps(&self, policy: &AccessPolicy) -> Vec<(AppSummary, Vec<PodSummary>)> {
        let mut by_app: HashMap<OwnerApp, Vec<PodSummary>> = HashMap::new();
        for pod in self.visible_pods(policy) {
            if let Some(app) = pod.owner_app.clone() {
                by_app.entry(app).or_default().push(pod);
            }
        }
        let deployments = self.deployments.state();
        let stateful_sets = self.stateful_sets.state();
        let daemon_sets = self.daemon_sets.state();
        let cron_jobs = self.cron_jobs.state();
        let jobs = self.jobs.state();
        let replica_sets = self.replica_sets.state();
        let workloads = deployments
            .iter()
            .map(|d| Workload::deployment(d))
            .chain(stateful_sets.iter().map(|s| Workload::stateful_set(s)))
            .chain(daemon_sets.iter().map(|d| Workload::daemon_set(d)))
            .chain(cron_jobs.iter().map(|c| Workload::cron_job(c)))
            .chain(jobs.iter().filter(|j| summary::job_is_app(j)).map(|j| Workload::job(j)))
            .chain(replica_sets.iter().filter(|r| summary::replica_set_is_app(r)).map(|r| Workload::replica_set(r)));
        let mut apps: Vec<(AppSummary, Vec<PodSummary>)> = workloads
            .filter(|w| policy.app_visible(w.name(), &w.labels()))
            .map(|w| {
                let key = OwnerApp { kind: w.kind, name: w.name().to_owned() };
                let pods = by_app.remove(&key).unwrap_or_default();
                (w.summary(&pods), pods)
            })
            .collect();
        apps.sort_by(|(a, _), (b, _)| a.name.cmp(&b.name).then(a.kind.cmp(&b.kind)));
        apps
    }
}

impl OwnerLookup for NamespaceCaches {
    fn replica_set(&self, name: &str) -> Option<Arc<ReplicaSet>> {
        self.replica_sets.get(&self.key(name))
    }
    fn job(&self, name: &str) -> Option<Arc<Job>> {
        self.jobs.get(&self.key(name))
    }
}

struct Inner {
    client: kube::Client,
    stats: ApiRequestStats,
    namespaces: BTreeMap<String, NamespaceCaches>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("namespaces", &self.namespaces.keys()).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The watch tasks hold no handle to `Inner`; without this they would outlive it.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The Kubernetes client and the caches of every allowlisted namespace. Cheap to clone;
/// the watch tasks stop when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// Resolves the client configuration (see [`client_config`]), builds the rate-limited
    /// client and starts the caches of every allowlisted namespace.
    ///
    /// Registers the readiness check `kubernetes`, ready once every store received its first
    /// complete list. Returns as soon as the watches are started; it does not wait for sync.
    pub async fn start(
        settings: &KubernetesConfig,
        policy: &AccessPolicy,
        readiness: &Readiness,
    ) -> Result<(Cluster, ClientConfigSource), ClusterError> {
        let (config, source) = client_config(settings).await?;
        let stats = ApiRequestStats::default();
        let client = build_client(config, settings, stats.clone()).map_err(ClusterError::Client)?;
        Ok((Self::with_client(client, stats, policy, readiness), source))
    }

    /// Starts the caches with an already built client (e.g. one made with
    /// [`build_client`] from a custom `kube::Config`). `stats` should be the counter that
    /// client's [`ApiRequestLayer`] counts into.
    pub fn with_client(
        client: kube::Client,
        stats: ApiRequestStats,
        policy: &AccessPolicy,
        readiness: &Readiness,
    ) -> Cluster {
        let check = readiness.register(READINESS_CHECK, "caches syncing");
        let namespaces: Vec<AllowedNamespace> = policy.allowed_namespaces().collect();
        let total = namespaces.len() * STORES_PER_NAMESPACE;
        let synced_total = Arc::new(AtomicUsize::new(0));
        let report = SyncReport { check, total, synced: synced_total };
        report.update();
        let mut tasks = Vec::new();
        let mut caches = BTreeMap::new();
        for ns in namespaces {
            let ns = ns.as_str();
            let synced = Arc::new(AtomicUsize::new(0));
            let mut watch = WatchCtx { client: &client, ns, synced: &synced, report: &report, tasks: &mut tasks };
            let namespace = watch.store(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={ns}")),
                strip_meta,
            );
            let deployments = watch.namespaced::<Deployment>(|d| {
                strip_meta(d);
                if let Some(spec) = d.spec.as_mut() {
                    spec.template.spec = None;
                }
            });
            let replica_sets = watch.namespaced::<ReplicaSet>(|r| {
                strip_meta(r);
                if let Some(t) = r.spec.as_mut().and_then(|s| s.template.as_mut()) {
                    t.spec = None;
                }
            });
            let stateful_sets = watch.namespaced::<StatefulSet>(|s| {
                strip_meta(s);
                if let Some(spec) = s.spec.as_mut() {
                    spec.template.spec = None;
                    spec.volume_claim_templates = None;
                }
            });
            let daemon_sets = watch.namespaced::<DaemonSet>(|d| {
                strip_meta(d);
                if let Some(spec) = d.spec.as_mut() {
                    spec.template.spec = None;
                }
            });
            let jobs = watch.namespaced::<Job>(|j| {
                strip_meta(j);
                if let Some(spec) = j.spec.as_mut() {
                    spec.template.spec = None;
                }
            });
            let cron_jobs = watch.namespaced::<CronJob>(|c| {
                strip_meta(c);
                if let Some(spec) = c.spec.as_mut().and_then(|s| s.job_template.spec.as_mut()) {
                    spec.template.spec = None;
                }
            });
            let (pod_changes, _) = broadcast::channel(POD_EVENT_BUFFER);
            let (pods, pod_writer) = reflector::store::<Pod>();
            let entry = NamespaceCaches {
                name: ns.to_owned(),
                namespace,
                pods,
                deployments,
                replica_sets,
                stateful_sets,
                daemon_sets,
                jobs,
                cron_jobs,
                pod_changes,
                synced: synced.clone(),
            };
            // Pods are driven by hand so that the change stream can see the store before and
            // after each event (relist diffs need both).
            let feed = PodFeed::new(pod_writer, entry.pods.clone(), entry.pod_changes.clone());
            let stream = watcher(Api::<Pod>::namespaced(client.clone(), ns), watcher::Config::default())
                .default_backoff()
                .modify(strip_pod);
            tasks.push(tokio::spawn(drive_pods(stream, feed, ns.to_owned(), synced, report.clone())));
            caches.insert(ns.to_owned(), entry);
        }
        Cluster { inner: Arc::new(Inner { client, stats, namespaces: caches, tasks }) }
    }

    /// The Kubernetes client (rate limited, counted). Callers must have run the policy for
    /// whatever they ask the API server about: the client itself is as privileged as the
    /// service account.
    pub fn client(&self) -> kube::Client {
        self.inner.client.clone()
    }

    /// Requests sent to the API server so far.
    pub fn api_requests(&self) -> ApiRequestCounts {
        self.inner.stats.snapshot()
    }

    /// True once every store of every allowlisted namespace received its first list.
    pub fn is_synced(&self) -> bool {
        self.inner.namespaces.values().all(NamespaceCaches::is_synced)
    }

    fn caches(&self, ns: &AllowedNamespace) -> Result<&NamespaceCaches, ClusterError> {
        // An allowlisted namespace always has caches; the error only guards a policy built
        // from a different config than the cluster.
        let caches = self.inner.namespaces.get(ns.as_str()).ok_or(AccessError::NotFound { what: "namespace" })?;
        if !caches.is_synced() {
            return Err(ClusterError::NotSynced);
        }
        Ok(caches)
    }

    /// Caches of a namespace that exists and is visible.
    fn existing(&self, policy: &AccessPolicy, ns: &AllowedNamespace) -> Result<&NamespaceCaches, ClusterError> {
        let caches = self.caches(ns)?;
        match caches.namespace.get(&ObjectRef::new(ns.as_str())) {
            Some(object) if policy.namespace_visible(object.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())) => {
                Ok(caches)
            }
            _ => Err(AccessError::NotFound { what: "namespace" }.into()),
        }
    }

    /// Allowlisted namespaces that exist and are visible, sorted by name.
    pub fn namespaces(&self, policy: &AccessPolicy) -> Result<Vec<NamespaceSummary>, ClusterError> {
        let mut out = Vec::new();
        for ns in policy.allowed_namespaces() {
            match self.existing(policy, &ns) {
                Ok(caches) => {
                    if let Some(object) = caches.namespace.get(&ObjectRef::new(ns.as_str())) {
                        out.push(summary::namespace_summary(&object));
                    }
                }
                Err(ClusterError::Access(AccessError::NotFound { .. })) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(out)
    }

    /// One namespace (404 when it does not exist or is hidden).
    pub fn namespace(&self, policy: &AccessPolicy, ns: &AllowedNamespace) -> Result<NamespaceSummary, ClusterError> {
        let caches = self.existing(policy, ns)?;
        let object = caches.namespace.get(&ObjectRef::new(ns.as_str())).ok_or(AccessError::NotFound { what: "namespace" })?;
        Ok(summary::namespace_summary(&object))
    }

    /// Visible pods of a namespace, sorted by name.
    pub fn pods(&self, policy: &AccessPolicy, ns: &AllowedNamespace) -> Result<Vec<PodSummary>, ClusterError> {
        Ok(self.existing(policy, ns)?.visible_pods(policy))
    }

    /// One visible pod (404 when missing or hidden; 400 for a malformed name).
    pub fn pod(&self, policy: &AccessPolicy, ns: &AllowedNamespace, name: &str) -> Result<PodSummary, ClusterError> {
        let (caches, pod) = self.pod_lookup(policy, ns, name)?;
        caches.visible_pod(policy, &pod, Utc::now()).ok_or_else(|| AccessError::NotFound { what: "pod" }.into())
    }

    /// Whether `pod` (any Pod object, e.g. from another watch) is visible under `policy`:
    /// allowlisted and visible namespace, the pod's own name and labels, and — through this
    /// cache's workloads — the app that owns it. Used to keep hidden pods out of the log
    /// archive.
    pub fn is_pod_visible(&self, policy: &AccessPolicy, pod: &Pod) -> bool {
        let Ok(ns) = policy.namespace(pod.metadata.namespace.as_deref().unwrap_or_default()) else { return false };
        match self.existing(policy, &ns) {
            Ok(caches) => caches.visible_pod(policy, pod, Utc::now()).is_some(),
            Err(_) => false,
        }
    }

    /// The app owning `pod` (resolved through this cache's ReplicaSets and Jobs) and that
    /// app's labels (`None` when the app is not cached): what the log archive records so the
    /// policy can still be applied once the pod and its app are gone.
    pub fn pod_owner(&self, pod: &Pod) -> Option<(OwnerApp, Option<BTreeMap<String, String>>)> {
        let ns = self.inner.namespaces.get(pod.metadata.namespace.as_deref()?)?;
        let app = summary::resolve_owner(pod, ns)?;
        let labels = ns.app_labels(&app);
        Some((app, labels))
    }

    /// The labels of a cached workload of an allowlisted namespace (`None` when not cached).
    pub fn workload_labels(&self, ns: &AllowedNamespace, app: &OwnerApp) -> Option<BTreeMap<String, String>> {
        self.inner.namespaces.get(ns.as_str())?.app_labels(app)
    }

    /// Whether the log archive of `ns` may be served: false while the caches sync, and when
    /// the namespace exists and its labels hide it (it then answers 404 like on every other
    /// route). A namespace that no longer exists is fine: its archived pods outlive it.
    pub fn archive_namespace_visible(&self, policy: &AccessPolicy, ns: &AllowedNamespace) -> bool {
        self.caches(ns).is_ok_and(|caches| {
            caches
                .namespace
                .get(&ObjectRef::new(ns.as_str()))
                .is_none_or(|o| policy.namespace_visible(o.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
        })
    }

    /// Whether an archived pod called `name`, with the metadata recorded at capture, passes
    /// the policy *now* — the same filters as a live pod:
    ///
    /// * the namespace ([`Cluster::archive_namespace_visible`]);
    /// * a pod of that name that still exists is judged live: a hidden one is never served
    ///   from the archive;
    /// * otherwise `filters.pods` on the name, `filters.exclude_labels` on the recorded
    ///   labels, and the owning app: `filters.apps` on its name and `exclude_labels` on its
    ///   labels — the current ones while the app is cached, else those recorded at capture.
    ///   Labels that were not recorded hide the pod whenever label rules exist (fail closed).
    pub fn archived_pod_visible(&self, policy: &AccessPolicy, ns: &AllowedNamespace, name: &str, meta: &PodMeta) -> bool {
        if !self.archive_namespace_visible(policy, ns) {
            return false;
        }
        let Ok(caches) = self.caches(ns) else { return false };
        if let Some(live) = caches.pods.get(&caches.key(name)) {
            return caches.visible_pod(policy, &live, Utc::now()).is_some();
        }
        let known = |labels: Option<BTreeMap<String, String>>| match labels {
            Some(labels) => Some(labels),
            None if policy.has_label_rules() => None,
            None => Some(BTreeMap::new()),
        };
        let Some(labels) = known(meta.labels.clone()) else { return false };
        if !policy.pod_visible(name, &labels, None) {
            return false;
        }
        let Some(app_name) = meta.app_name.as_deref() else { return true };
        let kind = meta.app_kind.as_deref().and_then(|k| k.parse::<AppKind>().ok());
        let current = kind.and_then(|kind| caches.app_labels(&OwnerApp { kind, name: app_name.to_owned() }));
        match known(current.or_else(|| meta.app_labels.clone())) {
            Some(app_labels) => policy.app_visible(app_name, &app_labels),
            None => false,
        }
    }

    /// True when the cache holds a pod of this name, visible or not: a hidden pod that
    /// exists must answer 404, never be served from the log archive.
    pub fn pod_exists(&self, ns: &AllowedNamespace, name: &str) -> bool {
        self.caches(ns).is_ok_and(|caches| caches.pods.get(&caches.key(name)).is_some())
    }

    /// The cached Pod object of a visible pod, for views that need more than the summary (pod
    /// details). `managedFields` and the last-applied annotation are stripped; everything
    /// else is as the API server sent it, secret material included: mask before showing.
    pub fn pod_object(&self, policy: &AccessPolicy, ns: &AllowedNamespace, name: &str) -> Result<Arc<Pod>, ClusterError> {
        let (caches, pod) = self.pod_lookup(policy, ns, name)?;
        match caches.visible_pod(policy, &pod, Utc::now()) {
            Some(_) => Ok(pod),
            None => Err(AccessError::NotFound { what: "pod" }.into()),
        }
    }

    fn pod_lookup(
        &self,
        policy: &AccessPolicy,
        ns: &AllowedNamespace,
        name: &str,
    ) -> Result<(&NamespaceCaches, Arc<Pod>), ClusterError> {
        let name = policy.pod_name(name)?;
        let caches = self.existing(policy, ns)?;
        let pod = caches.pods.get(&caches.key(name)).ok_or(AccessError::NotFound { what: "pod" })?;
        Ok((caches, pod))
    }

    /// Visible apps of a namespace, sorted by name then kind.
    pub fn apps(&self, policy: &AccessPolicy, ns: &AllowedNamespace) -> Result<Vec<AppSummary>, ClusterError> {
        Ok(self.existing(policy, ns)?.visible_apps(policy).into_iter().map(|(app, _)| app).collect())
    }

    /// One visible app with its visible pods.
    ///
    /// Without `kind`, a name shared by several visible apps (say a Deployment and a
    /// StatefulSet both called `web`) is [`ClusterError::AmbiguousApp`] listing the kinds,
    /// rather than a silent pick: the caller repeats with `kind`. Hidden apps never count.
    pub fn app(
        &self,
        policy: &AccessPolicy,
        ns: &AllowedNamespace,
        name: &str,
        kind: Option<AppKind>,
    ) -> Result<AppDetail, ClusterError> {
        let name = policy.app_name(name)?;
        let caches = self.existing(policy, ns)?;
        let mut matches: Vec<(AppSummary, Vec<PodSummary>)> = caches
            .visible_apps(policy)
            .into_iter()
            .filter(|(app, _)| app.name == name && kind.is_none_or(|k| app.kind == k))
            .collect();
        match matches.len() {
            0 => Err(AccessError::NotFound { what: "app" }.into()),
            1 => {
                let (app, pods) = matches.remove(0);
                Ok(AppDetail { app, pods })
            }
            _ => Err(ClusterError::AmbiguousApp { kinds: matches.iter().map(|(app, _)| app.kind).collect() }),
        }
    }

    /// Changes to the visible pods of a namespace, as they happen.
    ///
    /// The stream starts with no replay (list first, then subscribe — or subscribe first and
    /// list on the first event, the events are idempotent). A pod that becomes hidden (e.g.
    /// gains an excluded label) arrives as `Deleted`, one that becomes visible as `Added`.
    /// A subscriber that falls more than [`POD_EVENT_BUFFER`] events behind gets
    /// [`PodEvent::Resync`] and continues. The stream ends when the cluster is dropped.
    pub fn pod_events(
        &self,
        policy: &AccessPolicy,
        ns: &AllowedNamespace,
    ) -> Result<impl Stream<Item = PodEvent> + Send + 'static, ClusterError> {
        let caches = self.existing(policy, ns)?.clone();
        let receiver = caches.pod_changes.subscribe();
        let visible: HashSet<String> = caches.visible_pods(policy).into_iter().map(|p| p.name).collect();
        let state = EventFilter { caches, policy: policy.clone(), visible, receiver };
        Ok(futures::stream::unfold(state, |mut state| async move {
            loop {
                let change = match state.receiver.recv().await {
                    Ok(change) => Some(change),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(namespace = %state.caches.name, missed, "pod change subscriber lagged");
                        None
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                if let Some(event) = state.apply(change) {
                    return Some((event, state));
                }
            }
        }))
    }
}

/// Per-subscriber state of [`Cluster::pod_events`]: which pods this subscriber was told about.
struct EventFilter {
    caches: NamespaceCaches,
    policy: AccessPolicy,
    visible: HashSet<String>,
    receiver: broadcast::Receiver<PodChange>,
}

impl EventFilter {
    /// Turns one change (or `None` for "missed some") into the event this subscriber sees.
    fn apply(&mut self, change: Option<PodChange>) -> Option<PodEvent> {
        match change {
            None | Some(PodChange::Relisted) => {
                // The set is rebuilt from the store; the client reloads its list.
                self.visible = self.caches.visible_pods(&self.policy).into_iter().map(|p| p.name).collect();
                change.is_none().then_some(PodEvent::Resync)
            }
            Some(PodChange::Applied(pod)) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                match self.caches.visible_pod(&self.policy, &pod, Utc::now()) {
                    Some(summary) if self.visible.insert(name.clone()) => Some(PodEvent::Added(summary)),
                    Some(summary) => Some(PodEvent::Modified(summary)),
                    None if self.visible.remove(&name) => {
                        let owner = summary::resolve_owner(&pod, &self.caches);
                        Some(PodEvent::Deleted(summary::pod_summary(&pod, owner, Utc::now())))
                    }
                    None => None,
                }
            }
            Some(PodChange::Deleted(pod)) => {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                self.visible.remove(name).then(|| {
                    let owner = summary::resolve_owner(&pod, &self.caches);
                    PodEvent::Deleted(summary::pod_summary(&pod, owner, Utc::now()))
                })
            }
        }
    }
}

/// Feeds one namespace's pod store and change broadcast from watcher events.
struct PodFeed {
    writer: reflector::store::Writer<Pod>,
    reader: Store<Pod>,
    changes: broadcast::Sender<PodChange>,
    /// `(name, resourceVersion)` of the objects of the relist in progress.
    relist: Option<HashMap<String, String>>,
    /// The first list is not diffed (nobody can have subscribed to a namespace that was not
    /// synced yet, and it would be thousands of `added` events for nothing).
    initial: bool,
}

impl PodFeed {
    fn new(writer: reflector::store::Writer<Pod>, reader: Store<Pod>, changes: broadcast::Sender<PodChange>) -> Self {
        Self { writer, reader, changes, relist: None, initial: true }
    }

    /// Applies one event to the store, then tells subscribers. Returns true on `InitDone`.
    fn handle(&mut self, event: watcher::Event<Pod>) -> bool {
        // `send` fails only when nobody subscribed: nothing to do then.
        let send = |changes: &broadcast::Sender<PodChange>, change| {
            let _ = changes.send(change);
        };
        match &event {
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                self.writer.apply_watcher_event(&event);
                false
            }
            watcher::Event::InitApply(pod) => {
                if let (Some(relist), Some(name)) = (self.relist.as_mut(), pod.metadata.name.clone()) {
                    relist.insert(name, pod.metadata.resource_version.clone().unwrap_or_default());
                }
                self.writer.apply_watcher_event(&event);
                false
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let before = self.reader.state();
                self.writer.apply_watcher_event(&event);
                if !std::mem::take(&mut self.initial) {
                    let old: HashMap<&str, &Arc<Pod>> =
                        before.iter().filter_map(|p| Some((p.metadata.name.as_deref()?, p))).collect();
                    for pod in &before {
                        let name = pod.metadata.name.as_deref().unwrap_or_default();
                        if !listed.contains_key(name) {
                            send(&self.changes, PodChange::Deleted(pod.clone()));
                        }
                    }
                    for pod in self.reader.state() {
                        let name = pod.metadata.name.as_deref().unwrap_or_default();
                        let changed = old.get(name).is_none_or(|prev| {
                            prev.metadata.resource_version != pod.metadata.resource_version
                                || prev.metadata.uid != pod.metadata.uid
                        });
                        if changed {
                            send(&self.changes, PodChange::Applied(pod));
                        }
                    }
                    send(&self.changes, PodChange::Relisted);
                }
                true
            }
            watcher::Event::Apply(_) => {
                self.writer.apply_watcher_event(&event);
                if let watcher::Event::Apply(pod) = event {
                    send(&self.changes, PodChange::Applied(Arc::new(pod)));
                }
                false
            }
            watcher::Event::Delete(_) => {
                self.writer.apply_watcher_event(&event);
                if let watcher::Event::Delete(pod) = event {
                    send(&self.changes, PodChange::Deleted(Arc::new(pod)));
                }
                false
            }
        }
    }
}

/// Sets the readiness check from the number of synced stores.
#[derive(Debug, Clone)]
struct SyncReport {
    check: ReadinessCheck,
    total: usize,
    synced: Arc<AtomicUsize>,
}

impl SyncReport {
    fn store_synced(&self, namespace_synced: &AtomicUsize) {
        namespace_synced.fetch_add(1, Ordering::AcqRel);
        self.synced.fetch_add(1, Ordering::AcqRel);
        self.update();
    }

    fn update(&self) {
        let synced = self.synced.load(Ordering::Acquire);
        if synced >= self.total {
            self.check.ready(&format!("{synced} caches synced"));
        } else {
            self.check.not_ready(&format!("caches syncing ({synced}/{})", self.total));
        }
    }
}

struct WatchCtx<'a> {
    client: &'a kube::Client,
    ns: &'a str,
    synced: &'a Arc<AtomicUsize>,
    report: &'a SyncReport,
    tasks: &'a mut Vec<JoinHandle<()>>,
}

impl WatchCtx<'_> {
    fn namespaced<K>(&mut self, strip: fn(&mut K)) -> Store<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let api = Api::<K>::namespaced(self.client.clone(), self.ns);
        self.store(api, watcher::Config::default(), strip)
    }

    fn store<K>(&mut self, api: Api<K>, config: watcher::Config, strip: fn(&mut K)) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    {
        let (store, mut writer) = reflector::store::<K>();
        let stream = watcher(api, config).default_backoff().modify(strip);
        let ns = self.ns.to_owned();
        let synced = self.synced.clone();
        let report = self.report.clone();
        self.tasks.push(tokio::spawn(async move {
            let kind = K::kind(&());
            let mut stream = std::pin::pin!(stream);
            let mut first = true;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        let done = matches!(event, watcher::Event::InitDone);
                        writer.apply_watcher_event(&event);
                        if done {
                            tracing::debug!(namespace = %ns, %kind, "cache listed");
                            if std::mem::take(&mut first) {
                                report.store_synced(&synced);
                            }
                        }
                    }
                    Err(err) => tracing::warn!(namespace = %ns, %kind, error = %err, "watch failed; retrying with backoff"),
                }
            }
        }));
        store
    }
}

async fn drive_pods(
    stream: impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>>,
    mut feed: PodFeed,
    ns: String,
    synced: Arc<AtomicUsize>,
    report: SyncReport,
) {
    let mut stream = std::pin::pin!(stream);
    let first = AtomicBool::new(true);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if feed.handle(event) && first.swap(false, Ordering::AcqRel) {
                    tracing::debug!(namespace = %ns, kind = "Pod", "cache listed");
                    report.store_synced(&synced);
                }
            }
            Err(err) => tracing::warn!(namespace = %ns, kind = "Pod", error = %err, "watch failed; retrying with backoff"),
        }
    }
}

/// Drops what no view needs, before the object is stored: `managedFields` (often the
/// largest part of an object) and the `kubectl` last-applied annotation (a full copy).
fn strip_meta<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn strip_pod(pod: &mut Pod) {
    strip_meta(pod);
}
#[cfg(test)]
mod tests;
