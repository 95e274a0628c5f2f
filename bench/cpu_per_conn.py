#!/usr/bin/env python3
"""bench/cpu_per_conn.py: what each connection costs the servers, in CPU time and process
switches, next to the limit, at delay 0.

Where req/s drifts with the machine, CPU time per connection mostly tells what a mode costs.
For each configuration, alternating, ROUNDS times:
- start it in its own session on a free 127.0.0.1 port;
- wait until it answers, then warm up for 1 s;
- read every server process's user and system time and context switches from /proc;
- run loadgen for SECS seconds, read /proc again, and kill the session.
It prints, per run and as medians:
- req/s;
- server CPU µs per connection (all processes of the session, user and system);
- the user part of it;
- server context switches per connection;
- the whole machine's busy CPU µs per connection (from /proc/stat; the load generator included).

    python3 bench/cpu_per_conn.py                    # limit, rr, rr without coalescing, shared
    ROUNDS=5 SECS=6 CONCURRENCY=32 python3 bench/cpu_per_conn.py limit rr rr-nocoalesce

Configurations: limit (2 x limit-server), rr, rr-nocoalesce, shared, reuseport, rr-2acc,
rr-3acc, rr-2acc-nocoalesce (round-robin with FORKLINE_ACCEPT_THREADS=2 or 3) (the seed example, target/release/examples/cluster,
2 workers); rr-base (the same from another build:
BASE_CLUSTER=path/to/cluster, for a before/after); ops-off and ops-on (target/release/ops-server,
round-robin, without and with metrics + control socket; ops-on has /metrics scraped every
second from this script). The primary's own CPU per connection is printed too, and its busiest
thread's (what caps a primary on the connection path). Build first:
cargo build --release -p forkline-loadgen && cargo build --release --example cluster -p forkline
cargo build --release -p forkline-loadgen --features ops --bin ops-server   # for ops-*

BENCH_PROFILE=debug runs target/debug's binaries instead. BENCH_SMOKE=1 checks that the script
still works: one round of 1 s per configuration, no warm-up. A configuration that does not
answer within 15 s, or that served nothing, fails the script (exit 1).
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from proc_stat import busiest, process_ticks, session_pids, thread_ticks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                      os.environ.get("BENCH_PROFILE", "release"))
SMOKE = os.environ.get("BENCH_SMOKE") == "1"
ROUNDS = int(os.environ.get("ROUNDS", "1" if SMOKE else "3"))
SECS = os.environ.get("SECS", "1" if SMOKE else "5")
WARMUP = not SMOKE
READY_TIMEOUT = 15.0
CONCURRENCY = os.environ.get("CONCURRENCY", "32")
TICK = os.sysconf("SC_CLK_TCK")
LOADGEN = os.path.join(TARGET, "loadgen")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config, port):
    addr = f"127.0.0.1:{port}"
    env = dict(os.environ)
    if config in ("ops-off", "ops-on"):
        cmd = [os.path.join(TARGET, "ops-server"), addr, "0", "2"]
        if config == "ops-on":
            env["BENCH_METRICS"] = f"127.0.0.1:{free_port()}"
            env["BENCH_CONTROL"] = f"/tmp/forkline-cpu-per-conn-{port}.sock"
    elif config == "rr-base":
        cmd = [os.environ["BASE_CLUSTER"], addr, "0", "2"]
    elif config == "limit":
        server = os.path.join(TARGET, "limit-server")
        cmd = ["bash", "-c", f'"{server}" {addr} 0 & "{server}" {addr} 0 & wait']
    else:
        policy = {"rr": "rr", "rr-nocoalesce": "rr", "shared": "none", "reuseport": "reuseport",
                  "rr-2acc": "rr", "rr-3acc": "rr", "rr-2acc-nocoalesce": "rr",
                  "rr-always": "rr", "rr-2acc-always": "rr"}
        env["FORKLINE_SCHED_POLICY"] = policy[config]
        threads = {"rr-2acc": "2", "rr-3acc": "3", "rr-2acc-nocoalesce": "2",
                   "rr-2acc-always": "2"}.get(config)
        if threads:
            env["FORKLINE_ACCEPT_THREADS"] = threads
        if config.endswith("always"):
            env["FORKLINE_ACCEPT_COALESCE_ALWAYS"] = "1"
        if config.endswith("nocoalesce"):
            env["FORKLINE_ACCEPT_COALESCE_US"] = "0"
        cmd = [os.path.join(TARGET, "examples", "cluster"), addr, "0", "2"]
    server = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    server.metrics = env.get("BENCH_METRICS")
    return server


def server_counters(sid):
    """(user ticks, system ticks, context switches) summed over the session's processes."""
    user = system = switches = 0
    for pid in session_pids(sid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    switches += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except (OSError, IndexError, ValueError):
            pass
    return user, system, switches


def machine_busy():
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait


def loadgen(port, secs):
    out = subprocess.run([LOADGEN, "--addr", f"127.0.0.1:{port}", "-c", CONCURRENCY, "-d", secs,
                          "--workers", "2", "--json"], capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def scrape_every_second(address, stop):
    """A Prometheus of sorts: the whole /metrics once a second until `stop` is set."""
    while not stop.wait(1.0):
        try:
            urllib.request.urlopen(f"http://{address}/metrics", timeout=2).read()
        except OSError:
            pass


def measure(config):
    port = free_port()
    server = start(config, port)
    stop = threading.Event()
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        probe = [LOADGEN, "--addr", f"127.0.0.1:{port}", "-c", "1", "-n", "1", "-d", "1s",
                 "--timeout", "1s"]
        while subprocess.run(probe, capture_output=True).returncode != 0:
            if server.poll() is not None:
                sys.exit(f"cpu_per_conn: {config} exited ({server.returncode}) before it answered")
            if time.monotonic() > deadline:
                sys.exit(f"cpu_per_conn: {config} did not answer on 127.0.0.1:{port} "
                         f"within {READY_TIMEOUT:.0f} s")
            time.sleep(0.1)
        if WARMUP:
            loadgen(port, "1s")
        if config == "ops-on":
            threading.Thread(target=scrape_every_second, args=(server.metrics, stop),
                             daemon=True).start()
        before, busy_before = server_counters(server.pid), machine_busy()
        primary_before = process_ticks(server.pid)[0]
        threads_before = thread_ticks(server.pid)
        result = loadgen(port, SECS + "s")
        after, busy_after = server_counters(server.pid), machine_busy()
        primary_after = process_ticks(server.pid)[0]
        threads_after = thread_ticks(server.pid)
    finally:
        stop.set()
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        if config == "ops-on":  # killed, the primary left its control socket file
            try:
                os.unlink(f"/tmp/forkline-cpu-per-conn-{port}.sock")
            except OSError:
                pass
    if not result or not result.get("total"):
        sys.exit(f"cpu_per_conn: {config} served no request ({result})")
    n = result["total"]
    per_conn = lambda ticks: ticks / TICK * 1e6 / n  # noqa: E731
    return {
        "rps": result["rps"],
        "server_us": per_conn((after[0] - before[0]) + (after[1] - before[1])),
        "primary_us": per_conn(primary_after - primary_before),
        # The busiest thread of the primary: what caps a primary on the connection path.
        "thread_us": per_conn(busiest(threads_before, threads_after)),
        "user_us": per_conn(after[0] - before[0]),
        "switches": (after[2] - before[2]) / n,
        "machine_us": per_conn(busy_after - busy_before),
    }


def show(m):
    return (f"{m['rps']:7.0f} req/s  server {m['server_us']:5.1f} µs (user {m['user_us']:4.1f}, "
            f"primary {m['primary_us']:4.1f}, busiest thread {m['thread_us']:4.1f})  "
            f"switches {m['switches']:4.2f}  machine {m['machine_us']:5.1f} µs")


def main():
    configs = sys.argv[1:] or ["limit", "rr", "rr-nocoalesce", "shared"]
    for path in [LOADGEN] + [os.path.join(TARGET, "limit-server")] * ("limit" in configs):
        if not os.access(path, os.X_OK):
            sys.exit(f"cpu_per_conn: no {path}: cargo build --release -p forkline-loadgen")
    runs = {c: [] for c in configs}
    for r in range(ROUNDS):
        for config in configs:
            m = measure(config)
            if m:
                runs[config].append(m)
                print(f"round {r + 1} {config:14s} {show(m)}", flush=True)
    print(f"medians over {ROUNDS} rounds, {CONCURRENCY} clients, per connection:")
    for config, ms in runs.items():
        if ms:
            med = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
            print(f"  {config:14s} {show(med)}")


if __name__ == "__main__":
    main()
