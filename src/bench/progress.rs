//! A live progress bar on a terminal, nothing otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts finished calls; draws only when stderr is a terminal.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for `total` calls, or a counter for a timed run.
    pub fn new(total: Option<u64>, duration: Option<Duration>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = match (duration, total) {
            (Some(duration), _) => {
                let bar = ProgressBar::new_spinner();
                bar.set_message(format!("for {duration:?}"));
                bar
            }
            (None, Some(total)) => ProgressBar::new(total),
            (None, None) => ProgressBar::new_spinner(),
        };
        let template = if bar.length().is_some() {
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} calls ({per_sec})"
        } else {
            "{spinner} [{elapsed_precise}] {pos} calls ({per_sec}) {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress { bar: Some(bar) }
    }

    /// One more call finished.
    pub fn inc(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
