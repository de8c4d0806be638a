//! API keys: who may call which model, how often and how many at once.
//!
//! With `[auth]` in the configuration, a Generate, GenerateStream or
//! GenerateBatch call needs `authorization: Bearer <key>` metadata. The
//! keys file holds only SHA-256 hashes ([`keys`]); a call's key is hashed
//! and looked up, and the key's entry becomes the call's [`Caller`]: its
//! name is the tenant (in fair queuing and the `tenant` label), its model
//! patterns, rate and concurrency limits ([`limits`]) are checked before
//! the call is admitted to a model's queue. The file is re-read when it
//! changes and on SIGHUP; a key whose entry did not change keeps its rate
//! bucket and its calls in flight. A file that fails to parse is logged
//! and the keys already loaded stay in force.
//!
//! Outcomes: no key or an unknown one → UNAUTHENTICATED; a model the key
//! may not use → PERMISSION_DENIED (naming neither the key nor the models
//! it may use); over its rate or concurrency → RESOURCE_EXHAUSTED naming
//! the limit. Keys never reach logs or metrics; names do.

pub mod command;
pub mod keys;
pub(crate) mod limits;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use metrics::{counter, gauge};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataMap;
use wildmatch::WildMatch;

use crate::config::{AuthConfig, ListModelsAccess, ReflectionAccess};
use crate::error::Error;
use crate::metrics::{AUTH_FAILURES_TOTAL, AUTH_KEYS, AUTH_RELOADS_TOTAL};
use crate::tenant::Caller;
use keys::{KeyEntry, KeysFile, MAX_KEY_CHARS};
use limits::{CallPermit, Limits};

/// A loaded key: what a call carrying it may do.
pub struct Key {
    entry: KeyEntry,
    name: Arc<str>,
    models: Option<Vec<WildMatch>>,
    limits: Limits,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The name only: the entry's hash is not a secret, but there is no
        // reason to print it either.
        f.debug_struct("Key").field("name", &self.name).finish()
    }
}

impl Key {
    fn new(entry: KeyEntry) -> Key {
        Key {
            name: Arc::from(entry.name.as_str()),
            models: entry
                .models
                .as_ref()
                .map(|patterns| patterns.iter().map(|p| WildMatch::new(p)).collect()),
            limits: Limits::new(&entry),
            entry,
        }
    }

    /// Whether this key may call `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(model)))
    }

    /// The caller a call with this key is.
    fn caller(self: &Arc<Self>) -> Caller {
        Caller {
            tenant: self.name.clone(),
            weight: self.entry.weight,
            max_priority: self.entry.max_priority,
            key: Some(self.clone()),
        }
    }

    /// Checks a call to `model` against the key: its models, then its
    /// concurrency and rate.
    pub(crate) fn admit(&self, model: &str) -> Result<CallPermit, Error> {
        // An empty name is INVALID_ARGUMENT, said by the gateway.
        if !model.is_empty() && !self.allows(model) {
            return Err(Error::PermissionDenied {
                model: model.to_string(),
            });
        }
        self.limits.admit()
    }
}

/// Why a call was not authenticated: the `reason` label of
/// `infergate_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization` metadata.
    Missing,
    /// Not `Bearer <key>`, or not text, or too long.
    Malformed,
    /// A key this gateway does not know (or no longer knows).
    Unknown,
}

impl AuthFailure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
        }
    }

    /// The status a client gets: UNAUTHENTICATED, saying what to send.
    pub fn to_status(self, request_id: &str) -> Status {
        let why = match self {
            AuthFailure::Missing => {
                "this gateway requires an API key: send the metadata `authorization: Bearer <key>`"
            }
            AuthFailure::Malformed => {
                "the authorization metadata must be `Bearer <key>` (ASCII, at most 256 characters)"
            }
            AuthFailure::Unknown => "the API key is not valid (unknown, or removed)",
        };
        Status::unauthenticated(format!("UNAUTHENTICATED: {why} [request {request_id}]"))
    }
}

/// The keys of one version of the file, by hash.
#[derive(Default)]
struct KeySet {
    by_hash: HashMap<[u8; 32], Arc<Key>>,
}

/// The loaded keys and the `[auth]` settings; shared by the service and
/// the reload task.
pub struct Auth {
    path: PathBuf,
    reload_interval: Duration,
    reflection: ReflectionAccess,
    list_models: ListModelsAccess,
    keys: RwLock<Arc<KeySet>>,
    /// The file's bytes as last applied (or last refused), so an unchanged
    /// file is not parsed again.
    seen: Mutex<Vec<u8>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("keys_file", &self.path)
            .field("keys", &self.key_count())
            .finish()
    }
}

/// What a reload of the keys file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The file is as it was.
    Unchanged,
    /// The new keys are in force: how many.
    Applied(usize),
    /// The file could not be used; the old keys stay.
    Refused(String),
}

impl Auth {
    /// Reads the keys file named by `config`; the error names the file and
    /// the entry at fault.
    pub fn load(config: &AuthConfig) -> Result<Auth, String> {
        // Loaded before any model: the gauge needs the recorder in place.
        crate::metrics::recorder();
        let path = config.keys_file.clone();
        let text = keys::read_bytes(&path).map_err(|why| describe(&path, why))?;
        let auth = Auth {
            reload_interval: Duration::from_millis(config.reload_interval_ms),
            reflection: config.reflection,
            list_models: config.list_models,
            keys: RwLock::new(Arc::default()),
            seen: Mutex::new(Vec::new()),
            path,
        };
        match auth.apply(text) {
            Reloaded::Refused(why) => Err(describe(&auth.path, why)),
            _ => Ok(auth),
        }
    }

    /// Who may use reflection.
    pub fn reflection(&self) -> ReflectionAccess {
        self.reflection
    }

    /// What ListModels shows.
    pub fn list_models(&self) -> ListModelsAccess {
        self.list_models
    }

    /// Keys loaded now.
    pub fn key_count(&self) -> usize {
        self.current().by_hash.len()
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The caller a request's `authorization` metadata names. Failures are
    /// counted in `infergate_auth_failures_total`.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthFailure> {
        let result = self.find(metadata);
        if let Err(failure) = &result {
            counter!(AUTH_FAILURES_TOTAL, "reason" => failure.as_str()).increment(1);
        }
        result
    }

    fn find(&self, metadata: &MetadataMap) -> Result<Caller, AuthFailure> {
        let value = metadata.get("authorization").ok_or(AuthFailure::Missing)?;
        let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
        if value.len() > MAX_KEY_CHARS + 7 {
            return Err(AuthFailure::Malformed);
        }
        let (scheme, key) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
        let key = key.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
            return Err(AuthFailure::Malformed);
        }
        let hash = keys::hash(key);
        self.current()
            .by_hash
            .get(&hash)
            .map(Key::caller)
            .ok_or(AuthFailure::Unknown)
    }

    /// Re-reads the keys file if it changed.
    pub fn reload(&self) -> Reloaded {
        match keys::read_bytes(&self.path) {
            Ok(text) => self.apply(text),
            Err(why) => self.refused(why),
        }
    }

    /// Puts the keys of `text` in force, unless it is what was seen last.
    /// Keys whose entry did not change keep their state (rate bucket,
    /// calls in flight).
    fn apply(&self, text: Vec<u8>) -> Reloaded {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if *seen == text && !seen.is_empty() {
            return Reloaded::Unchanged;
        }
        let parsed = std::str::from_utf8(&text)
            .map_err(|_| "is not UTF-8 text".to_string())
            .and_then(|text| {
                // Most likely caught between a truncation and a write: an
                // empty file revoking every key is refused (a file with
                // only a comment in it does revoke them all).
                if text.is_empty() {
                    return Err("is empty (write it atomically: a temporary file, then rename; `infergate keys` does)".into());
                }
                KeysFile::parse(text)
            });
        *seen = text;
        drop(seen);
        let file = match parsed {
            Ok(file) => file,
            Err(why) => return self.refused(why),
        };
        let old = self.current();
        let mut set = KeySet::default();
        for entry in file.keys {
            // Validated: 64 hex digits.
            let Some(hash) = keys::parse_hex(&entry.sha256) else {
                continue;
            };
            let key = match old.by_hash.get(&hash) {
                Some(key) if key.entry == entry => key.clone(),
                _ => Arc::new(Key::new(entry)),
            };
            set.by_hash.insert(hash, key);
        }
        let count = set.by_hash.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        gauge!(AUTH_KEYS).set(count as f64);
        counter!(AUTH_RELOADS_TOTAL, "result" => "ok").increment(1);
        Reloaded::Applied(count)
    }

    fn refused(&self, why: String) -> Reloaded {
        counter!(AUTH_RELOADS_TOTAL, "result" => "error").increment(1);
        Reloaded::Refused(why)
    }

    /// Re-reads the keys file every `reload_interval_ms` and on SIGHUP,
    /// until `stop`. Reading runs on the blocking pool.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(self.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hup = async {
                match &mut hangup {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = hup => tracing::info!(file = %self.path.display(), "SIGHUP: re-reading the keys file"),
            }
            let auth = self.clone();
            let Ok(reloaded) = tokio::task::spawn_blocking(move || auth.reload()).await else {
                continue;
            };
            match reloaded {
                Reloaded::Unchanged => {}
                Reloaded::Applied(keys) => {
                    tracing::info!(file = %self.path.display(), keys, "keys file reloaded");
                }
                Reloaded::Refused(why) => tracing::warn!(
                    file = %self.path.display(),
                    error = %why,
                    "keys file not reloaded; the keys already loaded stay in force"
                ),
            }
        }
    }
}

fn describe(path: &Path, why: String) -> String {
    format!("auth.keys_file: {}: {why}", path.display())
}

/// Whether a caller may see `model` in ListModels under `access`.
pub(crate) fn lists(access: ListModelsAccess, caller: &Caller, model: &str) -> bool {
    match access {
        ListModelsAccess::Allowed => caller.key.as_ref().is_none_or(|key| key.allows(model)),
        ListModelsAccess::All | ListModelsAccess::Open => true,
    }
}
