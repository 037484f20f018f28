//! The auth hoop through the real router: 200/401/403/503, `WWW-Authenticate`, `/me`, and
//! one-time stream tickets (only on SSE log routes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use kubelens_core::auth::testing::TestIssuer;
use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;
use salvo::http::StatusCode;
use salvo::prelude::*;
use salvo::test::{ResponseExt, TestClient};
use serde_json::Value;

const BASE: &str = "http://127.0.0.1:5800";

fn state_with(issuer: &TestIssuer, ttl: Duration) -> AppState {
    let mut config = Config::default();
    config.auth = issuer.config();
    config.auth.stream_ticket_ttl = ttl;
    AppState::new(config, Readiness::new()).with_auth(issuer.authenticator())
}

fn service(issuer: &TestIssuer) -> Service {
    kubelens_salvo::service(state_with(issuer, Duration::from_secs(30)))
}

/// A route standing in for the SSE log endpoints (built by another issue), mounted the way
/// they will be: under `/api/v1`, behind the hoop.
#[handler]
async fn fake_logs(depot: &mut Depot) -> Result<String, kubelens_salvo::ApiError> {
    Ok(format!("logs for {}", kubelens_salvo::auth::principal(depot)?.subject))
}

/// The hoop and auth routes as `router()` mounts them, with handlers that echo the principal
/// in place of the real log endpoints (which need Kubernetes).
fn service_with_fake_logs(state: AppState) -> Service {
    let router = Router::new().hoop(affix_state::inject(state)).push(
        Router::with_path("api/v1")
            .push(kubelens_salvo::auth::routes())
            .hoop(kubelens_salvo::auth::authenticate)
            .push(Router::with_path("namespaces/{ns}/pods/{name}/logs").get(fake_logs))
            .push(Router::with_path("namespaces/{ns}/apps/{name}/logs").get(fake_logs))
            .push(Router::with_path("namespaces/{ns}/pods/{name}").get(fake_logs)),
    );
    Service::new(router)
}

async fn error_code(res: &mut salvo::Response) -> String {
    let body: Value = res.take_json().await.unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn me_answers_200_for_an_allowed_user() {
    let issuer = TestIssuer::new();
    let mut res = TestClient::get(format!("{BASE}/api/v1/me")).bearer_auth(issuer.admin_token()).send(&service(&issuer)).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    let body: Value = res.take_json().await.unwrap();
    assert_eq!(body["subject"], "admin");
    assert_eq!(body["username"], "admin");
    assert_eq!(body["isAdmin"], true);
    assert_eq!(body["groups"], serde_json::json!(["/k8s-logs-access", "/k8s-admin-access"]));
}

#[tokio::test]
async fn missing_or_invalid_credentials_get_401_with_www_authenticate() {
    let issuer = TestIssuer::new();
    let svc = service(&issuer);
    let token = issuer.viewer_token();
    let bad = format!("{}x", &token);
    let cases: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(format!("Basic {token}")),
        Some(token.clone()),
        Some(format!("Bearer {bad}")),
        Some("Bearer not.a.jwt".into()),
        Some(format!("Bearer {}", "a".repeat(100 * 1024))),
    ];
    for header in cases {
        let mut req = TestClient::get(format!("{BASE}/api/v1/me"));
        if let Some(h) = &header {
            req = req.add_header("authorization", h.as_str(), true);
        }
        let mut res = req.send(&svc).await;
        let shown = header.as_deref().map(|h| &h[..h.len().min(30)]);
        assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED), "{shown:?}");
        assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer", "{shown:?}");
        let body = res.take_string().await.unwrap();
        assert!(body.contains("\"unauthorized\""), "{body}");
        assert!(!body.contains(&token[..20]), "token echoed: {body}");
    }
    // The scheme is case-insensitive.
    let res = TestClient::get(format!("{BASE}/api/v1/me")).add_header("authorization", format!("bearer {token}"), true).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
}

#[tokio::test]
async fn valid_token_without_allowed_group_gets_403() {
    let issuer = TestIssuer::new();
    let svc = service(&issuer);
    for token in [issuer.nogroup_token(), issuer.token_for("evil", &["/k8s-logs-access-evil", "/other/k8s-logs-access"])] {
        let mut res = TestClient::get(format!("{BASE}/api/v1/me")).bearer_auth(token).send(&svc).await;
        assert_eq!(res.status_code, Some(StatusCode::FORBIDDEN));
        assert!(res.headers().get("www-authenticate").is_none());
        assert_eq!(error_code(&mut res).await, "forbidden");
    }
    // Tickets need an allowed group too.
    let res = TestClient::post(format!("{BASE}/api/v1/stream-tickets")).bearer_auth(issuer.nogroup_token()).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::FORBIDDEN));
}

#[tokio::test]
async fn no_keys_loaded_is_503_not_401() {
    let issuer = TestIssuer::new();
    let mut config = Config::default();
    config.auth = issuer.config();
    let svc = kubelens_salvo::service(AppState::new(config, Readiness::new()));
    let mut res = TestClient::get(format!("{BASE}/api/v1/me")).bearer_auth(issuer.viewer_token()).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(error_code(&mut res).await, "auth_unavailable");
}

#[tokio::test]
async fn health_endpoints_need_no_token() {
    let issuer = TestIssuer::new();
    let res = TestClient::get(format!("{BASE}/healthz")).send(&service(&issuer)).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
}

async fn issue_ticket(svc: &Service, token: String) -> String {
    let mut res = TestClient::post(format!("{BASE}/api/v1/stream-tickets")).bearer_auth(token).send(svc).await;
    assert_eq!(res.status_code, Some(StatusCode::CREATED));
    let body: Value = res.take_json().await.unwrap();
    assert_eq!(body["expiresIn"], 30);
    body["ticket"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_ticket_opens_one_sse_stream_once() {
    let issuer = TestIssuer::new();
    let svc = service_with_fake_logs(state_with(&issuer, Duration::from_secs(30)));
    let ticket = issue_ticket(&svc, issuer.viewer_token()).await;
    let url = format!("{BASE}/api/v1/namespaces/team-a/pods/web-1/logs");
    let mut res = TestClient::get(&url).query("ticket", &ticket).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    assert_eq!(res.take_string().await.unwrap(), "logs for viewer");
    // Second use: refused.
    let mut res = TestClient::get(&url).query("ticket", &ticket).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
    assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(error_code(&mut res).await, "unauthorized");
    // Garbage tickets.
    for bad in ["", "x", "../../etc", &"A".repeat(43)] {
        let res = TestClient::get(&url).query("ticket", bad).send(&svc).await;
        assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED), "{bad}");
    }
    // App streams take tickets too.
    let ticket = issue_ticket(&svc, issuer.viewer_token()).await;
    let res = TestClient::get(format!("{BASE}/api/v1/namespaces/team-a/apps/web/logs")).query("ticket", &ticket).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    // A bearer token still works on SSE routes.
    let res = TestClient::get(&url).bearer_auth(issuer.viewer_token()).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
}

#[tokio::test]
async fn the_real_log_routes_accept_tickets() {
    let issuer = TestIssuer::new();
    // No Kubernetes here: the log endpoints answer 503 once the caller got through the hoop.
    let svc = service(&issuer);
    for url in [
        format!("{BASE}/api/v1/namespaces/team-a/pods/web-1/logs"),
        format!("{BASE}/api/v1/namespaces/team-a/apps/web/logs"),
    ] {
        let ticket = issue_ticket(&svc, issuer.viewer_token()).await;
        let res = TestClient::get(&url).query("ticket", &ticket).send(&svc).await;
        assert_ne!(res.status_code, Some(StatusCode::UNAUTHORIZED), "{url}");
        let res = TestClient::get(&url).query("ticket", &ticket).send(&svc).await;
        assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED), "{url}: second use");
        let res = TestClient::get(&url).send(&svc).await;
        assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED), "{url}: no credentials");
    }
}

#[tokio::test]
async fn tickets_are_refused_on_non_sse_routes_and_not_consumed_there() {
    let issuer = TestIssuer::new();
    let svc = service_with_fake_logs(state_with(&issuer, Duration::from_secs(30)));
    let ticket = issue_ticket(&svc, issuer.viewer_token()).await;
    for url in [
        format!("{BASE}/api/v1/me"),
        format!("{BASE}/api/v1/namespaces/team-a/pods/web-1"),
    ] {
        let res = TestClient::get(&url).query("ticket", &ticket).send(&svc).await;
        assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED), "{url}");
    }
    let res = TestClient::post(format!("{BASE}/api/v1/stream-tickets")).query("ticket", &ticket).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
    // Still unused, so it works where it belongs.
    let res = TestClient::get(format!("{BASE}/api/v1/namespaces/team-a/pods/web-1/logs")).query("ticket", &ticket).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
}

#[tokio::test(start_paused = true)]
async fn tickets_expire_after_their_ttl() {
    let issuer = TestIssuer::new();
    let svc = service_with_fake_logs(state_with(&issuer, Duration::from_secs(30)));
    let ticket = issue_ticket(&svc, issuer.viewer_token()).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    let res = TestClient::get(format!("{BASE}/api/v1/namespaces/team-a/pods/web-1/logs")).query("ticket", &ticket).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
    let ticket = issue_ticket(&svc, issuer.viewer_token()).await;
    tokio::time::advance(Duration::from_secs(29)).await;
    let res = TestClient::get(format!("{BASE}/api/v1/namespaces/team-a/pods/web-1/logs")).query("ticket", &ticket).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
}

#[test]
fn ticket_routes_are_exactly_the_sse_log_routes() {
    use kubelens_salvo::auth::accepts_ticket;
    use salvo::http::Method;
    for ok in [
        "/api/v1/namespaces/a/pods/p/logs",
        "/api/v1/namespaces/a/apps/web/logs",
        "/api/v1/namespaces/a/pods/watch",
        "/api/v1/namespaces/a/pods/p/logs/search",
        "/api/v1/namespaces/a/apps/web/logs/search",
    ] {
        assert!(accepts_ticket(&Method::GET, ok), "{ok}");
        assert!(!accepts_ticket(&Method::POST, ok), "{ok}");
    }
    for bad in [
        "/api/v1/me",
        "/api/v1/stream-tickets",
        "/api/v1/session",
        "/api/v1/namespaces/a/pods/p",
        "/api/v1/namespaces/a/pods",
        "/api/v1/namespaces/a/apps/watch",
        "/api/v1/namespaces//pods/watch",
        "/api/v1/namespaces/a/pods/watch/x",
        "/api/v1/namespaces/a/pods/p/details",
        "/api/v1/namespaces/a/pods/p/logs/x",
        "/api/v1/namespaces/a/pods/p/logs/search/x",
        "/api/v1/namespaces/a/pods//logs/search",
        "/api/v1/namespaces/a/pods",
        "/api/v1/namespaces//pods/watch",
        "/api/v1/namespaces/a/apps/watch",
        "/api/v1/namespaces/a/pods/watch/x",
        "/api/v1/namespaces//pods/p/logs",
        "/api/v1/namespaces/a/pods//logs",
        "/api/v1/namespaces/a/secrets/p/logs",
        "/api/v2/namespaces/a/pods/p/logs",
        "/x/api/v1/namespaces/a/pods/p/logs",
    ] {
        assert!(!accepts_ticket(&Method::GET, bad), "{bad}");
    }
}
