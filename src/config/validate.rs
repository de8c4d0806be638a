//! Validation: what the types cannot check (ranges, uniqueness, matching
//! backend tables), each failure naming the key at fault.

use std::collections::HashSet;

use std::fmt::Display;

use crate::config::{
    BackendKind, Config, MAX_BATCH_ITEMS, MAX_CACHE_BYTES, MAX_CACHE_ENTRIES,
    MAX_CACHE_TTL_SECONDS, MAX_CANCEL_GRACE_MS, MAX_CONCURRENT_STREAMS,
    MAX_CONNECTION_TIMEOUT_SECONDS, MAX_CONNECTIONS, MAX_FALLBACKS, MAX_MAX_TOKENS,
    MAX_MESSAGE_BYTES, MAX_METRICS_CONNECTIONS, MAX_METRICS_TIMEOUT_MS, MAX_QUEUE_CAPACITY,
    MAX_SHUTDOWN_GRACE_SECONDS, MAX_SIMULATED_LATENCY_MS, MAX_SIMULATED_OUTPUT_TOKENS,
    MAX_START_TIMEOUT_MS, MAX_TIMEOUT_MS, MAX_WORKERS, MIN_MESSAGE_BYTES, ModelConfig,
    ServerConfig,
};

/// Checks that `value` of `key` lies in `min..=max`, saying so otherwise.
pub(crate) fn in_range<T: PartialOrd + Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), (String, String)> {
    if value < min || value > max {
        return Err((
            key.to_string(),
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

impl Config {
    /// Checks what the types cannot: ranges, uniqueness, matching sections.
    /// Returns the key at fault and what is wrong with it.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let server = &self.server;
        in_range(
            "server.shutdown_grace_seconds",
            server.shutdown_grace_seconds,
            0,
            MAX_SHUTDOWN_GRACE_SECONDS,
        )?;
        in_range(
            "server.max_message_bytes",
            server.max_message_bytes,
            MIN_MESSAGE_BYTES,
            MAX_MESSAGE_BYTES,
        )?;
        in_range(
            "server.max_concurrent_streams",
            server.max_concurrent_streams,
            1,
            MAX_CONCURRENT_STREAMS,
        )?;
        validate_connection_limits(server)?;
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        if let Some(tls) = &server.tls {
            tls.validate()?;
        }
        in_range(
            "server.max_batch_items",
            server.max_batch_items,
            1,
            MAX_BATCH_ITEMS,
        )?;
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
            in_range(&key("workers"), model.workers, 1, MAX_WORKERS)?;
            in_range(
                &key("queue_capacity"),
                model.queue_capacity,
                0,
                MAX_QUEUE_CAPACITY,
            )?;
            in_range(
                &key("max_timeout_ms"),
                model.max_timeout_ms,
                1,
                MAX_TIMEOUT_MS,
            )?;
            in_range(
                &key("timeout_ms"),
                model.timeout_ms,
                1,
                model.max_timeout_ms,
            )
            .map_err(|(k, m)| (k, format!("{m} (it may not exceed max_timeout_ms)")))?;
            in_range(&key("max_tokens"), model.max_tokens, 1, MAX_MAX_TOKENS)?;
            validate_backend_section(model).map_err(|(field, m)| (key(&field), m))?;
            validate_cache(model).map_err(|(field, m)| (key(field), m))?;
        }
        validate_fallbacks(&self.models)
    }
}

/// Checks a model's `[models.cache]` bounds.
fn validate_cache(model: &ModelConfig) -> Result<(), (&'static str, String)> {
    let Some(cache) = &model.cache else {
        if model.cache_nondeterministic {
            return Err((
                "cache_nondeterministic",
                "is set but the model has no [models.cache] table".into(),
            ));
        }
        return Ok(());
    };
    let within = |key: &'static str, value: u64, max: u64| {
        in_range(key, value, 1, max).map_err(|(_, m)| (key, m))
    };
    within("cache.max_entries", cache.max_entries, MAX_CACHE_ENTRIES)?;
    within("cache.max_bytes", cache.max_bytes, MAX_CACHE_BYTES)?;
    // NaN fails both comparisons, so it is refused too.
    if !(cache.ttl_seconds > 0.0 && cache.ttl_seconds <= MAX_CACHE_TTL_SECONDS) {
        return Err((
            "cache.ttl_seconds",
            format!(
                "must be above 0 and at most {MAX_CACHE_TTL_SECONDS}, got {}",
                cache.ttl_seconds
            ),
        ));
    }
    Ok(())
}

/// Checks every model's `fallbacks`: served names, not the model itself,
/// no repeats, and no cycle through other models' fallbacks (a call could
/// otherwise bounce between them until its deadline).
pub(crate) fn validate_fallbacks(models: &[ModelConfig]) -> Result<(), (String, String)> {
    let index: std::collections::HashMap<&str, usize> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    for (i, model) in models.iter().enumerate() {
        let key = format!("models[{i}].fallbacks");
        if model.fallbacks.len() > MAX_FALLBACKS {
            return Err((
                key,
                format!(
                    "lists {} models, at most {MAX_FALLBACKS}",
                    model.fallbacks.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (j, name) in model.fallbacks.iter().enumerate() {
            let key = format!("{key}[{j}]");
            if !index.contains_key(name.as_str()) {
                let known: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                return Err((
                    key,
                    format!(
                        "\"{name}\" is not a configured model; the models are: {}",
                        known.join(", ")
                    ),
                ));
            }
            if *name == model.name {
                return Err((key, format!("\"{name}\" is the model itself")));
            }
            if !seen.insert(name.as_str()) {
                return Err((key, format!("\"{name}\" is listed twice")));
            }
        }
    }
    // A cycle: a path of fallbacks from a model back to itself.
    for (i, model) in models.iter().enumerate() {
        let mut path = vec![model.name.as_str()];
        if let Some(cycle) = find_cycle(models, &index, i, &mut path) {
            return Err((
                format!("models[{i}].fallbacks"),
                format!("form a cycle: {}", cycle.join(" -> ")),
            ));
        }
    }
    Ok(())
}

/// Depth-first search from `at` for a fallback path back to `path[0]`.
fn find_cycle<'a>(
    models: &'a [ModelConfig],
    index: &std::collections::HashMap<&str, usize>,
    at: usize,
    path: &mut Vec<&'a str>,
) -> Option<Vec<&'a str>> {
    for next in &models[at].fallbacks {
        if *next == path[0] {
            let mut cycle = path.clone();
            cycle.push(next.as_str());
            return Some(cycle);
        }
        // Names were checked above; a path longer than the model count
        // has repeated a model other than the start (that one's own
        // search reports it).
        let Some(&j) = index.get(next.as_str()) else {
            continue;
        };
        if path.contains(&next.as_str()) || path.len() > models.len() {
            continue;
        }
        path.push(next.as_str());
        if let Some(cycle) = find_cycle(models, index, j, path) {
            return Some(cycle);
        }
        path.pop();
    }
    None
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
fn validate_backend_section(model: &ModelConfig) -> Result<(), (String, String)> {
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
                table.into(),
                format!(
                    "is set but backend is \"{}\", not \"{}\"",
                    model.backend.as_str(),
                    kind.as_str()
                ),
            ));
        }
    }
    let within = |key: &str, value: u64, min: u64, max: u64| in_range(key, value, min, max);
    match model.backend {
        BackendKind::Simulated => {
            if let Some(simulated) = &model.simulated {
                let max = MAX_SIMULATED_LATENCY_MS;
                within("simulated.latency_ms", simulated.latency_ms, 0, max)?;
                within(
                    "simulated.token_latency_ms",
                    simulated.token_latency_ms,
                    0,
                    max,
                )?;
                if let Some(tokens) = simulated.output_tokens {
                    let max = u64::from(MAX_SIMULATED_OUTPUT_TOKENS);
                    within("simulated.output_tokens", u64::from(tokens), 1, max)?;
                }
            }
        }
        BackendKind::Process => {
            let Some(process) = &model.process else {
                return Err((
                    "process".into(),
                    "backend \"process\" needs a [models.process] table with `command`".into(),
                ));
            };
            if process
                .command
                .first()
                .is_none_or(|program| program.is_empty())
            {
                return Err((
                    "process.command".into(),
                    "must name a program, e.g. [\"python3\", \"worker.py\"]".into(),
                ));
            }
            let grace = process.cancel_grace_ms;
            within("process.cancel_grace_ms", grace, 0, MAX_CANCEL_GRACE_MS)?;
            let start = process.start_timeout_ms;
            within("process.start_timeout_ms", start, 1, MAX_START_TIMEOUT_MS)?;
        }
        BackendKind::Openai => {
            let Some(openai) = &model.openai else {
                return Err((
                    "openai".into(),
                    "backend \"openai\" needs a [models.openai] table with `base_url` or [[models.openai.upstreams]]".into(),
                ));
            };
            openai.validate()?;
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
