//! GenerateStream: tokens in order as they are produced, then one final
//! message; a client that leaves stops the backend.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, request, with_timeout};
use infergate::proto;
use tokio_stream::StreamExt;
use tonic::Code;

fn streaming_model(token_latency_ms: u64) -> String {
    format!(
        "[[models]]\nname = \"s\"\nbackend = \"simulated\"\nworkers = 2\nqueue_capacity = 4\n[models.simulated]\nlatency_ms = 20\ntoken_latency_ms = {token_latency_ms}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_arrive_in_order_then_the_final_message() {
    let server = TestServer::start(&streaming_model(30)).await;
    let mut client = server.client().await;
    let req = proto::GenerateRequest {
        max_tokens: 6,
        ..request("s", "one two three")
    };
    let start = Instant::now();
    let mut stream = client
        .generate_stream(req)
        .await
        .expect("stream starts")
        .into_inner();

    let mut texts = Vec::new();
    let mut first_at = None;
    let mut last = None;
    while let Some(message) = stream.next().await {
        let message = message.expect("stream message");
        if message.finish_reason == proto::FinishReason::Unspecified as i32 {
            assert!(last.is_none(), "text after the final message");
            first_at.get_or_insert_with(|| start.elapsed());
            texts.push(message.text);
        } else {
            last = Some(message);
        }
    }
    assert_eq!(texts, ["one", " two", " three", " one", " two", " three"]);
    let last = last.expect("final message");
    assert!(last.text.is_empty());
    assert_eq!(last.finish_reason, proto::FinishReason::Length as i32);
    let usage = last.usage.expect("usage");
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (3, 6, 9)
    );
    let timing = last.timing.expect("timing");
    assert!(timing.time_to_first_token_us > 0);
    assert!(
        timing.time_to_first_token_us < timing.total_us,
        "{timing:?}"
    );
    // 5 token gaps of 30 ms: the first token came well before the end.
    let total = start.elapsed();
    let first = first_at.expect("a token");
    assert!(
        total - first >= Duration::from_millis(100),
        "first {first:?}, total {total:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_ends_the_stream_with_stop() {
    let server = TestServer::start(&streaming_model(0)).await;
    let req = proto::GenerateRequest {
        max_tokens: 10,
        stop: vec!["three".into()],
        ..request("s", "one two three four")
    };
    let response = server
        .client()
        .await
        .generate(req)
        .await
        .expect("generate")
        .into_inner();
    assert_eq!(response.text, "one two ");
    assert_eq!(response.finish_reason, proto::FinishReason::Stop as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_leaves_frees_the_worker() {
    let server = TestServer::start(&streaming_model(200)).await;
    let mut client = server.client().await;
    let req = proto::GenerateRequest {
        max_tokens: 1000,
        ..request("s", "word")
    };
    let mut stream = client
        .generate_stream(req)
        .await
        .expect("stream")
        .into_inner();
    stream.next().await.expect("a first token").expect("ok");
    assert_eq!(server.model_info("s").await.busy_workers, 1);
    drop(stream);
    // 1000 tokens x 200 ms would hold the worker for minutes.
    server.wait_for("s", |m| m.busy_workers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
    let server = TestServer::start(&streaming_model(100)).await;
    let mut client = server.client().await;
    let req = proto::GenerateRequest {
        max_tokens: 1000,
        ..request("s", "word")
    };
    let mut stream = client
        .generate_stream(with_timeout(req, Duration::from_millis(400)))
        .await
        .expect("stream")
        .into_inner();
    let mut tokens = 0;
    let status = loop {
        match stream.next().await {
            Some(Ok(_)) => tokens += 1,
            Some(Err(status)) => break status,
            None => panic!("stream ended without an error"),
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(tokens >= 1, "tokens before the deadline: {tokens}");
    server.wait_for("s", |m| m.busy_workers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_request_streams_too() {
    let server = TestServer::start(&streaming_model(0)).await;
    let req = proto::GenerateRequest {
        model: "s".into(),
        messages: vec![
            proto::Message {
                role: "system".into(),
                content: "be brief".into(),
            },
            proto::Message {
                role: "user".into(),
                content: "hello".into(),
            },
        ],
        max_tokens: 3,
        ..Default::default()
    };
    let mut stream = server
        .client()
        .await
        .generate_stream(req)
        .await
        .expect("stream")
        .into_inner();
    let mut text = String::new();
    while let Some(message) = stream.next().await {
        text.push_str(&message.expect("message").text);
    }
    assert_eq!(text, "be brief hello");
}
