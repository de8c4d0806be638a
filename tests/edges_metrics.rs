//! The `/metrics` listener, attacked: slowloris connections are closed at
//! the header read timeout while scrapes go on, silent connections make way
//! for scrapes when the cap is full, and connections beyond served ones are
//! closed at once. (The gRPC listener's edges: `edges.rs`.)
//!
//! The recorder is process-wide, so counters are compared before and after.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::raw::closed_within;
use common::{TestServer, metric, simulated};
use infergate::metrics::http::{MetricsLimits, render, serve_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Serves `/metrics` for `server`'s gateway on a loopback port within
/// `limits`; stops with the returned token.
async fn metrics_with(
    server: &TestServer,
    limits: MetricsLimits,
) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let stop = CancellationToken::new();
    tokio::spawn(serve_with(
        listener,
        server.gateway.clone(),
        limits,
        stop.clone(),
    ));
    (addr, stop)
}

/// A GET of `/metrics`: the status and body, or `None` if the connection
/// was closed without an answer.
async fn try_scrape(addr: SocketAddr) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let get = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(get.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("an answer or a close within 10 s")
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// The value of a counter in this process's recorder (0 when absent).
fn counter(server: &TestServer, series: &str) -> f64 {
    metric(&render(server.gateway.as_ref()), series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_metrics_is_closed_at_the_header_timeout() {
    const CONNECTIONS: usize = 200;
    let server = TestServer::start(&simulated("e-slowloris", 0, 1, 4)).await;
    let header_timeout = Duration::from_millis(1000);
    let limits = MetricsLimits {
        max_connections: CONNECTIONS + 16,
        header_timeout,
        connection_timeout: Duration::from_secs(30),
    };
    let (addr, stop) = metrics_with(&server, limits).await;
    let closed_before = counter(
        &server,
        r#"infergate_connections_closed_total{listener="metrics",reason="header_timeout"}"#,
    );

    // Each client sends a request line, then a header one byte every 300 ms,
    // never finishing it.
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel::<()>(CONNECTIONS);
    let attackers: Vec<JoinHandle<Option<Duration>>> = (0..CONNECTIONS)
        .map(|_| {
            let connected_tx = connected_tx.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                let connected = Instant::now();
                stream.write_all(b"GET /metrics HTTP/1.1\r\n").await.ok()?;
                let _ = connected_tx.send(()).await;
                let mut buf = [0u8; 1024];
                let give_up = Duration::from_secs(10);
                loop {
                    tokio::select! {
                        read = stream.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return Some(connected.elapsed()),
                            Ok(_) => {} // a 408 before the close
                        },
                        () = tokio::time::sleep(Duration::from_millis(300)) => {
                            if stream.write_all(b"X").await.is_err() {
                                return Some(connected.elapsed());
                            }
                            if connected.elapsed() > give_up {
                                return None;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    drop(connected_tx);
    for _ in 0..CONNECTIONS {
        tokio::time::timeout(Duration::from_secs(10), connected_rx.recv())
            .await
            .expect("the attackers connect within 10 s");
    }

    // A normal scrape during the attack.
    let attack_on = Instant::now();
    let (status, body) = try_scrape(addr).await.expect("a scrape during the attack");
    assert_eq!(status, 200, "{body}");
    assert!(
        attack_on.elapsed() < header_timeout / 2,
        "the scrape took {:?}",
        attack_on.elapsed()
    );

    let mut longest = Duration::ZERO;
    for attacker in attackers {
        let held = attacker
            .await
            .expect("task")
            .expect("every slowloris connection is closed within 10 s");
        longest = longest.max(held);
    }
    assert!(
        longest < header_timeout + Duration::from_secs(2),
        "a slowloris connection was held {longest:?}"
    );
    let closed = counter(
        &server,
        r#"infergate_connections_closed_total{listener="metrics",reason="header_timeout"}"#,
    );
    assert!(
        closed - closed_before >= CONNECTIONS as f64,
        "{closed_before} → {closed}"
    );
    stop.cancel();
}

/// A keep-alive `/metrics` connection that has had one answer, left open.
/// Connections of an earlier phase hold their slots until the server sees
/// them close, so a refusal (closed before answering) is retried, bounded.
async fn served_keep_alive(addr: SocketAddr) -> TcpStream {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(stream) = try_served_keep_alive(addr).await {
            return stream;
        }
        assert!(Instant::now() < give_up, "closed before answering for 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One try of [`served_keep_alive`]: `None` if closed before answering.
async fn try_served_keep_alive(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).ends_with("metrics at /metrics\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within 5 s");
        // Refused: closed (or reset) before answering.
        let n = match n {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        answer.extend_from_slice(&buf[..n]);
    }
    Some(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cap_evicts_silent_connections_and_refuses_beyond_served_ones() {
    const CAP: usize = 5;
    let server = TestServer::start(&simulated("e-mcap", 0, 1, 4)).await;
    let limits = MetricsLimits {
        max_connections: CAP,
        header_timeout: Duration::from_secs(20),
        connection_timeout: Duration::from_secs(30),
    };
    let (addr, stop) = metrics_with(&server, limits).await;
    let refused_series =
        r#"infergate_connections_refused_total{listener="metrics",reason="max_connections"}"#;
    let evicted_series =
        r#"infergate_connections_closed_total{listener="metrics",reason="evicted"}"#;
    let (refused_before, evicted_before) = (
        counter(&server, refused_series),
        counter(&server, evicted_series),
    );

    // Silent connections fill the cap (accepts are in order, so they are
    // admitted before any later one); a scrape still gets in, in the place
    // of the oldest, which is closed.
    let mut silent = Vec::new();
    for _ in 0..CAP {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let (status, _) = try_scrape(addr)
        .await
        .expect("a scrape makes way for itself");
    assert_eq!(status, 200);
    let held = closed_within(&mut silent[0], Instant::now(), Duration::from_secs(5)).await;
    assert!(held.is_some(), "the oldest silent connection made way");
    assert!(counter(&server, evicted_series) - evicted_before >= 1.0);
    drop(silent);

    // Connections that have been served keep their place: beyond them,
    // new connections are closed at once.
    let mut served = Vec::new();
    for _ in 0..CAP {
        served.push(served_keep_alive(addr).await);
    }
    for _ in 0..3 {
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let held = closed_within(&mut extra, Instant::now(), Duration::from_secs(5)).await;
        let held = held.expect("a connection beyond the cap is closed");
        assert!(held < Duration::from_secs(2), "held {held:?}");
    }
    assert!(
        try_scrape(addr).await.is_none(),
        "a scrape beyond the cap is refused"
    );
    assert!(counter(&server, refused_series) - refused_before >= 4.0);

    // Once they go, scrapes work again (the server frees a slot when it
    // sees the close: poll, bounded).
    drop(served);
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some((status, _)) = try_scrape(addr).await {
            assert_eq!(status, 200);
            break;
        }
        assert!(Instant::now() < give_up, "scrapes never worked again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
}
