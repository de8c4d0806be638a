//! Concurrent calls really overlap, up to the pool size, and no further.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, request, simulated};
use infergate::proto;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_pair_runs_side_by_side() {
    // The story's 8.29 s and 6.96 s tasks, scaled down 10x: serial would be
    // 1.525 s, overlapped 0.829 s.
    let config = simulated("task-a", 829, 1, 4) + &simulated("task-b", 696, 1, 4);
    let server = TestServer::start(&config).await;
    let mut client_a = server.client().await;
    let mut client_b = client_a.clone();

    let start = Instant::now();
    let (a, b) = tokio::join!(
        client_a.generate(request("task-a", "find papers on sepsis")),
        client_b.generate(request("task-b", "rank the abstracts")),
    );
    let wall = start.elapsed();
    let (a, b) = (
        a.expect("task-a").into_inner(),
        b.expect("task-b").into_inner(),
    );

    assert!(wall >= Duration::from_millis(829), "wall {wall:?}");
    let timing_a = a.timing.expect("timing");
    let timing_b = b.timing.expect("timing");
    assert!(timing_a.backend_us >= 829_000, "{timing_a:?}");
    assert!(timing_b.backend_us >= 696_000, "{timing_b:?}");
    // Overlap, as a ratio of the server's own figures to the wall time, so
    // a slow machine cannot fake or hide it: serial would be 1.0 at best,
    // side by side it is about 1.84.
    let backend = Duration::from_micros(timing_a.backend_us + timing_b.backend_us);
    let overlap = backend.as_secs_f64() / wall.as_secs_f64();
    assert!(
        overlap > 1.3,
        "calls did not overlap: {overlap:.2} ({backend:?} of backend time in {wall:?})"
    );
    assert!(timing_a.total_us >= timing_a.backend_us);
    assert_eq!(a.model, "task-a");
    assert_eq!(a.text, "find papers on sepsis");
}

async fn run_burst(
    server: &TestServer,
    model: &str,
    calls: usize,
) -> (Duration, Vec<proto::GenerateResponse>) {
    let client = server.client().await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..calls)
        .map(|i| {
            let mut client = client.clone();
            let model = model.to_string();
            tokio::spawn(
                async move { client.generate(request(&model, &format!("call {i}"))).await },
            )
        })
        .collect();
    let mut responses = Vec::new();
    for task in tasks {
        responses.push(
            task.await
                .expect("task")
                .expect("call succeeds")
                .into_inner(),
        );
    }
    (start.elapsed(), responses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_workers_run_thirty_two_calls_at_once() {
    let server = TestServer::start(&simulated("wide", 200, 32, 64)).await;
    let (wall, responses) = run_burst(&server, "wide", 32).await;
    assert_eq!(responses.len(), 32);
    // No call waited for another to finish: each was picked up well within
    // one service time (the server's own queue-wait figures, not the wall
    // clock of a busy test machine).
    for response in &responses {
        let timing = response.timing.expect("timing");
        assert!(timing.backend_us >= 200_000, "{timing:?}");
        assert!(
            timing.queue_wait_us * 2 < timing.backend_us,
            "a call waited for a worker on 32 workers: {timing:?} (wall {wall:?})"
        );
    }
    assert_eq!(server.model_info("wide").await.backend_calls, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_runs_them_one_at_a_time() {
    let server = TestServer::start(&simulated("narrow", 200, 1, 64)).await;
    let (wall, responses) = run_burst(&server, "narrow", 32).await;
    assert!(
        wall >= Duration::from_millis(32 * 200),
        "the pool bound did not hold: {wall:?}"
    );
    // The last call served waited for the 31 before it.
    let longest_wait = responses
        .iter()
        .map(|r| r.timing.expect("timing").queue_wait_us)
        .max()
        .unwrap_or(0);
    assert!(
        longest_wait >= 31 * 200_000,
        "longest queue wait {longest_wait} us"
    );
}
