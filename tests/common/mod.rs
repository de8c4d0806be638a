//! Test helpers: a real server on 127.0.0.1:0, started through the library,
//! with tonic clients, and a controllable backend that reports what it did.
#![allow(dead_code)] // each test binary uses a different part of this file

pub mod binary;
pub mod openai;
pub mod raw;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use infergate::backend::{
    Backend, BackendError, BackendFactory, CallContext, Completion, FinishReason, GenerateParams,
};
use infergate::config::{BackendKind, Config, ModelConfig, ServerConfig};
use infergate::gateway::Gateway;
use infergate::proto;
use infergate::proto::inference_client::InferenceClient;
use infergate::server::{self, ServeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A gateway serving on a loopback port, stopped on `shutdown` or drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    /// The `/metrics` address, once `start_metrics` ran.
    pub metrics_addr: Option<SocketAddr>,
    metrics_stop: CancellationToken,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// Starts the models of a TOML configuration.
    pub async fn start(toml: &str) -> TestServer {
        let config = Config::from_toml(toml, "test").expect("test config is valid");
        let gateway = Gateway::from_config(&config).expect("pools start");
        TestServer::start_gateway(gateway, config.server).await
    }

    /// Serves an already built gateway.
    pub async fn start_gateway(gateway: Gateway, server_config: ServerConfig) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let gateway = Arc::new(gateway);
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn({
            let gateway = gateway.clone();
            async move {
                server::run(listener, &server_config, gateway, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        TestServer {
            addr,
            gateway,
            metrics_addr: None,
            metrics_stop: CancellationToken::new(),
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Starts the models of a TOML configuration, with `/metrics` served on
    /// a loopback port.
    pub async fn start_with_metrics(toml: &str) -> TestServer {
        let mut server = TestServer::start(toml).await;
        server.start_metrics().await;
        server
    }

    /// Serves `/metrics` for this server's gateway on a loopback port.
    pub async fn start_metrics(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        self.metrics_addr = Some(listener.local_addr().expect("local addr"));
        tokio::spawn(infergate::metrics::http::serve(
            listener,
            self.gateway.clone(),
            self.metrics_stop.clone(),
        ));
    }

    /// One scrape of `/metrics`.
    pub async fn scrape(&self) -> String {
        let addr = self.metrics_addr.expect("start_with_metrics was used");
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the test server")
    }

    pub async fn client(&self) -> InferenceClient<Channel> {
        InferenceClient::new(self.channel().await)
    }

    /// Signals shutdown; returns a handle on the server's end.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), ServeError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.handle.take().expect("server running")
    }

    /// Shuts down and waits for the server to return.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.begin_shutdown().await.expect("server task")
    }

    /// The live stats of a model, through ListModels.
    pub async fn model_info(&self, name: &str) -> proto::ModelInfo {
        model_info(&mut self.client().await, name).await
    }

    /// Waits (bounded) until ListModels shows the model in the given state.
    pub async fn wait_for(&self, name: &str, check: impl Fn(&proto::ModelInfo) -> bool) {
        wait_for_model(&mut self.client().await, name, check).await;
    }
}

/// The live stats of a model, through ListModels on `client`.
pub async fn model_info(client: &mut InferenceClient<Channel>, name: &str) -> proto::ModelInfo {
    let models = client
        .list_models(proto::ListModelsRequest {})
        .await
        .expect("ListModels")
        .into_inner()
        .models;
    models
        .into_iter()
        .find(|m| m.name == name)
        .expect("model is listed")
}

/// Waits (bounded) until ListModels shows the model in the given state:
/// the queue is observable only from outside, so this polls it.
pub async fn wait_for_model(
    client: &mut InferenceClient<Channel>,
    name: &str,
    check: impl Fn(&proto::ModelInfo) -> bool,
) {
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let info = model_info(client, name).await;
        if check(&info) {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "model never reached the state: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A model (`timeout_ms = max_timeout_ms = 300`, a 5 s backend) whose cap
/// ends a call whose client asked for an hour: DEADLINE_EXCEEDED naming the
/// cap, well before the backend would have finished.
pub fn capped_model(name: &str) -> String {
    simulated(name, 5_000, 1, 4).replace(
        "queue_capacity = 4",
        "queue_capacity = 4\ntimeout_ms = 300\nmax_timeout_ms = 300",
    )
}

/// Calls a [`capped_model`] with an hour's grpc-timeout and checks the cap
/// ended the call.
pub async fn assert_capped(client: &mut InferenceClient<Channel>, model: &str) {
    let started = Instant::now();
    let status = client
        .generate(with_timeout(request(model, "x"), Duration::from_secs(3600)))
        .await
        .expect_err("the cap ends the call");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("max_timeout_ms"),
        "{}",
        status.message()
    );
    // The 5 s backend call was cut at the cap, not run to its end.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.metrics_stop.cancel();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A TOML model entry for the simulated backend.
pub fn simulated(name: &str, latency_ms: u64, workers: usize, queue_capacity: usize) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\nbackend = \"simulated\"\nworkers = {workers}\nqueue_capacity = {queue_capacity}\n[models.simulated]\nlatency_ms = {latency_ms}\n"
    )
}

/// A prompt request.
pub fn request(model: &str, prompt: &str) -> proto::GenerateRequest {
    proto::GenerateRequest {
        model: model.into(),
        prompt: prompt.into(),
        ..Default::default()
    }
}

/// Starts a Generate call in the background.
pub fn spawn_generate(
    client: &InferenceClient<Channel>,
    model: &str,
    prompt: &str,
) -> GenerateCall {
    let mut client = client.clone();
    let req = request(model, prompt);
    tokio::spawn(async move { client.generate(req).await })
}

/// On a one-worker probe model: starts a call that holds the worker, waits
/// until it runs, then starts a second that waits in the queue, and waits
/// until it is queued. Returns both calls.
pub async fn one_running_one_queued(
    server: &TestServer,
    client: &InferenceClient<Channel>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    running: &str,
    queued: &str,
) -> (GenerateCall, GenerateCall) {
    let running_call = spawn_generate(client, "probe", running);
    assert_eq!(next_event(events).await, Event::Started(running.into()));
    let queued_call = spawn_generate(client, "probe", queued);
    server.wait_for("probe", |m| m.queued == 1).await;
    (running_call, queued_call)
}

/// A Generate call started in the background.
pub type GenerateCall = JoinHandle<Result<tonic::Response<proto::GenerateResponse>, tonic::Status>>;

/// A request with a grpc-timeout.
pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// What the probe backend reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A call started, with its prompt.
    Started(String),
    /// A call ended; `cancelled` when it stopped because of cancellation.
    Ended { prompt: String, cancelled: bool },
}

/// A backend driven by its prompt: `hold N` waits N ms (or until
/// cancelled), `panic` panics, anything else answers at once. It reports
/// every start and end, and counts the backends made.
pub struct ProbeFactory {
    events: mpsc::UnboundedSender<Event>,
    pub created: Arc<AtomicUsize>,
}

impl ProbeFactory {
    pub fn new() -> (Arc<ProbeFactory>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(ProbeFactory {
                events: tx,
                created: Arc::new(AtomicUsize::new(0)),
            }),
            rx,
        )
    }
}

impl BackendFactory for ProbeFactory {
    fn kind(&self) -> &str {
        "probe"
    }

    fn create(&self, _worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        self.created.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Probe {
            events: self.events.clone(),
        }))
    }
}

struct Probe {
    events: mpsc::UnboundedSender<Event>,
}

impl Backend for Probe {
    fn generate(
        &mut self,
        params: &GenerateParams,
        ctx: &mut CallContext<'_>,
    ) -> Result<Completion, BackendError> {
        let prompt = params.input.text();
        let _ = self.events.send(Event::Started(prompt.clone()));
        let mut cancelled = false;
        if prompt == "panic" {
            panic!("probe backend asked to panic");
        }
        if let Some(ms) = prompt.strip_prefix("hold ") {
            let ms: u64 = ms.parse().expect("hold takes milliseconds");
            cancelled = ctx.sleep(Duration::from_millis(ms)).is_err();
        }
        if !cancelled {
            cancelled = ctx.emit(&prompt).is_err();
        }
        let _ = self.events.send(Event::Ended { prompt, cancelled });
        if cancelled {
            return Err(BackendError::cancelled());
        }
        Ok(Completion {
            finish_reason: FinishReason::Stop,
            prompt_tokens: 1,
            completion_tokens: 1,
        })
    }
}

/// Serves one probe model named "probe".
pub async fn probe_server(
    workers: usize,
    queue_capacity: usize,
    server_config: ServerConfig,
) -> (
    TestServer,
    Arc<ProbeFactory>,
    mpsc::UnboundedReceiver<Event>,
) {
    let (factory, events) = ProbeFactory::new();
    let mut model = ModelConfig::new("probe", BackendKind::Simulated);
    model.workers = workers;
    model.queue_capacity = queue_capacity;
    let gateway = Gateway::builder()
        .model(model, factory.clone())
        .build()
        .expect("pool starts");
    (
        TestServer::start_gateway(gateway, server_config).await,
        factory,
        events,
    )
}

/// The next probe event, bounded in time.
pub async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("the backend is alive")
}

/// A plain HTTP/1.1 GET on loopback: status and body.
pub async fn http_get(addr: SocketAddr, path_and_query: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of one series in a scrape, e.g.
/// `infergate_workers{model="a"}`.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// A TOML model entry for a process backend running the Python probe
/// worker (`tests/python/probe_worker.py`).
pub fn python_probe(name: &str, workers: usize, extra: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/probe_worker.py");
    format!(
        "[[models]]\nname = \"{name}\"\nbackend = \"process\"\nworkers = {workers}\nqueue_capacity = 64\n{extra}\n[models.process]\ncommand = [\"python3\", \"{script}\"]\ncancel_grace_ms = 200\n"
    )
}

/// The text of a Generate call, or its status.
pub async fn generate_text(
    client: &InferenceClient<Channel>,
    model: &str,
    prompt: &str,
) -> Result<String, tonic::Status> {
    let mut client = client.clone();
    client
        .generate(request(model, prompt))
        .await
        .map(|r| r.into_inner().text)
}

/// Polls grpc.health.v1 Check (bounded) until the service has `status`.
pub async fn wait_for_health(
    health: &mut tonic_health::pb::health_client::HealthClient<Channel>,
    service: &str,
    status: tonic_health::pb::health_check_response::ServingStatus,
) {
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let now = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        if now == status as i32 {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{service} never became {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
