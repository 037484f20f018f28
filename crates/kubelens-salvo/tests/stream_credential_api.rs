//! The stream-credential cookie through the real router: issued for a bearer token with the
//! right attributes, accepted repeatedly (as a native `EventSource` reconnect presents it) on
//! SSE routes only, replaced on refresh, revoked on sign-out, refused once the token expired.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kubelens_core::auth::testing::TestIssuer;
use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;
use salvo::http::StatusCode;
use salvo::prelude::*;
use salvo::test::{ResponseExt, TestClient};
use serde_json::Value;

const BASE: &str = "http://127.0.0.1:5800";

#[handler]
async fn fake_stream(depot: &mut Depot) -> Result<String, kubelens_salvo::ApiError> {
    Ok(format!("stream for {}", kubelens_salvo::auth::principal(depot)?.subject))
}

/// The hoop, the credential routes and stand-ins for the SSE routes (which need Kubernetes).
fn service(issuer: &TestIssuer) -> Service {
    let mut config = Config::default();
    config.auth = issuer.config();
    let state = AppState::new(config, Readiness::new()).with_auth(issuer.authenticator());
    let router = Router::new().hoop(affix_state::inject(state)).push(
        Router::with_path("api/v1")
            .hoop(kubelens_salvo::auth::authenticate)
            .push(kubelens_salvo::auth::routes())
            .push(kubelens_salvo::stream_credential::routes())
            .push(Router::with_path("namespaces/{ns}/pods/watch").get(fake_stream))
            .push(Router::with_path("namespaces/{ns}/pods/{name}/logs").get(fake_stream))
            .push(Router::with_path("namespaces/{ns}/apps/{name}/logs").get(fake_stream)),
    );
    Service::new(router)
}

/// `name=value` of the `kubelens_stream` Set-Cookie, and the whole header.
async fn obtain(svc: &Service, token: String, previous: Option<&str>) -> (String, String, Value) {
    let mut req = TestClient::post(format!("{BASE}/api/v1/stream-credential")).bearer_auth(token);
    if let Some(previous) = previous {
        req = req.add_header("cookie", previous, true);
    }
    let mut res = req.send(svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    let header = res.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    let pair = header.split(';').next().unwrap().to_owned();
    let body: Value = res.take_json().await.unwrap();
    (pair, header, body)
}

async fn stream_status(svc: &Service, path: &str, cookie: &str) -> StatusCode {
    TestClient::get(format!("{BASE}{path}")).add_header("cookie", cookie, true).send(svc).await.status_code.unwrap()
}

#[tokio::test]
async fn the_cookie_reopens_sse_streams_as_often_as_the_browser_reconnects() {
    let issuer = TestIssuer::new();
    let svc = service(&issuer);
    let (pair, header, body) = obtain(&svc, issuer.viewer_token(), None).await;
    assert!(pair.starts_with("kubelens_stream=") && pair.len() == "kubelens_stream=".len() + 43, "{pair}");
    for attribute in ["Path=/api/v1", "HttpOnly", "SameSite=Strict", "Max-Age="] {
        assert!(header.contains(attribute), "{header} lacks {attribute}");
    }
    assert!(!header.contains("Secure"), "plain HTTP must not get a Secure cookie: {header}");
    assert!(body["expiresIn"].as_u64().unwrap() > 0);
    // Reusable: a one-time ticket would fail the second request.
    for _ in 0..3 {
        for path in ["/api/v1/namespaces/team-a/pods/web-1/logs", "/api/v1/namespaces/team-a/apps/web/logs", "/api/v1/namespaces/team-a/pods/watch"] {
            assert_eq!(stream_status(&svc, path, &pair).await, StatusCode::OK, "{path}");
        }
    }
    // Other cookies beside it are fine.
    assert_eq!(stream_status(&svc, "/api/v1/namespaces/team-a/pods/web-1/logs", &format!("a=b; {pair}; c=d")).await, StatusCode::OK);
}

#[tokio::test]
async fn the_cookie_is_refused_on_json_routes_and_cannot_mint_cookies() {
    let issuer = TestIssuer::new();
    let svc = service(&issuer);
    let (pair, _, _) = obtain(&svc, issuer.viewer_token(), None).await;
    let res = TestClient::get(format!("{BASE}/api/v1/me")).add_header("cookie", &pair, true).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
    let res = TestClient::post(format!("{BASE}/api/v1/stream-credential")).add_header("cookie", &pair, true).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
    let res = TestClient::post(format!("{BASE}/api/v1/stream-tickets")).add_header("cookie", &pair, true).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
}

#[tokio::test]
async fn refreshing_replaces_the_cookie_and_sign_out_revokes_it() {
    let issuer = TestIssuer::new();
    let svc = service(&issuer);
    let logs = "/api/v1/namespaces/team-a/pods/web-1/logs";
    let (first, _, _) = obtain(&svc, issuer.viewer_token(), None).await;
    let (second, _, _) = obtain(&svc, issuer.viewer_token(), Some(&first)).await;
    assert_ne!(first, second);
    assert_eq!(stream_status(&svc, logs, &first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(stream_status(&svc, logs, &second).await, StatusCode::OK);

    let res = TestClient::delete(format!("{BASE}/api/v1/stream-credential"))
        .bearer_auth(issuer.viewer_token())
        .add_header("cookie", &second, true)
        .send(&svc)
        .await;
    assert_eq!(res.status_code, Some(StatusCode::NO_CONTENT));
    let cleared = res.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(cleared.starts_with("kubelens_stream=;") && cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(stream_status(&svc, logs, &second).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_cookie_is_bound_to_its_user_and_needs_an_allowed_group() {
    let issuer = TestIssuer::new();
    let svc = service(&issuer);
    let (viewer, _, _) = obtain(&svc, issuer.viewer_token(), None).await;
    let mut res = TestClient::get(format!("{BASE}/api/v1/namespaces/team-a/pods/web-1/logs")).add_header("cookie", &viewer, true).send(&svc).await;
    assert_eq!(res.take_string().await.unwrap(), "stream for viewer");
    let res = TestClient::post(format!("{BASE}/api/v1/stream-credential")).bearer_auth(issuer.nogroup_token()).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::FORBIDDEN));
    assert!(res.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn an_https_request_gets_a_secure_cookie_and_garbage_is_refused() {
    let issuer = TestIssuer::new();
    let svc = service(&issuer);
    let res = TestClient::post(format!("{BASE}/api/v1/stream-credential"))
        .bearer_auth(issuer.viewer_token())
        .add_header("x-forwarded-proto", "https", true)
        .send(&svc)
        .await;
    assert!(res.headers().get("set-cookie").unwrap().to_str().unwrap().ends_with("; Secure"));
    for bad in ["kubelens_stream=", "kubelens_stream=x", &format!("kubelens_stream={}", "A".repeat(43))] {
        assert_eq!(stream_status(&svc, "/api/v1/namespaces/team-a/pods/web-1/logs", bad).await, StatusCode::UNAUTHORIZED, "{bad}");
    }
}
