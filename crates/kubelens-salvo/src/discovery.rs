//! Discovery endpoints: namespaces, pods, apps, and the pod change stream (SSE).
//!
//! ```text
//! GET /api/v1/namespaces
//! GET /api/v1/namespaces/{ns}/pods
//! GET /api/v1/namespaces/{ns}/pods/watch        (SSE: added | modified | deleted | resync | status)
//! GET /api/v1/namespaces/{ns}/pods/{name}
//! GET /api/v1/namespaces/{ns}/apps
//! GET /api/v1/namespaces/{ns}/apps/{name}[?kind=Deployment]
//! ```
//!
//! Every handler runs the core [`AccessPolicy`] first: malformed names are 400, namespaces
//! outside the allowlist and hidden objects are 404 like missing ones. Query parameters are
//! strict: an unknown one is 400, so a typo never silently widens or changes a query. All
//! answers come from the watch-fed caches (no API request per call).

use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use kubelens_core::api::{AppKind, PodEvent};
use kubelens_core::cluster::{Cluster, ClusterError};
use kubelens_core::policy::{AccessError, AccessPolicy, AllowedNamespace};
use salvo::http::header::{CACHE_CONTROL, HeaderValue};
use salvo::prelude::*;
use salvo::sse::{SseEvent, SseKeepAlive};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// `retry:` sent at the start of the change stream: how long browsers wait before
/// reconnecting after the stream drops.
pub const WATCH_RETRY: Duration = Duration::from_secs(2);

/// Query parameter the auth hoop consumes on SSE routes (browser `EventSource` cannot send
/// an `Authorization` header).
const TICKET_PARAM: &str = "ticket";

/// The discovery routes, to be pushed into the (authenticated) `api/v1` router.
pub fn routes() -> Router {
    Router::with_path("namespaces")
        .get(list_namespaces)
        .push(
            Router::with_path("{ns}/pods")
                .get(list_pods)
                // Before `{name}`: a pod literally named `watch` is reachable through the list.
                .push(Router::with_path("watch").get(watch_pods))
                .push(Router::with_path("{name}").get(get_pod)),
        )
        .push(Router::with_path("{ns}/apps").get(list_apps).push(Router::with_path("{name}").get(get_app)))
}

impl From<AccessError> for ApiError {
    fn from(err: AccessError) -> Self {
        match err {
            AccessError::BadName { .. } => ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", err.to_string()),
            AccessError::NotFound { what } => ApiError::not_found(what),
            // `AccessError` is non-exhaustive; an unknown refusal fails closed.
            _ => ApiError::not_found("object"),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(err: ClusterError) -> Self {
        match err {
            ClusterError::Access(access) => access.into(),
            ClusterError::AmbiguousApp { .. } => ApiError::new(StatusCode::BAD_REQUEST, "ambiguous_app", err.to_string()),
            ClusterError::NotSynced => ApiError::unavailable("kubernetes_unavailable", err.to_string()),
            other => {
                tracing::warn!(error = %other, "Kubernetes discovery failed");
                ApiError::unavailable("kubernetes_unavailable", "Kubernetes is not reachable")
            }
        }
    }
}

/// The state, after making sure the auth hoop ran (fails closed with 401 otherwise).
pub(crate) fn state(depot: &Depot) -> Result<&AppState, ApiError> {
    crate::auth::principal(depot)?;
    depot.get_typed::<AppState>().map_err(|_| {
        tracing::error!("discovery: no AppState in the depot");
        ApiError::internal()
    })
}

pub(crate) fn cluster(state: &AppState) -> Result<&Cluster, ApiError> {
    state
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("kubernetes_unavailable", "Kubernetes is not configured or not reachable"))
}

/// Rejects query parameters outside `allowed` (and repeated ones), naming the first offender
/// only when it is short and printable.
pub(crate) fn strict_query(req: &Request, allowed: &[&str]) -> Result<(), ApiError> {
    for (key, values) in req.queries().iter_all() {
        if !allowed.contains(&key.as_str()) {
            let shown = if key.len() <= 40 && key.chars().all(|c| c.is_ascii_graphic()) { key.as_str() } else { "…" };
            return Err(ApiError::bad_request(format!("unknown query parameter `{shown}`")));
        }
        if values.len() > 1 {
            return Err(ApiError::bad_request(format!("query parameter `{key}` given more than once")));
        }
    }
    Ok(())
}

/// The path parameter `name`, percent-decoded by salvo. Missing → 404 (no such route).
pub(crate) fn param<'a>(req: &'a Request, name: &str) -> Result<&'a str, ApiError> {
    req.params().get(name).map(String::as_str).ok_or_else(|| ApiError::not_found("object"))
}

pub(crate) fn namespace(policy: &AccessPolicy, req: &Request) -> Result<AllowedNamespace, ApiError> {
    Ok(policy.namespace(param(req, "ns")?)?)
}

/// `GET /api/v1/namespaces`: allowlisted namespaces that exist.
#[handler]
pub async fn list_namespaces(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    strict_query(req, &[])?;
    let state = state(depot)?;
    let mut namespaces = cluster(state)?.namespaces(&state.policy)?;
    // Per-user RBAC: only the namespaces whose pods this user may list (one cached review
    // each, sent concurrently).
    let principal = crate::auth::principal(depot)?;
    let visible = futures::future::join_all(
        namespaces.iter().map(|ns| crate::authz::check(state, principal, &ns.name, kubelens_core::authz::Permission::ListPods)),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<bool>, ApiError>>()?;
    let mut visible = visible.into_iter();
    namespaces.retain(|_| visible.next().unwrap_or(false));
    res.render(Json(namespaces));
    Ok(())
}

/// `GET /api/v1/namespaces/{ns}/pods`: visible pods, sorted by name.
#[handler]
pub async fn list_pods(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    strict_query(req, &["includeTerminated"])?;
    let state = state(depot)?;
    let ns = namespace(&state.policy, req)?;
    let pods = cluster(state)?.pods(&state.policy, &ns)?;
    let include_terminated = match req.queries().get("includeTerminated").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(_) => return Err(ApiError::bad_request("`includeTerminated` must be true or false")),
    };
    if !include_terminated {
        res.render(Json(pods));
        return Ok(());
    }
    // Recently terminated pods from the log archive (docs/retention.md), after the live ones.
    let archived = crate::archive::terminated_pod_summaries(state, ns.as_str(), &pods).await?;
    let mut items: Vec<serde_json::Value> = pods.iter().filter_map(|p| serde_json::to_value(p).ok()).collect();
    items.extend(archived);
    res.render(Json(items));
    Ok(())
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}`: one pod summary.
#[handler]
pub async fn get_pod(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    strict_query(req, &[])?;
    let state = state(depot)?;
    let ns = namespace(&state.policy, req)?;
    let pod = cluster(state)?.pod(&state.policy, &ns, param(req, "name")?)?;
    res.render(Json(pod));
    Ok(())
}

/// `GET /api/v1/namespaces/{ns}/apps`: visible apps, sorted by name then kind.
#[handler]
pub async fn list_apps(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    strict_query(req, &[])?;
    let state = state(depot)?;
    let ns = namespace(&state.policy, req)?;
    let apps = cluster(state)?.apps(&state.policy, &ns)?;
    res.render(Json(apps));
    Ok(())
}

/// `GET /api/v1/namespaces/{ns}/apps/{name}[?kind=]`: one app with its pods. When several
/// visible apps share the name and `kind` is absent: 400 `ambiguous_app` listing the kinds.
#[handler]
pub async fn get_app(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    strict_query(req, &["kind"])?;
    let state = state(depot)?;
    let ns = namespace(&state.policy, req)?;
    let name = param(req, "name")?;
    // Validate the name before the kind so a bad name is reported as such.
    state.policy.app_name(name)?;
    let kind = match req.queries().get("kind") {
        None => None,
        Some(kind) => Some(kind.parse::<AppKind>().map_err(|e| ApiError::bad_request(e.to_string()))?),
    };
    let app = cluster(state)?.app(&state.policy, &ns, name, kind)?;
    res.render(Json(app));
    Ok(())
}

/// `GET /api/v1/namespaces/{ns}/pods/watch`: SSE stream of pod-list changes.
///
/// Events: `added`, `modified`, `deleted` (data: the pod summary JSON), `resync` (data `{}`:
/// this viewer missed events, reload the list), and a final `status`
/// (`{"state":"ended","reason":"shutdown"}`) when the server shuts down. A comment line is
/// sent every `logs.keepalive_interval` so proxies keep the connection open. Events carry no
/// `id`: there is nothing to resume, a reconnecting client reloads the list. Each open change
/// stream counts against the caller's `logs.max_streams_per_user` (429 `too_many_streams`).
#[handler]
pub async fn watch_pods(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    strict_query(req, &[TICKET_PARAM])?;
    let state = state(depot)?;
    let ns = namespace(&state.policy, req)?;
    let events = cluster(state)?.pod_events(&state.policy, &ns)?;
    // A change stream is a stream like a log stream: it counts against the caller's
    // `logs.max_streams_per_user` (429 beyond) for as long as its body lives.
    let who = crate::auth::principal(depot)?;
    let permit = state.admission.try_viewer(&who.subject).map_err(|e| crate::logs::admission_error(&e, &state.metrics))?;
    let shutdown = state.shutdown.clone();
    let keepalive = state.config.logs.keepalive_interval;
    // Like log streams, a change stream ends at its token's expiry plus the grace.
    let deadline = match depot.get_typed::<kubelens_core::auth::Principal>() {
        Ok(who) => Some(crate::logs::stream_deadline(who, state.config.auth.stream_token_grace)),
        Err(_) => None,
    };
    tracing::debug!(namespace = %ns, "pod change stream opened");
    res.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    // Counted in `sse_streams_open` for as long as the response body lives.
    let open = state.metrics.sse_stream_guard();
    let events = sse_events(events, shutdown, deadline).map(move |event| {
        let _held = (&open, &permit);
        event
    });
    SseKeepAlive::new(events).max_interval(keepalive).comment("keepalive").stream(res);
    Ok(())
}

fn sse_events(
    events: impl Stream<Item = PodEvent> + Send + 'static,
    shutdown: tokio_util::sync::CancellationToken,
    deadline: Option<tokio::time::Instant>,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> + Send + 'static {
    let hello = stream::once(async { SseEvent::default().retry(WATCH_RETRY).comment("pod change stream") });
    let expired = async move {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let stop = futures::future::select(Box::pin(shutdown.cancelled_owned()), Box::pin(expired));
    let changes = events.take_until(stop).map(|event| {
        let data = match event.pod() {
            Some(pod) => serde_json::to_string(pod).unwrap_or_else(|_| "{}".to_owned()),
            None => "{}".to_owned(),
        };
        SseEvent::default().name(event.name()).text(data)
    });
    let end = stream::once(async move {
        let reason = if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) { "token_expired" } else { "shutdown" };
        SseEvent::default().name("status").text(json!({"state": "ended", "reason": reason}).to_string())
    });
    hello.chain(changes).chain(end).map(Ok)
}
