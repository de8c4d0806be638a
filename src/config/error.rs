//! Configuration errors: the key and line at fault, found from the TOML
//! parser's error or, for validation errors, from the text itself.

use std::fmt;

/// A configuration that cannot be used, with the key (and line) at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the configuration came from: a file path or "embedded default".
    pub source: String,
    /// The line, when the parser knows it (1-based).
    pub line: Option<usize>,
    /// The key at fault, as a path such as `models[1].workers`, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Turns a TOML error into a ConfigError with its line, and the key of that
/// line when the parser's message does not name one.
pub(super) fn parse_error(error: toml::de::Error, text: &str, source: &str) -> ConfigError {
    let line = error
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let key = line.and_then(|l| {
        let (key, _) = text.lines().nth(l - 1)?.split_once('=')?;
        Some(match table_at_line(text, l) {
            Some(table) => format!("{table}.{}", key.trim()),
            None => key.trim().to_string(),
        })
    });
    ConfigError {
        source: source.to_string(),
        line,
        key,
        message: error.message().trim().to_string(),
    }
}

/// The table a line belongs to, as a key path: `server`, `models[1]`,
/// `models[1].simulated`.
fn table_at_line(text: &str, line: usize) -> Option<String> {
    let mut table = None;
    let mut models = 0usize;
    for l in text.lines().take(line) {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim();
            if name == "models" {
                models += 1;
                table = Some(format!("models[{}]", models - 1));
            } else {
                table = Some(name.to_string());
            }
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.trim();
            table = Some(match name.strip_prefix("models.") {
                Some(sub) if models > 0 => format!("models[{}].{sub}", models - 1),
                _ => name.to_string(),
            });
        }
    }
    table
}

/// Finds the line of `models[i].field` in the text, counting `[[models]]`
/// headers, so validation errors point at a line too. A key inside an
/// array of tables, `models[i].openai.upstreams[j].field`, is looked for
/// after the `j`-th `[[models.openai.upstreams]]` header of that model.
pub(super) fn line_of_model_key(text: &str, key: &str) -> Option<usize> {
    let rest = key.strip_prefix("models[")?;
    let (index, field) = rest.split_once("].")?;
    let index: usize = index.parse().ok()?;
    // `openai.upstreams[1].url` → header `[[models.openai.upstreams]]`, 1.
    let nested = field.rsplit_once('.').and_then(|(table, _)| {
        let (array, rest) = table.split_once('[')?;
        let j: usize = rest.strip_suffix(']')?.parse().ok()?;
        Some((format!("[[models.{array}]]"), j))
    });
    let field = field.rsplit('.').next()?;
    let mut seen = None;
    let mut entries = 0usize;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("[[models]]") {
            seen = Some(seen.map_or(0, |s: usize| s + 1));
            entries = 0;
        } else if seen.is_some_and(|s| s > index) {
            break;
        } else if seen != Some(index) {
            continue;
        } else if let Some((header, _)) = &nested
            && trimmed.starts_with(header.as_str())
        {
            entries += 1;
        } else if nested.as_ref().is_none_or(|(_, j)| entries == j + 1)
            && trimmed
                .split_once('=')
                .is_some_and(|(k, _)| k.trim() == field)
        {
            return Some(n + 1);
        }
    }
    None
}
