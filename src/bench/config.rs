//! ghz's config file (`--config`): JSON, or TOML by its `.toml` extension,
//! with ghz's keys ("call", "host", "total", "concurrency", "data",
//! "metadata", "duration", "max-duration", "timeout", "rps", "skipFirst",
//! "format", "output", "name", ...). Durations are Go's strings ("10s").
//!
//! Keys for what this load generator does not need ("proto", "insecure",
//! "import-paths", ...) are accepted; keys for what it cannot do (TLS,
//! load and concurrency schedules other than "const") are refused; unknown
//! keys are ignored with a warning, as ghz ignores them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::bench::args::{Format, parse_duration};
use crate::bench::stop::DurationStop;

/// Keys accepted and ignored: they only matter to ghz.
const IGNORED: [&str; 16] = [
    "max-recv-message-size",
    "max-send-message-size",
    "protoset",
    "import-paths",
    "insecure",
    "reflect-metadata",
    "load-start",
    "load-end",
    "load-step",
    "load-step-duration",
    "load-max-duration",
    "concurrency-start",
    "concurrency-end",
    "concurrency-step",
    "concurrency-step-duration",
    "concurrency-max-duration",
];

/// The values a config file sets.
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// "call".
    pub call: Option<String>,
    /// "host".
    pub host: Option<String>,
    /// "proto" (recorded in the report only).
    pub proto: Option<String>,
    /// "total".
    pub total: Option<u64>,
    /// "concurrency".
    pub concurrency: Option<usize>,
    /// "connections".
    pub connections: Option<usize>,
    /// "rps".
    pub rps: Option<f64>,
    /// "async".
    pub is_async: bool,
    /// "duration".
    pub duration: Option<Duration>,
    /// "max-duration".
    pub max_duration: Option<Duration>,
    /// "duration-stop".
    pub duration_stop: Option<DurationStop>,
    /// "timeout".
    pub timeout: Option<Duration>,
    /// "connect-timeout".
    pub connect_timeout: Option<Duration>,
    /// "keepalive".
    pub keepalive: Option<Duration>,
    /// "data" as JSON text.
    pub data: Option<String>,
    /// "data-file".
    pub data_file: Option<PathBuf>,
    /// "binary-file".
    pub binary_file: Option<PathBuf>,
    /// "metadata" as JSON text.
    pub metadata: Option<String>,
    /// "metadata-file".
    pub metadata_file: Option<PathBuf>,
    /// "format".
    pub format: Option<Format>,
    /// "output".
    pub output: Option<PathBuf>,
    /// "name".
    pub name: Option<String>,
    /// "tags".
    pub tags: Option<Value>,
    /// "skipFirst".
    pub skip_first: Option<u64>,
    /// "count-errors".
    pub count_errors: bool,
    /// "cpus".
    pub cpus: Option<usize>,
    /// "authority".
    pub authority: Option<String>,
    /// "cacert", "cert", "key", "cname": TLS (see [`super::Settings::tls`]).
    pub cacert: Option<String>,
    /// "cert".
    pub cert: Option<String>,
    /// "key".
    pub key: Option<String>,
    /// "cname".
    pub cname: Option<String>,
    /// What was accepted but not honoured, for the user.
    pub warnings: Vec<String>,
}

impl ConfigFile {
    /// Reads a ghz config file.
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("--config {source}: {e}"))?;
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let value: Value = match extension.as_str() {
            "toml" => {
                let table: toml::Value =
                    toml::from_str(&text).map_err(|e| format!("--config {source}: {e}"))?;
                serde_json::to_value(table).map_err(|e| format!("--config {source}: {e}"))?
            }
            "yaml" | "yml" => {
                return Err(format!(
                    "--config {source}: YAML config files are not supported (use JSON or TOML)"
                ));
            }
            _ => serde_json::from_str(&text).map_err(|e| format!("--config {source}: {e}"))?,
        };
        let object = value
            .as_object()
            .ok_or_else(|| format!("--config {source}: expected an object of settings"))?;
        ConfigFile::from_object(object, &source)
    }

    /// Reads the settings of a parsed config file.
    pub fn from_object(object: &Map<String, Value>, source: &str) -> Result<ConfigFile, String> {
        let mut config = ConfigFile::default();
        for (key, value) in object {
            let at = |what: &str| format!("--config {source}: \"{key}\" must be {what}");
            let string = || {
                value
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| at("a string"))
            };
            let uint = || value.as_u64().ok_or_else(|| at("a whole number"));
            let size =
                || uint().and_then(|n| usize::try_from(n).map_err(|_| at("a smaller number")));
            let flag = || value.as_bool().ok_or_else(|| at("true or false"));
            let duration = || match value {
                Value::String(text) => {
                    parse_duration(text).map_err(|e| at(&format!("a duration: {e}")))
                }
                Value::Number(n) => n
                    .as_f64()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| at("a duration")),
                _ => Err(at("a duration such as \"10s\"")),
            };
            let json_text = |what: &str| match value {
                Value::Object(_) | Value::Array(_) => Ok(value.to_string()),
                _ => Err(at(what)),
            };
            match key.as_str() {
                "call" => config.call = Some(string()?),
                "host" => config.host = Some(string()?),
                "total" => config.total = Some(uint()?),
                "concurrency" => config.concurrency = Some(size()?),
                "connections" => config.connections = Some(size()?),
                "rps" => config.rps = Some(value.as_f64().ok_or_else(|| at("a number"))?),
                "async" => config.is_async = flag()?,
                "duration" => config.duration = Some(duration()?),
                "max-duration" => config.max_duration = Some(duration()?),
                "duration-stop" => {
                    let name = string()?;
                    config.duration_stop = Some(DurationStop::parse(&name).unwrap_or_else(|| {
                        config.warnings.push(format!(
                            "--config {source}: \"duration-stop\" {name:?} is not close, wait or ignore: close, as ghz does"
                        ));
                        DurationStop::Close
                    }));
                }
                "timeout" => config.timeout = Some(duration()?),
                "connect-timeout" => config.connect_timeout = Some(duration()?),
                "keepalive" => config.keepalive = Some(duration()?),
                "data" => config.data = Some(json_text("a JSON object or array")?),
                "data-file" => config.data_file = Some(PathBuf::from(string()?)),
                "binary-file" => config.binary_file = Some(PathBuf::from(string()?)),
                "metadata" => config.metadata = Some(json_text("a JSON object of strings")?),
                "metadata-file" => config.metadata_file = Some(PathBuf::from(string()?)),
                "format" => {
                    config.format = Some(
                        Format::parse(&string()?).map_err(|e| format!("--config {source}: {e}"))?,
                    );
                }
                "output" => config.output = Some(PathBuf::from(string()?)),
                "name" => config.name = Some(string()?),
                "tags" => config.tags = Some(value.clone()),
                "skipFirst" => config.skip_first = Some(uint()?),
                "count-errors" => config.count_errors = flag()?,
                "cpus" => config.cpus = Some(size()?),
                "authority" => config.authority = Some(string()?),
                "load-schedule" | "concurrency-schedule" => only_const(key, &string()?, source)?,
                "cacert" => config.cacert = Some(string()?).filter(|s| !s.is_empty()),
                "cert" => config.cert = Some(string()?).filter(|s| !s.is_empty()),
                "key" => config.key = Some(string()?).filter(|s| !s.is_empty()),
                "cname" => config.cname = Some(string()?).filter(|s| !s.is_empty()),
                "skipTLS" => {
                    if !(value.is_null() || value == &Value::Bool(false)) {
                        return Err(format!(
                            "--config {source}: \"skipTLS\": skipping certificate verification is not supported; give \"cacert\""
                        ));
                    }
                }
                "proto" => config.proto = Some(string()?),
                "enable-compression" | "stream-interval" | "debug" | "lb-strategy" => {
                    config.warnings.push(format!(
                        "--config {source}: \"{key}\" is not supported by infergate bench; ignored"
                    ));
                }
                known if IGNORED.contains(&known) => {}
                unknown => config.warnings.push(format!(
                    "--config {source}: unknown key \"{unknown}\"; ignored"
                )),
            }
        }
        Ok(config)
    }
}

/// Refuses a load or concurrency schedule other than ghz's default.
pub fn only_const(flag: &str, schedule: &str, source: &str) -> Result<(), String> {
    if schedule.eq_ignore_ascii_case("const") {
        Ok(())
    } else {
        Err(format!(
            "{source}: {flag} {schedule:?} is not supported by infergate bench (only \"const\")"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ConfigFile, String> {
        let value: Value = serde_json::from_str(json).unwrap();
        ConfigFile::from_object(value.as_object().unwrap(), "test.json")
    }

    #[test]
    fn reads_ghz_keys() {
        let config = parse(
            r#"{"name":"n","call":"infergate.v1.Inference.Generate","host":"127.0.0.1:1",
                "insecure":true,"concurrency":2,"total":3,"duration":"1m30s","max-duration":"10s",
                "timeout":"0","rps":40,"skipFirst":1,"format":"pretty","output":"o.json",
                "data":[{"model":"a"}],"metadata":{"k":"{{.RequestNumber}}"},
                "import-paths":["x"],"proto":"p.proto"}"#,
        )
        .unwrap();
        assert_eq!(config.total, Some(3));
        assert_eq!(config.concurrency, Some(2));
        assert_eq!(config.duration, Some(Duration::from_secs(90)));
        assert_eq!(config.max_duration, Some(Duration::from_secs(10)));
        assert_eq!(config.timeout, Some(Duration::ZERO));
        assert_eq!(config.format, Some(Format::Pretty));
        assert_eq!(config.data.as_deref(), Some(r#"[{"model":"a"}]"#));
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn refuses_what_it_cannot_do_and_warns_on_the_unknown() {
        assert_eq!(
            parse(r#"{"cacert":"ca.pem"}"#).unwrap().cacert.as_deref(),
            Some("ca.pem")
        );
        assert!(
            parse(r#"{"skipTLS":true}"#)
                .unwrap_err()
                .contains("skipTLS")
        );
        assert!(parse(r#"{"load-schedule":"step"}"#).is_err());
        assert!(parse(r#"{"load-schedule":"const","skipTLS":false}"#).is_ok());
        assert!(parse(r#"{"total":"many"}"#).unwrap_err().contains("total"));
        let config = parse(r#"{"frobnicate":1}"#).unwrap();
        assert!(config.warnings[0].contains("frobnicate"));
    }
}
