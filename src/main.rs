//! The `infergate` binary: parses the command line, sets up logging, and
//! hands over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: a call's buffers are allocated on a
/// runtime thread and freed on a worker thread (or the reverse), and glibc
/// serialises such frees on the owning arena's lock; under load that lock
/// showed up in profiles as futex waits. (A library user picks their own.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = infergate::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    infergate::cli::run(cli)
}
