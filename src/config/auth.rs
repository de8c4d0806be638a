//! The `[auth]` table: where the API keys are, and what stays open
//! without one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::validate::in_range;

/// Fastest reload poll of the keys file.
pub const MIN_KEYS_RELOAD_MS: u64 = 100;
/// Slowest reload poll of the keys file: one hour.
pub const MAX_KEYS_RELOAD_MS: u64 = 3_600_000;

/// `[auth]`: with it, every Generate, GenerateStream and GenerateBatch call
/// needs an API key (`authorization: Bearer <key>`); without it, calls are
/// anonymous.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The keys file (TOML, `[[keys]]` entries holding SHA-256 hashes,
    /// written by `infergate keys add`). Relative to the configuration
    /// file's directory.
    pub keys_file: PathBuf,
    /// How often the keys file is checked for changes (it is also re-read
    /// on SIGHUP).
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
    /// Who may use server reflection: `open` (anyone, so grpcurl and ghz
    /// work without a key) or `key` (any valid key).
    #[serde(default)]
    pub reflection: ReflectionAccess,
    /// What ListModels answers: `allowed` (a key is needed, and only the
    /// models it may use are listed), `all` (a key is needed, every model
    /// is listed) or `open` (no key needed, every model listed).
    #[serde(default)]
    pub list_models: ListModelsAccess,
}

/// Who may use server reflection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReflectionAccess {
    /// Anyone.
    #[default]
    Open,
    /// Callers with a valid key.
    Key,
}

/// What ListModels shows, and to whom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListModelsAccess {
    /// A key is needed; only the models it may use are listed.
    #[default]
    Allowed,
    /// A key is needed; every model is listed.
    All,
    /// No key is needed; every model is listed.
    Open,
}

fn default_reload_ms() -> u64 {
    1000
}

impl AuthConfig {
    /// Checks the ranges; the keys file itself is read by
    /// [`crate::auth::Auth::load`].
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        if self.keys_file.as_os_str().is_empty() {
            return Err(("auth.keys_file".into(), "must not be empty".into()));
        }
        in_range(
            "auth.reload_interval_ms",
            self.reload_interval_ms,
            MIN_KEYS_RELOAD_MS,
            MAX_KEYS_RELOAD_MS,
        )
    }
}
