#!/usr/bin/env python3
"""bench/scaling.py: connections/s against the number of workers W, for the limit, every
forkline mode and Node's cluster, with the CPU each connection costs the primary and the
workers apart; a Markdown table, a JSON file and a PNG plot. Run it through bench/scaling.sh,
which builds the binaries first.

For W = 1, 2, 4, 8, ... up to the cores (SCALE_WORKERS to choose), each configuration, in an
order rotated every round (SCALE_ROUNDS):
- start it in its own session on a free 127.0.0.1 port, pinned to cores 0..W-1 (`taskset`;
  children inherit the affinity);
- wait until it answers, warm up for 1 s;
- read user + system CPU ticks of the primary (the session leader) and of every other process
  of the session (the workers) from /proc;
- run `loadgen` (connection per request, SCALE_CONCURRENCY clients, SCALE_SECS seconds, the
  seed workload at SCALE_DELAY ms) pinned to the cores W..N-1 — or, when W takes every core,
  unpinned, sharing the cores with the servers (the table says so);
- read the counters again; kill the session.
It reports conn/s, the ratio to the limit at the same W, the CV of per-worker counts, and the
primary's and the workers' CPU µs per connection. Values are medians over rounds.

Where W stops at the cores of this machine, it projects the curve from CPU per connection
(see `project` and bench/RESULTS.md): with the servers on W cores of their own and the load
generator elsewhere, rate(W) = W / (w + p), and at most 1 / p when a primary is on the
connection path (it accepts or relays every connection on one thread; with several accept
threads, `rr-2acc`, at most 1 / the busiest primary thread's CPU per connection), where w and p
are the workers' and the primary's CPU seconds per connection measured at the largest W. (At
W >= 4 plain `rr` gets accept threads by default too; its cap stays 1 / p, conservative.) On a machine
with enough cores the same script measures the curve instead (the projection is still printed,
to check it against).

HTTP keep-alive section (SCALE_HTTP=1): at W = cores, `wrk -t2 -c32` against
examples/http (steer, reuseport, shared, round-robin) and bench/node/http.js (rr, none); a
Lua script counts the responses by the worker named in the body (forkline), or, for Node's
bodies that name none, the workers' CPU time stands in; the CV of those is the balance.

Knobs (environment): SCALE_WORKERS ("1 2 4 ..." up to the cores), SCALE_CONFIGS (ids below),
SCALE_ROUNDS (3), SCALE_SECS (5), SCALE_CONCURRENCY (32), SCALE_DELAY (0), SCALE_PROJECT
("1 2 4 8 16 32"), SCALE_HTTP (1), SCALE_HTTP_CONFIGS, SCALE_OUT (bench/out), SCALE_PLOT
(bench/scaling.png), CARGO_TARGET_DIR, BENCH_PROFILE (release; or debug: which build runs).

BENCH_SMOKE=1 checks that the script still works, end to end, and measures nothing worth
keeping: every configuration at W = 1 (SCALE_WORKERS) and the HTTP ones at W = cores, one round
of 1 s each without warm-up, the tables, JSON and plot written to SCALE_OUT (the plot to
SCALE_OUT/scaling-smoke.png, not bench/scaling.png). It fails (exit 1) when a configuration was
skipped, did not come up or served nothing, or when the plot could not be drawn; a full run
reports those and goes on.
"""

import atexit
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

from proc_stat import busiest, process_ticks, session_pids, thread_ticks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                      os.environ.get("BENCH_PROFILE", "release"))
SMOKE = os.environ.get("BENCH_SMOKE") == "1"
CORES = os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")


def env_list(name, default):
    return os.environ.get(name, default).split()


def powers_up_to(n):
    out, w = [], 1
    while w <= n:
        out.append(w)
        w *= 2
    if out[-1] != n:
        out.append(n)
    return out


WORKERS = [int(w) for w in env_list("SCALE_WORKERS",
                                    "1" if SMOKE else " ".join(map(str, powers_up_to(CORES))))]
CONFIGS = env_list("SCALE_CONFIGS",
                   "limit steer-limit steer reuseport shared rr rr-2acc proxy node-rr node-none")
HTTP_CONFIGS = env_list("SCALE_HTTP_CONFIGS",
                        "http-steer http-reuseport http-shared http-rr node-http-rr node-http-none")
ROUNDS = int(os.environ.get("SCALE_ROUNDS", "1" if SMOKE else "3"))
SECS = os.environ.get("SCALE_SECS", "1" if SMOKE else "5")
WARMUP = not SMOKE
CONCURRENCY = os.environ.get("SCALE_CONCURRENCY", "32")
DELAY = os.environ.get("SCALE_DELAY", "0")
PROJECT = [int(w) for w in env_list("SCALE_PROJECT", "1 2 4 8 16 32")]
HTTP = os.environ.get("SCALE_HTTP", "1") == "1"
OUT = os.environ.get("SCALE_OUT", os.path.join(ROOT, "bench", "out"))
PLOT = os.environ.get("SCALE_PLOT", os.path.join(OUT, "scaling-smoke.png") if SMOKE
                      else os.path.join(ROOT, "bench", "scaling.png"))

LOADGEN = os.path.join(TARGET, "loadgen")
LIMIT_SERVER = os.path.join(TARGET, "limit-server")
FL_CLUSTER = os.path.join(TARGET, "examples", "cluster")
FL_HTTP = os.path.join(TARGET, "examples", "http")
FL_CLI = os.path.join(TARGET, "forkline")
NODE_CLUSTER = os.path.join(ROOT, "bench", "node", "cluster.js")
NODE_HTTP = os.path.join(ROOT, "bench", "node", "http.js")

# Configurations whose primary is on the connection path (accepts, hands off or relays each
# connection): the projection caps them at one core of primary.
PRIMARY_ON_PATH = {"rr", "rr-2acc", "proxy", "node-rr", "http-rr", "node-http-rr"}

# Configurations whose primary accepts on several threads: their cap is one core per thread,
# 1 / the busiest primary thread's µs per connection, instead of 1 / the primary's.
MULTI_THREADED_ACCEPT = {"rr-2acc"}

LABELS = {
    "limit": "limit (W x limit-server, SO_REUSEPORT)",
    "steer-limit": "forkline run --mode steer -- limit-server",
    "steer": "forkline steer (BPF)",
    "reuseport": "forkline reuseport",
    "shared": "forkline shared",
    "rr": "forkline round-robin",
    "rr-2acc": "forkline round-robin, 2 accept threads",
    "proxy": "forkline proxy -> limit-server",
    "node-rr": "node cluster rr",
    "node-none": "node cluster none",
    "http-steer": "forkline http steer",
    "http-reuseport": "forkline http reuseport",
    "http-shared": "forkline http shared",
    "http-rr": "forkline http round-robin",
    "node-http-rr": "node http.js rr",
    "node-http-none": "node http.js none",
}

RUNNING = []


def log(message):
    print(f"[scaling] {message}", file=sys.stderr, flush=True)


def kill_all():
    for proc in RUNNING:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
    RUNNING.clear()


atexit.register(kill_all)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port():
    """A port below the ephemeral range (the load generator's source ports) that binds now."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def why_skip(config):
    need = {
        "limit": [LIMIT_SERVER], "proxy": [FL_CLI, LIMIT_SERVER],
        "steer-limit": [FL_CLI, LIMIT_SERVER],
        "node-rr": [NODE_CLUSTER], "node-none": [NODE_CLUSTER],
        "node-http-rr": [NODE_HTTP], "node-http-none": [NODE_HTTP],
    }.get(config, [FL_HTTP] if config.startswith("http-") else [FL_CLUSTER])
    for path in need:
        if not os.path.exists(path):
            return f"no {path}"
    if config.startswith("node") and not shutil.which("node"):
        return "node not installed"
    if config in HTTP_CONFIGS and not shutil.which("wrk"):
        return "wrk not installed"
    return None


def command(config, addr, workers, control):
    """(argv, extra environment) of a configuration; `control` is a path for the CLI's control
    socket."""
    w = str(workers)
    policy = {"steer": "steer", "reuseport": "reuseport", "shared": "none", "rr": "rr"}
    if config == "rr-2acc":
        return [FL_CLUSTER, addr, DELAY, w], {"FORKLINE_SCHED_POLICY": "rr",
                                              "FORKLINE_ACCEPT_THREADS": "2"}
    if config == "limit":
        return ["bash", "-c", 'for _ in $(seq 1 "$3"); do "$0" "$1" "$2" & done; wait',
                LIMIT_SERVER, addr, DELAY, w], {}
    if config == "proxy":
        return [FL_CLI, "run", "--mode", "proxy", "-w", w, "-l", addr, "--control", control,
                "--", LIMIT_SERVER, "-", DELAY], {}
    if config == "steer-limit":
        # The limit's own handler, on the socket forkline passes at fd 3.
        return [FL_CLI, "run", "--mode", "steer", "-w", w, "-l", addr, "--control", control,
                "--", LIMIT_SERVER, "fd", DELAY], {}
    if config in ("node-rr", "node-none"):
        return (["node", NODE_CLUSTER, addr, DELAY, w],
                {"NODE_CLUSTER_SCHED_POLICY": config[len("node-"):]})
    if config in ("node-http-rr", "node-http-none"):
        return (["node", NODE_HTTP, addr, "0", w],
                {"NODE_CLUSTER_SCHED_POLICY": config[len("node-http-"):]})
    if config.startswith("http-"):
        return [FL_HTTP, addr, w], {"FORKLINE_SCHED_POLICY": policy[config[len("http-"):]]}
    return [FL_CLUSTER, addr, DELAY, w], {"FORKLINE_SCHED_POLICY": policy[config]}


def cpus(first, count):
    return f"{first}-{first + count - 1}" if count > 1 else str(first)


def start(config, port, workers, logf):
    control = os.path.join(os.path.dirname(logf.name), f"control-{port}.sock")
    argv, extra = command(config, f"127.0.0.1:{port}", workers, control)
    env = dict(os.environ, **extra)
    env.setdefault("RUST_LOG", "warn")
    argv = ["taskset", "-c", cpus(0, min(workers, CORES))] + argv
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                            start_new_session=True)
    RUNNING.append(proc)
    return proc


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()
    RUNNING.remove(proc)


def counters(proc):
    """{pid: ticks} of the session's processes; the leader (the primary, or limit's bash) apart.
    A bash leader (limit) is no primary: it only waits."""
    out = {}
    for pid in session_pids(proc.pid):
        t, name = process_ticks(pid)
        if name in ("taskset",):
            continue
        out[pid] = (t, name)
    return out


def split(before, after, leader):
    """(primary ticks, {worker pid: ticks}) used between two `counters` readings."""
    primary, workers = 0, {}
    for pid, (t, name) in after.items():
        used = t - before.get(pid, (0, name))[0]
        if pid == leader and name != "bash":
            primary = used
        elif pid != leader and name not in ("forkline-keeper",):
            workers[pid] = used
    return primary, workers


def wait_up(proc, port, workers, deadline=20.0):
    """Until `workers` worker processes run and a probe is answered."""
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            return False
        others = [p for p in session_pids(proc.pid) if p != proc.pid]
        probe = [LOADGEN, "--addr", f"127.0.0.1:{port}", "-c", "1", "-n", "1", "-d", "1s",
                 "--timeout", "1s"]
        if len(others) >= workers and subprocess.run(probe, capture_output=True).returncode == 0:
            return True
        time.sleep(0.2)
    return False


def loadgen_argv(port, secs, workers):
    argv = [LOADGEN, "--addr", f"127.0.0.1:{port}", "-c", CONCURRENCY, "-d", f"{secs}s",
            "--workers", str(workers), "--json"]
    if workers < CORES:
        argv = ["taskset", "-c", cpus(workers, CORES - workers)] + argv
    return argv


def measure(config, workers, logdir):
    port = free_port()
    with open(os.path.join(logdir, f"{config}-w{workers}.log"), "a") as logf:
        proc = start(config, port, workers, logf)
        try:
            if not wait_up(proc, port, workers):
                log(f"  {config} W={workers} did not come up")
                return None
            if WARMUP:
                subprocess.run(loadgen_argv(port, 1, workers), capture_output=True)
            before, threads_before = counters(proc), thread_ticks(proc.pid)
            out = subprocess.run(loadgen_argv(port, SECS, workers), capture_output=True,
                                 text=True)
            after, threads_after = counters(proc), thread_ticks(proc.pid)
        finally:
            stop(proc)
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else None
    if not result or not result.get("total"):
        log(f"  {config} W={workers}: loadgen failed: {out.stderr.strip()[-200:]}")
        return None
    n = result["total"]
    primary, per_worker = split(before, after, proc.pid)
    us = lambda t: t / TICK * 1e6 / n  # noqa: E731
    return {
        "rps": result["rps"],
        "cv": result["cv"] * 100,
        "errors": result["errors"],
        "primary_us": us(primary),
        "primary_busiest_us": us(busiest(threads_before, threads_after)),
        "workers_us": us(sum(per_worker.values())),
    }


# ---------------------------------------------------------------------------------------------
# HTTP keep-alive, wrk.

WRK_SCRIPT = r"""
-- Counts responses by the worker the body names ("worker N"), across wrk's threads.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  local w = body and body:match("worker (%d+)")
  if w then counts[w] = (counts[w] or 0) + 1 end
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("COUNT worker %s %d\n", k, v)) end
end
"""


def cv_percent(values, n):
    values = list(values) + [0] * (n - len(values))
    mean = sum(values) / n
    return statistics.pstdev(values) / mean * 100 if mean else None


def measure_http(config, workers, logdir, script):
    port = free_port()
    with open(os.path.join(logdir, f"{config}-w{workers}.log"), "a") as logf:
        proc = start(config, port, workers, logf)
        try:
            if not wait_http(proc, port, workers):
                log(f"  {config} did not come up")
                return None
            url = f"http://127.0.0.1:{port}/"
            if WARMUP:
                subprocess.run(["wrk", "-t2", f"-c{CONCURRENCY}", "-d1s", url],
                               capture_output=True)
            before = counters(proc)
            out = subprocess.run(["wrk", "-t2", f"-c{CONCURRENCY}", f"-d{SECS}s", "-s", script,
                                  url], capture_output=True, text=True)
            after = counters(proc)
        finally:
            stop(proc)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if not rps:
        log(f"  {config}: wrk failed: {out.stdout[-300:]} {out.stderr[-300:]}")
        return None
    counts = {int(m.group(1)): int(m.group(2))
              for m in re.finditer(r"COUNT worker (\d+) (\d+)", out.stdout)}
    primary, per_worker = split(before, after, proc.pid)
    if counts:
        cv, source = cv_percent(counts.values(), workers), "responses"
    else:
        cv, source = cv_percent(per_worker.values(), workers), "worker CPU"
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out.stdout))
    return {"rps": float(rps.group(1)), "cv": cv, "cv_source": source, "errors": errors}


def wait_http(proc, port, workers, deadline=20.0):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            return False
        others = [p for p in session_pids(proc.pid) if p != proc.pid]
        if len(others) >= workers:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(12).startswith(b"HTTP/1.1 200"):
                        return True
            except OSError:
                pass
        time.sleep(0.2)
    return False


# ---------------------------------------------------------------------------------------------
# Projection and report.

def project(m, w, on_path, threads=False):
    """Projected conn/s at W workers from CPU per connection: the servers on W cores of their
    own, W / (workers + primary µs per connection); a primary on the connection path runs it
    on one thread, so at most 1 / primary µs — or, accepting on several threads (`threads`),
    at most 1 / its busiest thread's µs."""
    total = (m["workers_us"] + m["primary_us"]) / 1e6
    rate = w / total if total else float("nan")
    cap_us = m.get("primary_busiest_us", 0) if threads else m["primary_us"]
    if on_path and cap_us > 0:
        rate = min(rate, 1e6 / cap_us)
    return rate


def median_of(runs):
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def fmt(x, spec=".0f"):
    return "-" if x is None or x != x else format(x, spec)


def main():
    os.makedirs(OUT, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = os.path.join(OUT, f"scaling-logs-{stamp}")
    os.makedirs(logdir, exist_ok=True)
    workers = [w for w in WORKERS if w <= CORES]
    runnable, skipped = [], {}
    for c in CONFIGS:
        why = why_skip(c)
        if why:
            skipped[c] = why
            log(f"skipping {c}: {why}")
        else:
            runnable.append(c)
    load_before = open("/proc/loadavg").read().split()[:3]
    runs = {}
    for r in range(ROUNDS):
        for w in workers:
            order = runnable[r % len(runnable):] + runnable[:r % len(runnable)] if runnable else []
            for c in order:
                log(f"round {r + 1}: {c}, W={w}")
                m = measure(c, w, logdir)
                if m:
                    runs.setdefault((c, w), []).append(m)
                    log(f"  {m['rps']:.0f} conn/s, CV {m['cv']:.2f} %, primary "
                        f"{m['primary_us']:.1f} µs, workers {m['workers_us']:.1f} µs per conn")
    http = {}
    if HTTP:
        script = os.path.join(logdir, "count.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT)
        hconfigs = [c for c in HTTP_CONFIGS if not why_skip(c)]
        for c in HTTP_CONFIGS:
            if why_skip(c):
                skipped[c] = why_skip(c)
        for r in range(ROUNDS):
            order = hconfigs[r % len(hconfigs):] + hconfigs[:r % len(hconfigs)] if hconfigs else []
            for c in order:
                log(f"round {r + 1}: {c} (HTTP keep-alive), W={CORES}")
                m = measure_http(c, CORES, logdir, script)
                if m:
                    http.setdefault(c, []).append(m)
                    log(f"  {m['rps']:.0f} req/s, CV {fmt(m['cv'], '.2f')} % ({m['cv_source']})")
    load_after = open("/proc/loadavg").read().split()[:3]
    data = {"stamp": stamp, "cores": CORES, "workers": workers, "project": PROJECT,
            "rounds": ROUNDS, "secs": SECS, "concurrency": CONCURRENCY, "delay": DELAY,
            "warmup": WARMUP,
            "load": [load_before, load_after], "skipped": skipped,
            "runs": {f"{c}@{w}": v for (c, w), v in runs.items()}, "http": http}
    with open(os.path.join(OUT, f"scaling-{stamp}.json"), "w") as f:
        json.dump(data, f, indent=1)
    started = time.time()
    report(data)
    if SMOKE:
        smoke_check(data, runnable, started)


def smoke_check(data, runnable, started):
    """A smoke run fails when anything did not run: a configuration skipped, one that did not
    come up or served nothing, or a plot that was not drawn."""
    failures = [f"{c} was skipped: {why}" for c, why in data["skipped"].items()]
    for w in data["workers"]:
        for c in runnable:
            if not any(m["rps"] > 0 for m in data["runs"].get(f"{c}@{w}", [])):
                failures.append(f"{c} at W={w} served nothing (logs: {OUT})")
    if HTTP:
        for c in HTTP_CONFIGS:
            if c not in data["skipped"] and not any(m["rps"] > 0 for m in data["http"].get(c, [])):
                failures.append(f"{c} (HTTP) served nothing (logs: {OUT})")
    if not os.path.exists(PLOT) or os.path.getmtime(PLOT) < started - 1:
        failures.append(f"no plot written to {PLOT}")
    for failure in failures:
        log(f"smoke: {failure}")
    if failures:
        sys.exit("scaling: smoke run FAILED")
    log(f"smoke run passed: {len(runnable)} configurations at W={data['workers']}, "
        f"{len(data['http'])} HTTP configurations, plot {PLOT}")


def report(data):
    """The tables (printed, and written next to the JSON) and the plot, from a run's data."""
    stamp, workers, skipped, http = data["stamp"], data["workers"], data["skipped"], data["http"]
    load_before, load_after = data["load"]
    rounds, secs, conc, delay = data["rounds"], data["secs"], data["concurrency"], data["delay"]
    runs = {}
    for key, v in data["runs"].items():
        c, w = key.rsplit("@", 1)
        runs[(c, int(w))] = v
    med = {k: median_of(v) for k, v in runs.items()}
    ref_w = max((w for w in workers if ("limit", w) in med), default=None)
    lines = []
    lines.append(f"# Scaling, {stamp}\n")
    lines.append(f"Machine: {data['cores']} cores, {os.uname().sysname} {os.uname().release}; load "
                 f"average before {' '.join(load_before)}, after {' '.join(load_after)}. "
                 f"Seed workload (connection per request, delay {delay} ms), {conc} "
                 f"loadgen clients, {secs} s per run after "
                 f"{'1 s of' if data.get('warmup', True) else 'no'} warm-up, {rounds} round(s); "
                 "medians over rounds. Servers pinned to cores 0..W-1; the load generator to "
                 "the others, or unpinned when W takes every core (\"shared\").\n")
    lines.append("| W | config | conn/s | ratio to limit | CV % | primary µs/conn | "
                 "workers µs/conn | errors | loadgen |")
    lines.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for w in workers:
        limit = med.get(("limit", w), {}).get("rps")
        for c in CONFIGS:
            m = med.get((c, w))
            if not m:
                lines.append(f"| {w} | {LABELS.get(c, c)} | - | - | - | - | - | - | "
                             f"{skipped.get(c, 'no result')} |")
                continue
            ratio = m["rps"] / limit if limit else None
            lines.append(f"| {w} | {LABELS.get(c, c)} | {m['rps']:.0f} | {fmt(ratio, '.2f')} | "
                         f"{m['cv']:.2f} | {m['primary_us']:.1f} | {m['workers_us']:.1f} | "
                         f"{m['errors']:.0f} | {'own cores' if w < data['cores'] else 'shared'} |")
    projection = {}
    if ref_w:
        lines.append("")
        lines.append(f"Projection from CPU per connection measured at W = {ref_w}: conn/s = "
                     "W / (workers + primary µs per connection), capped at 1 / primary µs for a "
                     "primary on the connection path (round-robin, proxy, node rr), or at 1 / "
                     "its busiest thread's µs when it accepts on several threads; ratio to "
                     "the limit's projection at the same W.\n")
        lines.append("| config | " + " | ".join(f"W={w}" for w in PROJECT) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in PROJECT) + " |")
        base = med[("limit", ref_w)]
        for c in CONFIGS:
            m = med.get((c, ref_w))
            if not m:
                continue
            cells = []
            for w in PROJECT:
                rate = project(m, w, c in PRIMARY_ON_PATH, c in MULTI_THREADED_ACCEPT)
                ratio = rate / project(base, w, False)
                projection.setdefault(c, []).append(rate)
                cells.append(f"{rate:.0f} ({ratio:.2f}×)")
            lines.append(f"| {LABELS.get(c, c)} | " + " | ".join(cells) + " |")
    if http:
        lines.append("")
        lines.append(f"HTTP keep-alive, wrk -t2 -c{conc} -d{secs}s, W = {data['cores']}, "
                     "servers and wrk sharing the cores; CV of responses per worker (from the "
                     "worker named in each body), or of the workers' CPU time where the body "
                     "names none (Node):\n")
        lines.append("| config | req/s | CV % | CV of | errors |")
        lines.append("| --- | ---: | ---: | --- | ---: |")
        for c in HTTP_CONFIGS:
            ms = http.get(c)
            if not ms:
                lines.append(f"| {LABELS.get(c, c)} | - | - | - | {skipped.get(c, 'no result')} |")
                continue
            rps = statistics.median(m["rps"] for m in ms)
            cvs = [m["cv"] for m in ms if m["cv"] is not None]
            cv = statistics.median(cvs) if cvs else None
            errors = statistics.median(m["errors"] for m in ms)
            lines.append(f"| {LABELS.get(c, c)} | {rps:.0f} | {fmt(cv, '.2f')} | "
                         f"{ms[0]['cv_source']} | {errors:.0f} |")
    text = "\n".join(lines) + "\n"
    path = os.path.join(OUT, f"scaling-{stamp}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    log(f"written {path}")
    plot(med, workers, ref_w, projection, data)


def plot(med, workers, ref_w, projection, data):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no matplotlib (pip install matplotlib): no plot")
        if SMOKE:
            sys.exit("scaling: smoke run FAILED: no plot")
        return
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5.4),
                                              gridspec_kw={"width_ratios": [5, 4, 3]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(CONFIGS):
        color = colors[i % len(colors)]
        xs = [w for w in workers if (c, w) in med]
        if xs:
            left.plot(xs, [med[(c, w)]["rps"] for w in xs], "o-", color=color, lw=2,
                      label=f"{LABELS.get(c, c)}")
        if c in projection:
            left.plot(PROJECT, projection[c], "--", color=color, lw=1, alpha=0.7)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xticks(sorted(set(PROJECT) | set(workers)))
    left.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.set_xlabel("workers W (servers pinned to W cores)")
    left.set_ylabel("connections / s")
    left.set_title(f"measured (solid, {data['cores']} cores) and projected from CPU per connection "
                   "(dashed)", fontsize=9)
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="upper left")
    # Ratio to the limit at each W: measured (markers) and projected (dashed).
    for i, c in enumerate(CONFIGS):
        color = colors[i % len(colors)]
        xs = [w for w in workers if (c, w) in med and ("limit", w) in med]
        if xs:
            middle.plot(xs, [med[(c, w)]["rps"] / med[("limit", w)]["rps"] for w in xs], "o-",
                        color=color, lw=2)
        if c in projection and "limit" in projection:
            middle.plot(PROJECT, [a / b for a, b in zip(projection[c], projection["limit"])],
                        "--", color=color, lw=1, alpha=0.8)
    middle.set_xscale("log", base=2)
    middle.set_xticks(sorted(set(PROJECT) | set(workers)))
    middle.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    middle.axhline(0.9, color="grey", lw=0.8, ls=":")
    middle.set_ylim(0, 1.15)
    middle.set_xlabel("workers W")
    middle.set_ylabel("ratio to the limit at the same W")
    middle.set_title("measured (solid) and projected (dashed); dotted: 0.9", fontsize=9)
    middle.grid(True, which="both", alpha=0.3)
    if ref_w:
        names = [c for c in CONFIGS if (c, ref_w) in med]
        prim = [med[(c, ref_w)]["primary_us"] for c in names]
        work = [med[(c, ref_w)]["workers_us"] for c in names]
        ys = range(len(names))
        right.barh(ys, work, color="#4c72b0", label="workers")
        right.barh(ys, prim, left=work, color="#dd8452", label="primary")
        right.set_yticks(list(ys))
        right.set_yticklabels([LABELS.get(c, c) for c in names], fontsize=7)
        right.invert_yaxis()
        right.set_xlabel(f"CPU µs per connection at W = {ref_w}")
        right.legend(fontsize=8)
        right.grid(True, axis="x", alpha=0.3)
    fig.suptitle("forkline scaling: seed workload, connection per request, delay "
                 f"{data['delay']} ms, {data['concurrency']} clients")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    log(f"written {PLOT}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        # Tables and plot again from a run's JSON: python3 bench/scaling.py --report FILE.json
        with open(sys.argv[2]) as f:
            report(json.load(f))
    else:
        main()
