//! The `kubelens` binary: reads the config file and environment, wires the subsystems and
//! serves the v1 API until SIGTERM/SIGINT.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;

/// Exit code for configuration problems (distinct from runtime failures).
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "kubelens", version, about = "Kubernetes log viewer backend")]
struct Cli {
    /// Path of the YAML config file.
    #[arg(long, short, env = "KUBELENS_CONFIG", default_value = "config.yaml", global = true)]
    config: PathBuf,
    /// Log format: `json` (default when stderr is not a terminal) or `pretty`.
    #[arg(long, env = "KUBELENS_LOG_FORMAT", global = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Validate the config, print the effective config with secrets redacted, and exit
    /// non-zero on any problem.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format.as_deref());
    let config = match load_config(&cli.config) {
        Ok(config) => config,
        Err(lines) => {
            for line in lines {
                eprintln!("config error: {line}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            print!("{}", config.to_redacted_yaml());
            ExitCode::SUCCESS
        }
        Command::Serve => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("cannot start the async runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "kubelens failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Reads, parses, overrides from the environment and validates; every problem is one line
/// that names its key.
fn load_config(path: &PathBuf) -> Result<Config, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| vec![format!("{}: cannot read: {err}", path.display())])?;
    let (config, warnings) = Config::load(&text, |name| std::env::var(name).ok())
        .map_err(|err| err.problems.iter().map(|p| format!("{}: {p}", path.display())).collect::<Vec<_>>())?;
    for warning in warnings {
        tracing::warn!(key = %warning.key, "config: {}", warning.message);
    }
    Ok(config)
}

fn init_tracing(format: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KUBELENS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = match format {
        Some("pretty") => true,
        Some(_) => false,
        None => std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if pretty {
        builder.init();
    } else {
        builder.json().flatten_event(true).with_current_span(true).init();
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Unusable TLS files stop the process before anything else starts (the listener loads
    // them again when it binds, and from then on on every change).
    if let Some(tls) = &config.server.tls {
        kubelens_salvo::tls::CertReload::load(tls).await?;
    }
    let readiness = Readiness::new();
    readiness.register("config", "loaded").ready("loaded");
    // "kubernetes_config": a client configuration is obtainable (in-cluster or kubeconfig),
    // resolved once. From it, ONE client: rate-limited by `kubernetes.qps`/`burst`, without a
    // socket read timeout (quiet watches and log streams are normal). Discovery, log streams,
    // retention watches, the inspector and the RBAC reviews all send through it.
    // Reachability and cache sync are reported by the discovery subsystem's own check.
    let kube_check = readiness.register("kubernetes_config", "resolving client configuration");
    let authenticator = kubelens_core::auth::Authenticator::new(&config.auth)?;
    // Loads discovery + JWKS in the background (retrying while Keycloak is down) and refreshes
    // the keys periodically; the guard stops it when serving ends.
    let _key_refresh = authenticator.spawn_key_refresh(readiness.register("oidc", "loading OIDC discovery"));
    let policy = kubelens_core::policy::AccessPolicy::from_config(&config)?;
    let cluster = match kubelens_core::kubeclient::client_config(&config.kubernetes).await {
        Ok((kube_config, source)) => {
            kube_check.ready(&format!("client configuration from {source:?}"));
            let stats = kubelens_core::cluster::ApiRequestStats::default();
            match kubelens_core::cluster::build_client(kube_config, &config.kubernetes, stats.clone()) {
                Ok(client) => {
                    tracing::info!(source = ?source, namespaces = config.namespaces.allowed.len(), "Kubernetes caches starting");
                    // The caches register the `kubernetes` readiness check and flip it once synced.
                    Some(kubelens_core::cluster::Cluster::with_client(client, stats, &policy, &readiness))
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot build the Kubernetes client");
                    None
                }
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "no Kubernetes client configuration");
            kube_check.not_ready("no Kubernetes client configuration (not in a cluster, no kubeconfig)");
            None
        }
    };
    if cluster.is_none() {
        // Without a client the process still serves (healthz, a 503 readyz saying why).
        readiness
            .register(kubelens_core::cluster::READINESS_CHECK, "no Kubernetes client")
            .not_ready("no Kubernetes client (see the kubernetes_config check)");
    }
    // Storage opens in the background (with backoff) so /healthz answers and log streaming
    // works while the database is still unreachable; the session API answers 503 until then.
    let storage_check = readiness.register("storage", "connecting");
    let limits = kubelens_core::storage::StoreLimits::from_config(&config);
    let backend = config.storage.backend;
    let (deferred, _opener) =
        kubelens_storage::DeferredStores::open_in_background(config.storage.clone(), limits, {
            let check = storage_check.clone();
            move |err| {
                tracing::warn!(error = %err, "cannot open storage yet; retrying");
                check.not_ready("connecting (backend unreachable or failing migrations)");
            }
        });
    let stores = deferred.as_stores(backend);
    tokio::spawn(kubelens_storage::watch_health(
        stores.clone(),
        storage_check,
        std::time::Duration::from_secs(5),
        12,
    ));
    let listen = config.server.listen;
    let mut state = AppState::new(config, readiness).with_auth(authenticator);
    // Every storage operation is timed and backend failures are counted (metrics decorator).
    let instrumented = kubelens_storage::Stores {
        sessions: std::sync::Arc::new(kubelens_core::storage::instrumented::Instrumented::new(stores.sessions, state.metrics.clone())),
        archive: std::sync::Arc::new(kubelens_core::storage::instrumented::Instrumented::new(stores.archive, state.metrics.clone())),
        credentials: std::sync::Arc::new(kubelens_core::storage::instrumented::Instrumented::new(stores.credentials, state.metrics.clone())),
        audit: std::sync::Arc::new(kubelens_core::storage::instrumented::Instrumented::new(stores.audit, state.metrics.clone())),
        backend: stores.backend,
    };
    // The audit trail's stored copy: a bounded queue drained by one writer task. Once the HTTP
    // side has drained (streams ended at shutdown record `logs_closed` first), the writer
    // stores what is queued and ends; awaited below within the grace.
    let mut audit_writer = None;
    let (audit_stop, audit_stopped) = tokio::sync::oneshot::channel::<()>();
    if state.config.audit.store {
        let (trail, writer) = kubelens_core::audit::AuditTrail::with_store(
            instrumented.audit.clone(),
            state.config.audit.queue_max_events,
            state.config.audit.retention,
        );
        state.audit = trail;
        audit_writer = Some(tokio::spawn(writer.run(async move {
            let _ = audit_stopped.await;
        })));
    }
    // Several replicas share PostgreSQL or Redis: stream tickets and credentials go there too,
    // so any replica redeems what another issued (no session affinity needed).
    if instrumented.is_shared() {
        state.tickets = state.tickets.clone().with_shared_store(instrumented.credentials.clone());
        state.stream_credentials = state.stream_credentials.clone().with_shared_store(instrumented.credentials.clone());
    }
    state.storage = Some(instrumented);
    if let Some(cluster) = cluster {
        // Log lookups and liveness checks come from the watch cache, under the full policy;
        // without the cache there is no log service (503), never a partial policy.
        let service = kubelens_salvo::logs::LogService::new(&state.config, cluster.clone(), state.policy.clone())
            // Count upstream streams, reconnects and lines received.
            .with_metrics(&state.metrics);
        state.logs = Some(std::sync::Arc::new(service));
        state = state.with_cluster(cluster.clone());
        // Terminated pods' log archive, in the same (background-opened) storage: archive calls
        // fail fast until it is open, and captures count those failures as missed.
        if let (Some(service), Some(stores)) = (state.logs.clone(), state.storage.clone()) {
            state.retention = Some(kubelens_salvo::archive::Retention::start_with_watches(
                &state,
                stores.archive,
                cluster.client(),
                service.upstream.clone(),
            ));
        }
    }
    // Shutdown: the HTTP side drains within `server.shutdown_grace` of the signal; captures of
    // terminated pods that are still being written get what is left of that same budget, so
    // a SIGTERM does not lose the logs of a pod that just finished.
    let signalled = std::sync::Arc::new(std::sync::OnceLock::new());
    let signal = {
        let signalled = std::sync::Arc::clone(&signalled);
        async move {
            kubelens_salvo::server::termination_signal().await;
            let _ = signalled.set(tokio::time::Instant::now());
        }
    };
    let (retention, grace) = (state.retention.clone(), state.config.server.shutdown_grace);
    kubelens_salvo::server::serve(state, listen, signal, |_| {}).await?;
    if let Some(retention) = retention {
        let running = retention.recorder.in_flight();
        let deadline = signalled.get().copied().unwrap_or_else(tokio::time::Instant::now) + grace;
        match retention.drain(deadline).await {
            0 if running > 0 => tracing::info!(captures = running, "log captures finished before exit"),
            0 => {}
            left => tracing::warn!(captures = left, "exiting with log captures still running: the rest of their logs is not archived"),
        }
    }
    drop(audit_stop);
    if let Some(writer) = audit_writer {
        let deadline = signalled.get().copied().unwrap_or_else(tokio::time::Instant::now) + grace;
        if tokio::time::timeout_at(deadline, writer).await.is_err() {
            tracing::warn!("exiting with audit events not yet stored (the process log has them)");
        }
    }
    Ok(())
}
