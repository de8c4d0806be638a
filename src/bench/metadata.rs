//! The request metadata of a run: `-m` / `-M`, a JSON object of strings,
//! whose values may hold ghz's call templates (`{"request-id":
//! "{{.RequestNumber}}"}`), rendered per call.

use serde_json::Value;
use tonic::metadata::{AsciiMetadataKey, MetadataKey, MetadataMap, MetadataValue};

use crate::bench::calldata::CallData;
use crate::bench::template::Template;

/// The metadata of every call: fixed entries, and templated ones.
#[derive(Debug, Default)]
pub struct Metadata {
    fixed: MetadataMap,
    templated: Vec<(AsciiMetadataKey, Template)>,
}

impl Metadata {
    /// Parses `-m`: a JSON object of string values. Templates are rendered
    /// once here, so that one that cannot make a valid value fails now.
    pub fn parse(text: Option<&str>, sample: &CallData<'_>) -> Result<Metadata, String> {
        let mut metadata = Metadata::default();
        let Some(text) = text else {
            return Ok(metadata);
        };
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
            match Template::parse(value).map_err(|e| format!("-m: {key}: {e}"))? {
                Some(template) => metadata.templated.push((key, template)),
                None => {
                    metadata.fixed.insert(key, ascii(value)?);
                }
            }
        }
        metadata.render(sample)?;
        Ok(metadata)
    }

    /// The metadata of one call.
    pub fn render(&self, call: &CallData<'_>) -> Result<MetadataMap, String> {
        let mut map = self.fixed.clone();
        for (key, template) in &self.templated {
            map.insert(key.clone(), ascii(&template.render(call))?);
        }
        Ok(map)
    }
}

fn ascii(value: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
    MetadataValue::try_from(value).map_err(|_| format!("-m: {value:?} is not valid ASCII"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::call::Call;
    use std::time::SystemTime;

    fn call(n: u64) -> CallData<'static> {
        CallData::new(Call::Generate, "g0c0", n, SystemTime::now())
    }

    #[test]
    fn metadata_is_an_object_of_strings() {
        let map = Metadata::parse(Some(r#"{"x-tenant":"a"}"#), &call(0))
            .unwrap()
            .render(&call(0))
            .unwrap();
        assert_eq!(map.get("x-tenant").unwrap(), "a");
        assert!(Metadata::parse(Some(r#"{"x":1}"#), &call(0)).is_err());
        assert!(
            Metadata::parse(None, &call(0))
                .unwrap()
                .render(&call(0))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn templated_values_render_per_call() {
        let metadata = Metadata::parse(
            Some(r#"{"request-id":"{{.RequestNumber}}","x":"y"}"#),
            &call(0),
        )
        .unwrap();
        let map = metadata.render(&call(12)).unwrap();
        assert_eq!(map.get("request-id").unwrap(), "12");
        assert_eq!(map.get("x").unwrap(), "y");
    }
}
