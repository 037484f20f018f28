//! Shared state handed to every handler through the depot.

use std::sync::Arc;

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
}

impl AppState {
    /// State with no subsystems attached yet.
    pub fn new(config: Config, readiness: Readiness) -> Self {
        Self { config: Arc::new(config), readiness, shutdown: CancellationToken::new(), metrics: Metrics::new(), logs: None }
    }
}
