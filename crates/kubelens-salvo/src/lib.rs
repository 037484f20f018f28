//! KubeLens HTTP/SSE adapter: the v1 contract on salvo.
//!
//! [`router`] builds the whole route tree from an [`AppState`]; the `kubelens` binary
//! (`src/main.rs`) loads configuration, wires subsystems into the state and serves it.
#![deny(missing_docs)]

pub mod archive;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod body_limit;
pub mod console;
pub mod cors;
pub mod discovery;
pub mod error;
pub mod health;
pub mod inspect;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod search;
pub mod server;
pub mod session;
pub mod sse;
pub mod state;
pub mod stream_credential;
pub mod tls;

use salvo::catcher::Catcher;
use salvo::prelude::*;

pub use error::ApiError;
pub use state::AppState;

/// The complete route tree. `/metrics` is mounted here unless `server.metrics_listen` moves
/// it to its own listener ([`metrics_router`]).
pub fn router(state: AppState) -> Router {
    let metrics_here = state.config.server.metrics_listen.is_none();
    let console_here = state.config.server.web_root.is_some();
    let mut router = Router::new()
        .hoop(affix_state::inject(state))
        .push(Router::with_path("healthz").get(health::healthz))
        .push(Router::with_path("readyz").get(health::readyz))
        // Documentation needs no token: mounted before the authenticated api/v1 tree.
        .push(Router::with_path("api/v1/openapi.json").get(openapi::openapi_json))
        .push(console::config_route())
        // Every /api/v1 route is behind the auth hoop; handlers get the caller through
        // `auth::principal(depot)`.
        .push(
            Router::with_path("api/v1")
                .hoop(auth::authenticate)
                // Per-user RBAC (`auth.kubernetes_authorization`) on namespaced routes.
                .hoop(authz::authorize)
                // The audit trail of log reads (`logs_opened` / `logs_closed` / `logs_refused`).
                .hoop(audit::log_access)
                .push(auth::routes())
                .push(audit::routes())
                .push(stream_credential::routes())
                .push(discovery::routes())
                .push(inspect::routes())
                .append(&mut logs::routes())
                .append(&mut search::routes())
                .append(&mut session::routes())
                .append(&mut archive::routes()),
        );
    if metrics_here {
        router = router.push(Router::with_path("metrics").get(metrics::metrics));
    }
    if console_here {
        // Last: the catch-all only answers what no other route matched.
        router = router.push(console::files_route());
    }
    router
}

/// The router of the separate metrics listener (`server.metrics_listen`): `/metrics`, and
/// `/healthz` + `/readyz` too, so the kubelet can probe a sidecar whose API listener is bound
/// to 127.0.0.1 (deploy/helm: `sidecar.enabled`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .hoop(affix_state::inject(state))
        .push(Router::with_path("metrics").get(metrics::metrics))
        .push(Router::with_path("healthz").get(health::healthz))
        .push(Router::with_path("readyz").get(health::readyz))
}

/// The service: router, request metrics (service-level, so unmatched requests count too),
/// CORS (service-level, so preflights of every route are answered), the body size limit and
/// the JSON catcher for unmatched routes.
pub fn service(state: AppState) -> Service {
    let cors = cors::handler(&state.config.server.cors_allowed_origins);
    let mut service = Service::new(router(state.clone()))
        .hoop(affix_state::inject(state))
        .hoop(metrics::count_requests);
    if let Some(cors) = cors {
        service = service.hoop(cors);
    }
    service.hoop(body_limit::limit_body).catcher(Catcher::default().hoop(error::json_catcher))
}
