//! The `infergate` binary as a server under test: started with a config,
//! its addresses read from its log, killed when dropped.
//!
//! `INFERGATE_BIN` picks the binary (CI points it at the release build, so
//! the attack tests run through what users run); by default, the debug
//! build cargo made for these tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use infergate::proto::inference_client::InferenceClient;
use tonic::transport::Channel;

/// The binary under test.
pub fn bin() -> String {
    std::env::var("INFERGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_infergate").to_string())
}

/// A running `infergate serve`.
pub struct BinaryServer {
    pub child: Child,
    /// The gRPC address.
    pub addr: String,
    /// The `/metrics` address.
    pub metrics_addr: String,
    /// Every log line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    config: PathBuf,
}

impl BinaryServer {
    /// Starts the binary on `config` (a TOML text whose `[server]` listens
    /// on port 0; see [`listen_anywhere`]), waiting for its addresses.
    pub async fn start(name: &str, config: &str) -> BinaryServer {
        BinaryServer::start_with(name, config, &[], "info").await
    }

    /// [`BinaryServer::start`] with extra `serve` flags and this
    /// `RUST_LOG`. The addresses are read from text or JSON log lines.
    pub async fn start_with(
        name: &str,
        config: &str,
        flags: &[&str],
        rust_log: &str,
    ) -> BinaryServer {
        let path =
            std::env::temp_dir().join(format!("infergate-bin-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, config).expect("write the config");
        BinaryServer::start_file_with(&path, None, flags, rust_log).await
    }

    /// Starts the binary on the config file at `path` (relative to `dir`,
    /// if given; removed when dropped), in the working directory `dir`
    /// (default: the test's).
    pub async fn start_file(path: &std::path::Path, dir: Option<&std::path::Path>) -> BinaryServer {
        BinaryServer::start_file_with(path, dir, &[], "info").await
    }

    /// [`BinaryServer::start_file`] with extra `serve` flags and this
    /// `RUST_LOG`.
    async fn start_file_with(
        path: &std::path::Path,
        dir: Option<&std::path::Path>,
        flags: &[&str],
        rust_log: &str,
    ) -> BinaryServer {
        let mut command = Command::new(bin());
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        command
            .args(["serve", "--config", path.to_str().expect("utf-8 path")])
            .args(flags);
        let path = match dir {
            Some(dir) => dir.join(path),
            None => path.to_path_buf(),
        };
        let mut child = command
            .env("RUST_LOG", rust_log)
            .env_remove("INFERGATE_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start infergate");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let grpc = line.contains("serving gRPC");
                    if (grpc || line.contains("serving Prometheus metrics"))
                        && let Some(addr) = logged_addr(&line)
                    {
                        let _ = addr_tx.send((grpc, addr));
                    }
                    log.lock().expect("log lock").push(line);
                }
            }
        });
        let (mut addr, mut metrics_addr) = (None, None);
        while addr.is_none() || metrics_addr.is_none() {
            let (grpc, found) = tokio::time::timeout(Duration::from_secs(20), addr_rx.recv())
                .await
                .expect("the server logs its addresses within 20 s")
                .expect("the server is running");
            if grpc {
                addr = Some(found);
            } else {
                metrics_addr = Some(found);
            }
        }
        BinaryServer {
            child,
            addr: addr.expect("set above"),
            metrics_addr: metrics_addr.expect("set above"),
            log,
            config: path,
        }
    }

    /// A connected client.
    pub async fn client(&self) -> InferenceClient<Channel> {
        InferenceClient::new(self.channel().await)
    }

    /// A connected channel.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// Sends SIGTERM (a clean shutdown).
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill -TERM");
    }

    /// Waits (bounded) for the process to exit; its status.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let give_up = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "the server did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// The gRPC address as a socket address.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        self.addr.parse().expect("a socket address")
    }

    /// Waits (bounded) until ListModels shows `model` in the given state.
    pub async fn wait_for(
        &self,
        model: &str,
        check: impl Fn(&infergate::proto::ModelInfo) -> bool,
    ) {
        super::wait_for_model(&mut self.client().await, model, check).await;
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The `[server]` table of a binary under test: both listeners on port 0.
pub fn listen_anywhere() -> &'static str {
    "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n"
}

/// The `addr` field of a log line: `addr=ADDR` (text) or `"addr":"ADDR"`
/// (JSON).
fn logged_addr(line: &str) -> Option<String> {
    if let Some(rest) = line.split("\"addr\":\"").nth(1) {
        return rest.split('"').next().map(str::to_string);
    }
    let rest = line.split("addr=").nth(1)?;
    Some(rest.split_whitespace().next().unwrap_or("").to_string())
}
