//! The OpenAPI 3 document of the whole API, served at `/api/v1/openapi.json`.
//!
//! The document is written by hand in `openapi.yaml` (beside `Cargo.toml`) so it can say what
//! a generator cannot (SSE event types, resume semantics, masking). It cannot drift: a test
//! below walks the real route tree and requires every route to be documented and every
//! documented path to be routed, and CI runs schemathesis against a live server to check the
//! responses against the schemas.

use std::sync::LazyLock;

use salvo::prelude::*;

use crate::error::ApiError;

const SOURCE: &str = include_str!("../openapi.yaml");

/// The parsed document (YAML → JSON once, at first use).
static DOCUMENT: LazyLock<Result<serde_json::Value, String>> =
    LazyLock::new(|| serde_yaml_ng::from_str(SOURCE).map_err(|err| err.to_string()));

/// `GET /api/v1/openapi.json` (unauthenticated: it is documentation).
#[handler]
pub async fn openapi_json(res: &mut Response) -> Result<(), ApiError> {
    match &*DOCUMENT {
        Ok(document) => {
            res.render(Json(document));
            Ok(())
        }
        Err(err) => {
            tracing::error!(error = %err, "openapi.yaml does not parse");
            Err(ApiError::internal())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kubelens_core::{Config, Readiness};

    use super::*;
    use crate::state::AppState;

    /// `METHOD /path` for every goal in the route tree, read from salvo's tree rendering
    /// (`├──segment` lines nest by four columns; `[GET] -> handler` lines are goals).
    fn routed(router: &Router) -> BTreeSet<String> {
        let rendered = format!("{router:?}");
        let mut stack: Vec<(usize, String)> = Vec::new();
        let mut routes = BTreeSet::new();
        for line in rendered.lines() {
            let Some(start) = line.find(|c: char| !matches!(c, ' ' | '│' | '├' | '└' | '─')) else { continue };
            let depth = line[..start].chars().count();
            let text = line[start..].trim();
            while stack.last().is_some_and(|(d, _)| *d >= depth) {
                stack.pop();
            }
            if let Some(rest) = text.strip_prefix('[') {
                let method = rest.split(']').next().unwrap_or_default();
                let path: Vec<&str> =
                    stack.iter().map(|(_, s)| s.as_str()).filter(|s| *s != "!NULL!").collect();
                routes.insert(format!("{method} /{}", path.join("/")));
            } else {
                stack.push((depth, text.to_owned()));
            }
        }
        routes
    }

    fn documented() -> BTreeSet<String> {
        let document = DOCUMENT.as_ref().unwrap();
        let mut routes = BTreeSet::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in ["get", "put", "post", "delete", "patch"] {
                if item.get(method).is_some() {
                    routes.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_is_documented_and_every_documented_path_is_routed() {
        let state = AppState::new(Config::default(), Readiness::new());
        let routes = routed(&crate::router(state));
        assert!(routes.contains("GET /api/v1/namespaces/{ns}/pods/{name}/logs"), "{routes:?}");
        let documented = documented();
        let undocumented: Vec<_> = routes.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routes).collect();
        assert!(undocumented.is_empty(), "routes missing from openapi.yaml: {undocumented:?}");
        assert!(unrouted.is_empty(), "openapi.yaml documents routes that do not exist: {unrouted:?}");
    }

    #[test]
    fn every_reference_resolves() {
        let document = DOCUMENT.as_ref().unwrap();
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().unwrap();
            let pointer = target.trim_start_matches('#');
            assert!(document.pointer(pointer).is_some(), "dangling $ref {target}");
        }
        assert_eq!(document["openapi"], "3.0.3");
    }

    #[tokio::test]
    async fn served_without_a_token() {
        use salvo::test::{ResponseExt, TestClient};
        let service = crate::service(AppState::new(Config::default(), Readiness::new()));
        let mut res = TestClient::get("http://localhost/api/v1/openapi.json").send(&service).await;
        assert_eq!(res.status_code, Some(StatusCode::OK));
        let body: serde_json::Value = res.take_json().await.unwrap();
        assert!(body["paths"]["/api/v1/namespaces/{ns}/apps/{name}/logs"]["get"].is_object());
    }
}
