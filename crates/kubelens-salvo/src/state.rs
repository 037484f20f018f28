//! Shared state handed to every handler through the depot.

use std::sync::Arc;

use kubelens_core::auth::{Authenticator, StreamCredentials, StreamTickets};
use kubelens_core::cluster::Cluster;
use kubelens_core::inspect::{PodEventsReader, PodMetricsReader};
use kubelens_core::policy::AccessPolicy;
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
    /// The per-user stream cap (`logs.max_streams_per_user`), shared by every long or
    /// buffered read a user holds: pod and app log streams, one-shot and archive reads, pod
    /// change streams. (The process-wide upstream cap lives in the log service.)
    pub admission: kubelens_core::logs::admission::StreamAdmission,
    /// Log streaming (`None` when no Kubernetes client could be configured: 503).
    pub logs: Option<Arc<crate::logs::LogService>>,
    /// Validates bearer tokens for the `/api/v1` auth hoop.
    pub auth: Authenticator,
    /// One-time tickets for SSE streams opened by browsers.
    pub tickets: StreamTickets,
    /// Reusable stream credentials (the `kubelens_stream` cookie) that survive a browser's
    /// native `EventSource` reconnect.
    pub stream_credentials: StreamCredentials,
    /// Namespace allowlist and pod/app filters; every endpoint checks it first.
    pub policy: Arc<AccessPolicy>,
    /// Kubernetes client and watch-fed caches; `None` until [`AppState::with_cluster`]
    /// (discovery endpoints answer 503 then).
    pub cluster: Option<Cluster>,
    /// Reads pod usage from metrics.k8s.io; set together with the cluster.
    pub pod_metrics: Option<Arc<PodMetricsReader>>,
    /// Reads pods' events for the inspector (briefly cached, shared by all users); set
    /// together with the cluster.
    pub pod_events: Option<PodEventsReader>,
    /// Session store and log archive (`None` when not wired: the session API answers 503).
    pub storage: Option<kubelens_storage::Stores>,
    /// Per-user RBAC through SubjectAccessReviews (`auth.kubernetes_authorization.mode:
    /// subject_access_review`); `None` in mode `none`, or when no Kubernetes client could be
    /// built (namespaced routes then answer 503 in that mode: they fail closed).
    pub authorizer: Option<kubelens_core::authz::KubernetesAuthorizer>,
    /// Where audit events go: the process log, and the store with `audit.store`.
    pub audit: kubelens_core::audit::AuditTrail,
    /// Terminated pods' log archive (`None`: no storage, nothing is archived or served).
    pub retention: Option<Arc<crate::archive::Retention>>,
}

impl AppState {
    /// State with no subsystems attached yet. Its authenticator accepts no token (503) until
    /// [`AppState::with_auth`] installs a real one.
    pub fn new(config: Config, readiness: Readiness) -> Self {
        // Validated configs always build; a broken filter fails closed (nothing visible)
        // rather than silently dropping an exclusion.
        let policy = AccessPolicy::from_config(&config).unwrap_or_else(|err| {
            tracing::error!(error = %err, "filters do not compile; hiding everything");
            AccessPolicy::deny_all()
        });
        let auth = Authenticator::without_keys(&config.auth);
        let tickets = StreamTickets::new(config.auth.stream_ticket_ttl, config.auth.max_stream_tickets_per_user);
        let admission = kubelens_core::logs::admission::StreamAdmission::from_config(&config.logs);
        Self {
            admission,
            config: Arc::new(config),
            readiness,
            shutdown: CancellationToken::new(),
            policy: Arc::new(policy),
            cluster: None,
            pod_metrics: None,
            pod_events: None,
            metrics: Metrics::new(),
            logs: None,
            storage: None,
            auth,
            tickets,
            stream_credentials: StreamCredentials::new(),
            retention: None,
            authorizer: None,
            audit: kubelens_core::audit::AuditTrail::log_only(),
        }
    }

    /// Installs the authenticator (tests: `TestIssuer::authenticator()` from
    /// `kubelens_core::auth::testing`).
    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = auth;
        self
    }

    /// Attaches the Kubernetes caches (and, in SubjectAccessReview mode, the authorizer that
    /// sends its reviews through the same rate-limited client).
    pub fn with_cluster(mut self, cluster: Cluster) -> Self {
        self.pod_metrics = Some(Arc::new(PodMetricsReader::new(cluster.client())));
        self.pod_events = Some(PodEventsReader::new(cluster.client()));
        if self.config.auth.kubernetes_authorization.mode != kubelens_core::config::KubernetesAuthorizationMode::None {
            self.authorizer =
                Some(kubelens_core::authz::KubernetesAuthorizer::new(cluster.client(), &self.config.auth.kubernetes_authorization));
        }
        self.cluster = Some(cluster);
        self
    }
}
