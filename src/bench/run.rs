//! Drives the load, as ghz does: `-c` workers, each with one call in flight
//! at a time, sharing `--connections` HTTP/2 connections round-robin;
//! `--rps` paces the calls in all (so `-c` caps the rate: a late call
//! starts as soon as a worker is free). `--async` with `--rps` is the open
//! loop instead: calls start on schedule however many are still running.
//!
//! The run stops issuing calls after `-n` calls, when `-z` / `-x` runs out,
//! or on Ctrl-C; the calls then in flight end as `--duration-stop` says
//! ([`crate::bench::stop`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use crate::bench::call::Call;
use crate::bench::calldata::CallData;
use crate::bench::data::Messages;
use crate::bench::metadata::Metadata;
use crate::bench::progress::Progress;
use crate::bench::stop::DurationStop;
use crate::proto;
use crate::proto::inference_client::InferenceClient;

/// Most calls an open-loop run keeps in flight before it stops scheduling
/// (a server that stops answering must not make the generator eat the
/// machine).
const MAX_OPEN_LOOP_IN_FLIGHT: usize = 200_000;
/// Longest the open loop's scheduler sleeps before it looks at the stop
/// signal again.
const SCHEDULER_NAP: Duration = Duration::from_millis(20);

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
    /// The `-z` or `-x` duration ran out.
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
    /// The method.
    pub call: Call,
    /// The request messages.
    pub messages: Messages,
    /// The request metadata.
    pub metadata: Metadata,
    /// The connections, shared round-robin by the workers.
    pub channels: Vec<Channel>,
    /// Workers (`-c`).
    pub concurrency: usize,
    /// Calls in all; `None`: until the deadline.
    pub total: Option<u64>,
    /// When to stop issuing calls (`-z` or `-x`), from the start.
    pub deadline: Option<Duration>,
    /// What happens to the calls in flight at the end (`--duration-stop`).
    pub duration_stop: DurationStop,
    /// Calls per second in all.
    pub rps: Option<f64>,
    /// `--async`: the open loop.
    pub open_loop: bool,
    /// Each call's deadline; `None` for none.
    pub timeout: Option<Duration>,
    /// Each worker's `{{.WorkerID}}`.
    pub worker_ids: Vec<String>,
}

/// The outcome of a run.
pub struct Outcome {
    /// The calls reported, by start.
    pub samples: Vec<Sample>,
    /// From the start to the end of the last call reported.
    pub total: Duration,
    /// Why the run ended.
    pub end_reason: EndReason,
    /// When the run started.
    pub started_at: SystemTime,
}

/// Runs the plan to its end (count, duration, or Ctrl-C).
pub async fn run(plan: Arc<Plan>, progress: Progress) -> Outcome {
    let stop = CancellationToken::new();
    let done = CancellationToken::new();
    let watcher = tokio::spawn(watch(plan.deadline, stop.clone(), done.clone()));
    let started_at = SystemTime::now();
    let start = Instant::now();
    let samples = match plan.rps {
        Some(rps) if plan.open_loop => open_loop(plan.clone(), rps, start, &stop, &progress).await,
        _ => workers(plan.clone(), start, &stop, &progress).await,
    };
    let total = start.elapsed();
    done.cancel();
    let end_reason = match watcher.await.unwrap_or(EndReason::Normal) {
        // The workers saw the deadline pass before its timer fired.
        EndReason::Normal if plan.deadline.is_some_and(|d| total >= d) => EndReason::Timeout,
        reason => reason,
    };
    progress.finish();
    Outcome {
        samples,
        total,
        end_reason,
        started_at,
    }
}

/// Fires `stop` when the deadline passes or on Ctrl-C; says why the run
/// ended once `done` fires.
async fn watch(
    deadline: Option<Duration>,
    stop: CancellationToken,
    done: CancellationToken,
) -> EndReason {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let timeout = async {
        match deadline {
            Some(deadline) => tokio::time::sleep(deadline).await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        () = done.cancelled() => return EndReason::Normal,
        () = interrupt => EndReason::Cancel,
        () = timeout => EndReason::Timeout,
    };
    stop.cancel();
    reason
}

/// Whether another call may start: within the count, the deadline, and
/// not stopped; its number if so.
fn may_start(
    plan: &Plan,
    issued: &AtomicU64,
    start: Instant,
    stop: &CancellationToken,
) -> Option<u64> {
    if stop.is_cancelled() || plan.deadline.is_some_and(|d| start.elapsed() >= d) {
        return None;
    }
    let i = issued.fetch_add(1, Ordering::Relaxed);
    match plan.total {
        Some(total) if i >= total => None,
        _ => Some(i),
    }
}

/// `-c` workers, one call at a time each, paced by `--rps` if given.
async fn workers(
    plan: Arc<Plan>,
    start: Instant,
    stop: &CancellationToken,
    progress: &Progress,
) -> Vec<Sample> {
    let period = plan.rps.map(|rps| Duration::from_secs_f64(1.0 / rps));
    let issued = Arc::new(AtomicU64::new(0));
    let mut callers = JoinSet::new();
    for worker in 0..plan.concurrency.max(1) {
        let plan = plan.clone();
        let issued = issued.clone();
        // A worker's own child token: waiting on it per call contends with
        // no other worker.
        let stop = stop.child_token();
        let progress = progress.clone();
        callers.spawn(async move {
            let mut client = client(&plan, worker);
            let mut samples = Vec::new();
            while let Some(i) = may_start(&plan, &issued, start, &stop) {
                if let Some(period) = period {
                    // Call i is due at i periods; late, it goes at once.
                    let due = period.mul_f64(i as f64);
                    if plan.deadline.is_some_and(|d| due >= d) {
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until((start + due).into()) => {}
                        () = stop.cancelled() => break,
                    }
                }
                let began = Instant::now();
                let offset = began - start;
                let call = call_once(&mut client, &plan, worker, i, offset, began);
                let sample = plan.duration_stop.finish(&stop, call, offset, began).await;
                progress.inc();
                samples.extend(sample);
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

/// The open loop (`--async --rps`). Calls are started by a scheduler thread
/// that sleeps with the OS timer's microsecond precision (tokio's timer
/// ticks in whole milliseconds, which would add up to 1 ms to every latency
/// measured from the schedule).
async fn open_loop(
    plan: Arc<Plan>,
    rps: f64,
    start: Instant,
    stop: &CancellationToken,
    progress: &Progress,
) -> Vec<Sample> {
    let period = Duration::from_secs_f64(1.0 / rps.max(1e-3));
    let runtime = tokio::runtime::Handle::current();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<JoinHandle<Option<Sample>>>();
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
                    while let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                        if stop.is_cancelled() {
                            return;
                        }
                        std::thread::sleep(wait.min(SCHEDULER_NAP));
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
                    let stop = stop.clone();
                    let call = runtime.spawn(async move {
                        let worker = usize::try_from(i).unwrap_or(0) % plan.concurrency.max(1);
                        let mut client = client(&plan, worker);
                        let offset = scheduled - start;
                        let call = call_once(&mut client, &plan, worker, i, offset, scheduled);
                        let sample = plan.duration_stop.finish(&stop, call, offset, scheduled).await;
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
        if let Ok(Some(sample)) = call.await {
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

fn client(plan: &Plan, worker: usize) -> InferenceClient<Channel> {
    let channel = plan.channels[worker % plan.channels.len()].clone();
    InferenceClient::new(channel).max_decoding_message_size(usize::MAX)
}

/// Makes call number `i` for `worker`; latency counts from `began`.
async fn call_once(
    client: &mut InferenceClient<Channel>,
    plan: &Plan,
    worker: usize,
    i: u64,
    offset: Duration,
    began: Instant,
) -> Sample {
    let prepared = {
        let worker_id = &plan.worker_ids[worker % plan.worker_ids.len()];
        let data = CallData::new(plan.call, worker_id, i, SystemTime::now());
        plan.metadata.render(&data).and_then(|metadata| {
            let message = match plan.call {
                Call::ListModels => proto::GenerateRequest::default(),
                _ => plan.messages.message(i, &data)?,
            };
            Ok((metadata, message))
        })
    };
    let (metadata, message) = match prepared {
        Ok(prepared) => prepared,
        // A template that rendered into something unusable: the call fails
        // here, as ghz reports a message it could not build.
        Err(error) => {
            return Sample {
                start: offset,
                latency: began.elapsed(),
                code: Code::Unknown,
                error: Some(error),
                backend_us: 0,
                queue_wait_us: 0,
            };
        }
    };
    let result = match plan.call {
        Call::Generate => client
            .generate(request(plan, metadata, message))
            .await
            .map(|r| r.into_inner().timing),
        Call::GenerateStream => stream(client, request(plan, metadata, message)).await,
        Call::ListModels => client
            .list_models(request(plan, metadata, proto::ListModelsRequest {}))
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

fn request<T>(plan: &Plan, metadata: MetadataMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = metadata;
    if let Some(timeout) = plan.timeout {
        request.set_timeout(timeout);
    }
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
