//! Serving with graceful shutdown: readiness fails first, streams get a final event, and the
//! process exits within the configured grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use salvo::conn::tcp::TcpAcceptor;
use salvo::prelude::*;

use crate::state::AppState;

/// How long readiness reports "shutting down" before the listener stops accepting, so load
/// balancers notice and route new requests elsewhere.
const READINESS_DRAIN_DELAY: Duration = Duration::from_secs(1);

/// Binds `addr` and serves `state` until `shutdown_signal` resolves, then drains.
/// Returns the bound address through `on_bound` (useful with port 0 in tests).
pub async fn serve(
    state: AppState,
    addr: SocketAddr,
    shutdown_signal: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    let local = std_listener.local_addr()?;
    std_listener.set_nonblocking(true)?;
    let tokio_listener = tokio::net::TcpListener::from_std(std_listener)?;
    let acceptor = TcpAcceptor::try_from(tokio_listener)?;
    on_bound(local);
    tracing::info!(address = %local, "listening");

    let server = Server::new(acceptor)
        .fuse_config(connection_limits(&state.config.server))
        .max_connections(state.config.server.max_connections);
    let handle = server.handle();
    if let Some(metrics_addr) = state.config.server.metrics_listen {
        spawn_metrics_listener(state.clone(), metrics_addr).await?;
    }
    let grace = state.config.server.shutdown_grace;
    let readiness = state.readiness.clone();
    let streams = state.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal.await;
        tracing::info!(grace = ?grace, "shutdown requested: failing readiness, draining");
        readiness.begin_shutdown();
        tokio::time::sleep(READINESS_DRAIN_DELAY.min(grace)).await;
        // Long-lived SSE streams watch this token and end with a final status event.
        streams.cancel();
        handle.stop_graceful(grace.saturating_sub(READINESS_DRAIN_DELAY));
    });
    server.serve(crate::service(state)).await;
    tracing::info!("server stopped");
    Ok(())
}

/// Slowloris and idle-connection protection: salvo's fuse bounds the whole HTTP/1 head read
/// (protocol detection included) by `server.header_read_timeout` and closes connections with
/// no traffic for `server.idle_timeout` (SSE keepalives count as traffic).
fn connection_limits(server: &kubelens_core::config::ServerConfig) -> salvo::fuse::FuseConfig {
    salvo::fuse::FuseConfig::default()
        .with_http1_header_timeout(server.header_read_timeout)
        .with_connection_idle_timeout(server.idle_timeout)
}

/// Serves `/metrics` on its own listener until the process ends (it needs no draining: a
/// scrape is one short request).
async fn spawn_metrics_listener(state: AppState, addr: SocketAddr) -> std::io::Result<()> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let acceptor = TcpAcceptor::try_from(tokio::net::TcpListener::from_std(std_listener)?)?;
    tracing::info!(address = %addr, "metrics listening");
    let server = Server::new(acceptor).fuse_config(connection_limits(&state.config.server));
    tokio::spawn(server.serve(crate::metrics_router(state)));
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
