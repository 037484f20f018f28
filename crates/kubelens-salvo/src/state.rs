//! Shared state handed to every handler through the depot.

use std::sync::Arc;

use kubelens_core::auth::{Authenticator, StreamTickets};
use kubelens_core::{Config, Metrics, Readiness};
use tokio_util::sync::CancellationToken;

/// Everything handlers need; cheap to clone (all fields are shared).
#[derive(Debug, Clone)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Readiness registry rendered by `/readyz`.
    pub readiness: Readiness,
    /// Cancelled when shutdown starts; long-lived streams end with a final event.
    pub shutdown: CancellationToken,
    /// Operational metrics shared by every subsystem.
    pub metrics: Metrics,
    /// Log streaming (`None` when no Kubernetes client could be configured: 503).
    pub logs: Option<Arc<crate::logs::LogService>>,
    /// Validates bearer tokens for the `/api/v1` auth hoop.
    pub auth: Authenticator,
    /// One-time tickets for SSE streams opened by browsers.
    pub tickets: StreamTickets,
}

impl AppState {
    /// State with no subsystems attached yet. Its authenticator accepts no token (503) until
    /// [`AppState::with_auth`] installs a real one.
    pub fn new(config: Config, readiness: Readiness) -> Self {
        let auth = Authenticator::without_keys(&config.auth);
        let tickets = StreamTickets::new(config.auth.stream_ticket_ttl);
        Self {
            config: Arc::new(config),
            readiness,
            shutdown: CancellationToken::new(),
            metrics: Metrics::new(),
            logs: None,
            auth,
            tickets,
        }
    }

    /// Installs the authenticator (tests: `TestIssuer::authenticator()` from
    /// `kubelens_core::auth::testing`).
    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = auth;
        self
    }
}
