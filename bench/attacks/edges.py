#!/usr/bin/env python3
"""Attacks the network edges of an infergate binary and prints what held.

    python3 bench/attacks/edges.py target/debug/infergate [--slowloris 1000]
        [--idle 20000] [--hold 30]

Starts the binary (embedded default models) on free loopback ports, then:
1. slowloris on /metrics: N connections each send a request line, then a
   header one byte a second, never finishing. Reports how long they were
   held (up to --hold seconds) and whether scrapes got through meanwhile.
2. idle flood on gRPC: M connections (from worker processes of 10,000 each,
   since one process may hold only so many descriptors) send the HTTP/2
   preface and an empty SETTINGS frame, then nothing. Reports how many were
   held, the server's open fds, RSS and CPU at the peak, Generate p50s
   (`infergate bench`) on a connection made before the flood and on one made
   during it, a scrape during the flood, and fds and RSS once the clients
   have gone.
Standard library only; loopback only.
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PER_WORKER = 10_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stats(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss_kb = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return {"fds": fds, "rss_mb": round(rss_kb / 1024, 1), "threads": threads, "cpu_s": round(cpu_s, 2)}


async def scrape(port, timeout=3.0):
    """Status of one GET /metrics and its time, or the error."""
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        status = head.split()[1].decode() if head else "closed"
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        status = type(e).__name__
    return status, round((time.monotonic() - start) * 1000, 1)


async def slowloris(port, n, hold):
    async def one():
        start = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        except Exception:  # noqa: BLE001
            return None
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        read = asyncio.ensure_future(reader.read(4096))
        while time.monotonic() - start < hold:
            done, _ = await asyncio.wait({read}, timeout=1.0)
            if done:
                if not read.exception() and read.result():
                    read = asyncio.ensure_future(reader.read(4096))  # a 408 first
                    continue
                break
            try:
                writer.write(b"a")
                await writer.drain()
            except Exception:  # noqa: BLE001
                break
        read.cancel()
        writer.close()
        return time.monotonic() - start

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    scrapes = []
    await asyncio.sleep(1.0)
    while not all(t.done() for t in tasks):
        scrapes.append(await scrape(port))
        await asyncio.sleep(1.0)
    held = sorted(t.result() for t in tasks if t.result() is not None)
    return {
        "connections": n,
        "connect_failed": n - len(held),
        "closed_within_1s": sum(h < 1 for h in held),
        "held_max_s": round(held[-1], 1) if held else None,
        "held_p50_s": round(held[len(held) // 2], 1) if held else None,
        "still_open_at_hold_limit": sum(h >= hold for h in held),
        "scrapes_ok": sum(s == "200" for s, _ in scrapes),
        "scrapes": len(scrapes),
        "scrape_failures": sorted({s for s, _ in scrapes if s != "200"}),
    }


async def flood_worker(port, n):
    """Worker mode: n idle HTTP/2 connections; report, then close on 'close'."""
    writers, closed, failed = [], [0], [0]

    async def watch(reader):
        try:
            while await reader.read(65536):
                pass
        except Exception:  # noqa: BLE001
            pass
        closed[0] += 1

    async def connect():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(PREFACE)
            writers.append(writer)
            asyncio.ensure_future(watch(reader))
        except Exception:  # noqa: BLE001
            failed[0] += 1

    for i in range(0, n, 500):
        await asyncio.gather(*(connect() for _ in range(min(500, n - i))))
    await asyncio.sleep(1.0)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        print(json.dumps({"connected": len(writers), "failed": failed[0], "closed_by_server": closed[0]}), flush=True)
        if line.strip() != "report":
            break
    for w in writers:
        w.close()


def bench_summary(stdout):
    """p50 and OK count of an `infergate bench --format json` report."""
    try:
        report = json.loads(stdout)
        p50 = next(d["latency"] for d in report["latencyDistribution"] if d["percentage"] == 50)
        return {"p50_ms": round(p50 / 1e6, 2), "ok": report["statusCodeDistribution"].get("OK", 0),
                "calls": report["count"]}
    except Exception:  # noqa: BLE001
        return {"error": stdout[-300:]}


def flood(port, metrics_port, pid, n, binary, hold):
    bench = [binary, "bench", f"127.0.0.1:{port}", "-c", "1", "--format", "json", "--no-details"]
    # A client connected before the flood, calling 50 times a second
    # throughout it (--async: on schedule, however long a call takes;
    # --duration-stop wait: its last calls count to their end).
    existing = subprocess.Popen(bench + ["--rps", "50", "--async", "--duration-stop", "wait", "-z", f"{int(hold) + 5}s"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1.0)
    workers = []
    for i in range(0, n, PER_WORKER):
        workers.append(subprocess.Popen(
            [sys.executable, __file__, "--flood-worker", str(port), str(min(PER_WORKER, n - i))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))

    def ask(what):
        counts = {"connected": 0, "failed": 0, "closed_by_server": 0}
        for w in workers:
            w.stdin.write(what + "\n")
            w.stdin.flush()
            for k, v in json.loads(w.stdout.readline()).items():
                counts[k] += v
        return counts

    started = time.monotonic()
    first = ask("report")
    peak = proc_stats(pid)
    # A client that connects during the flood.
    new = subprocess.run(bench + ["-n", "200"], capture_output=True, text=True, timeout=120)
    during_scrape = asyncio.run(scrape(metrics_port))
    time.sleep(max(0.0, hold - (time.monotonic() - started)))
    later = ask("report")
    at_hold = proc_stats(pid)
    ask("close")
    for w in workers:
        w.wait(timeout=60)
    time.sleep(5)
    after = proc_stats(pid)
    existing_out, _ = existing.communicate(timeout=120)
    return {
        "connections": n, "at_peak": first, "peak_server": peak,
        "generate_existing_connection": bench_summary(existing_out),
        "generate_new_connection_during": bench_summary(new.stdout),
        "scrape_during": during_scrape, f"after_{hold}s": later, f"server_after_{hold}s": at_hold,
        "server_5s_after_clients_left": after,
    }


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--flood-worker":
        asyncio.run(flood_worker(int(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--slowloris", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=20000)
    parser.add_argument("--hold", type=float, default=30.0)
    args = parser.parse_args()

    port, metrics_port = free_port(), free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    server = subprocess.Popen(
        [args.binary, "serve", "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            if asyncio.run(scrape(metrics_port, 0.5))[0] == "200":
                break
            time.sleep(0.1)
        result = {"binary": args.binary, "idle_server": proc_stats(server.pid)}
        if args.slowloris:
            result["slowloris"] = asyncio.run(slowloris(metrics_port, args.slowloris, args.hold))
            result["after_slowloris_server"] = proc_stats(server.pid)
        if args.idle:
            result["idle_flood"] = flood(port, metrics_port, server.pid, args.idle, args.binary, args.hold)
        log.seek(0)
        text = log.read()
        result["log_accept_errors"] = sum("cannot accept" in line for line in text.splitlines())
        result["log_fd_limit"] = [line.split("open file limit", 1)[1].strip()[:120]
                                  for line in text.splitlines() if "open file limit" in line]
        print(json.dumps(result, indent=2))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
