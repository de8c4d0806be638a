//! The command line: `serve`, `check-config`, `bench`, `health` and
//! `keys`.
//!
//! Exit codes: 0 on a clean stop (including after SIGTERM), 78 (EX_CONFIG)
//! for a configuration that cannot be used, 64 (EX_USAGE) for bench flags
//! or a bench target that cannot be used, 1 when the server fails. `health`
//! exits 0 for `SERVING`, 1 for anything else, 64 for an address that is
//! not host:port. `keys` exits 64 for bad flags or a keys file it cannot
//! use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::auth::command::KeysArgs;
use crate::bench::BenchArgs;
use crate::config::{Config, ConfigError};
use crate::health::{HealthArgs, HealthError};
use crate::server;

/// Exit code for an unusable configuration (sysexits.h EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code for bad flags or an unreachable bench target (sysexits.h
/// EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// infergate: a gRPC gateway that runs synchronous LLM backends on bounded
/// per-model worker pools, so that concurrent calls overlap.
#[derive(Debug, Parser)]
#[command(name = "infergate", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: the size of the bench flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gateway (the embedded default models without --config).
    Serve(ServeArgs),
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Load-test a gateway, ghz-style (e.g. `bench 127.0.0.1:50051 -c 50 -n 1000`).
    Bench(BenchArgs),
    /// One grpc.health.v1 Check: prints the status, exits 0 for SERVING and
    /// 1 otherwise (for a container HEALTHCHECK; no shell or grpcurl needed).
    Health(HealthArgs),
    /// Manage API keys: `keys add NAME --file keys.toml` prints a new key
    /// once and stores only its hash.
    Keys(KeysArgs),
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; without it, the embedded default.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listen address, overriding [server] listen.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Prometheus /metrics address, overriding [server] metrics_listen.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Log lines on stderr: `text` for people, `json` (one object a line,
    /// with the call's `request_id` under `span`) for log collectors.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        env = "INFERGATE_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// How `serve` writes its log lines (set up by the binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: time, level, span fields, message, fields.
    Text,
    /// One JSON object a line: `timestamp`, `level`, the message and the
    /// event's fields, `target`, and the span's fields under `span`.
    Json,
}

impl ServeArgs {
    /// The configuration these flags select, with their overrides applied.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => {
                let config = Config::from_file(path)?;
                config.check_files(&path.display().to_string())?;
                config.check_environment(&path.display().to_string())?;
                check_tls_files(&config, path)?;
                config
            }
            None => Config::embedded_default()?,
        };
        if let Some(addr) = &self.listen {
            config.server.listen = flag_addr("--listen", addr)?;
        }
        if let Some(addr) = &self.metrics_listen {
            config.server.metrics_listen = flag_addr("--metrics-listen", addr)?;
        }
        Ok(config)
    }
}

fn flag_addr(flag: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError {
        source: "command line".into(),
        line: None,
        key: Some(flag.into()),
        message: format!("\"{value}\" is not an address like 127.0.0.1:50051"),
    })
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::CheckConfig { file } => check_config(&file),
        Command::Bench(args) => bench(&args),
        Command::Health(args) => health(&args),
        Command::Keys(args) => match crate::auth::command::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
    }
}

fn health(args: &HealthArgs) -> ExitCode {
    // One call: a single-threaded runtime is enough.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::health::check(args)) {
        Ok(status) => {
            println!("{}", status.as_str_name());
            if status == ServingStatus::Serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(HealthError::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(HealthError::Unhealthy(e)) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &BenchArgs) -> ExitCode {
    let settings = match args.resolve() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for warning in &settings.warnings {
        eprintln!("warning: {warning}");
    }
    let runtime = match runtime(settings.cpus) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::bench::run_settings(&settings)) {
        Ok(report) => {
            let written = match &settings.output {
                Some(path) => {
                    std::fs::write(path, report).map_err(|e| format!("{}: {e}", path.display()))
                }
                None => {
                    print!("{report}");
                    Ok(())
                }
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The async runtime: `threads` worker threads, or one per core.
fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, std::io::Error> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    builder.enable_all().thread_name("infergate-rt").build()
}

fn serve(args: &ServeArgs) -> ExitCode {
    // With JSON logs, stderr holds nothing but JSON lines: the errors that
    // stop the server are log lines too (an `error` field), not text.
    let text = args.log_format == LogFormat::Text;
    let config = match args.load() {
        Ok(config) => config,
        Err(e) if text => return config_error(&e),
        Err(e) => {
            tracing::error!(error = %e, "config error");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match runtime(None) {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            if text {
                eprintln!("error: cannot start the async runtime: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::serve(&config, server::shutdown_signal())) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            if text {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The files of `[server.tls]` checked (their contents, not only their
/// names), as a config error naming the key and the file.
fn check_tls_files(config: &Config, path: &std::path::Path) -> Result<(), ConfigError> {
    crate::server::check_tls_files(&config.server).map_err(|e| ConfigError {
        source: path.display().to_string(),
        line: None,
        key: Some(e.key.to_string()),
        message: format!("{}: {}", e.path.display(), e.problem),
    })
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let config = Config::from_file(file).and_then(|config| {
        config.check_files(&file.display().to_string())?;
        check_tls_files(&config, file)?;
        Ok(config)
    });
    match config {
        Ok(config) => {
            println!("# {}: valid; the effective configuration:", file.display());
            // Credentials in URLs are printed as `***`.
            print!("{}", config.redacted().to_toml());
            ExitCode::SUCCESS
        }
        Err(e) => config_error(&e),
    }
}

fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("config error: {error}");
    ExitCode::from(EXIT_CONFIG)
}
