//! Slowloris: a real TCP client against the real listener (`kubelens_salvo::server::serve`)
//! that sends its request head one byte at a time must be cut off once
//! `server.header_read_timeout` has passed, while a normal request still works.

use std::time::{Duration, Instant};

use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(header_read_timeout: Duration) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut config = Config::default();
    config.server.header_read_timeout = header_read_timeout;
    config.server.shutdown_grace = Duration::from_secs(1);
    let state = AppState::new(config, Readiness::new());
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kubelens_salvo::server::serve(
        state,
        "127.0.0.1:0".parse().unwrap(),
        async move {
            let _ = stop_rx.await;
        },
        move |addr| {
            let _ = bound_tx.send(addr);
        },
    ));
    (bound_rx.await.unwrap(), stop_tx)
}

#[tokio::test]
async fn a_client_dribbling_its_headers_is_disconnected_after_the_header_timeout() {
    let timeout = Duration::from_millis(1500);
    let (addr, _stop) = start(timeout).await;

    // A well-behaved client is served.
    let mut ok = TcpStream::connect(addr).await.unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    ok.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The slow one: one byte every 300 ms, never finishing the head.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed_after = None;
    for byte in head.iter().cycle().take(200) {
        if slow.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // A closed connection shows as EOF (or an error) on read.
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(300), slow.read(&mut buf)).await {
            Ok(Ok(_) | Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Err(_) => {} // nothing yet: keep dribbling
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still open after 20 s");
    }
    let closed_after = closed_after.expect("the server never closed the slow connection");
    assert!(closed_after >= timeout, "closed before the timeout: {closed_after:?}");
    // Generous bound for a loaded 2-core machine; the salvo default without this setting is 30 s.
    assert!(closed_after < timeout + Duration::from_secs(6), "closed only after {closed_after:?}");
}
