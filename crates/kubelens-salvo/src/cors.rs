//! CORS for `server.cors_allowed_origins`: exact origins only, never `*`.
//!
//! A listed origin gets `Access-Control-Allow-Origin: <that origin>` and
//! `Access-Control-Allow-Credentials: true` on every route (JSON and SSE alike), `ETag`
//! exposed; a preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered `204` with
//! the allowed methods and the request headers the API reads (`Authorization`, `Content-Type`,
//! `If-Match`, `Last-Event-ID`). An origin not listed gets no CORS header at all, so the
//! browser refuses to hand it the response. An empty list mounts no CORS handler.

use std::time::Duration;

use std::sync::Arc;

use salvo::cors::{AllowCredentials, AllowHeaders, Cors, CorsHandler, ExposeHeaders};
use salvo::http::Method;
use salvo::http::header::HeaderValue;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS handler for these origins, or `None` when the list is empty.
pub fn handler(origins: &[String]) -> Option<CorsHandler> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        // Validation already refused `*` and anything that is not an http(s) origin.
        .filter(|origin| origin.as_str() != "*")
        .filter_map(|origin| HeaderValue::from_str(origin.trim_end_matches('/')).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    // Every header but the (origin-independent) methods and max-age is sent only to a listed
    // origin, so an unlisted one sees no CORS header that names credentials or headers.
    let listed = Arc::new(origins.clone());
    let only_listed = move |value: &'static str| {
        let listed = listed.clone();
        move |origin: Option<&HeaderValue>, _: &salvo::Request, _: &salvo::Depot| {
            origin.filter(|o| listed.contains(o)).map(|_| HeaderValue::from_static(value))
        }
    };
    let credentials = {
        let listed = Arc::new(origins.clone());
        AllowCredentials::dynamic(move |origin, _, _| origin.is_some_and(|o| listed.contains(o)))
    };
    let cors = Cors::new()
        .allow_origin(origins)
        .allow_credentials(credentials)
        .allow_methods(vec![Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
        .allow_headers(AllowHeaders::dynamic(only_listed("authorization, content-type, if-match, last-event-id")))
        .expose_headers(ExposeHeaders::dynamic(only_listed("etag")))
        .max_age(PREFLIGHT_MAX_AGE.as_secs());
    Some(cors.into_handler())
}
