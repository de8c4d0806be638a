//! Raw clients for attack tests: HTTP/2 streams that never read, and
//! gRPC frames with arbitrary bytes (deterministic fuzz payloads).

use bytes::{Buf, BufMut, Bytes};
use infergate::proto;
use prost::Message;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use super::request;

/// A raw HTTP/2 client that opens a GenerateStream call and never reads:
/// its stream windows are zero, so the gateway cannot send it a byte of
/// the answer, however long the connection lives.
pub struct NonReadingStream {
    /// Drives the connection; finished once it closed.
    pub driver: tokio::task::JoinHandle<()>,
    // Held so that neither side of the call, nor the connection, is given
    // up before the test drops this.
    _send: h2::client::SendRequest<Bytes>,
    _response: h2::client::ResponseFuture,
    _body: h2::SendStream<Bytes>,
}

/// Opens a [`NonReadingStream`] to `model` with a `grpc-timeout`.
pub async fn non_reading_stream(
    addr: std::net::SocketAddr,
    model: &str,
    timeout: &str,
) -> NonReadingStream {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let message = request(model, "flood").encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    body.extend_from_slice(&message);
    let http_request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/infergate.v1.Inference/GenerateStream"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .expect("request");
    let mut send = send.ready().await.expect("the connection takes a stream");
    let (response, mut stream) = send.send_request(http_request, false).expect("send");
    stream
        .send_data(Bytes::from(body), true)
        .expect("request body");
    NonReadingStream {
        driver,
        _send: send,
        _response: response,
        _body: stream,
    }
}

/// Waits until the peer closes `stream` (end-of-file or reset), at most
/// `limit`; returns how long that took from `since`, or `None`.
pub async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    since: std::time::Instant,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let wait = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {} // e.g. the server's SETTINGS: not a close
            }
        }
    };
    tokio::time::timeout(limit, wait).await.ok()
}

/// A tiny deterministic generator (xorshift64*): no `rand` needed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Sends its bytes as the message, unchanged, and takes the answer's bytes.
#[derive(Clone, Copy)]
pub struct RawCodec;

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
pub fn valid_request() -> Vec<u8> {
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
pub fn bytes_field(field: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![field << 3 | 2, u8::try_from(bytes.len()).expect("short")];
    out.extend_from_slice(bytes);
    out
}

/// Requests with invalid UTF-8 in `model` (field 1) or `prompt` (field 2).
pub fn invalid_utf8_requests() -> Vec<Vec<u8>> {
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
pub fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
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
pub fn payloads(count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let valid = valid_request();
    let mut out = vec![valid.clone(), Vec::new()];
    out.extend(invalid_utf8_requests());
    for _ in 0..300 {
        let len = rng.below(64);
        out.push((0..len).map(|_| rng.byte()).collect());
    }
    while out.len() < count {
        out.push(mutate(&mut rng, &valid));
    }
    out
}

/// Sends one payload, to GenerateStream when `stream`, else to Generate;
/// returns the code and message of the answer.
pub async fn send(channel: Channel, payload: Vec<u8>, stream: bool) -> (Code, String) {
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
