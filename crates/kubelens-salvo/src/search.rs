//! `GET /api/v1/namespaces/{ns}/pods/{name}/logs/search` and
//! `GET /api/v1/namespaces/{ns}/apps/{name}/logs/search`: a one-shot search of whole logs,
//! answered as SSE (`match`, `progress`, `status`, `end` events).
//!
//! The scan is [`kubelens_core::logs::search`]; this module picks the sources, checks the
//! query and the caller's admission before anything is opened (a bad pattern is a 400, a
//! caller at their stream cap a 429), and renders the events. What is searched, oldest first,
//! one source at a time:
//!
//! * a pod that exists: for its container, the instances the log archive holds that Kubernetes
//!   no longer has (older than the previous one; only when retention is on and archived
//!   them), then the previous instance (if the container restarted), then the current one.
//!   `previous=true` searches the previous instance only;
//! * a pod that no longer exists: its archived instances (`previous=true`: the one before the
//!   last), under the same policy as archive reads (`crate::archive`);
//! * an app: every container of every visible pod, each as for a pod, pods in name order.
//!
//! Live instances are read with one finite Kubernetes request each (`follow=false` from the
//! beginning, never through the fan-out hub); archived ones page by page
//! ([`kubelens_core::retention::read::line_stream`]). A search holds one of the caller's
//! `logs.max_streams_per_user` slots and one upstream slot for as long as it runs, and its
//! memory is one read chunk plus one line, whatever the log size. The contract is in
//! `docs/logs.md` ("Search").

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Pod;
use kubelens_core::logs::grep::LineFilter;
use kubelens_core::logs::search::{SearchBounds, SearchEvent, SearchInstance, SearchScope, SearchSource, search};
use kubelens_core::logs::structured::{Level, detect_level};
use kubelens_core::logs::upstream::{ContainerProbe, PodLogUpstream, SourceKey, StartAt, UpstreamOptions, probe_pod};
use kubelens_core::retention::read::{ArchivedPod, archived_pods, line_stream};
use kubelens_core::storage::{LogArchive, SourceKey as ArchiveKey};
use salvo::prelude::*;
use serde::Serialize;

use crate::error::ApiError;
use crate::logs::{admission_error, choose_container, line_id, parse_bool, path_names, principal, query_str, respond_log_stream, state, structured_filters};
use crate::sse::SseFrame;
use crate::state::AppState;

/// The query parameter carrying the search pattern.
pub const PATTERN_PARAM: &str = "q";

/// A validated search query.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// `q` (a regex, same rules and limits as `grep`), `grepExclude`, `level`, `field.<k>=<v>`.
    pub filter: LineFilter,
    /// The container (pod search only).
    pub container: Option<String>,
    /// Only the previous instance (pod search only).
    pub previous: bool,
}

impl SearchQuery {
    /// Validates the query of `req`: `q` is required; `grep` is refused (the pattern is `q`).
    pub fn parse(req: &Request) -> Result<Self, ApiError> {
        let bad_pattern = |msg: String| ApiError::new(salvo::http::StatusCode::BAD_REQUEST, "bad_pattern", msg);
        let pattern = query_str(req, PATTERN_PARAM).filter(|q| !q.is_empty());
        let Some(pattern) = pattern else {
            return Err(bad_pattern("`q` (the search pattern, a regex) is required".into()));
        };
        if query_str(req, "grep").is_some() {
            return Err(bad_pattern("a search takes its pattern in `q`, not `grep`".into()));
        }
        let (level, fields) = structured_filters(req)?;
        let filter = LineFilter::new(Some(pattern), query_str(req, "grepExclude"))
            .map_err(|e| bad_pattern(e.to_string()))?
            .with_min_level(level)
            .with_fields(fields);
        let container = query_str(req, "container").filter(|c| !c.is_empty()).map(str::to_owned);
        if container.as_deref().is_some_and(|c| !kubelens_core::names::is_dns1123_label(c)) {
            return Err(ApiError::bad_request("`container` is not a valid container name"));
        }
        Ok(Self { filter, container, previous: parse_bool(req, "previous", false)? })
    }
}

/// One source to search, not opened yet.
#[derive(Debug, Clone)]
enum Planned {
    /// A live instance, read from Kubernetes.
    Live(SourceKey, SearchInstance),
    /// An archived instance.
    Archived(ArchiveKey),
}

/// Opens planned sources when the search reaches them (one at a time).
struct Opener {
    upstream: PodLogUpstream,
    archive: Option<Arc<dyn LogArchive>>,
    max_line_length: usize,
}

impl Opener {
    fn open(&self, planned: Planned) -> SearchSource {
        match planned {
            Planned::Live(key, instance) => {
                let scope = Arc::new(SearchScope { pod: key.pod.clone(), container: key.container.clone(), instance });
                let options = UpstreamOptions { start: StartAt::Beginning, follow: false, max_line_length: self.max_line_length, ..UpstreamOptions::default() };
                // The search's upstream slot is held by the search, not per request.
                SearchSource { scope, events: self.upstream.stream(key, options, None) }
            }
            Planned::Archived(key) => {
                let scope = Arc::new(SearchScope { pod: key.pod.clone(), container: key.container.clone(), instance: SearchInstance::Archived(key.instance) });
                let events = match &self.archive {
                    Some(archive) => line_stream(Arc::clone(archive), key, None),
                    None => futures::stream::empty().boxed(),
                };
                SearchSource { scope, events }
            }
        }
    }
}

/// The sources of one container of a live pod, oldest first (see the module docs).
fn live_plan(ns: &str, pod: &Pod, container: &str, previous_only: bool, archived: Option<&ArchivedPod>) -> Vec<Planned> {
    let (restarts, has_previous) = match probe_pod(pod, container) {
        ContainerProbe::Present(rt) => (u32::try_from(rt.restart_count).unwrap_or(0), rt.has_previous),
        _ => (0, false),
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = |previous| SourceKey { namespace: ns.to_owned(), pod: name.clone(), container: container.to_owned(), previous };
    if previous_only {
        return vec![Planned::Live(key(true), SearchInstance::Previous)];
    }
    // Kubernetes keeps the current instance and the one before; the archive may hold older ones.
    let kept_from = restarts.saturating_sub(u32::from(has_previous));
    let mut plan: Vec<Planned> = archived
        .and_then(|a| a.containers.iter().find(|c| c.name == container).map(|c| (a, c)))
        .map(|(a, c)| {
            c.instances
                .iter()
                .filter(|&&i| i < kept_from)
                .map(|&instance| {
                    Planned::Archived(ArchiveKey { namespace: ns.to_owned(), pod: a.name.clone(), pod_uid: a.uid.clone(), container: container.to_owned(), instance })
                })
                .collect()
        })
        .unwrap_or_default();
    if has_previous {
        plan.push(Planned::Live(key(true), SearchInstance::Previous));
    }
    plan.push(Planned::Live(key(false), SearchInstance::Current));
    plan
}

/// The archived pods of `ns` (empty without retention or on a storage error: a live search
/// goes on without archived instances rather than failing).
async fn archived_in(state: &AppState, ns: &str) -> Vec<ArchivedPod> {
    let Some(retention) = state.retention.as_ref() else { return Vec::new() };
    match archived_pods(retention.recorder.archive().as_ref(), ns).await {
        Ok(pods) => pods,
        Err(err) => {
            tracing::warn!(namespace = %ns, error = %err, "archive not readable; searching live instances only");
            Vec::new()
        }
    }
}

fn archived_of<'a>(archived: &'a [ArchivedPod], pod: &Pod) -> Option<&'a ArchivedPod> {
    let uid = pod.metadata.uid.as_deref()?;
    archived.iter().find(|a| a.uid == uid)
}

// ---- wire format ---------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MatchData<'a> {
    id: String,
    ts: String,
    pod: &'a str,
    container: &'a str,
    instance: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<u32>,
    line: &'a str,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SourceEndedData<'a> {
    state: kubelens_core::logs::SourceState,
    pod: &'a str,
    container: &'a str,
    instance: &'static str,
    reason: kubelens_core::logs::StatusReason,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndData {
    reason: kubelens_core::logs::search::SearchEndReason,
    #[serde(flatten)]
    totals: kubelens_core::logs::search::SearchProgress,
    elapsed_ms: u64,
}

fn restart_of(instance: SearchInstance) -> Option<u32> {
    match instance {
        SearchInstance::Archived(n) => Some(n),
        _ => None,
    }
}

/// The SSE frame of a search event. Match events carry their line id in `data` (not as the
/// SSE `id:`, so a browser's automatic reconnect cannot resume a search that is over).
fn frame(event: &SearchEvent, started: std::time::Instant) -> SseFrame {
    match event {
        SearchEvent::Match { scope, line } => SseFrame::json(
            "match",
            None,
            &MatchData {
                id: line_id(&line.position),
                ts: line.position.ts.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                pod: &scope.pod,
                container: &scope.container,
                instance: scope.instance.as_str(),
                restart: restart_of(scope.instance),
                line: &line.text,
                truncated: line.truncated,
                level: detect_level(&line.text).map(Level::as_str),
            },
        ),
        SearchEvent::Progress(progress) => SseFrame::json("progress", None, progress),
        SearchEvent::SourceEnded { scope, status } => SseFrame::json(
            "status",
            None,
            &SourceEndedData { state: status.state, pod: &scope.pod, container: &scope.container, instance: scope.instance.as_str(), reason: status.reason },
        ),
        SearchEvent::End { progress, reason } => {
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            SseFrame::json("end", None, &EndData { reason: *reason, totals: *progress, elapsed_ms })
        }
    }
}

/// Runs the search over `plan` and answers with its SSE stream, holding `viewer` and
/// `upstream_slot` for its whole life.
fn respond(
    res: &mut Response,
    app_state: &AppState,
    who: &kubelens_core::auth::Principal,
    (opener, plan): (Opener, Vec<Planned>),
    filter: LineFilter,
    (viewer, upstream_slot): (kubelens_core::logs::admission::ViewerPermit, kubelens_core::logs::admission::UpstreamPermit),
    label: (String, String),
) {
    let bounds = SearchBounds::from_config(&app_state.config.logs.search);
    let sources: BoxStream<'static, SearchSource> = futures::stream::iter(plan).map(move |planned| opener.open(planned)).boxed();
    let started = std::time::Instant::now();
    let frames = search(sources, filter, bounds)
        .map(move |event| {
            let _slot = &upstream_slot;
            frame(&event, started)
        })
        .boxed();
    respond_log_stream(res, app_state, who, frames, label, viewer, false);
}

fn opener(app_state: &AppState, upstream: &PodLogUpstream) -> Opener {
    Opener {
        upstream: upstream.clone(),
        archive: app_state.retention.as_ref().map(|r| Arc::clone(r.recorder.archive())),
        max_line_length: app_state.config.logs.max_line_length,
    }
}

// ---- handlers -------------------------------------------------------------------------------

/// `GET /api/v1/namespaces/{ns}/pods/{name}/logs/search?q=<regex>`.
#[handler]
pub async fn pod_search(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let who = principal(depot)?;
    let (app_state, service) = state(depot)?;
    let (ns, name) = path_names(req)?;
    let query = SearchQuery::parse(req)?;
    // The caller's slot first: even the archive lookups of a search are admitted.
    let viewer = app_state.admission.try_viewer(&who.subject).map_err(|e| admission_error(&e, &app_state.metrics))?;
    let (plan, container) = match service.targets.pod(&ns, &name).await? {
        Some(pod) => {
            let container = choose_container(&pod, query.container.as_deref())?;
            if query.previous && !matches!(probe_pod(&pod, &container), ContainerProbe::Present(rt) if rt.has_previous) {
                return Err(ApiError::new(
                    salvo::http::StatusCode::BAD_REQUEST,
                    "no_previous_instance",
                    format!("container `{container}` has not restarted: there is no previous instance"),
                ));
            }
            let archived = if query.previous { Vec::new() } else { archived_in(&app_state, &ns).await };
            (live_plan(&ns, &pod, &container, query.previous, archived_of(&archived, &pod)), container)
        }
        None => deleted_pod_plan(&app_state, &ns, &name, &query).await?,
    };
    let upstream_slot = service.admission.try_upstream().map_err(|e| admission_error(&e, &app_state.metrics))?;
    tracing::info!(namespace = %ns, pod = %name, container = %container, sources = plan.len(), "log search started");
    let opener = opener(&app_state, &service.upstream);
    respond(res, &app_state, &who, (opener, plan), query.filter, (viewer, upstream_slot), (name, container));
    Ok(())
}

/// The archived instances of a pod that no longer exists (404 when the archive does not have
/// it or the policy hides it, exactly like an archive read).
async fn deleted_pod_plan(state: &AppState, ns: &str, name: &str, query: &SearchQuery) -> Result<(Vec<Planned>, String), ApiError> {
    let Some(retention) = state.retention.as_ref() else { return Err(ApiError::not_found("pod")) };
    let allowed = state.policy.namespace(ns).map_err(|_| ApiError::not_found("pod"))?;
    state.policy.pod_name(name).map_err(|_| ApiError::not_found("pod"))?;
    let cluster = crate::archive::policy_cluster(state)?;
    let found = kubelens_core::retention::read::find_pod(retention.recorder.archive().as_ref(), ns, name).await.map_err(crate::archive::retention_error)?;
    let meta = found.as_ref().map_or_else(Default::default, |pod| pod.meta.clone());
    let visible = cluster.archived_pod_visible(&state.policy, &allowed, name, &meta);
    let pod = found.filter(|_| visible).ok_or_else(|| ApiError::not_found("pod"))?;
    // The latest (or, with `previous`, the one before) chooses and checks the container.
    let chosen = pod.source(query.container.as_deref(), query.previous).map_err(crate::archive::retention_error)?;
    let plan = if query.previous {
        vec![Planned::Archived(chosen.clone())]
    } else {
        pod.containers
            .iter()
            .filter(|c| c.name == chosen.container)
            .flat_map(|c| c.instances.iter().copied())
            .map(|instance| Planned::Archived(ArchiveKey { instance, ..chosen.clone() }))
            .collect()
    };
    Ok((plan, chosen.container))
}

/// `GET /api/v1/namespaces/{ns}/apps/{name}/logs/search?q=<regex>`: every container of every
/// visible pod of the app, pods in name order, each like a pod search (archived earlier
/// instances, previous, current).
#[handler]
pub async fn app_search(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let who = principal(depot)?;
    let (app_state, service) = state(depot)?;
    let ns = req.param::<String>("ns").unwrap_or_default();
    let app = req.param::<String>("name").unwrap_or_default();
    if !kubelens_core::names::is_dns1123_label(&ns) || !kubelens_core::names::is_dns1123_subdomain(&app) {
        return Err(ApiError::not_found("app"));
    }
    let query = SearchQuery::parse(req)?;
    if query.previous || query.container.is_some() {
        return Err(ApiError::bad_request("`previous` and `container` are only supported on pod searches"));
    }
    let mut members = service.targets.app_pods(&ns, &app).await?.ok_or_else(|| ApiError::not_found("app"))?;
    let viewer = app_state.admission.try_viewer(&who.subject).map_err(|e| admission_error(&e, &app_state.metrics))?;
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let archived = archived_in(&app_state, &ns).await;
    let mut plan = Vec::new();
    for member in &members {
        // A pod that went away since the app was read is skipped (it has nothing live to read).
        let Some(pod) = service.targets.pod(&ns, &member.name).await? else { continue };
        for container in &member.containers {
            plan.extend(live_plan(&ns, &pod, container, false, archived_of(&archived, &pod)));
        }
    }
    let upstream_slot = service.admission.try_upstream().map_err(|e| admission_error(&e, &app_state.metrics))?;
    tracing::info!(namespace = %ns, app = %app, pods = members.len(), sources = plan.len(), "app log search started");
    let opener = opener(&app_state, &service.upstream);
    respond(res, &app_state, &who, (opener, plan), query.filter, (viewer, upstream_slot), (app, String::new()));
    Ok(())
}

/// Routes of the search endpoints, mounted under `/api/v1`.
pub fn routes() -> Vec<Router> {
    vec![
        Router::with_path("namespaces/{ns}/pods/{name}/logs/search").get(pod_search),
        Router::with_path("namespaces/{ns}/apps/{name}/logs/search").get(app_search),
    ]
}
