//! The effective settings of a run: the command line over the `--config`
//! file over ghz's defaults, with `-d @` / `-D` / `-M` read, and the
//! options as ghz records them in its JSON report.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::bench::args::{BenchArgs, Format};
use crate::bench::call::Call;
use crate::bench::config::{ConfigFile, only_const};
use crate::bench::stop::DurationStop;

/// The request sent when neither -d, -D nor the config file gives one.
pub const DEFAULT_DATA: &str = r#"{"model":"echo","prompt":"hello"}"#;

/// Everything a run needs to know, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// host:port.
    pub target: String,
    /// The method (`--call`).
    pub call: Call,
    /// The request data, JSON text (maybe templated).
    pub data: String,
    /// Binary request data (`-b`, `-B`), used instead of `data`.
    pub binary: Option<Vec<u8>>,
    /// The metadata, JSON text (maybe templated).
    pub metadata: Option<String>,
    /// Workers (`-c`).
    pub concurrency: usize,
    /// `-n`; `None` with `-z` (until the duration runs out).
    pub total: Option<u64>,
    /// `-z`.
    pub duration: Option<Duration>,
    /// `-x`.
    pub max_duration: Option<Duration>,
    /// What happens to the calls in flight at the end (`--duration-stop`).
    pub duration_stop: DurationStop,
    /// Calls per second in all; `None`: no limit.
    pub rps: Option<f64>,
    /// `--async` with `--rps`: the open loop.
    pub open_loop: bool,
    /// HTTP/2 connections (`--connections`).
    pub connections: usize,
    /// Each call's deadline; `None` for none (`-t 0`).
    pub timeout: Option<Duration>,
    /// Time allowed to open a connection (`--connect-timeout`).
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive interval (`--keepalive`); `None`: off.
    pub keepalive: Option<Duration>,
    /// The `:authority` of every call (`--authority`).
    pub authority: Option<String>,
    /// TLS (`--cacert`, `--cert`/`--key`, `--cname`); `None`: plaintext.
    pub tls: Option<TlsSettings>,
    /// The report format (`-O`).
    pub format: Format,
    /// Where the report goes (`-o`); `None`: stdout.
    pub output: Option<PathBuf>,
    /// The run's name (`--name`).
    pub name: Option<String>,
    /// Tags for the JSON report (`--tags`).
    pub tags: Option<Value>,
    /// Finished calls left out of the report (`--skipFirst`).
    pub skip_first: u64,
    /// Failed calls count in the latency figures (`--count-errors`).
    pub count_errors: bool,
    /// Runtime threads (`--cpus`); `None`: one per core.
    pub cpus: Option<usize>,
    /// Per-call details in the JSON report (not `--no-details`).
    pub details: bool,
    /// `--proto`, recorded in the report's options as ghz does.
    pub proto: Option<String>,
    /// Flags or keys accepted but not honoured, for the user.
    pub warnings: Vec<String>,
}

impl BenchArgs {
    /// The settings these flags (and their `--config` file) select.
    pub fn resolve(&self) -> Result<Settings, String> {
        let mut config = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let mut warnings = std::mem::take(&mut config.warnings);
        if self.skip_tls {
            return Err(
                "--skipTLS: skipping certificate verification is not supported; give --cacert"
                    .into(),
            );
        }
        for (flag, schedule) in [
            ("--load-schedule", &self.load_schedule),
            ("--concurrency-schedule", &self.concurrency_schedule),
        ] {
            if let Some(schedule) = schedule {
                only_const(flag, schedule, "command line")?;
            }
        }
        if self.enable_compression {
            warnings
                .push("--enable-compression is not supported: calls are sent uncompressed".into());
        }
        if self.debug.is_some() {
            warnings.push("--debug is not supported: no debug log is written".into());
        }
        let target = self
            .target
            .clone()
            .or(config.host.take())
            .ok_or("the target (host:port) is missing: give it, or \"host\" in --config")?;
        let target = target
            .strip_prefix("http://")
            .unwrap_or(&target)
            .to_string();
        let call = self.call.as_deref().or(config.call.as_deref());
        let call = Call::parse(call.unwrap_or("infergate.v1.Inference/Generate"))?;
        let data = match (&self.data, &self.data_file) {
            (Some(data), _) => data_text(data)?,
            (None, Some(path)) => read("-D", path)?,
            (None, None) => match (config.data.take(), &config.data_file) {
                (Some(data), _) => data,
                (None, Some(path)) => read("data-file", path)?,
                (None, None) => DEFAULT_DATA.to_string(),
            },
        };
        let binary = if self.binary {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| format!("-b: cannot read stdin: {e}"))?;
            Some(bytes)
        } else {
            match self.binary_file.as_ref().or(config.binary_file.as_ref()) {
                Some(path) if self.data.is_none() && self.data_file.is_none() => {
                    Some(std::fs::read(path).map_err(|e| format!("-B {}: {e}", path.display()))?)
                }
                _ => None,
            }
        };
        let metadata = match (&self.metadata, &self.metadata_file) {
            (Some(metadata), _) => Some(metadata.clone()),
            (None, Some(path)) => Some(read("-M", path)?),
            (None, None) => match (config.metadata.take(), &config.metadata_file) {
                (Some(metadata), _) => Some(metadata),
                (None, Some(path)) => Some(read("metadata-file", path)?),
                (None, None) => None,
            },
        };
        let concurrency = self.concurrency.or(config.concurrency).unwrap_or(50);
        if concurrency == 0 {
            return Err("-c must be at least 1".into());
        }
        let connections = self.connections.or(config.connections).unwrap_or(1);
        if connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        let rps = self.rps.or(config.rps);
        if rps.is_some_and(|rps| !(rps >= 0.0 && rps.is_finite())) {
            return Err("--rps must be a positive number (or 0 for no limit)".into());
        }
        let rps = rps.filter(|&rps| rps > 0.0);
        let open_loop = self.async_ || config.is_async;
        if open_loop && rps.is_none() {
            warnings.push(
                "--async without --rps: calls run on the -c workers, one at a time each".into(),
            );
        }
        let duration = self.duration.or(config.duration).filter(|d| !d.is_zero());
        let max_duration = self
            .max_duration
            .or(config.max_duration)
            .filter(|d| !d.is_zero());
        // As ghz: -x keeps -n; -z alone runs until it runs out.
        let total = self.total.or(config.total).unwrap_or(200);
        let total = (duration.is_none() || max_duration.is_some()).then_some(total);
        let skip_first = self.skip_first.or(config.skip_first).unwrap_or(0);
        if total.is_some_and(|total| skip_first > total) {
            return Err("--skipFirst: you cannot skip more requests than those run".into());
        }
        let tags = match &self.tags {
            Some(text) => Some(
                serde_json::from_str::<Value>(text)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or("--tags must be a JSON object of strings")?,
            ),
            None => config.tags.take(),
        };
        let timeout = self
            .timeout
            .or(config.timeout)
            .unwrap_or(Duration::from_secs(20));
        Ok(Settings {
            target,
            call,
            data,
            binary,
            metadata,
            concurrency,
            total,
            duration,
            max_duration,
            duration_stop: self
                .duration_stop
                .or(config.duration_stop)
                .unwrap_or_default(),
            rps,
            open_loop: open_loop && rps.is_some(),
            connections,
            timeout: (!timeout.is_zero()).then_some(timeout),
            connect_timeout: self
                .connect_timeout
                .or(config.connect_timeout)
                .unwrap_or(Duration::from_secs(10)),
            keepalive: self.keepalive.or(config.keepalive).filter(|k| !k.is_zero()),
            authority: self.authority.clone().or(config.authority.take()),
            tls: TlsSettings::read(
                self.cacert.clone().or(config.cacert.take()),
                self.cert.clone().or(config.cert.take()),
                self.key.clone().or(config.key.take()),
                self.cname.clone().or(config.cname.take()),
            )?,
            format: self.format.or(config.format).unwrap_or(Format::Summary),
            output: self.output.clone().or(config.output.take()),
            name: self.name.clone().or(config.name.take()),
            tags,
            skip_first,
            count_errors: self.count_errors || config.count_errors,
            cpus: self.cpus.or(config.cpus).filter(|&n| n > 0),
            details: !self.no_details,
            proto: self.proto.clone().or(config.proto.take()),
            warnings,
        })
    }
}

/// A TLS connection's settings, the files read.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The CA bundle (PEM).
    pub ca: Vec<u8>,
    /// The client certificate and key (PEM), for mTLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry.
    pub server_name: Option<String>,
}

impl TlsSettings {
    /// Reads the files the TLS flags name; `None` without `--cacert`.
    /// Errors name the flag and the file.
    fn read(
        cacert: Option<String>,
        cert: Option<String>,
        key: Option<String>,
        cname: Option<String>,
    ) -> Result<Option<TlsSettings>, String> {
        let read =
            |flag: &str, path: &str| std::fs::read(path).map_err(|e| format!("{flag} {path}: {e}"));
        let Some(cacert) = cacert else {
            if let Some((flag, _)) = [("--cert", &cert), ("--key", &key), ("--cname", &cname)]
                .into_iter()
                .find(|(_, given)| given.is_some())
            {
                return Err(format!(
                    "{flag}: TLS needs --cacert (the CA bundle that signed the gateway's certificate)"
                ));
            }
            return Ok(None);
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read("--cert", &cert)?, read("--key", &key)?)),
            (None, None) => None,
            (Some(_), None) => return Err("--cert: needs --key".into()),
            (None, Some(_)) => return Err("--key: needs --cert".into()),
        };
        Ok(Some(TlsSettings {
            ca: read("--cacert", &cacert)?,
            identity,
            server_name: cname,
        }))
    }
}

/// `-d`: the text, or stdin for `@` (as ghz).
fn data_text(data: &str) -> Result<String, String> {
    if data != "@" {
        return Ok(data.to_string());
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("-d @: cannot read stdin: {e}"))?;
    Ok(text)
}

fn read(what: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl Settings {
    /// When the run stops issuing calls: `-x`, else `-z`.
    pub fn deadline(&self) -> Option<Duration> {
        self.max_duration.or(self.duration)
    }

    /// The run's options, as ghz records them in its JSON report.
    pub fn options(&self) -> Value {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        json!({
            "call": self.call.full_name(),
            "host": self.target,
            "proto": self.proto.as_deref().unwrap_or(""),
            "insecure": true,
            "rps": self.rps.unwrap_or(0.0),
            "async": self.open_loop,
            "load-schedule": "const",
            "concurrency-schedule": "const",
            "concurrency": self.concurrency,
            "total": self.total.unwrap_or(0),
            "connections": self.connections,
            "duration": self.deadline().map_or(0, ns),
            "duration-stop": self.duration_stop.as_str(),
            "timeout": self.timeout.map_or(0, ns),
            "dial-timeout": ns(self.connect_timeout),
            "keepalive": self.keepalive.map_or(0, ns),
            "data": serde_json::from_str::<Value>(&self.data).unwrap_or(Value::Null),
            "binary": self.binary.is_some(),
            "metadata": self.metadata.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()),
            "CPUs": self.cpus.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
            "name": self.name.as_deref().unwrap_or(""),
            "skipFirst": self.skip_first,
            "count-errors": self.count_errors,
        })
    }
}
