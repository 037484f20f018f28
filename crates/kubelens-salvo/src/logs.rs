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
use kubelens_core::logs::LogTimestamp;
pub use kubelens_core::logs::app::AppPod;
use kubelens_core::logs::around::{AroundError, AroundPlan, AroundStart, DEFAULT_AROUND_CONTEXT, MAX_AROUND_CONTEXT, open_around, take_lines};
use kubelens_core::logs::app::{AppEvent, AppLogStream, AppStreamOptions, DEFAULT_MEMBER_POLL_INTERVAL, UpstreamTap, subscribe_shared};
use kubelens_core::logs::hub::{HubEvent, LogHub, ResumePoint};
use kubelens_core::logs::json::{LineJsonOptions, write_line_json_with};
use kubelens_core::logs::structured::{FieldFilters, Level, detect_level, shown_fields};
use kubelens_core::logs::merge::MergeConfig;
use kubelens_core::logs::{AppLogId, LineId, LogLine, LogSource, SourceCursor};
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
    /// `around=<id>`: open the log at a line (see [`AroundQuery`]).
    pub around: Option<AroundQuery>,
    /// `batch=true`: an SSE response sends its lines as `logs` events, several lines each
    /// ([`SseBody::batch_lines`]).
    pub batch: bool,
}

/// `around=<id>&before=N&after=M`: the `N` lines before the line `<id>`, the line, and the `M`
/// lines after it (or, with `follow=true`, live from right after it). See `docs/logs.md`,
/// "Open at a line".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AroundQuery {
    /// The target id as given (a pod line id or an app id: each endpoint parses its own).
    pub id: String,
    /// Lines before the target (default [`DEFAULT_AROUND_CONTEXT`], at most [`MAX_AROUND_CONTEXT`]).
    pub before: u32,
    /// Lines after the target (same default and bound; not allowed with `follow=true`).
    pub after: u32,
    /// Set by the handler once the target is found: false when the scan or ring bound kept
    /// some of the `before` lines out (the document then says `"beforeComplete": false`).
    pub before_complete: bool,
}

/// The error code of every `around` parameter problem.
pub const BAD_AROUND: &str = "bad_around";

fn bad_around(message: impl Into<String>) -> ApiError {
    ApiError::new(salvo::http::StatusCode::BAD_REQUEST, BAD_AROUND, message)
}

/// `around`, `before`, `after` of `req`, checked against each other and against the start and
/// filter parameters `around` replaces. `resume_given`: a `Last-Event-ID`/`lastEventId` came
/// with the request (app streams take theirs out before this runs). A resume id wins: it is
/// how `EventSource` reconnects an `around` stream (same URL plus `Last-Event-ID`), so the
/// answer is `None` (resume exactly after that id) once the parameters are checked.
fn parse_around(req: &Request, resume_given: bool) -> Result<Option<AroundQuery>, ApiError> {
    let count = |name: &str| -> Result<Option<u32>, ApiError> {
        match query_str(req, name) {
            None => Ok(None),
            // Digits only (`u32::from_str` would take a `+`).
            Some(text) => match text.parse::<u32>() {
                Ok(n) if n <= MAX_AROUND_CONTEXT && text.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
                _ => Err(bad_around(format!("`{name}` must be an integer from 0 to {MAX_AROUND_CONTEXT}"))),
            },
        }
    };
    let (before, after) = (count("before")?, count("after")?);
    let Some(id) = query_str(req, "around") else {
        if before.is_some() || after.is_some() {
            return Err(bad_around("`before` and `after` need `around`"));
        }
        return Ok(None);
    };
    if id.is_empty() {
        return Err(bad_around("`around` must be a line id"));
    }
    let conflicts = ["since", "sinceSeconds", "tailLines", "grep", "grepExclude", "level"];
    if let Some(name) = conflicts.iter().find(|name| query_str(req, name).is_some()) {
        return Err(bad_around(format!("`around` cannot be combined with `{name}`: it shows the log as it is around one line")));
    }
    if req.queries().keys().any(|k| k.starts_with(FIELD_FILTER_PREFIX)) {
        return Err(bad_around("`around` cannot be combined with `field.*` filters: it shows the log as it is around one line"));
    }
    let follow = parse_bool(req, "follow", false)?;
    if follow && after.is_some() {
        return Err(bad_around("`after` does not apply with `follow=true`: the stream continues live from right after the line"));
    }
    let resumed = resume_given || req.headers().contains_key("last-event-id") || query_str(req, "lastEventId").is_some_and(|s| !s.is_empty());
    if resumed {
        return Ok(None);
    }
    Ok(Some(AroundQuery {
        id: id.to_owned(),
        before: before.unwrap_or(DEFAULT_AROUND_CONTEXT),
        after: after.unwrap_or(DEFAULT_AROUND_CONTEXT),
        before_complete: true,
    }))
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
        Self::parse_with(req, logs, false)
    }

    /// [`LogQuery::parse`], told whether a resume id came with the request (app streams take
    /// theirs out of the request before parsing the rest).
    pub fn parse_with(req: &Request, logs: &LogsConfig, resume_given: bool) -> Result<Self, ApiError> {
        let around = parse_around(req, resume_given)?;
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
        let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let asked_download = parse_bool(req, "download", false)?;
        let download = asked_download || (accept.contains("text/plain") && !accept.contains("text/event-stream"));
        // A download is a finite read of the whole log: it does not follow unless told to,
        // and `download=true&follow=true` contradicts itself.
        // A link to a line (`around`) also opens a finite read unless asked to follow (its
        // reconnects too).
        let follow = parse_bool(req, "follow", !asked_download && query_str(req, "around").is_none())?;
        if asked_download && follow {
            return Err(ApiError::bad_request("`download=true` is a finite read: it cannot be combined with `follow=true`"));
        }
        let start = match (resume, since, tail) {
            (Some(resume), _, _) => resume,
            (None, Some(ts), _) => StartAt::Since(ts),
            (None, None, Some(n)) => StartAt::Tail(n),
            // A download without a start is the whole log (constant memory: it is streamed).
            (None, None, None) if download && !follow => StartAt::Beginning,
            (None, None, None) => StartAt::Tail(logs.default_tail_lines.min(logs.max_tail_lines)),
        };
        let (level, fields) = structured_filters(req)?;
        Ok(Self {
            container,
            start,
            follow,
            timestamps: parse_bool(req, "timestamps", false)?,
            previous: parse_bool(req, "previous", false)?,
            download,
            filter: LineFilter::new(query_str(req, "grep"), query_str(req, "grepExclude"))
                .map_err(|e| ApiError::new(salvo::http::StatusCode::BAD_REQUEST, "bad_pattern", e.to_string()))?
                .with_min_level(level)
                .with_fields(fields),
            json: LineJsonOptions { fields: parse_bool(req, "fields", false)? },
            around,
            batch: parse_bool(req, "batch", false)?,
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

/// The `data:` JSON inside an [`encode_pod_line`] frame (a slice of it: no copy).
fn encoded_data(frame: &Bytes) -> Option<Bytes> {
    crate::sse::encoded_log_parts(frame).map(|(_, data)| frame.slice_ref(data))
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
/// held for the life of the response. `pod`/`container` label the final status; `batch`
/// sends the lines as `logs` events (`batch=true`).
pub(crate) fn respond_log_stream(
    res: &mut Response,
    app_state: &AppState,
    who: &Principal,
    frames: BoxStream<'static, SseFrame>,
    (pod, container): (String, String),
    viewer: ViewerPermit,
    batch: bool,
) {
    let logs = &app_state.config.logs;
    let deadline = stream_deadline(who, app_state.config.auth.stream_token_grace);
    let revoked = final_status_frames(pod.clone(), container.clone(), StatusReason::Revoked);
    let frames = crate::authz::recheck_while_open(frames, app_state, who, res, revoked);
    SseBody::new(frames, logs.keepalive_interval, app_state.shutdown.clone(), shutdown_frames(pod.clone(), container.clone()))
        .end_at(deadline, final_status_frames(pod, container, StatusReason::TokenExpired))
        .metrics(&app_state.metrics)
        .coalesce(logs.sse_write_coalesce)
        .batch_lines(batch)
        .hold(viewer)
        .audit(crate::audit::take(res))
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
        return crate::archive::pod_logs_from_archive(req, (&app_state, &who), &ns, &name, &query, viewer, res).await;
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
    if let Some(around) = &query.around {
        let target = LineId::parse(&around.id).map_err(bad_event_id)?;
        let sse = query.follow || (!query.download && accept.contains("text/event-stream"));
        return pod_around(&app_state, &service, &who, &pod, key, target, &query, sse, viewer, res).await;
    }
    if !query.follow && (query.download || !accept.contains("text/event-stream")) {
        // A one-shot holds the caller's stream slot while it runs, like a stream.
        let permit = service.admission.try_upstream().map_err(|e| admission_error(&e, &app_state.metrics))?;
        // A text download without timestamps needs no line positions: it reads what `kubectl
        // logs` reads (no `timestamps=true`, a fifth fewer bytes from the kubelet), unless
        // its start needs positions (`since`, a resume id).
        let plain_tail = match query.start {
            StartAt::Beginning => Some(None),
            StartAt::Tail(n) => Some(Some(n)),
            StartAt::Since(_) | StartAt::After(_) => None,
        };
        let upstream = match plain_tail.filter(|_| query.download && !query.timestamps) {
            Some(tail) => service.upstream.plain_read(key, tail, logs.max_line_length, Some(permit)),
            None => service.upstream.stream(key, upstream_options(logs, &query), Some(permit)),
        };
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
        respond_log_stream(res, &app_state, &who, frames, (name, container), viewer, query.batch);
        return Ok(());
    }
    let frames = hub_frames(&app_state, &service, &pod, key, resume_point(query.start), &query)?;
    respond_log_stream(res, &app_state, &who, frames, (name, container), viewer, query.batch);
    Ok(())
}

/// A follow stream of `key` through the hub from `from`, as SSE frames.
///
/// Shared follow upstream through the hub. A new upstream needs a slot; joining an open
/// (or lingering) one does not, so "no slot" is known before answering.
/// The hub's upstream feeds an archive tap (one per upstream, not per viewer): a pod
/// deleted while being followed keeps its tail, and its capture reuses these lines
/// instead of fetching them again (see docs/retention.md).
fn hub_frames(
    app_state: &AppState,
    service: &LogService,
    pod: &Pod,
    key: SourceKey,
    from: ResumePoint,
    query: &LogQuery,
) -> Result<BoxStream<'static, SseFrame>, ApiError> {
    let logs = &app_state.config.logs;
    let (name, container) = (key.pod.clone(), key.container.clone());
    let tap = crate::archive::tap_for(app_state, pod, &key, true).map(|open_tap| -> UpstreamTap {
        Box::new(move || {
            let tap = open_tap();
            Box::new(move |event: &UpstreamEvent| tap.observe(event))
        })
    });
    let shared = subscribe_shared(
        &service.hub,
        &service.upstream,
        key,
        from,
        upstream_options(logs, query),
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
    Ok(frames)
}

// ---- open at a line (`around`) -----------------------------------------------------------------

pub(crate) fn bad_event_id(e: kubelens_core::logs::LogError) -> ApiError {
    ApiError::new(salvo::http::StatusCode::BAD_REQUEST, "bad_event_id", e.to_string())
}

/// The HTTP answer to an [`AroundError`].
pub(crate) fn around_error(err: &AroundError, app_state: &AppState) -> ApiError {
    use salvo::http::StatusCode;
    match err {
        AroundError::Rotated => ApiError::new(
            StatusCode::GONE,
            "line_rotated",
            "this line is no longer in the log: the log now starts after it (rotated away, or the link is from an earlier container instance)",
        ),
        AroundError::NotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            "line_not_found",
            "the log has no line with this id: it covers the line's time, but no line has this timestamp and index (is the link for another pod or container?)",
        ),
        AroundError::Gone(_) => ApiError::not_found("pod"),
        AroundError::ScanLimit(bytes) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "around_scan_limit",
            format!("reaching this line would scan more than {bytes} bytes of log within its own second"),
        ),
        AroundError::Unavailable => {
            let limit = app_state.config.logs.max_upstream_streams;
            admission_error(&AdmissionError::UpstreamLimit { limit }, &app_state.metrics)
        }
        _ => ApiError::internal(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AroundData<'a> {
    around: &'a str,
    before: usize,
    before_complete: bool,
}

/// The first event of an `around` SSE answer: which line it opens at, how many lines come
/// before it, and whether those are all that were asked for (the byte bounds can cut them).
fn around_frame(id: &str, before: usize, before_complete: bool) -> SseFrame {
    SseFrame::json("around", None, &AroundData { around: id, before, before_complete })
}

/// The lines of a found target as log frames of `source` (ids are the lines' own).
fn around_line_frames(items: Vec<UpstreamEvent>, source: &Arc<LogSource>, json: LineJsonOptions) -> Vec<SseFrame> {
    items
        .into_iter()
        .filter_map(|event| match event {
            UpstreamEvent::Line(raw) => Some(log_line_frame(&LogLine::from_raw(raw, Arc::clone(source)), json)),
            _ => None,
        })
        .collect()
}

/// What a found target becomes: the one-shot document (`{"pod","container","around",
/// "lines","more"}`, or text for downloads) or, with `sse`, the `before` lines and the target
/// as `log` events followed by `after` more lines and `ended` — or by `follow` (a live stream
/// resumed right after the target), when given. `prefix` frames come first (the archive's
/// `status`).
pub(crate) struct AroundAnswer<'a> {
    pub(crate) ns: &'a str,
    pub(crate) pod: &'a str,
    pub(crate) container: &'a str,
    pub(crate) sse: bool,
    pub(crate) prefix: Vec<SseFrame>,
}

pub(crate) async fn respond_around(
    found: kubelens_core::logs::around::Found<UpstreamEvent, BoxStream<'static, UpstreamEvent>>,
    answer: AroundAnswer<'_>,
    follow: Option<BoxStream<'static, SseFrame>>,
    query: &LogQuery,
    (app_state, who): (&AppState, &Principal),
    viewer: ViewerPermit,
    res: &mut Response,
) -> Result<(), ApiError> {
    let Some(around) = query.around.as_ref() else { return Err(ApiError::internal()) };
    let before = found.before.len();
    tracing::info!(namespace = %answer.ns, pod = %answer.pod, before, before_complete = found.before_complete, "log opened at a line");
    if !answer.sse {
        let mut query = query.clone();
        if let Some(a) = query.around.as_mut() {
            a.before_complete = found.before_complete;
        }
        let cap = u32::try_from(before).unwrap_or(u32::MAX).saturating_add(1).saturating_add(around.after);
        let events = futures::stream::iter(found.before).chain(futures::stream::once(futures::future::ready(found.target))).chain(found.rest);
        return one_shot(events.boxed(), answer.ns, (answer.pod, answer.container), &query, cap, viewer, res).await;
    }
    let source = LogSource::new(answer.pod, answer.container);
    let mut head = answer.prefix;
    head.push(around_frame(&around.id, before, found.before_complete));
    head.extend(around_line_frames(found.before, &source, query.json));
    head.extend(around_line_frames(vec![found.target], &source, query.json));
    let frames = match follow {
        Some(live) => {
            drop(found.rest);
            futures::stream::iter(head).chain(live).boxed()
        }
        None => {
            let json = query.json;
            let end = status_frame(answer.pod, answer.container, &SourceStatus::new(SourceState::Ended, StatusReason::Complete));
            let after_source = Arc::clone(&source);
            let after = take_lines(found.rest, usize::try_from(around.after).unwrap_or(usize::MAX)).filter_map(move |event| {
                futures::future::ready(match event {
                    UpstreamEvent::Line(raw) => Some(log_line_frame(&LogLine::from_raw(raw, Arc::clone(&after_source)), json)),
                    // The read's own end is replaced by the one below (the `after` cut ends it too).
                    UpstreamEvent::Status(status) if status.state != SourceState::Ended => Some(status_frame(&after_source.pod, &after_source.container, &status)),
                    _ => None,
                })
            });
            futures::stream::iter(head).chain(after).chain(futures::stream::once(futures::future::ready(end))).boxed()
        }
    };
    respond_log_stream(res, app_state, who, frames, (answer.pod.to_owned(), answer.container.to_owned()), viewer, query.batch);
    Ok(())
}

/// `around` on a live pod (current or `previous` instance): finite reads of the container
/// log (see [`open_around`]), then the one-shot, a finite SSE stream, or with `follow=true`
/// the hub from right after the target.
#[allow(clippy::too_many_arguments)]
async fn pod_around(
    app_state: &AppState,
    service: &LogService,
    who: &Principal,
    pod: &Pod,
    key: SourceKey,
    target: LineId,
    query: &LogQuery,
    sse: bool,
    viewer: ViewerPermit,
    res: &mut Response,
) -> Result<(), ApiError> {
    let logs = &app_state.config.logs;
    let before = query.around.as_ref().map_or(0, |a| a.before);
    let open = |start: AroundStart| {
        // Each read holds an upstream slot; a re-read without one is skipped (see open_around).
        let permit = service.admission.try_upstream().ok()?;
        let start = match start {
            AroundStart::From(t) => StartAt::Since(t.into()),
            AroundStart::Beginning => StartAt::Beginning,
        };
        let options = UpstreamOptions { start, follow: false, max_line_length: logs.max_line_length, ..UpstreamOptions::default() };
        Some(service.upstream.stream(key.clone(), options, Some(permit)))
    };
    let plan = AroundPlan::new(usize::try_from(before).unwrap_or(usize::MAX));
    let found = open_around(open, target, target.ts, plan).await.map_err(|e| around_error(&e, app_state))?;
    let follow = if query.follow {
        // Exact resume right after the target, shared through the hub like any follow.
        let from = ResumePoint::After(SourceCursor::after(target));
        Some(hub_frames(app_state, service, pod, key.clone(), from, query)?)
    } else {
        None
    };
    let answer = AroundAnswer { ns: &key.namespace, pod: &key.pod, container: &key.container, sse, prefix: Vec::new() };
    respond_around(found, answer, follow, query, (app_state, who), viewer, res).await
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
    /// A download's source ended before the end of the log (e.g. the pod was deleted
    /// mid-read, or the archive failed): the body is aborted after what was read, so the
    /// client sees a failed transfer instead of a file that looks whole.
    cut_short: Option<StatusReason>,
    /// The caller's stream slot (and, inside `upstream`, the upstream slot): held exactly as
    /// long as the body.
    _viewer: ViewerPermit,
    /// The audit record of this read: `logs_closed` with what was sent when the body drops.
    audit: Option<kubelens_core::audit::LogAccessGuard>,
    /// Its lines-and-bytes counter.
    sent_counter: Option<kubelens_core::audit::SentCounter>,
}

impl OneShotBody {
    fn write_line(&mut self, line: &kubelens_core::logs::upstream::RawLine, out: &mut Vec<u8>) {
        if self.download {
            if self.timestamps {
                LogTimestamp::from(line.position.ts).write_rfc3339(out);
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
            ts: line.position.ts.to_rfc3339_opts(SecondsFormat::Nanos, true),
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
        let sent_before = self.sent;
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
                Some(UpstreamEvent::Status(status)) if self.download && !ends_a_whole_read(status.reason) => {
                    self.cut_short = Some(status.reason);
                    self.done = true;
                    break;
                }
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
        if let Some(counter) = &self.sent_counter {
            counter.lines((self.sent - sent_before) as u64);
            counter.bytes(out.len() as u64);
        }
        Some(Bytes::from(out))
    }
}

/// A finite read that ended for this reason read the log to its end.
fn ends_a_whole_read(reason: StatusReason) -> bool {
    matches!(reason, StatusReason::Complete | StatusReason::Exited)
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
    // A download has no line cap: it is the whole log (or the requested tail), streamed with
    // backpressure, so its memory does not grow with its length.
    let cap = if query.download { usize::MAX } else { usize::try_from(cap).unwrap_or(usize::MAX) };
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
    let mut body = OneShotBody {
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
        cut_short: None,
        _viewer: viewer,
        sent_counter: None,
        audit: None,
    };
    if let Some(guard) = crate::audit::take(res) {
        body.sent_counter = Some(guard.counter());
        body.audit = Some(guard.opened());
    }
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
        if let Some(around) = &query.around {
            head.extend_from_slice(b",\"around\":");
            let _ = serde_json::to_writer(&mut head, &around.id);
            if !around.before_complete {
                head.extend_from_slice(b",\"beforeComplete\":false");
            }
        }
        head.extend_from_slice(b",\"lines\":[");
        head
    };
    if let Some(counter) = &body.sent_counter {
        counter.bytes(head.len() as u64);
    }
    let chunks = futures::stream::once(futures::future::ready(Ok(Bytes::from(head))))
        .chain(futures::stream::unfold(Some(body), |body| async move {
            let mut body = body?;
            match body.next_chunk().await {
                Some(chunk) => Some((Ok(chunk), Some(body))),
                None => body.cut_short.take().map(|reason| {
                    tracing::warn!(pod = %body.pod, container = %body.container, reason = ?reason, lines = body.sent, "download cut short: aborting the response");
                    (Err(std::io::Error::other(format!("the log read ended early ({reason:?})"))), None)
                }),
            }
        }))
        .filter(|chunk| futures::future::ready(chunk.as_ref().map_or(true, |c| !c.is_empty())));
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
    let query = LogQuery::parse_with(req, logs, resume.is_some())?;
    let around = query.around.as_ref().map(|a| parse_app_around_id(&a.id)).transpose()?;
    let pods = service.targets.app_pods(&ns, &app).await?.ok_or_else(|| ApiError::not_found("app"))?;
    let viewer = app_state.admission.try_viewer(&who.subject).map_err(|e| admission_error(&e, &app_state.metrics))?;
    tracing::info!(namespace = %ns, app = %app, pods = pods.len(), "app log stream opened");
    if let Some(target) = around {
        return app_around(&app_state, &service, &who, (&ns, &app), &pods, target, &query, viewer, res).await;
    }
    let start = match (&resume, query.start) {
        (Some(_), _) => None,
        (None, StartAt::Since(ts)) => Some(ResumePoint::After(SourceCursor::from_time(ts.into()))),
        (None, other) => Some(resume_point(other)),
    };
    let events = app_events(&app_state, &service, &who, (&ns, &app), &pods, (resume, start), &query)?;
    if !query.follow && query.download {
        let format = AppDownloadFormat::parse(req)?;
        respond_app_download(res, &ns_app_filename(&app, format), events, &query, format, viewer);
        return Ok(());
    }
    respond_log_stream(res, &app_state, &who, app_frames(events, &query), (app, String::new()), viewer, query.batch);
    Ok(())
}

/// The merged stream of an app's `pods` from `resume` (or `start` for sources without a
/// cursor); 429 when no source of the app could be admitted.
fn app_events(
    app_state: &AppState,
    service: &LogService,
    who: &Principal,
    (ns, app): (&str, &str),
    pods: &[AppPod],
    (resume, start): (Option<AppLogId>, Option<ResumePoint>),
    query: &LogQuery,
) -> Result<BoxStream<'static, AppEvent>, ApiError> {
    let logs = &app_state.config.logs;
    let (ns, app) = (ns.to_owned(), app.to_owned());
    let admitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let over_user_sources = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let open = {
        let (service, options) = (service.clone(), upstream_options(logs, query));
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
    stream.join(pods);
    let ordering = std::sync::atomic::Ordering::Relaxed;
    if refused.load(ordering) > 0 && admitted.load(ordering) == 0 {
        let err = if over_user_sources.load(ordering) {
            AdmissionError::UserSourceLimit { limit: logs.max_sources_per_user }
        } else {
            AdmissionError::UpstreamLimit { limit: logs.max_upstream_streams }
        };
        return Err(admission_error(&err, &app_state.metrics));
    }
    Ok(stream.into_stream().boxed())
}

/// An app's merged events as SSE frames, with the query's line filter applied.
fn app_frames(events: BoxStream<'static, AppEvent>, query: &LogQuery) -> BoxStream<'static, SseFrame> {
    let (filter, json) = (query.filter.clone(), query.json);
    events
        .filter_map(move |event| {
            let frame = match event {
                AppEvent::Line { line, id } => filter.accepts(&line.text).then(|| log_frame_with_id(&line, id.to_string(), json)),
                AppEvent::Status { source, status } => Some(status_frame(&source.pod, &source.container, &status)),
            };
            futures::future::ready(frame)
        })
        .boxed()
}

/// The target of an app `around`: an app id's frontier (`<ts>~<tag>~<k>`, behind segments
/// allowed and ignored). A bare time or a pod line id names no line of a merged log: 400.
fn parse_app_around_id(text: &str) -> Result<kubelens_core::logs::id::MergeKey, ApiError> {
    let id = AppLogId::parse(text).map_err(bad_event_id)?;
    // `AppLogId::parse` rejects pod line ids; what parses without a `~` is a bare time.
    if !text.contains('~') {
        return Err(ApiError::new(
            salvo::http::StatusCode::BAD_REQUEST,
            "bad_event_id",
            "invalid log event id: a bare time names no line; `around` takes an app line id `<ts>~<tag>~<k>`",
        ));
    }
    Ok(id.frontier)
}

/// `around` on an app: finite merged reads of every container of every current pod (private
/// upstreams, not the hub: a shared upstream follows and would never end), the `before`
/// lines in merge order, the target, then `after` lines and `ended` — or, with `follow=true`,
/// the app's live stream resumed right after the target (its frontier). Every source must be
/// admitted (a merged read missing a source would not be exact): 429 otherwise.
#[allow(clippy::too_many_arguments)]
async fn app_around(
    app_state: &AppState,
    service: &LogService,
    who: &Principal,
    (ns, app): (&str, &str),
    pods: &[AppPod],
    target: kubelens_core::logs::id::MergeKey,
    query: &LogQuery,
    viewer: ViewerPermit,
    res: &mut Response,
) -> Result<(), ApiError> {
    let logs = &app_state.config.logs;
    let Some(around) = query.around.as_ref() else { return Err(ApiError::internal()) };
    let in_app = pods.iter().any(|p| p.containers.iter().any(|c| kubelens_core::logs::SourceTag::of(&p.name, c) == target.tag));
    if !in_app {
        return Err(ApiError::new(
            salvo::http::StatusCode::BAD_REQUEST,
            "id_not_in_app",
            "this id's line comes from no current pod and container of this app (an id of another app or pod, or of a pod that has gone)",
        ));
    }
    let open = |start: AroundStart| -> Option<BoxStream<'static, AppEvent>> {
        let first = match start {
            AroundStart::From(t) => ResumePoint::After(SourceCursor::from_time(t)),
            AroundStart::Beginning => ResumePoint::Beginning,
        };
        let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opener = {
            let (service, refused) = (service.clone(), Arc::clone(&refused));
            let (admission, subject, max_line_length) = (app_state.admission.clone(), who.subject.clone(), logs.max_line_length);
            Box::new(move |key: &SourceKey, from: ResumePoint| -> BoxStream<'static, HubEvent> {
                let start = match from {
                    ResumePoint::Beginning => StartAt::Beginning,
                    ResumePoint::Tail(n) => StartAt::Tail(n),
                    ResumePoint::After(cursor) => cursor.to_start_at(),
                };
                let (Ok(slot), Ok(permit)) = (admission.try_source(&subject), service.admission.try_upstream()) else {
                    refused.store(true, std::sync::atomic::Ordering::Relaxed);
                    return futures::stream::iter([HubEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::TooManyStreams))]).boxed();
                };
                let options = UpstreamOptions { start, follow: false, max_line_length, ..UpstreamOptions::default() };
                let source = LogSource::new(key.pod.clone(), key.container.clone());
                service
                    .upstream
                    .stream(key.clone(), options, Some(permit))
                    .map(move |event| {
                        let _slot = &slot;
                        match event {
                            UpstreamEvent::Line(raw) => HubEvent::Line(Arc::new(LogLine::from_raw(raw, Arc::clone(&source)))),
                            UpstreamEvent::Status(status) => HubEvent::Status(status),
                            UpstreamEvent::CaughtUp => HubEvent::CaughtUp,
                        }
                    })
                    .boxed()
            })
        };
        let members = Box::new(|| futures::future::ready(None).boxed());
        let options = AppStreamOptions {
            merge: MergeConfig::from_logs(logs),
            resume: None,
            start: Some(first),
            follow: false,
            poll_interval: DEFAULT_MEMBER_POLL_INTERVAL,
        };
        let mut stream = AppLogStream::new(ns.to_owned(), options, members, opener);
        stream.join(pods);
        // A merged read that lacks a source is not exact: no read at all instead.
        (!refused.load(std::sync::atomic::Ordering::Relaxed)).then(|| stream.into_stream())
    };
    let plan = AroundPlan::new(usize::try_from(around.before).unwrap_or(usize::MAX));
    let found = open_around(open, target, target.ts, plan).await.map_err(|e| match e {
        // An app has no single "first line": a line not in the merged read is not found.
        AroundError::Rotated => around_error(&AroundError::NotFound, app_state),
        other => around_error(&other, app_state),
    })?;
    tracing::info!(namespace = %ns, app = %app, before = found.before.len(), before_complete = found.before_complete, "app log opened at a line");
    let json = query.json;
    let frame = move |event: AppEvent| match event {
        AppEvent::Line { line, id } => Some(log_frame_with_id(&line, id.to_string(), json)),
        AppEvent::Status { source, status } => (status.state != SourceState::Ended).then(|| status_frame(&source.pod, &source.container, &status)),
    };
    let mut head = vec![around_frame(&around.id, found.before.len(), found.before_complete)];
    head.extend(found.before.into_iter().chain(std::iter::once(found.target)).filter_map(frame));
    let frames = if query.follow {
        drop(found.rest);
        // Everything with a merge key after the target: the frontier alone says exactly that.
        let resume = AppLogId { frontier: target, behind: Vec::new() };
        let live = app_frames(app_events(app_state, service, who, (ns, app), pods, (Some(resume), None), query)?, query);
        futures::stream::iter(head).chain(live).boxed()
    } else {
        let end = status_frame(app, "", &SourceStatus::new(SourceState::Ended, StatusReason::Complete));
        let after = take_lines(found.rest, usize::try_from(around.after).unwrap_or(usize::MAX)).filter_map(move |e| futures::future::ready(frame(e)));
        futures::stream::iter(head).chain(after).chain(futures::stream::once(futures::future::ready(end))).boxed()
    };
    respond_log_stream(res, app_state, who, frames, (app.to_owned(), String::new()), viewer, query.batch);
    Ok(())
}

/// The shape of an app download: `text` (kubectl's `--prefix` lines) or `ndjson`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppDownloadFormat {
    Text,
    Ndjson,
}

impl AppDownloadFormat {
    /// `format=text|ndjson`, else `Accept: application/x-ndjson`, else text.
    fn parse(req: &Request) -> Result<Self, ApiError> {
        match query_str(req, "format") {
            Some("text") => Ok(Self::Text),
            Some("ndjson") => Ok(Self::Ndjson),
            Some(_) => Err(ApiError::bad_request("`format` must be text or ndjson")),
            None => {
                let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
                Ok(if accept.contains("application/x-ndjson") { Self::Ndjson } else { Self::Text })
            }
        }
    }
}

fn ns_app_filename(app: &str, format: AppDownloadFormat) -> String {
    match format {
        AppDownloadFormat::Text => format!("attachment; filename=\"{app}.log\""),
        AppDownloadFormat::Ndjson => format!("attachment; filename=\"{app}.ndjson\""),
    }
}

/// A source of an app download ended this way after reading all it had: a finished read,
/// an exited container, or a pod that left the app (deleted) — the app's log is still whole.
fn ends_an_app_source_whole(reason: StatusReason) -> bool {
    matches!(reason, StatusReason::Complete | StatusReason::Exited | StatusReason::Deleted)
}

/// Writes one app download item: a line (text: `[pod/<pod>/<container>] [<ts> ]<line>`, as
/// `kubectl logs --prefix [--timestamps]`; NDJSON: the one-shot line object with the app
/// id), or, in NDJSON, a source status. Returns the reason when a source ended without its
/// whole log (the text download is then aborted; NDJSON carries the status and goes on).
fn write_app_download_item(event: &AppEvent, query: &LogQuery, format: AppDownloadFormat, out: &mut Vec<u8>) -> Option<StatusReason> {
    match event {
        AppEvent::Line { line, id } => {
            if !query.filter.accepts(&line.text) {
                return None;
            }
            match format {
                AppDownloadFormat::Text => {
                    out.extend_from_slice(b"[pod/");
                    out.extend_from_slice(line.source.pod.as_bytes());
                    out.push(b'/');
                    out.extend_from_slice(line.source.container.as_bytes());
                    out.extend_from_slice(b"] ");
                    if query.timestamps {
                        line.ts.write_rfc3339(out);
                        out.push(b' ');
                    }
                    out.extend_from_slice(line.text.as_bytes());
                }
                AppDownloadFormat::Ndjson => {
                    let item = OneShotLine {
                        id: id.to_string(),
                        ts: line.ts.to_string(),
                        pod: &line.source.pod,
                        container: &line.source.container,
                        line: &line.text,
                        truncated: line.truncated,
                        level: detect_level(&line.text).map(Level::as_str),
                        fields: if query.json.fields { shown_fields(&line.text).map(FieldMap) } else { None },
                    };
                    // Serializing plain strings and bools into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut *out, &item);
                }
            }
            out.push(b'\n');
            None
        }
        AppEvent::Status { source, status } => {
            let cut = (status.state == SourceState::Ended && !ends_an_app_source_whole(status.reason)).then_some(status.reason);
            if format == AppDownloadFormat::Ndjson && (status.state == SourceState::Ended || cut.is_some()) {
                let item = serde_json::json!({ "status": { "pod": source.pod, "container": source.container, "state": status.state, "reason": status.reason } });
                let _ = serde_json::to_writer(&mut *out, &item);
                out.push(b'\n');
                return None;
            }
            cut
        }
    }
}

/// Streams an app download: lines in merge order as they come, batched up to
/// [`ONE_SHOT_CHUNK_BYTES`] per write, pulled only as fast as the client reads (memory stays
/// at one batch plus the merge's bounded buffers).
fn respond_app_download(
    res: &mut Response,
    disposition: &str,
    events: BoxStream<'static, AppEvent>,
    query: &LogQuery,
    format: AppDownloadFormat,
    viewer: ViewerPermit,
) {
    let content_type = match format {
        AppDownloadFormat::Text => "text/plain; charset=utf-8",
        AppDownloadFormat::Ndjson => "application/x-ndjson",
    };
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(disposition) {
        res.headers_mut().insert(CONTENT_DISPOSITION, value);
    }
    /// Where the download body is: reading (with the caller's slot and the audit record,
    /// both held as long as it reads), or about to fail after the lines already sent.
    enum Body {
        Reading(BoxStream<'static, AppEvent>, ViewerPermit, Option<Box<kubelens_core::audit::LogAccessGuard>>),
        Failing(StatusReason),
    }
    let query = query.clone();
    let audit = crate::audit::take(res).map(|guard| Box::new(guard.opened()));
    let sent = audit.as_ref().map(|guard| guard.counter());
    // Fused: a batch ends on "nothing ready", which may have been the end; the next batch's
    // read must then see the end again, not poll a finished stream.
    let events = events.fuse().boxed();
    let chunks = futures::stream::unfold(Some(Body::Reading(events, viewer, audit)), move |body| {
        let (query, sent) = (query.clone(), sent.clone());
        async move {
            let (mut events, viewer, audit) = match body? {
                Body::Reading(events, viewer, audit) => (events, viewer, audit),
                Body::Failing(reason) => {
                    tracing::warn!(reason = ?reason, "app download cut short: aborting the response");
                    return Some((Err(std::io::Error::other(format!("a source of the app ended early ({reason:?})"))), None));
                }
            };
            let mut out = Vec::with_capacity(16 * 1024);
            let mut lines = 0u64;
            let count = |out: &Vec<u8>, lines: u64| {
                if let Some(sent) = &sent {
                    sent.lines(lines);
                    sent.bytes(out.len() as u64);
                }
            };
            while out.len() < ONE_SHOT_CHUNK_BYTES {
                let event = if out.is_empty() { events.next().await } else { events.next().now_or_never().flatten() };
                let Some(event) = event else { break };
                let before = out.len();
                let cut = write_app_download_item(&event, &query, format, &mut out);
                if matches!(event, AppEvent::Line { .. }) && out.len() > before {
                    lines += 1;
                }
                if let Some(reason) = cut {
                    // What was read goes out first; the error follows on the next poll.
                    count(&out, lines);
                    return Some((Ok(Bytes::from(out)), Some(Body::Failing(reason))));
                }
            }
            count(&out, lines);
            if out.is_empty() {
                return None;
            }
            Some((Ok(Bytes::from(out)), Some(Body::Reading(events, viewer, audit))))
        }
    });
    res.stream(chunks);
}

/// Routes of the log endpoints, to be mounted under `/api/v1`.
pub fn routes() -> Vec<Router> {
    vec![
        Router::with_path("namespaces/{ns}/pods/{name}/logs").get(pod_logs),
        Router::with_path("namespaces/{ns}/apps/{name}/logs").get(app_logs),
    ]
}

impl LogService {
    /// Counts upstream streams, reconnects and lines received in `metrics`.
    pub fn with_metrics(mut self, metrics: &kubelens_core::Metrics) -> Self {
        self.upstream = self.upstream.with_metrics(metrics.clone());
        self
    }

    /// The log service over the discovery cache: log streams through `cluster`'s
    /// (rate-limited) client, pod/app lookups and liveness checks from `cluster` under
    /// `policy` (no API request per check; hidden pods are 404 and end their streams as
    /// `hidden`), and the caps from `config`.
    pub fn new(
        config: &kubelens_core::Config,
        cluster: kubelens_core::cluster::Cluster,
        policy: Arc<kubelens_core::policy::AccessPolicy>,
    ) -> Self {
        // The cluster's client: log requests share the `kubernetes.qps` limiter with every
        // other API call. A dead connection is noticed by the upstream's `stall_timeout`.
        let client = cluster.client();
        let lookup = Arc::new(kubelens_core::logs::upstream::CachedContainerLookup::new(cluster.clone(), Arc::clone(&policy)));
        Self {
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
        }
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
            around: None,
            batch: false,
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
        // A download is the whole log: the one-shot cap (1 here) does not cut it.
        let events: Vec<UpstreamEvent> = (0..3).map(|i| raw_line(i, &format!("l{i}"))).collect();
        let mut res = Response::new();
        one_shot(futures::stream::iter(events).boxed(), "ns", ("p", "c"), &query(true), 1, admission.try_viewer("u").unwrap(), &mut res)
            .await
            .unwrap();
        let mut body = res.take_body();
        let mut text = String::new();
        while let Some(chunk) = next_data(&mut body).await {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(text, "l0\nl1\nl2\n");
        // Deleted before anything was shown: 404, nothing streamed.
        let gone = vec![UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, StatusReason::Deleted))];
        let mut res = Response::new();
        let err = one_shot(futures::stream::iter(gone).boxed(), "ns", ("p", "c"), &query(false), 10, admission.try_viewer("u").unwrap(), &mut res)
            .await
            .unwrap_err();
        assert_eq!(err.code, "not_found");
    }

    /// A download whose source ends before the end of the log (here: deleted mid-read) is
    /// aborted after the lines it had, never ended like a whole file; a JSON one-shot ends.
    #[tokio::test]
    async fn a_download_cut_short_fails_the_transfer_instead_of_looking_whole() {
        let admission = StreamAdmission::new(10, 5);
        for (download, reason, fails) in [
            (true, StatusReason::Deleted, true),
            (true, StatusReason::Complete, false),
            (false, StatusReason::Deleted, false),
        ] {
            let mut events: Vec<UpstreamEvent> = (0..2).map(|i| raw_line(i, &format!("l{i}"))).collect();
            events.push(UpstreamEvent::Status(SourceStatus::new(SourceState::Ended, reason)));
            let mut res = Response::new();
            one_shot(futures::stream::iter(events).boxed(), "ns", ("p", "c"), &query(download), 10, admission.try_viewer("u").unwrap(), &mut res)
                .await
                .unwrap();
            let mut body = res.take_body();
            let (mut text, mut failed) = (String::new(), false);
            while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap() {
                match frame {
                    Ok(frame) => text.push_str(std::str::from_utf8(&frame.into_data().unwrap_or_default()).unwrap()),
                    Err(_) => failed = true,
                }
            }
            assert_eq!(failed, fails, "download={download} {reason:?}: {text}");
            assert!(text.contains("l1"), "{text}");
        }
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
