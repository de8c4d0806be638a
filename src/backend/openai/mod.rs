//! The OpenAI-compatible backend: a blocking HTTP client to vLLM, llama.cpp's
//! server, Ollama, OpenAI, or anything else that serves
//! `/v1/chat/completions`.
//!
//! Generate makes one non-streaming request; GenerateStream sets
//! `stream: true` and forwards each server-sent-event delta as it arrives.
//! Each exchange runs on a helper thread ([`exchange`]) so that a cancelled
//! or expired call frees its worker at once, whatever the upstream does; the
//! call's deadline bounds the whole HTTP exchange as well.
//!
//! Failures map to gRPC codes with a short safe message; the upstream's own
//! words go to the log ([`failure`] has the table). The model's health
//! follows the upstream ([`health`]). The API key is read once from the
//! named environment variable and never logged; a `base_url` with
//! `user:password@` is printed with the password hidden.

mod exchange;
mod failure;
mod health;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backend::{
    Backend, BackendError, BackendErrorKind, BackendFactory, CallContext, Completion, FinishReason,
    GenerateParams, Input, count_words,
};
use crate::config::{OpenAiConfig, redact_url};
use exchange::{Exchange, Piece, Request};
use failure::Secrets;
use health::{ProbeTarget, Prober, UpstreamHealth};

/// Makes the (stateless) backends of one model; they share one HTTP agent,
/// and so its connection pool, and the upstream's health.
pub struct OpenAiFactory {
    agent: ureq::Agent,
    upstream: Arc<Upstream>,
    health: Arc<UpstreamHealth>,
    /// Helper threads whose worker has left (see [`exchange`]).
    abandoned: Arc<AtomicUsize>,
    /// Stops the probe thread when the factory is dropped.
    _prober: Option<Prober>,
}

/// What every backend of a model needs to know about its upstream.
struct Upstream {
    /// The gateway's model name (names helper threads).
    model: String,
    /// `{base}/v1/chat/completions`, credentials included.
    url: String,
    /// The URL as logs show it (credentials hidden).
    shown: String,
    upstream_model: String,
    /// `Bearer <key>`; never logged.
    authorization: Option<String>,
    secrets: Secrets,
}

impl fmt::Debug for OpenAiFactory {
    // Not derived: the API key must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiFactory")
            .field("url", &self.upstream.shown)
            .field("upstream_model", &self.upstream.upstream_model)
            .field(
                "api_key",
                &self.upstream.authorization.as_ref().map(|_| "<set>"),
            )
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

    /// A factory with an explicit API key (for embedding and tests). Starts
    /// the thread that probes the upstream.
    pub fn new(model: &str, config: &OpenAiConfig, api_key: Option<String>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_millis(config.connect_timeout_ms)))
            .timeout_per_read(Some(Duration::from_millis(config.read_timeout_ms)))
            .user_agent(concat!("infergate/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let url = endpoint(&config.base_url, "chat/completions");
        let shown = redact_url(&url).into_owned();
        let authorization = api_key.as_ref().map(|key| format!("Bearer {key}"));
        let health = Arc::new(UpstreamHealth::new(model, &shown));
        let probe = ProbeTarget {
            agent: agent.clone(),
            url: endpoint(&config.base_url, "models"),
            authorization: authorization.clone(),
            secrets: Secrets::new(api_key.as_deref(), &config.base_url),
            interval: Duration::from_millis(config.health_interval_ms),
        };
        let prober = Prober::start(probe, health.clone())
            .inspect_err(|e| {
                tracing::warn!(model, error = %e, "cannot start the upstream probe; health follows the calls only");
            })
            .ok();
        OpenAiFactory {
            agent,
            upstream: Arc::new(Upstream {
                model: model.to_string(),
                url,
                shown,
                upstream_model: config.model.clone().unwrap_or_else(|| model.to_string()),
                authorization,
                secrets: Secrets::new(api_key.as_deref(), &config.base_url),
            }),
            health,
            abandoned: Arc::new(AtomicUsize::new(0)),
            _prober: prober,
        }
    }
}

/// `{base}/{path}` when the base ends in `/v1`, else `{base}/v1/{path}`.
fn endpoint(base_url: &str, path: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/{path}")
    } else {
        format!("{base}/v1/{path}")
    }
}

impl BackendFactory for OpenAiFactory {
    fn kind(&self) -> &str {
        "openai"
    }

    fn create(&self, _worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(OpenAiBackend {
            agent: self.agent.clone(),
            upstream: self.upstream.clone(),
            health: self.health.clone(),
            abandoned: self.abandoned.clone(),
        }))
    }

    fn is_up(&self) -> bool {
        self.health.is_up()
    }
}

/// One worker's client.
pub struct OpenAiBackend {
    agent: ureq::Agent,
    upstream: Arc<Upstream>,
    health: Arc<UpstreamHealth>,
    abandoned: Arc<AtomicUsize>,
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
            "model": self.upstream.upstream_model,
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

    /// Starts the exchange on a helper thread.
    fn start(&self, body: &Value, ctx: &CallContext<'_>) -> Result<Exchange, BackendError> {
        let request = Request {
            agent: self.agent.clone(),
            url: self.upstream.url.clone(),
            authorization: self.upstream.authorization.clone(),
            body: body.to_string(),
            streaming: ctx.is_streaming(),
            deadline: ctx.deadline(),
        };
        let name = format!("{}-http", self.upstream.model);
        Exchange::start(request, &self.abandoned, name).map_err(|e| {
            tracing::warn!(error = %e, "cannot start the upstream request thread");
            BackendError::new(
                BackendErrorKind::Unavailable,
                "the gateway cannot start the upstream request (out of threads?); retry later",
            )
        })
    }

    /// The client's error for a piece that is not the answer expected; logs
    /// the details.
    fn failure(&self, piece: Piece) -> BackendError {
        let upstream = self.upstream.shown.as_str();
        let secrets = &self.upstream.secrets;
        match piece {
            Piece::Refused { status, body } => {
                if status < 500 {
                    self.health.answered();
                }
                failure::refused(status, &body, upstream, secrets)
            }
            Piece::Failed(error) => {
                if failure::is_connect_failure(&error) {
                    self.health
                        .unreachable(&secrets.scrub(&format!("a call failed: {error}")));
                }
                failure::transport(&error, upstream, secrets)
            }
            Piece::Gone | Piece::Body(_) | Piece::Line(_) | Piece::End => {
                failure::helper_gone(upstream)
            }
        }
    }

    fn whole(
        &self,
        params: &GenerateParams,
        ctx: &mut CallContext<'_>,
    ) -> Result<Completion, BackendError> {
        let exchange = self.start(&self.body(params, false), ctx)?;
        let text = match exchange.next(ctx)? {
            Piece::Body(text) => text,
            other => return Err(self.failure(other)),
        };
        self.health.answered();
        let value: Value = serde_json::from_str(&text).map_err(|e| self.malformed(&e, &text))?;
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
        // Dropping the exchange on any return tells the helper to stop; it
        // then drops the response, which closes the connection: vLLM and
        // others take that as an abort.
        let exchange = self.start(&self.body(params, true), ctx)?;
        let mut finish_reason = None;
        let mut usage = Value::Null;
        let mut chunks = 0u32;
        let mut answered = false;
        loop {
            let line = match exchange.next(ctx)? {
                Piece::Line(line) => line,
                Piece::End => break,
                other => return Err(self.failure(other)),
            };
            if !answered {
                answered = true;
                self.health.answered();
            }
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue; // comments, event names, blank separators
            };
            if data == "[DONE]" {
                break;
            }
            let event: Value = serde_json::from_str(data).map_err(|e| self.malformed(&e, data))?;
            if let Some(error) = event.get("error") {
                return Err(failure::error_event(
                    &error.to_string(),
                    &self.upstream.shown,
                    &self.upstream.secrets,
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

    fn malformed(&self, error: &serde_json::Error, text: &str) -> BackendError {
        failure::malformed(error, text, &self.upstream.shown, &self.upstream.secrets)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_gets_v1_once() {
        assert_eq!(
            endpoint("http://h:8000/v1/", "chat/completions"),
            "http://h:8000/v1/chat/completions"
        );
        assert_eq!(
            endpoint("http://h:11434", "models"),
            "http://h:11434/v1/models"
        );
    }

    #[test]
    fn the_key_is_read_from_the_environment_and_never_printed() {
        let config = OpenAiConfig {
            // Always set in a test process; read without modifying it.
            api_key_env: Some("PATH".into()),
            ..OpenAiConfig::new("http://bob:pa55word@127.0.0.1:1/v1")
        };
        let factory = OpenAiFactory::from_config("m", &config);
        assert!(factory.upstream.authorization.is_some());
        let printed = format!("{factory:?} {config:?}");
        assert!(!printed.contains(&std::env::var("PATH").unwrap()));
        assert!(!printed.contains("pa55word"), "{printed}");
        assert!(printed.contains("bob:***@127.0.0.1:1"), "{printed}");
        assert_eq!(factory.upstream.upstream_model, "m");
    }
}
