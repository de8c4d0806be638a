//! The process backend: each worker is a long-lived child process, in any
//! language, serving one call at a time over JSON lines on stdin/stdout
//! (see [`protocol`]).
//!
//! `workers = N` processes give real parallelism even for CPU-bound Python,
//! since each has its own interpreter. A worker that exits mid-call fails
//! that call UNAVAILABLE, with the tail of its stderr; one that writes a
//! line that is not the protocol fails it INTERNAL. Either way it is
//! replaced (with a back-off if it keeps failing, see the pool's worker
//! loop). A cancelled or expired call is signalled with a `cancel` line; a
//! worker that has not answered within `cancel_grace_ms` is killed and
//! restarted.

mod child;
pub mod protocol;

use std::time::{Duration, Instant};

use crate::backend::{
    Backend, BackendError, BackendErrorKind, BackendFactory, CallContext, Completion, Health,
    count_words,
};
use crate::config::ProcessConfig;
use child::{Child, MAX_LINE_BYTES, Received};
use protocol::{FromWorker, ToWorker, error_kind, finish_reason};

/// How often a waiting backend checks for cancellation.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for a worker that closed its stdout to report its exit.
const EXIT_STATUS_WAIT: Duration = Duration::from_millis(500);
/// Bytes of a malformed line quoted in the error.
const QUOTE_BYTES: usize = 200;

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

    fn create(&self, worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        let child = Child::spawn(&self.config, &self.model, worker).map_err(|e| {
            BackendError::new(
                BackendErrorKind::Unavailable,
                format!(
                    "cannot start worker `{}`: {e}",
                    self.config.command.join(" ")
                ),
            )
        })?;
        tracing::info!(model = %self.model, worker, pid = child.pid(), "worker process started");
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
        let status = match self.child.exit_status(EXIT_STATUS_WAIT) {
            Some(status) => status.to_string(),
            None => {
                self.child.kill();
                "closed its output".to_string()
            }
        };
        let tail = self.child.stderr_tail();
        let tail = if tail.is_empty() {
            "(nothing on stderr)".to_string()
        } else {
            format!("its stderr ended with:\n{tail}")
        };
        BackendError::new(
            BackendErrorKind::Unavailable,
            format!(
                "worker process {} failed during the call ({status}); {tail}",
                self.child.pid()
            ),
        )
    }

    /// The worker wrote something that is not the protocol.
    fn malformed(&mut self, what: String) -> BackendError {
        self.broken = Some("malformed");
        self.child.kill();
        BackendError::new(
            BackendErrorKind::Internal,
            format!(
                "worker process {} broke the protocol: {what}",
                self.child.pid()
            ),
        )
    }

    /// Tells the worker to stop call `id`, waits for its answer up to the
    /// grace, and kills it if none comes.
    fn cancel(&mut self, id: u64, ctx: &CallContext<'_>) -> BackendError {
        let reason = if Instant::now() >= ctx.deadline() {
            "hung"
        } else {
            "cancelled"
        };
        if self.child.send(&ToWorker::Cancel { id }.to_line()).is_err() {
            return self.died();
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
                Received::Timeout => {
                    tracing::warn!(
                        pid = self.child.pid(),
                        reason,
                        grace_ms = self.cancel_grace.as_millis(),
                        "worker did not stop after a cancel line; killing it"
                    );
                    self.broken = Some(reason);
                    self.child.kill();
                    return BackendError::cancelled();
                }
            }
        }
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
        if self
            .child
            .send(&ToWorker::request(id, params, timeout_ms).to_line())
            .is_err()
        {
            return Err(self.died());
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
            if message.id() != id {
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
                FromWorker::Error { message, code, .. } => {
                    return Err(BackendError::new(error_kind(code.as_deref()), message));
                }
            }
        }
    }

    fn health(&self) -> Health {
        self.broken.map_or(Health::Healthy, Health::Restart)
    }
}

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
