//! The one error type of a call, its metrics label, and its gRPC status.
//!
//! Every failure a client can see is an [`Error`]; [`Error::to_status`] is
//! the only place that chooses status codes and writes the message a client
//! reads: the code, the model, the stage and the request id, then what
//! happened, quoting at most [`MAX_QUOTE_CHARS`] of anything the client
//! sent. Internal details (a panic message, a worker's stderr, an upstream
//! body) are logged where they happen, never sent.

use std::fmt;

use tonic::{Code, Status};

use crate::backend::BackendError;
use crate::deadline::Deadline;
use crate::metrics::code_name;

/// Most characters of client input (or of a backend's message) quoted in
/// an error: enough to recognise it, never enough to bloat the trailers
/// (a 1 MB model name would otherwise come back whole and trip the
/// client's metadata limit, hiding the real error).
pub const MAX_QUOTE_CHARS: usize = 200;

/// Where a call was when it ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Being checked and admitted: nothing was queued or run.
    Admission,
    /// Waiting in the model's queue for a worker.
    Queued,
    /// Running on a worker.
    Running,
}

impl Stage {
    /// The `stage` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Admission => "admission",
            Stage::Queued => "queued",
            Stage::Running => "running",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Admission => "being admitted",
            Stage::Queued => "waiting in the queue",
            Stage::Running => "running",
        })
    }
}

/// `text` as a quoted, escaped string of at most [`MAX_QUOTE_CHARS`]
/// characters, saying how long the whole was when it is cut.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTE_CHARS) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes in all)", &text[..end], text.len()),
    }
}

/// `text` cut to at most [`MAX_QUOTE_CHARS`] characters, unquoted: for a
/// backend's own message.
fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_QUOTE_CHARS) {
        None => text.into(),
        Some((end, _)) => format!("{}…", &text[..end]).into(),
    }
}

/// Why a call failed. Clone, so that calls sharing one backend call (see
/// [`crate::cache`]) each get its error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request names a model this gateway does not serve.
    #[error("unknown model {}; this gateway serves: {known}", quote(model))]
    ModelNotFound {
        /// The name asked for.
        model: String,
        /// The served names, comma-separated.
        known: String,
    },
    /// A request field is missing or out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field at fault, as named in the proto (`messages[2].role`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The model's queue is full: the caller should back off and retry.
    #[error(
        "the model is overloaded: all {workers} workers are busy and {capacity} calls are already waiting; retry later"
    )]
    QueueFull {
        /// The model.
        model: String,
        /// Its worker count.
        workers: usize,
        /// Its queue capacity.
        capacity: usize,
    },
    /// The call's deadline passed, or (stage `admission`) cannot be met:
    /// the queue ahead of it, at the model's recent backend times, takes
    /// longer than the time left.
    #[error("{}", deadline_message(deadline, *stage))]
    DeadlineExceeded {
        /// The model.
        model: String,
        /// The deadline the call had.
        deadline: Deadline,
        /// Where the call was when it expired.
        stage: Stage,
    },
    /// No worker of the model has a backend up (e.g. its worker processes
    /// fail to start): refused at once rather than queued.
    #[error(
        "no worker is ready: {}; see the gateway log",
        clip(why.trim_end_matches("; see the gateway log"))
    )]
    ModelDown {
        /// The model.
        model: String,
        /// Why the last start failed (safe for clients).
        why: String,
    },
    /// The gateway is draining and takes no new calls.
    #[error("the gateway is shutting down and accepts no new calls")]
    ShuttingDown,
    /// The backend panicked; the details are in the server log.
    #[error("the backend failed while running this call (see the gateway log)")]
    BackendPanic {
        /// The model.
        model: String,
    },
    /// The backend reported an error with its own code.
    #[error("{}", clip(&source.message))]
    Backend {
        /// The model.
        model: String,
        /// What the backend said.
        source: BackendError,
    },
    /// The caller's API key may not use the model. Names neither the key
    /// nor the models it may use.
    #[error("this API key may not use the model")]
    PermissionDenied {
        /// The model asked for.
        model: String,
    },
    /// The caller's API key is over its request rate.
    #[error(
        "over this API key's rate limit of {per_second} calls per second (burst {burst}); retry later"
    )]
    RateLimited {
        /// The key's rate.
        per_second: f64,
        /// Its burst.
        burst: u32,
    },
    /// The caller's API key has as many calls in flight as it may.
    #[error(
        "this API key's concurrency limit of {limit} calls in flight is reached; retry when one ends"
    )]
    ConcurrencyLimited {
        /// The key's limit.
        limit: u32,
    },
    /// A worker went away without answering (the pool was torn down).
    #[error("the call was dropped without an answer")]
    Dropped {
        /// The model.
        model: String,
    },
}

impl Error {
    /// A short, bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ModelNotFound { .. } => "not_found",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::QueueFull { .. } => "queue_full",
            Error::DeadlineExceeded { .. } => "deadline",
            Error::ShuttingDown => "shutting_down",
            Error::ModelDown { .. } => "model_down",
            Error::BackendPanic { .. } => "backend_panic",
            Error::Backend { .. } => "backend_error",
            Error::Dropped { .. } => "dropped",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::RateLimited { .. } => "rate_limit",
            Error::ConcurrencyLimited { .. } => "concurrency_limit",
        }
    }

    /// The gRPC code this error is sent with.
    pub fn code(&self) -> Code {
        match self {
            Error::ModelNotFound { .. } => Code::NotFound,
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::QueueFull { .. }
            | Error::RateLimited { .. }
            | Error::ConcurrencyLimited { .. } => Code::ResourceExhausted,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::ShuttingDown | Error::ModelDown { .. } => Code::Unavailable,
            Error::BackendPanic { .. } | Error::Dropped { .. } => Code::Internal,
            Error::Backend { source, .. } => source.kind.code(),
        }
    }

    /// The model the call was for, if it names a served one.
    pub fn model(&self) -> Option<&str> {
        match self {
            Error::ModelNotFound { .. }
            | Error::InvalidArgument { .. }
            | Error::ShuttingDown
            | Error::RateLimited { .. }
            | Error::ConcurrencyLimited { .. } => None,
            Error::PermissionDenied { model } => Some(model),
            Error::QueueFull { model, .. }
            | Error::ModelDown { model, .. }
            | Error::DeadlineExceeded { model, .. }
            | Error::BackendPanic { model }
            | Error::Backend { model, .. }
            | Error::Dropped { model } => Some(model),
        }
    }

    /// Where the call was when it failed.
    pub fn stage(&self) -> Stage {
        match self {
            Error::ModelNotFound { .. }
            | Error::InvalidArgument { .. }
            | Error::QueueFull { .. }
            | Error::ModelDown { .. }
            | Error::ShuttingDown
            | Error::PermissionDenied { .. }
            | Error::RateLimited { .. }
            | Error::ConcurrencyLimited { .. } => Stage::Admission,
            Error::DeadlineExceeded { stage, .. } => *stage,
            Error::BackendPanic { .. } | Error::Backend { .. } | Error::Dropped { .. } => {
                Stage::Running
            }
        }
    }

    /// The status a client gets: `CODE (model "m", stage s): what happened
    /// [request id]`. The request id comes last, in brackets, so that tools
    /// grouping errors by message can cut it off.
    pub fn to_status(&self, request_id: &str) -> Status {
        let code = self.code();
        let model = self
            .model()
            .map(|m| format!("model \"{m}\", "))
            .unwrap_or_default();
        let message = format!(
            "{} ({model}stage {}): {self} [request {request_id}]",
            code_name(code),
            self.stage().as_str(),
        );
        Status::new(code, message)
    }

    /// The reason a call that failed so may be passed to one of its
    /// model's fallbacks, or `None` when it may not: only failures that
    /// say "this model cannot take the call now" (queue full, no worker
    /// ready, refused at admission because the queue ahead cannot meet the
    /// deadline, an upstream's 429 or 5xx). Never a bad request, an unknown
    /// model, an expired deadline or shutdown.
    pub fn fallback_reason(&self) -> Option<&'static str> {
        match self {
            Error::QueueFull { .. } => Some("queue_full"),
            Error::ModelDown { .. } => Some("model_down"),
            Error::DeadlineExceeded {
                stage: Stage::Admission,
                ..
            } => Some("deadline"),
            Error::Backend { source, .. } => match source.kind.code() {
                Code::Unavailable => Some("unavailable"),
                Code::ResourceExhausted => Some("resource_exhausted"),
                _ => None,
            },
            _ => None,
        }
    }

    /// Shorthand for an invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<Error> for Status {
    /// For errors outside a call (no request id).
    fn from(error: Error) -> Status {
        error.to_status("-")
    }
}

/// An error and its causes, `: `-separated, for logs and for the command
/// line (a transport's own Display often stops at "transport error" or
/// "error sending request", the cause being layers down). Never for a
/// client's status: causes may carry an upstream's words.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn deadline_message(deadline: &Deadline, stage: Stage) -> String {
    match stage {
        Stage::Admission => format!(
            "{deadline} cannot be met: the calls queued ahead take longer at this model's recent backend times"
        ),
        Stage::Queued | Stage::Running => format!("{deadline} exceeded while {stage}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendErrorKind;

    #[test]
    fn codes_are_chosen_per_kind() {
        let cases = [
            (
                Error::ModelNotFound {
                    model: "x".into(),
                    known: "a, b".into(),
                },
                Code::NotFound,
            ),
            (Error::invalid("prompt", "empty"), Code::InvalidArgument),
            (
                Error::QueueFull {
                    model: "a".into(),
                    workers: 1,
                    capacity: 2,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::DeadlineExceeded {
                    model: "a".into(),
                    deadline: Deadline::after(std::time::Duration::from_millis(5)),
                    stage: Stage::Queued,
                },
                Code::DeadlineExceeded,
            ),
            (Error::ShuttingDown, Code::Unavailable),
            (Error::BackendPanic { model: "a".into() }, Code::Internal),
            (
                Error::Backend {
                    model: "a".into(),
                    source: BackendError::new(BackendErrorKind::Unavailable, "down"),
                },
                Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{}", status.message());
        }
    }

    #[test]
    fn messages_name_the_field_and_model() {
        let status = Status::from(Error::invalid("max_tokens", "above 10"));
        assert!(status.message().contains("max_tokens"));
        let status = Status::from(Error::QueueFull {
            model: "slow-a".into(),
            workers: 1,
            capacity: 2,
        });
        assert!(status.message().contains("slow-a"));
    }

    #[test]
    fn messages_carry_code_stage_and_request_id() {
        let status = Error::QueueFull {
            model: "slow-a".into(),
            workers: 1,
            capacity: 2,
        }
        .to_status("req-7");
        let m = status.message();
        assert!(m.starts_with("RESOURCE_EXHAUSTED"), "{m}");
        assert!(m.contains("stage admission") && m.contains("req-7"), "{m}");
    }

    #[test]
    fn client_input_is_quoted_short() {
        let huge = "x".repeat(1_000_000);
        let status = Error::ModelNotFound {
            model: huge,
            known: "a".into(),
        }
        .to_status("r");
        assert!(status.message().len() < 500, "{}", status.message().len());
        assert!(status.message().contains("1000000 bytes"));
        let q = quote("é".repeat(300).as_str());
        assert!(q.chars().count() < 260);
    }
}
