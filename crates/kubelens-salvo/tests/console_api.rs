//! The web console served from `server.web_root`: caching headers, CSP, the SPA fallback,
//! path confinement, and `GET /console-config.json`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kubelens_core::auth::testing::TestIssuer;
use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;
use salvo::http::StatusCode;
use salvo::prelude::*;
use salvo::test::{ResponseExt, TestClient};
use serde_json::Value;

const BASE: &str = "http://127.0.0.1:5800";

fn console_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("root/assets")).unwrap();
    std::fs::write(dir.path().join("root/index.html"), "<!doctype html><title>KubeLens</title>").unwrap();
    std::fs::write(dir.path().join("root/assets/index-1a2b3c.js"), "console.log(1)").unwrap();
    std::fs::write(dir.path().join("root/favicon.svg"), "<svg/>").unwrap();
    std::fs::write(dir.path().join("outside.txt"), "secret").unwrap();
    dir
}

fn service(web_root: Option<&std::path::Path>) -> Service {
    let issuer = TestIssuer::new();
    let mut config = Config::default();
    config.auth = issuer.config();
    config.server.web_root = web_root.map(|p| p.display().to_string());
    kubelens_salvo::service(AppState::new(config, Readiness::new()).with_auth(issuer.authenticator()))
}

fn header<'a>(res: &'a salvo::Response, name: &str) -> &'a str {
    res.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn index_is_no_cache_hashed_assets_are_immutable_and_both_carry_a_csp() {
    let dir = console_dir();
    let svc = service(Some(&dir.path().join("root")));
    let mut res = TestClient::get(format!("{BASE}/")).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    assert_eq!(header(&res, "cache-control"), "no-cache");
    assert!(header(&res, "content-type").starts_with("text/html"));
    assert!(header(&res, "content-security-policy").contains("script-src 'self'"));
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert!(res.take_string().await.unwrap().contains("<title>KubeLens</title>"));

    let mut res = TestClient::get(format!("{BASE}/assets/index-1a2b3c.js")).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    assert_eq!(header(&res, "cache-control"), "public, max-age=31536000, immutable");
    assert!(header(&res, "content-type").starts_with("text/javascript"));
    assert!(header(&res, "content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(res.take_string().await.unwrap(), "console.log(1)");

    let res = TestClient::get(format!("{BASE}/favicon.svg")).send(&svc).await;
    assert_eq!(header(&res, "cache-control"), "no-cache");
    assert_eq!(header(&res, "content-type"), "image/svg+xml");
}

#[tokio::test]
async fn console_routes_fall_back_to_index_but_missing_files_and_api_paths_do_not() {
    let dir = console_dir();
    let svc = service(Some(&dir.path().join("root")));
    let mut res = TestClient::get(format!("{BASE}/ns/team-a/pods/web-1")).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    assert_eq!(header(&res, "cache-control"), "no-cache");
    assert!(res.take_string().await.unwrap().contains("KubeLens"));
    for missing in ["/assets/gone-000.js", "/robots.txt"] {
        let res = TestClient::get(format!("{BASE}{missing}")).send(&svc).await;
        assert_eq!(res.status_code, Some(StatusCode::NOT_FOUND), "{missing}");
    }
    // Unknown API paths stay JSON errors, never the console page.
    let mut res = TestClient::get(format!("{BASE}/api/v1/nope")).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::NOT_FOUND));
    let body: Value = res.take_json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    // The API itself is untouched.
    let res = TestClient::get(format!("{BASE}/api/v1/me")).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
}

#[tokio::test]
async fn nothing_outside_web_root_is_served() {
    let dir = console_dir();
    let svc = service(Some(&dir.path().join("root")));
    for path in ["/../outside.txt", "/%2e%2e/outside.txt", "/assets/..%2f..%2foutside.txt", "/assets%2f..%2f..%2foutside.txt"] {
        let mut res = TestClient::get(format!("{BASE}{path}")).send(&svc).await;
        let body = res.take_string().await.unwrap_or_default();
        assert!(!body.contains("secret"), "{path} leaked a file outside web_root");
    }
}

#[tokio::test]
async fn without_web_root_no_console_is_served_but_its_config_is() {
    let svc = service(None);
    let res = TestClient::get(format!("{BASE}/")).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::NOT_FOUND));
    let mut res = TestClient::get(format!("{BASE}/console-config.json")).send(&svc).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    let body: Value = res.take_json().await.unwrap();
    assert_eq!(body["clientId"], "kubelens-web");
    assert_eq!(body["realm"], TestIssuer::new().config().realm);
    assert!(body["keycloakUrl"].as_str().unwrap().starts_with("http"));
}
