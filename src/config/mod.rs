//! The configuration file: its structure and defaults.
//!
//! A [`Config`] is read once at start-up, from a TOML file or from the
//! embedded default ([`DEFAULT_CONFIG_TOML`]), then checked once by
//! [`Config::validate`]. Every error names the key it is about (and the line,
//! where the TOML parser gives it), so that a bad file is refused with one
//! clear line instead of failing later under load.

mod auth;
mod error;
mod openai;
mod redact;
mod tls;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use auth::{AuthConfig, ListModelsAccess, ReflectionAccess};
pub use error::ConfigError;
use error::{line_of_model_key, parse_error};
pub use openai::{
    DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_EJECT_AFTER, DEFAULT_EJECT_MS, DEFAULT_HEALTH_INTERVAL_MS,
    DEFAULT_HEALTH_PATH, DEFAULT_READ_TIMEOUT_MS, DEFAULT_UPSTREAM_WEIGHT, MAX_EJECT_AFTER,
    MAX_EJECT_MS, MAX_HEALTH_INTERVAL_MS, MAX_HEALTH_PATH_BYTES, MAX_HTTP_TIMEOUT_MS,
    MAX_UPSTREAM_NAME_BYTES, MAX_UPSTREAM_WEIGHT, MAX_UPSTREAMS, MIN_HEALTH_INTERVAL_MS,
    NamedUpstream, OpenAiConfig, UpstreamConfig,
};
pub use redact::{redact_url, url_secret};
pub use tls::{
    ClientAuth, DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_RELOAD_INTERVAL_MS, MAX_HANDSHAKE_TIMEOUT_MS,
    MAX_RELOAD_INTERVAL_MS, MIN_RELOAD_INTERVAL_MS, TlsConfig,
};
pub(crate) use validate::{validate_fallbacks, validate_model_name};

/// The configuration used when `serve` is given no `--config`: simulated
/// models that replay the original two-task story, and a fast one for load
/// tests.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default.toml");

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default Prometheus exporter address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Default time given to queued and running calls to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 30;
/// Default largest request message, in bytes (gRPC's usual 4 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Default HTTP/2 streams (calls) one connection may have open at once.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 16_384;
/// Default worker threads per model.
pub const DEFAULT_WORKERS: usize = 4;
/// Default number of calls that may wait for a worker.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;
/// Default deadline of a call whose client sets none.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// Default cap on a client's grpc-timeout: five minutes, so that no client
/// can hold a worker for longer unless the operator allows it.
pub const DEFAULT_MAX_TIMEOUT_MS: u64 = 300_000;
/// Default upper bound on `max_tokens` in a request.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Default gRPC connections open at once; beyond it new ones are closed at
/// once. Far below usual fd limits, and each idle HTTP/2 connection costs
/// tens of KiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default time a gRPC connection may stay open with no call in flight.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 300;
/// Default time from accepting a gRPC connection to its first call
/// (connections that send nothing, or only the HTTP/2 preface, are closed).
pub const DEFAULT_FIRST_CALL_TIMEOUT_SECONDS: u64 = 10;
/// Default `/metrics` connections open at once: a few scrapers need a few.
pub const DEFAULT_METRICS_MAX_CONNECTIONS: usize = 64;
/// Default time a `/metrics` client gets to send a request's headers.
pub const DEFAULT_METRICS_HEADER_TIMEOUT_MS: u64 = 5_000;
/// Default longest life of a `/metrics` connection.
pub const DEFAULT_METRICS_CONNECTION_TIMEOUT_MS: u64 = 60_000;

/// Default most items in one GenerateBatch call.
pub const DEFAULT_MAX_BATCH_ITEMS: usize = 256;
/// Most items `server.max_batch_items` may allow.
pub const MAX_BATCH_ITEMS: usize = 100_000;
/// Most fallbacks one model may list.
pub const MAX_FALLBACKS: usize = 16;
/// Default answers one model's response cache holds.
pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 10_000;
/// Default bytes one model's response cache holds: 64 MiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default time an answer stays in the cache: 5 minutes.
pub const DEFAULT_CACHE_TTL_SECONDS: f64 = 300.0;
/// Most answers one model's cache may hold.
pub const MAX_CACHE_ENTRIES: u64 = 100_000_000;
/// Most bytes one model's cache may hold: 64 GiB.
pub const MAX_CACHE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Longest time an answer may stay cached: 30 days.
pub const MAX_CACHE_TTL_SECONDS: f64 = 30.0 * 86_400.0;

/// Most gRPC connections `server.max_connections` may allow.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// Most `/metrics` connections `server.metrics_max_connections` may allow:
/// kept small so that `/metrics` can never take the fds gRPC needs.
pub const MAX_METRICS_CONNECTIONS: usize = 1024;
/// Longest idle or first-call timeout of a gRPC connection: one day.
pub const MAX_CONNECTION_TIMEOUT_SECONDS: u64 = 86_400;
/// Longest `/metrics` header or connection timeout: one hour.
pub const MAX_METRICS_TIMEOUT_MS: u64 = 3_600_000;

/// Most worker threads one model may have.
pub const MAX_WORKERS: usize = 4096;
/// Largest queue one model may have.
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;
/// Longest call deadline (`timeout_ms`, `max_timeout_ms`): one day.
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Longest shutdown grace: one hour.
pub const MAX_SHUTDOWN_GRACE_SECONDS: u64 = 3600;
/// Smallest and largest request message accepted.
pub const MIN_MESSAGE_BYTES: usize = 1024;
/// Largest request message accepted: 256 MiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Most HTTP/2 streams per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1_000_000;
/// Largest `max_tokens` a model may allow.
pub const MAX_MAX_TOKENS: u32 = 10_000_000;
/// Longest simulated latency (per call, or per token): one hour.
pub const MAX_SIMULATED_LATENCY_MS: u64 = 3600 * 1000;
/// Most tokens a simulated model produces per call.
pub const MAX_SIMULATED_OUTPUT_TOKENS: u32 = 1_000_000;

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen addresses and transport limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The models served, in the order ListModels reports them.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// API keys; without this table every call is anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
}

/// The `[server]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the gRPC server.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// How long queued and running calls may take to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
    /// Largest request message accepted; larger ones get RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// HTTP/2 streams one connection may have open at once.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// gRPC connections open at once; a connection beyond it is accepted
    /// and closed at once (the client sees UNAVAILABLE and may retry).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A gRPC connection with no call in flight for this long is closed.
    #[serde(default = "default_idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// A gRPC connection that has started no call this long after it was
    /// accepted (silent, or only the HTTP/2 preface) is closed.
    #[serde(default = "default_first_call_timeout_seconds")]
    pub first_call_timeout_seconds: u64,
    /// `/metrics` connections open at once; beyond it, closed at once.
    #[serde(default = "default_metrics_max_connections")]
    pub metrics_max_connections: usize,
    /// Time a `/metrics` client gets to send a whole request head
    /// (slowloris defence); also bounds an idle keep-alive connection.
    #[serde(default = "default_metrics_header_timeout_ms")]
    pub metrics_header_timeout_ms: u64,
    /// Longest life of a `/metrics` connection, however it is used.
    #[serde(default = "default_metrics_connection_timeout_ms")]
    pub metrics_connection_timeout_ms: u64,
    /// Most items one GenerateBatch call may carry: each is a call of its
    /// own, so this bounds what one RPC can put in the queues.
    #[serde(default = "default_max_batch_items")]
    pub max_batch_items: usize,
    /// TLS on the gRPC listener (and optionally `/metrics`); plain text
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            metrics_listen: default_metrics_listen(),
            shutdown_grace_seconds: DEFAULT_SHUTDOWN_GRACE_SECONDS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout_seconds: DEFAULT_IDLE_TIMEOUT_SECONDS,
            first_call_timeout_seconds: DEFAULT_FIRST_CALL_TIMEOUT_SECONDS,
            metrics_max_connections: DEFAULT_METRICS_MAX_CONNECTIONS,
            metrics_header_timeout_ms: DEFAULT_METRICS_HEADER_TIMEOUT_MS,
            metrics_connection_timeout_ms: DEFAULT_METRICS_CONNECTION_TIMEOUT_MS,
            max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// The shutdown grace as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// The idle timeout of a gRPC connection as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }

    /// The first-call timeout of a gRPC connection as a duration.
    pub fn first_call_timeout(&self) -> Duration {
        Duration::from_secs(self.first_call_timeout_seconds)
    }
}

/// Which backend serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Deterministic text after a configured delay: demos and load tests.
    Simulated,
    /// Long-lived child processes speaking JSON lines (any language).
    Process,
    /// An OpenAI-compatible HTTP server (vLLM, llama.cpp, Ollama, OpenAI).
    Openai,
}

impl BackendKind {
    /// The name used in the config file and in ListModels.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Simulated => "simulated",
            BackendKind::Process => "process",
            BackendKind::Openai => "openai",
        }
    }
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients put in `GenerateRequest.model`.
    pub name: String,
    /// Which backend runs the calls.
    pub backend: BackendKind,
    /// Backend calls that may run at once (one OS thread each).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Calls that may wait for a worker; beyond that, RESOURCE_EXHAUSTED.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Deadline of a call whose client sets no grpc-timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Cap on a client's grpc-timeout: the effective deadline is the
    /// smaller of the two.
    #[serde(default = "default_max_timeout_ms")]
    pub max_timeout_ms: u64,
    /// Largest `max_tokens` a request may ask for.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Models tried in order when a call to this one fails before its
    /// first token with UNAVAILABLE or RESOURCE_EXHAUSTED (queue full,
    /// model down, refused at admission, upstream 429 or 5xx), within the
    /// same deadline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// The response cache; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheConfig>,
    /// Caches answers to requests that are not deterministic (temperature
    /// above 0 or unset, and no seed): for backends that ignore sampling.
    #[serde(default)]
    pub cache_nondeterministic: bool,
    /// Settings of the simulated backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated: Option<SimulatedConfig>,
    /// Settings of the process backend (required for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessConfig>,
    /// Settings of the OpenAI-compatible backend (required for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openai: Option<OpenAiConfig>,
}

impl ModelConfig {
    /// A model with default pool settings, for the given backend.
    pub fn new(name: impl Into<String>, backend: BackendKind) -> Self {
        ModelConfig {
            name: name.into(),
            backend,
            workers: DEFAULT_WORKERS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_timeout_ms: DEFAULT_MAX_TIMEOUT_MS,
            max_tokens: DEFAULT_MAX_TOKENS,
            fallbacks: Vec::new(),
            cache: None,
            cache_nondeterministic: false,
            simulated: None,
            process: None,
            openai: None,
        }
    }

    /// The deadline applied when the client sets none.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The cap on a client's deadline.
    pub fn max_timeout(&self) -> Duration {
        Duration::from_millis(self.max_timeout_ms)
    }
}

/// The `[models.cache]` table: a bounded response cache. Whichever bound
/// is reached first evicts the least recently used answers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Most answers held.
    #[serde(default = "default_cache_max_entries")]
    pub max_entries: u64,
    /// Most bytes held (keys, which hold the prompt, and answers).
    #[serde(default = "default_cache_max_bytes")]
    pub max_bytes: u64,
    /// How long an answer is served after it was made; fractions allowed.
    #[serde(default = "default_cache_ttl_seconds")]
    pub ttl_seconds: f64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: DEFAULT_CACHE_MAX_ENTRIES,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            ttl_seconds: DEFAULT_CACHE_TTL_SECONDS,
        }
    }
}

impl CacheConfig {
    /// The time-to-live as a duration (validated: positive and bounded).
    pub fn ttl(&self) -> Duration {
        Duration::try_from_secs_f64(self.ttl_seconds).unwrap_or(Duration::from_secs(1))
    }
}

/// How the simulated backend spends its latency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimulatedMode {
    /// Sleeps: like waiting on I/O or a remote model; costs no CPU.
    #[default]
    Sleep,
    /// Spins: burns that much CPU time, like local inference (a call takes
    /// longer when more calls spin than there are cores).
    Spin,
}

/// The `[models.simulated]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Blocking time per call, before the first token.
    #[serde(default)]
    pub latency_ms: u64,
    /// Extra blocking time per generated token.
    #[serde(default)]
    pub token_latency_ms: u64,
    /// Sleep (I/O-like) or spin (CPU-bound).
    #[serde(default)]
    pub mode: SimulatedMode,
    /// Tokens produced when the request does not set `max_tokens`; unset,
    /// the input's words are echoed once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u32>,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            latency_ms: 0,
            token_latency_ms: 0,
            mode: SimulatedMode::Sleep,
            output_tokens: None,
        }
    }
}

/// Default time a process worker gets to answer a cancel line before it is
/// killed and restarted.
pub const DEFAULT_CANCEL_GRACE_MS: u64 = 1000;
/// Longest `cancel_grace_ms`: a worker that ignores cancel lines holds its
/// worker slot this long at most.
pub const MAX_CANCEL_GRACE_MS: u64 = 60_000;
/// Default time a process worker has to send its ready line after it was
/// started (its model loading included).
pub const DEFAULT_START_TIMEOUT_MS: u64 = 30_000;
/// Longest `start_timeout_ms`.
pub const MAX_START_TIMEOUT_MS: u64 = 600_000;

/// The `[models.process]` table: how to start one worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// Program and arguments, e.g. `["python3", "worker.py"]`.
    pub command: Vec<String>,
    /// Extra environment variables for the worker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory of the worker. In a configuration read from a
    /// file ([`Config::from_file`]) a relative `cwd` is taken relative to
    /// the file's directory, and the default is that directory; otherwise
    /// (no `cwd`, or TOML given as text) the worker inherits the gateway's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// How long a worker may take to stop after a cancel line before it is
    /// killed and restarted.
    #[serde(default = "default_cancel_grace_ms")]
    pub cancel_grace_ms: u64,
    /// How long a starting worker may take to send its ready line before it
    /// is killed and counts as failed to start.
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
}

fn default_cancel_grace_ms() -> u64 {
    DEFAULT_CANCEL_GRACE_MS
}
fn default_start_timeout_ms() -> u64 {
    DEFAULT_START_TIMEOUT_MS
}

fn default_listen() -> SocketAddr {
    parse_default_addr(DEFAULT_LISTEN)
}
fn default_metrics_listen() -> SocketAddr {
    parse_default_addr(DEFAULT_METRICS_LISTEN)
}
fn parse_default_addr(addr: &str) -> SocketAddr {
    // The defaults are constants checked by the `defaults_parse` test.
    addr.parse().expect("default address constant is valid")
}
fn default_shutdown_grace_seconds() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_SECONDS
}
fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}
fn default_max_concurrent_streams() -> u32 {
    DEFAULT_MAX_CONCURRENT_STREAMS
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_idle_timeout_seconds() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECONDS
}
fn default_first_call_timeout_seconds() -> u64 {
    DEFAULT_FIRST_CALL_TIMEOUT_SECONDS
}
fn default_metrics_max_connections() -> usize {
    DEFAULT_METRICS_MAX_CONNECTIONS
}
fn default_metrics_header_timeout_ms() -> u64 {
    DEFAULT_METRICS_HEADER_TIMEOUT_MS
}
fn default_metrics_connection_timeout_ms() -> u64 {
    DEFAULT_METRICS_CONNECTION_TIMEOUT_MS
}
fn default_max_batch_items() -> usize {
    DEFAULT_MAX_BATCH_ITEMS
}
fn default_cache_max_entries() -> u64 {
    DEFAULT_CACHE_MAX_ENTRIES
}
fn default_cache_max_bytes() -> u64 {
    DEFAULT_CACHE_MAX_BYTES
}
fn default_cache_ttl_seconds() -> f64 {
    DEFAULT_CACHE_TTL_SECONDS
}
fn default_workers() -> usize {
    DEFAULT_WORKERS
}
fn default_queue_capacity() -> usize {
    DEFAULT_QUEUE_CAPACITY
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_timeout_ms() -> u64 {
    DEFAULT_MAX_TIMEOUT_MS
}
fn default_max_tokens() -> u32 {
    DEFAULT_MAX_TOKENS
}

impl Config {
    /// Reads and validates a configuration file, and resolves the relative
    /// paths in it against the file's directory (see
    /// [`resolve_paths`](Self::resolve_paths)), so that the file means the
    /// same whatever directory the gateway is started from.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let error = |message: String| ConfigError {
            source: source.clone(),
            line: None,
            key: None,
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| error(format!("cannot read the file: {e}")))?;
        let mut config = Config::from_toml(&text, &source)?;
        let dir = std::path::absolute(path)
            .map_err(|e| error(format!("cannot tell the file's directory: {e}")))?;
        let dir = dir.parent().unwrap_or(Path::new("/"));
        config.resolve_paths(dir);
        Ok(config)
    }

    /// Makes the paths of a configuration read from a file in `dir`
    /// independent of the gateway's working directory. For each process
    /// model: `cwd` defaults to `dir`, and a relative `cwd` is joined to
    /// `dir`; a program given as a relative path with a `/` in it
    /// (`./run.sh`, `venv/bin/python`) is joined to that working
    /// directory; so is `auth.keys_file`. A bare program name (`python3`) is still looked up in
    /// `PATH`, and the arguments are left as they are: the worker runs in
    /// that directory, so `["python3", "worker.py"]` finds a `worker.py`
    /// next to the file. The files of `[server.tls]` (`cert`, `key`,
    /// `client_ca`) are joined to `dir` when relative.
    pub fn resolve_paths(&mut self, dir: &Path) {
        if let Some(auth) = &mut self.auth {
            auth.keys_file = dir.join(&auth.keys_file);
        }
        if let Some(tls) = self.server.tls.as_mut() {
            tls.resolve_paths(dir);
        }
        for process in self.models.iter_mut().filter_map(|m| m.process.as_mut()) {
            let cwd = match process.cwd.take() {
                Some(cwd) => dir.join(cwd),
                None => dir.to_path_buf(),
            };
            if let Some(program) = process.command.first_mut()
                && program.contains('/')
                && Path::new(program.as_str()).is_relative()
            {
                // `./run.sh` becomes `{cwd}/run.sh`, not `{cwd}/./run.sh`.
                let relative: PathBuf = Path::new(program.as_str())
                    .components()
                    .filter(|c| !matches!(c, std::path::Component::CurDir))
                    .collect();
                if let Some(joined) = cwd.join(relative).to_str() {
                    *program = joined.to_string();
                }
            }
            process.cwd = Some(cwd);
        }
    }

    /// The embedded default configuration, validated.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::from_toml(DEFAULT_CONFIG_TOML, "embedded default")
    }

    /// Parses and validates TOML text; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(e, text, source))?;
        config.validate().map_err(|(key, message)| ConfigError {
            source: source.to_string(),
            line: line_of_model_key(text, &key),
            key: Some(key),
            message,
        })?;
        Ok(config)
    }

    /// The configuration as TOML, every default filled in.
    pub fn to_toml(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// A copy fit for printing: credentials in URLs become `***`.
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        for openai in config.models.iter_mut().filter_map(|m| m.openai.as_mut()) {
            *openai = openai.redacted();
        }
        config
    }

    /// Checks the files the configuration names (the API keys file), so
    /// that `check-config` and `serve` refuse a bad one up front, naming
    /// the key, the file and the entry at fault.
    pub fn check_files(&self, source: &str) -> Result<(), ConfigError> {
        if let Some(auth) = &self.auth {
            crate::auth::keys::KeysFile::read(&auth.keys_file).map_err(|message| ConfigError {
                source: source.to_string(),
                line: None,
                key: Some("auth.keys_file".into()),
                message: format!("{}: {message}", auth.keys_file.display()),
            })?;
        }
        Ok(())
    }

    /// Checks what serving needs from the machine and a file cannot show:
    /// the environment variables named by `api_key_env` are set. `serve`
    /// calls it; `check-config` does not, so that its answer is the same on
    /// any machine.
    pub fn check_environment(&self, source: &str) -> Result<(), ConfigError> {
        for (i, model) in self.models.iter().enumerate() {
            if let Some(openai) = &model.openai {
                openai
                    .check_environment()
                    .map_err(|(key, message)| ConfigError {
                        source: source.to_string(),
                        line: None,
                        key: Some(format!("models[{i}].{key}")),
                        message,
                    })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> ConfigError {
        match Config::from_toml(text, "test.toml") {
            Ok(_) => panic!("config should have been refused:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_parse() {
        let config = Config::embedded_default().expect("embedded default is valid");
        assert_eq!(config.server.listen, DEFAULT_LISTEN.parse().unwrap());
        assert!(!config.models.is_empty());
    }

    #[test]
    fn effective_config_round_trips() {
        let config = Config::embedded_default().unwrap();
        let again = Config::from_toml(&config.to_toml(), "rendered").unwrap();
        assert_eq!(again.models.len(), config.models.len());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = error("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_address_names_the_key() {
        let e = error("[server]\nlisten = \"nowhere\"\n");
        assert_eq!(e.key.as_deref(), Some("server.listen"));
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn nested_keys_get_their_table_path() {
        let e = error(
            "[[models]]\nname = \"a\"\nbackend = \"simulated\"\n[[models]]\nname = \"b\"\nbackend = \"simulated\"\n[models.simulated]\nlatency_ms = \"slow\"\n",
        );
        assert_eq!(e.key.as_deref(), Some("models[1].simulated.latency_ms"));
        assert_eq!(e.line, Some(8));
    }

    #[test]
    fn zero_workers_is_refused() {
        let e = error("[[models]]\nname = \"a\"\nbackend = \"simulated\"\nworkers = 0\n");
        assert_eq!(e.key.as_deref(), Some("models[0].workers"));
        assert_eq!(e.line, Some(4));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let e = error(
            "[[models]]\nname = \"a\"\nbackend = \"simulated\"\n[[models]]\nname = \"a\"\nbackend = \"simulated\"\n",
        );
        assert_eq!(e.key.as_deref(), Some("models[1].name"));
        assert_eq!(e.line, Some(5));
    }

    #[test]
    fn unknown_backend_is_refused() {
        let e = error("[[models]]\nname = \"a\"\nbackend = \"magic\"\n");
        assert_eq!(e.key.as_deref(), Some("models[0].backend"));
    }

    #[test]
    fn backends_need_their_table() {
        let e = error("[[models]]\nname = \"a\"\nbackend = \"process\"\n");
        assert_eq!(e.key.as_deref(), Some("models[0].process"));
        let e = error(
            "[[models]]\nname = \"a\"\nbackend = \"process\"\n[models.process]\ncommand = []\n",
        );
        assert_eq!(e.key.as_deref(), Some("models[0].process.command"));
        let e = error(
            "[[models]]\nname = \"a\"\nbackend = \"openai\"\n[models.openai]\nbase_url = \"localhost:8000\"\n",
        );
        assert_eq!(e.key.as_deref(), Some("models[0].openai.base_url"));
        let e = error(
            "[[models]]\nname = \"a\"\nbackend = \"simulated\"\n[models.process]\ncommand = [\"x\"]\n",
        );
        assert_eq!(e.key.as_deref(), Some("models[0].process"));
        // An unset variable is the machine's business, not the file's:
        // `serve` refuses it, `check-config` does not look.
        let unset = Config::from_toml(
            "[[models]]\nname = \"a\"\nbackend = \"openai\"\n[models.openai]\nbase_url = \"http://h/v1\"\napi_key_env = \"INFERGATE_SURELY_UNSET_VAR\"\n",
            "t",
        )
        .expect("the file is valid");
        let e = unset.check_environment("t").expect_err("unset");
        assert_eq!(e.key.as_deref(), Some("models[0].openai.api_key_env"));
        assert!(e.message.contains("INFERGATE_SURELY_UNSET_VAR"));
        let ok = "[[models]]\nname = \"a\"\nbackend = \"openai\"\n[models.openai]\nbase_url = \"http://127.0.0.1:8000/v1\"\napi_key_env = \"PATH\"\n";
        assert!(Config::from_toml(ok, "t").is_ok());
    }

    #[test]
    fn durations_and_sizes_have_upper_bounds() {
        let model = "[[models]]\nname = \"a\"\nbackend = \"simulated\"\n";
        let cases = [
            (
                "[server]\nshutdown_grace_seconds = 18446744073709551615\n",
                "server.shutdown_grace_seconds",
            ),
            (
                "[server]\nmax_message_bytes = 100000000000\n",
                "server.max_message_bytes",
            ),
            ("timeout_ms = 90000000000\n", "models[0].timeout_ms"),
            ("max_timeout_ms = 90000000000\n", "models[0].max_timeout_ms"),
            (
                "timeout_ms = 2000\nmax_timeout_ms = 1000\n",
                "models[0].timeout_ms",
            ),
            ("max_tokens = 4000000000\n", "models[0].max_tokens"),
            (
                "[models.simulated]\nlatency_ms = 18446744073709551615\n",
                "models[0].simulated.latency_ms",
            ),
        ];
        for (extra, key) in cases {
            let text = if extra.starts_with("[server]") {
                format!("{extra}{model}")
            } else {
                format!("{model}{extra}")
            };
            let e = error(&text);
            assert_eq!(e.key.as_deref(), Some(key), "{text}\n{e}");
            assert!(e.message.contains("between"), "{e}");
        }
    }

    #[test]
    fn connection_limits_are_bounded() {
        let model = "[[models]]\nname = \"a\"\nbackend = \"simulated\"\n";
        for (key, value) in [
            ("max_connections", "0"),
            ("max_connections", "1000001"),
            ("idle_timeout_seconds", "0"),
            ("idle_timeout_seconds", "86401"),
            ("first_call_timeout_seconds", "0"),
            ("metrics_max_connections", "0"),
            ("metrics_max_connections", "1025"),
            ("metrics_header_timeout_ms", "0"),
            ("metrics_connection_timeout_ms", "3600001"),
        ] {
            let e = error(&format!("[server]\n{key} = {value}\n{model}"));
            assert_eq!(e.key.as_deref(), Some(format!("server.{key}").as_str()));
        }
    }

    #[test]
    fn openai_health_interval_is_bounded() {
        let model = |interval: u64| {
            format!(
                "[[models]]\nname = \"a\"\nbackend = \"openai\"\n[models.openai]\nbase_url = \"http://h/v1\"\nhealth_interval_ms = {interval}\n"
            )
        };
        for bad in [0, MIN_HEALTH_INTERVAL_MS - 1, MAX_HEALTH_INTERVAL_MS + 1] {
            let e = error(&model(bad));
            assert_eq!(
                e.key.as_deref(),
                Some("models[0].openai.health_interval_ms")
            );
        }
        let config = Config::from_toml(&model(MIN_HEALTH_INTERVAL_MS), "t").unwrap();
        let openai = config.models[0].openai.as_ref().unwrap();
        assert_eq!(openai.health_interval_ms, MIN_HEALTH_INTERVAL_MS);
    }

    #[test]
    fn url_credentials_are_never_printed() {
        let text = "[[models]]\nname = \"a\"\nbackend = \"openai\"\n[models.openai]\nbase_url = \"http://bob:s3cr3t@h/v1\"\n";
        let config = Config::from_toml(text, "t").unwrap();
        for printed in [format!("{config:?}"), config.redacted().to_toml()] {
            assert!(!printed.contains("s3cr3t"), "{printed}");
            assert!(printed.contains("bob:***@h/v1"), "{printed}");
        }
        // The config itself keeps them: the client needs them.
        assert!(config.to_toml().contains("s3cr3t"));
        let e = error(
            "[[models]]\nname = \"a\"\nbackend = \"openai\"\n[models.openai]\nbase_url = \"bob:s3cr3t@h\"\n",
        );
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[test]
    fn bad_model_name_is_refused() {
        let e = error("[[models]]\nname = \"a b\"\nbackend = \"simulated\"\n");
        assert_eq!(e.key.as_deref(), Some("models[0].name"));
    }

    #[test]
    fn paths_in_a_config_file_resolve_against_its_directory() {
        let dir = std::env::temp_dir().join(format!("infergate-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = |name: &str, process: &str| {
            format!(
                "[[models]]\nname = \"{name}\"\nbackend = \"process\"\n[models.process]\n{process}\n"
            )
        };
        let text = [
            model("plain", "command = [\"python3\", \"worker.py\"]"),
            model("sub", "command = [\"./run.sh\", \"x\"]\ncwd = \"models/a\""),
            model("abs", "command = [\"bin/w\"]\ncwd = \"/srv/m\""),
            model("fixed", "command = [\"/usr/bin/w\", \"a/b\"]"),
            "[[models]]\nname = \"sim\"\nbackend = \"simulated\"\n".to_string(),
        ]
        .concat();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::from_file(&path).expect("valid");
        let _ = std::fs::remove_dir_all(&dir);
        let process = |i: usize| config.models[i].process.as_ref().expect("process");

        // No cwd: the file's directory; a bare program and its arguments
        // are left alone (the worker runs in that directory).
        assert_eq!(process(0).cwd.as_deref(), Some(dir.as_path()));
        assert_eq!(process(0).command, ["python3", "worker.py"]);
        // A relative cwd joins the file's directory; a relative program
        // path joins the worker's directory.
        let sub = dir.join("models/a");
        assert_eq!(process(1).cwd.as_deref(), Some(sub.as_path()));
        let program = sub.join("run.sh");
        assert_eq!(process(1).command, [program.to_str().unwrap(), "x"]);
        // Absolute paths stay as they are.
        assert_eq!(process(2).cwd.as_deref(), Some(Path::new("/srv/m")));
        assert_eq!(process(2).command, ["/srv/m/bin/w"]);
        assert_eq!(process(3).command, ["/usr/bin/w", "a/b"]);
        assert!(config.models[4].process.is_none());

        // TOML given as text is not resolved: there is no file.
        let config = Config::from_toml(&text, "text").unwrap();
        assert_eq!(config.models[0].process.as_ref().unwrap().cwd, None);
        assert_eq!(
            config.models[1].process.as_ref().unwrap().command[0],
            "./run.sh"
        );
    }

    #[test]
    fn process_durations_are_bounded() {
        let process = |extra: &str| {
            format!(
                "[[models]]\nname = \"a\"\nbackend = \"process\"\n[models.process]\ncommand = [\"x\"]\n{extra}\n"
            )
        };
        let e = error(&process("cancel_grace_ms = 18446744073709551615"));
        assert_eq!(e.key.as_deref(), Some("models[0].process.cancel_grace_ms"));
        for bad in ["start_timeout_ms = 0", "start_timeout_ms = 600001"] {
            let e = error(&process(bad));
            assert_eq!(e.key.as_deref(), Some("models[0].process.start_timeout_ms"));
        }
        let config = Config::from_toml(&process(""), "t").expect("defaults are valid");
        let defaults = config.models[0].process.as_ref().expect("process table");
        assert_eq!(defaults.start_timeout_ms, DEFAULT_START_TIMEOUT_MS);
        assert_eq!(defaults.cancel_grace_ms, DEFAULT_CANCEL_GRACE_MS);
    }
}
