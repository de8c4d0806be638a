//! Bad input gets a clear error with the right code; a failing backend
//! fails only its own call.

mod common;

use std::sync::atomic::Ordering;

use common::{Event, TestServer, next_event, probe_server, request, simulated};
use infergate::config::ServerConfig;
use infergate::proto;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_not_found_and_the_known_ones_are_listed() {
    let server =
        TestServer::start(&(simulated("alpha", 0, 1, 1) + &simulated("beta", 0, 1, 1))).await;
    let status = server
        .client()
        .await
        .generate(request("gamma", "hi"))
        .await
        .expect_err("unknown model");
    assert_eq!(status.code(), Code::NotFound);
    for name in ["gamma", "alpha", "beta"] {
        assert!(status.message().contains(name), "{}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fields_are_named() {
    let config = simulated("m", 0, 1, 1)
        .replace("queue_capacity = 1", "queue_capacity = 1\nmax_tokens = 100");
    let server = TestServer::start(&config).await;
    let mut client = server.client().await;
    let cases = [
        ("prompt", request("m", "")),
        (
            "max_tokens",
            proto::GenerateRequest {
                max_tokens: 101,
                ..request("m", "x")
            },
        ),
        (
            "temperature",
            proto::GenerateRequest {
                temperature: Some(7.0),
                ..request("m", "x")
            },
        ),
        (
            "temperature",
            proto::GenerateRequest {
                temperature: Some(f32::NAN),
                ..request("m", "x")
            },
        ),
        ("model", request("", "x")),
        (
            "messages[0].role",
            proto::GenerateRequest {
                messages: vec![proto::Message {
                    role: "".into(),
                    content: "x".into(),
                }],
                ..request("m", "")
            },
        ),
    ];
    for (field, bad) in cases {
        let status = client.generate(bad).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    // A valid call on the same connection still works.
    let ok = client
        .generate(request("m", "still fine"))
        .await
        .expect("valid call");
    assert_eq!(ok.into_inner().text, "still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_resource_exhausted() {
    let config = "[server]\nmax_message_bytes = 2048\n".to_string() + &simulated("m", 0, 1, 1);
    let server = TestServer::start(&config).await;
    let mut client = server.client().await;
    let status = client
        .generate(request("m", &"x".repeat(4096)))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    client
        .generate(request("m", "small"))
        .await
        .expect("a small call still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_backend_fails_only_its_call() {
    let (server, factory, mut events) = probe_server(1, 4, ServerConfig::default()).await;
    let mut client = server.client().await;
    let status = client
        .generate(request("probe", "panic"))
        .await
        .expect_err("panic");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("panic".into())
    );

    // The single worker survived and got a fresh backend.
    let ok = client
        .generate(request("probe", "next"))
        .await
        .expect("next call");
    assert_eq!(ok.into_inner().text, "next");
    assert_eq!(server.model_info("probe").await.workers, 1);
    assert_eq!(factory.created.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_models_reports_configuration_and_load() {
    let server =
        TestServer::start(&(simulated("alpha", 0, 3, 7) + &simulated("beta", 0, 1, 1))).await;
    let models = server
        .client()
        .await
        .list_models(proto::ListModelsRequest {})
        .await
        .expect("ListModels")
        .into_inner()
        .models;
    let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(models[0].backend, "simulated");
    assert_eq!((models[0].workers, models[0].queue_capacity), (3, 7));
    assert_eq!((models[0].busy_workers, models[0].queued), (0, 0));
    // Every worker has its backend up (they start on their own threads).
    server.wait_for("alpha", |m| m.ready_workers == 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_request_id() {
    let server = TestServer::start(&simulated("m-id", 0, 1, 1)).await;
    let mut client = server.client().await;

    let mut given = tonic::Request::new(request("m-id", "hi"));
    given
        .metadata_mut()
        .insert("x-request-id", "trace-42".parse().expect("ascii"));
    let response = client.generate(given).await.expect("generate");
    assert_eq!(
        response.metadata().get("x-request-id").expect("echoed"),
        "trace-42"
    );

    // Without one, the gateway makes one up, different per call.
    let first = client
        .generate(request("m-id", "hi"))
        .await
        .expect("generate");
    let second = client
        .generate(request("m-id", "hi"))
        .await
        .expect("generate");
    let id = |r: &tonic::Response<proto::GenerateResponse>| {
        r.metadata()
            .get("x-request-id")
            .expect("made up")
            .to_str()
            .expect("ascii")
            .to_string()
    };
    assert!(!id(&first).is_empty());
    assert_ne!(id(&first), id(&second));

    // Errors carry it too, and so do streams.
    let mut bad = tonic::Request::new(request("nope", "hi"));
    bad.metadata_mut()
        .insert("x-request-id", "trace-43".parse().expect("ascii"));
    let status = client.generate(bad).await.expect_err("unknown model");
    assert_eq!(
        status.metadata().get("x-request-id").expect("on the error"),
        "trace-43"
    );
    let stream = client
        .generate_stream(request("m-id", "hi"))
        .await
        .expect("stream");
    assert!(stream.metadata().get("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_model_name_is_quoted_short() {
    let server = TestServer::start(&simulated("alpha", 0, 1, 1)).await;
    let name = "n".repeat(1_000_000);
    let status = server
        .client()
        .await
        .generate(request(&name, "hi"))
        .await
        .expect_err("unknown model");
    assert_eq!(status.code(), Code::NotFound);
    let message = status.message();
    assert!(message.len() < 1_000, "{} bytes", message.len());
    assert!(message.contains("1000000 bytes in all"), "{message}");
    assert!(message.contains("alpha"), "{message}");
    // The message says what failed, where, and which call it was.
    assert!(
        message.starts_with("NOT_FOUND (stage admission)"),
        "{message}"
    );
    let id = status
        .metadata()
        .get("x-request-id")
        .expect("request id")
        .to_str()
        .expect("ascii");
    assert!(message.contains(&format!("[request {id}]")), "{message}");
}
