//! Makes an oversized request fail with RESOURCE_EXHAUSTED, as gRPC
//! specifies, instead of tonic's OUT_OF_RANGE.
//!
//! tonic refuses a request message above `max_decoding_message_size` with
//! OUT_OF_RANGE "decoded message length too large". The gRPC spec (and
//! grpc-go, grpc-java, grpc-core) uses RESOURCE_EXHAUSTED for a message over
//! the limit, and clients retry on that code policy-wise. Our own handlers
//! never answer OUT_OF_RANGE, so every such answer from the wrapped service
//! is the transport's size check, sent as a trailers-only response whose
//! status sits in the headers: this layer rewrites that header.

use std::task::{Context, Poll};

use tonic::codegen::http::{self, HeaderValue};
use tonic::server::NamedService;
use tower::Service;
use tower::util::MapResponse;
use tower::util::future::MapResponseFuture;

/// `grpc-status` of OUT_OF_RANGE and RESOURCE_EXHAUSTED.
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

type MapFn<B> = fn(http::Response<B>) -> http::Response<B>;

/// Wraps a generated gRPC service; see the module docs.
pub struct OversizeAsResourceExhausted<S, B> {
    inner: MapResponse<S, MapFn<B>>,
}

// Not derived: the body type need not be Clone, only the service.
impl<S: Clone, B> Clone for OversizeAsResourceExhausted<S, B> {
    fn clone(&self) -> Self {
        OversizeAsResourceExhausted {
            inner: self.inner.clone(),
        }
    }
}

impl<S, B> OversizeAsResourceExhausted<S, B> {
    /// Wraps `service`.
    pub fn new(service: S) -> Self {
        OversizeAsResourceExhausted {
            inner: MapResponse::new(service, rewrite as MapFn<B>),
        }
    }
}

fn rewrite<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|status| status == OUT_OF_RANGE)
    {
        headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
    }
    response
}

impl<S: NamedService, B> NamedService for OversizeAsResourceExhausted<S, B> {
    const NAME: &'static str = S::NAME;
}

impl<S, Req, B> Service<Req> for OversizeAsResourceExhausted<S, B>
where
    S: Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = MapResponseFuture<S::Future, MapFn<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.inner.call(request)
    }
}
