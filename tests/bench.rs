//! `infergate bench` against a real server: ghz's report fields, the
//! overlap, closed and open loops, and clear errors for bad flags.

mod common;

use std::time::Duration;

use clap::Parser;
use common::{TestServer, simulated};
use infergate::cli::{Cli, Command};
use serde_json::Value;

/// Parses a bench command line as the binary would.
fn args(line: &str) -> infergate::bench::BenchArgs {
    let argv = std::iter::once("infergate").chain(shell_words(line));
    match Cli::try_parse_from(argv).expect("valid flags").command {
        Command::Bench(args) => args,
        other => panic!("not a bench command: {other:?}"),
    }
}

/// Splits on spaces, keeping 'quoted' parts whole.
fn shell_words(line: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('\'') {
            let end = quoted.find('\'').expect("closing quote");
            words.push(&quoted[..end]);
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    words
}

async fn json_report(line: &str) -> Value {
    let text = infergate::bench::bench(&args(line))
        .await
        .expect("bench runs");
    serde_json::from_str(&text).expect("a JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_has_ghz_fields_and_the_overlap() {
    let server = TestServer::start(&simulated("b-wide", 100, 8, 64)).await;
    let report = json_report(&format!(
        "bench {} -d '{{\"model\":\"b-wide\",\"prompt\":\"a b\"}}' -c 8 -n 16 --format json --name t1",
        server.addr
    ))
    .await;
    assert_eq!(report["name"], "t1");
    assert_eq!(report["endReason"], "normal");
    assert_eq!(report["count"], 16);
    assert_eq!(report["statusCodeDistribution"]["OK"], 16);
    assert_eq!(report["options"]["concurrency"], 8);
    // Durations are integer nanoseconds: 16 calls of 100 ms, 8 at a time.
    let total = report["total"].as_u64().expect("total in ns");
    assert!((200_000_000..900_000_000).contains(&total), "total {total}");
    assert!(report["fastest"].as_u64().expect("ns") >= 100_000_000);
    let distribution = report["latencyDistribution"]
        .as_array()
        .expect("distribution");
    let percentages: Vec<u64> = distribution
        .iter()
        .map(|p| p["percentage"].as_u64().expect("%"))
        .collect();
    assert_eq!(percentages, [10, 25, 50, 75, 90, 95, 99]);
    let histogram: u64 = report["histogram"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|b| b["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(histogram, 16);
    assert_eq!(report["details"].as_array().expect("details").len(), 16);
    assert!(
        report["details"][0]["timestamp"]
            .as_str()
            .expect("timestamp")
            .ends_with('Z')
    );
    // 1.6 s of backend time over about 0.2 s: about 8 calls at once.
    let overlap = report["infergate"]["overlap"].as_f64().expect("overlap");
    assert!(overlap > 4.0, "overlap {overlap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_code_and_message() {
    let server = TestServer::start(&simulated("b-narrow", 300, 1, 1)).await;
    let report = json_report(&format!(
        "bench {} -d '{{\"model\":\"b-narrow\",\"prompt\":\"x\"}}' -c 6 -n 6 --format json",
        server.addr
    ))
    .await;
    let codes = &report["statusCodeDistribution"];
    // One runs, one waits, the rest find the queue full.
    assert_eq!(codes["OK"], 2, "{codes}");
    assert_eq!(codes["ResourceExhausted"], 4, "{codes}");
    let errors = report["errorDistribution"].as_object().expect("errors");
    // Grouped by what happened: the request id is cut off.
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors.keys().all(|e| e.starts_with(
            "rpc error: code = ResourceExhausted desc = RESOURCE_EXHAUSTED (model \"b-narrow\""
        ) && !e.contains("[request")),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_keeps_its_schedule_and_an_array_is_used_in_turn() {
    let server =
        TestServer::start(&(simulated("b-a", 20, 16, 64) + &simulated("b-b", 20, 16, 64))).await;
    let report = json_report(&format!(
        "bench {} -d '[{{\"model\":\"b-a\",\"prompt\":\"x\"}},{{\"model\":\"nope\",\"prompt\":\"x\"}}]' --rps 100 -z 1s --format json",
        server.addr
    ))
    .await;
    assert_eq!(report["endReason"], "timeout");
    let count = report["count"].as_u64().expect("count");
    assert!((90..=101).contains(&count), "100 rps for 1 s sent {count}");
    // Every other request names an unknown model.
    let not_found = report["statusCodeDistribution"]["NotFound"]
        .as_u64()
        .expect("NotFound");
    assert!(not_found.abs_diff(count / 2) <= 1, "{not_found} of {count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_reads_like_ghz_and_streams_work() {
    let server = TestServer::start(
        &simulated("b-s", 10, 4, 64)
            .replace("latency_ms = 10", "latency_ms = 10\ntoken_latency_ms = 2"),
    )
    .await;
    let text = infergate::bench::bench(&args(&format!(
        "bench {} --call infergate.v1.Inference.GenerateStream -d '{{\"model\":\"b-s\",\"prompt\":\"a b c\",\"max_tokens\":5}}' -c 4 -n 8 -t 5s -m '{{\"x-test\":\"1\"}}'",
        server.addr
    )))
    .await
    .expect("bench runs");
    for heading in [
        "Summary:",
        "Count:\t8",
        "Requests/sec:",
        "Response time histogram:",
        "Latency distribution:",
        "99 % in",
        "Status code distribution:",
        "[OK]\t8 responses",
        "Overlap",
    ] {
        assert!(text.contains(heading), "missing {heading:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_and_targets_are_clear_errors() {
    let server = TestServer::start(&simulated("b-e", 0, 1, 1)).await;
    let error = infergate::bench::bench(&args(&format!(
        "bench {} -d '{{\"modle\":\"x\"}}'",
        server.addr
    )))
    .await
    .expect_err("bad data");
    assert!(error.contains("modle"), "{error}");
    let error = infergate::bench::bench(&args(&format!(
        "bench {} --call helloworld.Greeter/SayHello",
        server.addr
    )))
    .await
    .expect_err("bad call");
    assert!(error.contains("helloworld.Greeter/SayHello"), "{error}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        infergate::bench::bench(&args(&format!("bench {closed}"))),
    )
    .await
    .expect("fails fast")
    .expect_err("nothing listens");
    assert!(error.contains("cannot connect"), "{error}");
}
