"""h2load (Debian `nghttp2-client`, written in C) as a gRPC load generator:
a unary gRPC call is an HTTP/2 POST with `content-type: application/grpc`,
`te: trailers` and a length-prefixed protobuf body, here read from a file.

h2load counts HTTP 200 answers and cannot see gRPC's status, which comes in
the trailers; so `grpc_status` sends the same body once with `nghttp` (same
package) and reads the `grpc-status` trailer, and the suite checks the
gateway's own OK counter as well."""

import os
import re
import subprocess

from common import which

METHOD = "/infergate.v1.Inference/Generate"


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string_field(number, text):
    data = text.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def grpc_body(model, prompt):
    """A GenerateRequest {model = 1, prompt = 2} as one gRPC message: flag
    byte 0 (not compressed), 4-byte big-endian length, protobuf bytes."""
    message = _string_field(1, model) + _string_field(2, prompt)
    return b"\0" + len(message).to_bytes(4, "big") + message


class H2load:
    """Runs h2load against host:port targets with one request body."""

    HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]

    def __init__(self, workdir, model, prompt):
        self.h2load = which("h2load")
        self.nghttp = which("nghttp")
        self.body = os.path.join(workdir, "generate.bin")
        with open(self.body, "wb") as f:
            f.write(grpc_body(model, prompt))

    @property
    def available(self):
        return self.h2load is not None

    def command(self, target, seconds, connections, streams, threads):
        return [self.h2load, "-D", str(seconds), "-c", str(connections), "-m", str(streams), "-t", str(threads),
                "-d", self.body, *self.HEADERS, f"http://{target}{METHOD}"]

    @staticmethod
    def parse(output):
        """req/s and request counts from h2load's summary."""
        finished = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", output)
        counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                           r"(\d+) failed, (\d+) errored, (\d+) timeout", output)
        if not finished or not counts:
            raise RuntimeError(f"cannot read h2load's summary:\n{output[-2000:]}")
        return {
            "seconds": float(finished.group(1)),
            "rps": float(finished.group(2)),
            "succeeded": int(counts.group(4)),
            "failed": int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7)),
        }

    def grpc_status(self, target):
        """The grpc-status trailer of one call with the benchmark's body, or
        None when nghttp is not installed."""
        if not self.nghttp:
            return None
        result = subprocess.run([self.nghttp, "-v", "-d", self.body, *self.HEADERS, f"http://{target}{METHOD}"],
                                capture_output=True, timeout=30)
        found = re.search(rb"grpc-status: (\d+)", result.stdout)
        return found.group(1).decode() if found else f"none (nghttp exit {result.returncode})"
