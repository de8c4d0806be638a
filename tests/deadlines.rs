//! No client can hold a worker past its deadline: the operator's cap on
//! client timeouts, refusal at admission of a deadline the queue cannot
//! meet, and streaming clients that stop reading.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::raw::non_reading_stream;
use common::{
    Event, TestServer, assert_capped, capped_model, metric, next_event, probe_server, request,
    simulated, with_timeout,
};
use infergate::config::ServerConfig;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_timeout_ms_caps_a_client_timeout() {
    let server = TestServer::start(&capped_model("capped")).await;
    assert_capped(&mut server.client().await, "capped").await;
    server.wait_for("capped", |m| m.busy_workers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_the_queue_cannot_meet_is_refused_at_admission() {
    let server = TestServer::start_with_metrics(&simulated("paced", 100, 1, 16)).await;
    let mut client = server.client().await;
    // Teach the pool how long a call takes.
    for _ in 0..4 {
        client
            .generate(request("paced", "warm"))
            .await
            .expect("warm-up");
    }
    // One call runs and four wait: a newcomer waits at least 4 x 100 ms.
    let calls: Vec<_> = (0..5)
        .map(|_| common::spawn_generate(&client, "paced", "x"))
        .collect();
    server.wait_for("paced", |m| m.queued == 4).await;
    let before = server.model_info("paced").await.backend_calls;

    let status = client
        .generate(with_timeout(
            request("paced", "hurry"),
            Duration::from_millis(250),
        ))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("stage admission"),
        "{}",
        status.message()
    );
    // A call with time enough is still admitted.
    let patient = client
        .generate(with_timeout(
            request("paced", "patient"),
            Duration::from_secs(20),
        ))
        .await
        .expect("admitted and served");
    assert_eq!(patient.into_inner().text, "patient");
    for call in calls {
        call.await.expect("task").expect("queued calls finish");
    }
    // The refused call never reached the backend: 5 queued + 1 patient.
    assert_eq!(
        server.model_info("paced").await.backend_calls,
        before + 5,
        "the refused call did not run"
    );
    let scrape = server.scrape().await;
    let refused = metric(
        &scrape,
        "infergate_rejected_total{model=\"paced\",reason=\"deadline\",tenant=\"anonymous\"}",
    );
    assert_eq!(refused, Some(1.0), "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_backend_is_replaced_without_waiting_for_a_call() {
    let (server, factory, mut events) = probe_server(1, 1, ServerConfig::default()).await;
    let mut client = server.client().await;
    let status = client
        .generate(request("probe", "panic"))
        .await
        .expect_err("the backend panicked");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("panic".into())
    );
    // No further call: the worker makes its new backend by itself.
    server.wait_for("probe", |m| m.ready_workers == 1).await;
    assert_eq!(factory.created.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_clients_that_never_read_cannot_hold_the_workers() {
    // Two workers; every call streams up to 100,000 tokens at once.
    let config = simulated("flood", 0, 2, 8)
        .replace("latency_ms = 0", "latency_ms = 0\noutput_tokens = 100000");
    let server = TestServer::start(&config).await;
    // Three clients (more than the workers) that never read, 3 s deadline
    // (long enough to see both workers held, however slow the machine).
    let mut attackers = Vec::new();
    for _ in 0..3 {
        attackers.push(non_reading_stream(server.addr, "flood", "3S").await);
    }
    server.wait_for("flood", |m| m.busy_workers == 2).await;
    for attacker in &attackers {
        assert!(!attacker.driver.is_finished(), "an attacker was cut off");
    }
    // Their deadlines free the workers, though the connections stay open.
    server.wait_for("flood", |m| m.busy_workers == 0).await;
    let mut client = server.client().await;
    let served = tokio::time::timeout(
        Duration::from_secs(10),
        client.generate(with_timeout(
            infergate::proto::GenerateRequest {
                max_tokens: 3,
                ..request("flood", "a well behaved call")
            },
            Duration::from_secs(5),
        )),
    )
    .await
    .expect("answered in time")
    .expect("served once the deadlines passed");
    assert_eq!(
        served.into_inner().usage.expect("usage").completion_tokens,
        3
    );
    // The attackers are still connected: the workers were freed by the
    // deadline, not by a closed connection.
    for attacker in &attackers {
        assert!(
            !attacker.driver.is_finished(),
            "an attacker's connection closed"
        );
    }
}
