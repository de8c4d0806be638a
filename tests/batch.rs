//! GenerateBatch through the real server: items overlap and arrive as
//! they finish, one failing item never fails the others, the RPC's
//! deadline bounds every item, and a client that leaves cancels them.

mod common;

use std::time::Duration;

use common::{
    Event, TestServer, metric, next_event, probe_server, request, simulated, with_timeout,
};
use infergate::config::ServerConfig;
use infergate::proto;
use infergate::proto::generate_batch_response::Result as Item;
use tokio_stream::StreamExt;
use tonic::Code;

fn batch(items: Vec<proto::GenerateRequest>) -> proto::GenerateBatchRequest {
    proto::GenerateBatchRequest {
        items,
        max_parallel: 0,
    }
}

/// Every message of a batch, in arrival order.
async fn collect(
    client: &mut proto::inference_client::InferenceClient<tonic::transport::Channel>,
    request: tonic::Request<proto::GenerateBatchRequest>,
) -> Vec<proto::GenerateBatchResponse> {
    let mut stream = client
        .generate_batch(request)
        .await
        .expect("the batch starts")
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.next().await {
        messages.push(message.expect("a batch message"));
    }
    messages
}

fn summary(messages: &[proto::GenerateBatchResponse]) -> proto::BatchSummary {
    match messages.last().and_then(|m| m.result.clone()) {
        Some(Item::Summary(summary)) => summary,
        other => panic!("the last message is not the summary: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_pair_arrives_in_completion_order_with_the_time_saved() {
    let config = simulated("task-a", 829, 1, 4) + &simulated("task-b", 696, 1, 4);
    let server = TestServer::start_with_metrics(&config).await;
    let mut client = server.client().await;
    let mut empty = request("task-a", "");
    empty.prompt.clear();
    let items = vec![
        request("task-a", "find papers on sepsis"),
        request("task-b", "rank the abstracts"),
        request("no-such-model", "x"),
        empty,
    ];
    let messages = collect(&mut client, tonic::Request::new(batch(items))).await;
    assert_eq!(messages.len(), 5, "{messages:?}");

    // The two failures come at once, then task-b (696 ms), then task-a.
    let order: Vec<u32> = messages[..4].iter().map(|m| m.index).collect();
    assert_eq!(&order[2..], &[1, 0], "completion order: {order:?}");
    let mut codes = Vec::new();
    for message in &messages[..2] {
        match &message.result {
            Some(Item::Error(error)) => codes.push((message.index, error.code_name.clone())),
            other => panic!("expected an error first: {other:?}"),
        }
    }
    codes.sort();
    assert_eq!(
        codes,
        vec![
            (2, "NOT_FOUND".to_string()),
            (3, "INVALID_ARGUMENT".to_string())
        ]
    );
    let Some(Item::Error(error)) = &messages[0].result else {
        unreachable!()
    };
    assert_eq!(error.code, Code::from_i32(error.code) as i32);
    assert!(error.message.contains("item"), "{}", error.message);

    let response = |i: usize| match &messages[i].result {
        Some(Item::Response(r)) => r.clone(),
        other => panic!("expected a response: {other:?}"),
    };
    let (b, a) = (response(2), response(3));
    assert_eq!(a.model, "task-a");
    assert_eq!(a.text, "find papers on sepsis");
    assert_eq!(b.model, "task-b");
    let (ta, tb) = (a.timing.expect("timing"), b.timing.expect("timing"));
    assert!(ta.backend_us >= 829_000 && tb.backend_us >= 696_000);

    let summary = summary(&messages);
    assert_eq!(
        (summary.items, summary.succeeded, summary.failed),
        (4, 2, 2)
    );
    // Overlap, in the server's own figures: the items' times add up to
    // about 1.5 s, the batch took about 0.83 s.
    assert!(summary.sum_us >= 829_000 + 696_000, "{summary:?}");
    assert!(summary.wall_us >= 829_000, "{summary:?}");
    assert_eq!(summary.saved_us, summary.sum_us - summary.wall_us);
    assert!(summary.saved_fraction > 0.3, "{summary:?}");

    let scrape = server.scrape().await;
    let ok = r#"infergate_requests_total{model="task-a",method="GenerateBatch",code="OK",tenant="anonymous"}"#;
    assert_eq!(metric(&scrape, ok), Some(1.0), "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_past_the_deadline_fails_while_the_others_succeed() {
    let config = simulated("quick", 20, 2, 4) + &simulated("glacial", 5000, 1, 4);
    let server = TestServer::start(&config).await;
    let mut client = server.client().await;
    let items = vec![
        request("glacial", "too slow"),
        request("quick", "fast one"),
        request("quick", "fast two"),
    ];
    let started = std::time::Instant::now();
    let messages = collect(
        &mut client,
        with_timeout(batch(items), Duration::from_millis(800)),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(messages.len(), 4);
    for message in &messages[..3] {
        match (&message.index, &message.result) {
            (0, Some(Item::Error(error))) => {
                assert_eq!(error.code_name, "DEADLINE_EXCEEDED", "{error:?}")
            }
            (1 | 2, Some(Item::Response(r))) => assert_eq!(r.model, "quick"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let summary = summary(&messages);
    assert_eq!((summary.succeeded, summary.failed), (2, 1));
    // The glacial item's worker was freed at the deadline.
    server.wait_for("glacial", |m| m.busy_workers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallel_runs_items_in_turn() {
    let config = simulated("steady", 150, 4, 8);
    let server = TestServer::start(&config).await;
    let mut client = server.client().await;
    let items = || {
        (0..3)
            .map(|i| request("steady", &format!("item {i}")))
            .collect()
    };
    let one_at_a_time = proto::GenerateBatchRequest {
        items: items(),
        max_parallel: 1,
    };
    let messages = collect(&mut client, tonic::Request::new(one_at_a_time)).await;
    let serial = summary(&messages);
    // In turn: nothing saved (the items' times add up to the wall time).
    assert!(serial.saved_fraction < 0.2, "{serial:?}");
    let messages = collect(&mut client, tonic::Request::new(batch(items()))).await;
    let parallel = summary(&messages);
    assert!(parallel.saved_fraction > 0.4, "{parallel:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_the_unfinished_items() {
    let (server, _factory, mut events) = probe_server(2, 4, ServerConfig::default()).await;
    let mut client = server.client().await;
    let items = vec![
        request("probe", "hold 20000"),
        request("probe", "hold 20001"),
    ];
    let mut stream = client
        .generate_batch(batch(items))
        .await
        .expect("the batch starts")
        .into_inner();
    let mut started = vec![next_event(&mut events).await, next_event(&mut events).await];
    started.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        started,
        vec![
            Event::Started("hold 20000".into()),
            Event::Started("hold 20001".into())
        ]
    );
    // Poll once so the stream is live, then leave.
    let _ = tokio::time::timeout(Duration::from_millis(10), stream.next()).await;
    drop(stream);
    for _ in 0..2 {
        match next_event(&mut events).await {
            Event::Ended { cancelled, .. } => assert!(cancelled),
            other => panic!("unexpected {other:?}"),
        }
    }
    server.wait_for("probe", |m| m.busy_workers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_oversized_batches_are_refused_naming_the_field() {
    let config = "[server]\nmax_batch_items = 2\n".to_string() + &simulated("m", 1, 1, 4);
    let server = TestServer::start(&config).await;
    let mut client = server.client().await;
    let status = client
        .generate_batch(batch(Vec::new()))
        .await
        .expect_err("empty");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("items"), "{status:?}");
    let three = (0..3).map(|_| request("m", "x")).collect();
    let status = client
        .generate_batch(batch(three))
        .await
        .expect_err("too many");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("max_batch_items"), "{status:?}");
    assert_eq!(server.model_info("m").await.backend_calls, 0);
}
