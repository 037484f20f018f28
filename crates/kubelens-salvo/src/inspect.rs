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

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use kubelens_core::inspect::{self, MetricsError, Viewer};
use salvo::prelude::*;

use crate::discovery::{cluster, namespace, param, state, strict_query};
use crate::error::ApiError;

/// Events listed per inspector request (newest are kept, see `inspect::MAX_EVENTS`).
const EVENT_LIST_LIMIT: u32 = 200;

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
    // Events are not cached (low rate endpoint): one list call, bounded, by the pod's uid.
    let events = match pod.metadata.uid.as_deref() {
        Some(uid) => {
            let api: Api<Event> = Api::namespaced(cluster.client(), ns.as_str());
            let params = ListParams::default().fields(&format!("involvedObject.uid={uid}")).limit(EVENT_LIST_LIMIT);
            match api.list(&params).await {
                Ok(list) => list.items,
                Err(err) => {
                    // The inspector is still useful without events; say so in the log only.
                    tracing::warn!(error = %err, namespace = ns.as_str(), "cannot list pod events");
                    Vec::new()
                }
            }
        }
        None => Vec::new(),
    };
    let viewer = Viewer { is_admin: principal.is_admin };
    let details = inspect::pod_details(&pod, &events, viewer, &state.config.inspector.sensitive_annotations);
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
