//! `GET /api/v1/namespaces/{ns}/pods/{name}/logs` and `GET /api/v1/namespaces/{ns}/apps/{name}/logs`.
//!
//! The handlers validate everything they can before opening anything upstream (names,
//! query parameters, the container, `previous`, the resume id, admission), so a bad request
//! is a clear 400/404/429 and never half a stream. Then a pod stream is one upstream source
//! rendered as SSE, JSON or text; an app stream is the merge of every container of every pod
//! of the app, joined and left as pods come and go. The contract is documented in
//! `docs/logs.md`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kubelens_core::auth::Principal;
use kubelens_core::config::LogsConfig;
use kubelens_core::logs::admission::{AdmissionError, StreamAdmission, ViewerPermit};
use kubelens_core::logs::grep::LineFilter;
pub use kubelens_core::logs::app::AppPod;
use kubelens_core::logs::app::{AppEvent, AppLogStream, AppStreamOptions, DEFAULT_MEMBER_POLL_INTERVAL, UpstreamTap, subscribe_shared};
use kubelens_core::logs::hub::{HubEvent, LogHub, ResumePoint};
use kubelens_core::logs::json::{LineJsonOptions, write_line_json_with};
use kubelens_core::logs::structured::{FieldFilters, Level, detect_level, shown_fields};
use kubelens_core::logs::merge::MergeConfig;
use kubelens_core::logs::{AppLogId, LogLine, LogSource, SourceCursor};
use kubelens_core::logs::upstream::{
    ContainerProbe, LinePosition, PodLogUpstream, SourceKey, SourceState, SourceStatus, StartAt,
    StatusReason, UpstreamEvent, UpstreamOptions, probe_pod,
};
use salvo::http::header::{ACCEPT, CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use salvo::prelude::*;
use serde::Serialize;

use crate::error::ApiError;
use crate::sse::{SseBody, SseFrame};
use crate::state::AppState;

/// The annotation naming a pod's default container (as `kubectl logs` honours it).
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

// ---- what the handlers need from the rest of the system -----------------------------------

/// Everything the log endpoints use, attached to [`AppState`] by the binary.
///
/// There is one way to find a pod or an app's pods: [`LogTargets`], over the discovery cache
/// and the full access policy (allowlist, hidden namespaces, pod/app name filters, label
/// exclusion, hidden owning apps). No service can be built without it, so logs are never
/// served under a partial policy; without the cluster cache there is no log service (503).
#[derive(Clone)]
pub struct LogService {
    /// Opens upstream Kubernetes log streams.
    pub upstream: PodLogUpstream,
    /// The process-wide upstream cap (`try_upstream`). Per-user caps are counted in
    /// [`AppState::admission`], which every stream kind shares.
    pub admission: StreamAdmission,
    /// Pod and app lookups (visibility applied).
    pub targets: LogTargets,
    /// Fan-out: one upstream per (pod, container, previous) however many viewers.
    pub hub: LogHub,
}

impl fmt::Debug for LogService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogService").field("admission", &self.admission).finish_non_exhaustive()
    }
}

/// Pod and app lookups over the discovery watch cache under the access policy: a pod or app
/// hidden by the allowlist or the filters is `None` (404), exactly like a missing one.
#[derive(Debug, Clone)]
pub struct LogTargets {
    cluster: kubelens_core::cluster::Cluster,
    policy: Arc<kubelens_core::policy::AccessPolicy>,
}

impl LogTargets {
    /// Lookups in `cluster` under `policy`.
    pub fn new(cluster: kubelens_core::cluster::Cluster, policy: Arc<kubelens_core::policy::AccessPolicy>) -> Self {
        Self { cluster, policy }
    }

    fn lookup<T>(
        &self,
        namespace: &str,
        f: impl FnOnce(&kubelens_core::policy::AllowedNamespace) -> Result<T, kubelens_core::cluster::ClusterError>,
    ) -> Result<Option<T>, ApiError> {
        use kubelens_core::cluster::ClusterError;
        let Ok(ns) = self.policy.namespace(namespace) else { return Ok(None) };
        match f(&ns) {
            Ok(value) => Ok(Some(value)),
            Err(ClusterError::Access(kubelens_core::policy::AccessError::NotFound { .. })) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }
}

impl LogTargets {
    /// A visible pod of an allowlisted namespace, or `None`.
    pub fn pod(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Option<Pod>, ApiError>> {
        let result = self.lookup(namespace, |ns| self.cluster.pod_object(&self.policy, ns, name)).map(|p| p.map(|p| (*p).clone()));
        futures::future::ready(result).boxed()
    }

    /// The visible pods of a visible app, or `None` when there is no such app.
    pub fn app_pods(&self, namespace: &str, app: &str) -> BoxFuture<'static, Result<Option<Vec<AppPod>>, ApiError>> {
        let result = self.lookup(namespace, |ns| self.cluster.app(&self.policy, ns, app, None)).map(|detail| {
            detail.map(|d| {
                d.pods
                    .into_iter()
                    .filter(|p| p.deletion_timestamp.is_none())
                    .map(|p| AppPod { name: p.name, uid: p.uid, containers: p.containers.into_iter().map(|c| c.name).collect() })
                    .collect()
            })
        });
        futures::future::ready(result).boxed()
    }
}

// ---- query parameters ----------------------------------------------------------------------

/// Parsed and validated query of a log request.
#[derive(Debug, Clone)]
pub struct LogQuery {
    /// Requested container.
    pub container: Option<String>,
    /// Where to start.
    pub start: StartAt,
    /// Keep streaming.
    pub follow: bool,
    /// Prefix text lines with their timestamp (text/plain output).
    pub timestamps: bool,
    /// The previous container instance.
    pub previous: bool,
    /// Plain-text download.
    pub download: bool,
    /// Server-side filter: include/exclude regexes (`grep`, `grepExclude`), minimum level
    /// (`level`) and field matches (`field.<key>=<value>`).
    pub filter: LineFilter,
    /// What log events carry besides the line (`fields=true`).
    pub json: LineJsonOptions,
}

/// The prefix of field-filter query parameters: `field.<key>=<value>`.
pub const FIELD_FILTER_PREFIX: &str = "field.";

/// `level` (at most once) and the `field.<key>=<value>` filters of `req` (each key at most
/// once; the bounds are `kubelens_core::logs::structured::MAX_FIELD_FILTERS` and friends).
pub(crate) fn structured_filters(req: &Request) -> Result<(Option<Level>, FieldFilters), ApiError> {
    let bad_level = |msg: String| ApiError::new(salvo::http::StatusCode::BAD_REQUEST, "bad_level", msg);
    let bad_field = |msg: String| ApiError::new(salvo::http::StatusCode::BAD_REQUEST, "bad_field_filter", msg);
    let queries = req.queries();
    let level = match queries.get_vec("level").map(Vec::as_slice) {
        None | Some([]) => None,
        Some([one]) if one.is_empty() => None,
        Some([one]) => Some(Level::parse_query(one).map_err(|e| bad_level(e.to_string()))?),
        Some(_) => return Err(bad_level("`level` given more than once".into())),
    };
    let mut pairs = Vec::new();
    for (name, values) in queries.iter_all() {
        let Some(key) = name.strip_prefix(FIELD_FILTER_PREFIX) else { continue };
        if pairs.len() > kubelens_core::logs::structured::MAX_FIELD_FILTERS {
            break; // FieldFilters::new reports "too many"
        }
        match values.as_slice() {
            [value] => pairs.push((key, value.as_str())),
            _ => {
                let short: String = key.chars().take(32).filter(|c| !c.is_control()).collect();
                return Err(bad_field(format!("invalid field filter: field filter `{short}` given twice")));
            }
        }
    }
    // A stable order: the filters AND, but which error a bad query gets should not vary.
    pairs.sort_unstable();
    let fields = FieldFilters::new(pairs).map_err(|e| bad_field(e.to_string()))?;
    Ok((level, fields))
}

pub(crate) fn query_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.queries().get(name).map(String::as_str)
}

pub(crate) fn parse_bool(req: &Request, name: &str, default: bool) -> Result<bool, ApiError> {
    match query_str(req, name) {
        None => Ok(default),
        Some("true" | "1" | "") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(_) => Err(ApiError::bad_request(format!("`{name}` must be true or false"))),
    }
}

/// Parses a pod-stream resume id (`Last-Event-ID`): `<RFC3339>~<k>` (after that line) or
/// `<RFC3339>` (from that time on). See `docs/log-ids.md`.
pub fn parse_resume_id(text: &str) -> Result<StartAt, ApiError> {
    SourceCursor::parse_last_event_id(text)
        .map(|c| c.to_start_at())
        .map_err(|e| ApiError::new(salvo::http::StatusCode::BAD_REQUEST, "bad_event_id", e.to_string()))
}

/// The id of a line in a pod stream: `<RFC3339Nano>~<k>`.
pub fn line_id(position: &LinePosition) -> String {
    kubelens_core::logs::LineId { ts: position.ts.into(), index: position.index }.to_string()
}

/// Where a hub subscriber starts, for a query's start point.
fn resume_point(start: StartAt) -> ResumePoint {
    match start {
        StartAt::Beginning => ResumePoint::Beginning,
        StartAt::Tail(n) => ResumePoint::Tail(n),
        StartAt::Since(ts) => ResumePoint::After(SourceCursor::from_time(ts.into())),
        StartAt::After(position) => ResumePoint::After(SourceCursor::after_position(position)),
    }
}

impl LogQuery {
    /// Validates the query of `req` against the limits in `logs`.
    pub fn parse(req: &Request, logs: &LogsConfig) -> Result<Self, ApiError> {
        let container = query_str(req, "container").filter(|c| !c.is_empty()).map(str::to_owned);
        if container.as_deref().is_some_and(|c| !kubelens_core::names::is_dns1123_label(c)) {
            return Err(ApiError::bad_request("`container` is not a valid container name"));
        }
        let tail = match query_str(req, "tailLines") {
            None => None,
            Some(t) => match t.parse::<i64>() {
                Ok(n) if n >= 0 => Some(u32::try_from(n).unwrap_or(u32::MAX).min(logs.max_tail_lines)),
                _ => return Err(ApiError::bad_request("`tailLines` must be a non-negative integer")),
            },
        };
        let now = Utc::now();
        let since = match (query_str(req, "since"), query_str(req, "sinceSeconds")) {
            (Some(_), Some(_)) => return Err(ApiError::bad_request("`since` and `sinceSeconds` are mutually exclusive")),
            (Some(s), None) => {
                let ts = DateTime::parse_from_rfc3339(s)
                    .map_err(|_| ApiError::bad_request("`since` must be an RFC3339 time, e.g. 2026-01-30T10:00:00Z"))?
                    .with_timezone(&Utc);
                if ts > now + chrono::Duration::seconds(1) {
                    return Err(ApiError::bad_request("`since` is in the future"));
                }
                Some(ts)
            }
            (None, Some(s)) => match s.parse::<i64>() {
                Ok(n) if n > 0 => Some(now - chrono::Duration::seconds(n.min(100 * 365 * 86_400))),
                _ => return Err(ApiError::bad_request("`sinceSeconds` must be a positive integer")),
            },
            (None, None) => None,
        };
        let resume = req
            .headers()
            .get("last-event-id")
            .map(|v| v.to_str().map_err(|_| parse_resume_id("\u{0}").err().unwrap_or_else(ApiError::internal)))
            .transpose()?
            .or_else(|| query_str(req, "lastEventId"))
            .filter(|s| !s.is_empty())
            .map(parse_resume_id)
            .transpose()?;
        let start = match (resume, since, tail) {
            (Some(resume), _, _) => resume,
            (None, Some(ts), _) => StartAt::Since(ts),
            (None, None, Some(n)) => StartAt::Tail(n),
            (None, None, None) => StartAt::Tail(logs.default_tail_lines.min(logs.max_tail_lines)),
        };
        let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let download = parse_bool(req, "download", false)? || (accept.contains("text/plain") && !accept.contains("text/event-stream"));
        let (level, fields) = structured_filters(req)?;
        Ok(Self {
            container,
            start,
            follow: parse_bool(req, "follow", true)?,
            timestamps: parse_bool(req, "timestamps", false)?,
            previous: parse_bool(req, "previous", false)?,
            download,
            filter: LineFilter::new(query_str(req, "grep"), query_str(req, "grepExclude"))
                .map_err(|e| ApiError::new(salvo::http::StatusCode::BAD_REQUEST, "bad_pattern", e.to_string()))?
                .with_min_level(level)
                .with_fields(fields),
            json: LineJsonOptions { fields: parse_bool(req, "fields", false)? },
        })
    }
}

/// Picks the container: the requested one (must exist), else the default-container
/// annotation, else the only container; ambiguity is a 400 listing the choices.
pub fn choose_container(pod: &Pod, requested: Option<&str>) -> Result<String, ApiError> {
    let spec = pod.spec.as_ref();
    let regular: Vec<&str> = spec.map(|s| s.containers.iter().map(|c| c.name.as_str()).collect()).unwrap_or_default();
    let others: Vec<&str> = spec
        .map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .map(|c| c.name.as_str())
                .chain(s.ephemeral_containers.iter().flatten().map(|c| c.name.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let list = || regular.iter().chain(others.iter()).copied().collect::<Vec<_>>().join(", ");
    if let Some(want) = requested {
        return if regular.contains(&want) || others.contains(&want) {
            Ok(want.to_owned())
        } else {
            Err(ApiError::new(
                salvo::http::StatusCode::BAD_REQUEST,
                "unknown_container",
                format!("the pod has no container `{want}`; containers: {}", list()),
            ))
        };
    }
    let annotated = pod.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION));
    if let Some(name) = annotated.filter(|n| regular.contains(&n.as_str())) {
        return Ok(name.clone());
    }
    match regular.as_slice() {
        [only] => Ok((*only).to_owned()),
        _ => Err(ApiError::new(
            salvo::http::StatusCode::BAD_REQUEST,
            "container_required",
            format!("the pod has several containers; choose one with `container`: {}", list()),
        )),
    }
}

pub(crate) fn admission_error(err: &AdmissionError, metrics: &kubelens_core::Metrics) -> ApiError {
    let limit = match err {
        AdmissionError::UserLimit { .. } => "user",
        AdmissionError::UserSourceLimit { .. } => "user_sources",
        _ => "upstream",
    };
    metrics.streams_rejected.inc(&[limit]);
    ApiError::too_many_streams(err.to_string())
}

pub(crate) fn principal(depot: &Depot) -> Result<Principal, ApiError> {
    depot.get_typed::<Principal>().cloned().map_err(|_| ApiError::unauthorized("authentication required"))
}

pub(crate) fn state(depot: &Depot) -> Result<(AppState, LogService), ApiError> {
    let state = depot.get_typed::<AppState>().map_err(|_| ApiError::internal())?.clone();
    let logs = state
        .logs
        .clone()
        .ok_or_else(|| ApiError::unavailable("kubernetes_unavailable", "log streaming is not available: no Kubernetes client"))?;
    Ok((state, (*logs).clone()))
}

pub(crate) fn path_names(req: &Request) -> Result<(String, String), ApiError> {
    let ns = req.param::<String>("ns").unwrap_or_default();
    let name = req.param::<String>("name").unwrap_or_default();
    // Malformed names are indistinguishable from missing objects: 404, and they never reach
    // an API URL.
    if !kubelens_core::names::is_dns1123_label(&ns) || !kubelens_core::names::is_dns1123_subdomain(&name) {
        return Err(ApiError::not_found("pod"));
    }
    Ok((ns, name))
}

// ---- wire formats ---------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusData<'a> {
    state: SourceState,
    pod: &'a str,
    container: &'a str,
    reason: StatusReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
}

/// The `log` event of a pod-stream line: the hub's shared encoding when it made one and the
/// request needs nothing the shared encoding lacks (it carries `level`, never `fields`).
pub(crate) fn log_line_frame(line: &LogLine, json: LineJsonOptions) -> SseFrame {
    match &line.encoded {
        Some(frame) if json == SHARED_JSON => SseFrame::EncodedLog(frame.clone()),
        _ => log_frame_with_id(line, line.id().to_string(), json),
    }
}

/// A `log` event for `line` under `id` (a pod line id, or an app stream's merged id). The
/// `data:` JSON is the same in both, so it is cut out of the hub's shared encoding when there
/// is one and `json` is what it was made with (a refcount, no copy): only the id is per viewer.
fn log_frame_with_id(line: &LogLine, id: String, json: LineJsonOptions) -> SseFrame {
    let shared = line.encoded.as_ref().filter(|_| json == SHARED_JSON).and_then(encoded_data);
    let data = shared.unwrap_or_else(|| Bytes::from(json_of(line, json)));
    SseFrame::Event { id: Some(id), event: "log", data }
}

/// The options of the hub's shared encoding: `level` (computed from the line alone, the same
/// for every viewer), no `fields` (a `fields=true` viewer encodes its own).
const SHARED_JSON: LineJsonOptions = LineJsonOptions { fields: false };

/// The hub's [`LineEncoder`](kubelens_core::logs::hub::LineEncoder): the whole SSE `log`
/// event of a pod-stream line (`id: <line id>\nevent: log\ndata: <json>\n\n`), made once per
/// line and written as is by every viewer of the pod.
pub fn encode_pod_line(line: &LogLine) -> Bytes {
    let mut out = bytes::BytesMut::with_capacity(160 + line.text.len());
    SseFrame::Event { id: Some(line.id().to_string()), event: "log", data: Bytes::from(json_of(line, SHARED_JSON)) }.encode(&mut out);
    out.freeze()
}

fn json_of(line: &LogLine, json: LineJsonOptions) -> Vec<u8> {
    let mut data = Vec::with_capacity(96 + line.text.len());
    write_line_json_with(line, json, &mut data);
    data
}

/// The `data:` JSON inside an [`encode_pod_line`] frame.
fn encoded_data(frame: &Bytes) -> Option<Bytes> {
    const MARK: &[u8] = b"\nevent: log\ndata: ";
    // The id line comes first and never contains a newline, so the first mark is the one.
    let start = frame.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let end = frame.len().checked_sub(2).filter(|&end| end >= start && frame.ends_with(b"\n\n"))?;
    Some(frame.slice(start..end))
}

#[derive(Serialize)]
struct LaggedData {
    /// The id to resume from (also sent as this event's `id`).
    resume: Option<String>,
}

pub(crate) fn status_frame(pod: &str, container: &str, status: &SourceStatus) -> SseFrame {
    let data = StatusData { state: status.state, pod, container, reason: status.reason, exit_code: status.exit_code };
    SseFrame::json("status", None, &data)
}

/// The final frame of a stream that ends for `reason` (server shutdown, token deadline).
fn final_status_frames(pod: String, container: String, reason: StatusReason) -> crate::sse::ShutdownFrames {
    Box::new(move || vec![status_frame(&pod, &container, &SourceStatus::new(SourceState::Ended, reason))])
}

pub(crate) fn shutdown_frames(pod: String, container: String) -> crate::sse::ShutdownFrames {
    final_status_frames(pod, container, StatusReason::Shutdown)
}

/// Responds with a live log stream of `frames`: keepalives, the final status on shutdown or at
/// the caller's token deadline, metrics, write coalescing, and the viewer's admission permit
/// held for the life of the response. `pod`/`container` label the final status.
pub(crate) fn respond_log_stream(
    res: &mut Response,
    app_state: &AppState,
    who: &Principal,
    frames: BoxStream<'static, SseFrame>,
    (pod, container): (String, String),
    viewer: ViewerPermit,
) {
    let logs = &app_state.config.logs;
    let deadline = stream_deadline(who, app_state.config.auth.stream_token_grace);
    SseBody::new(frames, logs.keepalive_interval, app_state.shutdown.clone(), shutdown_frames(pod.clone(), container.clone()))
        .end_at(deadline, final_status_frames(pod, container, StatusReason::TokenExpired))
        .metrics(&app_state.metrics)
        .coalesce(logs.sse_write_coalesce)
        .hold(viewer)
        .respond(res);
}

/// When a stream opened by `who` must end: the token's `exp` plus `grace`
/// (`auth.stream_token_grace`), as a runtime instant. A stream cannot re-authenticate, so it
/// must not outlive its credentials by more than the grace.
pub(crate) fn stream_deadline(who: &Principal, grace: Duration) -> tokio::time::Instant {
    /// Far enough to mean "never" without overflowing `Instant` arithmetic.
    const MAX_WAIT: Duration = Duration::from_secs(365 * 86_400);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let left = u64::try_from(who.stream_deadline(grace).saturating_sub(now)).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_secs(left).min(MAX_WAIT)
}

fn upstream_options(logs: &LogsConfig, query: &LogQuery) -> UpstreamOptions {
    UpstreamOptions { start: query.start, follow: query.follow, max_line_length: logs.max_line_length, ..UpstreamOptions::default() }
}

// ---- pod logs --------------------------------------------------------------------------------

/// `GET /api/v1/namespaces/{ns}/pods/{name}/logs`.
#[handler]
pub async fn pod_logs(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let who = principal(depot)?;
    let (app_state, service) = state(depot)?;
    let (ns, name) = path_names(req)?;
    let logs = &app_state.config.logs;
    let query = LogQuery::parse(req, logs)?;
    let Some(pod) = service.targets.pod(&ns, &name).await? else {
        // The pod no longer exists: serve it from the log archive if it is there (404 if not).
        // An archive read holds one of the caller's stream slots while it runs.
        let viewer = app_state.admission.try_viewer(&who.subject).map_err(|e| admission_error(&e, &app_state.metrics))?;
        return crate::archive::pod_logs_from_archive(req, &app_state, &ns, &name, &query, viewer, res).await;
    };
    let container = choose_container(&pod, query.container.as_deref())?;
    if query.previous {
        let has_previous = matches!(probe_pod(&pod, &container), ContainerProbe::Present(rt) if rt.has_previous);
        if !has_previous {
            return Err(ApiError::new(
                salvo::http::StatusCode::BAD_REQUEST,
                "no_previous_instance",
                format!("container `{container}` has not restarted: there is no previous instance"),
            ));
        }
    }
    let viewer = app_state.admission.try_viewer(&who.subject).map_err(|e| admission_error(&e, &app_state.metrics))?;
    let key = SourceKey { namespace: ns.clone(), pod: name.clone(), container: container.clone(), previous: query.previous };
    tracing::info!(namespace = %ns, pod = %name, container = %container, follow = query.follow, "log stream opened");

    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !query.follow && (query.download || !accept.contains("text/event-stream")) {
        // A one-shot holds the caller's stream slot while it runs, like a stream.
        let permit = service.admission.try_upstream().map_err(|e| admission_error(&e, &app_state.metrics))?;
        let upstream = service.upstream.stream(key, upstream_options(logs, &query), Some(permit));
        return one_shot(upstream, &ns, (&name, &container), &query, logs.max_tail_lines, viewer, res).await;
    }
    if !query.follow {
        // A finite SSE read is not shared: the hub's upstreams follow.
        let permit = service.admission.try_upstream().map_err(|e| admission_error(&e, &app_state.metrics))?;
        let source = LogSource::new(name.clone(), container.clone());
        let (filter, json) = (query.filter.clone(), query.json);
        let frames = service
            .upstream
            .stream(key, upstream_options(logs, &query), Some(permit))
            .filter_map(move |event| {
                let frame = match event {
                    UpstreamEvent::Line(raw) => {
                        let line = LogLine::from_raw(raw, Arc::clone(&source));
                        filter.accepts(&line.text).then(|| log_line_frame(&line, json))
                    }
                    UpstreamEvent::Status(status) => Some(status_frame(&source.pod, &source.container, &status)),
                    UpstreamEvent::CaughtUp => None,
                };
                futures::future::ready(frame)
            })
            .boxed();
        respond_log_stream(res, &app_state, &who, frames, (name, container), viewer);
        return Ok(());
    }
    // Shared follow upstream through the hub. A new upstream needs a slot; joining an open
    // (or lingering) one does not, so "no slot" is known before answering.
    // The hub's upstream feeds an archive tap (one per upstream, not per viewer): a pod
    // deleted while being followed keeps its tail, and its capture reuses these lines
    // instead of fetching them again (see docs/retention.md).
    let tap = crate::archive::tap_for(&app_state, &pod, &key, true).map(|open_tap| -> UpstreamTap {
        Box::new(move || {
            let tap = open_tap();
            Box::new(move |event: &UpstreamEvent| tap.observe(event))
        })
    });
    let shared = subscribe_shared(
        &service.hub,
        &service.upstream,
        key,
        resume_point(query.start),
        upstream_options(logs, &query),
        service.admission.try_upstream(),
        tap,
    );
    if !shared.admitted {
        return Err(admission_error(&AdmissionError::UpstreamLimit { limit: logs.max_upstream_streams }, &app_state.metrics));
    }
    let subscription = shared.subscription;
    let (pod_name, container_name) = (name.clone(), container.clone());
    let (filter, json) = (query.filter.clone(), query.json);
    let frames = subscription
        .filter_map(move |event| {
            let frame = match event {
                HubEvent::Line(line) => filter.accepts(&line.text).then(|| log_line_frame(&line, json)),
                HubEvent::Status(status) => Some(status_frame(&pod_name, &container_name, &status)),
                HubEvent::CaughtUp => None,
                HubEvent::Lagged { resume } => {
                    let resume = resume.map(|c| c.to_string());
                    Some(SseFrame::json("lagged", resume.clone(), &LaggedData { resume }))
                }
            };
            futures::future::ready(frame)
        })
        .boxed();
    respond_log_stream(res, &app_state, &who, frames, (name, container), viewer);
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OneShotLine<'a> {
    id: String,
    ts: String,
    pod: &'a str,
    container: &'a str,
    line: &'a str,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<FieldMap<'a>>,
}

/// A line's `fields`, serialized as a JSON object in line order.
struct FieldMap<'a>(Vec<(std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>);

impl Serialize for FieldMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A streamed one-shot body is handed to hyper in chunks of about this size: a one-shot costs
/// this much (plus one line) in memory however long the log is, and hyper only asks for the
/// next chunk when the client has taken the previous one (backpressure).
pub(crate) const ONE_SHOT_CHUNK_BYTES: usize = 64 * 1024;

/// What a one-shot body needs to render its lines.
struct OneShotBody {
    upstream: BoxStream<'static, UpstreamEvent>,
    /// A line read before the response was committed (to tell "deleted, nothing to show").
    first: Option<kubelens_core::logs::upstream::RawLine>,
    pod: String,
    container: String,
    filter: LineFilter,
    json: LineJsonOptions,
    download: bool,
    timestamps: bool,
    cap: usize,
    sent: usize,
    /// Lines were written (JSON needs a comma before the next).
    wrote_line: bool,
    done: bool,
    /// The caller's stream slot (and, inside `upstream`, the upstream slot): held exactly as
    /// long as the body.
    _viewer: ViewerPermit,
}

impl OneShotBody {
    fn write_line(&mut self, line: &kubelens_core::logs::upstream::RawLine, out: &mut Vec<u8>) {
        let ts = line.position.ts.to_rfc3339_opts(SecondsFormat::Nanos, true);
        if self.download {
            if self.timestamps {
                out.extend_from_slice(ts.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.text.as_bytes());
            out.push(b'\n');
            return;
        }
        if self.wrote_line {
            out.push(b',');
        }
        self.wrote_line = true;
        let item = OneShotLine {
            id: line_id(&line.position),
            ts,
            pod: &self.pod,
            container: &self.container,
            line: &line.text,
            truncated: line.truncated,
            level: detect_level(&line.text).map(Level::as_str),
            fields: if self.json.fields { shown_fields(&line.text).map(FieldMap) } else { None },
        };
        // Serializing plain strings and bools into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &item);
    }

    fn write_end(&self, more: bool, out: &mut Vec<u8>) {
        if !self.download {
            out.extend_from_slice(if more { b"],\"more\":true}" } else { b"],\"more\":false}" });
        }
    }

    /// The next chunk: every line that is ready, up to [`ONE_SHOT_CHUNK_BYTES`]; waits only
    /// when it has nothing to hand out.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(ONE_SHOT_CHUNK_BYTES.min(16 * 1024));
        if let Some(line) = self.first.take() {
            self.sent += 1;
            self.write_line(&line, &mut out);
        }
        while out.len() < ONE_SHOT_CHUNK_BYTES {
            let event = if out.is_empty() {
                self.upstream.next().await
            } else {
                match self.upstream.next().now_or_never() {
                    Some(event) => event,
                    None => break,
                }
            };
            match event {
                Some(UpstreamEvent::Line(line)) => {
                    if !self.filter.accepts(&line.text) {
                        continue;
                    }
                    if self.sent == self.cap {
                        self.write_end(true, &mut out);
                        self.done = true;
                        break;
                    }
                    self.sent += 1;
                    self.write_line(&line, &mut out);
                }
                Some(UpstreamEvent::Status(status)) if status.state != SourceState::Ended => {}
                Some(UpstreamEvent::CaughtUp) => {}
                Some(UpstreamEvent::Status(_)) | None => {
                    self.write_end(false, &mut out);
                    self.done = true;
                    break;
                }
            }
        }
        if self.done {
            // Drop the upstream (and its slot) now, not when hyper drops the body.
            self.upstream = futures::stream::empty().boxed();
        }
        Some(Bytes::from(out))
    }
}

/// Answers a finite read (`follow=false`, not SSE) as one JSON document
/// (`{"pod","container","lines":[...],"more"}`) or, for downloads, plain text, **streamed**:
/// lines go out as they arrive, never more than about [`ONE_SHOT_CHUNK_BYTES`] at a time in
/// memory. The response is committed once the first line (or the end) is known, so a pod
/// deleted before it had anything to show is still a 404.
pub(crate) async fn one_shot(
    mut upstream: BoxStream<'static, UpstreamEvent>,
    ns: &str,
    (pod, container): (&str, &str),
    query: &LogQuery,
    cap: u32,
    viewer: ViewerPermit,
    res: &mut Response,
) -> Result<(), ApiError> {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let mut first = None;
    let mut ended = false;
    while let Some(event) = upstream.next().await {
        match event {
            UpstreamEvent::Line(line) => {
                if cap > 0 && query.filter.accepts(&line.text) {
                    first = Some(line);
                    break;
                }
            }
            UpstreamEvent::Status(status) if status.state == SourceState::Ended => {
                if matches!(status.reason, StatusReason::Deleted | StatusReason::Hidden) {
                    return Err(ApiError::not_found("pod"));
                }
                ended = true;
                break;
            }
            UpstreamEvent::Status(_) | UpstreamEvent::CaughtUp => {}
        }
    }
    let body = OneShotBody {
        upstream: if ended { futures::stream::empty().boxed() } else { upstream },
        first,
        pod: pod.to_owned(),
        container: container.to_owned(),
        filter: query.filter.clone(),
        json: query.json,
        download: query.download,
        timestamps: query.timestamps,
        cap,
        sent: 0,
        wrote_line: false,
        done: false,
        _viewer: viewer,
    };
    let head = if query.download {
        res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        let filename = format!("attachment; filename=\"{ns}_{pod}_{container}.log\"");
        if let Ok(value) = HeaderValue::from_str(&filename) {
            res.headers_mut().insert(CONTENT_DISPOSITION, value);
        }
        Vec::new()
    } else {
        res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        let mut head = b"{\"pod\":".to_vec();
        let _ = serde_json::to_writer(&mut head, pod);
        head.extend_from_slice(b",\"container\":");
        let _ = serde_json::to_writer(&mut head, container);
        head.extend_from_slice(b",\"lines\":[");
        head
    };
    let chunks = futures::stream::once(futures::future::ready(Bytes::from(head)))
        .chain(futures::stream::unfold(body, |mut body| async move {
            let chunk = body.next_chunk().await?;
            Some((chunk, body))
        }))
        .filter(|chunk| futures::future::ready(!chunk.is_empty()))
        .map(Ok::<_, std::convert::Infallible>);
    res.stream(chunks);
    Ok(())
}

// ---- app logs --------------------------------------------------------------------------------

/// `GET /api/v1/namespaces/{ns}/apps/{name}/logs`.
///
/// Every source goes through the hub and into an [`AppLogMerge`] (timestamp order within the
/// watermark, exact resume ids). Sources join when a pod appears (the app's pods are re-read
/// every second) and leave when theirs ends. A source that cannot get an upstream slot, or
/// would take the caller's app streams past `logs.max_sources_per_user` sources, gets a
/// `status` event (`ended`, `too_many_streams`) instead of failing the whole stream (429 when
/// no source of the app fits).
#[handler]
pub async fn app_logs(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let who = principal(depot)?;
    let (app_state, service) = state(depot)?;
    let ns = req.param::<String>("ns").unwrap_or_default();
    let app = req.param::<String>("name").unwrap_or_default();
    if !kubelens_core::names::is_dns1123_label(&ns) || !kubelens_core::names::is_dns1123_subdomain(&app) {
        return Err(ApiError::not_found("app"));
    }
    let logs = &app_state.config.logs;
    if query_str(req, "previous").is_some_and(|v| v == "true" || v == "1") {
        return Err(ApiError::bad_request("`previous` is only supported on pod log streams"));
    }
    // App ids differ from pod ids: parse them here, and keep the pod parser for the rest.
    let bad_id = |e: kubelens_core::logs::LogError| ApiError::new(salvo::http::StatusCode::BAD_REQUEST, "bad_event_id", e.to_string());
    let resume_text = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query_str(req, "lastEventId"))
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let resume = resume_text.as_deref().map(AppLogId::parse).transpose().map_err(bad_id)?;
    if resume.is_some() {
        req.headers_mut().remove("last-event-id");
        req.queries_mut().remove("lastEventId");
    }
    let query = LogQuery::parse(req, logs)?;
    let pods = service.targets.app_pods(&ns, &app).await?.ok_or_else(|| ApiError::not_found("app"))?;
    let viewer = app_state.admission.try_viewer(&who.subject).map_err(|e| admission_error(&e, &app_state.metrics))?;
    tracing::info!(namespace = %ns, app = %app, pods = pods.len(), "app log stream opened");
    let start = match (&resume, query.start) {
        (Some(_), _) => None,
        (None, StartAt::Since(ts)) => Some(ResumePoint::After(SourceCursor::from_time(ts.into()))),
        (None, other) => Some(resume_point(other)),
    };
    let admitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let over_user_sources = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let open = {
        let (service, options) = (service.clone(), upstream_options(logs, &query));
        let (admitted, refused) = (Arc::clone(&admitted), Arc::clone(&refused));
        let (admission, subject, over) = (app_state.admission.clone(), who.subject.clone(), Arc::clone(&over_user_sources));
        // One source slot of the user per source in this stream (`logs.max_sources_per_user`),
        // shared by a source's re-opens (after `lagged`) so a re-open never needs a new slot.
        // Dead entries are pruned on every open: the map is bounded by the live sources.
        let mut slots: HashMap<SourceKey, std::sync::Weak<ViewerPermit>> = HashMap::new();
        Box::new(move |key: &SourceKey, from: ResumePoint| {
            slots.retain(|_, slot| slot.strong_count() > 0);
            let slot = match slots.get(key).and_then(std::sync::Weak::upgrade) {
                Some(slot) => slot,
                None => match admission.try_source(&subject) {
                    Ok(permit) => {
                        let slot = Arc::new(permit);
                        slots.insert(key.clone(), Arc::downgrade(&slot));
                        slot
                    }
                    Err(_) => {
                        tracing::warn!(namespace = %key.namespace, pod = %key.pod, "app stream source not admitted (per-user source cap)");
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        over.store(true, std::sync::atomic::Ordering::Relaxed);
                        let status = SourceStatus::new(SourceState::Ended, StatusReason::TooManyStreams);
                        return futures::stream::iter([HubEvent::Status(status)]).boxed();
                    }
                },
            };
            let permit = service.admission.try_upstream();
            let shared = subscribe_shared(&service.hub, &service.upstream, key.clone(), from, options.clone(), permit, None);
            if shared.admitted {
                admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                tracing::warn!(namespace = %key.namespace, pod = %key.pod, "app stream source not admitted (upstream cap)");
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // The source slot lives as long as this source's subscription.
            shared.subscription.map(move |event| {
                let _slot = &slot;
                event
            })
            .boxed()
        })
    };
    let members = {
        let (targets, ns, app) = (service.targets.clone(), ns.clone(), app.clone());
        Box::new(move || {
            let read = targets.app_pods(&ns, &app);
            async move {
                read.await.unwrap_or_else(|err| {
                    tracing::debug!(error = %err, "app pod refresh failed");
                    None
                })
            }
            .boxed()
        })
    };
    let options = AppStreamOptions {
        merge: MergeConfig::from_logs(logs),
        resume,
        start,
        follow: query.follow,
        poll_interval: DEFAULT_MEMBER_POLL_INTERVAL,
    };
    let mut stream = AppLogStream::new(ns, options, members, open);
    stream.join(&pods);
    let ordering = std::sync::atomic::Ordering::Relaxed;
    if refused.load(ordering) > 0 && admitted.load(ordering) == 0 {
        let err = if over_user_sources.load(ordering) {
            AdmissionError::UserSourceLimit { limit: logs.max_sources_per_user }
        } else {
            AdmissionError::UpstreamLimit { limit: logs.max_upstream_streams }
        };
        return Err(admission_error(&err, &app_state.metrics));
    }
    let (filter, json) = (query.filter.clone(), query.json);
    let frames = stream.into_stream().filter_map(move |event| {
        let frame = match event {
            AppEvent::Line { line, id } => filter.accepts(&line.text).then(|| log_frame_with_id(&line, id.to_string(), json)),
            AppEvent::Status { source, status } => Some(status_frame(&source.pod, &source.container, &status)),
        };
        futures::future::ready(frame)
    });
    respond_log_stream(res, &app_state, &who, frames.boxed(), (app, String::new()), viewer);
    Ok(())
}

/// Routes of the log endpoints, to be mounted under `/api/v1`.
pub fn routes() -> Vec<Router> {
    vec![
        Router::with_path("namespaces/{ns}/pods/{name}/logs").get(pod_logs),
        Router::with_path("namespaces/{ns}/apps/{name}/logs").get(app_logs),
    ]
}

/// Read timeout of the log-stream client: an idle follow stream sends nothing, so the
/// general request timeout would cut it every few seconds. A dead connection is still
/// noticed within this bound (and the stream reconnects losslessly).
pub const LOG_STREAM_READ_TIMEOUT: Duration = Duration::from_secs(300);

impl LogService {
    /// Counts upstream streams, reconnects and lines received in `metrics`.
    pub fn with_metrics(mut self, metrics: &kubelens_core::Metrics) -> Self {
        self.upstream = self.upstream.with_metrics(metrics.clone());
        self
    }

    /// The log service over a Kubernetes client configuration and the discovery cache: its
    /// own client for log streams (long read timeout), pod/app lookups and liveness checks from
    /// `cluster` under `policy` (no API request per check; hidden pods are 404 and end their
    /// streams as `hidden`), and the caps from `config`.
    pub fn new(
        mut kube_config: kube::Config,
        config: &kubelens_core::Config,
        cluster: kubelens_core::cluster::Cluster,
        policy: Arc<kubelens_core::policy::AccessPolicy>,
    ) -> Result<Self, kube::Error> {
        kube_config.read_timeout = Some(LOG_STREAM_READ_TIMEOUT);
        let client = kube::Client::try_from(kube_config)?;
        let lookup = Arc::new(kubelens_core::logs::upstream::CachedContainerLookup::new(cluster.clone(), Arc::clone(&policy)));
        Ok(Self {
            upstream: PodLogUpstream::new(client, lookup),
            admission: StreamAdmission::from_config(&config.logs),
            targets: LogTargets::new(cluster, policy),
            hub: LogHub::new(
                kubelens_core::logs::hub::HubConfig::from_logs(&config.logs)
                    .with_encoder(kubelens_core::logs::hub::LineEncoder::new(encode_pod_line)),
                Arc::new(|task| {
                    tokio::spawn(task);
                }),
            ),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn encoded(frame: &SseFrame) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        frame.encode(&mut out);
        out.to_vec()
    }

    #[test]
    fn a_shared_encoding_is_byte_identical_to_encoding_per_viewer() {
        let source = LogSource::new("web-1", "app");
        let texts = ["plain", "quote \" back\\slash \u{1} tab\t", "data: \nevent: log\ndata: x", "", r#"{"level":"warn","app":"web"}"#, "ERROR x=1"];
        for text in texts {
            for json in [LineJsonOptions { fields: false }, LineJsonOptions { fields: true }] {
                let mut line = LogLine::from_raw(
                    kubelens_core::logs::upstream::RawLine {
                        position: LinePosition { ts: kubelens_core::logs::LogTimestamp::from_unix_nanos(1_700_000_000_123_456_789).into(), index: 2 },
                        text: text.into(),
                        truncated: true,
                    },
                    Arc::clone(&source),
                );
                let pod_frame = encoded(&log_line_frame(&line, json));
                let app_frame = encoded(&log_frame_with_id(&line, "app-id".into(), json));
                line.encoded = Some(encode_pod_line(&line));
                // A fields=true viewer cannot use the shared encoding (it has no `fields`).
                assert_eq!(matches!(log_line_frame(&line, json), SseFrame::EncodedLog(_)), !json.fields);
                assert_eq!(encoded(&log_line_frame(&line, json)), pod_frame, "pod frame of {text:?} ({json:?})");
                assert_eq!(encoded(&log_frame_with_id(&line, "app-id".into(), json)), app_frame, "app frame of {text:?} ({json:?})");
                let data = String::from_utf8(pod_frame).unwrap();
                assert_eq!(data.contains(r#""level":"#), text.contains("warn") || text.starts_with("ERROR"), "{data}");
                assert_eq!(data.contains(r#""fields":{"level":"warn","app":"web"}"#), json.fields && text.contains("warn"), "{data}");
            }
        }
    }

    fn pod(containers: &[&str], annotation: Option<&str>) -> Pod {
        let mut value = serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": containers.iter().map(|c| serde_json::json!({"name": c})).collect::<Vec<_>>(),
                     "initContainers": [{"name": "init"}]},
        });
        if let Some(a) = annotation {
            value["metadata"]["annotations"] = serde_json::json!({ DEFAULT_CONTAINER_ANNOTATION: a });
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn container_defaults_follow_kubectl() {
        assert_eq!(choose_container(&pod(&["app"], None), None).unwrap(), "app");
        assert_eq!(choose_container(&pod(&["app", "sidecar"], Some("sidecar")), None).unwrap(), "sidecar");
        let err = choose_container(&pod(&["app", "sidecar"], None), None).unwrap_err();
        assert_eq!(err.code, "container_required");
        assert!(err.message.contains("app, sidecar, init"), "{}", err.message);
        // An annotation naming a missing container is ignored, not trusted.
        assert_eq!(choose_container(&pod(&["app", "b"], Some("gone")), None).unwrap_err().code, "container_required");
        assert_eq!(choose_container(&pod(&["app", "b"], None), Some("init")).unwrap(), "init");
        assert_eq!(choose_container(&pod(&["app"], None), Some("nope")).unwrap_err().code, "unknown_container");
    }

    fn query(download: bool) -> LogQuery {
        LogQuery {
            container: None,
            start: StartAt::Tail(10),
            follow: false,
            timestamps: false,
            previous: false,
            download,
            filter: LineFilter::new(None, None).unwrap(),
            json: LineJsonOptions::default(),
        }
    }

    fn raw_line(sec: i64, text: &str) -> UpstreamEvent {
        UpstreamEvent::Line(kubelens_core::logs::upstream::RawLine {
            position: LinePosition { ts: DateTime::from_timestamp(sec, 0).unwrap(), index: 0 },
            text: text.to_owned(),
            truncated: false,
        })
    }

    async fn next_data(body: &mut salvo::http::ResBody) -> Option<Bytes> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.next()).await.expect("a chunk in time")?.unwrap();
            if let Ok(data) = frame.into_data() {
                return Some(data);
            }
        }
    }

    /// A one-shot is streamed: its first lines leave while the upstream is still reading,
    /// and it holds the caller's stream slot until the body is done.
    #[tokio::test]
    async fn one_shots_stream_their_lines_and_hold_the_callers_slot() {
        let admission = StreamAdmission::new(10, 1);
        let (mut tx, rx) = futures::channel::mpsc::channel::<UpstreamEvent>(16);
        let big = "x".repeat(1000);
        for i in 0..3 {
            tx.try_send(raw_line(i, &big)).unwrap();
        }
        let mut res = Response::new();
        let viewer = admission.try_viewer("u").unwrap();
        tokio::time::timeout(Duration::from_secs(5), one_shot(rx.boxed(), "ns", ("p", "c"), &query(false), 100, viewer, &mut res))
            .await
            .expect("the response is committed before the upstream ends")
            .unwrap();
        let mut body = res.take_body();
        let mut text = String::new();
        while text.matches(&big).count() < 3 {
            text.push_str(std::str::from_utf8(&next_data(&mut body).await.unwrap()).unwrap());
        }
        assert!(text.starts_with(r#"{"pod":"p","container":"c","lines":[{"id":"1970-01-01T00:00:00.000000000Z~0""#), "{}", &text[..80]);
        assert_eq!(admission.viewer_streams("u"), 1, "the slot is held while the one-shot runs");
        assert!(admission.try_viewer("u").is_err());
        // The upstream goes on and ends; the document closes.
        tx.try_send(raw_line(3, "last")).unwrap();
        tx.try_send(UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Complete))).unwrap();
        while let Some(chunk) = next_data(&mut body).await {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["lines"].as_array().unwrap().len(), 4);
        assert_eq!(doc["lines"][3]["line"], "last");
        assert_eq!(doc["more"], false);
        drop(body);
        assert_eq!(admission.viewer_streams("u"), 0);
    }

    #[tokio::test]
    async fn one_shots_stop_at_the_cap_and_downloads_are_text() {
        let admission = StreamAdmission::new(10, 5);
        let events: Vec<UpstreamEvent> = (0..5).map(|i| raw_line(i, &format!("l{i}"))).collect();
        let mut res = Response::new();
        one_shot(futures::stream::iter(events).boxed(), "ns", ("p", "c"), &query(false), 2, admission.try_viewer("u").unwrap(), &mut res)
            .await
            .unwrap();
        let mut body = res.take_body();
        let mut text = String::new();
        while let Some(chunk) = next_data(&mut body).await {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!((doc["lines"].as_array().unwrap().len(), doc["more"].as_bool()), (2, Some(true)), "{text}");
        let events: Vec<UpstreamEvent> = (0..2).map(|i| raw_line(i, &format!("l{i}"))).collect();
        let mut res = Response::new();
        one_shot(futures::stream::iter(events).boxed(), "ns", ("p", "c"), &query(true), 10, admission.try_viewer("u").unwrap(), &mut res)
            .await
            .unwrap();
        let mut body = res.take_body();
        let mut text = String::new();
        while let Some(chunk) = next_data(&mut body).await {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(text, "l0\nl1\n");
        // Deleted before anything was shown: 404, nothing streamed.
        let gone = vec![UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Deleted))];
        let mut res = Response::new();
        let err = one_shot(futures::stream::iter(gone).boxed(), "ns", ("p", "c"), &query(false), 10, admission.try_viewer("u").unwrap(), &mut res)
            .await
            .unwrap_err();
        assert_eq!(err.code, "not_found");
    }

    #[test]
    fn resume_ids_parse_exactly_and_reject_garbage() {
        let id = LinePosition { ts: DateTime::parse_from_rfc3339("2026-01-30T10:00:00.123456789Z").unwrap().with_timezone(&Utc), index: 3 };
        let text = line_id(&id);
        assert_eq!(text, "2026-01-30T10:00:00.123456789Z~3");
        assert_eq!(parse_resume_id(&text).unwrap(), StartAt::After(id));
        assert_eq!(parse_resume_id("2026-01-30T10:00:00.123456789Z").unwrap(), StartAt::Since(id.ts));
        for bad in ["", "garbage", "2026-01-30T10:00:00Z~", "2026-01-30T10:00:00Z~-1", "2026-01-30T10:00:00Z~99999999999", "x~1", &"9".repeat(100)] {
            assert_eq!(parse_resume_id(bad).unwrap_err().code, "bad_event_id", "{bad}");
        }
    }
}
