//! The floor of a thread hop: bare tonic's echo server (as
//! `tonic_echo --mode echo`, same transport settings through
//! [`infergate::server::transport`]), except that each call's request is
//! handed to a pool of OS threads, which builds the answer and sends it
//! back on a tokio oneshot. No admission, no metrics, no spans, no
//! deadlines: the least a design that runs calls on threads must pay.
//!
//! `--hop` picks the hand-off:
//! - `none`: no hop, the answer is built in the handler (bare tonic);
//! - `condvar`: a `Mutex<VecDeque>` and a `Condvar`, `notify_one` per call
//!   to workers that sleep on a futex as soon as the queue is empty;
//! - `crossbeam`: a crossbeam-channel MPMC channel (a short spin with
//!   backoff, then a futex park);
//! - `spin`: one worker that never sleeps, polling a crossbeam channel;
//! - `blocking`: `tokio::task::spawn_blocking` (tokio's own thread pool);
//! - `hold`: no hop; the handler sleeps `--hold-ms` on a tokio timer, then
//!   answers: what a waiting call costs tonic itself in memory (bench S5's
//!   floor).
//!
//! ```sh
//! cargo run --release --example hop_echo -- --listen 127.0.0.1:50063 --hop condvar --workers 2
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use infergate::config::ServerConfig;
use infergate::proto;
use infergate::proto::inference_server::{Inference, InferenceServer};
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Calls holding in `--hop hold`, written to stderr as `held N` when it
/// changes (bench/waiting.py reads it).
static HELD: AtomicUsize = AtomicUsize::new(0);

/// A call handed to a worker: the request and where its answer goes.
struct Job {
    request: proto::GenerateRequest,
    reply: oneshot::Sender<proto::GenerateResponse>,
}

/// The hand-off under study.
#[derive(Clone)]
enum Hop {
    None,
    Condvar(Arc<CondvarQueue>),
    Crossbeam(crossbeam_channel::Sender<Job>),
    Blocking,
    Hold(Duration),
}

/// The plainest queue of parked threads.
struct CondvarQueue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

impl CondvarQueue {
    fn push(&self, job: Job) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(job);
        self.ready.notify_one();
    }

    fn pop(&self) -> Job {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = jobs.pop_front() {
                return job;
            }
            jobs = self
                .ready
                .wait(jobs)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The answer bare tonic gives: the prompt back, with usage.
fn answer(request: &proto::GenerateRequest) -> proto::GenerateResponse {
    let text = request.prompt.clone();
    let words = u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX);
    proto::GenerateResponse {
        text,
        finish_reason: proto::FinishReason::Stop.into(),
        usage: Some(proto::Usage {
            prompt_tokens: words,
            completion_tokens: words,
            total_tokens: words.saturating_mul(2),
        }),
        timing: Some(proto::Timing::default()),
        model: request.model.clone(),
        ..Default::default()
    }
}

fn serve(job: Job) {
    let response = answer(&job.request);
    drop(job.request);
    let _ = job.reply.send(response);
}

struct Echo {
    hop: Hop,
}

type Unimplemented<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Inference for Echo {
    async fn generate(
        &self,
        request: Request<proto::GenerateRequest>,
    ) -> Result<Response<proto::GenerateResponse>, Status> {
        let request = request.into_inner();
        let (reply, rx) = oneshot::channel();
        let job = Job { request, reply };
        match &self.hop {
            // bench/waiting.py warms the server up with model "warm-up".
            Hop::Hold(hold) if job.request.model != "warm-up" => {
                HELD.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(*hold).await;
                HELD.fetch_sub(1, Ordering::Relaxed);
                return Ok(Response::new(answer(&job.request)));
            }
            Hop::None | Hop::Hold(_) => return Ok(Response::new(answer(&job.request))),
            Hop::Condvar(queue) => queue.push(job),
            Hop::Crossbeam(tx) => {
                if tx.send(job).is_err() {
                    return Err(Status::unavailable("workers gone"));
                }
            }
            Hop::Blocking => {
                tokio::task::spawn_blocking(move || serve(job));
            }
        }
        rx.await
            .map(Response::new)
            .map_err(|_| Status::internal("worker dropped the call"))
    }

    type GenerateStreamStream = Unimplemented<proto::GenerateStreamResponse>;

    async fn generate_stream(
        &self,
        _request: Request<proto::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        Err(Status::unimplemented("hop_echo serves Generate only"))
    }

    type GenerateBatchStream = Unimplemented<proto::GenerateBatchResponse>;

    async fn generate_batch(
        &self,
        _request: Request<proto::GenerateBatchRequest>,
    ) -> Result<Response<Self::GenerateBatchStream>, Status> {
        Err(Status::unimplemented("hop_echo serves Generate only"))
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
        "{problem}\nusage: hop_echo --listen ADDR [--hop none|condvar|crossbeam|spin|blocking|hold] [--workers N] [--hold-ms MS] [--streams MAX_CONCURRENT_STREAMS]"
    );
    std::process::exit(64);
}

/// Starts the workers of `hop` and returns the handlers' side.
fn start(hop: &str, workers: usize, hold_ms: u64) -> Hop {
    match hop {
        "none" => Hop::None,
        "hold" => {
            std::thread::spawn(|| {
                let mut last = 0;
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    let held = HELD.load(Ordering::Relaxed);
                    if held != last {
                        // SAFETY: mallinfo2 only reads glibc's counters.
                        let heap = unsafe { libc::mallinfo2() };
                        eprintln!(
                            "held {held} heap_in_use {} heap_free {} mmapped {}",
                            heap.uordblks, heap.fordblks, heap.hblkhd
                        );
                        last = held;
                    }
                }
            });
            Hop::Hold(Duration::from_millis(hold_ms))
        }
        "blocking" => Hop::Blocking,
        "condvar" => {
            let queue = Arc::new(CondvarQueue {
                jobs: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
            });
            for _ in 0..workers {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    loop {
                        serve(queue.pop());
                    }
                });
            }
            Hop::Condvar(queue)
        }
        "crossbeam" => {
            let (tx, rx) = crossbeam_channel::unbounded::<Job>();
            for _ in 0..workers {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    while let Ok(job) = rx.recv() {
                        serve(job);
                    }
                });
            }
            Hop::Crossbeam(tx)
        }
        "spin" => {
            let (tx, rx) = crossbeam_channel::unbounded::<Job>();
            std::thread::spawn(move || {
                loop {
                    match rx.try_recv() {
                        Ok(job) => serve(job),
                        Err(crossbeam_channel::TryRecvError::Empty) => std::hint::spin_loop(),
                        Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                    }
                }
            });
            Hop::Crossbeam(tx)
        }
        _ => usage("--hop is none, condvar, crossbeam, spin, blocking or hold"),
    }
}

fn main() {
    let mut listen: SocketAddr = "127.0.0.1:50063"
        .parse()
        .unwrap_or_else(|_| usage("bad default"));
    let mut hop = "condvar".to_string();
    let mut workers = 2usize;
    let mut hold_ms = 10_000u64;
    let mut config = ServerConfig::default();
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
            "--hop" => hop = value,
            "--workers" => {
                workers = value
                    .parse()
                    .unwrap_or_else(|_| usage("--workers takes a number"))
            }
            "--streams" => {
                config.max_concurrent_streams = value
                    .parse()
                    .unwrap_or_else(|_| usage("--streams takes a number"))
            }
            "--hold-ms" => {
                hold_ms = value
                    .parse()
                    .unwrap_or_else(|_| usage("--hold-ms takes a number"))
            }
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage(&format!("cannot start a runtime: {e}")));
    let hop = start(&hop, workers, hold_ms);
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        infergate::server::transport(&config)
            .add_service(InferenceServer::new(Echo { hop }))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(std::io::Error::other)
    });
    if let Err(e) = served {
        eprintln!("hop_echo: {e}");
        std::process::exit(1);
    }
}
