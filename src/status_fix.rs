//! Gives the requests that tonic refuses by itself, before any handler
//! runs, the gRPC codes the spec asks for.
//!
//! - A request message above `max_decoding_message_size`: tonic answers
//!   OUT_OF_RANGE "decoded message length too large"; the gRPC spec (and
//!   grpc-go, grpc-java, grpc-core) uses RESOURCE_EXHAUSTED for a message
//!   over the limit, and clients' retry policies go by that code.
//! - A request that does not decode (not protobuf, a field of the wrong wire
//!   type, invalid UTF-8 in a string, a frame cut short, no message at
//!   all): tonic answers INTERNAL ("failed to decode Protobuf message"),
//!   which tells the client the server broke. It is the client's request
//!   that is wrong: INVALID_ARGUMENT, naming the message type.
//!
//! Both come as trailers-only responses, whose status sits in the headers;
//! this layer rewrites those headers. Our handlers never answer OUT_OF_RANGE,
//! so every such answer is the size check. INTERNAL is rewritten only when
//! its message is one of tonic's request-decoding messages (which our
//! handlers never send): a genuine INTERNAL from a handler goes through
//! untouched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower::Service;

/// `grpc-status` of OUT_OF_RANGE and RESOURCE_EXHAUSTED.
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// The start of prost's decode errors, as tonic-prost sends them.
const PROST_DECODE_ERROR: &str = "failed to decode Protobuf message: ";
/// tonic's errors for a request body without one whole message.
const NO_MESSAGE: &str = "Missing request message.";
const CUT_SHORT: &str = "Unexpected EOF decoding stream.";

/// The request message of each method, for the error message.
const REQUEST_TYPES: &[(&str, &str)] = &[
    (
        "/infergate.v1.Inference/Generate",
        "infergate.v1.GenerateRequest",
    ),
    (
        "/infergate.v1.Inference/GenerateStream",
        "infergate.v1.GenerateRequest",
    ),
    (
        "/infergate.v1.Inference/ListModels",
        "infergate.v1.ListModelsRequest",
    ),
];

/// Wraps a generated gRPC service; see the module docs.
#[derive(Debug, Clone)]
pub struct FixStatus<S> {
    inner: S,
}

impl<S> FixStatus<S> {
    /// Wraps `service`.
    pub fn new(service: S) -> Self {
        FixStatus { inner: service }
    }
}

impl<S: NamedService> NamedService for FixStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, B> Service<http::Request<ReqBody>> for FixStatus<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<B>>,
    // tonic's generated services return a boxed future.
    S::Future: Unpin,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Fixed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let message_type = REQUEST_TYPES
            .iter()
            .find(|(method, _)| *method == path)
            .map(|(_, message)| *message);
        Fixed {
            inner: self.inner.call(request),
            message_type,
        }
    }
}

/// The response future of [`FixStatus`].
pub struct Fixed<F> {
    inner: F,
    /// The request's message type, when the method is known.
    message_type: Option<&'static str>,
}

impl<F, B, E> Future for Fixed<F>
where
    F: Future<Output = Result<http::Response<B>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(Pin::new(&mut self.inner).poll(cx))?;
        rewrite(response.headers_mut(), self.message_type);
        Poll::Ready(Ok(response))
    }
}

fn rewrite(headers: &mut HeaderMap, message_type: Option<&str>) {
    let Some(status) = headers.get("grpc-status") else {
        return; // not trailers-only: a handler's answer
    };
    if status == OUT_OF_RANGE {
        headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() != Code::Internal {
        return;
    }
    let message = status.message();
    let why = if let Some(detail) = message.strip_prefix(PROST_DECODE_ERROR) {
        detail
    } else if message == NO_MESSAGE {
        "the request has no message"
    } else if message == CUT_SHORT {
        "the request's message is cut short"
    } else {
        return;
    };
    let fixed = Status::invalid_argument(match message_type {
        Some(message_type) => format!("the request is not a valid {message_type}: {why}"),
        None => format!("the request message is not valid: {why}"),
    });
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    // A Status made here has an ASCII message and no metadata: it fits.
    let _ = fixed.add_header(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers_only(status: &Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    fn fixed(status: &Status) -> Status {
        let mut headers = trailers_only(status);
        rewrite(&mut headers, Some("infergate.v1.GenerateRequest"));
        Status::from_header_map(&headers).unwrap()
    }

    #[test]
    fn decode_errors_become_invalid_argument() {
        let status = fixed(&Status::internal(
            "failed to decode Protobuf message: GenerateRequest.prompt: invalid string value: data is not UTF-8 encoded",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "the request is not a valid infergate.v1.GenerateRequest: GenerateRequest.prompt: invalid string value: data is not UTF-8 encoded"
        );
        for message in [NO_MESSAGE, CUT_SHORT] {
            assert_eq!(
                fixed(&Status::internal(message)).code(),
                Code::InvalidArgument
            );
        }
    }

    #[test]
    fn other_statuses_are_left_alone() {
        for status in [
            Status::internal("the backend of model \"a\" failed"),
            Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ),
            Status::invalid_argument("failed to decode Protobuf message: x"),
            Status::not_found("no model"),
        ] {
            let again = fixed(&status);
            assert_eq!(
                (again.code(), again.message()),
                (status.code(), status.message())
            );
        }
        assert_eq!(
            fixed(&Status::out_of_range("too large")).code(),
            Code::ResourceExhausted
        );
    }

    #[test]
    fn every_method_has_its_message_type() {
        use crate::proto::inference_server::InferenceServer;
        let name = <InferenceServer<crate::service::InferenceService> as NamedService>::NAME;
        for method in ["Generate", "GenerateStream", "ListModels"] {
            let path = format!("/{name}/{method}");
            assert!(REQUEST_TYPES.iter().any(|(p, _)| *p == path), "{path}");
        }
    }
}
