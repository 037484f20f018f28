//! Serving with graceful shutdown: readiness fails first, streams get a final event, and the
//! process exits within the configured grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use salvo::conn::tcp::TcpAcceptor;
use salvo::conn::{Acceptor, Listener, RustlsListener};
use salvo::prelude::*;

use crate::state::AppState;
use crate::tls::{CertReload, TlsError};

/// How long readiness reports "shutting down" before the listener stops accepting, so load
/// balancers notice and route new requests elsewhere.
const READINESS_DRAIN_DELAY: Duration = Duration::from_secs(1);

/// Hyper's HTTP/1 read buffer limit (`max_buf_size`): the largest request head plus buffered
/// body hyper holds for one connection. Hyper's own default is ~400 KiB; request heads here
/// are a bearer token and a few headers, so 64 KiB is ample and bounds what a client can make
/// one connection hold. (The 8 KiB hyper allocates on the first read is its minimum: it does
/// not shrink an idle connection's buffers below that.)
const HTTP1_MAX_BUF_BYTES: usize = 64 * 1024;

/// The listener could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Binding or accepting failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// `server.tls` names files that cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Binds `addr` and serves `state` until `shutdown_signal` resolves, then drains.
/// Returns the bound address through `on_bound` (useful with port 0 in tests).
///
/// Without `server.tls` the listener speaks cleartext HTTP/1.1 and HTTP/2 with prior
/// knowledge (h2c) on the same port (salvo tells them apart by the HTTP/2 preface). With it,
/// the listener speaks TLS only, offering `h2` and `http/1.1` by ALPN; the certificate files
/// are checked before the port is bound (an unusable pair is a startup error naming the
/// file) and reloaded when they change ([`crate::tls`]).
pub async fn serve(
    state: AppState,
    addr: SocketAddr,
    shutdown_signal: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let tls = match &state.config.server.tls {
        Some(config) => Some(CertReload::load(config).await?),
        None => None,
    };
    let std_listener = std::net::TcpListener::bind(addr)?;
    let local = std_listener.local_addr()?;
    std_listener.set_nonblocking(true)?;
    let tokio_listener = tokio::net::TcpListener::from_std(std_listener)?;
    let acceptor = TcpAcceptor::try_from(tokio_listener)?;
    match tls {
        Some(certs) => {
            let acceptor = RustlsListener::new(certs, Bound(acceptor))
                .try_bind()
                .await
                .map_err(|err| std::io::Error::other(err.to_string()))?;
            on_bound(local);
            tracing::info!(address = %local, protocols = "TLS: h2, http/1.1", "listening");
            run(acceptor, state, shutdown_signal).await
        }
        None => {
            on_bound(local);
            tracing::info!(address = %local, protocols = "http/1.1, h2c (prior knowledge)", "listening");
            run(acceptor, state, shutdown_signal).await
        }
    }
}

/// An already bound TCP acceptor as a salvo [`Listener`], so the TLS listener can wrap the
/// socket bound above (port 0 in tests) instead of binding again.
struct Bound(TcpAcceptor);

impl Listener for Bound {
    type Acceptor = TcpAcceptor;

    async fn try_bind(self) -> salvo::Result<Self::Acceptor> {
        Ok(self.0)
    }
}

async fn run<A>(
    acceptor: A,
    state: AppState,
    shutdown_signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    A: Acceptor + Send + 'static,
{
    let mut server = Server::new(acceptor)
        .fuse_config(connection_limits(&state.config.server))
        .max_connections(state.config.server.max_connections);
    tune_protocols(&mut server, &state.config.server);
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
    server.try_serve(crate::service(state)).await?;
    tracing::info!("server stopped");
    Ok(())
}

/// Slowloris and idle-connection protection: salvo's fuse bounds the TLS handshake and the
/// whole HTTP/1 head read (protocol detection included, so also the wait for an h2c preface)
/// by `server.header_read_timeout`, and closes connections with no traffic for
/// `server.idle_timeout` (SSE keepalives count as traffic; for HTTP/2 the connection is idle
/// only when none of its streams wrote).
fn connection_limits(server: &kubelens_core::config::ServerConfig) -> salvo::fuse::FuseConfig {
    salvo::fuse::FuseConfig::default()
        .with_tls_handshake_timeout(server.header_read_timeout)
        .with_http1_header_timeout(server.header_read_timeout)
        .with_connection_idle_timeout(server.idle_timeout)
}

/// Protocol limits hyper enforces per connection (see `server.http2` in the config
/// reference). HTTP/2 has no request-head timeout in hyper; a slow HTTP/2 client is bounded
/// by the idle timeout, `max_header_list_size`, `max_concurrent_streams`, hyper's rapid-reset
/// limit (`max_pending_accept_reset_streams`, 20) and `server.max_connections`.
fn tune_protocols<A: Acceptor + Send>(server: &mut Server<A>, config: &kubelens_core::config::ServerConfig) {
    // Vectored writes: an SSE batch (up to 256 KiB) goes to the socket from its own buffer;
    // hyper's flattening strategy would copy it into the connection's write buffer, which then
    // keeps its grown capacity for the connection's lifetime, idle or not.
    server.http1_mut().max_buf_size(HTTP1_MAX_BUF_BYTES).writev(true);
    let h2 = &config.http2;
    server
        .http2_mut()
        .timer(salvo::rt::tokio::TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(h2.max_header_list_bytes)
        .max_pending_accept_reset_streams(20)
        .keep_alive_interval(h2.keepalive_interval);
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
