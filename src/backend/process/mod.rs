//! The process backend: each worker is a long-lived child process, in any
//! language, serving one call at a time over JSON lines on stdin/stdout
//! (see [`protocol`]).
//!
//! `workers = N` processes give real parallelism even for CPU-bound Python,
//! since each has its own interpreter. A worker counts as started once it
//! sent its ready line, within `start_timeout_ms`. A worker that exits
//! mid-call fails that call UNAVAILABLE; one that writes a line that is not
//! the protocol fails it INTERNAL. Either way it is replaced (with a
//! back-off if it keeps failing, see the pool's worker loop). A cancelled or
//! expired call is signalled with a `cancel` line; a worker that has not
//! answered within `cancel_grace_ms`, or has not even read the request, is
//! killed with its whole process group and restarted.
//!
//! What a worker writes to stderr, the texts of its errors and the lines
//! that break the protocol go to the log at warn (inside the call's span,
//! so with its request id), never to the client, which reads a short
//! message saying what failed. The one channel from worker to client is an
//! error line marked `public` (see [`protocol`]).

mod child;
mod group;
pub mod protocol;
mod start;
#[cfg(target_os = "linux")]
mod supervisor;

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::backend::{
    Backend, BackendError, BackendErrorKind, BackendFactory, CallContext, Completion, Health,
    count_words,
};
use crate::config::ProcessConfig;
use child::{Child, MAX_LINE_BYTES, Received, SendError};
use protocol::{FromWorker, ToWorker, error_kind, finish_reason, public_message};

/// How often a waiting backend checks for cancellation.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for a worker that closed its stdout to report its exit.
const EXIT_STATUS_WAIT: Duration = Duration::from_millis(500);
/// How long to wait for the rest of a dead worker's stderr, for the log.
const STDERR_WAIT: Duration = Duration::from_millis(200);
/// Bytes of a malformed line quoted in the log.
const QUOTE_BYTES: usize = 200;
/// Bytes of a worker's error text and detail written to the log.
const LOG_BYTES: usize = 8 * 1024;
/// What the client reads when a worker failed a call with a private error.
const WORKER_FAILED: &str = "the worker failed (see the gateway log)";

/// Starts the worker processes of a model.
#[derive(Debug, Clone)]
pub struct ProcessFactory {
    model: String,
    config: ProcessConfig,
}

impl ProcessFactory {
    /// A factory for `model`'s workers.
    pub fn new(model: &str, config: ProcessConfig) -> Self {
        ProcessFactory {
            model: model.to_string(),
            config,
        }
    }
}

impl BackendFactory for ProcessFactory {
    fn kind(&self) -> &str {
        "process"
    }

    /// Starts a worker and waits, up to `start_timeout_ms`, for its ready
    /// line. Blocks: runs on the pool's worker thread.
    fn create(&self, worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        let child = start::start(&self.config, &self.model, worker)?;
        Ok(Box::new(ProcessBackend {
            child,
            next_id: 0,
            broken: None,
            cancel_grace: Duration::from_millis(self.config.cancel_grace_ms),
        }))
    }
}

/// One worker's process.
pub struct ProcessBackend {
    child: Child,
    next_id: u64,
    /// Set when the process can take no more calls: the restart reason.
    broken: Option<&'static str>,
    cancel_grace: Duration,
}

impl ProcessBackend {
    /// The worker exited (or closed its pipes) during a call.
    fn died(&mut self) -> BackendError {
        self.broken = Some("exited");
        let status = self
            .child
            .exit_status(EXIT_STATUS_WAIT)
            .as_ref()
            .map_or_else(|| "it closed its output".to_string(), ExitStatus::to_string);
        tracing::warn!(
            group = self.child.pid(),
            %status,
            stderr = ?self.child.stderr_tail(STDERR_WAIT),
            "worker process exited during the call"
        );
        BackendError::new(
            BackendErrorKind::Unavailable,
            format!("worker process exited during the call ({status}); see the gateway log"),
        )
    }

    /// The worker wrote something that is not the protocol.
    fn malformed(&mut self, what: String) -> BackendError {
        self.broken = Some("malformed");
        self.child.kill();
        tracing::warn!(
            group = self.child.pid(),
            stderr = ?self.child.stderr_tail(STDERR_WAIT),
            "worker process broke the protocol: {what}"
        );
        BackendError::new(
            BackendErrorKind::Internal,
            "worker process broke the protocol; see the gateway log",
        )
    }

    /// Kills the worker's process group: the call ends as cancelled.
    fn stop(&mut self, reason: &'static str) -> BackendError {
        self.broken = Some(reason);
        self.child.kill();
        BackendError::cancelled()
    }

    /// Tells the worker to stop call `id`, waits for its answer up to the
    /// grace, and kills it if none comes. A worker that has not even read
    /// the request cannot read the cancel line: it is killed at once.
    fn cancel(&mut self, id: u64, ctx: &CallContext<'_>) -> BackendError {
        let reason = if Instant::now() >= ctx.deadline() {
            "hung"
        } else {
            "cancelled"
        };
        if self.child.unread() {
            tracing::warn!(
                group = self.child.pid(),
                reason,
                "worker process has not read its request; killing it"
            );
            return self.stop(reason);
        }
        match self.child.send(ToWorker::Cancel { id }.to_line()) {
            Ok(()) => {}
            Err(SendError::Stuck) => return self.stop(reason),
            Err(SendError::Closed) => return self.died(),
        }
        let until = Instant::now() + self.cancel_grace;
        loop {
            let wait = until.saturating_duration_since(Instant::now());
            match self.child.recv(wait) {
                Received::Line(line) => match serde_json::from_str::<FromWorker>(&line) {
                    Ok(
                        FromWorker::Result { id: answered, .. }
                        | FromWorker::Error { id: answered, .. },
                    ) if answered == id => {
                        return BackendError::cancelled();
                    }
                    Ok(_) => {}
                    Err(e) => return self.malformed(format!("{e}: {}", quote(&line))),
                },
                Received::TooLong => return self.malformed(too_long()),
                Received::Closed => return self.died(),
                Received::Timeout if Instant::now() < until => {}
                Received::Timeout => {
                    tracing::warn!(
                        group = self.child.pid(),
                        reason,
                        grace_ms = self.cancel_grace.as_millis(),
                        "worker process did not stop after a cancel line; killing it"
                    );
                    return self.stop(reason);
                }
            }
        }
    }

    /// An error line: its code always, its message only if public.
    fn failed(
        message: &str,
        code: Option<&str>,
        public: bool,
        detail: Option<&str>,
    ) -> BackendError {
        let kind = error_kind(code);
        if public {
            return BackendError::new(kind, public_message(message));
        }
        tracing::warn!(
            code = code.unwrap_or("internal"),
            error = ?clip(message, LOG_BYTES),
            detail = ?clip(detail.unwrap_or(""), LOG_BYTES),
            "worker failed the call"
        );
        BackendError::new(kind, WORKER_FAILED)
    }
}

impl Backend for ProcessBackend {
    fn generate(
        &mut self,
        params: &crate::backend::GenerateParams,
        ctx: &mut CallContext<'_>,
    ) -> Result<Completion, BackendError> {
        self.next_id += 1;
        let id = self.next_id;
        let left = ctx.deadline().saturating_duration_since(Instant::now());
        let timeout_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        match self
            .child
            .send(ToWorker::request(id, params, timeout_ms).to_line())
        {
            Ok(()) => {}
            Err(SendError::Closed) => return Err(self.died()),
            Err(SendError::Stuck) => {
                tracing::warn!(
                    group = self.child.pid(),
                    "worker process stopped reading its input; killing it"
                );
                self.stop("hung");
                return Err(BackendError::new(
                    BackendErrorKind::Unavailable,
                    "worker process stopped reading its input; see the gateway log",
                ));
            }
        }
        let mut tokens = 0u32;
        loop {
            let wait = POLL.min(ctx.deadline().saturating_duration_since(Instant::now()));
            let line = match self.child.recv(wait) {
                Received::Line(line) => line,
                Received::TooLong => return Err(self.malformed(too_long())),
                Received::Closed => return Err(self.died()),
                Received::Timeout => {
                    if ctx.is_cancelled() {
                        return Err(self.cancel(id, ctx));
                    }
                    continue;
                }
            };
            let message = match serde_json::from_str::<FromWorker>(&line) {
                Ok(message) => message,
                Err(e) => return Err(self.malformed(format!("{e}: {}", quote(&line)))),
            };
            if message.id() != Some(id) {
                // A late answer to an earlier, cancelled call.
                continue;
            }
            match message {
                FromWorker::Token { text, .. } => {
                    tokens = tokens.saturating_add(1);
                    if ctx.emit(&text).is_err() {
                        return Err(self.cancel(id, ctx));
                    }
                }
                FromWorker::Result {
                    text,
                    finish_reason: reason,
                    prompt_tokens,
                    completion_tokens,
                    ..
                } => {
                    let mut generated = tokens;
                    if let Some(text) = text.filter(|t| !t.is_empty()) {
                        generated = generated.saturating_add(count_words(&text));
                        if ctx.emit(&text).is_err() {
                            return Err(BackendError::cancelled());
                        }
                    }
                    return Ok(Completion {
                        finish_reason: finish_reason(reason.as_deref()),
                        prompt_tokens: prompt_tokens
                            .unwrap_or_else(|| count_words(&params.input.text())),
                        completion_tokens: completion_tokens.unwrap_or(generated),
                    });
                }
                FromWorker::Error {
                    message,
                    code,
                    public,
                    detail,
                    ..
                } => {
                    return Err(Self::failed(
                        &message,
                        code.as_deref(),
                        public,
                        detail.as_deref(),
                    ));
                }
                FromWorker::Ready { .. } => {}
            }
        }
    }

    fn health(&self) -> Health {
        self.broken.map_or(Health::Healthy, Health::Restart)
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A line for the log: at most [`QUOTE_BYTES`] of it, escaped.
fn quote(line: &str) -> String {
    let mut end = line.len().min(QUOTE_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let ellipsis = if end < line.len() { "…" } else { "" };
    format!("{:?}{ellipsis}", &line[..end])
}

fn too_long() -> String {
    format!("a line longer than {MAX_LINE_BYTES} bytes")
}
