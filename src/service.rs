//! The gRPC face of the gateway: proto in, a gateway call, proto out.
//!
//! No logic lives here beyond the conversions; admission, validation,
//! deadlines and errors are the gateway's.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::backend::FinishReason;
use crate::gateway::{Finished, Gateway};
use crate::proto;
use crate::proto::inference_server::Inference;
use crate::request::grpc_timeout;
use crate::stream::StreamItem;

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

#[tonic::async_trait]
impl Inference for InferenceService {
    #[tracing::instrument(level = "debug", skip_all, fields(model = %request.get_ref().model))]
    async fn generate(
        &self,
        request: Request<proto::GenerateRequest>,
    ) -> Result<Response<proto::GenerateResponse>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let model = request.get_ref().model.clone();
        let mut finished = self.gateway.generate(request.into_inner(), timeout).await?;
        Ok(Response::new(proto::GenerateResponse {
            text: std::mem::take(&mut finished.outcome.text),
            finish_reason: finish_reason(finished.outcome.completion.finish_reason).into(),
            usage: Some(usage(&finished)),
            timing: Some(timing(&finished)),
            model,
        }))
    }

    type GenerateStreamStream = ResponseStream;

    #[tracing::instrument(level = "debug", skip_all, fields(model = %request.get_ref().model))]
    async fn generate_stream(
        &self,
        request: Request<proto::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let stream = self
            .gateway
            .generate_stream(request.into_inner(), timeout)?;
        let stream = stream.map(|item| match item {
            Ok(StreamItem::Text(text)) => Ok(proto::GenerateStreamResponse {
                text,
                ..Default::default()
            }),
            Ok(StreamItem::Finished(finished)) => Ok(proto::GenerateStreamResponse {
                text: String::new(),
                finish_reason: finish_reason(finished.outcome.completion.finish_reason).into(),
                usage: Some(usage(&finished)),
                timing: Some(timing(&finished)),
            }),
            Err(error) => Err(Status::from(error)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_models(
        &self,
        _request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let models = self
            .gateway
            .models()
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
                }
            })
            .collect();
        Ok(Response::new(proto::ListModelsResponse { models }))
    }
}

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

fn usage(finished: &Finished) -> proto::Usage {
    let c = finished.outcome.completion;
    proto::Usage {
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.completion_tokens,
        total_tokens: c.prompt_tokens.saturating_add(c.completion_tokens),
    }
}

fn timing(finished: &Finished) -> proto::Timing {
    proto::Timing {
        queue_wait_us: micros(finished.outcome.queue_wait),
        backend_us: micros(finished.outcome.backend_time),
        total_us: micros(finished.total),
        time_to_first_token_us: finished.time_to_first_token.map_or(0, micros),
    }
}
