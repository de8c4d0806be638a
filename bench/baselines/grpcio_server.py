"""Baseline: the best a Python team would write, serving infergate's own API.

A Python grpcio server for infergate.v1.Inference (stubs generated from
proto/ by grpcio-tools) whose handler makes the same blocking call as the
gateway's simulated backend (a sleep of --latency-ms, then the echo), in
one of three shapes:

- `--mode aio` (the default): the original team's fix turned into a
  server. A grpc.aio server whose handler does
  `await loop.run_in_executor(executor, blocking_call, request)` over a
  ThreadPoolExecutor of --workers threads, so the event loop never blocks.
- `--mode sync`: grpcio's classic server, each RPC on a thread of its
  ThreadPoolExecutor (--workers threads).
- `--processes N` (with either mode): N such servers in N processes on the
  same port (SO_REUSEPORT; the kernel spreads connections over them), one
  per core, as in grpcio's own multiprocessing example: the GIL is per
  process, so this is how Python uses more than one core.

Prints a line containing "ready" once every process listens.

    python bench/baselines/grpcio_server.py --port 50063 --workers 32 --latency-ms 0
    python bench/baselines/grpcio_server.py --port 50063 --mode sync --processes 2
"""

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


def stubs():
    """The generated modules and grpc, imported only where a server runs
    (the parent of --processes serves nothing)."""
    sys.path.insert(0, os.path.join(ROOT, "examples", "python"))
    from client import load_stubs  # generates the stubs if needed

    pb, pb_grpc = load_stubs()
    import grpc
    import grpc.aio  # noqa: F401

    return pb, pb_grpc, grpc


def blocking_call(pb, latency, request):
    """The model call: blocks for `latency` seconds, then echoes the prompt."""
    received = time.perf_counter()
    if latency > 0:
        time.sleep(latency)
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


def server_options(args):
    return [("grpc.so_reuseport", 1 if args.reuseport else 0)]


def serve_sync(args):
    pb, pb_grpc, grpc = stubs()
    latency = args.latency_ms / 1000

    class Inference(pb_grpc.InferenceServicer):
        def Generate(self, request, context):
            return blocking_call(pb, latency, request)

    server = grpc.server(ThreadPoolExecutor(max_workers=args.workers), options=server_options(args))
    pb_grpc.add_InferenceServicer_to_server(Inference(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"grpcio sync server ready on 127.0.0.1:{args.port}, {args.workers} threads (pid {os.getpid()})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)


async def serve_aio(args):
    pb, pb_grpc, grpc = stubs()
    latency = args.latency_ms / 1000
    executor = ThreadPoolExecutor(max_workers=args.workers)

    class Inference(pb_grpc.InferenceServicer):
        async def Generate(self, request, context):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, blocking_call, pb, latency, request)

    server = grpc.aio.server(options=server_options(args))
    pb_grpc.add_InferenceServicer_to_server(Inference(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop(0)))
    print(f"grpc.aio server ready on 127.0.0.1:{args.port}, run_in_executor over {args.workers} threads "
          f"(pid {os.getpid()})", flush=True)
    await server.wait_for_termination()
    executor.shutdown(wait=False)


def serve_processes(args):
    """Starts args.processes children on one port and waits for them."""
    command = [sys.executable, os.path.abspath(__file__), "--port", str(args.port), "--mode", args.mode,
               "--workers", str(args.workers), "--latency-ms", str(args.latency_ms), "--reuseport"]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(args.processes)]

    def stop(*_):
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        line = child.stdout.readline()  # the child's ready line (or EOF if it died)
        if "ready" not in line:
            print(f"a server process failed to start: {line!r}", flush=True)
            stop()
    print(f"{args.processes} {args.mode} server processes ready on 127.0.0.1:{args.port} (SO_REUSEPORT)", flush=True)
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    print("a server process exited; stopping the others", flush=True)
    stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=50063)
    parser.add_argument("--mode", choices=("aio", "sync"), default="aio")
    parser.add_argument("--workers", type=int, default=32, help="ThreadPoolExecutor max_workers (per process)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--processes", type=int, default=1, help="server processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--reuseport", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.processes > 1:
        serve_processes(args)
    elif args.mode == "sync":
        serve_sync(args)
    else:
        asyncio.run(serve_aio(args))


if __name__ == "__main__":
    main()
