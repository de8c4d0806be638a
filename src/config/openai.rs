//! The `[models.openai]` table: one OpenAI-compatible server (`base_url`),
//! or several replicas of one (`[[models.openai.upstreams]]`), and the
//! settings that balance, eject, probe and retry them.
//!
//! Checked here, each failure naming its key relative to the model (e.g.
//! `openai.upstreams[1].url`): URLs are http(s) with a host and no query,
//! upstream names are unique (they label metrics), every number has bounds.
//! The environment (the variable named by `api_key_env`) is not read here,
//! so that `check-config` gives the same answer on any machine; `serve`
//! checks it with [`OpenAiConfig::check_environment`].

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::redact_url;
use super::validate::in_range;

/// Default connect timeout of the OpenAI backend.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default longest silence while reading an OpenAI response.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 60_000;
/// Longest OpenAI connect or read timeout: one hour.
pub const MAX_HTTP_TIMEOUT_MS: u64 = 3600 * 1000;
/// Default time between two probes of an OpenAI-compatible upstream.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 10_000;
/// Shortest probe interval: a probe is one HTTP request to the upstream.
pub const MIN_HEALTH_INTERVAL_MS: u64 = 100;
/// Longest probe interval (one hour).
pub const MAX_HEALTH_INTERVAL_MS: u64 = 3_600_000;
/// Default path probed, under the upstream's `/v1`: `GET {url}/models`,
/// which every OpenAI-compatible server answers.
pub const DEFAULT_HEALTH_PATH: &str = "models";
/// Longest `health_path`.
pub const MAX_HEALTH_PATH_BYTES: usize = 256;
/// Default consecutive connect errors or 5xx answers that eject an
/// upstream.
pub const DEFAULT_EJECT_AFTER: u32 = 3;
/// Most consecutive failures `eject_after` may wait for.
pub const MAX_EJECT_AFTER: u32 = 1000;
/// Default first ejection of an upstream; it doubles for each ejection
/// that follows without a success in between.
pub const DEFAULT_EJECT_MS: u64 = 5_000;
/// Longest ejection, however often an upstream was ejected in a row (and
/// so the largest `eject_ms`).
pub const MAX_EJECT_MS: u64 = 60_000;
/// Most upstreams one model may have: each is probed, and each labels
/// three metric series.
pub const MAX_UPSTREAMS: usize = 64;
/// Default weight of an upstream.
pub const DEFAULT_UPSTREAM_WEIGHT: u32 = 1;
/// Largest weight of an upstream.
pub const MAX_UPSTREAM_WEIGHT: u32 = 1000;
/// Longest upstream name (a metric label).
pub const MAX_UPSTREAM_NAME_BYTES: usize = 128;

/// The `[models.openai]` table: an OpenAI-compatible server, or several.
///
/// `Debug` is written by hand: URLs may carry `user:password@`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The one-upstream shorthand: the server's base URL, with or without
    /// the trailing `/v1`, e.g. `http://127.0.0.1:8000/v1`. Exactly one of
    /// `base_url` and `upstreams` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The upstream model name; default: this model's `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The environment variable holding the API key (never the key
    /// itself); none: no `Authorization` header is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Time to connect to an upstream.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for the response (or, when streaming, for the next
    /// piece of it); the call's deadline bounds the whole call as well.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Time between two probes of each upstream (`GET {url}/{health_path}`);
    /// an upstream whose probe fails takes no calls.
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// What the probe gets: a path under the upstream's `/v1` (`models`),
    /// or, starting with `/`, a path from the server's root (`/health`).
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Consecutive connect errors or 5xx answers that eject an upstream.
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// How long an ejected upstream takes no calls; doubled for each
    /// further ejection without a success between, up to
    /// [`MAX_EJECT_MS`].
    #[serde(default = "default_eject_ms")]
    pub eject_ms: u64,
    /// Replicas serving the same model, balanced by outstanding requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamConfig>,
}

/// One `[[models.openai.upstreams]]` entry.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The replica's base URL, with or without the trailing `/v1`.
    pub url: String,
    /// The name in metrics and logs; default: `host:port` of the URL.
    /// Unique within the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its share of the calls relative to the others, 1 to
    /// [`MAX_UPSTREAM_WEIGHT`].
    #[serde(default = "default_weight")]
    pub weight: u32,
}

impl UpstreamConfig {
    /// An upstream at `url`, named after its host and port, of weight 1.
    pub fn new(url: impl Into<String>) -> Self {
        UpstreamConfig {
            url: url.into(),
            name: None,
            weight: DEFAULT_UPSTREAM_WEIGHT,
        }
    }
}

/// An upstream as the backend uses it: its name decided.
#[derive(Clone, PartialEq, Eq)]
pub struct NamedUpstream {
    /// The configured name, or `host:port`.
    pub name: String,
    /// The base URL, credentials included.
    pub url: String,
    /// Its weight.
    pub weight: u32,
}

impl std::fmt::Debug for NamedUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedUpstream")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("weight", &self.weight)
            .finish()
    }
}

impl OpenAiConfig {
    /// One upstream at `base_url`, every other setting at its default.
    pub fn new(base_url: impl Into<String>) -> Self {
        OpenAiConfig {
            base_url: Some(base_url.into()),
            ..Self::with_upstreams(Vec::new())
        }
    }

    /// These upstreams, every other setting at its default.
    pub fn with_upstreams(upstreams: Vec<UpstreamConfig>) -> Self {
        OpenAiConfig {
            base_url: None,
            model: None,
            api_key_env: None,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            health_interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            health_path: DEFAULT_HEALTH_PATH.to_string(),
            eject_after: DEFAULT_EJECT_AFTER,
            eject_ms: DEFAULT_EJECT_MS,
            upstreams,
        }
    }

    /// The upstreams with their names: `base_url` as one upstream, or the
    /// `upstreams` list.
    pub fn named_upstreams(&self) -> Vec<NamedUpstream> {
        let listed = self.base_url.iter().map(UpstreamConfig::new);
        listed
            .chain(self.upstreams.iter().cloned())
            .map(|u| NamedUpstream {
                name: u.name.clone().unwrap_or_else(|| default_name(&u.url)),
                url: u.url,
                weight: u.weight,
            })
            .collect()
    }

    /// A copy fit for printing: credentials in URLs become `***`.
    pub fn redacted(&self) -> OpenAiConfig {
        let mut config = self.clone();
        if let Some(url) = &mut config.base_url {
            *url = redact_url(url).into_owned();
        }
        for upstream in &mut config.upstreams {
            upstream.url = redact_url(&upstream.url).into_owned();
        }
        config
    }

    /// Checks the table; the key at fault is relative to the model
    /// (`openai.upstreams[1].url`).
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let key = |field: &str| format!("openai.{field}");
        match (&self.base_url, self.upstreams.is_empty()) {
            (Some(_), false) => {
                return Err((
                    key("base_url"),
                    "is set together with [[models.openai.upstreams]]; use one or the other".into(),
                ));
            }
            (None, true) => {
                return Err((
                    key("base_url"),
                    "is required, or a [[models.openai.upstreams]] list".into(),
                ));
            }
            (Some(url), true) => check_url(url).map_err(|m| (key("base_url"), m))?,
            (None, false) => self.validate_upstreams()?,
        }
        if let Some(var) = &self.api_key_env
            && var.is_empty()
        {
            return Err((
                key("api_key_env"),
                "must name an environment variable".into(),
            ));
        }
        let max = MAX_HTTP_TIMEOUT_MS;
        in_range(&key("connect_timeout_ms"), self.connect_timeout_ms, 1, max)?;
        in_range(&key("read_timeout_ms"), self.read_timeout_ms, 1, max)?;
        in_range(
            &key("health_interval_ms"),
            self.health_interval_ms,
            MIN_HEALTH_INTERVAL_MS,
            MAX_HEALTH_INTERVAL_MS,
        )?;
        check_health_path(&self.health_path).map_err(|m| (key("health_path"), m))?;
        in_range(&key("eject_after"), self.eject_after, 1, MAX_EJECT_AFTER)?;
        in_range(&key("eject_ms"), self.eject_ms, 1, MAX_EJECT_MS)?;
        Ok(())
    }

    fn validate_upstreams(&self) -> Result<(), (String, String)> {
        if self.upstreams.len() > MAX_UPSTREAMS {
            return Err((
                "openai.upstreams".into(),
                format!(
                    "lists {} upstreams, at most {MAX_UPSTREAMS}",
                    self.upstreams.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        for (j, upstream) in self.upstreams.iter().enumerate() {
            let key = |field: &str| format!("openai.upstreams[{j}].{field}");
            check_url(&upstream.url).map_err(|m| (key("url"), m))?;
            if let Some(name) = &upstream.name {
                check_name(name).map_err(|m| (key("name"), m))?;
            }
            in_range(&key("weight"), upstream.weight, 1, MAX_UPSTREAM_WEIGHT)?;
            let name = upstream
                .name
                .clone()
                .unwrap_or_else(|| default_name(&upstream.url));
            if !names.insert(name.clone()) {
                let hint = if upstream.name.is_none() {
                    " (the name defaults to host:port; set `name`)"
                } else {
                    ""
                };
                return Err((
                    key("name"),
                    format!("duplicate upstream name \"{name}\"{hint}"),
                ));
            }
        }
        Ok(())
    }

    /// Checks what `serve` needs from the environment: the variable named
    /// by `api_key_env` is set. Not part of [`validate`](Self::validate),
    /// so that `check-config` does not depend on the machine it runs on.
    pub fn check_environment(&self) -> Result<(), (String, String)> {
        match &self.api_key_env {
            Some(var) if std::env::var_os(var).is_none() => Err((
                "openai.api_key_env".into(),
                format!("the environment variable {var} is not set"),
            )),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let upstreams = self.named_upstreams();
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url.as_deref().map(redact_url))
            .field("upstreams", &upstreams)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("read_timeout_ms", &self.read_timeout_ms)
            .field("health_interval_ms", &self.health_interval_ms)
            .field("health_path", &self.health_path)
            .field("eject_after", &self.eject_after)
            .field("eject_ms", &self.eject_ms)
            .finish()
    }
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &redact_url(&self.url))
            .field("name", &self.name)
            .field("weight", &self.weight)
            .finish()
    }
}

/// `host:port` of a URL (the scheme's port when none is given), without
/// its credentials; the URL itself, redacted, if it does not parse.
pub fn default_name(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => match (parsed.host_str(), parsed.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            _ => redact_url(url).into_owned(),
        },
        Err(_) => redact_url(url).into_owned(),
    }
}

/// An http(s) URL with a host, and no query or fragment (paths are
/// appended to it).
fn check_url(url: &str) -> Result<(), String> {
    let shown = redact_url(url);
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("\"{shown}\" is not an http:// or https:// URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("\"{shown}\" is not an http:// or https:// URL"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "\"{shown}\" has a query or fragment; give the base URL only"
        ));
    }
    Ok(())
}

/// Names label metrics and logs: a safe character set, bounded.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_UPSTREAM_NAME_BYTES {
        return Err(format!("must be 1 to {MAX_UPSTREAM_NAME_BYTES} bytes long"));
    }
    if let Some(c) = name.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '[' | ']'))
    }) {
        return Err(format!(
            "\"{name}\" has the character {c:?}; use letters, digits and - _ . : / [ ]"
        ));
    }
    Ok(())
}

fn check_health_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_HEALTH_PATH_BYTES {
        return Err(format!("must be 1 to {MAX_HEALTH_PATH_BYTES} bytes long"));
    }
    if let Some(c) = path
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#'))
    {
        return Err(format!(
            "has the character {c:?}; give a plain path such as \"models\" or \"/health\""
        ));
    }
    Ok(())
}

fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_read_timeout_ms() -> u64 {
    DEFAULT_READ_TIMEOUT_MS
}
fn default_health_interval_ms() -> u64 {
    DEFAULT_HEALTH_INTERVAL_MS
}
fn default_health_path() -> String {
    DEFAULT_HEALTH_PATH.to_string()
}
fn default_eject_after() -> u32 {
    DEFAULT_EJECT_AFTER
}
fn default_eject_ms() -> u64 {
    DEFAULT_EJECT_MS
}
fn default_weight() -> u32 {
    DEFAULT_UPSTREAM_WEIGHT
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    use super::*;

    fn model(openai: &str) -> String {
        format!("[[models]]\nname = \"a\"\nbackend = \"openai\"\n[models.openai]\n{openai}\n")
    }

    fn error(openai: &str) -> ConfigError {
        match Config::from_toml(&model(openai), "t.toml") {
            Ok(_) => panic!("should have been refused:\n{openai}"),
            Err(e) => e,
        }
    }

    fn openai(text: &str) -> OpenAiConfig {
        let config = Config::from_toml(&model(text), "t").expect("valid");
        config.models[0].openai.clone().expect("openai table")
    }

    const TWO: &str = "[[models.openai.upstreams]]\nurl = \"http://10.0.0.1:8000/v1\"\nname = \"gpu-1\"\nweight = 2\n[[models.openai.upstreams]]\nurl = \"https://u:pw@h.example/v1\"\n";

    #[test]
    fn upstreams_get_names_and_defaults() {
        let config = openai(TWO);
        let named = config.named_upstreams();
        assert_eq!(named.len(), 2);
        assert_eq!((named[0].name.as_str(), named[0].weight), ("gpu-1", 2));
        assert_eq!(
            (named[1].name.as_str(), named[1].weight),
            ("h.example:443", 1)
        );
        assert_eq!(config.health_path, "models");
        assert_eq!((config.eject_after, config.eject_ms), (3, 5000));
        let one = openai("base_url = \"http://127.0.0.1:8000/v1\"");
        assert_eq!(one.named_upstreams()[0].name, "127.0.0.1:8000");
        assert_eq!(default_name("http://[::1]/v1"), "[::1]:80");
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases = [
            ("", "models[0].openai.base_url"),
            (
                &format!("base_url = \"http://h/v1\"\n{TWO}"),
                "models[0].openai.base_url",
            ),
            (
                "[[models.openai.upstreams]]\nurl = \"http://a/v1\"\n[[models.openai.upstreams]]\nurl = \"ftp://b/v1\"\n",
                "models[0].openai.upstreams[1].url",
            ),
            (
                "[[models.openai.upstreams]]\nurl = \"http://a/v1\"\n[[models.openai.upstreams]]\nurl = \"http://a/v1\"\n",
                "models[0].openai.upstreams[1].name",
            ),
            (
                "[[models.openai.upstreams]]\nurl = \"http://a/v1\"\nweight = 0\n",
                "models[0].openai.upstreams[0].weight",
            ),
            (
                "[[models.openai.upstreams]]\nurl = \"http://a/v1\"\nweight = 1001\n",
                "models[0].openai.upstreams[0].weight",
            ),
            (
                "[[models.openai.upstreams]]\nurl = \"http://a/v1\"\nname = \"a b\"\n",
                "models[0].openai.upstreams[0].name",
            ),
            (
                "base_url = \"http://h/v1?x=1\"",
                "models[0].openai.base_url",
            ),
            (
                "base_url = \"http://h/v1\"\neject_after = 0",
                "models[0].openai.eject_after",
            ),
            (
                "base_url = \"http://h/v1\"\neject_ms = 60001",
                "models[0].openai.eject_ms",
            ),
            (
                "base_url = \"http://h/v1\"\nhealth_path = \"\"",
                "models[0].openai.health_path",
            ),
            (
                "base_url = \"http://h/v1\"\nhealth_path = \"a b\"",
                "models[0].openai.health_path",
            ),
            (
                "base_url = \"http://h/v1\"\napi_key_env = \"\"",
                "models[0].openai.api_key_env",
            ),
        ];
        for (text, key) in cases {
            let e = error(text);
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        }
        let many: String = (0..=MAX_UPSTREAMS)
            .map(|i| format!("[[models.openai.upstreams]]\nurl = \"http://h{i}/v1\"\n"))
            .collect();
        assert_eq!(
            error(&many).key.as_deref(),
            Some("models[0].openai.upstreams")
        );
    }

    #[test]
    fn the_line_of_an_upstream_key_is_found() {
        let e = error(
            "[[models.openai.upstreams]]\nurl = \"http://a/v1\"\n[[models.openai.upstreams]]\nurl = \"ftp://b/v1\"\n",
        );
        // [[models]], name, backend, [models.openai], [[..]], url, [[..]], url
        assert_eq!(e.line, Some(8), "{e}");
    }

    #[test]
    fn the_environment_is_checked_only_when_asked() {
        let unset =
            openai("base_url = \"http://h/v1\"\napi_key_env = \"INFERGATE_SURELY_UNSET_VAR\"");
        let (key, message) = unset.check_environment().expect_err("unset");
        assert_eq!(key, "openai.api_key_env");
        assert!(message.contains("INFERGATE_SURELY_UNSET_VAR"));
        // Always set in a test process.
        let set = openai("base_url = \"http://h/v1\"\napi_key_env = \"PATH\"");
        assert!(set.check_environment().is_ok());
        assert!(
            openai("base_url = \"http://h/v1\"")
                .check_environment()
                .is_ok()
        );
    }

    #[test]
    fn credentials_in_upstream_urls_are_never_printed() {
        let config = Config::from_toml(&model(TWO), "t").expect("valid");
        for printed in [format!("{config:?}"), config.redacted().to_toml()] {
            assert!(!printed.contains(":pw@"), "{printed}");
            assert!(printed.contains("u:***@h.example"), "{printed}");
        }
        // The rendered file reads back the same.
        let again = Config::from_toml(&config.to_toml(), "again").expect("round trip");
        assert_eq!(
            again.models[0]
                .openai
                .as_ref()
                .map(OpenAiConfig::named_upstreams),
            config.models[0]
                .openai
                .as_ref()
                .map(OpenAiConfig::named_upstreams)
        );
    }
}
