//! Unit tests of TLS: file errors, the identity of a client certificate,
//! and that identity as a handler sees it through [`peer_identity`] (the
//! integration tests in `tests/tls.rs` cannot: it is crate-private).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server};

use super::*;
use crate::config::{ClientAuth, Config, TlsConfig};
use crate::connection::ConnectionCap;
use crate::connection::activity::{CountCallsLayer, IdleTimeouts};
use crate::connection::incoming::Incoming;

/// A CA, and certificates it signed, as PEM text.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = name("test CA", None);
        let key = KeyPair::generate().expect("CA key");
        let ca_pem = params.self_signed(&key).expect("CA cert").pem();
        Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate and its key, PEM: for `localhost` and 127.0.0.1.
    fn leaf(&self, common_name: &str, organization: Option<&str>) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        params.distinguished_name = name(common_name, organization);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    if let Some(organization) = organization {
        name.push(DnType::OrganizationName, organization);
    }
    name.push(DnType::CommonName, common_name);
    name
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infergate-tls-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write");
    path
}

fn load_error(config: &TlsConfig) -> TlsFileError {
    match ServerTls::load(config) {
        Ok(_) => panic!("{config:?} should have been refused"),
        Err(e) => e,
    }
}

#[test]
fn the_subject_of_a_client_certificate_is_its_identity() {
    let pki = Pki::new();
    let (cert, _) = pki.leaf("alice", Some("Acme"));
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).expect("PEM");
    let identity = PeerIdentity::from_der(&der).expect("parsed");
    assert_eq!(&*identity.subject, "CN=alice,O=Acme");
    assert_eq!(identity.common_name.as_deref(), Some("alice"));
    let garbage = rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
    assert_eq!(PeerIdentity::from_der(&garbage), None);
}

#[test]
fn unusable_files_are_named_with_their_key_and_problem() {
    let dir = temp_dir("files");
    let pki = Pki::new();
    let (cert, key) = pki.leaf("server", None);
    let (_, other_key) = pki.leaf("other", None);
    let cert_path = write(&dir, "cert.pem", &cert);
    let key_path = write(&dir, "key.pem", &key);
    let good = TlsConfig::new(&cert_path, &key_path);
    assert!(ServerTls::load(&good).is_ok());

    let missing = load_error(&TlsConfig::new(dir.join("nope.pem"), &key_path));
    assert_eq!(missing.key, "server.tls.cert");
    assert!(
        missing
            .to_string()
            .contains("nope.pem: cannot read the file"),
        "{missing}"
    );

    let not_a_cert = load_error(&TlsConfig::new(&key_path, &key_path));
    assert_eq!(
        not_a_cert.to_string(),
        format!(
            "server.tls.cert: {}: no certificate found (expected a PEM \"BEGIN CERTIFICATE\" block)",
            key_path.display()
        )
    );

    let no_key = load_error(&TlsConfig::new(&cert_path, &cert_path));
    assert_eq!(no_key.key, "server.tls.key");
    assert!(no_key.problem.contains("no private key found"), "{no_key}");

    let mismatch = load_error(&TlsConfig::new(
        &cert_path,
        write(&dir, "other.pem", &other_key),
    ));
    assert_eq!(mismatch.key, "server.tls.key");
    assert!(mismatch.problem.contains("does not match"), "{mismatch}");

    let junk = "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n";
    let unsupported = load_error(&TlsConfig::new(&cert_path, write(&dir, "junk.pem", junk)));
    assert_eq!(unsupported.key, "server.tls.key");
    assert!(
        unsupported.problem.contains("unsupported private key"),
        "{unsupported}"
    );

    let mut bad_ca = good.clone();
    bad_ca.client_ca = Some(key_path.clone());
    assert_eq!(load_error(&bad_ca).key, "server.tls.client_ca");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_auth_needs_client_ca_and_defaults_to_required() {
    let model = "[[models]]\nname = \"a\"\nbackend = \"simulated\"\n";
    let tls = "[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
    let e = Config::from_toml(&format!("{tls}client_auth = \"optional\"\n{model}"), "t")
        .expect_err("no client_ca");
    assert_eq!(e.key.as_deref(), Some("server.tls.client_auth"));
    let config =
        Config::from_toml(&format!("{tls}client_ca = \"ca.pem\"\n{model}"), "t").expect("valid");
    let settings = config.server.tls.as_ref().expect("tls");
    assert_eq!(settings.client_auth(), Some(ClientAuth::Required));
    let e = Config::from_toml(&format!("{tls}reload_interval_ms = 5\n{model}"), "t")
        .expect_err("too often");
    assert_eq!(e.key.as_deref(), Some("server.tls.reload_interval_ms"));
    // Rendered and read back, the table is the same.
    let again = Config::from_toml(&config.to_toml(), "t").expect("round trip");
    assert_eq!(again.server.tls, config.server.tls);
}

/// An mTLS listener with a health service, and the identity and address
/// each request's handler would see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_sees_the_client_certificate_subject() {
    let dir = temp_dir("identity");
    let pki = Pki::new();
    let (cert, key) = pki.leaf("server", None);
    let mut settings = TlsConfig::new(write(&dir, "c.pem", &cert), write(&dir, "k.pem", &key));
    settings.client_ca = Some(write(&dir, "ca.pem", &pki.ca_pem));
    settings.client_auth = Some(ClientAuth::Optional);
    let tls = ServerTls::load(&settings).expect("load");
    let _ = std::fs::remove_dir_all(&dir);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let timeouts = IdleTimeouts {
        idle: Duration::from_secs(60),
        first_call: Duration::from_secs(10),
    };
    let incoming = Incoming::new(
        listener,
        ConnectionCap::new(crate::connection::GRPC, 16),
        timeouts,
        Some(tls),
    );
    type Seen = (Option<PeerIdentity>, Option<std::net::SocketAddr>);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = {
        let seen = seen.clone();
        move |request: http::Request<tonic::body::Body>| {
            let as_handler = tonic::Request::from_parts(
                tonic::metadata::MetadataMap::new(),
                request.extensions().clone(),
                (),
            );
            seen.lock()
                .expect("lock")
                .push((peer_identity(&as_handler), as_handler.remote_addr()));
            request
        }
    };
    let (_health, health_service) = tonic_health::server::health_reporter();
    let server = tokio::spawn(
        Server::builder()
            .layer(CountCallsLayer)
            .layer(tower::util::MapRequestLayer::new(record))
            .add_service(health_service)
            .serve_with_incoming(incoming),
    );

    let check = |tls: ClientTlsConfig| async move {
        let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
            .expect("uri")
            .tls_config(tls)
            .expect("tls config")
            .connect()
            .await
            .expect("connect");
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("check");
    };
    let trust = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem));
    let (client_cert, client_key) = pki.leaf("alice", Some("Acme"));
    check(
        trust
            .clone()
            .identity(Identity::from_pem(client_cert, client_key)),
    )
    .await;
    check(trust).await;

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (identity, remote) = &seen[0];
    let identity = identity.as_ref().expect("an identity");
    assert_eq!(&*identity.subject, "CN=alice,O=Acme");
    assert_eq!(identity.common_name.as_deref(), Some("alice"));
    assert!(remote.is_some_and(|a| a.ip().is_loopback()), "{remote:?}");
    // `optional`: no certificate, no identity, still served.
    assert_eq!(seen[1].0, None);
    server.abort();
}
