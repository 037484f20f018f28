//! `/healthz` (alive) and `/readyz` (every registered dependency ready).

use salvo::http::StatusCode;
use salvo::prelude::*;

use crate::state::AppState;

/// Liveness: answers while the process serves HTTP; checks no dependency on purpose, so a
/// Keycloak or API-server outage never gets the pod restarted.
#[handler]
pub async fn healthz(res: &mut Response) {
    res.render(Json(serde_json::json!({ "status": "ok" })));
}

/// Readiness: 200 when every check registered in the readiness registry is ready, 503 with the
/// same JSON body otherwise (and from the moment shutdown starts).
#[handler]
pub async fn readyz(depot: &mut Depot, res: &mut Response) {
    let Ok(state) = depot.get_typed::<AppState>() else {
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
        return;
    };
    let report = state.readiness.report();
    if !report.ready {
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
    }
    res.render(Json(report));
}
