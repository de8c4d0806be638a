"""The infergate benchmark suite (standard library only; run by bench/run.sh).

Starts infergate and the baselines on loopback, drives them with
`infergate bench` (and h2load for S1, where installed), and writes
bench/RESULTS.md with, for each scenario, the figure, the target, why that
target, and pass or fail, every ratio measured side by side in the same
run, plus a picture per scenario (SVG, next to the results). Figures that
have no target are listed apart: nothing in the pass/fail table can pass
by construction.

    python3 bench/suite.py --infergate target/release/infergate \
        --baseline target/release/examples/tonic_echo --python .venv/bin/python [--smoke]

S1 lives in s1.py; helpers shared by the scenarios in common.py.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import svg  # noqa: E402
from common import (ROOT, Pinning, Servers, cpu_model, free_port, gateway_config, get, metric,  # noqa: E402
                    metrics_of, model, proc_cpu, proc_status, run_timed, wait_port)
from s1 import Overhead  # noqa: E402
from s7 import Cache  # noqa: E402
from s8 import Upstreams  # noqa: E402
from s9 import Fairness  # noqa: E402


class Suite:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.workdir = tempfile.mkdtemp(prefix="infergate-bench-")
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.servers = Servers(self.workdir)
        self.pinning = Pinning(not args.no_pin)
        self.rows = []      # (scenario, figure, value, target, why, passed)
        self.infos = []     # (scenario, figure, value, why it has no target)
        self.sections = []  # markdown per scenario

    # -- tools -------------------------------------------------------------

    def bench(self, target, data, *flags, name="run", details=False, prefix=()):
        """Runs `infergate bench --format json` (after `prefix`, e.g. a
        taskset); returns the report, with the generator's own CPU use
        (cores: CPU seconds over wall seconds) as `generatorCores`."""
        path = os.path.join(self.workdir, f"{name}.json")
        # --duration-stop wait: a -z run counts every call it started to its
        # end (ghz's default, close, would cancel the calls in flight when
        # -z runs out and count them as Canceled errors).
        command = [*prefix, self.args.infergate, "bench", target, "-d", json.dumps(data),
                   "--format", "json", "-o", path, "--name", name, "--duration-stop", "wait", *flags]
        if not details:
            command.append("--no-details")
        _, cpu, wall = run_timed(command, check=True, cwd=ROOT)
        with open(path) as f:
            report = json.load(f)
        report["generatorCores"] = cpu / wall
        if details:
            shutil.copy(path, os.path.join(self.out, f"{name}.json"))
        return report

    def start_gateway(self, models, log, prefix=()):
        port, metrics_port = free_port(), free_port()
        config = os.path.join(self.workdir, f"{log}.toml")
        with open(config, "w") as f:
            f.write(gateway_config(port, metrics_port, models))
        process = self.servers.start([*prefix, self.args.infergate, "serve", "--config", config], port, f"{log}.log")
        wait_port(metrics_port, process)
        return f"127.0.0.1:{port}", metrics_port, process

    def row(self, scenario, figure, value, target, why, passed):
        """A checked figure: its target, why that target, pass or fail."""
        self.rows.append((scenario, figure, value, target, why, "pass" if passed else "**FAIL**"))

    def info(self, scenario, figure, value, why):
        """A figure shown without a target (and why it has none)."""
        self.infos.append((scenario, figure, value, why))

    def secs(self, ns):
        return ns / 1e9

    def ms(self, ns):
        return ns / 1e6

    # -- scenarios ---------------------------------------------------------

    def s1_overhead(self):
        Overhead(self).run()

    def s2_overlap(self):
        models = [model("slow-a", 829, 1, 4), model("slow-b", 696, 1, 4),
                  model("burst64", 100, 64, 64), model("burst16", 100, 16, 64)]
        gateway, _, gw = self.start_gateway(models, "s2-gateway")
        naive_port = free_port()
        naive = self.servers.start([self.args.baseline, "--listen", f"127.0.0.1:{naive_port}", "--mode", "naive",
                                    "--latency", "slow-a=829", "--latency", "slow-b=696", "--default-latency-ms", "100"],
                                   naive_port, "s2-naive.log")
        pair = [{"model": "slow-a", "prompt": "search the literature"}, {"model": "slow-b", "prompt": "rank the abstracts"}]
        burst = lambda m: {"model": m, "prompt": "x"}  # noqa: E731
        # One burst each first, so that every worker thread has run once
        # (its stack and malloc arena exist): the figures are steady state.
        for m in ("burst64", "burst16"):
            self.bench(gateway, burst(m), "-c", "64", "-n", "64", name="s2-warmup")
        r_pair = self.bench(gateway, pair, "-c", "2", "-n", "2", name="s2-pair", details=True)
        r64 = self.median_burst(gateway, burst("burst64"), "s2-64-on-64")
        r16 = self.median_burst(gateway, burst("burst16"), "s2-64-on-16")
        batches = self.python_batches(gateway)
        n_pair = self.bench(f"127.0.0.1:{naive_port}", pair, "-c", "2", "-n", "2", name="s2-naive-pair", details=True)
        naive_calls = 16 if self.smoke else 64
        n64 = self.bench(f"127.0.0.1:{naive_port}", burst("x"), "-c", "64", "-n", str(naive_calls), name="s2-naive-64", details=True)
        self.servers.stop(gw)
        self.servers.stop(naive)

        t_pair, t64, t16 = self.secs(r_pair["total"]), self.secs(r64["total"]), self.secs(r16["total"])
        self.row("S2 overlap", "the original pair, 829 ms + 696 ms at once", f"{t_pair:.3f} s (naive: {self.secs(n_pair['total']):.3f} s)", "<= 0.84 s",
                 "the pair takes as long as its longer call (829 ms), not the sum (1.525 s)", t_pair <= 0.84 and r_pair["statusCodeDistribution"].get("OK") == 2)
        if batches:
            walls = [b["wall"] for b in batches]
            median = sorted(batches, key=lambda b: b["wall"])[len(batches) // 2]
            spread = f" ({min(walls):.3f}–{max(walls):.3f} s, {len(batches)} runs)" if len(batches) > 1 else ""
            self.row("S2 overlap", "the original pair in one GenerateBatch call, from a synchronous Python client (examples/python/batch.py)",
                     f"{median['wall']:.3f} s{spread}; server summary {median['server']:.3f} s", "<= 0.84 s, 696 ms item first",
                     "one plain blocking call gets the overlap too: the longer call, not the sum; items stream as they finish",
                     median["passed"] and all(b["ordered"] for b in batches))
        self.row("S2 overlap", "64 calls of 100 ms on 64 workers", f"{t64 * 1000:.1f} ms ({t64 / 0.1:.3f}x of 100 ms)", "<= 1.05x",
                 "all 64 run at once; 5 ms for 64 hand-offs", t64 <= 0.105 and r64["statusCodeDistribution"].get("OK") == 64)
        self.row("S2 overlap", "64 calls of 100 ms on 16 workers", f"{t16 * 1000:.1f} ms ({t16 / 0.4:.3f}x of the 400 ms bound)", "<= 1.05x",
                 "four full waves: a freed worker takes the next call at once", t16 <= 0.42 and r16["statusCodeDistribution"].get("OK") == 64)
        self.info("S2 overlap", f"naive design: {naive_calls} calls of 100 ms, blocking inline", f"{self.secs(n64['total']):.2f} s",
                  "the bug under study, shown for contrast: it serialises by design")
        svg.timeline(os.path.join(self.out, "s2-timeline.svg"), "S2: calls over time",
                     [("infergate: the pair", r_pair), ("naive: the pair", n_pair),
                      ("infergate: 64 x 100 ms, 16 workers", r16), (f"naive: {naive_calls} x 100 ms", n64)])
        if batches:
            batch_text = f"""
The same pair in one `GenerateBatch` call from a plain synchronous grpcio
client (`examples/python/batch.py --check`: `for r in stub.GenerateBatch(req)`,
no asyncio, no threads; the channel connected before the clock starts),
{len(batches)} run(s), the median by the client's wall time:

```
{median['output'].strip()}
```
"""
        else:
            batch_text = "\nThe synchronous Python GenerateBatch client was skipped: no --python given.\n"
        self.sections.append(f"""### S2 overlap

The original pair (829 ms and 696 ms, the story's 8.29 s and 6.96 s scaled
down 10x; serial 1.525 s) as two concurrent calls; bursts of 64 calls of 100
ms on 64 and on 16 workers (bound: 100 ms and 400 ms; after one warm-up
burst each, the median of 3 bursts); beside them the naive
design (`bench/baselines/tonic_echo.rs --mode naive`: the blocking call
inline in the async handler, on one runtime thread like the asyncio loop of
the original attempt).

| run | wall | calls OK |
|---|---|---|
| infergate, the pair | {t_pair:.3f} s | {r_pair['statusCodeDistribution'].get('OK', 0)} |
| naive, the pair | {self.secs(n_pair['total']):.3f} s | {n_pair['statusCodeDistribution'].get('OK', 0)} |
| infergate, 64 x 100 ms on 64 workers | {t64 * 1000:.1f} ms | {r64['statusCodeDistribution'].get('OK', 0)} |
| infergate, 64 x 100 ms on 16 workers | {t16 * 1000:.1f} ms | {r16['statusCodeDistribution'].get('OK', 0)} |
| naive, {naive_calls} x 100 ms | {self.secs(n64['total']):.2f} s | {n64['statusCodeDistribution'].get('OK', 0)} |
{batch_text}
![S2 calls over time](results/s2-timeline.svg)
""")

    def python_batches(self, gateway):
        """examples/python/batch.py --check against the gateway (3 runs;
        smoke: 1): per run, the client's wall time, the server summary's,
        whether the 696 ms item came first with both OK, whether --check
        passed, and what it printed. None without --python."""
        if not self.args.python:
            return None
        script = os.path.join(ROOT, "examples", "python", "batch.py")
        runs = []
        for _ in range(1 if self.smoke else 3):
            try:
                done = subprocess.run([self.args.python, script, "--check", "--target", gateway],
                                      capture_output=True, text=True, timeout=60, cwd=ROOT)
            except subprocess.TimeoutExpired:
                done = subprocess.CompletedProcess([], 1, "", "batch.py: no answer in 60 s")
            out = done.stdout
            client = re.search(r"^client: ([0-9.]+) s wall$", out, re.M)
            server = re.search(r"^summary: wall ([0-9.]+) s", out, re.M)
            order = re.findall(r"^task [AB] \(item (\d), ", out, re.M)
            runs.append({
                "wall": float(client.group(1)) if client else float("inf"),
                "server": float(server.group(1)) if server else float("inf"),
                "ordered": order == ["1", "0"] and "2 of 2 items succeeded" in out,
                "passed": done.returncode == 0,
                "output": out + done.stderr,
            })
        return runs

    def median_burst(self, gateway, data, name, runs=3):
        """The median (by wall time) of a few bursts of 64 calls."""
        reports = [self.bench(gateway, data, "-c", "64", "-n", "64", name=f"{name}-{i}", details=True) for i in range(runs)]
        median = sorted(reports, key=lambda r: r["total"])[runs // 2]
        shutil.copy(os.path.join(self.workdir, f"{median['name']}.json"), os.path.join(self.out, f"{name}.json"))
        for i in range(runs):
            path = os.path.join(self.out, f"{name}-{i}.json")
            if os.path.exists(path):
                os.remove(path)
        return median

    def s3_saturation(self):
        duration = "3s" if self.smoke else "30s"
        gateway, _, gw = self.start_gateway([model("sat", 50, 32, 64)], "s3-gateway")
        data = {"model": "sat", "prompt": "x"}
        self.bench(gateway, data, "-c", "64", "-z", "1s", name="s3-warmup")
        r = self.bench(gateway, data, "-c", "64", "-z", duration, name="s3")
        self.servers.stop(gw)
        bound = 32 / 0.05
        errors = r["count"] - r["statusCodeDistribution"].get("OK", 0)
        mean = self.secs(r["average"])
        self.row("S3 saturation", "throughput, 32 workers x 50 ms, c=64", f"{r['rps']:.1f} req/s ({r['rps'] / bound:.1%} of {bound:.0f})", ">= 95%",
                 "a full pool stays full: a freed worker takes the next queued call at once", r["rps"] >= 0.95 * bound)
        self.row("S3 saturation", "errors", f"{errors}", "0", "the queue (64) holds every waiting call: nothing is refused", errors == 0)
        svg.histogram(os.path.join(self.out, "s3-latency.svg"), "S3: latency at saturation (c=64, 32 workers x 50 ms)", r)
        self.sections.append(f"""### S3 saturation

32 workers, 50 ms calls, closed loop c=64 for {duration}: the pool is full and
32 calls wait, so each call waits one service time and latency is about 100
ms; throughput is bounded by 32 / 50 ms = 640 requests/s. (In a closed
loop the mean latency is c / throughput by construction, so Little's law
is checked in S4's open loop instead.)

{r['count']} calls, {r['rps']:.1f} requests/s, mean {mean * 1000:.1f} ms,
p50 {self.ms(r['latencyDistribution'][2]['latency']):.1f} ms, p99 {self.ms(r['latencyDistribution'][6]['latency']):.1f} ms.

![S3 latency](results/s3-latency.svg)
""")

    def s4_queueing(self):
        seconds = 3 if self.smoke else 20
        gateway, metrics_port, gw = self.start_gateway([model("sat", 50, 32, 64)], "s4-gateway")
        data = {"model": "sat", "prompt": "x"}
        # --async: the open loop (calls start on schedule however many run;
        # latency from the scheduled start), not ghz's --rps pacing of -c
        # workers.
        self.bench(gateway, data, "--rps", "400", "--async", "-z", "1s", name="s4-warmup")
        # Little's law, L = X W, in the open loop: L is the gateway's own
        # in-flight gauge sampled during the run, X the achieved rate, W the
        # client's mean latency (from each call's scheduled start). The
        # three come from different places, so they agree only if the
        # client hides no queue and the gauge counts what is in flight.
        samples, done = [], threading.Event()
        series = 'infergate_inflight_requests{model="sat"}'

        def sample():
            start = time.time()
            while not done.wait(0.1):
                value = metric(get(f"http://127.0.0.1:{metrics_port}/metrics"), series)
                if value is not None:
                    samples.append((time.time() - start, value))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            r = self.bench(gateway, data, "--rps", "400", "--async", "-z", f"{seconds}s", name="s4")
        finally:
            done.set()
            sampler.join()
        self.servers.stop(gw)
        steady = [v for t, v in samples if 0.5 <= t <= seconds - 0.5]
        p99 = self.ms(r["latencyDistribution"][6]["latency"])
        wait99 = r["infergate"]["queueWait"]["p99"] / 1e6
        mean_w = self.secs(r["average"])
        in_flight = sum(steady) / len(steady) if steady else float("nan")
        little_w = in_flight / r["rps"]
        off = abs(mean_w - little_w) / mean_w if steady else float("inf")
        self.row("S4 queueing", "p99 latency, open loop 400 req/s, 32 workers x 50 ms", f"{p99:.2f} ms ({p99 / 50:.3f}x of 50 ms)", "<= 1.04x",
                 "at 62.5% load with calls on a fixed schedule no call needs to wait: 2 ms for the path", p99 <= 52)
        self.row("S4 queueing", "server-side queue wait p99", f"{wait99:.3f} ms", "<= 1 ms",
                 "a call with a free worker is handed over at once", wait99 <= 1.0)
        self.row("S4 queueing", "Little's law: client mean latency W vs L / X (L: the gateway's in-flight gauge)",
                 f"{mean_w * 1000:.2f} ms vs {little_w * 1000:.2f} ms ({off:.1%} apart; L = {in_flight:.2f}, X = {r['rps']:.1f}/s, {len(steady)} samples)",
                 "within 5%", "client latency, server gauge and rate agree: no hidden queue, no leaked gauge", off <= 0.05)
        svg.histogram(os.path.join(self.out, "s4-latency.svg"), "S4: latency, open loop 400 req/s (service time 50 ms)", r)
        self.sections.append(f"""### S4 queueing overhead

The S3 model in open loop at 400 requests/s for {seconds} s (62.5% utilisation):
calls start on schedule whatever the server does, and latency is measured
from the scheduled start. {r['count']} calls; p50 {self.ms(r['latencyDistribution'][2]['latency']):.2f} ms,
p99 {p99:.2f} ms; server-reported queue wait mean {r['infergate']['queueWait']['mean'] / 1e3:.0f} µs, p99 {wait99 * 1000:.0f} µs.
Little's law in this open loop: the gateway's `infergate_inflight_requests`
gauge, sampled every 0.1 s away from the start and the end, averaged
L = {in_flight:.2f} calls; at the achieved X = {r['rps']:.1f} calls/s that
means W = L / X = {little_w * 1000:.2f} ms, against the client's measured
mean of {mean_w * 1000:.2f} ms.

![S4 latency](results/s4-latency.svg)
""")

    def s5_scale(self):
        calls = 1000 if self.smoke else 10000
        workers = 64
        gateway, metrics_port, gw = self.start_gateway([model("scale", 10000, workers, calls)], "s5-gateway")
        # Warm the server's code paths (a call to an unknown model costs
        # nothing), then read its idle size.
        self.bench(gateway, {"model": "warm-up", "prompt": "x"}, "-c", "1", "-n", "10", name="s5-touch")
        rss0, threads0 = proc_status(gw.pid)
        path = os.path.join(self.workdir, "s5.json")
        load = subprocess.Popen([self.args.infergate, "bench", gateway, "-d", json.dumps({"model": "scale", "prompt": "x"}),
                                 "-c", str(calls), "-n", str(calls), "-t", "600s", "--format", "json", "-o", path, "--no-details"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = None
        give_up = time.time() + 120
        while time.time() < give_up:
            scrape = get(f"http://127.0.0.1:{metrics_port}/metrics")
            inflight = metric(scrape, 'infergate_inflight_requests{model="scale"}')
            if inflight is not None and inflight >= calls:
                peak = scrape
                break
            time.sleep(0.25)
        rss1, threads1 = proc_status(gw.pid)
        rejected = sum(v for k, v in metrics_of(peak or "", "infergate_rejected_total").items() if 'model="scale"' in k)
        load.send_signal(signal.SIGINT)
        try:
            load.wait(timeout=30)
        except subprocess.TimeoutExpired:
            load.kill()
        # The cancelled calls leave the queue: the gateway drains at once.
        drained_in = None
        start = time.time()
        while time.time() - start < 30:
            scrape = get(f"http://127.0.0.1:{metrics_port}/metrics")
            if metric(scrape, 'infergate_inflight_requests{model="scale"}') == 0:
                drained_in = time.time() - start
                break
            time.sleep(0.1)
        self.servers.stop(gw)
        cores = os.cpu_count() or 2
        growth = (rss1 - rss0) / 1024
        thread_bound = workers + cores + 5
        self.row("S5 scale", f"{calls} calls in flight at once (10 s backend, {workers} workers)", "reached" if peak else "not reached", "all admitted",
                 "the queue is sized for them: waiting calls are accepted, none refused", peak is not None and rejected == 0)
        per_call = growth * 1024 / calls
        self.row("S5 scale", "memory growth (RSS)", f"{growth:.1f} MiB ({per_call:.1f} KiB per call)", f"<= 4 KiB per call ({4 * calls / 1024:.0f} MiB)",
                 "issue 9: a waiting call is a small queue entry, not a stack or a buffer", peak is not None and per_call <= 4)
        self.row("S5 scale", "OS threads at peak", f"{threads1} (idle: {threads0})", f"<= {thread_bound} (workers + {cores} runtime + 5)",
                 "waiting calls cost no threads", threads1 <= thread_bound)
        svg.bars(os.path.join(self.out, "s5-memory.svg"), f"S5: gateway memory, idle and with {calls} calls in flight",
                 [("RSS idle", rss0 / 1024), (f"RSS, {calls} in flight", rss1 / 1024)], unit="MiB")
        self.sections.append(f"""### S5 scale

{calls} calls at once on a model with a 10 s backend, {workers} workers and a
queue of {calls}: {workers} run, the rest wait in the queue, and waiting
costs memory, not threads. Measured from /proc when the gateway's
`infergate_inflight_requests` reached {calls}: RSS {rss0 / 1024:.1f} MiB idle,
{rss1 / 1024:.1f} MiB at the peak; {threads0} threads idle, {threads1} at the peak;
{int(rejected)} rejected. Then the load generator was interrupted: every
call was cancelled and the gateway had nothing in flight
{f'{drained_in:.1f} s later' if drained_in is not None else '(not within 30 s)'}.

![S5 memory](results/s5-memory.svg)
""")

    def s6_cpu(self):
        duration = 2 if self.smoke else 10
        runs = []
        for workers in (2, 8):
            gateway, metrics_port, gw = self.start_gateway([model("spin", 100, workers, 64, mode="spin")], f"s6-{workers}")
            data = {"model": "spin", "prompt": "x"}
            self.bench(gateway, data, "-c", "16", "-z", "1s", name="s6-warmup")
            before = get(f"http://127.0.0.1:{metrics_port}/metrics")
            cpu0, t0 = proc_cpu(gw.pid), time.time()
            r = self.bench(gateway, data, "-c", "16", "-z", f"{duration}s", name=f"s6-{workers}")
            cpu1, t1 = proc_cpu(gw.pid), time.time()
            after = get(f"http://127.0.0.1:{metrics_port}/metrics")
            self.servers.stop(gw)
            busy = metric(after, 'infergate_backend_busy_seconds_total{model="spin"}') - metric(before, 'infergate_backend_busy_seconds_total{model="spin"}')
            parallelism = busy / (t1 - t0)
            cpu = (cpu1 - cpu0) / (t1 - t0)
            backend_mean = self.secs(r["infergate"]["backendTotal"]) / max(1, r["count"])
            runs.append((workers, r["rps"], parallelism, cpu, backend_mean))
        (w2, rps2, par2, cpu2, b2), (w8, rps8, par8, cpu8, b8) = runs
        cores = os.cpu_count() or 2
        self.row("S6 CPU-bound", "throughput, 2 vs 8 spinning workers (100 ms CPU per call)", f"{rps2:.1f} vs {rps8:.1f} req/s", f"8 workers gain nothing on {cores} cores",
                 "CPU-bound work cannot go faster than the cores", rps8 <= rps2 * 1.15)
        self.row("S6 CPU-bound", "metrics: busy workers (rate of busy-seconds) vs CPU cores used", f"{par2:.1f} busy / {cpu2:.2f} cores vs {par8:.1f} busy / {cpu8:.2f} cores", "busy grows, cores do not",
                 "the metrics must show saturation as it is: busy workers, not more CPU", par8 > par2 * 2 and cpu8 <= cores + 0.2)
        svg.groups(os.path.join(self.out, "s6-cpu.svg"), "S6: CPU-bound calls on 2 cores, 2 vs 8 workers",
                   ["requests/s", "busy workers (metrics)", "CPU cores used", "mean backend time (x 10 ms)"],
                   [(f"{w2} workers", [rps2, par2, cpu2, b2 * 100]), (f"{w8} workers", [rps8, par8, cpu8, b8 * 100])])
        self.sections.append(f"""### S6 CPU-bound

`mode = "spin"`: each call burns 100 ms of CPU. Closed loop c=16 for {duration} s
on {cores} cores, with 2 and with 8 workers. More workers than cores add
no throughput: the calls share the cores and each takes longer. The metrics
say so: `rate(infergate_backend_busy_seconds_total)` (calls running at once)
rises with the workers while the CPU the gateway uses stays at the core
count, and the mean backend time grows.

| workers | requests/s | busy workers (metrics) | CPU cores used (/proc) | mean backend time |
|---|---|---|---|---|
| {w2} | {rps2:.1f} | {par2:.2f} | {cpu2:.2f} | {b2 * 1000:.0f} ms |
| {w8} | {rps8:.1f} | {par8:.2f} | {cpu8:.2f} | {b8 * 1000:.0f} ms |

For CPU-bound Python, the process backend gives each worker its own
interpreter: see `tests/process_cpu.rs` (2 workers do about twice the work
of 1 on 2 cores).

![S6 CPU](results/s6-cpu.svg)
""")

    def s7_cache(self):
        Cache(self).run()

    def s8_upstreams(self):
        Upstreams(self).run()

    def s9_fairness(self):
        Fairness(self).run()

    # -- output ------------------------------------------------------------

    def write(self, path, elapsed):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        passed = sum(1 for r in self.rows if r[5] == "pass")
        table = "\n".join(f"| {s} | {f} | {v} | {t} | {w} | {p} |" for s, f, v, t, w, p in self.rows)
        infos = "\n".join(f"| {s} | {f} | {v} | {w} |" for s, f, v, w in self.infos)
        cpu = cpu_model()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        with open(path, "w") as f:
            f.write(f"""# infergate benchmark results

Written by `bench/run.sh`{' --smoke (a smoke run: short durations, not the figures of record)' if self.smoke else ''}
on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit `{commit}`, in {elapsed:.0f} s.
Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; release builds; loopback only;
load average {load:.1f} at the end of the run (other work on the machine shares its cores).
S1: {self.pinning.describe()}; S2-S7: the load generator (`infergate bench`) runs on the same cores as the servers.

{passed} of {len(self.rows)} checks pass.

| scenario | figure | measured | target | why this target | result |
|---|---|---|---|---|---|
{table}

Figures without a target (shown for context; they cannot fail):

| scenario | figure | measured | why no target |
|---|---|---|---|
{infos}

""")
            f.write("\n".join(self.sections))
        print(f"{passed}/{len(self.rows)} checks pass; wrote {path}")
        return passed == len(self.rows)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--infergate", required=True)
    parser.add_argument("--baseline", required=True, help="the tonic_echo example binary")
    parser.add_argument("--python", help="a Python with grpcio and grpcio-tools (without it, no Python baselines)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", help="comma-separated scenarios, e.g. s1,s4")
    parser.add_argument("--pinned", action="store_true", help="S1 must pin servers and generators to disjoint cores (needs >= 4)")
    parser.add_argument("--no-pin", action="store_true", help="never pin, even on 4 or more cores")
    parser.add_argument("--rounds", type=int, help="S1 rounds (default 3; smoke 1)")
    parser.add_argument("--seconds", type=int, help="S1 seconds per run (default 3; smoke 1)")
    parser.add_argument("--workers", help="S1 worker counts, comma-separated (default 2,8,64,256; smoke 2,64)")
    args = parser.parse_args()
    suite = Suite(args)
    if args.pinned and not suite.pinning.enabled:
        sys.exit(f"--pinned needs 4 or more usable cores and taskset (cores: {len(suite.pinning.server_cpus)})")
    start = time.time()
    scenarios = [suite.s1_overhead, suite.s2_overlap, suite.s3_saturation, suite.s4_queueing, suite.s5_scale, suite.s6_cpu, suite.s7_cache,
                 suite.s8_upstreams, suite.s9_fairness]
    if args.only:
        wanted = set(args.only.split(","))
        scenarios = [s for s in scenarios if s.__name__.split("_")[0] in wanted]
    try:
        for scenario in scenarios:
            print(f"== {scenario.__name__}", flush=True)
            scenario()
    finally:
        suite.servers.stop_all()
        shutil.rmtree(suite.workdir, ignore_errors=True)
    ok = suite.write(args.results, time.time() - start)
    sys.exit(0 if ok or args.smoke else 1)


if __name__ == "__main__":
    main()
