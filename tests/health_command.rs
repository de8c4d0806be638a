//! `infergate health` against the real binary serving: 0 and `SERVING` for
//! the server and a model, 1 for a model that is `NOT_SERVING`, an unknown
//! service, nothing listening or no answer in time, 64 for an address that is not host:port.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::binary::{BinaryServer, bin, listen_anywhere};

/// Runs `infergate health` with `args` (off the async threads).
async fn health(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .arg("health")
            .args(&args)
            .output()
            .expect("run infergate health")
    })
    .await
    .expect("the health command ran")
}

fn described(out: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_0_when_serving_and_1_otherwise() {
    let config = format!(
        "{}{}",
        listen_anywhere(),
        "[[models]]\nname = \"echo\"\nbackend = \"simulated\"\n\
         [[models]]\nname = \"nowhere\"\nbackend = \"process\"\nworkers = 1\n\
         [models.process]\ncommand = [\"/nonexistent/infergate-worker\"]\n"
    );
    let server = BinaryServer::start("health-command", &config).await;
    let addr = server.addr.as_str();
    // A model turns SERVING once a worker has its backend up: a moment
    // after the listener on a loaded machine.
    let mut checks = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    common::wait_for_health(
        &mut checks,
        "echo",
        tonic_health::pb::health_check_response::ServingStatus::Serving,
    )
    .await;

    for service in ["", "echo"] {
        let out = health(&["--addr", addr, "--service", service]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{service:?}: {}",
            described(&out)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "SERVING\n");
    }
    // The http:// form works too.
    let out = health(&["--addr", &format!("http://{addr}")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", described(&out));

    // A model whose worker cannot start turns NOT_SERVING (health follows
    // the pools about once a second).
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let out = health(&["--addr", addr, "--service", "nowhere"]).await;
        if String::from_utf8_lossy(&out.stdout) == "NOT_SERVING\n" {
            assert_eq!(out.status.code(), Some(1), "{}", described(&out));
            break;
        }
        assert!(
            Instant::now() < give_up,
            "never NOT_SERVING: {}",
            described(&out)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = health(&["--addr", addr, "--service", "no-such-model"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", described(&out));
    assert!(out.stdout.is_empty(), "{}", described(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{}",
        described(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_1_with_nothing_listening_and_64_for_a_bad_address() {
    // A port that was just free: connection refused, at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let started = Instant::now();
    let out = health(&["--addr", &format!("127.0.0.1:{port}"), "--timeout", "5s"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", described(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        described(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A listener that never answers: given up after --timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let started = Instant::now();
    let out = health(&["--addr", &silent_addr, "--timeout", "500ms"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", described(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(silent);

    let out = health(&["--addr", "not an address"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", described(&out));
}
