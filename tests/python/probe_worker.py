"""A test worker for infergate's process backend, driven by its prompt:

    sleep MS      sleeps, then answers "slept MS"
    spin MS       burns CPU for MS, then answers "spun"
    stream A B C  yields the words as tokens, one every 20 ms
    crash         writes to stderr and exits with status 3
    hang          sleeps for an hour, ignoring cancel lines
    error         raises WorkerError(code="resource_exhausted")
    oops          raises a plain exception
    pid           answers its process id
    anything else is echoed
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

from infergate_worker import WorkerError, serve  # noqa: E402


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
    if command == "hang":
        time.sleep(3600)
    if command == "error":
        raise WorkerError("the upstream quota is used up", code="resource_exhausted")
    if command == "oops":
        raise RuntimeError("a bug in the worker")
    if command == "pid":
        return str(os.getpid())
    return request.text


serve(handle)
