//! Per-user RBAC (`auth.kubernetes_authorization.mode: subject_access_review`): the hoop in
//! front of every `/api/v1/namespaces/{ns}/…` route, and the filter of the namespace list.
//!
//! The permission a route needs is read from its path ([`required_permission`]); a path this
//! file does not know needs the strictest one (`get pods/log`), so a new route is never
//! open by omission. Namespaces outside the allowlist are left to the handlers (they answer
//! 404 without asking the API server), so reviews are only sent for allowlisted namespaces.
//! A denial answers 404 like a namespace or pod that does not exist, so what a user may not
//! see is not revealed; a review that cannot be answered answers 503.

use std::pin::Pin;

use futures::StreamExt;
use futures::stream::BoxStream;
use kubelens_core::auth::Principal;
use kubelens_core::authz::{KubernetesAuthorizer, Permission};
use kubelens_core::config::KubernetesAuthorizationMode;
use salvo::prelude::*;

use crate::error::ApiError;
use crate::sse::{ShutdownFrames, SseFrame};
use crate::state::AppState;

/// What the hoop allowed this request after a review, for streams that re-check it.
#[derive(Debug, Clone)]
pub(crate) struct AuthorizedScope {
    namespace: String,
    permission: Permission,
    /// The request's path, for the audit event of a revocation.
    path: String,
}

/// A stream's frames, re-authorized every `cache_ttl` while it is open: when the cluster's
/// RBAC no longer allows the caller, the stream ends with `revoked()`'s frames (`ended` /
/// `revoked`). A review that fails keeps the stream (it was allowed; the next tick asks
/// again) — unlike a new request, which fails closed. Frames pass through unchanged when the
/// request was not reviewed (mode `none`).
pub(crate) fn recheck_while_open(
    frames: BoxStream<'static, SseFrame>,
    state: &AppState,
    who: &Principal,
    res: &Response,
    revoked: ShutdownFrames,
) -> BoxStream<'static, SseFrame> {
    let (Some(scope), Some(authorizer)) = (res.extensions.get::<AuthorizedScope>().cloned(), state.authorizer.clone()) else {
        return frames;
    };
    let every = state.config.auth.kubernetes_authorization.cache_ttl;
    struct Recheck {
        frames: BoxStream<'static, SseFrame>,
        authorizer: KubernetesAuthorizer,
        audit: kubelens_core::audit::AuditTrail,
        who: Principal,
        scope: AuthorizedScope,
        every: std::time::Duration,
        tick: Pin<Box<tokio::time::Sleep>>,
        revoked: Option<ShutdownFrames>,
        tail: std::collections::VecDeque<SseFrame>,
    }
    let recheck = Recheck {
        frames,
        authorizer,
        audit: state.audit.clone(),
        who: who.clone(),
        scope,
        every,
        tick: Box::pin(tokio::time::sleep(every)),
        revoked: Some(revoked),
        tail: std::collections::VecDeque::new(),
    };
    futures::stream::unfold(recheck, |mut r| async move {
        loop {
            if let Some(frame) = r.tail.pop_front() {
                return Some((frame, r));
            }
            // Ended (`revoked` sent): nothing more.
            r.revoked.as_ref()?;
            tokio::select! {
                frame = r.frames.next() => return frame.map(|f| (f, r)),
                () = &mut r.tick => {
                    let next = tokio::time::Instant::now() + r.every;
                    r.tick.as_mut().reset(next);
                    let allowed = r.authorizer.allows(&r.who, &r.scope.namespace, r.scope.permission).await;
                    if let Ok(false) = allowed {
                        tracing::info!(user = %r.who.username, namespace = %r.scope.namespace, "stream ended: the cluster's RBAC no longer allows it");
                        r.audit.denied("rbac_revoked", &r.scope.path, Some((&r.who, &r.scope.namespace)));
                        if let Some(frames) = r.revoked.take() {
                            r.tail.extend(frames());
                        }
                    } else if let Err(err) = allowed {
                        tracing::warn!(error = %err, "re-checking an open stream's access failed; it stays open until the next check");
                    }
                }
            }
        }
    })
    .boxed()
}

/// The segments of a request path exactly as salvo routes them: split on `/`, empty segments
/// skipped (`//` collapses), each percent-decoded. Decisions about a route must read the path
/// this way: on the raw path, `team%2Db` or `namespaces//team-b` would name another namespace
/// than the one the handler serves.
pub(crate) fn path_segments(path: &str) -> Vec<std::borrow::Cow<'_, str>> {
    path.split('/').filter(|s| !s.is_empty()).map(salvo::routing::decode_url_path).collect()
}

/// `(namespace, permission, what a denial calls "not found")` for an `/api/v1` path, or
/// `None` for a path outside `namespaces/{ns}/…`.
pub fn required_permission(path: &str) -> Option<(String, Permission, &'static str)> {
    let segments = path_segments(path);
    let segments: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();
    let ["api", "v1", "namespaces", ns, tail @ ..] = segments.as_slice() else { return None };
    let needs = match tail {
        ["pods" | "apps" | "archived-pods"] | ["pods", "watch"] | ["apps", _] => (Permission::ListPods, "namespace"),
        ["pods", _] | ["pods", _, "details" | "metrics"] => (Permission::GetPods, "pod"),
        [kind, _, "logs", ..] => (Permission::GetPodLogs, if *kind == "apps" { "app" } else { "pod" }),
        // Unknown shapes (and future routes) need the strictest permission.
        _ => (Permission::GetPodLogs, "object"),
    };
    Some(((*ns).to_owned(), needs.0, needs.1))
}

/// Whether `principal` passes the cluster's RBAC for `permission` in `namespace`: always in
/// mode `none`; 503 when the mode is on but no authorizer could be built or the review
/// failed.
pub async fn check(state: &AppState, principal: &Principal, namespace: &str, permission: Permission) -> Result<bool, ApiError> {
    if state.config.auth.kubernetes_authorization.mode == KubernetesAuthorizationMode::None {
        return Ok(true);
    }
    let Some(authorizer) = &state.authorizer else {
        return Err(unavailable());
    };
    authorizer.allows(principal, namespace, permission).await.map_err(|err| {
        tracing::warn!(error = %err, namespace, "SubjectAccessReview failed; refusing the request");
        unavailable()
    })
}

fn unavailable() -> ApiError {
    ApiError::unavailable("authorization_unavailable", "the Kubernetes authorization check is not available; retry shortly")
}

/// Hoop (after the auth hoop): applies [`required_permission`] to namespaced routes.
#[handler]
pub async fn authorize(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let (Ok(state), Ok(principal)) = (depot.get_typed::<AppState>(), depot.get_typed::<Principal>()) else {
        // The auth hoop answered already (or a routing mistake): nothing to authorize.
        return;
    };
    let Some((ns, permission, what)) = required_permission(req.uri().path()) else { return };
    let ns = ns.as_str();
    if state.config.auth.kubernetes_authorization.mode == KubernetesAuthorizationMode::None || state.policy.namespace(ns).is_err() {
        return;
    }
    let outcome = match check(state, principal, ns, permission).await {
        Ok(true) => {
            // Long streams re-check it while they are open (`recheck_while_open`).
            res.extensions.insert(AuthorizedScope { namespace: ns.to_owned(), permission, path: req.uri().path().to_owned() });
            return;
        }
        Ok(false) => {
            tracing::info!(user = %principal.username, namespace = ns, permission = ?permission, "request refused by the cluster's RBAC");
            state.audit.denied("rbac", req.uri().path(), Some((principal, ns)));
            ApiError::not_found(what)
        }
        Err(err) => err,
    };
    outcome.write_to(res);
    ctrl.skip_rest();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_namespaced_route_needs_its_permission() {
        let cases = [
            ("/api/v1/namespaces/team-a/pods", Some(("team-a", Permission::ListPods, "namespace"))),
            ("/api/v1/namespaces/team-a/pods/watch", Some(("team-a", Permission::ListPods, "namespace"))),
            ("/api/v1/namespaces/team-a/apps", Some(("team-a", Permission::ListPods, "namespace"))),
            ("/api/v1/namespaces/team-a/apps/web", Some(("team-a", Permission::ListPods, "namespace"))),
            ("/api/v1/namespaces/team-a/archived-pods", Some(("team-a", Permission::ListPods, "namespace"))),
            ("/api/v1/namespaces/team-a/pods/web-1", Some(("team-a", Permission::GetPods, "pod"))),
            ("/api/v1/namespaces/team-a/pods/web-1/details", Some(("team-a", Permission::GetPods, "pod"))),
            ("/api/v1/namespaces/team-a/pods/web-1/metrics", Some(("team-a", Permission::GetPods, "pod"))),
            ("/api/v1/namespaces/team-a/pods/web-1/logs", Some(("team-a", Permission::GetPodLogs, "pod"))),
            ("/api/v1/namespaces/team-a/pods/web-1/logs/search", Some(("team-a", Permission::GetPodLogs, "pod"))),
            ("/api/v1/namespaces/team-a/apps/web/logs", Some(("team-a", Permission::GetPodLogs, "app"))),
            ("/api/v1/namespaces/team-a/apps/web/logs/search", Some(("team-a", Permission::GetPodLogs, "app"))),
            // As salvo routes them: percent-decoded segments, empty segments skipped.
            ("/api/v1/namespaces/team%2Db/pods", Some(("team-b", Permission::ListPods, "namespace"))),
            ("/api/v1//namespaces//team-b/pods/x/logs", Some(("team-b", Permission::GetPodLogs, "pod"))),
            ("/api/v1/namespaces/team-b/pods/x/%6Cogs", Some(("team-b", Permission::GetPodLogs, "pod"))),
            ("/api/%761/namespaces/team-b/pods", Some(("team-b", Permission::ListPods, "namespace"))),
            // Unknown shapes fail towards the strictest permission.
            ("/api/v1/namespaces/team-a", Some(("team-a", Permission::GetPodLogs, "object"))),
            ("/api/v1/namespaces/team-a/secrets/x/y", Some(("team-a", Permission::GetPodLogs, "object"))),
            ("/api/v1/namespaces/team-a/pods/web-1/exec", Some(("team-a", Permission::GetPodLogs, "object"))),
            // Not namespaced.
            ("/api/v1/namespaces", None),
            ("/api/v1/namespaces/", None),
            ("/api/v1/me", None),
            ("/api/v1/session", None),
        ];
        for (path, want) in cases {
            let got = required_permission(path);
            assert_eq!(got.as_ref().map(|(ns, p, w)| (ns.as_str(), *p, *w)), want, "{path}");
        }
    }
}
