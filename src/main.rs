//! The `infergate` binary: parses the command line, sets up logging, and
//! hands over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use infergate::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One JSON object a line: the event's fields at the top level, and
        // the fields of the span it happened in (a call's method, model and
        // request_id) under "span".
        LogFormat::Json => {
            logs.json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .init();
            // A panic's report (a backend's, caught by its worker) is a log
            // line too, in the call's span, rather than the default hook's
            // text on stderr.
            std::panic::set_hook(Box::new(|info| {
                let location = info.location().map(ToString::to_string);
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(not a string)");
                tracing::error!(
                    panic = message,
                    location = location.as_deref(),
                    thread = std::thread::current().name(),
                    "panicked"
                );
            }));
        }
    }
    infergate::cli::run(cli)
}
