//! Starting a worker process: spawn it, then wait for its ready line (see
//! [`protocol`](super::protocol)) up to the model's `start_timeout_ms`. A
//! worker that exits first, stays silent or writes something else failed
//! to start: its process group is killed, what it wrote to stderr goes to
//! the log, and the pool gets a short error naming only the program.

use std::time::{Duration, Instant};

use crate::backend::{BackendError, BackendErrorKind};
use crate::config::ProcessConfig;

use super::child::{Child, Received};
use super::protocol::FromWorker;
use super::{EXIT_STATUS_WAIT, STDERR_WAIT, quote, too_long};

/// Lines that are not the protocol skipped before the ready line.
const MAX_LINES_BEFORE_READY: usize = 1000;

/// Starts worker `worker` of `model` and waits until it is ready.
pub(super) fn start(
    config: &ProcessConfig,
    model: &str,
    worker: usize,
) -> Result<Child, BackendError> {
    // The program only: its arguments may hold anything.
    let program = config.command.first().map_or("", String::as_str);
    let mut child = Child::spawn(config, model, worker).map_err(|e| {
        BackendError::new(
            BackendErrorKind::Unavailable,
            format!("cannot start worker process `{program}`: {e}"),
        )
    })?;
    let timeout = Duration::from_millis(config.start_timeout_ms);
    match handshake(&mut child, timeout) {
        Ok(pid) => {
            tracing::info!(
                model,
                worker,
                group = child.pid(),
                pid,
                "worker process ready"
            );
            Ok(child)
        }
        Err(failure) => {
            let what = failure.describe(&mut child, config.start_timeout_ms);
            tracing::warn!(
                model,
                worker,
                group = child.pid(),
                stderr = ?child.stderr_tail(STDERR_WAIT),
                "worker process failed to start: {what}"
            );
            Err(BackendError::new(
                BackendErrorKind::Unavailable,
                format!("worker process `{program}` {what}; see the gateway log"),
            ))
        }
    }
}

/// Why a worker did not become ready.
enum StartFailure {
    /// Its stdout closed before the ready line.
    Exited,
    /// No ready line within the start timeout.
    Silent,
    /// It wrote something else.
    Malformed(String),
}

impl StartFailure {
    /// What happened, for the log and the client; ends the process group.
    fn describe(self, child: &mut Child, timeout_ms: u64) -> String {
        match self {
            StartFailure::Exited => match child.exit_status(EXIT_STATUS_WAIT) {
                Some(status) => format!("exited at start-up ({status})"),
                None => "closed its output at start-up".to_string(),
            },
            StartFailure::Silent => {
                child.kill();
                format!("sent no ready line within {timeout_ms} ms (process.start_timeout_ms)")
            }
            StartFailure::Malformed(what) => {
                child.kill();
                tracing::warn!(
                    group = child.pid(),
                    "worker process broke the protocol at start-up: {what}"
                );
                "broke the protocol at start-up".to_string()
            }
        }
    }
}

/// Waits for the ready line; returns the pid the worker gave in it.
fn handshake(child: &mut Child, timeout: Duration) -> Result<Option<u32>, StartFailure> {
    let until = Instant::now() + timeout;
    let mut skipped = 0;
    loop {
        let wait = until.saturating_duration_since(Instant::now());
        match child.recv(wait) {
            Received::Line(line) => match serde_json::from_str::<FromWorker>(&line) {
                Ok(FromWorker::Ready { pid }) => return Ok(pid),
                Ok(_) => {
                    return Err(StartFailure::Malformed(format!(
                        "an answer before the ready line: {}",
                        quote(&line)
                    )));
                }
                Err(_) if skipped < MAX_LINES_BEFORE_READY => {
                    skipped += 1;
                    tracing::warn!(
                        group = child.pid(),
                        line = %quote(&line),
                        "worker process wrote a line that is not the protocol before its ready line; skipped"
                    );
                }
                Err(e) => return Err(StartFailure::Malformed(format!("{e}: {}", quote(&line)))),
            },
            Received::TooLong => return Err(StartFailure::Malformed(too_long())),
            Received::Closed => return Err(StartFailure::Exited),
            Received::Timeout if Instant::now() >= until => return Err(StartFailure::Silent),
            Received::Timeout => {}
        }
    }
}
