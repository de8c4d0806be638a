"""The floor of a thread hop: server CPU per call and h2load requests/s
for bare tonic, the hop experiment's hand-offs (bench/baselines/hop_echo.rs)
and infergate's echo model, in interleaved rounds (the order rotates), on
this machine as it is (no pinning: for 2-core machines).

    python3 bench/hop.py [--rounds 5] [--seconds 3] [--workers 2] [--only bare,condvar,...]
        [--before OLD_INFERGATE --only bare,infergate-before,infergate]

Prints one line per measurement, then medians and min-max per server.
CPU per call is utime + stime of the server (/proc/PID/stat) over the
calls h2load saw succeed; h2load -c 4 -m 12 is "c=48", -m 50 saturation.
Builds nothing: run `cargo build --release --examples --bins` first.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, Servers, free_port, gateway_config, model, proc_tree_cpu, wait_port  # noqa: E402
from h2load import H2load  # noqa: E402

RELEASE = os.path.join(ROOT, "target", "release")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="bare,condvar,crossbeam,spin,blocking,infergate")
    parser.add_argument("--infergate", default=os.path.join(RELEASE, "infergate"))
    parser.add_argument("--before", help="another infergate binary, served as 'infergate-before' (name it in --only)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for infergate's environment (not infergate-before's)")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="hop-")
    h2 = H2load(workdir, "echo", "hello")
    servers = Servers(workdir)
    started = {}
    try:
        for name in args.only.split(","):
            port = free_port()
            if name == "bare":
                command = [os.path.join(RELEASE, "examples", "tonic_echo"), "--listen", f"127.0.0.1:{port}", "--mode", "echo"]
            elif name.startswith("infergate"):
                metrics_port = free_port()
                config = os.path.join(workdir, f"{name}.toml")
                with open(config, "w") as f:
                    f.write(gateway_config(port, metrics_port, [model("echo", 0, args.workers, 4096)]))
                binary = args.before if name == "infergate-before" else args.infergate
                command = [binary, "serve", "--config", config]
            else:
                command = [os.path.join(RELEASE, "examples", "hop_echo"), "--listen", f"127.0.0.1:{port}",
                           "--hop", name, "--workers", str(args.workers)]
            env = dict(os.environ)
            if name == "infergate":
                env.update(kv.split("=", 1) for kv in args.env)
            log = open(os.path.join(workdir, f"{name}.log"), "w")
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            servers.processes.append(process)
            wait_port(port, process)
            started[name] = (f"127.0.0.1:{port}", process)
            status = h2.grpc_status(f"127.0.0.1:{port}")
            if status not in (None, "0"):
                raise RuntimeError(f"{name}: grpc-status {status}")
        names = list(started)
        results = {name: {"c48_cpu": [], "c48_rps": [], "sat_cpu": [], "sat_rps": []} for name in names}
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                address, process = started[name]
                for label, streams in (("c48", 12), ("sat", 50)):
                    cpu0 = proc_tree_cpu(process.pid)
                    out = subprocess.run(h2.command(address, args.seconds, 4, streams, 1), capture_output=True, text=True)
                    cpu1 = proc_tree_cpu(process.pid)
                    h = H2load.parse(out.stdout)
                    if h["failed"]:
                        raise RuntimeError(f"{name}: {h['failed']} calls failed")
                    per_call = (cpu1 - cpu0) * 1e6 / max(1, h["succeeded"])
                    results[name][f"{label}_cpu"].append(per_call)
                    results[name][f"{label}_rps"].append(h["rps"])
                    print(f"round {round_} {name:10} {label}: {h['rps']:8.0f} req/s {per_call:6.2f} us/call", flush=True)
        print()
        bare = results.get("bare")
        print(f"{'server':12} {'CPU/call c48 (us)':>22} {'CPU/call sat (us)':>22} {'req/s c48':>20} {'req/s sat':>22}")
        for name in names:
            cells = []
            for key, fmt in (("c48_cpu", "{:.2f}"), ("sat_cpu", "{:.2f}"), ("c48_rps", "{:.0f}"), ("sat_rps", "{:.0f}")):
                v = results[name][key]
                cells.append(f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}-{fmt.format(max(v))})")
            print(f"{name:12} " + " ".join(f"{c:>22}" for c in cells))
        if bare:
            print("\nratios to bare tonic, per round (median, min-max):")
            for name in names:
                line = []
                for key in ("c48_cpu", "sat_cpu", "sat_rps"):
                    r = [a / b for a, b in zip(results[name][key], bare[key])]
                    line.append(f"{key} {statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})")
                print(f"{name:12} " + "  ".join(line))
    finally:
        servers.stop_all()


if __name__ == "__main__":
    main()
