//! The JSON-lines protocol between the gateway and a worker process.
//!
//! One JSON object per line, UTF-8, `\n`-terminated. Logs go to stderr,
//! never stdout; the gateway logs them, and never sends them to a client.
//!
//! **Start-up.** The worker's first stdout line is `{"type":"ready"}` (it
//! may add `"pid"`, its process id, for the log), sent once it can take
//! calls, i.e. after loading its model. The gateway counts the worker ready
//! only then: a worker that exits first, or sends nothing within the
//! model's `start_timeout_ms`, failed to start (its process group is killed
//! and it is started again, with a back-off). Lines before the ready line
//! that are not JSON (a library printing a banner) are logged and skipped.
//!
//! **Calls.** The gateway writes a `request` to the worker's stdin; the
//! worker answers on its stdout with zero or more `token` lines, then
//! exactly one `result` or `error` line, each carrying the request's `id`.
//! The gateway may write a `cancel` line for the request in progress; the
//! worker should then stop and answer with an `error` (or its `result`)
//! within the model's `cancel_grace_ms`, or it is killed and replaced. A
//! worker that does not read its stdin at the call's deadline is killed at
//! once. Answers carrying another `id` (late answers to a cancelled call)
//! are ignored.
//!
//! ```text
//! ← {"type":"ready","pid":4242}
//! → {"type":"request","id":7,"model":"py","prompt":"hi","messages":null,"max_tokens":16,
//!    "temperature":null,"stop":[],"seed":null,"timeout_ms":60000}
//! ← {"type":"token","id":7,"text":"Hel"}
//! ← {"type":"token","id":7,"text":"lo"}
//! ← {"type":"result","id":7,"finish_reason":"stop"}
//! → {"type":"request","id":8,…}
//! ← {"type":"error","id":8,"code":"invalid_argument","message":"no images","public":true}
//! → {"type":"request","id":9,…}
//! ← {"type":"error","id":9,"code":"internal","message":"RuntimeError: db password=…",
//!    "detail":"Traceback (most recent call last): …"}
//! → {"type":"cancel","id":10}
//! ← {"type":"error","id":10,"code":"cancelled","message":"cancelled","public":true}
//! ```
//!
//! **Errors.** An `error` line's `code` (one of [`error_kind`]'s, default
//! `internal`) picks the client's gRPC code. Its `message` reaches the
//! client only when the line says `"public": true`, i.e. the worker meant
//! it for the client (the Python library's `WorkerError`), and then at most
//! [`MAX_PUBLIC_MESSAGE_CHARS`] characters of it. Otherwise (the default:
//! an exception's text may hold anything, a password included) the message
//! and the optional `detail` (a traceback) go to the gateway's log at warn,
//! with the call's request id, and the client reads only that the worker
//! failed.
//!
//! **Processes.** Each worker runs in a process group of its own, with
//! whatever it starts; the group is killed when the worker is cancelled and
//! does not stop, is restarted, or exits, and when the gateway exits or
//! dies (on Linux, a small supervisor process watches for that). A process
//! that leaves the group (`setsid`) is the worker's to clean up. The worker
//! should exit when its stdin closes.

use serde::{Deserialize, Serialize};

use crate::backend::{BackendErrorKind, ChatMessage, FinishReason, GenerateParams, Input};

/// A chat message on the wire.
#[derive(Debug, Serialize)]
pub struct WireMessage<'a> {
    /// "system", "user", …
    pub role: &'a str,
    /// The text.
    pub content: &'a str,
}

/// A line from the gateway to the worker.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker<'a> {
    /// Run this call.
    Request {
        /// Echoed on every answer line.
        id: u64,
        /// The gateway model name.
        model: &'a str,
        /// The input in completion form, or null.
        prompt: Option<&'a str>,
        /// The input in chat form, or null.
        messages: Option<Vec<WireMessage<'a>>>,
        /// Token limit, or null for the worker's default.
        max_tokens: Option<u32>,
        /// Sampling temperature, or null.
        temperature: Option<f32>,
        /// Stop strings.
        stop: &'a [String],
        /// Sampling seed, or null.
        seed: Option<u64>,
        /// Milliseconds left before the call's deadline.
        timeout_ms: u64,
    },
    /// Stop the call in progress.
    Cancel {
        /// The call's id.
        id: u64,
    },
}

impl<'a> ToWorker<'a> {
    /// The request line for a call.
    pub fn request(id: u64, params: &'a GenerateParams, timeout_ms: u64) -> Self {
        let (prompt, messages) = match &params.input {
            Input::Prompt(prompt) => (Some(prompt.as_str()), None),
            Input::Messages(messages) => (None, Some(messages.iter().map(wire).collect())),
        };
        ToWorker::Request {
            id,
            model: &params.model,
            prompt,
            messages,
            max_tokens: params.max_tokens,
            temperature: params.temperature,
            stop: &params.stop,
            seed: params.seed,
            timeout_ms,
        }
    }

    /// The line, with its newline.
    pub fn to_line(&self) -> String {
        // Serialising these plain structs cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

fn wire(message: &ChatMessage) -> WireMessage<'_> {
    WireMessage {
        role: &message.role,
        content: &message.content,
    }
}

/// Characters of a public error message passed to the client.
pub const MAX_PUBLIC_MESSAGE_CHARS: usize = 200;

/// A line from the worker to the gateway.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The worker can take calls: its first line.
    Ready {
        /// The worker's process id, for the log.
        #[serde(default)]
        pid: Option<u32>,
    },
    /// The next piece of text.
    Token {
        /// The call's id.
        id: u64,
        /// The text.
        text: String,
    },
    /// The call succeeded.
    Result {
        /// The call's id.
        id: u64,
        /// Text not sent as tokens (e.g. a function that returns a string).
        #[serde(default)]
        text: Option<String>,
        /// "stop" (default) or "length".
        #[serde(default)]
        finish_reason: Option<String>,
        /// Input tokens, if the worker counts them.
        #[serde(default)]
        prompt_tokens: Option<u32>,
        /// Generated tokens, if the worker counts them.
        #[serde(default)]
        completion_tokens: Option<u32>,
    },
    /// The call failed.
    Error {
        /// The call's id.
        id: u64,
        /// What went wrong: for the client if `public`, else for the log.
        #[serde(default)]
        message: String,
        /// One of [`error_kind`]'s codes; default "internal".
        #[serde(default)]
        code: Option<String>,
        /// The worker meant `message` for the client.
        #[serde(default)]
        public: bool,
        /// More for the log (a traceback); never sent to the client.
        #[serde(default)]
        detail: Option<String>,
    },
}

impl FromWorker {
    /// The id of the call the line answers (none for `ready`).
    pub fn id(&self) -> Option<u64> {
        match self {
            FromWorker::Ready { .. } => None,
            FromWorker::Token { id, .. }
            | FromWorker::Result { id, .. }
            | FromWorker::Error { id, .. } => Some(*id),
        }
    }
}

/// A public error message as the client gets it: at most
/// [`MAX_PUBLIC_MESSAGE_CHARS`] characters.
pub fn public_message(message: &str) -> String {
    match message.char_indices().nth(MAX_PUBLIC_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message.to_string(),
    }
}

/// The finish reason of a result line.
pub fn finish_reason(value: Option<&str>) -> FinishReason {
    match value {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// The error kind of an error line's `code`.
pub fn error_kind(code: Option<&str>) -> BackendErrorKind {
    match code {
        Some("invalid_argument") => BackendErrorKind::InvalidArgument,
        Some("unavailable") => BackendErrorKind::Unavailable,
        Some("resource_exhausted") => BackendErrorKind::ResourceExhausted,
        Some("deadline_exceeded") => BackendErrorKind::DeadlineExceeded,
        Some("permission_denied") => BackendErrorKind::PermissionDenied,
        Some("unauthenticated") => BackendErrorKind::Unauthenticated,
        Some("cancelled") => BackendErrorKind::Cancelled,
        _ => BackendErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_carry_the_call() {
        let params = GenerateParams {
            model: "py".into(),
            input: Input::Prompt("hi".into()),
            max_tokens: Some(4),
            temperature: None,
            stop: vec![],
            seed: Some(3),
        };
        let line = ToWorker::request(7, &params, 500).to_line();
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["type"], "request");
        assert_eq!(value["id"], 7);
        assert_eq!(value["prompt"], "hi");
        assert!(value["messages"].is_null());
        assert_eq!(value["max_tokens"], 4);
        assert_eq!(value["timeout_ms"], 500);
    }

    #[test]
    fn answer_lines_parse() {
        let token: FromWorker =
            serde_json::from_str(r#"{"type":"token","id":1,"text":"a"}"#).unwrap();
        assert_eq!(
            token,
            FromWorker::Token {
                id: 1,
                text: "a".into()
            }
        );
        let result: FromWorker = serde_json::from_str(r#"{"type":"result","id":1}"#).unwrap();
        assert_eq!(result.id(), Some(1));
        let ready: FromWorker = serde_json::from_str(r#"{"type":"ready","pid":9}"#).unwrap();
        assert_eq!(ready, FromWorker::Ready { pid: Some(9) });
        assert_eq!(ready.id(), None);
        let error: FromWorker = serde_json::from_str(
            r#"{"type":"error","id":2,"message":"no","code":"resource_exhausted"}"#,
        )
        .unwrap();
        let FromWorker::Error { code, public, .. } = error else {
            panic!()
        };
        assert_eq!(
            error_kind(code.as_deref()),
            BackendErrorKind::ResourceExhausted
        );
        assert!(!public, "messages are private unless the worker says so");
        assert!(serde_json::from_str::<FromWorker>(r#"{"type":"bogus"}"#).is_err());
    }

    #[test]
    fn public_messages_are_bounded() {
        assert_eq!(public_message("short"), "short");
        let long = "é".repeat(MAX_PUBLIC_MESSAGE_CHARS + 50);
        let cut = public_message(&long);
        assert_eq!(cut.chars().count(), MAX_PUBLIC_MESSAGE_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
