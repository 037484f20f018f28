//! The web console: the built `web/` assets served from `server.web_root` at `/`, and
//! `GET /console-config.json`, which tells the console where to sign in.
//!
//! Caching: files under `assets/` carry a content hash in their name (Vite's output), so they
//! are `public, max-age=31536000, immutable`; everything else (`index.html`, the SPA fallback,
//! the config) is `no-cache`, so a new release is picked up on the next load. Every console
//! response carries a Content-Security-Policy that allows scripts and styles from this origin
//! only and network access to this origin and the Keycloak origin (token refresh).
//! Unknown paths without a file extension answer `index.html` (client-side routes); the
//! `api/` prefix never does (its unknown paths stay JSON 404s).

use std::path::{Path, PathBuf};

use salvo::http::HeaderValue;
use salvo::prelude::*;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest file served from `server.web_root` (the built console's files are far smaller;
/// the bound keeps a misconfigured directory from being read whole into memory).
pub const MAX_ASSET_BYTES: u64 = 16 * 1024 * 1024;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const NO_CACHE: &str = "no-cache";

/// What `GET /console-config.json` answers: the Keycloak the console signs in with.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleConfig {
    /// `auth.keycloak_url`.
    pub keycloak_url: String,
    /// `auth.realm`.
    pub realm: String,
    /// `server.web_client_id` (a public client: authorization code + PKCE).
    pub client_id: String,
}

/// The scheme://host[:port] of a URL (for CSP source lists); `None` when it has no host.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next().filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}"))
}

/// The Content-Security-Policy of console responses.
pub fn content_security_policy(keycloak_url: &str) -> String {
    let keycloak = origin_of(keycloak_url).unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; \
         connect-src 'self' {keycloak}; frame-src {keycloak}; form-action 'self' {keycloak}; \
         frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    )
}

fn security_headers(res: &mut Response, state: &AppState, cache: &'static str) {
    let headers = res.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static(cache));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(&state.config.auth.keycloak_url)) {
        headers.insert("content-security-policy", csp);
    }
}

/// `GET /console-config.json` (unauthenticated: the console needs it to sign in).
#[handler]
pub async fn console_config(depot: &mut Depot, res: &mut Response) -> Result<Json<ConsoleConfig>, ApiError> {
    let state = depot.get_typed::<AppState>().map_err(|_| ApiError::internal())?.clone();
    security_headers(res, &state, NO_CACHE);
    Ok(Json(ConsoleConfig {
        keycloak_url: state.config.auth.keycloak_url.trim_end_matches('/').to_owned(),
        realm: state.config.auth.realm.clone(),
        client_id: state.config.server.web_client_id.clone(),
    }))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

/// The file `rel` names inside `root`, or `None` when `rel` tries to leave it (`..`, `.`,
/// empty segments, backslashes, NUL) — such requests get the SPA fallback or a 404, never a
/// file outside the root.
fn resolve(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for segment in rel.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.contains(['\\', '\0']) {
            return None;
        }
        path.push(segment);
    }
    Some(path)
}

async fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    if !meta.is_file() || meta.len() > MAX_ASSET_BYTES {
        return None;
    }
    tokio::fs::read(path).await.ok()
}

/// `GET /{**path}`: a console file, or `index.html` for client-side routes.
#[handler]
pub async fn serve(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = depot.get_typed::<AppState>().map_err(|_| ApiError::internal())?.clone();
    let rel = req.uri().path().trim_start_matches('/').to_owned();
    let Some(root) = state.config.server.web_root.as_deref().map(Path::new) else {
        return Err(ApiError::not_found("route"));
    };
    if rel == "api" || rel.starts_with("api/") || matches!(rel.as_str(), "metrics" | "healthz" | "readyz") {
        return Err(ApiError::not_found("route"));
    }
    let file = if rel.is_empty() { None } else { resolve(root, &rel) };
    if let Some(file) = file
        && let Some(body) = read_bounded(&file).await
    {
        let cache = if rel.starts_with("assets/") { IMMUTABLE } else { NO_CACHE };
        security_headers(res, &state, cache);
        res.headers_mut().insert("content-type", HeaderValue::from_static(content_type(&file)));
        res.write_body(body).map_err(|_| ApiError::internal())?;
        return Ok(());
    }
    // A missing asset (a file name with an extension) is a real 404; anything else is a
    // console route answered by index.html.
    let last = rel.rsplit('/').next().unwrap_or("");
    if rel.starts_with("assets/") || last.contains('.') {
        return Err(ApiError::not_found("file"));
    }
    let index = root.join("index.html");
    let Some(body) = read_bounded(&index).await else {
        tracing::warn!(web_root = %root.display(), "server.web_root has no index.html");
        return Err(ApiError::not_found("console"));
    };
    security_headers(res, &state, NO_CACHE);
    res.headers_mut().insert("content-type", HeaderValue::from_static("text/html; charset=utf-8"));
    res.write_body(body).map_err(|_| ApiError::internal())?;
    Ok(())
}

/// `GET /console-config.json`, mounted always (an external console can use it too).
pub fn config_route() -> Router {
    Router::with_path("console-config.json").get(console_config)
}

/// The console files, mounted after every other route and only when `server.web_root` is set.
pub fn files_route() -> Router {
    Router::with_path("{**rest}").get(serve)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_inside_the_root() {
        let root = Path::new("/srv/web");
        assert_eq!(resolve(root, "assets/app-1a2b.js"), Some(PathBuf::from("/srv/web/assets/app-1a2b.js")));
        for bad in ["../etc/passwd", "assets/../../x", "./index.html", "a//b", "a\\..\\b", "a\0b", ""] {
            assert_eq!(resolve(root, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn csp_names_the_keycloak_origin_only() {
        let csp = content_security_policy("https://sso.example.com/auth/");
        assert!(csp.contains("connect-src 'self' https://sso.example.com;"), "{csp}");
        assert!(csp.contains("script-src 'self';"));
        assert!(!csp.contains("unsafe"));
    }
}
