//! CPU-bound Python on 2 cores: two worker processes do about twice the
//! work of one per unit of time (each has its own interpreter, so the GIL
//! does not serialise them). Alone in its test binary, so no other test
//! competes for the cores.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, generate_text, python_probe};

async fn wall_for(server: &TestServer, model: &str, calls: usize) -> Duration {
    let client = server.client().await;
    // Warm up: every worker has started and served once.
    for _ in 0..2 {
        generate_text(&client, model, "spin 10")
            .await
            .expect("warm-up");
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..calls)
        .map(|_| {
            let client = client.clone();
            let model = model.to_string();
            tokio::spawn(async move { generate_text(&client, &model, "spin 250").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task").expect("call"), "spun");
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cpu_bound_workers_do_about_twice_the_work_of_one() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        eprintln!("skipped: needs 2 cores, this machine has {cores}");
        return;
    }
    let config = python_probe("cpu-1", 1, "") + &python_probe("cpu-2", 2, "");
    let server = TestServer::start(&config).await;
    let one = wall_for(&server, "cpu-1", 6).await;
    let two = wall_for(&server, "cpu-2", 6).await;
    let speedup = one.as_secs_f64() / two.as_secs_f64();
    eprintln!("6 x 250 ms of CPU: 1 worker {one:?}, 2 workers {two:?}, speed-up {speedup:.2}");
    // Ideal 2.0; generous for a noisy 2-core machine.
    assert!(
        speedup > 1.4,
        "speed-up {speedup:.2} (1 worker {one:?}, 2 workers {two:?})"
    );
}
