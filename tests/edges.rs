//! The gRPC listener's edges, attacked: too many connections, and silent,
//! preface-only and idle HTTP/2 connections. Each is closed by its limit,
//! while a normal client on another connection keeps being served, long
//! calls are not cut off, and descriptors come back. (The `/metrics`
//! listener's: `edges_metrics.rs`.)
//!
//! The recorder is process-wide, so counters are compared before and after;
//! the test that counts this process's open descriptors runs alone (the
//! others hold `SHARED` for reading, it holds it for writing).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::closed_within;
use common::{TestServer, metric, probe_server, request, simulated};
use infergate::config::ServerConfig;
use infergate::metrics::http::render;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::RwLock;
use tokio::task::JoinHandle;
use tonic::codegen::http;

static SHARED: RwLock<()> = RwLock::const_new(());

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 connection made with the `h2` crate; the task ends when the
/// server closes the connection.
async fn h2_connect(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, task)
}

/// One unary ListModels call over a raw HTTP/2 connection; its grpc-status.
async fn h2_list_models(send: h2::client::SendRequest<Bytes>, addr: SocketAddr) -> String {
    let mut send = send.ready().await.expect("connection ready");
    let call = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/infergate.v1.Inference/ListModels"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut body) = send.send_request(call, false).expect("send headers");
    // An empty ListModelsRequest: uncompressed, 0 bytes.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("send message");
    let mut body = response.await.expect("response").into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").expect("some");
    trailers["grpc-status"].to_str().expect("ascii").to_string()
}

/// The value of a counter in this process's recorder (0 when absent).
fn counter(server: &TestServer, series: &str) -> f64 {
    metric(&render(server.gateway.as_ref()), series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_cap_evicts_connections_without_calls_and_refuses_beyond_busy_ones() {
    let _shared = SHARED.read().await;
    const CAP: usize = 20;
    const SILENT: usize = 5;
    let config = ServerConfig {
        max_connections: CAP,
        first_call_timeout_seconds: 60,
        ..ServerConfig::default()
    };
    let (server, _factory, _events) = probe_server(1, 8, config).await;
    let addr = server.addr;
    let refused_series =
        r#"infergate_connections_refused_total{listener="grpc",reason="max_connections"}"#;
    let evicted_series = r#"infergate_connections_closed_total{listener="grpc",reason="evicted"}"#;
    let (refused_before, evicted_before) = (
        counter(&server, refused_series),
        counter(&server, evicted_series),
    );

    // The cap filled: one tonic client and HTTP/2 connections that have
    // each made a call, then connections that never send anything.
    let client = server.client().await;
    client
        .clone()
        .generate(request("probe", "first"))
        .await
        .expect("Generate");
    let mut used = Vec::new();
    for _ in 1..CAP - SILENT {
        let (send, task) = h2_connect(addr).await;
        assert_eq!(h2_list_models(send.clone(), addr).await, "0");
        used.push((send, task));
    }
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }

    // New clients get in, each in the place of a silent connection.
    let mut newcomers = Vec::new();
    for i in 0..SILENT {
        let mut newcomer = server.client().await;
        let prompt = format!("newcomer {i}");
        let answer = newcomer.generate(request("probe", &prompt)).await;
        assert_eq!(
            answer.expect("a newcomer is served").into_inner().text,
            prompt
        );
        newcomers.push(newcomer);
    }
    for stream in &mut silent {
        let held = closed_within(stream, Instant::now(), Duration::from_secs(5)).await;
        assert!(held.is_some(), "a silent connection made way");
    }
    assert!(counter(&server, evicted_series) - evicted_before >= SILENT as f64);

    // Now every connection has made a call: one more is closed at once.
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    extra.write_all(PREFACE).await.expect("send the preface");
    let held = closed_within(&mut extra, Instant::now(), Duration::from_secs(5))
        .await
        .expect("the connection beyond the cap is closed");
    assert!(held < Duration::from_secs(2), "held {held:?}");
    assert!(counter(&server, refused_series) - refused_before >= 1.0);

    // The admitted connections keep working.
    let answer = client.clone().generate(request("probe", "still")).await;
    assert_eq!(answer.expect("Generate").into_inner().text, "still");

    // Once one goes, a new client gets in (poll, bounded: the server frees
    // the slot when it reads the close).
    let (send, task) = used.pop().expect("one");
    drop(send);
    task.abort();
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        let attempt = async {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .ok()?;
            let mut client = infergate::proto::inference_client::InferenceClient::new(channel);
            client.generate(request("probe", "new")).await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "no new connection was ever admitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_preface_only_connections_are_closed_but_long_calls_are_not() {
    let _shared = SHARED.read().await;
    let timeout = Duration::from_secs(1);
    let config = ServerConfig {
        idle_timeout_seconds: 1,
        first_call_timeout_seconds: 1,
        ..ServerConfig::default()
    };
    let (server, _factory, _events) = probe_server(2, 8, config).await;
    let addr = server.addr;
    let closes_before = counter(
        &server,
        r#"infergate_connections_closed_total{listener="grpc",reason="idle"}"#,
    );
    // Closed at the timeout, give or take: not before, and not much after.
    let on_time = |held: Duration| {
        held > timeout - Duration::from_millis(50) && held < timeout + Duration::from_secs(2)
    };

    // A call that runs three idle timeouts long is not cut off.
    let client = server.client().await;
    let long_call = tokio::spawn({
        let mut client = client.clone();
        async move { client.generate(request("probe", "hold 3000")).await }
    });

    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut preface_only = TcpStream::connect(addr).await.expect("connect");
    preface_only
        .write_all(PREFACE)
        .await
        .expect("send the preface");
    let (_idle_send, idle_h2) = h2_connect(addr).await;
    let (used_send, used_h2) = h2_connect(addr).await;
    assert_eq!(h2_list_models(used_send.clone(), addr).await, "0");
    let call_ended = Instant::now();

    let held = closed_within(&mut silent, start, Duration::from_secs(5)).await;
    assert!(held.is_some_and(on_time), "silent connection held {held:?}");
    let held = closed_within(&mut preface_only, start, Duration::from_secs(5)).await;
    assert!(
        held.is_some_and(on_time),
        "preface-only connection held {held:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), idle_h2)
        .await
        .expect("an HTTP/2 connection without calls is closed")
        .expect("task");
    assert!(
        on_time(start.elapsed()),
        "idle HTTP/2 held {:?}",
        start.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), used_h2)
        .await
        .expect("an HTTP/2 connection idle after a call is closed")
        .expect("task");
    assert!(
        on_time(call_ended.elapsed()),
        "idle after a call: held {:?}",
        call_ended.elapsed()
    );
    drop(used_send);
    assert!(
        counter(
            &server,
            r#"infergate_connections_closed_total{listener="grpc",reason="idle"}"#
        ) > closes_before
    );

    let answer = long_call
        .await
        .expect("task")
        .expect("the long call is not cut off");
    assert_eq!(answer.into_inner().text, "hold 3000");
    // Its connection has been idle past the timeout since; what is tested
    // is time passing, so this waits for it. A tonic client whose idle
    // connection was closed gets a new one for its next call.
    tokio::time::sleep(timeout + Duration::from_millis(500)).await;
    let answer = client
        .clone()
        .generate(request("probe", "after idle"))
        .await;
    assert_eq!(
        answer
            .expect("a call after an idle close")
            .into_inner()
            .text,
        "after idle"
    );
}

/// This process's open file descriptors (the server runs in it).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_leaves_calls_fast_and_gives_its_fds_back() {
    let _alone = SHARED.write().await;
    const EACH: usize = 100;
    let server = TestServer::start(&format!(
        "[server]\nfirst_call_timeout_seconds = 2\nidle_timeout_seconds = 2\n{}",
        simulated("e-flood", 0, 2, 64)
    ))
    .await;
    let client = server.client().await;
    let p50 = |client: infergate::proto::inference_client::InferenceClient<_>| async move {
        let mut times = Vec::new();
        for _ in 0..40 {
            let started = Instant::now();
            client
                .clone()
                .generate(request("e-flood", "hi"))
                .await
                .expect("Generate");
            times.push(started.elapsed());
        }
        times.sort();
        times[times.len() / 2]
    };
    let quiet = p50(client.clone()).await;
    let idle_fds = open_fds();

    // A few hundred connections: silent, preface-only, and HTTP/2 without
    // calls.
    let mut raw = Vec::new();
    for i in 0..2 * EACH {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        if i % 2 == 1 {
            stream.write_all(PREFACE).await.expect("send the preface");
        }
        raw.push(stream);
    }
    let mut h2 = Vec::new();
    for _ in 0..EACH {
        h2.push(h2_connect(server.addr).await);
    }
    let attacked = p50(client.clone()).await;
    assert!(
        attacked < quiet + Duration::from_millis(20),
        "p50 {attacked:?} under the flood, {quiet:?} before"
    );

    // The server closes them all at the first-call timeout; the clients
    // then close their ends too.
    let closing: Vec<_> = raw
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                closed_within(&mut stream, Instant::now(), Duration::from_secs(10)).await
            })
        })
        .collect();
    for task in closing {
        assert!(
            task.await.expect("task").is_some(),
            "a raw connection was never closed"
        );
    }
    for (send, task) in h2 {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("an idle HTTP/2 connection is closed")
            .expect("task");
        drop(send);
    }
    let give_up = Instant::now() + Duration::from_secs(10);
    while open_fds() > idle_fds + 8 {
        assert!(
            Instant::now() < give_up,
            "open fds {} after the flood, {idle_fds} before",
            open_fds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (The client above has been idle too: a fresh one, so that no call
    // races its close.)
    let after = p50(server.client().await).await;
    assert!(
        after < quiet + Duration::from_millis(20),
        "p50 {after:?} after, {quiet:?} before"
    );
}
