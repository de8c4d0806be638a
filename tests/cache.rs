//! The response cache through the real server: hits, misses, what is not
//! cached, expiry, the byte bound, replay on streams, bypass, and
//! identical calls in flight sharing one backend call.

mod common;

use std::time::Duration;

use common::{TestServer, metric};
use infergate::proto;
use infergate::proto::CacheStatus;
use tokio_stream::StreamExt;

/// A simulated model with a response cache (`cache` is the table's body).
fn cached(name: &str, latency_ms: u64, workers: usize, cache: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\nbackend = \"simulated\"\nworkers = {workers}\nqueue_capacity = 256\n[models.simulated]\nlatency_ms = {latency_ms}\n[models.cache]\n{cache}\n"
    )
}

/// A greedy (cacheable) request.
fn greedy(model: &str, prompt: &str) -> proto::GenerateRequest {
    proto::GenerateRequest {
        model: model.into(),
        prompt: prompt.into(),
        temperature: Some(0.0),
        ..Default::default()
    }
}

async fn call(server: &TestServer, request: proto::GenerateRequest) -> proto::GenerateResponse {
    server
        .client()
        .await
        .generate(request)
        .await
        .expect("the call succeeds")
        .into_inner()
}

fn status(response: &proto::GenerateResponse) -> CacheStatus {
    CacheStatus::try_from(response.cache).expect("a known cache status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_greedy_call_is_a_hit_and_sampled_ones_are_not_cached() {
    let server = TestServer::start_with_metrics(&cached("c-basic", 50, 2, "")).await;
    let first = call(&server, greedy("c-basic", "what is sepsis")).await;
    assert_eq!(status(&first), CacheStatus::Miss);
    let second = call(&server, greedy("c-basic", "what is sepsis")).await;
    assert_eq!(status(&second), CacheStatus::Hit);
    assert_eq!(second.text, first.text);
    assert_eq!(second.model, "c-basic");
    let timing = second.timing.expect("timing");
    assert_eq!((timing.backend_us, timing.queue_wait_us), (0, 0));
    assert_eq!(server.model_info("c-basic").await.backend_calls, 1);

    // A temperature above 0 without a seed samples: never cached.
    let mut sampled = greedy("c-basic", "what is sepsis");
    sampled.temperature = Some(0.7);
    for _ in 0..2 {
        let r = call(&server, sampled.clone()).await;
        assert_eq!(status(&r), CacheStatus::Unspecified);
    }
    assert_eq!(server.model_info("c-basic").await.backend_calls, 3);
    // With a seed it is reproducible: cached.
    sampled.seed = Some(7);
    assert_eq!(
        status(&call(&server, sampled.clone()).await),
        CacheStatus::Miss
    );
    assert_eq!(status(&call(&server, sampled).await), CacheStatus::Hit);
    assert_eq!(server.model_info("c-basic").await.backend_calls, 4);

    let scrape = server.scrape().await;
    let value = |s: &str| metric(&scrape, s);
    assert_eq!(
        value(r#"infergate_cache_hits_total{model="c-basic"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(r#"infergate_cache_misses_total{model="c-basic"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(r#"infergate_cache_entries{model="c-basic"}"#),
        Some(2.0)
    );
    assert!(value(r#"infergate_cache_bytes{model="c-basic"}"#).is_some_and(|b| b > 0.0));
    let info = server.model_info("c-basic").await;
    assert_eq!(info.cache_entries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_their_ttl() {
    let server = TestServer::start(&cached("c-ttl", 5, 1, "ttl_seconds = 0.3")).await;
    assert_eq!(
        status(&call(&server, greedy("c-ttl", "p")).await),
        CacheStatus::Miss
    );
    assert_eq!(
        status(&call(&server, greedy("c-ttl", "p")).await),
        CacheStatus::Hit
    );
    // Expiry is a matter of time: nothing to await but the clock.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        status(&call(&server, greedy("c-ttl", "p")).await),
        CacheStatus::Miss
    );
    assert_eq!(server.model_info("c-ttl").await.backend_calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_bound_evicts_the_least_recently_used() {
    // Each entry is the prompt twice (key and echoed text) plus overhead:
    // about 1.3 KB, so 4 KB holds a few of them.
    let server = TestServer::start(&cached(
        "c-bytes",
        1,
        1,
        "max_bytes = 4000\nmax_entries = 1000",
    ))
    .await;
    let prompt = |i: usize| format!("{i:03} {}", "x".repeat(500));
    for i in 0..10 {
        let r = call(&server, greedy("c-bytes", &prompt(i))).await;
        assert_eq!(status(&r), CacheStatus::Miss);
    }
    let info = server.model_info("c-bytes").await;
    assert!(info.cache_bytes <= 4000, "{info:?}");
    assert!(
        info.cache_entries >= 1 && info.cache_entries < 10,
        "{info:?}"
    );
    // The newest is still there; the oldest went first.
    assert_eq!(
        status(&call(&server, greedy("c-bytes", &prompt(9))).await),
        CacheStatus::Hit
    );
    assert_eq!(
        status(&call(&server, greedy("c-bytes", &prompt(0))).await),
        CacheStatus::Miss
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_identical_calls_start_one_backend_call() {
    let server = TestServer::start(&cached("c-herd", 300, 8, "")).await;
    let client = server.client().await;
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.generate(greedy("c-herd", "same question")).await })
        })
        .collect();
    let mut counts = [0usize; 5];
    for call in calls {
        let response = call.await.expect("task").expect("call").into_inner();
        assert_eq!(response.text, "same question");
        counts[status(&response) as usize] += 1;
    }
    assert_eq!(server.model_info("c-herd").await.backend_calls, 1);
    assert_eq!(counts[CacheStatus::Miss as usize], 1, "{counts:?}");
    assert_eq!(
        counts[CacheStatus::Coalesced as usize] + counts[CacheStatus::Hit as usize],
        99,
        "{counts:?}"
    );
    assert!(counts[CacheStatus::Coalesced as usize] > 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_survives_the_cancellation_of_the_one_it_waits_on() {
    let server = TestServer::start(&cached("c-leader", 800, 2, "")).await;
    let client = server.client().await;
    let mut leader_client = client.clone();
    let leader =
        tokio::spawn(async move { leader_client.generate(greedy("c-leader", "shared")).await });
    server.wait_for("c-leader", |m| m.busy_workers == 1).await;
    let mut follower_client = client.clone();
    let follower =
        tokio::spawn(async move { follower_client.generate(greedy("c-leader", "shared")).await });
    server
        .wait_for("c-leader", |m| m.cache_in_flight == 2)
        .await;
    // The leader's client goes away: its backend call is cancelled.
    leader.abort();
    let response = follower
        .await
        .expect("task")
        .expect("the follower is served")
        .into_inner();
    assert_eq!(response.text, "shared");
    // It ran the backend itself once the leader left.
    assert_eq!(status(&response), CacheStatus::Miss);
    assert_eq!(server.model_info("c-leader").await.backend_calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replays_a_cached_answer_and_stores_its_own() {
    let server = TestServer::start(&cached("c-stream", 20, 2, "")).await;
    let mut client = server.client().await;
    let stream_call = |request: proto::GenerateRequest| {
        let mut client = client.clone();
        async move {
            let mut stream = client
                .generate_stream(request)
                .await
                .expect("stream starts")
                .into_inner();
            let (mut text, mut last) = (String::new(), None);
            while let Some(message) = stream.next().await {
                let message = message.expect("stream message");
                text.push_str(&message.text);
                last = Some(message);
            }
            (text, last.expect("a final message"))
        }
    };
    // A stream's miss is stored...
    let (text, last) = stream_call(greedy("c-stream", "one two three")).await;
    assert_eq!(text, "one two three");
    assert_eq!(last.cache, CacheStatus::Miss as i32);
    server.wait_for("c-stream", |m| m.cache_entries == 1).await;
    // ...and replayed to the next stream, and answers a Generate call.
    let (text, last) = stream_call(greedy("c-stream", "one two three")).await;
    assert_eq!(text, "one two three");
    assert_eq!(last.cache, CacheStatus::Hit as i32);
    let unary = client
        .generate(greedy("c-stream", "one two three"))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(status(&unary), CacheStatus::Hit);
    assert_eq!(server.model_info("c-stream").await.backend_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_bypasses_the_cache() {
    let server = TestServer::start(&cached("c-bypass", 5, 1, "")).await;
    let mut client = server.client().await;
    assert_eq!(
        status(&call(&server, greedy("c-bypass", "q")).await),
        CacheStatus::Miss
    );
    for value in ["no-cache", "no-store"] {
        let mut request = tonic::Request::new(greedy("c-bypass", "q"));
        request
            .metadata_mut()
            .insert("cache-control", value.parse().expect("ascii"));
        let response = client.generate(request).await.expect("call").into_inner();
        assert_eq!(status(&response), CacheStatus::Bypass, "{value}");
    }
    assert_eq!(server.model_info("c-bypass").await.backend_calls, 3);
    assert_eq!(
        status(&call(&server, greedy("c-bypass", "q")).await),
        CacheStatus::Hit
    );
}
