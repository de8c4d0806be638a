//! The process backend under attack from its own workers (issue 8): a
//! worker that never reads its stdin, workers that start grandchildren and
//! hang, a gateway killed with SIGKILL, workers that fail to start, and
//! workers whose errors hold secrets. Workers record their pids (and their
//! supervisors' and grandchildren's) in a directory, so each test can check
//! in /proc that no process is left behind. Linux only (/proc).
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{TestServer, generate_text, metric, python_probe, request};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Where the probe workers of one test write their pids (`PROBE_PIDS`).
struct PidDir {
    path: PathBuf,
    /// Pids already returned by `take`.
    seen: HashSet<i32>,
}

impl PidDir {
    fn new(name: &str) -> PidDir {
        let path =
            std::env::temp_dir().join(format!("infergate-hardening-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the pid directory");
        PidDir {
            path,
            seen: HashSet::new(),
        }
    }

    /// `env = { … }` for `[models.process]`, with `PROBE_PIDS` set.
    fn env(&self, more: &str) -> String {
        format!(
            "env = {{ PROBE_PIDS = \"{}\"{more} }}\n",
            self.path.display()
        )
    }

    /// The pids of `kind` not taken before.
    fn take(&mut self, kind: &str) -> Vec<i32> {
        let mut pids: Vec<i32> = std::fs::read_dir(&self.path)
            .expect("read the pid directory")
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_prefix(&format!("{kind}-"))?.parse().ok()
            })
            .filter(|pid| !self.seen.contains(pid))
            .collect();
        pids.sort_unstable();
        self.seen.extend(&pids);
        pids
    }

    /// Waits (bounded) until `count` new pids of each kind were written.
    async fn wait_new(&mut self, kinds: &[&str], count: usize) -> Vec<i32> {
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut found: Vec<Vec<i32>> = vec![Vec::new(); kinds.len()];
        loop {
            for (kind, pids) in kinds.iter().zip(&mut found) {
                pids.extend(self.take(kind));
            }
            if found.iter().all(|pids| pids.len() >= count) {
                return found.concat();
            }
            assert!(
                Instant::now() < give_up,
                "the workers never wrote their pids: {found:?} of {kinds:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for PidDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A request with a `grpc-timeout` for the server only: tonic's
/// `set_timeout` also starts a client-side timer, which can fire first and
/// hide the server's answer.
fn with_server_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("{}m", timeout.as_millis())
        .parse()
        .expect("a valid grpc-timeout");
    request.metadata_mut().insert("grpc-timeout", value);
    request
}

/// Whether a process runs (a zombie is dead: only its parent's reaping is
/// left, and that parent may be an init that reaps late).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S …": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Waits (bounded) until none of `pids` runs; says how long it took.
async fn assert_all_gone(pids: &[i32], within: Duration, what: &str) {
    assert!(!pids.is_empty(), "no pids to check for {what}");
    let start = Instant::now();
    let give_up = start + within;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
        if left.is_empty() {
            eprintln!(
                "{what}: {} processes gone within {:?}",
                pids.len(),
                start.elapsed()
            );
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{what}: processes {left:?} of {pids:?} still run after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_reads_its_stdin_is_killed_at_the_deadline() {
    let mut pids = PidDir::new("deaf");
    let marker = pids.path.join("deaf-once");
    // The first process says it is ready and never reads; the ones after it
    // serve normally.
    let config = python_probe("deaf", 1, "")
        + &pids.env(&format!(", PROBE_DEAF_ONCE = \"{}\"", marker.display()));
    let server = TestServer::start(&config).await;
    let client = server.client().await;
    let deaf = pids.wait_new(&["worker", "parent"], 1).await;
    server.wait_for("deaf", |m| m.ready_workers == 1).await;

    // 3.9 MiB: far more than a pipe holds, so the write cannot finish.
    let prompt = "x".repeat(3_900 * 1024);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(2);
    let status = client
        .clone()
        .generate(with_server_timeout(
            request("deaf", &prompt),
            Duration::from_secs(2),
        ))
        .await
        .expect_err("the worker never answers");
    let status_at = Instant::now();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // The worker is free within 1 s of the deadline, and the process gone.
    server.wait_for("deaf", |m| m.busy_workers == 0).await;
    let freed = Instant::now();
    eprintln!(
        "DEADLINE_EXCEEDED after {:?}; worker free {:?} after the deadline",
        status_at - start,
        freed.saturating_duration_since(deadline)
    );
    assert!(
        freed < deadline + Duration::from_secs(1),
        "freed {:?} after the deadline",
        freed - deadline
    );
    assert_all_gone(&deaf, Duration::from_secs(2), "the deaf worker").await;

    // A new process serves the next call, promptly.
    let start = Instant::now();
    let answer = generate_text(&client, "deaf", "pid")
        .await
        .expect("the next call");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert!(!deaf.contains(&answer.parse().expect("a pid")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchildren_die_with_their_worker_on_kill_exit_and_shutdown() {
    let mut pids = PidDir::new("grandchild");
    // And a worker in sh that never reads its stdin, so ignores its end.
    let deaf = format!(
        "[[models]]\nname = \"sh-deaf\"\nbackend = \"process\"\nworkers = 1\n[models.process]\ncommand = [\"sh\", \"-c\", \"touch {}/deaf-$$; echo '{{\\\"type\\\":\\\"ready\\\"}}'; exec sleep 1000\"]\n",
        pids.path.display()
    );
    let config = python_probe("gc", 1, "") + &pids.env("") + &deaf;
    let server = TestServer::start(&config).await;
    let client = server.client().await;
    let kinds = ["worker", "parent", "grandchild"];

    // Hung past its deadline and deaf to the cancel line: killed.
    let status = client
        .clone()
        .generate(with_server_timeout(
            request("gc", "grandchild hang"),
            Duration::from_secs(1),
        ))
        .await
        .expect_err("hangs");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let hung = pids.wait_new(&kinds, 1).await;
    assert_all_gone(&hung, Duration::from_secs(5), "after the cancel-kill").await;

    // Exits by itself mid-call: restarted, and what it started is killed.
    let status = generate_text(&client, "gc", "grandchild exit")
        .await
        .expect_err("exits");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("exit status: 3"),
        "{}",
        status.message()
    );
    let exited = pids.wait_new(&kinds, 1).await;
    assert_all_gone(&exited, Duration::from_secs(5), "after the restart").await;

    // Idle, with a grandchild running, when the server shuts down.
    let answer = generate_text(&client, "gc", "grandchild idle")
        .await
        .expect("starts a grandchild");
    assert_eq!(answer, "started");
    let mut idle = pids.wait_new(&kinds, 1).await;
    idle.extend(pids.wait_new(&["deaf"], 1).await);
    assert!(idle.iter().all(|&pid| alive(pid)), "{idle:?}");
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown within 10 s")
        .expect("clean shutdown");
    assert_all_gone(&idle, Duration::from_secs(5), "after shutdown").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_grandchildren_die_with_a_sigkilled_gateway() {
    let mut pids = PidDir::new("sigkill");
    let config = format!(
        "{}{}{}",
        common::binary::listen_anywhere(),
        python_probe("py", 2, "timeout_ms = 60000"),
        pids.env(", PROBE_GRANDCHILD = \"1\"")
    );
    let mut gateway = common::binary::BinaryServer::start("sigkill", &config).await;
    let all = pids.wait_new(&["worker", "parent", "grandchild"], 2).await;

    // One worker hung in a call.
    let client = gateway.client().await;
    let hung = tokio::spawn({
        let mut client = client.clone();
        async move { client.generate(request("py", "hang")).await }
    });
    gateway.wait_for("py", |m| m.busy_workers == 1).await;

    gateway.child.kill().expect("SIGKILL the gateway");
    gateway.exited(Duration::from_secs(10)).await;
    assert_all_gone(&all, Duration::from_secs(5), "after SIGKILL of the gateway").await;
    // The hung call's connection died with the gateway.
    hung.await.expect("task").expect_err("the gateway died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_fail_to_start_leave_the_model_not_serving() {
    let mut pids = PidDir::new("start");
    // The workers that exit get a start timeout far above Python's start-up
    // on a loaded machine, so that they fail by exiting, as meant; the
    // silent one is the one that should time out.
    let model = |name: &str, command: &str| {
        let start_timeout_ms = if name == "silent" { 300 } else { 5000 };
        format!(
            "[[models]]\nname = \"{name}\"\nbackend = \"process\"\nworkers = 1\ntimeout_ms = 2000\n[models.process]\ncommand = {command}\nstart_timeout_ms = {start_timeout_ms}\n"
        )
    };
    let silent = format!(
        "[\"sh\", \"-c\", \"touch {}/worker-$$; exec sleep 1000\"]",
        pids.path.display()
    );
    let config = model("missing", "[\"python3\", \"/nonexistent/worker.py\"]")
        + &model(
            "broken-import",
            "[\"python3\", \"-c\", \"import infergate_no_such_module\"]",
        )
        + &model("silent", &silent);
    let mut server = TestServer::start(&config).await;
    server.start_metrics().await;
    let client = server.client().await;
    let mut health = HealthClient::new(server.channel().await);

    for (name, says) in [
        ("missing", "exited at start-up (exit status: 2)"),
        ("broken-import", "exited at start-up (exit status: 1)"),
        ("silent", "sent no ready line within 300 ms"),
    ] {
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let check = HealthCheckRequest {
                service: name.into(),
            };
            let status = health.check(check).await.expect("check").into_inner();
            if status.status == ServingStatus::NotServing as i32 {
                break;
            }
            assert!(Instant::now() < give_up, "{name} never turned NOT_SERVING");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(server.model_info(name).await.ready_workers, 0, "{name}");

        let status = generate_text(&client, name, "hi")
            .await
            .expect_err("no worker");
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        let message = status.message();
        assert!(message.contains(says), "{name}: {message}");
        for leaked in ["Traceback", "ModuleNotFoundError", "No such file"] {
            assert!(!message.contains(leaked), "{name}: {message}");
        }
        let scrape = server.scrape().await;
        let series =
            format!(r#"infergate_worker_restarts_total{{model="{name}",reason="start_failed"}}"#);
        assert!(
            metric(&scrape, &series).is_some_and(|n| n >= 1.0),
            "{series} in {scrape}"
        );
    }
    // The silent workers were killed, not left behind.
    let silent = pids.take("worker");
    assert_all_gone(&silent, Duration::from_secs(5), "silent workers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_secrets_stay_in_the_log() {
    let server = TestServer::start(&python_probe("secrets", 1, "")).await;
    let client = server.client().await;
    let leaks = |status: &tonic::Status| {
        format!(
            "{} {:?} {:?}",
            status.message(),
            status.metadata(),
            status.details()
        )
        .contains("hunter2")
    };

    // Crashes after writing a database URL with its password to stderr.
    let status = generate_text(&client, "secrets", "leak")
        .await
        .expect_err("crashes");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!leaks(&status), "{status:?}");
    assert!(
        status.message().contains("exited during the call"),
        "{}",
        status.message()
    );

    // Raises a plain exception whose text holds the password.
    let status = generate_text(&client, "secrets", "oops")
        .await
        .expect_err("raises");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(!leaks(&status), "{status:?}");
    assert!(
        status
            .message()
            .starts_with("INTERNAL (model \"secrets\", stage running): the worker failed"),
        "{}",
        status.message()
    );

    // WorkerError is the deliberate channel: its code and message arrive.
    let status = generate_text(&client, "secrets", "invalid")
        .await
        .expect_err("refuses");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("the prompt is not allowed"),
        "{}",
        status.message()
    );
}
