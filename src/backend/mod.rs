//! The synchronous backend interface, and the backends infergate ships.
//!
//! A [`Backend`] makes one blocking call at a time on a worker thread: it is
//! the `llm.call(messages)` of the original story. It emits text through the
//! [`CallContext`], which also tells it whether the caller has gone away, so
//! a long call can stop early. A [`BackendFactory`] makes one backend per
//! worker, so backends with per-worker state (a child process, an HTTP
//! connection) need no locks, and a worker whose backend panicked gets a new
//! one.
//!
//! A backend whose calls are I/O waits (an HTTP upstream) can instead be an
//! [`AsyncBackend`] ([`task`]): its calls run as tasks, not threads, under
//! the same pool.

pub mod openai;
pub mod process;
pub mod simulated;
pub mod task;

use std::fmt;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::cancel::CancelSignal;

pub use openai::OpenAiFactory;
pub use process::ProcessFactory;
pub use simulated::SimulatedFactory;
pub use task::{AsyncBackend, AsyncContext, BackendFuture};

/// One turn of a chat conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user", "assistant" or "tool".
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

/// The input of a call: plain text or a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Completion form.
    Prompt(String),
    /// Chat form.
    Messages(Vec<ChatMessage>),
}

impl Input {
    /// All the input text, turns joined by newlines: what a backend that has
    /// no chat template reads.
    pub fn text(&self) -> String {
        match self {
            Input::Prompt(prompt) => prompt.clone(),
            Input::Messages(messages) => messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// A validated request, as a backend sees it.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// The model name the client asked for.
    pub model: String,
    /// The input.
    pub input: Input,
    /// Upper bound on generated tokens; `None` leaves it to the backend.
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0..=2, if set.
    pub temperature: Option<f32>,
    /// Stop strings (non-empty).
    pub stop: Vec<String>,
    /// Sampling seed, if set.
    pub seed: Option<u64>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its answer, or a stop string was reached.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// What a backend returns when a call succeeds; the text itself went
/// through [`CallContext::emit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Input tokens, as the backend counts them.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
}

/// The classes of backend failure, each sent with its own gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// The backend cannot be reached or died (UNAVAILABLE).
    Unavailable,
    /// The backend misbehaved, e.g. malformed output (INTERNAL).
    Internal,
    /// The backend refused the request's content (INVALID_ARGUMENT).
    InvalidArgument,
    /// The backend is rate limited or out of capacity (RESOURCE_EXHAUSTED).
    ResourceExhausted,
    /// The backend did not answer in time (DEADLINE_EXCEEDED).
    DeadlineExceeded,
    /// The backend refused our credentials (PERMISSION_DENIED).
    PermissionDenied,
    /// The backend wants credentials (UNAUTHENTICATED).
    Unauthenticated,
    /// The call was cancelled while running (CANCELLED).
    Cancelled,
}

impl BackendErrorKind {
    /// The gRPC code for this kind.
    pub fn code(self) -> Code {
        match self {
            BackendErrorKind::Unavailable => Code::Unavailable,
            BackendErrorKind::Internal => Code::Internal,
            BackendErrorKind::InvalidArgument => Code::InvalidArgument,
            BackendErrorKind::ResourceExhausted => Code::ResourceExhausted,
            BackendErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            BackendErrorKind::PermissionDenied => Code::PermissionDenied,
            BackendErrorKind::Unauthenticated => Code::Unauthenticated,
            BackendErrorKind::Cancelled => Code::Cancelled,
        }
    }
}

/// A failure reported by a backend; its message is sent to the client, so it
/// must not hold secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    /// The class of failure, which picks the gRPC code.
    pub kind: BackendErrorKind,
    /// What happened, for the client.
    pub message: String,
}

impl BackendError {
    /// A backend error of the given kind.
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            message: message.into(),
        }
    }

    /// The error a backend returns when it stopped because of cancellation.
    pub fn cancelled() -> Self {
        BackendError::new(BackendErrorKind::Cancelled, "the call was cancelled")
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}

/// The call was cancelled: returned by [`CallContext`] methods so a backend
/// can stop with `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl From<Cancelled> for BackendError {
    fn from(_: Cancelled) -> Self {
        BackendError::cancelled()
    }
}

/// Where generated text goes: collected for Generate, forwarded for
/// GenerateStream.
pub trait TokenSink {
    /// Takes the next piece of text. Fails when the receiver has gone away.
    fn emit(&mut self, text: &str) -> Result<(), Cancelled>;
}

/// What a backend call can see and do besides its request.
pub struct CallContext<'a> {
    cancel: &'a CancelSignal,
    deadline: Instant,
    sink: &'a mut dyn TokenSink,
    first_token: Option<Instant>,
    streaming: bool,
}

impl<'a> CallContext<'a> {
    /// A context for one call.
    pub(crate) fn new(
        cancel: &'a CancelSignal,
        deadline: Instant,
        sink: &'a mut dyn TokenSink,
    ) -> Self {
        CallContext {
            cancel,
            deadline,
            sink,
            first_token: None,
            streaming: false,
        }
    }

    /// Marks the call as streaming (GenerateStream).
    pub fn with_streaming(mut self, streaming: bool) -> Self {
        self.streaming = streaming;
        self
    }

    /// Whether the client reads the text as it is produced (GenerateStream)
    /// or whole (Generate): a backend with both modes upstream picks one.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// Sends the next piece of generated text to the caller. Fails when the
    /// call was cancelled, so a backend can stop with `?`.
    pub fn emit(&mut self, text: &str) -> Result<(), Cancelled> {
        if self.cancel.is_cancelled() {
            return Err(Cancelled);
        }
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
        }
        self.sink.emit(text)
    }

    /// Whether the caller has gone away or run out of time.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled() || Instant::now() >= self.deadline
    }

    /// Blocks for `duration`, returning early with `Err` if cancelled or if
    /// the deadline comes first. The way for a backend to wait.
    pub fn sleep(&self, duration: Duration) -> Result<(), Cancelled> {
        let until = Instant::now()
            .checked_add(duration)
            .map_or(self.deadline, |t| t.min(self.deadline));
        if self.cancel.wait_until(until) || until == self.deadline {
            return Err(Cancelled);
        }
        Ok(())
    }

    /// When the call must be finished: bound any I/O wait by this.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When the first piece of text was emitted, if any.
    pub fn first_token_at(&self) -> Option<Instant> {
        self.first_token
    }
}

/// Whether a backend can take another call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Ready for the next call.
    Healthy,
    /// Broken (its process died, hung, or wrote garbage): the worker drops
    /// it and makes a new one. The reason labels
    /// `infergate_worker_restarts_total`.
    Restart(&'static str),
}

/// A synchronous model backend: one call at a time, on one worker thread.
/// Implementations block freely; they never run on the async runtime.
pub trait Backend: Send {
    /// Runs one call to completion, emitting text through `ctx`. Should poll
    /// `ctx.is_cancelled()` (or wait with `ctx.sleep`) during long work.
    fn generate(
        &mut self,
        params: &GenerateParams,
        ctx: &mut CallContext<'_>,
    ) -> Result<Completion, BackendError>;

    /// Asked after every call: a backend that cannot go on says so, and is
    /// replaced.
    fn health(&self) -> Health {
        Health::Healthy
    }
}

/// Makes the backend of each worker of a model.
pub trait BackendFactory: Send + Sync {
    /// The backend kind shown in ListModels ("simulated", …).
    fn kind(&self) -> &str;

    /// Makes the backend for worker `worker`. Called on that worker's
    /// thread at start-up, and again after the backend panicked.
    fn create(&self, worker: usize) -> Result<Box<dyn Backend>, BackendError>;

    /// Whether what the backends depend on is up (e.g. a remote server);
    /// while it is not, the model reports no ready worker and turns
    /// NOT_SERVING. Must be cheap: it is read on every stats snapshot.
    fn is_up(&self) -> bool {
        true
    }

    /// The model's asynchronous backend, for a factory whose calls are I/O
    /// waits: the pool then runs each call as a task (at most `workers` at
    /// once) instead of on worker threads, and never calls
    /// [`create`](Self::create). `None` (the default): worker threads.
    fn asynchronous(&self) -> Option<std::sync::Arc<dyn AsyncBackend>> {
        None
    }
}

/// Counts whitespace-separated words: the token count of backends that have
/// no tokenizer.
pub fn count_words(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}
