//! The OpenAI-compatible backend against a fake OpenAI server started by
//! the test on loopback: chat completions with and without `stream: true`,
//! error statuses, slow responses, and a client that leaves mid-stream.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestServer, request, with_timeout};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use infergate::backend::OpenAiFactory;
use infergate::config::{BackendKind, ModelConfig, OpenAiConfig, ServerConfig};
use infergate::gateway::Gateway;
use infergate::proto;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const KEY: &str = "test-key";

/// What the fake server saw.
#[derive(Default)]
struct Seen {
    bodies: Mutex<Vec<Value>>,
    /// Streams whose reader went away before the end.
    aborted: AtomicUsize,
}

/// An OpenAI-compatible server on loopback. The last message decides the
/// answer: `status N` answers HTTP N; `slow MS` waits first; anything else
/// is echoed (streamed word by word, 30 ms apart, when asked to stream).
async fn fake_openai() -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, state.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: u16, value: Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

async fn answer(req: Request<Incoming>, seen: Arc<Seen>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() != "/v1/chat/completions" {
        return Ok(json_response(
            404,
            json!({"error": {"message": "no such route"}}),
        ));
    }
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some("Bearer test-key");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.bodies.lock().unwrap().push(body.clone());
    if !authorized {
        return Ok(json_response(
            401,
            json!({"error": {"message": "Incorrect API key provided"}}),
        ));
    }
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let (command, argument) = last.split_once(' ').unwrap_or((&last, ""));
    match command {
        "status" => {
            let status: u16 = argument.parse().unwrap_or(500);
            return Ok(json_response(
                status,
                json!({"error": {"message": format!("fake upstream says {status}")}}),
            ));
        }
        "slow" => tokio::time::sleep(Duration::from_millis(argument.parse().unwrap_or(0))).await,
        _ => {}
    }
    if body["stream"] != true {
        return Ok(json_response(
            200,
            json!({
                "id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {last}")}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
            }),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let words: Vec<String> = last.split_whitespace().map(str::to_string).collect();
    tokio::spawn(async move {
        let event = |value: Value| Ok(Frame::data(Bytes::from(format!("data: {value}\n\n"))));
        for word in &words {
            let chunk = json!({"choices": [{"index": 0, "delta": {"content": format!("{word} ")}, "finish_reason": null}]});
            if tx.send(event(chunk)).await.is_err() {
                seen.aborted.fetch_add(1, Ordering::SeqCst);
                return;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let _ = tx
            .send(event(
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
            ))
            .await;
        let _ = tx.send(event(json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": words.len()}}))).await;
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
            .await;
    });
    let mut response = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("header"));
    Ok(response)
}

fn openai_config(base_url: String) -> OpenAiConfig {
    OpenAiConfig {
        base_url,
        model: Some("upstream-model".into()),
        api_key_env: None,
        connect_timeout_ms: 1000,
        read_timeout_ms: 5000,
    }
}

/// A gateway with model "gpt" on the given upstream, with this API key.
async fn gateway_for(base_url: String, key: Option<&str>) -> TestServer {
    let mut model = ModelConfig::new("gpt", BackendKind::Openai);
    model.workers = 4;
    let config = openai_config(base_url);
    let factory = OpenAiFactory::new("gpt", &config, key.map(str::to_string));
    model.openai = Some(config);
    let gateway = Gateway::builder()
        .model(model, Arc::new(factory))
        .build()
        .expect("pool");
    TestServer::start_gateway(gateway, ServerConfig::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_makes_one_chat_completion() {
    let (upstream, seen) = fake_openai().await;
    let server = gateway_for(format!("http://{upstream}/v1"), Some(KEY)).await;
    let req = proto::GenerateRequest {
        max_tokens: 64,
        temperature: Some(0.5),
        stop: vec!["END".into()],
        seed: Some(9),
        messages: vec![
            proto::Message {
                role: "system".into(),
                content: "be brief".into(),
            },
            proto::Message {
                role: "user".into(),
                content: "hello there".into(),
            },
        ],
        ..request("gpt", "")
    };
    let response = server
        .client()
        .await
        .generate(req)
        .await
        .expect("generate")
        .into_inner();
    assert_eq!(response.text, "echo: hello there");
    assert_eq!(response.finish_reason, proto::FinishReason::Stop as i32);
    let usage = response.usage.expect("usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 3));

    let body = seen
        .bodies
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("a request");
    assert_eq!(body["model"], "upstream-model");
    assert_eq!(body["stream"], false);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["stop"], json!(["END"]));
    assert_eq!(body["seed"], 9);
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_stream_forwards_each_delta_as_it_arrives() {
    let (upstream, seen) = fake_openai().await;
    // Base URL without /v1: it is added.
    let server = gateway_for(format!("http://{upstream}"), Some(KEY)).await;
    let start = Instant::now();
    let mut stream = server
        .client()
        .await
        .generate_stream(request("gpt", "one two three four five"))
        .await
        .expect("stream")
        .into_inner();
    let mut texts = Vec::new();
    let mut arrivals = Vec::new();
    let mut last = None;
    while let Some(message) = stream.next().await {
        let message = message.expect("message");
        if message.finish_reason == proto::FinishReason::Unspecified as i32 {
            texts.push(message.text);
            arrivals.push(start.elapsed());
        } else {
            last = Some(message);
        }
    }
    assert_eq!(texts, ["one ", "two ", "three ", "four ", "five "]);
    // Forwarded as they came (30 ms apart upstream), not all at the end.
    assert!(
        arrivals[4] - arrivals[0] >= Duration::from_millis(60),
        "{arrivals:?}"
    );
    let last = last.expect("final message");
    assert_eq!(last.finish_reason, proto::FinishReason::Length as i32);
    assert_eq!(last.usage.expect("usage").completion_tokens, 5);
    assert_eq!(
        seen.bodies.lock().unwrap().last().expect("request")["stream"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_map_to_grpc_codes_with_the_upstream_message() {
    let (upstream, _seen) = fake_openai().await;
    let server = gateway_for(format!("http://{upstream}/v1"), Some(KEY)).await;
    let mut client = server.client().await;
    for (status, code) in [
        (429, Code::ResourceExhausted),
        (403, Code::PermissionDenied),
        (400, Code::InvalidArgument),
        (404, Code::InvalidArgument),
        (500, Code::Unavailable),
        (503, Code::Unavailable),
    ] {
        let error = client
            .generate(request("gpt", &format!("status {status}")))
            .await
            .expect_err("error");
        assert_eq!(error.code(), code, "HTTP {status}: {error:?}");
        assert!(
            error
                .message()
                .contains(&format!("fake upstream says {status}")),
            "{}",
            error.message()
        );
        // Streams map the same way.
        let error = client
            .generate_stream(request("gpt", &format!("status {status}")))
            .await
            .expect("stream starts")
            .into_inner()
            .next()
            .await
            .expect("an item")
            .expect_err("error");
        assert_eq!(error.code(), code, "stream, HTTP {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_unauthenticated() {
    let (upstream, _seen) = fake_openai().await;
    let server = gateway_for(format!("http://{upstream}/v1"), Some("wrong")).await;
    let error = server
        .client()
        .await
        .generate(request("gpt", "hi"))
        .await
        .expect_err("401");
    assert_eq!(error.code(), Code::Unauthenticated);
    assert!(
        error.message().contains("Incorrect API key"),
        "{}",
        error.message()
    );
    assert!(
        !error.message().contains("wrong"),
        "the key leaked: {}",
        error.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstreams_meet_the_deadline() {
    let (upstream, _seen) = fake_openai().await;
    let server = gateway_for(format!("http://{upstream}/v1"), Some(KEY)).await;
    let mut client = server.client().await;
    let ok = client
        .generate(request("gpt", "slow 200"))
        .await
        .expect("slow but in time");
    assert_eq!(ok.into_inner().text, "echo: slow 200");

    let start = Instant::now();
    let error = client
        .generate(with_timeout(
            request("gpt", "slow 3000"),
            Duration::from_millis(400),
        ))
        .await
        .expect_err("too slow");
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    // The worker is free again once the HTTP call gave up at the deadline.
    server.wait_for("gpt", |m| m.busy_workers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_unavailable() {
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let server = gateway_for(format!("http://{closed}/v1"), Some(KEY)).await;
    let error = server
        .client()
        .await
        .generate(request("gpt", "hi"))
        .await
        .expect_err("refused");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(
        error.message().contains(&closed.to_string()),
        "{}",
        error.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_closes_the_upstream_stream() {
    let (upstream, seen) = fake_openai().await;
    let server = gateway_for(format!("http://{upstream}/v1"), Some(KEY)).await;
    let words = vec!["w"; 200].join(" ");
    let mut stream = server
        .client()
        .await
        .generate_stream(request("gpt", &words))
        .await
        .expect("stream")
        .into_inner();
    stream.next().await.expect("a token").expect("ok");
    drop(stream);
    // 200 words x 30 ms would take 6 s; the upstream sees its reader go.
    let give_up = Instant::now() + Duration::from_secs(5);
    while seen.aborted.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < give_up,
            "the upstream stream was not closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.wait_for("gpt", |m| m.busy_workers == 0).await;
}
