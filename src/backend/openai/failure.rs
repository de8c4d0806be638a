//! What a failed upstream exchange means for the client, and for the log.
//!
//! The client gets the gRPC code and a short, fixed message (the HTTP
//! status, what failed); the gateway wraps it with the model's name. The
//! upstream's own words (response bodies, error events, the HTTP client's
//! error, which may quote the URL) go to the log at warn, inside the call's
//! span, so the line carries the request id. The API key and any password
//! in an upstream's URL are scrubbed from what is logged.
//!
//! | upstream | client |
//! |---|---|
//! | 401, 403, 404, 407 | UNAVAILABLE: the gateway's credentials, URL or upstream model name are wrong; the client can do nothing about it, and another replica may be configured right. Not INTERNAL, which says the gateway itself broke |
//! | 408, timeouts | DEADLINE_EXCEEDED |
//! | 429 | RESOURCE_EXHAUSTED |
//! | other 4xx (400, 413, 422, …) | INVALID_ARGUMENT: the upstream refused this request's content |
//! | 5xx, connection failures, malformed answers, no upstream up | UNAVAILABLE |

use super::Target;
use super::http::Failure;
use crate::backend::{BackendError, BackendErrorKind};

/// Most characters of an upstream text quoted in a log line.
const LOG_QUOTE_CHARS: usize = 2000;

/// Secrets to keep out of log lines: the API key and the password (or
/// token) of `base_url`'s userinfo.
#[derive(Default)]
pub(super) struct Secrets(Vec<String>);

impl Secrets {
    /// The secrets of one upstream.
    pub(super) fn new(api_key: Option<&str>, base_url: &str) -> Self {
        let secrets = [api_key, crate::config::url_secret(base_url)]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Secrets(secrets)
    }

    /// `text`, at most [`LOG_QUOTE_CHARS`] characters of it, with every
    /// secret replaced by `***`.
    pub(super) fn scrub(&self, text: &str) -> String {
        let mut text: String = text.chars().take(LOG_QUOTE_CHARS).collect();
        for secret in &self.0 {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

/// The client's error for an HTTP status other than 200; logs the body.
pub(super) fn refused(status: u16, body: &str, target: &Target) -> BackendError {
    let (kind, what) = match status {
        401 | 403 | 407 => (
            BackendErrorKind::Unavailable,
            "refused the gateway's credentials; the operator must fix the configuration",
        ),
        404 => (
            BackendErrorKind::Unavailable,
            "does not know the URL or the model; the operator must fix the configuration",
        ),
        408 => (BackendErrorKind::DeadlineExceeded, "timed out"),
        429 => (
            BackendErrorKind::ResourceExhausted,
            "is rate limiting; retry later",
        ),
        400..=499 => (BackendErrorKind::InvalidArgument, "refused the request"),
        _ => (BackendErrorKind::Unavailable, "failed"),
    };
    tracing::warn!(
        upstream = %target.name,
        url = %target.shown,
        status,
        body = %target.secrets.scrub(body),
        "the upstream answered an error"
    );
    BackendError::new(
        kind,
        format!("the upstream server {what} (HTTP {status}); details are in the server log"),
    )
}

/// The client's error for a request that failed in transit; logs the HTTP
/// client's error (scrubbed: it may quote the URL).
pub(super) fn transport(failure: Failure, error: &str, target: &Target) -> BackendError {
    tracing::warn!(
        upstream = %target.name,
        url = %target.shown,
        error = %target.secrets.scrub(error),
        "the request to the upstream failed"
    );
    let (kind, what) = match failure {
        Failure::Timeout => (BackendErrorKind::DeadlineExceeded, "did not answer in time"),
        Failure::Connect => (BackendErrorKind::Unavailable, "cannot be reached"),
        Failure::Transport => (BackendErrorKind::Unavailable, "failed mid-exchange"),
    };
    BackendError::new(
        kind,
        format!("the upstream server {what}; details are in the server log"),
    )
}

/// The client's error when no upstream takes calls (all ejected or failing
/// their probe): at once, so that a fallback can take the call.
pub(super) fn none_up() -> BackendError {
    BackendError::new(
        BackendErrorKind::Unavailable,
        "no upstream is up (each is failing its probe or ejected after failures)",
    )
}

/// The client's error when the call's deadline passed during the exchange.
pub(super) fn too_late() -> BackendError {
    BackendError::new(
        BackendErrorKind::DeadlineExceeded,
        "the upstream server did not answer before the deadline",
    )
}

/// The client's error for an answer that is not the OpenAI format (or
/// too large); logs why and the start of the answer.
pub(super) fn malformed(why: &dyn std::fmt::Display, text: &str, target: &Target) -> BackendError {
    tracing::warn!(
        upstream = %target.name,
        url = %target.shown,
        why = %target.secrets.scrub(&why.to_string()),
        answer = %target.secrets.scrub(text),
        "the upstream answer is not the OpenAI format"
    );
    BackendError::new(
        BackendErrorKind::Unavailable,
        "the upstream server's answer is not the OpenAI format; details are in the server log",
    )
}

/// The client's error for an `error` event in the middle of a stream; logs
/// the event.
pub(super) fn error_event(event: &str, target: &Target) -> BackendError {
    tracing::warn!(
        upstream = %target.name,
        url = %target.shown,
        event = %target.secrets.scrub(event),
        "the upstream reported an error mid-stream"
    );
    BackendError::new(
        BackendErrorKind::Unavailable,
        "the upstream server reported an error mid-stream; details are in the server log",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_codes_without_the_body() {
        let target = Target {
            name: "h:80".into(),
            chat: "http://u:pw@h/v1/chat/completions".into(),
            probe: "http://u:pw@h/v1/models".into(),
            shown: "http://u:***@h/v1/chat/completions".into(),
            secrets: Secrets::new(Some("sk-secret"), "http://u:pw@h/v1"),
        };
        let error = |status| refused(status, "Incorrect API key sk-secret", &target);
        let code = |status| error(status).kind.code();
        assert_eq!(code(429), tonic::Code::ResourceExhausted);
        assert_eq!(code(401), tonic::Code::Unavailable);
        assert_eq!(code(403), tonic::Code::Unavailable);
        assert_eq!(code(404), tonic::Code::Unavailable);
        assert_eq!(code(400), tonic::Code::InvalidArgument);
        assert_eq!(code(422), tonic::Code::InvalidArgument);
        assert_eq!(code(408), tonic::Code::DeadlineExceeded);
        assert_eq!(code(500), tonic::Code::Unavailable);
        assert_eq!(code(503), tonic::Code::Unavailable);
        for status in [400, 401, 500] {
            let message = error(status).message;
            assert!(message.contains(&status.to_string()), "{message}");
            assert!(!message.contains("Incorrect"), "{message}");
        }
    }

    #[test]
    fn secrets_are_scrubbed_and_quotes_bounded() {
        let secrets = Secrets::new(Some("sk-secret"), "http://u:pw0rd@h/v1");
        assert_eq!(
            secrets.scrub("key sk-secret at http://u:pw0rd@h"),
            "key *** at http://u:***@h"
        );
        assert_eq!(secrets.scrub(&"x".repeat(10_000)).len(), LOG_QUOTE_CHARS);
        assert_eq!(Secrets::new(None, "http://h/v1").scrub("a"), "a");
    }
}
