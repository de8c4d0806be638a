//! Graceful shutdown: new calls are refused, calls in progress finish
//! within the grace, and what the grace cuts off gets UNAVAILABLE.

mod common;

use std::time::{Duration, Instant};

use common::{Event, next_event, probe_server, request, spawn_generate};
use infergate::config::ServerConfig;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_a_running_call_and_refuses_new_ones() {
    let (mut server, _factory, mut events) = probe_server(1, 4, ServerConfig::default()).await;
    let client = server.client().await;
    let running = spawn_generate(&client, "probe", "hold 600");
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("hold 600".into())
    );

    let server_done = server.begin_shutdown();
    // Wait (bounded) until the gateway has begun refusing.
    let give_up = Instant::now() + Duration::from_secs(5);
    while !server.gateway.is_shutting_down() {
        assert!(Instant::now() < give_up, "shutdown never began");
        tokio::task::yield_now().await;
    }
    let status = client
        .clone()
        .generate(request("probe", "late"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let answer = running
        .await
        .expect("task")
        .expect("the running call finished");
    assert_eq!(answer.into_inner().text, "hold 600");
    server_done.await.expect("server task").expect("clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_left_when_the_grace_runs_out_are_cut_off() {
    let config = ServerConfig {
        shutdown_grace_seconds: 0,
        ..ServerConfig::default()
    };
    let (mut server, _factory, mut events) = probe_server(1, 4, config).await;
    let client = server.client().await;
    let running = spawn_generate(&client, "probe", "hold 30000");
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("hold 30000".into())
    );
    let queued = spawn_generate(&client, "probe", "queued");
    // A streaming call waits too: it is cut off the same way.
    let streaming = tokio::spawn({
        let mut client = client.clone();
        async move {
            let mut stream = client
                .generate_stream(request("probe", "queued stream"))
                .await?
                .into_inner();
            match stream.next().await {
                Some(item) => item.map(|_| ()),
                None => Ok(()),
            }
        }
    });
    server.wait_for("probe", |m| m.queued == 2).await;

    let start = Instant::now();
    server
        .begin_shutdown()
        .await
        .expect("server task")
        .expect("clean exit");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        start.elapsed()
    );
    for task in [running, queued] {
        let status = task.await.expect("task").expect_err("cut off");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let status = streaming.await.expect("task").expect_err("cut off");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        next_event(&mut events).await,
        Event::Ended {
            prompt: "hold 30000".into(),
            cancelled: true
        }
    );
}
