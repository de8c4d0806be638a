//! ghz command lines, copied from ghz's documentation (ghz.sh/docs:
//! examples, options, calldata, output, example_config), run unchanged
//! through the `infergate bench` binary against a real server: only the
//! binary name, the address, the method (`--call
//! infergate.v1.Inference/Generate`) and the data (`-d
//! '{"model":"echo",...}'`) are adapted. Each must succeed and print what
//! its flags ask for.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Event, ProbeFactory, TestServer, simulated};
use infergate::config::{BackendKind, ModelConfig, ServerConfig};
use infergate::gateway::Gateway;
use prost::Message;
use serde_json::Value;
use tokio::sync::mpsc;

/// What a run of the binary left.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    wall: Duration,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

/// Splits a shell command line as sh would for these lines: 'single' and
/// "double" quotes, and backslash-newline continuations.
fn shell_words(line: &str) -> Vec<String> {
    let line = line.replace("\\\n", " ");
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                let word = word.get_or_insert_with(String::new);
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// Runs `line` (which starts with `infergate bench`) through the binary,
/// from the repository root, with `stdin` as its input.
async fn run_with_stdin(line: &str, stdin: Vec<u8>) -> Run {
    let words = shell_words(line);
    assert_eq!(&words[..2], ["infergate", "bench"], "{line}");
    let args = words[1..].to_vec();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_infergate"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start infergate bench");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&stdin)
            .expect("write stdin");
        let output = child.wait_with_output().expect("infergate bench ends");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            wall: started.elapsed(),
        }
    })
    .await
    .expect("the run")
}

async fn run(line: &str) -> Run {
    run_with_stdin(line, Vec::new()).await
}

/// A server with the "echo" model (instant) and a "slow" one.
async fn echo_server(slow_ms: u64) -> TestServer {
    TestServer::start(&(simulated("echo", 0, 8, 4096) + &simulated("slow", slow_ms, 64, 4096)))
        .await
}

/// A server whose "echo" model reports every prompt it gets.
async fn probe_echo_server() -> (TestServer, mpsc::UnboundedReceiver<Event>) {
    let (factory, events) = ProbeFactory::new();
    let mut model = ModelConfig::new("echo", BackendKind::Simulated);
    model.workers = 8;
    model.queue_capacity = 1024;
    let gateway = Gateway::builder()
        .model(model, factory)
        .build()
        .expect("pool starts");
    (
        TestServer::start_gateway(gateway, ServerConfig::default()).await,
        events,
    )
}

/// The prompts the probe has seen start.
fn prompts(events: &mut mpsc::UnboundedReceiver<Event>) -> Vec<String> {
    let mut prompts = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let Event::Started(prompt) = event {
            prompts.push(prompt);
        }
    }
    prompts
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("infergate-ghz-{}-{name}", std::process::id()))
}

fn count(report: &Value, code: &str) -> u64 {
    report["statusCodeDistribution"][code].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simple_unary_and_reflection_examples_run() {
    let server = echo_server(0).await;
    // ghz docs, "A simple insecure unary call" (its proto file adapted to
    // ours; it is accepted and not needed).
    let out = run(&format!(
        r#"infergate bench --insecure \
  --proto ./proto/infergate/v1/inference.proto \
  --call infergate.v1.Inference/Generate \
  -d '{{"model":"echo","prompt":"Joe"}}' \
  {}"#,
        server.addr
    ))
    .await
    .ok();
    for line in [
        "Summary:",
        "Count:\t200",
        "Requests/sec:",
        "[OK]\t200 responses",
    ] {
        assert!(out.stdout.contains(line), "{line:?} in:\n{}", out.stdout);
    }
    // "Server reflection": the same without --proto.
    let out = run(&format!(
        r#"infergate bench --insecure \
  --call infergate.v1.Inference/Generate \
  -d '{{"model":"echo","prompt":"Joe"}}' \
  {}"#,
        server.addr
    ))
    .await
    .ok();
    assert!(out.stdout.contains("[OK]\t200 responses"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_number_templates_reach_the_server_rendered() {
    let (server, mut events) = probe_echo_server().await;
    // ghz docs, "Call Template Data", in the data as well as the metadata.
    run(&format!(
        r#"infergate bench --insecure \
  --call infergate.v1.Inference/Generate \
  -d '{{"model":"echo","prompt":"req {{{{.RequestNumber}}}} by {{{{.WorkerID}}}}"}}' \
  -m '{{"request-id":"{{{{.RequestNumber}}}}", "timestamp":"{{{{.TimestampUnix}}}}"}}' \
  -c 5 -n 50 \
  {}"#,
        server.addr
    ))
    .await
    .ok();
    let prompts = prompts(&mut events);
    assert_eq!(prompts.len(), 50, "{prompts:?}");
    let numbers: BTreeSet<u64> = prompts
        .iter()
        .map(|p| {
            let (number, worker) = p
                .strip_prefix("req ")
                .and_then(|p| p.split_once(" by "))
                .unwrap_or_else(|| panic!("not rendered: {p:?}"));
            assert!(
                ["g0c0", "g1c0", "g2c0", "g3c0", "g4c0"].contains(&worker),
                "{p}"
            );
            number.parse().expect("a number")
        })
        .collect();
    // Every call had its own number: 0 to 49, as ghz counts.
    assert_eq!(numbers, (0..50).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variable_data_is_sent_round_robin() {
    let (server, mut events) = probe_echo_server().await;
    // ghz docs, "Variable data for unary calls".
    run(&format!(
        r#"infergate bench --insecure \
  --call infergate.v1.Inference/Generate \
  -d '[{{"model":"echo","prompt":"Joe"}},{{"model":"echo","prompt":"Bob"}}]' \
  {}"#,
        server.addr
    ))
    .await
    .ok();
    let prompts = prompts(&mut events);
    let joe = prompts.iter().filter(|p| *p == "Joe").count();
    let bob = prompts.iter().filter(|p| *p == "Bob").count();
    assert_eq!((joe, bob), (100, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_parameters_connections_and_protoset_examples_run() {
    let server = echo_server(0).await;
    // ghz docs, "Custom parameters" (with --connections=10) and "Protoset".
    let out = run(&format!(
        r#"infergate bench --proto ./greeter.proto \
  --call infergate.v1.Inference/Generate \
  -d '{{"model":"echo","prompt":"Joe"}}' \
  -n 2000 \
  -c 20 \
  --connections=10 \
  -O json \
  {}"#,
        server.addr
    ))
    .await
    .ok();
    let report = out.json();
    assert_eq!(count(&report, "OK"), 2000);
    assert_eq!(report["options"]["connections"], 10);
    assert_eq!(report["options"]["concurrency"], 20);
    let out = run(&format!(
        r#"infergate bench --protoset ./bundle.protoset \
  --call infergate.v1.Inference/Generate \
  -d '{{"model":"echo","prompt":"Bob"}}' \
  -n 1000 -c 10 \
  {}"#,
        server.addr
    ))
    .await
    .ok();
    assert!(
        out.stdout.contains("[OK]\t1000 responses"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_output_format_prints_what_it_says() {
    let server = echo_server(0).await;
    let line = |format: &str| {
        format!(
            r#"infergate bench --insecure --call infergate.v1.Inference/Generate -d '{{"model":"echo","prompt":"x"}}' -n 20 -c 4 -O {format} --name fmt {}"#,
            server.addr
        )
    };
    // -O csv: ghz's header, then one line per call.
    let csv = run(&line("csv")).await.ok().stdout;
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("duration (ms),status,error"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 20, "{csv}");
    assert!(rows.iter().all(|r| r.ends_with(",OK,")), "{csv}");
    // -O json: ghz's fields.
    let report = run(&line("json")).await.ok().json();
    for field in [
        "name",
        "endReason",
        "date",
        "options",
        "count",
        "total",
        "average",
        "fastest",
        "slowest",
        "rps",
        "errorDistribution",
        "statusCodeDistribution",
        "latencyDistribution",
        "histogram",
        "details",
    ] {
        assert!(report.get(field).is_some(), "no {field:?} in {report}");
    }
    assert_eq!(report["name"], "fmt");
    assert_eq!(report["count"], 20);
    assert_eq!(report["options"]["insecure"], true);
    // -O pretty: the same report, indented.
    let pretty = run(&line("pretty")).await.ok();
    assert!(
        pretty.stdout.contains("\n  \"count\": 20"),
        "{}",
        pretty.stdout
    );
    assert_eq!(pretty.json()["count"], 20);
    // -O html: one self-contained page.
    let html = run(&line("html")).await.ok().stdout;
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    for part in [
        "<h1>fmt</h1>",
        "Summary",
        "Histogram",
        "Latency distribution",
        "<td>OK</td>",
    ] {
        assert!(html.contains(part), "{part:?} in {html}");
    }
    assert!(!html.contains("<script") && html.trim_end().ends_with("</html>"));
    // The summary names the run, as ghz's does.
    let summary = run(&line("summary")).await.ok().stdout;
    assert!(summary.contains("Name:\tfmt"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_zero_means_no_deadline() {
    let server = echo_server(50).await;
    // ghz: "-t ... use zero value for infinite".
    let report = run(&format!(
        r#"infergate bench --insecure --call infergate.v1.Inference/Generate -d '{{"model":"slow","prompt":"x"}}' -t 0 -n 10 -c 5 -O json {}"#,
        server.addr
    ))
    .await
    .ok()
    .json();
    assert_eq!(count(&report, "OK"), 10, "{report}");
    assert_eq!(report["options"]["timeout"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_first_leaves_the_first_results_out() {
    let server = echo_server(0).await;
    let report = run(&format!(
        r#"infergate bench --insecure --call infergate.v1.Inference/Generate -d '{{"model":"echo","prompt":"x"}}' --skipFirst 5 -n 20 -c 2 -O json {}"#,
        server.addr
    ))
    .await
    .ok()
    .json();
    assert_eq!(report["count"], 15);
    assert_eq!(report["details"].as_array().map(Vec::len), Some(15));
    assert_eq!(report["options"]["skipFirst"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_stops_a_run_that_n_would_not() {
    let server = echo_server(20).await;
    // ghz docs: -x respects -n but stops when it runs out.
    let out = run(&format!(
        r#"infergate bench --insecure --call infergate.v1.Inference/Generate -d '{{"model":"slow","prompt":"x"}}' -x 1s -n 1000000 -c 10 -O json --no-details {}"#,
        server.addr
    ))
    .await
    .ok();
    let report = out.json();
    assert_eq!(report["endReason"], "timeout");
    let total = report["total"].as_u64().expect("ns");
    assert!(
        (950_000_000..1_500_000_000).contains(&total),
        "total {total} ns"
    );
    assert!(out.wall < Duration::from_secs(5), "{:?}", out.wall);
    let calls = report["count"].as_u64().expect("count");
    assert!((100..1_000_000).contains(&calls), "{calls}");
    // The calls in flight at 1 s end as ghz ends them.
    assert!(count(&report, "Canceled") <= 10, "{report}");
    // With -n reached first, -x does not matter.
    let report = run(&format!(
        r#"infergate bench --insecure --call infergate.v1.Inference/Generate -d '{{"model":"slow","prompt":"x"}}' -x 10s -n 20 -c 10 -O json {}"#,
        server.addr
    ))
    .await
    .ok()
    .json();
    assert_eq!(report["endReason"], "normal");
    assert_eq!(count(&report, "OK"), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_z_cancels_calls_in_flight_as_ghz_does() {
    let server = echo_server(300).await;
    let line = |stop: &str| {
        format!(
            r#"infergate bench --insecure --call infergate.v1.Inference/Generate -d '{{"model":"slow","prompt":"x"}}' -c 4 -z 1s {stop} -O json {}"#,
            server.addr
        )
    };
    // Default (ghz's "close"): each worker's fourth call (0.9 to 1.2 s) is
    // cut at 1 s and reported as grpc-go reports a closed connection.
    let report = run(&line("")).await.ok().json();
    assert_eq!(report["endReason"], "timeout");
    // 12 unless a loaded machine slowed the first calls.
    assert!((8..=12).contains(&count(&report, "OK")), "{report}");
    assert_eq!(count(&report, "Canceled"), 4, "{report}");
    assert_eq!(
        report["errorDistribution"]["rpc error: code = Canceled desc = grpc: the client connection is closing"],
        4
    );
    assert!(report["total"].as_u64().expect("ns") < 1_150_000_000);
    // --duration-stop wait: they finish.
    let report = run(&line("--duration-stop wait")).await.ok().json();
    assert_eq!(count(&report, "Canceled"), 0, "{report}");
    assert!((12..=16).contains(&count(&report, "OK")), "{report}");
    assert!(report["total"].as_u64().expect("ns") >= 1_100_000_000);
    // --duration-stop ignore: they are left out.
    let report = run(&line("--duration-stop ignore")).await.ok().json();
    assert_eq!(count(&report, "Canceled"), 0, "{report}");
    assert!((8..=12).contains(&count(&report, "OK")), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rps_is_capped_by_the_workers_unless_async() {
    let server = echo_server(100).await;
    let line = |extra: &str| {
        format!(
            r#"infergate bench --insecure --call infergate.v1.Inference/Generate -d '{{"model":"slow","prompt":"x"}}' --rps 100 -c 2 -z 1s {extra} --duration-stop ignore -O json {}"#,
            server.addr
        )
    };
    // Two workers with one 100 ms call each at a time: 20 calls a second,
    // not 100.
    let report = run(&line("")).await.ok().json();
    let paced = report["count"].as_u64().expect("count");
    assert!((14..=22).contains(&paced), "{paced} calls");
    // --async: the open loop keeps the schedule whatever -c says.
    let report = run(&line("--async")).await.ok().json();
    let open = report["count"].as_u64().expect("count");
    assert!((80..=101).contains(&open), "{open} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_ghz_config_runs_as_is() {
    let server =
        TestServer::start(&(simulated("slow-a", 100, 1, 4) + &simulated("slow-b", 80, 1, 4))).await;
    // Its "host" is 127.0.0.1:50051; the command line overrides it, as in
    // ghz ("CLI options overwrite config file options").
    let report = run(&format!(
        "infergate bench --config bench/ghz/s2-pair.json -O json {}",
        server.addr
    ))
    .await
    .ok()
    .json();
    assert_eq!(report["name"], "S2 the original pair");
    assert_eq!(count(&report, "OK"), 2, "{report}");
    assert_eq!(report["options"]["concurrency"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghz_doc_config_files_in_json_and_toml_run() {
    let server = echo_server(0).await;
    // ghz docs, "Configuration Files" (JSON), with -c and -n over it.
    let json = temp_path("config.json");
    std::fs::write(
        &json,
        format!(
            r#"{{
    "proto": "/path/to/greeter.proto",
    "call": "infergate.v1.Inference.Generate",
    "total": 2000,
    "concurrency": 50,
    "data": {{
        "model": "echo",
        "prompt": "Joe {{{{.RequestNumber}}}}"
    }},
    "metadata": {{
        "foo": "bar",
        "trace_id": "{{{{.RequestNumber}}}}",
        "timestamp": "{{{{.TimestampUnix}}}}"
    }},
    "import-paths": [
        "/path/to/protos"
    ],
    "max-duration": "10s",
    "host": "{}"
}}"#,
            server.addr
        ),
    )
    .expect("write config");
    let out = run(&format!(
        "infergate bench --config {} -c 20 -n 100 -O json",
        json.display()
    ))
    .await
    .ok();
    let report = out.json();
    assert_eq!(count(&report, "OK"), 100, "{report}");
    assert_eq!(report["options"]["concurrency"], 20);
    // The TOML example, writing pretty JSON to its "output".
    let output = temp_path("pretty.json");
    let toml = temp_path("config.toml");
    std::fs::write(
        &toml,
        format!(
            r#""max-duration" = "7s"
total = 50
concurrency = 5
proto = "../../testdata/greeter.proto"
call = "infergate.v1.Inference.Generate"
host = "{}"
insecure = true
output = "{}"
format = "pretty"

[data]
model = "echo"
prompt = "Bob {{{{.TimestampUnix}}}}"

[metadata]
rn = "{{{{.RequestNumber}}}}"
"#,
            server.addr,
            output.display()
        ),
    )
    .expect("write config");
    let out = run(&format!("infergate bench --config {}", toml.display()))
        .await
        .ok();
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let text = std::fs::read_to_string(&output).expect("the output file");
    assert!(text.contains("\n  \"count\": 50"), "{text}");
    for path in [json, toml, output] {
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_from_files_stdin_and_binary_and_streaming_calls() {
    let server = echo_server(0).await;
    let addr = server.addr;
    // -D: ghz's data file.
    let data = temp_path("data.json");
    std::fs::write(&data, r#"{"model":"echo","prompt":"from a file"}"#).expect("write");
    let out = run(&format!(
        "infergate bench --insecure --call infergate.v1.Inference/Generate -D {} -n 10 -c 2 {addr}",
        data.display()
    ))
    .await
    .ok();
    assert!(out.stdout.contains("[OK]\t10 responses"), "{}", out.stdout);
    // -d @: ghz reads the data from stdin.
    let out = run_with_stdin(
        &format!("infergate bench --insecure --call infergate.v1.Inference/Generate -d @ -n 10 -c 2 {addr}"),
        br#"{"model":"echo","prompt":"from stdin"}"#.to_vec(),
    )
    .await
    .ok();
    assert!(out.stdout.contains("[OK]\t10 responses"), "{}", out.stdout);
    // -B: ghz docs, "Binary data".
    let binary = temp_path("hello_request_data.bin");
    let message = infergate::proto::GenerateRequest {
        model: "echo".into(),
        prompt: "binary".into(),
        ..Default::default()
    };
    std::fs::write(&binary, message.encode_to_vec()).expect("write");
    let out = run(&format!(
        "infergate bench --proto ./greeter.proto --call infergate.v1.Inference/Generate -B {} -n 10 -c 2 {addr}",
        binary.display()
    ))
    .await
    .ok();
    assert!(out.stdout.contains("[OK]\t10 responses"), "{}", out.stdout);
    // ghz docs, "Server streaming", with its metadata template.
    let out = run(&format!(
        r#"infergate bench --insecure \
  --call infergate.v1.Inference.GenerateStream \
  -d '{{"model":"echo","prompt":"a b c"}}' \
  -m '{{"trace_id":"{{{{.RequestNumber}}}}", "timestamp":"{{{{.TimestampUnixNano}}}}"}}' \
  -n 20 \
  {addr}"#
    ))
    .await
    .ok();
    assert!(out.stdout.contains("[OK]\t20 responses"), "{}", out.stdout);
    for path in [data, binary] {
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_ghz_flags_warn_or_fail_clearly() {
    let server = echo_server(0).await;
    // ghz docs, "Debug logging": accepted, with a warning.
    let out = run(&format!(
        r#"infergate bench --insecure \
  --proto ./protos/greeter.proto \
  --call infergate.v1.Inference/Generate \
  -d '{{"model":"echo","prompt":"Joe"}}' -c 5 -n 50 -m '{{"request-id":"{{{{.RequestNumber}}}}", "timestamp":"{{{{.TimestampUnix}}}}"}}' \
  --debug ./logs/debug.json \
  {}"#,
        server.addr
    ))
    .await
    .ok();
    assert!(out.stdout.contains("[OK]\t50 responses"), "{}", out.stdout);
    assert!(out.stderr.contains("warning: --debug"), "{}", out.stderr);
    // TLS flags are read up front: a CA file that is not there, or a
    // request to skip verification, is refused, saying why. (TLS itself is
    // tested against a TLS gateway in tests/tls.rs.)
    let out = run(&format!(
        "infergate bench --cacert ./no-such-ca.pem --call infergate.v1.Inference/Generate {}",
        server.addr
    ))
    .await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(
        out.stderr.contains("--cacert ./no-such-ca.pem"),
        "{}",
        out.stderr
    );
    let out = run(&format!("infergate bench --skipTLS {}", server.addr)).await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(out.stderr.contains("--skipTLS"), "{}", out.stderr);
    let out = run(&format!("infergate bench -O prometheus {}", server.addr)).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
}
