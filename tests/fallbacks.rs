//! Fallbacks: a call that a model cannot take goes to the next model of
//! its `fallbacks`, within the same deadline, and says so; never after a
//! token reached the client, never for a bad request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestServer, metric, request};
use infergate::backend::{
    Backend, BackendError, BackendErrorKind, BackendFactory, CallContext, Completion, FinishReason,
    GenerateParams,
};
use infergate::config::{BackendKind, Config, ModelConfig, ServerConfig};
use infergate::gateway::Gateway;
use tokio_stream::StreamExt;
use tonic::Code;

/// A simulated model entry with fallbacks.
fn model(name: &str, latency_ms: u64, workers: usize, queue: usize, fallbacks: &[&str]) -> String {
    let list = fallbacks
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[models]]\nname = \"{name}\"\nbackend = \"simulated\"\nworkers = {workers}\nqueue_capacity = {queue}\nfallbacks = [{list}]\n[models.simulated]\nlatency_ms = {latency_ms}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_falls_back_and_says_so() {
    let config = model("primary", 3000, 1, 0, &["backup"]) + &model("backup", 10, 2, 4, &[]);
    let server = TestServer::start_with_metrics(&config).await;
    let client = server.client().await;
    // The one worker is busy and there is no queue: the next call is
    // refused by "primary" and served by "backup".
    let holder = common::spawn_generate(&client, "primary", "hold the worker");
    server.wait_for("primary", |m| m.busy_workers == 1).await;

    let answer = client
        .clone()
        .generate(request("primary", "served elsewhere"))
        .await
        .expect("served by the fallback")
        .into_inner();
    assert_eq!(answer.model, "backup");
    assert_eq!(answer.tried, vec!["primary".to_string()]);
    assert_eq!(answer.text, "served elsewhere");

    let mut stream = client
        .clone()
        .generate_stream(request("primary", "streamed elsewhere"))
        .await
        .expect("stream starts")
        .into_inner();
    let mut last = None;
    while let Some(message) = stream.next().await {
        last = Some(message.expect("stream message"));
    }
    let last = last.expect("a final message");
    assert_eq!(last.model, "backup");
    assert_eq!(last.tried, vec!["primary".to_string()]);

    let scrape = server.scrape().await;
    let series = r#"infergate_fallbacks_total{model="primary",to="backup",reason="queue_full"}"#;
    assert_eq!(metric(&scrape, series), Some(2.0), "{scrape}");
    assert_eq!(server.model_info("backup").await.backend_calls, 2);
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_model_serves_says_it_was_not_passed_on() {
    let config = model("primary", 5, 1, 4, &["backup"]) + &model("backup", 5, 1, 4, &[]);
    let server = TestServer::start(&config).await;
    let answer = server
        .client()
        .await
        .generate(request("primary", "hi"))
        .await
        .expect("served")
        .into_inner();
    assert_eq!(answer.model, "primary");
    assert!(answer.tried.is_empty());
    let info = server.model_info("primary").await;
    assert_eq!(info.fallbacks, vec!["backup".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_never_passed_on() {
    let config = model("primary", 5, 1, 4, &["backup"]) + &model("backup", 5, 1, 4, &[]);
    let server = TestServer::start(&config).await;
    let mut client = server.client().await;
    let mut bad = request("primary", "hi");
    bad.max_tokens = 1_000_000; // above the model's max_tokens
    let status = client.generate(bad).await.expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("max_tokens"), "{status:?}");
    let status = client
        .generate(request("primary", ""))
        .await
        .expect_err("empty prompt");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(server.model_info("backup").await.backend_calls, 0);
}

/// A backend that fails as its prompt says: `unavailable` before any
/// token, `token-then-unavailable` after one; anything else answers.
struct Flaky {
    calls: Arc<AtomicUsize>,
    /// false: answers every prompt.
    flaky: bool,
}

impl BackendFactory for Flaky {
    fn kind(&self) -> &str {
        "flaky"
    }

    fn create(&self, _worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(FlakyBackend {
            calls: self.calls.clone(),
            flaky: self.flaky,
        }))
    }
}

struct FlakyBackend {
    calls: Arc<AtomicUsize>,
    flaky: bool,
}

impl Backend for FlakyBackend {
    fn generate(
        &mut self,
        params: &GenerateParams,
        ctx: &mut CallContext<'_>,
    ) -> Result<Completion, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let prompt = params.input.text();
        let unavailable = || BackendError::new(BackendErrorKind::Unavailable, "upstream said 503");
        match prompt.as_str() {
            _ if !self.flaky => ctx.emit(&prompt)?,
            "unavailable" => return Err(unavailable()),
            "token-then-unavailable" => {
                ctx.emit("partial ")?;
                return Err(unavailable());
            }
            "invalid" => {
                return Err(BackendError::new(
                    BackendErrorKind::InvalidArgument,
                    "upstream said 400",
                ));
            }
            _ => ctx.emit(&prompt)?,
        }
        Ok(Completion {
            finish_reason: FinishReason::Stop,
            prompt_tokens: 1,
            completion_tokens: 1,
        })
    }
}

/// "flaky" (falls back to "steady") and "steady", with backend-call
/// counters.
async fn flaky_server() -> (TestServer, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let steady_calls = Arc::new(AtomicUsize::new(0));
    let mut flaky = ModelConfig::new("flaky", BackendKind::Simulated);
    flaky.fallbacks = vec!["steady".into()];
    let steady = ModelConfig::new("steady", BackendKind::Simulated);
    let gateway = Gateway::builder()
        .model(
            flaky,
            Arc::new(Flaky {
                calls: flaky_calls.clone(),
                flaky: true,
            }),
        )
        .model(
            steady,
            Arc::new(Flaky {
                calls: steady_calls.clone(),
                flaky: false,
            }),
        )
        .build()
        .expect("gateway starts");
    let server = TestServer::start_gateway(gateway, ServerConfig::default()).await;
    (server, flaky_calls, steady_calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_before_the_first_token_falls_back() {
    let (server, flaky, steady) = flaky_server().await;
    let mut client = server.client().await;
    let answer = client
        .generate(request("flaky", "unavailable"))
        .await
        .expect("served by steady")
        .into_inner();
    assert_eq!(answer.model, "steady");
    assert_eq!(answer.tried, vec!["flaky".to_string()]);
    assert_eq!(answer.text, "unavailable");
    let mut stream = client
        .generate_stream(request("flaky", "unavailable"))
        .await
        .expect("stream starts")
        .into_inner();
    let first = stream
        .next()
        .await
        .expect("a message")
        .expect("steady's text");
    assert_eq!(first.text, "unavailable");
    let mut last = first;
    while let Some(message) = stream.next().await {
        last = message.expect("stream message");
    }
    assert_eq!(last.model, "steady");
    assert_eq!(last.tried, vec!["flaky".to_string()]);
    assert_eq!(flaky.load(Ordering::SeqCst), 2);
    assert_eq!(steady.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fallback_after_a_token_was_streamed() {
    let (server, flaky, steady) = flaky_server().await;
    let mut stream = server
        .client()
        .await
        .generate_stream(request("flaky", "token-then-unavailable"))
        .await
        .expect("stream starts")
        .into_inner();
    let first = stream.next().await.expect("a message").expect("the token");
    assert_eq!(first.text, "partial ");
    let status = stream
        .next()
        .await
        .expect("a second message")
        .expect_err("the upstream failure");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(flaky.load(Ordering::SeqCst), 1);
    assert_eq!(
        steady.load(Ordering::SeqCst),
        0,
        "no fallback after a token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_argument_from_the_backend_is_not_passed_on() {
    let (server, _flaky, steady) = flaky_server().await;
    let status = server
        .client()
        .await
        .generate(request("flaky", "invalid"))
        .await
        .expect_err("the backend refused it");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(steady.load(Ordering::SeqCst), 0);
    let status = server
        .client()
        .await
        .generate_stream(request("flaky", "invalid"))
        .await;
    // The stream may open before the error: either way it is the error.
    let code = match status {
        Err(status) => status.code(),
        Ok(response) => {
            let mut stream = response.into_inner();
            stream
                .next()
                .await
                .expect("a message")
                .expect_err("the refusal")
                .code()
        }
    };
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(steady.load(Ordering::SeqCst), 0);
}

#[test]
fn fallback_cycles_and_unknown_names_are_config_errors() {
    let cycle =
        model("a", 5, 1, 1, &["b"]) + &model("b", 5, 1, 1, &["c"]) + &model("c", 5, 1, 1, &["a"]);
    let error = Config::from_toml(&cycle, "test")
        .expect_err("a cycle")
        .to_string();
    assert!(error.contains("fallbacks"), "{error}");
    assert!(error.contains("a -> b -> c -> a"), "{error}");

    let unknown = model("a", 5, 1, 1, &["nope"]);
    let error = Config::from_toml(&unknown, "test")
        .expect_err("unknown")
        .to_string();
    assert!(error.contains("models[0].fallbacks[0]"), "{error}");
    assert!(
        error.contains("\"nope\" is not a configured model"),
        "{error}"
    );

    let itself = model("a", 5, 1, 1, &["a"]);
    let error = Config::from_toml(&itself, "test")
        .expect_err("itself")
        .to_string();
    assert!(error.contains("the model itself"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_never_extends_the_first_models_deadline() {
    // primary refuses at once (busy, no queue); backup takes 2 s, but the
    // call's deadline is primary's 300 ms default.
    let config = "[[models]]\nname = \"strict\"\nbackend = \"simulated\"\nworkers = 1\nqueue_capacity = 0\ntimeout_ms = 300\nfallbacks = [\"spare\"]\n[models.simulated]\nlatency_ms = 3000\n".to_string()
        + &model("spare", 2000, 2, 4, &[]);
    let server = TestServer::start(&config).await;
    let client = server.client().await;
    let holder = common::spawn_generate(&client, "strict", "hold");
    server.wait_for("strict", |m| m.busy_workers == 1).await;
    let started = std::time::Instant::now();
    let status = client
        .clone()
        .generate(request("strict", "too slow anywhere"))
        .await
        .expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    holder.abort();
}
