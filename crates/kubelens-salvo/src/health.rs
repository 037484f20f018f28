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

#[cfg(test)]
mod tests {
    use kubelens_core::{Config, Readiness};
    use salvo::http::StatusCode;
    use salvo::test::{ResponseExt, TestClient};

    use crate::state::AppState;

    fn service(readiness: Readiness) -> salvo::Service {
        crate::service(AppState::new(Config::default(), readiness))
    }

    #[tokio::test]
    async fn healthz_is_always_ok() {
        let readiness = Readiness::new();
        readiness.register("kubernetes", "down");
        let mut res = TestClient::get("http://localhost/healthz").send(&service(readiness)).await;
        assert_eq!(res.status_code, Some(StatusCode::OK));
        let body: serde_json::Value = res.take_json().await.unwrap();
        assert_eq!(body["status"], "ok");
    }

    #[tokio::test]
    async fn readyz_lists_checks_and_fails_until_all_are_ready() {
        let readiness = Readiness::new();
        let kube = readiness.register("kubernetes", "no client configuration");
        readiness.register("config", "loaded").ready("loaded");
        let service = service(readiness.clone());

        let mut res = TestClient::get("http://localhost/readyz").send(&service).await;
        assert_eq!(res.status_code, Some(StatusCode::SERVICE_UNAVAILABLE));
        let body: serde_json::Value = res.take_json().await.unwrap();
        assert_eq!(body["ready"], false);
        assert_eq!(body["checks"]["kubernetes"]["ready"], false);
        assert_eq!(body["checks"]["kubernetes"]["detail"], "no client configuration");
        assert_eq!(body["checks"]["config"]["ready"], true);

        kube.ready("caches synced");
        let mut res = TestClient::get("http://localhost/readyz").send(&service).await;
        assert_eq!(res.status_code, Some(StatusCode::OK));
        let body: serde_json::Value = res.take_json().await.unwrap();
        assert_eq!(body["ready"], true);

        readiness.begin_shutdown();
        let mut res = TestClient::get("http://localhost/readyz").send(&service).await;
        assert_eq!(res.status_code, Some(StatusCode::SERVICE_UNAVAILABLE));
        let body: serde_json::Value = res.take_json().await.unwrap();
        assert_eq!(body["shuttingDown"], true);
    }

    #[tokio::test]
    async fn unknown_routes_answer_json_404() {
        let mut res = TestClient::get("http://localhost/api/v1/nope").send(&service(Readiness::new())).await;
        assert_eq!(res.status_code, Some(StatusCode::NOT_FOUND));
        let body: serde_json::Value = res.take_json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
}
