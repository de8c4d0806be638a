"""S9, fair queuing between tenants: tenant A keeps about 200 calls queued
on a model of 4 workers x 50 ms (a closed loop of c=204: 4 running, 200
waiting) while tenant B sends one call every 100 ms (an open loop,
`--rps 10`, 20 calls). B's queue wait is the server's own figure
(`timing.queue_wait_us` of each answer, summed up by `infergate bench` as
`infergate.queueWait`). Run twice: B with its own key (its own tenant:
served in the next turn, about one service time), and B with A's key (the
same tenant: behind A's 200, about 200 / 4 x 50 ms = 2.5 s).

A tenant is an API key's name: `infergate keys add NAME --file PATH`
prints a new key, calls carry it as `authorization: Bearer <key>`
metadata, and the gateway reads the file named by `[auth] keys_file`.
tests/fairness.rs checks the same scenario at a smaller scale.
"""

import json
import os
import signal
import subprocess

import svg
from common import ROOT, model

SCENARIO = "S9 fair queuing"
LATENCY_MS = 50
WORKERS = 4
BACKLOG = 200                    # A's calls waiting
QUEUE = 512
B_RPS = 10
B_CALLS = 20
TARGET_MS = 2 * LATENCY_MS       # B's p99 queue wait: at most two service times
AUTH_CONFIG = '[auth]\nkeys_file = "{keys}"\n'


def bearer(key):
    """The metadata of a call made with API key `key`, for `-m`."""
    return json.dumps({"authorization": f"Bearer {key}"})


class Fairness:
    def __init__(self, suite):
        self.suite = suite
        self.keys = os.path.join(suite.workdir, "s9-keys")

    def add_key(self, name):
        """Creates an API key `name`; returns the key."""
        out = subprocess.run([self.suite.args.infergate, "keys", "add", name, "--file", self.keys],
                             check=True, capture_output=True, text=True, cwd=ROOT).stdout
        return out.strip().splitlines()[-1]

    def b_waits(self, address, flood_key, b_key, run):
        """B's calls behind A's flood: the `infergate bench` report of B."""
        suite = self.suite
        data = {"model": "fair", "prompt": "x"}
        # A: a closed loop that keeps BACKLOG calls waiting, until stopped.
        flood = subprocess.Popen([suite.args.infergate, "bench", address, "-d", json.dumps(data),
                                  "-m", bearer(flood_key), "-c", str(BACKLOG + WORKERS), "-z", "600s",
                                  "--duration-stop", "ignore", "--format", "json", "-o",
                                  os.path.join(suite.workdir, f"{run}-flood.json"), "--no-details"],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # Let A's queue fill: 204 calls in flight within a second.
            suite.bench(address, data, "-m", bearer(flood_key), "-c", "1", "-n", "1", name=f"{run}-probe")
            return suite.bench(address, data, "-m", bearer(b_key), "--rps", str(B_RPS), "-n", str(B_CALLS),
                               name=run)
        finally:
            flood.send_signal(signal.SIGINT)
            flood.wait(timeout=30)

    def run(self):
        suite = self.suite
        if os.path.exists(self.keys):
            os.remove(self.keys)
        key_a, key_b = self.add_key("s9-a"), self.add_key("s9-b")
        models = [AUTH_CONFIG.format(keys=self.keys), model("fair", LATENCY_MS, WORKERS, QUEUE)]
        address, _, gw = suite.start_gateway(models, "s9-gateway")
        try:
            # The model's estimate of backend times, for admission.
            suite.bench(address, {"model": "fair", "prompt": "warm up"}, "-m", bearer(key_a), "-c", "4", "-n", "16",
                        name="s9-warmup")
            fair = self.b_waits(address, key_a, key_b, "s9-fair")
            same = self.b_waits(address, key_a, key_a, "s9-same-tenant")
        finally:
            suite.servers.stop(gw)
        self.report(fair, same)

    def report(self, fair, same):
        suite = self.suite

        def waits(report):
            q = (report.get("infergate") or {}).get("queueWait") or {}
            return q.get("p50", float("nan")) / 1e6, q.get("p99", float("nan")) / 1e6

        p50_fair, p99_fair = waits(fair)
        p50_same, p99_same = waits(same)
        ok = fair["statusCodeDistribution"].get("OK", 0)
        setup = f"A keeps {BACKLOG} queued, B one call every {1000 // B_RPS} ms; {WORKERS} workers x {LATENCY_MS} ms"
        suite.row(SCENARIO, f"B's p99 queue wait, B its own tenant ({setup})", f"{p99_fair:.1f} ms (p50 {p50_fair:.1f} ms)",
                  f"<= {TARGET_MS} ms",
                  "tenants take turns: B's call waits for A's call in the turn ahead and a worker to free, "
                  "about one service time, not A's backlog", p99_fair <= TARGET_MS and ok == fair["count"])
        suite.info(SCENARIO, "B's p99 queue wait, B in A's tenant (same load)", f"{p99_same:.0f} ms (p50 {p50_same:.0f} ms)",
                   f"one tenant is one FIFO: B waits behind A's {BACKLOG}, about {BACKLOG // WORKERS * LATENCY_MS} ms")
        svg.groups(os.path.join(suite.out, "s9-fairness.svg"),
                   f"S9: B's queue wait behind A's {BACKLOG} queued calls, {WORKERS} workers x {LATENCY_MS} ms",
                   ["p50 queue wait (ms)", "p99 queue wait (ms)"],
                   [("B its own tenant", [p50_fair, p99_fair]), ("B in A's tenant", [p50_same, p99_same])])
        suite.sections.append(f"""### S9 fair queuing

One model, {WORKERS} workers x {LATENCY_MS} ms simulated calls, queue
{QUEUE}. Tenant A (an API key) runs a closed loop of c={BACKLOG + WORKERS},
so {BACKLOG} of its calls wait at all times; tenant B sends {B_CALLS}
calls at {B_RPS}/s. Queue waits are the server's (`timing.queue_wait_us`).

| B is | B's calls (OK) | p50 queue wait | p99 queue wait |
|---|---|---|---|
| its own tenant | {fair['count']} ({ok}) | {p50_fair:.1f} ms | {p99_fair:.1f} ms |
| in A's tenant | {same['count']} ({same['statusCodeDistribution'].get('OK', 0)}) | {p50_same:.0f} ms | {p99_same:.0f} ms |

![S9 fairness](results/s9-fairness.svg)
""")
