//! `infergate keys`: add, list and remove API keys in a keys file.
//!
//! `add` prints the new key once, on stdout, and writes only its SHA-256
//! to the file; nobody can read a key back from the file afterwards. The
//! file is rewritten whole (to a temporary file in the same directory,
//! then renamed over it, mode 0600), so a gateway watching it never reads
//! half of it.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::auth::keys::{self, KeyEntry, KeysFile};

/// `infergate keys ...`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: KeysAction,
}

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key: prints it once on stdout, stores only its hash.
    Add(AddArgs),
    /// List the keys of a file: names, models and limits (never keys).
    List {
        /// The keys file.
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
    },
    /// Remove a key by name.
    Remove {
        /// The key's name.
        name: String,
        /// The keys file.
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
    },
}

/// Flags of `keys add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The key's name: its tenant label (letters, digits, '.', '_', '-').
    pub name: String,
    /// The keys file (created if missing).
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,
    /// Models it may call, as comma-separated globs (`chat-*,echo`); all
    /// when not given.
    #[arg(long, value_name = "GLOB,...", value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Calls per second it may start (token bucket).
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Calls it may start at once above the rate (the bucket's size).
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
    /// Calls it may have in flight at once.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Highest request priority its calls get (0 to 100).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_priority: u32,
    /// Its share of a model's workers when tenants queue (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub weight: u32,
}

impl AddArgs {
    /// A key of all models, without limits (for embedders and tests that
    /// make keys without the command line).
    pub fn new(name: impl Into<String>, file: impl Into<PathBuf>) -> AddArgs {
        AddArgs {
            name: name.into(),
            file: file.into(),
            models: None,
            rate: None,
            burst: None,
            concurrency: None,
            max_priority: 0,
            weight: 1,
        }
    }
}

/// Runs a `keys` subcommand; the error is one line for stderr.
pub fn run(args: &KeysArgs) -> Result<(), String> {
    match &args.action {
        KeysAction::Add(add) => {
            let key = self::add(add)?;
            println!("{key}");
            eprintln!(
                "added \"{}\" to {}; the key above is shown only this once",
                add.name,
                add.file.display()
            );
            Ok(())
        }
        KeysAction::List { file } => {
            let keys = read(file)?;
            for key in &keys.keys {
                println!("{}", describe(key));
            }
            Ok(())
        }
        KeysAction::Remove { name, file } => {
            let mut keys = read(file)?;
            let before = keys.keys.len();
            keys.keys.retain(|k| &k.name != name);
            if keys.keys.len() == before {
                return Err(format!("{}: no key named \"{name}\"", file.display()));
            }
            write(file, &keys)?;
            eprintln!("removed \"{name}\" from {}", file.display());
            Ok(())
        }
    }
}

/// Adds a key named by `args` to its file and returns the key.
pub fn add(args: &AddArgs) -> Result<String, String> {
    let mut file = if args.file.exists() {
        read(&args.file)?
    } else {
        KeysFile::default()
    };
    if file.keys.iter().any(|k| k.name == args.name) {
        return Err(format!(
            "{}: a key named \"{}\" exists; remove it first",
            args.file.display(),
            args.name
        ));
    }
    let key = keys::generate()?;
    file.keys.push(KeyEntry {
        models: args.models.clone(),
        rate_per_second: args.rate,
        burst: args.burst,
        max_concurrency: args.concurrency,
        max_priority: args.max_priority,
        weight: args.weight,
        ..KeyEntry::new(&args.name, keys::hex(&keys::hash(&key)))
    });
    // The same checks the gateway makes, with the flag's names.
    let checked = KeysFile::parse(&file.to_toml()).map_err(|e| {
        let field = e.split_once(": ").map_or(e.as_str(), |(head, _)| head);
        let why = e.split_once(": ").map_or("", |(_, why)| why);
        let flag = match field.rsplit('.').next() {
            Some("rate_per_second") => "--rate".to_string(),
            Some("max_concurrency") => "--concurrency".to_string(),
            Some("max_priority") => "--max-priority".to_string(),
            Some("name") => "NAME".to_string(),
            Some(other) => format!("--{other}"),
            None => field.to_string(),
        };
        format!("{flag}: {why}")
    })?;
    write(&args.file, &checked)?;
    Ok(key)
}

fn read(path: &Path) -> Result<KeysFile, String> {
    KeysFile::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the file whole: a temporary file beside it (mode 0600), renamed
/// over it.
fn write(path: &Path, file: &KeysFile) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: cannot write it: {e}", path.display());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keys".into());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?
        };
        out.write_all(file.to_toml().as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(fail)
}

/// One line of `keys list`.
fn describe(key: &KeyEntry) -> String {
    let models = key
        .models
        .as_ref()
        .map_or_else(|| "*".to_string(), |m| m.join(","));
    let rate = key.rate_per_second.map_or_else(
        || "unlimited".to_string(),
        |r| {
            format!(
                "{r}/s burst {}",
                key.burst.map_or_else(|| "auto".into(), |b| b.to_string())
            )
        },
    );
    let concurrency = key
        .max_concurrency
        .map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    format!(
        "{}\tmodels={models}\trate={rate}\tconcurrency={concurrency}\tmax_priority={}\tweight={}",
        key.name, key.max_priority, key.weight
    )
}
