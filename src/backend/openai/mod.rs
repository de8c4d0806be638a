//! The OpenAI-compatible backend: an asynchronous HTTP client to vLLM,
//! llama.cpp's server, Ollama, TGI, OpenAI, or anything else that serves
//! `/v1/chat/completions`, with one or many upstreams per model.
//!
//! It is an [`AsyncBackend`]: each call is a future on the runtime, not a
//! thread, so `workers` can be thousands of requests in flight; the pool
//! cancels a call by dropping its future, which drops the HTTP request and
//! closes its connection (vLLM and others then abort the generation).
//! Generate makes one non-streaming request; GenerateStream sets
//! `stream: true` and forwards each server-sent-event delta as it arrives.
//!
//! The pieces, one job each:
//! - [`call`]: one call: pick an upstream, send, read the answer, retry on
//!   another upstream while nothing of the answer was received;
//! - [`upstreams`]: which upstream takes a request (balancing), and which
//!   are up (passive ejection, the probe's findings), without I/O;
//! - [`health`]: the probe task;
//! - [`http`]: the HTTP client (TLS roots, timeouts) and its requests;
//! - [`sse`]: the events of a streamed answer, bounded;
//! - [`wire`]: the OpenAI JSON format;
//! - [`failure`]: what a failure means for the client, and for the log.
//!
//! The API key is read once from the named environment variable and never
//! logged; an upstream URL with `user:password@` is sent as Basic auth and
//! printed with the password hidden.

mod call;
mod failure;
mod health;
mod http;
mod sse;
mod upstreams;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{AsyncBackend, Backend, BackendError, BackendErrorKind, BackendFactory};
use crate::config::{OpenAiConfig, redact_url};
use failure::Secrets;
use health::{Prober, StopProbing};
use http::Http;
use upstreams::Upstreams;

/// Makes the backend of one model: one [`OpenAiBackend`] shared by all its
/// calls, and the probe of its upstreams.
pub struct OpenAiFactory {
    backend: Arc<OpenAiBackend>,
    /// Ends the probe task when the factory is dropped.
    _probing: StopProbing,
}

/// The backend of one model: its HTTP client, its upstreams and their
/// health. Shared by every call of the model.
pub struct OpenAiBackend {
    shared: Arc<Shared>,
}

/// What the calls and the probe task of a model share.
pub(crate) struct Shared {
    /// The gateway's model name, for the log.
    name: String,
    /// The model name sent upstream.
    upstream_model: String,
    http: Http,
    upstreams: Upstreams<Target>,
    prober: Prober,
}

/// Where one upstream's requests go, and what to hide when logging it.
pub(crate) struct Target {
    /// The upstream's name, for the log.
    name: String,
    /// `{url}/v1/chat/completions`, credentials included.
    chat: String,
    /// What the probe gets, credentials included.
    probe: String,
    /// The chat URL as logs show it (credentials hidden).
    shown: String,
    /// The API key and the URL's password, to scrub from log lines.
    secrets: Secrets,
}

impl fmt::Debug for OpenAiFactory {
    // Not derived: the API key must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.backend.shared;
        let urls: Vec<&str> = shared
            .upstreams
            .all()
            .iter()
            .map(|u| u.target.shown.as_str())
            .collect();
        f.debug_struct("OpenAiFactory")
            .field("model", &shared.name)
            .field("upstreams", &urls)
            .field("upstream_model", &shared.upstream_model)
            .field("api_key", &shared.http.has_key().then_some("<set>"))
            .finish()
    }
}

impl OpenAiFactory {
    /// A factory for `model`, reading the API key from the environment
    /// variable the config names, if any. A variable that is not set means
    /// no key (with a warning): `serve` refuses to start in that case
    /// ([`Config::check_environment`](crate::Config::check_environment)),
    /// so only an embedder meets it.
    pub fn from_config(model: &str, config: &OpenAiConfig) -> Self {
        let api_key = config.api_key_env.as_ref().and_then(|var| {
            let key = std::env::var(var).ok();
            if key.is_none() {
                tracing::warn!(model, variable = %var, "api_key_env names a variable that is not set; no API key is sent");
            }
            key
        });
        Self::new(model, config, api_key)
    }

    /// A factory with an explicit API key (for embedding and tests). The
    /// probe of the upstreams starts now if this runs inside a tokio
    /// runtime, else with the first call.
    pub fn new(model: &str, config: &OpenAiConfig, api_key: Option<String>) -> Self {
        let http = Http::new(
            model,
            Duration::from_millis(config.connect_timeout_ms),
            Duration::from_millis(config.read_timeout_ms),
            api_key.as_deref(),
        );
        let list = config
            .named_upstreams()
            .into_iter()
            .map(|upstream| {
                let chat = endpoint(&upstream.url, "chat/completions");
                let target = Target {
                    name: upstream.name.clone(),
                    shown: redact_url(&chat).into_owned(),
                    probe: probe_url(&upstream.url, &config.health_path),
                    chat,
                    secrets: Secrets::new(api_key.as_deref(), &upstream.url),
                };
                (upstream.name, upstream.weight, target)
            })
            .collect();
        let (prober, probing) = Prober::new(Duration::from_millis(config.health_interval_ms));
        let shared = Arc::new(Shared {
            name: model.to_string(),
            upstream_model: config.model.clone().unwrap_or_else(|| model.to_string()),
            http,
            upstreams: Upstreams::new(
                model,
                list,
                config.eject_after,
                Duration::from_millis(config.eject_ms),
            ),
            prober,
        });
        shared.prober.start(&shared);
        OpenAiFactory {
            backend: Arc::new(OpenAiBackend { shared }),
            _probing: probing,
        }
    }
}

/// `{base}/{path}` when the base ends in `/v1`, else `{base}/v1/{path}`.
fn endpoint(base_url: &str, path: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/{path}")
    } else {
        format!("{base}/v1/{path}")
    }
}

/// What the probe gets: `health_path` under the `/v1` base, or, when it
/// starts with `/`, from the server's root.
fn probe_url(base_url: &str, health_path: &str) -> String {
    if health_path.starts_with('/')
        && let Ok(mut url) = url::Url::parse(base_url)
    {
        url.set_path(health_path);
        return url.into();
    }
    endpoint(base_url, health_path.trim_start_matches('/'))
}

impl BackendFactory for OpenAiFactory {
    fn kind(&self) -> &str {
        "openai"
    }

    /// Never called by the pool, which runs [`asynchronous`](Self::asynchronous)'s
    /// backend as tasks.
    fn create(&self, _worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        Err(BackendError::new(
            BackendErrorKind::Internal,
            "the openai backend runs calls as tasks and has no per-worker backend",
        ))
    }

    fn is_up(&self) -> bool {
        let shared = &self.backend.shared;
        shared.prober.start(shared);
        shared.upstreams.any_up(Instant::now())
    }

    fn asynchronous(&self) -> Option<Arc<dyn AsyncBackend>> {
        let shared = &self.backend.shared;
        shared.prober.start(shared);
        Some(self.backend.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;

    #[test]
    fn the_url_gets_v1_once() {
        assert_eq!(
            endpoint("http://h:8000/v1/", "chat/completions"),
            "http://h:8000/v1/chat/completions"
        );
        assert_eq!(
            endpoint("http://h:11434", "models"),
            "http://h:11434/v1/models"
        );
        assert_eq!(
            probe_url("http://u:p@h:8000/v1", "models"),
            "http://u:p@h:8000/v1/models"
        );
        assert_eq!(
            probe_url("http://u:p@h:8000/v1", "/health"),
            "http://u:p@h:8000/health"
        );
    }

    #[test]
    fn the_key_is_read_from_the_environment_and_never_printed() {
        let config = OpenAiConfig {
            // Always set in a test process; read without modifying it.
            api_key_env: Some("PATH".into()),
            ..OpenAiConfig::with_upstreams(vec![
                UpstreamConfig::new("http://bob:pa55word@127.0.0.1:1/v1"),
                UpstreamConfig::new("http://127.0.0.1:2"),
            ])
        };
        // Outside a runtime: nothing is spawned, and nothing fails.
        let factory = OpenAiFactory::from_config("m", &config);
        assert!(factory.backend.shared.http.has_key());
        let printed = format!("{factory:?} {config:?}");
        assert!(!printed.contains(&std::env::var("PATH").unwrap()));
        assert!(!printed.contains("pa55word"), "{printed}");
        assert!(printed.contains("bob:***@127.0.0.1:1"), "{printed}");
        assert!(
            printed.contains("127.0.0.1:2/v1/chat/completions"),
            "{printed}"
        );
        assert_eq!(factory.backend.shared.upstream_model, "m");
        assert!(factory.is_up(), "up until a probe or a call says otherwise");
        assert!(factory.create(0).is_err());
    }

    #[test]
    fn a_factory_made_outside_a_runtime_probes_from_its_first_use_inside_one() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let config = OpenAiConfig {
            health_interval_ms: 100,
            ..OpenAiConfig::new(format!("http://{closed}/v1"))
        };
        let factory = OpenAiFactory::new("lazy", &config, None);
        assert!(!factory.backend.shared.prober.is_started());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            assert!(factory.asynchronous().is_some());
            assert!(factory.backend.shared.prober.is_started());
            let give_up = Instant::now() + Duration::from_secs(10);
            while factory.is_up() {
                assert!(Instant::now() < give_up, "the probe never ran");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
}
