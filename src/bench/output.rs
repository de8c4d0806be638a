//! The report in the format asked for (`-O`): summary, csv, json, pretty
//! (indented JSON, as ghz), html.

use serde_json::Value;

use crate::bench::args::Format;
use crate::bench::report::Report;
use crate::bench::run::Outcome;
use crate::bench::settings::Settings;
use crate::bench::{csv, html};

/// The report of a run, as text.
pub fn render(settings: &Settings, outcome: &Outcome) -> String {
    let report = Report::new(outcome, settings.count_errors);
    let name = settings.name.as_deref();
    let json = |details: bool| -> Value {
        let mut json = report.json(outcome, name, settings.options(), details);
        if let Some(tags) = &settings.tags {
            json["tags"] = tags.clone();
        }
        json
    };
    let mut text = match settings.format {
        Format::Summary => return report.summary(name),
        Format::Csv => return csv::render(outcome),
        Format::Html => return html::render(&report, outcome, name, &settings.options()),
        Format::Json => json(settings.details).to_string(),
        Format::Pretty => {
            let json = json(settings.details);
            serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string())
        }
    };
    text.push('\n');
    text
}
