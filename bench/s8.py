"""S8, upstreams: one `openai` model balanced across three replicas of a
fake OpenAI-compatible server (bench/fake_openai.py: 100 ms per call, 64
calls at once, so at most 640 calls/s each), in one gateway beside a
model that reaches only the first replica (the `base_url` shorthand).

- Throughput: the same closed loop (c=256, more than the three replicas
  hold at once) on the one-replica model, then on the balanced one: three
  replicas must carry about three times what one does.
- Skew: one replica made 3x slower (300 ms, through its /control
  endpoint): least-outstanding-requests balancing must give it a
  correspondingly smaller share (its requests, from
  `infergate_upstream_requests_total`, against the fast ones' mean).
- Burst: 2,000 calls at once to one replica that takes 1 s per call and
  2,000 calls at once (a model with `workers = 2000`): they must all end
  within 1.5 s of the first, with the gateway under 40 OS threads (calls
  are tasks, not threads; sampled from /proc every 20 ms).
- Kill: a closed loop on the balanced model, and one replica killed
  (SIGKILL) a second in: no call may fail once the gateway has ejected it
  (`infergate_upstream_up` 0, sampled every 50 ms), the failures before
  that are counted and timed; then the replica is started again on the
  same port and must be re-admitted and serve again.
"""

import json
import os
import re
import signal
import sys
import threading
import time
import urllib.request

import svg
from common import HERE, free_port, get

SCENARIO = "S8 upstreams"
LATENCY_MS = 100
SLOW_MS = 300
SLOTS = 64                       # calls one replica runs at once
BOUND = SLOTS / (LATENCY_MS / 1000)
REPLICAS = ("u1", "u2", "u3")
WORKERS = 512
SATURATE = 256                   # callers in the throughput runs: more than 3 x 64
SKEW_CALLERS = 96                # under the replicas' 3 x 64: the balancer, not a full replica, decides
KILL_CALLERS = 128               # what the two survivors hold at once
EJECT_AFTER = 3
EJECT_MS = 1000
HEALTH_MS = 250
DATA = {"prompt": "route me to a replica", "max_tokens": 8}
BURST = 2000                     # calls at once in the burst, each 1 s upstream
BURST_MS = 1000
BURST_THREADS = 40

LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def labelled(scrape, name):
    """[(labels dict, value)] of every series of metric `name`."""
    out = []
    for line in scrape.splitlines():
        if line.startswith(name + "{"):
            key, value = line.rsplit(" ", 1)
            out.append((dict(LABEL.findall(key)), float(value)))
    return out


def per_upstream(scrape, name, model):
    """{upstream: value} of metric `name` for `model`, summed over other labels."""
    values = {}
    for labels, value in labelled(scrape, name):
        if labels.get("model") == model:
            values[labels.get("upstream", "?")] = values.get(labels.get("upstream", "?"), 0.0) + value
    return values


def upstream_model(name, upstreams, base_url=None, workers=WORKERS):
    """An `openai` model: `base_url` (one upstream, the shorthand) or
    `[[models.openai.upstreams]]` (name, url)."""
    text = (f'[[models]]\nname = "{name}"\nbackend = "openai"\nworkers = {workers}\nqueue_capacity = 1024\n'
            f'timeout_ms = 20000\nmax_timeout_ms = 600000\n[models.openai]\nmodel = "fake"\n'
            f'health_interval_ms = {HEALTH_MS}\neject_after = {EJECT_AFTER}\neject_ms = {EJECT_MS}\n'
            f'connect_timeout_ms = 1000\nread_timeout_ms = 10000\n')
    if base_url:
        return text + f'base_url = "{base_url}"\n'
    return text + "".join(f'[[models.openai.upstreams]]\nname = "{n}"\nurl = "{u}"\n' for n, u in upstreams)


def post(url, value):
    request = urllib.request.Request(url, data=json.dumps(value).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


class Upstreams:
    def __init__(self, suite):
        self.suite = suite
        self.smoke = suite.smoke
        self.seconds = 1 if self.smoke else 3
        self.kill_seconds = 2.5 if self.smoke else 4
        self.kill_at = 1.0
        self.ports = {name: free_port() for name in REPLICAS}
        self.replicas = {}

    # -- processes -----------------------------------------------------------

    def start_replica(self, name, latency_ms=LATENCY_MS, slots=SLOTS):
        port = self.ports[name]
        self.replicas[name] = self.suite.servers.start(
            [sys.executable, os.path.join(HERE, "fake_openai.py"), "--port", str(port), "--name", name,
             "--latency-ms", str(latency_ms), "--concurrency", str(slots)],
            port, f"s8-{name}-{time.time_ns()}.log")

    def url(self, name):
        return f"http://127.0.0.1:{self.ports[name]}/v1"

    def stats(self, name):
        return json.loads(get(f"http://127.0.0.1:{self.ports[name]}/stats"))

    def scrape(self):
        return get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def requests(self, model):
        return per_upstream(self.scrape(), "infergate_upstream_requests_total", model)

    def ok(self, report):
        return report["statusCodeDistribution"].get("OK", 0)

    # -- the scenario ----------------------------------------------------------

    def run(self):
        suite = self.suite
        for name in REPLICAS:
            self.start_replica(name)
        self.ports["wide"] = free_port()
        self.start_replica("wide", latency_ms=BURST_MS, slots=BURST)
        models = [upstream_model("one", None, base_url=self.url("u1")),
                  upstream_model("bal", [(n, self.url(n)) for n in REPLICAS]),
                  upstream_model("wide", None, base_url=self.url("wide"), workers=BURST)]
        self.address, self.metrics_port, gw = suite.start_gateway(models, "s8-gateway")
        try:
            burst = self.burst(gw.pid)
            # Warm-up: connections to every replica, a full wave each.
            for name in ("one", "bal"):
                suite.bench(self.address, {"model": name, **DATA}, "-c", str(SATURATE), "-n", str(2 * SATURATE),
                            "--connections", "4", name="s8-warmup")
            throughput = self.throughput()
            skew = self.skew()
            kill = self.kill()
            back = self.readmit()
        finally:
            suite.servers.stop(gw)
        self.report(throughput, skew, kill, back)
        self.report_burst(burst)

    def burst(self, pid):
        """BURST calls at once, twice (the first opens the connections);
        the gateway's threads sampled throughout."""
        threads, done = [], threading.Event()

        def sample():
            while not done.is_set():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        threads.extend(int(line.split()[1]) for line in f if line.startswith("Threads:"))
                except OSError:
                    pass
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            runs = [self.suite.bench(self.address, {"model": "wide", **DATA}, "-c", str(BURST), "-n", str(BURST),
                                     "--connections", "8", name=f"s8-burst-{i}") for i in range(2)]
        finally:
            done.set()
            sampler.join()
        return {"cold": runs[0], "warm": runs[1], "threads": max(threads, default=0), "samples": len(threads)}

    def report_burst(self, burst):
        suite, warm, cold = self.suite, burst["warm"], burst["cold"]
        wall = warm["total"] / 1e9
        all_ok = self.ok(warm) == warm["count"] == BURST
        suite.row(SCENARIO, f"{BURST} calls at once, {BURST_MS} ms each upstream (workers = {BURST}): time until the last ends",
                  f"{wall:.2f} s (first burst, opening the upstream connections: {cold['total'] / 1e9:.2f} s); "
                  f"{self.ok(warm)} OK",
                  "< 1.5 s", "calls are tasks: all 2,000 wait on the upstream at once, none waits for a thread",
                  wall < 1.5 and all_ok)
        suite.row(SCENARIO, "gateway OS threads during the bursts (max of /proc samples)",
                  f"{burst['threads']} ({burst['samples']} samples)", f"< {BURST_THREADS}",
                  "a thread per call would be 2,000 (the synchronous backend needed 2,133)",
                  0 < burst["threads"] < BURST_THREADS)

    def closed(self, model, callers, seconds, name, details=False):
        return self.suite.bench(self.address, {"model": model, **DATA}, "-c", str(callers), "-z", f"{seconds}s",
                                "--connections", "4", name=name, details=details)

    def throughput(self):
        one = self.closed("one", SATURATE, self.seconds, "s8-one")
        before = self.requests("bal")
        bal = self.closed("bal", SATURATE, self.seconds, "s8-three")
        after = self.requests("bal")
        split = {n: int(after.get(n, 0) - before.get(n, 0)) for n in REPLICAS}
        return {"one": one, "bal": bal, "split": split}

    def skew(self):
        slow = REPLICAS[-1]
        post(f"http://127.0.0.1:{self.ports[slow]}/control", {"latency_ms": SLOW_MS})
        before, served0 = self.requests("bal"), {n: self.stats(n)["served"] for n in REPLICAS}
        report = self.closed("bal", SKEW_CALLERS, self.seconds, "s8-skew")
        after, served1 = self.requests("bal"), {n: self.stats(n)["served"] for n in REPLICAS}
        post(f"http://127.0.0.1:{self.ports[slow]}/control", {"latency_ms": LATENCY_MS})
        counts = {n: int(after.get(n, 0) - before.get(n, 0)) for n in REPLICAS}
        served = {n: served1[n] - served0[n] for n in REPLICAS}
        return {"report": report, "slow": slow, "counts": counts, "served": served}

    def kill(self):
        """A closed loop on `bal`; the last replica killed `kill_at` s in."""
        victim = REPLICAS[-1]
        samples, done = [], threading.Event()

        def sample():
            while not done.wait(0.05):
                try:
                    scrape = self.scrape()
                except OSError:
                    continue
                samples.append((time.time(), per_upstream(scrape, "infergate_upstream_up", "bal"),
                                per_upstream(scrape, "infergate_upstream_inflight", "bal")))

        codes0 = self.codes(victim)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = {}

        def load():
            result["report"] = self.closed("bal", KILL_CALLERS, self.kill_seconds, "s8-kill", details=True)

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(self.kill_at)
        killed_at = time.time()
        self.replicas[victim].send_signal(signal.SIGKILL)
        self.replicas[victim].wait()
        loader.join()
        done.set()
        sampler.join()
        codes1 = self.codes(victim)
        report = result["report"]
        # The report's per-call details are read here, not kept in the results.
        os.remove(os.path.join(self.suite.out, "s8-kill.json"))
        ejected_at = next((t for t, ups, _ in samples if t >= killed_at and ups.get(victim) == 0), None)
        held = [(t, inflight.get(victim)) for t, _, inflight in samples if t < killed_at]
        calls = []
        for d in report.get("details") or []:
            start = svg._timestamp(d["timestamp"])
            calls.append((start, start + d["latency"] / 1e9, d["status"]))
        failed = [c for c in calls if c[2] != "OK"]
        return {"report": report, "victim": victim, "killed_at": killed_at, "ejected_at": ejected_at,
                "calls": calls, "failed": failed, "held": held[-1] if held else (None, None),
                "codes": {c: int(codes1.get(c, 0) - codes0.get(c, 0)) for c in codes1 if codes1.get(c, 0) > codes0.get(c, 0)}}

    def codes(self, upstream):
        """{code: requests} of `upstream` of `bal` so far."""
        out = {}
        for labels, value in labelled(self.scrape(), "infergate_upstream_requests_total"):
            if labels.get("model") == "bal" and labels.get("upstream") == upstream:
                out[labels.get("code", "?")] = value
        return out

    def readmit(self):
        """The killed replica started again on its port: back up, and serving."""
        victim = REPLICAS[-1]
        started = time.time()
        self.start_replica(victim)
        up_at = None
        give_up = started + EJECT_MS / 1000 + HEALTH_MS / 1000 + 5
        while time.time() < give_up:
            if per_upstream(self.scrape(), "infergate_upstream_up", "bal").get(victim) == 1:
                up_at = time.time()
                break
            time.sleep(0.05)
        before = self.requests("bal")
        report = self.closed("bal", SKEW_CALLERS, 1, "s8-readmitted")
        after = self.requests("bal")
        counts = {n: int(after.get(n, 0) - before.get(n, 0)) for n in REPLICAS}
        return {"victim": victim, "after": (up_at - started) if up_at else None, "report": report, "counts": counts}

    # -- results ---------------------------------------------------------------

    def report(self, throughput, skew, kill, back):
        suite = self.suite
        one, bal = throughput["one"], throughput["bal"]
        ratio = bal["rps"] / one["rps"] if one["rps"] else 0.0
        all_ok = self.ok(one) == one["count"] and self.ok(bal) == bal["count"]
        split = throughput["split"]
        suite.row(SCENARIO, f"throughput, 3 replicas vs 1 (closed loop c={SATURATE}; each replica {SLOTS} calls at once x {LATENCY_MS} ms)",
                  f"{bal['rps']:.1f} vs {one['rps']:.1f} req/s ({ratio:.2f}x; one replica at {one['rps'] / BOUND:.0%} of its {BOUND:.0f}); "
                  f"split {' / '.join(str(split[n]) for n in REPLICAS)}",
                  ">= 2.5x", f"the gateway adds replicas' capacity: 3 x {BOUND:.0f} req/s, with the callers to fill them; every call OK",
                  ratio >= 2.5 and all_ok)

        counts, slow = skew["counts"], skew["slow"]
        fast = [counts[n] for n in REPLICAS if n != slow]
        fast_mean = sum(fast) / len(fast)
        share = counts[slow] / fast_mean if fast_mean else float("inf")
        skew_ok = self.ok(skew["report"]) == skew["report"]["count"]
        suite.row(SCENARIO, f"one replica 3x slower ({SLOW_MS} ms): its requests vs the fast ones' mean "
                  f"(infergate_upstream_requests_total, c={SKEW_CALLERS})",
                  f"{share:.2f}x ({counts[slow]} vs {' / '.join(str(c) for c in fast)}; the replicas' own counts "
                  f"{' / '.join(str(skew['served'][n]) for n in REPLICAS)})",
                  "< 0.6x", "least outstanding requests: a replica 3x slower holds its calls 3x longer, so it is picked "
                  "about 1/3 as often (round robin would give 1.0x); every call OK", share < 0.6 and skew_ok)

        victim, killed_at, ejected_at = kill["victim"], kill["killed_at"], kill["ejected_at"]
        failed, calls = kill["failed"], kill["calls"]
        after_eject = [c for c in failed if ejected_at is None or c[0] >= ejected_at]
        last_failure = max((c[1] - killed_at for c in failed), default=None)
        eject_s = ejected_at - killed_at if ejected_at else None
        suite.row(SCENARIO, f"replica {victim} killed (SIGKILL) {self.kill_at:g} s into a closed loop (c={KILL_CALLERS}): "
                  f"infergate_upstream_up{{upstream=\"{victim}\"}} turns 0",
                  f"after {eject_s * 1000:.0f} ms" if eject_s is not None else "never", "<= 1 s",
                  f"passive ejection after {EJECT_AFTER} consecutive connect errors, or the {HEALTH_MS} ms probe", eject_s is not None and eject_s <= 1.0)
        suite.row(SCENARIO, "failed calls that started after the ejection",
                  f"{len(after_eject)} of {sum(1 for c in calls if ejected_at and c[0] >= ejected_at)}", "0",
                  "an ejected replica gets no calls; the two left hold the load", ejected_at is not None and not after_eject)
        bound = KILL_CALLERS // 2
        held_at, held = kill["held"]
        held_text = (f"; {victim} had {held:.0f} in flight at the last scrape before the kill, {(killed_at - held_at) * 1000:.0f} ms earlier"
                     if held is not None else "")
        suite.row(SCENARIO, "failed calls around the kill, all of them",
                  f"{len(failed)} of {len(calls)}" + (f", the last ending {last_failure * 1000:.0f} ms after the kill" if failed else "")
                  + held_text,
                  f"<= {bound}, all within 1 s of the kill",
                  f"only the calls the replica held when it died (about 1/3 of {KILL_CALLERS}) may fail: a call refused "
                  "before any response byte is retried on another replica, and the replica is ejected at once",
                  len(failed) <= bound and (last_failure is None or last_failure <= 1.0))
        codes = kill["codes"]
        suite.info(SCENARIO, f"{victim}'s requests during the kill run, by code (infergate_upstream_requests_total)",
                   ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())) or "none",
                   "a connect error is a call the dead replica refused, tried again on another one; a transport error, "
                   "a call it held when it died (sent, so not tried again); the rows above count what reached clients")
        back_counts = back["counts"]
        suite.row(SCENARIO, f"{victim} started again on its port: back up (infergate_upstream_up 1), then serving",
                  (f"up after {back['after']:.2f} s; " if back["after"] is not None else "not up; ")
                  + f"{back_counts[victim]} of {sum(back_counts.values())} calls of the next second",
                  f"up within {EJECT_MS / 1000 + HEALTH_MS / 1000 + 1:g} s, >= 1/6 of the calls",
                  f"re-admitted after its back-off (eject_ms = {EJECT_MS}) once the probe ({HEALTH_MS} ms) answers",
                  back["after"] is not None and back["after"] <= EJECT_MS / 1000 + HEALTH_MS / 1000 + 1
                  and back_counts[victim] * 6 >= sum(back_counts.values()) > 0)
        self.picture(kill)
        fmt = lambda r: f"{r['count']} ({self.ok(r)})"  # noqa: E731
        suite.sections.append(f"""### S8 upstreams

Three replicas of `bench/fake_openai.py` (an asyncio OpenAI-compatible
server, HTTP/1.1 keep-alive: {LATENCY_MS} ms per call, {SLOTS} calls at once, more
wait; {BOUND:.0f} calls/s each at most), all on this machine's cores with
the gateway and the load generator. One gateway: model `bal` with the three
as `[[models.openai.upstreams]]` (`workers = {WORKERS}`, `eject_after = {EJECT_AFTER}`,
`eject_ms = {EJECT_MS}`, `health_interval_ms = {HEALTH_MS}`), model `one` with
`base_url` = the first replica. `infergate bench`, closed loops, 4
connections; per-replica requests from `infergate_upstream_requests_total`
(after minus before), beside each replica's own count (`GET /stats`).
The burst: a fourth replica taking {BURST_MS} ms per call and {BURST} calls at
once, behind model `wide` (`workers = {BURST}`): `infergate bench -c {BURST}
-n {BURST}` over 8 connections, twice (the first opens the gateway's
connections to the replica), the gateway's `Threads:` read from
`/proc/PID/status` every 20 ms meanwhile.

| run | calls (OK) | requests/s | p50 | p99 | requests per replica ({' / '.join(REPLICAS)}) |
|---|---|---|---|---|---|
| `one`, c={SATURATE}, {self.seconds} s | {fmt(one)} | {one['rps']:.1f} | {pct(one, 50):.1f} ms | {pct(one, 99):.1f} ms | all to u1 |
| `bal`, c={SATURATE}, {self.seconds} s | {fmt(bal)} | {bal['rps']:.1f} | {pct(bal, 50):.1f} ms | {pct(bal, 99):.1f} ms | {' / '.join(str(split[n]) for n in REPLICAS)} |
| `bal`, {slow} at {SLOW_MS} ms, c={SKEW_CALLERS}, {self.seconds} s | {fmt(skew['report'])} | {skew['report']['rps']:.1f} | {pct(skew['report'], 50):.1f} ms | {pct(skew['report'], 99):.1f} ms | {' / '.join(str(counts[n]) for n in REPLICAS)} |
| `bal`, {victim} killed at {self.kill_at:g} s, c={KILL_CALLERS}, {self.kill_seconds:g} s | {fmt(kill['report'])} | {kill['report']['rps']:.1f} | {pct(kill['report'], 50):.1f} ms | {pct(kill['report'], 99):.1f} ms | |
| `bal`, {victim} back, c={SKEW_CALLERS}, 1 s | {fmt(back['report'])} | {back['report']['rps']:.1f} | {pct(back['report'], 50):.1f} ms | {pct(back['report'], 99):.1f} ms | {' / '.join(str(back_counts[n]) for n in REPLICAS)} |

The kill: {len(kill['failed'])} failed calls ({', '.join(sorted(set(c[2] for c in kill['failed']))) or 'none'});
{victim} marked down {f'{eject_s * 1000:.0f} ms' if eject_s is not None else 'never'} after the kill.

![S8 the kill](results/s8-kill.svg)
""")

    def picture(self, kill):
        calls, t0 = kill["calls"], min((c[0] for c in kill["calls"]), default=kill["killed_at"])
        step = 0.1
        buckets = {}
        for start, end, status in calls:
            key = int((end - t0) / step)
            ok, bad = buckets.get(key, (0, 0))
            buckets[key] = (ok + (status == "OK"), bad + (status != "OK"))
        series = [(k * step, *buckets.get(k, (0, 0))) for k in range(max(buckets, default=0) + 1)]
        marks = [("kill", kill["killed_at"] - t0)]
        if kill["ejected_at"]:
            marks.append(("ejected", kill["ejected_at"] - t0))
        svg.columns(os.path.join(self.suite.out, "s8-kill.svg"),
                    f"S8: calls ending per {step * 1000:.0f} ms, {kill['victim']} killed (c={KILL_CALLERS})",
                    series, marks)


def pct(report, p):
    for d in report.get("latencyDistribution") or []:
        if d["percentage"] == p:
            return d["latency"] / 1e6
    return float("nan")
