//! The one error type of a call, its metrics label, and its gRPC status.
//!
//! Every failure a client can see is an [`Error`]; [`From<Error> for Status`]
//! is the only place that chooses status codes. Internal details (a panic
//! message, a worker's stack) are logged where they happen, not sent.

use std::fmt;

use tonic::{Code, Status};

use crate::backend::BackendError;

/// Where a call was when it ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting in the model's queue for a worker.
    Queued,
    /// Running on a worker.
    Running,
}

impl Stage {
    /// The `stage` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Running => "running",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Queued => "waiting in the queue",
            Stage::Running => "running",
        })
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names a model this gateway does not serve.
    #[error("unknown model \"{model}\"; this gateway serves: {known}")]
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
        "model \"{model}\" is overloaded: all {workers} workers are busy and {capacity} calls are already waiting; retry later"
    )]
    QueueFull {
        /// The model.
        model: String,
        /// Its worker count.
        workers: usize,
        /// Its queue capacity.
        capacity: usize,
    },
    /// The call's deadline passed.
    #[error("deadline of {timeout_ms} ms exceeded while {stage} (model \"{model}\")")]
    DeadlineExceeded {
        /// The model.
        model: String,
        /// The deadline the call had.
        timeout_ms: u64,
        /// Where the call was when it expired.
        stage: Stage,
    },
    /// The gateway is draining and takes no new calls.
    #[error("the gateway is shutting down and accepts no new calls")]
    ShuttingDown,
    /// The backend panicked; the details are in the server log.
    #[error("the backend of model \"{model}\" failed while running this call (see the server log)")]
    BackendPanic {
        /// The model.
        model: String,
    },
    /// The backend reported an error with its own code.
    #[error("model \"{model}\": {source}")]
    Backend {
        /// The model.
        model: String,
        /// What the backend said.
        source: BackendError,
    },
    /// A worker went away without answering (the pool was torn down).
    #[error("model \"{model}\": the call was dropped without an answer")]
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
            Error::BackendPanic { .. } => "backend_panic",
            Error::Backend { .. } => "backend_error",
            Error::Dropped { .. } => "dropped",
        }
    }

    /// The gRPC code this error is sent with.
    pub fn code(&self) -> Code {
        match self {
            Error::ModelNotFound { .. } => Code::NotFound,
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::QueueFull { .. } => Code::ResourceExhausted,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::ShuttingDown => Code::Unavailable,
            Error::BackendPanic { .. } | Error::Dropped { .. } => Code::Internal,
            Error::Backend { source, .. } => source.kind.code(),
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
    fn from(error: Error) -> Status {
        Status::new(error.code(), error.to_string())
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
                    timeout_ms: 5,
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
}
