//! Baselines for the benchmark suite, serving infergate's own API
//! (`infergate.v1.Inference`, same request and response messages) without
//! infergate's pool:
//!
//! - `--mode echo`: a bare tonic server that answers at once; the physical
//!   limit of the stack (tonic + prost + tokio) on this machine. It serves
//!   with infergate's HTTP/2 settings ([`infergate::server::transport`]
//!   at the default `[server]` config).
//! - `--mode naive`: the blocking call made inline inside the async
//!   handler, on a single-threaded runtime: the original first attempt
//!   (blocking calls under asyncio.gather), turned into a server.
//!
//! ```sh
//! cargo run --release --example tonic_echo -- --listen 127.0.0.1:50061 --mode echo
//! cargo run --release --example tonic_echo -- --listen 127.0.0.1:50062 --mode naive \
//!     --latency slow-a=829 --latency slow-b=696 --default-latency-ms 100
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use infergate::config::ServerConfig;
use infergate::proto;
use infergate::proto::inference_server::{Inference, InferenceServer};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    Naive,
}

struct Baseline {
    mode: Mode,
    latency: HashMap<String, Duration>,
    default_latency: Duration,
}

impl Baseline {
    fn answer(&self, request: &proto::GenerateRequest) -> proto::GenerateResponse {
        let received = Instant::now();
        let mut backend = Duration::ZERO;
        if self.mode == Mode::Naive {
            let latency = self
                .latency
                .get(&request.model)
                .copied()
                .unwrap_or(self.default_latency);
            // The bug under study: a blocking call on the async runtime's
            // only thread. Every other call waits behind it.
            std::thread::sleep(latency);
            backend = received.elapsed();
        }
        let text = if request.prompt.is_empty() {
            request
                .messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            request.prompt.clone()
        };
        let words = u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX);
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        proto::GenerateResponse {
            text,
            finish_reason: proto::FinishReason::Stop.into(),
            usage: Some(proto::Usage {
                prompt_tokens: words,
                completion_tokens: words,
                total_tokens: words.saturating_mul(2),
            }),
            timing: Some(proto::Timing {
                queue_wait_us: 0,
                backend_us: micros(backend),
                total_us: micros(received.elapsed()),
                time_to_first_token_us: micros(backend),
            }),
            model: request.model.clone(),
            ..Default::default()
        }
    }
}

type EmptyStream =
    Pin<Box<dyn Stream<Item = Result<proto::GenerateStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Inference for Baseline {
    async fn generate(
        &self,
        request: Request<proto::GenerateRequest>,
    ) -> Result<Response<proto::GenerateResponse>, Status> {
        Ok(Response::new(self.answer(request.get_ref())))
    }

    type GenerateStreamStream = EmptyStream;

    async fn generate_stream(
        &self,
        _request: Request<proto::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        Err(Status::unimplemented("the baseline serves Generate only"))
    }

    type GenerateBatchStream =
        Pin<Box<dyn Stream<Item = Result<proto::GenerateBatchResponse, Status>> + Send>>;

    async fn generate_batch(
        &self,
        _request: Request<proto::GenerateBatchRequest>,
    ) -> Result<Response<Self::GenerateBatchStream>, Status> {
        Err(Status::unimplemented("the baseline serves Generate only"))
    }

    async fn list_models(
        &self,
        _request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        Ok(Response::new(proto::ListModelsResponse::default()))
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: tonic_echo --listen ADDR [--mode echo|naive] [--latency MODEL=MS]... [--default-latency-ms MS]"
    );
    std::process::exit(64);
}

fn main() {
    let mut listen: SocketAddr = "127.0.0.1:50061"
        .parse()
        .unwrap_or_else(|_| usage("bad default"));
    let mut baseline = Baseline {
        mode: Mode::Echo,
        latency: HashMap::new(),
        default_latency: Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--listen" => {
                listen = value
                    .parse()
                    .unwrap_or_else(|_| usage("--listen takes host:port"))
            }
            "--mode" => {
                baseline.mode = match value.as_str() {
                    "echo" => Mode::Echo,
                    "naive" => Mode::Naive,
                    _ => usage("--mode is echo or naive"),
                }
            }
            "--latency" => {
                let (model, ms) = value
                    .split_once('=')
                    .unwrap_or_else(|| usage("--latency takes MODEL=MS"));
                let ms: u64 = ms
                    .parse()
                    .unwrap_or_else(|_| usage("--latency takes MODEL=MS"));
                baseline
                    .latency
                    .insert(model.to_string(), Duration::from_millis(ms));
            }
            "--default-latency-ms" => {
                baseline.default_latency = Duration::from_millis(
                    value
                        .parse()
                        .unwrap_or_else(|_| usage("--default-latency-ms takes a number")),
                );
            }
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    // The naive design runs on one thread, like the asyncio event loop of
    // the original attempt; the echo baseline uses tokio's default runtime,
    // as infergate does.
    let runtime = match baseline.mode {
        Mode::Naive => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Mode::Echo => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = runtime.unwrap_or_else(|e| usage(&format!("cannot start a runtime: {e}")));
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        // infergate's own transport settings (streams per connection,
        // connection window, keepalive), at the defaults the suite's
        // gateways run with: the comparison measures the pool, not
        // different HTTP/2 settings.
        infergate::server::transport(&ServerConfig::default())
            .add_service(InferenceServer::new(baseline))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(std::io::Error::other)
    });
    if let Err(e) = served {
        eprintln!("tonic_echo: {e}");
        std::process::exit(1);
    }
}
