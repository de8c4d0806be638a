//! One call: pick an upstream, send the request, read the answer (whole,
//! or event by event, each delta forwarded as it comes), and, while
//! nothing of the answer has been received, try another upstream.
//!
//! Tried again on another upstream (never one already tried; the call's
//! deadline bounds them all): a connect failure, a 503, and a 429 with
//! `Retry-After`, the answers that say the upstream did not take the
//! request. Nothing is tried again once an answer's body began, so a stream
//! never repeats a token and a Generate never pays twice for one answer.
//! With no upstream left to try, the call fails with the last error; with
//! none up at all, at once with UNAVAILABLE, so that a fallback can take
//! it.

use std::pin::pin;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use super::http::{self, Failure, MAX_ANSWER_BYTES};
use super::sse::{self, SseError};
use super::upstreams::{InFlight, Verdict};
use super::{OpenAiBackend, Shared, Target, failure, wire};
use crate::backend::{
    AsyncBackend, AsyncContext, BackendError, BackendFuture, Completion, GenerateParams,
    count_words,
};
use crate::metrics::upstream::Code;

impl AsyncBackend for OpenAiBackend {
    fn generate<'a>(
        &'a self,
        params: &'a GenerateParams,
        ctx: &'a mut AsyncContext,
    ) -> BackendFuture<'a> {
        Box::pin(async move {
            let shared = &self.shared;
            shared.prober.start(shared);
            let deadline = ctx.deadline();
            tokio::time::timeout_at(deadline.into(), shared.call(params, ctx))
                .await
                .unwrap_or_else(|_| Err(failure::too_late()))
        })
    }
}

/// How one attempt failed.
enum Failed {
    /// Before any of the answer came, in a way another upstream need not
    /// share: try one.
    Retry(BackendError),
    /// For good.
    Final(BackendError),
}

type Attempt<'a> = InFlight<'a, Target>;

impl Shared {
    async fn call(
        &self,
        params: &GenerateParams,
        ctx: &mut AsyncContext,
    ) -> Result<Completion, BackendError> {
        let body = wire::request_body(params, &self.upstream_model, ctx.is_streaming());
        let body = Bytes::from(body.to_string());
        let mut rng = fastrand::Rng::new();
        // Bounded by the number of upstreams: each is tried once at most.
        let mut tried = Vec::new();
        let mut last = None;
        loop {
            let now = Instant::now();
            let Some(mut attempt) = self.upstreams.pick(&tried, now, ctx.deadline(), &mut rng)
            else {
                return Err(last.unwrap_or_else(failure::none_up));
            };
            tried.push(attempt.index());
            match self.attempt(&mut attempt, body.clone(), params, ctx).await {
                Ok(completion) => return Ok(completion),
                Err(Failed::Final(error)) => return Err(error),
                Err(Failed::Retry(error)) => {
                    tracing::debug!(upstream = %attempt.upstream().name, "trying another upstream");
                    last = Some(error);
                }
            }
        }
    }

    /// One request to the upstream `attempt` picked.
    async fn attempt(
        &self,
        attempt: &mut Attempt<'_>,
        body: Bytes,
        params: &GenerateParams,
        ctx: &mut AsyncContext,
    ) -> Result<Completion, Failed> {
        let target = &attempt.upstream().target;
        let response = match self.http.post(&target.chat, body).await {
            Ok(response) => response,
            Err((failure, error)) => {
                let text =
                    error.map_or_else(|| "no HTTP client".into(), |e| crate::error::chain(&e));
                let error = failed(attempt, failure, &text);
                if failure == Failure::Connect {
                    attempt.verdict(Verdict::Failed);
                    return Err(Failed::Retry(error));
                }
                return Err(Failed::Final(error));
            }
        };
        let status = response.status().as_u16();
        attempt.verdict(if status >= 500 {
            Verdict::Failed
        } else {
            Verdict::Answered
        });
        if status != 200 {
            let retry = http::may_retry(&response);
            let text = http::error_body(response).await;
            attempt.set_code(Code::Status(status));
            let error = failure::refused(status, &text, target);
            return Err(if retry {
                Failed::Retry(error)
            } else {
                Failed::Final(error)
            });
        }
        let result = if ctx.is_streaming() {
            streamed(attempt, response, params, ctx).await
        } else {
            whole(attempt, response, params, ctx).await
        };
        result.map_err(Failed::Final)
    }
}

/// Reads a whole answer, then gives its text to the caller at once.
async fn whole(
    attempt: &mut Attempt<'_>,
    response: reqwest::Response,
    params: &GenerateParams,
    ctx: &mut AsyncContext,
) -> Result<Completion, BackendError> {
    let target = &attempt.upstream().target;
    let bytes = match http::read_body(response, MAX_ANSWER_BYTES).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            attempt.set_code(Code::Other("malformed"));
            let why = format!("the answer is longer than {MAX_ANSWER_BYTES} bytes");
            return Err(failure::malformed(&why, "", target));
        }
        Err(error) => {
            return Err(failed(
                attempt,
                Failure::of(&error),
                &crate::error::chain(&error),
            ));
        }
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|error| {
        attempt.set_code(Code::Other("malformed"));
        failure::malformed(&error, &String::from_utf8_lossy(&bytes), target)
    })?;
    attempt.set_code(Code::Status(200));
    let answer = wire::answer(&value);
    if !answer.content.is_empty() {
        ctx.emit(answer.content).await?;
    }
    Ok(wire::completion(
        params,
        answer.usage,
        answer.finish_reason,
        count_words(answer.content),
    ))
}

/// Forwards each delta of an event stream as it comes.
async fn streamed(
    attempt: &mut Attempt<'_>,
    response: reqwest::Response,
    params: &GenerateParams,
    ctx: &mut AsyncContext,
) -> Result<Completion, BackendError> {
    let target = &attempt.upstream().target;
    let mut events = pin!(sse::data(Box::pin(response.bytes_stream())));
    let mut finish_reason = None;
    let mut usage = Value::Null;
    let mut pieces = 0u32;
    while let Some(data) = events.next().await {
        let data = match data {
            Ok(data) => data,
            Err(SseError::Read(error)) => {
                return Err(failed(
                    attempt,
                    Failure::of(&error),
                    &crate::error::chain(&error),
                ));
            }
            Err(SseError::TooLong) => {
                attempt.set_code(Code::Other("malformed"));
                let why = format!("an event is longer than {} bytes", sse::MAX_EVENT_BYTES);
                return Err(failure::malformed(&why, "", target));
            }
            Err(SseError::Invalid(why)) => {
                attempt.set_code(Code::Other("malformed"));
                return Err(failure::malformed(&why, "", target));
            }
        };
        if data.trim() == "[DONE]" {
            break;
        }
        let event: Value = serde_json::from_str(&data).map_err(|error| {
            attempt.set_code(Code::Other("malformed"));
            failure::malformed(&error, &data, target)
        })?;
        let chunk = wire::chunk(&event);
        if let Some(error) = chunk.error {
            attempt.set_code(Code::Other("error_event"));
            return Err(failure::error_event(&error.to_string(), target));
        }
        if let Some(counts) = chunk.usage {
            usage = counts.clone();
        }
        if let Some(reason) = chunk.finish_reason {
            finish_reason = Some(reason.to_string());
        }
        if let Some(delta) = chunk.delta {
            pieces = pieces.saturating_add(1);
            ctx.emit(delta).await?;
        }
    }
    attempt.set_code(Code::Status(200));
    Ok(wire::completion(
        params,
        &usage,
        finish_reason.as_deref(),
        pieces,
    ))
}

/// Counts a failed request under its code and makes the client's error
/// (logging the details).
fn failed(attempt: &mut Attempt<'_>, failure: Failure, error: &str) -> BackendError {
    attempt.set_code(Code::Other(match failure {
        Failure::Connect => "connect_error",
        Failure::Timeout => "timeout",
        Failure::Transport => "transport_error",
    }));
    failure::transport(failure, error, &attempt.upstream().target)
}
