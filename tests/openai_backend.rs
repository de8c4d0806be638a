//! The OpenAI-compatible backend against a fake OpenAI server started by
//! the test on loopback: chat completions with and without `stream: true`,
//! error statuses (safe messages, details only in the log), slow and hung
//! upstreams, clients that leave, credentials in the URL, and health that
//! follows the upstream.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestServer, request, wait_for_health, with_timeout};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use infergate::backend::{OpenAiFactory, SimulatedFactory};
use infergate::config::{BackendKind, ModelConfig, OpenAiConfig, ServerConfig};
use infergate::gateway::Gateway;
use infergate::proto;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const KEY: &str = "test-key";

/// What the fake server saw.
#[derive(Default)]
struct Seen {
    bodies: Mutex<Vec<Value>>,
    /// Streams whose reader went away before the end.
    aborted: AtomicUsize,
}

/// An OpenAI-compatible server on loopback. The last message decides the
/// answer: `status N` answers HTTP N; `slow MS` waits first; `hang` never
/// answers; anything else is echoed (streamed word by word, 30 ms apart,
/// when asked to stream). A wrong key gets a 401 that quotes it, as some
/// servers do. `GET /v1/models` answers 200 (the health probe).
async fn fake_openai() -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    fake_openai_on(listener)
}

/// The fake server on a given listener.
fn fake_openai_on(listener: tokio::net::TcpListener) -> (SocketAddr, Arc<Seen>) {
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
    if req.uri().path() == "/v1/models" {
        return Ok(json_response(200, json!({"object": "list", "data": []})));
    }
    if req.uri().path() != "/v1/chat/completions" {
        return Ok(json_response(
            404,
            json!({"error": {"message": "no such route"}}),
        ));
    }
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let authorized = authorization == "Bearer test-key";
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
            json!({"error": {"message": format!(
                "Incorrect API key provided: {}",
                authorization.trim_start_matches("Bearer ")
            )}}),
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
        "hang" => std::future::pending::<()>().await,
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
        model: Some("upstream-model".into()),
        connect_timeout_ms: 1000,
        read_timeout_ms: 5000,
        ..OpenAiConfig::new(base_url)
    }
}

/// A gateway with model "gpt" on the given upstream, with this API key.
async fn gateway_for(base_url: String, key: Option<&str>) -> TestServer {
    gateway_with(openai_config(base_url), key, 4).await
}

/// A gateway with model "gpt" of `workers` workers on this upstream.
async fn gateway_with(config: OpenAiConfig, key: Option<&str>, workers: usize) -> TestServer {
    let mut model = ModelConfig::new("gpt", BackendKind::Openai);
    model.workers = workers;
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
async fn http_errors_map_to_grpc_codes_without_the_upstream_message() {
    let (upstream, _seen) = fake_openai().await;
    let server = gateway_for(format!("http://{upstream}/v1"), Some(KEY)).await;
    let mut client = server.client().await;
    for (status, code) in [
        (429, Code::ResourceExhausted),
        (401, Code::Unavailable),
        (403, Code::Unavailable),
        (400, Code::InvalidArgument),
        (422, Code::InvalidArgument),
        (404, Code::Unavailable),
        (500, Code::Unavailable),
        (503, Code::Unavailable),
    ] {
        let error = client
            .generate(request("gpt", &format!("status {status}")))
            .await
            .expect_err("error");
        assert_eq!(error.code(), code, "HTTP {status}: {error:?}");
        let message = error.message();
        assert!(message.contains(&format!("HTTP {status}")), "{message}");
        assert!(message.contains("\"gpt\""), "names the model: {message}");
        assert!(!message.contains("fake upstream says"), "{message}");
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
        assert!(!error.message().contains("fake upstream says"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_is_unavailable_and_its_body_goes_only_to_the_log() {
    let log = log::capture();
    let (upstream, _seen) = fake_openai().await;
    let secret = "sk-wrong-0123456789abcdef";
    let server = gateway_for(format!("http://{upstream}/v1"), Some(secret)).await;
    let mut call = tonic::Request::new(request("gpt", "hi"));
    call.metadata_mut()
        .insert("x-request-id", "req-upstream-401".parse().expect("ascii"));
    let error = server.client().await.generate(call).await.expect_err("401");
    // The gateway's key is wrong, not the client's.
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    let everything = format!("{} {:?}", error.message(), error.metadata());
    assert!(!everything.contains(secret), "the key leaked: {everything}");
    assert!(!everything.contains("Incorrect API key"), "{everything}");
    assert!(error.message().contains("HTTP 401"), "{}", error.message());

    // The operator finds the upstream's words at warn, with the request
    // id, and without the key.
    let line = log
        .wait_for_line(|l| l.contains("Incorrect API key provided"))
        .await;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("req-upstream-401"), "{line}");
    assert!(!line.contains(secret), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_base_url_never_reach_a_client_or_the_log() {
    let log = log::capture();
    let password = "hunter2-in-the-url";
    // Down: a port with nothing listening. Up: the fake, which refuses
    // Basic auth with a 401.
    let closed = closed_port();
    let (upstream, _seen) = fake_openai().await;
    for addr in [closed, upstream] {
        let base_url = format!("http://bob:{password}@{addr}/v1");
        let server = gateway_for(base_url, None).await;
        let mut client = server.client().await;
        for streaming in [false, true] {
            let error = if streaming {
                match client.generate_stream(request("gpt", "hi")).await {
                    Ok(stream) => stream
                        .into_inner()
                        .next()
                        .await
                        .expect("an item")
                        .expect_err("fails"),
                    Err(error) => error,
                }
            } else {
                client
                    .generate(request("gpt", "hi"))
                    .await
                    .expect_err("fails")
            };
            assert_eq!(error.code(), Code::Unavailable, "{error:?}");
            let everything = format!("{} {:?}", error.message(), error.metadata());
            assert!(!everything.contains(password), "{everything}");
        }
    }
    // The closed port shows in the log as a failed request, or as a failed
    // probe if the probe (sent at once) found it first and the calls were
    // refused before any request: either way with the URL redacted.
    let line = log
        .wait_for_line(|l| {
            l.contains("the request to the upstream failed") || l.contains("probe failed")
        })
        .await;
    assert!(line.contains("bob:***@"), "{line}");
    assert!(
        !log.text().contains(password),
        "the password reached the log"
    );
}

/// A loopback port with nothing listening on it.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
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
    let closed = closed_port();
    let server = gateway_for(format!("http://{closed}/v1"), Some(KEY)).await;
    let error = server
        .client()
        .await
        .generate(request("gpt", "hi"))
        .await
        .expect_err("refused");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    // The call found it unreachable, or the probe (sent at once) did first
    // and the call was refused without a request.
    assert!(
        error.message().contains("cannot be reached")
            || error.message().contains("no upstream is up"),
        "{}",
        error.message()
    );
    // Where the upstream lives is the operator's business.
    assert!(!error.message().contains(&closed.to_string()));
}

/// Accepts connections and holds them without reading or answering.
async fn hung_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: a test makes a handful of connections.
        while held.len() < 64 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            held.push(stream);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_frees_the_worker_at_the_deadline() {
    let upstream = hung_upstream().await;
    let config = OpenAiConfig {
        read_timeout_ms: 60_000,
        ..openai_config(format!("http://{upstream}/v1"))
    };
    let server = gateway_with(config, Some(KEY), 1).await;
    let mut client = server.client().await;
    let deadline = Duration::from_secs(1);
    let start = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        client.generate(with_timeout(request("gpt", "hi"), deadline)),
    )
    .await
    .expect("an answer")
    .expect_err("hung");
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
    // Within 1 s of the deadline the only worker is free.
    server.wait_for("gpt", |m| m.busy_workers == 0).await;
    let freed = start.elapsed();
    assert!(freed < deadline + Duration::from_secs(1), "{freed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_frees_the_worker_at_once() {
    let (upstream, _seen) = fake_openai().await;
    // The upstream would hold the call for the model's 60 s.
    let config = OpenAiConfig {
        read_timeout_ms: 60_000,
        ..openai_config(format!("http://{upstream}/v1"))
    };
    let server = gateway_with(config, Some(KEY), 1).await;
    let client = server.client().await;
    for streaming in [false, true] {
        let call = {
            let mut client = client.clone();
            tokio::spawn(async move {
                if streaming {
                    let mut stream = client
                        .generate_stream(request("gpt", "hang"))
                        .await?
                        .into_inner();
                    while stream.message().await?.is_some() {}
                } else {
                    client.generate(request("gpt", "hang")).await?;
                }
                Ok::<(), tonic::Status>(())
            })
        };
        server.wait_for("gpt", |m| m.busy_workers == 1).await;
        let left = Instant::now();
        call.abort();
        // The next call on the one worker is served promptly.
        let mut next = client.clone();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            next.generate(request("gpt", "after")),
        )
        .await
        .expect("an answer")
        .expect("served");
        assert_eq!(answer.into_inner().text, "echo: after");
        let waited = left.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "streaming={streaming}: {waited:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_upstream() {
    // The upstream's port, free for now: the upstream is down.
    let addr = closed_port();
    let config = OpenAiConfig {
        health_interval_ms: 100,
        ..openai_config(format!("http://{addr}/v1"))
    };
    let server = gateway_with(config, Some(KEY), 2).await;
    let mut health = HealthClient::new(server.channel().await);
    wait_for_health(&mut health, "gpt", ServingStatus::NotServing).await;
    assert_eq!(server.model_info("gpt").await.ready_workers, 0);

    // It comes up on that port.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("the port is still free");
    let _upstream = fake_openai_on(listener);
    wait_for_health(&mut health, "gpt", ServingStatus::Serving).await;
    assert_eq!(server.model_info("gpt").await.ready_workers, 2);
    let answer = server
        .client()
        .await
        .generate(request("gpt", "back"))
        .await
        .expect("served");
    assert_eq!(answer.into_inner().text, "echo: back");
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

/// The log of this test binary, captured at debug level (request spans
/// included) so that tests can check what reaches it.
mod log {
    use std::io::Write;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    #[derive(Clone, Default)]
    pub struct Log(Arc<Mutex<Vec<u8>>>);

    impl Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Installs the capture (once per test binary) and returns it.
    pub fn capture() -> Log {
        static LOG: OnceLock<Log> = OnceLock::new();
        LOG.get_or_init(|| {
            let log = Log::default();
            let writer = log.clone();
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            log
        })
        .clone()
    }

    impl Log {
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
        }

        /// The first line that matches, waiting (bounded) for it.
        pub async fn wait_for_line(&self, matches: impl Fn(&str) -> bool) -> String {
            let give_up = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(line) = self.text().lines().find(|l| matches(l)) {
                    return line.to_string();
                }
                assert!(
                    Instant::now() < give_up,
                    "no such log line:\n{}",
                    self.text()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_or_5xx_falls_back_and_a_400_does_not() {
    let (upstream, _seen) = fake_openai().await;
    let config = openai_config(format!("http://{upstream}/v1"));
    let mut remote = ModelConfig::new("remote", BackendKind::Openai);
    remote.fallbacks = vec!["local".into()];
    let factory = OpenAiFactory::new("remote", &config, Some(KEY.to_string()));
    remote.openai = Some(config);
    let local = ModelConfig::new("local", BackendKind::Simulated);
    let gateway = Gateway::builder()
        .model(remote, Arc::new(factory))
        .model(local, Arc::new(SimulatedFactory::new(Default::default())))
        .build()
        .expect("pool");
    let server = TestServer::start_gateway(gateway, ServerConfig::default()).await;
    let mut client = server.client().await;
    for status in [429, 500, 503] {
        let answer = client
            .generate(request("remote", &format!("status {status}")))
            .await
            .expect("served by the fallback")
            .into_inner();
        assert_eq!(answer.model, "local", "HTTP {status}");
        assert_eq!(answer.tried, vec!["remote".to_string()]);
    }
    let error = client
        .generate(request("remote", "status 400"))
        .await
        .expect_err("a refused request is not passed on");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(server.model_info("local").await.backend_calls, 3);
}
