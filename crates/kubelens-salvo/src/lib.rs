//! KubeLens HTTP/SSE adapter: the v1 contract on salvo.
//!
//! [`router`] builds the whole route tree from an [`AppState`]; the `kubelens` binary
//! (`src/main.rs`) loads configuration, wires subsystems into the state and serves it.
#![deny(missing_docs)]

pub mod error;
pub mod health;
pub mod server;
pub mod state;

use salvo::catcher::Catcher;
use salvo::prelude::*;

pub use error::ApiError;
pub use state::AppState;

/// The complete route tree.
pub fn router(state: AppState) -> Router {
    Router::new()
        .hoop(affix_state::inject(state))
        .push(Router::with_path("healthz").get(health::healthz))
        .push(Router::with_path("readyz").get(health::readyz))
        .push(Router::with_path("api/v1"))
}

/// The service: router plus the JSON catcher for unmatched routes.
pub fn service(state: AppState) -> Service {
    Service::new(router(state)).catcher(Catcher::default().hoop(error::json_catcher))
}
