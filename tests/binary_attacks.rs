//! The attacks of the hardening work, through the `infergate` binary
//! itself (CI runs this file against the release build with
//! `INFERGATE_BIN=target/release/infergate`): streaming clients that never
//! read, a client timeout past the operator's cap, a huge model name,
//! garbage payloads, slowloris on `/metrics`, silent connections. The
//! in-process tests (`deadlines.rs`, `errors.rs`, `fuzz.rs`, `edges*.rs`)
//! cover each in more depth.

mod common;

use std::time::{Duration, Instant};

use common::binary::{BinaryServer, listen_anywhere};
use common::raw::{closed_within, non_reading_stream, payloads, send};
use common::{request, simulated, with_timeout};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::Code;

fn config() -> String {
    let server = listen_anywhere().to_string()
        + "first_call_timeout_seconds = 1\nidle_timeout_seconds = 1\nmetrics_header_timeout_ms = 1000\n";
    server
        + &simulated("flood", 0, 2, 8)
            .replace("latency_ms = 0", "latency_ms = 0\noutput_tokens = 100000")
        + &common::capped_model("capped")
        + &simulated("echo", 0, 2, 64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_holds_under_attack() {
    let server = BinaryServer::start("attacks", &config()).await;
    let mut client = server.client().await;

    // 1. Three streaming clients that never read, on two workers.
    let mut attackers = Vec::new();
    for _ in 0..3 {
        attackers.push(non_reading_stream(server.socket_addr(), "flood", "3S").await);
    }
    server.wait_for("flood", |m| m.busy_workers == 2).await;
    server.wait_for("flood", |m| m.busy_workers == 0).await;
    let served = client
        .generate(with_timeout(
            infergate::proto::GenerateRequest {
                max_tokens: 3,
                ..request("flood", "after the flood")
            },
            Duration::from_secs(5),
        ))
        .await
        .expect("served once the attackers' deadlines passed");
    assert_eq!(
        served.into_inner().usage.expect("usage").completion_tokens,
        3
    );

    // 2. A client timeout of an hour on a model capped at 300 ms.
    common::assert_capped(&mut client, "capped").await;
    server.wait_for("capped", |m| m.busy_workers == 0).await;

    // 3. A 1 MB model name: NOT_FOUND, quoted short.
    let status = client
        .generate(request(&"m".repeat(1_000_000), "x"))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().len() < 1_000, "{}", status.message().len());

    // 4. Garbage payloads: never INTERNAL or UNKNOWN.
    let channel = server.channel().await;
    for (i, payload) in payloads(500).into_iter().enumerate() {
        let (code, message) = send(channel.clone(), payload, i % 10 == 7).await;
        assert!(
            matches!(
                code,
                Code::Ok | Code::InvalidArgument | Code::NotFound | Code::ResourceExhausted
            ),
            "payload {i}: {code:?} {message}"
        );
    }

    // 5. Slowloris on /metrics: closed at the 1 s header timeout, while a
    //    scrape goes through.
    let metrics: std::net::SocketAddr = server.metrics_addr.parse().expect("address");
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(metrics).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nX")
            .await
            .expect("write");
        slow.push(stream);
    }
    let (code, body) = common::http_get(metrics, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("infergate_workers_ready"), "{body}");
    for stream in &mut slow {
        assert!(
            closed_within(stream, Instant::now(), Duration::from_secs(4))
                .await
                .is_some(),
            "a slowloris connection outlived the header timeout"
        );
    }

    // 6. A silent connection (no preface, no call) is closed.
    let mut silent = TcpStream::connect(server.socket_addr())
        .await
        .expect("connect");
    assert!(
        closed_within(&mut silent, Instant::now(), Duration::from_secs(4))
            .await
            .is_some()
    );

    // Still serving.
    let answer = client
        .generate(request("echo", "still here"))
        .await
        .expect("a normal call at the end");
    assert_eq!(answer.into_inner().text, "still here");
    drop(attackers);
}
