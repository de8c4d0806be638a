"""S7, the response cache: a workload of mostly repeated greedy prompts on a
slow model, with the model's cache and without it, in one gateway; and
identical calls arriving together on a cold cache, which must share one
backend call.

Two models alike but for the cache: 8 workers, 100 ms simulated calls.
The workload (`infergate bench -d` with one array item per call, so that no
item comes round twice): 9 calls in 10 ask one of 10 prompts, every 10th
asks a prompt of its own; every call sets temperature 0, so every call is
cacheable. Backend calls are read from ListModels (`backend_calls`, through
bench/list_models.py with the suite's Python), or, without a Python with
grpcio, from `infergate_backend_duration_seconds_count`.
"""

import json
import os
import random
import subprocess

import svg
from common import HERE, get, metric, model

SCENARIO = "S7 response cache"
LATENCY_MS = 100
WORKERS = 8
CONCURRENCY = 16
HOT_PROMPTS = 10
IDENTICAL = 100
# One array item per call, passed in one argument (Linux caps one argument
# at 128 KiB): a few seconds of calls at most.
MAX_DATA_BYTES = 120_000


def percentile(report, p):
    for d in report.get("latencyDistribution") or []:
        if d["percentage"] == p:
            return d["latency"] / 1e6
    return float("nan")


def workload(name, calls):
    """`calls` requests for model `name`: 9 in 10 one of HOT_PROMPTS
    prompts (chosen at random, the same sequence each time), every 10th a
    prompt of its own."""
    rng = random.Random(7)
    items = []
    for i in range(calls):
        prompt = f"once {i}" if i % 10 == 9 else f"hot {rng.randrange(HOT_PROMPTS)}"
        items.append({"model": name, "prompt": prompt, "temperature": 0})
    return items


class Cache:
    def __init__(self, suite):
        self.suite = suite
        self.smoke = suite.smoke
        self.calls_cached = 400 if self.smoke else 1600
        self.calls_uncached = 48 if self.smoke else 320
        self.stubs = os.path.join(suite.workdir, "stubs")
        self.source = "ListModels `backend_calls`" if suite.args.python else "`infergate_backend_duration_seconds_count`"

    def backend_calls(self, address, metrics_port, name):
        """The backend calls `name` has made so far."""
        if self.suite.args.python:
            out = subprocess.run([self.suite.args.python, os.path.join(HERE, "list_models.py"), "--stubs", self.stubs, address],
                                 check=True, capture_output=True, text=True).stdout
            return int(json.loads(out)[name]["backend_calls"])
        scrape = get(f"http://127.0.0.1:{metrics_port}/metrics")
        return int(metric(scrape, f'infergate_backend_duration_seconds_count{{model="{name}"}}') or 0)

    def counters(self, metrics_port):
        scrape = get(f"http://127.0.0.1:{metrics_port}/metrics")
        return {kind: metric(scrape, f'infergate_cache_{kind}_total{{model="cached"}}') or 0.0
                for kind in ("hits", "misses", "coalesced")}

    def measured(self, address, metrics_port, name, data, flags, run):
        """A run of `infergate bench`, with the backend calls and cache
        counters it caused."""
        size = len(json.dumps(data))
        if size > MAX_DATA_BYTES:
            raise RuntimeError(f"S7: {size} bytes of -d for {run}: over {MAX_DATA_BYTES}")
        calls0, counters0 = self.backend_calls(address, metrics_port, name), self.counters(metrics_port)
        report = self.suite.bench(address, data, *flags, name=run)
        calls1, counters1 = self.backend_calls(address, metrics_port, name), self.counters(metrics_port)
        report["backendCalls"] = calls1 - calls0
        report["cache"] = {k: int(counters1[k] - counters0[k]) for k in counters0}
        report["ok"] = report["statusCodeDistribution"].get("OK", 0)
        return report

    def run(self):
        suite = self.suite
        cache = "[models.cache]\nmax_entries = 100000\nmax_bytes = 67108864\nttl_seconds = 3600\n"
        models = [model("cached", LATENCY_MS, WORKERS, 256) + cache, model("uncached", LATENCY_MS, WORKERS, 256)]
        address, metrics_port, gw = suite.start_gateway(models, "s7-gateway")
        try:
            # Warm-up without a temperature: not cacheable, the cache stays cold.
            for name in ("cached", "uncached"):
                suite.bench(address, {"model": name, "prompt": "warm up"}, "-c", str(CONCURRENCY), "-n", str(CONCURRENCY),
                            name="s7-warmup")
            same = {"model": "cached", "prompt": "the same question", "temperature": 0}
            burst = self.measured(address, metrics_port, "cached", same,
                                  ["-c", str(IDENTICAL), "-n", str(IDENTICAL), "--connections", "4"], "s7-identical")
            closed = ["-c", str(CONCURRENCY)]
            off_data = workload("uncached", self.calls_uncached)
            on_data = workload("cached", self.calls_cached)
            off = self.measured(address, metrics_port, "uncached", off_data, [*closed, "-n", str(len(off_data))], "s7-without-cache")
            on = self.measured(address, metrics_port, "cached", on_data, [*closed, "-n", str(len(on_data))], "s7-with-cache")
        finally:
            suite.servers.stop(gw)
        distinct = len({item["prompt"] for item in on_data})
        self.report(burst, on, off, distinct)

    def report(self, burst, on, off, distinct):
        suite = self.suite
        bound_off = WORKERS / (LATENCY_MS / 1000)
        ratio = on["rps"] / off["rps"] if off["rps"] else float("inf")
        p50_on, p99_on = percentile(on, 50), percentile(on, 99)
        p50_off, p99_off = percentile(off, 50), percentile(off, 99)
        all_ok = on["ok"] == on["count"] and off["ok"] == off["count"]
        workers = f"{WORKERS} workers x {LATENCY_MS} ms, c={CONCURRENCY}"
        suite.row(SCENARIO, f"throughput with the cache vs without, 90% repeated greedy prompts ({workers})",
                  f"{on['rps']:.1f} vs {off['rps']:.1f} req/s ({ratio:.1f}x)", ">= 3x",
                  f"9 calls in 10 need no backend call: the misses alone bound the cached model at 10 x {bound_off:.0f} req/s, "
                  f"the model without a cache at {bound_off:.0f}; every call OK", ratio >= 3 and all_ok)
        suite.row(SCENARIO, "p50 latency with the cache (same workload)", f"{p50_on:.2f} ms (without: {p50_off:.1f} ms)",
                  f"<= {LATENCY_MS // 10} ms",
                  f"the median call is a hit, answered from memory without a worker: a tenth of the {LATENCY_MS} ms backend time at most",
                  p50_on <= LATENCY_MS / 10 and on["ok"] == on["count"])
        suite.row(SCENARIO, "backend calls of the cached run vs distinct requests in it", f"{on['backendCalls']} for {distinct} distinct "
                  f"({on['cache']['hits']} hits, {on['cache']['misses']} misses, {on['cache']['coalesced']} coalesced)", "equal",
                  "each distinct request runs the backend once; a repeat is a hit or joins the running call (bounds and TTL "
                  "are far above the run: nothing is evicted)", on["backendCalls"] == distinct)
        suite.row(SCENARIO, f"{IDENTICAL} identical greedy calls at once on a cold cache: backend calls ({self.source}, after minus before)",
                  f"{burst['backendCalls']} ({burst['ok']} OK; {burst['cache']['misses']} miss, {burst['cache']['coalesced']} coalesced, "
                  f"{burst['cache']['hits']} hits)", "1",
                  "identical calls in flight share one backend call (coalescing)",
                  burst["backendCalls"] == 1 and burst["ok"] == IDENTICAL)
        suite.info(SCENARIO, "p99 latency with the cache vs without", f"{p99_on:.1f} ms vs {p99_off:.1f} ms",
                   f"the slowest calls are misses, which queue for the {WORKERS} workers in a closed loop either way")
        svg.groups(os.path.join(suite.out, "s7-cache.svg"),
                   f"S7: 90% repeated greedy prompts, {WORKERS} workers x {LATENCY_MS} ms, c={CONCURRENCY}",
                   ["requests/s", "p50 latency (ms)", "p99 latency (ms)", "backend calls per 100 calls"],
                   [("with the cache", [on["rps"], p50_on, p99_on, 100 * on["backendCalls"] / max(1, on["count"])]),
                    ("without", [off["rps"], p50_off, p99_off, 100 * off["backendCalls"] / max(1, off["count"])])])
        suite.sections.append(f"""### S7 response cache

Two models alike but for `[models.cache]` (`max_entries = 100000`,
`ttl_seconds = 3600`): {WORKERS} workers, {LATENCY_MS} ms simulated calls,
in one gateway. The workload, closed loop c={CONCURRENCY}, one `-d` array
item per call so that none comes round twice: 9 calls in 10 ask one of
{HOT_PROMPTS} prompts, every 10th a prompt of its own; all set
`temperature: 0` (deterministic, so cacheable). {on['count']} calls on the
cached model, {off['count']} on the other (at most {bound_off:.0f} req/s
without a cache). Backend calls: {self.source}, after minus before; hits,
misses and coalesced calls: the `infergate_cache_*_total` counters.
Before both runs, {IDENTICAL} identical greedy calls at once
(`-c {IDENTICAL}`, 4 connections) on the still cold cache.

| run | calls (OK) | requests/s | p50 | p99 | backend calls | hits / misses / coalesced |
|---|---|---|---|---|---|---|
| with the cache | {on['count']} ({on['ok']}) | {on['rps']:.1f} | {p50_on:.2f} ms | {p99_on:.1f} ms | {on['backendCalls']} | {on['cache']['hits']} / {on['cache']['misses']} / {on['cache']['coalesced']} |
| without | {off['count']} ({off['ok']}) | {off['rps']:.1f} | {p50_off:.1f} ms | {p99_off:.1f} ms | {off['backendCalls']} | n/a |
| {IDENTICAL} identical calls, cold cache | {burst['count']} ({burst['ok']}) | | {percentile(burst, 50):.1f} ms | {percentile(burst, 99):.1f} ms | {burst['backendCalls']} | {burst['cache']['hits']} / {burst['cache']['misses']} / {burst['cache']['coalesced']} |

![S7 cache](results/s7-cache.svg)
""")
