//! Prometheus exposition (`GET /metrics`) and the per-request HTTP metrics hoop.
//!
//! `/metrics` is unauthenticated by design (Prometheus scrapes it without a Keycloak token);
//! it exposes counts only — no names of users, pods or namespaces. Serve it on a separate
//! port (`server.metrics_listen`) and keep that port off the Ingress.

use std::time::Instant;

use salvo::http::header::{CONTENT_TYPE, HeaderValue};
use salvo::prelude::*;

use crate::state::AppState;

/// Renders every metric in the Prometheus text format.
#[handler]
pub async fn metrics(depot: &mut Depot, res: &mut Response) {
    let Ok(state) = depot.get_typed::<AppState>() else {
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
        return;
    };
    // Subsystems keep their own counts; mirror them at scrape time (pull model), so no hot
    // path needs a metrics handle.
    state.metrics.jwks_fetches.set(state.auth.jwks_fetch_count());
    if let Some(logs) = &state.logs {
        state.metrics.lagged_viewers.set(logs.hub.lagged_viewers());
    }
    state.metrics.audit_events_dropped.set(state.audit.dropped());
    if let Some(cluster) = &state.cluster {
        state.metrics.kube_api_requests.set(cluster.api_requests().total);
        state.metrics.set_cache_synced("all", cluster.is_synced());
    }
    let mut body = state.metrics.render_prometheus();
    body.push_str(&build_info());
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    res.render(body);
}

/// `kubelens_build_info{version,rust_version} 1`: which build a replica runs (the labels are
/// compile-time constants, so the cardinality is one).
pub fn build_info() -> String {
    format!(
        "# HELP kubelens_build_info The running kubelens build (always 1).\n# TYPE kubelens_build_info gauge\nkubelens_build_info{{version=\"{}\",rust_version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_RUST_VERSION"),
    )
}

/// Counts every response by matched route pattern (never the raw path: bounded
/// cardinality, no object names), method and status, and times it to the response head.
///
/// Every label value is chosen by the server, never by the caller: the route is salvo's
/// matched route template (`api/v1/namespaces/{ns}/pods`, or `unmatched`), the method one of
/// [`method_label`]'s fixed set, the status a number the server set.
#[handler]
pub async fn count_requests(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let started = Instant::now();
    ctrl.call_next(req, depot, res).await;
    let Ok(state) = depot.get_typed::<AppState>() else { return };
    let route = match req.matched_path() {
        "" => "unmatched".to_owned(),
        path => format!("/{}", path.trim_start_matches('/')),
    };
    let status = res.status_code.unwrap_or(StatusCode::OK);
    state.metrics.http_requests.inc(&[&route, method_label(req.method()), status.as_str()]);
    state.metrics.http_request_duration.observe(started.elapsed());
}

/// The `method` label: the methods the API knows, everything else (extension methods any
/// client can invent, e.g. `curl -X M12345`) as `other`, so callers cannot create series.
pub fn method_label(method: &salvo::http::Method) -> &'static str {
    use salvo::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use kubelens_core::{Config, Readiness};
    use salvo::test::{ResponseExt, TestClient};

    use crate::state::AppState;

    #[tokio::test]
    async fn metrics_count_requests_by_route_pattern() {
        let state = AppState::new(Config::default(), Readiness::new());
        let service = crate::service(state.clone());
        for _ in 0..3 {
            TestClient::get("http://localhost/healthz").send(&service).await;
        }
        TestClient::get("http://localhost/no/such/path").send(&service).await;
        let mut res = TestClient::get("http://localhost/metrics").send(&service).await;
        let text = res.take_string().await.unwrap();
        assert!(text.contains("kubelens_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 3"), "{text}");
        assert!(text.contains("route=\"unmatched\",method=\"GET\",status=\"404\"} 1"), "{text}");
        assert!(!text.contains("no/such/path"), "raw paths must never become labels: {text}");
        let build_info = format!("kubelens_build_info{{version=\"{}\",rust_version=\"", env!("CARGO_PKG_VERSION"));
        assert!(text.lines().any(|l| l.starts_with(&build_info) && l.ends_with("} 1")), "{text}");
    }

    #[tokio::test]
    async fn the_metrics_listener_also_answers_the_probes() {
        let state = AppState::new(Config::default(), Readiness::new());
        let service = salvo::Service::new(crate::metrics_router(state));
        for (path, status) in [("/metrics", 200), ("/healthz", 200), ("/readyz", 200), ("/api/v1/me", 404)] {
            let res = TestClient::get(format!("http://localhost{path}")).send(&service).await;
            assert_eq!(res.status_code.map(|s| s.as_u16()), Some(status), "{path}");
        }
    }

    #[tokio::test]
    async fn route_labels_are_route_templates_not_paths() {
        let state = AppState::new(Config::default(), Readiness::new());
        let service = crate::service(state.clone());
        TestClient::get("http://localhost/api/v1/namespaces/secret-team/pods/db-0").send(&service).await;
        let mut res = TestClient::get("http://localhost/metrics").send(&service).await;
        let text = res.take_string().await.unwrap();
        assert!(text.contains("route=\"/api/v1/namespaces/{ns}/pods/{name}\""), "{text}");
        assert!(!text.contains("secret-team") && !text.contains("db-0"), "{text}");
    }

    /// A caller chooses the method freely (`curl -X M12345`); each one must not become its
    /// own series (unbounded memory and `/metrics` size, unauthenticated).
    #[tokio::test]
    async fn unknown_methods_share_one_label() {
        use salvo::http::Method;
        use salvo::test::RequestBuilder;
        let state = AppState::new(Config::default(), Readiness::new());
        let service = crate::service(state.clone());
        for i in 0..50 {
            let method = Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
            RequestBuilder::new("http://localhost/healthz", method).send(&service).await;
        }
        TestClient::head("http://localhost/healthz").send(&service).await;
        let mut res = TestClient::get("http://localhost/metrics").send(&service).await;
        let text = res.take_string().await.unwrap();
        let series = text.lines().filter(|l| l.starts_with("kubelens_http_requests_total{")).count();
        assert!(series <= 4, "one series per known method and status, not per caller method: {text}");
        assert!(!text.contains("method=\"M1\""), "{text}");
        assert!(text.contains("method=\"other\""), "{text}");
        assert!(text.contains("method=\"HEAD\""), "{text}");
        let other: u64 = text
            .lines()
            .filter(|l| l.starts_with("kubelens_http_requests_total{") && l.contains("method=\"other\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(other, 50, "{text}");
    }
}
