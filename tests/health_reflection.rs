//! grpc.health.v1 (Check and Watch, overall and per model) and server
//! reflection (v1 and v1alpha), as ghz and grpcurl use them.

mod common;

use common::{TestServer, simulated};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_server_and_each_model() {
    let mut server =
        TestServer::start(&(simulated("alpha", 0, 1, 1) + &simulated("beta", 0, 1, 1))).await;
    let mut health = HealthClient::new(server.channel().await);
    // A model turns SERVING once a worker has its backend up, which on a
    // loaded machine can be a moment after the listener is up.
    for model in ["alpha", "beta"] {
        server.wait_for(model, |m| m.ready_workers == 1).await;
        common::wait_for_health(&mut health, model, ServingStatus::Serving).await;
    }
    for service in ["", "infergate.v1.Inference", "alpha", "beta"] {
        let status = health
            .check(check(service))
            .await
            .expect(service)
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    let missing = health
        .check(check("gamma"))
        .await
        .expect_err("unknown service");
    assert_eq!(missing.code(), Code::NotFound);

    let mut watch = health
        .watch(check("alpha"))
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("a first status").expect("ok");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let done = server.begin_shutdown();
    let next = watch.next().await.expect("a status change").expect("ok");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    done.await.expect("task").expect("clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_lists_the_inference_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestServer::start(&simulated("alpha", 0, 1, 1)).await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "infergate.v1.Inference".into(),
            )),
        },
    ]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .expect("reflection")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses
        .next()
        .await
        .expect("a response")
        .expect("ok")
        .message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"infergate.v1.Inference"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) = responses
        .next()
        .await
        .expect("a response")
        .expect("ok")
        .message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1alpha_lists_the_inference_service() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let server = TestServer::start(&simulated("alpha", 0, 1, 1)).await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let requests = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .expect("reflection")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses
        .next()
        .await
        .expect("a response")
        .expect("ok")
        .message_response
    else {
        panic!("expected a service list");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "infergate.v1.Inference")
    );
}
