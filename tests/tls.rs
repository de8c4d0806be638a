//! TLS and mTLS on the gRPC listener (`[server.tls]`), against a server
//! started through the library, and through the binary where a signal or
//! `/metrics` is involved: TLS and wrong-CA clients, mTLS required, the
//! answer a plain-text client gets, reloads (on change and on SIGHUP), a
//! silent connection that must not hold up others, and bad files.
//!
//! The grpcurl and Python grpcio tests need those programs: `.ci/run` sets
//! INFERGATE_GRPCURL and INFERGATE_PYTHON; they are ignored by plain
//! `cargo test`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use common::binary::{BinaryServer, bin, listen_anywhere};
use infergate::proto::ListModelsRequest;
use infergate::proto::inference_client::InferenceClient;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const PLAINTEXT_MESSAGE: &str =
    "this listener requires TLS; connect with TLS (grpcurl: -cacert instead of -plaintext)";

/// A CA and the certificates it signs, written as PEM files in a directory
/// of the test's own (removed on drop).
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, ca_name: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("test dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = name(ca_name);
        let key = KeyPair::generate().expect("CA key");
        let ca_pem = params.self_signed(&key).expect("CA cert").pem();
        std::fs::write(dir.join(format!("{ca_name}.pem")), &ca_pem).expect("write CA");
        Pki {
            dir: dir.to_path_buf(),
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 named `common_name`,
    /// written as `{file}.pem` and `{file}.key`.
    fn leaf(&self, common_name: &str, file: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        params.distinguished_name = name(common_name);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign").pem();
        let key = key.serialize_pem();
        std::fs::write(self.dir.join(format!("{file}.pem")), &cert).expect("write cert");
        std::fs::write(self.dir.join(format!("{file}.key")), &key).expect("write key");
        (cert, key)
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "infergate tests");
    name.push(DnType::CommonName, common_name);
    name
}

fn test_dir(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("infergate-tls-it-{test}-{}", std::process::id()))
}

/// `[server.tls]` with the server certificate, and `extra` lines.
fn tls_table(pki: &Pki, extra: &str) -> String {
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n{}",
        pki.path("server.pem"),
        pki.path("server.key"),
        common::simulated("m", 0, 2, 8)
    )
}

/// A TLS channel to `addr` trusting `ca_pem`, with a client certificate
/// if given; the connection error if it cannot connect.
async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn list_models(channel: Channel) -> Result<usize, tonic::Status> {
    let reply = InferenceClient::new(channel)
        .list_models(ListModelsRequest::default())
        .await?;
    Ok(reply.into_inner().models.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_is_served_and_a_client_trusting_another_ca_is_not() {
    let pki = Pki::new(&test_dir("basic"), "ca");
    pki.leaf("server", "server");
    let other = Pki::new(&test_dir("basic-other"), "other-ca");
    let server = TestServer::start(&tls_table(&pki, "")).await;

    let channel = tls_channel(server.addr, &pki.ca_pem, None)
        .await
        .expect("TLS connect");
    assert_eq!(list_models(channel).await.expect("ListModels"), 1);

    let refused = tls_channel(server.addr, &other.ca_pem, None).await;
    assert!(refused.is_err(), "a client trusting another CA connected");
    let _ = std::fs::remove_dir_all(&pki.dir);
    let _ = std::fs::remove_dir_all(&other.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_refuses_a_client_without_a_certificate_and_names_the_tenant() {
    let pki = Pki::new(&test_dir("mtls"), "ca");
    pki.leaf("server", "server");
    let alice = pki.leaf("alice", "alice");
    let extra = format!("client_ca = \"{}\"", pki.path("ca.pem"));
    let server = TestServer::start_with_metrics(&tls_table(&pki, &extra)).await;

    // TLS 1.3: the client may finish its side of the handshake before the
    // server refuses it, so the refusal can come with the first call.
    match tls_channel(server.addr, &pki.ca_pem, None).await {
        Err(_) => {}
        Ok(channel) => {
            // How the client reads the server's refusal varies with the
            // race (UNAVAILABLE, CANCELLED, or UNKNOWN for a broken pipe);
            // what matters is that the call is not served.
            let refused = list_models(channel).await;
            assert!(refused.is_err(), "served without a cert: {refused:?}");
        }
    }
    let channel = tls_channel(server.addr, &pki.ca_pem, Some(alice))
        .await
        .expect("mTLS connect");
    assert_eq!(list_models(channel.clone()).await.expect("ListModels"), 1);
    // Without API keys, the certificate's common name is the tenant.
    InferenceClient::new(channel)
        .generate(common::request("m", "hello"))
        .await
        .expect("Generate over mTLS");
    let series =
        r#"infergate_requests_total{model="m",method="Generate",code="OK",tenant="alice"}"#;
    assert_eq!(common::metric(&server.scrape().await, series), Some(1.0));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_told_to_use_tls() {
    let pki = Pki::new(&test_dir("plain"), "ca");
    pki.leaf("server", "server");
    let server = TestServer::start(&tls_table(&pki, "")).await;
    let status = list_models(server.channel().await)
        .await
        .expect_err("plain text served");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), PLAINTEXT_MESSAGE);
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_holds_up_no_handshake_and_is_closed_in_time() {
    let pki = Pki::new(&test_dir("silent"), "ca");
    pki.leaf("server", "server");
    let server = TestServer::start(&tls_table(&pki, "handshake_timeout_ms = 500")).await;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let channel = tokio::time::timeout(
        Duration::from_secs(5),
        tls_channel(server.addr, &pki.ca_pem, None),
    )
    .await
    .expect("a handshake beside a silent connection")
    .expect("TLS connect");
    assert_eq!(list_models(channel).await.expect("ListModels"), 1);
    // The silent one is closed at its handshake deadline.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte))
        .await
        .expect("closed within 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// The series of a reload result in this process's recorder.
fn reloads(result: &str) -> f64 {
    let scrape = infergate::metrics::recorder().render();
    common::metric(
        &scrape,
        &format!("infergate_tls_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Polls `done` every 50 ms for up to 15 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, done: impl Fn() -> F) {
    let give_up = Instant::now() + Duration::from_secs(15);
    while !done().await {
        assert!(Instant::now() < give_up, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_served_to_new_connections_without_a_restart() {
    let pki = Pki::new(&test_dir("reload"), "ca");
    pki.leaf("server", "server");
    let server = TestServer::start(&tls_table(&pki, "reload_interval_ms = 100")).await;
    let old = tls_channel(server.addr, &pki.ca_pem, None)
        .await
        .expect("TLS connect");
    assert_eq!(list_models(old.clone()).await.expect("ListModels"), 1);

    // A new CA's certificate in the same files.
    let next = Pki::new(&pki.dir, "next-ca");
    next.leaf("server", "server");
    eventually("a new connection trusting the new CA", || async {
        tls_channel(server.addr, &next.ca_pem, None).await.is_ok()
    })
    .await;
    assert!(reloads("ok") >= 1.0);
    // The connection made before keeps working.
    assert_eq!(list_models(old).await.expect("old connection"), 1);

    // A broken file: counted, logged, and the certificate in use stays.
    let errors = reloads("error");
    std::fs::write(pki.dir.join("server.pem"), "not PEM").expect("write");
    eventually("the failed reload counted", || async {
        reloads("error") > errors
    })
    .await;
    let channel = tls_channel(server.addr, &next.ca_pem, None)
        .await
        .expect("still the new certificate");
    assert_eq!(list_models(channel).await.expect("ListModels"), 1);
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// A raw TLS connection to `addr` (no ALPN), trusting `ca_pem`.
async fn tls_connect(
    addr: &str,
    ca_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_without_calls_is_closed_like_a_plain_one() {
    let pki = Pki::new(&test_dir("idle"), "ca");
    pki.leaf("server", "server");
    let config = format!(
        "[server]\nfirst_call_timeout_seconds = 1\n{}",
        tls_table(&pki, "")
    );
    let server = TestServer::start(&config).await;
    let mut tls = tls_connect(&server.addr.to_string(), &pki.ca_pem).await;
    let started = Instant::now();
    // The server's HTTP/2 SETTINGS may come first; then the end.
    let mut sent = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut sent))
        .await
        .expect("closed within 10 s");
    assert!(started.elapsed() >= Duration::from_millis(800));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// A TLS client of `/metrics`: the response to a GET, as text.
async fn get_metrics_tls(addr: &str, ca_pem: &str) -> String {
    let mut tls = tls_connect(addr, ca_pem).await;
    tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut response = Vec::new();
    // The end may come without a close_notify; what was read is enough.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_serves_metrics_over_tls() {
    let pki = Pki::new(&test_dir("sighup"), "ca");
    pki.leaf("server", "server");
    let config = format!(
        "{}{}",
        listen_anywhere(),
        tls_table(&pki, "reload_interval_ms = 0\nmetrics = true")
    );
    let server = BinaryServer::start("tls-sighup", &config).await;
    let addr = server.socket_addr();
    let scrape = get_metrics_tls(&server.metrics_addr, &pki.ca_pem).await;
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(scrape.contains("infergate_tls_reloads_total"), "{scrape}");

    // Polling is off: only SIGHUP reloads.
    let next = Pki::new(&pki.dir, "next-ca");
    next.leaf("server", "server");
    assert!(tls_channel(addr, &next.ca_pem, None).await.is_err());
    let pid = libc::pid_t::try_from(server.child.id()).expect("a pid");
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0, "kill -HUP");
    eventually("the new certificate after SIGHUP", || async {
        tls_channel(addr, &next.ca_pem, None).await.is_ok()
    })
    .await;
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("TLS files reloaded") && l.contains("sighup")),
        "{:?}",
        server.log_lines()
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[test]
fn bad_files_are_reported_by_check_config_and_serve() {
    let pki = Pki::new(&test_dir("bad"), "ca");
    pki.leaf("server", "server");
    pki.leaf("other", "other");
    let run = |args: &[&str]| {
        let output = Command::new(bin()).args(args).output().expect("run");
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), text)
    };
    let config = |cert: &str, key: &str| {
        let path = pki.dir.join("gateway.toml");
        let text = format!(
            "{}[server.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n{}",
            listen_anywhere(),
            common::simulated("m", 0, 1, 1)
        );
        std::fs::write(&path, text).expect("write config");
        path.display().to_string()
    };
    // Relative names resolve against the config file's directory.
    let good = config("server.pem", "server.key");
    let (code, text) = run(&["check-config", &good]);
    assert_eq!(code, Some(0), "{text}");

    let missing = config("server.pem", "missing.key");
    let (code, text) = run(&["check-config", &missing]);
    assert_eq!(code, Some(78), "{text}");
    let file = pki.path("missing.key");
    assert!(
        text.contains(&format!("server.tls.key: {file}: cannot read the file")),
        "{text}"
    );

    let mismatch = config("server.pem", "other.key");
    let (code, text) = run(&["serve", "--config", &mismatch]);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("server.tls.key") && text.contains("does not match the certificate"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}

fn tool(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("set {var} (see .ci/run)"))
}

async fn output(program: String, args: Vec<String>) -> (bool, String) {
    let output = tokio::task::spawn_blocking(move || Command::new(&program).args(&args).output())
        .await
        .expect("join")
        .expect("run the tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl; run by .ci/run"]
async fn grpcurl_calls_over_tls_and_mtls() {
    let pki = Pki::new(&test_dir("grpcurl"), "ca");
    pki.leaf("server", "server");
    pki.leaf("alice", "alice");
    let extra = format!("client_ca = \"{}\"", pki.path("ca.pem"));
    let server = TestServer::start(&tls_table(&pki, &extra)).await;
    let addr = format!("localhost:{}", server.addr.port());
    let grpcurl = |args: &[&str]| {
        output(
            tool("INFERGATE_GRPCURL"),
            args.iter().map(|a| a.to_string()).collect(),
        )
    };
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("alice.pem"), pki.path("alice.key"));
    let (ok, text) = grpcurl(&["-cacert", &ca, "-cert", &cert, "-key", &key, &addr, "list"]).await;
    assert!(ok, "{text}");
    assert!(text.contains("infergate.v1.Inference"), "{text}");
    let body = r#"{"model":"m","prompt":"over tls"}"#;
    let (ok, text) = grpcurl(&[
        "-cacert",
        &ca,
        "-cert",
        &cert,
        "-key",
        &key,
        "-d",
        body,
        &addr,
        "infergate.v1.Inference/Generate",
    ])
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("over tls"), "{text}");
    // Without a client certificate: refused.
    let (ok, text) = grpcurl(&["-cacert", &ca, &addr, "list"]).await;
    assert!(!ok, "{text}");
    // Plain text: the message says what to do.
    let (ok, text) = grpcurl(&["-plaintext", &addr, "list"]).await;
    assert!(!ok, "{text}");
    assert!(text.contains("requires TLS"), "{text}");
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// A health Check over TLS with Python grpcio, no generated code: the
/// request is empty, SERVING is `08 01`.
const PYTHON_CHECK: &str = r#"
import sys, grpc
target, ca, cert, key = sys.argv[1:5]
read = lambda p: open(p, "rb").read()
creds = grpc.ssl_channel_credentials(
    root_certificates=read(ca),
    private_key=read(key) if key else None,
    certificate_chain=read(cert) if cert else None)
with grpc.secure_channel(target, creds) as channel:
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    try:
        reply = check(b"", timeout=10)
        print("reply", reply.hex())
    except grpc.RpcError as e:
        print("error", e.code().name, e.details())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcio; run by .ci/run"]
async fn python_grpcio_calls_over_mtls() {
    let pki = Pki::new(&test_dir("python"), "ca");
    pki.leaf("server", "server");
    pki.leaf("alice", "alice");
    let extra = format!("client_ca = \"{}\"", pki.path("ca.pem"));
    let server = TestServer::start(&tls_table(&pki, &extra)).await;
    let target = format!("localhost:{}", server.addr.port());
    let python = |cert: String, key: String| {
        let args = vec![
            "-c".to_string(),
            PYTHON_CHECK.to_string(),
            target.clone(),
            pki.path("ca.pem"),
            cert,
            key,
        ];
        output(tool("INFERGATE_PYTHON"), args)
    };
    let (ok, text) = python(pki.path("alice.pem"), pki.path("alice.key")).await;
    assert!(ok && text.contains("reply 0801"), "{text}");
    let (ok, text) = python(String::new(), String::new()).await;
    assert!(ok && text.contains("error UNAVAILABLE"), "{text}");
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infergate_health_checks_a_tls_and_an_mtls_gateway() {
    let pki = Pki::new(&test_dir("health"), "ca");
    pki.leaf("server", "server");
    pki.leaf("prober", "prober");
    let extra = format!(
        "client_ca = \"{}\"\nclient_auth = \"optional\"",
        pki.path("ca.pem")
    );
    let server = TestServer::start(&tls_table(&pki, &extra)).await;
    let addr = server.addr.to_string();
    // The child blocks: run it off the runtime's threads, which serve the
    // gateway it checks.
    let health = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(common::binary::bin())
                .arg("health")
                .args(args)
                .output()
                .expect("run infergate health")
        })
        .await
        .expect("task")
    };
    let with = |extra: &[&str]| {
        let mut args = vec!["--addr".to_string(), addr.clone()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let ca = pki.path("ca.pem");
    let out = health(with(&["--cacert", &ca])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    let (cert, key) = (pki.path("prober.pem"), pki.path("prober.key"));
    let out = health(with(&["--cacert", &ca, "--cert", &cert, "--key", &key])).await;
    assert!(
        out.status.success(),
        "mTLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain text to a TLS listener: unhealthy, and told why.
    let out = health(with(&[])).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires TLS"), "{stderr}");
    // A CA file that is not there is a usage error naming the flag.
    let out = health(with(&["--cacert", "/nonexistent/ca.pem"])).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cacert"));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infergate_bench_loads_a_tls_and_an_mtls_gateway() {
    let pki = Pki::new(&test_dir("bench"), "ca");
    pki.leaf("server", "server");
    pki.leaf("loader", "loader");
    let extra = format!("client_ca = \"{}\"", pki.path("ca.pem"));
    let server = TestServer::start(&tls_table(&pki, &extra)).await;
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("loader.pem"), pki.path("loader.key"));
    let addr = server.addr.to_string();
    let bench = move |identity: bool| {
        let (ca, cert, key, addr) = (ca.clone(), cert.clone(), key.clone(), addr.clone());
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(common::binary::bin());
            command.args([
                "bench",
                "--cacert",
                &ca,
                "-d",
                r#"{"model":"m","prompt":"x"}"#,
            ]);
            command.args(["-n", "20", "-c", "4", &addr]);
            if identity {
                command.args(["--cert", &cert, "--key", &key]);
            }
            command.output().expect("run infergate bench")
        })
    };
    let out = bench(true).await.expect("task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[OK]\t20 responses"), "{stdout}");
    // mTLS required: without a client certificate no call succeeds.
    let out = bench(false).await.expect("task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("[OK]"),
        "served without a client certificate: {stdout}"
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}
