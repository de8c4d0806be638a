//! ghz's call templates in `-d` and `-m` values: the fields of its "Call
//! Template Data" (`{{.RequestNumber}}`, `{{.WorkerID}}`, `{{.UUID}}`,
//! `{{.TimestampUnix}}`, ...) and its functions `newUUID`, `randomString`
//! and `randomInt`.
//!
//! A template is parsed once, before the run; a call only renders it into a
//! buffer. Go's text/template syntax is followed for what is supported:
//! spaces inside the braces, `{{-` / `-}}` trimming, `{{/* comments */}}`.
//! Any other action (sprig functions, pipelines, `if`, `range`) is refused
//! when the template is parsed, naming it.

use std::fmt::Write;

use crate::bench::calldata::CallData;

/// The fields of ghz's call template data, by their ghz names.
const FIELDS: [(&str, Field); 15] = [
    ("WorkerID", Field::WorkerId),
    ("RequestNumber", Field::RequestNumber),
    ("FullyQualifiedName", Field::FullyQualifiedName),
    // Not a ghz name, but a natural guess at one: accepted as an alias.
    ("FullyQualifiedMethodName", Field::FullyQualifiedName),
    ("MethodName", Field::MethodName),
    ("ServiceName", Field::ServiceName),
    ("InputName", Field::InputName),
    ("OutputName", Field::OutputName),
    ("IsClientStreaming", Field::IsClientStreaming),
    ("IsServerStreaming", Field::IsServerStreaming),
    ("Timestamp", Field::Timestamp),
    ("TimestampUnix", Field::TimestampUnix),
    ("TimestampUnixMilli", Field::TimestampUnixMilli),
    ("TimestampUnixNano", Field::TimestampUnixNano),
    ("UUID", Field::Uuid),
];

/// Letters and digits, as ghz's `randomString` draws from.
const CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A field of the call template data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `g<worker>c<connection>`, prefixed by `<name>:` with `--name`.
    WorkerId,
    /// The call's number, from 0, unique in the run.
    RequestNumber,
    /// `infergate.v1.Inference.Generate`.
    FullyQualifiedName,
    /// `Generate`.
    MethodName,
    /// `Inference`.
    ServiceName,
    /// `GenerateRequest`.
    InputName,
    /// `GenerateResponse`.
    OutputName,
    /// `false`: no infergate method streams requests.
    IsClientStreaming,
    /// `true` for GenerateStream.
    IsServerStreaming,
    /// The call's start, RFC 3339 in seconds (UTC).
    Timestamp,
    /// The call's start, Unix seconds.
    TimestampUnix,
    /// The call's start, Unix milliseconds.
    TimestampUnixMilli,
    /// The call's start, Unix nanoseconds.
    TimestampUnixNano,
    /// A UUID v4, one per call.
    Uuid,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(Box<str>),
    Field(Field),
    NewUuid,
    RandomString(i64),
    RandomInt(i64, i64),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; `None` when it has no action, i.e. it is sent as is.
    pub fn parse(text: &str) -> Result<Option<Template>, String> {
        if !text.contains("{{") {
            return Ok(None);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        let mut trim_next = false;
        while let Some(open) = rest.find("{{") {
            let mut literal = &rest[..open];
            if trim_next {
                literal = literal.trim_start();
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("unclosed action in template {text:?}"))?;
            let mut action = &after[..close];
            if let Some(inner) = action.strip_prefix("- ") {
                literal = literal.trim_end();
                action = inner;
            }
            trim_next = false;
            if let Some(inner) = action.strip_suffix(" -") {
                trim_next = true;
                action = inner;
            }
            if !literal.is_empty() {
                parts.push(Part::Text(literal.into()));
            }
            if let Some(part) = action_part(action.trim())? {
                parts.push(part);
            }
            rest = &after[close + 2..];
        }
        let literal = if trim_next { rest.trim_start() } else { rest };
        if !literal.is_empty() {
            parts.push(Part::Text(literal.into()));
        }
        Ok(Some(Template { parts }))
    }

    /// Appends the template, rendered for `call`, to `out`.
    pub fn render_into(&self, call: &CallData<'_>, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(field) => call.write_field(*field, out),
                Part::NewUuid => write_uuid(out, new_uuid()),
                Part::RandomString(length) => random_string(*length, out),
                Part::RandomInt(min, max) => {
                    let n = if max > min {
                        fastrand::i64(*min..*max)
                    } else {
                        *min
                    };
                    let _ = write!(out, "{n}");
                }
            }
        }
    }

    /// The template rendered for `call`.
    pub fn render(&self, call: &CallData<'_>) -> String {
        let mut out = String::with_capacity(64);
        self.render_into(call, &mut out);
        out
    }
}

/// One action: a field, a function call, a comment (`None`), or an error
/// naming what is not supported.
fn action_part(action: &str) -> Result<Option<Part>, String> {
    if action.starts_with("/*") && action.ends_with("*/") {
        return Ok(None);
    }
    if let Some(name) = action.strip_prefix('.') {
        return FIELDS
            .iter()
            .find(|(field, _)| *field == name)
            .map(|(_, field)| Some(Part::Field(*field)))
            .ok_or_else(|| unsupported(action));
    }
    let words: Vec<&str> = action.split_whitespace().collect();
    let int = |word: &str| word.parse::<i64>().map_err(|_| unsupported(action));
    match words.as_slice() {
        ["newUUID"] => Ok(Some(Part::NewUuid)),
        ["randomString", length] => Ok(Some(Part::RandomString(int(length)?))),
        ["randomInt", min, max] => Ok(Some(Part::RandomInt(int(min)?, int(max)?))),
        _ => Err(unsupported(action)),
    }
}

fn unsupported(action: &str) -> String {
    let fields: Vec<&str> = FIELDS.iter().map(|(name, _)| *name).collect();
    format!(
        "unsupported template action {{{{{action}}}}}: use .{} or newUUID, randomString N, randomInt MIN MAX",
        fields.join(", .")
    )
}

/// A random UUID v4.
pub fn new_uuid() -> u128 {
    let random = fastrand::u128(..);
    // Version 4 (bits 76-79) and the RFC 4122 variant (bits 62-63).
    (random & !(0xF << 76) & !(0b11 << 62)) | (0x4 << 76) | (0b10 << 62)
}

/// Writes a UUID in its 8-4-4-4-12 lowercase hex form.
pub fn write_uuid(out: &mut String, uuid: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        let nibble = (uuid >> (124 - 4 * i)) & 0xF;
        out.push(char::from(HEX[nibble as usize]));
    }
}

/// ghz's `randomString`: `length` letters and digits, or 2 to 16 of them
/// when `length` is not positive.
fn random_string(length: i64, out: &mut String) {
    let length = if length > 0 {
        usize::try_from(length).unwrap_or(16)
    } else {
        fastrand::usize(2..=16)
    };
    for _ in 0..length {
        out.push(char::from(CHARSET[fastrand::usize(..CHARSET.len())]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::call::Call;
    use std::time::{Duration, UNIX_EPOCH};

    fn call(n: u64) -> CallData<'static> {
        CallData::new(
            Call::Generate,
            "g3c0",
            n,
            UNIX_EPOCH + Duration::from_millis(1_795_769_607_123),
        )
    }

    fn render(text: &str, n: u64) -> String {
        Template::parse(text).unwrap().unwrap().render(&call(n))
    }

    #[test]
    fn plain_text_is_not_a_template() {
        assert_eq!(Template::parse("hello {x}"), Ok(None));
    }

    #[test]
    fn fields_render_per_call() {
        assert_eq!(render("n={{.RequestNumber}}", 7), "n=7");
        assert_eq!(render("{{ .WorkerID }}/{{.RequestNumber}}", 0), "g3c0/0");
        assert_eq!(
            render(
                "{{.FullyQualifiedName}} {{.MethodName}} {{.ServiceName}} {{.InputName}} {{.OutputName}}",
                0
            ),
            "infergate.v1.Inference.Generate Generate Inference GenerateRequest GenerateResponse"
        );
        assert_eq!(
            render(
                "{{.TimestampUnix}} {{.TimestampUnixMilli}} {{.TimestampUnixNano}}",
                0
            ),
            "1795769607 1795769607123 1795769607123000000"
        );
        assert_eq!(render("{{.Timestamp}}", 0), "2026-11-27T08:53:27Z");
        assert_eq!(
            render("{{.IsClientStreaming}}/{{.IsServerStreaming}}", 0),
            "false/false"
        );
    }

    #[test]
    fn the_uuid_field_is_one_per_call_and_new_uuid_is_fresh() {
        let one = render("{{.UUID}} {{.UUID}}", 0);
        let (a, b) = one.split_once(' ').unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        let two = render("{{newUUID}} {{newUUID}}", 0);
        let (a, b) = two.split_once(' ').unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn functions_and_trimming() {
        assert_eq!(render("{{randomString 8}}", 0).len(), 8);
        let n: i64 = render("{{randomInt 5 6}}", 0).parse().unwrap();
        assert_eq!(n, 5);
        assert_eq!(render("a  {{- .RequestNumber -}}  b", 4), "a4b");
        assert_eq!(render("x{{/* note */}}y", 0), "xy");
    }

    #[test]
    fn unsupported_actions_are_named() {
        let error = Template::parse("{{upper .MethodName}}").unwrap_err();
        assert!(error.contains("upper .MethodName"), "{error}");
        assert!(Template::parse("{{.Nope}}").is_err());
        assert!(Template::parse("{{.RequestNumber").is_err());
    }
}
