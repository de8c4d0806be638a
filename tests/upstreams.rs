//! The OpenAI backend as tasks, with many upstreams per model, through the
//! real server against fake upstreams on loopback: cancellation and
//! deadlines that reach the upstream, thousands of calls in flight on a
//! handful of threads, balancing by weight, ejection and re-admission,
//! retries before the first byte (and none after), and health that follows
//! the upstreams.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestServer, metric, request, wait_for_health, with_timeout};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use infergate::proto;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// What a fake upstream saw, and how it answers.
#[derive(Default)]
struct State {
    /// Chat completion requests received.
    chats: AtomicUsize,
    /// Probes received.
    probes: AtomicUsize,
    /// Answers whose reader went away before their end.
    closed: AtomicUsize,
    /// Answer every chat request with this status (0: answer normally).
    status: AtomicU16,
}

/// An OpenAI-compatible server on loopback. The last message decides the
/// answer: `slow MS` waits first; `hold` sends a 200 and then a body that
/// never ends (a space every 10 ms, or a token every 10 ms when
/// streaming), counting in `closed` when the gateway hangs up; `die` sends
/// a 200, part of the answer (one token when streaming), and then breaks
/// the connection; anything else is echoed (word by word when streaming).
/// Probes (`GET /v1/models`) get 200 and `Connection: close`, so that no
/// probe connection is kept for calls.
struct Fake {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Fake {
    async fn start() -> Fake {
        // A backlog for a burst of thousands of connections at once (the
        // default 1024 would drop SYNs, and connects would wait 1 s).
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        Fake::on(socket.listen(4096).expect("listen"))
    }

    fn on(listener: tokio::net::TcpListener) -> Fake {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        tokio::spawn({
            let (state, stop) = (state.clone(), stop.clone());
            async move {
                loop {
                    let accepted = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((stream, _)) = accepted else { return };
                    let (state, stop) = (state.clone(), stop.clone());
                    tokio::spawn(async move {
                        let service =
                            hyper::service::service_fn(move |req| answer(req, state.clone()));
                        let connection = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                        // Stopping drops the connection: the socket closes.
                        tokio::select! {
                            _ = connection => {}
                            () = stop.cancelled() => {}
                        }
                    });
                }
            }
        });
        Fake { addr, state, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn chats(&self) -> usize {
        self.state.chats.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection: the port refuses.
    fn stop(&self) {
        self.stop.cancel();
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn json_response(status: u16, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string())).map_err(|never| match never {});
    let mut response = Response::new(body.boxed());
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    response
}

/// A 200 whose body is what `send` puts in the channel.
fn streamed(
    send: impl FnOnce(
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    ) -> tokio::task::JoinHandle<()>,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    send(tx);
    Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed())
}

fn event(value: &Value) -> Result<Frame<Bytes>, std::io::Error> {
    Ok(Frame::data(Bytes::from(format!("data: {value}\n\n"))))
}

fn delta(text: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Body>, std::convert::Infallible> {
    if req.uri().path() == "/v1/models" {
        state.probes.fetch_add(1, Ordering::SeqCst);
        let mut response = json_response(200, &json!({"object": "list", "data": []}));
        response
            .headers_mut()
            .insert("connection", "close".parse().expect("header"));
        return Ok(response);
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.chats.fetch_add(1, Ordering::SeqCst);
    let status = state.status.load(Ordering::SeqCst);
    if status != 0 {
        return Ok(json_response(
            status,
            &json!({"error": {"message": "fake says no"}}),
        ));
    }
    let last = body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let stream = body["stream"] == true;
    let (command, argument) = last.split_once(' ').unwrap_or((&last, ""));
    match command {
        "slow" => tokio::time::sleep(Duration::from_millis(argument.parse().unwrap_or(0))).await,
        "hold" => {
            return Ok(streamed(|tx| {
                tokio::spawn(async move {
                    loop {
                        let piece = if stream {
                            event(&delta("x"))
                        } else {
                            Ok(Frame::data(Bytes::from_static(b" ")))
                        };
                        if tx.send(piece).await.is_err() {
                            state.closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            }));
        }
        "die" => {
            return Ok(streamed(|tx| {
                tokio::spawn(async move {
                    let start = if stream {
                        event(&delta("first "))
                    } else {
                        Ok(Frame::data(Bytes::from_static(b"{\"choices\": [")))
                    };
                    let _ = tx.send(start).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = tx.send(Err(std::io::Error::other("the fake breaks"))).await;
                })
            }));
        }
        _ => {}
    }
    if !stream {
        return Ok(json_response(
            200,
            &json!({
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {last}")}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 3}
            }),
        ));
    }
    let words: Vec<String> = last.split_whitespace().map(|w| format!("{w} ")).collect();
    Ok(streamed(|tx| {
        tokio::spawn(async move {
            for word in &words {
                if tx.send(event(&delta(word))).await.is_err() {
                    state.closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let end = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
            let _ = tx.send(event(&end)).await;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
                .await;
        })
    }))
}

/// A model `name` on these upstreams (`(url, name, weight)`), with extra
/// model-level lines and `[models.openai]` lines.
fn model(
    name: &str,
    upstreams: &[(String, &str, u32)],
    model_extra: &str,
    openai_extra: &str,
) -> String {
    let mut toml = format!(
        "[[models]]\nname = \"{name}\"\nbackend = \"openai\"\n{model_extra}\n[models.openai]\nconnect_timeout_ms = 1000\nread_timeout_ms = 5000\n{openai_extra}\n"
    );
    for (url, upstream, weight) in upstreams {
        toml.push_str(&format!(
            "[[models.openai.upstreams]]\nurl = \"{url}\"\nname = \"{upstream}\"\nweight = {weight}\n"
        ));
    }
    toml
}

/// Polls (bounded) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < give_up, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The stream's items: texts, then the error or the last message.
async fn stream_items(
    client: &mut proto::inference_client::InferenceClient<tonic::transport::Channel>,
    req: proto::GenerateRequest,
) -> (
    Vec<String>,
    Result<proto::GenerateStreamResponse, tonic::Status>,
) {
    let mut stream = match client.generate_stream(req).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut texts = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(message)) if message.finish_reason == 0 => texts.push(message.text),
            Some(Ok(last)) => return (texts, Ok(last)),
            Some(Err(status)) => return (texts, Err(status)),
            None => {
                return (
                    texts,
                    Err(tonic::Status::internal("the stream ended early")),
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_as_tasks_streaming_or_not() {
    let (a, b) = (Fake::start().await, Fake::start().await);
    let toml = model("u-basic", &[(a.url(), "a", 1), (b.url(), "b", 1)], "", "");
    let server = TestServer::start(&toml).await;
    let mut client = server.client().await;
    let answer = client
        .generate(request("u-basic", "hello there"))
        .await
        .expect("generate")
        .into_inner();
    assert_eq!(answer.text, "echo: hello there");
    assert_eq!(answer.usage.expect("usage").completion_tokens, 3);
    let (texts, last) = stream_items(&mut client, request("u-basic", "one two three")).await;
    assert_eq!(texts, ["one ", "two ", "three "]);
    assert_eq!(
        last.expect("ends well").finish_reason,
        proto::FinishReason::Stop as i32
    );
    assert_eq!(a.chats() + b.chats(), 2);
    // No worker threads: the model's calls are tasks.
    assert!(!thread_named("u-basic-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_closes_the_upstream_request() {
    let upstream = Fake::start().await;
    let toml = model("u-leave", &[(upstream.url(), "only", 1)], "", "");
    let server = TestServer::start(&toml).await;
    let client = server.client().await;
    for (n, streaming) in [(1, false), (2, true)] {
        let call = {
            let mut client = client.clone();
            tokio::spawn(async move {
                if streaming {
                    let mut stream = client
                        .generate_stream(request("u-leave", "hold"))
                        .await?
                        .into_inner();
                    while stream.message().await?.is_some() {}
                } else {
                    client.generate(request("u-leave", "hold")).await?;
                }
                Ok::<(), tonic::Status>(())
            })
        };
        eventually("the upstream got the request", || upstream.chats() == n).await;
        call.abort();
        // The upstream sees its answer's reader go within a few of its
        // 10 ms writes, not at the 60 s deadline.
        let left = Instant::now();
        eventually("the upstream saw the connection close", || {
            upstream.state.closed.load(Ordering::SeqCst) == n
        })
        .await;
        assert!(
            left.elapsed() < Duration::from_secs(2),
            "{:?}",
            left.elapsed()
        );
    }
    server.wait_for("u-leave", |m| m.busy_workers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_on_a_generate_call_aborts_the_upstream_request() {
    let upstream = Fake::start().await;
    let toml = model("u-deadline", &[(upstream.url(), "only", 1)], "", "");
    let mut server = TestServer::start(&toml).await;
    server.start_metrics().await;
    let start = Instant::now();
    let error = server
        .client()
        .await
        .generate(with_timeout(
            request("u-deadline", "hold"),
            Duration::from_millis(300),
        ))
        .await
        .expect_err("too slow");
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
    eventually("the upstream saw the connection close", || {
        upstream.state.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let scrape = server.scrape().await;
    let series = "infergate_upstream_requests_total{model=\"u-deadline\",upstream=\"only\",code=\"timeout\"}";
    assert_eq!(metric(&scrape, series), Some(1.0), "{scrape}");
    let inflight = "infergate_upstream_inflight{model=\"u-deadline\",upstream=\"only\"}";
    assert_eq!(metric(&scrape, inflight), Some(0.0));
}

/// Threads of this process (the server runs in it).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

fn thread_named(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_calls_in_flight_need_no_thread_each() {
    const CALLS: usize = 2000;
    let upstream = Fake::start().await;
    let toml = model(
        "u-burst",
        &[(upstream.url(), "only", 1)],
        "workers = 2000\nqueue_capacity = 0",
        "",
    );
    let server = TestServer::start(&toml).await;
    let before = threads();
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut most = 0;
            while !sampling.is_cancelled() {
                most = most.max(threads());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        }
    });
    // A few connections, as a real client fleet would have.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.client().await);
    }
    let start = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            tokio::spawn(async move { client.generate(request("u-burst", "slow 1000")).await })
        })
        .collect();
    for call in calls {
        let answer = call.await.expect("task").expect("served");
        assert_eq!(answer.into_inner().text, "echo: slow 1000");
    }
    let wall = start.elapsed();
    sampling.cancel();
    let most = sampler.await.expect("sampler");
    eprintln!(
        "{CALLS} calls of 1 s: {wall:?} wall; threads {before} before, at most {most} during"
    );
    assert_eq!(upstream.chats(), CALLS);
    // Overlapped: one upstream latency plus the work of 2000 calls on two
    // cores in a debug build (1.2 to 2 s here), far from 2000 s.
    assert!(wall < Duration::from_secs(5), "{wall:?}");
    assert!(most < 40, "{most} threads for {CALLS} calls in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_shared_by_weight() {
    let fakes = [
        Fake::start().await,
        Fake::start().await,
        Fake::start().await,
    ];
    let upstreams = [
        (fakes[0].url(), "w1", 1),
        (fakes[1].url(), "w1b", 1),
        (fakes[2].url(), "w2", 2),
    ];
    let toml = model("u-weights", &upstreams, "workers = 8", "");
    let server = TestServer::start(&toml).await;
    let client = server.client().await;
    const CALLS: usize = 400;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let mut client = client.clone();
        calls.spawn(async move {
            client
                .generate(request("u-weights", &format!("n{i}")))
                .await
        });
        if calls.len() >= 8 {
            calls
                .join_next()
                .await
                .expect("a call")
                .expect("task")
                .expect("served");
        }
    }
    while let Some(done) = calls.join_next().await {
        done.expect("task").expect("served");
    }
    let counts: Vec<usize> = fakes.iter().map(Fake::chats).collect();
    assert_eq!(counts.iter().sum::<usize>(), CALLS);
    // Expected 100, 100, 200: wide margins, the draw is random.
    assert!(counts[2] > counts[0] && counts[2] > counts[1], "{counts:?}");
    assert!((140..=280).contains(&counts[2]), "{counts:?}");
    assert!(counts[0] >= 50 && counts[1] >= 50, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_is_ejected_and_tried_again_after_the_backoff() {
    let (bad, good) = (Fake::start().await, Fake::start().await);
    bad.state.status.store(500, Ordering::SeqCst);
    let toml = model(
        "u-eject",
        &[(bad.url(), "bad", 1), (good.url(), "good", 1)],
        "",
        "eject_after = 3\neject_ms = 1500",
    );
    let mut server = TestServer::start(&toml).await;
    server.start_metrics().await;
    let mut client = server.client().await;
    // A 500 is not retried: the calls that land on "bad" fail, until its
    // third failure ejects it.
    let mut failed = 0;
    while bad.chats() < 3 {
        if client.generate(request("u-eject", "hi")).await.is_err() {
            failed += 1;
        }
        assert!(good.chats() < 200, "bad never got three calls");
    }
    let ejected = Instant::now();
    assert_eq!(failed, 3);
    let scrape = server.scrape().await;
    let up = "infergate_upstream_up{model=\"u-eject\",upstream=\"bad\"}";
    assert_eq!(metric(&scrape, up), Some(0.0), "{scrape}");
    let fives =
        "infergate_upstream_requests_total{model=\"u-eject\",upstream=\"bad\",code=\"500\"}";
    assert_eq!(metric(&scrape, fives), Some(3.0));
    // Ejected: every call goes to "good".
    for _ in 0..20 {
        client
            .generate(request("u-eject", "hi"))
            .await
            .expect("served by good");
    }
    assert_eq!(bad.chats(), 3);
    // It recovers; after the back-off it takes calls again.
    bad.state.status.store(0, Ordering::SeqCst);
    let give_up = Instant::now() + Duration::from_secs(10);
    while bad.chats() == 3 {
        client
            .generate(request("u-eject", "hi"))
            .await
            .expect("served");
        assert!(Instant::now() < give_up, "bad was never tried again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let readmitted = ejected.elapsed();
    assert!(readmitted >= Duration::from_millis(1400), "{readmitted:?}");
    let scrape = server.scrape().await;
    assert_eq!(metric(&scrape, up), Some(1.0), "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_its_answer_is_served_by_another_upstream() {
    let (gone, busy, good) = (
        Fake::start().await,
        Fake::start().await,
        Fake::start().await,
    );
    busy.state.status.store(503, Ordering::SeqCst);
    let toml = model(
        "u-retry",
        &[
            (gone.url(), "gone", 1),
            (busy.url(), "busy", 1),
            (good.url(), "good", 1),
        ],
        "",
        "eject_after = 1000",
    );
    let mut server = TestServer::start(&toml).await;
    server.start_metrics().await;
    // "gone" passed its first probe; now its port refuses connections.
    eventually("the first probe", || {
        gone.state.probes.load(Ordering::SeqCst) > 0
    })
    .await;
    gone.stop();
    let mut client = server.client().await;
    for i in 0..30 {
        let streaming = i % 2 == 1;
        if streaming {
            let (texts, last) = stream_items(&mut client, request("u-retry", "a b")).await;
            last.expect("served by good");
            assert_eq!(texts, ["a ", "b "]);
        } else {
            let answer = client
                .generate(request("u-retry", "hi"))
                .await
                .expect("served by good");
            assert_eq!(answer.into_inner().text, "echo: hi");
        }
    }
    assert_eq!(good.chats(), 30);
    let scrape = server.scrape().await;
    let count = |upstream: &str, code: &str| {
        let series = format!(
            "infergate_upstream_requests_total{{model=\"u-retry\",upstream=\"{upstream}\",code=\"{code}\"}}"
        );
        metric(&scrape, &series).unwrap_or(0.0)
    };
    // Both failures happened, and were served elsewhere.
    assert!(count("gone", "connect_error") >= 1.0, "{scrape}");
    assert!(count("busy", "503") >= 1.0, "{scrape}");
    assert_eq!(count("good", "200"), 30.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_tried_again_once_the_answer_began() {
    let fakes = [Fake::start().await, Fake::start().await];
    let toml = model(
        "u-no-retry",
        &[(fakes[0].url(), "one", 1), (fakes[1].url(), "two", 1)],
        "",
        "",
    );
    let server = TestServer::start(&toml).await;
    let mut client = server.client().await;
    // A call held on one upstream makes the other the less loaded: the
    // next calls go there first, and it breaks them after they began.
    let held = {
        let mut client = client.clone();
        tokio::spawn(async move { client.generate(request("u-no-retry", "hold")).await })
    };
    eventually("the held call reached an upstream", || {
        fakes.iter().map(Fake::chats).sum::<usize>() == 1
    })
    .await;
    let (holding, dying) = if fakes[0].chats() == 1 {
        (&fakes[0], &fakes[1])
    } else {
        (&fakes[1], &fakes[0])
    };
    let (texts, last) = stream_items(&mut client, request("u-no-retry", "die")).await;
    assert_eq!(texts, ["first "], "the token came before the break");
    assert_eq!(last.expect_err("broken").code(), Code::Unavailable);
    let error = client
        .generate(request("u-no-retry", "die"))
        .await
        .expect_err("broken");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert_eq!(dying.chats(), 2);
    assert_eq!(holding.chats(), 1, "a started answer was sent again");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_serves_while_any_upstream_is_up() {
    // Two ports with nothing listening: both upstreams down.
    let ports: Vec<SocketAddr> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr")
        })
        .collect();
    let upstreams: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, addr)| (format!("http://{addr}/v1"), ["a", "b"][i], 1))
        .collect();
    let toml = model("u-health", &upstreams, "", "health_interval_ms = 100");
    let server = TestServer::start(&toml).await;
    let mut health = HealthClient::new(server.channel().await);
    wait_for_health(&mut health, "u-health", ServingStatus::NotServing).await;
    assert_eq!(server.model_info("u-health").await.ready_workers, 0);
    // Refused at once, without waiting for a connect or a read timeout.
    let start = Instant::now();
    let error = server
        .client()
        .await
        .generate(request("u-health", "hi"))
        .await
        .expect_err("nothing is up");
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error.message().contains("no upstream is up"),
        "{}",
        error.message()
    );
    assert!(start.elapsed() < Duration::from_millis(500));
    // "b" comes up on its port.
    let listener = tokio::net::TcpListener::bind(ports[1])
        .await
        .expect("the port is still free");
    let b = Fake::on(listener);
    wait_for_health(&mut health, "u-health", ServingStatus::Serving).await;
    assert!(server.model_info("u-health").await.ready_workers > 0);
    let answer = server
        .client()
        .await
        .generate(request("u-health", "back"))
        .await
        .expect("served by b");
    assert_eq!(answer.into_inner().text, "echo: back");
    assert_eq!(b.chats(), 1);
}
