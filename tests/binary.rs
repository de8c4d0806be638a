//! The `infergate` binary itself: config errors exit 78 naming the key,
//! SIGTERM drains and exits 0, and `--log-format json` writes one JSON
//! object a line, with the call's request id.

mod common;

use std::process::Command;
use std::time::Duration;

use common::request;

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("infergate-test-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write temp config");
    path
}

#[test]
fn a_bad_config_exits_78_naming_the_key() {
    let cases = [
        (
            "unknown",
            "[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n",
            "lisen",
        ),
        (
            "workers",
            "[[models]]\nname = \"a\"\nbackend = \"simulated\"\nworkers = 0\n",
            "models[0].workers",
        ),
        (
            "duplicate",
            "[[models]]\nname = \"a\"\nbackend = \"simulated\"\n[[models]]\nname = \"a\"\nbackend = \"simulated\"\n",
            "models[1].name",
        ),
        (
            "address",
            "[server]\nlisten = \"nowhere:x\"\n",
            "server.listen",
        ),
    ];
    for (name, text, key) in cases {
        let path = write_config(name, text);
        for args in [
            vec!["check-config", path.to_str().unwrap()],
            vec!["serve", "--config", path.to_str().unwrap()],
        ] {
            let out = Command::new(common::binary::bin())
                .args(&args)
                .output()
                .expect("run infergate");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
            assert!(stderr.contains(key), "{args:?} should name {key}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn an_unset_api_key_variable_stops_serve_but_not_check_config() {
    let path = write_config(
        "unset-key",
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[[models]]\nname = \"a\"\nbackend = \"openai\"\n[models.openai]\napi_key_env = \"INFERGATE_SURELY_UNSET_VAR\"\n[[models.openai.upstreams]]\nurl = \"http://u:s3cr3t@127.0.0.1:9/v1\"\n",
    );
    let run = |args: &[&str]| {
        Command::new(common::binary::bin())
            .args(args)
            .env_remove("INFERGATE_SURELY_UNSET_VAR")
            .output()
            .expect("run infergate")
    };
    // The file is valid wherever it is checked.
    let checked = run(&["check-config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}");
    assert!(stdout.contains("u:***@127.0.0.1:9"), "{stdout}");
    assert!(!stdout.contains("s3cr3t"), "{stdout}");
    // Serving needs the key.
    let served = run(&["serve", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&served.stderr);
    assert_eq!(served.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("models[0].openai.api_key_env"), "{stderr}");
    assert!(stderr.contains("INFERGATE_SURELY_UNSET_VAR"), "{stderr}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn check_config_prints_the_effective_config() {
    let path = write_config(
        "good",
        "[[models]]\nname = \"a\"\nbackend = \"simulated\"\n",
    );
    let out = Command::new(common::binary::bin())
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("queue_capacity = 64"), "{stdout}");
    let _ = std::fs::remove_file(path);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_running_call_and_exits_zero() {
    let config = common::binary::listen_anywhere().to_string()
        + "[[models]]\nname = \"slow\"\nbackend = \"simulated\"\n[models.simulated]\nlatency_ms = 700\n";
    let mut server = common::binary::BinaryServer::start("serve", &config).await;
    let (status, scrape) = common::http_get(
        server.metrics_addr.parse().expect("metrics address"),
        "/metrics",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        scrape.contains(r#"infergate_workers{model="slow"} 4"#),
        "{scrape}"
    );
    let client = server.client().await;
    let call = tokio::spawn({
        let mut client = client.clone();
        async move { client.generate(request("slow", "draining")).await }
    });
    // Signal once the call is running.
    server.wait_for("slow", |m| m.busy_workers == 1).await;
    server.terminate();

    let answer = call
        .await
        .expect("task")
        .expect("the running call finished");
    assert_eq!(answer.into_inner().text, "draining");
    let status = server.exited(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    let lines = server.log_lines();
    assert!(lines.iter().any(|l| l.contains("SIGTERM")), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_with_the_request_id() {
    let config = common::binary::listen_anywhere().to_string()
        + "[[models]]\nname = \"quick\"\nbackend = \"simulated\"\n[models.simulated]\nlatency_ms = 1\n";
    // infergate=debug: a "call finished" line for every call.
    let mut server = common::binary::BinaryServer::start_with(
        "json-logs",
        &config,
        &["--log-format", "json"],
        "infergate=debug",
    )
    .await;
    let mut call = tonic::Request::new(request("quick", "hello"));
    call.metadata_mut()
        .insert("x-request-id", "test-123".parse().expect("metadata"));
    let answer = server.client().await.generate(call).await.expect("call");
    assert_eq!(
        answer.metadata().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"test-123"[..])
    );
    // A call for a model that is not served logs its refusal, with its id.
    let mut refused = tonic::Request::new(request("nowhere", "x"));
    refused
        .metadata_mut()
        .insert("x-request-id", "test-456".parse().expect("metadata"));
    let _ = server.client().await.generate(refused).await;

    let finished = |lines: &[serde_json::Value], id: &str| {
        lines
            .iter()
            .filter(|l| l["message"] == "call finished" && l["span"]["request_id"] == id)
            .count()
    };
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<serde_json::Value> = server
            .log_lines()
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect();
        if finished(&lines, "test-123") == 1 && finished(&lines, "test-456") == 1 {
            break lines;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "no \"call finished\" lines with both request ids: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for line in &lines {
        assert!(line.is_object(), "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    let ok = lines
        .iter()
        .find(|l| l["message"] == "call finished" && l["span"]["request_id"] == "test-123")
        .expect("found above");
    assert_eq!(ok["level"], "DEBUG", "{ok}");
    assert_eq!(ok["code"], "OK", "{ok}");
    assert_eq!(ok["method"], "Generate", "{ok}");
    assert_eq!(ok["span"]["name"], "call", "{ok}");
    assert_eq!(ok["span"]["model"], "quick", "{ok}");
    assert!(ok["elapsed_us"].is_u64(), "{ok}");
    let refused = lines
        .iter()
        .find(|l| l["message"] == "call finished" && l["span"]["request_id"] == "test-456")
        .expect("found above");
    assert_eq!(refused["code"], "NOT_FOUND", "{refused}");
    assert!(
        lines.iter().any(|l| l["message"] == "serving gRPC"),
        "{lines:#?}"
    );

    server.terminate();
    assert_eq!(server.exited(Duration::from_secs(20)).await.code(), Some(0));
    for line in server.log_lines() {
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not JSON after shutdown ({e}): {line}"));
    }
}

#[test]
fn with_json_logs_a_config_error_is_a_json_line_too() {
    let path = write_config(
        "json-config-error",
        "[[models]]\nname = \"a\"\nbackend = \"simulated\"\nworkers = 0\n",
    );
    let out = Command::new(common::binary::bin())
        .args(["serve", "--config", path.to_str().expect("utf-8 path")])
        .env("INFERGATE_LOG_FORMAT", "json")
        .output()
        .expect("run infergate");
    let _ = std::fs::remove_file(path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let error = lines
        .iter()
        .find(|l| l["message"] == "config error")
        .unwrap_or_else(|| panic!("no config error line: {stderr}"));
    assert_eq!(error["level"], "ERROR", "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("models[0].workers")),
        "{error}"
    );
}

#[test]
fn a_bad_log_format_is_a_usage_error() {
    let out = Command::new(common::binary::bin())
        .args(["serve", "--log-format", "xml"])
        .env_remove("INFERGATE_LOG_FORMAT")
        .output()
        .expect("run infergate");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("text") && stderr.contains("json"),
        "{stderr}"
    );
}
