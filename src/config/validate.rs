//! Validation: what the types cannot check (ranges, uniqueness, matching
//! backend tables), each failure naming the key at fault.

use std::collections::HashSet;

use crate::config::{
    BackendKind, Config, MAX_CONNECTION_TIMEOUT_SECONDS, MAX_CONNECTIONS, MAX_METRICS_CONNECTIONS,
    MAX_METRICS_TIMEOUT_MS, MAX_QUEUE_CAPACITY, MAX_WORKERS, ModelConfig, ServerConfig,
};

impl Config {
    /// Checks what the types cannot: ranges, uniqueness, matching sections.
    /// Returns the key at fault and what is wrong with it.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.server.max_message_bytes < 1024 {
            return Err((
                "server.max_message_bytes".into(),
                "must be at least 1024".into(),
            ));
        }
        if self.server.max_concurrent_streams == 0 {
            return Err((
                "server.max_concurrent_streams".into(),
                "must be at least 1".into(),
            ));
        }
        validate_connection_limits(&self.server)?;
        if self.models.is_empty() {
            return Err((
                "models".into(),
                "at least one [[models]] entry is required".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, model) in self.models.iter().enumerate() {
            let key = |field: &str| format!("models[{i}].{field}");
            validate_model_name(&model.name).map_err(|m| (key("name"), m))?;
            if !names.insert(model.name.as_str()) {
                return Err((
                    key("name"),
                    format!("duplicate model name \"{}\"", model.name),
                ));
            }
            if model.workers == 0 || model.workers > MAX_WORKERS {
                return Err((
                    key("workers"),
                    format!("must be between 1 and {MAX_WORKERS}, got {}", model.workers),
                ));
            }
            if model.queue_capacity > MAX_QUEUE_CAPACITY {
                return Err((
                    key("queue_capacity"),
                    format!(
                        "must be at most {MAX_QUEUE_CAPACITY}, got {}",
                        model.queue_capacity
                    ),
                ));
            }
            if model.timeout_ms == 0 {
                return Err((key("timeout_ms"), "must be at least 1".into()));
            }
            if model.max_tokens == 0 {
                return Err((key("max_tokens"), "must be at least 1".into()));
            }
            validate_backend_section(model).map_err(|(field, m)| (key(field), m))?;
        }
        Ok(())
    }
}

/// Checks the limits of both listeners: each between 1 and its maximum.
fn validate_connection_limits(server: &ServerConfig) -> Result<(), (String, String)> {
    let limits = [
        (
            "max_connections",
            server.max_connections as u64,
            MAX_CONNECTIONS as u64,
        ),
        (
            "idle_timeout_seconds",
            server.idle_timeout_seconds,
            MAX_CONNECTION_TIMEOUT_SECONDS,
        ),
        (
            "first_call_timeout_seconds",
            server.first_call_timeout_seconds,
            MAX_CONNECTION_TIMEOUT_SECONDS,
        ),
        (
            "metrics_max_connections",
            server.metrics_max_connections as u64,
            MAX_METRICS_CONNECTIONS as u64,
        ),
        (
            "metrics_header_timeout_ms",
            server.metrics_header_timeout_ms,
            MAX_METRICS_TIMEOUT_MS,
        ),
        (
            "metrics_connection_timeout_ms",
            server.metrics_connection_timeout_ms,
            MAX_METRICS_TIMEOUT_MS,
        ),
    ];
    for (key, value, max) in limits {
        if value == 0 || value > max {
            return Err((
                format!("server.{key}"),
                format!("must be between 1 and {max}, got {value}"),
            ));
        }
    }
    Ok(())
}

/// Checks that a model has the settings table of its backend, and no other.
fn validate_backend_section(model: &ModelConfig) -> Result<(), (&'static str, String)> {
    let sections = [
        (
            BackendKind::Simulated,
            "simulated",
            model.simulated.is_some(),
        ),
        (BackendKind::Process, "process", model.process.is_some()),
        (BackendKind::Openai, "openai", model.openai.is_some()),
    ];
    for (kind, table, present) in sections {
        if present && kind != model.backend {
            return Err((
                table,
                format!(
                    "is set but backend is \"{}\", not \"{}\"",
                    model.backend.as_str(),
                    kind.as_str()
                ),
            ));
        }
    }
    match model.backend {
        BackendKind::Simulated => {
            if model.simulated.as_ref().and_then(|s| s.output_tokens) == Some(0) {
                return Err(("simulated.output_tokens", "must be at least 1".into()));
            }
        }
        BackendKind::Process => {
            let Some(process) = &model.process else {
                return Err((
                    "process",
                    "backend \"process\" needs a [models.process] table with `command`".into(),
                ));
            };
            if process
                .command
                .first()
                .is_none_or(|program| program.is_empty())
            {
                return Err((
                    "process.command",
                    "must name a program, e.g. [\"python3\", \"worker.py\"]".into(),
                ));
            }
        }
        BackendKind::Openai => {
            let Some(openai) = &model.openai else {
                return Err((
                    "openai",
                    "backend \"openai\" needs a [models.openai] table with `base_url`".into(),
                ));
            };
            if !(openai.base_url.starts_with("http://") || openai.base_url.starts_with("https://"))
            {
                return Err((
                    "openai.base_url",
                    format!("\"{}\" is not an http:// or https:// URL", openai.base_url),
                ));
            }
            if let Some(var) = &openai.api_key_env {
                if var.is_empty() {
                    return Err((
                        "openai.api_key_env",
                        "must name an environment variable".into(),
                    ));
                }
                if std::env::var_os(var).is_none() {
                    return Err((
                        "openai.api_key_env",
                        format!("the environment variable {var} is not set"),
                    ));
                }
            }
            if openai.connect_timeout_ms == 0 || openai.read_timeout_ms == 0 {
                return Err(("openai", "timeouts must be at least 1 ms".into()));
            }
        }
    }
    Ok(())
}

/// Model names appear in metrics labels, health service names and logs, so
/// they are kept to a safe character set.
pub(crate) fn validate_model_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 128 {
        return Err("must be at most 128 bytes".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')))
    {
        return Err(format!(
            "\"{name}\" has the character {c:?}; use letters, digits and - _ . : /"
        ));
    }
    Ok(())
}
