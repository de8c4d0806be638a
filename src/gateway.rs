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
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::auth::Auth;
use crate::auth::limits::CallPermit;
use crate::backend::{BackendFactory, OpenAiFactory, ProcessFactory, SimulatedFactory};
use crate::cache::{Directive, Lookup, ResponseCache, Storing};
use crate::chain::Chain;
use crate::config::{
    BackendKind, Config, DEFAULT_MAX_BATCH_ITEMS, ModelConfig, validate_fallbacks,
    validate_model_name,
};
use crate::deadline::Deadline;
use crate::error::{Error, Stage};
use crate::metrics::{Method, ModelMetrics, PoolStats, StatsSource, UNKNOWN_MODEL};
use crate::outcome::{CacheState, Outcome, StreamItem};
use crate::pool::{Place, Reply, Ticket, WorkerPool};
use crate::proto;
use crate::record::CallRecord;
use crate::request;
use crate::stream::GenerationStream;
use crate::tenant::Caller;
use crate::unary::{GenerateCall, Waiting};

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
    /// Indices of `config.fallbacks` in the gateway's models.
    fallbacks: Vec<usize>,
    cache: Option<Arc<ResponseCache>>,
}

impl Model {
    /// Indices of the fallbacks in the gateway's models.
    pub(crate) fn fallbacks(&self) -> &[usize] {
        &self.fallbacks
    }

    /// The model's metric handles.
    pub(crate) fn metrics(&self) -> &ModelMetrics {
        self.pool.metrics()
    }

    /// The pool's load right now.
    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Answers and bytes in the response cache, and the cacheable calls
    /// between lookup and answer; zeros without a cache.
    pub async fn cache_size(&self) -> (u64, u64, u64) {
        match &self.cache {
            Some(cache) => cache.size().await,
            None => (0, 0, 0),
        }
    }

    /// The backend kind.
    pub fn backend_kind(&self) -> &str {
        self.pool.backend_kind()
    }

    /// The deadline of a call received at `received`.
    pub(crate) fn deadline(&self, received: Instant, client_timeout: Option<Duration>) -> Deadline {
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
pub struct GatewayBuilder {
    models: Vec<(ModelConfig, Arc<dyn BackendFactory>)>,
    max_batch_items: usize,
    auth: Option<Arc<Auth>>,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        GatewayBuilder {
            models: Vec::new(),
            max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
            auth: None,
        }
    }
}

impl GatewayBuilder {
    /// Adds a model served by `factory`'s backends (its `backend` kind in
    /// the config is then only a label).
    pub fn model(mut self, config: ModelConfig, factory: Arc<dyn BackendFactory>) -> Self {
        self.models.push((config, factory));
        self
    }

    /// The most items one GenerateBatch call may carry.
    pub fn max_batch_items(mut self, items: usize) -> Self {
        self.max_batch_items = items;
        self
    }

    /// Requires an API key of every call (see [`crate::auth`]).
    pub fn auth(mut self, auth: Arc<Auth>) -> Self {
        self.auth = Some(auth);
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
            let cache = config.cache.as_ref().map(|cache| {
                Arc::new(ResponseCache::new(
                    &config.name,
                    cache,
                    config.cache_nondeterministic,
                ))
            });
            models.push(Model {
                config,
                pool,
                fallbacks: Vec::new(),
                cache,
            });
        }
        let configs: Vec<ModelConfig> = models.iter().map(|m| m.config.clone()).collect();
        validate_fallbacks(&configs).map_err(|(key, reason)| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{key}: {reason}"))
        })?;
        for model in &mut models {
            model.fallbacks = model
                .config
                .fallbacks
                .iter()
                .filter_map(|name| by_name.get(name).copied())
                .collect();
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
            max_batch_items: self.max_batch_items,
            auth: self.auth,
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
    /// The API keys, when calls need one.
    auth: Option<Arc<Auth>>,
    shutting_down: AtomicBool,
    /// One token per call in progress.
    tracker: TaskTracker,
    /// The most items of one GenerateBatch call.
    max_batch_items: usize,
}

/// How a call came in: when, with what deadline, through which RPC, and
/// what it asked of the cache.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// The client's grpc-timeout, if it set one.
    pub client_timeout: Option<Duration>,
    /// When the call reached the server: its deadline counts from there,
    /// as the client's does.
    pub received: Instant,
    /// The RPC, for the `method` label.
    pub method: Method,
    /// The client's `cache-control`.
    pub cache: Directive,
    /// Who the call is from: its tenant in the queue and metrics.
    pub caller: Caller,
}

impl CallOptions {
    /// A Generate call received at `received`, using the cache.
    pub fn new(received: Instant, client_timeout: Option<Duration>) -> Self {
        CallOptions {
            client_timeout,
            received,
            method: Method::Generate,
            cache: Directive::Use,
            caller: Caller::anonymous(),
        }
    }
}

/// The items of a GenerateStream call, live or replayed from the cache.
pub type CallStream = Pin<Box<dyn Stream<Item = Result<StreamItem, Error>> + Send>>;

/// A stream call once it is opened.
enum Opened {
    /// From a backend; stored in the cache under the key when it ends well.
    Live(Box<GenerationStream>, Option<(Arc<ResponseCache>, Vec<u8>)>),
    /// A cache hit.
    Replay(Outcome),
}

/// A cached answer as a stream: its text in one piece, then the end.
fn replay(mut outcome: Outcome) -> impl Stream<Item = Result<StreamItem, Error>> + Send {
    let text = std::mem::take(&mut outcome.text);
    let first = (!text.is_empty()).then_some(Ok(StreamItem::Text(text)));
    tokio_stream::iter(first.into_iter().chain([Ok(StreamItem::Done(outcome))]))
}

/// A stream that holds the call's place under its key's concurrency limit
/// until the stream is done or dropped.
fn holding(
    stream: impl Stream<Item = Result<StreamItem, Error>> + Send + 'static,
    permit: CallPermit,
) -> CallStream {
    match permit {
        None => Box::pin(stream),
        Some(permit) => Box::pin(tokio_stream::StreamExt::map(stream, move |item| {
            let _held = &permit;
            item
        })),
    }
}

/// A call admitted to its model's queue.
pub(crate) struct Admitted<'a> {
    /// Counts the call as in flight until dropped.
    pub(crate) token: TaskTrackerToken,
    pub(crate) model: &'a Model,
    pub(crate) ticket: Ticket,
    pub(crate) deadline: Deadline,
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
        // Before any model starts: a bad keys file fails fast.
        if let Some(auth) = &config.auth {
            let auth =
                Auth::load(auth).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            builder = builder.auth(Arc::new(auth));
        }
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
        builder
            .max_batch_items(config.server.max_batch_items)
            .build()
    }

    /// The models, in configuration order.
    pub fn models(&self) -> &[Model] {
        &self.models
    }

    /// The API keys, when calls need one.
    pub fn auth(&self) -> Option<&Arc<Auth>> {
        self.auth.as_ref()
    }

    /// The most items one GenerateBatch call may carry.
    pub fn max_batch_items(&self) -> usize {
        self.max_batch_items
    }

    /// Runs a Generate call: the whole text once it is ready, from the
    /// model's cache, an identical call already running, the model, or one
    /// of its fallbacks.
    ///
    /// Admission happens here, when the call is made (in the caller's
    /// span); the future only waits (see [`crate::unary`]: a plain call
    /// waits in a few hundred bytes). Call it inside a tokio runtime: an
    /// admitted call starts its deadline's timer here.
    pub fn generate(
        &self,
        request: proto::GenerateRequest,
        options: CallOptions,
    ) -> GenerateCall<'_> {
        let model = self.lookup(&request.model);
        let mut record = self.record(model, &options);
        // Held until the call ends: its place under the key's limit.
        let permit = match options.caller.admit(&request.model) {
            Ok(permit) => permit,
            Err(error) => {
                record.finish(Some(&error));
                return GenerateCall::done(Err(error));
            }
        };
        match model {
            // The common case: admitted now, then a small future waits.
            Some(model) if model.cache.is_none() && model.fallbacks.is_empty() => {
                let deadline = model.deadline(options.received, options.client_timeout);
                let (tx, rx) = oneshot::channel();
                match self.admit(model, request, deadline, &options, Reply::Whole(tx)) {
                    Ok(call) => GenerateCall::waiting(Waiting::new(
                        record,
                        permit,
                        call,
                        rx,
                        options.received,
                    )),
                    Err(error) => {
                        record.finish(Some(&error));
                        GenerateCall::done(Err(error))
                    }
                }
            }
            _ => GenerateCall::routed(Box::pin(async move {
                let _permit = permit;
                let result = self.generate_cached(model, request, &options).await;
                record.finish(result.as_ref().err());
                result.map(|outcome| outcome.received_at(options.received))
            })),
        }
    }

    /// The cache's part of a Generate call.
    async fn generate_cached(
        &self,
        model: Option<&Model>,
        request: proto::GenerateRequest,
        options: &CallOptions,
    ) -> Result<Outcome, Error> {
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        let model = model.ok_or_else(|| self.not_found(&request.model, &options.caller))?;
        let Some(cache) = &model.cache else {
            return self.generate_routed(model, request, options).await;
        };
        // Boxed: the cache's futures are large, and only calls to a model
        // with a cache should pay for them in memory.
        Box::pin(self.generate_with_cache(model, cache, request, options)).await
    }

    /// A Generate call to a model with a cache.
    async fn generate_with_cache(
        &self,
        model: &Model,
        cache: &ResponseCache,
        request: proto::GenerateRequest,
        options: &CallOptions,
    ) -> Result<Outcome, Error> {
        // Held while this call waits on an identical one, too.
        let _token = self.enter()?;
        if options.cache == Directive::Skip {
            return self
                .generate_routed(model, request, options)
                .await
                .map(|outcome| outcome.cached(CacheState::Bypass));
        }
        let Some(key) = cache.key(&request) else {
            return self.generate_routed(model, request, options).await;
        };
        if options.cache == Directive::Refresh {
            let outcome = self.generate_routed(model, request, options).await?;
            cache.insert(key, outcome.clone()).await;
            return Ok(outcome.cached(CacheState::Bypass));
        }
        let deadline = model.deadline(options.received, options.client_timeout);
        loop {
            let ran = AtomicBool::new(false);
            let run = async {
                ran.store(true, Ordering::Relaxed);
                self.generate_routed(model, request.clone(), options).await
            };
            let lookup = tokio::time::timeout_at(deadline.at().into(), cache.get_or_run(&key, run));
            let Ok(result) = lookup.await else {
                return Err(Error::DeadlineExceeded {
                    model: model.config.name.clone(),
                    deadline,
                    stage: Stage::Queued,
                });
            };
            return match result {
                Ok(Lookup::Hit(entry)) => Ok(Outcome::shared(&entry, CacheState::Hit)),
                Ok(Lookup::Miss(entry)) => Ok(entry.as_ref().clone().cached(CacheState::Miss)),
                Ok(Lookup::Coalesced(entry)) => Ok(Outcome::shared(&entry, CacheState::Coalesced)),
                // The shared call ended on another call's deadline (or its
                // client left): this one has time left, so it tries again.
                Err(Error::DeadlineExceeded { .. } | Error::Dropped { .. })
                    if !ran.load(Ordering::Relaxed) && !deadline.expired() =>
                {
                    continue;
                }
                Err(error) => Err(error),
            };
        }
    }

    /// A Generate call on `model`, or on its fallbacks too.
    async fn generate_routed(
        &self,
        model: &Model,
        request: proto::GenerateRequest,
        options: &CallOptions,
    ) -> Result<Outcome, Error> {
        if model.fallbacks.is_empty() {
            let deadline = model.deadline(options.received, options.client_timeout);
            return self
                .run_once(model, request, deadline, options)
                .await
                .map(|outcome| outcome.served_by(model));
        }
        // Boxed: only calls to a model with fallbacks pay for their state.
        Box::pin(self.generate_with_fallbacks(model, request, options)).await
    }

    /// A Generate call on `first`, then on its fallbacks in order while
    /// each fails in a way that allows it, all within `first`'s deadline.
    async fn generate_with_fallbacks(
        &self,
        first: &Model,
        request: proto::GenerateRequest,
        options: &CallOptions,
    ) -> Result<Outcome, Error> {
        let mut chain = Chain::new(&self.models, first, request, options);
        loop {
            let (model, request, deadline) = chain.attempt()?;
            match self.run_once(model, request, deadline, options).await {
                Ok(outcome) => {
                    let mut outcome = outcome.served_by(model);
                    outcome.route.tried = chain.into_tried();
                    return Ok(outcome);
                }
                Err(error) => chain.failed(error)?,
            }
        }
    }

    /// One attempt of a Generate call on one model.
    async fn run_once(
        &self,
        model: &Model,
        request: proto::GenerateRequest,
        deadline: Deadline,
        options: &CallOptions,
    ) -> Result<Outcome, Error> {
        let (tx, rx) = oneshot::channel();
        let mut call = self.admit(model, request, deadline, options, Reply::Whole(tx))?;
        let name = || call.model.config.name.clone();
        match tokio::time::timeout_at(call.deadline.at().into(), rx).await {
            Ok(reply) => {
                call.ticket.settle();
                reply.unwrap_or_else(|_| Err(Error::Dropped { model: name() }))
            }
            Err(_) => Err(Error::DeadlineExceeded {
                model: name(),
                deadline: call.deadline,
                stage: call.ticket.abandon().unwrap_or(Stage::Running),
            }),
        }
    }

    /// Starts a GenerateStream call: text as the backend produces it, or
    /// replayed from the model's cache.
    pub async fn generate_stream(
        &self,
        request: proto::GenerateRequest,
        options: CallOptions,
    ) -> Result<CallStream, Error> {
        let model = self.lookup(&request.model);
        let mut record = self.record(model, &options);
        let permit = match options.caller.admit(&request.model) {
            Ok(permit) => permit,
            Err(error) => {
                record.finish(Some(&error));
                return Err(error);
            }
        };
        match self.open_stream(model, request, &options).await {
            Ok(Opened::Live(stream, None)) => Ok(holding(stream.attach(record), permit)),
            Ok(Opened::Live(stream, Some((cache, key)))) => Ok(holding(
                Storing::new(stream.attach(record), cache, key),
                permit,
            )),
            Ok(Opened::Replay(outcome)) => {
                record.finish(None);
                Ok(Box::pin(replay(outcome)))
            }
            Err(error) => {
                record.finish(Some(&error));
                Err(error)
            }
        }
    }

    /// The cache's part of a GenerateStream call: a hit is replayed; a miss
    /// streams from the backend and is stored when it ends well. Streams
    /// do not wait on identical calls.
    async fn open_stream(
        &self,
        model: Option<&Model>,
        request: proto::GenerateRequest,
        options: &CallOptions,
    ) -> Result<Opened, Error> {
        let _token = self.enter()?;
        let model = model.ok_or_else(|| self.not_found(&request.model, &options.caller))?;
        let mut state = CacheState::Off;
        let mut store = None;
        if let Some(cache) = &model.cache {
            if options.cache == Directive::Skip {
                state = CacheState::Bypass;
            } else if let Some(key) = cache.key(&request) {
                if options.cache == Directive::Use {
                    if let Some(hit) = cache.get(&key).await {
                        let outcome =
                            Outcome::shared(&hit, CacheState::Hit).received_at(options.received);
                        return Ok(Opened::Replay(outcome));
                    }
                    cache.missed();
                    state = CacheState::Miss;
                } else {
                    state = CacheState::Bypass;
                }
                store = Some((cache.clone(), key));
            }
        }
        let (mut stream, tried) = self.stream_routed(model, request, options).await?;
        stream.set_route(tried, state);
        Ok(Opened::Live(Box::new(stream), store))
    }

    /// A GenerateStream call on `first`, then on its fallbacks while each
    /// fails before its first token in a way that allows it.
    async fn stream_routed(
        &self,
        first: &Model,
        request: proto::GenerateRequest,
        options: &CallOptions,
    ) -> Result<(GenerationStream, Vec<String>), Error> {
        let mut chain = Chain::new(&self.models, first, request, options);
        loop {
            let (model, request, deadline) = chain.attempt()?;
            let (tx, rx) = mpsc::channel(STREAM_BUFFER);
            let call = self.admit(model, request, deadline, options, Reply::Stream(tx));
            let error = match call {
                Ok(call) => {
                    let mut stream = GenerationStream::new(
                        rx,
                        call.ticket,
                        call.token,
                        options.received,
                        model.config.name.clone(),
                        deadline,
                    );
                    // Without a fallback, nothing to decide: stream at once.
                    if !chain.has_next() {
                        return Ok((stream, chain.into_tried()));
                    }
                    match stream.first_error().await {
                        Some(error) if error.fallback_reason().is_some() => error,
                        _ => return Ok((stream, chain.into_tried())),
                    }
                }
                Err(error) => error,
            };
            chain.failed(error)?;
        }
    }

    /// The served model of that name: looked up once per call, for both its
    /// record and its admission.
    fn lookup(&self, name: &str) -> Option<&Model> {
        self.by_name.get(name).map(|&i| &self.models[i])
    }

    /// The record of a call to `model` (or to no served model), received
    /// at `received`.
    fn record(&self, model: Option<&Model>, options: &CallOptions) -> CallRecord {
        let metrics = model.map_or(&self.unknown, |m| m.pool.metrics());
        CallRecord::new(
            metrics.clone(),
            options.method,
            options.received,
            options.caller.tenant.clone(),
        )
    }

    /// Everything a call goes through before it waits on one model:
    /// shutdown check, validation, admission to the queue.
    fn admit<'a>(
        &'a self,
        model: &'a Model,
        request: proto::GenerateRequest,
        deadline: Deadline,
        options: &CallOptions,
        reply: Reply,
    ) -> Result<Admitted<'a>, Error> {
        let token = self.enter()?;
        let priority = options.caller.priority(request.priority);
        let params = request::params(request, &model.config)?;
        let place = Place {
            caller: &options.caller,
            priority,
        };
        let ticket = model
            .pool
            .submit(params, place, deadline, options.received, reply)?;
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
    /// A caller with an API key hears only of the models the key may use.
    fn not_found(&self, name: &str, caller: &Caller) -> Error {
        let known = match &caller.key {
            None => self.known.clone(),
            Some(key) => self
                .models
                .iter()
                .map(|m| m.config.name.as_str())
                .filter(|name| key.allows(name))
                .collect::<Vec<_>>()
                .join(", "),
        };
        if name.is_empty() {
            return Error::invalid("model", format!("required; this gateway serves: {known}"));
        }
        Error::ModelNotFound {
            model: name.to_string(),
            known,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every call waiting in a queue keeps its handler's future alive: its
    /// size is memory per waiting call (bench S5). The cache and fallback
    /// paths are boxed so that plain calls do not pay for them. 976 bytes
    /// as an `async fn`, 352 as [`GenerateCall`].
    #[test]
    fn a_plain_call_keeps_its_future_small() {
        let gateway = Gateway::builder().build().expect("an empty gateway");
        let options = CallOptions::new(Instant::now(), None);
        let call = gateway.generate(proto::GenerateRequest::default(), options);
        let size = std::mem::size_of_val(&call);
        assert!(size <= 512, "the Generate future takes {size} bytes");
    }
}
