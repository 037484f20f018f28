//! The configuration model: typed, documented, defaulted and validated.
//!
//! The model is plain data. Reading files and the process environment is the binary's job
//! (see `kubelens-salvo`); this module only parses text ([`Config::from_yaml`]), applies
//! overrides from a caller-supplied lookup ([`Config::apply_env`]) and validates
//! ([`Config::validate`]). Every struct denies unknown keys so a typo is an error that names
//! the key path instead of a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize, Serializer};

/// Environment variables that may carry secrets instead of the config file.
pub mod env {
    /// Overrides `auth.client_secret`.
    pub const AUTH_CLIENT_SECRET: &str = "KUBELENS_AUTH_CLIENT_SECRET";
    /// Overrides `storage.postgres.url`.
    pub const POSTGRES_URL: &str = "KUBELENS_POSTGRES_URL";
    /// Overrides `storage.redis.url`.
    pub const REDIS_URL: &str = "KUBELENS_REDIS_URL";
    /// Overrides `storage.backend`.
    pub const STORAGE_BACKEND: &str = "KUBELENS_STORAGE_BACKEND";
    /// Overrides `server.listen`.
    pub const LISTEN: &str = "KUBELENS_LISTEN";
}

/// A secret string: never printed by `Debug`, redacted when serialized.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret value. Call sites are the only places a secret leaves this type.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no value was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***redacted***\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "***redacted***" })
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener, shutdown and CORS.
    pub server: ServerConfig,
    /// Keycloak / OIDC token validation and group policy.
    pub auth: AuthConfig,
    /// How the backend talks to the Kubernetes API.
    pub kubernetes: KubernetesConfig,
    /// Which namespaces exist for KubeLens at all.
    pub namespaces: NamespacesConfig,
    /// Pod and app visibility filters inside allowlisted namespaces.
    pub filters: FiltersConfig,
    /// Log reading and streaming limits.
    pub logs: LogsConfig,
    /// Where sessions and archived logs live.
    pub storage: StorageConfig,
    /// Per-user UI session limits.
    pub session: SessionConfig,
    /// Pod inspector masking.
    pub inspector: InspectorConfig,
    /// The audit trail's copy in the store (the process log always has every event).
    pub audit: AuditConfig,
}

/// Where audit events go besides the process log (`docs/audit.md`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Also write every event to the configured store, queryable by admins with
    /// `GET /api/v1/audit` (from any replica when the store is shared).
    pub store: bool,
    /// Stored events older than this are deleted (1h–10y).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Events waiting to be written at most (100–1,000,000; one event is at most about 2 KiB).
    /// When the store is slower or down for longer, further events are dropped from the
    /// store's copy and counted in `kubelens_audit_events_dropped_total`; the process log
    /// still has them.
    pub queue_max_events: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { store: false, retention: Duration::from_secs(30 * 24 * 3600), queue_max_events: 10_000 }
    }
}

/// Pod inspector settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InspectorConfig {
    /// Annotation keys whose values non-admins see masked, on top of the built-in ones
    /// (`kubectl.kubernetes.io/last-applied-configuration`, …).
    pub sensitive_annotations: Vec<String>,
}

/// HTTP listener settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Address of the separate, unauthenticated Prometheus `/metrics` listener. `null` serves
    /// metrics on the main listener at `/metrics` instead.
    pub metrics_listen: Option<SocketAddr>,
    /// How long in-flight requests and streams get to finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Browser origins allowed by CORS (exact match, e.g. `https://logs.example.com`).
    /// Empty disables CORS headers entirely; a wildcard is never sent with credentials.
    pub cors_allowed_origins: Vec<String>,
    /// Largest request body accepted on any endpoint, in bytes.
    pub max_body_bytes: usize,
    /// Directory holding the built web console (`web/dist`: `index.html` + `assets/`),
    /// served at `/`. `null` serves no console (the API alone).
    pub web_root: Option<String>,
    /// Keycloak public client the console signs in with (authorization code + PKCE). Handed
    /// to the browser by `GET /console-config.json`; its tokens must pass the audience rule.
    pub web_client_id: String,
    /// Time a client gets to send a complete HTTP/1 request head; a connection still
    /// dribbling its headers after this is closed (Slowloris).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no read or write for this long is closed. Open SSE streams are
    /// never idle (keepalive comments every `logs.keepalive_interval`), so this must exceed it.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Concurrent connections accepted on the API listener; further ones wait in the
    /// operating system's backlog until one closes.
    pub max_connections: usize,
    /// TLS on the API listener (`server.listen`): rustls with the certificate and key files,
    /// ALPN `h2` and `http/1.1`, files re-read every `reload_interval`. `null` (the default)
    /// serves cleartext: HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on the same port.
    pub tls: Option<TlsConfig>,
    /// HTTP/2 limits (over TLS and h2c alike).
    pub http2: Http2Config,
}

/// TLS certificate and key of the API listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate first, then any intermediates (required).
    pub cert_file: String,
    /// PEM file with the certificate's private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC)
    /// (required). Must match the certificate; a mismatch is a startup error.
    pub key_file: String,
    /// How often both files are re-read; when either changed and the pair is valid, new
    /// connections get the new certificate (open ones keep theirs). A pair that fails to
    /// load is logged and the previous certificate stays in use. Between 1s and 1h.
    #[serde(with = "humantime_serde", default = "TlsConfig::default_reload_interval")]
    pub reload_interval: Duration,
}

impl TlsConfig {
    fn default_reload_interval() -> Duration {
        Duration::from_secs(10)
    }
}

/// HTTP/2 settings advertised to clients and enforced per connection.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Concurrent streams (requests, SSE streams included) one HTTP/2 connection may open;
    /// a client asking for more waits for one to end. Between 1 and 10,000. Every stream is
    /// still counted by `logs.max_streams_per_user` and the other stream caps.
    pub max_concurrent_streams: u32,
    /// Largest request head (HPACK-decoded header list) accepted, in bytes; a bigger one is
    /// refused. Between 4 KiB and 1 MiB.
    pub max_header_list_bytes: u32,
    /// Interval of HTTP/2 PING frames that detect dead peers; a PING not answered within 20 s
    /// closes the connection. `null` (the default) sends none: PINGs count as traffic, so
    /// with them on `server.idle_timeout` no longer closes idle HTTP/2 connections.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Option<Duration>,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self { max_concurrent_streams: 256, max_header_list_bytes: 32 * 1024, keepalive_interval: None }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            metrics_listen: None,
            shutdown_grace: Duration::from_secs(20),
            cors_allowed_origins: Vec::new(),
            max_body_bytes: 1024 * 1024,
            web_root: None,
            web_client_id: "kubelens-web".to_owned(),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 10_000,
            tls: None,
            http2: Http2Config::default(),
        }
    }
}

/// Keycloak settings. The issuer is `{keycloak_url}/realms/{realm}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Base URL of Keycloak, e.g. `https://sso.example.com` (required). Plain `http://` only
    /// for a Keycloak on loopback (development, tests): signing keys need TLS.
    pub keycloak_url: String,
    /// Realm name (required).
    pub realm: String,
    /// The backend's client id (required). Tokens are accepted when `aud` contains
    /// `audience` (default: this id) or, if `accept_azp`, when `azp` equals this id.
    pub client_id: String,
    /// Client secret, only needed for features that call Keycloak as the client. Prefer the
    /// `KUBELENS_AUTH_CLIENT_SECRET` environment variable.
    pub client_secret: Secret,
    /// Audience that must appear in `aud`; defaults to `client_id`.
    pub audience: Option<String>,
    /// Accept tokens whose `azp` equals `client_id` even when `aud` lacks the audience
    /// (Keycloak's default access tokens carry `aud: account`).
    pub accept_azp: bool,
    /// Additional client ids whose `azp` is accepted (e.g. the frontend's public client).
    pub trusted_clients: Vec<String>,
    /// Groups that may use KubeLens. `k8s-logs-access` matches `/k8s-logs-access` and
    /// `k8s-logs-access`, never a nested path or a longer name.
    pub allowed_groups: Option<Vec<String>>,
    /// Deprecated alias of `allowed_groups`, kept for old config files.
    pub allows_groups: Option<Vec<String>>,
    /// Group whose members see secret material unmasked.
    pub admin_group: String,
    /// Token claim that carries groups.
    pub groups_claim: String,
    /// Accepted JWS algorithms. Only asymmetric ones (RS*, PS*, ES*, EdDSA) are allowed.
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`/`nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Minimum time between two JWKS refetches caused by unknown key ids (at least `1s`).
    #[serde(with = "humantime_serde")]
    pub jwks_refetch_cooldown: Duration,
    /// Regular JWKS refresh interval.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// Connect and total timeout of one discovery or JWKS request, so a hanging Keycloak
    /// delays a token with an unknown key by at most this long.
    #[serde(with = "humantime_serde")]
    pub jwks_fetch_timeout: Duration,
    /// Lifetime of a one-time SSE stream ticket.
    #[serde(with = "humantime_serde")]
    pub stream_ticket_ttl: Duration,
    /// Outstanding (issued, not yet redeemed) stream tickets per user (`sub`); issuing one
    /// more invalidates that user's oldest, so no user can push others' tickets out.
    pub max_stream_tickets_per_user: usize,
    /// How long a stream may outlive the expiry of the token that opened it.
    #[serde(with = "humantime_serde")]
    pub stream_token_grace: Duration,
    /// Optional per-user authorization by the cluster's own RBAC, on top of the allowlist.
    pub kubernetes_authorization: KubernetesAuthorizationConfig,
}

/// Who decides what a signed-in user may see, besides the namespace allowlist and groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KubernetesAuthorizationMode {
    /// KubeLens alone: every allowed user sees every allowlisted namespace (the default).
    #[default]
    None,
    /// The API server, per user: a SubjectAccessReview asks whether the user may
    /// `list pods` / `get pods` / `get pods/log` in the namespace (see `docs/auth.md`).
    SubjectAccessReview,
}

/// Which token claim names the user to the API server (its `--oidc-username-claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KubernetesUsernameClaim {
    /// `preferred_username` (falling back to `sub` when the token has none).
    #[default]
    PreferredUsername,
    /// `sub`, the API server's default `--oidc-username-claim`.
    Sub,
}

/// `auth.kubernetes_authorization`: per-user RBAC through SubjectAccessReviews.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesAuthorizationConfig {
    /// `none` (default) or `subject_access_review`.
    pub mode: KubernetesAuthorizationMode,
    /// The claim the API server takes the username from.
    pub username_claim: KubernetesUsernameClaim,
    /// Put before the username, as the API server's `--oidc-username-prefix` does
    /// (e.g. `oidc:`). Empty by default.
    pub username_prefix: String,
    /// Put before every group, as the API server's `--oidc-groups-prefix` does. Empty by default.
    pub groups_prefix: String,
    /// How long an answer (allowed or denied) is reused: a revoked RoleBinding takes effect
    /// for new requests within this time (1s–5m).
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Memory the cached answers may hold, in bytes (keys are weighed by their size; 64 KiB–256 MiB).
    pub cache_max_bytes: u64,
}

impl Default for KubernetesAuthorizationConfig {
    fn default() -> Self {
        Self {
            mode: KubernetesAuthorizationMode::None,
            username_claim: KubernetesUsernameClaim::PreferredUsername,
            username_prefix: String::new(),
            groups_prefix: String::new(),
            cache_ttl: Duration::from_secs(10),
            cache_max_bytes: 4 << 20,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keycloak_url: String::new(),
            realm: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            audience: None,
            accept_azp: true,
            trusted_clients: Vec::new(),
            allowed_groups: None,
            allows_groups: None,
            admin_group: "k8s-admin-access".to_owned(),
            groups_claim: "groups".to_owned(),
            algorithms: vec!["RS256".to_owned()],
            leeway: Duration::from_secs(30),
            jwks_refetch_cooldown: Duration::from_secs(30),
            jwks_refresh_interval: Duration::from_secs(15 * 60),
            jwks_fetch_timeout: Duration::from_secs(10),
            stream_ticket_ttl: Duration::from_secs(30),
            max_stream_tickets_per_user: 32,
            stream_token_grace: Duration::from_secs(5 * 60),
            kubernetes_authorization: KubernetesAuthorizationConfig::default(),
        }
    }
}

impl AuthConfig {
    /// `{keycloak_url}/realms/{realm}` without a trailing slash.
    pub fn issuer(&self) -> String {
        format!("{}/realms/{}", self.keycloak_url.trim_end_matches('/'), self.realm)
    }
    /// The audience a token must name (or `client_id` through `azp`).
    pub fn effective_audience(&self) -> &str {
        self.audience.as_deref().unwrap_or(&self.client_id)
    }
    /// The allowed groups after resolving the legacy alias (call after [`Config::validate`]).
    pub fn effective_allowed_groups(&self) -> &[String] {
        self.allowed_groups
            .as_deref()
            .or(self.allows_groups.as_deref())
            .unwrap_or(&[])
    }
}

/// Kubernetes client settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Path of a kubeconfig for local development. When unset, the in-cluster service
    /// account is tried first, then `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<String>,
    /// Sustained client-side request rate to the API server (requests per second).
    pub qps: f64,
    /// Requests allowed above `qps` in a burst.
    pub burst: u32,
    /// Timeout of one non-streaming API request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Timeout for establishing a connection to the API server.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            qps: 50.0,
            burst: 100,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The namespace allowlist.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespacesConfig {
    /// Namespaces KubeLens may show (required, exact names; no wildcards).
    pub allowed: Vec<String>,
}

/// Include/exclude regular expressions for one kind of object.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NameFilterConfig {
    /// When non-empty, a name must match at least one of these (unanchored regex).
    pub include: Vec<String>,
    /// A name matching any of these is hidden.
    pub exclude: Vec<String>,
}

/// Visibility filters applied after the namespace allowlist.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FiltersConfig {
    /// Pod name filters.
    pub pods: NameFilterConfig,
    /// App (top-level workload) name filters.
    pub apps: NameFilterConfig,
    /// Objects carrying any of these labels are hidden. `key: value` hides on an exact value;
    /// `key: "*"` hides whenever the label is present.
    pub exclude_labels: BTreeMap<String, String>,
}

/// Log limits and streaming behaviour.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Lines returned when the client does not ask for `tailLines`.
    pub default_tail_lines: u32,
    /// Upper bound for `tailLines`; larger requests are clamped.
    pub max_tail_lines: u32,
    /// Longer lines are cut to this many characters and marked truncated.
    pub max_line_length: usize,
    /// How long logs of a deleted pod stay readable from the archive.
    #[serde(with = "humantime_serde")]
    pub terminated_log_ttl: Duration,
    /// Interval of SSE keepalive comments.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Lines kept per upstream source in the fan-out hub's ring buffer (late-joiner backfill).
    pub hub_buffer_lines: usize,
    /// Bytes of log text kept per upstream source in the hub's ring buffer (oldest lines are
    /// evicted first): bounds hub memory per upstream when lines are long.
    pub hub_buffer_bytes: usize,
    /// Queued lines per viewer before it is marked lagged and cut loose.
    pub viewer_queue_lines: usize,
    /// Maximum concurrent upstream Kubernetes log streams for the whole process.
    pub max_upstream_streams: usize,
    /// Maximum concurrent streams per user (`sub`): SSE log streams, one-shot and archive
    /// reads while they run, and pod change streams (`/pods/watch`).
    pub max_streams_per_user: usize,
    /// Maximum sources (containers) one user's app log streams read together; a source
    /// beyond it gets a `status` `ended`/`too_many_streams` event (429 when no source of a
    /// new app stream fits).
    pub max_sources_per_user: usize,
    /// How long an app merge holds a *live* line for quiet sources before emitting it in
    /// timestamp order (history is merged exactly, without this window).
    #[serde(with = "humantime_serde")]
    pub merge_watermark: Duration,
    /// Hold a live line only as long as each quiet source's learned delay needs (plus
    /// 15 ms), at most `merge_watermark`; `false` always holds the whole watermark.
    pub merge_adaptive: bool,
    /// How long an app merge waits for a source that is still sending its history (opening,
    /// or backlog arriving), counted from that source's last event, before it merges without
    /// it (`status` reason `late`).
    #[serde(with = "humantime_serde")]
    pub merge_history_timeout: Duration,
    /// How long a partial SSE batch waits for more lines before it is written (0 = write
    /// every ready batch at once). Trades at most this much latency for one socket write per
    /// window instead of one per line, per viewer.
    #[serde(with = "humantime_serde")]
    pub sse_write_coalesce: Duration,
    /// Per-container cap of archived lines for terminated pods.
    pub archive_max_lines_per_container: usize,
    /// Per-container cap of archived bytes for terminated pods.
    pub archive_max_bytes_per_container: usize,
    /// Bounds of whole-log searches (`.../logs/search`).
    pub search: SearchConfig,
}

/// Bounds of one whole-log search (`GET .../pods/{name}/logs/search`, `.../apps/{name}/logs/search`).
/// A search also holds one of the caller's `logs.max_streams_per_user` slots and one upstream
/// slot while it runs; its memory is one upstream read chunk plus one line, whatever the bounds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Bytes of log text one search scans at most (all sources together); the search ends
    /// with reason `max_bytes` before the line that would cross it. 1 MiB to 1 TiB.
    pub max_bytes: u64,
    /// Matches one search returns at most; when one more is found it ends with reason
    /// `max_matches`. 1 to 1,000,000.
    pub max_matches: u64,
    /// How long one search runs at most (reason `max_duration`). 1 s to 1 h.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self { max_bytes: 4 << 30, max_matches: 10_000, max_duration: Duration::from_secs(120) }
    }
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            default_tail_lines: 500,
            max_tail_lines: 10_000,
            max_line_length: 10_000,
            terminated_log_ttl: Duration::from_secs(60 * 60),
            keepalive_interval: Duration::from_secs(15),
            hub_buffer_lines: 10_000,
            hub_buffer_bytes: 8 * 1024 * 1024,
            viewer_queue_lines: 4_096,
            max_upstream_streams: 2_000,
            max_streams_per_user: 50,
            max_sources_per_user: 200,
            merge_watermark: Duration::from_millis(250),
            merge_adaptive: true,
            merge_history_timeout: Duration::from_secs(10),
            sse_write_coalesce: Duration::from_millis(5),
            archive_max_lines_per_container: 50_000,
            archive_max_bytes_per_container: 16 * 1024 * 1024,
            search: SearchConfig::default(),
        }
    }
}

/// Which storage backend holds sessions and archived logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded sqlite file; single replica only.
    Sqlite,
    /// Shared PostgreSQL; several replicas.
    Postgres,
    /// Shared Redis; several replicas.
    Redis,
    /// Process memory; lost on restart. For tests and demos.
    Memory,
}

/// Storage settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite` (default), `postgres`, `redis` or `memory`.
    pub backend: StorageBackend,
    /// sqlite settings.
    pub sqlite: SqliteConfig,
    /// PostgreSQL settings.
    pub postgres: PostgresConfig,
    /// Redis settings.
    pub redis: RedisConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Sqlite,
            sqlite: SqliteConfig::default(),
            postgres: PostgresConfig::default(),
            redis: RedisConfig::default(),
        }
    }
}

/// sqlite settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// Database file; created when missing.
    pub path: String,
    /// How long a writer waits for a lock before failing.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self { path: "kubelens.db".to_owned(), busy_timeout: Duration::from_secs(5) }
    }
}

/// PostgreSQL settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection URL (`postgres://user:pass@host/db`). Prefer `KUBELENS_POSTGRES_URL`.
    pub url: Secret,
    /// Pool size.
    pub max_connections: u32,
    /// Schema holding KubeLens tables (created when missing); `null` uses the connection's
    /// default `search_path` (usually `public`). Lets several installations share a database.
    pub schema: Option<String>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self { url: Secret::default(), max_connections: 10, schema: None }
    }
}

/// Redis settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Connection URL (`redis://host:6379/0`). Prefer `KUBELENS_REDIS_URL`.
    pub url: Secret,
    /// Prefix of every key KubeLens writes, so one Redis can serve several installations.
    pub key_prefix: Option<String>,
}

/// Session API limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Largest accepted session document, in bytes (checked before the body is buffered).
    pub max_bytes: usize,
    /// Sessions unused for this long are forgotten; `null` keeps them forever.
    #[serde(with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { max_bytes: 64 * 1024, ttl: None }
    }
}

/// One problem found while loading or validating the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `auth.realm`; empty for whole-document problems.
    pub key: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Configuration could not be used; carries every problem found, one per line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// All problems, in document order where known.
    pub problems: Vec<ConfigProblem>,
}

impl ConfigError {
    fn single(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { problems: vec![ConfigProblem { key: key.into(), message: message.into() }] }
    }
}

/// A non-fatal remark produced by validation (e.g. a deprecated key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Dotted key path.
    pub key: String,
    /// What the operator should change.
    pub message: String,
}

const ASYMMETRIC_ALGORITHMS: &[&str] =
    &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

impl Config {
    /// Parses YAML text. Unknown keys and wrong types fail with the dotted key path.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Err(ConfigError::single("", "config file is empty"));
        }
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let key = if path == "." { String::new() } else { path };
            let inner = err.into_inner().to_string();
            // serde_yaml prefixes its message with the parent path ("auth: unknown field");
            // the key is already reported, so drop the repetition.
            let message = match inner.split_once(": ") {
                Some((prefix, rest)) if !prefix.contains(' ') && key.starts_with(prefix) => rest.to_owned(),
                _ => inner,
            };
            ConfigError::single(key, message)
        })
    }

    /// Applies overrides from the environment. The lookup is injected so the library never
    /// reads the process environment itself.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let non_empty = |name: &str| lookup(name).filter(|v| !v.is_empty());
        if let Some(v) = non_empty(env::AUTH_CLIENT_SECRET) {
            self.auth.client_secret = Secret::new(v);
        }
        if let Some(v) = non_empty(env::POSTGRES_URL) {
            self.storage.postgres.url = Secret::new(v);
        }
        if let Some(v) = non_empty(env::REDIS_URL) {
            self.storage.redis.url = Secret::new(v);
        }
        if let Some(v) = non_empty(env::STORAGE_BACKEND) {
            self.storage.backend = match v.as_str() {
                "sqlite" => StorageBackend::Sqlite,
                "postgres" => StorageBackend::Postgres,
                "redis" => StorageBackend::Redis,
                "memory" => StorageBackend::Memory,
                other => {
                    return Err(ConfigError::single(
                        env::STORAGE_BACKEND,
                        format!("unknown storage backend `{other}` (sqlite, postgres, redis, memory)"),
                    ));
                }
            };
        }
        if let Some(v) = non_empty(env::LISTEN) {
            self.server.listen = v.parse().map_err(|_| {
                ConfigError::single(env::LISTEN, format!("`{v}` is not a socket address"))
            })?;
        }
        Ok(())
    }

    /// Checks required fields and cross-field rules, resolves the legacy group alias, and
    /// returns warnings. Collects every problem instead of stopping at the first.
    pub fn validate(&mut self) -> Result<Vec<ConfigWarning>, ConfigError> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(ConfigProblem { key: key.to_owned(), message });
        };

        if self.server.web_client_id.trim().is_empty() {
            problem("server.web_client_id", "must not be empty".to_owned());
        }

        let auth = &mut self.auth;
        if auth.keycloak_url.trim().is_empty() {
            problem("auth.keycloak_url", "is required".to_owned());
        } else if !(auth.keycloak_url.starts_with("https://") || auth.keycloak_url.starts_with("http://")) {
            problem("auth.keycloak_url", "must start with http:// or https://".to_owned());
        } else if !crate::auth::key_material_issuer_allowed(&auth.keycloak_url) {
            problem(
                "auth.keycloak_url",
                "must be https:// (plain http:// only for a Keycloak on loopback: 127.0.0.1, ::1, localhost); signing keys are never fetched without TLS".to_owned(),
            );
        }
        if auth.realm.trim().is_empty() {
            problem("auth.realm", "is required".to_owned());
        } else if auth.realm.contains('/') {
            problem("auth.realm", "must not contain `/`".to_owned());
        }
        if auth.client_id.trim().is_empty() {
            problem("auth.client_id", "is required".to_owned());
        }
        match (&auth.allowed_groups, &auth.allows_groups) {
            (Some(canonical), Some(legacy)) if canonical != legacy => problem(
                "auth.allows_groups",
                "is a deprecated alias of auth.allowed_groups and both are set with different values; keep only auth.allowed_groups".to_owned(),
            ),
            (canonical, Some(legacy)) => {
                warnings.push(ConfigWarning {
                    key: "auth.allows_groups".to_owned(),
                    message: "is deprecated; rename it to auth.allowed_groups".to_owned(),
                });
                if canonical.is_none() {
                    auth.allowed_groups = Some(legacy.clone());
                }
                auth.allows_groups = None;
            }
            _ => {}
        }
        match &auth.allowed_groups {
            None => problem("auth.allowed_groups", "is required (e.g. [k8s-logs-access])".to_owned()),
            Some(groups) if groups.is_empty() => {
                problem("auth.allowed_groups", "must name at least one group".to_owned())
            }
            Some(groups) => {
                for (i, g) in groups.iter().enumerate() {
                    if g.trim().trim_start_matches('/').is_empty() {
                        problem(&format!("auth.allowed_groups[{i}]"), "must not be empty".to_owned());
                    }
                }
            }
        }
        if auth.groups_claim.trim().is_empty() {
            problem("auth.groups_claim", "must not be empty".to_owned());
        }
        if auth.algorithms.is_empty() {
            problem("auth.algorithms", "must name at least one algorithm".to_owned());
        }
        for (i, alg) in auth.algorithms.iter().enumerate() {
            if !ASYMMETRIC_ALGORITHMS.contains(&alg.as_str()) {
                problem(
                    &format!("auth.algorithms[{i}]"),
                    format!("`{alg}` is not allowed; use one of {}", ASYMMETRIC_ALGORITHMS.join(", ")),
                );
            }
        }
        if auth.leeway > Duration::from_secs(300) {
            problem("auth.leeway", "must be at most 5m".to_owned());
        }
        if auth.jwks_fetch_timeout.is_zero() || auth.jwks_fetch_timeout > Duration::from_secs(60) {
            problem("auth.jwks_fetch_timeout", "must be between 1ms and 60s".to_owned());
        }
        // A zero cooldown would let every token with a random `kid` trigger a JWKS fetch.
        if auth.jwks_refetch_cooldown < Duration::from_secs(1) {
            problem("auth.jwks_refetch_cooldown", "must be at least 1s".to_owned());
        }
        if auth.jwks_refresh_interval < Duration::from_secs(1) {
            problem("auth.jwks_refresh_interval", "must be at least 1s".to_owned());
        }
        if auth.stream_ticket_ttl.is_zero() || auth.stream_ticket_ttl > Duration::from_secs(300) {
            problem("auth.stream_ticket_ttl", "must be between 1s and 5m".to_owned());
        }
        if auth.max_stream_tickets_per_user == 0 || auth.max_stream_tickets_per_user > 1_000 {
            problem("auth.max_stream_tickets_per_user", "must be between 1 and 1000".to_owned());
        }
        let authz = &auth.kubernetes_authorization;
        if authz.cache_ttl < Duration::from_secs(1) || authz.cache_ttl > Duration::from_secs(300) {
            problem("auth.kubernetes_authorization.cache_ttl", "must be between 1s and 5m".to_owned());
        }
        if !((64 << 10)..=(256 << 20)).contains(&authz.cache_max_bytes) {
            problem("auth.kubernetes_authorization.cache_max_bytes", "must be between 64 KiB (65536) and 256 MiB (268435456)".to_owned());
        }
        for (key, prefix) in [("username_prefix", &authz.username_prefix), ("groups_prefix", &authz.groups_prefix)] {
            if prefix.len() > 64 || prefix.chars().any(char::is_control) {
                problem(&format!("auth.kubernetes_authorization.{key}"), "must be at most 64 bytes without control characters".to_owned());
            }
        }

        if self.namespaces.allowed.is_empty() {
            problem("namespaces.allowed", "is required: list the namespaces KubeLens may show".to_owned());
        }
        for (i, ns) in self.namespaces.allowed.iter().enumerate() {
            if !crate::names::is_dns1123_label(ns) {
                problem(
                    &format!("namespaces.allowed[{i}]"),
                    format!("`{ns}` is not a valid namespace name (DNS-1123 label; no wildcards)"),
                );
            }
        }

        for (key, list) in [
            ("filters.pods.include", &self.filters.pods.include),
            ("filters.pods.exclude", &self.filters.pods.exclude),
            ("filters.apps.include", &self.filters.apps.include),
            ("filters.apps.exclude", &self.filters.apps.exclude),
        ] {
            for (i, pattern) in list.iter().enumerate() {
                if let Err(err) = Regex::new(pattern) {
                    let first_line = err.to_string().lines().last().unwrap_or("invalid").trim().to_owned();
                    problem(&format!("{key}[{i}]"), format!("invalid regex `{pattern}`: {first_line}"));
                }
            }
        }
        for key in self.filters.exclude_labels.keys() {
            if key.is_empty() {
                problem("filters.exclude_labels", "label keys must not be empty".to_owned());
            }
        }

        let logs = &self.logs;
        if logs.max_tail_lines == 0 {
            problem("logs.max_tail_lines", "must be at least 1".to_owned());
        }
        if logs.default_tail_lines > logs.max_tail_lines {
            problem("logs.default_tail_lines", "must not exceed logs.max_tail_lines".to_owned());
        }
        if logs.max_line_length < 64 {
            problem("logs.max_line_length", "must be at least 64".to_owned());
        }
        for (key, value) in [
            ("logs.hub_buffer_lines", logs.hub_buffer_lines),
            ("logs.viewer_queue_lines", logs.viewer_queue_lines),
            ("logs.max_upstream_streams", logs.max_upstream_streams),
            ("logs.max_streams_per_user", logs.max_streams_per_user),
            ("logs.max_sources_per_user", logs.max_sources_per_user),
        ] {
            if value == 0 {
                problem(key, "must be at least 1".to_owned());
            }
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&logs.hub_buffer_bytes) {
            problem("logs.hub_buffer_bytes", "must be between 64 KiB (65536) and 1 GiB (1073741824)".to_owned());
        }
        if !((1 << 20)..=(1 << 40)).contains(&logs.search.max_bytes) {
            problem("logs.search.max_bytes", "must be between 1 MiB (1048576) and 1 TiB (1099511627776)".to_owned());
        }
        if !(1..=1_000_000).contains(&logs.search.max_matches) {
            problem("logs.search.max_matches", "must be between 1 and 1000000".to_owned());
        }
        if logs.search.max_duration < Duration::from_secs(1) || logs.search.max_duration > Duration::from_secs(3600) {
            problem("logs.search.max_duration", "must be between 1s and 1h".to_owned());
        }
        if logs.keepalive_interval < Duration::from_secs(1) {
            problem("logs.keepalive_interval", "must be at least 1s".to_owned());
        }
        if logs.merge_history_timeout < Duration::from_secs(1) || logs.merge_history_timeout > Duration::from_secs(300) {
            problem("logs.merge_history_timeout", "must be between 1s and 5m (an app stream holds for a source's history at most this long)".to_owned());
        }
        if logs.sse_write_coalesce > Duration::from_secs(1) {
            problem("logs.sse_write_coalesce", "must be at most 1s (it is added to every line's latency)".to_owned());
        }

        if !(self.kubernetes.qps > 0.0 && self.kubernetes.qps.is_finite()) {
            problem("kubernetes.qps", "must be a positive number".to_owned());
        }
        if self.kubernetes.burst == 0 {
            problem("kubernetes.burst", "must be at least 1".to_owned());
        }

        match self.storage.backend {
            StorageBackend::Sqlite if self.storage.sqlite.path.trim().is_empty() => {
                problem("storage.sqlite.path", "is required for the sqlite backend".to_owned())
            }
            StorageBackend::Postgres if self.storage.postgres.url.is_empty() => problem(
                "storage.postgres.url",
                format!("is required for the postgres backend (or set {})", env::POSTGRES_URL),
            ),
            StorageBackend::Redis if self.storage.redis.url.is_empty() => problem(
                "storage.redis.url",
                format!("is required for the redis backend (or set {})", env::REDIS_URL),
            ),
            _ => {}
        }
        if self.storage.postgres.max_connections == 0 {
            problem("storage.postgres.max_connections", "must be at least 1".to_owned());
        }
        if self.session.max_bytes < 256 {
            problem("session.max_bytes", "must be at least 256".to_owned());
        }
        if self.audit.retention < Duration::from_secs(3600) || self.audit.retention > Duration::from_secs(3650 * 24 * 3600) {
            problem("audit.retention", "must be between 1h and 10 years".to_owned());
        }
        if !(100..=1_000_000).contains(&self.audit.queue_max_events) {
            problem("audit.queue_max_events", "must be between 100 and 1000000".to_owned());
        }
        if self.audit.store && self.storage.backend == StorageBackend::Memory {
            warnings.push(ConfigWarning {
                key: "audit.store".to_owned(),
                message: "the memory backend keeps audit events only until this process exits".to_owned(),
            });
        }
        let server = &self.server;
        if server.header_read_timeout < Duration::from_secs(1) || server.header_read_timeout > Duration::from_secs(300) {
            problem("server.header_read_timeout", "must be between 1s and 5m".to_owned());
        }
        if server.idle_timeout <= self.logs.keepalive_interval {
            problem(
                "server.idle_timeout",
                "must exceed logs.keepalive_interval (else idle SSE streams would be cut)".to_owned(),
            );
        }
        if server.max_connections == 0 {
            problem("server.max_connections", "must be at least 1".to_owned());
        }
        if let Some(tls) = &server.tls {
            if tls.cert_file.trim().is_empty() {
                problem("server.tls.cert_file", "is required when server.tls is set".to_owned());
            }
            if tls.key_file.trim().is_empty() {
                problem("server.tls.key_file", "is required when server.tls is set".to_owned());
            }
            if tls.reload_interval < Duration::from_secs(1) || tls.reload_interval > Duration::from_secs(3600) {
                problem("server.tls.reload_interval", "must be between 1s and 1h".to_owned());
            }
        }
        if !(1..=10_000).contains(&server.http2.max_concurrent_streams) {
            problem("server.http2.max_concurrent_streams", "must be between 1 and 10000".to_owned());
        }
        if !(4096..=1024 * 1024).contains(&server.http2.max_header_list_bytes) {
            problem("server.http2.max_header_list_bytes", "must be between 4096 and 1048576".to_owned());
        }
        if let Some(interval) = server.http2.keepalive_interval
            && (interval < Duration::from_secs(1) || interval > Duration::from_secs(3600))
        {
            problem("server.http2.keepalive_interval", "must be between 1s and 1h (or null)".to_owned());
        }
        for (i, origin) in self.server.cors_allowed_origins.iter().enumerate() {
            if origin == "*" || !(origin.starts_with("http://") || origin.starts_with("https://")) {
                problem(
                    &format!("server.cors_allowed_origins[{i}]"),
                    format!("`{origin}` must be an exact origin like https://logs.example.com (no wildcard)"),
                );
            }
        }

        if problems.is_empty() { Ok(warnings) } else { Err(ConfigError { problems }) }
    }

    /// Parse, apply environment overrides and validate in one step.
    pub fn load(
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<ConfigWarning>), ConfigError> {
        let mut config = Self::from_yaml(text)?;
        config.apply_env(lookup)?;
        let warnings = config.validate()?;
        Ok((config, warnings))
    }

    /// The effective configuration as YAML, with every secret redacted.
    pub fn to_redacted_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_else(|err| format!("# could not render config: {err}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
auth:
  keycloak_url: https://sso.example.com
  realm: main
  client_id: kubelens
  allowed_groups: [k8s-logs-access]
namespaces:
  allowed: [team-a]
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(text: &str) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        Config::load(text, no_env)
    }

    fn problems(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => panic!("expected an error"),
            Err(err) => err.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_are_applied() {
        let (config, warnings) = load(MINIMAL).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(config.logs.default_tail_lines, 500);
        assert_eq!(config.logs.max_tail_lines, 10_000);
        assert_eq!(config.logs.max_line_length, 10_000);
        assert_eq!(config.logs.terminated_log_ttl, Duration::from_secs(3600));
        assert_eq!(config.kubernetes.qps, 50.0);
        assert_eq!(config.kubernetes.burst, 100);
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.storage.backend, StorageBackend::Sqlite);
        assert_eq!(config.storage.sqlite.path, "kubelens.db");
        assert_eq!(config.auth.admin_group, "k8s-admin-access");
        assert_eq!(config.auth.groups_claim, "groups");
        assert_eq!(config.auth.algorithms, vec!["RS256"]);
        assert_eq!(config.session.max_bytes, 65536);
        assert_eq!(config.auth.issuer(), "https://sso.example.com/realms/main");
        assert_eq!(config.auth.max_stream_tickets_per_user, crate::auth::DEFAULT_TICKETS_PER_USER);
    }

    #[test]
    fn search_bounds_have_defaults_and_are_validated() {
        let (config, _) = load(MINIMAL).unwrap();
        assert_eq!((config.logs.search.max_bytes, config.logs.search.max_matches), (4 << 30, 10_000));
        assert_eq!(config.logs.search.max_duration, Duration::from_secs(120));
        let (config, _) = load(&format!("{MINIMAL}logs:\n  search:\n    max_matches: 5\n    max_duration: 10s\n")).unwrap();
        assert_eq!((config.logs.search.max_matches, config.logs.search.max_duration), (5, Duration::from_secs(10)));
        let found = problems(&format!("{MINIMAL}logs:\n  search:\n    max_bytes: 10\n    max_matches: 0\n    max_duration: 2h\n"));
        for key in ["logs.search.max_bytes", "logs.search.max_matches", "logs.search.max_duration"] {
            assert!(found.iter().any(|p| p.starts_with(key)), "missing {key} in {found:?}");
        }
        assert!(!problems(&format!("{MINIMAL}logs:\n  search:\n    max_lines: 5\n")).is_empty(), "unknown keys are errors");
    }

    #[test]
    fn required_fields_are_all_reported() {
        let found = problems("server:\n  listen: 127.0.0.1:1\n");
        for key in ["auth.keycloak_url", "auth.realm", "auth.client_id", "auth.allowed_groups", "namespaces.allowed"] {
            assert!(found.iter().any(|p| p.starts_with(key)), "missing {key} in {found:?}");
        }
    }

    #[test]
    fn legacy_alias_is_accepted_with_a_warning() {
        let text = MINIMAL.replace("allowed_groups", "allows_groups");
        let (config, warnings) = load(&text).unwrap();
        assert_eq!(config.auth.effective_allowed_groups(), ["k8s-logs-access"]);
        assert_eq!(config.auth.allowed_groups.as_deref(), Some(&["k8s-logs-access".to_owned()][..]));
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].key, "auth.allows_groups");
    }

    #[test]
    fn legacy_alias_equal_to_canonical_is_fine_but_different_is_an_error() {
        let same = MINIMAL.replace(
            "allowed_groups: [k8s-logs-access]",
            "allowed_groups: [k8s-logs-access]\n  allows_groups: [k8s-logs-access]",
        );
        assert!(load(&same).is_ok());
        let different = MINIMAL.replace(
            "allowed_groups: [k8s-logs-access]",
            "allowed_groups: [k8s-logs-access]\n  allows_groups: [other]",
        );
        let found = problems(&different);
        assert!(found[0].starts_with("auth.allows_groups:"), "{found:?}");
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let text = MINIMAL.replace("realm: main", "realm: main\n  relam: typo");
        let found = problems(&text);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("auth"), "{found:?}");
        assert!(found[0].contains("relam"), "{found:?}");
        let nested = format!("{MINIMAL}logs:\n  tail: 5\n");
        let found = problems(&nested);
        assert!(found[0].contains("logs") && found[0].contains("tail"), "{found:?}");
    }

    #[test]
    fn wrong_types_name_their_path() {
        let text = format!("{MINIMAL}logs:\n  max_tail_lines: lots\n");
        let found = problems(&text);
        assert!(found[0].starts_with("logs.max_tail_lines"), "{found:?}");
        let text = format!("{MINIMAL}logs:\n  terminated_log_ttl: forever\n");
        assert!(problems(&text)[0].starts_with("logs.terminated_log_ttl"));
    }

    #[test]
    fn tls_and_http2_settings_are_checked() {
        let text = format!("{MINIMAL}server:\n  tls:\n    cert_file: /etc/kubelens/tls.crt\n    key_file: /etc/kubelens/tls.key\n  http2:\n    max_concurrent_streams: 2000\n    keepalive_interval: 30s\n");
        let (config, _) = load(&text).unwrap();
        let tls = config.server.tls.unwrap();
        assert_eq!(tls.reload_interval, Duration::from_secs(10));
        assert_eq!(config.server.http2.max_concurrent_streams, 2000);
        assert_eq!(config.server.http2.keepalive_interval, Some(Duration::from_secs(30)));

        let text = format!("{MINIMAL}server:\n  tls:\n    cert_file: ''\n    key_file: k\n    reload_interval: 100ms\n  http2:\n    max_concurrent_streams: 0\n    max_header_list_bytes: 100\n");
        let found = problems(&text);
        for key in ["server.tls.cert_file", "server.tls.reload_interval", "server.http2.max_concurrent_streams", "server.http2.max_header_list_bytes"] {
            assert!(found.iter().any(|p| p.starts_with(key)), "{key} in {found:?}");
        }
        // Both files are required.
        let text = format!("{MINIMAL}server:\n  tls:\n    cert_file: c\n");
        assert!(problems(&text)[0].contains("key_file"), "{:?}", problems(&text));
    }

    #[test]
    fn malformed_yaml_and_empty_files_are_errors() {
        assert!(!problems("auth: [unclosed").is_empty());
        assert_eq!(problems("   \n"), vec!["config file is empty"]);
    }

    #[test]
    fn invalid_regexes_name_the_filter() {
        let text = format!("{MINIMAL}filters:\n  pods:\n    exclude: ['ok', '(unclosed']\n");
        let found = problems(&text);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("filters.pods.exclude[1]: invalid regex"), "{found:?}");
    }

    #[test]
    fn namespaces_must_be_exact_names() {
        for bad in ["'*'", "''", "all/x", "Team-A", "'..'"] {
            let text = MINIMAL.replace("[team-a]", &format!("[{bad}]"));
            let found = problems(&text);
            assert!(found[0].starts_with("namespaces.allowed[0]"), "{bad}: {found:?}");
        }
    }

    #[test]
    fn symmetric_algorithms_are_rejected() {
        let text = MINIMAL.replace("realm: main", "realm: main\n  algorithms: [RS256, HS256, none]");
        let found = problems(&text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("auth.algorithms[1]"));
    }

    #[test]
    fn env_overrides_secrets_and_backend() {
        let text = format!("{MINIMAL}storage:\n  backend: postgres\n");
        assert!(problems(&text)[0].starts_with("storage.postgres.url"));
        let (config, _) = Config::load(&text, |name| match name {
            env::POSTGRES_URL => Some("postgres://u:hunter2@localhost/db".to_owned()),
            env::AUTH_CLIENT_SECRET => Some("s3cret".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.storage.postgres.url.expose(), "postgres://u:hunter2@localhost/db");
        assert_eq!(config.auth.client_secret.expose(), "s3cret");
        let rendered = config.to_redacted_yaml();
        assert!(!rendered.contains("hunter2") && !rendered.contains("s3cret"), "{rendered}");
        assert!(rendered.contains("***redacted***"));
        assert!(!format!("{config:?}").contains("hunter2"));
        let (config, _) = Config::load(MINIMAL, |name| {
            (name == env::STORAGE_BACKEND).then(|| "memory".to_owned())
        })
        .unwrap();
        assert_eq!(config.storage.backend, StorageBackend::Memory);
        assert!(Config::load(MINIMAL, |name| (name == env::STORAGE_BACKEND).then(|| "mysql".to_owned())).is_err());
    }

    #[test]
    fn jwks_refetch_cooldown_has_a_lower_bound() {
        for bad in ["0s", "500ms"] {
            let text = MINIMAL.replace("realm: main", &format!("realm: main\n  jwks_refetch_cooldown: {bad}"));
            let found = problems(&text);
            assert_eq!(found.len(), 1, "{bad}: {found:?}");
            assert!(found[0].starts_with("auth.jwks_refetch_cooldown: must be at least 1s"), "{bad}: {found:?}");
        }
        let text = MINIMAL.replace("realm: main", "realm: main\n  jwks_refetch_cooldown: 1s");
        assert_eq!(load(&text).unwrap().0.auth.jwks_refetch_cooldown, Duration::from_secs(1));
    }

    #[test]
    fn plain_http_keycloak_only_on_loopback() {
        for bad in ["http://sso.example.com", "http://10.0.0.5:8080", "http://0.0.0.0:8080"] {
            let found = problems(&MINIMAL.replace("https://sso.example.com", bad));
            assert!(found[0].starts_with("auth.keycloak_url: must be https://"), "{bad}: {found:?}");
        }
        for ok in ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"] {
            assert!(load(&MINIMAL.replace("https://sso.example.com", ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn listener_timeouts_are_validated() {
        let found = problems(&format!("{MINIMAL}server:\n  header_read_timeout: 0s\n  idle_timeout: 10s\n  max_connections: 0\n"));
        assert!(found.iter().any(|p| p.starts_with("server.header_read_timeout")), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("server.idle_timeout: must exceed logs.keepalive_interval")), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("server.max_connections")), "{found:?}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../examples/config.yaml");
        let (config, warnings) = load(text).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(!config.namespaces.allowed.is_empty());
    }
}
