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

use bytes::{Buf, BufMut};
use common::{TestServer, request, simulated};
use infergate::config::{Config, DEFAULT_CONFIG_TOML};
use infergate::proto;
use prost::Message;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Payloads sent to the server.
const PAYLOADS: usize = 3_000;
/// Calls in flight at once.
const CONCURRENCY: usize = 4;
/// Mutations of each configuration file.
const CONFIG_MUTATIONS: usize = 400;

/// A tiny deterministic generator (xorshift64*): no `rand` needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Sends its bytes as the message, unchanged, and takes the answer's bytes.
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A valid request for the echo model, encoded.
fn valid_request() -> Vec<u8> {
    proto::GenerateRequest {
        max_tokens: 5,
        temperature: Some(0.5),
        stop: vec!["zzz".into()],
        seed: Some(42),
        ..request("echo", "hello fuzzy world")
    }
    .encode_to_vec()
}

/// A length-delimited field (wire type 2) holding `bytes`.
fn bytes_field(field: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![field << 3 | 2, u8::try_from(bytes.len()).expect("short")];
    out.extend_from_slice(bytes);
    out
}

/// Requests with invalid UTF-8 in `model` (field 1) or `prompt` (field 2).
fn invalid_utf8_requests() -> Vec<Vec<u8>> {
    let bad: [&[u8]; 3] = [b"\xff\xfe", b"ec\xc3ho", b"\xed\xa0\x80"];
    let mut out = Vec::new();
    for junk in bad {
        out.push(bytes_field(1, junk));
        out.push([bytes_field(1, b"echo"), bytes_field(2, junk)].concat());
        out.push([bytes_field(2, junk), bytes_field(1, b"echo")].concat());
    }
    out
}

/// One mutation of `base`: bit flips, byte changes, insertions, deletions,
/// truncations and duplications, one to four of them.
fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(6) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 if at < bytes.len() => bytes[at] = rng.byte(),
            2 => bytes.insert(at, rng.byte()),
            3 if at < bytes.len() => {
                let end = (at + 1 + rng.below(4)).min(bytes.len());
                bytes.drain(at..end);
            }
            4 => bytes.truncate(at),
            _ => {
                let end = (at + rng.below(8)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.below(bytes.len() + 1);
                bytes.splice(to..to, copy);
            }
        }
    }
    bytes
}

/// The payloads: a few valid ones, the invalid-UTF-8 ones, random bytes,
/// and the rest mutations of the valid request.
fn payloads() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let valid = valid_request();
    let mut out = vec![valid.clone(), Vec::new()];
    out.extend(invalid_utf8_requests());
    for _ in 0..300 {
        let len = rng.below(64);
        out.push((0..len).map(|_| rng.byte()).collect());
    }
    while out.len() < PAYLOADS {
        out.push(mutate(&mut rng, &valid));
    }
    out
}

/// Sends one payload, to GenerateStream when `stream`, else to Generate;
/// returns the code and message of the answer.
async fn send(channel: Channel, payload: Vec<u8>, stream: bool) -> (Code, String) {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return (Code::Unknown, format!("channel not ready: {e}"));
    }
    let request = tonic::Request::new(payload);
    let result = if stream {
        let path = PathAndQuery::from_static("/infergate.v1.Inference/GenerateStream");
        match grpc.server_streaming(request, path, RawCodec).await {
            Ok(response) => {
                let mut messages = response.into_inner();
                loop {
                    match messages.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    }
                }
            }
            Err(status) => Err(status),
        }
    } else {
        let path = PathAndQuery::from_static("/infergate.v1.Inference/Generate");
        grpc.unary(request, path, RawCodec).await.map(|_| ())
    };
    match result {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_protobuf_payloads_never_get_internal() {
    let server = TestServer::start(&simulated("echo", 0, 4, 256)).await;
    let channel = server.channel().await;
    let payloads = payloads();
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
