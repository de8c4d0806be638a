"""A test worker for infergate's process backend, driven by its prompt:

    sleep MS          sleeps, then answers "slept MS"
    spin MS           burns CPU for MS, then answers "spun"
    stream A B C      yields the words as tokens, one every 20 ms
    crash             writes to stderr and exits with status 3
    leak              writes a database URL with a password to stderr, exits 3
    hang              sleeps for an hour, ignoring cancel lines
    error             raises WorkerError(code="resource_exhausted")
    invalid           raises WorkerError("invalid_argument", ...), code first
    oops              raises a plain exception whose text holds a password
    pid               answers its process id
    grandchild hang   starts `sleep 1000`, then hangs like `hang`
    grandchild exit   starts `sleep 1000`, then exits with status 3
    grandchild idle   starts `sleep 1000`, then answers "started"
    anything else is echoed

and by its environment, at start-up:

    PROBE_PIDS=DIR        writes DIR/worker-PID and DIR/parent-PPID, and
                          DIR/grandchild-PID for each `sleep` it starts
    PROBE_GRANDCHILD=1    starts a `sleep 1000` before serving
    PROBE_DEAF_ONCE=FILE  if FILE does not exist: creates it, says it is
                          ready, and never reads its stdin (nor answers)
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

from infergate_worker import WorkerError, serve  # noqa: E402

PIDS = os.environ.get("PROBE_PIDS")


def record(kind, pid):
    if PIDS:
        with open(os.path.join(PIDS, f"{kind}-{pid}"), "w"):
            pass


def start_grandchild():
    child = subprocess.Popen(["sleep", "1000"])
    record("grandchild", child.pid)
    return child


def handle(request):
    command, _, argument = request.text.partition(" ")
    if command == "sleep":
        time.sleep(int(argument) / 1000)
        return f"slept {argument}"
    if command == "spin":
        until = time.process_time() + int(argument) / 1000
        x = 0
        while time.process_time() < until:
            for i in range(1000):
                x ^= i * 2654435761
        return "spun"
    if command == "stream":
        def tokens():
            for word in argument.split():
                time.sleep(0.02)
                yield word + " "
        return tokens()
    if command == "crash":
        print("probe worker: about to crash", file=sys.stderr, flush=True)
        os._exit(3)
    if command == "leak":
        print("connecting to postgres://app:hunter2@db.internal/prod failed", file=sys.stderr, flush=True)
        os._exit(3)
    if command == "hang":
        time.sleep(3600)
    if command == "error":
        raise WorkerError("the upstream quota is used up", code="resource_exhausted")
    if command == "invalid":
        raise WorkerError("invalid_argument", "the prompt is not allowed")
    if command == "oops":
        raise RuntimeError("cannot connect: db password=hunter2")
    if command == "pid":
        return str(os.getpid())
    if command == "grandchild":
        start_grandchild()
        if argument == "exit":
            os._exit(3)
        if argument == "idle":
            return "started"
        time.sleep(3600)
    return request.text


def deaf():
    """Ready, then never reads: the gateway's writes fill the pipe."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    out.write(json.dumps({"type": "ready", "pid": os.getpid()}) + "\n")
    out.flush()
    time.sleep(3600)


record("worker", os.getpid())
record("parent", os.getppid())
if os.environ.get("PROBE_GRANDCHILD") == "1":
    start_grandchild()
marker = os.environ.get("PROBE_DEAF_ONCE")
if marker and not os.path.exists(marker):
    open(marker, "w").close()
    deaf()
serve(handle)
