//! Fuzz loops, deterministic (a fixed xorshift seed) and bounded:
//!
//! - ~3,000 random and mutated protobuf payloads sent as raw gRPC frames to
//!   Generate (and some to GenerateStream): every answer is OK,
//!   INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED, never INTERNAL or
//!   UNKNOWN, and the server still serves a normal call afterwards.
//! - mutated configuration files (the embedded default and every
//!   `examples/*.toml`): `Config::from_toml` never panics, and every error
//!   names a key or a line.

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use common::raw::{Rng, invalid_utf8_requests, payloads, send};
use common::{TestServer, request, simulated};
use infergate::config::{Config, DEFAULT_CONFIG_TOML};
use tonic::Code;

/// Payloads sent to the server.
const PAYLOADS: usize = 3_000;
/// Calls in flight at once.
const CONCURRENCY: usize = 4;
/// Mutations of each configuration file.
const CONFIG_MUTATIONS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_protobuf_payloads_never_get_internal() {
    let server = TestServer::start(&simulated("echo", 0, 4, 256)).await;
    let channel = server.channel().await;
    let payloads = payloads(PAYLOADS);
    let utf8_cases = 2..2 + invalid_utf8_requests().len();

    let mut tasks = Vec::new();
    for part in 0..CONCURRENCY {
        let channel = channel.clone();
        let mine: Vec<(usize, Vec<u8>)> = payloads
            .iter()
            .cloned()
            .enumerate()
            .filter(|(i, _)| i % CONCURRENCY == part)
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for (i, payload) in mine {
                // One in ten goes to GenerateStream, which decodes alike.
                let answer = send(channel.clone(), payload, i % 10 == 7).await;
                answers.push((i, answer));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        let part = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the fuzz loop finishes within 60 s")
            .expect("task");
        answers.extend(part);
    }
    assert_eq!(answers.len(), payloads.len());

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut decode_errors = 0;
    for (i, (code, message)) in &answers {
        *counts.entry(format!("{code:?}")).or_default() += 1;
        assert!(
            matches!(
                code,
                Code::Ok | Code::InvalidArgument | Code::NotFound | Code::ResourceExhausted
            ),
            "payload {i} ({:02x?}) got {code:?}: {message}",
            payloads[*i]
        );
        if message.starts_with("the request is not a valid infergate.v1.GenerateRequest: ") {
            decode_errors += 1;
        }
        if utf8_cases.contains(i) {
            assert_eq!(*code, Code::InvalidArgument, "{message}");
            assert!(message.contains("UTF-8"), "{message}");
        }
    }
    println!("answers by code: {counts:?}; decode errors: {decode_errors}");
    // The loop did reach the decoder, and valid requests were served.
    assert!(decode_errors > PAYLOADS / 4, "{counts:?}");
    assert!(counts.get("Ok").is_some_and(|&n| n > 0), "{counts:?}");

    // Still alive, and serving.
    let answer = server
        .client()
        .await
        .generate(request("echo", "still here"))
        .await
        .expect("a normal call after the fuzz loop");
    assert_eq!(answer.into_inner().text, "still here");
}

/// The texts of the configuration files to mutate: the embedded default
/// and every example.
fn config_texts() -> Vec<(String, String)> {
    let mut texts = vec![("default.toml".to_string(), DEFAULT_CONFIG_TOML.to_string())];
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("readable example");
        texts.push((path.display().to_string(), text));
    }
    assert!(texts.len() >= 3, "the examples are found");
    texts
}

/// Text that can replace a value or be inserted: the usual suspects.
const JUNK: &[&str] = &[
    "0",
    "-1",
    "18446744073709551615",
    "99999999999999999999999",
    "1e309",
    "nan",
    "\"\"",
    "\"x\"",
    "[]",
    "{}",
    "true",
    "[[models]]",
    "[models.openai]",
    "[server]",
    "=",
    "\"",
    "'",
    "#",
    "\n",
    "é",
    "\u{0}",
    "\"\\u0000\"",
    "\"http://u:p@h\"",
];

/// One mutation of a config text, by lines and characters.
fn mutate_config(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..=rng.below(3) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let at = rng.below(lines.len());
        match rng.below(7) {
            0 => {
                lines.remove(at);
            }
            1 => {
                let copy = lines[at].clone();
                lines.insert(rng.below(lines.len() + 1), copy);
            }
            2 => {
                // Replace the value of a `key = value` line.
                if let Some((key, _)) = lines[at].split_once('=') {
                    lines[at] = format!("{key}= {}", JUNK[rng.below(JUNK.len())]);
                }
            }
            3 => {
                let other = rng.below(lines.len());
                lines.swap(at, other);
            }
            4 => {
                // Delete one character.
                let chars: Vec<char> = lines[at].chars().collect();
                if !chars.is_empty() {
                    let cut = rng.below(chars.len());
                    lines[at] = chars
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != cut)
                        .map(|(_, c)| c)
                        .collect();
                }
            }
            5 => {
                // Insert junk somewhere in a line.
                let chars: Vec<char> = lines[at].chars().collect();
                let cut = rng.below(chars.len() + 1);
                let head: String = chars[..cut].iter().collect();
                let tail: String = chars[cut..].iter().collect();
                lines[at] = format!("{head}{}{tail}", JUNK[rng.below(JUNK.len())]);
            }
            _ => lines.insert(at, JUNK[rng.below(JUNK.len())].to_string()),
        }
    }
    lines.join("\n")
}

#[test]
fn mutated_configs_never_panic_and_errors_name_a_key_or_a_line() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut refused = 0;
    let mut tried = 0;
    for (name, text) in config_texts() {
        for _ in 0..CONFIG_MUTATIONS {
            let mutated = mutate_config(&mut rng, &text);
            tried += 1;
            let result = catch_unwind(AssertUnwindSafe(|| Config::from_toml(&mutated, &name)));
            let Ok(result) = result else {
                panic!("Config::from_toml panicked on:\n{mutated}");
            };
            if let Err(error) = result {
                refused += 1;
                assert!(
                    error.key.is_some() || error.line.is_some(),
                    "the error names neither a key nor a line: {error}\n--- config:\n{mutated}"
                );
            }
        }
    }
    println!("{tried} mutated configs, {refused} refused");
    assert!(tried >= 300);
    // Most mutations break something: the loop exercises the errors.
    assert!(refused > tried / 4, "{refused} of {tried}");
}
