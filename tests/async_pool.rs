//! Asynchronous backends in the pool: calls run as tasks, not threads,
//! under the same admission, bounded queue, deadline, cancellation,
//! streaming and metrics as worker threads.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, metric, request, with_timeout};
use infergate::backend::{
    AsyncBackend, AsyncContext, Backend, BackendError, BackendErrorKind, BackendFactory,
    BackendFuture, Completion, FinishReason, GenerateParams,
};
use infergate::config::{BackendKind, ModelConfig, ServerConfig};
use infergate::gateway::{CallOptions, Gateway};
use infergate::tenant::Caller;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Code;

/// What the test backend reports.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Started(String),
    /// The call's future was dropped before it finished.
    Dropped(String),
    Finished(String),
}

/// An async backend driven by the prompt: `sleep N` waits N ms, `words N`
/// emits N words 20 ms apart, `panic` panics, `fail` fails UNAVAILABLE;
/// anything else is echoed.
struct Sleeper {
    seen: mpsc::UnboundedSender<Seen>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// Reports a call dropped before it finished.
struct DropGuard {
    prompt: String,
    seen: mpsc::UnboundedSender<Seen>,
    running: Arc<AtomicUsize>,
    finished: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        let event = if self.finished {
            Seen::Finished(self.prompt.clone())
        } else {
            Seen::Dropped(self.prompt.clone())
        };
        let _ = self.seen.send(event);
    }
}

impl AsyncBackend for Sleeper {
    fn generate<'a>(
        &'a self,
        params: &'a GenerateParams,
        ctx: &'a mut AsyncContext,
    ) -> BackendFuture<'a> {
        Box::pin(async move {
            let prompt = params.input.text();
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            let _ = self.seen.send(Seen::Started(prompt.clone()));
            let mut guard = DropGuard {
                prompt: prompt.clone(),
                seen: self.seen.clone(),
                running: self.running.clone(),
                finished: false,
            };
            let (command, argument) = prompt.split_once(' ').unwrap_or((&prompt, ""));
            let n: u64 = argument.parse().unwrap_or(0);
            match command {
                "sleep" => tokio::time::sleep(Duration::from_millis(n)).await,
                "words" => {
                    for i in 0..n {
                        ctx.emit(&format!("w{i} ")).await?;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                "panic" => panic!("the test backend panics"),
                "fail" => {
                    return Err(BackendError::new(
                        BackendErrorKind::Unavailable,
                        "upstream down",
                    ));
                }
                _ => ctx.emit(&prompt).await?,
            }
            guard.finished = true;
            Ok(Completion {
                finish_reason: FinishReason::Stop,
                prompt_tokens: 1,
                completion_tokens: 1,
            })
        })
    }
}

struct SleeperFactory(Arc<Sleeper>);

impl BackendFactory for SleeperFactory {
    fn kind(&self) -> &str {
        "sleeper"
    }

    fn create(&self, _worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        Err(BackendError::new(
            BackendErrorKind::Internal,
            "an asynchronous backend has no worker threads",
        ))
    }

    fn asynchronous(&self) -> Option<Arc<dyn AsyncBackend>> {
        Some(self.0.clone())
    }
}

struct Harness {
    server: TestServer,
    seen: mpsc::UnboundedReceiver<Seen>,
    peak: Arc<AtomicUsize>,
}

async fn harness(name: &str, workers: usize, queue_capacity: usize) -> Harness {
    let (tx, seen) = mpsc::unbounded_channel();
    let peak = Arc::new(AtomicUsize::new(0));
    let backend = Arc::new(Sleeper {
        seen: tx,
        running: Arc::new(AtomicUsize::new(0)),
        peak: peak.clone(),
    });
    let mut model = ModelConfig::new(name, BackendKind::Openai);
    model.workers = workers;
    model.queue_capacity = queue_capacity;
    let gateway = Gateway::builder()
        .model(model, Arc::new(SleeperFactory(backend)))
        .build()
        .expect("gateway");
    let mut server = TestServer::start_gateway(gateway, ServerConfig::default()).await;
    server.start_metrics().await;
    Harness { server, seen, peak }
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("an event within 10 s")
        .expect("the backend is alive")
}

/// OS threads of this process (the server runs in it).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_run_at_once_without_a_thread_each() {
    let h = harness("t-many", 1000, 16).await;
    let client = h.server.client().await;
    let before = threads();
    let started = Instant::now();
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.generate(request("t-many", "sleep 500")).await })
        })
        .collect();
    let mut backend_us = 0;
    for call in calls {
        let answer = call.await.expect("task").expect("call").into_inner();
        backend_us += answer.timing.expect("timing").backend_us;
    }
    let wall = started.elapsed();
    let during = threads();
    // Side by side: 1000 calls of 500 ms took far less than their sum, and
    // no thread was started per call.
    let overlap = backend_us as f64 / 1e6 / wall.as_secs_f64();
    assert!(overlap > 100.0, "overlap {overlap:.0} in {wall:?}");
    assert!(h.peak.load(Ordering::SeqCst) > 500, "peak {:?}", h.peak);
    assert!(during < before + 8, "threads {before} -> {during}");
    let info = h.server.model_info("t-many").await;
    assert_eq!(info.backend_calls, 1000);
    assert_eq!(info.workers, 1000);
    assert_eq!(info.ready_workers, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_and_calls_start_in_turn() {
    let mut h = harness("t-queue", 2, 2).await;
    let client = h.server.client().await;
    let running: Vec<_> = (0..2)
        .map(|i| common::spawn_generate(&client, "t-queue", &format!("sleep {}", 10_000 + i)))
        .collect();
    for _ in 0..2 {
        assert!(matches!(next(&mut h.seen).await, Seen::Started(_)));
    }
    // Queued one after the other, so their order is known.
    let mut queued = Vec::new();
    for i in 0..2 {
        queued.push(common::spawn_generate(
            &client,
            "t-queue",
            &format!("queued {i}"),
        ));
        h.server
            .wait_for("t-queue", |m| m.busy_workers == 2 && m.queued == i + 1)
            .await;
    }
    let status = client
        .clone()
        .generate(request("t-queue", "one too many"))
        .await
        .expect_err("the queue is full");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // A running call whose client leaves is dropped, and the first queued
    // call takes its place.
    running[0].abort();
    assert_eq!(next(&mut h.seen).await, Seen::Dropped("sleep 10000".into()));
    assert_eq!(next(&mut h.seen).await, Seen::Started("queued 0".into()));
    for call in running.into_iter().skip(1) {
        call.abort();
    }
    for call in queued {
        let answer = call.await.expect("task").expect("served in turn");
        assert!(answer.into_inner().text.starts_with("queued"));
    }
    let scrape = h.server.scrape().await;
    let cancelled = r#"infergate_cancelled_total{model="t-queue",stage="running"}"#;
    assert_eq!(metric(&scrape, cancelled), Some(2.0), "{scrape}");
    h.server.wait_for("t-queue", |m| m.busy_workers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_drops_the_call_and_a_queued_call_leaves_at_once() {
    let mut h = harness("t-deadline", 1, 4).await;
    let mut client = h.server.client().await;
    let status = client
        .generate(with_timeout(
            request("t-deadline", "sleep 5000"),
            Duration::from_millis(300),
        ))
        .await
        .expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("running"), "{status:?}");
    assert_eq!(next(&mut h.seen).await, Seen::Started("sleep 5000".into()));
    assert_eq!(next(&mut h.seen).await, Seen::Dropped("sleep 5000".into()));

    // A call queued behind a busy worker that leaves never starts.
    let holder = common::spawn_generate(&client, "t-deadline", "sleep 10000");
    assert_eq!(next(&mut h.seen).await, Seen::Started("sleep 10000".into()));
    let queued = common::spawn_generate(&client, "t-deadline", "never runs");
    h.server.wait_for("t-deadline", |m| m.queued == 1).await;
    queued.abort();
    h.server.wait_for("t-deadline", |m| m.queued == 0).await;
    holder.abort();
    assert_eq!(next(&mut h.seen).await, Seen::Dropped("sleep 10000".into()));
    let after = client
        .generate(request("t-deadline", "next"))
        .await
        .expect("served");
    assert_eq!(after.into_inner().text, "next");
    assert_eq!(next(&mut h.seen).await, Seen::Started("next".into()));
    let scrape = h.server.scrape().await;
    let queued = r#"infergate_cancelled_total{model="t-deadline",stage="queued"}"#;
    assert_eq!(metric(&scrape, queued), Some(1.0), "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_panics_and_failures_behave_as_on_threads() {
    let mut h = harness("t-stream", 4, 4).await;
    let mut client = h.server.client().await;
    let mut stream = client
        .generate_stream(request("t-stream", "words 5"))
        .await
        .expect("stream")
        .into_inner();
    let mut text = String::new();
    let mut last = None;
    while let Some(message) = stream.next().await {
        let message = message.expect("message");
        text.push_str(&message.text);
        last = Some(message);
    }
    assert_eq!(text, "w0 w1 w2 w3 w4 ");
    let timing = last.expect("final").timing.expect("timing");
    assert!(timing.time_to_first_token_us > 0 && timing.backend_us >= 80_000);

    // A client that leaves mid-stream drops the call.
    let mut stream = client
        .generate_stream(request("t-stream", "words 1000"))
        .await
        .expect("stream")
        .into_inner();
    stream.next().await.expect("a word").expect("ok");
    drop(stream);
    let mut dropped = false;
    while !dropped {
        dropped = matches!(next(&mut h.seen).await, Seen::Dropped(p) if p == "words 1000");
    }

    let status = client
        .generate(request("t-stream", "panic"))
        .await
        .expect_err("panic");
    assert_eq!(status.code(), Code::Internal);
    let status = client
        .generate(request("t-stream", "fail"))
        .await
        .expect_err("fail");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("upstream down"), "{status:?}");
    let answer = client
        .generate(request("t-stream", "fine"))
        .await
        .expect("ok");
    assert_eq!(answer.into_inner().text, "fine");
    let scrape = h.server.scrape().await;
    let panics = r#"infergate_backend_panics_total{model="t-stream"}"#;
    assert_eq!(metric(&scrape, panics), Some(1.0));
    let busy = metric(
        &scrape,
        r#"infergate_backend_busy_seconds_total{model="t-stream"}"#,
    );
    assert!(busy.is_some_and(|b| b >= 0.08), "{busy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_tasks() {
    let mut h = harness("t-shutdown", 4, 4).await;
    let client = h.server.client().await;
    let call = common::spawn_generate(&client, "t-shutdown", "sleep 300");
    assert_eq!(next(&mut h.seen).await, Seen::Started("sleep 300".into()));
    let gateway = h.server.gateway.clone();
    h.server.shutdown().await.expect("clean shutdown");
    let answer = call.await.expect("task").expect("drained, not cut off");
    assert_eq!(
        answer.into_inner().timing.expect("timing").backend_us / 100_000,
        3
    );
    assert_eq!(
        gateway
            .workers_stopped(Instant::now() + Duration::from_secs(5))
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_slots_go_to_tenants_in_turn() {
    let mut h = harness("t-fair", 1, 16).await;
    let gateway = h.server.gateway.clone();
    let generate = |tenant: &str, prompt: &str| {
        let gateway = gateway.clone();
        let mut options = CallOptions::new(Instant::now(), None);
        options.caller = Caller {
            tenant: tenant.into(),
            ..Caller::anonymous()
        };
        let request = request("t-fair", prompt);
        tokio::spawn(async move { gateway.generate(request, options).await })
    };
    let holder = generate("a", "sleep 200");
    assert_eq!(next(&mut h.seen).await, Seen::Started("sleep 200".into()));
    let mut calls = Vec::new();
    for i in 0..5 {
        calls.push(generate("a", &format!("a{i}")));
        h.server.wait_for("t-fair", |m| m.queued == i + 1).await;
    }
    // A call of A that leaves the queue gives up its turn.
    calls.remove(1).abort();
    h.server.wait_for("t-fair", |m| m.queued == 4).await;
    calls.push(generate("b", "b0"));
    h.server
        .wait_for("t-fair", |m| m.queued == 5 && m.tenants_waiting == 2)
        .await;
    holder.await.expect("task").expect("holder");
    let mut started = Vec::new();
    while started.len() < 5 {
        if let Seen::Started(prompt) = next(&mut h.seen).await {
            started.push(prompt);
        }
    }
    // B's call waits one turn, not behind A's four.
    assert_eq!(started, ["a0", "b0", "a2", "a3", "a4"]);
    for call in calls {
        call.await.expect("task").expect("served");
    }
}
