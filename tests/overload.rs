//! Admission, deadlines and cancellation: the queue is bounded, deadline
//! aware and cancellable.

mod common;

use std::time::{Duration, Instant};

use common::{
    Event, TestServer, next_event, one_running_one_queued, probe_server, request, simulated,
    spawn_generate, with_timeout,
};
use infergate::config::{BackendKind, ModelConfig, ServerConfig};
use infergate::gateway::Gateway;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let (server, _factory, mut events) = probe_server(1, 1, ServerConfig::default()).await;
    let client = server.client().await;

    let (running, queued) =
        one_running_one_queued(&server, &client, &mut events, "hold 5000", "hold 5000").await;

    let start = Instant::now();
    let status = client
        .clone()
        .generate(request("probe", "one too many"))
        .await
        .expect_err("queue is full");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("probe"), "{}", status.message());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refusal was not immediate"
    );

    running.abort();
    queued.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_call_past_its_deadline_gets_deadline_exceeded() {
    let server = TestServer::start(&simulated("slow", 5_000, 1, 4)).await;
    let mut client = server.client().await;
    let start = Instant::now();
    let status = client
        .generate(with_timeout(
            request("slow", "x"),
            Duration::from_millis(300),
        ))
        .await
        .expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    // The worker was told to stop: the pool is free again soon.
    server.wait_for("slow", |m| m.busy_workers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_timeout_applies_when_the_client_sets_none() {
    let config =
        simulated("slow", 5_000, 1, 4).replace("workers = 1", "workers = 1\ntimeout_ms = 300");
    let server = TestServer::start(&config).await;
    let status = server
        .client()
        .await
        .generate(request("slow", "x"))
        .await
        .expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(status.message().contains("300 ms"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_expires_in_the_queue_never_runs() {
    // The model's timeout, not grpc-timeout: a tonic client runs its own
    // timer on grpc-timeout and may report that one first.
    let (factory, mut events) = common::ProbeFactory::new();
    let mut model = ModelConfig::new("probe", BackendKind::Simulated);
    model.workers = 1;
    model.timeout_ms = 200;
    let gateway = Gateway::builder()
        .model(model, factory)
        .build()
        .expect("pool");
    let server = TestServer::start_gateway(gateway, ServerConfig::default()).await;
    let client = server.client().await;
    let blocker = tokio::spawn({
        let mut client = client.clone();
        let req = with_timeout(request("probe", "hold 1500"), Duration::from_secs(20));
        async move { client.generate(req).await }
    });
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("hold 1500".into())
    );

    let status = client
        .clone()
        .generate(request("probe", "expires"))
        .await
        .expect_err("deadline while queued");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("queue"), "{}", status.message());
    assert_eq!(
        server.model_info("probe").await.queued,
        0,
        "its place was given back"
    );

    blocker.await.expect("task").expect("the blocker finishes");
    assert_eq!(
        next_event(&mut events).await,
        Event::Ended {
            prompt: "hold 1500".into(),
            cancelled: false
        }
    );
    // The next call runs; the expired one never did.
    client
        .clone()
        .generate(request("probe", "next"))
        .await
        .expect("next call");
    assert_eq!(next_event(&mut events).await, Event::Started("next".into()));
    assert_eq!(server.model_info("probe").await.backend_calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_its_call() {
    let (server, _factory, mut events) = probe_server(1, 4, ServerConfig::default()).await;
    let client = server.client().await;

    // A runs; B waits behind it.
    let (running, queued) =
        one_running_one_queued(&server, &client, &mut events, "hold 30000", "never runs").await;

    // B's client goes away: B leaves the queue without running.
    queued.abort();
    server.wait_for("probe", |m| m.queued == 0).await;

    // A's client goes away: A's backend is told to stop, and stops early.
    running.abort();
    assert_eq!(
        next_event(&mut events).await,
        Event::Ended {
            prompt: "hold 30000".into(),
            cancelled: true
        }
    );

    // The worker is free and the next event is the next call, not B.
    client
        .clone()
        .generate(request("probe", "after"))
        .await
        .expect("after");
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("after".into())
    );
    assert_eq!(server.model_info("probe").await.backend_calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_calls_cost_memory_not_threads() {
    // Ten thousand queued calls, sent at once over one connection, are
    // memory, not threads: the pool's thread count is fixed. (Memory is
    // measured in bench/, scenario S5.)
    let (server, _factory, mut events) = probe_server(2, 10_000, ServerConfig::default()).await;
    let client = server.client().await;
    let threads_before = thread_count();
    let blockers: Vec<_> = (0..2)
        .map(|_| spawn_generate(&client, "probe", "hold 30000"))
        .collect();
    for _ in 0..2 {
        next_event(&mut events).await;
    }
    let waiting: Vec<_> = (0..10_000)
        .map(|i| spawn_generate(&client, "probe", &format!("w{i}")))
        .collect();
    server.wait_for("probe", |m| m.queued == 10_000).await;
    if let (Some(before), Some(after)) = (threads_before, thread_count()) {
        assert!(after <= before + 4, "threads grew from {before} to {after}");
    }
    for task in waiting.into_iter().chain(blockers) {
        task.abort();
    }
    server
        .wait_for("probe", |m| m.queued == 0 && m.busy_workers == 0)
        .await;
}

/// Threads of this process, from /proc (Linux only).
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}
