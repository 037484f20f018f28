//! Serving terminated pods from the log archive (see `docs/retention.md`).
//!
//! * `GET /api/v1/namespaces/{ns}/pods/{name}/logs` falls back here when the pod no longer
//!   exists: the archived lines are served with the same ids as live lines (so
//!   `Last-Event-ID` resumes exactly), preceded by a `status` event
//!   `{"state":"archived", ...}` and followed by `{"state":"ended","reason":"complete"}`.
//! * `GET /api/v1/namespaces/{ns}/archived-pods` lists the archived pods of a namespace
//!   (`terminated: true` once deleted, with `expiresAt`).
//!
//! Every archive read applies the *current* policy, exactly like a live read
//! ([`Cluster::archived_pod_visible`]): the namespace must be allowlisted and not hidden by
//! its labels (a hidden one answers 404 on these routes too), a pod that still exists is
//! judged live (a hidden one is a 404, never served from the archive), and a deleted pod must
//! pass `filters.pods`, `filters.apps` and `filters.exclude_labels` with the labels and owning
//! app recorded at capture (the app's current labels while it is still cached). Lists leave
//! out what the policy hides. A hidden pod and a missing one cost the same archive query (no
//! timing difference). Capture only ever sees pods that are visible (see
//! [`Retention::start_with_watches`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use kubelens_core::logs::upstream::{SourceKey as UpstreamKey, SourceState, SourceStatus, StatusReason, UpstreamEvent};
use kubelens_core::logs::around::{AroundPlan, AroundStart, open_around};
use kubelens_core::retention::read::{archived_pods, find_pod, line_stream, read_lines, stream_from};
use kubelens_core::retention::capture::ArchiveTap;
use kubelens_core::retention::{ArchiveRecorder, ArchivedPod, LogOpener, PodSignal, PodSnapshot, RecorderConfig, RetentionError};
use kubelens_core::api::{AppKind, OwnerApp};
use kubelens_core::cluster::Cluster;
use kubelens_core::policy::AccessPolicy;
use kubelens_core::storage::{LogArchive, PodMeta, StorageError};
use salvo::http::header::ACCEPT;
use salvo::prelude::*;
use serde::Serialize;

use crate::error::ApiError;
use crate::logs::{LogQuery, log_line_frame, one_shot, shutdown_frames};
use crate::sse::{SseBody, SseFrame};
use crate::state::AppState;

/// The retention subsystem as handlers see it: the recorder (and through it the archive),
/// plus its background tasks (capture loop, purge loop), aborted when the last handle drops.
#[derive(Debug)]
pub struct Retention {
    /// Captures terminated pods; its archive serves them.
    pub recorder: ArchiveRecorder,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Retention {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Retention {
    /// A recorder without background tasks (serving only; tests drive `handle` directly).
    pub fn new(recorder: ArchiveRecorder) -> Arc<Self> {
        Arc::new(Self { recorder, tasks: Vec::new() })
    }

    /// Shutdown: stops taking pod changes (no new capture starts) and waits until the
    /// captures already running have written what they read, or until `deadline`. Returns
    /// how many were still running then (their pods' remaining lines are not archived by
    /// this process; another replica, if any, captures them too).
    pub async fn drain(&self, deadline: tokio::time::Instant) -> usize {
        for task in &self.tasks {
            task.abort();
        }
        while self.recorder.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.recorder.in_flight()
    }

    /// Starts retention: captures driven by `signals` (the pod change streams of the
    /// allowlisted namespaces, merged), reading through `opener`, writing to `archive`, and
    /// the periodic purge of expired sources.
    pub fn start(
        archive: Arc<dyn LogArchive>,
        opener: LogOpener,
        config: RecorderConfig,
        metrics: kubelens_core::Metrics,
        signals: Vec<BoxStream<'static, PodSignal>>,
    ) -> Arc<Self> {
        let recorder = ArchiveRecorder::new(archive, opener, config, metrics);
        let run = tokio::spawn(recorder.clone().run(futures::stream::select_all(signals)));
        let purge = tokio::spawn(recorder.clone().purge_loop());
        Arc::new(Self { recorder, tasks: vec![run, purge] })
    }

    /// [`Retention::start`] with a Kubernetes watch per allowlisted namespace as the pod
    /// change stream and `upstream` (without admission permits) as the log reader.
    pub fn start_with_watches(
        state: &AppState,
        archive: Arc<dyn LogArchive>,
        client: kube::Client,
        upstream: kubelens_core::logs::upstream::PodLogUpstream,
    ) -> Arc<Self> {
        let signals = state
            .config
            .namespaces
            .allowed
            .iter()
            .map(|ns| {
                let (policy, cluster, metrics) = (Arc::clone(&state.policy), state.cluster.clone(), state.metrics.clone());
                // Hidden pods are never archived: with the discovery cache, the full policy
                // (including a hidden owning app); without it, the pod's own name and labels.
                let visible = move |pod: &k8s_openapi::api::core::v1::Pod| match &cluster {
                    Some(cluster) => cluster.is_pod_visible(&policy, pod),
                    None => {
                        let labels = pod.metadata.labels.clone().unwrap_or_default();
                        policy.pod_visible(pod.metadata.name.as_deref().unwrap_or_default(), &labels, None)
                    }
                };
                let (policy, cluster) = (Arc::clone(&state.policy), state.cluster.clone());
                kubelens_core::retention::watch::pod_signals(client.clone(), ns, visible, metrics)
                    .map(move |signal| match (&cluster, signal) {
                        (Some(cluster), PodSignal::Observed(mut pod)) => {
                            record_app_labels(cluster, &policy, &mut pod);
                            PodSignal::Observed(pod)
                        }
                        (Some(cluster), PodSignal::Deleted(mut pod)) => {
                            record_app_labels(cluster, &policy, &mut pod);
                            PodSignal::Deleted(pod)
                        }
                        (_, other) => other,
                    })
                    .boxed()
            })
            .collect();
        let opener: LogOpener = Arc::new(move |key, options| upstream.stream(key, options, None));
        Self::start(archive, opener, RecorderConfig::from_logs(&state.config.logs), state.metrics.clone(), signals)
    }
}

/// Adds the owning app's current labels to a capture's snapshot (recorded with its sources,
/// so archive reads can apply `exclude_labels` to the app after it is gone).
fn record_app_labels(cluster: &Cluster, policy: &AccessPolicy, pod: &mut PodSnapshot) {
    let (Ok(ns), Some((kind, name))) = (policy.namespace(&pod.namespace), pod.app.as_ref()) else { return };
    if let Ok(kind) = kind.parse::<AppKind>() {
        pod.app_labels = cluster.workload_labels(&ns, &OwnerApp { kind, name: name.clone() });
    }
}

/// The cluster cache that archive reads check the policy against; without it nothing is
/// served from the archive (503, like the discovery routes).
pub(crate) fn policy_cluster(state: &AppState) -> Result<&Cluster, ApiError> {
    state.cluster.as_ref().ok_or_else(|| ApiError::unavailable("kubernetes_unavailable", "the Kubernetes caches are not available"))
}

pub(crate) fn retention_error(err: RetentionError) -> ApiError {
    match err {
        RetentionError::NotArchived { .. } => ApiError::not_found("pod"),
        RetentionError::ContainerRequired { choices } => ApiError::new(
            salvo::http::StatusCode::BAD_REQUEST,
            "container_required",
            format!("the pod has several containers; choose one with `container`: {choices}"),
        ),
        RetentionError::Storage(err) => storage_error(&err),
        _ => ApiError::internal(),
    }
}

fn storage_error(err: &StorageError) -> ApiError {
    tracing::warn!(error = %err, "log archive read failed");
    ApiError::unavailable("storage_unavailable", "the log archive is not reachable")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ArchivedStatus<'a> {
    state: &'static str,
    pod: &'a str,
    container: &'a str,
    reason: &'static str,
    instance: u32,
    pod_uid: &'a str,
    terminated_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

/// Serves the logs of a pod that no longer exists from the archive; 404 when it is not
/// archived (never archived, expired, retention off, or namespace not allowlisted).
pub async fn pod_logs_from_archive(
    req: &Request,
    (state, who): (&AppState, &kubelens_core::auth::Principal),
    ns: &str,
    name: &str,
    query: &LogQuery,
    viewer: kubelens_core::logs::admission::ViewerPermit,
    res: &mut Response,
) -> Result<(), ApiError> {
    let Some(retention) = state.retention.as_ref() else { return Err(ApiError::not_found("pod")) };
    let allowed = state.policy.namespace(ns).map_err(|_| ApiError::not_found("pod"))?;
    state.policy.pod_name(name).map_err(|_| ApiError::not_found("pod"))?;
    let cluster = policy_cluster(state)?;
    let archive = retention.recorder.archive();
    // Always ask the archive, then apply the policy: a hidden pod costs the same as a missing
    // one, so timing does not tell them apart.
    let found = find_pod(archive.as_ref(), ns, name).await.map_err(retention_error)?;
    let meta = found.as_ref().map_or_else(PodMeta::default, |pod| pod.meta.clone());
    let visible = cluster.archived_pod_visible(&state.policy, &allowed, name, &meta);
    let pod = found.filter(|_| visible).ok_or_else(|| ApiError::not_found("pod"))?;
    let source = pod.source(query.container.as_deref(), query.previous).map_err(retention_error)?;
    let logs = &state.config.logs;
    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let status = ArchivedStatus {
        state: "archived",
        pod: name,
        container: &source.container,
        reason: if pod.terminated_at.is_some() { "pod_deleted" } else { "pod_gone" },
        instance: source.instance,
        pod_uid: &pod.uid,
        terminated_at: pod.terminated_at,
        expires_at: pod.expires_at,
    };
    if let Some(around) = &query.around {
        // Open at a line: the same windowed reads as a live pod, over the archive (the pod is
        // gone, so there is nothing to follow: `follow=true` ends after the `after` lines).
        let target = kubelens_core::logs::LineId::parse(&around.id).map_err(crate::logs::bad_event_id)?;
        let open = |start: AroundStart| {
            let since = match start {
                AroundStart::From(t) => Some(t.unix_nanos()),
                AroundStart::Beginning => None,
            };
            Some(line_stream(Arc::clone(archive), source.clone(), since))
        };
        let plan = AroundPlan::new(usize::try_from(around.before).unwrap_or(usize::MAX));
        let found = open_around(open, target, target.ts, plan).await.map_err(|e| crate::logs::around_error(&e, state))?;
        let sse = query.follow || (!query.download && accept.contains("text/event-stream"));
        let answer = crate::logs::AroundAnswer { ns, pod: name, container: &source.container, sse, prefix: vec![SseFrame::json("status", None, &status)] };
        return crate::logs::respond_around(found, answer, None, query, (state, who), viewer, res).await;
    }
    if query.download {
        return download_from_archive(archive, source, (ns, name), query, viewer, res).await;
    }
    let max = usize::try_from(logs.max_tail_lines).unwrap_or(usize::MAX).max(1);
    let (lines, more) = read_lines(archive.as_ref(), &source, query.start, max).await.map_err(retention_error)?;
    tracing::info!(namespace = %ns, pod = %name, container = %source.container, instance = source.instance, lines = lines.len(), "archived log served");
    let end = SourceStatus::new(SourceState::Ended, StatusReason::Complete);
    if !query.follow && (query.download || !accept.contains("text/event-stream")) {
        let events = lines.into_iter().map(UpstreamEvent::Line).chain(std::iter::once(UpstreamEvent::Status(end)));
        return one_shot(futures::stream::iter(events).boxed(), ns, (name, &source.container), query, u32::try_from(max).unwrap_or(u32::MAX), viewer, res).await;
    }
    let mut frames = vec![SseFrame::json("status", None, &status)];
    let (pod_name, container) = (name.to_owned(), source.container.clone());
    let log_source = kubelens_core::logs::LogSource::new(pod_name.clone(), container.clone());
    // The line filter (`grep`, `grepExclude`, `level`, `field.*`) applies here as on every log
    // read (the one-shot path filters too).
    frames.extend(
        lines
            .into_iter()
            .filter(|l| query.filter.accepts(&l.text))
            .map(|l| log_line_frame(&kubelens_core::logs::LogLine::from_raw(l, Arc::clone(&log_source)), query.json)),
    );
    if !more {
        frames.push(crate::logs::status_frame(&pod_name, &container, &end));
    }
    SseBody::new(futures::stream::iter(frames).boxed(), logs.keepalive_interval, state.shutdown.clone(), shutdown_frames(pod_name, container))
        .batch_lines(query.batch)
        .hold(viewer)
        .respond(res);
    Ok(())
}

/// A whole archived log as a text download, read a page at a time (memory: one page, however
/// long the log). An archive failure part-way aborts the transfer (see `one_shot`).
async fn download_from_archive(
    archive: &Arc<dyn kubelens_core::storage::LogArchive>,
    source: kubelens_core::storage::SourceKey,
    (ns, name): (&str, &str),
    query: &LogQuery,
    viewer: kubelens_core::logs::admission::ViewerPermit,
    res: &mut Response,
) -> Result<(), ApiError> {
    let container = source.container.clone();
    tracing::info!(namespace = %ns, pod = %name, container = %container, instance = source.instance, "archived log download");
    let events = stream_from(Arc::clone(archive), source, query.start);
    one_shot(events, ns, (name, &container), query, u32::MAX, viewer, res).await
}

/// An archived pod as listed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ArchivedPodItem {
    #[serde(flatten)]
    pod: ArchivedPod,
    /// Always true: the entry comes from the archive.
    archived: bool,
    /// The pod was deleted (its archive expires at `expiresAt`).
    terminated: bool,
}

/// The archived pods of `ns` that the current policy shows (nothing for a namespace outside
/// the allowlist or hidden by its labels).
async fn visible_archived_pods(state: &AppState, retention: &Retention, ns: &str) -> Result<Vec<ArchivedPod>, ApiError> {
    let Ok(allowed) = state.policy.namespace(ns) else { return Ok(Vec::new()) };
    let cluster = policy_cluster(state)?;
    let pods = archived_pods(retention.recorder.archive().as_ref(), ns).await.map_err(retention_error)?;
    Ok(pods.into_iter().filter(|pod| cluster.archived_pod_visible(&state.policy, &allowed, &pod.name, &pod.meta)).collect())
}

/// Archived pods of an allowlisted namespace, for lists that include terminated pods.
pub async fn archived_pod_items(state: &AppState, ns: &str) -> Result<Vec<serde_json::Value>, ApiError> {
    let Some(retention) = state.retention.as_ref() else { return Ok(Vec::new()) };
    let pods = visible_archived_pods(state, retention, ns).await?;
    Ok(pods
        .into_iter()
        .map(|pod| {
            let terminated = pod.terminated_at.is_some();
            serde_json::to_value(ArchivedPodItem { pod, archived: true, terminated }).unwrap_or_default()
        })
        .collect())
}

/// Archived pods that no longer exist, shaped like pod summaries (phase `Terminated`, every
/// container `terminated`) plus `archived: true`, `terminated: true`, `terminatedAt`,
/// `expiresAt`: what `GET /namespaces/{ns}/pods?includeTerminated=true` appends.
pub async fn terminated_pod_summaries(
    state: &AppState,
    ns: &str,
    live: &[kubelens_core::api::PodSummary],
) -> Result<Vec<serde_json::Value>, ApiError> {
    use kubelens_core::api::{ContainerState, ContainerSummary, PodSummary};
    let Some(retention) = state.retention.as_ref() else { return Ok(Vec::new()) };
    let pods = visible_archived_pods(state, retention, ns).await?;
    let mut out = Vec::new();
    for pod in pods {
        if live.iter().any(|p| p.uid == pod.uid || p.name == pod.name) {
            continue;
        }
        let owner_app = match (pod.app_kind.as_deref().and_then(|k| k.parse().ok()), pod.app_name.clone()) {
            (Some(kind), Some(name)) => Some(OwnerApp { kind, name }),
            _ => None,
        };
        let containers: Vec<ContainerSummary> = pod
            .containers
            .iter()
            .map(|c| ContainerSummary {
                name: c.name.clone(),
                image: None,
                ready: false,
                state: ContainerState::Terminated,
                state_reason: None,
                restart_count: c.instances.last().copied().map_or(0, |i| i32::try_from(i).unwrap_or(i32::MAX)),
                last_termination_reason: None,
            })
            .collect();
        let summary = PodSummary {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            uid: pod.uid.clone(),
            phase: Some("Terminated".to_owned()),
            reason: Some("Archived".to_owned()),
            ready: false,
            ready_containers: 0,
            total_containers: containers.len(),
            restarts: containers.iter().map(|c| c.restart_count).sum(),
            node: pod.node.clone(),
            pod_ip: None,
            containers,
            init_containers: Vec::new(),
            owner_app,
            created_at: None,
            age: 0,
            labels: Default::default(),
            deletion_timestamp: pod.terminated_at,
        };
        let mut value = serde_json::to_value(summary).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("archived".into(), serde_json::Value::Bool(true));
            map.insert("terminated".into(), serde_json::Value::Bool(true));
            map.insert("terminatedAt".into(), serde_json::to_value(pod.terminated_at).unwrap_or_default());
            map.insert("expiresAt".into(), serde_json::to_value(pod.expires_at).unwrap_or_default());
        }
        out.push(value);
    }
    Ok(out)
}

/// `GET /api/v1/namespaces/{ns}/archived-pods`: `{"items":[...]}`.
#[handler]
pub async fn list_archived_pods(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    crate::auth::principal(depot)?;
    let state = depot.get_typed::<AppState>().map_err(|_| ApiError::internal())?.clone();
    let ns = req.param::<String>("ns").unwrap_or_default();
    let allowed = state.policy.namespace(&ns).map_err(|_| ApiError::not_found("namespace"))?;
    // A namespace hidden by its labels is a 404 here too, as on every other route.
    if !policy_cluster(&state)?.archive_namespace_visible(&state.policy, &allowed) {
        return Err(ApiError::not_found("namespace"));
    }
    let items = archived_pod_items(&state, &ns).await?;
    res.render(Json(serde_json::json!({ "items": items })));
    Ok(())
}

/// Routes of the archive endpoints, mounted under `/api/v1`.
pub fn routes() -> Vec<Router> {
    vec![Router::with_path("namespaces/{ns}/archived-pods").get(list_archived_pods)]
}

/// Opens an archive tap when the hub actually opens an upstream (so a viewer joining an
/// existing upstream does not replace that upstream's tap).
pub type TapOpener = Box<dyn FnOnce() -> ArchiveTap + Send>;

/// A tap opener for a followed pod stream (current instance only), when retention is on.
pub fn tap_for(state: &AppState, pod: &k8s_openapi::api::core::v1::Pod, key: &UpstreamKey, follow: bool) -> Option<TapOpener> {
    let retention = state.retention.as_ref()?;
    if !follow || key.previous {
        return None;
    }
    let mut snapshot = PodSnapshot::from_pod(pod)?;
    // Record the owning app as the discovery cache resolves it, with its labels.
    if let Some((app, labels)) = state.cluster.as_ref().and_then(|cluster| cluster.pod_owner(pod)) {
        snapshot.app = Some((app.kind.as_str().to_owned(), app.name));
        snapshot.app_labels = labels;
    }
    let instance = snapshot.containers.iter().find(|c| c.name == key.container).map_or(0, |c| c.restart_count);
    let recorder = retention.recorder.clone();
    let key = key.clone();
    Some(Box::new(move || recorder.tap(key, &snapshot, instance)))
}
