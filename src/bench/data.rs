//! What `infergate bench` sends: the method, the request messages (from
//! `-d` proto JSON), and the metadata.

use serde_json::Value;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

use crate::proto;

/// The methods the load generator can call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `infergate.v1.Inference/Generate`.
    Generate,
    /// `infergate.v1.Inference/GenerateStream`: a call ends with its stream.
    GenerateStream,
    /// `infergate.v1.Inference/ListModels`.
    ListModels,
}

impl Call {
    /// Accepts `infergate.v1.Inference/Generate`, ghz's
    /// `infergate.v1.Inference.Generate`, or just `Generate`.
    pub fn parse(text: &str) -> Result<Call, String> {
        let method = text.rsplit(['/', '.']).next().unwrap_or(text);
        let service = text[..text.len() - method.len()].trim_end_matches(['/', '.']);
        if !(service.is_empty() || service == "infergate.v1.Inference") {
            return Err(format!(
                "--call {text:?}: this load generator calls infergate.v1.Inference only"
            ));
        }
        match method {
            "Generate" => Ok(Call::Generate),
            "GenerateStream" => Ok(Call::GenerateStream),
            "ListModels" => Ok(Call::ListModels),
            _ => Err(format!(
                "--call {text:?}: unknown method (Generate, GenerateStream, ListModels)"
            )),
        }
    }

    /// The full method name.
    pub fn full_name(self) -> &'static str {
        match self {
            Call::Generate => "infergate.v1.Inference.Generate",
            Call::GenerateStream => "infergate.v1.Inference.GenerateStream",
            Call::ListModels => "infergate.v1.Inference.ListModels",
        }
    }
}

/// Parses `-d`: one request object, or an array of them used in turn.
/// Field names are accepted in proto (`max_tokens`) and JSON
/// (`maxTokens`) form; unknown fields are refused, naming them.
pub fn requests(data: &str) -> Result<Vec<proto::GenerateRequest>, String> {
    let value: Value =
        serde_json::from_str(data).map_err(|e| format!("-d is not valid JSON: {e}"))?;
    let items = match value {
        Value::Array(items) if items.is_empty() => {
            return Err("-d: the array is empty".into());
        }
        Value::Array(items) => items,
        other => vec![other],
    };
    items.iter().map(request).collect()
}

fn request(value: &Value) -> Result<proto::GenerateRequest, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("-d: expected a JSON object, got {value}"))?;
    let mut request = proto::GenerateRequest::default();
    for (key, value) in object {
        let bad = |what: &str| format!("-d: field {key:?} must be {what}");
        match key.as_str() {
            "model" => request.model = value.as_str().ok_or_else(|| bad("a string"))?.into(),
            "prompt" => request.prompt = value.as_str().ok_or_else(|| bad("a string"))?.into(),
            "messages" => {
                let list = value.as_array().ok_or_else(|| bad("an array"))?;
                for message in list {
                    let field = |name: &str| {
                        message[name]
                            .as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad("an array of {role, content}"))
                    };
                    request.messages.push(proto::Message {
                        role: field("role")?,
                        content: field("content")?,
                    });
                }
            }
            "max_tokens" | "maxTokens" => {
                request.max_tokens = value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad("a whole number"))?;
            }
            "temperature" => {
                request.temperature = Some(value.as_f64().ok_or_else(|| bad("a number"))? as f32);
            }
            "stop" => {
                request.stop = value
                    .as_array()
                    .ok_or_else(|| bad("an array of strings"))?
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad("an array of strings"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "seed" => {
                // protojson writes 64-bit integers as strings.
                let seed = value
                    .as_u64()
                    .or_else(|| value.as_str().and_then(|s| s.parse().ok()));
                request.seed = Some(seed.ok_or_else(|| bad("a whole number"))?);
            }
            other => {
                return Err(format!(
                    "-d: unknown field {other:?} (model, prompt, messages, max_tokens, temperature, stop, seed)"
                ));
            }
        }
    }
    Ok(request)
}

/// Parses `-m`: a JSON object of string values.
pub fn metadata(text: Option<&str>) -> Result<MetadataMap, String> {
    let mut map = MetadataMap::new();
    let Some(text) = text else { return Ok(map) };
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("-m is not valid JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "-m: expected a JSON object of strings".to_string())?;
    for (key, value) in object {
        let value = value
            .as_str()
            .ok_or_else(|| format!("-m: the value of {key:?} must be a string"))?;
        let key = MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("-m: {key:?} is not a valid metadata key"))?;
        let value = MetadataValue::try_from(value)
            .map_err(|_| format!("-m: the value of {key:?} is not valid ASCII"))?;
        map.insert(key, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_parse_in_every_form() {
        assert_eq!(
            Call::parse("infergate.v1.Inference/Generate"),
            Ok(Call::Generate)
        );
        assert_eq!(
            Call::parse("infergate.v1.Inference.GenerateStream"),
            Ok(Call::GenerateStream)
        );
        assert_eq!(Call::parse("ListModels"), Ok(Call::ListModels));
        assert!(Call::parse("helloworld.Greeter/SayHello").is_err());
        assert!(Call::parse("infergate.v1.Inference/Nope").is_err());
    }

    #[test]
    fn data_takes_objects_arrays_and_both_field_spellings() {
        let one = requests(r#"{"model":"a","prompt":"p","maxTokens":5,"seed":"7"}"#).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].max_tokens, 5);
        assert_eq!(one[0].seed, Some(7));
        let two = requests(r#"[{"model":"a","prompt":"x"},{"model":"b","messages":[{"role":"user","content":"y"}]}]"#).unwrap();
        assert_eq!(two[1].messages[0].content, "y");
        assert!(requests(r#"{"modle":"a"}"#).unwrap_err().contains("modle"));
        assert!(requests("[]").is_err());
        assert!(requests("{").is_err());
    }

    #[test]
    fn metadata_is_an_object_of_strings() {
        let map = metadata(Some(r#"{"x-tenant":"a"}"#)).unwrap();
        assert_eq!(map.get("x-tenant").unwrap(), "a");
        assert!(metadata(Some(r#"{"x":1}"#)).is_err());
        assert!(metadata(None).unwrap().is_empty());
    }
}
