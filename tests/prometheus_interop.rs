//! Against the real thing: the scrape passes `promtool check metrics`, and a
//! real Prometheus server scraping the gateway every second answers every
//! PromQL expression of `dashboards/infergate.json` with data, with its
//! variables (`$__rate_interval`, `$job`, `$instance`, `$model`) at "All"
//! and at one job and instance, and with none for another job or
//! instance; the variables' own queries answer as Grafana needs them; the
//! error ratio is 0, not empty, for a model whose calls all succeeded.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on the
//! PATH): ignored by plain `cargo test`, run by `.ci/run` with `--ignored`.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, http_get, request, simulated, spawn_generate, with_timeout};
use infergate::proto;
use serde_json::Value;
use tokio_stream::StreamExt;

/// Grafana's variables, as the test substitutes them: `$__rate_interval`
/// as Grafana makes it for this scrape interval (at least four scrapes),
/// and the others as "All" (`.*`) or as one chosen value.
fn grafana_variables<'a>(
    job: &'a str,
    instance: &'a str,
    model: &'a str,
) -> [(&'static str, &'a str); 4] {
    [
        ("$__rate_interval", "1m"),
        ("$job", job),
        ("$instance", instance),
        ("$model", model),
    ]
}

/// `expr` with these variables' values.
fn substitute(expr: &str, variables: &[(&str, &str)]) -> String {
    let mut expr = expr.to_string();
    for (variable, value) in variables {
        expr = expr.replace(variable, value);
    }
    expr
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

async fn start_prometheus(target: SocketAddr) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("infergate-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: infergate\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("write config");
    let addr = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start prometheus (install Debian's prometheus package)");
    let prometheus = Prometheus {
        child,
        addr,
        _dir: TempDir(dir),
    };
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/-/ready").await.0 == 200
        {
            return prometheus;
        }
        assert!(Instant::now() < give_up, "prometheus did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs an instant query; returns the result vector.
async fn query(prometheus: SocketAddr, expr: &str) -> Vec<Value> {
    let (status, body) =
        http_get(prometheus, &format!("/api/v1/query?query={}", encode(expr))).await;
    assert_eq!(status, 200, "{expr}: {body}");
    let json: Value = serde_json::from_str(&body).expect("JSON from Prometheus");
    assert_eq!(json["status"], "success", "{expr}: {body}");
    json["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn finite(sample: &Value) -> bool {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/infergate.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON")
}

/// Every `expr` of every panel of the dashboard, by panel title, with its
/// variables as they are in the file.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard()["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr").to_string();
            queries.push((panel["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    queries
}

/// The query of a query variable, e.g. `label_values(metric{...}, label)`,
/// as `(label, match[] selector)`.
fn variable_query(name: &str) -> (String, String) {
    let dashboard = dashboard();
    let variable = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .find(|v| v["name"] == name)
        .expect(name)
        .clone();
    let query = variable["query"]["query"].as_str().expect("query");
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .expect("label_values(...)");
    let (selector, label) = inner.rsplit_once(',').expect("two arguments");
    (label.trim().to_string(), selector.trim().to_string())
}

/// The values of a variable, as Grafana asks Prometheus for them (the
/// label values API), with the variables it depends on substituted.
async fn variable_values(
    prometheus: SocketAddr,
    name: &str,
    variables: &[(&str, &str)],
) -> Vec<String> {
    let (label, selector) = variable_query(name);
    let selector = substitute(&selector, variables);
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/label/{label}/values?match[]={}", encode(&selector)),
    )
    .await;
    assert_eq!(status, 200, "{name}: {body}");
    let json: Value = serde_json::from_str(&body).expect("JSON from Prometheus");
    json["data"]
        .as_array()
        .expect("values")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The single value of an instant query's one sample.
fn only_value(result: &[Value]) -> Option<f64> {
    match result {
        [sample] => sample["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// A greedy (temperature 0, so cacheable) prompt request.
fn greedy(model: &str, prompt: &str) -> proto::GenerateRequest {
    proto::GenerateRequest {
        temperature: Some(0.0),
        ..request(model, prompt)
    }
}

/// Traffic that gives every panel something to show: successes, streams,
/// a full queue, deadlines, cancellations, unknown models, cache hits,
/// misses and coalesced calls, fallbacks, a worker restart, upstream
/// requests.
async fn drive_traffic(server: &TestServer, rounds: usize) {
    let client = server.client().await;
    for round in 0..rounds {
        // A worker restart: the process worker exits during the call, and
        // is replaced (the second call waits for it).
        client
            .clone()
            .generate(request("interop-crash", "crash"))
            .await
            .expect_err("the worker exits");
        client
            .clone()
            .generate(request("interop-crash", "back"))
            .await
            .expect("a new worker");
        // The OpenAI backend's upstreams (two names, one fake server).
        client
            .clone()
            .generate(request("interop-openai", &format!("r{round}")))
            .await
            .expect("through an upstream");
        // The cache: a hit (a miss the first time), and two identical calls
        // at once (a miss and, most often, a coalesced call).
        client
            .clone()
            .generate(greedy("interop-cache", "the same question"))
            .await
            .expect("cached model");
        let (mut first, mut second) = (client.clone(), client.clone());
        let together = format!("r{round} together");
        let (a, b) = tokio::join!(
            first.generate(greedy("interop-cache", &together)),
            second.generate(greedy("interop-cache", &together)),
        );
        a.expect("first of two");
        b.expect("second of two");
        // A fallback: interop-primary's one worker is busy and it has no
        // queue, so the call goes to interop-cache.
        let holder = spawn_generate(&client, "interop-primary", "holds the worker");
        server
            .wait_for("interop-primary", |m| m.busy_workers == 1)
            .await;
        let answer = client
            .clone()
            .generate(greedy("interop-primary", "passed on"))
            .await
            .expect("served by the fallback")
            .into_inner();
        assert_eq!(answer.model, "interop-cache");
        let burst: Vec<_> = (0..6)
            .map(|i| spawn_generate(&client, "interop", &format!("r{round} c{i} words")))
            .collect();
        let mut stream = client
            .clone()
            .generate_stream(proto::GenerateRequest {
                max_tokens: 5,
                ..request("interop-stream", "a b c")
            })
            .await
            .expect("stream")
            .into_inner();
        while let Some(message) = stream.next().await {
            message.expect("stream message");
        }
        let _ = client
            .clone()
            .generate(with_timeout(
                request("interop-slow", "late"),
                Duration::from_millis(100),
            ))
            .await;
        let leaver = spawn_generate(&client, "interop-slow", "leaves");
        let _ = client.clone().generate(request("nowhere", "x")).await;
        for call in burst {
            // Some are refused: the queue holds 1 behind 4 workers.
            let _ = call.await.expect("task");
        }
        holder.await.expect("task").expect("holder");
        leaver.abort();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until Prometheus holds `n` scrapes of the gateway.
async fn wait_for_scrapes(prometheus: SocketAddr, n: usize) {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(prometheus, r#"count_over_time(up{job="infergate"}[5m])"#).await;
        let scrapes = up
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok());
        if scrapes.is_some_and(|count| count >= n as f64) {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "Prometheus did not scrape the gateway: {up:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's prometheus package; run by .ci/run"]
async fn promtool_accepts_the_scrape_and_every_dashboard_query_returns_data() {
    let upstream = common::openai::FakeOpenAi::start().await;
    let config = simulated("interop", 50, 4, 1)
        + &simulated("interop-slow", 2_000, 1, 4)
        + &simulated("interop-stream", 10, 2, 4)
            .replace("latency_ms = 10", "latency_ms = 10\ntoken_latency_ms = 5")
        + &simulated("interop-primary", 200, 1, 0).replace(
            "queue_capacity = 0\n",
            "queue_capacity = 0\nfallbacks = [\"interop-cache\"]\n",
        )
        + &simulated("interop-cache", 20, 2, 4)
        + "[models.cache]\nmax_entries = 64\n"
        + &common::python_probe("interop-crash", 1, "")
        + &common::openai::openai_model(
            "interop-openai",
            &[(upstream.url(), "a"), (upstream.url(), "b")],
        );
    let server = TestServer::start_with_metrics(&config).await;
    let metrics_addr = server.metrics_addr.expect("metrics");

    // promtool lints the exposition: names, HELP, types, suffixes.
    drive_traffic(&server, 1).await;
    let scrape = server.scrape().await;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (install Debian's prometheus package)");
    {
        use std::io::Write;
        promtool
            .stdin
            .take()
            .expect("stdin")
            .write_all(scrape.as_bytes())
            .expect("feed promtool");
    }
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let prometheus = start_prometheus(metrics_addr).await;
    // Prometheus discovers its target a few seconds after it is ready:
    // drive traffic once it is scraping, so rate() sees the counters move.
    wait_for_scrapes(prometheus.addr, 2).await;
    drive_traffic(&server, 8).await;
    // Wait until Prometheus has scraped the final counts.
    let ok = r#"infergate_requests_total{model="interop",method="Generate",code="OK",tenant="anonymous"}"#;
    let last = common::metric(&server.scrape().await, ok).expect("OK count");
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = query(prometheus.addr, ok).await;
        if seen
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            == Some(last)
        {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "Prometheus never saw {ok} = {last}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The variables' queries, as Grafana runs them: job, then instance
    // (filtered by job), then model (filtered by both).
    let instance = metrics_addr.to_string();
    let jobs = variable_values(prometheus.addr, "job", &[]).await;
    assert_eq!(jobs, ["infergate"]);
    let instances = variable_values(prometheus.addr, "instance", &[("$job", "infergate")]).await;
    assert_eq!(instances, std::slice::from_ref(&instance));
    let none = variable_values(prometheus.addr, "instance", &[("$job", "elsewhere")]).await;
    assert!(none.is_empty(), "{none:?}");
    let models = variable_values(
        prometheus.addr,
        "model",
        &[("$job", "infergate"), ("$instance", &instance)],
    )
    .await;
    for model in ["interop-stream", "interop-crash", "interop-openai"] {
        assert!(models.iter().any(|m| m == model), "{model}: {models:?}");
    }

    // Every query, with every variable at "All", then with one job and
    // instance chosen: each returns data.
    let mut empty = Vec::new();
    let queries = dashboard_queries();
    assert!(queries.len() >= 25, "the dashboard lost its panels");
    let all = grafana_variables(".*", ".*", ".*");
    let chosen = grafana_variables("infergate", &instance, ".*");
    for variables in [&all, &chosen] {
        for (panel, expr) in &queries {
            let expr = substitute(expr, variables);
            assert!(!expr.contains('$'), "a variable left: {expr}");
            let result = query(prometheus.addr, &expr).await;
            if !result.iter().any(finite) {
                empty.push(format!("{panel}: {expr} -> {result:?}"));
            }
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    // Another job or instance: no data (the selectors narrow every query).
    for variables in [
        grafana_variables("elsewhere", ".*", ".*"),
        grafana_variables(".*", "127.0.0.1:1", ".*"),
    ] {
        for (panel, expr) in &queries {
            let expr = substitute(expr, &variables);
            let result = query(prometheus.addr, &expr).await;
            // `... or vector(0)` is all a query may have then.
            assert!(
                result
                    .iter()
                    .all(|s| s["metric"].as_object().is_some_and(|m| m.is_empty())
                        && s["value"][1] == "0"),
                "{panel}: {expr} -> {result:?}"
            );
        }
    }

    // The error ratio: 0, not empty, for a model whose calls all succeeded;
    // above 0 for one whose calls failed (deadlines).
    let (_, ratio) = queries
        .iter()
        .find(|(panel, _)| panel == "Error ratio")
        .expect("the error ratio panel");
    for model in ["interop-stream", "interop-openai"] {
        let expr = substitute(ratio, &grafana_variables("infergate", &instance, model));
        let result = query(prometheus.addr, &expr).await;
        assert_eq!(only_value(&result), Some(0.0), "{expr} -> {result:?}");
        assert_eq!(result[0]["metric"]["model"], model);
    }
    let expr = substitute(
        ratio,
        &grafana_variables("infergate", &instance, "interop-slow"),
    );
    let result = query(prometheus.addr, &expr).await;
    assert!(
        only_value(&result).is_some_and(|r| r > 0.0 && r <= 1.0),
        "{expr} -> {result:?}"
    );
    eprintln!(
        "{} dashboard queries answered with data, twice",
        queries.len()
    );
}
