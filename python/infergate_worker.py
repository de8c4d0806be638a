"""Serve a synchronous Python function to infergate's process backend.

Wrap an existing blocking LLM call in three lines::

    from infergate_worker import serve
    def generate(request): return my_llm.call(request.text)
    serve(generate)

and point a model at it::

    [[models]]
    name = "my-llm"
    backend = "process"
    workers = 4
    [models.process]
    command = ["python3", "my_worker.py"]

Each of the ``workers`` processes runs its own interpreter and serves one
call at a time, so N workers give N calls at once, even for CPU-bound code.

The function receives a :class:`Request` (a dict of the request line, with
``prompt``, ``messages``, ``max_tokens``, ``temperature``, ``stop``,
``seed``, ``timeout_ms``) and returns either

* a string: the whole completion;
* a dict: ``{"text": ..., "finish_reason": "stop" | "length",
  "prompt_tokens": n, "completion_tokens": n}`` (all optional);
* an iterable (typically a generator) of strings: tokens, streamed to the
  client as they are yielded. Iteration stops early when the call is
  cancelled or ``max_tokens`` strings have been yielded.

Raise :class:`WorkerError` with a ``code`` (``invalid_argument``,
``resource_exhausted``, ``unavailable``, ``unauthenticated``,
``permission_denied``, ``deadline_exceeded``, ``internal``) to send the
client that gRPC status and your message (its first 200 characters): the
one way for text to reach the client. Any other exception reaches the
client only as ``INTERNAL`` "the worker failed"; its message and traceback
go to the gateway's log, since they may hold anything (a password in a
connection string).

Do the slow set-up (loading the model) before calling :func:`serve`: it
tells the gateway the worker is ready (the ``ready`` line), and the gateway
counts the worker as started only then, within the model's
``start_timeout_ms``.

Standard library only. The protocol (JSON lines on stdin/stdout) is in
docs/worker-protocol.md, so a worker can be written in any language.
Anything the function prints goes to stderr: stdout carries the protocol.
"""

import json
import os
import queue
import sys
import threading
import traceback

__all__ = ["serve", "Request", "WorkerError", "Cancelled"]

ERROR_CODES = {
    "invalid_argument",
    "resource_exhausted",
    "unavailable",
    "unauthenticated",
    "permission_denied",
    "deadline_exceeded",
    "cancelled",
    "internal",
}


# Characters of a traceback sent to the gateway's log.
_DETAIL_CHARS = 8000


class WorkerError(Exception):
    """An error for the client: its gRPC ``code`` and its message.

    ``WorkerError("no images here", code="invalid_argument")``; the form
    ``WorkerError("invalid_argument", "no images here")`` works too.
    """

    def __init__(self, message, code="internal"):
        if message in ERROR_CODES and code not in ERROR_CODES:
            message, code = code, message
        super().__init__(message)
        self.code = code if code in ERROR_CODES else "internal"


class Cancelled(Exception):
    """Raised by :meth:`Request.check_cancelled` once the call is cancelled."""


class Request(dict):
    """One call: the request line as a dict, plus cancellation helpers."""

    def __init__(self, line, cancel_event):
        super().__init__(line)
        self._cancel = cancel_event

    @property
    def text(self):
        """The input as plain text: the prompt, or the messages' contents."""
        if self.get("prompt") is not None:
            return self["prompt"]
        return "\n".join(m.get("content", "") for m in self.get("messages") or [])

    @property
    def cancelled(self):
        """True once the gateway cancelled this call (client gone, deadline)."""
        return self._cancel.is_set()

    def check_cancelled(self):
        """Raises :class:`Cancelled` if the call was cancelled."""
        if self._cancel.is_set():
            raise Cancelled()


class _Channel:
    """The protocol side of stdout, kept apart from everything printed."""

    def __init__(self, stream):
        self._stream = stream

    def send(self, message):
        self._stream.write(json.dumps(message, ensure_ascii=False) + "\n")
        self._stream.flush()


def _protocol_streams():
    """Takes stdin/stdout for the protocol; sends later prints to stderr."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return sys.stdin, out


def serve(fn, stdin=None, stdout=None):
    """Serves ``fn`` until stdin closes (the gateway stopped or restarts us)."""
    if stdin is None or stdout is None:
        stdin, stdout = _protocol_streams()
    channel = _Channel(stdout)
    requests = queue.Queue()
    cancels = {}
    lock = threading.Lock()

    def read():
        for raw in stdin:
            raw = raw.strip()
            if not raw:
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                print(f"infergate_worker: ignoring a line that is not JSON: {raw[:200]!r}", file=sys.stderr)
                continue
            if line.get("type") == "request":
                event = threading.Event()
                with lock:
                    cancels[line.get("id")] = event
                requests.put((line, event))
            elif line.get("type") == "cancel":
                with lock:
                    event = cancels.get(line.get("id"))
                if event is not None:
                    event.set()
        requests.put(None)

    threading.Thread(target=read, name="infergate-stdin", daemon=True).start()
    channel.send({"type": "ready", "pid": os.getpid()})
    while True:
        item = requests.get()
        if item is None:
            return
        line, event = item
        try:
            _run(fn, Request(line, event), channel)
        finally:
            with lock:
                cancels.pop(line.get("id"), None)


def _run(fn, request, channel):
    call_id = request.get("id")
    try:
        result = fn(request)
        if isinstance(result, str):
            channel.send({"type": "result", "id": call_id, "text": result})
        elif isinstance(result, dict):
            answer = {"type": "result", "id": call_id}
            answer.update({k: v for k, v in result.items() if k in ("text", "finish_reason", "prompt_tokens", "completion_tokens")})
            channel.send(answer)
        elif result is None:
            channel.send({"type": "result", "id": call_id, "text": ""})
        else:
            _stream(result, request, channel)
    except Cancelled:
        channel.send({"type": "error", "id": call_id, "code": "cancelled", "message": "cancelled", "public": True})
    except WorkerError as error:
        channel.send({"type": "error", "id": call_id, "code": error.code, "message": str(error), "public": True})
    except Exception as error:  # the worker must outlive the function's bugs
        # Not public: the gateway logs the text and the traceback, and tells
        # the client only that the worker failed.
        channel.send({
            "type": "error",
            "id": call_id,
            "code": "internal",
            "message": f"{type(error).__name__}: {error}",
            "public": False,
            "detail": traceback.format_exc()[-_DETAIL_CHARS:],
        })


def _stream(tokens, request, channel):
    call_id = request.get("id")
    limit = request.get("max_tokens")
    count = 0
    finish = "stop"
    iterator = iter(tokens)
    try:
        for token in iterator:
            if request.cancelled:
                raise Cancelled()
            channel.send({"type": "token", "id": call_id, "text": str(token)})
            count += 1
            if limit and count >= limit:
                finish = "length"
                break
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    channel.send({"type": "result", "id": call_id, "finish_reason": finish, "completion_tokens": count})
