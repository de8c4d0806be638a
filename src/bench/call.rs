//! The methods `infergate bench` can call (`--call`), and their names as
//! ghz's call template data gives them.

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
    /// The service's short name (`{{.ServiceName}}`).
    pub const SERVICE_NAME: &'static str = "Inference";

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

    /// The full method name (`{{.FullyQualifiedName}}`).
    pub fn full_name(self) -> &'static str {
        match self {
            Call::Generate => "infergate.v1.Inference.Generate",
            Call::GenerateStream => "infergate.v1.Inference.GenerateStream",
            Call::ListModels => "infergate.v1.Inference.ListModels",
        }
    }

    /// The method's name (`{{.MethodName}}`).
    pub fn method_name(self) -> &'static str {
        match self {
            Call::Generate => "Generate",
            Call::GenerateStream => "GenerateStream",
            Call::ListModels => "ListModels",
        }
    }

    /// The request message's name (`{{.InputName}}`).
    pub fn input_name(self) -> &'static str {
        match self {
            Call::Generate | Call::GenerateStream => "GenerateRequest",
            Call::ListModels => "ListModelsRequest",
        }
    }

    /// The response message's name (`{{.OutputName}}`).
    pub fn output_name(self) -> &'static str {
        match self {
            Call::Generate => "GenerateResponse",
            Call::GenerateStream => "GenerateStreamResponse",
            Call::ListModels => "ListModelsResponse",
        }
    }

    /// Whether the server answers with a stream (`{{.IsServerStreaming}}`).
    pub fn is_server_streaming(self) -> bool {
        self == Call::GenerateStream
    }
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
}
