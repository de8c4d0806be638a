//! The keys file: `[[keys]]` entries, each a name, the SHA-256 of its key,
//! the models it may use and its limits. The key itself is never stored:
//! `infergate keys add` prints it once and writes only its hash.

use std::fmt::Write as _;
use std::path::Path;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::tenant::{ANONYMOUS, MAX_PRIORITY};

/// What every key starts with, so that a leaked one is recognisable (and
/// secret scanners can be taught it).
pub const KEY_PREFIX: &str = "ig_";
/// Random bytes in a key: 256 bits.
const KEY_BYTES: usize = 32;
/// Longest accepted `authorization` value; longer is malformed.
pub const MAX_KEY_CHARS: usize = 256;
/// Longest key name (a metric label).
pub const MAX_NAME_CHARS: usize = 64;
/// Most keys in one file.
pub const MAX_KEYS: usize = 10_000;
/// Most model patterns per key.
pub const MAX_MODEL_PATTERNS: usize = 64;
/// Highest weight in fair queuing.
pub const MAX_WEIGHT: u32 = 1000;
/// Highest rate, calls per second.
pub const MAX_RATE: f64 = 1_000_000.0;
/// Highest burst or concurrency limit.
pub const MAX_LIMIT: u32 = 1_000_000;
/// Largest keys file read: 10,000 entries take about 3 MB.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a keys file, refusing one larger than [`MAX_FILE_BYTES`] before
/// reading it (a file replaced by something huge must not take the
/// gateway's memory).
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("is larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(bytes)
}

/// The keys file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// One entry per key.
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}

/// One key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who holds it: the `tenant` label of its calls and its name in logs.
    pub name: String,
    /// The SHA-256 of the key, in hex.
    pub sha256: String,
    /// Glob patterns (`*`, `?`) of the models it may call; all models when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Calls per second it may start (a token bucket); unlimited when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
    /// How many calls it may start at once above the rate (the bucket's
    /// size); the rate rounded up (at least 1) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Calls it may have in flight at once; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// The highest request `priority` its calls get (0 to 100).
    #[serde(default)]
    pub max_priority: u32,
    /// Its share of a model's workers when tenants queue (1 to 1000).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl KeysFile {
    /// Parses and checks a keys file; errors name the entry and field
    /// (`keys[2].rate_per_second: ...`), never a key.
    pub fn parse(text: &str) -> Result<KeysFile, String> {
        let file: KeysFile = toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {message}")
                }
                None => message,
            }
        })?;
        file.validate()?;
        Ok(file)
    }

    /// Reads and checks the file at `path`.
    pub fn read(path: &Path) -> Result<KeysFile, String> {
        let bytes = read_bytes(path)?;
        let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
        KeysFile::parse(&text)
    }

    fn validate(&self) -> Result<(), String> {
        if self.keys.len() > MAX_KEYS {
            return Err(format!(
                "keys: {} entries, at most {MAX_KEYS}",
                self.keys.len()
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            key.validate()
                .map_err(|(field, why)| format!("keys[{i}].{field}: {why}"))?;
            if !names.insert(key.name.as_str()) {
                return Err(format!("keys[{i}].name: \"{}\" is used twice", key.name));
            }
            if !hashes.insert(key.sha256.to_ascii_lowercase()) {
                return Err(format!(
                    "keys[{i}].sha256: the same key is listed twice (\"{}\")",
                    key.name
                ));
            }
        }
        Ok(())
    }

    /// The file as TOML, with a header saying what it holds.
    pub fn to_toml(&self) -> String {
        // Plain strings and numbers: serialising cannot fail.
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!("{KEYS_FILE_HEADER}{body}")
    }
}

/// The first lines of a keys file written by `infergate keys`.
pub const KEYS_FILE_HEADER: &str = "# infergate API keys. Only SHA-256 hashes of the keys are stored here;\n# `infergate keys add NAME --file THIS_FILE` creates one and prints the key once.\n\n";

impl KeyEntry {
    /// A key of all models, without limits, priority 0, weight 1.
    pub fn new(name: impl Into<String>, sha256: impl Into<String>) -> KeyEntry {
        KeyEntry {
            name: name.into(),
            sha256: sha256.into(),
            models: None,
            rate_per_second: None,
            burst: None,
            max_concurrency: None,
            max_priority: 0,
            weight: default_weight(),
        }
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        check_name(&self.name).map_err(|why| ("name", why))?;
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((
                "sha256",
                "must be 64 hex digits (the SHA-256 of the key; see `infergate keys add`)".into(),
            ));
        }
        if let Some(models) = &self.models {
            if models.len() > MAX_MODEL_PATTERNS {
                return Err(("models", format!("at most {MAX_MODEL_PATTERNS} patterns")));
            }
            if let Some(i) = models.iter().position(|m| m.is_empty() || m.len() > 256) {
                return Err(("models", format!("pattern {i} must be 1 to 256 characters")));
            }
        }
        if let Some(rate) = self.rate_per_second
            && !(rate > 0.0 && rate <= MAX_RATE)
        {
            return Err((
                "rate_per_second",
                format!("must be above 0 and at most {MAX_RATE}, got {rate}"),
            ));
        }
        for (field, value) in [
            ("burst", self.burst),
            ("max_concurrency", self.max_concurrency),
        ] {
            if let Some(n) = value
                && !(1..=MAX_LIMIT).contains(&n)
            {
                return Err((field, format!("must be between 1 and {MAX_LIMIT}, got {n}")));
            }
        }
        if self.burst.is_some() && self.rate_per_second.is_none() {
            return Err(("burst", "is set without rate_per_second".into()));
        }
        if self.max_priority > MAX_PRIORITY {
            return Err((
                "max_priority",
                format!(
                    "must be between 0 and {MAX_PRIORITY}, got {}",
                    self.max_priority
                ),
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err((
                "weight",
                format!("must be between 1 and {MAX_WEIGHT}, got {}", self.weight),
            ));
        }
        Ok(())
    }
}

/// Checks a key name: 1 to 64 letters, digits, `.`, `_` or `-`, and not
/// `anonymous` (the tenant of calls without a key).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_CHARS {
        return Err(format!("must be 1 to {MAX_NAME_CHARS} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may hold only letters, digits, '.', '_' and '-'".into());
    }
    if name == ANONYMOUS {
        return Err(format!(
            "\"{ANONYMOUS}\" is the tenant of calls without a key"
        ));
    }
    Ok(())
}

/// The SHA-256 of a key, as the file stores it.
pub fn hash(key: &str) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses 64 hex digits (checked by validation) into a hash.
pub fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random key: `ig_` and 64 hex digits (256 bits from the OS).
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; KEY_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    Ok(format!("{KEY_PREFIX}{}", hex(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> KeyEntry {
        KeyEntry::new(name, hex(&hash(name)))
    }

    #[test]
    fn a_huge_keys_file_is_refused_before_it_is_read_whole() {
        let path = std::env::temp_dir().join(format!("infergate-huge-keys-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        // Sparse: no disk written.
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = KeysFile::read(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn keys_are_random_and_hashes_round_trip() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == 3 + 64, "{a}");
        let h = hash(&a);
        assert_eq!(parse_hex(&hex(&h)), Some(h));
        assert_eq!(parse_hex("zz"), None);
    }

    #[test]
    fn the_file_round_trips_and_errors_name_the_entry() {
        let file = KeysFile {
            keys: vec![entry("team-a"), entry("team-b")],
        };
        let text = file.to_toml();
        assert!(text.starts_with("# infergate API keys"));
        let back = KeysFile::parse(&text).unwrap();
        assert_eq!(back.keys, file.keys);

        let mut bad = file.clone();
        bad.keys[1].weight = 0;
        let e = KeysFile::parse(&bad.to_toml()).unwrap_err();
        assert!(e.starts_with("keys[1].weight: "), "{e}");

        let mut bad = file.clone();
        bad.keys[1].name = "team-a".into();
        let e = KeysFile::parse(&bad.to_toml()).unwrap_err();
        assert!(e.contains("keys[1].name") && e.contains("twice"), "{e}");

        let mut bad = file.clone();
        bad.keys[0].sha256 = "abc".into();
        let e = KeysFile::parse(&bad.to_toml()).unwrap_err();
        assert!(e.starts_with("keys[0].sha256"), "{e}");

        let e = KeysFile::parse("[[keys]]\nname = \"x\"\nsha256 = 5\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        assert!(check_name("anonymous").is_err());
        assert!(check_name("a b").is_err());
    }
}
