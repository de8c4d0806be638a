//! The OpenAI chat-completions format: the request body, and the parts of
//! an answer (whole or streamed) the gateway reads.

use serde_json::{Value, json};

use crate::backend::{Completion, FinishReason, GenerateParams, Input, count_words};

/// The body of a chat completion request for `params`.
pub(super) fn request_body(params: &GenerateParams, upstream_model: &str, stream: bool) -> Value {
    let messages = match &params.input {
        Input::Prompt(prompt) => json!([{ "role": "user", "content": prompt }]),
        Input::Messages(messages) => messages
            .iter()
            .map(|m| json!({ "role": m.role, "content": m.content }))
            .collect(),
    };
    let mut body = json!({
        "model": upstream_model,
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

/// What a whole (non-streaming) answer says.
pub(super) struct Answer<'a> {
    /// The generated text (empty if none).
    pub(super) content: &'a str,
    pub(super) finish_reason: Option<&'a str>,
    pub(super) usage: &'a Value,
}

/// Reads a whole answer.
pub(super) fn answer(value: &Value) -> Answer<'_> {
    let choice = &value["choices"][0];
    Answer {
        content: choice["message"]["content"].as_str().unwrap_or_default(),
        finish_reason: choice["finish_reason"].as_str(),
        usage: &value["usage"],
    }
}

/// What one event of a streamed answer says.
pub(super) struct Chunk<'a> {
    /// The event is an error report.
    pub(super) error: Option<&'a Value>,
    /// The next piece of text, if any.
    pub(super) delta: Option<&'a str>,
    pub(super) finish_reason: Option<&'a str>,
    /// Token counts, in the last event when `include_usage` was asked.
    pub(super) usage: Option<&'a Value>,
}

/// Reads one event of a streamed answer.
pub(super) fn chunk(event: &Value) -> Chunk<'_> {
    let choice = &event["choices"][0];
    Chunk {
        error: event.get("error"),
        delta: choice["delta"]["content"]
            .as_str()
            .filter(|delta| !delta.is_empty()),
        finish_reason: choice["finish_reason"].as_str(),
        usage: Some(&event["usage"]).filter(|usage| !usage.is_null()),
    }
}

/// The completion of a call: the upstream's counts where it gave them,
/// else word counts (`counted` for the output).
pub(super) fn completion(
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

    fn params() -> GenerateParams {
        GenerateParams {
            model: "m".into(),
            input: Input::Prompt("a b c".into()),
            max_tokens: Some(5),
            temperature: Some(0.5),
            stop: vec!["END".into()],
            seed: Some(9),
        }
    }

    #[test]
    fn the_request_passes_the_sampling_settings_through() {
        let body = request_body(&params(), "up", true);
        assert_eq!(body["model"], "up");
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "a b c"}])
        );
        assert_eq!(
            (&body["max_tokens"], &body["stop"], &body["seed"]),
            (&json!(5), &json!(["END"]), &json!(9))
        );
        assert_eq!(body["stream_options"]["include_usage"], true);
        let plain = request_body(
            &GenerateParams {
                max_tokens: None,
                seed: None,
                ..params()
            },
            "up",
            false,
        );
        assert!(plain.get("max_tokens").is_none() && plain.get("seed").is_none());
        assert!(plain.get("stream_options").is_none());
    }

    #[test]
    fn counts_come_from_usage_or_words() {
        let usage = json!({"prompt_tokens": 7, "completion_tokens": 3});
        let done = completion(&params(), &usage, Some("length"), 1);
        assert_eq!((done.prompt_tokens, done.completion_tokens), (7, 3));
        assert_eq!(done.finish_reason, FinishReason::Length);
        let counted = completion(&params(), &Value::Null, None, 4);
        assert_eq!((counted.prompt_tokens, counted.completion_tokens), (3, 4));
        assert_eq!(counted.finish_reason, FinishReason::Stop);
    }

    #[test]
    fn chunks_are_read() {
        let event = json!({"choices": [{"delta": {"content": "hi"}, "finish_reason": null}]});
        let read = chunk(&event);
        assert_eq!(read.delta, Some("hi"));
        assert!(read.usage.is_none() && read.error.is_none() && read.finish_reason.is_none());
        let last = json!({"choices": [], "usage": {"completion_tokens": 2}});
        assert!(chunk(&last).usage.is_some());
        let empty = json!({"choices": [{"delta": {"content": ""}, "finish_reason": "stop"}]});
        assert_eq!(
            (chunk(&empty).delta, chunk(&empty).finish_reason),
            (None, Some("stop"))
        );
    }
}
