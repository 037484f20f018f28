//! Requests per second of an authenticated trivial endpoint (`GET /api/v1/me`, cached token)
//! against the unauthenticated `GET /healthz`, over loopback HTTP/1.1 keep-alive, with the
//! real router and server. The difference is the auth hoop's cost per request.
//!
//! `cargo bench -p kubelens-salvo --bench auth_rps -- [connections] [seconds]`
//! Results and machine notes: docs/benchmarks/auth.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kubelens_core::auth::testing::TestIssuer;
use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let connections: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(connections, Duration::from_secs(seconds)));
}

async fn run(connections: usize, duration: Duration) {
    let issuer = TestIssuer::new();
    let config = Config { auth: issuer.config(), ..Config::default() };
    let state = AppState::new(config, Readiness::new()).with_auth(issuer.authenticator());
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        kubelens_salvo::server::serve(
            state,
            "127.0.0.1:0".parse().unwrap(),
            async {
                let _ = stop_rx.await;
            },
            |addr| {
                let _ = addr_tx.send(addr);
            },
        )
        .await
        .unwrap();
    });
    let addr = addr_rx.await.unwrap();
    let token = issuer.admin_token();
    println!("connections={connections} duration={duration:?} token_bytes={}", token.len());
    for (label, path, auth) in [
        ("GET /healthz (no auth)", "/healthz", false),
        ("GET /api/v1/me (bearer, cached)", "/api/v1/me", true),
        ("GET /healthz (no auth)", "/healthz", false),
        ("GET /api/v1/me (bearer, cached)", "/api/v1/me", true),
    ] {
        let url = format!("http://{addr}{path}");
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
            let (url, token, ok, failed) = (url.clone(), token.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < duration {
                    let mut req = client.get(&url);
                    if auth {
                        req = req.bearer_auth(&token);
                    }
                    match req.send().await {
                        Ok(res) if res.status().is_success() => {
                            let _ = res.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let ok = ok.load(Ordering::Relaxed);
        println!(
            "{label:34} {:>9.0} req/s  ({ok} ok, {} failed, {elapsed:.1}s)",
            ok as f64 / elapsed,
            failed.load(Ordering::Relaxed)
        );
    }
    let _ = stop_tx.send(());
}
