//! Drives the load: closed loop (`-c` callers, each calling again as soon
//! as its call ends) or open loop (`--rps`: calls start on schedule, however
//! many are still running), over `--connections` HTTP/2 connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use crate::bench::data::Call;
use crate::bench::progress::Progress;
use crate::proto;
use crate::proto::inference_client::InferenceClient;

/// Most calls an open-loop run keeps in flight before it stops scheduling
/// (a server that stops answering must not make the generator eat the
/// machine).
const MAX_OPEN_LOOP_IN_FLIGHT: usize = 200_000;

/// One finished call.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the call started (open loop: was scheduled), from the run's
    /// start.
    pub start: Duration,
    /// Start (scheduled start) to the end of the answer.
    pub latency: Duration,
    /// The gRPC status.
    pub code: Code,
    /// The status message, for failed calls.
    pub error: Option<String>,
    /// Server-reported time in the backend, µs (0 if not reported).
    pub backend_us: u64,
    /// Server-reported queue wait, µs (0 if not reported).
    pub queue_wait_us: u64,
}

/// Why the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// All `-n` requests were sent and answered.
    Normal,
    /// The `-z` duration ran out.
    Timeout,
    /// Interrupted (Ctrl-C).
    Cancel,
}

impl EndReason {
    /// ghz's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Normal => "normal",
            EndReason::Timeout => "timeout",
            EndReason::Cancel => "cancel",
        }
    }
}

/// What to run.
pub struct Plan {
    pub call: Call,
    pub requests: Arc<Vec<proto::GenerateRequest>>,
    pub metadata: MetadataMap,
    pub channels: Vec<Channel>,
    pub concurrency: usize,
    pub total: u64,
    pub duration: Option<Duration>,
    pub rps: Option<f64>,
    pub timeout: Duration,
}

/// The outcome of a run.
pub struct Outcome {
    pub samples: Vec<Sample>,
    /// From the first call's start to the last call's end.
    pub total: Duration,
    pub end_reason: EndReason,
    pub started_at: SystemTime,
}

/// Runs the plan to its end (count, duration, or Ctrl-C).
pub async fn run(plan: Arc<Plan>, progress: Progress) -> Outcome {
    let stop = CancellationToken::new();
    let interrupted = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                result = tokio::signal::ctrl_c() => result.is_ok(),
                () = stop.cancelled() => false,
            }
        }
    });
    let started_at = SystemTime::now();
    let start = Instant::now();
    let samples = match plan.rps {
        Some(rps) => open_loop(plan.clone(), rps, start, &stop, &progress).await,
        None => closed_loop(plan.clone(), start, &stop, &progress).await,
    };
    let total = start.elapsed();
    let was_interrupted = stop.is_cancelled();
    stop.cancel();
    let interrupted = interrupted.await.unwrap_or(false) || was_interrupted;
    progress.finish();
    let end_reason = if interrupted {
        EndReason::Cancel
    } else if plan.duration.is_some() {
        EndReason::Timeout
    } else {
        EndReason::Normal
    };
    Outcome {
        samples,
        total,
        end_reason,
        started_at,
    }
}

/// Whether another call may start: within the count, the duration, and
/// not interrupted.
fn may_start(
    plan: &Plan,
    issued: &AtomicU64,
    start: Instant,
    stop: &CancellationToken,
) -> Option<u64> {
    if stop.is_cancelled() {
        return None;
    }
    if let Some(duration) = plan.duration {
        if start.elapsed() >= duration {
            return None;
        }
        return Some(issued.fetch_add(1, Ordering::Relaxed));
    }
    let i = issued.fetch_add(1, Ordering::Relaxed);
    (i < plan.total).then_some(i)
}

async fn closed_loop(
    plan: Arc<Plan>,
    start: Instant,
    stop: &CancellationToken,
    progress: &Progress,
) -> Vec<Sample> {
    let issued = Arc::new(AtomicU64::new(0));
    let mut callers = JoinSet::new();
    for caller in 0..plan.concurrency.max(1) {
        let plan = plan.clone();
        let issued = issued.clone();
        let stop = stop.clone();
        let progress = progress.clone();
        callers.spawn(async move {
            let mut client = client(&plan, caller);
            let mut samples = Vec::new();
            while let Some(i) = may_start(&plan, &issued, start, &stop) {
                let began = Instant::now();
                let sample = call_once(&mut client, &plan, i, began - start, began).await;
                progress.inc();
                samples.push(sample);
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = callers.join_next().await {
        if let Ok(mut part) = done {
            samples.append(&mut part);
        }
    }
    samples.sort_by_key(|s| s.start);
    samples
}

/// The open loop. Calls are started by a scheduler thread that sleeps with
/// the OS timer's microsecond precision (tokio's timer ticks in whole
/// milliseconds, which would add up to 1 ms to every latency measured from
/// the schedule).
async fn open_loop(
    plan: Arc<Plan>,
    rps: f64,
    start: Instant,
    stop: &CancellationToken,
    progress: &Progress,
) -> Vec<Sample> {
    let period = Duration::from_secs_f64(1.0 / rps.max(1e-3));
    let runtime = tokio::runtime::Handle::current();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<JoinHandle<Sample>>();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let scheduler = {
        let plan = plan.clone();
        let stop = stop.clone();
        let progress = progress.clone();
        std::thread::Builder::new()
            .name("bench-scheduler".into())
            .spawn(move || {
                let issued = AtomicU64::new(0);
                loop {
                    let next = issued.load(Ordering::Relaxed);
                    let scheduled = start + period.mul_f64(next as f64);
                    if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let Some(i) = may_start(&plan, &issued, start, &stop) else {
                        return;
                    };
                    if in_flight.load(Ordering::Relaxed) >= MAX_OPEN_LOOP_IN_FLIGHT {
                        tracing::warn!("{MAX_OPEN_LOOP_IN_FLIGHT} calls in flight: the server is not keeping up; stopping");
                        return;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let plan = plan.clone();
                    let progress = progress.clone();
                    let in_flight = in_flight.clone();
                    let call = runtime.spawn(async move {
                        let mut client = client(&plan, usize::try_from(i).unwrap_or(0));
                        let sample = call_once(&mut client, &plan, i, scheduled - start, scheduled).await;
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                        progress.inc();
                        sample
                    });
                    if tx.send(call).is_err() {
                        return;
                    }
                }
            })
    };
    let mut samples = Vec::new();
    while let Some(call) = rx.recv().await {
        if let Ok(sample) = call.await {
            samples.push(sample);
        }
    }
    if let Ok(scheduler) = scheduler {
        // It has returned: the channel closed when it dropped its sender.
        let _ = scheduler.join();
    }
    samples.sort_by_key(|s| s.start);
    samples
}

fn client(plan: &Plan, n: usize) -> InferenceClient<Channel> {
    let channel = plan.channels[n % plan.channels.len()].clone();
    InferenceClient::new(channel).max_decoding_message_size(usize::MAX)
}

/// Makes call number `i`; latency counts from `began`.
async fn call_once(
    client: &mut InferenceClient<Channel>,
    plan: &Plan,
    i: u64,
    offset: Duration,
    began: Instant,
) -> Sample {
    let message = &plan.requests[usize::try_from(i).unwrap_or(0) % plan.requests.len()];
    let result = match plan.call {
        Call::Generate => client
            .generate(request(plan, message.clone()))
            .await
            .map(|r| r.into_inner().timing),
        Call::GenerateStream => stream(client, request(plan, message.clone())).await,
        Call::ListModels => client
            .list_models(request(plan, proto::ListModelsRequest {}))
            .await
            .map(|_| None),
    };
    let latency = began.elapsed();
    match result {
        Ok(timing) => {
            let timing = timing.unwrap_or_default();
            Sample {
                start: offset,
                latency,
                code: Code::Ok,
                error: None,
                backend_us: timing.backend_us,
                queue_wait_us: timing.queue_wait_us,
            }
        }
        Err(status) => Sample {
            start: offset,
            latency,
            code: status.code(),
            error: Some(without_request_id(status.message()).to_string()),
            backend_us: 0,
            queue_wait_us: 0,
        },
    }
}

/// Reads a stream to its end; its final message carries the timing.
async fn stream(
    client: &mut InferenceClient<Channel>,
    request: tonic::Request<proto::GenerateRequest>,
) -> Result<Option<proto::Timing>, tonic::Status> {
    let mut stream = client.generate_stream(request).await?.into_inner();
    let mut timing = None;
    while let Some(message) = stream.next().await {
        let message = message?;
        if message.timing.is_some() {
            timing = message.timing;
        }
    }
    Ok(timing)
}

fn request<T>(plan: &Plan, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = plan.metadata.clone();
    request.set_timeout(plan.timeout);
    request
}

/// A status message without the gateway's trailing ` [request ID]`, so
/// that errors group by what happened, as ghz groups them.
fn without_request_id(message: &str) -> &str {
    match message.rfind(" [request ") {
        Some(i) if message.ends_with(']') => &message[..i],
        _ => message,
    }
}
