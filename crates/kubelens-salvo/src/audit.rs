//! The audit trail of log reads (see `kubelens_core::audit` for the events and schema): a
//! hoop in front of the `/api/v1` routes that, for every log route (`…/pods/{name}/logs`,
//! `…/apps/{name}/logs`, their searches), leaves a [`LogAccessGuard`] in the response's
//! extensions. The body that streams the answer takes it ([`take`]): `logs_opened` then, and
//! `logs_closed` with the lines and bytes it sent when it is dropped. A request answered with
//! an error never takes it, and the hoop records `logs_refused` with the status instead.
//!
//! It also serves `GET /api/v1/audit`: the stored copy of the trail (`audit.store`), newest
//! first with a cursor, for the admin group only.

use std::sync::{Arc, Mutex};

use kubelens_core::audit::{LogAccess, LogAccessGuard};
use kubelens_core::auth::Principal;
use salvo::prelude::*;

/// The guard waiting in `Response::extensions` for the body (extensions must be `Clone`).
#[derive(Clone)]
struct PendingLogAccess(Arc<Mutex<Option<LogAccessGuard>>>);

/// `(namespace, resource, name, search)` of a log route path, read as salvo routes it
/// ([`crate::authz::path_segments`]).
fn log_route(path: &str) -> Option<(String, &'static str, String, bool)> {
    let segments = crate::authz::path_segments(path);
    let segments: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();
    let (ns, kind, name, search) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, kind, name, "logs"] => (*ns, *kind, *name, false),
        ["api", "v1", "namespaces", ns, kind, name, "logs", "search"] => (*ns, *kind, *name, true),
        _ => return None,
    };
    let resource = match kind {
        "pods" => "pod",
        "apps" => "app",
        _ => return None,
    };
    Some((ns.to_owned(), resource, name.to_owned(), search))
}

/// The pending guard, for the body about to stream: the body marks it opened (`None` when
/// the request is not audited, e.g. in unit tests that call handlers without the hoop).
pub(crate) fn take(res: &Response) -> Option<LogAccessGuard> {
    let pending = res.extensions.get::<PendingLogAccess>()?;
    pending.0.lock().ok()?.take()
}

/// Hoop (after auth and authorization): audits log routes; every other route passes through.
#[handler]
pub async fn log_access(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let Ok(principal) = depot.get_typed::<Principal>() else { return };
    let Ok(state) = depot.get_typed::<crate::state::AppState>() else { return };
    let Some((ns, resource, name, search)) = log_route(req.uri().path()) else { return };
    let query = |key: &str| req.query::<String>(key);
    let mode = if search {
        "search"
    } else if query("download").is_some_and(|v| v == "true" || v == "1") {
        "download"
    } else if query("follow").is_some_and(|v| v == "false" || v == "0") {
        "read"
    } else {
        "stream"
    };
    let access = LogAccess::new(principal, &ns, resource, &name, mode, req.uri().query().unwrap_or(""));
    let pending = PendingLogAccess(Arc::new(Mutex::new(Some(LogAccessGuard::new(state.audit.clone(), access)))));
    res.extensions.insert(pending.clone());
    ctrl.call_next(req, depot, res).await;
    let left = pending.0.lock().ok().and_then(|mut g| g.take());
    if let Some(guard) = left {
        guard.refused(res.status_code.map_or(200, |s| s.as_u16()));
    }
}

/// Default and largest page of `GET /api/v1/audit`.
const DEFAULT_PAGE: usize = 100;

/// Answer of `GET /api/v1/audit`.
#[derive(Debug, serde::Serialize)]
struct AuditPageResponse {
    /// Events, newest first.
    events: Vec<StoredEvent>,
    /// Pass as `before` for the next (older) page; `null` when there is none.
    next: Option<String>,
}

/// One stored event as the API returns it: its fields plus its cursor `id`.
#[derive(Debug, serde::Serialize)]
struct StoredEvent {
    id: String,
    #[serde(flatten)]
    event: kubelens_core::audit::AuditEvent,
}

/// `GET /api/v1/audit?limit&before&user&namespace&event&since&until`: stored audit events,
/// for the admin group only (403 otherwise; 404 when `audit.store` is off).
#[handler]
pub async fn query_audit(req: &mut Request, depot: &mut Depot) -> Result<Json<AuditPageResponse>, crate::error::ApiError> {
    use crate::error::ApiError;
    let principal = crate::auth::principal(depot)?.clone();
    let state = depot.get_typed::<crate::state::AppState>().map_err(|_| ApiError::internal())?;
    if !principal.is_admin {
        return Err(ApiError::forbidden("the audit trail is for the admin group only"));
    }
    let Some(stores) = state.storage.as_ref().filter(|_| state.config.audit.store) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "audit_store_disabled",
            "audit events are not stored (audit.store: false); they are in the process log",
        ));
    };
    let text = |key: &str| req.query::<String>(key).filter(|v| !v.is_empty());
    let limit = match text("limit") {
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=kubelens_core::storage::MAX_AUDIT_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1..={}", kubelens_core::storage::MAX_AUDIT_PAGE)))?,
        None => DEFAULT_PAGE,
    };
    let time = |key: &str| -> Result<Option<i64>, ApiError> {
        text(key)
            .map(|raw| {
                chrono::DateTime::parse_from_rfc3339(&raw)
                    .map(|t| t.timestamp_millis())
                    .map_err(|_| ApiError::bad_request(format!("{key} must be an RFC 3339 time, e.g. 2026-12-03T10:00:00Z")))
            })
            .transpose()
    };
    let event = text("event");
    if let Some(kind) = &event
        && !kubelens_core::audit::EVENT_KINDS.contains(&kind.as_str())
    {
        return Err(ApiError::bad_request(format!("event must be one of {}", kubelens_core::audit::EVENT_KINDS.join(", "))));
    }
    let query = kubelens_core::storage::AuditQuery {
        before: text("before"),
        limit,
        user: text("user"),
        namespace: text("namespace"),
        audit: event,
        since_ms: time("since")?,
        until_ms: time("until")?,
    };
    let page = stores.audit.query(query).await.map_err(|err| match err {
        kubelens_core::storage::StorageError::Invalid(message) => ApiError::bad_request(message),
        other => {
            tracing::warn!(error = %other, "cannot read the stored audit trail");
            ApiError::unavailable("storage_unavailable", "the audit store is unavailable; try again later")
        }
    })?;
    let events = page.events.into_iter().map(|(id, event)| StoredEvent { id, event }).collect();
    Ok(Json(AuditPageResponse { events, next: page.next }))
}

/// The audit route, mounted under `/api/v1` (behind the auth hoop).
pub fn routes() -> Router {
    Router::with_path("audit").get(query_audit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_routes_are_recognised() {
        let route = log_route;
        assert_eq!(route("/api/v1/namespaces/team-a/pods/web-1/logs"), Some(("team-a".into(), "pod", "web-1".into(), false)));
        assert_eq!(route("/api/v1/namespaces/team-a/apps/web/logs/search"), Some(("team-a".into(), "app", "web".into(), true)));
        assert_eq!(route("/api/v1//namespaces/team%2Da/pods/web-1/logs"), Some(("team-a".into(), "pod", "web-1".into(), false)));
        assert_eq!(log_route("/api/v1/namespaces/team-a/pods/web-1"), None);
        assert_eq!(log_route("/api/v1/namespaces/team-a/secrets/x/logs"), None);
        assert_eq!(log_route("/api/v1/me"), None);
    }
}
