//! CPU-bound Python: two worker processes run two calls at the same time
//! (each has its own interpreter, so no GIL serialises them), while one
//! worker runs them one after the other. Checked with the server's own
//! queue-wait and backend figures, so a busy machine cannot fake or hide
//! it; the speed-up itself is a benchmark figure, not a test (it depends
//! on free cores), and is only printed here.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, python_probe};
use infergate::proto::{self, Timing};

async fn two_at_once(server: &TestServer, model: &str) -> (Duration, Vec<Timing>) {
    let client = server.client().await;
    // Warm up: every worker has started and served once.
    for _ in 0..2 {
        common::generate_text(&client, model, "spin 10")
            .await
            .expect("warm-up");
    }
    let start = Instant::now();
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            let request = proto::GenerateRequest {
                model: model.to_string(),
                prompt: "spin 250".into(),
                ..Default::default()
            };
            tokio::spawn(async move { client.generate(request).await })
        })
        .collect();
    let mut timings = Vec::new();
    for call in calls {
        let answer = call.await.expect("task").expect("call").into_inner();
        assert_eq!(answer.text, "spun");
        timings.push(answer.timing.expect("timing"));
    }
    (start.elapsed(), timings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_run_cpu_bound_calls_side_by_side() {
    let config = python_probe("cpu-1", 1, "") + &python_probe("cpu-2", 2, "");
    let server = TestServer::start(&config).await;

    let (two_wall, two) = two_at_once(&server, "cpu-2").await;
    for timing in &two {
        assert!(timing.backend_us >= 250_000, "{timing:?}");
        assert!(
            timing.queue_wait_us * 2 < timing.backend_us,
            "a call waited for the other on two workers: {two:?}"
        );
    }

    let (one_wall, one) = two_at_once(&server, "cpu-1").await;
    let waited = one.iter().map(|t| t.queue_wait_us).max().unwrap_or(0);
    let ran = one.iter().map(|t| t.backend_us).min().unwrap_or(0);
    assert!(
        waited * 10 >= ran * 8,
        "on one worker the second call waits for the first: {one:?}"
    );
    eprintln!(
        "2 x 250 ms of CPU: 1 worker {one_wall:?}, 2 workers {two_wall:?} (speed-up {:.2}, depends on free cores)",
        one_wall.as_secs_f64() / two_wall.as_secs_f64()
    );
}
