//! The gateway core: the models, admission, deadlines and shutdown state.
//!
//! A [`Gateway`] owns one [`WorkerPool`] per model. An RPC handler calls
//! [`Gateway::generate`] or [`Gateway::generate_stream`]; those find the
//! model, check the request, set the deadline, submit the job and wait for
//! the reply without holding any lock. Every call holds a token of the
//! gateway's task tracker until it ends, which is how shutdown knows when the
//! gateway has drained.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::backend::{BackendFactory, OpenAiFactory, ProcessFactory, SimulatedFactory};
use crate::config::{BackendKind, Config, ModelConfig, validate_model_name};
use crate::deadline::Deadline;
use crate::error::{Error, Stage};
use crate::metrics::{Method, ModelMetrics, PoolStats, StatsSource, UNKNOWN_MODEL};
use crate::outcome::Outcome;
use crate::pool::{Reply, Ticket, WorkerPool};
use crate::proto;
use crate::record::CallRecord;
use crate::request;
use crate::stream::GenerationStream;

/// Items buffered between a streaming worker and its handler before the
/// worker waits (up to the deadline) for the client to read.
const STREAM_BUFFER: usize = 32;

/// How often shutdown checks whether the worker threads have ended.
const WORKER_EXIT_POLL: Duration = Duration::from_millis(10);

/// A model: its configuration and its pool.
pub struct Model {
    /// The model's configuration.
    pub config: ModelConfig,
    pool: WorkerPool,
}

impl Model {
    /// The pool's load right now.
    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// The backend kind.
    pub fn backend_kind(&self) -> &str {
        self.pool.backend_kind()
    }

    /// The deadline of a call received at `received`.
    fn deadline(&self, received: Instant, client_timeout: Option<Duration>) -> Deadline {
        Deadline::for_call(
            received,
            client_timeout,
            self.config.timeout(),
            self.config.max_timeout(),
        )
    }
}

/// Builds a [`Gateway`] from models and their backend factories; the way to
/// serve a custom [`crate::backend::Backend`] from Rust.
#[derive(Default)]
pub struct GatewayBuilder {
    models: Vec<(ModelConfig, Arc<dyn BackendFactory>)>,
}

impl GatewayBuilder {
    /// Adds a model served by `factory`'s backends (its `backend` kind in
    /// the config is then only a label).
    pub fn model(mut self, config: ModelConfig, factory: Arc<dyn BackendFactory>) -> Self {
        self.models.push((config, factory));
        self
    }

    /// Starts every model's worker threads.
    pub fn build(self) -> io::Result<Gateway> {
        let mut models = Vec::with_capacity(self.models.len());
        let mut by_name = HashMap::new();
        for (config, factory) in self.models {
            validate_model_name(&config.name).map_err(|reason| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("model name \"{}\": {reason}", config.name),
                )
            })?;
            if by_name.insert(config.name.clone(), models.len()).is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("duplicate model name \"{}\"", config.name),
                ));
            }
            let pool =
                WorkerPool::start(&config.name, config.workers, config.queue_capacity, factory)?;
            models.push(Model { config, pool });
        }
        let known = models
            .iter()
            .map(|m: &Model| m.config.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Gateway {
            models,
            by_name,
            known,
            unknown: Arc::new(ModelMetrics::calls_only(UNKNOWN_MODEL)),
            shutting_down: AtomicBool::new(false),
            tracker: TaskTracker::new(),
        })
    }
}

/// The gateway: the served models and the state of the whole server.
pub struct Gateway {
    /// In configuration order.
    models: Vec<Model>,
    by_name: HashMap<String, usize>,
    /// The served names, for NOT_FOUND messages.
    known: String,
    /// Where calls naming no served model are counted.
    unknown: Arc<ModelMetrics>,
    shutting_down: AtomicBool,
    /// One token per call in progress.
    tracker: TaskTracker,
}

/// A call admitted to its model's queue.
struct Admitted<'a> {
    /// Counts the call as in flight until dropped.
    token: TaskTrackerToken,
    model: &'a Model,
    ticket: Ticket,
    deadline: Deadline,
}

/// The backend factory for a configured model; `None` when the model lacks
/// its backend's settings table (which validation refuses).
pub fn factory_for(model: &ModelConfig) -> Option<Arc<dyn BackendFactory>> {
    Some(match model.backend {
        BackendKind::Simulated => Arc::new(SimulatedFactory::new(
            model.simulated.clone().unwrap_or_default(),
        )),
        BackendKind::Process => Arc::new(ProcessFactory::new(&model.name, model.process.clone()?)),
        BackendKind::Openai => Arc::new(OpenAiFactory::from_config(
            &model.name,
            model.openai.as_ref()?,
        )),
    })
}

impl Gateway {
    /// A builder for a gateway with custom backends.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// Starts the models of a (validated) configuration.
    pub fn from_config(config: &Config) -> io::Result<Gateway> {
        let mut builder = Gateway::builder();
        for model in &config.models {
            let factory = factory_for(model).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "model \"{}\" has no [models.{}] table",
                        model.name,
                        model.backend.as_str()
                    ),
                )
            })?;
            builder = builder.model(model.clone(), factory);
        }
        builder.build()
    }

    /// The models, in configuration order.
    pub fn models(&self) -> &[Model] {
        &self.models
    }

    /// Runs a Generate call: the whole text once it is ready.
    /// `received` is when the call reached the server (its deadline counts
    /// from there, as the client's does).
    pub async fn generate(
        &self,
        request: proto::GenerateRequest,
        client_timeout: Option<Duration>,
        received: Instant,
    ) -> Result<Outcome, Error> {
        let model = self.lookup(&request.model);
        let mut record = self.record(model, Method::Generate, received);
        let result = self
            .run_generate(model, request, client_timeout, &record)
            .await;
        record.finish(result.as_ref().err());
        result
    }

    async fn run_generate(
        &self,
        model: Option<&Model>,
        request: proto::GenerateRequest,
        client_timeout: Option<Duration>,
        record: &CallRecord,
    ) -> Result<Outcome, Error> {
        let (tx, rx) = oneshot::channel();
        let mut call = self.admit(
            model,
            request,
            client_timeout,
            record.received(),
            Reply::Whole(tx),
        )?;
        let model = || call.model.config.name.clone();
        match tokio::time::timeout_at(call.deadline.at().into(), rx).await {
            Ok(reply) => {
                call.ticket.settle();
                let outcome = reply.unwrap_or_else(|_| Err(Error::Dropped { model: model() }))?;
                Ok(outcome.received_at(record.received()))
            }
            Err(_) => Err(Error::DeadlineExceeded {
                model: model(),
                deadline: call.deadline,
                stage: call.ticket.abandon().unwrap_or(Stage::Running),
            }),
        }
    }

    /// Starts a GenerateStream call: text as the backend produces it.
    pub fn generate_stream(
        &self,
        request: proto::GenerateRequest,
        client_timeout: Option<Duration>,
        received: Instant,
    ) -> Result<GenerationStream, Error> {
        let model = self.lookup(&request.model);
        let mut record = self.record(model, Method::GenerateStream, received);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let call = match self.admit(
            model,
            request,
            client_timeout,
            record.received(),
            Reply::Stream(tx),
        ) {
            Ok(call) => call,
            Err(error) => {
                record.finish(Some(&error));
                return Err(error);
            }
        };
        Ok(GenerationStream::new(
            rx,
            call.ticket,
            call.token,
            record,
            call.model.config.name.clone(),
            call.deadline,
        ))
    }

    /// The served model of that name: looked up once per call, for both its
    /// record and its admission.
    fn lookup(&self, name: &str) -> Option<&Model> {
        self.by_name.get(name).map(|&i| &self.models[i])
    }

    /// The record of a call to `model` (or to no served model), received
    /// at `received`.
    fn record(&self, model: Option<&Model>, method: Method, received: Instant) -> CallRecord {
        let metrics = model.map_or(&self.unknown, |m| m.pool.metrics());
        CallRecord::new(metrics.clone(), method, received)
    }

    /// Everything a call goes through before it waits: shutdown check,
    /// model lookup, validation, deadline, admission to the queue.
    fn admit<'a>(
        &'a self,
        model: Option<&'a Model>,
        request: proto::GenerateRequest,
        client_timeout: Option<Duration>,
        received: Instant,
        reply: Reply,
    ) -> Result<Admitted<'a>, Error> {
        let token = self.enter()?;
        let model = model.ok_or_else(|| self.not_found(&request.model))?;
        let params = request::params(request, &model.config)?;
        let deadline = model.deadline(received, client_timeout);
        let ticket = model.pool.submit(params, deadline, received, reply)?;
        Ok(Admitted {
            token,
            model,
            ticket,
            deadline,
        })
    }

    /// Admits a call unless the gateway is shutting down.
    fn enter(&self) -> Result<TaskTrackerToken, Error> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        Ok(self.tracker.token())
    }

    /// The error for a name that is no served model.
    fn not_found(&self, name: &str) -> Error {
        if name.is_empty() {
            return Error::invalid(
                "model",
                format!("required; this gateway serves: {}", self.known),
            );
        }
        Error::ModelNotFound {
            model: name.to_string(),
            known: self.known.clone(),
        }
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Stops admitting calls: new ones get UNAVAILABLE; the ones in
    /// progress go on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.tracker.close();
        for model in &self.models {
            model.pool.close();
        }
    }

    /// Calls in progress (queued, running, or sending their answer).
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// Resolves once shutdown has begun and every call has ended.
    pub async fn drained(&self) {
        self.tracker.wait().await;
    }

    /// Resolves once every worker thread has ended (after
    /// [`begin_shutdown`](Self::begin_shutdown)), or at `until`; returns how
    /// many are still running. Ended workers have dropped their backends,
    /// so their worker processes are gone.
    pub async fn workers_stopped(&self, until: Instant) -> usize {
        loop {
            let alive: usize = self.models.iter().map(|m| m.pool.threads_alive()).sum();
            if alive == 0 || Instant::now() >= until {
                return alive;
            }
            tokio::time::sleep(WORKER_EXIT_POLL).await;
        }
    }

    /// Ends every call now (the grace ran out): returns how many were
    /// queued and how many running.
    pub fn abort(&self) -> (usize, usize) {
        self.models.iter().fold((0, 0), |(q, r), model| {
            let (mq, mr) = model.pool.abort();
            (q + mq, r + mr)
        })
    }
}

impl StatsSource for Gateway {
    fn pool_stats(&self) -> Vec<(String, PoolStats)> {
        self.models
            .iter()
            .map(|m| (m.config.name.clone(), m.stats()))
            .collect()
    }
}
