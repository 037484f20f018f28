//! The pod inspector endpoints.
//!
//! ```text
//! GET /api/v1/namespaces/{ns}/pods/{name}/details   masked unless the caller is an admin
//! GET /api/v1/namespaces/{ns}/pods/{name}/metrics   metrics.k8s.io usage + requests/limits
//! ```
//!
//! Both go through the same access policy as every other endpoint (a hidden pod is 404).
//! Masking is decided in core ([`kubelens_core::inspect`]) from the caller's admin flag before
//! anything is serialized. When Metrics Server is absent or not ready, `/metrics` answers 503
//! with code `metrics_unavailable` (detection is cached for a minute).

use kubelens_core::inspect::{self, MetricsError, Viewer};
use salvo::prelude::*;

use crate::discovery::{cluster, namespace, param, state, strict_query};
use crate::error::ApiError;

/// The inspector routes, pushed into the authenticated `api/v1` router.
pub fn routes() -> Router {
    Router::with_path("namespaces/{ns}/pods/{name}")
        .push(Router::with_path("details").get(pod_details))
        .push(Router::with_path("metrics").get(pod_metrics))
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/details`
#[handler]
pub async fn pod_details(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    strict_query(req, &[])?;
    let principal = crate::auth::principal(depot)?.clone();
    let state = state(depot)?;
    let ns = namespace(&state.policy, req)?;
    let cluster = cluster(state)?;
    let pod = cluster.pod_object(&state.policy, &ns, param(req, "name")?)?;
    // Events come from a short-lived cache shared by all users (see
    // `kubelens_core::inspect::PodEventsReader`): N requests within its TTL cost one list.
    let events = match (pod.metadata.uid.as_deref(), state.pod_events.as_ref()) {
        (Some(uid), Some(reader)) => reader.events(ns.as_str(), uid).await,
        _ => std::sync::Arc::new(Vec::new()),
    };
    let viewer = Viewer { is_admin: principal.is_admin };
    let details = inspect::pod_details(&pod, &events, viewer, &state.config.inspector.sensitive_annotations);
    state.audit.details_viewed(&principal, ns.as_str(), pod.metadata.name.as_deref().unwrap_or_default(), !principal.is_admin);
    res.render(Json(details));
    Ok(())
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/metrics`
#[handler]
pub async fn pod_metrics(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    strict_query(req, &[])?;
    let state = state(depot)?;
    let ns = namespace(&state.policy, req)?;
    let cluster = cluster(state)?;
    let pod = cluster.pod_object(&state.policy, &ns, param(req, "name")?)?;
    let reader = state
        .pod_metrics
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("metrics_unavailable", "metrics are unavailable: Kubernetes is not configured"))?;
    match reader.pod_usage(ns.as_str(), &pod).await {
        Ok(usage) => {
            res.render(Json(usage));
            Ok(())
        }
        Err(MetricsError::Unavailable(reason)) => Err(ApiError::unavailable("metrics_unavailable", reason)),
        Err(MetricsError::NoSample) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_not_found",
            "Metrics Server has no sample for this pod yet (new, pending or finished pods have none)",
        )),
        Err(err) => {
            tracing::warn!(error = %err, "pod metrics request failed");
            Err(ApiError::unavailable("metrics_unavailable", "the metrics API did not answer"))
        }
    }
}
