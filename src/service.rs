//! The gRPC face of the gateway: proto in, a gateway call, proto out.
//!
//! No logic lives here beyond the conversions; admission, validation,
//! deadlines and errors are the gateway's.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{self, AuthFailure};
use crate::backend::FinishReason;
use crate::batch;
use crate::cache::Directive;
use crate::config::ListModelsAccess;
use crate::connection::tls::peer_identity;
use crate::deadline::{Arrival, ClientTimeout};
use crate::gateway::{CallOptions, Gateway};
use crate::metrics::Method;
use crate::outcome::{CacheState, Outcome, StreamItem};
use crate::proto;
use crate::proto::inference_server::Inference;
use crate::request::grpc_timeout;
use crate::tenant::Caller;

/// Implements `infergate.v1.Inference` over a [`Gateway`].
#[derive(Clone)]
pub struct InferenceService {
    gateway: Arc<Gateway>,
}

impl InferenceService {
    /// The service for this gateway.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        InferenceService { gateway }
    }
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<proto::GenerateStreamResponse, Status>> + Send>>;

type BatchStream = Pin<Box<dyn Stream<Item = Result<proto::GenerateBatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Inference for InferenceService {
    // Written out rather than `async fn`: the future async_trait makes
    // keeps the request (232 bytes) for its whole life beside what awaits,
    // and a waiting call keeps this future alive (bench S5). Here the
    // request is taken apart and the call admitted before the future is
    // boxed (in the call's span), and the box holds only the gateway's
    // small future, the span and the request id.
    fn generate<'life0, 'async_trait>(
        &'life0 self,
        request: Request<proto::GenerateRequest>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<Response<proto::GenerateResponse>, Status>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let id = RequestId::of(request.metadata());
        let span = call_span("generate", &request.get_ref().model, &id);
        let call = {
            let _entered = span.enter();
            match self.options(&request, Method::Generate, &id) {
                Ok(options) => self.gateway.generate(request.into_inner(), options),
                Err(status) => return Box::pin(std::future::ready(Err(status))),
            }
        };
        Box::pin(call.instrument(span).map(move |result| match result {
            Ok(outcome) => Ok(id.tag_response(Response::new(generate_response(outcome)))),
            Err(error) => Err(id.status(&error)),
        }))
    }

    type GenerateStreamStream = ResponseStream;

    async fn generate_stream(
        &self,
        request: Request<proto::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let id = RequestId::of(request.metadata());
        let span = call_span("generate_stream", &request.get_ref().model, &id);
        async {
            let options = self.options(&request, Method::GenerateStream, &id)?;
            let stream = self
                .gateway
                .generate_stream(request.into_inner(), options)
                .await
                .map_err(|e| id.status(&e))?;
            let request_id = id.to_string();
            let stream = stream.map(move |item| match item {
                Ok(StreamItem::Text(text)) => Ok(proto::GenerateStreamResponse {
                    text,
                    ..Default::default()
                }),
                Ok(StreamItem::Done(outcome)) => Ok(proto::GenerateStreamResponse {
                    text: String::new(),
                    finish_reason: finish_reason(outcome.completion.finish_reason).into(),
                    usage: Some(usage(&outcome)),
                    timing: Some(timing(&outcome)),
                    cache: cache_status(outcome.route.cache).into(),
                    model: outcome.route.model,
                    tried: outcome.route.tried,
                }),
                Err(error) => Err(error.to_status(&request_id)),
            });
            let stream: ResponseStream = Box::pin(stream);
            Ok(id.tag_response(Response::new(stream)))
        }
        .instrument(span)
        .await
    }

    type GenerateBatchStream = BatchStream;

    async fn generate_batch(
        &self,
        request: Request<proto::GenerateBatchRequest>,
    ) -> Result<Response<Self::GenerateBatchStream>, Status> {
        let id = RequestId::of(request.metadata());
        let span = call_span("generate_batch", "", &id);
        let _entered = span.enter();
        let options = self.options(&request, Method::GenerateBatch, &id)?;
        let stream = batch::run(
            self.gateway.clone(),
            request.into_inner(),
            options,
            id.to_string(),
        )
        .map_err(|e| id.status(&e))?;
        let stream: BatchStream = Box::pin(stream);
        Ok(id.tag_response(Response::new(stream)))
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        // Who may see which models: everyone everything without keys.
        let (caller, access) = match self.gateway.auth() {
            None => (Caller::anonymous(), ListModelsAccess::Open),
            Some(auth) if auth.list_models() == ListModelsAccess::Open => {
                (Caller::anonymous(), ListModelsAccess::Open)
            }
            Some(auth) => {
                let caller = auth
                    .authenticate(request.metadata())
                    .map_err(|failure| RequestId::of(request.metadata()).auth_status(failure))?;
                (caller, auth.list_models())
            }
        };
        let shown: Vec<&crate::gateway::Model> = self
            .gateway
            .models()
            .iter()
            .filter(|model| auth::lists(access, &caller, &model.config.name))
            .collect();
        let models = shown
            .iter()
            .map(|model| {
                let stats = model.stats();
                proto::ModelInfo {
                    name: model.config.name.clone(),
                    backend: model.backend_kind().to_string(),
                    workers: saturate(stats.workers),
                    queue_capacity: saturate(stats.queue_capacity),
                    busy_workers: saturate(stats.busy),
                    queued: saturate(stats.queued),
                    max_tokens: model.config.max_tokens,
                    timeout_ms: model.config.timeout_ms,
                    backend_calls: stats.backend_calls,
                    ready_workers: saturate(stats.ready),
                    fallbacks: model.config.fallbacks.clone(),
                    cache_entries: 0,
                    cache_bytes: 0,
                    cache_in_flight: 0,
                    tenants_waiting: saturate(stats.tenants_waiting),
                }
            })
            .collect::<Vec<_>>();
        let mut models = models;
        for (info, model) in models.iter_mut().zip(shown) {
            let (entries, bytes, in_flight) = model.cache_size().await;
            info.cache_entries = entries;
            info.cache_bytes = bytes;
            info.cache_in_flight = saturate(usize::try_from(in_flight).unwrap_or(usize::MAX));
        }
        Ok(Response::new(proto::ListModelsResponse { models }))
    }
}

/// A call's id: the client's `x-request-id`, or one made here. It is in
/// every log line of the call (worker and backend included) and echoed in
/// the response (or error) metadata, so a client can quote it.
struct RequestId(MetadataValue<Ascii>);

/// The metadata key of the request id.
const REQUEST_ID: &str = "x-request-id";
/// Longest client-chosen id kept; a longer one is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

impl RequestId {
    fn of(metadata: &MetadataMap) -> Self {
        let given = metadata
            .get(REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN)
            .cloned();
        RequestId(given.unwrap_or_else(Self::make))
    }

    /// A process-unique id: a per-process prefix and a counter.
    fn make() -> MetadataValue<Ascii> {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let prefix = PREFIX.get_or_init(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            std::process::id().rotate_left(16) ^ nanos
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Hex digits and a dash are always valid ASCII metadata.
        MetadataValue::try_from(format!("{prefix:08x}-{n:x}"))
            .unwrap_or_else(|_| MetadataValue::from_static("unknown"))
    }

    fn tag_response<T>(&self, mut response: Response<T>) -> Response<T> {
        response.metadata_mut().insert(REQUEST_ID, self.0.clone());
        response
    }

    /// The status a client gets for `error`, its message and metadata
    /// carrying this id.
    fn status(&self, error: &crate::error::Error) -> Status {
        let mut status = error.to_status(self.0.to_str().unwrap_or("?"));
        status.metadata_mut().insert(REQUEST_ID, self.0.clone());
        status
    }

    /// The UNAUTHENTICATED status of a call without a valid key, carrying
    /// this id like every other error.
    fn auth_status(&self, failure: AuthFailure) -> Status {
        let mut status = failure.to_status(self.0.to_str().unwrap_or("?"));
        status.metadata_mut().insert(REQUEST_ID, self.0.clone());
        status
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.to_str().unwrap_or("?"))
    }
}

/// The span of one call, at info level so that warnings logged by workers
/// and backends during the call carry its request id. The model name is
/// client input: only a bounded prefix is recorded.
fn call_span(method: &'static str, model: &str, id: &RequestId) -> tracing::Span {
    let model = model
        .get(..model.len().min(MAX_SPAN_MODEL_BYTES))
        .unwrap_or("?");
    tracing::info_span!("call", method, model, request_id = %id)
}

/// When the call reached the server: stamped by the server's outermost
/// layer before the body was read (see [`crate::server`]), so that a large
/// request's transfer and decoding count against its deadline, as they do
/// for the client's (and tonic's) timer. Now, when served without it.
fn received<T>(request: &Request<T>) -> Instant {
    request
        .extensions()
        .get::<Arrival>()
        .map_or_else(Instant::now, |arrival| arrival.0)
}

/// The client's grpc-timeout: taken from the headers by the server's
/// outermost layer (see [`ClientTimeout`]), or read from them when served
/// without it.
fn client_timeout<T>(request: &Request<T>) -> Option<Duration> {
    match request.extensions().get::<ClientTimeout>() {
        Some(ClientTimeout(timeout)) => *timeout,
        None => grpc_timeout(request.metadata()),
    }
}

impl InferenceService {
    /// How a call came in: its arrival, grpc-timeout, RPC, cache-control
    /// and caller. With API keys on, a call without a valid one ends here,
    /// UNAUTHENTICATED, before any model is looked at; with keys off, the
    /// caller is the mTLS client certificate's common name (or subject), if
    /// the client sent one, else anonymous.
    fn options<T>(
        &self,
        request: &Request<T>,
        method: Method,
        id: &RequestId,
    ) -> Result<CallOptions, Status> {
        let caller = match self.gateway.auth() {
            // Without keys, an mTLS client certificate names the tenant.
            None => peer_identity(request).map_or_else(Caller::anonymous, |peer| {
                Caller::named(peer.common_name.unwrap_or(peer.subject))
            }),
            Some(auth) => auth
                .authenticate(request.metadata())
                .map_err(|failure| id.auth_status(failure))?,
        };
        let cache = request
            .metadata()
            .get(CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .map_or(Directive::Use, Directive::parse);
        Ok(CallOptions {
            client_timeout: client_timeout(request),
            received: received(request),
            method,
            cache,
            caller,
        })
    }
}

/// The metadata key a client bypasses the response cache with
/// (`no-cache`: a fresh answer, stored; `no-store`: the cache untouched).
const CACHE_CONTROL: &str = "cache-control";

/// A Generate call's answer (also a GenerateBatch item's).
pub(crate) fn generate_response(outcome: Outcome) -> proto::GenerateResponse {
    proto::GenerateResponse {
        finish_reason: finish_reason(outcome.completion.finish_reason).into(),
        usage: Some(usage(&outcome)),
        timing: Some(timing(&outcome)),
        cache: cache_status(outcome.route.cache).into(),
        text: outcome.text,
        model: outcome.route.model,
        tried: outcome.route.tried,
    }
}

fn cache_status(state: CacheState) -> proto::CacheStatus {
    match state {
        CacheState::Off => proto::CacheStatus::Unspecified,
        CacheState::Miss => proto::CacheStatus::Miss,
        CacheState::Hit => proto::CacheStatus::Hit,
        CacheState::Coalesced => proto::CacheStatus::Coalesced,
        CacheState::Bypass => proto::CacheStatus::Bypass,
    }
}

/// Bytes of the requested model name kept in a call's span.
const MAX_SPAN_MODEL_BYTES: usize = 128;

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn finish_reason(reason: FinishReason) -> proto::FinishReason {
    match reason {
        FinishReason::Stop => proto::FinishReason::Stop,
        FinishReason::Length => proto::FinishReason::Length,
    }
}

fn usage(outcome: &Outcome) -> proto::Usage {
    let c = outcome.completion;
    proto::Usage {
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.completion_tokens,
        total_tokens: c.prompt_tokens.saturating_add(c.completion_tokens),
    }
}

fn timing(outcome: &Outcome) -> proto::Timing {
    let t = &outcome.timing;
    proto::Timing {
        queue_wait_us: micros(t.queue_wait),
        backend_us: micros(t.backend),
        total_us: micros(t.total),
        time_to_first_token_us: t.first_token.map_or(0, micros),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiting Generate call keeps this box alive: its size is memory
    /// per waiting call (bench S5), beside the gateway's future inside it.
    #[test]
    fn a_generate_call_boxes_little_more_than_the_gateway_future() {
        let gateway = Arc::new(Gateway::builder().build().expect("an empty gateway"));
        let service = InferenceService::new(gateway);
        let call = service.generate(Request::new(proto::GenerateRequest::default()));
        let size = std::mem::size_of_val(&*call);
        assert!(size <= 512, "the boxed Generate future takes {size} bytes");
    }
}
