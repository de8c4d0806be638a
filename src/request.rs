//! Turns a wire request into a checked [`GenerateParams`], and reads the
//! client's deadline.
//!
//! Every check names the proto field at fault, so a client sees
//! `invalid max_tokens: 9000 is above this model's limit of 4096` rather than
//! a bare INVALID_ARGUMENT.

use std::time::Duration;

use crate::backend::{ChatMessage, GenerateParams, Input};
use crate::config::ModelConfig;
use crate::error::{Error, quote};
use crate::proto;
use crate::tenant::MAX_PRIORITY;

/// Most stop strings a request may carry.
pub const MAX_STOP_STRINGS: usize = 16;
/// Highest sampling temperature accepted.
pub const MAX_TEMPERATURE: f32 = 2.0;
/// Roles a chat message may have.
const ROLES: &[&str] = &["system", "user", "assistant", "tool", "developer"];

/// Checks a request against its model's limits.
pub fn params(
    request: proto::GenerateRequest,
    model: &ModelConfig,
) -> Result<GenerateParams, Error> {
    let proto::GenerateRequest {
        model: model_name,
        prompt,
        messages,
        max_tokens,
        temperature,
        stop,
        seed,
        priority,
    } = request;

    if priority > MAX_PRIORITY {
        return Err(Error::invalid(
            "priority",
            format!("{priority} is above {MAX_PRIORITY}"),
        ));
    }

    let input = match (prompt.is_empty(), messages.is_empty()) {
        (false, true) => Input::Prompt(prompt),
        (true, false) => Input::Messages(chat_messages(messages)?),
        (true, true) => {
            return Err(Error::invalid(
                "prompt",
                "the request has no input: set `prompt`, or `messages`",
            ));
        }
        (false, false) => {
            return Err(Error::invalid(
                "prompt",
                "set either `prompt` or `messages`, not both",
            ));
        }
    };

    if max_tokens > model.max_tokens {
        return Err(Error::invalid(
            "max_tokens",
            format!(
                "{max_tokens} is above the limit of model \"{}\", {}",
                model.name, model.max_tokens
            ),
        ));
    }

    if let Some(t) = temperature
        && !(0.0..=MAX_TEMPERATURE).contains(&t)
    {
        return Err(Error::invalid(
            "temperature",
            format!("{t} is outside 0 to {MAX_TEMPERATURE}"),
        ));
    }

    if stop.len() > MAX_STOP_STRINGS {
        return Err(Error::invalid(
            "stop",
            format!(
                "{} strings given, at most {MAX_STOP_STRINGS} allowed",
                stop.len()
            ),
        ));
    }
    if let Some(i) = stop.iter().position(String::is_empty) {
        return Err(Error::invalid(format!("stop[{i}]"), "must not be empty"));
    }

    Ok(GenerateParams {
        model: model_name,
        input,
        max_tokens: (max_tokens > 0).then_some(max_tokens),
        temperature,
        stop,
        seed,
    })
}

fn chat_messages(messages: Vec<proto::Message>) -> Result<Vec<ChatMessage>, Error> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(Error::invalid(
                    format!("messages[{i}].role"),
                    format!("{} is not one of {}", quote(&m.role), ROLES.join(", ")),
                ));
            }
            Ok(ChatMessage {
                role: m.role,
                content: m.content,
            })
        })
        .collect()
}

/// Reads the `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m,
/// u, n). A malformed header is ignored, as gRPC servers do.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value)
}

/// Parses a `grpc-timeout` value; `None` when malformed.
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendKind;

    fn model() -> ModelConfig {
        let mut m = ModelConfig::new("m", BackendKind::Simulated);
        m.max_tokens = 100;
        m
    }

    fn field_of(request: proto::GenerateRequest) -> String {
        match params(request, &model()) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    fn prompt(text: &str) -> proto::GenerateRequest {
        proto::GenerateRequest {
            model: "m".into(),
            prompt: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_prompt() {
        let p = params(prompt("hi"), &model()).unwrap();
        assert_eq!(p.input, Input::Prompt("hi".into()));
        assert_eq!(p.max_tokens, None);
    }

    #[test]
    fn names_the_field_at_fault() {
        assert_eq!(field_of(prompt("")), "prompt");
        assert_eq!(
            field_of(proto::GenerateRequest {
                max_tokens: 101,
                ..prompt("x")
            }),
            "max_tokens"
        );
        for t in [-0.1, 2.5, f32::NAN] {
            assert_eq!(
                field_of(proto::GenerateRequest {
                    temperature: Some(t),
                    ..prompt("x")
                }),
                "temperature"
            );
        }
        assert_eq!(
            field_of(proto::GenerateRequest {
                stop: vec!["a".into(), String::new()],
                ..prompt("x")
            }),
            "stop[1]"
        );
        assert_eq!(
            field_of(proto::GenerateRequest {
                prompt: String::new(),
                messages: vec![proto::Message {
                    role: "wizard".into(),
                    content: "x".into()
                }],
                ..prompt("")
            }),
            "messages[0].role"
        );
    }

    #[test]
    fn parses_grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
    }
}
