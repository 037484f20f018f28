//! `POST`/`DELETE /api/v1/stream-credential`: the cookie that lets a browser's native
//! `EventSource` reconnect by itself (same URL + `Last-Event-ID`), which a one-time
//! `?ticket=` cannot survive. The store and its rules live in core
//! (`kubelens_core::auth::StreamCredentials`); this module only speaks HTTP: the cookie is
//! `HttpOnly` (script code never sees it), `SameSite=Strict` (other sites' pages do not send
//! it), `Path=/api/v1`, and `Max-Age` = seconds until the token's `exp`. The auth hoop accepts
//! it on the SSE routes only ([`crate::auth::accepts_ticket`]). Threat analysis: docs/auth.md.

use salvo::http::header::{COOKIE, SET_COOKIE};
use salvo::http::HeaderValue;
use salvo::prelude::*;
use serde::Serialize;

use crate::auth::principal;
use crate::error::ApiError;
use crate::state::AppState;

/// Name of the cookie carrying the stream credential.
pub const COOKIE_NAME: &str = "kubelens_stream";

/// The value of the stream-credential cookie the request carries, if any (every `Cookie`
/// header is searched; the first well-formed pair wins).
pub fn request_credential(req: &Request) -> Option<&str> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(name, value)| (name == COOKIE_NAME).then_some(value.trim_matches('"')))
}

/// Whether the browser reached us over HTTPS (directly or through a TLS-terminating proxy
/// that says so), in which case the cookie is also marked `Secure`.
fn secure_request(req: &Request) -> bool {
    req.uri().scheme_str() == Some("https")
        || req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn cookie(value: &str, max_age: u64, secure: bool) -> Result<HeaderValue, ApiError> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE_NAME}={value}; Path=/api/v1; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"))
        .map_err(|_| ApiError::internal())
}

/// Answer of `POST /api/v1/stream-credential`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamCredentialResponse {
    /// Seconds until the credential (and the cookie) expires: the token's `exp`.
    pub expires_in: u64,
}

/// `POST /api/v1/stream-credential` (bearer token required): sets the cookie, replacing the
/// caller's previous one.
#[handler]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<Json<StreamCredentialResponse>, ApiError> {
    let principal = principal(depot)?.clone();
    let state = depot.get_typed::<AppState>().map_err(|_| ApiError::internal())?;
    let issued = state
        .stream_credentials
        .issue(&principal, request_credential(req))
        .await
        .ok_or_else(|| ApiError::unauthorized("token expired"))?;
    res.headers_mut().append(SET_COOKIE, cookie(&issued.value, issued.expires_in, secure_request(req))?);
    res.headers_mut().insert("cache-control", HeaderValue::from_static("no-store"));
    Ok(Json(StreamCredentialResponse { expires_in: issued.expires_in }))
}

/// `DELETE /api/v1/stream-credential`: revokes the presented credential and clears the
/// cookie (sign-out).
#[handler]
pub async fn delete(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    principal(depot)?;
    let state = depot.get_typed::<AppState>().map_err(|_| ApiError::internal())?;
    if let Some(value) = request_credential(req) {
        state.stream_credentials.revoke(value).await;
    }
    res.headers_mut().append(SET_COOKIE, cookie("", 0, secure_request(req))?);
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// The route, mounted under `/api/v1` (behind the hoop).
pub fn routes() -> Router {
    Router::with_path("stream-credential").post(create).delete(delete)
}
