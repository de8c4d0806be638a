"""Baseline: the original team's fix turned into a server.

A Python grpcio server for infergate's own API (infergate.v1.Inference,
stubs generated from proto/ by grpcio-tools) whose handler runs the same
blocking work from a ThreadPoolExecutor, as the team did with
loop.run_in_executor. grpcio's sync server runs each RPC on its executor.

    python bench/baselines/grpcio_server.py --port 50063 --workers 32 --latency-ms 0
"""

import argparse
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "examples", "python"))

from client import load_stubs  # noqa: E402  (generates the stubs if needed)

pb, pb_grpc = load_stubs()

import grpc  # noqa: E402


class Inference(pb_grpc.InferenceServicer):
    def __init__(self, latency):
        self.latency = latency

    def Generate(self, request, context):
        received = time.perf_counter()
        if self.latency > 0:
            time.sleep(self.latency)  # the blocking model call
        backend_us = int((time.perf_counter() - received) * 1e6)
        text = request.prompt or "\n".join(m.content for m in request.messages)
        words = len(text.split())
        return pb.GenerateResponse(
            text=text,
            finish_reason=pb.FINISH_REASON_STOP,
            usage=pb.Usage(prompt_tokens=words, completion_tokens=words, total_tokens=2 * words),
            timing=pb.Timing(backend_us=backend_us, total_us=backend_us, time_to_first_token_us=backend_us),
            model=request.model,
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=50063)
    parser.add_argument("--workers", type=int, default=32, help="ThreadPoolExecutor max_workers")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    server = grpc.server(ThreadPoolExecutor(max_workers=args.workers))
    pb_grpc.add_InferenceServicer_to_server(Inference(args.latency_ms / 1000), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"grpcio baseline on 127.0.0.1:{args.port}, {args.workers} threads", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
