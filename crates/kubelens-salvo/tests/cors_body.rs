//! `server.cors_allowed_origins` and `server.max_body_bytes` through the real service
//! (salvo `TestClient`, no network): exact origins only, preflight answered, SSE routes
//! included, unlisted origins get nothing; oversized bodies 413 on every route.

use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;
use salvo::http::header::{HeaderName, ORIGIN};
use salvo::test::{ResponseExt, TestClient};
use salvo::Service;

const ALLOWED: &str = "https://logs.example.com";
const SSE_ROUTE: &str = "http://localhost/api/v1/namespaces/team-a/pods/web-0/logs";

fn service() -> Service {
    let mut config = Config::default();
    config.server.cors_allowed_origins = vec![ALLOWED.to_owned(), "http://localhost:5173".to_owned()];
    config.server.max_body_bytes = 1024;
    kubelens_salvo::service(AppState::new(config, Readiness::new()))
}

fn header(res: &salvo::Response, name: &str) -> Option<String> {
    res.headers().get(HeaderName::from_bytes(name.as_bytes()).unwrap()).map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_headers_on_json_and_sse_routes() {
    let service = service();
    for url in ["http://localhost/healthz", SSE_ROUTE, "http://localhost/api/v1/me"] {
        let res = TestClient::get(url).add_header(ORIGIN, ALLOWED, true).send(&service).await;
        assert_eq!(header(&res, "access-control-allow-origin").as_deref(), Some(ALLOWED), "{url}");
        assert_eq!(header(&res, "access-control-allow-credentials").as_deref(), Some("true"), "{url}");
        assert!(header(&res, "access-control-expose-headers").is_some_and(|h| h.to_ascii_lowercase().contains("etag")), "{url}");
    }
}

#[tokio::test]
async fn a_preflight_is_answered_for_the_headers_the_api_reads() {
    let service = service();
    for url in [SSE_ROUTE, "http://localhost/api/v1/session"] {
        let res = TestClient::options(url)
            .add_header(ORIGIN, ALLOWED, true)
            .add_header("access-control-request-method", "PUT", true)
            .add_header("access-control-request-headers", "authorization,content-type,if-match,last-event-id", true)
            .send(&service)
            .await;
        assert_eq!(res.status_code.map(|s| s.as_u16()), Some(204), "{url}");
        assert_eq!(header(&res, "access-control-allow-origin").as_deref(), Some(ALLOWED));
        let allowed = header(&res, "access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
        for needed in ["authorization", "content-type", "if-match", "last-event-id"] {
            assert!(allowed.contains(needed), "{needed} in {allowed}");
        }
        assert!(header(&res, "access-control-allow-methods").unwrap_or_default().contains("PUT"));
    }
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_cors_headers() {
    let service = service();
    for origin in ["https://evil.example.com", "https://logs.example.com.evil.example", "null", "*"] {
        let res = TestClient::get(SSE_ROUTE).add_header(ORIGIN, origin, true).send(&service).await;
        assert!(header(&res, "access-control-allow-origin").is_none(), "{origin}: {:?}", res.headers());
        assert!(header(&res, "access-control-allow-credentials").is_none(), "{origin}");
        assert!(header(&res, "access-control-expose-headers").is_none(), "{origin}");
        let res = TestClient::options(SSE_ROUTE)
            .add_header(ORIGIN, origin, true)
            .add_header("access-control-request-method", "GET", true)
            .send(&service)
            .await;
        assert!(header(&res, "access-control-allow-origin").is_none(), "preflight {origin}");
        assert!(header(&res, "access-control-allow-headers").is_none(), "preflight {origin}");
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413_on_every_route() {
    let service = service();
    let big = "x".repeat(2048);
    for url in ["http://localhost/api/v1/session", "http://localhost/api/v1/stream-tickets", "http://localhost/healthz"] {
        let mut res = TestClient::put(url).text(big.clone()).send(&service).await;
        assert_eq!(res.status_code.map(|s| s.as_u16()), Some(413), "{url}");
        let body = res.take_string().await.unwrap();
        assert!(body.contains("\"code\":\"payload_too_large\""), "{url}: {body}");
    }
    let res = TestClient::put("http://localhost/api/v1/session").text("x".repeat(512)).send(&service).await;
    assert_eq!(res.status_code.map(|s| s.as_u16()), Some(401), "a body under the limit reaches auth");
}
