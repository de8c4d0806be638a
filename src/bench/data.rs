//! The request messages of a run: `-d` / `-D` proto JSON, one object or an
//! array used round-robin, with ghz's call templates rendered per call.
//!
//! The JSON is parsed once. A string value holding a template (`"prompt":
//! "hello {{.RequestNumber}}"`) becomes a slot of the message that each call
//! renders into its own copy; the rest is cloned as is. Data that is JSON
//! only once rendered (`"max_tokens": {{.RequestNumber}}`, as ghz renders
//! the whole text) is rendered and parsed per call: correct, but slower.

use serde_json::Value;

use crate::bench::calldata::CallData;
use crate::bench::template::Template;
use crate::proto;

/// The fields of a GenerateRequest, for error messages.
const FIELD_NAMES: &str = "model, prompt, messages, max_tokens, temperature, stop, seed";

/// The messages a run sends.
#[derive(Debug)]
pub enum Messages {
    /// Parsed once; templated strings are rendered per call.
    Items(Vec<Item>),
    /// JSON only once rendered: rendered and parsed per call.
    Text(Template),
}

/// One request message and its templated fields.
#[derive(Debug)]
pub struct Item {
    base: proto::GenerateRequest,
    slots: Vec<(Slot, Template)>,
}

/// A field of a GenerateRequest that a template fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Model,
    Prompt,
    Role(usize),
    Content(usize),
    Stop(usize),
    MaxTokens,
    Temperature,
    Seed,
}

impl Messages {
    /// Parses the data: one request object, or an array of them used in
    /// turn. Field names are accepted in proto (`max_tokens`) and JSON
    /// (`maxTokens`) form; unknown fields are refused, naming them. Every
    /// template is rendered once here, so that one that cannot make a valid
    /// message fails now rather than on every call.
    pub fn parse(data: &str, sample: &CallData<'_>) -> Result<Messages, String> {
        let messages = match serde_json::from_str::<Value>(data) {
            Ok(value) => Messages::Items(items(&value)?),
            Err(e) => match Template::parse(data) {
                Ok(Some(template)) => Messages::Text(template),
                Ok(None) => return Err(format!("-d is not valid JSON: {e}")),
                Err(template) => return Err(format!("-d: {template}")),
            },
        };
        messages.message(0, sample)?;
        Ok(messages)
    }

    /// Messages without templates, used in turn (binary data).
    pub fn fixed(messages: Vec<proto::GenerateRequest>) -> Messages {
        Messages::Items(
            messages
                .into_iter()
                .map(|base| Item {
                    base,
                    slots: Vec::new(),
                })
                .collect(),
        )
    }

    /// The message of call number `i`.
    pub fn message(&self, i: u64, call: &CallData<'_>) -> Result<proto::GenerateRequest, String> {
        match self {
            Messages::Items(items) => items[index(i, items.len())].render(call),
            Messages::Text(template) => {
                let text = template.render(call);
                let value: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("-d rendered to invalid JSON ({e}): {text}"))?;
                let items = items(&value)?;
                items[index(i, items.len())].render(call)
            }
        }
    }

    /// How many messages are used in turn (1 for templated text).
    pub fn len(&self) -> usize {
        match self {
            Messages::Items(items) => items.len(),
            Messages::Text(_) => 1,
        }
    }

    /// Never true: parsing refuses an empty array.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn index(i: u64, len: usize) -> usize {
    usize::try_from(i).unwrap_or(0) % len.max(1)
}

impl Item {
    fn render(&self, call: &CallData<'_>) -> Result<proto::GenerateRequest, String> {
        let mut message = self.base.clone();
        for (slot, template) in &self.slots {
            set(&mut message, *slot, template.render(call))?;
        }
        Ok(message)
    }

    /// A string field: a template becomes a slot, plain text is set now.
    fn text(&mut self, slot: Slot, key: &str, value: &Value, what: &str) -> Result<(), String> {
        let text = value.as_str().ok_or_else(|| bad(key, what))?;
        match Template::parse(text).map_err(|e| format!("-d: field {key:?}: {e}"))? {
            Some(template) => self.slots.push((slot, template)),
            None => set(&mut self.base, slot, text.to_string())?,
        }
        Ok(())
    }

    /// A number field: a number, or a string (protojson's form for 64-bit
    /// integers), which may be a template.
    fn number(&mut self, slot: Slot, key: &str, value: &Value) -> Result<(), String> {
        match value {
            Value::Number(n) => set(&mut self.base, slot, n.to_string()),
            Value::String(_) => self.text(slot, key, value, "a number"),
            _ => Err(bad(key, "a number")),
        }
    }
}

fn items(value: &Value) -> Result<Vec<Item>, String> {
    match value {
        Value::Array(items) if items.is_empty() => Err("-d: the array is empty".into()),
        Value::Array(items) => items.iter().map(item).collect(),
        other => Ok(vec![item(other)?]),
    }
}

fn item(value: &Value) -> Result<Item, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("-d: expected a JSON object, got {value}"))?;
    let mut item = Item {
        base: proto::GenerateRequest::default(),
        slots: Vec::new(),
    };
    for (key, value) in object {
        match key.as_str() {
            "model" => item.text(Slot::Model, key, value, "a string")?,
            "prompt" => item.text(Slot::Prompt, key, value, "a string")?,
            "messages" => {
                let list = value.as_array().ok_or_else(|| bad(key, "an array"))?;
                for (i, message) in list.iter().enumerate() {
                    item.base.messages.push(proto::Message::default());
                    let what = "an array of {role, content}";
                    item.text(Slot::Role(i), key, &message["role"], what)?;
                    item.text(Slot::Content(i), key, &message["content"], what)?;
                }
            }
            "max_tokens" | "maxTokens" => item.number(Slot::MaxTokens, key, value)?,
            "temperature" => item.number(Slot::Temperature, key, value)?,
            "stop" => {
                let what = "an array of strings";
                let list = value.as_array().ok_or_else(|| bad(key, what))?;
                for (i, stop) in list.iter().enumerate() {
                    item.base.stop.push(String::new());
                    item.text(Slot::Stop(i), key, stop, what)?;
                }
            }
            "seed" => item.number(Slot::Seed, key, value)?,
            other => {
                return Err(format!("-d: unknown field {other:?} ({FIELD_NAMES})"));
            }
        }
    }
    Ok(item)
}

fn bad(key: &str, what: &str) -> String {
    format!("-d: field {key:?} must be {what}")
}

/// Sets a field from its (rendered) text.
fn set(message: &mut proto::GenerateRequest, slot: Slot, text: String) -> Result<(), String> {
    let number_error =
        |key: &str, what: &str| format!("-d: field {key:?} must be {what}, got {text:?}");
    match slot {
        Slot::Model => message.model = text,
        Slot::Prompt => message.prompt = text,
        Slot::Role(i) => {
            if let Some(m) = message.messages.get_mut(i) {
                m.role = text;
            }
        }
        Slot::Content(i) => {
            if let Some(m) = message.messages.get_mut(i) {
                m.content = text;
            }
        }
        Slot::Stop(i) => {
            if let Some(stop) = message.stop.get_mut(i) {
                *stop = text;
            }
        }
        Slot::MaxTokens => {
            message.max_tokens = text
                .trim()
                .parse()
                .map_err(|_| number_error("max_tokens", "a whole number"))?;
        }
        Slot::Temperature => {
            message.temperature = Some(
                text.trim()
                    .parse()
                    .map_err(|_| number_error("temperature", "a number"))?,
            );
        }
        Slot::Seed => {
            message.seed = Some(
                text.trim()
                    .parse()
                    .map_err(|_| number_error("seed", "a whole number"))?,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::call::Call;
    use std::time::SystemTime;

    fn call(n: u64) -> CallData<'static> {
        CallData::new(Call::Generate, "g0c0", n, SystemTime::now())
    }

    fn parse(data: &str) -> Result<Messages, String> {
        Messages::parse(data, &call(0))
    }

    #[test]
    fn data_takes_objects_arrays_and_both_field_spellings() {
        let one = parse(r#"{"model":"a","prompt":"p","maxTokens":5,"seed":"7"}"#).unwrap();
        assert_eq!(one.len(), 1);
        let m = one.message(0, &call(0)).unwrap();
        assert_eq!((m.max_tokens, m.seed), (5, Some(7)));
        let two = parse(r#"[{"model":"a","prompt":"x"},{"model":"b","messages":[{"role":"user","content":"y"}]}]"#).unwrap();
        assert_eq!(two.message(1, &call(1)).unwrap().messages[0].content, "y");
        assert_eq!(two.message(2, &call(2)).unwrap().model, "a");
        assert!(parse(r#"{"modle":"a"}"#).unwrap_err().contains("modle"));
        assert!(parse("[]").is_err());
        assert!(parse("{").is_err());
        assert!(parse(r#"{"max_tokens":"x"}"#).is_err());
    }

    #[test]
    fn templates_render_per_call() {
        let data = parse(
            r#"{"model":"echo","prompt":"n {{.RequestNumber}}","seed":"{{.RequestNumber}}","stop":["{{.WorkerID}}"]}"#,
        )
        .unwrap();
        let m = data.message(41, &call(41)).unwrap();
        assert_eq!(m.prompt, "n 41");
        assert_eq!(m.seed, Some(41));
        assert_eq!(m.stop, ["g0c0"]);
        assert_eq!(m.model, "echo");
    }

    #[test]
    fn text_that_is_json_only_once_rendered_works() {
        let data =
            parse(r#"{"model":"echo","prompt":"x","max_tokens":{{.RequestNumber}}}"#).unwrap();
        assert_eq!(data.message(9, &call(9)).unwrap().max_tokens, 9);
    }

    #[test]
    fn a_template_that_cannot_make_a_message_fails_at_once() {
        let error = parse(r#"{"model":"echo","max_tokens":"{{.WorkerID}}"}"#).unwrap_err();
        assert!(error.contains("max_tokens"), "{error}");
        assert!(parse(r#"{"prompt":"{{sprigThing}}"}"#).is_err());
    }
}
