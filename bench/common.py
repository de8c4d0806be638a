"""What the benchmark scenarios share (standard library only): ports,
server processes, /proc readings, Prometheus scrapes, config text, and
core pinning."""

import os
import platform
import re
import resource
import signal
import socket
import subprocess
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, process, timeout=30):
    give_up = time.time() + timeout
    while time.time() < give_up:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {' '.join(process.args)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def wait_line(path, text, process, timeout=30):
    """Waits until the log at `path` contains `text` (a server's ready line)."""
    give_up = time.time() + timeout
    while time.time() < give_up:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {' '.join(process.args)}")
        with open(path) as f:
            if text in f.read():
                return
        time.sleep(0.05)
    raise RuntimeError(f"no {text!r} in {path} after {timeout} s")


class Servers:
    """The processes of the run, stopped at the end whatever happens."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.processes = []

    def start(self, args, port, log, ready=None):
        """Starts a server and waits until it listens (and, with `ready`,
        until its log says so: servers of several processes)."""
        path = os.path.join(self.workdir, log)
        out = open(path, "w")
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self.processes.append(process)
        wait_port(port, process)
        if ready:
            wait_line(path, ready, process)
        return process

    def stop(self, process):
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self):
        for process in self.processes:
            self.stop(process)


def model(name, latency_ms, workers, queue, mode="sleep"):
    return (f'[[models]]\nname = "{name}"\nbackend = "simulated"\nworkers = {workers}\n'
            f'queue_capacity = {queue}\ntimeout_ms = 600000\nmax_timeout_ms = 600000\n'
            f'[models.simulated]\nlatency_ms = {latency_ms}\nmode = "{mode}"\n')


def gateway_config(port, metrics_port, models):
    return (f'[server]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
            f'shutdown_grace_seconds = 5\n' + "".join(models))


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def metric(scrape, series):
    for line in scrape.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def metrics_of(scrape, name):
    values = {}
    for line in scrape.splitlines():
        if line.startswith(name + "{"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def proc_status(pid):
    """(RSS in KiB, threads) of a process."""
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", text).group(1))
    return rss, threads


def _stat(pid):
    """(parent pid, CPU seconds) of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the name: state, ppid, ..., utime (14th field) and stime (15th).
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """CPU seconds (user + system, all threads) a process has used."""
    return _stat(pid)[1]


def proc_tree_cpu(pid):
    """CPU seconds used by a process and its live children (a server of
    several processes)."""
    total = proc_cpu(pid)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            try:
                parent, cpu = _stat(int(entry))
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                total += cpu
    return total


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cpus():
    """The cores this process may run on, in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def cpu_list(cpus):
    return ",".join(str(c) for c in cpus)


class Pinning:
    """Servers on the first two usable cores, load generators on the rest
    (`taskset`), so that a ratio of requests/s is the servers' and not
    the generators'. Unpinned (prefixes empty) on fewer than 4 cores."""

    SERVER_CORES = 2

    def __init__(self, enabled):
        cpus = usable_cpus()
        self.enabled = enabled and len(cpus) >= 4 and bool(which("taskset"))
        self.server_cpus = cpus[:self.SERVER_CORES] if self.enabled else cpus
        self.generator_cpus = cpus[self.SERVER_CORES:] if self.enabled else cpus

    def server(self):
        return ["taskset", "-c", cpu_list(self.server_cpus)] if self.enabled else []

    def generator(self):
        return ["taskset", "-c", cpu_list(self.generator_cpus)] if self.enabled else []

    def describe(self):
        if not self.enabled:
            return f"not pinned: servers and load generator share the machine's {len(self.server_cpus)} cores"
        return (f"pinned with taskset: servers on cores {cpu_list(self.server_cpus)}, "
                f"load generators on cores {cpu_list(self.generator_cpus)}")


def which(name):
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def run_timed(command, **kwargs):
    """subprocess.run, plus the CPU seconds the command used and its wall
    time (to tell when a load generator is the bottleneck)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    completed = subprocess.run(command, **kwargs)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return completed, cpu, wall
