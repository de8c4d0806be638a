//! The `infergate` binary itself: config errors exit 78 naming the key, and
//! SIGTERM drains and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
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
    let path = write_config(
        "serve",
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[[models]]\nname = \"slow\"\nbackend = \"simulated\"\n[models.simulated]\nlatency_ms = 700\n",
    );
    let mut child = Command::new(common::binary::bin())
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start infergate");
    let stderr = child.stderr.take().expect("stderr");
    // The log lines name the bound addresses: gRPC, then /metrics.
    let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("addr=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = addr_tx.send((line.contains("serving gRPC"), addr));
            }
            lines.push(line);
        }
        lines
    });
    let (mut addr, mut metrics_addr) = (None, None);
    while addr.is_none() || metrics_addr.is_none() {
        let (grpc, found) = tokio::time::timeout(Duration::from_secs(20), addr_rx.recv())
            .await
            .expect("the server logs its addresses")
            .expect("address");
        if grpc {
            addr = Some(found);
        } else {
            metrics_addr = Some(found);
        }
    }
    let (addr, metrics_addr) = (addr.unwrap(), metrics_addr.unwrap());
    let (status, scrape) =
        common::http_get(metrics_addr.parse().expect("metrics address"), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        scrape.contains(r#"infergate_workers{model="slow"} 4"#),
        "{scrape}"
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let client = infergate::proto::inference_client::InferenceClient::new(channel);
    let call = tokio::spawn({
        let mut client = client.clone();
        async move { client.generate(request("slow", "draining")).await }
    });
    // Signal once the call is running (bounded poll of ListModels).
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let models = client
            .clone()
            .list_models(infergate::proto::ListModelsRequest {})
            .await
            .expect("ListModels")
            .into_inner()
            .models;
        if models.iter().any(|m| m.busy_workers == 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "the call never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());

    let answer = call
        .await
        .expect("task")
        .expect("the running call finished");
    assert_eq!(answer.into_inner().text, "draining");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    let lines = log.join().expect("log thread");
    assert!(lines.iter().any(|l| l.contains("SIGTERM")), "{lines:#?}");
    let _ = std::fs::remove_file(path);
}
