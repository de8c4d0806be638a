"""A fake OpenAI-compatible upstream for the benchmarks (standard library
asyncio only): it answers like a model server that takes `--latency-ms`
per call and runs at most `--concurrency` calls at once (more wait their
turn), so one process serves at most concurrency / latency calls per
second (64 / 0.1 s = 640 by default).

    python3 bench/fake_openai.py --port 8001 [--latency-ms 100] [--concurrency 64] [--name u1]

HTTP/1.1 with keep-alive (and HTTP/1.0, `Connection: close`):

  POST /v1/chat/completions   the last message's words echoed back (cut at
                              `max_tokens`), after the latency; with
                              `"stream": true` as server-sent events, one
                              chunk per word (`--token-ms` apart), a usage
                              chunk if `stream_options.include_usage`, then
                              `data: [DONE]`
  GET  /v1/models             the model list, at once (health probes)
  GET  /stats                 {"name", "latency_ms", "served", "running", "waiting", "max_running"}
  POST /control               {"latency_ms": 300} changes the latency of
                              the calls that start from then on

It prints `listening on 127.0.0.1:PORT` once it accepts connections.
"""

import argparse
import asyncio
import json
import signal
import time

MAX_BODY = 16 * 1024 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large"}


class BadRequest(Exception):
    pass


class Upstream:
    def __init__(self, args):
        self.name = args.name or f"127.0.0.1:{args.port}"
        self.model = args.model
        self.latency = args.latency_ms / 1000
        self.token_gap = args.token_ms / 1000
        self.slots = asyncio.Semaphore(args.concurrency)
        self.served = 0
        self.running = 0
        self.waiting = 0
        self.max_running = 0
        self.ids = 0

    # -- HTTP ----------------------------------------------------------------

    async def connection(self, reader, writer):
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                method, path, version, headers, body = request
                keep_alive = (version == "HTTP/1.1" and headers.get("connection", "").lower() != "close") or \
                    headers.get("connection", "").lower() == "keep-alive"
                await self.route(method, path.split("?", 1)[0], body, writer, keep_alive)
                if not keep_alive:
                    break
            await writer.drain()
        except BadRequest as e:
            respond(writer, 400, {"error": {"message": str(e), "type": "invalid_request_error"}}, False)
            try:
                await writer.drain()
            except ConnectionError:
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass  # the peer left, or the server is stopping
        finally:
            writer.close()

    async def route(self, method, path, body, writer, keep_alive):
        if path in ("/v1/chat/completions", "/chat/completions"):
            if method != "POST":
                respond(writer, 405, {"error": {"message": "use POST"}}, keep_alive)
                return
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                respond(writer, 400, {"error": {"message": "the body is not JSON", "type": "invalid_request_error"}}, keep_alive)
                return
            await self.chat(request, writer, keep_alive)
        elif path in ("/v1/models", "/models") and method == "GET":
            respond(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": self.name}]}, keep_alive)
        elif path == "/stats" and method == "GET":
            respond(writer, 200, {"name": self.name, "latency_ms": self.latency * 1000, "served": self.served,
                                  "running": self.running, "waiting": self.waiting, "max_running": self.max_running}, keep_alive)
        elif path == "/control" and method == "POST":
            try:
                self.latency = float(json.loads(body)["latency_ms"]) / 1000
            except (ValueError, KeyError, TypeError):
                respond(writer, 400, {"error": {"message": 'expected {"latency_ms": N}'}}, keep_alive)
                return
            respond(writer, 200, {"latency_ms": self.latency * 1000}, keep_alive)
        else:
            respond(writer, 404, {"error": {"message": f"no route {method} {path}"}}, keep_alive)
        await writer.drain()

    # -- the model -------------------------------------------------------------

    async def chat(self, request, writer, keep_alive):
        words = reply_words(request)
        self.waiting += 1
        async with self.slots:
            self.waiting -= 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            try:
                await asyncio.sleep(self.latency)
                self.ids += 1
                ident = f"chatcmpl-{self.name}-{self.ids}"
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.get("messages") or [])
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                         "total_tokens": prompt_tokens + len(words)}
                finish = "length" if request.get("max_tokens") and len(words) >= request["max_tokens"] else "stop"
                model = request.get("model") or self.model
                if request.get("stream"):
                    await self.stream(writer, ident, model, words, finish, usage,
                                      bool((request.get("stream_options") or {}).get("include_usage")), keep_alive)
                else:
                    respond(writer, 200, {
                        "id": ident, "object": "chat.completion", "created": int(time.time()), "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                                     "finish_reason": finish}],
                        "usage": usage,
                    }, keep_alive)
                    await writer.drain()
                self.served += 1
            finally:
                self.running -= 1

    async def stream(self, writer, ident, model, words, finish, usage, include_usage, keep_alive):
        head = ("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                f"transfer-encoding: chunked\r\nconnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
        writer.write(head.encode())

        def event(data):
            payload = f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
            writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")

        def chunk(delta, finish_reason=None):
            return {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

        event(chunk({"role": "assistant", "content": ""}))
        for i, word in enumerate(words):
            if i and self.token_gap:
                await writer.drain()
                await asyncio.sleep(self.token_gap)
            event(chunk({"content": word if i == 0 else " " + word}))
        event(chunk({}, finish))
        if include_usage:
            event({"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                   "choices": [], "usage": usage})
        event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def reply_words(request):
    """The last message's words (the prompt, echoed), cut at max_tokens."""
    messages = request.get("messages") or []
    text = str(messages[-1].get("content", "")) if messages and isinstance(messages[-1], dict) else ""
    words = text.split() or ["ok"]
    limit = request.get("max_tokens")
    if isinstance(limit, int) and limit > 0:
        words = (words * (limit // len(words) + 1))[:limit] if limit > len(words) else words[:limit]
    return words


async def read_request(reader):
    """(method, path, version, headers, body), or None at a clean end."""
    try:
        line = await reader.readline()
    except (ConnectionError, asyncio.IncompleteReadError):
        return None
    if not line:
        return None
    try:
        method, path, version = line.decode("latin-1").split()
    except ValueError:
        raise BadRequest("bad request line")
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            if len(body) + size > MAX_BODY:
                raise BadRequest("body too large")
            body += await reader.readexactly(size)
            await reader.readline()
    else:
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY:
            raise BadRequest("body too large")
        body = await reader.readexactly(length) if length else b""
    return method, path, version, headers, body


def respond(writer, status, value, keep_alive):
    body = json.dumps(value).encode()
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    writer.write(head.encode() + body)


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=100, help="time per call (default 100)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls served at once; more wait (default 64)")
    parser.add_argument("--token-ms", type=float, default=0, help="gap between streamed tokens (default 0)")
    parser.add_argument("--model", default="fake", help="the model /v1/models lists (default fake)")
    parser.add_argument("--name", help="this upstream's name, in /stats and the response ids (default host:port)")
    args = parser.parse_args()
    upstream = Upstream(args)
    server = await asyncio.start_server(upstream.connection, args.host, args.port, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {args.host}:{args.port} ({upstream.name}: {args.latency_ms:g} ms per call, "
          f"{args.concurrency} at once)", flush=True)
    await stop.wait()
    server.close()  # idle keep-alive connections are not waited for
    print(f"{upstream.name}: served {upstream.served} calls, at most {upstream.max_running} at once", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
