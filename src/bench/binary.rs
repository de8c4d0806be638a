//! ghz's binary request data (`-b` from stdin, `-B` from a file):
//! serialized GenerateRequest messages, several each prefixed by its
//! length (a varint, protobuf's delimited form), or one alone. As ghz, the
//! delimited form is tried first.

use prost::Message;

use crate::proto::GenerateRequest;

/// The messages in `bytes`.
pub fn messages(bytes: &[u8]) -> Result<Vec<GenerateRequest>, String> {
    if let Some(messages) = delimited(bytes) {
        return Ok(messages);
    }
    GenerateRequest::decode(bytes)
        .map(|message| vec![message])
        .map_err(|e| format!("binary data is not a GenerateRequest: {e}"))
}

/// Length-delimited messages, if `bytes` is exactly a sequence of them.
fn delimited(mut bytes: &[u8]) -> Option<Vec<GenerateRequest>> {
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        messages.push(GenerateRequest::decode_length_delimited(&mut bytes).ok()?);
    }
    (!messages.is_empty()).then_some(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &str) -> GenerateRequest {
        GenerateRequest {
            model: "echo".into(),
            prompt: prompt.into(),
            ..Default::default()
        }
    }

    #[test]
    fn one_message_or_several_delimited() {
        let one = request("hi").encode_to_vec();
        assert_eq!(messages(&one).unwrap(), [request("hi")]);
        let mut two = request("a").encode_length_delimited_to_vec();
        two.extend(request("b").encode_length_delimited_to_vec());
        assert_eq!(messages(&two).unwrap(), [request("a"), request("b")]);
        assert!(messages(&[0xFF, 0xFF]).is_err());
    }
}
