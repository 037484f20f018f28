//! The audit trail of log reads (see `kubelens_core::audit` for the events and schema): a
//! hoop in front of the `/api/v1` routes that, for every log route (`…/pods/{name}/logs`,
//! `…/apps/{name}/logs`, their searches), leaves a [`LogAccessGuard`] in the response's
//! extensions. The body that streams the answer takes it ([`take`]): `logs_opened` then, and
//! `logs_closed` with the lines and bytes it sent when it is dropped. A request answered with
//! an error never takes it, and the hoop records `logs_refused` with the status instead.

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
    let pending = PendingLogAccess(Arc::new(Mutex::new(Some(LogAccessGuard::new(access)))));
    res.extensions.insert(pending.clone());
    ctrl.call_next(req, depot, res).await;
    let left = pending.0.lock().ok().and_then(|mut g| g.take());
    if let Some(guard) = left {
        guard.refused(res.status_code.map_or(200, |s| s.as_u16()));
    }
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
