//! Slowloris and connection floods: real TCP clients against the real listener
//! (`kubelens_salvo::server::serve`). A client that sends its request head one byte at a time
//! must be cut off once `server.header_read_timeout` has passed, while a normal request still
//! works; beyond `server.max_connections` a new connection waits (it is not served) until one
//! closes, while the open ones keep working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(header_read_timeout: Duration) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut config = Config::default();
    config.server.header_read_timeout = header_read_timeout;
    start_with(config).await
}

async fn start_with(mut config: Config) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
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
        // A timeout means nothing yet: keep dribbling.
        if tokio::time::timeout(Duration::from_millis(300), slow.read(&mut buf)).await.is_ok() {
            closed_after = Some(started.elapsed());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still open after 20 s");
    }
    let closed_after = closed_after.expect("the server never closed the slow connection");
    assert!(closed_after >= timeout, "closed before the timeout: {closed_after:?}");
    // Generous bound for a loaded 2-core machine; the salvo default without this setting is 30 s.
    assert!(closed_after < timeout + Duration::from_secs(6), "closed only after {closed_after:?}");
}

/// One keep-alive `GET /healthz` on an open connection: the status line, or `None` when no
/// answer came within `wait`.
async fn healthz(conn: &mut TcpStream, wait: Duration) -> Option<String> {
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.ok()?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    // Read until the (small, Content-Length framed) response is complete.
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") || !response_complete(&got) {
        let left = deadline.checked_duration_since(Instant::now())?;
        let n = tokio::time::timeout(left, conn.read(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).lines().next().map(str::to_owned)
}

fn response_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
        .unwrap_or(0);
    body.len() >= length
}

#[tokio::test]
async fn beyond_max_connections_a_new_connection_waits_while_open_ones_keep_working() {
    let mut config = Config::default();
    config.server.max_connections = 2;
    config.server.shutdown_grace = Duration::from_secs(1);
    let (addr, _stop) = start_with(config).await;
    let served = Duration::from_secs(30);

    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(healthz(&mut first, served).await.as_deref(), Some("HTTP/1.1 200 OK"));
    assert_eq!(healthz(&mut second, served).await.as_deref(), Some("HTTP/1.1 200 OK"));

    // Connection 3 is accepted by the kernel (backlog) but not served while 2 are open.
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert_eq!(healthz(&mut third, Duration::from_secs(2)).await, None, "a third connection was served");
    // The open ones keep working meanwhile.
    assert_eq!(healthz(&mut first, served).await.as_deref(), Some("HTTP/1.1 200 OK"));

    // Once one closes, the waiting connection is served (its request was already sent).
    drop(second);
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(served, third.read(&mut buf)).await.expect("third never served after a close").unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
}
