//! A minimal OpenAI-compatible server on loopback, for tests that need an
//! `openai` model with working upstreams (its metrics, its dashboard
//! panels): `GET /v1/models` answers 200, a chat completion answers its
//! first message echoed, as one JSON body or, when `stream` is set, as
//! server-sent events. Stopped on drop.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The server; it stops listening (and closes its connections) on drop.
pub struct FakeOpenAi {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl FakeOpenAi {
    /// Listens on 127.0.0.1, port 0.
    pub async fn start() -> FakeOpenAi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    let accepted = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((stream, _)) = accepted else { return };
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let connection = hyper::server::conn::http1::Builder::new()
                            .serve_connection(
                                hyper_util::rt::TokioIo::new(stream),
                                hyper::service::service_fn(answer),
                            );
                        tokio::select! {
                            _ = connection => {}
                            () = stop.cancelled() => {}
                        }
                    });
                }
            }
        });
        FakeOpenAi { addr, stop }
    }

    /// The base URL, for `[[models.openai.upstreams]]`'s `url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A TOML `openai` model whose upstreams are these `(url, name)` pairs.
pub fn openai_model(name: &str, upstreams: &[(String, &str)]) -> String {
    let mut toml = format!(
        "[[models]]\nname = \"{name}\"\nbackend = \"openai\"\n[models.openai]\nconnect_timeout_ms = 1000\nread_timeout_ms = 5000\n"
    );
    for (url, upstream) in upstreams {
        toml.push_str(&format!(
            "[[models.openai.upstreams]]\nurl = \"{url}\"\nname = \"{upstream}\"\n"
        ));
    }
    toml
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.uri().path() == "/v1/models" {
        return Ok(Response::new(Full::new(Bytes::from(
            json!({"object": "list", "data": []}).to_string(),
        ))));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = format!(
        "echo: {}",
        body["messages"][0]["content"].as_str().unwrap_or_default()
    );
    if body["stream"] != true {
        let answer = json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3}
        });
        return Ok(Response::new(Full::new(Bytes::from(answer.to_string()))));
    }
    let delta =
        json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    let end = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let events = format!("data: {delta}\n\ndata: {end}\n\ndata: [DONE]\n\n");
    let mut response = Response::new(Full::new(Bytes::from(events)));
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("header"));
    Ok(response)
}
