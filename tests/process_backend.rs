//! The process backend with real Python workers (python/infergate_worker.py
//! driving tests/python/probe_worker.py): overlap, streaming, failures and
//! restarts.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, generate_text, metric, python_probe, request, with_timeout};
use infergate::proto;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_python_workers_overlap() {
    let server = TestServer::start(&python_probe("py-sleep", 4, "")).await;
    server.wait_for("py-sleep", |m| m.ready_workers == 4).await;
    let client = server.client().await;
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.generate(request("py-sleep", "sleep 500")).await })
        })
        .collect();
    for call in calls {
        let answer = call.await.expect("task").expect("call").into_inner();
        assert_eq!(answer.text, "slept 500");
        // Side by side: no call waited for another (serial would make the
        // last wait 1.5 s). The server's own figures, not the wall clock.
        let timing = answer.timing.expect("timing");
        assert!(timing.backend_us >= 500_000, "{timing:?}");
        assert!(
            timing.queue_wait_us * 2 < timing.backend_us,
            "a call waited for a worker: {timing:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_generator_streams_tokens_in_order() {
    let server = TestServer::start(&python_probe("py-stream", 1, "")).await;
    let mut client = server.client().await;
    let mut stream = client
        .generate_stream(request("py-stream", "stream one two three four"))
        .await
        .expect("stream")
        .into_inner();
    let mut texts = Vec::new();
    let mut last = None;
    while let Some(message) = stream.next().await {
        let message = message.expect("message");
        if message.finish_reason == proto::FinishReason::Unspecified as i32 {
            texts.push(message.text);
        } else {
            last = Some(message);
        }
    }
    assert_eq!(texts, ["one ", "two ", "three ", "four "]);
    let last = last.expect("final message");
    assert_eq!(last.usage.expect("usage").completion_tokens, 4);
    assert!(last.timing.expect("timing").time_to_first_token_us > 0);

    // max_tokens stops the generator early.
    let response = client
        .generate(proto::GenerateRequest {
            max_tokens: 2,
            ..request("py-stream", "stream a b c d")
        })
        .await
        .expect("generate")
        .into_inner();
    assert_eq!(response.text, "a b ");
    assert_eq!(response.finish_reason, proto::FinishReason::Length as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_fails_its_call_and_is_replaced() {
    let mut server = TestServer::start(&python_probe("py-crash", 1, "")).await;
    server.start_metrics().await;
    let client = server.client().await;
    let before = generate_text(&client, "py-crash", "pid")
        .await
        .expect("pid");

    let status = generate_text(&client, "py-crash", "crash")
        .await
        .expect_err("crash");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The exit status, not the stderr (which goes to the log).
    assert!(
        status
            .message()
            .contains("exited during the call (exit status: 3)"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("about to crash"),
        "stderr reached the client: {}",
        status.message()
    );

    // A healthy worker serves the next call: a new process.
    let after = generate_text(&client, "py-crash", "pid")
        .await
        .expect("the next call");
    assert_ne!(before, after);
    assert_eq!(server.model_info("py-crash").await.workers, 1);
    let scrape = server.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_worker_restarts_total{model="py-crash",reason="exited"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_killed_at_the_deadline() {
    let server = TestServer::start(&python_probe("py-hang", 1, "")).await;
    let client = server.client().await;
    let before = generate_text(&client, "py-hang", "pid").await.expect("pid");

    let start = Instant::now();
    let status = client
        .clone()
        .generate(with_timeout(
            request("py-hang", "hang"),
            Duration::from_millis(500),
        ))
        .await
        .expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(3));

    // The hung process was killed (after the 200 ms cancel grace) and
    // replaced: the next call is answered by another process, promptly.
    let start = Instant::now();
    let after = generate_text(&client, "py-hang", "pid")
        .await
        .expect("next call");
    assert_ne!(before, after);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_generator_stops_without_a_restart() {
    let server = TestServer::start(&python_probe("py-cancel", 1, "")).await;
    let client = server.client().await;
    let before = generate_text(&client, "py-cancel", "pid")
        .await
        .expect("pid");
    let words = vec!["w"; 500].join(" ");
    let mut stream = client
        .clone()
        .generate_stream(request("py-cancel", &format!("stream {words}")))
        .await
        .expect("stream")
        .into_inner();
    stream.next().await.expect("a token").expect("ok");
    drop(stream);
    // 500 tokens x 20 ms would hold the worker for 10 s; the cancel line
    // stops the generator, and the same process serves the next call.
    let start = Instant::now();
    let after = generate_text(&client, "py-cancel", "pid")
        .await
        .expect("next call");
    assert_eq!(
        before, after,
        "the worker was restarted instead of cancelled"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_errors_keep_their_code() {
    let server = TestServer::start(&python_probe("py-errors", 1, "")).await;
    let client = server.client().await;
    let status = generate_text(&client, "py-errors", "error")
        .await
        .expect_err("error");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("quota"), "{}", status.message());
    let status = generate_text(&client, "py-errors", "oops")
        .await
        .expect_err("exception");
    assert_eq!(status.code(), Code::Internal);
    // An exception's text goes to the log, not to the client.
    assert!(
        status.message().contains("the worker failed"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("RuntimeError"),
        "{}",
        status.message()
    );
    // Neither broke the worker.
    assert_eq!(
        generate_text(&client, "py-errors", "still here")
            .await
            .expect("ok"),
        "still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_output_is_internal_and_the_gateway_lives_on() {
    // A worker in another language (sh) that breaks the protocol.
    let config = "[[models]]\nname = \"sh-garbage\"\nbackend = \"process\"\nworkers = 1\n[models.process]\ncommand = [\"sh\", \"-c\", \"echo '{\\\"type\\\":\\\"ready\\\"}'; while read line; do echo 'this is not JSON'; done\"]\n"
        .to_string()
        + &python_probe("py-fine", 1, "");
    let server = TestServer::start(&config).await;
    let client = server.client().await;
    for _ in 0..2 {
        let status = generate_text(&client, "sh-garbage", "hi")
            .await
            .expect_err("garbage");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(
            status.message().contains("broke the protocol"),
            "{}",
            status.message()
        );
        // The line itself goes to the log only.
        assert!(
            !status.message().contains("this is not JSON"),
            "{}",
            status.message()
        );
    }
    assert_eq!(
        generate_text(&client, "py-fine", "fine")
            .await
            .expect("other model"),
        "fine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_start_is_unavailable_naming_the_command() {
    let config = "[[models]]\nname = \"nowhere\"\nbackend = \"process\"\nworkers = 1\ntimeout_ms = 2000\n[models.process]\ncommand = [\"/nonexistent/infergate-worker\"]\n";
    let server = TestServer::start(config).await;
    let client = server.client().await;
    let status = generate_text(&client, "nowhere", "hi")
        .await
        .expect_err("no worker");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("/nonexistent/infergate-worker"),
        "{}",
        status.message()
    );
    assert_eq!(server.model_info("nowhere").await.ready_workers, 0);

    // Health says so (it follows the pools about once a second).
    let mut health = HealthClient::new(server.channel().await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health.check(check("nowhere")).await.expect("check");
        if status.into_inner().status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "the model never turned NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let overall = health.check(check("")).await.expect("check").into_inner();
    assert_eq!(overall.status, ServingStatus::Serving as i32);
}

/// A config's relative paths resolve against its own directory: a worker
/// `["python3", "worker.py"]` next to the config (with the worker library
/// copied beside it, as the README says) runs in that directory, whatever
/// directory the gateway was started from and however the config's path
/// was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_next_to_its_config_works_from_another_directory() {
    let pid = std::process::id();
    let base = std::env::temp_dir().join(format!("infergate-nextto-{pid}"));
    let dir = base.join("model");
    let elsewhere = base.join("elsewhere");
    for d in [&dir, &elsewhere] {
        std::fs::create_dir_all(d).expect("temp dirs");
    }
    let library = concat!(env!("CARGO_MANIFEST_DIR"), "/python/infergate_worker.py");
    std::fs::copy(library, dir.join("infergate_worker.py")).expect("copy the library");
    std::fs::write(
        dir.join("worker.py"),
        "import os\nfrom infergate_worker import serve\nserve(lambda request: os.getcwd() + ' ' + request.text)\n",
    )
    .expect("write worker.py");
    let config = common::binary::listen_anywhere().to_string()
        + "[[models]]\nname = \"nextto\"\nbackend = \"process\"\nworkers = 1\n[models.process]\ncommand = [\"python3\", \"worker.py\"]\n";
    std::fs::write(dir.join("gateway.toml"), config).expect("write the config");

    // From a sibling directory, the config named by a relative path.
    let relative = std::path::Path::new("../model/gateway.toml");
    let server = common::binary::BinaryServer::start_file(relative, Some(&elsewhere)).await;
    let client = server.client().await;
    let text = tokio::time::timeout(
        Duration::from_secs(30),
        generate_text(&client, "nextto", "hello"),
    )
    .await
    .expect("an answer within 30 s")
    .expect("the worker next to the config answers");
    let real = dir.canonicalize().expect("canonical dir");
    assert_eq!(text, format!("{} hello", real.display()));

    // check-config shows the resolved working directory.
    let out = std::process::Command::new(common::binary::bin())
        .current_dir(&elsewhere)
        .args(["check-config", "../model/gateway.toml"])
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "cwd = \"{}\"",
            elsewhere.join("../model").display()
        )),
        "{stdout}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}
