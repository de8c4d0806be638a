//! The OpenAI-compatible backend: a blocking HTTP client to vLLM, llama.cpp's
//! server, Ollama, OpenAI, or anything else that serves
//! `/v1/chat/completions`.
//!
//! Generate makes one non-streaming request; GenerateStream sets
//! `stream: true` and forwards each server-sent-event delta as it arrives.
//! The call's deadline bounds the whole HTTP exchange. Cancellation is seen
//! between streamed chunks (the connection is then dropped, which vLLM and
//! others take as an abort); a non-streaming request runs until it answers
//! or its deadline passes.
//!
//! HTTP failures keep the upstream's message and map to gRPC codes: 429 →
//! RESOURCE_EXHAUSTED, 401 → UNAUTHENTICATED, 403 → PERMISSION_DENIED,
//! other 4xx → INVALID_ARGUMENT, 5xx and connection errors → UNAVAILABLE,
//! timeouts → DEADLINE_EXCEEDED. The API key is read once from the named
//! environment variable and never logged.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::backend::{
    Backend, BackendError, BackendErrorKind, BackendFactory, CallContext, Completion, FinishReason,
    GenerateParams, Input, count_words,
};
use crate::config::OpenAiConfig;

/// Most bytes of an error response kept for the message.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// Most bytes of a non-streaming response.
const RESPONSE_LIMIT: u64 = 64 * 1024 * 1024;

/// Makes the (stateless) backends of one model; they share one HTTP agent,
/// and so its connection pool.
pub struct OpenAiFactory {
    agent: ureq::Agent,
    url: String,
    upstream_model: String,
    api_key: Option<String>,
}

impl fmt::Debug for OpenAiFactory {
    // Not derived: the API key must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiFactory")
            .field("url", &self.url)
            .field("upstream_model", &self.upstream_model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl OpenAiFactory {
    /// A factory for `model`, reading the API key from the environment
    /// variable the config names (if any).
    pub fn from_config(model: &str, config: &OpenAiConfig) -> Self {
        let api_key = config
            .api_key_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok());
        Self::new(model, config, api_key)
    }

    /// A factory with an explicit API key (for embedding and tests).
    pub fn new(model: &str, config: &OpenAiConfig, api_key: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_millis(config.connect_timeout_ms)))
            .timeout_per_read(Some(Duration::from_millis(config.read_timeout_ms)))
            .user_agent(concat!("infergate/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        OpenAiFactory {
            agent,
            url: chat_completions_url(&config.base_url),
            upstream_model: config.model.clone().unwrap_or_else(|| model.to_string()),
            api_key,
        }
    }
}

/// `{base}/chat/completions` when the base ends in `/v1`, else
/// `{base}/v1/chat/completions`.
fn chat_completions_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

impl BackendFactory for OpenAiFactory {
    fn kind(&self) -> &str {
        "openai"
    }

    fn create(&self, _worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(OpenAiBackend {
            agent: self.agent.clone(),
            url: self.url.clone(),
            upstream_model: self.upstream_model.clone(),
            authorization: self.api_key.as_ref().map(|key| format!("Bearer {key}")),
        }))
    }
}

/// One worker's client.
pub struct OpenAiBackend {
    agent: ureq::Agent,
    url: String,
    upstream_model: String,
    /// `Bearer <key>`; never logged.
    authorization: Option<String>,
}

impl OpenAiBackend {
    fn body(&self, params: &GenerateParams, stream: bool) -> Value {
        let messages = match &params.input {
            Input::Prompt(prompt) => json!([{ "role": "user", "content": prompt }]),
            Input::Messages(messages) => messages
                .iter()
                .map(|m| json!({ "role": m.role, "content": m.content }))
                .collect(),
        };
        let mut body = json!({
            "model": self.upstream_model,
            "messages": messages,
            "stream": stream,
        });
        if let Some(max_tokens) = params.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if let Some(temperature) = params.temperature {
            body["temperature"] = json!(temperature);
        }
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        if let Some(seed) = params.seed {
            body["seed"] = json!(seed);
        }
        if stream {
            body["stream_options"] = json!({ "include_usage": true });
        }
        body
    }

    fn send(
        &self,
        body: &Value,
        deadline: Instant,
    ) -> Result<ureq::http::Response<ureq::Body>, BackendError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut request = self
            .agent
            .post(&self.url)
            .config()
            .timeout_global(Some(left))
            .build()
            .header("content-type", "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        let mut response = request
            .send(body.to_string())
            .map_err(|e| transport_error(&self.url, e))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(ERROR_BODY_LIMIT)
            .read_to_string()
            .unwrap_or_default();
        Err(status_error(status, &text))
    }

    fn whole(
        &self,
        params: &GenerateParams,
        ctx: &mut CallContext<'_>,
    ) -> Result<Completion, BackendError> {
        let mut response = self.send(&self.body(params, false), ctx.deadline())?;
        let text = response
            .body_mut()
            .with_config()
            .limit(RESPONSE_LIMIT)
            .read_to_string()
            .map_err(|e| transport_error(&self.url, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| malformed(&e, &text))?;
        let choice = &value["choices"][0];
        let content = choice["message"]["content"].as_str().unwrap_or_default();
        if !content.is_empty() {
            ctx.emit(content)?;
        }
        Ok(completion(
            params,
            &value["usage"],
            choice["finish_reason"].as_str(),
            count_words(content),
        ))
    }

    fn streamed(
        &self,
        params: &GenerateParams,
        ctx: &mut CallContext<'_>,
    ) -> Result<Completion, BackendError> {
        let response = self.send(&self.body(params, true), ctx.deadline())?;
        let reader = BufReader::new(response.into_body().into_reader());
        let mut finish_reason = None;
        let mut usage = Value::Null;
        let mut chunks = 0u32;
        for line in reader.lines() {
            let line = line.map_err(|e| {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    BackendError::new(
                        BackendErrorKind::DeadlineExceeded,
                        format!("{} stopped sending: {e}", self.url),
                    )
                } else {
                    BackendError::new(
                        BackendErrorKind::Unavailable,
                        format!("reading the stream from {} failed: {e}", self.url),
                    )
                }
            })?;
            // Dropping the response closes the connection: the server stops.
            if ctx.is_cancelled() {
                return Err(BackendError::cancelled());
            }
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue; // comments, event names, blank separators
            };
            if data == "[DONE]" {
                break;
            }
            let event: Value = serde_json::from_str(data).map_err(|e| malformed(&e, data))?;
            if let Some(error) = event.get("error") {
                return Err(BackendError::new(
                    BackendErrorKind::Unavailable,
                    format!("upstream error mid-stream: {}", error_message(error)),
                ));
            }
            if !event["usage"].is_null() {
                usage = event["usage"].clone();
            }
            let choice = &event["choices"][0];
            if let Some(delta) = choice["delta"]["content"].as_str()
                && !delta.is_empty()
            {
                chunks = chunks.saturating_add(1);
                ctx.emit(delta)?;
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish_reason = Some(reason.to_string());
            }
        }
        Ok(completion(params, &usage, finish_reason.as_deref(), chunks))
    }
}

impl Backend for OpenAiBackend {
    fn generate(
        &mut self,
        params: &GenerateParams,
        ctx: &mut CallContext<'_>,
    ) -> Result<Completion, BackendError> {
        if ctx.is_streaming() {
            self.streamed(params, ctx)
        } else {
            self.whole(params, ctx)
        }
    }
}

fn completion(
    params: &GenerateParams,
    usage: &Value,
    finish_reason: Option<&str>,
    counted: u32,
) -> Completion {
    let count = |field: &str| usage[field].as_u64().and_then(|n| u32::try_from(n).ok());
    Completion {
        finish_reason: match finish_reason {
            Some("length") => FinishReason::Length,
            _ => FinishReason::Stop,
        },
        prompt_tokens: count("prompt_tokens").unwrap_or_else(|| count_words(&params.input.text())),
        completion_tokens: count("completion_tokens").unwrap_or(counted),
    }
}

/// Maps an HTTP error status to the gRPC code it means for our client.
fn status_error(status: u16, body: &str) -> BackendError {
    let kind = match status {
        429 => BackendErrorKind::ResourceExhausted,
        401 => BackendErrorKind::Unauthenticated,
        403 => BackendErrorKind::PermissionDenied,
        408 => BackendErrorKind::DeadlineExceeded,
        400..=499 => BackendErrorKind::InvalidArgument,
        _ => BackendErrorKind::Unavailable,
    };
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(error_message))
        .unwrap_or_else(|| body.chars().take(500).collect());
    BackendError::new(kind, format!("upstream answered HTTP {status}: {message}"))
}

/// The message of an OpenAI error object (`{"message": …}`) or string.
fn error_message(error: &Value) -> String {
    error["message"]
        .as_str()
        .or_else(|| error.as_str())
        .map_or_else(|| error.to_string(), str::to_string)
}

fn transport_error(url: &str, error: ureq::Error) -> BackendError {
    match error {
        ureq::Error::Timeout(which) => BackendError::new(
            BackendErrorKind::DeadlineExceeded,
            format!("{url} did not answer in time ({which})"),
        ),
        other => BackendError::new(
            BackendErrorKind::Unavailable,
            format!("cannot reach {url}: {other}"),
        ),
    }
}

fn malformed(error: &serde_json::Error, text: &str) -> BackendError {
    let quoted: String = text.chars().take(200).collect();
    BackendError::new(
        BackendErrorKind::Unavailable,
        format!("the upstream answer is not the OpenAI format ({error}): {quoted:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_gets_v1_once() {
        assert_eq!(
            chat_completions_url("http://h:8000/v1/"),
            "http://h:8000/v1/chat/completions"
        );
        assert_eq!(
            chat_completions_url("http://h:11434"),
            "http://h:11434/v1/chat/completions"
        );
    }

    #[test]
    fn statuses_map_to_codes() {
        let code = |status| status_error(status, "{}").kind.code();
        assert_eq!(code(429), tonic::Code::ResourceExhausted);
        assert_eq!(code(401), tonic::Code::Unauthenticated);
        assert_eq!(code(403), tonic::Code::PermissionDenied);
        assert_eq!(code(404), tonic::Code::InvalidArgument);
        assert_eq!(code(500), tonic::Code::Unavailable);
        assert_eq!(code(503), tonic::Code::Unavailable);
        let e = status_error(400, r#"{"error":{"message":"max_tokens is too large"}}"#);
        assert!(
            e.message.contains("max_tokens is too large"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_key_is_read_from_the_environment_and_never_printed() {
        let config = OpenAiConfig {
            base_url: "http://127.0.0.1:1/v1".into(),
            model: None,
            // Always set in a test process; read without modifying it.
            api_key_env: Some("PATH".into()),
            connect_timeout_ms: 10,
            read_timeout_ms: 10,
        };
        let factory = OpenAiFactory::from_config("m", &config);
        assert!(factory.api_key.is_some());
        let printed = format!("{factory:?}");
        assert!(!printed.contains(&std::env::var("PATH").unwrap()));
        assert_eq!(factory.upstream_model, "m");
    }
}
