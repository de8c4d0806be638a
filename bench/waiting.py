"""Memory per waiting call, quickly (bench S5's measurement without the
rest of the suite): RSS growth of a server holding N unary calls in flight
over a few HTTP/2 connections.

    python3 bench/waiting.py --calls 10000 [--connections 1] [--server infergate|hold]
        [--env NAME=VALUE]... [--streams 16384] [--repeat 3] [--mallinfo]

`infergate`: the release gateway with one simulated model ("scale", 64
workers, a backend sleeping --latency-ms, a queue of N), measured when its
`infergate_inflight_requests` gauge reaches N, after a warm-up call, as S5
does. `hold`: `hop_echo --hop hold` (bare tonic whose handler sleeps on a
tokio timer), measured when its log says it holds N calls: what tonic, h2
and hyper themselves cost per waiting call. The load is `infergate bench
-c N -n N --connections K`. Prints RSS idle, at the peak, and KiB per
call, per repeat (a fresh server each time). With --mallinfo, the server
runs with bench/tools/mallinfo.c preloaded (built here with gcc), and the
line adds glibc's split of the heap at the peak: bytes in use, free bytes
malloc keeps, mmapped blocks.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, Servers, free_port, get, metric, proc_status, wait_port  # noqa: E402

RELEASE = os.path.join(ROOT, "target", "release")


def config(port, metrics_port, calls, streams, latency_ms):
    return (f'[server]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
            f'shutdown_grace_seconds = 1\nmax_concurrent_streams = {streams}\n'
            f'[[models]]\nname = "scale"\nbackend = "simulated"\nworkers = 64\n'
            f'queue_capacity = {calls}\ntimeout_ms = 600000\nmax_timeout_ms = 600000\n'
            f'[models.simulated]\nlatency_ms = {latency_ms}\nmode = "sleep"\n')


def once(args, workdir, servers):
    infergate = os.path.join(RELEASE, "infergate")
    port = free_port()
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in args.env)
    mallinfo_out = os.path.join(workdir, "mallinfo.txt")
    if args.mallinfo:
        env.update(LD_PRELOAD=args.mallinfo, MALLINFO_OUT=mallinfo_out)
    log_path = os.path.join(workdir, f"{args.server}.log")
    log = open(log_path, "w")
    if args.server == "infergate":
        metrics_port = free_port()
        path = os.path.join(workdir, "waiting.toml")
        with open(path, "w") as f:
            f.write(config(port, metrics_port, args.calls, args.streams, args.latency_ms))
        command = [infergate, "serve", "--config", path]
    else:
        command = [os.path.join(RELEASE, "examples", "hop_echo"), "--listen", f"127.0.0.1:{port}", "--hop", "hold",
                   "--hold-ms", str(args.latency_ms), "--streams", str(args.streams)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    servers.processes.append(process)
    wait_port(port, process)
    address = f"127.0.0.1:{port}"
    # Warm the code paths (S5 calls an unknown model; here one short call).
    subprocess.run([infergate, "bench", address, "-d", json.dumps({"model": "warm-up", "prompt": "x"}),
                    "-c", "1", "-n", "10", "--format", "json", "-o", os.devnull, "--no-details"],
                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    rss0, _ = proc_status(process.pid)
    load = subprocess.Popen([infergate, "bench", address, "-d", json.dumps({"model": "scale", "prompt": "x"}),
                             "-c", str(args.calls), "-n", str(args.calls), "--connections", str(args.connections),
                             "-t", "600s", "--format", "json", "-o", os.devnull, "--no-details"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = False
    give_up = time.time() + 300
    while time.time() < give_up and load.poll() is None:
        if args.server == "infergate":
            n = metric(get(f"http://127.0.0.1:{metrics_port}/metrics"), 'infergate_inflight_requests{model="scale"}')
        else:
            held = re.findall(r"held (\d+)", open(log_path).read())
            n = int(held[-1]) if held else 0
        if n is not None and n >= args.calls:
            reached = True
            break
        time.sleep(0.25)
    time.sleep(0.5)
    rss1, threads = proc_status(process.pid)
    heap = open(mallinfo_out).read().strip() if args.mallinfo else ""
    load.send_signal(signal.SIGINT)
    try:
        load.wait(timeout=30)
    except subprocess.TimeoutExpired:
        load.kill()
    servers.stop(process)
    return reached, rss0, rss1, threads, heap


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--streams", type=int, default=16384, help="the server's max_concurrent_streams")
    parser.add_argument("--latency-ms", type=int, default=120000)
    parser.add_argument("--server", default="infergate", choices=("infergate", "hold"))
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mallinfo", action="store_true")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="waiting-")
    if args.mallinfo:
        args.mallinfo = os.path.join(workdir, "mallinfo.so")
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", args.mallinfo,
                        os.path.join(os.path.dirname(__file__), "tools", "mallinfo.c"), "-lpthread"], check=True)
    servers = Servers(workdir)
    try:
        for _ in range(args.repeat):
            reached, rss0, rss1, threads, heap = once(args, workdir, servers)
            growth = rss1 - rss0
            print(f"{args.server} {' '.join(args.env) or '-'} calls={args.calls} connections={args.connections}: "
                  f"{'reached' if reached else 'NOT REACHED'}; RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB, "
                  f"growth {growth / 1024:.1f} MiB = {growth / args.calls:.2f} KiB per call; {threads} threads"
                  + (f"; heap at peak: {heap}" if heap else ""),
                  flush=True)
    finally:
        servers.stop_all()


if __name__ == "__main__":
    main()
