//! API keys through the real server: every auth outcome and its code, the
//! `tenant` label, ListModels and reflection settings, per-key limits, and
//! a keys-file reload while calls are in flight.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestServer, metric, request, simulated};
use infergate::auth::command::{AddArgs, add};
use infergate::proto;
use infergate::proto::inference_client::InferenceClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("infergate-auth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn keys(&self) -> PathBuf {
        self.0.join("keys.toml")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn args(name: &str, file: &Path) -> AddArgs {
    AddArgs::new(name, file)
}

/// Two simulated models (`chat-a` fast, `slow` 600 ms), keys required.
fn config(keys: &Path, extra: &str) -> String {
    format!(
        "[auth]\nkeys_file = \"{}\"\nreload_interval_ms = 100\n{extra}\n{}{}{}",
        keys.display(),
        simulated("chat-a", 0, 2, 16),
        simulated("secret", 0, 1, 4),
        simulated("slow", 600, 4, 16),
    )
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii key"),
    );
    request
}

async fn call(
    client: &mut InferenceClient<Channel>,
    model: &str,
    key: Option<&str>,
) -> Result<proto::GenerateResponse, tonic::Status> {
    let message = request(model, "hello");
    let request = match key {
        Some(key) => with_key(message, key),
        None => Request::new(message),
    };
    client.generate(request).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_has_its_code_and_the_tenant_label() {
    let dir = TempDir::new("outcomes");
    let keys = dir.keys();
    let chat = add(&AddArgs {
        models: Some(vec!["chat-*".into(), "slow".into()]),
        ..args("team-chat", &keys)
    })
    .expect("add a key");
    let text = std::fs::read_to_string(&keys).expect("keys file");
    assert!(!text.contains(&chat), "the file holds the key itself");
    assert!(text.contains("team-chat"));

    let server = TestServer::start_with_metrics(&config(&keys, "")).await;
    let mut client = server.client().await;

    // No key, a malformed one, an unknown one.
    let status = call(&mut client, "chat-a", None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("authorization: Bearer"),
        "{}",
        status.message()
    );
    let mut bad = Request::new(request("chat-a", "x"));
    bad.metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    let status = client.generate(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("Bearer <key>"),
        "{}",
        status.message()
    );
    let status = call(&mut client, "chat-a", Some("ig_not-a-key"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        !status.message().contains("ig_not-a-key"),
        "the key is echoed"
    );

    // An allowed model works; one outside the key's patterns is denied,
    // naming neither the key nor the models it may use.
    let ok = call(&mut client, "chat-a", Some(&chat))
        .await
        .expect("allowed");
    assert!(!ok.text.is_empty());
    let status = call(&mut client, "secret", Some(&chat)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let m = status.message();
    assert!(
        !m.contains("team-chat") && !m.contains("chat-a") && !m.contains(&chat),
        "{m}"
    );
    // A name no model has, outside the patterns: the same answer, so that
    // a key cannot probe which models exist.
    let status = call(&mut client, "nothing-here", Some(&chat))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Inside the patterns but not served: NOT_FOUND lists only what the
    // key may use.
    let status = call(&mut client, "chat-zzz", Some(&chat))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("chat-a") && !status.message().contains("secret"),
        "{}",
        status.message()
    );

    // Health stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no key");
    assert_eq!(serving.into_inner().status, 1);

    let scrape = server.scrape().await;
    for (series, want) in [
        ("infergate_auth_failures_total{reason=\"missing\"}", 1.0),
        ("infergate_auth_failures_total{reason=\"malformed\"}", 1.0),
        ("infergate_auth_failures_total{reason=\"unknown\"}", 1.0),
        ("infergate_auth_keys", 1.0),
        (
            "infergate_requests_total{model=\"chat-a\",method=\"Generate\",code=\"OK\",tenant=\"team-chat\"}",
            1.0,
        ),
        (
            "infergate_rejected_total{model=\"secret\",reason=\"permission_denied\",tenant=\"team-chat\"}",
            1.0,
        ),
    ] {
        // The recorder is the process's: other tests add to the counters
        // without a model label.
        let got = metric(&scrape, series).unwrap_or(0.0);
        assert!(got >= want, "{series}: {got}\n{scrape}");
    }
    assert!(!scrape.contains(&chat), "a key reached the metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_models_shows_what_the_key_may_use_and_reflection_follows_its_setting() {
    let dir = TempDir::new("list");
    let keys = dir.keys();
    let chat = add(&AddArgs {
        models: Some(vec!["chat-*".into()]),
        ..args("lister", &keys)
    })
    .expect("add");
    let server = TestServer::start(&config(&keys, "reflection = \"key\"")).await;
    let mut client = server.client().await;
    let status = client
        .list_models(proto::ListModelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.metadata().get("x-request-id").is_some(),
        "{status:?}"
    );
    let listed = client
        .list_models(with_key(proto::ListModelsRequest {}, &chat))
        .await
        .expect("list with a key")
        .into_inner();
    let names: Vec<_> = listed.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["chat-a"]);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let list = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let status = reflection.server_reflection_info(list()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    reflection
        .server_reflection_info(with_key(list(), &chat))
        .await
        .expect("reflection with a key");

    // Defaults: reflection open, and list_models = "open" lists all.
    let open = TestServer::start(&config(&keys, "list_models = \"open\"")).await;
    let mut reflection = ServerReflectionClient::new(open.channel().await);
    reflection
        .server_reflection_info(list())
        .await
        .expect("reflection is open by default");
    let all = open
        .client()
        .await
        .list_models(proto::ListModelsRequest {})
        .await
        .expect("open listing")
        .into_inner();
    assert_eq!(all.models.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_concurrency_limits_say_which_limit() {
    let dir = TempDir::new("limits");
    let keys = dir.keys();
    let rated = add(&AddArgs {
        rate: Some(0.1),
        burst: Some(2),
        ..args("rated", &keys)
    })
    .expect("add");
    let single = add(&AddArgs {
        concurrency: Some(1),
        ..args("single", &keys)
    })
    .expect("add");
    let server = TestServer::start_with_metrics(&config(&keys, "")).await;
    let mut client = server.client().await;

    call(&mut client, "chat-a", Some(&rated))
        .await
        .expect("1 of the burst");
    call(&mut client, "chat-a", Some(&rated))
        .await
        .expect("2 of the burst");
    let status = call(&mut client, "chat-a", Some(&rated)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("rate limit of 0.1 calls per second"),
        "{}",
        status.message()
    );

    // One call in flight (a stream holds its place too) ...
    let mut streaming = client
        .generate_stream(with_key(request("slow", "hold"), &single))
        .await
        .expect("stream starts")
        .into_inner();
    let status = call(&mut client, "chat-a", Some(&single))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("concurrency limit of 1"),
        "{}",
        status.message()
    );
    // ... and its place comes back when the stream ends.
    while let Some(item) = tokio_stream::StreamExt::next(&mut streaming).await {
        item.expect("stream item");
    }
    drop(streaming);
    let mut last = None;
    for _ in 0..100 {
        match call(&mut client, "chat-a", Some(&single)).await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(status) => last = Some(status),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        last.is_none(),
        "the stream's place never came back: {last:?}"
    );
    let scrape = server.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            "infergate_rejected_total{model=\"chat-a\",reason=\"rate_limit\",tenant=\"rated\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        metric(
            &scrape,
            "infergate_rejected_total{model=\"chat-a\",reason=\"concurrency_limit\",tenant=\"single\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_calls_are_in_flight_loses_none() {
    let dir = TempDir::new("reload");
    let keys = dir.keys();
    let old = add(&args("old", &keys)).expect("add");
    let server = TestServer::start_with_metrics(&config(&keys, "")).await;
    let client = server.client().await;

    // Calls in flight with the old key.
    let running: Vec<_> = (0..4)
        .map(|i| {
            let mut client = client.clone();
            let old = old.clone();
            tokio::spawn(async move {
                client
                    .generate(with_key(request("slow", &format!("in flight {i}")), &old))
                    .await
            })
        })
        .collect();
    let slow = &server.gateway.models()[2];
    for _ in 0..1000 {
        if slow.stats().busy == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(slow.stats().busy, 4, "the calls never started");

    // Replace the file: the old key out, a new one in.
    let new = add(&args("new", &keys)).expect("add");
    infergate::auth::command::run(&infergate::auth::command::KeysArgs {
        action: infergate::auth::command::KeysAction::Remove {
            name: "old".into(),
            file: keys.clone(),
        },
    })
    .expect("remove");

    // The new key works once the file is read again (polled every 100 ms).
    let mut client2 = client.clone();
    let mut waited = 0;
    while call(&mut client2, "chat-a", Some(&new)).await.is_err() {
        waited += 1;
        assert!(waited < 200, "the new key never took effect");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = call(&mut client2, "chat-a", Some(&old)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    for call in running {
        let response = call
            .await
            .expect("task")
            .expect("an in-flight call survives the reload");
        assert!(!response.into_inner().text.is_empty());
    }

    // A broken file is refused and the keys in force stay. (The counter
    // is the process's: wait for it to grow.)
    let errors = || async {
        metric(
            &server.scrape().await,
            "infergate_auth_reloads_total{result=\"error\"}",
        )
        .unwrap_or(0.0)
    };
    let before = errors().await;
    std::fs::write(&keys, "[[keys]]\nname = 5\n").expect("write");
    let mut waited = 0;
    while errors().await <= before {
        waited += 1;
        assert!(waited < 400, "the broken file was never read");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    call(&mut client2, "chat-a", Some(&new))
        .await
        .expect("the keys in force stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_keys_file_is_refused_naming_the_entry() {
    let dir = TempDir::new("bad");
    let keys = dir.keys();
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"x\"\nsha256 = \"{}\"\nweight = 0\n",
            "a".repeat(64)
        ),
    )
    .expect("write");
    let config =
        infergate::Config::from_toml(&config(&keys, ""), "test").expect("the config parses");
    let error = infergate::Gateway::from_config(&config)
        .err()
        .expect("refused");
    let message = error.to_string();
    assert!(
        message.contains("auth.keys_file") && message.contains("keys[0].weight"),
        "{message}"
    );
    let error = config.check_files("test").unwrap_err().to_string();
    assert!(error.contains("keys[0].weight"), "{error}");
}

#[test]
fn the_keys_command_prints_the_key_once_and_stores_its_hash() {
    let dir = TempDir::new("cli");
    let keys = dir.keys();
    let run = |args: &[&str]| {
        std::process::Command::new(common::binary::bin())
            .args(args)
            .output()
            .expect("run infergate")
    };
    let file = keys.to_str().expect("utf-8 path");
    let out = run(&[
        "keys",
        "add",
        "team-a",
        "--file",
        file,
        "--models",
        "chat-*,echo",
        "--rate",
        "5",
        "--concurrency",
        "4",
        "--max-priority",
        "3",
        "--weight",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert!(key.starts_with("ig_") && key.len() == 67, "{key}");
    let text = std::fs::read_to_string(&keys).expect("file");
    assert!(!text.contains(&key), "the key itself is in the file");
    let hash = infergate::auth::keys::hex(&infergate::auth::keys::hash(&key));
    assert!(text.contains(&hash), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&keys).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let out = run(&["keys", "add", "team-a", "--file", file]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    let out = run(&["keys", "add", "team-b", "--file", file, "--weight", "0"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--weight"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&["keys", "list", "--file", file]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("team-a\tmodels=chat-*,echo\trate=5/s"),
        "{listed}"
    );
    assert!(!listed.contains(&hash) && !listed.contains(&key));

    // check-config reads the keys file too, and names the entry at fault.
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nkeys_file = \"keys.toml\"\n{}",
            simulated("a", 0, 1, 1)
        ),
    )
    .expect("write");
    let out = run(&["check-config", config.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&keys, "[[keys]]\nname = \"x\"\n").expect("write");
    let out = run(&["check-config", config.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.keys_file") && stderr.contains("sha256"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_is_capped_at_the_keys_max_priority() {
    let dir = TempDir::new("priority");
    let keys = dir.keys();
    let capped = add(&args("capped", &keys)).expect("add");
    let boss = add(&AddArgs {
        max_priority: 50,
        ..args("boss", &keys)
    })
    .expect("add");
    let config = format!(
        "[auth]\nkeys_file = \"{}\"\n{}",
        keys.display(),
        simulated("one", 150, 1, 8)
    );
    let server = TestServer::start(&config).await;
    let client = server.client().await;
    let one = &server.gateway.models()[0];
    // Which of a low- and a high-priority call (sent in that order behind
    // a running one) is served first, with `key`.
    let first_served = |key: String| {
        let client = client.clone();
        async move {
            let send = |prompt: &str, priority: u32| {
                let mut client = client.clone();
                let mut message = request("one", prompt);
                message.priority = priority;
                let message = with_key(message, &key);
                tokio::spawn(async move { client.generate(message).await })
            };
            let wait_queued = |n: usize| async move {
                for _ in 0..2000 {
                    if one.stats().queued == n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                panic!("the queue never held {n}");
            };
            let running = send("running", 0);
            for _ in 0..2000 {
                if one.stats().busy == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let low = send("low", 0);
            wait_queued(1).await;
            let high = send("high", 50);
            wait_queued(2).await;
            running.await.expect("task").expect("running call");
            let wait = |call: tokio::task::JoinHandle<
                Result<tonic::Response<proto::GenerateResponse>, tonic::Status>,
            >| async move {
                let response = call.await.expect("task").expect("served").into_inner();
                response.timing.expect("timing").queue_wait_us
            };
            let (low, high) = (wait(low).await, wait(high).await);
            if high < low { "high" } else { "low" }
        }
    };
    assert_eq!(
        first_served(boss).await,
        "high",
        "a key allowed priority 50 jumps its own queue"
    );
    assert_eq!(
        first_served(capped).await,
        "low",
        "a key capped at 0 is served in arrival order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_reach_the_logs_even_at_trace_level() {
    let dir = TempDir::new("logs");
    let keys = dir.keys();
    let key = add(&args("logged", &keys)).expect("add");
    let config = format!(
        "{}[auth]\nkeys_file = \"{}\"\n{}",
        common::binary::listen_anywhere(),
        keys.display(),
        simulated("quick", 1, 1, 4)
    );
    // Everything, the HTTP/2 and TLS crates included.
    let server = common::binary::BinaryServer::start_with("auth-logs", &config, &[], "trace").await;
    let mut client = server.client().await;
    call(&mut client, "quick", Some(&key))
        .await
        .expect("served");
    let _ = call(&mut client, "quick", Some(&format!("{key}x"))).await;
    let huge = format!("ig_{}", "a".repeat(10_000));
    let status = call(&mut client, "quick", Some(&huge)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let hash = infergate::auth::keys::hex(&infergate::auth::keys::hash(&key));
    // The log is read from a pipe by another thread: a last call with a
    // marked request id, awaited in the log, means every line of the calls
    // above (logged before they were answered) has been read.
    let mut marked = with_key(request("quick", "last"), &key);
    marked
        .metadata_mut()
        .insert("x-request-id", "after-the-keys".parse().expect("ascii"));
    client.generate(marked).await.expect("served");
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while !server
        .log_lines()
        .iter()
        .any(|l| l.contains("after-the-keys"))
    {
        assert!(
            std::time::Instant::now() < give_up,
            "the marked call never reached the log"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines = server.log_lines();
    assert!(lines.len() > 10, "trace logging produced almost nothing");
    for line in &lines {
        assert!(!line.contains(&key[3..20]), "a key in the log: {line}");
        assert!(!line.contains(&hash), "a key's hash in the log: {line}");
    }
}
