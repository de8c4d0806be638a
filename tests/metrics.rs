//! The Prometheus metrics, scraped over HTTP from a real server: overlap
//! shows in busy-seconds, gauges are the live state, and every refusal and
//! cancellation is counted. The recorder is process-wide, so each test
//! uses its own model names.

mod common;

use std::time::{Duration, Instant};

use common::{
    Event, TestServer, generate_text, metric, next_event, one_running_one_queued, probe_server,
    request, simulated, spawn_generate, with_timeout,
};
use infergate::config::ServerConfig;
use infergate::proto;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_seconds_prove_the_overlap() {
    let server = TestServer::start_with_metrics(&simulated("m-overlap", 300, 8, 8)).await;
    let client = server.client().await;
    let start = Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|i| spawn_generate(&client, "m-overlap", &format!("c{i}")))
        .collect();
    let mut timings = Vec::new();
    for call in calls {
        let answer = call.await.expect("task").expect("call").into_inner();
        timings.push(answer.timing.expect("timing"));
    }
    let wall = start.elapsed().as_secs_f64();
    let scrape = server.scrape().await;

    let busy = metric(
        &scrape,
        r#"infergate_backend_busy_seconds_total{model="m-overlap"}"#,
    )
    .expect("busy seconds");
    // Eight calls of 300 ms: 2.4 worker-seconds, however busy the machine.
    assert!((2.4..3.2).contains(&busy), "busy seconds {busy}");
    // They ran side by side: none waited for a worker (the server's own
    // figures, so a slow test machine cannot fail this), and so the
    // busy-seconds piled up far faster than the wall clock.
    for timing in &timings {
        assert!(
            timing.queue_wait_us * 2 < timing.backend_us,
            "a call waited on 8 workers: {timings:?}"
        );
    }
    eprintln!("busy {busy:.2} s over {wall:.2} s of wall time");

    let ok = r#"infergate_requests_total{model="m-overlap",method="Generate",code="OK",tenant="anonymous"}"#;
    assert_eq!(metric(&scrape, ok), Some(8.0));
    let count = r#"infergate_queue_wait_seconds_count{model="m-overlap"}"#;
    assert_eq!(metric(&scrape, count), Some(8.0));
    let backend = r#"infergate_backend_duration_seconds_count{model="m-overlap"}"#;
    assert_eq!(metric(&scrape, backend), Some(8.0));
    // Real histograms: bucket lines, with the 300 ms calls above 0.2 s and
    // within 0.5 s.
    let bucket = |le: &str| {
        metric(
            &scrape,
            &format!(
                r#"infergate_request_duration_seconds_bucket{{model="m-overlap",method="Generate",le="{le}"}}"#
            ),
        )
    };
    assert_eq!(bucket("0.2"), Some(0.0), "{scrape}");
    assert_eq!(bucket("0.5"), Some(8.0));
    assert!(
        scrape.contains(r#"infergate_queue_wait_seconds_bucket{model="m-overlap",le="0.0001"}"#)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_generated_tokens_total{model="m-overlap"}"#
        ),
        Some(8.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_exist_at_zero_from_start_up() {
    let server = TestServer::start_with_metrics(&(simulated("m-idle", 0, 3, 5))).await;
    let scrape = server.scrape().await;
    assert_eq!(
        metric(&scrape, r#"infergate_workers{model="m-idle"}"#),
        Some(3.0)
    );
    for series in [
        r#"infergate_workers_busy{model="m-idle"}"#,
        r#"infergate_queue_depth{model="m-idle"}"#,
        r#"infergate_inflight_requests{model="m-idle"}"#,
        r#"infergate_backend_busy_seconds_total{model="m-idle"}"#,
        r#"infergate_backend_panics_total{model="m-idle"}"#,
        r#"infergate_generated_tokens_total{model="m-idle"}"#,
    ] {
        assert_eq!(metric(&scrape, series), Some(0.0), "{series}");
    }
    assert!(scrape.contains("# HELP infergate_queue_depth"));
    assert!(scrape.contains("# TYPE infergate_backend_busy_seconds_total counter"));
    assert!(scrape.contains("# TYPE infergate_request_duration_seconds histogram"));
    assert!(scrape.contains(r#"infergate_build_info{version=""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_gauges_follow_the_pool_and_refusals_are_counted() {
    let (mut server, _factory, mut events) = probe_server(1, 1, ServerConfig::default()).await;
    // The only test of this binary that uses the model name "probe".
    server.start_metrics().await;

    let client = server.client().await;
    let (running, queued) =
        one_running_one_queued(&server, &client, &mut events, "hold 30000", "waits").await;

    let status = client
        .clone()
        .generate(request("probe", "refused"))
        .await
        .expect_err("full");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let scrape = server.scrape().await;
    assert_eq!(
        metric(&scrape, r#"infergate_workers_busy{model="probe"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&scrape, r#"infergate_queue_depth{model="probe"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&scrape, r#"infergate_inflight_requests{model="probe"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_rejected_total{model="probe",reason="queue_full",tenant="anonymous"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_requests_total{model="probe",method="Generate",code="RESOURCE_EXHAUSTED",tenant="anonymous"}"#
        ),
        Some(1.0)
    );
    // The running call's time shows before it ends.
    let busy = metric(
        &scrape,
        r#"infergate_backend_busy_seconds_total{model="probe"}"#,
    )
    .expect("busy");
    assert!(busy > 0.0);

    // Both clients leave: one call was queued, one running.
    queued.abort();
    server.wait_for("probe", |m| m.queued == 0).await;
    running.abort();
    assert_eq!(
        next_event(&mut events).await,
        Event::Ended {
            prompt: "hold 30000".into(),
            cancelled: true
        }
    );
    server.wait_for("probe", |m| m.busy_workers == 0).await;
    let scrape = server.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_cancelled_total{model="probe",stage="queued"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_cancelled_total{model="probe",stage="running"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_requests_total{model="probe",method="Generate",code="CANCELLED",tenant="anonymous"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&scrape, r#"infergate_inflight_requests{model="probe"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric(&scrape, r#"infergate_workers_busy{model="probe"}"#),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_panics_streams_and_unknown_models_are_counted() {
    let config = simulated("m-slow", 5_000, 1, 2)
        + &simulated("m-stream", 10, 1, 2)
            .replace("latency_ms = 10", "latency_ms = 10\ntoken_latency_ms = 5");
    let server = TestServer::start_with_metrics(&config).await;
    let mut client = server.client().await;

    let status = client
        .generate(with_timeout(
            request("m-slow", "x"),
            Duration::from_millis(200),
        ))
        .await
        .expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded);

    let req = proto::GenerateRequest {
        max_tokens: 4,
        ..request("m-stream", "a b")
    };
    let mut stream = client
        .generate_stream(req)
        .await
        .expect("stream")
        .into_inner();
    while let Some(message) = stream.next().await {
        message.expect("message");
    }

    let status = client
        .generate(request("m-nowhere", "x"))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .generate(request("m-stream", ""))
        .await
        .expect_err("no input");
    assert_eq!(status.code(), Code::InvalidArgument);

    let scrape = server.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_rejected_total{model="m-slow",reason="deadline",tenant="anonymous"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_requests_total{model="m-slow",method="Generate",code="DEADLINE_EXCEEDED",tenant="anonymous"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_time_to_first_token_seconds_count{model="m-stream"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_requests_total{model="m-stream",method="GenerateStream",code="OK",tenant="anonymous"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_generated_tokens_total{model="m-stream"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_rejected_total{model="m-stream",reason="invalid_argument",tenant="anonymous"}"#
        ),
        Some(1.0)
    );
    // Unknown names share one label value: clients cannot grow the label set.
    assert!(
        metric(
            &scrape,
            r#"infergate_rejected_total{model="(unknown)",reason="not_found",tenant="anonymous"}"#
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(!scrape.contains("m-nowhere"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_counted() {
    // A probe backend under its own name ("probe" is taken above).
    let (factory, mut events) = common::ProbeFactory::new();
    let model =
        infergate::config::ModelConfig::new("m-panic", infergate::config::BackendKind::Simulated);
    let gateway = infergate::gateway::Gateway::builder()
        .model(model, factory)
        .build()
        .expect("pool");
    let mut server = TestServer::start_gateway(gateway, ServerConfig::default()).await;
    server.start_metrics().await;

    let status = server
        .client()
        .await
        .generate(request("m-panic", "panic"))
        .await
        .expect_err("panic");
    assert_eq!(status.code(), Code::Internal);
    next_event(&mut events).await;
    let scrape = server.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_backend_panics_total{model="m-panic"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            r#"infergate_requests_total{model="m-panic",method="Generate",code="INTERNAL",tenant="anonymous"}"#
        ),
        Some(1.0)
    );
}

/// The metric names an expression queries (`infergate_...`), each with
/// the label matchers that follow it (`None` when none do).
fn selectors(expr: &str) -> Vec<(&str, Option<&str>)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("infergate_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let (name, after) = tail.split_at(len);
        let matchers = after
            .strip_prefix('{')
            .and_then(|m| m.split_once('}'))
            .map(|(m, _)| m);
        found.push((name, matchers));
        rest = after;
    }
    found
}

/// The range selectors (`[...]`) of an expression.
fn ranges(expr: &str) -> Vec<&str> {
    expr.split('[')
        .skip(1)
        .map(|r| r.split(']').next().unwrap_or(r))
        .collect()
}

#[test]
fn dashboard_selectors_and_ranges_are_found() {
    let expr =
        r#"sum(rate(infergate_a_total{job=~"$job"}[$__rate_interval])) / infergate_b or vector(0)"#;
    assert_eq!(
        selectors(expr),
        vec![
            ("infergate_a_total", Some(r#"job=~"$job""#)),
            ("infergate_b", None)
        ]
    );
    assert_eq!(ranges(expr), vec!["$__rate_interval"]);
    assert_eq!(ranges("rate(x[5m]) + rate(y[1m])"), vec!["5m", "1m"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_importable_and_queries_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/infergate.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard"))
            .expect("valid JSON");
    // Import asks for the data source (`__inputs`); every panel, query and
    // query variable uses it. A data source variable of the same name
    // stands in when the file is provisioned rather than imported.
    let datasource = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let requires = dashboard["__requires"].as_array().expect("__requires");
    for (kind, id) in [
        ("grafana", "grafana"),
        ("datasource", "prometheus"),
        ("panel", "timeseries"),
        ("panel", "stat"),
    ] {
        assert!(
            requires.iter().any(|r| r["type"] == kind && r["id"] == id),
            "__requires lacks {kind} {id}"
        );
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).expect(name);
    assert_eq!(variable("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(variable("DS_PROMETHEUS")["query"], "prometheus");
    // job, then instance filtered by job, then model filtered by both: one
    // replica at a time, or All of them (".*").
    assert_eq!(
        variable("job")["query"]["query"],
        "label_values(infergate_build_info, job)"
    );
    assert_eq!(
        variable("instance")["query"]["query"],
        r#"label_values(infergate_build_info{job=~"$job"}, instance)"#
    );
    assert_eq!(
        variable("model")["query"]["query"],
        r#"label_values(infergate_workers{job=~"$job",instance=~"$instance"}, model)"#
    );
    let position = |name: &str| variables.iter().position(|v| v["name"] == name);
    assert!(position("job") < position("instance") && position("instance") < position("model"));
    for name in ["job", "instance", "model"] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"], datasource, "{name}");
        assert_eq!(v["definition"], v["query"]["query"], "{name}");
        assert_eq!(v["includeAll"], true, "{name}");
        assert_eq!(v["multi"], true, "{name}");
        assert_eq!(v["allValue"], ".*", "{name}");
    }

    // m-dash-cache has a response cache (its series exist from start-up);
    // m-dash-primary (one worker, no queue) passes calls on to it;
    // m-dash-crash's worker exits once (a restart); m-dash-openai has two
    // upstreams (their series).
    let upstream = common::openai::FakeOpenAi::start().await;
    let config = simulated("m-dash", 200, 1, 1)
        + &simulated("m-dash-primary", 200, 1, 0).replace(
            "queue_capacity = 0\n",
            "queue_capacity = 0\nfallbacks = [\"m-dash-cache\"]\n",
        )
        + &simulated("m-dash-cache", 1, 1, 4)
        + "[models.cache]\nmax_entries = 16\n"
        + &common::python_probe("m-dash-crash", 1, "")
        + &common::openai::openai_model(
            "m-dash-openai",
            &[(upstream.url(), "a"), (upstream.url(), "b")],
        );
    let server = TestServer::start_with_metrics(&config).await;
    // Make the outcome-labelled series exist (a success, a rejection, a
    // cancellation, a fallback, a restart, upstream requests), then read
    // every exported name.
    let client = server.client().await;
    generate_text(&client, "m-dash", "x").await.expect("call");
    let holder = spawn_generate(&client, "m-dash-primary", "holds the worker");
    server
        .wait_for("m-dash-primary", |m| m.busy_workers == 1)
        .await;
    generate_text(&client, "m-dash-primary", "passed on")
        .await
        .expect("served by the fallback");
    holder.await.expect("task").expect("holder");
    generate_text(&client, "m-dash", "")
        .await
        .expect_err("rejected");
    generate_text(&client, "m-dash-crash", "crash")
        .await
        .expect_err("crashed");
    generate_text(&client, "m-dash-openai", "hello")
        .await
        .expect("through an upstream");
    let leaver = spawn_generate(&client, "m-dash", "leaves");
    server.wait_for("m-dash", |m| m.busy_workers == 1).await;
    leaver.abort();
    let give_up = Instant::now() + Duration::from_secs(10);
    while !server.scrape().await.contains("infergate_cancelled_total{") {
        assert!(Instant::now() < give_up, "no cancellation counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scrape = server.scrape().await;
    let exported: std::collections::HashSet<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut exprs = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("title");
        assert_eq!(panel["datasource"], datasource, "{title}");
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"], datasource, "{title}");
            let expr = target["expr"].as_str().expect("expr");
            exprs.push((title, expr));
            // Grafana's $__rate_interval (at least four scrapes), never a
            // fixed range that holds under two samples at a slow scrape.
            for range in ranges(expr) {
                assert_eq!(
                    range, "$__rate_interval",
                    "panel {title} has a fixed range: {expr}"
                );
            }
            let queried = selectors(expr);
            assert!(!queried.is_empty(), "panel {title} queries nothing: {expr}");
            for (name, matchers) in queried {
                // Every series selector is narrowed to the chosen job and
                // instance, so replicas are summed only when asked.
                let matchers = matchers.unwrap_or_default();
                assert!(
                    matchers.contains(r#"job=~"$job""#)
                        && matchers.contains(r#"instance=~"$instance""#),
                    "panel {title}: {name} lacks the job and instance selectors: {expr}"
                );
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|f| exported.contains(f)))
                    .unwrap_or(name);
                assert!(
                    exported.contains(family),
                    "panel {title} queries {name}, which is not exported"
                );
            }
        }
    }
    // The panels for readiness, restarts and the upstreams.
    let has = |title: &str, needle: &str| {
        exprs
            .iter()
            .any(|(t, e)| t.contains(title) && e.contains(needle))
    };
    assert!(has("Ready workers", "infergate_workers_ready{"));
    assert!(has(
        "Worker restarts",
        "sum by (model, reason) (rate(infergate_worker_restarts_total{"
    ));
    assert!(has("Upstreams up", "infergate_upstream_up{"));
    assert!(has("in flight", "infergate_upstream_inflight{"));
    assert!(has(
        "Upstream requests/s",
        "sum by (model, upstream, code) (rate(infergate_upstream_requests_total{"
    ));
    // The error ratio is 0, not empty, when nothing failed (checked
    // against Prometheus in tests/prometheus_interop.rs).
    assert!(has("Error ratio", "* 0) / clamp_min("));
}
