//! HTTP/2 on the real listener (`kubelens_salvo::server::serve`), with real clients: over TLS
//! (`server.tls`) ALPN picks `h2` or `http/1.1`, a certificate replaced on disk is served to
//! new connections after `reload_interval`, and unusable files are startup errors naming the
//! file; the cleartext listener serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one
//! port. The SSE log stream over both is in `e2e_logs.rs` (it needs testenv's pods).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use kubelens_core::config::TlsConfig;
use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;
use kubelens_salvo::server::ServeError;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn tls_config(dir: &Path, name: &str) -> TlsConfig {
    TlsConfig {
        cert_file: dir.join(format!("{name}.crt")).display().to_string(),
        key_file: dir.join(format!("{name}.key")).display().to_string(),
        reload_interval: Duration::from_secs(1),
    }
}

/// Starts the listener; resolves to its address, or to the startup error.
async fn start(mut config: Config) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>), ServeError> {
    config.server.shutdown_grace = Duration::from_secs(1);
    let state = AppState::new(config, Readiness::new());
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kubelens_salvo::server::serve(
        state,
        "127.0.0.1:0".parse().unwrap(),
        async move {
            let _ = stop_rx.await;
        },
        move |addr| {
            let _ = bound_tx.send(addr);
        },
    ));
    match bound_rx.await {
        Ok(addr) => Ok((addr, stop_tx)),
        Err(_) => Err(server.await.unwrap().expect_err("the server ended without binding")),
    }
}

fn der(pem_file: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem_file).unwrap().as_ref().to_vec()
}

fn tls_client(ca: &[u8], http1_only: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca).unwrap()])
        .tls_info(true)
        .pool_max_idle_per_host(0);
    let builder = if http1_only { builder.http1_only() } else { builder };
    builder.build().unwrap()
}

/// The certificate the server presented on a fresh connection.
async fn served_certificate(client: &reqwest::Client, url: &str) -> (reqwest::Version, Vec<u8>) {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cert = resp.extensions().get::<reqwest::tls::TlsInfo>().and_then(|i| i.peer_certificate()).unwrap().to_vec();
    (resp.version(), cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_negotiates_h2_or_http1_and_serves_a_replaced_certificate_after_the_reload_interval() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::test_certs(dir.path());
    // The served pair lives in its own files, replaced in place below like a rotation would.
    std::fs::copy(dir.path().join("one.crt"), dir.path().join("live.crt")).unwrap();
    std::fs::copy(dir.path().join("one.key"), dir.path().join("live.key")).unwrap();
    let mut config = Config::default();
    config.server.tls = Some(tls_config(dir.path(), "live"));
    let (addr, _stop) = start(config).await.unwrap();
    let url = format!("https://localhost:{}/healthz", addr.port());

    // ALPN: h2 when the client offers it, HTTP/1.1 for a client that only speaks that.
    let (version, cert) = served_certificate(&tls_client(&ca, false), &url).await;
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!(cert, der(&dir.path().join("one.crt")));
    let (version, _) = served_certificate(&tls_client(&ca, true), &url).await;
    assert_eq!(version, reqwest::Version::HTTP_11);
    // Plain HTTP on the TLS port is not served.
    assert!(reqwest::get(format!("http://127.0.0.1:{}/healthz", addr.port())).await.is_err());

    // Rotate: key first, then certificate (a half-done rotation is refused and retried).
    std::fs::copy(dir.path().join("two.key"), dir.path().join("live.key")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::copy(dir.path().join("two.crt"), dir.path().join("live.crt")).unwrap();
    let rotated = Instant::now();
    let two = der(&dir.path().join("two.crt"));
    loop {
        let (version, cert) = served_certificate(&tls_client(&ca, false), &url).await;
        assert_eq!(version, reqwest::Version::HTTP_2);
        if cert == two {
            break;
        }
        assert!(rotated.elapsed() < Duration::from_secs(10), "still the old certificate 10 s after the rotation");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_cleartext_listener_serves_http1_and_h2c_prior_knowledge_on_one_port() {
    let (addr, _stop) = start(Config::default()).await.unwrap();
    let url = format!("http://{addr}/healthz");
    let h2c = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = h2c.get(&url).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, reqwest::Version::HTTP_2));
    let resp = reqwest::Client::builder().http1_only().build().unwrap().get(&url).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, reqwest::Version::HTTP_11));
}

#[tokio::test]
async fn unusable_tls_files_are_startup_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    support::test_certs(dir.path());
    let p = |name: &str| dir.path().join(name).display().to_string();
    let failure = |cert: String, key: String| async move {
        let mut config = Config::default();
        config.server.tls = Some(TlsConfig { cert_file: cert, key_file: key, reload_interval: Duration::from_secs(1) });
        start(config).await.map(|_| ()).expect_err("the server started").to_string()
    };

    let err = failure(p("missing.crt"), p("one.key")).await;
    assert!(err.starts_with("server.tls.cert_file") && err.contains("missing.crt") && err.contains("cannot read"), "{err}");
    let err = failure(p("one.crt"), p("missing.key")).await;
    assert!(err.starts_with("server.tls.key_file") && err.contains("missing.key"), "{err}");
    // A certificate where the key belongs.
    let err = failure(p("one.crt"), p("one.crt")).await;
    assert!(err.starts_with("server.tls.key_file") && err.contains("one.crt") && err.contains("no PEM private key"), "{err}");
    let err = failure(p("one.key"), p("one.key")).await;
    assert!(err.starts_with("server.tls.cert_file") && err.contains("no PEM certificate"), "{err}");
    // Valid files that are not a pair.
    let err = failure(p("one.crt"), p("two.key")).await;
    assert!(err.contains("two.key") && err.contains("does not match") && err.contains("one.crt"), "{err}");
    // An unreadable key (a directory).
    let err = failure(p("one.crt"), dir.path().display().to_string()).await;
    assert!(err.starts_with("server.tls.key_file") && err.contains("cannot read"), "{err}");
}
